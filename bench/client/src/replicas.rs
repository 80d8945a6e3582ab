//! Replica-acknowledged grants: grant latency (call to body start) and
//! full-cycle latency (acquire + `WAIT` + body + release) of
//! `with_space_lock` with 0, 1 and 2 replicas acknowledging, side by side
//! against one primary with two local replicas.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use spacelock_client::{Options, SpaceLock};

use crate::measure::{median, pct, row, spread};
use crate::{env_f, Env, Res};

/// One run of `n` cycles on fresh names: (grant µs, cycle µs) per cycle.
async fn run(
    locks: &SpaceLock<MultiplexedConnection>,
    n: usize,
    tag: &str,
) -> Res<(Vec<f64>, Vec<f64>)> {
    let (mut grant, mut cycle) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let t0 = Instant::now();
        let out = locks
            .with_space_lock(
                &format!("rep:{tag}:{i}"),
                |_lease| async move { t0.elapsed() },
            )
            .await?;
        let total = t0.elapsed();
        let Some(granted) = out.ran() else {
            return Err(format!("{tag}: the body did not run").into());
        };
        grant.push(granted.as_secs_f64() * 1e6);
        cycle.push(total.as_secs_f64() * 1e6);
    }
    Ok((grant, cycle))
}

/// A connection with no response timeout (a `WAIT` may take its time).
async fn conn(env: &Env) -> Res<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    Ok(env
        .client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

pub(crate) async fn replicas(env: &Env) -> Res<()> {
    let n = env_f(
        "BENCH_REPLICAS_N",
        if env.quick { 2000.0 } else { 10_000.0 },
    ) as usize;
    let rounds = if env.quick { 3 } else { 5 };
    let mut con = conn(env).await?;
    // Both replicas online and caught up before anything is timed.
    let _: () = redis::cmd("SET")
        .arg("bench:sync")
        .arg(1)
        .query_async(&mut con)
        .await?;
    let synced: i64 = redis::cmd("WAIT")
        .arg(2)
        .arg(30_000)
        .query_async(&mut con)
        .await?;
    if synced < 2 {
        return Err(format!("only {synced} of 2 replicas online").into());
    }
    let mut sides = Vec::new();
    for r in 0..=2usize {
        let conn = conn(env).await?;
        let options = Options::default().ttl(Duration::from_secs(30)).replicas(r);
        sides.push(SpaceLock::new(conn, options));
    }
    // Per setting: per-round medians and p99s of grant and cycle.
    let mut g50 = vec![Vec::new(); 3];
    let mut g99 = vec![Vec::new(); 3];
    let mut c50 = vec![Vec::new(); 3];
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..=2).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for &r in &order {
            let (mut g, mut c) = run(&sides[r], n, &format!("r{r}:{round}")).await?;
            g.sort_by(|a, b| a.partial_cmp(b).unwrap());
            c.sort_by(|a, b| a.partial_cmp(b).unwrap());
            eprintln!(
                "  replicas {r}, round {round}: grant p50 {:.0} µs p99 {:.0} µs; cycle p50 {:.0} µs",
                pct(&g, 50.0),
                pct(&g, 99.0),
                pct(&c, 50.0)
            );
            g50[r].push(pct(&g, 50.0));
            g99[r].push(pct(&g, 99.0));
            c50[r].push(pct(&c, 50.0));
        }
    }
    let ratios = |v: &[Vec<f64>], r: usize| -> Vec<f64> {
        v[0].iter().zip(&v[r]).map(|(base, x)| base / x).collect()
    };
    for r in 1..=2usize {
        let label = |what: &str| {
            format!(
                "{} + 2 replicas · replica-acknowledged grants: {what}, {r} replica(s) acknowledging vs 0 (no WAIT), {n} sequential cycles per round · µs",
                env.server
            )
        };
        for (what, v) in [
            ("grant latency p50 (call to body start)", &g50),
            ("grant latency p99", &g99),
            (
                "cycle latency p50 (acquire + WAIT + empty body + release)",
                &c50,
            ),
        ] {
            let rr = ratios(v, r);
            row(
                &label(what),
                median(&v[r]),
                median(&v[0]),
                median(&rr),
                &spread(&rr),
            );
        }
    }
    Ok(())
}
