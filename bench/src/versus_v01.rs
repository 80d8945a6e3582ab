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
    let v01 = match &cfg.v01 {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipping the rows against v0.1 ({}): {why}", cfg.v01_rev);
            if !missing.iter().any(|m| m.contains(why.as_str())) {
                missing.push(format!(
                    "the rows against v0.1 (module {}): {why}",
                    cfg.v01_rev
                ));
            }
            return Ok(None);
        }
    };
    let cur = Server::start(binary, Some(&cfg.module), &[])?;
    let old = Server::start(binary, Some(v01), &[])?;
    let v = cur.name.clone();
    eprintln!(
        "against v0.1 on {v}: this module on port {}, v0.1 ({}) on port {}",
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
    let mut s: HashMap<&'static str, Vec<Sample>> = HashMap::new();
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
                    let which = if side == 0 { "this module" } else { "v0.1" };
                    format!("{v} ({which}): {e}")
                })?;
                let id = if side == 0 { c.id } else { v01_id };
                s.entry(id).or_default().push(x);
            }
        }
        eprintln!("  round {}/{} done", r + 1, cfg.rounds);
    }
    for (a, b, _) in PAIRS.into_iter().filter(|p| s.contains_key(p.0)) {
        for id in [a, b] {
            for (r, x) in s[id].iter().enumerate() {
                let _ = writeln!(
                    raw,
                    "{v} vs v0.1,{id},{r},{:.4},{:.0},{:.4}",
                    x.us_per_call, x.rps, x.cpu_us
                );
            }
        }
    }
    use Metric::{Cpu, Rps, Us};
    for (a, b, what) in PAIRS.into_iter().filter(|p| s.contains_key(p.0)) {
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
                a,
                b,
                m,
            ));
        }
    }
    Ok(Some(v))
}
