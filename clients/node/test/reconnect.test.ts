/**
 * The heartbeat after an outage: when the connection comes back, held leases
 * are refreshed at once rather than at the next tick, so an outage that ends
 * in the last third of the ttl does not lose a lease the server still holds.
 *
 * The outage is a TCP proxy in front of the real server: it cuts every
 * connection through it and refuses new ones until it is reopened, which is
 * what a restarting server or a network blip looks like to ioredis.
 */
import assert from 'node:assert/strict';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { describe, it } from 'node:test';
import { SpaceLock } from '../src';
import { recordingLogger, skipped, sleep, withServer } from './harness';

/** A loopback TCP proxy to `target` that can be cut ({@link cut}) and reopened ({@link open}). */
class Proxy {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  port = 0;

  constructor(private readonly target: number) {}

  /** Listens (on the same port as before, after a {@link cut}). */
  async open(): Promise<void> {
    const server = createServer((client) => {
      const upstream = createConnection({ port: this.target, host: '127.0.0.1' });
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('error', () => undefined);
        s.on('close', () => {
          this.sockets.delete(s);
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, '127.0.0.1', () => resolve());
    });
    this.port = (server.address() as { port: number }).port;
    this.server = server;
  }

  /** Stops listening (new connections are refused) and drops every open connection. */
  async cut(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const s of this.sockets) s.destroy();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

describe('reconnect', () => {
  const fx = withServer('reconnect:');

  it('an outage that ends in the last third of the ttl: the lease is refreshed as soon as the connection is back, and survives', async (t) => {
    if (skipped(t)) return;
    const ttl = 1_500; // refreshed every 500 ms
    const proxy = new Proxy(fx.server.port);
    await proxy.open();
    // Reconnect attempts every 20 ms, so the connection is back within
    // moments of the proxy reopening (ioredis' default backs off further).
    const redis = fx.server.client({ port: proxy.port, retryStrategy: () => 20 });
    const logger = recordingLogger();
    const locks = fx.track(new SpaceLock(redis, { keyPrefix: 'reconnect:', ttlMs: ttl, logger }));
    try {
      const r = await locks.withSpaceLock('outage', async (lease) => {
        const start = performance.now();
        await sleep(50); // the heartbeat connection is up (the lease is < 100 ms old)
        await proxy.cut();
        // Both ticks inside the outage (at about 500 and 1000 ms) fail. The
        // proxy reopens at 1150 ms, in the last third of the lease's ttl; the
        // next tick (1500 ms) would come at its deadline: too late.
        await sleep(1_150 - (performance.now() - start));
        await proxy.open();
        const reopenedAt = performance.now() - start;
        assert.ok(reopenedAt < 1_300, `reopened at ${reopenedAt.toFixed(0)} ms`);
        await sleep(1_900 - (performance.now() - start)); // past the deadline the old refresh left
        assert.equal(lease.signal.aborted, false, `aborted: ${String(lease.signal.reason)}`);
        assert.equal(lease.lostReason(), undefined);
        assert.equal(await fx.admin.get('reconnect:outage'), lease.owner, 'the server still holds the lock for us');
        return 'survived';
      });
      assert.equal(r, 'survived');
      assert.ok(
        !logger.warns.some((w) => w.includes('lease lost')),
        `no lease was reported lost:\n${logger.warns.join('\n')}`,
      );
    } finally {
      await proxy.cut();
    }
  });
});
