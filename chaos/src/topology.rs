//! The topology on loopback: three data servers with the module (a primary
//! and two replicas at the start), each behind a test-kit proxy that every
//! connection to it goes through (clients, Sentinels, and the replicas'
//! links); three Sentinels; and a plain fenced-resource server that is never
//! faulted.
//!
//! Each data server announces its proxy's port (`replica-announce-port`),
//! so Sentinel, clients and replicas all use the proxies, also after a
//! failover; and each makes its outgoing connections from its own loopback
//! address (`bind-source-addr 127.0.0.1N`), so that the proxy in front of a
//! primary can stall one replica's link while everything else flows.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid as Nix;
use rand::rngs::StdRng;
use rand::Rng;
use spacelock_testkit::{free_port, Proxy, Sentinel, SentinelTimings, Server, ServerBuilder};

/// The name Sentinel monitors the primary under.
pub const SERVICE: &str = "chaos";

/// One data server and the proxy in front of it.
pub struct Node {
    /// The server (`None` while killed).
    pub server: Option<Server>,
    /// Its own port.
    pub port: u16,
    /// The proxy every connection goes through.
    pub proxy: Proxy,
    /// The loopback address its outgoing connections come from.
    pub source: IpAddr,
}

/// The whole topology.
pub struct Topology {
    /// The data servers; the first is the primary at the start.
    pub nodes: Vec<Node>,
    /// The Sentinels.
    pub sentinels: Vec<Sentinel>,
    /// The fenced resource (a plain server).
    pub fenced: Server,
}

/// What the orchestrator asks of a topology: where its servers are, when
/// it is whole, which primary a fault acts on, and the actions of the
/// faults that depend on how it fails over.
pub trait Servers {
    /// Its name in the run's meta: `sentinel` or `cluster`.
    fn name(&self) -> &'static str;
    /// The arguments that tell a worker where the servers are.
    fn worker_args(&self) -> Vec<String>;
    /// The fenced resource's port.
    fn fenced_port(&self) -> u16;
    /// A connection to the fenced resource.
    fn fenced_conn(&self) -> redis::Connection;
    /// Waits up to `timeout` until the topology is whole; whether it is.
    fn until_whole(&self, timeout: Duration) -> bool;
    /// The primary the next fault acts on.
    fn target(&self, rng: &mut StdRng) -> Option<usize>;
    /// The process id of node `i`'s server.
    fn pid(&self, i: usize) -> Option<i32>;
    /// A connection to node `i` directly (not through a proxy).
    fn conn(&self, i: usize) -> redis::RedisResult<redis::Connection>;
    /// Kills node `i` with SIGKILL.
    fn kill(&mut self, i: usize);
    /// Starts node `i` again on its port and data directory, with its own
    /// settings.
    ///
    /// # Panics
    /// If it does not come up.
    fn restart(&mut self, i: usize);
    /// Whether another node serves as primary in place of `old`.
    fn failed_over(&self, old: usize) -> bool;
    /// Waits until another node serves as primary in place of `old` (the
    /// Sentinels name another primary; the cluster has promoted `old`'s
    /// replica); the time it took from `since`.
    fn until_failover(&self, old: usize, since: i64, timeout: Duration) -> Option<i64> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.failed_over(old) {
                return Some(crate::history::now_ns() - since);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
    /// Fails over from `primary` so that what it granted lately is lost
    /// unless replicas acknowledged it; the failover time from `since`, as
    /// [`until_failover`](Self::until_failover).
    fn lossy_failover(&mut self, primary: usize, since: i64, timeout: Duration) -> Option<i64>;
    /// Asks for a planned failover away from `primary`.
    ///
    /// # Errors
    /// What the failover command answered.
    fn planned_failover(&self, primary: usize) -> Result<(), String>;
    /// Starts the killed `old` again once another node has taken its place
    /// (as a replica of that one when `as_replica`, where the topology lets
    /// the starter choose); how it rejoined.
    fn rejoin(&mut self, old: usize, as_replica: bool) -> &'static str;
    /// Stalls the link of one replica of `primary` for `hold`; which one.
    ///
    /// # Errors
    /// When the topology has no way to stall a link.
    fn stall_replica(
        &mut self,
        primary: usize,
        rng: &mut StdRng,
        hold: Duration,
    ) -> Result<usize, String>;
}

/// The process id of the server on `port`.
pub fn pid_of(port: u16) -> Option<i32> {
    let mut con = conn_to(port, Duration::from_millis(500)).ok()?;
    let info: String = redis::cmd("INFO").arg("server").query(&mut con).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A synchronous connection to the server on `port`, with `timeout` on
/// connecting, reading and writing.
pub fn conn_to(port: u16, timeout: Duration) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let con = client.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    con.set_write_timeout(Some(timeout))?;
    Ok(con)
}

/// `INFO replication` field `name` of the server on `port`.
pub fn info_field(port: u16, name: &str) -> Option<String> {
    let mut con = conn_to(port, Duration::from_millis(500)).ok()?;
    let info: String = redis::cmd("INFO").arg("replication").query(&mut con).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
}

impl Topology {
    /// Starts everything and waits until the Sentinels know both replicas
    /// and each other.
    ///
    /// # Errors
    /// Why it could not start (a missing sentinel binary starts with
    /// `cannot spawn`).
    pub fn start(persistence: bool, down_after_ms: u64) -> Result<Topology, String> {
        let mut nodes = Vec::new();
        for i in 0..3u8 {
            let port = free_port();
            let proxy = Proxy::start(port);
            let source: IpAddr = format!("127.0.0.{}", 11 + i).parse().unwrap();
            let server = builder(port, proxy.port, source, persistence)
                .try_start()
                .map_err(|e| format!("data server {i}: {e}"))?;
            nodes.push(Node {
                server: Some(server),
                port,
                proxy,
                source,
            });
        }
        let primary_proxy = nodes[0].proxy.port;
        for n in &nodes[1..] {
            let mut con = conn_to(n.port, Duration::from_secs(2)).map_err(|e| e.to_string())?;
            let _: () = redis::cmd("REPLICAOF")
                .arg("127.0.0.1")
                .arg(primary_proxy)
                .query(&mut con)
                .map_err(|e| e.to_string())?;
        }
        let fenced = ServerBuilder::new()
            .without_module()
            .try_start()
            .map_err(|e| format!("fenced server: {e}"))?;
        let timings = SentinelTimings {
            down_after_ms,
            failover_timeout_ms: 10_000,
        };
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(Sentinel::start_monitoring(
                primary_proxy,
                SERVICE,
                2,
                timings,
            )?);
        }
        // CHAOS_SENTINEL_DEBUG="publish-period 500 info-period 1000": the
        // Sentinels' internal periods (`SENTINEL DEBUG`, Redis 7.0 and
        // later). The publish period sets how long Sentinel waits (four of
        // them) before it turns an old primary that calls itself a primary
        // into a replica, which is what grants wait for after a failover.
        if let Ok(spec) = std::env::var("CHAOS_SENTINEL_DEBUG") {
            let words: Vec<&str> = spec.split_whitespace().collect();
            for s in &sentinels {
                let mut con = s.conn();
                redis::cmd("SENTINEL")
                    .arg("DEBUG")
                    .arg(&words)
                    .query::<()>(&mut con)
                    .map_err(|e| format!("SENTINEL DEBUG {spec}: {e}"))?;
            }
        }
        let t = Topology {
            nodes,
            sentinels,
            fenced,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = t.sentinels.iter().all(|s| {
                let mut con = s.conn();
                let others: Vec<redis::Value> = redis::cmd("SENTINEL")
                    .arg("sentinels")
                    .arg(SERVICE)
                    .query(&mut con)
                    .unwrap_or_default();
                others.len() == 2 && t.nodes[1..].iter().all(|n| s.knows_replica(n.proxy.port))
            });
            if ready && t.healthy().is_some() {
                return Ok(t);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the sentinels never saw the whole topology:\n{}",
                    t.sentinels[0].log()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The Sentinels' ports, comma-separated.
    pub fn sentinel_ports(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| s.port.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node that the Sentinels name as primary (the first that answers).
    pub fn primary(&self) -> Option<usize> {
        for s in &self.sentinels {
            let Ok(mut con) = conn_to(s.port, Duration::from_millis(500)) else {
                continue;
            };
            let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(SERVICE)
                .query(&mut con)
                .ok()
                .flatten();
            if let Some((_, port)) = addr {
                return self.nodes.iter().position(|n| n.proxy.port == port);
            }
        }
        None
    }

    /// The primary when the topology is whole: every Sentinel names it, it
    /// is a primary with both other nodes attached, and they are replicas
    /// of it with their links up.
    pub fn healthy(&self) -> Option<usize> {
        let p = self.primary()?;
        for s in &self.sentinels {
            if s.primary_port() != Some(self.nodes[p].proxy.port) {
                return None;
            }
        }
        if info_field(self.nodes[p].port, "role").as_deref() != Some("master") {
            return None;
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if i == p {
                continue;
            }
            if info_field(n.port, "master_link_status").as_deref() != Some("up")
                || info_field(n.port, "master_port").as_deref()
                    != Some(self.nodes[p].proxy.port.to_string().as_str())
            {
                return None;
            }
        }
        let online = info_field(self.nodes[p].port, "connected_slaves")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        (online == 2).then_some(p)
    }

    /// Waits up to `timeout` for [`healthy`](Self::healthy).
    pub fn until_healthy(&self, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.healthy() {
                return Some(p);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The process id of node `i`'s server.
    pub fn pid(&self, i: usize) -> Option<i32> {
        pid_of(self.nodes[i].port)
    }

    /// A connection to node `i` directly (not through its proxy).
    pub fn conn(&self, i: usize) -> redis::RedisResult<redis::Connection> {
        conn_to(self.nodes[i].port, Duration::from_secs(2))
    }

    /// Kills node `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(s) = self.nodes[i].server.as_mut() {
            s.kill9();
        }
    }

    /// Starts node `i` again on its port and data directory (a killed one,
    /// or one running: it is stopped first), with its own settings: a
    /// primary of its own until told otherwise.
    ///
    /// # Panics
    /// If it does not come up.
    pub fn restart(&mut self, i: usize) {
        if let Some(s) = self.nodes[i].server.take() {
            self.nodes[i].server = Some(s.restart_with(|b| b.without_arg("replicaof")));
        }
    }

    /// Starts node `i` again as a replica of node `primary` (through its
    /// proxy), as a server managed by Sentinel is usually started once
    /// Sentinel has failed over from it: asking Sentinel for the primary
    /// first, so that it never serves as a primary of its own again. (Left
    /// to Sentinel, it would come up as a primary, keep that role until
    /// Sentinel turns it into a replica four publish periods later, and
    /// grants acknowledged by every replica would wait all that time.)
    ///
    /// # Panics
    /// If it does not come up.
    pub fn restart_as_replica(&mut self, i: usize, primary: usize) {
        let port = self.nodes[primary].proxy.port.to_string();
        if let Some(s) = self.nodes[i].server.take() {
            self.nodes[i].server =
                Some(s.restart_with(|b| b.arg_words("replicaof", &["127.0.0.1", &port])));
        }
    }
}

fn builder(port: u16, proxy: u16, source: IpAddr, persistence: bool) -> ServerBuilder {
    let b = ServerBuilder::new()
        .port(port)
        .arg("replica-announce-ip", "127.0.0.1")
        .arg("replica-announce-port", &proxy.to_string())
        .arg("bind-source-addr", &source.to_string());
    if persistence {
        b.arg("appendonly", "yes")
    } else {
        b.arg("appendonly", "no")
    }
}

impl Servers for Topology {
    fn name(&self) -> &'static str {
        "sentinel"
    }

    fn worker_args(&self) -> Vec<String> {
        vec!["--sentinels".into(), self.sentinel_ports()]
    }

    fn fenced_port(&self) -> u16 {
        self.fenced.port
    }

    fn fenced_conn(&self) -> redis::Connection {
        self.fenced.conn()
    }

    fn until_whole(&self, timeout: Duration) -> bool {
        self.until_healthy(timeout).is_some()
    }

    /// The primary Sentinel names, while the topology is whole.
    fn target(&self, _rng: &mut StdRng) -> Option<usize> {
        self.healthy()
    }

    fn pid(&self, i: usize) -> Option<i32> {
        Topology::pid(self, i)
    }

    fn conn(&self, i: usize) -> redis::RedisResult<redis::Connection> {
        Topology::conn(self, i)
    }

    fn kill(&mut self, i: usize) {
        Topology::kill(self, i);
    }

    fn restart(&mut self, i: usize) {
        Topology::restart(self, i);
    }

    /// The Sentinels name a primary other than `old`.
    fn failed_over(&self, old: usize) -> bool {
        self.primary().is_some_and(|p| p != old)
    }

    /// SIGSTOP of the primary until Sentinel has promoted a replica, and a
    /// while more: the resumed old primary keeps granting to the clients
    /// still connected to it until Sentinel turns it into a replica.
    fn lossy_failover(&mut self, primary: usize, since: i64, timeout: Duration) -> Option<i64> {
        let pid = Nix::from_raw(self.pid(primary)?);
        let _ = kill(pid, Signal::SIGSTOP);
        let failover = self.until_failover(primary, since, timeout);
        std::thread::sleep(Duration::from_millis(500));
        let _ = kill(pid, Signal::SIGCONT);
        failover
    }

    /// `SENTINEL FAILOVER`.
    fn planned_failover(&self, _primary: usize) -> Result<(), String> {
        let mut con = self.sentinels[0].conn();
        redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(SERVICE)
            .query::<()>(&mut con)
            .map_err(|e| e.to_string())
    }

    /// As a replica of the primary Sentinel names now (`replicaof` on its
    /// command line) when `as_replica`, else with its own settings.
    fn rejoin(&mut self, old: usize, as_replica: bool) -> &'static str {
        match self.primary().filter(|p| *p != old) {
            Some(now) if as_replica => {
                self.restart_as_replica(old, now);
                "replica"
            }
            _ => {
                self.restart(old);
                "primary"
            }
        }
    }

    /// Stalls one replica's link in the primary's proxy (nothing forwarded,
    /// the connection kept).
    fn stall_replica(
        &mut self,
        primary: usize,
        rng: &mut StdRng,
        hold: Duration,
    ) -> Result<usize, String> {
        let replicas: Vec<usize> = (0..self.nodes.len()).filter(|i| *i != primary).collect();
        let r = replicas[rng.random_range(0..replicas.len())];
        let source = self.nodes[r].source;
        self.nodes[primary].proxy.stall_peer(source, true);
        std::thread::sleep(hold);
        self.nodes[primary].proxy.stall_peer(source, false);
        Ok(r)
    }
}
