//! Who the daemon is and where it runs: `down` must act on that process and
//! in that network namespace, never on a recycled pid or on the caller's
//! namespace.
//!
//! `run` records its pid with the process start time (pid reuse changes
//! the start time) and the identity (device, inode) of its network
//! namespace. `down` signals the pid only when both match, and enters the
//! recorded namespace (through the daemon's `/proc/<pid>/ns/net` or a
//! named one under `/run/netns`) before it touches sysctls, nftables or
//! interfaces; it refuses when the namespace cannot be found.

use std::{
    fs::{self, File},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error(
        "the daemon ran in another network namespace ({0}) that no longer has a name or a process: \
         run `routing-peer down` inside it (nsenter --net=<its path>)"
    )]
    NamespaceGone(String),
    #[error("entering the daemon's network namespace {0}: {1}")]
    Setns(PathBuf, std::io::Error),
}

/// A network namespace's identity: (device, inode) of its nsfs file.
fn ns_id(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn format_id(id: (u64, u64)) -> String {
    format!("{}:{}", id.0, id.1)
}

fn parse_id(text: &str) -> Option<(u64, u64)> {
    let (dev, ino) = text.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// The start time of `pid` in clock ticks (field 22 of /proc/<pid>/stat).
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Records this process as the daemon of `run_dir`.
pub fn record(run_dir: &Path) -> Result<(), IdentityError> {
    let pid = std::process::id();
    let start = start_time(pid).unwrap_or(0);
    let pid_file = run_dir.join("pid");
    fs::write(&pid_file, format!("{pid} {start}\n")).map_err(|e| IdentityError::Io(pid_file, e))?;
    if let Some(id) = ns_id(Path::new("/proc/self/ns/net")) {
        let ns_file = run_dir.join("netns");
        fs::write(&ns_file, format_id(id)).map_err(|e| IdentityError::Io(ns_file, e))?;
    }
    Ok(())
}

/// Forgets the pid on a clean exit.
pub fn clear(run_dir: &Path) {
    let _ = fs::remove_file(run_dir.join("pid"));
}

/// The recorded daemon's pid, if that process is still the daemon.
pub fn live_daemon(run_dir: &Path) -> Option<u32> {
    let text = fs::read_to_string(run_dir.join("pid")).ok()?;
    let mut words = text.split_whitespace();
    let pid: u32 = words.next()?.parse().ok()?;
    let recorded: u64 = words.next()?.parse().ok()?;
    (start_time(pid) == Some(recorded)).then_some(pid)
}

/// Moves this thread into the daemon's network namespace, if it ran in
/// another one. Processes started afterwards from this thread follow.
pub fn enter_daemon_netns(run_dir: &Path) -> Result<(), IdentityError> {
    let Some(want) = fs::read_to_string(run_dir.join("netns"))
        .ok()
        .and_then(|t| parse_id(&t))
    else {
        return Ok(()); // nothing recorded: the daemon never started here
    };
    if ns_id(Path::new("/proc/self/ns/net")) == Some(want) {
        return Ok(());
    }
    let mut candidates: Vec<PathBuf> = live_daemon(run_dir)
        .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net")))
        .into_iter()
        .collect();
    if let Ok(dir) = fs::read_dir("/run/netns") {
        candidates.extend(dir.flatten().map(|e| e.path()));
    }
    let path = candidates
        .into_iter()
        .find(|p| ns_id(p) == Some(want))
        .ok_or_else(|| IdentityError::NamespaceGone(format_id(want)))?;
    let file = File::open(&path).map_err(|e| IdentityError::Setns(path.clone(), e))?;
    // SAFETY: setns(2) on a descriptor we own; it moves this thread only.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(IdentityError::Setns(path, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs `f` on a thread of its own inside the daemon's network namespace
/// (nftables, sockets and processes it starts are the daemon's), leaving
/// the caller's threads where they are.
pub fn in_daemon_netns<T: Send>(
    run_dir: &Path,
    f: impl FnOnce() -> T + Send,
) -> Result<T, IdentityError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| enter_daemon_netns(run_dir).map(|()| f()))
            .join()
            .unwrap_or_else(|_| {
                Err(IdentityError::Setns(
                    run_dir.to_path_buf(),
                    std::io::Error::other("the namespace thread panicked"),
                ))
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_pid_is_not_the_daemon() {
        let dir = tempfile::tempdir().unwrap();
        record(dir.path()).unwrap();
        assert_eq!(live_daemon(dir.path()), Some(std::process::id()));
        // Same pid, another start time: some other process now.
        fs::write(
            dir.path().join("pid"),
            format!("{} 1\n", std::process::id()),
        )
        .unwrap();
        assert_eq!(live_daemon(dir.path()), None);
        clear(dir.path());
        assert_eq!(live_daemon(dir.path()), None);
    }

    #[test]
    fn namespace_ids_round_trip() {
        assert_eq!(parse_id(&format_id((3, 4026531840))), Some((3, 4026531840)));
        assert_eq!(parse_id("garbage"), None);
    }
}
