//! One instance's pins under `/sys/fs/bpf/routing-peer/<instance>/`: maps,
//! so that a restarted daemon (or the CLI) opens the very same maps, and
//! links, so that the programs stay attached while no daemon runs.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::programs::Link;
use tracing::debug;

use super::{
    attach::{our_netlink_filter, NETLINK_MARKER},
    DatapathError, Result, BPFFS_ROOT,
};

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
    pub(super) fn netlink_filter_marker(&self, program: &str, iface: &str) -> PathBuf {
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

    pub(super) fn create(&self) -> Result<()> {
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
