//! Blocking acquire (`SPACELOCK.ACQUIRE … WAIT`) through `with_space_lock_wait`.

use spacelock_testkit as kit;

use std::time::{Duration, Instant};

use kit::Server;
use redis::aio::ConnectionManager;
use spacelock_client::{AcquireReply, Options, Outcome, Skipped, SpaceLock};

async fn locks(server: &Server, options: Options) -> SpaceLock<ConnectionManager> {
    let conn = ConnectionManager::new(server.client()).await.unwrap();
    SpaceLock::new(conn, options).with_wait_connector(server.client())
}

fn waiters(server: &Server, key: &str) -> i64 {
    let info: Option<std::collections::HashMap<String, redis::Value>> =
        redis::cmd("SPACELOCK.INFO")
            .arg(key)
            .query(&mut server.conn())
            .unwrap();
    match info.and_then(|m| m.get("waiters").cloned()) {
        Some(redis::Value::Int(n)) => n,
        _ => 0,
    }
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
    assert_eq!(token, first + 1);
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
        b2.with_space_lock_wait("space", Duration::from_secs(2), |_| async {})
            .await
    });
    assert!(kit::wait_until(Duration::from_secs(2), || waiters(
        &server, &key
    ) == 1));
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    // The holder lets go while the cancelled wait may still be queued.
    assert_eq!(
        a.release("space").await.unwrap(),
        spacelock_client::ReleaseReply::Released
    );
    let clean = kit::wait_until(Duration::from_secs(4), || {
        holder(&server, &key).is_none() && !b.is_running("space")
    });
    assert!(
        clean,
        "holder {:?}, running {}",
        holder(&server, &key),
        b.is_running("space")
    );
}

kit::main!();
