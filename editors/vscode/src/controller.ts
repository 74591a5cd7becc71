// Owns the language client's life: start, restart, toggle, live settings, errors.
// VS Code and the client library are passed in, so tests can drive it with fakes.
import {
  Command, Settings, needsRestart, readSettings, serverCommand, serverSettings,
  startFailureMessage, ConfigReader,
} from './settings';

/** The part of vscode-languageclient's LanguageClient we use. */
export interface Client {
  start(): Promise<void>;
  stop(): Promise<void>;
  sendNotification(method: string, params: unknown): Promise<void>;
  sendRequest<R>(method: string, params: unknown): Promise<R>;
}

export interface Host {
  config(): ConfigReader;
  activeInterpreter(): Promise<string | undefined>;
  createClient(cmd: Command, initializationOptions: Record<string, unknown>): Client;
  showError(message: string): void;
  log(message: string): void;
  setStatus(state: 'starting' | 'ready' | 'disabled' | 'error', detail?: string): void;
}

export class Controller {
  client: Client | undefined;
  settings: Settings;
  interpreter: string | undefined;    // the Python extension's active one, at the last start

  constructor(private host: Host) {
    this.settings = readSettings(host.config());
  }

  async start(): Promise<boolean> {
    this.settings = readSettings(this.host.config());
    this.interpreter = await this.host.activeInterpreter();
    const cmd = serverCommand(this.settings, this.interpreter);
    this.host.log(`starting: ${[cmd.command, ...cmd.args].join(' ')}`);
    this.host.setStatus('starting');
    const client = this.host.createClient(cmd, serverSettings(this.settings, this.interpreter));
    try {
      await client.start();
    } catch (error) {
      this.client = undefined;
      const message = startFailureMessage(cmd, error);
      this.host.log(message);
      this.host.showError(message);
      this.host.setStatus('error', message);
      return false;
    }
    this.client = client;
    this.host.setStatus(this.settings.enable ? 'ready' : 'disabled');
    return true;
  }

  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    if (client) {
      try {
        await client.stop();
      } catch (error) {
        this.host.log(`stopping the server: ${String(error)}`);
      }
    }
  }

  async restart(): Promise<boolean> {
    await this.stop();
    return this.start();
  }

  /** Settings changed: restart for process-level ones, else send them live. */
  async configurationChanged(): Promise<void> {
    const before = this.settings;
    const after = readSettings(this.host.config());
    if (needsRestart(before, after)) {
      await this.restart();
      return;
    }
    this.settings = after;
    if (this.client) {
      const sent = serverSettings(after, this.interpreter);
      await this.client.sendNotification('workspace/didChangeConfiguration',
        { settings: { codecomplete: sent } });
      this.host.log(`settings sent to the server: ${JSON.stringify(sent)}`);
      this.host.setStatus(after.enable ? 'ready' : 'disabled');
    }
  }

  /** The status request of the server (model, device, latency, cache hit rate...). */
  async status(): Promise<Record<string, unknown> | undefined> {
    if (!this.client) {
      return undefined;
    }
    return this.client.sendRequest<Record<string, unknown>>('codecomplete/status', {});
  }
}
