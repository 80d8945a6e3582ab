//! `Lease::is_lost` checks the local deadline itself: a holder whose runtime
//! is starved (the heartbeat task cannot run) still learns, the moment it
//! looks, that its lease may have expired on the server.

use spacelock_testkit as kit;

use std::time::Duration;

use kit::Server;
use redis::aio::ConnectionManager;
use spacelock_client::{Options, Outcome, SpaceLock};

// current_thread runtime: while the body blocks the thread, no other task
// (the heartbeat included) can run.
#[kit::test(current_thread)]
async fn is_lost_sees_the_deadline_even_when_the_heartbeat_is_starved() {
    let server = Server::new();
    let conn = ConnectionManager::new(server.client()).await.unwrap();
    let locks = SpaceLock::new(conn, Options::default().ttl(Duration::from_millis(200)));
    let outcome = locks
        .with_space_lock("starved", |lease| async move {
            assert!(!lease.is_lost(), "fresh lease");
            // Block the only runtime thread past the ttl: no refresh runs.
            std::thread::sleep(Duration::from_millis(300));
            let lost_now = lease.is_lost();
            assert_eq!(
                lease.lost_reason(),
                Some(spacelock_client::LostReason::Expired)
            );
            // And the signal latches: lost() resolves at once, without waiting
            // for the heartbeat to wake.
            let resolved = tokio::time::timeout(Duration::ZERO, lease.lost())
                .await
                .is_ok();
            // The server really let the key go (the same deadline, in wall time).
            let mut con = kit::Server::conn(&server);
            let holder: Option<String> =
                redis::cmd("GET").arg(lease.key()).query(&mut con).unwrap();
            (lost_now, resolved, holder, lease.is_lost())
        })
        .await
        .unwrap();
    let Outcome::Ran((lost_now, resolved, holder, still_lost)) = outcome else {
        panic!("body did not run: {outcome:?}");
    };
    assert!(lost_now, "is_lost() must be true past the local deadline");
    assert!(
        resolved,
        "lost() must resolve once is_lost() saw the deadline"
    );
    assert!(still_lost, "once true, stays true");
    assert_eq!(holder, None, "the server expired the lease too");
}

kit::main!();
