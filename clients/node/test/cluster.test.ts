/**
 * ioredis.Cluster: every command goes straight to the node that owns its key
 * (no MOVED), heartbeats and waits included.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Lease } from '../src';
import { commandCalls, holdLock, skipped, spacelockStat, waitFor, withCluster } from './harness';

describe('ioredis.Cluster', () => {
  const fx = withCluster('cl:', 3);
  const movedErrors = async (): Promise<number> => {
    let total = 0;
    for (const node of fx.nodeAdmins) {
      const info = await node.info('errorstats');
      total += Number(/errorstat_MOVED:count=(\d+)/.exec(info)?.[1] ?? 0);
    }
    return total;
  };

  it('locks keys on every node, keeps them alive, and never gets MOVED', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make({ ttlMs: 300 });
    const names = Array.from({ length: 30 }, (_, i) => `space-${i}`);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const leases: Lease[] = [];
    const runs = names.map((n) =>
      locks.withSpaceLock(n, async (lease) => {
        leases.push(lease);
        await gate;
        return lease.isLost();
      }),
    );
    await waitFor('30 leases', () => leases.length === 30);
    const start = performance.now();
    const refreshes = async (): Promise<number[]> => Promise.all(fx.nodeAdmins.map((s) => commandCalls(s, 'spacelock.refresh')));
    const before = await refreshes();
    // Eight refreshes per lease, one batch every ttl/3 (100 ms), on every node:
    // past two ttls, only the heartbeat keeps them.
    await waitFor(
      '8 refreshes per lease',
      async () => {
        const now = await refreshes();
        return now.every((c, i) => c > before[i]!) && now.reduce((a, c) => a + c, 0) - before.reduce((a, c) => a + c, 0) >= 30 * 8;
      },
      10_000,
    );
    assert.ok(performance.now() - start >= 600, 'one batch every ttl/3, not faster');
    for (const lease of leases) {
      assert.equal(typeof lease.token, 'bigint');
      assert.equal(await fx.admin.get(lease.key), lease.owner, `${lease.key} still held`);
    }
    release();
    assert.deepEqual(new Set(await Promise.all(runs)), new Set([false]));
    for (const n of names) assert.equal(await fx.admin.exists(`cl:${n}`), 0, `cl:${n} released`);
    const perNode = await refreshes();
    assert.ok(perNode.every((c) => c > 0), `refreshes on every node: ${perNode.join(', ')}`);
    assert.equal(await movedErrors(), 0, 'every command went to the right node');
  });

  it('in-progress, lock-held and exact tokens above 2^53', async (t) => {
    if (skipped(t)) return;
    const a = fx.make();
    const b = fx.make();
    const fence = (await fx.admin.call('SPACELOCK.FENCEKEY', 'cl:big')) as string;
    await fx.admin.set(fence, '5000000000123456789'); // above any term floor, not representable as a double
    await a.withSpaceLock('big', async (lease) => {
      assert.equal(lease.token, 5000000000123456790n);
      assert.deepEqual(await a.withSpaceLock('big', async () => 1), { skipped: 'in-progress' });
      assert.deepEqual(await b.withSpaceLock('big', async () => 1), { skipped: 'lock-held' });
    });
  });

  it('waitMs hands the lock over through the owning node', async (t) => {
    if (skipped(t)) return;
    const holder = fx.make();
    const waiter = fx.make();
    const hold = await holdLock(holder, 'handoff');
    const moved = await movedErrors();
    const w = waiter.withSpaceLock('handoff', async (lease) => lease.token, { waitMs: 5_000 });
    await waitFor('the waiter queued', async () => {
      const counts = await Promise.all(fx.nodeAdmins.map((s) => spacelockStat(s, 'waiting_clients')));
      return counts.some((c) => c === 1);
    });
    hold.release();
    await hold.done;
    assert.equal(typeof (await w), 'bigint');
    assert.equal(await movedErrors(), moved, 'no MOVED');
  });
});
