import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { Client, Controller, Host } from '../src/controller';
import { Command } from '../src/settings';

class FakeClient implements Client {
  started = false; stopped = false; notes: [string, unknown][] = [];
  constructor(public cmd: Command, public init: Record<string, unknown>, private fail?: Error) {}
  async start() { if (this.fail) { throw this.fail; } this.started = true; }
  async stop() { this.stopped = true; }
  async sendNotification(method: string, params: unknown) { this.notes.push([method, params]); }
  async sendRequest<R>(): Promise<R> { return { model: 'm', generating: 0 } as R; }
}

function host(values: Record<string, unknown>, fail?: Error) {
  const h = {
    values, clients: [] as FakeClient[], errors: [] as string[], states: [] as string[],
    config: () => ({ get: <T>(k: string, d: T): T => (k in h.values ? h.values[k] as T : d) }),
    activeInterpreter: async () => '/active/python',
    createClient: (cmd: Command, init: Record<string, unknown>) => {
      const c = new FakeClient(cmd, init, fail);
      h.clients.push(c);
      return c;
    },
    showError: (m: string) => { h.errors.push(m); },
    log: () => {},
    setStatus: (s: string) => { h.states.push(s); },
  };
  return h;
}

test('activation starts the server with the settings as initialization options', async () => {
  const h = host({ maxTokens: 10 });
  const c = new Controller(h as unknown as Host);
  assert.equal(await c.start(), true);
  assert.equal(h.clients[0].cmd.command, '/active/python');
  assert.equal(h.clients[0].init.max_tokens, 10);
  assert.deepEqual(h.states, ['starting', 'ready']);
  assert.deepEqual(await c.status(), { model: 'm', generating: 0 });
});

test('live settings are sent; model or interpreter changes restart', async () => {
  const h = host({});
  const c = new Controller(h as unknown as Host);
  await c.start();
  h.values.temperature = 0.7;
  h.values.enable = false;
  await c.configurationChanged();
  assert.equal(h.clients.length, 1);
  assert.deepEqual(h.clients[0].notes[0], ['workspace/didChangeConfiguration',
    { settings: { codecomplete: { enable: false, temperature: 0.7, top_p: 0.95,
      max_tokens: 64, candidates: 1, context_tokens: 768, comments: true, strings: true,
      workspace_context: false, workspace_context_tokens: 384, rerank: true, memory: true,
      memory_weight: 0.7, seed: 0, python: '/active/python',
      multiline: 'auto' } } }]);
  assert.equal(h.states.at(-1), 'disabled');
  h.values.modelPath = '/models/mine';
  await c.configurationChanged();
  assert.equal(h.clients.length, 2);
  assert.equal(h.clients[0].stopped, true);
  assert.deepEqual(h.clients[1].cmd.args, ['-m', 'server', '--model', '/models/mine']);
});

test('a server that cannot start gives one clear error and an error status', async () => {
  const h = host({ pythonPath: '/no/python' }, new Error('spawn /no/python ENOENT'));
  const c = new Controller(h as unknown as Host);
  assert.equal(await c.start(), false);
  assert.equal(h.errors.length, 1);
  assert.match(h.errors[0], /could not find "\/no\/python"/);
  assert.equal(h.states.at(-1), 'error');
  assert.equal(c.client, undefined);
  assert.equal(await c.status(), undefined);
});

test('restart stops the old client and starts a new one', async () => {
  const h = host({});
  const c = new Controller(h as unknown as Host);
  await c.start();
  await c.restart();
  assert.equal(h.clients.length, 2);
  assert.equal(h.clients[0].stopped, true);
  assert.equal(h.clients[1].started, true);
});
