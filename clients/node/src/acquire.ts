/**
 * Taking a lock: one ACQUIRE, a server-side WAIT on a pooled connection, or
 * (in Lua mode) polling with backoff and jitter.
 *
 * Every attempt writes its own owner value, so whatever an abandoned attempt
 * may still be granted later is released by an owner-checked RELEASE that can
 * never touch another lease, not even one of ours.
 */
import { acquireCommand, acquireWaitCommand, parseFlag, parseGrant, refreshCommand, releaseCommand } from './commands';
import { send, type RedisConnection } from './connection';
import { COMMAND_TIMED_OUT, CommandTimeoutError, isReplyError, isUnknownSpacelockCommand, ModuleNotLoadedError } from './errors';
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

/** Lua mode polls with exponential backoff from 25 ms up to 250 ms, with jitter. */
const POLL_BASE_MS = 25;
const POLL_CAP_MS = 250;
/** A WAIT whose connection failed is sent again at once, then after 50, 100, … up to 500 ms. */
const RETRY_BASE_MS = 50;
const RETRY_CAP_MS = 500;

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

/**
 * One ACQUIRE (`SET NX PX` in Lua mode). `null` when the lock is held.
 * Gives up after one ttl without a reply: a grant that late would be
 * worthless, as its lease would already count as expired.
 */
export async function acquireOnce(
  ctx: AcquireContext,
  key: string,
  owner: string,
  signal?: AbortSignal,
  hardDeadline = Infinity,
): Promise<Grant | null> {
  for (;;) {
    const mode = ctx.mode;
    const ttl = ctx.opts.ttlMs;
    const epoch = ctx.reconnects();
    const start = performance.now();
    const command = acquireCommand(mode, key, owner, ttl);
    // The shared deadline timer bounds the wait (cheaper than a race or a
    // timer per command on the hot path); it rejects with "Command timed out".
    // Within a wait (Lua mode polls), never past the wait's own bound.
    const bound = Math.max(1, Math.min(ttl, Math.ceil(hardDeadline - start)));
    const p = ctx.deadlines.send(ctx.conn(), command, bound, start);
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
      if (grant) return { token: grant.token, start, owner, mode };
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
      throw s.error;
    }
    // The caller gave up: release whatever it grants (the RELEASE queues
    // behind the ACQUIRE on the same connection).
    releaseLater(ctx, key, owner, mode);
    throw signal?.reason;
  }
}

/**
 * When the lease of a WAIT grant starts: the WAIT's sending if the reply
 * came within a third of the ttl, else the sending of a confirming REFRESH
 * (`null` if that REFRESH found the lock no longer ours, or got no answer).
 * Rejects with the signal's reason if the caller aborts meanwhile (a write
 * pause can hold the REFRESH for up to a ttl); the caller then releases.
 */
async function confirmLateGrant(
  ctx: AcquireContext,
  key: string,
  owner: string,
  sentAt: number,
  boundMs: number,
  signal?: AbortSignal,
): Promise<number | null> {
  const ttl = ctx.opts.ttlMs;
  if (performance.now() - sentAt <= ttl / 3) return sentAt;
  const refreshAt = performance.now();
  const command = refreshCommand(key, owner, ttl);
  const bound = Math.max(1, Math.min(ttl, Math.ceil(boundMs)));
  const s = await settle(ctx.deadlines.send(ctx.conn(), command, bound), Infinity, signal);
  if (s.kind === 'abort') throw signal?.reason;
  ctx.deadlines.done(command);
  if (s.kind !== 'reply') return null;
  try {
    return parseFlag('SPACELOCK.REFRESH', s.value) ? refreshAt : null;
  } catch {
    return null;
  }
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
): Promise<Grant | null> {
  const hardDeadline = deadline + ctx.opts.waitGraceMs;
  for (let attempt = 0; ; attempt++) {
    if (ctx.mode === 'lua') return pollWait(ctx, key, owner, deadline, hardDeadline, signal);
    const pool = ctx.pool();
    const conn = await pool.checkout(deadline, signal);
    if (!conn) return null; // every pooled connection stayed busy for the whole wait
    const attemptOwner = attempt === 0 ? owner : `${owner}.${attempt}`;
    const left = Math.max(1, Math.ceil(deadline - performance.now()));
    const sentAt = performance.now();
    const p = send(conn, acquireWaitCommand(key, attemptOwner, ctx.opts.ttlMs, left));
    const s = await settle(p, hardDeadline - performance.now(), signal);
    const graceLeft = (): number => Math.max(0, hardDeadline - performance.now());
    if (s.kind === 'reply') {
      pool.checkin(conn);
      let grant: { token: bigint | undefined } | null;
      try {
        grant = parseGrant('module', s.value);
      } catch (e) {
        releaseLater(ctx, key, attemptOwner, 'module');
        throw e;
      }
      if (grant) {
        // The server counts the ttl from the handoff, somewhere between the
        // WAIT's sending and its reply. Counting from the sending is safe
        // but, after a long wait, leaves little of the lease; counting from
        // the reply would overstate it by however long the reply lay unread
        // (a stalled event loop). So a grant that arrives after its first
        // refresh was due is confirmed by one REFRESH, and the lease counts
        // from that REFRESH's sending.
        let start: number | null;
        try {
          start = await confirmLateGrant(ctx, key, attemptOwner, sentAt, graceLeft(), signal);
        } catch (e) {
          releaseLater(ctx, key, attemptOwner, 'module'); // queued behind the REFRESH
          throw e;
        }
        if (start !== null) return { token: grant.token, start, owner: attemptOwner, mode: 'module' };
        await ctx.release(key, attemptOwner, 'module', graceLeft());
        return null;
      }
      await ctx.release(key, attemptOwner, 'module', graceLeft()); // a nil in doubt costs one RELEASE
      return null;
    }
    if (s.kind === 'error') {
      const err = s.error;
      if (isUnknownSpacelockCommand(err)) {
        pool.checkin(conn);
        if (ctx.switchToLua(err)) continue;
        throw moduleNotLoaded(err);
      }
      if (isReplyError(err)) {
        pool.checkin(conn);
        await ctx.release(key, attemptOwner, 'module', graceLeft());
        throw err;
      }
      // The connection failed (closed by the server's idle timeout, a
      // restart, a failover): release in doubt, and try again on a fresh one
      // while time is left. The first retry goes at once (an idle timeout);
      // later ones back off, so a restart that takes a moment is waited out
      // and a server that stays down is not hammered.
      pool.release();
      pool.drop(conn);
      releaseLater(ctx, key, attemptOwner, 'module');
      const left = deadline - performance.now();
      if (left <= 0) throw err;
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
): Promise<Grant | null> {
  for (let i = 0; ; i++) {
    let grant: Grant | null;
    try {
      grant = await acquireOnce(ctx, key, owner, signal, hardDeadline);
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
