// A stand-in for the `vscode` module: VS Code's own window cannot run here. Only what
// src/status.ts and src/extension.ts touch at import time is imitated.
export enum StatusBarAlignment { Left = 1, Right = 2 }
export class ThemeColor { constructor(public id: string) {} }
export const window = {
  createStatusBarItem: () => ({ text: '', tooltip: '', command: '', backgroundColor: undefined,
    show() {}, dispose() {} }),
  createOutputChannel: () => ({ appendLine() {}, show() {}, dispose() {} }),
  showErrorMessage: async () => undefined,
};
export const workspace = { getConfiguration: () => ({ get: (_k: string, d: unknown) => d }) };
export const commands = { registerCommand: () => ({ dispose() {} }) };
export const extensions = { getExtension: () => undefined };
export enum ConfigurationTarget { Global = 1 }
