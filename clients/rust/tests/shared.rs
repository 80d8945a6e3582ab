//! Shared (read) leases and counting semaphores (`with_shared_lock`,
//! `Semaphore`) against a real redis-server with the spacelock module.

use spacelock_testkit as kit;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kit::Server;
use redis::aio::ConnectionManager;
use spacelock_client::{Error, LostReason, Options, Outcome, Semaphore, Skipped, SpaceLock};

async fn locks(server: &Server, options: Options) -> SpaceLock<ConnectionManager> {
    let client = server.client();
    let conn = ConnectionManager::new(client.clone()).await.unwrap();
    SpaceLock::new(conn, options).with_wait_connector(client)
}

fn waiters(server: &Server, key: &str) -> i64 {
    kit::key_waiters(&mut server.conn(), key)
}

#[kit::test]
async fn readers_run_together_with_their_own_tokens_and_release() {
    let server = Server::new();
    let a = locks(&server, Options::default()).await;
    let b = locks(&server, Options::default()).await;
    let key = a.key("cache");
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let a2 = a.clone();
    let first = tokio::spawn(async move {
        a2.with_shared_lock("cache", |lease| async move {
            held_tx.send(lease.token()).unwrap();
            stop_rx.await.unwrap();
            lease.check().await.unwrap()
        })
        .await
        .unwrap()
    });
    let t1 = held_rx.await.unwrap();
    // A second reader runs while the first holds its share.
    let (t2, checked) = b
        .with_shared_lock("cache", |lease| async move {
            (lease.token(), lease.check().await.unwrap())
        })
        .await
        .unwrap()
        .ran()
        .expect("a second reader runs beside the first");
    assert!(t2 > t1, "{t2} > {t1}");
    assert!(checked);
    // A writer does not.
    assert_eq!(
        b.with_space_lock("cache", |_| async {}).await.unwrap(),
        Outcome::Skipped(Skipped::LockHeld)
    );
    stop_tx.send(()).unwrap();
    assert_eq!(first.await.unwrap(), Outcome::Ran(true));
    // The last reader's release deletes the key; a writer gets it at once.
    assert!(!kit::exists(&mut server.conn(), &key));
    assert!(b
        .with_space_lock("cache", |_| async {})
        .await
        .unwrap()
        .is_ran());
    assert_eq!(a.active_leases() + b.active_leases(), 0);
}

#[kit::test]
async fn a_heartbeat_keeps_a_300ms_share_for_1s() {
    let server = Server::new();
    let opts = Options::default().ttl(Duration::from_millis(300));
    let a = locks(&server, opts.clone()).await;
    let b = locks(&server, opts).await;
    let outcome = a
        .with_shared_lock("cache", |lease| async move {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            (lease.is_lost(), lease.check().await.unwrap())
        })
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Ran((false, true)));
    assert!(b
        .with_space_lock("cache", |_| async {})
        .await
        .unwrap()
        .is_ran());
}

/// A writer queued with WAIT waits for the readers, and a reader that comes
/// after it waits behind it: the writer is not starved by readers.
#[kit::test]
async fn a_writer_waits_for_readers_and_later_readers_wait_for_it() {
    let server = Server::new();
    let reader = locks(&server, Options::default()).await;
    let writer = locks(&server, Options::default()).await;
    let late = locks(&server, Options::default()).await;
    let key = reader.key("cache");
    let events = Arc::new(Mutex::new(Vec::<&'static str>::new()));
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ev = events.clone();
    let r = tokio::spawn(async move {
        reader
            .with_shared_lock("cache", |_| async move {
                held_tx.send(()).unwrap();
                stop_rx.await.unwrap();
                ev.lock().unwrap().push("reader done");
            })
            .await
            .unwrap()
    });
    held_rx.await.unwrap();
    let ev = events.clone();
    let w = tokio::spawn(async move {
        writer
            .with_space_lock_wait("cache", Duration::from_secs(5), |_| async move {
                ev.lock().unwrap().push("writer in");
                tokio::time::sleep(Duration::from_millis(200)).await;
                ev.lock().unwrap().push("writer out");
            })
            .await
            .unwrap()
    });
    assert!(kit::wait_until(Duration::from_secs(2), || waiters(
        &server, &key
    ) == 1));
    // Readers are still holding, but a writer is queued: no barging.
    assert_eq!(
        late.with_shared_lock("cache", |_| async {}).await.unwrap(),
        Outcome::Skipped(Skipped::LockHeld)
    );
    let ev = events.clone();
    let late2 = late.clone();
    let l = tokio::spawn(async move {
        late2
            .with_shared_lock_wait("cache", Duration::from_secs(5), |_| async move {
                ev.lock().unwrap().push("late reader in");
            })
            .await
            .unwrap()
    });
    assert!(kit::wait_until(Duration::from_secs(2), || waiters(
        &server, &key
    ) == 2));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(events.lock().unwrap().is_empty(), "{events:?}");
    stop_tx.send(()).unwrap();
    assert!(r.await.unwrap().is_ran());
    assert!(w.await.unwrap().is_ran());
    assert!(l.await.unwrap().is_ran());
    assert_eq!(
        *events.lock().unwrap(),
        ["reader done", "writer in", "writer out", "late reader in"]
    );
    // A shared wait that gets nothing in time is TimedOut.
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let w2 = locks(&server, Options::default()).await;
    let h = tokio::spawn(async move {
        w2.with_space_lock("cache", |_| async move {
            held_tx.send(()).unwrap();
            stop_rx.await.unwrap();
        })
        .await
        .unwrap()
    });
    held_rx.await.unwrap();
    let t0 = Instant::now();
    assert_eq!(
        late.with_shared_lock_wait("cache", Duration::from_millis(200), |_| async {})
            .await
            .unwrap(),
        Outcome::Skipped(Skipped::TimedOut)
    );
    assert!(t0.elapsed() >= Duration::from_millis(190));
    stop_tx.send(()).unwrap();
    assert!(h.await.unwrap().is_ran());
}

/// Many owners loop on a semaphore of 3 permits, with and without WAIT:
/// never more than 3 bodies at once, and all 3 are used.
#[kit::test]
async fn permits_are_never_exceeded_under_concurrency() {
    const PERMITS: u32 = 3;
    let server = Server::new();
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let ran = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..10 {
        let slots =
            Semaphore::new(locks(&server, Options::default()).await, "slots", PERMITS).unwrap();
        let (inside, most, ran) = (inside.clone(), most.clone(), ran.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..8 {
                let body = || {
                    let (inside, most, ran) = (inside.clone(), most.clone(), ran.clone());
                    move |_lease| async move {
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(15)).await;
                        inside.fetch_sub(1, Ordering::SeqCst);
                        ran.fetch_add(1, Ordering::SeqCst);
                    }
                };
                let outcome = if i % 2 == 0 {
                    slots
                        .with_permit_wait(Duration::from_secs(10), body())
                        .await
                } else {
                    slots.with_permit(body()).await
                };
                match outcome.unwrap() {
                    Outcome::Ran(()) | Outcome::Skipped(Skipped::LockHeld) => {}
                    other => panic!("{other:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let most = most.load(Ordering::SeqCst);
    assert_eq!(
        most, PERMITS as usize,
        "at most {PERMITS} at once, and all used"
    );
    // Every waiting owner ran every time (5 × 8), and some others did.
    assert!(ran.load(Ordering::SeqCst) >= 40, "{ran:?}");
    assert!(!kit::exists(&mut server.conn(), "spacelock:lock:slots"));
}

/// A permit whose lease ends while the server cannot refresh it is reported
/// lost (Expired), and counts no more on the server: another owner gets the
/// only permit once the server is back.
#[kit::test]
async fn a_permit_lost_on_expiry_is_reported_and_given_back() {
    let server = Server::new();
    let opts = Options::default().ttl(Duration::from_millis(300));
    let a = Semaphore::new(locks(&server, opts.clone()).await, "slot", 1).unwrap();
    let b = Semaphore::new(locks(&server, opts).await, "slot", 1).unwrap();
    let mut sleeper = server.conn();
    let b2 = b.clone();
    let outcome = a
        .with_permit(|lease| async move {
            let stall = tokio::task::spawn_blocking(move || {
                let _: () = redis::cmd("DEBUG")
                    .arg("SLEEP")
                    .arg("1")
                    .query(&mut sleeper)
                    .unwrap();
            });
            tokio::time::timeout(Duration::from_millis(900), lease.lost())
                .await
                .expect("the local deadline fires while the server sleeps");
            assert_eq!(lease.lost_reason(), Some(LostReason::Expired));
            stall.await.unwrap();
            // The server ended that permit's lease too: the grant no longer
            // holds, and the other owner gets the permit.
            let checked = lease.check().await.unwrap();
            let other = b2.with_permit(|l| async move { l.token() }).await.unwrap();
            (checked, other, lease.token())
        })
        .await
        .unwrap();
    let (checked, other, mine) = outcome.ran().unwrap();
    assert!(!checked);
    assert!(other.ran().unwrap() > mine);
}

#[kit::test]
async fn wrong_mode_is_a_typed_error_and_changes_nothing() {
    let server = Server::new();
    let a = locks(&server, Options::default()).await;
    let b = locks(&server, Options::default()).await;
    let key = a.key("name");
    let two = Semaphore::new(a.clone(), "name", 2).unwrap();
    let three = Semaphore::new(b.clone(), "name", 3).unwrap();
    let outcome = two
        .with_permit(|_| async {
            let shared = b.with_shared_lock("name", |_| async {}).await.unwrap_err();
            let exclusive = b.with_space_lock("name", |_| async {}).await.unwrap_err();
            let other_n = three.with_permit(|_| async {}).await.unwrap_err();
            let waited = three
                .with_permit_wait(Duration::from_millis(200), |_| async {})
                .await
                .unwrap_err();
            [shared, exclusive, other_n, waited]
        })
        .await
        .unwrap();
    for e in outcome.ran().unwrap() {
        assert!(matches!(e, Error::WrongMode { .. }), "{e:?}");
        assert!(e.to_string().contains("LIMIT 2"), "{e}");
    }
    assert!(!b.is_running("name") && b.active_leases() == 0);
    assert!(!kit::exists(&mut server.conn(), &key));
    // The other way round: a semaphore on a name held by a reader.
    let outcome = a
        .with_shared_lock("name", |_| async {
            three.with_permit(|_| async {}).await.unwrap_err()
        })
        .await
        .unwrap();
    let e = outcome.ran().unwrap();
    assert!(matches!(e, Error::WrongMode { .. }), "{e:?}");
    for bad in [0, 1_000_001] {
        let e = Semaphore::new(a.clone(), "name", bad).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    }
}

kit::main!();

#[kit::test]
async fn info_lists_every_holder_with_its_own_token_and_ttl() {
    let server = Server::new();
    let locks = locks(&server, Options::default()).await;
    let mut con = server.conn();
    let grant = |key: &str, owner: &str, ttl: u64, shape: &[&str]| -> u64 {
        redis::cmd("SPACELOCK.ACQUIRE")
            .arg(locks.key(key))
            .arg(owner)
            .arg(ttl)
            .arg(shape)
            .query(&mut server.conn())
            .unwrap()
    };
    let t1 = grant("cache", "r1", 30_000, &["SHARED"]);
    let t2 = grant("cache", "r2", 10_000, &["SHARED"]);
    let i = locks.info("cache").await.unwrap().expect("held");
    assert_eq!(i.mode, spacelock_client::LockMode::Shared);
    let holders: Vec<_> = i
        .holders
        .iter()
        .map(|h| (h.owner.as_str(), h.token))
        .collect();
    assert_eq!(holders, [("r1", t1), ("r2", t2)]);
    assert!(i.holders[0].ttl.unwrap() > Duration::from_secs(20));
    assert!(i.holders[1].ttl.unwrap() <= Duration::from_secs(10));
    assert_eq!((i.owner.as_str(), i.token), ("r2", t2), "the newest holder");
    let s = grant("slots", "s1", 30_000, &["LIMIT", "3"]);
    let i = locks.info("slots").await.unwrap().expect("held");
    assert_eq!(
        (i.mode, i.holders.len(), i.token),
        (spacelock_client::LockMode::Limit(3), 1, s)
    );
    // An exclusive lock: one holder, the same as the top-level fields.
    let e = grant("solo", "me", 30_000, &[]);
    let i = locks.info("solo").await.unwrap().expect("held");
    assert_eq!(i.mode, spacelock_client::LockMode::Exclusive);
    assert_eq!((i.holders.len(), i.holders[0].token, i.token), (1, e, e));
    let _: () = redis::cmd("DEL")
        .arg(locks.key("cache"))
        .query(&mut con)
        .unwrap();
    assert_eq!(locks.info("cache").await.unwrap(), None);
}
