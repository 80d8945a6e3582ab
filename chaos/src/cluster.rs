//! The cluster topology on loopback: a Redis Cluster of three primaries,
//! each with one replica, every server with the module and `appendonly yes`,
//! built as the test kit's `Cluster` is (distinct config epochs,
//! `CLUSTER ADDSLOTSRANGE`, `CLUSTER MEET`), then `CLUSTER REPLICATE`.
//!
//! The slot ranges are cut between the slots of the run's lock names (the
//! exclusive ones only, in a run without the other shapes), so that every
//! primary serves at least one name in use, and a fault aims at the primary
//! of a name in use. There are no proxies here:
//! clients and the cluster bus connect to the servers directly.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::Rng;
use spacelock_testkit::{Server, ServerBuilder};

use crate::topology::{conn_to, info_field, Servers};
use crate::workers::{COUNTED, NAMES, PREFIX, RW};

/// Primaries, and replicas per primary.
const PRIMARIES: usize = 3;

/// The whole cluster and the fenced resource.
pub struct ClusterTopology {
    /// The six servers (`None` while killed): the first three are the
    /// primaries at the start, server `3 + i` the replica of server `i`.
    pub nodes: Vec<Option<Server>>,
    /// Their ports (kept across restarts).
    pub ports: Vec<u16>,
    /// Their cluster node ids (kept across restarts, in `nodes.conf`).
    pub ids: Vec<String>,
    /// The fenced resource (a plain server).
    pub fenced: Server,
    /// Whether the workers also lock the reader-writer and counted names:
    /// a fault only targets a primary that serves a name in use.
    shapes: bool,
}

/// One line of `CLUSTER NODES`: its node's port, id, flags, primary id and
/// slots served.
struct NodeLine {
    id: String,
    port: u16,
    flags: String,
    primary: String,
    connected: bool,
    slots: Vec<(u16, u16)>,
}

fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let port = f[1]
                .split(['@', ','])
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
                    None => s.parse().ok().map(|n| (n, n)),
                })
                .collect();
            Some(NodeLine {
                id: f[0].to_string(),
                port,
                flags: f[2].to_string(),
                primary: f[3].to_string(),
                connected: f[7] == "connected",
                slots,
            })
        })
        .collect()
}

impl ClusterTopology {
    /// Starts six servers, makes them one cluster (three primaries with a
    /// replica each) and waits until it is whole.
    ///
    /// # Errors
    /// Why it could not start.
    pub fn start(
        persistence: bool,
        node_timeout_ms: u64,
        shapes: bool,
    ) -> Result<ClusterTopology, String> {
        let mut nodes = Vec::new();
        for i in 0..PRIMARIES * 2 {
            let server = ServerBuilder::new()
                .cluster()
                .arg("cluster-node-timeout", &node_timeout_ms.to_string())
                .arg("appendonly", if persistence { "yes" } else { "no" })
                .try_start()
                .map_err(|e| format!("cluster node {i}: {e}"))?;
            nodes.push(server);
        }
        let ports: Vec<u16> = nodes.iter().map(|s| s.port).collect();
        let cmd = |i: usize, c: &mut redis::Cmd| -> Result<redis::Value, String> {
            let mut con = conn_to(ports[i], Duration::from_secs(2)).map_err(|e| e.to_string())?;
            c.query(&mut con)
                .map_err(|e| format!("node {i}: {c:?}: {e}"))
        };
        let ranges = slot_ranges(names_in_use(&cluster_slots(ports[0])?, shapes));
        let mut ids = Vec::new();
        for i in 0..nodes.len() {
            // Distinct config epochs up front, as `redis-cli --cluster create` does.
            cmd(i, redis::cmd("CLUSTER").arg("SET-CONFIG-EPOCH").arg(i + 1))?;
            let id = cmd(i, redis::cmd("CLUSTER").arg("MYID"))?;
            ids.push(redis::from_redis_value::<String>(id).map_err(|e| e.to_string())?);
        }
        for (i, (lo, hi)) in ranges.iter().enumerate() {
            cmd(
                i,
                redis::cmd("CLUSTER").arg("ADDSLOTSRANGE").arg(lo).arg(hi),
            )?;
        }
        for n in &nodes[1..] {
            let bus = n.bus_port.ok_or("a cluster node without a bus port")?;
            cmd(
                0,
                redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(n.port)
                    .arg(bus),
            )?;
        }
        // A replica can follow its primary only once it knows it.
        let deadline = Instant::now() + Duration::from_secs(30);
        for r in PRIMARIES..PRIMARIES * 2 {
            let primary = &ids[r - PRIMARIES];
            loop {
                if cmd(r, redis::cmd("CLUSTER").arg("REPLICATE").arg(primary)).is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("node {r} never learned of its primary {primary}"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let fenced = ServerBuilder::new()
            .without_module()
            .try_start()
            .map_err(|e| format!("fenced server: {e}"))?;
        let t = ClusterTopology {
            nodes: nodes.into_iter().map(Some).collect(),
            ports,
            ids,
            fenced,
            shapes,
        };
        if !t.until_whole(Duration::from_secs(60)) {
            let log = t.nodes[0].as_ref().map(Server::log).unwrap_or_default();
            return Err(format!("the cluster never became whole:\n{log}"));
        }
        Ok(t)
    }

    /// `CLUSTER NODES` as node `i` sees it.
    fn view(&self, i: usize) -> Option<Vec<NodeLine>> {
        let mut con = conn_to(self.ports[i], Duration::from_millis(500)).ok()?;
        let text: String = redis::cmd("CLUSTER").arg("NODES").query(&mut con).ok()?;
        Some(parse_nodes(&text))
    }

    /// The node that serves `slot` as primary, as the first node that
    /// answers sees it.
    fn serving(&self, slot: u16) -> Option<usize> {
        let view = (0..self.ports.len()).find_map(|i| self.view(i))?;
        let line = view.iter().find(|l| {
            l.flags.contains("master")
                && !l.flags.contains("fail")
                && l.slots.iter().any(|(lo, hi)| (*lo..=*hi).contains(&slot))
        })?;
        self.ports.iter().position(|p| *p == line.port)
    }

    /// The replica of `primary`, as `primary` sees it.
    fn replica_of(&self, primary: usize) -> Result<usize, String> {
        let view = self.view(primary).ok_or("the primary does not answer")?;
        view.iter()
            .find(|l| l.primary == self.ids[primary] && l.flags.contains("slave"))
            .and_then(|l| self.ports.iter().position(|p| *p == l.port))
            .ok_or_else(|| "the primary has no replica".to_string())
    }

    /// Whether node `i` answers, says `cluster_state:ok` with every slot
    /// served and all six nodes known, and sees no node failing or
    /// disconnected.
    fn node_ok(&self, i: usize) -> bool {
        let Ok(mut con) = conn_to(self.ports[i], Duration::from_millis(500)) else {
            return false;
        };
        let Ok(info) = redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut con) else {
            return false;
        };
        let want = [
            "cluster_state:ok".to_string(),
            "cluster_slots_ok:16384".to_string(),
            format!("cluster_known_nodes:{}", self.ports.len()),
        ];
        if !want.iter().all(|w| info.lines().any(|l| l.trim() == w)) {
            return false;
        }
        self.view(i).is_some_and(|v| {
            v.iter()
                .all(|l| !l.flags.contains("fail") && (l.flags.contains("myself") || l.connected))
        })
    }

    /// Whether the cluster is whole: every node up and content, three
    /// primaries each with one replica online, and every replica's link up.
    fn whole(&self) -> bool {
        if self.nodes.iter().any(Option::is_none) {
            return false;
        }
        let (mut primaries, mut replicas) = (0, 0);
        for (i, port) in self.ports.iter().enumerate() {
            if !self.node_ok(i) {
                return false;
            }
            match info_field(*port, "role").as_deref() {
                Some("master") => {
                    let online = info_field(*port, "slave0")
                        .is_some_and(|s| s.contains("state=online"))
                        && info_field(*port, "connected_slaves").as_deref() == Some("1");
                    if !online {
                        return false;
                    }
                    primaries += 1;
                }
                Some("slave") => {
                    if info_field(*port, "master_link_status").as_deref() != Some("up") {
                        return false;
                    }
                    replicas += 1;
                }
                _ => return false,
            }
        }
        primaries == PRIMARIES && replicas == PRIMARIES
    }
}

/// The hash slots of the run's lock names, asked of the server on `port`.
fn cluster_slots(port: u16) -> Result<Vec<u16>, String> {
    let mut con = conn_to(port, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    NAMES
        .iter()
        .chain([&RW, &COUNTED])
        .map(|n| {
            redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(format!("{PREFIX}{n}"))
                .query(&mut con)
                .map_err(|e| format!("CLUSTER KEYSLOT: {e}"))
        })
        .collect()
}

/// The slots of the names the workers lock, out of [`cluster_slots`]'s
/// (the exclusive names come first): all of them, or the exclusive names'
/// only in a run without the other shapes.
fn names_in_use(slots: &[u16], shapes: bool) -> &[u16] {
    if shapes {
        slots
    } else {
        &slots[..NAMES.len().min(slots.len())]
    }
}

/// Three slot ranges covering all 16384 slots, cut halfway between the
/// names' slots so that each range holds at least one of them (two, two
/// and one of the five); even thirds if the names fall on fewer than three
/// slots.
fn slot_ranges(slots: &[u16]) -> Vec<(u16, u16)> {
    let mut s = slots.to_vec();
    s.sort_unstable();
    s.dedup();
    let cuts = if s.len() >= PRIMARIES {
        // After the first two fifths of the names, and after four fifths.
        let a = (s.len() * 2).div_ceil(5).clamp(1, s.len() - 2);
        let b = (s.len() * 4).div_ceil(5).clamp(a + 1, s.len() - 1);
        [
            s[a - 1] + (s[a] - s[a - 1]).div_ceil(2),
            s[b - 1] + (s[b] - s[b - 1]).div_ceil(2),
        ]
    } else {
        [16384 / 3, 16384 * 2 / 3]
    };
    vec![(0, cuts[0] - 1), (cuts[0], cuts[1] - 1), (cuts[1], 16383)]
}

impl Servers for ClusterTopology {
    fn name(&self) -> &'static str {
        "cluster"
    }

    fn worker_args(&self) -> Vec<String> {
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        vec!["--cluster".into(), ports.join(",")]
    }

    fn fenced_port(&self) -> u16 {
        self.fenced.port
    }

    fn fenced_conn(&self) -> redis::Connection {
        self.fenced.conn()
    }

    fn until_whole(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.whole() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The primary serving a name in use, picked at random.
    fn target(&self, rng: &mut StdRng) -> Option<usize> {
        let slots = cluster_slots(
            self.ports
                .iter()
                .copied()
                .find(|p| conn_to(*p, Duration::from_millis(500)).is_ok())?,
        )
        .ok()?;
        let in_use = names_in_use(&slots, self.shapes);
        self.serving(in_use[rng.random_range(0..in_use.len())])
    }

    fn pid(&self, i: usize) -> Option<i32> {
        crate::topology::pid_of(self.ports[i])
    }

    fn conn(&self, i: usize) -> redis::RedisResult<redis::Connection> {
        conn_to(self.ports[i], Duration::from_secs(2))
    }

    fn kill(&mut self, i: usize) {
        if let Some(s) = self.nodes[i].as_mut() {
            s.kill9();
        }
    }

    fn restart(&mut self, i: usize) {
        if let Some(s) = self.nodes[i].take() {
            self.nodes[i] = Some(s.restart_with(|b| b));
        }
    }

    /// Some other node sees node `old` serving no slot, and another
    /// primary serving what it served.
    fn failed_over(&self, old: usize) -> bool {
        (0..self.ports.len()).filter(|j| *j != old).any(|j| {
            self.view(j).is_some_and(|v| {
                let serving = |l: &NodeLine| {
                    l.flags.contains("master") && !l.flags.contains("fail") && !l.slots.is_empty()
                };
                let old_serves = v.iter().any(|l| l.id == self.ids[old] && serving(l));
                let covered: u32 = v
                    .iter()
                    .filter(|l| serving(l))
                    .flat_map(|l| l.slots.iter().map(|(lo, hi)| u32::from(hi - lo) + 1))
                    .sum();
                !old_serves && covered == 16384
            })
        })
    }

    /// `CLUSTER FAILOVER` on the replica of `primary`.
    fn planned_failover(&self, primary: usize) -> Result<(), String> {
        let replica = self.replica_of(primary)?;
        let mut con = self.conn(replica).map_err(|e| e.to_string())?;
        redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query::<()>(&mut con)
            .map_err(|e| e.to_string())
    }

    /// The replica of `primary` is stopped, the primary drops its link
    /// (`CLIENT KILL TYPE replica`), grants for half a second that reach
    /// no replica, and then the resumed replica takes over without the
    /// primary's agreement (`CLUSTER FAILOVER TAKEOVER`) before it has
    /// caught up: those grants are gone from the new primary, and from the
    /// old one once it follows the new one; their holders run on until a
    /// refresh tells them.
    fn lossy_failover(&mut self, primary: usize, since: i64, timeout: Duration) -> Option<i64> {
        let replica = self.replica_of(primary).ok()?;
        let pid = Pid::from_raw(self.pid(replica)?);
        let _ = kill(pid, Signal::SIGSTOP);
        if let Ok(mut con) = self.conn(primary) {
            let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("replica")
                .query(&mut con);
        }
        // The takeover is sent while the replica is still stopped, so that
        // it is the first thing the replica does when it resumes, before it
        // reconnects to its primary and catches up.
        let takeover =
            std::net::TcpStream::connect(("127.0.0.1", self.ports[replica])).and_then(|mut s| {
                s.write_all(b"CLUSTER FAILOVER TAKEOVER\r\n")?;
                Ok(s)
            });
        std::thread::sleep(Duration::from_millis(500));
        let _ = kill(pid, Signal::SIGCONT);
        if let Ok(mut s) = takeover {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.read(&mut [0u8; 64]);
        }
        self.until_failover(primary, since, timeout)
    }

    /// Starts the killed node again from its data directory: it comes back
    /// with its `nodes.conf`, learns from the others' gossip that its slots
    /// have a newer owner, and becomes that node's replica by itself.
    fn rejoin(&mut self, old: usize, _as_replica: bool) -> &'static str {
        self.restart(old);
        "replica"
    }

    fn stall_replica(
        &mut self,
        _primary: usize,
        _rng: &mut StdRng,
        _hold: Duration,
    ) -> Result<usize, String> {
        Err("the cluster topology has no proxies to stall a link in".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ranges_put_names_on_every_primary() {
        let slots = [100, 5000, 9000, 12000, 16000];
        let r = slot_ranges(&slots);
        assert_eq!(r[0].0, 0);
        assert_eq!(r[2].1, 16383);
        for w in r.windows(2) {
            assert_eq!(w[0].1 + 1, w[1].0);
        }
        for (lo, hi) in &r {
            assert!(slots.iter().any(|s| (lo..=hi).contains(&s)), "{r:?}");
        }
    }

    /// In a run with the exclusive names only, faults aim at those names'
    /// primaries, and the slots are cut so that each primary serves one.
    #[test]
    fn an_exclusive_only_run_puts_one_name_in_use_on_every_primary() {
        // k0, k1, k2, then rw and slots.
        let slots = [100, 9000, 16000, 5000, 12000];
        assert_eq!(names_in_use(&slots, true), &slots);
        let in_use = names_in_use(&slots, false);
        assert_eq!(in_use, &[100, 9000, 16000]);
        let r = slot_ranges(in_use);
        for (lo, hi) in &r {
            assert_eq!(
                in_use.iter().filter(|s| (lo..=hi).contains(s)).count(),
                1,
                "{r:?}"
            );
        }
    }

    #[test]
    fn cluster_nodes_lines_parse() {
        let text = "07c3 127.0.0.1:30004@31004,host slave e7d1 0 1426238317239 4 connected\n\
                    e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 7000 [5461->-abc]\n";
        let v = parse_nodes(text);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].port, 30004);
        assert_eq!(v[0].primary, "e7d1");
        assert_eq!(v[1].slots, vec![(0, 5460), (7000, 7000)]);
    }
}
