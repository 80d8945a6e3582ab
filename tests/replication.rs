//! Replication, AOF and RDB: the module propagates only core
//! commands with absolute times, so replicas and AOF replays need no module,
//! and fencing tokens keep increasing across restarts and promotion.

use spacelock_testkit as kit;

use kit::{acquire, snapshot, Server, ServerBuilder};
use rand::{rngs::StdRng, Rng, SeedableRng};
use redis::Connection;
use std::time::Duration;

/// `loadmodule` arguments for a token mode: none for the default (term).
fn mode_args(counter: bool) -> &'static [&'static str] {
    if counter {
        &["token-mode", "counter"]
    } else {
        &[]
    }
}

fn start_replica(master: &Server, with_module: bool) -> Server {
    start_replica_with(master, with_module, false)
}

fn start_replica_with(master: &Server, with_module: bool, counter: bool) -> Server {
    let mut b = ServerBuilder::new()
        .module_args(mode_args(counter))
        .replica_of(master);
    if !with_module {
        b = b.without_module();
    }
    let replica = b.start();
    kit::until_link_up(&mut replica.conn(), &replica);
    replica
}

/// Runs `n` random lock operations (a few keys and owners, short and long
/// TTLs, plain DELs, and pauses that let short leases expire).
fn random_workload(con: &mut Connection, seed: u64, n: usize) -> i64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut max_token = 0;
    for i in 0..n {
        let key = format!("git-sync:lock:{}", rng.random_range(0..8));
        let owner = format!("instance-{}", rng.random_range(0..3));
        let ttl = if rng.random_bool(0.3) { 20 } else { 60_000 };
        match rng.random_range(0..10) {
            0..=3 => {
                if let Some(t) = acquire(con, &key, &owner, ttl) {
                    max_token = max_token.max(t);
                }
            }
            4..=5 => {
                let _: i64 = redis::cmd("SPACELOCK.REFRESH")
                    .arg(&key)
                    .arg(&owner)
                    .arg(ttl)
                    .query(con)
                    .unwrap();
            }
            6..=7 => {
                let _: i64 = redis::cmd("SPACELOCK.RELEASE")
                    .arg(&key)
                    .arg(&owner)
                    .query(con)
                    .unwrap();
            }
            8 => {
                let _: i64 = redis::cmd("DEL").arg(&key).query(con).unwrap();
            }
            _ => {
                if i % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(25));
                }
            }
        }
    }
    max_token
}

#[kit::test]
fn replica_without_module_ends_identical() {
    let master = Server::new();
    let replica = start_replica(&master, false);
    let mut m = master.conn();
    let seed = rand::random::<u64>();
    println!("workload seed {seed}");
    random_workload(&mut m, seed, 1_000);
    // Let every 20 ms lease expire, then compare: expiry times are absolute,
    // so both sides agree on which keys are live and when they expire.
    std::thread::sleep(Duration::from_millis(50));
    let want = snapshot(&mut m);
    kit::sync_replicas(&mut m, 1);
    let mut r = replica.conn();
    let got = snapshot(&mut r);
    assert!(!want.is_empty());
    assert_eq!(got, want, "seed {seed}: replica differs from master");
    assert!(want
        .iter()
        .any(|(k, ..)| k.starts_with(b"spacelock:fence:")));
}

#[kit::test]
fn aof_restart_keeps_locks_and_tokens_and_loads_without_module() {
    aof_restart(false);
}

#[kit::test]
fn aof_restart_in_counter_mode_continues_the_counters() {
    aof_restart(true);
}

fn aof_restart(counter: bool) {
    let server = ServerBuilder::new()
        .module_args(mode_args(counter))
        .arg("appendonly", "yes")
        .arg("appendfsync", "always")
        .start();
    let mut con = server.conn();
    let first = if counter {
        1
    } else {
        kit::token_floor(&mut con)
    };
    let mut last = 0;
    for _ in 0..3 {
        last = acquire(&mut con, "aof:lock", "a", 60_000).unwrap();
        let _: i64 = redis::cmd("SPACELOCK.RELEASE")
            .arg("aof:lock")
            .arg("a")
            .query(&mut con)
            .unwrap();
    }
    last = acquire(&mut con, "aof:lock", "holder", 60_000)
        .unwrap()
        .max(last);
    assert_eq!(last, first + 3, "four grants, nothing in between");
    let _: i64 = redis::cmd("SPACELOCK.REFRESH")
        .arg("aof:lock")
        .arg("holder")
        .arg(90_000)
        .query(&mut con)
        .unwrap();
    let before = snapshot(&mut con);
    drop(con);

    let server = server.restart_with(|b| b);
    let mut con = server.conn();
    let after = snapshot(&mut con);
    assert_eq!(
        after, before,
        "AOF replay must restore values and absolute expiry"
    );
    let pttl: i64 = redis::cmd("PTTL").arg("aof:lock").query(&mut con).unwrap();
    assert!(pttl > 80_000, "remaining TTL kept: {pttl}");
    assert_eq!(
        acquire(&mut con, "aof:lock", "other", 1000),
        None,
        "still held"
    );
    let _: i64 = redis::cmd("SPACELOCK.RELEASE")
        .arg("aof:lock")
        .arg("holder")
        .query(&mut con)
        .unwrap();
    // Counter mode continues the replayed counter; term mode starts the
    // restarted process's term above it (its floor).
    let want = if counter {
        last + 1
    } else {
        kit::token_floor(&mut con)
    };
    let next = acquire(&mut con, "aof:lock", "other", 60_000).unwrap();
    assert!(next > last, "token {next} after restart must exceed {last}");
    assert_eq!(next, want);
    let before_plain = snapshot(&mut con);
    drop(con);

    // The same AOF loads in a server without the module.
    let plain = server.restart_with(|b| b.without_module());
    let mut con = plain.conn();
    assert_eq!(snapshot(&mut con), before_plain);
    let unknown = redis::cmd("SPACELOCK.INFO")
        .arg("aof:lock")
        .query::<redis::Value>(&mut con);
    assert!(unknown.is_err(), "module really is absent");
}

#[kit::test]
fn rdb_restart_keeps_tokens() {
    let server = Server::new();
    let mut con = server.conn();
    let t = acquire(&mut con, "rdb:lock", "a", 60_000).unwrap();
    let _: i64 = redis::cmd("SPACELOCK.RELEASE")
        .arg("rdb:lock")
        .arg("a")
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("SAVE").query(&mut con).unwrap();
    drop(con);
    let server = server.restart_with(|b| b);
    let mut con = server.conn();
    let next = acquire(&mut con, "rdb:lock", "b", 60_000).unwrap();
    assert!(next > t, "{next} > {t}");
}

#[kit::test]
fn promoted_replica_continues_tokens_and_keeps_locks() {
    promoted_replica(false);
}

#[kit::test]
fn promoted_replica_in_counter_mode_continues_the_counters() {
    promoted_replica(true);
}

fn promoted_replica(counter: bool) {
    let master = ServerBuilder::new().module_args(mode_args(counter)).start();
    let replica = start_replica_with(&master, true, counter);
    let mut m = master.conn();
    random_workload(&mut m, 7, 300);
    acquire(&mut m, "held-at-failover", "old-master-client", 60_000).unwrap();
    // The last token issued per lock name on the old master.
    let mut last_tokens = Vec::new();
    for i in 0..8 {
        let k = format!("git-sync:lock:{i}");
        let fence: Vec<u8> = redis::cmd("SPACELOCK.FENCEKEY")
            .arg(&k)
            .query(&mut m)
            .unwrap();
        let last: Option<i64> = redis::cmd("GET").arg(&fence).query(&mut m).unwrap();
        last_tokens.push((k, last.unwrap_or(0)));
    }
    assert!(
        last_tokens.iter().any(|(_, t)| *t > 1),
        "workload issued tokens"
    );
    kit::sync_replicas(&mut m, 1);
    drop(master);

    // The promotion opens a term (in either mode: the mode only decides
    // whether grants use it).
    let mut r = kit::promote(&replica);
    let v: Option<String> = redis::cmd("GET")
        .arg("held-at-failover")
        .query(&mut r)
        .unwrap();
    assert_eq!(
        v.as_deref(),
        Some("old-master-client"),
        "lock survives promotion"
    );
    assert_eq!(acquire(&mut r, "held-at-failover", "new", 1000), None);
    let next = kit::token_floor(&mut r);
    let old_max = last_tokens.iter().map(|(_, t)| *t).max().unwrap();
    assert!(counter || next > old_max, "floor {next} <= {old_max}");
    for (k, last) in last_tokens {
        let _: i64 = redis::cmd("DEL").arg(&k).query(&mut r).unwrap();
        let t = acquire(&mut r, &k, "new", 1000).unwrap();
        if counter {
            assert_eq!(t, last + 1, "{k}: the new master continues the counter");
        } else {
            // The new term's floor: each name counts on its own.
            assert_eq!(t, next, "{k}: the new master's term");
            assert!(t > last, "{k}: {t} <= {last}");
        }
    }
}

fn repl_offset(con: &mut Connection) -> i64 {
    kit::info_field(con, "replication", "master_repl_offset")
}

#[kit::test]
fn calls_that_change_nothing_propagate_nothing() {
    // Keep the master's pings to the replica from moving the offset.
    let master = ServerBuilder::new()
        .arg("repl-ping-replica-period", "3600")
        .start();
    let _replica = start_replica(&master, false);
    let mut m = master.conn();
    acquire(&mut m, "held", "owner", 60_000).unwrap();
    let _: () = redis::cmd("RPUSH")
        .arg("list")
        .arg("x")
        .query(&mut m)
        .unwrap();
    kit::sync_replicas(&mut m, 1);
    let before = repl_offset(&mut m);
    for _ in 0..20 {
        assert_eq!(acquire(&mut m, "held", "owner", 1000), None);
        assert_eq!(acquire(&mut m, "held", "other", 1000), None);
        let r: i64 = redis::cmd("SPACELOCK.REFRESH")
            .arg("held")
            .arg("other")
            .arg(1000)
            .query(&mut m)
            .unwrap();
        assert_eq!(r, 0);
        let r: i64 = redis::cmd("SPACELOCK.REFRESH")
            .arg("missing")
            .arg("owner")
            .arg(1000)
            .query(&mut m)
            .unwrap();
        assert_eq!(r, 0);
        let r: i64 = redis::cmd("SPACELOCK.RELEASE")
            .arg("held")
            .arg("other")
            .query(&mut m)
            .unwrap();
        assert_eq!(r, 0);
        let r: i64 = redis::cmd("SPACELOCK.RELEASE")
            .arg("missing")
            .arg("owner")
            .query(&mut m)
            .unwrap();
        assert_eq!(r, 0);
        for bad in [
            redis::cmd("SPACELOCK.ACQUIRE")
                .arg("list")
                .arg("o")
                .arg(1000)
                .clone(),
            redis::cmd("SPACELOCK.ACQUIRE")
                .arg("k")
                .arg("o")
                .arg(0)
                .clone(),
            redis::cmd("SPACELOCK.REFRESH")
                .arg("held")
                .arg("owner")
                .arg("x")
                .clone(),
        ] {
            assert!(bad.query::<redis::Value>(&mut m).is_err());
        }
        let _: redis::Value = redis::cmd("SPACELOCK.INFO")
            .arg("held")
            .query(&mut m)
            .unwrap();
    }
    assert_eq!(
        repl_offset(&mut m),
        before,
        "a call that changed nothing was propagated"
    );
    // A call that changes something does move it.
    let r: i64 = redis::cmd("SPACELOCK.REFRESH")
        .arg("held")
        .arg("owner")
        .arg(60_000)
        .query(&mut m)
        .unwrap();
    assert_eq!(r, 1);
    assert!(repl_offset(&mut m) > before);
}

kit::main!();
