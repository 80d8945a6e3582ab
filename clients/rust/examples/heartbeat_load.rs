//! Holds many leases at once from one process and reports what the heartbeat
//! costs the client: CPU (user + system, from `/proc/self/stat`) and the
//! refresh rate the server saw (`INFO commandstats`), and whether any lease
//! was lost.
//!
//! ```text
//! cargo run --release -p spacelock-client --example heartbeat_load -- \
//!     redis://127.0.0.1:6379/ [leases=10000] [ttl_ms=3000] [seconds=10]
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use spacelock_client::{Options, SpaceLock};

/// Process CPU time (user + system) in seconds, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the comm field: state is [0], utime [11], stime [12] (clock ticks).
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

async fn refresh_calls(con: &mut ConnectionManager) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with("cmdstat_spacelock.refresh:"))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
    let leases: usize = args
        .next()
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(10_000);
    let ttl_ms: u64 = args.next().map(|v| v.parse()).transpose()?.unwrap_or(3_000);
    let seconds: u64 = args.next().map(|v| v.parse()).transpose()?.unwrap_or(10);

    let client = redis::Client::open(url)?;
    let mut stats_con = ConnectionManager::new(client.clone()).await?;
    let locks = SpaceLock::new(
        ConnectionManager::new(client).await?,
        Options::default()
            .ttl(Duration::from_millis(ttl_ms))
            .key_prefix("load:"),
    );

    let held = Arc::new(AtomicUsize::new(0));
    let lost = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let t_acquire = Instant::now();
    let mut tasks = Vec::with_capacity(leases);
    for i in 0..leases {
        let (locks, held, lost, release) =
            (locks.clone(), held.clone(), lost.clone(), release.clone());
        tasks.push(tokio::spawn(async move {
            let name = format!("space-{i}");
            locks
                .with_space_lock(&name, |lease| async move {
                    held.fetch_add(1, Ordering::Relaxed);
                    let notified = release.notified();
                    tokio::select! {
                        _ = notified => {}
                        _ = lease.lost() => { lost.fetch_add(1, Ordering::Relaxed); }
                    }
                })
                .await
        }));
    }
    while held.load(Ordering::Relaxed) < leases {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "{leases} leases acquired in {:.2?} (ttl {ttl_ms} ms, refresh every {} ms)",
        t_acquire.elapsed(),
        (ttl_ms / 3).max(1)
    );
    // Let the acquire burst settle into the steady refresh pattern.
    tokio::time::sleep(Duration::from_millis(ttl_ms)).await;

    let (cpu0, calls0, t0) = (
        cpu_seconds(),
        refresh_calls(&mut stats_con).await,
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (cpu1, calls1, wall) = (
        cpu_seconds(),
        refresh_calls(&mut stats_con).await,
        t0.elapsed(),
    );

    release.notify_waiters();
    let mut ran = 0;
    for t in tasks {
        if matches!(t.await?, Ok(spacelock_client::Outcome::Ran(()))) {
            ran += 1;
        }
    }
    let wall_s = wall.as_secs_f64();
    println!(
        "steady state over {wall_s:.1} s: client CPU {:.1} % of one core, {:.0} refreshes/s, \
         {} leases lost, {ran}/{leases} bodies ran, active leases after release: {}",
        100.0 * (cpu1 - cpu0) / wall_s,
        (calls1 - calls0) as f64 / wall_s,
        lost.load(Ordering::Relaxed),
        locks.active_leases()
    );
    Ok(())
}
