//! Shared and counted locks over the in-memory keyspace, with a settable
//! clock: table tests per decision, a model world with a FIFO queue, and a
//! randomized run against a brute-force reference.

use std::collections::{BTreeMap, HashSet, VecDeque};

use super::*;
use crate::args::ArgError;
use crate::fence::fence_key;
use crate::handoff::parse_options;
use crate::ledger::Ledger;
use crate::lock::{self, MemoryStore, Policy, Process, Value};
use crate::tokens::{Terms, TokenMode, PER_MS};

const T0: i64 = 1_700_000_000_000;
/// The first token of the test process's term.
const F: i64 = T0 * PER_MS;
const K: &[u8] = b"space:cache";

const TERM: Policy = Policy {
    mode: TokenMode::Term,
    retention_ms: 0,
};

fn process_at(now: i64) -> Process {
    Process {
        terms: Terms::open_at(now),
        ledger: Ledger::new(),
    }
}

/// What ACQUIRE's options parse to.
type Parsed = Result<(Mode, Option<i64>), ArgError>;

fn opts(args: &[&str]) -> Parsed {
    let v: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
    parse_acquire_options(&v)
}

#[test]
fn acquire_options() {
    use Mode::*;
    let table: &[(&[&str], Parsed)] = &[
        (&[], Ok((Exclusive, None))),
        (&["WAIT", "0"], Ok((Exclusive, Some(0)))),
        (&["SHARED"], Ok((Shared, None))),
        (&["shared", "wait", "250"], Ok((Shared, Some(250)))),
        (&["WAIT", "5", "SHARED"], Ok((Shared, Some(5)))),
        (&["LIMIT", "3"], Ok((Limit(3), None))),
        (&["WAIT", "7", "limit", "1"], Ok((Limit(1), Some(7)))),
        (&["LIMIT", "1000000"], Ok((Limit(MAX_LIMIT), None))),
        (&["LIMIT", "0"], Err(ArgError::LimitInvalid(MAX_LIMIT))),
        (&["LIMIT", "-1"], Err(ArgError::LimitInvalid(MAX_LIMIT))),
        (
            &["LIMIT", "1000001"],
            Err(ArgError::LimitInvalid(MAX_LIMIT)),
        ),
        (&["LIMIT", "03"], Err(ArgError::LimitInvalid(MAX_LIMIT))),
        (&["LIMIT", "x"], Err(ArgError::LimitInvalid(MAX_LIMIT))),
        (&["LIMIT"], Err(ArgError::MissingValue)),
        (&["SHARED", "SHARED"], Err(ArgError::RepeatedOption)),
        (&["LIMIT", "2", "LIMIT", "2"], Err(ArgError::RepeatedOption)),
        (&["SHARED", "LIMIT", "2"], Err(ArgError::ModeConflict)),
        (&["LIMIT", "2", "SHARED"], Err(ArgError::ModeConflict)),
        (&["SHARED", "WAIT", "-1"], Err(ArgError::TimeoutInvalid)),
        (&["EXCLUSIVE"], Err(ArgError::UnknownOption)),
    ];
    for (args, want) in table {
        assert_eq!(&opts(args), want, "{args:?}");
    }
    // Without SHARED or LIMIT, exactly today's parser: same values, same
    // errors (the exclusive form's replies byte for byte).
    let exclusive: &[&[&str]] = &[
        &[],
        &["WAIT", "0"],
        &["wait", "250"],
        &["WAIT"],
        &["WAIT", "-1"],
        &["WAIT", "1.5"],
        &["WAIT", "1", "WAIT", "2"],
        &["NOWAIT", "1"],
        &["WAIT", "1", "PX"],
    ];
    for args in exclusive {
        let v: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        let old = parse_options(&v).map(|w| (Mode::Exclusive, w));
        assert_eq!(opts(args), old, "{args:?}");
    }
    for e in [ArgError::LimitInvalid(MAX_LIMIT), ArgError::ModeConflict] {
        assert!(e.to_string().starts_with("ERR "), "{e}");
    }
}

#[test]
fn fields_round_trip_and_refuse_strangers() {
    for m in [
        KeyMode::Shared,
        KeyMode::Limit(1),
        KeyMode::Limit(MAX_LIMIT),
    ] {
        assert_eq!(KeyMode::parse(&m.encode()), Some(m));
    }
    assert_eq!(KeyMode::Shared.encode(), b"shared");
    assert_eq!(KeyMode::Limit(3).encode(), b"limit:3");
    for bad in [
        &b""[..],
        b"SHARED",
        b"limit:",
        b"limit:0",
        b"limit:-2",
        b"limit:1000001",
        b"limit:03",
        b"limit: 3",
        b"exclusive",
    ] {
        assert_eq!(KeyMode::parse(bad), None, "{bad:?}");
    }
    let h = Holder {
        token: F + 7,
        deadline_ms: T0 + 30_000,
    };
    assert_eq!(h.encode(), b"1700000000000007:1700000030000");
    assert_eq!(Holder::parse(&h.encode()), Ok(h));
    for bad in [
        &b""[..],
        b"5",
        b"5:",
        b":5",
        b"-1:5",
        b"5:x",
        b"05:5",
        b"5:5:5",
        b"5 :5",
    ] {
        assert_eq!(Holder::parse(bad), Err(LockError::HolderCorrupt), "{bad:?}");
    }
}

#[test]
fn wrong_mode_errors_read_clearly() {
    let table = [
        (
            Kind::Counted(3),
            Mode::Shared,
            "WRONGMODE the lock is counted (LIMIT 3); acquire it with LIMIT 3, not SHARED",
        ),
        (
            Kind::Counted(3),
            Mode::Exclusive,
            "WRONGMODE the lock is counted (LIMIT 3); acquire it with LIMIT 3, not exclusive",
        ),
        (
            Kind::Counted(3),
            Mode::Limit(5),
            "WRONGMODE the lock is counted (LIMIT 3); acquire it with LIMIT 3, not LIMIT 5",
        ),
        (
            Kind::ReadWrite,
            Mode::Limit(2),
            "WRONGMODE the lock is a reader-writer lock (exclusive or SHARED), not LIMIT 2",
        ),
    ];
    for (held, asked, text) in table {
        let e = LockError::from(WrongMode { held, asked });
        assert_eq!(e.to_string(), text);
    }
    assert!(LockError::HolderCorrupt.to_string().starts_with("ERR "));
}

/// `decide` for one queue: its modes and owners, the holders' owners.
fn dec(held: Held, queue: &[(Mode, &str)], holders: &[&str]) -> usize {
    let wants = queue.iter().map(|(mode, o)| Want {
        mode: *mode,
        owner: o.as_bytes(),
    });
    decide(held, wants, |o| holders.iter().any(|h| h.as_bytes() == o))
}

#[test]
fn the_queue_decision() {
    use Mode::{Exclusive as X, Limit as L, Shared as S};
    // (holders, queue, holders' owners, granted, why)
    type Row<'a> = (Held, &'a [(Mode, &'a str)], &'a [&'a str], usize, &'a str);
    let table: &[Row<'_>] = &[
        (Held::Free, &[], &[], 0, "nobody waits"),
        (Held::Free, &[(X, "a"), (X, "b")], &[], 1, "one writer"),
        (
            Held::Free,
            &[(X, "a"), (S, "b")],
            &[],
            1,
            "a writer, then readers wait",
        ),
        (
            Held::Free,
            &[(S, "a"), (S, "b"), (S, "c")],
            &[],
            3,
            "readers together",
        ),
        (
            Held::Free,
            &[(S, "a"), (S, "b"), (X, "c"), (S, "d")],
            &[],
            2,
            "a waiting writer blocks later readers",
        ),
        (Held::Shared(4), &[(S, "a")], &[], 1, "one more reader"),
        (
            Held::Shared(4),
            &[(X, "a"), (S, "b")],
            &[],
            0,
            "the writer waits for readers",
        ),
        (
            Held::Exclusive,
            &[(S, "a")],
            &[],
            0,
            "readers wait for the writer",
        ),
        (
            Held::Exclusive,
            &[(X, "a")],
            &[],
            0,
            "writers wait for the writer",
        ),
        (
            Held::Counted {
                limit: 3,
                holders: 1,
            },
            &[(L(3), "a"), (L(3), "b"), (L(3), "c")],
            &[],
            2,
            "permits in order",
        ),
        (
            Held::Counted {
                limit: 3,
                holders: 3,
            },
            &[(L(3), "a")],
            &[],
            0,
            "no permit left",
        ),
        (Held::Free, &[(L(1), "a"), (L(1), "b")], &[], 1, "LIMIT 1"),
        (
            Held::Free,
            &[(L(2), "a"), (L(3), "b")],
            &[],
            1,
            "another n stops",
        ),
        (
            Held::Shared(1),
            &[(L(2), "a")],
            &[],
            0,
            "another kind stops",
        ),
        (
            Held::Shared(1),
            &[(S, "a"), (S, "b")],
            &["a"],
            0,
            "a holder's second share waits",
        ),
        (
            Held::Free,
            &[(S, "a"), (S, "a"), (S, "b")],
            &[],
            1,
            "one owner once per step",
        ),
        (
            Held::Counted {
                limit: 5,
                holders: 1,
            },
            &[(L(5), "b"), (L(5), "a"), (L(5), "c")],
            &["a"],
            1,
            "nobody overtakes a blocked head",
        ),
        (Held::Free, &[(L(0), "a")], &[], 0, "LIMIT 0 never fits"),
    ];
    for (held, queue, holders, want, why) in table {
        assert_eq!(dec(*held, queue, holders), *want, "{why}");
    }
}

#[test]
fn admission_refuses_barging_and_wrong_modes() {
    let want = |mode| Want {
        mode,
        owner: b"n".as_slice(),
    };
    let none = |_: &[u8]| false;
    let rw = Some(Kind::ReadWrite);
    // Free, nobody queued: granted.
    assert_eq!(admit(Held::Free, None, want(Mode::Shared), none), Ok(true));
    // Readers hold it, a writer is queued: a reader that would fit waits.
    assert_eq!(
        admit(Held::Shared(2), rw, want(Mode::Shared), none),
        Ok(false)
    );
    assert_eq!(
        admit(Held::Shared(2), None, want(Mode::Shared), none),
        Ok(true)
    );
    // Another kind of lock: an error, whether it comes from the holders or
    // from the queue.
    let counted = Held::Counted {
        limit: 2,
        holders: 1,
    };
    assert_eq!(
        admit(counted, None, want(Mode::Shared), none),
        Err(WrongMode {
            held: Kind::Counted(2),
            asked: Mode::Shared
        })
    );
    assert_eq!(
        admit(
            Held::Free,
            Some(Kind::Counted(2)),
            want(Mode::Exclusive),
            none
        ),
        Err(WrongMode {
            held: Kind::Counted(2),
            asked: Mode::Exclusive
        })
    );
    assert_eq!(
        admit(Held::Exclusive, None, want(Mode::Limit(2)), none),
        Err(WrongMode {
            held: Kind::ReadWrite,
            asked: Mode::Limit(2)
        })
    );
    assert_eq!(admit(counted, None, want(Mode::Limit(2)), none), Ok(true));
    assert_eq!(
        admit(counted, None, want(Mode::Limit(2)), |o| o == b"n"),
        Ok(false),
        "the owner holds a permit already"
    );
}

/// A recording [`SharedStore`]: every write as the core command the module
/// would replicate.
struct Rec<'a> {
    v: MemoryView<'a>,
    log: Vec<String>,
    /// Full reads of the hash (`HGETALL`), the O(holders) step.
    full_reads: usize,
}

fn rec<'a>(s: &'a mut MemoryStore) -> Rec<'a> {
    Rec {
        v: s.view(K, b"-"),
        log: Vec::new(),
        full_reads: 0,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl SharedStore for Rec<'_> {
    fn now_ms(&self) -> i64 {
        SharedStore::now_ms(&self.v)
    }
    fn db(&self) -> i32 {
        0
    }
    fn key(&self) -> &[u8] {
        K
    }
    fn layout(&mut self) -> Layout {
        self.v.layout()
    }
    fn holder(&mut self, owner: &[u8]) -> Result<Option<Holder>, LockError> {
        self.v.holder(owner)
    }
    fn holders(&mut self) -> Result<Vec<(Vec<u8>, Holder)>, LockError> {
        self.full_reads += 1;
        self.v.holders()
    }
    fn holder_count(&mut self) -> usize {
        self.v.holder_count()
    }
    fn expire_at(&mut self) -> Option<i64> {
        SharedStore::expire_at(&mut self.v)
    }
    fn last_token(&mut self) -> Result<i64, LockError> {
        SharedStore::last_token(&mut self.v)
    }
    fn fence_expiry(&mut self) -> Option<Option<i64>> {
        SharedStore::fence_expiry(&mut self.v)
    }
    fn write_fence(&mut self, token: i64, until_ms: Option<i64>) -> Result<(), LockError> {
        self.log.push(match until_ms {
            Some(at) => format!("SET fence {token} PXAT {}", at - T0),
            None => format!("SET fence {token}"),
        });
        self.v.write_fence(token, until_ms)
    }
    fn extend_fence(&mut self, until_ms: Option<i64>) {
        self.log.push(match until_ms {
            Some(at) => format!("PEXPIREAT fence {}", at - T0),
            None => "PERSIST fence".into(),
        });
        SharedStore::extend_fence(&mut self.v, until_ms);
    }
    fn put(
        &mut self,
        create: Option<KeyMode>,
        owner: &[u8],
        holder: Holder,
    ) -> Result<(), LockError> {
        let mode = create.map_or(String::new(), |m| format!("\"\" {} ", text(&m.encode())));
        self.log.push(format!(
            "HSET k {mode}{} {}:{}",
            text(owner),
            holder.token - F,
            holder.deadline_ms - T0
        ));
        self.v.put(create, owner, holder)
    }
    fn remove_holder(&mut self, owner: &[u8]) {
        self.log.push(format!("HDEL k {}", text(owner)));
        self.v.remove_holder(owner);
    }
    fn set_expire_at(&mut self, at_ms: i64) {
        self.log.push(format!("PEXPIREAT k {}", at_ms - T0));
        self.v.set_expire_at(at_ms);
    }
    fn delete(&mut self) {
        self.log.push("DEL k".into());
        SharedStore::delete(&mut self.v);
    }
}

/// One key, one process, a FIFO queue: the module's decisions, in memory.
struct World {
    s: MemoryStore,
    p: Process,
    idx: SharedIndex,
    policy: Policy,
    queue: VecDeque<Waiter>,
    next_id: u64,
    /// (waiter id, token) of every grant made from the queue, in order.
    handed: Vec<(u64, i64)>,
    timed_out: Vec<u64>,
}

#[derive(Debug, Clone)]
struct Waiter {
    id: u64,
    owner: Vec<u8>,
    mode: Mode,
    ttl: i64,
    deadline: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Token(i64),
    Nil,
    Queued(u64),
    Err(LockError),
}

impl World {
    fn new() -> Self {
        World {
            s: MemoryStore::at(T0),
            p: process_at(T0),
            idx: SharedIndex::new(),
            policy: TERM,
            queue: VecDeque::new(),
            next_id: 1,
            handed: Vec::new(),
            timed_out: Vec::new(),
        }
    }

    fn queue_kind(&self) -> Option<Kind> {
        self.queue.front().map(|w| w.mode.kind())
    }

    /// Grants `mode` to `owner` now, exactly as a command would (no queue
    /// check: the caller made it).
    fn grant(
        &mut self,
        owner: &[u8],
        mode: Mode,
        ttl: i64,
        ahead: Option<Kind>,
    ) -> Result<Option<i64>, LockError> {
        let mut v = self.s.view(K, owner);
        match (KeyMode::of(mode), ahead) {
            (None, Some(kind)) if kind != Kind::ReadWrite => Err(WrongMode {
                held: kind,
                asked: mode,
            }
            .into()),
            (None, Some(_)) => match v.layout() {
                Layout::Hash(KeyMode::Limit(n)) => Err(WrongMode {
                    held: Kind::Counted(n),
                    asked: mode,
                }
                .into()),
                Layout::Foreign => Err(LockError::LockWrongType),
                _ => Ok(None),
            },
            (None, None) => lock::acquire(&mut v, ttl, &mut self.p, self.policy),
            (Some(km), ahead) => acquire(
                &mut v,
                owner,
                ttl,
                km,
                ahead,
                &mut self.p,
                &mut self.idx,
                self.policy,
            ),
        }
    }

    /// `ACQUIRE k owner ttl <mode> [WAIT t]`.
    fn arrive(&mut self, owner: &str, mode: Mode, ttl: i64, wait: Option<i64>) -> Reply {
        self.settle();
        let ahead = self.queue_kind();
        match self.grant(owner.as_bytes(), mode, ttl, ahead) {
            Ok(Some(t)) => Reply::Token(t),
            Ok(None) => match wait {
                None => Reply::Nil,
                Some(timeout) => {
                    let id = self.next_id;
                    self.next_id += 1;
                    self.queue.push_back(Waiter {
                        id,
                        owner: owner.as_bytes().to_vec(),
                        mode,
                        ttl,
                        deadline: (timeout > 0).then(|| self.s.now + timeout),
                    });
                    Reply::Queued(id)
                }
            },
            Err(e) => Reply::Err(e),
        }
    }

    /// `REFRESH k owner ttl`, routed by the key's type as the module does.
    fn refresh(&mut self, owner: &str, ttl: i64) -> Result<bool, LockError> {
        self.settle();
        let mut v = self.s.view(K, owner.as_bytes());
        let r = match v.layout() {
            Layout::Exclusive | Layout::Missing => {
                lock::refresh(&mut v, ttl, &mut self.p, self.policy)
            }
            _ => refresh(
                &mut v,
                owner.as_bytes(),
                ttl,
                &mut self.p,
                &mut self.idx,
                self.policy,
            ),
        };
        self.settle();
        r
    }

    /// `RELEASE k owner`, routed by the key's type.
    fn release(&mut self, owner: &str) -> Result<bool, LockError> {
        self.settle();
        let mut v = self.s.view(K, owner.as_bytes());
        let r = match v.layout() {
            Layout::Exclusive | Layout::Missing => lock::release(&mut v, &mut self.p, self.policy),
            _ => release(
                &mut v,
                owner.as_bytes(),
                &mut self.p,
                &mut self.idx,
                self.policy,
            ),
        };
        self.settle();
        r
    }

    fn check(&mut self, owner: &str, token: i64) -> bool {
        check(&mut self.s.view(K, b"-"), owner.as_bytes(), token).unwrap()
    }

    /// What the timers do at this instant: waiters past their deadline
    /// leave; ended leases go; the head of the queue is granted.
    fn settle(&mut self) {
        let now = self.s.now;
        let timed_out: Vec<u64> = self
            .queue
            .iter()
            .filter(|w| w.deadline.is_some_and(|d| d <= now))
            .map(|w| w.id)
            .collect();
        self.queue.retain(|w| !timed_out.contains(&w.id));
        self.timed_out.extend(timed_out);
        loop {
            let wants: Vec<Waiter> = self.queue.iter().cloned().collect();
            let n = grantable(
                &mut self.s.view(K, b"-"),
                wants.iter().map(|w| Want {
                    mode: w.mode,
                    owner: &w.owner,
                }),
                &self.p,
                &mut self.idx,
            )
            .unwrap();
            if n == 0 {
                break;
            }
            for _ in 0..n {
                let w = self.queue.pop_front().unwrap();
                let token = self.grant(&w.owner, w.mode, w.ttl, None).unwrap();
                let token = token.unwrap_or_else(|| panic!("{w:?} was grantable"));
                self.handed.push((w.id, token));
            }
        }
    }

    fn advance(&mut self, ms: i64) {
        for _ in 0..ms {
            self.s.now += 1;
            self.settle();
        }
    }

    /// The live holders the keyspace shows: (owner, token, deadline, mode).
    fn live(&mut self) -> Vec<(Vec<u8>, i64, i64, Mode)> {
        let now = self.s.now;
        match self.s.get(K).cloned() {
            None => vec![],
            Some(Value::Str(owner)) => {
                let deadline = self.s.expire_at(K).unwrap();
                let name = self.p.name(0, K);
                let token = lock::current_token(&self.p.ledger, &name, &owner, || {
                    lock::Store::last_token(&mut self.s.view(K, b"-"))
                })
                .unwrap();
                vec![(owner, token, deadline, Mode::Exclusive)]
            }
            Some(Value::Hash(h)) => {
                let mode = KeyMode::parse(&h[MODE_FIELD]).unwrap().mode();
                let mut all: Vec<_> = h
                    .iter()
                    .filter(|(f, _)| f.as_slice() != MODE_FIELD)
                    .map(|(f, v)| (f.clone(), Holder::parse(v).unwrap()))
                    .filter(|(_, h)| h.live_at(now))
                    .map(|(f, h)| (f, h.token, h.deadline_ms, mode))
                    .collect();
                all.sort();
                all
            }
            Some(Value::Other) => panic!("not a lock"),
        }
    }

    /// Hash invariants: it exists only with a holder, its expiry is the
    /// latest deadline, and the index (if it has the key) agrees with it.
    fn check_layout(&mut self) {
        if let Some(Value::Hash(h)) = self.s.get(K).cloned() {
            assert!(h.len() >= 2, "a mode field alone: {h:?}");
            let latest = h
                .iter()
                .filter(|(f, _)| f.as_slice() != MODE_FIELD)
                .map(|(_, v)| Holder::parse(v).unwrap().deadline_ms)
                .max();
            assert_eq!(self.s.expire_at(K), latest, "the key's expiry");
            let name = self.p.name(0, K);
            if let Some(ix) = self.idx.get(&name) {
                let mut indexed: Vec<(Vec<u8>, Holder)> = ix
                    .by_token()
                    .into_iter()
                    .map(|(o, h)| (o.to_vec(), h))
                    .collect();
                let mut stored = self.s.view(K, b"-").holders().unwrap();
                indexed.sort_by_key(|(_, h)| h.token);
                stored.sort_by_key(|(_, h)| h.token);
                assert_eq!(indexed, stored, "index and hash");
            }
        }
    }
}

use Reply::{Nil, Queued, Token};

#[test]
fn grant_and_deny_per_mode() {
    // Shared: readers together; a writer is refused while they hold.
    let mut w = World::new();
    assert_eq!(w.arrive("r1", Mode::Shared, 100, None), Token(F));
    assert_eq!(w.arrive("r2", Mode::Shared, 100, None), Token(F + 1));
    assert_eq!(
        w.arrive("r1", Mode::Shared, 100, None),
        Nil,
        "one share each"
    );
    assert_eq!(w.arrive("x", Mode::Exclusive, 100, None), Nil);
    assert_eq!(w.release("r1"), Ok(true));
    assert_eq!(w.release("r1"), Ok(false));
    assert_eq!(w.arrive("x", Mode::Exclusive, 100, None), Nil);
    assert_eq!(w.release("r2"), Ok(true));
    assert_eq!(w.s.get(K), None, "the last reader deletes the key");
    assert_eq!(w.arrive("x", Mode::Exclusive, 100, None), Token(F + 2));
    assert_eq!(
        w.arrive("r1", Mode::Shared, 100, None),
        Nil,
        "a writer holds"
    );
    assert_eq!(w.release("x"), Ok(true));
    assert_eq!(w.arrive("r1", Mode::Shared, 100, None), Token(F + 3));

    // Counted: n holders, then nil; a permit back, one more.
    let mut w = World::new();
    for (i, o) in ["a", "b", "c"].iter().enumerate() {
        assert_eq!(
            w.arrive(o, Mode::Limit(3), 100, None),
            Token(F + i as i64),
            "{o}"
        );
    }
    assert_eq!(w.arrive("d", Mode::Limit(3), 100, None), Nil);
    assert_eq!(w.arrive("a", Mode::Limit(3), 100, None), Nil);
    assert_eq!(w.release("b"), Ok(true));
    assert_eq!(w.arrive("d", Mode::Limit(3), 100, None), Token(F + 3));
    assert_eq!(w.arrive("e", Mode::Limit(3), 100, None), Nil);
    assert_eq!(
        w.live().iter().map(|l| text(&l.0)).collect::<Vec<_>>(),
        ["a", "c", "d"]
    );
}

#[test]
fn a_wrong_mode_is_an_error_that_changes_nothing() {
    let limit3 = Kind::Counted(3);
    let rw = Kind::ReadWrite;
    let err = |held, asked| Reply::Err(LockError::WrongMode(WrongMode { held, asked }));
    // A counted key.
    let mut w = World::new();
    w.arrive("a", Mode::Limit(3), 100, None);
    let before = w.s.keys.clone();
    assert_eq!(
        w.arrive("b", Mode::Shared, 100, Some(0)),
        err(limit3, Mode::Shared)
    );
    assert_eq!(
        w.arrive("b", Mode::Exclusive, 100, Some(0)),
        err(limit3, Mode::Exclusive)
    );
    assert_eq!(
        w.arrive("b", Mode::Limit(4), 100, None),
        err(limit3, Mode::Limit(4))
    );
    assert_eq!(w.s.keys, before);
    assert!(w.queue.is_empty(), "nothing queued");
    // A shared key, an exclusive key.
    let mut w = World::new();
    w.arrive("a", Mode::Shared, 100, None);
    assert_eq!(
        w.arrive("b", Mode::Limit(2), 100, None),
        err(rw, Mode::Limit(2))
    );
    let mut w = World::new();
    w.arrive("a", Mode::Exclusive, 100, None);
    assert_eq!(
        w.arrive("b", Mode::Limit(2), 100, None),
        err(rw, Mode::Limit(2))
    );
    // The queue has a kind too: while counted requests wait, another kind
    // is refused.
    let mut w = World::new();
    w.arrive("a", Mode::Limit(1), 100, None);
    assert_eq!(w.arrive("b", Mode::Limit(1), 100, Some(0)), Queued(1));
    assert_eq!(
        w.arrive("c", Mode::Shared, 100, Some(0)),
        err(Kind::Counted(1), Mode::Shared)
    );
    // Free and nobody waiting: any mode may take the name again.
    w.release("a").unwrap();
    w.release("b").unwrap();
    assert_eq!(w.s.get(K), None);
    assert!(matches!(w.arrive("c", Mode::Shared, 100, None), Token(_)));
}

#[test]
fn exclusive_against_shared_and_back() {
    let mut w = World::new();
    w.arrive("r", Mode::Shared, 100, None);
    // Today's exclusive commands on a shared key: held, not an error.
    let mut v = w.s.view(K, b"x");
    assert_eq!(lock::acquire(&mut v, 100, &mut w.p, TERM), Ok(None));
    assert_eq!(lock::refresh(&mut v, 100, &mut w.p, TERM), Ok(false));
    assert_eq!(lock::release(&mut v, &mut w.p, TERM), Ok(false));
    // A counted key: the wrong mode. Anyone's hash: the wrong type, as
    // before.
    let mut c = World::new();
    c.arrive("a", Mode::Limit(2), 100, None);
    let mut v = c.s.view(K, b"x");
    assert_eq!(
        lock::acquire(&mut v, 100, &mut c.p, TERM),
        Err(LockError::WrongMode(WrongMode {
            held: Kind::Counted(2),
            asked: Mode::Exclusive
        }))
    );
    let mut s = MemoryStore::at(T0);
    let plain = BTreeMap::from([(b"f".to_vec(), b"v".to_vec())]);
    s.keys.insert(K.to_vec(), (Value::Hash(plain), None));
    let mut p = process_at(T0);
    assert_eq!(
        lock::acquire(&mut s.view(K, b"x"), 100, &mut p, TERM),
        Err(LockError::LockWrongType)
    );
    let mut idx = SharedIndex::new();
    let mut v = s.view(K, b"x");
    assert_eq!(
        acquire(
            &mut v,
            b"x",
            100,
            KeyMode::Shared,
            None,
            &mut p,
            &mut idx,
            TERM
        ),
        Err(LockError::LockWrongType)
    );
    assert_eq!(check(&mut v, b"x", 1), Err(LockError::LockWrongType));
    // Shared requests against an exclusive key: held.
    let mut w = World::new();
    let Token(t) = w.arrive("x", Mode::Exclusive, 100, None) else {
        panic!()
    };
    assert_eq!(w.arrive("r", Mode::Shared, 100, None), Nil);
    assert!(!w.check("x", t), "CHECK of a shared grant only");
    // An old client's lock (plain SET NX): held for readers too.
    let mut w = World::new();
    w.s.keys
        .insert(K.to_vec(), (Value::Str(b"lua".to_vec()), Some(T0 + 50)));
    assert_eq!(w.arrive("r", Mode::Shared, 100, None), Nil);
    w.advance(50);
    assert!(matches!(w.arrive("r", Mode::Shared, 100, None), Token(_)));
}

#[test]
fn each_holder_expires_at_its_exact_ms() {
    let mut w = World::new();
    let Token(ta) = w.arrive("a", Mode::Shared, 10, None) else {
        panic!()
    };
    let Token(tb) = w.arrive("b", Mode::Shared, 30, None) else {
        panic!()
    };
    w.advance(5);
    let Token(tc) = w.arrive("c", Mode::Shared, 10, None) else {
        panic!()
    };
    assert_eq!(w.s.expire_at(K), Some(T0 + 30), "the latest deadline");
    // a ends at T0 + 10: held at + 9, gone at + 10.
    w.advance(4);
    assert!(w.check("a", ta));
    w.advance(1);
    assert!(!w.check("a", ta));
    assert_eq!(w.view_fields(), ["b", "c"], "its field is gone");
    assert_eq!(w.refresh("a", 10), Ok(false));
    assert_eq!(w.release("a"), Ok(false));
    // c ends at + 15, b at + 30; INFO shows what is left, with its ttl.
    w.advance(5);
    assert!(!w.check("c", tc) && w.check("b", tb));
    let shown = info(&mut w.s.view(K, b"-")).unwrap().unwrap();
    assert_eq!(
        shown,
        (
            KeyMode::Shared,
            vec![HolderInfo {
                owner: b"b".to_vec(),
                ttl_ms: 15,
                token: tb
            }]
        )
    );
    w.advance(14);
    assert!(w.check("b", tb));
    w.advance(1);
    assert!(!w.check("b", tb));
    assert_eq!(w.s.get(K), None);
    assert_eq!(info(&mut w.s.view(K, b"-")), Ok(None));
}

impl World {
    fn view_fields(&self) -> Vec<String> {
        match self.s.get(K) {
            Some(Value::Hash(h)) => h
                .keys()
                .filter(|f| f.as_slice() != MODE_FIELD)
                .map(|f| text(f))
                .collect(),
            _ => vec![],
        }
    }
}

#[test]
fn ended_fields_are_read_as_gone_before_anyone_removes_them() {
    // A replica, or a process that has not touched the key since a restart:
    // the field is still there; CHECK and INFO already say it ended.
    let mut s = MemoryStore::at(T0);
    let fields = BTreeMap::from([
        (MODE_FIELD.to_vec(), b"shared".to_vec()),
        (b"a".to_vec(), format!("{F}:{}", T0 + 10).into_bytes()),
        (b"b".to_vec(), format!("{}:{}", F + 1, T0 + 20).into_bytes()),
    ]);
    s.keys
        .insert(K.to_vec(), (Value::Hash(fields), Some(T0 + 20)));
    s.now = T0 + 10;
    let mut v = s.view(K, b"-");
    assert_eq!(check(&mut v, b"a", F), Ok(false));
    assert_eq!(check(&mut v, b"b", F + 1), Ok(true));
    let (_, live) = info(&mut v).unwrap().unwrap();
    assert_eq!(live.len(), 1);
    // A promoted replica's first command removes it (replicated as HDEL)
    // and rebuilds its index from the hash.
    let mut p = process_at(T0 + 10);
    let mut idx = SharedIndex::new();
    let mut r = rec(&mut s);
    assert_eq!(expire(&mut r, &p, &mut idx), Ok(Some(T0 + 20)));
    assert_eq!(r.log, ["HDEL k a"]);
    assert_eq!((r.full_reads, idx.rebuilds()), (1, 1));
    // Its tokens go on above the replicated ones (the fence key says F+1
    // was issued; a new term's floor is above it anyway).
    let t = acquire(
        &mut r,
        b"c",
        5,
        KeyMode::Shared,
        None,
        &mut p,
        &mut idx,
        TERM,
    );
    assert!(t.unwrap().unwrap() > F + 1);
}

#[test]
fn refresh_and_release_write_one_field() {
    let mut s = MemoryStore::at(T0);
    let mut p = process_at(T0);
    let mut idx = SharedIndex::new();
    let policy = TERM;
    let mut r = rec(&mut s);
    let sh = KeyMode::Shared;
    // Grants: the first creates the key with its mode.
    acquire(&mut r, b"a", 100, sh, None, &mut p, &mut idx, policy).unwrap();
    acquire(&mut r, b"b", 50, sh, None, &mut p, &mut idx, policy).unwrap();
    acquire(&mut r, b"c", 200, sh, None, &mut p, &mut idx, policy).unwrap();
    assert_eq!(
        r.log,
        [
            "SET fence 1700000000000000",
            "HSET k \"\" shared a 0:100",
            "PEXPIREAT k 100",
            "SET fence 1700000000000001",
            "HSET k b 1:50",
            "SET fence 1700000000000002",
            "HSET k c 2:200",
            "PEXPIREAT k 200",
        ]
    );
    r.log.clear();
    // A refresh that leaves the latest deadline alone: one HSET.
    assert_eq!(
        refresh(&mut r, b"b", 150, &mut p, &mut idx, policy),
        Ok(true)
    );
    assert_eq!(r.log, ["HSET k b 1:150"]);
    r.log.clear();
    // One that moves it: HSET + PEXPIREAT.
    assert_eq!(
        refresh(&mut r, b"a", 300, &mut p, &mut idx, policy),
        Ok(true)
    );
    assert_eq!(r.log, ["HSET k a 0:300", "PEXPIREAT k 300"]);
    r.log.clear();
    // Shortening the latest lease moves the key's expiry back to the next.
    assert_eq!(
        refresh(&mut r, b"a", 10, &mut p, &mut idx, policy),
        Ok(true)
    );
    assert_eq!(r.log, ["HSET k a 0:10", "PEXPIREAT k 200"]);
    r.log.clear();
    // A release that is not the latest: one HDEL. The latest: + PEXPIREAT.
    assert_eq!(release(&mut r, b"b", &mut p, &mut idx, policy), Ok(true));
    assert_eq!(r.log, ["HDEL k b"]);
    r.log.clear();
    assert_eq!(release(&mut r, b"c", &mut p, &mut idx, policy), Ok(true));
    assert_eq!(r.log, ["HDEL k c", "PEXPIREAT k 10"]);
    r.log.clear();
    // The last: DEL, never a mode field alone.
    assert_eq!(release(&mut r, b"a", &mut p, &mut idx, policy), Ok(true));
    assert_eq!(r.log, ["DEL k"]);
    r.log.clear();
    // Nothing held: nothing written.
    assert_eq!(release(&mut r, b"a", &mut p, &mut idx, policy), Ok(false));
    assert_eq!(
        refresh(&mut r, b"a", 5, &mut p, &mut idx, policy),
        Ok(false)
    );
    assert!(r.log.is_empty());
    assert_eq!(r.full_reads, 0, "the index answered every time");
    assert!(idx.is_empty(), "the key's entry went with it");
}

#[test]
fn one_holders_cost_does_not_grow_with_the_holders() {
    // At 1, 100 and 10 000 holders: a refresh and a release read one
    // field, never the whole hash, and write one field (plus an expiry
    // when the latest deadline moves).
    for n in [1usize, 100, 10_000] {
        let mut s = MemoryStore::at(T0);
        let mut p = process_at(T0);
        let mut idx = SharedIndex::new();
        let mut r = rec(&mut s);
        let limit = KeyMode::Limit(MAX_LIMIT);
        for i in 0..n {
            let owner = format!("o{i}");
            let ttl = 1_000 + i as i64;
            acquire(
                &mut r,
                owner.as_bytes(),
                ttl,
                limit,
                None,
                &mut p,
                &mut idx,
                TERM,
            )
            .unwrap()
            .unwrap();
        }
        assert_eq!(r.full_reads, 0, "{n}: the index knows every holder");
        r.log.clear();
        let mid = format!("o{}", n / 2);
        assert_eq!(
            refresh(&mut r, mid.as_bytes(), 500, &mut p, &mut idx, TERM),
            Ok(true)
        );
        assert!(r.log.len() <= 2, "{n}: {:?}", r.log);
        r.log.clear();
        assert_eq!(
            release(&mut r, mid.as_bytes(), &mut p, &mut idx, TERM),
            Ok(true)
        );
        assert!(r.log.len() <= 2, "{n}: {:?}", r.log);
        assert_eq!(r.full_reads, 0, "{n}: no full read");
    }
}

#[test]
fn a_waiting_writer_blocks_later_readers() {
    let mut w = World::new();
    w.arrive("r1", Mode::Shared, 20, None);
    assert_eq!(w.arrive("x", Mode::Exclusive, 50, Some(0)), Queued(1));
    // A reader that would fit beside r1 queues behind the writer.
    assert_eq!(w.arrive("r2", Mode::Shared, 20, Some(0)), Queued(2));
    assert_eq!(w.arrive("r3", Mode::Shared, 20, None), Nil, "no barging");
    assert_eq!(w.arrive("r4", Mode::Shared, 20, Some(0)), Queued(3));
    // r1's lease ends at + 20: the writer is granted in that very ms.
    w.advance(19);
    assert!(w.handed.is_empty());
    w.advance(1);
    assert_eq!(w.handed, [(1, F + 1)]);
    // The writer releases: both readers together, in order.
    assert_eq!(w.release("x"), Ok(true));
    assert_eq!(w.handed, [(1, F + 1), (2, F + 2), (3, F + 3)]);
    assert_eq!(w.view_fields(), ["r2", "r4"]);
}

#[test]
fn counted_grants_in_order_as_permits_come_back() {
    let mut w = World::new();
    let l = Mode::Limit(2);
    w.arrive("a", l, 10, None);
    w.arrive("b", l, 30, None);
    for o in ["c", "d", "e"] {
        assert!(matches!(w.arrive(o, l, 100, Some(0)), Queued(_)));
    }
    // a's lease ends: c gets its permit at once.
    w.advance(10);
    assert_eq!(w.handed.iter().map(|h| h.0).collect::<Vec<_>>(), [1]);
    // b releases: d. Then c releases: e.
    w.release("b").unwrap();
    w.release("c").unwrap();
    assert_eq!(w.handed.iter().map(|h| h.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(w.view_fields(), ["d", "e"]);
    // A waiter whose deadline passes leaves; it is never granted late.
    assert_eq!(w.arrive("f", l, 100, Some(5)), Queued(4));
    w.advance(5);
    assert_eq!(w.timed_out, [4]);
    w.release("d").unwrap();
    assert_eq!(w.handed.len(), 3);
}

#[test]
fn tokens_increase_per_name_across_holders_and_modes() {
    let mut w = World::new();
    let mut seen = Vec::new();
    let mut take = |r: Reply| match r {
        Token(t) => seen.push(t),
        other => panic!("{other:?}"),
    };
    take(w.arrive("a", Mode::Shared, 10, None));
    take(w.arrive("b", Mode::Shared, 10, None));
    w.advance(10);
    take(w.arrive("x", Mode::Exclusive, 10, None));
    w.release("x").unwrap();
    // The fence key is lost (FLUSHALL, eviction): the marks keep order.
    w.s.keys.remove(&fence_key(K));
    take(w.arrive("c", Mode::Limit(2), 10, None));
    take(w.arrive("d", Mode::Limit(2), 10, None));
    w.advance(10);
    // A restart: new process, empty index; the fence key carries on.
    w.p = process_at(w.s.now);
    w.idx = SharedIndex::new();
    take(w.arrive("e", Mode::Shared, 10, None));
    assert!(seen.windows(2).all(|p| p[0] < p[1]), "{seen:?}");
    assert_eq!(seen[..4], [F, F + 1, F + 2, F + 3]);
}

#[test]
fn the_fence_key_follows_the_latest_lease() {
    let policy = Policy {
        mode: TokenMode::Term,
        retention_ms: 1_000,
    };
    let mut s = MemoryStore::at(T0);
    let mut p = process_at(T0);
    let mut idx = SharedIndex::new();
    let mut r = rec(&mut s);
    acquire(
        &mut r,
        b"a",
        100,
        KeyMode::Shared,
        None,
        &mut p,
        &mut idx,
        policy,
    )
    .unwrap();
    acquire(
        &mut r,
        b"b",
        300,
        KeyMode::Shared,
        None,
        &mut p,
        &mut idx,
        policy,
    )
    .unwrap();
    acquire(
        &mut r,
        b"c",
        50,
        KeyMode::Shared,
        None,
        &mut p,
        &mut idx,
        policy,
    )
    .unwrap();
    // Each grant sets it a retention after the latest lease, never before.
    assert_eq!(
        r.log
            .iter()
            .filter(|l| l.starts_with("SET fence"))
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect::<Vec<_>>(),
        ["1100", "1300", "1300"]
    );
    r.log.clear();
    // A refresh far past it moves it once, two retentions on.
    refresh(&mut r, b"a", 900, &mut p, &mut idx, policy).unwrap();
    assert_eq!(
        r.log,
        ["HSET k a 0:900", "PEXPIREAT k 900", "PEXPIREAT fence 2900"]
    );
    r.log.clear();
    refresh(&mut r, b"a", 950, &mut p, &mut idx, policy).unwrap();
    assert_eq!(r.log, ["HSET k a 0:950", "PEXPIREAT k 950"]);
    drop(r);
    // Released long before: a retention from the last release.
    let mut r = rec(&mut s);
    release(&mut r, b"b", &mut p, &mut idx, policy).unwrap();
    release(&mut r, b"c", &mut p, &mut idx, policy).unwrap();
    r.log.clear();
    release(&mut r, b"a", &mut p, &mut idx, policy).unwrap();
    assert_eq!(r.log, ["DEL k", "PEXPIREAT fence 1000"]);
}

#[test]
fn an_empty_owner_never_names_the_mode_field() {
    let mut w = World::new();
    w.arrive("a", Mode::Shared, 100, None);
    let before = w.s.keys.clone();
    let empty = Err(LockError::Arg(ArgError::OwnerEmpty));
    let mut v = w.s.view(K, b"");
    let sh = KeyMode::Shared;
    let (p, idx) = (&mut w.p, &mut w.idx);
    assert_eq!(
        acquire(&mut v, b"", 10, sh, None, p, idx, TERM),
        empty.clone().map(|_: ()| None)
    );
    assert_eq!(
        refresh(&mut v, b"", 10, p, idx, TERM),
        empty.clone().map(|_: ()| false)
    );
    assert_eq!(
        release(&mut v, b"", p, idx, TERM),
        empty.clone().map(|_: ()| false)
    );
    assert_eq!(check(&mut v, b"", F), empty.map(|_: ()| false));
    assert_eq!(w.s.keys, before);
}

#[test]
fn an_undo_removes_only_that_grant() {
    let mut s = MemoryStore::at(T0);
    let mut p = process_at(T0);
    let mut idx = SharedIndex::new();
    let mut v = s.view(K, b"-");
    let sh = KeyMode::Shared;
    let t = acquire(&mut v, b"a", 100, sh, None, &mut p, &mut idx, TERM)
        .unwrap()
        .unwrap();
    acquire(&mut v, b"b", 100, sh, None, &mut p, &mut idx, TERM).unwrap();
    // A later grant of the same owner (released and granted again).
    assert_eq!(release(&mut v, b"a", &mut p, &mut idx, TERM), Ok(true));
    let t2 = acquire(&mut v, b"a", 100, sh, None, &mut p, &mut idx, TERM)
        .unwrap()
        .unwrap();
    assert_eq!(undo(&mut v, b"a", t, &mut p, &mut idx, TERM), Ok(false));
    assert_eq!(check(&mut v, b"a", t2), Ok(true));
    assert_eq!(undo(&mut v, b"a", t2, &mut p, &mut idx, TERM), Ok(true));
    assert_eq!(check(&mut v, b"a", t2), Ok(false));
    assert_eq!(check(&mut v, b"b", t + 1), Ok(true));
}

#[test]
fn a_foreign_write_makes_the_index_read_the_key_back() {
    let mut s = MemoryStore::at(T0);
    let mut p = process_at(T0);
    let mut idx = SharedIndex::new();
    let l = KeyMode::Limit(3);
    let mut r = rec(&mut s);
    acquire(&mut r, b"a", 100, l, None, &mut p, &mut idx, TERM).unwrap();
    acquire(&mut r, b"b", 100, l, None, &mut p, &mut idx, TERM).unwrap();
    drop(r);
    // Someone HSETs b's field by hand (a later deadline, same count).
    if let Some((Value::Hash(h), _)) = s.keys.get_mut(K) {
        h.insert(
            b"b".to_vec(),
            format!("{}:{}", F + 1, T0 + 500).into_bytes(),
        );
    }
    let mut r = rec(&mut s);
    // b's refresh sees its field disagree, reads the key back, and goes on.
    assert_eq!(refresh(&mut r, b"b", 50, &mut p, &mut idx, TERM), Ok(true));
    assert_eq!(r.full_reads, 1);
    // (The key's expiry is put back at the latest deadline first.)
    assert_eq!(
        r.log,
        ["PEXPIREAT k 500", "HSET k b 1:50", "PEXPIREAT k 100"]
    );
    // Someone HDELs a's field: the count disagrees; a is not a holder.
    drop(r);
    if let Some((Value::Hash(h), _)) = s.keys.get_mut(K) {
        h.remove(b"a".as_slice());
    }
    let mut r = rec(&mut s);
    assert_eq!(release(&mut r, b"a", &mut p, &mut idx, TERM), Ok(false));
    assert_eq!(r.full_reads, 1);
    // A corrupt field is an error, and changes nothing.
    drop(r);
    if let Some((Value::Hash(h), _)) = s.keys.get_mut(K) {
        h.insert(b"z".to_vec(), b"junk".to_vec());
    }
    let before = s.keys.clone();
    let mut r = rec(&mut s);
    assert_eq!(
        acquire(&mut r, b"c", 100, l, None, &mut p, &mut idx, TERM),
        Err(LockError::HolderCorrupt)
    );
    assert!(r.log.is_empty());
    drop(r);
    assert_eq!(s.keys, before);
}

#[test]
fn the_index_forgets_keys_whose_leases_all_ended() {
    let mut s = MemoryStore::at(T0);
    let mut p = process_at(T0);
    let mut idx = SharedIndex::new();
    for i in 0..3_000u32 {
        let key = format!("k{i}");
        let mut v = s.view(key.as_bytes(), b"-");
        acquire(
            &mut v,
            b"a",
            10,
            KeyMode::Shared,
            None,
            &mut p,
            &mut idx,
            TERM,
        )
        .unwrap();
        s.now += 1;
    }
    // Keys that expired by themselves are swept as the index grows: it
    // never holds more than twice the keys live at the last sweep.
    assert!(idx.len() < 2 * SWEEP_FLOOR, "{}", idx.len());
    idx.sweep(s.now + 10);
    assert!(idx.is_empty());
    idx.forget_db(None);
}

/// Whether holders of these modes may hold at once (owners distinct).
fn compatible(modes: &[Mode]) -> bool {
    if modes.contains(&Mode::Exclusive) {
        return modes.len() == 1;
    }
    match modes.first() {
        Some(Mode::Limit(n)) => {
            modes.iter().all(|m| *m == Mode::Limit(*n)) && modes.len() <= *n as usize
        }
        _ => modes.iter().all(|m| *m == Mode::Shared),
    }
}

/// The brute-force answer for a queue: the longest prefix P such that
/// every prefix of P fits beside `live` with distinct owners.
fn brute_prefix(live: &[(Vec<u8>, Mode)], queue: &[Waiter]) -> usize {
    let mut best = 0;
    for k in 1..=queue.len() {
        let mut owners: Vec<&[u8]> = live.iter().map(|(o, _)| o.as_slice()).collect();
        let mut modes: Vec<Mode> = live.iter().map(|(_, m)| *m).collect();
        for w in &queue[..k] {
            owners.push(&w.owner);
            modes.push(w.mode);
        }
        let distinct = owners.iter().collect::<HashSet<_>>().len() == owners.len();
        if !(distinct && compatible(&modes)) {
            break;
        }
        best = k;
    }
    best
}

/// A grant as the reference remembers it.
#[derive(Debug, Clone)]
struct RefGrant {
    owner: Vec<u8>,
    mode: Mode,
    token: i64,
    deadline: i64,
    released: bool,
}

/// Takes the grants made from the queue since the last call into the
/// reference: each must be live in the keyspace, above every earlier token.
fn absorb(
    w: &World,
    seen: &mut usize,
    reference: &mut Vec<RefGrant>,
    last_token: &mut i64,
    outcomes: &mut BTreeMap<u64, &str>,
) {
    let newly: Vec<(u64, i64)> = w.handed[*seen..].to_vec();
    *seen = w.handed.len();
    let now = w.s.now;
    for (id, token) in newly {
        assert!(token > *last_token, "handoff token went backwards");
        *last_token = token;
        outcomes.insert(id, "granted");
        let found = match w.s.get(K) {
            Some(Value::Hash(h)) => h
                .iter()
                .filter(|(f, _)| f.as_slice() != MODE_FIELD)
                .map(|(f, v)| (f.clone(), Holder::parse(v).unwrap()))
                .find(|(_, h)| h.token == token)
                .map(|(f, h)| {
                    let mode = KeyMode::parse(&w.s.get(K).map_or(vec![], |v| match v {
                        Value::Hash(m) => m[MODE_FIELD].clone(),
                        _ => vec![],
                    }))
                    .unwrap()
                    .mode();
                    (f, h.deadline_ms, mode)
                }),
            Some(Value::Str(o)) => Some((o.clone(), w.s.expire_at(K).unwrap(), Mode::Exclusive)),
            _ => None,
        };
        let (owner, deadline, mode) =
            found.unwrap_or_else(|| panic!("at {now}: waiter {id}'s grant {token} is lost"));
        reference.push(RefGrant {
            owner,
            mode,
            token,
            deadline,
            released: false,
        });
    }
}

#[test]
fn randomized_against_a_brute_force_reference() {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let seed = crate::fuzz::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let owners = ["o0", "o1", "o2", "o3", "o4", "o5", "o6"];
    let (mut grants_total, mut handoffs, mut wrong) = (0, 0, 0);
    for run in 0..crate::fuzz::iters(300) {
        let mut w = World::new();
        // Each run is a reader-writer name or a counted one; requests of
        // the other kind arrive now and then.
        let counted = rng.random_bool(0.5);
        let n = rng.random_range(1..=4u32);
        let mut reference: Vec<RefGrant> = Vec::new();
        let mut outcomes: BTreeMap<u64, &str> = BTreeMap::new();
        let mut last_token = 0;
        let mut seen_handed = 0;
        // The index is read back from the hash only after it was dropped
        // (a restart, a foreign keyspace event): never to repair itself.
        let (mut rebuilds, mut dropped) = (0, false);
        for step in 0..200 {
            let now = w.s.now;
            let op = rng.random_range(0..10);
            let ctx = format!("seed {seed} run {run} step {step} op {op}");
            let live_ref = |r: &[RefGrant], now: i64| -> Vec<(Vec<u8>, Mode)> {
                r.iter()
                    .filter(|g| !g.released && now < g.deadline)
                    .map(|g| (g.owner.clone(), g.mode))
                    .collect()
            };
            let o = owners[rng.random_range(0..owners.len())];
            match op {
                0..=3 => {
                    let mode = match (counted, rng.random_range(0..12)) {
                        (_, 0) => Mode::Limit(n + 1),
                        (true, 1) => Mode::Shared,
                        (true, _) => Mode::Limit(n),
                        (false, 1) => Mode::Limit(n),
                        (false, 2..=4) => Mode::Exclusive,
                        (false, _) => Mode::Shared,
                    };
                    let ttl = rng.random_range(1..40);
                    let wait = match rng.random_range(0..3) {
                        0 => None,
                        1 => Some(0),
                        _ => Some(rng.random_range(1..30)),
                    };
                    let live = live_ref(&reference, now);
                    let queue: Vec<Waiter> = w.queue.iter().cloned().collect();
                    let kind = live
                        .first()
                        .map(|(_, m)| m.kind())
                        .or(queue.first().map(|q| q.mode.kind()));
                    let reply = w.arrive(o, mode, ttl, wait);
                    if kind.is_some_and(|k| k != mode.kind()) {
                        assert!(
                            matches!(reply, Reply::Err(LockError::WrongMode(_))),
                            "{ctx}"
                        );
                        wrong += 1;
                    } else {
                        let fits = queue.is_empty()
                            && brute_prefix(
                                &live,
                                &[Waiter {
                                    id: 0,
                                    owner: o.as_bytes().to_vec(),
                                    mode,
                                    ttl,
                                    deadline: None,
                                }],
                            ) == 1;
                        match reply {
                            Token(t) => {
                                assert!(
                                    fits,
                                    "{ctx}: granted {o} {mode:?} past {live:?} {queue:?}"
                                );
                                assert!(t > last_token, "{ctx}: token went backwards");
                                last_token = t;
                                grants_total += 1;
                                reference.push(RefGrant {
                                    owner: o.as_bytes().to_vec(),
                                    mode,
                                    token: t,
                                    deadline: now + ttl,
                                    released: false,
                                });
                            }
                            Nil => assert!(!fits && wait.is_none(), "{ctx}: {o} {mode:?} refused"),
                            Queued(id) => {
                                assert!(!fits && wait.is_some(), "{ctx}: {o} {mode:?} queued");
                                outcomes.insert(id, "queued");
                            }
                            Reply::Err(e) => panic!("{ctx}: {e}"),
                        }
                    }
                }
                4 => {
                    let ttl = rng.random_range(1..40);
                    let holds = live_ref(&reference, now)
                        .iter()
                        .any(|(h, _)| h == o.as_bytes());
                    let before_handed = w.handed.len();
                    assert_eq!(w.refresh(o, ttl), Ok(holds), "{ctx}: refresh {o}");
                    assert_eq!(w.handed.len(), before_handed, "{ctx}");
                    if holds {
                        let g = reference
                            .iter_mut()
                            .find(|g| g.owner == o.as_bytes() && !g.released && now < g.deadline)
                            .unwrap();
                        g.deadline = now + ttl;
                    }
                }
                5 => {
                    let holds = live_ref(&reference, now)
                        .iter()
                        .any(|(h, _)| h == o.as_bytes());
                    let queue: Vec<Waiter> = w.queue.iter().cloned().collect();
                    let handed_before = w.handed.len();
                    assert_eq!(w.release(o), Ok(holds), "{ctx}: release {o}");
                    if holds {
                        let g = reference
                            .iter_mut()
                            .find(|g| g.owner == o.as_bytes() && !g.released && now < g.deadline)
                            .unwrap();
                        g.released = true;
                    }
                    // The freed share goes to the head at once, and only as
                    // far as the brute force says.
                    let live = live_ref(&reference, now);
                    let want = brute_prefix(&live, &queue);
                    assert_eq!(w.handed.len() - handed_before, want, "{ctx}: handoff");
                }
                6 => {
                    // A restart with persistence, or a promoted replica: a new
                    // process, no index, no waiters (their connections went).
                    w.s.now += rng.random_range(1..3);
                    w.p = process_at(w.s.now);
                    w.idx = SharedIndex::new();
                    (rebuilds, dropped) = (0, true);
                    for q in w.queue.drain(..) {
                        outcomes.insert(q.id, "gone");
                    }
                }
                7 => {
                    // A keyspace event the module did not cause drops the entry.
                    w.idx.forget_db(Some(0));
                    dropped = true;
                }
                _ => {
                    let ms = rng.random_range(1..15);
                    for _ in 0..ms {
                        absorb(
                            &w,
                            &mut seen_handed,
                            &mut reference,
                            &mut last_token,
                            &mut outcomes,
                        );
                        let queue: Vec<Waiter> = w.queue.iter().cloned().collect();
                        let before = w.handed.len();
                        w.advance(1);
                        let now = w.s.now;
                        // Waiters past their deadline leave; the rest get what
                        // fits beside the leases still running, in order.
                        let queue: Vec<Waiter> = queue
                            .into_iter()
                            .filter(|q| q.deadline.is_none_or(|d| d > now))
                            .collect();
                        let live = live_ref(&reference, now);
                        let want = brute_prefix(&live, &queue);
                        let got = &w.handed[before..];
                        assert_eq!(
                            got.len(),
                            want,
                            "seed {seed} run {run}: at {now}: live {live:?} queue {queue:?} store {:?}",
                            w.s.get(K)
                        );
                        for (q, (id, _)) in queue.iter().zip(got) {
                            assert_eq!(q.id, *id);
                        }
                    }
                }
            }
            // Grants made from the queue: into the reference.
            absorb(
                &w,
                &mut seen_handed,
                &mut reference,
                &mut last_token,
                &mut outcomes,
            );
            for id in &w.timed_out {
                outcomes.insert(*id, "timed out");
            }
            // At every instant: the keyspace holds exactly the reference's
            // live grants, which never overlap wrongly.
            let now = w.s.now;
            let mut expected: Vec<(Vec<u8>, i64, i64, Mode)> = reference
                .iter()
                .filter(|g| !g.released && now < g.deadline)
                .map(|g| (g.owner.clone(), g.token, g.deadline, g.mode))
                .collect();
            expected.sort();
            let mut actual = w.live();
            actual.sort();
            assert_eq!(actual, expected, "{ctx}: live holders");
            let modes: Vec<Mode> = actual.iter().map(|a| a.3).collect();
            assert!(compatible(&modes), "{ctx}: {actual:?}");
            w.check_layout();
            if w.idx.rebuilds() > rebuilds {
                assert!(dropped, "{ctx}: the index disagreed with the hash");
                (rebuilds, dropped) = (w.idx.rebuilds(), false);
            }
            // Each waiter: queued, or ended exactly one way.
            for q in &w.queue {
                assert_eq!(outcomes.get(&q.id), Some(&"queued"), "{ctx}");
            }
        }
        // Nothing lost: with no more arrivals, every waiter ends (each
        // holds at most 40 ms).
        for _ in 0..=w.queue.len() {
            w.advance(41);
        }
        for &(id, _) in &w.handed[seen_handed..] {
            outcomes.insert(id, "granted");
        }
        for id in &w.timed_out {
            outcomes.insert(*id, "timed out");
        }
        assert!(
            w.queue.is_empty(),
            "seed {seed} run {run}: {:?} store {:?} at {}",
            w.queue,
            w.s.keys.get(K),
            w.s.now
        );
        assert!(
            outcomes.values().all(|o| *o != "queued"),
            "seed {seed} run {run}"
        );
        let ids: Vec<u64> = w
            .handed
            .iter()
            .map(|h| h.0)
            .chain(w.timed_out.iter().copied())
            .collect();
        let unique: HashSet<u64> = ids.iter().copied().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "seed {seed} run {run}: a waiter ended twice"
        );
        assert_eq!(w.s.get(K), None);
        handoffs += w.handed.len();
        grants_total += w.handed.len();
    }
    println!("{grants_total} grants, {handoffs} from the queue, {wrong} wrong modes");
    assert!(handoffs > 0 && wrong > 0);
}
