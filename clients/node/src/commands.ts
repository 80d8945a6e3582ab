/**
 * The commands behind each lock operation, for both modes: the module's
 * `SPACELOCK.*`, and the existing Lua-based service's exact `SET NX PX` + Lua (`fallback: 'lua'`).
 */
import { KeyedCommand, LockCommand } from './connection';
import { SpaceLockError } from './errors';

/**
 * The command mode: which command set takes and keeps leases, the module's
 * `SPACELOCK.*` (`'module'`) or the existing Lua-based service's
 * `SET NX PX` + Lua (`'lua'`, with `fallback: 'lua'`).
 */
export type CommandMode = 'module' | 'lua';

/** The existing service's release script, byte for byte (space-lock.service.ts). */
export const LUA_RELEASE_SCRIPT =
  'if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end';
/** The existing service's refresh script, byte for byte (space-lock.service.ts). */
export const LUA_REFRESH_SCRIPT =
  'if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("pexpire", KEYS[1], ARGV[2]) else return 0 end';

/**
 * @internal How a lock is taken: exclusively (the default), as one of many
 * readers (`SHARED`), or as one of at most `limit` holders (`LIMIT n`).
 */
export type LockShape = { kind: 'exclusive' } | { kind: 'shared' } | { kind: 'limit'; limit: number };

/** @internal */
export const EXCLUSIVE: LockShape = { kind: 'exclusive' };

/** @internal The ACQUIRE arguments after the ttl that select `shape`. */
function shapeArgs(shape: LockShape): string[] {
  if (shape.kind === 'shared') return ['SHARED'];
  if (shape.kind === 'limit') return ['LIMIT', String(shape.limit)];
  return [];
}

/** @internal The error for a shared or counted lock in Lua mode, which has no such commands. */
function luaHasNoShape(shape: LockShape): SpaceLockError {
  return new SpaceLockError(
    `${shape.kind === 'shared' ? 'shared' : 'counted'} locks need the spacelock module: ` +
      "this SpaceLock runs the existing service's SET NX PX + Lua commands (fallback: 'lua'), which have only exclusive locks",
  );
}

/** @internal */
export function acquireCommand(
  mode: CommandMode,
  key: string,
  owner: string,
  ttlMs: number,
  shape: LockShape = EXCLUSIVE,
): LockCommand {
  if (mode === 'module') return new KeyedCommand('spacelock.acquire', [key, owner, String(ttlMs), ...shapeArgs(shape)]);
  if (shape.kind !== 'exclusive') throw luaHasNoShape(shape);
  return new LockCommand('set', [key, owner, 'PX', String(ttlMs), 'NX'], { replyEncoding: 'utf8' });
}

/** @internal */
export function acquireWaitCommand(
  key: string,
  owner: string,
  ttlMs: number,
  waitMs: number,
  shape: LockShape = EXCLUSIVE,
): LockCommand {
  return new KeyedCommand('spacelock.acquire', [key, owner, String(ttlMs), ...shapeArgs(shape), 'WAIT', String(waitMs)]);
}

/** @internal The heartbeat's refresh, as a name and arguments (the key first for the module). */
export function refreshSpec(mode: CommandMode, key: string, owner: string, ttlMs: number): { name: string; args: string[] } {
  return mode === 'module'
    ? { name: 'spacelock.refresh', args: [key, owner, String(ttlMs)] }
    : { name: 'eval', args: [LUA_REFRESH_SCRIPT, '1', key, owner, String(ttlMs)] };
}

/** @internal One module REFRESH (the confirmation of a late grant). */
export function refreshCommand(key: string, owner: string, ttlMs: number): LockCommand {
  return new KeyedCommand('spacelock.refresh', [key, owner, String(ttlMs)]);
}

/** @internal */
export function releaseCommand(mode: CommandMode, key: string, owner: string): LockCommand {
  return mode === 'module'
    ? new KeyedCommand('spacelock.release', [key, owner])
    : new LockCommand('eval', [LUA_RELEASE_SCRIPT, '1', key, owner], { replyEncoding: 'utf8' });
}

/** @internal `SPACELOCK.CHECK key owner token`: 1 while `owner` holds `key` under exactly that grant. */
export function checkCommand(key: string, owner: string, token: bigint): LockCommand {
  return new KeyedCommand('spacelock.check', [key, owner, token.toString()]);
}

/**
 * The fenced write of docs/fencing.md, byte for byte: `SET KEYS[2] ARGV[3]`
 * only while `SPACELOCK.CHECK KEYS[1] ARGV[1] ARGV[2]` (lock, owner, token)
 * answers 1, in one atomic script. Replies `OK` when it wrote, nil when not.
 */
export const FENCED_WRITE_SCRIPT = `if redis.call('SPACELOCK.CHECK', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  return redis.call('SET', KEYS[2], ARGV[3])
end
return nil`;

/** @internal {@link FENCED_WRITE_SCRIPT} for one write (in a cluster, `dataKey` must share the lock's slot). */
export function fencedWriteCommand(
  lockKey: string,
  dataKey: string,
  owner: string,
  token: bigint,
  value: string | Buffer,
): LockCommand {
  return new LockCommand('eval', [FENCED_WRITE_SCRIPT, '2', lockKey, dataKey, owner, token.toString(), value], {
    replyEncoding: 'utf8',
  });
}

/** @internal The fenced write's reply: `OK` → written, nil → refused. */
export function parseFencedWrite(reply: unknown): boolean {
  if (reply === 'OK') return true;
  if (reply === null) return false;
  throw new TypeError(`unexpected reply to the fenced write: ${String(reply)}`);
}

/** @internal */
export function infoCommand(key: string): LockCommand {
  return new KeyedCommand('spacelock.info', [key]);
}

/**
 * The grant in an ACQUIRE reply: `null` when the lock is held, else the
 * token (`undefined` in Lua mode). Replies arrive as strings
 * (`stringNumbers: true`), so the token is exact.
 * @internal
 */
export function parseGrant(mode: CommandMode, reply: unknown): { token: bigint | undefined } | null {
  if (reply === null) return null;
  if (mode === 'lua') {
    if (reply === 'OK') return { token: undefined };
  } else if (typeof reply === 'string' && isDigits(reply)) {
    return { token: BigInt(reply) };
  }
  throw new TypeError(`unexpected reply to ${mode === 'module' ? 'SPACELOCK.ACQUIRE' : 'SET NX PX'}: ${String(reply)}`);
}

/** Whether `s` is a non-empty run of ASCII digits (a loop: cheaper than a regex on the hot path). */
function isDigits(s: string): boolean {
  if (s.length === 0) return false;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  return true;
}

/** @internal 1 → true, 0 → false (REFRESH, RELEASE and the existing service's scripts). */
export function parseFlag(command: string, reply: unknown): boolean {
  if (reply === '1' || reply === 1) return true;
  if (reply === '0' || reply === 0) return false;
  throw new TypeError(`unexpected reply to ${command}: ${String(reply)}`);
}

/** One holder of a lock, from `SPACELOCK.INFO`. */
export interface LockHolder {
  /** The holder's owner value. */
  owner: string;
  /** Remaining time to live of its lease in ms (-1: no expiry). */
  ttlMs: number;
  /** Its grant's fencing token (for an exclusive lock, the last token issued for the key). */
  token: bigint;
}

/** A held lock, from `SPACELOCK.INFO`. */
export interface LockInfo {
  /**
   * The holder (a shared or counted lock: the newest holder, the last of
   * {@link LockInfo.holders}): its owner value.
   */
  owner: string;
  /** That holder's remaining time to live in ms (-1: no expiry). */
  ttlMs: number;
  /** That holder's token (exclusive: the last token issued for the key, the holder's if it used the module). */
  token: bigint;
  /** Clients blocked in `SPACELOCK.ACQUIRE … WAIT` on this key. */
  waiters: number;
  /** How the lock is held: `'exclusive'`, `'shared'` (readers) or `'limit'` (counted). */
  mode: 'exclusive' | 'shared' | 'limit';
  /** A counted lock's number of permits; 1 for an exclusive lock, 0 for a shared one. */
  limit: number;
  /** Every live holder in token order (one for an exclusive lock). */
  holders: LockHolder[];
}

/** @internal A flat field/value array (RESP2) or a Map (RESP3) as a Map. */
function fields(reply: unknown): Map<string, unknown> {
  if (reply instanceof Map) return new Map([...reply].map(([k, v]) => [String(k), v]));
  if (!Array.isArray(reply) || reply.length % 2 !== 0) {
    throw new TypeError(`unexpected reply to SPACELOCK.INFO: ${String(reply)}`);
  }
  const f = new Map<string, unknown>();
  for (let i = 0; i < reply.length; i += 2) f.set(String(reply[i]), reply[i + 1]);
  return f;
}

/** @internal */
export function parseInfo(reply: unknown): LockInfo | null {
  if (reply === null) return null;
  const f = fields(reply);
  const waiters = Number(f.get('waiters') ?? 0);
  const mode = f.get('mode');
  if (mode === 'shared' || mode === 'limit') {
    const list = f.get('holders');
    if (!Array.isArray(list) || list.length === 0) {
      throw new TypeError(`unexpected holders in SPACELOCK.INFO: ${String(list)}`);
    }
    const holders = list.map((h) => {
      const hf = fields(h);
      return { owner: String(hf.get('owner')), ttlMs: Number(hf.get('ttl_ms')), token: BigInt(String(hf.get('token'))) };
    });
    const newest = holders[holders.length - 1]!;
    return { ...newest, waiters, mode, limit: Number(f.get('limit') ?? 0), holders };
  }
  const holder = { owner: String(f.get('owner')), ttlMs: Number(f.get('ttl_ms')), token: BigInt(String(f.get('token'))) };
  return { ...holder, waiters, mode: 'exclusive', limit: 1, holders: [holder] };
}
