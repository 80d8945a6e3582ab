/**
 * Every behaviour of the existing Lua-based SpaceLockService, against the real
 * module: the client is a drop-in replacement for it.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isSkipped, LUA_REFRESH_SCRIPT, LUA_RELEASE_SCRIPT, SpaceLock, SpaceLockError } from '../src';
import { commandCalls, recordingLogger, skipped, waitFor, withServer } from './harness';

describe('parity with the existing SpaceLockService', () => {
  const fx = withServer('git-sync:lock:');

  it("returns fn's value and releases the lock after it", async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    let heldValue = '';
    const r = await locks.withSpaceLock('space-1', async (lease) => {
      heldValue = (await fx.admin.get('git-sync:lock:space-1')) ?? '';
      assert.equal(lease.key, 'git-sync:lock:space-1');
      assert.equal(lease.name, 'space-1');
      return { ok: 42 };
    });
    assert.deepEqual(r, { ok: 42 });
    assert.ok(heldValue.startsWith(`${locks.owner}:`), `the key held our owner id, got ${heldValue}`);
    assert.equal(await fx.admin.exists('git-sync:lock:space-1'), 0, 'released');
    assert.equal(locks.isRunning('space-1'), false);
  });

  it('sets the key with the ttl, as SET key id PX ttl NX does', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make({ ttlMs: 5_000 });
    await locks.withSpaceLock('space-ttl', async () => {
      const pttl = await fx.admin.pttl('git-sync:lock:space-ttl');
      assert.ok(pttl > 4_000 && pttl <= 5_000, `pttl ${pttl}`);
    });
  });

  it("returns { skipped: 'lock-held' } when another replica holds the lock, without running fn", async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    // Another replica running the existing service's own code: SET key id PX ttl NX.
    assert.equal(await fx.admin.set('git-sync:lock:space-2', 'other-replica', 'PX', 30_000, 'NX'), 'OK');
    let ran = false;
    const r = await locks.withSpaceLock('space-2', async () => {
      ran = true;
    });
    assert.deepEqual(r, { skipped: 'lock-held' });
    assert.ok(isSkipped(r));
    assert.equal(ran, false);
    assert.equal(await fx.admin.get('git-sync:lock:space-2'), 'other-replica', 'the other lock is untouched');
    assert.equal(locks.isRunning('space-2'), false, 'the in-process entry is freed');
  });

  it("returns { skipped: 'in-progress' } when this instance is already inside the space", async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    const inner = await locks.withSpaceLock('space-3', async () => locks.withSpaceLock('space-3', async () => 'nested'));
    assert.deepEqual(inner, { skipped: 'in-progress' });
  });

  it("rethrows fn's error after releasing the lock", async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    const boom = new Error('sync failed');
    await assert.rejects(
      locks.withSpaceLock('space-4', async () => {
        throw boom;
      }),
      (e) => e === boom,
    );
    assert.equal(await fx.admin.exists('git-sync:lock:space-4'), 0, 'released after the throw');
    assert.equal(await locks.withSpaceLock('space-4', async () => 'again'), 'again', 'the space is usable again');
  });

  it('releases when fn throws synchronously (a non-async fn)', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    await assert.rejects(
      locks.withSpaceLock('space-sync', () => {
        throw new TypeError('sync throw');
      }),
      TypeError,
    );
    assert.equal(await fx.admin.exists('git-sync:lock:space-sync'), 0);
  });

  it('keeps the lock alive past its ttl while fn runs (the heartbeat)', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make({ ttlMs: 300 });
    await locks.withSpaceLock('space-5', async (lease) => {
      const start = performance.now();
      const refreshes = await commandCalls(fx.admin, 'spacelock.refresh');
      // Eight refreshes, one every ttl/3 (100 ms): the lease outlives two ttls.
      await waitFor('8 refreshes', async () => (await commandCalls(fx.admin, 'spacelock.refresh')) - refreshes >= 8, 5_000);
      assert.ok(performance.now() - start >= 600, 'refreshed every ttl/3, not faster');
      assert.equal(lease.isLost(), false);
      assert.equal(await fx.admin.get('git-sync:lock:space-5'), lease.owner, 'still ours after two ttls');
    });
  });

  it('never releases a lock that another owner took after ours expired', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make({ ttlMs: 200 });
    await locks.withSpaceLock('space-6', async (lease) => {
      // Our lease ends (deleted), another replica takes the lock.
      await fx.admin.del('git-sync:lock:space-6');
      await fx.admin.set('git-sync:lock:space-6', 'other-replica', 'PX', 30_000);
      await waitFor('the lease to be lost', () => lease.isLost(), 2_000);
    });
    assert.equal(await fx.admin.get('git-sync:lock:space-6'), 'other-replica', 'our release left theirs alone');
    assert.ok((await fx.admin.pttl('git-sync:lock:space-6')) > 25_000, 'and our heartbeat never extended it');
  });

  it('a failed release is logged and does not replace the result', async (t) => {
    if (skipped(t)) return;
    const logger = recordingLogger();
    const locks = fx.make({ logger, releaseTimeoutMs: 1_000 });
    // The release runs on the SpaceLock's own connection: make it fail there.
    const r = await locks.withSpaceLock('space-7', async () => {
      await fx.admin.set('git-sync:lock:space-7', 'not-a-lock');
      await fx.admin.del('git-sync:lock:space-7');
      await fx.admin.rpush('git-sync:lock:space-7', 'x'); // WRONGTYPE for RELEASE
      return 'result';
    });
    assert.equal(r, 'result');
    assert.ok(
      logger.warns.some((w) => w.includes('failed to release lock git-sync:lock:space-7') && w.includes('WRONGTYPE')),
      logger.warns.join('\n'),
    );
    await fx.admin.del('git-sync:lock:space-7');
  });

  it('each SpaceLock has its own owner id (the existing service: one randomUUID per process)', async (t) => {
    if (skipped(t)) return;
    const a = fx.make();
    const b = fx.make();
    assert.notEqual(a.owner, b.owner);
    assert.match(a.owner, /^[0-9a-f-]{36}$/);
    const fixed = fx.make({ owner: 'instance-a' });
    await fixed.withSpaceLock('space-8', async (lease) => {
      assert.match(lease.owner, /^instance-a:\d+$/);
      assert.equal(await fx.admin.get('git-sync:lock:space-8'), lease.owner);
      // A second instance is excluded by the first one's lock.
      assert.deepEqual(await b.withSpaceLock('space-8', async () => 1), { skipped: 'lock-held' });
    });
  });

  it("applies the connection's own ioredis keyPrefix, as the existing service's redis.set would", async (t) => {
    if (skipped(t)) return;
    const prefixed = fx.server.client({ keyPrefix: 'app:' });
    const locks = new SpaceLock(prefixed, { keyPrefix: 'git-sync:lock:', logger: recordingLogger() });
    fx.track(locks);
    await locks.withSpaceLock('space-9', async (lease) => {
      // lease.key is the key as stored: a connection without a prefix finds the holder under it.
      assert.equal(lease.key, 'app:git-sync:lock:space-9');
      assert.equal(lease.name, 'space-9');
      assert.equal(locks.key('space-9'), lease.key);
      assert.equal(await fx.admin.exists(lease.key), 1);
      assert.equal(await fx.admin.get(lease.key), lease.owner);
      assert.equal(await prefixed.get('git-sync:lock:space-9'), lease.owner, 'the user sees it through their prefix');
      assert.equal((await locks.info('space-9'))?.owner, lease.owner);
      assert.equal(locks.isRunning('space-9'), true);
    });
    assert.equal(await fx.admin.exists('app:git-sync:lock:space-9'), 0, 'released');
    assert.equal(locks.isRunning('space-9'), false);
  });

  it("the existing service's Lua refresh and release work on a module lock, and a module release on a SET NX lock", async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    await locks.withSpaceLock('space-10', async (lease) => {
      assert.equal(await fx.admin.eval(LUA_REFRESH_SCRIPT, 1, 'git-sync:lock:space-10', lease.owner, '60000'), 1);
      assert.ok((await fx.admin.pttl('git-sync:lock:space-10')) > 50_000);
      assert.equal(await fx.admin.eval(LUA_RELEASE_SCRIPT, 1, 'git-sync:lock:space-10', 'someone-else'), 0);
      assert.equal(await fx.admin.eval(LUA_RELEASE_SCRIPT, 1, 'git-sync:lock:space-10', lease.owner), 1);
    });
    // A lock of a replica running the existing service blocks ours until its owner's Lua release.
    await fx.admin.set('git-sync:lock:space-10', 'existing-replica', 'PX', 30_000, 'NX');
    assert.deepEqual(await locks.withSpaceLock('space-10', async () => 1), { skipped: 'lock-held' });
    assert.equal(await fx.admin.eval(LUA_RELEASE_SCRIPT, 1, 'git-sync:lock:space-10', 'existing-replica'), 1);
    assert.equal(await locks.withSpaceLock('space-10', async () => 'mine now'), 'mine now');
  });

  it("works over a connection with enableOfflineQueue: false (its copies connect on first use)", async (t) => {
    if (skipped(t)) return;
    const strict = fx.server.client({ enableOfflineQueue: false });
    await new Promise((resolve) => strict.once('ready', resolve));
    const locks = new SpaceLock(strict, { keyPrefix: 'git-sync:lock:', logger: recordingLogger() });
    fx.track(locks);
    assert.equal(await locks.withSpaceLock('space-11', async (lease) => typeof lease.token), 'bigint');
    assert.equal(await locks.withSpaceLock('space-11', async () => 'ok', { waitMs: 100 }), 'ok');
  });

  it('rejects bad options and a closed SpaceLock', async (t) => {
    if (skipped(t)) return;
    assert.throws(() => new SpaceLock(fx.redis, { ttlMs: 0 }), RangeError);
    assert.throws(() => new SpaceLock(fx.redis, { owner: '' }), RangeError);
    const locks = fx.make();
    await assert.rejects(locks.withSpaceLock('x', async () => 1, { waitMs: -1 }), RangeError);
    // Bad input rejects; nothing throws synchronously out of withSpaceLock.
    const bad = locks.withSpaceLock('x', async () => 1, { waitMs: Number.NaN });
    assert.ok(bad instanceof Promise);
    await assert.rejects(bad, RangeError);
    // `null` options from JavaScript count as none.
    assert.equal(await locks.withSpaceLock('x', async () => 'null ok', null as never), 'null ok');
    assert.equal(await locks.withSpaceLock('x', async () => 'null waitMs', { waitMs: null as never }), 'null waitMs');
    await locks.close();
    await assert.rejects(locks.withSpaceLock('x', async () => 1), /closed/);
    await assert.rejects(locks.info('x'), (e) => e instanceof SpaceLockError && /closed/.test(e.message));
  });
});
