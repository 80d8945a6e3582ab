/**
 * `npm pack` yields a working tarball: installed into a fresh project it
 * loads through require and import, type-checks, and locks.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { missingModule, TestServer } from './harness';

const pkgDir = path.resolve(__dirname, '../..');

function npmMissing(): string | undefined {
  try {
    execFileSync('npm', ['--version'], { stdio: 'ignore' });
    return undefined;
  } catch {
    return 'npm not found';
  }
}

describe('npm pack', () => {
  let dir: string;
  let tarball: string;
  let server: TestServer | undefined;
  const reason = npmMissing();

  before(() => {
    if (reason) return;
    dir = mkdtempSync(path.join(tmpdir(), 'spacelock-pack-'));
    // --ignore-scripts: `make test` has just built dist/ (prepack would rebuild it).
    const out = execFileSync('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], {
      cwd: pkgDir,
      encoding: 'utf8',
    });
    const [info] = JSON.parse(out) as Array<{ filename: string; files: Array<{ path: string }> }>;
    tarball = path.join(dir, info!.filename);
    writeFileSync(path.join(dir, 'files.json'), JSON.stringify(info!.files.map((f) => f.path)));
  });
  after(async () => {
    await server?.dispose();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('ships dist with declarations and the README, nothing else', (t: TestContext) => {
    if (reason) return void t.skip(reason);
    const files = JSON.parse(execFileSync('cat', [path.join(dir, 'files.json')], { encoding: 'utf8' })) as string[];
    for (const f of ['package.json', 'README.md', 'dist/index.js', 'dist/index.d.ts', 'dist/space-lock.d.ts']) {
      assert.ok(files.includes(f), `${f} in the tarball`);
    }
    assert.deepEqual(
      files.filter((f) => !f.startsWith('dist/') && !['package.json', 'README.md'].includes(f)),
      [],
      'no sources, tests or config',
    );
  });

  it('installs into a fresh project, loads with require and import, type-checks, and locks', async (t: TestContext) => {
    if (reason) return void t.skip(reason);
    const app = path.join(dir, 'app');
    execFileSync('mkdir', ['-p', app]);
    writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
    const ioredisVersion = (require(path.join(pkgDir, 'node_modules/ioredis/package.json')) as { version: string }).version;
    execFileSync(
      'npm',
      ['install', '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error', tarball, `ioredis@${ioredisVersion}`],
      { cwd: app, stdio: 'pipe', timeout: 120_000 },
    );
    assert.ok(readdirSync(path.join(app, 'node_modules/spacelock-client/dist')).includes('index.js'));

    const cjs = execFileSync(
      process.execPath,
      ['-e', "const m = require('spacelock-client'); console.log(typeof m.SpaceLock, typeof m.ModuleNotLoadedError, typeof m.isSkipped)"],
      { cwd: app, encoding: 'utf8' },
    );
    assert.equal(cjs.trim(), 'function function function');
    const esm = execFileSync(
      process.execPath,
      ['--input-type=module', '-e', "import { SpaceLock, LeaseLostError } from 'spacelock-client'; console.log(typeof SpaceLock, typeof LeaseLostError)"],
      { cwd: app, encoding: 'utf8' },
    );
    assert.equal(esm.trim(), 'function function');

    // The declarations work for a strict TypeScript consumer.
    writeFileSync(
      path.join(app, 'check.ts'),
      `import { Redis } from 'ioredis';
import { SpaceLock, isSkipped, ModuleNotLoadedError, type Lease } from 'spacelock-client';
const locks = new SpaceLock(new Redis({ lazyConnect: true }), { ttlMs: 30_000, keyPrefix: 'git-sync:lock:' });
async function f(): Promise<number> {
  const r = await locks.withSpaceLock('s', async (lease: Lease) => { const t: bigint | undefined = lease.token; void t; lease.signal.throwIfAborted(); return 1; });
  if (isSkipped(r)) { const why: 'in-progress' | 'lock-held' = r.skipped; void why; return 0; }
  const w = await locks.withSpaceLock('s', async () => 'x', { waitMs: 5_000 });
  if (typeof w !== 'string') { const why: 'in-progress' | 'lock-held' | 'timed-out' = w.skipped; void why; }
  return r;
}
void f; void ModuleNotLoadedError;
`,
    );
    const tsc = path.join(pkgDir, 'node_modules/typescript/bin/tsc');
    execFileSync(
      process.execPath,
      [tsc, '--noEmit', '--strict', '--skipLibCheck', '--target', 'es2022', '--module', 'commonjs', '--moduleResolution', 'node',
        '--esModuleInterop', '--typeRoots', path.join(pkgDir, 'node_modules/@types'), '--types', 'node', 'check.ts'],
      { cwd: app, encoding: 'utf8' },
    );

    // And it locks, against a real server.
    if (missingModule()) return void t.skip(`installed and type-checked; not run: ${missingModule()}`);
    server = await TestServer.start();
    const run = execFileSync(
      process.execPath,
      [
        '-e',
        `const { Redis } = require('ioredis'); const { SpaceLock } = require('spacelock-client');
         (async () => { const redis = new Redis(${server.port}); const locks = new SpaceLock(redis);
           const r = await locks.withSpaceLock('pack', async (lease) => typeof lease.token);
           await locks.close(); redis.disconnect(); console.log(r); })();`,
      ],
      { cwd: app, encoding: 'utf8' },
    );
    assert.equal(run.trim(), 'bigint');
  });
});
