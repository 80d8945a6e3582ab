/**
 * The fleet's member running the existing Lua-based SpaceLockService itself
 * (bench/node/existing-service, copied verbatim, run through
 * bench/node/existing-service-loader.js), looping on one lock with its exact
 * algorithm: SET NX PX, a setInterval Lua refresh, Lua release.
 */
import path from 'node:path';
import { holdFor, parseFleetArgv } from './fleet-args';
import { REPO } from './harness';

interface ExistingService {
  withSpaceLock<T>(spaceId: string, fn: () => Promise<T>): Promise<T | { skipped: 'lock-held' | 'in-progress' }>;
}
interface ExistingServiceLoader {
  Redis: new (url: string) => {
    incr(k: string): Promise<number>;
    decr(k: string): Promise<number>;
    disconnect(): void;
  };
  RedisService: new (redis: unknown) => unknown;
  SpaceLockService: new (svc: unknown) => ExistingService;
}

async function main(): Promise<void> {
  const a = parseFleetArgv(process.argv.slice(2));
  // The existing service reads its prefix and ttl from its constants module at load.
  process.env.EXISTING_SERVICE_LOCK_PREFIX = a.prefix;
  process.env.EXISTING_SERVICE_LOCK_TTL_MS = String(a.ttlMs);
  const loader = require(path.join(REPO, 'bench/node/existing-service-loader.js')) as ExistingServiceLoader;
  const redis = new loader.Redis(a.url);
  const guard = new loader.Redis(a.url);
  const service = new loader.SpaceLockService(new loader.RedisService(redis));
  const deadline = performance.now() + a.deadlineS * 1_000;
  let entries = 0;
  let skipped = 0;
  let overlaps = 0;
  while (entries < a.entries) {
    if (performance.now() > deadline) throw new Error(`deadline passed after ${entries} of ${a.entries} entries`);
    const hold = holdFor(a, entries + 1);
    const r = await service.withSpaceLock(a.name, async () => {
      const inside = await guard.incr(a.guard);
      if (inside > 1) await guard.incr(`${a.guard}:overlaps`);
      await new Promise((resolve) => setTimeout(resolve, hold));
      await guard.decr(a.guard);
      return inside > 1;
    });
    if (typeof r === 'object') {
      skipped++;
      await new Promise((resolve) => setTimeout(resolve, 0.5 + Math.random() * 2.5));
      continue;
    }
    entries++;
    if (r) overlaps++;
  }
  redis.disconnect();
  guard.disconnect();
  console.log(JSON.stringify({ entries, skipped, overlaps }));
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
