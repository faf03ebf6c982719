//! IPv4 options: each one's length inside the header, none shorter than 2,
//! walked by a `bpf_loop` callback (verified once, whatever the number of
//! steps; an open-coded walk of 40 steps costs the verifier seconds).

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{helpers::generated::bpf_loop, macros::map, maps::PerCpuArray};
use routing_peer_common::DropReason;

use crate::parse::{Frame, Ipv4Hdr};

const IPV4_OPT_EOL: u8 = 0;
const IPV4_OPT_NOP: u8 = 1;
/// Option bytes an IPv4 header can hold (60 − 20).
const IPV4_MAX_OPTION_BYTES: usize = 40;

// Maps.
/// Per CPU: the IPv4 options being walked, for the `bpf_loop` callback.
#[map]
static OPTION_WALK: PerCpuArray<OptionWalk> = PerCpuArray::with_max_entries(1, 0);

/// The IPv4 options being walked, per CPU: copied out of the header so
/// that a `bpf_loop` callback, verified once whatever the number of steps,
/// walks them. An open-coded walk of 40 steps costs the verifier seconds.
#[repr(C)]
struct OptionWalk {
    bytes: [u8; IPV4_MAX_OPTION_BYTES],
    end: u32,
    at: u32,
    bad: u32,
}

/// IPv4 options: each one's length inside the header, none shorter than 2.
/// Only packets with options pay for it.
#[inline(always)]
pub fn ipv4_options_ok(
    frame: &Frame,
    l3_offset: usize,
    header_len: usize,
) -> Result<(), DropReason> {
    let walk = OPTION_WALK.get_ptr_mut(0).ok_or(DropReason::Malformed)?;
    let words = (header_len - size_of::<Ipv4Hdr>()) / 4;
    let base = l3_offset + size_of::<Ipv4Hdr>();
    for i in 0..IPV4_MAX_OPTION_BYTES / 4 {
        if i >= words {
            break;
        }
        let w: *const u32 = frame.ptr_at(base + 4 * i)?;
        // SAFETY: `ptr_at` checked the word is inside the frame; the slot
        // is this CPU's, and `4 * i + 4 <= 40` by the loop bound.
        unsafe {
            let to = (*walk).bytes.as_mut_ptr().add(4 * i) as *mut u32;
            to.write_unaligned(w.read_unaligned());
        }
    }
    // SAFETY: this CPU's slot.
    unsafe {
        (*walk).end = (words * 4) as u32;
        (*walk).at = 0;
        (*walk).bad = 0;
        bpf_loop(
            IPV4_MAX_OPTION_BYTES as u32,
            option_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
        if (*walk).bad != 0 {
            return Err(DropReason::Malformed);
        }
    }
    Ok(())
}

/// One option; 1 stops the walk (the end, EOL, or a bad length).
extern "C" fn option_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(walk) = OPTION_WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's slot, used by one program run at a time.
    let walk = unsafe { &mut *walk };
    let (at, end) = (walk.at as usize, walk.end as usize);
    // `at < 40` also bounds the index for the verifier.
    if at >= end || at >= IPV4_MAX_OPTION_BYTES {
        return 1;
    }
    match walk.bytes[at] {
        IPV4_OPT_EOL => 1,
        IPV4_OPT_NOP => {
            walk.at += 1;
            0
        }
        _ => {
            let len = if at + 1 < end && at + 1 < IPV4_MAX_OPTION_BYTES {
                walk.bytes[at + 1] as usize
            } else {
                0
            };
            if len < 2 || at + len > end {
                walk.bad = 1;
                return 1;
            }
            walk.at += len as u32;
            0
        }
    }
}
