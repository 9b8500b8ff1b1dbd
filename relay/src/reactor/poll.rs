//! The portable reactor: one `mio::Poll` (epoll on Linux) per shard thread, edge-triggered,
//! non-blocking sockets and connects.
//!
//! One iteration: wait for readiness (no wait when the shard has cells ready); accept every
//! pending connection; read every readable socket the shard wants to read (until it would
//! block or backpressure stops it); one [`Shard::process_batch`]; act on the shard's events
//! (connect, close); write what the shard has for each socket; handle the timeout.

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use mio::net::{TcpListener as MioListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::{stopped, unix_now, TICK};
use crate::shard::{CloseReason, ConnId, Shard, ShardEvent};

const LISTENER: Token = Token(usize::MAX);
const WAKE: Token = Token(usize::MAX - 1);
/// Readiness events drained per wait.
const EVENTS_MAX: usize = 1024;
/// Bytes read from a socket per `read` call.
const READ_CHUNK_BYTES: usize = 64 * 1024;

struct Sock {
    stream: TcpStream,
    conn: ConnId,
    /// Readable and not yet read to `WouldBlock`.
    readable: bool,
    /// Outbound connect still in progress.
    connecting: bool,
}

/// The sockets of one shard, by [`ConnId::index`].
struct Socks {
    socks: Vec<Option<Sock>>,
    /// Indices with `readable` set (each once).
    readable: Vec<usize>,
}

impl Socks {
    fn get(&mut self, conn: ConnId) -> Option<&mut Sock> {
        self.socks
            .get_mut(conn.index())
            .and_then(Option::as_mut)
            .filter(|s| s.conn == conn)
    }

    /// Registers `sock` under its index. A socket still there belongs to a connection the
    /// shard already forgot (its Close event not yet seen): it is closed now.
    fn insert(&mut self, poll: &Poll, mut sock: Sock, interest: Interest) -> io::Result<()> {
        let i = sock.conn.index();
        if let Some(Some(old)) = self.socks.get(i) {
            let old = old.conn;
            self.remove(poll, old, CloseReason::Local);
        }
        poll.registry()
            .register(&mut sock.stream, Token(i), interest)?;
        if self.socks.len() <= i {
            self.socks.resize_with(i + 1, || None);
        }
        if let Some(slot) = self.socks.get_mut(i) {
            *slot = Some(sock);
        }
        Ok(())
    }

    fn remove(&mut self, poll: &Poll, conn: ConnId, reason: CloseReason) {
        if let Some(slot) = self.socks.get_mut(conn.index()) {
            if slot.as_ref().is_some_and(|s| s.conn == conn) {
                if let Some(mut s) = slot.take() {
                    let _ = poll.registry().deregister(&mut s.stream);
                    tracing::debug!(peer = ?s.stream.peer_addr().ok(), ?reason, "connection closed");
                }
            }
        }
    }

    fn mark_readable(&mut self, i: usize) {
        if let Some(Some(s)) = self.socks.get_mut(i) {
            if !s.readable {
                s.readable = true;
                self.readable.push(i);
            }
        }
    }
}

/// Runs `shard` on `listener` until `stop` is set.
pub fn run(
    mut shard: Shard,
    listener: TcpListener,
    wake: Option<std::sync::Arc<super::Waker>>,
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut rng = StdRng::from_rng(rand::rngs::OsRng).map_err(io::Error::other)?;
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(EVENTS_MAX);
    listener.set_nonblocking(true)?;
    let mut listener = MioListener::from_std(listener);
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    #[cfg(target_os = "linux")]
    if let Some(w) = &wake {
        use std::os::fd::AsRawFd;
        poll.registry().register(
            &mut mio::unix::SourceFd(&w.as_raw_fd()),
            WAKE,
            Interest::READABLE,
        )?;
    }
    let mut socks = Socks {
        socks: Vec::new(),
        readable: Vec::new(),
    };
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let mut to_write: Vec<ConnId> = Vec::new();
    while !stopped(stop) {
        let now = unix_now();
        let resume_reading = socks.readable.iter().any(|&i| {
            socks
                .socks
                .get(i)
                .and_then(Option::as_ref)
                .is_some_and(|s| shard.wants_read(s.conn))
        });
        let timeout = if shard.has_ready_cells() || resume_reading {
            Duration::ZERO
        } else {
            match shard.next_timeout() {
                Some(t) if t <= now => Duration::ZERO,
                Some(t) => Duration::from_secs(t - now).min(TICK),
                None => TICK,
            }
        };
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let now = unix_now();
        to_write.clear();
        for ev in events.iter() {
            if ev.token() == LISTENER {
                accept_all(&mut shard, &mut rng, &poll, &listener, &mut socks, now);
                continue;
            }
            if ev.token() == WAKE {
                // Cells from other shards: process_batch below takes them.
                #[cfg(target_os = "linux")]
                if let Some(w) = &wake {
                    w.drain();
                }
                continue;
            }
            let i = ev.token().0;
            let Some(Some(s)) = socks.socks.get_mut(i) else {
                continue;
            };
            let conn = s.conn;
            if s.connecting && (ev.is_writable() || ev.is_error() || ev.is_write_closed()) {
                match s.stream.take_error() {
                    Ok(None) if s.stream.peer_addr().is_ok() => {
                        s.connecting = false;
                        tracing::debug!(peer = ?s.stream.peer_addr().ok(), "connected");
                        shard.handle_connected(conn);
                    }
                    Ok(None) if !ev.is_error() => {}
                    _ => {
                        tracing::debug!("outbound connect failed");
                        shard.handle_connect_failed(conn);
                    }
                }
            }
            if ev.is_writable() {
                to_write.push(conn);
            }
            if ev.is_readable() || ev.is_read_closed() {
                socks.mark_readable(i);
            }
        }
        read_ready(&mut shard, &mut socks, &mut buf, now);
        shard.process_batch(&mut rng, now);
        if shard.next_timeout().is_some_and(|t| t <= now) {
            shard.handle_timeout(now);
        }
        handle_events(&mut shard, &poll, &mut socks);
        while let Some(conn) = shard.poll_writable() {
            to_write.push(conn);
        }
        for &conn in &to_write {
            write_conn(&mut shard, &mut socks, conn);
        }
        // Writes may have closed connections or resumed reading.
        handle_events(&mut shard, &poll, &mut socks);
    }
    Ok(())
}

fn accept_all(
    shard: &mut Shard,
    rng: &mut StdRng,
    poll: &Poll,
    listener: &MioListener,
    socks: &mut Socks,
    now: u64,
) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let Some(conn) = shard.handle_accepted(rng, peer, now) else {
                    tracing::warn!(%peer, "connection refused: shard connection table full");
                    continue;
                };
                tracing::debug!(%peer, "accepted");
                let sock = Sock {
                    stream,
                    conn,
                    readable: false,
                    connecting: false,
                };
                if socks
                    .insert(poll, sock, Interest::READABLE | Interest::WRITABLE)
                    .is_err()
                {
                    shard.handle_close(conn);
                } else {
                    // Data may have arrived before registration.
                    socks.mark_readable(conn.index());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                return;
            }
        }
    }
}

fn read_ready(shard: &mut Shard, socks: &mut Socks, buf: &mut [u8], now: u64) {
    let mut list = std::mem::take(&mut socks.readable);
    list.retain(|&i| {
        let Some(Some(s)) = socks.socks.get_mut(i) else {
            return false;
        };
        let conn = s.conn;
        while shard.wants_read(conn) {
            match s.stream.read(buf) {
                Ok(0) => {
                    shard.handle_eof(conn);
                    s.readable = false;
                    return false;
                }
                Ok(n) => shard.handle_recv(conn, buf.get(..n).unwrap_or_default(), now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    s.readable = false;
                    return false;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    shard.handle_close(conn);
                    s.readable = false;
                    return false;
                }
            }
        }
        // Backpressure: still readable, read again once the shard wants it.
        true
    });
    list.append(&mut socks.readable);
    socks.readable = list;
}

fn write_conn(shard: &mut Shard, socks: &mut Socks, conn: ConnId) {
    let Some(s) = socks.get(conn) else { return };
    if s.connecting {
        return;
    }
    loop {
        let data = shard.poll_transmit(conn);
        if data.is_empty() {
            return;
        }
        match s.stream.write(data) {
            Ok(n) => shard.handle_sent(conn, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                shard.handle_close(conn);
                return;
            }
        }
    }
}

fn handle_events(shard: &mut Shard, poll: &Poll, socks: &mut Socks) {
    while let Some(ev) = shard.poll_event() {
        match ev {
            ShardEvent::Connect { conn, addr } => {
                tracing::debug!(%addr, "connecting for EXTEND2");
                let sock = TcpStream::connect(addr).map(|stream| Sock {
                    stream,
                    conn,
                    readable: false,
                    connecting: true,
                });
                let ok = match sock {
                    Ok(sock) => socks
                        .insert(poll, sock, Interest::READABLE | Interest::WRITABLE)
                        .is_ok(),
                    Err(_) => false,
                };
                if !ok {
                    shard.handle_connect_failed(conn);
                }
            }
            ShardEvent::Close { conn, reason } => {
                // The last ciphertext and TLS close_notify, if the socket takes them now.
                if let (Some(bye), Some(s)) = (shard.take_close_notify(conn), socks.get(conn)) {
                    if !s.connecting {
                        let _ = s.stream.write(&bye);
                    }
                }
                socks.remove(poll, conn, reason)
            }
        }
    }
}
