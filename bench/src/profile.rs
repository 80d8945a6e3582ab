//! `spacelock-bench profile`: callgrind instruction counts per call.

use std::path::PathBuf;

use crate::runner::{script_load, Runner};
use crate::server::Server;
use crate::workload1::workload1_cases;
use crate::{env_usize, Cfg, LUA_REFRESH, LUA_RELEASE};

/// `spacelock-bench profile`: one server per case under
/// `valgrind --tool=callgrind --instr-atstart=no`; instrumentation is switched
/// on (callgrind_control) only around the measured run, after the prepare
/// step, so the profile holds exactly PROFILE_N calls of the case and the
/// event loop/socket work around them. Env: PROFILE_SERVER (default: Valkey if
/// found, else Redis), PROFILE_N (20000), PROFILE_CASES (comma list of case
/// ids), PROFILE_OUT (directory, default target/bench/profile).
pub(crate) fn profile(cfg: &Cfg) -> Result<(), String> {
    let binary = std::env::var_os("PROFILE_SERVER")
        .map(PathBuf::from)
        .or_else(|| cfg.valkey.clone())
        .unwrap_or_else(|| cfg.redis.clone());
    let n = env_usize("PROFILE_N", 20_000);
    let out = std::env::var_os("PROFILE_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| cfg.root.join("target/bench/profile"));
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let wanted = std::env::var("PROFILE_CASES").unwrap_or_else(|_| {
        "refresh,set_ifeq,lua_refresh,pexpire,release,delifeq,lua_release,acquire,set_nx_px,fencekey,ping,get".into()
    });
    for id in wanted.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let file = out.join(format!("callgrind.{id}"));
        let mut wrapper: Vec<String> = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            &format!("--callgrind-out-file={}", file.display()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // PROFILE_CACHE=1: simulate the caches too (cache misses per call,
        // which instruction counts do not show; several times slower).
        if std::env::var_os("PROFILE_CACHE").is_some_and(|v| v == "1") {
            wrapper.push("--cache-sim=yes".into());
        }
        let srv = Server::start_wrapped(&wrapper, &binary, Some(&cfg.module), &[])?;
        let mut admin = srv.conn();
        let sha_rel = script_load(&mut admin, LUA_RELEASE)?;
        let sha_ref = script_load(&mut admin, LUA_REFRESH)?;
        let cases = workload1_cases(n, srv.is_valkey, &sha_rel, &sha_ref);
        let case = cases
            .iter()
            .find(|c| c.id == id)
            .ok_or_else(|| format!("no case {id:?} on {}", srv.name))?;
        let mut runner = Runner::new(cfg, &srv, admin);
        if case.flush {
            runner.admin.call(&["SELECT", &case.db.to_string()])?;
            runner.admin.call(&["FLUSHDB", "SYNC"])?;
        }
        if let Some(prep) = &case.prep {
            runner.load(case.db, prep(0))?;
        }
        if let Some(warm) = &case.warm {
            runner.load(case.db, warm(0))?;
        }
        let cmds = (case.run)(0);
        let toggle = |on: bool| -> Result<(), String> {
            let st = std::process::Command::new("callgrind_control")
                .args(["-i", if on { "on" } else { "off" }, &srv.pid().to_string()])
                .stdout(std::process::Stdio::null())
                .status()
                .map_err(|e| format!("callgrind_control: {e}"))?;
            if st.success() {
                Ok(())
            } else {
                Err(format!("callgrind_control -i failed: {st}"))
            }
        };
        toggle(true)?;
        let (_, took) = runner.load(case.db, cmds)?;
        toggle(false)?;
        eprintln!(
            "profiled {id} on {}: {n} calls in {:.1} s -> {}",
            srv.name,
            took.as_secs_f64(),
            file.display()
        );
        drop(srv);
    }
    Ok(())
}
