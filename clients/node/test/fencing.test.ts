/**
 * Fencing from Node as from Rust: `lease.check()` (SPACELOCK.CHECK) and
 * `lease.fencedWrite()`, the recipe of docs/fencing.md in one call; and what
 * they say under `fallback: 'lua'`, where a lease has no token to check.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { FENCED_WRITE_SCRIPT, SpaceLock, SpaceLockError, type Lease } from '../src';
import { recordingLogger, REPO, skipped, withServer } from './harness';

describe('fencing', () => {
  const fx = withServer('fencing:');

  it('FENCED_WRITE_SCRIPT is the script of docs/fencing.md, byte for byte', () => {
    const doc = readFileSync(path.join(REPO, 'docs/fencing.md'), 'utf8');
    const block = /```lua\n([\s\S]*?)\n```/.exec(doc)?.[1];
    assert.equal(FENCED_WRITE_SCRIPT, block);
  });

  it('check(): true while held, false once released', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    let kept: Lease | undefined;
    const r = await locks.withSpaceLock('check', async (lease) => {
      kept = lease;
      assert.equal(await lease.check(), true);
      assert.equal(await lease.check(), true, 'read-only: asking twice changes nothing');
      return 'held';
    });
    assert.equal(r, 'held');
    assert.equal(await fx.admin.exists('fencing:check'), 0);
    assert.equal(await kept!.check(), false, 'released');
    // A later grant of the same name to the same SpaceLock is a different grant.
    await locks.withSpaceLock('check', async (lease) => {
      assert.equal(await lease.check(), true);
      assert.equal(await kept!.check(), false, 'the old grant does not pass for the new one');
    });
  });

  it('check() and fencedWrite(): false once another owner has the lock; the data keeps the new holder\'s write', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    const other = fx.make();
    const r = await locks.withSpaceLock('taken', async (lease) => {
      assert.equal(await lease.fencedWrite('fencing:taken:data', 'first'), true);
      assert.equal(await fx.admin.get('fencing:taken:data'), 'first');
      // The lock vanishes under the holder (an expiry, a flush) and another owner takes it.
      await fx.admin.del('fencing:taken');
      const newer = await other.withSpaceLock('taken', async (l2) => {
        assert.equal(await l2.fencedWrite('fencing:taken:data', 'newer'), true);
        assert.equal(await lease.check(), false);
        assert.equal(await lease.fencedWrite('fencing:taken:data', 'stale'), false);
        return l2.token;
      });
      assert.equal(typeof newer, 'bigint');
      assert.ok((newer as bigint) > lease.token!, 'the new holder has a higher token');
      return 'done';
    });
    assert.equal(r, 'done');
    assert.equal(await fx.admin.get('fencing:taken:data'), 'newer', 'the stale write was refused');
  });

  it('fencedWrite(): writes while held, refuses once the lease is lost', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make({ ttlMs: 300 });
    const r = await locks.withSpaceLock('lost', async (lease) => {
      assert.equal(await lease.fencedWrite('fencing:lost:data', 'v1'), true);
      await fx.admin.pexpire('fencing:lost', 1); // the lock expires on the server
      assert.equal(await lease.lost, 'not-owner'); // the next refresh answered 0
      assert.equal(await lease.check(), false);
      assert.equal(await lease.fencedWrite('fencing:lost:data', 'v2'), false);
      return 'refused';
    });
    assert.equal(r, 'refused');
    assert.equal(await fx.admin.get('fencing:lost:data'), 'v1');
  });

  it('fencedWrite(): a Buffer value is stored exactly; the key gets the connection\'s ioredis keyPrefix, as on that connection', async (t) => {
    if (skipped(t)) return;
    const prefixed = fx.server.client({ keyPrefix: 'app:' });
    const locks = fx.track(new SpaceLock(prefixed, { keyPrefix: 'fencing:', logger: recordingLogger() }));
    const bytes = Buffer.from([0, 255, 13, 10, 1, 2]);
    await locks.withSpaceLock('prefixed', async (lease) => {
      assert.equal(await fx.admin.exists('app:fencing:prefixed'), 1, 'the lock key carries the connection prefix');
      assert.equal(await lease.check(), true);
      assert.equal(await lease.fencedWrite('doc', bytes), true);
      assert.equal(await lease.fencedWrite('text', 'é'), true);
    });
    assert.deepEqual(await fx.admin.getBuffer('app:doc'), bytes);
    assert.equal(await prefixed.get('text'), 'é', 'read back on the prefixed connection under the same name');
    assert.equal(await fx.admin.exists('doc'), 0);
  });

  it('fencedWrite(): bad input is a clear error, and nothing is written', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    await locks.withSpaceLock('bad', async (lease) => {
      await assert.rejects(lease.fencedWrite('', 'v'), TypeError);
      await assert.rejects(lease.fencedWrite('fencing:bad:data', 42 as unknown as string), TypeError);
    });
    assert.equal(await fx.admin.exists('fencing:bad:data'), 0);
  });

  it('the fenced write in a script of its own, as docs/fencing.md shows it, with the lease\'s token', async (t) => {
    if (skipped(t)) return;
    const locks = fx.make();
    await locks.withSpaceLock('script', async (lease) => {
      const wrote = await fx.admin.eval(
        FENCED_WRITE_SCRIPT,
        2,
        'fencing:script',
        'fencing:script:data',
        lease.owner,
        lease.token!.toString(),
        'v',
      );
      assert.equal(wrote, 'OK');
    });
    assert.equal(await fx.admin.get('fencing:script:data'), 'v');
  });
});

describe('fencing without the module (fallback: lua)', () => {
  const fx = withServer('fencing-lua:', { module: false });

  it('check() and fencedWrite() reject with a SpaceLockError that says why; nothing is written', async () => {
    const locks = fx.make({ fallback: 'lua' });
    const r = await locks.withSpaceLock('nomod', async (lease) => {
      assert.equal(lease.token, undefined);
      await assert.rejects(lease.check(), (err: unknown) => {
        assert.ok(err instanceof SpaceLockError, String(err));
        assert.match(err.message, /fencing token.*fallback: 'lua'.*module/);
        return true;
      });
      await assert.rejects(lease.fencedWrite('fencing-lua:data', 'v'), SpaceLockError);
      return 'ran';
    });
    assert.equal(r, 'ran');
    assert.equal(locks.commandMode, 'lua');
    assert.equal(await fx.admin.exists('fencing-lua:data'), 0);
  });
});
