//! Shared (reader-writer) and counted locks: many readers beside one
//! writer, or at most N holders, on the same fenced, FIFO lock names.
//!
//! This module is the design and its pure model, which the server module
//! runs over real keys. Everything here is written against [`SharedStore`]
//! (as the exclusive lock is against [`crate::lock::Store`]), implemented
//! here over the in-memory keyspace [`crate::lock::MemoryStore`] with its
//! settable clock.
//!
//! # Commands
//!
//! ```text
//! SPACELOCK.ACQUIRE key owner ttl_ms [WAIT timeout_ms]            exclusive, as today
//! SPACELOCK.ACQUIRE key owner ttl_ms SHARED [WAIT timeout_ms]     one of many readers
//! SPACELOCK.ACQUIRE key owner ttl_ms LIMIT n [WAIT timeout_ms]    one of at most n holders
//! SPACELOCK.REFRESH key owner ttl_ms          one holder: 1 | 0
//! SPACELOCK.RELEASE key owner                 one holder: 1 | 0
//! SPACELOCK.CHECK   key owner token           1 only for that holder's current grant
//! SPACELOCK.INFO    key                       the holders (owner, ttl_ms, token) and the queue
//! ```
//!
//! * The options after `ttl_ms` come in any order, each at most once
//!   ([`parse_acquire_options`]); `SHARED` with `LIMIT` is a syntax error;
//!   `LIMIT` is an integer from 1 to [`MAX_LIMIT`].
//! * ACQUIRE replies a fencing token (granted), nil (held, or others are
//!   queued ahead), or blocks with `WAIT`, exactly as the exclusive form.
//!   A mode that does not fit the lock is an error that changes nothing:
//!   `-WRONGMODE the lock is counted (LIMIT 3); acquire it with LIMIT 3, not SHARED`
//!   ([`WrongMode`]).
//! * An owner holds at most one share or permit of a key: its second
//!   ACQUIRE is refused (nil), as an exclusive holder's is, and a WAIT by a
//!   holder waits until its own share ends.
//! * REFRESH, RELEASE and CHECK take no mode: the owner names the holder,
//!   and the key's type names the layout (a string: the exclusive code,
//!   unchanged; a spacelock hash: this module).
//! * INFO on a string key replies today's six-field map, byte for byte. On
//!   a shared or counted key it replies a map: `mode` (`shared` or
//!   `limit`), `limit` (n, or 0 for shared), `holders` (an array of maps
//!   `owner`, `ttl_ms`, `token`, in token order, live holders only),
//!   `queue` (an array of `[owner, mode]` in arrival order; `mode` is
//!   `exclusive`, `shared` or `limit`), `waiters`, `term_start_ms`,
//!   `token_floor`.
//!
//! # Layout
//!
//! A lock name is one key, whatever its mode, so the modes exclude each
//! other by the key's type, with no second key to keep in step:
//!
//! * **exclusive**: today's string key, `key → owner`, `PEXPIREAT` at the
//!   lease's end; untouched by this design.
//! * **shared or counted**: a hash at the same name:
//!
//!   ```text
//!   key  ""      → "shared" | "limit:<n>"        the mode (MODE_FIELD)
//!        <owner> → "<token>:<deadline_ms>"       one field per holder
//!   PEXPIREAT key <the latest holder deadline>
//!   ```
//!
//!   Owners are never empty, so the empty field never names a holder. The
//!   hash holds at least one holder whenever it exists: the last holder
//!   leaving deletes the key (`DEL`), never leaves a mode alone.
//! * the fence key (`spacelock:fence:{T}:<key>`) is the name's, shared by
//!   every mode.
//!
//! Why a hash at the lock's own name, and why these fields:
//!
//! * **(a) Old clients fail cleanly.** The Lua-based client's `SET key
//!   owner PX ttl NX` replies nil on any existing key, whatever its type:
//!   to it, a shared key is a held lock, and it retries until the key is
//!   gone. Its refresh and release scripts start with `GET key`, which
//!   fails with `WRONGTYPE Operation against a key holding the wrong kind
//!   of value` (as the script error `… script: <sha>, on @user_script:1`,
//!   checked on Redis 7.0.15): nothing is deleted or extended. It cannot
//!   queue, so a steady stream of readers can keep it out: it is outside
//!   the FIFO (as it is for exclusive WAIT today).
//! * **(b) Replicas and AOF need no module.** Every effect is a core
//!   command with absolute times (table below). A replica without the
//!   module (Redis 7.0 has no per-field expiry) holds the same hash: the
//!   mode field, one field per holder with its token and absolute
//!   deadline, and the key's `PEXPIRETIME` at the latest deadline. A
//!   holder whose lease ended stays a field there until the primary's
//!   `HDEL` arrives (the primary sends it at the deadline when clients wait
//!   on the key, else with the next command on the key); if the primary is
//!   gone, until the key itself expires at the latest deadline. So a reader
//!   of the raw hash must compare each deadline with the clock (the module
//!   does); nothing is ever removed early, and nothing outlives the latest
//!   lease.
//! * **(c) A promoted replica with the module expires every holder on
//!   time** from what it replicated: a holder is live while `now <
//!   deadline_ms` (its own field says so, [`Holder::live_at`]), and every
//!   command reads it that way, CHECK included, from the first
//!   millisecond, with no state carried over. The in-process index
//!   ([`SharedIndex`]) is only a cache of the hash: the first write command
//!   on the key after a restart or promotion rebuilds it in O(holders) and
//!   removes (and replicates the removal of) the fields whose lease ended;
//!   the queue's expiry timer is armed from it at the earliest deadline. A
//!   key nobody touches goes at its own `PEXPIREAT`.
//! * **(d) The mode is recorded** in the hash itself (the empty field), so
//!   a request of another mode on an existing key is a clear error
//!   ([`WrongMode`]), and it reaches replicas and AOF with the holders.
//! * **(e) The exclusive form is unchanged**: on a missing or string key
//!   it runs the same code and replies the same bytes. The only new reply
//!   is on a spacelock hash, which did not exist before: exclusive ACQUIRE
//!   sees a shared key as held (nil, or it queues with WAIT) and a counted
//!   key as the wrong mode; any other hash is still `WRONGTYPE`
//!   ([`exclusive_probe`]).
//! * **Why not a per-field expiry** (`HPEXPIREAT`, Redis 7.4, Valkey 9.0):
//!   an AOF or a replica on Redis 7.0 could not replay it. The deadline in
//!   the value works on every server.
//! * The token lives in the field, next to its holder, so CHECK needs no
//!   ledger (unlike the exclusive key, whose value is only the owner) and
//!   answers from replicated data on a replica or after a restart.
//!
//! # Replication
//!
//! | event | propagated as (one `MULTI/EXEC`) |
//! |---|---|
//! | a grant (ACQUIRE or a WAIT handoff) | `SET <fence> <token> [PXAT <abs>]`, `HSET key "" <mode> <owner> <token>:<deadline>` (the mode field only when the key is created), `PEXPIREAT key <latest>` when the latest deadline moved |
//! | REFRESH (1) | `HSET key <owner> <token>:<deadline>`, `PEXPIREAT key <latest>` when the latest deadline moved, `PEXPIREAT <fence> <abs>` at most once per retention |
//! | RELEASE (1), an ended lease removed, a WAIT grant undone | `HDEL key <owner>` and `PEXPIREAT key <latest>` when it was the latest; `DEL key` for the last holder |
//! | nil, 0, errors, CHECK, INFO | nothing |
//!
//! # Tokens
//!
//! Every grant, in every mode, takes the name's next token by the rule of
//! [`crate::tokens`] (`max(fence + 1, floor, guard + 1)`) and writes it to
//! the name's fence key, so tokens increase across the holders of a name
//! and across modes, and never go backwards (restart, `FLUSHALL`,
//! failover), exactly as for exclusive grants. The fence key expires a
//! retention after the latest lease.
//!
//! # Fairness
//!
//! One FIFO queue per key, in arrival order, whatever the modes. [`decide`]
//! grants the longest prefix of the queue that fits beside the holders:
//!
//! * a queued exclusive request waits for every holder to leave, and every
//!   later request (shared ones too) waits behind it: readers never starve
//!   a writer;
//! * shared requests at the head are granted together while no exclusive
//!   holder or request is ahead of them;
//! * a counted key grants its head while fewer than n hold it, in order;
//! * a request from an owner that already holds the key, or is granted in
//!   the same step, stops the prefix (it waits for its own share to end);
//! * nobody barges: while anyone is queued, a new request is not granted
//!   ([`admit`]), even if it would fit.
//!
//! A lease that ends frees its share at once: the queue's expiry timer is
//! armed at the earliest holder deadline (from the index), removes the
//! ended holders and grants the head in the same step.
//!
//! A name's queue has a kind (reader-writer, or counted with its n): a
//! request of another kind is refused with [`WrongMode`] while anyone
//! holds or waits.
//!
//! # Cost
//!
//! REFRESH and RELEASE of one holder are O(log holders): the index keeps,
//! per key, its holders by owner (a hash map) and by (deadline, token) (a
//! B-tree), so the latest and earliest deadlines are at the ends of the
//! tree. The keyspace write is one `HSET` or `HDEL` of one field, plus a
//! `PEXPIREAT` only when the latest deadline changes. Before it trusts its
//! cache, each command compares it with the hash in O(1) (the holder count
//! and the key's expiry; the caller's own field); the module also drops a
//! key's entry on any keyspace event it did not cause. Entries of keys
//! whose every lease has ended are swept as the index grows (as the
//! ledger's are).
//!
//! # What the WAIT handoff needs
//!
//! A waiter carries its [`Mode`]; a queue its [`Kind`]. `settle` asks
//! [`grantable`] instead of "is the key free", and grants that many heads,
//! each through [`acquire`] (or `lock::acquire` for an exclusive one); the
//! undo of a grant nobody received is [`undo`] (an `HDEL` only if the field
//! still holds that token), and whether a grant still stands when its reply
//! is sent is [`check`]: so a disconnect or a refused `CLIENT UNBLOCK`
//! racing a grant never leaves a share with a client told otherwise. The
//! rest of the handoff (grants written by the pending timer, deadlines
//! judged when the lock came free, the reply decided again when it is
//! sent) is unchanged.
//!
//! # Open questions
//!
//! (How the server module settles each: `docs/architecture.md`, "Shared
//! and counted locks".)
//!
//! * Ended holders' fields go at the next command on the key, at the
//!   queue's expiry timer, or with the key at the latest deadline. Without
//!   waiters, a key with one long lease and many crashed short ones keeps
//!   their fields (never counted, never reported) until then; an expiry
//!   timer per shared key would remove them at their deadline, for one
//!   timer per key.
//! * INFO on an exclusive key keeps its six fields, so it cannot list a
//!   queue of mixed modes; `SPACELOCK.INFO key QUEUE` could.
//! * Exclusive on a counted key is `WRONGMODE`; it could instead mean "all
//!   n permits". A counted key's n can change only while nobody holds or
//!   waits.
//! * Up to `hash-max-listpack-entries` (128) holders the server stores the
//!   hash as a listpack, where its own `HSET`/`HDEL` scan the fields
//!   (bounded by 128); beyond it a hash table. The benchmark at 1, 100 and
//!   10 000 holders shows both.
//!
//! # Memory
//!
//! Per holder: one hash field (owner, about 30 bytes of value) and, in the
//! index, one owner allocation shared by two map entries. When the last
//! holder leaves, the key is deleted and its index entry dropped; a key
//! whose leases all ended without a release expires by itself at the
//! latest deadline, and its index entry is swept. What remains is the
//! fence key, for the usual retention.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use hashbrown::HashTable;

use crate::args::{expire_at, parse_i64, parse_timeout, ArgError};
use crate::error::LockError;
use crate::ledger::Name;
use crate::lock::{MemoryView, Policy, Probe, Process, Store, Value};

/// The field of a shared or counted lock's hash that records its mode.
/// Owners are never empty, so it never names a holder.
pub const MODE_FIELD: &[u8] = b"";

/// The largest `LIMIT`.
pub const MAX_LIMIT: u32 = 1_000_000;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Mode {
    /// The only holder (today's lock).
    Exclusive,
    /// One of many readers; no exclusive holder meanwhile.
    Shared,
    /// One of at most `n` holders.
    Limit(u32),
}

impl Mode {
    /// The kind of lock this mode belongs to.
    pub fn kind(self) -> Kind {
        match self {
            Mode::Exclusive | Mode::Shared => Kind::ReadWrite,
            Mode::Limit(n) => Kind::Counted(n),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Exclusive => f.write_str("exclusive"),
            Mode::Shared => f.write_str("SHARED"),
            Mode::Limit(n) => write!(f, "LIMIT {n}"),
        }
    }
}

/// The kind of lock a name is while it is held or waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// Exclusive and shared holders (a reader-writer lock).
    ReadWrite,
    /// At most `n` holders.
    Counted(u32),
}

/// The mode a shared or counted key records in its [`MODE_FIELD`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyMode {
    /// Readers: `"shared"`.
    Shared,
    /// At most `n` holders: `"limit:<n>"`.
    Limit(u32),
}

impl KeyMode {
    /// The key mode of a request (`None` for exclusive: a string key).
    pub fn of(mode: Mode) -> Option<KeyMode> {
        match mode {
            Mode::Exclusive => None,
            Mode::Shared => Some(KeyMode::Shared),
            Mode::Limit(n) => Some(KeyMode::Limit(n)),
        }
    }

    /// The request mode it records.
    pub fn mode(self) -> Mode {
        match self {
            KeyMode::Shared => Mode::Shared,
            KeyMode::Limit(n) => Mode::Limit(n),
        }
    }

    /// The kind of lock it is.
    pub fn kind(self) -> Kind {
        self.mode().kind()
    }

    /// The mode field's value.
    pub fn encode(self) -> Vec<u8> {
        match self {
            KeyMode::Shared => b"shared".to_vec(),
            KeyMode::Limit(n) => format!("limit:{n}").into_bytes(),
        }
    }

    /// Reads a mode field's value (`None`: not one of ours).
    pub fn parse(bytes: &[u8]) -> Option<KeyMode> {
        if bytes == b"shared" {
            return Some(KeyMode::Shared);
        }
        let n = parse_i64(bytes.strip_prefix(b"limit:")?)?;
        u32::try_from(n)
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .map(KeyMode::Limit)
    }
}

/// A request whose mode does not fit the lock: the error `WRONGMODE …`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrongMode {
    /// What the lock is (its holders', or else its queue's, kind).
    pub held: Kind,
    /// What the request asked for.
    pub asked: Mode,
}

impl fmt::Display for WrongMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.held {
            Kind::Counted(n) => write!(
                f,
                "WRONGMODE the lock is counted (LIMIT {n}); acquire it with LIMIT {n}, not {}",
                self.asked
            ),
            Kind::ReadWrite => write!(
                f,
                "WRONGMODE the lock is a reader-writer lock (exclusive or SHARED), not {}",
                self.asked
            ),
        }
    }
}

impl From<WrongMode> for LockError {
    fn from(w: WrongMode) -> Self {
        LockError::WrongMode(w)
    }
}

/// Parses the options after `key owner ttl_ms` of ACQUIRE: `SHARED`,
/// `LIMIT n` and `WAIT timeout_ms`, case-insensitive, in any order, each at
/// most once. Without `SHARED` or `LIMIT` the mode is exclusive, and the
/// errors are those of [`crate::handoff::parse_options`].
///
/// # Errors
///
/// An [`ArgError`] naming what is wrong; nothing has been looked at yet.
///
/// # Examples
///
/// ```
/// use spacelock_core::shared::{parse_acquire_options, Mode};
///
/// let args: [&[u8]; 4] = [b"LIMIT", b"3", b"WAIT", b"500"];
/// assert_eq!(parse_acquire_options(&args), Ok((Mode::Limit(3), Some(500))));
/// assert_eq!(parse_acquire_options(&[]), Ok((Mode::Exclusive, None)));
/// ```
pub fn parse_acquire_options(rest: &[&[u8]]) -> Result<(Mode, Option<i64>), ArgError> {
    let (mut mode, mut wait) = (None, None);
    let mut it = rest.iter();
    while let Some(opt) = it.next() {
        if opt.eq_ignore_ascii_case(b"WAIT") {
            if wait.is_some() {
                return Err(ArgError::RepeatedOption);
            }
            let value = it.next().ok_or(ArgError::MissingValue)?;
            wait = Some(parse_timeout(value)?);
            continue;
        }
        let next = if opt.eq_ignore_ascii_case(b"SHARED") {
            Mode::Shared
        } else if opt.eq_ignore_ascii_case(b"LIMIT") {
            let value = it.next().ok_or(ArgError::MissingValue)?;
            let n = parse_i64(value)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or(ArgError::LimitInvalid(MAX_LIMIT))?;
            Mode::Limit(n)
        } else {
            return Err(ArgError::UnknownOption);
        };
        match mode {
            None => mode = Some(next),
            Some(m) if std::mem::discriminant(&m) == std::mem::discriminant(&next) => {
                return Err(ArgError::RepeatedOption)
            }
            Some(_) => return Err(ArgError::ModeConflict),
        }
    }
    Ok((mode.unwrap_or(Mode::Exclusive), wait))
}

/// One holder of a shared or counted key, as its field stores it:
/// `"<token>:<deadline_ms>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// The grant's fencing token.
    pub token: i64,
    /// When its lease ends (ms since the epoch, absolute).
    pub deadline_ms: i64,
}

impl Holder {
    /// The field's value.
    pub fn encode(self) -> Vec<u8> {
        format!("{}:{}", self.token, self.deadline_ms).into_bytes()
    }

    /// Reads a holder field's value.
    ///
    /// # Errors
    ///
    /// [`LockError::HolderCorrupt`] unless it is `token:deadline_ms`, two
    /// canonical decimals, the token ≥ 0.
    pub fn parse(bytes: &[u8]) -> Result<Holder, LockError> {
        let at = bytes.iter().position(|&b| b == b':');
        let parsed = at.and_then(|at| {
            let token = parse_i64(&bytes[..at]).filter(|&t| t >= 0)?;
            let deadline_ms = parse_i64(&bytes[at + 1..])?;
            Some(Holder { token, deadline_ms })
        });
        parsed.ok_or(LockError::HolderCorrupt)
    }

    /// Whether the lease still holds at `now_ms`: while `now_ms <
    /// deadline_ms`, as an exclusive lease's key in
    /// [`crate::lock::MemoryStore`]. The key's own `PEXPIREAT` is the
    /// latest deadline, and a server keeps a key while `now <= expiry`, so
    /// the key never ends before its last holder (it outlives it by at most
    /// a millisecond, until the next command on it deletes it).
    pub fn live_at(self, now_ms: i64) -> bool {
        now_ms < self.deadline_ms
    }
}

/// What a lock key holds, as the shared path sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// No key (or expired).
    Missing,
    /// A string: an exclusive lock (the module's, or an old client's).
    Exclusive,
    /// A spacelock hash with its recorded mode.
    Hash(KeyMode),
    /// Anything else (another type, a hash without our mode field).
    Foreign,
}

/// One lock key of a shared or counted lock, as the operations here need
/// it. Owners are arguments (a sweep removes other holders' fields).
///
/// Reads come first and may fail; writes fail only if the server refuses
/// them (see [`crate::lock::Store`]).
pub trait SharedStore {
    /// Current time in ms since the Unix epoch (the server's wall clock).
    fn now_ms(&self) -> i64;
    /// The database of the lock key.
    fn db(&self) -> i32;
    /// The lock key's name.
    fn key(&self) -> &[u8];
    /// What the key holds.
    fn layout(&mut self) -> Layout;
    /// `owner`'s holder field (`HGET`), if any.
    ///
    /// # Errors
    ///
    /// [`LockError::HolderCorrupt`] when it is not a holder value.
    fn holder(&mut self, owner: &[u8]) -> Result<Option<Holder>, LockError>;
    /// Every holder field (`HGETALL` without the mode field), in any order.
    ///
    /// # Errors
    ///
    /// [`LockError::HolderCorrupt`] when one is not a holder value.
    fn holders(&mut self) -> Result<Vec<(Vec<u8>, Holder)>, LockError>;
    /// The number of holder fields (`HLEN` - 1).
    fn holder_count(&mut self) -> usize;
    /// The key's absolute expiry (`PEXPIRETIME`).
    fn expire_at(&mut self) -> Option<i64>;
    /// The last token issued for this lock name (0 if none yet).
    ///
    /// # Errors
    ///
    /// As [`crate::lock::Store::last_token`].
    fn last_token(&mut self) -> Result<i64, LockError>;
    /// The fence key's expiry: `Some(None)` when it has none, `None` when
    /// it does not exist.
    fn fence_expiry(&mut self) -> Option<Option<i64>>;
    /// Sets the fence counter to `token`, expiring at `until_ms` (`None`:
    /// kept).
    ///
    /// # Errors
    ///
    /// [`LockError::WriteFailed`] if the server refused it.
    fn write_fence(&mut self, token: i64, until_ms: Option<i64>) -> Result<(), LockError>;
    /// Moves an existing fence key's expiry (`None`: keeps it forever).
    fn extend_fence(&mut self, until_ms: Option<i64>);
    /// Writes `owner`'s field (`HSET`); with `create`, the key is missing
    /// and is created with that mode field first.
    ///
    /// # Errors
    ///
    /// [`LockError::WriteFailed`] if the server refused it.
    fn put(
        &mut self,
        create: Option<KeyMode>,
        owner: &[u8],
        holder: Holder,
    ) -> Result<(), LockError>;
    /// Removes `owner`'s field (`HDEL`); never the last one (see
    /// [`delete`](Self::delete)).
    fn remove_holder(&mut self, owner: &[u8]);
    /// Moves the key's expiry (`PEXPIREAT`).
    fn set_expire_at(&mut self, at_ms: i64);
    /// Deletes the key (`DEL`), never the fence key.
    fn delete(&mut self);
}

/// What exclusive ACQUIRE sees in a hash whose mode field reads `mode`
/// (the exclusive [`Store::probe`] of a hash): a
/// shared key is held by others (nil, or the client queues); a counted key
/// is the wrong mode; any other hash is the wrong type, as before.
/// REFRESH, RELEASE and CHECK send a spacelock hash to this module's
/// [`refresh`], [`release`] and [`check`] instead.
///
/// # Errors
///
/// [`LockError::WrongMode`] or [`LockError::LockWrongType`].
pub fn exclusive_probe(mode: Option<KeyMode>) -> Result<Probe, LockError> {
    match mode {
        Some(KeyMode::Shared) => Ok(Probe::Other),
        Some(KeyMode::Limit(n)) => Err(WrongMode {
            held: Kind::Counted(n),
            asked: Mode::Exclusive,
        }
        .into()),
        None => Err(LockError::LockWrongType),
    }
}

/// The holders of one shared or counted key, in process memory: by owner,
/// and by (deadline, token). A cache of the hash, rebuilt from it when in
/// doubt.
#[derive(Debug, Clone)]
pub struct Holders {
    mode: KeyMode,
    by_owner: HashMap<Arc<[u8]>, Holder>,
    by_deadline: BTreeMap<(i64, i64), Arc<[u8]>>,
    /// The fence key's expiry as last written or read (`None`: unknown).
    fence_until: Option<Option<i64>>,
}

impl Holders {
    /// No holders yet, of a key of `mode`.
    pub fn new(mode: KeyMode) -> Self {
        Holders {
            mode,
            by_owner: HashMap::new(),
            by_deadline: BTreeMap::new(),
            fence_until: None,
        }
    }

    /// The key's mode.
    pub fn mode(&self) -> KeyMode {
        self.mode
    }

    /// Holders recorded.
    pub fn len(&self) -> usize {
        self.by_owner.len()
    }

    /// Whether none is recorded.
    pub fn is_empty(&self) -> bool {
        self.by_owner.is_empty()
    }

    /// `owner`'s grant.
    pub fn get(&self, owner: &[u8]) -> Option<Holder> {
        self.by_owner.get(owner).copied()
    }

    /// Records `owner`'s grant, replacing its earlier one. O(log n).
    pub fn insert(&mut self, owner: &[u8], holder: Holder) {
        if let Some((key, old)) = self.by_owner.get_key_value(owner) {
            let key = key.clone();
            self.by_deadline.remove(&(old.deadline_ms, old.token));
            self.by_deadline
                .insert((holder.deadline_ms, holder.token), key.clone());
            self.by_owner.insert(key, holder);
        } else {
            let key: Arc<[u8]> = owner.into();
            self.by_deadline
                .insert((holder.deadline_ms, holder.token), key.clone());
            self.by_owner.insert(key, holder);
        }
    }

    /// Forgets `owner`'s grant. O(log n).
    pub fn remove(&mut self, owner: &[u8]) -> Option<Holder> {
        let old = self.by_owner.remove(owner)?;
        self.by_deadline.remove(&(old.deadline_ms, old.token));
        Some(old)
    }

    /// The earliest deadline: when the next lease ends.
    pub fn earliest(&self) -> Option<i64> {
        self.by_deadline.first_key_value().map(|((d, _), _)| *d)
    }

    /// The latest deadline: the key's expiry.
    pub fn latest(&self) -> Option<i64> {
        self.by_deadline.last_key_value().map(|((d, _), _)| *d)
    }

    /// The owners whose lease has ended by `now_ms`, earliest first.
    /// O(log n + ended).
    pub fn ended(&self, now_ms: i64) -> Vec<Arc<[u8]>> {
        self.by_deadline
            .range(..(now_ms.saturating_add(1), i64::MIN))
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// The holders in token order (for tests and INFO-like views).
    pub fn by_token(&self) -> Vec<(&[u8], Holder)> {
        let mut all: Vec<(&[u8], Holder)> =
            self.by_owner.iter().map(|(o, h)| (&o[..], *h)).collect();
        all.sort_by_key(|(_, h)| h.token);
        all
    }
}

/// One entry of the index: the key shares the entry's allocation.
#[derive(Debug)]
struct Entry {
    hash: u64,
    db: i32,
    key: Box<[u8]>,
    holders: Holders,
}

impl Entry {
    fn is(&self, name: &Name<'_>) -> bool {
        self.hash == name.hash && self.db == name.db && &*self.key == name.key
    }
}

/// Below this many keys the index is never swept.
const SWEEP_FLOOR: usize = 1024;

/// The holders of every shared or counted key the process touched, by
/// (database, key): process memory, like the ledger. Lost on a restart
/// (rebuilt from the hash by the next command on each key), dropped per
/// key on a keyspace event the module did not cause, per database on
/// `FLUSHDB`, entirely on `FLUSHALL`, a full resync or an RDB load.
#[derive(Debug)]
pub struct SharedIndex {
    table: HashTable<Entry>,
    sweep_at: usize,
    rebuilds: u64,
}

impl Default for SharedIndex {
    fn default() -> Self {
        SharedIndex::new()
    }
}

impl SharedIndex {
    /// An empty index.
    pub const fn new() -> Self {
        SharedIndex {
            table: HashTable::new(),
            sweep_at: SWEEP_FLOOR,
            rebuilds: 0,
        }
    }

    /// Keys recorded.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no key is recorded.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// How many times a key's holders were read back from its hash.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    /// The holders recorded for `name`.
    pub fn get(&self, name: &Name<'_>) -> Option<&Holders> {
        self.table
            .find(name.hash, |e| e.is(name))
            .map(|e| &e.holders)
    }

    fn get_mut(&mut self, name: &Name<'_>) -> Option<&mut Holders> {
        self.table
            .find_mut(name.hash, |e| e.is(name))
            .map(|e| &mut e.holders)
    }

    fn insert(&mut self, name: &Name<'_>, holders: Holders, now_ms: i64) -> &mut Holders {
        self.forget(name);
        if self.table.len() >= self.sweep_at {
            self.sweep(now_ms);
        }
        let entry = Entry {
            hash: name.hash,
            db: name.db,
            key: name.key.into(),
            holders,
        };
        let e = self.table.insert_unique(name.hash, entry, |e| e.hash);
        &mut e.into_mut().holders
    }

    /// Forgets `name` (its key was deleted, or changed by someone else).
    pub fn forget(&mut self, name: &Name<'_>) {
        if let Ok(e) = self.table.find_entry(name.hash, |e| e.is(name)) {
            e.remove();
        }
    }

    /// Forgets database `db` (`FLUSHDB`), or all (`None`: `FLUSHALL`, a
    /// full resync, an RDB load).
    pub fn forget_db(&mut self, db: Option<i32>) {
        match db {
            Some(db) => self.table.retain(|e| e.db != db),
            None => *self = SharedIndex::new(),
        }
    }

    /// Drops the keys whose every lease has ended by `now_ms`.
    pub fn sweep(&mut self, now_ms: i64) {
        self.table
            .retain(|e| e.holders.latest().is_some_and(|d| d > now_ms));
        let (len, cap) = (self.table.len(), self.table.capacity());
        if cap > 64 && len * 4 < cap {
            self.table.shrink_to(len * 2, |e| e.hash);
        }
        self.sweep_at = (2 * self.table.len()).max(SWEEP_FLOOR);
    }
}

/// An owner is never empty (the commands check it first): the empty field
/// is the mode's.
fn no_mode_field(owner: &[u8]) -> Result<(), LockError> {
    if owner == MODE_FIELD {
        return Err(ArgError::OwnerEmpty.into());
    }
    Ok(())
}

/// The holders of the key `store` views (mode `mode`), from the index if it
/// agrees with the hash in O(1) (holder count, key expiry), else read back.
fn holders_of<'i, S: SharedStore>(
    store: &mut S,
    index: &'i mut SharedIndex,
    hash: u64,
    mode: KeyMode,
) -> Result<&'i mut Holders, LockError> {
    let (len, expiry, now) = (store.holder_count(), store.expire_at(), store.now_ms());
    let name = Name {
        db: store.db(),
        key: store.key(),
        hash,
    };
    let agrees = index
        .get(&name)
        .is_some_and(|h| h.mode == mode && h.len() == len && h.latest() == expiry);
    if agrees {
        return index.get_mut(&name).ok_or(LockError::HolderCorrupt);
    }
    let mut rebuilt = Holders::new(mode);
    for (owner, holder) in store.holders()? {
        rebuilt.insert(&owner, holder);
    }
    index.rebuilds += 1;
    if let Some(latest) = rebuilt.latest().filter(|&l| Some(l) != expiry) {
        // Someone moved the key's expiry: it is the latest deadline again.
        store.set_expire_at(latest);
    }
    let name = Name {
        db: store.db(),
        key: store.key(),
        hash,
    };
    Ok(index.insert(&name, rebuilt, now))
}

/// Removes the holders whose lease has ended by `now_ms`: `HDEL`s, and a
/// `PEXPIREAT` when the latest one left, or one `DEL` when none is left
/// (then `true`: the caller forgets the key).
fn sweep<S: SharedStore>(store: &mut S, holders: &mut Holders, now_ms: i64) -> bool {
    let ended = holders.ended(now_ms);
    if ended.is_empty() {
        return false;
    }
    if ended.len() == holders.len() {
        store.delete();
        return true;
    }
    let before = holders.latest();
    for owner in ended {
        holders.remove(&owner);
        store.remove_holder(&owner);
    }
    if let Some(latest) = holders.latest().filter(|&l| Some(l) != before) {
        store.set_expire_at(latest);
    }
    false
}

/// Who holds a key, for [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Nobody.
    Free,
    /// One exclusive holder.
    Exclusive,
    /// This many readers.
    Shared(usize),
    /// `holders` of at most `limit`.
    Counted {
        /// The key's n.
        limit: u32,
        /// Holders now.
        holders: usize,
    },
}

impl Held {
    /// The kind of lock held (`None` when free).
    pub fn kind(self) -> Option<Kind> {
        match self {
            Held::Free => None,
            Held::Exclusive | Held::Shared(_) => Some(Kind::ReadWrite),
            Held::Counted { limit, .. } => Some(Kind::Counted(limit)),
        }
    }
}

/// A request in a queue, for [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want<'a> {
    /// What it asks for.
    pub mode: Mode,
    /// Its owner.
    pub owner: &'a [u8],
}

/// How many requests at the head of `queue` (in arrival order) are granted
/// now beside the holders `held`: the longest prefix that fits. A request
/// whose owner already holds the key (`is_holder`), or appears earlier in
/// the prefix, ends it; so does the first that does not fit, whatever
/// follows it (no request overtakes another).
///
/// # Examples
///
/// ```
/// use spacelock_core::shared::{decide, Held, Mode, Want};
///
/// let want = |mode, owner: &'static str| Want { mode, owner: owner.as_bytes() };
/// // Two readers hold the lock; a writer waits, then two more readers.
/// let queue = [
///     want(Mode::Exclusive, "w"),
///     want(Mode::Shared, "r3"),
///     want(Mode::Shared, "r4"),
/// ];
/// assert_eq!(decide(Held::Shared(2), queue, |_| false), 0);
/// // The readers leave: the writer alone.
/// assert_eq!(decide(Held::Free, queue, |_| false), 1);
/// // The writer leaves: both readers at once.
/// assert_eq!(decide(Held::Free, queue[1..].iter().copied(), |_| false), 2);
/// ```
pub fn decide<'a>(
    held: Held,
    queue: impl IntoIterator<Item = Want<'a>>,
    is_holder: impl Fn(&[u8]) -> bool,
) -> usize {
    let mut held = held;
    let mut owners: HashSet<&[u8]> = HashSet::new();
    let mut granted = 0;
    for want in queue {
        if is_holder(want.owner) || !owners.insert(want.owner) {
            break;
        }
        held = match (held, want.mode) {
            (Held::Free, Mode::Exclusive) => Held::Exclusive,
            (Held::Free, Mode::Shared) => Held::Shared(1),
            (Held::Shared(k), Mode::Shared) => Held::Shared(k + 1),
            (Held::Free, Mode::Limit(limit)) if limit >= 1 => Held::Counted { limit, holders: 1 },
            (Held::Counted { limit, holders }, Mode::Limit(n))
                if n == limit && holders < limit as usize =>
            {
                Held::Counted {
                    limit,
                    holders: holders + 1,
                }
            }
            _ => break,
        };
        granted += 1;
    }
    granted
}

/// Whether a new request is granted at once: `Ok(false)` when it must
/// wait (or gets nil). `ahead` is the kind of the key's queue when anyone
/// is queued (or a grant to them is due): nobody barges past them.
///
/// # Errors
///
/// [`WrongMode`] when the request's kind is not the holders' (or, with no
/// holders, the queue's).
pub fn admit(
    held: Held,
    ahead: Option<Kind>,
    want: Want<'_>,
    is_holder: impl Fn(&[u8]) -> bool,
) -> Result<bool, WrongMode> {
    let asked = want.mode;
    for kind in [held.kind(), ahead].into_iter().flatten() {
        if kind != asked.kind() {
            return Err(WrongMode { held: kind, asked });
        }
    }
    if ahead.is_some() {
        return Ok(false);
    }
    Ok(decide(held, [want], is_holder) == 1)
}

/// Who holds the key `store` views, after removing the holders whose lease
/// ended (their `HDEL`s, or the `DEL`, are written and replicated).
///
/// # Errors
///
/// A non-lock key ([`LockError::LockWrongType`]), a corrupt holder field.
pub fn held<S: SharedStore>(
    store: &mut S,
    process: &Process,
    index: &mut SharedIndex,
) -> Result<Held, LockError> {
    let hash = process.terms.hash(store.key());
    let layout = store.layout();
    if !matches!(layout, Layout::Hash(_)) {
        // The hash expired by itself (every lease ended), or was replaced.
        let name = Name {
            db: store.db(),
            key: store.key(),
            hash,
        };
        index.forget(&name);
    }
    Ok(match layout {
        Layout::Missing => Held::Free,
        Layout::Exclusive => Held::Exclusive,
        Layout::Foreign => return Err(LockError::LockWrongType),
        Layout::Hash(mode) => {
            let now = store.now_ms();
            let holders = holders_of(store, index, hash, mode)?;
            if sweep(store, holders, now) {
                let name = Name {
                    db: store.db(),
                    key: store.key(),
                    hash,
                };
                index.forget(&name);
                return Ok(Held::Free);
            }
            let n = holders.len();
            match mode {
                KeyMode::Shared => Held::Shared(n),
                KeyMode::Limit(limit) => Held::Counted { limit, holders: n },
            }
        }
    })
}

/// How many of `queue`'s head requests are granted now on the key `store`
/// views ([`held`], then [`decide`]). The caller grants them in order, each
/// through [`acquire`] (`ahead: None`) or, for an exclusive one,
/// `lock::acquire`.
///
/// # Errors
///
/// As [`held`].
pub fn grantable<'a, S: SharedStore>(
    store: &mut S,
    queue: impl IntoIterator<Item = Want<'a>>,
    process: &Process,
    index: &mut SharedIndex,
) -> Result<usize, LockError> {
    let held = held(store, process, index)?;
    let name = process.name(store.db(), store.key());
    let holders = index.get(&name);
    Ok(decide(held, queue, |o| {
        holders.is_some_and(|h| h.get(o).is_some())
    }))
}

/// `SPACELOCK.ACQUIRE key owner ttl_ms SHARED|LIMIT n`: `Some(token)` when
/// granted, `None` when it must wait (held in a way that excludes it, the
/// owner already holds a share, or `ahead` says others are queued).
///
/// Ended leases are removed first. A grant issues the name's next token
/// (as `lock::acquire`), writes the fence key, then `owner`'s field
/// (creating the hash with its mode field), then the key's expiry when the
/// latest deadline moved.
///
/// # Errors
///
/// [`LockError::WrongMode`] when `mode` does not fit the key or its queue;
/// [`LockError::LockWrongType`] for a key that is not a lock; the fence
/// errors of `lock::acquire`; a ttl that overflows. None changes anything
/// but the removal of ended leases.
#[allow(clippy::too_many_arguments)]
pub fn acquire<S: SharedStore>(
    store: &mut S,
    owner: &[u8],
    ttl_ms: i64,
    mode: KeyMode,
    ahead: Option<Kind>,
    process: &mut Process,
    index: &mut SharedIndex,
    policy: Policy,
) -> Result<Option<i64>, LockError> {
    no_mode_field(owner)?;
    let now = store.now_ms();
    let at = expire_at(now, ttl_ms)?;
    let hash = process.terms.hash(store.key());
    let held = held(store, process, index)?;
    let name = Name {
        db: store.db(),
        key: store.key(),
        hash,
    };
    let holders = index.get(&name);
    let want = Want {
        mode: mode.mode(),
        owner,
    };
    let is_holder = |o: &[u8]| holders.is_some_and(|h| h.get(o).is_some());
    if !admit(held, ahead, want, is_holder)? {
        return Ok(None);
    }
    let before = holders.and_then(Holders::latest);
    let latest = before.map_or(at, |b| b.max(at));
    let fence = store.last_token()?;
    let token = process.terms.peek_hashed(hash, fence, policy.mode)?;
    let fence_until = policy.fence_until(latest);
    store.write_fence(token, fence_until)?;
    let create = (held == Held::Free).then_some(mode);
    let holder = Holder {
        token,
        deadline_ms: at,
    };
    store.put(create, owner, holder)?;
    if before != Some(latest) {
        store.set_expire_at(latest);
    }
    process.terms.issued_hashed(hash, token);
    let name = Name {
        db: store.db(),
        key: store.key(),
        hash,
    };
    let holders = match index.get_mut(&name) {
        Some(h) if create.is_none() => h,
        _ => index.insert(&name, Holders::new(mode), now),
    };
    holders.insert(owner, holder);
    holders.fence_until = Some(fence_until);
    Ok(Some(token))
}

/// `SPACELOCK.REFRESH key owner ttl_ms` on a shared or counted key: `true`
/// if `owner` held a share (its lease not ended) and its deadline is now
/// `now + ttl_ms`; its token stays. One `HSET`, and a `PEXPIREAT` when the
/// latest deadline moved; the fence key's expiry follows as for exclusive
/// leases. `false` on a missing or string key (the module runs
/// `lock::refresh` on a string key).
///
/// # Errors
///
/// [`LockError::LockWrongType`] for a key that is not a lock; a corrupt
/// holder field; a ttl that overflows.
pub fn refresh<S: SharedStore>(
    store: &mut S,
    owner: &[u8],
    ttl_ms: i64,
    process: &mut Process,
    index: &mut SharedIndex,
    policy: Policy,
) -> Result<bool, LockError> {
    no_mode_field(owner)?;
    let now = store.now_ms();
    let at = expire_at(now, ttl_ms)?;
    let Some((_, holders, field)) = own_holder(store, owner, process, index)? else {
        return Ok(false);
    };
    let Some(old) = field else {
        return Ok(false);
    };
    let before = holders.latest();
    let holder = Holder {
        token: old.token,
        deadline_ms: at,
    };
    store.put(None, owner, holder)?;
    holders.insert(owner, holder);
    let latest = holders.latest().unwrap_or(at);
    if before != Some(latest) {
        store.set_expire_at(latest);
    }
    let until = match holders.fence_until {
        Some(until) => Some(until),
        None => store.fence_expiry(),
    };
    if let Some(until) = until {
        let moved = policy.fence_move(until, latest);
        if let Some(moved) = moved {
            store.extend_fence(moved);
        }
        holders.fence_until = Some(moved.unwrap_or(until));
    }
    Ok(true)
}

/// The index entry of the key `store` views, its ended leases removed:
/// `None` when it is not a shared or counted key with holders left.
fn live_holders<'i, S: SharedStore>(
    store: &mut S,
    process: &Process,
    index: &'i mut SharedIndex,
) -> Result<Option<(u64, &'i mut Holders)>, LockError> {
    let hash = process.terms.hash(store.key());
    let mode = match store.layout() {
        Layout::Hash(mode) => mode,
        Layout::Foreign => return Err(LockError::LockWrongType),
        Layout::Missing | Layout::Exclusive => {
            let name = Name {
                db: store.db(),
                key: store.key(),
                hash,
            };
            index.forget(&name);
            return Ok(None);
        }
    };
    let now = store.now_ms();
    let holders = holders_of(store, index, hash, mode)?;
    if sweep(store, holders, now) {
        let name = Name {
            db: store.db(),
            key: store.key(),
            hash,
        };
        index.forget(&name);
        return Ok(None);
    }
    let name = Name {
        db: store.db(),
        key: store.key(),
        hash,
    };
    Ok(index.get_mut(&name).map(|h| (hash, h)))
}

/// [`live_holders`] and `owner`'s live grant, read from its field (`HGET`,
/// O(1)); when the index disagrees with that field (someone else wrote
/// it), the key's holders are read back first.
#[allow(clippy::type_complexity)]
fn own_holder<'i, S: SharedStore>(
    store: &mut S,
    owner: &[u8],
    process: &Process,
    index: &'i mut SharedIndex,
) -> Result<Option<(u64, &'i mut Holders, Option<Holder>)>, LockError> {
    let (hash, mode, agrees, field) = {
        let Some((hash, holders)) = live_holders(store, process, index)? else {
            return Ok(None);
        };
        let (mode, indexed) = (holders.mode, holders.get(owner));
        let field = store.holder(owner)?;
        (hash, mode, indexed == field, field)
    };
    if !agrees {
        let name = Name {
            db: store.db(),
            key: store.key(),
            hash,
        };
        index.forget(&name);
    }
    let holders = holders_of(store, index, hash, mode)?;
    let now = store.now_ms();
    Ok(Some((hash, holders, field.filter(|h| h.live_at(now)))))
}

/// `SPACELOCK.RELEASE key owner` on a shared or counted key: `true` if
/// `owner` held a share and it was removed (`HDEL`, and `PEXPIREAT` when it
/// was the latest; `DEL` when it was the last, and the fence key then
/// expires as after an exclusive release).
///
/// # Errors
///
/// As [`refresh`].
pub fn release<S: SharedStore>(
    store: &mut S,
    owner: &[u8],
    process: &mut Process,
    index: &mut SharedIndex,
    policy: Policy,
) -> Result<bool, LockError> {
    release_if(store, owner, None, process, index, policy)
}

/// Undoes a WAIT grant nobody received: [`release`], only if `owner`'s
/// share is still the grant with `token`.
///
/// # Errors
///
/// As [`refresh`].
pub fn undo<S: SharedStore>(
    store: &mut S,
    owner: &[u8],
    token: i64,
    process: &mut Process,
    index: &mut SharedIndex,
    policy: Policy,
) -> Result<bool, LockError> {
    release_if(store, owner, Some(token), process, index, policy)
}

fn release_if<S: SharedStore>(
    store: &mut S,
    owner: &[u8],
    token: Option<i64>,
    process: &mut Process,
    index: &mut SharedIndex,
    policy: Policy,
) -> Result<bool, LockError> {
    no_mode_field(owner)?;
    let Some((hash, holders, field)) = own_holder(store, owner, process, index)? else {
        return Ok(false);
    };
    let Some(old) = field else {
        return Ok(false);
    };
    if token.is_some_and(|t| t != old.token) {
        return Ok(false);
    }
    let before = holders.latest();
    holders.remove(owner);
    if holders.is_empty() {
        let until = holders.fence_until;
        store.delete();
        let name = Name {
            db: store.db(),
            key: store.key(),
            hash,
        };
        index.forget(&name);
        let until = until.unwrap_or_else(|| store.fence_expiry().flatten());
        if let Some(at) = policy.fence_move_at_release(until, store.now_ms()) {
            store.extend_fence(Some(at));
        }
        return Ok(true);
    }
    store.remove_holder(owner);
    if let Some(latest) = holders.latest().filter(|&l| Some(l) != before) {
        store.set_expire_at(latest);
    }
    Ok(true)
}

/// A queue's expiry timer fired: removes the holders whose lease ended and
/// returns when the next one ends (`None`: no shared or counted holder
/// left), where the timer is armed again.
///
/// # Errors
///
/// As [`held`].
pub fn expire<S: SharedStore>(
    store: &mut S,
    process: &Process,
    index: &mut SharedIndex,
) -> Result<Option<i64>, LockError> {
    Ok(live_holders(store, process, index)?.and_then(|(_, h)| h.earliest()))
}

/// `SPACELOCK.CHECK key owner token` on any key: `true` only while `owner`
/// holds a share under exactly that grant. Read-only, O(1), from the hash
/// alone (it works on replicas and after a restart, and an ended lease
/// fails at once even while its field is still there).
///
/// # Errors
///
/// [`LockError::LockWrongType`] for a key that is not a lock; a corrupt
/// holder field.
pub fn check<S: SharedStore>(store: &mut S, owner: &[u8], token: i64) -> Result<bool, LockError> {
    no_mode_field(owner)?;
    match store.layout() {
        Layout::Hash(_) => {
            let now = store.now_ms();
            Ok(store
                .holder(owner)?
                .is_some_and(|h| h.token == token && h.live_at(now)))
        }
        Layout::Foreign => Err(LockError::LockWrongType),
        Layout::Missing | Layout::Exclusive => Ok(false),
    }
}

/// One holder as `SPACELOCK.INFO` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderInfo {
    /// Its owner.
    pub owner: Vec<u8>,
    /// Ms left of its lease (> 0).
    pub ttl_ms: i64,
    /// Its grant's token.
    pub token: i64,
}

/// `SPACELOCK.INFO key` on a shared or counted key: its mode and live
/// holders in token order (`None`: not such a key, or no live holder).
/// Read-only, O(holders).
///
/// # Errors
///
/// As [`check`].
pub fn info<S: SharedStore>(
    store: &mut S,
) -> Result<Option<(KeyMode, Vec<HolderInfo>)>, LockError> {
    let mode = match store.layout() {
        Layout::Hash(mode) => mode,
        Layout::Foreign => return Err(LockError::LockWrongType),
        Layout::Missing | Layout::Exclusive => return Ok(None),
    };
    let now = store.now_ms();
    let mut live: Vec<HolderInfo> = store
        .holders()?
        .into_iter()
        .filter(|(_, h)| h.live_at(now))
        .map(|(owner, h)| HolderInfo {
            owner,
            ttl_ms: h.deadline_ms - now,
            token: h.token,
        })
        .collect();
    live.sort_by_key(|h| h.token);
    Ok((!live.is_empty()).then_some((mode, live)))
}

impl MemoryView<'_> {
    fn hash(&self) -> Option<&BTreeMap<Vec<u8>, Vec<u8>>> {
        match self.store.get(self.key) {
            Some(Value::Hash(h)) => Some(h),
            _ => None,
        }
    }

    fn hash_mut(&mut self) -> Option<&mut BTreeMap<Vec<u8>, Vec<u8>>> {
        self.store.get(self.key)?;
        match self.store.keys.get_mut(self.key) {
            Some((Value::Hash(h), _)) => Some(h),
            _ => None,
        }
    }
}

impl SharedStore for MemoryView<'_> {
    fn now_ms(&self) -> i64 {
        self.store.now
    }
    fn db(&self) -> i32 {
        0
    }
    fn key(&self) -> &[u8] {
        self.key
    }
    fn layout(&mut self) -> Layout {
        match self.store.get(self.key) {
            None => Layout::Missing,
            Some(Value::Str(_)) => Layout::Exclusive,
            Some(Value::Hash(h)) => h
                .get(MODE_FIELD)
                .and_then(|m| KeyMode::parse(m))
                .map_or(Layout::Foreign, Layout::Hash),
            Some(Value::Other) => Layout::Foreign,
        }
    }
    fn holder(&mut self, owner: &[u8]) -> Result<Option<Holder>, LockError> {
        self.hash()
            .and_then(|h| h.get(owner))
            .map(|v| Holder::parse(v))
            .transpose()
    }
    fn holders(&mut self) -> Result<Vec<(Vec<u8>, Holder)>, LockError> {
        let Some(h) = self.hash() else {
            return Ok(Vec::new());
        };
        h.iter()
            .filter(|(f, _)| f.as_slice() != MODE_FIELD)
            .map(|(f, v)| Ok((f.clone(), Holder::parse(v)?)))
            .collect()
    }
    fn holder_count(&mut self) -> usize {
        self.hash().map_or(0, |h| h.len().saturating_sub(1))
    }
    fn expire_at(&mut self) -> Option<i64> {
        self.store.expire_at(self.key)
    }
    fn last_token(&mut self) -> Result<i64, LockError> {
        Store::last_token(self)
    }
    fn fence_expiry(&mut self) -> Option<Option<i64>> {
        Store::fence_expiry(self)
    }
    fn write_fence(&mut self, token: i64, until_ms: Option<i64>) -> Result<(), LockError> {
        self.store.keys.insert(
            self.fence.clone(),
            (Value::Str(token.to_string().into_bytes()), until_ms),
        );
        Ok(())
    }
    fn extend_fence(&mut self, until_ms: Option<i64>) {
        Store::extend_fence(self, until_ms);
    }
    fn put(
        &mut self,
        create: Option<KeyMode>,
        owner: &[u8],
        holder: Holder,
    ) -> Result<(), LockError> {
        if let Some(mode) = create {
            let fields = BTreeMap::from([
                (MODE_FIELD.to_vec(), mode.encode()),
                (owner.to_vec(), holder.encode()),
            ]);
            self.store
                .keys
                .insert(self.key.to_vec(), (Value::Hash(fields), None));
            return Ok(());
        }
        let h = self.hash_mut().ok_or(LockError::WriteFailed)?;
        h.insert(owner.to_vec(), holder.encode());
        Ok(())
    }
    fn remove_holder(&mut self, owner: &[u8]) {
        if let Some(h) = self.hash_mut() {
            h.remove(owner);
        }
    }
    fn set_expire_at(&mut self, at_ms: i64) {
        Store::extend(self, at_ms);
    }
    fn delete(&mut self) {
        Store::remove(self);
    }
}

#[cfg(test)]
mod tests;
