// End-to-end test in a real VS Code: code-server (VS Code in the browser) with our .vsix
// installed, rendered in headless Chromium and driven with playwright-core, against our
// real server and the shipped model. In a Python file it
// 1. types a function header and its docstring, waits for ghost text, types its first
//    character (the rest must stay shown at once), accepts its next word with Ctrl+Right
//    (the rest must stay shown), the rest with Tab, and checks the file saved on disk;
// 2. opens an empty __init__ body, where the suggestion runs over several lines, accepts one
//    line with editor.action.inlineSuggest.acceptNextLine (the other lines must stay
//    shown), then the rest with Tab;
// 3. changes the settings in VS Code's settings JSON (candidates 4, temperature 0.8) and
//    cycles through the server's candidates with Alt+] and back with Alt+[.
// Screenshots land in $E2E_ARTIFACTS.
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

/** The ghost text on screen as lines: the part inline on the cursor's line, then each
 * line VS Code shows below it. Waits up to `seconds` for it to appear. */
async function ghostLines(page, seconds) {
  const inline = page.locator('.monaco-editor .ghost-text-decoration');
  const below = page.locator('.monaco-editor .view-line:has(.ghost-text)');
  await inline.or(below).first().waitFor({ state: 'visible', timeout: seconds * 1000 });
  const clean = (t) => t.replace(/\u00a0/g, ' ');
  const first = (await inline.allInnerTexts()).map(clean).join('');
  const rest = (await below.allInnerTexts()).map(clean);
  return [first, ...rest].filter((line, i) => i > 0 || line.length > 0);
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
const settings = {
  'codecomplete.pythonPath': python,
  'editor.inlineSuggest.enabled': true,
  // Indentation is typed by the test: VS Code's auto-indent on Enter proved timing-dependent.
  'editor.autoIndent': 'none',
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
};
fs.writeFileSync(path.join(userData, 'User', 'settings.json'), JSON.stringify(settings, null, 2));
// VS Code binds no key to "accept next line"; the README suggests this one.
fs.writeFileSync(path.join(userData, 'User', 'keybindings.json'), JSON.stringify([{
  key: 'ctrl+alt+l', command: 'editor.action.inlineSuggest.acceptNextLine',
  when: 'inlineSuggestionVisible && !editorReadonly',
}], null, 2));

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
  await page.keyboard.insertText('    """Return the n-th Fibonacci number."""');
  await page.keyboard.press('Enter');
  await page.keyboard.insertText('    ');
  const ghostSelector = '.monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text';
  const ghost = page.locator(ghostSelector);
  await ghost.first().waitFor({ state: 'visible', timeout: waitS * 1000 });
  const shown = (await ghost.allInnerTexts()).join('\n').replace(/\u00a0/g, ' ');
  await shot('ghost-text.png');
  if (!shown.trim()) {
    throw new Error('ghost text appeared but is empty');
  }
  console.log(`ghost text: ${JSON.stringify(shown)}`);
  const squash = (t) => t.replace(/\s+/g, '');

  // Typing through: type the suggestion's first character; the rest must still be shown
  // at once: within 250 ms of the key press (a new request would first wait out the 75 ms
  // debounce, then generate, then render). Both times are taken inside the page (a
  // keydown listener and a MutationObserver on the editor), so a loaded machine's slow
  // playwright round trips cannot count against the extension.
  const typedChar = shown.trimStart()[0];
  const want = squash(shown).slice(1);
  await page.evaluate((selector) => {
    const read = () => Array.from(document.querySelectorAll(selector))
      .map((e) => e.textContent).join('').replace(/\s+/g, '');
    const seen = { keyAt: null, changes: [] };
    const onKey = () => { seen.keyAt ??= performance.now(); };
    const observer = new MutationObserver(() => seen.changes.push([performance.now(), read()]));
    observer.observe(document.querySelector('.monaco-editor'),
      { subtree: true, childList: true, characterData: true });
    document.addEventListener('keydown', onKey, true);
    // Called once the measurement is over: the rest of the test types and edits a lot.
    seen.stop = () => { observer.disconnect(); document.removeEventListener('keydown', onKey, true); };
    window.__ccTypeThrough = seen;
  }, ghostSelector);
  await page.keyboard.type(typedChar);
  let seenAfter = Infinity;
  let through = '';
  const deadline = Date.now() + 2000;
  while (Date.now() < deadline && seenAfter === Infinity) {
    const { keyAt, changes } = await page.evaluate(
      () => ({ keyAt: window.__ccTypeThrough.keyAt, changes: window.__ccTypeThrough.changes }));
    const after = changes.filter(([at]) => keyAt !== null && at >= keyAt);
    through = after.length ? after[after.length - 1][1] : through;
    const hit = after.find(([, text]) => text === want);
    if (hit) {
      seenAfter = Math.round(hit[0] - keyAt);
    } else {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  await page.evaluate(() => window.__ccTypeThrough.stop());
  if (seenAfter > 250) {
    throw new Error(`after typing ${JSON.stringify(typedChar)} of ${JSON.stringify(shown)} the `
      + `rest was not shown within 250 ms of the key press (${seenAfter === Infinity
        ? 'not within 2 s' : `after ${seenAfter} ms`}; last seen: ${JSON.stringify(through)})`);
  }
  console.log(`e2e: typed ${JSON.stringify(typedChar)}, the rest stayed (seen after ${seenAfter} ms)`);
  const ghostText = (await ghost.allInnerTexts()).join('\n').replace(/\u00a0/g, ' ');

  // Accept part of it: VS Code's acceptNextWord (Ctrl+Right while ghost text shows) takes
  // the next word of our item, and the rest must stay on screen as ghost text.
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

  // 2. A multi-line suggestion, accepted one line at a time.
  // After the module docstring; the cursor in the empty body of an __init__ that takes
  // arguments: storing them is several lines, the body every model we trained completes
  // over several lines (an empty `def factorial(n):` got one `return` line from some, and
  // `(self, x, y)` got `self.y = x` twice, which the repetition filter rightly cuts, and
  // `(self, host, port)` one line when greedy).
  await page.keyboard.press('Control+Home');
  await page.keyboard.press('End');
  const initLine = 'def __init__(self, name, value):';
  await page.keyboard.insertText(`\n\n\nclass Point:\n    ${initLine}\n        `);
  const before = await ghostLines(page, waitS);
  await shot('multi-line.png');
  console.log(`multi-line ghost text: ${JSON.stringify(before)}`);
  if (before.length < 2) {
    throw new Error(`expected a multi-line suggestion in an empty __init__ body, got ${JSON.stringify(before)}`);
  }
  await page.keyboard.press('Control+Alt+KeyL');
  const expectRest = squash(before.slice(1).join(''));
  let after = [];
  for (const deadline = Date.now() + 10_000; Date.now() < deadline;) {
    after = await ghostLines(page, 1).catch(() => []);
    if (squash(after.join('')) === expectRest) {
      break;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  await shot('accepted-line.png');
  if (squash(after.join('')) !== expectRest) {
    throw new Error(`accept next line left ${JSON.stringify(after)} of ${JSON.stringify(before)}: `
      + 'the lines after the first should have stayed as ghost text');
  }
  console.log(`e2e: accept next line kept ${after.length} line(s) as ghost text`);
  // The cursor is now at column 1 and the rest starts with indentation: VS Code's own rule
  // makes that Tab indent, and the next Tab accept (as it does for every provider).
  for (let presses = 0; presses < 3 && await ghost.count(); presses++) {
    await page.keyboard.press('Tab');
    await page.waitForTimeout(500);
  }
  const wholeFunction = squash(before.join(''));
  saved = '';
  for (let attempt = 0; attempt < 3 && !squash(saved).includes(wholeFunction); attempt++) {
    await page.keyboard.press('Control+S');
    const deadline = Date.now() + 5_000;
    while (Date.now() < deadline && !squash(saved).includes(wholeFunction)) {
      await new Promise((r) => setTimeout(r, 200));
      saved = fs.readFileSync(file, 'utf8');
    }
  }
  if (!squash(saved.split(initLine)[1] ?? '').startsWith(wholeFunction)) {
    throw new Error(`the accepted line and the rest should make the suggestion `
      + `${JSON.stringify(before)}; the saved file is\n${saved}`);
  }
  console.log('e2e: a line, then the rest, accepted');

  // 3. Live settings, then cycling through several candidates.
  // As a user does: the settings JSON edited in VS Code (it does not watch the file).
  await page.keyboard.press('F1');
  await page.waitForSelector('.quick-input-widget input', { timeout: 30_000 });
  await page.keyboard.type('Preferences: Open User Settings (JSON)');
  await page.waitForSelector('.quick-input-list .monaco-list-row', { timeout: 30_000 });
  await page.keyboard.press('Enter');
  await page.waitForSelector('.monaco-editor .view-line:has-text("codecomplete.pythonPath")',
    { timeout: 30_000 });       // a tab or (newer VS Code) a modal editor
  await page.keyboard.press('Control+A');
  await page.keyboard.insertText(JSON.stringify({ ...settings, 'codecomplete.candidates': 4,
    'codecomplete.temperature': 0.8 }, null, 2));
  await page.keyboard.press('Control+S');
  await page.keyboard.press('Control+W');
  await page.keyboard.press('Control+P');
  await page.waitForSelector('.quick-input-widget input', { timeout: 30_000 });
  await page.keyboard.type('numbers.py');
  await page.waitForSelector('.quick-input-list .monaco-list-row', { timeout: 30_000 });
  await page.keyboard.press('Enter');
  // VS Code notices the file, the extension sends the change (and logs that it did).
  const sentLog = () => {
    const found = [];
    const walk = (dir) => {
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) {
          walk(p);
        } else if (e.name === 'codecomplete.log') {
          found.push(fs.readFileSync(p, 'utf8'));
        }
      }
    };
    walk(path.join(userData, 'logs'));
    return found.join('');
  };
  for (const deadline = Date.now() + 30_000; !/settings sent to the server: .*"candidates":4/
    .test(sentLog());) {
    if (Date.now() > deadline) {
      throw new Error('the changed settings did not reach the server within 30 s');
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  await page.keyboard.press('Control+Home');
  await page.keyboard.press('End');
  await page.keyboard.insertText('\n\n\ndef is_prime(n):\n    ');
  const first = squash((await ghostLines(page, waitS)).join(''));
  await page.keyboard.press('Alt+BracketRight');
  let second = first;
  for (const deadline = Date.now() + 30_000; Date.now() < deadline && second === first;) {
    await new Promise((r) => setTimeout(r, 200));
    second = squash((await ghostLines(page, 1).catch(() => [])).join(''));
  }
  await shot('next-candidate.png');
  if (!second || second === first) {
    throw new Error(`Alt+] did not show another candidate (still ${JSON.stringify(first)})`);
  }
  await page.keyboard.press('Alt+BracketLeft');
  let back = second;
  for (const deadline = Date.now() + 10_000; Date.now() < deadline && back !== first;) {
    await new Promise((r) => setTimeout(r, 200));
    back = squash((await ghostLines(page, 1).catch(() => [])).join(''));
  }
  if (back !== first) {
    throw new Error(`Alt+[ should go back to ${JSON.stringify(first)}, shows ${JSON.stringify(back)}`);
  }
  console.log(`e2e: Alt+] showed another candidate (${JSON.stringify(second)}), Alt+[ the first again`);

  // No warning from us along the way (a setting the server refused, a failed request).
  const toasts = await page.locator('.notifications-toasts:has-text("codecomplete:")').allInnerTexts();
  if (toasts.length) {
    throw new Error(`codecomplete showed a notification: ${toasts.join(' | ')}`);
  }
} catch (e) {
  await shot('failure.png');
  const dom = await page?.locator('.monaco-editor').first().innerHTML().catch(() => '');
  fs.writeFileSync(path.join(artifacts, 'editor.html'), dom ?? '');
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
