/**
 * The fleet's Node-client member: loops on one lock until it has entered
 * `entries` times, marking entry and exit in the shared INCR/DECR guard.
 * Every other attempt waits on the server (waitMs), the rest do not.
 */
import { Redis } from 'ioredis';
import { isSkipped, SpaceLock } from '../src';
import { holdFor, parseFleetArgv } from './fleet-args';

async function main(): Promise<void> {
  const a = parseFleetArgv(process.argv.slice(2));
  const redis = new Redis(a.url);
  const guard = new Redis(a.url);
  const locks = new SpaceLock(redis, { ttlMs: a.ttlMs, keyPrefix: a.prefix });
  const deadline = performance.now() + a.deadlineS * 1_000;
  let entries = 0;
  let skipped = 0;
  let overlaps = 0;
  let lastToken = 0n;
  let staleTokens = 0;
  for (let attempt = 0; entries < a.entries; attempt++) {
    if (performance.now() > deadline) throw new Error(`deadline passed after ${entries} of ${a.entries} entries`);
    const hold = holdFor(a, entries + 1);
    const r = await locks.withSpaceLock(
      a.name,
      async (lease) => {
        const inside = await guard.incr(a.guard);
        if (inside > 1) await guard.incr(`${a.guard}:overlaps`);
        await new Promise((resolve) => setTimeout(resolve, hold));
        await guard.decr(a.guard);
        return { overlapped: inside > 1, token: lease.token ?? 0n };
      },
      attempt % 2 === 0 ? { waitMs: 20 } : {},
    );
    if (isSkipped(r)) {
      skipped++;
      await new Promise((resolve) => setTimeout(resolve, 0.5 + Math.random() * 2.5));
      continue;
    }
    entries++;
    if (r.overlapped) overlaps++;
    if (r.token <= lastToken) staleTokens++;
    lastToken = r.token;
  }
  await locks.close();
  redis.disconnect();
  guard.disconnect();
  console.log(JSON.stringify({ entries, skipped, overlaps, staleTokens, maxToken: lastToken.toString() }));
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
