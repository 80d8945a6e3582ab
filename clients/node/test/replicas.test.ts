/**
 * Replica-acknowledged grants and refreshes (`replicas`, `ackTimeoutMs`,
 * `waitAof`) on a real primary with a real replica, whose replication link
 * runs through a proxy that a test can stall: a grant counts, and a refresh
 * moves the lease's deadline, only once enough replicas have it; a grant
 * too few acknowledge is released and reported as `'not-acknowledged'`,
 * never as `'lock-held'`, and its body never runs.
 */
import assert from 'node:assert/strict';
import { readdirSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { describe, it } from 'node:test';
import {
  isSkipped,
  LeaseLostError,
  NotAcknowledgedError,
  SpaceLock,
  SpaceLockDropIn,
  SpaceLockError,
  type Outcome,
} from '../src';
import {
  commandCalls,
  holdLock,
  recordingLogger,
  skipped,
  sleep,
  spacelockStat,
  startReplicated,
  waitFor,
  withCluster,
  withReplicas,
  withServer,
} from './harness';

/** An outcome in a message (tokens are bigints). */
const show = (v: unknown): string => JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? `${x}n` : x));

/**
 * Waits until `n` replicas have acknowledged everything the primary wrote so
 * far: a write on `admin`, then `WAIT` on it (which counts acknowledgements
 * of that connection's last write, and so of everything before it).
 */
async function caughtUp(admin: Redis, n: number): Promise<void> {
  await admin.set('rep:caught-up', String(performance.now()));
  await waitFor('the replicas to catch up', async () => Number(await admin.call('WAIT', String(n), '100')) >= n, 10_000);
}

describe('replica-acknowledged grants', () => {
  const fx = withReplicas('rep:', 1);

  it('replicas: 1 with a healthy replica: the grant counts, fn runs, the replica holds the lock with the same owner', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make({ replicas: 1, ackTimeoutMs: 1_000 });
    const waitsBefore = await commandCalls(fx.admin, 'wait');
    const o = await locks.withSpaceLockOutcome('healthy', async (lease) => {
      // Acknowledged before fn started: the replica has the grant already, no waiting here.
      return { owner: lease.owner, onReplica: await fx.replicaAdmins[0]!.get('rep:healthy') };
    });
    assert.ok(!isSkipped(o), `ran, got ${show(o)}`);
    assert.equal(o.value.onReplica, o.value.owner, 'the replica held the lock, with the same owner, as fn started');
    assert.equal(typeof o.token, 'bigint');
    assert.ok((await commandCalls(fx.admin, 'wait')) > waitsBefore, 'the grant was followed by WAIT');
    assert.equal(await fx.admin.exists('rep:healthy'), 0, 'released');

    // The same through the server's wait path (waitMs) and the drop-in.
    const waited = await locks.withSpaceLock('healthy', async (lease) => fx.replicaAdmins[0]!.get(lease.key), { waitMs: 1_000 });
    assert.match(String(waited), /:\d+$/, 'the replica held it in the waiting path too');
    const dropIn = new SpaceLockDropIn(locks);
    assert.equal(await dropIn.withSpaceLock('healthy', async () => 'drop-in ran'), 'drop-in ran');
  });

  it('replicas: 2 with only one replica: not-acknowledged (1 of 2), fn never runs, the lock is released at once', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make({ replicas: 2, ackTimeoutMs: 150 });
    let ran = 0;
    const body = async (): Promise<string> => {
      ran++;
      return 'ran';
    };
    const o: Outcome<string> = await locks.withSpaceLockOutcome('short', body);
    assert.deepEqual(o, { skipped: 'not-acknowledged', acknowledged: 1, required: 2 });
    assert.equal(await fx.admin.exists('rep:short'), 0, 'the grant was released before the outcome came back');
    assert.ok(isSkipped(o));

    // withSpaceLock, the server wait path (waitMs), and the local FIFO wait
    // (a second call of this SpaceLock queued behind the first): each grant
    // is reported, none as lock-held.
    const [a, b] = await Promise.all([
      locks.withSpaceLock('short', body, { waitMs: 2_000 }),
      locks.withSpaceLock('short', body, { waitMs: 2_000 }),
    ]);
    assert.deepEqual(a, { skipped: 'not-acknowledged', acknowledged: 1, required: 2 });
    assert.deepEqual(b, { skipped: 'not-acknowledged', acknowledged: 1, required: 2 });
    assert.equal(await fx.admin.exists('rep:short'), 0);

    // The drop-in keeps the existing service's result type: it rejects instead.
    const dropIn = new SpaceLockDropIn(locks);
    await assert.rejects(dropIn.withSpaceLock('short', body), (err: unknown) => {
      assert.ok(err instanceof NotAcknowledgedError, String(err));
      assert.equal(err.acknowledged, 1);
      assert.equal(err.required, 2);
      assert.match(err.message, /1 of 2 replicas acknowledged/);
      return true;
    });
    assert.equal(ran, 0, 'fn never ran');
    assert.equal(await fx.admin.exists('rep:short'), 0);
  });

  it('a grant from the server wait queue while the replica link is stalled: not-acknowledged (WAIT covers the module-written grant)', async (t) => {
    if (skipped(t)) return;
    const holder = fx.make();
    const waiter = fx.make({ replicas: 1, ackTimeoutMs: 300, ttlMs: 3_000 });
    // The waiter's connections (its command connection, and the pooled one
    // its wait will reuse) write, and have that acknowledged, before the
    // stall: a WAIT that counted a connection's earlier writes instead of the
    // module's grant would answer 1 below.
    assert.equal(await waiter.withSpaceLock('queue', async () => 'warm', { waitMs: 1_000 }), 'warm');
    const held = await holdLock(holder, 'queue');
    let ran = false;
    const outcome = waiter.withSpaceLockOutcome(
      'queue',
      async () => {
        ran = true;
      },
      { waitMs: 5_000 },
    );
    await waitFor('the waiter to queue on the server', async () => (await holder.info('queue'))?.waiters === 1);
    // Whatever was written so far (queueing included) is acknowledged: only
    // the grant, written after the stall, is left for the waiter's WAIT.
    await caughtUp(fx.admin, 1);
    const handoffs = await spacelockStat(fx.admin, 'handoffs');
    fx.proxies[0]!.pause();
    try {
      held.release(); // the module grants the lock to the waiter as the holder releases it
      await held.done;
      const o = await outcome;
      assert.equal(await spacelockStat(fx.admin, 'handoffs'), handoffs + 1, 'granted by the server wait queue');
      assert.deepEqual(o, { skipped: 'not-acknowledged', acknowledged: 0, required: 1 });
      assert.equal(ran, false, 'fn never ran');
      assert.equal(await fx.admin.exists('rep:queue'), 0, 'released on the primary');
    } finally {
      fx.proxies[0]!.resume();
    }
    await caughtUp(fx.admin, 1);
  });

  it('the caller aborting while the grant waits for acknowledgement: rejects with its reason, fn never runs, the grant is released', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make({ replicas: 1, ackTimeoutMs: 300 });
    let ran = false;
    fx.proxies[0]!.pause();
    try {
      for (const waitMs of [0, 1_000]) {
        const ac = new AbortController();
        const call = locks.withSpaceLock(
          'abort',
          async () => {
            ran = true;
          },
          { waitMs, signal: ac.signal },
        );
        await waitFor('the grant', async () => (await fx.admin.exists('rep:abort')) === 1);
        ac.abort(new Error('caller gave up'));
        await assert.rejects(call, /caller gave up/);
        await waitFor('the release', async () => (await fx.admin.exists('rep:abort')) === 0, 2_000);
      }
    } finally {
      fx.proxies[0]!.resume();
    }
    assert.equal(ran, false, 'fn never ran');
    await caughtUp(fx.admin, 1);
  });

  it('a refresh not acknowledged does not move the deadline: the lease is lost within one ttl of the stall; a new lease works once the link is back', async (t) => {
    if (skipped(t)) return;
    const ttlMs = 600;
    const logger = recordingLogger();
    const locks = fx.make({ replicas: 1, ttlMs, logger });
    let stalledAt = 0;
    let lostAt = 0;
    const o = await locks.withSpaceLockOutcome('refresh', async (lease) => {
      await sleep(ttlMs); // refreshes acknowledged: held past a ttl
      assert.equal(lease.isLost(), false, 'acknowledged refreshes keep the lease');
      fx.proxies[0]!.pause();
      stalledAt = performance.now();
      const why = await new Promise<unknown>((resolve) => lease.signal.addEventListener('abort', () => resolve(lease.signal.reason)));
      lostAt = performance.now();
      assert.ok(why instanceof LeaseLostError && why.reason === 'expired', `lost as expired, got ${String(why)}`);
      // The primary took every refresh: only the acknowledgements were missing.
      assert.equal(await fx.admin.get(lease.key), lease.owner, 'the primary still holds it for this lease');
      return 'done';
    });
    fx.proxies[0]!.resume();
    const afterStall = lostAt - stalledAt;
    // Its deadline is the last acknowledged refresh's start + ttl: sent at
    // most an interval (ttl/3) and one unacknowledged tick before the stall.
    assert.ok(afterStall <= ttlMs + 50, `reported lost within one ttl of the stall (${afterStall.toFixed(0)} ms)`);
    assert.ok(afterStall >= ttlMs / 3 - 50, `not before the last acknowledged deadline (${afterStall.toFixed(0)} ms)`);
    assert.ok(!isSkipped(o));
    assert.equal(o.lost, 'expired');
    assert.ok(logger.warns.some((w) => /acknowledged by 0 of 1 replicas/.test(w)), logger.warns.join('\n'));

    await caughtUp(fx.admin, 1);
    const again = await locks.withSpaceLockOutcome('refresh', async (lease) => {
      await sleep(ttlMs + 200);
      return fx.replicaAdmins[0]!.get(lease.key);
    });
    assert.ok(!isSkipped(again), show(again));
    assert.equal(again.lost, undefined, 'held past a ttl with the link back');
    assert.match(String(again.value), /:\d+$/, 'the replica has the new lease');
  });
});

describe('replicas: 0', () => {
  // A server of its own: nothing another test left blocked can run a WAIT here.
  const own = withServer('norep:');

  it('replicas: 0 (the default) sends no WAIT, in any path', async (t) => {
    if (skipped(t)) return;
    const locks = own.make({ ttlMs: 300 });
    const waits = await commandCalls(own.admin, 'wait');
    const refreshes = await commandCalls(own.admin, 'spacelock.refresh');
    await locks.withSpaceLock('none', async () => sleep(400)); // refreshed meanwhile
    await locks.withSpaceLock('none', async () => 'v', { waitMs: 500 });
    assert.ok((await commandCalls(own.admin, 'spacelock.refresh')) > refreshes, 'the heartbeat ran');
    assert.equal(await commandCalls(own.admin, 'wait'), waits, 'no WAIT');
    assert.equal(await commandCalls(own.admin, 'waitaof'), 0, 'no WAITAOF');
  });
});

describe('replicas on a cluster', () => {
  const fx = withCluster('rc:', 3);

  it('the WAIT goes to the node that granted the lock (routed by its key), never MOVED', async (t) => {
    if (skipped(t)) return;
    // No replicas in this cluster: every grant is not acknowledged (0 of 1).
    const locks = fx.make({ replicas: 1, ackTimeoutMs: 50 });
    const calls = (command: string): Promise<number[]> => Promise.all(fx.nodeAdmins.map((n) => commandCalls(n, command)));
    const acquiresBefore = await calls('spacelock.acquire');
    const waitsBefore = await calls('wait');
    const names = Array.from({ length: 9 }, (_, i) => `space-${i}`);
    for (const n of names) {
      assert.deepEqual(await locks.withSpaceLock(n, async () => 'ran'), { skipped: 'not-acknowledged', acknowledged: 0, required: 1 });
      assert.equal(await fx.admin.exists(`rc:${n}`), 0, `rc:${n} released`);
    }
    const acquires = (await calls('spacelock.acquire')).map((c, i) => c - acquiresBefore[i]!);
    const waits = (await calls('wait')).map((c, i) => c - waitsBefore[i]!);
    assert.deepEqual(waits, acquires, 'one WAIT on each node per grant it made');
    assert.ok(acquires.filter((c) => c > 0).length >= 2, `grants on several nodes: ${acquires.join(', ')}`);
    let moved = 0;
    for (const node of fx.nodeAdmins) moved += Number(/errorstat_MOVED:count=(\d+)/.exec(await node.info('errorstats'))?.[1] ?? 0);
    assert.equal(moved, 0);
  });
});

describe('replica acknowledgement options', () => {
  it('rejects bad values with a clear RangeError', () => {
    const redis = {} as never; // never reached: the options are checked first
    const bad: Array<[string, object, RegExp]> = [
      ['replicas -1', { replicas: -1 }, /replicas must be a whole number ≥ 0, got -1/],
      ['replicas 1.5', { replicas: 1.5 }, /replicas must be a whole number ≥ 0, got 1.5/],
      ['replicas NaN', { replicas: Number.NaN }, /replicas must be a whole number/],
      ['replicas "1"', { replicas: '1' }, /replicas must be a whole number/],
      ['ackTimeoutMs 0', { replicas: 1, ackTimeoutMs: 0 }, /ackTimeoutMs must be a number > 0, got 0/],
      ['ackTimeoutMs -5', { replicas: 1, ackTimeoutMs: -5 }, /ackTimeoutMs must be a number > 0/],
      ['ackTimeoutMs = ttl', { replicas: 1, ttlMs: 600, ackTimeoutMs: 600 }, /ackTimeoutMs must be less than ttlMs \(600\)/],
      ['ackTimeoutMs > ttl', { replicas: 1, ttlMs: 600, ackTimeoutMs: 900 }, /ackTimeoutMs must be less than ttlMs \(600\)/],
      ['ackTimeoutMs > default ttl', { replicas: 1, ackTimeoutMs: 30_000 }, /less than ttlMs \(30000\)/],
      ['waitAof "yes"', { waitAof: 'yes' }, /waitAof must be true or false/],
    ];
    for (const [what, options, message] of bad) {
      assert.throws(() => new SpaceLock(redis, options as never), (err: unknown) => {
        assert.ok(err instanceof RangeError, `${what}: ${String(err)}`);
        assert.match(err.message, message, what);
        return true;
      });
    }
  });
});

describe('waitAof', () => {
  const fx = withServer('aof:');

  it('on a server without WAITAOF (Redis < 7.2): a clear error, not not-acknowledged; fn never runs; the lock is released', async (t) => {
    if (skipped(t)) return;
    const info = (await fx.admin.call('COMMAND', 'INFO', 'WAITAOF')) as unknown[];
    if (info[0] !== null) {
      t.skip('this server has WAITAOF (Redis ≥ 7.2 or Valkey): the error case needs one without it');
      return;
    }
    const locks = fx.make({ waitAof: true, replicas: 0 });
    let ran = false;
    const body = async (): Promise<void> => {
      ran = true;
    };
    for (const options of [{}, { waitMs: 500 }]) {
      await assert.rejects(locks.withSpaceLockOutcome('old', body, options), (err: unknown) => {
        assert.ok(err instanceof SpaceLockError, String(err));
        assert.match(err.message, /waitAof: the server refused WAITAOF .*unknown command.*Redis ≥ 7\.2/i);
        return true;
      });
      assert.equal(await fx.admin.exists('aof:old'), 0, 'released');
    }
    assert.equal(ran, false);
  });

  it('on a server with WAITAOF and appendonly yes: the grant is acknowledged (Valkey 9.1 from the compat cache)', async (t) => {
    if (skipped(t)) return;
    const bin = findValkey91();
    if (!bin) {
      t.skip(`no valkey-server 9.1 under ${cacheDir()} (scripts/fetch-servers.sh puts it there)`);
      return;
    }
    const set = await startReplicated(1, { bin, args: [['appendonly', 'yes'], ['appendfsync', 'always']] });
    try {
      const redis = set.primary.client();
      const locks = new SpaceLock(redis, { keyPrefix: 'aof:', waitAof: true, replicas: 1, ackTimeoutMs: 2_000, ttlMs: 10_000 });
      try {
        const o = await locks.withSpaceLockOutcome('new', async (lease) => lease.owner);
        assert.ok(!isSkipped(o), show(o));
        assert.equal(await commandCalls(redis, 'waitaof') > 0, true, 'acknowledged by WAITAOF');
      } finally {
        await locks.close();
      }
      // With appendonly off on the server, the same option is a clear error too.
      await redis.config('SET', 'appendonly', 'no');
      const off = new SpaceLock(redis, { keyPrefix: 'aof:', waitAof: true, ttlMs: 10_000 });
      try {
        await assert.rejects(off.withSpaceLock('off', async () => 'ran'), /waitAof: the server refused WAITAOF/);
      } finally {
        await off.close();
      }
    } finally {
      await set.dispose();
    }
  });
});

function cacheDir(): string {
  return process.env.SPACELOCK_CACHE ?? path.join(homedir(), '.cache', 'spacelock');
}

/** A `valkey-server` of version 9.1 in the compat servers' cache, if one is there. */
function findValkey91(): string | undefined {
  const found: string[] = [];
  const walk = (dir: string, depth: number): void => {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      return;
    }
    for (const n of names) {
      const p = path.join(dir, n);
      if (n === 'valkey-server') found.push(p);
      else if (depth < 6 && statSync(p, { throwIfNoEntry: false })?.isDirectory()) walk(p, depth + 1);
    }
  };
  walk(cacheDir(), 0);
  return found.find((p) => /9\.1/.test(p)) ?? undefined;
}

