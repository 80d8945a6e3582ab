//! The checker: reads a run's history and judges it.
//!
//! * (a) no two bodies on one key overlap where their modes exclude each
//!   other (an exclusive body excludes every other; readers of a shared key
//!   overlap each other), and a counted key never has more bodies at once
//!   than its limit (bodies whose own client was paused are left out; in a
//!   run outside the documented conditions an overlap is reported as such,
//!   not as a violation);
//! * (b) the fenced resource accepted writes in token order per key, and no
//!   write below a token it had already accepted;
//! * (c) the tokens of the bodies that ran never go backwards per key (in
//!   start order; on a shared or counted key, where holders run together,
//!   a body's token is above that of every body that ended before its
//!   worker began asking for the lock);
//! * (d) every grant agreed with the lock state: `SPACELOCK.CHECK` right
//!   after it answered 1 (unless the lease was reported lost), and a
//!   WAIT-queue acquire that timed out left nothing held in its name;
//! * (e) every lease that was lost (its body overlapped by a later one, or
//!   its client paused past the ttl) was reported lost to its holder within
//!   one ttl (after the client resumed, for a paused one);
//! * (f) progress: the longest time with no grant on a key around each
//!   fault, and the failover time Sentinel took.
//!
//! Times are on the monotonic clock, in ns. A body's start is recorded after
//! its grant and its end before its release, so the recorded interval lies
//! inside the time the holder believed it held the lock: an overlap of two
//! recorded intervals is a real one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::history::{read_dir, Line};

/// Slack for scheduling between a deadline and the line that records it.
const SLACK_NS: i64 = 250_000_000;

/// One body (a grant that ran).
#[derive(Debug, Clone)]
pub struct Body {
    /// Worker id.
    pub w: String,
    /// Lock key.
    pub key: String,
    /// Owner id.
    pub owner: String,
    /// Fencing token.
    pub token: i128,
    /// Start (ns).
    pub start: i64,
    /// When its worker began asking for the lock (ns; the start when the
    /// history does not say): its grant was made after this.
    pub asked: i64,
    /// End (ns); the worker's last line when it never recorded one.
    pub end: i64,
    /// Whether the end was recorded.
    pub ended: bool,
    /// When the holder was told the lease was lost.
    pub lost_at: Option<i64>,
    /// The CHECK result right after the grant.
    pub check: Option<bool>,
    /// The CHECK result at the body's end.
    pub check_end: Option<bool>,
    /// Granted from the server's WAIT queue.
    pub via_wait: bool,
    /// Its client was paused while it ran: (pause start, pause end).
    pub paused: Option<(i64, i64)>,
    /// How it held the lock.
    pub mode: Mode,
}

/// How a body held its lock (the `mode` and `limit` of its start line;
/// exclusive when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The only holder.
    Exclusive,
    /// One of many readers.
    Shared,
    /// One of at most this many holders.
    Limit(i128),
}

impl Mode {
    fn of(l: &Line) -> Mode {
        match (l.s("mode"), l.n("limit")) {
            (Some("shared"), _) => Mode::Shared,
            (Some("limit"), Some(n)) => Mode::Limit(n),
            _ => Mode::Exclusive,
        }
    }

    /// Whether two bodies in these modes may not run at once on one key.
    fn excludes(self, other: Mode) -> bool {
        self == Mode::Exclusive || other == Mode::Exclusive
    }
}

impl Body {
    fn describe(&self, t0: i64) -> String {
        format!(
            "{} ({}) token {} [{:.3}s .. {:.3}s]{}{}",
            self.w,
            self.owner,
            self.token,
            secs(self.start - t0),
            secs(self.end - t0),
            if self.ended { "" } else { " (no end recorded)" },
            match self.lost_at {
                Some(t) => format!(" lost reported at {:.3}s", secs(t - t0)),
                None => String::new(),
            }
        )
    }
}

fn secs(ns: i64) -> f64 {
    ns as f64 / 1e9
}

/// One injected fault.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Its kind.
    pub kind: String,
    /// Start (ns).
    pub start: i64,
    /// End (ns).
    pub end: i64,
    /// A worker id, for a paused client.
    pub target: Option<String>,
    /// Time from the fault until Sentinel named a new primary (ns), when
    /// it failed over.
    pub failover_ns: Option<i64>,
    /// Time from the fault until the topology was whole again (ns): every
    /// Sentinel names one primary and both other servers replicate from it.
    pub whole_ns: Option<i64>,
}

/// The stalls around the faults of one kind.
#[derive(Debug, Default)]
struct Stalls {
    /// Faults of this kind.
    n: usize,
    /// The longest stall (ns), and that fault's failover and whole-again
    /// times.
    worst: i64,
    failover: Option<i64>,
    whole: Option<i64>,
    /// The most any stall lasted beyond its own fault's failover time.
    beyond_failover: Option<i64>,
    /// The longest time from one of these faults until every contended key
    /// had a grant again (ns), and how far that went past the fault's own
    /// failover time plus one ttl (without a failover: the fault's length
    /// plus one ttl), or past the end of a body that held the name through
    /// the fault, when that came later.
    back: i64,
    back_over: Option<i64>,
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    /// The table.
    pub table: String,
    /// Every violation, one line each.
    pub violations: Vec<String>,
    /// Overlaps reported as outside the documented conditions.
    pub outside: Vec<String>,
    /// Overlapping pairs (all of them, whatever their classification).
    pub overlaps: usize,
    /// Bodies.
    pub bodies: usize,
}

/// Checks the run in `dir`.
///
/// # Errors
/// When the history cannot be read.
pub fn check_dir(dir: &Path) -> Result<Report, String> {
    let lines = read_dir(dir)?;
    Ok(check_lines(&lines, &dir.display().to_string()))
}

/// Checks a history given as lines.
pub fn check_lines(lines: &[Line], title: &str) -> Report {
    let meta = lines
        .iter()
        .find(|l| l.s("ev") == Some("meta"))
        .cloned()
        .unwrap_or_default();
    let ttl_ns = meta.i("ttl_ms").unwrap_or(1500) * 1_000_000;
    let acks = meta.i("replicas").unwrap_or(0);
    let documented = meta.b("documented").unwrap_or(true);
    let t0 = meta
        .i("t0")
        .or_else(|| lines.iter().filter_map(|l| l.i("t")).min())
        .unwrap_or(0);
    let t1 = meta
        .i("t1")
        .or_else(|| lines.iter().filter_map(|l| l.i("t")).max())
        .unwrap_or(t0);

    // Faults.
    let faults: Vec<Fault> = lines
        .iter()
        .filter(|l| l.s("ev") == Some("fault"))
        .map(|l| Fault {
            kind: l.s("kind").unwrap_or("?").to_string(),
            start: l.i("start").unwrap_or(0),
            end: l.i("end").unwrap_or(0),
            target: l.s("target").map(str::to_string),
            failover_ns: l.i("failover_ns"),
            whole_ns: l.i("whole_ns"),
        })
        .collect();

    // The last line of each worker (the end of a body it never ended).
    let mut last_of: BTreeMap<&str, i64> = BTreeMap::new();
    for l in lines {
        if let (Some(w), Some(t)) = (l.s("w"), l.i("t")) {
            let e = last_of.entry(w).or_insert(t);
            *e = (*e).max(t);
        }
    }

    // Bodies, from grant/start/end/lost lines keyed by (w, key, token).
    type Id = (String, String, i128);
    let id = |l: &Line| -> Option<Id> {
        Some((
            l.s("w")?.to_string(),
            l.s("key")?.to_string(),
            l.n("token")?,
        ))
    };
    let mut bodies: BTreeMap<Id, Body> = BTreeMap::new();
    let mut grants = 0usize;
    let mut grant_check: BTreeMap<Id, (Option<bool>, bool)> = BTreeMap::new();
    for l in lines {
        match l.s("ev") {
            Some("grant") => {
                grants += 1;
                if let Some(i) = id(l) {
                    grant_check.insert(i, (l.b("check"), l.b("wait").unwrap_or(false)));
                }
            }
            Some("start") => {
                if let (Some(i), Some(t)) = (id(l), l.i("t")) {
                    bodies.insert(
                        i.clone(),
                        Body {
                            w: i.0.clone(),
                            key: i.1.clone(),
                            owner: l.s("owner").unwrap_or("").to_string(),
                            token: i.2,
                            start: t,
                            asked: l.i("asked").filter(|a| *a > 0 && *a <= t).unwrap_or(t),
                            end: i64::MAX,
                            ended: false,
                            lost_at: None,
                            check: None,
                            check_end: None,
                            via_wait: false,
                            paused: None,
                            mode: Mode::of(l),
                        },
                    );
                }
            }
            _ => {}
        }
    }
    for l in lines {
        let Some(i) = id(l) else { continue };
        let Some(b) = bodies.get_mut(&i) else {
            continue;
        };
        let t = l.i("t").unwrap_or(0);
        match l.s("ev") {
            Some("end") => {
                b.end = t;
                b.ended = true;
                b.check_end = l.b("check_end");
                if l.b("lost") == Some(true) {
                    b.lost_at = Some(b.lost_at.map_or(t, |x| x.min(t)));
                }
            }
            Some("lost") => b.lost_at = Some(b.lost_at.map_or(t, |x| x.min(t))),
            _ => {}
        }
    }
    for (i, b) in bodies.iter_mut() {
        if !b.ended {
            b.end = last_of
                .get(i.0.as_str())
                .copied()
                .unwrap_or(t1)
                .max(b.start);
        }
        if let Some((check, wait)) = grant_check.get(i) {
            b.check = *check;
            b.via_wait = *wait;
        }
        b.paused = faults
            .iter()
            .filter(|f| f.kind == "pause-client" && f.target.as_deref() == Some(b.w.as_str()))
            .find(|f| f.start < b.end && f.end > b.start)
            .map(|f| (f.start, f.end));
    }
    let mut by_key: BTreeMap<String, Vec<Body>> = BTreeMap::new();
    for b in bodies.into_values() {
        by_key.entry(b.key.clone()).or_default().push(b);
    }
    for v in by_key.values_mut() {
        v.sort_by_key(|b| (b.start, b.token));
    }

    let mut report = Report::default();
    let mut lost_refs: Vec<(Body, i64, &'static str)> = Vec::new();

    // (a) overlaps, and the lost leases they imply for (e).
    let (mut overlaps_bad, mut overlaps_outside, mut overlaps_paused) = (0, 0, 0);
    for (key, v) in &by_key {
        for i in 0..v.len() {
            for j in i + 1..v.len() {
                let (a, b) = (&v[i], &v[j]);
                if b.start >= a.end {
                    break;
                }
                if !a.mode.excludes(b.mode) {
                    continue;
                }
                report.overlaps += 1;
                // The earlier-started body lost its lease when the later
                // one was granted.
                if b.token > a.token {
                    lost_refs.push((a.clone(), b.start, "overlapped"));
                }
                let text = format!(
                    "(a) overlap on {key}: {} and {}",
                    a.describe(t0),
                    b.describe(t0)
                );
                if a.paused.is_some() || b.paused.is_some() {
                    overlaps_paused += 1;
                } else if !documented {
                    overlaps_outside += 1;
                    report
                        .outside
                        .push(format!("{text} (outside the documented conditions)"));
                } else {
                    overlaps_bad += 1;
                    report.violations.push(text);
                }
            }
        }
    }

    // (a) a counted key never has more holders at once than its limit: at
    // each body's start, the bodies of the key still running then.
    let mut over_limit = 0;
    for (key, v) in &by_key {
        for (j, b) in v.iter().enumerate() {
            let Mode::Limit(n) = b.mode else { continue };
            let running: Vec<&Body> = v[..j]
                .iter()
                .filter(|a| a.end > b.start && matches!(a.mode, Mode::Limit(_)))
                .collect();
            if (running.len() as i128) < n {
                continue;
            }
            report.overlaps += 1;
            // The oldest grant among them lost its permit to a later one.
            if let Some(oldest) = running.iter().min_by_key(|a| a.token) {
                if b.token > oldest.token {
                    lost_refs.push(((*oldest).clone(), b.start, "over the limit"));
                }
            }
            let text = format!(
                "(a) {} holders at once on {key} (limit {n}): {} started while {} ran",
                running.len() + 1,
                b.describe(t0),
                running
                    .iter()
                    .map(|a| a.describe(t0))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if b.paused.is_some() || running.iter().any(|a| a.paused.is_some()) {
                overlaps_paused += 1;
            } else if !documented {
                overlaps_outside += 1;
                report
                    .outside
                    .push(format!("{text} (outside the documented conditions)"));
            } else {
                over_limit += 1;
                overlaps_bad += 1;
                report.violations.push(text);
            }
        }
    }

    // (b) the fenced resource's log, in the order it accepted writes.
    let mut accepted: BTreeMap<String, Vec<(i128, i128, String)>> = BTreeMap::new();
    for l in lines.iter().filter(|l| l.s("ev") == Some("accepted")) {
        if let (Some(k), Some(tok), Some(seq)) = (l.s("key"), l.n("token"), l.n("seq")) {
            accepted.entry(k.to_string()).or_default().push((
                seq,
                tok,
                l.s("w").unwrap_or("").to_string(),
            ));
        }
    }
    let mut stale = 0;
    let mut accepted_n = 0;
    for (key, v) in accepted.iter_mut() {
        v.sort();
        accepted_n += v.len();
        let mut high: Option<(i128, &str)> = None;
        for (seq, tok, w) in v.iter() {
            if let Some((h, hw)) = high {
                if *tok < h {
                    stale += 1;
                    report.violations.push(format!(
                        "(b) stale write accepted on {key}: #{seq} by {w} with token {tok} after token {h} (by {hw})"
                    ));
                }
            }
            if high.is_none_or(|(h, _)| *tok >= h) {
                high = Some((*tok, w));
            }
        }
    }
    let writes = lines.iter().filter(|l| l.s("ev") == Some("write")).count();
    let rejected = lines
        .iter()
        .filter(|l| l.s("ev") == Some("write") && l.b("ok") == Some(false))
        .count();

    // (c) tokens in body start order; where holders run together, above
    // every body that ended before this one's worker began asking. (Not
    // before its start: two permits granted in token order can start
    // their bodies in the other order, when the first waits longer for its
    // replicas' acknowledgement.)
    let mut backwards = 0;
    for (key, v) in &by_key {
        let together = v.iter().any(|b| b.mode != Mode::Exclusive);
        for (j, b) in v.iter().enumerate() {
            let before = v[..j]
                .iter()
                .filter(|h| !together || h.end <= b.asked)
                .max_by_key(|h| h.token);
            let Some(h) = before else { continue };
            if b.token <= h.token {
                backwards += 1;
                let text = format!(
                    "(c) token went backwards on {key}: {} started after {}",
                    b.describe(t0),
                    h.describe(t0)
                );
                if documented {
                    report.violations.push(text);
                } else {
                    report
                        .outside
                        .push(format!("{text} (outside the documented conditions)"));
                }
            }
        }
    }

    // (d) grants against the lock state.
    let mut disagree = 0;
    for v in by_key.values() {
        for b in v {
            if b.check == Some(false) && b.lost_at.is_none() && b.paused.is_none() {
                disagree += 1;
                report.violations.push(format!(
                    "(d) CHECK right after the grant answered 0 and the lease was never reported lost: {} on {}",
                    b.describe(t0),
                    b.key
                ));
            }
        }
    }
    let mut left_held = 0;
    let mut left_by_earlier = 0;
    for l in lines
        .iter()
        .filter(|l| l.s("ev") == Some("skip") && l.b("held_after") == Some(true))
    {
        // A lock in this owner's name may be an earlier call's on the same
        // key, still live: a lease lost in a failover whose release did not
        // reach the server, a not-acknowledged grant whose best-effort
        // release did not. Only a lock no earlier call can explain counts.
        let began = l.i("began").unwrap_or(l.i("t").unwrap_or(0));
        let earlier = lines.iter().any(|e| {
            e.s("w") == l.s("w")
                && e.s("key") == l.s("key")
                && !std::ptr::eq(e, l)
                && matches!(e.s("ev"), Some("start" | "end" | "lost" | "skip"))
                && e.s("why") != Some("timed-out")
                && e.s("why") != Some("lock-held")
                && e.i("t")
                    .is_some_and(|t| t <= began && t + ttl_ns + SLACK_NS >= began)
        });
        if earlier {
            left_by_earlier += 1;
            continue;
        }
        left_held += 1;
        report.violations.push(format!(
            "(d) a WAIT-queue acquire by {} on {} ended without a grant ({}) but left the lock held in its name at {:.3}s",
            l.s("w").unwrap_or("?"),
            l.s("key").unwrap_or("?"),
            l.s("why").unwrap_or("?"),
            secs(l.i("t").unwrap_or(0) - t0)
        ));
    }

    // (e) lost leases: overlapped ones (above), paused clients, and leases
    // the lock no longer showed at the body's end.
    for v in by_key.values() {
        for b in v {
            if b.check_end == Some(false) && b.paused.is_none() {
                lost_refs.push((b.clone(), b.end, "gone from the lock by the body's end"));
            }
            if let Some((ps, pe)) = b.paused {
                if pe - ps > ttl_ns {
                    lost_refs.push((b.clone(), pe, "client paused past the ttl"));
                }
            }
        }
    }
    // One entry per lease: the earliest reference time.
    let mut lost: BTreeMap<(String, String, i128), (Body, i64, &'static str)> = BTreeMap::new();
    for (b, r, why) in lost_refs {
        let e = lost
            .entry((b.w.clone(), b.key.clone(), b.token))
            .or_insert((b, r, why));
        if r < e.1 {
            e.1 = r;
            e.2 = why;
        }
    }
    let (mut reported, mut unreported) = (0, 0);
    for (b, r, why) in lost.values() {
        match b.lost_at {
            Some(t) if t <= r + ttl_ns + SLACK_NS => reported += 1,
            _ => {
                unreported += 1;
                let text = format!(
                    "(e) lost lease ({why} at {:.3}s) not reported to its holder within the ttl: {} on {}",
                    secs(r - t0),
                    b.describe(t0),
                    b.key
                );
                if documented {
                    report.violations.push(text);
                } else {
                    report
                        .outside
                        .push(format!("{text} (outside the documented conditions)"));
                }
            }
        }
    }

    // (f) progress: gaps between grants (body starts) per key, with the run's
    // start and end as fence posts; a gap belongs to a fault it overlaps.
    let mut skips: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for l in lines.iter().filter(|l| l.s("ev") == Some("skip")) {
        if let (Some(k), Some(t)) = (l.s("key"), l.i("t")) {
            skips.entry(k).or_default().push(t);
        }
    }
    let mut stall_by_kind: BTreeMap<String, Stalls> = BTreeMap::new();
    let mut longest = (0i64, String::new());
    for f in &faults {
        let mut worst = 0i64;
        for v in by_key.values() {
            let mut posts: Vec<i64> = v.iter().map(|b| b.start).collect();
            posts.push(t0);
            posts.push(t1);
            posts.sort_unstable();
            for w in posts.windows(2) {
                if w[0] < f.end && w[1] > f.start {
                    worst = worst.max(w[1] - w[0]);
                }
            }
        }
        // Back: from the fault's start until each key's first grant after
        // it. The fault's own bound is its failover time (or its length)
        // plus one ttl; a body that held its name through the fault and was
        // not lost had the name until it ended, so the bound for that key
        // is no earlier than that end.
        // A name that nobody asked for after that bound was idle, not held
        // back: with no refused or failed attempt on it in between, the
        // time counts only from when the next grant's worker began asking.
        let bound = f.start + f.failover_ns.unwrap_or(f.end - f.start) + ttl_ns;
        let mut back = 0i64;
        let mut over: Option<i64> = None;
        for (key, v) in &by_key {
            let Some(first) = v
                .iter()
                .filter(|b| b.start > f.start)
                .min_by_key(|b| b.start)
            else {
                continue;
            };
            let next = first.start;
            let held_until = v
                .iter()
                .filter(|b| b.start <= f.start && b.end > f.start && b.end < next)
                .filter(|b| b.ended && b.lost_at.is_none())
                .map(|b| b.end)
                .max()
                .unwrap_or(f.start);
            let from = bound.max(held_until);
            let sought = skips
                .get(key.as_str())
                .is_some_and(|ts| ts.iter().any(|t| *t > from && *t < next));
            let from = if sought { from } else { from.max(first.asked) };
            back = back.max(next - f.start);
            let o = next - from;
            over = Some(over.map_or(o, |x| x.max(o)));
        }
        let e = stall_by_kind.entry(f.kind.clone()).or_default();
        e.n += 1;
        e.back = e.back.max(back);
        if let Some(o) = over {
            e.back_over = Some(e.back_over.map_or(o, |x| x.max(o)));
        }
        if worst >= e.worst {
            e.worst = worst;
            e.failover = f.failover_ns;
            e.whole = f.whole_ns;
        }
        if let Some(fo) = f.failover_ns {
            e.beyond_failover = Some(e.beyond_failover.map_or(worst - fo, |x| x.max(worst - fo)));
        }
        if worst > longest.0 {
            longest = (worst, f.kind.clone());
        }
    }
    // A key with no grant at all in the last 30 s of a run that long.
    if t1 - t0 > 40_000_000_000 {
        for (key, v) in &by_key {
            let last = v.iter().map(|b| b.start).max().unwrap_or(t0);
            if t1 - last > 30_000_000_000 {
                report.violations.push(format!(
                    "(f) no progress: no grant on {key} in the last {:.1}s of the run",
                    secs(t1 - last)
                ));
            }
        }
    }

    // The table.
    let nbodies: usize = by_key.values().map(Vec::len).sum();
    report.bodies = nbodies;
    let count = |ev: &str, why: &str| {
        lines
            .iter()
            .filter(|l| l.s("ev") == Some(ev) && l.s("why") == Some(why))
            .count()
    };
    let by_worker_kind = |prefix: &str| {
        by_key
            .values()
            .flatten()
            .filter(|b| b.w.starts_with(prefix))
            .count()
    };
    let t = &mut report.table;
    let _ = writeln!(t, "run {title}");
    // A run recorded before the topology was in its meta ran Sentinel's.
    let (topology, detection) = match meta.s("topology") {
        Some("cluster") => (
            "cluster (3 primaries, a replica each)",
            "cluster-node-timeout",
        ),
        _ => (
            "sentinel (a primary, 2 replicas, 3 Sentinels)",
            "sentinel down-after",
        ),
    };
    match meta.s("server") {
        Some(server) => {
            let _ = writeln!(t, "  topology: {topology}; server: {server}");
        }
        // A run recorded before its meta named the server.
        None => {
            let _ = writeln!(t, "  topology: {topology}");
        }
    }
    let _ = writeln!(
        t,
        "  {:.0}s, ttl {} ms, replicas acknowledging: {}, {}; primary persistence: {}; {detection} {} ms; a primary failed over from rejoins as {}; seed {}",
        secs(t1 - t0),
        ttl_ns / 1_000_000,
        if acks == 0 { "off".to_string() } else { acks.to_string() },
        if documented {
            "within the documented conditions".to_string()
        } else {
            format!("outside the documented conditions ({})", meta.s("outside").unwrap_or("?"))
        },
        meta.s("persistence").unwrap_or("?"),
        meta.i("down_after_ms").unwrap_or(0),
        meta.s("rejoin").unwrap_or("primary"),
        meta.n("seed").unwrap_or(0),
    );
    let row = |t: &mut String, k: &str, v: String| {
        let _ = writeln!(t, "  | {k:<40} | {v:<50} |");
    };
    if let Some(spec) = meta.s("sentinel_debug").filter(|s| !s.is_empty()) {
        let _ = writeln!(t, "  sentinel periods: SENTINEL DEBUG {spec}");
    }
    let _ = writeln!(t, "  | {:<40} | {:<50} |", "", "");
    row(
        t,
        "bodies",
        format!(
            "{nbodies} (cli {}, rust {}, node {})",
            by_worker_kind("cli"),
            by_worker_kind("rust"),
            by_worker_kind("node")
        ),
    );
    row(
        t,
        "grants (via WAIT queue)",
        format!(
            "{grants} ({})",
            grant_check.values().filter(|(_, w)| *w).count()
        ),
    );
    row(
        t,
        "not acknowledged",
        count("skip", "not-acknowledged").to_string(),
    );
    row(
        t,
        "skipped: held / timed out / error",
        format!(
            "{} / {} / {}",
            count("skip", "lock-held"),
            count("skip", "timed-out"),
            count("skip", "error")
        ),
    );
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &faults {
        *kinds.entry(f.kind.as_str()).or_default() += 1;
    }
    row(
        t,
        "faults",
        if kinds.is_empty() {
            "none".to_string()
        } else {
            kinds
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    let by_mode = |m: fn(&Mode) -> bool| by_key.values().flatten().filter(|b| m(&b.mode)).count();
    row(
        t,
        "bodies exclusive / shared / counted",
        format!(
            "{} / {} / {}",
            by_mode(|m| *m == Mode::Exclusive),
            by_mode(|m| *m == Mode::Shared),
            by_mode(|m| matches!(m, Mode::Limit(_)))
        ),
    );
    row(
        t,
        "(a) overlaps",
        format!("{overlaps_bad} (of which over a limit {over_limit}; outside conditions {overlaps_outside}, paused client {overlaps_paused})"),
    );
    row(
        t,
        "(b) stale writes accepted",
        format!("{stale} (writes {writes}, accepted {accepted_n}, refused {rejected})"),
    );
    row(t, "(c) tokens backwards", backwards.to_string());
    row(
        t,
        "(d) grants disagreeing with the lock",
        format!(
            "{disagree} (WAIT timeouts left held: {left_held}; by an earlier call: {left_by_earlier})"
        ),
    );
    row(
        t,
        "(e) lost leases reported / unreported",
        format!("{reported} / {unreported}"),
    );
    row(
        t,
        "(f) longest stall",
        if longest.1.is_empty() {
            "-".to_string()
        } else {
            format!("{:.2}s (after {})", secs(longest.0), longest.1)
        },
    );
    for (kind, st) in &stall_by_kind {
        let mut text = format!("{:.2}s", secs(st.worst));
        let mut of_it = Vec::new();
        if let Some(fo) = st.failover {
            of_it.push(format!("failover {:.2}s", secs(fo)));
        }
        if let Some(w) = st.whole {
            of_it.push(format!("whole again {:.2}s", secs(w)));
        }
        if !of_it.is_empty() {
            let _ = write!(text, " ({})", of_it.join(", "));
        }
        if let Some(b) = st.beyond_failover {
            let _ = write!(
                text,
                "; beyond its failover at most {:.2}s (ttl {:.2}s)",
                secs(b),
                secs(ttl_ns)
            );
        }
        row(t, &format!("    stall after {kind} (x{})", st.n), text);
    }
    for (kind, st) in &stall_by_kind {
        let over = st.back_over.unwrap_or(0);
        row(
            t,
            &format!("    granted again after {kind}"),
            format!(
                "within {:.2}s; {}",
                secs(st.back),
                if over <= 0 {
                    format!(
                        "inside its failover (or length) + one ttl by {:.2}s",
                        secs(-over)
                    )
                } else {
                    format!(
                        "up to {:.2}s past its failover (or length) + one ttl",
                        secs(over)
                    )
                }
            ),
        );
    }
    row(
        t,
        "violations",
        format!(
            "{}{}",
            report.violations.len(),
            if report.outside.is_empty() {
                String::new()
            } else {
                format!(
                    " (+{} outside the documented conditions)",
                    report.outside.len()
                )
            }
        ),
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The violations `r` reports under one check, e.g. `"(b)"`.
    fn under<'a>(r: &'a Report, check: &str) -> Vec<&'a String> {
        r.violations
            .iter()
            .filter(|v| v.starts_with(check))
            .collect()
    }

    const MS: i64 = 1_000_000;

    fn meta() -> Line {
        Line::new("meta", 0, "orchestrator")
            .with("ttl_ms", 1500i64)
            .with("replicas", 2i64)
            .with("documented", true)
            .with("t0", 0i64)
            .with("t1", 10_000 * MS)
    }

    /// A body's grant, start and end lines, and its fenced write.
    fn body(w: &str, key: &str, token: i64, start_ms: i64, end_ms: i64) -> Vec<Line> {
        vec![
            Line::new("grant", start_ms * MS, w)
                .with("key", key)
                .with("token", token)
                .with("owner", w)
                .with("check", true)
                .with("acked", true)
                .with("wait", false),
            Line::new("start", start_ms * MS, w)
                .with("key", key)
                .with("token", token)
                .with("owner", w),
            Line::new("end", end_ms * MS, w)
                .with("key", key)
                .with("token", token)
                .with("lost", false),
        ]
    }

    /// An attempt on `key` refused at `ms` (the name was sought then).
    fn refused(w: &str, key: &str, ms: i64) -> Line {
        Line::new("skip", ms * MS, w)
            .with("key", key)
            .with("why", "lock-held")
            .with("wait", false)
    }

    fn accepted(key: &str, token: i64, seq: i64, w: &str) -> Line {
        Line::new("accepted", 0, "fenced")
            .with("key", key)
            .with("token", token)
            .with("seq", seq)
            .with("w", w)
    }

    fn clean() -> Vec<Line> {
        let mut h = vec![meta()];
        h.extend(body("rust-1", "k0", 10, 100, 200));
        h.extend(body("cli-1", "k0", 11, 250, 300));
        h.extend(body("node-1", "k1", 5, 100, 400));
        h.push(accepted("k0", 10, 1, "rust-1"));
        h.push(accepted("k0", 11, 2, "cli-1"));
        h.push(accepted("k1", 5, 3, "node-1"));
        h
    }

    #[test]
    fn a_clean_history_passes() {
        let r = check_lines(&clean(), "clean");
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.bodies, 3);
        assert_eq!(r.overlaps, 0);
    }

    /// A body in `mode` (`"shared"`, or `"limit"` with `limit`).
    fn held_as(
        mode: &str,
        limit: i64,
        w: &str,
        key: &str,
        token: i64,
        s: i64,
        e: i64,
    ) -> Vec<Line> {
        let mut v = body(w, key, token, s, e);
        v[1] = v[1].clone().with("mode", mode).with("limit", limit);
        v
    }

    #[test]
    fn readers_overlap_each_other_but_not_a_writer() {
        let mut h = vec![meta()];
        h.extend(held_as("shared", 0, "rust-1", "rw", 10, 100, 400));
        h.extend(held_as("shared", 0, "node-1", "rw", 11, 150, 300));
        h.extend(held_as("shared", 0, "cli-1", "rw", 12, 200, 500));
        let r = check_lines(&h, "readers");
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.overlaps, 0);
        assert!(r.table.contains("0 / 3 / 0"), "{}", r.table);
        // A writer granted while two readers still run.
        h.extend(body("rust-2", "rw", 13, 350, 450));
        let r = check_lines(&h, "writer among readers");
        let v = under(&r, "(a)");
        assert_eq!(v.len(), 2, "{:?}", r.violations);
        assert!(v.iter().all(|v| v.contains("rust-2 (rust-2) token 13")));
    }

    #[test]
    fn more_holders_than_the_limit_are_found() {
        let mut h = vec![meta()];
        h.extend(held_as("limit", 2, "rust-1", "slots", 10, 100, 400));
        h.extend(held_as("limit", 2, "node-1", "slots", 11, 150, 300));
        h.extend(held_as("limit", 2, "cli-1", "slots", 12, 320, 500));
        let r = check_lines(&h, "two slots");
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        h.extend(held_as("limit", 2, "cli-2", "slots", 13, 200, 250));
        let r = check_lines(&h, "three in two slots");
        let v = under(&r, "(a)");
        assert_eq!(v.len(), 1, "{:?}", r.violations);
        assert!(
            v[0].contains("3 holders at once on slots (limit 2)"),
            "{}",
            v[0]
        );
        assert!(r.table.contains("of which over a limit 1"), "{}", r.table);
    }

    #[test]
    fn a_reader_token_below_one_that_ended_before_it_is_found() {
        let mut h = vec![meta()];
        // Readers may start out of token order while they overlap ...
        h.extend(held_as("shared", 0, "rust-1", "rw", 11, 100, 300));
        h.extend(held_as("shared", 0, "node-1", "rw", 10, 110, 200));
        let r = check_lines(&h, "readers out of order");
        assert!(under(&r, "(c)").is_empty(), "{:?}", r.violations);
        // ... but not below a body that had ended.
        h.extend(held_as("shared", 0, "cli-1", "rw", 9, 350, 400));
        let r = check_lines(&h, "reader behind");
        assert_eq!(under(&r, "(c)").len(), 1, "{:?}", r.violations);
    }

    #[test]
    fn a_permit_whose_body_starts_after_a_later_permit_ended_is_not_backwards() {
        // Two permits granted in token order: the first waited longer for
        // its replicas, so the second ran and ended before the first body
        // started. Both were asked for before either ran.
        let asked = |mut v: Vec<Line>, ms: i64| {
            v[1] = v[1].clone().with("asked", ms * MS);
            v
        };
        let mut h = vec![meta()];
        h.extend(asked(
            held_as("limit", 2, "rust-2", "slots", 17, 313, 340),
            280,
        ));
        h.extend(asked(
            held_as("limit", 2, "cli-1", "slots", 18, 286, 296),
            281,
        ));
        let r = check_lines(&h, "permits in token order, bodies not");
        assert!(under(&r, "(c)").is_empty(), "{:?}", r.violations);
        // Asked for after the other had ended, a lower token is backwards.
        h.extend(asked(
            held_as("limit", 2, "node-1", "slots", 16, 360, 380),
            350,
        ));
        let r = check_lines(&h, "asked after, token below");
        let v = under(&r, "(c)");
        assert_eq!(v.len(), 1, "{:?}", r.violations);
        assert!(v[0].contains("node-1 (node-1) token 16"), "{}", v[0]);
    }

    #[test]
    fn an_overlap_is_found_with_both_bodies() {
        let mut h = clean();
        h.extend(body("node-2", "k0", 12, 280, 350));
        let r = check_lines(&h, "overlap");
        assert_eq!(r.overlaps, 1);
        let v = under(&r, "(a)");
        assert_eq!(v.len(), 1, "{:?}", r.violations);
        assert!(
            v[0].contains("cli-1 (cli-1) token 11") && v[0].contains("node-2 (node-2) token 12")
        );
        // cli-1 was never told it lost its lease.
        assert!(r.violations.iter().any(|v| v.starts_with("(e)")));
    }

    #[test]
    fn an_overlap_of_a_paused_client_is_excluded_but_must_be_reported_lost() {
        let mut h = clean();
        h.extend(body("rust-2", "k2", 20, 1000, 4000));
        h.extend(body("cli-2", "k2", 21, 3000, 3100));
        h.push(
            Line::new("fault", 0, "orchestrator")
                .with("kind", "pause-client")
                .with("start", 1100 * MS)
                .with("end", 3500 * MS)
                .with("target", "rust-2"),
        );
        let r = check_lines(&h, "paused");
        assert!(!r.violations.iter().any(|v| v.starts_with("(a)")));
        assert!(
            r.violations.iter().any(|v| v.starts_with("(e)")),
            "{:?}",
            r.violations
        );
        h.push(
            Line::new("lost", 3600 * MS, "rust-2")
                .with("key", "k2")
                .with("token", 20i64),
        );
        let r = check_lines(&h, "paused, reported");
        assert!(r.violations.is_empty(), "{:?}", r.violations);
    }

    #[test]
    fn overlaps_outside_the_documented_conditions_are_reported_not_failed() {
        let mut h = clean();
        h[0] = meta()
            .with("documented", false)
            .with("outside", "no persistence");
        h.extend(body("node-2", "k0", 12, 280, 350));
        let r = check_lines(&h, "outside");
        assert_eq!(r.overlaps, 1);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert!(r.outside.iter().any(|o| o.starts_with("(a)")));
    }

    #[test]
    fn a_lease_gone_by_the_end_of_its_body_must_have_been_reported() {
        let mut h = clean();
        let mut b = body("rust-5", "k2", 30, 1000, 1400);
        b[2] = b[2].clone().with("check_end", false);
        h.extend(b.clone());
        let r = check_lines(&h, "gone");
        assert!(
            r.violations
                .iter()
                .any(|v| v.starts_with("(e)") && v.contains("gone from the lock")),
            "{:?}",
            r.violations
        );
        b[2] = b[2].clone().with("lost", true);
        let mut h = clean();
        h.extend(b);
        let r = check_lines(&h, "gone, reported");
        assert!(r.violations.is_empty(), "{:?}", r.violations);
    }

    #[test]
    fn a_stale_write_is_found() {
        let mut h = clean();
        h.push(accepted("k0", 10, 4, "rust-1"));
        let r = check_lines(&h, "stale");
        let v = under(&r, "(b)");
        assert_eq!(v.len(), 1, "{:?}", r.violations);
        assert!(v[0].contains("token 10 after token 11"));
    }

    #[test]
    fn a_token_going_backwards_is_found() {
        let mut h = clean();
        h.extend(body("rust-3", "k0", 9, 500, 600));
        let r = check_lines(&h, "backwards");
        let v = under(&r, "(c)");
        assert_eq!(v.len(), 1, "{:?}", r.violations);
        assert!(v[0].contains("rust-3 (rust-3) token 9"));
    }

    #[test]
    fn a_grant_the_lock_does_not_show_is_found() {
        let mut h = clean();
        let mut b = body("rust-4", "k1", 6, 500, 600);
        b[0] = b[0].clone().with("check", false);
        h.extend(b);
        // A WAIT-queue timeout that left the lock held in its name, with no
        // earlier call of that worker on that key to explain it.
        h.push(
            Line::new("skip", 4000 * MS, "rust-4")
                .with("key", "k1")
                .with("why", "timed-out")
                .with("began", 3700 * MS)
                .with("held_after", true),
        );
        let r = check_lines(&h, "disagree");
        assert_eq!(under(&r, "(d)").len(), 2, "{:?}", r.violations);
        // Right after its own lease on that key (which may still be live
        // there), the lock in its name is that lease's.
        h.push(
            Line::new("skip", 1000 * MS, "rust-4")
                .with("key", "k1")
                .with("why", "timed-out")
                .with("began", 700 * MS)
                .with("held_after", true),
        );
        let r = check_lines(&h, "disagree, explained");
        assert_eq!(under(&r, "(d)").len(), 2, "{:?}", r.violations);
    }

    #[test]
    fn the_stall_around_a_fault_is_measured() {
        let mut h = vec![meta()];
        h.extend(body("rust-1", "k0", 1, 100, 150));
        h.extend(body("rust-1", "k0", 2, 3100, 3150));
        h.push(
            Line::new("fault", 0, "orchestrator")
                .with("kind", "kill-restart")
                .with("start", 1000 * MS)
                .with("end", 1100 * MS),
        );
        // Nobody asked for k0 between the fault's bound and its next grant:
        // the name was idle, not held back.
        let r = check_lines(&h, "idle");
        assert!(
            r.table
                .contains("within 2.10s; inside its failover (or length) + one ttl by 0.00s"),
            "{}",
            r.table
        );
        h.push(refused("node-1", "k0", 2900));
        let r = check_lines(&h, "stall");
        assert!(
            r.table.contains("3.00s (after kill-restart)"),
            "{}",
            r.table
        );
        // From the fault's start, k0 was granted again 2.1 s later: past
        // the fault's length (0.1 s) and one ttl (1.5 s).
        assert!(
            r.table
                .contains("within 2.10s; up to 0.50s past its failover (or length) + one ttl"),
            "{}",
            r.table
        );
        // With a failover of 1 s, the same is inside.
        h.retain(|l| l.s("ev") != Some("fault"));
        h.push(
            Line::new("fault", 0, "orchestrator")
                .with("kind", "kill-failover")
                .with("start", 1000 * MS)
                .with("end", 2000 * MS)
                .with("failover_ns", 1000 * MS)
                .with("whole_ns", 1500 * MS),
        );
        let r = check_lines(&h, "stall after a failover");
        assert!(
            r.table
                .contains("3.00s (failover 1.00s, whole again 1.50s)"),
            "{}",
            r.table
        );
        assert!(
            r.table
                .contains("within 2.10s; inside its failover (or length) + one ttl by 0.40s"),
            "{}",
            r.table
        );
    }

    #[test]
    fn a_body_that_held_its_name_through_a_fault_moves_the_bound() {
        // k1's holder went on through a kill-restart (its lease lived on in
        // the restarted server) until 3.0 s; the next grant came 0.05 s
        // after that, although 1.95 s after the fault's length plus a ttl.
        let mut h = vec![meta()];
        h.extend(body("rust-1", "k1", 1, 900, 3000));
        h.extend(body("node-1", "k1", 2, 3050, 3100));
        h.push(refused("cli-1", "k1", 3020));
        h.push(
            Line::new("fault", 0, "orchestrator")
                .with("kind", "kill-restart")
                .with("start", 1000 * MS)
                .with("end", 1100 * MS),
        );
        let r = check_lines(&h, "held through");
        assert!(
            r.table
                .contains("within 2.05s; up to 0.05s past its failover (or length) + one ttl"),
            "{}",
            r.table
        );
        // Lost, it did not hold the name: the bound is the fault's own.
        h.push(
            Line::new("lost", 1500 * MS, "rust-1")
                .with("key", "k1")
                .with("token", 1i64),
        );
        let r = check_lines(&h, "lost through");
        assert!(
            r.table
                .contains("within 2.05s; up to 0.45s past its failover (or length) + one ttl"),
            "{}",
            r.table
        );
    }
}
