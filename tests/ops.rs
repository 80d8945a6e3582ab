//! Operations: `INFO spacelock`, `SPACELOCK.INFO`, module configs,
//! `COMMAND DOCS`, the `@spacelock` ACL category.
//!
//! Runs against whatever `$SPACELOCK_SERVER` is (see `make test-compat`).
//! The only version-gated feature is the ACL category (Redis >= 7.4,
//! Valkey >= 8.0); below that the tests assert the module's one-line notice
//! instead.

use spacelock_testkit as kit;

use kit::{
    call_args as call, err_args as err, is_valkey, ok_args as ok, version_of, Server, ServerBuilder,
};
use redis::{Connection, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// Every command the module registers, as the server lists them
/// (`COMMAND LIST FILTERBY MODULE`), sorted: a new command is covered
/// without editing this file.
fn module_commands(con: &mut Connection) -> Vec<String> {
    let mut names = strings(&ok(
        con,
        &["COMMAND", "LIST", "FILTERBY", "MODULE", "spacelock"],
    ));
    names.sort();
    names
}

/// The public INFO counter and gauge names, before the
/// server's prefix: each starts at 0 on a fresh server.
const INFO_FIELDS: [&str; 14] = [
    "acquired",
    "acquire_contended",
    "refreshed",
    "refresh_not_owner",
    "released",
    "release_not_owner",
    "handoffs",
    "wait_timeouts",
    "wait_grants_undone",
    "wait_grants_lost",
    "waiting_clients",
    "keys_with_waiters",
    "checks_passed",
    "checks_failed",
];

/// The token term's INFO fields, which are not counters.
const TERM_FIELDS: [&str; 8] = [
    "token_mode",
    "fence_retention_ms",
    "term_start_ms",
    "token_floor",
    "terms_opened",
    "token_highest",
    "token_lead_ms",
    "ledger_grants",
];

const ACL_NOTICE: &str = "spacelock: ACL category @spacelock unavailable";

// ---------------------------------------------------------------------------
// Helpers

/// A string-ish reply as text.
fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::Int(i) => i.to_string(),
        other => panic!("not a string: {other:?}"),
    }
}

/// A flat `[k, v, k, v…]` array (RESP2) or a map (RESP3) as pairs.
fn pairs(v: &Value) -> Vec<(String, Value)> {
    match v {
        Value::Map(m) => m.iter().map(|(k, v)| (text(k), v.clone())).collect(),
        Value::Array(a) => {
            assert!(a.len() % 2 == 0, "odd field/value array: {a:?}");
            a.chunks(2).map(|p| (text(&p[0]), p[1].clone())).collect()
        }
        other => panic!("not a map or flat array: {other:?}"),
    }
}

fn field<'a>(pairs: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) | Value::Set(a) => a.iter().map(text).collect(),
        other => panic!("not an array: {other:?}"),
    }
}

/// `INFO spacelock` as (section header, name → value).
fn info_section(con: &mut Connection) -> (Vec<String>, BTreeMap<String, String>) {
    let raw: String = redis::cmd("INFO").arg("spacelock").query(con).unwrap();
    let mut headers = Vec::new();
    let mut fields = BTreeMap::new();
    for line in raw.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(h) = line.strip_prefix('#') {
            headers.push(h.trim().to_string());
        } else {
            let (k, v) = line.split_once(':').expect("name:value line");
            fields.insert(k.to_string(), v.to_string());
        }
    }
    (headers, fields)
}

/// The counters, keyed by their public names (without the server's prefix).
fn counters(con: &mut Connection) -> BTreeMap<String, u64> {
    let (_, fields) = info_section(con);
    INFO_FIELDS
        .iter()
        .map(|name| {
            let v = fields
                .get(&format!("spacelock_{name}"))
                .unwrap_or_else(|| panic!("INFO spacelock lacks spacelock_{name}: {fields:?}"));
            (name.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn config_get(con: &mut Connection, pattern: &str) -> BTreeMap<String, String> {
    pairs(&ok(con, &["CONFIG", "GET", pattern]))
        .into_iter()
        .map(|(k, v)| (k, text(&v)))
        .collect()
}

/// Whether the server supports module ACL categories (Redis >= 7.4,
/// Valkey >= 8.0, which forked from Redis 7.2.4 and added them in 8.0).
fn acl_categories_expected(con: &mut Connection) -> bool {
    let v = version_of(con);
    if is_valkey(con) {
        v >= (8, 0, 0)
    } else {
        v >= (7, 4, 0)
    }
}

// ---------------------------------------------------------------------------
// INFO spacelock

#[kit::test]
fn info_section_has_every_field_and_counts_each_outcome() {
    let started = kit::now_ms();
    let server = Server::new();
    let loaded = kit::now_ms();
    let mut con = server.conn();
    let (headers, fields) = info_section(&mut con);
    // Both Redis and Valkey name a module's default section after the module
    // and prefix every field with `<module>_`; the module cannot opt out.
    assert_eq!(headers, vec!["spacelock".to_string()], "{fields:?}");
    let expected: Vec<String> = INFO_FIELDS
        .iter()
        .chain(&TERM_FIELDS)
        .map(|n| format!("spacelock_{n}"))
        .collect();
    let mut got: Vec<String> = fields.keys().cloned().collect();
    let mut want = expected.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "exact field set");
    let before = counters(&mut con);
    assert!(before.values().all(|&v| v == 0), "fresh server: {before:?}");
    // The term opened at load: its floor is its start in ms × PER_MS (1000), and
    // nothing has been issued yet.
    assert_eq!(fields["spacelock_token_mode"], "term");
    assert_eq!(fields["spacelock_terms_opened"], "1");
    let start: i64 = fields["spacelock_term_start_ms"].parse().unwrap();
    assert!(
        (started..=loaded).contains(&start),
        "term_start_ms {start} not within the server's start [{started}, {loaded}]"
    );
    let floor: i64 = fields["spacelock_token_floor"].parse().unwrap();
    assert_eq!(floor, start * spacelock_core::tokens::PER_MS);

    // Errors count as nothing.
    err(&mut con, &["SPACELOCK.ACQUIRE", "k", "a", "0"]);
    err(&mut con, &["SPACELOCK.REFRESH", "k", "", "10"]);
    err(&mut con, &["SPACELOCK.RELEASE", "k"]);
    assert_eq!(counters(&mut con), before);

    let script: &[(&[&str], &str)] = &[
        (&["SPACELOCK.ACQUIRE", "k", "a", "10000"], "acquired"),
        (
            &["SPACELOCK.ACQUIRE", "k", "b", "10000"],
            "acquire_contended",
        ),
        (
            &["SPACELOCK.ACQUIRE", "k", "a", "10000"],
            "acquire_contended",
        ),
        (&["SPACELOCK.REFRESH", "k", "a", "10000"], "refreshed"),
        (
            &["SPACELOCK.REFRESH", "k", "b", "10000"],
            "refresh_not_owner",
        ),
        (
            &["SPACELOCK.REFRESH", "free", "a", "10000"],
            "refresh_not_owner",
        ),
        (&["SPACELOCK.RELEASE", "k", "b"], "release_not_owner"),
        (&["SPACELOCK.RELEASE", "k", "a"], "released"),
        (&["SPACELOCK.RELEASE", "k", "a"], "release_not_owner"),
        (&["SPACELOCK.ACQUIRE", "k", "b", "10000"], "acquired"),
    ];
    let mut expect = before.clone();
    for (argv, counter) in script {
        ok(&mut con, argv);
        *expect.get_mut(*counter).unwrap() += 1;
        assert_eq!(counters(&mut con), expect, "after {argv:?}");
    }
    // Read-only calls and other clients' INFO do not count.
    ok(&mut con, &["SPACELOCK.INFO", "k"]);
    ok(&mut con, &["SPACELOCK.FENCEKEY", "k"]);
    assert_eq!(counters(&mut con), expect);
    // Two grants of one name: the floor stays, the name counted up by two;
    // b holds the second one.
    assert_eq!(kit::token_floor(&mut con), floor);
    assert_eq!(
        kit::info_field(&mut con, "spacelock", "spacelock_token_highest"),
        floor + 1
    );
    // CHECK counts each answer; an erroneous CHECK counts nothing.
    let second = (floor + 1).to_string();
    for (argv, counter) in [
        (
            ["SPACELOCK.CHECK", "k", "b", second.as_str()],
            "checks_passed",
        ),
        (
            ["SPACELOCK.CHECK", "k", "a", second.as_str()],
            "checks_failed",
        ),
        (["SPACELOCK.CHECK", "k", "b", "1"], "checks_failed"),
        (
            ["SPACELOCK.CHECK", "free", "b", second.as_str()],
            "checks_failed",
        ),
    ] {
        ok(&mut con, &argv);
        *expect.get_mut(counter).unwrap() += 1;
        assert_eq!(counters(&mut con), expect, "after {argv:?}");
    }
    err(&mut con, &["SPACELOCK.CHECK", "k", "b", "x"]);
    assert_eq!(counters(&mut con), expect);
    // NEWTERM opens a term; INFO shows it.
    ok(&mut con, &["SPACELOCK.NEWTERM"]);
    let (_, fields) = info_section(&mut con);
    assert_eq!(fields["spacelock_terms_opened"], "2");
    assert!(fields["spacelock_term_start_ms"].parse::<i64>().unwrap() >= start);
    assert_eq!(counters(&mut con), expect, "NEWTERM counts nothing");
    assert_eq!(expect["handoffs"], 0);
    assert_eq!(expect["wait_timeouts"], 0);
    assert_eq!(expect["waiting_clients"], 0);
    assert_eq!(expect["keys_with_waiters"], 0);

    // Also part of `INFO everything` and `INFO modules`-style full dumps.
    let all: String = redis::cmd("INFO")
        .arg("everything")
        .query(&mut con)
        .unwrap();
    assert!(
        all.contains("# spacelock"),
        "INFO everything lacks the section"
    );
    assert!(all.contains("spacelock_acquired:2"), "{all}");
}

#[kit::test]
fn info_wait_counters_and_gauges() {
    let server = Server::new();
    let mut con = server.conn();
    ok(&mut con, &["CONFIG", "SET", "spacelock.max-waiters", "2"]);
    ok(&mut con, &["SPACELOCK.ACQUIRE", "w", "holder", "10000"]);
    let base = counters(&mut con);

    // A WAIT that times out counts as wait_timeouts, not as contended.
    let r = ok(
        &mut con,
        &["SPACELOCK.ACQUIRE", "w", "late", "10000", "WAIT", "100"],
    );
    assert_eq!(r, Value::Nil);
    let mut expect = base.clone();
    *expect.get_mut("wait_timeouts").unwrap() += 1;
    assert_eq!(counters(&mut con), expect);

    // Two waiters: the gauges and SPACELOCK.INFO show them.
    let waiter = |owner: &'static str| {
        let client = server.client();
        std::thread::spawn(move || {
            let mut c = client.get_connection().unwrap();
            let token = call(
                &mut c,
                &["SPACELOCK.ACQUIRE", "w", owner, "10000", "WAIT", "10000"],
            );
            (owner, token, c)
        })
    };
    let first = waiter("first");
    assert!(kit::wait_until(Duration::from_secs(5), || {
        counters(&mut con)["waiting_clients"] == 1
    }));
    let second = waiter("second");
    assert!(
        kit::wait_until(Duration::from_secs(5), || {
            counters(&mut con)["waiting_clients"] == 2
        }),
        "{:?}",
        counters(&mut con)
    );
    let c = counters(&mut con);
    assert_eq!((c["waiting_clients"], c["keys_with_waiters"]), (2, 1));
    let info = pairs(&ok(&mut con, &["SPACELOCK.INFO", "w"]));
    assert_eq!(field(&info, "waiters"), Some(&Value::Int(2)), "{info:?}");

    // spacelock.max-waiters applies.
    let e = err(
        &mut con,
        &["SPACELOCK.ACQUIRE", "w", "third", "10000", "WAIT", "10000"],
    );
    assert!(e.contains("spacelock.max-waiters"), "{e}");
    assert_eq!(counters(&mut con), c, "a refused WAIT counts nothing");

    // Release hands the lock to the first waiter: handoffs, not acquired.
    ok(&mut con, &["SPACELOCK.RELEASE", "w", "holder"]);
    let (owner, token, mut c1) = first.join().unwrap();
    assert_eq!(owner, "first");
    assert!(matches!(token, Ok(Value::Int(_))), "{token:?}");
    let mut expect = c.clone();
    *expect.get_mut("released").unwrap() += 1;
    *expect.get_mut("handoffs").unwrap() += 1;
    expect.insert("waiting_clients".into(), 1);
    assert_eq!(counters(&mut con), expect);
    let info = pairs(&ok(&mut con, &["SPACELOCK.INFO", "w"]));
    assert_eq!(
        field(&info, "owner"),
        Some(&Value::BulkString(b"first".to_vec()))
    );
    assert_eq!(field(&info, "waiters"), Some(&Value::Int(1)));

    // And on to the second; then nobody waits.
    ok(&mut c1, &["SPACELOCK.RELEASE", "w", "first"]);
    let (_, token, _) = second.join().unwrap();
    assert!(matches!(token, Ok(Value::Int(_))), "{token:?}");
    *expect.get_mut("released").unwrap() += 1;
    *expect.get_mut("handoffs").unwrap() += 1;
    expect.insert("waiting_clients".into(), 0);
    expect.insert("keys_with_waiters".into(), 0);
    assert_eq!(counters(&mut con), expect);
    assert_eq!(expect["acquired"], base["acquired"]);
    assert_eq!(expect["acquire_contended"], base["acquire_contended"]);
}

// ---------------------------------------------------------------------------
// SPACELOCK.INFO

#[kit::test]
fn spacelock_info_replies_resp2_and_resp3() {
    let server = Server::new();
    let mut con = server.conn();
    let mut con3 = server.conn_resp3();
    assert_eq!(ok(&mut con, &["SPACELOCK.INFO", "job"]), Value::Nil);
    assert_eq!(ok(&mut con3, &["SPACELOCK.INFO", "job"]), Value::Nil);

    // The floor by alice, released, then the next token by bob.
    let floor = kit::token_floor(&mut con);
    let start = kit::term_start_ms(&mut con);
    assert_eq!(
        ok(&mut con, &["SPACELOCK.ACQUIRE", "job", "alice", "10000"]),
        Value::Int(floor)
    );
    ok(&mut con, &["SPACELOCK.RELEASE", "job", "alice"]);
    assert_eq!(ok(&mut con, &["SPACELOCK.INFO", "job"]), Value::Nil);
    assert_eq!(
        ok(&mut con, &["SPACELOCK.ACQUIRE", "job", "bob", "10000"]),
        Value::Int(floor + 1)
    );

    // RESP2: a flat array in a fixed order.
    let v = ok(&mut con, &["SPACELOCK.INFO", "job"]);
    let Value::Array(items) = &v else {
        panic!("RESP2 reply should be a flat array: {v:?}")
    };
    assert_eq!(items.len(), 12, "{v:?}");
    let names: Vec<String> = items.iter().step_by(2).map(text).collect();
    assert_eq!(
        names,
        [
            "owner",
            "ttl_ms",
            "token",
            "waiters",
            "term_start_ms",
            "token_floor"
        ]
    );
    assert_eq!(items[1], Value::BulkString(b"bob".to_vec()));
    let Value::Int(ttl) = items[3] else {
        panic!("ttl_ms should be an integer: {v:?}")
    };
    assert!((9_000..=10_000).contains(&ttl), "ttl_ms {ttl}");
    assert_eq!(items[5], Value::Int(floor + 1), "token is the holder's");
    assert_eq!(items[7], Value::Int(0), "no waiters");
    assert_eq!(items[9], Value::Int(start), "the server's term");
    assert_eq!(items[11], Value::Int(floor), "the term's floor");
    assert_eq!(kit::token_floor(&mut con), floor, "as in INFO");

    // RESP3: a map with the same content.
    let v3 = ok(&mut con3, &["SPACELOCK.INFO", "job"]);
    let Value::Map(m) = &v3 else {
        panic!("RESP3 reply should be a map: {v3:?}")
    };
    let m: Vec<(String, Value)> = m.iter().map(|(k, v)| (text(k), v.clone())).collect();
    assert_eq!(m.len(), 6);
    assert_eq!(
        field(&m, "owner"),
        Some(&Value::BulkString(b"bob".to_vec()))
    );
    assert_eq!(field(&m, "token"), Some(&Value::Int(floor + 1)));
    assert_eq!(field(&m, "waiters"), Some(&Value::Int(0)));
    assert_eq!(field(&m, "term_start_ms"), Some(&Value::Int(start)));
    assert_eq!(field(&m, "token_floor"), Some(&Value::Int(floor)));
    assert!(matches!(field(&m, "ttl_ms"), Some(Value::Int(t)) if (9_000..=10_000).contains(t)));

    // REFRESH moves ttl_ms; token stays.
    ok(&mut con, &["SPACELOCK.REFRESH", "job", "bob", "60000"]);
    let p = pairs(&ok(&mut con, &["SPACELOCK.INFO", "job"]));
    assert!(
        matches!(field(&p, "ttl_ms"), Some(Value::Int(t)) if *t > 50_000),
        "{p:?}"
    );
    assert_eq!(field(&p, "token"), Some(&Value::Int(floor + 1)));

    // Expiry frees it.
    ok(&mut con, &["SPACELOCK.ACQUIRE", "short", "carol", "50"]);
    assert!(kit::wait_until(Duration::from_secs(2), || {
        ok(&mut con, &["SPACELOCK.INFO", "short"]) == Value::Nil
    }));

    // A non-string key.
    ok(&mut con, &["RPUSH", "list", "x"]);
    let e = err(&mut con, &["SPACELOCK.INFO", "list"]);
    assert!(e.starts_with("WRONGTYPE"), "{e}");
    let e = err(&mut con3, &["SPACELOCK.INFO", "list"]);
    assert!(e.starts_with("WRONGTYPE"), "{e}");
    let e = err(&mut con, &["SPACELOCK.INFO"]);
    assert!(e.contains("wrong number of arguments"), "{e}");
}

/// `COMMAND INFO name`: the one entry's fields.
fn command_info(con: &mut Connection, name: &str) -> Vec<Value> {
    let reply = ok(con, &["COMMAND", "INFO", name]);
    let Value::Array(entries) = &reply else {
        panic!("{reply:?}")
    };
    let Value::Array(entry) = &entries[0] else {
        panic!("{reply:?}")
    };
    assert_eq!(text(&entry[0]), name);
    entry.clone()
}

#[kit::test]
fn spacelock_info_and_check_are_readonly_fast_with_a_key_spec() {
    let server = Server::new();
    let mut con = server.conn();
    for (name, arity) in [("spacelock.info", 2), ("spacelock.check", 4)] {
        let entry = command_info(&mut con, name);
        assert_eq!(entry[1], Value::Int(arity), "{name} arity");
        let flags = strings(&entry[2]);
        assert!(flags.contains(&"readonly".to_string()), "{name} {flags:?}");
        assert!(flags.contains(&"fast".to_string()), "{name} {flags:?}");
        assert!(!flags.contains(&"write".to_string()), "{name} {flags:?}");
        // first, last, step = 1, 1, 1
        assert_eq!(
            &entry[3..6],
            &[Value::Int(1), Value::Int(1), Value::Int(1)],
            "{name}"
        );
        // Key specs (index 8): one spec, read-only access, at argv[1].
        let Value::Array(specs) = &entry[8] else {
            panic!("no key specs: {entry:?}")
        };
        assert_eq!(specs.len(), 1, "{name} {specs:?}");
        let spec = pairs(&specs[0]);
        let spec_flags = strings(field(&spec, "flags").unwrap());
        assert!(spec_flags.contains(&"RO".to_string()), "{spec_flags:?}");
        assert!(
            spec_flags.iter().any(|f| f.eq_ignore_ascii_case("access")),
            "{spec_flags:?}"
        );
        assert!(!spec_flags.contains(&"RW".to_string()), "{spec_flags:?}");
        let bs = pairs(field(&spec, "begin_search").unwrap());
        assert_eq!(text(field(&bs, "type").unwrap()), "index");
        let bs_spec = pairs(field(&bs, "spec").unwrap());
        assert_eq!(field(&bs_spec, "index"), Some(&Value::Int(1)));
    }
}

#[kit::test]
fn newterm_is_admin_fast_without_keys() {
    let server = Server::new();
    let mut con = server.conn();
    let entry = command_info(&mut con, "spacelock.newterm");
    assert_eq!(entry[1], Value::Int(1), "arity");
    let mut flags = strings(&entry[2]);
    flags.sort();
    assert_eq!(flags, ["admin", "fast", "module"]);
    assert_eq!(
        &entry[3..6],
        &[Value::Int(0), Value::Int(0), Value::Int(0)],
        "no key positions"
    );
    let Value::Array(specs) = &entry[8] else {
        panic!("key specs should be an empty array: {entry:?}")
    };
    assert!(specs.is_empty(), "{specs:?}");
    let e = err(&mut con, &["COMMAND", "GETKEYS", "SPACELOCK.NEWTERM"]);
    assert!(e.starts_with("ERR"), "{e}");
    let e = err(&mut con, &["SPACELOCK.NEWTERM", "extra"]);
    assert!(e.contains("wrong number of arguments"), "{e}");
}

// ---------------------------------------------------------------------------
// Configs

#[kit::test]
fn configs_listed_with_defaults() {
    let server = Server::new();
    let mut con = server.conn();
    let all = config_get(&mut con, "spacelock.*");
    let want: BTreeMap<String, String> = [
        ("spacelock.max-ttl", "86400000"),
        ("spacelock.max-owner-len", "256"),
        ("spacelock.max-waiters", "1024"),
        ("spacelock.fence-retention", "600000"),
        ("spacelock.token-mode", "term"),
        ("spacelock.allow-unload", "no"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(all, want);
}

#[kit::test]
fn configs_set_at_load_apply_to_commands() {
    let server = ServerBuilder::new()
        .module_args(&[
            "max-ttl",
            "5000",
            "spacelock.max-owner-len",
            "8",
            "token-mode",
            "counter",
            "allow-unload",
            "yes",
        ])
        .start();
    let mut con = server.conn();
    let all = config_get(&mut con, "spacelock.*");
    assert_eq!(all["spacelock.max-ttl"], "5000");
    assert_eq!(all["spacelock.max-owner-len"], "8");
    assert_eq!(all["spacelock.max-waiters"], "1024");
    assert_eq!(all["spacelock.token-mode"], "counter");
    assert_eq!(all["spacelock.allow-unload"], "yes");

    let e = err(&mut con, &["SPACELOCK.ACQUIRE", "k", "o", "5001"]);
    assert!(
        e.starts_with("ERR") && e.contains("spacelock.max-ttl"),
        "{e}"
    );
    let e = err(&mut con, &["SPACELOCK.ACQUIRE", "k", "ninechars", "100"]);
    assert!(
        e.starts_with("ERR") && e.contains("spacelock.max-owner-len"),
        "{e}"
    );
    assert_eq!(ok(&mut con, &["EXISTS", "k"]), Value::Int(0));
    // token-mode counter: the first token of a name is 1.
    assert_eq!(
        ok(&mut con, &["SPACELOCK.ACQUIRE", "k", "eightchr", "5000"]),
        Value::Int(1)
    );
    let e = err(&mut con, &["SPACELOCK.REFRESH", "k", "eightchr", "5001"]);
    assert!(e.contains("spacelock.max-ttl"), "{e}");
    assert_eq!(
        ok(&mut con, &["SPACELOCK.REFRESH", "k", "eightchr", "5000"]),
        Value::Int(1)
    );
    let e = err(&mut con, &["SPACELOCK.RELEASE", "k", "ninechars"]);
    assert!(e.contains("spacelock.max-owner-len"), "{e}");
}

#[kit::test]
fn config_directive_in_server_config_is_applied() {
    // `spacelock.max-ttl 7000` as a config-file directive after loadmodule
    // (here on the command line, which the server treats the same way).
    let server = ServerBuilder::new()
        .arg("spacelock.max-ttl", "7000")
        .arg("spacelock.max-waiters", "0")
        .start();
    let mut con = server.conn();
    let all = config_get(&mut con, "spacelock.*");
    assert_eq!(all["spacelock.max-ttl"], "7000");
    assert_eq!(all["spacelock.max-waiters"], "0");
    let e = err(&mut con, &["SPACELOCK.ACQUIRE", "k", "o", "7001"]);
    assert!(e.contains("spacelock.max-ttl (7000 ms)"), "{e}");
}

#[kit::test]
fn config_set_applies_and_rejects_invalid_values() {
    let server = Server::new();
    let mut con = server.conn();
    ok(&mut con, &["CONFIG", "SET", "spacelock.max-ttl", "100"]);
    ok(&mut con, &["CONFIG", "SET", "spacelock.max-owner-len", "3"]);
    ok(&mut con, &["CONFIG", "SET", "spacelock.max-waiters", "7"]);
    let all = config_get(&mut con, "spacelock.*");
    assert_eq!(
        (
            all["spacelock.max-ttl"].as_str(),
            all["spacelock.max-owner-len"].as_str(),
            all["spacelock.max-waiters"].as_str()
        ),
        ("100", "3", "7")
    );
    let e = err(&mut con, &["SPACELOCK.ACQUIRE", "k", "o", "101"]);
    assert!(e.contains("spacelock.max-ttl (100 ms)"), "{e}");
    let e = err(&mut con, &["SPACELOCK.ACQUIRE", "k", "four", "100"]);
    assert!(e.contains("spacelock.max-owner-len (3 bytes)"), "{e}");
    let floor = kit::token_floor(&mut con);
    assert_eq!(
        ok(&mut con, &["SPACELOCK.ACQUIRE", "k", "abc", "100"]),
        Value::Int(floor)
    );

    // Invalid values: out of range, not an integer. The server checks the
    // registered range and names the config in its error.
    for (name, bad) in [
        ("spacelock.max-ttl", "0"),
        ("spacelock.max-ttl", "-1"),
        ("spacelock.max-ttl", "abc"),
        ("spacelock.max-ttl", "1.5"),
        ("spacelock.max-ttl", "99999999999999999999"),
        ("spacelock.max-owner-len", "0"),
        ("spacelock.max-owner-len", "1048577"),
        ("spacelock.max-waiters", "-1"),
        ("spacelock.max-waiters", "1048577"),
        ("spacelock.max-waiters", ""),
        ("spacelock.token-mode", "sometimes"),
        ("spacelock.token-mode", ""),
        ("spacelock.token-mode", "1"),
        ("spacelock.allow-unload", "maybe"),
        ("spacelock.allow-unload", ""),
    ] {
        let e = err(&mut con, &["CONFIG", "SET", name, bad]);
        assert!(e.starts_with("ERR"), "{name} {bad}: {e}");
        assert!(e.contains(name), "error should name the config: {e}");
        let numeric = bad.parse::<i64>().is_ok();
        if name == "spacelock.token-mode" || name == "spacelock.allow-unload" {
            // An enum or a boolean: the server refuses values outside
            // term|counter, yes|no.
        } else if numeric {
            assert!(e.contains("between"), "{name} {bad}: {e}");
        } else {
            assert!(
                e.contains("integer") || e.contains("number"),
                "{name} {bad}: {e}"
            );
        }
    }
    // A multi-config CONFIG SET with one bad value applies none of them.
    let e = err(
        &mut con,
        &[
            "CONFIG",
            "SET",
            "spacelock.max-ttl",
            "5000",
            "spacelock.max-owner-len",
            "0",
        ],
    );
    assert!(e.contains("spacelock.max-owner-len"), "{e}");
    // Nothing changed.
    let after = config_get(&mut con, "spacelock.*");
    assert_eq!(after, all);
    let e = err(&mut con, &["SPACELOCK.ACQUIRE", "k2", "o", "101"]);
    assert!(e.contains("spacelock.max-ttl (100 ms)"), "{e}");
    let e = err(&mut con, &["CONFIG", "SET", "spacelock.nope", "1"]);
    assert!(e.starts_with("ERR"), "{e}");

    // The extremes of each range are accepted.
    ok(&mut con, &["CONFIG", "SET", "spacelock.max-ttl", "1"]);
    ok(
        &mut con,
        &["CONFIG", "SET", "spacelock.max-ttl", "9223372036854775807"],
    );
    ok(
        &mut con,
        &["CONFIG", "SET", "spacelock.max-owner-len", "1048576"],
    );
    ok(&mut con, &["CONFIG", "SET", "spacelock.max-waiters", "0"]);
    for allow in ["yes", "no", "YES", "No"] {
        ok(
            &mut con,
            &["CONFIG", "SET", "spacelock.allow-unload", allow],
        );
        let got = config_get(&mut con, "spacelock.allow-unload");
        assert_eq!(
            got["spacelock.allow-unload"],
            allow.to_ascii_lowercase(),
            "{allow}"
        );
    }
    for mode in ["counter", "term", "COUNTER", "Term"] {
        ok(&mut con, &["CONFIG", "SET", "spacelock.token-mode", mode]);
        let got = config_get(&mut con, "spacelock.token-mode");
        assert_eq!(
            got["spacelock.token-mode"],
            mode.to_ascii_lowercase(),
            "{mode}"
        );
    }
}

#[kit::test]
fn invalid_load_arguments_refuse_the_load_with_a_log_line() {
    let cases: &[(&[&str], &str)] = &[
        (&["bogus", "1"], "unknown module argument 'bogus'"),
        (
            &["max-ttl", "0"],
            "invalid value for max-ttl: expected an integer from 1 to",
        ),
        (
            &["max-owner-len", "ten"],
            "invalid value for max-owner-len: expected an integer from 1 to 1048576",
        ),
        (&["max-ttl"], "module arguments must be name/value pairs"),
        (
            &["token-mode", "sometimes"],
            "invalid value for token-mode: expected term or counter",
        ),
        (
            &["allow-unload", "1"],
            "invalid value for allow-unload: expected yes or no",
        ),
    ];
    for (args, why) in cases {
        let log = match ServerBuilder::new().module_args(args).try_start() {
            Ok(_) => panic!("{args:?}: the server should refuse the module"),
            Err(log) => log,
        };
        let line = format!("spacelock: refusing to load: {why}");
        assert_eq!(
            log.matches(&line).count(),
            1,
            "{args:?}: expected one line `{line}`:\n{log}"
        );
        assert!(
            log.contains("exit status: 1"),
            "clean exit expected:\n{log}"
        );
        assert!(!log.contains("crashed by signal"), "{log}");
    }
    // A bad value in the config file is refused too.
    let log = match ServerBuilder::new()
        .arg("spacelock.max-ttl", "0")
        .try_start()
    {
        Ok(_) => panic!("spacelock.max-ttl 0 in the config should refuse the load"),
        Err(log) => log,
    };
    assert!(log.contains("spacelock.max-ttl"), "{log}");
    assert!(!log.contains("crashed by signal"), "{log}");
}

#[kit::test]
fn module_load_at_runtime_with_bad_arguments_fails_and_server_survives() {
    let server = ServerBuilder::new()
        .without_module()
        .arg("enable-module-command", "yes")
        .start();
    let mut con = server.conn();
    let module = kit::module_path();
    let module = module.to_str().unwrap();
    let e = err(&mut con, &["MODULE", "LOAD", module, "max-ttl", "nope"]);
    assert!(e.starts_with("ERR"), "{e}");
    assert_eq!(ok(&mut con, &["PING"]), Value::SimpleString("PONG".into()));
    assert!(server
        .log()
        .contains("spacelock: refusing to load: invalid value for max-ttl"));
    // Nothing was left registered: a good load afterwards works.
    ok(
        &mut con,
        &[
            "MODULE",
            "LOAD",
            module,
            "max-ttl",
            "5000",
            "allow-unload",
            "yes",
        ],
    );
    let all = config_get(&mut con, "spacelock.*");
    assert_eq!(all["spacelock.max-ttl"], "5000");
    let floor = kit::token_floor(&mut con);
    assert_eq!(
        ok(&mut con, &["SPACELOCK.ACQUIRE", "k", "o", "5000"]),
        Value::Int(floor)
    );

    // Unload (allowed by the load argument), then load again (with
    // defaults): everything comes back, including the ACL category the
    // server kept across the unload. The term of a reload starts on the
    // clock; the unload waits until the clock has passed this load's tokens.
    ok(&mut con, &["MODULE", "UNLOAD", "spacelock"]);
    let e = err(&mut con, &["SPACELOCK.INFO", "k"]);
    assert!(e.contains("unknown command"), "{e}");
    ok(&mut con, &["MODULE", "LOAD", module]);
    let configs = config_get(&mut con, "spacelock.*");
    assert_eq!(
        (
            configs["spacelock.max-ttl"].as_str(),
            configs["spacelock.allow-unload"].as_str()
        ),
        ("86400000", "no"),
        "a reload starts from the defaults"
    );
    let info = pairs(&ok(&mut con, &["SPACELOCK.INFO", "k"]));
    assert_eq!(field(&info, "token"), Some(&Value::Int(floor)), "lock kept");
    // The reload opened its first term (the statics did not survive the
    // unload) above what the first load issued: the unload waited for the
    // clock.
    let reloaded_floor = kit::token_floor(&mut con);
    assert!(reloaded_floor > floor, "{reloaded_floor} after {floor}");
    if acl_categories_expected(&mut con) {
        assert_eq!(
            strings(&ok(&mut con, &["ACL", "CAT", "spacelock"])).len(),
            module_commands(&mut con).len()
        );
    }
    assert_eq!(server.log().matches("refusing to load").count(), 1);
}

// ---------------------------------------------------------------------------
// COMMAND DOCS

/// (name, type, token, optional) of each documented argument.
type ArgSpec = (&'static str, &'static str, Option<&'static str>, bool);

fn doc_args(args: &Value) -> Vec<(String, String, Option<String>, bool)> {
    let Value::Array(list) = args else {
        panic!("arguments: {args:?}")
    };
    list.iter()
        .map(|a| {
            let p = pairs(a);
            let flags = field(&p, "flags").map(strings).unwrap_or_default();
            (
                text(field(&p, "name").unwrap()),
                text(field(&p, "type").unwrap()),
                field(&p, "token").map(text),
                flags.contains(&"optional".to_string()),
            )
        })
        .collect()
}

#[kit::test]
fn command_docs_for_every_command() {
    let server = Server::new();
    let mut con = server.conn();
    let key: ArgSpec = ("key", "key", None, false);
    let owner: ArgSpec = ("owner", "string", None, false);
    let ttl: ArgSpec = ("ttl_ms", "integer", None, false);
    let wait: ArgSpec = ("timeout_ms", "integer", Some("WAIT"), true);
    let shared: ArgSpec = ("shared", "pure-token", Some("SHARED"), true);
    let limit: ArgSpec = ("limit", "integer", Some("LIMIT"), true);
    let token: ArgSpec = ("token", "integer", None, false);
    let expected: Vec<(&str, &str, Vec<ArgSpec>)> = vec![
        (
            "spacelock.acquire",
            "0.1.0",
            vec![key, owner, ttl, shared, limit, wait],
        ),
        ("spacelock.refresh", "0.1.0", vec![key, owner, ttl]),
        ("spacelock.release", "0.1.0", vec![key, owner]),
        ("spacelock.info", "0.1.0", vec![key]),
        ("spacelock.check", "0.2.0", vec![key, owner, token]),
        ("spacelock.fencekey", "0.1.0", vec![key]),
        ("spacelock.newterm", "0.2.0", vec![]),
    ];
    let commands = module_commands(&mut con);
    let mut documented: Vec<&str> = expected.iter().map(|(n, ..)| *n).collect();
    documented.sort_unstable();
    assert_eq!(
        documented, commands,
        "every registered command has its expected docs here"
    );
    for (name, since, want_args) in expected {
        let reply = ok(&mut con, &["COMMAND", "DOCS", name]);
        let top = pairs(&reply);
        assert_eq!(top.len(), 1, "{reply:?}");
        assert_eq!(top[0].0, name);
        let doc = pairs(&top[0].1);
        let summary = text(field(&doc, "summary").expect("summary"));
        assert!(summary.len() > 20, "{name}: summary {summary:?}");
        assert_eq!(text(field(&doc, "since").expect("since")), since, "{name}");
        // O(1), and for shared or counted locks a bound in their holders.
        let complexity = text(field(&doc, "complexity").expect("complexity"));
        assert!(complexity.starts_with("O(1)"), "{name}: {complexity}");
        assert_eq!(text(field(&doc, "group").expect("group")), "module");
        assert_eq!(text(field(&doc, "module").expect("module")), "spacelock");
        if want_args.is_empty() {
            // No arguments: the server leaves the field out (or empty).
            let args = field(&doc, "arguments");
            assert!(
                args.is_none() || args == Some(&Value::Array(vec![])),
                "{name}: {args:?}"
            );
            continue;
        }
        let got = doc_args(field(&doc, "arguments").expect("arguments"));
        let want: Vec<(String, String, Option<String>, bool)> = want_args
            .iter()
            .map(|(n, t, tok, opt)| (n.to_string(), t.to_string(), tok.map(String::from), *opt))
            .collect();
        assert_eq!(got, want, "{name}");
        // Key arguments point at key spec 0.
        let Some(Value::Array(args)) = field(&doc, "arguments") else {
            unreachable!()
        };
        let first = pairs(&args[0]);
        assert_eq!(field(&first, "key_spec_index"), Some(&Value::Int(0)));
    }
    // All of them in one call (what redis-cli fetches for hints).
    let mut argv = vec!["COMMAND", "DOCS"];
    argv.extend(commands.iter().map(String::as_str));
    let all = pairs(&ok(&mut con, &argv));
    let names: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, commands);
}

// ---------------------------------------------------------------------------
// ACL category

#[kit::test]
fn acl_category_or_one_line_notice() {
    let server = Server::new();
    let mut con = server.conn();
    let notices = server.log().matches(ACL_NOTICE).count();
    if !acl_categories_expected(&mut con) {
        eprintln!(
            "server {:?} predates module ACL categories; checking the notice instead",
            version_of(&mut con)
        );
        assert_eq!(notices, 1, "one notice line expected:\n{}", server.log());
        let e = err(&mut con, &["ACL", "CAT", "spacelock"]);
        assert!(e.contains("category"), "{e}");
        // Here the server puts module commands in no core category either,
        // so grants go by command name (what the notice tells operators).
        ok(
            &mut con,
            &[
                "ACL", "SETUSER", "rw", "on", "nopass", "+@read", "+@write", "~*",
            ],
        );
        let mut rw = user_conn(&server, "rw");
        let e = err(&mut rw, &["SPACELOCK.ACQUIRE", "k", "o", "1000"]);
        assert!(e.starts_with("NOPERM"), "{e}");
        ok(
            &mut con,
            &[
                "ACL",
                "SETUSER",
                "named",
                "on",
                "nopass",
                "+spacelock.acquire",
                "+spacelock.info",
                "~*",
            ],
        );
        let mut named = user_conn(&server, "named");
        let floor = kit::token_floor(&mut con);
        assert_eq!(
            ok(&mut named, &["SPACELOCK.ACQUIRE", "k", "o", "1000"]),
            Value::Int(floor)
        );
        ok(&mut named, &["SPACELOCK.INFO", "k"]);
        let e = err(&mut named, &["SPACELOCK.RELEASE", "k", "o"]);
        assert!(e.starts_with("NOPERM"), "{e}");
        return;
    }
    assert_eq!(notices, 0, "{}", server.log());
    let mut listed = strings(&ok(&mut con, &["ACL", "CAT", "spacelock"]));
    listed.iter_mut().for_each(|s| s.make_ascii_lowercase());
    listed.sort();
    assert_eq!(listed, module_commands(&mut con));
    let cats: Vec<String> = strings(&ok(&mut con, &["ACL", "CAT"]));
    assert!(cats.contains(&"spacelock".to_string()), "{cats:?}");

    // The example user.
    ok(
        &mut con,
        &[
            "ACL",
            "SETUSER",
            "worker",
            "on",
            "nopass",
            "+@spacelock",
            "~git-sync:*",
        ],
    );
    let mut worker = user_conn(&server, "worker");
    let floor = kit::token_floor(&mut con);
    assert_eq!(
        ok(
            &mut worker,
            &["SPACELOCK.ACQUIRE", "git-sync:x", "w1", "10000"]
        ),
        Value::Int(floor)
    );
    let first = floor.to_string();
    assert_eq!(
        ok(
            &mut worker,
            &["SPACELOCK.CHECK", "git-sync:x", "w1", first.as_str()]
        ),
        Value::Int(1)
    );
    assert_eq!(
        ok(
            &mut worker,
            &["SPACELOCK.REFRESH", "git-sync:x", "w1", "10000"]
        ),
        Value::Int(1)
    );
    assert!(matches!(
        ok(&mut worker, &["SPACELOCK.INFO", "git-sync:x"]),
        Value::Array(_)
    ));
    assert_eq!(
        ok(&mut worker, &["SPACELOCK.RELEASE", "git-sync:x", "w1"]),
        Value::Int(1)
    );
    for argv in [
        &["SPACELOCK.ACQUIRE", "other:x", "w1", "10000"][..],
        &["SPACELOCK.INFO", "other:x"],
    ] {
        let e = err(&mut worker, argv);
        assert!(e.starts_with("NOPERM"), "{argv:?}: {e}");
    }
    // The category grants only spacelock commands.
    let e = err(&mut worker, &["GET", "git-sync:x"]);
    assert!(e.starts_with("NOPERM"), "{e}");
    assert_eq!(ok(&mut con, &["EXISTS", "other:x"]), Value::Int(0));
    // COMMAND INFO shows the categories: @spacelock plus the core ones the
    // flags imply, which the server does not derive for module commands.
    for (cmd, want) in [
        ("spacelock.acquire", ["@spacelock", "@write", "@fast"]),
        ("spacelock.refresh", ["@spacelock", "@write", "@fast"]),
        ("spacelock.release", ["@spacelock", "@write", "@fast"]),
        ("spacelock.info", ["@spacelock", "@read", "@fast"]),
        ("spacelock.check", ["@spacelock", "@read", "@fast"]),
        ("spacelock.fencekey", ["@spacelock", "@read", "@fast"]),
        ("spacelock.newterm", ["@spacelock", "@admin", "@fast"]),
    ] {
        let reply = ok(&mut con, &["COMMAND", "INFO", cmd]);
        let Value::Array(entries) = &reply else {
            panic!("{reply:?}")
        };
        let Value::Array(entry) = &entries[0] else {
            panic!("{reply:?}")
        };
        let mut cats = strings(&entry[6]);
        cats.sort();
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(cats, want, "{cmd}");
    }
    let write = strings(&ok(&mut con, &["ACL", "CAT", "write"]));
    assert!(write.iter().any(|c| c == "spacelock.acquire"), "{write:?}");
    let read = strings(&ok(&mut con, &["ACL", "CAT", "read"]));
    assert!(read.iter().any(|c| c == "spacelock.info"), "{read:?}");
    assert!(read.iter().any(|c| c == "spacelock.check"), "{read:?}");
    let admin = strings(&ok(&mut con, &["ACL", "CAT", "admin"]));
    assert!(admin.iter().any(|c| c == "spacelock.newterm"), "{admin:?}");

    // So a read-only user can inspect locks but not take them.
    ok(
        &mut con,
        &[
            "ACL", "SETUSER", "ro", "on", "nopass", "+@all", "-@write", "~*",
        ],
    );
    ok(
        &mut con,
        &["ACL", "SETUSER", "reader", "on", "nopass", "+@read", "~*"],
    );
    ok(&mut con, &["SPACELOCK.ACQUIRE", "held", "o", "10000"]);
    for user in ["ro", "reader"] {
        let mut c = user_conn(&server, user);
        for argv in [
            &["SPACELOCK.ACQUIRE", "k", "o", "1000"][..],
            &["SPACELOCK.REFRESH", "held", "o", "1000"],
            &["SPACELOCK.RELEASE", "held", "o"],
        ] {
            let e = err(&mut c, argv);
            assert!(e.starts_with("NOPERM"), "{user} {argv:?}: {e}");
        }
        assert!(matches!(
            ok(&mut c, &["SPACELOCK.INFO", "held"]),
            Value::Array(_)
        ));
        ok(&mut c, &["SPACELOCK.FENCEKEY", "held"]);
        assert_eq!(
            ok(&mut c, &["SPACELOCK.CHECK", "held", "o", "1"]),
            Value::Int(0)
        );
    }
    // NEWTERM is an admin command: +@read does not grant it.
    let mut reader = user_conn(&server, "reader");
    let e = err(&mut reader, &["SPACELOCK.NEWTERM"]);
    assert!(e.starts_with("NOPERM"), "{e}");
    // +@spacelock does (NEWTERM is in the category): harmless, since a new
    // term only ever moves tokens up.
    assert!(matches!(
        ok(&mut worker, &["SPACELOCK.NEWTERM"]),
        Value::Int(_)
    ));
    assert_eq!(
        ok(&mut con, &["SPACELOCK.REFRESH", "held", "o", "10000"]),
        Value::Int(1),
        "still held"
    );
}

/// A connection as ACL user `name` (created with `nopass`).
fn user_conn(server: &Server, name: &str) -> Connection {
    redis::Client::open(format!("redis://{name}:x@127.0.0.1:{}/", server.port))
        .unwrap()
        .get_connection()
        .unwrap()
}

kit::main!();
