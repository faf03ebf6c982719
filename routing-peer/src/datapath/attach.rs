//! Attaching programs: TC through TCX (6.6+) or a cls_bpf filter under
//! clsact before that, XDP native or generic; every link pinned.

use std::{fs, io, path::Path};

use aya::{
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    util::KernelVersion,
    Ebpf,
};
use tracing::{debug, info};

use super::{DatapathError, PinDir, Result};
/// Where TCX is missing (kernels before 6.6) our TC programs are classic
/// cls_bpf filters under clsact, at this fixed place so that a restarted
/// daemon replaces them in place and `down` finds them.
const NETLINK_TC_PRIORITY: u16 = 0x5250;
const NETLINK_TC_HANDLE: TcHandle = TcHandle::new(0, 1);
// bpffs refuses names with a dot.
pub(super) const NETLINK_MARKER: &str = "=netlink";

/// Our cls_bpf filter on `iface`'s ingress (it may not exist yet).
pub(super) fn our_netlink_filter(iface: &str) -> io::Result<SchedClassifierLink> {
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
