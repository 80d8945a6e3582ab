//! Exclusion and fencing under real ttl expiry, through the client: many
//! holders, some of which stall past their ttl, write to a fenced resource;
//! the resource must never accept a stale write, and every holder must learn
//! of its lost lease. Real servers with the module; nothing is mocked.

use spacelock_testkit as kit;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kit::Server;
use redis::aio::MultiplexedConnection;
use spacelock_client::{Options, Outcome, SpaceLock};

const KEYS: [&str; 3] = ["res-a", "res-b", "res-c"];
const TTL: Duration = Duration::from_millis(100);
/// How long a stalled body is silent: well over the ttl.
const STALL: Duration = Duration::from_millis(250);
/// How long a stalled body waits, at most, for `lease.lost()` to resolve
/// before its stale write.
const LOST_SIGNAL_DEADLINE: Duration = Duration::from_secs(5);
const RUN_FOR: Duration = Duration::from_secs(3);
/// 8 "processes" of 7 well-behaved tasks each, plus 8 stalling "processes"
/// of one task each: 64 tasks.
const NORMAL_LOCKS: usize = 8;
const TASKS_PER_NORMAL_LOCK: usize = 7;
const ZOMBIES: usize = 8;

/// One write attempt at the resource.
#[derive(Debug, Clone)]
struct Write {
    key: usize,
    token: u64,
    holder: u64,
    at: Instant,
    accepted: bool,
    /// Made by a stalled holder after its stall, whatever its lease said.
    stale: bool,
    /// `lease.is_lost()` just before the resource decided (under its mutex).
    is_lost_before: bool,
    /// When a task waiting on `lease.lost()` saw it resolve, if it had.
    lost_seen_at: Option<Instant>,
}

/// One run of a body: a grant as the holder observed it.
#[derive(Debug, Clone)]
struct Holder {
    key: usize,
    token: u64,
    /// Taken as the body starts, after the ACQUIRE reply arrived (so after the
    /// server granted it).
    granted: Instant,
    /// Taken as the body ends, before with_space_lock sends the RELEASE (so
    /// before the server could grant it again).
    ended: Instant,
    /// `is_lost()` at the end of the body.
    lost_in_body: bool,
    stalled: bool,
}

#[derive(Default)]
struct Log {
    highest: [u64; KEYS.len()],
    writes: Vec<Write>,
    holders: Vec<Holder>,
}

/// The protected resource: accepts a write only with a token ≥ the highest
/// it has seen for that key, and logs everything.
#[derive(Default)]
struct Resource(Mutex<Log>);

impl Resource {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.0.lock().unwrap()
    }

    /// A write at the resource. A well-behaved one (`stale` false) is made
    /// only if the lease is not lost (checked under the resource's mutex, so
    /// the check and the write are one step); a zombie's write after its
    /// stall (`stale` true) is made whatever the lease says.
    fn write(
        &self,
        key: usize,
        token: u64,
        holder: u64,
        lost: &OnceLock<Instant>,
        lease: &spacelock_client::Lease,
        stale: bool,
    ) {
        let mut log = self.log();
        let is_lost = lease.is_lost();
        if is_lost && !stale {
            return;
        }
        Self::decide(
            &mut log,
            key,
            token,
            holder,
            stale,
            is_lost,
            lost.get().copied(),
        );
    }

    fn decide(
        log: &mut Log,
        key: usize,
        token: u64,
        holder: u64,
        stale: bool,
        is_lost_before: bool,
        lost_seen_at: Option<Instant>,
    ) {
        let accepted = token >= log.highest[key];
        if accepted {
            log.highest[key] = token;
        }
        log.writes.push(Write {
            key,
            token,
            holder,
            at: Instant::now(),
            accepted,
            stale,
            is_lost_before,
            lost_seen_at,
        });
    }
}

/// Small deterministic xorshift, one per task (no rand dependency).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Records when `lease.lost()` resolves, from a task of its own.
fn watch_lost(lease: &spacelock_client::Lease) -> Arc<OnceLock<Instant>> {
    let seen = Arc::new(OnceLock::new());
    let (lease, s) = (lease.clone(), seen.clone());
    tokio::spawn(async move {
        lease.lost().await;
        let _ = s.set(Instant::now());
    });
    seen
}

/// One body: claim-write at once, maybe more writes, or (zombie) a stall
/// longer than the ttl followed by a stale write.
#[allow(clippy::too_many_arguments)]
async fn body(
    lease: spacelock_client::Lease,
    key: usize,
    holder: u64,
    resource: Arc<Resource>,
    stall_on: Option<MultiplexedConnection>,
    stall_key: String,
    mut rng: Rng,
) {
    let granted = Instant::now();
    let token = lease.token();
    let lost = watch_lost(&lease);
    // The usual fencing pattern: the new holder touches the resource first.
    resource.write(key, token, holder, &lost, &lease, false);
    let stalled = stall_on.is_some();
    if let Some(mut conn) = stall_on {
        // Starve this lease's heartbeat for STALL: a BLPOP on the very
        // connection the heartbeat uses. The server does not read further
        // commands from a blocked client, so the REFRESHes the heartbeat
        // keeps sending queue up behind the BLPOP, the key really expires
        // on the server by its ttl, other processes take the lock, and the
        // client's local deadline (start of the last good refresh + ttl)
        // passes while this body still runs.
        let _: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(&stall_key)
            .arg(STALL.as_secs_f64())
            .query_async(&mut conn)
            .await
            .unwrap();
        // The lost signal comes from the heartbeat task, which a busy
        // machine may run late: wait for it (it is normally there already,
        // STALL being well over the ttl), with a deadline, so that the
        // check below is about whether it came, not about when.
        let deadline = Instant::now() + LOST_SIGNAL_DEADLINE;
        while lost.get().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A zombie that ignores its lease: writes anyway with its old token.
        resource.write(key, token, holder, &lost, &lease, true);
    } else {
        for _ in 0..rng.below(3) {
            tokio::time::sleep(Duration::from_millis(rng.below(15))).await;
            resource.write(key, token, holder, &lost, &lease, false);
        }
    }
    let lost_in_body = lease.is_lost();
    let ended = Instant::now();
    resource.log().holders.push(Holder {
        key,
        token,
        granted,
        ended,
        lost_in_body,
        stalled,
    });
}

#[kit::test]
async fn exclusion_and_fencing_under_expiry() {
    let server = Server::new();
    let client = server.client();
    let resource = Arc::new(Resource::default());
    let next_holder = Arc::new(AtomicU64::new(1));
    let options = Options::default().ttl(TTL).key_prefix("rel:lock:");
    let stop_at = Instant::now() + RUN_FOR;

    let mut all_locks = Vec::new();
    let mut tasks = Vec::new();
    // (SpaceLock, its connection if it is a zombie, tasks on it)
    let mut procs = Vec::new();
    for _ in 0..NORMAL_LOCKS {
        let conn = client.get_multiplexed_async_connection().await.unwrap();
        procs.push((
            SpaceLock::new(conn, options.clone()),
            None,
            TASKS_PER_NORMAL_LOCK,
        ));
    }
    for _ in 0..ZOMBIES {
        let conn = client.get_multiplexed_async_connection().await.unwrap();
        procs.push((SpaceLock::new(conn.clone(), options.clone()), Some(conn), 1));
    }
    let mut task_no = 0u64;
    for (p, (locks, zombie_conn, n)) in procs.into_iter().enumerate() {
        all_locks.push(locks.clone());
        for _ in 0..n {
            task_no += 1;
            let (locks, zombie_conn, resource, next_holder) = (
                locks.clone(),
                zombie_conn.clone(),
                resource.clone(),
                next_holder.clone(),
            );
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (task_no * 0x1000_0001));
            let stall_key = format!("rel:stall:{p}");
            tasks.push(tokio::spawn(async move {
                // ran, lock-held, in-progress, granted but expired before the
                // body could start (a loaded machine, with a 100 ms ttl)
                let mut outcomes = [0usize; 4];
                while Instant::now() < stop_at {
                    let key = rng.below(KEYS.len() as u64) as usize;
                    let holder = next_holder.fetch_add(1, Ordering::Relaxed);
                    // Zombies stall in one run out of three.
                    let stall = zombie_conn.clone().filter(|_| rng.below(3) == 0);
                    let body_rng = Rng(rng.next() | 1);
                    let (resource2, stall_key2) = (resource.clone(), stall_key.clone());
                    let outcome = locks
                        .with_space_lock(KEYS[key], move |lease| {
                            body(lease, key, holder, resource2, stall, stall_key2, body_rng)
                        })
                        .await;
                    let outcome = match outcome {
                        Err(spacelock_client::Error::LockLost { .. }) => {
                            outcomes[3] += 1;
                            continue;
                        }
                        other => other.expect("with_space_lock failed"),
                    };
                    match outcome {
                        Outcome::Ran(()) => outcomes[0] += 1,
                        Outcome::Skipped(spacelock_client::Skipped::LockHeld) => {
                            outcomes[1] += 1;
                            tokio::time::sleep(Duration::from_millis(2 + rng.below(8))).await;
                        }
                        Outcome::Skipped(spacelock_client::Skipped::InProgress) => {
                            outcomes[2] += 1;
                            tokio::time::sleep(Duration::from_millis(2 + rng.below(8))).await;
                        }
                        Outcome::Skipped(other) => panic!("unexpected skip {other}"),
                    }
                }
                outcomes
            }));
        }
    }
    assert_eq!(tasks.len(), 64);
    let mut totals = [0usize; 4];
    for t in tasks {
        let o = t.await.unwrap();
        for i in 0..4 {
            totals[i] += o[i];
        }
    }

    let log = std::mem::take(&mut *resource.log());
    let mut con = server.conn();

    // Everything was released; no lease left in any heartbeat.
    for locks in &all_locks {
        assert_eq!(locks.active_leases(), 0);
    }
    for (k, name) in KEYS.iter().enumerate() {
        let key = format!("rel:lock:{name}");
        let owner: Option<String> = redis::cmd("GET").arg(&key).query(&mut con).unwrap();
        assert_eq!(owner, None, "{key} still held after every body returned");

        // (b) Tokens per key strictly increase across grants, in grant
        // order, and every grant the server made was seen by exactly one
        // body: no token twice, the fence counter is the highest token seen,
        // and (below, over all keys) the server's grant count is the number
        // of bodies that ran.
        let mut grants: Vec<&Holder> = log.holders.iter().filter(|h| h.key == k).collect();
        grants.sort_by_key(|h| h.granted);
        assert!(grants.len() > 10, "{key}: only {} grants", grants.len());
        for w in grants.windows(2) {
            assert!(
                w[0].token < w[1].token,
                "{key}: token {} granted before token {} ({:?} then {:?})",
                w[0].token,
                w[1].token,
                w[0],
                w[1]
            );
        }
        let tokens: HashSet<u64> = grants.iter().map(|h| h.token).collect();
        assert_eq!(tokens.len(), grants.len(), "{key}: a token seen twice");
        assert!(tokens.iter().all(|t| *t > 0), "{key}: token 0");
        let fence: String = redis::cmd("SPACELOCK.FENCEKEY")
            .arg(&key)
            .query(&mut con)
            .unwrap();
        let counter: u64 = redis::cmd("GET").arg(&fence).query(&mut con).unwrap();
        assert_eq!(
            counter,
            grants.last().map_or(0, |h| h.token),
            "{key}: fence counter vs the last grant seen"
        );

        // (a) No two holders that both believed they held the lock at once:
        // a holder that was never told it lost the lease held it, as the
        // server saw it, from before `granted` to after `ended`, so those
        // intervals must be disjoint per key.
        let held: Vec<&&Holder> = grants
            .iter()
            .filter(|h| !h.lost_in_body && !h.stalled)
            .collect();
        for w in held.windows(2) {
            assert!(
                w[0].ended < w[1].granted,
                "{key}: overlapping holders {:?} and {:?}",
                w[0],
                w[1]
            );
        }
        // (a) At the resource: accepted writes come in non-decreasing token
        // order, each token from one holder only, and the writes of two
        // holders never interleave.
        let accepted: Vec<&Write> = log
            .writes
            .iter()
            .filter(|w| w.key == k && w.accepted)
            .collect();
        let mut token_holder: HashMap<u64, u64> = HashMap::new();
        let mut finished: HashSet<u64> = HashSet::new();
        for (i, w) in accepted.iter().enumerate() {
            if i > 0 {
                let prev = accepted[i - 1];
                assert!(prev.token <= w.token, "{key}: accepted {prev:?} then {w:?}");
                if prev.holder != w.holder {
                    finished.insert(prev.holder);
                }
            }
            assert!(
                !finished.contains(&w.holder),
                "{key}: writes of holder {} interleave with another's",
                w.holder
            );
            let h = *token_holder.entry(w.token).or_insert(w.holder);
            assert_eq!(
                h, w.holder,
                "{key}: token {} used by holders {h} and {}",
                w.token, w.holder
            );
        }
    }
    // Every grant the server made (these are the only keys it ever saw) ran
    // exactly one body, but for grants that expired before their body could
    // start.
    assert_eq!(
        kit::stat(&mut con, "acquired") + kit::stat(&mut con, "handoffs"),
        (log.holders.len() + totals[3]) as u64,
        "grants made vs bodies run"
    );

    // (a) A write made while the lease was not lost is never rejected: a
    // rejection would mean a newer holder had written while this one still
    // believed it held the lock.
    let bad: Vec<&Write> = log
        .writes
        .iter()
        .filter(|w| !w.stale && !w.accepted)
        .collect();
    assert!(
        bad.is_empty(),
        "writes rejected while their lease was held: {bad:?}"
    );

    // (c) Every stalled holder had been told through `lease.lost()` before
    // its stale write reached the resource (STALL > the ttl, with no refresh
    // answered meanwhile; the signal had LOST_SIGNAL_DEADLINE to arrive), and
    // fencing rejected it whenever a newer holder had written.
    let stale: Vec<&Write> = log.writes.iter().filter(|w| w.stale).collect();
    for w in &stale {
        assert!(
            w.is_lost_before,
            "stale write without the lost signal: {w:?}"
        );
        let seen = w
            .lost_seen_at
            .unwrap_or_else(|| panic!("lost() had not resolved: {w:?}"));
        assert!(seen <= w.at, "{w:?}");
    }
    let rejected = stale.iter().filter(|w| !w.accepted).count();
    assert!(stale.len() >= 5, "only {} stalls", stale.len());
    assert!(
        rejected * 2 >= stale.len(),
        "only {rejected} of {} stale writes were rejected",
        stale.len()
    );
    let stalled_holders = log.holders.iter().filter(|h| h.stalled).count();
    assert_eq!(stalled_holders, stale.len());

    eprintln!(
        "exclusion: ran {} lock-held {} in-progress {} expired-before-start {}; grants {} accepted writes {} stale writes {} (rejected {})",
        totals[0],
        totals[1],
        totals[2],
        totals[3],
        log.holders.len(),
        log.writes.iter().filter(|w| w.accepted).count(),
        stale.len(),
        rejected
    );
}

kit::main!();
