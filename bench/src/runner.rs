//! A case (one measured command stream with its prepare steps) and the
//! runner that prepares, times and checks it on one server.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::load::{self, Commands, Expect};
use crate::measure::{commandstats, cpu_ns, Sample};
use crate::resp::Conn;
use crate::Cfg;

pub(crate) fn key(prefix: &str, i: usize) -> Vec<u8> {
    format!("{prefix}:{i:08}").into_bytes()
}

/// One measured command stream.
pub(crate) type Gen = Box<dyn Fn(usize) -> (Commands, Expect)>;

pub(crate) struct Case {
    pub(crate) id: &'static str,
    /// Its `cmdstat_<stat>` line in INFO commandstats.
    pub(crate) stat: &'static str,
    pub(crate) db: u32,
    /// FLUSHDB before every run (fresh-key workloads).
    pub(crate) flush: bool,
    /// Prepare only before the first run (the run does not consume the state).
    pub(crate) prep_once: bool,
    pub(crate) prep: Option<Gen>,
    /// A second prepare step, after `prep` (same once/every-run rule).
    pub(crate) warm: Option<Gen>,
    pub(crate) run: Gen,
}

impl Case {
    /// A case on db 0 whose state is prepared once (`prep`, then no warm
    /// step) and kept across runs; override the rest with `..`.
    pub(crate) fn new(id: &'static str, stat: &'static str, prep: Option<Gen>, run: Gen) -> Case {
        Case {
            id,
            stat,
            db: 0,
            flush: false,
            prep_once: true,
            prep,
            warm: None,
            run,
        }
    }
}

impl Case {
    /// A case on fresh keys: db 1, flushed before every run, nothing to
    /// prepare (`run` gets the round number to name its keys).
    pub(crate) fn fresh(id: &'static str, stat: &'static str, run: Gen) -> Case {
        Case {
            db: 1,
            flush: true,
            prep_once: false,
            ..Case::new(id, stat, None, run)
        }
    }
}

pub(crate) struct Runner<'a> {
    pub(crate) cfg: &'a Cfg,
    pub(crate) port: u16,
    pub(crate) pid: u32,
    pub(crate) admin: Conn,
    pub(crate) prepared: HashSet<&'static str>,
}

impl<'a> Runner<'a> {
    /// A runner on `srv`, talking to it through `admin`.
    pub(crate) fn new(cfg: &'a Cfg, srv: &crate::server::Server, admin: Conn) -> Self {
        Runner {
            cfg,
            port: srv.port,
            pid: srv.pid(),
            admin,
            prepared: HashSet::new(),
        }
    }

    pub(crate) fn load(
        &self,
        db: u32,
        (cmds, expect): (Commands, Expect),
    ) -> Result<(usize, Duration), String> {
        let n = cmds.len();
        let cmds = Arc::new(cmds);
        let took = load::run(
            self.port,
            db,
            self.cfg.conns,
            self.cfg.depth,
            &cmds,
            &expect,
        )?;
        Ok((n, took))
    }

    pub(crate) fn select(&mut self, db: u32) -> Result<(), String> {
        self.admin.call(&["SELECT", &db.to_string()]).map(drop)
    }

    pub(crate) fn measure(&mut self, case: &Case, round: usize) -> Result<Sample, String> {
        let ctx = |e: String| format!("{} (round {round}): {e}", case.id);
        if case.flush {
            self.select(case.db)?;
            self.admin.call(&["FLUSHDB", "SYNC"]).map_err(ctx)?;
        }
        if let Some(prep) = &case.prep {
            if !case.prep_once || self.prepared.insert(case.id) {
                self.load(case.db, prep(round))
                    .map_err(|e| ctx(format!("prepare: {e}")))?;
                if let Some(warm) = &case.warm {
                    self.load(case.db, warm(round))
                        .map_err(|e| ctx(format!("warm-up: {e}")))?;
                }
            }
        }
        self.admin.call(&["CONFIG", "RESETSTAT"]).map_err(ctx)?;
        let cmds = (case.run)(round);
        let cpu0 = cpu_ns(self.pid);
        let (n, took) = self.load(case.db, cmds).map_err(ctx)?;
        let cpu1 = cpu_ns(self.pid);
        let stats = commandstats(&mut self.admin).map_err(ctx)?;
        let (calls, usec) = stats.get(case.stat).copied().unwrap_or((0, 0));
        if calls != n as u64 {
            return Err(ctx(format!(
                "INFO commandstats counted {calls} calls of {}, sent {n}",
                case.stat
            )));
        }
        Ok(Sample {
            us_per_call: usec as f64 / calls as f64,
            rps: n as f64 / took.as_secs_f64(),
            cpu_us: match (cpu0, cpu1) {
                (Some(a), Some(b)) => (b - a) as f64 / 1000.0 / n as f64,
                _ => f64::NAN,
            },
        })
    }

    /// Runs every case `rounds` times, alternating the order.
    pub(crate) fn rounds(
        &mut self,
        cases: &[Case],
        rounds: usize,
    ) -> Result<HashMap<&'static str, Vec<Sample>>, String> {
        let mut out: HashMap<&'static str, Vec<Sample>> = HashMap::new();
        for r in 0..rounds {
            let order: Vec<&Case> = if r % 2 == 0 {
                cases.iter().collect()
            } else {
                cases.iter().rev().collect()
            };
            for c in order {
                let s = self.measure(c, r)?;
                out.entry(c.id).or_default().push(s);
            }
            eprintln!("  round {}/{rounds} done", r + 1);
        }
        Ok(out)
    }
}

pub(crate) fn script_load(con: &mut Conn, body: &str) -> Result<String, String> {
    con.call(&["SCRIPT", "LOAD", body])?
        .text()
        .ok_or_else(|| "SCRIPT LOAD: no sha".into())
}
