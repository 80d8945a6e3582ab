//! The existing Lua-based service's two consumers of `withSpaceLock`, racing for one space:
//!
//! * a **poll cycle** (`runOnce`): every few hundred ms, replica A syncs each
//!   space under its lock, skipping spaces another replica is syncing;
//! * an **external push** (`ingestExternalPush`): a git client pushes to
//!   replica B over HTTP; if the space is locked the push gets a 503, as in
//!   the existing service's contract.
//!
//! Both write to a "working tree" that checks fencing tokens, so a stale
//! writer would be refused.
//!
//! ```text
//! redis-server --loadmodule target/release/libspacelock.so &
//! cargo run -p spacelock-client --example git_sync [redis://127.0.0.1:6379/]
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use spacelock_client::{Lease, Options, Outcome, Skipped, SpaceLock};

/// A resource protected by fencing tokens: it refuses a write whose token is
/// lower than one it has already seen for that space.
#[derive(Default)]
struct WorkingTree {
    last_token: Mutex<HashMap<String, u64>>,
}

impl WorkingTree {
    fn write(&self, space: &str, token: u64, what: &str) -> Result<(), String> {
        let mut seen = self.last_token.lock().unwrap();
        let last = seen.entry(space.to_string()).or_default();
        if token < *last {
            return Err(format!("stale token {token} < {last}"));
        }
        *last = token;
        println!("    [{space}] token {token:>3}: {what}");
        Ok(())
    }
}

/// One sync cycle for a space (the body both consumers run under the lock).
async fn sync_space(tree: &WorkingTree, lease: &Lease, what: &str) -> Result<(), String> {
    tree.write(lease.name(), lease.token(), what)?;
    // Pretend to work; a long cycle stays locked thanks to the heartbeat.
    tokio::time::sleep(Duration::from_millis(150)).await;
    if lease.is_lost() {
        return Err("lock lost mid-cycle; stopping before the commit".into());
    }
    Ok(())
}

/// `runOnce`: the poll cycle of one replica over all spaces.
async fn run_once(locks: &SpaceLock<ConnectionManager>, tree: &WorkingTree, spaces: &[&str]) {
    for space in spaces {
        let outcome = locks
            .with_space_lock(space, |lease| async move {
                sync_space(tree, &lease, "poll cycle").await
            })
            .await;
        match outcome {
            Ok(Outcome::Ran(Ok(()))) => {}
            Ok(Outcome::Ran(Err(e))) => println!("  poll   {space}: cycle failed: {e}"),
            Ok(Outcome::Skipped(Skipped::LockHeld)) => {
                println!("  poll   {space}: skipped, another replica holds it")
            }
            Ok(Outcome::Skipped(why)) => println!("  poll   {space}: skipped ({why})"),
            Err(e) => println!("  poll   {space}: redis error: {e}"),
        }
    }
}

/// `ingestExternalPush`: a push over HTTP; returns the HTTP status.
async fn ingest_external_push(
    locks: &SpaceLock<ConnectionManager>,
    tree: &WorkingTree,
    space: &str,
) -> u16 {
    match locks
        .with_space_lock(space, |lease| async move {
            sync_space(tree, &lease, "external push").await
        })
        .await
    {
        Ok(Outcome::Ran(Ok(()))) => 200,
        Ok(Outcome::Ran(Err(_))) => 500,
        // Same contract as the existing service: a locked space answers 503, retry later.
        Ok(Outcome::Skipped(_)) => 503,
        Err(_) => 503,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
    let client = redis::Client::open(url)?;
    let options = Options::default()
        .ttl(Duration::from_secs(3))
        .key_prefix("git-sync:lock:");
    // No response timeout on the connection: the client puts its own
    // deadline on every command, so a write pause (FAILOVER) is waited out.
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(None)
        .set_max_delay(Duration::from_millis(500));
    // Two replicas: two SpaceLocks, so two owner ids.
    let replica_a = SpaceLock::new(
        ConnectionManager::new_with_config(client.clone(), config.clone()).await?,
        options.clone(),
    );
    let replica_b = SpaceLock::new(
        ConnectionManager::new_with_config(client, config).await?,
        options,
    );
    println!(
        "replica A owner {}\nreplica B owner {}",
        replica_a.owner(),
        replica_b.owner()
    );

    let tree = Arc::new(WorkingTree::default());
    let spaces = ["space-1", "space-2", "space-3"];

    let poller = {
        let (locks, tree) = (replica_a.clone(), tree.clone());
        tokio::spawn(async move {
            for round in 1..=4 {
                println!("poll cycle {round}");
                run_once(&locks, &tree, &spaces).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let pusher = {
        let (locks, tree) = (replica_b.clone(), tree.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..12 {
                let status = ingest_external_push(&locks, &tree, "space-1").await;
                println!("  push   space-1: HTTP {status}");
                statuses.push(status);
                tokio::time::sleep(Duration::from_millis(90)).await;
            }
            statuses
        })
    };
    poller.await?;
    let statuses = pusher.await?;
    let accepted = statuses.iter().filter(|s| **s == 200).count();
    println!(
        "pushes: {accepted} accepted, {} answered 503 (space busy)",
        statuses.len() - accepted
    );
    Ok(())
}
