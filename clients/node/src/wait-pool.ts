/**
 * A small bounded pool of dedicated connections for `SPACELOCK.ACQUIRE …
 * WAIT`. A blocked client stops the server from reading anything else on
 * its connection, so waits never share the connection that carries the
 * heartbeats; each wait has a connection to itself.
 */
import { startTimer } from './timers';
import { SpaceLockError } from './errors';
import { dropConnection, isUsable, type RedisConnection } from './connection';

export class WaitPool {
  private readonly idle: RedisConnection[] = [];
  /** Every connection made and not yet dropped: idle, waiting, or abandoned and draining. */
  private readonly all = new Set<RedisConnection>();
  private readonly queue: Array<() => void> = [];
  private busy = 0;
  private closed = false;

  constructor(
    private readonly make: () => RedisConnection,
    private readonly max: number,
  ) {}

  /**
   * A connection for one wait, or `undefined` if no slot came free before
   * `deadline` (performance.now() time). Rejects with the signal's reason
   * if it aborts first.
   */
  async checkout(deadline: number, signal?: AbortSignal): Promise<RedisConnection | undefined> {
    for (;;) {
      if (this.closed) throw new SpaceLockError('the SpaceLock is closed');
      signal?.throwIfAborted();
      if (this.busy < this.max) {
        this.busy++;
        for (let c = this.idle.pop(); c; c = this.idle.pop()) {
          if (isUsable(c)) return c;
          this.drop(c); // closed meanwhile, e.g. by the server's idle `timeout`
        }
        const conn = this.make();
        this.all.add(conn);
        // Failures surface as command errors; without a listener ioredis prints them.
        conn.on('error', () => undefined);
        return conn;
      }
      if (!(await this.slotFreed(deadline, signal))) return undefined;
    }
  }

  /** Returns a healthy connection after a wait that got its reply. */
  checkin(conn: RedisConnection): void {
    this.busy--;
    if (!this.closed && isUsable(conn)) this.idle.push(conn);
    else this.drop(conn);
    this.queue.shift()?.();
  }

  /**
   * Frees the slot of a connection that is not coming back: its caller
   * {@link drop}s it once done with it (an abandoned wait drains first).
   */
  release(): void {
    this.busy--;
    this.queue.shift()?.();
  }

  /** Closes a connection of this pool for good (idempotent). */
  drop(conn: RedisConnection): void {
    this.all.delete(conn);
    dropConnection(conn);
  }

  /**
   * Closes the idle connections: after a failover they may still be on the
   * old primary, and the next wait should ask Sentinel for the new one.
   */
  dropIdle(): void {
    for (const c of this.idle.splice(0)) this.drop(c);
  }

  /** Closes every connection of the pool, busy and draining ones too, without leaving a timer behind. */
  close(): void {
    this.closed = true;
    this.idle.length = 0;
    for (const c of [...this.all]) this.drop(c);
    for (const wake of this.queue.splice(0)) wake();
  }

  private slotFreed(deadline: number, signal?: AbortSignal): Promise<boolean> {
    return new Promise((resolve, reject) => {
      const wake = (): void => {
        cleanup();
        resolve(true);
      };
      const onAbort = (): void => {
        cleanup();
        reject(signal?.reason);
      };
      const timer = startTimer(() => {
        cleanup();
        resolve(false);
      }, deadline - performance.now());
      const cleanup = (): void => {
        timer.clear();
        const i = this.queue.indexOf(wake);
        if (i >= 0) this.queue.splice(i, 1);
        signal?.removeEventListener('abort', onAbort);
      };
      this.queue.push(wake);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}
