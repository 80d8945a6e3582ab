//! Shared and counted locks: a shared ACQUIRE + RELEASE among 100 holders
//! side by side with a Lua read lock shaped like Redisson's (a hash of
//! holders, one timeout key per holder, and a release that walks every
//! holder to find the longest remaining ttl); the cost of one holder's
//! REFRESH, ACQUIRE and RELEASE at 1, 100 and 10 000 holders; and memory
//! per holder, per waiter and once the last holder has left.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::args;
use crate::load::{self, Commands, Expect};
use crate::measure::{commandstats, cpu_ns, row, Metric, Row, Sample};
use crate::names::settle;
use crate::resp::{encode, Conn};
use crate::runner::{script_load, Case, Runner};
use crate::server::Server;
use crate::{Cfg, TTL};

/// A read lock in the shape of Redisson's `RReadWriteLock.readLock()`:
/// `mode` and a per-owner hold count in one hash, and a timeout key per
/// hold that carries that holder's own expiry. KEYS: the lock, the owner's
/// timeout prefix. ARGV: ttl ms, owner. Replies 1 when granted, 0 when a
/// writer holds it.
const LUA_READ_ACQUIRE: &str = r#"
local mode = redis.call('hget', KEYS[1], 'mode')
if mode == false then
  redis.call('hset', KEYS[1], 'mode', 'read')
  redis.call('hset', KEYS[1], ARGV[2], 1)
  redis.call('set', KEYS[2] .. ':1', 1)
  redis.call('pexpire', KEYS[2] .. ':1', ARGV[1])
  redis.call('pexpire', KEYS[1], ARGV[1])
  return 1
end
if mode == 'read' then
  local ind = redis.call('hincrby', KEYS[1], ARGV[2], 1)
  local key = KEYS[2] .. ':' .. ind
  redis.call('set', key, 1)
  redis.call('pexpire', key, ARGV[1])
  local remain = redis.call('pttl', KEYS[1])
  redis.call('pexpire', KEYS[1], math.max(remain, tonumber(ARGV[1])))
  return 1
end
return 0"#;

/// Its release, as Redisson's read unlock: drop this hold, then give the
/// lock the longest remaining ttl of every other hold (a walk over all
/// holders), or delete it. KEYS: the lock, the owner's timeout prefix, the
/// lock's `{name}` prefix. ARGV: owner. Replies 1 when it held a share.
const LUA_READ_RELEASE: &str = r#"
local mode = redis.call('hget', KEYS[1], 'mode')
if mode == false then return 0 end
if redis.call('hexists', KEYS[1], ARGV[1]) == 0 then return 0 end
local counter = redis.call('hincrby', KEYS[1], ARGV[1], -1)
if counter == 0 then redis.call('hdel', KEYS[1], ARGV[1]) end
redis.call('del', KEYS[2] .. ':' .. (counter + 1))
if redis.call('hlen', KEYS[1]) > 1 then
  local maxRemain = -3
  for _, f in ipairs(redis.call('hkeys', KEYS[1])) do
    local c = tonumber(redis.call('hget', KEYS[1], f))
    if type(c) == 'number' then
      for i = c, 1, -1 do
        maxRemain = math.max(redis.call('pttl', KEYS[3] .. ':' .. f .. ':rwlock_timeout:' .. i), maxRemain)
      end
    end
  end
  if maxRemain > 0 then
    redis.call('pexpire', KEYS[1], maxRemain)
    return 1
  end
end
redis.call('del', KEYS[1])
return 1"#;

fn owner(kind: &str, i: usize) -> String {
    format!("{kind}-{i:08}")
}

fn timeout_prefix(lock: &str, owner: &str) -> String {
    format!("{{{lock}}}:{owner}:rwlock_timeout")
}

fn lua_acquire(sha: &str, lock: &str, owner: &str) -> Vec<Vec<u8>> {
    args![
        "EVALSHA",
        sha,
        "2",
        lock,
        timeout_prefix(lock, owner),
        TTL,
        owner
    ]
}

fn lua_release(sha: &str, lock: &str, owner: &str) -> Vec<Vec<u8>> {
    args![
        "EVALSHA",
        sha,
        "3",
        lock,
        timeout_prefix(lock, owner),
        format!("{{{lock}}}"),
        owner
    ]
}

/// `count` standing holders of `lock`: the module's shared ACQUIRE, or the
/// Lua read lock's.
fn standing(lock: &'static str, count: usize, lua: Option<String>) -> (Commands, Expect) {
    (
        Commands::build(count, move |i| {
            let o = owner("s", i);
            match &lua {
                Some(sha) => lua_acquire(sha, lock, &o),
                None => args!["SPACELOCK.ACQUIRE", lock, o, TTL, "SHARED"],
            }
        }),
        // A token, or the script's 1.
        Expect::Token,
    )
}

/// `n` pairs of ACQUIRE and RELEASE by a fresh owner each, the pair on one
/// connection (so a connection has at most one share in flight).
fn cycles(
    lock: &'static str,
    n: usize,
    round: usize,
    lua: Option<(String, String)>,
) -> (Commands, Expect) {
    (
        Commands::build(2 * n, move |j| {
            let o = owner(&format!("c{round}"), j / 2);
            match (&lua, j % 2) {
                (Some((acq, _)), 0) => lua_acquire(acq, lock, &o),
                (Some((_, rel)), _) => lua_release(rel, lock, &o),
                (None, 0) => args!["SPACELOCK.ACQUIRE", lock, o, TTL, "SHARED"],
                (None, _) => args!["SPACELOCK.RELEASE", lock, o],
            }
        })
        .grouped(2),
        Expect::Token,
    )
}

/// Times `cmds` on db 0 with `conns` connections × pipeline `depth`; the
/// sample is per pair: server µs of the `stats` commands together, pairs/s,
/// server CPU µs. Also returns the µs/call of each stat on its own.
fn pairs(
    runner: &mut Runner,
    conns: usize,
    depth: usize,
    (cmds, expect): (Commands, Expect),
    stats: &[&str],
) -> Result<(Sample, Vec<f64>), String> {
    let n = cmds.len();
    let cmds = Arc::new(cmds);
    runner.admin.call(&["CONFIG", "RESETSTAT"])?;
    let cpu0 = cpu_ns(runner.pid);
    let took = load::run(runner.port, 0, conns, depth, &cmds, &expect)?;
    let cpu1 = cpu_ns(runner.pid);
    let cs = commandstats(&mut runner.admin)?;
    let (mut calls, mut usec, mut each) = (0, 0, Vec::new());
    for s in stats {
        let (c, u) = cs.get(*s).copied().unwrap_or((0, 0));
        calls += c;
        usec += u;
        each.push(u as f64 / c.max(1) as f64);
    }
    if calls != n as u64 {
        return Err(format!(
            "INFO commandstats counted {calls} calls of {stats:?}, sent {n}"
        ));
    }
    let p = (n / 2) as f64;
    Ok((
        Sample {
            us_per_call: usec as f64 / p,
            rps: p / took.as_secs_f64(),
            cpu_us: match (cpu0, cpu1) {
                (Some(a), Some(b)) => (b - a) as f64 / 1000.0 / p,
                _ => f64::NAN,
            },
        },
        each,
    ))
}

/// The shared holders' counts the scaling rows use.
const SCALE: [(usize, &str); 3] = [(1, "sc:1"), (100, "sc:100"), (10_000, "sc:10k")];

pub(crate) fn shared(cfg: &Cfg, rows: &mut Vec<Row>, raw: &mut String) -> Result<String, String> {
    let srv = Server::start(&cfg.redis, Some(&cfg.module), &[])?;
    let v = srv.name.clone();
    let n = cfg.n;
    eprintln!("shared and counted locks on {v}: {n} pairs per case per round");
    let mut admin = srv.conn();
    let acq = script_load(&mut admin, LUA_READ_ACQUIRE)?;
    let rel = script_load(&mut admin, LUA_READ_RELEASE)?;
    let mut runner = Runner::new(cfg, &srv, admin);

    // 99 standing readers each side; the cycling owner is the 100th (one
    // more per connection in flight at most).
    runner.load(0, standing("rw:mod", 99, None))?;
    runner.load(0, standing("rw:lua", 99, Some(acq.clone())))?;
    for (h, lock) in SCALE {
        runner.load(0, standing(lock, h, None))?;
    }
    let (conns, depth) = (cfg.conns, cfg.depth);
    let mut s: std::collections::HashMap<&'static str, Vec<Sample>> = Default::default();
    let mut each: std::collections::HashMap<&'static str, Vec<Vec<f64>>> = Default::default();
    let rounds = cfg.rounds;
    for r in 0..rounds {
        let mut order: Vec<&'static str> = vec!["mod", "lua"];
        if r % 2 == 1 {
            order.reverse();
        }
        for which in order {
            let (lock, lua, stats): (&'static str, _, &[&str]) = if which == "mod" {
                ("rw:mod", None, &["spacelock.acquire", "spacelock.release"])
            } else {
                ("rw:lua", Some((acq.clone(), rel.clone())), &["evalsha"])
            };
            let (x, _) = pairs(&mut runner, conns, depth, cycles(lock, n, r, lua), stats)
                .map_err(|e| format!("shared cycle {which} (round {r}): {e}"))?;
            let _ = writeln!(
                raw,
                "{v},shared_cycle_{which},{r},{:.4},{:.0},{:.4}",
                x.us_per_call, x.rps, x.cpu_us
            );
            s.entry(if which == "mod" { "cycle_mod" } else { "cycle_lua" })
                .or_default()
                .push(x);
        }
        // One pair at a time, so the key has exactly h holders while the
        // pair's ACQUIRE and RELEASE run.
        for (h, lock) in SCALE {
            let (x, e) = pairs(
                &mut runner,
                1,
                2,
                cycles(lock, n / 4, r, None),
                &["spacelock.acquire", "spacelock.release"],
            )
            .map_err(|e| format!("scale {lock} (round {r}): {e}"))?;
            let _ = writeln!(
                raw,
                "{v},scale_cycle_{h},{r},{:.4},{:.0},{:.4}",
                x.us_per_call, x.rps, x.cpu_us
            );
            each.entry(lock).or_default().push(e);
        }
        eprintln!("  round {}/{rounds} done", r + 1);
    }
    use Metric::{Cpu, Rps, Us};
    let what = "shared ACQUIRE + RELEASE with 100 holders on one key (spacelock) vs a Lua read lock shaped like Redisson's RReadWriteLock (baseline)";
    rows.push(row(format!("{v} · {what} · pairs/s"), &s, "cycle_mod", "cycle_lua", Rps));
    rows.push(row(format!("{v} · {what} · server µs/pair"), &s, "cycle_mod", "cycle_lua", Us));
    rows.push(row(format!("{v} · {what} · server CPU µs/pair"), &s, "cycle_mod", "cycle_lua", Cpu));

    // REFRESH of one holder among h: the Runner's rounds (stat checked).
    let refresh = |id: &'static str, lock: &'static str, h: usize| -> Case {
        Case::new(
            id,
            "spacelock.refresh",
            None,
            Box::new(move |_| {
                (
                    Commands::build(n, move |i| {
                        args!["SPACELOCK.REFRESH", lock, owner("s", i % h), TTL]
                    }),
                    Expect::Int(1),
                )
            }),
        )
    };
    let cases = vec![
        refresh("refresh_1", "sc:1", 1),
        refresh("refresh_100", "sc:100", 100),
        refresh("refresh_10k", "sc:10k", 10_000),
    ];
    let rs = runner.rounds(&cases, rounds)?;
    let med = |v: Vec<f64>| crate::measure::median(&v);
    let _ = writeln!(raw, "{v},scale,0,see rows,,");
    let refresh_us: Vec<f64> = cases
        .iter()
        .map(|c| med(rs[c.id].iter().map(|x| x.us_per_call).collect()))
        .collect();
    let col = |lock: &str, k: usize| med(each[lock].iter().map(|e| e[k]).collect());
    let cost = |xs: [f64; 3]| format!("{:.3} / {:.3} / {:.3}", xs[0], xs[1], xs[2]);
    let per_op = [
        ("REFRESH of one holder", [refresh_us[0], refresh_us[1], refresh_us[2]]),
        (
            "shared ACQUIRE of one more holder",
            [col("sc:1", 0), col("sc:100", 0), col("sc:10k", 0)],
        ),
        (
            "RELEASE of one holder",
            [col("sc:1", 1), col("sc:100", 1), col("sc:10k", 1)],
        ),
    ];
    for (op, xs) in per_op {
        rows.push(Row {
            workload: format!("{v} · {op} at 1 / 100 / 10 k holders on the key · server µs/call (spacelock column: 10 k; baseline column: 1)"),
            spacelock: format!("{:.3}", xs[2]),
            baseline: format!("{:.3}", xs[0]),
            ratio: xs[0] / xs[2],
            spread: format!("1 / 100 / 10 k: {} (medians of {rounds})", cost(xs)),
        });
    }

    memory(&mut runner, &v, &acq, rows, raw)?;
    Ok(v)
}

/// `count` connections that each send `cmd(i)` and then block; returns
/// them once the server counts `count` more blocked clients.
fn blocked(runner: &mut Runner, count: usize, cmd: impl Fn(usize) -> Vec<Vec<u8>>) -> Result<Vec<Conn>, String> {
    let blocked_now = |runner: &mut Runner| {
        crate::measure::info_field(&mut runner.admin, "clients", "blocked_clients")
    };
    let before = blocked_now(runner)?;
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        let mut c = Conn::connect(runner.port).map_err(|e| e.to_string())?;
        c.call(&["PING"])?;
        let args = cmd(i);
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
        let mut buf = Vec::new();
        encode(&refs, &mut buf);
        c.send(&buf).map_err(|e| e.to_string())?;
        conns.push(c);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = blocked_now(runner)?;
        if now - before == count as i64 {
            return Ok(conns);
        }
        if Instant::now() > deadline {
            return Err(format!("{} of {count} clients blocked", now - before));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Closes `conns` and waits until no client is blocked.
fn unblock(runner: &mut Runner, conns: Vec<Conn>) -> Result<(), String> {
    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(30);
    while crate::measure::info_field(&mut runner.admin, "clients", "blocked_clients")? > 0 {
        if Instant::now() > deadline {
            return Err("blocked clients did not go away".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Memory settled for 1 s (client buffers shrink, dicts rehash).
fn steady(runner: &mut Runner) -> Result<i64, String> {
    Ok(settle(runner, false, Instant::now(), Duration::from_secs(10))?.0)
}

/// One life of a shared key with `HOLDERS` + 1 holders and a counted key
/// with `WAITERS` waiters: (memory with one holder, with all holders,
/// before the waiters, with the waiters), leaving both keys released.
fn one_life(runner: &mut Runner) -> Result<[i64; 4], String> {
    runner.load(0, standing("m:mod", 1, None))?;
    let m0 = steady(runner)?;
    runner.load(
        0,
        (
            Commands::build(HOLDERS, |i| {
                args!["SPACELOCK.ACQUIRE", "m:mod", owner("m", i), TTL, "SHARED"]
            }),
            Expect::Token,
        ),
    )?;
    let m1 = steady(runner)?;
    runner.load(
        0,
        (
            Commands::build(1, |_| {
                args!["SPACELOCK.ACQUIRE", "m:wait", owner("x", 0), TTL, "LIMIT", "1"]
            }),
            Expect::Token,
        ),
    )?;
    let w0 = steady(runner)?;
    let conns = blocked(runner, WAITERS, |i| {
        args!["SPACELOCK.ACQUIRE", "m:wait", owner("w", i), TTL, "LIMIT", "1", "WAIT", TTL]
    })?;
    let w1 = steady(runner)?;
    unblock(runner, conns)?;
    let release = |lock: &'static str, kind: &'static str, count: usize| {
        (
            Commands::build(count, move |i| {
                args!["SPACELOCK.RELEASE", lock, owner(kind, i)]
            }),
            Expect::Int(1),
        )
    };
    for (lock, kind, count) in [("m:mod", "m", HOLDERS), ("m:mod", "s", 1), ("m:wait", "x", 1)] {
        runner
            .load(0, release(lock, kind, count))
            .map_err(|e| format!("RELEASE of {lock}'s {kind} holders: {e}"))?;
    }
    Ok([m0, m1, w0, w1])
}

const HOLDERS: usize = 10_000;
const WAITERS: usize = 1_000;

/// Memory per holder (module and Lua), per waiter (and per client blocked
/// in a native BLPOP), and what is left once the last holder has left.
fn memory(
    runner: &mut Runner,
    v: &str,
    acq: &str,
    rows: &mut Vec<Row>,
    raw: &mut String,
) -> Result<(), String> {
    runner.admin.call(&["FLUSHALL", "SYNC"])?;
    runner
        .admin
        .call(&["CONFIG", "SET", "spacelock.fence-retention", "2000"])?;
    // A first life warms what a server allocates once (its dicts' tables,
    // the allocator's pages); the second is measured from where it left.
    one_life(runner)?;
    let (base, _, _) = settle(runner, true, Instant::now(), Duration::from_secs(60))?;
    let [m0, m1, w0, w1] = one_life(runner)?;
    let (after, d_after, _) = settle(runner, false, Instant::now(), Duration::from_secs(5))?;
    let (gone, d_gone, settled) = settle(runner, true, Instant::now(), Duration::from_secs(60))?;

    // Baselines: the Lua read lock's holders, and clients blocked in BLPOP.
    runner.load(0, standing("m:lua", 1, Some(acq.to_string())))?;
    let l0 = steady(runner)?;
    let acq2 = acq.to_string();
    runner.load(
        0,
        (
            Commands::build(HOLDERS, move |i| lua_acquire(&acq2, "m:lua", &owner("m", i))),
            Expect::Token,
        ),
    )?;
    let l1 = steady(runner)?;
    let b0 = steady(runner)?;
    let conns = blocked(runner, WAITERS, |_| args!["BLPOP", "m:list", "600"])?;
    let b1 = steady(runner)?;
    unblock(runner, conns)?;
    let _ = writeln!(
        raw,
        "{v},shared_memory,0,base={base} m0={m0} m1={m1} w0={w0} w1={w1} after={after} d_after={d_after} gone={gone} d_gone={d_gone} l0={l0} l1={l1} b0={b0} b1={b1},{HOLDERS}"
    );
    let per_holder = (m1 - m0) as f64 / HOLDERS as f64;
    let per_lua = (l1 - l0) as f64 / HOLDERS as f64;
    rows.push(Row {
        workload: format!("{v} · memory per extra holder of a shared key, 10 k holders (spacelock) vs the Lua read lock's hash field and timeout key (baseline) · bytes"),
        spacelock: format!("{per_holder:.1}"),
        baseline: format!("{per_lua:.1}"),
        ratio: per_lua / per_holder,
        spread: "n=1".into(),
    });
    let per_waiter = (w1 - w0) as f64 / WAITERS as f64;
    let per_blpop = (b1 - b0) as f64 / WAITERS as f64;
    rows.push(Row {
        workload: format!("{v} · memory per waiter (a client blocked in `ACQUIRE … LIMIT 1 WAIT`, its connection included), 1 k waiters (spacelock) vs a client blocked in `BLPOP` (baseline) · bytes"),
        spacelock: format!("{per_waiter:.1}"),
        baseline: format!("{per_blpop:.1}"),
        ratio: per_blpop / per_waiter,
        spread: format!("n=1; {:+.1} bytes per waiter over BLPOP", per_waiter - per_blpop),
    });
    rows.push(Row {
        workload: format!("{v} · used_memory right after the last holder and waiter left a shared and a counted key (spacelock column) vs before (baseline column; after one such life and its retention) · bytes"),
        spacelock: after.to_string(),
        baseline: base.to_string(),
        ratio: base as f64 / after as f64,
        spread: format!("n=1; {:+} bytes, DBSIZE {d_after} (the keys' fence records, until `spacelock.fence-retention`)", after - base),
    });
    rows.push(Row {
        workload: format!("{v} · the same once `spacelock.fence-retention` (2 000 ms here) has passed · bytes"),
        spacelock: gone.to_string(),
        baseline: base.to_string(),
        ratio: base as f64 / gone as f64,
        spread: if settled {
            format!("n=1; {:+} bytes, DBSIZE {d_gone}", gone - base)
        } else {
            format!("n=1; {:+} bytes, NOT settled (DBSIZE {d_gone})", gone - base)
        },
    });
    Ok(())
}
