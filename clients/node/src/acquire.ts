/**
 * Taking a lock: one ACQUIRE, a server-side WAIT on a pooled connection, or
 * (in Lua mode) polling with backoff and jitter.
 *
 * Every attempt writes its own owner value, so whatever an abandoned attempt
 * may still be granted later is released by an owner-checked RELEASE that can
 * never touch another lease, not even one of ours.
 */
import { ackCommand, ackName, ackRefused, acksWanted, parseAck } from './ack';
import {
  acquireCommand,
  acquireWaitCommand,
  EXCLUSIVE,
  parseFlag,
  parseGrant,
  refreshCommand,
  releaseCommand,
  type LockShape,
} from './commands';
import { send, type RedisConnection } from './connection';
import {
  COMMAND_TIMED_OUT,
  CommandTimeoutError,
  isReplyError,
  isUnknownSpacelockCommand,
  ModuleNotLoadedError,
  wrongMode,
} from './errors';
import type { ReplyDeadlines } from './deadlines';
import { startTimer } from './timers';
import type { CommandMode } from './commands';
import type { ResolvedOptions } from './options';
import type { WaitPool } from './wait-pool';

/** What acquiring needs from its SpaceLock. */
export interface AcquireContext {
  readonly opts: ResolvedOptions;
  readonly mode: CommandMode;
  /** Bounds the wait for replies, one timer for all. */
  readonly deadlines: ReplyDeadlines;
  conn(): RedisConnection;
  pool(): WaitPool;
  /**
   * Whether the connections find their server through Sentinel, so that a
   * wait connection may be on another server than the command connection
   * after a failover.
   */
  readonly followsFailover: boolean;
  /** Connection losses so far on the command connection. */
  reconnects(): number;
  /** Switches to Lua mode if `fallback: 'lua'` allows; warns once. */
  switchToLua(err: Error): boolean;
  /** An owner-checked RELEASE, awaited for at most `boundMs`; never throws. */
  release(key: string, owner: string, mode: CommandMode, boundMs: number): Promise<void>;
}

/** A grant: its token, when the lease's clock starts, its owner value and mode. */
export interface Grant {
  token: bigint | undefined;
  start: number;
  owner: string;
  mode: CommandMode;
}

/**
 * A grant that fewer replicas than `replicas` acknowledged within
 * `ackTimeoutMs`: it has been released (or its release is on its way).
 */
export interface Unacknowledged {
  notAcknowledged: { acknowledged: number; required: number };
}

/** What an acquire came to: a grant, a grant not acknowledged (and released), or `null` (not granted). */
export type Acquired = Grant | Unacknowledged | null;

/** Lua mode polls with exponential backoff from 25 ms up to 250 ms, with jitter. */
const POLL_BASE_MS = 25;
const POLL_CAP_MS = 250;
/** A WAIT whose connection failed is sent again at once, then after 50, 100, … up to 500 ms. */
const RETRY_BASE_MS = 50;
const RETRY_CAP_MS = 500;
/** A RELEASE on a wait connection is waited for at least this long, even past the wait's bound. */
const RELEASE_MIN_MS = 100;

type Settled =
  | { kind: 'reply'; value: unknown }
  | { kind: 'error'; error: Error }
  | { kind: 'timeout' }
  | { kind: 'abort' };

const reply = (value: unknown): Settled => ({ kind: 'reply', value });
const failure = (error: unknown): Settled => ({
  kind: 'error',
  error: error instanceof Error ? error : new Error(String(error)),
});

/** Waits for `p`, at most `ms`, and no longer than `signal` allows. Never rejects. */
function settle(p: Promise<unknown>, ms: number, signal?: AbortSignal): Promise<Settled> {
  return new Promise((resolve) => {
    const finish = (s: Settled): void => {
      timer?.clear();
      signal?.removeEventListener('abort', onAbort);
      resolve(s);
    };
    const onAbort = (): void => finish({ kind: 'abort' });
    // Observe `p` first, whatever happens next: a rejection nobody handles
    // would end the process.
    p.then(reply, failure).then(finish);
    const timer = Number.isFinite(ms) ? startTimer(() => finish({ kind: 'timeout' }), ms) : undefined;
    if (signal?.aborted) return finish({ kind: 'abort' });
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function moduleNotLoaded(err: Error): ModuleNotLoadedError {
  return new ModuleNotLoadedError(err.message, { cause: err });
}

/** Fire-and-forget owner-checked RELEASE (for attempts in doubt). */
function releaseLater(ctx: AcquireContext, key: string, owner: string, mode: CommandMode): void {
  void ctx.release(key, owner, mode, 0);
}

/** What the acknowledgement of a grant came to. */
type AckOutcome =
  | { kind: 'acked' }
  | { kind: 'short'; acknowledged: number }
  /** No usable answer. `inDoubt`: no reply at all, the command may still block its connection. */
  | { kind: 'error'; error: Error; inDoubt: boolean }
  | { kind: 'abort' };

/**
 * Sends `WAIT replicas ackTimeoutMs` (or `WAITAOF`) on `conn`, the
 * connection whose last write was the grant (or its confirming REFRESH),
 * and waits for the answer: at most a ttl (a grant acknowledged later has
 * expired anyway), and no longer than `signal` allows.
 */
async function acknowledge(
  ctx: AcquireContext,
  conn: RedisConnection,
  key: string,
  signal?: AbortSignal,
): Promise<AckOutcome> {
  const opts = ctx.opts;
  const command = ackCommand(opts, key);
  const bound = opts.ttlMs;
  const s = await settle(ctx.deadlines.send(conn, command, bound), Infinity, signal);
  // On abort the WAIT stays in flight; its deadline settles it.
  if (s.kind === 'abort') return { kind: 'abort' };
  ctx.deadlines.done(command);
  if (s.kind === 'reply') {
    try {
      const r = parseAck(opts, s.value);
      return r.ok ? { kind: 'acked' } : { kind: 'short', acknowledged: r.acknowledged };
    } catch (e) {
      return { kind: 'error', error: e as Error, inDoubt: false };
    }
  }
  if (s.kind === 'error' && s.error.message === COMMAND_TIMED_OUT) {
    return { kind: 'error', error: new CommandTimeoutError(ackName(opts), bound), inDoubt: true };
  }
  if (s.kind === 'error' && isReplyError(s.error)) {
    return { kind: 'error', error: ackRefused(opts, s.error), inDoubt: false };
  }
  return { kind: 'error', error: s.kind === 'error' ? s.error : new Error('no reply'), inDoubt: true };
}

function unacknowledged(ctx: AcquireContext, acknowledged: number): Unacknowledged {
  return { notAcknowledged: { acknowledged, required: ctx.opts.replicas } };
}

/**
 * One ACQUIRE (`SET NX PX` in Lua mode), in `shape` (exclusive by default).
 * `null` when the lock is held. Gives up after one ttl without a reply: a
 * grant that late would be worthless, as its lease would already count as
 * expired.
 */
export async function acquireOnce(
  ctx: AcquireContext,
  key: string,
  owner: string,
  signal?: AbortSignal,
  hardDeadline = Infinity,
  shape: LockShape = EXCLUSIVE,
): Promise<Acquired> {
  for (;;) {
    const mode = ctx.mode;
    const ttl = ctx.opts.ttlMs;
    const epoch = ctx.reconnects();
    const start = performance.now();
    const command = acquireCommand(mode, key, owner, ttl, shape);
    // The shared deadline timer bounds the wait (cheaper than a race or a
    // timer per command on the hot path); it rejects with "Command timed out".
    // Within a wait (Lua mode polls), never past the wait's own bound.
    const bound = Math.max(1, Math.min(ttl, Math.ceil(hardDeadline - start)));
    const conn = ctx.conn();
    const p = ctx.deadlines.send(conn, command, bound, start);
    let s: Settled;
    if (signal) {
      s = await settle(p, Infinity, signal);
    } else {
      try {
        s = { kind: 'reply', value: await p };
      } catch (e) {
        s = failure(e);
      }
    }
    // On abort the ACQUIRE is still in flight: its deadline stays, so a
    // reply that never comes still settles `p` (nobody awaits it any more).
    if (s.kind !== 'abort') ctx.deadlines.done(command);
    if (s.kind === 'error' && s.error.message === COMMAND_TIMED_OUT) {
      releaseLater(ctx, key, owner, mode); // runs after the ACQUIRE on the same connection
      throw new CommandTimeoutError(mode === 'module' ? 'SPACELOCK.ACQUIRE' : 'SET NX PX', bound);
    }
    if (s.kind === 'reply') {
      let grant: { token: bigint | undefined } | null;
      try {
        grant = parseGrant(mode, s.value);
      } catch (e) {
        releaseLater(ctx, key, owner, mode);
        throw e;
      }
      if (grant) {
        if (!acksWanted(ctx.opts)) return { token: grant.token, start, owner, mode };
        // The body starts only once enough replicas have the grant.
        const ack = await acknowledge(ctx, conn, key, signal);
        if (ack.kind === 'acked') return { token: grant.token, start, owner, mode };
        if (ack.kind === 'abort') {
          releaseLater(ctx, key, owner, mode); // queued behind the WAIT
          throw signal?.reason;
        }
        if (ack.kind === 'error' && ack.inDoubt) {
          releaseLater(ctx, key, owner, mode);
          throw ack.error;
        }
        // Answered: release before reporting, so the lock is free when the caller hears of it.
        await ctx.release(key, owner, mode, ctx.opts.releaseTimeoutMs);
        if (ack.kind === 'error') throw ack.error;
        return unacknowledged(ctx, ack.acknowledged);
      }
      // After a reconnect ioredis may have resent the command: its first copy
      // may have granted the lock to us, and the resent one then saw it held.
      if (ctx.reconnects() !== epoch) releaseLater(ctx, key, owner, mode);
      return null;
    }
    if (s.kind === 'error') {
      if (mode === 'module' && isUnknownSpacelockCommand(s.error)) {
        if (ctx.switchToLua(s.error)) continue;
        throw moduleNotLoaded(s.error);
      }
      // A connection failure leaves us in doubt whether the server applied it.
      if (!isReplyError(s.error)) releaseLater(ctx, key, owner, mode);
      throw wrongMode(key, s.error);
    }
    // The caller gave up: release whatever it grants (the RELEASE queues
    // behind the ACQUIRE on the same connection).
    releaseLater(ctx, key, owner, mode);
    throw signal?.reason;
  }
}

/** Whether a WAIT grant holds where the leases live, and from when its lease counts. */
type Confirmation = { held: true; start: number } | { held: false; inDoubt: boolean };

/**
 * Confirms a WAIT grant before its body runs.
 *
 * * When the lease starts: at the WAIT's sending if the reply came within a
 *   third of the ttl, else at the sending of a confirming REFRESH.
 * * Where: on a single server or a cluster, the grant's own connection
 *   confirms a late grant (the server that granted it). Behind Sentinel, the
 *   WAIT's connection may still be on a primary that a failover has just
 *   replaced, while the heartbeat and the release go to the new one; so
 *   every grant is confirmed by a REFRESH on the command connection, where
 *   the lease will live. It answers 0 when the grant is not there.
 *
 * `{ held: false, inDoubt }` when the REFRESH found the lock not ours, or
 * got no answer (`inDoubt`: it may still run). Rejects with the signal's
 * reason if the caller aborts meanwhile (a write pause can hold the REFRESH
 * for up to a ttl), or if the SpaceLock is closed; the caller then releases.
 */
async function confirmGrant(
  ctx: AcquireContext,
  waitConn: RedisConnection,
  key: string,
  owner: string,
  sentAt: number,
  boundMs: number,
  signal?: AbortSignal,
): Promise<Confirmation> {
  const ttl = ctx.opts.ttlMs;
  const late = performance.now() - sentAt > ttl / 3;
  if (!late && !ctx.followsFailover) return { held: true, start: sentAt };
  const conn = ctx.followsFailover ? ctx.conn() : waitConn;
  const refreshAt = performance.now();
  const command = refreshCommand(key, owner, ttl);
  const bound = Math.max(1, Math.min(ttl, Math.ceil(boundMs)));
  const s = await settle(ctx.deadlines.send(conn, command, bound), Infinity, signal);
  if (s.kind === 'abort') throw signal?.reason;
  ctx.deadlines.done(command);
  if (s.kind !== 'reply') return { held: false, inDoubt: true };
  try {
    if (parseFlag('SPACELOCK.REFRESH', s.value)) return { held: true, start: late ? refreshAt : sentAt };
    return { held: false, inDoubt: false };
  } catch {
    return { held: false, inDoubt: true };
  }
}

/**
 * An owner-checked RELEASE on the wait connection that received the reply,
 * so on the server that granted it, wherever the command connection is by
 * now; awaited at most `boundMs` (at least a moment). If that connection
 * does not answer, the command connection sends one too. Resolves whether
 * the connection answered (and may go back to the pool). Never rejects.
 */
async function releaseOnWaitConn(
  ctx: AcquireContext,
  conn: RedisConnection,
  key: string,
  owner: string,
  boundMs: number,
): Promise<boolean> {
  const command = releaseCommand('module', key, owner);
  const s = await settle(ctx.deadlines.send(conn, command, Math.max(RELEASE_MIN_MS, Math.ceil(boundMs))), Infinity);
  ctx.deadlines.done(command);
  if (s.kind === 'reply') return true;
  releaseLater(ctx, key, owner, 'module');
  return false;
}

/**
 * A reply error to a WAIT that says the server changed role under it: the
 * wait was unblocked as its server became a replica (`UNBLOCKED`), or it
 * reached a replica (`READONLY`). Nothing was granted; wait again on a
 * fresh connection, which asks Sentinel for the primary.
 */
function isRoleChange(err: Error): boolean {
  return /^(UNBLOCKED|READONLY)\b/.test(err.message);
}

/**
 * Waits for the lock until `deadline` (performance.now() time):
 * `SPACELOCK.ACQUIRE … WAIT` on a pooled dedicated connection, or polling in
 * Lua mode. `null` when it did not get the lock in time.
 *
 * A server that is slow to answer (writes paused, the process stopped) is
 * waited for, not reported as a failure: the reply to a WAIT may come up to
 * `waitGraceMs` after the deadline, and if none has come by then the wait is
 * abandoned (whatever it may still be granted is released) and the answer is
 * `null`, as for any wait that ran out of time. So this never takes longer
 * than the deadline plus `waitGraceMs`.
 */
export async function acquireWait(
  ctx: AcquireContext,
  key: string,
  owner: string,
  deadline: number,
  signal?: AbortSignal,
  shape: LockShape = EXCLUSIVE,
): Promise<Acquired> {
  const hardDeadline = deadline + ctx.opts.waitGraceMs;
  for (let attempt = 0; ; attempt++) {
    if (ctx.mode === 'lua') return pollWait(ctx, key, owner, deadline, hardDeadline, signal, shape);
    const pool = ctx.pool();
    const conn = await pool.checkout(deadline, signal);
    if (!conn) return null; // every pooled connection stayed busy for the whole wait
    const attemptOwner = attempt === 0 ? owner : `${owner}.${attempt}`;
    const left = Math.max(1, Math.ceil(deadline - performance.now()));
    const sentAt = performance.now();
    const p = send(conn, acquireWaitCommand(key, attemptOwner, ctx.opts.ttlMs, left, shape));
    const s = await settle(p, hardDeadline - performance.now(), signal);
    const graceLeft = (): number => Math.max(0, hardDeadline - performance.now());
    if (s.kind === 'reply') {
      let grant: { token: bigint | undefined } | null;
      try {
        grant = parseGrant('module', s.value);
      } catch (e) {
        pool.release();
        void releaseOnWaitConn(ctx, conn, key, attemptOwner, ctx.opts.ttlMs).then(() => pool.drop(conn));
        throw e;
      }
      if (!grant) {
        // A nil in doubt costs one RELEASE, on the server that answered.
        const fit = await releaseOnWaitConn(ctx, conn, key, attemptOwner, graceLeft());
        if (fit) pool.checkin(conn);
        else giveUp(pool, conn);
        return null;
      }
      // The server counts the ttl from the handoff, somewhere between the
      // WAIT's sending and its reply. Counting from the sending is safe
      // but, after a long wait, leaves little of the lease; counting from
      // the reply would overstate it by however long the reply lay unread
      // (a stalled event loop). So a grant that arrives after its first
      // refresh was due is confirmed by one REFRESH, and the lease counts
      // from that REFRESH's sending. Behind Sentinel every grant is
      // confirmed where the lease will live (see confirmGrant).
      let confirmation: Confirmation;
      try {
        confirmation = await confirmGrant(ctx, conn, key, attemptOwner, sentAt, graceLeft(), signal);
      } catch (e) {
        // Aborted, or closed: release where it was granted, and where a
        // REFRESH in flight may yet extend it (queued behind it).
        pool.release();
        void releaseOnWaitConn(ctx, conn, key, attemptOwner, ctx.opts.ttlMs).then(() => pool.drop(conn));
        if (ctx.followsFailover) releaseLater(ctx, key, attemptOwner, 'module');
        throw e;
      }
      if (confirmation.held) {
        const granted: Grant = { token: grant.token, start: confirmation.start, owner: attemptOwner, mode: 'module' };
        if (!acksWanted(ctx.opts)) {
          pool.checkin(conn);
          return granted;
        }
        // The connection whose last write was this grant: the wait
        // connection (the module's grant, or its confirming REFRESH); behind
        // Sentinel the command connection, where confirmGrant's REFRESH went.
        const ackConn = ctx.followsFailover ? ctx.conn() : conn;
        const ack = await acknowledge(ctx, ackConn, key, signal);
        if (ack.kind === 'acked') {
          pool.checkin(conn);
          return granted;
        }
        if (ack.kind === 'abort' || (ack.kind === 'error' && ack.inDoubt)) {
          // The WAIT may still block its connection: release behind it, and
          // on the command connection, and let the wait connection go.
          pool.release();
          void releaseOnWaitConn(ctx, conn, key, attemptOwner, ctx.opts.ttlMs).then(() => pool.drop(conn));
          releaseLater(ctx, key, attemptOwner, 'module');
          if (ack.kind === 'abort') throw signal?.reason;
          throw ack.error;
        }
        // Answered: release where it was granted before reporting.
        const fit = await releaseOnWaitConn(ctx, conn, key, attemptOwner, ctx.opts.releaseTimeoutMs);
        if (ctx.followsFailover) releaseLater(ctx, key, attemptOwner, 'module');
        if (fit) pool.checkin(conn);
        else giveUp(pool, conn);
        if (ack.kind === 'error') throw ack.error;
        return unacknowledged(ctx, ack.acknowledged);
      }
      // Not confirmed: release it on the server that granted it, on the
      // connection that received the grant, before answering; and where a
      // REFRESH without an answer may yet run.
      const fit = await releaseOnWaitConn(ctx, conn, key, attemptOwner, graceLeft());
      if (confirmation.inDoubt) releaseLater(ctx, key, attemptOwner, 'module');
      if (ctx.followsFailover && !confirmation.inDoubt) {
        // The grant came from a server the leases do not live on: a primary
        // that a failover has replaced. Its connections (this one, the idle
        // ones) are of no use any more; wait again, on the new primary,
        // while time is left.
        giveUp(pool, conn);
        pool.dropIdle();
        if (deadline - performance.now() > 0) continue;
        return null;
      }
      if (fit) pool.checkin(conn);
      else giveUp(pool, conn);
      return null;
    }
    if (s.kind === 'error') {
      const err = s.error;
      if (isUnknownSpacelockCommand(err)) {
        pool.checkin(conn);
        if (ctx.switchToLua(err)) continue;
        throw moduleNotLoaded(err);
      }
      if (isReplyError(err) && !isRoleChange(err)) {
        const fit = await releaseOnWaitConn(ctx, conn, key, attemptOwner, graceLeft());
        if (fit) pool.checkin(conn);
        else giveUp(pool, conn);
        throw wrongMode(key, err);
      }
      // The connection failed (closed by the server's idle timeout, a
      // restart, a failover), or its server became a replica: release in
      // doubt, and try again on a fresh connection while time is left. The
      // first retry goes at once (an idle timeout); later ones back off, so
      // a restart that takes a moment is waited out and a server that stays
      // down is not hammered.
      giveUp(pool, conn);
      if (isRoleChange(err)) pool.dropIdle();
      releaseLater(ctx, key, attemptOwner, 'module');
      const left = deadline - performance.now();
      if (left <= 0) {
        if (isRoleChange(err)) return null;
        throw err;
      }
      if (attempt > 0) await sleep(Math.min(left, RETRY_CAP_MS, RETRY_BASE_MS * 2 ** Math.min(attempt - 1, 8)), signal);
      continue;
    }
    abandonWait(ctx, pool, conn, p, key, attemptOwner, left);
    // No reply by the hard deadline: the server is stalled, or too slow for
    // this wait. Only the deadline answers: the lock did not come in time.
    if (s.kind === 'timeout') return null;
    throw signal?.reason;
  }
}

/** Frees the slot of a wait connection and closes it. */
function giveUp(pool: WaitPool, conn: RedisConnection): void {
  pool.release();
  pool.drop(conn);
}

/**
 * Gives up on a blocked WAIT without losing track of it. A RELEASE queued on
 * the same connection runs right after the WAIT ends on the server, so it
 * also undoes a grant that happens later; another goes out on the command
 * connection in case this one is dead. The connection is closed once both
 * have answered, or after the wait plus one ttl, when any grant has expired.
 */
function abandonWait(
  ctx: AcquireContext,
  pool: WaitPool,
  conn: RedisConnection,
  wait: Promise<unknown>,
  key: string,
  owner: string,
  waitMs: number,
): void {
  pool.release();
  const queued = send(conn, releaseCommand('module', key, owner));
  releaseLater(ctx, key, owner, 'module');
  const bound = startTimer(() => pool.drop(conn), waitMs + ctx.opts.ttlMs).unref();
  void Promise.allSettled([wait, queued]).then(() => {
    bound.clear();
    pool.drop(conn);
  });
}

/** Lua mode's wait: `SET NX PX` again and again, with backoff and jitter. */
async function pollWait(
  ctx: AcquireContext,
  key: string,
  owner: string,
  deadline: number,
  hardDeadline: number,
  signal?: AbortSignal,
  shape: LockShape = EXCLUSIVE,
): Promise<Acquired> {
  for (let i = 0; ; i++) {
    let grant: Acquired;
    try {
      grant = await acquireOnce(ctx, key, owner, signal, hardDeadline, shape);
    } catch (err) {
      // A stalled server: its SET NX is released in the background; poll
      // again while time is left, and only the deadline answers.
      if (!(err instanceof CommandTimeoutError)) throw err;
      grant = null;
    }
    if (grant) return grant;
    const left = deadline - performance.now();
    if (left <= 0) return null;
    const backoff = Math.min(POLL_CAP_MS, POLL_BASE_MS * 2 ** i);
    await sleep(Math.min(left, backoff * (0.5 + Math.random() / 2)), signal);
  }
}
