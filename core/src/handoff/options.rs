//! What the WAIT path parses (the option after `ttl_ms`) and the error
//! texts it replies.

use crate::args::{parse_timeout, ArgError};

/// Parses the options after `key owner ttl_ms`: only `WAIT timeout_ms`
/// (case-insensitive), at most once. `Ok(None)` without WAIT.
///
/// # Errors
///
/// An [`ArgError`] naming what is wrong; nothing has been looked at yet.
pub fn parse_options(rest: &[&[u8]]) -> Result<Option<i64>, ArgError> {
    let mut wait = None;
    let mut it = rest.iter();
    while let Some(opt) = it.next() {
        if !opt.eq_ignore_ascii_case(b"WAIT") {
            return Err(ArgError::UnknownOption);
        }
        if wait.is_some() {
            return Err(ArgError::RepeatedOption);
        }
        let value = it.next().ok_or(ArgError::MissingValue)?;
        wait = Some(parse_timeout(value)?);
    }
    Ok(wait)
}

/// The error for a WAIT beyond `spacelock.max-waiters`.
pub fn too_many_waiters(max: i64) -> String {
    format!("ERR too many clients waiting for this lock (spacelock.max-waiters is {max})")
}

/// The error sent to waiters when, in a cluster, the node no longer (or not
/// stably) serves the lock's hash slot: resharding moved the key away.
pub const SLOT_MOVED_TRYAGAIN: &str =
    "TRYAGAIN the lock's hash slot is migrating or has moved; retry the WAIT";

/// The error sent to waiters when the server turned into a replica.
pub const REPLICA_UNBLOCKED: &str =
    "UNBLOCKED this server is now a replica; retry the WAIT on the primary";

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str]) -> Result<Option<i64>, ArgError> {
        let v: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        parse_options(&v)
    }

    #[test]
    fn options() {
        assert_eq!(opts(&[]), Ok(None));
        assert_eq!(opts(&["WAIT", "0"]), Ok(Some(0)));
        assert_eq!(opts(&["wait", "250"]), Ok(Some(250)));
        assert_eq!(opts(&["WAIT"]), Err(ArgError::MissingValue));
        assert_eq!(opts(&["WAIT", "-1"]), Err(ArgError::TimeoutInvalid));
        assert_eq!(opts(&["WAIT", "1.5"]), Err(ArgError::TimeoutInvalid));
        assert_eq!(opts(&["WAIT", "x"]), Err(ArgError::TimeoutInvalid));
        assert_eq!(
            opts(&["WAIT", "1", "WAIT", "2"]),
            Err(ArgError::RepeatedOption)
        );
        assert_eq!(opts(&["NOWAIT", "1"]), Err(ArgError::UnknownOption));
        assert_eq!(opts(&["WAIT", "1", "PX"]), Err(ArgError::UnknownOption));
        assert!(too_many_waiters(3).starts_with("ERR "));
        assert!(REPLICA_UNBLOCKED.starts_with("UNBLOCKED "));
        assert!(SLOT_MOVED_TRYAGAIN.starts_with("TRYAGAIN "));
    }
}
