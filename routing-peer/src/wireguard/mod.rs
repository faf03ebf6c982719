//! Keeping the overlay's WireGuard interface configured and handshaking.
//!
//! Kernel WireGuard (production) is driven over generic netlink; where the
//! kernel has no WireGuard, `wireguard-go` runs the same interface as a TUN
//! device and is driven over its UAPI socket. Either way the configuration
//! is applied as a diff: peers are added, updated and removed in place and
//! the interface is never restarted, so existing tunnels survive a reload.

pub mod netlink;
pub mod uapi;

use std::{net::SocketAddr, path::Path, process::Command};

use base64::{engine::general_purpose::STANDARD, Engine};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{Config, WireguardMode};

pub type Key = [u8; 32];

#[derive(Debug, Error)]
pub enum WgError {
    #[error("key {what}: {detail}")]
    Key { what: String, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("UAPI: {0}")]
    Uapi(String),
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("{0}")]
    Setup(String),
}

pub fn decode_key(what: &str, b64: &str) -> Result<Key, WgError> {
    let bytes = STANDARD.decode(b64.trim()).map_err(|e| WgError::Key {
        what: what.into(),
        detail: e.to_string(),
    })?;
    bytes.try_into().map_err(|_| WgError::Key {
        what: what.into(),
        detail: "not 32 bytes".into(),
    })
}

pub fn encode_key(key: &Key) -> String {
    STANDARD.encode(key)
}

/// The public key of a private key (X25519 base point multiplication).
pub fn public_key(private: &Key) -> Key {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*private)).to_bytes()
}

/// One peer as WireGuard should know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    pub public_key: Key,
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: Option<u16>,
    pub allowed_ips: Vec<IpNet>,
}

/// The whole device as WireGuard should know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    pub private_key: Key,
    pub listen_port: u16,
    pub peers: Vec<PeerSpec>,
}

impl DeviceSpec {
    pub fn from_config(config: &Config) -> Result<Self, WgError> {
        let rp = &config.routing_peer;
        let raw = std::fs::read_to_string(&rp.private_key_file).map_err(|e| WgError::Key {
            what: rp.private_key_file.display().to_string(),
            detail: e.to_string(),
        })?;
        let private_key = decode_key(&rp.private_key_file.display().to_string(), &raw)?;
        let peers = config
            .peers
            .iter()
            .map(|p| {
                Ok(PeerSpec {
                    public_key: decode_key(&p.name, &p.public_key)?,
                    endpoint: p.endpoint.as_deref().and_then(|e| e.parse().ok()),
                    persistent_keepalive: p.persistent_keepalive,
                    // A peer routes only its own overlay addresses through us.
                    allowed_ips: p.addresses.iter().map(|a| IpNet::from(*a)).collect(),
                })
            })
            .collect::<Result<_, WgError>>()?;
        Ok(Self {
            private_key,
            listen_port: rp.listen_port,
            peers,
        })
    }
}

#[cfg(test)]
impl DeviceSpec {
    /// The device the encoding tests use: key 1…, one peer (key 2…) with an
    /// endpoint, keepalive 25 and 100.64.0.2/32.
    pub(crate) fn example() -> Self {
        Self {
            private_key: [1; 32],
            listen_port: 51820,
            peers: vec![PeerSpec {
                public_key: [2; 32],
                endpoint: Some("203.0.113.2:51820".parse().unwrap()),
                persistent_keepalive: Some(25),
                allowed_ips: vec!["100.64.0.2/32".parse().unwrap()],
            }],
        }
    }
}

/// What WireGuard reports about one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub public_key: String,
    pub endpoint: Option<String>,
    /// Seconds since the epoch; 0 = never.
    pub last_handshake_unix: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Its allowed IPs: how a peer known without its key (NetBird's REST
    /// peers) is found, by its overlay address.
    pub allowed_ips: Vec<IpNet>,
}

impl PeerStatus {
    /// Whether this WireGuard peer is the configured `peer`: by key, or
    /// for a peer configured without one, by an allowed IP holding its
    /// overlay address.
    pub fn is(&self, peer: &crate::config::Peer) -> bool {
        if peer.public_key.is_empty() {
            peer.addresses
                .iter()
                .any(|a| self.allowed_ips.iter().any(|n| n.contains(a)))
        } else {
            self.public_key == peer.public_key
        }
    }
}

/// The running WireGuard backend.
pub enum Backend {
    Kernel(netlink::KernelWg),
    Userspace(uapi::UserspaceWg),
    /// Someone else's WireGuard on this interface (NetBird's agent, a
    /// benchmark's veth): never configured, only read when it is one.
    External(String),
}

impl Backend {
    /// Picks the mode: kernel when asked or available, userspace otherwise.
    pub fn start(iface: &str, mode: WireguardMode) -> Result<Self, WgError> {
        let kernel_ok = || netlink::KernelWg::available();
        match mode {
            WireguardMode::Kernel => Ok(Backend::Kernel(netlink::KernelWg::ensure(iface)?)),
            WireguardMode::Userspace => Ok(Backend::Userspace(uapi::UserspaceWg::ensure(iface)?)),
            WireguardMode::Auto if kernel_ok() => {
                Ok(Backend::Kernel(netlink::KernelWg::ensure(iface)?))
            }
            WireguardMode::Auto => Ok(Backend::Userspace(uapi::UserspaceWg::ensure(iface)?)),
            WireguardMode::External => Ok(Backend::External(iface.to_string())),
        }
    }

    /// The mode running: never `Auto`, which resolves to one of the others.
    pub fn mode(&self) -> WireguardMode {
        match self {
            Backend::Kernel(_) => WireguardMode::Kernel,
            Backend::Userspace(_) => WireguardMode::Userspace,
            Backend::External(_) => WireguardMode::External,
        }
    }

    /// Applies `spec`, removing peers not in it, without touching the others' sessions.
    pub fn configure(&mut self, spec: &DeviceSpec) -> Result<(), WgError> {
        match self {
            Backend::Kernel(k) => k.configure(spec),
            Backend::Userspace(u) => u.configure(spec),
            Backend::External(_) => Ok(()),
        }
    }

    pub fn peers(&mut self) -> Result<Vec<PeerStatus>, WgError> {
        match self {
            Backend::Kernel(k) => k.peers(),
            Backend::Userspace(u) => u.peers(),
            // Whichever WireGuard runs it, read as it is; anything else
            // (no WireGuard there) has no peers to report.
            Backend::External(iface) => Ok(uapi::UserspaceWg::adopt(iface)
                .map(|mut u| u.peers())
                .or_else(|| netlink::KernelWg::adopt(iface).map(|mut k| k.peers()))
                .and_then(Result::ok)
                .unwrap_or_default()),
        }
    }
}

/// Sets the interface's addresses and MTU and brings it up (idempotent).
pub fn configure_link(iface: &str, addresses: &[IpNet], mtu: u16) -> Result<(), WgError> {
    let ip = |args: &[&str]| -> Result<std::process::Output, WgError> {
        Ok(Command::new("ip").args(args).output()?)
    };
    let out = ip(&["link", "set", iface, "mtu", &mtu.to_string(), "up"])?;
    if !out.status.success() {
        return Err(WgError::Setup(format!(
            "ip link set {iface}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    for addr in addresses {
        let out = ip(&["addr", "replace", &addr.to_string(), "dev", iface])?;
        if !out.status.success() {
            return Err(WgError::Setup(format!(
                "ip addr replace {addr} dev {iface}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(())
}

pub fn iface_exists(iface: &str) -> bool {
    Path::new("/proc/self/net/dev").exists()
        && std::fs::read_to_string("/proc/self/net/dev")
            .map(|t| {
                t.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{iface}:")))
            })
            .unwrap_or(false)
}
