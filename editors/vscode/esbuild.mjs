// Bundle the extension (and, with --tests, the tests) with esbuild.
import * as esbuild from 'esbuild';
import { readdirSync } from 'node:fs';

const tests = process.argv.includes('--tests');
if (!tests) {
  await esbuild.build({
    entryPoints: ['src/extension.ts'], bundle: true, outfile: 'dist/extension.js',
    platform: 'node', format: 'cjs', target: 'node20', external: ['vscode'],
    sourcemap: true, minify: process.argv.includes('--minify'),
  });
} else {
  await esbuild.build({
    entryPoints: readdirSync('test').filter((f) => f.endsWith('.test.ts')).map((f) => `test/${f}`),
    bundle: true, outdir: 'dist-test', platform: 'node', format: 'cjs', target: 'node20',
    alias: { vscode: './test/mock-vscode.ts' },
  });
}
