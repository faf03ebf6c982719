//! Interfaces: L2 or L3, indexes, the interface maps, local addresses.

use std::io;

use aya::Ebpf;
use routing_peer_common::program_names;

use super::{DatapathError, Result};

/// The kernel's index of `iface` in the caller's network namespace.
/// Whether `iface` carries Ethernet frames (veth, NIC) or bare IP (TUN, WireGuard).
/// Asks the kernel (SIOCGIFHWADDR) rather than sysfs, whose view belongs to
/// the namespace that mounted it, not to the caller's.
pub fn iface_is_l2(iface: &str) -> Result<bool> {
    let if_err = |detail: String| DatapathError::Interface {
        iface: iface.into(),
        detail,
    };
    let name = iface.as_bytes();
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(if_err("name too long".into()));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: a datagram socket only to carry the ioctl; closed below.
    let rc = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error().into());
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req);
        libc::close(fd);
        rc
    };
    if rc != 0 {
        return Err(if_err(io::Error::last_os_error().to_string()));
    }
    // SAFETY: SIOCGIFHWADDR fills the hwaddr member of the union.
    let family = unsafe { req.ifr_ifru.ifru_hwaddr.sa_family };
    Ok(family == libc::ARPHRD_ETHER)
}

pub fn overlay_program_for(iface: &str) -> Result<&'static str> {
    Ok(if iface_is_l2(iface)? {
        program_names::OVERLAY_L2
    } else {
        program_names::OVERLAY_L3
    })
}

pub fn ifindex(iface: &str) -> Result<u32> {
    let name = std::ffi::CString::new(iface).map_err(|_| DatapathError::Interface {
        iface: iface.into(),
        detail: "bad name".into(),
    })?;
    // SAFETY: a valid NUL-terminated name.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(DatapathError::Interface {
            iface: iface.into(),
            detail: io::Error::last_os_error().to_string(),
        }),
        index => Ok(index),
    }
}

/// Replaces the contents of an interface-set map (`L3_IFACES`, `XDP_REDIRECT_IFACES`).
pub fn set_iface_map(ebpf: &mut Ebpf, map: &str, ifaces: &[String]) -> Result<()> {
    let wanted: Vec<u32> = ifaces.iter().map(|i| ifindex(i)).collect::<Result<_>>()?;
    let data = ebpf.map_mut(map).ok_or(DatapathError::Pin {
        path: map.into(),
        detail: "no such map".into(),
    })?;
    let mut set = aya::maps::HashMap::<_, u32, u32>::try_from(data)
        .map_err(|e| DatapathError::Load(aya::EbpfError::MapError(e)))?;
    let stale: Vec<u32> = set
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !wanted.contains(k))
        .collect();
    for k in stale {
        let _ = set.remove(&k);
    }
    for k in wanted {
        set.insert(k, 1, 0)
            .map_err(|e| DatapathError::Load(aya::EbpfError::MapError(e)))?;
    }
    Ok(())
}

/// Every address of this network namespace, on any interface.
pub fn local_addresses() -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut at = head;
    while !at.is_null() {
        // SAFETY: `at` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*at };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: the family says which sockaddr this is.
            unsafe {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        out.push(
                            std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into(),
                        );
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        out.push(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr).into());
                    }
                    _ => {}
                }
            }
        }
        at = ifa.ifa_next;
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    out
}
