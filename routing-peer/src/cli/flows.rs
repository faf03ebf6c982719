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

/// One peer's or resource's flows, summed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Talker {
    pub name: String,
    pub flows: u64,
    pub packets_out: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

/// Flows summed by peer or resource, the most bytes first.
pub fn talkers(flows: &[Flow], by: &str, top: Option<usize>) -> Vec<Talker> {
    let mut sums: std::collections::BTreeMap<String, Talker> = Default::default();
    for f in flows {
        let name = if by == "resource" {
            &f.resource
        } else {
            &f.peer
        };
        let t = sums.entry(name.clone()).or_insert_with(|| Talker {
            name: name.clone(),
            ..Default::default()
        });
        t.flows += 1;
        t.packets_out += f.packets_out;
        t.packets_in += f.packets_in;
        t.bytes_out += f.bytes_out;
        t.bytes_in += f.bytes_in;
    }
    let mut out: Vec<Talker> = sums.into_values().collect();
    out.sort_by_key(|t| std::cmp::Reverse(t.bytes_out + t.bytes_in));
    if let Some(n) = top {
        out.truncate(n);
    }
    out
}

fn print_talkers(by: &str, talkers: &[Talker], rates: Option<&Rates>) {
    let mut t = Table::new(&[&by.to_uppercase(), "FLOWS", "PKTS OUT/IN", "BYTES OUT/IN"]);
    if rates.is_some() {
        t.push_header("RATE");
    }
    for x in talkers {
        let mut row = vec![
            x.name.clone(),
            x.flows.to_string(),
            format!("{}/{}", x.packets_out, x.packets_in),
            format!("{}/{}", human_bytes(x.bytes_out), human_bytes(x.bytes_in)),
        ];
        if let Some(rates) = rates {
            row.push(rate(rates.get(&x.name).copied().unwrap_or_default()));
        }
        t.row(row);
    }
    t.print();
}

fn run_by(
    instance: &str,
    pins: &PinDir,
    by: &str,
    args: (bool, bool),
    filter: &FlowFilter,
) -> Result<()> {
    let (json, watching) = args;
    let names = names_for(instance);
    let all = FlowFilter {
        top: None,
        ..filter.clone()
    };
    let read = || {
        Ok(talkers(
            &filter_flows(read_flows(pins, &names)?, &all),
            by,
            filter.top,
        ))
    };
    if watching {
        let totals = |ts: &Vec<Talker>| {
            ts.iter()
                .map(|t| {
                    (
                        t.name.clone(),
                        (t.packets_out + t.packets_in, t.bytes_out + t.bytes_in),
                    )
                })
                .collect()
        };
        return watch(read, totals, |ts, rates| print_talkers(by, ts, Some(rates)));
    }
    let ts = read()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&ts)?);
    } else {
        print_talkers(by, &ts, None);
    }
    Ok(())
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
    if let Some(by) = args.by.clone() {
        return run_by(instance, pins, &by, (args.json, args.watch), &filter);
    }
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
