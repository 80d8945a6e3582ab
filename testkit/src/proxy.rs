//! A TCP proxy in front of a server, for connection faults the server itself
//! cannot produce on demand: dropping every open connection at once (a load
//! balancer or NAT gateway forgetting its flows), closing connections that
//! stay idle (an idle timeout shorter than the server's whole-second
//! `timeout`), and new connections that hang or are refused while the
//! established ones keep working.
//!
//! Plain threads and blocking sockets: the kit has no async runtime, and a
//! test opens only a handful of connections through it.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the proxy does with a connection it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward it to the server (the default).
    Forward,
    /// Keep it open but never forward a byte: a connect that hangs.
    Blackhole,
    /// Close it at once: a server that refuses new clients.
    Refuse,
    /// Forward the next `n` connections, then blackhole the rest (a client
    /// whose first connection works and whose later ones hang).
    ForwardFirst(usize),
}

/// One forwarded connection: both sockets, for shutting them down, and when
/// a byte last went through.
struct Link {
    client: TcpStream,
    server: TcpStream,
    last_activity_ms: Arc<AtomicU64>,
    /// Cleared by the pumps when either side closes.
    alive: Arc<AtomicBool>,
}

struct Shared {
    target: u16,
    mode: Mutex<ProxyMode>,
    links: Mutex<Vec<Link>>,
    held: Mutex<Vec<TcpStream>>,
    /// Peers whose connections forward nothing for now (see [`Proxy::stall_peer`]).
    stalled: Mutex<Vec<IpAddr>>,
    idle_timeout_ms: AtomicU64,
    accepted: AtomicUsize,
    dropped: AtomicUsize,
    stop: AtomicBool,
    epoch: Instant,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A fault-injecting TCP proxy on a free loopback port.
pub struct Proxy {
    /// The proxy's port; point clients at [`Proxy::url`].
    pub port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Starts a proxy forwarding to `127.0.0.1:target`.
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            target,
            mode: Mutex::new(ProxyMode::Forward),
            links: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
            stalled: Mutex::new(Vec::new()),
            idle_timeout_ms: AtomicU64::new(0),
            accepted: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            epoch: Instant::now(),
        });
        let s = shared.clone();
        std::thread::spawn(move || accept_loop(listener, s));
        let s = shared.clone();
        std::thread::spawn(move || idle_reaper(s));
        Proxy { port, shared }
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// What to do with connections accepted from now on.
    pub fn set_mode(&self, mode: ProxyMode) {
        *lock(&self.shared.mode) = mode;
    }

    /// Closes every forwarded connection now (both sides), as a load
    /// balancer or NAT gateway that drops its flows. Returns how many.
    pub fn drop_connections(&self) -> usize {
        let links = std::mem::take(&mut *lock(&self.shared.links));
        let n = links
            .iter()
            .filter(|l| l.alive.load(Ordering::Relaxed))
            .count();
        for l in links {
            close(&l);
        }
        self.shared.dropped.fetch_add(n, Ordering::Relaxed);
        n
    }

    /// Closes forwarded connections through which nothing has passed for
    /// `idle` (`None` turns it off), as an idle timeout in front of the server.
    pub fn set_idle_timeout(&self, idle: Option<Duration>) {
        let ms = idle.map_or(0, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        self.shared.idle_timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// Stalls (`true`) or resumes (`false`) every connection from the
    /// address `peer`, open now or later: while stalled, nothing is
    /// forwarded in either direction, but the connection stays open (a link
    /// that falls behind, not one that breaks). A server started with
    /// `bind-source-addr` is a distinct peer on loopback, so one replica's
    /// link can be stalled while every other client keeps going.
    pub fn stall_peer(&self, peer: IpAddr, stalled: bool) {
        let mut set = lock(&self.shared.stalled);
        set.retain(|p| *p != peer);
        if stalled {
            set.push(peer);
        }
    }

    /// Connections accepted so far, in any mode.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Forwarded connections the proxy has closed so far (dropped or idle).
    pub fn closed(&self) -> usize {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Forwarded connections open right now.
    pub fn open(&self) -> usize {
        lock(&self.shared.links).len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Unblock accept().
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for l in std::mem::take(&mut *lock(&self.shared.links)) {
            close(&l);
        }
        for s in std::mem::take(&mut *lock(&self.shared.held)) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn close(l: &Link) {
    let _ = l.client.shutdown(Shutdown::Both);
    let _ = l.server.shutdown(Shutdown::Both);
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(client) = conn else { continue };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let mode = {
            let mut mode = lock(&shared.mode);
            match *mode {
                ProxyMode::ForwardFirst(0) => ProxyMode::Blackhole,
                ProxyMode::ForwardFirst(n) => {
                    *mode = ProxyMode::ForwardFirst(n - 1);
                    ProxyMode::Forward
                }
                m => m,
            }
        };
        match mode {
            ProxyMode::Refuse => drop(client),
            ProxyMode::Blackhole | ProxyMode::ForwardFirst(_) => lock(&shared.held).push(client),
            ProxyMode::Forward => {
                let Ok(server) = TcpStream::connect(("127.0.0.1", shared.target)) else {
                    continue; // the client sees its connection closed
                };
                let last = Arc::new(AtomicU64::new(shared.now_ms()));
                let alive = Arc::new(AtomicBool::new(true));
                let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
                    client.try_clone(),
                    server.try_clone(),
                    client.try_clone(),
                    server.try_clone(),
                ) else {
                    continue;
                };
                lock(&shared.links).push(Link {
                    client: c3,
                    server: s3,
                    last_activity_ms: last.clone(),
                    alive: alive.clone(),
                });
                let peer = client.peer_addr().ok().map(|a| a.ip());
                let (sh1, sh2, l2, a2) =
                    (shared.clone(), shared.clone(), last.clone(), alive.clone());
                std::thread::spawn(move || pump(client, s2, last, alive, sh1, peer));
                std::thread::spawn(move || pump(server, c2, l2, a2, sh2, peer));
            }
        }
    }
}

/// Copies `from` to `to` until either side closes, then closes both; holds
/// what it read while the link's `peer` is stalled.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    last: Arc<AtomicU64>,
    alive: Arc<AtomicBool>,
    shared: Arc<Shared>,
    peer: Option<IpAddr>,
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                while peer.is_some_and(|p| lock(&shared.stalled).contains(&p))
                    && !shared.stop.load(Ordering::Relaxed)
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                last.store(shared.now_ms(), Ordering::Relaxed);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    alive.store(false, Ordering::Relaxed);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Closes links idle for longer than the idle timeout, every 5 ms.
fn idle_reaper(shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(5));
        let idle = shared.idle_timeout_ms.load(Ordering::Relaxed);
        let now = shared.now_ms();
        let mut links = lock(&shared.links);
        links.retain(|l| {
            // A link whose pumps have ended is gone already.
            let dead = !l.alive.load(Ordering::Relaxed);
            let quiet = now.saturating_sub(l.last_activity_ms.load(Ordering::Relaxed));
            let reap = !dead && idle > 0 && quiet > idle;
            if reap {
                close(l);
                shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
            !(dead || reap)
        });
    }
}
