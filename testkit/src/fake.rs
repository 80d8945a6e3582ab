//! A fake RESP server for the one fault a real server will not produce on
//! demand: a command that is never answered while the connection stays up.
//!
//! It speaks just enough RESP2 for redis-rs to connect (`PING`, `CLIENT …`,
//! `SELECT`, `AUTH` get `+OK`/`+PONG`), answers `SPACELOCK.RELEASE` and
//! `SPACELOCK.REFRESH` with `:0` and a plain `SPACELOCK.ACQUIRE` with a nil,
//! and never answers `SPACELOCK.ACQUIRE … WAIT`. Every command it receives
//! is logged, in order, for the test to inspect. This is not a stand-in for
//! the module: tests of lock behaviour run against real servers.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A fake server on a free loopback port; see the module docs.
pub struct FakeServer {
    /// Its port.
    pub port: u16,
    log: Arc<Mutex<Vec<Vec<String>>>>,
    stop: Arc<AtomicBool>,
}

impl FakeServer {
    /// Starts the fake server.
    pub fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake server");
        let port = listener.local_addr().expect("address").port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let l = l.clone();
                std::thread::spawn(move || serve(conn, l));
            }
        });
        FakeServer { port, log, stop }
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Every command received so far, as text (lossy), in arrival order.
    pub fn commands(&self) -> Vec<Vec<String>> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The received commands whose name (case-insensitive) is `name`.
    pub fn received(&self, name: &str) -> Vec<Vec<String>> {
        self.commands()
            .into_iter()
            .filter(|c| c.first().is_some_and(|n| n.eq_ignore_ascii_case(name)))
            .collect()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(conn: TcpStream, log: Arc<Mutex<Vec<Vec<String>>>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(600)));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut input = BufReader::new(conn);
    while let Some(cmd) = read_command(&mut input) {
        let name = cmd
            .first()
            .map(|n| n.to_ascii_uppercase())
            .unwrap_or_default();
        let wait = cmd.iter().any(|a| a.eq_ignore_ascii_case("WAIT"));
        log.lock().unwrap_or_else(|p| p.into_inner()).push(cmd);
        let reply: &[u8] = match name.as_str() {
            "PING" => b"+PONG\r\n",
            "CLIENT" | "SELECT" | "AUTH" => b"+OK\r\n",
            "SPACELOCK.ACQUIRE" if wait => continue, // never answered
            "SPACELOCK.ACQUIRE" => b"$-1\r\n",
            "SPACELOCK.RELEASE" | "SPACELOCK.REFRESH" => b":0\r\n",
            _ => b"-ERR unknown command\r\n",
        };
        if out.write_all(reply).is_err() {
            return;
        }
    }
}

/// Reads one RESP array of bulk strings (what redis-rs sends); `None` at EOF
/// or on anything else.
fn read_command(input: &mut BufReader<TcpStream>) -> Option<Vec<String>> {
    let header = read_line(input)?;
    let n: usize = header.strip_prefix('*')?.parse().ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        let len: usize = read_line(input)?.strip_prefix('$')?.parse().ok()?;
        let mut data = vec![0u8; len + 2];
        std::io::Read::read_exact(input, &mut data).ok()?;
        data.truncate(len);
        args.push(String::from_utf8_lossy(&data).into_owned());
    }
    Some(args)
}

fn read_line(input: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = String::new();
    if input.read_line(&mut line).ok()? == 0 {
        return None;
    }
    Some(line.trim_end_matches(['\r', '\n']).to_string())
}
