//! Congestion control for Tandem's connections: Cubic, with a cap that keeps the queue at the
//! bottleneck short (issue 7, "sees the present, not a queue of the past").
//!
//! Loss-based Cubic grows its window until a queue overflows. On a slow link with a deep buffer
//! that queue is the customer's pointer waiting behind the snapshot: at 750 kbit/s every 1,200
//! byte datagram in front of it is 13 ms, and slow start puts a round trip's worth of data
//! there (600 ms at 300 ms each way). Pointer positions are datagrams that quinn sends ahead of
//! stream data, but no sender can overtake a queue in the network; the only cure is not to
//! build one.
//!
//! [`ShallowQueue`] keeps Cubic for everything it does well (the initial window, growth, the
//! response to loss) and bounds its window by what the path can hold without a standing queue:
//!
//! ```text
//!  per ACK frame:   samples of this interval  (bytes acknowledged, smallest RTT)
//!  interval closed: ≥ SAMPLE_PACKETS acknowledged
//!      queue = smallest RTT of the interval − smallest RTT ever seen
//!      rate = fastest acknowledgement rate of an interval in the last round trip
//!      queue > QUEUE_TARGET, not app-limited  →  cap = rate × min RTT + HEADROOM datagrams
//!      queue < QUEUE_TARGET / 2, capped       →  cap += bytes / GROWTH_DIVISOR  (probe)
//!  per ACK frame, before any cap (slow start):
//!      ≥ SAMPLE_PACKETS acknowledged, not app-limited, and the smallest RTT among
//!      them > smallest RTT + QUEUE_TARGET     →  hold: cap = Cubic's window now
//!      the next interval: queue → cap measured as above; no queue → hold released
//!  window = min(Cubic's window, cap), at least MIN_WINDOW datagrams
//!  pace (while capped) = window ÷ smallest RTT        (what crate::meter admits at, at most)
//! ```
//!
//! The smallest RTT of an interval is a standing queue's delay: one late acknowledgement (a
//! delayed ACK, a busy receiver) does not raise it. While a queue stands, the bottleneck is
//! busy, so the rate at which acknowledgements arrive is the bottleneck's rate, and rate ×
//! min RTT is what the path holds in flight without queueing. The cap lets [`HEADROOM`]
//! datagrams queue on top, enough to keep the bottleneck busy between acknowledgements. When
//! the queue is gone, the cap grows by an eighth of what each interval acknowledged (about an
//! eighth per round trip) so that a path whose rate went up is found; if it did not, the queue
//! this makes is seen within an interval and the cap measured again.
//!
//! The interval needs two ACK frames (the first only opens it), and in slow start each
//! acknowledged datagram lets two more go: on the emulated link that was 16 more datagrams,
//! 200 ms more queue, before the first cap. The hold stops that growth one frame earlier, at
//! the first frame all of whose datagrams queued. A frame's smallest RTT is, like an
//! interval's, free of acknowledgement delay: the peer held the older datagrams back until
//! its threshold was reached, and the newest, which reached it, not at all. Only a frame that
//! acknowledged a full sample counts: a shorter one may have waited out the peer's
//! delayed-ACK timer. A hold is no measurement: the next interval replaces it with a cap, or,
//! when it saw no queue (the burst had drained), lets slow start go on. On a fast link
//! (50 ms, 10 Mbit/s) a burst of eight datagrams queues 8 ms, below the target, and no hold
//! was seen.
//!
//! A cap bounds what is in flight, not how fast it goes. quinn paces at 1.25 × window ÷
//! smoothed RTT, a quarter more than a capped window's path carries, and on a transfer of a
//! round trip or two the window is seldom full: the surplus queues at the bottleneck until the
//! transfer ends. While capped, the controller therefore publishes a pace, the window sent in
//! one smallest RTT ([`QueueGuard::pace`], [`Occupancy::pace`]), and [`crate::meter`] admits
//! bulk data no faster. Traced on guardian-1 at 300 ms each way and 750 kbit/s, the relay's
//! second round trip to a new agent (slow start's, at 1.25–1.4 × the link's rate) grew the
//! queue in front of the pointer from 2 to 17 datagrams, 145 ms, before the snapshot ended;
//! the cap came 133 ms into that round trip, and the queue went on growing at the pacer's
//! surplus. Paced at the cap's rate, it stops growing when the cap comes: over seeds 1–6 the
//! pointer's 95th percentile while the snapshot streamed went from 696 to 669 ms on guardian-1
//! and from 655 to 649 ms on archive-of-our-own (agent joining once the customer's snapshot
//! is at the relay, as the e2e bench does), with the same times to complete.
//!
//! In that trace the early hold did not fire: once the first window's acknowledgements had
//! come (one frame of eight), the agent's ACK frames carried four datagrams each, the 50 ms
//! [`crate::transport::ACK_DELAY`] running out before the eighth arrived (13 ms each), and a
//! frame that short may have waited for the timer. Counting such frames was tried (a hold
//! from four datagrams) and its effect on the pointer was within the noise of six seeds.
//!
//! Nothing here reacts to loss: Cubic does, and the window is never more than Cubic's. The
//! controller is Cubic on a path with no queue (a fast or idle link), and on a path whose
//! buffer is shallow enough that loss comes before [`QUEUE_TARGET`].
//!
//! What it cannot help: the first round trip, before any RTT sample can show a queue. Traced
//! on the emulated link (300 ms each way, 750 kbit/s), a relay's first flight to a new agent
//! leaves in one burst of 17–20 datagrams: quinn's pacer starts with a full bucket of 10
//! datagrams (its smallest burst, not configurable) and, at the first datagram it holds back,
//! refills a second bucket for the time since the connection was created, a round trip
//! before. That is 210–230 ms of queue at once, and the pacer's rate for the rest of the
//! window, 1.25 × window ÷ RTT (1.02 × that link's rate at the 40-datagram
//! [`INITIAL_WINDOW`](crate::transport::INITIAL_WINDOW)), keeps it standing until the window
//! is spent. Pointer datagrams ride in the same packets and wait behind it. A smaller initial
//! window only spreads a snapshot over more round trips, each with its own overshoot (at 24
//! datagrams the pointer's 95th percentile on guardian-1 rose from 743 to 922 ms). After that,
//! an RTT sample is a round trip old, so the queue that slow start builds in the second round
//! trip is seen only once it stands, and then drains at the link's rate; the hold shortens
//! that by one ACK frame (measured with `cargo bench --bench e2e` on archive-of-our-own: the
//! pointer's 95th percentile while the snapshot streams went from 838 to 760 ms, its median
//! from 806 to 729 ms, with complete times unchanged, 2,311 and 2,307 ms; guardian-1 stayed
//! at 746 / 743 ms). The cap bounds the queue of a long transfer, not the first round trip.
//!
//! The bursts and the wait are the sender's, and the relay keeps both out of the connections it
//! forwards into, as the consumer does out of its DOM streams: [`crate::meter`] writes at the
//! pacer's rate two datagrams at a time and leaves two datagrams of the window free, reading
//! the window and the bytes in flight that this controller shares ([`Occupancy`]). Such a
//! sender looks application-limited to quinn most of the time (its last transmission found
//! nothing more to send), which would stop Cubic's growth and the guard's measurements; this
//! controller counts a sender that had half its window in flight as limited by the window, as
//! RFC 7661 does.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};

use crate::meter::Gate;

/// Queueing delay above which the queue is standing and the window is capped. A quarter of
/// the pointer's slack over two links (issue 7: one-way delay plus 50 ms).
pub const QUEUE_TARGET: Duration = Duration::from_millis(12);

/// Datagrams the cap allows in the queue on top of what the path holds.
pub const HEADROOM: u64 = 2;

/// Datagrams acknowledged before an interval's rate and queue are judged: enough for the
/// acknowledgement rate to be the bottleneck's, not one ACK frame's burst.
pub const SAMPLE_PACKETS: u32 = 8;

/// The cap never goes below this many datagrams (quinn's minimum window is two).
pub const MIN_WINDOW: u64 = 4;

/// While the queue is empty the cap grows by the bytes acknowledged divided by this.
pub const GROWTH_DIVISOR: u64 = 8;

/// Builds [`ShallowQueue`] controllers around Cubic configured as `cubic`.
#[derive(Debug, Clone, Default)]
pub struct ShallowQueueConfig {
    cubic: Arc<CubicConfig>,
}

impl ShallowQueueConfig {
    /// A factory of controllers whose loss response and growth are Cubic's as `cubic` sets
    /// them (its initial window, for one).
    pub fn new(cubic: CubicConfig) -> Self {
        Self {
            cubic: Arc::new(cubic),
        }
    }
}

impl ControllerFactory for ShallowQueueConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let q = ShallowQueue {
            cubic: self.cubic.clone().build(now, current_mtu),
            guard: QueueGuard::new(u64::from(current_mtu)),
            in_flight: 0,
            peak: 0,
            occupancy: Arc::default(),
        };
        q.publish();
        Box::new(q)
    }
}

/// Cubic whose window is capped to keep the bottleneck's queue short (see the module
/// documentation).
pub struct ShallowQueue {
    cubic: Box<dyn Controller>,
    guard: QueueGuard,
    /// Bytes in flight as the controller last knew them: counted up as datagrams are sent, set
    /// to quinn's own count at the end of each batch of acknowledgements.
    in_flight: u64,
    /// The most bytes in flight since the last batch of acknowledgements ended.
    peak: u64,
    /// What the application may read of the window and the bytes in flight.
    occupancy: Arc<Occupancy>,
}

impl ShallowQueue {
    /// The cap on Cubic's window now, if a standing queue has been seen.
    pub fn cap(&self) -> Option<u64> {
        self.guard.cap
    }

    /// The window and the bytes in flight as the application sees them ([`occupancy`]).
    pub fn occupancy(&self) -> &Arc<Occupancy> {
        &self.occupancy
    }

    /// Whether acknowledgements count as those of a sender that its window held back, which
    /// alone lets Cubic grow the window (and the guard measure the path). quinn calls a sender
    /// application-limited whenever its last transmission found nothing more to send. A
    /// sender that meters its writes ([`crate::meter`]) is that nearly always, yet keeps most
    /// of its window in flight; under quinn's rule its window would never grow. As RFC 7661
    /// (§4.3) does, a sender that had at least half its window in flight counts as limited by
    /// the window.
    fn app_limited(&self, quinn_says: bool) -> bool {
        quinn_says && self.peak.saturating_mul(2) < self.window()
    }

    fn publish(&self) {
        self.occupancy
            .in_flight
            .store(self.in_flight, Ordering::Relaxed);
        self.occupancy
            .window
            .store(self.window(), Ordering::Relaxed);
        let pace = self.guard.pace(self.cubic.window());
        self.occupancy
            .pace
            .store(pace.map_or(0, f64::to_bits), Ordering::Relaxed);
    }
}

/// A connection's congestion window and bytes in flight, as its [`ShallowQueue`] last knew
/// them, for the application: the relay's [`crate::meter::SendMeter`] keeps room in the
/// window for datagrams by reading them. Updated as datagrams are sent and acknowledgements
/// processed; reads are lock-free and may be a few datagrams stale.
#[derive(Debug, Default)]
pub struct Occupancy {
    in_flight: AtomicU64,
    window: AtomicU64,
    /// [`QueueGuard::pace`] as f64 bits; 0 while there is no cap.
    pace: AtomicU64,
    /// The token bucket that every [`crate::meter::SendMeter`] of the connection draws from.
    gate: Mutex<Gate>,
}

impl Occupancy {
    /// Bytes sent and neither acknowledged nor declared lost.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The congestion window: the bytes that may be in flight.
    pub fn window(&self) -> u64 {
        self.window.load(Ordering::Relaxed)
    }

    /// While the window is capped, the rate that sends it in one smallest RTT, in bytes a
    /// second ([`QueueGuard::pace`]): the pace at which [`crate::meter`] admits bulk data.
    pub fn pace(&self) -> Option<f64> {
        let bits = self.pace.load(Ordering::Relaxed);
        (bits != 0).then(|| f64::from_bits(bits))
    }

    /// The connection's metering bucket, shared by its meters.
    pub(crate) fn gate(&self) -> &Mutex<Gate> {
        &self.gate
    }
}

/// The [`Occupancy`] of `conn`'s congestion controller, when it is a [`ShallowQueue`] (every
/// connection made with [`crate::transport::transport_config`]).
pub fn occupancy(conn: &quinn::Connection) -> Option<Arc<Occupancy>> {
    // The state quinn hands out is a copy of the controller, which shares the original's
    // `Occupancy`.
    conn.congestion_state()
        .into_any()
        .downcast::<ShallowQueue>()
        .ok()
        .map(|q| q.occupancy.clone())
}

impl Controller for ShallowQueue {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.cubic.on_sent(now, bytes, last_packet_number);
        self.in_flight += bytes;
        self.peak = self.peak.max(self.in_flight);
        // A send moves only the bytes in flight: the window, the cap and the pace change with
        // acknowledgements, losses and the MTU, which publish everything.
        self.occupancy
            .in_flight
            .store(self.in_flight, Ordering::Relaxed);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &quinn_proto::RttEstimator,
    ) {
        let app_limited = self.app_limited(app_limited);
        self.cubic.on_ack(now, sent, bytes, app_limited, rtt);
        self.guard.on_ack(now, sent, bytes, app_limited);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        let app_limited = self.app_limited(app_limited);
        self.cubic
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
        self.guard.on_end_acks(now, self.cubic.window());
        self.in_flight = in_flight;
        self.peak = in_flight;
        self.publish();
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.cubic
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        self.in_flight = self.in_flight.saturating_sub(lost_bytes);
        self.publish();
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.cubic.on_mtu_update(new_mtu);
        self.guard.mtu = u64::from(new_mtu);
        self.publish();
    }

    fn window(&self) -> u64 {
        self.guard.bound(self.cubic.window())
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = self.cubic.metrics();
        m.congestion_window = self.window();
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(ShallowQueue {
            cubic: self.cubic.clone_box(),
            guard: self.guard.clone(),
            in_flight: self.in_flight,
            peak: self.peak,
            occupancy: self.occupancy.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.cubic.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// The queue-delay cap of [`ShallowQueue`], apart from Cubic so that it can be driven by a
/// simulated path in tests.
#[derive(Debug, Clone)]
pub struct QueueGuard {
    /// Datagram size, for [`HEADROOM`] and [`MIN_WINDOW`].
    mtu: u64,
    /// The smallest RTT sample seen on the connection: the path's delay without a queue.
    min_rtt: Option<Duration>,
    /// The cap on the window, once a standing queue was seen.
    cap: Option<u64>,
    /// The fastest acknowledgement rate (bytes per second) of an interval in the last round
    /// trip that was not app-limited, and when it was measured.
    rate: Option<(Instant, f64)>,
    /// When the current interval began (the end of an ACK frame's processing).
    start: Option<Instant>,
    /// The acknowledgements of the current interval.
    interval: Samples,
    /// The acknowledgements of the ACK frame being processed.
    frame: Samples,
    /// Whether `cap` is an early hold, not yet measured.
    held: bool,
}

/// Acknowledgements taken together: an interval's, or one ACK frame's.
#[derive(Debug, Clone, Copy, Default)]
struct Samples {
    /// Bytes acknowledged.
    bytes: u64,
    /// Packets acknowledged.
    packets: u32,
    /// The smallest RTT sample.
    min: Option<Duration>,
    /// Whether any packet was sent while the sender was app-limited.
    app_limited: bool,
}

impl Samples {
    fn add(&mut self, rtt: Duration, bytes: u64, app_limited: bool) {
        self.bytes += bytes;
        self.packets += 1;
        self.min = Some(self.min.map_or(rtt, |m| m.min(rtt)));
        self.app_limited |= app_limited;
    }
}

impl QueueGuard {
    /// A guard for datagrams of `mtu` bytes, with no cap yet.
    pub fn new(mtu: u64) -> Self {
        Self {
            mtu,
            min_rtt: None,
            cap: None,
            rate: None,
            start: None,
            interval: Samples::default(),
            frame: Samples::default(),
            held: false,
        }
    }

    /// A packet of `bytes` sent at `sent` was acknowledged at `now`.
    pub fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool) {
        let rtt = now.saturating_duration_since(sent);
        self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
        self.frame.add(rtt, bytes, app_limited);
        // Before the first interval opens nothing counts towards one.
        if self.start.is_some() {
            self.interval.add(rtt, bytes, app_limited);
        }
    }

    /// An ACK frame was processed at `now`: closes the interval when it has enough samples.
    pub fn on_end_acks(&mut self, now: Instant, window: u64) {
        self.early_hold(window);
        let Some(start) = self.start else {
            // The first ACK frame opens the first interval: the bytes it acknowledged were
            // delivered before it, so they do not count towards a rate measured from it.
            self.restart(now);
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if self.interval.packets < SAMPLE_PACKETS || elapsed.is_zero() {
            return;
        }
        let (Some(min_rtt), Some(interval_min)) = (self.min_rtt, self.interval.min) else {
            return self.restart(now);
        };
        if self.interval.app_limited {
            // The rate was the application's, not the path's: nothing to judge.
            return self.restart(now);
        }
        let queue = interval_min.saturating_sub(min_rtt);
        // The fastest rate of the last round trip: an interval that spanned a pause of the
        // sender's measures less than the path delivers.
        let measured = self.interval.bytes as f64 / elapsed.as_secs_f64();
        let rate = match self.rate {
            Some((at, best)) if best >= measured && now.saturating_duration_since(at) < min_rtt => {
                best
            }
            _ => {
                self.rate = Some((now, measured));
                measured
            }
        };
        if queue > QUEUE_TARGET {
            let path = (rate * min_rtt.as_secs_f64()) as u64;
            self.cap = Some((path + HEADROOM * self.mtu).max(MIN_WINDOW * self.mtu));
            self.held = false;
        } else if std::mem::take(&mut self.held) {
            // The hold's queue was a burst's, gone by now: slow start goes on.
            self.cap = None;
        } else if let Some(cap) = self.cap
            && queue < QUEUE_TARGET / 2
        {
            self.cap = Some(cap + self.interval.bytes / GROWTH_DIVISOR);
        }
        self.restart(now);
    }

    /// Before any cap: an ACK frame that acknowledged a full sample of packets, all of them with
    /// a queue above the target, holds the window where it is (slow start ends) until an
    /// interval measures the path.
    fn early_hold(&mut self, window: u64) {
        let frame = std::mem::take(&mut self.frame);
        if self.cap.is_some() || frame.app_limited || frame.packets < SAMPLE_PACKETS {
            return;
        }
        if let (Some(rtt), Some(min_rtt)) = (frame.min, self.min_rtt)
            && rtt.saturating_sub(min_rtt) > QUEUE_TARGET
        {
            self.cap = Some(window.max(MIN_WINDOW * self.mtu));
            self.held = true;
        }
    }

    /// `window` (Cubic's) as the cap allows it.
    pub fn bound(&self, window: u64) -> u64 {
        match self.cap {
            Some(cap) => window.min(cap.max(MIN_WINDOW * self.mtu)),
            None => window,
        }
    }

    /// The cap now, if any.
    pub fn cap(&self) -> Option<u64> {
        self.cap
    }

    /// While a cap is in force: the rate, in bytes a second, that sends `window` (Cubic's) as
    /// the cap bounds it in one smallest RTT. The cap is what the path holds without a
    /// standing queue plus [`HEADROOM`], so this is the bottleneck's rate and the headroom's
    /// share of it; quinn's pacing rate, 1.25 × window ÷ smoothed RTT, would be up to a
    /// quarter more, and what it sends beyond the bottleneck's rate queues there until the
    /// window, not the rate, stops the sender (see the module documentation).
    pub fn pace(&self, window: u64) -> Option<f64> {
        let min_rtt = self.min_rtt.filter(|m| !m.is_zero())?;
        self.cap?;
        Some(self.bound(window) as f64 / min_rtt.as_secs_f64())
    }

    fn restart(&mut self, now: Instant) {
        self.start = Some(now);
        self.interval = Samples::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    const MTU: u64 = 1200;

    /// A sender with a slow-start window (doubling per round trip, as Cubic's before any loss)
    /// bounded by `guard`, always with data to send, over one bottleneck of `rate` bytes per
    /// second with an unbounded FIFO and `delay` each way; the receiver acknowledges every
    /// second packet at once. Simulated in steps of 100 µs for `duration`. Returns the largest
    /// queueing delay of packets sent after `settle`, and the bytes delivered.
    fn run(
        guard: &mut Option<QueueGuard>,
        rate: f64,
        delay: Duration,
        duration: Duration,
        settle: Duration,
    ) -> (Duration, u64) {
        let step = Duration::from_micros(100);
        let t0 = Instant::now();
        let mut now = t0;
        let mut slow_start = 40 * MTU;
        let mut in_flight = 0u64;
        // Bottleneck: when each waiting packet was sent, and when the head finishes.
        let mut queue: VecDeque<Instant> = VecDeque::new();
        let mut head_done: Option<Instant> = None;
        // ACKs on their way back: (arrives at, [sent at of each packet]).
        let mut acks: VecDeque<(Instant, Vec<Instant>)> = VecDeque::new();
        let mut pending: Vec<Instant> = Vec::new();
        let mut worst = Duration::ZERO;
        let mut delivered = 0u64;
        let per_packet = Duration::from_secs_f64(MTU as f64 / rate);
        while now < t0 + duration {
            // ACKs arriving.
            while acks.front().is_some_and(|(at, _)| *at <= now) {
                let (_, sents) = acks.pop_front().unwrap();
                for sent in sents {
                    in_flight -= MTU;
                    slow_start += MTU;
                    if let Some(g) = guard.as_mut() {
                        g.on_ack(now, sent, MTU, false);
                    }
                }
                if let Some(g) = guard.as_mut() {
                    g.on_end_acks(now, u64::MAX);
                }
            }
            // The bottleneck, in front of the path's delay.
            while let Some(done) = head_done {
                if done > now {
                    break;
                }
                let sent = queue.pop_front().unwrap();
                delivered += MTU;
                let waited = done.saturating_duration_since(sent) - per_packet;
                if sent >= t0 + settle {
                    worst = worst.max(waited);
                }
                pending.push(sent);
                if pending.len() == 2 {
                    acks.push_back((done + 2 * delay, std::mem::take(&mut pending)));
                }
                head_done = queue.front().map(|&next| done.max(next) + per_packet);
            }
            // Sending.
            let window = guard.as_ref().map_or(slow_start, |g| g.bound(slow_start));
            while in_flight + MTU <= window {
                in_flight += MTU;
                queue.push_back(now);
                if head_done.is_none() {
                    head_done = Some(now + per_packet);
                }
            }
            now += step;
        }
        (worst, delivered)
    }

    #[test]
    fn slow_start_overshoot_is_capped_to_a_short_queue() {
        let rate = 750_000.0 / 8.0;
        let delay = Duration::from_millis(300);
        let duration = Duration::from_secs(8);
        let settle = Duration::from_secs(2);
        let (plain_queue, plain_bytes) = run(&mut None, rate, delay, duration, settle);
        let mut guard = Some(QueueGuard::new(MTU));
        let (queue, bytes) = run(&mut guard, rate, delay, duration, settle);
        let cap = guard.unwrap().cap().expect("a standing queue was seen");
        // Without the guard the queue grows by a round trip's worth every round trip.
        assert!(plain_queue > Duration::from_secs(1), "{plain_queue:?}");
        // With it, once the first round trips are over (the initial window's burst queues on
        // its own), a few datagrams: the headroom, and a probe until an interval notices.
        assert!(queue < Duration::from_millis(60), "{queue:?}");
        // The path holds rate × 600 ms = 56 KB; the cap is about that.
        let path = (rate * 0.6) as u64;
        assert!(
            cap >= path && cap < path + 8 * MTU,
            "cap {cap}, path {path}"
        );
        // And the link stays busy: the guard costs less than a round trip of data.
        assert!(bytes + path >= plain_bytes, "{bytes} vs {plain_bytes}");
    }

    #[test]
    fn without_a_queue_the_window_is_cubics() {
        let mut g = QueueGuard::new(MTU);
        let t0 = Instant::now();
        let mut now = t0;
        g.on_end_acks(now, u64::MAX);
        for i in 0..100u32 {
            now = t0 + Duration::from_millis(u64::from(i) * 10);
            g.on_ack(now, now - Duration::from_millis(100), MTU, false);
            g.on_end_acks(now, u64::MAX);
        }
        assert_eq!(g.cap(), None);
        assert_eq!(g.bound(1 << 30), 1 << 30);
    }

    #[test]
    fn one_late_ack_is_not_a_queue() {
        let mut g = QueueGuard::new(MTU);
        let t0 = Instant::now();
        g.on_end_acks(t0, u64::MAX);
        for i in 1..=20u64 {
            let now = t0 + Duration::from_millis(i * 10);
            // Every eighth acknowledgement was delayed by 25 ms.
            let rtt = if i % 8 == 0 { 125 } else { 100 };
            g.on_ack(now, now - Duration::from_millis(rtt), MTU, false);
            g.on_end_acks(now, u64::MAX);
        }
        assert_eq!(g.cap(), None);
    }

    /// A controller as [`crate::transport::transport_config`] builds it (a 40-datagram initial
    /// window), and its [`ShallowQueue`] to look inside.
    fn controller() -> Box<dyn Controller> {
        let mut cubic = CubicConfig::default();
        cubic.initial_window(40 * MTU);
        Arc::new(ShallowQueueConfig::new(cubic)).build(Instant::now(), MTU as u16)
    }

    fn inside(c: &dyn Controller) -> Box<ShallowQueue> {
        c.clone_box()
            .into_any()
            .downcast::<ShallowQueue>()
            .expect("a ShallowQueue")
    }

    #[test]
    fn a_sender_with_half_its_window_in_flight_is_limited_by_the_window() {
        let mut c = controller();
        let now = Instant::now();
        for pn in 0..20 {
            c.on_sent(now, MTU, pn);
        }
        // Half the window in flight: quinn's "application-limited" does not stop growth.
        assert!(!inside(&*c).app_limited(true));
        // A new batch of acknowledgements starts from what is in flight then.
        c.on_end_acks(now, 0, true, Some(19));
        assert!(inside(&*c).app_limited(true));
        for pn in 20..39 {
            c.on_sent(now, MTU, pn);
        }
        // Just under half: application-limited, as quinn says.
        assert!(inside(&*c).app_limited(true));
        assert!(!inside(&*c).app_limited(false));
    }

    #[test]
    fn the_occupancy_follows_sends_acknowledgements_and_losses() {
        let mut c = controller();
        let occupancy = inside(&*c).occupancy().clone();
        assert_eq!((occupancy.window(), occupancy.in_flight()), (40 * MTU, 0));
        let now = Instant::now();
        for pn in 0..3 {
            c.on_sent(now, MTU, pn);
        }
        assert_eq!(occupancy.in_flight(), 3 * MTU);
        // quinn's own count replaces the controller's at the end of each batch.
        c.on_end_acks(now, 2 * MTU, false, Some(0));
        assert_eq!(occupancy.in_flight(), 2 * MTU);
        c.on_congestion_event(now, now, false, MTU);
        assert_eq!(occupancy.in_flight(), MTU);
        assert!(occupancy.window() < 40 * MTU, "Cubic backed off");
        // A copy (what `quinn::Connection::congestion_state` hands out) shares it.
        assert!(Arc::ptr_eq(inside(&*c).occupancy(), &occupancy));
    }

    #[test]
    fn an_app_limited_sender_is_neither_capped_nor_grown() {
        let (mut g, t0) = opened(Duration::from_millis(100));
        let gap = Duration::from_millis(10);
        // A queue, but the rate is the application's, not the path's.
        let now = acks(&mut g, t0, gap, Duration::from_millis(150), true);
        assert_eq!(g.cap(), None);
        // The path's rate with a queue: capped.
        let now = acks(&mut g, now, gap, Duration::from_millis(150), false);
        let cap = g.cap().expect("a standing queue was seen");
        // No queue, but nothing to send: no probe either.
        acks(&mut g, now, gap, Duration::from_millis(100), true);
        assert_eq!(g.cap(), Some(cap));
    }

    /// A guard whose first ACK frame, one datagram of `path` RTT, opened the first interval,
    /// and when that frame came.
    fn opened(path: Duration) -> (QueueGuard, Instant) {
        let mut g = QueueGuard::new(MTU);
        let t0 = Instant::now();
        g.on_ack(t0, t0 - path, MTU, false);
        g.on_end_acks(t0, u64::MAX);
        (g, t0)
    }

    /// Acknowledges 8 datagrams `gap` apart from `from`, each with `rtt` (sent while the
    /// sender was `app_limited`), and ends each ACK frame; returns when the last one came.
    fn acks(
        g: &mut QueueGuard,
        from: Instant,
        gap: Duration,
        rtt: Duration,
        app_limited: bool,
    ) -> Instant {
        let mut now = from;
        for i in 1..=SAMPLE_PACKETS {
            now = from + gap * i;
            g.on_ack(now, now - rtt, MTU, app_limited);
            g.on_end_acks(now, u64::MAX);
        }
        now
    }

    #[test]
    fn a_capped_window_is_paced_at_the_path_rate_not_a_quarter_above_it() {
        let (mut g, t0) = opened(Duration::from_millis(300));
        // No cap yet: no pace, whatever the window.
        assert_eq!(g.pace(1 << 20), None);
        // 120 KB/s with a 50 ms queue over a 300 ms path.
        acks(
            &mut g,
            t0,
            Duration::from_millis(10),
            Duration::from_millis(350),
            false,
        );
        let cap = g.cap().expect("a standing queue was seen");
        let pace = g.pace(1 << 20).expect("capped");
        // The capped window in one smallest RTT: the path's rate and the headroom's share.
        assert!((pace - cap as f64 / 0.3).abs() < 1.0, "{pace} vs cap {cap}");
        assert!(pace > 120_000.0 && pace < 1.1 * 120_000.0, "{pace}");
        // A Cubic window under the cap (after a loss) is paced by itself.
        let pace = g.pace(12_000).expect("capped");
        assert!((pace - 40_000.0).abs() < 1.0, "{pace}");
    }

    #[test]
    fn a_pause_in_the_sending_does_not_shrink_the_cap() {
        let (mut g, t0) = opened(Duration::from_millis(300));
        let (gap, queued) = (Duration::from_millis(10), Duration::from_millis(350));
        // 120 KB/s with a 50 ms queue: the path holds 120 KB/s × 300 ms.
        let near = |cap: Option<u64>, path: u64| {
            cap.is_some_and(|c| c.abs_diff(path + HEADROOM * MTU) <= 10)
        };
        let now = acks(&mut g, t0, gap, queued, false);
        let first = g.cap();
        assert!(near(first, 36_000), "{first:?}");
        // The next interval begins after a pause of the sender's: its rate is less than
        // half, but the fastest of the round trip still stands.
        let now = acks(&mut g, now + Duration::from_millis(150), gap, queued, false);
        assert_eq!(g.cap(), first);
        // A round trip after the fastest, a slower rate is the path's.
        acks(&mut g, now, gap * 4, queued, false);
        assert!(near(g.cap(), 9_000), "{:?}", g.cap());
    }

    /// One ACK frame of `SAMPLE_PACKETS` datagrams at `now`, sent `gap` apart, the newest
    /// `rtt` before `now` (the others' RTT grows by `gap` each); Cubic's window is `window`.
    fn frame(g: &mut QueueGuard, now: Instant, gap: Duration, rtt: Duration, window: u64) {
        for i in (0..SAMPLE_PACKETS).rev() {
            g.on_ack(now, now - rtt - gap * i, MTU, false);
        }
        g.on_end_acks(now, window);
    }

    #[test]
    fn slow_start_holds_at_the_first_frame_that_queued() {
        let t0 = Instant::now();
        let gap = Duration::from_millis(13);
        let path = Duration::from_millis(600);
        // The handshake's sample (the path without a queue) opens the first interval; the
        // session tickets, acknowledged before any data was sent, make it app-limited.
        let handshake = |g: &mut QueueGuard| {
            g.on_ack(t0, t0 - path, MTU, false);
            g.on_end_acks(t0, 40 * MTU);
            let t = t0 + Duration::from_millis(10);
            g.on_ack(t, t - path, MTU, true);
            g.on_end_acks(t, 40 * MTU);
        };
        let mut g = QueueGuard::new(MTU);
        handshake(&mut g);
        // The first frame of a burst, sent at once: every datagram's RTT holds the seven
        // datagrams' serialization at the bottleneck. Its interval holds the tickets'
        // acknowledgement and is not judged.
        let t1 = t0 + Duration::from_millis(700);
        frame(&mut g, t1, Duration::ZERO, path + 7 * gap, 48 * MTU);
        assert_eq!(g.cap(), Some(48 * MTU), "slow start stops where it is");
        assert_eq!(g.bound(56 * MTU), 48 * MTU);
        // The next frame closes the interval with the queue still there: a measured cap.
        let t2 = t1 + 8 * gap;
        frame(&mut g, t2, Duration::ZERO, path + 15 * gap, 56 * MTU);
        let rate = (8 * MTU) as f64 / (8 * gap).as_secs_f64();
        let measured = (rate * path.as_secs_f64()) as u64 + HEADROOM * MTU;
        assert!(
            g.cap().is_some_and(|c| c.abs_diff(measured) <= 10),
            "{:?} vs {measured}",
            g.cap()
        );

        // A hold whose interval then sees no queue is let go.
        let mut g = QueueGuard::new(MTU);
        handshake(&mut g);
        frame(&mut g, t1, Duration::ZERO, path + 7 * gap, 48 * MTU);
        assert!(g.cap().is_some());
        frame(&mut g, t2, gap, path, 56 * MTU);
        assert_eq!(g.cap(), None, "the burst had drained: slow start goes on");
    }

    #[test]
    fn no_hold_on_a_short_or_app_limited_frame_or_an_older_datagrams_delay() {
        let t0 = Instant::now();
        let path = Duration::from_millis(100);
        let fresh = || {
            let mut g = QueueGuard::new(MTU);
            g.on_ack(t0, t0 - path, MTU, false);
            g.on_end_acks(t0, 40 * MTU);
            g
        };
        let now = t0 + Duration::from_millis(300);
        let late = path + Duration::from_millis(40);
        // A frame of three datagrams, sent when the peer's delayed-ACK timer ran out.
        let mut g = fresh();
        for _ in 0..3 {
            g.on_ack(now, now - late, MTU, false);
        }
        g.on_end_acks(now, 40 * MTU);
        assert_eq!(g.cap(), None);
        // A full frame of an app-limited sender.
        let mut g = fresh();
        for _ in 0..SAMPLE_PACKETS {
            g.on_ack(now, now - late, MTU, true);
        }
        g.on_end_acks(now, 40 * MTU);
        assert_eq!(g.cap(), None);
        // A full frame whose older datagrams waited at the receiver, the newest did not.
        let mut g = fresh();
        frame(&mut g, now, Duration::from_millis(5), path, 40 * MTU);
        assert_eq!(g.cap(), None);
    }

    #[test]
    fn the_cap_never_goes_below_the_minimum_window() {
        let mut g = QueueGuard::new(MTU);
        let t0 = Instant::now();
        // A fast path (1 ms) whose samples then show a queue at a tiny rate.
        g.on_ack(t0, t0 - Duration::from_millis(1), MTU, false);
        g.on_end_acks(t0, u64::MAX);
        for i in 1..=8u64 {
            let now = t0 + Duration::from_secs(i);
            g.on_ack(now, now - Duration::from_millis(200), 10, false);
        }
        g.on_end_acks(t0 + Duration::from_secs(8), u64::MAX);
        assert_eq!(g.cap(), Some(MIN_WINDOW * MTU));
        assert_eq!(g.bound(100 * MTU), MIN_WINDOW * MTU);
        // Never more than Cubic's.
        assert_eq!(g.bound(2 * MTU), 2 * MTU);
    }
}
