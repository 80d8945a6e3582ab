/** Arguments shared by the fleet's Node workers (see fleet.test.ts). */
export interface FleetArgs {
  url: string;
  prefix: string;
  name: string;
  entries: number;
  ttlMs: number;
  guard: string;
  holdMs: number;
  longEvery: number;
  deadlineS: number;
}

export function fleetArgv(a: FleetArgs): string[] {
  return [a.url, a.prefix, a.name, a.entries, a.ttlMs, a.guard, a.holdMs, a.longEvery, a.deadlineS].map(String);
}

export function parseFleetArgv(argv: string[]): FleetArgs {
  const [url, prefix, name, entries, ttlMs, guard, holdMs, longEvery, deadlineS] = argv;
  if (!url || !prefix || !name || !guard) throw new Error('usage: <url> <prefix> <name> <entries> <ttl-ms> <guard> <hold-ms> <long-every> <deadline-s>');
  return {
    url,
    prefix,
    name,
    guard,
    entries: Number(entries),
    ttlMs: Number(ttlMs),
    holdMs: Number(holdMs ?? 2),
    longEvery: Number(longEvery ?? 10),
    deadlineS: Number(deadlineS ?? 60),
  };
}

/** How long the n-th entry holds the lock: every `longEvery`-th outlives the ttl. */
export function holdFor(a: FleetArgs, n: number): number {
  return n % a.longEvery === 0 ? Math.round(a.ttlMs * 1.5) : a.holdMs;
}
