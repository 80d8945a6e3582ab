//! `MODULE UNLOAD` against real servers: refused by default (the reply, the
//! log line, the module and its locks untouched, even with commands
//! pipelined behind it); with `spacelock.allow-unload yes`, refused while
//! anything still uses spacelock (a waiter, a queued transaction, a blocked
//! connection with a pipeline behind it, a connection whose last command was
//! ours, an ACL rule naming our commands, tokens far ahead of the clock);
//! and, once nothing does, a clean unload after which the commands are
//! unknown, the server serves on, and a reload issues tokens above every
//! token of the unloaded module, also when UNLOAD and LOAD share a packet.
//!
//! Runs against whatever `$SPACELOCK_SERVER` is (see `make test-compat`).

use spacelock_testkit as kit;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use kit::{
    acquire, call_args as call, err_args as err, is_valkey, ok_args as ok, one_packet as pipeline,
    until_waiting, version_of, Server, ServerBuilder,
};
use redis::{Connection, Value};

/// What every supported server replies when the module's unload callback
/// refuses (the server has no room for the module's own reason, which goes
/// to the log).
const REFUSED: &str = "ERR Error unloading module: operation not possible.";

/// The module's log line when `spacelock.allow-unload` is `no`.
const NOT_ALLOWED_LOG: &str = "spacelock: refusing MODULE UNLOAD: spacelock holds lease locks and WAIT queues and does not unload by default; to remove it, restart the server without its loadmodule line, or CONFIG SET spacelock.allow-unload yes and unload while no client uses it";

/// A server with the module, `MODULE LOAD`/`UNLOAD` enabled, and
/// `spacelock.allow-unload` as given.
fn server(allow_unload: bool) -> Server {
    let builder = ServerBuilder::new().arg("enable-module-command", "yes");
    if allow_unload {
        builder.module_args(&["allow-unload", "yes"]).start()
    } else {
        builder.start()
    }
}

fn module() -> String {
    kit::module_path().to_str().unwrap().to_string()
}

fn unload(con: &mut Connection) -> Result<Value, String> {
    call(con, &["MODULE", "UNLOAD", "spacelock"])
}

/// Whether `MODULE LIST` lists spacelock.
fn loaded(con: &mut Connection) -> bool {
    format!("{:?}", ok(con, &["MODULE", "LIST"])).contains("spacelock")
}

/// The server is up and answers, and its log shows no crash.
fn assert_alive(server: &mut Server, con: &mut Connection) {
    assert_eq!(ok(con, &["PING"]), Value::SimpleString("PONG".into()));
    assert!(server.is_alive(), "server died:\n{}", server.log());
    let log = server.log();
    for crash in ["crashed by signal", "BUG REPORT", "ASSERTION FAILED"] {
        assert!(!log.contains(crash), "server crashed ({crash}):\n{log}");
    }
}

/// The number of module log lines refusing the unload for `why`.
fn refusals(server: &Server, why: &str) -> usize {
    server
        .log()
        .lines()
        .filter(|l| l.contains("spacelock: refusing MODULE UNLOAD: ") && l.contains(why))
        .count()
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        other => panic!("not an integer: {other:?}"),
    }
}

/// Whether the server looks pipelined commands up before it runs the ones
/// ahead of them (Valkey 9): a spacelock command pipelined after an
/// allowed `MODULE UNLOAD` then runs the unloaded code (see
/// docs/operations.md), so the tests send nothing after an allowed unload
/// in the same pipeline there.
fn looks_up_ahead(con: &mut Connection) -> bool {
    is_valkey(con) && version_of(con).0 >= 9
}

#[kit::test]
fn unload_is_refused_by_default_even_with_commands_pipelined_behind_it() {
    let mut server = server(false);
    let mut con = server.conn();
    let token = acquire(&mut con, "held", "o", 60_000).unwrap();

    // UNLOAD, then a spacelock command in the same packet (what crashed
    // Valkey 9.1 when the unload went through): refused, and the command
    // runs against the module still loaded.
    let replies = pipeline(
        &mut con,
        &[
            &["MODULE", "UNLOAD", "spacelock"],
            &["SPACELOCK.CHECK", "held", "o", &token.to_string()],
            &["PING"],
        ],
    );
    assert_eq!(replies[0], Err(REFUSED.to_string()), "{replies:?}");
    assert_eq!(replies[1], Ok(Value::Int(1)), "{replies:?}");
    assert_eq!(replies[2], Ok(Value::SimpleString("PONG".into())));
    // With a LOAD between: the LOAD fails (the module is still loaded).
    let replies = pipeline(
        &mut con,
        &[
            &["MODULE", "UNLOAD", "spacelock"],
            &["MODULE", "LOAD", &module()],
            &["SPACELOCK.ACQUIRE", "other", "o", "60000"],
        ],
    );
    assert_eq!(replies[0], Err(REFUSED.to_string()), "{replies:?}");
    assert!(replies[1].is_err(), "{replies:?}");
    let other = int(replies[2].as_ref().unwrap());
    assert!(other >= kit::token_floor(&mut con), "{other}");
    // Alone, from another connection whose last command was ours: the same.
    let mut second = server.conn();
    assert_eq!(acquire(&mut second, "held", "x", 1000), None);
    assert_eq!(unload(&mut second), Err(REFUSED.to_string()));

    // The default, which CONFIG SET could change.
    let config: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("spacelock.allow-unload")
        .query(&mut con)
        .unwrap();
    assert_eq!(config, ["spacelock.allow-unload", "no"]);
    // The next command works, the held lock is intact, the module listed.
    assert_eq!(kit::check(&mut con, "held", "o", token), 1);
    assert_eq!(kit::release(&mut con, "held", "o"), 1);
    assert!(loaded(&mut con));
    assert_alive(&mut server, &mut con);
    // One warning per refusal, saying why and how to remove the module.
    assert_eq!(
        refusals(
            &server,
            NOT_ALLOWED_LOG.trim_start_matches("spacelock: refusing MODULE UNLOAD: ")
        ),
        3,
        "{}",
        server.log()
    );
    assert!(server.log().contains(NOT_ALLOWED_LOG), "{}", server.log());
}

#[kit::test]
fn allowed_unload_is_refused_while_a_client_waits() {
    let mut server = server(true);
    let mut con = server.conn();
    let token = acquire(&mut con, "k", "holder", 60_000).unwrap();
    let mut waiter_con = server.conn();
    waiter_con
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let waiter = thread::spawn(move || {
        let got = kit::acquire_wait(&mut waiter_con, "k", "waiter", 60_000, 20_000);
        (got, waiter_con)
    });
    until_waiting(&mut con, 1);
    // The server refuses first (the module has a blocked client), with its
    // own reason; the waiter stays queued.
    let e = unload(&mut con).unwrap_err();
    assert!(e.starts_with("ERR Error unloading module"), "{e}");
    assert_eq!(kit::waiting_clients(&mut con), 1);
    assert!(loaded(&mut con));
    // The holder leaves: the waiter is handed the lock.
    assert_eq!(kit::release(&mut con, "k", "holder"), 1);
    let (got, mut waiter_con) = waiter.join().unwrap();
    let handed = got.unwrap().unwrap();
    assert!(handed > token, "{handed} after {token}");
    // Its connection's last command was ours: still refused, by the module
    // (once the handoff's last timer has fired: until then the server
    // refuses on its own).
    assert!(
        kit::wait_until(Duration::from_secs(5), || {
            assert_eq!(unload(&mut con), Err(REFUSED.to_string()));
            refusals(&server, "last ran a spacelock command") > 0
        }),
        "{}",
        server.log()
    );
    assert_eq!(kit::release(&mut waiter_con, "k", "waiter"), 1);
    ok(&mut waiter_con, &["PING"]);
    // Nothing waits and no connection points at our commands: it unloads.
    assert!(
        kit::wait_until(Duration::from_secs(5), || unload(&mut con).is_ok()),
        "{}",
        server.log()
    );
    assert!(!loaded(&mut con));
    // The keyspace events the WAIT subscribed to reach no unloaded code.
    ok(&mut con, &["SET", "gone", "1", "PX", "1"]);
    ok(&mut con, &["SET", "k", "v"]);
    ok(&mut con, &["DEL", "k"]);
    ok(&mut con, &["FLUSHALL"]);
    thread::sleep(Duration::from_millis(50));
    assert_alive(&mut server, &mut con);
}

/// Writes `cmds` to a raw connection in one write (RESP arrays).
fn send_raw(stream: &mut TcpStream, cmds: &[&[&str]]) {
    let mut out = Vec::new();
    for args in cmds {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in *args {
            out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
    }
    stream.write_all(&out).unwrap();
}

/// Reads from `stream` until `want` appears in what was read.
fn read_until(stream: &mut TcpStream, want: &str) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(want) {
        let n = stream.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed; read so far: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[kit::test]
fn allowed_unload_is_refused_while_connections_or_acl_rules_still_use_spacelock() {
    let mut server = server(true);
    let mut con = server.conn();
    acquire(&mut con, "k", "o", 60_000).unwrap();
    ok(&mut con, &["PING"]);

    // A transaction with a spacelock command queued: EXEC would run it.
    let mut tx = server.conn();
    ok(&mut tx, &["MULTI"]);
    assert_eq!(
        ok(&mut tx, &["SPACELOCK.INFO", "k"]),
        Value::SimpleString("QUEUED".into())
    );
    assert_eq!(unload(&mut con), Err(REFUSED.to_string()));
    assert_eq!(
        refusals(&server, "have a transaction with queued commands (MULTI)"),
        1
    );
    let exec = ok(&mut tx, &["EXEC"]);
    assert!(format!("{exec:?}").contains("owner"), "{exec:?}");
    ok(&mut tx, &["PING"]);

    // A blocked connection with a spacelock command pipelined behind it
    // (Valkey 9 has looked that one up already).
    let mut raw = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    send_raw(
        &mut raw,
        &[&["BLPOP", "list", "0"], &["SPACELOCK.INFO", "k"], &["PING"]],
    );
    assert!(kit::wait_until(Duration::from_secs(10), || {
        kit::info_field(&mut con, "clients", "blocked_clients") == 1
    }));
    assert_eq!(unload(&mut con), Err(REFUSED.to_string()));
    assert_eq!(refusals(&server, "are blocked"), 1);
    ok(&mut con, &["LPUSH", "list", "x"]);
    let got = read_until(&mut raw, "+PONG");
    assert!(got.contains("owner"), "SPACELOCK.INFO ran: {got}");
    drop(raw);

    // An ACL rule that names a spacelock command (Valkey 8.1+ refuses it
    // itself, with its own reason).
    ok(
        &mut con,
        &[
            "ACL",
            "SETUSER",
            "app",
            "on",
            "nopass",
            "-@all",
            "+spacelock.acquire",
        ],
    );
    let e = unload(&mut con).unwrap_err();
    assert!(e.starts_with("ERR Error unloading module"), "{e}");
    ok(&mut con, &["ACL", "DELUSER", "app"]);

    // Everything cleared: the unload goes through.
    assert!(loaded(&mut con));
    assert!(
        kit::wait_until(Duration::from_secs(5), || unload(&mut con).is_ok()),
        "{}",
        server.log()
    );
    assert!(!loaded(&mut con));
    assert_alive(&mut server, &mut con);
}

#[kit::test]
fn an_unload_that_undoes_a_failed_load_is_never_refused() {
    // MODULE LOADEX with a config the module does not have: the server
    // loads the module, finds the config unused, and unloads it again
    // inside the same command (Redis 8.2 aborts if the module refuses).
    let mut server = ServerBuilder::new()
        .without_module()
        .arg("enable-module-command", "yes")
        .start();
    let mut con = server.conn();
    let module = module();
    let e = err(
        &mut con,
        &[
            "MODULE",
            "LOADEX",
            &module,
            "CONFIG",
            "spacelock.bogus",
            "1",
        ],
    );
    assert!(e.starts_with("ERR"), "{e}");
    assert!(!loaded(&mut con));
    let e = err(&mut con, &["SPACELOCK.INFO", "k"]);
    assert!(e.contains("unknown command"), "{e}");
    assert!(server
        .log()
        .contains("spacelock: the server is undoing a load that failed its checks; unloading"));
    assert_alive(&mut server, &mut con);
    // A load that passes is then the server's to keep: refused by default.
    ok(
        &mut con,
        &[
            "MODULE",
            "LOADEX",
            &module,
            "CONFIG",
            "spacelock.max-ttl",
            "5000",
        ],
    );
    // (Right after a load the server may refuse on its own first: the
    // module holds a timer for an instant.)
    assert!(kit::wait_until(Duration::from_secs(5), || {
        let e = unload(&mut con).unwrap_err();
        assert!(e.starts_with("ERR Error unloading module"), "{e}");
        refusals(&server, "does not unload by default") == 1
    }));
    assert!(loaded(&mut con));
    assert_alive(&mut server, &mut con);
}

/// `EVAL` that sets `key`'s fence key to the server's clock plus `ahead_ms`,
/// as a token (ms × 1000): a fence key set ahead of the clock, as a slot
/// migrated from a node whose clock runs ahead would bring.
const FENCE_AHEAD: &str = "local t = redis.call('TIME') \
     local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1]) \
     return redis.call('SET', redis.call('SPACELOCK.FENCEKEY', KEYS[1]), string.format('%.0f', ms * 1000))";

#[kit::test]
fn allowed_unload_of_an_idle_module_unloads_and_a_reload_issues_higher_tokens() {
    let mut server = server(true);
    let mut con = server.conn();
    let module = module();
    let first = acquire(&mut con, "j", "o", 60_000).unwrap();
    ok(&mut con, &["SPACELOCK.FENCEKEY", "j"]);
    ok(&mut con, &["PING"]);

    assert_eq!(unload(&mut con), Ok(Value::Okay));
    assert!(!loaded(&mut con));
    let e = err(&mut con, &["SPACELOCK.INFO", "j"]);
    assert!(e.contains("unknown command"), "{e}");
    assert_alive(&mut server, &mut con);
    assert!(server.log().contains(
        "spacelock: unloading (spacelock.allow-unload is yes and no client uses spacelock)"
    ));
    if !looks_up_ahead(&mut con) {
        // Where commands are looked up as they run, a spacelock command
        // right behind the LOAD in the same packet finds the new module.
        let replies = pipeline(
            &mut con,
            &[
                &["MODULE", "LOAD", &module, "allow-unload", "yes"],
                &["SPACELOCK.CHECK", "j", "o", &first.to_string()],
                &["PING"],
                &["MODULE", "UNLOAD", "spacelock"],
                &["SPACELOCK.INFO", "j"],
            ],
        );
        assert_eq!(replies[0], Ok(Value::Okay), "{replies:?}");
        assert_eq!(replies[1], Ok(Value::Int(1)), "{replies:?}");
        assert_eq!(replies[3], Ok(Value::Okay), "{replies:?}");
        assert!(
            replies[4].as_ref().unwrap_err().contains("unknown command"),
            "{replies:?}"
        );
        assert_alive(&mut server, &mut con);
    }

    // MODULE LOAD again: the statics did not survive the unload (the configs
    // are back at their defaults and this is the load's first term), the
    // lock did, and a new grant of its name is above the old one.
    ok(
        &mut con,
        &["MODULE", "LOAD", &module, "allow-unload", "yes"],
    );
    assert_eq!(kit::stat(&mut con, "terms_opened"), 1);
    assert_eq!(kit::check(&mut con, "j", "o", first), 1);
    assert_eq!(kit::release(&mut con, "j", "o"), 1);
    let second = acquire(&mut con, "j", "o", 60_000).unwrap();
    assert!(second > first, "{second} after {first}");
    assert_eq!(kit::release(&mut con, "j", "o"), 1);

    // UNLOAD and LOAD in one packet, right after a grant whose token runs a
    // few ms ahead of the clock and whose fence key is then lost: the unload
    // waits for the clock, so the reload's first term is above it (it would
    // otherwise issue lower tokens for the same name).
    let replies = pipeline(
        &mut con,
        &[
            &["EVAL", FENCE_AHEAD, "1", "j", "5"],
            &["SPACELOCK.ACQUIRE", "j", "o", "60000"],
            &["FLUSHALL"],
            &["MODULE", "UNLOAD", "spacelock"],
            &["MODULE", "LOAD", &module, "allow-unload", "yes"],
        ],
    );
    let ahead = int(replies[1].as_ref().unwrap());
    assert!(ahead > second, "{replies:?}");
    assert_eq!(replies[3], Ok(Value::Okay), "{replies:?}");
    assert_eq!(replies[4], Ok(Value::Okay), "{replies:?}");
    assert_eq!(
        kit::fence_value(&mut con, "j"),
        None,
        "the fence key is lost"
    );
    let after = acquire(&mut con, "j", "o", 60_000).unwrap();
    assert!(after > ahead, "{after} after {ahead}: a reload went back");
    assert!(kit::token_floor(&mut con) > ahead);
    assert_alive(&mut server, &mut con);
}

#[kit::test]
fn allowed_unload_is_refused_while_tokens_run_far_ahead_of_the_clock() {
    let mut server = server(true);
    let mut con = server.conn();
    // A token a minute ahead of the clock, from a fence key set ahead.
    ok(&mut con, &["EVAL", FENCE_AHEAD, "1", "j", "60000"]);
    let ahead = acquire(&mut con, "j", "o", 60_000).unwrap();
    assert!(ahead > kit::now_ms() * 1000 + 50_000 * 1000, "{ahead}");
    assert_eq!(kit::release(&mut con, "j", "o"), 1);
    ok(&mut con, &["PING"]);
    // A reload now would open its term below it: refused, with the reason.
    assert_eq!(unload(&mut con), Err(REFUSED.to_string()));
    assert_eq!(
        refusals(&server, "ms ahead of the clock"),
        1,
        "{}",
        server.log()
    );
    assert!(server.log().contains("restart the server instead"));
    // The module keeps issuing above it.
    let next = acquire(&mut con, "j", "o", 60_000).unwrap();
    assert!(next > ahead, "{next} after {ahead}");
    assert!(loaded(&mut con));
    assert_alive(&mut server, &mut con);
}

kit::main!();
