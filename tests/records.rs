//! The module recognises its grants by its own record, not by the fence
//! key's current value, and one lock's fence value never harms another.
//!
//! Anyone can write a fence key (`SET`, `INCR`, `DEL`, a `RESTORE`, an
//! eviction). Each case here broke a written promise when the module read
//! the fence key to decide whether a grant still stood: a handoff in one
//! packet with a fence write told the waiter nil while the lock stayed in
//! its name; a deleted or evicted fence key made CHECK refuse the rightful
//! holder; one fence value near 2^63 exhausted every lock on the server.
use spacelock_testkit as kit;

use std::thread::{self, JoinHandle};
use std::time::Duration;

use kit::{acquire, check, one_packet, release, until_waiting, wait_until, Server, ServerBuilder};
use redis::{Connection, Value};

fn conn(server: &Server) -> Connection {
    let con = server.conn();
    con.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    con
}

fn fence_key(con: &mut Connection, key: &str) -> String {
    redis::cmd("SPACELOCK.FENCEKEY")
        .arg(key)
        .query(con)
        .unwrap()
}

fn get(con: &mut Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(con).unwrap()
}

/// `SPACELOCK.INFO key`'s token, `None` when free.
fn info_token(con: &mut Connection, key: &str) -> Option<i64> {
    let v: Value = redis::cmd("SPACELOCK.INFO").arg(key).query(con).unwrap();
    let Value::Array(items) = v else {
        return None;
    };
    match items[5] {
        Value::Int(t) => Some(t),
        ref other => panic!("token: {other:?}"),
    }
}

/// A client blocked in `ACQUIRE key owner 60000 WAIT 10000`, and its id.
fn waiter(
    server: &Server,
    key: &str,
    owner: &str,
) -> (i64, JoinHandle<redis::RedisResult<Option<i64>>>) {
    let mut con = conn(server);
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut con).unwrap();
    let (key, owner) = (key.to_string(), owner.to_string());
    let handle = thread::spawn(move || kit::acquire_wait(&mut con, &key, &owner, 60_000, 10_000));
    (id, handle)
}

/// The fence writes an operator or a script may make.
fn fence_writes(fence: &str) -> [redis::Cmd; 3] {
    let mut del = redis::cmd("DEL");
    del.arg(fence);
    let mut set = redis::cmd("SET");
    set.arg(fence).arg(7);
    let mut incr = redis::cmd("INCR");
    incr.arg(fence);
    [del, set, incr]
}

#[kit::test]
fn a_fence_write_in_the_same_packet_as_a_handoff_leaves_the_waiter_its_grant() {
    let server = Server::new();
    let mut con = conn(&server);
    let fence = fence_key(&mut con, "k");
    for write in fence_writes(&fence) {
        acquire(&mut con, "k", "h", 60_000).unwrap();
        let (_, w) = waiter(&server, "k", "w");
        until_waiting(&mut con, 1);
        // The handoff and the write are read together: one iteration.
        let mut pipe = redis::pipe();
        pipe.cmd("SPACELOCK.RELEASE")
            .arg("k")
            .arg("h")
            .add_command(write)
            .ignore();
        let (released,): (i64,) = pipe.query(&mut con).unwrap();
        assert_eq!(released, 1);
        let token = w.join().unwrap().unwrap().expect("the waiter got the lock");
        // What it was told agrees with what is held in its name.
        assert_eq!(get(&mut con, "k").as_deref(), Some("w"));
        assert_eq!(check(&mut con, "k", "w", token), 1);
        assert_eq!(info_token(&mut con, "k"), Some(token));
        assert_eq!(release(&mut con, "k", "w"), 1);
    }
    assert_eq!(kit::stat(&mut con, "wait_grants_lost"), 0);
}

#[kit::test]
fn a_handoff_to_a_client_that_closes_in_the_same_packet_as_a_fence_write_leaves_nothing_held() {
    let server = Server::new();
    let mut con = conn(&server);
    let fence = fence_key(&mut con, "k");
    for (round, write) in fence_writes(&fence).into_iter().enumerate() {
        acquire(&mut con, "k", "h", 60_000).unwrap();
        let (id, w) = waiter(&server, "k", "w");
        until_waiting(&mut con, 1);
        let mut pipe = redis::pipe();
        pipe.cmd("SPACELOCK.RELEASE")
            .arg("k")
            .arg("h")
            .add_command(write)
            .ignore()
            .cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .ignore();
        let (released,): (i64,) = pipe.query(&mut con).unwrap();
        assert_eq!(released, 1);
        assert!(
            w.join().unwrap().is_err(),
            "the waiter's connection was closed"
        );
        // Nothing is held in the name of a client that got no reply.
        assert!(
            wait_until(Duration::from_secs(2), || get(&mut con, "k").is_none()),
            "the grant was not undone: {:?}",
            get(&mut con, "k")
        );
        // The grant is written at the end of the iteration, after the
        // kill: there was nothing to undo.
        assert_eq!(
            kit::stat(&mut con, "wait_grants_undone"),
            0,
            "round {round}"
        );
        // The next grant is above every earlier one.
        let next = acquire(&mut con, "k", "n", 60_000).unwrap();
        assert_eq!(check(&mut con, "k", "n", next), 1);
        assert_eq!(release(&mut con, "k", "n"), 1);
    }
}

#[kit::test]
fn check_and_info_survive_a_deleted_or_rewritten_fence_key() {
    let server = Server::new();
    let mut con = conn(&server);
    let fence = fence_key(&mut con, "k");
    let token = acquire(&mut con, "k", "o", 60_000).unwrap();
    for write in fence_writes(&fence) {
        let _: Value = write.query(&mut con).unwrap();
        assert_eq!(check(&mut con, "k", "o", token), 1, "the rightful holder");
        assert_eq!(check(&mut con, "k", "o", 7), 0, "a token never granted");
        assert_eq!(check(&mut con, "k", "other", token), 0);
        assert_eq!(info_token(&mut con, "k"), Some(token));
    }
    // The fenced write from Lua goes through for the holder.
    let wrote: i64 = redis::cmd("EVAL")
        .arg("if redis.call('SPACELOCK.CHECK', KEYS[1], ARGV[1], ARGV[2]) == 1 then return 1 end return 0")
        .arg(1)
        .arg("k")
        .arg("o")
        .arg(token.to_string())
        .query(&mut con)
        .unwrap();
    assert_eq!(wrote, 1);
    // The next grant is still above it.
    assert_eq!(release(&mut con, "k", "o"), 1);
    assert!(acquire(&mut con, "k", "o", 60_000).unwrap() > token);
}

#[kit::test]
fn check_survives_the_eviction_of_a_held_locks_fence_key() {
    // allkeys-lru picks the fence key (REFRESH touches only the lock key).
    let server = ServerBuilder::new()
        .arg("maxmemory-policy", "allkeys-lru")
        .start();
    let mut con = conn(&server);
    // LRU sampling now and then evicts the lock key along with its fence
    // key: then the round checks nothing, and another name tries again.
    for round in 0..10 {
        let name = format!("held:{round}");
        let token = acquire(&mut con, &name, "o", 600_000).unwrap();
        let fence = fence_key(&mut con, &name);
        let used = kit::info_field(&mut con, "memory", "used_memory");
        kit::config_set(&mut con, "maxmemory", used + 2_000_000);
        let filler = vec![b'x'; 20_000];
        let mut i = 0;
        while kit::exists(&mut con, &fence) {
            let _: i64 = redis::cmd("SPACELOCK.REFRESH")
                .arg(&name)
                .arg("o")
                .arg(600_000)
                .query(&mut con)
                .unwrap();
            let _: () = redis::cmd("SET")
                .arg(format!("fill:{round}:{i}"))
                .arg(&filler[..])
                .query(&mut con)
                .unwrap();
            i += 1;
            assert!(i < 20_000, "the fence key was never evicted");
        }
        kit::config_set(&mut con, "maxmemory", 0);
        if kit::exists(&mut con, &name) {
            assert_eq!(check(&mut con, &name, "o", token), 1);
            assert_eq!(info_token(&mut con, &name), Some(token));
            return;
        }
        let _: () = redis::cmd("FLUSHALL").query(&mut con).unwrap();
    }
    kit::skip("the lock key was evicted with its fence key in every round (LRU sampling): nothing checked");
}

#[kit::test]
fn one_hostile_fence_value_is_that_names_problem_alone() {
    let server = Server::new();
    let mut con = conn(&server);
    let floor = kit::token_floor(&mut con);
    // A fence key near 2^63 (by hand, a RESTORE from elsewhere): one grant,
    // then that name, and only that name, is exhausted.
    let top = fence_key(&mut con, "top");
    let _: () = redis::cmd("SET")
        .arg(&top)
        .arg(i64::MAX - 1)
        .query(&mut con)
        .unwrap();
    assert_eq!(acquire(&mut con, "top", "o", 1000), Some(i64::MAX));
    assert_eq!(release(&mut con, "top", "o"), 1);
    let e = kit::error_of(&mut con, &["SPACELOCK.ACQUIRE", "top", "o", "1000"]);
    assert!(e.contains("exhausted"), "{e}");
    // A fence key at 2^60 leaves the exact range of a double for its name.
    let big = fence_key(&mut con, "big");
    let _: () = redis::cmd("SET")
        .arg(&big)
        .arg(1_i64 << 60)
        .query(&mut con)
        .unwrap();
    assert_eq!(acquire(&mut con, "big", "o", 1000), Some((1 << 60) + 1));
    // Every other name: fresh names, held locks, waiters, all at the floor,
    // far below 2^53, without a NEWTERM.
    let held = acquire(&mut con, "other", "h", 60_000).unwrap();
    assert!(held < floor + 10, "{held}");
    let (_, w) = waiter(&server, "other", "w");
    until_waiting(&mut con, 1);
    assert_eq!(release(&mut con, "other", "h"), 1);
    let handed = w.join().unwrap().unwrap().unwrap();
    assert_eq!(handed, held + 1);
    for i in 0..100 {
        let t = acquire(&mut con, format!("fresh:{i}"), "o", 1000).unwrap();
        assert!(t < floor + 10 && t < 1 << 53, "fresh:{i}: {t}");
    }
}

#[kit::test]
fn check_owner_zero_is_a_lock_taken_without_a_token() {
    // The existing Lua-based service takes locks with plain SET NX: no
    // fence key, no token. CHECK owner 0 then answers 1 while that owner
    // holds it, which is how a fenced script tells "held by this owner,
    // granted by the old code" apart.
    let server = Server::new();
    let mut con = conn(&server);
    let _: () = redis::cmd("SET")
        .arg("old")
        .arg("instance-1")
        .arg("NX")
        .arg("PX")
        .arg(60_000)
        .query(&mut con)
        .unwrap();
    assert_eq!(check(&mut con, "old", "instance-1", 0), 1);
    assert_eq!(check(&mut con, "old", "instance-2", 0), 0);
    assert_eq!(info_token(&mut con, "old"), Some(0));
    // Once the module has granted the name, its fence key holds a token, and
    // a later SET NX lock of the same owner carries that last token.
    let _: i64 = redis::cmd("DEL").arg("old").query(&mut con).unwrap();
    let t = acquire(&mut con, "old", "instance-1", 60_000).unwrap();
    assert_eq!(release(&mut con, "old", "instance-1"), 1);
    let _: () = redis::cmd("SET")
        .arg("old")
        .arg("instance-1")
        .arg("NX")
        .arg("PX")
        .arg(60_000)
        .query(&mut con)
        .unwrap();
    assert_eq!(check(&mut con, "old", "instance-1", t), 1);
    assert_eq!(check(&mut con, "old", "instance-1", 0), 0);
}

kit::main!();

/// `SPACELOCK.REFRESH key owner 60000`.
fn refresh(con: &mut Connection, key: &str, owner: &str) -> i64 {
    redis::cmd("SPACELOCK.REFRESH")
        .arg(key)
        .arg(owner)
        .arg(60_000)
        .query(con)
        .unwrap()
}

#[kit::test]
fn a_rename_or_move_in_the_same_packet_as_a_handoff_finds_the_key_gone() {
    let server = Server::new();
    let mut con = conn(&server);
    for mover in [&["RENAME", "k", "k2"][..], &["MOVE", "k", "1"][..]] {
        let held = acquire(&mut con, "k", "h", 60_000).unwrap();
        let (_, w) = waiter(&server, "k", "w");
        until_waiting(&mut con, 1);
        let replies = one_packet(&mut con, &[&["SPACELOCK.RELEASE", "k", "h"], mover]);
        assert_eq!(replies[0].as_ref().unwrap(), &Value::Int(1), "{replies:?}");
        // The RELEASE deleted the key; the waiter's grant is written at the
        // end of the iteration, after the mover ran.
        match mover[0] {
            "RENAME" => assert!(replies[1].is_err(), "{replies:?}"),
            _ => assert_eq!(replies[1].as_ref().unwrap(), &Value::Int(0)),
        }
        let token = w.join().unwrap().unwrap().expect("granted");
        assert!(token > held);
        assert_eq!(get(&mut con, "k").as_deref(), Some("w"));
        assert_eq!(check(&mut con, "k", "w", token), 1);
        assert_eq!(release(&mut con, "k", "w"), 1);
    }
    assert_eq!(get(&mut con, "k2"), None);
}

#[kit::test]
fn a_key_renamed_onto_a_lock_in_the_same_packet_as_a_handoff_keeps_the_waiter_waiting() {
    let server = Server::new();
    let mut con = conn(&server);
    let held = acquire(&mut con, "k", "h", 60_000).unwrap();
    let (_, w) = waiter(&server, "k", "w");
    until_waiting(&mut con, 1);
    let replies = one_packet(
        &mut con,
        &[
            &["SPACELOCK.RELEASE", "k", "h"],
            &["SET", "x", "v", "PX", "300"],
            &["RENAME", "x", "k"],
        ],
    );
    assert!(replies.iter().all(|r| r.is_ok()), "{replies:?}");
    // The key holds another value, as after a plain SET: the waiter waits
    // for it to go, and nothing is written in its name meanwhile.
    assert_eq!(get(&mut con, "k").as_deref(), Some("v"));
    assert_eq!(kit::waiting_clients(&mut con), 1);
    let token = w.join().unwrap().unwrap().expect("granted once v expired");
    assert!(token > held);
    assert_eq!(get(&mut con, "k").as_deref(), Some("w"));
    assert_eq!(check(&mut con, "k", "w", token), 1);
    assert_eq!(kit::stat(&mut con, "wait_grants_lost"), 0);
}

#[kit::test]
fn swapdb_in_the_same_packet_as_a_handoff_grants_in_the_waiters_db_once_it_is_free() {
    let server = Server::new();
    let mut con = conn(&server);
    let mut db1 = conn(&server);
    let _: () = redis::cmd("SELECT").arg(1).query(&mut db1).unwrap();
    let held = acquire(&mut con, "k", "h", 60_000).unwrap();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("z")
        .arg("PX")
        .arg(300)
        .query(&mut db1)
        .unwrap();
    let (_, w) = waiter(&server, "k", "w");
    until_waiting(&mut con, 1);
    let replies = one_packet(
        &mut con,
        &[&["SPACELOCK.RELEASE", "k", "h"], &["SWAPDB", "0", "1"]],
    );
    assert!(replies.iter().all(|r| r.is_ok()), "{replies:?}");
    // The queue belongs to db 0, which now holds db 1's `k`: the waiter
    // waits for it, then is granted there.
    assert_eq!(get(&mut con, "k").as_deref(), Some("z"));
    let token = w.join().unwrap().unwrap().expect("granted once z expired");
    assert!(token > held);
    assert_eq!(get(&mut con, "k").as_deref(), Some("w"));
    assert_eq!(check(&mut con, "k", "w", token), 1);
    assert_eq!(get(&mut db1, "k"), None);
}

#[kit::test]
fn a_renamed_lock_is_a_lease_without_a_token_under_its_new_name() {
    let server = Server::new();
    let mut con = conn(&server);
    let token = acquire(&mut con, "k", "h", 60_000).unwrap();
    let _: () = redis::cmd("RENAME")
        .arg("k")
        .arg("k2")
        .query(&mut con)
        .unwrap();
    // The lock left its name: its holder has lost it there, and the name
    // is free for the next grant, whose token is above the holder's.
    assert_eq!(check(&mut con, "k", "h", token), 0);
    assert_eq!(refresh(&mut con, "k", "h"), 0);
    // Under the new name the owner still holds a lease (REFRESH and RELEASE
    // work for it, ACQUIRE by others is refused), but no token was issued
    // for that name: CHECK and INFO know none.
    assert_eq!(check(&mut con, "k2", "h", token), 0);
    assert_eq!(info_token(&mut con, "k2"), Some(0));
    assert_eq!(acquire(&mut con, "k2", "o", 1000), None);
    assert_eq!(refresh(&mut con, "k2", "h"), 1);
    let next = acquire(&mut con, "k", "o", 60_000).unwrap();
    assert!(next > token);
    assert_eq!(release(&mut con, "k2", "h"), 1);
    assert_eq!(get(&mut con, "k2"), None);
}
