// Entry point: wires VS Code to the Controller. Launching, settings and status live in
// their own modules; this file only connects them.
import * as vscode from 'vscode';
import { LanguageClient, Middleware } from 'vscode-languageclient/node';
import { Controller, Host } from './controller';
import { Command, debounceMs } from './settings';
import { StatusItem } from './status';

type InlineCompletionMiddleware = NonNullable<Middleware['provideInlineCompletionItems']>;

let controller: Controller | undefined;

/** Wait the debounce before asking the server; a newer keystroke cancels this request
 * (VS Code cancels its token) and so it never reaches the server at all. */
const debounced: InlineCompletionMiddleware = async (document, position, context, token, next) => {
  const explicit = context.triggerKind === vscode.InlineCompletionTriggerKind.Invoke;
  const ms = controller ? debounceMs(controller.settings, explicit) : 0;
  if (ms > 0) {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      token.onCancellationRequested(() => { clearTimeout(timer); resolve(); });
    });
  }
  if (token.isCancellationRequested) {
    return null;
  }
  return next(document, position, context, token);
};

async function pythonExtensionInterpreter(): Promise<string | undefined> {
  const ext = vscode.extensions.getExtension('ms-python.python');
  try {
    const api = ext && (ext.isActive ? ext.exports : await ext.activate());
    const env = api?.environments?.getActiveEnvironmentPath?.();
    return env?.path;
  } catch {
    return undefined;
  }
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const output = vscode.window.createOutputChannel('codecomplete', { log: true });
  const status = new StatusItem();
  const host: Host = {
    config: () => vscode.workspace.getConfiguration('codecomplete'),
    activeInterpreter: pythonExtensionInterpreter,
    createClient: (cmd: Command, initializationOptions) => new LanguageClient(
      'codecomplete', 'codecomplete',
      // cwd: the extension's own folder, never the workspace: `python -m server` puts the
      // cwd first on sys.path, and a user's numbers.py or server.py would shadow ours.
      // No `transport`: stdio is the default and the command runs exactly as logged.
      { command: cmd.command, args: cmd.args, options: { cwd: context.extensionPath } },
      { documentSelector: [{ language: 'python' }], initializationOptions, outputChannel: output,
        middleware: { provideInlineCompletionItems: debounced } },
    ),
    showError: (message) => { void vscode.window.showErrorMessage(message, 'Show Logs')
      .then((choice) => { if (choice) { output.show(); } }); },
    log: (message) => output.appendLine(message),
    setStatus: (state, detail) => status.set(state, detail),
  };
  controller = new Controller(host);
  status.poll(() => controller?.status() ?? Promise.resolve(undefined));
  context.subscriptions.push(
    output, status,
    vscode.commands.registerCommand('codecomplete.restart', () => controller?.restart()),
    vscode.commands.registerCommand('codecomplete.toggle', async () => {
      const config = vscode.workspace.getConfiguration('codecomplete');
      await config.update('enable', !config.get('enable', true),
        vscode.ConfigurationTarget.Global);
    }),
    vscode.commands.registerCommand('codecomplete.showLogs', () => output.show()),
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (e.affectsConfiguration('codecomplete')) {
        void controller?.configurationChanged();
      }
    }),
  );
  await controller.start();
}

export async function deactivate(): Promise<void> {
  await controller?.stop();
}
