#!/usr/bin/env node
// `make bench`, Node workloads: the Node client (clients/node) side by side
// with the existing Lua-based SpaceLockService (bench/node/existing-service,
// run unmodified through existing-service-loader.js), on one server with the
// module (BENCH_PORT).
//
//   * cycles: sequential withSpaceLock calls with an empty body on distinct
//     keys (both take two round trips: acquire + release): cycles/s, both in
//     one process in alternated blocks of 1 000, a ratio per pair of blocks.
//   * heartbeat: 10 000 leases held at once with a 3 s ttl: process CPU
//     (user + system) over whole ttls once all are held, and refreshes/s
//     counted by the server.
//
// The heartbeat measurements each run in a fresh child process, alternating
// existing service/client (order reversed every round). Prints
// `ROW\t<workload>\t<client>\t<existing>\t<ratio>\t<spread>` lines for bench/src/external.rs; ratio > 1 means the client is better.
// Environment: BENCH_PORT, QUICK, BENCH_NODE_ROUNDS, BENCH_NODE_CYCLES,
// BENCH_NODE_LEASES, BENCH_NODE_HOLD_S.
'use strict';
const { execFileSync } = require('node:child_process');

const port = Number(process.env.BENCH_PORT);
const quick = !!process.env.QUICK && process.env.QUICK !== '0';
const rounds = Number(process.env.BENCH_NODE_ROUNDS ?? (quick ? 1 : 3));
const cycles = Number(process.env.BENCH_NODE_CYCLES ?? (quick ? 5_000 : 20_000));
const leases = Number(process.env.BENCH_NODE_LEASES ?? 10_000);
const holdS = Number(process.env.BENCH_NODE_HOLD_S ?? (quick ? 3 : 9)); // whole seconds: whole heartbeat intervals
const TTL_MS = 3_000;

// ---- child side -----------------------------------------------------------

function impl(which, ttlMs) {
  const loader = require('./existing-service-loader.js');
  const redis = new loader.Redis(port);
  if (which === 'existing') {
    process.env.EXISTING_SERVICE_LOCK_TTL_MS = String(ttlMs);
    process.env.EXISTING_SERVICE_LOCK_PREFIX = 'bench:existing:';
    const svc = new loader.SpaceLockService(new loader.RedisService(redis));
    return { run: (k, fn) => svc.withSpaceLock(k, fn), close: async () => redis.disconnect(), redis };
  }
  const locks = new loader.client.SpaceLock(redis, { ttlMs, keyPrefix: 'bench:client:' });
  return {
    run: (k, fn) => locks.withSpaceLock(k, fn),
    close: async () => {
      await locks.close();
      redis.disconnect();
    },
    redis,
  };
}

// Both implementations in one process, in alternating blocks of cycles: on a
// shared box, load from elsewhere then hits both sides of each pair alike.
async function childCycles(blocks, perBlock) {
  const impls = { existing: impl('existing', 30_000), client: impl('client', 30_000) };
  const empty = async () => undefined;
  for (const l of Object.values(impls)) for (let i = 0; i < 2_000; i++) await l.run(`warm-${i}`, empty);
  const out = { existing: [], client: [], existingCpu: [], clientCpu: [] };
  let n = 0;
  for (let b = 0; b < blocks; b++) {
    for (const which of b % 2 === 0 ? ['existing', 'client'] : ['client', 'existing']) {
      const l = impls[which];
      const t0 = performance.now();
      const c0 = process.cpuUsage();
      for (let i = 0; i < perBlock; i++) {
        const r = await l.run(`c-${n++}`, empty);
        if (r !== undefined) throw new Error(`cycle skipped: ${JSON.stringify(r)}`);
      }
      const cpu = process.cpuUsage(c0);
      out[which].push(perBlock / ((performance.now() - t0) / 1_000));
      out[`${which}Cpu`].push((cpu.user + cpu.system) / perBlock);
    }
  }
  for (const l of Object.values(impls)) await l.close();
  return out;
}

async function refreshCalls(admin) {
  const stats = await admin.info('commandstats');
  const sum = (name) => Number(new RegExp(`cmdstat_${name}:calls=(\\d+)`).exec(stats)?.[1] ?? 0);
  return sum('spacelock\\.refresh') + sum('eval');
}

async function childHeartbeat(which, n, seconds) {
  const l = impl(which, TTL_MS);
  const loader = require('./existing-service-loader.js');
  const admin = new loader.Redis(port);
  let held = 0;
  let release;
  const gate = new Promise((r) => (release = r));
  const runs = [];
  for (let i = 0; i < n; i++) {
    runs.push(
      l.run(`h-${i}`, async () => {
        held++;
        await gate;
      }),
    );
  }
  while (held < n) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 1_000)); // past the acquire burst
  // The client refreshes in one batch per ttl/3, the existing service spread over time.
  // Start the window half an interval after a batch (found by watching the
  // server's counter jump; this process may notice it late), so a window of
  // whole intervals holds exactly one batch per interval, not one more or less.
  const interval = TTL_MS / 3;
  const watchUntil = performance.now() + interval * 1.2;
  for (let last = await refreshCalls(admin); performance.now() < watchUntil; ) {
    await new Promise((r) => setTimeout(r, 5));
    const now = await refreshCalls(admin);
    if (now - last >= n / 10) {
      await new Promise((r) => setTimeout(r, interval / 2));
      break;
    }
    last = now;
  }
  const calls0 = await refreshCalls(admin);
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, seconds * 1_000));
  const cpu = process.cpuUsage(c0);
  const wall = performance.now() - t0;
  const calls = (await refreshCalls(admin)) - calls0;
  release();
  const results = await Promise.all(runs);
  if (results.some((r) => r !== undefined)) throw new Error('some leases were skipped');
  await l.close();
  admin.disconnect();
  return { cpuPct: ((cpu.user + cpu.system) / 1_000 / wall) * 100, refreshesPerS: (calls / wall) * 1_000 };
}

// ---- parent side ----------------------------------------------------------

function child(args) {
  const out = execFileSync(process.execPath, [__filename, 'child', ...args.map(String)], {
    env: process.env,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    timeout: 300_000,
  });
  return JSON.parse(out.trim().split('\n').pop());
}

const median = (v) => {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const fmt = (x) => (x >= 10_000 ? x.toFixed(0) : x >= 100 ? x.toFixed(1) : x.toFixed(3));

function row(workload, client, existing, better) {
  const ratios = client.map((c, i) => (better === 'higher' ? c / existing[i] : existing[i] / c));
  const spread = `${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)} (n=${ratios.length})`;
  console.log(['ROW', workload, fmt(median(client)), fmt(median(existing)), median(ratios).toFixed(4), spread].join('\t'));
}

async function parent() {
  const blocks = Math.max(2, Math.round(cycles / 1_000));
  process.stderr.write(`node bench: cycles, ${blocks} alternated blocks of 1000 per side\n`);
  const cyc = child(['cycles', blocks, 1_000]);
  const hb = { client: [], existing: [], clientRps: [], existingRps: [] };
  for (let r = 0; r < rounds; r++) {
    const order = r % 2 === 0 ? ['existing', 'client'] : ['client', 'existing'];
    for (const which of order) {
      process.stderr.write(`node bench round ${r + 1}/${rounds}: ${which} heartbeat, ${leases} leases\n`);
      const h = child(['heartbeat', which, leases, holdS]);
      hb[which].push(h.cpuPct);
      hb[`${which}Rps`].push(h.refreshesPerS);
    }
  }
  const k = leases % 1000 === 0 ? `${leases / 1000} k` : String(leases);
  const label = `Node client vs the existing SpaceLockService (ioredis) · sequential withSpaceLock, empty body, distinct keys, ${blocks} alternated blocks of 1 k`;
  row(`${label} · cycles/s`, cyc.client, cyc.existing, 'higher');
  row(`${label} · client process CPU µs/cycle`, cyc.clientCpu, cyc.existingCpu, 'lower');
  row(
    `Node client vs the existing SpaceLockService (ioredis) · ${k} leases held, ttl 3 s, ${holdS} s window (refreshes/s: ${fmt(median(hb.clientRps))} vs ${fmt(median(hb.existingRps))}) · process CPU % of a core`,
    hb.client,
    hb.existing,
    'lower',
  );
}

if (process.argv[2] === 'child') {
  const [what, which, ...rest] = process.argv.slice(3);
  const job = what === 'cycles' ? childCycles(Number(which), Number(rest[0])) : childHeartbeat(which, Number(rest[0]), Number(rest[1]));
  job.then(
    (r) => {
      console.log(JSON.stringify(r));
      process.exit(0);
    },
    (e) => {
      console.error(e);
      process.exit(1);
    },
  );
} else {
  if (!port) {
    console.error('bench/node/run.js: BENCH_PORT is not set');
    process.exit(64);
  }
  parent().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
