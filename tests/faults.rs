//! Crash faults: SIGKILL under load with `appendfsync always`.
//! Every acknowledged, unreleased grant survives with its TTL, and every token
//! issued after the restart exceeds every token issued before the crash.

use spacelock_testkit as kit;

use kit::ServerBuilder;
use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Duration;

#[kit::test]
fn sigkill_under_load_loses_no_acknowledged_grant() {
    let mut server = ServerBuilder::new()
        .arg("appendonly", "yes")
        .arg("appendfsync", "always")
        .start();
    let url = server.url();
    let (tx, rx) = mpsc::channel();
    let writer = std::thread::spawn(move || {
        let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
        // name → highest acknowledged token; held → acknowledged, never released
        let mut max_token: HashMap<String, i64> = HashMap::new();
        let mut held: Vec<String> = Vec::new();
        let mut i = 0u64;
        let mut signalled = false;
        loop {
            i += 1;
            let name = format!("crash:cycle:{}", i % 10);
            let r: redis::RedisResult<Option<i64>> = redis::cmd("SPACELOCK.ACQUIRE")
                .arg(&name)
                .arg("w")
                .arg(120_000)
                .query(&mut con);
            match r {
                Ok(Some(t)) => {
                    max_token.insert(name.clone(), t);
                }
                Ok(None) => {}
                Err(_) => break,
            }
            let r: redis::RedisResult<i64> = redis::cmd("SPACELOCK.RELEASE")
                .arg(&name)
                .arg("w")
                .query(&mut con);
            if r.is_err() {
                break;
            }
            if i % 7 == 0 {
                let key = format!("crash:held:{i}");
                match redis::cmd("SPACELOCK.ACQUIRE")
                    .arg(&key)
                    .arg("w")
                    .arg(120_000)
                    .query::<Option<i64>>(&mut con)
                {
                    Ok(Some(_)) => {
                        held.push(key);
                        // Enough acknowledged work: let the main thread kill.
                        if held.len() > 5 && !signalled {
                            signalled = true;
                            let _ = tx.send(());
                        }
                    }
                    Ok(None) => panic!("fresh key was held"),
                    Err(_) => break,
                }
            }
        }
        (max_token, held, i)
    });
    // Kill mid-load: once some grants are acknowledged, after a short,
    // variable amount of further work.
    rx.recv_timeout(Duration::from_secs(30))
        .expect("writer made no progress");
    std::thread::sleep(Duration::from_millis(50 + rand::random::<u64>() % 200));
    server.kill9();
    let (max_token, held, ops) = writer.join().unwrap();
    assert!(
        held.len() > 5,
        "load ran: {ops} cycles, {} held",
        held.len()
    );

    let server = server.crash_and_restart();
    let mut con = server.conn();
    for key in &held {
        let v: Option<String> = redis::cmd("GET").arg(key).query(&mut con).unwrap();
        assert_eq!(v.as_deref(), Some("w"), "acknowledged grant {key} lost");
        let pttl: i64 = redis::cmd("PTTL").arg(key).query(&mut con).unwrap();
        assert!(pttl > 100_000, "{key} kept its TTL: {pttl}");
    }
    for (name, before) in &max_token {
        // The crash may have cut a cycle between its ACQUIRE and RELEASE.
        let _: i64 = redis::cmd("DEL").arg(name).query(&mut con).unwrap();
        let t: i64 = redis::cmd("SPACELOCK.ACQUIRE")
            .arg(name)
            .arg("after")
            .arg(1000)
            .query(&mut con)
            .unwrap();
        assert!(
            t > *before,
            "{name}: token {t} after restart, {before} before the crash"
        );
    }
    println!("crash: {ops} cycles, {} held locks survived", held.len());
}

kit::main!();
