//! Expiry bursts: a grant after expiry when many leases end in the same
//! millisecond. `BENCH_BURST_LOCKS` (1 000) locks are held, their keys set
//! with `PEXPIREAT` to one absolute time a little ahead, then one client per
//! lock queues on it (`SPACELOCK.ACQUIRE key owner ttl WAIT ms`), each on its
//! own connection and thread, blocked in a read. Every waiter's latency is
//! the time from the common expiry instant to its grant's reply, read on the
//! same machine's wall clock as the server's. The baseline is the same
//! measurement for locks that expire alone (50 ms apart).
//!
//! The expiry is set before the waiters queue, so the module's expiry timer
//! is armed at it (the timer follows the lease's deadline as the module
//! sees it when a waiter queues or the holder refreshes).

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::args;
use crate::load::{Commands, Expect};
use crate::measure::{info_field, median, Row};
use crate::resp::{Conn, Reply};
use crate::runner::{key, Runner};
use crate::server::Server;
use crate::{env_usize, Cfg, OWNER};

/// Locks in the baseline, and the gap between their expiries.
const SINGLES: usize = 20;
const SINGLE_GAP_MS: i64 = 50;

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Holds `count` locks, expires lock `i` at `t0 + offset(i)` (t0 = now plus a
/// lead), queues a WAIT waiter on each, and returns each waiter's latency
/// (ms) from its lock's expiry to its grant.
fn expire_and_grant(
    runner: &mut Runner,
    tag: &str,
    count: usize,
    offset_ms: impl Fn(usize) -> i64,
) -> Result<Vec<f64>, String> {
    runner.select(0)?;
    runner.admin.call(&["FLUSHDB", "SYNC"])?;
    let prefix = format!("x:{tag}");
    let p = prefix.clone();
    runner.load(
        0,
        (
            Commands::build(count, |i| {
                args!["SPACELOCK.ACQUIRE", key(&p, i), OWNER, "600000"]
            }),
            Expect::Token,
        ),
    )?;
    let lead = env_usize("BENCH_BURST_LEAD_MS", 500 + 2 * count) as i64;
    let t0 = now_us() / 1000 + lead;
    let at: Vec<i64> = (0..count).map(|i| t0 + offset_ms(i)).collect();
    let at2 = at.clone();
    runner.load(
        0,
        (
            Commands::build(count, |i| {
                args!["PEXPIREAT", key(&p, i), at2[i].to_string()]
            }),
            Expect::Int(1),
        ),
    )?;
    // One connection per waiter, all read by this thread through poll(2),
    // so a grant's time is taken when its reply becomes readable, not when a
    // thread gets scheduled.
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        let mut c = Conn::connect(runner.port).map_err(|e| format!("waiter {i}: {e}"))?;
        let mut buf = Vec::new();
        let owner = format!("waiter-{i}");
        let k = key(&prefix, i);
        crate::resp::encode(
            &[
                b"SPACELOCK.ACQUIRE",
                &k,
                owner.as_bytes(),
                b"60000",
                b"WAIT",
                b"60000",
            ],
            &mut buf,
        );
        c.send(&buf).map_err(|e| format!("waiter {i}: {e}"))?;
        conns.push(c);
    }
    // Every waiter must be queued before the first expiry.
    let first = at.iter().copied().min().unwrap_or(t0);
    let queued = loop {
        let b = info_field(&mut runner.admin, "clients", "blocked_clients")?;
        if b as usize >= count || now_us() / 1000 >= first - 5 {
            break b as usize;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if queued < count {
        return Err(format!(
            "only {queued} of {count} waiters were queued {lead} ms after the locks were set to expire (raise BENCH_BURST_LEAD_MS)"
        ));
    }
    let mut got: Vec<Option<i64>> = vec![None; count];
    let deadline = Instant::now() + Duration::from_millis(lead as u64 + 60_000);
    let mut left = count;
    while left > 0 {
        if Instant::now() > deadline {
            return Err(format!("{left} of {count} waiters got no reply in time"));
        }
        let pending: Vec<usize> = (0..count).filter(|&i| got[i].is_none()).collect();
        let ready = poll_readable(&conns, &pending, 1000)?;
        let t = now_us();
        for i in ready {
            match conns[i].read() {
                Ok(Reply::Int(token)) if token > 0 => got[i] = Some(t),
                Ok(r) => return Err(format!("waiter {i}: {}", r.show())),
                Err(e) => return Err(format!("waiter {i}: {e}")),
            }
            left -= 1;
        }
    }
    let lat: Vec<f64> = got
        .iter()
        .zip(&at)
        .map(|(g, a)| (g.unwrap_or(0) - a * 1000) as f64 / 1000.0)
        .collect();
    if std::env::var_os("BENCH_BURST_DEBUG").is_some() {
        let mut v = lat.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let q: Vec<String> = [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0]
            .iter()
            .map(|p| format!("{:.2}", v[((v.len() - 1) as f64 * p) as usize]))
            .collect();
        eprintln!("  {tag}: {}", q.join(" "));
    }
    Ok(lat)
}

#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

extern "C" {
    /// poll(2) from the C library std already links.
    fn poll(fds: *mut PollFd, nfds: u64, timeout_ms: i32) -> i32;
}

const POLLIN: i16 = 1;

/// Which of `conns[i]` for `i` in `which` have a reply to read, waiting up
/// to `timeout_ms` for one.
fn poll_readable(conns: &[Conn], which: &[usize], timeout_ms: i32) -> Result<Vec<usize>, String> {
    let buffered: Vec<usize> = which
        .iter()
        .copied()
        .filter(|&i| conns[i].buffered())
        .collect();
    if !buffered.is_empty() {
        return Ok(buffered);
    }
    let mut fds: Vec<PollFd> = which
        .iter()
        .map(|&i| PollFd {
            fd: conns[i].raw_fd(),
            events: POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a live, exclusively borrowed array of `fds.len()`
    // pollfd structs (same layout as C's), and every fd is an open socket
    // owned by `conns` for the duration of the call.
    let n = unsafe { poll(fds.as_mut_ptr(), fds.len() as u64, timeout_ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(Vec::new());
        }
        return Err(format!("poll: {e}"));
    }
    Ok(fds
        .iter()
        .zip(which)
        .filter(|(f, _)| f.revents != 0)
        .map(|(_, &i)| i)
        .collect())
}

/// Nearest-rank percentile of sorted `v`.
fn pct(v: &[f64], p: f64) -> f64 {
    let i = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[i.clamp(1, v.len()) - 1]
}

fn stats(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    [pct(&v, 50.0), pct(&v, 99.0), v[v.len() - 1]]
}

pub(crate) fn expiry_burst(
    cfg: &Cfg,
    rows: &mut Vec<Row>,
    raw: &mut String,
) -> Result<String, String> {
    let srv = Server::start(&cfg.redis, Some(&cfg.module), &[])?;
    let v = srv.name.clone();
    let (k, rounds) = (cfg.burst_locks, cfg.burst_rounds);
    eprintln!(
        "expiry burst on {v}: {k} locks expiring in one ms, a WAIT waiter each, {rounds} round(s)"
    );
    let mut runner = Runner::new(cfg, &srv, srv.conn());
    let (mut burst, mut alone) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let t = Instant::now();
        let mut one = |runner: &mut Runner, together: bool| -> Result<[f64; 3], String> {
            let lat = if together {
                expire_and_grant(runner, &format!("b{r}"), k, |_| 0)?
            } else {
                expire_and_grant(runner, &format!("s{r}"), SINGLES, |i| {
                    i as i64 * SINGLE_GAP_MS
                })?
            };
            let s = stats(lat);
            let _ = writeln!(
                raw,
                "{v},expiry_{},{r},p50={:.3} p99={:.3} max={:.3},",
                if together { "burst" } else { "alone" },
                s[0],
                s[1],
                s[2]
            );
            Ok(s)
        };
        if r % 2 == 0 {
            burst.push(one(&mut runner, true)?);
            alone.push(one(&mut runner, false)?);
        } else {
            alone.push(one(&mut runner, false)?);
            burst.push(one(&mut runner, true)?);
        }
        eprintln!(
            "  round {}/{rounds} done in {:.1} s",
            r + 1,
            t.elapsed().as_secs_f64()
        );
    }
    for (j, what) in ["p50", "p99", "max"].iter().enumerate() {
        let b: Vec<f64> = burst.iter().map(|s| s[j]).collect();
        let a: Vec<f64> = alone.iter().map(|s| s[j]).collect();
        // Ratio > 1: the burst grants sooner than a lone expiry.
        let ratios: Vec<f64> = a
            .iter()
            .zip(&b)
            .map(|(x, y)| x.max(0.001) / y.max(0.001))
            .collect();
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        rows.push(Row {
            workload: format!(
                "{v} · expiry burst: {k} locks whose leases end in the same ms, one `WAIT` waiter each on its own connection (spacelock column) vs {SINGLES} locks expiring {SINGLE_GAP_MS} ms apart (baseline column) · grant after expiry {what} ms"
            ),
            spacelock: format!("{:.3}", median(&b)),
            baseline: format!("{:.3}", median(&a)),
            ratio: median(&ratios),
            spread: format!("{lo:.2}–{hi:.2} (n={})", ratios.len()),
        });
    }
    Ok(v)
}
