import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import {
  DEFAULTS, debounceMs, needsRestart, readSettings, serverCommand, serverSettings,
  startFailureMessage,
} from '../src/settings';

const reader = (values: Record<string, unknown>) => ({
  get: <T>(key: string, d: T): T => (key in values ? values[key] as T : d),
});

test('settings become the server\'s initialization options, with its names', () => {
  const s = readSettings(reader({ topP: 0.5, maxTokens: 12, comments: false,
    workspaceContext: true }));
  assert.deepEqual(serverSettings(s, '/project/.venv/bin/python'), {
    enable: true, temperature: 0, top_p: 0.5, max_tokens: 12, candidates: 1,
    context_tokens: 768, comments: false, strings: true, workspace_context: true,
    workspace_context_tokens: 384, rerank: true, memory: true, memory_weight: 0.7, seed: 0,
    python: '/project/.venv/bin/python', multiline: 'auto',
  });
  const own = readSettings(reader({ python: '/mine/python', candidates: 3, contextTokens: 256,
    rerank: false, seed: null }));
  assert.deepEqual(
    [serverSettings(own, '/active/python').python, serverSettings(own).candidates,
      serverSettings(own).context_tokens, serverSettings(own).rerank, serverSettings(own).seed],
    ['/mine/python', 3, 256, false, null]);
});

test('typing waits the debounce, an explicit request does not', () => {
  assert.equal(debounceMs(DEFAULTS, false), 75);
  assert.equal(debounceMs(DEFAULTS, true), 0);
  assert.equal(debounceMs({ ...DEFAULTS, debounce: 0 }, false), 0);
  assert.equal(debounceMs({ ...DEFAULTS, debounce: -5 }, false), 0);
});

test('server command: explicit command, then pythonPath, then the active interpreter', () => {
  assert.deepEqual(serverCommand({ ...DEFAULTS, serverCommand: ['/x/server', '--device', 'cpu'],
    modelPath: '/m' }), { command: '/x/server', args: ['--device', 'cpu', '--model', '/m'] });
  assert.deepEqual(serverCommand({ ...DEFAULTS, pythonPath: '/venv/bin/python' }, '/other'),
    { command: '/venv/bin/python', args: ['-m', 'server'] });
  assert.deepEqual(serverCommand(DEFAULTS, '/active/python'),
    { command: '/active/python', args: ['-m', 'server'] });
  assert.deepEqual(serverCommand(DEFAULTS), { command: 'python3', args: ['-m', 'server'] });
});

test('only process-level settings need a restart', () => {
  assert.equal(needsRestart(DEFAULTS, { ...DEFAULTS, temperature: 0.9 }), false);
  assert.equal(needsRestart(DEFAULTS, { ...DEFAULTS, modelPath: '/m' }), true);
  assert.equal(needsRestart(DEFAULTS, { ...DEFAULTS, serverCommand: ['s'] }), true);
});

test('a failed start says what to fix in one sentence', () => {
  const msg = startFailureMessage({ command: '/nope/python', args: ['-m', 'server'] },
    new Error('spawn /nope/python ENOENT'));
  assert.match(msg, /could not find "\/nope\/python"/);
  assert.match(msg, /codecomplete\.pythonPath/);
  assert.equal(msg.split('. ').length, 1);
});
