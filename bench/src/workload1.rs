//! Workload 1: per-call server cost of each spacelock command next to the
//! native command and the existing service's Lua script it replaces.

use std::fmt::Write as _;
use std::path::Path;

use crate::args;
use crate::load::{Commands, Expect};
use crate::measure::{row, Metric, Row};
use crate::runner::{key, script_load, Case, Gen, Runner};
use crate::server::Server;
use crate::{Cfg, LUA_REFRESH, LUA_RELEASE, OWNER, TTL};

/// Workload 1 cases on one server.
/// A prepare step: `n` keys under `prefix` taken with `SET NX PX` by our
/// owner (the state a REFRESH or RELEASE, or their baselines, act on).
fn held(n: usize, prefix: &'static str) -> Option<Gen> {
    Some(Box::new(move |_| {
        (
            Commands::build(n, |i| args!["SET", key(prefix, i), OWNER, "PX", TTL, "NX"]),
            Expect::Ok,
        )
    }))
}

/// `n` keys under `prefix` set to our owner with a ttl (`SET … PX`), for the
/// reference commands that need a key to act on.
fn plain_set(n: usize, prefix: &'static str) -> Option<Gen> {
    Some(Box::new(move |_| {
        (
            Commands::build(n, |i| args!["SET", key(prefix, i), OWNER, "PX", TTL]),
            Expect::Ok,
        )
    }))
}

/// `n` keys under `prefix` taken with SPACELOCK.ACQUIRE by our owner.
fn acquired(n: usize, prefix: &'static str) -> Gen {
    Box::new(move |_| {
        (
            Commands::build(n, |i| {
                args!["SPACELOCK.ACQUIRE", key(prefix, i), OWNER, TTL]
            }),
            Expect::Token,
        )
    })
}

/// SPACELOCK.ACQUIRE (`release` false) or SPACELOCK.RELEASE of `n` keys
/// under `prefix`, a new set of names every round.
fn per_round(n: usize, prefix: &'static str, release: bool) -> Gen {
    Box::new(move |r| {
        let p = format!("{prefix}:{r}");
        if release {
            let cmds = Commands::build(n, |i| args!["SPACELOCK.RELEASE", key(&p, i), OWNER]);
            (cmds, Expect::Int(1))
        } else {
            let cmds = Commands::build(n, |i| args!["SPACELOCK.ACQUIRE", key(&p, i), OWNER, TTL]);
            (cmds, Expect::Token)
        }
    })
}

/// A SPACELOCK.REFRESH of each of the `n` keys under `prefix` we hold.
fn refreshed(n: usize, prefix: &'static str) -> Gen {
    Box::new(move |_| {
        (
            Commands::build(n, |i| {
                args!["SPACELOCK.REFRESH", key(prefix, i), OWNER, TTL]
            }),
            Expect::Int(1),
        )
    })
}

pub(crate) fn workload1_cases(n: usize, valkey: bool, sha_rel: &str, sha_ref: &str) -> Vec<Case> {
    let (rel, refr) = (sha_rel.to_string(), sha_ref.to_string());
    let rel2 = rel.clone();
    let refr2 = refr.clone();
    let mut cases = vec![
        Case::fresh(
            "acquire",
            "spacelock.acquire",
            Box::new(move |r| {
                let p = format!("a:m:{r}");
                (
                    Commands::build(n, |i| args!["SPACELOCK.ACQUIRE", key(&p, i), OWNER, TTL]),
                    Expect::Token,
                )
            }),
        ),
        Case {
            // The service's steady state: a name locked and released before,
            // whose fence key is there with its expiry.
            id: "acquire_again",
            stat: "spacelock.acquire",
            db: 3,
            flush: true,
            prep_once: false,
            prep: Some(per_round(n, "g:m", false)),
            warm: Some(per_round(n, "g:m", true)),
            run: per_round(n, "g:m", false),
        },
        Case::fresh(
            "set_nx_px",
            "set",
            Box::new(move |r| {
                let p = format!("a:s:{r}");
                (
                    Commands::build(n, |i| args!["SET", key(&p, i), OWNER, "PX", TTL, "NX"]),
                    Expect::Ok,
                )
            }),
        ),
        Case {
            // Steady state: a lease refreshed before (a heartbeat's 2nd, 3rd… call).
            id: "refresh",
            stat: "spacelock.refresh",
            db: 0,
            flush: false,
            prep_once: true,
            prep: Some(acquired(n, "r:m")),
            warm: Some(refreshed(n, "r:m")),
            run: refreshed(n, "r:m"),
        },
        Case {
            // The first REFRESH after ACQUIRE: the value is still the embstr
            // the ACQUIRE wrote (StringDMA unshares it into a raw string).
            id: "refresh_first",
            stat: "spacelock.refresh",
            db: 2,
            flush: true,
            prep_once: false,
            prep: Some(acquired(n, "f:m")),
            warm: None,
            run: refreshed(n, "f:m"),
        },
        Case::new(
            "lua_refresh",
            "evalsha",
            held(n, "r:s"),
            Box::new(move |_| {
                (
                    Commands::build(n, |i| {
                        args!["EVALSHA", refr, "1", key("r:s", i), OWNER, TTL]
                    }),
                    Expect::Int(1),
                )
            }),
        ),
        Case {
            prep_once: false,
            ..Case::new(
                "release",
                "spacelock.release",
                Some(acquired(n, "d:m")),
                Box::new(move |_| {
                    (
                        Commands::build(n, |i| args!["SPACELOCK.RELEASE", key("d:m", i), OWNER]),
                        Expect::Int(1),
                    )
                }),
            )
        },
        Case {
            prep_once: false,
            ..Case::new(
                "lua_release",
                "evalsha",
                held(n, "d:s"),
                Box::new(move |_| {
                    (
                        Commands::build(n, |i| args!["EVALSHA", rel, "1", key("d:s", i), OWNER]),
                        Expect::Int(1),
                    )
                }),
            )
        },
        Case::new(
            "fencekey",
            "spacelock.fencekey",
            None,
            Box::new(move |_| {
                (
                    Commands::build(n, |i| args!["SPACELOCK.FENCEKEY", key("r:m", i)]),
                    Expect::AnyBulk,
                )
            }),
        ),
        Case::new(
            "ping",
            "ping",
            None,
            Box::new(move |_| (Commands::build(n, |_| args!["PING"]), Expect::Pong)),
        ),
        Case::new(
            "get",
            "get",
            plain_set(n, "r:s"),
            Box::new(move |_| {
                (
                    Commands::build(n, |i| args!["GET", key("r:s", i)]),
                    Expect::Bulk(OWNER.into()),
                )
            }),
        ),
        Case::new(
            "pexpire",
            "pexpire",
            plain_set(n, "r:s"),
            Box::new(move |_| {
                (
                    Commands::build(n, |i| args!["PEXPIRE", key("r:s", i), TTL]),
                    Expect::Int(1),
                )
            }),
        ),
    ];
    if valkey {
        cases.push(Case::new(
            "set_ifeq",
            "set",
            held(n, "r:v"),
            Box::new(move |_| {
                (
                    Commands::build(n, |i| {
                        args!["SET", key("r:v", i), OWNER, "IFEQ", OWNER, "PX", TTL]
                    }),
                    Expect::Ok,
                )
            }),
        ));
        cases.push(Case {
            prep_once: false,
            ..Case::new(
                "delifeq",
                "delifeq",
                held(n, "d:v"),
                Box::new(move |_| {
                    (
                        Commands::build(n, |i| args!["DELIFEQ", key("d:v", i), OWNER]),
                        Expect::Int(1),
                    )
                }),
            )
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

pub(crate) fn workload1(
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
    let mut runner = Runner::new(cfg, &srv, admin);
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
            "REFRESH held key vs Lua `EVALSHA` CAS-PEXPIRE",
            "refresh",
            "lua_refresh",
            &[Us, Cpu, Rps],
        ),
        (
            "first REFRESH after ACQUIRE vs Lua `EVALSHA` CAS-PEXPIRE",
            "refresh_first",
            "lua_refresh",
            &[Us, Cpu],
        ),
        (
            "RELEASE held key vs Lua `EVALSHA` CAS-DEL",
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

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
