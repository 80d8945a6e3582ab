//! Where the workers turn on replica-acknowledged grants in each client.

use spacelock_client::Options;

/// Whether the `spacelock` CLI built here can wait for replicas'
/// acknowledgements (`--replicas`).
pub const CLI_ACKS: bool = false;

/// The Rust client's options with `n` replicas acknowledging (0: off).
pub fn rust_options(options: Options, n: usize) -> Options {
    options.replicas(n)
}

/// The CLI's `--url`: the primary Sentinel names now.
pub fn cli_url(sentinels: &[u16]) -> Option<String> {
    crate::workers::primary_port(sentinels).map(|p| format!("redis://127.0.0.1:{p}/"))
}

/// The CLI's flags for `n` replicas acknowledging (0: none).
pub fn cli_args(cmd: &mut std::process::Command, n: usize) {
    let _ = (cmd, n);
}
