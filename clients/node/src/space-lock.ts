import type { Redis } from 'ioredis';
import { acquireOnce, acquireWait, type AcquireContext, type Acquired } from './acquire';
import {
  EXCLUSIVE,
  infoCommand,
  parseInfo,
  releaseCommand,
  type CommandMode,
  type LockInfo,
  type LockShape,
} from './commands';
import {
  closeConnection,
  connectionKeyPrefix,
  duplicateForCommands,
  duplicateForHeartbeats,
  duplicateForWaits,
  isCluster,
  isSentinelBacked,
  ReconnectCounter,
  type LockCommand,
  send,
  type RedisConnection,
} from './connection';
import { ReplyDeadlines } from './deadlines';
import {
  COMMAND_TIMED_OUT,
  CommandTimeoutError,
  isUnknownSpacelockCommand,
  ModuleNotLoadedError,
  NotAcknowledgedError,
  SpaceLockError,
  type LostReason,
  type WrongModeError,
} from './errors';
import { Heartbeat } from './heartbeat';
import { Lease, LeaseState, type LeaseCommands } from './lease';
import { resolveOptions, type ResolvedOptions, type SpaceLockOptions, type WithSpaceLockOptions } from './options';
import { startTimer } from './timers';
import { WaitPool } from './wait-pool';

/**
 * Why `withSpaceLock` did not run `fn`: `'in-progress'` (a call of this
 * SpaceLock is inside the name), `'lock-held'` (another owner holds it),
 * `'timed-out'` (`waitMs` ran out), `'not-acknowledged'` (granted, but
 * fewer than `replicas` replicas acknowledged the grant within
 * `ackTimeoutMs`: it was released).
 */
export type SkipReason = 'in-progress' | 'lock-held' | 'timed-out' | 'not-acknowledged';

/**
 * A grant that fewer replicas than the `replicas` option acknowledged within
 * `ackTimeoutMs`. The grant was released before this was returned; `fn` did
 * not run.
 */
export interface NotAcknowledged {
  readonly skipped: 'not-acknowledged';
  /** How many replicas acknowledged the grant (what `WAIT` answered; with `waitAof`, the replicas that fsynced it). */
  readonly acknowledged: number;
  /** How many had to: the `replicas` option. */
  readonly required: number;
}

/**
 * The sentinel `withSpaceLock` returns instead of `fn`'s value when it did
 * not run `fn`: `{ skipped }`, and for `'not-acknowledged'` also
 * `acknowledged` and `required` ({@link NotAcknowledged}).
 */
export type Skipped<R extends SkipReason = SkipReason> = R extends 'not-acknowledged'
  ? NotAcknowledged
  : { readonly skipped: R };

/** What {@link SpaceLock.withSpaceLockOutcome} returns when `fn` ran (the Rust client's `Outcome::Ran`). */
export interface Ran<T> {
  /** What `fn` returned. */
  readonly value: T;
  /** The fencing token `fn` ran under (`undefined` in Lua fallback mode). */
  readonly token: bigint | undefined;
  /**
   * Why the lease was lost while `fn` ran (`'not-owner'`, `'expired'`), or
   * `undefined` when it was held until `fn` returned.
   */
  readonly lost: Exclude<LostReason, 'released'> | undefined;
}

/** What {@link SpaceLock.withSpaceLockOutcome} returns: `fn` ran, or why it did not. */
export type Outcome<T> = Ran<T> | Skipped;

/**
 * The existing `SpaceLockService`'s skip sentinel, typed exactly as it types
 * it: what {@link SpaceLockDropIn.withSpaceLock} returns instead of `fn`'s value.
 */
export type ExistingSkipped = { skipped: 'lock-held' | 'in-progress' };

/** Whether `withSpaceLock`'s result is a skip sentinel rather than `fn`'s value. */
export function isSkipped(value: unknown): value is Skipped {
  if (typeof value !== 'object' || value === null || !('skipped' in value)) return false;
  const s = (value as { skipped: unknown }).skipped;
  return s === 'in-progress' || s === 'lock-held' || s === 'timed-out' || s === 'not-acknowledged';
}

/** Options of {@link SpaceLock.close}. */
export interface CloseOptions {
  /**
   * How long `close()` lets running bodies finish, in ms. Bodies still
   * running then have their `lease.signal` aborted and their leases
   * released. Default 10 000; 0 aborts and releases at once.
   */
  timeoutMs?: number;
}

/** How long `close()` lets running bodies finish by default (ms). */
const CLOSE_TIMEOUT_MS = 10_000;

/** A call waiting in this process for a name another call of this SpaceLock is inside. */
interface LocalWaiter {
  /** Hands it the claim. */
  wake(): void;
  /** Gives up on it (the SpaceLock is closing). */
  fail(err: unknown): void;
}

/** This SpaceLock's claim on a key: one call at a time is inside it, others wait in arrival order. */
interface Claim {
  /** Whether the call inside holds the lock (its body runs), rather than still acquiring it. */
  holding: boolean;
  /** Calls with `waitMs` waiting for the claim, first come first served. */
  queue: LocalWaiter[] | undefined;
  /** The lease granted to the call inside, until it is released (`close()` releases it if the body outlasts its deadline). */
  state?: LeaseState | undefined;
}

/** Which names skips are reported with: this client's, or the existing service's. */
type Names = 'client' | 'existing';

/** The most permits a counted lock may have (the module's bound). */
const MAX_LIMIT = 1_000_000;

const closedError = (): SpaceLockError => new SpaceLockError('the SpaceLock is closed');

/**
 * Per-name lease locks over Redis with the spacelock module: the behaviour of
 * the existing `SpaceLockService`, with fencing tokens, a lost-lease signal,
 * one batched heartbeat and fair server-side waiting.
 *
 * A SpaceLock runs its commands on connections it duplicates from the one
 * you pass (with `stringNumbers: true`, so tokens above 2^53 stay exact);
 * call {@link SpaceLock.close} on shutdown. Your connection is never used
 * for commands nor closed.
 *
 * @example
 * ```ts
 * const locks = new SpaceLock(redis, { ttlMs: 30_000, keyPrefix: 'git-sync:lock:' });
 * const r = await locks.withSpaceLock(spaceId, async (lease) => sync(lease.token, lease.signal));
 * if (isSkipped(r)) return r.skipped; // 'in-progress' | 'lock-held' ('not-acknowledged' with `replicas`)
 * ```
 */
export class SpaceLock {
  /** This instance's id; each lease writes `<owner>:<n>` into its key. */
  readonly owner: string;
  private readonly opts: ResolvedOptions;
  private readonly source: RedisConnection;
  private readonly connPrefix: string;
  /** The keys this SpaceLock is inside (acquiring, or running a body), with their local queues. */
  private readonly claims = new Map<string, Claim>();
  /** The leases of shared and counted calls whose body runs (many per name; no local claim). */
  private readonly shares = new Set<LeaseState>();
  /** Controllers of the calls that wait (`waitMs`): `close()` stops their waits. */
  private readonly waits = new Set<AbortController>();
  /** Calls in flight (waiting, acquiring, running or releasing). */
  private active = 0;
  /** Resolves `close()`'s wait once no call is in flight. */
  private onIdle: (() => void) | undefined;
  private closing: Promise<void> | undefined;
  private readonly heartbeat: Heartbeat;
  private readonly deadlines = new ReplyDeadlines();
  private commandConn: RedisConnection | undefined;
  private heartbeatConn: Redis | undefined;
  private reconnectCounter: ReconnectCounter | undefined;
  private waitPool: WaitPool | undefined;
  private mode: CommandMode = 'module';
  private seq = 0;
  private closed = false;
  private readonly ctx: AcquireContext;
  private readonly leaseCommands: LeaseCommands;

  /**
   * @param redis an ioredis `Redis` or `Cluster`; the SpaceLock duplicates it.
   * @param options see {@link SpaceLockOptions}.
   */
  constructor(redis: RedisConnection, options: SpaceLockOptions = {}) {
    this.opts = resolveOptions(options);
    this.owner = this.opts.owner;
    this.source = redis;
    this.connPrefix = connectionKeyPrefix(redis);
    this.heartbeat = new Heartbeat(() => this.heartbeatTarget(), this.opts);
    const self = this; // for the `mode` getter below
    this.ctx = {
      opts: this.opts,
      deadlines: this.deadlines,
      get mode() {
        return self.mode;
      },
      followsFailover: isSentinelBacked(redis),
      conn: () => this.conn(),
      pool: () => this.pool(),
      reconnects: () => this.reconnectCounter?.epoch ?? 0,
      switchToLua: (err) => this.switchToLua(err),
      release: (key, owner, mode, boundMs) => this.release(key, owner, mode, boundMs).then(() => undefined),
    };
    this.leaseCommands = {
      send: (command, what) => this.sendBounded(command, what),
      dataKey: (key) => this.connPrefix + key,
    };
  }

  /**
   * The lock's key for `name` as stored in Redis: your connection's ioredis
   * `keyPrefix` (if it has one), then this SpaceLock's `keyPrefix`, then
   * `name`. The same string as {@link Lease.key}: `GET` it on a connection
   * without a `keyPrefix` to see the holder.
   */
  key(name: string): string {
    return this.connPrefix + this.opts.keyPrefix + name;
  }

  /**
   * Whether an exclusive call of this SpaceLock is inside `name` right now
   * (acquiring it or running its body). Shared and counted calls are not
   * counted here: they take no claim in this process.
   */
  isRunning(name: string): boolean {
    return this.claims.has(this.key(name));
  }

  /** How many leases the heartbeat is keeping alive. */
  get activeLeases(): number {
    return this.heartbeat.size;
  }

  /** `'lua'` once `fallback: 'lua'` has switched to the existing service's commands, else `'module'`. */
  get commandMode(): CommandMode {
    return this.mode;
  }

  /**
   * Runs `fn` while holding the lock `name`, as the existing
   * `SpaceLockService.withSpaceLock(spaceId, fn)` does:
   *
   * 1. If a call of this SpaceLock is already inside `name`, returns
   *    `{ skipped: 'in-progress' }` at once (the check and the claim are one
   *    synchronous step) — or, with `waitMs`, waits for it in this process,
   *    behind the calls that came before, in arrival order.
   * 2. Takes the lock (`SPACELOCK.ACQUIRE`); if another owner holds it,
   *    returns `{ skipped: 'lock-held' }` — or, with `waitMs`, waits for it
   *    on the server for what is left of `waitMs`.
   *    A call with `waitMs` that did not get the lock by then returns
   *    `{ skipped: 'timed-out' }`: `waitMs` bounds the local and the server
   *    wait together. A server that is slow to answer (writes paused, the
   *    process stopped) is waited for too; if it has not answered
   *    `waitGraceMs` after `waitMs`, the call gives up with
   *    `{ skipped: 'timed-out' }` and releases whatever it may be granted.
   * 3. With the `replicas` option: sends `WAIT replicas ackTimeoutMs` (or
   *    `WAITAOF`) on the connection that got the grant; if fewer replicas
   *    acknowledged it in time, releases it and returns
   *    `{ skipped: 'not-acknowledged', acknowledged, required }`.
   * 4. Calls `fn(lease)` while the heartbeat refreshes the lock every ttl/3
   *    (with `replicas`, a refresh moves the lease's deadline only once
   *    acknowledged). If the lease is lost, `lease.signal` aborts; `fn`
   *    decides what to do.
   * 5. Releases the lock however `fn` ends, and returns its value or
   *    rethrows its error. A failed release is logged, never thrown.
   *
   * @throws {@link ModuleNotLoadedError} when the server lacks the module
   *   (unless `fallback: 'lua'`); without `waitMs`,
   *   {@link CommandTimeoutError} when the server does not answer the
   *   acquire within one ttl (a grant that late would already have
   *   expired); the caller's `signal.reason` when it aborts before `fn`
   *   starts; {@link SpaceLockError} when the SpaceLock is closed before
   *   `fn` starts, or the server refuses `WAITAOF` (`waitAof` on Redis < 7.2
   *   or with `appendonly no`); {@link CommandTimeoutError} when `WAIT`
   *   gets no reply within the ttl; {@link WrongModeError} when `name` is
   *   a counted lock ({@link withPermit}); other Redis errors from the
   *   acquire; and whatever `fn` throws.
   */
  withSpaceLock<T>(
    name: string,
    fn: (lease: Lease) => T | PromiseLike<T>,
    options?: WithSpaceLockOptions & { waitMs?: undefined },
  ): Promise<T | Skipped<'in-progress' | 'lock-held' | 'not-acknowledged'>>;
  withSpaceLock<T>(
    name: string,
    fn: (lease: Lease) => T | PromiseLike<T>,
    options: WithSpaceLockOptions,
  ): Promise<T | Skipped>;
  withSpaceLock<T>(
    name: string,
    fn: (lease: Lease) => T | PromiseLike<T>,
    options: WithSpaceLockOptions = {},
  ): Promise<T | Skipped> {
    return this.start(name, fn, options, 'client');
  }

  /**
   * `withSpaceLock` with the existing service's skip names: see
   * {@link SpaceLockDropIn.withSpaceLock}.
   *
   * @internal
   */
  withExistingResults<T>(
    name: string,
    fn: (lease: Lease) => T | PromiseLike<T>,
    options: WithSpaceLockOptions | undefined,
  ): Promise<T | ExistingSkipped> {
    return this.start(name, fn, options ?? {}, 'existing') as Promise<T | ExistingSkipped>;
  }

  /**
   * What a call skipped while another call of this SpaceLock is inside its
   * key answers. The existing service answers `'in-progress'` only once that
   * call holds the lock (it claims its key after the acquire); a call still
   * acquiring makes the others take the lock on the server after it, where
   * they find it held: `'lock-held'`.
   */
  private localSkip(claim: Claim, waited: boolean, names: Names): Skipped {
    if (names === 'existing') return { skipped: claim.holding ? 'in-progress' : 'lock-held' };
    return { skipped: waited ? 'timed-out' : 'in-progress' };
  }

  private start<T>(
    name: string,
    fn: (lease: Lease) => T | PromiseLike<T>,
    options: WithSpaceLockOptions,
    names: Names,
  ): Promise<T | Skipped> {
    // Not itself async, so the lock cycle runs through one async frame less;
    // every failure still arrives as a rejection.
    let waitMs: number;
    let key: string;
    let signal: AbortSignal | undefined;
    try {
      ({ waitMs, signal } = this.callOptions(options));
      key = this.key(name);
    } catch (err) {
      return Promise.reject(err);
    }
    // Check and claim in one synchronous step: no await between them.
    const claim = this.claims.get(key);
    if (claim && waitMs === 0) return Promise.resolve(this.localSkip(claim, false, names));
    if (waitMs === 0) {
      this.claims.set(key, { holding: false, queue: undefined });
      return this.runClaimed(name, key, fn, undefined, signal, undefined, names);
    }
    const deadline = performance.now() + waitMs;
    const { wait, unlink } = this.waitController(signal);
    if (!claim) {
      this.claims.set(key, { holding: false, queue: undefined });
      return this.runClaimed(name, key, fn, deadline, signal, wait.signal, names).finally(unlink);
    }
    return this.waitThenRun(name, key, claim, fn, deadline, signal, wait.signal, names).finally(unlink);
  }

  /**
   * The options of one call, checked: `waitMs` (0 when left out) and `signal`.
   * Throws when `waitMs` is invalid, the SpaceLock is closed or `signal` has aborted.
   */
  private callOptions(options: WithSpaceLockOptions | undefined): { waitMs: number; signal: AbortSignal | undefined } {
    // `null` from JavaScript callers counts as no options, or no waitMs.
    const waitMs = options?.waitMs ?? 0;
    const signal = options?.signal ?? undefined;
    if (!Number.isFinite(waitMs) || waitMs < 0) {
      throw new RangeError(`waitMs must be a finite number ≥ 0, got ${waitMs}`);
    }
    if (this.closed) throw closedError();
    signal?.throwIfAborted();
    return { waitMs, signal };
  }

  /**
   * The controller of a waiting call: its wait (local and on the server)
   * stops when the caller's `signal` aborts or the SpaceLock closes.
   * `unlink` once the call is over.
   */
  private waitController(signal: AbortSignal | undefined): { wait: AbortController; unlink: () => void } {
    const wait = new AbortController();
    this.waits.add(wait);
    const onAbort = (): void => wait.abort(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    const unlink = (): void => {
      this.waits.delete(wait);
      signal?.removeEventListener('abort', onAbort);
    };
    return { wait, unlink };
  }

  /**
   * {@link withSpaceLock}, saying in the result whether the lease was lost
   * while `fn` ran: `{ value, token, lost }` when `fn` ran, where `lost` is
   * `'not-owner'` or `'expired'` if the lease ended before `fn` returned
   * (as the lease's `lostReason()` said then), `undefined` if it was held to
   * the end; `{ skipped }` when it did not run. `withSpaceLock` itself keeps
   * the existing service's result (`fn`'s value); a body can also read
   * `lease.lostReason()` on the lease it kept.
   *
   * @example
   * ```ts
   * const o = await locks.withSpaceLockOutcome(spaceId, (lease) => sync(lease.token, lease.signal));
   * if (isSkipped(o)) return o.skipped;
   * if (o.lost) logger.warn(`the sync outlived its lease (${o.lost})`);
   * return o.value;
   * ```
   *
   * @throws as {@link withSpaceLock}; when `fn` throws, its error (the lease
   *   it was given still tells whether it was lost).
   */
  withSpaceLockOutcome<T>(
    name: string,
    fn: (lease: Lease) => T | PromiseLike<T>,
    options: WithSpaceLockOptions = {},
  ): Promise<Outcome<T>> {
    return outcomeOf((body) => this.withSpaceLock(name, body, options ?? {}), fn);
  }

  /**
   * Runs `fn` while holding one share of the reader-writer lock `name`
   * (`SPACELOCK.ACQUIRE key owner ttl SHARED`): any number of shared calls,
   * of this SpaceLock or of others, hold `name` at once, and an exclusive
   * {@link withSpaceLock} call on `name` excludes them all. Each call is its
   * own holder, with its own lease, owner value and fencing token; it is
   * acquired, acknowledged (`replicas`), heartbeated and released as in
   * {@link withSpaceLock}, and `lease.signal` aborts if it is lost.
   *
   * Calls of this SpaceLock do not wait for each other here (no
   * `'in-progress'`): the server alone decides. Without `waitMs` a name
   * held by a writer, or with clients queued on it, gives
   * `{ skipped: 'lock-held' }`; with `waitMs` the call queues on the server
   * in arrival order with every other mode (readers behind a queued writer
   * wait for it), and `{ skipped: 'timed-out' }` when `waitMs` runs out.
   *
   * @example
   * ```ts
   * const r = await locks.withSharedLock(`cache:${spaceId}`, (lease) => readCache(lease.signal), { waitMs: 5_000 });
   * if (isSkipped(r)) return r.skipped; // 'lock-held' | 'timed-out' | 'not-acknowledged'
   * ```
   *
   * @throws {@link WrongModeError} when `name` is a counted lock
   *   ({@link withPermit}); {@link SpaceLockError} in `fallback: 'lua'`
   *   mode (the existing service's commands have no shared locks); and as
   *   {@link withSpaceLock}.
   */
  withSharedLock<T>(
    name: string,
    fn: (lease: Lease) => T | PromiseLike<T>,
    options?: WithSpaceLockOptions & { waitMs?: undefined },
  ): Promise<T | Skipped<'lock-held' | 'not-acknowledged'>>;
  withSharedLock<T>(
    name: string,
    fn: (lease: Lease) => T | PromiseLike<T>,
    options: WithSpaceLockOptions,
  ): Promise<T | Skipped<'lock-held' | 'timed-out' | 'not-acknowledged'>>;
  withSharedLock<T>(
    name: string,
    fn: (lease: Lease) => T | PromiseLike<T>,
    options: WithSpaceLockOptions = {},
  ): Promise<T | Skipped> {
    return this.startShaped(name, fn, options, { kind: 'shared' });
  }

  /**
   * {@link withSharedLock}, saying in the result whether the lease was lost
   * while `fn` ran, as {@link withSpaceLockOutcome} does.
   *
   * @throws as {@link withSharedLock}.
   */
  withSharedLockOutcome<T>(
    name: string,
    fn: (lease: Lease) => T | PromiseLike<T>,
    options: WithSpaceLockOptions = {},
  ): Promise<Outcome<T>> {
    return outcomeOf((body) => this.withSharedLock(name, body, options ?? {}), fn);
  }

  /**
   * Runs `fn` while holding one of the `limit` permits of the counted lock
   * `name` (a semaphore: `SPACELOCK.ACQUIRE key owner ttl LIMIT limit`):
   * at most `limit` calls, of this SpaceLock or of others, run at once.
   * Each permit is its own holder, with its own lease, owner value and
   * fencing token; it is acquired, acknowledged (`replicas`), heartbeated
   * and released as in {@link withSpaceLock}, and a permit whose lease ends
   * (expired, or lost) counts no more on the server at once: `lease.signal`
   * aborts.
   *
   * Every call on `name` must pass the same `limit`. Without `waitMs`, no
   * free permit (or clients queued on the name) gives
   * `{ skipped: 'lock-held' }`; with `waitMs` the call queues on the server
   * and permits are granted in arrival order as they come back, or
   * `{ skipped: 'timed-out' }`.
   *
   * @example
   * ```ts
   * // At most 4 clones at once on this host.
   * const r = await locks.withPermit(`clone-slots:${host}`, 4, (lease) => clone(repo, lease.signal), { waitMs: 60_000 });
   * if (isSkipped(r)) return r.skipped;
   * ```
   *
   * @throws {RangeError} when `limit` is not a whole number from 1 to
   *   1 000 000; {@link WrongModeError} when `name` is a counted lock with
   *   another limit, or a reader-writer lock; {@link SpaceLockError} in
   *   `fallback: 'lua'` mode; and as {@link withSpaceLock}.
   */
  withPermit<T>(
    name: string,
    limit: number,
    fn: (lease: Lease) => T | PromiseLike<T>,
    options?: WithSpaceLockOptions & { waitMs?: undefined },
  ): Promise<T | Skipped<'lock-held' | 'not-acknowledged'>>;
  withPermit<T>(
    name: string,
    limit: number,
    fn: (lease: Lease) => T | PromiseLike<T>,
    options: WithSpaceLockOptions,
  ): Promise<T | Skipped<'lock-held' | 'timed-out' | 'not-acknowledged'>>;
  withPermit<T>(
    name: string,
    limit: number,
    fn: (lease: Lease) => T | PromiseLike<T>,
    options: WithSpaceLockOptions = {},
  ): Promise<T | Skipped> {
    if (typeof limit !== 'number' || !Number.isSafeInteger(limit) || limit < 1 || limit > MAX_LIMIT) {
      return Promise.reject(new RangeError(`limit must be a whole number from 1 to ${MAX_LIMIT}, got ${String(limit)}`));
    }
    return this.startShaped(name, fn, options, { kind: 'limit', limit });
  }

  /**
   * {@link withPermit}, saying in the result whether the lease was lost
   * while `fn` ran, as {@link withSpaceLockOutcome} does.
   *
   * @throws as {@link withPermit}.
   */
  withPermitOutcome<T>(
    name: string,
    limit: number,
    fn: (lease: Lease) => T | PromiseLike<T>,
    options: WithSpaceLockOptions = {},
  ): Promise<Outcome<T>> {
    return outcomeOf((body) => this.withPermit(name, limit, body, options ?? {}), fn);
  }

  /** A shared or counted call: no local claim, straight to the server. */
  private startShaped<T>(
    name: string,
    fn: (lease: Lease) => T | PromiseLike<T>,
    options: WithSpaceLockOptions,
    shape: LockShape,
  ): Promise<T | Skipped> {
    let waitMs: number;
    let key: string;
    let signal: AbortSignal | undefined;
    try {
      ({ waitMs, signal } = this.callOptions(options));
      key = this.key(name);
    } catch (err) {
      return Promise.reject(err);
    }
    if (waitMs === 0) return this.runClaimed(name, key, fn, undefined, signal, undefined, 'client', shape);
    const deadline = performance.now() + waitMs;
    const { wait, unlink } = this.waitController(signal);
    return this.runClaimed(name, key, fn, deadline, signal, wait.signal, 'client', shape).finally(unlink);
  }

  /** Waits in this process for `claim` to come to this call, then runs as {@link runClaimed}. */
  private async waitThenRun<T>(
    name: string,
    key: string,
    claim: Claim,
    fn: (lease: Lease) => T | PromiseLike<T>,
    deadline: number,
    signal: AbortSignal | undefined,
    waitSignal: AbortSignal,
    names: Names,
  ): Promise<T | Skipped> {
    this.active++;
    let got: boolean;
    try {
      got = await waitLocal(claim, deadline, waitSignal);
    } finally {
      this.leave();
    }
    if (!got) return this.localSkip(claim, true, names);
    return this.runClaimed(name, key, fn, deadline, signal, waitSignal, names);
  }

  /**
   * Runs `fn` under the lock; `key` is claimed in `claims` by this call, and
   * handed on (or unclaimed) here. `deadline` (performance.now() time) is
   * set for a call with `waitMs`; `waitSignal` then stops its wait.
   */
  private async runClaimed<T>(
    name: string,
    key: string,
    fn: (lease: Lease) => T | PromiseLike<T>,
    deadline: number | undefined,
    signal: AbortSignal | undefined,
    waitSignal: AbortSignal | undefined,
    names: Names,
    shape: LockShape = EXCLUSIVE,
  ): Promise<T | Skipped> {
    this.active++;
    // Shared and counted calls take no local claim: several run at once.
    const claim = shape.kind === 'exclusive' ? this.claims.get(key)! : undefined;
    let state: LeaseState | undefined;
    let onAbort: (() => void) | undefined;
    try {
      const redisKey = key; // this.key(name): with the connection's keyPrefix
      const owner = `${this.owner}:${++this.seq}`;
      const acquireSignal = waitSignal ?? signal;
      const grant: Acquired =
        deadline !== undefined
          ? await acquireWait(this.ctx, redisKey, owner, deadline, acquireSignal, shape)
          : await acquireOnce(this.ctx, redisKey, owner, acquireSignal, Infinity, shape);
      if (!grant) return { skipped: deadline !== undefined && names === 'client' ? 'timed-out' : 'lock-held' };
      if ('notAcknowledged' in grant) {
        // Released already; never reported as 'lock-held'.
        const { acknowledged, required } = grant.notAcknowledged;
        if (names === 'existing') throw new NotAcknowledgedError(redisKey, acknowledged, required);
        return { skipped: 'not-acknowledged', acknowledged, required };
      }

      state = new LeaseState(key, redisKey, grant.owner, this.opts.ttlMs, grant.mode, grant.start);
      if (claim) claim.state = state;
      else this.shares.add(state);
      // Closed while acquiring: the body does not start (the finally below releases).
      if (this.closed) throw closedError();
      if (signal) {
        const s = state;
        onAbort = (): void => s.abortFromCaller(signal.reason);
        signal.addEventListener('abort', onAbort, { once: true });
        // Aborted after the acquire saw its reply but before this listener
        // was on: no 'abort' event comes any more, so the body would run
        // unaware. Not taken yet, as far as the caller is concerned: reject;
        // the finally below releases. (An abort during a late grant's
        // confirming REFRESH is caught there, without waiting for it.)
        if (signal.aborted) throw signal.reason;
      }
      if (claim) claim.holding = true;
      this.heartbeat.add(state);
      return await fn(new Lease(name, grant.token, state, this.leaseCommands));
    } finally {
      if (state) {
        if (onAbort) signal?.removeEventListener('abort', onAbort);
        this.heartbeat.delete(state);
        state.lose('released');
        // Not if close() released it already, having waited for the body long enough.
        const mine = claim ? claim.state === state : this.shares.delete(state);
        if (mine) {
          if (claim) claim.state = undefined;
          const done = await this.release(state.redisKey, state.owner, state.mode, this.opts.releaseTimeoutMs);
          if (!done) {
            this.opts.logger.warn(
              `spacelock: release of ${key} did not complete within ${this.opts.releaseTimeoutMs} ms; it goes on in the background`,
            );
          }
        }
      }
      if (claim) this.unclaim(key);
      this.leave();
    }
  }

  /** Hands `key` to the next local waiter, or frees it. */
  private unclaim(key: string): void {
    const claim = this.claims.get(key);
    const next = claim?.queue?.shift();
    if (claim && next) {
      claim.holding = false;
      next.wake();
    } else {
      this.claims.delete(key);
    }
  }

  /** A call is no longer in flight. */
  private leave(): void {
    if (--this.active === 0) this.onIdle?.();
  }

  /**
   * `SPACELOCK.INFO` for `name`: who holds it, for how long, its last token
   * and how many clients wait; `null` when it is free.
   *
   * @throws {@link ModuleNotLoadedError} when the server lacks the module,
   *   {@link CommandTimeoutError} when it does not answer within the ttl,
   *   {@link SpaceLockError} once the SpaceLock is closed.
   */
  async info(name: string): Promise<LockInfo | null> {
    if (this.closed) throw closedError();
    const command = infoCommand(this.key(name));
    return parseInfo(await this.sendBounded(command, 'SPACELOCK.INFO'));
  }

  /**
   * Sends `command` on the command connection and waits for its reply at
   * most a ttl. `what` names it in a {@link CommandTimeoutError}.
   */
  private async sendBounded(command: LockCommand, what: string): Promise<unknown> {
    try {
      return await this.deadlines.send(this.conn(), command, this.opts.ttlMs);
    } catch (err) {
      if (isUnknownSpacelockCommand(err)) throw new ModuleNotLoadedError((err as Error).message, { cause: err });
      if (err instanceof Error && err.message === COMMAND_TIMED_OUT) throw new CommandTimeoutError(what, this.opts.ttlMs);
      throw err;
    } finally {
      this.deadlines.done(command);
    }
  }

  /**
   * Shuts the SpaceLock down (NestJS: `onModuleDestroy`), within a deadline:
   *
   * 1. Later calls to `withSpaceLock` reject with {@link SpaceLockError};
   *    so do calls still waiting for a lock (in this process or on the
   *    server), which give up their waits at once.
   * 2. Running bodies may finish, for up to `timeoutMs` (default 10 000);
   *    their leases are released as usual.
   * 3. Bodies still running then have `lease.signal` aborted (a
   *    {@link LeaseLostError} with reason `'released'`) and their leases
   *    released; what they do afterwards runs without the lock.
   * 4. Every connection this SpaceLock opened is closed, leaving no timer
   *    behind: once you have closed your own connection too, the process can
   *    exit at once.
   *
   * The connection you passed stays open. Calling `close()` again returns
   * the same promise.
   *
   * @throws {RangeError} when `timeoutMs` is negative or not a number.
   */
  close(options: CloseOptions = {}): Promise<void> {
    const timeoutMs = options?.timeoutMs ?? CLOSE_TIMEOUT_MS;
    if (typeof timeoutMs !== 'number' || Number.isNaN(timeoutMs) || timeoutMs < 0) {
      return Promise.reject(new RangeError(`timeoutMs must be a number ≥ 0, got ${String(timeoutMs)}`));
    }
    this.closing ??= this.shutdown(timeoutMs);
    return this.closing;
  }

  private async shutdown(timeoutMs: number): Promise<void> {
    this.closed = true;
    // Stop every wait: on the server (its connection gets a RELEASE queued
    // behind the WAIT), and in this process.
    for (const wait of this.waits) wait.abort(closedError());
    for (const claim of this.claims.values()) {
      for (const waiter of claim.queue?.splice(0) ?? []) waiter.fail(closedError());
    }
    if (this.active > 0) {
      await new Promise<void>((resolve) => {
        const timer = startTimer(done, timeoutMs);
        function done(): void {
          timer.clear();
          resolve();
        }
        this.onIdle = done;
      });
      this.onIdle = undefined;
    }
    // Bodies that outlast the deadline: end their leases and release them.
    const left: LeaseState[] = [];
    for (const claim of this.claims.values()) {
      if (claim.state) left.push(claim.state);
      claim.state = undefined;
    }
    left.push(...this.shares);
    this.shares.clear();
    await Promise.all(
      left.map(async (state) => {
        this.heartbeat.delete(state);
        state.lose('released');
        const done = await this.release(state.redisKey, state.owner, state.mode, this.opts.releaseTimeoutMs);
        if (!done) this.opts.logger.warn(`spacelock: release of ${state.key} at close did not complete in time`);
      }),
    );
    if (left.length > 0) {
      this.opts.logger.warn(
        `spacelock: close() released ${left.length} lease(s) whose body was still running after ${timeoutMs} ms`,
      );
    }
    this.heartbeat.stop();
    this.waitPool?.close();
    await Promise.all([this.commandConn, this.heartbeatConn].map((c) => c && closeConnection(c)));
  }

  /** The connection for ordinary commands, opened on first use. */
  private conn(): RedisConnection {
    // A copy that gave up reconnecting (your retryStrategy returned null) is
    // replaced, so one outage does not break this SpaceLock for good.
    if (this.commandConn?.status === 'end' && !this.closed) this.commandConn = undefined;
    if (!this.commandConn) {
      if (this.closed) throw closedError();
      const conn = duplicateForCommands(this.source);
      this.reconnectCounter = new ReconnectCounter(conn);
      conn.on('error', this.reportOnce());
      this.commandConn = conn;
    }
    return this.commandConn;
  }

  /** Where the heartbeat sends: the cluster itself, or a dedicated single-node connection. */
  private heartbeatTarget(): { cluster: RedisConnection } | { single: Redis } {
    const conn = this.conn();
    if (isCluster(conn)) return { cluster: conn };
    if (this.heartbeatConn?.status === 'end' && !this.closed) this.heartbeatConn = undefined;
    if (!this.heartbeatConn) {
      this.heartbeatConn = duplicateForHeartbeats(this.source as Redis);
      this.heartbeatConn.on('error', this.reportOnce());
    }
    return { single: this.heartbeatConn };
  }

  /** An 'error' listener that logs once per outage (ioredis emits one per failed reconnect). */
  private reportOnce(): (err: Error) => void {
    let reported = false;
    return (err) => {
      if (reported) return;
      reported = true;
      setTimeout(() => {
        reported = false;
      }, 10_000).unref();
      this.opts.logger.warn(`spacelock: connection error: ${err.message}`);
    };
  }

  private pool(): WaitPool {
    this.waitPool ??= new WaitPool(() => duplicateForWaits(this.source), this.opts.waitConnections);
    return this.waitPool;
  }

  private switchToLua(err: Error): boolean {
    if (this.opts.fallback !== 'lua') return false;
    if (this.mode !== 'lua') {
      this.mode = 'lua';
      this.opts.logger.warn(
        `spacelock: the module is not loaded on this server (${err.message}); falling back to the existing service's ` +
          'SET NX PX + Lua commands: no fencing tokens, and waits poll. Load the module to get them.',
      );
    }
    return true;
  }

  /**
   * Owner-checked release, awaited at most `boundMs`. Failures are logged,
   * never thrown. Resolves `false` if it was still pending at the bound.
   */
  private release(redisKey: string, owner: string, mode: CommandMode, boundMs: number): Promise<boolean> {
    let conn: RedisConnection;
    try {
      conn = this.conn();
    } catch {
      return Promise.resolve(true); // closed: nothing to release on
    }
    const command = releaseCommand(mode, redisKey, owner);
    // The shared deadline timer bounds the wait. The RELEASE itself is
    // already on its way and still runs; only our waiting for it stops.
    const sent = boundMs > 0 ? this.deadlines.send(conn, command, boundMs) : send(conn, command);
    const done = sent.then(
      (reply) => {
        this.deadlines.done(command);
        if (reply === '0' || reply === 0) {
          this.opts.logger.log(`spacelock: release of ${redisKey} found the lock no longer ours`);
        }
        return true;
      },
      (err: unknown) => {
        this.deadlines.done(command);
        if (err instanceof Error && err.message === COMMAND_TIMED_OUT) return false;
        this.opts.logger.warn(
          `spacelock: failed to release lock ${redisKey}: ${err instanceof Error ? err.message : String(err)}`,
        );
        return true;
      },
    );
    return boundMs > 0 ? done : Promise.resolve(true);
  }
}

/**
 * Runs a `withSpaceLock`-like call (`run`) with `fn` as its body and says
 * in the result whether the lease was lost while `fn` ran.
 */
async function outcomeOf<T>(
  run: (body: (lease: Lease) => Promise<T>) => Promise<T | Skipped>,
  fn: (lease: Lease) => T | PromiseLike<T>,
): Promise<Outcome<T>> {
  const ran: { lease?: Lease; lost?: LostReason | undefined } = {};
  const result = await run(async (lease) => {
    const value = await fn(lease);
    // Read when fn has returned, before the release ends the lease.
    ran.lease = lease;
    ran.lost = lease.lostReason();
    return value;
  });
  if (!ran.lease) return result as Skipped;
  const lost = ran.lost === 'released' ? undefined : ran.lost;
  return { value: result as T, token: ran.lease.token, lost };
}

/**
 * Waits in `claim`'s queue until the claim is handed to this call (`true`),
 * or `deadline` (performance.now() time) passes (`false`). Rejects with the
 * signal's reason if it aborts first.
 */
function waitLocal(claim: Claim, deadline: number, signal: AbortSignal): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const queue = (claim.queue ??= []);
    const finish = (): void => {
      timer.clear();
      signal.removeEventListener('abort', onAbort);
      const i = queue.indexOf(waiter);
      if (i >= 0) queue.splice(i, 1);
    };
    const waiter: LocalWaiter = {
      wake: () => {
        finish();
        resolve(true);
      },
      fail: (err) => {
        finish();
        reject(err);
      },
    };
    const onAbort = (): void => waiter.fail(signal.reason);
    const timer = startTimer(() => {
      finish();
      resolve(false);
    }, deadline - performance.now());
    queue.push(waiter);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
