//! The `INFO spacelock` section. Field names are a public contract
//! (dashboards rely on them); the server prefixes each with `spacelock_`.

use crate::ffi::{InfoCtx, InfoSection};
use crate::{config, handoff, process, stats};

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
        info.field_i64(c"fence_retention_ms", config::fence_retention());
        if let Some(p) = process::snapshot() {
            info.field_i64(c"term_start_ms", p.term.start_ms);
            info.field_i64(c"token_floor", p.term.floor);
            info.field(c"terms_opened", p.opened);
            info.field_i64(c"token_highest", p.highest);
            info.field_i64(c"token_lead_ms", p.lead_ms);
            info.field(c"ledger_grants", p.ledger_len as u64);
        }
    }
}
