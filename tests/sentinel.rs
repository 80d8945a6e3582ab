//! A real Sentinel failover (a promoted replica opens a token term): a primary and a replica, both with
//! the module, and one sentinel (quorum 1, down after 500 ms). A stream of
//! grants runs against the primary; the primary is killed (SIGKILL); the
//! sentinel promotes the replica. Every token the new primary issues is
//! above every token the old one issued, including those the replica never
//! received. A Rust client holding a lease on the old primary through a
//! `ConnectionManager` learns that the lease is lost within about one ttl.
//!
//! The sentinel is `$SPACELOCK_SERVER --sentinel`, else Debian's
//! `redis-sentinel` (`make deps`); the test is skipped only if neither runs.

use spacelock_testkit as kit;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kit::{acquire, release, wait_until, Sentinel, SentinelTimings, Server};
use redis::aio::ConnectionManager;
use spacelock_client::{LostReason, Options, SpaceLock};

const NAMES: [&str; 5] = ["fo:0", "fo:1", "fo:2", "fo:3", "fo:4"];

#[kit::test]
async fn sentinel_failover_issues_only_higher_tokens_and_the_old_lease_is_lost() {
    let test_start = Instant::now();
    // The replica's process loads first, so its load term is older than
    // the primary's: only the term opened at promotion puts its tokens
    // above the primary's.
    let replica = Server::new();
    let mut r = replica.conn();
    let replica_start = kit::term_start_ms(&mut r);
    assert!(wait_until(Duration::from_secs(1), || kit::now_ms() > replica_start));
    let mut primary = Server::new();
    kit::replicaof(&mut r, primary.port);
    kit::until_link_up(&mut r, &replica);
    // Only a missing binary is a skip; a sentinel that starts and then dies
    // or never answers is a failure.
    let sentinel = Sentinel::start_or_skip(&primary, "spacelock-fo", SentinelTimings::default());
    assert_eq!(sentinel.primary_port(), Some(primary.port));
    sentinel.until_knows_replica(&replica, Duration::from_secs(15));

    // A lease held through a ConnectionManager on the primary, whose body
    // waits for the lease to be lost.
    let ttl = Duration::from_millis(1_500);
    let locks = SpaceLock::new(
        ConnectionManager::new(primary.client()).await.unwrap(),
        Options::default().ttl(ttl).owner("client-on-old-primary"),
    );
    let (lease_tx, lease_rx) = tokio::sync::oneshot::channel();
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel();
    let holder = tokio::spawn(async move {
        locks
            .with_space_lock("fo:lease", |lease| async move {
                let _ = lease_tx.send(lease.token());
                lease.lost().await;
                let _ = lost_tx.send((Instant::now(), lease.is_lost(), lease.lost_reason()));
            })
            .await
    });
    let lease_token = i64::try_from(
        tokio::time::timeout(Duration::from_secs(10), lease_rx)
            .await
            .expect("the lease was granted")
            .unwrap(),
    )
    .unwrap();

    // The stream of grants: every acknowledged token, until the primary dies.
    // (index of the name in NAMES, or NAMES.len() for the held lease; token)
    let issued = Arc::new(Mutex::new(vec![(NAMES.len(), lease_token)]));
    let stop = Arc::new(AtomicBool::new(false));
    let stream = {
        let (issued, stop, client) = (issued.clone(), stop.clone(), primary.client());
        std::thread::spawn(move || {
            let mut con = client.get_connection().unwrap();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = NAMES[i % NAMES.len()];
                i += 1;
                let r: redis::RedisResult<Option<i64>> = redis::cmd("SPACELOCK.ACQUIRE")
                    .arg(name)
                    .arg("stream")
                    .arg(60_000)
                    .query(&mut con);
                match r {
                    Ok(Some(t)) => issued.lock().unwrap().push(((i - 1) % NAMES.len(), t)),
                    Ok(None) => {}
                    Err(_) => break,
                }
                if redis::cmd("SPACELOCK.RELEASE")
                    .arg(name)
                    .arg("stream")
                    .query::<i64>(&mut con)
                    .is_err()
                {
                    break;
                }
            }
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), || issued.lock().unwrap().len()
            > 300),
        "the stream stalled"
    );

    // SIGKILL the primary in the middle of the stream.
    primary.kill9();
    let killed_at = Instant::now();
    stream.join().unwrap();
    let stream_of_grants = issued.lock().unwrap().clone();
    let before: Vec<i64> = stream_of_grants.iter().map(|&(_, t)| t).collect();
    let max_before = *before.iter().max().unwrap();
    for name in 0..=NAMES.len() {
        let of_name: Vec<i64> = stream_of_grants
            .iter()
            .filter(|&&(n, _)| n == name)
            .map(|&(_, t)| t)
            .collect();
        assert!(
            of_name.windows(2).all(|w| w[0] < w[1]),
            "the old primary's own tokens of each name increase"
        );
    }

    // The client learns its lease is lost within about one ttl (its last
    // successful refresh was at most ttl/3 before the kill).
    let (lost_at, is_lost, reason) = tokio::time::timeout(ttl * 3, lost_rx)
        .await
        .expect("the lease was never reported lost")
        .unwrap();
    let after_kill = lost_at.saturating_duration_since(killed_at);
    assert!(is_lost);
    assert_eq!(reason, Some(LostReason::Expired));
    assert!(
        after_kill <= ttl + Duration::from_millis(500),
        "lost {after_kill:?} after the kill (ttl {ttl:?})"
    );
    // The body has returned; the release it attempts cannot reach anyone.
    holder.abort();

    // Sentinel promotes the replica.
    assert!(
        wait_until(Duration::from_secs(15), || sentinel.primary_port()
            == Some(replica.port)),
        "no failover:\n{}",
        sentinel.log()
    );
    // The promotion ends with CLIENT KILL TYPE normal: new connections.
    assert!(
        wait_until(Duration::from_secs(10), || {
            replica.client().get_connection().is_ok_and(|mut c| {
                kit::info_text(&mut c, "replication", "role").as_deref() == Some("master")
            })
        }),
        "the replica never became a primary"
    );
    let mut r = replica.conn();
    assert!(replica
        .log()
        .contains("spacelock: this server is now a primary; opened a token term at"));
    // What the replica received of the stream: maybe not its last grants,
    // maybe a grant whose reply never reached the client (issued all the
    // same). Every token from now on is above all of it.
    let received: Vec<Option<i64>> = NAMES.iter().map(|n| kit::fence_value(&mut r, *n)).collect();
    eprintln!(
        "old primary acknowledged {} tokens (last {max_before}); the replica has {received:?}",
        before.len()
    );
    let max_before = received
        .iter()
        .flatten()
        .copied()
        .fold(max_before, i64::max);
    let floor = kit::token_floor(&mut r);
    assert!(floor > max_before, "floor {floor} <= {max_before}");
    for name in NAMES.iter().chain(&["fo:lease", "fo:fresh"]) {
        // A lock the replica still has from the stream or the client.
        let _: i64 = redis::cmd("DEL").arg(*name).query(&mut r).unwrap();
        let t = acquire(&mut r, *name, "after-failover", 60_000).unwrap();
        assert_eq!(
            t, floor,
            "{name}: each name counts from the new term's floor"
        );
        assert!(t > max_before, "{name}: {t} <= {max_before}");
        assert_eq!(release(&mut r, *name, "after-failover"), 1);
    }
    stop.store(true, Ordering::Relaxed);
    let took = test_start.elapsed();
    eprintln!("sentinel failover test took {took:?}");
    assert!(took < Duration::from_secs(20), "too slow: {took:?}");
}

kit::main!();
