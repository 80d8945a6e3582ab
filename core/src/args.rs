//! Argument validation: pure functions, so every malformed input is rejected
//! before any key is touched (bad input changes nothing).

use std::fmt;

/// Why an argument was rejected. `Display` gives the full error reply,
/// including its `ERR` code word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgError {
    /// The ttl is not a base-10 integer (Redis `string2ll` rules: no sign
    /// other than `-`, no leading zeros, no spaces).
    TtlNotInteger,
    /// The ttl is zero or negative.
    TtlNotPositive,
    /// The ttl is above `spacelock.max-ttl`.
    TtlAboveMax(i64),
    /// `now + ttl` does not fit in a signed 64-bit millisecond timestamp.
    TtlOverflow,
    /// The owner is the empty string.
    OwnerEmpty,
    /// The owner is longer than `spacelock.max-owner-len`.
    OwnerTooLong(i64),
    /// A WAIT timeout that is not an integer ≥ 0.
    TimeoutInvalid,
    /// A fencing token argument that is not an integer ≥ 0.
    TokenInvalid,
    /// An option that is not recognised.
    UnknownOption,
    /// An option given twice.
    RepeatedOption,
    /// An option without its value.
    MissingValue,
    /// A `LIMIT` that is not an integer from 1 to the maximum it carries.
    LimitInvalid(u32),
    /// `SHARED` and `LIMIT` in one request.
    ModeConflict,
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgError::TtlNotInteger => f.write_str("ERR invalid ttl: not a base-10 integer"),
            ArgError::TtlNotPositive => {
                f.write_str("ERR invalid ttl: must be a positive number of milliseconds")
            }
            ArgError::TtlAboveMax(max) => {
                write!(f, "ERR invalid ttl: above spacelock.max-ttl ({max} ms)")
            }
            ArgError::TtlOverflow => {
                f.write_str("ERR invalid ttl: the absolute expiry time would overflow")
            }
            ArgError::OwnerEmpty => f.write_str("ERR invalid owner: must not be empty"),
            ArgError::OwnerTooLong(max) => write!(
                f,
                "ERR invalid owner: longer than spacelock.max-owner-len ({max} bytes)"
            ),
            ArgError::TimeoutInvalid => f.write_str(
                "ERR invalid WAIT timeout: must be a base-10 integer >= 0 (0 waits forever)",
            ),
            ArgError::TokenInvalid => {
                f.write_str("ERR invalid token: must be a base-10 integer >= 0")
            }
            ArgError::UnknownOption => f.write_str("ERR syntax error: unknown option"),
            ArgError::RepeatedOption => f.write_str("ERR syntax error: option given twice"),
            ArgError::MissingValue => f.write_str("ERR syntax error: option needs a value"),
            ArgError::LimitInvalid(max) => write!(
                f,
                "ERR invalid LIMIT: must be a base-10 integer from 1 to {max}"
            ),
            ArgError::ModeConflict => {
                f.write_str("ERR syntax error: SHARED and LIMIT cannot be combined")
            }
        }
    }
}

/// Parses a base-10 signed 64-bit integer with the same strictness as Redis'
/// `string2ll`: optional leading `-`, digits only, no leading zeros, no
/// surrounding spaces, no overflow.
pub fn parse_i64(bytes: &[u8]) -> Option<i64> {
    let (neg, digits) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some(_) => (false, bytes),
        None => return None,
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    if digits[0] == b'0' {
        // "0" is fine, "-0" and "007" are not (Redis rejects both).
        return if digits.len() == 1 && !neg {
            Some(0)
        } else {
            None
        };
    }
    // Accumulate negatively so that i64::MIN parses without overflow.
    let mut acc: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        acc = acc.checked_mul(10)?.checked_sub(i64::from(d - b'0'))?;
    }
    if neg {
        Some(acc)
    } else {
        acc.checked_neg()
    }
}

/// Validates a ttl argument against `max_ttl` and returns it in ms.
pub fn parse_ttl(bytes: &[u8], max_ttl: i64) -> Result<i64, ArgError> {
    let ttl = parse_i64(bytes).ok_or(ArgError::TtlNotInteger)?;
    if ttl <= 0 {
        return Err(ArgError::TtlNotPositive);
    }
    if ttl > max_ttl {
        return Err(ArgError::TtlAboveMax(max_ttl));
    }
    Ok(ttl)
}

/// The absolute expiry `now_ms + ttl_ms`, or an error when it would overflow.
pub fn expire_at(now_ms: i64, ttl_ms: i64) -> Result<i64, ArgError> {
    now_ms.checked_add(ttl_ms).ok_or(ArgError::TtlOverflow)
}

/// Validates an owner id: non-empty and at most `max_len` bytes. Any bytes are
/// allowed (NUL, CR/LF, non-UTF-8).
pub fn check_owner(owner: &[u8], max_len: i64) -> Result<(), ArgError> {
    if owner.is_empty() {
        return Err(ArgError::OwnerEmpty);
    }
    if owner.len() as u64 > max_len.max(0) as u64 {
        return Err(ArgError::OwnerTooLong(max_len));
    }
    Ok(())
}

/// Parses a WAIT timeout: an integer ≥ 0 (0 means no limit).
pub fn parse_timeout(bytes: &[u8]) -> Result<i64, ArgError> {
    match parse_i64(bytes) {
        Some(t) if t >= 0 => Ok(t),
        _ => Err(ArgError::TimeoutInvalid),
    }
}

/// Parses a fencing token argument (SPACELOCK.CHECK): an integer ≥ 0.
pub fn parse_token_arg(bytes: &[u8]) -> Result<i64, ArgError> {
    match parse_i64(bytes) {
        Some(t) if t >= 0 => Ok(t),
        _ => Err(ArgError::TokenInvalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_i64_follows_string2ll() {
        let cases: &[(&[u8], Option<i64>)] = &[
            (b"0", Some(0)),
            (b"1", Some(1)),
            (b"30000", Some(30_000)),
            (b"-5", Some(-5)),
            (b"9223372036854775807", Some(i64::MAX)),
            (b"-9223372036854775808", Some(i64::MIN)),
            (b"9223372036854775808", None),
            (b"-9223372036854775809", None),
            (b"99999999999999999999", None),
            (b"", None),
            (b"-", None),
            (b"-0", None),
            (b"007", None),
            (b"+5", None),
            (b" 5", None),
            (b"5 ", None),
            (b"1e3", None),
            (b"1.5", None),
            (b"0x10", None),
            (b"\x001", None),
            (b"\xff", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_i64(input), *want, "input {input:?}");
        }
    }

    #[test]
    fn ttl_rules() {
        let max = 86_400_000;
        assert_eq!(parse_ttl(b"1", max), Ok(1));
        assert_eq!(parse_ttl(b"86400000", max), Ok(max));
        assert_eq!(parse_ttl(b"86400001", max), Err(ArgError::TtlAboveMax(max)));
        assert_eq!(parse_ttl(b"0", max), Err(ArgError::TtlNotPositive));
        assert_eq!(parse_ttl(b"-1", max), Err(ArgError::TtlNotPositive));
        assert_eq!(parse_ttl(b"abc", max), Err(ArgError::TtlNotInteger));
        assert_eq!(parse_ttl(b"1.0", max), Err(ArgError::TtlNotInteger));
    }

    #[test]
    fn expiry_overflow_is_an_error() {
        assert_eq!(expire_at(1_000, 500), Ok(1_500));
        assert_eq!(expire_at(i64::MAX - 1, 1), Ok(i64::MAX));
        assert_eq!(expire_at(i64::MAX - 1, 2), Err(ArgError::TtlOverflow));
    }

    #[test]
    fn owner_rules() {
        assert_eq!(check_owner(b"a", 1), Ok(()));
        assert_eq!(check_owner(b"\x00\r\n\xff", 4), Ok(()));
        assert_eq!(check_owner(b"", 10), Err(ArgError::OwnerEmpty));
        assert_eq!(check_owner(b"ab", 1), Err(ArgError::OwnerTooLong(1)));
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout(b"0"), Ok(0));
        assert_eq!(parse_timeout(b"250"), Ok(250));
        assert_eq!(parse_timeout(b"-1"), Err(ArgError::TimeoutInvalid));
        assert_eq!(parse_timeout(b"x"), Err(ArgError::TimeoutInvalid));
        assert_eq!(parse_token_arg(b"0"), Ok(0));
        assert_eq!(parse_token_arg(b"9223372036854775807"), Ok(i64::MAX));
        assert_eq!(parse_token_arg(b"-1"), Err(ArgError::TokenInvalid));
        assert_eq!(
            parse_token_arg(b"18446744073709551615"),
            Err(ArgError::TokenInvalid)
        );
        assert_eq!(parse_token_arg(b""), Err(ArgError::TokenInvalid));
    }

    #[test]
    fn every_message_has_an_error_code() {
        let all = [
            ArgError::TtlNotInteger,
            ArgError::TtlNotPositive,
            ArgError::TtlAboveMax(5),
            ArgError::TtlOverflow,
            ArgError::OwnerEmpty,
            ArgError::OwnerTooLong(5),
            ArgError::TimeoutInvalid,
            ArgError::TokenInvalid,
            ArgError::UnknownOption,
            ArgError::RepeatedOption,
            ArgError::MissingValue,
        ];
        for e in all {
            let msg = e.to_string();
            assert!(msg.starts_with("ERR "), "{msg}");
            assert!(!msg.contains('\r') && !msg.contains('\n'));
        }
    }
}
