//! Workload 3a: `with_space_lock` cycles/s vs raw ACQUIRE + RELEASE.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use spacelock_client::{Options, SpaceLock};

use crate::measure::{median, row, spread};
use crate::{env_f, Env, Res};

// ---------------------------------------------------------------- 3a

async fn cycles_client(locks: &SpaceLock<MultiplexedConnection>, secs: f64, tag: &str) -> Res<f64> {
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed().as_secs_f64() < secs {
        let out = locks
            .with_space_lock(&format!("cyc:{tag}:{n}"), |_lease| async {})
            .await?;
        if !out.is_ran() {
            return Err(format!("with_space_lock did not run: {:?}", out.skipped()).into());
        }
        n += 1;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

async fn cycles_raw(
    con: &mut MultiplexedConnection,
    owner: &str,
    secs: f64,
    tag: &str,
) -> Res<f64> {
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed().as_secs_f64() < secs {
        let key = format!("spacelock:lock:cyc:{tag}:{n}");
        let token: Option<i64> = redis::cmd("SPACELOCK.ACQUIRE")
            .arg(&key)
            .arg(owner)
            .arg(30_000)
            .query_async(con)
            .await?;
        if token.is_none() {
            return Err("raw ACQUIRE of a fresh key returned nil".into());
        }
        let released: i64 = redis::cmd("SPACELOCK.RELEASE")
            .arg(&key)
            .arg(owner)
            .query_async(con)
            .await?;
        if released != 1 {
            return Err("raw RELEASE of a held key returned 0".into());
        }
        n += 1;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

pub(crate) async fn workload3a(env: &Env) -> Res<()> {
    let secs = env_f("BENCH_CYCLE_S", if env.quick { 0.5 } else { 2.0 });
    let rounds = if env.quick { 2 } else { 4 };
    let con = env.conn().await?;
    let locks = SpaceLock::new(con.clone(), Options::default().ttl(Duration::from_secs(30)));
    let owner = locks.owner().to_string();
    let mut raw_con = con;
    let (mut a, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (x, y) = if round % 2 == 0 {
            let x = cycles_client(&locks, secs, &format!("c{round}")).await?;
            (
                x,
                cycles_raw(&mut raw_con, &owner, secs, &format!("r{round}")).await?,
            )
        } else {
            let y = cycles_raw(&mut raw_con, &owner, secs, &format!("r{round}")).await?;
            (cycles_client(&locks, secs, &format!("c{round}")).await?, y)
        };
        eprintln!("  cycles round {round}: with_space_lock {x:.0}/s, raw {y:.0}/s");
        a.push(x);
        b.push(y);
        r.push(x / y);
    }
    row(
        &format!("{} · client: `with_space_lock` cycles/s (empty body) vs raw ACQUIRE + RELEASE round trips, same connection · cycles/s", env.server),
        median(&a),
        median(&b),
        median(&r),
        &spread(&r),
    );
    Ok(())
}
