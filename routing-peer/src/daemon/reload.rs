//! The daemon's loop: signals, the file watch, DNS installs and the
//! one-second upkeep; reloads, in place where only policies changed.

use std::{collections::HashSet, net::IpAddr, time::Duration};

use anyhow::{Context, Result};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};
use tracing::{error, info, warn};

use super::{
    datapath_config, file_stamp, record_applied, self_addresses, share_names, unix_now, Daemon,
};
use crate::{
    compile,
    config::{netbird, Config, WireguardMode},
    dns, model,
    wireguard::DeviceSpec,
};

impl Daemon {
    pub(super) async fn serve_until_stopped(&mut self) -> Result<()> {
        let logger = aya_log::EbpfLogger::init(&mut self.ebpf).context("initialising aya-log")?;
        // SAFETY: the ring buffer fd is owned by `logger`, which the AsyncFd
        // owns until it is dropped, so the fd outlives its registration.
        let mut logs = unsafe { AsyncFd::register(logger) }
            .map_err(|e| anyhow::anyhow!("polling aya-log: {e}"))?;
        let mut sighup = signal(SignalKind::hangup())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let ring = self
            .event_ring
            .take()
            .ok_or_else(|| anyhow::anyhow!("the events ring buffer was taken"))?;
        // SAFETY: the ring buffer's fd is owned by `ring`, which the AsyncFd
        // owns until it is dropped, so the fd outlives its registration.
        let mut ring = unsafe { AsyncFd::register(ring) }
            .map_err(|e| anyhow::anyhow!("polling the events ring buffer: {e}"))?;
        let mut stamp = file_stamp(&self.opts.config_path);
        let mut ticks: u64 = 0;
        info!(instance = %self.opts.instance, "routing-peer running");
        loop {
            tokio::select! {
                guard = logs.readable_mut() => {
                    let mut guard = guard?;
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                _ = sighup.recv() => {
                    // The file watch must not load the same file again.
                    stamp = file_stamp(&self.opts.config_path);
                    self.reload("SIGHUP");
                }
                Some(install) = self.dns_installs.recv() => self.install_resolved(install),
                Some(outcome) = self.source.syncs.recv() => self.synced(outcome),
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    let events = crate::events::reader::Reader::drain(guard.get_inner_mut());
                    guard.clear_ready();
                    self.publish_events(events);
                }
                _ = sigterm.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = tick.tick() => {
                    ticks += 1;
                    let now = file_stamp(&self.opts.config_path);
                    if now != stamp {
                        stamp = now;
                        self.reload("file change");
                    }
                    self.refresh_peers();
                    self.expire_resolved();
                    // The kernel wakes this loop once per 64 KiB of
                    // events: the rest are read here, once a second.
                    let events = crate::events::reader::Reader::drain(ring.get_mut());
                    self.publish_events(events);
                    self.flush_drop_events();
                    if ticks.is_multiple_of(10) {
                        self.collect_garbage();
                    }
                    let _ = self.publish();
                }
            }
        }
        info!("daemon exiting; the data path stays up until `routing-peer down`");
        Ok(())
    }

    /// Applies a changed file. An invalid one is rejected with all its
    /// problems and the running configuration stays. With `[netbird]`, the
    /// file's settings join the last good import, and the poller restarts.
    fn reload(&mut self, why: &str) {
        let started = std::time::Instant::now();
        let (loaded, parsed) = match self.parse_cache.load(&self.opts.config_path) {
            Ok(l) => l,
            Err(e) => {
                error!(
                    trigger = why,
                    "reload rejected, running configuration kept:\n{e}"
                );
                return;
            }
        };
        for w in &loaded.warnings {
            warn!(field = %w.field, "{}", w.message);
        }
        let local = loaded.config;
        let config = self.source.effective(&local);
        if let Err(e) = crate::config::validated(&self.opts.config_path, config.clone()) {
            error!(
                trigger = why,
                "reload rejected, running configuration kept:\n{e}"
            );
            return;
        }
        self.source.follow(&local, &self.status);
        let read_ms = started.elapsed().as_millis() as u64;
        self.apply(config, why, read_ms, parsed);
    }

    /// Applies a synced import: a changed model reloads in place; a fault
    /// keeps the running configuration.
    pub(super) fn synced(&mut self, outcome: netbird::poll::Outcome) {
        if let Some(config) = self.source.accept(outcome, Some(&self.status)) {
            if config != self.config {
                self.apply(config, "netbird sync", 0, Default::default());
            }
        }
    }

    /// Puts `config` (valid) into WireGuard, the maps and the DNS forwarder.
    fn apply(
        &mut self,
        config: Config,
        why: &str,
        read_ms: u64,
        parsed: crate::config::CacheStats,
    ) {
        let wg_result = match self.wg.mode() {
            WireguardMode::External => Ok(()),
            _ => DeviceSpec::from_config(&config).and_then(|spec| self.wg.configure(&spec)),
        };
        if let Err(e) = wg_result {
            error!(trigger = why, "reload rejected: WireGuard: {e}");
            return;
        }
        if let Err(e) = self.policy.set_config(datapath_config(&config)) {
            error!("reload: writing data path settings: {e}");
        }
        // Resolved addresses of resources that are gone or disabled go too.
        let live: HashSet<String> = config
            .networks
            .iter()
            .flat_map(|n| &n.resources)
            .filter(|r| r.enabled)
            .map(|r| r.name.clone())
            .collect();
        self.resolved.retain(|name, _| live.contains(name));
        let own = self_addresses(&config);
        let (diff, how, compile_ms, install_time) = match self.apply_in_place(&config, &own) {
            Some(done) => done,
            None => {
                let compile_started = std::time::Instant::now();
                let compiled = compile::compile(
                    &config,
                    &own,
                    &self.resolved_addrs(),
                    self.compiled.as_previous(),
                );
                let compile_ms = compile_started.elapsed().as_millis() as u64;
                let install_started = std::time::Instant::now();
                match self.policy.install(&compiled.tables) {
                    Ok(stats) => {
                        self.compiled = compiled;
                        (stats, "full", compile_ms, install_started.elapsed())
                    }
                    Err(e) => {
                        error!("reload: installing policy: {e}");
                        return;
                    }
                }
            }
        };
        crate::locks::lock(&self.status).self_addresses = own;
        // Where a reload's time goes: reading (and validating) the file,
        // compiling, writing the maps.
        info!(
            trigger = why,
            compile = how,
            written = diff.written,
            removed = diff.removed,
            generation = self.policy.config.policy_gen,
            read_ms,
            entries_reused = parsed.reused,
            entries_parsed = parsed.parsed,
            full_parse = parsed.full_parse,
            compile_ms,
            install_ms = install_time.as_millis() as u64,
            "configuration reloaded"
        );
        *crate::locks::write(&self.dns_view) = dns::View::new(&config, &self.compiled);
        self.events.configure(&config.events);
        self.events.stale = true;
        record_applied(
            &self.opts.instance,
            &self
                .source
                .applied_text(&config, self.parse_cache.last_text()),
        );
        self.config = config;
        let mut status = crate::locks::lock(&self.status);
        status.generation = self.policy.config.policy_gen;
        status.last_reload_unix = unix_now();
        drop(status);
        if let Err(e) = share_names(&self.status, &self.opts.instance, &self.compiled.names) {
            warn!("writing names for the CLI: {e}");
        }
    }

    /// Applies a change of policies alone to the compiled tables and the
    /// maps: (diff, "in place", compile ms, install time). `None` when it
    /// takes a full compile, or when writing the maps failed (they are then
    /// still the installed copy's, which a full compile diffs against).
    fn apply_in_place(
        &mut self,
        config: &Config,
        own: &[IpAddr],
    ) -> Option<(model::DiffStats, &'static str, u64, Duration)> {
        let started = std::time::Instant::now();
        let in_place = if crate::locks::lock(&self.status).self_addresses == own {
            compile::apply_policy_change(&mut self.compiled, &self.config, config)
        } else {
            Err(compile::NeedsFullCompile::NotOnlyPolicies)
        };
        let diff = match in_place {
            Ok(diff) => diff,
            Err(why_full) => {
                info!(reason = %why_full, "reload: compiling in full");
                return None;
            }
        };
        let compile_ms = started.elapsed().as_millis() as u64;
        let install_started = std::time::Instant::now();
        match self.policy.install_diff(&diff) {
            Ok(stats) => Some((stats, "in place", compile_ms, install_started.elapsed())),
            Err(e) => {
                error!("reload: installing in place: {e}; compiling in full");
                None
            }
        }
    }
}
