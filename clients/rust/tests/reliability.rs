//! Reliability suite (issue 7) through the client: §2 exclusion and fencing
//! under real ttl expiry, §4 the heartbeat through a cluster slot migration,
//! §5 owner ids and foreign refresh/release. Real servers with the module;
//! nothing is mocked.

use spacelock_testkit as kit;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kit::{keyslot, Cluster, Server};
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use spacelock_client::{AcquireReply, Options, Outcome, RefreshReply, ReleaseReply, SpaceLock};

// ---------------------------------------------------------------------------
// §2 Exclusion and fencing under expiry

const KEYS: [&str; 3] = ["res-a", "res-b", "res-c"];
const TTL: Duration = Duration::from_millis(100);
/// How long a stalled body is silent: well over the ttl.
const STALL: Duration = Duration::from_millis(250);
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
    // its stale write reached the resource (250 ms > the 100 ms ttl, with no
    // refresh answered meanwhile), and fencing rejected it whenever a newer
    // holder had written.
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

// ---------------------------------------------------------------------------
// §4 Cluster: the heartbeat follows a slot migration

/// Each node's view of every node's config epoch, from `CLUSTER NODES`.
fn epoch_views(cluster: &Cluster) -> Vec<Vec<(String, u64)>> {
    cluster
        .nodes
        .iter()
        .map(|n| {
            let text: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query(&mut n.conn())
                .unwrap();
            let mut view: Vec<(String, u64)> = text
                .lines()
                .map(|l| {
                    let f: Vec<&str> = l.split(' ').collect();
                    (f[0].to_string(), f[6].parse().unwrap())
                })
                .collect();
            view.sort();
            view
        })
        .collect()
}

/// Waits until every node agrees on distinct config epochs for all nodes.
///
/// `Cluster::start` joins nodes that all start at config epoch 0, and the
/// cluster resolves the collisions by gossip over the next second or so.
/// Migrating a slot before that can lose it: seen once in ~20 runs, the
/// target took the slot without bumping its epoch (it already had the
/// highest epoch it knew of), the source then rose to a higher epoch by
/// collision handling and its stale gossip took the slot back on the target
/// only, leaving node 0 and node 2 each sending MOVED to the other.
/// `redis-cli --cluster create` avoids this with `CLUSTER SET-CONFIG-EPOCH`
/// per node before MEET.
fn wait_for_settled_epochs(cluster: &Cluster) {
    let settled = kit::wait_until(Duration::from_secs(15), || {
        let views = epoch_views(cluster);
        let epochs: HashSet<u64> = views[0].iter().map(|(_, e)| *e).collect();
        views.iter().all(|v| v == &views[0]) && epochs.len() == cluster.nodes.len()
    });
    assert!(
        settled,
        "config epochs never settled: {:?}",
        epoch_views(cluster)
    );
}

/// `SPACELOCK.FENCEKEY key`, through `conn`.
async fn fence_key(conn: &mut impl redis::aio::ConnectionLike, key: &str) -> String {
    redis::cmd("SPACELOCK.FENCEKEY")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}

#[kit::test]
async fn heartbeat_follows_a_slot_migration() {
    let cluster = Arc::new(Cluster::start(3));
    wait_for_settled_epochs(&cluster);
    let client = ClusterClient::new(cluster.urls()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let locks = SpaceLock::new(
        conn.clone(),
        Options::default().ttl(Duration::from_millis(300)),
    );
    let mut any = cluster.nodes[0].conn();

    // Every fence key sits in its lock's slot, for locks on all three nodes.
    let mut per_node = [0usize; 3];
    for i in 0..30 {
        let key = locks.key(&format!("space-{i}"));
        let fence = fence_key(&mut conn, &key).await;
        let slot = keyslot(&mut any, &key);
        assert_eq!(keyslot(&mut any, &fence), slot, "{key} vs {fence}");
        per_node[cluster.owner_of(slot)] += 1;
    }
    assert!(per_node.iter().all(|&n| n > 0), "spread {per_node:?}");

    let name = "migrating-space";
    let key = locks.key(name);
    let fence = fence_key(&mut conn, &key).await;
    let slot = keyslot(&mut any, &key);
    let from = cluster.owner_of(slot);
    let to = (from + 1) % 3;
    // An earlier grant, so the fence counter exists before the migration.
    let AcquireReply::Acquired { token: earlier } = locks.acquire(name).await.unwrap() else {
        panic!("not acquired");
    };
    assert_eq!(locks.release(name).await.unwrap(), ReleaseReply::Released);

    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let body_locks = locks.clone();
    let holder = tokio::spawn(async move {
        body_locks
            .with_space_lock(name, |lease| async move {
                let lost = watch_lost(&lease);
                started_tx.send(()).unwrap();
                tokio::time::sleep(Duration::from_millis(1500)).await;
                (lease.token(), lease.is_lost(), lost.get().is_some())
            })
            .await
            .unwrap()
    });
    started_rx.await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    let c = cluster.clone();
    let moved = tokio::task::spawn_blocking(move || c.migrate_slot(slot, from, to))
        .await
        .unwrap();
    let migrated_in = t0.elapsed();
    // The lock and its fence key moved together.
    assert!(moved.contains(&key.clone().into_bytes()), "{moved:?}");
    assert!(moved.contains(&fence.clone().into_bytes()), "{moved:?}");
    // (Asked of node 0; every node was told by SETSLOT NODE, so this holds
    // at once unless the cluster's own gossip undoes it.)
    let owner_now = cluster.owner_of(slot);
    assert_eq!(
        owner_now,
        to,
        "slot {slot} served by node {owner_now} right after migrating it {from} -> {to}; CLUSTER NODES per node: {:#?}",
        cluster
            .nodes
            .iter()
            .map(|n| redis::cmd("CLUSTER").arg("NODES").query::<String>(&mut n.conn()).unwrap())
            .collect::<Vec<_>>()
    );

    // Well over a ttl after the migration the lock is still ours on the new
    // node, with a ttl refreshed there (the heartbeat followed MOVED).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut dst = cluster.nodes[to].conn();
    let owner: Option<String> = redis::cmd("GET").arg(&key).query(&mut dst).unwrap();
    assert_eq!(
        owner.as_deref(),
        Some(locks.owner()),
        "lock not held on node {to} after migration"
    );
    let pttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut dst).unwrap();
    assert!(pttl > 0 && pttl <= 300, "pttl {pttl}");

    let outcome = holder.await.unwrap();
    let Outcome::Ran((token, is_lost, lost_fired)) = outcome else {
        panic!("body did not run: {outcome:?}");
    };
    assert!(token > earlier, "{token} > {earlier}");
    assert!(!is_lost && !lost_fired, "lease lost across the migration");
    // Released through the new node.
    assert_eq!(locks.info(name).await.unwrap(), None);
    let owner: Option<String> = redis::cmd("GET").arg(&key).query(&mut dst).unwrap();
    assert_eq!(owner, None);
    // The next token continues above every earlier one.
    match locks.acquire(name).await.unwrap() {
        AcquireReply::Acquired { token: next } => assert!(next > token, "{next} <= {token}"),
        AcquireReply::Held => panic!("lock still held after release"),
    }
    assert_eq!(locks.release(name).await.unwrap(), ReleaseReply::Released);
    eprintln!("migration of slot {slot} from node {from} to {to} took {migrated_in:?}");
}

// ---------------------------------------------------------------------------
// §5 Security: owner ids and foreign owners

#[kit::test]
async fn owner_ids_are_uuid_v4_and_foreign_owners_cannot_touch_a_lock() {
    let server = Server::new();
    let mk = |ttl: Duration| {
        let client = server.client();
        async move {
            SpaceLock::new(
                client.get_multiplexed_async_connection().await.unwrap(),
                Options::default().ttl(ttl),
            )
        }
    };
    let a = mk(Duration::from_secs(5)).await;
    let b = mk(Duration::from_secs(60)).await;
    let mut owners = HashSet::new();
    for locks in [
        &a,
        &b,
        &mk(Duration::from_secs(1)).await,
        &mk(Duration::from_secs(1)).await,
    ] {
        let id = uuid::Uuid::parse_str(locks.owner())
            .unwrap_or_else(|e| panic!("{}: {e}", locks.owner()));
        assert_eq!(id.get_version(), Some(uuid::Version::Random), "{id}");
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{id}");
        assert_eq!(id.hyphenated().to_string(), locks.owner(), "canonical form");
        assert!(owners.insert(id), "owner id {id} repeated");
    }
    assert_eq!(a.clone().owner(), a.owner(), "clones share the owner");

    let name = "guarded";
    let key = a.key(name);
    let AcquireReply::Acquired { token } = a.acquire(name).await.unwrap() else {
        panic!("not acquired");
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut con = server.conn();
    let before = kit::snapshot(&mut con);
    // b (another owner, a 60 s ttl) can neither refresh nor release it.
    assert_eq!(b.refresh(name).await.unwrap(), RefreshReply::NotOwner);
    assert_eq!(b.release(name).await.unwrap(), ReleaseReply::NotOwner);
    assert_eq!(
        b.with_space_lock(name, |_| async {}).await.unwrap(),
        Outcome::Skipped(spacelock_client::Skipped::LockHeld)
    );
    // Nor can raw commands with guessed owners.
    // (An empty owner is refused outright.)
    let empty: redis::RedisResult<i64> = redis::cmd("SPACELOCK.RELEASE")
        .arg(&key)
        .arg("")
        .query(&mut con);
    assert!(empty.is_err(), "{empty:?}");
    for guess in [
        b.owner(),
        "*",
        "spacelock",
        &a.owner()[..35],
        &a.owner().to_uppercase(),
    ] {
        let r: i64 = redis::cmd("SPACELOCK.REFRESH")
            .arg(&key)
            .arg(guess)
            .arg(60_000)
            .query(&mut con)
            .unwrap();
        assert_eq!(r, 0, "refresh with {guess:?}");
        let r: i64 = redis::cmd("SPACELOCK.RELEASE")
            .arg(&key)
            .arg(guess)
            .query(&mut con)
            .unwrap();
        assert_eq!(r, 0, "release with {guess:?}");
    }
    // The key, its fence counter and both expiries are unchanged.
    assert_eq!(kit::snapshot(&mut con), before);
    let info = a.info(name).await.unwrap().unwrap();
    assert_eq!((info.owner.as_str(), info.token), (a.owner(), token));
    assert!(
        info.ttl.unwrap() <= Duration::from_millis(4_800),
        "{info:?}"
    );
    // The owner still can.
    assert_eq!(a.refresh(name).await.unwrap(), RefreshReply::Refreshed);
    assert_eq!(a.release(name).await.unwrap(), ReleaseReply::Released);
    assert_eq!(a.info(name).await.unwrap(), None);
}

kit::main!();
