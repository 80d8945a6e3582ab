/**
 * Typed errors of spacelock-client. Outcomes that are not failures (a lock
 * held by someone else, a wait that timed out) are not errors: they come
 * back as `{ skipped: … }`.
 */

/** Base class of every error this package throws. */
export class SpaceLockError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * The server does not know the `SPACELOCK.*` commands: the module is not
 * loaded. The message says how to load it; {@link ModuleNotLoadedError.reply}
 * holds the server's own error text.
 */
export class ModuleNotLoadedError extends SpaceLockError {
  /** The server's error reply, verbatim. */
  readonly reply: string;

  constructor(reply: string, options?: { cause?: unknown }) {
    super(
      `the spacelock module is not loaded on this server (it answered: ${reply}); ` +
        'load it at startup with `loadmodule /path/to/libspacelock.so` in redis.conf ' +
        '(or `redis-server --loadmodule /path/to/libspacelock.so`), or at runtime with ' +
        '`MODULE LOAD /path/to/libspacelock.so`; during a rolling migration, ' +
        "`new SpaceLock(redis, { fallback: 'lua' })` runs the old SET NX PX + Lua commands instead",
      options,
    );
    this.reply = reply;
  }
}

/**
 * The server did not answer a lock command in time: `SPACELOCK.ACQUIRE`
 * within the ttl, or `SPACELOCK.ACQUIRE … WAIT` within `waitMs` plus the
 * grace period. Whatever the server may have granted meanwhile is released
 * (owner-checked) in the background.
 */
export class CommandTimeoutError extends SpaceLockError {
  /** The command that got no reply. */
  readonly command: string;
  /** How long the client waited for the reply (ms). */
  readonly timeoutMs: number;

  constructor(command: string, timeoutMs: number) {
    super(`no reply to ${command} within ${timeoutMs} ms; the server may be stalled or unreachable`);
    this.command = command;
    this.timeoutMs = timeoutMs;
  }
}

/**
 * Fewer replicas than the `replicas` option asked for acknowledged a grant
 * within `ackTimeoutMs`: the grant was released and `fn` did not run. Only
 * {@link SpaceLockDropIn.withSpaceLock} rejects with it (its result type is
 * the existing service's); `SpaceLock.withSpaceLock` resolves
 * `{ skipped: 'not-acknowledged', acknowledged, required }` instead.
 */
export class NotAcknowledgedError extends SpaceLockError {
  /** How many replicas acknowledged the grant (what `WAIT` answered). */
  readonly acknowledged: number;
  /** How many had to (the `replicas` option). */
  readonly required: number;
  /** The Redis key of the lock. */
  readonly key: string;

  constructor(key: string, acknowledged: number, required: number) {
    super(
      `${acknowledged} of ${required} replicas acknowledged the grant of ${key} in time; ` +
        'it was released and the body did not run',
    );
    this.acknowledged = acknowledged;
    this.required = required;
    this.key = key;
  }
}

/**
 * The name is another kind of lock than the call asked for (the server's
 * `WRONGMODE` reply): a shared or exclusive call on a counted name, a
 * counted call on a reader-writer name, or a counted call with another
 * limit than the name's. Nothing changed on the server.
 */
export class WrongModeError extends SpaceLockError {
  /** The server's error reply, verbatim (it names the lock's mode). */
  readonly reply: string;
  /** The Redis key of the lock. */
  readonly key: string;

  constructor(key: string, reply: string, options?: { cause?: unknown }) {
    super(`the lock ${key} is another kind of lock than asked for: ${reply}`, options);
    this.reply = reply;
    this.key = key;
  }
}

/** @internal A `WRONGMODE` reply error as a {@link WrongModeError}; any other error as it is. */
export function wrongMode(key: string, err: Error): Error {
  return isReplyError(err) && err.message.startsWith('WRONGMODE')
    ? new WrongModeError(key, err.message, { cause: err })
    : err;
}

/** Why a lease ended: see {@link LeaseLostError.reason}. */
export type LostReason =
  /** A refresh answered 0: the key expired, was deleted, or has another owner. */
  | 'not-owner'
  /** No refresh succeeded within one ttl (monotonic clock): the lock may have expired. */
  | 'expired'
  /** The body finished and the lock was released. */
  | 'released';

/**
 * The reason a lease's `signal` is aborted with. `reason` says why the
 * lease ended.
 */
export class LeaseLostError extends SpaceLockError {
  /** Why the lease ended. */
  readonly reason: LostReason;
  /** The Redis key of the lock. */
  readonly key: string;

  constructor(key: string, reason: LostReason) {
    super(
      reason === 'released'
        ? `the lease on ${key} has ended: the lock was released`
        : reason === 'not-owner'
          ? `lost the lock ${key}: it expired, was deleted, or has another owner`
          : `lost the lock ${key}: no refresh succeeded within the ttl`,
    );
    this.reason = reason;
    this.key = key;
  }
}

/** @internal The message of ioredis' own per-command timeout (`Command#setTimeout`). */
export const COMMAND_TIMED_OUT = 'Command timed out';

/** @internal Whether `err` is the server's "unknown command" reply to a SPACELOCK.* command. */
export function isUnknownSpacelockCommand(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const m = err.message.toLowerCase();
  return m.includes('unknown command') && m.includes('spacelock.');
}

/** @internal Whether `err` is an error reply from the server (as opposed to a connection failure). */
export function isReplyError(err: unknown): boolean {
  return err instanceof Error && err.name === 'ReplyError';
}
