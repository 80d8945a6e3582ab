/**
 * The lease handed to fn: exact bigint tokens, keep-alive, the lost signal
 * (external DEL, a stalled event loop), release on every path, and the
 * in-process mutex under a burst of concurrent calls.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { LeaseLostError, type Lease } from '../src';
import { commandCalls, recordingLogger, skipped, sleep, stallEventLoop, waitFor, withServer } from './harness';

describe('lease', () => {
  const fx = withServer('lease:');

  it('50 simultaneous calls on one space: exactly 1 runs, 49 get in-progress', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    let runs = 0;
    const results = await Promise.all(
      Array.from({ length: 50 }, () =>
        locks.withSpaceLock('burst', async () => {
          runs++;
          await sleep(50);
          return 'ran';
        }),
      ),
    );
    assert.equal(runs, 1);
    assert.equal(results.filter((r) => r === 'ran').length, 1);
    assert.equal(results.filter((r) => typeof r === 'object' && r.skipped === 'in-progress').length, 49);
  });

  it('tokens are exact bigints far above 2^53, and increase on every grant', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    const fence = (await fx.admin.call('SPACELOCK.FENCEKEY', 'lease:big')) as string;
    // Tokens of the module's wall-clock terms are ms × 1 000 000 ≈ 1.8e18,
    // far above 2^53. A fence above any term floor decides the next grant
    // (fence + 1) whichever token mode the module runs, and its last digits
    // are ones a double cannot hold.
    const floor = 5_000_000_000_123_456_789n;
    await fx.admin.set(fence, floor.toString());
    const t1 = await locks.withSpaceLock('big', async (lease) => lease.token);
    const t2 = await locks.withSpaceLock('big', async (lease) => lease.token);
    assert.equal(typeof t1, 'bigint');
    assert.equal(t1, floor + 1n);
    assert.equal(t2, floor + 2n);
    assert.ok(Number(floor) > Number.MAX_SAFE_INTEGER);
    const info = await locks.withSpaceLock('big', async () => locks.info('big'));
    assert.ok(info !== null && 'token' in info);
    assert.equal(info.token, floor + 3n);
    assert.equal(await locks.info('big'), null, 'free again');
  });

  it('a 300 ms lease is kept alive for 1.5 s', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make({ ttlMs: 300 });
    const start = performance.now();
    let checks = 0;
    await locks.withSpaceLock('keepalive', async (lease) => {
      while (performance.now() - start < 1_500) {
        assert.equal(await fx.admin.get('lease:keepalive'), lease.owner);
        assert.equal(lease.isLost(), false);
        assert.equal(lease.signal.aborted, false);
        checks++;
        await sleep(50);
      }
    });
    assert.ok(checks >= 10, `checked ${checks} times`);
    assert.equal(await fx.admin.exists('lease:keepalive'), 0);
  });

  it('signal aborts within one ttl after an external DEL (reason: not-owner)', async (t) => {
    if (skipped(t)) return;
    const logger = recordingLogger();
    const locks = fx.make({ ttlMs: 300, logger });
    await locks.withSpaceLock('deleted', async (lease) => {
      await sleep(50);
      await fx.admin.del('lease:deleted');
      const deletedAt = performance.now();
      await new Promise((resolve) => lease.signal.addEventListener('abort', resolve, { once: true }));
      const after = performance.now() - deletedAt;
      assert.ok(after < 300, `aborted ${after.toFixed(0)} ms after the DEL`);
      assert.ok(lease.signal.reason instanceof LeaseLostError);
      assert.equal((lease.signal.reason as LeaseLostError).reason, 'not-owner');
      assert.equal(await lease.lost, 'not-owner');
      assert.equal(lease.isLost(), true);
      assert.equal(lease.lostReason(), 'not-owner');
    });
    assert.ok(logger.warns.some((w) => w.includes('lease lost on lease:deleted')), logger.warns.join('\n'));
  });

  it('200 leases lost at once (their keys deleted): each signal aborts, and the log says so in a line per heartbeat batch, not per lease', async (t) => {
    if (skipped(t)) return;
    const logger = recordingLogger();
    const locks = fx.make({ ttlMs: 300, logger });
    const names = Array.from({ length: 200 }, (_, i) => `mass-${i}`);
    let held = 0;
    let deleted!: () => void;
    const allDeleted = new Promise<void>((r) => (deleted = r));
    const runs = names.map((n) =>
      locks.withSpaceLock(n, async (lease) => {
        held++;
        await allDeleted;
        return lease.lost;
      }),
    );
    await waitFor('all 200 held', () => held === names.length);
    await fx.admin.del(...names.map((n) => `lease:${n}`));
    deleted();
    assert.deepEqual(new Set(await Promise.all(runs)), new Set(['not-owner']));
    // One line per heartbeat batch that found losses: normally one, a few
    // when a busy machine spread the 200 acquisitions over several ticks.
    // Never one line per lease.
    const lost = logger.warns.filter((w) => w.includes('lost'));
    const counted = lost.map((w) => {
      const many = /^spacelock: (\d+) leases lost \(lease:mass-\d+, .*\): the lock expired/.exec(w);
      if (many) return Number(many[1]);
      assert.match(w, /^spacelock: lease lost on lease:mass-\d+: the lock expired/);
      return 1;
    });
    assert.ok(lost.length <= 5, `${lost.length} warnings:\n${lost.slice(0, 5).join('\n')}`);
    assert.equal(counted.reduce((a, b) => a + b, 0), names.length, lost.join('\n'));
  });

  it('signal aborts within one ttl after the event loop stalls longer than the ttl (reason: expired)', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make({ ttlMs: 300 });
    await locks.withSpaceLock('stalled', async (lease) => {
      await sleep(20);
      stallEventLoop(450); // GC pause, CPU-bound work: no heartbeat can run
      const stallEnd = performance.now();
      // isLost() sees the deadline pass without waiting for the heartbeat.
      assert.equal(lease.isLost(), true);
      await new Promise((resolve) => {
        if (lease.signal.aborted) resolve(undefined);
        else lease.signal.addEventListener('abort', resolve, { once: true });
      });
      const after = performance.now() - stallEnd;
      assert.ok(after < 300, `aborted ${after.toFixed(0)} ms after the stall`);
      assert.equal((lease.signal.reason as LeaseLostError).reason, 'expired');
    });
  });

  it('the signal aborts on its own after a stall too, without anyone calling isLost()', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make({ ttlMs: 300 });
    await locks.withSpaceLock('stalled-2', async (lease) => {
      await sleep(20);
      stallEventLoop(450);
      const stallEnd = performance.now();
      const reason = await lease.lost;
      assert.equal(reason, 'expired');
      assert.ok(performance.now() - stallEnd < 300);
    });
  });

  it('releases when fn rejects after the caller aborts (release on abort)', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make({ ttlMs: 1_000 });
    const caller = new AbortController();
    let seen: Lease | undefined;
    const run = locks.withSpaceLock(
      'aborted',
      async (lease) => {
        seen = lease;
        await new Promise((_, reject) => lease.signal.addEventListener('abort', () => reject(lease.signal.reason)));
      },
      { signal: caller.signal },
    );
    await waitFor('fn to start', () => seen !== undefined);
    assert.equal(await fx.admin.exists('lease:aborted'), 1);
    caller.abort(new Error('client went away'));
    await assert.rejects(run, /client went away/);
    assert.equal(await fx.admin.exists('lease:aborted'), 0, 'released');
    assert.equal(seen?.isLost(), true, 'the lease has ended');
    assert.equal(seen?.lostReason(), 'released');
    assert.equal(locks.isRunning('aborted'), false);
  });

  it('a signal already aborted rejects before taking the lock', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    const ac = new AbortController();
    ac.abort(new Error('too late'));
    await assert.rejects(locks.withSpaceLock('pre-aborted', async () => 1, { signal: ac.signal }), /too late/);
    assert.equal(await fx.admin.exists('lease:pre-aborted'), 0);
  });

  it('after fn returns the lease has ended: signal aborted with reason released, lost resolved', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    const lease = await locks.withSpaceLock('ended', async (l) => l);
    assert.ok(typeof lease === 'object' && lease !== null && !('skipped' in lease));
    const l = lease as Lease;
    assert.equal(l.signal.aborted, true);
    assert.equal((l.signal.reason as LeaseLostError).reason, 'released');
    assert.equal(await l.lost, 'released');
    assert.equal(locks.activeLeases, 0, 'the heartbeat forgot it');
  });

  it('close() from inside a body: at its deadline the lease ends (released) and the key is gone', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make({ ttlMs: 3_000 });
    let closing: Promise<void> | undefined;
    const r = await locks.withSpaceLock('closed-under', async (lease) => {
      // close() waits for running bodies, this one included: not awaited here.
      closing = locks.close({ timeoutMs: 200 });
      const closedAt = performance.now();
      const reason = await lease.lost;
      const after = performance.now() - closedAt;
      assert.ok(after >= 190 && after < 600, `lost ${after.toFixed(0)} ms after close(), at its 200 ms deadline`);
      assert.equal(await fx.admin.exists('lease:closed-under'), 0, 'released by close()');
      return reason;
    });
    assert.equal(r, 'released');
    await closing;
    await assert.rejects(locks.withSpaceLock('closed-under', async () => 1), /closed/);
  });

  it('keeps many leases alive with one heartbeat', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make({ ttlMs: 300 });
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const leases: Lease[] = [];
    const runs = Array.from({ length: 200 }, (_, i) =>
      locks.withSpaceLock(`many-${i}`, async (lease) => {
        leases.push(lease);
        await gate;
        return lease.isLost();
      }),
    );
    await waitFor('200 leases', () => leases.length === 200);
    assert.equal(locks.activeLeases, 200);
    const start = performance.now();
    const before = await commandCalls(fx.admin, 'spacelock.refresh');
    // Eight refreshes per lease, one batch every ttl/3 (100 ms): past two ttls.
    await waitFor('8 refreshes per lease', async () => (await commandCalls(fx.admin, 'spacelock.refresh')) - before >= 200 * 8, 10_000);
    assert.ok(performance.now() - start >= 600, 'one batch every ttl/3, not faster');
    assert.equal(locks.activeLeases, 200);
    release();
    assert.deepEqual(new Set(await Promise.all(runs)), new Set([false]), 'none lost');
    assert.equal(locks.activeLeases, 0);
  });
});
