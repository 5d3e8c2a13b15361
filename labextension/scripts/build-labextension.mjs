// Builds the prebuilt JupyterLab extension into dist/ with @jupyterlab/builder.
//
// The builder wants a "core path": a folder whose package.json is JupyterLab's own
// (the shared packages and their versions). @jupyterlab/core-meta (a devDependency,
// pinned by package-lock.json) ships that file as core.package.json, so it is copied
// into a fresh temporary folder as package.json. No Python JupyterLab is needed.
//
//   node scripts/build-labextension.mjs [--development]   build (production by default)
//   node scripts/build-labextension.mjs --clean           remove lib/ and dist/
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const args = process.argv.slice(2);

if (args.includes('--clean')) {
  for (const dir of ['lib', 'dist', 'tsconfig.tsbuildinfo']) {
    rmSync(join(root, dir), { recursive: true, force: true });
  }
  process.exit(0);
}

const require = createRequire(join(root, 'package.json'));
const coreMeta = require.resolve('@jupyterlab/core-meta/core.package.json');
const builder = join(dirname(require.resolve('@jupyterlab/builder/package.json')), 'lib', 'build-labextension.js');
const corePath = mkdtempSync(join(tmpdir(), 'cloudhop-lab-core-'));
try {
  copyFileSync(coreMeta, join(corePath, 'package.json'));
  const mode = args.includes('--development') ? ['--development'] : [];
  const run = spawnSync(process.execPath, [builder, '--core-path', corePath, ...mode, root], { stdio: 'inherit' });
  process.exitCode = run.status ?? 1;
} finally {
  rmSync(corePath, { recursive: true, force: true });
}
