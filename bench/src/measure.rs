//! What a run measures and how it becomes a table row: per-call samples,
//! server CPU from /proc, INFO parsing, medians and ratios.

use std::collections::HashMap;
use std::time::Duration;

use crate::resp::Conn;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    pub(crate) us_per_call: f64,
    pub(crate) rps: f64,
    /// Server main-thread CPU per call (µs), from /proc schedstat: includes
    /// parsing and reply I/O, and unlike commandstats' wall clock it does not
    /// grow when the server is preempted by other load on the box.
    pub(crate) cpu_us: f64,
}

/// CPU time (ns) the server's main thread has run, from its schedstat.
pub(crate) fn cpu_ns(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// `cmdstat_<name>` → (calls, usec).
pub(crate) fn commandstats(con: &mut Conn) -> Result<HashMap<String, (u64, u64)>, String> {
    let text = con
        .call(&["INFO", "commandstats"])?
        .text()
        .unwrap_or_default();
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let field = |f: &str| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix(f))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.insert(name.to_lowercase(), (field("calls="), field("usec=")));
    }
    Ok(out)
}

pub(crate) fn info_field(con: &mut Conn, section: &str, field: &str) -> Result<i64, String> {
    let text = con.call(&["INFO", section])?.text().unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|v| v.strip_prefix(':')))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("INFO {section} has no {field}"))
}

/// `used_memory` once it stops moving (incremental rehashing settles).
pub(crate) fn used_memory(con: &mut Conn) -> Result<i64, String> {
    let mut last = info_field(con, "memory", "used_memory")?;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        let now = info_field(con, "memory", "used_memory")?;
        if now == last {
            break;
        }
        last = now;
    }
    Ok(last)
}

/// One table row.
pub(crate) struct Row {
    pub(crate) workload: String,
    pub(crate) spacelock: String,
    pub(crate) baseline: String,
    pub(crate) ratio: f64,
    pub(crate) spread: String,
}

fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        "n/a".into()
    } else if x >= 10_000.0 {
        format!("{:.0}", x)
    } else if x >= 100.0 {
        format!("{:.1}", x)
    } else {
        format!("{:.3}", x)
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Metric {
    Us,
    Rps,
    Cpu,
}

/// A row comparing case `a` (spacelock) with case `b` (baseline), from
/// per-round pairs. Ratio > 1 means spacelock is better.
pub(crate) fn row<K: std::borrow::Borrow<str> + std::hash::Hash + Eq>(
    label: String,
    s: &HashMap<K, Vec<Sample>>,
    a: &str,
    b: &str,
    m: Metric,
) -> Row {
    let (sa, sb) = (&s[a], &s[b]);
    let val = |x: &Sample| match m {
        Metric::Us => x.us_per_call,
        Metric::Rps => x.rps,
        Metric::Cpu => x.cpu_us,
    };
    let ratios: Vec<f64> = sa
        .iter()
        .zip(sb)
        .map(|(x, y)| match m {
            Metric::Us | Metric::Cpu => val(y) / val(x),
            Metric::Rps => val(x) / val(y),
        })
        .collect();
    let (lo, hi) = min_max(&ratios);
    Row {
        workload: label,
        spacelock: fmt_num(median(&sa.iter().map(val).collect::<Vec<_>>())),
        baseline: fmt_num(median(&sb.iter().map(val).collect::<Vec<_>>())),
        ratio: median(&ratios),
        spread: format!("{lo:.2}–{hi:.2} (n={})", ratios.len()),
    }
}
