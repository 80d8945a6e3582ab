/**
 * The pieces under the hot path, without a server: the list threaded through
 * its items, and the reply deadlines that share one timer. (Their behaviour
 * against a real server, a SIGSTOPped one and a write pause, is in
 * faults.test.ts.) The "connection" here is a sink that never answers.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { LockCommand, type RedisConnection } from '../src/connection';
import { ReplyDeadlines } from '../src/deadlines';
import { COMMAND_TIMED_OUT } from '../src/errors';
import { LinkedList, type Linked } from '../src/list';
import { waitFor } from './harness';

class Item implements Linked<Item> {
  linked = false;
  prevLink: Item | undefined = undefined;
  nextLink: Item | undefined = undefined;
  constructor(readonly n: number) {}
}

const silent = { sendCommand: () => undefined } as unknown as RedisConnection;

/**
 * The deadline timer is unref'ed (in use, the connection's socket keeps the
 * process alive); with no socket here, a ref'ed interval does, for `fn`.
 */
async function alive<T>(fn: () => Promise<T>): Promise<T> {
  const keep = setInterval(() => undefined, 1_000);
  try {
    return await fn();
  } finally {
    clearInterval(keep);
  }
}

function outcome(p: Promise<unknown>): Promise<{ ms: number; err: string | undefined }> {
  const start = performance.now();
  return p.then(
    () => ({ ms: performance.now() - start, err: undefined }),
    (e: Error) => ({ ms: performance.now() - start, err: e.message }),
  );
}

describe('LinkedList', () => {
  it('adds in order, deletes anywhere, ignores repeats, and lets forEach delete as it goes', () => {
    const list = new LinkedList<Item>();
    const items = Array.from({ length: 6 }, (_, i) => new Item(i));
    for (const it of items) list.add(it);
    list.add(items[2]!); // already in: no-op
    assert.equal(list.size, 6);
    list.delete(items[0]!); // head
    list.delete(items[5]!); // tail
    list.delete(items[3]!); // middle
    list.delete(items[3]!); // not in: no-op
    const seen: number[] = [];
    list.forEach((it) => {
      seen.push(it.n);
      if (it.n % 2 === 0) list.delete(it);
    });
    assert.deepEqual(seen, [1, 2, 4]);
    const left: number[] = [];
    list.forEach((it) => left.push(it.n));
    assert.deepEqual(left, [1]);
    assert.equal(list.size, 1);
    assert.equal(list.has(items[1]!), true);
    assert.equal(list.has(items[2]!), false);
    list.add(items[0]!); // a deleted item can come back, at the end
    const again: number[] = [];
    list.forEach((it) => again.push(it.n));
    assert.deepEqual(again, [1, 0]);
  });
});

describe('ReplyDeadlines', () => {
  it('rejects each unanswered command at its own bound, a shorter bound sent later first', () =>
    alive(async () => {
      const d = new ReplyDeadlines();
      const long = outcome(d.send(silent, new LockCommand('get', ['a']), 300));
      const short = outcome(d.send(silent, new LockCommand('get', ['b']), 60));
      const [l, s] = await Promise.all([long, short]);
      assert.equal(s.err, COMMAND_TIMED_OUT);
      assert.equal(l.err, COMMAND_TIMED_OUT);
      assert.ok(s.ms >= 55 && s.ms < 250, `short bound gave up after ${s.ms.toFixed(0)} ms`);
      assert.ok(l.ms >= 295 && l.ms < 550, `long bound gave up after ${l.ms.toFixed(0)} ms`);
      assert.equal(d.size, 0);
    }),
  );

  it('leaves a command marked done alone, and keeps the timer for the rest', () =>
    alive(async () => {
      const d = new ReplyDeadlines();
      const answered = new LockCommand('get', ['a']);
      const p = d.send(silent, answered, 50);
      const other = outcome(d.send(silent, new LockCommand('get', ['b']), 120));
      answered.resolve('reply');
      assert.equal(await p, 'reply');
      d.done(answered);
      assert.equal(d.size, 1);
      const o = await other;
      assert.equal(o.err, COMMAND_TIMED_OUT);
      assert.ok(o.ms >= 115, `gave up after ${o.ms.toFixed(0)} ms`);
    }),
  );

  it('drops a command nobody marked done at its deadline, without touching its reply', () =>
    alive(async () => {
      const d = new ReplyDeadlines();
      const c = new LockCommand('get', ['a']);
      const p = d.send(silent, c, 40);
      c.resolve('early');
      assert.equal(await p, 'early');
      await waitFor('the deadline to drop it', () => d.size === 0, 2_000, 5);
      assert.equal(await p, 'early');
    }),
  );
});
