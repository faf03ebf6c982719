//! `routing-peer policy check`: would this traffic pass, and which rule
//! decides? Answered for the configuration the daemon applied.

use std::{collections::HashMap, net::IpAddr};

use anyhow::Result;

use super::{args::CheckArgs, context, load_config_of, require_state};
use crate::{
    check,
    compile::{self, domain_for},
    config::Config,
    control::{self, Status},
};

/// The daemon's configuration compiled with its own view of its addresses
/// and resolved names, so that the answer matches the data path.
fn compiled_for(status: &Status) -> Result<(Config, compile::Compiled)> {
    let config = load_config_of(status)?;
    let resolved: HashMap<String, Vec<IpAddr>> = status
        .resolved
        .iter()
        .map(|(n, ips)| {
            (
                n.clone(),
                ips.iter().filter_map(|i| i.parse().ok()).collect(),
            )
        })
        .collect();
    let compiled = compile::compile(
        &config,
        &status.self_addresses,
        &resolved,
        compile::Previous::from(&control::read_names(&status.instance).unwrap_or_default()),
    );
    Ok((config, compiled))
}

/// The destination address, and a note when it was named by domain.
fn destination(
    status: &Status,
    compiled: &compile::Compiled,
    to: &str,
) -> (Option<IpAddr>, Option<String>) {
    if let Ok(ip) = to.parse::<IpAddr>() {
        return (Some(ip), None);
    }
    match domain_for(&compiled.domains, to) {
        Some(d) => {
            let ip = status
                .resolved
                .iter()
                .find(|(n, _)| n == &d.name)
                .and_then(|(_, ips)| ips.first())
                .and_then(|i| i.parse().ok());
            (ip, Some(format!("{to} is domain resource `{}`", d.name)))
        }
        None => (
            None,
            Some(format!(
                "{to} matches no domain resource: the DNS forwarder refuses it"
            )),
        ),
    }
}

pub fn run(instance: &str, args: CheckArgs) -> Result<()> {
    let CheckArgs {
        from,
        to,
        proto,
        port,
        json,
    } = args;
    let status = require_state(&context(instance), instance)?;
    let (config, compiled) = compiled_for(&status)?;
    let (dst, domain_note) = destination(&status, &compiled, &to);
    let Some(dst) = dst else {
        let reason = domain_note.unwrap_or_default()
            + "; no address resolved for it yet (resolve it through the routing peer first)";
        if json {
            println!(
                "{}",
                serde_json::json!({ "allowed": false, "reason": reason })
            );
        } else {
            println!("DENY  {reason}");
        }
        return Ok(());
    };
    let src = check::source_addr(&config, &from, dst.is_ipv6())?;
    let proto_num = check::proto_number(&proto, dst.is_ipv6())?;
    let mut verdict = check::check(&compiled, src, dst, proto_num, port);
    if let (true, Some(rule)) = (verdict.allowed && verdict.chain == "forward", &verdict.rule) {
        // The resource whose policy granted it, which decides masquerade.
        if let Some(granting) = check::granting_resource(&config, dst, rule) {
            verdict.resource = Some(granting);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&verdict)?);
        return Ok(());
    }
    if let Some(note) = domain_note {
        println!("{note}");
    }
    let resource = verdict.resource.clone().unwrap_or_default();
    let masquerade = match verdict.masquerade {
        Some(true) => format!(", masqueraded (resource `{resource}`)"),
        Some(false) => format!(", not masqueraded (resource `{resource}`)"),
        None => String::new(),
    };
    println!(
        "{}  {} ({}) -> {} {proto}/{port} [{} chain]: {}{masquerade}",
        if verdict.allowed { "ALLOW" } else { "DENY " },
        verdict.peer.clone().unwrap_or_else(|| from.clone()),
        src,
        dst,
        verdict.chain,
        verdict.reason
    );
    Ok(())
}
