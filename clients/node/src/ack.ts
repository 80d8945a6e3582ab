/**
 * Replica acknowledgements (`replicas`, `ackTimeoutMs`, `waitAof`): the
 * `WAIT` (or `WAITAOF`) that follows a grant or a refresh on the connection
 * that sent it. Redis counts the replicas that have acknowledged that
 * connection's last write, so it must be the same connection; on a Cluster
 * the command is routed by the lock's key, to the node that took the write.
 */
import { LockCommand } from './connection';
import { SpaceLockError } from './errors';
import type { ResolvedOptions } from './options';

/** A command sent without a key but routed like `routeKey` (on a Cluster, to the node of its slot). */
class RoutedCommand extends LockCommand {
  private readonly routeKey: string;

  constructor(name: string, args: string[], routeKey: string) {
    super(name, args, { replyEncoding: 'utf8' });
    this.routeKey = routeKey;
  }

  override getKeys(): Array<string | Buffer> {
    return [this.routeKey];
  }
}

/** @internal Whether grants and refreshes wait for acknowledgements at all. */
export function acksWanted(opts: ResolvedOptions): boolean {
  return opts.replicas > 0 || opts.waitAof;
}

/** @internal The acknowledging command's name, for messages. */
export function ackName(opts: ResolvedOptions): string {
  return opts.waitAof ? 'WAITAOF' : 'WAIT';
}

/** @internal `WAIT replicas ackTimeoutMs`, or `WAITAOF 1 replicas ackTimeoutMs`, routed by `key`. */
export function ackCommand(opts: ResolvedOptions, key: string): LockCommand {
  const n = String(opts.replicas);
  const t = String(opts.ackTimeoutMs);
  return opts.waitAof ? new RoutedCommand('waitaof', ['1', n, t], key) : new RoutedCommand('wait', [n, t], key);
}

/** What an acknowledgement said: whether it was enough, and how many replicas acknowledged. */
export interface AckReply {
  ok: boolean;
  acknowledged: number;
}

function count(v: unknown): number | undefined {
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : NaN;
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}

/**
 * @internal `WAIT`'s reply (the replicas that acknowledged), or `WAITAOF`'s
 * (`[local, replicas]`: enough when the local fsync happened and `replicas`
 * replicas fsynced).
 */
export function parseAck(opts: ResolvedOptions, reply: unknown): AckReply {
  if (opts.waitAof) {
    if (Array.isArray(reply) && reply.length === 2) {
      const local = count(reply[0]);
      const replicas = count(reply[1]);
      if (local !== undefined && replicas !== undefined) {
        return { ok: local >= 1 && replicas >= opts.replicas, acknowledged: replicas };
      }
    }
  } else {
    const n = count(reply);
    if (n !== undefined) return { ok: n >= opts.replicas, acknowledged: n };
  }
  throw new TypeError(`unexpected reply to ${ackName(opts)}: ${JSON.stringify(reply)}`);
}

/** @internal An error reply to the acknowledging command, as a clear {@link SpaceLockError}. */
export function ackRefused(opts: ResolvedOptions, err: Error): SpaceLockError {
  if (opts.waitAof) {
    return new SpaceLockError(
      `waitAof: the server refused WAITAOF (it answered: ${err.message}); waitAof needs WAITAOF (Redis ≥ 7.2 or ` +
        'Valkey) and appendonly yes; leave waitAof off on other servers (replicas alone uses WAIT)',
      { cause: err },
    );
  }
  return new SpaceLockError(`replicas: the server refused WAIT (it answered: ${err.message})`, { cause: err });
}
