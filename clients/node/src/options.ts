import { randomUUID } from 'node:crypto';

/**
 * A NestJS-compatible logger: `new Logger('SpaceLock')` from `@nestjs/common`
 * fits, and so does `console`.
 */
export interface SpaceLockLogger {
  log(message: string, ...rest: unknown[]): unknown;
  warn(message: string, ...rest: unknown[]): unknown;
  error(message: string, ...rest: unknown[]): unknown;
}

/** Options of a {@link SpaceLock}. Each may be left out, or set to `undefined`, for its default. */
export interface SpaceLockOptions {
  /**
   * Lease time to live in ms; the heartbeat refreshes every `ttlMs / 3`.
   * At least 10 (a {@link RangeError} below). Default 30 000.
   */
  ttlMs?: number | undefined;
  /** Prepended to every lock name to form its Redis key. Default `'spacelock:lock:'`. */
  keyPrefix?: string | undefined;
  /**
   * This instance's id (the existing service's `instanceId`). Each lease writes
   * `<owner>:<n>` into its key, so a late command of an old lease can never
   * touch a newer one. Default: a fresh UUID v4.
   */
  owner?: string | undefined;
  /**
   * Where the client reports what it cannot throw (a lost lease, a failed
   * release or refresh, a connection error, the switch to `fallback: 'lua'`).
   * Default: nowhere, the client prints nothing. Pass `console`, or a NestJS
   * `new Logger('SpaceLock')`, to see them.
   */
  logger?: SpaceLockLogger | undefined;
  /**
   * `'lua'`: on a server without the module, run the existing Lua-based
   * service's exact commands
   * (`SET NX PX` and its Lua refresh and release). Locks taken either way
   * exclude each other. Default: off (a {@link ModuleNotLoadedError} is thrown).
   */
  fallback?: 'lua' | undefined;
  /** Most dedicated connections for `waitMs` acquires. Default 4. */
  waitConnections?: number | undefined;
  /**
   * How long past `waitMs` a waiting call may take before it gives up on the
   * server's reply. Default 2 000 ms.
   */
  waitGraceMs?: number | undefined;
  /**
   * How long `withSpaceLock` waits for the release before it returns `fn`'s
   * result anyway (the release goes on in the background). Default 2 000 ms.
   */
  releaseTimeoutMs?: number | undefined;
  /**
   * How many replicas must acknowledge each grant and each refresh. After a
   * grant (`SPACELOCK.ACQUIRE`, or a grant from the server's wait queue) the
   * client sends `WAIT replicas ackTimeoutMs` on the connection that got it,
   * and `fn` starts only once at least `replicas` replicas have the grant. A
   * grant fewer replicas acknowledge in time is released and reported as
   * `{ skipped: 'not-acknowledged', acknowledged, required }` (the
   * {@link SpaceLockDropIn} rejects with a {@link NotAcknowledgedError}
   * instead). A refresh moves the lease's deadline only once it is
   * acknowledged too. Set it to the number of replicas a failover may
   * promote. A whole number ≥ 0; default 0: off (no `WAIT`, no extra round
   * trip).
   */
  replicas?: number | undefined;
  /**
   * How long a grant or a refresh waits for its acknowledgements (the
   * `WAIT` timeout), in ms. More than 0 and less than `ttlMs`. Default: a
   * third of the ttl (`floor(ttlMs / 3)`).
   */
  ackTimeoutMs?: number | undefined;
  /**
   * Acknowledge with `WAITAOF 1 replicas ackTimeoutMs` instead of `WAIT`:
   * a grant or refresh counts once it is fsynced to the local AOF and to
   * `replicas` replicas' AOFs. Needs `WAITAOF` (Redis ≥ 7.2, Valkey) and
   * `appendonly yes` (on the replicas too); elsewhere the grant rejects with
   * a {@link SpaceLockError} that quotes the server's error. With
   * `replicas: 0` only the local fsync is waited for. Default `false`.
   */
  waitAof?: boolean | undefined;
}

/** Options of one {@link SpaceLock.withSpaceLock} call. Each may be left out or set to `undefined`. */
export interface WithSpaceLockOptions {
  /**
   * Wait up to this many ms for a held lock: first behind calls of this
   * SpaceLock already inside the same name (in arrival order), then queued
   * on the server (`SPACELOCK.ACQUIRE … WAIT`), both within this one
   * deadline. Omitted, `undefined` or 0: do not wait.
   */
  waitMs?: number | undefined;
  /**
   * Cancels the call: while waiting it stops the wait (the call rejects with
   * the signal's reason); while `fn` runs it aborts `lease.signal`.
   */
  signal?: AbortSignal | undefined;
}

/** @internal Options with defaults applied. */
export interface ResolvedOptions {
  ttlMs: number;
  keyPrefix: string;
  owner: string;
  logger: SpaceLockLogger;
  fallback: 'lua' | undefined;
  waitConnections: number;
  waitGraceMs: number;
  releaseTimeoutMs: number;
  /** Replicas that must acknowledge grants and refreshes; 0: no acknowledgement is waited for. */
  replicas: number;
  ackTimeoutMs: number;
  waitAof: boolean;
}

/** The default logger: a library prints nothing unless asked to. */
const quietLogger: SpaceLockLogger = {
  log: () => undefined,
  warn: () => undefined,
  error: () => undefined,
};

/**
 * @internal The shortest ttl accepted, as in the Rust client: a shorter lease cannot be
 * refreshed in time (its heartbeat would have to answer within a few ms).
 */
export const MIN_TTL_MS = 10;

function positiveInt(name: string, v: number | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  if (!Number.isFinite(v) || v <= 0) throw new RangeError(`${name} must be a positive number, got ${v}`);
  return Math.ceil(v);
}

function atLeast(name: string, min: number, v: number): number {
  if (v < min) {
    throw new RangeError(`${name} must be at least ${min} ms (a shorter lease cannot be refreshed in time), got ${v}`);
  }
  return v;
}

function nonNegative(name: string, v: number | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  if (!Number.isFinite(v) || v < 0) throw new RangeError(`${name} must be a finite number ≥ 0, got ${v}`);
  return v;
}

function replicaCount(v: unknown): number {
  if (v === undefined) return 0;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new RangeError(`replicas must be a whole number ≥ 0, got ${String(v)}`);
  }
  return v;
}

function ackTimeout(v: unknown, ttlMs: number): number {
  if (v === undefined) return Math.max(1, Math.floor(ttlMs / 3));
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    throw new RangeError(`ackTimeoutMs must be a number > 0, got ${String(v)}`);
  }
  const ms = Math.ceil(v);
  if (ms >= ttlMs) {
    throw new RangeError(
      `ackTimeoutMs must be less than ttlMs (${ttlMs}): a grant acknowledged that late would leave its lease nothing; got ${v}`,
    );
  }
  return ms;
}

/** @internal */
export function resolveOptions(o: SpaceLockOptions = {}): ResolvedOptions {
  if (o.fallback !== undefined && o.fallback !== 'lua') {
    throw new RangeError(`fallback must be 'lua' or undefined, got ${String(o.fallback)}`);
  }
  if (o.owner !== undefined && o.owner.length === 0) throw new RangeError('owner must not be empty');
  if (o.waitAof !== undefined && typeof o.waitAof !== 'boolean') {
    throw new RangeError(`waitAof must be true or false, got ${String(o.waitAof)}`);
  }
  const ttlMs = atLeast('ttlMs', MIN_TTL_MS, positiveInt('ttlMs', o.ttlMs, 30_000));
  return {
    ttlMs,
    keyPrefix: o.keyPrefix ?? 'spacelock:lock:',
    owner: o.owner ?? randomUUID(),
    logger: o.logger ?? quietLogger,
    fallback: o.fallback,
    waitConnections: positiveInt('waitConnections', o.waitConnections, 4),
    waitGraceMs: nonNegative('waitGraceMs', o.waitGraceMs, 2_000),
    releaseTimeoutMs: nonNegative('releaseTimeoutMs', o.releaseTimeoutMs, 2_000),
    replicas: replicaCount(o.replicas),
    ackTimeoutMs: ackTimeout(o.ackTimeoutMs, ttlMs),
    waitAof: o.waitAof ?? false,
  };
}

/** @internal Interval between heartbeats: `max(1, floor(ttl / 3))` ms, as the existing service computes it. */
export function refreshInterval(ttlMs: number): number {
  return Math.max(1, Math.floor(ttlMs / 3));
}
