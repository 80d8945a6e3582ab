//! Differential model test (issue 7 §1): random operation sequences run
//! against a live server and against a small reference model written here,
//! independently of the module's own state machine. Every reply must match.
//!
//! `SPACELOCK_MODEL_SEED` replays a run; `SPACELOCK_MODEL_OPS` sets its
//! length (default 100 000; use e.g. 5 000 000 for a soak).

use spacelock_testkit as kit;

use rand::{rngs::StdRng, Rng, SeedableRng};
use redis::Value;
use std::collections::hash_map::{Entry, HashMap};
use std::time::Duration;

const KEYS: &[&str] = &["m:a", "m:b", "{m}:c", "m:\x00d"];
const OWNERS: &[&str] = &["o1", "o2", "o3"];
const LONG_TTL: i64 = 600_000;

#[derive(Debug, Clone)]
enum Op {
    Acquire(usize, usize),
    Refresh(usize, usize),
    Release(usize, usize),
    Del(usize),
    /// A plain `SET key owner PX ttl NX`, as the seed does.
    SeedSet(usize, usize),
    /// ttl 0: must be an error and change nothing.
    BadRefresh(usize, usize),
    /// Expire the key for real: PEXPIRE 1, then wait 2 ms before the next batch.
    Expire(usize),
    /// `ACQUIRE … WAIT 1`: deterministic with one client, since nobody can
    /// release in between: granted at once when free, nil after 1 ms when held.
    AcquireWait(usize, usize),
}

/// The reference: lock holders and fence counters.
#[derive(Default)]
struct Model {
    holder: HashMap<usize, usize>,
    fence: HashMap<usize, i64>,
}

#[derive(Debug, PartialEq)]
enum Reply {
    Int(i64),
    Nil,
    Err,
    Ok,
}

impl Model {
    fn apply(&mut self, op: &Op) -> Reply {
        match *op {
            Op::Acquire(k, o) | Op::AcquireWait(k, o) => match self.holder.entry(k) {
                Entry::Occupied(_) => Reply::Nil,
                Entry::Vacant(slot) => {
                    slot.insert(o);
                    let t = self.fence.entry(k).or_insert(0);
                    *t += 1;
                    Reply::Int(*t)
                }
            },
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
            Op::SeedSet(k, o) => match self.holder.entry(k) {
                Entry::Occupied(_) => Reply::Nil,
                Entry::Vacant(slot) => {
                    slot.insert(o);
                    Reply::Ok
                }
            },
            Op::BadRefresh(..) => Reply::Err,
            Op::Expire(k) => Reply::Int(self.holder.remove(&k).is_some() as i64),
        }
    }
}

fn random_op(rng: &mut StdRng) -> Op {
    let k = rng.random_range(0..KEYS.len());
    let o = rng.random_range(0..OWNERS.len());
    match rng.random_range(0..100) {
        0..=32 => Op::Acquire(k, o),
        33..=34 => Op::AcquireWait(k, o),
        35..=54 => Op::Refresh(k, o),
        55..=79 => Op::Release(k, o),
        80..=86 => Op::Del(k),
        87..=92 => Op::SeedSet(k, o),
        93..=98 => Op::BadRefresh(k, o),
        _ => Op::Expire(k),
    }
}

fn add_to_pipe(pipe: &mut redis::Pipeline, op: &Op) {
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
        Op::SeedSet(k, o) => pipe
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
    };
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
        .unwrap_or(100_000);
    println!("model test: SPACELOCK_MODEL_SEED={seed} SPACELOCK_MODEL_OPS={total}");
    // A WAIT on a held key blocks until its 1 ms timeout, which the server
    // notices on its next cron tick: a high hz keeps those pauses short.
    let server = kit::ServerBuilder::new().arg("hz", "500").start();
    let mut con = server.conn();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Model::default();
    let mut done = 0;
    let mut batch_no = 0;
    while done < total {
        // A batch ends at its first `Expire`, so no op can see the key in the
        // 1 ms before it really expires.
        let mut ops = Vec::new();
        while ops.len() < 200 && done + ops.len() < total {
            let op = random_op(&mut rng);
            let stop = matches!(op, Op::Expire(_));
            ops.push(op);
            if stop {
                break;
            }
        }
        let n = ops.len();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for op in &ops {
            add_to_pipe(&mut pipe, op);
        }
        let replies: Vec<Value> = pipe.query(&mut con).unwrap();
        let mut expired = false;
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
            if matches!(op, Op::Expire(_)) {
                expired = true;
            }
        }
        if expired {
            std::thread::sleep(Duration::from_millis(2));
        }
        done += n;
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
        }
    }
    assert!(model.fence.values().sum::<i64>() > 0);
}

kit::main!();
