//! Connecting to the server: URL defaults, owner id, single node or cluster.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

/// The URL used when neither `--url`, `$SPACELOCK_URL` nor `$REDIS_URL` is set.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379/";

/// How long an ACQUIRE (without `--wait`) or an INFO may take, retries on a
/// fresh connection included: long enough to wait out a short write pause
/// (`CLIENT PAUSE … WRITE`, `FAILOVER`), short enough for cron.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A response timeout that never fires first: the client library puts its
/// own deadline on every command.
const NO_RESPONSE_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// `--url`, else `$SPACELOCK_URL`, else `$REDIS_URL`, else [`DEFAULT_URL`]
/// (empty variables count as unset).
pub fn resolve_url(flag: Option<&str>) -> String {
    pick_url(
        flag,
        std::env::var("SPACELOCK_URL").ok().as_deref(),
        std::env::var("REDIS_URL").ok().as_deref(),
    )
}

fn pick_url(flag: Option<&str>, spacelock_url: Option<&str>, redis_url: Option<&str>) -> String {
    [flag, spacelock_url, redis_url]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|u| !u.is_empty())
        .unwrap_or(DEFAULT_URL)
        .to_string()
}

/// The URL with any password replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let Some((scheme, rest)) = one.split_once("://") else {
                return one.to_string();
            };
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
                    None => one.to_string(),
                },
                None => one.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A recognisable, unique owner id: `spacelock-cli:HOST:PID:UUID`.
pub fn owner_id() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown-host".to_string());
    let host: String = host.chars().take(64).collect();
    format!(
        "spacelock-cli:{host}:{}:{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    )
}

/// The one-line message (after `spacelock: `) and the exit code for a failed
/// connection: 64 for a URL this binary cannot use, else 69.
pub fn describe_connect_error(e: &redis::RedisError, url: &str) -> (String, i32) {
    let shown = redact(url);
    if e.kind() == redis::ErrorKind::InvalidClientConfig {
        let text = e.to_string();
        let hint = if text.contains("TLS") {
            " (rediss:// needs spacelock built with `--features tls`)"
        } else {
            ""
        };
        return (
            format!("invalid --url {shown}: {text}{hint}"),
            crate::exit::USAGE,
        );
    }
    (
        format!("redis unavailable at {shown}: {e}"),
        crate::exit::UNAVAILABLE,
    )
}

/// The one-line message (after `spacelock: `) and the exit code for a failed
/// lock command: 64 for a ttl the server refuses, 76 for a grant lost before
/// the command could start, else 69.
pub fn describe_error(e: &spacelock_client::Error, url: &str) -> (String, i32) {
    let url = redact(url);
    match e {
        spacelock_client::Error::ModuleNotLoaded { .. } => (
            format!("module not loaded at {url}: {e}"),
            crate::exit::UNAVAILABLE,
        ),
        spacelock_client::Error::Timeout { .. } => (
            format!("redis unavailable at {url}: {e}"),
            crate::exit::UNAVAILABLE,
        ),
        spacelock_client::Error::LockLost { key } => (
            format!(
                "lease lost: {}: the lock was granted but expired before the command could \
                 start (this process or the server was stalled); the command did not run",
                crate::terminal::escape(key.as_bytes())
            ),
            crate::exit::LEASE_LOST,
        ),
        spacelock_client::Error::WaitAofUnavailable { .. } => (
            format!("--wait-aof at {url}: {e}; the command did not run"),
            crate::exit::UNAVAILABLE,
        ),
        spacelock_client::Error::InvalidArgument { reason } => {
            (format!("invalid argument: {reason}"), crate::exit::USAGE)
        }
        spacelock_client::Error::Redis(inner)
            if inner.is_io_error()
                || inner.is_connection_refusal()
                || inner.is_connection_dropped()
                || inner.is_timeout() =>
        {
            (
                format!("redis unavailable at {url}: {inner}"),
                crate::exit::UNAVAILABLE,
            )
        }
        spacelock_client::Error::Redis(inner) if inner.to_string().contains("invalid ttl") => (
            format!("the server refuses --ttl: {inner}"),
            crate::exit::USAGE,
        ),
        spacelock_client::Error::Redis(inner) => (
            format!("redis error at {url}: {inner}"),
            crate::exit::UNAVAILABLE,
        ),
        other => (
            format!("redis error at {url}: {other}"),
            crate::exit::UNAVAILABLE,
        ),
    }
}

/// An open connection plus the client that opens dedicated wait connections.
// Built once per run and moved straight into a `SpaceLock`: the size is irrelevant.
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    /// One server (or a primary), over a reconnecting [`ConnectionManager`].
    Single {
        /// Opens the dedicated connection for a blocking acquire.
        client: redis::Client,
        /// Carries acquires, heartbeats and releases.
        conn: ConnectionManager,
    },
    /// The primary of a Sentinel-monitored service, followed through failovers.
    Sentinel {
        /// Carries acquires, heartbeats and releases; opens the dedicated
        /// connection for a blocking acquire.
        conn: spacelock_client::SentinelConnection,
    },
    /// A Redis Cluster: commands are routed by key.
    Cluster {
        /// Opens the dedicated connection for a blocking acquire.
        client: ClusterClient,
        /// Carries acquires, heartbeats and releases.
        conn: ClusterConnection,
    },
}

/// The scheme of a Sentinel URL.
pub const SENTINEL_SCHEME: &str = "redis+sentinel://";

/// `redis+sentinel://host[:port][,host[:port]…]/service-name`: the
/// Sentinels (port 26379 by default) and the service name.
pub fn parse_sentinel_url(url: &str) -> Result<(Vec<String>, String), redis::RedisError> {
    let bad = |why: &str| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "invalid Sentinel URL",
            format!("{why} (expected {SENTINEL_SCHEME}host:port[,host:port…]/service-name)"),
        ))
    };
    let rest = url
        .strip_prefix(SENTINEL_SCHEME)
        .ok_or_else(|| bad("not a redis+sentinel:// URL"))?;
    let (hosts, service) = rest.split_once('/').ok_or_else(|| bad("no service name"))?;
    let service = service.trim_end_matches('/');
    if service.is_empty() || service.contains(['/', '?', '#']) {
        return Err(bad("the service name must be one path segment"));
    }
    if hosts.contains('@') {
        return Err(bad("credentials in a Sentinel URL are not supported"));
    }
    let mut nodes = Vec::new();
    for host in hosts.split(',').map(str::trim) {
        if host.is_empty() {
            return Err(bad("an empty Sentinel address"));
        }
        let with_port = match host.rsplit_once(':') {
            Some((_, port)) if port.parse::<u16>().is_ok() => host.to_string(),
            Some(_) if !host.starts_with('[') => return Err(bad("a bad port")),
            _ => format!("{host}:26379"),
        };
        nodes.push(format!("redis://{with_port}/"));
    }
    Ok((nodes, service.to_string()))
}

/// Connects, failing within a few seconds if the server is unreachable.
pub async fn connect(url: &str, cluster: bool) -> Result<Backend, redis::RedisError> {
    if url.starts_with(SENTINEL_SCHEME) {
        use redis::sentinel::{SentinelClient, SentinelServerType};
        let (nodes, service) = parse_sentinel_url(url)?;
        let client = SentinelClient::build(nodes, service, None, SentinelServerType::Master)?;
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            spacelock_client::SentinelConnection::new(client),
        )
        .await
        .map_err(|_| {
            redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer from the Sentinels or the primary within 5s",
            ))
        })??;
        return Ok(Backend::Sentinel { conn });
    }
    if cluster {
        let nodes: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let client = ClusterClient::builder(nodes)
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(NO_RESPONSE_TIMEOUT)
            .retries(2)
            .build()?;
        let conn = client.get_async_connection().await?;
        return Ok(Backend::Cluster { client, conn });
    }
    let client = redis::Client::open(url)?;
    // No response timeout: a write pause holds the lock commands until it
    // ends, and the client puts its own deadline on each of them.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(None)
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    let conn = ConnectionManager::new_with_config(client.clone(), config).await?;
    Ok(Backend::Single { client, conn })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_precedence() {
        let (f, s, r) = (Some("redis://f/"), Some("redis://s/"), Some("redis://r/"));
        assert_eq!(pick_url(f, s, r), "redis://f/");
        assert_eq!(pick_url(None, s, r), "redis://s/");
        assert_eq!(pick_url(None, Some(""), r), "redis://r/");
        assert_eq!(pick_url(None, None, r), "redis://r/");
        assert_eq!(pick_url(None, None, None), DEFAULT_URL);
        assert_eq!(pick_url(None, Some(" "), Some("")), DEFAULT_URL);
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("redis://:hunter2@db:6379/0"),
            "redis://:***@db:6379/0"
        );
        assert_eq!(redact("rediss://app:s3cr@t@db/"), "rediss://app:***@db/");
        assert_eq!(redact("redis://db:6379/"), "redis://db:6379/");
        assert_eq!(
            redact("redis://a:p@n1:7000,redis://a:p@n2:7001"),
            "redis://a:***@n1:7000,redis://a:***@n2:7001"
        );
        assert_eq!(redact("unix:///tmp/r.sock"), "unix:///tmp/r.sock");
        assert_eq!(redact("redis://app@db/"), "redis://app@db/");
    }

    #[test]
    fn sentinel_urls() {
        let (nodes, service) =
            parse_sentinel_url("redis+sentinel://10.0.0.1:26380,s2,s3:1/mymaster").unwrap();
        assert_eq!(
            nodes,
            [
                "redis://10.0.0.1:26380/",
                "redis://s2:26379/",
                "redis://s3:1/"
            ]
        );
        assert_eq!(service, "mymaster");
        for bad in [
            "redis+sentinel://h:1",
            "redis+sentinel://h:1/",
            "redis+sentinel:///svc",
            "redis+sentinel://h:x/svc",
            "redis+sentinel://a:p@h:1/svc",
            "redis+sentinel://h:1/svc/0",
            "redis://h:1/svc",
        ] {
            let e = parse_sentinel_url(bad).unwrap_err();
            assert_eq!(e.kind(), redis::ErrorKind::InvalidClientConfig, "{bad}");
        }
    }

    #[test]
    fn owner_ids_are_unique_and_short() {
        let (a, b) = (owner_id(), owner_id());
        assert_ne!(a, b);
        assert!(a.starts_with("spacelock-cli:"));
        assert!(a.len() < 200, "{a}");
    }
}
