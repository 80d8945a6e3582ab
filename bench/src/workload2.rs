//! Workload 2: REFRESH cost with few vs many locks held, and memory per lock.

use std::fmt::Write as _;

use crate::args;
use crate::load::{Commands, Expect};
use crate::measure::{row, used_memory, Metric, Row};
use crate::runner::{key, script_load, Case, Runner};
use crate::server::Server;
use crate::{Cfg, LUA_REFRESH, OWNER, TTL};

/// Workload 2: per-op cost with few vs many locks held, memory per lock.
pub(crate) fn workload2(
    cfg: &Cfg,
    rows: &mut Vec<Row>,
    raw: &mut String,
) -> Result<String, String> {
    let srv = Server::start(&cfg.redis, Some(&cfg.module), &[])?;
    let v = srv.name.clone();
    eprintln!(
        "workload 2 on {v}: {} vs {} locks held",
        cfg.small_n, cfg.scale_n
    );
    let mut admin = srv.conn();
    let sha_ref = script_load(&mut admin, LUA_REFRESH)?;
    let mut runner = Runner::new(cfg, &srv, admin);
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
        (format!("scale: Lua `EVALSHA` CAS-PEXPIRE with {bn} held (spacelock column) vs {sn} held (baseline column)"), "lua_big", "lua_small"),
        (format!("scale: REFRESH vs Lua `EVALSHA` CAS-PEXPIRE, {bn} locks held"), "refresh_big", "lua_big"),
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
    // One measurement each (bytes): ratio = baseline / spacelock.
    let bytes = |workload: String, ours: f64| Row {
        workload,
        spacelock: format!("{ours:.1}"),
        baseline: format!("{plain:.1}"),
        ratio: plain / ours,
        spread: "n=1".into(),
    };
    rows.push(bytes(
        format!("{v} · memory per held lock (lock + fence key) vs plain `SET NX PX` lock, {bn} locks · bytes"),
        held,
    ));
    rows.push(bytes(
        format!("{v} · memory kept per released lock name (its fence key) vs a held plain `SET NX PX` lock · bytes"),
        residue,
    ));
    Ok(v)
}

pub(crate) fn count_label(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{} M", n / 1_000_000)
    } else if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{} k", n / 1_000)
    } else {
        n.to_string()
    }
}
