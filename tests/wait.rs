//! `SPACELOCK.ACQUIRE … WAIT timeout_ms` against real servers:
//! FIFO order, direct handoff on release and on expiry, timeouts,
//! disconnects, MULTI/scripts, other writers, replicas, limits, memory.
use spacelock_testkit as kit;

use std::net::TcpStream;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use kit::{
    acquire, acquire_wait, info_field, release, snapshot, stat, until_waiting, wait_until, Server,
    ServerBuilder,
};
use redis::Connection;

const LONG: Duration = Duration::from_secs(10);

fn conn(server: &Server) -> Connection {
    let con = server.conn();
    con.set_read_timeout(Some(LONG)).unwrap();
    con
}

fn get(con: &mut Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(con).unwrap()
}

fn waiting(con: &mut Connection) -> u64 {
    kit::waiting_clients(con)
}

/// The token the next grant of a name whose fence key is below it issues.
fn floor(con: &mut Connection) -> i64 {
    kit::info_field(con, "spacelock", "spacelock_token_floor")
}

/// A client that sends `ACQUIRE key owner ttl WAIT timeout` on its own
/// connection; the thread returns the reply and when it arrived.
fn spawn_waiter(
    server: &Server,
    key: &str,
    owner: &str,
    ttl: i64,
    timeout: i64,
) -> JoinHandle<(redis::RedisResult<Option<i64>>, Instant)> {
    let mut con = conn(server);
    let (key, owner) = (key.to_string(), owner.to_string());
    thread::spawn(move || {
        let r = acquire_wait(&mut con, &key, &owner, ttl, timeout);
        (r, Instant::now())
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[kit::test]
fn free_lock_is_granted_at_once_and_ten_waiters_in_arrival_order() {
    let server = Server::new();
    let mut con = conn(&server);
    let t0 = floor(&mut con);
    assert_eq!(
        acquire_wait(&mut con, "k", "h", 10_000, 0).unwrap(),
        Some(t0)
    );

    // Each waiter, once granted, records its token and releases, which hands
    // the lock to the next one.
    let mut waiters = Vec::new();
    for i in 0..10 {
        let mut c = conn(&server);
        let owner = format!("w{i}");
        waiters.push(thread::spawn(move || {
            let token = acquire_wait(&mut c, "k", &owner, 10_000, 0).unwrap();
            assert_eq!(release(&mut c, "k", &owner), 1);
            token
        }));
        until_waiting(&mut con, i + 1);
    }
    assert_eq!(acquire(&mut con, "k", "late", 1000), None, "no barging");
    let info: Vec<redis::Value> = redis::cmd("SPACELOCK.INFO")
        .arg("k")
        .query(&mut con)
        .unwrap();
    assert_eq!(info.get(7), Some(&redis::Value::Int(10)), "{info:?}");
    assert_eq!(stat(&mut con, "keys_with_waiters"), 1);
    assert_eq!(get(&mut con, "k").as_deref(), Some("h"));
    assert_eq!(release(&mut con, "k", "h"), 1);
    let tokens: Vec<Option<i64>> = waiters.into_iter().map(|h| h.join().unwrap()).collect();
    let expected: Vec<Option<i64>> = (t0 + 1..t0 + 11).map(Some).collect();
    assert_eq!(
        tokens, expected,
        "granted in arrival order, tokens increasing"
    );
    until_waiting(&mut con, 0);
    assert_eq!(get(&mut con, "k"), None);
    assert_eq!(stat(&mut con, "handoffs"), 10);
    assert_eq!(stat(&mut con, "keys_with_waiters"), 0);
}

#[kit::test]
fn handoff_on_release_is_pushed_without_polling() {
    let server = Server::new();
    let mut con = conn(&server);
    let trials = 50;
    let mut lat = Vec::new();
    for t in 0..trials {
        let key = format!("r{t}");
        let held = acquire(&mut con, &key, "h", 10_000).expect("free");
        let w = spawn_waiter(&server, &key, "w", 10_000, 0);
        until_waiting(&mut con, 1);
        // The lock passes in the RELEASE itself: the key already belongs to
        // the waiter when RELEASE replies.
        let sent = Instant::now();
        assert_eq!(release(&mut con, &key, "h"), 1);
        assert_eq!(get(&mut con, &key).as_deref(), Some("w"));
        let (reply, at) = w.join().unwrap();
        assert_eq!(reply.unwrap(), Some(held + 1));
        lat.push(at.saturating_duration_since(sent));
    }
    // One ACQUIRE per holder and per waiter: nobody retried.
    let calls = {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut con)
            .unwrap();
        let line = info
            .lines()
            .find(|l| l.starts_with("cmdstat_spacelock.acquire:"))
            .unwrap()
            .to_string();
        line.split(&[':', '=', ','][..])
            .nth(2)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(calls, 2 * trials as u64);
    lat.sort();
    eprintln!(
        "handoff on release (RELEASE sent -> waiter's reply): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms over {trials}",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap())
    );
    assert!(percentile(&lat, 0.5) < Duration::from_millis(10));
}

#[kit::test]
fn handoff_on_expiry_within_bound() {
    let server = Server::new();
    let mut con = conn(&server);
    let trials: usize = std::env::var("SPACELOCK_WAIT_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let ttl = 100;
    let mut lat = Vec::new();
    for t in 0..trials {
        let key = format!("e{t}");
        let sent = Instant::now();
        let held = acquire(&mut con, &key, "h", ttl).expect("free");
        let w = spawn_waiter(&server, &key, "w", 10_000, 0);
        // On a loaded box the waiter may only arrive after the expiry, and
        // then simply acquires: such a trial measures nothing.
        let (reply, at) = w.join().unwrap();
        assert_eq!(reply.unwrap(), Some(held + 1));
        assert_eq!(get(&mut con, &key).as_deref(), Some("w"));
        if stat(&mut con, "handoffs") == lat.len() as u64 {
            continue;
        }
        // The key expires at (server time of the ACQUIRE) + ttl, which is no
        // earlier than `sent + ttl`: this overestimates the latency slightly.
        lat.push(at.saturating_duration_since(sent + Duration::from_millis(ttl as u64)));
    }
    assert!(
        lat.len() >= trials * 4 / 5,
        "only {} trials queued in time",
        lat.len()
    );
    assert_eq!(stat(&mut con, "handoffs"), lat.len() as u64);
    lat.sort();
    let (p50, p90, p99, max) = (
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        *lat.last().unwrap(),
    );
    eprintln!(
        "handoff on expiry (TTL zero -> waiter's reply): p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms over {}",
        ms(p50),
        ms(p90),
        ms(p99),
        ms(max),
        lat.len()
    );
    // The contract is 10 ms. The median must meet it. Single trials on a
    // shared 2-core box lose the CPU to other processes for 20-100 ms now and
    // then (seen on every server version, at load average 4-6), so only the
    // 90th percentile gets a looser bound; a 10 Hz poll would fail both.
    assert!(p50 <= Duration::from_millis(10), "p50 {p50:?}");
    assert!(p90 <= Duration::from_millis(50), "p90 {p90:?}, max {max:?}");
}

#[kit::test]
fn refresh_moves_the_expiry_timer() {
    let server = Server::new();
    let mut con = conn(&server);
    let held = acquire(&mut con, "k", "h", 150).expect("free");
    let w = spawn_waiter(&server, "k", "w", 1000, 0);
    until_waiting(&mut con, 1);
    let refreshed: i64 = redis::cmd("SPACELOCK.REFRESH")
        .arg("k")
        .arg("h")
        .arg(600)
        .query(&mut con)
        .unwrap();
    let at = Instant::now();
    assert_eq!(refreshed, 1);
    let (reply, got) = w.join().unwrap();
    assert_eq!(reply.unwrap(), Some(held + 1));
    let waited = got.duration_since(at);
    assert!(
        waited >= Duration::from_millis(550),
        "granted after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(1000),
        "granted after {waited:?}"
    );
}

/// Runs the commands `before` adds, then `CLIENT PAUSE ms WRITE`, in one
/// MULTI/EXEC: the pause begins before any timer those commands schedule
/// can run.
fn then_pause_writes(con: &mut Connection, ms: u64, before: impl FnOnce(&mut redis::Pipeline)) {
    let mut pipe = redis::pipe();
    pipe.atomic();
    before(&mut pipe);
    let _: () = pipe
        .cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("WRITE")
        .ignore()
        .query(con)
        .unwrap();
}

fn unpause(con: &mut Connection) {
    let _: () = redis::cmd("CLIENT").arg("UNPAUSE").query(con).unwrap();
}

/// While writes are paused (`CLIENT PAUSE … WRITE`, as `FAILOVER` does), an
/// expired lock key stays stored and only reads as gone. The expiry timer
/// must not grant then: that would be a write during the pause, and the
/// server aborts when a write adds a key that is still stored (it did, before
/// the grant learned to wait). The waiter is granted once the pause ends.
#[kit::test]
fn expiry_handoff_waits_out_a_write_pause() {
    let server = Server::new();
    let mut con = conn(&server);
    let held = acquire(&mut con, "k", "holder", 300).expect("free");
    let waiter = spawn_waiter(&server, "k", "next", 10_000, 10_000);
    until_waiting(&mut con, 1);
    then_pause_writes(&mut con, 1500, |_| {});
    // Past the holder's expiry, inside the pause.
    thread::sleep(Duration::from_millis(700));
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG", "the server survived the expiry timer");
    assert_eq!(
        get(&mut con, "k"),
        None,
        "expired, as the server reports it"
    );
    assert_eq!(waiting(&mut con), 1, "not granted during the pause");
    let stored: Option<i64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg("k")
        .query(&mut con)
        .unwrap();
    assert!(stored.is_some(), "the pause keeps the expired key stored");
    let unpaused = Instant::now();
    unpause(&mut con);
    let (r, at) = waiter.join().unwrap();
    assert_eq!(r.unwrap(), Some(held + 1), "granted with the next token");
    let late = at.saturating_duration_since(unpaused);
    assert!(
        late < Duration::from_millis(500),
        "granted {late:?} after the pause"
    );
    assert_eq!(get(&mut con, "k").as_deref(), Some("next"));
    assert!(!server.log().contains("ASSERTION"), "{}", server.log());
}

/// A pause that starts after the lock key is already gone (a DEL in the
/// same transaction): the settle timer the DEL schedules runs during the
/// pause and must not write the grant then (a manual failover could lose
/// it); the waiter is granted once the pause ends.
#[kit::test]
fn a_grant_after_a_del_waits_out_a_write_pause() {
    let server = Server::new();
    let mut con = conn(&server);
    let held = acquire(&mut con, "k", "holder", 60_000).expect("free");
    let waiter = spawn_waiter(&server, "k", "next", 10_000, 10_000);
    until_waiting(&mut con, 1);
    then_pause_writes(&mut con, 1000, |p| {
        p.cmd("DEL").arg("k").ignore();
    });
    thread::sleep(Duration::from_millis(300));
    assert_eq!(waiting(&mut con), 1, "not granted during the pause");
    assert_eq!(get(&mut con, "k"), None, "nothing written during the pause");
    unpause(&mut con);
    let (r, _) = waiter.join().unwrap();
    assert_eq!(r.unwrap(), Some(held + 1));
    assert_eq!(get(&mut con, "k").as_deref(), Some("next"));
}

/// Valkey's `import-mode` keeps expired keys stored until a look-up for
/// writing: that is no pause, and the expiry handoff must still happen (the
/// write-pause backstop looks at keys only after such a look-up). Servers
/// without the setting are skipped with the reason.
#[kit::test]
fn expiry_handoff_works_in_valkey_import_mode() {
    let server = Server::new();
    let mut con = conn(&server);
    let set: redis::RedisResult<()> = redis::cmd("CONFIG")
        .arg("SET")
        .arg("import-mode")
        .arg("yes")
        .query(&mut con);
    if let Err(e) = set {
        kit::skip(format!("this server has no import-mode ({e})"));
    }
    let held = acquire(&mut con, "k", "holder", 200).expect("free");
    let (r, _) = spawn_waiter(&server, "k", "next", 10_000, 3_000)
        .join()
        .unwrap();
    assert_eq!(r.unwrap(), Some(held + 1), "granted at the holder's expiry");
    assert_eq!(get(&mut con, "k").as_deref(), Some("next"));
}

/// The same for the fence key, should someone give it a ttl: a `DEL` of the
/// lock key makes the next settle run from a timer, here during a write
/// pause begun in the same transaction, after the fence key's ttl ran out.
/// The grant must wait for the pause to end rather than write the expired,
/// still stored fence key (which also aborted the server).
#[kit::test]
fn a_grant_waits_out_a_write_pause_for_an_expired_fence_key() {
    let server = Server::new();
    let mut con = conn(&server);
    let held = acquire(&mut con, "k", "holder", 60_000).expect("free");
    let fence: String = redis::cmd("SPACELOCK.FENCEKEY")
        .arg("k")
        .query(&mut con)
        .unwrap();
    let waiter = spawn_waiter(&server, "k", "next", 10_000, 10_000);
    until_waiting(&mut con, 1);
    then_pause_writes(&mut con, 1000, |p| {
        p.cmd("PEXPIRE").arg(&fence).arg(1).ignore();
        p.cmd("DEBUG").arg("SLEEP").arg("0.01").ignore();
        p.cmd("DEL").arg("k").ignore();
    });
    thread::sleep(Duration::from_millis(300));
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG", "the server survived the grant timer");
    assert_eq!(waiting(&mut con), 1, "not granted during the pause");
    unpause(&mut con);
    let (r, _) = waiter.join().unwrap();
    // The fence key expired; the token still goes up (the term's counter).
    assert_eq!(r.unwrap(), Some(held + 1));
    assert_eq!(get(&mut con, "k").as_deref(), Some("next"));
}

/// An idle server sleeps until its next timer: at `hz 1` that is up to a
/// second, and the server's own blocked-client timeout check would answer a
/// 50 ms WAIT up to a second late (as it does BLPOP). The waiter's wake
/// timer answers it right after its deadline, every time.
#[kit::test]
fn timeouts_are_answered_on_time_on_an_idle_server() {
    let server = ServerBuilder::new().arg("hz", "1").start();
    let mut con = conn(&server);
    assert!(acquire(&mut con, "k", "h", 60_000).is_some());
    let mut took = Vec::new();
    for i in 0..5 {
        let start = Instant::now();
        assert_eq!(
            acquire_wait(&mut con, "k", format!("w{i}"), 1000, 50).unwrap(),
            None
        );
        took.push(start.elapsed());
        // A random phase against the server's cron for the next try.
        thread::sleep(Duration::from_millis(37 * i));
    }
    for t in &took {
        assert!(*t >= Duration::from_millis(50), "{took:?}");
        assert!(*t < Duration::from_millis(400), "late timeouts: {took:?}");
    }
    assert_eq!(stat(&mut con, "wait_timeouts"), 5);
    assert_eq!(waiting(&mut con), 0);
}

#[kit::test]
fn timeout_replies_nil_and_leaves_the_queue() {
    let server = Server::new();
    let mut con = conn(&server);
    let first = acquire(&mut con, "k", "h", 10_000).expect("free");
    let before = snapshot(&mut con);
    let start = Instant::now();
    assert_eq!(acquire_wait(&mut con, "k", "w", 1000, 100).unwrap(), None);
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(100), "{waited:?}");
    assert!(waited < Duration::from_millis(400), "{waited:?}");
    assert_eq!(stat(&mut con, "wait_timeouts"), 1);
    assert_eq!(waiting(&mut con), 0);
    assert_eq!(stat(&mut con, "keys_with_waiters"), 0);
    assert_eq!(snapshot(&mut con), before, "a timeout changes nothing");
    assert_eq!(release(&mut con, "k", "h"), 1);
    assert_eq!(get(&mut con, "k"), None, "nobody left to hand over to");

    // The largest timeout is accepted (and means "no limit" in practice).
    assert!(acquire(&mut con, "k", "h", 10_000).is_some());
    let w = spawn_waiter(&server, "k", "w", 1000, i64::MAX);
    until_waiting(&mut con, 1);
    thread::sleep(Duration::from_millis(50));
    assert_eq!(waiting(&mut con), 1);
    assert_eq!(release(&mut con, "k", "h"), 1);
    assert_eq!(w.join().unwrap().0.unwrap(), Some(first + 2));
}

/// Sends `ACQUIRE … WAIT 0` on a raw socket and returns it (to drop later).
fn raw_waiter(server: &Server, key: &str, owner: &str) -> TcpStream {
    kit::send_raw(
        server.port,
        &["SPACELOCK.ACQUIRE", key, owner, "10000", "WAIT", "0"],
    )
}

#[kit::test]
fn disconnected_waiter_is_never_granted() {
    let server = Server::new();
    let mut con = conn(&server);
    let held = acquire(&mut con, "k", "h", 10_000).expect("free");
    let gone = raw_waiter(&server, "k", "gone");
    until_waiting(&mut con, 1);
    let stays = spawn_waiter(&server, "k", "stays", 10_000, 0);
    until_waiting(&mut con, 2);
    drop(gone);
    until_waiting(&mut con, 1);
    assert_eq!(release(&mut con, "k", "h"), 1);
    assert_eq!(stays.join().unwrap().0.unwrap(), Some(held + 1));
    assert_eq!(get(&mut con, "k").as_deref(), Some("stays"));

    // The only waiter disconnects: the queue and its timer go away, and the
    // next release just frees the key.
    let gone = raw_waiter(&server, "k", "gone");
    until_waiting(&mut con, 1);
    drop(gone);
    until_waiting(&mut con, 0);
    assert_eq!(stat(&mut con, "keys_with_waiters"), 0);
    assert_eq!(release(&mut con, "k", "stays"), 1);
    assert_eq!(get(&mut con, "k"), None);
    assert_eq!(stat(&mut con, "handoffs"), 1);
}

/// The module owns WAIT deadlines, so `CLIENT UNBLOCK` (which the server
/// applies only to module clients with a timeout callback) leaves a WAIT
/// alone: it replies 0, the waiter stays queued and ends by its own grant
/// or deadline. (An unblock racing a grant could otherwise tell a client
/// "unblocked" while the lock was written in its name.)
#[kit::test]
fn client_unblock_does_not_interrupt_a_wait() {
    let server = Server::new();
    let mut con = conn(&server);
    let held = acquire(&mut con, "k", "h", 10_000).expect("free");
    let mut w = conn(&server);
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut w).unwrap();
    let h = thread::spawn(move || acquire_wait(&mut w, "k", "w", 1000, 0));
    until_waiting(&mut con, 1);
    for how in [None, Some("TIMEOUT"), Some("ERROR")] {
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("UNBLOCK").arg(id);
        if let Some(how) = how {
            cmd.arg(how);
        }
        let n: i64 = cmd.query(&mut con).unwrap();
        assert_eq!(n, 0, "CLIENT UNBLOCK {how:?}");
    }
    assert_eq!(waiting(&mut con), 1);
    assert_eq!(release(&mut con, "k", "h"), 1);
    assert_eq!(h.join().unwrap().unwrap(), Some(held + 1));

    // A finite WAIT still ends at its own deadline.
    let mut w = conn(&server);
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut w).unwrap();
    let h = thread::spawn(move || acquire_wait(&mut w, "k", "w2", 1000, 300));
    until_waiting(&mut con, 1);
    let n: i64 = redis::cmd("CLIENT")
        .arg("UNBLOCK")
        .arg(id)
        .arg("ERROR")
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(h.join().unwrap().unwrap(), None);
    assert_eq!(waiting(&mut con), 0);
    assert_eq!(get(&mut con, "k").as_deref(), Some("w"));
}

#[kit::test]
fn multi_and_scripts_do_not_block() {
    let server = Server::new();
    let mut con = conn(&server);
    let first = acquire(&mut con, "k", "h", 10_000).expect("free");
    let start = Instant::now();
    let (held, free): (Option<i64>, Option<i64>) = redis::pipe()
        .atomic()
        .cmd("SPACELOCK.ACQUIRE")
        .arg("k")
        .arg("w")
        .arg(1000)
        .arg("WAIT")
        .arg(0)
        .cmd("SPACELOCK.ACQUIRE")
        .arg("free")
        .arg("w")
        .arg(1000)
        .arg("WAIT")
        .arg(0)
        .query(&mut con)
        .unwrap();
    assert_eq!((held, free), (None, Some(first)));
    let r: Option<i64> = redis::cmd("EVAL")
        .arg("return redis.call('SPACELOCK.ACQUIRE', KEYS[1], 'w', 1000, 'WAIT', 0)")
        .arg(1)
        .arg("k")
        .query(&mut con)
        .unwrap();
    assert_eq!(r, None);
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(waiting(&mut con), 0);
    assert_eq!(stat(&mut con, "acquire_contended"), 2);

    // RELEASE inside MULTI hands over at the end of the event-loop
    // iteration, after the transaction: a GET in it still finds the key
    // free, and an ACQUIRE in it finds the lock due to the waiter.
    let w = spawn_waiter(&server, "k", "w", 10_000, 0);
    until_waiting(&mut con, 1);
    let (released, owner, other): (i64, Option<String>, Option<i64>) = redis::pipe()
        .atomic()
        .cmd("SPACELOCK.RELEASE")
        .arg("k")
        .arg("h")
        .cmd("GET")
        .arg("k")
        .cmd("SPACELOCK.ACQUIRE")
        .arg("k")
        .arg("other")
        .arg(1000)
        .query(&mut con)
        .unwrap();
    assert_eq!((released, owner, other), (1, None, None));
    assert_eq!(w.join().unwrap().0.unwrap(), Some(first + 1));
    assert_eq!(get(&mut con, "k").as_deref(), Some("w"));
}

#[kit::test]
fn other_writers_del_set_flushall() {
    let server = Server::new();
    let mut con = conn(&server);

    // DEL by another client frees the key: the head waiter gets it.
    let first = acquire(&mut con, "k", "h", 10_000).expect("free");
    let w = spawn_waiter(&server, "k", "w", 10_000, 0);
    until_waiting(&mut con, 1);
    let _: i64 = redis::cmd("DEL").arg("k").query(&mut con).unwrap();
    assert_eq!(w.join().unwrap().0.unwrap(), Some(first + 1));
    assert_eq!(get(&mut con, "k").as_deref(), Some("w"));

    // UNLINK too.
    let w = spawn_waiter(&server, "k", "w2", 10_000, 0);
    until_waiting(&mut con, 1);
    let _: i64 = redis::cmd("UNLINK").arg("k").query(&mut con).unwrap();
    assert_eq!(w.join().unwrap().0.unwrap(), Some(first + 2));

    // SET by a non-module client keeps the key taken: waiters keep waiting,
    // following the new expiry.
    let w = spawn_waiter(&server, "k", "w3", 10_000, 0);
    until_waiting(&mut con, 1);
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("foreign")
        .query(&mut con)
        .unwrap();
    thread::sleep(Duration::from_millis(150));
    assert_eq!(waiting(&mut con), 1);
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("foreign")
        .arg("PX")
        .arg(100)
        .query(&mut con)
        .unwrap();
    let t = Instant::now();
    assert_eq!(w.join().unwrap().0.unwrap(), Some(first + 3));
    assert!(
        t.elapsed() < Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(get(&mut con, "k").as_deref(), Some("w3"));

    // FLUSHALL empties everything, fence counters included: the waiter gets
    // the lock, and its token still goes up (tokens never go backwards).
    let w = spawn_waiter(&server, "k", "w4", 10_000, 0);
    until_waiting(&mut con, 1);
    let _: () = redis::cmd("FLUSHALL").query(&mut con).unwrap();
    assert_eq!(w.join().unwrap().0.unwrap(), Some(first + 4));
    assert_eq!(get(&mut con, "k").as_deref(), Some("w4"));

    // Databases are separate queues.
    let mut db1 = server
        .client()
        .get_connection()
        .and_then(|mut c| redis::cmd("SELECT").arg(1).query::<()>(&mut c).map(|_| c))
        .unwrap();
    assert_eq!(acquire(&mut db1, "k", "h1", 10_000), Some(first + 5));
    let mut c1 = conn(&server);
    let _: () = redis::cmd("SELECT").arg(1).query(&mut c1).unwrap();
    let w = thread::spawn(move || acquire_wait(&mut c1, "k", "w1", 10_000, 0));
    until_waiting(&mut con, 1);
    assert_eq!(release(&mut con, "k", "w4"), 1, "db 0 has no waiter");
    assert_eq!(waiting(&mut con), 1);
    let _: () = redis::cmd("FLUSHDB").query(&mut db1).unwrap();
    assert_eq!(w.join().unwrap().unwrap(), Some(first + 6));
    assert_eq!(stat(&mut con, "keys_with_waiters"), 0);

    // SWAPDB: a queue belongs to (db, key). Swapping an empty db 1 into
    // db 0 frees `k` there, so its waiter gets it (its fence went away too,
    // and the holder swapped into db 1 keeps a lower token).
    let _: () = redis::cmd("FLUSHALL").query(&mut con).unwrap();
    assert_eq!(acquire(&mut con, "k", "h", 600_000), Some(first + 7));
    let w = spawn_waiter(&server, "k", "w5", 10_000, 0);
    until_waiting(&mut con, 1);
    let _: () = redis::cmd("SWAPDB").arg(0).arg(1).query(&mut con).unwrap();
    assert_eq!(w.join().unwrap().0.unwrap(), Some(first + 8));
    assert_eq!(get(&mut con, "k").as_deref(), Some("w5"));
}

#[kit::test]
fn bad_wait_arguments_are_rejected_and_change_nothing() {
    let server = Server::new();
    let mut con = conn(&server);
    assert!(acquire(&mut con, "held", "h", 10_000).is_some());
    let before = snapshot(&mut con);
    let cases: &[&[&str]] = &[
        &["WAIT", "-1"],
        &["WAIT", "1.5"],
        &["WAIT", "abc"],
        &["WAIT", ""],
        &["WAIT", "99999999999999999999"],
        &["WAIT"],
        &["WAIT", "10", "WAIT", "10"],
        &["NOWAIT", "10"],
        &["WAIT", "10", "EXTRA"],
        &["PX", "5"],
    ];
    for key in ["held", "free"] {
        for extra in cases {
            let r: redis::RedisResult<Option<i64>> = redis::cmd("SPACELOCK.ACQUIRE")
                .arg(key)
                .arg("w")
                .arg(1000)
                .arg(*extra)
                .query(&mut con);
            let err = r.expect_err("must be rejected");
            assert_eq!(err.code(), Some("ERR"), "{extra:?}: {err}");
        }
    }
    assert_eq!(snapshot(&mut con), before);
    assert_eq!(waiting(&mut con), 0);
    // Wrong arity still reported as such.
    let r: redis::RedisResult<Option<i64>> = redis::cmd("SPACELOCK.ACQUIRE")
        .arg("k")
        .arg("w")
        .query(&mut con);
    assert!(r
        .unwrap_err()
        .to_string()
        .contains("wrong number of arguments"));
}

#[kit::test]
fn max_waiters_overflow_is_an_error() {
    let server = Server::new();
    let mut con = conn(&server);
    kit::config_set(&mut con, "spacelock.max-waiters", 2);
    let held = acquire(&mut con, "k", "h", 10_000).expect("free");
    let a = spawn_waiter(&server, "k", "a", 10_000, 0);
    until_waiting(&mut con, 1);
    let b = spawn_waiter(&server, "k", "b", 10_000, 0);
    until_waiting(&mut con, 2);
    let err = acquire_wait(&mut con, "k", "c", 1000, 0).unwrap_err();
    assert_eq!(err.code(), Some("ERR"));
    assert!(err.to_string().contains("max-waiters"), "{err}");
    // Another key has its own limit.
    let mut other = conn(&server);
    assert_eq!(acquire(&mut other, "k2", "h", 10_000), Some(held));
    let c = spawn_waiter(&server, "k2", "c", 10_000, 50);
    assert_eq!(c.join().unwrap().0.unwrap(), None);
    assert_eq!(release(&mut con, "k", "h"), 1);
    assert_eq!(a.join().unwrap().0.unwrap(), Some(held + 1));
    assert_eq!(release(&mut con, "k", "a"), 1);
    assert_eq!(b.join().unwrap().0.unwrap(), Some(held + 2));
    assert_eq!(waiting(&mut con), 0);
}

#[kit::test]
fn replica_without_module_stays_identical_and_replicas_refuse_wait() {
    let master = Server::new();
    let plain = ServerBuilder::new()
        .without_module()
        .replica_of(&master)
        .start();
    let with_module = ServerBuilder::new().replica_of(&master).start();
    let mut con = conn(&master);
    kit::until_link_up(&mut plain.conn(), &plain);
    kit::until_link_up(&mut with_module.conn(), &with_module);

    // Release handoffs.
    let mut holder = "h0".to_string();
    assert!(acquire(&mut con, "r", &holder, 60_000).is_some());
    for i in 1..=30 {
        let owner = format!("h{i}");
        let w = spawn_waiter(&master, "r", &owner, 60_000, 0);
        until_waiting(&mut con, 1);
        assert_eq!(release(&mut con, "r", &holder), 1);
        assert!(w.join().unwrap().0.unwrap().is_some());
        holder = owner;
    }
    // Expiry handoffs (timer-driven writes) and a DEL handoff.
    for i in 0..10 {
        let key = format!("e{i}");
        assert!(acquire(&mut con, &key, "short", 30).is_some());
        let w = spawn_waiter(&master, &key, "next", 60_000, 0);
        assert!(w.join().unwrap().0.unwrap().is_some());
    }
    assert!(acquire(&mut con, "d", "h", 60_000).is_some());
    let w = spawn_waiter(&master, "d", "next", 60_000, 0);
    until_waiting(&mut con, 1);
    let _: i64 = redis::cmd("DEL").arg("d").query(&mut con).unwrap();
    assert!(w.join().unwrap().0.unwrap().is_some());

    // Replicas refuse writes, WAIT included.
    let mut rc = conn(&with_module);
    let err = acquire_wait(&mut rc, "r", "x", 1000, 0).unwrap_err();
    assert_eq!(err.code(), Some("READONLY"), "{err}");

    kit::sync_replicas(&mut con, 2);
    let want = snapshot(&mut con);
    assert_eq!(want.len(), 1 + 1 + 10 * 2 + 2, "{want:?}");
    assert_eq!(snapshot(&mut plain.conn()), want);
    assert_eq!(snapshot(&mut with_module.conn()), want);
}

/// Grant cycles on a contended key, then timeout cycles behind a held key.
fn cycles(server: &Server, grant_pairs: usize, timeouts: usize) -> Duration {
    let mut con = conn(server);
    // Every worker queues behind the main connection first, so from then on
    // each ACQUIRE finds the lock held and each RELEASE hands it over.
    assert!(acquire(&mut con, "c", "main", 600_000).is_some());
    let workers = 8;
    let hs: Vec<_> = (0..workers)
        .map(|i| {
            let url = server.url();
            let per = grant_pairs / workers;
            thread::spawn(move || {
                let s = ServerRef(url);
                s.churn("c", format!("c{i}"), per, 5_000, true)
            })
        })
        .collect();
    until_waiting(&mut con, workers as u64);
    let start = Instant::now();
    assert_eq!(release(&mut con, "c", "main"), 1);
    for h in hs {
        h.join().unwrap();
    }
    let chain = start.elapsed();
    assert!(acquire(&mut con, "t", "holder", 600_000).is_some());
    let conns = 50;
    let hs: Vec<_> = (0..conns)
        .map(|i| {
            let url = server.url();
            let per = timeouts / conns;
            thread::spawn(move || ServerRef(url).churn("t", format!("t{i}"), per, 1, false))
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(release(&mut con, "t", "holder"), 1);
    chain
}

/// A server address usable from worker threads.
struct ServerRef(String);

impl ServerRef {
    /// One worker connection pipelining `pairs` × (ACQUIRE … WAIT wait_ms
    /// [, RELEASE]) in batches of 500.
    fn churn(&self, key: &str, owner: String, pairs: usize, wait_ms: i64, release: bool) {
        let client = redis::Client::open(self.0.as_str()).unwrap();
        let mut c = client.get_connection().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut left = pairs;
        while left > 0 {
            let n = left.min(500);
            let mut p = redis::pipe();
            for _ in 0..n {
                p.cmd("SPACELOCK.ACQUIRE")
                    .arg(key)
                    .arg(&owner)
                    .arg(1000)
                    .arg("WAIT")
                    .arg(wait_ms);
                if release {
                    p.cmd("SPACELOCK.RELEASE").arg(key).arg(&owner);
                }
            }
            let _: Vec<redis::Value> = p.query(&mut c).unwrap();
            left -= n;
        }
    }
}

/// `used_memory` once the workers' connections are gone and the figure has
/// settled: the server releases some client memory lazily (the figure drops
/// by up to ~1.5 MB within a second or two after many pipelining clients
/// close), so poll until two readings 300 ms apart agree.
fn used_memory_settled(con: &mut Connection) -> i64 {
    assert!(wait_until(LONG, || info_field(
        con,
        "clients",
        "connected_clients"
    ) == 1));
    assert!(wait_until(LONG, || waiting(con) == 0));
    let mut last = info_field(con, "memory", "used_memory");
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(300));
        let now = info_field(con, "memory", "used_memory");
        if (now - last).abs() < 8 * 1024 {
            return now;
        }
        last = now;
    }
    last
}

#[kit::test]
fn memory_returns_to_baseline_after_100k_cycles() {
    let server = ServerBuilder::new().arg("hz", "100").start();
    let mut con = conn(&server);
    // Warm-up: same shape, so allocator pools and tables exist already.
    let _ = cycles(&server, 4_000, 1_000);
    let base = used_memory_settled(&mut con);

    let (h0, t0, a0) = (
        stat(&mut con, "handoffs"),
        stat(&mut con, "wait_timeouts"),
        stat(&mut con, "acquired"),
    );
    let start = Instant::now();
    let chain = cycles(&server, 96_000, 10_000);
    let took = start.elapsed();
    // A few disconnect cycles too.
    assert!(acquire(&mut con, "t2", "holder", 600_000).is_some());
    for i in 0..200 {
        drop(raw_waiter(&server, "t2", &format!("d{i}")));
    }
    assert!(wait_until(LONG, || waiting(&mut con) == 0));
    assert_eq!(release(&mut con, "t2", "holder"), 1);
    let end = used_memory_settled(&mut con);
    let (handoffs, timeouts, immediate) = (
        stat(&mut con, "handoffs") - h0,
        stat(&mut con, "wait_timeouts") - t0,
        stat(&mut con, "acquired") - a0,
    );
    eprintln!(
        "handoff chain, 8 pipelining waiters: 96k ACQUIRE WAIT + RELEASE pairs in {chain:?} ({:.0} pairs/s)",
        96_000.0 / chain.as_secs_f64()
    );
    eprintln!(
        "106k WAIT cycles in {took:?}: {handoffs} handoffs, {timeouts} timeouts; used_memory {base} -> {end} ({:+} bytes)",
        end - base
    );
    // Every ACQUIRE … WAIT of the chain was granted, by a handoff or (when
    // the pipelines drift apart, more often on some servers) at once; the
    // handoff path itself must have run many times.
    assert!(
        handoffs + immediate >= 96_000,
        "grants {handoffs} + {immediate}"
    );
    assert!(handoffs > 1_000, "handoffs {handoffs}");
    assert!(timeouts >= 10_000, "timeouts {timeouts}");
    assert_eq!(stat(&mut con, "keys_with_waiters"), 0);
    // A leak of even 16 bytes per cycle would show as > 1.6 MB.
    assert!(
        (end - base).abs() < 256 * 1024,
        "used_memory {base} -> {end}"
    );
}

#[kit::test]
fn waiters_are_let_go_when_the_primary_becomes_a_replica() {
    let primary = Server::new();
    let other = ServerBuilder::new().without_module().start();
    let mut con = conn(&primary);
    assert!(acquire(&mut con, "k", "h", 600_000).is_some());
    let w = spawn_waiter(&primary, "k", "w", 10_000, 0);
    until_waiting(&mut con, 1);
    let start = Instant::now();
    kit::replicaof(&mut con, other.port);
    // Either the server itself (UNBLOCKED … master -> replica) or spacelock's
    // role-change handler unblocks the waiter; it must not stay blocked nor
    // be granted a lock on a replica.
    let err = w.join().unwrap().0.unwrap_err();
    eprintln!("waiter after REPLICAOF: {err}");
    assert_eq!(err.code(), Some("UNBLOCKED"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(waiting(&mut con), 0);
    assert_eq!(stat(&mut con, "keys_with_waiters"), 0);
    assert_eq!(stat(&mut con, "handoffs"), 0);
}

/// `FAILOVER` pauses the primary's writes until its replica has caught up.
/// With the replica stalled (`DEBUG SLEEP`), the holder's lease runs out
/// inside that pause: the primary must survive, must not grant during the
/// pause, and once it has become a replica lets the waiter go with
/// `-UNBLOCKED`; the new primary holds no lock for the waiter.
#[kit::test]
fn failover_with_an_expiring_holder_and_a_waiter() {
    let primary = ServerBuilder::new()
        .arg("repl-diskless-sync-delay", "0")
        .start();
    let replica = Server::new();
    let mut rcon = conn(&replica);
    kit::replicaof(&mut rcon, primary.port);
    let replication =
        |c: &mut Connection| -> String { redis::cmd("INFO").arg("replication").query(c).unwrap() };
    let mut con = conn(&primary);
    // FAILOVER needs the replica online as the primary sees it (after its
    // first ACK), which can come a little after the replica's link is up:
    // CI once got "FAILOVER target replica is not online".
    assert!(
        wait_until(LONG, || replication(&mut rcon)
            .contains("master_link_status:up")
            && replication(&mut con).contains("state=online")),
        "replica never synced"
    );
    assert!(acquire(&mut con, "k", "holder", 60_000).is_some());
    let w = spawn_waiter(&primary, "k", "next", 10_000, 0);
    until_waiting(&mut con, 1);
    // Stall the replica so that the failover's write pause outlives the lease.
    let stall = {
        let mut c = conn(&replica);
        thread::spawn(move || {
            let _: () = redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg("1.2")
                .query(&mut c)
                .unwrap();
        })
    };
    thread::sleep(Duration::from_millis(50));
    // Shorten the lease only now, so that however slow the setup was, it
    // runs out inside the pause (which lasts until the replica wakes).
    let refreshed: i64 = redis::cmd("SPACELOCK.REFRESH")
        .arg("k")
        .arg("holder")
        .arg(400)
        .query(&mut con)
        .unwrap();
    assert_eq!(refreshed, 1);
    let _: () = redis::cmd("FAILOVER")
        .arg("TO")
        .arg("127.0.0.1")
        .arg(replica.port)
        .arg("TIMEOUT")
        .arg(5000)
        .query(&mut con)
        .unwrap();
    thread::sleep(Duration::from_millis(600));
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(
        pong, "PONG",
        "the primary survived the lease expiring in the pause"
    );
    assert_eq!(
        stat(&mut con, "handoffs"),
        0,
        "no grant during the failover pause"
    );
    stall.join().unwrap();
    let err = w.join().unwrap().0.unwrap_err();
    assert_eq!(err.code(), Some("UNBLOCKED"), "{err}");
    assert!(
        wait_until(LONG, || replication(&mut rcon).contains("role:master")),
        "the replica was never promoted"
    );
    assert_eq!(
        get(&mut rcon, "k"),
        None,
        "no lock for the waiter on the new primary"
    );
    assert!(!primary.log().contains("ASSERTION"), "{}", primary.log());
}

#[kit::test]
fn cluster_waiters_are_not_granted_on_a_node_that_lost_the_slot() {
    let cluster = kit::Cluster::start(2);
    let key = "wait:migrating";
    let mut any = cluster.nodes[0].conn();
    let slot = kit::keyslot(&mut any, key);
    let from = cluster.owner_of(slot);
    let to = 1 - from;
    let mut src = conn(&cluster.nodes[from]);
    assert!(acquire(&mut src, key, "h", 60_000).is_some());
    let w = spawn_waiter(&cluster.nodes[from], key, "w", 60_000, 0);
    until_waiting(&mut src, 1);

    // Resharding moves the held lock (and its fence) away. MIGRATE deletes
    // the key on the source; granting the waiter there would create a second
    // holder in a slot the node gives up.
    let moved = cluster.migrate_slot(slot, from, to);
    assert!(moved.iter().any(|k| k == key.as_bytes()), "{moved:?}");
    let err = w.join().unwrap().0.unwrap_err();
    assert_eq!(err.code(), Some("TRYAGAIN"), "{err}");
    assert_eq!(waiting(&mut src), 0);
    let n: i64 = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(slot)
        .query(&mut src)
        .unwrap();
    assert_eq!(n, 0, "nothing re-created on the source");
    let mut dst = conn(&cluster.nodes[to]);
    assert_eq!(get(&mut dst, key).as_deref(), Some("h"));
}

kit::main!();
