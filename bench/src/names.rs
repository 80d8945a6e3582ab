//! Names that come and go: memory after N distinct lock names, each
//! ACQUIREd and RELEASEd once (a lock per job). A released name keeps its
//! fence key until `spacelock.fence-retention` after its last lease, so
//! `used_memory` should come back to where it was once that time has
//! passed. Measured with a short retention (`used_memory` before, right
//! after the last RELEASE, and once DBSIZE is 0 and `used_memory` has
//! stopped moving), then with the default retention right after the last
//! RELEASE: what a user sees while the fence keys last.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::args;
use crate::load::{Commands, Expect};
use crate::measure::Row;
use crate::runner::{key, Runner};
use crate::server::Server;
use crate::workload2::count_label;
use crate::{env_usize, Cfg, OWNER, TTL};

/// ACQUIRE then RELEASE of each of `n` names under `prefix`, the pair on
/// one connection. Both reply a positive integer (a token, then 1).
fn come_and_go(prefix: &'static str, n: usize) -> (Commands, Expect) {
    (
        Commands::build(2 * n, |j| {
            let k = key(prefix, j / 2);
            if j % 2 == 0 {
                args!["SPACELOCK.ACQUIRE", k, OWNER, TTL]
            } else {
                args!["SPACELOCK.RELEASE", k, OWNER]
            }
        })
        .grouped(2),
        Expect::Token,
    )
}

pub(crate) fn dbsize(runner: &mut Runner) -> Result<i64, String> {
    match runner.admin.call(&["DBSIZE"])? {
        crate::resp::Reply::Int(n) => Ok(n),
        r => Err(format!("DBSIZE: {}", r.show())),
    }
}

/// `used_memory` less the client buffers (`mem_clients_normal`): the
/// measuring connection's query and reply buffers grow and shrink with its
/// idle time (by tens of KB on Redis 7.0), which is not what is measured.
pub(crate) fn mem_now(runner: &mut Runner) -> Result<i64, String> {
    let text = runner
        .admin
        .call(&["INFO", "memory"])?
        .text()
        .unwrap_or_default();
    let field = |f: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(f).and_then(|v| v.strip_prefix(':')))
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    let used = field("used_memory").ok_or("INFO memory has no used_memory")?;
    Ok(used - field("mem_clients_normal").unwrap_or(0))
}

/// Polls every 100 ms until the memory has not moved for 10 polls (1 s)
/// and, if `empty`, DBSIZE is 0; or until `limit` has passed since `from`:
/// (memory, DBSIZE, whether it settled).
pub(crate) fn settle(
    runner: &mut Runner,
    empty: bool,
    from: Instant,
    limit: Duration,
) -> Result<(i64, i64, bool), String> {
    let (mut last, mut same) = (mem_now(runner)?, 0);
    let mut d = dbsize(runner)?;
    while from.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(100));
        let m = mem_now(runner)?;
        d = dbsize(runner)?;
        same = if (d == 0 || !empty) && m == last {
            same + 1
        } else {
            0
        };
        last = m;
        if same >= 10 {
            return Ok((m, d, true));
        }
    }
    Ok((last, d, false))
}

pub(crate) fn names(cfg: &Cfg, rows: &mut Vec<Row>, raw: &mut String) -> Result<String, String> {
    let srv = Server::start(&cfg.redis, Some(&cfg.module), &[])?;
    let v = srv.name.clone();
    let (n, short) = (cfg.names_n, cfg.names_retention_ms);
    let nl = count_label(n);
    eprintln!("names that come and go on {v}: {nl} names, fence retention {short} ms");
    let mut runner = Runner::new(cfg, &srv, srv.conn());
    let default = match runner
        .admin
        .call(&["CONFIG", "GET", "spacelock.fence-retention"])?
    {
        crate::resp::Reply::Array(Some(v)) if v.len() == 2 => v[1]
            .text()
            .ok_or("CONFIG GET spacelock.fence-retention: no value")?,
        r => {
            return Err(format!(
                "CONFIG GET spacelock.fence-retention: {}",
                r.show()
            ))
        }
    };
    let set_retention = |runner: &mut Runner, ms: &str| {
        runner
            .admin
            .call(&["CONFIG", "SET", "spacelock.fence-retention", ms])
            .map(drop)
    };
    set_retention(&mut runner, &short.to_string())?;
    let limit = Duration::from_millis(short)
        + Duration::from_secs(env_usize("BENCH_NAMES_DEADLINE_S", 120) as u64);

    // Warm-up: the first writes of a fresh server allocate once (the
    // server's and the module's own structures); 1 000 names whose
    // retention has passed put that in the baseline.
    let cold = mem_now(&mut runner)?;
    runner.load(0, come_and_go("n:w", 1_000))?;
    let (m0, _, warm) = settle(&mut runner, true, Instant::now(), limit)?;
    if !warm {
        return Err(format!(
            "{v}: the warm-up's fence keys were not gone after {limit:?}"
        ));
    }

    // Short retention: before, right after, once it has passed.
    let t = Instant::now();
    runner.load(0, come_and_go("n:a", n))?;
    let took = t.elapsed().as_secs_f64();
    let (m1, d1) = (mem_now(&mut runner)?, dbsize(&mut runner)?);
    let released = Instant::now();
    let (m2, d2, settled) = settle(&mut runner, true, released, limit)?;
    let waited = released.elapsed().as_secs_f64();

    // The default retention, right after.
    set_retention(&mut runner, &default)?;
    let m3 = mem_now(&mut runner)?;
    runner.load(0, come_and_go("n:b", n))?;
    let (m4, d4, _) = settle(&mut runner, false, Instant::now(), Duration::from_secs(5))?;
    let _ = writeln!(
        raw,
        "{v},names,0,cold={cold} m0={m0} m1={m1} d1={d1} m2={m2} d2={d2} waited={waited:.1}s m3={m3} m4={m4} d4={d4} took={took:.1}s,{n}"
    );

    let pct = |m: i64, base: i64| 100.0 * (m - base) as f64 / base as f64;
    let what = format!("{nl} distinct lock names, each ACQUIREd and RELEASEd once");
    let bytes = |workload: String, ours: i64, base: i64, spread: String| Row {
        workload,
        spacelock: ours.to_string(),
        baseline: base.to_string(),
        ratio: base as f64 / ours as f64,
        spread,
    };
    rows.push(bytes(
        format!("{v} · {what}, `spacelock.fence-retention` {short} ms: used_memory (less client buffers) right after the last RELEASE (spacelock column) vs before (baseline column) · bytes"),
        m1,
        m0,
        format!(
            "n=1; {:+.2} % of before, DBSIZE {d1}; before = after 1 000 warm-up names ({:+} bytes over the fresh server, once)",
            pct(m1, m0),
            m0 - cold
        ),
    ));
    rows.push(bytes(
        format!("{v} · {what}, `spacelock.fence-retention` {short} ms: used_memory (less client buffers) once the retention has passed, DBSIZE 0 (spacelock column) vs before (baseline column) · bytes"),
        m2,
        m0,
        if settled {
            format!("n=1; residue {:+.2} % of before (settled {waited:.1} s after the last RELEASE)", pct(m2, m0))
        } else {
            format!("n=1; residue {:+.2} % of before; NOT settled after {waited:.0} s (DBSIZE {d2})", pct(m2, m0))
        },
    ));
    rows.push(bytes(
        format!("{v} · {what} again, the default `spacelock.fence-retention` {default} ms: used_memory (less client buffers) right after the last RELEASE (spacelock column) vs before (baseline column) · bytes"),
        m4,
        m3,
        format!(
            "n=1; {:+.1} % of before, {:.1} bytes per name while the fence keys last (DBSIZE {d4})",
            pct(m4, m3),
            (m4 - m3) as f64 / n as f64
        ),
    ));
    Ok(v)
}
