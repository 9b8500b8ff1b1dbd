//! The control shard: the relay's thread for everything that is not per cell.
//!
//! It never touches a cell or a connection. So far it
//!
//! - logs each data shard's statistics at info level every
//!   [`ControlConfig::stats_interval_secs`] (cells relayed, circuits, channels, cross-shard
//!   circuits and proxies, memory held), read from the [`ShardGauges`] each shard publishes
//!   once per batch (relaxed atomics: no lock on the data path);
//! - rotates the ntor onion key and the TLS link certificate on a schedule, as C tor does
//!   (tor-spec §4 and dir-spec's `ntor-onion-key`; C tor: onion keys every 28 days, kept valid
//!   for a grace period after rotation (`OnionKeyGracePeriodDays`, 7); link certificates daily).
//!   New keys go to every data shard over its queue ([`XMsg::ServerKeys`],
//!   [`XMsg::Context`]); during the grace period the shards accept CREATE2 made with the
//!   previous onion key. The new onion key is written to `keys/secret_onion_key_ntor` and the
//!   previous one to `keys/secret_onion_key_ntor.old`, C tor's file names.
//!
//! The schedule itself is sans-io ([`Timers`]): `now` in, [`Action`]s out.
//!
//! Not yet: a restart starts the onion-key schedule afresh (C tor looks at the key file's
//! age) and forgets the previous key; nothing is published (no descriptors yet).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use proto::keys::{NtorOnionKeypair, RelayKeys};
use rand::rngs::OsRng;
use serde::Deserialize;

use crate::shard::RelayContext;
use crate::tls::{self, LinkCert, LinkKeyAlg};
use crate::xshard::{Wake, XMsg};

/// C tor's onion-key lifetime: 28 days.
pub const ONION_KEY_LIFETIME_SECS: u64 = 28 * 24 * 3600;
/// C tor's default `OnionKeyGracePeriodDays`: 7 days.
pub const ONION_KEY_GRACE_SECS: u64 = 7 * 24 * 3600;
/// A new TLS link certificate every day, as C tor.
pub const LINK_CERT_LIFETIME_SECS: u64 = 24 * 3600;

/// The `[control]` table; every field has a default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Seconds between statistics lines; 0: none.
    pub stats_interval_secs: u64,
    /// Seconds between onion-key rotations.
    pub onion_key_lifetime_secs: u64,
    /// Seconds the previous onion key stays valid after a rotation.
    pub onion_key_grace_secs: u64,
    /// Seconds between link-certificate rotations.
    pub link_cert_lifetime_secs: u64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            stats_interval_secs: 60,
            onion_key_lifetime_secs: ONION_KEY_LIFETIME_SECS,
            onion_key_grace_secs: ONION_KEY_GRACE_SECS,
            link_cert_lifetime_secs: LINK_CERT_LIFETIME_SECS,
        }
    }
}

/// What the schedule asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Log every shard's statistics.
    LogStats,
    /// Make a new onion key; keep the current one as the previous.
    RotateOnionKey,
    /// The grace period ended: forget the previous onion key.
    DropPreviousOnionKey,
    /// Make a new link certificate.
    RotateLinkCert,
}

/// The control shard's schedule, sans-io.
#[derive(Debug, Clone)]
pub struct Timers {
    config: ControlConfig,
    next_stats: Option<u64>,
    next_onion: u64,
    grace_end: Option<u64>,
    next_link: u64,
}

impl Timers {
    /// The schedule of a relay started at `now` (its keys and certificate made then).
    pub fn new(config: ControlConfig, now: u64) -> Self {
        Timers {
            config,
            next_stats: (config.stats_interval_secs > 0)
                .then(|| now.saturating_add(config.stats_interval_secs)),
            next_onion: now.saturating_add(config.onion_key_lifetime_secs.max(1)),
            grace_end: None,
            next_link: now.saturating_add(config.link_cert_lifetime_secs.max(1)),
        }
    }

    /// The schedule of a relay restarted at `now` whose current onion key was made at
    /// `onion_made` (its file's age, as C tor judges it): the next rotation is due one lifetime
    /// after that (at once if overdue), and a previous key, if one is kept, stays valid until
    /// one grace period after the current key replaced it.
    pub fn resume(config: ControlConfig, now: u64, onion_made: u64, has_previous: bool) -> Self {
        let mut t = Timers::new(config, now);
        let made = onion_made.min(now);
        t.next_onion = made.saturating_add(config.onion_key_lifetime_secs.max(1));
        t.grace_end = has_previous.then(|| made.saturating_add(config.onion_key_grace_secs));
        t
    }

    /// The earliest time an [`Action`] is due.
    pub fn next_deadline(&self) -> u64 {
        [
            self.next_stats,
            Some(self.next_onion),
            self.grace_end,
            Some(self.next_link),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(u64::MAX)
    }

    /// The next action due at `now`, if any (call until `None`).
    pub fn poll(&mut self, now: u64) -> Option<Action> {
        if self.grace_end.is_some_and(|t| t <= now) {
            self.grace_end = None;
            return Some(Action::DropPreviousOnionKey);
        }
        if self.next_onion <= now {
            self.next_onion = now.saturating_add(self.config.onion_key_lifetime_secs.max(1));
            self.grace_end = Some(now.saturating_add(self.config.onion_key_grace_secs));
            return Some(Action::RotateOnionKey);
        }
        if self.next_link <= now {
            self.next_link = now.saturating_add(self.config.link_cert_lifetime_secs.max(1));
            return Some(Action::RotateLinkCert);
        }
        if let Some(t) = self.next_stats.filter(|&t| t <= now) {
            self.next_stats = Some(t.max(now).saturating_add(self.config.stats_interval_secs));
            return Some(Action::LogStats);
        }
        None
    }
}

/// What one data shard publishes for the control shard, once per batch.
#[derive(Debug, Default)]
pub struct ShardGauges {
    /// Relay cells passed on (the core's `cells_relayed`).
    pub cells_relayed: AtomicU64,
    /// Relay cells addressed to this relay.
    pub cells_recognized: AtomicU64,
    /// Live circuits.
    pub circuits: AtomicU64,
    /// Open channels.
    pub channels: AtomicU64,
    /// Circuits of other shards using this shard's channels.
    pub cross_circuits: AtomicU64,
    /// Channels of other shards this shard's circuits use.
    pub proxies: AtomicU64,
    /// Bytes held (as the memory cap counts them).
    pub memory_bytes: AtomicU64,
}

/// A data shard as the control shard reaches it.
#[allow(missing_debug_implementations)]
pub struct ShardHandle {
    /// Its inbox.
    pub tx: Sender<Vec<XMsg>>,
    /// Its wake-up.
    pub wake: Arc<dyn Wake>,
    /// What it publishes.
    pub gauges: Arc<ShardGauges>,
}

/// Everything the control thread owns.
#[allow(missing_debug_implementations)]
pub struct Control {
    /// The schedule's settings.
    pub config: ControlConfig,
    /// The relay's keys (the onion key changes on rotation).
    pub keys: RelayKeys,
    /// The context the shards got at start (rebuilt on link-certificate rotation).
    pub ctx: Arc<RelayContext>,
    /// Where the keys live.
    pub data_dir: PathBuf,
    /// The data shards.
    pub shards: Vec<ShardHandle>,
}

impl Control {
    /// Runs the schedule until `stop` is set (checked every `tick`).
    pub fn run(mut self, stop: &AtomicBool, tick: Duration) {
        let mut timers = self.resume_schedule(crate::reactor::unix_now());
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(tick);
            let now = crate::reactor::unix_now();
            while let Some(action) = timers.poll(now) {
                match action {
                    Action::LogStats => self.log_stats(),
                    Action::RotateOnionKey => {
                        let previous = self.keys.ntor_onion().clone();
                        self.keys
                            .set_ntor_onion(NtorOnionKeypair::generate(&mut OsRng));
                        self.save_onion_keys(Some(&previous));
                        self.push_server_keys(Some(previous));
                        tracing::info!(
                            "onion key rotated; the previous one stays valid for the grace period"
                        );
                    }
                    Action::DropPreviousOnionKey => {
                        self.push_server_keys(None);
                        tracing::info!("previous onion key retired");
                    }
                    Action::RotateLinkCert => match self.new_context(now) {
                        Ok(ctx) => {
                            self.ctx = ctx.clone();
                            self.broadcast(|| XMsg::Context(ctx.clone()));
                            tracing::info!("link certificate rotated");
                        }
                        Err(e) => tracing::warn!(error = %e, "link certificate rotation failed"),
                    },
                }
            }
        }
    }

    fn log_stats(&self) {
        for (i, s) in self.shards.iter().enumerate() {
            let g = &s.gauges;
            let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
            tracing::info!(
                shard = i,
                cells_relayed = get(&g.cells_relayed),
                cells_recognized = get(&g.cells_recognized),
                circuits = get(&g.circuits),
                channels = get(&g.channels),
                cross_circuits = get(&g.cross_circuits),
                proxies = get(&g.proxies),
                memory_bytes = get(&g.memory_bytes),
                "shard stats"
            );
        }
    }

    /// The schedule as the key files on disk leave it: the current onion key's age decides the
    /// next rotation, and a previous key (`secret_onion_key_ntor.old`) still inside its grace
    /// period is handed to the shards again, so clients that fetched it before a restart can
    /// still extend to us.
    fn resume_schedule(&self, now: u64) -> Timers {
        let dir = self.data_dir.join(proto::key_file::KEYS_DIR);
        let current = dir.join(proto::key_file::SECRET_ONION_KEY_NTOR);
        let made = std::fs::metadata(&current)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(now, |d| d.as_secs());
        let old = dir.join(format!("{}.old", proto::key_file::SECRET_ONION_KEY_NTOR));
        let in_grace = made.saturating_add(self.config.onion_key_grace_secs) > now;
        let previous = if in_grace {
            match proto::key_file::load(&old, proto::key_file::parse_ntor_secret_key) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "previous onion key unreadable; not kept");
                    None
                }
            }
        } else {
            None
        };
        let timers = Timers::resume(self.config, now, made, previous.is_some());
        if previous.is_some() {
            self.push_server_keys(previous);
            tracing::info!("previous onion key kept for the rest of its grace period");
        }
        timers
    }

    fn push_server_keys(&self, previous: Option<NtorOnionKeypair>) {
        let ntor = self.keys.ntor_server_keys(previous.clone());
        let ntor_v3 = self.keys.ntor_v3_server_keys(previous);
        self.broadcast(|| XMsg::ServerKeys {
            ntor: Box::new(ntor.clone()),
            ntor_v3: Box::new(ntor_v3.clone()),
        });
    }

    fn save_onion_keys(&self, previous: Option<&NtorOnionKeypair>) {
        let dir = self.data_dir.join(proto::key_file::KEYS_DIR);
        let cur = self.keys.ntor_onion().clone();
        let r = proto::key_file::store(&dir.join(proto::key_file::SECRET_ONION_KEY_NTOR), |out| {
            proto::key_file::encode_ntor_secret_key(&cur, out)
        });
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not save the new onion key");
        }
        if let Some(prev) = previous {
            let r = proto::key_file::store(
                &dir.join(format!("{}.old", proto::key_file::SECRET_ONION_KEY_NTOR)),
                |out| proto::key_file::encode_ntor_secret_key(prev, out),
            );
            if let Err(e) = r {
                tracing::warn!(error = %e, "could not save the previous onion key");
            }
        }
    }

    fn new_context(&self, now: u64) -> Result<Arc<RelayContext>, tls::TlsSetupError> {
        let cert = LinkCert::generate(
            LinkKeyAlg::Rsa2048,
            now,
            // Valid a little beyond the next rotation, so that no connection sees it expire.
            self.config.link_cert_lifetime_secs.saturating_mul(2),
            &mut OsRng,
        )?;
        Ok(Arc::new(RelayContext {
            keys: self.keys.clone(),
            identity_certs: self.ctx.identity_certs.clone(),
            server: tls::server_config(&cert)?,
            client: self.ctx.client.clone(),
            link_cert_digest: cert.digest(),
            our_addrs: self.ctx.our_addrs.clone(),
        }))
    }

    /// Sends `msg()` to every shard (blocking while an inbox is full: this is the control
    /// thread) and wakes it.
    fn broadcast(&self, msg: impl Fn() -> XMsg) {
        for s in &self.shards {
            if s.tx.send(vec![msg()]).is_ok() {
                s.wake.wake();
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn schedule_with_a_short_period() {
        let cfg = ControlConfig {
            stats_interval_secs: 5,
            onion_key_lifetime_secs: 100,
            onion_key_grace_secs: 30,
            link_cert_lifetime_secs: 40,
        };
        let mut t = Timers::new(cfg, 1000);
        assert_eq!(t.next_deadline(), 1005);
        assert_eq!(t.poll(1004), None);
        assert_eq!(t.poll(1005), Some(Action::LogStats));
        assert_eq!(t.poll(1005), None);
        let mut seen = Vec::new();
        for now in 1006..=1200 {
            while let Some(a) = t.poll(now) {
                if a != Action::LogStats {
                    seen.push((now, a));
                }
            }
        }
        assert_eq!(
            seen,
            vec![
                (1040, Action::RotateLinkCert),
                (1080, Action::RotateLinkCert),
                (1100, Action::RotateOnionKey),
                (1120, Action::RotateLinkCert),
                (1130, Action::DropPreviousOnionKey),
                (1160, Action::RotateLinkCert),
                (1200, Action::RotateOnionKey),
                (1200, Action::RotateLinkCert),
            ]
        );
    }

    /// After a restart the schedule follows the key file's age, not the restart.
    #[test]
    fn resumed_schedule_follows_the_key_age() {
        let cfg = ControlConfig {
            stats_interval_secs: 0,
            onion_key_lifetime_secs: 100,
            onion_key_grace_secs: 30,
            link_cert_lifetime_secs: 1000,
        };
        // Key made at 950, restart at 1000 with a previous key: it is retired at 980 (already
        // past: at once), the next rotation is at 1050, not 1100.
        let mut t = Timers::resume(cfg, 1000, 950, true);
        assert_eq!(t.poll(1000), Some(Action::DropPreviousOnionKey));
        assert_eq!(t.poll(1000), None);
        assert_eq!(t.next_deadline(), 1050);
        assert_eq!(t.poll(1050), Some(Action::RotateOnionKey));
        // Key made at 990: the previous one stays until 1020.
        let mut t = Timers::resume(cfg, 1000, 990, true);
        assert_eq!(t.next_deadline(), 1020);
        assert_eq!(t.poll(1019), None);
        assert_eq!(t.poll(1020), Some(Action::DropPreviousOnionKey));
        // An overdue key rotates at once; no previous key means no retirement.
        let mut t = Timers::resume(cfg, 1000, 800, false);
        assert_eq!(t.poll(1000), Some(Action::RotateOnionKey));
        // A file from the future (clock change) counts as made now.
        let t = Timers::resume(cfg, 1000, 5000, false);
        assert_eq!(t.next_deadline(), 1100);
    }

    #[test]
    fn no_stats_when_off() {
        let cfg = ControlConfig {
            stats_interval_secs: 0,
            ..ControlConfig::default()
        };
        let mut t = Timers::new(cfg, 0);
        assert_eq!(t.next_deadline(), LINK_CERT_LIFETIME_SECS);
        assert_eq!(t.poll(LINK_CERT_LIFETIME_SECS - 1), None);
        assert_eq!(
            t.poll(LINK_CERT_LIFETIME_SECS),
            Some(Action::RotateLinkCert)
        );
    }
}
