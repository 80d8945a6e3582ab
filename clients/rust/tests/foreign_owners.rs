//! Owner ids and foreign owners, through the client: owner ids are UUID v4,
//! and another owner (or a guessed owner id) can neither refresh nor release
//! a lock. A real server with the module; nothing is mocked.

use spacelock_testkit as kit;

use std::collections::HashSet;
use std::time::Duration;

use kit::Server;
use spacelock_client::{AcquireReply, Options, Outcome, RefreshReply, ReleaseReply, SpaceLock};

#[kit::test]
async fn owner_ids_are_uuid_v4_and_foreign_owners_cannot_touch_a_lock() {
    let server = Server::new();
    let mk = |ttl: Duration| {
        let client = server.client();
        async move {
            SpaceLock::new(
                client.get_multiplexed_async_connection().await.unwrap(),
                Options::default().ttl(ttl),
            )
        }
    };
    let a = mk(Duration::from_secs(5)).await;
    let b = mk(Duration::from_secs(60)).await;
    let mut owners = HashSet::new();
    for locks in [
        &a,
        &b,
        &mk(Duration::from_secs(1)).await,
        &mk(Duration::from_secs(1)).await,
    ] {
        let id = uuid::Uuid::parse_str(locks.owner())
            .unwrap_or_else(|e| panic!("{}: {e}", locks.owner()));
        assert_eq!(id.get_version(), Some(uuid::Version::Random), "{id}");
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{id}");
        assert_eq!(id.hyphenated().to_string(), locks.owner(), "canonical form");
        assert!(owners.insert(id), "owner id {id} repeated");
    }
    assert_eq!(a.clone().owner(), a.owner(), "clones share the owner");

    let name = "guarded";
    let key = a.key(name);
    let AcquireReply::Acquired { token } = a.acquire(name).await.unwrap() else {
        panic!("not acquired");
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut con = server.conn();
    let before = kit::snapshot(&mut con);
    // b (another owner, a 60 s ttl) can neither refresh nor release it.
    assert_eq!(b.refresh(name).await.unwrap(), RefreshReply::NotOwner);
    assert_eq!(b.release(name).await.unwrap(), ReleaseReply::NotOwner);
    assert_eq!(
        b.with_space_lock(name, |_| async {}).await.unwrap(),
        Outcome::Skipped(spacelock_client::Skipped::LockHeld)
    );
    // Nor can raw commands with guessed owners.
    // (An empty owner is refused outright.)
    let empty: redis::RedisResult<i64> = redis::cmd("SPACELOCK.RELEASE")
        .arg(&key)
        .arg("")
        .query(&mut con);
    assert!(empty.is_err(), "{empty:?}");
    for guess in [
        b.owner(),
        "*",
        "spacelock",
        &a.owner()[..35],
        &a.owner().to_uppercase(),
    ] {
        let r: i64 = redis::cmd("SPACELOCK.REFRESH")
            .arg(&key)
            .arg(guess)
            .arg(60_000)
            .query(&mut con)
            .unwrap();
        assert_eq!(r, 0, "refresh with {guess:?}");
        let r: i64 = redis::cmd("SPACELOCK.RELEASE")
            .arg(&key)
            .arg(guess)
            .query(&mut con)
            .unwrap();
        assert_eq!(r, 0, "release with {guess:?}");
    }
    // The key, its fence counter and both expiries are unchanged.
    assert_eq!(kit::snapshot(&mut con), before);
    let info = a.info(name).await.unwrap().unwrap();
    assert_eq!((info.owner.as_str(), info.token), (a.owner(), token));
    assert!(
        info.ttl.unwrap() <= Duration::from_millis(4_800),
        "{info:?}"
    );
    // The owner still can.
    assert_eq!(a.refresh(name).await.unwrap(), RefreshReply::Refreshed);
    assert_eq!(a.release(name).await.unwrap(), ReleaseReply::Released);
    assert_eq!(a.info(name).await.unwrap(), None);
}

kit::main!();
