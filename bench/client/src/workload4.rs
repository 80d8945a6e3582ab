//! Workload 4: contention on one key, `WAIT` vs polling.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spacelock_client::{AcquireReply, Options, ReleaseReply, SpaceLock};

use crate::measure::{median, pct, row, spread};
use crate::{env_f, Env, Res};

// ---------------------------------------------------------------- 4

struct Contention {
    sections_per_s: f64,
    wait_ms: Vec<f64>,
    handoff_ms: Vec<f64>,
    /// Jain's fairness index of the sections per client: 1.0 = all equal,
    /// 1/8 = one client took them all.
    fairness: f64,
}

async fn contend(env: &Env, wait: bool, secs: f64, tag: &str) -> Res<Contention> {
    let clients = 8;
    let cs = Duration::from_micros(500);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let last_release = Arc::new(AtomicU64::new(u64::MAX));
    let last_holder = Arc::new(AtomicUsize::new(usize::MAX));
    let sections = Arc::new(AtomicU64::new(0));
    let name = format!("contend:{tag}");
    let mut tasks = Vec::new();
    for c in 0..clients {
        let locks = SpaceLock::new(
            env.conn().await?,
            Options::default().ttl(Duration::from_secs(10)),
        )
        .with_wait_connector(env.client.clone());
        let (last_release, last_holder, sections, name) = (
            last_release.clone(),
            last_holder.clone(),
            sections.clone(),
            name.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng =
                0x9E37_79B9_7F4A_7C15u64 ^ (c as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407);
            let (mut waits, mut handoffs, mut mine) = (Vec::new(), Vec::new(), 0u64);
            while Instant::now() < deadline {
                let want = Instant::now();
                loop {
                    let r = if wait {
                        locks.acquire_wait(&name, Duration::from_secs(2)).await
                    } else {
                        locks.acquire(&name).await
                    };
                    match r {
                        Ok(AcquireReply::Acquired { .. }) => break,
                        Ok(AcquireReply::Held) if wait => {
                            if Instant::now() >= deadline {
                                return Ok::<_, spacelock_client::Error>((waits, handoffs, mine));
                            }
                        }
                        Ok(AcquireReply::Held) => {
                            if Instant::now() >= deadline {
                                return Ok((waits, handoffs, mine));
                            }
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            let jitter_us = (rng % 10_001) as i64 - 5_000;
                            tokio::time::sleep(Duration::from_micros((10_000 + jitter_us) as u64))
                                .await;
                        }
                        Err(e) => return Err(e),
                    }
                }
                let got = Instant::now();
                waits.push((got - want).as_secs_f64() * 1e3);
                let lr = last_release.load(Ordering::Acquire);
                // A handoff is a grant to another client than the last holder.
                let prev = last_holder.swap(c, Ordering::AcqRel);
                if lr != u64::MAX && prev != c {
                    let got_ns = (got - start).as_nanos() as u64;
                    handoffs.push(got_ns.saturating_sub(lr) as f64 / 1e6);
                }
                let t = Instant::now();
                while t.elapsed() < cs {
                    std::hint::spin_loop();
                }
                sections.fetch_add(1, Ordering::Relaxed);
                mine += 1;
                last_release.store(
                    (Instant::now() - start).as_nanos() as u64,
                    Ordering::Release,
                );
                match locks.release(&name).await? {
                    ReleaseReply::Released => {}
                    ReleaseReply::NotOwner => {
                        eprintln!("  contention: a release found the lock not ours");
                    }
                }
            }
            Ok((waits, handoffs, mine))
        }));
    }
    let (mut wait_ms, mut handoff_ms, mut per_client) = (Vec::new(), Vec::new(), Vec::new());
    for t in tasks {
        let (w, h, m) = t.await??;
        per_client.push(m as f64);
        wait_ms.extend(w);
        handoff_ms.extend(h);
    }
    let el = start.elapsed().as_secs_f64();
    wait_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    handoff_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(Contention {
        sections_per_s: sections.load(Ordering::Relaxed) as f64 / el,
        wait_ms,
        handoff_ms,
        fairness: {
            let sum: f64 = per_client.iter().sum();
            let sq: f64 = per_client.iter().map(|x| x * x).sum();
            sum * sum / (per_client.len() as f64 * sq)
        },
    })
}

pub(crate) async fn workload4(env: &Env) -> Res<()> {
    let secs = env_f("BENCH_CONTEND_S", if env.quick { 2.0 } else { 5.0 });
    let rounds = if env.quick { 1 } else { 2 };
    // Does the module speak WAIT yet?
    let probe = SpaceLock::new(
        env.conn().await?,
        Options::default().ttl(Duration::from_secs(1)),
    )
    .with_wait_connector(env.client.clone());
    let wait_ok = match probe
        .acquire_wait("contend:probe", Duration::from_millis(50))
        .await
    {
        Ok(AcquireReply::Acquired { .. }) => {
            let _ = probe.release("contend:probe").await;
            true
        }
        Ok(AcquireReply::Held) => true,
        Err(e) => {
            eprintln!("  WAIT unsupported: {e}");
            false
        }
    };
    let mut poll = Vec::new();
    let mut waitv = Vec::new();
    for r in 0..rounds {
        let order = if r % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for w in order {
            if w && !wait_ok {
                continue;
            }
            let c = contend(env, w, secs, &format!("{r}{w}")).await?;
            eprintln!(
                "  contention {}: {:.0} sections/s, wait p50 {:.3} p99 {:.3} max {:.3} ms, handoff p50 {:.3} p99 {:.3} ms",
                if w { "WAIT" } else { "polling" },
                c.sections_per_s,
                pct(&c.wait_ms, 50.0),
                pct(&c.wait_ms, 99.0),
                pct(&c.wait_ms, 100.0),
                pct(&c.handoff_ms, 50.0),
                pct(&c.handoff_ms, 99.0)
            );
            if w {
                waitv.push(c)
            } else {
                poll.push(c)
            }
        }
    }
    let what = format!(
        "{} · contention, 8 clients on 1 key, 0.5 ms critical section, {secs:.0} s: `WAIT` vs polling ACQUIRE every 10 ms ± 5 ms",
        env.server
    );
    if !wait_ok {
        let p = &poll[0];
        println!(
            "MISSING\t{what}: the module has no WAIT yet; polling alone gave {:.0} sections/s, wait-to-acquire p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, handoff p50 {:.2} ms, p99 {:.2} ms",
            p.sections_per_s,
            pct(&p.wait_ms, 50.0),
            pct(&p.wait_ms, 99.0),
            pct(&p.wait_ms, 100.0),
            pct(&p.handoff_ms, 50.0),
            pct(&p.handoff_ms, 99.0)
        );
        return Ok(());
    }
    let pair = |f: &dyn Fn(&Contention) -> f64, higher_better: bool| {
        let ratios: Vec<f64> = waitv
            .iter()
            .zip(&poll)
            .map(|(a, b)| {
                if higher_better {
                    f(a) / f(b)
                } else {
                    f(b) / f(a)
                }
            })
            .collect();
        let a = median(&waitv.iter().map(f).collect::<Vec<_>>());
        let b = median(&poll.iter().map(f).collect::<Vec<_>>());
        (a, b, median(&ratios), spread(&ratios))
    };
    type Metric = Box<dyn Fn(&Contention) -> f64>;
    let metrics: [(&str, Metric, bool); 7] = [
        (
            "fairness: Jain's index of sections per client (1 = equal)",
            Box::new(|c: &Contention| c.fairness),
            true,
        ),
        (
            "critical sections/s",
            Box::new(|c: &Contention| c.sections_per_s),
            true,
        ),
        (
            "wait-to-acquire p50 ms",
            Box::new(|c: &Contention| pct(&c.wait_ms, 50.0)),
            false,
        ),
        (
            "wait-to-acquire p99 ms",
            Box::new(|c: &Contention| pct(&c.wait_ms, 99.0)),
            false,
        ),
        (
            "wait-to-acquire max ms",
            Box::new(|c: &Contention| pct(&c.wait_ms, 100.0)),
            false,
        ),
        (
            "handoff to another client (its RELEASE sent → the grant) p50 ms",
            Box::new(|c: &Contention| pct(&c.handoff_ms, 50.0)),
            false,
        ),
        (
            "handoff p99 ms",
            Box::new(|c: &Contention| pct(&c.handoff_ms, 99.0)),
            false,
        ),
    ];
    for (label, f, hb) in metrics.iter() {
        let (a, b, r, s) = pair(f.as_ref(), *hb);
        row(&format!("{what} · {label}"), a, b, r, &s);
    }
    Ok(())
}
