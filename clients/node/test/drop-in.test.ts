/**
 * SpaceLockDropIn: the existing service's `withSpaceLock(spaceId, fn)` and
 * its result type, `{ skipped: 'lock-held' | 'in-progress' }`, with the
 * answers the existing service gives in the same situations.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SpaceLockDropIn, type ExistingSkipped } from '../src';
import { holdLock, recordingLogger, skipped, sleep, waitFor, withServer } from './harness';

/** The existing service's signature, spelled as it spells it. */
type ExistingWithSpaceLock = <T>(spaceId: string, fn: () => Promise<T>) => Promise<T | { skipped: 'lock-held' | 'in-progress' }>;

/** Compile-time: `A` and `B` are the same type. */
type Same<A, B> = (<X>() => X extends A ? 1 : 2) extends <X>() => X extends B ? 1 : 2 ? true : false;
const exactlyTheExistingType: Same<ExistingSkipped, { skipped: 'lock-held' | 'in-progress' }> = true;

/** A caller typed against the existing service: an exhaustive switch over its skip names. */
function describeResult(r: string | ExistingSkipped): string {
  if (typeof r === 'string') return `ran: ${r}`;
  switch (r.skipped) {
    case 'lock-held':
      return 'another replica holds it';
    case 'in-progress':
      return 'this instance is mid-cycle';
    default: {
      const unreachable: never = r.skipped; // fails to compile if a name is added
      return unreachable;
    }
  }
}

describe('SpaceLockDropIn (the existing service’s result type)', () => {
  const fx = withServer('git-sync:lock:');
  const make = (): SpaceLockDropIn => new SpaceLockDropIn(fx.track(fx.make({ logger: recordingLogger() })));

  it('type-checks where the existing service did: its signature, its result type, an exhaustive switch', async (t) => {
    if (skipped(t)) return;
    assert.equal(exactlyTheExistingType, true);
    const dropIn = make();
    const existing: ExistingWithSpaceLock = (spaceId, fn) => dropIn.withSpaceLock(spaceId, fn);
    assert.equal(describeResult(await existing('space-a', async () => 'synced')), 'ran: synced');
    // Called directly, fn's value type comes through unwrapped.
    const direct = await dropIn.withSpaceLock('space-a', async () => 'synced');
    const inferred: Same<typeof direct, string | ExistingSkipped> = true;
    assert.equal(describeResult(direct), 'ran: synced');
    assert.equal(inferred, true);
  });

  it("answers as the existing service: fn's value, 'lock-held' for another replica, 'in-progress' inside a body", async (t) => {
    if (skipped(t)) return;
    const dropIn = make();
    assert.equal(await dropIn.withSpaceLock('space-1', async () => 'v'), 'v');
    await fx.admin.set('git-sync:lock:space-2', 'other-replica', 'PX', 30_000, 'NX');
    assert.deepEqual(await dropIn.withSpaceLock('space-2', async () => 'v'), { skipped: 'lock-held' });
    const nested = await dropIn.withSpaceLock('space-3', async () => dropIn.withSpaceLock('space-3', async () => 'v'));
    assert.deepEqual(nested, { skipped: 'in-progress' });
    assert.equal(describeResult(nested as ExistingSkipped), 'this instance is mid-cycle');
  });

  it("waitMs that runs out against another replica's lock answers 'lock-held' (the client's timed-out)", async (t) => {
    if (skipped(t)) return;
    const dropIn = make();
    await fx.admin.set('git-sync:lock:space-4', 'other-replica', 'PX', 30_000, 'NX');
    const start = performance.now();
    assert.deepEqual(await dropIn.withSpaceLock('space-4', async () => 'v', { waitMs: 300 }), { skipped: 'lock-held' });
    assert.ok(performance.now() - start >= 290);
  });

  it('50 concurrent calls without waitMs: 1 runs, 49 lock-held, as with the existing service', async (t) => {
    if (skipped(t)) return;
    const dropIn = make();
    const results = await Promise.all(
      Array.from({ length: 50 }, () =>
        dropIn.withSpaceLock('space-5', async () => {
          await sleep(50);
          return 'ran';
        }),
      ),
    );
    assert.equal(results.filter((r) => r === 'ran').length, 1);
    assert.equal(results.filter((r) => typeof r === 'object' && r.skipped === 'lock-held').length, 49);
  });

  it('a push (waitMs 5 s) during a local sync waits and runs after it; one that outlasts its wait answers in-progress', async (t) => {
    if (skipped(t)) return;
    const dropIn = make();
    const order: string[] = [];
    let syncing = false;
    const sync = dropIn.withSpaceLock('space-6', async () => {
      syncing = true;
      await sleep(300);
      order.push('sync');
    });
    await waitFor('the sync', () => syncing);
    assert.equal(
      await dropIn.withSpaceLock(
        'space-6',
        async () => {
          order.push('push');
          return 'pushed';
        },
        { waitMs: 5_000 },
      ),
      'pushed',
    );
    await sync;
    assert.deepEqual(order, ['sync', 'push']);
    // A sync that outlasts the push's wait: what the existing push handler's
    // last retry saw, this instance mid-cycle.
    const hold = await holdLock(dropIn.locks, 'space-6');
    assert.deepEqual(await dropIn.withSpaceLock('space-6', async () => 'v', { waitMs: 200 }), { skipped: 'in-progress' });
    hold.release();
    await hold.done;
  });

  it("a server stopped (SIGSTOP) during a push's wait: 'lock-held' at the deadline, never a CommandTimeoutError", async (t) => {
    if (skipped(t)) return;
    const dropIn = new SpaceLockDropIn(fx.server.client(), { keyPrefix: 'git-sync:lock:', waitGraceMs: 300, logger: recordingLogger() });
    fx.track(dropIn.locks);
    const other = fx.make();
    const hold = await holdLock(other, 'space-7');
    let r: unknown;
    fx.server.suspend();
    try {
      r = await dropIn.withSpaceLock('space-7', async () => 'v', { waitMs: 400 }).catch((e: unknown) => e);
    } finally {
      fx.server.resume();
    }
    assert.deepEqual(r, { skipped: 'lock-held' });
    hold.release();
    await hold.done;
    await waitFor('nothing left held', async () => (await fx.admin.exists('git-sync:lock:space-7')) === 0, 5_000);
  });
});
