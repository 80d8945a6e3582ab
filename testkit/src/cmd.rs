//! Small helpers over a synchronous connection: the lock commands, keyspace
//! dumps, INFO fields, and waits driven by what the server reports.

use std::time::{Duration, Instant};

/// `SPACELOCK.ACQUIRE key owner ttl`: the token, or `None` when held.
pub fn acquire(
    con: &mut redis::Connection,
    key: impl redis::ToRedisArgs,
    owner: impl redis::ToRedisArgs,
    ttl: i64,
) -> Option<i64> {
    redis::cmd("SPACELOCK.ACQUIRE")
        .arg(key)
        .arg(owner)
        .arg(ttl)
        .query(con)
        .unwrap()
}

/// `SPACELOCK.RELEASE key owner`: 1 if released, 0 otherwise.
pub fn release(
    con: &mut redis::Connection,
    key: impl redis::ToRedisArgs,
    owner: impl redis::ToRedisArgs,
) -> i64 {
    redis::cmd("SPACELOCK.RELEASE")
        .arg(key)
        .arg(owner)
        .query(con)
        .unwrap()
}

/// `SPACELOCK.ACQUIRE key owner ttl WAIT timeout`, to send with the reply
/// type and on the connection the caller chooses.
pub fn acquire_wait_cmd(
    key: impl redis::ToRedisArgs,
    owner: impl redis::ToRedisArgs,
    ttl: i64,
    timeout: i64,
) -> redis::Cmd {
    let mut cmd = redis::cmd("SPACELOCK.ACQUIRE");
    cmd.arg(key).arg(owner).arg(ttl).arg("WAIT").arg(timeout);
    cmd
}

/// `SPACELOCK.ACQUIRE key owner ttl WAIT timeout`: the token, `None` at the
/// timeout, or the error (a replica's `READONLY`, an `UNBLOCKED`, …).
pub fn acquire_wait(
    con: &mut redis::Connection,
    key: impl redis::ToRedisArgs,
    owner: impl redis::ToRedisArgs,
    ttl: i64,
    timeout: i64,
) -> redis::RedisResult<Option<i64>> {
    acquire_wait_cmd(key, owner, ttl, timeout).query(con)
}

/// Whether `key` exists.
pub fn exists(con: &mut redis::Connection, key: impl redis::ToRedisArgs) -> bool {
    let n: i64 = redis::cmd("EXISTS").arg(key).query(con).unwrap();
    n == 1
}

/// The `waiters` field of `SPACELOCK.INFO key` (0 when the lock is free).
pub fn key_waiters(con: &mut redis::Connection, key: impl redis::ToRedisArgs) -> i64 {
    let info: Option<std::collections::HashMap<String, redis::Value>> =
        redis::cmd("SPACELOCK.INFO").arg(key).query(con).unwrap();
    info.and_then(|m| m.get("waiters").cloned())
        .map_or(0, |v| redis::from_redis_value(v).unwrap())
}

/// Calls of `command` (e.g. `spacelock.release`) so far, from `INFO
/// commandstats` (0 before the first).
pub fn command_calls(con: &mut redis::Connection, command: &str) -> u64 {
    let stats: String = redis::cmd("INFO").arg("commandstats").query(con).unwrap();
    stats
        .lines()
        .find(|l| l.starts_with(&format!("cmdstat_{command}:")))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `CONFIG SET name value`.
///
/// # Panics
/// If the server refuses it.
pub fn config_set(con: &mut redis::Connection, name: &str, value: impl redis::ToRedisArgs) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query(con)
        .unwrap();
}

/// `CLIENT PAUSE ms WRITE`: the server holds every write command for `ms`.
pub fn pause_writes(con: &mut redis::Connection, ms: u64) {
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("WRITE")
        .query(con)
        .unwrap();
}

/// Sends `args` (the command's name first) and returns its error reply as
/// "CODE detail".
///
/// # Panics
/// If the command succeeds.
pub fn error_of<A: redis::ToRedisArgs + std::fmt::Debug>(
    con: &mut redis::Connection,
    args: &[A],
) -> String {
    let mut cmd = redis::Cmd::new();
    for a in args {
        cmd.arg(a);
    }
    match cmd.query::<redis::Value>(con) {
        Ok(redis::Value::ServerError(e)) => format!("{} {}", e.code(), e.details().unwrap_or("")),
        Ok(v) => panic!("expected an error for {args:?}, got {v:?}"),
        Err(e) => format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or("")),
    }
}

/// Every key in db 0, sorted, as raw bytes.
pub fn all_keys(con: &mut redis::Connection) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(con).unwrap();
    keys.sort();
    keys
}

/// A dump of the keyspace: (key, type, value or "", PEXPIRETIME).
pub fn snapshot(con: &mut redis::Connection) -> Vec<(Vec<u8>, String, Vec<u8>, i64)> {
    all_keys(con)
        .into_iter()
        .map(|k| {
            let t: String = redis::cmd("TYPE").arg(&k).query(con).unwrap();
            let v: Vec<u8> = if t == "string" {
                redis::cmd("GET").arg(&k).query(con).unwrap()
            } else {
                Vec::new()
            };
            let exp: i64 = redis::cmd("PEXPIRETIME").arg(&k).query(con).unwrap();
            (k, t, v, exp)
        })
        .collect()
}

/// `CLUSTER KEYSLOT key`: the hash slot the server computes for `key`.
pub fn keyslot(con: &mut redis::Connection, key: impl redis::ToRedisArgs) -> u16 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(con)
        .unwrap()
}

/// Polls `f` every 10 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A field of `INFO <section>`, as text (`None` if absent).
pub fn info_text(con: &mut redis::Connection, section: &str, field: &str) -> Option<String> {
    let info: String = redis::cmd("INFO").arg(section).query(con).unwrap();
    let prefix = format!("{field}:");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().to_string())
}

/// The server's replication role (`master` or `slave`), or `None` when it
/// cannot be reached.
pub fn role(server: &crate::Server) -> Option<String> {
    let mut c = server.client().get_connection().ok()?;
    info_text(&mut c, "replication", "role")
}

/// An integer field of `INFO <section>`.
///
/// # Panics
/// If the field is missing or not an integer.
pub fn info_field(con: &mut redis::Connection, section: &str, field: &str) -> i64 {
    let text = info_text(con, section, field)
        .unwrap_or_else(|| panic!("INFO {section} has no field {field}"));
    text.parse()
        .unwrap_or_else(|_| panic!("INFO {section} {field} is not an integer: {text}"))
}

/// A field of `INFO spacelock`, without its `spacelock_` prefix.
pub fn stat(con: &mut redis::Connection, field: &str) -> u64 {
    let v = info_field(con, "spacelock", &format!("spacelock_{field}"));
    u64::try_from(v).unwrap_or_else(|_| panic!("spacelock_{field} is negative: {v}"))
}

/// Clients blocked in `SPACELOCK.ACQUIRE … WAIT` right now.
pub fn waiting_clients(con: &mut redis::Connection) -> u64 {
    stat(con, "waiting_clients")
}

/// Waits until exactly `n` clients are queued, as the server reports it:
/// the synchronisation point for "the waiter is in the queue".
///
/// # Panics
/// If that does not happen within 20 s.
pub fn until_waiting(con: &mut redis::Connection, n: u64) {
    assert!(
        wait_until(Duration::from_secs(20), || waiting_clients(con) == n),
        "expected {n} waiting clients, have {}",
        waiting_clients(con)
    );
}

/// Whether the timestamp is in the past; for loops with a deadline.
pub fn passed(deadline: Instant) -> bool {
    Instant::now() >= deadline
}

/// `INFO spacelock` `token_floor`: the token the next grant of a name whose
/// fence key is below it gets (a fresh name, or one whose fence key was
/// lost). In `term` mode, also the lowest token any next grant can get.
pub fn token_floor(con: &mut redis::Connection) -> i64 {
    info_field(con, "spacelock", "spacelock_token_floor")
}

/// `INFO spacelock` `term_start_ms`: when the current token term opened.
pub fn term_start_ms(con: &mut redis::Connection) -> i64 {
    info_field(con, "spacelock", "spacelock_term_start_ms")
}

/// `SPACELOCK.CHECK key owner token`: 1 if `key` is held by `owner` under
/// the grant with `token`, else 0.
pub fn check(
    con: &mut redis::Connection,
    key: impl redis::ToRedisArgs,
    owner: impl redis::ToRedisArgs,
    token: i64,
) -> i64 {
    redis::cmd("SPACELOCK.CHECK")
        .arg(key)
        .arg(owner)
        .arg(token)
        .query(con)
        .unwrap()
}

/// `SPACELOCK.NEWTERM`: opens a token term; its reply is the new floor.
pub fn new_term(con: &mut redis::Connection) -> i64 {
    redis::cmd("SPACELOCK.NEWTERM").query(con).unwrap()
}

/// The value of `key`'s fence counter (`GET` of `SPACELOCK.FENCEKEY key`),
/// `None` when the fence key does not exist.
pub fn fence_value(con: &mut redis::Connection, key: impl redis::ToRedisArgs) -> Option<i64> {
    let fence: Vec<u8> = redis::cmd("SPACELOCK.FENCEKEY")
        .arg(key)
        .query(con)
        .unwrap();
    redis::cmd("GET").arg(fence).query(con).unwrap()
}

/// The milliseconds since the Unix epoch on this machine's clock (the
/// servers under test read the same clock).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The command `args[0] args[1..]`.
pub fn command_of(args: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c
}

/// A reply as `Ok`, or an error (a server error reply included) as
/// "CODE detail".
pub fn reply_or_error(r: redis::RedisResult<redis::Value>) -> Result<redis::Value, String> {
    match r {
        Ok(redis::Value::ServerError(e)) => {
            Err(format!("{} {}", e.code(), e.details().unwrap_or("")))
        }
        Ok(v) => Ok(v),
        Err(e) => Err(format!(
            "{} {}",
            e.code().unwrap_or("?"),
            e.detail().unwrap_or("")
        )),
    }
}

/// Runs `args`: the reply, or the error as "CODE detail".
pub fn call_args(con: &mut redis::Connection, args: &[&str]) -> Result<redis::Value, String> {
    reply_or_error(command_of(args).query(con))
}

/// Runs `args` and returns its reply; panics on an error reply.
pub fn ok_args(con: &mut redis::Connection, args: &[&str]) -> redis::Value {
    call_args(con, args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Runs `args` and returns its error as "CODE detail"; panics on a reply.
pub fn err_args(con: &mut redis::Connection, args: &[&str]) -> String {
    match call_args(con, args) {
        Err(e) => e,
        Ok(v) => panic!("{args:?}: expected an error, got {v:?}"),
    }
}

/// Sends `cmds` as one pipeline (one write, so the server reads them in
/// one event-loop iteration) and returns each reply, errors as
/// "CODE detail".
pub fn one_packet(
    con: &mut redis::Connection,
    cmds: &[&[&str]],
) -> Vec<Result<redis::Value, String>> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for args in cmds {
        pipe.add_command(command_of(args));
    }
    let replies: Vec<redis::RedisResult<redis::Value>> = pipe.query(con).unwrap();
    replies.into_iter().map(reply_or_error).collect()
}

/// Sends one command on a new raw socket to `port` and returns the socket
/// without reading the reply: a client that blocks (a WAIT) and is then
/// closed, by dropping the socket, at the moment a test picks.
pub fn send_raw(port: u16, args: &[&str]) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut buf = format!("*{}\r\n", args.len());
    for a in args {
        buf.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(buf.as_bytes()).unwrap();
    s
}

/// The wall clock in µs since the epoch: the clock the server's `TIME`
/// reads, on the same machine.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The server's time spent in `EVAL`, µs (`INFO commandstats`): the
/// difference across a [`slow_script`] is how long it kept the server busy.
pub fn eval_usec(con: &mut redis::Connection) -> i64 {
    let stats: String = redis::cmd("INFO").arg("commandstats").query(con).unwrap();
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_eval:"))
        .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("usec=")))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// A counted Lua loop that keeps the server busy for about `ms` (the rate
/// is calibrated once per test binary, on `con`): pipelined after a first
/// event, it makes the server read the next events in one iteration.
pub fn slow_script(con: &mut redis::Connection, ms: u64) -> redis::Cmd {
    busy_script(busy_iterations(con, ms))
}

/// A Lua loop of `n` iterations (see [`slow_script`]).
pub fn busy_script(n: u64) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg("local i = 0 while i < tonumber(ARGV[1]) do i = i + 1 end return i")
        .arg(0)
        .arg(n);
    cmd
}

/// The iterations of [`busy_script`] that keep the server busy for about
/// `ms`, by a rate measured once per test binary on `con`. A machine that
/// was loaded then makes them too few later: a test that needs a length
/// measures it ([`eval_usec`]) and rescales ([`busy_rescaled`]).
pub fn busy_iterations(con: &mut redis::Connection, ms: u64) -> u64 {
    use std::sync::OnceLock;
    static PER_MS: OnceLock<u64> = OnceLock::new();
    let per_ms = *PER_MS.get_or_init(|| {
        let n = 2_000_000u64;
        let start = Instant::now();
        let _: i64 = busy_script(n).query(con).unwrap();
        (n * 1000 / start.elapsed().as_micros().max(1) as u64).max(1)
    });
    per_ms * ms
}

/// When a slow command held the server, as far as the client can prove it:
/// it was sent at `sent_us`, its reply came at `replied_us` (both
/// [`now_us`]), and it ran `ran_us` ([`eval_usec`] across it), somewhere in
/// between. Another connection's arrival sent at `at` came while it ran,
/// and is read in the iteration after it, if `at` is at least `ran_us`
/// before the reply and at most `ran_us` after the sending ([`holds`]).
/// On a loaded machine the command can start late: a race test checks its
/// arrivals with this and tries a round again rather than judge a race
/// that did not happen.
///
/// [`holds`]: BusyWindow::holds
#[derive(Debug, Clone, Copy)]
pub struct BusyWindow {
    /// When the slow command was sent.
    pub sent_us: i64,
    /// When its reply came.
    pub replied_us: i64,
    /// How long the server ran it.
    pub ran_us: i64,
}

impl BusyWindow {
    /// Slack for loopback delivery and the clock reads, either side.
    const MARGIN_US: i64 = 10_000;

    /// Whether an arrival sent at `at_us` surely came while the command ran.
    pub fn holds(&self, at_us: i64) -> bool {
        self.replied_us - self.ran_us + Self::MARGIN_US <= at_us
            && at_us + Self::MARGIN_US <= self.sent_us + self.ran_us
    }
}

impl std::fmt::Display for BusyWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the slow command ran {} µs, {} µs from its sending to its reply",
            self.ran_us,
            self.replied_us - self.sent_us
        )
    }
}

/// A [`busy_script`] run round after round to hold the server for `ms`
/// while other arrivals queue up: each round's window ([`BusyWindow`]) is
/// measured, and the next round's length follows the server time the last
/// one took, whatever the load was when the rate was first calibrated.
#[derive(Debug)]
pub struct BusyLoop {
    ms: u64,
    iterations: u64,
}

/// A round of a [`BusyLoop`] that was sent: when, and the server's `EVAL`
/// time before it.
#[derive(Debug, Clone, Copy)]
pub struct BusyRound {
    /// When the script was about to be sent ([`now_us`]).
    pub sent_us: i64,
    eval_before_us: i64,
}

impl BusyLoop {
    /// A loop of about `ms`, calibrated on `con` ([`busy_iterations`]).
    pub fn new(con: &mut redis::Connection, ms: u64) -> BusyLoop {
        BusyLoop {
            ms,
            iterations: busy_iterations(con, ms),
        }
    }

    /// The next round's script, to send at once on its own connection, and
    /// its start, read on `admin` (another connection to the same server).
    pub fn round(&self, admin: &mut redis::Connection) -> (redis::Cmd, BusyRound) {
        let eval_before_us = eval_usec(admin);
        let round = BusyRound {
            sent_us: now_us(),
            eval_before_us,
        };
        (busy_script(self.iterations), round)
    }

    /// The window of `round`, whose reply came at `replied_us`; the next
    /// round's length follows the time it took.
    pub fn window(
        &mut self,
        admin: &mut redis::Connection,
        round: BusyRound,
        replied_us: i64,
    ) -> BusyWindow {
        let window = BusyWindow {
            sent_us: round.sent_us,
            replied_us,
            ran_us: eval_usec(admin) - round.eval_before_us,
        };
        self.iterations = busy_rescaled(self.iterations, window.ran_us, self.ms);
        window
    }
}

/// The iterations that make `ms` of server time, from `n` iterations that
/// took `took_us` (at most four times more or fewer at a step, so that one
/// stalled measure cannot run away).
pub fn busy_rescaled(n: u64, took_us: i64, ms: u64) -> u64 {
    let want = u128::from(ms) * 1000;
    let took = u128::try_from(took_us.max(1)).unwrap_or(1);
    let next = u64::try_from(u128::from(n) * want / took).unwrap_or(u64::MAX);
    next.clamp((n / 4).max(1), n.saturating_mul(4))
}
