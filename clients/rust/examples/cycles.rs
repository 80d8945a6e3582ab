//! Sequential `with_space_lock` cycles with an empty body, on distinct names:
//! the fixed cost of one lock cycle (ACQUIRE + RELEASE round trips plus the
//! client's bookkeeping), comparable to the existing Lua-based
//! service's `SET NX PX` + `EVAL` cycle.
//!
//! ```text
//! cargo run --release -p spacelock-client --example cycles -- redis://127.0.0.1:6379/ [cycles=20000]
//! ```

use std::time::Instant;

use redis::aio::ConnectionManager;
use spacelock_client::{Options, SpaceLock};

/// Process CPU time (user + system) in seconds, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
    let n: usize = args
        .next()
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(20_000);
    let client = redis::Client::open(url)?;
    let locks = SpaceLock::new(
        ConnectionManager::new(client).await?,
        Options::default().key_prefix("cycles:"),
    );
    // Warm up (spawns the heartbeat task, fills caches).
    for i in 0..1000 {
        let _ = locks
            .with_space_lock(&format!("warm-{i}"), |_| async {})
            .await?;
    }
    let (t0, cpu0) = (Instant::now(), cpu_seconds());
    for i in 0..n {
        let outcome = locks
            .with_space_lock(&format!("space-{i}"), |_| async {})
            .await?;
        assert!(outcome.is_ran());
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    println!(
        "{n} sequential cycles in {secs:.2} s: {:.0} cycles/s, {:.1} µs per cycle, \
         client CPU {:.1} µs per cycle",
        n as f64 / secs,
        1e6 * secs / n as f64,
        1e6 * cpu / n as f64
    );
    Ok(())
}
