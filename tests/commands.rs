//! The commands against a real server: every reply case, fencing, errors,
//! interop with the existing Lua-based service's `SET NX PX` + Lua recipe,
//! transactions/scripts, key specs, ACL, notifications, OOM.

use spacelock_testkit as kit;

use kit::{acquire, release, snapshot, Server, ServerBuilder};
use redis::{Connection, Value};
use spacelock_core::fence::key_slot;
use std::time::Duration;

/// The existing Lua-based service's exact scripts (space-lock.service.ts).
const LUA_SERVICE_RELEASE: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end"#;
const LUA_SERVICE_REFRESH: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("pexpire", KEYS[1], ARGV[2]) else return 0 end"#;

fn refresh(con: &mut Connection, key: &[u8], owner: &[u8], ttl: i64) -> i64 {
    redis::cmd("SPACELOCK.REFRESH")
        .arg(key)
        .arg(owner)
        .arg(ttl)
        .query(con)
        .unwrap()
}

fn fence_key(con: &mut Connection, key: &[u8]) -> Vec<u8> {
    redis::cmd("SPACELOCK.FENCEKEY")
        .arg(key)
        .query(con)
        .unwrap()
}

/// Sends `args` and returns the error reply as "CODE detail".
fn error_of(con: &mut Connection, args: &[&[u8]]) -> String {
    let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query::<Value>(con) {
        Ok(Value::ServerError(e)) => format!("{} {}", e.code(), e.details().unwrap_or("")),
        Ok(v) => panic!("expected an error for {args:?}, got {v:?}"),
        Err(e) => format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or("")),
    }
}

fn pttl(con: &mut Connection, key: &[u8]) -> i64 {
    redis::cmd("PTTL").arg(key).query(con).unwrap()
}

fn get(con: &mut Connection, key: &[u8]) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(key).query(con).unwrap()
}

#[kit::test]
fn acquire_refresh_release_reply_cases() {
    let server = Server::new();
    let mut con = server.conn();

    // Free → the token floor (a fresh name has no fence key, and counts
    // from the term's floor); the key is a plain string holding the owner
    // with a TTL.
    let floor = kit::token_floor(&mut con);
    assert_eq!(acquire(&mut con, b"space-1", b"alice", 10_000), Some(floor));
    assert_eq!(kit::token_floor(&mut con), floor, "the floor stays");
    assert_eq!(get(&mut con, b"space-1").as_deref(), Some(&b"alice"[..]));
    let t: String = redis::cmd("TYPE").arg("space-1").query(&mut con).unwrap();
    assert_eq!(t, "string");
    let ttl = pttl(&mut con, b"space-1");
    assert!((9_000..=10_000).contains(&ttl), "pttl {ttl}");

    // Held: nil for everyone, the holder included (SET NX semantics).
    assert_eq!(acquire(&mut con, b"space-1", b"alice", 10_000), None);
    assert_eq!(acquire(&mut con, b"space-1", b"bob", 10_000), None);
    assert!(pttl(&mut con, b"space-1") <= 10_000, "nil changes nothing");

    // REFRESH: only the holder, the value is not rewritten.
    assert_eq!(refresh(&mut con, b"space-1", b"bob", 60_000), 0);
    assert!(pttl(&mut con, b"space-1") <= 10_000);
    assert_eq!(refresh(&mut con, b"space-1", b"alice", 60_000), 1);
    assert!(pttl(&mut con, b"space-1") > 50_000);
    assert_eq!(get(&mut con, b"space-1").as_deref(), Some(&b"alice"[..]));
    assert_eq!(refresh(&mut con, b"missing", b"alice", 60_000), 0);
    assert_eq!(
        kit::all_keys(&mut con).len(),
        2,
        "refresh of a missing key creates nothing"
    );

    // RELEASE: only the holder.
    assert_eq!(release(&mut con, b"space-1", b"bob"), 0);
    assert_eq!(get(&mut con, b"space-1").as_deref(), Some(&b"alice"[..]));
    assert_eq!(release(&mut con, b"space-1", b"alice"), 1);
    assert_eq!(get(&mut con, b"space-1"), None);
    assert_eq!(release(&mut con, b"space-1", b"alice"), 0);

    // Free again: the next grant carries the next token (nothing was issued
    // in between).
    assert_eq!(
        acquire(&mut con, b"space-1", b"bob", 10_000),
        Some(floor + 1)
    );
}

#[kit::test]
fn binary_safe_keys_and_owners() {
    let server = Server::new();
    let mut con = server.conn();
    let key: &[u8] = b"k\x00\r\n\xff\xfe{}";
    let owner: &[u8] = b"\x00o\r\nw\xc3\x28ner\xff";
    let other: &[u8] = b"\x00o\r\nw\xc3\x28ner\xfe";
    let floor = kit::token_floor(&mut con);
    assert_eq!(acquire(&mut con, key, owner, 5_000), Some(floor));
    assert_eq!(get(&mut con, key).as_deref(), Some(owner));
    assert_eq!(refresh(&mut con, key, other, 5_000), 0);
    assert_eq!(release(&mut con, key, other), 0);
    assert_eq!(refresh(&mut con, key, owner, 5_000), 1);
    // A prefix of the owner is not the owner.
    assert_eq!(release(&mut con, key, &owner[..owner.len() - 1]), 0);
    assert_eq!(release(&mut con, key, owner), 1);
    assert_eq!(acquire(&mut con, key, other, 5_000), Some(floor + 1));
    let fence = fence_key(&mut con, key);
    assert_eq!(
        get(&mut con, &fence),
        Some((floor + 1).to_string().into_bytes())
    );
}

#[kit::test]
fn tokens_increase_across_release_expiry_and_delete() {
    let server = Server::new();
    let mut con = server.conn();
    let mut last = kit::token_floor(&mut con) - 1;
    for round in 0..5 {
        let t = acquire(&mut con, b"lock", b"o", 50).expect("free");
        assert_eq!(t, last + 1, "round {round}: {t} after {last}");
        last = t;
        match round % 3 {
            0 => assert_eq!(release(&mut con, b"lock", b"o"), 1),
            1 => {
                let _: i64 = redis::cmd("DEL").arg("lock").query(&mut con).unwrap();
            }
            _ => assert!(kit::wait_until(Duration::from_secs(2), || get(
                &mut con, b"lock"
            )
            .is_none())),
        }
    }
    // Each name counts on its own (term mode): a fresh name starts at the
    // term's floor, whatever other names were issued.
    let floor = kit::token_floor(&mut con);
    assert_eq!(acquire(&mut con, b"other", b"o", 1000), Some(floor));
    // GET on the fence key shows the last token; the key expires a
    // retention (ten minutes by default) after the lease it fenced.
    let fence = fence_key(&mut con, b"lock");
    assert!(fence.starts_with(b"spacelock:fence:{") && fence.ends_with(b"}:lock"));
    assert_eq!(get(&mut con, &fence), Some(last.to_string().into_bytes()));
    let left = pttl(&mut con, &fence);
    assert!((590_000..=600_050).contains(&left), "fence pttl {left}");
}

#[kit::test]
fn counter_mode_keeps_plain_per_name_counters() {
    // `spacelock.token-mode counter`: the old rule, fence + 1 per name.
    let server = ServerBuilder::new().token_mode("counter").start();
    let mut con = server.conn();
    assert_eq!(acquire(&mut con, b"space-1", b"alice", 10_000), Some(1));
    assert_eq!(acquire(&mut con, b"space-1", b"bob", 10_000), None);
    assert_eq!(release(&mut con, b"space-1", b"alice"), 1);
    assert_eq!(acquire(&mut con, b"space-1", b"bob", 10_000), Some(2));
    // Each name has its own counter.
    assert_eq!(acquire(&mut con, b"other", b"o", 1000), Some(1));
    let fence = fence_key(&mut con, b"space-1");
    assert_eq!(get(&mut con, &fence).as_deref(), Some(&b"2"[..]));
    // A counter set by hand is continued; a lost one starts again at 1
    // (what term mode exists to prevent).
    let _: () = redis::cmd("SET")
        .arg(&fence)
        .arg(99)
        .query(&mut con)
        .unwrap();
    assert_eq!(release(&mut con, b"space-1", b"bob"), 1);
    assert_eq!(acquire(&mut con, b"space-1", b"o", 1000), Some(100));
    assert_eq!(release(&mut con, b"space-1", b"o"), 1);
    let _: i64 = redis::cmd("DEL").arg(&fence).query(&mut con).unwrap();
    assert_eq!(acquire(&mut con, b"space-1", b"o", 1000), Some(1));
}

#[kit::test]
fn fence_key_shares_the_lock_slot_for_awkward_names() {
    let server = Server::new();
    let mut con = server.conn();
    let keys: &[&[u8]] = &[
        b"git-sync:lock:space-42",
        b"{tenant-7}:lock",
        b"{}",
        b"{}x",
        b"x{",
        b"}x{",
        b"a{b}c{d}",
        b"\x00\xff{\x80\x81}",
        b"\xc3\x28",
        b"",
    ];
    for key in keys {
        if key.is_empty() {
            continue; // the empty key name is valid but pointless; skip it
        }
        let fence = fence_key(&mut con, key);
        // The core's slot rule, checked against Redis's reference vectors
        // in `core/src/fence.rs` (`CLUSTER KEYSLOT` needs cluster mode on
        // Redis 7.0; `tests/cluster.rs` checks against the server's).
        assert_eq!(
            key_slot(&fence),
            key_slot(key),
            "key {key:?} fence {fence:?}"
        );
        let floor = kit::token_floor(&mut con);
        assert_eq!(acquire(&mut con, key, b"o", 1000), Some(floor));
        assert_eq!(get(&mut con, &fence), Some(floor.to_string().into_bytes()));
    }
}

#[kit::test]
fn refresh_zero_never_deletes() {
    // redis-py#4279: PEXPIRE 0 deletes the key and reports success.
    let server = Server::new();
    let mut con = server.conn();
    acquire(&mut con, b"k", b"o", 10_000).unwrap();
    for ttl in [&b"0"[..], b"-1", b"-0"] {
        let e = error_of(&mut con, &[b"SPACELOCK.REFRESH", b"k", b"o", ttl]);
        assert!(e.starts_with("ERR invalid ttl"), "{e}");
    }
    assert_eq!(get(&mut con, b"k").as_deref(), Some(&b"o"[..]));
}

#[kit::test]
fn malformed_calls_get_errors_and_change_nothing() {
    let server = Server::new();
    let mut con = server.conn();
    // A populated keyspace: a held lock, a list, a fence key that is a list.
    acquire(&mut con, b"held", b"owner", 60_000).unwrap();
    let _: () = redis::cmd("RPUSH")
        .arg("alist")
        .arg("x")
        .query(&mut con)
        .unwrap();
    let bad_fence = fence_key(&mut con, b"badfence");
    let _: () = redis::cmd("RPUSH")
        .arg(&bad_fence)
        .arg("x")
        .query(&mut con)
        .unwrap();
    let corrupt_fence = fence_key(&mut con, b"corrupt");
    let _: () = redis::cmd("SET")
        .arg(&corrupt_fence)
        .arg("not-a-number")
        .query(&mut con)
        .unwrap();
    let long_owner = vec![b'o'; 257];
    let max_owner = vec![b'o'; 256];
    let huge = b"86400001".to_vec();

    // (argv, expected prefix of "CODE detail")
    const ARITY: &str = "ERR wrong number of arguments";
    const NOT_INTEGER: &str = "ERR invalid ttl: not a base-10 integer";
    const NOT_POSITIVE: &str = "ERR invalid ttl: must be a positive";
    const ABOVE_MAX: &str = "ERR invalid ttl: above spacelock.max-ttl";
    const NO_OWNER: &str = "ERR invalid owner: must not be empty";
    const LONG_OWNER: &str = "ERR invalid owner: longer than spacelock.max-owner-len";
    let acq: &[u8] = b"SPACELOCK.ACQUIRE";
    let refresh: &[u8] = b"SPACELOCK.REFRESH";
    let rel: &[u8] = b"SPACELOCK.RELEASE";
    let info: &[u8] = b"SPACELOCK.INFO";
    let cases: Vec<(Vec<&[u8]>, &str)> = vec![
        (vec![acq], ARITY),
        (vec![acq, b"k"], ARITY),
        (vec![acq, b"k", b"o"], ARITY),
        (vec![refresh, b"k", b"o"], ARITY),
        (vec![refresh, b"k", b"o", b"1", b"2"], ARITY),
        (vec![rel, b"k"], ARITY),
        (vec![rel, b"k", b"o", b"x"], ARITY),
        (vec![info], ARITY),
        (vec![acq, b"k", b"o", b"abc"], NOT_INTEGER),
        (vec![acq, b"k", b"o", b"1.5"], NOT_INTEGER),
        (vec![acq, b"k", b"o", b"1e3"], NOT_INTEGER),
        (vec![acq, b"k", b"o", b" 10"], NOT_INTEGER),
        (vec![acq, b"k", b"o", b"+10"], NOT_INTEGER),
        (vec![acq, b"k", b"o", b""], NOT_INTEGER),
        (vec![acq, b"k", b"o", b"99999999999999999999"], NOT_INTEGER),
        (vec![acq, b"k", b"o", b"0"], NOT_POSITIVE),
        (vec![acq, b"k", b"o", b"-5"], NOT_POSITIVE),
        (vec![acq, b"k", b"o", &huge], ABOVE_MAX),
        (vec![refresh, b"held", b"owner", b"0"], NOT_POSITIVE),
        (vec![refresh, b"held", b"owner", b"x"], NOT_INTEGER),
        (vec![refresh, b"held", b"owner", &huge], ABOVE_MAX),
        (vec![acq, b"k", b"", b"1000"], NO_OWNER),
        (vec![refresh, b"held", b"", b"1000"], NO_OWNER),
        (vec![rel, b"held", b""], NO_OWNER),
        (vec![acq, b"k", &long_owner, b"1000"], LONG_OWNER),
        (vec![rel, b"held", &long_owner], LONG_OWNER),
        (vec![acq, b"alist", b"o", b"1000"], "WRONGTYPE"),
        (vec![refresh, b"alist", b"o", b"1000"], "WRONGTYPE"),
        (vec![rel, b"alist", b"o"], "WRONGTYPE"),
        (vec![info, b"alist"], "WRONGTYPE"),
        (
            vec![acq, b"badfence", b"o", b"1000"],
            "WRONGTYPE the lock's fence key",
        ),
        (
            vec![acq, b"corrupt", b"o", b"1000"],
            "ERR the lock's fence key",
        ),
    ];
    assert!(cases.len() >= 25);
    let before = snapshot(&mut con);
    for (argv, want) in &cases {
        let got = error_of(&mut con, argv);
        assert!(
            got.starts_with(want),
            "{argv:?}: got {got:?}, want prefix {want:?}"
        );
        let after = snapshot(&mut con);
        // PEXPIRETIME is absolute, so an unchanged keyspace compares equal.
        assert_eq!(after, before, "{argv:?} changed the keyspace");
    }
    // The maximum owner length itself is accepted.
    let floor = kit::token_floor(&mut con);
    assert_eq!(
        acquire(&mut con, b"maxowner", &max_owner, 1000),
        Some(floor)
    );
}

#[kit::test]
fn expiry_overflow_is_rejected() {
    let server = Server::new();
    let mut con = server.conn();
    kit::config_set(&mut con, "spacelock.max-ttl", i64::MAX);
    let big = (i64::MAX - 1000).to_string();
    let e = error_of(
        &mut con,
        &[b"SPACELOCK.ACQUIRE", b"k", b"o", big.as_bytes()],
    );
    assert!(
        e.starts_with("ERR invalid ttl: the absolute expiry time would overflow"),
        "{e}"
    );
    assert!(kit::all_keys(&mut con).is_empty());
    acquire(&mut con, b"k", b"o", 1000).unwrap();
    let e = error_of(
        &mut con,
        &[b"SPACELOCK.REFRESH", b"k", b"o", big.as_bytes()],
    );
    assert!(e.contains("overflow"), "{e}");
}

#[kit::test]
fn lua_service_works_on_module_locks_and_module_works_on_lua_service_locks() {
    let server = Server::new();
    let mut con = server.conn();
    let release_lua = redis::Script::new(LUA_SERVICE_RELEASE);
    let refresh_lua = redis::Script::new(LUA_SERVICE_REFRESH);

    // Module lock, the Lua service's refresh + release.
    acquire(&mut con, b"git-sync:lock:s1", b"instance-a", 5_000).unwrap();
    let r: i64 = refresh_lua
        .key("git-sync:lock:s1")
        .arg("instance-b")
        .arg(60_000)
        .invoke(&mut con)
        .unwrap();
    assert_eq!(r, 0);
    let r: i64 = refresh_lua
        .key("git-sync:lock:s1")
        .arg("instance-a")
        .arg(60_000)
        .invoke(&mut con)
        .unwrap();
    assert_eq!(r, 1);
    assert!(pttl(&mut con, b"git-sync:lock:s1") > 50_000);
    let r: i64 = release_lua
        .key("git-sync:lock:s1")
        .arg("instance-b")
        .invoke(&mut con)
        .unwrap();
    assert_eq!(r, 0);
    let r: i64 = release_lua
        .key("git-sync:lock:s1")
        .arg("instance-a")
        .invoke(&mut con)
        .unwrap();
    assert_eq!(r, 1);
    assert_eq!(get(&mut con, b"git-sync:lock:s1"), None);

    // The Lua service's lock (SET NX PX), module refresh + release; ACQUIRE sees it held.
    let ok: Option<String> = redis::cmd("SET")
        .arg("git-sync:lock:s2")
        .arg("instance-a")
        .arg("PX")
        .arg(5_000)
        .arg("NX")
        .query(&mut con)
        .unwrap();
    assert_eq!(ok.as_deref(), Some("OK"));
    assert_eq!(
        acquire(&mut con, b"git-sync:lock:s2", b"instance-b", 5_000),
        None
    );
    assert_eq!(
        refresh(&mut con, b"git-sync:lock:s2", b"instance-b", 60_000),
        0
    );
    assert_eq!(
        refresh(&mut con, b"git-sync:lock:s2", b"instance-a", 60_000),
        1
    );
    assert!(pttl(&mut con, b"git-sync:lock:s2") > 50_000);
    assert_eq!(release(&mut con, b"git-sync:lock:s2", b"instance-b"), 0);
    assert_eq!(release(&mut con, b"git-sync:lock:s2", b"instance-a"), 1);
    // And the Lua service's SET NX sees a module lock as held.
    acquire(&mut con, b"git-sync:lock:s3", b"instance-a", 5_000).unwrap();
    let ok: Option<String> = redis::cmd("SET")
        .arg("git-sync:lock:s3")
        .arg("instance-b")
        .arg("PX")
        .arg(5_000)
        .arg("NX")
        .query(&mut con)
        .unwrap();
    assert_eq!(ok, None);
}

#[kit::test]
fn works_inside_multi_exec_and_lua() {
    let server = Server::new();
    let mut con = server.conn();
    let floor = kit::token_floor(&mut con);
    let (t1, t2, r, rel): (Option<i64>, Option<i64>, i64, i64) = redis::pipe()
        .atomic()
        .cmd("SPACELOCK.ACQUIRE")
        .arg("m")
        .arg("o")
        .arg(5000)
        .cmd("SPACELOCK.ACQUIRE")
        .arg("m")
        .arg("p")
        .arg(5000)
        .cmd("SPACELOCK.REFRESH")
        .arg("m")
        .arg("o")
        .arg(9000)
        .cmd("SPACELOCK.RELEASE")
        .arg("m")
        .arg("o")
        .query(&mut con)
        .unwrap();
    assert_eq!((t1, t2, r, rel), (Some(floor), None, 1, 1));

    // Lua holds integers as doubles; term tokens stay below 2^53, so the
    // script sees them exactly (tests/tokens.rs checks it); the fence key
    // holds the token's exact digits.
    let lua = redis::Script::new(
        r#"local t = redis.call('SPACELOCK.ACQUIRE', KEYS[1], ARGV[1], 5000)
           local again = redis.call('SPACELOCK.ACQUIRE', KEYS[1], ARGV[1], 5000)
           local r = redis.call('SPACELOCK.REFRESH', KEYS[1], ARGV[1], 7000)
           local owner = redis.call('GET', KEYS[1])
           local fence = redis.call('GET', redis.call('SPACELOCK.FENCEKEY', KEYS[1]))
           local rel = redis.call('SPACELOCK.RELEASE', KEYS[1], ARGV[1])
           return {type(t), tostring(again), r, owner, rel, fence}"#,
    );
    let v: Vec<Value> = lua.key("m").arg("lua-owner").invoke(&mut con).unwrap();
    assert_eq!(v[0], Value::BulkString(b"number".to_vec()), "granted");
    assert_eq!(
        v[5],
        Value::BulkString((floor + 1).to_string().into_bytes()),
        "the next token"
    );
    assert_eq!(
        v[1],
        Value::BulkString(b"false".to_vec()),
        "nil becomes false in Lua"
    );
    assert_eq!(v[2], Value::Int(1));
    assert_eq!(v[3], Value::BulkString(b"lua-owner".to_vec()));
    assert_eq!(v[4], Value::Int(1));
    // Errors inside a script surface as script errors, not crashes.
    let e = redis::Script::new("return redis.call('SPACELOCK.ACQUIRE', KEYS[1], 'o', 0)")
        .key("m")
        .invoke::<Value>(&mut con)
        .unwrap_err();
    assert!(e.to_string().contains("invalid ttl"), "{e}");
}

#[kit::test]
fn failed_owner_check_does_not_invalidate_watch() {
    let server = Server::new();
    let mut con = server.conn();
    let mut other = server.conn();
    acquire(&mut con, b"w", b"owner", 10_000).unwrap();
    // WATCH, then a failed REFRESH/RELEASE from another client: EXEC succeeds.
    let _: () = redis::cmd("WATCH").arg("w").query(&mut con).unwrap();
    assert_eq!(refresh(&mut other, b"w", b"intruder", 10_000), 0);
    assert_eq!(release(&mut other, b"w", b"intruder"), 0);
    let r: Option<(String,)> = redis::pipe().atomic().cmd("PING").query(&mut con).unwrap();
    assert!(r.is_some(), "EXEC aborted by a no-op");
    // A real change does invalidate it.
    let _: () = redis::cmd("WATCH").arg("w").query(&mut con).unwrap();
    assert_eq!(refresh(&mut other, b"w", b"owner", 10_000), 1);
    let r: Option<(String,)> = redis::pipe().atomic().cmd("PING").query(&mut con).unwrap();
    assert!(r.is_none(), "EXEC should abort after a successful REFRESH");
}

#[kit::test]
fn command_getkeys_and_key_specs() {
    let server = Server::new();
    let mut con = server.conn();
    let calls: &[&[&str]] = &[
        &["SPACELOCK.ACQUIRE", "git-sync:lock:a", "o", "1000"],
        &["SPACELOCK.REFRESH", "git-sync:lock:b", "o", "1000"],
        &["SPACELOCK.RELEASE", "git-sync:lock:c", "o"],
        &["SPACELOCK.INFO", "git-sync:lock:d"],
    ];
    for call in calls {
        let keys: Vec<String> = redis::cmd("COMMAND")
            .arg("GETKEYS")
            .arg(*call)
            .query(&mut con)
            .unwrap();
        assert_eq!(keys, vec![call[1].to_string()], "{call:?}");
    }
    // Arity is enforced by the server from the registered info.
    let info: Vec<Value> = redis::cmd("COMMAND")
        .arg("INFO")
        .arg("spacelock.release")
        .query(&mut con)
        .unwrap();
    match &info[0] {
        Value::Array(fields) => assert_eq!(fields[1], Value::Int(3)),
        other => panic!("{other:?}"),
    }
}

#[kit::test]
fn acl_key_patterns_apply() {
    let server = Server::new();
    let mut admin = server.conn();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "worker", "on", ">pw", "~allowed:*", "+@all"])
        .query(&mut admin)
        .unwrap();
    let mut con = redis::Client::open(format!("redis://worker:pw@127.0.0.1:{}/", server.port))
        .unwrap()
        .get_connection()
        .unwrap();
    let floor = kit::token_floor(&mut admin);
    assert_eq!(acquire(&mut con, b"allowed:x", b"o", 1000), Some(floor));
    assert_eq!(refresh(&mut con, b"allowed:x", b"o", 1000), 1);
    for argv in [
        &[&b"SPACELOCK.ACQUIRE"[..], b"denied:x", b"o", b"1000"][..],
        &[b"SPACELOCK.REFRESH", b"denied:x", b"o", b"1000"],
        &[b"SPACELOCK.RELEASE", b"denied:x", b"o"],
        &[b"SPACELOCK.INFO", b"denied:x"],
    ] {
        let e = error_of(&mut con, argv);
        assert!(e.starts_with("NOPERM"), "{argv:?}: {e}");
    }
    assert!(get(&mut admin, b"denied:x").is_none());
}

#[kit::test]
fn keyspace_notifications_match_core_commands() {
    let server = Server::new();
    let mut con = server.conn();
    kit::config_set(&mut con, "notify-keyspace-events", "KEA");
    let mut sub_con = server.conn();
    sub_con
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut pubsub = sub_con.as_pubsub();
    pubsub.psubscribe("__keyspace@0__:ev").unwrap();

    acquire(&mut con, b"ev", b"o", 5000).unwrap();
    assert_eq!(refresh(&mut con, b"ev", b"x", 5000), 0); // no event
    assert_eq!(refresh(&mut con, b"ev", b"o", 5000), 1);
    assert_eq!(release(&mut con, b"ev", b"x"), 0); // no event
    assert_eq!(release(&mut con, b"ev", b"o"), 1);

    let mut events = Vec::new();
    for _ in 0..4 {
        let msg = pubsub.get_message().unwrap();
        events.push(msg.get_payload::<String>().unwrap());
    }
    // SET … PX emits set + expire; PEXPIRE emits expire; DEL emits del.
    assert_eq!(events, ["set", "expire", "expire", "del"]);
}

#[kit::test]
fn refresh_and_release_work_at_maxmemory_but_acquire_is_refused() {
    let server = ServerBuilder::new()
        .arg("maxmemory-policy", "noeviction")
        .start();
    let mut con = server.conn();
    acquire(&mut con, b"held", b"o", 60_000).unwrap();
    kit::config_set(&mut con, "maxmemory", 1);
    let e = error_of(&mut con, &[b"SPACELOCK.ACQUIRE", b"new", b"o", b"1000"]);
    assert!(e.starts_with("OOM"), "{e}");
    assert_eq!(refresh(&mut con, b"held", b"o", 60_000), 1);
    assert_eq!(release(&mut con, b"held", b"o"), 1);
    kit::config_set(&mut con, "maxmemory", 0);
}

#[kit::test]
fn fence_key_never_keeps_a_ttl_someone_put_on_it() {
    // SET (what replicas see) clears a TTL; the in-place counter write must
    // too (with fence keys kept forever; a retention sets the module's own).
    let server = Server::new();
    let mut con = server.conn();
    kit::config_set(&mut con, "spacelock.fence-retention", 0);
    let t1 = acquire(&mut con, b"t", b"o", 1000).unwrap();
    release(&mut con, b"t", b"o");
    let fence = fence_key(&mut con, b"t");
    let _: i64 = redis::cmd("PEXPIRE")
        .arg(&fence)
        .arg(100_000)
        .query(&mut con)
        .unwrap();
    assert_eq!(acquire(&mut con, b"t", b"o", 1000), Some(t1 + 1));
    assert_eq!(pttl(&mut con, &fence), -1);
    assert_eq!(
        get(&mut con, &fence),
        Some((t1 + 1).to_string().into_bytes())
    );
    // An integer-encoded counter (as a replica stores it) is rewritten too;
    // one above the process's floor wins (fence + 1).
    let big = t1 + 1_000;
    let _: () = redis::cmd("SET")
        .arg(&fence)
        .arg(big)
        .query(&mut con)
        .unwrap();
    release(&mut con, b"t", b"o");
    assert_eq!(acquire(&mut con, b"t", b"o", 1000), Some(big + 1));
    assert_eq!(
        get(&mut con, &fence),
        Some((big + 1).to_string().into_bytes())
    );
}

kit::main!();
