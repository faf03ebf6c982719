//! Frame builders the packet tests and the benchmark share: IPv4 fragments
//! and header checksums (etherparse writes whole packets, not fragments).

/// The Ethernet header's length.
pub const ETH_LEN: usize = 14;

/// Writes the checksum of an IPv4 header (options included, if any).
pub fn set_ipv4_checksum(header: &mut [u8]) {
    header[10..12].copy_from_slice(&[0, 0]);
    let sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let check = !(((folded & 0xffff) + (folded >> 16)) as u16);
    header[10..12].copy_from_slice(&check.to_be_bytes());
}

/// An Ethernet + IPv4 frame's datagram cut into fragments of `size`
/// payload bytes (a multiple of 8) with IP id `id`, header checksums fixed.
pub fn ipv4_fragments(frame: &[u8], size: usize, id: u16) -> Vec<Vec<u8>> {
    let ihl = (frame[ETH_LEN] & 0x0f) as usize * 4;
    let (header, payload) = frame.split_at(ETH_LEN + ihl);
    let count = payload.len().div_ceil(size);
    (0..count)
        .map(|i| {
            let chunk = &payload[i * size..((i + 1) * size).min(payload.len())];
            let mut f = header.to_vec();
            f.extend_from_slice(chunk);
            let tot_len = (ihl + chunk.len()) as u16;
            f[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&tot_len.to_be_bytes());
            f[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&id.to_be_bytes());
            let more = if i + 1 < count { 0x2000 } else { 0 };
            let frag_off = ((i * size / 8) as u16) | more;
            f[ETH_LEN + 6..ETH_LEN + 8].copy_from_slice(&frag_off.to_be_bytes());
            set_ipv4_checksum(&mut f[ETH_LEN..ETH_LEN + ihl]);
            f
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_carry_offsets_more_flags_and_valid_checksums() {
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([100, 64, 0, 2], [198, 51, 100, 2], 64)
            .udp(1, 2)
            .write(&mut frame, &[7u8; 100])
            .unwrap();
        let parts = ipv4_fragments(&frame, 48, 0x4242);
        assert_eq!(parts.len(), 3); // 108 bytes of UDP in 48 + 48 + 12
        for (i, p) in parts.iter().enumerate() {
            let ip = etherparse::Ipv4HeaderSlice::from_slice(&p[ETH_LEN..]).unwrap();
            assert_eq!(ip.identification(), 0x4242);
            assert_eq!(ip.fragments_offset().value(), (i * 6) as u16);
            assert_eq!(ip.more_fragments(), i < 2);
            assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum());
        }
    }
}
