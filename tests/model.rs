//! Differential model test: random operation sequences run
//! against a live server and against a small reference model written here,
//! independently of the module's own state machine. Every reply must match.
//!
//! The model predicts every token exactly (the token term rule): each name
//! counts on its own from the server's `token_floor`; a grant issues
//! `max(fence + 1, floor, highest of the name + 1)`, so deleting fence keys
//! (`DEL`, `FLUSHALL`) never brings a token back, and traffic on one name
//! never moves another's. (The module keeps a name's highest token in a
//! hashed table where two of these few names share both cells with odds of
//! about 2^-30 per pair: the model treats them as separate.)
//!
//! WAIT deadlines race grants: a second client waits with a
//! short timeout while the holder releases, alone or in one event-loop
//! iteration with a slow command (`DEBUG SLEEP`, a Lua busy loop) before or
//! after it. Any interleaving may win; the model accepts exactly the
//! consistent outcomes: a token iff the key holds it, in the waiter's name,
//! under that token; nil iff nothing is held in its name (a grant that was
//! made and undone has used up exactly the predicted token, and the undo
//! counters say so).
//!
//! `SPACELOCK_MODEL_SEED` replays a run; `SPACELOCK_MODEL_OPS` sets its
//! length (default 30 000, or 2 000 000 under `SPACELOCK_SOAK`).

use spacelock_testkit as kit;

use rand::{rngs::StdRng, Rng, SeedableRng};
use redis::{Connection, Value};
use std::collections::hash_map::{Entry, HashMap};
use std::time::{Duration, Instant};

const KEYS: &[&str] = &["m:a", "m:b", "{m}:c", "m:\x00d"];
const OWNERS: &[&str] = &["o1", "o2", "o3"];
const LONG_TTL: i64 = 600_000;

#[derive(Debug, Clone)]
enum Op {
    Acquire(usize, usize),
    Refresh(usize, usize),
    Release(usize, usize),
    Del(usize),
    /// A plain `SET key owner PX ttl NX`, as the existing Lua-based service
    /// acquires.
    LuaServiceSet(usize, usize),
    /// ttl 0: must be an error and change nothing.
    BadRefresh(usize, usize),
    /// Expire the key for real: PEXPIRE 1, then wait 2 ms before the next batch.
    Expire(usize),
    /// `ACQUIRE … WAIT 1`: deterministic with one client, since nobody can
    /// release in between: granted at once when free, nil after 1 ms when held.
    AcquireWait(usize, usize),
    /// `DEL` of the key's fence key (as eviction or a careless script would).
    DelFence(usize),
    /// `FLUSHALL`: every lock and fence key gone.
    FlushAll,
    /// A waiter with a short deadline races the holder's release (run on
    /// its own, outside the pipelined batches): see [`wait_race`].
    WaitRace(WaitRace),
}

/// How a [`Op::WaitRace`] is run.
#[derive(Debug, Clone, Copy)]
struct WaitRace {
    key: usize,
    holder: usize,
    waiter: usize,
    /// The waiter's WAIT timeout (ms).
    timeout_ms: u64,
    /// A slow command in the holder's pipeline: none, before the release,
    /// or after it (so the deadline passes while the server is busy).
    slow: Slow,
    /// How long the slow command runs (ms).
    slow_ms: u64,
    /// `DEBUG SLEEP` or a Lua busy loop.
    lua: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Slow {
    None,
    Before,
    After,
}

/// The reference: lock holders, fence counters, each name's highest token
/// and the process's (term mode).
struct Model {
    holder: HashMap<usize, usize>,
    fence: HashMap<usize, i64>,
    high: HashMap<usize, i64>,
    floor: i64,
    highest: i64,
}

#[derive(Debug, PartialEq)]
enum Reply {
    Int(i64),
    Nil,
    Err,
    Ok,
}

impl Model {
    fn new(floor: i64) -> Self {
        Model {
            holder: HashMap::new(),
            fence: HashMap::new(),
            high: HashMap::new(),
            floor,
            highest: floor - 1,
        }
    }

    /// The token the next grant of `k` issues.
    fn predict(&self, k: usize) -> i64 {
        let after_fence = self.fence.get(&k).copied().unwrap_or(0) + 1;
        let after_high = self.high.get(&k).copied().unwrap_or(0) + 1;
        after_fence.max(self.floor).max(after_high)
    }

    /// Records that `token` was issued for `k`.
    fn issue(&mut self, k: usize, token: i64) {
        self.fence.insert(k, token);
        let high = self.high.entry(k).or_insert(token);
        *high = (*high).max(token);
        self.highest = self.highest.max(token);
    }

    /// Asserts the server's term fields against the model.
    fn check_term(&self, con: &mut redis::Connection, ctx: &str) {
        assert_eq!(kit::token_floor(con), self.floor, "{ctx}: the floor");
        let highest = kit::info_field(con, "spacelock", "spacelock_token_highest");
        assert_eq!(highest, self.highest, "{ctx}: the highest token");
    }

    fn apply(&mut self, op: &Op) -> Reply {
        match *op {
            Op::Acquire(k, o) | Op::AcquireWait(k, o) => {
                if self.holder.contains_key(&k) {
                    return Reply::Nil;
                }
                let t = self.predict(k);
                self.holder.insert(k, o);
                self.issue(k, t);
                Reply::Int(t)
            }
            Op::Refresh(k, o) => Reply::Int((self.holder.get(&k) == Some(&o)) as i64),
            Op::Release(k, o) => {
                if self.holder.get(&k) == Some(&o) {
                    self.holder.remove(&k);
                    Reply::Int(1)
                } else {
                    Reply::Int(0)
                }
            }
            Op::Del(k) => Reply::Int(self.holder.remove(&k).is_some() as i64),
            Op::LuaServiceSet(k, o) => match self.holder.entry(k) {
                Entry::Occupied(_) => Reply::Nil,
                Entry::Vacant(slot) => {
                    slot.insert(o);
                    Reply::Ok
                }
            },
            Op::BadRefresh(..) => Reply::Err,
            Op::Expire(k) => Reply::Int(self.holder.remove(&k).is_some() as i64),
            Op::DelFence(k) => Reply::Int(self.fence.remove(&k).is_some() as i64),
            Op::FlushAll => {
                self.holder.clear();
                self.fence.clear();
                Reply::Ok
            }
            Op::WaitRace(_) => unreachable!("run by wait_race"),
        }
    }
}

fn random_op(rng: &mut StdRng) -> Op {
    let k = rng.random_range(0..KEYS.len());
    let o = rng.random_range(0..OWNERS.len());
    // One op in 1000 is a FLUSHALL, three are WAIT races.
    match rng.random_range(0..1000) {
        0 => return Op::FlushAll,
        1..=3 => {
            return Op::WaitRace(WaitRace {
                key: k,
                holder: o,
                waiter: (o + rng.random_range(1..OWNERS.len())) % OWNERS.len(),
                timeout_ms: rng.random_range(1..=12),
                slow: [Slow::None, Slow::Before, Slow::After][rng.random_range(0..3)],
                slow_ms: rng.random_range(1..=15),
                lua: rng.random_bool(0.5),
            })
        }
        _ => {}
    }
    match rng.random_range(0..100) {
        0..=32 => Op::Acquire(k, o),
        33..=34 => Op::AcquireWait(k, o),
        35..=53 => Op::Refresh(k, o),
        54..=77 => Op::Release(k, o),
        78..=84 => Op::Del(k),
        85..=86 => Op::DelFence(k),
        87..=92 => Op::LuaServiceSet(k, o),
        93..=98 => Op::BadRefresh(k, o),
        _ => Op::Expire(k),
    }
}

fn add_to_pipe(pipe: &mut redis::Pipeline, op: &Op, fences: &[Vec<u8>]) {
    match *op {
        Op::Acquire(k, o) => pipe
            .cmd("SPACELOCK.ACQUIRE")
            .arg(KEYS[k])
            .arg(OWNERS[o])
            .arg(LONG_TTL),
        Op::Refresh(k, o) => pipe
            .cmd("SPACELOCK.REFRESH")
            .arg(KEYS[k])
            .arg(OWNERS[o])
            .arg(LONG_TTL),
        Op::Release(k, o) => pipe.cmd("SPACELOCK.RELEASE").arg(KEYS[k]).arg(OWNERS[o]),
        Op::Del(k) => pipe.cmd("DEL").arg(KEYS[k]),
        Op::LuaServiceSet(k, o) => pipe
            .cmd("SET")
            .arg(KEYS[k])
            .arg(OWNERS[o])
            .arg("PX")
            .arg(LONG_TTL)
            .arg("NX"),
        Op::BadRefresh(k, o) => pipe
            .cmd("SPACELOCK.REFRESH")
            .arg(KEYS[k])
            .arg(OWNERS[o])
            .arg(0),
        Op::Expire(k) => pipe.cmd("PEXPIRE").arg(KEYS[k]).arg(1),
        Op::AcquireWait(k, o) => pipe
            .cmd("SPACELOCK.ACQUIRE")
            .arg(KEYS[k])
            .arg(OWNERS[o])
            .arg(LONG_TTL)
            .arg("WAIT")
            .arg(1),
        Op::DelFence(k) => pipe.cmd("DEL").arg(&fences[k]),
        Op::FlushAll => pipe.cmd("FLUSHALL"),
        Op::WaitRace(_) => unreachable!("run by wait_race"),
    };
}

/// A Lua loop that keeps the server busy for `ARGV[1]` ms: by `os.clock()`
/// (CPU time) where the sandbox has it (Redis 7.2+, Valkey), else by `TIME`
/// (Redis 7.0, where it reads the real clock inside a script; newer servers
/// freeze it), with an iteration cap as a backstop.
const BUSY_LUA: &str = r#"
local ms = tonumber(ARGV[1])
local ok, clock = pcall(function() return os.clock end)
if ok and clock then
  local s = clock()
  local i = 0
  while clock() - s < ms / 1000 do i = i + 1 end
  return i
end
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
for i = 1, 200000 do
  local n = redis.call('TIME')
  if (n[1] * 1000000 + n[2]) - start >= ms * 1000 then return i end
end
return -1"#;

/// The slow command of a race.
fn add_slow(pipe: &mut redis::Pipeline, race: &WaitRace) {
    if race.lua {
        pipe.cmd("EVAL")
            .arg(BUSY_LUA)
            .arg(0)
            .arg(race.slow_ms)
            .ignore();
    } else {
        pipe.cmd("DEBUG")
            .arg("SLEEP")
            .arg(format!("{:.3}", race.slow_ms as f64 / 1000.0))
            .ignore();
    }
}

/// The lock and fence key of `k` as the server has them.
fn server_state(
    con: &mut Connection,
    k: usize,
    fences: &[Vec<u8>],
) -> (Option<String>, Option<i64>) {
    let holder: Option<String> = redis::cmd("GET").arg(KEYS[k]).query(con).unwrap();
    let fence: Option<i64> = redis::cmd("GET").arg(&fences[k]).query(con).unwrap();
    (holder, fence)
}

/// How a WAIT race ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RaceEnd {
    Token,
    Nil,
    Undone,
}

/// Runs one WAIT race and checks that its outcome is one of the consistent
/// ones; the model follows whichever happened.
fn wait_race(
    con: &mut Connection,
    waiter_con: &mut Connection,
    model: &mut Model,
    race: &WaitRace,
    fences: &[Vec<u8>],
    seed: u64,
) -> RaceEnd {
    let k = race.key;
    let ctx = format!("seed {seed}: {race:?}");
    // The holder takes the key first if it is free (a grant the model
    // predicts), or already holds it; someone else's lock is released by
    // its owner instead.
    let holder = match model.holder.get(&k) {
        Some(&o) => o,
        None => {
            let want = model.apply(&Op::Acquire(k, race.holder));
            let got = kit::acquire(con, KEYS[k], OWNERS[race.holder], LONG_TTL);
            assert_eq!(Reply::Int(got.unwrap_or(0)), want, "{ctx}: setup");
            race.holder
        }
    };
    let waiter = if race.waiter == holder {
        (holder + 1) % OWNERS.len()
    } else {
        race.waiter
    };
    let undone_before = kit::stat(con, "wait_grants_undone") + kit::stat(con, "wait_grants_lost");
    let predicted = model.predict(k);
    let fence_before = model.fence.get(&k).copied();

    let reply = std::thread::scope(|s| {
        let waiting = s.spawn(|| {
            redis::cmd("SPACELOCK.ACQUIRE")
                .arg(KEYS[k])
                .arg(OWNERS[waiter])
                .arg(LONG_TTL)
                .arg("WAIT")
                .arg(race.timeout_ms)
                .query::<Value>(waiter_con)
                .unwrap()
        });
        // Until the waiter is queued (or already answered): a tight poll,
        // since its deadline is a few ms away.
        let deadline = Instant::now() + Duration::from_secs(10);
        while kit::waiting_clients(con) == 0 && !waiting.is_finished() {
            assert!(Instant::now() < deadline, "{ctx}: the waiter never queued");
        }
        let mut pipe = redis::pipe();
        if race.slow == Slow::Before {
            add_slow(&mut pipe, race);
        }
        pipe.cmd("SPACELOCK.RELEASE")
            .arg(KEYS[k])
            .arg(OWNERS[holder]);
        if race.slow == Slow::After {
            add_slow(&mut pipe, race);
        }
        let (released,): (i64,) = pipe.query(con).unwrap();
        assert_eq!(released, 1, "{ctx}: the holder releases");
        waiting.join().unwrap()
    });
    model.holder.remove(&k);
    let (holder_now, fence_now) = server_state(con, k, fences);
    let undone =
        kit::stat(con, "wait_grants_undone") + kit::stat(con, "wait_grants_lost") - undone_before;
    let end = match reply {
        Value::Int(t) => {
            assert_eq!(t, predicted, "{ctx}: the token");
            assert_eq!(
                holder_now.as_deref(),
                Some(OWNERS[waiter]),
                "{ctx}: a token, so the key must be held in the waiter's name"
            );
            assert_eq!(fence_now, Some(t), "{ctx}: under that token");
            assert_eq!(undone, 0, "{ctx}: a delivered grant is never undone");
            model.holder.insert(k, waiter);
            model.issue(k, t);
            RaceEnd::Token
        }
        Value::Nil => {
            assert_eq!(
                holder_now, None,
                "{ctx}: nil, so nothing may be held (the holder released)"
            );
            if fence_now == fence_before {
                assert_eq!(undone, 0, "{ctx}: nothing granted, nothing undone");
                RaceEnd::Nil
            } else {
                // Granted, then undone before the reply: the predicted
                // token is used up, and counted.
                assert_eq!(fence_now, Some(predicted), "{ctx}: the undone grant");
                assert_eq!(undone, 1, "{ctx}: the undo is counted once");
                model.issue(k, predicted);
                RaceEnd::Undone
            }
        }
        other => panic!("{ctx}: unexpected reply {other:?}"),
    };
    assert_eq!(kit::waiting_clients(con), 0, "{ctx}: nobody left waiting");
    model.check_term(con, &ctx);
    end
}

fn to_reply(v: &Value) -> Reply {
    match v {
        Value::Int(i) => Reply::Int(*i),
        Value::Nil => Reply::Nil,
        Value::Okay => Reply::Ok,
        Value::SimpleString(s) if s == "OK" => Reply::Ok,
        Value::ServerError(_) => Reply::Err,
        other => panic!("unexpected reply {other:?}"),
    }
}

#[kit::test]
fn live_server_matches_reference_model() {
    let seed: u64 = std::env::var("SPACELOCK_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let total: usize = std::env::var("SPACELOCK_MODEL_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if kit::soak() { 2_000_000 } else { 30_000 });
    println!("model test: SPACELOCK_MODEL_SEED={seed} SPACELOCK_MODEL_OPS={total}");
    // A WAIT on a held key blocks until its 1 ms timeout, which the server
    // notices on its next cron tick: a high hz keeps those pauses short.
    let server = kit::ServerBuilder::new().arg("hz", "500").start();
    let mut con = server.conn();
    let mut waiter_con = server.conn();
    let fences: Vec<Vec<u8>> = KEYS
        .iter()
        .map(|k| {
            redis::cmd("SPACELOCK.FENCEKEY")
                .arg(*k)
                .query(&mut con)
                .unwrap()
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Model::new(kit::token_floor(&mut con));
    let mut done = 0;
    let mut batch_no = 0;
    let mut races: HashMap<RaceEnd, usize> = HashMap::new();
    let mut flushes = 0;
    while done < total {
        // A batch ends at its first `Expire`, so no op can see the key in the
        // 1 ms before it really expires, and before a WAIT race, which runs
        // on its own.
        let mut ops = Vec::new();
        let mut race = None;
        while ops.len() < 200 && done + ops.len() < total {
            let op = random_op(&mut rng);
            if let Op::WaitRace(r) = op {
                race = Some(r);
                break;
            }
            let stop = matches!(op, Op::Expire(_));
            flushes += usize::from(matches!(op, Op::FlushAll));
            ops.push(op);
            if stop {
                break;
            }
        }
        let n = ops.len();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for op in &ops {
            add_to_pipe(&mut pipe, op, &fences);
        }
        let replies: Vec<Value> = if ops.is_empty() {
            Vec::new()
        } else {
            pipe.query(&mut con).unwrap()
        };
        let mut expired = None;
        for (i, (op, got)) in ops.iter().zip(&replies).enumerate() {
            let want = model.apply(op);
            let got = to_reply(got);
            // An `Expire` takes effect once 1 ms has passed; it is the last op
            // of its batch and the sleep below outlasts it, so the model
            // treats it as immediate.
            assert_eq!(
                got,
                want,
                "seed {seed}: op #{} {op:?} (batch {batch_no}, index {i})",
                done + i
            );
            if let Op::Expire(k) = op {
                expired = Some(*k);
            }
        }
        if let Some(k) = expired {
            // Until the server sees the key gone (EXISTS of an expired key
            // is 0).
            let deadline = Instant::now() + Duration::from_secs(5);
            while redis::cmd("EXISTS")
                .arg(KEYS[k])
                .query::<i64>(&mut con)
                .unwrap()
                == 1
            {
                assert!(Instant::now() < deadline, "{} never expired", KEYS[k]);
            }
        }
        done += n;
        if let Some(r) = race {
            let end = wait_race(&mut con, &mut waiter_con, &mut model, &r, &fences, seed);
            *races.entry(end).or_default() += 1;
            done += 1;
        }
        batch_no += 1;
        // Every 50 batches, compare the whole state too.
        if batch_no % 50 == 0 {
            for (k, name) in KEYS.iter().enumerate() {
                let v: Option<String> = redis::cmd("GET").arg(*name).query(&mut con).unwrap();
                assert_eq!(
                    v.as_deref(),
                    model.holder.get(&k).map(|o| OWNERS[*o]),
                    "seed {seed}: key {name}"
                );
                let fence: Vec<u8> = redis::cmd("SPACELOCK.FENCEKEY")
                    .arg(*name)
                    .query(&mut con)
                    .unwrap();
                let t: Option<i64> = redis::cmd("GET").arg(&fence).query(&mut con).unwrap();
                assert_eq!(
                    t,
                    model.fence.get(&k).copied(),
                    "seed {seed}: fence of {name}"
                );
            }
            model.check_term(&mut con, &format!("seed {seed}"));
        }
    }
    println!("model test: WAIT races {races:?}, {flushes} FLUSHALLs");
    assert!(model.highest >= model.floor);
}

kit::main!();
