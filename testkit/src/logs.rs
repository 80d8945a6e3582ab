//! Log lines captured in memory, for tests that assert what a library
//! logged (through `tracing`, in the client's tests).
//!
//! The kit does not depend on a logger: the test binary installs its own,
//! pointed at the buffer, in the closure passed to [`captured_logs`].

use std::sync::{Arc, Mutex, OnceLock};

/// A shared, growing buffer of log output; clones write to the same one.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Everything captured so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// A maker of writers into this buffer, for a logger's `with_writer`.
    pub fn writer(&self) -> impl Fn() -> CapturedLogs + Send + Sync + 'static {
        let logs = self.clone();
        move || logs.clone()
    }

    /// Whether one captured line contains every one of `needles`.
    pub fn has_line(&self, needles: &[&str]) -> bool {
        self.text()
            .lines()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The buffer that everything logged by any test of this binary goes to.
/// The first call runs `install` with it, to set the process's logger
/// (once: a global logger cannot be set twice); later calls only return it.
pub fn captured_logs(install: impl FnOnce(CapturedLogs)) -> CapturedLogs {
    static LOGS: OnceLock<CapturedLogs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = CapturedLogs::default();
        install(logs.clone());
        logs
    })
    .clone()
}
