//! Kernel WireGuard over generic netlink (the `wireguard` family), as `wg`
//! does it: WG_CMD_SET_DEVICE with per-peer flags, never REPLACE_PEERS, so a
//! reload changes only the peers that changed.

use std::{net::IpAddr, process::Command};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_generic::{
    ctrl::{nlas::GenlCtrlAttrs, GenlCtrl, GenlCtrlCmd},
    GenlMessage,
};
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

use super::{encode_key, iface_exists, DeviceSpec, Key, PeerStatus, WgError};

pub struct KernelWg {
    iface: String,
    socket: Socket,
    family: u16,
    seq: u32,
}

fn nl_err(e: impl std::fmt::Display) -> WgError {
    WgError::Netlink(e.to_string())
}

fn open() -> Result<Socket, WgError> {
    let mut socket = Socket::new(NETLINK_GENERIC)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// Sends one request and collects the replies until ACK/DONE.
fn transact<T>(
    socket: &mut Socket,
    mut msg: NetlinkMessage<GenlMessage<T>>,
) -> Result<Vec<T>, WgError>
where
    GenlMessage<T>:
        netlink_packet_core::NetlinkSerializable + netlink_packet_core::NetlinkDeserializable,
    T: std::fmt::Debug,
{
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut out = Vec::new();
    let mut rx = vec![0u8; 65536];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut offset = 0;
        while offset < n {
            let reply =
                NetlinkMessage::<GenlMessage<T>>::deserialize(&rx[offset..n]).map_err(nl_err)?;
            let len = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::InnerMessage(genl) => out.push(genl.payload),
                NetlinkPayload::Error(e) if e.code.is_none() => return Ok(out),
                NetlinkPayload::Error(e) => return Err(nl_err(format!("{:?}", e.to_io()))),
                NetlinkPayload::Done(_) => return Ok(out),
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += (len + 3) & !3;
        }
    }
}

fn request<T>(payload: GenlMessage<T>, flags: u16) -> NetlinkMessage<GenlMessage<T>>
where
    GenlMessage<T>: netlink_packet_core::NetlinkSerializable,
{
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload))
}

fn resolve_family(socket: &mut Socket) -> Result<u16, WgError> {
    let msg = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName("wireguard".into())],
    });
    let replies = transact(socket, request(msg, NLM_F_REQUEST | NLM_F_ACK))?;
    replies
        .iter()
        .flat_map(|r| r.nlas.iter())
        .find_map(|a| match a {
            GenlCtrlAttrs::FamilyId(id) => Some(*id),
            _ => None,
        })
        .ok_or_else(|| nl_err("no wireguard family"))
}

impl KernelWg {
    /// Whether this kernel has WireGuard (the generic netlink family resolves).
    pub fn available() -> bool {
        open().and_then(|mut s| resolve_family(&mut s)).is_ok()
    }

    /// The kernel's WireGuard device `iface` if there is one; never created.
    pub fn adopt(iface: &str) -> Option<Self> {
        if !iface_exists(iface) {
            return None;
        }
        let mut socket = open().ok()?;
        let family = resolve_family(&mut socket).ok()?;
        Some(Self {
            iface: iface.to_string(),
            socket,
            family,
            seq: 0,
        })
    }

    /// Creates `iface` as a kernel WireGuard device if it is missing.
    pub fn ensure(iface: &str) -> Result<Self, WgError> {
        if !iface_exists(iface) {
            let out = Command::new("ip")
                .args(["link", "add", iface, "type", "wireguard"])
                .output()?;
            if !out.status.success() {
                return Err(WgError::Setup(format!(
                    "ip link add {iface} type wireguard: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        let mut socket = open()?;
        let family = resolve_family(&mut socket)?;
        Ok(Self {
            iface: iface.into(),
            socket,
            family,
            seq: 0,
        })
    }

    fn send(
        &mut self,
        msg: WireguardMessage,
        flags: u16,
    ) -> Result<Vec<WireguardMessage>, WgError> {
        let mut genl = GenlMessage::from_payload(msg);
        genl.set_resolved_family_id(self.family);
        self.seq += 1;
        let mut req = request(genl, flags);
        req.header.sequence_number = self.seq;
        transact(&mut self.socket, req)
    }

    fn device(&mut self) -> Result<Vec<WireguardMessage>, WgError> {
        let msg = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::IfName(self.iface.clone())],
        };
        self.send(msg, NLM_F_REQUEST | NLM_F_DUMP)
    }

    pub fn configure(&mut self, spec: &DeviceSpec) -> Result<(), WgError> {
        let current: Vec<Key> = self
            .peers()?
            .iter()
            .filter_map(|p| super::decode_key("peer", &p.public_key).ok())
            .collect();
        for msg in set_device_messages(&self.iface, spec, &current) {
            self.send(msg, NLM_F_REQUEST | NLM_F_ACK)?;
        }
        Ok(())
    }

    pub fn peers(&mut self) -> Result<Vec<PeerStatus>, WgError> {
        Ok(peers_from(&self.device()?))
    }
}

/// Peers per WG_CMD_SET_DEVICE: about 130 bytes each keeps a message near
/// 16 KiB, well inside the netlink socket's send buffer (a single message
/// for thousands of peers fails with EMSGSIZE). wg(8) splits the same way.
const PEERS_PER_MESSAGE: usize = 128;

/// WG_CMD_SET_DEVICE messages for `spec`: new and changed peers with
/// REPLACE_ALLOWEDIPS, departed peers with REMOVE_ME, never REPLACE_PEERS.
/// The first carries the key and port; each carries at most
/// `PEERS_PER_MESSAGE` peers.
pub fn set_device_messages(
    iface: &str,
    spec: &DeviceSpec,
    current: &[Key],
) -> Vec<WireguardMessage> {
    let mut peers: Vec<WireguardPeer> = spec
        .peers
        .iter()
        .map(|p| {
            let mut attrs = vec![
                WireguardPeerAttribute::PublicKey(p.public_key),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
            ];
            if let Some(ep) = p.endpoint {
                attrs.push(WireguardPeerAttribute::Endpoint(ep));
            }
            attrs.push(WireguardPeerAttribute::PersistentKeepalive(
                p.persistent_keepalive.unwrap_or(0),
            ));
            attrs.push(WireguardPeerAttribute::AllowedIps(
                p.allowed_ips
                    .iter()
                    .map(|net| {
                        let family = match net.addr() {
                            IpAddr::V4(_) => WireguardAddressFamily::Ipv4,
                            IpAddr::V6(_) => WireguardAddressFamily::Ipv6,
                        };
                        WireguardAllowedIp(vec![
                            WireguardAllowedIpAttr::Family(family),
                            WireguardAllowedIpAttr::IpAddr(net.addr()),
                            WireguardAllowedIpAttr::Cidr(net.prefix_len()),
                        ])
                    })
                    .collect(),
            ));
            WireguardPeer(attrs)
        })
        .collect();
    peers.extend(
        current
            .iter()
            .filter(|k| !spec.peers.iter().any(|p| &p.public_key == *k))
            .map(|k| {
                WireguardPeer(vec![
                    WireguardPeerAttribute::PublicKey(*k),
                    WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
                ])
            }),
    );
    let mut messages = Vec::new();
    let mut attributes = vec![
        WireguardAttribute::IfName(iface.into()),
        WireguardAttribute::PrivateKey(spec.private_key),
        WireguardAttribute::ListenPort(spec.listen_port),
    ];
    loop {
        let rest = peers.split_off(peers.len().min(PEERS_PER_MESSAGE));
        attributes.push(WireguardAttribute::Peers(peers));
        messages.push(WireguardMessage {
            cmd: WireguardCmd::SetDevice,
            attributes,
        });
        if rest.is_empty() {
            return messages;
        }
        peers = rest;
        attributes = vec![WireguardAttribute::IfName(iface.into())];
    }
}

fn allowed_ip(ip: &netlink_packet_wireguard::WireguardAllowedIp) -> Option<ipnet::IpNet> {
    use netlink_packet_wireguard::WireguardAllowedIpAttr as A;
    let addr = ip.0.iter().find_map(|a| match a {
        A::IpAddr(addr) => Some(*addr),
        _ => None,
    })?;
    let cidr = ip.0.iter().find_map(|a| match a {
        A::Cidr(c) => Some(*c),
        _ => None,
    })?;
    ipnet::IpNet::new(addr, cidr).ok()
}

fn peers_from(replies: &[WireguardMessage]) -> Vec<PeerStatus> {
    let mut out = Vec::new();
    for attr in replies.iter().flat_map(|m| m.attributes.iter()) {
        let WireguardAttribute::Peers(peers) = attr else {
            continue;
        };
        for peer in peers {
            let mut status = PeerStatus::default();
            for a in &peer.0 {
                match a {
                    WireguardPeerAttribute::PublicKey(k) => status.public_key = encode_key(k),
                    WireguardPeerAttribute::Endpoint(ep) => status.endpoint = Some(ep.to_string()),
                    WireguardPeerAttribute::LastHandshake(t) => {
                        status.last_handshake_unix = t.seconds as u64
                    }
                    WireguardPeerAttribute::RxBytes(b) => status.rx_bytes = *b,
                    WireguardPeerAttribute::TxBytes(b) => status.tx_bytes = *b,
                    WireguardPeerAttribute::AllowedIps(ips) => {
                        status.allowed_ips.extend(ips.iter().filter_map(allowed_ip))
                    }
                    _ => {}
                }
            }
            out.push(status);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::Emitable;

    use super::*;
    use crate::wireguard::PeerSpec;

    /// Builds the generic-netlink payload by hand from the kernel's schema
    /// (include/uapi/linux/wireguard.h), independently of the crate.
    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let len = 4 + value.len();
        let mut out = Vec::new();
        out.extend_from_slice(&(len as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize((len + 3) & !3, 0);
        out
    }
    const NESTED: u16 = 1 << 15;
    const WGDEVICE_A_IFNAME: u16 = 2;
    const WGDEVICE_A_PRIVATE_KEY: u16 = 3;
    const WGDEVICE_A_LISTEN_PORT: u16 = 6;
    const WGDEVICE_A_PEERS: u16 = 8;
    const WGPEER_A_PUBLIC_KEY: u16 = 1;
    const WGPEER_A_FLAGS: u16 = 3;
    const WGPEER_A_ENDPOINT: u16 = 4;
    const WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: u16 = 5;
    const WGPEER_A_ALLOWEDIPS: u16 = 9;
    const WGALLOWEDIP_A_FAMILY: u16 = 1;
    const WGALLOWEDIP_A_IPADDR: u16 = 2;
    const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;
    const WGPEER_F_REMOVE_ME: u32 = 1;
    const WGPEER_F_REPLACE_ALLOWEDIPS: u32 = 2;
    const WG_CMD_SET_DEVICE: u8 = 1;

    fn known_good() -> Vec<u8> {
        let mut sockaddr = vec![0u8; 16];
        sockaddr[0..2].copy_from_slice(&2u16.to_ne_bytes()); // AF_INET
        sockaddr[2..4].copy_from_slice(&51820u16.to_be_bytes());
        sockaddr[4..8].copy_from_slice(&[203, 0, 113, 2]);
        let allowed = nla(
            NESTED,
            &[
                nla(WGALLOWEDIP_A_FAMILY, &2u16.to_ne_bytes()),
                nla(WGALLOWEDIP_A_IPADDR, &[100, 64, 0, 2]),
                nla(WGALLOWEDIP_A_CIDR_MASK, &[32]),
            ]
            .concat(),
        );
        let keep = nla(
            NESTED,
            &[
                nla(WGPEER_A_PUBLIC_KEY, &[2; 32]),
                nla(WGPEER_A_FLAGS, &WGPEER_F_REPLACE_ALLOWEDIPS.to_ne_bytes()),
                nla(WGPEER_A_ENDPOINT, &sockaddr),
                nla(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, &25u16.to_ne_bytes()),
                nla(WGPEER_A_ALLOWEDIPS | NESTED, &allowed),
            ]
            .concat(),
        );
        let gone = nla(
            NESTED,
            &[
                nla(WGPEER_A_PUBLIC_KEY, &[3; 32]),
                nla(WGPEER_A_FLAGS, &WGPEER_F_REMOVE_ME.to_ne_bytes()),
            ]
            .concat(),
        );
        [
            nla(WGDEVICE_A_IFNAME, b"wg0\0"),
            nla(WGDEVICE_A_PRIVATE_KEY, &[1; 32]),
            nla(WGDEVICE_A_LISTEN_PORT, &51820u16.to_ne_bytes()),
            nla(WGDEVICE_A_PEERS | NESTED, &[keep, gone].concat()),
        ]
        .concat()
    }

    #[test]
    fn set_device_encodes_as_the_kernel_schema_says() {
        let spec = DeviceSpec::example();
        let mut messages = set_device_messages("wg0", &spec, &[[2; 32], [3; 32]]);
        assert_eq!(messages.len(), 1);
        let msg = messages.remove(0);
        assert!(matches!(msg.cmd, WireguardCmd::SetDevice));
        assert_eq!(u8::from(msg.cmd), WG_CMD_SET_DEVICE);
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut buf);
        assert_eq!(buf, known_good());
    }

    #[test]
    fn many_peers_are_split_into_messages_the_socket_takes() {
        let peer = |i: u32| PeerSpec {
            public_key: [(i % 251) as u8; 32],
            endpoint: Some("203.0.113.2:51820".parse().unwrap()),
            persistent_keepalive: Some(25),
            allowed_ips: vec![
                format!("100.64.{}.{}/32", i / 256, i % 256)
                    .parse()
                    .unwrap(),
                format!("2001:db8::{i:x}/128").parse().unwrap(),
            ],
        };
        let spec = DeviceSpec {
            private_key: [1; 32],
            listen_port: 51820,
            peers: (0..10_000).map(peer).collect(),
        };
        let messages = set_device_messages("wg0", &spec, &[]);
        assert_eq!(messages.len(), 10_000usize.div_ceil(PEERS_PER_MESSAGE));
        let mut sent = Vec::new();
        for (i, msg) in messages.iter().enumerate() {
            // Well inside the default netlink send buffer (208 KiB).
            assert!(msg.buffer_len() < 32 * 1024, "{}", msg.buffer_len());
            let has_key = msg
                .attributes
                .iter()
                .any(|a| matches!(a, WireguardAttribute::PrivateKey(_)));
            assert_eq!(has_key, i == 0, "only the first message sets the key");
            for attr in &msg.attributes {
                if let WireguardAttribute::Peers(peers) = attr {
                    sent.extend(peers.iter().map(|p| p.0.clone()));
                }
            }
        }
        assert_eq!(sent.len(), 10_000);
        for (i, attrs) in sent.iter().enumerate() {
            assert!(attrs.contains(&WireguardPeerAttribute::PublicKey(
                [(i as u32 % 251) as u8; 32]
            )));
        }
    }
}
