// Integration: the real Python server over stdio, driven with vscode-jsonrpc and the LSP
// protocol types — the libraries VS Code's own language client is built on.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import {
  CancellationTokenSource, createMessageConnection, StreamMessageReader, StreamMessageWriter,
} from 'vscode-jsonrpc/node';

const root = path.resolve(__dirname, '..', '..', '..');
const python = process.env.CODECOMPLETE_TEST_PYTHON || 'python3';
const model = process.env.CODECOMPLETE_TEST_MODEL;
const NODE = 'class Node:\n    def __init__(self, value):\n        self.value = value\n\n'
  + '    def get_value(self):\n        return self.va';

function startServer(env: Record<string, string> = {}) {
  const args = ['-m', 'server', '--temperature', '0', ...(model ? ['--model', model] : [])];
  const proc = spawn(python, args, { cwd: root, env: { ...process.env, ...env } });
  const conn = createMessageConnection(new StreamMessageReader(proc.stdout),
    new StreamMessageWriter(proc.stdin));
  // A model that fails to load is reported with window/showMessage: fail loudly.
  conn.onNotification('window/showMessage', (p: any) => {
    if (p.type === 1) { throw new Error(`server error: ${p.message}`); }
  });
  conn.listen();
  return { proc, conn };
}

async function initialize(conn: ReturnType<typeof startServer>['conn'], options = {}) {
  const result: any = await conn.sendRequest('initialize',
    { processId: process.pid, capabilities: {}, rootUri: null, initializationOptions: options });
  await conn.sendNotification('initialized', {});
  return result;
}

const position = { line: 5, character: '        return self.va'.length };
const inline = (uri: string, pos = position) => ({ textDocument: { uri }, position: pos,
  context: { triggerKind: 2 } });

test('initialize, inline completion, configuration change', async () => {
  const { proc, conn } = startServer();
  try {
    const init = await initialize(conn, { max_tokens: 8 });
    assert.ok(init.capabilities.inlineCompletionProvider);
    const uri = 'file:///t/node.py';
    await conn.sendNotification('textDocument/didOpen', { textDocument: {
      uri, languageId: 'python', version: 1, text: NODE } });
    const result: any = await conn.sendRequest('textDocument/inlineCompletion', inline(uri));
    assert.ok(result.items.length > 0 && result.items[0].insertText.length > 0);
    await conn.sendNotification('workspace/didChangeConfiguration',
      { settings: { codecomplete: { enable: false } } });
    const off: any = await conn.sendRequest('textDocument/inlineCompletion', inline(uri));
    assert.equal(off.items.length, 0);
    const status: any = await conn.sendRequest('codecomplete/status', {});
    assert.equal(typeof status.model, 'string');
    await conn.sendRequest('shutdown');
    await conn.sendNotification('exit');
  } finally {
    conn.dispose();
    proc.kill();
  }
});

test('cancellation answers -32800 and the next request is served', async () => {
  // The server's test seam slows each token so the request is surely still running.
  const { proc, conn } = startServer({ CODECOMPLETE_TEST_SLOW_TOKENS_S: '0.2' });
  try {
    await initialize(conn, { max_tokens: 200 });
    const uri = 'file:///t/body.py';
    await conn.sendNotification('textDocument/didOpen', { textDocument: {
      uri, languageId: 'python', version: 1, text: 'def compute(items):\n    ' } });
    const source = new CancellationTokenSource();
    const pending = conn.sendRequest('textDocument/inlineCompletion',
      inline(uri, { line: 1, character: 4 }), source.token);
    for (let i = 0; i < 200; i++) {       // wait until it is generating
      const s: any = await conn.sendRequest('codecomplete/status', {});
      if (s.generating) { break; }
      await new Promise((r) => setTimeout(r, 50));
    }
    source.cancel();
    await assert.rejects(pending, (e: any) => e.code === -32800);
    // The answer is immediate; the generation thread stops at its next token (<= 0.2 s
    // here, with the slow-token seam), not after its remaining 200 tokens.
    const t0 = Date.now();
    let status: any = await conn.sendRequest('codecomplete/status', {});
    while (status.generating && Date.now() - t0 < 5000) {
      await new Promise((r) => setTimeout(r, 20));
      status = await conn.sendRequest('codecomplete/status', {});
    }
    assert.equal(status.generating, 0);
    assert.ok(Date.now() - t0 < 2000, `generation went on for ${Date.now() - t0} ms`);
  } finally {
    conn.dispose();
    proc.kill();
  }
});
