import { mock, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { StatusItem } from '../src/status';

test('a status poll answered after the user paused leaves "paused" shown', async () => {
  mock.timers.enable({ apis: ['setInterval'] });
  try {
    const status = new StatusItem();
    status.set('ready');
    let answer: (v: Record<string, unknown>) => void = () => undefined;
    status.poll(() => new Promise((resolve) => { answer = resolve; }));
    mock.timers.tick(2000);                 // the poll asks the server
    status.set('disabled');                 // the user pauses while the answer is on its way
    answer({ model: '/m', device: 'cpu', latency_p50_ms: 1, cache_hit_rate: 0, generating: 0 });
    await new Promise((resolve) => setImmediate(resolve));
    const item = (status as unknown as { item: { text: string } }).item;
    assert.match(item.text, /paused/);
    status.dispose();
  } finally {
    mock.timers.reset();
  }
});
