//! The data path's clock.

/// CLOCK_MONOTONIC at tick resolution (a few ms): conntrack, fragment and
/// NAT timeouts count in seconds. It reads a variable where
/// bpf_ktime_get_ns reads the TSC (7% of an established packet's cost in a
/// VM, `cargo xtask bench`'s profile). User space compares it with
/// CLOCK_MONOTONIC, at most a tick ahead; every comparison saturates.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: plain helper call.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() }
}
