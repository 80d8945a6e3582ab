//! `make bench`: server cost of spacelock's commands side by side with the
//! native commands and the seed's Lua CAS scripts, on one server per run.
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

mod load;
mod resp;
mod server;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use load::{Commands, Expect};
use resp::Conn;
use server::Server;

/// The seed's scripts, byte for byte (space-lock.service.ts).
const LUA_RELEASE: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end"#;
const LUA_REFRESH: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("pexpire", KEYS[1], ARGV[2]) else return 0 end"#;

/// A per-process owner id, shaped like the seed's `randomUUID()`.
const OWNER: &str = "6f1c2e4a-5b3d-4e8f-9a0b-1c2d3e4f5a6b";
/// Long enough that nothing expires during a run.
const TTL: &str = "600000";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

struct Cfg {
    quick: bool,
    n: usize,
    rounds: usize,
    conns: usize,
    depth: usize,
    scale_n: usize,
    small_n: usize,
    redis: PathBuf,
    valkey: Option<PathBuf>,
    valkey_missing: String,
    module: PathBuf,
    out: PathBuf,
    root: PathBuf,
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
        Ok(Cfg {
            quick,
            n: env_usize("BENCH_N", if quick { 20_000 } else { 50_000 }),
            rounds: env_usize("BENCH_ROUNDS", if quick { 3 } else { 7 }).max(1),
            conns: env_usize("BENCH_CONNS", 4).max(1),
            depth: env_usize("BENCH_DEPTH", 32).max(1),
            scale_n: env_usize("BENCH_SCALE_N", if quick { 100_000 } else { 1_000_000 }).max(1),
            small_n: env_usize("BENCH_SMALL_N", 1_000).max(1),
            redis: std::env::var_os("REDIS_SERVER")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| "redis-server".into()),
            valkey,
            valkey_missing,
            module,
            out: std::env::var_os("BENCH_OUT")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target/bench/results.md")),
            root,
        })
    }
}

fn key(prefix: &str, i: usize) -> Vec<u8> {
    format!("{prefix}:{i:08}").into_bytes()
}

/// One measured command stream.
type Gen = Box<dyn Fn(usize) -> (Commands, Expect)>;

struct Case {
    id: &'static str,
    /// Its `cmdstat_<stat>` line in INFO commandstats.
    stat: &'static str,
    db: u32,
    /// FLUSHDB before every run (fresh-key workloads).
    flush: bool,
    /// Prepare only before the first run (the run does not consume the state).
    prep_once: bool,
    prep: Option<Gen>,
    /// A second prepare step, after `prep` (same once/every-run rule).
    warm: Option<Gen>,
    run: Gen,
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    us_per_call: f64,
    rps: f64,
    /// Server main-thread CPU per call (µs), from /proc schedstat: includes
    /// parsing and reply I/O, and unlike commandstats' wall clock it does not
    /// grow when the server is preempted by other load on the box.
    cpu_us: f64,
}

/// CPU time (ns) the server's main thread has run, from its schedstat.
fn cpu_ns(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// `cmdstat_<name>` → (calls, usec).
fn commandstats(con: &mut Conn) -> Result<HashMap<String, (u64, u64)>, String> {
    let text = con
        .call(&["INFO", "commandstats"])?
        .text()
        .unwrap_or_default();
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let field = |f: &str| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix(f))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.insert(name.to_lowercase(), (field("calls="), field("usec=")));
    }
    Ok(out)
}

fn info_field(con: &mut Conn, section: &str, field: &str) -> Result<i64, String> {
    let text = con.call(&["INFO", section])?.text().unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|v| v.strip_prefix(':')))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("INFO {section} has no {field}"))
}

/// `used_memory` once it stops moving (incremental rehashing settles).
fn used_memory(con: &mut Conn) -> Result<i64, String> {
    let mut last = info_field(con, "memory", "used_memory")?;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        let now = info_field(con, "memory", "used_memory")?;
        if now == last {
            break;
        }
        last = now;
    }
    Ok(last)
}

struct Runner<'a> {
    cfg: &'a Cfg,
    port: u16,
    pid: u32,
    admin: Conn,
    prepared: HashSet<&'static str>,
}

impl Runner<'_> {
    fn load(
        &self,
        db: u32,
        (cmds, expect): (Commands, Expect),
    ) -> Result<(usize, Duration), String> {
        let n = cmds.len();
        let cmds = Arc::new(cmds);
        let took = load::run(
            self.port,
            db,
            self.cfg.conns,
            self.cfg.depth,
            &cmds,
            &expect,
        )?;
        Ok((n, took))
    }

    fn select(&mut self, db: u32) -> Result<(), String> {
        self.admin.call(&["SELECT", &db.to_string()]).map(drop)
    }

    fn measure(&mut self, case: &Case, round: usize) -> Result<Sample, String> {
        let ctx = |e: String| format!("{} (round {round}): {e}", case.id);
        if case.flush {
            self.select(case.db)?;
            self.admin.call(&["FLUSHDB", "SYNC"]).map_err(ctx)?;
        }
        if let Some(prep) = &case.prep {
            if !case.prep_once || self.prepared.insert(case.id) {
                self.load(case.db, prep(round))
                    .map_err(|e| ctx(format!("prepare: {e}")))?;
                if let Some(warm) = &case.warm {
                    self.load(case.db, warm(round))
                        .map_err(|e| ctx(format!("warm-up: {e}")))?;
                }
            }
        }
        self.admin.call(&["CONFIG", "RESETSTAT"]).map_err(ctx)?;
        let cmds = (case.run)(round);
        let cpu0 = cpu_ns(self.pid);
        let (n, took) = self.load(case.db, cmds).map_err(ctx)?;
        let cpu1 = cpu_ns(self.pid);
        let stats = commandstats(&mut self.admin).map_err(ctx)?;
        let (calls, usec) = stats.get(case.stat).copied().unwrap_or((0, 0));
        if calls != n as u64 {
            return Err(ctx(format!(
                "INFO commandstats counted {calls} calls of {}, sent {n}",
                case.stat
            )));
        }
        Ok(Sample {
            us_per_call: usec as f64 / calls as f64,
            rps: n as f64 / took.as_secs_f64(),
            cpu_us: match (cpu0, cpu1) {
                (Some(a), Some(b)) => (b - a) as f64 / 1000.0 / n as f64,
                _ => f64::NAN,
            },
        })
    }

    /// Runs every case `rounds` times, alternating the order.
    fn rounds(
        &mut self,
        cases: &[Case],
        rounds: usize,
    ) -> Result<HashMap<&'static str, Vec<Sample>>, String> {
        let mut out: HashMap<&'static str, Vec<Sample>> = HashMap::new();
        for r in 0..rounds {
            let order: Vec<&Case> = if r % 2 == 0 {
                cases.iter().collect()
            } else {
                cases.iter().rev().collect()
            };
            for c in order {
                let s = self.measure(c, r)?;
                out.entry(c.id).or_default().push(s);
            }
            eprintln!("  round {}/{rounds} done", r + 1);
        }
        Ok(out)
    }
}

fn script_load(con: &mut Conn, body: &str) -> Result<String, String> {
    con.call(&["SCRIPT", "LOAD", body])?
        .text()
        .ok_or_else(|| "SCRIPT LOAD: no sha".into())
}

/// Workload 1 cases on one server.
fn workload1_cases(n: usize, valkey: bool, sha_rel: &str, sha_ref: &str) -> Vec<Case> {
    let (rel, refr) = (sha_rel.to_string(), sha_ref.to_string());
    let rel2 = rel.clone();
    let refr2 = refr.clone();
    let mut cases = vec![
        Case {
            id: "acquire",
            stat: "spacelock.acquire",
            db: 1,
            flush: true,
            prep_once: false,
            prep: None,
            warm: None,
            run: Box::new(move |r| {
                let p = format!("a:m:{r}");
                (
                    Commands::build(n, |i| args!["SPACELOCK.ACQUIRE", key(&p, i), OWNER, TTL]),
                    Expect::Token,
                )
            }),
        },
        Case {
            id: "set_nx_px",
            stat: "set",
            db: 1,
            flush: true,
            prep_once: false,
            prep: None,
            warm: None,
            run: Box::new(move |r| {
                let p = format!("a:s:{r}");
                (
                    Commands::build(n, |i| args!["SET", key(&p, i), OWNER, "PX", TTL, "NX"]),
                    Expect::Ok,
                )
            }),
        },
        Case {
            // Steady state: a lease refreshed before (a heartbeat's 2nd, 3rd… call).
            id: "refresh",
            stat: "spacelock.refresh",
            db: 0,
            flush: false,
            prep_once: true,
            prep: Some(Box::new(move |_| {
                (
                    Commands::build(n, |i| args!["SPACELOCK.ACQUIRE", key("r:m", i), OWNER, TTL]),
                    Expect::Token,
                )
            })),
            warm: Some(Box::new(move |_| {
                (
                    Commands::build(n, |i| args!["SPACELOCK.REFRESH", key("r:m", i), OWNER, TTL]),
                    Expect::Int(1),
                )
            })),
            run: Box::new(move |_| {
                (
                    Commands::build(n, |i| args!["SPACELOCK.REFRESH", key("r:m", i), OWNER, TTL]),
                    Expect::Int(1),
                )
            }),
        },
        Case {
            // The first REFRESH after ACQUIRE: the value is still the embstr
            // the ACQUIRE wrote (StringDMA unshares it into a raw string).
            id: "refresh_first",
            stat: "spacelock.refresh",
            db: 2,
            flush: true,
            prep_once: false,
            prep: Some(Box::new(move |_| {
                (
                    Commands::build(n, |i| args!["SPACELOCK.ACQUIRE", key("f:m", i), OWNER, TTL]),
                    Expect::Token,
                )
            })),
            warm: None,
            run: Box::new(move |_| {
                (
                    Commands::build(n, |i| args!["SPACELOCK.REFRESH", key("f:m", i), OWNER, TTL]),
                    Expect::Int(1),
                )
            }),
        },
        Case {
            id: "lua_refresh",
            stat: "evalsha",
            db: 0,
            flush: false,
            prep_once: true,
            prep: Some(Box::new(move |_| {
                (
                    Commands::build(n, |i| args!["SET", key("r:s", i), OWNER, "PX", TTL, "NX"]),
                    Expect::Ok,
                )
            })),
            warm: None,
            run: Box::new(move |_| {
                (
                    Commands::build(n, |i| {
                        args!["EVALSHA", refr, "1", key("r:s", i), OWNER, TTL]
                    }),
                    Expect::Int(1),
                )
            }),
        },
        Case {
            id: "release",
            stat: "spacelock.release",
            db: 0,
            flush: false,
            prep_once: false,
            prep: Some(Box::new(move |_| {
                (
                    Commands::build(n, |i| args!["SPACELOCK.ACQUIRE", key("d:m", i), OWNER, TTL]),
                    Expect::Token,
                )
            })),
            warm: None,
            run: Box::new(move |_| {
                (
                    Commands::build(n, |i| args!["SPACELOCK.RELEASE", key("d:m", i), OWNER]),
                    Expect::Int(1),
                )
            }),
        },
        Case {
            id: "lua_release",
            stat: "evalsha",
            db: 0,
            flush: false,
            prep_once: false,
            prep: Some(Box::new(move |_| {
                (
                    Commands::build(n, |i| args!["SET", key("d:s", i), OWNER, "PX", TTL, "NX"]),
                    Expect::Ok,
                )
            })),
            warm: None,
            run: Box::new(move |_| {
                (
                    Commands::build(n, |i| args!["EVALSHA", rel, "1", key("d:s", i), OWNER]),
                    Expect::Int(1),
                )
            }),
        },
        Case {
            id: "fencekey",
            stat: "spacelock.fencekey",
            db: 0,
            flush: false,
            prep_once: true,
            prep: None,
            warm: None,
            run: Box::new(move |_| {
                (
                    Commands::build(n, |i| args!["SPACELOCK.FENCEKEY", key("r:m", i)]),
                    Expect::AnyBulk,
                )
            }),
        },
        Case {
            id: "ping",
            stat: "ping",
            db: 0,
            flush: false,
            prep_once: true,
            prep: None,
            warm: None,
            run: Box::new(move |_| (Commands::build(n, |_| args!["PING"]), Expect::Pong)),
        },
        Case {
            id: "get",
            stat: "get",
            db: 0,
            flush: false,
            prep_once: true,
            prep: Some(Box::new(move |_| {
                (
                    Commands::build(n, |i| args!["SET", key("r:s", i), OWNER, "PX", TTL]),
                    Expect::Ok,
                )
            })),
            warm: None,
            run: Box::new(move |_| {
                (
                    Commands::build(n, |i| args!["GET", key("r:s", i)]),
                    Expect::Bulk(OWNER.into()),
                )
            }),
        },
        Case {
            id: "pexpire",
            stat: "pexpire",
            db: 0,
            flush: false,
            prep_once: true,
            prep: Some(Box::new(move |_| {
                (
                    Commands::build(n, |i| args!["SET", key("r:s", i), OWNER, "PX", TTL]),
                    Expect::Ok,
                )
            })),
            warm: None,
            run: Box::new(move |_| {
                (
                    Commands::build(n, |i| args!["PEXPIRE", key("r:s", i), TTL]),
                    Expect::Int(1),
                )
            }),
        },
    ];
    if valkey {
        cases.push(Case {
            id: "set_ifeq",
            stat: "set",
            db: 0,
            flush: false,
            prep_once: true,
            prep: Some(Box::new(move |_| {
                (
                    Commands::build(n, |i| args!["SET", key("r:v", i), OWNER, "PX", TTL, "NX"]),
                    Expect::Ok,
                )
            })),
            warm: None,
            run: Box::new(move |_| {
                (
                    Commands::build(n, |i| {
                        args!["SET", key("r:v", i), OWNER, "IFEQ", OWNER, "PX", TTL]
                    }),
                    Expect::Ok,
                )
            }),
        });
        cases.push(Case {
            id: "delifeq",
            stat: "delifeq",
            db: 0,
            flush: false,
            prep_once: false,
            prep: Some(Box::new(move |_| {
                (
                    Commands::build(n, |i| args!["SET", key("d:v", i), OWNER, "PX", TTL, "NX"]),
                    Expect::Ok,
                )
            })),
            warm: None,
            run: Box::new(move |_| {
                (
                    Commands::build(n, |i| args!["DELIFEQ", key("d:v", i), OWNER]),
                    Expect::Int(1),
                )
            }),
        });
    }
    let _ = (rel2, refr2);
    // Compared cases sit next to each other, so each pair runs back to back in
    // every round (the order is reversed on odd rounds).
    const ORDER: &[&str] = &[
        "refresh_first",
        "set_ifeq",
        "refresh",
        "lua_refresh",
        "pexpire",
        "get",
        "fencekey",
        "ping",
        "lua_release",
        "release",
        "delifeq",
        "acquire",
        "set_nx_px",
    ];
    cases.sort_by_key(|c| {
        ORDER
            .iter()
            .position(|id| *id == c.id)
            .unwrap_or(ORDER.len())
    });
    cases
}

/// One table row.
struct Row {
    workload: String,
    spacelock: String,
    baseline: String,
    ratio: f64,
    spread: String,
}

fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        "n/a".into()
    } else if x >= 10_000.0 {
        format!("{:.0}", x)
    } else if x >= 100.0 {
        format!("{:.1}", x)
    } else {
        format!("{:.3}", x)
    }
}

#[derive(Clone, Copy, Debug)]
enum Metric {
    Us,
    Rps,
    Cpu,
}

/// A row comparing case `a` (spacelock) with case `b` (baseline), from
/// per-round pairs. Ratio > 1 means spacelock is better.
fn row(label: String, s: &HashMap<&'static str, Vec<Sample>>, a: &str, b: &str, m: Metric) -> Row {
    let (sa, sb) = (&s[a], &s[b]);
    let val = |x: &Sample| match m {
        Metric::Us => x.us_per_call,
        Metric::Rps => x.rps,
        Metric::Cpu => x.cpu_us,
    };
    let ratios: Vec<f64> = sa
        .iter()
        .zip(sb)
        .map(|(x, y)| match m {
            Metric::Us | Metric::Cpu => val(y) / val(x),
            Metric::Rps => val(x) / val(y),
        })
        .collect();
    let (lo, hi) = min_max(&ratios);
    Row {
        workload: label,
        spacelock: fmt_num(median(&sa.iter().map(val).collect::<Vec<_>>())),
        baseline: fmt_num(median(&sb.iter().map(val).collect::<Vec<_>>())),
        ratio: median(&ratios),
        spread: format!("{lo:.2}–{hi:.2} (n={})", ratios.len()),
    }
}

fn workload1(
    cfg: &Cfg,
    binary: &Path,
    rows: &mut Vec<Row>,
    raw: &mut String,
) -> Result<Server, String> {
    let srv = Server::start(binary, Some(&cfg.module), &[])?;
    eprintln!("workload 1 on {} (port {})", srv.name, srv.port);
    let mut admin = srv.conn();
    let sha_rel = script_load(&mut admin, LUA_RELEASE)?;
    let sha_ref = script_load(&mut admin, LUA_REFRESH)?;
    let cases = workload1_cases(cfg.n, srv.is_valkey, &sha_rel, &sha_ref);
    let mut runner = Runner {
        cfg,
        port: srv.port,
        pid: srv.pid(),
        admin,
        prepared: HashSet::new(),
    };
    let s = runner.rounds(&cases, cfg.rounds).map_err(|e| {
        format!(
            "{}: {e}\nserver log tail:\n{}",
            srv.name,
            log_tail(srv.log())
        )
    })?;
    for c in &cases {
        for (r, x) in s[c.id].iter().enumerate() {
            let _ = writeln!(
                raw,
                "{},{},{},{:.4},{:.0},{:.4}",
                srv.name, c.id, r, x.us_per_call, x.rps, x.cpu_us
            );
        }
    }
    let v = &srv.name;
    use Metric::{Cpu, Rps, Us};
    let mut pairs: Vec<(&str, &str, &str, &[Metric])> = Vec::new();
    if srv.is_valkey {
        pairs.push((
            "REFRESH held key vs native `SET k owner IFEQ owner PX ttl`",
            "refresh",
            "set_ifeq",
            &[Us, Cpu, Rps],
        ));
        pairs.push((
            "first REFRESH after ACQUIRE vs native `SET k owner IFEQ owner PX ttl`",
            "refresh_first",
            "set_ifeq",
            &[Us, Cpu],
        ));
        pairs.push((
            "RELEASE held key vs native `DELIFEQ k owner`",
            "release",
            "delifeq",
            &[Us, Cpu, Rps],
        ));
    }
    pairs.extend([
        (
            "ACQUIRE fresh key (lock + fence) vs `SET k owner PX ttl NX`",
            "acquire",
            "set_nx_px",
            &[Us, Cpu, Rps][..],
        ),
        (
            "REFRESH held key vs seed `EVALSHA` CAS-PEXPIRE",
            "refresh",
            "lua_refresh",
            &[Us, Cpu, Rps],
        ),
        (
            "first REFRESH after ACQUIRE vs seed `EVALSHA` CAS-PEXPIRE",
            "refresh_first",
            "lua_refresh",
            &[Us, Cpu],
        ),
        (
            "RELEASE held key vs seed `EVALSHA` CAS-DEL",
            "release",
            "lua_release",
            &[Us, Cpu, Rps],
        ),
        (
            "dispatch floor: `SPACELOCK.FENCEKEY k` vs `PING`",
            "fencekey",
            "ping",
            &[Us],
        ),
        (
            "reference: REFRESH vs `PEXPIRE k ttl` (no owner check)",
            "refresh",
            "pexpire",
            &[Us],
        ),
        ("reference: REFRESH vs `GET k`", "refresh", "get", &[Us]),
    ]);
    for (what, a, b, metrics) in pairs {
        for m in metrics {
            let unit = match m {
                Us => "server µs/call",
                Cpu => "server CPU µs/call",
                Rps => "rps",
            };
            rows.push(row(format!("{v} · {what} · {unit}"), &s, a, b, *m));
        }
    }
    Ok(srv)
}

/// Workload 2: per-op cost with few vs many locks held, memory per lock.
fn workload2(cfg: &Cfg, rows: &mut Vec<Row>, raw: &mut String) -> Result<(), String> {
    let srv = Server::start(&cfg.redis, Some(&cfg.module), &[])?;
    let v = srv.name.clone();
    eprintln!(
        "workload 2 on {v}: {} vs {} locks held",
        cfg.small_n, cfg.scale_n
    );
    let mut admin = srv.conn();
    let sha_ref = script_load(&mut admin, LUA_REFRESH)?;
    let mut runner = Runner {
        cfg,
        port: srv.port,
        pid: srv.pid(),
        admin,
        prepared: HashSet::new(),
    };
    let (big, small, n) = (cfg.scale_n, cfg.small_n, cfg.n);
    let acquire = |p: &'static str, count: usize| {
        (
            Commands::build(count, move |i| {
                args!["SPACELOCK.ACQUIRE", key(p, i), OWNER, TTL]
            }),
            Expect::Token,
        )
    };
    let set_nx = |p: &'static str, count: usize| {
        (
            Commands::build(count, move |i| {
                args!["SET", key(p, i), OWNER, "PX", TTL, "NX"]
            }),
            Expect::Ok,
        )
    };
    // Memory: db 1 holds the module's locks, db 2 the plain ones.
    runner.select(0)?;
    let m0 = used_memory(&mut runner.admin)?;
    runner.load(1, acquire("s:m", big))?;
    let m1 = used_memory(&mut runner.admin)?;
    runner.load(
        1,
        (
            Commands::build(big, |i| args!["SPACELOCK.RELEASE", key("s:m", i), OWNER]),
            Expect::Int(1),
        ),
    )?;
    let m2 = used_memory(&mut runner.admin)?;
    runner.load(1, acquire("s:m", big))?;
    let m3 = used_memory(&mut runner.admin)?;
    runner.load(2, set_nx("s:s", big))?;
    let m4 = used_memory(&mut runner.admin)?;
    let held = (m1 - m0) as f64 / big as f64;
    let residue = (m2 - m0) as f64 / big as f64;
    let plain = (m4 - m3) as f64 / big as f64;
    let _ = writeln!(
        raw,
        "{v},memory,0,m0={m0} m1={m1} m2={m2} m3={m3} m4={m4},{big}"
    );
    // The few-locks dbs.
    runner.load(3, acquire("t:m", small))?;
    runner.load(4, set_nx("t:s", small))?;

    // Spread the big set's accesses over the whole keyspace.
    let stride = |count: usize| -> usize {
        if count <= n {
            1
        } else {
            // An odd step coprime with most counts; the visit order only needs
            // to cover `n` distinct keys when n < count.
            let mut s = count / n;
            while gcd(s, count) != 1 {
                s += 1;
            }
            s
        }
    };
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let mk = |id: &'static str, db: u32, p: &'static str, count: usize, lua: bool| -> Case {
        let st = stride(count);
        let sha = sha_ref.clone();
        Case {
            id,
            stat: if lua { "evalsha" } else { "spacelock.refresh" },
            db,
            flush: false,
            prep_once: true,
            prep: None,
            warm: None,
            run: Box::new(move |_| {
                let sha = sha.clone();
                (
                    Commands::build(n, move |i| {
                        let k = key(p, (i * st) % count);
                        if lua {
                            args!["EVALSHA", sha, "1", k, OWNER, TTL]
                        } else {
                            args!["SPACELOCK.REFRESH", k, OWNER, TTL]
                        }
                    }),
                    Expect::Int(1),
                )
            }),
        }
    };
    let cases = vec![
        mk("refresh_big", 1, "s:m", big, false),
        mk("refresh_small", 3, "t:m", small, false),
        mk("lua_big", 2, "s:s", big, true),
        mk("lua_small", 4, "t:s", small, true),
    ];
    let s = runner.rounds(&cases, cfg.rounds)?;
    for c in &cases {
        for (r, x) in s[c.id].iter().enumerate() {
            let _ = writeln!(
                raw,
                "{v},{},{},{:.4},{:.0},{:.4}",
                c.id, r, x.us_per_call, x.rps, x.cpu_us
            );
        }
    }
    let (bn, sn) = (count_label(big), count_label(small));
    use Metric::{Cpu, Us};
    let pairs: [(String, &str, &str); 3] = [
        (format!("scale: REFRESH with {bn} locks held (spacelock column) vs {sn} held (baseline column)"), "refresh_big", "refresh_small"),
        (format!("scale: seed `EVALSHA` CAS-PEXPIRE with {bn} held (spacelock column) vs {sn} held (baseline column)"), "lua_big", "lua_small"),
        (format!("scale: REFRESH vs seed `EVALSHA` CAS-PEXPIRE, {bn} locks held"), "refresh_big", "lua_big"),
    ];
    for (what, a, b) in &pairs {
        rows.push(row(format!("{v} · {what} · server µs/call"), &s, a, b, Us));
        rows.push(row(
            format!("{v} · {what} · server CPU µs/call"),
            &s,
            a,
            b,
            Cpu,
        ));
    }
    rows.push(Row {
        workload: format!("{v} · memory per held lock (lock + fence key) vs plain `SET NX PX` lock, {bn} locks · bytes"),
        spacelock: format!("{held:.1}"),
        baseline: format!("{plain:.1}"),
        ratio: plain / held,
        spread: "n=1".into(),
    });
    rows.push(Row {
        workload: format!("{v} · memory kept per released lock name (its fence key) vs a held plain `SET NX PX` lock · bytes"),
        spacelock: format!("{residue:.1}"),
        baseline: format!("{plain:.1}"),
        ratio: plain / residue,
        spread: "n=1".into(),
    });
    Ok(())
}

/// `spacelock-bench profile`: one server per case under
/// `valgrind --tool=callgrind --instr-atstart=no`; instrumentation is switched
/// on (callgrind_control) only around the measured run, after the prepare
/// step, so the profile holds exactly PROFILE_N calls of the case and the
/// event loop/socket work around them. Env: PROFILE_SERVER (default: Valkey if
/// found, else Redis), PROFILE_N (20000), PROFILE_CASES (comma list of case
/// ids), PROFILE_OUT (directory, default target/bench/profile).
fn profile(cfg: &Cfg) -> Result<(), String> {
    let binary = std::env::var_os("PROFILE_SERVER")
        .map(PathBuf::from)
        .or_else(|| cfg.valkey.clone())
        .unwrap_or_else(|| cfg.redis.clone());
    let n = env_usize("PROFILE_N", 20_000);
    let out = std::env::var_os("PROFILE_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| cfg.root.join("target/bench/profile"));
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let wanted = std::env::var("PROFILE_CASES").unwrap_or_else(|_| {
        "refresh,set_ifeq,lua_refresh,pexpire,release,delifeq,lua_release,acquire,set_nx_px,fencekey,ping,get".into()
    });
    for id in wanted.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let file = out.join(format!("callgrind.{id}"));
        let wrapper: Vec<String> = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            &format!("--callgrind-out-file={}", file.display()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let srv = Server::start_wrapped(&wrapper, &binary, Some(&cfg.module), &[])?;
        let mut admin = srv.conn();
        let sha_rel = script_load(&mut admin, LUA_RELEASE)?;
        let sha_ref = script_load(&mut admin, LUA_REFRESH)?;
        let cases = workload1_cases(n, srv.is_valkey, &sha_rel, &sha_ref);
        let case = cases
            .iter()
            .find(|c| c.id == id)
            .ok_or_else(|| format!("no case {id:?} on {}", srv.name))?;
        let mut runner = Runner {
            cfg,
            port: srv.port,
            pid: srv.pid(),
            admin,
            prepared: HashSet::new(),
        };
        if case.flush {
            runner.admin.call(&["SELECT", &case.db.to_string()])?;
            runner.admin.call(&["FLUSHDB", "SYNC"])?;
        }
        if let Some(prep) = &case.prep {
            runner.load(case.db, prep(0))?;
        }
        if let Some(warm) = &case.warm {
            runner.load(case.db, warm(0))?;
        }
        let cmds = (case.run)(0);
        let toggle = |on: bool| -> Result<(), String> {
            let st = std::process::Command::new("callgrind_control")
                .args(["-i", if on { "on" } else { "off" }, &srv.pid().to_string()])
                .stdout(std::process::Stdio::null())
                .status()
                .map_err(|e| format!("callgrind_control: {e}"))?;
            if st.success() {
                Ok(())
            } else {
                Err(format!("callgrind_control -i failed: {st}"))
            }
        };
        toggle(true)?;
        let (_, took) = runner.load(case.db, cmds)?;
        toggle(false)?;
        eprintln!(
            "profiled {id} on {}: {n} calls in {:.1} s -> {}",
            srv.name,
            took.as_secs_f64(),
            file.display()
        );
        drop(srv);
    }
    Ok(())
}

/// Workloads 3 and 4: the `spacelock-bench-client` binary (bench/client,
/// built on the real spacelock-client crate) against a fresh Redis with the
/// module. Returns its rows and its MISSING notes.
fn workloads34(cfg: &Cfg, rows: &mut Vec<Row>, missing: &mut Vec<String>) -> Result<(), String> {
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

/// Workload 5: the Node client (clients/node) side by side with the seed's
/// own SpaceLockService run unmodified on ioredis (`bench/node/run.js`), on a
/// fresh Redis with the module: cycles/s and the heartbeat's process CPU.
fn workload5_node(cfg: &Cfg, rows: &mut Vec<Row>, missing: &mut Vec<String>) -> Result<(), String> {
    let tool = match std::env::var_os("BENCH_NODE_TOOL").map(PathBuf::from) {
        Some(t) if t.exists() => t,
        _ => {
            missing.push(format!(
                "workload 5 (Node client vs the seed's service: cycles/s, heartbeat CPU of 10 k leases): {}",
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
        missing.push(format!("workload 5: bench/node/run.js exited with {}", out.status));
    }
    Ok(())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn count_label(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{} M", n / 1_000_000)
    } else if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{} k", n / 1_000)
    } else {
        n.to_string()
    }
}

fn sh(cmd: &str) -> String {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
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
    let mut anchor = format!(
        "Anchor: no physical-limit anchor on this run: Valkey 9.1.2 unavailable ({}).",
        cfg.valkey_missing
    );

    if let Some(vk) = &cfg.valkey {
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
        servers.push(srv.name.clone());
    } else {
        eprintln!("skipping Valkey rows: {}", cfg.valkey_missing);
    }
    let srv = workload1(&cfg, &cfg.redis, &mut rows, &mut raw)?;
    servers.insert(0, srv.name.clone());
    drop(srv);
    workload2(&cfg, &mut rows, &mut raw)?;
    let mut missing = Vec::new();
    workloads34(&cfg, &mut rows, &mut missing)?;
    workload5_node(&cfg, &mut rows, &mut missing)?;

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
