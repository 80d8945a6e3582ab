//! The `INFO spacelock` section. Field names are a public contract
//! (dashboards rely on them); the server prefixes each with `spacelock_`.

use crate::ffi::{InfoCtx, InfoSection};
use crate::{config, handoff, stats, terms};

/// The `INFO spacelock` section.
pub struct ModuleInfo;

impl InfoSection for ModuleInfo {
    fn render(info: &mut InfoCtx, _for_crash_report: bool) {
        info.section();
        info.field(c"acquired", stats::ACQUIRED.get());
        info.field(c"acquire_contended", stats::ACQUIRE_CONTENDED.get());
        info.field(c"refreshed", stats::REFRESHED.get());
        info.field(c"refresh_not_owner", stats::REFRESH_NOT_OWNER.get());
        info.field(c"released", stats::RELEASED.get());
        info.field(c"release_not_owner", stats::RELEASE_NOT_OWNER.get());
        info.field(c"handoffs", stats::HANDOFFS.get());
        info.field(c"wait_timeouts", stats::WAIT_TIMEOUTS.get());
        info.field(c"wait_grants_undone", stats::WAIT_GRANTS_UNDONE.get());
        info.field(c"wait_grants_lost", stats::WAIT_GRANTS_LOST.get());
        let (clients, keys) = handoff::gauges();
        info.field(c"waiting_clients", clients);
        info.field(c"keys_with_waiters", keys);
        info.field(c"checks_passed", stats::CHECKS_PASSED.get());
        info.field(c"checks_failed", stats::CHECKS_FAILED.get());
        info.field_str(c"token_mode", config::token_mode().config_value());
        if let Some(terms) = terms::snapshot() {
            info.field_i64(c"term_start_ms", terms.start_ms());
            info.field_i64(c"token_floor", terms.next());
            info.field(c"terms_opened", terms.opened());
        }
    }
}
