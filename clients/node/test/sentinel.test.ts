/**
 * A planned Sentinel failover (`SENTINEL FAILOVER`) while a caller waits
 * with `waitMs`, against real servers: a primary and a replica with the
 * module, and one `redis-sentinel` (quorum 1). The SpaceLocks connect
 * through the sentinel as the README's Sentinel setup says
 * (`new Redis({ sentinels, name })`).
 *
 * Each run: a holder holds the lock, a caller waits for it, the sentinel
 * promotes the replica, and the holder lets go around that moment (as the
 * failover starts; once the replica is promoted; once the sentinel names it).
 * The caller must be told the truth: either its body ran under a lease that
 * the server its SpaceLock uses held (and, unless the lease is reported lost,
 * the new primary held it), or it was told `timed-out` and neither server
 * holds the lock in its name. Then the old primary is turned into a replica
 * of the new one, and the next run fails over back. Finally a SpaceLock
 * used before the first failover still runs a plain and a waiting cycle on
 * the primary of the day.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it, type TestContext } from 'node:test';
import { Redis } from 'ioredis';
import { isSkipped, SpaceLock } from '../src';
import { missingModule, recordingLogger, sleep, TestServer, waitFor, holdLock } from './harness';
import { missingSentinel, replicate, replicationInfo, TestSentinel } from './sentinel-harness';

const TTL_MS = 1_500;
const WAIT_MS = 5_000;
const PREFIX = 'sentinel:';
const NAME = 'spacelock-fo';

/** When the holder lets go, in each run. */
const RELEASE_AT = ['as the failover starts', 'once the replica is promoted', 'once the sentinel names it'] as const;

describe('Sentinel failover', () => {
  let skipReason: string | undefined;
  let servers: [TestServer, TestServer] | undefined;
  let sentinel: TestSentinel | undefined;
  const conns: Redis[] = [];
  const locks: SpaceLock[] = [];
  /** A SpaceLock used before the first failover, kept through all of them. */
  let longLived: SpaceLock | undefined;

  /** A connection through the sentinel, as the README says to make it. */
  const viaSentinel = (): Redis => {
    const c = new Redis({ sentinels: sentinel!.sentinels, name: NAME });
    c.on('error', () => undefined);
    conns.push(c);
    return c;
  };
  const make = (redis: Redis): SpaceLock => {
    const l = new SpaceLock(redis, { ttlMs: TTL_MS, keyPrefix: PREFIX, logger: recordingLogger() });
    locks.push(l);
    return l;
  };

  before(async () => {
    skipReason = missingModule() ?? missingSentinel();
    if (skipReason) return;
    const a = await TestServer.start();
    const b = await TestServer.start();
    servers = [a, b];
    await replicate(b, a);
    sentinel = await TestSentinel.start(a, NAME);
    await waitFor('the sentinel to know the replica', () => sentinel!.knowsReplica(b.port), 15_000, 50);
    longLived = make(viaSentinel());
    // Its command, heartbeat and wait connections are open on the first primary.
    assert.equal(await longLived.withSpaceLock('warm', () => 'ran'), 'ran');
    assert.equal(await longLived.withSpaceLock('warm', () => 'ran', { waitMs: 1_000 }), 'ran');
  });

  after(async () => {
    await Promise.all(locks.map((l) => l.close({ timeoutMs: 0 })));
    for (const c of conns) c.disconnect();
    await sentinel?.dispose();
    await Promise.all((servers ?? []).map((s) => s.dispose()));
  });

  const skip = (t: TestContext): boolean => {
    if (skipReason) t.skip(skipReason);
    return skipReason !== undefined;
  };

  it('a caller waiting through a planned failover is told the truth, and nothing stays held in its name (3 runs)', async (t) => {
    if (skip(t)) return;
    let [primary, replica] = servers!;
    const failures: string[] = [];
    for (let run = 0; run < RELEASE_AT.length; run++) {
      const name = `fo:${run}`;
      const key = PREFIX + name;
      const oldAdmin = primary.client();
      const newAdmin = replica.client();
      const holder = make(viaSentinel());
      const waiter = make(viaSentinel());
      // Odd runs: the waiter's SpaceLock has been used already, its connections are on the old primary.
      if (run % 2 === 1) assert.equal(await waiter.withSpaceLock('warm', () => 'ran'), 'ran');
      const mine = (v: string | null): boolean => v !== null && v.startsWith(`${waiter.owner}:`);

      const held = await holdLock(holder, name);
      let body: { checked: boolean; onNewAtEnd: string | null; lostAtEnd: string | undefined } | undefined;
      const waiting = waiter.withSpaceLockOutcome(
        name,
        async (lease) => {
          const checked = await lease.check();
          // Hold on until the sentinel names the new primary and a heartbeat
          // has had time to go there: a lease that only the old primary
          // holds is reported lost by then.
          await waitFor('the sentinel to name the new primary', async () => (await sentinel!.primaryPort()) === replica.port, 10_000, 20);
          await sleep(TTL_MS / 3 + 300);
          body = { checked, onNewAtEnd: await newAdmin.get(key), lostAtEnd: lease.lostReason() };
        },
        { waitMs: WAIT_MS },
      );
      // Let the caller wait past a third of the ttl: its grant is then
      // confirmed by a REFRESH before the body runs.
      await sleep(TTL_MS / 3 + 100);
      await sentinel!.failover();
      if (run === 1) {
        await waitFor('the replica to be promoted', async () => (await replicationInfo(newAdmin)).get('role') === 'master', 10_000, 5);
      } else if (run === 2) {
        await waitFor('the sentinel to name the replica', async () => (await sentinel!.primaryPort()) === replica.port, 10_000, 5);
      }
      held.release();
      await held.done;
      const outcome = await waiting;
      // What each server holds right after the answer, before the old
      // primary is turned into a replica (Sentinel would do that some 10 s later).
      const onOld = await oldAdmin.get(key);
      const onNew = await newAdmin.get(key);
      const told = isSkipped(outcome)
        ? `skipped: ${outcome.skipped}`
        : `ran (lost: ${outcome.lost ?? 'no'}; the new primary held ${body?.onNewAtEnd ?? 'nothing'} at the body's end)`;
      t.diagnostic(
        `run ${run} (holder let go ${RELEASE_AT[run]}): the caller was told ${told}; ` +
          `old primary holds ${onOld ?? 'nothing'}, new primary holds ${onNew ?? 'nothing'} (caller ${waiter.owner})`,
      );
      // Every run goes on to the settling and the next run, so that a failure reports all three.
      try {
        if (isSkipped(outcome)) {
          assert.equal(outcome.skipped, 'timed-out');
          assert.ok(!mine(onOld), `run ${run}: told timed-out, but the old primary holds the lock in its name (${onOld})`);
          assert.ok(!mine(onNew), `run ${run}: told timed-out, but the new primary holds the lock in its name (${onNew})`);
        } else {
          assert.ok(body, 'the body ran to its end');
          assert.equal(body.checked, true, `run ${run}: the body started under a lease its SpaceLock's server did not hold`);
          if (body.lostAtEnd === undefined) {
            assert.ok(mine(body.onNewAtEnd), `run ${run}: lease not reported lost, but the new primary did not hold it (${body.onNewAtEnd})`);
          }
          assert.equal(outcome.lost, body.lostAtEnd);
          assert.ok(!mine(onNew), `run ${run}: the lease was not released on the new primary (${onNew})`);
        }
      } catch (err) {
        failures.push((err as Error).message);
      }

      // The failover settles: the sentinel names the new primary, the old one replicates it.
      await waitFor('the sentinel to name the new primary', async () => (await sentinel!.primaryPort()) === replica.port, 15_000, 20);
      await replicate(primary, replica);
      await waitFor('the sentinel to know the old primary as a replica', () => sentinel!.knowsReplica(primary.port), 15_000, 50);
      for (const [admin, which] of [[oldAdmin, 'old'], [newAdmin, 'new']] as const) {
        const v = await admin.get(key);
        if (mine(v)) failures.push(`run ${run}: after the failover settled, the ${which} primary holds the lock in the caller's name (${v})`);
      }
      oldAdmin.disconnect();
      newAdmin.disconnect();
      [primary, replica] = [replica, primary];
    }
    assert.deepEqual(failures, []);
  });

  it('a SpaceLock used before the failovers runs plain and waiting cycles on the primary of the day', async (t) => {
    if (skip(t)) return;
    const port = await sentinel!.primaryPort();
    const primary = servers!.find((s) => s.port === port)!;
    const admin = primary.client();
    const locks = longLived!;
    const seen: Array<string | null> = [];
    const body = async (lease: { check(): Promise<boolean>; key: string }): Promise<string> => {
      assert.equal(await lease.check(), true);
      seen.push(await admin.get(lease.key));
      return 'ran';
    };
    const signal = AbortSignal.timeout(10_000);
    assert.equal(await locks.withSpaceLock('after', body, { signal }), 'ran');
    assert.equal(await locks.withSpaceLock('after', body, { waitMs: 2_000, signal }), 'ran');
    assert.equal(seen.length, 2);
    for (const v of seen) assert.ok(v?.startsWith(`${locks.owner}:`), `the primary of the day held ${v}`);
    assert.equal(await admin.get(locks.key('after')), null, 'released on the primary of the day');
    admin.disconnect();
  });
});
