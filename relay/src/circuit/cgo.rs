//! Counter Galois Onion (CGO) relay crypto as the circuits use it: one hop's forward and
//! backward state, on the relay side ([`CgoRelayHop`]) and on the client side
//! ([`CgoClientHop`]).
//!
//! Spec: proposal 359 ("Counter Galois Onion"),
//! <https://spec.torproject.org/proposals/359-cgo-redux.html>, sections "Relay operations" and
//! "Client operations". The cipher itself is `crypto_simd::cgo`'s; this module only picks the
//! operation per role and direction and feeds it the cell command (RELAY or RELAY_EARLY, part
//! of the tweak) and the key material of [`proto::kdf::CgoKeys`].
//!
//! Every operation returns the cell's 16-byte tag where the protocol uses it (authenticated
//! SENDME v1 with CGO carries the tag of the cell it acknowledges).

use crypto_simd::cgo;
use proto::cell::BODY_LEN;
use proto::kdf::{CgoKeys, CGO_DIRECTION_KEY_LEN, CGO_KEY_MATERIAL_LEN};
use proto::ntor_v3::SubprotocolCap;
use zeroize::Zeroizing;

const _: () = assert!(CGO_KEY_MATERIAL_LEN == cgo::KDF_LEN);
const _: () = assert!(CGO_DIRECTION_KEY_LEN == cgo::DIR_KDF_LEN);
const _: () = assert!(proto::relay_cell_v1::TAG_LEN == cgo::TAG_LEN);

/// A CGO tag (`T`), what an authenticated SENDME acknowledges.
pub type CgoTag = [u8; 16];

/// The per-circuit subprotocol capabilities a relay enables when a client asks (ntor v3
/// subprotocol request): `Relay=6`. A request for anything else refuses the handshake.
pub const RELAY_CAPS: &[SubprotocolCap] = &[SubprotocolCap::RELAY_CGO];

/// Whether this build can run CGO hops.
pub fn available() -> bool {
    RELAY_CAPS.contains(&SubprotocolCap::RELAY_CGO)
}

/// The hop's key material as the cipher takes it (forward then backward, 80 bytes each).
fn kdf_bytes(keys: &CgoKeys) -> Zeroizing<[u8; cgo::KDF_LEN]> {
    let mut k = Zeroizing::new([0u8; cgo::KDF_LEN]);
    let (f, b) = k.split_at_mut(CGO_DIRECTION_KEY_LEN);
    f.copy_from_slice(&keys.forward);
    b.copy_from_slice(&keys.backward);
    k
}

/// A relay's CGO state for one circuit from the handshake's key material, as the CGO batch
/// (`crypto_simd::Engine::process_batch_cgo`) takes it; `None` if the key material is unusable.
pub fn relay_hop(keys: &CgoKeys) -> Option<cgo::CgoHop> {
    let state = cgo::RelayState::from_kdf(&kdf_bytes(keys)[..]).ok()?;
    Some(cgo::CgoHop::Relay(state))
}

/// A relay state from all-zero key material: what a freed batch entry holds instead of the
/// old circuit's keys (`None` cannot happen: the length is right).
pub fn wiped_hop() -> Option<cgo::CgoHop> {
    cgo::RelayState::from_kdf(&[0u8; cgo::KDF_LEN])
        .ok()
        .map(cgo::CgoHop::Relay)
}

/// One hop's CGO state at the client.
pub struct CgoClientHop {
    state: cgo::ClientHopState,
}

impl std::fmt::Debug for CgoClientHop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CgoClientHop").finish_non_exhaustive()
    }
}

impl CgoClientHop {
    /// The client's state from the handshake's key material; `None` if CGO is unavailable.
    pub fn new(keys: &CgoKeys) -> Option<Box<Self>> {
        let state = cgo::ClientHopState::from_kdf(&kdf_bytes(keys)[..]).ok()?;
        Some(Box::new(CgoClientHop { state }))
    }

    /// Seals a v1 cell for this hop, to be sent with channel command `cmd`. Returns the tag.
    pub fn originate(&mut self, cmd: u8, body: &mut [u8; BODY_LEN]) -> CgoTag {
        self.state.originate(cmd, body).0
    }

    /// Adds this hop's layer to a cell for a later hop.
    pub fn forward(&mut self, cmd: u8, body: &mut [u8; BODY_LEN]) {
        self.state.encrypt_forward(cmd, body);
    }

    /// Removes this hop's layer from a cell from the circuit: `Some(tag)` if this hop sent it.
    pub fn backward(&mut self, body: &mut [u8; BODY_LEN]) -> Option<CgoTag> {
        self.state
            .decrypt_backward(cgo::CMD_RELAY, body)
            .map(|t| t.0)
    }
}
