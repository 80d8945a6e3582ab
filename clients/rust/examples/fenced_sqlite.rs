//! Fencing a real SQL table with spacelock's tokens (the resource side of
//! fencing).
//!
//! A lease alone cannot keep a paused holder from writing: a process that
//! stalls (a GC pause, a swapped-out VM, a slow disk) past its ttl still
//! believes it holds the lock when it wakes up, and its write is already on
//! its way. Only the resource sees the order in which writes arrive, so the
//! resource must check the token. Here the resource is an SQLite table with
//! a `fence` column, and every write is one conditional statement:
//!
//! ```sql
//! UPDATE docs SET value = :value, fence = :token
//!  WHERE id = :id AND fence <= :token
//! ```
//!
//! The demo: instance A takes the lock and writes; A stalls (its thread is
//! blocked, so its heartbeat cannot refresh either) until the server has let
//! the lease go; instance B takes the lock, with a higher token, and writes;
//! A wakes up and writes late: the table changes 0 rows.
//!
//! ```text
//! cargo run -p spacelock-client --example fenced_sqlite -- redis://127.0.0.1:6379/
//! ```

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use rusqlite::{params, Connection, OptionalExtension};
use spacelock_client::{Options, Outcome, SpaceLock};

/// Errors of the demo (sendable across its threads).
pub type BoxError = Box<dyn Error + Send + Sync>;

/// Opens (and creates) the fenced table in the database at `path`.
///
/// `fence` holds the highest token that has written the row; 0 before the
/// first write (spacelock never issues 0). It is an `INTEGER`: SQLite keeps
/// it as a 64-bit signed integer, which holds every token (tokens are below
/// 2^63). Prefer it to a floating-point column: term tokens stay below 2^53
/// (exact in a double) only until the year 2255, and a token set higher by
/// hand or by counter mode need not.
pub fn open_table(path: &Path) -> rusqlite::Result<Connection> {
    let db = Connection::open(path)?;
    // Two instances share the file: wait for each other's write locks.
    db.busy_timeout(Duration::from_secs(5))?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS docs (
             id    TEXT PRIMARY KEY,
             value TEXT NOT NULL,
             fence INTEGER NOT NULL DEFAULT 0
         );",
    )?;
    Ok(db)
}

/// Creates the row `id` if it is missing (fence 0: any token may write it).
pub fn ensure_row(db: &Connection, id: &str) -> rusqlite::Result<()> {
    db.execute(
        "INSERT INTO docs (id, value, fence) VALUES (?1, '', 0) ON CONFLICT (id) DO NOTHING",
        params![id],
    )?;
    Ok(())
}

/// Writes `value` into row `id` under fencing `token`: the number of rows
/// changed, 1 if the write was accepted, 0 if a newer token has written
/// the row already (the caller's lease is stale: stop, do not retry).
///
/// The check and the write are one statement, so no other writer can slip
/// in between (a `SELECT fence` followed by an `UPDATE` would race).
///
/// Why `fence <= token` and not `fence < token`: a holder may write several
/// times under one token (several steps of one job, or a retry of a write
/// whose reply was lost). With `<`, its own second write would find
/// `fence == token` and be refused. Equality is safe because spacelock never
/// issues a token twice for a lock name: a row whose fence equals your token
/// was last written by you, under this very lease. Any older token is below
/// the fence as soon as a newer holder has written, and is refused.
///
/// Checking is the resource's job, not the lock's: the lock server cannot
/// stop a write that a paused process has already sent, and it never sees
/// the write at all. (`SPACELOCK.CHECK` is the same check for data kept in
/// Redis itself, inside one script with the write.)
pub fn fenced_write(db: &Connection, id: &str, value: &str, token: u64) -> rusqlite::Result<usize> {
    let token = i64::try_from(token).expect("spacelock tokens are below 2^63");
    db.execute(
        "UPDATE docs SET value = ?1, fence = ?2 WHERE id = ?3 AND fence <= ?2",
        params![value, token, id],
    )
}

/// The row `id`: (value, fence).
pub fn read_row(db: &Connection, id: &str) -> rusqlite::Result<Option<(String, i64)>> {
    db.query_row(
        "SELECT value, fence FROM docs WHERE id = ?1",
        params![id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .optional()
}

/// What happened in [`demo`].
#[derive(Debug)]
pub struct Demo {
    /// A's token, and the rows its first (timely) write changed.
    pub a_token: u64,
    pub a_first_write: usize,
    /// A's second write under the same token, before its stall.
    pub a_second_write: usize,
    /// B's token, and the rows its write changed.
    pub b_token: u64,
    pub b_write: usize,
    /// The rows A's late write changed, after its lease had expired.
    pub a_late_write: usize,
    /// Whether A's lease reported itself lost when A woke up.
    pub a_saw_lost: bool,
    /// The row at the end: (value, fence).
    pub row: (String, i64),
}

/// The lease's ttl in the demo: short, so the stall outlasts it quickly.
pub const DEMO_TTL: Duration = Duration::from_millis(300);

/// Runs the two instances against the server at `redis_url` and the table
/// in `db_path`, and reports what happened. Each instance runs on its own
/// thread with a current-thread runtime, like two processes.
pub fn demo(redis_url: &str, db_path: &Path, name: &str) -> Result<Demo, BoxError> {
    let client = redis::Client::open(redis_url)?;
    ensure_row(&open_table(db_path)?, name)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let a = SpaceLock::new(
            ConnectionManager::new(client.clone()).await?,
            Options::default().ttl(DEMO_TTL).owner("instance-a"),
        );
        let watch_client = client.clone();
        let outcome = a
            .with_space_lock(name, |lease| async move {
                let db = open_table(db_path)?;
                let a_token = lease.token();
                let a_first_write = fenced_write(&db, name, "A, step 1", a_token)?;
                let a_second_write = fenced_write(&db, name, "A, step 2", a_token)?;

                // A stalls. This blocks the only thread of A's runtime, so
                // its heartbeat cannot refresh the lease either, until the
                // server has let the lease expire.
                let mut watch = watch_client.get_connection()?;
                let stalled = Instant::now();
                loop {
                    let held: bool = redis::cmd("EXISTS").arg(lease.key()).query(&mut watch)?;
                    if !held {
                        break;
                    }
                    if stalled.elapsed() > DEMO_TTL * 20 {
                        return Err::<Demo, BoxError>("the lease never expired".into());
                    }
                    std::thread::yield_now();
                }

                // Meanwhile, instance B (another process) takes the lock and
                // writes under its newer token.
                let (b_url, b_path, b_name) = (
                    redis_url.to_string(),
                    db_path.to_path_buf(),
                    name.to_string(),
                );
                let (b_token, b_write) =
                    std::thread::spawn(move || instance_b(&b_url, &b_path, &b_name))
                        .join()
                        .map_err(|_| "instance B panicked")??;

                // A wakes up and finishes its job: the late write is refused.
                let a_saw_lost = lease.is_lost();
                let a_late_write = fenced_write(&db, name, "A, late", a_token)?;
                let row = read_row(&db, name)?.ok_or("the row is gone")?;
                Ok(Demo {
                    a_token,
                    a_first_write,
                    a_second_write,
                    b_token,
                    b_write,
                    a_late_write,
                    a_saw_lost,
                    row,
                })
            })
            .await?;
        match outcome {
            Outcome::Ran(result) => result,
            Outcome::Skipped(why) => Err(format!("instance A did not run: {why}").into()),
        }
    })
}

/// Instance B: takes the lock (retrying while A's lease is still there) and
/// writes under its token. Returns (token, rows changed).
fn instance_b(redis_url: &str, db_path: &Path, name: &str) -> Result<(u64, usize), BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let b = SpaceLock::new(
            ConnectionManager::new(redis::Client::open(redis_url)?).await?,
            Options::default()
                .ttl(Duration::from_secs(10))
                .owner("instance-b"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let outcome = b
                .with_space_lock(name, |lease| async move {
                    let db = open_table(db_path)?;
                    let rows = fenced_write(&db, name, "B", lease.token())?;
                    Ok::<_, BoxError>((lease.token(), rows))
                })
                .await?;
            match outcome {
                Outcome::Ran(result) => return result,
                Outcome::Skipped(_) if Instant::now() < deadline => tokio::task::yield_now().await,
                Outcome::Skipped(why) => return Err(format!("instance B never ran: {why}").into()),
            }
        }
    })
}

fn main() -> Result<(), BoxError> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
    let db_path: PathBuf =
        std::env::temp_dir().join(format!("spacelock-fenced-{}.sqlite", std::process::id()));
    let result = demo(&url, &db_path, "fenced-sqlite-demo");
    let _ = std::fs::remove_file(&db_path);
    let d = result?;
    println!("A took the lock with token {}", d.a_token);
    println!(
        "A wrote twice under it: {} row, then {} row (fence <= token lets a holder write again)",
        d.a_first_write, d.a_second_write
    );
    println!("A stalled past its ttl; its lease lost: {}", d.a_saw_lost);
    println!(
        "B took the lock with token {} and wrote: {} row",
        d.b_token, d.b_write
    );
    println!(
        "A's late write under token {}: {} rows changed (refused)",
        d.a_token, d.a_late_write
    );
    println!("the row: value {:?}, fence {}", d.row.0, d.row.1);
    Ok(())
}
