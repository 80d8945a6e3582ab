//! The resource side of fencing, with a real SQL table:
//! `examples/fenced_sqlite.rs` run against a real server. A holder whose
//! lease really expired while it was stalled (its heartbeat starved too)
//! writes late, after another instance took the lock with a higher token
//! and wrote: SQLite changes 0 rows.

use spacelock_testkit as kit;

#[path = "../examples/fenced_sqlite.rs"]
#[allow(dead_code)]
mod example;

use example::{ensure_row, fenced_write, open_table, read_row};

#[kit::test]
fn a_stalled_holders_late_write_is_refused_by_the_table() {
    let server = kit::Server::new();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("docs.sqlite");
    let d = example::demo(&server.url(), &db, "doc-1").unwrap();
    println!("{d:?}");
    assert_eq!(d.a_first_write, 1, "A's write under its lease");
    assert_eq!(d.a_second_write, 1, "fence <= token: A may write again");
    assert!(d.a_saw_lost, "A's lease knows it expired");
    assert!(d.b_token > d.a_token, "B's token is newer");
    assert_eq!(d.b_write, 1, "B's write is accepted");
    assert_eq!(d.a_late_write, 0, "A's late write is refused");
    assert_eq!(d.row, ("B".to_string(), i64::try_from(d.b_token).unwrap()));
    // The server saw the same story: B's token was the last grant of the
    // name, and B released the lock when its body ended.
    let mut con = server.conn();
    let key = format!("{}doc-1", spacelock_client::DEFAULT_KEY_PREFIX);
    let holder: Option<String> = redis::cmd("GET").arg(&key).query(&mut con).unwrap();
    assert_eq!(holder, None);
    let b_token = i64::try_from(d.b_token).unwrap();
    assert_eq!(kit::fence_value(&mut con, &key), Some(b_token));
}

#[kit::test]
fn the_table_accepts_the_current_token_again_and_refuses_older_ones() {
    // Real term tokens (16 digits: term start in ms, then a counter) from a
    // real server, driven with the raw commands: a stale holder whose lease
    // expired, and the current one.
    let server = kit::Server::new();
    let mut con = server.conn();
    let stale = kit::acquire(&mut con, "raw", "stale", 50).unwrap();
    assert!(kit::wait_until(std::time::Duration::from_secs(5), || {
        redis::cmd("EXISTS")
            .arg("raw")
            .query::<i64>(&mut con)
            .unwrap()
            == 0
    }));
    let current = kit::acquire(&mut con, "raw", "current", 60_000).unwrap();
    assert!(stale > 1 << 50 && current == stale + 1, "{stale} {current}");
    let (stale, current) = (stale as u64, current as u64);

    let dir = tempfile::tempdir().unwrap();
    let db = open_table(&dir.path().join("t.sqlite")).unwrap();
    ensure_row(&db, "row").unwrap();
    assert_eq!(fenced_write(&db, "row", "stale 1", stale).unwrap(), 1);
    assert_eq!(fenced_write(&db, "row", "current 1", current).unwrap(), 1);
    assert_eq!(fenced_write(&db, "row", "current 2", current).unwrap(), 1);
    assert_eq!(fenced_write(&db, "row", "stale 2", stale).unwrap(), 0);
    assert_eq!(fenced_write(&db, "row", "ancient", 1).unwrap(), 0);
    assert_eq!(fenced_write(&db, "missing", "x", current).unwrap(), 0);
    assert_eq!(
        read_row(&db, "row").unwrap(),
        Some(("current 2".to_string(), current as i64)),
        "the exact token, not a rounded one"
    );
    // A newer token moves the fence on; the last one is then stale too.
    assert_eq!(fenced_write(&db, "row", "newer", current + 1).unwrap(), 1);
    assert_eq!(fenced_write(&db, "row", "current 3", current).unwrap(), 0);
}

kit::main!();
