//! Userspace WireGuard: `wireguard-go` on a TUN device, driven through the
//! cross-platform UAPI (a line protocol on a unix socket).
//!
//! wireguard-go daemonizes, so it outlives a restart of our daemon and the
//! tunnels stay up; a restarted daemon adopts the running instance.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use super::{encode_key, iface_exists, DeviceSpec, Key, PeerStatus, WgError};

pub struct UserspaceWg {
    socket: PathBuf,
}

fn socket_path(iface: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/wireguard/{iface}.sock"))
}

impl UserspaceWg {
    /// A wireguard-go already serving `iface`, never started here.
    pub fn adopt(iface: &str) -> Option<Self> {
        let socket = socket_path(iface);
        (iface_exists(iface) && UnixStream::connect(&socket).is_ok()).then_some(Self { socket })
    }

    /// Adopts a running wireguard-go for `iface`, or starts one.
    pub fn ensure(iface: &str) -> Result<Self, WgError> {
        let socket = socket_path(iface);
        if !(iface_exists(iface) && UnixStream::connect(&socket).is_ok()) {
            let out = Command::new("wireguard-go").arg(iface).output().map_err(|e| {
                WgError::Setup(format!(
                    "starting wireguard-go: {e} (install it: `cargo xtask setup`, or apt install wireguard-go)"
                ))
            })?;
            if !out.status.success() {
                return Err(WgError::Setup(format!(
                    "wireguard-go {iface}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while UnixStream::connect(&socket).is_err() {
                if Instant::now() > deadline {
                    return Err(WgError::Setup(format!(
                        "wireguard-go started but {} never appeared",
                        socket.display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(Self { socket })
    }

    fn request(&self, body: &str) -> Result<Vec<(String, String)>, WgError> {
        let mut stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(body.as_bytes())?;
        let mut reply = Vec::new();
        for line in BufReader::new(stream).lines() {
            let line = line?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| WgError::Uapi(format!("bad line `{line}`")))?;
            reply.push((k.to_string(), v.to_string()));
        }
        match reply.last() {
            Some((k, v)) if k == "errno" && v == "0" => Ok(reply),
            Some((k, v)) if k == "errno" => Err(WgError::Uapi(format!("errno {v}"))),
            _ => Err(WgError::Uapi("no errno in reply".into())),
        }
    }

    pub fn configure(&mut self, spec: &DeviceSpec) -> Result<(), WgError> {
        let current: Vec<Key> = self
            .peers()?
            .iter()
            .filter_map(|p| super::decode_key("peer", &p.public_key).ok())
            .collect();
        self.request(&set_request(spec, &current))?;
        Ok(())
    }

    pub fn peers(&mut self) -> Result<Vec<PeerStatus>, WgError> {
        Ok(parse_peers(&self.request("get=1\n\n")?))
    }
}

/// The UAPI `set` for `spec`, given the peers the device has now: new and
/// changed peers are written, departed ones removed, nothing is replaced
/// wholesale (that would drop every session).
pub fn set_request(spec: &DeviceSpec, current: &[Key]) -> String {
    let mut r = String::from("set=1\n");
    r += &format!("private_key={}\n", hex::encode(spec.private_key));
    r += &format!("listen_port={}\n", spec.listen_port);
    for peer in &spec.peers {
        r += &format!("public_key={}\n", hex::encode(peer.public_key));
        if let Some(ep) = peer.endpoint {
            r += &format!("endpoint={ep}\n");
        }
        r += &format!(
            "persistent_keepalive_interval={}\n",
            peer.persistent_keepalive.unwrap_or(0)
        );
        r += "replace_allowed_ips=true\n";
        for ip in &peer.allowed_ips {
            r += &format!("allowed_ip={ip}\n");
        }
    }
    for gone in current
        .iter()
        .filter(|k| !spec.peers.iter().any(|p| &p.public_key == *k))
    {
        r += &format!("public_key={}\nremove=true\n", hex::encode(gone));
    }
    r + "\n"
}

/// Peers from a UAPI `get` reply.
pub fn parse_peers(reply: &[(String, String)]) -> Vec<PeerStatus> {
    let mut peers: Vec<PeerStatus> = Vec::new();
    let mut fields: HashMap<&str, &str> = HashMap::new();
    let mut allowed: Vec<ipnet::IpNet> = Vec::new();
    let flush = |fields: &mut HashMap<&str, &str>,
                 allowed: &mut Vec<ipnet::IpNet>,
                 peers: &mut Vec<PeerStatus>| {
        if let Some(key) = fields.get("public_key").and_then(|k| hex::decode(k).ok()) {
            if let Ok(key) = <Key>::try_from(key.as_slice()) {
                peers.push(PeerStatus {
                    public_key: encode_key(&key),
                    endpoint: fields.get("endpoint").map(|e| e.to_string()),
                    last_handshake_unix: fields
                        .get("last_handshake_time_sec")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    rx_bytes: fields
                        .get("rx_bytes")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    tx_bytes: fields
                        .get("tx_bytes")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    allowed_ips: std::mem::take(allowed),
                });
            }
        }
        fields.clear();
        allowed.clear();
    };
    for (k, v) in reply {
        if k == "public_key" {
            flush(&mut fields, &mut allowed, &mut peers);
        }
        if k == "allowed_ip" {
            allowed.extend(v.parse::<ipnet::IpNet>().ok());
        }
        fields.insert(k.as_str(), v.as_str());
    }
    flush(&mut fields, &mut allowed, &mut peers);
    peers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_adds_updates_and_removes_in_place() {
        let spec = DeviceSpec::example();
        let req = set_request(&spec, &[[2; 32], [3; 32]]);
        let expected = format!(
            "set=1\nprivate_key={}\nlisten_port=51820\npublic_key={}\nendpoint=203.0.113.2:51820\n\
             persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=100.64.0.2/32\n\
             public_key={}\nremove=true\n\n",
            "01".repeat(32),
            "02".repeat(32),
            "03".repeat(32)
        );
        assert_eq!(req, expected);
        assert!(!req.contains("replace_peers"), "never drop every session");
    }

    #[test]
    fn get_reply_parses_per_peer() {
        let reply: Vec<(String, String)> = [
            ("private_key", "01".repeat(32)),
            ("listen_port", "51820".into()),
            ("public_key", "02".repeat(32)),
            ("endpoint", "203.0.113.2:40000".into()),
            ("last_handshake_time_sec", "1700000000".into()),
            ("rx_bytes", "1234".into()),
            ("tx_bytes", "99".into()),
            ("allowed_ip", "100.64.0.2/32".into()),
            ("allowed_ip", "2001:db8::2/128".into()),
            ("public_key", "03".repeat(32)),
            ("last_handshake_time_sec", "0".into()),
            ("allowed_ip", "100.64.0.3/32".into()),
            ("errno", "0".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let peers = parse_peers(&reply);
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].public_key, encode_key(&[2; 32]));
        assert_eq!(peers[0].endpoint.as_deref(), Some("203.0.113.2:40000"));
        assert_eq!(
            (
                peers[0].last_handshake_unix,
                peers[0].rx_bytes,
                peers[0].tx_bytes
            ),
            (1700000000, 1234, 99)
        );
        assert_eq!(peers[1].last_handshake_unix, 0);
        // Each peer its own allowed IPs: a keyless peer is found by them.
        assert_eq!(peers[0].allowed_ips.len(), 2);
        assert_eq!(peers[1].allowed_ips, ["100.64.0.3/32".parse().unwrap()]);
        let keyless = crate::config::Peer {
            name: "laptop".into(),
            public_key: String::new(),
            addresses: vec!["100.64.0.3".parse().unwrap()],
            endpoint: None,
            persistent_keepalive: None,
            groups: Vec::new(),
        };
        assert!(!peers[0].is(&keyless) && peers[1].is(&keyless));
    }
}
