import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { statusView } from '../src/statusView';

test('a server that could not load its model shows its error, not "ready ... undefined"', () => {
  const v = statusView({ error: 'codecomplete could not load its model: no such directory' });
  assert.equal(v.state, 'error');
  assert.equal(v.detail, 'codecomplete: codecomplete could not load its model: no such directory');
  assert.ok(!v.detail.includes('undefined'));
});

test('a working server shows model, device, latency and cache hits', () => {
  const v = statusView({ model: '/m', device: 'cpu', latency_p50_ms: 12.5, cache_hit_rate: 0.25,
    generating: 0 });
  assert.deepEqual(v, { state: 'ready',
    detail: 'codecomplete: /m on cpu; p50 12.5 ms; cache hits 0.25' });
  const busy = statusView({ model: '/m', device: 'cpu', latency_p50_ms: null,
    cache_hit_rate: null, generating: 1 });
  assert.deepEqual(busy, { state: 'generating',
    detail: 'codecomplete: /m on cpu; p50 -; cache hits -' });
});
