//! The fenced resource: a plain server that keeps, per key, the highest
//! token it has seen and the list of writes it accepted. A write is
//! accepted iff its token is at least the highest seen (the check a
//! resource that knows tokens makes; compare `FENCED_WRITE_SCRIPT` of the
//! Node client, which makes the same decision against the lock itself).

use crate::history::Line;

/// KEYS: highest, log, sequence; ARGV: token (zero-padded to 20 digits, so
/// that string order is number order), writer.
pub const SCRIPT: &str = r"
local high = redis.call('GET', KEYS[1])
if high and ARGV[1] < high then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
local seq = redis.call('INCR', KEYS[3])
redis.call('RPUSH', KEYS[2], seq .. ' ' .. ARGV[1] .. ' ' .. ARGV[2])
return 1
";

/// The keys of `lock_key`'s fence: (highest, log, sequence).
pub fn keys(lock_key: &str) -> [String; 3] {
    [
        format!("fence:high:{lock_key}"),
        format!("fence:log:{lock_key}"),
        "fence:seq".to_string(),
    ]
}

/// The fenced write: whether it was accepted.
pub async fn write<C: redis::aio::ConnectionLike>(
    con: &mut C,
    lock_key: &str,
    token: u64,
    writer: &str,
) -> redis::RedisResult<bool> {
    let [h, l, s] = keys(lock_key);
    let n: i64 = redis::cmd("EVAL")
        .arg(SCRIPT)
        .arg(3)
        .arg(h)
        .arg(l)
        .arg(s)
        .arg(format!("{token:020}"))
        .arg(writer)
        .query_async(con)
        .await?;
    Ok(n == 1)
}

/// The accepted writes of `lock_key`, as history lines.
pub fn dump(con: &mut redis::Connection, lock_key: &str) -> redis::RedisResult<Vec<Line>> {
    let [_, l, _] = keys(lock_key);
    let items: Vec<String> = redis::cmd("LRANGE").arg(l).arg(0).arg(-1).query(con)?;
    Ok(items
        .iter()
        .filter_map(|item| {
            let mut it = item.splitn(3, ' ');
            let seq: i64 = it.next()?.parse().ok()?;
            let token: u64 = it.next()?.parse().ok()?;
            let w = it.next()?.to_string();
            Some(
                Line::new("accepted", 0, "fenced")
                    .with("key", lock_key)
                    .with("token", token)
                    .with("seq", seq)
                    .with("w", w),
            )
        })
        .collect())
}
