/**
 * Faults a user meets: the server's idle `timeout` closing connections while
 * a lease is held, `CLIENT PAUSE … WRITE` during the release, and a server
 * restarted empty under a held lease.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';
import type { Redis } from 'ioredis';
import { CommandTimeoutError, SpaceLock } from '../src';
import { msFromCloseToExit, recordingLogger, skipped, sleep, spacelockStat, waitFor, withServer } from './harness';

async function connectionsReceived(admin: Redis): Promise<number> {
  return Number(/total_connections_received:(\d+)/.exec(await admin.info('stats'))?.[1]);
}

describe('faults', () => {
  const fx = withServer('fault:');

  it('the server idle timeout (CONFIG SET timeout 1) closes our idle connections: the lease holds, waits still work', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make({ ttlMs: 3_000 });
    // Warm up the wait pool, so it holds an idle connection.
    assert.equal(await locks.withSpaceLock('idle-w', async () => 'w1', { waitMs: 500 }), 'w1');
    const before = await connectionsReceived(fx.admin);
    await fx.admin.config('SET', 'timeout', '1');
    try {
      const r = await locks.withSpaceLock('idle', async (lease) => {
        // The command connection sits idle while fn runs (the heartbeat has its own).
        const start = performance.now();
        while (performance.now() - start < 3_500) {
          assert.equal(lease.isLost(), false);
          await sleep(250);
        }
        assert.equal(await fx.admin.get('fault:idle'), lease.owner);
        return 'held';
      });
      assert.equal(r, 'held');
      await waitFor('the release', async () => (await fx.admin.exists('fault:idle')) === 0, 5_000);
      // The pooled wait connection was closed by the server meanwhile.
      assert.equal(await locks.withSpaceLock('idle-w', async () => 'w2', { waitMs: 500 }), 'w2');
      assert.ok((await connectionsReceived(fx.admin)) > before + 1, 'the server did close idle connections');
      // The fx.admin connection is subject to the timeout too; ioredis reconnects it.
    } finally {
      await fx.admin.config('SET', 'timeout', '0');
    }
  });

  it('CLIENT PAUSE WRITE during the release: returns after releaseTimeoutMs with the result; released after the pause', async (t) => {
    if (skipped(t)) return;
    const logger = recordingLogger();
    const locks = fx.make({ logger, releaseTimeoutMs: 300 });
    let pausedAt = 0;
    const r = await locks.withSpaceLock('paused', async () => {
      await fx.admin.call('CLIENT', 'PAUSE', '1500', 'WRITE');
      pausedAt = performance.now();
      return 'result';
    });
    const returnedAfter = performance.now() - pausedAt;
    assert.equal(r, 'result');
    assert.ok(returnedAfter < 1_200, `returned ${returnedAfter.toFixed(0)} ms into a 1500 ms pause`);
    assert.equal(await fx.admin.exists('fault:paused'), 1, 'still held while writes are paused');
    assert.ok(logger.warns.some((w) => w.includes('did not complete within 300 ms')), logger.warns.join('\n'));
    await waitFor('the release after the pause', async () => (await fx.admin.exists('fault:paused')) === 0, 5_000);
    assert.ok(performance.now() - pausedAt >= 1_400, 'not before the pause ended');
  });

  it('CLIENT PAUSE WRITE shorter than releaseTimeoutMs: the call waits for the release', async (t) => {
    if (skipped(t)) return;
    const logger = recordingLogger();
    const locks = fx.make({ logger });
    const r = await locks.withSpaceLock('paused-short', async () => {
      await fx.admin.call('CLIENT', 'PAUSE', '400', 'WRITE');
      return 'result';
    });
    assert.equal(r, 'result');
    assert.equal(await fx.admin.exists('fault:paused-short'), 0, 'released before returning');
    assert.deepEqual(logger.warns, []);
  });

  it('the server stops answering (SIGSTOP) under 20 acquires: each rejects with CommandTimeoutError after about one ttl; after SIGCONT none is left held', async (t) => {
    if (skipped(t)) return;
    const ttl = 400;
    const locks = fx.make({ ttlMs: ttl, logger: recordingLogger() });
    assert.equal(await locks.withSpaceLock('stopped-warm', async () => 'ok'), 'ok'); // the connection is open
    const names = Array.from({ length: 20 }, (_, i) => `stopped-${i}`);
    fx.server.suspend();
    let outcomes: Array<{ err: unknown; ms: number }>;
    try {
      const start = performance.now();
      outcomes = await Promise.all(
        names.map((n) =>
          locks.withSpaceLock(n, async () => 'ran').then(
            (r) => ({ err: new Error(`resolved with ${String(r)}`), ms: performance.now() - start }),
            (err: unknown) => ({ err, ms: performance.now() - start }),
          ),
        ),
      );
      // info() is bounded by the ttl too.
      const infoStart = performance.now();
      await assert.rejects(locks.info('stopped-0'), CommandTimeoutError);
      const infoMs = performance.now() - infoStart;
      assert.ok(infoMs >= ttl - 5 && infoMs < ttl + 600, `info() gave up after ${infoMs.toFixed(0)} ms`);
    } finally {
      fx.server.resume();
    }
    for (const { err, ms } of outcomes) {
      assert.ok(err instanceof CommandTimeoutError, String(err));
      assert.ok(ms >= ttl - 5 && ms < ttl + 600, `gave up after ${ms.toFixed(0)} ms with a ${ttl} ms ttl`);
    }
    // The server now runs the queued ACQUIREs, then the RELEASE queued behind
    // each on the same connection: nothing stays held.
    await waitFor(
      'the queued releases',
      async () => (await Promise.all(names.map((n) => fx.admin.exists(`fault:${n}`)))).every((e) => e === 0),
      3_000,
    );
    assert.equal(await locks.withSpaceLock('stopped-0', async () => 'after'), 'after');
  });

  it('a server restarted empty under a held lease: the lease is lost, the result intact, the next call works', async (t) => {
    if (skipped(t)) return;
    const logger = recordingLogger();
    const ttl = 600;
    const locks = fx.make({ ttlMs: ttl, logger });
    const r = await locks.withSpaceLock('restart', async (lease) => {
      assert.equal(typeof lease.token, 'bigint');
      await fx.server.restartEmpty();
      const restartedAt = performance.now();
      const reason = await lease.lost;
      assert.ok(reason === 'not-owner' || reason === 'expired', reason);
      assert.ok(performance.now() - restartedAt < 2 * ttl, 'lost within two ttl of the restart');
      return 'done';
    });
    assert.equal(r, 'done');
    // The SpaceLock reconnected by itself. (The token depends on the module's
    // token mode: a per-name counter restarts at 1 with the empty data set, a
    // term-based one starts at the new term's floor.)
    const token = await locks.withSpaceLock('restart', async (lease) => lease.token, { waitMs: 1_000 });
    assert.equal(typeof token, 'bigint');
    assert.equal(await locks.withSpaceLock('restart-2', async () => 'ok'), 'ok');
  });

  it('a connection that never reconnects (retryStrategy: () => null): the next call after a restart still works', async (t) => {
    if (skipped(t)) return;
    const fragile = fx.server.client({ retryStrategy: () => null });
    const locks = new SpaceLock(fragile, { keyPrefix: 'fault:', ttlMs: 600, logger: recordingLogger() });
    fx.track(locks);
    assert.equal(await locks.withSpaceLock('fragile', async () => 'before'), 'before');
    await fx.server.restartEmpty();
    // Its copies gave up on the restart ('end'); the SpaceLock replaces them.
    const first = await locks.withSpaceLock('fragile', async (lease) => lease.token);
    const second = await locks.withSpaceLock('fragile', async (lease) => lease.token);
    assert.ok(typeof first === 'bigint' && typeof second === 'bigint' && second > first, `${first} then ${second}`);
  });

  it('a wait queued when the server restarts empty: sent again on a fresh connection, and granted once it is back', async (t) => {
    if (skipped(t)) return;
    const setup = fx.server.client();
    await setup.call('SPACELOCK.ACQUIRE', 'fault:restart-wait', 'other', '30000');
    const locks = fx.make({ logger: recordingLogger() });
    const w = locks.withSpaceLock('restart-wait', async (lease) => lease.owner, { waitMs: 8_000 });
    await waitFor('the waiter queued', async () => (await spacelockStat(setup, 'waiting_clients')) === 1);
    const start = performance.now();
    await fx.server.restartEmpty();
    const back = performance.now() - start;
    const owner = await w; // it used to reject with "Connection is closed." within milliseconds
    assert.equal(typeof owner, 'string');
    assert.ok(performance.now() - start < back + 1_500, 'granted soon after the server came back');
    const admin = fx.server.client();
    await waitFor('released', async () => (await admin.exists('fault:restart-wait')) === 0);
  });

  it('close() and disconnect() after a short body: the process exits at once (no timer left behind)', async (t) => {
    if (skipped(t)) return;
    const script = `
      const { Redis } = require('ioredis');
      const { SpaceLock } = require(${JSON.stringify(path.resolve(__dirname, '../src/index.js'))});
      (async () => {
        const redis = new Redis(${fx.server.port}, '127.0.0.1');
        const locks = new SpaceLock(redis, { keyPrefix: 'fault:exit:' });
        await locks.withSpaceLock('short', async () => 1);
        await locks.close();
        redis.disconnect();
        process.stdout.write('closed\\n');
      })();
    `;
    const afterClose = await msFromCloseToExit(script);
    assert.ok(afterClose < 700, `exited ${afterClose.toFixed(0)} ms after close() (was ~2 s)`);
  });
});
