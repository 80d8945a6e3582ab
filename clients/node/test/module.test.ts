/**
 * A server without the module: ModuleNotLoadedError, and `fallback: 'lua'`
 * running the existing Lua-based service's exact commands.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ModuleNotLoadedError, SpaceLockError } from '../src';
import { commandCalls as calls, recordingLogger, waitFor, withServer } from './harness';

describe('a server without the module', () => {
  const fx = withServer('plain:', { module: false });

  it('throws a typed ModuleNotLoadedError that says how to load the module', async () => {
    const locks = fx.make();
    let ran = false;
    const err = await locks
      .withSpaceLock('x', async () => {
        ran = true;
      })
      .then(
        () => assert.fail('should have thrown'),
        (e: unknown) => e,
      );
    assert.ok(err instanceof ModuleNotLoadedError);
    assert.ok(err instanceof SpaceLockError);
    assert.equal(err.name, 'ModuleNotLoadedError');
    assert.match(err.message, /loadmodule \/path\/to\/libspacelock\.so/);
    assert.match(err.message, /MODULE LOAD/);
    assert.match(err.reply, /unknown command/i);
    assert.equal(ran, false);
    assert.equal(locks.isRunning('x'), false);
    await assert.rejects(locks.withSpaceLock('x', async () => 1, { waitMs: 200 }), ModuleNotLoadedError);
    await assert.rejects(locks.info('x'), ModuleNotLoadedError);
  });

  it("fallback: 'lua' runs the existing service's commands: no token, warns once, releases with its Lua", async () => {
    const logger = recordingLogger();
    const locks = fx.make({ fallback: 'lua', logger });
    const sets = await calls(fx.admin, 'set');
    const evals = await calls(fx.admin, 'eval');
    const r = await locks.withSpaceLock('a', async (lease) => {
      assert.equal(lease.token, undefined);
      assert.equal(await fx.admin.get('plain:a'), lease.owner);
      const pttl = await fx.admin.pttl('plain:a');
      assert.ok(pttl > 25_000 && pttl <= 30_000, `pttl ${pttl}`);
      return 'ran';
    });
    assert.equal(r, 'ran');
    assert.equal(locks.commandMode, 'lua');
    assert.equal(await fx.admin.exists('plain:a'), 0, 'released');
    assert.equal(await calls(fx.admin, 'set'), sets + 1, 'SET NX PX');
    assert.equal(await calls(fx.admin, 'eval'), evals + 1, "the existing service's release EVAL");
    assert.equal(await locks.withSpaceLock('b', async () => 'again'), 'again');
    assert.equal(logger.warns.filter((w) => w.includes('falling back')).length, 1, logger.warns.join('\n'));
  });

  it("fallback: 'lua' waits never outlast waitMs + waitGraceMs, even when the server stops answering (SIGSTOP): timed-out, not an error", async () => {
    const locks = fx.make({ fallback: 'lua', ttlMs: 5_000, waitGraceMs: 500, logger: recordingLogger() });
    assert.equal(await locks.withSpaceLock('stop-wait', async () => 'lua'), 'lua'); // in Lua mode now
    fx.server.suspend();
    const start = performance.now();
    let outcome: unknown;
    try {
      outcome = await locks.withSpaceLock('stop-wait', async () => 'ran', { waitMs: 500 }).catch((e: unknown) => e);
    } finally {
      fx.server.resume();
    }
    const took = performance.now() - start;
    assert.deepEqual(outcome, { skipped: 'timed-out' }, String(outcome));
    // Each SET NX PX used to be bounded by the whole ttl (5 s) instead.
    assert.ok(took >= 950 && took < 1_600, `gave up after ${took.toFixed(0)} ms (waitMs 500 + grace 500)`);
    await waitFor('the release of the abandoned SET', async () => (await fx.admin.exists('plain:stop-wait')) === 0, 3_000);
  });

  it("fallback: 'lua' keeps a 300 ms lease alive with the existing service's refresh and signals its loss", async () => {
    const locks = fx.make({ fallback: 'lua', ttlMs: 300 });
    const evals = await calls(fx.admin, 'eval');
    await locks.withSpaceLock('alive', async (lease) => {
      const start = performance.now();
      // Eight refreshes, one every ttl/3 (100 ms): the lease outlives two ttls.
      await waitFor('8 refresh EVALs', async () => (await calls(fx.admin, 'eval')) - evals >= 8, 5_000);
      assert.ok(performance.now() - start >= 600, 'refreshed every ttl/3, not faster');
      assert.equal(lease.isLost(), false);
      assert.equal(await fx.admin.get('plain:alive'), lease.owner);
      await fx.admin.del('plain:alive');
      assert.equal(await lease.lost, 'not-owner');
    });
  });

  it("fallback: 'lua' excludes the existing service's own SET NX lock, and the existing service excludes it", async () => {
    const locks = fx.make({ fallback: 'lua' });
    await fx.admin.set('plain:mixed', 'existing-replica', 'PX', 30_000, 'NX');
    assert.deepEqual(await locks.withSpaceLock('mixed', async () => 1), { skipped: 'lock-held' });
    await fx.admin.del('plain:mixed');
    await locks.withSpaceLock('mixed', async () => {
      assert.equal(await fx.admin.set('plain:mixed', 'existing-replica', 'PX', 30_000, 'NX'), null);
    });
  });

  it("fallback: 'lua' with waitMs polls until the holder releases, and times out", async () => {
    const locks = fx.make({ fallback: 'lua' });
    await fx.admin.set('plain:poll', 'existing-replica', 'PX', 30_000);
    const sets = await calls(fx.admin, 'set');
    let ranAt = 0;
    const r = locks.withSpaceLock(
      'poll',
      async () => {
        ranAt = performance.now();
        return 'got it';
      },
      { waitMs: 5_000 },
    );
    // The holder releases once the waiter has found its lock held three times.
    await waitFor('3 SET NX polls', async () => (await calls(fx.admin, 'set')) - sets >= 3, 3_000);
    assert.equal(ranAt, 0, 'not granted while held');
    const releasedAt = performance.now();
    assert.equal(await fx.admin.del('plain:poll'), 1);
    assert.equal(await r, 'got it');
    assert.ok(ranAt >= releasedAt, 'granted after the release');

    await fx.admin.set('plain:poll', 'existing-replica', 'PX', 30_000);
    const t0 = performance.now();
    assert.deepEqual(await locks.withSpaceLock('poll', async () => 1, { waitMs: 400 }), { skipped: 'timed-out' });
    const took = performance.now() - t0;
    assert.ok(took >= 390 && took < 1_000, `took ${took.toFixed(0)} ms`);
    // The waiter gave up without taking or deleting the holder's lock.
    assert.equal(await fx.admin.get('plain:poll'), 'existing-replica');
    assert.equal(await fx.admin.del('plain:poll'), 1);
  });
});
