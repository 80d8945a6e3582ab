//! Blocking acquire (`SPACELOCK.ACQUIRE … WAIT`) through `with_space_lock_wait`
//! and `acquire_wait`, including its defences against a lost grant: a wait never
//! hangs past its timeout plus the grace, and never leaves a lock behind.

use spacelock_testkit as kit;

use std::time::{Duration, Instant};

use kit::{FakeServer, Proxy, ProxyMode, Server};
use redis::aio::ConnectionManager;
use spacelock_client::{AcquireReply, Error, Options, Outcome, Skipped, SpaceLock};

async fn locks(server: &Server, options: Options) -> SpaceLock<ConnectionManager> {
    locks_at(&server.url(), options).await
}

async fn locks_at(url: &str, options: Options) -> SpaceLock<ConnectionManager> {
    let client = redis::Client::open(url).unwrap();
    let conn = ConnectionManager::new(client.clone()).await.unwrap();
    SpaceLock::new(conn, options).with_wait_connector(client)
}

/// Calls of `command` (e.g. `spacelock.release`) so far, from INFO commandstats.
fn calls(server: &Server, command: &str) -> u64 {
    kit::command_calls(&mut server.conn(), command)
}

fn waiters(server: &Server, key: &str) -> i64 {
    kit::key_waiters(&mut server.conn(), key)
}

fn holder(server: &Server, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut server.conn())
        .unwrap()
}

#[kit::test]
async fn waits_for_the_holder_then_runs() {
    let server = Server::new();
    let a = locks(&server, Options::default()).await;
    let b = locks(&server, Options::default()).await;
    let key = a.key("space");
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let a2 = a.clone();
    let holder_task = tokio::spawn(async move {
        a2.with_space_lock("space", |lease| async move {
            held_tx.send(lease.token()).unwrap();
            stop_rx.await.unwrap();
        })
        .await
        .unwrap()
    });
    let first = held_rx.await.unwrap();
    let b2 = b.clone();
    let waiter = tokio::spawn(async move {
        b2.with_space_lock_wait("space", Duration::from_secs(5), |lease| async move {
            (lease.token(), Instant::now())
        })
        .await
        .unwrap()
    });
    assert!(kit::wait_until(Duration::from_secs(2), || waiters(
        &server, &key
    ) == 1));
    let released = Instant::now();
    stop_tx.send(()).unwrap();
    assert!(holder_task.await.unwrap().is_ran());
    let (token, ran_at) = waiter.await.unwrap().ran().unwrap();
    assert!(token > first, "{token} > {first}");
    let handoff = ran_at.duration_since(released);
    assert!(
        handoff < Duration::from_millis(200),
        "handoff took {handoff:?}"
    );
    assert!(kit::wait_until(Duration::from_secs(1), || holder(
        &server, &key
    )
    .is_none()));
    assert!(!b.is_running("space"));
}

#[kit::test]
async fn times_out_while_held() {
    let server = Server::new();
    let a = locks(&server, Options::default()).await;
    let b = locks(&server, Options::default()).await;
    assert!(matches!(
        a.acquire("space").await.unwrap(),
        AcquireReply::Acquired { .. }
    ));
    let t0 = Instant::now();
    let outcome = b
        .with_space_lock_wait("space", Duration::from_millis(200), |_| async {})
        .await
        .unwrap();
    let waited = t0.elapsed();
    assert_eq!(outcome, Outcome::Skipped(Skipped::TimedOut));
    assert!(waited >= Duration::from_millis(190), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    assert!(!b.is_running("space"));
    assert_eq!(holder(&server, &a.key("space")).as_deref(), Some(a.owner()));
    assert_eq!(
        b.acquire_wait("space", Duration::from_millis(50))
            .await
            .unwrap(),
        AcquireReply::Held
    );
}

/// A blocked wait must not stall the heartbeats of other leases of the same
/// `SpaceLock` (they use the shared connection, the wait a dedicated one).
#[kit::test]
async fn a_blocked_wait_does_not_stall_heartbeats() {
    let server = Server::new();
    let other = locks(&server, Options::default()).await;
    let a = locks(&server, Options::default().ttl(Duration::from_millis(300))).await;
    assert!(matches!(
        other.acquire("busy").await.unwrap(),
        AcquireReply::Acquired { .. }
    ));
    let outcome = a
        .with_space_lock("held", |lease| {
            let a = a.clone();
            async move {
                let waited = a
                    .with_space_lock_wait("busy", Duration::from_millis(1000), |_| async {})
                    .await
                    .unwrap();
                assert_eq!(waited, Outcome::Skipped(Skipped::TimedOut));
                lease.is_lost()
            }
        })
        .await
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Ran(false),
        "the 300 ms lease must survive a 1 s wait"
    );
}

#[kit::test]
async fn cancelling_a_wait_leaves_nothing_held() {
    let server = Server::new();
    let a = locks(&server, Options::default()).await;
    let b = locks(&server, Options::default()).await;
    let key = a.key("space");
    assert!(matches!(
        a.acquire("space").await.unwrap(),
        AcquireReply::Acquired { .. }
    ));
    let b2 = b.clone();
    let waiter = tokio::spawn(async move {
        b2.with_space_lock_wait("space", Duration::from_secs(10), |_| async {})
            .await
    });
    assert!(kit::wait_until(Duration::from_secs(2), || waiters(
        &server, &key
    ) == 1));
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    // The dropped wait closed its connection: the server dequeued it at
    // once, not when its 10 s ran out.
    let t0 = Instant::now();
    let mut con = server.conn();
    kit::until_waiting(&mut con, 0);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // The holder lets go.
    assert_eq!(
        a.release("space").await.unwrap(),
        spacelock_client::ReleaseReply::Released
    );
    b.settle().await;
    assert_eq!(holder(&server, &key), None);
    assert!(!b.is_running("space"));
}

/// A WAIT whose reply never comes (a fake server that accepts it and
/// stays silent) ends at timeout + grace with a typed error, after an
/// owner-checked RELEASE of the key. Before: it ended 5 s after the timeout
/// with an untyped I/O error, and the release ran in the background.
#[kit::test]
async fn a_wait_without_a_reply_ends_at_timeout_plus_grace_and_releases() {
    let fake = FakeServer::start();
    let options = Options::default().wait_grace(Duration::from_millis(300));
    let b = locks_at(&fake.url(), options).await;
    let key = b.key("silent");
    for primitive in [false, true] {
        let before = fake.received("SPACELOCK.RELEASE").len();
        let t0 = Instant::now();
        let err = if primitive {
            b.acquire_wait("silent", Duration::from_millis(200))
                .await
                .unwrap_err()
        } else {
            b.with_space_lock_wait("silent", Duration::from_millis(200), |_| async {})
                .await
                .unwrap_err()
        };
        let took = t0.elapsed();
        assert!(
            matches!(&err, Error::Timeout { after, .. } if *after == Duration::from_millis(500)),
            "{err:?}"
        );
        assert!(err.is_unavailable());
        assert!(took >= Duration::from_millis(450), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        let commands = fake.commands();
        let wait_at = commands
            .iter()
            .rposition(|c| c[0] == "SPACELOCK.ACQUIRE" && c.contains(&"WAIT".to_string()))
            .expect("the WAIT was sent");
        let release_at = commands
            .iter()
            .rposition(|c| {
                c[0] == "SPACELOCK.RELEASE" && c[1] == key && kit::call_base(&c[2]) == b.owner()
            })
            .expect("a release was sent");
        assert!(release_at > wait_at, "{commands:?}");
        assert_eq!(fake.received("SPACELOCK.RELEASE").len(), before + 1);
        assert!(!b.is_running("silent"));
    }
}

/// The waiting connection is killed (`CLIENT KILL`) mid-wait. The
/// call releases (in case the kill raced a grant), waits again on a fresh
/// connection, gets the lock when the holder lets go, and leaves nothing
/// held in its name.
#[kit::test]
async fn a_wait_whose_connection_is_killed_retries_and_leaves_nothing_held() {
    let server = Server::new();
    let a = locks(&server, Options::default()).await;
    let b = locks(&server, Options::default()).await;
    let key = a.key("killed");
    let AcquireReply::Acquired { token: first } = a.acquire("killed").await.unwrap() else {
        panic!("not acquired");
    };
    let b2 = b.clone();
    let waiter = tokio::spawn(async move {
        b2.with_space_lock_wait("killed", Duration::from_secs(10), |lease| async move {
            lease.token()
        })
        .await
    });
    let mut con = server.conn();
    kit::until_waiting(&mut con, 1);
    let releases = calls(&server, "spacelock.release");
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
        .query(&mut con)
        .unwrap();
    assert!(killed >= 1);
    // The defensive release, then queued again on a fresh connection.
    assert!(
        kit::wait_until(Duration::from_secs(10), || calls(
            &server,
            "spacelock.release"
        ) > releases),
        "no release after the kill"
    );
    kit::until_waiting(&mut con, 1);
    assert_eq!(
        a.release("killed").await.unwrap(),
        spacelock_client::ReleaseReply::Released
    );
    let token = waiter
        .await
        .unwrap()
        .unwrap()
        .ran()
        .expect("the waiter ran");
    assert!(token > first);
    assert_eq!(holder(&server, &key), None, "nothing held in b's name");
    assert!(!b.is_running("killed"));
}

/// A WAIT that ends in nil is followed by an owner-checked RELEASE.
#[kit::test]
async fn a_wait_that_times_out_releases_before_returning() {
    let server = Server::new();
    let a = locks(&server, Options::default()).await;
    let b = locks(&server, Options::default()).await;
    assert!(matches!(
        a.acquire("nil").await.unwrap(),
        AcquireReply::Acquired { .. }
    ));
    let before = calls(&server, "spacelock.release");
    let outcome = b
        .with_space_lock_wait("nil", Duration::from_millis(50), |_| async {})
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Skipped(Skipped::TimedOut));
    assert_eq!(calls(&server, "spacelock.release"), before + 1);
    // Owner-checked: the holder keeps it.
    assert_eq!(holder(&server, &a.key("nil")).as_deref(), Some(a.owner()));
}

/// Before: a pooled wait connection that the network dropped failed the next
/// wait with "broken pipe". Now it is replaced.
#[kit::test]
async fn a_dropped_wait_connection_is_replaced() {
    let server = Server::new();
    let proxy = Proxy::start(server.port);
    let b = locks_at(&proxy.url(), Options::default()).await;
    let run = || {
        b.with_space_lock_wait(
            "pooled",
            Duration::from_secs(2),
            |l| async move { l.token() },
        )
    };
    let first = run().await.unwrap().ran().unwrap();
    assert!(
        proxy.drop_connections() >= 2,
        "the shared and the pooled connection"
    );
    let second = run().await.unwrap().ran().expect("the wait after the drop");
    assert!(second > first);
}

/// Before: when no wait connection could be opened, `--wait 500ms` reported
/// the lock as still held although it was free. Now one plain ACQUIRE on
/// the shared connection decides.
#[kit::test]
async fn a_wait_connection_that_cannot_connect_does_not_mean_held() {
    let server = Server::new();
    let proxy = Proxy::start(server.port);
    let b = locks_at(&proxy.url(), Options::default()).await;
    // New connections now hang; the shared one keeps working.
    proxy.set_mode(ProxyMode::Blackhole);
    let t0 = Instant::now();
    let outcome = b
        .with_space_lock_wait(
            "free",
            Duration::from_millis(500),
            |l| async move { l.token() },
        )
        .await
        .unwrap();
    assert!(outcome.is_ran(), "{outcome:?}");
    assert!(t0.elapsed() < Duration::from_secs(3));
    // Held by someone else: honestly "timed out", after the wait.
    let other = locks(&server, Options::default()).await;
    assert!(matches!(
        other.acquire("free").await.unwrap(),
        AcquireReply::Acquired { .. }
    ));
    let outcome = b
        .with_space_lock_wait("free", Duration::from_millis(300), |_| async {})
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Skipped(Skipped::TimedOut));
    // Refused outright: an error (not "held"), unless the lock is free.
    proxy.set_mode(ProxyMode::Refuse);
    let e = b
        .with_space_lock_wait("free", Duration::from_millis(300), |_| async {})
        .await
        .unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
}

kit::main!();
