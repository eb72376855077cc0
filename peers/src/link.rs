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
//!   counters ([`Link::stats`]) can be read while it runs.
//!
//! The model of one direction, in order: a datagram is lost at random (probability
//! [`LinkSpec::loss_ppm`]); otherwise it joins a FIFO queue in front of the link and is dropped
//! instead when the queue is full ([`LinkSpec::queue`], drop-tail); it is serialized at
//! [`LinkSpec::rate_bps`] once the datagram before it has finished (counting
//! [`UDP_OVERHEAD`] header bytes); then it propagates for [`LinkSpec::delay`]. A datagram stays
//! in the queue until it has been serialized, so the one on the wire counts too.
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

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

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
            parts.push(if nanos % 1_000_000_000 == 0 {
                format!("{}s", nanos / 1_000_000_000)
            } else if nanos % 1_000_000 == 0 {
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
        if n != 0 && n % scale == 0 {
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
    /// Datagrams lost at random.
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
/// [`Link::addr`] fixes the client; datagrams from other addresses are ignored.
///
/// The forwarder stops when the `Link` is dropped (or [`Link::shutdown`]).
#[derive(Debug)]
pub struct Link {
    addr: SocketAddr,
    upstream: SocketAddr,
    up: LinkSpec,
    down: LinkSpec,
    counters: Arc<[AtomicCounters; 2]>,
    client: Arc<OnceLock<SocketAddr>>,
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
        let client = Arc::new(OnceLock::new());
        let up_task = tokio::spawn(pump(Pump {
            direction: Direction::Up,
            shaper: Shaper::new(up, Direction::Up),
            near: near.clone(),
            far: far.clone(),
            client: client.clone(),
            counters: counters.clone(),
        }));
        let down_task = tokio::spawn(pump(Pump {
            direction: Direction::Down,
            shaper: Shaper::new(down, Direction::Down),
            near,
            far,
            client: client.clone(),
            counters: counters.clone(),
        }));
        Ok(Link {
            addr,
            upstream,
            up: *up,
            down: *down,
            counters,
            client,
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

    /// The client, once its first datagram has arrived.
    pub fn client(&self) -> Option<SocketAddr> {
        self.client.get().copied()
    }

    /// The specs of the two directions: (client → upstream, upstream → client).
    pub fn specs(&self) -> (LinkSpec, LinkSpec) {
        (self.up, self.down)
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
    client: Arc<OnceLock<SocketAddr>>,
    counters: Arc<[AtomicCounters; 2]>,
}

async fn pump(mut p: Pump) {
    let counters = &p.counters[match p.direction {
        Direction::Up => 0,
        Direction::Down => 1,
    }];
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
                        Direction::Down => match p.client.get() {
                            Some(&client) => p.near.send_to(&datagram, client).await,
                            None => continue,
                        },
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

/// Receives the next datagram of `p`'s direction into `buf`: its length, or `None` for an error
/// or a datagram from someone other than the client.
async fn receive(p: &Pump, buf: &mut [u8]) -> Option<usize> {
    match p.direction {
        Direction::Up => {
            let (len, from) = p.near.recv_from(buf).await.ok()?;
            let client = *p.client.get_or_init(|| from);
            (from == client).then_some(len)
        }
        Direction::Down => p.far.recv(buf).await.ok(),
    }
}
