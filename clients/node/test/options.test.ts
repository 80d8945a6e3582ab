/**
 * Options as callers pass them: fields left `undefined` (as a config object
 * or an `exactOptionalPropertyTypes` codebase produces them) mean the
 * default; bad values are still refused. And the client prints nothing
 * unless given a logger.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isSkipped, SpaceLock, type SpaceLockOptions, type WithSpaceLockOptions } from '../src';
import { holdLock, recordingLogger, skipped, waitFor, withServer } from './harness';

/** Settings as a service reads them from its config: any of them may be missing. */
interface Config {
  ttlMs?: number;
  waitMs?: number;
  signal?: AbortSignal;
}

describe('options', () => {
  const fx = withServer('opts:');

  it('accepts options whose fields are undefined, and applies the defaults', async (t) => {
    if (skipped(t)) return;
    const config: Config = {};
    const options: SpaceLockOptions = {
      keyPrefix: 'opts:',
      ttlMs: config.ttlMs,
      owner: undefined,
      logger: undefined,
      fallback: undefined,
      waitConnections: undefined,
      waitGraceMs: undefined,
      releaseTimeoutMs: undefined,
    };
    const locks = fx.track(new SpaceLock(fx.redis, options));
    assert.match(locks.owner, /^[0-9a-f-]{36}$/, 'a generated owner');

    const ttl = await locks.withSpaceLock('a', async (lease) => {
      assert.equal(await fx.admin.get('opts:a'), lease.owner, 'held on the server while the body runs');
      return lease.ttlMs;
    }, { waitMs: undefined });
    assert.equal(ttl, 30_000, 'the default ttl');
    assert.equal(await locks.withSpaceLock('a', async () => 'signal', { signal: undefined }), 'signal');
    assert.equal(await locks.withSpaceLock('a', async () => 'both', { waitMs: undefined, signal: undefined }), 'both');
    const passed: WithSpaceLockOptions = { waitMs: config.waitMs, signal: config.signal };
    assert.equal(await locks.withSpaceLock('a', async () => 'passed on', passed), 'passed on');
    assert.equal(await fx.admin.exists('opts:a'), 0, 'released');
  });

  it('waitMs: undefined does not wait: a held lock answers lock-held at once', async (t) => {
    if (skipped(t)) return;
    const holder = fx.make();
    const locks = fx.make();
    const held = await holdLock(holder, 'b');
    try {
      const start = performance.now();
      const r = await locks.withSpaceLock('b', async () => 'ran', { waitMs: undefined, signal: undefined });
      assert.deepEqual(r, { skipped: 'lock-held' });
      assert.ok(performance.now() - start < 1_000, 'no wait');
      // A waitMs from config that is set still waits.
      const config: Config = { waitMs: 150 };
      const w = await locks.withSpaceLock('b', async () => 'ran', { waitMs: config.waitMs, signal: config.signal });
      assert.ok(isSkipped(w) && w.skipped === 'timed-out', `got ${JSON.stringify(w)}`);
    } finally {
      held.release();
      await held.done;
    }
  });

  it('still refuses bad values: negative or NaN waitMs, a NaN ttl', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    await assert.rejects(locks.withSpaceLock('c', async () => 1, { waitMs: -1, signal: undefined }), RangeError);
    await assert.rejects(locks.withSpaceLock('c', async () => 1, { waitMs: Number.NaN }), RangeError);
    assert.throws(() => new SpaceLock(fx.redis, { ttlMs: Number.NaN, logger: undefined }), RangeError);
    assert.throws(() => new SpaceLock(fx.redis, { waitGraceMs: -5, owner: undefined }), RangeError);
  });

  it('refuses a ttl below 10 ms, as the Rust client does', (t) => {
    if (skipped(t)) return;
    assert.throws(() => new SpaceLock(fx.redis, { ttlMs: 9 }), /ttlMs must be at least 10 ms/);
    assert.throws(() => new SpaceLock(fx.redis, { ttlMs: 0.5 }), RangeError);
    // (Not run: an ACQUIRE is bounded by the ttl, and a fresh connection's handshake takes longer than 10 ms.)
    assert.doesNotThrow(() => fx.make({ ttlMs: 10 }));
  });
});

describe('logging', () => {
  const fx = withServer('log:');
  const consoleMethods = ['log', 'info', 'warn', 'error', 'debug', 'trace'] as const;

  /**
   * Runs a lock cycle that has something to report: the key is deleted
   * under the body, so the heartbeat reports a lost lease and the release
   * finds the lock no longer ours.
   */
  async function cycleThatLogs(locks: SpaceLock, name: string): Promise<void> {
    await locks.withSpaceLock(name, async (lease) => {
      await fx.admin.del(lease.key);
      await waitFor('the lease to be lost', () => lease.signal.aborted, 5_000);
    });
  }

  it('prints nothing to the console without a logger', async (t) => {
    if (skipped(t)) return;
    const printed: string[] = [];
    const saved = consoleMethods.map((m) => [m, console[m]] as const);
    for (const m of consoleMethods) console[m] = (...args: unknown[]) => void printed.push(`${m}: ${args.join(' ')}`);
    try {
      const locks = fx.track(new SpaceLock(fx.redis, { keyPrefix: 'log:', ttlMs: 300 }));
      await cycleThatLogs(locks, 'quiet');
      // A lock held elsewhere, a wait that times out: nothing to print either.
      await locks.withSpaceLock('quiet', async () => {
        const other = fx.track(new SpaceLock(fx.redis, { keyPrefix: 'log:', ttlMs: 300 }));
        await other.withSpaceLock('quiet', async () => 1, { waitMs: 50 });
      });
    } finally {
      for (const [m, f] of saved) console[m] = f as never;
    }
    assert.deepEqual(printed, []);
  });

  it('sends the same messages to an injected logger', async (t) => {
    if (skipped(t)) return;
    const logger = recordingLogger();
    const locks = fx.make({ ttlMs: 300, logger });
    await cycleThatLogs(locks, 'heard');
    await waitFor('the release to be logged', () => logger.logs.length > 0, 2_000);
    assert.ok(
      logger.warns.some((w) => w.includes('lease lost') && w.includes('log:heard')),
      `warns: ${JSON.stringify(logger.warns)}`,
    );
    assert.ok(
      logger.logs.some((l) => l.includes('log:heard') && l.includes('no longer ours')),
      `logs: ${JSON.stringify(logger.logs)}`,
    );
  });
});
