//! `spacelock-chaos`: runs spacelock's clients against a real primary, two
//! replicas and three Sentinels on loopback (or, with `--topology cluster`,
//! a Redis Cluster of three primaries with a replica each) while injecting
//! faults, records what every client did, and checks that history.
//!
//! * `spacelock-chaos run [--seconds N] [--replicas N] …`: a whole run,
//!   then the check; exits 1 on any violation.
//! * `spacelock-chaos check DIR`: the check alone, on a recorded run.
//! * `worker`, `cli-worker`, `body`: the client processes a run starts.

mod acks;
mod check;
mod cluster;
mod fenced;
mod history;
mod run;
mod topology;
mod workers;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "spacelock-chaos",
    about = "spacelock's history checker under faults"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start the topology and the clients, inject faults, check the history.
    Run(RunArgs),
    /// Check a recorded run.
    Check {
        /// The run directory.
        dir: PathBuf,
    },
    /// A Rust worker (started by `run`).
    Worker(WArgs),
    /// A worker that runs the `spacelock` CLI (started by `run`).
    CliWorker {
        #[command(flatten)]
        w: WArgs,
        /// The `spacelock` binary.
        #[arg(long)]
        cli: PathBuf,
    },
    /// The CLI's command (started by `spacelock run`).
    Body {
        /// The CLI worker's id.
        #[arg(long)]
        id: String,
        /// The run directory.
        #[arg(long)]
        dir: PathBuf,
        /// The fenced resource's port.
        #[arg(long)]
        fenced: u16,
        /// The Sentinels' ports.
        #[arg(long, default_value = "")]
        sentinels: String,
        /// The cluster nodes' ports (a cluster run).
        #[arg(long, default_value = "")]
        cluster: String,
        /// How long the body works.
        #[arg(long)]
        ms: u64,
        /// Whether the CLI waited in the server's queue.
        #[arg(long, action = clap::ArgAction::Set)]
        via_wait: bool,
        /// Replicas the CLI waited for.
        #[arg(long, default_value_t = 0)]
        replicas: usize,
        /// How the CLI holds the lock: exclusive, shared or limit.
        #[arg(long, default_value = "exclusive")]
        mode: String,
        /// A counted lock's permits.
        #[arg(long, default_value_t = 0)]
        limit: u32,
        /// When the CLI worker started the run (ns, monotonic): no grant
        /// it runs under was made before.
        #[arg(long, default_value_t = 0)]
        asked: i64,
    },
}

/// The servers a run starts.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum TopologyArg {
    /// A primary, two replicas and three Sentinels.
    Sentinel,
    /// A Redis Cluster: three primaries with a replica each.
    Cluster,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The servers to run against.
    #[arg(long, value_enum, default_value = "sentinel")]
    topology: TopologyArg,
    /// Where the history goes [default: target/chaos/UNIX-TIME].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// How long the clients run.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Replicas that must acknowledge each grant and refresh (0: off)
    /// [default: 2 with Sentinel, 1 on a cluster].
    #[arg(long)]
    replicas: Option<usize>,
    /// Run the data servers without persistence (outside the documented
    /// conditions: a primary restarted empty wipes its replicas).
    #[arg(long)]
    no_persistence: bool,
    /// Fault kinds, comma-separated [default: all but lossy-failover; on a
    /// cluster all but stall-replica and lossy-failover]; `none` for none.
    #[arg(long)]
    faults: Option<String>,
    /// Seconds between faults, MIN-MAX.
    #[arg(long, default_value = "8-15")]
    every: String,
    /// When the first fault comes, in seconds after the clients start.
    #[arg(long, default_value_t = 5)]
    first_fault: u64,
    /// Random seed [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,
    /// Lease ttl in ms.
    #[arg(long, default_value_t = 1500)]
    ttl_ms: u64,
    /// Sentinel's down-after-milliseconds (its ping period is 1 s).
    #[arg(long, default_value_t = 3000)]
    down_after_ms: u64,
    /// The cluster's cluster-node-timeout, in ms (a cluster run).
    #[arg(long, default_value_t = 3000)]
    node_timeout_ms: u64,
    /// CLI worker processes.
    #[arg(long, default_value_t = 2)]
    cli_workers: usize,
    /// Rust worker processes.
    #[arg(long, default_value_t = 2)]
    rust_workers: usize,
    /// Node worker processes (they need `--node-worker`).
    #[arg(long, default_value_t = 2)]
    node_workers: usize,
    /// Only the exclusive names (no reader-writer `rw`, no counted `slots`).
    #[arg(long)]
    exclusive_only: bool,
    /// After a kill-failover, start the killed server again with its own
    /// settings (a primary until Sentinel turns it into a replica) instead
    /// of as a replica of Sentinel's current primary.
    #[arg(long)]
    restart_as_primary: bool,
    /// The `spacelock` binary [default: next to this one].
    #[arg(long)]
    cli: Option<PathBuf>,
    /// The compiled Node worker script [default: clients/node/build/test/chaos-worker.js
    /// when it exists].
    #[arg(long)]
    node_worker: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct WArgs {
    #[arg(long)]
    id: String,
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value = "")]
    sentinels: String,
    #[arg(long, default_value = "")]
    cluster: String,
    #[arg(long)]
    fenced: u16,
    #[arg(long)]
    ttl_ms: u64,
    #[arg(long)]
    replicas: usize,
    #[arg(long)]
    until_ns: i64,
    #[arg(long)]
    seed: u64,
    #[arg(long, action = clap::ArgAction::Set, default_value_t = true)]
    shapes: bool,
}

fn ports(list: &str) -> Vec<u16> {
    list.split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

impl WArgs {
    fn into_worker(self) -> workers::WorkerArgs {
        workers::WorkerArgs {
            id: self.id,
            dir: self.dir,
            sentinels: ports(&self.sentinels),
            cluster: ports(&self.cluster),
            fenced: self.fenced,
            ttl_ms: self.ttl_ms,
            replicas: self.replicas,
            until_ns: self.until_ns,
            seed: self.seed,
            shapes: self.shapes,
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn print_report(report: &check::Report) -> i32 {
    println!("{}", report.table);
    for v in &report.outside {
        println!("  {v}");
    }
    for v in &report.violations {
        println!("  VIOLATION {v}");
    }
    i32::from(!report.violations.is_empty())
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Cmd::Check { dir } => match check::check_dir(&dir) {
            Ok(r) => print_report(&r),
            Err(e) => {
                eprintln!("spacelock-chaos: {e}");
                2
            }
        },
        Cmd::Run(a) => {
            let me = std::env::current_exe().expect("own path");
            let bin_dir = me.parent().expect("own dir").to_path_buf();
            let root = bin_dir.parent().unwrap_or(&bin_dir).join("chaos");
            let topology = match a.topology {
                TopologyArg::Sentinel => run::TopologyKind::Sentinel,
                TopologyArg::Cluster => run::TopologyKind::Cluster,
            };
            let faults: Vec<String> = match a.faults.as_deref() {
                None => topology
                    .default_faults()
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                Some("none") => Vec::new(),
                Some(list) => list.split(',').map(|s| s.trim().to_string()).collect(),
            };
            if let Some(bad) = faults
                .iter()
                .find(|f| !topology.faults().contains(&f.as_str()))
            {
                eprintln!(
                    "spacelock-chaos: unknown fault {bad:?} for this topology; the kinds are {}",
                    topology.faults().join(", ")
                );
                std::process::exit(2);
            }
            let every = a
                .every
                .split_once('-')
                .and_then(|(lo, hi)| Some((lo.parse().ok()?, hi.parse().ok()?)))
                .filter(|(lo, hi)| lo <= hi)
                .unwrap_or_else(|| {
                    eprintln!(
                        "spacelock-chaos: --every wants MIN-MAX seconds, got {:?}",
                        a.every
                    );
                    std::process::exit(2);
                });
            let seed = a.seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_secs())
            });
            let node_worker = a.node_worker.clone().or_else(|| {
                let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../clients/node/build/test/chaos-worker.js");
                p.exists().then_some(p)
            });
            let cfg = run::RunConfig {
                topology,
                dir: a.dir.clone().unwrap_or_else(|| run::default_dir(&root)),
                seconds: a.seconds,
                replicas: a.replicas.unwrap_or(topology.default_replicas()),
                persistence: !a.no_persistence,
                faults,
                every,
                first_fault_s: a.first_fault,
                seed,
                ttl_ms: a.ttl_ms,
                down_after_ms: match topology {
                    run::TopologyKind::Sentinel => a.down_after_ms,
                    run::TopologyKind::Cluster => a.node_timeout_ms,
                },
                workers: (a.cli_workers, a.rust_workers, a.node_workers),
                cli: a.cli.clone().unwrap_or_else(|| bin_dir.join("spacelock")),
                node_worker,
                shapes: !a.exclusive_only,
                rejoin_as_replica: !a.restart_as_primary,
            };
            eprintln!("chaos: run directory {} (seed {seed})", cfg.dir.display());
            match run::run(&cfg) {
                Ok(r) => print_report(&r),
                Err(e) => {
                    eprintln!("spacelock-chaos: {e}");
                    2
                }
            }
        }
        Cmd::Worker(w) => {
            runtime().block_on(workers::rust_worker(w.into_worker()));
            0
        }
        Cmd::CliWorker { w, cli } => {
            workers::cli_worker(w.into_worker(), cli);
            0
        }
        Cmd::Body {
            id,
            dir,
            fenced,
            sentinels,
            cluster,
            ms,
            via_wait,
            replicas,
            mode,
            limit,
            asked,
        } => {
            let args = workers::WorkerArgs {
                id,
                dir,
                sentinels: ports(&sentinels),
                cluster: ports(&cluster),
                fenced,
                ttl_ms: 0,
                replicas,
                until_ns: 0,
                seed: 0,
                shapes: true,
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(workers::cli_body(
                    args,
                    ms,
                    via_wait,
                    workers::Shape::parse(&mode, limit),
                    asked,
                ))
        }
    };
    std::process::exit(code);
}
