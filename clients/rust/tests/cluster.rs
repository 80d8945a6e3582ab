//! `SpaceLock` over a cluster connection: three masters with the module,
//! each command routed by its key, refreshes pipelined per slot.

use spacelock_testkit as kit;

use std::time::Duration;

use kit::{keyslot, Cluster};
use redis::cluster::ClusterClient;
use spacelock_client::{Options, Outcome, SpaceLock};

#[kit::test]
async fn leases_on_every_node_are_held_and_refreshed() {
    let cluster = Cluster::start(3);
    let client = ClusterClient::new(cluster.urls()).unwrap();
    let conn = client.get_async_connection().await.unwrap();
    let locks = SpaceLock::new(conn, Options::default().ttl(Duration::from_millis(300)))
        .with_wait_connector(client.clone());
    let mut any = cluster.nodes[0].conn();

    // 30 names spread over the three nodes, held at once for > 3 ttl.
    let names: Vec<String> = (0..30).map(|i| format!("space-{i}")).collect();
    let mut per_node = [0usize; 3];
    for n in &names {
        per_node[cluster.owner_of(keyslot(&mut any, locks.key(n)))] += 1;
    }
    assert!(per_node.iter().all(|&c| c > 0), "spread: {per_node:?}");

    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel(names.len());
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for name in names.clone() {
        let (locks, started_tx, mut done_rx) = (locks.clone(), started_tx.clone(), done_rx.clone());
        tasks.push(tokio::spawn(async move {
            locks
                .with_space_lock(&name, |lease| async move {
                    started_tx.send(()).await.unwrap();
                    // Held for more than three ttls (the heartbeat at work),
                    // and until the checks below are done.
                    tokio::time::sleep(Duration::from_millis(1000)).await;
                    done_rx.wait_for(|done| *done).await.unwrap();
                    (lease.token(), lease.is_lost())
                })
                .await
                .unwrap()
        }));
    }
    for _ in &names {
        started_rx.recv().await.unwrap();
    }
    // Every body runs: every lock is on its own node, owned by us.
    for name in &names {
        let key = locks.key(name);
        let node = cluster.owner_of(keyslot(&mut any, &key));
        let owner: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query(&mut cluster.nodes[node].conn())
            .unwrap();
        assert_eq!(
            owner.as_deref().map(kit::call_base),
            Some(locks.owner()),
            "{key} on node {node}"
        );
    }
    done_tx.send(true).unwrap();
    for t in tasks {
        let (token, lost) = t.await.unwrap().ran().expect("every body ran");
        assert!(token > 0 && !lost);
    }
    assert_eq!(locks.active_leases(), 0);
    for name in &names {
        assert_eq!(locks.info(name).await.unwrap(), None, "{name} released");
    }
}

#[kit::test]
async fn blocking_acquire_through_a_cluster_client() {
    let cluster = Cluster::start(3);
    let client = ClusterClient::new(cluster.urls()).unwrap();
    let new_locks = || async {
        SpaceLock::new(
            client.get_async_connection().await.unwrap(),
            Options::default(),
        )
        .with_wait_connector(client.clone())
    };
    let (a, b) = (new_locks().await, new_locks().await);
    let mut any = cluster.nodes[0].conn();
    for name in ["space-1", "space-2", "space-3", "space-4"] {
        let spacelock_client::AcquireReply::Acquired { token: first } =
            a.acquire(name).await.unwrap()
        else {
            panic!("{name}: not acquired");
        };
        let timed_out = b
            .with_space_lock_wait(name, Duration::from_millis(100), |_| async {})
            .await
            .unwrap();
        assert_eq!(
            timed_out,
            Outcome::Skipped(spacelock_client::Skipped::TimedOut)
        );
        let b2 = b.clone();
        let waiter = tokio::spawn(async move {
            b2.with_space_lock_wait(name, Duration::from_secs(5), |lease| async move {
                lease.token()
            })
            .await
            .unwrap()
        });
        // Until the waiter is queued on the node that owns the key.
        let node = cluster.owner_of(keyslot(&mut any, a.key(name)));
        kit::until_waiting(&mut cluster.nodes[node].conn(), 1);
        let _ = a.release(name).await.unwrap();
        let token = waiter.await.unwrap().ran().expect("the waiter ran");
        assert!(token > first, "{name}: {token} > {first}");
    }
}

/// A grant handed over by the wait queue is acknowledged by the replicas of
/// its own shard alone: the `WAIT` after it goes to the key's primary, so
/// another shard that does not answer (here `DEBUG SLEEP`; in production a
/// failover) neither delays nor fails it. (A keyless `WAIT` over a cluster
/// connection goes to every primary.)
#[kit::test]
async fn a_wait_queue_grant_is_acknowledged_by_its_own_shard_alone() {
    let cluster = Cluster::start(2);
    // A replica for node 0.
    let replica = kit::ServerBuilder::new()
        .cluster()
        .arg("cluster-node-timeout", "5000")
        .start();
    let _: () = redis::cmd("CLUSTER")
        .arg("MEET")
        .arg("127.0.0.1")
        .arg(replica.port)
        .arg(replica.bus_port.unwrap())
        .query(&mut cluster.nodes[0].conn())
        .unwrap();
    let primary_id = cluster.node_id(0);
    let mut rcon = replica.conn();
    assert!(
        kit::wait_until(Duration::from_secs(20), || {
            redis::cmd("CLUSTER")
                .arg("REPLICATE")
                .arg(&primary_id)
                .query::<()>(&mut rcon)
                .is_ok()
        }),
        "the replica never learned of its primary"
    );
    assert!(
        kit::wait_until(Duration::from_secs(20), || {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut rcon)
                .unwrap();
            info.contains("master_link_status:up")
        }),
        "the replica never synced"
    );

    let client = ClusterClient::new(cluster.urls()).unwrap();
    let options = Options::default()
        .ttl(Duration::from_secs(3))
        .replicas(1)
        // Generous: a busy machine must not make the own shard's replica late.
        .ack_timeout(Duration::from_secs(2));
    let new_locks = || async {
        SpaceLock::new(
            client.get_async_connection().await.unwrap(),
            options.clone(),
        )
        .with_wait_connector(client.clone())
    };
    let (a, b) = (new_locks().await, new_locks().await);
    let mut any = cluster.nodes[0].conn();
    let name = (0..100)
        .map(|i| format!("space-{i}"))
        .find(|n| cluster.owner_of(keyslot(&mut any, a.key(n))) == 0)
        .expect("a name on node 0");
    let name = name.as_str();
    let _held = a.acquire(name).await.unwrap();
    let b2 = b.clone();
    let waiter_name = name.to_string();
    let waiter = tokio::spawn(async move {
        b2.with_space_lock_wait(&waiter_name, Duration::from_secs(10), |lease| async move {
            lease.token()
        })
        .await
    });
    kit::until_waiting(&mut cluster.nodes[0].conn(), 1);
    // The other shard stops answering for 5 s, longer than the ack timeout.
    let mut other = cluster.nodes[1].conn();
    let sleeper = std::thread::spawn(move || {
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(5)
            .query::<()>(&mut other)
    });
    std::thread::sleep(Duration::from_millis(100));
    let _ = a.release(name).await.unwrap();
    let outcome = waiter.await.unwrap();
    let token = match outcome {
        Ok(Outcome::Ran(token)) => token,
        other => panic!("the waiter's grant was not acknowledged by its own shard: {other:?}"),
    };
    assert!(token > 0);
    assert!(
        !sleeper.is_finished(),
        "the grant was acknowledged while the other shard still slept"
    );
    sleeper.join().unwrap().unwrap();
}

kit::main!();
