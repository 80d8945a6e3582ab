//! `SentinelConnection` with a real Sentinel: the client follows the primary
//! through `SENTINEL FAILOVER`. A lease held across the failover follows it
//! (its grant was acknowledged by the replica that was promoted) or is
//! reported lost, never silently kept on the demoted server; a new lock call
//! after the failover locks on the new primary.

use spacelock_testkit as kit;

use std::time::Duration;

use kit::{role, wait_until, Sentinel, Server};
use redis::sentinel::{SentinelClient, SentinelServerType};
use spacelock_client::{Options, Outcome, SentinelConnection, SpaceLock};

const SERVICE: &str = "spacelock-client-fo";

fn holder(server: &Server, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut server.conn())
        .unwrap()
}

async fn locks(sentinel: &Sentinel, options: Options) -> SpaceLock<SentinelConnection> {
    let client = SentinelClient::build(
        vec![format!("redis://127.0.0.1:{}/", sentinel.port)],
        SERVICE.to_string(),
        None,
        SentinelServerType::Master,
    )
    .unwrap();
    let conn = SentinelConnection::new(client).await.unwrap();
    SpaceLock::new(conn.clone(), options).with_wait_connector(conn)
}

/// A lease held through a failover: `(lost, reason, check)` at two ttls
/// after it.
type Held = (
    bool,
    Option<spacelock_client::LostReason>,
    Result<bool, spacelock_client::Error>,
);

fn hold(
    l: &SpaceLock<SentinelConnection>,
    name: &'static str,
    ttl: Duration,
) -> (
    tokio::sync::oneshot::Receiver<u64>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Held>,
) {
    let (granted_tx, granted_rx) = tokio::sync::oneshot::channel();
    let (failed_over_tx, failed_over_rx) = tokio::sync::oneshot::channel::<()>();
    let l = l.clone();
    let task = tokio::spawn(async move {
        let outcome = l
            .with_space_lock(name, |lease| async move {
                granted_tx.send(lease.token()).unwrap();
                failed_over_rx.await.unwrap();
                // Two ttls after the failover: the heartbeat must have moved to
                // the new primary, or reported the lease lost, by then.
                tokio::time::sleep(ttl * 2).await;
                (lease.is_lost(), lease.lost_reason(), lease.check().await)
            })
            .await
            .unwrap();
        match outcome {
            Outcome::Ran(held) => held,
            skipped => panic!("{name}: not granted before the failover: {skipped:?}"),
        }
    });
    (granted_rx, failed_over_tx, task)
}

/// Followed (the new primary confirms the grant) or reported lost.
fn followed_or_reported((lost, reason, check): &Held, what: &str) {
    if *lost {
        eprintln!("{what}: reported lost after the failover ({reason:?})");
    } else {
        assert!(
            matches!(check, Ok(true)),
            "{what}: kept, so the new primary must hold its grant: {check:?}"
        );
        eprintln!("{what}: followed the primary");
    }
}

#[kit::test]
async fn a_lease_follows_the_primary_or_is_reported_lost() {
    let (primary, replica, sentinel) = Sentinel::over_a_replicated_primary(SERVICE);
    let ttl = Duration::from_secs(2);
    let plain = locks(&sentinel, Options::default().ttl(ttl)).await;
    let acked = locks(&sentinel, Options::default().ttl(ttl).replicas(1)).await;
    let (g1, f1, t1) = hold(&plain, "fo-plain", ttl);
    let (g2, f2, t2) = hold(&acked, "fo-acked", ttl);
    g1.await.unwrap();
    g2.await.unwrap();
    let (k1, k2) = (plain.key("fo-plain"), acked.key("fo-acked"));
    assert_eq!(
        holder(&primary, &k1).as_deref().map(kit::call_base),
        Some(plain.owner())
    );
    kit::sync_replicas(&mut primary.conn(), 1);
    sentinel.fail_over_to(&replica, Duration::from_secs(20));
    // Both grants reached the replica before the failover.
    assert_eq!(
        holder(&replica, &k1).as_deref().map(kit::call_base),
        Some(plain.owner())
    );
    assert_eq!(
        holder(&replica, &k2).as_deref().map(kit::call_base),
        Some(acked.owner())
    );
    f1.send(()).unwrap();
    f2.send(()).unwrap();
    followed_or_reported(&t1.await.unwrap(), "replicas 0");
    followed_or_reported(&t2.await.unwrap(), "replicas 1");
    // Released, or expired, on the new primary.
    assert!(wait_until(ttl * 2, || holder(&replica, &k1).is_none()
        && holder(&replica, &k2).is_none()));

    // Once the new primary has a replica again (the old primary, which
    // Sentinel re-pointed), an acknowledged call locks there, through the
    // same SentinelConnection.
    let mut con = replica.conn();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let _: () = redis::cmd("SET")
                .arg("sync")
                .arg(2)
                .query(&mut con)
                .unwrap();
            redis::cmd("WAIT")
                .arg(1)
                .arg(500)
                .query::<i64>(&mut con)
                .unwrap()
                == 1
        }),
        "the old primary never replicated the new one:\n{}",
        sentinel.log()
    );
    let acquires = kit::command_calls(&mut replica.conn(), "spacelock.acquire");
    // A generous ack timeout: the machine may be busy.
    let acked = locks(
        &sentinel,
        Options::default()
            .replicas(1)
            .ack_timeout(Duration::from_secs(5)),
    )
    .await;
    let outcome = acked
        .with_space_lock("after", |lease| async move { lease.token() })
        .await
        .unwrap();
    if !outcome.is_ran() {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut replica.conn())
            .unwrap();
        let info2: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut primary.conn())
            .unwrap();
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut replica.conn())
            .unwrap();
        panic!(
            "{outcome:?}\nnew primary:\n{info}\nold:\n{info2}\n{stats}\n{}",
            sentinel.log()
        );
    }
    assert!(kit::command_calls(&mut replica.conn(), "spacelock.acquire") > acquires);
    assert_eq!(role(&primary).as_deref(), Some("slave"));
}

#[kit::test]
async fn a_waiter_follows_the_primary() {
    let (primary, replica, sentinel) = Sentinel::over_a_replicated_primary(SERVICE);
    let holder_locks = locks(&sentinel, Options::default()).await;
    let waiter = locks(&sentinel, Options::default()).await;
    assert!(matches!(
        holder_locks.acquire("w").await.unwrap(),
        spacelock_client::AcquireReply::Acquired { .. }
    ));
    let key = waiter.key("w");
    let waiting = {
        let waiter = waiter.clone();
        tokio::spawn(async move {
            waiter
                .with_space_lock_wait("w", Duration::from_secs(20), |lease| async move {
                    lease.token()
                })
                .await
        })
    };
    assert!(wait_until(Duration::from_secs(5), || kit::key_waiters(
        &mut primary.conn(),
        &key
    ) == 1));
    sentinel.fail_over_to(&replica, Duration::from_secs(20));
    // The demoted primary let its waiter go (-UNBLOCKED); the waiter waits
    // again on the new primary, where the holder's lock (replicated) expires
    // or is released.
    let _ = holder_locks.release("w").await;
    let outcome = tokio::time::timeout(Duration::from_secs(25), waiting)
        .await
        .expect("the waiter finished")
        .unwrap();
    assert!(outcome.as_ref().is_ok_and(|o| o.is_ran()), "{outcome:?}");
}

kit::main!();
