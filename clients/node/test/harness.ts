/**
 * Test harness: real `redis-server`s with the module, started and stopped by
 * the tests, and the per-suite fixture on top of them (`withServer`,
 * `withCluster`, `skipped`).
 *
 * * The binary is `$SPACELOCK_SERVER` (default `redis-server` on PATH); the
 *   module is `$SPACELOCK_MODULE`, else `<repo>/target/release/libspacelock.so`.
 * * Each server gets a free loopback port below the kernel's ephemeral range
 *   (so no client connection of a parallel test can take it between our
 *   check and the server's bind), its own temp dir and log file.
 * * Startup polls PING with a deadline and fails fast, with the log, if the
 *   process exits. Teardown sends SHUTDOWN NOSAVE, then kills.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, type TestContext } from 'node:test';
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import { SpaceLock, type SpaceLockLogger, type SpaceLockOptions } from '../src';

/** The repository root (this file runs from clients/node/build/test/). */
export const REPO = path.resolve(__dirname, '../../../..');

export function moduleFile(): string {
  return process.env.SPACELOCK_MODULE ?? path.join(REPO, 'target/release/libspacelock.so');
}

export function serverBinary(): string {
  return process.env.SPACELOCK_SERVER ?? 'redis-server';
}

/** Why the module tests cannot run here, or undefined if they can. */
export function missingModule(): string | undefined {
  const m = moduleFile();
  return existsSync(m) ? undefined : `module not built: ${m} (run \`make build\` or set SPACELOCK_MODULE)`;
}

/**
 * Skips `t` (with the reason) when the module is not built; true if it did.
 * A test that needs the module starts with `if (skipped(t)) return;`.
 */
export function skipped(t: TestContext): boolean {
  const reason = missingModule();
  if (reason) t.skip(reason);
  return reason !== undefined;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `check` every `everyMs` until it returns true; fails after `timeoutMs`. */
export async function waitFor(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
  everyMs = 10,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** How many times the server has run `command` (`INFO commandstats`; lower case, `.` for a module's). */
export async function commandCalls(redis: Redis, command: string): Promise<number> {
  const m = new RegExp(`^cmdstat_${command.replace(/\./g, '\\.')}:calls=(\\d+)`, 'm').exec(await redis.info('commandstats'));
  return Number(m?.[1] ?? 0);
}

function ephemeralRange(): [number, number] {
  try {
    const [lo, hi] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    if (lo && hi) return [lo, hi];
  } catch {
    // not Linux: use the IANA range
  }
  return [49152, 65535];
}

let nextPort = 0;

function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

/** A free loopback port below the ephemeral range, different per process. */
export async function freePort(): Promise<number> {
  const [lo, hi] = ephemeralRange();
  const [base, span] = lo > 12_000 ? [10_000, lo - 10_000] : [hi + 1, 65_535 - hi];
  if (nextPort === 0) nextPort = (process.pid * 7919 + Date.now()) % span;
  for (let i = 0; i < Math.min(span, 4096); i++) {
    const port = base + (nextPort++ % span);
    if (await portIsFree(port)) return port;
  }
  throw new Error('no free port');
}

/** Sends one command over a raw socket (no client library retries); resolves with the raw reply. */
function rawCommand(port: number, args: string[], timeoutMs = 1_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = createConnection({ port, host: '127.0.0.1' });
    let data = '';
    const done = (err?: Error): void => {
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(data);
    };
    const timer = setTimeout(() => done(new Error('timeout')), timeoutMs);
    sock.on('error', done);
    sock.on('close', () => done());
    sock.on('data', (d) => {
      data += d.toString();
      if (data.endsWith('\r\n')) done();
    });
    sock.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`);
  });
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

/** A server process started by the tests, killed at the latest when the test process exits. */
export interface Tracked {
  child: ChildProcess;
  /** What it wrote to stderr so far. */
  stderr(): string;
  /** Why it is gone (exited, or could not be spawned), `undefined` while it runs. */
  exited(): string | undefined;
}

/** Spawns `bin` with `args` as a {@link Tracked} process. */
export function spawnTracked(bin: string, args: string[]): Tracked {
  const child = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d) => (stderr += d));
  let exited: string | undefined;
  child.on('exit', (code, sig) => {
    exited = `exited with ${code ?? sig}`;
    live.delete(child);
  });
  child.on('error', (e) => (exited = `cannot spawn ${bin}: ${e.message}`));
  live.add(child);
  return { child, stderr: () => stderr, exited: () => exited };
}

export interface ServerOptions {
  /** Load the module (default true). */
  module?: boolean;
  /** Extra `--name value` directives. */
  args?: Array<[string, string]>;
  /** Reuse this port (restarts). */
  port?: number;
  /** A cluster node with this bus port. */
  clusterBusPort?: number;
  /** The server binary (default {@link serverBinary}). */
  bin?: string;
}

export class TestServer {
  private child: ChildProcess | undefined;
  private readonly clients: Redis[] = [];

  private constructor(
    readonly port: number,
    readonly dir: string,
    private readonly options: ServerOptions,
  ) {}

  /** Starts a server and waits until it answers PING (retrying on a port clash). */
  static async start(options: ServerOptions = {}): Promise<TestServer> {
    for (let attempt = 0; ; attempt++) {
      const port = options.port ?? (await freePort());
      const dir = mkdtempSync(path.join(tmpdir(), 'spacelock-node-'));
      const s = new TestServer(port, dir, options);
      try {
        await s.spawn();
        return s;
      } catch (err) {
        rmSync(dir, { recursive: true, force: true });
        const clash = /Address already in use|Could not create server TCP/.test(String(err));
        if (!clash || options.port !== undefined || attempt >= 4) throw err;
      }
    }
  }

  get logFile(): string {
    return path.join(this.dir, `server-${this.port}.log`);
  }

  log(): string {
    try {
      return readFileSync(this.logFile, 'utf8');
    } catch {
      return '';
    }
  }

  private async spawn(): Promise<void> {
    const args = ['--port', String(this.port), '--bind', '127.0.0.1', '--dir', this.dir, '--logfile', this.logFile];
    args.push('--save', '', '--appendonly', 'no', '--daemonize', 'no', '--enable-debug-command', 'yes');
    if (this.options.clusterBusPort !== undefined) {
      args.push('--cluster-enabled', 'yes', '--cluster-port', String(this.options.clusterBusPort));
      args.push('--cluster-node-timeout', '5000');
    }
    if (this.options.module !== false) args.push('--loadmodule', moduleFile());
    for (const [k, v] of this.options.args ?? []) args.push(`--${k}`, v);
    const { child, stderr, exited } = spawnTracked(this.options.bin ?? serverBinary(), args);
    this.child = child;
    const deadline = performance.now() + 20_000;
    for (;;) {
      if (exited()) throw new Error(`server ${exited()}\n${stderr()}\n${this.log()}`);
      const reply = await rawCommand(this.port, ['PING'], 200).catch(() => '');
      if (reply.startsWith('+PONG')) return;
      if (performance.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error(`server not ready after 20 s\n${this.log()}`);
      }
      await sleep(20);
    }
  }

  /** A new ioredis connection (closed at stop). */
  client(options: RedisOptions = {}): Redis {
    const c = new Redis({ port: this.port, host: '127.0.0.1', lazyConnect: false, ...options });
    c.on('error', () => undefined);
    this.clients.push(c);
    return c;
  }

  /** SHUTDOWN NOSAVE, then SIGKILL after 5 s. */
  async stop(): Promise<void> {
    for (const c of this.clients.splice(0)) c.disconnect();
    const child = this.child;
    this.child = undefined;
    if (!child || child.exitCode !== null) return;
    child.kill('SIGCONT'); // a suspended server could not shut down
    const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    await rawCommand(this.port, ['SHUTDOWN', 'NOSAVE']).catch(() => undefined);
    const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
    await gone;
    clearTimeout(timer);
  }

  /** SIGSTOP: the server keeps its connections but answers nothing until {@link resume}. */
  suspend(): void {
    this.child?.kill('SIGSTOP');
  }

  /** SIGCONT after {@link suspend}. */
  resume(): void {
    this.child?.kill('SIGCONT');
  }

  /** Stops, then starts again on the same port with an empty data set. */
  async restartEmpty(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
    const fresh = await TestServer.start({ ...this.options, port: this.port });
    this.child = fresh.child;
    (this as { dir: string }).dir = fresh.dir;
  }

  async dispose(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Takes `name` with `locks` and holds it until `release()`; resolves once the
 * holder's body runs. `done` is the holder's `withSpaceLock` call.
 */
/**
 * Runs `script` in a child Node process (from the test build directory)
 * that prints `closed` once its SpaceLock is closed, and resolves how many
 * ms after that line the process exited (a timer left behind shows here).
 */
export async function msFromCloseToExit(script: string): Promise<number> {
  const child = spawn(process.execPath, ['-e', script], { cwd: __dirname, stdio: ['ignore', 'pipe', 'inherit'] });
  let closedAt: number | undefined;
  child.stdout?.on('data', (d: Buffer) => {
    if (d.toString().includes('closed')) closedAt ??= performance.now();
  });
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  const exitedAt = performance.now();
  if (code !== 0) throw new Error(`the script exited with ${code}`);
  if (closedAt === undefined) throw new Error('the script never got to close()');
  return exitedAt - closedAt;
}

export async function holdLock(locks: SpaceLock, name: string): Promise<{ release: () => void; done: Promise<unknown> }> {
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  let holding = false;
  const done = locks.withSpaceLock(name, async () => {
    holding = true;
    await released;
  });
  await waitFor('the holder', () => holding);
  return { release, done };
}

/** `INFO spacelock` field `spacelock_<name>` as a number. */
export async function spacelockStat(redis: Redis, name: string): Promise<number> {
  const info = await redis.info('spacelock');
  const m = new RegExp(`^spacelock_${name}:(\\d+)`, 'm').exec(info);
  if (!m) throw new Error(`no spacelock_${name} in INFO spacelock`);
  return Number(m[1]);
}

/** A logger that records what the client says, for assertions. */
export function recordingLogger(): SpaceLockLogger & { warns: string[]; logs: string[]; errors: string[] } {
  const warns: string[] = [];
  const logs: string[] = [];
  const errors: string[] = [];
  return {
    warns,
    logs,
    errors,
    log: (m: string) => void logs.push(m),
    warn: (m: string) => void warns.push(m),
    error: (m: string) => void errors.push(m),
  };
}

/** Blocks the event loop for `ms` (a stalled process: GC, CPU-bound work). */
export function stallEventLoop(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    // spin
  }
}

/** A Redis Cluster of `n` masters with the module, slots split evenly. */
export class TestCluster {
  private constructor(readonly nodes: TestServer[]) {}

  static async start(n = 3): Promise<TestCluster> {
    const nodes: TestServer[] = [];
    for (let i = 0; i < n; i++) nodes.push(await TestServer.start({ clusterBusPort: await freePort() }));
    const cluster = new TestCluster(nodes);
    const admin = nodes.map((s) => s.client());
    for (let i = 0; i < n; i++) {
      // Distinct config epochs up front, as `redis-cli --cluster create` does.
      await admin[i]!.call('CLUSTER', 'SET-CONFIG-EPOCH', String(i + 1));
      const lo = Math.floor((i * 16384) / n);
      const hi = Math.floor(((i + 1) * 16384) / n) - 1;
      await admin[i]!.call('CLUSTER', 'ADDSLOTSRANGE', String(lo), String(hi));
    }
    for (let i = 1; i < n; i++) {
      const bus = ((await admin[i]!.config('GET', 'cluster-port')) as string[])[1]!;
      await admin[0]!.call('CLUSTER', 'MEET', '127.0.0.1', String(nodes[i]!.port), bus);
    }
    for (const a of admin) {
      await waitFor(
        'cluster_state:ok',
        async () => {
          const info = (await a.call('CLUSTER', 'INFO')) as string;
          return info.includes('cluster_state:ok') && info.includes(`cluster_known_nodes:${n}`);
        },
        30_000,
        50,
      );
    }
    return cluster;
  }

  get startupNodes(): Array<{ host: string; port: number }> {
    return this.nodes.map((s) => ({ host: '127.0.0.1', port: s.port }));
  }

  async dispose(): Promise<void> {
    await Promise.all(this.nodes.map((s) => s.dispose()));
  }
}

interface Started<C extends Redis | Cluster> {
  redis: C;
  admin: C;
  dispose(): Promise<void>;
}

/**
 * A suite's fixture. Built inside a `describe`, it registers there a `before`
 * hook that runs `start` (not if the module is needed and not built: the tests
 * then skip themselves with `skipped(t)`) and an `after` hook that closes
 * every lock made or tracked, then disposes what `start` started. What it
 * gives is valid from the `before` hook on.
 */
class LockFixture<C extends Redis | Cluster, S extends Started<C>> {
  private state: S | undefined;
  private readonly made: SpaceLock[] = [];

  constructor(
    private readonly keyPrefix: string,
    needsModule: boolean,
    start: () => Promise<S>,
  ) {
    before(async () => {
      if (needsModule && missingModule()) return;
      this.state = await start();
    });
    after(async () => {
      await Promise.all(this.made.map((l) => l.close()));
      await this.state?.dispose();
    });
  }

  protected get started(): S {
    if (!this.state) throw new Error('the suite fixture is not started (its before hook failed or was skipped)');
    return this.state;
  }

  /** The connection `make` builds its locks on. */
  get redis(): C {
    return this.started.redis;
  }

  /** A second connection, for looking at and meddling with the keys. */
  get admin(): C {
    return this.started.admin;
  }

  /** A SpaceLock on `redis` with the suite's keyPrefix and a recording logger (`opts` override both); closed at teardown. */
  make(opts: SpaceLockOptions = {}): SpaceLock {
    return this.track(new SpaceLock(this.redis, { keyPrefix: this.keyPrefix, logger: recordingLogger(), ...opts }));
  }

  /** Closes `lock` at teardown too (for a lock built by hand); returns it. */
  track(lock: SpaceLock): SpaceLock {
    this.made.push(lock);
    return lock;
  }
}

class ServerFixture extends LockFixture<Redis, Started<Redis> & { server: TestServer }> {
  get server(): TestServer {
    return this.started.server;
  }
}

class ClusterFixture extends LockFixture<Cluster, Started<Cluster> & { cluster: TestCluster; nodeAdmins: Redis[] }> {
  get cluster(): TestCluster {
    return this.started.cluster;
  }

  /** A plain connection to each node, in `cluster.nodes` order (INFO per node). */
  get nodeAdmins(): Redis[] {
    return this.started.nodeAdmins;
  }
}

/**
 * One server for the enclosing `describe` (with the module unless
 * `options.module` is false), `redis` and `admin` connections to it, and
 * `make` for locks on `redis` under `keyPrefix`. See {@link LockFixture}.
 */
export function withServer(keyPrefix: string, options: ServerOptions = {}): ServerFixture {
  return new ServerFixture(keyPrefix, options.module !== false, async () => {
    const server = await TestServer.start(options);
    return { server, redis: server.client(), admin: server.client(), dispose: () => server.dispose() };
  });
}

/**
 * A cluster of `nodes` masters for the enclosing `describe`, `redis` and
 * `admin` ioredis.Cluster connections to it, `nodeAdmins` (one plain
 * connection a node), and `make` for locks on `redis` under `keyPrefix`. See
 * {@link LockFixture}.
 */
export function withCluster(keyPrefix: string, nodes = 3): ClusterFixture {
  return new ClusterFixture(keyPrefix, true, async () => {
    const cluster = await TestCluster.start(nodes);
    const nodeAdmins = cluster.nodes.map((s) => s.client());
    const redis = new Cluster(cluster.startupNodes);
    const admin = new Cluster(cluster.startupNodes);
    const dispose = async (): Promise<void> => {
      redis.disconnect();
      admin.disconnect();
      await cluster.dispose();
    };
    return { cluster, nodeAdmins, redis, admin, dispose };
  });
}

/**
 * A TCP proxy on a free loopback port in front of `127.0.0.1:target`, whose
 * forwarding can be paused: {@link pause} holds every byte, both ways, on
 * every connection (kept in order, the connections stay open), {@link resume}
 * delivers them and forwards again. A replica that replicates through it has
 * its link stalled on demand, with no timing luck needed (the Rust test
 * kit's proxy, testkit/src/proxy.rs, does the same for its tests).
 */
export class TcpProxy {
  private paused = false;
  private readonly links = new Set<{ flush(): void; close(): void }>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(target: number): Promise<TcpProxy> {
    let proxy: TcpProxy | undefined;
    const server = createServer((client) => proxy?.link(client, target));
    const port = await new Promise<number>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve((server.address() as { port: number }).port));
    });
    proxy = new TcpProxy(server, port);
    return proxy;
  }

  private link(client: Socket, target: number): void {
    const upstream = createConnection({ port: target, host: '127.0.0.1' });
    const held: Array<[Socket, Buffer]> = [];
    const forward = (to: Socket) => (chunk: Buffer) => {
      if (this.paused) held.push([to, chunk]);
      else to.write(chunk);
    };
    client.on('data', forward(upstream));
    upstream.on('data', forward(client));
    const link = {
      flush: () => {
        for (const [to, chunk] of held.splice(0)) to.write(chunk);
      },
      close: () => {
        client.destroy();
        upstream.destroy();
        this.links.delete(link);
      },
    };
    for (const s of [client, upstream]) {
      s.on('error', () => undefined);
      s.on('close', link.close);
    }
    this.links.add(link);
  }

  /** Holds every byte from now on, both ways (the connections stay open). */
  pause(): void {
    this.paused = true;
  }

  /** Delivers what was held, in order, and forwards again. */
  resume(): void {
    this.paused = false;
    for (const l of this.links) l.flush();
  }

  async close(): Promise<void> {
    for (const l of [...this.links]) l.close();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** `INFO replication` field `name` of `redis`. */
export async function replicationField(redis: Redis, name: string): Promise<string | undefined> {
  const m = new RegExp(`^${name}:(.*?)\\r?$`, 'm').exec(await redis.info('replication'));
  return m?.[1];
}

/**
 * A primary and `n` replicas, all with the module; each replica replicates
 * through its own {@link TcpProxy}, so a test can stall its link.
 * Resolves once every replica has synced and the primary counts them all.
 */
export async function startReplicated(
  n: number,
  options: ServerOptions = {},
): Promise<{ primary: TestServer; replicas: TestServer[]; proxies: TcpProxy[]; dispose(): Promise<void> }> {
  // No diskless-sync delay (5 s by default, waiting for more replicas to join one transfer).
  const primary = await TestServer.start({ ...options, args: [...(options.args ?? []), ['repl-diskless-sync-delay', '0']] });
  const replicas: TestServer[] = [];
  const proxies: TcpProxy[] = [];
  const dispose = async (): Promise<void> => {
    await Promise.all([primary, ...replicas].map((s) => s.dispose()));
    await Promise.all(proxies.map((p) => p.close()));
  };
  try {
    for (let i = 0; i < n; i++) {
      const proxy = await TcpProxy.start(primary.port);
      proxies.push(proxy);
      const replica = await TestServer.start(options);
      replicas.push(replica);
      const admin = replica.client({ maxRetriesPerRequest: 1 });
      await admin.call('REPLICAOF', '127.0.0.1', String(proxy.port));
      await waitFor(`replica ${i} to sync`, async () => (await replicationField(admin, 'master_link_status')) === 'up', 15_000, 20);
    }
    const admin = primary.client();
    await waitFor(
      `the primary to count ${n} replicas`,
      async () => Number(await replicationField(admin, 'connected_slaves')) === n,
      15_000,
      20,
    );
    return { primary, replicas, proxies, dispose };
  } catch (err) {
    await dispose();
    throw err;
  }
}

class ReplicatedFixture extends LockFixture<
  Redis,
  Started<Redis> & { primary: TestServer; replicas: TestServer[]; proxies: TcpProxy[]; replicaAdmins: Redis[] }
> {
  get primary(): TestServer {
    return this.started.primary;
  }

  get replicas(): TestServer[] {
    return this.started.replicas;
  }

  /** The proxy each replica replicates through, in `replicas` order: `pause()` stalls its link. */
  get proxies(): TcpProxy[] {
    return this.started.proxies;
  }

  /** A plain connection to each replica, in `replicas` order. */
  get replicaAdmins(): Redis[] {
    return this.started.replicaAdmins;
  }
}

/**
 * A primary and `n` replicas (each through a pausable {@link TcpProxy}) for
 * the enclosing `describe`: `redis` and `admin` connect to the primary,
 * `replicaAdmins` to the replicas; `make` builds locks on `redis` under
 * `keyPrefix`. See {@link LockFixture}.
 */
export function withReplicas(keyPrefix: string, n = 1): ReplicatedFixture {
  return new ReplicatedFixture(keyPrefix, true, async () => {
    const set = await startReplicated(n);
    const replicaAdmins = set.replicas.map((r) => r.client());
    return { ...set, redis: set.primary.client(), admin: set.primary.client(), replicaAdmins };
  });
}
