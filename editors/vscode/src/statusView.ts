// What the status bar shows for an answer of the server's `codecomplete/status` request.
// Kept free of the vscode module so that it is tested directly.

export interface StatusView {
  state: 'ready' | 'generating' | 'error';
  detail: string;
}

/** The state and tooltip for a status answer: a server that could not load its model
 * answers `{error}` and is shown as an error with that sentence, never as "ready". */
export function statusView(s: Record<string, unknown>): StatusView {
  if (typeof s.error === 'string' || typeof s.model !== 'string') {
    const why = typeof s.error === 'string' ? s.error : 'the server sent no model in its status';
    return { state: 'error', detail: `codecomplete: ${why}` };
  }
  const p50 = typeof s.latency_p50_ms === 'number' ? `${s.latency_p50_ms} ms` : '-';
  const hits = typeof s.cache_hit_rate === 'number' ? String(s.cache_hit_rate) : '-';
  return {
    state: s.generating ? 'generating' : 'ready',
    detail: `codecomplete: ${s.model} on ${String(s.device ?? '?')}; p50 ${p50}; cache hits ${hits}`,
  };
}
