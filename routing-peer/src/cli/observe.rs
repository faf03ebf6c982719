//! `routing-peer observe`: the daemon's event stream, filtered, as lines
//! for people (names, arrows, counts) or JSON lines for tools.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};

use super::args::ObserveArgs;
use crate::{control, events::Record};

pub fn run(instance: &str, args: ObserveArgs) -> Result<()> {
    let mut stream = UnixStream::connect(control::socket_path(instance)).with_context(|| {
        format!("routing-peer is not running for instance {instance}: observe needs the daemon")
    })?;
    let since = args.since.map(|d| {
        (SystemTime::now() - d)
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|t| t.as_millis() as u64)
            .unwrap_or(0)
    });
    let request = match since {
        Some(ms) => format!("observe {ms}\n"),
        None => "observe\n".to_string(),
    };
    stream.write_all(request.as_bytes())?;
    let deadline = args.duration.map(|d| Instant::now() + d);
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut reader = BufReader::new(stream);
    let mut shown = 0usize;
    let mut out = std::io::stdout().lock();
    let mut line = String::new();
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) || args.count.is_some_and(|c| shown >= c) {
            return Ok(());
        }
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(()), // the daemon went away
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e.into()),
        }
        let text = std::mem::take(&mut line);
        let Ok(record) = serde_json::from_str::<Record>(&text) else {
            eprintln!("observe: {}", text.trim()); // "lagged": events missed
            continue;
        };
        if !matches(&record, &args) {
            continue;
        }
        shown += 1;
        if args.json {
            writeln!(out, "{}", text.trim())?;
        } else {
            writeln!(out, "{}", human(&record))?;
        }
        out.flush()?;
    }
}

pub fn matches(r: &Record, a: &ObserveArgs) -> bool {
    let either = |want: &Option<String>, name: &Option<String>, addr: &str| {
        want.as_ref()
            .is_none_or(|w| name.as_deref() == Some(w.as_str()) || addr == w)
    };
    either(&a.peer, &r.peer, &r.src)
        && (a.resource.is_none() || r.resource == a.resource)
        && a.verdict.as_deref().is_none_or(|v| match v {
            "dropped" => r.kind == "drop",
            _ => r.kind != "drop",
        })
        && (a.reason.is_none() || r.reason == a.reason)
        && a.proto.as_deref().is_none_or(|p| r.proto == p)
        && a.port.is_none_or(|p| r.src_port == p || r.dst_port == p)
}

fn or_addr(name: &Option<String>, addr: &str, port: u16) -> String {
    match name {
        Some(n) => format!("{n} {addr}:{port}"),
        None => format!("{addr}:{port}"),
    }
}

pub fn human(r: &Record) -> String {
    let from = or_addr(&r.peer, &r.src, r.src_port);
    let to = or_addr(&r.resource, &r.dst, r.dst_port);
    let (from, to) = if r.from.as_deref() == Some("lan") {
        (
            format!("{}:{}", r.src, r.src_port),
            or_addr(&r.peer, &r.dst, r.dst_port),
        )
    } else {
        (from, to)
    };
    let rule = r
        .rule
        .as_ref()
        .map(|n| format!(" rule \"{n}\""))
        .unwrap_or_default();
    let head = format!(
        "{} {:<5} {from} -> {to} {}",
        r.time,
        r.kind.to_uppercase(),
        r.proto
    );
    match r.kind.as_str() {
        "drop" => format!(
            "{head}{} {}{rule}{}",
            r.tcp_flags
                .as_ref()
                .filter(|f| !f.is_empty())
                .map(|f| format!(" [{f}]"))
                .unwrap_or_default(),
            r.reason.as_deref().unwrap_or("?"),
            match (r.aggregated, r.count) {
                (true, Some(n)) => format!(", {n} more like it"),
                (false, Some(n)) if n > 1 => format!(" x{n}"),
                _ => String::new(),
            }
        ),
        "end" => format!(
            "{head}{rule} {} {}/{} pkts {}/{} B {:.1} s",
            r.reason.as_deref().unwrap_or("?"),
            r.packets_out.unwrap_or(0),
            r.packets_in.unwrap_or(0),
            r.bytes_out.unwrap_or(0),
            r.bytes_in.unwrap_or(0),
            r.duration_ms.unwrap_or(0) as f64 / 1000.0
        ),
        _ => format!(
            "{head}{rule}{}",
            r.nat_src
                .as_ref()
                .map(|n| format!(" nat {n}:{}", r.nat_src_port.unwrap_or(0)))
                .unwrap_or_default()
        ),
    }
}
