import {
  checkCommand,
  fencedWriteCommand,
  parseFencedWrite,
  parseFlag,
  refreshSpec,
  type CommandMode,
} from './commands';
import { encodeCommand, type LockCommand } from './connection';
import { LeaseLostError, SpaceLockError, type LostReason } from './errors';
import type { Linked } from './list';

/**
 * The bookkeeping of one held lease, shared by the {@link Lease} handed to
 * the body and the heartbeat. Times are `performance.now()` (monotonic).
 * @internal
 */
export class LeaseState implements Linked<LeaseState> {
  /** Start of the last successful refresh (or the acquire's start). */
  lastOkStart: number;
  /** When the refresh in flight was sent, if one is. */
  refreshSentAt: number | undefined;
  reason: LostReason | undefined;
  /** @internal The heartbeat's list. */
  linked = false;
  /** @internal */
  prevLink: LeaseState | undefined = undefined;
  /** @internal */
  nextLink: LeaseState | undefined = undefined;
  // The signal, the lost promise and the refresh's wire form are made on
  // first use: a short body that never looks at them (the existing service's callers)
  // then pays for none of them.
  private controller: AbortController | undefined;
  private callerReason: { reason: unknown } | undefined;
  private lostPromise: Promise<LostReason> | undefined;
  private resolveLost: ((r: LostReason) => void) | undefined;
  private refresh: { name: string; args: string[]; wire: Buffer } | undefined;

  constructor(
    readonly key: string,
    readonly redisKey: string,
    readonly owner: string,
    readonly ttlMs: number,
    readonly mode: CommandMode,
    start: number,
  ) {
    this.lastOkStart = start;
  }

  /** The heartbeat's refresh for this lease, encoded once. */
  get refreshCommand(): { name: string; args: string[]; wire: Buffer } {
    if (!this.refresh) {
      const { name, args } = refreshSpec(this.mode, this.redisKey, this.owner, this.ttlMs);
      this.refresh = { name, args, wire: encodeCommand(name, args) };
    }
    return this.refresh;
  }

  /** Local deadline: no refresh succeeded within one ttl after this. */
  get deadline(): number {
    return this.lastOkStart + this.ttlMs;
  }

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.callerReason) this.controller.abort(this.callerReason.reason);
      else if (this.reason !== undefined) this.controller.abort(this.lostError(this.reason));
    }
    return this.controller.signal;
  }

  get lost(): Promise<LostReason> {
    if (!this.lostPromise) {
      this.lostPromise =
        this.reason !== undefined
          ? Promise.resolve(this.reason)
          : new Promise((resolve) => {
              this.resolveLost = resolve;
            });
    }
    return this.lostPromise;
  }

  /**
   * Ends the lease (the first reason stays) and aborts its signal. A release
   * after the local deadline has passed records `'expired'`: the lease was
   * lost while the body ran, even if the heartbeat had not run to see it.
   */
  lose(reason: LostReason): void {
    if (this.reason !== undefined) return;
    if (reason === 'released' && performance.now() >= this.deadline) reason = 'expired';
    this.reason = reason;
    this.resolveLost?.(reason);
    if (this.controller && !this.controller.signal.aborted) this.controller.abort(this.lostError(reason));
  }

  /** Aborts the body's signal for the caller's own cancellation (the lease is not lost). */
  abortFromCaller(reason: unknown): void {
    if (this.controller) {
      if (!this.controller.signal.aborted) this.controller.abort(reason);
    } else if (this.reason === undefined) {
      this.callerReason ??= { reason };
    }
  }

  /** Whether the lease has ended, checking the deadline itself (no heartbeat needed). */
  checkLost(now = performance.now()): boolean {
    if (this.reason !== undefined) return true;
    if (now >= this.deadline) {
      this.lose('expired');
      return true;
    }
    return false;
  }

  /**
   * The abort reason. Its stack would only show a timer callback, and
   * capturing one costs more than the rest of a lock cycle: leave it out.
   */
  private lostError(reason: LostReason): LeaseLostError {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    try {
      return new LeaseLostError(this.key, reason);
    } finally {
      Error.stackTraceLimit = limit;
    }
  }
}

/**
 * @internal How a {@link Lease} sends its own commands: on its SpaceLock's
 * command connection, bounded by the ttl, with the SpaceLock's errors.
 */
export interface LeaseCommands {
  /** Sends `command` (`what` names it in errors) and resolves with its reply. */
  send(command: LockCommand, what: string): Promise<unknown>;
  /** A key as the user's connection names it, as stored in Redis (with its ioredis `keyPrefix`). */
  dataKey(key: string): string;
}

/**
 * A held lock, as seen by the body running under it. Leases are made by
 * `SpaceLock.withSpaceLock`; constructing one yourself gives nothing usable.
 *
 * @example
 * ```ts
 * await locks.withSpaceLock('space-42', async (lease) => {
 *   await store.write(data, { fencingToken: lease.token, signal: lease.signal });
 * });
 * ```
 */
export class Lease {
  readonly #state: LeaseState;
  readonly #commands: LeaseCommands;
  /** The lock name as passed to `withSpaceLock`, without any prefix. */
  readonly name: string;
  /**
   * The fencing token of this grant, strictly greater than every token
   * issued before for the key. `undefined` when the lease was taken with
   * `fallback: 'lua'` on a server without the module.
   */
  readonly token: bigint | undefined;

  /** @internal */
  constructor(name: string, token: bigint | undefined, state: LeaseState, commands: LeaseCommands) {
    this.name = name;
    this.token = token;
    this.#state = state;
    this.#commands = commands;
  }

  /**
   * The lock's key as stored in Redis: the connection's ioredis `keyPrefix`
   * (if any), the SpaceLock's `keyPrefix`, then {@link Lease.name}. A
   * connection without a `keyPrefix` finds the lease's {@link Lease.owner}
   * under it; the same as `locks.key(lease.name)`.
   */
  get key(): string {
    return this.#state.key;
  }

  /** The value stored in the key while this lease holds it. */
  get owner(): string {
    return this.#state.owner;
  }

  /** The time to live the lease is refreshed with (ms). */
  get ttlMs(): number {
    return this.#state.ttlMs;
  }

  /**
   * Aborted when the lease is lost (a refresh answered 0, or no refresh
   * succeeded within one ttl), when the call's own `signal` aborts, and
   * once the body has finished and the lock is released. Its `reason` is a
   * {@link LeaseLostError} (or the caller's abort reason).
   */
  get signal(): AbortSignal {
    return this.#state.signal;
  }

  /** Resolves with the reason once the lease has ended; never rejects. */
  get lost(): Promise<LostReason> {
    return this.#state.lost;
  }

  /**
   * Whether the lease has ended. Also true as soon as the local deadline
   * (start of the last successful refresh + ttl) has passed, even if the
   * heartbeat has not run yet (a busy event loop).
   */
  isLost(): boolean {
    return this.#state.checkLost();
  }

  /**
   * Why the lease ended, or `undefined` while it is held. The first reason
   * stays: kept past the call, a lease that was lost while the body ran
   * still says `'not-owner'` or `'expired'` afterwards, one that was held to
   * the end says `'released'` (as `lost_reason()` in the Rust client).
   */
  lostReason(): LostReason | undefined {
    this.#state.checkLost();
    return this.#state.reason;
  }

  /**
   * Asks the server whether this grant still holds the lock
   * (`SPACELOCK.CHECK key owner token`): `true` only while the key holds this
   * lease's owner under exactly this grant; `false` once it was released,
   * expired or taken by another owner. The server's answer at that moment,
   * unlike {@link isLost}, which is local.
   *
   * @throws {@link SpaceLockError} for a lease taken with `fallback: 'lua'`
   *   (no token to check), {@link ModuleNotLoadedError},
   *   {@link CommandTimeoutError} (no answer within the ttl), Redis errors.
   */
  async check(): Promise<boolean> {
    const token = this.#fencingToken('check()');
    const s = this.#state;
    return parseFlag('SPACELOCK.CHECK', await this.#commands.send(checkCommand(s.redisKey, s.owner, token), 'SPACELOCK.CHECK'));
  }

  /**
   * The fenced write of docs/fencing.md in one call: `SET key value` in one
   * script with `SPACELOCK.CHECK` of this grant, done only while the grant
   * still holds the lock. Resolves `true` when it wrote, `false` when it
   * refused (the lease was lost, released, or the lock has another owner).
   * `key` is named as on your connection (its ioredis `keyPrefix` applies);
   * in a cluster it must share the lock's hash slot (a hash tag).
   *
   * @example
   * ```ts
   * await locks.withSpaceLock('space-42', async (lease) => {
   *   if (!(await lease.fencedWrite('space-42:state', JSON.stringify(state)))) {
   *     throw new Error('lost the lock: the write was refused');
   *   }
   * });
   * ```
   *
   * @throws as {@link check}.
   */
  async fencedWrite(key: string, value: string | Buffer): Promise<boolean> {
    const token = this.#fencingToken('fencedWrite()');
    if (typeof key !== 'string' || key.length === 0) throw new TypeError('fencedWrite() needs a non-empty key');
    if (typeof value !== 'string' && !Buffer.isBuffer(value)) {
      throw new TypeError('fencedWrite() needs a string or Buffer value');
    }
    const s = this.#state;
    const command = fencedWriteCommand(s.redisKey, this.#commands.dataKey(key), s.owner, token, value);
    return parseFencedWrite(await this.#commands.send(command, 'the fenced write'));
  }

  #fencingToken(what: string): bigint {
    if (this.token === undefined) {
      throw new SpaceLockError(
        `lease.${what} needs a fencing token, and this lease has none: it was taken with fallback: 'lua' on a ` +
          'server without the spacelock module (SPACELOCK.CHECK needs the module)',
      );
    }
    return this.token;
  }
}
