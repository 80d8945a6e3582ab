//! Workloads 3-5, run by other tools (the client bench tool, the Node
//! client) against a server started here; their rows come back on stdout.

use std::path::PathBuf;

use crate::measure::Row;
use crate::server::Server;
use crate::Cfg;

/// Workloads 3 and 4: the `spacelock-bench-client` binary (bench/client,
/// built on the real spacelock-client crate) against a fresh Redis with the
/// module. Returns its rows and its MISSING notes.
pub(crate) fn workloads34(
    cfg: &Cfg,
    rows: &mut Vec<Row>,
    missing: &mut Vec<String>,
) -> Result<(), String> {
    let tool = match std::env::var_os("BENCH_CLIENT_TOOL").map(PathBuf::from) {
        Some(t) if t.exists() => t,
        _ => {
            missing.push(format!(
                "workloads 3 (client cycles, heartbeat of 10 k leases) and 4 (contention, WAIT vs 10 ms polling): {}",
                std::env::var("BENCH_CLIENT_MISSING").unwrap_or_else(|_| "the client bench tool was not built".into())
            ));
            return Ok(());
        }
    };
    let srv = Server::start(&cfg.redis, Some(&cfg.module), &[])?;
    eprintln!("workloads 3-4 on {} (port {})", srv.name, srv.port);
    let out = std::process::Command::new(&tool)
        .env("BENCH_PORT", srv.port.to_string())
        .env("BENCH_SERVER_PID", srv.pid().to_string())
        .env("BENCH_SERVER_NAME", &srv.name)
        .env("QUICK", if cfg.quick { "1" } else { "" })
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("{}: {e}", tool.display()))?;
    collect_rows(&String::from_utf8_lossy(&out.stdout), rows, missing);
    if !out.status.success() {
        missing.push(format!(
            "workloads 3-4: the client bench tool exited with {}",
            out.status
        ));
    }
    Ok(())
}

/// Replica-acknowledged grants: the client bench tool's `replicas` part
/// against a primary with the module and two local replicas (with it too).
/// Returns the primary's server name when it ran.
pub(crate) fn workload_replicas(
    cfg: &Cfg,
    rows: &mut Vec<Row>,
    missing: &mut Vec<String>,
) -> Result<Option<String>, String> {
    let tool = match std::env::var_os("BENCH_CLIENT_TOOL").map(PathBuf::from) {
        Some(t) if t.exists() => t,
        _ => {
            missing.push(format!(
                "replica-acknowledged grants (0, 1, 2 replicas): {}",
                std::env::var("BENCH_CLIENT_MISSING")
                    .unwrap_or_else(|_| "the client bench tool was not built".into())
            ));
            return Ok(None);
        }
    };
    let primary = Server::start(
        &cfg.redis,
        Some(&cfg.module),
        &[("repl-diskless-sync-delay", "0")],
    )?;
    let of = format!("127.0.0.1 {}", primary.port);
    let _r1 = Server::start(&cfg.redis, Some(&cfg.module), &[("replicaof", &of)])?;
    let _r2 = Server::start(&cfg.redis, Some(&cfg.module), &[("replicaof", &of)])?;
    eprintln!(
        "replica-acknowledged grants on {} (port {}, replicas on {} and {})",
        primary.name, primary.port, _r1.port, _r2.port
    );
    let out = std::process::Command::new(&tool)
        .env("BENCH_PORT", primary.port.to_string())
        .env("BENCH_SERVER_PID", primary.pid().to_string())
        .env("BENCH_SERVER_NAME", &primary.name)
        .env("BENCH_CLIENT_ONLY", "replicas")
        .env("QUICK", if cfg.quick { "1" } else { "" })
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("{}: {e}", tool.display()))?;
    collect_rows(&String::from_utf8_lossy(&out.stdout), rows, missing);
    if !out.status.success() {
        missing.push(format!(
            "replica-acknowledged grants: the client bench tool exited with {}",
            out.status
        ));
    }
    Ok(Some(primary.name.clone()))
}

/// `ROW\t<workload>\t<spacelock>\t<baseline>\t<ratio>\t<spread>` and
/// `MISSING\t<note>` lines from a bench tool's stdout.
fn collect_rows(text: &str, rows: &mut Vec<Row>, missing: &mut Vec<String>) {
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["ROW", w, a, b, r, s] => rows.push(Row {
                workload: w.to_string(),
                spacelock: a.to_string(),
                baseline: b.to_string(),
                ratio: r.parse().unwrap_or(f64::NAN),
                spread: s.to_string(),
            }),
            ["MISSING", m] => missing.push(m.to_string()),
            _ => {}
        }
    }
}

/// Workload 5: the Node client (clients/node) side by side with the existing service's
/// own SpaceLockService run unmodified on ioredis (`bench/node/run.js`), on a
/// fresh Redis with the module: cycles/s and the heartbeat's process CPU.
pub(crate) fn workload5_node(
    cfg: &Cfg,
    rows: &mut Vec<Row>,
    missing: &mut Vec<String>,
) -> Result<(), String> {
    let tool = match std::env::var_os("BENCH_NODE_TOOL").map(PathBuf::from) {
        Some(t) if t.exists() => t,
        _ => {
            missing.push(format!(
                "workload 5 (Node client vs the existing service's service: cycles/s, heartbeat CPU of 10 k leases): {}",
                std::env::var("BENCH_NODE_MISSING").unwrap_or_else(|_| "BENCH_NODE_TOOL not set".into())
            ));
            return Ok(());
        }
    };
    let srv = Server::start(&cfg.redis, Some(&cfg.module), &[])?;
    eprintln!("workload 5 (Node) on {} (port {})", srv.name, srv.port);
    let out = std::process::Command::new(std::env::var("NODE").unwrap_or_else(|_| "node".into()))
        .arg(&tool)
        .env("BENCH_PORT", srv.port.to_string())
        .env("QUICK", if cfg.quick { "1" } else { "" })
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("node {}: {e}", tool.display()))?;
    collect_rows(&String::from_utf8_lossy(&out.stdout), rows, missing);
    if !out.status.success() {
        missing.push(format!(
            "workload 5: bench/node/run.js exited with {}",
            out.status
        ));
    }
    Ok(())
}

pub(crate) fn sh(cmd: &str) -> String {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
