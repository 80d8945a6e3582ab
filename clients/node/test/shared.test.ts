/**
 * Shared (reader-writer) and counted locks: withSharedLock and withPermit
 * against a real server with the module. Readers hold a name together, a
 * writer waits for them and keeps later readers behind it, a counted name
 * never has more than its limit, the heartbeat keeps permits held past
 * their ttl, a share whose lease ends aborts its signal and goes to the
 * queue at once, and a name of the other kind is a WrongModeError.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isSkipped, LeaseLostError, ModuleNotLoadedError, SpaceLockError, WrongModeError, type Outcome } from '../src';
import { skipped, sleep, spacelockStat, stallEventLoop, waitFor, withReplicas, withServer } from './harness';

/** A gate: `open()` lets every `wait` through. */
function gate(): { wait: Promise<void>; open: () => void } {
  let open!: () => void;
  const wait = new Promise<void>((r) => (open = r));
  return { wait, open };
}

describe('shared and counted locks', () => {
  const fx = withServer('shared:');
  const waiting = (): Promise<number> => spacelockStat(fx.admin, 'waiting_clients');

  it('readers hold a name together, each with its own token, and the last release frees it', async (t) => {
    if (skipped(t)) return;
    const a = fx.make();
    const b = fx.make();
    const g = gate();
    let inside = 0;
    const tokens: bigint[] = [];
    const read = (locks: typeof a): Promise<unknown> =>
      locks.withSharedLock('readers', async (lease) => {
        inside++;
        tokens.push(lease.token!);
        await g.wait;
        return lease.token;
      });
    // Two readers of one SpaceLock (no 'in-progress' between them) and one of another.
    const runs = [read(a), read(a), read(b)];
    await waitFor('three readers inside', () => inside === 3, 5_000);
    assert.equal(a.activeLeases, 2);
    const info = await a.info('readers');
    assert.ok(info);
    assert.equal(info.mode, 'shared');
    assert.equal(info.limit, 0);
    assert.deepEqual(
      info.holders.map((h) => h.token),
      [...tokens].sort((x, y) => (x < y ? -1 : 1)),
      'every holder, in token order',
    );
    assert.ok(info.holders.every((h) => h.ttlMs > 0 && h.owner.length > 0));
    assert.equal(info.token, info.holders[2]!.token, 'the newest holder');
    g.open();
    const results = await Promise.all(runs);
    for (const r of results) assert.equal(typeof r, 'bigint');
    assert.equal(new Set(tokens).size, 3, 'one grant each');
    assert.equal(await fx.admin.exists('shared:readers'), 0, 'the last release deletes the key');
    const o = await a.withSharedLockOutcome('readers', async () => 'read');
    assert.ok(!isSkipped(o));
    assert.equal(o.value, 'read');
    assert.equal(typeof o.token, 'bigint');
    assert.equal(o.lost, undefined);
  });

  it('a writer waits for the readers and keeps later readers behind it', async (t) => {
    if (skipped(t)) return;
    const readers = fx.make();
    const writer = fx.make();
    const late = fx.make();
    const g = gate();
    let inside = 0;
    const events: string[] = [];
    const early = [1, 2].map(() =>
      readers.withSharedLock('rw', async () => {
        inside++;
        await g.wait;
        events.push('reader end');
      }),
    );
    await waitFor('two readers inside', () => inside === 2, 5_000);
    const base = await waiting();
    const write = writer.withSpaceLock(
      'rw',
      async (lease) => {
        events.push('writer start');
        await sleep(50);
        events.push('writer end');
        return lease.token;
      },
      { waitMs: 5_000 },
    );
    await waitFor('the writer queued', async () => (await waiting()) === base + 1);
    // Readers do not barge past the queued writer.
    assert.deepEqual(await late.withSharedLock('rw', async () => 'ran'), { skipped: 'lock-held' });
    const lateRead = late.withSharedLock('rw', async () => events.push('late reader'), { waitMs: 5_000 });
    await waitFor('the late reader queued', async () => (await waiting()) === base + 2);
    await sleep(50);
    assert.deepEqual(events, [], 'nobody ran while the readers hold');
    g.open();
    const [writeToken] = await Promise.all([write, lateRead, ...early]);
    assert.equal(typeof writeToken, 'bigint');
    assert.deepEqual(events, ['reader end', 'reader end', 'writer start', 'writer end', 'late reader']);
    // A reader that cannot wait long enough times out.
    const w2 = gate();
    let writing = false;
    const hold = writer.withSpaceLock('rw', async () => {
      writing = true;
      await w2.wait;
    });
    await waitFor('the writer holds', () => writing);
    assert.deepEqual(await late.withSharedLock('rw', async () => 'ran', { waitMs: 200 }), { skipped: 'timed-out' });
    w2.open();
    await hold;
  });

  it('a counted name never has more than its limit holders, and grants every waiter in turn', async (t) => {
    if (skipped(t)) return;
    const limit = 3;
    const clients = [fx.make(), fx.make(), fx.make()];
    let inside = 0;
    let most = 0;
    const tokens = new Set<bigint>();
    const runs: Array<Promise<unknown>> = [];
    for (let i = 0; i < 15; i++) {
      const locks = clients[i % clients.length]!;
      runs.push(
        locks.withPermit(
          'slots',
          limit,
          async (lease) => {
            inside++;
            most = Math.max(most, inside);
            tokens.add(lease.token!);
            const info = await fx.admin.hlen('shared:slots');
            // The hash: a mode field and one field per holder.
            assert.ok(info - 1 <= limit, `${info - 1} holders on the server`);
            await sleep(20 + (i % 3) * 10);
            inside--;
            return i;
          },
          { waitMs: 10_000 },
        ),
      );
    }
    const results = await Promise.all(runs);
    assert.deepEqual(results, [...Array(15).keys()], 'every call ran');
    assert.equal(most, limit, `at most ${limit} at once, and the limit was reached`);
    assert.equal(tokens.size, 15);
    // With every permit taken, a call that does not wait is skipped.
    const g = gate();
    let held = 0;
    const holders = [0, 1, 2].map(() =>
      clients[0]!.withPermit('slots', limit, async () => {
        held++;
        await g.wait;
      }),
    );
    await waitFor('every permit held', () => held === limit, 5_000);
    const info = await clients[0]!.info('slots');
    assert.equal(info?.mode, 'limit');
    assert.equal(info?.limit, limit);
    assert.equal(info?.holders.length, limit);
    assert.deepEqual(await clients[1]!.withPermit('slots', limit, async () => 'ran'), { skipped: 'lock-held' });
    const o = await clients[1]!.withPermitOutcome('slots', limit, async () => 'ran', { waitMs: 100 });
    assert.deepEqual(o, { skipped: 'timed-out' });
    g.open();
    await Promise.all(holders);
    assert.equal(await fx.admin.exists('shared:slots'), 0);
  });

  it('a heartbeat keeps two 300 ms permits for 1 s: signals not aborted, CHECK and INFO show them held', async (t) => {
    if (skipped(t)) return;
    const limit = 2;
    const ttlMs = 300;
    const locks = fx.make({ ttlMs });
    const other = fx.make();
    const g = gate();
    interface Seen {
      token: bigint;
      owner: string;
      aborted: boolean;
      lost: unknown;
      check: boolean;
      onServer: unknown;
    }
    const seen: Seen[] = [];
    const hold = (): Promise<Outcome<boolean>> =>
      locks.withPermitOutcome('heartbeat', limit, async (lease) => {
        // More than three ttls of the body (a timer may fire a fraction of a ms early: loop).
        const start = performance.now();
        while (performance.now() - start < 1_000) await sleep(1_000 - (performance.now() - start) + 1);
        seen.push({
          token: lease.token!,
          owner: lease.owner,
          aborted: lease.signal.aborted,
          lost: lease.lostReason(),
          check: await lease.check(),
          onServer: await fx.admin.call('SPACELOCK.CHECK', lease.key, lease.owner, String(lease.token)),
        });
        await g.wait;
        return lease.signal.aborted;
      });
    const runs = [hold(), hold()];
    await waitFor('both permits held for 1 s', () => seen.length === limit, 10_000);
    for (const s of seen) {
      assert.equal(s.aborted, false, 'the signal is not aborted');
      assert.equal(s.lost, undefined, 'not lost');
      assert.equal(s.check, true, 'its grant still checks');
      assert.equal(s.onServer, 1, 'SPACELOCK.CHECK of its grant');
    }
    // The server still counts both permits: INFO lists them, a third call is refused.
    const info = await other.info('heartbeat');
    assert.ok(info);
    assert.equal(info.mode, 'limit');
    assert.equal(info.limit, limit);
    assert.deepEqual(
      info.holders.map((h) => [h.owner, h.token]),
      [...seen].sort((x, y) => (x.token < y.token ? -1 : 1)).map((h) => [h.owner, h.token]),
      'both holders, each with its own token',
    );
    assert.ok(info.holders.every((h) => h.ttlMs > 0 && h.ttlMs <= ttlMs), 'refreshed with the 300 ms ttl');
    assert.deepEqual(await other.withPermit('heartbeat', limit, async () => 'ran'), { skipped: 'lock-held' });
    g.open();
    for (const o of await Promise.all(runs)) {
      assert.ok(!isSkipped(o));
      assert.equal(o.value, false, 'still not aborted when the body ends');
      assert.equal(o.lost, undefined, 'never lost');
    }
    assert.equal(await fx.admin.exists('shared:heartbeat'), 0, 'both released');
  });

  it('a share whose lease ends aborts its signal (expired), and the queued writer gets the name at once', async (t) => {
    if (skipped(t)) return;
    const reader = fx.make({ ttlMs: 300 });
    const writer = fx.make({ ttlMs: 5_000 });
    let reading = false;
    let writerAt = 0;
    let lostAt = 0;
    const read = reader.withSharedLockOutcome('expiry', async (lease) => {
      reading = true;
      await waitFor('the writer queued', async () => (await waiting()) === 1);
      stallEventLoop(450); // GC pause, CPU-bound work: no heartbeat can run
      const reason = await lease.lost;
      lostAt = performance.now();
      assert.equal(reason, 'expired');
      assert.equal((lease.signal.reason as LeaseLostError).reason, 'expired');
      // The body still runs (no RELEASE sent yet): the server ended the share on its own.
      await waitFor('the writer runs', () => writerAt > 0, 3_000);
    });
    await waitFor('the reader holds', () => reading);
    const write = writer.withSpaceLock(
      'expiry',
      async (lease) => {
        writerAt = performance.now();
        return lease.token;
      },
      { waitMs: 5_000 },
    );
    const [o, token] = await Promise.all([read, write]);
    assert.ok(!isSkipped(o));
    assert.equal(o.lost, 'expired');
    assert.equal(typeof token, 'bigint', 'the server handed the ended share on to the writer');
    assert.ok(writerAt > 0 && lostAt > 0);
  });

  it('a name of the other kind is a WrongModeError; a bad limit a RangeError', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    const other = fx.make();
    const g = gate();
    let holding = false;
    const hold = locks.withPermit('mode', 2, async () => {
      holding = true;
      await g.wait;
    });
    await waitFor('a permit held', () => holding);
    await assert.rejects(other.withPermit('mode', 3, async () => 'ran'), (err: unknown) => {
      assert.ok(err instanceof WrongModeError);
      assert.match(err.reply, /^WRONGMODE /);
      assert.equal(err.key, 'shared:mode');
      return true;
    });
    await assert.rejects(other.withSharedLock('mode', async () => 'ran'), WrongModeError);
    await assert.rejects(other.withSpaceLock('mode', async () => 'ran'), WrongModeError);
    // Through the server-side wait too.
    await assert.rejects(other.withSharedLock('mode', async () => 'ran', { waitMs: 1_000 }), WrongModeError);
    // The same limit still fits.
    assert.equal(await other.withPermit('mode', 2, async () => 'ran'), 'ran');
    g.open();
    await hold;
    // A reader-writer name refuses a counted call.
    const g2 = gate();
    let reading = false;
    const read = locks.withSharedLock('rw-mode', async () => {
      reading = true;
      await g2.wait;
    });
    await waitFor('a reader', () => reading);
    await assert.rejects(other.withPermit('rw-mode', 2, async () => 'ran'), WrongModeError);
    g2.open();
    await read;
    for (const bad of [0, 1.5, -1, 1_000_001, Number.NaN]) {
      await assert.rejects(locks.withPermit('mode', bad, async () => 'ran'), RangeError);
    }
    await assert.rejects(locks.withSharedLock('mode', async () => 'ran', { waitMs: -1 }), RangeError);
  });

  it('close() ends a running share: its signal aborts (released) and the share is released', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    let reading = false;
    const read = locks.withSharedLock('closing', async (lease) => {
      reading = true;
      await lease.lost;
      return (lease.signal.reason as LeaseLostError).reason;
    });
    await waitFor('the reader holds', () => reading);
    await locks.close({ timeoutMs: 0 });
    assert.equal(await read, 'released');
    assert.equal(await fx.admin.exists('shared:closing'), 0);
    await assert.rejects(locks.withPermit('closing', 2, async () => 'ran'), SpaceLockError);
  });
});

describe('shared and counted locks with replicas', () => {
  const fx = withReplicas('shared-rep:', 1);

  it('a share or permit counts once the replica acknowledges it; too few acknowledgements: not-acknowledged, released', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make({ replicas: 1, ackTimeoutMs: 300 });
    const onReplica = await locks.withSharedLock('acked', async (lease) =>
      fx.replicaAdmins[0]!.hget(lease.key, lease.owner),
    );
    assert.match(String(onReplica), /^\d+:\d+$/, 'the replica held the share (token:deadline) as fn started');
    assert.equal(
      await locks.withPermit('acked-slots', 2, async () => 'ran', { waitMs: 1_000 }),
      'ran',
      'the waiting path too',
    );
    fx.proxies[0]!.pause();
    try {
      let ran = false;
      const o = await locks.withPermitOutcome('acked-slots', 2, async () => {
        ran = true;
      });
      assert.deepEqual(o, { skipped: 'not-acknowledged', acknowledged: 0, required: 1 });
      assert.equal(ran, false);
      assert.equal(await fx.admin.exists('shared-rep:acked-slots'), 0, 'released on the primary');
    } finally {
      fx.proxies[0]!.resume();
    }
  });
});

describe('shared and counted locks without the module', () => {
  const fx = withServer('shared-lua:', { module: false });

  it("need the module: ModuleNotLoadedError, and a SpaceLockError under fallback: 'lua'", async () => {
    await assert.rejects(fx.make().withSharedLock('x', async () => 'ran'), ModuleNotLoadedError);
    const lua = fx.make({ fallback: 'lua' });
    for (const waitMs of [0, 200]) {
      await assert.rejects(lua.withPermit('x', 2, async () => 'ran', { waitMs }), (err: unknown) => {
        assert.ok(err instanceof SpaceLockError && !(err instanceof ModuleNotLoadedError));
        assert.match(err.message, /counted locks need the spacelock module/);
        return true;
      });
    }
    await assert.rejects(lua.withSharedLock('x', async () => 'ran'), /shared locks need the spacelock module/);
    assert.equal(await lua.withSpaceLock('x', async () => 'exclusive ran'), 'exclusive ran');
    assert.equal(await fx.admin.exists('shared-lua:x'), 0);
  });
});
