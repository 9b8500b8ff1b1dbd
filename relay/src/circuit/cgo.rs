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

/// One hop's CGO state at a relay: forward (cells from the client) and backward.
pub struct CgoRelayHop {
    state: cgo::RelayState,
}

impl std::fmt::Debug for CgoRelayHop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CgoRelayHop").finish_non_exhaustive()
    }
}

impl CgoRelayHop {
    /// The relay's state from the handshake's key material; `None` if CGO is unavailable.
    pub fn new(keys: &CgoKeys) -> Option<Box<Self>> {
        let state = cgo::RelayState::from_kdf(&kdf_bytes(keys)[..]).ok()?;
        Some(Box::new(CgoRelayHop { state }))
    }

    /// A cell from the client side arrived with channel command `cmd`: remove this hop's
    /// layer. `Some(tag)` if the cell is for this hop (its message is then readable in the v1
    /// layout), `None` if it must be passed on.
    pub fn forward(&mut self, cmd: u8, body: &mut [u8; BODY_LEN]) -> Option<CgoTag> {
        match self.state.forward(cmd, body) {
            cgo::Forward::ForUs(t) => Some(t.0),
            cgo::Forward::Pass => None,
        }
    }

    /// A cell from farther away heading to the client: add this hop's layer.
    pub fn backward(&mut self, body: &mut [u8; BODY_LEN]) {
        self.state.backward(cgo::CMD_RELAY, body);
    }

    /// A v1 cell this relay sends to the client: fill the tag area and encrypt. Returns the
    /// tag.
    pub fn originate(&mut self, body: &mut [u8; BODY_LEN]) -> CgoTag {
        self.state.originate(cgo::CMD_RELAY, body).0
    }
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
