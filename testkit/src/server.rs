//! A real `redis-server` (or `valkey-server`) with the module, on a free
//! loopback port.
//!
//! * The binary comes from `$SPACELOCK_SERVER` (default `redis-server` on PATH),
//!   so `make test-compat` runs the same suite against every server version.
//! * The module comes from `$SPACELOCK_MODULE` (the Makefile sets it), else
//!   `target/release/libspacelock.so` in the workspace.
//! * Each server gets a free loopback port below the kernel's ephemeral range
//!   (so no test's outgoing connection can take it before the server binds),
//!   its own temp dir and log file; startup polls PING with a deadline and fails fast,
//!   printing the log, if the child exits.
//! * Drop sends `SHUTDOWN NOSAVE`, waits, then kills.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Path of the server binary under test.
pub fn server_binary() -> PathBuf {
    std::env::var_os("SPACELOCK_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

/// Path of the built module.
pub fn module_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SPACELOCK_MODULE") {
        return PathBuf::from(p);
    }
    // This crate sits one level below the workspace root.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for root in [manifest.parent().unwrap_or(manifest), manifest] {
        let p = root.join("target/release/libspacelock.so");
        if p.exists() {
            return p;
        }
    }
    panic!("libspacelock.so not found: run `make build` or set SPACELOCK_MODULE");
}

/// The kernel's ephemeral port range (`ip_local_port_range`), where outgoing
/// connections get their local ports.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// A free loopback port, checked by binding it (the listener is dropped
/// before the server binds it).
///
/// Why not `bind(127.0.0.1:0)`: that hands out a port from the ephemeral
/// range, and the suite's many client connections draw their local ports
/// from the same range. Between our check and the server's bind, a parallel
/// test's connection can take the port (seen in CI on a cluster bus port).
/// Ports below the range are never used for outgoing connections, and each
/// call in this process walks to a different one from a per-process start.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (lo, hi) = ephemeral_range();
    let (base, span) = if lo > 12_000 {
        (10_000u32, u32::from(lo) - 10_000)
    } else {
        (u32::from(hi) + 1, 65_535 - u32::from(hi))
    };
    // A start that differs per process, so parallel test binaries (and the
    // test-compat runs) spread out instead of racing for the same ports.
    let seed = std::process::id().wrapping_mul(2_654_435_761).wrapping_add(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    );
    let _ = NEXT.compare_exchange(0, seed | 1, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..span.min(4096) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (base + n % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// Server version as (major, minor, patch), from `INFO server`.
pub fn version_of(con: &mut redis::Connection) -> (u32, u32, u32) {
    let info: String = redis::cmd("INFO").arg("server").query(con).unwrap();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    // Valkey reports redis_version 7.2.4 for compatibility; prefer valkey_version.
    let v = field("valkey_version:")
        .or_else(|| field("redis_version:"))
        .unwrap_or_default();
    let mut it = v.split('.').map(|p| p.parse().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

/// Whether the server under test is Valkey.
pub fn is_valkey(con: &mut redis::Connection) -> bool {
    let info: String = redis::cmd("INFO").arg("server").query(con).unwrap();
    info.contains("valkey_version:")
}

/// Whether a failed start's log says its port was taken by someone else.
pub fn port_clash(log: &str) -> bool {
    log.contains("Address already in use")
        || log.contains("Could not create server TCP listening socket")
}

/// Spawns `cmd` (stdin and stdout closed, stderr piped) and polls PING on
/// `port` every 20 ms until the process answers.
///
/// # Errors
/// Why it is not serving, `what` first: it could not be spawned, it exited
/// (with its stderr and its `log` file), or it did not answer within
/// `timeout` (it is killed then; with its log).
pub(crate) fn spawn_until_ping(
    mut cmd: Command,
    port: u16,
    log: &Path,
    timeout: Duration,
    what: &str,
) -> Result<Child, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot spawn {what}: {e}"))?;
    let url = format!("redis://127.0.0.1:{port}/");
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut stderr);
            }
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("{what} exited with {status}\n{stderr}\n{text}"));
        }
        if let Ok(client) = redis::Client::open(url.as_str()) {
            if let Ok(mut con) = client.get_connection_with_timeout(Duration::from_millis(200)) {
                if redis::cmd("PING").query::<String>(&mut con).is_ok() {
                    return Ok(child);
                }
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{what} was not ready after {timeout:?}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Builder for a test server.
#[derive(Clone)]
pub struct ServerBuilder {
    binary: PathBuf,
    module: Option<PathBuf>,
    module_args: Vec<String>,
    args: Vec<(String, Vec<String>)>,
    dir: Option<Arc<tempfile::TempDir>>,
    port: Option<u16>,
    /// `Some` for a cluster node; the inner value is a fixed bus port
    /// (restarts), `None` picks a fresh one on every start attempt.
    cluster_bus: Option<Option<u16>>,
    debug_command: bool,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerBuilder {
    /// A server with the module loaded, persistence off.
    pub fn new() -> Self {
        ServerBuilder {
            binary: server_binary(),
            module: Some(module_path()),
            module_args: Vec::new(),
            args: Vec::new(),
            dir: None,
            port: None,
            cluster_bus: None,
            debug_command: true,
        }
    }

    /// Do not load the module (a "plain" server, e.g. a replica without it).
    pub fn without_module(mut self) -> Self {
        self.module = None;
        self
    }

    /// Use another server binary.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = path.into();
        self
    }

    /// Arguments after the module path on the `loadmodule` line.
    pub fn module_args(mut self, args: &[&str]) -> Self {
        self.module_args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// An extra config directive, e.g. `arg("appendonly", "yes")`.
    pub fn arg(mut self, name: &str, value: &str) -> Self {
        self.args.push((name.to_string(), vec![value.to_string()]));
        self
    }

    /// A config directive with several values, each its own word on the
    /// command line, e.g. `arg_words("replicaof", &["127.0.0.1", "6380"])`
    /// (one value with a space in it would reach the server quoted, as one
    /// word).
    pub fn arg_words(mut self, name: &str, values: &[&str]) -> Self {
        self.args.push((
            name.to_string(),
            values.iter().map(|v| v.to_string()).collect(),
        ));
        self
    }

    /// Drops a config directive set by [`arg`](Self::arg) or
    /// [`arg_words`](Self::arg_words) (for a restart without it).
    pub fn without_arg(mut self, name: &str) -> Self {
        self.args.retain(|(k, _)| k != name);
        self
    }

    /// Reuse a data directory (for restarts).
    pub fn dir(mut self, dir: Arc<tempfile::TempDir>) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Use a fixed port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// A cluster node (`cluster-enabled yes`) with its own bus port
    /// (`cluster-port`), chosen afresh on each start attempt.
    pub fn cluster(mut self) -> Self {
        self.cluster_bus = Some(None);
        self
    }

    /// Loads the module with `token-mode MODE` (`term`, the default, or
    /// `counter`), after any other module arguments.
    pub fn token_mode(mut self, mode: &str) -> Self {
        self.module_args
            .extend(["token-mode".to_string(), mode.to_string()]);
        self
    }

    /// Do not pass `enable-debug-command` (servers older than 7.0 reject it).
    pub fn without_debug_command(mut self) -> Self {
        self.debug_command = false;
        self
    }

    /// Starts the server and waits until it answers PING.
    ///
    /// # Panics
    /// If the server does not come up; the panic message holds its log.
    pub fn start(self) -> Server {
        self.try_start()
            .unwrap_or_else(|log| panic!("server failed to start:\n{log}"))
    }

    /// Like [`start`](Self::start) but returns the server log on failure.
    ///
    /// `free_port` releases the port before the server binds it, so another
    /// process can take it in between: a start on a port it picked that
    /// fails on the port is tried again on a fresh one (five tries). A test
    /// that expects the start to fail (the server refusing the module) then
    /// gets the refusal's log, never a clash's that happened to exit too.
    pub fn try_start(self) -> Result<Server, String> {
        let mut attempt = 0;
        loop {
            match self.clone().start_once() {
                Err(log) if attempt < 4 && self.port.is_none() && port_clash(&log) => attempt += 1,
                done => return done,
            }
        }
    }

    fn start_once(self) -> Result<Server, String> {
        let dir = self
            .dir
            .clone()
            .unwrap_or_else(|| Arc::new(tempfile::tempdir().expect("tempdir")));
        let port = self.port.unwrap_or_else(free_port);
        let bus_port = self.cluster_bus.map(|bus| bus.unwrap_or_else(free_port));
        let log = dir.path().join(format!("server-{port}.log"));
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--port")
            .arg(port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log)
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no")
            // A primary waits 5 s (the default) before a diskless full sync,
            // for more replicas to join it: every test that attaches a
            // replica paid that wait. Tests that want it set it back.
            .arg("--repl-diskless-sync-delay")
            .arg("0");
        if self.debug_command {
            cmd.arg("--enable-debug-command").arg("yes");
        }
        if let Some(bus) = bus_port {
            cmd.arg("--cluster-enabled")
                .arg("yes")
                .arg("--cluster-port")
                .arg(bus.to_string());
        }
        if let Some(module) = &self.module {
            cmd.arg("--loadmodule").arg(module);
            cmd.args(&self.module_args);
        }
        for (k, v) in &self.args {
            cmd.arg(format!("--{k}")).args(v);
        }
        let child = spawn_until_ping(
            cmd,
            port,
            &log,
            Duration::from_secs(20),
            &format!("{:?}", self.binary),
        )?;
        Ok(Server {
            child: Some(child),
            port,
            bus_port,
            dir,
            log,
            // A restart keeps the bus port, as it keeps the port.
            builder: ServerBuilder {
                cluster_bus: bus_port.map(Some),
                ..self
            },
        })
    }
}

/// A running server; shut down on drop.
pub struct Server {
    child: Option<Child>,
    /// Its loopback port.
    pub port: u16,
    /// Its cluster bus port, for a cluster node.
    pub bus_port: Option<u16>,
    /// Its data directory (shared with restarts).
    pub dir: Arc<tempfile::TempDir>,
    log: PathBuf,
    builder: ServerBuilder,
}

impl Server {
    /// Starts a default server with the module.
    pub fn new() -> Server {
        ServerBuilder::new().start()
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A client for this server.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap()
    }

    /// A new synchronous connection (RESP2).
    pub fn conn(&self) -> redis::Connection {
        self.client().get_connection().unwrap()
    }

    /// A new synchronous connection speaking RESP3.
    pub fn conn_resp3(&self) -> redis::Connection {
        redis::Client::open(format!("{}?protocol=resp3", self.url()))
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Kills the process with SIGKILL (no shutdown, no final fsync).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops gracefully (`SHUTDOWN NOSAVE`, then kill after 5 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(mut con) = self
                .client()
                .get_connection_with_timeout(Duration::from_secs(1))
            {
                let _ = redis::cmd("SHUTDOWN").arg("NOSAVE").query::<()>(&mut con);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops this server and starts it again on the same port and data dir,
    /// with the same settings (or with `change` applied to them).
    pub fn restart_with(mut self, change: impl FnOnce(ServerBuilder) -> ServerBuilder) -> Server {
        self.stop();
        let builder = change(self.builder.clone().dir(self.dir.clone()).port(self.port));
        builder.start()
    }

    /// Kills with SIGKILL and starts again on the same dir and port.
    pub fn crash_and_restart(mut self) -> Server {
        self.kill9();
        self.builder
            .clone()
            .dir(self.dir.clone())
            .port(self.port)
            .start()
    }
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A server that died on its own (a crash) is worth its log: the
        // temp dir holding it goes away with this value.
        let died = matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))));
        if died {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(400).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!(
                "server on port {} exited unexpectedly; last lines of its log:\n{}",
                self.port,
                tail.join("\n")
            );
        }
        self.stop();
    }
}
