//! The io_uring reactor (Linux): one ring per shard thread.
//!
//! - The listening socket has one multishot accept armed at all times (re-armed when the
//!   kernel ends it).
//! - Each connection has at most one receive and one send in flight. A receive lands in the
//!   connection's own buffer, allocated when the connection starts; a send goes from the
//!   connection's own send buffer, swapped with the shard's ciphertext buffer
//!   ([`Shard::take_transmit`]: no copy), and a short send is resubmitted from where it
//!   stopped. Multishot
//!   receives into a provided-buffer ring were tried and measured with `chive demo --seconds 3`
//!   (2-vCPU AMD EPYC, shared, release, A/B alternating): 16 KiB x 256 buffers gave 20-25%
//!   fewer hop-cells per relay CPU-second than one 64 KiB receive per connection, 64 KiB x 64
//!   about 10% fewer; not kept. Registered buffers (`IORING_REGISTER_BUFFERS`: one pool of
//!   128 receive + send pairs, `READ_FIXED`/`WRITE_FIXED` for the connections that got one)
//!   were measured the same way, five alternating runs each of
//!   `chive demo --seconds 3 --backend io_uring`: 482-575 k hop-cells per relay CPU-second
//!   (mean 532 k) against 527-682 k (mean 596 k) with plain receive and send; not kept either.
//!   Page pinning per operation is cheap next to the TLS and TCP work per byte here.
//! - Outbound connects for EXTEND2 are `IORING_OP_CONNECT` on a fresh socket.
//! - Submissions are batched: everything one iteration wants goes out in one
//!   `io_uring_enter`, which also waits for at least one completion (or the tick timer).
//! - Completions are drained into a fixed array, then processed; processing never re-enters the
//!   ring.
//! - Send coalescing: an open channel's ciphertext under [`COALESCE_BYTES`] waits, at most
//!   [`COALESCE_DELAY`] (a one-shot flush timer), for more cells. When cells trickle in a few
//!   per wakeup, each `send` on loopback TCP costs far more than its bytes; measured with
//!   `chive-bench relay --rate 60000 --window 32` (chive as R, 2-vCPU AMD EPYC), this took R
//!   from about 5.2 to 2.3 µs of CPU per relayed cell, and the round trip's p50 from 0.15 to
//!   0.6 ms (C tor's is about 8 ms). Handshakes are never held. Gathering completions
//!   instead (kernel 6.12's `min_wait_usec`: a wait returns at 16 completions, or after 50 µs
//!   at the first) was measured the same way and not kept: 1.56-1.73 → 2.02-2.13 µs per cell.
//!
//! Memory safety rests on one rule: a buffer or address handed to the kernel stays owned by its
//! slot, unmoved, until the operation's completion arrives. A closed connection's slot is
//! therefore kept (its operations cancelled) until nothing is in flight, and only then freed.
//! The ring is dropped only after every slot has drained.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};
use rand::rngs::StdRng;
use rand::SeedableRng;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{stopped, unix_now, TICK};
use crate::shard::{CloseReason, ConnId, Shard, ShardEvent};

/// Submission queue entries per ring.
const RING_ENTRIES: u32 = 1024;
/// Completions processed per drain.
const CQE_BATCH: usize = 256;
/// Receive buffer per connection.
const RECV_BUF_BYTES: usize = 64 * 1024;
/// Send buffer per connection (the most [`Shard::poll_transmit`] gives at once).
const SEND_BUF_BYTES: usize = 64 * 1024;
/// Iterations at shutdown spent waiting for in-flight operations to be cancelled.
const DRAIN_ROUNDS_MAX: usize = 100;

const OP_ACCEPT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
const OP_CONNECT: u64 = 4;
const OP_TIMER: u64 = 5;
const OP_CANCEL: u64 = 6;
const OP_WAKE: u64 = 7;
const OP_FLUSH: u64 = 8;

/// A connection's ciphertext below this size waits (at most [`COALESCE_DELAY`]) for more cells
/// before it is sent: on loopback and LAN, the kernel's cost per `send` dwarfs its cost per
/// byte, so a trickle of cells sent one wakeup at a time costs several times more CPU per cell.
const COALESCE_BYTES: usize = 16 * 1024;
/// The longest a small send waits ([`COALESCE_BYTES`]); the latency it may add per hop.
const COALESCE_DELAY: Duration = Duration::from_micros(500);

fn user_data(slot: u32, op: u64) -> u64 {
    (u64::from(slot) << 8) | op
}

/// Whether this kernel and its seccomp policy let us run this backend: a ring can be made and
/// multishot accept (5.19) is supported.
pub fn probe() -> io::Result<()> {
    let ring = IoUring::new(8)?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (code, name) in [
        (opcode::AcceptMulti::CODE, "accept"),
        (opcode::Recv::CODE, "recv"),
        (opcode::Send::CODE, "send"),
        (opcode::Connect::CODE, "connect"),
        (opcode::AsyncCancel::CODE, "async cancel"),
        (opcode::PollAdd::CODE, "poll add"),
    ] {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring lacks {name}"),
            ));
        }
    }
    Ok(())
}

struct Slot {
    conn: ConnId,
    stream: TcpStream,
    recv_buf: Box<[u8]>,
    /// Ciphertext taken from the shard ([`Shard::take_transmit`]); `send_off` bytes of it
    /// are sent. Not touched (so not moved) while a send is in flight.
    send_buf: Vec<u8>,
    send_off: usize,
    /// Kept for an in-flight connect.
    connect_addr: Option<Box<SockAddr>>,
    recv_inflight: bool,
    send_inflight: bool,
    connect_inflight: bool,
    cancel_inflight: u8,
    /// The shard forgot the connection: cancel, drain, free.
    closing: bool,
}

impl Slot {
    fn inflight(&self) -> bool {
        self.recv_inflight
            || self.send_inflight
            || self.connect_inflight
            || self.cancel_inflight > 0
    }
}

struct Reactor {
    ring: IoUring,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// Our slot for each live connection. Keyed by the whole id: the shard reuses an index
    /// as soon as it forgets a connection, possibly before we saw its Close event.
    by_conn: HashMap<ConnId, u32>,
    listener: TcpListener,
    accept_armed: bool,
    timer_armed: bool,
    /// Read by the kernel while the timer is in flight.
    tick: Box<types::Timespec>,
    zero: Box<types::Timespec>,
    /// A POLL_ADD on the wake eventfd is in flight.
    wake_armed: bool,
    /// [`COALESCE_DELAY`], read by the kernel while the flush timer is in flight.
    flush_ts: Box<types::Timespec>,
    /// The flush timer is in flight (some connection holds a small send).
    flush_armed: bool,
    /// The flush timer fired: the next [`Reactor::queue_io`] sends everything.
    flush_due: bool,
    /// [`Reactor::queue_io`]'s submissions, kept between iterations (no allocation per loop).
    entries: Vec<squeue::Entry>,
}

/// Runs `shard` on `listener` with io_uring until `stop` is set.
pub fn run(
    mut shard: Shard,
    listener: TcpListener,
    wake: Option<std::sync::Arc<super::Waker>>,
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut rng = StdRng::from_rng(rand::rngs::OsRng).map_err(io::Error::other)?;
    listener.set_nonblocking(false)?;
    let mut r = Reactor {
        ring: IoUring::new(RING_ENTRIES)?,
        slots: Vec::new(),
        free: Vec::new(),
        by_conn: HashMap::new(),
        listener,
        accept_armed: false,
        timer_armed: false,
        tick: Box::new(types::Timespec::from(TICK)),
        zero: Box::new(types::Timespec::from(Duration::ZERO)),
        wake_armed: false,
        flush_ts: Box::new(types::Timespec::from(COALESCE_DELAY)),
        flush_armed: false,
        flush_due: false,
        entries: Vec::new(),
    };
    let mut cqes = [(0u64, 0i32, 0u32); CQE_BATCH];
    let result = loop {
        if stopped(stop) {
            break Ok(());
        }
        if !r.accept_armed {
            let e = opcode::AcceptMulti::new(types::Fd(r.listener.as_raw_fd()))
                .build()
                .user_data(user_data(0, OP_ACCEPT));
            r.push(&e)?;
            r.accept_armed = true;
        }
        if let Some(w) = wake.as_ref().filter(|_| !r.wake_armed) {
            // POLL_ADD points at no memory: the eventfd is read (drained) here, not by the
            // kernel.
            let e = opcode::PollAdd::new(types::Fd(w.as_raw_fd()), libc::POLLIN as u32)
                .build()
                .user_data(user_data(0, OP_WAKE));
            r.push(&e)?;
            r.wake_armed = true;
        }
        if !r.timer_armed {
            let ts: *const types::Timespec = if shard.has_ready_cells() {
                &*r.zero
            } else {
                &*r.tick
            };
            let e = opcode::Timeout::new(ts)
                .build()
                .user_data(user_data(0, OP_TIMER));
            r.push(&e)?;
            r.timer_armed = true;
        }
        // Cells already waiting in TLS: submit without sleeping.
        let want = usize::from(!shard.has_ready_cells());
        match r.ring.submit_and_wait(want) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        }
        let mut n = 0;
        for cqe in r.ring.completion() {
            if let Some(c) = cqes.get_mut(n) {
                *c = (cqe.user_data(), cqe.result(), cqe.flags());
                n += 1;
            }
            if n == CQE_BATCH {
                break;
            }
        }
        let now = unix_now();
        for &(ud, res, flags) in cqes.get(..n).unwrap_or_default() {
            r.complete(&mut shard, &mut rng, ud, res, flags, now);
        }
        if let Some(w) = wake.as_ref().filter(|_| !r.wake_armed) {
            w.drain();
        }
        shard.process_batch(&mut rng, now);
        if shard.next_timeout().is_some_and(|t| t <= now) {
            shard.handle_timeout(now);
        }
        r.handle_events(&mut shard)?;
        r.queue_io(&mut shard)?;
        r.handle_events(&mut shard)?;
    };
    r.shutdown();
    result
}

impl Reactor {
    /// Queues one submission, flushing the queue to the kernel first if it is full.
    fn push(&mut self, e: &squeue::Entry) -> io::Result<()> {
        if self.ring.submission().is_full() {
            self.ring.submit()?;
        }
        // SAFETY: every entry built in this module points only at memory owned by a slot
        // (receive/send buffers, connect address) or by the reactor (timespecs), which stays
        // allocated and unmoved (boxed) until the entry's completion has been processed: slots
        // are freed only when nothing is in flight, and the ring is dropped only after
        // `shutdown` drained it.
        let pushed = unsafe { self.ring.submission().push(e) };
        pushed.map_err(|_| io::Error::other("io_uring submission queue full"))
    }

    fn insert(&mut self, slot: Slot) -> u32 {
        let conn = slot.conn;
        let index = match self.free.pop() {
            Some(i) => {
                if let Some(s) = self.slots.get_mut(i as usize) {
                    *s = Some(slot);
                }
                i
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_conn.insert(conn, index);
        index
    }

    fn new_slot(conn: ConnId, stream: TcpStream) -> Slot {
        Slot {
            conn,
            stream,
            recv_buf: vec![0u8; RECV_BUF_BYTES].into_boxed_slice(),
            send_buf: Vec::with_capacity(SEND_BUF_BYTES),
            send_off: 0,
            connect_addr: None,
            recv_inflight: false,
            send_inflight: false,
            connect_inflight: false,
            cancel_inflight: 0,
            closing: false,
        }
    }

    fn complete(
        &mut self,
        shard: &mut Shard,
        rng: &mut StdRng,
        ud: u64,
        res: i32,
        flags: u32,
        now: u64,
    ) {
        let op = ud & 0xff;
        let index = (ud >> 8) as u32;
        match op {
            OP_TIMER => self.timer_armed = false,
            OP_FLUSH => {
                self.flush_armed = false;
                self.flush_due = true;
            }
            // The cells are taken by the next `process_batch`; the eventfd is drained there.
            OP_WAKE => self.wake_armed = false,
            OP_ACCEPT => {
                if !cqueue::more(flags) {
                    self.accept_armed = false;
                }
                if res < 0 {
                    return;
                }
                // SAFETY: a non-negative accept result is a new socket descriptor that nothing
                // else owns; the TcpStream takes ownership and closes it on drop.
                let stream = unsafe { TcpStream::from_raw_fd(res as RawFd) };
                let Ok(peer) = stream.peer_addr() else { return };
                let _ = stream.set_nodelay(true);
                let Some(conn) = shard.handle_accepted(rng, peer, now) else {
                    tracing::warn!(%peer, "connection refused: shard connection table full");
                    return;
                };
                tracing::debug!(%peer, "accepted");
                self.insert(Self::new_slot(conn, stream));
            }
            OP_RECV | OP_SEND | OP_CONNECT | OP_CANCEL => {
                let Some(Some(slot)) = self.slots.get_mut(index as usize) else {
                    return;
                };
                let conn = slot.conn;
                match op {
                    OP_RECV => {
                        slot.recv_inflight = false;
                        if slot.closing {
                            // Cancelled or late: the shard has forgotten the connection.
                        } else if res > 0 {
                            let data = slot.recv_buf.get(..res as usize).unwrap_or_default();
                            shard.handle_recv(conn, data, now);
                        } else if res == 0 {
                            shard.handle_eof(conn);
                        } else {
                            shard.handle_close(conn);
                        }
                    }
                    OP_SEND => {
                        slot.send_inflight = false;
                        if slot.closing {
                            // As above.
                        } else if res >= 0 {
                            slot.send_off = slot.send_off.saturating_add(res as usize);
                            shard.handle_sent(conn, res as usize);
                        } else {
                            shard.handle_close(conn);
                        }
                    }
                    OP_CONNECT => {
                        slot.connect_inflight = false;
                        slot.connect_addr = None;
                        if slot.closing {
                            // As above.
                        } else if res == 0 {
                            tracing::debug!(peer = ?slot.stream.peer_addr().ok(), "connected");
                            shard.handle_connected(conn);
                        } else {
                            tracing::debug!("outbound connect failed");
                            shard.handle_connect_failed(conn);
                        }
                    }
                    _ => slot.cancel_inflight = slot.cancel_inflight.saturating_sub(1),
                }
                self.reap(index);
            }
            _ => {}
        }
    }

    /// Frees a closing slot once nothing is in flight.
    fn reap(&mut self, index: u32) {
        let done =
            matches!(self.slots.get(index as usize), Some(Some(s)) if s.closing && !s.inflight());
        if done {
            if let Some(s) = self.slots.get_mut(index as usize) {
                *s = None;
            }
            self.free.push(index);
        }
    }

    fn handle_events(&mut self, shard: &mut Shard) -> io::Result<()> {
        while let Some(ev) = shard.poll_event() {
            match ev {
                ShardEvent::Connect { conn, addr } => {
                    tracing::debug!(%addr, "connecting for EXTEND2");
                    match new_socket(addr) {
                        Ok(stream) => {
                            let mut slot = Self::new_slot(conn, stream);
                            let sa = Box::new(SockAddr::from(addr));
                            let e = opcode::Connect::new(
                                types::Fd(slot.stream.as_raw_fd()),
                                sa.as_ptr().cast(),
                                sa.len(),
                            )
                            .build();
                            slot.connect_addr = Some(sa);
                            slot.connect_inflight = true;
                            let index = self.insert(slot);
                            self.push(&e.user_data(user_data(index, OP_CONNECT)))?;
                        }
                        Err(_) => shard.handle_connect_failed(conn),
                    }
                }
                ShardEvent::Close { conn, reason } => {
                    let bye = shard.take_close_notify(conn);
                    let Some(index) = self.by_conn.remove(&conn) else {
                        continue;
                    };
                    // The last ciphertext and TLS close_notify, without blocking, unless a
                    // send is in flight (its bytes are part of `bye`: they would go twice).
                    if let (Some(bye), Some(Some(s))) = (bye, self.slots.get(index as usize)) {
                        if !s.send_inflight && !s.connect_inflight {
                            let sock = socket2::SockRef::from(&s.stream);
                            // The rest of a short send goes first; the close_notify only if
                            // all of it went.
                            let rest = s.send_buf.get(s.send_off..).unwrap_or_default();
                            let sent_rest = rest.is_empty()
                                || sock
                                    .send_with_flags(rest, libc::MSG_DONTWAIT)
                                    .is_ok_and(|n| n == rest.len());
                            if sent_rest {
                                let _ = sock.send_with_flags(&bye, libc::MSG_DONTWAIT);
                            }
                        }
                    }
                    self.close_slot(index, reason)?;
                }
            }
        }
        Ok(())
    }

    /// Cancels a slot's operations; it is freed when they complete.
    fn close_slot(&mut self, index: u32, reason: CloseReason) -> io::Result<()> {
        let mut cancels = Vec::new();
        if let Some(Some(s)) = self.slots.get_mut(index as usize) {
            tracing::debug!(peer = ?s.stream.peer_addr().ok(), ?reason, "connection closed");
            s.closing = true;
            let _ = s.stream.shutdown(std::net::Shutdown::Both);
            for (inflight, op) in [
                (s.recv_inflight, OP_RECV),
                (s.send_inflight, OP_SEND),
                (s.connect_inflight, OP_CONNECT),
            ] {
                if inflight {
                    cancels.push(user_data(index, op));
                }
            }
            s.cancel_inflight = s.cancel_inflight.saturating_add(cancels.len() as u8);
        }
        for ud in cancels {
            let e = opcode::AsyncCancel::new(ud)
                .build()
                .user_data(user_data(index, OP_CANCEL));
            self.push(&e)?;
        }
        self.reap(index);
        Ok(())
    }

    /// Arms a receive for every connection the shard wants to read and a send for every one
    /// with bytes to send. This looks at every slot once per iteration (O(connections));
    /// a ready list is a later optimisation.
    fn queue_io(&mut self, shard: &mut Shard) -> io::Result<()> {
        let mut entries = std::mem::take(&mut self.entries);
        entries.clear();
        // Small sends wait (at most COALESCE_DELAY) for more cells, unless the flush timer
        // fired.
        let hold_below = if std::mem::take(&mut self.flush_due) {
            0
        } else {
            COALESCE_BYTES
        };
        let mut held = false;
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Some(s) = slot else { continue };
            if s.closing || s.connect_inflight {
                continue;
            }
            let index = index as u32;
            if !s.recv_inflight && shard.wants_read(s.conn) {
                s.recv_inflight = true;
                entries.push(
                    opcode::Recv::new(
                        types::Fd(s.stream.as_raw_fd()),
                        s.recv_buf.as_mut_ptr(),
                        s.recv_buf.len() as u32,
                    )
                    .build()
                    .user_data(user_data(index, OP_RECV)),
                );
            }
            if !s.send_inflight {
                // The rest of a short send first; else the shard's next bytes, handed over
                // without a copy.
                if s.send_off >= s.send_buf.len() {
                    s.send_off = 0;
                    if shard.take_transmit(s.conn, &mut s.send_buf, hold_below) == 0
                        && shard.has_transmit(s.conn)
                    {
                        held = true;
                    }
                }
                if let Some(rest) = s.send_buf.get(s.send_off..).filter(|r| !r.is_empty()) {
                    let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
                    s.send_inflight = true;
                    entries.push(
                        opcode::Send::new(types::Fd(s.stream.as_raw_fd()), rest.as_ptr(), len)
                            .build()
                            .user_data(user_data(index, OP_SEND)),
                    );
                }
            }
        }
        // Drain the shard's writable list; the loop above already looked at every slot.
        while shard.poll_writable().is_some() {}
        if held && !self.flush_armed {
            let ts: *const types::Timespec = &*self.flush_ts;
            entries.push(
                opcode::Timeout::new(ts)
                    .build()
                    .user_data(user_data(0, OP_FLUSH)),
            );
            self.flush_armed = true;
        }
        let pushed = entries.iter().try_for_each(|e| self.push(e));
        self.entries = entries;
        pushed
    }

    /// Cancels everything and waits (bounded) for the kernel to give every buffer back.
    fn shutdown(&mut self) {
        let indices: Vec<u32> = (0..self.slots.len() as u32).collect();
        for i in indices {
            let _ = self.close_slot(i, CloseReason::Local);
        }
        for _ in 0..DRAIN_ROUNDS_MAX {
            if self.slots.iter().all(Option::is_none) {
                return;
            }
            if self.ring.submit_and_wait(1).is_err() {
                break;
            }
            let done: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (ud, _) in done {
                let op = ud & 0xff;
                let index = (ud >> 8) as u32;
                if let Some(Some(s)) = self.slots.get_mut(index as usize) {
                    match op {
                        OP_RECV => s.recv_inflight = false,
                        OP_SEND => s.send_inflight = false,
                        OP_CONNECT => s.connect_inflight = false,
                        OP_CANCEL => s.cancel_inflight = s.cancel_inflight.saturating_sub(1),
                        _ => {}
                    }
                }
                self.reap(index);
            }
        }
        // Buffers still owned by the kernel must outlive the process's use of them: leak them
        // rather than free memory the kernel may still write.
        for s in self.slots.drain(..).flatten() {
            if s.inflight() {
                std::mem::forget(s);
            }
        }
    }
}

fn new_socket(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_nodelay(true)?;
    Ok(s.into())
}
