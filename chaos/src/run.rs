//! The orchestrator (`spacelock-chaos run`): starts the topology and the
//! client processes, injects one fault at a time, then collects the fenced
//! resource's log and checks the history.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::cluster::ClusterTopology;
use crate::history::{now_ns, Line, Recorder};
use crate::topology::{Servers, Topology};
use crate::workers::{NAMES, PREFIX};

/// Every fault kind, by name.
pub const FAULTS: [&str; 8] = [
    "kill-restart",
    "stop-primary",
    "planned-failover",
    "kill-failover",
    "pause-writes",
    "stall-replica",
    "pause-client",
    "lossy-failover",
];

/// The faults of a default run: every one but the lossy failover, which
/// only a run with acknowledgements off is meant to survive badly.
pub const DEFAULT_FAULTS: [&str; 7] = [
    "kill-restart",
    "stop-primary",
    "planned-failover",
    "kill-failover",
    "pause-writes",
    "stall-replica",
    "pause-client",
];

/// The faults a cluster run can inject: every one but the stalled replica
/// link (there are no proxies to stall it in).
pub const CLUSTER_FAULTS: [&str; 7] = [
    "kill-restart",
    "stop-primary",
    "planned-failover",
    "kill-failover",
    "pause-writes",
    "pause-client",
    "lossy-failover",
];

/// The faults of a default cluster run: all but the lossy failover.
pub const CLUSTER_DEFAULT_FAULTS: [&str; 6] = [
    "kill-restart",
    "stop-primary",
    "planned-failover",
    "kill-failover",
    "pause-writes",
    "pause-client",
];

/// Which servers a run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopologyKind {
    /// A primary, two replicas and three Sentinels.
    Sentinel,
    /// A Redis Cluster of three primaries with a replica each.
    Cluster,
}

impl TopologyKind {
    /// The fault kinds it can inject.
    pub fn faults(self) -> &'static [&'static str] {
        match self {
            TopologyKind::Sentinel => &FAULTS,
            TopologyKind::Cluster => &CLUSTER_FAULTS,
        }
    }

    /// The fault kinds of a default run.
    pub fn default_faults(self) -> &'static [&'static str] {
        match self {
            TopologyKind::Sentinel => &DEFAULT_FAULTS,
            TopologyKind::Cluster => &CLUSTER_DEFAULT_FAULTS,
        }
    }

    /// Replicas that must acknowledge a grant by default: every replica
    /// that can be promoted.
    pub fn default_replicas(self) -> usize {
        match self {
            TopologyKind::Sentinel => 2,
            TopologyKind::Cluster => 1,
        }
    }
}

/// How a run is set up.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Which servers run.
    pub topology: TopologyKind,
    /// Where the history goes.
    pub dir: PathBuf,
    /// How long the clients run.
    pub seconds: u64,
    /// Replicas that must acknowledge each grant and refresh (0: off).
    pub replicas: usize,
    /// `appendonly yes` on the data servers.
    pub persistence: bool,
    /// Enabled fault kinds.
    pub faults: Vec<String>,
    /// Seconds between faults: (min, max).
    pub every: (u64, u64),
    /// When the first fault comes (s after the clients start).
    pub first_fault_s: u64,
    /// Random seed.
    pub seed: u64,
    /// Lease ttl.
    pub ttl_ms: u64,
    /// Sentinel's `down-after-milliseconds`, or the cluster's
    /// `cluster-node-timeout`: how long a primary may be silent before it
    /// is failed over from.
    pub down_after_ms: u64,
    /// Worker processes of each kind: CLI, Rust, Node.
    pub workers: (usize, usize, usize),
    /// The `spacelock` binary.
    pub cli: PathBuf,
    /// The compiled Node worker script.
    pub node_worker: Option<PathBuf>,
    /// Whether the workers use the shared and counted names too.
    pub shapes: bool,
    /// Whether a server killed and failed over from starts again as a
    /// replica of Sentinel's current primary (else as a primary).
    pub rejoin_as_replica: bool,
}

struct Worker {
    id: String,
    child: Child,
}

/// Runs a whole run and returns the checker's report.
///
/// # Errors
/// When the topology cannot start (a reason starting with `cannot spawn`
/// means no Sentinel binary), or the history cannot be read.
pub fn run(cfg: &RunConfig) -> Result<crate::check::Report, String> {
    std::fs::create_dir_all(&cfg.dir).map_err(|e| format!("{}: {e}", cfg.dir.display()))?;
    if cfg.replicas > 0 && !crate::acks::CLI_ACKS && cfg.workers.0 > 0 {
        return Err(
            "this build's CLI cannot wait for replicas' acknowledgements (--cli-workers 0)".into(),
        );
    }
    let documented = cfg.persistence;
    let mut topo: Box<dyn Servers> = match cfg.topology {
        TopologyKind::Sentinel => {
            eprintln!(
                "chaos: starting 3 data servers (appendonly {}), 3 sentinels (quorum 2, down-after-milliseconds {} ms, ping period 1 s), a fenced-resource server",
                if cfg.persistence { "yes" } else { "no" },
                cfg.down_after_ms
            );
            Box::new(Topology::start(cfg.persistence, cfg.down_after_ms)?)
        }
        TopologyKind::Cluster => {
            eprintln!(
                "chaos: starting a cluster of 3 primaries with a replica each (appendonly {}, cluster-node-timeout {} ms), a fenced-resource server",
                if cfg.persistence { "yes" } else { "no" },
                cfg.down_after_ms
            );
            Box::new(ClusterTopology::start(
                cfg.persistence,
                cfg.down_after_ms,
                cfg.shapes,
            )?)
        }
    };
    let faults_rec = Recorder::open(&cfg.dir.join("faults.jsonl"), "orchestrator");
    let t0 = now_ns();
    let until = t0 + i64::try_from(cfg.seconds).unwrap_or(0) * 1_000_000_000;
    let mut workers = Vec::new();
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let common = |cmd: &mut Command, id: &str, seed: u64| {
        cmd.arg("--id")
            .arg(id)
            .arg("--dir")
            .arg(&cfg.dir)
            .args(topo.worker_args())
            .arg("--fenced")
            .arg(topo.fenced_port().to_string())
            .arg("--ttl-ms")
            .arg(cfg.ttl_ms.to_string())
            .arg("--replicas")
            .arg(cfg.replicas.to_string())
            .arg("--until-ns")
            .arg(until.to_string())
            .arg("--seed")
            .arg(seed.to_string())
            .arg("--shapes")
            .arg(cfg.shapes.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
    };
    let mut seed = cfg.seed.wrapping_mul(1000);
    for i in 1..=cfg.workers.0 {
        let id = format!("cli-{i}");
        let mut cmd = Command::new(&me);
        cmd.arg("cli-worker").arg("--cli").arg(&cfg.cli);
        seed += 1;
        common(&mut cmd, &id, seed);
        workers.push(Worker {
            child: cmd.spawn().map_err(|e| e.to_string())?,
            id,
        });
    }
    for i in 1..=cfg.workers.1 {
        let id = format!("rust-{i}");
        let mut cmd = Command::new(&me);
        cmd.arg("worker");
        seed += 1;
        common(&mut cmd, &id, seed);
        workers.push(Worker {
            child: cmd.spawn().map_err(|e| e.to_string())?,
            id,
        });
    }
    if let Some(script) = &cfg.node_worker {
        for i in 1..=cfg.workers.2 {
            let id = format!("node-{i}");
            let mut cmd = Command::new("node");
            cmd.arg(script);
            seed += 1;
            common(&mut cmd, &id, seed);
            workers.push(Worker {
                child: cmd.spawn().map_err(|e| e.to_string())?,
                id,
            });
        }
    }

    // Faults, one at a time, in shuffled rounds of the enabled kinds.
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut round: Vec<String> = Vec::new();
    let mut next = Instant::now() + Duration::from_secs(cfg.first_fault_s);
    let fault_budget = Duration::from_secs(6);
    loop {
        let left = Duration::from_nanos(u64::try_from(until - now_ns()).unwrap_or(0));
        let wait = next.saturating_duration_since(Instant::now());
        if cfg.faults.is_empty() || wait + fault_budget > left {
            break;
        }
        std::thread::sleep(wait);
        if round.is_empty() {
            round = cfg.faults.clone();
            round.shuffle(&mut rng);
        }
        let kind = round.pop().unwrap();
        let primary = if topo.until_whole(Duration::from_secs(30)) {
            topo.target(&mut rng)
        } else {
            None
        };
        let Some(primary) = primary else {
            eprintln!("chaos: the topology did not become whole again; no more faults");
            break;
        };
        let mut line = inject(topo.as_mut(), &kind, primary, &workers, cfg, &mut rng);
        // The interval to the next fault counts from when the topology is
        // whole again, so that each fault's stall is its own and not the
        // sum of two; how long that took is part of the fault's line.
        if topo.until_whole(Duration::from_secs(30)) {
            let since = line.i("start").unwrap_or(0);
            line = line.with("whole_ns", now_ns() - since);
        }
        eprintln!(
            "chaos: {:>6.1}s {}",
            (line.i("start").unwrap_or(0) - t0) as f64 / 1e9,
            line.to_json()
        );
        faults_rec.write(&line);
        next = Instant::now() + Duration::from_secs(rng.random_range(cfg.every.0..=cfg.every.1));
    }

    // The clients stop by themselves at their deadline.
    let deadline = Instant::now()
        + Duration::from_nanos(u64::try_from(until - now_ns()).unwrap_or(0))
        + Duration::from_secs(20);
    for w in &mut workers {
        loop {
            match w.child.try_wait() {
                Ok(Some(_)) => break,
                _ if Instant::now() > deadline => {
                    eprintln!("chaos: {} did not stop; killing it", w.id);
                    let _ = w.child.kill();
                    let _ = w.child.wait();
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    let t1 = now_ns();

    // The fenced resource's log, and the run's settings.
    let mut con = topo.fenced_conn();
    let fenced_rec = Recorder::open(&cfg.dir.join("fenced.jsonl"), "fenced");
    for name in NAMES {
        for l in
            crate::fenced::dump(&mut con, &format!("{PREFIX}{name}")).map_err(|e| e.to_string())?
        {
            fenced_rec.write(&l);
        }
    }
    // The data servers run the same binary as the fenced one.
    let (major, minor, patch) = spacelock_testkit::version_of(&mut con);
    let product = if spacelock_testkit::is_valkey(&mut con) {
        "Valkey"
    } else {
        "Redis"
    };
    let meta = Line::new("meta", t0, "orchestrator")
        .with("t0", t0)
        .with("t1", t1)
        .with("topology", topo.name())
        .with("server", format!("{product} {major}.{minor}.{patch}"))
        .with("ttl_ms", cfg.ttl_ms)
        .with("replicas", cfg.replicas)
        .with(
            "persistence",
            if cfg.persistence {
                "appendonly yes"
            } else {
                "none"
            },
        )
        .with("documented", documented)
        .with(
            "outside",
            (!documented)
                .then_some("a primary without persistence, restarted empty before a failover"),
        )
        .with("down_after_ms", cfg.down_after_ms)
        .with(
            "rejoin",
            // A cluster node comes back as a replica by itself.
            if cfg.rejoin_as_replica || cfg.topology == TopologyKind::Cluster {
                "replica"
            } else {
                "primary"
            },
        )
        .with(
            "sentinel_debug",
            std::env::var("CHAOS_SENTINEL_DEBUG")
                .ok()
                .filter(|_| cfg.topology == TopologyKind::Sentinel)
                .unwrap_or_default(),
        )
        .with("seed", cfg.seed)
        .with("faults", cfg.faults.join(","));
    Recorder::open(&cfg.dir.join("meta.jsonl"), "orchestrator").write(&meta);
    drop(topo);
    crate::check::check_dir(&cfg.dir)
}

fn signal(pid: i32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid), sig);
}

/// Injects one fault of `kind` and returns its history line.
fn inject(
    topo: &mut dyn Servers,
    kind: &str,
    primary: usize,
    workers: &[Worker],
    cfg: &RunConfig,
    rng: &mut StdRng,
) -> Line {
    let start = now_ns();
    let ttl = Duration::from_millis(cfg.ttl_ms);
    let failover_wait = Duration::from_millis(cfg.down_after_ms) + Duration::from_secs(20);
    let mut line = Line::new("fault", start, "orchestrator")
        .with("kind", kind)
        .with("node", primary);
    match kind {
        "kill-restart" => {
            topo.kill(primary);
            topo.restart(primary);
        }
        "stop-primary" => {
            // Longer than the ttl, shorter than Sentinel's down-after or
            // the cluster's node timeout.
            let hold = (ttl + Duration::from_millis(500))
                .min(Duration::from_millis(cfg.down_after_ms * 3 / 4));
            if let Some(pid) = topo.pid(primary) {
                signal(pid, Signal::SIGSTOP);
                std::thread::sleep(hold);
                signal(pid, Signal::SIGCONT);
            }
            line = line.with("held_ms", hold.as_millis() as u64);
        }
        "planned-failover" => {
            if let Err(e) = topo.planned_failover(primary) {
                line = line.with("error", e);
            }
            line = line.with(
                "failover_ns",
                topo.until_failover(primary, start, failover_wait),
            );
        }
        "kill-failover" => {
            topo.kill(primary);
            line = line.with(
                "failover_ns",
                topo.until_failover(primary, start, failover_wait),
            );
            line = line.with("rejoined", topo.rejoin(primary, cfg.rejoin_as_replica));
        }
        "pause-writes" => {
            let ms = cfg.ttl_ms + 500;
            match topo.conn(primary) {
                Ok(mut con) => {
                    let _: redis::RedisResult<()> = redis::cmd("CLIENT")
                        .arg("PAUSE")
                        .arg(ms)
                        .arg("WRITE")
                        .query(&mut con);
                }
                Err(e) => line = line.with("error", e.to_string()),
            }
            std::thread::sleep(Duration::from_millis(ms));
            line = line.with("held_ms", ms);
        }
        "stall-replica" => match topo.stall_replica(primary, rng, Duration::from_secs(3)) {
            Ok(r) => line = line.with("replica", r).with("held_ms", 3000u64),
            Err(e) => line = line.with("error", e),
        },
        "pause-client" => {
            let candidates: Vec<&Worker> = workers
                .iter()
                .filter(|w| !w.id.starts_with("cli-"))
                .collect();
            if candidates.is_empty() {
                line = line.with("error", "no client process to pause");
            } else {
                let w = candidates[rng.random_range(0..candidates.len())];
                let hold = ttl + Duration::from_secs(1);
                signal(w.child.id() as i32, Signal::SIGSTOP);
                std::thread::sleep(hold);
                signal(w.child.id() as i32, Signal::SIGCONT);
                line = line
                    .with("target", &w.id)
                    .with("held_ms", hold.as_millis() as u64);
            }
        }
        "lossy-failover" => {
            line = line.with(
                "failover_ns",
                topo.lossy_failover(primary, start, failover_wait),
            );
        }
        other => {
            line = line.with("error", format!("unknown fault {other}"));
        }
    }
    line.with("start", start).with("end", now_ns())
}

/// The default run directory: `target/chaos/` and the seconds since the epoch.
pub fn default_dir(root: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    root.join(format!("{secs}"))
}
