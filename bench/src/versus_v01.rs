//! Against v0.1: this module's ACQUIRE, REFRESH and RELEASE next to the
//! v0.1 module's, each loaded in its own server started from the same binary
//! with the same options (one server cannot load both: they register the
//! same commands). The cases are workload 1's, byte for byte. Every round
//! runs each case on both servers back to back, and the order (cases and
//! sides) is reversed every other round, so a burst of load from elsewhere
//! on the box hits both sides of a pair alike. The idle server waits in its
//! event loop meanwhile.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::measure::{row, Metric, Row, Sample};
use crate::runner::{Case, Runner};
use crate::server::Server;
use crate::workload1::workload1_cases;
use crate::Cfg;

/// The compared cases (workload 1's ids), each with the id its v0.1 side is
/// filed under, and its row label.
const PAIRS: [(&str, &str, &str); 4] = [
    ("acquire", "acquire_v01", "ACQUIRE fresh key"),
    ("acquire_again", "acquire_again_v01", "ACQUIRE released name"),
    ("refresh", "refresh_v01", "REFRESH"),
    ("release", "release_v01", "RELEASE"),
];

/// Rows "<server> · ACQUIRE fresh key vs v0.1 …", "REFRESH vs v0.1 …",
/// "RELEASE vs v0.1 …" on `binary`; skipped (with the reason in `missing`)
/// when there is no v0.1 module. Returns the server's name if it ran.
pub(crate) fn versus_v01(
    cfg: &Cfg,
    binary: &Path,
    rows: &mut Vec<Row>,
    raw: &mut String,
    missing: &mut Vec<String>,
) -> Result<Option<String>, String> {
    against_v01(cfg, binary, &cfg.module, None, rows, raw, missing)
}

/// Says why `what` is skipped, once per reason under the table: nothing
/// ran.
fn skip(what: &str, why: &str, missing: &mut Vec<String>) -> Option<String> {
    eprintln!("skipping {what}: {why}");
    if !missing.iter().any(|m| m.contains(why)) {
        missing.push(format!("{what}: {why}"));
    }
    None
}

/// The floors against v0.1 on `binary`: v0.1 itself (the bench's spread
/// between identical sides), v0.1 with the cheapest per-lock
/// record (what the module's own record of its grants costs at the least),
/// then v0.1 with fence keys that expire (what forgetting unused names
/// costs at the least). Skipped, with the reason, when they are not built.
pub(crate) fn floors_v01(
    cfg: &Cfg,
    binary: &Path,
    rows: &mut Vec<Row>,
    raw: &mut String,
    missing: &mut Vec<String>,
) -> Result<Option<String>, String> {
    let [record, fence] = match &cfg.floors {
        Ok(f) => f,
        Err(why) => return Ok(skip("the floors under v0.1", why, missing)),
    };
    // v0.1 against itself first: the spread of identical sides, against
    // which the floors' ratios and this module's are read.
    let same = match &cfg.v01 {
        Ok(v01) => against_v01(
            cfg,
            binary,
            v01,
            Some(("floor_none", "v0.1 itself (no cost added)")),
            rows,
            raw,
            missing,
        )?,
        Err(_) => None,
    };
    let a = against_v01(
        cfg,
        binary,
        record,
        Some(("floor_record", "v0.1 + the cheapest per-lock record")),
        rows,
        raw,
        missing,
    )?;
    let b = against_v01(
        cfg,
        binary,
        fence,
        Some(("floor_fence", "v0.1 + fence keys that expire")),
        rows,
        raw,
        missing,
    )?;
    Ok(same.or(a).or(b))
}

/// One module set against v0.1: this module (`floor` `None`), or a floor
/// build (`Some((id, label))`: v0.1 with one of the costs the guarantees
/// add, see bench/floor/v01-floor.patch), whose rows say so.
pub(crate) fn against_v01(
    cfg: &Cfg,
    binary: &Path,
    module: &Path,
    floor: Option<(&str, &str)>,
    rows: &mut Vec<Row>,
    raw: &mut String,
    missing: &mut Vec<String>,
) -> Result<Option<String>, String> {
    let v01 = match &cfg.v01 {
        Ok(p) => p,
        Err(why) => {
            let what = format!("the rows against v0.1 (module {})", cfg.v01_rev);
            return Ok(skip(&what, why, missing));
        }
    };
    let cur = Server::start(binary, Some(module), &[])?;
    let old = Server::start(binary, Some(v01), &[])?;
    let v = cur.name.clone();
    let this = floor.map_or("this module", |f| f.1);
    eprintln!(
        "against v0.1 on {v}: {this} on port {}, v0.1 ({}) on port {}",
        cur.port, cfg.v01_rev, old.port
    );
    // BENCH_V01_CASES: a comma list of the cases to run (all by default).
    let only = std::env::var("BENCH_V01_CASES").ok();
    let cases: Vec<Case> = workload1_cases(cfg.n, cur.is_valkey, "", "")
        .into_iter()
        .filter(|c| PAIRS.iter().any(|(id, _, _)| *id == c.id))
        .filter(|c| only.as_ref().is_none_or(|o| o.split(',').any(|id| id == c.id)))
        .collect();
    let mut sides = [
        Runner::new(cfg, &cur, cur.conn()),
        Runner::new(cfg, &old, old.conn()),
    ];
    // The samples of this side are filed under the case's id (with the
    // floor's in front), v0.1's under its own id.
    let this_id = |id: &str| floor.map_or(id.to_string(), |f| format!("{}:{id}", f.0));
    let mut s: HashMap<String, Vec<Sample>> = HashMap::new();
    for r in 0..cfg.rounds {
        let order: Vec<&Case> = if r % 2 == 0 {
            cases.iter().collect()
        } else {
            cases.iter().rev().collect()
        };
        for c in order {
            let v01_id = PAIRS.iter().find(|p| p.0 == c.id).map_or(c.id, |p| p.1);
            let both = if r % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in both {
                let x = sides[side].measure(c, r).map_err(|e| {
                    let which = if side == 0 { this } else { "v0.1" };
                    format!("{v} ({which}): {e}")
                })?;
                let id = if side == 0 {
                    this_id(c.id)
                } else {
                    v01_id.to_string()
                };
                s.entry(id).or_default().push(x);
            }
        }
        eprintln!("  round {}/{} done", r + 1, cfg.rounds);
    }
    for (a, b, _) in PAIRS.into_iter().filter(|p| s.contains_key(&this_id(p.0))) {
        for id in [this_id(a), b.to_string()] {
            for (r, x) in s[&id].iter().enumerate() {
                let _ = writeln!(
                    raw,
                    "{v} vs v0.1,{id},{r},{:.4},{:.0},{:.4}",
                    x.us_per_call, x.rps, x.cpu_us
                );
            }
        }
    }
    use Metric::{Cpu, Rps, Us};
    for (a, b, what) in PAIRS.into_iter().filter(|p| s.contains_key(&this_id(p.0))) {
        let what = match floor {
            None => what.to_string(),
            Some((_, label)) => format!("{what}, {label},"),
        };
        for (m, unit) in [
            (Us, "server µs/call"),
            (Cpu, "server CPU µs/call"),
            (Rps, "rps"),
        ] {
            rows.push(row(
                format!(
                    "{v} · {what} vs v0.1 (module {}, its own server from the same binary) · {unit}",
                    cfg.v01_rev
                ),
                &s,
                &this_id(a),
                b,
                m,
            ));
        }
    }
    Ok(Some(v))
}
