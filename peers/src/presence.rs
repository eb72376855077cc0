//! Presence (spec §7.1, §7.29, §7.32): who is on the other side and how their link is.
//!
//! - The reference peers describe their platform in `HELLO` ([`platform`]); the relay passes
//!   each peer's platform to the other in `JOINED`.
//! - Each peer measures its own connection from quinn's statistics ([`StatusMeter`]) and sends
//!   the figures as `STATUS` every [`STATUS_INTERVAL`]; the relay forwards them, so both sides
//!   see both links.
//! - A consumer whose viewport changes sends `VIEWPORT`; the agent keeps the latest.
//!
//! [`Presence`] is what one side knows at the end of a session, for reports and the demo.

use std::time::{Duration, Instant};

use quinn::ConnectionStats;
use serde::Serialize;
use tandem_protocol::Message;
use tandem_protocol::message::{Platform, Status, Viewport};

/// How often a peer sends its `STATUS`.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// The viewport the reference peers announce: they render no window of their own.
pub const DEFAULT_VIEWPORT: Viewport = Viewport {
    width: 1280,
    height: 800,
    dpr_percent: 100,
};

/// The reference peers' platform: this software as the browser (there is none), the
/// operating system and architecture it was built for, `viewport`, and the language of the
/// environment (`LC_ALL`, `LC_MESSAGES` or `LANG`, as a BCP 47 tag).
pub fn platform(viewport: Viewport) -> Platform {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let locale = var("LC_ALL")
        .or_else(|| var("LC_MESSAGES"))
        .or_else(|| var("LANG"));
    Platform {
        browser: format!("tandem reference peer {}", env!("CARGO_PKG_VERSION")),
        os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        viewport,
        language: locale.as_deref().map_or_else(|| "en".to_owned(), bcp47),
    }
}

/// A POSIX locale name (`de_DE.UTF-8@euro`) as a BCP 47 language tag (`de-DE`); `C` and
/// `POSIX` are `en`.
pub fn bcp47(locale: &str) -> String {
    let base = locale.split(['.', '@']).next().unwrap_or("");
    if base.is_empty() || base == "C" || base == "POSIX" {
        return "en".to_owned();
    }
    let tag: String = base
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .map(|c| if c == '_' { '-' } else { c })
        .collect();
    if tag.is_empty() { "en".to_owned() } else { tag }
}

/// Parses a viewport as `WIDTHxHEIGHT` or `WIDTHxHEIGHT@DPR` (`390x844@3`, `1280x800@1.25`),
/// as `--viewport` takes it.
pub fn parse_viewport(s: &str) -> Result<Viewport, String> {
    let bad = || format!("{s:?}: WIDTHxHEIGHT or WIDTHxHEIGHT@DPR, e.g. 390x844@3");
    let (size, dpr) = s.split_once('@').unwrap_or((s, "1"));
    let (w, h) = size.split_once('x').ok_or_else(bad)?;
    let width: u32 = w.parse().map_err(|_| bad())?;
    let height: u32 = h.parse().map_err(|_| bad())?;
    let dpr: f64 = dpr.parse().map_err(|_| bad())?;
    if width == 0 || height == 0 || !(0.1..=10.0).contains(&dpr) {
        return Err(bad());
    }
    Ok(Viewport {
        width,
        height,
        dpr_percent: (dpr * 100.0).round() as u32,
    })
}

/// Turns quinn's connection statistics into `STATUS` figures (sans-IO: the caller passes the
/// statistics and the time). Throughput is what was sent since the previous sample.
#[derive(Debug, Clone, Default)]
pub struct StatusMeter {
    last: Option<(Instant, u64)>,
}

impl StatusMeter {
    /// A meter with no sample yet.
    pub fn new() -> Self {
        StatusMeter::default()
    }

    /// The figures at `now` from `stats`: smoothed round trip, packets lost per million sent
    /// over the connection's life, and the send rate since the previous sample (0 on the
    /// first).
    pub fn sample(&mut self, stats: &ConnectionStats, now: Instant) -> Status {
        let sent = stats.udp_tx.bytes;
        let throughput_bps = match self.last {
            Some((t, b)) if now > t => {
                let secs = now.duration_since(t).as_secs_f64();
                (sent.saturating_sub(b) as f64 * 8.0 / secs) as u64
            }
            _ => 0,
        };
        self.last = Some((now, sent));
        let packets = stats.path.sent_packets.max(1);
        Status {
            rtt_ms: u32::try_from(stats.path.rtt.as_millis()).unwrap_or(u32::MAX),
            loss_ppm: u32::try_from(stats.path.lost_packets.saturating_mul(1_000_000) / packets)
                .unwrap_or(u32::MAX),
            throughput_bps,
        }
    }
}

/// What one side knows about the session's presence.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Presence {
    /// The other peer's platform, from `JOINED`.
    pub peer_platform: Option<Platform>,
    /// The other peer's latest viewport (from `JOINED`, then `VIEWPORT`).
    pub peer_viewport: Option<Viewport>,
    /// The latest `STATUS` the other peer sent about its link.
    pub peer_status: Option<Status>,
    /// `STATUS` messages received.
    pub statuses_received: u64,
    /// This side's own latest figures.
    pub own_status: Option<Status>,
}

impl Presence {
    /// Presence starting from the other peer's platform.
    pub fn with_peer(platform: Option<&Platform>) -> Self {
        Presence {
            peer_platform: platform.cloned(),
            peer_viewport: platform.map(|p| p.viewport),
            ..Presence::default()
        }
    }

    /// Takes a `STATUS` or `VIEWPORT` from the other side; returns whether it was one.
    pub fn on_message(&mut self, msg: &Message) -> bool {
        match msg {
            Message::Status(s) => {
                self.peer_status = Some(*s);
                self.statuses_received += 1;
                true
            }
            Message::Viewport(v) => {
                self.peer_viewport = Some(v.viewport);
                true
            }
            _ => false,
        }
    }
}

/// One line describing a platform: `tandem reference peer 0.1.0 on linux x86_64, 1280×800 @1.00,
/// en`.
pub fn describe_platform(p: &Platform) -> String {
    format!(
        "{} on {}, {}×{} @{:.2}, {}",
        p.browser,
        p.os,
        p.viewport.width,
        p.viewport.height,
        f64::from(p.viewport.dpr_percent) / 100.0,
        p.language
    )
}

/// One line describing link figures: `rtt 12 ms, loss 0.00 %, 1.2 Mbit/s`.
pub fn describe_status(s: &Status) -> String {
    format!(
        "rtt {} ms, loss {:.2} %, sending {:.1} kbit/s",
        s.rtt_ms,
        f64::from(s.loss_ppm) / 10_000.0,
        s.throughput_bps as f64 / 1000.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locales_become_language_tags() {
        assert_eq!(bcp47("de_DE.UTF-8"), "de-DE");
        assert_eq!(bcp47("en_GB.ISO-8859-1@euro"), "en-GB");
        assert_eq!(bcp47("C.UTF-8"), "en");
        assert_eq!(bcp47("POSIX"), "en");
        assert_eq!(bcp47("fr"), "fr");
        assert_eq!(bcp47(""), "en");
    }

    #[test]
    fn viewports_parse() {
        let v = parse_viewport("390x844@3").expect("valid");
        assert_eq!((v.width, v.height, v.dpr_percent), (390, 844, 300));
        let v = parse_viewport("1280x800").expect("valid");
        assert_eq!(v.dpr_percent, 100);
        assert_eq!(
            parse_viewport("1280x800@1.25").map(|v| v.dpr_percent),
            Ok(125)
        );
        for bad in ["", "1280", "0x800", "1280x800@0", "axb", "1280x800@x"] {
            assert!(parse_viewport(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_meter_measures_what_was_sent_since_the_last_sample() {
        let mut m = StatusMeter::new();
        let mut stats = ConnectionStats::default();
        stats.path.rtt = Duration::from_millis(612);
        stats.path.sent_packets = 200;
        stats.path.lost_packets = 2;
        let t0 = Instant::now();
        let first = m.sample(&stats, t0);
        assert_eq!(first.throughput_bps, 0, "nothing to compare with yet");
        assert_eq!(first.rtt_ms, 612);
        assert_eq!(first.loss_ppm, 10_000);
        stats.udp_tx.bytes += 93_750;
        let second = m.sample(&stats, t0 + Duration::from_secs(1));
        assert_eq!(second.throughput_bps, 750_000);
    }

    #[test]
    fn status_and_viewport_update_presence() {
        let mut p = Presence::with_peer(Some(&platform(DEFAULT_VIEWPORT)));
        assert_eq!(p.peer_viewport, Some(DEFAULT_VIEWPORT));
        let s = Status {
            rtt_ms: 600,
            loss_ppm: 10_000,
            throughput_bps: 750_000,
        };
        assert!(p.on_message(&Message::Status(s)));
        let v = Viewport {
            width: 390,
            height: 844,
            dpr_percent: 300,
        };
        assert!(p.on_message(&Message::Viewport(
            tandem_protocol::message::ViewportChange { viewport: v }
        )));
        assert!(!p.on_message(&Message::Ping(tandem_protocol::message::Ping { nonce: 1 })));
        assert_eq!(p.peer_status, Some(s));
        assert_eq!(p.statuses_received, 1);
        assert_eq!(p.peer_viewport, Some(v));
        assert_eq!(
            describe_status(&s),
            "rtt 600 ms, loss 1.00 %, sending 750.0 kbit/s"
        );
    }
}
