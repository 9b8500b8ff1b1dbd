//! Batched tor1 relay-cell crypto: the per-hop AES-128-CTR layers and SHA-1 running digests of
//! tor-spec §5.2.1 ("KDF-TOR", <https://spec.torproject.org/tor-spec/setting-circuit-keys.html>),
//! §5.5 ("Routing relay cells", <https://spec.torproject.org/tor-spec/routing-relay-cells.html>)
//! and §6.1 ("Relay cells", <https://spec.torproject.org/tor-spec/relay-cells.html>).
//!
//! Each hop of a circuit has, per direction, an AES-128-CTR keystream (IV zero, 128-bit
//! big-endian counter from zero, one continuous stream across all cells of that direction) and a
//! SHA-1 running digest seeded with `Df` or `Db`. [`Tor1Hop`] holds both directions of one hop,
//! built from the 72 KDF bytes `Df | Db | Kf | Kb`.
//!
//! The data path calls [`Engine::process_batch`] once per batch of received cells, which may
//! belong to many circuits: each [`Job`] names a hop state, a cell and an [`Op`], and the result
//! of each job lands in a caller-owned [`Outcome`] slot. Nothing is allocated per call.
//!
//! Backends ([`Backend`]) are ranked best-first and detected once; [`Engine::from_env`] honours
//! `CHIVE_CRYPTO_BACKEND` so tests and benchmarks can force any backend the CPU supports.
//! [`reference`](mod@reference) is the plain `aes` + `ctr` + `sha1` version every backend is tested against.
//! Each backend, and each multi-lane SHA-1, also runs a known-answer test against it once per
//! process before it is first used (`selftest`): one that fails is never chosen, and forcing it
//! is an error ([`EngineError::SelfTestFailed`]).
//!
//! Within a batch, keystream work is done in job order, and cells that need a digest wait in a
//! set of jobs on distinct hops whose SHA-1 digests are hashed side by side; the set holds as
//! many jobs as the chosen multi-lane SHA-1 has lanes ([`multi_sha1_lanes`]): eight (four or
//! eight interleaved SHA-NI streams, or eight AVX2 lanes without SHA-NI) or sixteen (AVX-512F,
//! `multi512`; compiled, untested on the development machine, used only after its self-test
//! passes). See `README.md` for figures and what limits them.
//!
//! `unsafe` lives only in the x86-64 kernels (`x86`, `multi512`) and the thin wrappers that call
//! them once CPU support is proven.
#![deny(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cgo;
mod digest;
mod keys;
#[cfg(target_arch = "x86_64")]
mod multi;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod multi512;
pub mod reference;
mod selftest;
mod sha1state;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86;

use aes::cipher::{BlockEncrypt, KeyInit};

use keys::{Carry, RoundKeys};
use sha1state::Sha1State;

/// Length of a relay cell body (the part every tor1 layer encrypts).
pub const CELL_BODY_LEN: usize = 509;
/// Length of the KDF output a hop is built from: `Df(20) | Db(20) | Kf(16) | Kb(16)`.
pub const KDF_LEN: usize = 72;
/// Environment variable naming the backend to force (see [`Backend::name`]).
pub const BACKEND_ENV: &str = "CHIVE_CRYPTO_BACKEND";

/// A relay cell body.
pub type CellBody = [u8; CELL_BODY_LEN];
/// A full 20-byte running digest, as authenticated SENDME (v1) echoes it.
pub type RelayDigest = [u8; 20];

const _: () = assert!(KDF_LEN == 20 + 20 + 16 + 16);

/// An implementation of the AES-128-CTR keystream, ranked best-first in [`Backend::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// VAES on 512-bit registers (AVX-512F + VAES): a cell in 8-9 zmm registers.
    Vaes512,
    /// VAES on 256-bit registers (AVX2 + VAES): a cell's fresh blocks in 16 ymm registers,
    /// the partial block at each cell boundary carried to the next cell.
    Vaes256,
    /// AES-NI, eight independent blocks at a time.
    AesNi8,
    /// The `aes` crate on counter blocks; works everywhere.
    Portable,
}

#[cfg(target_arch = "x86_64")]
cpufeatures::new!(cpuid_aesni, "aes", "sse2", "ssse3");
#[cfg(target_arch = "x86_64")]
cpufeatures::new!(cpuid_avx2_aes, "avx2", "aes");
#[cfg(target_arch = "x86_64")]
cpufeatures::new!(cpuid_avx2, "avx2");
#[cfg(target_arch = "x86_64")]
cpufeatures::new!(cpuid_sha_ni, "sha", "sse2", "ssse3", "sse4.1");
#[cfg(target_arch = "x86_64")]
cpufeatures::new!(cpuid_avx512_vaes, "avx512f", "vaes", "avx2", "aes");

impl Backend {
    /// Every backend, best first.
    ///
    /// VAES-256 ranks above 8-way AES-NI: on the CPUs with VAES but no AVX-512 (AMD Zen 3,
    /// the development machine) a `ymm` `vaesenc` has the same throughput as an `xmm` one (two
    /// per cycle, 4-cycle latency, measured), so it encrypts twice the blocks per cycle; the
    /// kernel measures about 2x the AES-NI one per cell (`chive-bench crypto`, see README).
    /// Every CPU with AVX-512 VAES has 256-bit VAES too, and ranks `vaes512` first.
    pub const ALL: [Backend; 4] = [
        Backend::Vaes512,
        Backend::Vaes256,
        Backend::AesNi8,
        Backend::Portable,
    ];

    /// The name used by [`BACKEND_ENV`] and in benchmark output.
    pub const fn name(self) -> &'static str {
        match self {
            Backend::Vaes512 => "vaes512",
            Backend::Vaes256 => "vaes256",
            Backend::AesNi8 => "aesni8",
            Backend::Portable => "portable",
        }
    }

    /// Parses a [`Backend::name`].
    pub fn from_name(name: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Whether this CPU can run the backend.
    pub fn is_supported(self) -> bool {
        match self {
            Backend::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Backend::AesNi8 => cpuid_aesni::get(),
            // cpufeatures 0.2 reports "vaes" only with AVX-512 register state enabled, which
            // would hide VAES-256 on Zen 3; std's detection checks CPUID and AVX state only.
            #[cfg(target_arch = "x86_64")]
            Backend::Vaes256 => {
                cpuid_avx2_aes::get() && std::arch::is_x86_feature_detected!("vaes")
            }
            #[cfg(target_arch = "x86_64")]
            Backend::Vaes512 => cpuid_avx512_vaes::get(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The backends this CPU supports, best first.
    pub fn supported() -> impl Iterator<Item = Backend> {
        Backend::ALL.into_iter().filter(|b| b.is_supported())
    }

    /// The best backend this CPU supports that passed its power-on self-test.
    pub fn best() -> Backend {
        selftest::first_passing(Backend::supported(), Backend::self_test_passed)
    }

    /// Whether the backend passed its power-on self-test (a known-answer test against
    /// [`reference`](mod@reference), run once per process the first time it is asked; see
    /// `README.md`). `false` for a backend this CPU does not support.
    pub fn self_test_passed(self) -> bool {
        selftest::backend_passed(self)
    }
}

/// Lanes of the multi-lane SHA-1 the batch path hashes pending digests with: 16 (AVX-512F,
/// after its power-on self-test), 8 (SHA-NI or AVX2), or 1 (single-stream: no such
/// instructions, or none passed its self-test). For logs and benchmarks.
pub fn multi_sha1_lanes() -> usize {
    #[cfg(target_arch = "x86_64")]
    if let Some(m) = selftest::multi_sha1() {
        return m.lanes();
    }
    1
}

impl core::fmt::Display for Backend {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an [`Engine`] could not be made with the requested backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// `CHIVE_CRYPTO_BACKEND` names no backend.
    #[error("CHIVE_CRYPTO_BACKEND names no known backend")]
    UnknownBackend,
    /// The CPU lacks the instructions the backend needs.
    #[error("crypto backend {0} is not supported by this CPU")]
    Unsupported(Backend),
    /// The backend computed something other than the reference in its power-on self-test.
    #[error("crypto backend {0} failed its power-on self-test on this CPU")]
    SelfTestFailed(Backend),
}

/// API misuse in a batch: nothing was processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// `out` is shorter than `jobs`.
    #[error("outcome slice shorter than the job slice")]
    OutTooShort,
    /// A job names a hop index outside `hops`.
    #[error("job {job} names a hop outside the hop slice")]
    HopOutOfRange {
        /// Index of the job.
        job: usize,
    },
    /// A job names a cell index outside `cells`.
    #[error("job {job} names a cell outside the cell slice")]
    CellOutOfRange {
        /// Index of the job.
        job: usize,
    },
}

/// One direction of one hop: AES key (in both forms the backends use), stream position and the
/// running digest.
#[derive(Clone)]
struct Layer {
    /// Round keys for the hand-written kernels (zeroized on drop).
    rk: RoundKeys,
    /// The portable backend's cipher (the `aes` crate zeroizes it on drop).
    aes: aes::Aes128,
    /// Bytes of keystream used so far in this direction.
    pos: u64,
    /// SHA-1 running digest, seeded with `Df` or `Db` (zeroized on drop).
    digest: Sha1State,
    /// Keystream left over from the last cell, for kernels that keep it (zeroized on drop).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    carry: Carry,
}

impl Layer {
    fn new(seed: &[u8], key: &[u8; 16]) -> Self {
        let mut digest = Sha1State::new();
        digest.update(seed);
        Layer {
            rk: RoundKeys::expand(key),
            aes: aes::Aes128::new(key.into()),
            pos: 0,
            digest,
            carry: Carry::default(),
        }
    }

    #[inline(always)]
    fn crypt<K: Kernel>(&mut self, k: K, cell: &mut CellBody) {
        k.xor_cell(self, cell);
        // Wrapping only after 2^64 bytes on one circuit, which no circuit lives to see.
        self.pos = self.pos.wrapping_add(CELL_BODY_LEN as u64);
    }
}

/// The tor1 state of one hop of a circuit, as seen from the relay or from the origin.
#[derive(Clone)]
pub struct Tor1Hop {
    /// Origin to relay: `Kf`, `Df`.
    fwd: Layer,
    /// Relay to origin: `Kb`, `Db`.
    bwd: Layer,
}

impl Tor1Hop {
    /// Builds the state from the KDF output `Df(20) | Db(20) | Kf(16) | Kb(16)`
    /// (tor-spec §5.2.1, the bytes after `KH`).
    pub fn from_kdf(kdf: &[u8; KDF_LEN]) -> Self {
        let (df, rest) = kdf.split_at(20);
        let (db, rest) = rest.split_at(20);
        let (kf, kb) = rest.split_at(16);
        let mut kf_arr = [0u8; 16];
        let mut kb_arr = [0u8; 16];
        kf_arr.copy_from_slice(kf);
        kb_arr.copy_from_slice(kb);
        let hop = Tor1Hop {
            fwd: Layer::new(df, &kf_arr),
            bwd: Layer::new(db, &kb_arr),
        };
        zeroize::Zeroize::zeroize(&mut kf_arr);
        zeroize::Zeroize::zeroize(&mut kb_arr);
        hop
    }
}

impl core::fmt::Debug for Tor1Hop {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Tor1Hop")
            .field("fwd_pos", &self.fwd.pos)
            .field("bwd_pos", &self.bwd.pos)
            .finish_non_exhaustive()
    }
}

/// What a [`Job`] does to its cell with its hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Relay, cell from the origin side: remove this hop's `Kf` layer, then check `recognized`
    /// and the `Df` digest. [`Outcome::Recognized`] or [`Outcome::NotRecognized`] (forward it).
    RelayRecvForward,
    /// Relay, cell from farther away heading to the origin: add this hop's `Kb` layer.
    /// [`Outcome::Done`].
    RelayPassBackward,
    /// Relay, cell this hop originates: set `recognized` and the `Db` digest, add the `Kb` layer.
    /// [`Outcome::Sealed`].
    RelaySendBackward,
    /// Origin, cell for this hop: set `recognized` and the `Df` digest, add the `Kf` layer
    /// (then add the layers of the hops before it with [`Op::OriginCryptForward`]).
    /// [`Outcome::Sealed`].
    OriginSealForward,
    /// Origin: add this hop's `Kf` layer only. [`Outcome::Done`].
    OriginCryptForward,
    /// Origin, cell from the circuit: remove this hop's `Kb` layer and check the `Db` digest.
    /// [`Outcome::Recognized`] or [`Outcome::NotRecognized`] (peel the next hop).
    OriginRecvBackward,
}

/// One unit of work in a batch: apply `op` to `cells[cell]` with `hops[hop]`.
///
/// Jobs run in slice order, so consecutive cells of one circuit direction may share a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Job {
    /// Index into the batch's hop slice.
    pub hop: u32,
    /// Index into the batch's cell slice.
    pub cell: u32,
    /// What to do.
    pub op: Op,
}

/// Result of one [`Job`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Outcome {
    /// Keystream applied; nothing to check.
    #[default]
    Done,
    /// Decrypted but not addressed to this hop.
    NotRecognized,
    /// Decrypted and addressed to this hop; the cell's full digest (for SENDME v1).
    Recognized(RelayDigest),
    /// Digest set and encrypted; the cell's full digest (to match a later SENDME v1).
    Sealed(RelayDigest),
}

/// A chosen backend; cheap to copy, and the only way into the batch path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Engine {
    backend: Backend,
}

impl Engine {
    /// An engine on `backend`, if the CPU supports it and the backend passed its power-on
    /// self-test (never a silent fallback: a forced backend that fails is an error).
    pub fn new(backend: Backend) -> Result<Self, EngineError> {
        Engine::checked(backend, Backend::self_test_passed)
    }

    fn checked(
        backend: Backend,
        passes: impl FnOnce(Backend) -> bool,
    ) -> Result<Self, EngineError> {
        if !backend.is_supported() {
            Err(EngineError::Unsupported(backend))
        } else if !passes(backend) {
            Err(EngineError::SelfTestFailed(backend))
        } else {
            Ok(Engine { backend })
        }
    }

    /// An engine on the best supported backend that passed its power-on self-test.
    pub fn best() -> Self {
        Engine {
            backend: Backend::best(),
        }
    }

    /// An engine on the backend named by `CHIVE_CRYPTO_BACKEND`, or the best one if it is unset.
    pub fn from_env() -> Result<Self, EngineError> {
        match std::env::var(BACKEND_ENV) {
            Ok(name) if !name.is_empty() => {
                Engine::new(Backend::from_name(&name).ok_or(EngineError::UnknownBackend)?)
            }
            _ => Ok(Engine::best()),
        }
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Runs `jobs` in order, writing each job's result to the same index of `out`.
    ///
    /// All indices are checked before anything is touched, so an error leaves every hop and cell
    /// as it was. The backend is dispatched once for the whole batch.
    pub fn process_batch(
        &self,
        hops: &mut [Tor1Hop],
        cells: &mut [CellBody],
        jobs: &[Job],
        out: &mut [Outcome],
    ) -> Result<(), BatchError> {
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
        // The portable backend stays single-stream throughout, as the plain baseline.
        #[cfg(target_arch = "x86_64")]
        let mb = selftest::multi_sha1();
        match self.kernel() {
            AnyKernel::Portable(k) => run_batch(k, hops, cells, jobs, out),
            #[cfg(target_arch = "x86_64")]
            AnyKernel::AesNi(k) => run_batch_x86(k, mb, hops, cells, jobs, out),
            #[cfg(target_arch = "x86_64")]
            AnyKernel::Vaes256(k) => run_batch_x86(k, mb, hops, cells, jobs, out),
            #[cfg(target_arch = "x86_64")]
            AnyKernel::Vaes512(k) => run_batch_x86(k, mb, hops, cells, jobs, out),
        }
        Ok(())
    }

    /// Runs one op on one cell (the unbatched path, e.g. for control cells).
    pub fn process_one(&self, hop: &mut Tor1Hop, cell: &mut CellBody, op: Op) -> Outcome {
        match self.kernel() {
            AnyKernel::Portable(k) => run_op(k, hop, cell, op),
            #[cfg(target_arch = "x86_64")]
            AnyKernel::AesNi(k) => run_op(k, hop, cell, op),
            #[cfg(target_arch = "x86_64")]
            AnyKernel::Vaes256(k) => run_op(k, hop, cell, op),
            #[cfg(target_arch = "x86_64")]
            AnyKernel::Vaes512(k) => run_op(k, hop, cell, op),
        }
    }

    /// Origin side: seals `cell` for `hops[target]` and adds the forward layers of hops
    /// `target, ..., 0`. Returns the cell's full digest, or `None` if `target` is out of range.
    pub fn origin_send(
        &self,
        hops: &mut [Tor1Hop],
        target: usize,
        cell: &mut CellBody,
    ) -> Option<RelayDigest> {
        let (inner, _) = hops.split_at_mut(target.checked_add(1)?.min(hops.len()));
        let (last, outer) = inner.split_last_mut()?;
        if outer.len() != target {
            return None;
        }
        let Outcome::Sealed(full) = self.process_one(last, cell, Op::OriginSealForward) else {
            return None;
        };
        for hop in outer.iter_mut().rev() {
            self.process_one(hop, cell, Op::OriginCryptForward);
        }
        Some(full)
    }

    /// Origin side: peels backward layers from hop 0 outwards until one recognizes the cell;
    /// returns its index and the cell's full digest, or `None` if none did (the circuit must be
    /// closed: tor-spec §5.5).
    pub fn origin_recv(
        &self,
        hops: &mut [Tor1Hop],
        cell: &mut CellBody,
    ) -> Option<(usize, RelayDigest)> {
        for (i, hop) in hops.iter_mut().enumerate() {
            if let Outcome::Recognized(d) = self.process_one(hop, cell, Op::OriginRecvBackward) {
                return Some((i, d));
            }
        }
        None
    }

    /// A proof of CPU support for this engine's backend, re-checked (an atomic load) per call
    /// so the kernels' safety never rests on how the `Engine` was made.
    fn kernel(&self) -> AnyKernel {
        kernel_of(self.backend).unwrap_or(AnyKernel::Portable(Portable))
    }
}

/// `backend`'s kernel, if the CPU supports it.
fn kernel_of(backend: Backend) -> Option<AnyKernel> {
    match backend {
        #[cfg(target_arch = "x86_64")]
        Backend::Vaes512 => x86k::Vaes512::detect().map(AnyKernel::Vaes512),
        #[cfg(target_arch = "x86_64")]
        Backend::Vaes256 => x86k::Vaes256::detect().map(AnyKernel::Vaes256),
        #[cfg(target_arch = "x86_64")]
        Backend::AesNi8 => x86k::AesNi::detect().map(AnyKernel::AesNi),
        Backend::Portable => Some(AnyKernel::Portable(Portable)),
        #[cfg(not(target_arch = "x86_64"))]
        _ => None,
    }
}

/// Runs `backend`'s known-answer tests (see `selftest`): tor1 through the batch path it would
/// use, then its CGO kernel; the backend passes only if both do.
fn backend_kat(backend: Backend) -> bool {
    tor1_kat(backend) && cgo::self_test(backend)
}

/// `backend`'s tor1 known-answer test.
fn tor1_kat(backend: Backend) -> bool {
    #[cfg(target_arch = "x86_64")]
    let mb = selftest::multi_sha1();
    match kernel_of(backend) {
        None => false,
        Some(AnyKernel::Portable(k)) => selftest::backend_kat(k, run_batch),
        #[cfg(target_arch = "x86_64")]
        Some(AnyKernel::AesNi(k)) => {
            selftest::backend_kat(k, |k, h, c, j, o| run_batch_x86(k, mb, h, c, j, o))
        }
        #[cfg(target_arch = "x86_64")]
        Some(AnyKernel::Vaes256(k)) => {
            selftest::backend_kat(k, |k, h, c, j, o| run_batch_x86(k, mb, h, c, j, o))
        }
        #[cfg(target_arch = "x86_64")]
        Some(AnyKernel::Vaes512(k)) => {
            selftest::backend_kat(k, |k, h, c, j, o| run_batch_x86(k, mb, h, c, j, o))
        }
    }
}

impl Default for Engine {
    fn default() -> Self {
        Engine::best()
    }
}

/// Clears a stack buffer that held keystream, so no key-derived bytes outlive the call
/// (see [`keys::wipe`] for why not `zeroize`).
#[inline(always)]
pub(crate) fn wipe(buf: &mut [u8]) {
    keys::wipe(buf);
}

/// A keystream kernel: XORs the next 509 bytes of `layer`'s keystream into `cell`.
trait Kernel: Copy {
    fn xor_cell(self, layer: &mut Layer, cell: &mut CellBody);
}

#[derive(Clone, Copy)]
enum AnyKernel {
    Portable(Portable),
    #[cfg(target_arch = "x86_64")]
    AesNi(x86k::AesNi),
    #[cfg(target_arch = "x86_64")]
    Vaes256(x86k::Vaes256),
    #[cfg(target_arch = "x86_64")]
    Vaes512(x86k::Vaes512),
}

/// The `aes` crate on explicit counter blocks.
#[derive(Clone, Copy)]
struct Portable;

impl Kernel for Portable {
    fn xor_cell(self, layer: &mut Layer, cell: &mut CellBody) {
        const BLOCKS: usize = (15 + CELL_BODY_LEN).div_ceil(16);
        let first = u128::from(layer.pos >> 4);
        let off = (layer.pos & 15) as usize;
        let mut ks = [aes::Block::default(); BLOCKS];
        for (n, b) in (first..).zip(ks.iter_mut()) {
            b.copy_from_slice(&n.to_be_bytes());
        }
        layer.aes.encrypt_blocks(&mut ks);
        // A flat copy lets the XOR below run on whole vectors instead of a byte iterator.
        let mut flat = [0u8; BLOCKS * 16];
        for (dst, b) in flat.chunks_exact_mut(16).zip(&ks) {
            dst.copy_from_slice(b);
        }
        if let Some(ks) = flat
            .get(off..off + CELL_BODY_LEN)
            .and_then(|s| <&[u8; CELL_BODY_LEN]>::try_from(s).ok())
        {
            for (c, k) in cell.iter_mut().zip(ks) {
                *c ^= k;
            }
        }
        ks = [aes::Block::default(); BLOCKS];
        core::hint::black_box(&ks);
        wipe(&mut flat);
    }
}

/// Tokens that exist only once the CPU is known to support a kernel's instructions.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86k {
    use super::{cpuid_aesni, cpuid_avx2_aes, cpuid_avx512_vaes, CellBody, Kernel, Layer};

    #[derive(Clone, Copy)]
    pub(super) struct AesNi(());
    #[derive(Clone, Copy)]
    pub(super) struct Vaes256(());
    #[derive(Clone, Copy)]
    pub(super) struct Vaes512(());

    impl AesNi {
        pub(super) fn detect() -> Option<Self> {
            cpuid_aesni::get().then_some(AesNi(()))
        }
    }
    impl Vaes256 {
        pub(super) fn detect() -> Option<Self> {
            (cpuid_avx2_aes::get() && std::arch::is_x86_feature_detected!("vaes"))
                .then_some(Vaes256(()))
        }
    }
    impl Vaes512 {
        pub(super) fn detect() -> Option<Self> {
            cpuid_avx512_vaes::get().then_some(Vaes512(()))
        }
    }

    impl Kernel for AesNi {
        #[inline(always)]
        fn xor_cell(self, layer: &mut Layer, cell: &mut CellBody) {
            // SAFETY: an `AesNi` token exists only after `detect` saw AES-NI, SSE2 and SSSE3.
            unsafe { crate::x86::aesni_xor_cell(&layer.rk, layer.pos, cell) }
        }
    }
    impl Kernel for Vaes256 {
        #[inline(always)]
        fn xor_cell(self, layer: &mut Layer, cell: &mut CellBody) {
            // SAFETY: a `Vaes256` token exists only after `detect` saw VAES, AVX2 and AES-NI.
            unsafe { crate::x86::vaes256_xor_cell(&layer.rk, layer.pos, &mut layer.carry, cell) }
        }
    }
    impl Kernel for Vaes512 {
        #[inline(always)]
        fn xor_cell(self, layer: &mut Layer, cell: &mut CellBody) {
            // SAFETY: a `Vaes512` token exists only after `detect` saw AVX-512F, VAES, AVX2 and
            // AES-NI.
            unsafe { crate::x86::vaes512_xor_cell(&layer.rk, layer.pos, cell) }
        }
    }
}

#[inline(always)]
fn run_op<K: Kernel>(k: K, hop: &mut Tor1Hop, cell: &mut CellBody, op: Op) -> Outcome {
    match op {
        Op::RelayRecvForward => {
            hop.fwd.crypt(k, cell);
            open_outcome(digest::open(&mut hop.fwd.digest, cell))
        }
        Op::OriginRecvBackward => {
            hop.bwd.crypt(k, cell);
            open_outcome(digest::open(&mut hop.bwd.digest, cell))
        }
        Op::RelayPassBackward => {
            hop.bwd.crypt(k, cell);
            Outcome::Done
        }
        Op::OriginCryptForward => {
            hop.fwd.crypt(k, cell);
            Outcome::Done
        }
        Op::RelaySendBackward => {
            let d = digest::seal(&mut hop.bwd.digest, cell);
            hop.bwd.crypt(k, cell);
            Outcome::Sealed(d)
        }
        Op::OriginSealForward => {
            let d = digest::seal(&mut hop.fwd.digest, cell);
            hop.fwd.crypt(k, cell);
            Outcome::Sealed(d)
        }
    }
}

fn open_outcome(d: Option<RelayDigest>) -> Outcome {
    match d {
        Some(d) => Outcome::Recognized(d),
        None => Outcome::NotRecognized,
    }
}

/// The batch loop for one kernel; indices were checked by the caller.
fn run_batch<K: Kernel>(
    k: K,
    hops: &mut [Tor1Hop],
    cells: &mut [CellBody],
    jobs: &[Job],
    out: &mut [Outcome],
) {
    for (job, slot) in jobs.iter().zip(out.iter_mut()) {
        if let (Some(hop), Some(cell)) = (
            hops.get_mut(job.hop as usize),
            cells.get_mut(job.cell as usize),
        ) {
            *slot = run_op(k, hop, cell, job.op);
        }
    }
}

/// The batch loop with multi-buffer SHA-1, in one pass over the jobs.
///
/// Keystream-only work is done at once, in job order. A cell that needs a digest (sealed, or
/// decrypted with `recognized == 0`) waits in a pending set of at most [`multi::MultiSha1::lanes`] jobs
/// on distinct hops and cells, hashed side by side when the set is full, when a job touches a
/// hop or cell in it, or at the end; so every hop and every cell still sees its jobs in order.
/// At a middle relay the set stays empty and the loop is the kernel and the `recognized` check.
#[cfg(target_arch = "x86_64")]
fn run_batch_x86<K: Kernel>(
    k: K,
    mb: Option<multi::MultiSha1>,
    hops: &mut [Tor1Hop],
    cells: &mut [CellBody],
    jobs: &[Job],
    out: &mut [Outcome],
) {
    let Some(mb) = mb else {
        return run_batch(k, hops, cells, jobs, out);
    };
    let lanes = mb.lanes().min(multi::MAX_LANES);
    let mut pending = [0usize; multi::MAX_LANES];
    let mut n = 0;
    // One bit per hop and cell index modulo 64: a clear bit proves the index is not pending, so
    // the exact scan runs only on a bit collision.
    let (mut hop_bits, mut cell_bits) = (0u64, 0u64);
    for (i, job) in jobs.iter().enumerate() {
        let (hb, cb) = (1u64 << (job.hop % 64), 1u64 << (job.cell % 64));
        if n > 0
            && (hop_bits & hb != 0 || cell_bits & cb != 0)
            && pending.iter().take(n).any(|&p| {
                jobs.get(p)
                    .is_some_and(|q| q.hop == job.hop || q.cell == job.cell)
            })
        {
            finish_pending(k, mb, hops, cells, jobs, out, &pending[..n]);
            n = 0;
            (hop_bits, cell_bits) = (0, 0);
        }
        let (Some(hop), Some(cell), Some(slot)) = (
            hops.get_mut(job.hop as usize),
            cells.get_mut(job.cell as usize),
            out.get_mut(i),
        ) else {
            continue;
        };
        let needs_hash = match job.op {
            Op::RelayRecvForward | Op::OriginRecvBackward => {
                hop.layer_mut(job.op).crypt(k, cell);
                *slot = Outcome::NotRecognized;
                // tor-spec §6.1: the digest is only checked when `recognized` is zero.
                cell[1] == 0 && cell[2] == 0
            }
            Op::RelaySendBackward | Op::OriginSealForward => {
                cell[1] = 0;
                cell[2] = 0;
                true
            }
            Op::RelayPassBackward | Op::OriginCryptForward => {
                *slot = run_op(k, hop, cell, job.op);
                false
            }
        };
        if needs_hash {
            if let Some(p) = pending.get_mut(n) {
                *p = i;
                n += 1;
                hop_bits |= hb;
                cell_bits |= cb;
            }
            if n >= lanes {
                finish_pending(k, mb, hops, cells, jobs, out, &pending[..n]);
                n = 0;
                (hop_bits, cell_bits) = (0, 0);
            }
        }
    }
    if n > 0 {
        finish_pending(k, mb, hops, cells, jobs, out, &pending[..n]);
    }
}
/// Completes the pending jobs `lanes` (on distinct hops and cells, cells ready to hash): all
/// their digests at once, then the checks, digest fields and keystream for ops that seal.
#[cfg(target_arch = "x86_64")]
fn finish_pending<K: Kernel>(
    k: K,
    mb: multi::MultiSha1,
    hops: &mut [Tor1Hop],
    cells: &mut [CellBody],
    jobs: &[Job],
    out: &mut [Outcome],
    lanes: &[usize],
) {
    const LANES: usize = multi::MAX_LANES;
    let n = lanes.len().min(LANES);
    if n < mb.lanes_min() {
        // Too few cells turned out to need a digest (most forward cells at a middle relay are
        // not recognized): single-stream is cheaper than a half-empty pass.
        for &i in lanes {
            let (Some(job), Some(slot)) = (jobs.get(i), out.get_mut(i)) else {
                continue;
            };
            let (Some(hop), Some(cell)) = (
                hops.get_mut(job.hop as usize),
                cells.get_mut(job.cell as usize),
            ) else {
                continue;
            };
            let layer = hop.layer_mut(job.op);
            *slot = match job.op {
                Op::RelaySendBackward | Op::OriginSealForward => {
                    let d = digest::seal(&mut layer.digest, cell);
                    layer.crypt(k, cell);
                    Outcome::Sealed(d)
                }
                _ => open_outcome(digest::open(&mut layer.digest, cell)),
            };
        }
        return;
    }
    let mut results = [multi::LaneResult::default(); LANES];
    {
        let hops_ro: &[Tor1Hop] = hops;
        let cells_ro: &[CellBody] = cells;
        // Lanes past `n` are ignored; they only need some valid reference.
        let (Some(h0), Some(c0)) = (hops_ro.first(), cells_ro.first()) else {
            return;
        };
        let mut states: [&Sha1State; LANES] = [&h0.fwd.digest; LANES];
        let mut bodies: [&CellBody; LANES] = [c0; LANES];
        for ((s, b), &i) in states.iter_mut().zip(bodies.iter_mut()).zip(lanes).take(n) {
            let Some(j) = jobs.get(i) else { continue };
            if let (Some(h), Some(c)) = (hops_ro.get(j.hop as usize), cells_ro.get(j.cell as usize))
            {
                *s = &h.layer(j.op).digest;
                *b = c;
            }
        }
        mb.hash_bodies(&states[..n], &bodies[..n], &mut results[..n]);
    }
    for (&i, r) in lanes.iter().zip(&results).take(n) {
        let (Some(job), Some(slot)) = (jobs.get(i), out.get_mut(i)) else {
            continue;
        };
        let (Some(hop), Some(cell)) = (
            hops.get_mut(job.hop as usize),
            cells.get_mut(job.cell as usize),
        ) else {
            continue;
        };
        let layer = hop.layer_mut(job.op);
        let full = r.digest;
        match job.op {
            Op::RelaySendBackward | Op::OriginSealForward => {
                multi::commit(&mut layer.digest, cell, r);
                cell[5..9].copy_from_slice(&full[..4]);
                layer.crypt(k, cell);
                *slot = Outcome::Sealed(full);
            }
            _ => {
                if digest::matches(&full, cell) {
                    multi::commit(&mut layer.digest, cell, r);
                    *slot = Outcome::Recognized(full);
                }
            }
        }
    }
}

impl Tor1Hop {
    /// The direction an op works on.
    fn layer(&self, op: Op) -> &Layer {
        match op {
            Op::RelayRecvForward | Op::OriginSealForward | Op::OriginCryptForward => &self.fwd,
            Op::RelayPassBackward | Op::RelaySendBackward | Op::OriginRecvBackward => &self.bwd,
        }
    }

    fn layer_mut(&mut self, op: Op) -> &mut Layer {
        match op {
            Op::RelayRecvForward | Op::OriginSealForward | Op::OriginCryptForward => &mut self.fwd,
            Op::RelayPassBackward | Op::RelaySendBackward | Op::OriginRecvBackward => &mut self.bwd,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selftest::ref_op;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Runs `jobs` as one batch on `engine`, and one by one on the reference over a copy of
    /// `cells`, and asserts that both give the same outcomes and the same cells; returns the
    /// outcomes.
    fn check_batch(
        engine: Engine,
        hops: &mut [Tor1Hop],
        refs: &mut [reference::Tor1Hop],
        cells: &mut [CellBody],
        jobs: &[Job],
        what: &str,
    ) -> Vec<Outcome> {
        let mut rcells = cells.to_vec();
        let mut out = vec![Outcome::Done; jobs.len()];
        engine.process_batch(hops, cells, jobs, &mut out).unwrap();
        for (i, j) in jobs.iter().enumerate() {
            let want = ref_op(
                &mut refs[j.hop as usize],
                &mut rcells[j.cell as usize],
                j.op,
            );
            assert_eq!(out[i], want, "{what} job {i}");
        }
        assert_eq!(cells, &rcells[..], "{what}");
        out
    }

    fn random_cell(rng: &mut StdRng) -> CellBody {
        let mut c = [0u8; CELL_BODY_LEN];
        rng.fill(&mut c[..]);
        c
    }

    /// Circuits `0..n` have an origin-side hop at index `c` and a relay-side hop at `n + c`,
    /// built from the same KDF bytes, in both the engine and the reference.
    fn circuits(rng: &mut StdRng, n: usize) -> (Vec<Tor1Hop>, Vec<reference::Tor1Hop>) {
        let kdfs: Vec<[u8; KDF_LEN]> = (0..n)
            .map(|_| {
                let mut k = [0u8; KDF_LEN];
                rng.fill(&mut k[..]);
                k
            })
            .collect();
        let eng = kdfs.iter().chain(&kdfs).map(Tor1Hop::from_kdf).collect();
        let refs = kdfs
            .iter()
            .chain(&kdfs)
            .map(reference::Tor1Hop::from_kdf)
            .collect();
        (eng, refs)
    }

    /// Random batches of paired jobs (a sender op on one side of a circuit, later the receiver
    /// op on the other side), checked byte for byte and outcome for outcome against the
    /// reference, with the expected recognitions.
    fn check_backend(backend: Backend, seed: u64, n_circ: usize, batches: usize) {
        let engine = Engine::new(backend).unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut hops, mut refs) = circuits(&mut rng, n_circ);
        // Warm-up moves every stream to a random, mostly unaligned position (509 = 13 mod 16).
        for c in 0..n_circ {
            for _ in 0..rng.gen_range(0..20) {
                let mut cell = random_cell(&mut rng);
                let mut rcell = cell;
                engine.process_one(&mut hops[c], &mut cell, Op::OriginCryptForward);
                engine.process_one(&mut hops[n_circ + c], &mut cell, Op::RelayRecvForward);
                refs[c].crypt_forward(&mut rcell);
                refs[n_circ + c].relay_recv_forward(&mut rcell);
                assert_eq!(cell, rcell);
            }
            for _ in 0..rng.gen_range(0..20) {
                let mut cell = random_cell(&mut rng);
                let mut rcell = cell;
                engine.process_one(&mut hops[n_circ + c], &mut cell, Op::RelayPassBackward);
                refs[n_circ + c].relay_forward_backward(&mut rcell);
                engine.process_one(&mut hops[c], &mut cell, Op::OriginRecvBackward);
                refs[c].origin_recv_backward(&mut rcell);
                assert_eq!(cell, rcell);
            }
        }
        let mut cells = vec![[0u8; CELL_BODY_LEN]; 128];
        for _ in 0..batches {
            let msgs = rng.gen_range(1..=128);
            let mut senders = Vec::new();
            let mut receivers = Vec::new();
            let mut sealed = Vec::new();
            for (m, slot) in cells.iter_mut().enumerate().take(msgs) {
                *slot = random_cell(&mut rng);
                let c = rng.gen_range(0..n_circ) as u32;
                let r = n_circ as u32 + c;
                let seal = rng.gen_bool(0.5);
                sealed.push(seal);
                let cell = m as u32;
                if rng.gen_bool(0.5) {
                    let op = if seal {
                        Op::OriginSealForward
                    } else {
                        Op::OriginCryptForward
                    };
                    senders.push(Job { hop: c, cell, op });
                    receivers.push(Job {
                        hop: r,
                        cell,
                        op: Op::RelayRecvForward,
                    });
                } else {
                    let op = if seal {
                        Op::RelaySendBackward
                    } else {
                        Op::RelayPassBackward
                    };
                    senders.push(Job { hop: r, cell, op });
                    receivers.push(Job {
                        hop: c,
                        cell,
                        op: Op::OriginRecvBackward,
                    });
                }
            }
            // Sometimes a batch of one job, the smallest size.
            let jobs: Vec<Job> = if msgs == 1 && rng.gen_bool(0.5) {
                senders.clone()
            } else {
                senders.iter().chain(&receivers).copied().collect()
            };
            let what = backend.to_string();
            let out = check_batch(engine, &mut hops, &mut refs, &mut cells, &jobs, &what);
            if jobs.len() == 2 * msgs {
                for (m, &seal) in sealed.iter().enumerate() {
                    let (Outcome::Sealed(d), recv) = (out[m], out[msgs + m]) else {
                        assert!(!seal);
                        assert_eq!(out[m], Outcome::Done);
                        continue;
                    };
                    assert_eq!(recv, Outcome::Recognized(d));
                }
            } else {
                // A lone sender desynchronises its peer; undo by replaying on the receiver.
                let j = receivers[0];
                let mut c = cells[0];
                let mut rc = cells[0];
                engine.process_one(&mut hops[j.hop as usize], &mut c, j.op);
                ref_op(&mut refs[j.hop as usize], &mut rc, j.op);
                assert_eq!(c, rc);
            }
        }
    }

    #[test]
    fn every_backend_matches_reference() {
        let supported: Vec<Backend> = Backend::supported().collect();
        assert!(supported.contains(&Backend::Portable));
        for backend in supported {
            // One circuit: long runs of consecutive cells; many: mixed keys and positions.
            check_backend(backend, 1, 1, 30);
            check_backend(backend, 2, 3, 30);
            check_backend(backend, 3, 64, 20);
            check_backend(backend, 4, 300, 10);
        }
    }

    #[test]
    fn engine_origin_helpers_match_reference() {
        let mut rng = StdRng::seed_from_u64(7);
        for backend in Backend::supported() {
            let engine = Engine::new(backend).unwrap();
            let (mut hops, mut refs) = circuits(&mut rng, 3);
            let (origin, relays) = hops.split_at_mut(3);
            let (rorigin, _) = refs.split_at_mut(3);
            for n in 0..30 {
                let target = n % 3;
                let mut cell = random_cell(&mut rng);
                let mut rcell = cell;
                let d = engine.origin_send(origin, target, &mut cell).unwrap();
                let rd = reference::origin_send(rorigin, target, &mut rcell).unwrap();
                assert_eq!((cell, d), (rcell, rd));
                let got = relays.iter_mut().enumerate().find_map(|(i, r)| {
                    match engine.process_one(r, &mut cell, Op::RelayRecvForward) {
                        Outcome::Recognized(d) => Some((i, d)),
                        _ => None,
                    }
                });
                assert_eq!(got, Some((target, d)));

                let mut back = random_cell(&mut rng);
                let Outcome::Sealed(d) =
                    engine.process_one(&mut relays[target], &mut back, Op::RelaySendBackward)
                else {
                    panic!("not sealed");
                };
                for r in relays[..target].iter_mut().rev() {
                    engine.process_one(r, &mut back, Op::RelayPassBackward);
                }
                let mut rback = back;
                assert_eq!(engine.origin_recv(origin, &mut back), Some((target, d)));
                assert_eq!(
                    reference::origin_recv(rorigin, &mut rback),
                    Some((target, d))
                );
                assert_eq!(back, rback);
            }
            assert_eq!(engine.origin_send(origin, 3, &mut [0; 509]), None);
        }
    }

    /// The keystream from byte `pos` of the stream with key `key`, from the `ctr` crate.
    fn ctr_keystream(key: &[u8; 16], pos: u64, len: usize) -> Vec<u8> {
        use aes::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
        let mut c = ctr::Ctr128BE::<aes::Aes128>::new(key.into(), &[0u8; 16].into());
        c.seek(pos);
        let mut ks = vec![0u8; len];
        c.apply_keystream(&mut ks);
        ks
    }

    /// Stream positions near counter boundaries: the low 32 bits of the block counter wrapping
    /// (2^32 blocks = 2^36 bytes), and the largest positions a `u64` byte count reaches (block
    /// counter near 2^60; it cannot reach 2^64, so the high 64 counter bits never change), at
    /// every offset within a block; then runs of consecutive cells across them.
    #[test]
    fn every_backend_at_counter_boundaries() {
        let mut kdf = [0u8; KDF_LEN];
        for (i, b) in kdf.iter_mut().enumerate() {
            *b = (i * 37 + 11) as u8;
        }
        let key: [u8; 16] = kdf[40..56].try_into().unwrap();
        let starts = [
            0u64,
            (1 << 36) - 40 * 16,
            (1 << 36) - 33 * 16 + 5,
            (1 << 40) - 7 * 16,
            (1 << 56) - 2 * 509,
            u64::MAX - 40 * 509,
        ];
        for backend in Backend::supported() {
            let engine = Engine::new(backend).unwrap();
            for &start in &starts {
                for off in 0..16u64 {
                    // A fresh position (no carried block) at every offset.
                    let pos = start.wrapping_add(off * 16 + off);
                    let mut hop = Tor1Hop::from_kdf(&kdf);
                    hop.fwd.pos = pos;
                    let mut cell = [0u8; CELL_BODY_LEN];
                    engine.process_one(&mut hop, &mut cell, Op::OriginCryptForward);
                    assert_eq!(
                        cell[..],
                        ctr_keystream(&key, pos, CELL_BODY_LEN)[..],
                        "{backend} at {pos:#x}"
                    );
                }
                // 40 consecutive cells: every offset, carried blocks, counters crossing the
                // boundary.
                let mut hop = Tor1Hop::from_kdf(&kdf);
                hop.fwd.pos = start;
                let want = ctr_keystream(&key, start, 40 * CELL_BODY_LEN);
                for (i, w) in want.chunks_exact(CELL_BODY_LEN).enumerate() {
                    let mut cell = [0u8; CELL_BODY_LEN];
                    engine.process_one(&mut hop, &mut cell, Op::OriginCryptForward);
                    assert_eq!(cell[..], w[..], "{backend} from {start:#x}, cell {i}");
                }
            }
        }
    }

    /// The VAES-256 kernel makes its 32 counters without byte swaps when the last byte of the
    /// first fresh counter block is at most 224 and with them otherwise: every value of that
    /// byte, at several offsets within a block, on every backend, against the `ctr` crate;
    /// and runs of consecutive cells from each such start (carried blocks).
    #[test]
    fn every_backend_at_every_last_counter_byte() {
        let kdf: [u8; KDF_LEN] = core::array::from_fn(|i| (i * 53 + 7) as u8);
        let key: [u8; 16] = kdf[40..56].try_into().unwrap();
        for backend in Backend::supported() {
            let engine = Engine::new(backend).unwrap();
            for low in 0..256u64 {
                for off in [0u64, 1, 3, 4, 13, 15] {
                    let pos = ((0x0123_4567_89ab_cd00 | low) << 4) + off;
                    let mut hop = Tor1Hop::from_kdf(&kdf);
                    hop.fwd.pos = pos;
                    let want = ctr_keystream(&key, pos, 3 * CELL_BODY_LEN);
                    for (i, w) in want.chunks_exact(CELL_BODY_LEN).enumerate() {
                        let mut cell = [0u8; CELL_BODY_LEN];
                        engine.process_one(&mut hop, &mut cell, Op::OriginCryptForward);
                        assert_eq!(cell[..], w[..], "{backend} at {pos:#x}, cell {i}");
                    }
                }
            }
        }
    }

    /// The VAES-256 kernel keeps, per hop and direction, round key 0 XOR the counter block
    /// that starts the current 256-block window, and makes a cell's counters from it and a
    /// table of last bytes. One stream moved between windows in every order (back to a window
    /// it left, to the same window from another, to windows whose upper counter bytes differ:
    /// the 2^32-block boundary and the top of the `u64` position range, with the last cell
    /// ending at byte 2^64), at first-block last bytes on both sides of the 224 limit and the
    /// 256 boundary, and cells crossing into the next window from windows ending in 0 to 9
    /// one bits (the crossing tables and the generic path), each cell against the `ctr` crate; a cloned hop keeps working on its own
    /// windows; the forward and backward streams of one hop, in different windows, alternate.
    #[test]
    fn every_backend_across_counter_windows() {
        let kdf: [u8; KDF_LEN] = core::array::from_fn(|i| (i * 29 + 3) as u8);
        let kf: [u8; 16] = kdf[40..56].try_into().unwrap();
        let kb: [u8; 16] = kdf[56..72].try_into().unwrap();
        // Byte positions of the first fresh block `first` with `off` bytes carried in.
        let at = |first: u64, off: u64| (first << 4) - off;
        let top = u64::MAX - (CELL_BODY_LEN as u64 - 1);
        let mut positions = Vec::new();
        for window in [0u64, 5, 0, 1, (1 << 24) - 1, 1 << 24, 5, (1 << 52) - 2, 0] {
            for low in [0u64, 31, 200, 224, 225, 240, 255] {
                for off in [0u64, 3, 15] {
                    let first = (window << 8) | low;
                    if first > 0 || off == 0 {
                        positions.push(at(first, off));
                    }
                }
            }
        }
        // Cells that cross into the next window, for windows ending in every number of one
        // bits (the carry into the byte above the last reaching further each time), at every
        // last byte past 224.
        for ones in 0..10u64 {
            let window = ((5 << ones) << 1) | ((1 << ones) - 1);
            for low in 225..256u64 {
                positions.push(at((window << 8) | low, low % 16));
            }
        }
        positions.extend((0..40).map(|i| top - 16 * i));
        positions.push(top);
        for backend in Backend::supported() {
            let engine = Engine::new(backend).unwrap();
            let mut hop = Tor1Hop::from_kdf(&kdf);
            for (i, &pos) in positions.iter().enumerate() {
                // Alternate: the forward stream moves, the backward stream stays in another
                // window.
                hop.fwd.pos = pos;
                let mut cell = [0u8; CELL_BODY_LEN];
                engine.process_one(&mut hop, &mut cell, Op::OriginCryptForward);
                let want = ctr_keystream(&kf, pos, CELL_BODY_LEN);
                assert_eq!(cell[..], want[..], "{backend} fwd #{i} at {pos:#x}");
                let bpos = hop.bwd.pos;
                let mut cell = [0u8; CELL_BODY_LEN];
                engine.process_one(&mut hop, &mut cell, Op::RelayPassBackward);
                let want = ctr_keystream(&kb, bpos, CELL_BODY_LEN);
                assert_eq!(cell[..], want[..], "{backend} bwd #{i} at {bpos:#x}");
                if i % 7 == 3 && hop.fwd.pos <= u64::MAX - 2 * CELL_BODY_LEN as u64 {
                    // A clone carries the same cached window; both go on independently.
                    let mut twin = hop.clone();
                    let tpos = twin.fwd.pos;
                    let want = ctr_keystream(&kf, tpos, 2 * CELL_BODY_LEN);
                    for w in want.chunks_exact(CELL_BODY_LEN) {
                        let mut cell = [0u8; CELL_BODY_LEN];
                        engine.process_one(&mut twin, &mut cell, Op::OriginCryptForward);
                        assert_eq!(cell[..], w[..], "{backend} clone #{i} from {tpos:#x}");
                    }
                }
            }
        }
    }

    /// Middle-relay shaped batches (keystream-first jobs): one circuit's consecutive cells in
    /// one batch, two or three circuits alternating, odd batch sizes, streams at unaligned
    /// positions, both directions, mixed with digest jobs; every backend against the
    /// reference, outcome for outcome and byte for byte.
    #[test]
    fn batch_shapes_match_reference() {
        let mut rng = StdRng::seed_from_u64(77);
        for backend in Backend::supported() {
            let engine = Engine::new(backend).unwrap();
            let (mut hops, mut refs) = circuits(&mut rng, 6);
            // Unaligned, different positions per stream.
            for h in 0..12 {
                for _ in 0..rng.gen_range(0..17) {
                    let mut c = random_cell(&mut rng);
                    let mut rc = c;
                    engine.process_one(&mut hops[h], &mut c, Op::OriginCryptForward);
                    refs[h].crypt_forward(&mut rc);
                    let mut c = random_cell(&mut rng);
                    let mut rc = c;
                    engine.process_one(&mut hops[h], &mut c, Op::RelayPassBackward);
                    refs[h].relay_forward_backward(&mut rc);
                }
            }
            let shapes: [&[u32]; 8] = [
                &[6, 6, 6, 6, 6, 6, 6],
                &[6, 7, 6, 7, 6, 7, 6, 7, 6],
                &[6, 7, 8, 6, 7, 8, 6, 7, 8, 6, 7],
                &[9],
                &[9, 10, 11],
                &[6, 6, 7, 7, 8, 8, 9],
                &[11, 10, 9, 8, 7, 6, 11, 10, 9, 8, 7, 6, 11],
                &[6, 7, 6, 6, 8, 6, 7, 7, 7, 9, 6, 10, 11, 6, 6],
            ];
            let ops = [
                Op::RelayRecvForward,
                Op::RelayPassBackward,
                Op::OriginCryptForward,
                Op::RelaySendBackward,
            ];
            for round in 0..12 {
                for (s, shape) in shapes.iter().enumerate() {
                    let mut cells: Vec<CellBody> =
                        (0..shape.len()).map(|_| random_cell(&mut rng)).collect();
                    let jobs: Vec<Job> = shape
                        .iter()
                        .enumerate()
                        .map(|(i, &hop)| {
                            // Mostly keystream-only, as at a middle relay; every few rounds a
                            // seal or a `recognized == 0` cell among them.
                            let op = if round % 4 == 3 {
                                ops[rng.gen_range(0..ops.len())]
                            } else {
                                ops[rng.gen_range(0..2)]
                            };
                            if round % 4 != 3 && op == Op::RelayRecvForward {
                                cells[i][1] |= 1;
                            }
                            Job {
                                hop,
                                cell: i as u32,
                                op,
                            }
                        })
                        .collect();
                    let what = format!("{backend} round {round} shape {s}");
                    check_batch(engine, &mut hops, &mut refs, &mut cells, &jobs, &what);
                }
            }
        }
    }

    /// Backends alternating on one stream: a kernel that carries a partial block must notice
    /// that another backend moved the stream, and recompute instead of using a stale carry.
    #[test]
    fn backends_alternating_on_one_stream() {
        let kdf = [0x5au8; KDF_LEN];
        let key: [u8; 16] = kdf[40..56].try_into().unwrap();
        let engines: Vec<Engine> = Backend::supported()
            .map(|b| Engine::new(b).unwrap())
            .collect();
        let want = ctr_keystream(&key, 0, 200 * CELL_BODY_LEN);
        let mut hop = Tor1Hop::from_kdf(&kdf);
        let mut rng = StdRng::seed_from_u64(9);
        for (i, w) in want.chunks_exact(CELL_BODY_LEN).enumerate() {
            let e = engines[rng.gen_range(0..engines.len())];
            let mut cell = [0u8; CELL_BODY_LEN];
            e.process_one(&mut hop, &mut cell, Op::OriginCryptForward);
            assert_eq!(cell[..], w[..], "{} at cell {i}", e.backend());
        }
    }

    /// Origin-style layering inside one batch: a cell sealed for one hop (pending a digest) is
    /// then crypted by other hops, so keystream-only jobs must wait for the pending digest.
    #[test]
    fn batch_layers_wait_for_pending_digests() {
        let mut rng = StdRng::seed_from_u64(33);
        for backend in Backend::supported() {
            let engine = Engine::new(backend).unwrap();
            let (mut hops, mut refs) = circuits(&mut rng, 12);
            let mut cells: Vec<CellBody> = (0..12).map(|_| random_cell(&mut rng)).collect();
            for round in 0..4u32 {
                let mut jobs = Vec::new();
                for m in 0..12u32 {
                    let op = if (m + round) % 2 == 0 {
                        Op::OriginSealForward
                    } else {
                        Op::RelaySendBackward
                    };
                    jobs.push(Job {
                        hop: m,
                        cell: m,
                        op,
                    });
                    jobs.push(Job {
                        hop: (m + 1) % 24,
                        cell: m,
                        op: Op::OriginCryptForward,
                    });
                    if m % 3 == 0 {
                        jobs.push(Job {
                            hop: 12 + m,
                            cell: m,
                            op: Op::RelayPassBackward,
                        });
                    }
                }
                if round >= 2 {
                    // All seals first: the pending set fills (a multi-lane flush of eight), and
                    // the layers then hit the four still pending.
                    jobs.sort_by_key(|j| {
                        !matches!(j.op, Op::OriginSealForward | Op::RelaySendBackward)
                    });
                }
                let what = format!("{backend} round {round}");
                check_batch(engine, &mut hops, &mut refs, &mut cells, &jobs, &what);
            }
        }
    }

    /// One batch holding consecutive cells of many hops interleaved (each hop's cells in
    /// order), on both directions, against the reference.
    #[test]
    fn batches_interleaving_many_hops() {
        let mut rng = StdRng::seed_from_u64(21);
        for backend in Backend::supported() {
            let engine = Engine::new(backend).unwrap();
            let (mut hops, mut refs) = circuits(&mut rng, 40);
            let mut cells: Vec<CellBody> = (0..256).map(|_| random_cell(&mut rng)).collect();
            for round in 0..6 {
                let jobs: Vec<Job> = (0..256u32)
                    .map(|i| Job {
                        hop: rng.gen_range(0..80),
                        cell: i,
                        op: if (i + round) % 3 == 0 {
                            Op::RelayPassBackward
                        } else {
                            Op::OriginCryptForward
                        },
                    })
                    .collect();
                let what = format!("{backend} round {round}");
                check_batch(engine, &mut hops, &mut refs, &mut cells, &jobs, &what);
            }
        }
    }

    #[test]
    fn batch_errors_touch_nothing() {
        let engine = Engine::best();
        let mut hops = vec![Tor1Hop::from_kdf(&[1; KDF_LEN])];
        let mut cells = vec![[5u8; CELL_BODY_LEN]];
        let ok = Job {
            hop: 0,
            cell: 0,
            op: Op::RelayPassBackward,
        };
        let mut out = [Outcome::Done; 2];
        let bad_hop = Job { hop: 1, ..ok };
        let bad_cell = Job { cell: 1, ..ok };
        assert_eq!(
            engine.process_batch(&mut hops, &mut cells, &[ok, bad_hop], &mut out),
            Err(BatchError::HopOutOfRange { job: 1 })
        );
        assert_eq!(
            engine.process_batch(&mut hops, &mut cells, &[ok, bad_cell], &mut out),
            Err(BatchError::CellOutOfRange { job: 1 })
        );
        assert_eq!(
            engine.process_batch(&mut hops, &mut cells, &[ok, ok], &mut out[..1]),
            Err(BatchError::OutTooShort)
        );
        assert_eq!(cells[0], [5u8; CELL_BODY_LEN]);
        assert_eq!(hops[0].bwd.pos, 0);
    }

    #[test]
    fn backend_names_and_support() {
        for b in Backend::ALL {
            assert_eq!(Backend::from_name(b.name()), Some(b));
            match Engine::new(b) {
                Ok(e) => assert_eq!(e.backend(), b),
                Err(e) => assert_eq!(e, EngineError::Unsupported(b)),
            }
        }
        assert_eq!(Backend::from_name("rot13"), None);
        assert!(Backend::best().is_supported());
        eprintln!("supported: {:?}", Backend::supported().collect::<Vec<_>>());
        // Whatever the environment forces, it must be honoured or refused, never ignored.
        if let Ok(name) = std::env::var(BACKEND_ENV) {
            match (Backend::from_name(&name), Engine::from_env()) {
                (Some(b), Ok(e)) => assert_eq!(e.backend(), b),
                (Some(b), Err(e)) => assert_eq!(e, EngineError::Unsupported(b)),
                (None, r) => assert_eq!(r, Err(EngineError::UnknownBackend)),
            }
        }
    }

    /// Every backend this CPU supports passes its power-on self-test (so `best` is the first
    /// supported one), an unsupported one does not, and the multi-lane SHA-1 chosen is the best
    /// this CPU runs.
    #[test]
    fn self_test_passes_for_every_supported_backend() {
        // Read by scripts/avx512-emu.sh, which checks that an AVX-512 guest ranks vaes512 first.
        eprintln!(
            "supported backends: {:?}",
            Backend::supported().collect::<Vec<_>>()
        );
        for b in Backend::ALL {
            assert_eq!(b.self_test_passed(), b.is_supported(), "{b}");
            assert_eq!(Engine::new(b).is_ok(), b.is_supported(), "{b}");
        }
        assert_eq!(Some(Backend::best()), Backend::supported().next());
        assert_eq!(Engine::best().backend(), Backend::best());
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(
                selftest::multi_sha1(),
                multi::MultiSha1::detect_all().next()
            );
            eprintln!("multi-lane SHA-1: {:?}", selftest::multi_sha1());
        }
    }

    /// A kernel that is right except at stream positions 13 bytes into a block (as a counter
    /// or carry bug would be).
    #[derive(Clone, Copy)]
    struct Faulty<K>(K);

    impl<K: Kernel> Kernel for Faulty<K> {
        fn xor_cell(self, layer: &mut Layer, cell: &mut CellBody) {
            let hit = layer.pos % 16 == 13;
            self.0.xor_cell(layer, cell);
            if hit {
                cell[500] ^= 0x10;
            }
        }
    }

    /// `backend`'s self-test, run on its kernel with the fault above.
    fn kat_with_faulty_kernel(backend: Backend) -> bool {
        #[cfg(target_arch = "x86_64")]
        let mb = selftest::multi_sha1();
        match kernel_of(backend).unwrap() {
            AnyKernel::Portable(k) => selftest::backend_kat(Faulty(k), run_batch),
            #[cfg(target_arch = "x86_64")]
            AnyKernel::AesNi(k) => {
                selftest::backend_kat(Faulty(k), |k, h, c, j, o| run_batch_x86(k, mb, h, c, j, o))
            }
            #[cfg(target_arch = "x86_64")]
            AnyKernel::Vaes256(k) => {
                selftest::backend_kat(Faulty(k), |k, h, c, j, o| run_batch_x86(k, mb, h, c, j, o))
            }
            #[cfg(target_arch = "x86_64")]
            AnyKernel::Vaes512(k) => {
                selftest::backend_kat(Faulty(k), |k, h, c, j, o| run_batch_x86(k, mb, h, c, j, o))
            }
        }
    }

    /// A faulty kernel fails the self-test on every backend; selection then skips it for the
    /// next supported backend, and forcing it is an error, not a silent fallback.
    #[test]
    fn faulty_kernel_is_rejected_and_the_next_backend_chosen() {
        let supported: Vec<Backend> = Backend::supported().collect();
        for &b in &supported {
            assert!(!kat_with_faulty_kernel(b), "{b}: fault not caught");
            assert_eq!(
                Engine::checked(b, |x| x != b || kat_with_faulty_kernel(x)),
                Err(EngineError::SelfTestFailed(b))
            );
        }
        // The best backend broken: the next one is chosen.
        let top = supported[0];
        let chosen = selftest::first_passing(supported.iter().copied(), |b| {
            if b == top {
                kat_with_faulty_kernel(b)
            } else {
                b.self_test_passed()
            }
        });
        assert_eq!(
            Some(chosen),
            supported.get(1).copied().or(Some(Backend::Portable))
        );
        // All broken: the portable backend, as the last resort.
        assert_eq!(
            selftest::first_passing(supported.iter().copied(), kat_with_faulty_kernel),
            Backend::Portable
        );
    }

    /// `backend`'s self-test with its CGO kernel wrong at `fault`.
    fn kat_with_faulty_cgo(backend: Backend, fault: cgo::Fault) -> bool {
        tor1_kat(backend)
            && selftest::cgo_kat(&|h, c, j, o| {
                cgo::run_batch_faulty(cgo::kernel(backend), fault, h, c, j, o)
            })
    }

    /// A CGO kernel wrong in any one primitive (single or paired `ENC_UIV`, `DEC_UIV`, single
    /// or paired `UPDATE_UIV`) fails the CGO self-test, on every x86 kernel and on the
    /// reference; a backend whose CGO kernel fails is refused when forced and skipped by
    /// selection, as a tor1 failure is.
    #[test]
    fn faulty_cgo_kernel_is_rejected_and_the_next_backend_chosen() {
        for f in cgo::Fault::ALL {
            assert!(
                !selftest::cgo_kat(&|h, c, j, o| {
                    cgo::run_batch_faulty(cgo::Kern::Ref, f, h, c, j, o)
                }),
                "reference: {f:?} not caught"
            );
        }
        let supported: Vec<Backend> = Backend::supported().collect();
        let mut kernels = 0;
        for &b in &supported {
            assert!(cgo::self_test(b), "{b}");
            if matches!(cgo::kernel(b), cgo::Kern::Ref) {
                continue;
            }
            kernels += 1;
            for f in cgo::Fault::ALL {
                assert!(!kat_with_faulty_cgo(b, f), "{b}: {f:?} not caught");
                assert_eq!(
                    Engine::checked(b, |x| x != b || kat_with_faulty_cgo(x, f)),
                    Err(EngineError::SelfTestFailed(b))
                );
            }
        }
        eprintln!("CGO kernels checked: {kernels}");
        // The best backend's CGO broken: the next one is chosen.
        let top = supported[0];
        let chosen = selftest::first_passing(supported.iter().copied(), |b| {
            if b == top {
                kat_with_faulty_cgo(b, cgo::Fault::Update)
            } else {
                b.self_test_passed()
            }
        });
        let expect = if matches!(cgo::kernel(top), cgo::Kern::Ref) {
            top
        } else {
            supported.get(1).copied().unwrap_or(Backend::Portable)
        };
        assert_eq!(chosen, expect);
    }

    /// A multi-lane SHA-1 with one wrong lane fails its self-test, the eight- and the
    /// sixteen-lane passes alike, and the next candidate (or single-stream) is chosen.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn faulty_multi_lane_sha1_is_rejected() {
        use multi::{LaneResult, MultiSha1};
        fn corrupt(out: &mut [LaneResult], lane: usize) {
            if let Some(r) = out.get_mut(lane) {
                r.digest[7] ^= 1;
            }
        }
        let cands: Vec<MultiSha1> = MultiSha1::detect_all().collect();
        for &m in &cands {
            assert!(selftest::multi_kat(
                &|s, b, o| m.hash_bodies(s, b, o),
                m.lanes()
            ));
            assert!(!selftest::multi_kat(
                &|s, b, o| {
                    m.hash_bodies(s, b, o);
                    corrupt(o, 2);
                },
                m.lanes()
            ));
        }
        // The sixteen-lane algorithm (on plain arrays, so this runs without AVX-512): right, it
        // passes; wrong only in lane 10, it fails.
        let wide = |s: &[&sha1state::Sha1State], b: &[&CellBody], o: &mut [LaneResult]| {
            multi::hash_wide_with(multi512::run_portable, s, b, o)
        };
        assert!(selftest::multi_kat(&wide, 16));
        assert!(!selftest::multi_kat(
            &|s, b, o| {
                wide(s, b, o);
                corrupt(o, 10);
            },
            16
        ));
        // Selection: the first broken, the next chosen; all broken, none (single-stream).
        if let Some(&first) = cands.first() {
            let chosen = selftest::choose_multi(cands.iter().copied(), |m| m != first);
            assert_eq!(chosen, cands.get(1).copied());
        }
        assert_eq!(
            selftest::choose_multi(cands.iter().copied(), |_| false),
            None
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any key, any stream position, any cell: every backend equals the reference.
        #[test]
        fn prop_backends_equal_reference(
            kdf in proptest::collection::vec(any::<u8>(), KDF_LEN),
            skip in 0usize..48,
            cell in proptest::collection::vec(any::<u8>(), CELL_BODY_LEN),
        ) {
            let kdf: [u8; KDF_LEN] = kdf.try_into().unwrap();
            let cell: CellBody = cell.try_into().unwrap();
            let mut want = cell;
            let mut r = reference::Tor1Hop::from_kdf(&kdf);
            for _ in 0..skip {
                r.crypt_forward(&mut [0; CELL_BODY_LEN]);
            }
            r.crypt_forward(&mut want);
            for b in Backend::supported() {
                let e = Engine::new(b).unwrap();
                let mut h = Tor1Hop::from_kdf(&kdf);
                for _ in 0..skip {
                    e.process_one(&mut h, &mut [0; CELL_BODY_LEN], Op::OriginCryptForward);
                }
                let mut got = cell;
                e.process_one(&mut h, &mut got, Op::OriginCryptForward);
                prop_assert_eq!(got, want, "{}", b);
            }
        }
    }
}
