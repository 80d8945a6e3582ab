//! A primary and its replicas: linking one to a primary, waiting until the
//! link is up and until writes have reached the replicas, and promoting a
//! replica (which opens a token term).

use std::time::Duration;

use redis::Connection;

use crate::{now_ms, stat, term_start_ms, wait_until, Server, ServerBuilder};

impl ServerBuilder {
    /// Starts as a replica of `primary` (`replicaof 127.0.0.1 PORT`).
    pub fn replica_of(self, primary: &Server) -> Self {
        self.arg("replicaof", &format!("127.0.0.1 {}", primary.port))
    }
}

/// A replica of `primary` (default settings), its link up, and a write
/// made on the primary and acknowledged by it, so that the primary's
/// `WAIT` counts it from the first grant on. (A `WAIT` on a connection
/// that wrote nothing counts every attached replica at once, before the
/// replica has acknowledged anything.)
///
/// # Panics
/// If the link does not come up, or the write is not acknowledged, within
/// the bounds of [`until_link_up`] and [`sync_replicas`].
pub fn attached_replica(primary: &Server) -> Server {
    let replica = ServerBuilder::new().replica_of(primary).start();
    until_link_up(&mut replica.conn(), &replica);
    let mut con = primary.conn();
    let _: () = redis::cmd("SET")
        .arg("sync")
        .arg(1)
        .query(&mut con)
        .unwrap();
    sync_replicas(&mut con, 1);
    replica
}

/// `REPLICAOF 127.0.0.1 port` on the server behind `con`.
pub fn replicaof(con: &mut Connection, port: u16) {
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(port)
        .query(con)
        .unwrap();
}

/// Waits until the replica behind `con` reports its link to the primary up.
///
/// # Panics
/// If that does not happen within 15 s; the message holds `replica`'s log.
pub fn until_link_up(con: &mut Connection, replica: &Server) {
    assert!(
        wait_until(Duration::from_secs(15), || {
            crate::info_text(con, "replication", "master_link_status").as_deref() == Some("up")
        }),
        "replica never connected:\n{}",
        replica.log()
    );
}

/// Waits until every write so far on the primary behind `primary` reached
/// `replicas` replicas (`WAIT replicas 10000`).
///
/// # Panics
/// If fewer acknowledge within 10 s.
pub fn sync_replicas(primary: &mut Connection, replicas: i64) {
    let acked: i64 = redis::cmd("WAIT")
        .arg(replicas)
        .arg(10_000)
        .query(primary)
        .unwrap();
    assert_eq!(acked, replicas, "replicas did not acknowledge");
}

/// `REPLICAOF NO ONE` on `replica`, checking that the promotion opened a
/// token term (counted, started no earlier than the call, and logged).
/// Returns the connection it was sent on.
pub fn promote(replica: &Server) -> Connection {
    let mut r = replica.conn();
    let opened = stat(&mut r, "terms_opened");
    let before = now_ms();
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut r)
        .unwrap();
    assert_eq!(stat(&mut r, "terms_opened"), opened + 1);
    assert!(term_start_ms(&mut r) >= before);
    assert!(replica
        .log()
        .contains("spacelock: this server is now a primary; opened a token term at"));
    r
}
