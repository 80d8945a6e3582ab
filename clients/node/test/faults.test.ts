/**
 * Faults a user meets: the server's idle `timeout` closing connections while
 * a lease is held, `CLIENT PAUSE … WRITE` during the release, and a server
 * restarted empty under a held lease.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it, type TestContext } from 'node:test';
import type { Redis } from 'ioredis';
import { SpaceLock } from '../src';
import { missingModule, recordingLogger, sleep, TestServer, waitFor } from './harness';

const skipReason = missingModule();
const skipped = (t: TestContext): boolean => {
  if (skipReason) t.skip(skipReason);
  return skipReason !== undefined;
};

async function connectionsReceived(admin: Redis): Promise<number> {
  return Number(/total_connections_received:(\d+)/.exec(await admin.info('stats'))?.[1]);
}

describe('faults', () => {
  let server: TestServer;
  let redis: Redis;
  let admin: Redis;
  const made: SpaceLock[] = [];
  const make = (opts: ConstructorParameters<typeof SpaceLock>[1] = {}): SpaceLock => {
    const l = new SpaceLock(redis, { keyPrefix: 'fault:', logger: recordingLogger(), ...opts });
    made.push(l);
    return l;
  };

  before(async () => {
    if (skipReason) return;
    server = await TestServer.start();
    redis = server.client();
    admin = server.client();
  });
  after(async () => {
    await Promise.all(made.map((l) => l.close()));
    await server?.dispose();
  });

  it('the server idle timeout (CONFIG SET timeout 1) closes our idle connections: the lease holds, waits still work', async (t) => {
    if (skipped(t)) return;
    const locks = make({ ttlMs: 3_000 });
    // Warm up the wait pool, so it holds an idle connection.
    assert.equal(await locks.withSpaceLock('idle-w', async () => 'w1', { waitMs: 500 }), 'w1');
    const before = await connectionsReceived(admin);
    await admin.config('SET', 'timeout', '1');
    try {
      const r = await locks.withSpaceLock('idle', async (lease) => {
        // The command connection sits idle while fn runs (the heartbeat has its own).
        const start = performance.now();
        while (performance.now() - start < 3_500) {
          assert.equal(lease.isLost(), false);
          await sleep(250);
        }
        assert.equal(await admin.get('fault:idle'), lease.owner);
        return 'held';
      });
      assert.equal(r, 'held');
      await waitFor('the release', async () => (await admin.exists('fault:idle')) === 0, 5_000);
      // The pooled wait connection was closed by the server meanwhile.
      assert.equal(await locks.withSpaceLock('idle-w', async () => 'w2', { waitMs: 500 }), 'w2');
      assert.ok((await connectionsReceived(admin)) > before + 1, 'the server did close idle connections');
      // The admin connection is subject to the timeout too; ioredis reconnects it.
    } finally {
      await admin.config('SET', 'timeout', '0');
    }
  });

  it('CLIENT PAUSE WRITE during the release: returns after releaseTimeoutMs with the result; released after the pause', async (t) => {
    if (skipped(t)) return;
    const logger = recordingLogger();
    const locks = make({ logger, releaseTimeoutMs: 300 });
    let pausedAt = 0;
    const r = await locks.withSpaceLock('paused', async () => {
      await admin.call('CLIENT', 'PAUSE', '1500', 'WRITE');
      pausedAt = performance.now();
      return 'result';
    });
    const returnedAfter = performance.now() - pausedAt;
    assert.equal(r, 'result');
    assert.ok(returnedAfter < 1_200, `returned ${returnedAfter.toFixed(0)} ms into a 1500 ms pause`);
    assert.equal(await admin.exists('fault:paused'), 1, 'still held while writes are paused');
    assert.ok(logger.warns.some((w) => w.includes('did not complete within 300 ms')), logger.warns.join('\n'));
    await waitFor('the release after the pause', async () => (await admin.exists('fault:paused')) === 0, 5_000);
    assert.ok(performance.now() - pausedAt >= 1_400, 'not before the pause ended');
  });

  it('CLIENT PAUSE WRITE shorter than releaseTimeoutMs: the call waits for the release', async (t) => {
    if (skipped(t)) return;
    const logger = recordingLogger();
    const locks = make({ logger });
    const r = await locks.withSpaceLock('paused-short', async () => {
      await admin.call('CLIENT', 'PAUSE', '400', 'WRITE');
      return 'result';
    });
    assert.equal(r, 'result');
    assert.equal(await admin.exists('fault:paused-short'), 0, 'released before returning');
    assert.deepEqual(logger.warns, []);
  });

  it('a server restarted empty under a held lease: the lease is lost, the result intact, the next call works', async (t) => {
    if (skipped(t)) return;
    const logger = recordingLogger();
    const ttl = 600;
    const locks = make({ ttlMs: ttl, logger });
    const r = await locks.withSpaceLock('restart', async (lease) => {
      assert.equal(typeof lease.token, 'bigint');
      await server.restartEmpty();
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
    const fragile = server.client({ retryStrategy: () => null });
    const locks = new SpaceLock(fragile, { keyPrefix: 'fault:', ttlMs: 600, logger: recordingLogger() });
    made.push(locks);
    assert.equal(await locks.withSpaceLock('fragile', async () => 'before'), 'before');
    await server.restartEmpty();
    // Its copies gave up on the restart ('end'); the SpaceLock replaces them.
    const first = await locks.withSpaceLock('fragile', async (lease) => lease.token);
    const second = await locks.withSpaceLock('fragile', async (lease) => lease.token);
    assert.ok(typeof first === 'bigint' && typeof second === 'bigint' && second > first, `${first} then ${second}`);
  });
});
