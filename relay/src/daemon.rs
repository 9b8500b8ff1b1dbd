//! `chive relay`: loads or creates the keys, starts one shard thread per configured core, and
//! runs until asked to stop.
//!
//! Every shard gets the same read-only [`RelayContext`] (keys, certificates, TLS
//! configurations) and its own listening socket on the ORPort. Logging happens here and at
//! connection-level events in the reactors, never per cell.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crypto_simd::Engine;
use proto::keys::RelayKeys;
use rand::rngs::OsRng;
use thiserror::Error;

use crate::config::{BackendChoice, Config};
use crate::control::{Control, ShardGauges, ShardHandle};
use crate::reactor::{self, Backend};
use crate::shard::{RelayContext, Shard, ShardError};
use crate::tls::{self, LinkCert, LinkKeyAlg};
use crate::xshard;

/// How often the control shard checks its schedule and the stop flag.
const CONTROL_TICK: std::time::Duration = std::time::Duration::from_millis(200);

/// Why the relay could not start.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The keys could not be loaded or created.
    #[error("keys: {0}")]
    Keys(#[from] proto::key_file::KeyStoreError),
    /// Our certificates could not be made.
    #[error("certificates: {0}")]
    Certs(#[from] proto::cert::CertBuildError),
    /// TLS setup failed.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsSetupError),
    /// No usable relay-crypto backend.
    #[error("relay crypto: {0}")]
    Engine(#[from] crypto_simd::EngineError),
    /// A shard could not be made.
    #[error("shard: {0}")]
    Shard(#[from] ShardError),
    /// A socket or thread failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: io::Error,
    },
    /// `backend = "io_uring"` but the kernel refused it.
    #[error("io_uring unavailable: {0}")]
    NoUring(io::Error),
}

/// Starts the relay described by `config`, runs it until `stop` is set (the caller wires it to
/// SIGINT/SIGTERM), and waits for every shard to finish.
pub fn run(config: &Config, stop: Arc<AtomicBool>) -> Result<(), DaemonError> {
    let now = reactor::unix_now();
    let mut rng = OsRng;
    let keys = RelayKeys::load_or_generate(&config.data_dir, now, &mut rng)?;
    keys.write_fingerprint_files(&config.data_dir, &config.nickname)?;
    // The link key is RSA 2048, as C tor's: C tor 0.4.9 logs a warning ("expecting an rsa
    // key") for every connection to a relay whose link certificate has another key type. The
    // control shard replaces the certificate every `link_cert_lifetime_secs`.
    let cert = LinkCert::generate(
        LinkKeyAlg::Rsa2048,
        now,
        config.control.link_cert_lifetime_secs.saturating_mul(2),
        &mut rng,
    )?;
    let identity_certs = keys.identity_certs(now, &mut rng)?;
    let ctx = Arc::new(RelayContext {
        server: tls::server_config(&cert)?,
        client: tls::client_config()?,
        link_cert_digest: cert.digest(),
        our_addrs: vec![config.or_address.ip()],
        identity_certs,
        keys: keys.clone(),
    });
    let engine = Engine::from_env()?;
    let backend = choose_backend(config.backend)?;
    let n = config.shard_count();
    tracing::info!(
        nickname = %config.nickname,
        fingerprint = %ctx.keys.fingerprint().hex(),
        ed25519 = %ctx.keys.ed25519_identity().base64(),
        or_address = %config.or_address,
        shards = n,
        ?backend,
        shard_memory_max_bytes = config.limits.shard_limits(n).memory_max_bytes,
        tls_provider = crate::tls::chosen_provider().name(),
        "chive relay starting"
    );
    let cores = if config.pin_cores {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    // Bind every listener before starting any thread, so that a taken port fails the start.
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n {
        listeners.push(
            reactor::bind_reuseport(config.or_address).map_err(|source| DaemonError::Io {
                what: "binding the ORPort",
                source,
            })?,
        );
    }
    // One wake-up eventfd per shard, and the cross-shard mesh over them (crate::xshard).
    let mut wakers = Vec::with_capacity(n);
    for _ in 0..n {
        wakers.push(Arc::new(reactor::Waker::new().map_err(|source| {
            DaemonError::Io {
                what: "creating a shard's eventfd",
                source,
            }
        })?));
    }
    let links = xshard::mesh(
        wakers
            .iter()
            .map(|w| w.clone() as Arc<dyn xshard::Wake>)
            .collect(),
    );
    let mut threads: Vec<JoinHandle<()>> = Vec::with_capacity(n + 1);
    let mut handles = Vec::with_capacity(n);
    for ((i, listener), (link, wake)) in listeners
        .into_iter()
        .enumerate()
        .zip(links.into_iter().zip(wakers))
    {
        let mut shard = Shard::new(
            ctx.clone(),
            engine,
            config.limits.shard_limits(n),
            config.limits.circuit_limits(),
        )?;
        shard
            .core_mut()
            .set_echo_drop_for_tests(config.testing_echo_drop);
        let gauges = Arc::new(ShardGauges::default());
        handles.push(ShardHandle {
            tx: link.tx.get(i).cloned().ok_or(DaemonError::Io {
                what: "wiring the shards",
                source: io::Error::other("missing queue"),
            })?,
            wake: wake.clone(),
            gauges: gauges.clone(),
        });
        shard.set_xlink(link);
        shard.set_gauges(gauges);
        let core = (!cores.is_empty())
            .then(|| cores.get(i % cores.len()).copied())
            .flatten();
        let stop = stop.clone();
        let t = std::thread::Builder::new()
            .name(format!("chive-shard-{i}"))
            .spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        tracing::warn!(shard = i, "could not pin to a core");
                    }
                }
                if let Err(e) = reactor::run_shard(backend, shard, listener, Some(wake), &stop) {
                    tracing::error!(shard = i, error = %e, "shard failed; stopping the relay");
                    stop.store(true, Ordering::Relaxed);
                }
            })
            .map_err(|source| DaemonError::Io {
                what: "starting a shard thread",
                source,
            })?;
        threads.push(t);
    }
    if config.testing_echo_drop {
        tracing::warn!(
            "testing_echo_drop is on: RELAY_DROP cells are reflected (test networks only)"
        );
    }
    let control = Control {
        config: config.control,
        keys,
        ctx: ctx.clone(),
        data_dir: config.data_dir.clone(),
        shards: handles,
    };
    let control_stop = stop.clone();
    threads.push(
        std::thread::Builder::new()
            .name("chive-control".into())
            .spawn(move || control.run(&control_stop, CONTROL_TICK))
            .map_err(|source| DaemonError::Io {
                what: "starting the control thread",
                source,
            })?,
    );
    tracing::info!("chive relay running");
    for t in threads {
        let _ = t.join();
    }
    tracing::info!("chive relay stopped");
    Ok(())
}

/// The backend for `choice`, logging a fallback.
fn choose_backend(choice: BackendChoice) -> Result<Backend, DaemonError> {
    match choice {
        BackendChoice::Poll => Ok(Backend::Poll),
        BackendChoice::IoUring => reactor::uring_probe()
            .map(|()| Backend::IoUring)
            .map_err(DaemonError::NoUring),
        BackendChoice::Auto => match reactor::uring_probe() {
            Ok(()) => Ok(Backend::IoUring),
            Err(e) => {
                tracing::warn!(error = %e, "io_uring unavailable; using the poll backend");
                Ok(Backend::Poll)
            }
        },
    }
}
