//! The reactors: the loops that drive one [`Shard`] per thread with sockets and a clock.
//!
//! - [`poll`]: the portable backend (`mio`: epoll on Linux, kqueue elsewhere).
//! - `uring` (Linux): io_uring; with `wake`, the only modules of the crate with `unsafe` code.
//! - `wake` (Linux): the eventfd other shards write to wake this shard's reactor.
//!
//! Each shard thread has its own listening socket bound with `SO_REUSEPORT` on the same ORPort
//! ([`bind_reuseport`]), so the kernel spreads incoming connections over the shards and no
//! connection is ever handed from one thread to another. Outbound channels (for EXTEND2) are
//! opened by the shard whose circuit needs them when no shard has one (see [`crate::shard`]);
//! cells of circuits using another shard's channel cross over queues, and each reactor waits
//! on its [`Waker`] (an eventfd) along with its sockets.

pub mod poll;
#[cfg(target_os = "linux")]
pub mod uring;
#[cfg(target_os = "linux")]
pub mod wake;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};

use crate::shard::Shard;

/// Longest sleep of a reactor, so that it notices the stop flag.
pub const TICK: Duration = Duration::from_millis(100);

/// Backlog of each shard's listening socket.
const LISTEN_BACKLOG: i32 = 1024;

/// A non-blocking listening socket on `addr` that other shards may bind too (`SO_REUSEPORT`).
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Wall-clock UNIX seconds, as the shard takes `now`.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Which backend a shard thread runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// [`poll`].
    Poll,
    /// io_uring (Linux).
    IoUring,
}

/// Runs `shard` on `listener` with `backend` until `stop` is set; `wake` is the eventfd other
/// shards write when they queued cells for this one.
pub fn run_shard(
    backend: Backend,
    shard: Shard,
    listener: TcpListener,
    wake: Option<std::sync::Arc<Waker>>,
    stop: &AtomicBool,
) -> io::Result<()> {
    match backend {
        Backend::Poll => poll::run(shard, listener, wake, stop),
        #[cfg(target_os = "linux")]
        Backend::IoUring => uring::run(shard, listener, wake, stop),
        #[cfg(not(target_os = "linux"))]
        Backend::IoUring => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring needs Linux",
        )),
    }
}

/// The reactor's wake-up handle ([`wake::EventFd`] on Linux).
#[cfg(target_os = "linux")]
pub type Waker = wake::EventFd;
/// The reactor's wake-up handle: none off Linux (the reactor notices cells within a [`TICK`]).
#[cfg(not(target_os = "linux"))]
pub type Waker = crate::xshard::NoWake;

/// Whether `stop` was set.
fn stopped(stop: &AtomicBool) -> bool {
    stop.load(Ordering::Relaxed)
}

/// Whether this kernel lets us set up an io_uring (seccomp or `io_uring_disabled` may refuse).
pub fn uring_probe() -> io::Result<()> {
    #[cfg(target_os = "linux")]
    return uring::probe();
    #[cfg(not(target_os = "linux"))]
    return Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "io_uring needs Linux",
    ));
}
