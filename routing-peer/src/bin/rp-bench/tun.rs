//! The L3 overlay's generator: IPv4 packets written into a TUN device, as
//! wireguard-go writes what it decrypted. The kernel runs the whole receive
//! path (TC ingress, forwarding or our redirect, the LAN veth) in the
//! writer's context, so each writer thread is pinned to a CPU of its own.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::fd::AsRawFd,
    time::Instant,
};

use anyhow::{Context, Result};

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Attaches a queue of the multi-queue TUN device `iface` (created by the
/// rig with `ip tuntap add … multi_queue`).
pub fn open(iface: &str) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE) as libc::c_short,
        _pad: [0; 22],
    };
    anyhow::ensure!(iface.len() < libc::IFNAMSIZ, "interface name too long");
    req.name[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: TUNSETIFF reads a struct ifreq, which IfReq lays out.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &req) } < 0 {
        return Err(std::io::Error::last_os_error()).context(format!("TUNSETIFF {iface}"));
    }
    Ok(file)
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside it.
    let ok = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    };
    anyhow::ensure!(
        ok,
        "pinning to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Writes the cycle of `packets` (one packet, or a datagram's fragments)
/// again and again for `seconds` from one thread per CPU in `cpus`, thread
/// k's flows starting at `first + k · flows`; `prepare(packet, index, cycle, flow)`
/// rewrites a packet for its cycle. Returns packets written and seconds.
pub fn write(
    iface: &str,
    cpus: &[usize],
    seconds: f64,
    packets: &[Vec<u8>],
    first: u32,
    flows: u32,
    prepare: fn(&mut [u8], u32, u32, u32),
) -> Result<(u64, f64)> {
    let started = Instant::now();
    let threads: Vec<_> = cpus
        .iter()
        .enumerate()
        .map(|(k, &cpu)| {
            let mut packets = packets.to_vec();
            let iface = iface.to_string();
            std::thread::spawn(move || -> Result<u64> {
                pin(cpu)?;
                let mut tun = open(&iface)?;
                let mut sent = 0u64;
                let mut n: u32 = 0;
                let base = first + k as u32 * flows;
                let count = packets.len() as u32;
                while started.elapsed().as_secs_f64() < seconds {
                    // A batch between clock reads.
                    for _ in 0..256 {
                        let (i, cycle) = (n % count, n / count);
                        let p = &mut packets[i as usize];
                        prepare(p, i, cycle, base + cycle % flows.max(1));
                        // A full queue or a drop by policy is the path's
                        // business, not the writer's: count what was written.
                        if tun.write(p).is_ok() {
                            sent += 1;
                        }
                        n = n.wrapping_add(1);
                    }
                }
                Ok(sent)
            })
        })
        .collect();
    let mut total = 0;
    for t in threads {
        total += t
            .join()
            .map_err(|_| anyhow::anyhow!("a writer thread panicked"))??;
    }
    Ok((total, started.elapsed().as_secs_f64()))
}
