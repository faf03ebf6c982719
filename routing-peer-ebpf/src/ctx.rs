//! Packet writes behind one interface, so NAT and forwarding code serve both
//! hooks. TC writes bytes straight into the packet where it is linear (the
//! entry points pull the headers in; the verifier's prologue unclones a
//! shared skb) and falls back to the store helper past that; its checksums
//! go through the skb helpers, which keep CHECKSUM_PARTIAL skbs right. XDP
//! frames are always fully checksummed, so direct writes with an
//! incremental (RFC 1624) update are exact there.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::{TcContext, XdpContext},
};
use routing_peer_common::DropReason;

/// A write that fails means the frame is shorter than its parse said:
/// every error is `DropReason::Malformed`.
pub trait Mangle {
    /// Reads 4 bytes at `offset`, as stored.
    fn load_u32(&self, offset: usize) -> Result<u32, DropReason>;
    fn store_u8(&self, offset: usize, value: u8) -> Result<(), DropReason>;
    /// Writes `value` (already in network byte order) at `offset`.
    fn store_u16(&self, offset: usize, value: u16) -> Result<(), DropReason>;
    fn store_u32(&self, offset: usize, value: u32) -> Result<(), DropReason>;
    /// Updates the IPv4 header checksum at `csum_offset` for a 16- or 32-bit change.
    fn l3_csum(&self, csum_offset: usize, from: u32, to: u32, size: u8) -> Result<(), DropReason>;
    /// Updates an L4 checksum for a 16- or 32-bit change. `pseudo` marks a
    /// field of the pseudo-header; `udp` keeps a zero (absent) checksum zero.
    fn l4_csum(
        &self,
        csum_offset: usize,
        from: u32,
        to: u32,
        size: u8,
        pseudo: bool,
        udp: bool,
    ) -> Result<(), DropReason>;
}

/// A pointer to `T` at `offset` in the skb's linear data, if it lies there.
#[inline(always)]
fn tc_ptr<T>(ctx: &TcContext, offset: usize) -> Option<*mut T> {
    let at = ctx.data() + (offset & OFFSET_MASK);
    if at + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some(at as *mut T)
}

/// Writes `value` at `offset`: directly when linear (a store through the
/// helper cost 13% of an established packet in the profile), else by the
/// helper, which pulls what it needs.
#[inline(always)]
fn tc_store<T: Copy>(ctx: &TcContext, offset: usize, value: T) -> Result<(), DropReason> {
    if let Some(p) = tc_ptr::<T>(ctx, offset) {
        // SAFETY: `tc_ptr` checked the bytes lie inside the linear data.
        unsafe { p.write_unaligned(value) };
        return Ok(());
    }
    ctx.store(offset, &value, 0)
        .map_err(|_| DropReason::Malformed)
}

impl Mangle for TcContext {
    #[inline(always)]
    fn load_u32(&self, offset: usize) -> Result<u32, DropReason> {
        if let Some(p) = tc_ptr::<u32>(self, offset) {
            // SAFETY: `tc_ptr` checked the bytes lie inside the linear data.
            return Ok(unsafe { p.read_unaligned() });
        }
        self.load::<u32>(offset).map_err(|_| DropReason::Malformed)
    }

    #[inline(always)]
    fn store_u8(&self, offset: usize, value: u8) -> Result<(), DropReason> {
        // Checked as two bytes, as on XDP: LLVM turns a one-byte bound into
        // a form the verifier does not learn the packet range from. The
        // byte after a TTL or hop limit is always there.
        if let Some(p) = tc_ptr::<[u8; 2]>(self, offset) {
            // SAFETY: `tc_ptr` checked the bytes lie inside the linear data.
            unsafe { (*p)[0] = value };
            return Ok(());
        }
        self.store(offset, &value, 0)
            .map_err(|_| DropReason::Malformed)
    }

    #[inline(always)]
    fn store_u16(&self, offset: usize, value: u16) -> Result<(), DropReason> {
        tc_store(self, offset, value)
    }

    #[inline(always)]
    fn store_u32(&self, offset: usize, value: u32) -> Result<(), DropReason> {
        tc_store(self, offset, value)
    }

    #[inline(always)]
    fn l3_csum(&self, csum_offset: usize, from: u32, to: u32, size: u8) -> Result<(), DropReason> {
        self.l3_csum_replace(csum_offset, from as u64, to as u64, size as u64)
            .map_err(|_| DropReason::Malformed)
    }

    #[inline(always)]
    fn l4_csum(
        &self,
        csum_offset: usize,
        from: u32,
        to: u32,
        size: u8,
        pseudo: bool,
        udp: bool,
    ) -> Result<(), DropReason> {
        let mut flags = size as u64;
        if pseudo {
            flags |= BPF_F_PSEUDO_HDR as u64;
        }
        if udp {
            flags |= BPF_F_MARK_MANGLED_0 as u64;
        }
        self.l4_csum_replace(csum_offset, from as u64, to as u64, flags)
            .map_err(|_| DropReason::Malformed)
    }
}

/// Offsets come from the per-CPU packet slot, where the verifier sees no
/// bounds: masking gives it one (parse refuses transport headers past
/// `MAX_L4_OFFSET`, so no real offset reaches the mask).
const OFFSET_MASK: usize = 0x3ff;

#[inline(always)]
fn xdp_ptr<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, DropReason> {
    let at = ctx.data() + (offset & OFFSET_MASK);
    if at + core::mem::size_of::<T>() > ctx.data_end() {
        return Err(DropReason::Malformed);
    }
    Ok(at as *mut T)
}

/// One's-complement incremental update (RFC 1624, eqn. 3) of `check` for a
/// change of `from` to `to`, all as stored in memory.
#[inline(always)]
pub fn csum_update(check: u16, from: u32, to: u32, size: u8) -> u16 {
    let mut sum = (!check) as u32;
    if size == 4 {
        sum += (!(from >> 16) & 0xffff) + (!from & 0xffff);
        sum += (to >> 16) + (to & 0xffff);
    } else {
        sum += !from & 0xffff;
        sum += to & 0xffff;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

impl Mangle for XdpContext {
    #[inline(always)]
    fn load_u32(&self, offset: usize) -> Result<u32, DropReason> {
        let p: *const u32 = xdp_ptr(self, offset)?;
        // SAFETY: `xdp_ptr` checked the bytes lie inside the frame.
        Ok(unsafe { p.read_unaligned() })
    }

    #[inline(always)]
    fn store_u8(&self, offset: usize, value: u8) -> Result<(), DropReason> {
        let p: *mut [u8; 2] = xdp_ptr(self, offset)?;
        // SAFETY: `xdp_ptr` checked the bytes lie inside the frame.
        unsafe { (*p)[0] = value };
        Ok(())
    }

    #[inline(always)]
    fn store_u16(&self, offset: usize, value: u16) -> Result<(), DropReason> {
        let p: *mut u16 = xdp_ptr(self, offset)?;
        // SAFETY: `xdp_ptr` checked the bytes lie inside the frame.
        unsafe { p.write_unaligned(value) };
        Ok(())
    }

    #[inline(always)]
    fn store_u32(&self, offset: usize, value: u32) -> Result<(), DropReason> {
        let p: *mut u32 = xdp_ptr(self, offset)?;
        // SAFETY: `xdp_ptr` checked the bytes lie inside the frame.
        unsafe { p.write_unaligned(value) };
        Ok(())
    }

    #[inline(always)]
    fn l3_csum(&self, csum_offset: usize, from: u32, to: u32, size: u8) -> Result<(), DropReason> {
        let p: *mut u16 = xdp_ptr(self, csum_offset)?;
        // SAFETY: `xdp_ptr` checked the bytes lie inside the frame.
        unsafe { *p = csum_update(*p, from, to, size) };
        Ok(())
    }

    #[inline(always)]
    fn l4_csum(
        &self,
        csum_offset: usize,
        from: u32,
        to: u32,
        size: u8,
        _pseudo: bool,
        udp: bool,
    ) -> Result<(), DropReason> {
        let p: *mut u16 = xdp_ptr(self, csum_offset)?;
        // SAFETY: `xdp_ptr` checked the bytes lie inside the frame.
        unsafe {
            if udp && *p == 0 {
                return Ok(());
            }
            let mut check = csum_update(*p, from, to, size);
            if udp && check == 0 {
                check = 0xffff;
            }
            *p = check;
        }
        Ok(())
    }
}
