//! The daemon's run-time settings, one array slot.

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray},
};
use routing_peer_common::{DatapathConfig, CONFIG_LAN_XDP};

// Maps.
/// Run-time settings and the live policy slot and generation (one entry).
#[map]
static CONFIG: Array<DatapathConfig> = Array::with_max_entries(1, 0);

/// Per CPU: the settings as this packet sees them.
#[map]
static CONFIG_COPY: PerCpuArray<DatapathConfig> = PerCpuArray::with_max_entries(1, 0);

const CONFIG_WORDS: usize = core::mem::size_of::<DatapathConfig>() / 8;
// Copied word by word: the settings must be whole words.
const _: () = assert!(core::mem::size_of::<DatapathConfig>() == CONFIG_WORDS * 8);

/// The current settings, copied so one packet sees one consistent version:
/// into a per-CPU slot, not onto the 512-byte stack.
#[inline(always)]
pub fn current() -> Option<&'static DatapathConfig> {
    let from = CONFIG.get_ptr(0)? as *const [u64; CONFIG_WORDS];
    let to = CONFIG_COPY.get_ptr_mut(0)?;
    // SAFETY: both are valid map values of the same size; the copy is
    // this CPU's, used by one program run at a time.
    unsafe {
        let words = to as *mut [u64; CONFIG_WORDS];
        for i in 0..CONFIG_WORDS {
            (*words)[i] = (*from)[i];
        }
        Some(&*to)
    }
}

/// Whether the LAN's XDP program is attached (one field of the live
/// settings; no copy needed for a flag the daemon sets once at start).
#[inline(always)]
pub fn lan_xdp_attached() -> bool {
    CONFIG.get(0).is_some_and(|c| c.flags & CONFIG_LAN_XDP != 0)
}
