/**
 * Reply deadlines with one timer for all commands in flight.
 *
 * ioredis bounds a command's wait with `Command#setTimeout`: a Node timer per
 * command, armed on send, then cleared and `delete`d from the command on its
 * reply. A lock cycle sends two commands, each bounded (the ACQUIRE by the
 * ttl, the RELEASE by `releaseTimeoutMs`), and those two timers were the
 * largest cost of ours the existing service's cycle does not have (it bounds
 * nothing).
 *
 * Here the commands in flight form a list threaded through the commands
 * themselves ({@link LockCommand}, {@link LinkedList}), and one unref'ed timer is armed for the
 * earliest deadline. Sending and answering only link and unlink: with one
 * bound for every command (the usual case), the timer fires about once per
 * bound, finds the command it was armed for long answered, and re-arms for
 * the earliest one in flight now. A command past its deadline is rejected
 * exactly as ioredis' own timer does it ("Command timed out"), so callers
 * handle both alike.
 */
import type { LockCommand, RedisConnection } from './connection';
import { COMMAND_TIMED_OUT } from './errors';
import { LinkedList } from './list';
import { timerDelay } from './timers';

export class ReplyDeadlines {
  private readonly inFlight = new LinkedList<LockCommand>();
  private timer: NodeJS.Timeout | undefined;
  private armedFor = Infinity;

  /** Commands sent and not yet marked {@link done}. */
  get size(): number {
    return this.inFlight.size;
  }

  /**
   * Sends `command` on `conn` and returns its reply, or rejects with
   * "Command timed out" once `boundMs` pass without one (the command itself
   * is not withdrawn: the server may still run it). Call {@link done} once
   * the promise has settled; a command never marked done is dropped at its
   * deadline, so forgetting costs memory for one bound, nothing more.
   *
   * @param now `performance.now()`, if the caller has just read it.
   */
  send(conn: RedisConnection, command: LockCommand, boundMs: number, now = performance.now()): Promise<unknown> {
    const at = now + boundMs;
    this.inFlight.delete(command);
    command.deadlineAt = at;
    this.inFlight.add(command);
    if (at < this.armedFor) this.arm(at);
    conn.sendCommand(command);
    return command.promise as Promise<unknown>;
  }

  /** Forgets `command` (its reply or error has arrived). */
  done(command: LockCommand): void {
    this.inFlight.delete(command);
  }

  private arm(at: number): void {
    clearTimeout(this.timer);
    this.armedFor = at;
    // Timers count whole ms and may fire a hair before `at` on the
    // monotonic clock; the tick then re-arms for the rest.
    this.timer = setTimeout(this.tick, timerDelay(at - performance.now()));
    this.timer.unref();
  }

  private readonly tick = (): void => {
    this.timer = undefined;
    this.armedFor = Infinity;
    const now = performance.now();
    let next = Infinity;
    // Only commands in flight are listed: few, unless thousands of acquires
    // are outstanding at once, and even then this runs about once per bound.
    this.inFlight.forEach((c) => {
      if (c.deadlineAt <= now) {
        this.inFlight.delete(c);
        if (!c.isResolved) c.reject(new Error(COMMAND_TIMED_OUT));
      } else if (c.deadlineAt < next) {
        next = c.deadlineAt;
      }
    });
    if (next !== Infinity) this.arm(next);
  };
}
