//! Resources over QUIC (spec §3.2, §14): the pump around the engine's sans-I/O
//! [`tandem_engine::resource`] parts. Nothing here decides what to send or what to want; the
//! engine does. This module opens and reads the streams.
//!
//! ```text
//!  consumer                           relay                                   agent
//!  ────────                           ─────                                   ─────
//!  ConsumerResources                                                          Downlink
//!   Uplink ── resource stream ──► forward_observed ──► resource stream ──► ResourceReceiver
//!   (ResourceSender, one uni          │ SharedCache::observe                 │ poll_want
//!    stream per blob, priority        │ (cacheable, verified)                ▼
//!    below the DOM stream)            ▼                          WANT, WANT_AGAIN (control)
//!        ▲                        SharedCache::answer ◄──────────────────────┘
//!        └──── WANT (the rest) ◄──────┤
//!                                     └─ Uplink (relay → agent, from the cache)
//! ```
//!
//! * [`Uplink`] owns a [`ResourceSender`] and writes its pieces, one unidirectional stream per
//!   blob at [`RESOURCE_PRIORITY`] (below the DOM stream's and the control stream's), resets
//!   the streams the sender cancels and hands the receiver's `STOP_SENDING` back to it. It keeps
//!   at most [`RESOURCE_WINDOW`] bytes of finished streams unacknowledged, so resources never
//!   fill the connection's send window ahead of a patch.
//! * [`ConsumerResources`] is the consumer's side: it answers `HAVE`, `WANT` and `WANT_AGAIN`
//!   from the consumer's blobs and knows when the agent holds everything the page referred to.
//! * [`Downlink`] is the agent's side: a [`ResourceReceiver`] fed from the resource streams
//!   (told from DOM streams by their first frame, [`is_resource_stream`]), the `WANT`s,
//!   `WANT_AGAIN`s and `HAVE`s it asks for, and `STOP_SENDING` on the streams it refuses.
//! * [`SharedCache`] is the relay's [`RelayCache`], shared by all sessions: it observes the
//!   pieces the relay forwards ([`forward_observed`]) and answers agents' `WANT`s.
//! * [`Transit`] holds the blobs on streams their receiver has not yet acknowledged, the
//!   consumer's (an [`Uplink`]'s) and the relay's forwarded ones: an agent's `WANT` that
//!   crossed a pushed blob on its way is not answered again (spec §14.4); a retry after a
//!   corrupted copy comes as `WANT_AGAIN`, which passes it (§7.37).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tandem_engine::resource::{
    Address, Blob, BlobSource, BlobStore, FileLoader, NoLoader, RelayCache, ResourceConfig,
    ResourceEvent, ResourceLimits, ResourceReceiver, ResourceSender, Resources, SendMode, Transmit,
};
use tandem_engine::{Consumer, Dom};
use tandem_protocol::frame::read_header;
use tandem_protocol::message::{Addresses, Resource};
use tandem_protocol::{DecodeError, ErrorCode, FrameReader, FrameType, Limits, Message, RawFrame};
use tokio::sync::{mpsc, oneshot};

use crate::framed::{ForwardEnd, FrameRecv, FramedError, HeaderCheck, ResetOnDrop, quic_code};
use crate::meter::{Outlet, SendMeter, next_chunk};

/// Priority of resource streams (quinn `SendStream::set_priority`): below the DOM stream
/// ([`crate::session::DOM_PRIORITY`]) and below the control stream (0), so a large image never
/// delays a patch, an `ACK` or a `WANT` (spec §3.2, §14.5).
pub const RESOURCE_PRIORITY: i32 = -10;

/// Bytes of finished resource streams an [`Uplink`] leaves unacknowledged before it writes
/// more. With the blob being written (bounded by the peer's stream flow control) this keeps
/// resources well inside the connection's send window, so a DOM write never waits for them.
pub const RESOURCE_WINDOW: u64 = 256 * 1024;

/// How long a consumer whose changes are all sent and acknowledged waits for the agent to say
/// (`HAVE`) that it holds every blob the page referred to, before it ends the session anyway.
pub const RESOURCE_LINGER: Duration = Duration::from_secs(10);

/// Application code of the `RESET_STREAM` and `STOP_SENDING` of a resource stream nobody needs
/// any more: not an error.
const NOT_NEEDED: VarInt = VarInt::from_u32(0);

/// Bytes read from a forwarded stream at a time.
const READ_CHUNK: usize = 64 * 1024;

// ───────────────────────────── blobs on their way ─────────────────────────────

/// Ready once a carried blob is no longer on its way, as its registrant defines it (a relay's
/// forwarded stream: acknowledged in full, reset, stopped or its connection lost; an
/// [`Uplink`]'s: stopped or its connection lost): a [`Transit`] polls it, without waiting,
/// when a `WANT` asks.
type Arrival = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The blobs on their way to one receiver: each sent on a resource stream that its receiver
/// has not yet acknowledged in full. A sender that pushes blobs (spec §14.4) — the consumer in
/// [`SendMode::Push`], and the relay forwarding those streams to the agent — uses it to drop
/// the addresses of an agent's `WANT` that crossed a blob on its way (the agent asked before
/// the stream reached it):
///
/// ```text
///  relay                          agent
///  stream of X ─────────────┐  ┌─ WANT X        (asked before X arrived: crossed; dropped)
///                           └──┼─► X arrives, hash checked
///  ACK of X's last byte  ◄─────┴── ACK            (X leaves the transit)
///                          ◄────── WANT_AGAIN X   (X did not match: always answered)
/// ```
///
/// A `WANT` that crossed reaches the relay before the stream's acknowledgement does (same path,
/// sent earlier), so the relay reads, when the `WANT` arrives, whether the stream is still
/// unacknowledged: it registers each forwarded stream with its [`SendStream::stopped`] future
/// ([`Transit::carry_until`]), which it polls to read the stream's state in its QUIC
/// connection as it is at that moment (no task needs to run first). A `WANT` lost and sent
/// again may come after the acknowledgement: that blob is then simply sent twice, as without
/// this. A retry after a corrupted copy travels as `WANT_AGAIN` (spec §7.37), which no
/// transit filters: nothing here depends on timing.
///
/// The consumer's streams are acknowledged by the relay, which says nothing of the agent's
/// copy; what reaches the consumer is a `WANT` that passed the relay before the blob did, and
/// it arrives before or with the relay's acknowledgement. The consumer's streams are therefore
/// on their way for as long as they are open and not stopped (an [`Uplink`] watches each for a
/// stop, [`Transit::carry_until`]: a `WANT` that follows a stop is the agent asking for a blob
/// it did not get). Entries live as long as their streams, so the set is bounded by the
/// streams QUIC lets a connection open.
#[derive(Default)]
pub struct Transit {
    on_way: Mutex<HashMap<Address, Vec<Carrier>>>,
    next: AtomicU64,
}

/// One stream carrying an address.
struct Carrier {
    id: u64,
    watch: Watch,
}

/// When a [`Carrier`]'s blob stops being on its way.
enum Watch {
    /// When its guard is dropped.
    Guard,
    /// When this is ready, or its guard is dropped.
    Until(Arrival),
    /// The arrival was seen; only the guard is left.
    Arrived,
}

impl Carrier {
    /// Whether the blob is still on its way, polling its arrival once if it has one.
    fn on_way(&mut self) -> bool {
        match &mut self.watch {
            Watch::Guard => true,
            Watch::Arrived => false,
            Watch::Until(arrival) => {
                let mut cx = Context::from_waker(Waker::noop());
                if arrival.as_mut().poll(&mut cx).is_pending() {
                    return true;
                }
                // Drop the future now: it holds a reference to its connection.
                self.watch = Watch::Arrived;
                false
            }
        }
    }
}

impl std::fmt::Debug for Transit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on_way = lock(&self.on_way);
        f.debug_struct("Transit")
            .field("addresses", &on_way.len())
            .field("streams", &on_way.values().map(Vec::len).sum::<usize>())
            .finish()
    }
}

impl Transit {
    /// An empty transit.
    pub fn new() -> Arc<Self> {
        Arc::new(Transit::default())
    }

    /// Records that a stream carries `address` until the returned guard is dropped (when the
    /// stream was acknowledged in full, reset, stopped or abandoned).
    pub fn carry(self: &Arc<Self>, address: Address) -> Carried {
        self.register(address, Watch::Guard)
    }

    /// Records that a stream carries `address` until `arrived` is ready or the returned guard
    /// is dropped, whichever comes first. `arrived` is never awaited: it is polled, once, by
    /// each check that asks about `address` ([`Transit::drop_on_way`],
    /// [`Transit::is_on_way`]), so it must be a future that is ready
    /// as soon as the state it watches says so (as quinn's [`SendStream::stopped`] is) and must
    /// not need to be woken.
    pub fn carry_until(
        self: &Arc<Self>,
        address: Address,
        arrived: impl Future<Output = ()> + Send + 'static,
    ) -> Carried {
        self.register(address, Watch::Until(Box::pin(arrived)))
    }

    fn register(self: &Arc<Self>, address: Address, watch: Watch) -> Carried {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.on_way)
            .entry(address)
            .or_default()
            .push(Carrier { id, watch });
        Carried {
            transit: self.clone(),
            address,
            id,
        }
    }

    /// Whether a stream carrying `address` is still unacknowledged.
    pub fn is_on_way(&self, address: &Address) -> bool {
        let mut on_way = lock(&self.on_way);
        Self::still_on_way(&mut on_way, address)
    }

    fn still_on_way(on_way: &mut HashMap<Address, Vec<Carrier>>, address: &Address) -> bool {
        on_way
            .get_mut(address)
            .is_some_and(|carriers| carriers.iter_mut().any(Carrier::on_way))
    }

    /// The addresses of an agent's request to answer: a `WANT` less what is on its way now
    /// ([`Transit::drop_on_way`]), a `WANT_AGAIN` whole (it follows a copy that arrived
    /// corrupted, spec §7.37); `None` when nothing is left, or for any other message.
    pub fn answerable(&self, request: &Message) -> Option<Addresses> {
        match request {
            Message::Want(want) => self.drop_on_way(want),
            Message::WantAgain(again) => Some(again.clone()),
            _ => None,
        }
    }

    /// `want` split into the addresses not on their way now and those that are (each
    /// `None` when empty).
    fn split_on_way(&self, want: &Addresses) -> (Option<Addresses>, Option<Addresses>) {
        let mut on_way = lock(&self.on_way);
        let (going, rest): (Vec<[u8; 32]>, Vec<[u8; 32]>) = want
            .addresses
            .iter()
            .partition(|a| Self::still_on_way(&mut on_way, &Address(**a)));
        let some =
            |addresses: Vec<[u8; 32]>| (!addresses.is_empty()).then_some(Addresses { addresses });
        (some(rest), some(going))
    }

    /// `want` without the addresses on their way now (each crossed its stream); `None` when
    /// nothing is left to ask for. Never waits: a `WANT` that crossed a stream arrives before
    /// that stream's acknowledgement, and one sent after the blob arrived finds it there.
    pub fn drop_on_way(&self, want: &Addresses) -> Option<Addresses> {
        let (rest, crossed) = self.split_on_way(want);
        if let Some(crossed) = crossed {
            tracing::debug!(
                dropped = crossed.addresses.len(),
                "WANT crossed blobs on their way"
            );
        }
        rest
    }
}

/// A blob on its way ([`Transit::carry`]): leaves the transit when dropped.
#[derive(Debug)]
pub struct Carried {
    transit: Arc<Transit>,
    address: Address,
    id: u64,
}

impl Drop for Carried {
    fn drop(&mut self) {
        let mut on_way = lock(&self.transit.on_way);
        if let Entry::Occupied(mut e) = on_way.entry(self.address) {
            e.get_mut().retain(|c| c.id != self.id);
            if e.get().is_empty() {
                e.remove();
            }
        }
    }
}

// ───────────────────────────── statistics ─────────────────────────────

/// What an [`Uplink`] wrote, updated as it goes (shared, so a relay can sum all its sessions).
#[derive(Debug, Default)]
pub struct UplinkStats {
    frame_bytes: AtomicU64,
    data_bytes: AtomicU64,
    blobs: AtomicU64,
    resets: AtomicU64,
    stops: AtomicU64,
    /// Blobs started per address, when tracked.
    sends: Option<Mutex<HashMap<Address, u32>>>,
}

impl UplinkStats {
    /// Counters only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counters and how often each blob was sent (for one session: the map grows with the
    /// blobs sent).
    pub fn per_blob() -> Self {
        UplinkStats {
            sends: Some(Mutex::new(HashMap::new())),
            ..Self::default()
        }
    }

    /// The counters now.
    pub fn report(&self) -> UplinkReport {
        let sends = self
            .sends
            .as_ref()
            .map(|m| lock(m).iter().map(|(a, n)| (*a, *n)).collect())
            .unwrap_or_default();
        UplinkReport {
            frame_bytes: self.frame_bytes.load(Ordering::Relaxed),
            data_bytes: self.data_bytes.load(Ordering::Relaxed),
            blobs: self.blobs.load(Ordering::Relaxed),
            resets: self.resets.load(Ordering::Relaxed),
            stops: self.stops.load(Ordering::Relaxed),
            sends,
        }
    }
}

/// What an [`Uplink`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UplinkReport {
    /// Bytes of `RESOURCE` frames handed to QUIC, headers included.
    pub frame_bytes: u64,
    /// Blob bytes handed to QUIC (the `data` of the pieces).
    pub data_bytes: u64,
    /// Blobs whose sending started (one resource stream each).
    pub blobs: u64,
    /// Streams reset because the sender cancelled their blob.
    pub resets: u64,
    /// Streams the receiver stopped.
    pub stops: u64,
    /// How often each blob was started, when tracked ([`UplinkStats::per_blob`]).
    pub sends: BTreeMap<Address, u32>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock; should it, the data stays usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ───────────────────────────── uplink ─────────────────────────────

/// What the owner of an [`Uplink`] tells its task.
#[derive(Debug)]
enum Command {
    Have(Addresses),
    Want(Addresses, Vec<Blob>),
    Offer(Vec<Address>, Vec<Blob>),
    Queue(Vec<Blob>),
}

/// A [`BlobSource`] of blobs looked up beforehand (the task does not own the store).
struct Found(HashMap<Address, Blob>);

impl Found {
    fn new(blobs: Vec<Blob>) -> Self {
        Found(blobs.into_iter().map(|b| (b.address(), b)).collect())
    }
}

impl BlobSource for Found {
    fn blob(&mut self, address: &Address) -> Option<Blob> {
        self.0.get(address).cloned()
    }
}

/// Sends blobs on resource streams of one connection (spec §14.5): a task that owns a
/// [`ResourceSender`], opens a unidirectional stream at [`RESOURCE_PRIORITY`] for each blob,
/// writes its pieces in the sender's order, finishes it after the last, resets the streams of
/// cancelled blobs and hands each `STOP_SENDING` back to the sender. The writes go through
/// the connection's [`SendMeter`] (spec §3.4), whole packets at its pacing rate, so that a
/// blob does not queue in front of the datagrams that share the connection. Dropping the uplink stops
/// it and resets the streams not yet finished.
#[derive(Debug)]
pub struct Uplink {
    tx: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<UplinkStats>,
    transit: Arc<Transit>,
}

impl Uplink {
    /// Starts sending on `conn` with `sender`, counting into `stats`.
    pub fn spawn(
        conn: Connection,
        sender: ResourceSender,
        limits: Limits,
        stats: Arc<UplinkStats>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let transit = Transit::new();
        // Only a pushed blob can cross a `WANT`; a blob sent because it was wanted and asked
        // for again was cut off, so a pulling sender's transit stays empty and lets every
        // `WANT` through.
        let carry = (sender.mode() == SendMode::Push).then(|| transit.clone());
        let task = tokio::spawn(run_uplink(conn, sender, (limits, carry), stats.clone(), rx));
        Uplink {
            tx,
            task,
            stats,
            transit,
        }
    }

    /// The blobs on their way: in [`SendMode::Push`], those on streams neither stopped nor
    /// lost with the connection; in [`SendMode::Pull`], none.
    pub fn transit(&self) -> &Arc<Transit> {
        &self.transit
    }

    /// The receiver holds these (`HAVE`).
    pub async fn have(&self, have: Addresses) {
        let _ = self.tx.send(Command::Have(have)).await;
    }

    /// The receiver asks for these (`WANT`); `blobs` are those of them this side holds.
    pub async fn want(&self, want: Addresses, blobs: Vec<Blob>) {
        let _ = self.tx.send(Command::Want(want, blobs)).await;
    }

    /// Addresses the page came to refer to, with the blobs held (pushed in
    /// [`SendMode::Push`], ignored in [`SendMode::Pull`]).
    pub async fn offer(&self, addresses: Vec<Address>, blobs: Vec<Blob>) {
        let _ = self.tx.send(Command::Offer(addresses, blobs)).await;
    }

    /// Sends these blobs (a relay answering from its cache).
    pub async fn queue(&self, blobs: Vec<Blob>) {
        let _ = self.tx.send(Command::Queue(blobs)).await;
    }

    /// What it wrote so far.
    pub fn stats(&self) -> UplinkReport {
        self.stats.report()
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One resource stream the uplink opened.
struct Open {
    stream: SendStream,
    /// Meters the writes into the connection, joining pieces into whole packets.
    outlet: Outlet,
    written: u64,
    finished: bool,
    watcher: tokio::task::AbortHandle,
    /// In push mode, the blob stays in the uplink's [`Transit`] while this stream is open and
    /// not stopped.
    _carried: Option<Carried>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.watcher.abort();
        if !self.finished {
            // Never let a cut blob look finished (quinn finishes a dropped stream).
            let _ = self.stream.reset(NOT_NEEDED);
        }
    }
}

/// How a watched stream ended: acknowledged (`None`) or stopped by the receiver (`Some`).
type StreamEnd = (u64, Option<VarInt>);

async fn run_uplink(
    conn: Connection,
    mut sender: ResourceSender,
    (limits, transit): (Limits, Option<Arc<Transit>>),
    stats: Arc<UplinkStats>,
    mut rx: mpsc::Receiver<Command>,
) {
    let (end_tx, mut end_rx) = mpsc::channel::<StreamEnd>(64);
    let mut open: HashMap<u64, Open> = HashMap::new();
    let meter = SendMeter::new(conn.clone());
    // Streams found stopped while flushing.
    let mut stopped = Vec::new();
    // Bytes of finished streams not yet acknowledged.
    let mut unacked = 0u64;
    loop {
        loop {
            match rx.try_recv() {
                Ok(c) => apply(&mut sender, c),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        while let Ok(end) = end_rx.try_recv() {
            stream_ended(&mut sender, &mut open, &mut unacked, &stats, end);
        }
        while let Some(s) = sender.poll_reset() {
            if let Some(mut o) = open.remove(&s) {
                if o.finished {
                    unacked = unacked.saturating_sub(o.written);
                } else {
                    let _ = o.stream.reset(NOT_NEEDED);
                    o.finished = true;
                }
                stats.resets.fetch_add(1, Ordering::Relaxed);
            }
        }
        if unacked < RESOURCE_WINDOW
            && let Some(t) = sender.poll_transmit()
        {
            let written = write_piece(
                (&conn, &meter, transit.as_ref()),
                &mut open,
                &end_tx,
                &stats,
                &limits,
                t,
            )
            .await;
            match written {
                Written::Piece { finished } => unacked += finished,
                Written::Stopped(stream) => sender.handle_stop(stream),
                Written::ConnectionGone => return,
            }
            continue;
        }
        // Nothing more to send for now: what the outlets hold back of a packet goes.
        for (&stream, o) in open.iter_mut().filter(|(_, o)| o.outlet.pending() > 0) {
            match o.outlet.flush(&mut o.stream).await {
                Ok(()) => {}
                Err(quinn::WriteError::Stopped(_)) | Err(quinn::WriteError::ClosedStream) => {
                    stopped.push(stream);
                }
                Err(_) => return,
            }
        }
        for stream in stopped.drain(..) {
            open.remove(&stream);
            stats.stops.fetch_add(1, Ordering::Relaxed);
            sender.handle_stop(stream);
        }
        tokio::select! {
            c = rx.recv() => match c {
                Some(c) => apply(&mut sender, c),
                None => return,
            },
            Some(end) = end_rx.recv() => {
                stream_ended(&mut sender, &mut open, &mut unacked, &stats, end);
            }
        }
    }
}

fn apply(sender: &mut ResourceSender, c: Command) {
    match c {
        Command::Have(have) => sender.handle_have(&have),
        Command::Want(want, blobs) => sender.handle_want(&want, &mut Found::new(blobs)),
        Command::Offer(addresses, blobs) => sender.offer(&addresses, &mut Found::new(blobs)),
        Command::Queue(blobs) => {
            for b in blobs {
                sender.queue_blob(b);
            }
        }
    }
}

fn stream_ended(
    sender: &mut ResourceSender,
    open: &mut HashMap<u64, Open>,
    unacked: &mut u64,
    stats: &UplinkStats,
    (stream, stopped): StreamEnd,
) {
    let Some(mut o) = open.remove(&stream) else {
        return;
    };
    if o.finished {
        *unacked = unacked.saturating_sub(o.written);
    }
    if stopped.is_some() {
        stats.stops.fetch_add(1, Ordering::Relaxed);
        sender.handle_stop(stream);
    }
    // Acknowledged or stopped: nothing left to reset.
    o.finished = true;
}

enum Written {
    /// The piece went out; `finished` bytes of a now finished stream await acknowledgement.
    Piece { finished: u64 },
    /// The receiver stopped the stream.
    Stopped(u64),
    /// The connection is gone.
    ConnectionGone,
}

/// Ready once `stopped` (a stream's [`SendStream::stopped`]) says that the receiver stopped
/// the stream or that the connection is gone; never when it says the stream was acknowledged
/// in full. What an [`Uplink`] watches its streams with ([`Transit::carry_until`]): a blob is
/// on its way while its stream is open, whatever the relay acknowledged, and a stop shows as
/// soon as QUIC has it, before the uplink's task has handled it, so that a `WANT` read after
/// the stop is answered.
async fn until_stopped<E>(stopped: impl Future<Output = Result<Option<VarInt>, E>>) {
    if let Ok(None) = stopped.await {
        std::future::pending::<()>().await;
    }
}

async fn write_piece(
    (conn, meter, transit): (&Connection, &SendMeter, Option<&Arc<Transit>>),
    open: &mut HashMap<u64, Open>,
    end_tx: &mpsc::Sender<StreamEnd>,
    stats: &UplinkStats,
    limits: &Limits,
    Transmit { stream, piece, fin }: Transmit,
) -> Written {
    let o = match open.entry(stream) {
        Entry::Occupied(o) => o.into_mut(),
        Entry::Vacant(v) => {
            let s = match conn.open_uni().await {
                Ok(s) => s,
                Err(_) => return Written::ConnectionGone,
            };
            // Only fails on a stream already closed, which a new one is not.
            let _ = s.set_priority(RESOURCE_PRIORITY);
            let stopped = s.stopped();
            let end_tx = end_tx.clone();
            let watcher = tokio::spawn(async move {
                // A lost connection ends the uplink by itself; only stops and acks matter here.
                if let Ok(code) = stopped.await {
                    let _ = end_tx.send((stream, code)).await;
                }
            })
            .abort_handle();
            stats.blobs.fetch_add(1, Ordering::Relaxed);
            if let Some(m) = &stats.sends {
                *lock(m).entry(Address(piece.address)).or_insert(0) += 1;
            }
            let carried =
                transit.map(|t| t.carry_until(Address(piece.address), until_stopped(s.stopped())));
            v.insert(Open {
                stream: s,
                outlet: Outlet::new(Some(meter.clone().with_priority(RESOURCE_PRIORITY))),
                written: 0,
                finished: false,
                watcher,
                _carried: carried,
            })
        }
    };
    let data = piece.data.len() as u64;
    let frame = match tandem_protocol::frame::to_frame(&Message::Resource(piece), limits) {
        Ok(b) => b,
        Err(e) => {
            // A piece the limits cannot carry (a content type too long): drop the blob.
            tracing::warn!(error = %e, "resource piece cannot be encoded; blob dropped");
            open.remove(&stream);
            return Written::Stopped(stream);
        }
    };
    let frame_len = frame.len() as u64;
    // Counted before the write: once QUIC holds the bytes the receiver may have them, and the
    // owner may read the figures, before this task runs again.
    stats.data_bytes.fetch_add(data, Ordering::Relaxed);
    stats.frame_bytes.fetch_add(frame_len, Ordering::Relaxed);
    let mut written = o.outlet.put(&mut o.stream, Bytes::from(frame)).await;
    if fin && written.is_ok() {
        written = o.outlet.flush(&mut o.stream).await;
    }
    match written {
        Ok(()) => {}
        Err(quinn::WriteError::Stopped(_)) | Err(quinn::WriteError::ClosedStream) => {
            open.remove(&stream);
            stats.stops.fetch_add(1, Ordering::Relaxed);
            return Written::Stopped(stream);
        }
        Err(_) => return Written::ConnectionGone,
    }
    o.written += frame_len;
    if fin {
        let _ = o.stream.finish();
        o.finished = true;
        return Written::Piece {
            finished: o.written,
        };
    }
    Written::Piece { finished: 0 }
}

// ───────────────────────────── consumer ─────────────────────────────

/// Where a consumer loads its resources from (spec §14.2): files under `root` for URLs under
/// `root_url`, plus `data:` URLs.
#[derive(Debug, Clone)]
pub struct ResourceOptions {
    /// The directory the consumer serves files from; nothing outside it is read. `None`: no
    /// files, only `data:` URLs and large texts become blobs.
    pub root: Option<PathBuf>,
    /// The URL of `root`; `None`: the directory of the page's URL.
    pub root_url: Option<String>,
    /// How references become blobs.
    pub config: ResourceConfig,
    /// Pull (answer `WANT` only, the default, so a relay's cache can answer) or push.
    pub mode: SendMode,
}

impl ResourceOptions {
    /// Resources of the page `page`: an HTML file (its directory is the root) or a directory
    /// of states (the root itself).
    pub fn for_page(page: &Path) -> Self {
        let root = if page.is_dir() {
            page.to_owned()
        } else {
            page.parent().unwrap_or(Path::new(".")).to_owned()
        };
        ResourceOptions {
            root: Some(root),
            ..Self::without_files()
        }
    }

    /// No files: only `data:` URLs and large texts become blobs (the built-in demo page).
    pub fn without_files() -> Self {
        ResourceOptions {
            root: None,
            root_url: None,
            config: ResourceConfig::default(),
            mode: SendMode::Pull,
        }
    }

    /// The engine's [`Resources`] for a page at `page_url`.
    pub fn resources(&self, page_url: &str) -> Resources {
        let Some(root) = &self.root else {
            return Resources::new(NoLoader, self.config);
        };
        let root_url = match &self.root_url {
            Some(u) => u.clone(),
            None => {
                let url = page_url.split(['?', '#']).next().unwrap_or(page_url);
                url[..url.rfind('/').map_or(url.len(), |i| i + 1)].to_owned()
            }
        };
        Resources::new(FileLoader::new(root, &root_url), self.config)
    }
}

/// The consumer's side of resources in a session: an [`Uplink`] on the consumer's
/// connection, the addresses its page referred to, and those the agent said it holds.
///
/// Call [`ConsumerResources::note_references`] after every flush, feed `HAVE` and `WANT` to
/// [`ConsumerResources::on_message`]; [`ConsumerResources::settled`] says when the agent holds
/// everything.
#[derive(Debug)]
pub struct ConsumerResources {
    uplink: Uplink,
    mode: SendMode,
    referenced: HashSet<Address>,
    agent_has: HashSet<Address>,
    load_errors: u64,
}

impl ConsumerResources {
    /// Starts the uplink on `conn`.
    pub fn spawn(conn: Connection, mode: SendMode, limits: Limits) -> Self {
        ConsumerResources {
            uplink: Uplink::spawn(
                conn,
                ResourceSender::new(mode),
                limits,
                Arc::new(UplinkStats::per_blob()),
            ),
            mode,
            referenced: HashSet::new(),
            agent_has: HashSet::new(),
            load_errors: 0,
        }
    }

    /// Takes the addresses the page came to refer to since the last call (offering them to
    /// the uplink in push mode) and logs the references that could not be loaded.
    pub async fn note_references(&mut self, consumer: &mut Consumer) {
        let Some(r) = consumer.resources_mut() else {
            return;
        };
        while let Some((url, e)) = r.poll_load_error() {
            self.load_errors += 1;
            tracing::debug!(%url, error = %e, "reference left as the page has it");
        }
        let fresh = r.take_new_references();
        if fresh.is_empty() {
            return;
        }
        self.referenced.extend(fresh.iter().copied());
        if self.mode == SendMode::Push {
            let blobs = fresh
                .iter()
                .filter_map(|a| r.store().peek(a).cloned())
                .collect();
            self.uplink.offer(fresh, blobs).await;
        }
    }

    /// Handles `HAVE`, `WANT` and `WANT_AGAIN` from the agent; `false` for any other message.
    pub async fn on_message(&mut self, m: &Message, consumer: &mut Consumer) -> bool {
        match m {
            Message::Have(have) => {
                self.agent_has
                    .extend(have.addresses.iter().map(|a| Address(*a)));
                self.uplink.have(have.clone()).await;
                true
            }
            Message::Want(_) | Message::WantAgain(_) => {
                // A blob pushed and not yet acknowledged by the relay was asked for before it
                // reached the relay (see `Transit`); a retry is answered whatever is on its
                // way (spec §7.37). In pull mode nothing is in the transit (see
                // `Uplink::spawn`).
                let Some(want) = self.uplink.transit().answerable(m) else {
                    return true;
                };
                let blobs = match consumer.resources_mut() {
                    Some(r) => want
                        .addresses
                        .iter()
                        .filter_map(|a| r.store_mut().get(&Address(*a)))
                        .collect(),
                    None => Vec::new(),
                };
                self.uplink.want(want, blobs).await;
                true
            }
            _ => false,
        }
    }

    /// The connection under the resource streams was replaced, or the agent came back on a
    /// new one (spec §3.5): what was in flight is lost, so a new uplink on `conn` starts with
    /// a sender that has sent nothing yet and serves the agent's next `WANT` in full. What
    /// the agent said it holds still counts.
    pub fn reconnect(&mut self, conn: Connection, limits: Limits) {
        let stats = self.uplink.stats.clone();
        let mut sender = ResourceSender::new(self.mode);
        let mut held: Vec<[u8; 32]> = self.agent_has.iter().map(|a| a.0).collect();
        held.sort_unstable();
        sender.handle_have(&Addresses { addresses: held });
        self.uplink = Uplink::spawn(conn, sender, limits, stats);
    }

    /// Whether the agent said it holds every blob the page referred to.
    pub fn settled(&self) -> bool {
        self.referenced.is_subset(&self.agent_has)
    }

    /// Addresses the page referred to.
    pub fn referenced(&self) -> usize {
        self.referenced.len()
    }

    /// References that could not be loaded (left as the page has them).
    pub fn load_errors(&self) -> u64 {
        self.load_errors
    }

    /// What the uplink wrote.
    pub fn stats(&self) -> UplinkReport {
        self.uplink.stats()
    }
}

// ───────────────────────────── agent ─────────────────────────────

/// Whether a unidirectional stream whose first frame has type `ty` is a resource stream
/// (spec §3.2): its first frame is `RESOURCE`. A DOM stream starts with `SNAPSHOT`, or with
/// `COMPRESSED` in a session with compression; resource streams are never compressed as a
/// stream (§4.6 is for DOM streams): a text blob travels coded inside its own `RESOURCE`
/// pieces instead (`coding`, §7.20).
pub fn is_resource_stream(ty: FrameType) -> bool {
    ty == FrameType::RESOURCE
}

/// What a resource stream delivers to the agent's session loop.
#[derive(Debug)]
pub enum Inbound {
    /// A resource stream opened; sending on `stop` stops it (`STOP_SENDING`).
    Opened {
        /// The stream's number (its QUIC stream index).
        stream: u64,
        /// Stops the stream.
        stop: oneshot::Sender<()>,
    },
    /// A piece arrived.
    Piece {
        /// The stream.
        stream: u64,
        /// The piece.
        piece: Resource,
    },
    /// The stream finished, was reset, or was stopped.
    Ended {
        /// The stream.
        stream: u64,
    },
}

/// Reads one resource stream whose first frame, `first`, was read already, sending what it
/// carries to `tx` until the stream ends or the loop asks to stop it. A frame that does not
/// decode is the peer's protocol error; a frame of another known type ends the blob (spec
/// §14.8: not a connection error); unknown optional frames are skipped.
pub async fn read_resource_stream(
    mut recv: FrameRecv,
    first: RawFrame,
    tx: mpsc::Sender<Result<Inbound, FramedError>>,
) {
    let stream = recv.stream_mut().id().index();
    let (stop_tx, mut stop_rx) = oneshot::channel();
    if tx
        .send(Ok(Inbound::Opened {
            stream,
            stop: stop_tx,
        }))
        .await
        .is_err()
    {
        return;
    }
    let limits = *recv.limits();
    let mut next = Some(first);
    loop {
        let frame = match next.take() {
            Some(f) => f,
            None => tokio::select! {
                _ = &mut stop_rx => {
                    let _ = recv.stream_mut().stop(NOT_NEEDED);
                    break;
                }
                f = recv.next_raw() => match f {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) if e.is_protocol() => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    // Reset by the sender, or the connection went away.
                    Err(_) => break,
                },
            },
        };
        match frame.decode(&limits) {
            Ok(Message::Resource(piece)) => {
                if tx.send(Ok(Inbound::Piece { stream, piece })).await.is_err() {
                    return;
                }
            }
            Ok(Message::Unknown(u)) if !u.must_understand() => {}
            Ok(other) => {
                tracing::debug!(ty = %other.frame_type(), "unexpected frame on a resource stream");
                let _ = recv
                    .stream_mut()
                    .stop(quic_code(ErrorCode::UnexpectedMessage));
                break;
            }
            Err(e) => {
                let _ = tx.send(Err(FramedError::Protocol(e))).await;
                return;
            }
        }
    }
    let _ = tx.send(Ok(Inbound::Ended { stream })).await;
}

/// What the agent's resources did in a session.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DownlinkReport {
    /// Blobs received whole and verified.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Blobs discarded because their bytes did not hash to their address.
    pub corrupt: u64,
    /// Blobs whose stream ended before they were whole.
    pub incomplete: u64,
    /// Pieces refused (limits, order; spec §14.8).
    pub refused: u64,
    /// Streams stopped (`STOP_SENDING`).
    pub stopped: u64,
    /// Addresses asked for with `WANT`.
    pub wanted: u64,
    /// Addresses the page refers to that are not held at the end.
    pub missing: u64,
}

/// The agent's side of resources in a session: a [`ResourceReceiver`] fed from the resource
/// streams, the control messages it asks to send, and the stop handles of the open streams.
///
/// Order of calls: send [`Downlink::have`] at the start; feed every [`Inbound`] to
/// [`Downlink::on_inbound`] and call [`Downlink::scan`] after each rendered or patched page;
/// after each, send everything [`Downlink::poll_message`] gives (`WANT`, and a `HAVE` of the
/// blobs received each time nothing is outstanding, which tells the consumer the page is
/// complete).
#[derive(Debug)]
pub struct Downlink {
    rx: ResourceReceiver,
    stops: HashMap<u64, oneshot::Sender<()>>,
    unannounced: Vec<Address>,
    out: VecDeque<Message>,
    report: DownlinkReport,
    changed: bool,
    max_list: usize,
}

impl Downlink {
    /// A downlink keeping blobs in `store` (an agent's cache may outlive a session).
    pub fn new(store: BlobStore, limits: ResourceLimits, protocol: &Limits) -> Self {
        Downlink {
            rx: ResourceReceiver::new(store, limits),
            stops: HashMap::new(),
            unannounced: Vec::new(),
            out: VecDeque::new(),
            report: DownlinkReport::default(),
            changed: false,
            max_list: (protocol.max_list as usize).max(1),
        }
    }

    /// The `HAVE` for the start of the session.
    pub fn have(&self) -> Message {
        Message::Have(self.rx.have())
    }

    /// The blobs held.
    pub fn store(&self) -> &BlobStore {
        self.rx.store()
    }

    /// The store, for the next session.
    pub fn into_store(self) -> BlobStore {
        self.rx.into_store()
    }

    /// Handles what a resource stream delivered.
    pub fn on_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Opened { stream, stop } => {
                self.stops.insert(stream, stop);
            }
            Inbound::Piece { stream, piece } => {
                if let Err(e) = self.rx.handle_piece(stream, &piece) {
                    self.report.refused += 1;
                    tracing::debug!(stream, error = %e, "resource piece refused");
                }
            }
            Inbound::Ended { stream } => {
                self.stops.remove(&stream);
                self.rx.handle_stream_end(stream);
            }
        }
        self.drain();
    }

    /// The connection was replaced, or the consumer came back on a new one (spec §3.5): open
    /// streams are forgotten (their stop handles dropped) and what is still missing is asked for
    /// again ([`Downlink::poll_message`] gives a `HAVE` of what is held, then the `WANT`). Feed
    /// it only [`Inbound`]s of streams
    /// accepted after this call.
    pub fn reconnected(&mut self) {
        self.stops.clear();
        self.rx.reconnected();
        // A HAVE may have been lost with the connection: say again what is held.
        self.out.push_back(self.have());
        self.drain();
    }

    /// Notes what the page refers to (after a snapshot or patch was applied).
    pub fn scan(&mut self, dom: &Dom) {
        self.rx.scan_dom(dom);
        self.drain();
    }

    /// The next control message to send (`WANT` or `HAVE`).
    pub fn poll_message(&mut self) -> Option<Message> {
        self.out.pop_front()
    }

    /// Whether a blob arrived since the last call (the written page is out of date).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// What happened so far; `missing` counts the URIs of `dom` not held.
    pub fn report(&self, missing: usize) -> DownlinkReport {
        DownlinkReport {
            missing: missing as u64,
            ..self.report.clone()
        }
    }

    fn drain(&mut self) {
        while let Some(s) = self.rx.poll_stop() {
            self.report.stopped += 1;
            if let Some(stop) = self.stops.remove(&s) {
                let _ = stop.send(());
            }
        }
        while let Some(ev) = self.rx.poll_event() {
            match ev {
                ResourceEvent::Complete { address, len } => {
                    self.report.blobs += 1;
                    self.report.bytes += len;
                    self.unannounced.push(address);
                    self.changed = true;
                }
                ResourceEvent::Corrupt {
                    address,
                    asked_again,
                } => {
                    self.report.corrupt += 1;
                    tracing::warn!(%address, asked_again, "blob does not match its address; discarded");
                }
                ResourceEvent::Incomplete { .. } => self.report.incomplete += 1,
                _ => {}
            }
        }
        while let Some(w) = self.rx.poll_want() {
            self.report.wanted += w.addresses.len() as u64;
            self.out.push_back(Message::Want(w));
        }
        while let Some(w) = self.rx.poll_want_again() {
            self.report.wanted += w.addresses.len() as u64;
            self.out.push_back(Message::WantAgain(w));
        }
        if !self.unannounced.is_empty()
            && self.rx.in_flight() == 0
            && self.rx.wanted().next().is_none()
        {
            let all = std::mem::take(&mut self.unannounced);
            for chunk in all.chunks(self.max_list) {
                self.out.push_back(Message::Have(Addresses {
                    addresses: chunk.iter().map(|a| a.0).collect(),
                }));
            }
        }
    }
}

// ───────────────────────────── relay ─────────────────────────────

/// The relay's cache (spec §14.7), shared by every session of the relay: a [`RelayCache`]
/// bounded in bytes that keeps only cacheable blobs verified against their address, the
/// statistics of what the relay served from it, and the stream keys that keep observations of
/// different connections apart.
#[derive(Debug)]
pub struct SharedCache {
    cache: Mutex<RelayCache>,
    served: Arc<UplinkStats>,
    next_key: AtomicU64,
    limits: Limits,
}

/// What a relay's cache holds and served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Blobs held.
    pub blobs: usize,
    /// Their bytes.
    pub bytes: u64,
    /// The byte budget.
    pub max_bytes: u64,
    /// Blobs served to agents from the cache.
    pub served_blobs: u64,
    /// Blob bytes served to agents from the cache.
    pub served_bytes: u64,
}

impl SharedCache {
    /// An empty cache of at most `max_bytes` (0 disables caching).
    pub fn new(max_bytes: u64, limits: Limits) -> Self {
        SharedCache {
            cache: Mutex::new(RelayCache::new(max_bytes, ResourceLimits::DEFAULT)),
            served: Arc::new(UplinkStats::new()),
            next_key: AtomicU64::new(0),
            limits,
        }
    }

    /// What it holds and served.
    pub fn stats(&self) -> CacheStats {
        let c = lock(&self.cache);
        let served = self.served.report();
        CacheStats {
            blobs: c.store().len(),
            bytes: c.store().bytes(),
            max_bytes: c.store().max_bytes(),
            served_blobs: served.blobs,
            served_bytes: served.data_bytes,
        }
    }

    /// Whether the cache holds `a`.
    pub fn contains(&self, a: &Address) -> bool {
        lock(&self.cache).contains(a)
    }

    /// An uplink to an agent's connection that serves from this cache.
    pub fn uplink(&self, agent: Connection) -> Uplink {
        Uplink::spawn(
            agent,
            ResourceSender::new(SendMode::Pull),
            self.limits,
            self.served.clone(),
        )
    }

    /// Splits an agent's `WANT` into the blobs the cache holds and the `WANT` to forward.
    pub fn answer(&self, want: &Addresses) -> (Vec<Blob>, Option<Addresses>) {
        let mut c = lock(&self.cache);
        if c.store().max_bytes() == 0 {
            return (Vec::new(), Some(want.clone()));
        }
        c.answer_want(want)
    }

    fn key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    fn observe(&self, key: u64, piece: &Resource) {
        let mut c = lock(&self.cache);
        if c.store().max_bytes() == 0 {
            return;
        }
        if let Err(e) = c.observe(key, piece) {
            tracing::debug!(error = %e, "relay cache does not keep a blob");
        }
    }

    fn observe_end(&self, key: u64) {
        lock(&self.cache).observe_end(key);
    }
}

/// What a forwarded stream turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Its first header has not been read yet.
    Unknown,
    /// A resource stream: its pieces are observed for the cache.
    Resource,
    /// Anything else (DOM streams): forwarded only.
    Other,
}

/// Forwards a consumer's unidirectional stream to the agent like
/// [`crate::framed::forward_stream`] (chunk by chunk, every frame header checked, bytes
/// unchanged, resets and stops propagated), and tells a resource stream from a DOM stream by
/// its first frame's type: a resource stream gets [`RESOURCE_PRIORITY`] on the agent's side
/// and its pieces go to `cache` ([`SharedCache`] keeps the cacheable ones that verify); a DOM
/// stream gets `dom_priority` and its bodies are never decoded. A resource stream's blob is in
/// `transit` from its first piece until the agent acknowledged the whole stream (the task waits
/// for that after finishing it), so that the agent's `WANT` that crossed the blob is not
/// answered a second time ([`Transit::drop_on_way`]).
pub async fn forward_observed(
    mut from: RecvStream,
    to: SendStream,
    limits: Limits,
    (cache, transit): (Arc<SharedCache>, Arc<Transit>),
    (dom_priority, meter): (i32, Option<SendMeter>),
) -> Result<ForwardEnd, FramedError> {
    let key = cache.key();
    let mut carried: Option<Carried> = None;
    let mut to = ResetOnDrop(Some(to));
    let mut check = HeaderCheck::new(limits);
    let mut kind = Kind::Unknown;
    // Bytes held back until the first header says what the stream is (at most a header).
    let mut held: Vec<u8> = Vec::new();
    let mut reader: Option<FrameReader> = None;
    let mut outlet = Outlet::new(meter);
    let result = loop {
        let (read, flushed) = next_chunk(&mut from, &mut outlet, to.stream(), READ_CHUNK).await;
        if let Err(e) = flushed {
            break Err(e.into());
        }
        let chunk = match read {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break Ok(()),
            Err(quinn::ReadError::Reset(code)) => {
                to.reset(code);
                cache.observe_end(key);
                return Ok(ForwardEnd::SourceReset(code));
            }
            Err(e) => break Err(FramedError::from(e)),
        };
        if let Err(e) = check.feed(&chunk) {
            let _ = from.stop(quic_code(e.code()));
            break Err(e.into());
        }
        let out = if kind == Kind::Unknown {
            held.extend_from_slice(&chunk);
            match read_header(&held, &limits) {
                Ok(Some(h)) => {
                    kind = if is_resource_stream(h.ty) {
                        reader = Some(FrameReader::new(limits));
                        Kind::Resource
                    } else {
                        Kind::Other
                    };
                    let priority = match kind {
                        Kind::Resource => RESOURCE_PRIORITY,
                        _ => dom_priority,
                    };
                    let _ = to.stream().map(|s| s.set_priority(priority));
                    outlet.set_priority(priority);
                    Bytes::from(std::mem::take(&mut held))
                }
                Ok(None) => continue,
                // HeaderCheck has refused a bad header already.
                Err(e) => break Err(e.into()),
            }
        } else {
            chunk
        };
        if let Some(r) = reader.as_mut() {
            r.push(&out);
            let mut first = None;
            if let Err(e) = observe_frames(r, &cache, key, &limits, &mut first) {
                let _ = from.stop(quic_code(e.code()));
                break Err(e.into());
            }
            if let (Some(a), None) = (first, &carried) {
                // On its way until the agent acknowledged the whole stream, as its QUIC state
                // says when a WANT is read (or until this task ends).
                carried = Some(match to.stream() {
                    Some(s) => {
                        let stopped = s.stopped();
                        transit.carry_until(Address(a), async move {
                            let _ = stopped.await;
                        })
                    }
                    None => transit.carry(Address(a)),
                });
            }
        }
        let Some(s) = to.stream() else {
            break Ok(());
        };
        if let Err(e) = outlet.put(s, out).await {
            break Err(e.into());
        }
    };
    // The rest of the last piece, unless the source broke off.
    let result = match (result, to.stream()) {
        (Ok(()), Some(s)) => outlet.flush(s).await.map_err(FramedError::from),
        (other, _) => other,
    };
    if let Err(FramedError::Write(quinn::WriteError::Stopped(code))) = result {
        let _ = from.stop(code);
        to.0 = None;
        cache.observe_end(key);
        return Ok(ForwardEnd::DestinationStopped(code));
    }
    cache.observe_end(key);
    if let Err(e) = result {
        to.reset(match &e {
            FramedError::Protocol(d) => quic_code(d.code()),
            _ => quic_code(ErrorCode::SessionEnded),
        });
        return Err(e);
    }
    if let Err(e) = check.finish() {
        to.reset(quic_code(e.code()));
        return Err(e.into());
    }
    // A stream that ended inside its first header was refused by check.finish() above, so
    // nothing is held back here.
    if let Some(mut s) = to.0.take() {
        s.finish()?;
        if let Some(carried) = carried {
            // Acknowledged in full, stopped, or the connection gone: no longer on its way.
            let _ = s.stopped().await;
            drop(carried);
        }
    }
    Ok(ForwardEnd::Finished {
        frames: check.frames(),
    })
}

/// Hands the complete `RESOURCE` frames of `reader` to the cache and the address of the first
/// one to `first`. A frame of the stream that does not decode is the consumer's protocol
/// error, as it would be at the agent.
fn observe_frames(
    reader: &mut FrameReader,
    cache: &SharedCache,
    key: u64,
    limits: &Limits,
    first: &mut Option<[u8; 32]>,
) -> Result<(), DecodeError> {
    while let Some(frame) = reader.next_frame()? {
        if frame.ty != FrameType::RESOURCE {
            continue;
        }
        if let Message::Resource(piece) = frame.decode(limits)? {
            first.get_or_insert(piece.address);
            cache.observe(key, &piece);
        }
    }
    Ok(())
}

// ───────────────────────────── a session in one process ─────────────────────────────

/// One consumer and one agent sharing a page through a running relay, in this process: what
/// the resource tests and the resource benchmark run, twice or more on one relay.
#[derive(Debug, Clone)]
pub struct Pair {
    /// An HTML file (shared as it is) or a directory of states `0.html, 1.html, …` (one
    /// patch each, every `interval`).
    pub page: PathBuf,
    /// The page's URL as the agent is told.
    pub url: String,
    /// Resources by content address; `None`: the consumer does not offer `RESOURCES`.
    pub resources: Option<ResourceOptions>,
    /// The agent's blobs from earlier sessions.
    pub agent_blobs: Option<BlobStore>,
    /// Where the agent writes its page.
    pub out: Option<PathBuf>,
    /// Time between states.
    pub interval: Duration,
}

impl Pair {
    /// The page at `page`, shared with resources from its directory, a fresh agent, no output.
    pub fn new(page: &Path, url: &str) -> Self {
        Pair {
            page: page.to_owned(),
            url: url.to_owned(),
            resources: Some(ResourceOptions::for_page(page)),
            agent_blobs: None,
            out: None,
            interval: Duration::from_millis(20),
        }
    }
}

/// Runs `pair` through the relay at `relay` (pinned by `pin`): the agent joins with the code
/// the consumer gets, and both run to the end of the session.
pub async fn run_pair(
    relay: std::net::SocketAddr,
    pin: crate::transport::Fingerprint,
    pair: Pair,
) -> Result<
    (crate::session::ConsumerReport, crate::session::AgentReport),
    crate::session::SessionError,
> {
    use crate::client::{self, ControlChannel};
    use crate::session::{self, AgentOptions, ChangeSource, ConsumerOptions, SessionError};
    use tandem_protocol::message::{Credential, Role};

    let (html, changes) = if pair.page.is_dir() {
        let html = session::read_page(&pair.page.join("0.html"))?;
        let changes = ChangeSource::States {
            dir: pair.page.clone(),
            next: 1,
        };
        (html, changes)
    } else {
        (session::read_page(&pair.page)?, ChangeSource::None)
    };
    let (code_tx, code_rx) = oneshot::channel::<String>();
    let offer = pair.resources.is_some();
    let consumer = tokio::spawn(async move {
        let conn = client::connect(relay, pin, Role::Consumer).await?;
        let mut hello = client::hello(Role::Consumer);
        if offer {
            hello.capabilities = client::CAPABILITIES_WITH_RESOURCES;
        }
        let ctl = ControlChannel::open(conn, hello).await?;
        let opts = ConsumerOptions {
            html,
            url: pair.url,
            label: "Sam".into(),
            changes,
            interval: pair.interval,
            limits: Limits::DEFAULT,
            policy: Default::default(),
            hands: None,
            invitations: session::Invitations::Decline,
            commands: None,
            preupload: false,
            fold_bytes: None,
        };
        session::run_consumer_with(ctl, opts, pair.resources, |created| {
            let _ = code_tx.send(created.code.clone());
        })
        .await
    });
    let agent = tokio::spawn(async move {
        let code = code_rx
            .await
            .map_err(|_| SessionError::EndedEarly("no session code".into()))?;
        let conn = client::connect(relay, pin, Role::Agent).await?;
        let mut hello = client::hello(Role::Agent);
        hello.capabilities = client::CAPABILITIES_WITH_RESOURCES;
        let mut ctl = ControlChannel::open(conn, hello).await?;
        ctl.join(Credential::Code(code), "Alex").await?;
        let opts = AgentOptions {
            out: pair.out,
            blobs: pair.agent_blobs,
            ..AgentOptions::default()
        };
        session::run_agent(ctl, opts, std::time::Instant::now()).await
    });
    let task_err = |e: tokio::task::JoinError| SessionError::EndedEarly(format!("task: {e}"));
    let c = consumer.await.map_err(task_err)?;
    let a = agent.await.map_err(task_err)?;
    Ok((c?, a?))
}

// ───────────────────────────── measuring ─────────────────────────────

/// Resource bytes of one page's sessions over QUIC on loopback (the `resource_sessions`
/// benchmark): what the consumer uploaded in a first session, in a repeat session with no
/// cache anywhere (a new agent, a relay without cache), in a repeat through the relay's cache
/// (a new agent) and in a repeat where the agent kept its blobs (`HAVE`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SessionBytes {
    /// The page's name.
    pub page: String,
    /// Blobs the page refers to.
    pub blobs: usize,
    /// `RESOURCE` bytes the consumer uploaded in the first session.
    pub first: u64,
    /// … in a repeat session with no relay cache and a new agent.
    pub repeat_no_cache: u64,
    /// … in a repeat session through the relay's cache, with a new agent.
    pub repeat_relay_cache: u64,
    /// Blob bytes the relay served from its cache in that session.
    pub relay_served: u64,
    /// … in a repeat session whose agent kept its blobs from the first.
    pub repeat_agent_cache: u64,
    /// Resource URIs left unresolved in the agent's page, over all four sessions (0 when
    /// every page arrived complete).
    pub missing: u64,
}

/// Measures [`SessionBytes`] for each `(name, page file, URL)`, one page at a time, on a
/// runtime of its own.
pub fn measure_sessions(pages: &[(String, PathBuf, String)]) -> std::io::Result<Vec<SessionBytes>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for (name, path, url) in pages {
        let row = rt
            .block_on(measure_page(name, path, url))
            .map_err(|e| std::io::Error::other(format!("{name}: {e}")))?;
        rows.push(row);
    }
    Ok(rows)
}

async fn measure_page(
    name: &str,
    path: &Path,
    url: &str,
) -> Result<SessionBytes, crate::session::SessionError> {
    use crate::relay::{self, RelayConfig};
    use crate::session::SessionError;

    let spawn = |cache_bytes| {
        let identity = crate::transport::Identity::generate()
            .map_err(|e| SessionError::EndedEarly(format!("identity: {e}")))?;
        let mut config = RelayConfig::new(([127, 0, 0, 1], 0).into(), identity);
        config.cache_bytes = cache_bytes;
        relay::spawn(config).map_err(|e| SessionError::EndedEarly(format!("relay: {e}")))
    };
    let cached = spawn(crate::relay::DEFAULT_CACHE_BYTES)?;
    let plain = spawn(0)?;
    let uploaded = |c: &crate::session::ConsumerReport| {
        c.resources.as_ref().map_or(0, |r| r.uplink.frame_bytes)
    };
    let missing = |a: &crate::session::AgentReport| a.resources.as_ref().map_or(0, |r| r.missing);
    let pair = || Pair::new(path, url);

    let (c1, a1) = run_pair(cached.addr, cached.fingerprint, pair()).await?;
    let (c2, a2) = run_pair(plain.addr, plain.fingerprint, pair()).await?;
    let before = cached.cache_stats().served_bytes;
    let (c3, a3) = run_pair(cached.addr, cached.fingerprint, pair()).await?;
    let relay_served = cached.cache_stats().served_bytes - before;
    let mut again = pair();
    again.agent_blobs = a1.blobs.clone();
    let (c4, a4) = run_pair(plain.addr, plain.fingerprint, again).await?;
    cached.shutdown().await;
    plain.shutdown().await;
    Ok(SessionBytes {
        page: name.to_owned(),
        blobs: c1.resources.as_ref().map_or(0, |r| r.referenced),
        first: uploaded(&c1),
        repeat_no_cache: uploaded(&c2),
        repeat_relay_cache: uploaded(&c3),
        relay_served,
        repeat_agent_cache: uploaded(&c4),
        missing: missing(&a1) + missing(&a2) + missing(&a3) + missing(&a4),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::testing::{uncongested_path, window_samples};

    /// A blob far larger than the congestion window goes through the connection's meter: it
    /// arrives whole, and the window keeps room for a datagram while it streams.
    #[tokio::test]
    async fn an_uplink_leaves_room_in_the_window_for_datagrams() {
        let (_end, conn, reader) = uncongested_path().await;
        let bytes: Vec<u8> = (0..2_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let blob = Blob::new(bytes, "application/octet-stream", true);
        let uplink = Uplink::spawn(
            conn.clone(),
            ResourceSender::new(SendMode::Pull),
            Limits::DEFAULT,
            Arc::new(UplinkStats::new()),
        );
        let sending = async {
            uplink.queue(vec![blob]).await;
            reader.await.unwrap()
        };
        let (received, busy, full) = window_samples(&conn, sending).await;
        let report = uplink.stats();
        assert_eq!((report.blobs, report.data_bytes), (1, 2_000_000));
        assert_eq!(received as u64, report.frame_bytes);
        assert!(busy >= 20, "{busy} samples with data in flight");
        // As for the DOM pump's test: a stale reading now and then.
        assert!(
            full * 50 <= busy,
            "the window was full in {full} of {busy} samples"
        );
    }

    fn want(addresses: &[Address]) -> Addresses {
        Addresses {
            addresses: addresses.iter().map(|a| a.0).collect(),
        }
    }

    #[test]
    fn a_want_drops_what_is_on_its_way() {
        let transit = Transit::new();
        let (x, y) = (Address::of(b"x"), Address::of(b"y"));
        let carried = transit.carry(x);
        // Nothing on its way: the WANT passes whole.
        assert_eq!(transit.drop_on_way(&want(&[y])), Some(want(&[y])));
        // X is on its way while its guard lives, so a WANT for it crossed it.
        assert_eq!(transit.drop_on_way(&want(&[x, y])), Some(want(&[y])));
        assert_eq!(transit.drop_on_way(&want(&[x])), None);
        assert_eq!(
            transit.split_on_way(&want(&[x, y])),
            (Some(want(&[y])), Some(want(&[x])))
        );
        assert_eq!(transit.split_on_way(&want(&[x])), (None, Some(want(&[x]))));
        assert_eq!(transit.split_on_way(&want(&[y])), (Some(want(&[y])), None));
        // Two streams carry X; it is on its way until both are done.
        let again = transit.carry(x);
        drop(carried);
        assert!(transit.is_on_way(&x));
        drop(again);
        assert!(!transit.is_on_way(&x));
        assert_eq!(transit.drop_on_way(&want(&[x])), Some(want(&[x])));
        assert_eq!(
            format!("{transit:?}"),
            "Transit { addresses: 0, streams: 0 }"
        );
    }

    #[test]
    fn a_retry_is_answered_whatever_is_on_its_way() {
        let transit = Transit::new();
        let (x, y) = (Address::of(b"x"), Address::of(b"y"));
        let _carried = transit.carry(x);
        assert_eq!(
            transit.answerable(&Message::Want(want(&[x, y]))),
            Some(want(&[y]))
        );
        assert_eq!(transit.answerable(&Message::Want(want(&[x]))), None);
        assert_eq!(
            transit.answerable(&Message::WantAgain(want(&[x, y]))),
            Some(want(&[x, y]))
        );
        assert_eq!(transit.answerable(&Message::Have(want(&[y]))), None);
    }

    #[test]
    fn an_uplink_stream_leaves_the_transit_when_stopped_not_when_acknowledged() {
        let transit = Transit::new();
        let (x, y, z) = (Address::of(b"x"), Address::of(b"y"), Address::of(b"z"));
        let watch = |address| {
            let (tell, told) = oneshot::channel::<Option<VarInt>>();
            let carried = transit.carry_until(address, until_stopped(told));
            (tell, carried)
        };
        let (acked, _x) = watch(x);
        let (stopped, _y) = watch(y);
        let (lost, _z) = watch(z);
        acked.send(None).expect("watched");
        stopped.send(Some(VarInt::from_u32(0))).expect("watched");
        drop(lost);
        // Acknowledged by the relay says nothing of the agent's copy: still on its way.
        assert!(transit.is_on_way(&x));
        assert!(transit.is_on_way(&x), "and stays so when looked at again");
        // Stopped, or the connection gone: the blob is not coming.
        assert!(!transit.is_on_way(&y));
        assert!(!transit.is_on_way(&z));
    }

    #[test]
    fn a_want_passes_once_the_stream_it_names_is_acknowledged() {
        // The relay's streams leave the transit when their acknowledgement is in the QUIC
        // state, which a WANT sent after it finds there at once: no waiting, no timer.
        let transit = Transit::new();
        let (x, y) = (Address::of(b"x"), Address::of(b"y"));
        let (acked, ack) = oneshot::channel::<()>();
        let connection = Arc::new(());
        let held = connection.clone();
        let carried = transit.carry_until(x, async move {
            let _ = ack.await;
            drop(held);
        });
        assert_eq!(transit.drop_on_way(&want(&[x, y])), Some(want(&[y])));
        assert!(transit.is_on_way(&x));
        acked.send(()).expect("the watch is alive");
        assert_eq!(transit.drop_on_way(&want(&[x, y])), Some(want(&[x, y])));
        // The finished watch was dropped at once (quinn's holds its connection).
        assert_eq!(Arc::strong_count(&connection), 1);
        // Another stream still carrying X keeps it on its way.
        let other = transit.carry(x);
        assert!(transit.is_on_way(&x));
        drop(other);
        assert!(!transit.is_on_way(&x));
        drop(carried);
        assert_eq!(
            format!("{transit:?}"),
            "Transit { addresses: 0, streams: 0 }"
        );
    }
}
