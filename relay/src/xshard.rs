//! Cross-shard channels: one canonical channel per peer relay for the whole process.
//!
//! tor-spec §5.3.1 (<https://spec.torproject.org/tor-spec/creating-circuits.html>, "Canonical
//! connections"): a relay should not open a second channel to a peer it already has a usable
//! channel to. A channel belongs to the data shard whose socket carries it; a circuit belongs
//! to the shard its first channel came in on. When an EXTEND2 on shard A names a peer whose
//! channel lives on shard B, the circuit's next hop is on B:
//!
//! - A's [`crate::circuit::RelayCore`] sees a *proxy* channel (an ordinary [`ChanId`] of A's)
//!   standing for B's channel. Every cell A's core writes on the proxy (CREATE2, relay cells
//!   already encrypted, DESTROY) travels to B as [`XMsg::ToChannel`].
//! - B gives each such circuit a circuit id of its own on the real channel (held in B's core
//!   with [`crate::circuit::RelayCore::reserve_circ_id`], so neither B's circuits nor other
//!   shards' can take it), rewrites the id and writes the cell. Cells that arrive on the real
//!   channel with a translated id go back to A as [`XMsg::FromChannel`] with A's id, and A's core
//!   processes them as if read from the proxy (CREATED2, relay crypto, DESTROY).
//! - DESTROY in either direction removes the translation. When B's channel closes, every proxy
//!   that used it hears [`XMsg::ChannelClosed`] and its core destroys those circuits
//!   (CHANNEL_CLOSED towards their origin); when A's core gives up a proxy, B hears
//!   [`XMsg::ProxyClosed`] and sends DESTROY for its circuits.
//!
//! Cells cross shards in batches (one `Vec` per destination per [`crate::shard::Shard::process_batch`])
//! over bounded `crossbeam` channels, followed by one [`Wake::wake`] of the destination (an
//! eventfd the destination's reactor waits on). Nothing on the per-cell path takes a lock: the
//! [`ChannelRegistry`] (a mutex) is consulted only when an EXTEND2 finds no usable channel on its
//! own shard, and written when a relay channel opens or closes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};
use proto::ids::{Ed25519Identity, RsaIdentity};
use proto::link_spec::LinkSpec;

use crate::circuit::{ChanId, CircCell};
use crate::shard::RelayContext;
use proto::ntor::NtorServerKeys;
use proto::ntor_v3::NtorV3ServerKeys;

/// Batches waiting in one shard's inbox before senders hold theirs back.
pub const INBOX_BATCHES_MAX: usize = 1024;

/// Index of a data shard in its relay.
pub type ShardIndex = u16;

/// What one shard sends another.
#[derive(Debug, Clone)]
pub enum XMsg {
    /// A cell written by a circuit of shard `from` on its proxy `proxy`, for the channel
    /// `chan` the receiving shard owns. Circuit id: the one `from`'s core uses on the proxy.
    ToChannel {
        /// The sending shard.
        from: ShardIndex,
        /// The sender's proxy channel.
        proxy: ChanId,
        /// The receiver's channel.
        chan: ChanId,
        /// The cell.
        cell: CircCell,
    },
    /// A cell received on a channel of the sending shard for a circuit of the receiving shard,
    /// with the circuit id rewritten to the one the receiver's core uses on `proxy`.
    FromChannel {
        /// The receiver's proxy channel.
        proxy: ChanId,
        /// The cell.
        cell: CircCell,
    },
    /// The channel behind the receiver's `proxy` closed.
    ChannelClosed {
        /// The receiver's proxy channel.
        proxy: ChanId,
    },
    /// Shard `from` no longer uses its proxy `proxy` of the receiver's `chan`.
    ProxyClosed {
        /// The sending shard.
        from: ShardIndex,
        /// The sender's proxy channel.
        proxy: ChanId,
        /// The receiver's channel.
        chan: ChanId,
    },
    /// From the control shard: the onion keys for CREATE2 (with the previous key during its
    /// grace period, [`crate::control`]).
    ServerKeys {
        /// ntor.
        ntor: Box<NtorServerKeys>,
        /// ntor v3.
        ntor_v3: Box<NtorV3ServerKeys>,
    },
    /// From the control shard: a new relay context (a rotated link certificate) for the
    /// connections started from now on.
    Context(Arc<RelayContext>),
}

/// Wakes a shard's reactor (an eventfd in the reactors, anything in tests).
pub trait Wake: Send + Sync {
    /// Makes the shard's next wait return at once.
    fn wake(&self);
}

/// A [`Wake`] that does nothing (tests that drive shards by hand).
#[derive(Debug, Default)]
pub struct NoWake;

impl Wake for NoWake {
    fn wake(&self) {}
}

/// One open relay channel, as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegEntry {
    /// The shard owning it.
    pub shard: ShardIndex,
    /// Its id on that shard.
    pub chan: ChanId,
    /// The negotiated link protocol version.
    pub link_version: u16,
    /// Whether we opened it.
    pub initiator: bool,
    /// The peer's proven ed25519 identity.
    pub ed_id: Option<Ed25519Identity>,
    /// The addresses it is canonical for: the one we see the peer at and those its NETINFO
    /// claimed.
    pub addrs: Vec<IpAddr>,
}

/// Which shard owns the channel to each peer relay (by RSA identity). Locked only when a relay
/// channel opens or closes and when an EXTEND2 finds no channel on its own shard.
#[derive(Debug, Default)]
pub struct ChannelRegistry {
    map: Mutex<HashMap<RsaIdentity, Vec<RegEntry>>>,
}

impl ChannelRegistry {
    /// Records an open channel to `rsa`.
    pub fn insert(&self, rsa: RsaIdentity, entry: RegEntry) {
        if let Ok(mut m) = self.map.lock() {
            m.entry(rsa).or_default().push(entry);
        }
    }

    /// Forgets shard `shard`'s channel `chan` to `rsa`.
    pub fn remove(&self, rsa: RsaIdentity, shard: ShardIndex, chan: ChanId) {
        if let Ok(mut m) = self.map.lock() {
            if let Some(v) = m.get_mut(&rsa) {
                v.retain(|e| !(e.shard == shard && e.chan == chan));
                if v.is_empty() {
                    m.remove(&rsa);
                }
            }
        }
    }

    /// A channel of another shard than `not_on` that can serve an EXTEND2 to `rsa` / `ed`
    /// naming `specs`: same identities, canonical for one of the named addresses.
    pub fn find(
        &self,
        rsa: RsaIdentity,
        ed: Option<Ed25519Identity>,
        specs: &[LinkSpec],
        not_on: ShardIndex,
    ) -> Option<RegEntry> {
        let m = self.map.lock().ok()?;
        m.get(&rsa)?
            .iter()
            .find(|e| {
                e.shard != not_on
                    && (ed.is_none() || e.ed_id == ed)
                    && canonical_for(specs, &e.addrs)
            })
            .cloned()
    }

    /// Channels registered (all shards).
    pub fn len(&self) -> usize {
        self.map
            .lock()
            .map(|m| m.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// Whether no channel is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// tor-spec §5.3.1: a channel is canonical for an EXTEND2 if an address in its link
/// specifiers is the peer's address as we see it or one its NETINFO said is its own (`known`).
/// An EXTEND2 naming no address has nothing to compare and takes any channel with the
/// identities.
pub fn canonical_for(specs: &[LinkSpec], known: &[IpAddr]) -> bool {
    let mut named = false;
    for s in specs {
        let a = match s {
            LinkSpec::Ipv4(a, _) => IpAddr::V4(*a),
            LinkSpec::Ipv6(a, _) => IpAddr::V6(*a),
            _ => continue,
        };
        named = true;
        if known.contains(&a) {
            return true;
        }
    }
    !named
}

/// One shard's end of the mesh: a sender to every shard (itself included, unused), its own
/// inbox, every shard's waker, and the shared registry.
pub struct XLink {
    /// This shard's index.
    pub me: ShardIndex,
    /// Senders, by shard index.
    pub tx: Vec<Sender<Vec<XMsg>>>,
    /// This shard's inbox.
    pub rx: Receiver<Vec<XMsg>>,
    /// Wakers, by shard index.
    pub wakers: Vec<Arc<dyn Wake>>,
    /// The relay's channel registry.
    pub registry: Arc<ChannelRegistry>,
}

impl std::fmt::Debug for XLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XLink")
            .field("me", &self.me)
            .field("shards", &self.tx.len())
            .finish_non_exhaustive()
    }
}

/// The ends for `wakers.len()` shards, wired to each other and to one registry.
pub fn mesh(wakers: Vec<Arc<dyn Wake>>) -> Vec<XLink> {
    let registry = Arc::new(ChannelRegistry::default());
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..wakers.len())
        .map(|_| crossbeam_channel::bounded(INBOX_BATCHES_MAX))
        .unzip();
    rxs.into_iter()
        .enumerate()
        .map(|(i, rx)| XLink {
            me: ShardIndex::try_from(i).unwrap_or(ShardIndex::MAX),
            tx: txs.clone(),
            rx,
            wakers: wakers.clone(),
            registry: registry.clone(),
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn canonical_address_rules() {
        let known = [IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))];
        let at = |a: [u8; 4]| LinkSpec::Ipv4(Ipv4Addr::from(a), 9001);
        assert!(canonical_for(&[at([10, 0, 0, 1])], &known));
        assert!(!canonical_for(&[at([10, 0, 0, 2])], &known));
        assert!(canonical_for(
            &[at([10, 0, 0, 2]), at([10, 0, 0, 1])],
            &known
        ));
        assert!(canonical_for(&[], &known));
        assert!(!canonical_for(&[at([10, 0, 0, 1])], &[]));
    }

    #[test]
    fn registry_finds_other_shards_canonical_channels() {
        let r = ChannelRegistry::default();
        let rsa = RsaIdentity::from_bytes([1; 20]);
        let entry = |shard, chan, addr: [u8; 4]| RegEntry {
            shard,
            chan: ChanId(chan),
            link_version: 5,
            initiator: true,
            ed_id: None,
            addrs: vec![IpAddr::V4(Ipv4Addr::from(addr))],
        };
        r.insert(rsa, entry(0, 1, [10, 0, 0, 1]));
        r.insert(rsa, entry(1, 7, [10, 0, 0, 1]));
        let spec = [LinkSpec::Ipv4(Ipv4Addr::new(10, 0, 0, 1), 1)];
        assert_eq!(r.find(rsa, None, &spec, 0).map(|e| e.chan), Some(ChanId(7)));
        assert_eq!(r.find(rsa, None, &spec, 1).map(|e| e.chan), Some(ChanId(1)));
        let other = [LinkSpec::Ipv4(Ipv4Addr::new(10, 0, 0, 9), 1)];
        assert_eq!(r.find(rsa, None, &other, 0), None);
        let ed = Ed25519Identity::from_bytes([3; 32]);
        assert_eq!(r.find(rsa, Some(ed), &spec, 0), None);
        r.remove(rsa, 1, ChanId(7));
        assert_eq!(r.find(rsa, None, &spec, 0), None);
        assert_eq!(r.len(), 1);
    }
}
