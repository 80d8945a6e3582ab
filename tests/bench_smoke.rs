//! Smoke test of `make bench`: runs `bench/run.sh` in QUICK mode with a tiny
//! N and checks that the Markdown table is well-formed. It checks the shape,
//! not the numbers (those belong to `make bench`, which is not part of
//! `make test`).
//!
//! It never downloads or builds anything: the load tool comes from
//! `make test` (which builds it first; without it the test is skipped), and
//! Valkey 9.1.2 (the physical-limit anchor) only from `$SPACELOCK_VALKEY91`
//! (`make test-compat` sets it). Without it the Valkey rows are left out with
//! a printed reason, and the Redis rows are still benched and checked.

use spacelock_testkit as kit;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `<target>/<profile>` of this test binary (`<target>/<profile>/deps/bench_smoke-…`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary is in <target>/<profile>/deps")
        .to_path_buf()
}

fn module_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SPACELOCK_MODULE") {
        if Path::new(&p).exists() {
            return PathBuf::from(p);
        }
    }
    let p = profile_dir().join("libspacelock.so");
    if p.exists() {
        return p;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/libspacelock.so")
}

fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(|c| c.trim().to_string()).collect()
}

#[kit::test]
fn bench_quick_produces_a_well_formed_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = profile_dir().parent().expect("<target> dir").to_path_buf();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("results.md");
    let module = module_path();
    assert!(module.exists(), "module not built: {}", module.display());
    let tool = target.join("bench-tool/release/spacelock-bench");
    if !tool.exists() {
        kit::skip(format!(
            "the load tool is not built ({}): `make test` builds it",
            tool.display()
        ));
    }
    let valkey = std::env::var("SPACELOCK_VALKEY91").unwrap_or_default();

    let run = Command::new("bash")
        .arg(root.join("bench/run.sh"))
        .env("QUICK", "1")
        .env(
            "BENCH_N",
            std::env::var("BENCH_SMOKE_N").unwrap_or_else(|_| "400".into()),
        )
        .env("BENCH_ROUNDS", "2")
        .env("BENCH_SCALE_N", "3000")
        .env("BENCH_SMALL_N", "100")
        // 100 waiters are enough to show the expiry-burst rows' shape.
        .env("BENCH_BURST_LOCKS", "100")
        .env("BENCH_MODULE", &module)
        .env("BENCH_NO_BUILD", "1")
        .env("BENCH_TOOL_NO_BUILD", "1")
        .env("BENCH_NO_FETCH", "1")
        .env("VALKEY_SERVER", &valkey)
        // Workloads 3-4 need the tokio client crate built: not in a smoke test.
        .env("BENCH_SKIP_CLIENT", "1")
        // Workload 5 needs the Node client built (make test-node covers it).
        .env("BENCH_SKIP_NODE", "1")
        .env("BENCH_OUT", &out)
        // The load tool builds in <target>/bench-tool: never our own build lock.
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("run bench/run.sh");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "bench failed: {}\nstdout:\n{}\nstderr:\n{stderr}",
        run.status,
        String::from_utf8_lossy(&run.stdout)
    );
    let md = std::fs::read_to_string(&out).expect("results.md written");
    assert_eq!(
        md,
        String::from_utf8_lossy(&run.stdout),
        "printed table == written file"
    );

    let mut lines = md.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("spacelock bench · "), "{header}");
    assert!(header.contains("Redis "), "server versions: {header}");
    assert!(header.contains(" cores"), "cores: {header}");
    let anchor = md
        .lines()
        .find(|l| l.starts_with("Anchor"))
        .expect("anchor line");

    let table: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
    assert!(table.len() >= 3, "a table with rows:\n{md}");
    assert_eq!(
        cells(table[0]),
        ["workload", "spacelock", "baseline", "ratio", "spread"]
    );
    assert_eq!(cells(table[1]).len(), 5, "{}", table[1]);
    let rows: Vec<Vec<String>> = table[2..].iter().map(|l| cells(l)).collect();
    for (line, row) in table[2..].iter().zip(&rows) {
        assert_eq!(row.len(), 5, "every row has 5 columns: {line}");
        let ratio: f64 = row[3]
            .parse()
            .unwrap_or_else(|_| panic!("ratio is a number: {line}"));
        assert!(ratio.is_finite() && ratio > 0.0, "ratio > 0: {line}");
        assert!(!row[0].is_empty() && !row[4].is_empty(), "{line}");
    }
    let has = |server: &str, what: &str| {
        rows.iter()
            .any(|r| r[0].starts_with(server) && r[0].contains(what))
    };
    for what in [
        "ACQUIRE fresh key",
        "REFRESH held key vs Lua",
        "RELEASE held key vs Lua",
        "dispatch floor",
        "scale: REFRESH",
        "memory per held lock",
        "distinct lock names",
        "expiry burst",
    ] {
        assert!(has("Redis ", what), "Redis row {what:?} missing:\n{md}");
    }
    if anchor.starts_with("Anchor (physical limit") {
        assert!(has("Valkey 9.1.2", "native `SET k owner IFEQ"), "{md}");
        assert!(has("Valkey 9.1.2", "native `DELIFEQ"), "{md}");
    } else {
        println!("SKIPPED the Valkey 9.1.2 rows: {anchor}");
    }
}

kit::main!();
