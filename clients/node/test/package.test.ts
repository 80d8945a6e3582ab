/**
 * `npm pack` yields a working tarball: installed into a fresh project it
 * loads through require and import, type-checks, and locks. It ships the
 * LICENSE, no source maps, and declarations of the public API only.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import ts from 'typescript';
import { missingModule, TestServer } from './harness';

const pkgDir = path.resolve(__dirname, '../..');

/** What src/index.ts exports: the whole public API, values and types. */
const PUBLIC_NAMES = [
  'CloseOptions',
  'CommandMode',
  'CommandTimeoutError',
  'ExistingSkipped',
  'FENCED_WRITE_SCRIPT',
  'LUA_REFRESH_SCRIPT',
  'LUA_RELEASE_SCRIPT',
  'Lease',
  'LeaseLostError',
  'LockHolder',
  'LockInfo',
  'LostReason',
  'ModuleNotLoadedError',
  'NotAcknowledged',
  'NotAcknowledgedError',
  'Outcome',
  'Ran',
  'RedisConnection',
  'SkipReason',
  'Skipped',
  'SpaceLock',
  'SpaceLockDropIn',
  'SpaceLockError',
  'SpaceLockLogger',
  'SpaceLockOptions',
  'WithSpaceLockOptions',
  'WrongModeError',
  'isSkipped',
];

/** Internals that must not show in the shipped declarations. */
const INTERNAL_NAMES = [
  'LeaseState',
  'resolveOptions',
  'ResolvedOptions',
  'refreshInterval',
  'WaitPool',
  'Heartbeat',
  'ReplyDeadlines',
  'AcquireContext',
  'acquireOnce',
  'acksWanted',
  'parseAck',
  'LockCommand',
  'KeyedCommand',
  'BatchCommand',
  'ReplyCommand',
  'connectionKeyPrefix',
  'duplicateForCommands',
  'closeConnection',
  'ReconnectCounter',
  'LinkedList',
  'parseGrant',
  'COMMAND_TIMED_OUT',
  'isUnknownSpacelockCommand',
];

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

  it('ships dist with declarations, the README and the LICENSE, nothing else', (t: TestContext) => {
    if (reason) return void t.skip(reason);
    const files = JSON.parse(readFileSync(path.join(dir, 'files.json'), 'utf8')) as string[];
    for (const f of ['package.json', 'README.md', 'LICENSE', 'dist/index.js', 'dist/index.d.ts', 'dist/space-lock.d.ts']) {
      assert.ok(files.includes(f), `${f} in the tarball`);
    }
    assert.deepEqual(
      files.filter((f) => !f.startsWith('dist/') && !['package.json', 'README.md', 'LICENSE'].includes(f)),
      [],
      'no sources, tests or config',
    );
    assert.deepEqual(files.filter((f) => f.endsWith('.map')), [], 'no source maps');
  });

  it('npm pack --dry-run lists no source maps, and the LICENSE, README and entry points', (t: TestContext) => {
    if (reason) return void t.skip(reason);
    const out = execFileSync('npm', ['pack', '--dry-run', '--ignore-scripts', '--json'], { cwd: pkgDir, encoding: 'utf8' });
    const [info] = JSON.parse(out) as Array<{ files: Array<{ path: string }> }>;
    const files = info!.files.map((f) => f.path);
    for (const f of ['LICENSE', 'README.md', 'dist/index.js', 'dist/index.d.ts']) assert.ok(files.includes(f), `${f} listed`);
    assert.deepEqual(files.filter((f) => f.endsWith('.map')), [], 'no .map files');
    const license = readFileSync(path.join(pkgDir, 'LICENSE'), 'utf8');
    const pkg = JSON.parse(readFileSync(path.join(pkgDir, 'package.json'), 'utf8')) as { license: string };
    assert.equal(pkg.license, 'MIT');
    assert.match(license, /^MIT License\n\nCopyright \(c\) \d{4} /);
  });

  it('the shipped declarations export the public API and show no internals', (t: TestContext) => {
    if (reason) return void t.skip(reason);
    const unpacked = path.join(dir, 'unpacked');
    mkdirSync(unpacked, { recursive: true });
    execFileSync('tar', ['-xzf', tarball, '-C', unpacked]);
    const distDir = path.join(unpacked, 'package/dist');
    const declarations = readdirSync(distDir).filter((f) => f.endsWith('.d.ts'));
    assert.ok(declarations.includes('index.d.ts'));
    for (const f of declarations) {
      const text = readFileSync(path.join(distDir, f), 'utf8');
      for (const name of INTERNAL_NAMES) {
        assert.doesNotMatch(text, new RegExp(`\\b${name}\\b`), `${name} shows in ${f}`);
      }
    }
    // What a consumer's compiler sees as the package's exports: exactly the public names.
    const program = ts.createProgram([path.join(distDir, 'index.d.ts')], { strict: true, types: [], noEmit: true });
    const checker = program.getTypeChecker();
    const index = program.getSourceFile(path.join(distDir, 'index.d.ts'))!;
    const exported = checker.getExportsOfModule(checker.getSymbolAtLocation(index)!).map((s) => s.name);
    assert.deepEqual(exported.sort(), [...PUBLIC_NAMES].sort());
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

    // The declarations work for a strict TypeScript consumer (exactOptionalPropertyTypes too).
    writeFileSync(
      path.join(app, 'check.ts'),
      `import { Redis } from 'ioredis';
import { SpaceLock, isSkipped, ModuleNotLoadedError, type Lease } from 'spacelock-client';
const locks = new SpaceLock(new Redis({ lazyConnect: true }), { ttlMs: 30_000, keyPrefix: 'git-sync:lock:' });
async function f(): Promise<number> {
  const r = await locks.withSpaceLock('s', async (lease: Lease) => { const t: bigint | undefined = lease.token; void t; lease.signal.throwIfAborted(); return 1; });
  if (isSkipped(r)) { const why: 'in-progress' | 'lock-held' | 'not-acknowledged' = r.skipped; void why; return 0; }
  const w = await locks.withSpaceLock('s', async () => 'x', { waitMs: 5_000 });
  if (typeof w !== 'string') { const why: 'in-progress' | 'lock-held' | 'timed-out' | 'not-acknowledged' = w.skipped; void why; }
  if (typeof w !== 'string' && w.skipped === 'not-acknowledged') { const n: number = w.acknowledged + w.required; void n; }
  // Options left undefined are accepted under exactOptionalPropertyTypes.
  const opts: { waitMs?: number; signal?: AbortSignal } = {};
  await locks.withSpaceLock('s', async () => 2, { waitMs: undefined, signal: undefined });
  await locks.withSpaceLock('s', async () => 3, { waitMs: opts.waitMs, signal: opts.signal });
  new SpaceLock(new Redis({ lazyConnect: true }), { ttlMs: undefined, logger: undefined, fallback: undefined });
  return r;
}
void f; void ModuleNotLoadedError;
`,
    );
    const tsc = path.join(pkgDir, 'node_modules/typescript/bin/tsc');
    execFileSync(
      process.execPath,
      [tsc, '--noEmit', '--strict', '--exactOptionalPropertyTypes', '--skipLibCheck', '--target', 'es2022', '--module', 'commonjs', '--moduleResolution', 'node',
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
