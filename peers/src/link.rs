//! Link emulation owned by the project: a loopback UDP forwarder that makes a connection behave
//! like a slow, lossy access link (DESIGN.md: 300 ms, 750 kbit/s, 1–5 % loss) on machines that
//! have no netem.
//!
//! ```text
//!             near: 127.0.0.1:P                                         far
//!  client ──UDP──►  ┌─ Shaper up:   loss → drop-tail queue → rate → delay ─┐ ──UDP──►  upstream
//!  (connects to P)  └─ Shaper down: loss → drop-tail queue → rate → delay ─┘ ◄──UDP──  (relay)
//! ```
//!
//! - [`LinkSpec`] says what one direction of the link does, parsed from `300ms,750kbit,1%`.
//! - [`Shaper`] is the sans-IO model of one direction (STYLE.md 1): given the time a datagram
//!   arrives and its size, it says when the datagram leaves the link, or that it is dropped.
//!   It reads no clock and draws its losses from a seeded generator, so a test can run it in
//!   virtual time and predict every drop.
//! - [`Link`] is the tokio pump around two shapers: one task per direction receives on one
//!   socket, asks its shaper, and sends on the other socket when the shaper says so. Its
//!   counters ([`Link::stats`]) can be read while it runs, and a test can cut either direction
//!   for a while ([`Link::cut`]), as an outage does.
//!
//! The same model shapes TCP for a baseline over TCP + TLS ([`TcpLink`], [`TcpShaper`]); see
//! [the TCP model](#the-tcp-model) below.
//!
//! The model of one direction, in order: a datagram is lost at random (probability
//! [`LinkSpec::loss_ppm`]); otherwise it joins a FIFO queue in front of the link and is dropped
//! instead when the queue is full ([`LinkSpec::queue`], drop-tail); it is serialized at
//! [`LinkSpec::rate_bps`] once the datagram before it has finished (counting
//! [`UDP_OVERHEAD`] header bytes); then it propagates for [`LinkSpec::delay`]. A datagram stays
//! in the queue until it has been serialized, so the one on the wire counts too.
//!
//! ## The TCP model
//!
//! A TCP link cannot drop bytes: the kernel on either side retransmits them. Since both
//! kernels talk over loopback, [`TcpLink`] models in its [`TcpShaper`]s what TCP would do over
//! the emulated link, and delivers the byte stream at the instants the model says:
//!
//! - The stream is cut into segments of at most [`MSS`] payload bytes (each read from the
//!   sender is cut on its own, as writes with `TCP_NODELAY` are) and each segment crosses a
//!   [`Shaper`] as a datagram of payload + [`TCP_OVERHEAD`] bytes: the same loss draws, rate
//!   and delay as UDP.
//! - Congestion control: at most `cwnd` segments are unacknowledged; `cwnd` starts at
//!   [`INITIAL_WINDOW`] (RFC 6928), grows by one per ACK in slow start and by one per window
//!   above `ssthresh`, and halves once per window on a loss, staying there for a round trip
//!   (Reno). A segment's ACK reaches the sender the opposite direction's delay after the
//!   segment arrived (SACK: a segment behind a hole is acknowledged on arrival). Slow start
//!   after idle is not modelled.
//! - A lost segment takes its place in the link anyway and arrives one round trip (both
//!   directions' delays) later than it would have: fast retransmit, the duplicate ACKs of the
//!   segments behind it taking the round trip back. A retransmission lost again costs a
//!   retransmission timeout of a round trip + [`MIN_RTO`], doubling each time. This is what
//!   TCP pays at best: a tail loss costs it a probe timeout of about two round trips, and the
//!   retransmission also waits behind the queue at the bottleneck; neither is charged.
//! - In-order delivery: the receiving application gets a segment only once every segment
//!   before it has arrived (head-of-line blocking), so a loss holds back everything behind it.
//! - The handshake: the SYN and the SYN-ACK each cross the link (a lost one is sent again
//!   after [`SYN_RTO`], doubling), so the client's first byte leaves one round trip after it
//!   connected; its kernel's `connect` returns at once on loopback, the model holds the bytes.
//! - Counters ([`TcpLink::stats`]) count payload and 40 header bytes per segment delivered,
//!   the handshake's three segments, and a pure ACK for every two data segments received
//!   (delayed ACK, RFC 1122), counted in the direction it travels.
//!
//! ## Example: shape a client's path to a server
//!
//! ```no_run
//! # async fn demo(server: std::net::SocketAddr) -> std::io::Result<()> {
//! use tandem_peers::link::{Link, LinkSpec};
//!
//! let spec: LinkSpec = "300ms,750kbit,1%,seed=7".parse().expect("a valid spec");
//! let link = Link::spawn(server, &spec).await?;
//! // Connect the client to `link.addr()` instead of `server`.
//! let counters = link.stats();
//! println!("{} datagrams lost so far", counters.up.lost + counters.down.lost);
//! # Ok(()) }
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

use crate::transport::bind_address_for;

/// Bytes of IPv4 and UDP headers counted with every datagram's payload when serializing it at
/// the link rate and when filling a byte-limited queue (20 + 8).
pub const UDP_OVERHEAD: usize = 28;

/// The loss seed of a [`LinkSpec`] that does not say `seed=`.
pub const DEFAULT_SEED: u64 = 1;

/// Loss is expressed in parts per million: this many make 100 %.
pub const PPM: u32 = 1_000_000;

/// Largest datagram the forwarder carries (the largest UDP payload).
const MAX_DATAGRAM: usize = 65_535;

/// Kernel buffer size the forwarder asks for on its sockets (the kernel may cap it), so that a
/// burst that arrives while the forwarder is not scheduled waits in the kernel instead of being
/// dropped there, unseen and uncounted.
const SOCKET_BUFFER: usize = 4 << 20;

/// What one direction of an emulated link does to the datagrams crossing it.
///
/// Written as comma-separated items in any order, each at most once:
///
/// | item | meaning | examples |
/// |---|---|---|
/// | `DELAY` | one-way delay, in `us`, `ms` or `s` | `300ms`, `1s` |
/// | `RATE` | link rate, in `bit`, `kbit`, `mbit` or `gbit` per second (10³ steps) | `750kbit`, `10mbit` |
/// | `LOSS` | random loss, in `%` with up to four decimals | `1%`, `0.5%` |
/// | `queue=SIZE` | drop-tail queue limit, in `b`, `kb`, `mb` (2¹⁰ steps, as tc) or `pkt` | `queue=64kb`, `queue=100pkt` |
/// | `seed=N` | seed of the loss generator (default [`DEFAULT_SEED`]) | `seed=7` |
///
/// `none` (or `loopback`) alone is the link that changes nothing. Absent items mean no delay,
/// unlimited rate, no loss and an unbounded queue. [`Display`](fmt::Display) writes the
/// canonical form (delay, rate, loss, queue, seed; the largest exact unit; items at their
/// default left out), which parses back to the same spec:
///
/// ```
/// use tandem_peers::link::LinkSpec;
///
/// let spec: LinkSpec = "1%, 750kbit, 300ms".parse().unwrap();
/// assert_eq!(spec.to_string(), "300ms,750kbit,1%");
/// assert_eq!(spec.rate_bps, Some(750_000));
/// assert_eq!(spec.to_string().parse::<LinkSpec>().unwrap(), spec);
/// assert!("300ms,750kbps".parse::<LinkSpec>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkSpec {
    /// One-way delay every datagram takes after it has been serialized onto the link.
    pub delay: Duration,
    /// Link rate in bits per second; `None` is unlimited (datagrams never wait in the queue).
    pub rate_bps: Option<u64>,
    /// Probability that a datagram is lost, in parts per million ([`PPM`] is 100 %; 10 000
    /// is 1 %). Values above [`PPM`] lose everything.
    pub loss_ppm: u32,
    /// How much the queue in front of the link may hold before arriving datagrams are dropped;
    /// `None` is unbounded. Only a link with a rate ever queues.
    pub queue: Option<QueueLimit>,
    /// Seed of the loss generator: the same seed loses the same datagrams (by arrival order).
    pub seed: u64,
}

/// The limit of a link's drop-tail queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueLimit {
    /// At most this many bytes, headers included ([`UDP_OVERHEAD`] per datagram).
    Bytes(u64),
    /// At most this many datagrams.
    Packets(u64),
}

impl Default for LinkSpec {
    fn default() -> Self {
        Self::none()
    }
}

impl LinkSpec {
    /// The link that changes nothing: no delay, unlimited rate, no loss (`none`, `loopback`).
    pub const fn none() -> Self {
        Self {
            delay: Duration::ZERO,
            rate_bps: None,
            loss_ppm: 0,
            queue: None,
            seed: DEFAULT_SEED,
        }
    }

    /// Whether the link leaves traffic as it is (no delay, no rate limit, no loss), so a
    /// caller may skip the forwarder altogether.
    pub fn is_none(&self) -> bool {
        self.delay.is_zero() && self.rate_bps.is_none() && self.loss_ppm == 0
    }

    /// The time `wire_bytes` bytes take to serialize at the link rate (zero when unlimited).
    pub fn serialization(&self, wire_bytes: usize) -> Duration {
        match self.rate_bps {
            Some(rate) if rate > 0 => {
                let nanos = (wire_bytes as u128 * 8 * 1_000_000_000) / u128::from(rate);
                Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
            }
            _ => Duration::ZERO,
        }
    }
}

/// Why a link spec string does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkSpecError {
    /// The spec, or one of its comma-separated items, is empty.
    #[error("empty link spec item: expected e.g. 300ms,750kbit,1%")]
    Empty,
    /// An item has no unit or one this parser does not know.
    #[error(
        "{item:?}: expected a delay (300ms, 1s), a rate (750kbit, 10mbit), a loss (1%), queue=SIZE or seed=N"
    )]
    UnknownUnit {
        /// The item.
        item: String,
    },
    /// An item's number is malformed or too large.
    #[error("{item:?}: bad number")]
    BadNumber {
        /// The item.
        item: String,
    },
    /// A `key=value` item whose key is neither `queue` nor `seed`.
    #[error("{key:?}: unknown key (expected queue= or seed=)")]
    UnknownKey {
        /// The key.
        key: String,
    },
    /// Two items set the same property.
    #[error("the {what} is given twice")]
    Repeated {
        /// The property: "delay", "rate", "loss", "queue" or "seed".
        what: &'static str,
    },
    /// A loss above 100 %.
    #[error("{item:?}: loss above 100%")]
    LossAbove100 {
        /// The item.
        item: String,
    },
    /// A rate of zero, which would never deliver anything.
    #[error("a rate of 0 never delivers; leave the rate out for an unlimited link")]
    ZeroRate,
    /// A queue limit of zero, which would drop everything.
    #[error("a queue of 0 drops everything; leave queue= out for an unbounded queue")]
    ZeroQueue,
    /// `none` or `loopback` together with other items.
    #[error("{0:?} stands alone: it cannot be combined with other items")]
    NoneWithOthers(String),
}

impl FromStr for LinkSpec {
    type Err = LinkSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let items: Vec<&str> = s.split(',').map(str::trim).collect();
        if let [only] = items.as_slice() {
            let lower = only.to_ascii_lowercase();
            if lower == "none" || lower == "loopback" {
                return Ok(Self::none());
            }
        }
        let mut spec = Self::none();
        let (mut delay, mut rate, mut loss, mut queue, mut seed) =
            (false, false, false, false, false);
        for item in items {
            if item.is_empty() {
                return Err(LinkSpecError::Empty);
            }
            let lower = item.to_ascii_lowercase();
            if lower == "none" || lower == "loopback" {
                return Err(LinkSpecError::NoneWithOthers(item.to_owned()));
            }
            if let Some((key, value)) = lower.split_once('=') {
                match key.trim() {
                    "queue" => {
                        once(&mut queue, "queue")?;
                        spec.queue = Some(parse_queue(item, value.trim())?);
                    }
                    "seed" => {
                        once(&mut seed, "seed")?;
                        spec.seed = value.trim().parse().map_err(|_| bad_number(item))?;
                    }
                    other => {
                        return Err(LinkSpecError::UnknownKey {
                            key: other.to_owned(),
                        });
                    }
                }
                continue;
            }
            let (number, unit) = split_unit(&lower);
            match unit {
                "us" | "ms" | "s" => {
                    once(&mut delay, "delay")?;
                    let n = parse_integer(item, number)?;
                    let micros = match unit {
                        "us" => Some(n),
                        "ms" => n.checked_mul(1_000),
                        _ => n.checked_mul(1_000_000),
                    };
                    spec.delay = Duration::from_micros(micros.ok_or_else(|| bad_number(item))?);
                }
                "bit" | "kbit" | "mbit" | "gbit" => {
                    once(&mut rate, "rate")?;
                    let n = parse_integer(item, number)?;
                    let scale = match unit {
                        "bit" => 1,
                        "kbit" => 1_000,
                        "mbit" => 1_000_000,
                        _ => 1_000_000_000,
                    };
                    let bps = n.checked_mul(scale).ok_or_else(|| bad_number(item))?;
                    if bps == 0 {
                        return Err(LinkSpecError::ZeroRate);
                    }
                    spec.rate_bps = Some(bps);
                }
                "%" => {
                    once(&mut loss, "loss")?;
                    spec.loss_ppm = parse_percent(item, number)?;
                }
                _ => {
                    return Err(LinkSpecError::UnknownUnit {
                        item: item.to_owned(),
                    });
                }
            }
        }
        Ok(spec)
    }
}

/// Marks a property as given; an error the second time.
fn once(seen: &mut bool, what: &'static str) -> Result<(), LinkSpecError> {
    if std::mem::replace(seen, true) {
        Err(LinkSpecError::Repeated { what })
    } else {
        Ok(())
    }
}

fn bad_number(item: &str) -> LinkSpecError {
    LinkSpecError::BadNumber {
        item: item.to_owned(),
    }
}

/// Splits `300ms` into `("300", "ms")`: the number is the leading digits and dots.
fn split_unit(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    (s[..end].trim(), s[end..].trim())
}

fn parse_integer(item: &str, number: &str) -> Result<u64, LinkSpecError> {
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_number(item));
    }
    number.parse().map_err(|_| bad_number(item))
}

/// Parses a percentage with up to four decimals into parts per million.
fn parse_percent(item: &str, number: &str) -> Result<u32, LinkSpecError> {
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) || frac.len() > 4 {
        return Err(bad_number(item));
    }
    let whole: u64 = whole.parse().map_err(|_| bad_number(item))?;
    // At most four digits, padded to four: hundredths of a hundredth of a percent.
    let frac: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<4}")
            .parse()
            .map_err(|_| bad_number(item))?
    };
    let ppm = whole
        .checked_mul(10_000)
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(|| bad_number(item))?;
    if ppm > u64::from(PPM) {
        return Err(LinkSpecError::LossAbove100 {
            item: item.to_owned(),
        });
    }
    // At most PPM, checked just above.
    Ok(ppm as u32)
}

fn parse_queue(item: &str, value: &str) -> Result<QueueLimit, LinkSpecError> {
    let (number, unit) = split_unit(value);
    let n = parse_integer(item, number)?;
    let limit = match unit {
        "b" => QueueLimit::Bytes(n),
        "kb" => QueueLimit::Bytes(n.checked_mul(1 << 10).ok_or_else(|| bad_number(item))?),
        "mb" => QueueLimit::Bytes(n.checked_mul(1 << 20).ok_or_else(|| bad_number(item))?),
        "pkt" | "pkts" | "packets" => QueueLimit::Packets(n),
        _ => {
            return Err(LinkSpecError::UnknownUnit {
                item: item.to_owned(),
            });
        }
    };
    if n == 0 {
        return Err(LinkSpecError::ZeroQueue);
    }
    Ok(limit)
}

impl fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if !self.delay.is_zero() {
            let nanos = self.delay.as_nanos();
            parts.push(if nanos.is_multiple_of(1_000_000_000) {
                format!("{}s", nanos / 1_000_000_000)
            } else if nanos.is_multiple_of(1_000_000) {
                format!("{}ms", nanos / 1_000_000)
            } else {
                // Exact for every delay a string can give; finer delays are truncated to µs.
                format!("{}us", nanos / 1_000)
            });
        }
        if let Some(bps) = self.rate_bps {
            parts.push(largest_unit(
                bps,
                &[
                    (1_000_000_000, "gbit"),
                    (1_000_000, "mbit"),
                    (1_000, "kbit"),
                ],
                "bit",
            ));
        }
        if self.loss_ppm != 0 {
            let (whole, frac) = (self.loss_ppm / 10_000, self.loss_ppm % 10_000);
            if frac == 0 {
                parts.push(format!("{whole}%"));
            } else {
                let frac = format!("{frac:04}");
                parts.push(format!("{whole}.{}%", frac.trim_end_matches('0')));
            }
        }
        match self.queue {
            Some(QueueLimit::Bytes(b)) => parts.push(format!(
                "queue={}",
                largest_unit(b, &[(1 << 20, "mb"), (1 << 10, "kb")], "b")
            )),
            Some(QueueLimit::Packets(p)) => parts.push(format!("queue={p}pkt")),
            None => {}
        }
        if self.seed != DEFAULT_SEED {
            parts.push(format!("seed={}", self.seed));
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

/// `n` in the largest of `units` that divides it exactly, else in `base`.
fn largest_unit(n: u64, units: &[(u64, &str)], base: &str) -> String {
    for &(scale, name) in units {
        if n != 0 && n.is_multiple_of(scale) {
            return format!("{}{name}", n / scale);
        }
    }
    format!("{n}{base}")
}

/// One direction of a [`Link`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client to the upstream address (consumer or agent → relay).
    Up,
    /// From the upstream address back to the client (relay → consumer or agent).
    Down,
}

impl Direction {
    /// What the direction's loss generator mixes into the seed, so that the two directions of
    /// one link do not lose the same datagrams.
    fn salt(self) -> u64 {
        match self {
            Direction::Up => 0,
            Direction::Down => 0xd1b5_4a32_d192_ed03,
        }
    }
}

/// What a [`Shaper`] decided for one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The datagram leaves the link at this instant.
    Deliver(Instant),
    /// The datagram was lost at random.
    Lost,
    /// The queue was full (drop-tail).
    QueueFull,
}

/// The sans-IO model of one direction of a link: no sockets, no clock; the caller passes the
/// arrival time of each datagram to [`Shaper::offer`] and sends the datagram at the instant of
/// [`Verdict::Deliver`]. Deliveries come out in offer order (their instants never decrease), so
/// a FIFO of pending datagrams is all a caller needs.
///
/// Every offer draws exactly one number from the loss generator, whatever the verdict, so which
/// datagrams are lost depends only on the seed, the direction and the arrival order — not on
/// timing. Queue drops do depend on timing.
#[derive(Debug, Clone)]
pub struct Shaper {
    spec: LinkSpec,
    rng: SplitMix64,
    /// When the link finishes serializing the last accepted datagram.
    free_at: Option<Instant>,
    /// Accepted datagrams not yet serialized: (instant serialization ends, wire bytes).
    queue: VecDeque<(Instant, u64)>,
    queued_bytes: u64,
}

impl Shaper {
    /// A shaper for `direction` of a link described by `spec`.
    pub fn new(spec: &LinkSpec, direction: Direction) -> Self {
        Self {
            spec: *spec,
            rng: SplitMix64(spec.seed ^ direction.salt()),
            free_at: None,
            queue: VecDeque::new(),
            queued_bytes: 0,
        }
    }

    /// A datagram of `len` payload bytes arrives at `now` (which never goes backwards from one
    /// call to the next): loses it, drops it at a full queue, or says when it leaves the link.
    pub fn offer(&mut self, now: Instant, len: usize) -> Verdict {
        let draw = self.rng.next_u64() % u64::from(PPM);
        if draw < u64::from(self.spec.loss_ppm) {
            return Verdict::Lost;
        }
        let wire = (len + UDP_OVERHEAD) as u64;
        while let Some(&(done, bytes)) = self.queue.front() {
            if done > now {
                break;
            }
            self.queue.pop_front();
            self.queued_bytes -= bytes;
        }
        let full = match self.spec.queue {
            Some(QueueLimit::Packets(p)) => self.queue.len() as u64 >= p,
            Some(QueueLimit::Bytes(b)) => self.queued_bytes + wire > b,
            None => false,
        };
        if full && self.spec.rate_bps.is_some() {
            return Verdict::QueueFull;
        }
        let start = self.free_at.map_or(now, |free| free.max(now));
        let done = start + self.spec.serialization(wire as usize);
        if self.spec.rate_bps.is_some() {
            self.free_at = Some(done);
            self.queue.push_back((done, wire));
            self.queued_bytes += wire;
        }
        Verdict::Deliver(done + self.spec.delay)
    }

    /// Datagrams and wire bytes in the queue at the last offer (the one on the wire included).
    pub fn queued(&self) -> (usize, u64) {
        (self.queue.len(), self.queued_bytes)
    }
}

/// SplitMix64: a small deterministic generator for the loss draws.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Counters of one direction of a [`Link`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DirectionCounters {
    /// Datagrams forwarded (sent on to the other side).
    pub packets: u64,
    /// UDP payload bytes forwarded (headers not counted).
    pub bytes: u64,
    /// Datagrams lost at random, or offered while the direction was cut ([`Link::cut`]).
    pub lost: u64,
    /// Datagrams dropped because the queue was full.
    pub queue_dropped: u64,
}

/// Counters of both directions of a [`Link`], as read by [`Link::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkCounters {
    /// Client → upstream.
    pub up: DirectionCounters,
    /// Upstream → client.
    pub down: DirectionCounters,
}

#[derive(Debug, Default)]
struct AtomicCounters {
    packets: AtomicU64,
    bytes: AtomicU64,
    lost: AtomicU64,
    queue_dropped: AtomicU64,
}

impl AtomicCounters {
    fn read(&self) -> DirectionCounters {
        DirectionCounters {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            queue_dropped: self.queue_dropped.load(Ordering::Relaxed),
        }
    }
}

/// A running link emulator: a UDP forwarder on `127.0.0.1` between one client and an upstream
/// address, shaping each direction with its own [`Shaper`]. The first datagram that reaches
/// [`Link::addr`] becomes the client; a datagram from another address makes that address the
/// client from then on, as a NAT follows a client that comes back from a new port (a peer that
/// resumes on a new connection, spec §3.5).
///
/// The forwarder stops when the `Link` is dropped (or [`Link::shutdown`]).
#[derive(Debug)]
pub struct Link {
    addr: SocketAddr,
    upstream: SocketAddr,
    up: LinkSpec,
    down: LinkSpec,
    counters: Arc<[AtomicCounters; 2]>,
    client: Arc<Mutex<Option<SocketAddr>>>,
    /// Per direction (up, down): whether the link is cut (see [`Link::cut`]).
    cut: Arc<[AtomicBool; 2]>,
    tasks: [JoinHandle<()>; 2],
}

impl Link {
    /// Starts a forwarder to `upstream` that shapes both directions as `spec` says (each
    /// direction with its own queue and loss draws). Must be called inside a tokio runtime.
    pub async fn spawn(upstream: SocketAddr, spec: &LinkSpec) -> io::Result<Link> {
        Self::spawn_asymmetric(upstream, spec, spec).await
    }

    /// Like [`Link::spawn`] with a different spec for each direction: `up` for client →
    /// upstream, `down` for upstream → client.
    pub async fn spawn_asymmetric(
        upstream: SocketAddr,
        up: &LinkSpec,
        down: &LinkSpec,
    ) -> io::Result<Link> {
        let near = Arc::new(bind_udp((Ipv4Addr::LOCALHOST, 0).into())?);
        let far = bind_udp(bind_address_for(upstream))?;
        far.connect(upstream).await?;
        let far = Arc::new(far);
        let addr = near.local_addr()?;
        let counters: Arc<[AtomicCounters; 2]> = Arc::default();
        let client = Arc::new(Mutex::new(None));
        let cut: Arc<[AtomicBool; 2]> = Arc::default();
        let up_task = tokio::spawn(pump(Pump {
            direction: Direction::Up,
            shaper: Shaper::new(up, Direction::Up),
            near: near.clone(),
            far: far.clone(),
            client: client.clone(),
            counters: counters.clone(),
            cut: cut.clone(),
        }));
        let down_task = tokio::spawn(pump(Pump {
            direction: Direction::Down,
            shaper: Shaper::new(down, Direction::Down),
            near,
            far,
            client: client.clone(),
            counters: counters.clone(),
            cut: cut.clone(),
        }));
        Ok(Link {
            addr,
            upstream,
            up: *up,
            down: *down,
            counters,
            client,
            cut,
            tasks: [up_task, down_task],
        })
    }

    /// Starts a forwarder as [`Link::spawn`] does, unless `spec` shapes nothing
    /// ([`LinkSpec::is_none`]): then the client should talk to `upstream` directly.
    pub async fn spawn_unless_none(
        upstream: SocketAddr,
        spec: &LinkSpec,
    ) -> io::Result<Option<Link>> {
        if spec.is_none() {
            Ok(None)
        } else {
            Self::spawn(upstream, spec).await.map(Some)
        }
    }

    /// The address the client sends to instead of the upstream address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The upstream address datagrams are forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The client, once its first datagram has arrived: the address that sent last.
    pub fn client(&self) -> Option<SocketAddr> {
        *self.client.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The specs of the two directions: (client → upstream, upstream → client).
    pub fn specs(&self) -> (LinkSpec, LinkSpec) {
        (self.up, self.down)
    }

    /// Cuts `direction` (`true`) or restores it (`false`), as an outage does (a tunnel, a
    /// handover): while cut, every datagram offered in that direction is lost (and counted in
    /// [`DirectionCounters::lost`]); those already on the wire still arrive.
    pub fn cut(&self, direction: Direction, cut: bool) {
        self.cut[direction_index(direction)].store(cut, Ordering::Relaxed);
    }

    /// The counters so far; cheap, and safe to call while traffic flows.
    pub fn stats(&self) -> LinkCounters {
        LinkCounters {
            up: self.counters[0].read(),
            down: self.counters[1].read(),
        }
    }

    /// Stops forwarding; datagrams still in the link are dropped. Returns the final counters.
    pub fn shutdown(self) -> LinkCounters {
        self.stats()
        // Dropping `self` aborts the tasks.
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A non-blocking UDP socket bound to `addr` with [`SOCKET_BUFFER`]-sized kernel buffers (best
/// effort). Must be called inside a tokio runtime.
fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Smaller buffers only make bursts likelier to be dropped by the kernel; carry on.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// One direction's pump: receive, shape, send when due.
struct Pump {
    direction: Direction,
    shaper: Shaper,
    near: Arc<UdpSocket>,
    far: Arc<UdpSocket>,
    client: Arc<Mutex<Option<SocketAddr>>>,
    counters: Arc<[AtomicCounters; 2]>,
    cut: Arc<[AtomicBool; 2]>,
}

/// Where `direction`'s counters and switch sit in a link's pairs: up first.
fn direction_index(direction: Direction) -> usize {
    match direction {
        Direction::Up => 0,
        Direction::Down => 1,
    }
}

async fn pump(mut p: Pump) {
    let counters = &p.counters[direction_index(p.direction)];
    let cut = &p.cut[direction_index(p.direction)];
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut pending: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    loop {
        let due = pending.front().map(|&(at, _)| at);
        let timer = async {
            match due {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = timer => {
                let now = Instant::now();
                while let Some((at, _)) = pending.front() {
                    if *at > now {
                        break;
                    }
                    let Some((_, datagram)) = pending.pop_front() else { break };
                    let sent = match p.direction {
                        Direction::Up => p.far.send(&datagram).await,
                        Direction::Down => {
                            let client = *p.client.lock().unwrap_or_else(|e| e.into_inner());
                            match client {
                                Some(client) => p.near.send_to(&datagram, client).await,
                                None => continue,
                            }
                        }
                    };
                    // A failed send is a datagram the network lost; UDP carries on.
                    if sent.is_ok() {
                        counters.packets.fetch_add(1, Ordering::Relaxed);
                        counters.bytes.fetch_add(datagram.len() as u64, Ordering::Relaxed);
                    }
                }
            }
            received = receive(&p, &mut buf) => {
                // Errors (an ICMP unreachable reported on the connected socket) are transient.
                let Some(len) = received else { continue };
                if cut.load(Ordering::Relaxed) {
                    counters.lost.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match p.shaper.offer(Instant::now(), len) {
                    Verdict::Deliver(at) => pending.push_back((at, buf[..len].to_vec())),
                    Verdict::Lost => {
                        counters.lost.fetch_add(1, Ordering::Relaxed);
                    }
                    Verdict::QueueFull => {
                        counters.queue_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// Receives the next datagram of `p`'s direction into `buf`: its length, or `None` for an
/// error. Upstream, the sender becomes the client (see [`Link`]).
async fn receive(p: &Pump, buf: &mut [u8]) -> Option<usize> {
    match p.direction {
        Direction::Up => {
            let (len, from) = p.near.recv_from(buf).await.ok()?;
            *p.client.lock().unwrap_or_else(|e| e.into_inner()) = Some(from);
            Some(len)
        }
        Direction::Down => p.far.recv(buf).await.ok(),
    }
}

// ---------------------------------------------------------------------------------------------
// TCP: the same link, for a byte stream (module docs, "The TCP model").

/// Bytes of IPv4 and TCP headers counted with every TCP segment (20 + 20).
pub const TCP_OVERHEAD: usize = 40;

/// Payload bytes of a full TCP segment: a 1500-byte MTU less the 40 header bytes and the 12
/// bytes of the timestamp option Linux sends.
pub const MSS: usize = 1448;

/// Segments a TCP sender may send before its first ACK (RFC 6928).
pub const INITIAL_WINDOW: u32 = 10;

/// The retransmission timeout of a lost SYN or SYN-ACK (RFC 6298 §2.1); it doubles on each
/// retry.
pub const SYN_RTO: Duration = Duration::from_secs(1);

/// What a retransmission timeout adds to the round trip (Linux's `TCP_RTO_MIN`): a lost
/// retransmission is sent again a round trip + this later, doubling each time.
pub const MIN_RTO: Duration = Duration::from_millis(200);

/// What a [`TcpShaper`] decided for one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Payload bytes.
    pub len: usize,
    /// When the sender first put it on the link (the window and the handshake may hold it).
    pub sent: Instant,
    /// When it (its last transmission) arrived at the receiver.
    pub arrived: Instant,
    /// When the receiving application gets it: `arrived`, or later when a segment before it
    /// is still missing (head-of-line blocking). Never earlier than the previous segment's.
    pub delivered: Instant,
    /// How many times it was sent (1 when it was not lost).
    pub transmissions: u32,
}

/// Counters of one direction of a [`TcpShaper`] or [`TcpLink`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TcpCounters {
    /// Data segments delivered (each once, however many times it was sent).
    pub segments: u64,
    /// Payload bytes delivered.
    pub bytes: u64,
    /// Transmissions lost (data segments, SYN and SYN-ACK), each sent again.
    pub lost: u64,
    /// Handshake segments this direction carried (SYN and the client's ACK, or the SYN-ACK).
    pub control: u64,
    /// Pure ACKs the receiver of this direction sends back, one for every two data segments
    /// (delayed ACK, RFC 1122); they travel the opposite direction.
    pub acks: u64,
}

impl TcpCounters {
    /// Bytes of the segments this direction carried: payloads and [`TCP_OVERHEAD`] for each
    /// data and handshake segment (the pure ACKs it carries are the other direction's `acks`).
    pub fn wire_bytes(&self) -> u64 {
        self.bytes + (self.segments + self.control) * TCP_OVERHEAD as u64
    }

    fn add(&mut self, other: &TcpCounters) {
        self.segments += other.segments;
        self.bytes += other.bytes;
        self.lost += other.lost;
        self.control += other.control;
        self.acks += other.acks;
    }
}

/// Counters of both directions of a [`TcpLink`], as read by [`TcpLink::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TcpLinkCounters {
    /// Client → upstream.
    pub up: TcpCounters,
    /// Upstream → client.
    pub down: TcpCounters,
}

impl TcpLinkCounters {
    /// Bytes on the wire from the client to upstream: its segments and the pure ACKs of the
    /// data coming down.
    pub fn wire_up(&self) -> u64 {
        self.up.wire_bytes() + self.down.acks * TCP_OVERHEAD as u64
    }

    /// Bytes on the wire from upstream to the client: its segments and the pure ACKs of the
    /// data going up.
    pub fn wire_down(&self) -> u64 {
        self.down.wire_bytes() + self.up.acks * TCP_OVERHEAD as u64
    }
}

/// The sans-IO model of one direction of a TCP connection over an emulated link (module docs,
/// "The TCP model"): the caller passes each chunk of the byte stream to [`TcpShaper::send`]
/// with the instant the sender wrote it, and gets the instants its segments reach the
/// receiving application, which never decrease.
///
/// Call [`tcp_handshake`] first with both directions' shapers: no segment leaves before the
/// handshake allows it. Like [`Shaper`], it reads no clock and draws its losses from the
/// seeded generator, one draw per transmission in sending order.
#[derive(Debug, Clone)]
pub struct TcpShaper {
    shaper: Shaper,
    /// This direction's delay: what the handshake's last ACK takes.
    delay: Duration,
    /// The opposite direction's delay, which the ACKs take back to the sender.
    ack_delay: Duration,
    /// Congestion window, in segments.
    cwnd: u32,
    /// Slow-start threshold, in segments.
    ssthresh: u32,
    /// ACKs counted towards the next increase above `ssthresh`.
    acked: u32,
    /// When the ACK of each segment in flight reaches the sender (earliest first).
    in_flight: BinaryHeap<Reverse<Instant>>,
    /// When the sender learns of each loss it has not reacted to yet (in order).
    detections: VecDeque<Instant>,
    /// Losses the sender learns of before this instant belong to a window already halved.
    recovery_until: Option<Instant>,
    /// The sender's clock: when the last segment left (it never goes backwards).
    clock: Option<Instant>,
    /// No data leaves before this (set by the handshake).
    not_before: Option<Instant>,
    /// When the receiving application got the last segment.
    delivered: Option<Instant>,
    counters: TcpCounters,
}

impl TcpShaper {
    /// The model of `direction` of a connection whose segments cross a link shaped by `spec`
    /// and whose ACKs come back over a link shaped by `reverse` (their delay only: ACKs are
    /// small and their losses are covered by the next ACK).
    pub fn new(spec: &LinkSpec, reverse: &LinkSpec, direction: Direction) -> Self {
        Self {
            shaper: Shaper::new(spec, direction),
            delay: spec.delay,
            ack_delay: reverse.delay,
            cwnd: INITIAL_WINDOW,
            ssthresh: u32::MAX,
            acked: 0,
            in_flight: BinaryHeap::new(),
            detections: VecDeque::new(),
            recovery_until: None,
            clock: None,
            not_before: None,
            delivered: None,
            counters: TcpCounters::default(),
        }
    }

    /// The round trip the sender sees: both directions' delays.
    pub fn rtt(&self) -> Duration {
        self.delay + self.ack_delay
    }

    /// The congestion window now, in segments.
    pub fn cwnd(&self) -> u32 {
        self.cwnd
    }

    /// The counters so far.
    pub fn counters(&self) -> TcpCounters {
        self.counters
    }

    /// The sender writes `len` bytes at `now` (never earlier than the previous call's `now`):
    /// cuts them into segments of at most [`MSS`] bytes, in order, and says what becomes of
    /// each.
    pub fn send(&mut self, now: Instant, len: usize) -> Vec<Segment> {
        let mut out = Vec::with_capacity(len.div_ceil(MSS));
        let mut left = len;
        while left > 0 {
            let payload = left.min(MSS);
            left -= payload;
            out.push(self.segment(now, payload));
        }
        out
    }

    fn segment(&mut self, now: Instant, payload: usize) -> Segment {
        let mut at = now.max(self.clock.unwrap_or(now));
        if let Some(t) = self.not_before {
            at = at.max(t);
        }
        // Wait until the window has room; an ACK arriving frees a slot.
        loop {
            self.advance(at);
            if (self.in_flight.len() as u64) < u64::from(self.cwnd) {
                break;
            }
            match self.in_flight.peek() {
                Some(&Reverse(next)) => at = at.max(next),
                None => break,
            }
        }
        self.clock = Some(at);
        let (arrived, transmissions) = self.transmit(at, payload);
        let delivered = arrived.max(self.delivered.unwrap_or(arrived));
        self.delivered = Some(delivered);
        self.in_flight.push(Reverse(arrived + self.ack_delay));
        self.counters.segments += 1;
        self.counters.bytes += payload as u64;
        self.counters.acks = self.counters.segments.div_ceil(2);
        Segment {
            len: payload,
            sent: at,
            arrived,
            delivered,
            transmissions,
        }
    }

    /// Sends one segment at `at` until a transmission gets through: when its last
    /// transmission arrives, and how many it took.
    fn transmit(&mut self, at: Instant, payload: usize) -> (Instant, u32) {
        // The shaper counts UDP_OVERHEAD on top of what it is given.
        let len = payload + TCP_OVERHEAD - UDP_OVERHEAD;
        let mut penalty = Duration::ZERO;
        let mut rto = self.rtt() + MIN_RTO;
        let mut transmissions = 0;
        loop {
            transmissions += 1;
            match self.shaper.offer(at, len) {
                Verdict::Deliver(arrival) => return (arrival + penalty, transmissions),
                Verdict::Lost | Verdict::QueueFull => {
                    self.counters.lost += 1;
                    if transmissions == 1 {
                        // Fast retransmit: the duplicate ACKs take a round trip back.
                        penalty += self.rtt();
                        self.detections.push_back(at + self.rtt());
                    } else {
                        penalty += rto;
                        rto *= 2;
                    }
                }
            }
        }
    }

    /// Handles the losses the sender learns of and the ACKs that reach it up to `at`, in time
    /// order.
    fn advance(&mut self, at: Instant) {
        loop {
            let loss = self.detections.front().copied().filter(|&t| t <= at);
            let ack = self.in_flight.peek().map(|r| r.0).filter(|&t| t <= at);
            match (loss, ack) {
                (Some(l), a) if a.is_none_or(|a| l <= a) => {
                    self.detections.pop_front();
                    if self.recovery_until.is_none_or(|r| l >= r) {
                        self.ssthresh = (self.cwnd / 2).max(2);
                        self.cwnd = self.ssthresh;
                        self.acked = 0;
                        self.recovery_until = Some(l + self.rtt());
                    }
                }
                (_, Some(a)) => {
                    self.in_flight.pop();
                    if self.recovery_until.is_some_and(|r| a < r) {
                        // In recovery the window stays halved.
                    } else if self.cwnd < self.ssthresh {
                        self.cwnd += 1;
                    } else {
                        self.acked += 1;
                        if self.acked >= self.cwnd {
                            self.acked = 0;
                            self.cwnd += 1;
                        }
                    }
                }
                _ => break,
            }
        }
    }

    /// Sends a handshake segment at `at` until it gets through (a lost one is sent again
    /// after [`SYN_RTO`], doubling): when it arrives.
    fn control_segment(&mut self, mut at: Instant) -> Instant {
        at = at.max(self.clock.unwrap_or(at));
        let mut rto = SYN_RTO;
        loop {
            match self.shaper.offer(at, TCP_OVERHEAD - UDP_OVERHEAD) {
                Verdict::Deliver(arrival) => {
                    self.clock = Some(at);
                    self.counters.control += 1;
                    return arrival;
                }
                Verdict::Lost | Verdict::QueueFull => {
                    self.counters.lost += 1;
                    at += rto;
                    rto *= 2;
                }
            }
        }
    }
}

/// Models the three-way handshake of a client connecting at `now`: the SYN crosses `up`, the
/// SYN-ACK crosses `down`, and the client's ACK goes up with its first data. Returns when the
/// client's `connect` would return (the SYN-ACK arrived); from then on `up` may send, and
/// `down` once the client's ACK has arrived.
pub fn tcp_handshake(up: &mut TcpShaper, down: &mut TcpShaper, now: Instant) -> Instant {
    let syn = up.control_segment(now);
    let syn_ack = down.control_segment(syn);
    up.counters.control += 1; // The client's ACK.
    up.not_before = Some(syn_ack);
    down.not_before = Some(syn_ack + up.delay);
    syn_ack
}

/// A running TCP link emulator: a TCP forwarder on `127.0.0.1` that connects each client to
/// the upstream address and delivers each direction's bytes when a [`TcpShaper`] says (module
/// docs, "The TCP model"). Connection `n` (from 0) draws its losses from the spec's seed + `n`.
///
/// The forwarder and its connections stop when the `TcpLink` is dropped.
#[derive(Debug)]
pub struct TcpLink {
    addr: SocketAddr,
    upstream: SocketAddr,
    up: LinkSpec,
    down: LinkSpec,
    counters: Arc<Mutex<Vec<[TcpCounters; 2]>>>,
    task: JoinHandle<()>,
}

impl TcpLink {
    /// Starts a forwarder to `upstream` that shapes both directions as `spec` says. Must be
    /// called inside a tokio runtime.
    pub async fn spawn(upstream: SocketAddr, spec: &LinkSpec) -> io::Result<TcpLink> {
        Self::spawn_asymmetric(upstream, spec, spec).await
    }

    /// Like [`TcpLink::spawn`] with a different spec for each direction: `up` for client →
    /// upstream, `down` for upstream → client.
    pub async fn spawn_asymmetric(
        upstream: SocketAddr,
        up: &LinkSpec,
        down: &LinkSpec,
    ) -> io::Result<TcpLink> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(tcp_accept(listener, upstream, *up, *down, counters.clone()));
        Ok(TcpLink {
            addr,
            upstream,
            up: *up,
            down: *down,
            counters,
            task,
        })
    }

    /// The address the client connects to instead of the upstream address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The upstream address connections are forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The specs of the two directions: (client → upstream, upstream → client).
    pub fn specs(&self) -> (LinkSpec, LinkSpec) {
        (self.up, self.down)
    }

    /// The counters of all connections so far, as the model scheduled the segments (a segment
    /// is counted when it is sent, before it is delivered).
    pub fn stats(&self) -> TcpLinkCounters {
        let all = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let mut total = TcpLinkCounters::default();
        for [up, down] in all.iter() {
            total.up.add(up);
            total.down.add(down);
        }
        total
    }
}

impl Drop for TcpLink {
    fn drop(&mut self) {
        // The accept task owns the connections' tasks: aborting it drops (and aborts) them.
        self.task.abort();
    }
}

async fn tcp_accept(
    listener: TcpListener,
    upstream: SocketAddr,
    up: LinkSpec,
    down: LinkSpec,
    counters: Arc<Mutex<Vec<[TcpCounters; 2]>>>,
) {
    let mut tasks = JoinSet::new();
    let mut n: u64 = 0;
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                // Out of descriptors or an aborted connection: try again shortly.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let accepted = Instant::now();
        // A refused upstream closes the client's connection (dropped here).
        let Ok(server) = TcpStream::connect(upstream).await else {
            continue;
        };
        // Segments leave when the model says, not when Nagle's algorithm would.
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let seeded = |s: &LinkSpec| LinkSpec {
            seed: s.seed.wrapping_add(n),
            ..*s
        };
        let mut up_model = TcpShaper::new(&seeded(&up), &down, Direction::Up);
        let mut down_model = TcpShaper::new(&seeded(&down), &up, Direction::Down);
        tcp_handshake(&mut up_model, &mut down_model, accepted);
        let slot = {
            let mut all = counters.lock().unwrap_or_else(PoisonError::into_inner);
            all.push([up_model.counters(), down_model.counters()]);
            all.len() - 1
        };
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let counter = |index| TcpSlot {
            counters: counters.clone(),
            slot,
            index,
        };
        tasks.spawn(tcp_pump(up_model, client_read, server_write, counter(0)));
        tasks.spawn(tcp_pump(down_model, server_read, client_write, counter(1)));
        n += 1;
        while tasks.try_join_next().is_some() {}
    }
}

/// Where a TCP pump publishes its counters: `counters[slot][index]`.
struct TcpSlot {
    counters: Arc<Mutex<Vec<[TcpCounters; 2]>>>,
    slot: usize,
    index: usize,
}

/// One direction of one TCP connection: read what the sender wrote, ask the model when each
/// segment reaches the receiver, write it then; shut the write side once the sender has
/// finished and everything is delivered.
async fn tcp_pump(
    mut model: TcpShaper,
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    publish: TcpSlot,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut open = true;
    loop {
        if !open && pending.is_empty() {
            let _ = to.shutdown().await;
            return;
        }
        let due = pending.front().map(|&(at, _)| at);
        let timer = async {
            match due {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = timer => {
                let now = Instant::now();
                let mut chunk = Vec::new();
                while pending.front().is_some_and(|&(at, _)| at <= now) {
                    if let Some((_, bytes)) = pending.pop_front() {
                        chunk.extend_from_slice(&bytes);
                    }
                }
                if to.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            read = from.read(&mut buf), if open => match read {
                Ok(0) | Err(_) => open = false,
                Ok(n) => {
                    let mut offset = 0;
                    for segment in model.send(Instant::now(), n) {
                        let end = offset + segment.len;
                        pending.push_back((segment.delivered, buf[offset..end].to_vec()));
                        offset = end;
                    }
                    let mut all = publish.counters.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(slot) = all.get_mut(publish.slot) {
                        slot[publish.index] = model.counters();
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tcp_tests {
    //! The TCP model in virtual time: no sockets, no clock.

    use super::*;

    fn spec(s: &str) -> LinkSpec {
        s.parse().expect("a valid spec")
    }

    fn shapers(s: &LinkSpec) -> (TcpShaper, TcpShaper) {
        (
            TcpShaper::new(s, s, Direction::Up),
            TcpShaper::new(s, s, Direction::Down),
        )
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn handshake_costs_a_round_trip_before_the_first_byte() {
        let s = spec("100ms");
        let (mut up, mut down) = shapers(&s);
        let t0 = Instant::now();
        assert_eq!(tcp_handshake(&mut up, &mut down, t0), t0 + ms(200));
        // The client writes at once; its bytes leave when the SYN-ACK has arrived.
        let first = up.send(t0, 100);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].sent, t0 + ms(200));
        assert_eq!(first[0].delivered, t0 + ms(300));
        assert_eq!((up.counters().control, down.counters().control), (2, 1));
    }

    #[test]
    fn a_lost_syn_costs_the_initial_timeout() {
        // Find the seed whose first draw loses the SYN at 50 % loss; draws are deterministic.
        let s = (0..64)
            .map(|seed| LinkSpec {
                seed,
                ..spec("100ms,50%")
            })
            .find(|s| {
                matches!(
                    Shaper::new(s, Direction::Up).offer(Instant::now(), 1),
                    Verdict::Lost
                )
            })
            .expect("some seed loses the first draw");
        let mut up = TcpShaper::new(&s, &LinkSpec::none(), Direction::Up);
        let mut down = TcpShaper::new(&LinkSpec::none(), &s, Direction::Down);
        let t0 = Instant::now();
        let connected = tcp_handshake(&mut up, &mut down, t0);
        assert!(connected >= t0 + SYN_RTO + ms(100), "{:?}", connected - t0);
        assert!(up.counters().lost >= 1);
    }

    /// Segments come out whole, in order, MSS-sized, and never delivered out of order.
    #[test]
    fn stream_is_cut_into_segments_delivered_in_order() {
        let s = spec("20ms,2mbit,5%,seed=3");
        let (mut up, mut down) = shapers(&s);
        let t0 = Instant::now();
        tcp_handshake(&mut up, &mut down, t0);
        let mut all = Vec::new();
        for i in 0..50u32 {
            let segments = down.send(t0 + ms(u64::from(i)), 3000 + i as usize);
            assert_eq!(
                segments.iter().map(|s| s.len).sum::<usize>(),
                3000 + i as usize
            );
            assert!(segments.iter().all(|s| s.len <= MSS));
            all.extend(segments);
        }
        for pair in all.windows(2) {
            assert!(pair[1].delivered >= pair[0].delivered);
            assert!(pair[1].sent >= pair[0].sent);
        }
        for seg in &all {
            assert!(seg.arrived <= seg.delivered);
            assert!(seg.arrived >= seg.sent + s.delay);
        }
        let c = down.counters();
        assert_eq!(c.segments, all.len() as u64);
        assert_eq!(c.bytes, all.iter().map(|s| s.len as u64).sum::<u64>());
        assert_eq!(c.wire_bytes(), c.bytes + (c.segments + 1) * 40);
        assert_eq!(c.acks, c.segments.div_ceil(2));
        assert!(c.lost > 0, "5 % of {} segments: {c:?}", c.segments);
    }

    /// A bulk transfer through a link that is the bottleneck leaves at the rate, headers
    /// counted: 100 full segments of 1,488 wire bytes at 800 kbit/s take 1.488 s.
    #[test]
    fn bulk_transfer_is_paced_at_the_rate() {
        let s = spec("50ms,800kbit");
        let mut down = TcpShaper::new(&s, &s, Direction::Down);
        let t0 = Instant::now();
        let segments = down.send(t0, 100 * MSS);
        assert_eq!(segments.len(), 100);
        let per = s.serialization(MSS + TCP_OVERHEAD);
        assert_eq!(per, Duration::from_micros(14_880));
        assert_eq!(segments[0].delivered, t0 + per + ms(50));
        assert_eq!(segments[99].delivered, t0 + per * 100 + ms(50));
    }

    /// Slow start: 10 segments in the first round trip, 20 in the second.
    #[test]
    fn slow_start_opens_the_window_per_round_trip() {
        let s = spec("100ms");
        let mut down = TcpShaper::new(&s, &s, Direction::Down);
        let t0 = Instant::now();
        let segments = down.send(t0, 40 * MSS);
        assert!(segments[..10].iter().all(|s| s.delivered == t0 + ms(100)));
        assert!(segments[10..30].iter().all(|s| s.delivered == t0 + ms(300)));
        assert!(segments[30..].iter().all(|s| s.delivered == t0 + ms(500)));
        assert_eq!(down.cwnd(), 40);
    }

    /// A lost segment arrives a round trip late and holds back the segments behind it, which
    /// themselves arrived on time.
    #[test]
    fn a_loss_blocks_the_line_for_a_round_trip() {
        let base = spec("100ms,10%");
        // The first seed whose draws deliver segments 0 to 2, lose 3 once, deliver 4 to 9.
        let wanted = |seed: u64| {
            let mut sh = Shaper::new(&LinkSpec { seed, ..base }, Direction::Down);
            let t = Instant::now();
            let lost: Vec<bool> = (0..11)
                .map(|_| matches!(sh.offer(t, 1), Verdict::Lost))
                .collect();
            lost == [
                false, false, false, true, false, false, false, false, false, false, false,
            ]
        };
        let seed = (0..10_000).find(|&s| wanted(s)).expect("some seed");
        let s = LinkSpec { seed, ..base };
        let mut down = TcpShaper::new(&s, &s, Direction::Down);
        let t0 = Instant::now();
        let segments = down.send(t0, 10 * MSS);
        let on_time = t0 + ms(100);
        let late = on_time + ms(200);
        assert!(segments[..3].iter().all(|s| s.delivered == on_time));
        assert_eq!(segments[3].transmissions, 2);
        assert_eq!(segments[3].arrived, late);
        for seg in &segments[4..] {
            assert_eq!(seg.arrived, on_time);
            assert_eq!(seg.delivered, late, "held behind the hole");
        }
        assert_eq!(down.counters().lost, 1);
        // The window halves when the sender learns of the loss (200 ms after sending).
        down.send(t0 + ms(250), MSS);
        assert_eq!(down.cwnd(), 5);
    }
}
