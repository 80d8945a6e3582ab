//! `spacelock info KEY`.

use spacelock_client::{LockConnection, LockInfo, SpaceLock};

use crate::duration::format_duration;
use crate::{conn, Say};

/// Prints the holder of `name` (or "free") and returns the exit code.
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
            if json {
                println!("{}", to_json(&key, state.as_ref()));
            } else {
                print!("{}", to_text(&key, state.as_ref()));
            }
            0
        }
        Err(e) => {
            let (msg, code) = conn::describe_error(&e, url);
            say.error(msg);
            code
        }
    }
}

fn to_text(key: &str, state: Option<&LockInfo>) -> String {
    match state {
        None => "free\n".to_string(),
        Some(i) => {
            let ttl = i
                .ttl
                .map_or_else(|| "none (no expiry)".to_string(), format_duration);
            format!(
                "held\nkey: {key}\nowner: {}\nttl: {ttl}\ntoken: {}\nwaiters: {}\n",
                i.owner, i.token, i.waiters
            )
        }
    }
}

fn to_json(key: &str, state: Option<&LockInfo>) -> String {
    match state {
        None => format!("{{\"key\":{},\"held\":false}}", json_string(key)),
        Some(i) => format!(
            "{{\"key\":{},\"held\":true,\"owner\":{},\"ttl_ms\":{},\"token\":{},\"waiters\":{}}}",
            json_string(key),
            json_string(&i.owner),
            i.ttl
                .map_or_else(|| "null".to_string(), |t| t.as_millis().to_string()),
            i.token,
            i.waiters
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
    use std::time::Duration;

    fn held() -> LockInfo {
        LockInfo {
            owner: "host:1:\"x\"\n".to_string(),
            ttl: Some(Duration::from_millis(1500)),
            token: 7,
            waiters: 2,
        }
    }

    #[test]
    fn json_shapes() {
        assert_eq!(to_json("k", None), r#"{"key":"k","held":false}"#);
        assert_eq!(
            to_json("k", Some(&held())),
            r#"{"key":"k","held":true,"owner":"host:1:\"x\"\n","ttl_ms":1500,"token":7,"waiters":2}"#
        );
        let no_ttl = LockInfo {
            ttl: None,
            ..held()
        };
        assert!(to_json("k", Some(&no_ttl)).contains(r#""ttl_ms":null"#));
        assert_eq!(json_string("a\u{1}b\\"), r#""a\u0001b\\""#);
    }

    #[test]
    fn text_shapes() {
        assert_eq!(to_text("k", None), "free\n");
        let t = to_text("k", Some(&held()));
        assert!(t.starts_with("held\nkey: k\n"), "{t}");
        assert!(t.contains("ttl: 1.5s\ntoken: 7\nwaiters: 2\n"), "{t}");
    }
}
