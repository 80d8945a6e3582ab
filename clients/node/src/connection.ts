/**
 * The connections a SpaceLock runs its commands on.
 *
 * ioredis parses integer replies into JS numbers unless the connection has
 * `stringNumbers: true`, and fencing tokens may exceed 2^53. So a SpaceLock
 * never sends on the user's connection: it duplicates it with
 * `stringNumbers: true` (and without the user's `keyPrefix`, which ioredis
 * would apply to `SET`/`EVAL` keys but not to `SPACELOCK.*` keys: the
 * SpaceLock prepends it itself, so every command sees the same key).
 */
import { Command } from 'ioredis';
import type { Cluster, Redis, RedisOptions } from 'ioredis';
import type { Linked } from './list';

/** What a SpaceLock accepts: a single-node connection or a cluster. */
export type RedisConnection = Redis | Cluster;

/** @internal */
export function isCluster(conn: RedisConnection): conn is Cluster {
  return (conn as { isCluster?: boolean }).isCluster === true;
}

/**
 * @internal Whether `conn` finds its server through Redis Sentinel
 * (`new Redis({ sentinels, name })`): then the primary can change under
 * it, and two copies of it opened at different times may talk to different
 * servers.
 */
export function isSentinelBacked(conn: RedisConnection): boolean {
  if (isCluster(conn)) return false;
  const sentinels = (conn.options as { sentinels?: unknown }).sentinels;
  return Array.isArray(sentinels) && sentinels.length > 0;
}

/**
 * On a Sentinel-backed connection, ioredis' `failoverDetector`: the copy
 * subscribes to the sentinels' `+switch-master` and reconnects (to the new
 * primary) as soon as a failover completes. Without it a copy stays on the
 * old primary, which a planned failover (`SENTINEL FAILOVER`) leaves
 * running as a primary for some 10 s more, until Sentinel turns it into a
 * replica: heartbeats would keep a lease alive there while the new primary
 * lets it expire and grants it to someone else.
 */
function followFailovers(conn: RedisConnection): { failoverDetector?: true } {
  return isSentinelBacked(conn) ? { failoverDetector: true } : {};
}

/** @internal The key prefix ioredis would apply to known commands on `conn`. */
export function connectionKeyPrefix(conn: RedisConnection): string {
  const opts = conn.options as { keyPrefix?: string; redisOptions?: { keyPrefix?: string } };
  return opts.keyPrefix || opts.redisOptions?.keyPrefix || '';
}

/**
 * A lock cycle's command. It carries its deadline and the links by which
 * {@link ReplyDeadlines} lists it while it is in flight.
 * @internal
 */
export class LockCommand extends Command implements Linked<LockCommand> {
  /** @internal When {@link ReplyDeadlines} gives up waiting (performance.now()). */
  deadlineAt = Infinity;
  /** @internal */
  linked = false;
  /** @internal */
  prevLink: LockCommand | undefined = undefined;
  /** @internal */
  nextLink: LockCommand | undefined = undefined;
}

/**
 * A command whose key is its first argument. ioredis only knows the key
 * positions of built-in commands; without this, a Cluster would send
 * `SPACELOCK.*` commands to a random node and follow MOVED every time, and
 * refuse to pipeline them.
 * @internal
 */
export class KeyedCommand extends LockCommand {
  private readonly lockKey: string;

  constructor(name: string, args: string[]) {
    super(name, args, { replyEncoding: 'utf8' });
    this.lockKey = args[0] as string;
  }

  override getKeys(): Array<string | Buffer> {
    return [this.lockKey];
  }
}

/**
 * The RESP encoding of a command, as ioredis writes it, in a Buffer: a batch
 * of them is then joined with one copy, where strings would be joined into a
 * rope that the socket write must flatten and encode again every tick.
 * @internal
 */
export function encodeCommand(name: string, args: readonly string[]): Buffer {
  let out = `*${args.length + 1}\r\n$${Buffer.byteLength(name)}\r\n${name}\r\n`;
  for (const a of args) out += `$${Buffer.byteLength(a)}\r\n${a}\r\n`;
  return Buffer.from(out);
}

/**
 * A command for the heartbeat's hot path: its wire form is encoded once per
 * lease and reused every tick, and its reply goes straight to `onReply`
 * instead of through a promise (at 10 000 leases, ioredis' per-command
 * promise and pipeline bookkeeping cost more than everything else together).
 * `onReply` is called once, with the reply or the error.
 * @internal
 */
export class ReplyCommand extends Command {
  private readonly lockKey: string;
  private readonly wire: Buffer;

  constructor(name: string, args: string[], wire: Buffer, onReply: (err: Error | null, reply: unknown) => void) {
    super(name, args);
    this.lockKey = args[0] as string;
    this.wire = wire;
    let done = false;
    this.resolve = (reply: unknown): void => {
      // Also stops a `commandTimeout` timer from rejecting after the reply.
      this.isResolved = true;
      if (done) return;
      done = true;
      onReply(null, reply);
    };
    this.reject = (err: Error): void => {
      if (done) return;
      done = true;
      onReply(err, null);
    };
  }

  override getKeys(): Array<string | Buffer> {
    return [this.lockKey];
  }

  override toWritable(): Buffer {
    return this.wire;
  }
}

/**
 * One heartbeat batch on a single-node connection, as one Command object
 * sent once per lease: ioredis queues an entry per send and settles them in
 * order, one reply each, so the n-th resolve or reject is the n-th lease's.
 * A Command and its promise per refresh cost four times as much CPU as the
 * refresh itself. This relies on every entry settling in queue order, so the
 * connection it runs on must have no `commandTimeout` (whose timer would
 * reject out of order) and no resending after a reconnect.
 */
const EMPTY = Buffer.alloc(0);

/** @internal */
export class BatchCommand extends Command {
  private written = 0;
  private settled = 0;

  constructor(
    private readonly wires: readonly Buffer[],
    onReply: (index: number, err: Error | null, reply: unknown) => void,
  ) {
    super('spacelock.refresh', []);
    this.resolve = (reply: unknown): void => onReply(this.settled++, null, reply);
    this.reject = (err: Error): void => onReply(this.settled++, err, null);
  }

  override toWritable(): Buffer {
    return this.wires[this.written++] ?? EMPTY;
  }

  /** Writes the whole batch to `conn` in one socket write, as ioredis' Pipeline does. */
  sendOn(conn: Redis): void {
    const chunks: Buffer[] = [];
    let bytes = 0;
    // `sendCommand`'s stream argument is how ioredis' own Pipeline batches writes.
    const stream = {
      isPipeline: true,
      destination: { redis: conn },
      write: (chunk: Buffer): void => {
        chunks.push(chunk);
        bytes += chunk.length;
        if (chunks.length === this.wires.length) conn.stream.write(Buffer.concat(chunks, bytes));
      },
    };
    for (let i = 0; i < this.wires.length; i++) conn.sendCommand(this, stream as never);
  }
}

/**
 * The heartbeat's own connection (single node): no command timeout and no
 * resending, as {@link BatchCommand} needs. Refreshes lost with a broken
 * connection are simply sent afresh at the next tick.
 * @internal
 */
export function duplicateForHeartbeats(conn: Redis): Redis {
  return conn.duplicate({
    stringNumbers: true,
    keyPrefix: '',
    commandTimeout: undefined,
    autoResendUnfulfilledCommands: false,
    enableOfflineQueue: true,
    ...followFailovers(conn),
  });
}

/** @internal Sends `command` on `conn` and returns its reply. */
export function send(conn: RedisConnection, command: Command): Promise<unknown> {
  conn.sendCommand(command);
  return command.promise as Promise<unknown>;
}

/**
 * ioredis builds a Cluster's slot map from `CLUSTER SLOTS`, read on a copy
 * of a node connection. With `stringNumbers` the slot numbers arrive as
 * strings and its `for (slot = "5461"; slot <= "10921"; …)` loop skips
 * every range whose bounds compare the wrong way as text: those slots are
 * unmapped and every command to them bounces off MOVED. So on our cluster
 * copies, the slot reader's connection parses numbers as numbers again. If a
 * future ioredis renames this method, commands still work (via MOVED).
 */
function readSlotsWithNumbers(cluster: Cluster): Cluster {
  type GetInfo = (this: Cluster, node: Redis | undefined, callback: (err?: Error) => void) => void;
  const target = cluster as unknown as { getInfoFromNode?: GetInfo };
  const original = target.getInfoFromNode;
  if (typeof original !== 'function') return cluster;
  target.getInfoFromNode = function (node, callback) {
    const plain =
      node &&
      (Object.create(node, {
        duplicate: { value: (o: RedisOptions = {}) => node.duplicate({ ...o, stringNumbers: false }) },
      }) as Redis);
    return original.call(this, plain, callback);
  };
  return cluster;
}

/**
 * A connection for ordinary (non-blocking) lock commands. Our copies are
 * opened on first use, so the first command always meets a connecting
 * socket: they queue commands until ready even if yours has
 * `enableOfflineQueue: false`.
 * @internal
 */
export function duplicateForCommands(conn: RedisConnection): RedisConnection {
  const own = { stringNumbers: true, keyPrefix: '' };
  if (isCluster(conn)) {
    return readSlotsWithNumbers(
      conn.duplicate([], {
        keyPrefix: '',
        enableOfflineQueue: true,
        redisOptions: { ...conn.options.redisOptions, ...own },
      }),
    );
  }
  return conn.duplicate({ ...own, enableOfflineQueue: true, ...followFailovers(conn) });
}

/**
 * A dedicated connection for one blocking `SPACELOCK.ACQUIRE … WAIT` at a
 * time: no command timeout (the SpaceLock applies its own deadline), no
 * resending after a reconnect and no reconnecting (a broken connection is
 * dropped from the pool), so a wait is never silently repeated. Nor does it
 * follow a Sentinel failover by itself: a WAIT stays on the server it was
 * sent to until that server answers, and whatever it grants is confirmed
 * where the leases live, or released on this connection (see `acquireWait`).
 * @internal
 */
export function duplicateForWaits(conn: RedisConnection): RedisConnection {
  const own = {
    stringNumbers: true,
    keyPrefix: '',
    commandTimeout: undefined,
    autoResendUnfulfilledCommands: false,
    reconnectOnError: null,
    lazyConnect: false,
  };
  if (isCluster(conn)) {
    return readSlotsWithNumbers(
      conn.duplicate([], {
        keyPrefix: '',
        lazyConnect: false,
        enableOfflineQueue: true,
        redisOptions: { ...conn.options.redisOptions, ...own },
      }),
    );
  }
  return conn.duplicate({ ...own, enableOfflineQueue: true, retryStrategy: () => null });
}

/** @internal Whether a pooled connection can still carry a command. */
export function isUsable(conn: RedisConnection): boolean {
  return conn.status !== 'end' && conn.status !== 'close' && conn.status !== 'disconnecting';
}

/**
 * @internal Disconnects `conn` at once. A connection that has ended already (the
 * server closed it, and it does not reconnect) is left alone: ioredis'
 * `disconnect()` would arm a 2 s timer to destroy its socket, which is closed
 * already, and nothing would clear it: the process could not exit until it fired.
 */
export function dropConnection(conn: RedisConnection): void {
  if (!isCluster(conn) && conn.status === 'end') return;
  conn.disconnect();
}

/** @internal Closes a connection we own: QUIT, then a hard disconnect if that fails or stalls. */
export async function closeConnection(conn: RedisConnection, timeoutMs = 1_000): Promise<void> {
  if (!isUsable(conn) || conn.status === 'wait') {
    dropConnection(conn);
    return;
  }
  let timer: NodeJS.Timeout | undefined;
  try {
    // Still handshaking (a heartbeat connection opened for a short body, say):
    // disconnecting now ends the socket under ioredis' handshake, whose failed
    // ready check then arms a ref'd 2 s disconnect timer that nothing clears,
    // and the process cannot exit until it fires. Let the handshake finish.
    if (!isCluster(conn) && (conn.status === 'connecting' || conn.status === 'connect')) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          clearTimeout(timer);
          for (const e of ['ready', 'close', 'end']) conn.off(e, done);
          resolve();
        };
        for (const e of ['ready', 'close', 'end']) conn.once(e, done);
        timer = setTimeout(done, timeoutMs);
      });
      if (!isUsable(conn)) return;
    }
    await Promise.race([
      conn.quit(),
      new Promise((resolve) => {
        timer = setTimeout(resolve, timeoutMs);
      }),
    ]);
  } catch {
    // QUIT failed: the hard disconnect below is all we can do.
  } finally {
    clearTimeout(timer);
    conn.disconnect();
  }
}

/**
 * Counts connection losses on `conn` (every node of a cluster), so a caller
 * can tell whether a reply may come from a command that ioredis resent after
 * a reconnect.
 * @internal
 */
export class ReconnectCounter {
  epoch = 0;

  constructor(conn: RedisConnection) {
    const bump = (): void => {
      this.epoch++;
    };
    if (isCluster(conn)) {
      conn.on('+node', (node: Redis) => node.on('close', bump));
      conn.on('-node', bump);
    } else {
      conn.on('close', bump);
    }
  }
}
