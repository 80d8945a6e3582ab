//! Workload 3b: the heartbeat of many leases, spacelock-client vs the existing service's
//! timer per lease.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spacelock_client::{Options, SpaceLock};

use crate::measure::{cmd_calls, row, self_cpu_s, server_cpu_s};
use crate::{env_f, Env, Res};

const LUA_RELEASE: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end"#;
const LUA_REFRESH: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("pexpire", KEYS[1], ARGV[2]) else return 0 end"#;

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

/// The existing service's design: SET NX PX, then one timer per lease sending the whole
/// refresh script with EVAL every ttl/3.
async fn heartbeat_lua_service(env: &Env, leases: usize, ttl: Duration, hold: Duration) -> Res<Heartbeat> {
    let mut stats = env.conn().await?;
    let con = env.conn().await?;
    let owner = "6f1c2e4a-5b3d-4e8f-9a0b-1c2d3e4f5a6b";
    let ttl_ms = ttl.as_millis() as u64;
    let mut pipe = redis::pipe();
    for i in 0..leases {
        pipe.cmd("SET")
            .arg(format!("hb:lua:{i}"))
            .arg(owner)
            .arg("PX")
            .arg(ttl_ms)
            .arg("NX");
    }
    let oks: Vec<Option<String>> = pipe.query_async(&mut con.clone()).await?;
    if oks.iter().any(|o| o.as_deref() != Some("OK")) {
        return Err("Lua baseline: SET NX PX did not acquire every lease".into());
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
            let key = format!("hb:lua:{i}");
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

pub(crate) async fn workload3b(env: &Env) -> Res<()> {
    let leases = env_f("BENCH_LEASES", if env.quick { 1000.0 } else { 10_000.0 }) as usize;
    let hold_s = env_f("BENCH_HOLD_S", if env.quick { 4.0 } else { 30.0 });
    let baseline_hold_s = env_f("BENCH_BASELINE_HOLD_S", if env.quick { 4.0 } else { 12.0 });
    let ttl = Duration::from_millis(env_f("BENCH_LEASE_TTL_MS", 3000.0) as u64);
    let a = heartbeat_client(env, leases, ttl, Duration::from_secs_f64(hold_s)).await?;
    eprintln!(
        "  heartbeat spacelock-client: {:.1} % client CPU, {:.1} % server CPU, {:.0} refreshes/s, {} lost",
        a.client_cpu_pct, a.server_cpu_pct, a.refresh_per_s, a.lost
    );
    let b = heartbeat_lua_service(env, leases, ttl, Duration::from_secs_f64(baseline_hold_s)).await?;
    eprintln!(
        "  heartbeat Lua-service-style: {:.1} % client CPU, {:.1} % server CPU, {:.0} refreshes/s, {} lost",
        b.client_cpu_pct, b.server_cpu_pct, b.refresh_per_s, b.lost
    );
    let what = format!(
        "{} · client heartbeat, {leases} leases, ttl {} s, held {hold_s:.0} s (baseline: the Lua-based service's timer per lease + `EVAL`, {baseline_hold_s:.0} s)",
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
