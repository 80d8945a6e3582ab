//! `spacelock info KEY`, and the escaping of untrusted bytes (keys, owners)
//! for the terminal.

use std::io::Write;
use std::time::Duration;

use spacelock_client::{LockConnection, LockInfo, LockMode, SpaceLock};

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
    mode: LockMode,
    holders: Vec<One<'a>>,
    waiters: u64,
}

/// One holder: the only one of an exclusive lock, one of many otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
struct One<'a> {
    owner: &'a [u8],
    ttl: Option<Duration>,
    token: u64,
}

impl<'a> Holder<'a> {
    fn of(i: &'a LockInfo) -> Self {
        let holders = if i.holders.is_empty() {
            vec![One {
                owner: &i.owner_bytes,
                ttl: i.ttl,
                token: i.token,
            }]
        } else {
            i.holders
                .iter()
                .map(|h| One {
                    owner: &h.owner_bytes,
                    ttl: h.ttl,
                    token: h.token,
                })
                .collect()
        };
        Holder {
            mode: i.mode,
            holders,
            waiters: i.waiters,
        }
    }
}

/// The mode's word and a counted lock's limit, as the module's INFO says them.
fn mode_words(mode: LockMode) -> (&'static str, u32) {
    match mode {
        LockMode::Shared => ("shared", 0),
        LockMode::Limit(n) => ("limit", n),
        _ => ("exclusive", 1),
    }
}

fn ttl_text(ttl: Option<Duration>) -> String {
    ttl.map_or_else(|| "none (no expiry)".to_string(), format_duration)
}

fn to_text(key: &str, state: Option<&Holder<'_>>) -> String {
    let Some(h) = state else {
        return "free\n".to_string();
    };
    let mut out = format!("held\nkey: {}\n", escape(key.as_bytes()));
    match (h.mode, h.holders.as_slice()) {
        (LockMode::Exclusive, [one]) => out.push_str(&format!(
            "owner: {}\nttl: {}\ntoken: {}\n",
            escape(one.owner),
            ttl_text(one.ttl),
            one.token
        )),
        (mode, all) => {
            let (word, limit) = mode_words(mode);
            out.push_str(&format!("mode: {word}\n"));
            if limit > 0 {
                out.push_str(&format!("limit: {limit}\n"));
            }
            out.push_str(&format!("holders: {}\n", all.len()));
            for one in all {
                out.push_str(&format!(
                    "  owner: {}  ttl: {}  token: {}\n",
                    escape(one.owner),
                    ttl_text(one.ttl),
                    one.token
                ));
            }
        }
    }
    out.push_str(&format!("waiters: {}\n", h.waiters));
    out
}

fn one_json(one: &One<'_>) -> String {
    format!(
        "\"owner\":{},\"ttl_ms\":{},\"token\":{}",
        json_string(&String::from_utf8_lossy(one.owner)),
        one.ttl
            .map_or_else(|| "null".to_string(), |t| t.as_millis().to_string()),
        one.token
    )
}

/// The exclusive shape is unchanged (`owner`, `ttl_ms`, `token` at the top);
/// every shape adds `mode`, `limit` and `holders`, and a shared or counted
/// lock's top-level holder is its newest, as in the clients' `info`.
fn to_json(key: &str, state: Option<&Holder<'_>>) -> String {
    let Some(h) = state else {
        return format!("{{\"key\":{},\"held\":false}}", json_string(key));
    };
    let Some(newest) = h.holders.last() else {
        return format!("{{\"key\":{},\"held\":false}}", json_string(key));
    };
    let (word, limit) = mode_words(h.mode);
    let holders: Vec<String> = h
        .holders
        .iter()
        .map(|one| format!("{{{}}}", one_json(one)))
        .collect();
    format!(
        "{{\"key\":{},\"held\":true,{},\"waiters\":{},\"mode\":\"{word}\",\"limit\":{limit},\"holders\":[{}]}}",
        json_string(key),
        one_json(newest),
        h.waiters,
        holders.join(",")
    )
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

    fn one(owner: &[u8], token: u64) -> One<'_> {
        One {
            owner,
            ttl: Some(Duration::from_millis(1500)),
            token,
        }
    }

    fn held(owner: &[u8]) -> Holder<'_> {
        Holder {
            mode: LockMode::Exclusive,
            holders: vec![one(owner, 7)],
            waiters: 2,
        }
    }

    #[test]
    fn json_shapes() {
        assert_eq!(to_json("k", None), r#"{"key":"k","held":false}"#);
        assert_eq!(
            to_json("k", Some(&held(b"host:1:\"x\"\n"))),
            r#"{"key":"k","held":true,"owner":"host:1:\"x\"\n","ttl_ms":1500,"token":7,"waiters":2,"mode":"exclusive","limit":1,"holders":[{"owner":"host:1:\"x\"\n","ttl_ms":1500,"token":7}]}"#
        );
        let no_ttl = Holder {
            holders: vec![One {
                ttl: None,
                ..one(b"o", 1)
            }],
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
    fn shared_and_counted_shapes() {
        let readers = Holder {
            mode: LockMode::Shared,
            holders: vec![one(b"r1", 3), one(b"r2", 4)],
            waiters: 1,
        };
        let t = to_text("k", Some(&readers));
        assert_eq!(
            t,
            "held\nkey: k\nmode: shared\nholders: 2\n  owner: r1  ttl: 1.5s  token: 3\n  owner: r2  ttl: 1.5s  token: 4\nwaiters: 1\n"
        );
        let j = to_json("k", Some(&readers));
        assert!(j.starts_with(r#"{"key":"k","held":true,"owner":"r2","ttl_ms":1500,"token":4,"waiters":1,"mode":"shared","limit":0,"holders":[{"owner":"r1""#), "{j}");
        let slots = Holder {
            mode: LockMode::Limit(3),
            ..readers
        };
        assert!(to_text("k", Some(&slots)).contains("mode: limit\nlimit: 3\nholders: 2\n"));
        assert!(to_json("k", Some(&slots)).contains(r#""mode":"limit","limit":3,"#));
    }

    #[test]
    fn text_escapes_what_a_terminal_would_act_on() {
        let t = to_text("k\x1b[2J", Some(&held(b"o\x00w\xffn\n\x07")));
        assert!(t.contains("key: k\\x1b[2J\n"), "{t}");
        assert!(t.contains("owner: o\\x00w\\xffn\\n\\x07\n"), "{t}");
    }
}
