//! A Redis Cluster on loopback, built without redis-cli.

use std::time::Duration;

use crate::{wait_until, Server, ServerBuilder};

/// A Redis Cluster of `n` masters on loopback, the module loaded on each.
/// Built with `CLUSTER ADDSLOTSRANGE` + `CLUSTER MEET` (no redis-cli needed);
/// bus ports are chosen explicitly (`cluster-port`) so they are always valid.
pub struct Cluster {
    /// The nodes, in slot order: node i serves slots [i*16384/n, (i+1)*16384/n).
    pub nodes: Vec<Server>,
}

impl Cluster {
    /// Starts `n` masters and waits until every node reports `cluster_state:ok`.
    pub fn start(n: usize) -> Cluster {
        let nodes: Vec<Server> = (0..n)
            .map(|_| {
                ServerBuilder::new()
                    .cluster()
                    .arg("cluster-node-timeout", "5000")
                    .start()
            })
            .collect();
        for (i, node) in nodes.iter().enumerate() {
            // Distinct config epochs up front, as `redis-cli --cluster create`
            // does: otherwise the nodes settle epoch collisions after MEET, and
            // a slot migrated meanwhile can be taken back by stale gossip.
            let _: () = redis::cmd("CLUSTER")
                .arg("SET-CONFIG-EPOCH")
                .arg(i + 1)
                .query(&mut node.conn())
                .unwrap();
            let lo = i * 16384 / n;
            let hi = (i + 1) * 16384 / n - 1;
            let mut con = node.conn();
            let _: () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(lo)
                .arg(hi)
                .query(&mut con)
                .unwrap();
        }
        let mut first = nodes[0].conn();
        for node in nodes.iter().skip(1) {
            let bus = node.bus_port.expect("cluster node has a bus port");
            let _: () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(node.port)
                .arg(bus)
                .query(&mut first)
                .unwrap();
        }
        for node in &nodes {
            let mut con = node.conn();
            assert!(
                wait_until(Duration::from_secs(30), || {
                    let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut con).unwrap();
                    info.contains("cluster_state:ok")
                        && info.contains(&format!("cluster_known_nodes:{n}"))
                }),
                "cluster never became ok:\n{}",
                node.log()
            );
        }
        Cluster { nodes }
    }

    /// Seed URLs for a cluster client.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }

    /// The node id of node `i`.
    pub fn node_id(&self, i: usize) -> String {
        let mut con = self.nodes[i].conn();
        redis::cmd("CLUSTER").arg("MYID").query(&mut con).unwrap()
    }

    /// Index of the node currently serving `slot` (asks node 0).
    pub fn owner_of(&self, slot: u16) -> usize {
        let mut con = self.nodes[0].conn();
        let slots: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut con).unwrap();
        for range in slots {
            if let redis::Value::Array(items) = range {
                let lo: i64 = redis::from_redis_value(items[0].clone()).unwrap();
                let hi: i64 = redis::from_redis_value(items[1].clone()).unwrap();
                if (lo..=hi).contains(&i64::from(slot)) {
                    if let redis::Value::Array(master) = &items[2] {
                        let port: i64 = redis::from_redis_value(master[1].clone()).unwrap();
                        return self
                            .nodes
                            .iter()
                            .position(|n| i64::from(n.port) == port)
                            .unwrap();
                    }
                }
            }
        }
        panic!("slot {slot} not served");
    }

    /// Moves `slot` from node `from` to node `to` the way `redis-cli --cluster
    /// reshard` does: IMPORTING/MIGRATING, MIGRATE every key, then SETSLOT NODE
    /// on every node. Returns the keys moved.
    pub fn migrate_slot(&self, slot: u16, from: usize, to: usize) -> Vec<Vec<u8>> {
        let from_id = self.node_id(from);
        let to_id = self.node_id(to);
        let mut src = self.nodes[from].conn();
        let mut dst = self.nodes[to].conn();
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("IMPORTING")
            .arg(&from_id)
            .query(&mut dst)
            .unwrap();
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("MIGRATING")
            .arg(&to_id)
            .query(&mut src)
            .unwrap();
        let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(1000)
            .query(&mut src)
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(self.nodes[to].port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query(&mut src)
                .unwrap();
        }
        for node in &self.nodes {
            let mut con = node.conn();
            let _: () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(&to_id)
                .query(&mut con)
                .unwrap();
        }
        keys
    }
}
