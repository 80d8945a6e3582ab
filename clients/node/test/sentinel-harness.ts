/**
 * A real Redis Sentinel for the tests: a primary and a replica with the
 * module (started with {@link TestServer}), and one `redis-sentinel` process
 * monitoring them with quorum 1, so that `SENTINEL FAILOVER` promotes the
 * replica within a second or so.
 *
 * The binary is `$SPACELOCK_SERVER --sentinel` when a server is chosen
 * (every Redis and Valkey server can run as a sentinel), else
 * `redis-sentinel` on PATH (Debian's `redis-sentinel` package);
 * {@link missingSentinel} says why none can run, for the test to skip with.
 * Each sentinel gets a free port, its own temp dir (it rewrites its config
 * file there) and log, and is killed at {@link TestSentinel.dispose} or when
 * the process exits.
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { freePort, sleep, spawnTracked, TestServer, waitFor } from './harness';

/** Sentinel timings of a fast failover, as the Rust test kit's. */
const DOWN_AFTER_MS = 500;
const FAILOVER_TIMEOUT_MS = 5_000;

function sentinelCommand(): { bin: string; extra: string[] } {
  const server = process.env.SPACELOCK_SERVER;
  return server ? { bin: server, extra: ['--sentinel'] } : { bin: 'redis-sentinel', extra: [] };
}

/** Why no sentinel can run here, or undefined if one can. */
export function missingSentinel(): string | undefined {
  const { bin, extra } = sentinelCommand();
  const r = spawnSync(bin, [...extra, '--version'], { stdio: 'ignore', timeout: 5_000 });
  if (r.error) return `no sentinel can run here: cannot spawn ${bin} (${r.error.message}); install redis-sentinel`;
  return undefined;
}

function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = createConnection({ port, host: '127.0.0.1' });
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), 300);
    sock.on('error', () => done(false));
    sock.on('data', (d) => done(d.toString().startsWith('+PONG')));
    sock.write('*1\r\n$4\r\nPING\r\n');
  });
}

/** `INFO replication` of `redis` as a map. */
export async function replicationInfo(redis: Redis): Promise<Map<string, string>> {
  const info = await redis.info('replication');
  return new Map(
    info
      .split(/\r?\n/)
      .filter((l) => l.includes(':'))
      .map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1)] as [string, string]),
  );
}

/** Makes `replica` replicate `primary` and waits until its link is up (the initial sync done). */
export async function replicate(replica: TestServer, primary: TestServer): Promise<void> {
  const admin = new Redis({ port: replica.port, host: '127.0.0.1', maxRetriesPerRequest: 1 });
  admin.on('error', () => undefined);
  try {
    await admin.call('REPLICAOF', '127.0.0.1', String(primary.port));
    await waitFor(
      `the replica on ${replica.port} to sync from ${primary.port}`,
      async () => {
        const info = await replicationInfo(admin).catch(() => undefined);
        return info?.get('role') === 'slave' && info.get('master_link_status') === 'up' && info.get('master_port') === String(primary.port);
      },
      15_000,
      20,
    );
  } finally {
    admin.disconnect();
  }
}

export class TestSentinel {
  private readonly admin: Redis;

  private constructor(
    private child: ChildProcess | undefined,
    readonly port: number,
    readonly name: string,
    readonly dir: string,
  ) {
    this.admin = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 1 });
    this.admin.on('error', () => undefined);
  }

  /**
   * Starts a sentinel monitoring `primary` as `name` (quorum 1, down after
   * 500 ms, failover timeout 5 s) and waits until it answers PING and
   * names `primary`.
   */
  static async start(primary: TestServer, name: string): Promise<TestSentinel> {
    const port = await freePort();
    const dir = mkdtempSync(path.join(tmpdir(), 'spacelock-sentinel-'));
    const log = path.join(dir, 'sentinel.log');
    const conf = path.join(dir, 'sentinel.conf');
    // Sentinel rewrites its config file: it must be writable.
    writeFileSync(
      conf,
      [
        `port ${port}`,
        'bind 127.0.0.1',
        'daemonize no',
        `dir ${dir}`,
        `logfile ${log}`,
        `sentinel monitor ${name} 127.0.0.1 ${primary.port} 1`,
        `sentinel down-after-milliseconds ${name} ${DOWN_AFTER_MS}`,
        `sentinel failover-timeout ${name} ${FAILOVER_TIMEOUT_MS}`,
        `sentinel parallel-syncs ${name} 1`,
        '',
      ].join('\n'),
    );
    const { bin, extra } = sentinelCommand();
    const { child, stderr, exited } = spawnTracked(bin, [conf, ...extra]);
    const readLog = (): string => {
      try {
        return readFileSync(log, 'utf8');
      } catch {
        return '';
      }
    };
    const deadline = performance.now() + 10_000;
    while (!(await ping(port))) {
      if (exited() || performance.now() > deadline) {
        child.kill('SIGKILL');
        rmSync(dir, { recursive: true, force: true });
        throw new Error(`the sentinel (${bin}) ${exited() ?? 'did not answer PING within 10 s'}\n${stderr()}\n${readLog()}`);
      }
      await sleep(20);
    }
    const s = new TestSentinel(child, port, name, dir);
    await waitFor('the sentinel to name the primary', async () => (await s.primaryPort()) === primary.port, 10_000, 20);
    return s;
  }

  /** What ioredis needs to connect through this sentinel. */
  get sentinels(): Array<{ host: string; port: number }> {
    return [{ host: '127.0.0.1', port: this.port }];
  }

  /** `SENTINEL get-master-addr-by-name`: the port of the primary it names now. */
  async primaryPort(): Promise<number | undefined> {
    const addr = (await this.admin.call('SENTINEL', 'get-master-addr-by-name', this.name).catch(() => null)) as
      | [string, string]
      | null;
    return addr ? Number(addr[1]) : undefined;
  }

  /**
   * Whether the sentinel knows a replica on `port` that it could promote:
   * not down, connected, its link to the primary up (as of its last INFO).
   */
  async knowsReplica(port: number): Promise<boolean> {
    const replicas = (await this.admin.call('SENTINEL', 'replicas', this.name).catch(() => [])) as string[][];
    return replicas.some((fields) => {
      const f = new Map<string, string>();
      for (let i = 0; i + 1 < fields.length; i += 2) f.set(fields[i]!, fields[i + 1]!);
      const flags = f.get('flags') ?? '';
      return f.get('port') === String(port) && !flags.includes('down') && !flags.includes('disconnected');
    });
  }

  /** `SENTINEL FAILOVER`: a planned failover, without asking other sentinels. */
  async failover(): Promise<void> {
    await this.admin.call('SENTINEL', 'FAILOVER', this.name);
  }

  log(): string {
    try {
      return readFileSync(path.join(this.dir, 'sentinel.log'), 'utf8');
    } catch {
      return '';
    }
  }

  async dispose(): Promise<void> {
    this.admin.disconnect();
    const child = this.child;
    this.child = undefined;
    if (child && child.exitCode === null) {
      const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGKILL');
      await gone;
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
