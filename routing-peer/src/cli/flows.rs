//! `routing-peer flows`: live flows from conntrack.

use anyhow::Result;

use super::{
    args::FlowsArgs,
    names_for,
    table::{human_bytes, human_duration, rate, Table},
    watch::{watch, Rates},
};
use crate::{
    datapath::PinDir,
    observe::{read_flows, Flow},
};

#[derive(Debug, Clone, Default)]
pub struct FlowFilter {
    pub peer: Option<String>,
    pub resource: Option<String>,
    pub proto: Option<String>,
    pub state: Option<String>,
    pub sort: Option<String>,
    pub top: Option<usize>,
}

pub fn filter_flows(mut flows: Vec<Flow>, f: &FlowFilter) -> Vec<Flow> {
    flows.retain(|fl| {
        f.peer
            .as_ref()
            .is_none_or(|p| &fl.peer == p || &fl.peer_addr == p)
            && f.resource.as_ref().is_none_or(|r| &fl.resource == r)
            && f.proto.as_ref().is_none_or(|p| &fl.proto == p)
            && f.state.as_ref().is_none_or(|s| &fl.state == s)
    });
    match f.sort.as_deref() {
        Some("packets") => {
            flows.sort_by_key(|fl| std::cmp::Reverse(fl.packets_out + fl.packets_in))
        }
        Some("age") => flows.sort_by_key(|fl| std::cmp::Reverse(fl.age_secs)),
        _ => flows.sort_by_key(|fl| std::cmp::Reverse(fl.bytes_out + fl.bytes_in)),
    }
    if let Some(n) = f.top {
        flows.truncate(n);
    }
    flows
}

/// What identifies a flow from one read to the next.
pub fn flow_id(f: &Flow) -> String {
    format!(
        "{}|{}|{}|{}|{}",
        f.proto, f.peer_addr, f.peer_port, f.remote_addr, f.remote_port
    )
}

pub fn print_flows(flows: &[Flow], rates: Option<&Rates>) {
    let mut t = Table::new(&[
        "PEER",
        "SOURCE",
        "RESOURCE",
        "DESTINATION",
        "PROTO",
        "STATE",
        "NAT",
        "RULE",
        "PKTS OUT/IN",
        "BYTES OUT/IN",
        "AGE",
        "IDLE",
    ]);
    if rates.is_some() {
        t.push_header("RATE");
    }
    for f in flows {
        let mut row = vec![
            f.peer.clone(),
            format!("{}:{}", f.peer_addr, f.peer_port),
            f.resource.clone(),
            format!("{}:{}", f.remote_addr, f.remote_port),
            f.proto.clone(),
            f.state.clone(),
            f.nat.clone().unwrap_or_else(|| "-".into()),
            f.rule.clone(),
            format!("{}/{}", f.packets_out, f.packets_in),
            format!("{}/{}", human_bytes(f.bytes_out), human_bytes(f.bytes_in)),
            human_duration(f.age_secs),
            human_duration(f.idle_secs),
        ];
        if let Some(rates) = rates {
            row.push(rate(rates.get(&flow_id(f)).copied().unwrap_or_default()));
        }
        t.row(row);
    }
    t.print();
}

pub fn run(instance: &str, pins: &PinDir, args: FlowsArgs) -> Result<()> {
    let filter = FlowFilter {
        peer: args.peer,
        resource: args.resource,
        proto: args.proto,
        state: args.state,
        sort: args.sort,
        top: args.top,
    };
    let names = names_for(instance);
    let read = || Ok(filter_flows(read_flows(pins, &names)?, &filter));
    if args.watch {
        let totals = |flows: &Vec<Flow>| {
            flows
                .iter()
                .map(|f| {
                    let total = (f.packets_out + f.packets_in, f.bytes_out + f.bytes_in);
                    (flow_id(f), total)
                })
                .collect()
        };
        return watch(read, totals, |flows, rates| print_flows(flows, Some(rates)));
    }
    let flows = read()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&flows)?);
    } else {
        print_flows(&flows, None);
    }
    Ok(())
}
