/**
 * A mixed fleet on one lock: the Node client, the Rust client
 * (clients/rust/examples/fleet_worker.rs) and the existing Lua-based
 * service's own code (SET NX PX + its Lua), each in its own process. Every body marks entry and exit in
 * a shared INCR/DECR guard; an INCR that returns more than 1 is an overlap.
 * Some bodies outlive the ttl, so every member's heartbeat is exercised.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { fleetArgv, type FleetArgs } from './fleet-args';
import { missingModule, REPO, withServer } from './harness';

function fleetWorkerBinary(): string {
  if (process.env.SPACELOCK_FLEET_WORKER) return process.env.SPACELOCK_FLEET_WORKER;
  const target = process.env.CARGO_TARGET_DIR ?? path.join(REPO, 'target');
  return path.join(target, 'release/examples/fleet_worker');
}

function run(cmd: string, args: string[], timeoutMs: number): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
}

describe('mixed fleet', () => {
  const fx = withServer('fleet:lock:');

  it('Node client, Rust client and the existing service on one key: 0 overlaps', async (t: TestContext) => {
    const reason =
      missingModule() ??
      (existsSync(fleetWorkerBinary())
        ? undefined
        : `Rust fleet worker not built: ${fleetWorkerBinary()} (cargo build --release -p spacelock-client --example fleet_worker)`);
    if (reason) {
      t.skip(reason);
      return;
    }
    const args: FleetArgs = {
      url: `redis://127.0.0.1:${fx.server.port}/`,
      prefix: 'fleet:lock:',
      name: 'space',
      entries: 25,
      ttlMs: 400,
      guard: 'fleet:guard',
      holdMs: 2,
      longEvery: 10,
      deadlineS: 60,
    };
    const argv = fleetArgv(args);
    const build = path.join(__dirname);
    const [node, rust, existing] = await Promise.all([
      run(process.execPath, [path.join(build, 'fleet-node-worker.js'), ...argv], 90_000),
      run(fleetWorkerBinary(), argv, 90_000),
      run(process.execPath, [path.join(build, 'fleet-existing-service-worker.js'), ...argv], 90_000),
    ]);
    for (const [who, r] of Object.entries({ node, rust, existing })) {
      assert.equal(r.code, 0, `${who} worker failed:\n${r.out}\n${r.err}`);
    }
    const nodeResult = JSON.parse(node.out.trim()) as { entries: number; overlaps: number; staleTokens: number };
    const existingResult = JSON.parse(existing.out.trim()) as { entries: number; overlaps: number };
    const rustResult = Object.fromEntries(
      rust.out
        .trim()
        .split(/\s+/)
        .map((kv) => kv.split('=') as [string, string]),
    );
    assert.equal(nodeResult.entries, args.entries);
    assert.equal(existingResult.entries, args.entries);
    assert.equal(Number(rustResult.entries), args.entries);
    assert.equal(nodeResult.overlaps, 0, 'node saw an overlap');
    assert.equal(existingResult.overlaps, 0, 'the existing service saw an overlap');
    assert.equal(Number(rustResult.overlaps), 0, 'rust saw an overlap');
    assert.equal(await fx.admin.get('fleet:guard:overlaps'), null, 'no overlap recorded in the guard');
    assert.equal(await fx.admin.get('fleet:guard'), '0', 'every entry was matched by an exit');
    assert.equal(nodeResult.staleTokens, 0, "the Node client's tokens only increased");
    assert.equal(await fx.admin.exists('fleet:lock:space'), 0, 'nobody left the lock behind');
  });
});
