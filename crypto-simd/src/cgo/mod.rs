//! Counter Galois Onion (CGO) relay-cell crypto: proposal 359, "CGO redux"
//! (<https://spec.torproject.org/proposals/359-cgo-redux.html>), as C tor 0.4.9 speaks it for
//! subprotocol `Relay=6` (AES-128 throughout, as C tor's `CGO_AES_BITS`).
//!
//! # Key schedule
//! Each hop's handshake KDF yields [`KDF_LEN`] = 160 bytes for CGO, taken in this order:
//!
//! | bytes     | what                                                               |
//! |-----------|--------------------------------------------------------------------|
//! | 0..80     | forward (client → exit) direction: `KB KU K B` (4 × 16), `N` (16)  |
//! | 80..160   | backward (exit → client) direction: same layout                    |
//!
//! `KB`/`KU` are the AES and POLYVAL keys of the tweakable block cipher ET (together `J`),
//! `K`/`B` those of the PRF (together `S`), `N` is the initial nonce; the chaining tag `T'`
//! starts at zero. (Arti derives 20 more bytes after these for a circuit binding; C tor does
//! not use them. Pass only the first 160 here.) The same bytes build both ends: the relay with
//! [`RelayState::from_kdf`], the client with [`ClientHopState::from_kdf`].
//!
//! # The cell
//! Every function here works on the 509-byte body of a `RELAY`/`RELAY_EARLY` cell
//! ([`CellBody`]) and takes the channel cell command byte (`3` [`CMD_RELAY`] or `9`
//! [`CMD_RELAY_EARLY`]) as the associated data: a cell whose command was changed in transit
//! fails like a tampered one. The body is `T | C`: bytes `0..16` are the tag `T`, bytes
//! `16..509` ([`PAYLOAD_OFFSET`]) carry the 493-byte v1 relay message. A cell's tag doubles as
//! its 16-byte authenticated-SENDME tag ([`SendmeTag`]).
//!
//! # Relay side ([`RelayState`])
//! - Cell from the client side: [`RelayState::forward`]. On [`Forward::ForUs`] the body now
//!   holds the plaintext: bytes `0..16` equal the hop's nonce (that is the "recognized" check)
//!   and the message is in bytes `16..`; keep the returned tag to match a SENDME you send for
//!   it. On [`Forward::Pass`] send the (transformed) body on to the next hop unchanged; if there
//!   is no next hop the cell is unrecognized and the circuit must be destroyed.
//! - Cell from the next hop toward the client: [`RelayState::backward`], then send it on.
//! - Cell this relay sends toward the client: write the message to bytes `16..` (bytes `0..16`
//!   are overwritten), call [`RelayState::originate`]; the returned tag is the one the client's
//!   SENDME for this cell will carry.
//!
//! # Client side ([`ClientHopState`], one per hop)
//! - Sending to hop `i`: message in bytes `16..`, then [`client_originate`] (it calls
//!   [`ClientHopState::originate`] on hop `i` and [`ClientHopState::encrypt_forward`] on hops
//!   `i-1 .. 0`). The returned tag is what hop `i`'s SENDME will echo.
//! - Receiving: [`client_receive`] peels hops `0, 1, ...` with
//!   [`ClientHopState::decrypt_backward`] until one recognizes the cell; it returns that hop's
//!   index and the cell's tag (what a SENDME for it carries); the message is in bytes `16..`.
//!   `None` means no hop recognized it: the cell was tampered with and the circuit must be
//!   destroyed.
//!
//! # Failure
//! CGO has no separate MAC: tampering (any flipped bit, or a changed command byte) makes the
//! relay cell decrypt to garbage whose first 16 bytes do not match the nonce, so the exit sees
//! [`Forward::Pass`] with no next hop, or the client sees `None`. Because every cell's tag is
//! chained into the next cell's tweak (`T'`), all later cells on that circuit fail too: the
//! state is unusable, and the circuit must be closed (proposal 359, "Handling unrecognized
//! cells"). Each recognized or originated cell also rekeys its direction (`UPDATE_UIV`), which
//! is what makes CGO forward-secure per cell.
//!
//! # Backends and batches
//! [`reference`](mod@reference) is the plain version on the `aes` and `polyval` crates. The
//! per-hop methods here use the best backend this CPU supports; [`crate::Engine::process_batch_cgo`]
//! runs a batch of cells of many circuits on a chosen backend.

pub mod reference;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::CellBody;

/// AES/POLYVAL block length.
pub(crate) const BLK: usize = 16;
/// Length of the tag `T` (and of a CGO SENDME tag).
pub const TAG_LEN: usize = 16;
/// Where the relay message starts in a cell body.
pub const PAYLOAD_OFFSET: usize = TAG_LEN;
/// Length of `X_R`, the part of the body after the tag.
pub(crate) const PAYLOAD_LEN: usize = crate::CELL_BODY_LEN - TAG_LEN;
/// Length of `J | S`.
pub(crate) const UIV_KEY_LEN: usize = 4 * BLK;
/// Length of one direction's key material: `J | S | N`.
pub const DIR_KDF_LEN: usize = UIV_KEY_LEN + BLK;
/// Length of the output of `PRF(S, N, 1)` used by a key update: `J' | S' | N'`.
pub(crate) const UPDATE_LEN: usize = DIR_KDF_LEN;
/// Length of a hop's key material: forward direction then backward direction.
pub const KDF_LEN: usize = 2 * DIR_KDF_LEN;
/// Channel cell command `RELAY`.
pub const CMD_RELAY: u8 = 3;
/// Channel cell command `RELAY_EARLY`.
pub const CMD_RELAY_EARLY: u8 = 9;

const _: () = assert!(PAYLOAD_LEN == 493 && KDF_LEN == 160);

/// A cell's 16-byte tag `T`, which is also what an authenticated SENDME for it carries.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SendmeTag(pub [u8; TAG_LEN]);

impl core::fmt::Debug for SendmeTag {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Not secret (it travels in the clear), but keep logs short.
        write!(f, "SendmeTag({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

/// Key material of the wrong length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("CGO key material is {got} bytes, expected {}", KDF_LEN)]
pub struct KeyLengthError {
    /// Length given.
    pub got: usize,
}

/// What [`RelayState::forward`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// The cell is for this relay: the plaintext message is in bytes `16..`; the tag is the one
    /// a SENDME acknowledging this cell carries.
    ForUs(SendmeTag),
    /// Not for this relay: pass the body on (or, at the last hop, destroy the circuit).
    Pass,
}

/// One direction of one hop: `(J, S)`, `N` and `T'` (proposal 359's `(K, N, T')`).
#[derive(Clone)]
pub(crate) struct Dir {
    /// `J | S` as bytes (zeroized on drop); the backends' schedules are built from these.
    pub(crate) keys: Zeroizing<[u8; UIV_KEY_LEN]>,
    /// The reference's ciphers for `keys`.
    pub(crate) uiv: reference::UivKeys,
    /// `N`.
    pub(crate) nonce: Zeroizing<[u8; BLK]>,
    /// `T'`: the tag of the last cell in this direction.
    pub(crate) tprime: Zeroizing<[u8; BLK]>,
}

impl Dir {
    fn new(material: &[u8]) -> Dir {
        let mut keys = Zeroizing::new([0u8; UIV_KEY_LEN]);
        keys.copy_from_slice(&material[..UIV_KEY_LEN]);
        let mut nonce = Zeroizing::new([0u8; BLK]);
        nonce.copy_from_slice(&material[UIV_KEY_LEN..DIR_KDF_LEN]);
        Dir {
            uiv: reference::UivKeys::new(&keys),
            keys,
            nonce,
            tprime: Zeroizing::new([0u8; BLK]),
        }
    }

    /// `UPDATE_UIV` on this direction's keys and nonce.
    fn update(&mut self) {
        let new = reference::uiv_update(&self.uiv, &mut self.nonce);
        self.set_keys(&new);
    }

    fn set_keys(&mut self, new: &[u8; UIV_KEY_LEN]) {
        self.keys.copy_from_slice(new);
        self.uiv = reference::UivKeys::new(new);
    }

    fn tag(cell: &CellBody) -> [u8; BLK] {
        let mut t = [0u8; BLK];
        t.copy_from_slice(&cell[..BLK]);
        t
    }

    /// Relay, forward: `ENC_UIV`, then recognized iff the new `T` equals `N`.
    pub(crate) fn relay_forward(&mut self, cmd: u8, cell: &mut CellBody) -> Forward {
        let t_in = Dir::tag(cell);
        reference::uiv_encrypt(&self.uiv, &self.tprime, cmd, cell);
        self.tprime.copy_from_slice(&cell[..BLK]);
        if bool::from(self.tprime.ct_eq(&*self.nonce)) {
            self.update();
            Forward::ForUs(SendmeTag(t_in))
        } else {
            Forward::Pass
        }
    }

    /// Relay, backward, passing a cell on toward the client: `ENC_UIV`.
    pub(crate) fn relay_backward(&mut self, cmd: u8, cell: &mut CellBody) {
        reference::uiv_encrypt(&self.uiv, &self.tprime, cmd, cell);
        self.tprime.copy_from_slice(&cell[..BLK]);
    }

    /// Relay, backward, originating: `T = N`, `ENC_UIV`, `N = T'`, update.
    pub(crate) fn relay_originate(&mut self, cmd: u8, cell: &mut CellBody) -> SendmeTag {
        cell[..BLK].copy_from_slice(&*self.nonce);
        self.relay_backward(cmd, cell);
        self.nonce.copy_from_slice(&*self.tprime);
        self.update();
        SendmeTag(*self.tprime)
    }

    /// Client, forward, for a hop before the target: `DEC_UIV`, `T'` = the incoming `T`.
    pub(crate) fn client_forward(&mut self, cmd: u8, cell: &mut CellBody) {
        let t_in = Dir::tag(cell);
        reference::uiv_decrypt(&self.uiv, &self.tprime, cmd, cell);
        *self.tprime = t_in;
    }

    /// Client, forward, for the target hop: `T = N`, then as [`Dir::client_forward`], update.
    pub(crate) fn client_originate(&mut self, cmd: u8, cell: &mut CellBody) -> SendmeTag {
        cell[..BLK].copy_from_slice(&*self.nonce);
        self.client_forward(cmd, cell);
        self.update();
        SendmeTag(Dir::tag(cell))
    }

    /// Client, backward: `DEC_UIV`; recognized iff the plaintext `T` equals `N`, in which case
    /// `N` becomes the incoming `T` and the keys update.
    pub(crate) fn client_backward(&mut self, cmd: u8, cell: &mut CellBody) -> Option<SendmeTag> {
        let t_in = Dir::tag(cell);
        reference::uiv_decrypt(&self.uiv, &self.tprime, cmd, cell);
        *self.tprime = t_in;
        if bool::from(cell[..BLK].ct_eq(&self.nonce[..])) {
            *self.nonce = t_in;
            self.update();
            Some(SendmeTag(t_in))
        } else {
            None
        }
    }
}

fn check_len(kdf: &[u8]) -> Result<(), KeyLengthError> {
    if kdf.len() == KDF_LEN {
        Ok(())
    } else {
        Err(KeyLengthError { got: kdf.len() })
    }
}

/// A relay's CGO state for one circuit: both directions of its hop.
#[derive(Clone)]
pub struct RelayState {
    pub(crate) fwd: Dir,
    pub(crate) bwd: Dir,
}

impl RelayState {
    /// Builds the state from the hop's [`KDF_LEN`] bytes of key material (see the module doc).
    pub fn from_kdf(kdf: &[u8]) -> Result<Self, KeyLengthError> {
        check_len(kdf)?;
        Ok(RelayState {
            fwd: Dir::new(&kdf[..DIR_KDF_LEN]),
            bwd: Dir::new(&kdf[DIR_KDF_LEN..]),
        })
    }

    /// A cell arriving from the client side (see the module doc).
    pub fn forward(&mut self, cmd: u8, cell: &mut CellBody) -> Forward {
        self.fwd.relay_forward(cmd, cell)
    }

    /// A cell from the next hop, passed on toward the client.
    pub fn backward(&mut self, cmd: u8, cell: &mut CellBody) {
        self.bwd.relay_backward(cmd, cell)
    }

    /// A cell this relay sends toward the client; its message is in bytes `16..`, bytes
    /// `0..16` are overwritten. Returns the tag the client's SENDME for it will carry.
    pub fn originate(&mut self, cmd: u8, cell: &mut CellBody) -> SendmeTag {
        self.bwd.relay_originate(cmd, cell)
    }
}

impl core::fmt::Debug for RelayState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RelayState").finish_non_exhaustive()
    }
}

/// A client's CGO state for one hop of a circuit.
#[derive(Clone)]
pub struct ClientHopState {
    pub(crate) fwd: Dir,
    pub(crate) bwd: Dir,
}

impl ClientHopState {
    /// Builds the state from the hop's [`KDF_LEN`] bytes of key material (see the module doc).
    pub fn from_kdf(kdf: &[u8]) -> Result<Self, KeyLengthError> {
        check_len(kdf)?;
        Ok(ClientHopState {
            fwd: Dir::new(&kdf[..DIR_KDF_LEN]),
            bwd: Dir::new(&kdf[DIR_KDF_LEN..]),
        })
    }

    /// Seals a cell for this hop (message in bytes `16..`); add the layers of the hops before
    /// it afterwards with [`ClientHopState::encrypt_forward`]. Returns the SENDME tag.
    pub fn originate(&mut self, cmd: u8, cell: &mut CellBody) -> SendmeTag {
        self.fwd.client_originate(cmd, cell)
    }

    /// Adds this hop's layer to a cell for a hop farther away.
    pub fn encrypt_forward(&mut self, cmd: u8, cell: &mut CellBody) {
        self.fwd.client_forward(cmd, cell)
    }

    /// Removes this hop's layer from a cell from the circuit; `Some(tag)` if this hop sent it.
    pub fn decrypt_backward(&mut self, cmd: u8, cell: &mut CellBody) -> Option<SendmeTag> {
        self.bwd.client_backward(cmd, cell)
    }
}

impl core::fmt::Debug for ClientHopState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientHopState").finish_non_exhaustive()
    }
}

/// Client: seals `cell` for `hops[target]` and adds the layers of hops `target-1 .. 0`.
/// Returns the SENDME tag, or `None` (nothing changed) if `target` is out of range.
pub fn client_originate(
    hops: &mut [ClientHopState],
    target: usize,
    cmd: u8,
    cell: &mut CellBody,
) -> Option<SendmeTag> {
    let (outer, rest) = hops.split_at_mut(target.min(hops.len()));
    let hop = rest.first_mut()?;
    let tag = hop.originate(cmd, cell);
    for h in outer.iter_mut().rev() {
        h.encrypt_forward(cmd, cell);
    }
    Some(tag)
}

/// Client: peels layers from hop 0 outward until one recognizes the cell; returns that hop's
/// index and the SENDME tag, or `None` if none did (destroy the circuit).
pub fn client_receive(
    hops: &mut [ClientHopState],
    cmd: u8,
    cell: &mut CellBody,
) -> Option<(usize, SendmeTag)> {
    for (i, h) in hops.iter_mut().enumerate() {
        if let Some(t) = h.decrypt_backward(cmd, cell) {
            return Some((i, t));
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod testvec {
    //! Reading the vector files in `testdata/`: one record per line, fields separated by
    //! spaces, hex strings (`-` for empty), `1`/`0` for booleans, decimal integers.

    pub(crate) fn records(data: &str, fields: usize) -> impl Iterator<Item = Vec<&str>> + '_ {
        data.lines().filter(|l| !l.trim().is_empty()).map(move |l| {
            let r: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(r.len(), fields, "bad record: {l:.60}");
            r
        })
    }

    pub(crate) fn unhex(s: &str) -> Vec<u8> {
        if s == "-" {
            return Vec::new();
        }
        hex::decode(s).unwrap()
    }

    pub(crate) fn unhex_n<const N: usize>(s: &str) -> [u8; N] {
        unhex(s).try_into().unwrap()
    }
}

#[cfg(test)]
mod tests;
