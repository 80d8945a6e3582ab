//! Redis Cluster, module level: three masters with the module,
//! locks spread over every node, each fence key in its lock's slot, and a slot
//! migration that moves lock and counter together while REFRESH/RELEASE keep
//! working through the MOVED redirect.

use spacelock_testkit as kit;

use kit::{keyslot, Cluster};
use redis::cluster::ClusterClient;
use redis::Commands;

#[kit::test]
fn locks_across_slots_and_through_slot_migration() {
    let cluster = Cluster::start(3);
    let client = ClusterClient::new(cluster.urls()).unwrap();
    let mut con = client.get_connection().unwrap();
    let mut any = cluster.nodes[0].conn();
    let mut direct: Vec<redis::Connection> = cluster.nodes.iter().map(|n| n.conn()).collect();

    // 300 locks over all three nodes (and a few awkward names).
    let mut keys: Vec<Vec<u8>> = (0..300)
        .map(|i| format!("git-sync:lock:space-{i}").into_bytes())
        .collect();
    keys.extend([
        b"{tenant}:a".to_vec(),
        b"x{}y".to_vec(),
        b"}{".to_vec(),
        b"\xff\x00{\x01}".to_vec(),
    ]);
    let mut per_node = [0usize; 3];
    for key in &keys {
        // Each node issues from its own term: a fresh name gets the floor
        // of the node that serves it.
        let node = cluster.owner_of(keyslot(&mut any, key));
        let floor = kit::token_floor(&mut direct[node]);
        let t: Option<i64> = redis::cmd("SPACELOCK.ACQUIRE")
            .arg(key)
            .arg("w1")
            .arg(60_000)
            .query(&mut con)
            .unwrap();
        assert_eq!(t, Some(floor), "{key:?}");
        let fence: Vec<u8> = redis::cmd("SPACELOCK.FENCEKEY")
            .arg(key)
            .query(&mut con)
            .unwrap();
        let slot = keyslot(&mut any, key);
        assert_eq!(
            keyslot(&mut any, &fence),
            slot,
            "fence of {key:?} in another slot"
        );
        // The counter is readable through the cluster client (same node).
        let stored: i64 = con.get(&fence).unwrap();
        assert_eq!(stored, floor);
        per_node[cluster.owner_of(slot)] += 1;
    }
    assert!(per_node.iter().all(|&n| n > 50), "spread: {per_node:?}");

    // Migrate the slot of a held lock to another node.
    let key = b"git-sync:lock:space-7".to_vec();
    let slot = keyslot(&mut any, &key);
    let from = cluster.owner_of(slot);
    let to = (from + 1) % 3;
    let fence: Vec<u8> = redis::cmd("SPACELOCK.FENCEKEY")
        .arg(&key)
        .query(&mut con)
        .unwrap();
    let before: i64 = con.get(&fence).unwrap();
    let moved = cluster.migrate_slot(slot, from, to);
    assert!(
        moved.contains(&key) && moved.contains(&fence),
        "lock and fence move together: {moved:?}"
    );
    assert_eq!(cluster.owner_of(slot), to);
    let mut target = cluster.nodes[to].conn();
    let v: Option<String> = target.get(&key).unwrap();
    assert_eq!(v.as_deref(), Some("w1"));
    let pttl: i64 = target.pttl(&key).unwrap();
    assert!(pttl > 50_000, "TTL moved too: {pttl}");

    // The client's cached slot map is stale: REFRESH/RELEASE follow MOVED.
    let r: i64 = redis::cmd("SPACELOCK.REFRESH")
        .arg(&key)
        .arg("w1")
        .arg(60_000)
        .query(&mut con)
        .unwrap();
    assert_eq!(r, 1);
    let r: i64 = redis::cmd("SPACELOCK.RELEASE")
        .arg(&key)
        .arg("w1")
        .query(&mut con)
        .unwrap();
    assert_eq!(r, 1);
    // The target issues max(fence + 1, its own next token): the counter
    // moved with the lock, so the token is above the source's either way.
    let target_floor = kit::token_floor(&mut target);
    let t: i64 = redis::cmd("SPACELOCK.ACQUIRE")
        .arg(&key)
        .arg("w2")
        .arg(60_000)
        .query(&mut con)
        .unwrap();
    assert!(t > before, "{t} after the source's {before}");
    assert_eq!(t, (before + 1).max(target_floor));
    let stored: i64 = target.get(&fence).unwrap();
    assert_eq!(stored, t);
    // The source node no longer has either key.
    let mut source = cluster.nodes[from].conn();
    let n: i64 = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(slot)
        .query(&mut source)
        .unwrap();
    assert_eq!(n, 0);
}

kit::main!();
