//! Where the workers turn on replica-acknowledged grants in each client,
//! and how the CLI finds the primary.

use spacelock_client::Options;

/// Whether the `spacelock` CLI built here can wait for replicas'
/// acknowledgements (`--replicas`).
pub const CLI_ACKS: bool = true;

/// The Rust client's options with `n` replicas acknowledging (0: off).
pub fn rust_options(options: Options, n: usize) -> Options {
    options.replicas(n)
}

/// The CLI's `--url`: the cluster's nodes (for `--cluster`) when there are
/// any, else the Sentinels, which name the primary.
pub fn cli_url(sentinels: &[u16], cluster: &[u16]) -> Option<String> {
    if !cluster.is_empty() {
        let nodes: Vec<String> = cluster
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect();
        return Some(nodes.join(","));
    }
    let hosts: Vec<String> = sentinels.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    Some(format!(
        "redis+sentinel://{}/{}",
        hosts.join(","),
        crate::topology::SERVICE
    ))
}

/// The CLI's flags for `n` replicas acknowledging (0: none).
pub fn cli_args(cmd: &mut std::process::Command, n: usize) {
    if n > 0 {
        cmd.arg("--replicas").arg(n.to_string());
    }
}
