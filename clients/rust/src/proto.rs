//! The wire: the `SPACELOCK.*` commands this crate sends, the parsing of
//! their replies into typed values, and the classification of failures
//! (could the command have been applied? is another attempt worth it?).

use std::time::Duration;

use redis::{Cmd, ErrorKind, ServerErrorKind, Value};

use crate::options::Ack;
use crate::{Error, HolderInfo, LockInfo, LockMode, Mode};

pub(crate) const ACQUIRE: &str = "SPACELOCK.ACQUIRE";
pub(crate) const ACQUIRE_WAIT: &str = "SPACELOCK.ACQUIRE … WAIT";
pub(crate) const REFRESH: &str = "SPACELOCK.REFRESH";
pub(crate) const RELEASE: &str = "SPACELOCK.RELEASE";
pub(crate) const INFO: &str = "SPACELOCK.INFO";
pub(crate) const CHECK: &str = "SPACELOCK.CHECK";
pub(crate) const WAIT: &str = "WAIT";
pub(crate) const WAITAOF: &str = "WAITAOF";

/// `WAIT replicas timeout_ms`, or `WAITAOF 1 replicas timeout_ms`.
pub(crate) fn ack(ack: &Ack) -> Cmd {
    let ms = crate::options::millis_ceil(ack.timeout).min(i64::MAX as u64);
    let mut cmd = if ack.aof {
        let mut c = redis::cmd(WAITAOF);
        c.arg(1);
        c
    } else {
        redis::cmd(WAIT)
    };
    cmd.arg(ack.replicas).arg(ms);
    cmd
}

/// The reply to [`ack`]: `Ok(n)` with the number of replicas that
/// acknowledged, and whether that is enough (for `WAITAOF`, the primary's own
/// fsync must be in too). A `WAITAOF` the server cannot run is
/// [`Error::WaitAofUnavailable`].
pub(crate) fn parse_ack(ack: &Ack, value: Value) -> Result<(usize, bool), Error> {
    let command = if ack.aof { WAITAOF } else { WAIT };
    let value = match value.extract_error() {
        Ok(v) => v,
        Err(e) if ack.aof && waitaof_unavailable(&e) => {
            return Err(Error::WaitAofUnavailable {
                reply: e.to_string(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let count = |v: &Value| match v {
        Value::Int(n) if *n >= 0 => usize::try_from(*n).ok(),
        _ => None,
    };
    let (local_ok, replicas) = match (&value, ack.aof) {
        (Value::Int(_), false) => (true, count(&value)),
        (Value::Array(items), true) if items.len() == 2 => {
            (count(&items[0]).is_some_and(|l| l >= 1), count(&items[1]))
        }
        _ => (false, None),
    };
    let replicas = replicas.ok_or_else(|| unexpected(command, &value))?;
    Ok((replicas, local_ok && replicas >= ack.replicas))
}

/// Whether a `WAITAOF` error says the server cannot run it at all: an
/// unknown command (Redis before 7.2), or no append-only file.
fn waitaof_unavailable(e: &redis::RedisError) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    (text.contains("unknown command") && text.contains("waitaof")) || text.contains("appendonly")
}

/// `SPACELOCK.ACQUIRE key owner ttl_ms`, then `SHARED` or `LIMIT n` for
/// those modes (the exclusive form has no mode word).
pub(crate) fn acquire(key: &str, owner: &str, ttl_ms: u64, mode: Mode) -> Cmd {
    let mut cmd = redis::cmd(ACQUIRE);
    cmd.arg(key).arg(owner).arg(ttl_ms);
    match mode {
        Mode::Exclusive => {}
        Mode::Shared => {
            cmd.arg("SHARED");
        }
        Mode::Limit(n) => {
            cmd.arg("LIMIT").arg(n);
        }
    }
    cmd
}

/// `SPACELOCK.ACQUIRE key owner ttl_ms [mode] WAIT wait_ms`, `wait_ms` ≥ 1
/// (the server's "0 waits forever" is never sent).
pub(crate) fn acquire_wait(key: &str, owner: &str, ttl_ms: u64, mode: Mode, wait_ms: u64) -> Cmd {
    let mut cmd = acquire(key, owner, ttl_ms, mode);
    cmd.arg("WAIT").arg(wait_ms.clamp(1, i64::MAX as u64));
    cmd
}

/// `SPACELOCK.REFRESH key owner ttl_ms`.
pub(crate) fn refresh(key: &str, owner: &str, ttl_ms: u64) -> Cmd {
    let mut cmd = redis::cmd(REFRESH);
    cmd.arg(key).arg(owner).arg(ttl_ms);
    cmd
}

/// `SPACELOCK.RELEASE key owner`.
pub(crate) fn release(key: &str, owner: &str) -> Cmd {
    let mut cmd = redis::cmd(RELEASE);
    cmd.arg(key).arg(owner);
    cmd
}

/// `SPACELOCK.CHECK key owner token`.
pub(crate) fn check_grant(key: &str, owner: &str, token: u64) -> Cmd {
    let mut cmd = redis::cmd(CHECK);
    cmd.arg(key).arg(owner).arg(token);
    cmd
}

/// `SPACELOCK.INFO key`.
pub(crate) fn info(key: &str) -> Cmd {
    let mut cmd = redis::cmd(INFO);
    cmd.arg(key);
    cmd
}

fn unexpected(command: &'static str, value: &Value) -> Error {
    Error::UnexpectedReply {
        command,
        reply: format!("{value:?}"),
    }
}

/// An error reply becomes an error (`ModuleNotLoaded` for an unknown
/// `SPACELOCK.*` command); anything else is passed on.
pub(crate) fn check(value: Value) -> Result<Value, Error> {
    Ok(value.extract_error()?)
}

/// ACQUIRE's reply: a token (an integer ≥ 1), or nil when the lock is held.
pub(crate) fn parse_token(command: &'static str, value: Value) -> Result<Option<u64>, Error> {
    match check(value)? {
        Value::Nil => Ok(None),
        Value::Int(t) if t > 0 => Ok(Some(t.unsigned_abs())),
        other => Err(unexpected(command, &other)),
    }
}

/// REFRESH's and RELEASE's reply: `1` (done) or `0` (not the owner).
pub(crate) fn parse_flag(command: &'static str, value: Value) -> Result<bool, Error> {
    match check(value)? {
        Value::Int(1) => Ok(true),
        Value::Int(0) => Ok(false),
        other => Err(unexpected(command, &other)),
    }
}

/// INFO's reply: nil, or field/value pairs (a flat array under RESP2, a map
/// under RESP3). An exclusive lock has `owner`, `ttl_ms`, `token` and
/// `waiters`; a shared or counted one has `mode`, `limit`, `holders` (each
/// holder's own `owner`, `ttl_ms`, `token` pairs) and `waiters`. Unknown
/// fields are skipped; an exclusive lock's `owner` and `token` are required,
/// as is at least one holder of any other.
pub(crate) fn parse_info(value: Value) -> Result<Option<LockInfo>, Error> {
    let value = check(value)?;
    if value == Value::Nil {
        return Ok(None);
    }
    let bad = || unexpected(INFO, &value);
    let pairs = field_pairs(&value).ok_or_else(bad)?;
    let (mut waiters, mut mode, mut limit, mut list) = (0, None, 0, None);
    for (k, v) in &pairs {
        match text(k).ok_or_else(bad)? {
            b"waiters" => waiters = int(v).filter(|w| *w >= 0).ok_or_else(bad)?,
            b"mode" => mode = Some(text(v).ok_or_else(bad)?),
            b"limit" => limit = int(v).ok_or_else(bad)?,
            b"holders" => list = Some(*v),
            _ => {}
        }
    }
    let (mode, holders) = match mode {
        None => (LockMode::Exclusive, vec![holder(&pairs).ok_or_else(bad)?]),
        Some(word) => {
            let mode = match word {
                b"shared" => LockMode::Shared,
                b"limit" => LockMode::Limit(u32::try_from(limit).map_err(|_| bad())?),
                b"exclusive" => LockMode::Exclusive,
                _ => return Err(bad()),
            };
            let Some(Value::Array(items)) = list else {
                return Err(bad());
            };
            let holders = items
                .iter()
                .map(|h| holder(&field_pairs(h)?))
                .collect::<Option<Vec<_>>>()
                .filter(|h| !h.is_empty())
                .ok_or_else(bad)?;
            (mode, holders)
        }
    };
    let newest = holders.last().cloned().ok_or_else(bad)?;
    Ok(Some(LockInfo {
        owner: newest.owner,
        owner_bytes: newest.owner_bytes,
        ttl: newest.ttl,
        token: newest.token,
        waiters: waiters.unsigned_abs(),
        mode,
        holders,
    }))
}

/// The field/value pairs of a RESP2 flat array or a RESP3 map.
fn field_pairs(value: &Value) -> Option<Vec<(&Value, &Value)>> {
    match value {
        Value::Map(pairs) => Some(pairs.iter().map(|(k, v)| (k, v)).collect()),
        Value::Array(items) if items.len() % 2 == 0 => {
            Some(items.chunks(2).map(|c| (&c[0], &c[1])).collect())
        }
        _ => None,
    }
}

/// One holder from its `owner`, `ttl_ms` and `token` fields.
fn holder(pairs: &[(&Value, &Value)]) -> Option<HolderInfo> {
    let (mut owner, mut ttl, mut token) = (None, None, None);
    for (k, v) in pairs {
        match text(k)? {
            b"owner" => owner = Some(text(v)?.to_vec()),
            b"ttl_ms" => ttl = Some(int(v)?),
            b"token" => token = Some(int(v).filter(|t| *t >= 0)?),
            _ => {}
        }
    }
    let owner_bytes = owner?;
    Some(HolderInfo {
        owner: String::from_utf8_lossy(&owner_bytes).into_owned(),
        owner_bytes,
        // -1: no expiry; -2 cannot occur for a key that exists.
        ttl: ttl
            .and_then(|t| u64::try_from(t).ok())
            .map(Duration::from_millis),
        token: token?.unsigned_abs(),
    })
}

fn text(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// Whether a command that failed this way may nonetheless have been applied
/// by the server: no reply came back (I/O error, dropped connection, a
/// timeout). An error *reply* means the server changed nothing, and a
/// refused connection means the command never reached a server.
pub(crate) fn may_have_run(e: &Error) -> bool {
    match e {
        Error::Timeout { .. } => true,
        Error::Redis(e) => e.is_io_error() && !e.is_connection_refusal(),
        _ => false,
    }
}

/// Whether another attempt, on a fresh connection or a moment later, may
/// succeed: connection and I/O errors, timeouts, and the server's "not now"
/// replies (`LOADING` after a restart, `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`).
pub(crate) fn is_transient(e: &Error) -> bool {
    match e {
        Error::Timeout { .. } => true,
        Error::Redis(e) => {
            e.is_io_error()
                || matches!(
                    e.kind(),
                    ErrorKind::Server(
                        ServerErrorKind::BusyLoading
                            | ServerErrorKind::TryAgain
                            | ServerErrorKind::ClusterDown
                            | ServerErrorKind::MasterDown
                    ) | ErrorKind::ClusterConnectionNotFound
                )
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(bytes: &[u8]) -> Value {
        redis::parse_redis_value(bytes).unwrap()
    }

    fn args(cmd: &Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "<cursor>".into(),
            })
            .collect()
    }

    #[test]
    fn commands_have_their_key_first() {
        assert_eq!(
            args(&acquire("k", "o", 30_000, Mode::Exclusive)),
            ["SPACELOCK.ACQUIRE", "k", "o", "30000"]
        );
        assert_eq!(
            args(&acquire("k", "o", 30_000, Mode::Shared)),
            ["SPACELOCK.ACQUIRE", "k", "o", "30000", "SHARED"]
        );
        assert_eq!(
            args(&acquire_wait("k", "o", 5, Mode::Limit(3), 7)),
            [
                "SPACELOCK.ACQUIRE",
                "k",
                "o",
                "5",
                "LIMIT",
                "3",
                "WAIT",
                "7"
            ]
        );
        assert_eq!(
            args(&acquire_wait("k", "o", 5, Mode::Exclusive, 0)),
            ["SPACELOCK.ACQUIRE", "k", "o", "5", "WAIT", "1"],
            "never WAIT 0 (forever)"
        );
        assert_eq!(
            args(&acquire_wait("k", "o", 5, Mode::Exclusive, u64::MAX))[5],
            i64::MAX.to_string()
        );
        assert_eq!(
            args(&refresh("k", "o", 9)),
            ["SPACELOCK.REFRESH", "k", "o", "9"]
        );
        assert_eq!(args(&release("k", "o")), ["SPACELOCK.RELEASE", "k", "o"]);
        assert_eq!(args(&info("k")), ["SPACELOCK.INFO", "k"]);
    }

    #[test]
    fn tokens() {
        assert_eq!(parse_token(ACQUIRE, resp(b":7\r\n")).unwrap(), Some(7));
        let big = i64::MAX;
        assert_eq!(
            parse_token(ACQUIRE, Value::Int(big)).unwrap(),
            Some(big as u64)
        );
        assert_eq!(parse_token(ACQUIRE, resp(b"$-1\r\n")).unwrap(), None);
        assert_eq!(parse_token(ACQUIRE, resp(b"_\r\n")).unwrap(), None);
        for bad in [
            &b":0\r\n"[..],
            b":-3\r\n",
            b"+OK\r\n",
            b"$2\r\n12\r\n",
            b"*0\r\n",
        ] {
            let e = parse_token(ACQUIRE, resp(bad)).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::UnexpectedReply {
                        command: ACQUIRE,
                        ..
                    }
                ),
                "{bad:?}: {e:?}"
            );
        }
    }

    #[test]
    fn acks() {
        let wait = Ack {
            replicas: 2,
            timeout: Duration::from_millis(1500),
            aof: false,
        };
        assert_eq!(args(&ack(&wait)), ["WAIT", "2", "1500"]);
        assert_eq!(parse_ack(&wait, Value::Int(2)).unwrap(), (2, true));
        assert_eq!(parse_ack(&wait, Value::Int(3)).unwrap(), (3, true));
        assert_eq!(parse_ack(&wait, Value::Int(1)).unwrap(), (1, false));
        assert!(matches!(
            parse_ack(&wait, Value::Int(-1)),
            Err(Error::UnexpectedReply { command: WAIT, .. })
        ));
        let aof = Ack { aof: true, ..wait };
        assert_eq!(args(&ack(&aof)), ["WAITAOF", "1", "2", "1500"]);
        let pair = |l, r| Value::Array(vec![Value::Int(l), Value::Int(r)]);
        assert_eq!(parse_ack(&aof, pair(1, 2)).unwrap(), (2, true));
        assert_eq!(parse_ack(&aof, pair(0, 2)).unwrap(), (2, false));
        assert_eq!(parse_ack(&aof, pair(1, 1)).unwrap(), (1, false));
        assert!(matches!(
            parse_ack(&aof, Value::Int(2)),
            Err(Error::UnexpectedReply {
                command: WAITAOF,
                ..
            })
        ));
        for reply in [
            &b"-ERR unknown command 'WAITAOF', with args beginning with: '1' \r\n"[..],
            b"-ERR WAITAOF cannot be used when numlocal is set but appendonly is disabled.\r\n",
        ] {
            let e = parse_ack(&aof, resp(reply)).unwrap_err();
            assert!(matches!(e, Error::WaitAofUnavailable { .. }), "{e:?}");
        }
        let e = parse_ack(
            &wait,
            resp(b"-ERR WAIT cannot be used with replica instances.\r\n"),
        )
        .unwrap_err();
        assert!(matches!(e, Error::Redis(_)), "{e:?}");
    }

    #[test]
    fn flags() {
        assert!(parse_flag(RELEASE, resp(b":1\r\n")).unwrap());
        assert!(!parse_flag(RELEASE, resp(b":0\r\n")).unwrap());
        for bad in [&b":2\r\n"[..], b":-1\r\n", b"$-1\r\n", b"+1\r\n"] {
            assert!(matches!(
                parse_flag(REFRESH, resp(bad)),
                Err(Error::UnexpectedReply {
                    command: REFRESH,
                    ..
                })
            ));
        }
    }

    #[test]
    fn error_replies_are_errors_and_unknown_commands_mean_no_module() {
        let e = parse_flag(RELEASE, resp(b"-WRONGTYPE Operation against a key\r\n")).unwrap_err();
        assert!(matches!(e, Error::Redis(_)), "{e:?}");
        assert!(!may_have_run(&e) && !is_transient(&e));
        let e = parse_token(
            ACQUIRE,
            resp(b"-ERR unknown command 'SPACELOCK.ACQUIRE', with args beginning with: \r\n"),
        )
        .unwrap_err();
        assert!(e.is_module_not_loaded(), "{e:?}");
        let e =
            parse_flag(REFRESH, resp(b"-LOADING Redis is loading the dataset\r\n")).unwrap_err();
        assert!(is_transient(&e) && !may_have_run(&e), "{e:?}");
    }

    #[test]
    fn io_errors_and_timeouts_may_have_run() {
        let io = Error::from(redis::RedisError::from(std::io::Error::from(
            std::io::ErrorKind::BrokenPipe,
        )));
        assert!(may_have_run(&io) && is_transient(&io));
        let refused = Error::from(redis::RedisError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(!may_have_run(&refused) && is_transient(&refused));
        let t = Error::Timeout {
            command: RELEASE,
            after: Duration::from_secs(1),
        };
        assert!(may_have_run(&t) && is_transient(&t));
        assert!(!is_transient(&Error::WaitNotConfigured));
    }

    #[test]
    fn info_resp2_and_resp3() {
        let flat = resp(
            b"*8\r\n$5\r\nowner\r\n$2\r\nme\r\n$6\r\nttl_ms\r\n:1500\r\n\
              $5\r\ntoken\r\n:42\r\n$7\r\nwaiters\r\n:3\r\n",
        );
        let i = parse_info(flat).unwrap().unwrap();
        assert_eq!(
            (i.owner.as_str(), i.ttl, i.token, i.waiters),
            ("me", Some(Duration::from_millis(1500)), 42, 3)
        );
        let map = resp(
            b"%4\r\n+owner\r\n$2\r\nme\r\n+ttl_ms\r\n:-1\r\n+token\r\n:1\r\n+waiters\r\n:0\r\n",
        );
        let i = parse_info(map).unwrap().unwrap();
        assert_eq!((i.ttl, i.token), (None, 1), "ttl -1: no expiry");
        assert_eq!(parse_info(resp(b"$-1\r\n")).unwrap(), None);
        // Unknown fields are skipped; waiters may be missing.
        let extra =
            resp(b"*6\r\n$5\r\nowner\r\n$1\r\no\r\n$3\r\nnew\r\n:9\r\n$5\r\ntoken\r\n:2\r\n");
        let i = parse_info(extra).unwrap().unwrap();
        assert_eq!((i.token, i.waiters), (2, 0));
    }

    #[test]
    fn info_of_shared_and_counted_locks() {
        let shared = resp(
            b"*8\r\n$4\r\nmode\r\n$6\r\nshared\r\n$5\r\nlimit\r\n:0\r\n\
              $7\r\nholders\r\n*2\r\n\
              *6\r\n$5\r\nowner\r\n$1\r\na\r\n$6\r\nttl_ms\r\n:900\r\n$5\r\ntoken\r\n:10\r\n\
              *6\r\n$5\r\nowner\r\n$1\r\nb\r\n$6\r\nttl_ms\r\n:-1\r\n$5\r\ntoken\r\n:11\r\n\
              $7\r\nwaiters\r\n:2\r\n",
        );
        let i = parse_info(shared).unwrap().unwrap();
        assert_eq!(i.mode, LockMode::Shared);
        assert_eq!(
            (i.owner.as_str(), i.ttl, i.token, i.waiters),
            ("b", None, 11, 2)
        );
        let h: Vec<_> = i
            .holders
            .iter()
            .map(|h| (h.owner.as_str(), h.ttl, h.token))
            .collect();
        assert_eq!(
            h,
            [("a", Some(Duration::from_millis(900)), 10), ("b", None, 11)]
        );
        let counted = resp(
            b"%3\r\n+mode\r\n+limit\r\n+limit\r\n:3\r\n+holders\r\n*1\r\n\
              %3\r\n+owner\r\n$1\r\nc\r\n+ttl_ms\r\n:5\r\n+token\r\n:4\r\n",
        );
        let i = parse_info(counted).unwrap().unwrap();
        assert_eq!(
            (i.mode, i.token, i.holders.len()),
            (LockMode::Limit(3), 4, 1)
        );
        let excl = parse_info(resp(
            b"*4\r\n$5\r\nowner\r\n$1\r\no\r\n$5\r\ntoken\r\n:1\r\n",
        ));
        let i = excl.unwrap().unwrap();
        assert_eq!(
            (i.mode, i.holders.len(), i.holders[0].token),
            (LockMode::Exclusive, 1, 1)
        );
    }

    #[test]
    fn info_keeps_binary_owners() {
        let v = resp(b"*4\r\n$5\r\nowner\r\n$4\r\na\x00\xffb\r\n$5\r\ntoken\r\n:1\r\n");
        let i = parse_info(v).unwrap().unwrap();
        assert_eq!(i.owner_bytes, b"a\x00\xffb");
        assert_eq!(i.owner, "a\u{0}\u{fffd}b");
    }

    #[test]
    fn malformed_info_is_an_unexpected_reply() {
        for bad in [
            &b":1\r\n"[..],
            b"+OK\r\n",
            b"*1\r\n$5\r\nowner\r\n",            // odd length
            b"*2\r\n$5\r\ntoken\r\n:1\r\n",      // no owner
            b"*2\r\n$5\r\nowner\r\n$1\r\no\r\n", // no token
            b"*4\r\n$5\r\nowner\r\n:5\r\n$5\r\ntoken\r\n:1\r\n", // owner not a string
            b"*4\r\n$5\r\nowner\r\n$1\r\no\r\n$5\r\ntoken\r\n:-1\r\n", // negative token
            b"*4\r\n$5\r\nowner\r\n$1\r\no\r\n$5\r\ntoken\r\n$1\r\nx\r\n",
            b"*4\r\n:1\r\n$1\r\no\r\n$5\r\ntoken\r\n:1\r\n", // key not a string
            b"*6\r\n$5\r\nowner\r\n$1\r\no\r\n$5\r\ntoken\r\n:1\r\n$7\r\nwaiters\r\n:-2\r\n",
            b"*4\r\n$4\r\nmode\r\n$6\r\nshared\r\n$7\r\nholders\r\n*0\r\n", // no holder
            b"*2\r\n$4\r\nmode\r\n$6\r\nshared\r\n",                        // no holders field
            b"*4\r\n$4\r\nmode\r\n$4\r\nodd?\r\n$7\r\nholders\r\n*0\r\n",   // unknown mode
            b"*6\r\n$4\r\nmode\r\n$5\r\nlimit\r\n$5\r\nlimit\r\n:-1\r\n$7\r\nholders\r\n*0\r\n",
        ] {
            let e = parse_info(resp(bad)).unwrap_err();
            assert!(
                matches!(e, Error::UnexpectedReply { command: INFO, .. }),
                "{bad:?}: {e:?}"
            );
        }
    }
}
