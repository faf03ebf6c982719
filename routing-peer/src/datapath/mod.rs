//! Loading, attaching and pinning the kernel programs.
//!
//! State lives under `/sys/fs/bpf/routing-peer/<instance>/`: maps are pinned
//! so a restarted daemon (or the CLI) opens the very same maps, and links are
//! pinned so the programs stay attached while no daemon runs.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        Link, LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    util::KernelVersion,
    Ebpf, EbpfLoader,
};
use routing_peer_common::{map_names, program_names};
use thiserror::Error;
use tracing::{debug, info};

pub mod gc;
#[cfg(test)]
mod packet_tests;
pub mod ports;
pub mod safety_net;
pub mod tables;

/// The compiled kernel programs, built by `build.rs`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/routing-peer.bpf.o"));

/// Where all instances keep their pins.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf/routing-peer";

/// Maps that outlive the daemon. Everything else is rebuilt on start.
const PINNED_MAPS: &[&str] = &map_names::PERSISTENT;

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("interface {iface}: {detail}")]
    Interface { iface: String, detail: String },
    #[error("pin {path}: {detail}")]
    Pin { path: PathBuf, detail: String },
    #[error("{0}")]
    Io(#[from] io::Error),
}

type Result<T> = std::result::Result<T, DatapathError>;

/// Filesystem layout of one instance's pins.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    pub fn new(instance: &str) -> Self {
        Self::at(Path::new(BPFFS_ROOT).join(instance))
    }

    pub fn at(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    pub fn link(&self, program: &str, iface: &str) -> PathBuf {
        self.root.join("links").join(format!("{program}@{iface}"))
    }

    /// Marks a classic (netlink) TC filter as ours. Such a filter is no bpf
    /// link, so there is nothing to pin; bpffs takes no regular files, so
    /// the marker is an empty directory.
    fn netlink_filter_marker(&self, program: &str, iface: &str) -> PathBuf {
        self.root
            .join("links")
            .join(format!("{program}@{iface}{NETLINK_MARKER}"))
    }

    /// Interfaces (in the caller's namespace) carrying our netlink TC filters.
    fn netlink_filters(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.root.join("links")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let (_, iface) = name.strip_suffix(NETLINK_MARKER)?.split_once('@')?;
                Some(iface.to_string())
            })
            .collect()
    }

    pub fn exists(&self) -> bool {
        self.root.exists()
    }

    fn create(&self) -> Result<()> {
        ensure_bpffs()?;
        fs::create_dir_all(self.root.join("maps"))?;
        fs::create_dir_all(self.root.join("links"))?;
        Ok(())
    }

    /// Removes every pin: the programs detach once nothing holds their
    /// links. Netlink TC filters are removed explicitly; one on an
    /// interface this namespace does not see goes with its interface.
    pub fn remove(&self) -> Result<()> {
        for iface in self.netlink_filters() {
            let removed = our_netlink_filter(&iface)
                .map_err(|e| e.to_string())
                .and_then(|link| link.detach().map_err(|e| e.to_string()));
            if let Err(e) = removed {
                debug!(iface, error = %e, "netlink TC filter not removed");
            }
        }
        match fs::remove_dir_all(&self.root) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where TCX is missing (kernels before 6.6) our TC programs are classic
/// cls_bpf filters under clsact, at this fixed place so that a restarted
/// daemon replaces them in place and `down` finds them.
const NETLINK_TC_PRIORITY: u16 = 0x5250;
const NETLINK_TC_HANDLE: TcHandle = TcHandle::new(0, 1);
// bpffs refuses names with a dot.
const NETLINK_MARKER: &str = "=netlink";

/// Our cls_bpf filter on `iface`'s ingress (it may not exist yet).
fn our_netlink_filter(iface: &str) -> io::Result<SchedClassifierLink> {
    SchedClassifierLink::attached(
        iface,
        TcAttachType::Ingress,
        NETLINK_TC_PRIORITY,
        NETLINK_TC_HANDLE,
        None,
    )
}

/// TCX (bpf_mprog, Linux 6.6) gives TC programs real, pinnable bpf links.
fn kernel_has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// Mounts bpffs at /sys/fs/bpf when it is not there yet. Serialised with a
/// lock so that daemons starting together don't stack two mounts.
fn ensure_bpffs() -> Result<()> {
    let is_bpffs = || {
        // SAFETY: all-zero is a valid statfs.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: statfs into our struct with a NUL-terminated path.
        let rc = unsafe { libc::statfs(c"/sys/fs/bpf".as_ptr(), &mut st) };
        rc == 0 && st.f_type == BPF_FS_MAGIC
    };
    if is_bpffs() {
        return Ok(());
    }
    let lock = fs::File::create("/run/routing-peer-bpffs.lock")?;
    // SAFETY: flock on an fd we own; released when `lock` closes.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    if is_bpffs() {
        return Ok(());
    }
    fs::create_dir_all("/sys/fs/bpf")?;
    let status = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status()?;
    if !status.success() {
        return Err(DatapathError::Pin {
            path: "/sys/fs/bpf".into(),
            detail: "cannot mount bpffs".into(),
        });
    }
    Ok(())
}

/// Kernel log verbosity for aya-log; `Warn` keeps the hot path quiet.
pub fn log_level_for(verbose: bool) -> u8 {
    if verbose {
        aya_log::Level::Debug as u8
    } else {
        aya_log::Level::Warn as u8
    }
}

/// Loads the object. With `pins`, persistent maps are adopted from (or
/// created at) their pin paths; without, every map is private, as the packet
/// tests want.
/// `sizes` overrides maps' capacities (conntrack, from the configuration);
/// an adopted pinned map keeps the size it was created with.
pub fn load(pins: Option<&PinDir>, log_level: u8, sizes: &[(&'static str, u32)]) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    loader.override_global(aya_log::LEVEL, &log_level, true);
    for (name, size) in sizes {
        loader.map_max_entries(name, *size);
    }
    let paths: Vec<(&str, PathBuf)> = match pins {
        Some(pins) => {
            pins.create()?;
            PINNED_MAPS.iter().map(|m| (*m, pins.map(m))).collect()
        }
        None => Vec::new(),
    };
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    Ok(loader.load(EBPF_OBJECT)?)
}

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

/// The program `name`, as its type `P`.
fn program<'e, P>(ebpf: &'e mut Ebpf, name: &'static str) -> Result<&'e mut P>
where
    &'e mut P: TryFrom<&'e mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DatapathError::Program {
            name,
            source: aya::programs::ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

/// The link a previous daemon pinned at `path`, ready to take a new
/// program in place; `None` when there is none.
fn pinned_link<L>(path: &Path) -> Result<Option<L>>
where
    L: TryFrom<FdLink, Error = LinkError>,
{
    let Ok(old) = PinnedLink::from_pin(path) else {
        return Ok(None);
    };
    L::try_from(FdLink::from(old))
        .map(Some)
        .map_err(|e| DatapathError::Pin {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
}

/// Attaches a TC program on ingress of `iface` through a pinned TCX link.
/// An existing pin is updated in place, so there is no window without a program.
pub fn attach_tc(ebpf: &mut Ebpf, name: &'static str, iface: &str, pins: &PinDir) -> Result<()> {
    let prog_err = |source| DatapathError::Program { name, source };
    let program: &mut SchedClassifier = program(ebpf, name)?;
    program.load().map_err(prog_err)?;
    if !kernel_has_tcx() {
        return attach_tc_netlink(program, name, iface, pins);
    }
    let pin_path = pins.link(name, iface);
    let link_id = match pinned_link(&pin_path)? {
        Some(link) => {
            debug!(iface, name, "replacing the program in the pinned TC link");
            program.attach_to_link(link).map_err(prog_err)?
        }
        None => {
            // Older kernels without TCX need the clsact qdisc; harmless when present.
            let _ = tc::qdisc_add_clsact(iface);
            program
                .attach_with_options(
                    iface,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(prog_err)?
        }
    };
    pin_link(program.take_link(link_id).map_err(prog_err)?, &pin_path)?;
    info!(iface, name, "TC ingress attached");
    Ok(())
}

/// Before TCX: a direct-action cls_bpf filter under clsact. An existing
/// filter of ours is changed in place (the kernel swaps the program
/// atomically), so a restart has no window without a program either.
fn attach_tc_netlink(
    program: &mut SchedClassifier,
    name: &'static str,
    iface: &str,
    pins: &PinDir,
) -> Result<()> {
    let prog_err = |source| DatapathError::Program { name, source };
    // Harmless when the qdisc is there already.
    let _ = tc::qdisc_add_clsact(iface);
    let ours = our_netlink_filter(iface).map_err(|e| DatapathError::Interface {
        iface: iface.into(),
        detail: e.to_string(),
    })?;
    let link_id = match program.attach_to_link(ours) {
        Ok(id) => {
            debug!(iface, name, "replaced the program in our TC filter");
            id
        }
        Err(_) => program
            .attach_with_options(
                iface,
                TcAttachType::Ingress,
                TcAttachOptions::Netlink(NlOptions {
                    priority: NETLINK_TC_PRIORITY,
                    handle: NETLINK_TC_HANDLE,
                    classid: None,
                }),
            )
            .map_err(prog_err)?,
    };
    // The filter holds the program; dropping the link would delete the filter.
    std::mem::forget(program.take_link(link_id).map_err(prog_err)?);
    let marker = pins.netlink_filter_marker(name, iface);
    fs::create_dir_all(&marker).map_err(|e| DatapathError::Pin {
        path: marker,
        detail: e.to_string(),
    })?;
    info!(
        iface,
        name, "TC ingress attached (netlink cls_bpf: no TCX before Linux 6.6)"
    );
    Ok(())
}

/// Attaches an XDP program to `iface` through a pinned link, native mode first.
pub fn attach_xdp(ebpf: &mut Ebpf, name: &'static str, iface: &str, pins: &PinDir) -> Result<()> {
    let prog_err = |source| DatapathError::Program { name, source };
    let program: &mut Xdp = program(ebpf, name)?;
    program.load().map_err(prog_err)?;
    let pin_path = pins.link(name, iface);
    let link_id = match pinned_link(&pin_path)? {
        Some(link) => program.attach_to_link(link).map_err(prog_err)?,
        None => match program.attach(iface, XdpMode::Driver) {
            Ok(id) => id,
            Err(e) => {
                debug!(iface, error = %e, "native XDP unavailable, using generic XDP");
                program.attach(iface, XdpMode::Skb).map_err(prog_err)?
            }
        },
    };
    pin_link(program.take_link(link_id).map_err(prog_err)?, &pin_path)?;
    info!(iface, name, "XDP attached");
    Ok(())
}

fn pin_link<L>(link: L, path: &Path) -> Result<()>
where
    FdLink: TryFrom<L, Error = LinkError>,
{
    let pin_err = |detail: String| DatapathError::Pin {
        path: path.to_path_buf(),
        detail,
    };
    let fd_link = FdLink::try_from(link).map_err(|e| pin_err(e.to_string()))?;
    if path.exists() {
        // The old pin still names the same kernel link, now running the new program.
        fs::remove_file(path)?;
    }
    fd_link.pin(path).map_err(|e| pin_err(e.to_string()))?;
    Ok(())
}

/// The kernel's index of `iface` in the caller's network namespace.
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

#[cfg(test)]
mod object_tests {
    use object::{Object, ObjectSymbol};
    use routing_peer_common::{map_names, program_names};

    use super::EBPF_OBJECT;

    /// A map or program name user space looks up that the object lacks
    /// would silently not be pinned or attached: every one must be there.
    #[test]
    fn every_name_user_space_uses_is_in_the_object() {
        let file = object::File::parse(EBPF_OBJECT).expect("an ELF object");
        let symbols: Vec<String> = file
            .symbols()
            .filter_map(|s| s.name().ok().map(str::to_string))
            .collect();
        let mut names: Vec<&str> = map_names::PERSISTENT.to_vec();
        names.extend([map_names::CONFIG, map_names::XDP_REDIRECT_IFACES]);
        names.extend([
            program_names::OVERLAY_L3,
            program_names::OVERLAY_L2,
            program_names::OVERLAY_XDP,
            program_names::LAN_XDP,
            program_names::LAN_TC,
        ]);
        for name in names {
            assert!(
                symbols.iter().any(|s| s == name),
                "{name} is not in the eBPF object"
            );
        }
        // And the test can fail.
        assert!(!symbols.iter().any(|s| s == "NO_SUCH_MAP"));
    }
}
