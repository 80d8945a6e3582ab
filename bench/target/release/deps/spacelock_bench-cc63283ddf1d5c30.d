/work/main/bench/target/release/deps/spacelock_bench-cc63283ddf1d5c30.d: src/main.rs src/burst.rs src/external.rs src/load.rs src/measure.rs src/names.rs src/profile.rs src/resp.rs src/runner.rs src/server.rs src/versus_v01.rs src/workload1.rs src/workload2.rs

/work/main/bench/target/release/deps/spacelock_bench-cc63283ddf1d5c30: src/main.rs src/burst.rs src/external.rs src/load.rs src/measure.rs src/names.rs src/profile.rs src/resp.rs src/runner.rs src/server.rs src/versus_v01.rs src/workload1.rs src/workload2.rs

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

# env-dep:CARGO_MANIFEST_DIR=/work/main/bench
