//! IPFIX (RFC 7011) export over UDP: one template per address family,
//! standard information elements (RFC 7012 / IANA), the reply direction in
//! RFC 5103's reverse elements, `firewallEvent` (RFC 7012, 233) saying
//! created, deleted or denied. Templates go out first and every
//! `TEMPLATE_EVERY` messages, as UDP requires.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use super::record::Record;

const VERSION: u16 = 10;
const TEMPLATE_SET: u16 = 2;
pub const TEMPLATE_V4: u16 = 256;
pub const TEMPLATE_V6: u16 = 257;
/// RFC 5103's private enterprise number for reverse elements.
const REVERSE_PEN: u32 = 29305;
const TEMPLATE_EVERY: u64 = 20;
/// One datagram's payload, under a 1500-byte path's.
const MAX_MESSAGE: usize = 1400;

/// (element id, length, reverse): the record layout, IPv4 addresses as
/// given; IPv6 swaps in 27, 28 and 281 with 16 bytes.
const FIELDS: &[(u16, u16, bool)] = &[
    (8, 4, false),   // sourceIPv4Address
    (12, 4, false),  // destinationIPv4Address
    (7, 2, false),   // sourceTransportPort
    (11, 2, false),  // destinationTransportPort
    (4, 1, false),   // protocolIdentifier
    (152, 8, false), // flowStartMilliseconds
    (153, 8, false), // flowEndMilliseconds
    (1, 8, false),   // octetDeltaCount (peer → resource)
    (2, 8, false),   // packetDeltaCount
    (1, 8, true),    // reverseOctetDeltaCount
    (2, 8, true),    // reversePacketDeltaCount
    (225, 4, false), // postNATSourceIPv4Address
    (227, 2, false), // postNAPTSourceTransportPort
    (136, 1, false), // flowEndReason
    (233, 1, false), // firewallEvent
];

fn field(id: u16, len: u16, v6: bool) -> (u16, u16) {
    match (id, v6) {
        (8, true) => (27, 16),
        (12, true) => (28, 16),
        (225, true) => (281, 16),
        _ => (id, len),
    }
}

pub struct Ipfix {
    socket: UdpSocket,
    sequence: u32,
    messages: u64,
    domain: u32,
}

impl Ipfix {
    pub fn new(collector: SocketAddr) -> std::io::Result<Self> {
        let bind: SocketAddr = if collector.is_ipv4() {
            "0.0.0.0:0".parse().map_err(std::io::Error::other)?
        } else {
            "[::]:0".parse().map_err(std::io::Error::other)?
        };
        let socket = UdpSocket::bind(bind)?;
        socket.connect(collector)?;
        Ok(Self {
            socket,
            sequence: 0,
            messages: 0,
            domain: std::process::id(),
        })
    }

    /// Sends `records` in as many messages as they take.
    pub fn send(&mut self, records: &[Record]) -> std::io::Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        for chunk in records.chunks(8) {
            let with_templates = self.messages.is_multiple_of(TEMPLATE_EVERY);
            let msg = message(chunk, now, self.sequence, self.domain, with_templates);
            self.socket.send(&msg)?;
            self.sequence = self.sequence.wrapping_add(chunk.len() as u32);
            self.messages += 1;
        }
        Ok(())
    }
}

/// One IPFIX message: header, templates (when asked), data sets.
pub fn message(
    records: &[Record],
    export_secs: u32,
    sequence: u32,
    domain: u32,
    templates: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_MESSAGE);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes()); // length, below
    out.extend_from_slice(&export_secs.to_be_bytes());
    out.extend_from_slice(&sequence.to_be_bytes());
    out.extend_from_slice(&domain.to_be_bytes());
    if templates {
        set(&mut out, TEMPLATE_SET, |b| {
            template(b, TEMPLATE_V4, false);
            template(b, TEMPLATE_V6, true);
        });
    }
    for v6 in [false, true] {
        let of_family: Vec<&Record> = records
            .iter()
            .filter(|r| r.src.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6()) == v6)
            .collect();
        if of_family.is_empty() {
            continue;
        }
        set(&mut out, if v6 { TEMPLATE_V6 } else { TEMPLATE_V4 }, |b| {
            for r in of_family {
                data(b, r, v6);
            }
        });
    }
    let len = out.len() as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
    out
}

fn set(out: &mut Vec<u8>, id: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    body(out);
    let len = (out.len() - start) as u16;
    out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn template(out: &mut Vec<u8>, id: u16, v6: bool) {
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(FIELDS.len() as u16).to_be_bytes());
    for &(ie, len, reverse) in FIELDS {
        let (ie, len) = field(ie, len, v6);
        let ie = if reverse { ie | 0x8000 } else { ie };
        out.extend_from_slice(&ie.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        if reverse {
            out.extend_from_slice(&REVERSE_PEN.to_be_bytes());
        }
    }
}

fn ip_bytes(raw: Option<&str>, v6: bool) -> Vec<u8> {
    match raw.and_then(|s| s.parse::<IpAddr>().ok()) {
        Some(IpAddr::V4(a)) if !v6 => a.octets().to_vec(),
        Some(IpAddr::V6(a)) if v6 => a.octets().to_vec(),
        _ => vec![0; if v6 { 16 } else { 4 }],
    }
}

fn data(out: &mut Vec<u8>, r: &Record, v6: bool) {
    let proto: u8 = match r.proto.as_str() {
        "icmp" => 1,
        "tcp" => 6,
        "udp" => 17,
        "icmpv6" => 58,
        n => n.parse().unwrap_or(0),
    };
    let (event, end_reason) = match (r.kind.as_str(), r.reason.as_deref()) {
        ("start", _) => (1u8, 0u8),
        ("end", Some("timeout")) => (2, 1),
        ("end", Some("revoked")) => (2, 4),
        ("end", Some("evicted")) => (2, 5),
        ("end", _) => (2, 3),
        _ => (3, 0),
    };
    let packets_out = r.packets_out.or(r.count).unwrap_or(0);
    out.extend(ip_bytes(Some(&r.src), v6));
    out.extend(ip_bytes(Some(&r.dst), v6));
    out.extend_from_slice(&r.src_port.to_be_bytes());
    out.extend_from_slice(&r.dst_port.to_be_bytes());
    out.push(proto);
    out.extend_from_slice(&r.start_unix_ms.to_be_bytes());
    out.extend_from_slice(&r.time_unix_ms.to_be_bytes());
    out.extend_from_slice(&r.bytes_out.unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&packets_out.to_be_bytes());
    out.extend_from_slice(&r.bytes_in.unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&r.packets_in.unwrap_or(0).to_be_bytes());
    out.extend(ip_bytes(r.nat_src.as_deref(), v6));
    out.extend_from_slice(&r.nat_src_port.unwrap_or(0).to_be_bytes());
    out.push(end_reason);
    out.push(event);
}
