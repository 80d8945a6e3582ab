//! The heartbeat under paused time against a scripted connection: when it
//! refreshes, when it declares a lease lost, how it retries.

use std::sync::atomic::{AtomicUsize, Ordering};

use redis::Value;

use super::*;
use crate::fake::{FakeConn, Reply};

const REFRESH: &str = "SPACELOCK.REFRESH";

struct Held {
    lost: Arc<LostSignal>,
    valid_until: Arc<ValidUntil>,
}

fn hold(hb: &Heartbeat, conn: &FakeConn, ttl_ms: u64) -> Held {
    let lost = LostSignal::new();
    let valid_until = ValidUntil::new(Instant::now(), Duration::from_millis(ttl_ms));
    let owner: Arc<str> = Arc::from("me");
    hb.register(conn, &owner, "k", ttl_ms, lost.clone(), valid_until.clone());
    Held { lost, valid_until }
}

/// Resolves when the lease is lost, with how long after `t0`.
async fn lost_after(held: &Held, t0: Instant) -> u128 {
    held.lost.cancelled().await;
    (Instant::now() - t0).as_millis()
}

#[tokio::test(start_paused = true)]
async fn refreshes_every_third_of_the_ttl() {
    let conn = FakeConn::new(|_| Reply::Value(Value::Int(1)));
    let hb = Heartbeat::new(None);
    let t0 = Instant::now();
    let held = hold(&hb, &conn, 3000);
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    assert_eq!(
        conn.times(REFRESH, t0),
        [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10_000]
    );
    assert!(!held.lost.is_lost());
    // The deadline follows the start of the last successful refresh.
    assert_eq!((held.valid_until.at() - t0).as_millis(), 13_000);
    let (_, args) = &conn.log()[0];
    assert_eq!(args, &[REFRESH, "k", "me", "3000"]);
}

#[tokio::test(start_paused = true)]
async fn lost_on_a_zero_reply() {
    let conn = FakeConn::new(|_| Reply::Value(Value::Int(0)));
    let hb = Heartbeat::new(None);
    let t0 = Instant::now();
    let held = hold(&hb, &conn, 3000);
    assert_eq!(lost_after(&held, t0).await, 1000);
    assert_eq!(held.lost.reason(), Some(LostReason::NotOwner));
    assert_eq!(hb.active(), 0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(conn.times(REFRESH, t0), [1000], "no refresh after the loss");
}

#[tokio::test(start_paused = true)]
async fn lost_when_no_refresh_succeeds_within_the_ttl() {
    // The server never answers: one refresh in flight, lost at the deadline.
    let conn = FakeConn::new(|_| Reply::Hang);
    let hb = Heartbeat::new(None);
    let t0 = Instant::now();
    let held = hold(&hb, &conn, 3000);
    assert_eq!(lost_after(&held, t0).await, 3000);
    assert_eq!(held.lost.reason(), Some(LostReason::Expired));
    assert_eq!(conn.times(REFRESH, t0), [1000], "one refresh, waited for");
    assert_eq!(hb.active(), 0);
}

#[tokio::test(start_paused = true)]
async fn lost_when_every_refresh_fails_and_retries_back_off() {
    let conn = FakeConn::new(|_| Reply::Io(std::io::ErrorKind::ConnectionRefused));
    let hb = Heartbeat::new(None);
    let t0 = Instant::now();
    let held = hold(&hb, &conn, 3000);
    assert_eq!(lost_after(&held, t0).await, 3000);
    assert_eq!(held.lost.reason(), Some(LostReason::Expired));
    // Retried 10 ms after the failure, then doubling; the next pause (capped
    // at the 1 s interval) would end past the deadline.
    assert_eq!(
        conn.times(REFRESH, t0),
        [1000, 1010, 1030, 1070, 1150, 1310, 1630, 2270]
    );
}

#[tokio::test(start_paused = true)]
async fn retries_promptly_after_an_io_error() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    // The first refresh finds the connection dropped (an idle timeout);
    // the retry goes out on the fresh one.
    let conn = FakeConn::new(move |_| match c.fetch_add(1, Ordering::SeqCst) {
        0 => Reply::Io(std::io::ErrorKind::BrokenPipe),
        _ => Reply::Value(Value::Int(1)),
    });
    let hb = Heartbeat::new(None);
    let t0 = Instant::now();
    let held = hold(&hb, &conn, 3000);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(conn.times(REFRESH, t0), [1000, 1010, 2010, 3010]);
    assert!(!held.lost.is_lost());
    assert_eq!((held.valid_until.at() - t0).as_millis(), 6010);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_held_by_the_server_is_waited_for() {
    // A write pause: the first refresh is answered 1.5 s late, inside the ttl.
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let conn = FakeConn::new(move |_| match c.fetch_add(1, Ordering::SeqCst) {
        0 => Reply::After(Duration::from_millis(1500), Value::Int(1)),
        _ => Reply::Value(Value::Int(1)),
    });
    let hb = Heartbeat::new(None);
    let t0 = Instant::now();
    let held = hold(&hb, &conn, 3000);
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(!held.lost.is_lost());
    // While it was in flight (its 2000 ms tick), no second refresh was sent;
    // the next went out at the following tick, inside the deadline of 4000.
    assert_eq!(conn.times(REFRESH, t0), [1000, 3000, 4000]);
    assert_eq!((held.valid_until.at() - t0).as_millis(), 7000);
}

#[tokio::test(start_paused = true)]
async fn a_reply_after_the_deadline_does_not_save_the_lease() {
    let conn = FakeConn::new(|_| Reply::After(Duration::from_millis(2500), Value::Int(1)));
    let hb = Heartbeat::new(None);
    let t0 = Instant::now();
    let held = hold(&hb, &conn, 3000);
    assert_eq!(lost_after(&held, t0).await, 3000);
    assert_eq!(held.lost.reason(), Some(LostReason::Expired));
}

#[tokio::test(start_paused = true)]
async fn leases_due_together_share_one_pipeline_and_unregister_stops_them() {
    let conn = FakeConn::new(|_| Reply::Value(Value::Int(1)));
    let hb = Heartbeat::new(None);
    let t0 = Instant::now();
    let owner: Arc<str> = Arc::from("me");
    let ids: Vec<u64> = (0..3)
        .map(|i| {
            let vu = ValidUntil::new(t0, Duration::from_millis(300));
            hb.register(&conn, &owner, &format!("k{i}"), 300, LostSignal::new(), vu)
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let sent = conn.log();
    assert_eq!(sent.len(), 3);
    assert!(sent.iter().all(|(t, _)| (*t - t0).as_millis() == 100));
    for id in ids {
        hb.unregister(id);
    }
    assert_eq!(hb.active(), 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(conn.log().len(), 3, "nothing after unregister");
}

#[test]
fn retry_delays() {
    let i = Duration::from_millis(1000);
    let ms: Vec<u128> = (1..=9).map(|n| retry_delay(n, i).as_millis()).collect();
    assert_eq!(ms, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    assert_eq!(retry_delay(u32::MAX, i), i);
    assert_eq!(
        retry_delay(1, Duration::from_millis(3)),
        Duration::from_millis(3)
    );
}

fn acked(replicas: usize) -> Option<Ack> {
    Some(Ack {
        replicas,
        timeout: Duration::from_millis(200),
        aof: false,
    })
}

#[tokio::test(start_paused = true)]
async fn an_acknowledged_refresh_moves_the_deadline() {
    let conn = FakeConn::new(|args| match args[0].as_str() {
        "WAIT" => Reply::Value(Value::Int(2)),
        _ => Reply::Value(Value::Int(1)),
    });
    let hb = Heartbeat::new(acked(2));
    let t0 = Instant::now();
    let held = hold(&hb, &conn, 3000);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(conn.times(REFRESH, t0), [1000, 2000]);
    assert_eq!(
        conn.times("WAIT", t0),
        [1000, 2000],
        "one WAIT per pipeline"
    );
    let (_, args) = &conn.log()[1];
    assert_eq!(args, &["WAIT", "2", "200"]);
    assert!(!held.lost.is_lost());
    assert_eq!((held.valid_until.at() - t0).as_millis(), 5000);
}

#[tokio::test(start_paused = true)]
async fn an_unacknowledged_refresh_leaves_the_deadline() {
    // Every refresh is taken by the primary (1), but only one of two
    // replicas acknowledges it: the lease ends one ttl after it began.
    let conn = FakeConn::new(|args| match args[0].as_str() {
        "WAIT" => Reply::After(Duration::from_millis(200), Value::Int(1)),
        _ => Reply::Value(Value::Int(1)),
    });
    let hb = Heartbeat::new(acked(2));
    let t0 = Instant::now();
    let held = hold(&hb, &conn, 3000);
    assert_eq!(lost_after(&held, t0).await, 3000);
    assert_eq!(held.lost.reason(), Some(LostReason::Expired));
    let tries = conn.times(REFRESH, t0);
    assert!(tries.len() > 3, "kept trying: {tries:?}");
    assert_eq!((held.valid_until.at() - t0).as_millis(), 3000);
}

#[tokio::test(start_paused = true)]
async fn no_ack_sends_no_wait() {
    let conn = FakeConn::new(|_| Reply::Value(Value::Int(1)));
    let hb = Heartbeat::new(None);
    let t0 = Instant::now();
    let _held = hold(&hb, &conn, 300);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(conn.times(REFRESH, t0).len() >= 3);
    assert!(conn.log().iter().all(|(_, c)| c[0] != "WAIT"));
}
