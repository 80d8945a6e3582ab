/**
 * close(): running bodies finish (or are aborted and released at the
 * deadline), waits stop, and every connection the SpaceLock opened closes
 * without leaving a timer behind.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';
import { LeaseLostError, SpaceLockError } from '../src';
import { holdLock, msFromCloseToExit, skipped, sleep, spacelockStat, waitFor, withServer } from './harness';

describe('close()', () => {
  const fx = withServer('close:');

  it('a wait-pool connection the server already closed: the process exits at once after close()', async (t) => {
    if (skipped(t)) return;
    const script = `
      const { Redis } = require('ioredis');
      const { SpaceLock } = require(${JSON.stringify(path.resolve(__dirname, '../src/index.js'))});
      (async () => {
        const redis = new Redis(${fx.server.port}, '127.0.0.1');
        const admin = new Redis(${fx.server.port}, '127.0.0.1');
        const locks = new SpaceLock(redis, { keyPrefix: 'close:exit:' });
        await locks.withSpaceLock('w', async () => 1, { waitMs: 1000 }); // opens the wait pool
        // The server closes the pooled wait connection (as its idle timeout or a restart would).
        const list = await admin.client('LIST');
        const ids = list.split('\\n').filter((l) => l.includes('cmd=spacelock.acquire')).map((l) => /id=(\\d+)/.exec(l)[1]);
        if (ids.length === 0) throw new Error('no wait connection found:\\n' + list);
        for (const id of ids) await admin.client('KILL', 'ID', id);
        await new Promise((r) => setTimeout(r, 200));
        await locks.close();
        redis.disconnect();
        admin.disconnect();
        process.stdout.write('closed\\n');
      })().catch((e) => { console.error(e); process.exit(3); });
    `;
    const afterClose = await msFromCloseToExit(script);
    assert.ok(afterClose < 500, `exited ${afterClose.toFixed(0)} ms after close() (was ~2 s)`);
  });

  it('waits for a running body, which finishes and releases; later calls reject', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    let started = false;
    let aborted = false;
    const run = locks.withSpaceLock('body', async (lease) => {
      started = true;
      await sleep(300);
      aborted = lease.signal.aborted;
      return 'finished';
    });
    await waitFor('the body', () => started);
    const start = performance.now();
    await locks.close({ timeoutMs: 5_000 });
    const took = performance.now() - start;
    assert.ok(took >= 250 && took < 1_500, `close() took ${took.toFixed(0)} ms`);
    assert.equal(await run, 'finished');
    assert.equal(aborted, false, 'not aborted: it finished within the deadline');
    assert.equal(await fx.admin.exists('close:body'), 0, 'released');
    await assert.rejects(locks.withSpaceLock('body', async () => 1), SpaceLockError);
  });

  it('a body that outlasts the deadline: its signal aborts, its lease is released, close() returns', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make({ ttlMs: 30_000 });
    let started = false;
    let reason: unknown;
    const run = locks.withSpaceLock('stuck', async (lease) => {
      started = true;
      await new Promise((r) => lease.signal.addEventListener('abort', r));
      reason = lease.signal.reason;
      await sleep(500); // goes on a while after the abort, without the lock
      return 'late';
    });
    await waitFor('the body', () => started);
    const start = performance.now();
    await locks.close({ timeoutMs: 200 });
    const took = performance.now() - start;
    assert.ok(took >= 190 && took < 800, `close() took ${took.toFixed(0)} ms`);
    assert.ok(reason instanceof LeaseLostError && reason.reason === 'released', String(reason));
    assert.equal(await fx.admin.exists('close:stuck'), 0, 'the lock key is gone once close() resolves');
    assert.equal(await run, 'late', "the call still returns fn's value");
    assert.equal(locks.activeLeases, 0);
  });

  it('calls waiting (locally and on the server) reject at once with SpaceLockError; nothing left held', async (t) => {
    if (skipped(t)) return;
    const other = fx.make();
    const locks = fx.make();
    const elsewhere = await holdLock(other, 'server-wait');
    const base = await spacelockStat(fx.admin, 'waiting_clients');
    const serverWait = locks.withSpaceLock('server-wait', async () => 'ran', { waitMs: 10_000 });
    await waitFor('the server wait', async () => (await spacelockStat(fx.admin, 'waiting_clients')) === base + 1);
    const local = await holdLock(locks, 'local-wait');
    const localWait = locks.withSpaceLock('local-wait', async () => 'ran', { waitMs: 10_000 });
    await sleep(50);
    const closing = locks.close({ timeoutMs: 2_000 });
    const start = performance.now();
    await assert.rejects(serverWait, SpaceLockError);
    await assert.rejects(localWait, SpaceLockError);
    assert.ok(performance.now() - start < 200, 'the waits stopped at once');
    local.release();
    await Promise.all([closing, local.done]);
    elsewhere.release();
    await elsewhere.done;
    await waitFor(
      'nothing left held',
      async () =>
        (await fx.admin.exists('close:server-wait')) === 0 &&
        (await fx.admin.exists('close:local-wait')) === 0 &&
        (await spacelockStat(fx.admin, 'waiting_clients')) === base,
      3_000,
    );
  });

  it('rejects a bad timeoutMs', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    await assert.rejects(locks.close({ timeoutMs: -1 }), RangeError);
    await assert.rejects(locks.close({ timeoutMs: Number.NaN }), RangeError);
    await locks.close({ timeoutMs: 0 });
  });
});
