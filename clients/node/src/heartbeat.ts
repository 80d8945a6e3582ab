/**
 * One heartbeat per SpaceLock: a single unref'ed timer that, every ttl/3,
 * refreshes every held lease with one pipelined batch: one socket write on a
 * single node; on a cluster the client routes each refresh to its slot's
 * node. The existing Lua-based service runs one setInterval and one full EVAL
 * per lease instead.
 *
 * A lease is lost when a refresh answers 0, or when no refresh has succeeded
 * within one ttl of the *start* of the last successful one (or of the
 * acquire), on the monotonic clock. Between ticks the timer also wakes at the
 * earliest such deadline, so a loss is signalled on time even when refreshes
 * are failing.
 *
 * With `replicas` (or `waitAof`), each batch is followed by one `WAIT` on
 * its connection (on a cluster, one per refresh, routed to its node), and a
 * lease's deadline moves only once that `WAIT` says enough replicas have
 * the refresh: a refresh that only the primary took does not make the
 * holder believe it holds the lock longer than a promoted replica will.
 *
 * When a connection comes back after an outage ('ready' after a reconnect),
 * every lease that missed a refresh meanwhile is refreshed at once: waiting
 * for the next tick would lose a lease whose outage ended in the last third
 * of its ttl, although the server still held it.
 */
import { ackCommand, ackName, acksWanted, parseAck } from './ack';
import { BatchCommand, ReplyCommand, send, type RedisConnection } from './connection';
import type { Redis } from 'ioredis';
import type { LeaseState } from './lease';
import { LinkedList } from './list';
import { timerDelay } from './timers';
import { refreshInterval, type ResolvedOptions, type SpaceLockLogger } from './options';

/** What one batch of refreshes found, reported once the last reply is in. */
interface Tally {
  left: number;
  failed: number;
  firstError: string;
  notOwner: string[];
  late: string[];
  /** Leases whose refresh answered 1 and waits for its acknowledgement. */
  refreshed: Set<LeaseState>;
  /** Leases whose refresh too few replicas acknowledged, and the fewest that did. */
  unacked: number;
  fewestAcks: number;
}

/** How many keys a warning about lost leases names. */
const LOST_KEYS_SHOWN = 5;

export class Heartbeat {
  private readonly leases = new LinkedList<LeaseState>();
  private timer: NodeJS.Timeout | undefined;
  private nextTickAt = 0;
  private readonly interval: number;
  /** The connections whose 'ready' this heartbeat listens to. */
  private readonly watched = new WeakSet<object>();
  private readonly ttlMs: number;
  private readonly logger: SpaceLockLogger;
  /** Whether refreshes wait for replica acknowledgements. */
  private readonly acks: boolean;

  /**
   * @param conn where refreshes go: a Cluster (each refresh is routed to its
   *   slot's node), or a single-node connection for {@link BatchCommand}.
   */
  constructor(
    private readonly conn: () => { cluster: RedisConnection } | { single: Redis },
    private readonly opts: ResolvedOptions,
  ) {
    this.ttlMs = opts.ttlMs;
    this.logger = opts.logger;
    this.acks = acksWanted(opts);
    this.interval = refreshInterval(this.ttlMs);
  }

  /** Leases being refreshed right now. */
  get size(): number {
    return this.leases.size;
  }

  add(lease: LeaseState): void {
    this.leases.add(lease);
    if (this.timer === undefined) {
      try {
        this.target(); // open the heartbeat's connection now, so it is ready by the first tick
      } catch {
        // closed: the first tick reports it
      }
      this.nextTickAt = performance.now() + this.interval;
      this.schedule(this.interval);
    }
  }

  /** The timer stays armed when the last lease goes; its next tick stops it if none came back. */
  delete(lease: LeaseState): void {
    this.leases.delete(lease);
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Where refreshes go (see the constructor), listening for its reconnects the first time it is seen. */
  private target(): ReturnType<typeof this.conn> {
    const target = this.conn();
    const conn = 'cluster' in target ? target.cluster : target.single;
    if (!this.watched.has(conn)) {
      this.watched.add(conn);
      conn.on('ready', this.onReady);
    }
    return target;
  }

  /**
   * The connection is (back) up: refresh at once every lease that has gone
   * a whole interval without a successful refresh (so not after the first
   * connect, which follows the acquire), unless a refresh is in flight.
   */
  private readonly onReady = (): void => {
    const now = performance.now();
    const due: LeaseState[] = [];
    this.leases.forEach((lease) => {
      if (lease.reason !== undefined || now >= lease.deadline) return; // the next tick reports and drops it
      const missed = now - lease.lastOkStart >= this.interval - 1;
      const idle = lease.refreshSentAt === undefined || now - lease.refreshSentAt >= this.interval - 1;
      if (missed && idle) {
        lease.refreshSentAt = now;
        due.push(lease);
      }
    });
    if (due.length > 0) this.send(due, now);
  };

  private schedule(ms: number): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(this.tick, timerDelay(ms));
    this.timer.unref();
  }

  private readonly tick = (): void => {
    this.timer = undefined;
    const now = performance.now();
    // Timers may fire a hair early; a tick within 1 ms of its time counts.
    const refreshDue = now >= this.nextTickAt - 1;
    if (refreshDue) {
      // A steady cadence (a late tick does not push the next one back),
      // unless we fell a whole interval behind, e.g. after a stalled loop.
      this.nextTickAt += this.interval;
      if (this.nextTickAt <= now) this.nextTickAt = now + this.interval;
    }
    const due: LeaseState[] = [];
    const expired: string[] = [];
    let earliest = Infinity;
    this.leases.forEach((lease) => {
      if (lease.reason !== undefined) {
        this.leases.delete(lease);
        return;
      }
      if (lease.checkLost(now)) {
        expired.push(lease.key);
        this.leases.delete(lease);
        return;
      }
      // One refresh in flight per lease, unless it has been stuck for a whole interval.
      const stuck = lease.refreshSentAt === undefined || now - lease.refreshSentAt >= this.interval - 1;
      if (refreshDue && stuck) {
        lease.refreshSentAt = now;
        due.push(lease);
      }
      earliest = Math.min(earliest, lease.deadline);
    });
    this.reportLost(expired, `no refresh succeeded within the ttl (${this.ttlMs} ms)`);
    if (due.length > 0) this.send(due, now);
    if (this.leases.size > 0) this.schedule(Math.min(this.nextTickAt, earliest) - now);
    else this.stop();
  };

  private send(due: LeaseState[], sentAt: number): void {
    const tally: Tally = {
      left: due.length,
      failed: 0,
      firstError: '',
      notOwner: [],
      late: [],
      refreshed: new Set(),
      unacked: 0,
      fewestAcks: Infinity,
    };
    const done = (): void => {
      if (--tally.left > 0) return;
      // One line per batch and kind, not one per lease: 10 000 leases on a
      // dead or flushed server must not print 10 000 warnings a tick.
      this.reportLost(tally.notOwner, 'the lock expired, was deleted, or has another owner');
      this.reportLost(tally.late, 'the refresh reply came back after the ttl');
      if (tally.failed > 0) {
        this.logger.warn(`spacelock: refresh failed for ${tally.failed} lease(s), retrying next tick: ${tally.firstError}`);
      }
      if (tally.unacked > 0) {
        this.logger.warn(
          `spacelock: refresh of ${tally.unacked} lease(s) acknowledged by ${tally.fewestAcks} of ${this.opts.replicas} ` +
            `replicas within ${this.opts.ackTimeoutMs} ms; their deadlines stay, retrying next tick`,
        );
      }
    };
    const fail = (message: string): void => {
      tally.failed++;
      tally.firstError ||= message;
    };
    const onReply = (lease: LeaseState, err: Error | null, reply: unknown): void => {
      if (lease.refreshSentAt === sentAt) lease.refreshSentAt = undefined;
      const problem = err ? err.message : this.onReply(lease, sentAt, reply, tally);
      if (problem) fail(problem);
      done();
    };
    let target: ReturnType<typeof this.conn>;
    try {
      target = this.target();
    } catch (err) {
      // The SpaceLock was closed under a held lease: nothing can refresh it.
      for (const lease of due) onReply(lease, err instanceof Error ? err : new Error(String(err)), null);
      return;
    }
    // The acknowledgement of `leases`' refreshes, sent right behind them on their connection.
    const onAck = (leases: LeaseState[], err: Error | null, reply: unknown): void => {
      if (err) {
        fail(`${ackName(this.opts)}: ${err.message}`);
      } else {
        try {
          const ack = parseAck(this.opts, reply);
          for (const lease of leases) {
            if (!tally.refreshed.delete(lease)) continue; // its refresh failed, or has not answered
            if (ack.ok) this.refreshed(lease, sentAt, tally);
            else {
              tally.unacked++;
              tally.fewestAcks = Math.min(tally.fewestAcks, ack.acknowledged);
            }
          }
        } catch (e) {
          fail((e as Error).message);
        }
      }
      done();
    };
    const sendAck = (conn: RedisConnection, leases: LeaseState[], routeKey: string): void => {
      send(conn, ackCommand(this.opts, routeKey)).then(
        (reply) => onAck(leases, null, reply),
        (err: unknown) => onAck(leases, err instanceof Error ? err : new Error(String(err)), null),
      );
    };
    if ('cluster' in target) {
      if (this.acks) tally.left += due.length;
      for (const lease of due) {
        const { name, args, wire } = lease.refreshCommand;
        const command = new ReplyCommand(name, args, wire, (err, reply) => onReply(lease, err, reply));
        target.cluster.sendCommand(command);
        // Routed by the key, to the node (and connection) that took the refresh.
        if (this.acks) sendAck(target.cluster, [lease], lease.redisKey);
      }
      return;
    }
    const conn = target.single;
    const batch = new BatchCommand(
      due.map((lease) => lease.refreshCommand.wire),
      (i, err, reply) => {
        const lease = due[i];
        if (lease) onReply(lease, err, reply);
      },
    );
    if (!['reconnecting', 'close', 'end', 'disconnecting'].includes(conn.status)) {
      batch.sendOn(conn); // still connecting: ioredis queues it until ready
      // One acknowledgement for the whole batch: Redis waits for this
      // connection's last write, the batch's last refresh.
      if (this.acks) {
        tally.left++;
        sendAck(conn, due, due[0]!.redisKey);
      }
    } else {
      // Queueing refreshes behind a reconnect would pile up a batch per
      // tick; the next tick sends fresh ones.
      const err = new Error(`connection is ${conn.status}`);
      for (let i = 0; i < due.length; i++) batch.reject(err);
    }
  }

  /** One warning for leases lost for one reason: the key, or a count and the first few keys. */
  private reportLost(keys: string[], why: string): void {
    if (keys.length === 0) return;
    if (keys.length === 1) {
      this.logger.warn(`spacelock: lease lost on ${keys[0]}: ${why}`);
      return;
    }
    const shown = keys.slice(0, LOST_KEYS_SHOWN).join(', ');
    const more = keys.length > LOST_KEYS_SHOWN ? `, and ${keys.length - LOST_KEYS_SHOWN} more` : '';
    this.logger.warn(`spacelock: ${keys.length} leases lost (${shown}${more}): ${why}`);
  }

  /** A refresh sent at `sentAt` took (and, if asked for, was acknowledged): the lease's deadline moves. */
  private refreshed(lease: LeaseState, sentAt: number, tally: Tally): void {
    if (lease.reason !== undefined || !this.leases.has(lease)) return; // lost or released meanwhile
    if (sentAt > lease.lastOkStart) lease.lastOkStart = sentAt;
    if (lease.checkLost()) {
      tally.late.push(lease.key);
      this.delete(lease);
    }
  }

  /** Applies one refresh reply; returns a problem to report, if any. */
  private onReply(lease: LeaseState, sentAt: number, reply: unknown, tally: Tally): string | undefined {
    if (lease.reason !== undefined || !this.leases.has(lease)) return undefined; // lost or released meanwhile
    if (reply === '1' || reply === 1) {
      // With acknowledgements, the deadline moves once they are in (onAck).
      if (this.acks) tally.refreshed.add(lease);
      else this.refreshed(lease, sentAt, tally);
      return undefined;
    }
    if (reply === '0' || reply === 0) {
      tally.notOwner.push(lease.key);
      lease.lose('not-owner');
      this.delete(lease);
      return undefined;
    }
    return `unexpected reply ${String(reply)}`;
  }
}
