//! `spacelock info KEY`, and the escaping of untrusted bytes (keys, owners)
//! for the terminal.

use std::io::Write;
use std::time::Duration;

use spacelock_client::{LockConnection, LockInfo, SpaceLock};

use crate::duration::format_duration;
use crate::terminal::escape;
use crate::{conn, exit, Say};

/// Prints the holder of `name` (or "free") and returns the exit code. A
/// closed stdout (`spacelock info K | head -0`) ends it quietly with 0.
pub async fn info<C: LockConnection>(
    locks: &SpaceLock<C>,
    name: &str,
    json: bool,
    url: &str,
    say: Say,
) -> i32 {
    let key = locks.key(name);
    match locks.info(name).await {
        Ok(state) => {
            let holder = state.as_ref().map(Holder::of);
            let text = if json {
                to_json(&key, holder.as_ref()) + "\n"
            } else {
                to_text(&key, holder.as_ref())
            };
            let mut out = std::io::stdout().lock();
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => 0,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
                Err(e) => {
                    say.error(format_args!("cannot write to stdout: {e}"));
                    exit::IO_ERROR
                }
            }
        }
        Err(e) => {
            let (msg, code) = conn::describe_error(&e, url);
            say.error(msg);
            code
        }
    }
}

/// What `info` shows of a held lock.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder<'a> {
    owner: &'a [u8],
    ttl: Option<Duration>,
    token: u64,
    waiters: u64,
}

impl<'a> Holder<'a> {
    fn of(i: &'a LockInfo) -> Self {
        Holder {
            owner: &i.owner_bytes,
            ttl: i.ttl,
            token: i.token,
            waiters: i.waiters,
        }
    }
}

fn to_text(key: &str, state: Option<&Holder<'_>>) -> String {
    match state {
        None => "free\n".to_string(),
        Some(h) => {
            let ttl = h
                .ttl
                .map_or_else(|| "none (no expiry)".to_string(), format_duration);
            format!(
                "held\nkey: {}\nowner: {}\nttl: {ttl}\ntoken: {}\nwaiters: {}\n",
                escape(key.as_bytes()),
                escape(h.owner),
                h.token,
                h.waiters
            )
        }
    }
}

fn to_json(key: &str, state: Option<&Holder<'_>>) -> String {
    match state {
        None => format!("{{\"key\":{},\"held\":false}}", json_string(key)),
        Some(h) => format!(
            "{{\"key\":{},\"held\":true,\"owner\":{},\"ttl_ms\":{},\"token\":{},\"waiters\":{}}}",
            json_string(key),
            json_string(&String::from_utf8_lossy(h.owner)),
            h.ttl
                .map_or_else(|| "null".to_string(), |t| t.as_millis().to_string()),
            h.token,
            h.waiters
        ),
    }
}

/// A JSON string literal (RFC 8259 escaping).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(owner: &[u8]) -> Holder<'_> {
        Holder {
            owner,
            ttl: Some(Duration::from_millis(1500)),
            token: 7,
            waiters: 2,
        }
    }

    #[test]
    fn json_shapes() {
        assert_eq!(to_json("k", None), r#"{"key":"k","held":false}"#);
        assert_eq!(
            to_json("k", Some(&held(b"host:1:\"x\"\n"))),
            r#"{"key":"k","held":true,"owner":"host:1:\"x\"\n","ttl_ms":1500,"token":7,"waiters":2}"#
        );
        let no_ttl = Holder {
            ttl: None,
            ..held(b"o")
        };
        assert!(to_json("k", Some(&no_ttl)).contains(r#""ttl_ms":null"#));
        assert_eq!(json_string("a\u{1}b\\"), r#""a\u0001b\\""#);
        assert!(to_json("k", Some(&held(b"a\xffb"))).contains("\"a\u{fffd}b\""));
    }

    #[test]
    fn text_shapes() {
        assert_eq!(to_text("k", None), "free\n");
        let t = to_text("k", Some(&held(b"me")));
        assert!(t.starts_with("held\nkey: k\nowner: me\n"), "{t}");
        assert!(t.contains("ttl: 1.5s\ntoken: 7\nwaiters: 2\n"), "{t}");
    }

    #[test]
    fn text_escapes_what_a_terminal_would_act_on() {
        let t = to_text("k\x1b[2J", Some(&held(b"o\x00w\xffn\n\x07")));
        assert!(t.contains("key: k\\x1b[2J\n"), "{t}");
        assert!(t.contains("owner: o\\x00w\\xffn\\n\\x07\n"), "{t}");
    }
}
