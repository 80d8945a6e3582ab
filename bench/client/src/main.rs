//! Workloads 3 and 4 of `make bench`, through the real `spacelock-client`:
//!
//! * 3a: `with_space_lock` cycles/s (empty body) vs raw ACQUIRE + RELEASE
//!   round trips on the same multiplexed connection, alternated.
//! * 3b: one process holding L leases (ttl 3 s) for H seconds: client CPU %,
//!   server CPU %, refreshes/s seen by the server, leases lost; vs the existing service's
//!   design (a timer per lease sending the Lua text with `EVAL`).
//! * 4: 8 clients competing for one key with a 0.5 ms critical section:
//!   sections/s, wait-to-acquire and handoff latency, `WAIT` vs the common
//!   polling loop (retry ACQUIRE every 10 ms ± 5 ms).
//! * replicas: grant and cycle latency with 0, 1 and 2 replicas
//!   acknowledging (`Options::replicas`), against a primary with two
//!   replicas (run only with `BENCH_CLIENT_ONLY=replicas`).
//!
//! Started by the main bench tool against a server it runs; prints
//! `ROW\tworkload\tspacelock\tbaseline\tratio\tspread` and `MISSING\ttext`
//! lines on stdout, progress on stderr.

mod measure;
mod replicas;
mod workload3a;
mod workload3b;
mod workload4;

use redis::aio::MultiplexedConnection;

use crate::replicas::replicas;
use crate::workload3a::workload3a;
use crate::workload3b::workload3b;
use crate::workload4::workload4;

pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub(crate) fn env_f(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub(crate) struct Env {
    pub(crate) client: redis::Client,
    pub(crate) server: String,
    pub(crate) pid: u32,
    pub(crate) quick: bool,
}

impl Env {
    pub(crate) async fn conn(&self) -> Res<MultiplexedConnection> {
        Ok(self.client.get_multiplexed_async_connection().await?)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let port: u16 = std::env::var("BENCH_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .expect("BENCH_PORT");
    let env = Env {
        client: redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("client"),
        server: std::env::var("BENCH_SERVER_NAME").unwrap_or_else(|_| "server".into()),
        pid: std::env::var("BENCH_SERVER_PID")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0),
        quick: matches!(std::env::var("QUICK").as_deref(), Ok(v) if !v.is_empty() && v != "0"),
    };
    let only = std::env::var("BENCH_CLIENT_ONLY").unwrap_or_default();
    let want = |w: &str| only.is_empty() || only.split(',').any(|o| o == w);
    if want("3a") {
        eprintln!("workload 3a: with_space_lock cycles vs raw round trips");
        if let Err(e) = workload3a(&env).await {
            println!("MISSING\tworkload 3a (client cycles) failed: {e}");
        }
    }
    if want("3b") {
        eprintln!("workload 3b: heartbeat of many leases");
        if let Err(e) = workload3b(&env).await {
            println!("MISSING\tworkload 3b (heartbeat) failed: {e}");
        }
    }
    if only.split(',').any(|o| o == "replicas") {
        eprintln!("replica-acknowledged grants: 0, 1, 2 replicas");
        if let Err(e) = replicas(&env).await {
            println!("MISSING\treplica-acknowledged grants failed: {e}");
        }
    }
    if want("4") {
        eprintln!("workload 4: contention, WAIT vs polling");
        if let Err(e) = workload4(&env).await {
            println!("MISSING\tworkload 4 (contention) failed: {e}");
        }
    }
}
