//! The in-process mutex: one entry per key that a `SpaceLock` (or a clone)
//! is running or still releasing.
//!
//! An entry is *running* while a call acquires, runs its body and releases,
//! and *releasing* while the release of a cancelled call runs in the
//! background. A call that finds its key running gets `InProgress`; one that
//! finds it releasing waits for that release first (it could otherwise
//! delete the new grant: both use the same owner id).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

enum Slot {
    Running,
    /// Changes (closes) when the background release has finished.
    Releasing(watch::Receiver<()>),
}

/// The in-process mutex: which keys this `SpaceLock` (and its clones) is
/// running or still releasing.
#[derive(Default)]
pub(crate) struct Registry {
    map: Mutex<HashMap<String, Slot>>,
}

impl Registry {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `key` for one call: `None` if a call is running it. Waits out
    /// a background release of `key` first. The check and the claim are one
    /// synchronous critical section.
    pub(crate) async fn claim(self: &Arc<Self>, key: &str) -> Option<Claim> {
        loop {
            let mut done = {
                let mut map = self.map();
                match map.get(key) {
                    None => {
                        map.insert(key.to_string(), Slot::Running);
                        return Some(Claim {
                            registry: self.clone(),
                            key: key.to_string(),
                            done: None,
                        });
                    }
                    Some(Slot::Running) => return None,
                    Some(Slot::Releasing(rx)) => rx.clone(),
                }
            };
            // Errors once the releasing task drops its sender: done.
            let _ = done.changed().await;
        }
    }

    /// Whether a call is running `key` (not: releasing it in the background).
    pub(crate) fn is_running(&self, key: &str) -> bool {
        matches!(self.map().get(key), Some(Slot::Running))
    }

    /// Waits until no background release is in flight.
    pub(crate) async fn settle(&self) {
        loop {
            let pending: Vec<watch::Receiver<()>> = self
                .map()
                .values()
                .filter_map(|s| match s {
                    Slot::Releasing(rx) => Some(rx.clone()),
                    Slot::Running => None,
                })
                .collect();
            if pending.is_empty() {
                return;
            }
            for mut rx in pending {
                let _ = rx.changed().await;
            }
        }
    }
}

/// A claimed key; removed from the registry on drop.
pub(crate) struct Claim {
    registry: Arc<Registry>,
    key: String,
    /// Set while releasing in the background; dropped (after the removal)
    /// to wake the calls waiting for the key.
    done: Option<watch::Sender<()>>,
}

impl Claim {
    /// From now on the key is being released in the background.
    pub(crate) fn into_releasing(mut self) -> Claim {
        let (tx, rx) = watch::channel(());
        self.registry
            .map()
            .insert(self.key.clone(), Slot::Releasing(rx));
        self.done = Some(tx);
        self
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.registry.map().remove(&self.key);
        // `done` is dropped after this, waking the waiters.
    }
}
