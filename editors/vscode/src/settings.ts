// Settings -> what the server gets. Pure functions: unit-tested without VS Code.

/** The extension's settings, as read from the `codecomplete` configuration section. */
export interface Settings {
  pythonPath: string;
  serverCommand: string[];
  modelPath: string;
  enable: boolean;
  temperature: number;
  topP: number;
  maxTokens: number;
  comments: boolean;
  strings: boolean;
  workspaceContext: boolean;
  workspaceContextTokens: number;
  candidates: number;
  contextTokens: number;
  rerank: boolean;
  memory: boolean;
  memoryWeight: number;
  seed: number | null;
  python: string;
  multiline: string;
  debounce: number;
}

export const DEFAULTS: Settings = {
  pythonPath: '',
  serverCommand: [],
  modelPath: '',
  enable: true,
  temperature: 0,
  topP: 0.95,
  maxTokens: 64,
  comments: true,
  strings: true,
  workspaceContext: false,
  workspaceContextTokens: 384,
  candidates: 1,
  contextTokens: 768,
  rerank: true,
  memory: true,
  memoryWeight: 0.7,
  seed: 0,
  python: '',
  multiline: 'auto',
  debounce: 75,
};

/** Anything with VS Code's WorkspaceConfiguration.get shape. */
export interface ConfigReader {
  get<T>(key: string, defaultValue: T): T;
}

export function readSettings(config: ConfigReader): Settings {
  const out = { ...DEFAULTS };
  for (const key of Object.keys(DEFAULTS) as (keyof Settings)[]) {
    (out as Record<string, unknown>)[key] = config.get(key, DEFAULTS[key]);
  }
  return out;
}

/**
 * Every setting the server reads, under its own names (completion/settings.py; a test
 * checks that none is missing). `python` falls back to the Python extension's active
 * interpreter: the project's, whose libraries name the attributes of imported modules.
 */
export function serverSettings(s: Settings, activeInterpreter?: string): Record<string, unknown> {
  return {
    enable: s.enable,
    temperature: s.temperature,
    top_p: s.topP,
    max_tokens: s.maxTokens,
    candidates: s.candidates,
    context_tokens: s.contextTokens,
    comments: s.comments,
    strings: s.strings,
    workspace_context: s.workspaceContext,
    workspace_context_tokens: s.workspaceContextTokens,
    rerank: s.rerank,
    memory: s.memory,
    memory_weight: s.memoryWeight,
    seed: s.seed,
    python: s.python || activeInterpreter || '',
    multiline: s.multiline,
  };
}

/** How long an inline completion request waits before it goes to the server: the
 * debounce for ones VS Code makes while the user types, none for explicit ones. */
export function debounceMs(s: Settings, explicit: boolean): number {
  return explicit ? 0 : Math.max(0, s.debounce);
}

export interface Command {
  command: string;
  args: string[];
}

/**
 * How to start the server: `serverCommand` if set, else `<python> -m server`, with the
 * interpreter from `pythonPath`, else the Python extension's active one, else python3.
 */
export function serverCommand(s: Settings, activeInterpreter?: string): Command {
  const model = s.modelPath ? ['--model', s.modelPath] : [];
  if (s.serverCommand.length > 0) {
    return { command: s.serverCommand[0], args: [...s.serverCommand.slice(1), ...model] };
  }
  const python = s.pythonPath || activeInterpreter || 'python3';
  return { command: python, args: ['-m', 'server', ...model] };
}

/** Settings whose change needs a new server process (the rest are sent live). */
export function needsRestart(before: Settings, after: Settings): boolean {
  return before.pythonPath !== after.pythonPath || before.modelPath !== after.modelPath
    || before.serverCommand.join('\u0000') !== after.serverCommand.join('\u0000');
}

/** One sentence telling the user what to fix when the server does not start. */
export function startFailureMessage(cmd: Command, error: unknown): string {
  const detail = error instanceof Error ? error.message : String(error);
  const missing = /ENOENT|not found|No such file/i.test(detail);
  const what = missing
    ? `codecomplete could not find "${cmd.command}"`
    : `codecomplete's server "${[cmd.command, ...cmd.args].join(' ')}" failed to start (${detail})`;
  return `${what}: set "codecomplete.pythonPath" to a Python where codecomplete is installed `
    + '(pip install -e /path/to/codecomplete), or "codecomplete.serverCommand" to its `server`.';
}
