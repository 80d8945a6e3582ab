/**
 * The history checker's Node client process (`spacelock-chaos run` starts
 * it; see chaos/): loops over the contended names until its deadline with
 * the Node client over an ioredis Sentinel connection (or an ioredis
 * Cluster when it is given `--cluster`), half of its
 * acquisitions through the server's wait queue, and appends what happened
 * to `<dir>/<id>.jsonl`, one JSON object per line, times on
 * `process.hrtime.bigint()` (CLOCK_MONOTONIC, the clock the Rust processes
 * read too).
 */
import { appendFileSync } from 'node:fs';
import { join } from 'node:path';
import { Cluster, Redis } from 'ioredis';
import { isSkipped, SpaceLock, type Lease } from '../src';

const NAMES = ['k0', 'k1', 'k2'];
/** The reader-writer name and the counted one, as chaos/src/workers.rs. */
const RW = 'rw';
const COUNTED = 'slots';
const SLOTS = 2;

type Shape = { mode: 'exclusive' } | { mode: 'shared' } | { mode: 'limit'; limit: number };
const PREFIX = 'chaos:';
const WAIT_MS = 300;
const SERVICE = 'chaos';
/** The fenced resource's script: as chaos/src/fenced.rs. */
const FENCE_SCRIPT = `
local high = redis.call('GET', KEYS[1])
if high and ARGV[1] < high then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
local seq = redis.call('INCR', KEYS[3])
redis.call('RPUSH', KEYS[2], seq .. ' ' .. ARGV[1] .. ' ' .. ARGV[2])
return 1
`;

interface Args {
  id: string;
  dir: string;
  sentinels: number[];
  /** The cluster nodes' ports: a cluster run when not empty. */
  cluster: number[];
  fenced: number;
  ttlMs: number;
  replicas: number;
  untilNs: bigint;
  seed: number;
  shapes: boolean;
}

function parseArgs(argv: string[]): Args {
  const m = new Map<string, string>();
  for (let i = 0; i + 1 < argv.length; i += 2) m.set(argv[i]!.replace(/^--/, ''), argv[i + 1]!);
  const get = (k: string): string => {
    const v = m.get(k);
    if (v === undefined) throw new Error(`missing --${k}`);
    return v;
  };
  return {
    id: get('id'),
    dir: get('dir'),
    sentinels: ports(m.get('sentinels')),
    cluster: ports(m.get('cluster')),
    fenced: Number(get('fenced')),
    ttlMs: Number(get('ttl-ms')),
    replicas: Number(get('replicas')),
    untilNs: BigInt(get('until-ns')),
    seed: Number(get('seed')),
    shapes: (m.get('shapes') ?? 'true') === 'true',
  };
}

const ports = (list: string | undefined): number[] => (list ?? '').split(',').filter((p) => p !== '').map(Number);

/** mulberry32: a small seeded generator. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The next name and how to hold it: one of five names alike, a reader three times in four on `rw`. */
function pick(random: () => number, shapes: boolean): [string, Shape] {
  if (!shapes) return [NAMES[Math.floor(random() * NAMES.length)]!, { mode: 'exclusive' }];
  const i = Math.floor(random() * (NAMES.length + 2));
  if (i < NAMES.length) return [NAMES[i]!, { mode: 'exclusive' }];
  if (i === NAMES.length) return [RW, random() < 0.75 ? { mode: 'shared' } : { mode: 'exclusive' }];
  return [COUNTED, { mode: 'limit', limit: SLOTS }];
}

const now = (): bigint => process.hrtime.bigint();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  const file = join(a.dir, `${a.id}.jsonl`);
  const record = (ev: string, fields: Record<string, string | number | bigint | boolean | null | undefined>, t = now()): void => {
    const o: Record<string, unknown> = { ev, t: t.toString(), w: a.id };
    for (const [k, v] of Object.entries(fields)) o[k] = typeof v === 'bigint' ? v.toString() : (v ?? null);
    // Integers as JSON numbers (the checker reads them as such).
    const text = JSON.stringify(o).replace(/"(t|token|began|asked)":"(\d+)"/g, '"$1":$2');
    appendFileSync(file, `${text}\n`);
  };
  const random = rng(a.seed);
  // The client routes each command to the primary serving its key, and a
  // grant's WAIT to the node that granted it.
  const redis =
    a.cluster.length > 0
      ? new Cluster(a.cluster.map((port) => ({ host: '127.0.0.1', port })))
      : new Redis({
          sentinels: a.sentinels.map((port) => ({ host: '127.0.0.1', port })),
          name: SERVICE,
        });
  redis.on('error', () => undefined);
  const fence = new Redis({ host: '127.0.0.1', port: a.fenced });
  fence.on('error', () => undefined);
  const owner = `${a.id}.1`;
  const locks = new SpaceLock(redis, {
    ttlMs: a.ttlMs,
    keyPrefix: PREFIX,
    owner,
    replicas: a.replicas,
    releaseTimeoutMs: a.ttlMs,
  });

  while (now() < a.untilNs) {
    const [name, shape] = pick(random, a.shapes);
    const key = `${PREFIX}${name}`;
    const viaWait = random() < 0.5;
    const began = now();
    const bodyMs = random() < 0.7 ? 5 + Math.floor(random() * 55) : Math.floor(a.ttlMs / 3 + random() * (a.ttlMs * 1.5 - a.ttlMs / 3));
    try {
      const body = async (lease: Lease): Promise<void> => {
          const granted = now();
          const token = lease.token ?? 0n;
          record('start', { key, token, owner: lease.owner, mode: shape.mode, limit: shape.mode === 'limit' ? shape.limit : 0, asked: began }, granted);
          const work = async (): Promise<boolean | null> => {
            let check: boolean | null = null;
            try {
              check = await lease.check();
            } catch {
              check = null;
            }
            record('grant', { key, token, owner: lease.owner, acked: a.replicas > 0, wait: viaWait, check }, granted);
            for (const phase of ['start', 'end']) {
              if (phase === 'end') await sleep(bodyMs);
              // The race below does not cancel this function: stop here once the lease is lost.
              if (lease.signal.aborted) return null;
              // Readers and permit holders run together: only exclusive holders write.
              if (shape.mode !== 'exclusive') continue;
              try {
                const ok = (await fence.eval(
                  FENCE_SCRIPT,
                  3,
                  `fence:high:${key}`,
                  `fence:log:${key}`,
                  'fence:seq',
                  token.toString().padStart(20, '0'),
                  a.id,
                )) as number;
                record('write', { key, token, phase, ok: ok === 1 });
              } catch (e) {
                record('write', { key, token, phase, ok: null, error: String(e) });
              }
            }
            if (lease.signal.aborted) return null;
            try {
              return await lease.check();
            } catch {
              return null;
            }
          };
          const [lostNow, endCheck] = await Promise.race([
            work().then((c): [boolean, boolean | null] => [false, c]),
            lease.lost.then((): [boolean, boolean | null] => [true, null]),
          ]);
          // A CHECK at the end that answered 0 is a loss the client must know of by now.
          const lost = lostNow || (endCheck === false && lease.isLost());
          const t = now();
          if (lost) record('lost', { key, token, reason: lease.lostReason() ?? null }, t);
          record('end', { key, token, lost, check_end: endCheck }, t);
      };
      const options = viaWait ? { waitMs: WAIT_MS } : {};
      const r =
        shape.mode === 'shared'
          ? await locks.withSharedLock(name, body, options)
          : shape.mode === 'limit'
            ? await locks.withPermit(name, shape.limit, body, options)
            : await locks.withSpaceLock(name, body, options);
      if (isSkipped(r)) {
        const fields: Record<string, string | number | boolean | null> = {
          key,
          why: r.skipped,
          wait: viaWait,
          began: began.toString(),
        };
        if (r.skipped === 'not-acknowledged') {
          fields['acknowledged'] = r.acknowledged;
          fields['required'] = r.required;
        }
        if (r.skipped === 'timed-out') {
          // Nothing may be left held in this owner's name.
          try {
            // Any holder of a shared or counted lock counts.
            const info = await locks.info(name);
            fields['held_after'] = info !== null && info.holders.some((h) => h.owner.startsWith(`${owner}:`));
          } catch {
            // unknown
          }
        }
        record('skip', fields);
        if (r.skipped === 'lock-held') await sleep(2 + random() * 18);
      }
    } catch (e) {
      record('skip', { key, why: 'error', error: String(e), wait: viaWait });
      await sleep(50);
    }
  }
  await locks.close({ timeoutMs: 2_000 });
  redis.disconnect();
  fence.disconnect();
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
