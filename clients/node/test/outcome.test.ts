/**
 * A lease lost while the body ran is visible afterwards, as in the Rust
 * client: in `withSpaceLockOutcome`'s result (`lost`), and on the lease the
 * body kept (`lostReason()`), while `withSpaceLock` keeps the existing
 * service's result shape.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isSkipped, type Lease, type NotAcknowledged, type Outcome, type Skipped } from '../src';
import { holdLock, skipped, sleep, stallEventLoop, withServer } from './harness';

describe('outcome', () => {
  const fx = withServer('outcome:');

  it('a body that held its lease to the end: { value, token, lost: undefined }; the kept lease says released', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make({ ttlMs: 300 });
    let kept: Lease | undefined;
    const o: Outcome<string> = await locks.withSpaceLockOutcome('held', async (lease) => {
      kept = lease;
      await sleep(450); // longer than a ttl: the heartbeat keeps it
      return 'synced';
    });
    assert.ok(!isSkipped(o));
    assert.equal(o.value, 'synced');
    assert.equal(o.lost, undefined);
    assert.equal(typeof o.token, 'bigint');
    assert.equal(o.token, kept!.token);
    assert.equal(kept!.lostReason(), 'released');
    assert.equal(await fx.admin.exists('outcome:held'), 0);
  });

  it('a body that outlives its lease (the lock deleted on the server while it sleeps): lost is not-owner, in the result and on the lease', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make({ ttlMs: 300 });
    let kept: Lease | undefined;
    const o = await locks.withSpaceLockOutcome('deleted', async (lease) => {
      kept = lease;
      await fx.admin.del('outcome:deleted');
      await sleep(500); // the next refresh answers 0 meanwhile
      return 'late';
    });
    assert.ok(!isSkipped(o));
    assert.deepEqual(o, { value: 'late', token: kept!.token, lost: 'not-owner' });
    assert.equal(kept!.lostReason(), 'not-owner', 'the first reason stays after the release');
  });

  it('the ttl shortened on the server while the body sleeps: lost is not-owner', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make({ ttlMs: 600 });
    const o = await locks.withSpaceLockOutcome('shortened', async () => {
      await fx.admin.pexpire('outcome:shortened', 20);
      await sleep(700);
      return 1;
    });
    assert.ok(!isSkipped(o));
    assert.equal(o.lost, 'not-owner');
    assert.equal(o.value, 1);
  });

  it('a body that blocks the event loop past its ttl: lost is expired, also on a lease kept from withSpaceLock', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make({ ttlMs: 300 });
    const o = await locks.withSpaceLockOutcome('stalled', async () => {
      stallEventLoop(400); // the heartbeat never gets to run
      return 'stalled';
    });
    assert.ok(!isSkipped(o));
    assert.equal(o.lost, 'expired');
    // The same through withSpaceLock: the release saw the deadline had passed.
    const lease = await locks.withSpaceLock('stalled', async (l) => {
      stallEventLoop(400);
      return l;
    });
    assert.ok(!isSkipped(lease));
    assert.equal(lease.lostReason(), 'expired');
  });

  it('skipped: { skipped } and fn not called; a value shaped like a sentinel still comes back as ran', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    const other = fx.make();
    const holder = await holdLock(other, 'busy');
    let calls = 0;
    const o = await locks.withSpaceLockOutcome('busy', () => {
      calls++;
      return 'x';
    });
    assert.deepEqual(o, { skipped: 'lock-held' });
    assert.ok(isSkipped(o));
    const waited = await locks.withSpaceLockOutcome('busy', () => calls++, { waitMs: 100 });
    assert.deepEqual(waited, { skipped: 'timed-out' });
    assert.equal(calls, 0);
    holder.release();
    await holder.done;
    const sentinelShaped = await locks.withSpaceLockOutcome('busy', (): Skipped => ({ skipped: 'lock-held' }));
    assert.ok(!isSkipped(sentinelShaped));
    assert.deepEqual(sentinelShaped.value, { skipped: 'lock-held' });
  });

  it('fn throws: the call rejects with its error and the lock is released', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    const boom = new Error('boom');
    await assert.rejects(
      locks.withSpaceLockOutcome('throws', () => {
        throw boom;
      }),
      (err) => err === boom,
    );
    assert.equal(await fx.admin.exists('outcome:throws'), 0);
    assert.equal(locks.isRunning('throws'), false);
  });

  it('withSpaceLock keeps the existing service\'s result shape, plus not-acknowledged (replicas)', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    // Typed as a caller of the existing service types it, plus the skip that
    // only the replicas option produces: this compiles. (SpaceLockDropIn
    // keeps the existing type exactly.)
    const r: string | { skipped: 'in-progress' | 'lock-held' } | NotAcknowledged = await locks.withSpaceLock(
      'shape',
      async () => 'v',
    );
    assert.equal(r, 'v');
  });
});
