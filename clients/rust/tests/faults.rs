//! Faults through the client, against real servers: a wait longer than the
//! ttl, a server that closes idle connections, write pauses, a restart, a
//! dead server, and what a call right after a failed or cancelled one sees.
//! Each test reproduces a failure measured before the fix.

use spacelock_testkit as kit;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use kit::{Server, ServerBuilder};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use spacelock_client::{Error, Lease, LostReason, Options, Outcome, Skipped, SpaceLock};
use tracing_subscriber::fmt;

/// A `ConnectionManager` with redis-rs' defaults (a 500 ms response
/// timeout), as most applications create it.
async fn locks(server: &Server, options: Options) -> SpaceLock<ConnectionManager> {
    let conn = ConnectionManager::new(server.client()).await.unwrap();
    SpaceLock::new(conn, options).with_wait_connector(server.client())
}

fn holder(server: &Server, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut server.conn())
        .unwrap()
}

fn pause_writes(server: &Server, ms: u64) {
    kit::pause_writes(&mut server.conn(), ms);
}

/// Everything logged through `tracing` by any test in this binary.
fn captured_logs() -> kit::CapturedLogs {
    kit::captured_logs(|logs| fmt().with_ansi(false).with_writer(logs.writer()).init())
}

/// Before: the lease's deadline counted from before the wait, so a waiter
/// granted after more than a ttl started its body with `is_lost() == true`
/// and no refresh was ever sent; the key expired under the running body.
#[kit::test]
async fn a_wait_longer_than_the_ttl_keeps_its_lease() {
    let server = Server::new();
    let ttl = Duration::from_millis(300);
    let a = locks(&server, Options::default().ttl(ttl)).await;
    let b = locks(&server, Options::default().ttl(ttl)).await;
    let key = b.key("long-wait");
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let a2 = a.clone();
    let first = tokio::spawn(async move {
        a2.with_space_lock("long-wait", |lease| async move {
            held_tx.send(lease.token()).unwrap();
            stop_rx.await.unwrap();
        })
        .await
        .unwrap()
    });
    let first_token = held_rx.await.unwrap();
    let (b2, server2, key2) = (b.clone(), server.url(), key.clone());
    let waiter = tokio::spawn(async move {
        b2.with_space_lock_wait("long-wait", Duration::from_secs(10), |lease| async move {
            let lost_at_start = lease.is_lost();
            let mut con = redis::Client::open(server2)
                .unwrap()
                .get_connection()
                .unwrap();
            // Hold for more than three ttls: the heartbeat must keep it.
            let mut held_throughout = true;
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let now: Option<String> = redis::cmd("GET").arg(&key2).query(&mut con).unwrap();
                held_throughout &= now.is_some() && !lease.is_lost();
            }
            (lost_at_start, held_throughout, lease.token())
        })
        .await
    });
    let mut con = server.conn();
    kit::until_waiting(&mut con, 1);
    // The wait lasts well over the 300 ms ttl (the holder's heartbeat keeps it).
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop_tx.send(()).unwrap();
    assert!(first.await.unwrap().is_ran());
    let outcome = waiter.await.unwrap().unwrap();
    let Outcome::Ran((lost_at_start, held_throughout, token)) = outcome else {
        panic!("the waiter did not run: {outcome:?}");
    };
    assert!(!lost_at_start, "the body started with a lost lease");
    assert!(held_throughout, "the key expired under the body");
    assert!(token > first_token);
    assert_eq!(holder(&server, &key), None, "released after the body");
}

/// Before: with `timeout 1`, every refresh found its connection closed
/// ("broken pipe") and was retried only a ttl/3 later, on a connection that
/// had been idle again; the lease was lost. The release after an idle body
/// failed silently, leaving the lock held for its ttl.
#[kit::test]
async fn a_server_that_closes_idle_connections_keeps_leases_and_releases() {
    let logs = captured_logs();
    let server = ServerBuilder::new().arg("timeout", "1").start();
    // (A fresh connection per query: the server closes idle ones, ours too.)
    let connections = || kit::info_field(&mut server.conn(), "stats", "total_connections_received");
    // The server checks `timeout` in whole seconds: a connection idle for
    // 2.1 s is closed, one idle for 1 s may not be. Refreshes every 2.5 s.
    let a = locks(&server, Options::default().ttl(Duration::from_millis(7500))).await;
    let key = a.key("idle");
    let before = connections();
    let outcome = a
        .with_space_lock("idle", |lease| {
            let url = server.url();
            let key = key.clone();
            async move {
                // The first refresh (2.5 s) finds the connection closed; the
                // release (4.8 s) finds the refreshed one closed again.
                tokio::time::sleep(Duration::from_millis(4800)).await;
                let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
                let pttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut con).unwrap();
                (pttl, lease.is_lost())
            }
        })
        .await
        .unwrap();
    let (pttl, lost) = outcome.ran().unwrap();
    assert!(!lost, "lease lost");
    // Refreshed at 2.5 s: about 5.2 s left at 4.8 s (never refreshed: 2.7 s).
    assert!(pttl > 4000, "the refresh did not land: pttl {pttl} ms");
    assert_eq!(holder(&server, &key), None, "the release did not land");
    // Three of ours (the PTTL, `holder`, this one) and the client's two
    // reconnects (for the refresh and for the release).
    assert!(
        connections() >= before + 5,
        "the server never closed the idle connection"
    );
    assert!(logs.has_line(&["WARN", "refresh failed", &key]));
}

/// Before: the RELEASE timed out after the connection's 500 ms response
/// timeout while the server held it, and the lock stayed held (27 s left).
#[kit::test]
async fn a_release_during_a_write_pause_lands() {
    let server = Server::new();
    let a = locks(&server, Options::default()).await;
    let key = a.key("pauserel");
    let kept: Mutex<Option<Lease>> = Mutex::new(None);
    let t0 = Instant::now();
    let outcome = a
        .with_space_lock("pauserel", |lease| async {
            *kept.lock().unwrap() = Some(lease);
            pause_writes(&server, 1500);
            "the body's value"
        })
        .await
        .unwrap();
    let took = t0.elapsed();
    assert_eq!(outcome, Outcome::Ran("the body's value"));
    assert!(
        took >= Duration::from_millis(1300),
        "returned after {took:?}, before the pause ended"
    );
    assert_eq!(holder(&server, &key), None, "the lock is still held");
    let lease = kept.lock().unwrap().take().unwrap();
    assert_eq!(lease.lost_reason(), Some(LostReason::Released));
}

/// Before: an ACQUIRE held by a write pause timed out after 500 ms and the
/// call failed, although the server was up.
#[kit::test]
async fn an_acquire_during_a_write_pause_waits_for_it() {
    let server = Server::new();
    let a = locks(&server, Options::default()).await;
    pause_writes(&server, 800);
    let t0 = Instant::now();
    let outcome = a
        .with_space_lock("paused", |lease| async move { lease.is_lost() })
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Ran(false));
    assert!(
        t0.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(holder(&server, &a.key("paused")), None);
}

/// Before: a WAIT that timed out on the server during a write pause (a nil
/// reply) was followed by a defensive RELEASE, which the pause held, and the
/// call waited the whole release budget for it, then warned that the lock
/// "stays held", although nothing had been granted. Now it waits at most
/// 250 ms for that RELEASE, quietly.
#[kit::test]
async fn a_wait_that_times_out_during_a_write_pause_returns_at_once_and_quietly() {
    let logs = captured_logs();
    let server = Server::new();
    let options = || Options::default().release_timeout(Duration::from_secs(3));
    let holder_locks = locks(&server, options()).await;
    let a = locks(&server, options()).await;
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let hold = tokio::spawn(async move {
        holder_locks
            .with_space_lock("paused-wait", |_| async move {
                held_tx.send(()).unwrap();
                stop_rx.await.unwrap();
            })
            .await
    });
    held_rx.await.unwrap();
    let key = a.key("paused-wait");
    let t0 = Instant::now();
    let waiter = {
        let a = a.clone();
        tokio::spawn(async move {
            a.with_space_lock_wait("paused-wait", Duration::from_millis(800), |_| async {})
                .await
        })
    };
    kit::until_waiting(&mut server.conn(), 1);
    let releases = kit::command_calls(&mut server.conn(), "spacelock.release");
    pause_writes(&server, 3_000);
    let outcome = waiter.await.unwrap().unwrap();
    let took = t0.elapsed();
    assert_eq!(outcome.skipped(), Some(Skipped::TimedOut), "{outcome:?}");
    assert!(
        took < Duration::from_millis(1_500),
        "returned after {took:?} (wait 800 ms + at most 250 ms for the defensive release)"
    );
    assert!(
        !logs.has_line(&["WARN", "failed to release", &key]),
        "warned about a release although nothing was granted"
    );
    // The defensive RELEASE still runs once the pause ends.
    let ran = Instant::now();
    while kit::command_calls(&mut server.conn(), "spacelock.release") == releases {
        assert!(
            ran.elapsed() < Duration::from_secs(5),
            "the defensive RELEASE never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(()).unwrap();
    assert!(hold.await.unwrap().unwrap().is_ran());
}

/// The README's connection setup: no response timeout, and the reconnect
/// backoff capped at 500 ms. A lease is held when the server dies, so its
/// refreshes fail and the manager keeps reconnecting through a 6 s outage.
/// Before (redis-rs' uncapped backoff, 100 ms doubling): the first call
/// after the restart waited out a 3.2 s reconnect sleep and failed with
/// `Timeout`, although the server answered.
#[kit::test]
async fn with_the_readme_connection_setup_the_first_call_after_an_outage_succeeds() {
    let mut server = Server::new();
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(None)
        .set_max_delay(Duration::from_millis(500));
    let conn = ConnectionManager::new_with_config(server.client(), config)
        .await
        .unwrap();
    let options = Options::default()
        .ttl(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(2));
    let a = SpaceLock::new(conn, options);
    let t0 = Instant::now();
    let held = {
        let a = a.clone();
        tokio::spawn(async move {
            a.with_space_lock("outage", |lease| async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                lease.lost_reason()
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill9();
    let lost = held.await.unwrap().unwrap();
    assert_eq!(lost, Outcome::Ran(Some(LostReason::Expired)));
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(t0.elapsed())).await;
    let server = server.crash_and_restart();
    let t1 = Instant::now();
    let first = a
        .with_space_lock("outage", |lease| async move { lease.token() })
        .await;
    assert!(
        matches!(first, Ok(Outcome::Ran(_))),
        "first call after the restart: {first:?} after {:?}",
        t1.elapsed()
    );
    assert!(
        t1.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        t1.elapsed()
    );
    assert_eq!(holder(&server, &a.key("outage")), None);
}

/// Before: after a restart, the first `with_space_lock` and the first
/// `with_space_lock_wait` failed with "broken pipe" (the shared connection
/// and the pooled wait connection were stale).
#[kit::test]
async fn the_first_calls_after_a_restart_succeed() {
    let server = Server::new();
    let a = locks(&server, Options::default()).await;
    let run = |name: &'static str| {
        let a = a.clone();
        async move {
            a.with_space_lock(name, |lease| async move { lease.token() })
                .await
        }
    };
    let wait = |name: &'static str| {
        let a = a.clone();
        async move {
            a.with_space_lock_wait(name, Duration::from_secs(2), |lease| async move {
                lease.token()
            })
            .await
        }
    };
    assert!(run("r").await.unwrap().is_ran());
    assert!(wait("w").await.unwrap().is_ran());
    let server = server.restart_with(|b| b);
    assert!(
        run("r").await.unwrap().is_ran(),
        "first call after the restart"
    );
    assert!(
        wait("w").await.unwrap().is_ran(),
        "first wait after the restart"
    );
    let server = server.crash_and_restart();
    assert!(
        wait("w").await.unwrap().is_ran(),
        "first wait after a SIGKILL"
    );
    assert!(
        run("r").await.unwrap().is_ran(),
        "first call after a SIGKILL"
    );
    assert_eq!(holder(&server, &a.key("r")), None);
}

/// Before: with a dead server the call returned `Ran` only 7.5 s after the
/// body (redis-rs' reconnect retries), and nothing told the caller that the
/// lock stayed held.
#[kit::test]
async fn a_release_against_a_dead_server_ends_within_its_budget_and_says_so() {
    let logs = captured_logs();
    let server = Server::new();
    let a = locks(
        &server,
        Options::default().release_timeout(Duration::from_secs(1)),
    )
    .await;
    let key = a.key("dead");
    let kept: Mutex<Option<Lease>> = Mutex::new(None);
    let mut ended = Instant::now();
    let outcome = a
        .with_space_lock("dead", |lease| async {
            *kept.lock().unwrap() = Some(lease);
            let _ = redis::cmd("SHUTDOWN")
                .arg("NOSAVE")
                .query::<()>(&mut server.conn());
            ended = Instant::now();
            "ran"
        })
        .await
        .unwrap();
    let took = ended.elapsed();
    assert_eq!(
        outcome,
        Outcome::Ran("ran"),
        "a failed release never replaces Ran"
    );
    assert!(
        took < Duration::from_millis(2500),
        "the release took {took:?}"
    );
    let lease = kept.lock().unwrap().take().unwrap();
    assert_eq!(lease.lost_reason(), Some(LostReason::ReleaseFailed));
    assert!(!a.is_running("dead"));
    assert!(logs.has_line(&["WARN", "failed to release", &key]));
}

/// Before: an ACQUIRE that failed without a reply was released by a
/// background task, and calls on that name got `Skipped(InProgress)` until
/// it finished. Now the call releases before it returns the error.
#[kit::test]
async fn a_call_right_after_a_failed_one_is_not_in_progress() {
    let server = Server::new();
    let a = locks(
        &server,
        Options::default().request_timeout(Duration::from_millis(200)),
    )
    .await;
    let key = a.key("failed");
    pause_writes(&server, 700);
    let err = a.with_space_lock("failed", |_| async {}).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(err.is_unavailable());
    // The held ACQUIRE ran when the pause ended, and so did the RELEASE
    // queued behind it, before the error was returned.
    assert!(!a.is_running("failed"));
    assert_eq!(holder(&server, &key), None);
    let again = a
        .with_space_lock("failed", |lease| async move { lease.token() })
        .await
        .unwrap();
    assert!(again.is_ran(), "{again:?}");
}

/// Before: `Skipped(InProgress)` while a cancelled call's release ran in the
/// background. Now a new call waits for that release, then runs.
#[kit::test]
async fn a_call_right_after_a_cancelled_one_waits_for_its_release() {
    let server = Server::new();
    let a = locks(&server, Options::default()).await;
    let key = a.key("cancelled");
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let a2 = a.clone();
    let task = tokio::spawn(async move {
        a2.with_space_lock("cancelled", |_| async move {
            held_tx.send(()).unwrap();
            std::future::pending::<()>().await
        })
        .await
    });
    held_rx.await.unwrap();
    // Hold the background release for a moment.
    pause_writes(&server, 400);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert!(!a.is_running("cancelled"), "releasing is not running");
    let outcome = a
        .with_space_lock("cancelled", |lease| async move { lease.token() })
        .await
        .unwrap();
    assert!(outcome.is_ran(), "{outcome:?}");
    assert_eq!(holder(&server, &key), None);
    a.settle().await;
}

/// A server stopped (SIGSTOP) for less than the ttl holds the refreshes; the
/// lease survives and the release after it lands.
#[kit::test]
async fn a_stopped_server_shorter_than_the_ttl_keeps_the_lease() {
    let server = Server::new();
    let a = locks(&server, Options::default().ttl(Duration::from_millis(1500))).await;
    let pid: i32 = {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query(&mut server.conn())
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let key = a.key("stopped");
    let outcome = a
        .with_space_lock("stopped", |lease| async move {
            signal(pid, "STOP");
            // Stopped across a refresh (every 500 ms), well inside the ttl.
            tokio::time::sleep(Duration::from_millis(700)).await;
            signal(pid, "CONT");
            tokio::time::sleep(Duration::from_millis(600)).await;
            lease.is_lost()
        })
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Ran(false));
    assert_eq!(holder(&server, &key), None);
}

fn signal(pid: i32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// Bad input is refused before anything is sent, without panicking.
#[kit::test]
async fn bad_input_is_an_error_not_a_panic() {
    let server = Server::new();
    let a = locks(&server, Options::default()).await;
    for e in [
        a.with_space_lock("", |_| async {}).await.unwrap_err(),
        a.acquire("").await.unwrap_err(),
        a.info("").await.unwrap_err(),
    ] {
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    }
    let short = locks(&server, Options::default().ttl(Duration::from_millis(5))).await;
    let e = short.with_space_lock("x", |_| async {}).await.unwrap_err();
    assert!(e.to_string().contains("minimum"), "{e}");
    // Durations far past any clock: a timeout, not an overflow.
    let huge = locks(
        &server,
        Options::default()
            .request_timeout(Duration::MAX)
            .release_timeout(Duration::MAX)
            .wait_grace(Duration::MAX),
    )
    .await;
    let outcome = huge
        .with_space_lock_wait("x", Duration::MAX, |lease| async move { lease.is_lost() })
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Ran(false));
    let e = locks(&server, Options::default().ttl(Duration::MAX))
        .await
        .with_space_lock("x", |_| async {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("invalid ttl"), "{e}");
    assert_eq!(
        huge.with_space_lock("x", |_| async {}).await.unwrap(),
        Outcome::Ran(())
    );
}

kit::main!();
