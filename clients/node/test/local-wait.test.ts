/**
 * waitMs covers a body already running in this process: calls for a name
 * this SpaceLock is inside wait locally, in arrival order, within the same
 * deadline as the server-side wait.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isSkipped } from '../src';
import { skipped, sleep, waitFor, withServer } from './harness';

describe('waitMs in this process', () => {
  const fx = withServer('local:');

  it('a second call with waitMs during a running body waits, then runs after it', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    const events: string[] = [];
    let started = false;
    const first = locks.withSpaceLock('sync', async () => {
      started = true;
      events.push('sync start');
      await sleep(300);
      events.push('sync end');
      return 'synced';
    });
    await waitFor('the sync body', () => started);
    const start = performance.now();
    const push = await locks.withSpaceLock(
      'sync',
      async (lease) => {
        events.push('push');
        return lease.token;
      },
      { waitMs: 5_000 },
    );
    assert.equal(typeof push, 'bigint', 'the push ran (the existing push handler retried for 5 s)');
    assert.ok(performance.now() - start >= 250, 'it waited for the sync');
    assert.equal(await first, 'synced');
    assert.deepEqual(events, ['sync start', 'sync end', 'push']);
    assert.equal(locks.isRunning('sync'), false);
    assert.equal(await fx.admin.exists('local:sync'), 0);
  });

  it('without waitMs: in-progress at once, as before', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    const r = await locks.withSpaceLock('nowait', async () => {
      const start = performance.now();
      const inner = await locks.withSpaceLock('nowait', async () => 'nested');
      assert.ok(performance.now() - start < 50);
      return inner;
    });
    assert.deepEqual(r, { skipped: 'in-progress' });
  });

  it('50 concurrent calls with waitMs: each gets the lock in arrival order or times out at the deadline', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    const waitMs = 800;
    const bodyMs = 40;
    let inside = 0;
    let overlaps = 0;
    const ran: number[] = [];
    const start = performance.now();
    const calls = Array.from({ length: 50 }, (_, i) =>
      locks
        .withSpaceLock(
          'fifty',
          async () => {
            if (++inside > 1) overlaps++;
            ran.push(i);
            const startedAt = performance.now() - start;
            await sleep(bodyMs);
            inside--;
            return { startedAt };
          },
          { waitMs },
        )
        .then((r) => ({ r, at: performance.now() - start })),
    );
    const results = await Promise.all(calls);
    assert.equal(overlaps, 0, 'no two bodies at once');
    assert.deepEqual(ran, [...ran].sort((a, b) => a - b), `ran in arrival order: ${ran.join(',')}`);
    assert.deepEqual(ran, ran.map((_, i) => i), 'the first ones in arrival order, none skipped before a later one ran');
    assert.ok(ran.length >= 5 && ran.length < 50, `${ran.length} ran within ${waitMs} ms of ${bodyMs} ms bodies`);
    for (const [i, { r, at }] of results.entries()) {
      if (isSkipped(r)) {
        assert.equal(r.skipped, 'timed-out', `call ${i}`);
        assert.ok(at >= waitMs - 5 && at < waitMs + 150, `call ${i} timed out after ${at.toFixed(0)} ms`);
      } else {
        assert.ok(r.startedAt < waitMs + 100, `call ${i}'s body started ${r.startedAt.toFixed(0)} ms in`);
      }
    }
    assert.equal(locks.isRunning('fifty'), false);
    assert.equal(await fx.admin.exists('local:fifty'), 0);
  });

  it('the local wait and the server wait share one deadline', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make({ waitGraceMs: 200 });
    let started = false;
    const first = locks.withSpaceLock('shared', async () => {
      started = true;
      await sleep(300);
      // Another replica takes the lock as this body ends.
      await fx.admin.del('local:shared');
      await fx.admin.set('local:shared', 'other-replica', 'PX', 30_000);
    });
    await waitFor('the first body', () => started);
    const start = performance.now();
    const r = await locks.withSpaceLock('shared', async () => 'ran', { waitMs: 700 });
    const took = performance.now() - start;
    assert.deepEqual(r, { skipped: 'timed-out' });
    assert.ok(took >= 690 && took < 700 + 150, `answered after ${took.toFixed(0)} ms: one 700 ms deadline for both waits`);
    await first;
    await fx.admin.del('local:shared');
  });

  it('abort while waiting locally: rejects with the reason at once, and the queue moves on in order', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let holding = false;
    const holder = locks.withSpaceLock('abort', async () => {
      holding = true;
      await gate;
    });
    await waitFor('the holder', () => holding);
    const order: string[] = [];
    const ac = new AbortController();
    const a = locks.withSpaceLock('abort', async () => void order.push('a'), { waitMs: 5_000, signal: ac.signal });
    const b = locks.withSpaceLock('abort', async () => void order.push('b'), { waitMs: 5_000 });
    await sleep(50);
    const abortedAt = performance.now();
    ac.abort(new Error('caller gave up'));
    await assert.rejects(a, /caller gave up/);
    assert.ok(performance.now() - abortedAt < 50, 'rejected at the abort');
    release();
    await Promise.all([holder, b]);
    assert.deepEqual(order, ['b']);
    assert.equal(locks.isRunning('abort'), false);
  });
});
