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
//! state is unusable, and the circuit must be closed (as for any unrecognized cell with nowhere
//! to go, tor-spec §5.5). Each recognized or originated cell also rekeys its direction
//! (`UPDATE_UIV`), which is what makes CGO forward-secure per cell.
//!
//! # Backends and batches
//! [`reference`](mod@reference) is the plain version on the `aes` and `polyval` crates (the
//! `portable` backend). The per-hop methods here use [`default_engine`] (the best backend this
//! CPU supports, or `CHIVE_CRYPTO_BACKEND`); [`crate::Engine::process_batch_cgo`] runs a batch
//! of cells of many circuits ([`CgoHop`], [`CgoJob`], [`CgoOutcome`]) on a chosen backend, and
//! [`crate::Engine::process_one_cgo`] one job. The x86 kernels are in `x86.rs` (`vaes256`:
//! VAES + VPCLMULQDQ; `aesni8`: AES-NI + PCLMULQDQ; `vaes512` runs the `vaes256` kernel).

pub mod reference;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86;

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

/// The per-backend key schedule of one direction, rebuilt from [`DirKeys::raw`] when a
/// different backend than the one that built it touches the direction.
#[derive(Clone)]
pub(crate) enum Cache {
    /// Nothing built yet (or the keys changed under another backend).
    Stale,
    /// The reference's ciphers (boxed: the `aes` crate keeps both AES round-key sets).
    Ref(Box<reference::UivKeys>),
    /// The x86 kernels' round keys and POLYVAL powers (boxed: about 1.4 KiB).
    #[cfg(target_arch = "x86_64")]
    X86(Box<x86::Sched>),
}

/// `(J, S)` of one direction, as bytes and as the current backend's schedule.
#[derive(Clone)]
pub(crate) struct DirKeys {
    /// `J | S` as bytes (zeroized on drop); every schedule is built from these.
    pub(crate) raw: Zeroizing<[u8; UIV_KEY_LEN]>,
    /// Whether this is a client direction (clients run ET backwards, so need AES decryption).
    pub(crate) client: bool,
    /// The schedule of the backend that last used these keys.
    pub(crate) cache: Cache,
}

impl DirKeys {
    /// The reference's ciphers, built if another backend ran last.
    pub(crate) fn reference(&mut self) -> &reference::UivKeys {
        if !matches!(self.cache, Cache::Ref(_)) {
            self.cache = Cache::Ref(Box::new(reference::UivKeys::new(&self.raw)));
        }
        match &self.cache {
            Cache::Ref(k) => k,
            // Just set above.
            _ => unreachable!(),
        }
    }
}

/// The three primitives a backend provides: `ENC_UIV`, `DEC_UIV` and `UPDATE_UIV`
/// (proposal 359); the roles below are built on them once for all backends.
pub(crate) trait Prims: Copy {
    /// `ENC_UIV(J|S, T' | cmd, cell)` in place.
    fn encrypt(self, k: &mut DirKeys, tprime: &[u8; BLK], cmd: u8, cell: &mut CellBody);
    /// `DEC_UIV(J|S, T' | cmd, cell)` in place.
    fn decrypt(self, k: &mut DirKeys, tprime: &[u8; BLK], cmd: u8, cell: &mut CellBody);
    /// `UPDATE_UIV`: new keys from `PRF(S, nonce, 1)`, and `nonce` becomes `N'`.
    fn update(self, k: &mut DirKeys, nonce: &mut [u8; BLK]);
    /// Two independent `ENC_UIV`s (different directions, different cells); a kernel may
    /// interleave them to hide each one's serial latency.
    #[inline(always)]
    fn encrypt2(self, a: EncArgs<'_>, b: EncArgs<'_>) {
        self.encrypt(a.keys, a.tprime, a.cmd, a.cell);
        self.encrypt(b.keys, b.tprime, b.cmd, b.cell);
    }
    /// Two independent `UPDATE_UIV`s; a kernel may interleave them.
    #[inline(always)]
    fn update2(self, ka: &mut DirKeys, na: &mut [u8; BLK], kb: &mut DirKeys, nb: &mut [u8; BLK]) {
        self.update(ka, na);
        self.update(kb, nb);
    }
}

/// The arguments of one `ENC_UIV` in [`Prims::encrypt2`].
pub(crate) struct EncArgs<'a> {
    pub(crate) keys: &'a mut DirKeys,
    pub(crate) tprime: &'a [u8; BLK],
    pub(crate) cmd: u8,
    pub(crate) cell: &'a mut CellBody,
}

/// The reference as a [`Prims`] backend.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RefPrims;

impl Prims for RefPrims {
    fn encrypt(self, k: &mut DirKeys, tprime: &[u8; BLK], cmd: u8, cell: &mut CellBody) {
        reference::uiv_encrypt(k.reference(), tprime, cmd, cell)
    }
    fn decrypt(self, k: &mut DirKeys, tprime: &[u8; BLK], cmd: u8, cell: &mut CellBody) {
        reference::uiv_decrypt(k.reference(), tprime, cmd, cell)
    }
    fn update(self, k: &mut DirKeys, nonce: &mut [u8; BLK]) {
        let new = reference::uiv_update(k.reference(), nonce);
        k.raw.copy_from_slice(&*new);
        k.cache = Cache::Ref(Box::new(reference::UivKeys::new(&new)));
    }
}

/// What a [`CgoJob`] does: which role, and so which direction of its hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CgoOp {
    /// Relay, forward direction: [`RelayState::forward`].
    RelayForward,
    /// Relay, backward direction, passing on: [`RelayState::backward`].
    RelayBackward,
    /// Relay, backward direction, originating: [`RelayState::originate`].
    RelayOriginate,
    /// Client, forward direction, a hop before the target: [`ClientHopState::encrypt_forward`].
    ClientEncryptForward,
    /// Client, forward direction, the target hop: [`ClientHopState::originate`].
    ClientOriginate,
    /// Client, backward direction: [`ClientHopState::decrypt_backward`].
    ClientDecryptBackward,
}

/// One direction of one hop: `(J, S)`, `N` and `T'` (proposal 359's `(K, N, T')`).
#[derive(Clone)]
pub(crate) struct Dir {
    /// `J | S` and their schedule.
    pub(crate) keys: DirKeys,
    /// `N`.
    pub(crate) nonce: Zeroizing<[u8; BLK]>,
    /// `T'`: the tag of the last cell in this direction.
    pub(crate) tprime: Zeroizing<[u8; BLK]>,
}

/// Whether two 16-byte tags are equal, without a data-dependent branch before the answer:
/// one 128-bit XOR and one compare (`subtle`'s per-byte barriers cost ~15 ns per cell here).
#[inline(always)]
fn tags_equal(a: &[u8; BLK], b: &[u8; BLK]) -> bool {
    (u128::from_ne_bytes(*a) ^ u128::from_ne_bytes(*b)) == 0
}

fn tag_of(cell: &CellBody) -> [u8; BLK] {
    let mut t = [0u8; BLK];
    t.copy_from_slice(&cell[..BLK]);
    t
}

impl Dir {
    fn new(material: &[u8], client: bool) -> Dir {
        let mut raw = Zeroizing::new([0u8; UIV_KEY_LEN]);
        raw.copy_from_slice(&material[..UIV_KEY_LEN]);
        let mut nonce = Zeroizing::new([0u8; BLK]);
        nonce.copy_from_slice(&material[UIV_KEY_LEN..DIR_KDF_LEN]);
        Dir {
            keys: DirKeys {
                raw,
                client,
                cache: Cache::Stale,
            },
            nonce,
            tprime: Zeroizing::new([0u8; BLK]),
        }
    }

    /// Runs one role on `cell` with backend `p`. The result is `Some(tag)` when the op
    /// recognized or originated the cell, `None` otherwise (pass-through ops, or not
    /// recognized).
    #[inline(always)]
    pub(crate) fn run<P: Prims>(
        &mut self,
        p: P,
        op: CgoOp,
        cmd: u8,
        cell: &mut CellBody,
    ) -> Option<SendmeTag> {
        match op {
            CgoOp::RelayForward | CgoOp::RelayBackward => {
                // ENC_UIV; forward, recognized iff the new T equals N (then update); the
                // tag is the T that arrived.
                let t_in = self.pre_encrypt(op, cell);
                p.encrypt(&mut self.keys, &self.tprime, cmd, cell);
                let update = self.post_encrypt(op, cell);
                if update {
                    p.update(&mut self.keys, &mut self.nonce);
                }
                update.then_some(SendmeTag(t_in))
            }
            CgoOp::RelayOriginate => {
                // T = N, ENC_UIV, then N = T' and update; the tag is the T sent.
                cell[..BLK].copy_from_slice(&*self.nonce);
                p.encrypt(&mut self.keys, &self.tprime, cmd, cell);
                self.tprime.copy_from_slice(&cell[..BLK]);
                self.nonce.copy_from_slice(&*self.tprime);
                p.update(&mut self.keys, &mut self.nonce);
                Some(SendmeTag(*self.tprime))
            }
            CgoOp::ClientEncryptForward => {
                // DEC_UIV; T' becomes the T that arrived.
                let t_in = tag_of(cell);
                p.decrypt(&mut self.keys, &self.tprime, cmd, cell);
                *self.tprime = t_in;
                None
            }
            CgoOp::ClientOriginate => {
                // T = N, DEC_UIV (T' = N), update; the tag is the T this hop will see.
                cell[..BLK].copy_from_slice(&*self.nonce);
                p.decrypt(&mut self.keys, &self.tprime, cmd, cell);
                self.tprime.copy_from_slice(&*self.nonce);
                p.update(&mut self.keys, &mut self.nonce);
                Some(SendmeTag(tag_of(cell)))
            }
            CgoOp::ClientDecryptBackward => {
                // DEC_UIV; recognized iff the plaintext T equals N, then N = the T that arrived
                // and update.
                let t_in = tag_of(cell);
                p.decrypt(&mut self.keys, &self.tprime, cmd, cell);
                *self.tprime = t_in;
                if tags_equal(&tag_of(cell), &self.nonce) {
                    *self.nonce = t_in;
                    p.update(&mut self.keys, &mut self.nonce);
                    Some(SendmeTag(t_in))
                } else {
                    None
                }
            }
        }
    }

    /// The part of the relay ops before `ENC_UIV`: an originated cell's `T` is `N`. Returns
    /// the `T` the cell had on entry.
    #[inline(always)]
    fn pre_encrypt(&self, op: CgoOp, cell: &mut CellBody) -> [u8; BLK] {
        if op == CgoOp::RelayOriginate {
            cell[..BLK].copy_from_slice(&*self.nonce);
        }
        tag_of(cell)
    }

    /// The part of the relay ops after `ENC_UIV`, up to the key update: `T'` becomes the new
    /// `T`; forward, the cell is recognized iff that equals `N`; an originated cell's `T`
    /// becomes `N`. Returns whether the keys must now be updated.
    #[inline(always)]
    fn post_encrypt(&mut self, op: CgoOp, cell: &CellBody) -> bool {
        self.tprime.copy_from_slice(&cell[..BLK]);
        match op {
            CgoOp::RelayForward => tags_equal(&self.tprime, &self.nonce),
            CgoOp::RelayOriginate => {
                self.nonce.copy_from_slice(&*self.tprime);
                true
            }
            _ => false,
        }
    }

    /// The outcome of a relay op given its entry tag and whether it updated the keys.
    #[inline(always)]
    fn relay_outcome(&self, op: CgoOp, t_in: [u8; BLK], updated: bool) -> CgoOutcome {
        match (op, updated) {
            (CgoOp::RelayForward, true) => CgoOutcome::Recognized(SendmeTag(t_in)),
            (CgoOp::RelayForward, false) => CgoOutcome::NotRecognized,
            (CgoOp::RelayOriginate, _) => CgoOutcome::Sealed(SendmeTag(*self.tprime)),
            _ => CgoOutcome::Done,
        }
    }

    /// Runs one role on the best backend (see [`default_engine`]).
    pub(crate) fn run_default(
        &mut self,
        op: CgoOp,
        cmd: u8,
        cell: &mut CellBody,
    ) -> Option<SendmeTag> {
        run_dir(default_engine(), self, op, cmd, cell)
    }
}

/// The engine the per-hop methods use: `CHIVE_CRYPTO_BACKEND` if set and supported, else the
/// best backend; decided once.
pub fn default_engine() -> crate::Engine {
    static E: std::sync::OnceLock<crate::Engine> = std::sync::OnceLock::new();
    *E.get_or_init(|| crate::Engine::from_env().unwrap_or_default())
}

/// Runs `op` on `dir` with `engine`'s backend.
pub(crate) fn run_dir(
    engine: crate::Engine,
    dir: &mut Dir,
    op: CgoOp,
    cmd: u8,
    cell: &mut CellBody,
) -> Option<SendmeTag> {
    match kernel(engine.backend()) {
        #[cfg(target_arch = "x86_64")]
        Kern::X86(k) => x86::run_one(k, dir, op, cmd, cell),
        Kern::Ref => dir.run(RefPrims, op, cmd, cell),
    }
}

/// Runs a checked batch on kernel `k`.
pub(crate) fn run_batch_on(
    k: Kern,
    hops: &mut [CgoHop],
    cells: &mut [CellBody],
    jobs: &[CgoJob],
    out: &mut [CgoOutcome],
) {
    match k {
        #[cfg(target_arch = "x86_64")]
        Kern::X86(t) => x86::run_batch(t, hops, cells, jobs, out),
        Kern::Ref => run_batch_with(RefPrims, hops, cells, jobs, out),
    }
}

/// The power-on self-test of `backend`'s CGO kernel (`selftest::cgo_kat`), part of the
/// backend's own self-test: a backend whose CGO kernel fails is not used at all. The portable
/// backend's CGO kernel is the reference itself: nothing to compare.
pub(crate) fn self_test(backend: crate::Backend) -> bool {
    match kernel(backend) {
        Kern::Ref => true,
        #[allow(unreachable_patterns)]
        k => crate::selftest::cgo_kat(&|h, c, j, o| run_batch_on(k, h, c, j, o)),
    }
}

/// A backend's CGO kernel, once the CPU is known to support it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kern {
    /// The reference.
    Ref,
    /// An x86 kernel.
    #[cfg(target_arch = "x86_64")]
    X86(x86::Token),
}

/// The CGO kernel for `backend`. `vaes512` runs the VAES-256 kernel (every CPU with 512-bit VAES
/// has the 256-bit form; a 512-bit CGO kernel is not written yet). A backend whose extra CGO
/// requirement (PCLMULQDQ / VPCLMULQDQ) is missing falls back to the next one down.
pub(crate) fn kernel(backend: crate::Backend) -> Kern {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::Backend as B;
        let t = match backend {
            B::Vaes512 | B::Vaes256 => x86::Token::vaes256().or_else(x86::Token::aesni),
            B::AesNi8 => x86::Token::aesni(),
            B::Portable => None,
        };
        if let Some(t) = t {
            return Kern::X86(t);
        }
    }
    let _ = backend;
    Kern::Ref
}

/// The CGO state of one hop, at a relay or at the client; what a [`CgoJob`] indexes.
#[derive(Clone, Debug)]
pub enum CgoHop {
    /// A relay's state for one circuit.
    Relay(RelayState),
    /// A client's state for one hop of a circuit.
    Client(ClientHopState),
}

/// One unit of work in a CGO batch: apply `op` to `cells[cell]` with `hops[hop]`, with the
/// channel cell command `cmd` (`RELAY` or `RELAY_EARLY`) as associated data.
///
/// Jobs run in slice order, so consecutive cells of one circuit direction may share a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgoJob {
    /// Index into the batch's hop slice.
    pub hop: u32,
    /// Index into the batch's cell slice.
    pub cell: u32,
    /// The channel cell command.
    pub cmd: u8,
    /// What to do.
    pub op: CgoOp,
}

/// Result of one [`CgoJob`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CgoOutcome {
    /// Transformed; nothing to check (pass-through ops).
    #[default]
    Done,
    /// Not for this hop: a relay passes it on (or destroys the circuit at the last hop); a
    /// client peels the next hop (or destroys the circuit after the last).
    NotRecognized,
    /// For this hop (relay forward) or from this hop (client backward); the SENDME tag.
    Recognized(SendmeTag),
    /// Originated (relay backward or client forward); the SENDME tag that will acknowledge it.
    Sealed(SendmeTag),
    /// The op is for the other role than the hop's (a relay op on a client hop or the
    /// reverse); nothing was done.
    WrongRole,
}

impl CgoHop {
    /// Whether both hops hold the same keys, nonces and `T'` (the schedules aside).
    pub(crate) fn same_state(&self, other: &CgoHop) -> bool {
        let same = |a: &Dir, b: &Dir| {
            a.keys.raw == b.keys.raw
                && a.keys.client == b.keys.client
                && a.nonce == b.nonce
                && a.tprime == b.tprime
        };
        match (self, other) {
            (CgoHop::Relay(a), CgoHop::Relay(b)) => same(&a.fwd, &b.fwd) && same(&a.bwd, &b.bwd),
            (CgoHop::Client(a), CgoHop::Client(b)) => same(&a.fwd, &b.fwd) && same(&a.bwd, &b.bwd),
            _ => false,
        }
    }
}

/// Where [`Faulty`] corrupts a kernel's result (tests of the self-test).
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// One bit of the cell after a single `ENC_UIV`.
    Encrypt,
    /// One bit of the second cell after a paired `ENC_UIV`.
    Encrypt2,
    /// One bit of the cell after `DEC_UIV`.
    Decrypt,
    /// One bit of the new nonce after a single `UPDATE_UIV`.
    Update,
    /// One bit of the second new nonce after a paired `UPDATE_UIV`.
    Update2,
}

#[cfg(test)]
impl Fault {
    pub(crate) const ALL: [Fault; 5] = [
        Fault::Encrypt,
        Fault::Encrypt2,
        Fault::Decrypt,
        Fault::Update,
        Fault::Update2,
    ];
}

/// A kernel that is right except at one primitive ([`Fault`]).
#[cfg(test)]
#[derive(Clone, Copy)]
pub(crate) struct Faulty<P>(pub(crate) P, pub(crate) Fault);

#[cfg(test)]
impl<P: Prims> Prims for Faulty<P> {
    #[inline(always)]
    fn encrypt(self, k: &mut DirKeys, tprime: &[u8; BLK], cmd: u8, cell: &mut CellBody) {
        self.0.encrypt(k, tprime, cmd, cell);
        if self.1 == Fault::Encrypt {
            cell[508] ^= 1;
        }
    }
    #[inline(always)]
    fn decrypt(self, k: &mut DirKeys, tprime: &[u8; BLK], cmd: u8, cell: &mut CellBody) {
        self.0.decrypt(k, tprime, cmd, cell);
        if self.1 == Fault::Decrypt {
            cell[20] ^= 0x80;
        }
    }
    #[inline(always)]
    fn update(self, k: &mut DirKeys, nonce: &mut [u8; BLK]) {
        self.0.update(k, nonce);
        if self.1 == Fault::Update {
            nonce[15] ^= 1;
        }
    }
    #[inline(always)]
    fn encrypt2(self, a: EncArgs<'_>, b: EncArgs<'_>) {
        let EncArgs {
            keys,
            tprime,
            cmd,
            cell,
        } = b;
        self.0.encrypt2(
            a,
            EncArgs {
                keys,
                tprime,
                cmd,
                cell: &mut *cell,
            },
        );
        if self.1 == Fault::Encrypt2 {
            cell[100] ^= 1;
        }
    }
    #[inline(always)]
    fn update2(self, ka: &mut DirKeys, na: &mut [u8; BLK], kb: &mut DirKeys, nb: &mut [u8; BLK]) {
        self.0.update2(ka, na, kb, nb);
        if self.1 == Fault::Update2 {
            nb[0] ^= 1;
        }
    }
}

/// Runs a checked batch on kernel `k` with `fault`.
#[cfg(test)]
pub(crate) fn run_batch_faulty(
    k: Kern,
    fault: Fault,
    hops: &mut [CgoHop],
    cells: &mut [CellBody],
    jobs: &[CgoJob],
    out: &mut [CgoOutcome],
) {
    match k {
        #[cfg(target_arch = "x86_64")]
        Kern::X86(t) => x86::run_batch_faulty(t, fault, hops, cells, jobs, out),
        Kern::Ref => run_batch_with(Faulty(RefPrims, fault), hops, cells, jobs, out),
    }
}

/// Runs one checked job.
#[inline(always)]
fn run_job<P: Prims>(p: P, hop: &mut CgoHop, job: CgoJob, cell: &mut CellBody) -> CgoOutcome {
    use CgoOp as O;
    let dir = match (hop, job.op) {
        (CgoHop::Relay(r), O::RelayForward) => &mut r.fwd,
        (CgoHop::Relay(r), O::RelayBackward | O::RelayOriginate) => &mut r.bwd,
        (CgoHop::Client(c), O::ClientEncryptForward | O::ClientOriginate) => &mut c.fwd,
        (CgoHop::Client(c), O::ClientDecryptBackward) => &mut c.bwd,
        _ => return CgoOutcome::WrongRole,
    };
    let r = dir.run(p, job.op, job.cmd, cell);
    match (job.op, r) {
        (O::RelayForward | O::ClientDecryptBackward, Some(t)) => CgoOutcome::Recognized(t),
        (O::RelayForward | O::ClientDecryptBackward, None) => CgoOutcome::NotRecognized,
        (O::RelayOriginate | O::ClientOriginate, Some(t)) => CgoOutcome::Sealed(t),
        _ => CgoOutcome::Done,
    }
}

/// The batch loop, monomorphized per backend (and inlined into the x86 kernels'
/// `#[target_feature]` entry points). Indices were checked by the caller.
#[inline(always)]
pub(crate) fn run_batch_with<P: Prims>(
    p: P,
    hops: &mut [CgoHop],
    cells: &mut [CellBody],
    jobs: &[CgoJob],
    out: &mut [CgoOutcome],
) {
    let mut i = 0;
    while let Some(&job) = jobs.get(i) {
        // Two relay pass-through jobs on different hops and cells: encrypt them together.
        if let Some(&next) = jobs.get(i + 1) {
            if let Some((a, b)) = run_relay_pair(p, hops, cells, job, next) {
                if let Some(o) = out.get_mut(i..i + 2) {
                    o[0] = a;
                    o[1] = b;
                }
                i += 2;
                continue;
            }
        }
        if let (Some(hop), Some(cell), Some(o)) = (
            hops.get_mut(job.hop as usize),
            cells.get_mut(job.cell as usize),
            out.get_mut(i),
        ) {
            *o = run_job(p, hop, job, cell);
        }
        i += 1;
    }
}

/// Runs two jobs at once if both are relay ops on distinct relay hops and distinct cells (so
/// they are independent); `None` (nothing done) otherwise.
#[inline(always)]
fn run_relay_pair<P: Prims>(
    p: P,
    hops: &mut [CgoHop],
    cells: &mut [CellBody],
    a: CgoJob,
    b: CgoJob,
) -> Option<(CgoOutcome, CgoOutcome)> {
    let relay_op = |op| {
        matches!(
            op,
            CgoOp::RelayForward | CgoOp::RelayBackward | CgoOp::RelayOriginate
        )
    };
    if !relay_op(a.op) || !relay_op(b.op) {
        return None;
    }
    let [ha, hb] = hops
        .get_disjoint_mut([a.hop as usize, b.hop as usize])
        .ok()?;
    let [ca, cb] = cells
        .get_disjoint_mut([a.cell as usize, b.cell as usize])
        .ok()?;
    let (CgoHop::Relay(ra), CgoHop::Relay(rb)) = (ha, hb) else {
        return None;
    };
    let da = if a.op == CgoOp::RelayForward {
        &mut ra.fwd
    } else {
        &mut ra.bwd
    };
    let db = if b.op == CgoOp::RelayForward {
        &mut rb.fwd
    } else {
        &mut rb.bwd
    };
    let (ta, tb) = (da.pre_encrypt(a.op, ca), db.pre_encrypt(b.op, cb));
    p.encrypt2(
        EncArgs {
            keys: &mut da.keys,
            tprime: &da.tprime,
            cmd: a.cmd,
            cell: ca,
        },
        EncArgs {
            keys: &mut db.keys,
            tprime: &db.tprime,
            cmd: b.cmd,
            cell: cb,
        },
    );
    let (ua, ub) = (da.post_encrypt(a.op, ca), db.post_encrypt(b.op, cb));
    match (ua, ub) {
        (true, true) => p.update2(&mut da.keys, &mut da.nonce, &mut db.keys, &mut db.nonce),
        (true, false) => p.update(&mut da.keys, &mut da.nonce),
        (false, true) => p.update(&mut db.keys, &mut db.nonce),
        (false, false) => {}
    }
    Some((
        da.relay_outcome(a.op, ta, ua),
        db.relay_outcome(b.op, tb, ub),
    ))
}

impl crate::Engine {
    /// Runs a batch of CGO `jobs` (cells of many circuits) in order on this engine's backend,
    /// writing each job's result to the same index of `out`; the CGO counterpart of
    /// [`Engine::process_batch`](crate::Engine::process_batch).
    ///
    /// All indices are checked before anything is touched, so an error leaves every hop and
    /// cell as it was. The backend is dispatched once for the whole batch.
    pub fn process_batch_cgo(
        &self,
        hops: &mut [CgoHop],
        cells: &mut [CellBody],
        jobs: &[CgoJob],
        out: &mut [CgoOutcome],
    ) -> Result<(), crate::BatchError> {
        use crate::BatchError;
        if out.len() < jobs.len() {
            return Err(BatchError::OutTooShort);
        }
        for (i, j) in jobs.iter().enumerate() {
            if j.hop as usize >= hops.len() {
                return Err(BatchError::HopOutOfRange { job: i });
            }
            if j.cell as usize >= cells.len() {
                return Err(BatchError::CellOutOfRange { job: i });
            }
        }
        run_batch_on(kernel(self.backend()), hops, cells, jobs, out);
        Ok(())
    }

    /// Runs one CGO op on one hop (the unbatched path) on this engine's backend.
    pub fn process_one_cgo(
        &self,
        hop: &mut CgoHop,
        cmd: u8,
        op: CgoOp,
        cell: &mut CellBody,
    ) -> CgoOutcome {
        let job = CgoJob {
            hop: 0,
            cell: 0,
            cmd,
            op,
        };
        match kernel(self.backend()) {
            #[cfg(target_arch = "x86_64")]
            Kern::X86(t) => {
                let mut out = [CgoOutcome::Done];
                x86::run_batch(
                    t,
                    core::slice::from_mut(hop),
                    core::slice::from_mut(cell),
                    &[job],
                    &mut out,
                );
                out[0]
            }
            Kern::Ref => run_job(RefPrims, hop, job, cell),
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
            fwd: Dir::new(&kdf[..DIR_KDF_LEN], false),
            bwd: Dir::new(&kdf[DIR_KDF_LEN..], false),
        })
    }

    /// A cell arriving from the client side (see the module doc).
    pub fn forward(&mut self, cmd: u8, cell: &mut CellBody) -> Forward {
        match self.fwd.run_default(CgoOp::RelayForward, cmd, cell) {
            Some(t) => Forward::ForUs(t),
            None => Forward::Pass,
        }
    }

    /// A cell from the next hop, passed on toward the client.
    pub fn backward(&mut self, cmd: u8, cell: &mut CellBody) {
        self.bwd.run_default(CgoOp::RelayBackward, cmd, cell);
    }

    /// A cell this relay sends toward the client; its message is in bytes `16..`, bytes
    /// `0..16` are overwritten. Returns the tag the client's SENDME for it will carry.
    pub fn originate(&mut self, cmd: u8, cell: &mut CellBody) -> SendmeTag {
        self.bwd
            .run_default(CgoOp::RelayOriginate, cmd, cell)
            .unwrap_or(SendmeTag([0; TAG_LEN]))
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
            fwd: Dir::new(&kdf[..DIR_KDF_LEN], true),
            bwd: Dir::new(&kdf[DIR_KDF_LEN..], true),
        })
    }

    /// Seals a cell for this hop (message in bytes `16..`); add the layers of the hops before
    /// it afterwards with [`ClientHopState::encrypt_forward`]. Returns the SENDME tag.
    pub fn originate(&mut self, cmd: u8, cell: &mut CellBody) -> SendmeTag {
        self.fwd
            .run_default(CgoOp::ClientOriginate, cmd, cell)
            .unwrap_or(SendmeTag([0; TAG_LEN]))
    }

    /// Adds this hop's layer to a cell for a hop farther away.
    pub fn encrypt_forward(&mut self, cmd: u8, cell: &mut CellBody) {
        self.fwd.run_default(CgoOp::ClientEncryptForward, cmd, cell);
    }

    /// Removes this hop's layer from a cell from the circuit; `Some(tag)` if this hop sent it.
    pub fn decrypt_backward(&mut self, cmd: u8, cell: &mut CellBody) -> Option<SendmeTag> {
        self.bwd
            .run_default(CgoOp::ClientDecryptBackward, cmd, cell)
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
