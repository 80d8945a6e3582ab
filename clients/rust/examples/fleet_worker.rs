//! One member of a mixed fleet contending for one lock: the Node client's
//! test suite (`clients/node/test/fleet.test.ts`) runs this beside the Node
//! client and the existing Lua-based service's own code, all on the same key, and checks
//! that no two bodies ever overlap.
//!
//! The body marks entry and exit in a shared overlap guard: `INCR <guard>`
//! on entry (a result above 1 means someone else is inside too, counted in
//! `<guard>:overlaps`), then `DECR <guard>` on exit. Every `long_every`-th
//! body outlives the ttl, so only the heartbeat keeps the lock.
//!
//! ```text
//! cargo build --release -p spacelock-client --example fleet_worker
//! fleet_worker <redis-url> <key-prefix> <name> <entries> <ttl-ms> <guard-key> [hold-ms=2] [long-every=10] [deadline-s=60]
//! ```
//!
//! Prints one line, `entries=<n> skipped=<n> overlaps=<n> max_token=<t>`,
//! and exits 0 once it has entered `entries` times, 1 on error or deadline.

use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use spacelock_client::{Options, Outcome, SpaceLock};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: Option<T>) -> T {
    match args.get(i).map(|s| s.parse::<T>()) {
        Some(Ok(v)) => v,
        _ => default.unwrap_or_else(|| {
            eprintln!(
                "usage: fleet_worker <redis-url> <key-prefix> <name> <entries> <ttl-ms> <guard-key> \
                 [hold-ms] [long-every] [deadline-s]"
            );
            std::process::exit(64)
        }),
    }
}

/// A small xorshift: jitter for the retry pause, no extra dependency.
fn jitter(state: &mut u64, max_ms: u64) -> Duration {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    Duration::from_micros(500 + *state % (max_ms * 1000))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url: String = arg(&args, 0, None);
    let prefix: String = arg(&args, 1, None);
    let name: String = arg(&args, 2, None);
    let entries: u32 = arg(&args, 3, None);
    let ttl_ms: u64 = arg(&args, 4, None);
    let guard: String = arg(&args, 5, None);
    let hold_ms: u64 = arg(&args, 6, Some(2));
    let long_every: u32 = arg::<u32>(&args, 7, Some(10)).max(1);
    let deadline = Instant::now()
        .checked_add(Duration::from_secs(arg(&args, 8, Some(60))))
        .ok_or("deadline-s is too large")?;

    let client = redis::Client::open(url)?;
    let locks = SpaceLock::new(
        ConnectionManager::new(client.clone()).await?,
        Options::default()
            .ttl(Duration::from_millis(ttl_ms))
            .key_prefix(prefix),
    );
    // The guard runs on a connection of its own, not the lock's.
    let guard_conn = client.get_multiplexed_async_connection().await?;
    let overlaps_key = format!("{guard}:overlaps");

    let (mut entered, mut skipped, mut overlaps, mut max_token) = (0u32, 0u64, 0u64, 0u64);
    let mut rng = u64::from(std::process::id()) | 1;
    while entered < entries {
        if Instant::now() > deadline {
            eprintln!("fleet_worker: deadline passed after {entered} of {entries} entries");
            std::process::exit(1);
        }
        let hold = if (entered + 1) % long_every == 0 {
            Duration::from_millis(ttl_ms.saturating_add(ttl_ms / 2)) // outlives the ttl: the heartbeat must keep it
        } else {
            Duration::from_millis(hold_ms)
        };
        let mut g = guard_conn.clone();
        let (guard_k, overlaps_k) = (guard.clone(), overlaps_key.clone());
        let outcome = locks
            .with_space_lock(&name, |lease| async move {
                let inside: i64 = g.incr(&guard_k, 1).await?;
                if inside > 1 {
                    let _: i64 = g.incr(&overlaps_k, 1).await?;
                }
                tokio::time::sleep(hold).await;
                let _: i64 = g.decr(&guard_k, 1).await?;
                Ok::<_, redis::RedisError>((inside > 1, lease.token()))
            })
            .await?;
        match outcome {
            Outcome::Ran(result) => {
                let (overlapped, token) = result?;
                entered += 1;
                overlaps += u64::from(overlapped);
                max_token = max_token.max(token);
            }
            Outcome::Skipped(_) => {
                skipped += 1;
                tokio::time::sleep(jitter(&mut rng, 3)).await;
            }
        }
    }
    println!("entries={entered} skipped={skipped} overlaps={overlaps} max_token={max_token}");
    Ok(())
}
