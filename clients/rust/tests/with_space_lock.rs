//! `SpaceLock` against a real redis-server with the spacelock module.

use spacelock_testkit as kit;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kit::{Server, ServerBuilder};
use redis::aio::ConnectionManager;
use spacelock_client::{
    AcquireReply, Error, Lease, LostReason, Options, Outcome, RefreshReply, ReleaseReply, Skipped,
    SpaceLock,
};
use tracing_subscriber::fmt;

async fn manager(server: &Server) -> ConnectionManager {
    ConnectionManager::new(server.client()).await.unwrap()
}

async fn locks(server: &Server, options: Options) -> SpaceLock<ConnectionManager> {
    SpaceLock::new(manager(server).await, options)
}

/// The owner stored in a lock key, read from outside (`None` if free).
fn holder(server: &Server, key: &str) -> Option<String> {
    let mut con = server.conn();
    redis::cmd("GET").arg(key).query(&mut con).unwrap()
}

// ---------------------------------------------------------------------------
// compile-time checks

#[allow(dead_code)]
fn assert_send_sync<T: Send + Sync>() {}

#[allow(dead_code)]
fn assert_send<T: Send>(_: &T) {}

#[kit::test]
fn public_types_are_send_and_sync() {
    assert_send_sync::<SpaceLock<ConnectionManager>>();
    assert_send_sync::<SpaceLock<redis::aio::MultiplexedConnection>>();
    assert_send_sync::<SpaceLock<redis::cluster_async::ClusterConnection>>();
    assert_send_sync::<Lease>();
    assert_send_sync::<Options>();
    assert_send_sync::<spacelock_client::Settings>();
    assert_send_sync::<Error>();
    assert_send_sync::<Outcome<String>>();
    assert_send_sync::<Skipped>();
}

/// The future of `with_space_lock` is `Send` when the body is, so it can be spawned.
#[allow(dead_code)]
fn with_space_lock_future_is_send(
    locks: SpaceLock<ConnectionManager>,
    locks2: SpaceLock<ConnectionManager>,
) {
    let fut = async move { locks.with_space_lock("k", |_lease| async { 1 }).await };
    assert_send(&fut);
    let fut2 = async move {
        locks2
            .with_space_lock_wait("k", Duration::from_millis(1), |_lease| async { 1 })
            .await
    };
    assert_send(&fut2);
}

// ---------------------------------------------------------------------------
// semantics

#[kit::test]
async fn concurrent_calls_give_in_progress_never_lock_held() {
    let server = Server::new();
    let locks = locks(&server, Options::default()).await;
    for round in 0..100 {
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let returned = Arc::new(AtomicUsize::new(0));
        let notify = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let (locks, barrier, returned, notify) = (
                locks.clone(),
                barrier.clone(),
                returned.clone(),
                notify.clone(),
            );
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let outcome = locks
                    .with_space_lock("space", |lease| {
                        let (returned, notify) = (returned.clone(), notify.clone());
                        async move {
                            // Hold the lock until the other call has returned, so
                            // the two calls truly overlap.
                            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                            while returned.load(Ordering::SeqCst) == 0 {
                                let _ = tokio::time::timeout_at(deadline, notify.notified()).await;
                                if tokio::time::Instant::now() >= deadline {
                                    break;
                                }
                            }
                            lease.token()
                        }
                    })
                    .await
                    .unwrap();
                returned.fetch_add(1, Ordering::SeqCst);
                notify.notify_waiters();
                outcome
            }));
        }
        let mut ran = 0;
        let mut in_progress = 0;
        for t in tasks {
            match t.await.unwrap() {
                Outcome::Ran(_) => ran += 1,
                Outcome::Skipped(Skipped::InProgress) => in_progress += 1,
                other => panic!("round {round}: unexpected {other:?}"),
            }
        }
        assert_eq!((ran, in_progress), (1, 1), "round {round}");
        assert!(!locks.is_running("space"));
    }
    assert_eq!(holder(&server, &locks.key("space")), None);
    // The losing call never touched Redis: one ACQUIRE per round.
    assert_eq!(calls(&server, "spacelock.acquire"), 100);
}

#[kit::test]
async fn lock_held_across_two_instances() {
    let server = Server::new();
    let a = locks(&server, Options::default()).await;
    let b = locks(&server, Options::default()).await;
    assert_ne!(a.owner(), b.owner());
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let a2 = a.clone();
    let holder_task = tokio::spawn(async move {
        a2.with_space_lock("space", |lease| async move {
            started_tx.send(lease.token()).unwrap();
            stop_rx.await.unwrap();
        })
        .await
        .unwrap()
    });
    started_rx.await.unwrap();
    let outcome = b
        .with_space_lock("space", |_| async { "ran" })
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Skipped(Skipped::LockHeld));
    assert!(
        !b.is_running("space"),
        "a LockHeld call must free its entry"
    );
    assert_eq!(
        holder(&server, &a.key("space"))
            .as_deref()
            .map(kit::call_base),
        Some(a.owner())
    );
    stop_tx.send(()).unwrap();
    assert!(holder_task.await.unwrap().is_ran());
    let outcome = b
        .with_space_lock("space", |_| async { "ran" })
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Ran("ran"));
}

#[kit::test]
async fn heartbeat_keeps_a_300ms_lock_for_1500ms() {
    let server = Server::new();
    let a = locks(&server, Options::default().ttl(Duration::from_millis(300))).await;
    let b = locks(&server, Options::default()).await;
    let key = a.key("space");
    let owner = a.owner().to_string();
    let started = Instant::now();
    let outcome = a
        .with_space_lock("space", |lease| {
            let (b, key, server) = (b.clone(), key.clone(), &server);
            async move {
                while started.elapsed() < Duration::from_millis(1600) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    assert_eq!(
                        holder(server, &key).as_deref().map(kit::call_base),
                        Some(owner.as_str()),
                        "after {:?}",
                        started.elapsed()
                    );
                    let other = b.with_space_lock("space", |_| async {}).await.unwrap();
                    assert_eq!(other, Outcome::Skipped(Skipped::LockHeld));
                    assert!(!lease.is_lost(), "lost after {:?}", started.elapsed());
                }
                lease.token()
            }
        })
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(outcome.ran().unwrap() > 0, "a token");
    assert_eq!(holder(&server, &key), None, "released after the body");
    assert_eq!(a.active_leases(), 0);
}

#[kit::test]
async fn lost_signal_when_the_key_is_deleted() {
    let server = Server::new();
    let server = &server;
    let a = locks(server, Options::default().ttl(Duration::from_millis(600))).await;
    let outcome = a
        .with_space_lock("space", |lease| async move {
            assert!(!lease.is_lost());
            assert_eq!(lease.lost_reason(), None, "held");
            let t0 = Instant::now();
            let _: i64 = redis::cmd("DEL")
                .arg(lease.key())
                .query(&mut server.conn())
                .unwrap();
            // The next refresh (every 200 ms) answers 0.
            tokio::time::timeout(Duration::from_secs(2), lease.lost())
                .await
                .expect("lost() must resolve");
            assert!(lease.is_lost());
            assert_eq!(lease.lost_reason(), Some(LostReason::NotOwner));
            t0.elapsed()
        })
        .await
        .unwrap();
    let after = outcome.ran().unwrap();
    // Before the 600 ms ttl could run out: it was the refresh answering 0
    // (every 200 ms), not the local deadline.
    assert!(after < Duration::from_millis(600), "lost after {after:?}");
    assert_eq!(a.active_leases(), 0);
}

/// `Lease::check` asks the server (`SPACELOCK.CHECK`): true while this
/// grant holds the lock; false once the lease has expired and another
/// instance holds it, even before the local heartbeat notices.
#[kit::test]
async fn check_asks_the_server_whether_the_grant_still_holds() {
    let server = Server::new();
    let server = &server;
    let a = locks(server, Options::default().ttl(Duration::from_secs(30))).await;
    let b = locks(server, Options::default().ttl(Duration::from_secs(30))).await;
    let outcome = a
        .with_space_lock("space", |lease| async move {
            assert!(lease.check().await.unwrap(), "held: the grant stands");
            // The lease ends under it (an operator, an expiry) and B takes
            // the lock with a higher token.
            let _: i64 = redis::cmd("DEL")
                .arg(lease.key())
                .query(&mut server.conn())
                .unwrap();
            let taken = b.with_space_lock("space", |newer| async move {
                assert!(newer.token() > lease.token());
                assert!(newer.check().await.unwrap());
                assert!(!lease.check().await.unwrap(), "a stale grant");
                assert!(!lease.is_lost(), "the heartbeat has not noticed yet");
            });
            assert!(taken.await.unwrap().is_ran());
        })
        .await
        .unwrap();
    assert!(outcome.is_ran());
}

#[kit::test]
async fn lost_signal_when_the_key_is_re_owned() {
    let server = Server::new();
    let server = &server;
    let a = locks(server, Options::default().ttl(Duration::from_millis(600))).await;
    let key = a.key("space");
    a.with_space_lock("space", |lease| async move {
        let mut con = server.conn();
        let _: i64 = redis::cmd("DEL").arg(lease.key()).query(&mut con).unwrap();
        let token: Option<i64> = redis::cmd("SPACELOCK.ACQUIRE")
            .arg(lease.key())
            .arg("intruder")
            .arg(30_000)
            .query(&mut con)
            .unwrap();
        assert!(token.unwrap() as u64 > lease.token());
        tokio::time::timeout(Duration::from_secs(2), lease.lost())
            .await
            .expect("lost() must resolve");
        assert_eq!(lease.lost_reason(), Some(LostReason::NotOwner));
    })
    .await
    .unwrap()
    .ran()
    .unwrap();
    // Our release after the body must not have deleted the intruder's lock.
    assert_eq!(holder(server, &key).as_deref(), Some("intruder"));
}

#[kit::test]
async fn lost_by_local_deadline_while_the_server_stalls() {
    let server = Server::new();
    let a = locks(&server, Options::default().ttl(Duration::from_millis(300))).await;
    let mut sleeper = server.conn();
    let outcome = a
        .with_space_lock("space", |lease| async move {
            let stall = tokio::task::spawn_blocking(move || {
                let t0 = Instant::now();
                let _: () = redis::cmd("DEBUG")
                    .arg("SLEEP")
                    .arg("1.5")
                    .query(&mut sleeper)
                    .unwrap();
                t0.elapsed()
            });
            let t0 = Instant::now();
            tokio::time::timeout(Duration::from_millis(1200), lease.lost())
                .await
                .expect("the local deadline must fire while the server sleeps");
            let lost_after = t0.elapsed();
            assert_eq!(lease.lost_reason(), Some(LostReason::Expired));
            assert!(
                !stall.is_finished(),
                "lost() must not wait for the server to wake up"
            );
            let slept = stall.await.unwrap();
            assert!(slept >= Duration::from_millis(1400));
            lost_after
        })
        .await
        .unwrap();
    let lost_after = outcome.ran().unwrap();
    // No refresh can succeed during the stall, so the lease is lost at most
    // one ttl (300 ms) after the last successful refresh started, which was
    // at most one interval (100 ms) before the stall; the bound leaves room
    // for a loaded machine and stays well inside the 1.5 s stall.
    assert!(
        lost_after <= Duration::from_millis(900),
        "lost after {lost_after:?}"
    );
}

#[kit::test]
async fn cancel_on_lost_drops_the_body() {
    let server = Server::new();
    let server = &server;
    let a = locks(
        server,
        Options::default()
            .ttl(Duration::from_millis(300))
            .cancel_on_lost(true),
    )
    .await;
    let t0 = Instant::now();
    let err = a
        .with_space_lock("space", |lease| async move {
            let _: i64 = redis::cmd("DEL")
                .arg(lease.key())
                .query(&mut server.conn())
                .unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            "never"
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::LockLost { key } if key == &a.key("space")),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(!a.is_running("space"));
}

#[kit::test]
async fn releases_when_the_body_returns_err() {
    let server = Server::new();
    let a = locks(&server, Options::default()).await;
    let key = a.key("space");
    let kept = std::sync::Mutex::new(None);
    let outcome = a
        .with_space_lock("space", |lease| async {
            assert!(holder(&server, &key).is_some());
            *kept.lock().unwrap() = Some(lease);
            Err::<(), _>("boom")
        })
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Ran(Err("boom")));
    assert_eq!(holder(&server, &key), None);
    // A lease kept past its body reads as ended, for that reason.
    let lease = kept.lock().unwrap().take().unwrap();
    assert!(lease.is_lost());
    assert_eq!(lease.lost_reason(), Some(LostReason::Released));
    assert!(!a.is_running("space"));
    assert_eq!(a.active_leases(), 0);
}

#[kit::test]
async fn releases_on_panic_then_resumes_it() {
    let server = Server::new();
    let a = locks(&server, Options::default()).await;
    let key = a.key("space");
    let a2 = a.clone();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let joined = tokio::spawn(async move {
        a2.with_space_lock("space", |lease| async move {
            held_tx.send(lease.key().to_string()).unwrap();
            panic!("boom in the body");
        })
        .await
    })
    .await;
    assert_eq!(held_rx.recv().unwrap(), key);
    let err = joined.unwrap_err();
    assert!(err.is_panic());
    let payload = err.into_panic();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom in the body"));
    // Released before the panic resumed: nothing left to wait for.
    assert_eq!(holder(&server, &key), None);
    assert!(!a.is_running("space"));
    assert_eq!(a.active_leases(), 0);
}

#[kit::test]
async fn releases_on_cancellation() {
    let server = Server::new();
    let a = locks(&server, Options::default()).await;
    let key = a.key("space");
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let a2 = a.clone();
    let task = tokio::spawn(async move {
        a2.with_space_lock("space", |_| async move {
            held_tx.send(()).unwrap();
            std::future::pending::<()>().await
        })
        .await
    });
    held_rx.await.unwrap();
    assert_eq!(
        holder(&server, &key).as_deref().map(kit::call_base),
        Some(a.owner())
    );
    assert!(a.is_running("space"));
    assert_eq!(a.active_leases(), 1);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(a.active_leases(), 0, "the heartbeat stops at once");
    let freed = kit::wait_until(Duration::from_secs(2), || {
        holder(&server, &key).is_none() && !a.is_running("space")
    });
    assert!(
        freed,
        "key and in-process entry must be freed after an abort"
    );
    // And the lock is usable again at once.
    assert!(a
        .with_space_lock("space", |_| async {})
        .await
        .unwrap()
        .is_ran());
}

#[kit::test]
async fn tokens_increase_across_runs() {
    let server = Server::new();
    let a = locks(&server, Options::default()).await;
    let b = locks(&server, Options::default()).await;
    let mut last = 0;
    for i in 0..10 {
        let locks = if i % 2 == 0 { &a } else { &b };
        let token = locks
            .with_space_lock("space", |lease| async move { lease.token() })
            .await
            .unwrap()
            .ran()
            .unwrap();
        assert!(token > last, "token {token} after {last}");
        last = token;
    }
}

#[kit::test]
async fn module_not_loaded_is_a_typed_error() {
    let server = ServerBuilder::new().without_module().start();
    let a = locks(&server, Options::default()).await;
    let err = a.with_space_lock("space", |_| async {}).await.unwrap_err();
    assert!(err.is_module_not_loaded(), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("loadmodule /path/to/libspacelock.so"), "{msg}");
    assert!(msg.contains("MODULE LOAD"), "{msg}");
    assert!(!a.is_running("space"));
    assert!(matches!(
        a.acquire("space").await,
        Err(Error::ModuleNotLoaded { .. })
    ));
    assert!(matches!(
        a.release("space").await,
        Err(Error::ModuleNotLoaded { .. })
    ));
}

#[kit::test]
async fn other_redis_errors_are_redis_errors() {
    let server = Server::new();
    let a = locks(&server, Options::default()).await;
    // A list where the lock should be: WRONGTYPE from the module.
    let _: i64 = redis::cmd("RPUSH")
        .arg(a.key("space"))
        .arg("x")
        .query(&mut server.conn())
        .unwrap();
    let err = a.with_space_lock("space", |_| async {}).await.unwrap_err();
    assert!(matches!(err, Error::Redis(_)), "{err:?}");
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    assert!(!a.is_running("space"));
}

#[kit::test]
async fn primitives_return_typed_replies() {
    let server = Server::new();
    let a = locks(&server, Options::default().ttl(Duration::from_secs(5))).await;
    let b = locks(&server, Options::default()).await;
    assert_eq!(a.info("k").await.unwrap(), None);
    let AcquireReply::Acquired { token: first } = a.acquire("k").await.unwrap() else {
        panic!("not acquired");
    };
    assert!(first > 0);
    assert_eq!(b.acquire("k").await.unwrap(), AcquireReply::Held);
    let info = a.info("k").await.unwrap().unwrap();
    assert_eq!(info.owner, a.owner());
    assert_eq!(info.owner_bytes, a.owner().as_bytes());
    assert_eq!(info.token, first);
    assert!(info.ttl.unwrap() <= Duration::from_secs(5));
    assert_eq!(a.refresh("k").await.unwrap(), RefreshReply::Refreshed);
    assert_eq!(b.refresh("k").await.unwrap(), RefreshReply::NotOwner);
    assert_eq!(b.release("k").await.unwrap(), ReleaseReply::NotOwner);
    assert_eq!(a.release("k").await.unwrap(), ReleaseReply::Released);
    assert_eq!(a.release("k").await.unwrap(), ReleaseReply::NotOwner);
    let AcquireReply::Acquired { token: second } = b.acquire("k").await.unwrap() else {
        panic!("not acquired");
    };
    assert!(second > first);
}

#[kit::test]
async fn works_over_a_multiplexed_connection_and_with_a_custom_prefix() {
    let server = Server::new();
    let server = &server;
    let conn = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let a = SpaceLock::new(
        conn,
        Options::default()
            .key_prefix("git-sync:lock:")
            .owner("me-1"),
    );
    assert_eq!(a.owner(), "me-1");
    let key = a
        .with_space_lock("space-42", |lease| async move {
            assert_eq!(holder(server, lease.key()).as_deref(), Some(lease.owner()));
            assert_eq!(kit::call_base(lease.owner()), "me-1");
            lease.key().to_string()
        })
        .await
        .unwrap()
        .ran()
        .unwrap();
    assert_eq!(key, "git-sync:lock:space-42");
    assert_eq!(holder(server, &key), None);
}

#[kit::test]
async fn wait_without_a_connector_is_an_error() {
    let server = Server::new();
    let a = locks(&server, Options::default()).await;
    let err = a
        .with_space_lock_wait("space", Duration::from_millis(10), |_| async {})
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WaitNotConfigured), "{err:?}");
    assert!(!a.is_running("space"));
}

/// Everything logged through `tracing` by any test in this binary.
fn captured_logs() -> kit::CapturedLogs {
    kit::captured_logs(|logs| fmt().with_ansi(false).with_writer(logs.writer()).init())
}

/// A refresh that fails (connection killed) logs a warning and is retried at
/// the next tick; the lease survives as long as a refresh succeeds within the ttl.
#[kit::test]
async fn a_failed_refresh_is_retried_not_lost() {
    let server = Server::new();
    let logs = captured_logs();
    let a = locks(&server, Options::default().ttl(Duration::from_millis(900))).await;
    let key = a.key("retried");
    let (server, key, owner) = (&server, &key, a.owner().to_string());
    let outcome = a
        .with_space_lock("retried", |lease| async move {
            // Drop every client connection but this one: the next refresh
            // fails (broken pipe), the manager reconnects, the one after succeeds.
            let killed: i64 = redis::cmd("CLIENT")
                .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
                .query(&mut server.conn())
                .unwrap();
            assert!(killed >= 1);
            tokio::time::sleep(Duration::from_millis(1500)).await;
            assert_eq!(
                holder(server, key).as_deref().map(kit::call_base),
                Some(owner.as_str())
            );
            lease.is_lost()
        })
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Ran(false));
    assert!(
        logs.has_line(&["WARN", "refresh failed", key.as_str()]),
        "expected a refresh warning in:\n{}",
        logs.text()
    );
}

/// Calls of `command` so far, from INFO commandstats.
fn calls(server: &Server, command: &str) -> u64 {
    kit::command_calls(&mut server.conn(), command)
}

/// Cancelled while the ACQUIRE is in flight: the server grants it later, and
/// the spawned release (sent after it on the same connection) frees it.
#[kit::test]
async fn releases_when_cancelled_during_acquire() {
    let server = Server::new();
    let a = locks(&server, Options::default()).await;
    let key = a.key("space");
    // Hold every write command (ACQUIRE included) for 400 ms.
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "400", "WRITE"][..])
        .query(&mut server.conn())
        .unwrap();
    let a2 = a.clone();
    let task = tokio::spawn(async move {
        a2.with_space_lock("space", |_| std::future::pending::<()>())
            .await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!task.is_finished(), "the acquire must still be paused");
    assert!(a.is_running("space"));
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert!(
        !a.is_running("space"),
        "releasing in the background is not running"
    );
    // The background release waits for the pause, behind the ACQUIRE.
    a.settle().await;
    assert_eq!(holder(&server, &key), None);
    // The acquire did run (and was granted: the fence counter exists), then
    // the release freed it.
    assert_eq!(calls(&server, "spacelock.acquire"), 1);
    assert_eq!(calls(&server, "spacelock.release"), 1);
    let fence: String = redis::cmd("SPACELOCK.FENCEKEY")
        .arg(&key)
        .query(&mut server.conn())
        .unwrap();
    let last: Option<i64> = redis::cmd("GET")
        .arg(fence)
        .query(&mut server.conn())
        .unwrap();
    assert!(last.is_some_and(|t| t > 0), "{last:?}");
}

/// Each locked call holds its grant under its own owner value, so that a
/// release one call sends late (its lease lost while the server was
/// stopped or paused, the RELEASE still on its way) cannot end the next
/// call's grant of the same name. With one owner value for every call, the
/// late RELEASE below answered 1 and freed the second grant for anyone.
#[kit::test]
async fn a_late_release_of_an_earlier_call_cannot_end_a_later_grant() {
    let server = Server::new();
    let a = locks(&server, Options::default()).await;
    let first = a
        .with_space_lock("space", |lease| async move { lease.owner().to_string() })
        .await
        .unwrap()
        .ran()
        .expect("the first call ran");
    assert_eq!(kit::call_base(&first), a.owner());
    let key = a.key("space");
    let (server, first2) = (&server, first.clone());
    let (second, late, held) = a
        .with_space_lock("space", |lease| async move {
            // The first call's RELEASE, arriving only now.
            let late: i64 = redis::cmd("SPACELOCK.RELEASE")
                .arg(lease.key())
                .arg(&first2)
                .query(&mut server.conn())
                .unwrap();
            (
                lease.owner().to_string(),
                late,
                lease.check().await.unwrap(),
            )
        })
        .await
        .unwrap()
        .ran()
        .expect("the second call ran");
    assert_ne!(second, first);
    assert_eq!(kit::call_base(&second), a.owner());
    assert_eq!(late, 0, "the late release ended nothing");
    assert!(held, "the second grant still holds {key}");
}

kit::main!();
