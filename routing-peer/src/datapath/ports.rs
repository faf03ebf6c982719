//! Ports of the SNAT pool that sockets of the routing peer's namespace
//! hold (a service bound to the LAN address, a client that bound its port
//! explicitly): the data path never hands them to a masqueraded flow. The
//! kernel's own ephemeral ports stay out of the pool by reservation (see
//! `sysctl::snat_reservation`).

use std::collections::BTreeSet;

use aya::{
    maps::{HashMap as BpfHashMap, MapData, MapError},
    Ebpf,
};
use routing_peer_common::{map_names, IPPROTO_TCP, IPPROTO_UDP};

/// (protocol, port) of every socket in `/proc/net/{tcp,tcp6,udp,udp6}`
/// whose local port lies in `pool`.
pub fn held_ports(pool: (u16, u16)) -> BTreeSet<(u8, u16)> {
    let mut held = BTreeSet::new();
    for (file, proto) in [
        ("/proc/net/tcp", IPPROTO_TCP),
        ("/proc/net/tcp6", IPPROTO_TCP),
        ("/proc/net/udp", IPPROTO_UDP),
        ("/proc/net/udp6", IPPROTO_UDP),
    ] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue; // no IPv6, say
        };
        for port in local_ports(&text) {
            if (pool.0..=pool.1).contains(&port) {
                held.insert((proto, port));
            }
        }
    }
    held
}

/// The local ports of a `/proc/net/{tcp,udp}[6]` listing.
fn local_ports(text: &str) -> Vec<u16> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let local = line.split_whitespace().nth(1)?;
            let (_, port) = local.rsplit_once(':')?;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

/// `NAT_RESERVED`: pool ports the routing peer's own sockets hold.
pub struct ReservedPorts {
    map: BpfHashMap<MapData, u32, u32>,
}

impl ReservedPorts {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapError> {
        Ok(Self {
            map: super::gc::take(ebpf, map_names::NAT_RESERVED)?,
        })
    }

    /// Makes the map hold exactly `held`; returns how many it holds.
    pub fn sync(&mut self, held: &BTreeSet<(u8, u16)>) -> Result<usize, MapError> {
        let want: BTreeSet<u32> = held
            .iter()
            .map(|(p, port)| reserved_key(*p, *port))
            .collect();
        let have: Vec<u32> = self.map.keys().filter_map(Result::ok).collect();
        for key in have.iter().filter(|k| !want.contains(k)) {
            let _ = self.map.remove(key);
        }
        for key in &want {
            self.map.insert(key, 1, 0)?;
        }
        Ok(want.len())
    }
}

/// The `NAT_RESERVED` key of a (protocol, port).
pub fn reserved_key(proto: u8, port: u16) -> u32 {
    (u32::from(proto) << 16) | u32::from(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_ports_come_from_the_second_column() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                   0: 0100007F:9C40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
                   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0\n";
        assert_eq!(local_ports(tcp), vec![40000, 22]);
        let tcp6 = "  sl  local_address                         remote_address                        st\n\
                    0: 00000000000000000000000001000000:9C41 00000000000000000000000000000000:0000 0A\n";
        assert_eq!(local_ports(tcp6), vec![40001]);
    }

    #[test]
    fn keys_carry_the_protocol() {
        assert_eq!(reserved_key(IPPROTO_UDP, 40000), (17 << 16) | 40000);
    }
}
