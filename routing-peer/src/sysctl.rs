//! The kernel settings a routing peer needs, remembered so `down` can put
//! back what was there before.

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::{Context, Result};

/// (sysctl path under /proc/sys, value we need).
pub fn wanted(overlay: &str, lans: &[String]) -> Vec<(String, String)> {
    let mut v = vec![
        ("net/ipv4/ip_forward".to_string(), "1".to_string()),
        ("net/ipv6/conf/all/forwarding".to_string(), "1".to_string()),
        // Replies of masquerade-off flows enter on the LAN with overlay
        // sources; strict reverse-path filtering would drop them.
        ("net/ipv4/conf/all/rp_filter".to_string(), "2".to_string()),
        (
            format!("net/ipv4/conf/{overlay}/rp_filter"),
            "2".to_string(),
        ),
        // Masqueraded packets the kernel must fragment re-enter its forward
        // path from the overlay with our own LAN address as source.
        (
            format!("net/ipv4/conf/{overlay}/accept_local"),
            "1".to_string(),
        ),
    ];
    v.extend(
        lans.iter()
            .map(|l| (format!("net/ipv4/conf/{l}/rp_filter"), "2".to_string())),
    );
    v
}

/// The SNAT pool kept away from the kernel's own ports, so that no socket
/// of the routing peer (the DNS forwarder's upstream queries, an
/// operator's ssh) is ever given a port a masqueraded flow holds:
/// the pool is reserved, and when the ephemeral range lies inside it, the
/// ephemeral range moves to the widest span outside it. `local_range` is
/// the current `ip_local_port_range`.
pub fn snat_reservation(pool: (u16, u16), local_range: (u16, u16)) -> Vec<(String, String)> {
    let (lo, hi) = pool;
    let mut v = vec![(
        "net/ipv4/ip_local_reserved_ports".to_string(),
        format!("{lo}-{hi}"),
    )];
    let (a, b) = local_range;
    let below = (a, lo.saturating_sub(1).min(b));
    let above = (hi.saturating_add(1).max(a), b);
    let width = |r: (u16, u16)| {
        if r.1 >= r.0 {
            u32::from(r.1 - r.0) + 1
        } else {
            0
        }
    };
    // Less than half of the ephemeral range outside the pool: move it.
    if 2 * (width(below) + width(above)) < width(local_range) {
        let gaps = [
            (1024u16, lo.saturating_sub(1)),
            (hi.saturating_add(1), 65535),
        ];
        if let Some(best) = gaps
            .into_iter()
            .filter(|g| width(*g) > 0)
            .max_by_key(|g| width(*g))
        {
            v.push((
                "net/ipv4/ip_local_port_range".to_string(),
                format!("{} {}", best.0, best.1),
            ));
        }
    }
    v
}

/// The namespace's `ip_local_port_range`.
pub fn local_port_range() -> (u16, u16) {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut w = t.split_whitespace().map(|x| x.parse::<u16>().ok());
            Some((w.next()??, w.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// Applies `wanted`, saving the original values in `saved` unless a
/// previous run (which we are adopting) already did.
pub fn apply(wanted: &[(String, String)], saved: &Path) -> Result<()> {
    let mut originals: BTreeMap<String, String> = fs::read_to_string(saved)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    for (key, value) in wanted {
        let path = Path::new("/proc/sys").join(key);
        let Ok(current) = fs::read_to_string(&path) else {
            continue; // e.g. IPv6 disabled
        };
        originals
            .entry(key.clone())
            .or_insert_with(|| current.trim().to_string());
        fs::write(&path, value).with_context(|| format!("setting {}", path.display()))?;
    }
    if let Some(dir) = saved.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(saved, serde_json::to_string_pretty(&originals)?)?;
    Ok(())
}

/// Puts back what `apply` saved, and forgets it.
pub fn restore(saved: &Path) -> Result<()> {
    let Ok(text) = fs::read_to_string(saved) else {
        return Ok(());
    };
    let originals: BTreeMap<String, String> = serde_json::from_str(&text)?;
    for (key, value) in originals {
        let _ = fs::write(Path::new("/proc/sys").join(key), value);
    }
    fs::remove_file(saved)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_is_reserved_and_the_ephemeral_range_moves_out_of_it() {
        // The default pool is the kernel's default ephemeral range.
        let v = snat_reservation((32768, 60999), (32768, 60999));
        assert_eq!(
            v,
            vec![
                (
                    "net/ipv4/ip_local_reserved_ports".into(),
                    "32768-60999".into()
                ),
                ("net/ipv4/ip_local_port_range".into(), "1024 32767".into()),
            ]
        );
        // A small pool leaves the ephemeral range where it is.
        let v = snat_reservation((40000, 40009), (32768, 60999));
        assert_eq!(v.len(), 1);
    }
}
