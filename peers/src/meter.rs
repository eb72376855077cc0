//! Metering bulk stream data into a connection that also carries datagrams (issue 7: the
//! customer's pointer arrives within the path's delay plus 50 ms while a snapshot streams).
//!
//! The relay forwards a snapshot to an agent as fast as the agent's connection takes it. Left
//! to quinn, that connection sends in bursts: its pacer holds a bucket of at least ten
//! datagrams and refills it whole, so a stream with data waiting goes out ten datagrams (at
//! 750 kbit/s, 130 ms of queue at the bottleneck) at a time, and the first flight to a new
//! agent twice that. And stream data fills the congestion window, so a pointer datagram that
//! arrives while the window is full waits for an acknowledgement before quinn sends it. Both
//! delays land on the pointer, which the relay forwards as a datagram on the same connection.
//!
//! The consumer's own DOM streams meet the same two delays on the customer's link, where its
//! pointer datagrams share the connection with a snapshot or a large patch (a navigation): its
//! [`crate::pump::DomPump`] writes through a meter as well, and so does every
//! [`crate::resources::Uplink`] (the consumer's blobs, and those the relay answers from its
//! cache). The meters of one connection share one bucket, so together they keep its rate.
//!
//! A [`SendMeter`] stands between a writer (a forwarder, the pump) and the connection it writes
//! to:
//!
//! ```text
//!  forwarder ──chunk──► Outlet: whole pieces ──SendMeter::admit──► SendStream::write_chunk
//!                         (coalesced across chunks,     tokens at PACING_GAIN × window ÷ RTT,
//!                          flushed when the source       room for RESERVE datagrams kept in
//!                          has nothing more ready)       the window (congestion::Occupancy)
//! ```
//!
//! - **Rate.** Pieces are admitted at quinn's own pacing rate ([`PACING_GAIN`] × window ÷
//!   smoothed RTT) from a bucket that holds one piece ([`PIECE`], two datagrams, or what the
//!   rate carries in [`BURST_INTERVAL`] on a fast path), so the connection never sends more
//!   than that at once. The rate is the pacer's: what the meter gives up is the head start of
//!   quinn's bursts, which on a slow path is queue in front of the pointer and on a fast one
//!   part of the first round trip (see below). Once the congestion controller has capped the
//!   window at what the path holds ([`crate::congestion::QueueGuard`]), the rate is at most
//!   that window ÷ the smallest RTT ([`Occupancy::pace`]): the bottleneck's own rate and a
//!   little headroom, where 1.25 × window ÷ RTT would queue a quarter more for as long as the
//!   window has room (a snapshot's second round trip). After a round trip in which the connection's
//!   meters admitted nothing, the next window goes at [`RESTART_GAIN`] (1.0), not 1.25: the
//!   window is then an old estimate of what the path holds, and a quarter more than the path's
//!   rate would queue a fifth of it before acknowledgements clock the sender again.
//! - **Room for datagrams.** A piece waits while it would leave less than [`RESERVE`]
//!   datagrams of the congestion window free ([`crate::congestion::Occupancy`]): a datagram
//!   handed to quinn always finds room and leaves at once.
//! - **Whole packets.** quinn sends what a write gives it as soon as the pacer lets it, so a
//!   chunk a few bytes larger than a packet became a full packet and one of a few bytes. The
//!   [`Outlet`] joins chunks into whole pieces and writes a partial one only when the source
//!   has nothing more to read.
//! - **Priority.** The meters of a connection share one bucket, and a writer waits while one of
//!   a higher priority does: quinn orders streams by priority only among the data it holds,
//!   and a metered writer hands it data a piece at a time, so without this a resource stream
//!   would take every other piece from a DOM stream.
//!
//! A metered sender would look application-limited to quinn most of the time, which would stop
//! Cubic's growth; [`crate::congestion::ShallowQueue`] counts a sender that kept half its
//! window in flight as limited by the window (RFC 7661), so the window grows as before.
//!
//! On a fast path the bucket allows a whole [`BURST_INTERVAL`] of data at once and pieces grow
//! to match (up to [`MAX_PIECE`] and a quarter of the window), so metering costs a few writes
//! per millisecond, not one per datagram.
//!
//! What it costs: a new connection's first window leaves at the pacing rate instead of half of
//! it at once. On a path whose first window is limited by pacing rather than by the link (at
//! 50 ms each way and 10 Mbit/s) that put 0–72 ms on a page's first render (5 % over the 14
//! corpus pages, `TANDEM_E2E_LINKS=1 cargo bench -p tandem-benches --bench e2e`). Metering only
//! while datagrams flow, or only past a stream's first window, was tried and gave that back,
//! and with it the pointer: at 750 kbit/s the first window's burst is the queue the pointer
//! meets a round trip later, since quinn's rate (1.02 × that link's at the initial window)
//! never drains it.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn::{Connection, RecvStream, SendStream};

use crate::congestion::{self, Occupancy};

/// The pacing rate as a multiple of window ÷ smoothed RTT: quinn's pacer uses 1.25 (RFC 9002
/// §7.7's N), so that the window, not the pacer, limits a sender.
pub const PACING_GAIN: f64 = 1.25;

/// The pacing gain for the first window after the connection's meters admitted nothing for a
/// round trip. The window is then an old estimate, about what the path holds; sent at
/// [`PACING_GAIN`] a fifth of it would queue at the bottleneck before acknowledgements clock
/// the sender again (traced on a navigation at 750 kbit/s: 10 datagrams, 130 ms in front of the
/// pointer). A connection's first flight keeps [`PACING_GAIN`]: a new agent's first render
/// waits for it.
pub const RESTART_GAIN: f64 = 1.0;

/// Datagrams of the congestion window that stream data leaves free for datagrams (at most an
/// eighth of the window).
pub const RESERVE: u64 = 2;

/// The smallest piece admitted at once: two datagrams' worth of stream data (1,200-byte
/// datagrams carry about 1,160 bytes of a stream).
pub const PIECE: usize = 2 * 1150;

/// The largest piece: what a fast path's [`BURST_INTERVAL`] allows is cut to this.
pub const MAX_PIECE: usize = 64 * 1024;

/// The bucket holds what the rate carries in this long (quinn's pacer aims at the same
/// interval), and never less than one [`PIECE`].
pub const BURST_INTERVAL: Duration = Duration::from_millis(2);

/// How often a piece held back for the reserve looks at the window again.
pub const HOLD_POLL: Duration = Duration::from_millis(2);

/// Datagram size the reserve is counted in: Tandem's connections do not probe for larger ones
/// (spec §3.4).
const DATAGRAM: u64 = 1200;

/// A token bucket, apart from any clock or connection so that it can be tested: `rate` bytes a
/// second, at most `burst` at once.
#[derive(Debug, Clone, Default)]
pub struct Bucket {
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    /// Takes `len` bytes at `now` if the bucket holds them and returns `None`; otherwise takes
    /// nothing and returns how long until it will. A new bucket starts full.
    pub fn take(&mut self, now: Instant, len: usize, rate: f64, burst: usize) -> Option<Duration> {
        let burst = burst as f64;
        self.tokens = match self.last {
            None => burst,
            Some(last) => {
                (self.tokens + rate * now.saturating_duration_since(last).as_secs_f64()).min(burst)
            }
        };
        self.last = Some(now);
        let len = len as f64;
        if self.tokens >= len {
            self.tokens -= len;
            return None;
        }
        let missing = len - self.tokens;
        Some(if rate > 0.0 {
            Duration::from_secs_f64(missing / rate)
        } else {
            HOLD_POLL
        })
    }
}

/// What the meters of one connection share: the token bucket, and the priorities of the
/// writers waiting for it.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    bucket: Bucket,
    /// One entry for each writer in [`SendMeter::admit`] now.
    waiting: Vec<i32>,
    /// When a piece was last admitted; `None` before the first.
    last: Option<Instant>,
    /// Bytes still to admit at [`RESTART_GAIN`] after an idle round trip.
    restart_left: u64,
}

impl Gate {
    /// Takes `len` bytes at `now` for a path of `window` bytes and smoothed `rtt`, from a bucket
    /// of `burst` bytes: `None` when they may go, else how long until they may. The rate is
    /// [`PACING_GAIN`] × window ÷ RTT, or [`RESTART_GAIN`] × that for the first window after
    /// more than a round trip in which nothing was admitted, and never more than `pace`, the
    /// rate of a capped window ([`Occupancy::pace`]).
    fn take(
        &mut self,
        now: Instant,
        len: usize,
        (window, rtt): (u64, Duration),
        burst: usize,
        pace: Option<f64>,
    ) -> Option<Duration> {
        if let Some(last) = self.last
            && now.saturating_duration_since(last) > rtt
        {
            self.restart_left = window;
        }
        let gain = if self.restart_left > 0 {
            RESTART_GAIN
        } else {
            PACING_GAIN
        };
        let paced = rate(gain, window, rtt);
        let paced = pace.map_or(paced, |p| p.min(paced));
        let wait = self.bucket.take(now, len, paced, burst);
        if wait.is_none() {
            self.last = Some(now);
            self.restart_left = self.restart_left.saturating_sub(len as u64);
        }
        wait
    }

    /// Whether a writer of higher priority than `priority` is waiting.
    fn outranked(&self, priority: i32) -> bool {
        self.waiting.iter().any(|&p| p > priority)
    }
}

/// A writer's place among those waiting at a [`Gate`], given up when dropped (also when the
/// write is cancelled).
struct Waiting<'a> {
    gate: &'a Mutex<Gate>,
    priority: i32,
}

impl<'a> Waiting<'a> {
    fn new(gate: &'a Mutex<Gate>, priority: i32) -> Self {
        lock(gate).waiting.push(priority);
        Self { gate, priority }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut gate = lock(self.gate);
        if let Some(i) = gate.waiting.iter().position(|&p| p == self.priority) {
            gate.waiting.swap_remove(i);
        }
    }
}

fn lock(gate: &Mutex<Gate>) -> std::sync::MutexGuard<'_, Gate> {
    // Nothing panics while holding it; should something, the bucket stays usable.
    gate.lock().unwrap_or_else(|e| e.into_inner())
}

/// The metering of one connection's stream writes (see the module documentation). Every meter
/// of a connection with a [`congestion::ShallowQueue`] draws from the one bucket kept beside
/// its [`Occupancy`], so all the writers metered into it (DOM streams, forwarded streams,
/// resource streams) share its rate; without one, clones share a bucket of their own.
///
/// A meter writes at a priority, as quinn's streams do ([`quinn::SendStream::set_priority`]):
/// while a writer of higher priority waits for the bucket, one of lower priority is not
/// admitted, so a DOM stream keeps its precedence over resource streams (spec §3.2) although
/// quinn sees the data only once admitted.
#[derive(Debug, Clone)]
pub struct SendMeter {
    conn: Connection,
    occupancy: Option<Arc<Occupancy>>,
    own: Arc<Mutex<Gate>>,
    priority: i32,
}

impl SendMeter {
    /// A meter for writes into `conn`, at priority 0. Without a [`congestion::ShallowQueue`]
    /// to read the bytes in flight from, it meters the rate and keeps no reserve.
    pub fn new(conn: Connection) -> Self {
        Self {
            occupancy: congestion::occupancy(&conn),
            conn,
            own: Arc::default(),
            priority: 0,
        }
    }

    /// This meter, for a writer of `priority` (a stream's priority in quinn's terms: higher
    /// goes first).
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// The gate this meter draws from: the connection's, or its own.
    fn gate(&self) -> &Mutex<Gate> {
        match &self.occupancy {
            Some(o) => o.gate(),
            None => &self.own,
        }
    }

    /// The congestion window and the smoothed RTT now.
    fn path(&self) -> (u64, Duration) {
        let window = match &self.occupancy {
            Some(o) => o.window(),
            None => self.conn.stats().path.cwnd,
        };
        (window, self.conn.rtt().max(Duration::from_micros(100)))
    }

    /// The size of the pieces to admit now: what the bucket holds at the current rate, and no
    /// more than a quarter of the window.
    pub fn piece(&self) -> usize {
        let (window, rtt) = self.path();
        piece_for(window, rate(PACING_GAIN, window, rtt))
    }

    /// Waits until `len` bytes (at most a [`SendMeter::piece`]) may be written.
    pub async fn admit(&self, len: usize) {
        let _waiting = Waiting::new(self.gate(), self.priority);
        loop {
            let (window, rtt) = self.path();
            if let Some(o) = &self.occupancy {
                let in_flight = o.in_flight();
                // With nothing in flight a piece always goes. A window of a few datagrams (a
                // very slow path) keeps an eighth free, not half of itself.
                let reserve = (RESERVE * DATAGRAM).min(window / 8);
                if in_flight > 0 && in_flight + len as u64 + reserve > window {
                    if self.conn.close_reason().is_some() {
                        // Nothing will be acknowledged any more; the write reports the loss.
                        return;
                    }
                    tokio::time::sleep(HOLD_POLL).await;
                    continue;
                }
            }
            let burst = piece_for(window, rate(PACING_GAIN, window, rtt)).max(len);
            let wait = {
                let mut gate = lock(self.gate());
                if gate.outranked(self.priority) {
                    Some(HOLD_POLL)
                } else {
                    let pace = self.occupancy.as_ref().and_then(|o| o.pace());
                    gate.take(Instant::now(), len, (window, rtt), burst, pace)
                }
            };
            match wait {
                None => return,
                Some(d) => tokio::time::sleep(d.max(Duration::from_millis(1))).await,
            }
        }
    }
}

/// `gain` × `window` ÷ `rtt`, in bytes a second.
fn rate(gain: f64, window: u64, rtt: Duration) -> f64 {
    gain * window as f64 / rtt.as_secs_f64()
}

/// The size of a piece, and of the bucket, for a `window` and a `rate` in bytes a second: what
/// the bucket holds at that rate ([`burst`]), and no more than a quarter of the window, so that
/// one piece can go while three are in flight.
fn piece_for(window: u64, rate: f64) -> usize {
    burst(rate).min(usize::try_from(window / 4).unwrap_or(usize::MAX).max(PIECE))
}

/// [`BURST_INTERVAL`]'s worth at `rate` bytes a second, within [`PIECE`]..=[`MAX_PIECE`].
fn burst(rate: f64) -> usize {
    let bytes = rate * BURST_INTERVAL.as_secs_f64();
    if bytes.is_finite() {
        (bytes as usize).clamp(PIECE, MAX_PIECE)
    } else {
        MAX_PIECE
    }
}

/// The writing end of a forwarder or the DOM pump: without a meter it writes each chunk as it
/// comes; with one it joins chunks into whole pieces and writes each when the meter admits it.
#[derive(Debug, Default)]
pub struct Outlet {
    meter: Option<SendMeter>,
    pending: BytesMut,
}

impl Outlet {
    /// An outlet that writes through `meter`, or straight when `None`.
    pub fn new(meter: Option<SendMeter>) -> Self {
        Self {
            meter,
            pending: BytesMut::new(),
        }
    }

    /// Writes from now on at `priority` ([`SendMeter::with_priority`]).
    pub fn set_priority(&mut self, priority: i32) {
        if let Some(m) = self.meter.as_mut() {
            m.priority = priority;
        }
    }

    /// Bytes taken but not yet written.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Takes `chunk` and writes every whole piece of what is pending to `to`.
    pub async fn put(
        &mut self,
        to: &mut SendStream,
        chunk: Bytes,
    ) -> Result<(), quinn::WriteError> {
        if self.meter.is_none() {
            return to.write_chunk(chunk).await;
        }
        self.pending.extend_from_slice(&chunk);
        self.drain(to, false).await
    }

    /// Writes what is pending to `to`, in pieces as the meter admits them.
    pub async fn flush(&mut self, to: &mut SendStream) -> Result<(), quinn::WriteError> {
        self.drain(to, true).await
    }

    /// Writes pending pieces as the meter admits them: every whole one, and with `all` the
    /// partial last one too.
    async fn drain(&mut self, to: &mut SendStream, all: bool) -> Result<(), quinn::WriteError> {
        let Some(meter) = &self.meter else {
            return Ok(());
        };
        while !self.pending.is_empty() {
            let piece = meter.piece();
            if self.pending.len() < piece && !all {
                break;
            }
            let bytes = self
                .pending
                .split_to(piece.min(self.pending.len()))
                .freeze();
            meter.admit(bytes.len()).await;
            to.write_chunk(bytes).await?;
        }
        Ok(())
    }
}

/// What reading the next chunk found: a chunk, the end of the stream, or an error.
pub(crate) type ChunkRead = Result<Option<Bytes>, quinn::ReadError>;

/// Reads the next chunk of `from` for `outlet`: when the outlet holds a partial piece and
/// `from` has nothing ready, the piece is written to `to` first (it would otherwise wait for
/// data that may not come). Returns the read and the result of that flush.
pub(crate) async fn next_chunk(
    from: &mut RecvStream,
    outlet: &mut Outlet,
    to: Option<&mut SendStream>,
    max: usize,
) -> (ChunkRead, Result<(), quinn::WriteError>) {
    let mut read = std::pin::pin!(from.read_chunk(max, true));
    let mut flushed = Ok(());
    if outlet.pending() > 0 {
        let ready = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
        if let Poll::Ready(r) = ready {
            return (r.map(|c| c.map(|c| c.bytes)), flushed);
        }
        if let Some(to) = to {
            flushed = outlet.flush(to).await;
        }
    }
    (read.await.map(|c| c.map(|c| c.bytes)), flushed)
}

/// What the tests of metered writers share.
#[cfg(test)]
pub(crate) mod testing {
    use std::future::Future;
    use std::time::Duration;

    use quinn::{Connection, Endpoint};
    use tandem_protocol::message::Role;
    use tokio::task::JoinHandle;

    use crate::congestion;
    use crate::link::Link;
    use crate::transport::{Identity, client_endpoint, connect, server_endpoint};

    /// A client's connection to a server behind an emulated link of 10 ms each way and no rate
    /// limit (no queue, so the window only grows: no cap, no loss, and a sender limited by the
    /// window alone), and a task that reads the first stream the client opens to its end and
    /// returns its length.
    pub(crate) async fn uncongested_path() -> (Endpoint, Connection, JoinHandle<usize>) {
        let identity = Identity::generate().unwrap();
        let server = server_endpoint("127.0.0.1:0".parse().unwrap(), &identity).unwrap();
        let link = Link::spawn(server.local_addr().unwrap(), &"10ms".parse().unwrap())
            .await
            .unwrap();
        let addr = link.addr();
        let reader = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let mut s = conn.accept_uni().await.unwrap();
            let len = s.read_to_end(1 << 26).await.unwrap().len();
            drop((link, conn, server));
            len
        });
        let end = client_endpoint(identity.fingerprint(), Role::Consumer).unwrap();
        let conn = connect(&end, addr).await.unwrap();
        (end, conn, reader)
    }

    /// Samples `conn`'s congestion window every millisecond until `until` is ready, and returns
    /// its output, the samples that found data in flight, and how many of those found no room
    /// in the window for a datagram. On a path with no queue and no loss the window only grows,
    /// so a metered writer should leave room in nearly all of them; quinn left to itself fills
    /// the window whenever the stream has data waiting.
    pub(crate) async fn window_samples<T>(
        conn: &Connection,
        until: impl Future<Output = T>,
    ) -> (T, u32, u32) {
        let occupancy = congestion::occupancy(conn).expect("a ShallowQueue connection");
        let mut until = std::pin::pin!(until);
        let (mut busy, mut full) = (0, 0);
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        loop {
            tokio::select! {
                out = &mut until => return (out, busy, full),
                _ = tick.tick() => {
                    let in_flight = occupancy.in_flight();
                    // Read second: the window only grows here, so this one is at least the
                    // window the bytes in flight were sent under.
                    let window = occupancy.window();
                    if in_flight > 0 {
                        busy += 1;
                        if in_flight + 1200 > window {
                            full += 1;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framed::{ForwardEnd, forward_stream};
    use crate::link::Link;
    use crate::transport::{Identity, client_endpoint, connect, server_endpoint};
    use tandem_protocol::message::Role;
    use tandem_protocol::{FrameType, Limits, RawFrame};

    /// Frames of `n` bytes each (unknown optional frames, which the relay forwards unread).
    fn frames(count: usize, n: usize) -> Vec<u8> {
        let frame = RawFrame {
            ty: FrameType(0x1001),
            body: vec![7; n],
        }
        .to_bytes();
        frame
            .iter()
            .copied()
            .cycle()
            .take(frame.len() * count)
            .collect()
    }

    /// A relay's endpoint with two clients: `from` opens a stream that the relay forwards,
    /// metered, to `to`; returns what `to` read (or the code it stopped with after `stop_after`
    /// bytes), how the forwarding ended, and the datagrams the relay sent to `to`.
    async fn forward(payload: Vec<u8>, stop_after: Option<usize>) -> (Vec<u8>, ForwardEnd, u64) {
        let identity = Identity::generate().unwrap();
        let relay = server_endpoint("127.0.0.1:0".parse().unwrap(), &identity).unwrap();
        let addr = relay.local_addr().unwrap();
        let pin = identity.fingerprint();
        let accepting = tokio::spawn(async move {
            let first = relay.accept().await.unwrap().await.unwrap();
            let second = relay.accept().await.unwrap().await.unwrap();
            (relay, first, second)
        });
        let (from_end, to_end) = (
            client_endpoint(pin, Role::Consumer).unwrap(),
            client_endpoint(pin, Role::Agent).unwrap(),
        );
        // `from` connects first, so the relay's first connection is its. `to` is behind a
        // link slow enough that quinn sends each write before the next one comes.
        let from = connect(&from_end, addr).await.unwrap();
        let link = Link::spawn(addr, &"10ms,4mbit".parse().unwrap())
            .await
            .unwrap();
        let to = connect(&to_end, link.addr()).await.unwrap();
        let (_relay, relay_from, relay_to) = accepting.await.unwrap();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            let mut s = from.open_uni().await.unwrap();
            // Writes of odd sizes, so the relay reads chunks that are not whole packets.
            for piece in sent.chunks(1187) {
                if s.write_all(piece).await.is_err() {
                    break;
                }
            }
            let _ = s.finish();
            let stopped = s.stopped().await;
            (from, stopped)
        });
        let recv = relay_from.accept_uni().await.unwrap();
        let send = relay_to.open_uni().await.unwrap();
        let meter = SendMeter::new(relay_to.clone());
        let forwarder = tokio::spawn(forward_stream(recv, send, Limits::DEFAULT, Some(meter)));
        let mut s = to.accept_uni().await.unwrap();
        let got = match stop_after {
            None => s.read_to_end(1 << 24).await.unwrap(),
            Some(n) => {
                let mut got = vec![0; n];
                s.read_exact(&mut got).await.unwrap();
                s.stop(quinn::VarInt::from_u32(77)).unwrap();
                got
            }
        };
        let end = forwarder.await.unwrap().unwrap();
        let (_from, stopped) = writer.await.unwrap();
        if stop_after.is_some() {
            assert_eq!(stopped.unwrap(), Some(quinn::VarInt::from_u32(77)));
        }
        (got, end, relay_to.stats().udp_tx.datagrams)
    }

    #[tokio::test]
    async fn a_metered_stream_arrives_whole_in_full_packets() {
        let payload = frames(1000, 300);
        let (got, end, datagrams) = forward(payload.clone(), None).await;
        assert!(got == payload, "the bytes arrive unchanged");
        assert!(matches!(end, ForwardEnd::Finished { frames: 1000 }));
        // About 1,160 bytes of the stream fit a datagram; pieces written whole fill them, with
        // a few more for the handshake and acknowledgements.
        let full = (payload.len() as u64).div_ceil(1160);
        assert!(
            datagrams < full + full / 10 + 10,
            "{datagrams} datagrams for {full} packets' worth"
        );
    }

    #[tokio::test]
    async fn a_stop_goes_back_through_a_metered_forwarding() {
        // More than the relay's receive window, so that the sender is still writing when the
        // stop comes back.
        let payload = frames(8000, 300);
        let (got, end, _) = forward(payload.clone(), Some(10_000)).await;
        assert_eq!(got, payload[..10_000]);
        assert!(matches!(end, ForwardEnd::DestinationStopped(c) if c.into_inner() == 77));
    }

    #[tokio::test]
    async fn the_meters_of_a_connection_share_its_bucket() {
        let (_a_end, a, _) = testing::uncongested_path().await;
        let (_b_end, b, _) = testing::uncongested_path().await;
        let (a1, a2, b1) = (
            SendMeter::new(a.clone()),
            SendMeter::new(a),
            SendMeter::new(b),
        );
        assert!(std::ptr::eq(a1.gate(), a2.gate()));
        assert!(!std::ptr::eq(a1.gate(), b1.gate()));
        // A piece taken by one meter is gone for the other.
        let (t, piece) = (Instant::now(), a1.piece());
        let take = |m: &SendMeter| lock(m.gate()).bucket.take(t, piece, 1.0, piece);
        assert_eq!(take(&a1), None);
        assert!(take(&a2).is_some());
        assert_eq!(take(&b1), None);
    }

    #[tokio::test]
    async fn a_writer_of_higher_priority_is_admitted_first() {
        let (_end, conn, _) = testing::uncongested_path().await;
        let low = SendMeter::new(conn.clone()).with_priority(-10);
        let high = SendMeter::new(conn).with_priority(10);
        let piece = low.piece();
        // Empty the bucket, so that both have to wait for it.
        assert_eq!(
            lock(low.gate())
                .bucket
                .take(Instant::now(), piece, 1.0, piece),
            None
        );
        let order = Arc::new(Mutex::new(Vec::new()));
        let admit = |m: SendMeter, name: &'static str| {
            let order = order.clone();
            tokio::spawn(async move {
                m.admit(piece).await;
                order.lock().unwrap().push(name);
            })
        };
        // The low one starts waiting first.
        let (l, h) = (admit(low, "low"), admit(high, "high"));
        let _ = tokio::join!(l, h);
        assert_eq!(*order.lock().unwrap(), ["high", "low"]);
    }

    #[test]
    fn the_first_window_after_an_idle_round_trip_goes_at_the_restart_gain() {
        // 60,000 bytes over 600 ms: 125,000 bytes a second at PACING_GAIN, 100,000 at 1.0.
        let path = (60_000, Duration::from_millis(600));
        let t0 = Instant::now();
        let mut g = Gate::default();
        // The first flight: a full bucket, then the pacing gain.
        assert_eq!(g.take(t0, 2300, path, 2300, None), None);
        let wait = g
            .take(t0, 2300, path, 2300, None)
            .expect("the bucket is empty");
        assert_eq!(wait, Duration::from_secs_f64(2300.0 / 125_000.0));
        // Nothing for more than a round trip: the bucket is full again, and the next window
        // is paced at the restart gain.
        let t1 = t0 + Duration::from_millis(700);
        assert_eq!(g.take(t1, 2300, path, 2300, None), None);
        let wait = g
            .take(t1, 2300, path, 2300, None)
            .expect("the bucket is empty");
        assert_eq!(wait, Duration::from_secs_f64(2300.0 / 100_000.0));
        // Once a window's worth went, the pacing gain again.
        let mut t = t1;
        while g.restart_left > 0 {
            t += Duration::from_millis(30);
            assert_eq!(g.take(t, 2300, path, 2300, None), None);
        }
        let wait = g
            .take(t, 2300, path, 2300, None)
            .expect("the bucket is empty");
        assert_eq!(wait, Duration::from_secs_f64(2300.0 / 125_000.0));
    }

    #[test]
    fn a_capped_window_is_admitted_at_its_pace() {
        // 50,000 bytes in flight over 500 ms: 125 KB/s at the pacing gain.
        let path = (50_000, Duration::from_millis(500));
        let t0 = Instant::now();
        let mut g = Gate::default();
        assert_eq!(g.take(t0, 2300, path, 2300, Some(92_000.0)), None);
        let wait = g.take(t0, 2300, path, 2300, Some(92_000.0));
        assert_eq!(wait, Some(Duration::from_secs_f64(2300.0 / 92_000.0)));
        // A pace above the pacer's rate changes nothing.
        let mut g = Gate::default();
        assert_eq!(g.take(t0, 2300, path, 2300, Some(1e9)), None);
        let wait = g.take(t0, 2300, path, 2300, Some(1e9));
        assert_eq!(wait, Some(Duration::from_secs_f64(2300.0 / 125_000.0)));
    }

    #[test]
    fn a_new_bucket_is_full_and_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::default();
        // Full: one burst at once, then nothing.
        assert_eq!(b.take(t0, 2300, 100_000.0, 2300), None);
        let wait = b.take(t0, 2300, 100_000.0, 2300).expect("empty");
        assert_eq!(wait, Duration::from_secs_f64(0.023));
        // 23 ms later the piece is there, and no more.
        let t1 = t0 + Duration::from_millis(23);
        assert_eq!(b.take(t1, 2300, 100_000.0, 2300), None);
        assert!(b.take(t1, 1, 100_000.0, 2300).is_some());
    }

    #[test]
    fn a_bucket_never_holds_more_than_its_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::default();
        assert_eq!(b.take(t0, 2300, 1_000.0, 2300), None);
        // A long pause refills one burst, not the pause's worth.
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(b.take(t1, 2300, 1_000.0, 2300), None);
        assert!(b.take(t1, 100, 1_000.0, 2300).is_some());
    }

    #[test]
    fn pieces_are_two_datagrams_on_a_slow_path_and_grow_on_a_fast_one() {
        // 750 kbit/s: 2 ms carries 188 bytes, less than a piece.
        assert_eq!(burst(750_000.0 / 8.0), PIECE);
        // 100 Mbit/s: 2 ms carries 25 KB.
        assert_eq!(burst(100e6 / 8.0), 25_000);
        assert_eq!(burst(10e9), MAX_PIECE);
        assert_eq!(burst(f64::INFINITY), MAX_PIECE);
    }
}
