//! A real Sentinel on a free loopback port, monitoring one primary.
//!
//! The binary: `$SPACELOCK_SERVER --sentinel` when a server is chosen (every
//! Redis and Valkey server binary can run as a sentinel), else Debian's
//! `redis-sentinel` (`make deps` installs it). [`Sentinel::start`] returns
//! the reason instead when neither runs, for the test to skip with.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use crate::server::spawn_until_ping;
use crate::{free_port, Server};

/// Timings of a fast failover: quorum 1, a primary down after
/// `down_after_ms`, a failover given up after `failover_timeout_ms`.
#[derive(Debug, Clone, Copy)]
pub struct SentinelTimings {
    /// `sentinel down-after-milliseconds`.
    pub down_after_ms: u64,
    /// `sentinel failover-timeout`.
    pub failover_timeout_ms: u64,
}

impl Default for SentinelTimings {
    fn default() -> Self {
        SentinelTimings {
            down_after_ms: 500,
            failover_timeout_ms: 5_000,
        }
    }
}

/// A running sentinel; killed on drop.
pub struct Sentinel {
    child: Option<Child>,
    /// Its loopback port.
    pub port: u16,
    /// The monitored primary's name.
    pub name: String,
    /// Its temp dir (config file, log).
    pub dir: Arc<tempfile::TempDir>,
    log: PathBuf,
}

/// The sentinel command: (program, arguments after the config file).
fn sentinel_command() -> (PathBuf, Vec<&'static str>) {
    match std::env::var_os("SPACELOCK_SERVER") {
        Some(bin) if !bin.is_empty() => (PathBuf::from(bin), vec!["--sentinel"]),
        _ => (PathBuf::from("redis-sentinel"), vec![]),
    }
}

impl Sentinel {
    /// Starts a sentinel that monitors `primary` as `name` with quorum 1,
    /// and waits until it answers PING.
    ///
    /// # Errors
    ///
    /// Why no sentinel could run here: `cannot spawn …` when the binary is
    /// missing (a reason to skip), else the start failure with its log.
    pub fn start(
        primary: &Server,
        name: &str,
        timings: SentinelTimings,
    ) -> Result<Sentinel, String> {
        Self::start_monitoring(primary.port, name, 1, timings)
    }

    /// Starts a sentinel that monitors the primary at `127.0.0.1:port` (a
    /// server, or a [`Proxy`](crate::Proxy) in front of one) as `name` with
    /// `quorum`, and waits until it answers PING. Sentinels that monitor the
    /// same primary find each other through it.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub fn start_monitoring(
        port_of_primary: u16,
        name: &str,
        quorum: u32,
        timings: SentinelTimings,
    ) -> Result<Sentinel, String> {
        let dir = Arc::new(tempfile::tempdir().map_err(|e| e.to_string())?);
        let port = free_port();
        let log = dir.path().join("sentinel.log");
        let conf = dir.path().join("sentinel.conf");
        // Sentinel rewrites its config file: it must be writable.
        std::fs::write(
            &conf,
            format!(
                "port {port}\n\
                 bind 127.0.0.1\n\
                 daemonize no\n\
                 dir {dir}\n\
                 logfile {log}\n\
                 sentinel monitor {name} 127.0.0.1 {primary} {quorum}\n\
                 sentinel down-after-milliseconds {name} {down}\n\
                 sentinel failover-timeout {name} {timeout}\n\
                 sentinel parallel-syncs {name} 1\n",
                dir = dir.path().display(),
                log = log.display(),
                primary = port_of_primary,
                down = timings.down_after_ms,
                timeout = timings.failover_timeout_ms,
            ),
        )
        .map_err(|e| e.to_string())?;
        let (bin, extra) = sentinel_command();
        let mut cmd = Command::new(&bin);
        cmd.arg(&conf).args(&extra);
        let child = spawn_until_ping(
            cmd,
            port,
            &log,
            Duration::from_secs(10),
            &format!("the sentinel ({bin:?})"),
        )?;
        Ok(Sentinel {
            child: Some(child),
            port,
            name: name.to_string(),
            dir,
            log,
        })
    }

    /// [`start`](Self::start), or the test is skipped when no sentinel
    /// binary can run here.
    ///
    /// # Panics
    ///
    /// If a sentinel that could be spawned did not come up: that is a
    /// failure, not a reason to skip.
    pub fn start_or_skip(primary: &Server, name: &str, timings: SentinelTimings) -> Sentinel {
        match Self::start(primary, name, timings) {
            Ok(s) => s,
            Err(why) if why.starts_with("cannot spawn") => {
                crate::skip(format!("no sentinel can run here: {why}"))
            }
            Err(why) => panic!("the sentinel did not start: {why}"),
        }
    }

    /// A primary, one replica in sync with it, and a sentinel monitoring the
    /// primary as `name` (default timings) that knows the replica, so that
    /// it can promote it. Skips the test when no sentinel can run here.
    ///
    /// # Panics
    ///
    /// If the sentinel does not see the replica within 20 s.
    pub fn over_a_replicated_primary(name: &str) -> (Server, Server, Sentinel) {
        let primary = Server::new();
        let replica = crate::attached_replica(&primary);
        let sentinel = Self::start_or_skip(&primary, name, SentinelTimings::default());
        sentinel.until_knows_replica(&replica, Duration::from_secs(20));
        (primary, replica, sentinel)
    }

    /// Waits until the sentinel knows `replica` with its link up.
    ///
    /// # Panics
    ///
    /// If it does not within `timeout`, with the sentinel's log.
    pub fn until_knows_replica(&self, replica: &Server, timeout: Duration) {
        assert!(
            crate::wait_until(timeout, || self.knows_replica(replica.port)),
            "the sentinel never saw the replica on port {}:\n{}",
            replica.port,
            self.log()
        );
    }

    /// `SENTINEL FAILOVER`, retried for 15 s while the sentinel is not
    /// ready for it, then waits up to `timeout` until `to` is the primary
    /// the sentinel names and calls itself one.
    ///
    /// # Panics
    ///
    /// If the failover is refused throughout, or does not end on `to`.
    pub fn fail_over_to(&self, to: &Server, timeout: Duration) {
        let mut con = self.conn();
        assert!(
            crate::wait_until(Duration::from_secs(15), || redis::cmd("SENTINEL")
                .arg("FAILOVER")
                .arg(&self.name)
                .query::<()>(&mut con)
                .is_ok()),
            "SENTINEL FAILOVER refused:\n{}",
            self.log()
        );
        assert!(
            crate::wait_until(timeout, || self.primary_port() == Some(to.port)
                && crate::role(to).as_deref() == Some("master")),
            "no failover to port {}:\n{}",
            to.port,
            self.log()
        );
    }

    /// A connection to the sentinel.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// `SENTINEL get-master-addr-by-name`: the port of the primary it
    /// currently names.
    pub fn primary_port(&self) -> Option<u16> {
        let mut con = self.conn();
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.name)
            .query(&mut con)
            .ok()
            .flatten();
        addr.map(|(_, port)| port)
    }

    /// Whether the sentinel knows a replica on `port` whose link to the
    /// primary is up (so that it can promote it).
    pub fn knows_replica(&self, port: u16) -> bool {
        let mut con = self.conn();
        let Ok(replicas) = redis::cmd("SENTINEL")
            .arg("replicas")
            .arg(&self.name)
            .query::<Vec<Vec<String>>>(&mut con)
        else {
            return false;
        };
        replicas.iter().any(|fields| {
            let field = |name: &str| {
                fields
                    .chunks(2)
                    .find(|p| p[0] == name)
                    .map(|p| p[1].as_str())
            };
            field("port") == Some(port.to_string().as_str())
                && field("master-link-status") == Some("ok")
                && field("flags")
                    .is_some_and(|f| !f.contains("down") && !f.contains("disconnected"))
        })
    }

    /// The sentinel's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
