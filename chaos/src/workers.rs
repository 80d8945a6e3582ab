//! The client processes: a Rust worker over spacelock-client, a worker that
//! runs the `spacelock` CLI for each body, and the CLI's body. Each loops
//! over the contended names until its deadline, half of its acquisitions
//! through the server's WAIT queue, and records what happened.
//!
//! The names: `k0`–`k2` are exclusive locks; unless a run is exclusive-only,
//! `rw` is a reader-writer lock (mostly readers, sometimes a writer) and
//! `slots` a counted lock with [`SLOTS`] permits. Only exclusive holders
//! write to the fenced resource: readers and permit holders run together,
//! so no single high-water mark could judge their writes.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use spacelock_client::{
    Lease, LockConnection, Options, Outcome, Semaphore, SentinelConnection, Skipped, SpaceLock,
};

use crate::fenced;
use crate::history::{now_ns, Recorder};

/// The contended exclusive names.
pub const NAMES: [&str; 3] = ["k0", "k1", "k2"];
/// The reader-writer name.
pub const RW: &str = "rw";
/// The counted name, and its permits.
pub const COUNTED: &str = "slots";
/// Permits of [`COUNTED`].
pub const SLOTS: u32 = 2;

/// How a body holds its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The only holder.
    Exclusive,
    /// One of many readers.
    Shared,
    /// One of at most this many holders.
    Limit(u32),
}

impl Shape {
    /// The word its history lines carry in `mode`.
    pub fn word(self) -> &'static str {
        match self {
            Shape::Exclusive => "exclusive",
            Shape::Shared => "shared",
            Shape::Limit(_) => "limit",
        }
    }

    /// A counted lock's permits, 0 otherwise (the `limit` field).
    pub fn limit(self) -> u32 {
        match self {
            Shape::Limit(n) => n,
            _ => 0,
        }
    }

    /// From the body's `--mode` and `--limit`.
    pub fn parse(word: &str, limit: u32) -> Shape {
        match word {
            "shared" => Shape::Shared,
            "limit" => Shape::Limit(limit),
            _ => Shape::Exclusive,
        }
    }
}

/// The next name and how to hold it: one of five names alike, a reader
/// three times in four on `rw`.
pub fn pick(rng: &mut StdRng, shapes: bool) -> (&'static str, Shape) {
    if !shapes {
        return (NAMES[rng.random_range(0..NAMES.len())], Shape::Exclusive);
    }
    match rng.random_range(0..NAMES.len() + 2) {
        i if i < NAMES.len() => (NAMES[i], Shape::Exclusive),
        i if i == NAMES.len() => (
            RW,
            if rng.random_bool(0.75) {
                Shape::Shared
            } else {
                Shape::Exclusive
            },
        ),
        _ => (COUNTED, Shape::Limit(SLOTS)),
    }
}
/// The key prefix of every lock.
pub const PREFIX: &str = "chaos:";
/// How long a WAIT-queue acquire waits.
pub const WAIT_MS: u64 = 300;

/// What every worker is told.
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    /// Its id (`rust-1`, `cli-2`, …), also its history file's name.
    pub id: String,
    /// The run directory.
    pub dir: PathBuf,
    /// The Sentinels' ports (a Sentinel run).
    pub sentinels: Vec<u16>,
    /// The cluster nodes' ports (a cluster run).
    pub cluster: Vec<u16>,
    /// The fenced resource's port.
    pub fenced: u16,
    /// Lease ttl.
    pub ttl_ms: u64,
    /// Replicas that must acknowledge a grant (0: off).
    pub replicas: usize,
    /// When to stop (monotonic ns).
    pub until_ns: i64,
    /// Random seed.
    pub seed: u64,
    /// Whether to use the shared and counted names too.
    pub shapes: bool,
}

impl WorkerArgs {
    /// Its history file.
    pub fn file(&self) -> PathBuf {
        self.dir.join(format!("{}.jsonl", self.id))
    }
}

/// How long a body runs: mostly short, sometimes longer than the ttl (so
/// that refreshes happen while it runs).
pub fn body_ms(rng: &mut StdRng, ttl_ms: u64) -> u64 {
    if rng.random_bool(0.7) {
        rng.random_range(5..60)
    } else {
        rng.random_range(ttl_ms / 3..ttl_ms * 3 / 2)
    }
}

/// The primary's port, as the first Sentinel that answers names it.
pub fn primary_port(sentinels: &[u16]) -> Option<u16> {
    for port in sentinels {
        let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}/")) else {
            continue;
        };
        let Ok(mut con) = client.get_connection_with_timeout(Duration::from_millis(300)) else {
            continue;
        };
        let _ = con.set_read_timeout(Some(Duration::from_millis(300)));
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(crate::topology::SERVICE)
            .query(&mut con)
            .ok()
            .flatten();
        if let Some((_, p)) = addr {
            return Some(p);
        }
    }
    None
}

/// The options every Rust worker's `SpaceLock` has.
fn options(args: &WorkerArgs, generation: u32) -> Options {
    let options = Options::default()
        .ttl(Duration::from_millis(args.ttl_ms))
        .key_prefix(PREFIX)
        .owner(format!("{}.{generation}", args.id))
        .request_timeout(Duration::from_millis(args.ttl_ms))
        .release_timeout(Duration::from_millis(args.ttl_ms));
    crate::acks::rust_options(options, args.replicas)
}

/// A `SpaceLock` over the client's Sentinel connection, which follows the
/// primary through failovers by itself.
async fn connect_sentinel(
    args: WorkerArgs,
    generation: u32,
) -> Option<SpaceLock<SentinelConnection>> {
    let urls: Vec<String> = args
        .sentinels
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}/"))
        .collect();
    let client = SentinelClient::build(
        urls,
        crate::topology::SERVICE.to_string(),
        None,
        SentinelServerType::Master,
    )
    .ok()?;
    let conn = tokio::time::timeout(Duration::from_secs(2), SentinelConnection::new(client))
        .await
        .ok()?
        .ok()?;
    Some(SpaceLock::new(conn.clone(), options(&args, generation)).with_wait_connector(conn))
}

/// The cluster nodes' URLs.
fn cluster_urls(ports: &[u16]) -> Vec<String> {
    ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}/"))
        .collect()
}

/// A `SpaceLock` over a cluster connection, which routes each command to
/// the primary serving its key's slot and follows `MOVED` after a failover;
/// the WAIT queue on dedicated cluster connections.
async fn connect_cluster(
    args: WorkerArgs,
    generation: u32,
) -> Option<SpaceLock<ClusterConnection>> {
    // The client puts its own deadline on every call; a response timeout
    // below it would cut a write pause's held command short.
    let client = ClusterClient::builder(cluster_urls(&args.cluster))
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(Duration::from_secs(60))
        .retries(2)
        .build()
        .ok()?;
    let conn = tokio::time::timeout(Duration::from_secs(2), client.get_async_connection())
        .await
        .ok()?
        .ok()?;
    Some(SpaceLock::new(conn, options(&args, generation)).with_wait_connector(client))
}

/// The Rust worker (`spacelock-chaos worker`): over Sentinel, or over the
/// cluster when it is given the cluster's nodes.
pub async fn rust_worker(args: WorkerArgs) {
    if args.cluster.is_empty() {
        worker_loop(args, connect_sentinel).await;
    } else {
        worker_loop(args, connect_cluster).await;
    }
}

/// The Rust worker's loop over a `SpaceLock` that `connect` makes (again
/// after it failed to).
async fn worker_loop<C, F, Fut>(args: WorkerArgs, connect: F)
where
    C: LockConnection,
    F: Fn(WorkerArgs, u32) -> Fut,
    Fut: Future<Output = Option<SpaceLock<C>>>,
{
    let rec = std::sync::Arc::new(Recorder::open(&args.file(), &args.id));
    let mut rng = StdRng::seed_from_u64(args.seed);
    let fence = redis::Client::open(format!("redis://127.0.0.1:{}/", args.fenced))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("the fenced resource");
    let mut generation = 0;
    let mut current: Option<SpaceLock<C>> = None;
    while now_ns() < args.until_ns {
        if current.is_none() {
            generation += 1;
            current = connect(args.clone(), generation).await;
            if current.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let Some(l) = current.as_ref() else { continue };
        let (name, shape) = pick(&mut rng, args.shapes);
        let key = format!("{PREFIX}{name}");
        let via_wait = rng.random_bool(0.5);
        let ms = body_ms(&mut rng, args.ttl_ms);
        let began = now_ns();
        let body = {
            let rec = rec.clone();
            let fence = fence.clone();
            let replicas = args.replicas;
            let asked = began;
            move |lease: Lease| body(lease, rec, fence, (via_wait, asked), replicas, ms, shape)
        };
        let wait = Duration::from_millis(WAIT_MS);
        let outcome = match (shape, via_wait) {
            (Shape::Exclusive, true) => l.with_space_lock_wait(name, wait, body).await,
            (Shape::Exclusive, false) => l.with_space_lock(name, body).await,
            (Shape::Shared, true) => l.with_shared_lock_wait(name, wait, body).await,
            (Shape::Shared, false) => l.with_shared_lock(name, body).await,
            (Shape::Limit(n), _) => match Semaphore::new(l.clone(), name, n) {
                Ok(slots) if via_wait => slots.with_permit_wait(wait, body).await,
                Ok(slots) => slots.with_permit(body).await,
                Err(e) => Err(e),
            },
        };
        match outcome {
            Ok(Outcome::Ran(())) => {}
            Ok(Outcome::Skipped(skipped)) => {
                let why = skipped.to_string();
                let mut line = rec
                    .line("skip")
                    .with("key", &key)
                    .with("why", &why)
                    .with("wait", via_wait)
                    .with("began", began);
                if let Skipped::NotAcknowledged {
                    acknowledged,
                    required,
                } = skipped
                {
                    line = line
                        .with("acknowledged", acknowledged)
                        .with("required", required);
                }
                if why == "timed-out" {
                    // Nothing may be left held in this owner's name (by
                    // any holder of a shared or counted lock).
                    if let Ok(info) = l.info(name).await {
                        let mine = info.is_some_and(|i| {
                            i.holders
                                .iter()
                                .any(|h| h.owner.starts_with(&format!("{}:", l.owner())))
                        });
                        line = line.with("held_after", mine);
                    }
                }
                rec.write(&line);
                if why == "lock-held" {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(2..20))).await;
                }
            }
            Err(e) => {
                rec.write(
                    &rec.line("skip")
                        .with("key", &key)
                        .with("why", "error")
                        .with("error", e.to_string())
                        .with("wait", via_wait),
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One body of the Rust worker: records the grant (with `SPACELOCK.CHECK`
/// on the connection that got it) and its start, writes to the fenced
/// resource, works, writes again, and records its end; it stops at once
/// when the lease is lost.
async fn body(
    lease: Lease,
    rec: std::sync::Arc<Recorder>,
    mut fence: redis::aio::MultiplexedConnection,
    (via_wait, asked): (bool, i64),
    replicas: usize,
    ms: u64,
    shape: Shape,
) {
    let granted = now_ns();
    let key = lease.key().to_string();
    let token = lease.token();
    let owner = lease.owner().to_string();
    rec.write(
        &rec.line("start")
            .with("key", &key)
            .with("token", token)
            .with("owner", &owner)
            .with("mode", shape.word())
            .with("limit", u64::from(shape.limit()))
            .with("asked", asked),
    );
    let work = async {
        let check = lease.check().await.ok();
        rec.write(
            &crate::history::Line::new("grant", granted, &rec.w)
                .with("key", &key)
                .with("token", token)
                .with("owner", &owner)
                .with("acked", replicas > 0)
                .with("wait", via_wait)
                .with("check", check),
        );
        for phase in ["start", "end"] {
            if phase == "end" {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if shape != Shape::Exclusive {
                continue;
            }
            let ok = fenced::write(&mut fence, &key, token, &rec.w).await;
            rec.write(
                &rec.line("write")
                    .with("key", &key)
                    .with("token", token)
                    .with("phase", phase)
                    .with("ok", ok.as_ref().ok().copied())
                    .with("error", ok.err().map(|e| e.to_string())),
            );
        }
        lease.check().await.ok()
    };
    let (lost, end_check) = tokio::select! {
        c = work => (false, c),
        () = lease.lost() => (true, None),
    };
    // A CHECK at the end that answered 0 is a loss the client must know of
    // by now (its deadline has passed, or a refresh answered 0).
    let lost = lost || (end_check == Some(false) && lease.is_lost());
    let t = now_ns();
    if lost {
        let reason = lease
            .lost_reason()
            .map_or_else(|| "unknown".to_string(), |r| format!("{r:?}"));
        rec.write(
            &rec.line("lost")
                .with("key", &key)
                .with("token", token)
                .with("reason", reason),
        );
    }
    rec.write(
        &crate::history::Line::new("end", t, &rec.w)
            .with("key", &key)
            .with("token", token)
            .with("lost", lost)
            .with("check_end", end_check),
    );
}

/// The CLI worker (`spacelock-chaos cli-worker`): one `spacelock run` per
/// body, whose command is `spacelock-chaos body`.
pub fn cli_worker(args: WorkerArgs, cli: PathBuf) {
    let rec = Recorder::open(&args.file(), &args.id);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let me = std::env::current_exe().expect("own path");
    let list = |ports: &[u16]| {
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let (sentinels, cluster) = (list(&args.sentinels), list(&args.cluster));
    while now_ns() < args.until_ns {
        let (name, shape) = pick(&mut rng, args.shapes);
        let key = format!("{PREFIX}{name}");
        let via_wait = rng.random_bool(0.5);
        let ms = body_ms(&mut rng, args.ttl_ms);
        let Some(url) = crate::acks::cli_url(&args.sentinels, &args.cluster) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let asked = now_ns();
        let mut cmd = std::process::Command::new(&cli);
        cmd.env_remove("SPACELOCK_URL")
            .env_remove("REDIS_URL")
            .arg("run")
            .arg("--url")
            .arg(&url)
            .arg("--prefix")
            .arg(PREFIX)
            .arg("--ttl")
            .arg(format!("{}ms", args.ttl_ms))
            .arg("--kill-grace")
            .arg("100ms")
            .arg("--release-timeout")
            .arg(format!("{}ms", args.ttl_ms))
            .arg("-q");
        if !args.cluster.is_empty() {
            cmd.arg("--cluster");
        }
        crate::acks::cli_args(&mut cmd, args.replicas);
        if via_wait {
            cmd.arg("--wait").arg(format!("{WAIT_MS}ms"));
        }
        match shape {
            Shape::Exclusive => {}
            Shape::Shared => {
                cmd.arg("--shared");
            }
            Shape::Limit(n) => {
                cmd.arg("--limit").arg(n.to_string());
            }
        }
        cmd.arg(name)
            .arg("--")
            .arg(&me)
            .arg("body")
            .arg("--id")
            .arg(&args.id)
            .arg("--dir")
            .arg(&args.dir)
            .arg("--fenced")
            .arg(args.fenced.to_string())
            .arg("--sentinels")
            .arg(&sentinels)
            .arg("--cluster")
            .arg(&cluster)
            .arg("--ms")
            .arg(ms.to_string())
            .arg("--via-wait")
            .arg(via_wait.to_string())
            .arg("--replicas")
            .arg(args.replicas.to_string())
            .arg("--mode")
            .arg(shape.word())
            .arg("--limit")
            .arg(shape.limit().to_string())
            .arg("--asked")
            .arg(asked.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let out = match cmd.output() {
            Ok(o) => o,
            Err(e) => panic!("cannot run {}: {e}", cli.display()),
        };
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let why = match out.status.code() {
            Some(0) => None,
            Some(75) if via_wait => Some("timed-out"),
            Some(75) => Some("lock-held"),
            Some(69) if stderr.contains("acknowledged") => Some("not-acknowledged"),
            Some(76) => Some("lost"),
            _ => Some("error"),
        };
        if let Some(why) = why {
            rec.write(
                &rec.line("skip")
                    .with("key", &key)
                    .with("why", why)
                    .with("wait", via_wait)
                    .with("code", out.status.code().map(i64::from))
                    .with("error", (!stderr.is_empty()).then_some(stderr)),
            );
            if why == "lock-held" {
                std::thread::sleep(Duration::from_millis(rng.random_range(2..20)));
            } else if why == "error" {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The CLI's command (`spacelock-chaos body`): records the grant it runs
/// under (from `SPACELOCK_KEY`, `SPACELOCK_TOKEN`, `SPACELOCK_OWNER`), its
/// start, the fenced writes and its end into the CLI worker's file. A
/// SIGTERM (the CLI's signal for a lost lease) ends it at once, recorded.
pub async fn cli_body(args: WorkerArgs, ms: u64, via_wait: bool, shape: Shape, asked: i64) -> i32 {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    let granted = now_ns();
    let rec = Recorder::open(&args.file(), &args.id);
    let key = std::env::var("SPACELOCK_KEY").unwrap_or_default();
    let owner = std::env::var("SPACELOCK_OWNER").unwrap_or_default();
    let token: u64 = std::env::var("SPACELOCK_TOKEN")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    rec.write(
        &rec.line("start")
            .with("key", &key)
            .with("token", token)
            .with("owner", &owner)
            .with("mode", shape.word())
            .with("limit", u64::from(shape.limit()))
            .with("asked", asked),
    );
    let work = async {
        // CHECK on the primary serving the name now (the CLI's own
        // connection is not reachable from here).
        let check = check_on_primary(&args, &key, &owner, token).await;
        rec.write(
            &crate::history::Line::new("grant", granted, &rec.w)
                .with("key", &key)
                .with("token", token)
                .with("owner", &owner)
                .with("acked", args.replicas > 0)
                .with("wait", via_wait)
                .with("check", check),
        );
        let mut fence = match redis::Client::open(format!("redis://127.0.0.1:{}/", args.fenced))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
        {
            Ok(f) => f,
            Err(_) => return None,
        };
        for phase in ["start", "end"] {
            if phase == "end" {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if shape != Shape::Exclusive {
                continue;
            }
            let ok = fenced::write(&mut fence, &key, token, &rec.w).await;
            rec.write(
                &rec.line("write")
                    .with("key", &key)
                    .with("token", token)
                    .with("phase", phase)
                    .with("ok", ok.as_ref().ok().copied())
                    .with("error", ok.err().map(|e| e.to_string())),
            );
        }
        check_on_primary(&args, &key, &owner, token).await
    };
    let (mut lost, end_check) = tokio::select! {
        c = work => (false, c),
        _ = term.recv() => (true, None),
    };
    if end_check == Some(false) && !lost {
        // The lock is gone: the CLI's SIGTERM should be on its way.
        lost = tokio::time::timeout(Duration::from_millis(300), term.recv())
            .await
            .is_ok();
    }
    let t = now_ns();
    if lost {
        rec.write(
            &rec.line("lost")
                .with("key", &key)
                .with("token", token)
                .with("reason", "SIGTERM from the CLI"),
        );
    }
    rec.write(
        &crate::history::Line::new("end", t, &rec.w)
            .with("key", &key)
            .with("token", token)
            .with("lost", lost)
            .with("check_end", end_check),
    );
    if lost {
        143
    } else {
        0
    }
}

/// `SPACELOCK.CHECK` on the primary serving `key` now: the one Sentinel
/// names, or the cluster's primary for its slot (the CLI's own connection
/// is not reachable from its command).
async fn check_on_primary(args: &WorkerArgs, key: &str, owner: &str, token: u64) -> Option<bool> {
    let mut check = redis::cmd("SPACELOCK.CHECK");
    check.arg(key).arg(owner).arg(token);
    let answer = if args.cluster.is_empty() {
        let p = primary_port(&args.sentinels)?;
        let client = redis::Client::open(format!("redis://127.0.0.1:{p}/")).ok()?;
        let mut con = tokio::time::timeout(
            Duration::from_secs(1),
            client.get_multiplexed_async_connection(),
        )
        .await
        .ok()?
        .ok()?;
        tokio::time::timeout(Duration::from_secs(1), check.query_async::<i64>(&mut con)).await
    } else {
        let client = ClusterClient::builder(cluster_urls(&args.cluster))
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(1))
            .build()
            .ok()?;
        let mut con = tokio::time::timeout(Duration::from_secs(1), client.get_async_connection())
            .await
            .ok()?
            .ok()?;
        tokio::time::timeout(Duration::from_secs(1), check.query_async::<i64>(&mut con)).await
    };
    answer.ok()?.ok().map(|n| n == 1)
}
