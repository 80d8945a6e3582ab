//! Workloads 3 and 4 of `make bench`, through the real `spacelock-client`:
//!
//! * 3a: `with_space_lock` cycles/s (empty body) vs raw ACQUIRE + RELEASE
//!   round trips on the same multiplexed connection, alternated.
//! * 3b: one process holding L leases (ttl 3 s) for H seconds: client CPU %,
//!   server CPU %, refreshes/s seen by the server, leases lost; vs the seed's
//!   design (a timer per lease sending the Lua text with `EVAL`).
//! * 4: 8 clients competing for one key with a 0.5 ms critical section:
//!   sections/s, wait-to-acquire and handoff latency, `WAIT` vs the common
//!   polling loop (retry ACQUIRE every 10 ms ± 5 ms).
//!
//! Started by the main bench tool against a server it runs; prints
//! `ROW\tworkload\tspacelock\tbaseline\tratio\tspread` and `MISSING\ttext`
//! lines on stdout, progress on stderr.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use spacelock_client::{AcquireReply, Options, ReleaseReply, SpaceLock};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const LUA_RELEASE: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end"#;
const LUA_REFRESH: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("pexpire", KEYS[1], ARGV[2]) else return 0 end"#;

fn env_f(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This process's CPU time (all threads, from schedstat: ns resolution), seconds.
fn self_cpu_s() -> f64 {
    server_cpu_s(std::process::id())
}

/// The server's CPU time (all threads), seconds.
fn server_cpu_s(pid: u32) -> f64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return f64::NAN;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum::<u64>() as f64
        / 1e9
}

async fn cmd_calls(con: &mut MultiplexedConnection, name: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .unwrap_or_default();
    let prefix = format!("cmdstat_{name}:");
    info.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return f64::NAN;
    }
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn spread(r: &[f64]) -> String {
    let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.2}–{hi:.2} (n={})", r.len())
}

fn fmt(x: f64) -> String {
    if x >= 1000.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

fn row(workload: &str, a: f64, b: f64, ratio: f64, spread: &str) {
    println!(
        "ROW\t{workload}\t{}\t{}\t{ratio:.2}\t{spread}",
        fmt(a),
        fmt(b)
    );
}

struct Env {
    client: redis::Client,
    server: String,
    pid: u32,
    quick: bool,
}

impl Env {
    async fn conn(&self) -> Res<MultiplexedConnection> {
        Ok(self.client.get_multiplexed_async_connection().await?)
    }
}

// ---------------------------------------------------------------- 3a

async fn cycles_client(locks: &SpaceLock<MultiplexedConnection>, secs: f64, tag: &str) -> Res<f64> {
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed().as_secs_f64() < secs {
        let out = locks
            .with_space_lock(&format!("cyc:{tag}:{n}"), |_lease| async {})
            .await?;
        if !out.is_ran() {
            return Err(format!("with_space_lock did not run: {:?}", out.skipped()).into());
        }
        n += 1;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

async fn cycles_raw(
    con: &mut MultiplexedConnection,
    owner: &str,
    secs: f64,
    tag: &str,
) -> Res<f64> {
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed().as_secs_f64() < secs {
        let key = format!("spacelock:lock:cyc:{tag}:{n}");
        let token: Option<i64> = redis::cmd("SPACELOCK.ACQUIRE")
            .arg(&key)
            .arg(owner)
            .arg(30_000)
            .query_async(con)
            .await?;
        if token.is_none() {
            return Err("raw ACQUIRE of a fresh key returned nil".into());
        }
        let released: i64 = redis::cmd("SPACELOCK.RELEASE")
            .arg(&key)
            .arg(owner)
            .query_async(con)
            .await?;
        if released != 1 {
            return Err("raw RELEASE of a held key returned 0".into());
        }
        n += 1;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

async fn workload3a(env: &Env) -> Res<()> {
    let secs = env_f("BENCH_CYCLE_S", if env.quick { 0.5 } else { 2.0 });
    let rounds = if env.quick { 2 } else { 4 };
    let con = env.conn().await?;
    let locks = SpaceLock::new(con.clone(), Options::default().ttl(Duration::from_secs(30)));
    let owner = locks.owner().to_string();
    let mut raw_con = con;
    let (mut a, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (x, y) = if round % 2 == 0 {
            let x = cycles_client(&locks, secs, &format!("c{round}")).await?;
            (
                x,
                cycles_raw(&mut raw_con, &owner, secs, &format!("r{round}")).await?,
            )
        } else {
            let y = cycles_raw(&mut raw_con, &owner, secs, &format!("r{round}")).await?;
            (cycles_client(&locks, secs, &format!("c{round}")).await?, y)
        };
        eprintln!("  cycles round {round}: with_space_lock {x:.0}/s, raw {y:.0}/s");
        a.push(x);
        b.push(y);
        r.push(x / y);
    }
    row(
        &format!("{} · client: `with_space_lock` cycles/s (empty body) vs raw ACQUIRE + RELEASE round trips, same connection · cycles/s", env.server),
        median(&a),
        median(&b),
        median(&r),
        &spread(&r),
    );
    Ok(())
}

// ---------------------------------------------------------------- 3b

struct Heartbeat {
    client_cpu_pct: f64,
    server_cpu_pct: f64,
    refresh_per_s: f64,
    lost: usize,
}

async fn heartbeat_client(
    env: &Env,
    leases: usize,
    ttl: Duration,
    hold: Duration,
) -> Res<Heartbeat> {
    let mut stats = env.conn().await?;
    let locks = SpaceLock::new(
        env.conn().await?,
        Options::default().ttl(ttl).key_prefix("hb:sl:"),
    );
    let held = Arc::new(AtomicUsize::new(0));
    let lost = Arc::new(AtomicUsize::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let lost_in_window = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::with_capacity(leases);
    for i in 0..leases {
        let (locks, held, lost, stop, measuring, lw) = (
            locks.clone(),
            held.clone(),
            lost.clone(),
            stop.clone(),
            measuring.clone(),
            lost_in_window.clone(),
        );
        tasks.push(tokio::spawn(async move {
            locks
                .with_space_lock(&format!("{i}"), |lease| async move {
                    held.fetch_add(1, Ordering::Relaxed);
                    let stopped = stop.notified();
                    tokio::select! {
                        _ = stopped => {}
                        _ = lease.lost() => {
                            lost.fetch_add(1, Ordering::Relaxed);
                            if measuring.load(Ordering::Relaxed) {
                                lw.fetch_add(1, Ordering::Relaxed);
                            }
                            stop.notified().await;
                        }
                    }
                })
                .await
        }));
    }
    let t = Instant::now();
    while held.load(Ordering::Relaxed) < leases {
        if t.elapsed() > Duration::from_secs(60) {
            return Err("leases not all acquired within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(ttl).await; // settle into the steady refresh pattern
    measuring.store(true, Ordering::Relaxed);
    let (c0, s0, n0, t0) = (
        self_cpu_s(),
        server_cpu_s(env.pid),
        cmd_calls(&mut stats, "spacelock.refresh").await,
        Instant::now(),
    );
    tokio::time::sleep(hold).await;
    let (c1, s1, n1, w) = (
        self_cpu_s(),
        server_cpu_s(env.pid),
        cmd_calls(&mut stats, "spacelock.refresh").await,
        t0.elapsed().as_secs_f64(),
    );
    measuring.store(false, Ordering::Relaxed);
    stop.notify_waiters();
    // notify_waiters only wakes current waiters; keep notifying until done.
    let mut all = futures_join(tasks, &stop).await;
    all.retain(|ran| !ran);
    let lost_total = lost.load(Ordering::Relaxed);
    if !all.is_empty() {
        eprintln!("  {} lease bodies did not run", all.len());
    }
    eprintln!("  spacelock-client heartbeat: {lost_total} leases lost overall");
    Ok(Heartbeat {
        client_cpu_pct: 100.0 * (c1 - c0) / w,
        server_cpu_pct: 100.0 * (s1 - s0) / w,
        refresh_per_s: (n1 - n0) as f64 / w,
        lost: lost_in_window.load(Ordering::Relaxed),
    })
}

async fn futures_join(
    tasks: Vec<
        tokio::task::JoinHandle<Result<spacelock_client::Outcome<()>, spacelock_client::Error>>,
    >,
    stop: &tokio::sync::Notify,
) -> Vec<bool> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        let mut t = t;
        loop {
            tokio::select! {
                r = &mut t => {
                    out.push(matches!(r, Ok(Ok(o)) if o.is_ran()));
                    break;
                }
                _ = tokio::time::sleep(Duration::from_millis(5)) => stop.notify_waiters(),
            }
        }
    }
    out
}

/// The seed's design: SET NX PX, then one timer per lease sending the whole
/// refresh script with EVAL every ttl/3.
async fn heartbeat_seed(env: &Env, leases: usize, ttl: Duration, hold: Duration) -> Res<Heartbeat> {
    let mut stats = env.conn().await?;
    let con = env.conn().await?;
    let owner = "6f1c2e4a-5b3d-4e8f-9a0b-1c2d3e4f5a6b";
    let ttl_ms = ttl.as_millis() as u64;
    let mut pipe = redis::pipe();
    for i in 0..leases {
        pipe.cmd("SET")
            .arg(format!("hb:seed:{i}"))
            .arg(owner)
            .arg("PX")
            .arg(ttl_ms)
            .arg("NX");
    }
    let oks: Vec<Option<String>> = pipe.query_async(&mut con.clone()).await?;
    if oks.iter().any(|o| o.as_deref() != Some("OK")) {
        return Err("seed baseline: SET NX PX did not acquire every lease".into());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let lost = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(leases);
    let period = Duration::from_millis((ttl_ms / 3).max(1));
    for i in 0..leases {
        let (mut con, stop, lost, measuring) =
            (con.clone(), stop.clone(), lost.clone(), measuring.clone());
        tasks.push(tokio::spawn(async move {
            let key = format!("hb:seed:{i}");
            // Leases acquired at different times tick at different phases.
            let phase = period.mul_f64(i as f64 / leases as f64);
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + period + phase, period);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let r: redis::RedisResult<i64> = redis::cmd("EVAL")
                    .arg(LUA_REFRESH)
                    .arg(1)
                    .arg(&key)
                    .arg(owner)
                    .arg(ttl_ms)
                    .query_async(&mut con)
                    .await;
                if !matches!(r, Ok(1)) && measuring.load(Ordering::Relaxed) {
                    lost.fetch_add(1, Ordering::Relaxed);
                }
            }
            let _: redis::RedisResult<i64> = redis::cmd("EVAL")
                .arg(LUA_RELEASE)
                .arg(1)
                .arg(&key)
                .arg(owner)
                .query_async(&mut con)
                .await;
        }));
    }
    tokio::time::sleep(ttl).await;
    measuring.store(true, Ordering::Relaxed);
    let (c0, s0, n0, t0) = (
        self_cpu_s(),
        server_cpu_s(env.pid),
        cmd_calls(&mut stats, "eval").await,
        Instant::now(),
    );
    tokio::time::sleep(hold).await;
    let (c1, s1, n1, w) = (
        self_cpu_s(),
        server_cpu_s(env.pid),
        cmd_calls(&mut stats, "eval").await,
        t0.elapsed().as_secs_f64(),
    );
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    Ok(Heartbeat {
        client_cpu_pct: 100.0 * (c1 - c0) / w,
        server_cpu_pct: 100.0 * (s1 - s0) / w,
        refresh_per_s: (n1 - n0) as f64 / w,
        lost: lost.load(Ordering::Relaxed),
    })
}

async fn workload3b(env: &Env) -> Res<()> {
    let leases = env_f("BENCH_LEASES", if env.quick { 1000.0 } else { 10_000.0 }) as usize;
    let hold_s = env_f("BENCH_HOLD_S", if env.quick { 4.0 } else { 30.0 });
    let seed_hold_s = env_f("BENCH_SEED_HOLD_S", if env.quick { 4.0 } else { 12.0 });
    let ttl = Duration::from_millis(env_f("BENCH_LEASE_TTL_MS", 3000.0) as u64);
    let a = heartbeat_client(env, leases, ttl, Duration::from_secs_f64(hold_s)).await?;
    eprintln!(
        "  heartbeat spacelock-client: {:.1} % client CPU, {:.1} % server CPU, {:.0} refreshes/s, {} lost",
        a.client_cpu_pct, a.server_cpu_pct, a.refresh_per_s, a.lost
    );
    let b = heartbeat_seed(env, leases, ttl, Duration::from_secs_f64(seed_hold_s)).await?;
    eprintln!(
        "  heartbeat seed-style: {:.1} % client CPU, {:.1} % server CPU, {:.0} refreshes/s, {} lost",
        b.client_cpu_pct, b.server_cpu_pct, b.refresh_per_s, b.lost
    );
    let what = format!(
        "{} · client heartbeat, {leases} leases, ttl {} s, held {hold_s:.0} s (baseline: the seed's timer per lease + `EVAL`, {seed_hold_s:.0} s)",
        env.server,
        ttl.as_secs_f64()
    );
    row(
        &format!("{what} · client CPU % of one core"),
        a.client_cpu_pct,
        b.client_cpu_pct,
        b.client_cpu_pct / a.client_cpu_pct,
        "n=1",
    );
    row(
        &format!("{what} · server CPU % of one core"),
        a.server_cpu_pct,
        b.server_cpu_pct,
        b.server_cpu_pct / a.server_cpu_pct,
        "n=1",
    );
    row(
        &format!("{what} · refreshes/s at the server (ratio spacelock/baseline)"),
        a.refresh_per_s,
        b.refresh_per_s,
        a.refresh_per_s / b.refresh_per_s,
        "n=1",
    );
    row(
        &format!("{what} · leases lost or refreshes failed in the window (ratio (baseline+1)/(spacelock+1))"),
        a.lost as f64,
        b.lost as f64,
        (b.lost as f64 + 1.0) / (a.lost as f64 + 1.0),
        "n=1",
    );
    Ok(())
}

// ---------------------------------------------------------------- 4

struct Contention {
    sections_per_s: f64,
    wait_ms: Vec<f64>,
    handoff_ms: Vec<f64>,
    /// Jain's fairness index of the sections per client: 1.0 = all equal,
    /// 1/8 = one client took them all.
    fairness: f64,
}

async fn contend(env: &Env, wait: bool, secs: f64, tag: &str) -> Res<Contention> {
    let clients = 8;
    let cs = Duration::from_micros(500);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let last_release = Arc::new(AtomicU64::new(u64::MAX));
    let last_holder = Arc::new(AtomicUsize::new(usize::MAX));
    let sections = Arc::new(AtomicU64::new(0));
    let name = format!("contend:{tag}");
    let mut tasks = Vec::new();
    for c in 0..clients {
        let locks = SpaceLock::new(
            env.conn().await?,
            Options::default().ttl(Duration::from_secs(10)),
        )
        .with_wait_connector(env.client.clone());
        let (last_release, last_holder, sections, name) = (
            last_release.clone(),
            last_holder.clone(),
            sections.clone(),
            name.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng =
                0x9E37_79B9_7F4A_7C15u64 ^ (c as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407);
            let (mut waits, mut handoffs, mut mine) = (Vec::new(), Vec::new(), 0u64);
            while Instant::now() < deadline {
                let want = Instant::now();
                loop {
                    let r = if wait {
                        locks.acquire_wait(&name, Duration::from_secs(2)).await
                    } else {
                        locks.acquire(&name).await
                    };
                    match r {
                        Ok(AcquireReply::Acquired { .. }) => break,
                        Ok(AcquireReply::Held) if wait => {
                            if Instant::now() >= deadline {
                                return Ok::<_, spacelock_client::Error>((waits, handoffs, mine));
                            }
                        }
                        Ok(AcquireReply::Held) => {
                            if Instant::now() >= deadline {
                                return Ok((waits, handoffs, mine));
                            }
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            let jitter_us = (rng % 10_001) as i64 - 5_000;
                            tokio::time::sleep(Duration::from_micros((10_000 + jitter_us) as u64))
                                .await;
                        }
                        Err(e) => return Err(e),
                    }
                }
                let got = Instant::now();
                waits.push((got - want).as_secs_f64() * 1e3);
                let lr = last_release.load(Ordering::Acquire);
                // A handoff is a grant to another client than the last holder.
                let prev = last_holder.swap(c, Ordering::AcqRel);
                if lr != u64::MAX && prev != c {
                    let got_ns = (got - start).as_nanos() as u64;
                    handoffs.push(got_ns.saturating_sub(lr) as f64 / 1e6);
                }
                let t = Instant::now();
                while t.elapsed() < cs {
                    std::hint::spin_loop();
                }
                sections.fetch_add(1, Ordering::Relaxed);
                mine += 1;
                last_release.store(
                    (Instant::now() - start).as_nanos() as u64,
                    Ordering::Release,
                );
                match locks.release(&name).await? {
                    ReleaseReply::Released => {}
                    ReleaseReply::NotOwner => {
                        eprintln!("  contention: a release found the lock not ours");
                    }
                }
            }
            Ok((waits, handoffs, mine))
        }));
    }
    let (mut wait_ms, mut handoff_ms, mut per_client) = (Vec::new(), Vec::new(), Vec::new());
    for t in tasks {
        let (w, h, m) = t.await??;
        per_client.push(m as f64);
        wait_ms.extend(w);
        handoff_ms.extend(h);
    }
    let el = start.elapsed().as_secs_f64();
    wait_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    handoff_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(Contention {
        sections_per_s: sections.load(Ordering::Relaxed) as f64 / el,
        wait_ms,
        handoff_ms,
        fairness: {
            let sum: f64 = per_client.iter().sum();
            let sq: f64 = per_client.iter().map(|x| x * x).sum();
            sum * sum / (per_client.len() as f64 * sq)
        },
    })
}

async fn workload4(env: &Env) -> Res<()> {
    let secs = env_f("BENCH_CONTEND_S", if env.quick { 2.0 } else { 5.0 });
    let rounds = if env.quick { 1 } else { 2 };
    // Does the module speak WAIT yet?
    let probe = SpaceLock::new(
        env.conn().await?,
        Options::default().ttl(Duration::from_secs(1)),
    )
    .with_wait_connector(env.client.clone());
    let wait_ok = match probe
        .acquire_wait("contend:probe", Duration::from_millis(50))
        .await
    {
        Ok(AcquireReply::Acquired { .. }) => {
            let _ = probe.release("contend:probe").await;
            true
        }
        Ok(AcquireReply::Held) => true,
        Err(e) => {
            eprintln!("  WAIT unsupported: {e}");
            false
        }
    };
    let mut poll = Vec::new();
    let mut waitv = Vec::new();
    for r in 0..rounds {
        let order = if r % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for w in order {
            if w && !wait_ok {
                continue;
            }
            let c = contend(env, w, secs, &format!("{r}{w}")).await?;
            eprintln!(
                "  contention {}: {:.0} sections/s, wait p50 {:.3} p99 {:.3} max {:.3} ms, handoff p50 {:.3} p99 {:.3} ms",
                if w { "WAIT" } else { "polling" },
                c.sections_per_s,
                pct(&c.wait_ms, 50.0),
                pct(&c.wait_ms, 99.0),
                pct(&c.wait_ms, 100.0),
                pct(&c.handoff_ms, 50.0),
                pct(&c.handoff_ms, 99.0)
            );
            if w {
                waitv.push(c)
            } else {
                poll.push(c)
            }
        }
    }
    let what = format!(
        "{} · contention, 8 clients on 1 key, 0.5 ms critical section, {secs:.0} s: `WAIT` vs polling ACQUIRE every 10 ms ± 5 ms",
        env.server
    );
    if !wait_ok {
        let p = &poll[0];
        println!(
            "MISSING\t{what}: the module has no WAIT yet; polling alone gave {:.0} sections/s, wait-to-acquire p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, handoff p50 {:.2} ms, p99 {:.2} ms",
            p.sections_per_s,
            pct(&p.wait_ms, 50.0),
            pct(&p.wait_ms, 99.0),
            pct(&p.wait_ms, 100.0),
            pct(&p.handoff_ms, 50.0),
            pct(&p.handoff_ms, 99.0)
        );
        return Ok(());
    }
    let pair = |f: &dyn Fn(&Contention) -> f64, higher_better: bool| {
        let ratios: Vec<f64> = waitv
            .iter()
            .zip(&poll)
            .map(|(a, b)| {
                if higher_better {
                    f(a) / f(b)
                } else {
                    f(b) / f(a)
                }
            })
            .collect();
        let a = median(&waitv.iter().map(f).collect::<Vec<_>>());
        let b = median(&poll.iter().map(f).collect::<Vec<_>>());
        (a, b, median(&ratios), spread(&ratios))
    };
    type Metric = Box<dyn Fn(&Contention) -> f64>;
    let metrics: [(&str, Metric, bool); 7] = [
        (
            "fairness: Jain's index of sections per client (1 = equal)",
            Box::new(|c: &Contention| c.fairness),
            true,
        ),
        (
            "critical sections/s",
            Box::new(|c: &Contention| c.sections_per_s),
            true,
        ),
        (
            "wait-to-acquire p50 ms",
            Box::new(|c: &Contention| pct(&c.wait_ms, 50.0)),
            false,
        ),
        (
            "wait-to-acquire p99 ms",
            Box::new(|c: &Contention| pct(&c.wait_ms, 99.0)),
            false,
        ),
        (
            "wait-to-acquire max ms",
            Box::new(|c: &Contention| pct(&c.wait_ms, 100.0)),
            false,
        ),
        (
            "handoff to another client (its RELEASE sent → the grant) p50 ms",
            Box::new(|c: &Contention| pct(&c.handoff_ms, 50.0)),
            false,
        ),
        (
            "handoff p99 ms",
            Box::new(|c: &Contention| pct(&c.handoff_ms, 99.0)),
            false,
        ),
    ];
    for (label, f, hb) in metrics.iter() {
        let (a, b, r, s) = pair(f.as_ref(), *hb);
        row(&format!("{what} · {label}"), a, b, r, &s);
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let port: u16 = std::env::var("BENCH_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .expect("BENCH_PORT");
    let env = Env {
        client: redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("client"),
        server: std::env::var("BENCH_SERVER_NAME").unwrap_or_else(|_| "server".into()),
        pid: std::env::var("BENCH_SERVER_PID")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0),
        quick: matches!(std::env::var("QUICK").as_deref(), Ok(v) if !v.is_empty() && v != "0"),
    };
    let only = std::env::var("BENCH_CLIENT_ONLY").unwrap_or_default();
    let want = |w: &str| only.is_empty() || only.split(',').any(|o| o == w);
    if want("3a") {
        eprintln!("workload 3a: with_space_lock cycles vs raw round trips");
        if let Err(e) = workload3a(&env).await {
            println!("MISSING\tworkload 3a (client cycles) failed: {e}");
        }
    }
    if want("3b") {
        eprintln!("workload 3b: heartbeat of many leases");
        if let Err(e) = workload3b(&env).await {
            println!("MISSING\tworkload 3b (heartbeat) failed: {e}");
        }
    }
    if want("4") {
        eprintln!("workload 4: contention, WAIT vs polling");
        if let Err(e) = workload4(&env).await {
            println!("MISSING\tworkload 4 (contention) failed: {e}");
        }
    }
}
