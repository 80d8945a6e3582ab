/work/main/bench/target/release/deps/spacelock_bench-f0dcebaec9ed4b71.d: src/main.rs src/burst.rs src/external.rs src/load.rs src/measure.rs src/names.rs src/profile.rs src/resp.rs src/runner.rs src/server.rs src/versus_v01.rs src/workload1.rs src/workload2.rs Cargo.toml

/work/main/bench/target/release/deps/libspacelock_bench-f0dcebaec9ed4b71.rmeta: src/main.rs src/burst.rs src/external.rs src/load.rs src/measure.rs src/names.rs src/profile.rs src/resp.rs src/runner.rs src/server.rs src/versus_v01.rs src/workload1.rs src/workload2.rs Cargo.toml

src/main.rs:
src/burst.rs:
src/external.rs:
src/load.rs:
src/measure.rs:
src/names.rs:
src/profile.rs:
src/resp.rs:
src/runner.rs:
src/server.rs:
src/versus_v01.rs:
src/workload1.rs:
src/workload2.rs:
Cargo.toml:

# env-dep:CARGO_MANIFEST_DIR=/work/main/bench
# env-dep:CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
# env-dep:CLIPPY_CONF_DIR
