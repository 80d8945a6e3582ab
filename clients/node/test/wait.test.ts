/**
 * waitMs: SPACELOCK.ACQUIRE … WAIT on pooled dedicated connections. FIFO
 * order, timeouts, a lease after a long wait, aborts, a stalled server, and
 * never a lock left behind.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CommandTimeoutError, type LeaseLostError } from '../src';
import { holdLock, skipped, sleep, spacelockStat, waitFor, withServer } from './harness';

describe('waitMs', () => {
  const fx = withServer('wait:');
  const waiting = (): Promise<number> => spacelockStat(fx.admin, 'waiting_clients');

  it('waiters are served in FIFO order, each through the server queue', async (t) => {
    if (skipped(t)) return;
    const holder = fx.make();
    const hold = await holdLock(holder, 'fifo');
    const order: number[] = [];
    const tokens: bigint[] = [];
    const runs: Array<Promise<unknown>> = [];
    const base = await waiting();
    for (let i = 0; i < 5; i++) {
      const w = fx.make();
      runs.push(
        w.withSpaceLock(
          'fifo',
          async (lease) => {
            order.push(i);
            tokens.push(lease.token ?? -1n);
            await sleep(5);
          },
          { waitMs: 10_000 },
        ),
      );
      // Queue them one at a time, so the queue order is known.
      await waitFor(`waiter ${i} queued`, async () => (await waiting()) === base + i + 1);
    }
    const handoffs = await spacelockStat(fx.admin, 'handoffs');
    hold.release();
    await Promise.all([hold.done, ...runs]);
    assert.deepEqual(order, [0, 1, 2, 3, 4]);
    for (let i = 1; i < tokens.length; i++) assert.ok(tokens[i]! > tokens[i - 1]!, 'tokens increase');
    assert.equal(await spacelockStat(fx.admin, 'handoffs'), handoffs + 5, 'every waiter got a server handoff');
  });

  it("times out with { skipped: 'timed-out' } near waitMs, leaving the holder's lock alone", async (t) => {
    if (skipped(t)) return;
    await fx.admin.set('wait:timeout', 'other-replica', 'PX', 30_000);
    const locks = fx.make();
    const start = performance.now();
    const r = await locks.withSpaceLock('timeout', async () => 'ran', { waitMs: 300 });
    const took = performance.now() - start;
    assert.deepEqual(r, { skipped: 'timed-out' });
    assert.ok(took >= 290 && took < 300 + 2_000, `took ${took.toFixed(0)} ms`);
    assert.equal(await fx.admin.get('wait:timeout'), 'other-replica');
    assert.equal(await waiting(), 0);
  });

  it('a free lock is granted at once with waitMs', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    const r = await locks.withSpaceLock('free', async (lease) => lease.token, { waitMs: 1_000 });
    assert.equal(typeof r, 'bigint');
  });

  it('waitMs 0 does not wait: lock-held', async (t) => {
    if (skipped(t)) return;
    await fx.admin.set('wait:zero', 'other', 'PX', 30_000);
    const locks = fx.make();
    assert.deepEqual(await locks.withSpaceLock('zero', async () => 1, { waitMs: 0 }), { skipped: 'lock-held' });
  });

  it('a lease granted after a wait longer than the ttl is valid for a whole ttl from its confirming refresh', async (t) => {
    if (skipped(t)) return;
    const ttl = 300;
    const holder = fx.make({ ttlMs: ttl });
    const waiter = fx.make({ ttlMs: ttl });
    let holding = false;
    const hold = holder.withSpaceLock('long', async () => {
      holding = true;
      await sleep(3 * ttl); // the waiter waits 3 ttl
    });
    await waitFor('the holder', () => holding);
    const r = await waiter.withSpaceLock(
      'long',
      async (lease) => {
        const replyAt = performance.now();
        assert.equal(lease.isLost(), false, 'not lost on arrival');
        assert.equal(await fx.admin.get('wait:long'), lease.owner);
        // Stall every refresh from now on: only the local deadline can end the lease.
        await fx.admin.call('CLIENT', 'PAUSE', String(4 * ttl), 'WRITE');
        const reason = await lease.lost;
        const lostAfter = performance.now() - replyAt;
        assert.equal(reason, 'expired');
        // The lease counts from the REFRESH that confirmed the late grant,
        // sent one round trip before the body started.
        assert.ok(lostAfter >= ttl - 25, `lost ${lostAfter.toFixed(0)} ms after the body started: before a whole ttl`);
        assert.ok(lostAfter < 3 * ttl, `lost ${lostAfter.toFixed(0)} ms after the reply`);
        await fx.admin.call('CLIENT', 'UNPAUSE');
        return 'ran';
      },
      { waitMs: 10_000 },
    );
    await hold;
    assert.equal(r, 'ran');
  });

  it('abort while waiting: rejects with the reason, leaves no lock behind even if granted just after', async (t) => {
    if (skipped(t)) return;
    const holder = fx.make();
    const waiter = fx.make();
    const hold = await holdLock(holder, 'abort');
    const base = await waiting();
    const ac = new AbortController();
    let ran = false;
    const w = waiter.withSpaceLock(
      'abort',
      async () => {
        ran = true;
      },
      { waitMs: 10_000, signal: ac.signal },
    );
    await waitFor('the waiter queued', async () => (await waiting()) === base + 1);
    // Abort, and release the holder at once: the server may hand the lock to
    // the abandoned waiter before it notices; the client must release it.
    ac.abort(new Error('caller gave up'));
    hold.release();
    await assert.rejects(w, /caller gave up/);
    await hold.done;
    assert.equal(ran, false);
    await waitFor('no lock left behind', async () => (await fx.admin.exists('wait:abort')) === 0 && (await waiting()) === base);
    assert.equal(await holder.withSpaceLock('abort', async () => 'free again'), 'free again');
  });

  it('abort while a late grant is being confirmed: rejects with the reason, fn never runs, nothing left held', async (t) => {
    if (skipped(t)) return;
    const waiter = fx.make({ ttlMs: 600 });
    await fx.admin.call('SPACELOCK.ACQUIRE', 'wait:late-abort', 'other', '30000');
    const base = await waiting();
    const ac = new AbortController();
    let ran = false;
    const w = waiter.withSpaceLock(
      'late-abort',
      async () => {
        ran = true;
      },
      { waitMs: 5_000, signal: ac.signal },
    );
    await waitFor('the waiter queued', async () => (await waiting()) === base + 1);
    await sleep(300); // past ttl/3: the grant will be confirmed by a REFRESH
    // Hand the lock over and hold writes: the confirming REFRESH waits behind the pause.
    await fx.admin.multi().call('SPACELOCK.RELEASE', 'wait:late-abort', 'other').call('CLIENT', 'PAUSE', '400', 'WRITE').exec();
    await sleep(150);
    ac.abort(new Error('caller gave up during the confirmation'));
    const abortedAt = performance.now();
    await assert.rejects(w, /caller gave up during the confirmation/);
    assert.ok(performance.now() - abortedAt < 150, 'rejected at the abort, not after the pause');
    assert.equal(ran, false, 'fn ran after its caller had aborted');
    await waitFor('no lock left behind', async () => (await fx.admin.exists('wait:late-abort')) === 0, 3_000);
  });

  it('waitMs beyond what a Node timer holds (Number.MAX_SAFE_INTEGER) waits as long as it takes', async (t) => {
    if (skipped(t)) return;
    const warnings: Error[] = [];
    const onWarning = (w: Error): void => void warnings.push(w);
    process.on('warning', onWarning);
    try {
      const holder = fx.make();
      const waiter = fx.make({ releaseTimeoutMs: 3e9 });
      const hold = await holdLock(holder, 'forever');
      const w = waiter.withSpaceLock('forever', async () => 'got it', { waitMs: Number.MAX_SAFE_INTEGER });
      await sleep(400);
      hold.release();
      await hold.done;
      assert.equal(await w, 'got it'); // it used to time out after a few ms
      assert.deepEqual(
        warnings.filter((w) => w.name === 'TimeoutOverflowWarning').map((w) => w.message),
        [],
      );
    } finally {
      process.off('warning', onWarning);
    }
  });

  it('all pooled connections busy for the whole wait: timed-out, not hung', async (t) => {
    if (skipped(t)) return;
    await fx.admin.set('wait:pool-a', 'other', 'PX', 30_000);
    await fx.admin.set('wait:pool-b', 'other', 'PX', 30_000);
    const locks = fx.make({ waitConnections: 1 });
    const a = locks.withSpaceLock('pool-a', async () => 1, { waitMs: 1_500 });
    await waitFor('a queued', async () => (await waiting()) >= 1);
    const start = performance.now();
    const b = await locks.withSpaceLock('pool-b', async () => 1, { waitMs: 300 });
    assert.deepEqual(b, { skipped: 'timed-out' });
    assert.ok(performance.now() - start < 1_200, 'b gave up at its own waitMs');
    assert.deepEqual(await a, { skipped: 'timed-out' });
  });

  it('never hangs past waitMs + grace on a stalled server: timed-out, not an error, and releases what it may be granted', async (t) => {
    if (skipped(t)) return;
    const holder = fx.make();
    const waiter = fx.make({ waitGraceMs: 300 });
    const hold = await holdLock(holder, 'stall');
    // The server stops answering everyone for 1.5 s.
    await fx.admin.call('CLIENT', 'PAUSE', '1500', 'ALL');
    const start = performance.now();
    assert.deepEqual(await waiter.withSpaceLock('stall', async () => 'ran', { waitMs: 300 }), { skipped: 'timed-out' });
    const took = performance.now() - start;
    assert.ok(took < 300 + 300 + 250, `gave up after ${took.toFixed(0)} ms`);
    hold.release(); // its release runs once the pause ends; the waiter's WAIT may then be granted
    await hold.done;
    await waitFor('no lock left behind', async () => (await fx.admin.exists('wait:stall')) === 0 && (await waiting()) === 0, 5_000);
  });

  it('lease.signal of a waited-for lease still aborts on loss', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make({ ttlMs: 300 });
    const r = await locks.withSpaceLock(
      'lost-after-wait',
      async (lease) => {
        await fx.admin.del('wait:lost-after-wait');
        await lease.lost;
        return (lease.signal.reason as LeaseLostError).reason;
      },
      { waitMs: 1_000 },
    );
    assert.equal(r, 'not-owner');
  });
});

describe('waitMs on a slow server (writes paused, process stopped)', () => {
  const fx = withServer('slow:');

  it('CLIENT PAUSE WRITE longer than the wait: the call resolves timed-out at waitMs + grace, never CommandTimeoutError', async (t) => {
    if (skipped(t)) return;
    const holder = fx.make();
    const waiter = fx.make({ waitGraceMs: 300 });
    const hold = await holdLock(holder, 'paused');
    await fx.admin.call('CLIENT', 'PAUSE', '2000', 'WRITE');
    const start = performance.now();
    const r = await waiter.withSpaceLock('paused', async () => 'ran', { waitMs: 400 }).catch((e: unknown) => e);
    const took = performance.now() - start;
    assert.ok(!(r instanceof CommandTimeoutError), String(r));
    assert.deepEqual(r, { skipped: 'timed-out' });
    assert.ok(took >= 390 && took < 400 + 300 + 250, `answered after ${took.toFixed(0)} ms`);
    hold.release();
    await hold.done;
    await waitFor('no lock left behind', async () => (await fx.admin.exists('slow:paused')) === 0 && (await spacelockStat(fx.admin, 'waiting_clients')) === 0, 5_000);
  });

  it('CLIENT PAUSE WRITE that ends within waitMs: the call gets the lock', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    await fx.admin.call('CLIENT', 'PAUSE', '400', 'WRITE');
    const start = performance.now();
    const r = await locks.withSpaceLock('pause-ends', async (lease) => lease.owner, { waitMs: 3_000 });
    assert.equal(typeof r, 'string');
    assert.ok(performance.now() - start >= 350, 'it waited for the pause to end');
    assert.equal(await fx.admin.exists('slow:pause-ends'), 0);
  });

  it('CLIENT PAUSE issued while the call is already queued on the server: timed-out or the lock, never an error', async (t) => {
    if (skipped(t)) return;
    const holder = fx.make();
    const waiter = fx.make({ waitGraceMs: 300 });
    const hold = await holdLock(holder, 'paused-queued');
    const base = await spacelockStat(fx.admin, 'waiting_clients');
    const start = performance.now();
    const w = waiter.withSpaceLock('paused-queued', async () => 'ran', { waitMs: 600 }).catch((e: unknown) => e);
    await waitFor('the waiter queued', async () => (await spacelockStat(fx.admin, 'waiting_clients')) === base + 1);
    await fx.admin.call('CLIENT', 'PAUSE', '1500', 'ALL');
    const r = await w;
    const took = performance.now() - start;
    assert.deepEqual(r, { skipped: 'timed-out' });
    assert.ok(took < 600 + 300 + 250, `answered after ${took.toFixed(0)} ms`);
    hold.release();
    await hold.done;
    await waitFor('no lock left behind', async () => (await fx.admin.exists('slow:paused-queued')) === 0, 5_000);
  });

  it('the server stopped (SIGSTOP) during a wait: timed-out at waitMs + grace; after SIGCONT nothing is left held', async (t) => {
    if (skipped(t)) return;
    const holder = fx.make();
    const waiter = fx.make({ waitGraceMs: 300 });
    const hold = await holdLock(holder, 'stopped');
    const start = performance.now();
    let r: unknown;
    fx.server.suspend();
    try {
      r = await waiter.withSpaceLock('stopped', async () => 'ran', { waitMs: 400 }).catch((e: unknown) => e);
    } finally {
      fx.server.resume();
    }
    const took = performance.now() - start;
    assert.deepEqual(r, { skipped: 'timed-out' });
    assert.ok(took >= 390 && took < 400 + 300 + 250, `answered after ${took.toFixed(0)} ms`);
    hold.release();
    await hold.done;
    await waitFor('no lock left behind', async () => (await fx.admin.exists('slow:stopped')) === 0, 5_000);
  });

  it('without waitMs, a paused server: CommandTimeoutError after one ttl (as documented), and nothing left held', async (t) => {
    if (skipped(t)) return;
    const ttl = 400;
    const locks = fx.make({ ttlMs: ttl });
    assert.equal(await locks.withSpaceLock('nowait-warm', async () => 'ok'), 'ok'); // the connection is open
    await fx.admin.call('CLIENT', 'PAUSE', '1200', 'WRITE');
    const start = performance.now();
    await assert.rejects(locks.withSpaceLock('nowait', async () => 'ran'), CommandTimeoutError);
    const took = performance.now() - start;
    assert.ok(took >= ttl - 5 && took < ttl + 400, `gave up after ${took.toFixed(0)} ms`);
    await sleep(1_000); // the pause ends; the ACQUIRE runs, then the RELEASE queued behind it
    await waitFor('no lock left behind', async () => (await fx.admin.exists('slow:nowait')) === 0, 3_000);
  });
});
