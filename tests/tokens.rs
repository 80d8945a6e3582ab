//! Fencing tokens never go backwards (the token term rule).
//!
//! Each case reproduces a way the old module (plain `fence + 1` counters)
//! reissued or regressed a token: a restart without persistence, FLUSHALL /
//! FLUSHDB / SWAPDB / MOVE, eviction of fence keys, the restore of an older
//! RDB, the promotion of a replica that missed writes, a split brain, a slot
//! migration. Then `SPACELOCK.NEWTERM`, `spacelock.token-mode`, and
//! `SPACELOCK.CHECK` (Lua, Functions, replicas, bad input, cluster), and a
//! replica without the module.
//!
//! The clock bound itself (a new term must start on a later clock than the
//! old term's start + 1 ms per million tokens) cannot be driven through a
//! real server, whose clock is the machine's: it is tested at its edge in
//! `core/src/tokens.rs`.

use spacelock_testkit as kit;

use kit::{
    acquire, check, error_of, release, snapshot, wait_until, Cluster, Server, ServerBuilder,
};
use redis::{Connection, Value};
use std::time::Duration;

/// The fenced write from Lua (see docs/fencing.md): the data key is written only while the
/// lock is held by `ARGV[1]` under token `ARGV[2]` (passed as a string).
const FENCED_WRITE: &str = r#"
if redis.call('SPACELOCK.CHECK', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('SET', KEYS[2], ARGV[3])
  return 1
end
return 0"#;

/// The same, as a Function library.
const FENCED_LIBRARY: &str = r#"#!lua name=fenced
redis.register_function('fenced_write', function(keys, args)
  if redis.call('SPACELOCK.CHECK', keys[1], args[1], args[2]) == 1 then
    redis.call('SET', keys[2], args[3])
    return 1
  end
  return 0
end)"#;

/// Runs [`FENCED_WRITE`] on `con`: `value` is written to `data` only if
/// `lock` is held by `owner` under `token` (passed as a string, as the
/// recipe does). Its reply: 1 if written, 0 if refused.
fn fenced_write<T: redis::FromRedisValue>(
    con: &mut dyn redis::ConnectionLike,
    lock: &str,
    data: &str,
    owner: &str,
    token: i64,
    value: &str,
) -> redis::RedisResult<T> {
    redis::Script::new(FENCED_WRITE)
        .key(lock)
        .key(data)
        .arg(owner)
        .arg(token.to_string())
        .arg(value)
        .invoke(con)
}

fn get(con: &mut Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(con).unwrap()
}

/// `SET key value`.
fn set(con: &mut Connection, key: impl redis::ToRedisArgs, value: impl redis::ToRedisArgs) {
    let _: () = redis::cmd("SET").arg(key).arg(value).query(con).unwrap();
}

fn fence_key(con: &mut Connection, key: &str) -> String {
    redis::cmd("SPACELOCK.FENCEKEY")
        .arg(key)
        .query(con)
        .unwrap()
}

fn select(con: &mut Connection, db: i64) {
    let _: () = redis::cmd("SELECT").arg(db).query(con).unwrap();
}

/// Acquires and releases `key` once: a token issued and done with.
fn cycle(con: &mut Connection, key: &str) -> i64 {
    let t = acquire(&mut *con, key, "cycler", 60_000).expect("free");
    assert_eq!(release(con, key, "cycler"), 1);
    t
}

/// Waits until `key` has expired on the server.
fn until_gone(con: &mut Connection, key: &str) {
    assert!(
        wait_until(Duration::from_secs(5), || {
            redis::cmd("EXISTS").arg(key).query::<i64>(con).unwrap() == 0
        }),
        "{key} never expired"
    );
}

// ---------------------------------------------------------------------------
// Restart without persistence

#[kit::test]
fn restart_without_persistence_never_reissues_a_token() {
    // Testkit servers run with `save ''` and no AOF: a restart loses every
    // fence key, and the old module started each name again at 1.
    let server = Server::new();
    let mut con = server.conn();
    let names = ["job:a", "job:b", "job:c"];
    let mut before = Vec::new();
    for _ in 0..3 {
        for name in names {
            before.push(cycle(&mut con, name));
        }
    }
    acquire(&mut con, "job:held", "h", 60_000).unwrap();
    let max_before = *before.iter().max().unwrap();
    let start_before = kit::term_start_ms(&mut con);
    drop(con);

    let server = server.restart_with(|b| b);
    let mut con = server.conn();
    assert!(kit::all_keys(&mut con).is_empty(), "nothing persisted");
    assert!(kit::term_start_ms(&mut con) > start_before);
    let floor = kit::token_floor(&mut con);
    assert!(floor > max_before, "floor {floor} <= {max_before}");
    // Every grant after the restart: the new term's floor (each name counts
    // on its own).
    for name in names.iter().chain(&["job:held", "job:new"]) {
        let t = acquire(&mut con, *name, "after", 60_000).unwrap();
        assert_eq!(
            t, floor,
            "{name}: each name counts from the new term's floor"
        );
        assert!(t > max_before, "{name}: {t} <= {max_before}");
    }
}

// ---------------------------------------------------------------------------
// FLUSHALL, FLUSHDB, SWAPDB, MOVE

#[kit::test]
fn flushes_never_bring_a_token_back() {
    let server = Server::new();
    let mut con = server.conn();
    for flush in [
        &["FLUSHALL"][..],
        &["FLUSHALL", "ASYNC"],
        &["FLUSHALL", "SYNC"],
        &["FLUSHDB"],
        &["FLUSHDB", "ASYNC"],
    ] {
        let t1 = acquire(&mut con, "flush:lock", "a", 60_000).unwrap();
        // Traffic on another name does not move this one's tokens.
        cycle(&mut con, "flush:other");
        let mut cmd = redis::cmd(flush[0]);
        for a in &flush[1..] {
            cmd.arg(*a);
        }
        let _: () = cmd.query(&mut con).unwrap();
        assert!(kit::all_keys(&mut con).is_empty(), "{flush:?}");
        // The stale holder's token is never handed out again.
        let t2 = acquire(&mut con, "flush:lock", "b", 60_000).unwrap();
        assert_eq!(t2, t1 + 1, "{flush:?}: the next token of the name");
        assert!(t2 > t1, "{flush:?}");
        assert_eq!(kit::fence_value(&mut con, "flush:lock"), Some(t2));
        assert_eq!(check(&mut con, "flush:lock", "b", t2), 1);
        assert_eq!(check(&mut con, "flush:lock", "a", t1), 0);
        let _: () = redis::cmd("FLUSHALL").query(&mut con).unwrap();
    }
}

#[kit::test]
fn swapdb_never_lets_two_holders_share_a_token() {
    // The lock is held in db 0 with a waiter queued; db 1 is empty. After
    // SWAPDB the holder's lock lives in db 1, db 0 is free and the waiter
    // gets it: the old module gave it fence + 1 = the holder's token.
    let server = Server::new();
    let mut con = server.conn();
    let held = acquire(&mut con, "swap:lock", "holder", 60_000).unwrap();
    let client = server.client();
    let waiter = std::thread::spawn(move || {
        let mut c = client.get_connection().unwrap();
        kit::acquire_wait(&mut c, "swap:lock", "waiter", 60_000, 20_000).unwrap()
    });
    kit::until_waiting(&mut con, 1);
    let _: () = redis::cmd("SWAPDB").arg(0).arg(1).query(&mut con).unwrap();
    let got = waiter
        .join()
        .unwrap()
        .expect("the waiter gets the free lock");
    assert!(got > held, "{got} <= {held}");
    // db 0: the waiter, under its token; db 1: the holder, under its own.
    assert_eq!(get(&mut con, "swap:lock").as_deref(), Some("waiter"));
    assert_eq!(check(&mut con, "swap:lock", "waiter", got), 1);
    assert_eq!(check(&mut con, "swap:lock", "holder", held), 0);
    select(&mut con, 1);
    assert_eq!(get(&mut con, "swap:lock").as_deref(), Some("holder"));
    assert_eq!(check(&mut con, "swap:lock", "holder", held), 1);
    assert_eq!(kit::fence_value(&mut con, "swap:lock"), Some(held));
    // Grants in either db stay above everything issued.
    assert_eq!(release(&mut con, "swap:lock", "holder"), 1);
    let t = acquire(&mut con, "swap:lock", "db1", 60_000).unwrap();
    assert_eq!(t, got + 1, "db 1 continues the process's counter");
}

#[kit::test]
fn move_of_a_fence_key_never_brings_a_token_back() {
    let server = Server::new();
    let mut con = server.conn();
    let t1 = acquire(&mut con, "mv:lock", "a", 60_000).unwrap();
    let fence = fence_key(&mut con, "mv:lock");
    let moved: i64 = redis::cmd("MOVE")
        .arg(&fence)
        .arg(1)
        .query(&mut con)
        .unwrap();
    assert_eq!(moved, 1);
    assert_eq!(release(&mut con, "mv:lock", "a"), 1);
    // db 0 has no fence key now; the old module issued 1 again.
    let t2 = acquire(&mut con, "mv:lock", "b", 60_000).unwrap();
    assert_eq!(t2, t1 + 1);
    // db 1 has the moved counter (t1): a grant there is still above t2.
    select(&mut con, 1);
    assert_eq!(kit::fence_value(&mut con, "mv:lock"), Some(t1));
    let t3 = acquire(&mut con, "mv:lock", "c", 60_000).unwrap();
    assert_eq!(t3, t2 + 1);
    // And a DEL of the fence key is no different.
    select(&mut con, 0);
    let _: i64 = redis::cmd("DEL").arg(&fence).query(&mut con).unwrap();
    assert_eq!(release(&mut con, "mv:lock", "b"), 1);
    assert_eq!(acquire(&mut con, "mv:lock", "d", 60_000), Some(t3 + 1));
}

// ---------------------------------------------------------------------------
// Eviction

/// Writes 10 kB filler values until no fence key is left: eviction took
/// it. Each filler is then read more often than the fence key has been
/// used (`OBJECT FREQ` under an LFU policy: every grant touches the fence
/// key, so a busy lock's fence key is hot), so that the fence key is the
/// least recently and least frequently used key. KEYS and OBJECT do not
/// touch a key's LRU/LFU data. Returns the writes made.
fn evict_fence_keys(con: &mut Connection, tag: &str, lfu: bool) -> usize {
    let filler = vec![b'x'; 10_000];
    for i in 0..20_000 {
        let fences: Vec<String> = redis::cmd("KEYS")
            .arg("spacelock:fence:*")
            .query(con)
            .unwrap();
        if fences.is_empty() {
            return i;
        }
        let reads = if lfu {
            let freq = fences
                .iter()
                .filter_map(|f| {
                    redis::cmd("OBJECT")
                        .arg("FREQ")
                        .arg(f)
                        .query::<i64>(con)
                        .ok()
                })
                .max()
                .unwrap_or(0);
            (freq + 10).min(250)
        } else {
            4
        };
        let name = format!("fill:{tag}:{i}");
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(&name).arg(&filler[..]).ignore();
        for _ in 0..reads {
            pipe.cmd("STRLEN").arg(&name).ignore();
        }
        let _: () = pipe.query(con).unwrap();
    }
    panic!("the fence key was never evicted");
}

fn eviction_hands_over_increasing_tokens(policy: &str) {
    const WAITERS: usize = 20;
    // lfu-log-factor 0: every access counts, so the fillers' reads make
    // them more frequently used than the fence key, deterministically.
    let server = ServerBuilder::new()
        .arg("maxmemory-policy", policy)
        .arg("lfu-log-factor", "0")
        .start();
    let mut con = server.conn();
    let first = acquire(&mut con, "ev:lock", "holder", 60_000).unwrap();
    // A FIFO queue of 20 waiters. Each one, once granted, fills memory until
    // the fence key is evicted, then releases: every handover follows an
    // eviction of the fence key (the old module issued 1 every time).
    let lfu = policy.contains("lfu");
    let mut waiters = Vec::new();
    for i in 0..WAITERS {
        let client = server.client();
        waiters.push(std::thread::spawn(move || {
            let mut c = client.get_connection().unwrap();
            let owner = format!("w{i}");
            let t = kit::acquire_wait(&mut c, "ev:lock", &owner, 60_000, 60_000).unwrap();
            evict_fence_keys(&mut c, &owner, lfu);
            // 0 when the lock key was evicted too (the next waiter already
            // has it): allowed, as it has a ttl.
            let _ = release(&mut c, "ev:lock", &owner);
            t
        }));
        kit::until_waiting(&mut con, i as u64 + 1);
    }
    // Headroom for the fillers, and for the query buffers of up to 21
    // clients filling at once (a lock key evicted with its fence key hands
    // the lock on while its holder is still filling).
    let used = kit::info_field(&mut con, "memory", "used_memory");
    kit::config_set(&mut con, "maxmemory", used + 4_000_000);
    evict_fence_keys(&mut con, "holder", lfu);
    let _ = release(&mut con, "ev:lock", "holder");
    let tokens: Vec<i64> = waiters
        .into_iter()
        .map(|w| w.join().unwrap().expect("every waiter is granted"))
        .collect();
    kit::config_set(&mut con, "maxmemory", 0);
    assert!(kit::info_field(&mut con, "stats", "evicted_keys") > WAITERS as i64);
    let mut all = vec![first];
    all.extend(&tokens);
    assert!(
        all.windows(2).all(|w| w[0] < w[1]),
        "{policy}: tokens in grant order must increase: {all:?}"
    );
    assert_eq!(kit::stat(&mut con, "handoffs"), WAITERS as u64);
}

#[kit::test]
fn eviction_allkeys_lru_never_brings_a_token_back() {
    eviction_hands_over_increasing_tokens("allkeys-lru");
}

#[kit::test]
fn eviction_allkeys_lfu_never_brings_a_token_back() {
    eviction_hands_over_increasing_tokens("allkeys-lfu");
}

#[kit::test]
fn volatile_policies_never_evict_fence_keys() {
    // Fence keys have no ttl, so volatile-* policies cannot pick them. Lock
    // keys have one, and can be evicted (a lease lost to memory pressure).
    for policy in [
        "volatile-lru",
        "volatile-lfu",
        "volatile-random",
        "volatile-ttl",
    ] {
        let server = ServerBuilder::new().arg("maxmemory-policy", policy).start();
        let mut con = server.conn();
        // Fence keys kept forever (a retention makes them volatile: see
        // `retention_lets_volatile_policies_evict_fence_keys_yet_tokens_never_go_back`).
        kit::config_set(&mut con, "spacelock.fence-retention", 0);
        let t = cycle(&mut con, "vol:lock");
        acquire(&mut con, "vol:held", "h", 600_000).unwrap();
        let held = kit::fence_value(&mut con, "vol:held").unwrap();
        let used = kit::info_field(&mut con, "memory", "used_memory");
        kit::config_set(&mut con, "maxmemory", used + 1_000_000);
        let filler = vec![b'x'; 50_000];
        let mut i = 0;
        while kit::info_field(&mut con, "stats", "evicted_keys") < 50 {
            let _: () = redis::cmd("SET")
                .arg(format!("fill:{i}"))
                .arg(&filler[..])
                .arg("PX")
                .arg(600_000)
                .query(&mut con)
                .unwrap();
            i += 1;
            assert!(i < 10_000, "{policy}: nothing was evicted");
        }
        assert_eq!(kit::fence_value(&mut con, "vol:lock"), Some(t), "{policy}");
        assert_eq!(
            kit::fence_value(&mut con, "vol:held"),
            Some(held),
            "{policy}"
        );
        kit::config_set(&mut con, "maxmemory", 0);
        let lock_evicted = get(&mut con, "vol:held").is_none();
        eprintln!("{policy}: {i} volatile writes; lock key evicted: {lock_evicted}");
        assert_eq!(acquire(&mut con, "vol:lock", "b", 1000), Some(held + 1));
    }
}

// ---------------------------------------------------------------------------
// Restore of an older RDB

#[kit::test]
fn restoring_an_older_rdb_never_brings_a_token_back() {
    let server = Server::new();
    let mut con = server.conn();
    let old = cycle(&mut con, "rdb:lock");
    acquire(&mut con, "rdb:held", "old-holder", 600_000).unwrap();
    let _: () = redis::cmd("SAVE").query(&mut con).unwrap();
    let dir = server.dir.path().to_path_buf();
    std::fs::copy(dir.join("dump.rdb"), dir.join("old.rdb")).unwrap();
    // Later grants, which the old dump does not know.
    let mut later = Vec::new();
    for _ in 0..5 {
        later.push(cycle(&mut con, "rdb:lock"));
        later.push(cycle(&mut con, "rdb:other"));
    }
    let max_before = *later.iter().max().unwrap();
    assert!(max_before > old);
    drop(con);

    // Stop, put the old dump back, start again.
    let server = server.restart_with(|b| {
        std::fs::copy(dir.join("old.rdb"), dir.join("dump.rdb")).unwrap();
        b
    });
    let mut con = server.conn();
    assert_eq!(
        kit::fence_value(&mut con, "rdb:lock"),
        Some(old),
        "the old dump is back"
    );
    assert_eq!(get(&mut con, "rdb:held").as_deref(), Some("old-holder"));
    let floor = kit::token_floor(&mut con);
    assert!(floor > max_before, "floor {floor} <= {max_before}");
    for name in ["rdb:lock", "rdb:other", "rdb:new"] {
        let t = acquire(&mut con, name, "after", 60_000).unwrap();
        assert_eq!(
            t, floor,
            "{name}: each name counts from the new term's floor"
        );
    }
}

// ---------------------------------------------------------------------------
// Promotion of a replica that missed writes; split brain

struct Detached {
    primary: Server,
    replica: Server,
    /// Every token the old primary issued, in order.
    issued: Vec<i64>,
    /// The replica's token floor before its promotion.
    replica_floor: i64,
}

/// A primary and a replica (both with the module; the replica's process
/// loaded first, so its load term is older than the primary's). The
/// replica follows for a while, is then detached (REPLICAOF a port where
/// nobody listens: still a replica, data kept), and the primary grants more,
/// which the replica misses.
fn detached_pair() -> Detached {
    let replica = Server::new();
    let mut r = replica.conn();
    let replica_start = kit::term_start_ms(&mut r);
    assert!(wait_until(Duration::from_secs(1), || kit::now_ms() > replica_start));
    let primary = Server::new();
    let mut p = primary.conn();
    assert!(kit::term_start_ms(&mut p) > replica_start);
    kit::replicaof(&mut r, primary.port);
    kit::until_link_up(&mut r, &replica);
    let mut issued = Vec::new();
    for name in ["p:a", "p:b", "sb:lock"] {
        issued.push(cycle(&mut p, name));
    }
    issued.push(acquire(&mut p, "p:held", "old", 600_000).unwrap());
    kit::sync_replicas(&mut p, 1);
    assert_eq!(kit::fence_value(&mut r, "p:a"), Some(issued[0]));

    // Detach the replica: it keeps its data, and misses what follows.
    let nowhere = kit::free_port();
    kit::replicaof(&mut r, nowhere);
    assert!(wait_until(Duration::from_secs(5), || {
        kit::info_text(&mut p, "replication", "connected_slaves").as_deref() == Some("0")
    }));
    for _ in 0..5 {
        for name in ["p:a", "p:b", "sb:lock", "p:fresh"] {
            issued.push(cycle(&mut p, name));
        }
    }
    assert_eq!(release(&mut p, "p:held", "old"), 1);
    issued.push(acquire(&mut p, "p:held", "old2", 600_000).unwrap());
    // The replica missed them: its fence counters are behind.
    assert!(kit::fence_value(&mut r, "p:a").unwrap() < kit::fence_value(&mut p, "p:a").unwrap());
    assert_eq!(kit::fence_value(&mut r, "p:fresh"), None);
    let replica_floor = kit::token_floor(&mut r);
    Detached {
        primary,
        replica,
        issued,
        replica_floor,
    }
}

#[kit::test]
fn promoted_replica_that_missed_writes_issues_only_higher_tokens() {
    let d = detached_pair();
    let max_old = *d.issued.iter().max().unwrap();
    // Without a term opened at promotion, the replica's own load term would
    // not be enough: it loaded before the old primary.
    assert!(
        d.replica_floor < max_old,
        "setup: replica floor {} should be below {max_old}",
        d.replica_floor
    );
    let mut r = kit::promote(&d.replica);
    let floor = kit::token_floor(&mut r);
    assert!(floor > max_old, "floor {floor} <= {max_old}");
    // The stale lock the replica still has is released by its holder.
    assert_eq!(release(&mut r, "p:held", "old"), 1);
    for name in ["p:a", "p:b", "sb:lock", "p:fresh", "p:held", "p:new"] {
        let t = acquire(&mut r, name, "new", 60_000).unwrap();
        assert_eq!(
            t, floor,
            "{name}: each name counts from the new term's floor"
        );
        assert!(t > max_old, "{name}: {t} <= {max_old}");
    }
    drop(d.primary);
}

#[kit::test]
fn split_brain_old_primary_tokens_stay_below_the_new_primary() {
    let d = detached_pair();
    let mut r = kit::promote(&d.replica);
    // The new primary grants; then the old one, still a primary on the
    // other side of the partition, grants the same name.
    let new = acquire(&mut r, "sb:lock", "new-side", 60_000).unwrap();
    let mut p = d.primary.conn();
    let old = acquire(&mut p, "sb:lock", "old-side", 60_000).unwrap();
    assert!(
        old < new,
        "old primary's {old} must be below the new primary's {new}"
    );
    // A resource that has seen `new` (its fence column holds it) rejects
    // `old`: `old <= new` fails the `fence <= token` check.
    assert!(d.issued.iter().all(|&t| t < new));
    // And both sides keep their order: each grows past its own tokens.
    assert_eq!(release(&mut p, "sb:lock", "old-side"), 1);
    let old2 = acquire(&mut p, "sb:lock", "old-side", 60_000).unwrap();
    assert!(old2 > old && old2 < new, "{old} < {old2} < {new}");
}

/// Grants on the old side of a partition, in one Lua script (fast enough
/// for a million): `per_name` cycles of each of `names` names `prefix1` …
/// `prefixN`, or of `prefix` itself when `names` is 0. Returns the last
/// token.
fn lua_cycles(con: &mut Connection, prefix: &str, names: u64, per_name: u64) -> i64 {
    const SCRIPT: &str = r#"
local last = 0
local names, per_name = tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, math.max(names, 1) do
  local key = ARGV[1]
  if names > 0 then key = key .. i end
  for _ = 1, per_name do
    last = redis.call('SPACELOCK.ACQUIRE', key, 'lua-cycler', 60000)
    redis.call('SPACELOCK.RELEASE', key, 'lua-cycler')
  end
end
return last"#;
    redis::cmd("EVAL")
        .arg(SCRIPT)
        .arg(0)
        .arg(prefix)
        .arg(names)
        .arg(per_name)
        .query(con)
        .unwrap()
}

#[kit::test]
fn split_brain_headroom_counts_the_lock_alone() {
    // The old primary opens a term; 200 ms later its replica is promoted in
    // a partition. The old side then serves a million grants on other names
    // and a hundred thousand on the lock itself: its next token for the lock
    // is still below the new primary's first. (`core/src/tokens.rs` runs the
    // same numbers in memory.) (With one counter for every
    // name, the old side passed the new primary after 200 000 grants on any
    // names.)
    let replica = Server::new();
    let primary = Server::new();
    let (mut p, mut r) = (primary.conn(), replica.conn());
    kit::replicaof(&mut r, primary.port);
    kit::until_link_up(&mut r, &replica);
    let before_split = cycle(&mut p, "sbh:lock");
    let old_floor = kit::new_term(&mut p);
    let old_start = kit::term_start_ms(&mut p);
    kit::sync_replicas(&mut p, 1);
    assert_eq!(kit::fence_value(&mut r, "sbh:lock"), Some(before_split));
    // The partition: the replica stops following, 200 ms after the old
    // side's term began, and is promoted.
    assert!(wait_until(Duration::from_secs(2), || kit::now_ms() >= old_start + 200));
    kit::replicaof(&mut r, kit::free_port());
    let mut r = kit::promote(&replica);
    let new_start = kit::term_start_ms(&mut r);
    assert!(
        new_start >= old_start + 200,
        "{new_start} < {old_start} + 200"
    );
    let new_floor = kit::token_floor(&mut r);
    let new_first = acquire(&mut r, "sbh:lock", "new-side", 60_000).unwrap();
    assert_eq!(new_first, new_floor);

    // The old side: a million grants on other names (a quarter of a
    // million outside `make soak`: already past what one counter for every
    // name allowed), then a hundred thousand on the lock.
    let others = if kit::soak() { 1_000_000 } else { 250_000 };
    lua_cycles(&mut p, "sbh:other:", others, 1);
    let last_old = lua_cycles(&mut p, "sbh:lock", 0, 100_000);
    let next_old = acquire(&mut p, "sbh:lock", "old-side", 60_000).unwrap();
    assert!(
        next_old < new_first,
        "old primary's {next_old} must stay below the new primary's {new_first}"
    );
    // The lock counted on its own: a hundred thousand above the floor, and
    // a few more where the million other names' first grants filled both of
    // its cells in the table of high-water marks (about one per 32 768
    // grants of fresh names).
    let above = last_old - old_floor;
    assert!(
        (99_999..100_200).contains(&above),
        "{above} above the floor"
    );
    // INFO shows the headroom used: the lock ran 100 ms of tokens ahead of
    // its term's floor, below the 200 ms between the two terms.
    let lead = kit::info_field(&mut p, "spacelock", "spacelock_token_lead_ms");
    assert_eq!(lead, (next_old - old_floor) / 1000 + 1);
    assert!(old_start + lead < new_start);
    // Tokens stay exact as doubles (Lua numbers, JavaScript numbers).
    assert!(next_old < 1 << 53 && new_first < 1 << 53);
}

#[kit::test]
fn fence_keys_go_away_a_retention_after_the_last_lease() {
    let server = Server::new();
    let mut con = server.conn();
    kit::config_set(&mut con, "spacelock.fence-retention", 300);
    let base_keys: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(base_keys, 0);
    // A thousand names, each used once (a lock per job).
    let last = lua_cycles(&mut con, "job:", 1_000, 1);
    let mut firsts = Vec::new();
    for i in 1..=3 {
        firsts.push(cycle(&mut con, &format!("reused:{i}")));
    }
    assert_eq!(redis::cmd("DBSIZE").query::<i64>(&mut con).unwrap(), 1_003);
    assert_eq!(
        kit::stat(&mut con, "ledger_grants"),
        0,
        "released: nothing kept"
    );
    // A held lock keeps its fence key for as long as it is held.
    let held = acquire(&mut con, "held", "h", 400).unwrap();
    let held_fence = fence_key(&mut con, "held");
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(100));
        let refreshed: i64 = redis::cmd("SPACELOCK.REFRESH")
            .arg("held")
            .arg("h")
            .arg(400)
            .query(&mut con)
            .unwrap();
        assert_eq!(refreshed, 1);
    }
    // 800 ms later, more than a retention after every released lease: only
    // the held lock and its fence key are left.
    assert!(wait_until(Duration::from_secs(5), || redis::cmd("DBSIZE")
        .query::<i64>(&mut con)
        .unwrap()
        == 2));
    assert_eq!(check(&mut con, "held", "h", held), 1);
    assert_eq!(kit::fence_value(&mut con, "held"), Some(held));
    let left: i64 = redis::cmd("PTTL").arg(&held_fence).query(&mut con).unwrap();
    assert!(left > 400, "fence key pttl {left}");
    // A forgotten name's next token is still above its last.
    for (i, first) in firsts.iter().enumerate() {
        let again = cycle(&mut con, &format!("reused:{}", i + 1));
        assert!(again > *first, "{again} <= {first}");
    }
    assert!(cycle(&mut con, "job:1000") > last);
    // 0 keeps fence keys forever.
    kit::config_set(&mut con, "spacelock.fence-retention", 0);
    cycle(&mut con, "kept");
    let kept: i64 = redis::cmd("PTTL")
        .arg(fence_key(&mut con, "kept"))
        .query(&mut con)
        .unwrap();
    assert_eq!(kept, -1);
}

// ---------------------------------------------------------------------------
// Slot migration

#[kit::test]
fn slot_migration_continues_above_the_source() {
    let cluster = Cluster::start(3);
    let mut any = cluster.nodes[0].conn();
    let key = "{mig}:lock";
    let held = "{mig}:held";
    let slot = kit::keyslot(&mut any, key);
    let from = cluster.owner_of(slot);
    let to = (from + 1) % 3;
    let mut src = cluster.nodes[from].conn();
    let mut dst = cluster.nodes[to].conn();
    // The source opens a term after the target's: its tokens are above the
    // target's floor, so only the migrated fence key keeps the target above
    // them (the old module did the same with plain counters; a lost fence
    // key is what terms guard against within one process).
    assert!(wait_until(Duration::from_secs(1), || kit::now_ms()
        > kit::term_start_ms(&mut dst)));
    let src_floor = kit::new_term(&mut src);
    let dst_floor = kit::token_floor(&mut dst);
    assert!(src_floor > dst_floor, "{src_floor} <= {dst_floor}");
    let mut issued = Vec::new();
    for _ in 0..3 {
        issued.push(cycle(&mut src, key));
    }
    let held_token = acquire(&mut src, held, "holder", 600_000).unwrap();
    issued.push(held_token);
    let max_src = *issued.iter().max().unwrap();
    assert!(max_src > dst_floor);

    let moved = cluster.migrate_slot(slot, from, to);
    assert_eq!(
        moved.len(),
        3,
        "a fence key, a lock and its fence: {moved:?}"
    );
    // The held lock moved with its token.
    assert_eq!(check(&mut dst, held, "holder", held_token), 1);
    assert_eq!(acquire(&mut dst, held, "other", 1000), None);
    let t = acquire(&mut dst, key, "target", 60_000).unwrap();
    // The migrated counter + 1: above the source's last token of the name
    // (the target's own floor is far below it).
    assert_eq!(t, issued[2] + 1);
    assert_eq!(release(&mut dst, held, "holder"), 1);
    let t2 = acquire(&mut dst, held, "target", 60_000).unwrap();
    assert_eq!(t2, held_token + 1);
    assert!(t2 > held_token);
}

// ---------------------------------------------------------------------------
// NEWTERM and token-mode

#[kit::test]
fn newterm_reply_bounds_every_later_token_and_is_logged() {
    let server = Server::new();
    let mut con = server.conn();
    let t1 = cycle(&mut con, "nt:a");
    let t2 = cycle(&mut con, "nt:a");
    assert_eq!(t2, t1 + 1);
    assert_eq!(cycle(&mut con, "nt:b"), t1, "each name counts on its own");
    let opened = kit::stat(&mut con, "terms_opened");
    let before = kit::now_ms();
    let reply = kit::new_term(&mut con);
    let start = kit::term_start_ms(&mut con);
    assert!(start >= before);
    assert!(reply > t2, "{reply} <= {t2}");
    assert_eq!(reply, (start * spacelock_core::tokens::PER_MS).max(t2 + 1));
    assert_eq!(kit::token_floor(&mut con), reply);
    assert_eq!(kit::stat(&mut con, "terms_opened"), opened + 1);
    assert!(
        server.log().contains(&format!(
            "spacelock: SPACELOCK.NEWTERM opened a token term at {start} (next token >= {reply})"
        )),
        "{}",
        server.log()
    );
    // Later tokens: the reply, for old and new names alike.
    assert_eq!(cycle(&mut con, "nt:new"), reply);
    assert_eq!(cycle(&mut con, "nt:a"), reply);
    assert_eq!(cycle(&mut con, "nt:a"), reply + 1);
    // A second NEWTERM in the same millisecond never goes down.
    let again = kit::new_term(&mut con);
    assert!(again > reply, "{again}");
    assert_eq!(cycle(&mut con, "nt:a"), again.max(reply + 2));
    // Arity.
    let e = error_of(&mut con, &["SPACELOCK.NEWTERM", "x"]);
    assert!(e.contains("wrong number of arguments"), "{e}");
}

#[kit::test]
fn counter_mode_at_load_then_term_never_goes_backwards() {
    let server = ServerBuilder::new().token_mode("counter").start();
    let mut con = server.conn();
    assert_eq!(
        kit::info_text(&mut con, "spacelock", "spacelock_token_mode").as_deref(),
        Some("counter")
    );
    assert!(server.log().contains("token-mode=counter allow-unload=no;"));
    assert_eq!(cycle(&mut con, "cm:a"), 1);
    assert_eq!(cycle(&mut con, "cm:a"), 2);
    assert_eq!(cycle(&mut con, "cm:b"), 1);
    let floor = kit::token_floor(&mut con);
    // A counter above the term floor (a fence key from elsewhere): counter
    // mode issues fence + 1, and the process remembers it.
    let fence = fence_key(&mut con, "cm:c");
    set(&mut con, &fence, floor + 5_000);
    assert_eq!(cycle(&mut con, "cm:c"), floor + 5_001);
    // NEWTERM in counter mode: the floor moves, the counters do not.
    let reply = kit::new_term(&mut con);
    assert!(reply > floor);
    assert_eq!(cycle(&mut con, "cm:a"), 3);
    // Switch to term: above everything issued in either mode.
    kit::config_set(&mut con, "spacelock.token-mode", "term");
    let next = kit::token_floor(&mut con);
    assert!(next >= reply);
    assert_eq!(cycle(&mut con, "cm:fresh"), next);
    assert_eq!(cycle(&mut con, "cm:a"), next);
    assert_eq!(cycle(&mut con, "cm:c"), next.max(floor + 5_002));
}

#[kit::test]
fn config_set_counter_gives_fence_plus_one_and_back_to_term_never_goes_backwards() {
    let server = Server::new();
    let mut con = server.conn();
    let t1 = cycle(&mut con, "cs:a");
    let t2 = cycle(&mut con, "cs:a");
    assert_eq!(t2, t1 + 1);
    for mode in ["counter", "term"] {
        kit::config_set(&mut con, "spacelock.token-mode", mode);
        assert_eq!(
            kit::info_text(&mut con, "spacelock", "spacelock_token_mode").as_deref(),
            Some(mode)
        );
        if mode == "counter" {
            // fence + 1 per name: the same as term mode while the fence key
            // is there, a plain counter for a fresh name or a lost one.
            assert_eq!(cycle(&mut con, "cs:a"), t2 + 1);
            assert_eq!(cycle(&mut con, "cs:fresh"), 1);
            let _: i64 = redis::cmd("DEL")
                .arg(fence_key(&mut con, "cs:a"))
                .query(&mut con)
                .unwrap();
            assert_eq!(cycle(&mut con, "cs:a"), 1, "counter mode forgets");
        } else {
            // Back to term: above every token of the name, in either mode.
            let t = cycle(&mut con, "cs:fresh");
            assert_eq!(t, t1, "the term's floor");
            assert_eq!(cycle(&mut con, "cs:a"), t2 + 2);
        }
    }
}

// ---------------------------------------------------------------------------
// SPACELOCK.CHECK

/// A stale holder (its lease expired, the lock re-granted) and the current
/// one on `con`: (stale token, current token).
fn stale_and_current(con: &mut Connection, key: &str) -> (i64, i64) {
    let stale = acquire(&mut *con, key, "stale", 50).unwrap();
    until_gone(con, key);
    let current = acquire(&mut *con, key, "current", 600_000).unwrap();
    assert!(current > stale);
    (stale, current)
}

#[kit::test]
fn check_rejects_a_stale_holder_and_accepts_the_current_one() {
    let server = Server::new();
    let mut con = server.conn();
    let (stale, current) = stale_and_current(&mut con, "ck:lock");
    let (passed, failed) = (
        kit::stat(&mut con, "checks_passed"),
        kit::stat(&mut con, "checks_failed"),
    );
    assert_eq!(check(&mut con, "ck:lock", "stale", stale), 0);
    assert_eq!(check(&mut con, "ck:lock", "current", current), 1);
    // Each half of the pair matters.
    assert_eq!(check(&mut con, "ck:lock", "current", stale), 0);
    assert_eq!(check(&mut con, "ck:lock", "stale", current), 0);
    assert_eq!(check(&mut con, "ck:lock", "current", current + 1), 0);
    assert_eq!(check(&mut con, "ck:free", "current", current), 0);
    assert_eq!(kit::stat(&mut con, "checks_passed"), passed + 1);
    assert_eq!(kit::stat(&mut con, "checks_failed"), failed + 5);
    // Released: nobody passes.
    assert_eq!(release(&mut con, "ck:lock", "current"), 1);
    assert_eq!(check(&mut con, "ck:lock", "current", current), 0);
}

#[kit::test]
fn check_guards_a_write_from_lua_and_from_a_function() {
    let server = Server::new();
    let mut con = server.conn();
    let (stale, current) = stale_and_current(&mut con, "fw:lock");
    let run = |con: &mut Connection, owner: &str, token: i64, value: &str| -> i64 {
        fenced_write(con, "fw:lock", "fw:data", owner, token, value).unwrap()
    };
    assert_eq!(run(&mut con, "stale", stale, "from-stale"), 0);
    assert_eq!(get(&mut con, "fw:data"), None, "the stale write is refused");
    assert_eq!(run(&mut con, "current", current, "from-current"), 1);
    assert_eq!(get(&mut con, "fw:data").as_deref(), Some("from-current"));

    // The same as a Function (Redis 7.0+, Valkey).
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(FENCED_LIBRARY)
        .query(&mut con)
        .unwrap();
    let fcall = |con: &mut Connection, owner: &str, token: i64, value: &str| -> i64 {
        redis::cmd("FCALL")
            .arg("fenced_write")
            .arg(2)
            .arg("fw:lock")
            .arg("fw:fdata")
            .arg(owner)
            .arg(token.to_string())
            .arg(value)
            .query(con)
            .unwrap()
    };
    assert_eq!(fcall(&mut con, "stale", stale, "from-stale"), 0);
    assert_eq!(get(&mut con, "fw:fdata"), None);
    assert_eq!(fcall(&mut con, "current", current, "from-current"), 1);
    assert_eq!(get(&mut con, "fw:fdata").as_deref(), Some("from-current"));
}

/// Lua keeps integer replies as doubles, and JavaScript reads them as
/// numbers: a term token must stay below 2^53 to survive either. (With a
/// floor of ms × 10^6 it did not: a script that took the token from ACQUIRE
/// stored "1.795…e+18" and CHECK refused it.) A script that acquires, uses
/// and checks the token as a Lua number gets it exactly.
#[kit::test]
fn lua_numbers_hold_term_tokens_exactly() {
    let server = Server::new();
    let mut con = server.conn();
    let floor = cycle(&mut con, "ln:lock");
    assert!(floor < 1_i64 << 53, "{floor}");
    let script = redis::Script::new(
        r#"local t = redis.call('SPACELOCK.ACQUIRE', KEYS[1], 'o', 60000)
           redis.call('SET', KEYS[2], t)
           return {t, redis.call('SPACELOCK.CHECK', KEYS[1], 'o', t)}"#,
    );
    let (token, checked): (i64, i64) = script
        .key("ln:lock")
        .key("ln:data")
        .invoke(&mut con)
        .unwrap();
    assert_eq!(token, floor + 1);
    assert_eq!(checked, 1, "the Lua number is the exact token");
    assert_eq!(get(&mut con, "ln:data"), Some(token.to_string()));
    assert_eq!(kit::fence_value(&mut con, "ln:lock"), Some(token));
    // The token as a string (ARGV), as the fenced-write recipe passes it.
    let wrote: i64 = fenced_write(&mut con, "ln:lock", "ln:data", "o", token, "v").unwrap();
    assert_eq!(wrote, 1);
}

#[kit::test]
fn check_on_a_replica_reads_the_replicated_lock() {
    let primary = Server::new();
    let replica = ServerBuilder::new().replica_of(&primary).start();
    let mut r = replica.conn();
    kit::until_link_up(&mut r, &replica);
    let mut p = primary.conn();
    let (stale, current) = stale_and_current(&mut p, "rep:lock");
    kit::sync_replicas(&mut p, 1);
    assert_eq!(check(&mut r, "rep:lock", "current", current), 1);
    assert_eq!(check(&mut r, "rep:lock", "stale", stale), 0);
    // Read-only: a replica serves CHECK and INFO, never a grant.
    let e = error_of(&mut r, &["SPACELOCK.ACQUIRE", "rep:other", "o", "1000"]);
    assert!(e.starts_with("READONLY"), "{e}");
    // And the fenced write script runs there as far as CHECK (its SET is
    // refused on a read-only replica).
    let e = fenced_write::<Value>(&mut r, "rep:lock", "rep:data", "current", current, "v");
    assert!(
        matches!(&e, Err(err) if err.to_string().contains("READONLY") || err.to_string().contains("read only")),
        "{e:?}"
    );
    let zero: i64 = fenced_write(&mut r, "rep:lock", "rep:data", "stale", stale, "v").unwrap();
    assert_eq!(zero, 0);
}

#[kit::test]
fn check_with_bad_input_is_an_error_and_changes_nothing() {
    let server = Server::new();
    let mut con = server.conn();
    let t = acquire(&mut con, "bad:lock", "o", 600_000).unwrap();
    let _: () = redis::cmd("RPUSH")
        .arg("bad:list")
        .arg("x")
        .query(&mut con)
        .unwrap();
    // A lock whose fence key is a hash, and one whose fence key is garbage.
    set(&mut con, "bad:wrongfence", "o");
    let wf = fence_key(&mut con, "bad:wrongfence");
    let _: () = redis::cmd("HSET")
        .arg(&wf)
        .arg("f")
        .arg("v")
        .query(&mut con)
        .unwrap();
    set(&mut con, "bad:corrupt", "o");
    let cf = fence_key(&mut con, "bad:corrupt");
    set(&mut con, &cf, "abc");
    let long_owner = "x".repeat(257);
    let token = t.to_string();
    let name = "SPACELOCK.CHECK";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![name], "ERR wrong number of arguments"),
        (vec![name, "bad:lock"], "ERR wrong number"),
        (vec![name, "bad:lock", "o"], "ERR wrong number"),
        (vec![name, "bad:lock", "o", &token, "x"], "ERR wrong number"),
        (vec![name, "bad:lock", "o", "x"], "ERR invalid token"),
        (vec![name, "bad:lock", "o", "1.5"], "ERR invalid token"),
        (vec![name, "bad:lock", "o", ""], "ERR invalid token"),
        (vec![name, "bad:lock", "o", "-1"], "ERR invalid token"),
        (vec![name, "bad:lock", "o", " 1"], "ERR invalid token"),
        (
            vec![name, "bad:lock", "o", "99999999999999999999"],
            "ERR invalid token",
        ),
        (vec![name, "bad:lock", "", &token], "ERR invalid owner"),
        (
            vec![name, "bad:lock", &long_owner, &token],
            "ERR invalid owner",
        ),
        (vec![name, "bad:list", "o", "1"], "WRONGTYPE"),
        (vec![name, "bad:wrongfence", "o", "1"], "WRONGTYPE"),
        (vec![name, "bad:corrupt", "o", "1"], "ERR"),
    ];
    let before = snapshot(&mut con);
    let counted = (
        kit::stat(&mut con, "checks_passed"),
        kit::stat(&mut con, "checks_failed"),
    );
    for (argv, want) in &cases {
        let got = error_of(&mut con, argv);
        assert!(
            got.starts_with(want),
            "{argv:?}: got {got:?}, want prefix {want:?}"
        );
        assert_eq!(snapshot(&mut con), before, "{argv:?} changed the keyspace");
    }
    assert_eq!(
        (
            kit::stat(&mut con, "checks_passed"),
            kit::stat(&mut con, "checks_failed"),
        ),
        counted,
        "errors count as no check"
    );
    // Token 0 is a valid integer (never issued): 0, not an error.
    assert_eq!(check(&mut con, "bad:lock", "o", 0), 0);
    assert_eq!(check(&mut con, "bad:lock", "o", t), 1);
}

#[kit::test]
fn check_in_a_cluster_script_with_a_data_key_in_the_lock_slot() {
    let cluster = Cluster::start(3);
    let mut any = cluster.nodes[0].conn();
    let lock = "{job-7}:lock";
    let data = "{job-7}:data";
    let node = cluster.owner_of(kit::keyslot(&mut any, lock));
    let mut con = cluster.nodes[node].conn();
    let (stale, current) = stale_and_current(&mut con, lock);
    let wrote: i64 = fenced_write(&mut con, lock, data, "stale", stale, "old").unwrap();
    assert_eq!(wrote, 0);
    let wrote: i64 = fenced_write(&mut con, lock, data, "current", current, "new").unwrap();
    assert_eq!(wrote, 1);
    assert_eq!(get(&mut con, data).as_deref(), Some("new"));
    // The fence key the script reads lives in the same slot (no CROSSSLOT);
    // a data key outside it is refused by the cluster, as any script is.
    let e = fenced_write::<Value>(&mut con, lock, "elsewhere:data", "current", current, "x");
    assert!(
        matches!(&e, Err(err) if err.to_string().to_lowercase().contains("crossslot")),
        "{e:?}"
    );
    // Through a cluster client, routed by the keys.
    let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let mut cc = client.get_connection().unwrap();
    let wrote: i64 = fenced_write(&mut cc, lock, data, "current", current, "routed").unwrap();
    assert_eq!(wrote, 1);
    assert_eq!(get(&mut con, data).as_deref(), Some("routed"));
}

// ---------------------------------------------------------------------------
// A replica without the module; the token's range

#[kit::test]
fn replica_without_module_ends_identical_after_terms_and_newterm() {
    let primary = Server::new();
    let replica = ServerBuilder::new()
        .without_module()
        .replica_of(&primary)
        .start();
    let mut r = replica.conn();
    kit::until_link_up(&mut r, &replica);
    let mut p = primary.conn();
    let mut last = Vec::new();
    for round in 0..4 {
        for name in ["rr:a", "rr:b", "{rr}:c"] {
            last.push((name, cycle(&mut p, name)));
        }
        acquire(&mut p, format!("rr:held:{round}"), "h", 600_000).unwrap();
        set(&mut p, format!("data:{round}"), round);
        let offset = kit::info_field(&mut p, "replication", "master_repl_offset");
        kit::new_term(&mut p);
        assert_eq!(
            kit::info_field(&mut p, "replication", "master_repl_offset"),
            offset,
            "NEWTERM propagates nothing"
        );
        if round == 2 {
            let _: i64 = redis::cmd("DEL")
                .arg(fence_key(&mut p, "rr:a"))
                .query(&mut p)
                .unwrap();
        }
    }
    kit::sync_replicas(&mut p, 1);
    let want = snapshot(&mut p);
    let got = snapshot(&mut r);
    assert_eq!(got, want, "the replica without the module differs");
    assert!(
        !replica.log().contains("unknown command"),
        "{}",
        replica.log()
    );
    // GET of a fence key, on either side, shows the last token of its name.
    for name in ["rr:a", "rr:b", "{rr}:c"] {
        let (_, t) = last.iter().rev().find(|(n, _)| *n == name).unwrap();
        let fence = fence_key(&mut p, name);
        let on_replica: String = redis::cmd("GET").arg(&fence).query(&mut r).unwrap();
        assert_eq!(on_replica, t.to_string(), "{name}");
        // Tokens fit i64 and u64 (a client may read either).
        assert!(*t > 0 && *t < i64::MAX);
        assert_eq!(
            on_replica.parse::<u64>().unwrap(),
            u64::try_from(*t).unwrap()
        );
        assert_eq!(on_replica.parse::<i64>().unwrap(), *t);
    }
}

kit::main!();
