//! `make bench`: server cost of spacelock's commands side by side with the
//! native commands and the existing service's Lua CAS scripts, on one server per run.
//!
//! * Every case of a server runs once per round; the order is reversed every
//!   other round (A B … B A), and each row's ratio is the median of the
//!   per-round ratios, with their min–max as the spread. Absolute numbers on a
//!   shared box are noisy; ratios of neighbours in time are not (as much).
//! * Every case exercises exactly what it claims: keys that a REFRESH or
//!   RELEASE touches were prepared (held by that owner) before the timed run,
//!   every reply is checked (a single miss fails the bench), and
//!   `INFO commandstats` must count exactly N calls of the measured command.
//! * Server µs/call is `usec / calls` from `INFO commandstats` after a
//!   `CONFIG RESETSTAT`; rps is N / wall time of the pipelined run.
//!
//! Configuration is by environment (see `bench/README.md`).

mod burst;
mod external;
mod load;
mod measure;
mod names;
mod profile;
mod resp;
mod runner;
mod server;
mod shared;
mod versus_v01;
mod workload1;
mod workload2;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::burst::expiry_burst;
use crate::external::{sh, workload5_node, workload_replicas, workloads34};
use crate::measure::median;
use crate::names::names;
use crate::profile::profile;
use crate::shared::shared;
use crate::versus_v01::{floors_v01, versus_v01};
use crate::workload1::workload1;
use crate::workload2::workload2;

/// The existing service's scripts, byte for byte (space-lock.service.ts).
pub(crate) const LUA_RELEASE: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end"#;
pub(crate) const LUA_REFRESH: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("pexpire", KEYS[1], ARGV[2]) else return 0 end"#;

/// A per-process owner id, shaped like the existing service's `randomUUID()`.
pub(crate) const OWNER: &str = "6f1c2e4a-5b3d-4e8f-9a0b-1c2d3e4f5a6b";
/// Long enough that nothing expires during a run.
pub(crate) const TTL: &str = "600000";

pub(crate) fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

pub(crate) struct Cfg {
    pub(crate) quick: bool,
    pub(crate) n: usize,
    pub(crate) rounds: usize,
    pub(crate) conns: usize,
    pub(crate) depth: usize,
    pub(crate) scale_n: usize,
    pub(crate) small_n: usize,
    pub(crate) redis: PathBuf,
    pub(crate) valkey: Option<PathBuf>,
    pub(crate) valkey_missing: String,
    pub(crate) module: PathBuf,
    /// The v0.1 module for the "vs v0.1" rows, or why there is none.
    pub(crate) v01: Result<PathBuf, String>,
    /// The floor builds under the v0.1 rows (`BENCH_ONLY=floor`): v0.1 with
    /// the cheapest per-lock record, and v0.1 with fence keys that expire;
    /// or why there are none.
    pub(crate) floors: Result<[PathBuf; 2], String>,
    /// Its commit, for the labels.
    pub(crate) v01_rev: String,
    /// Distinct names acquired and released once each (memory after names
    /// that come and go), and the short fence retention (ms) set for it.
    pub(crate) names_n: usize,
    pub(crate) names_retention_ms: u64,
    /// Locks expiring in the same ms, one WAIT waiter each; bursts run.
    pub(crate) burst_locks: usize,
    pub(crate) burst_rounds: usize,
    pub(crate) out: PathBuf,
    pub(crate) root: PathBuf,
}

impl Cfg {
    fn from_env() -> Result<Cfg, String> {
        let quick = matches!(std::env::var("QUICK").as_deref(), Ok(v) if !v.is_empty() && v != "0");
        let root = std::env::var_os("BENCH_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .parent()
                    .unwrap()
                    .to_path_buf()
            });
        let module = std::env::var_os("SPACELOCK_MODULE")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/release/libspacelock.so"));
        if !module.exists() {
            return Err(format!(
                "module not found: {} (build it, or set SPACELOCK_MODULE)",
                module.display()
            ));
        }
        let (valkey, valkey_missing) = match std::env::var_os("VALKEY_SERVER")
            .filter(|v| !v.is_empty())
        {
            Some(p) if Path::new(&p).exists() => (Some(PathBuf::from(p)), String::new()),
            Some(p) => (
                None,
                format!("VALKEY_SERVER={} does not exist", Path::new(&p).display()),
            ),
            None => (
                None,
                std::env::var("VALKEY_MISSING").unwrap_or_else(|_| "VALKEY_SERVER not set".into()),
            ),
        };
        let v01 = match std::env::var_os("BENCH_BASELINE_MODULE").filter(|v| !v.is_empty()) {
            Some(p) if Path::new(&p).exists() => Ok(PathBuf::from(p)),
            Some(p) => Err(format!(
                "BENCH_BASELINE_MODULE={} does not exist",
                Path::new(&p).display()
            )),
            None => Err(std::env::var("BENCH_BASELINE_MISSING")
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "BENCH_BASELINE_MODULE not set (run.sh builds it)".into())),
        };
        let floors = match (
            std::env::var_os("BENCH_FLOOR_RECORD_MODULE").filter(|v| !v.is_empty()),
            std::env::var_os("BENCH_FLOOR_FENCE_MODULE").filter(|v| !v.is_empty()),
        ) {
            (Some(r), Some(f)) => Ok([PathBuf::from(r), PathBuf::from(f)]),
            _ => Err(std::env::var("BENCH_FLOOR_MISSING")
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "not built (run.sh builds them under BENCH_ONLY=floor)".into())),
        };
        let scale_n = env_usize("BENCH_SCALE_N", if quick { 100_000 } else { 1_000_000 }).max(1);
        Ok(Cfg {
            quick,
            n: env_usize("BENCH_N", if quick { 20_000 } else { 50_000 }),
            rounds: env_usize("BENCH_ROUNDS", if quick { 3 } else { 7 }).max(1),
            conns: env_usize("BENCH_CONNS", 4).max(1),
            depth: env_usize("BENCH_DEPTH", 32).max(1),
            scale_n,
            small_n: env_usize("BENCH_SMALL_N", 1_000).max(1),
            redis: std::env::var_os("REDIS_SERVER")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| "redis-server".into()),
            valkey,
            valkey_missing,
            module,
            v01,
            floors,
            v01_rev: std::env::var("BENCH_BASELINE_REV")
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "8166dab".into()),
            names_n: env_usize("BENCH_NAMES_N", scale_n).max(1),
            names_retention_ms: env_usize("BENCH_NAMES_RETENTION_MS", 2_000).max(1) as u64,
            burst_locks: env_usize("BENCH_BURST_LOCKS", 1_000).max(1),
            burst_rounds: env_usize("BENCH_BURST_ROUNDS", if quick { 1 } else { 3 }).max(1),
            out: std::env::var_os("BENCH_OUT")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target/bench/results.md")),
            root,
        })
    }
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<(), String> {
    let cfg = Cfg::from_env()?;
    if std::env::args().nth(1).as_deref() == Some("profile") {
        return profile(&cfg);
    }
    let t0 = Instant::now();
    let date = sh("date -u '+%Y-%m-%d %H:%M UTC'");
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-");
    let rev = std::env::var("BENCH_MODULE_REV")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            sh(&format!(
                "git -C '{}' describe --always --dirty 2>/dev/null",
                cfg.root.display()
            ))
        });
    eprintln!(
        "spacelock bench ({}): N={} per case, {} rounds, {} conns × pipeline {}, module {}",
        if cfg.quick { "QUICK" } else { "full" },
        cfg.n,
        cfg.rounds,
        cfg.conns,
        cfg.depth,
        cfg.module.display()
    );
    let mut rows = Vec::new();
    let mut raw = String::from("server,case,round,us_per_call,rps,cpu_us_per_call\n");
    let mut servers = Vec::new();
    let mut missing = Vec::new();
    let mut anchor = format!(
        "Anchor: no physical-limit anchor on this run: Valkey 9.1.2 unavailable ({}).",
        cfg.valkey_missing
    );
    // BENCH_ONLY=workload1,v01,… runs only the parts named (all by default).
    let only = std::env::var("BENCH_ONLY")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let on = |part: &str| {
        only.as_deref()
            .is_none_or(|l| l.split(',').any(|p| p.trim() == part))
    };
    if let Some(l) = &only {
        eprintln!("BENCH_ONLY={l}: running only those parts");
        if !on("workload1") {
            anchor = format!("Anchor: not measured on this run (BENCH_ONLY={l}).");
        }
    }
    let mut ran_on = |name: String| {
        if !servers.contains(&name) {
            servers.push(name);
        }
    };

    if let Some(vk) = &cfg.valkey {
        if on("workload1") {
            let srv = workload1(&cfg, vk, &mut rows, &mut raw)?;
            let find = |id: &str| {
                raw.lines()
                    .filter(|l| l.starts_with(&format!("{},{id},", srv.name)))
                    .filter_map(|l| l.split(',').nth(3)?.parse::<f64>().ok())
                    .collect::<Vec<_>>()
            };
            let (ifeq, del) = (median(&find("set_ifeq")), median(&find("delifeq")));
            let (mr, md) = (median(&find("refresh")), median(&find("release")));
            anchor = format!(
                "Anchor (physical limit on this run, {}): native `SET k owner IFEQ owner PX ttl` = {ifeq:.3} µs/call and `DELIFEQ k owner` = {del:.3} µs/call; spacelock REFRESH = {mr:.3}, RELEASE = {md:.3} µs/call on the same server (goal: ratio ≥ 1.0).",
                srv.name
            );
            ran_on(srv.name.clone());
        }
        if on("v01") {
            if let Some(name) = versus_v01(&cfg, vk, &mut rows, &mut raw, &mut missing)? {
                ran_on(name);
            }
        }
        // Named only: not part of a default run.
        if only.is_some() && on("floor") {
            if let Some(name) = floors_v01(&cfg, vk, &mut rows, &mut raw, &mut missing)? {
                ran_on(name);
            }
        }
    } else {
        eprintln!("skipping Valkey rows: {}", cfg.valkey_missing);
    }
    if on("workload1") {
        ran_on(
            workload1(&cfg, &cfg.redis, &mut rows, &mut raw)?
                .name
                .clone(),
        );
    }
    if on("v01") {
        if let Some(name) = versus_v01(&cfg, &cfg.redis, &mut rows, &mut raw, &mut missing)? {
            ran_on(name);
        }
    }
    if only.is_some() && on("floor") {
        if let Some(name) = floors_v01(&cfg, &cfg.redis, &mut rows, &mut raw, &mut missing)? {
            ran_on(name);
        }
    }
    if on("workload2") {
        ran_on(workload2(&cfg, &mut rows, &mut raw)?);
    }
    if on("names") {
        ran_on(names(&cfg, &mut rows, &mut raw)?);
    }
    if on("shared") {
        ran_on(shared(&cfg, &mut rows, &mut raw)?);
    }
    if on("burst") {
        ran_on(expiry_burst(&cfg, &mut rows, &mut raw)?);
    }
    if on("client") {
        workloads34(&cfg, &mut rows, &mut missing)?;
    }
    if on("node") {
        workload5_node(&cfg, &mut rows, &mut missing)?;
    }
    if on("replicas") {
        if let Some(name) = workload_replicas(&cfg, &mut rows, &mut missing)? {
            ran_on(name);
        }
    }
    // Redis first, as the rows are.
    servers.sort_by_key(|s| !s.starts_with("Redis"));

    let mut md = String::new();
    let _ = writeln!(
        md,
        "spacelock bench · {date} · {} · {cores} cores ({}) · module {} · {} mode: N={} calls per case per round, {} rounds alternated (order reversed every round), {} connections × pipeline {} · took {:.0} s",
        servers.join(" + "),
        cpu.trim(),
        if rev.is_empty() { "?".into() } else { rev },
        if cfg.quick { "QUICK" } else { "full" },
        cfg.n,
        cfg.rounds,
        cfg.conns,
        cfg.depth,
        t0.elapsed().as_secs_f64()
    );
    let _ = writeln!(md);
    let _ = writeln!(md, "{anchor}");
    let _ = writeln!(md);
    let _ = writeln!(md, "Ratio > 1 means spacelock is better: baseline/spacelock for µs and bytes, spacelock/baseline for rps; it is the median of the per-round ratios, and spread is their min–max. Server µs/call is INFO commandstats usec/calls (wall clock inside the command: it grows when the box preempts the server); server CPU µs/call is the server main thread's CPU time (/proc schedstat) over the run / calls, so it includes parsing and reply I/O but not preemption; rps is the client's wall-clock rate.");
    let _ = writeln!(md);
    let _ = writeln!(md, "| workload | spacelock | baseline | ratio | spread |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} | {} |",
            r.workload, r.spacelock, r.baseline, r.ratio, r.spread
        );
    }
    for m in &missing {
        let _ = writeln!(md);
        let _ = writeln!(md, "Missing: {m}");
    }
    print!("{md}");
    if let Some(dir) = cfg.out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(&cfg.out, &md).map_err(|e| format!("{}: {e}", cfg.out.display()))?;
    let raw_path = cfg.out.with_file_name("raw.csv");
    std::fs::write(&raw_path, &raw).map_err(|e| format!("{}: {e}", raw_path.display()))?;
    eprintln!(
        "wrote {} and {} in {:.0} s",
        cfg.out.display(),
        raw_path.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
