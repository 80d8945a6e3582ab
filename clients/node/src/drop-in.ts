/**
 * The existing `SpaceLockService`'s surface on a {@link SpaceLock}: the same
 * `withSpaceLock(spaceId, fn)` and the same result type, so its callers keep
 * compiling and their exhaustive `switch`es keep holding.
 */
import type { RedisConnection } from './connection';
import type { NotAcknowledgedError } from './errors';
import type { Lease } from './lease';
import type { SpaceLockOptions, WithSpaceLockOptions } from './options';
import { SpaceLock, type CloseOptions, type ExistingSkipped } from './space-lock';

/**
 * A drop-in for the existing `SpaceLockService`: `withSpaceLock` resolves
 * with `fn`'s value or `{ skipped: 'lock-held' | 'in-progress' }`, typed
 * exactly as the existing service types it. Extend it, or wrap it, in your
 * NestJS provider.
 *
 * The skip answered is the one the existing service gives in the same
 * situation:
 *
 * - `'in-progress'`: a call of this process is inside the space and holds
 *   its lock (its body runs);
 * - `'lock-held'`: another replica holds the lock, or a call of this
 *   process is still acquiring it (the existing service's concurrent calls
 *   all reach `SET NX` and all but one find the lock held).
 *
 * With `waitMs`, a call that did not get the lock in time answers what the
 * existing service answers at that moment: `'in-progress'` while a call of
 * this process still runs its body, else `'lock-held'` (the client's own
 * `'timed-out'`).
 *
 * @example
 * ```ts
 * const locks = new SpaceLockDropIn(redis, { keyPrefix: GIT_SYNC_LOCK_PREFIX, ttlMs: GIT_SYNC_LOCK_TTL_MS });
 * const r = await locks.withSpaceLock(spaceId, () => ingestPush(spaceId), { waitMs: 5_000 });
 * if ('skipped' in r) throw new ServiceUnavailableException(r.skipped); // 'lock-held' | 'in-progress'
 * ```
 */
export class SpaceLockDropIn {
  /** The SpaceLock underneath, for `info()`, fencing tokens and the rest of the client's API. */
  readonly locks: SpaceLock;

  /**
   * @param redis an ioredis `Redis` or `Cluster` (duplicated, never closed),
   *   or a {@link SpaceLock} to share.
   * @param options see {@link SpaceLockOptions} (ignored when given a SpaceLock).
   */
  constructor(redis: RedisConnection | SpaceLock, options: SpaceLockOptions = {}) {
    this.locks = redis instanceof SpaceLock ? redis : new SpaceLock(redis, options);
  }

  /**
   * `SpaceLockService.withSpaceLock(spaceId, fn)`: runs `fn` under the lock
   * and returns its value, or the existing service's skip sentinel. `fn` may
   * take the {@link Lease} (its fencing token and lost-lease signal) or
   * ignore it. `opts.waitMs` waits for the lock, in this process and on the
   * server, before skipping. Errors are {@link SpaceLock.withSpaceLock}'s;
   * and with the `replicas` option, a grant too few replicas acknowledged
   * rejects with {@link NotAcknowledgedError} (released, `fn` not run),
   * as the existing service's result type has no place for it.
   */
  withSpaceLock<T>(
    spaceId: string,
    fn: (lease: Lease) => T | PromiseLike<T>,
    opts?: WithSpaceLockOptions,
  ): Promise<T | ExistingSkipped> {
    return this.locks.withExistingResults(spaceId, fn, opts);
  }

  /** {@link SpaceLock.close}: lets running bodies finish (within `timeoutMs`), then closes. */
  close(options?: CloseOptions): Promise<void> {
    return this.locks.close(options);
  }
}
