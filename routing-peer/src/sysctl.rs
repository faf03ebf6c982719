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
