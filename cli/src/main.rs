//! `spacelock`: a distributed `flock(1)` on the spacelock Redis/Valkey module.
//!
//! `spacelock run KEY -- COMMAND…` runs COMMAND while holding a lease on
//! KEY, refreshed by a heartbeat, and kills the command if the lease is lost;
//! `spacelock info KEY` shows who holds it. See `cli/README.md`.

#![deny(unsafe_code)]

mod conn;
mod duration;
mod info;
mod run;
mod sys;
mod terminal;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};

use duration::{parse_duration, parse_ttl};

/// Exit codes (sysexits.h where one fits).
pub mod exit {
    /// Bad arguments (EX_USAGE).
    pub const USAGE: i32 = 64;
    /// Redis unreachable or the module not loaded (EX_UNAVAILABLE).
    pub const UNAVAILABLE: i32 = 69;
    /// Internal error (EX_SOFTWARE).
    pub const SOFTWARE: i32 = 70;
    /// Output could not be written (EX_IOERR); a closed pipe is not an error.
    pub const IO_ERROR: i32 = 74;
    /// The lock is held by someone else (EX_TEMPFAIL, as `flock -E 75`).
    pub const LOCK_HELD: i32 = 75;
    /// The lease was lost while the command ran; it was killed.
    pub const LEASE_LOST: i32 = 76;
    /// The command was found but could not be executed (as shells do).
    pub const CANNOT_EXECUTE: i32 = 126;
    /// The command was not found (as shells do).
    pub const NOT_FOUND: i32 = 127;
}

const EXIT_CODES: &str = "\
Exit codes of `spacelock run`:
  N    the command's exit code (128+S if it was killed by signal S)
  64   bad arguments or URL (a duration out of range, an empty KEY, a ttl
       below 10ms), or --ttl above the server's spacelock.max-ttl
  69   Redis unreachable or not answering, module not loaded, other server error
       (WRONGMODE: KEY is another kind of lock than --shared/--limit N ask for);
       with --replicas N: fewer than N replicas acknowledged the grant in time
       (the command did not run)
  75   lock held by someone else (a writer, all N permits, or clients queued for
       it; with --wait: still held at the timeout)
  76   lease lost while the command ran: it got SIGTERM, then SIGKILL (or,
       rarely, lost before the command could start: it did not run)
  126  command not executable (the lock is released first)
  127  command not found (the lock is released first)

Environment:
  SPACELOCK_URL, REDIS_URL  the server URL if --url is not given, in order
  SPACELOCK_KEY             set for COMMAND: the Redis key of the lock
  SPACELOCK_TOKEN           set for COMMAND: the fencing token of the grant
  SPACELOCK_OWNER           set for COMMAND: this run's owner id";

/// A distributed flock(1): run a command while holding a lease lock in Redis/Valkey.
#[derive(Debug, Parser)]
#[command(
    name = "spacelock",
    version,
    propagate_version = true,
    arg_required_else_help = true,
    after_help = EXIT_CODES,
    long_about = "A distributed flock(1): run a command on exactly one host of many, under a lease \
lock kept in Redis or Valkey by the spacelock module (SPACELOCK.ACQUIRE/REFRESH/RELEASE).\n\n\
The lease is refreshed every ttl/3 while the command runs. If it is lost anyway (the key expired, \
was deleted, or Redis stopped answering for a whole ttl), the command's process group gets \
SIGTERM, then SIGKILL after --kill-grace, and spacelock exits 76."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run COMMAND while holding the lock KEY (acquire, heartbeat, release).
    #[command(
        after_help = EXIT_CODES,
        long_about = "Run COMMAND while holding the lock PREFIX+KEY.\n\n\
Acquires the lock (at once, or waiting up to --wait on the server), runs COMMAND in its own \
process group with SPACELOCK_KEY (the Redis key), SPACELOCK_TOKEN (the fencing token: strictly \
greater than every token issued before for this key) and SPACELOCK_OWNER (this run's owner id) in \
its environment, refreshes the lease every ttl/3 while it runs, releases the lock when it exits, \
and exits with its exit code.\n\n\
If the lease is lost while COMMAND runs, its process group gets SIGTERM, then SIGKILL after \
--kill-grace, and spacelock exits 76. If spacelock itself is killed with SIGKILL, COMMAND gets \
SIGTERM (Linux).\n\n\
SIGINT, SIGTERM and SIGHUP sent to spacelock are forwarded to the command's process group; the \
lock is released once the command has exited.\n\n\
Examples:\n  \
spacelock run -q nightly-backup -- /usr/local/bin/backup.sh\n  \
spacelock run --wait 5m --ttl 1m deploy-prod -- ./deploy.sh v1.2.3\n  \
spacelock run --shared --wait 1m git-cache -- ./read-cache.sh\n  \
spacelock run --limit 4 --wait 10m clone-slots -- git clone …"
    )]
    Run(RunArgs),
    /// Show who holds the lock KEY (owner, ttl, token, waiters), or "free".
    #[command(
        long_about = "Show who holds the lock PREFIX+KEY, from SPACELOCK.INFO: its \
owner id, remaining ttl, fencing token and the number of clients waiting for it; or \"free\". \
Exits 0 in both cases (69 if Redis or the module is unavailable)."
    )]
    Info(InfoArgs),
}

/// Where the locks live.
#[derive(Debug, Args)]
struct ConnArgs {
    /// Redis/Valkey URL, e.g. redis://:password@host:6379/0 (rediss:// needs the `tls` build
    /// feature), or redis+sentinel://host:port[,host:port…]/service-name to follow the primary
    /// that Sentinel names through failovers [default: $SPACELOCK_URL, then $REDIS_URL, then
    /// redis://127.0.0.1:6379/]
    #[arg(long, value_name = "URL")]
    url: Option<String>,

    /// The server is a Redis Cluster; URL may list several seed nodes separated by commas.
    #[arg(long)]
    cluster: bool,

    /// Prefix put in front of KEY to form the Redis key. The default is the Rust client's
    /// default, so `spacelock run backup` and a service calling
    /// `with_space_lock("backup")` share one lock; use --prefix '' to lock KEY itself.
    #[arg(long, value_name = "P", default_value = spacelock_client::DEFAULT_KEY_PREFIX)]
    prefix: String,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    conn: ConnArgs,

    /// Lease time to live, at least 10ms; the heartbeat refreshes it every ttl/3. Units: ms, s,
    /// m, h.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_ttl)]
    ttl: Duration,

    /// If the lock is held, wait up to DURATION for it (queued fairly on the server) instead of
    /// exiting 75 at once.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    wait: Option<Duration>,

    /// Take a shared (read) lease: any number of `--shared` runs of KEY run together, and a run
    /// without it (a writer) excludes them all. A queued writer is not passed by later readers.
    #[arg(long, conflicts_with = "limit")]
    shared: bool,

    /// Take one of N permits: at most N runs of KEY at once (1 to 1000000). Every run of KEY
    /// must give the same N; another N, or KEY used without --limit, exits 69 (WRONGMODE).
    #[arg(long, value_name = "N", value_parser = parse_limit)]
    limit: Option<u32>,

    /// After a lost lease, how long the command gets between SIGTERM and SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    kill_grace: Duration,

    /// How long the release after the command may take (a write pause holds it; a dropped
    /// connection is retried), and never longer than the lock can still exist. spacelock exits
    /// only once the release was answered or this ran out.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    release_timeout: Duration,

    /// Count a grant, and every refresh, only once N replicas have acknowledged it (`WAIT N`
    /// after each, on the same connection). If fewer do within --ack-timeout, the lock is
    /// released, the command is not started, and spacelock exits 69. 0 turns it off.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = parse_replicas, allow_negative_numbers = true)]
    replicas: usize,

    /// How long the replicas get to acknowledge a grant or a refresh (with --replicas or
    /// --wait-aof); above zero and below the ttl [default: a third of the ttl]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    ack_timeout: Option<Duration>,

    /// Wait for the grants and refreshes to be fsynced to the append-only file of the primary
    /// and of N replicas (`WAITAOF 1 N`) instead of `WAIT N`. Needs Redis 7.2 or later, or
    /// Valkey, with appendonly yes; elsewhere spacelock exits 69 without running the command.
    #[arg(long)]
    wait_aof: bool,

    /// Print only errors (not "lock held", not signal forwarding).
    #[arg(short, long)]
    quiet: bool,

    /// Name of the lock (the Redis key is PREFIX+KEY); not empty.
    #[arg(value_name = "KEY", value_parser = parse_key)]
    key: String,

    /// The command to run, and its arguments (put `--` before it).
    #[arg(
        value_name = "COMMAND",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<OsString>,
}

#[derive(Debug, Args)]
struct InfoArgs {
    #[command(flatten)]
    conn: ConnArgs,

    /// Print one JSON object: {"key":…,"held":false} or
    /// {"key":…,"held":true,"owner":…,"ttl_ms":…,"token":…,"waiters":…}.
    #[arg(long)]
    json: bool,

    /// Name of the lock (the Redis key is PREFIX+KEY); not empty.
    #[arg(value_name = "KEY", value_parser = parse_key)]
    key: String,
}

/// --limit: a whole number from 1 to 1000000.
fn parse_limit(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err(format!(
            "{text:?} is not a number of permits from 1 to 1000000"
        )),
    }
}

/// --replicas: a whole number, 0 or more.
fn parse_replicas(text: &str) -> Result<usize, String> {
    text.trim()
        .parse::<u32>()
        .map(|n| n as usize)
        .map_err(|_| format!("invalid replica count {text:?}: a whole number, 0 or more"))
}

/// KEY must not be empty: it would lock the bare prefix.
fn parse_key(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("the lock name must not be empty".to_string());
    }
    Ok(text.to_string())
}

/// Prints `spacelock: …` lines on stderr; `quiet` silences the non-error ones.
/// A closed stderr is ignored (never a panic).
#[derive(Debug, Clone, Copy)]
pub struct Say {
    quiet: bool,
}

impl Say {
    /// A non-error notice (silenced by `-q`).
    pub fn note(&self, msg: impl std::fmt::Display) {
        if !self.quiet {
            self.error(msg);
        }
    }

    /// An error (always printed).
    ///
    /// The line goes out in one `write`: stderr is unbuffered, so formatting
    /// straight into it would split the line into pieces, and the command
    /// (which shares this stderr) could print between them.
    pub fn error(&self, msg: impl std::fmt::Display) {
        let line = format!("spacelock: {msg}\n");
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print on stdout and succeed; every other
            // parse failure is a usage error (clap's own default would be 2).
            if !e.use_stderr() {
                let _ = e.print(); // a closed stdout (`--help | head -0`) is fine
                return ExitCode::SUCCESS;
            }
            let _ = write!(std::io::stderr(), "{}", with_usage(&e.render().to_string()));
            return ExitCode::from(exit::USAGE as u8);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            Say { quiet: false }.error(format_args!("cannot start the async runtime: {e}"));
            return ExitCode::from(exit::SOFTWARE as u8);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run_command(args).await,
            Command::Info(args) => info_command(args).await,
        }
    });
    // Every release has been answered or has failed by now (`run` waits for
    // them); nothing else needs the runtime.
    runtime.shutdown_timeout(Duration::from_millis(100));
    ExitCode::from(u8::try_from(code).unwrap_or(exit::SOFTWARE as u8))
}

/// Clap's error text, with the (sub)command's usage added if clap left it out
/// (it does for invalid values).
fn with_usage(error: &str) -> String {
    if error.contains("Usage:") {
        return error.to_string();
    }
    let mut cmd = Cli::command();
    cmd.build();
    let sub = std::env::args().nth(1);
    let usage = match sub.as_deref().and_then(|s| cmd.find_subcommand_mut(s)) {
        Some(sub) => sub.render_usage(),
        None => cmd.render_usage(),
    };
    let usage = usage.to_string();
    match error.find("\nFor more information") {
        Some(i) => format!("{}{usage}\n{}", &error[..=i], &error[i..]),
        None => format!("{error}\n{usage}\n"),
    }
}

async fn run_command(args: RunArgs) -> i32 {
    let say = Say { quiet: args.quiet };
    if let Some(d) = args.ack_timeout {
        if d.is_zero() || d >= args.ttl {
            say.error(format_args!(
                "invalid --ack-timeout {}: above zero and below the ttl ({})",
                duration::format_duration(d),
                duration::format_duration(args.ttl)
            ));
            return exit::USAGE;
        }
    }
    let url = conn::resolve_url(args.conn.url.as_deref());
    // A write pause holds the ACQUIRE: it is waited out for up to 5 s (with
    // --wait, the wait itself is held and then runs its course).
    let options = spacelock_client::Options::default()
        .ttl(args.ttl)
        .key_prefix(args.conn.prefix.clone())
        .owner(conn::owner_id())
        .wait_connections(1)
        .request_timeout(conn::REQUEST_TIMEOUT)
        .release_timeout(args.release_timeout)
        .replicas(args.replicas)
        .wait_aof(args.wait_aof);
    let options = match args.ack_timeout {
        Some(d) => options.ack_timeout(d),
        None => options,
    };
    match conn::connect(&url, args.conn.cluster).await {
        Err(e) => {
            let (msg, code) = conn::describe_connect_error(&e, &url);
            say.error(msg);
            code
        }
        Ok(conn::Backend::Single { client, conn }) => {
            let locks = spacelock_client::SpaceLock::new(conn, options).with_wait_connector(client);
            run::run(locks, &args, &url, say).await
        }
        Ok(conn::Backend::Cluster { client, conn }) => {
            let locks = spacelock_client::SpaceLock::new(conn, options).with_wait_connector(client);
            run::run(locks, &args, &url, say).await
        }
        Ok(conn::Backend::Sentinel { conn }) => {
            let locks =
                spacelock_client::SpaceLock::new(conn.clone(), options).with_wait_connector(conn);
            run::run(locks, &args, &url, say).await
        }
    }
}

async fn info_command(args: InfoArgs) -> i32 {
    let say = Say { quiet: false };
    let url = conn::resolve_url(args.conn.url.as_deref());
    let options = spacelock_client::Options::default()
        .key_prefix(args.conn.prefix.clone())
        .request_timeout(conn::REQUEST_TIMEOUT);
    match conn::connect(&url, args.conn.cluster).await {
        Err(e) => {
            let (msg, code) = conn::describe_connect_error(&e, &url);
            say.error(msg);
            code
        }
        Ok(conn::Backend::Single { conn, .. }) => {
            let locks = spacelock_client::SpaceLock::new(conn, options);
            info::info(&locks, &args.key, args.json, &url, say).await
        }
        Ok(conn::Backend::Cluster { conn, .. }) => {
            let locks = spacelock_client::SpaceLock::new(conn, options);
            info::info(&locks, &args.key, args.json, &url, say).await
        }
        Ok(conn::Backend::Sentinel { conn }) => {
            let locks = spacelock_client::SpaceLock::new(conn, options);
            info::info(&locks, &args.key, args.json, &url, say).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_parses_with_and_without_double_dash() {
        let cli = Cli::try_parse_from([
            "spacelock",
            "run",
            "--ttl",
            "500ms",
            "-q",
            "job",
            "--",
            "echo",
            "-n",
            "hi",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert_eq!(a.ttl, Duration::from_millis(500));
        assert_eq!(a.kill_grace, Duration::from_secs(10));
        assert_eq!(a.wait, None);
        assert!(a.quiet);
        assert_eq!(a.key, "job");
        assert_eq!(a.command, ["echo", "-n", "hi"]);
        assert_eq!(a.conn.prefix, spacelock_client::DEFAULT_KEY_PREFIX);

        let cli = Cli::try_parse_from(["spacelock", "run", "job", "ls", "-l"]).unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert_eq!(a.command, ["ls", "-l"]);
    }

    #[test]
    fn bad_arguments_are_errors() {
        for argv in [
            &["spacelock", "run", "job"][..],
            &["spacelock", "run", "--ttl", "0s", "job", "--", "true"],
            &["spacelock", "run", "--ttl", "9ms", "job", "--", "true"],
            &["spacelock", "run", "--ttl", "30", "job", "--", "true"],
            &["spacelock", "run", "--wait", "soon", "job", "--", "true"],
            &[
                "spacelock",
                "run",
                "--wait",
                "5124095576030431h",
                "job",
                "--",
                "true",
            ],
            &[
                "spacelock",
                "run",
                "--kill-grace",
                "876001h",
                "job",
                "--",
                "true",
            ],
            &[
                "spacelock",
                "run",
                "--release-timeout",
                "1x",
                "job",
                "--",
                "true",
            ],
            &["spacelock", "run", "", "--", "true"],
            &["spacelock", "run", "--replicas", "-1", "job", "--", "true"],
            &["spacelock", "run", "--replicas", "two", "job", "--", "true"],
            &["spacelock", "run", "--replicas", "1.5", "job", "--", "true"],
            &[
                "spacelock",
                "run",
                "--ack-timeout",
                "x",
                "job",
                "--",
                "true",
            ],
            &["spacelock", "info", ""],
            &["spacelock", "info"],
            &["spacelock", "frobnicate"],
        ] {
            let e = Cli::try_parse_from(argv).unwrap_err();
            assert!(e.use_stderr(), "{argv:?} should be a usage error");
        }
        let e = Cli::try_parse_from(["spacelock", "--help"]).unwrap_err();
        assert!(!e.use_stderr());
    }
}
