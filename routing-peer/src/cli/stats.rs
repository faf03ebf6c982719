//! `routing-peer stats`: per-resource traffic, drops by reason, hand-offs
//! to the kernel, hooks and conntrack pressure.

use anyhow::Result;

use super::{
    names_for,
    table::{human_bytes, rate, Table},
    watch::{watch, Rates},
};
use crate::{
    datapath::PinDir,
    observe::{read_stats, StatsReport},
};

pub fn print_stats(report: &StatsReport, rates: Option<&Rates>) {
    let mut t = Table::new(&[
        "RESOURCE",
        "FLOWS",
        "NEW",
        "PKTS OUT",
        "BYTES OUT",
        "PKTS IN",
        "BYTES IN",
        "DENIED",
    ]);
    if rates.is_some() {
        t.push_header("RATE");
    }
    for r in &report.resources {
        let mut row = vec![
            r.resource.clone(),
            r.active_flows.to_string(),
            r.new_flows.to_string(),
            r.packets_out.to_string(),
            human_bytes(r.bytes_out),
            r.packets_in.to_string(),
            human_bytes(r.bytes_in),
            r.denied_packets.to_string(),
        ];
        if let Some(rates) = rates {
            row.push(rate(rates.get(&r.resource).copied().unwrap_or_default()));
        }
        t.row(row);
    }
    t.print();
    let counters = [
        ("DROP REASON", &report.drops),
        ("TO KERNEL", &report.handoffs),
        ("HOOK", &report.hooks),
    ];
    for (title, rows) in counters {
        println!();
        let mut t = Table::new(&[title, "PACKETS", "BYTES"]);
        for c in rows {
            t.row(vec![
                c.name.to_string(),
                c.packets.to_string(),
                human_bytes(c.bytes),
            ]);
        }
        t.print();
    }
    println!(
        "\nconntrack: {} / {} entries, {} evicted (LRU)",
        report.conntrack_entries, report.conntrack_capacity, report.conntrack_evictions
    );
    let f = &report.fragments;
    println!(
        "fragments: {} / {} datagrams, {} evicted (LRU); {} first fragments tracked, {} later ones followed, {} hold passes",
        f.datagrams, f.capacity, f.evictions, f.tracked, f.followed, f.held
    );
}

pub fn run(instance: &str, pins: &PinDir, json: bool, watching: bool) -> Result<()> {
    let names = names_for(instance);
    let read = || read_stats(pins, &names);
    if watching {
        let totals = |report: &StatsReport| {
            report
                .resources
                .iter()
                .map(|r| {
                    let total = (r.packets_out + r.packets_in, r.bytes_out + r.bytes_in);
                    (r.resource.clone(), total)
                })
                .collect()
        };
        return watch(read, totals, |r, rates| print_stats(r, Some(rates)));
    }
    let report = read()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_stats(&report, None);
    }
    Ok(())
}
