// End-to-end test in a real VS Code: code-server (VS Code in the browser) with our .vsix
// installed, rendered in headless Chromium and driven with playwright-core. It types a
// function header and its docstring into a Python file, waits for ghost text from our
// server, accepts its first word with Ctrl+Right (the rest must stay shown), the rest
// with Tab, saves, and checks the file on disk. Screenshots land in
// $E2E_ARTIFACTS.
//
//   node e2e.mjs   (run by run.sh, which sets the environment below)
//
// Environment: E2E_CACHE (what setup.sh installed), E2E_PYTHON (a Python with codecomplete
// installed), E2E_VSIX, E2E_ARTIFACTS; E2E_TIMEOUT_S (ghost text wait, default 120).
import { spawn, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const cache = process.env.E2E_CACHE;
const python = process.env.E2E_PYTHON;
const vsix = process.env.E2E_VSIX;
const artifacts = process.env.E2E_ARTIFACTS;
const waitS = Number(process.env.E2E_TIMEOUT_S ?? '120');
for (const [name, value] of Object.entries({ E2E_CACHE: cache, E2E_PYTHON: python,
  E2E_VSIX: vsix, E2E_ARTIFACTS: artifacts })) {
  if (!value) {
    throw new Error(`${name} is not set; run editors/vscode/e2e/run.sh`);
  }
}
const require = createRequire(path.join(cache, 'app', 'package.json'));
const { chromium } = require('playwright-core');
const codeServer = path.join(cache, 'app', 'node_modules', 'code-server', 'out', 'node', 'entry.js');
const node = fs.readFileSync(path.join(cache, 'node.path'), 'utf8').trim();

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

async function waitForHttp(url, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    try {
      const r = await fetch(url);
      if (r.status < 500) {
        return;
      }
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`code-server did not answer at ${url} within ${ms / 1000} s`);
}

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'codecomplete-e2e-'));
const userData = path.join(root, 'user-data');
const extensions = path.join(root, 'extensions');
const workspace = path.join(root, 'workspace');
fs.mkdirSync(path.join(userData, 'User'), { recursive: true });
fs.mkdirSync(workspace);
fs.mkdirSync(artifacts, { recursive: true });
// Named like a stdlib module on purpose: the server must not import the user's files.
const file = path.join(workspace, 'numbers.py');
fs.writeFileSync(file, '"""Small numeric helpers."""\n\n\n');
fs.writeFileSync(path.join(userData, 'User', 'settings.json'), JSON.stringify({
  'codecomplete.pythonPath': python,
  'editor.inlineSuggest.enabled': true,
  // Keep the classic suggest widget away so Tab goes to the ghost text.
  'editor.quickSuggestions': { other: false, comments: false, strings: false },
  'editor.suggestOnTriggerCharacters': false,
  'security.workspace.trust.enabled': false,
  'workbench.startupEditor': 'none',
  'workbench.tips.enabled': false,
  'telemetry.telemetryLevel': 'off',
  'extensions.autoCheckUpdates': false,
  'extensions.autoUpdate': false,
  'update.mode': 'none',
}, null, 2));

const csArgs = ['--user-data-dir', userData, '--extensions-dir', extensions];
const install = spawnSync(node, [codeServer, ...csArgs, '--install-extension', vsix],
  { encoding: 'utf8' });
if (install.status !== 0 || !fs.readdirSync(extensions).some((d) => d.startsWith('codecomplete.'))) {
  throw new Error(`installing ${vsix} into code-server failed:\n${install.stdout}\n${install.stderr}`);
}

const port = await freePort();
const csLog = fs.createWriteStream(path.join(artifacts, 'code-server.log'));
const server = spawn(node, [codeServer, ...csArgs, '--auth', 'none', '--bind-addr',
  `127.0.0.1:${port}`, '--disable-workspace-trust', '--disable-telemetry',
  '--disable-update-check', '--disable-getting-started-override', workspace],
{ stdio: ['ignore', 'pipe', 'pipe'], detached: true });
server.stdout.pipe(csLog);
server.stderr.pipe(csLog);

let browser;
let page;
const shot = async (name) => page?.screenshot({ path: path.join(artifacts, name) }).catch(() => {});
try {
  await waitForHttp(`http://127.0.0.1:${port}/healthz`, 60_000);
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
  page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  await page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(workspace)}`);
  await page.waitForSelector('.monaco-workbench', { timeout: 90_000 });

  // Our extension's status bar item proves it activated once a Python file is open.
  await page.keyboard.press('Control+P');
  await page.waitForSelector('.quick-input-widget input', { timeout: 30_000 });
  await page.keyboard.type('numbers.py');
  await page.waitForSelector('.quick-input-list .monaco-list-row', { timeout: 30_000 });
  await page.keyboard.press('Enter');
  await page.waitForSelector('.monaco-editor .view-lines', { timeout: 30_000 });
  // Ready (sparkle) or error: fail at once with the item's tooltip on an error.
  const item = page.locator('.statusbar-item:has-text("codecomplete")');
  await item.locator('.codicon-sparkle, .codicon-error').first()
    .waitFor({ state: 'visible', timeout: 120_000 });
  if (await item.locator('.codicon-error').count()) {
    await item.hover();
    await page.waitForTimeout(1500);
    const hover = await page.locator('.monaco-hover').allInnerTexts().catch(() => []);
    throw new Error(`the extension reports an error: ${hover.join(' ')}`);
  }

  await page.click('.monaco-editor .view-lines');
  await page.keyboard.press('Control+End');
  await page.keyboard.type('def fibonacci(n):', { delay: 30 });
  await page.keyboard.press('Enter');
  // insertText: typing the quotes one by one would meet VS Code's auto-closing.
  await page.keyboard.insertText('"""Return the n-th Fibonacci number."""');
  await page.keyboard.press('Enter');
  const ghost = page.locator('.monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text');
  await ghost.first().waitFor({ state: 'visible', timeout: waitS * 1000 });
  const ghostText = (await ghost.allInnerTexts()).join('\n').replace(/\u00a0/g, ' ');
  await shot('ghost-text.png');
  if (!ghostText.trim()) {
    throw new Error('ghost text appeared but is empty');
  }
  console.log(`ghost text: ${JSON.stringify(ghostText)}`);

  // Accept part of it: VS Code's acceptNextWord (Ctrl+Right while ghost text shows) takes
  // the next word of our item, and the rest must stay on screen as ghost text.
  const squash = (t) => t.replace(/\s+/g, '');
  const whole = squash(ghostText);
  let rest = whole;
  if (/\S\s+\S/.test(ghostText.trim())) {          // more than one word to take
    await page.keyboard.press('Control+ArrowRight');
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline && rest === whole) {
      await new Promise((r) => setTimeout(r, 200));
      rest = squash((await ghost.allInnerTexts().catch(() => [])).join(''));
    }
    await shot('accepted-word.png');
    if (!rest || rest === whole || !whole.endsWith(rest)) {
      throw new Error(`accept next word left ${JSON.stringify(rest)} of the ghost text `
        + `${JSON.stringify(ghostText)}: the rest should have stayed`);
    }
    console.log(`e2e: accept next word kept the rest as ghost text: ${JSON.stringify(rest)}`);
  }

  await page.keyboard.press('Tab');
  // Every piece of ghost text (the DOM splits it by line and wrap) must reach the file.
  const pieces = ghostText.split('\n').map(squash).filter((p) => p);
  const accepted = (text) => {
    const body = squash(text.split('def fibonacci(n):')[1] ?? '');
    return body.length > 0 && pieces.every((p) => body.includes(p));
  };
  let saved = '';
  for (let attempt = 0; attempt < 3 && !accepted(saved); attempt++) {
    await page.keyboard.press('Control+S');
    const deadline = Date.now() + 5_000;
    while (Date.now() < deadline && !accepted(saved)) {
      await new Promise((r) => setTimeout(r, 200));
      saved = fs.readFileSync(file, 'utf8');
    }
  }
  await shot('accepted.png');
  console.log(`saved file:\n${saved}`);
  if (!accepted(saved)) {
    throw new Error(`Tab did not insert the ghost text ${JSON.stringify(ghostText)}: the `
      + `saved file is\n${saved}`);
  }
  console.log('e2e: ghost text appeared and Tab accepted it');
} catch (e) {
  await shot('failure.png');
  console.error(`e2e failed: ${e.message}\n(see ${artifacts})`);
  process.exitCode = 1;
} finally {
  await browser?.close();
  try {
    process.kill(-server.pid, 'SIGTERM');
  } catch {
    // already gone
  }
  if (process.exitCode) {
    // Keep VS Code's logs (the extension's output channel among them) for the post-mortem.
    fs.cpSync(path.join(userData, 'logs'), path.join(artifacts, 'vscode-logs'),
      { recursive: true });
  }
  fs.rmSync(root, { recursive: true, force: true });
}
