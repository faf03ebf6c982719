//! The daemon's run-time settings, one array slot.

use aya_ebpf::{macros::map, maps::Array};
use routing_peer_common::DatapathConfig;

// Maps.
/// Run-time settings and the live policy slot and generation (one entry).
#[map]
static CONFIG: Array<DatapathConfig> = Array::with_max_entries(1, 0);

/// The current settings. Copied so one packet sees one consistent version.
#[inline(always)]
pub fn current() -> Option<DatapathConfig> {
    CONFIG.get(0).copied()
}
