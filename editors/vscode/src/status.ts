// The status bar item: starting / ready / generating / disabled / error, last latency.
import * as vscode from 'vscode';
import { statusView } from './statusView';

export class StatusItem implements vscode.Disposable {
  private item = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  private timer: ReturnType<typeof setInterval> | undefined;
  private state = 'starting';

  constructor() {
    this.item.command = 'codecomplete.showLogs';
    this.set('starting');
    this.item.show();
  }

  set(state: string, detail?: string): void {
    this.state = state;
    const icon = { starting: '$(loading~spin)', ready: '$(sparkle)', generating: '$(sync~spin)',
      disabled: '$(circle-slash)', error: '$(error)' }[state] ?? '';
    this.item.text = state === 'disabled' ? `${icon} codecomplete (paused)` : `${icon} codecomplete`;
    this.item.tooltip = detail ?? (state === 'disabled'
      ? 'codecomplete: paused (codecomplete.enable is off); run "codecomplete: Toggle Completions" to resume'
      : `codecomplete: ${state}`);
    this.item.backgroundColor = state === 'error'
      ? new vscode.ThemeColor('statusBarItem.errorBackground') : undefined;
  }

  /** Ask the server for its status every 2 s while ready (it answers while generating). */
  poll(status: () => Promise<Record<string, unknown> | undefined>): void {
    this.timer = setInterval(async () => {
      if (this.state !== 'ready' && this.state !== 'generating') {
        return;
      }
      try {
        const s = await status();
        // The user may have paused (or the server stopped) while the answer was on its
        // way: a poll must never turn "paused" back into "ready".
        if (!s || (this.state !== 'ready' && this.state !== 'generating')) {
          return;
        }
        const view = statusView(s);
        this.set(view.state, view.detail);
      } catch {
        // a restart is in progress; the next tick will tell
      }
    }, 2000);
  }

  dispose(): void {
    if (this.timer) {
      clearInterval(this.timer);
    }
    this.item.dispose();
  }
}
