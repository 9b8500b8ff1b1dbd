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

use proto::cell::BODY_LEN;
use proto::kdf::CgoKeys;
use proto::ntor_v3::SubprotocolCap;

/// A CGO tag (`T`), what an authenticated SENDME acknowledges.
pub type CgoTag = [u8; 16];

/// The per-circuit subprotocol capabilities a relay enables when a client asks (ntor v3
/// subprotocol request). Empty while the CGO cipher is not available: a relay then refuses a
/// request for `Relay=6` rather than accepting it and speaking tor1.
pub const RELAY_CAPS: &[SubprotocolCap] = &[];

/// Whether this build can run CGO hops.
pub fn available() -> bool {
    RELAY_CAPS.contains(&SubprotocolCap::RELAY_CGO)
}

/// One hop's CGO state at a relay: forward (cells from the client) and backward.
pub struct CgoRelayHop {
    never: std::convert::Infallible,
}

impl std::fmt::Debug for CgoRelayHop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CgoRelayHop").finish_non_exhaustive()
    }
}

impl CgoRelayHop {
    /// The relay's state from the handshake's key material; `None` if CGO is unavailable.
    pub fn new(keys: &CgoKeys) -> Option<Box<Self>> {
        let _ = keys;
        None
    }

    /// A cell from the client side arrived with channel command `cmd`: remove this hop's
    /// layer. `Some(tag)` if the cell is for this hop (its message is then readable in the v1
    /// layout), `None` if it must be passed on.
    pub fn forward(&mut self, cmd: u8, body: &mut [u8; BODY_LEN]) -> Option<CgoTag> {
        let _ = (cmd, body);
        match self.never {}
    }

    /// A cell from farther away heading to the client: add this hop's layer.
    pub fn backward(&mut self, body: &mut [u8; BODY_LEN]) {
        let _ = body;
        match self.never {}
    }

    /// A v1 cell this relay sends to the client: fill the tag area and encrypt. Returns the
    /// tag.
    pub fn originate(&mut self, body: &mut [u8; BODY_LEN]) -> CgoTag {
        let _ = body;
        match self.never {}
    }
}

/// One hop's CGO state at the client.
pub struct CgoClientHop {
    never: std::convert::Infallible,
}

impl std::fmt::Debug for CgoClientHop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CgoClientHop").finish_non_exhaustive()
    }
}

impl CgoClientHop {
    /// The client's state from the handshake's key material; `None` if CGO is unavailable.
    pub fn new(keys: &CgoKeys) -> Option<Box<Self>> {
        let _ = keys;
        None
    }

    /// Seals a v1 cell for this hop, to be sent with channel command `cmd`. Returns the tag.
    pub fn originate(&mut self, cmd: u8, body: &mut [u8; BODY_LEN]) -> CgoTag {
        let _ = (cmd, body);
        match self.never {}
    }

    /// Adds this hop's layer to a cell for a later hop.
    pub fn forward(&mut self, cmd: u8, body: &mut [u8; BODY_LEN]) {
        let _ = (cmd, body);
        match self.never {}
    }

    /// Removes this hop's layer from a cell from the circuit: `Some(tag)` if this hop sent it.
    pub fn backward(&mut self, body: &mut [u8; BODY_LEN]) -> Option<CgoTag> {
        let _ = body;
        match self.never {}
    }
}
