//! Starts a server on a free loopback port, with persistence off and
//! optionally the module loaded; shuts it down on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::resp::Conn;

pub struct Server {
    child: Option<Child>,
    pub port: u16,
    log: PathBuf,
    dir: PathBuf,
    /// e.g. "Redis 7.0.15" or "Valkey 9.1.2".
    pub name: String,
    pub is_valkey: bool,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

impl Server {
    /// Starts `binary` with `module` loaded (if any). `extra` are more
    /// `--name value` config pairs.
    pub fn start(
        binary: &Path,
        module: Option<&Path>,
        extra: &[(&str, &str)],
    ) -> Result<Server, String> {
        Self::start_wrapped(&[], binary, module, extra)
    }

    /// Like [`start`](Self::start), under `wrapper` (e.g. valgrind): the
    /// server runs as `wrapper… binary args…`.
    pub fn start_wrapped(
        wrapper: &[String],
        binary: &Path,
        module: Option<&Path>,
        extra: &[(&str, &str)],
    ) -> Result<Server, String> {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("spacelock-bench-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let log = dir.join("server.log");
        let mut cmd = match wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        cmd.arg("--port")
            .arg(port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(&log)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"]);
        if let Some(m) = module {
            cmd.arg("--loadmodule").arg(m);
        }
        for (k, v) in extra {
            cmd.arg(format!("--{k}")).arg(v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("{} exited with {st}:\n{text}", binary.display()));
            }
            if let Ok(mut c) = Conn::connect(port) {
                if let Ok(r) = c.call(&["PING"]) {
                    if r.text().as_deref() == Some("PONG") {
                        let info = c.call(&["INFO", "server"])?.text().unwrap_or_default();
                        let field = |f: &str| {
                            info.lines()
                                .find_map(|l| l.strip_prefix(f))
                                .map(|v| v.trim().to_string())
                        };
                        let (name, is_valkey) = match field("valkey_version:") {
                            Some(v) => (format!("Valkey {v}"), true),
                            None => (
                                format!("Redis {}", field("redis_version:").unwrap_or_default()),
                                false,
                            ),
                        };
                        return Ok(Server {
                            child: Some(child),
                            port,
                            log,
                            dir,
                            name,
                            is_valkey,
                        });
                    }
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} not ready after 60 s", binary.display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The server's pid (under a wrapper: the wrapper's, which valgrind shares).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn conn(&self) -> Conn {
        Conn::connect(self.port).expect("connect to bench server")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(mut c) = Conn::connect(self.port) {
                let _ = c.call(&["SHUTDOWN", "NOSAVE"]);
            }
            // Long enough for a server under valgrind to write its profile.
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
