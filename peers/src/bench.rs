//! The end-to-end benchmark (issue 7 item 6): a corpus page shared by Tandem over an emulated
//! link, next to the baseline of what websocket products do, the page's HTML gzip-compressed
//! over TCP + TLS through the same link.
//!
//! ```text
//!  Tandem:    consumer ─QUIC─[Link]─ relay ─[Link]─QUIC─ agent        (demo::demo_over)
//!  baseline:  BaselineServer ────TLS over TCP────[TcpLink]──── fetch   (a websocket viewer)
//! ```
//!
//! What one [`Measurement`] holds, for either system, on the viewer's side of the link:
//!
//! - Time to first visible render and time to complete, both from the moment the viewer
//!   starts to connect, so both pay their handshakes. Both viewers find the page where they
//!   fetch it: the baseline's on its web server, Tandem's at the relay, which the customer's
//!   snapshot, sent ahead when the session opened, has reached by then ([`join_after`]: the
//!   agent connects that long after the session exists, as one who is read the session code).
//!   Tandem's agent connects (QUIC, HELLO, JOIN) and the relay hands it the snapshot in parts,
//!   the top of the page first; Tandem's first render is when the first parts that reach into
//!   the body have arrived (the agent can show them, viewport first), its complete render when
//!   the last part has and the hash is verified. The baseline renders when the whole HTML has
//!   arrived, so its first render is its time to complete.
//! - Bytes on the wire of the viewer's link, headers included: for Tandem the agent ↔ relay
//!   link (UDP payload + [`UDP_OVERHEAD`] per datagram), for the baseline the client ↔ server
//!   TCP link (payload + 40 bytes per segment, handshake and pure ACKs included,
//!   [`TcpLinkCounters`]). The consumer's upload is not counted for either: a websocket
//!   product's consumer uploads the page to its server too.
//! - The bound of the issue's target: bytes on the wire down ÷ link rate + 2 round trips.
//! - On [`TARGET_LINK`], in a Tandem run of its own: how long the customer's pointer took to
//!   reach the agent while the snapshot was arriving ([`Measurement::pointer`]). The customer
//!   points from the moment the consumer knows the agent joined; the relay sent the snapshot
//!   it held when the agent joined, so on small pages it has arrived before any pointer could
//!   and there is nothing to measure.
//! - On [`TARGET_LINK`], in another run of its own: the times of a returning agent, one that
//!   visited the relay before and so joins in 0-RTT data ([`Measurement::returning`]). The
//!   baseline stays a first visit: TCP gives a returning viewer no such shortcut, and a
//!   resumed TLS handshake still takes its round trip.
//!
//! The baseline favours TCP where the emulation must guess: its certificate is one small
//! self-signed ECDSA certificate, not a web server's chain, and the TCP model charges a lost
//! segment only its fast retransmit ([`crate::link`], "The TCP model").
//!
//! ## Example: one page over one link
//!
//! ```no_run
//! # async fn demo() -> Result<(), tandem_peers::bench::BenchError> {
//! use tandem_peers::bench::{self, System};
//!
//! let page = std::path::Path::new("../shared/corpus/pages/heise.html");
//! let link = bench::link_for("300ms,750kbit,1%", "heise")?;
//! let tandem = bench::measure(System::Tandem, page, "300ms,750kbit,1%", &link).await?;
//! let baseline = bench::measure(System::Baseline, page, "300ms,750kbit,1%", &link).await?;
//! println!("{:.0} ms vs {:.0} ms", tandem.complete_ms, baseline.complete_ms);
//! # Ok(()) }
//! ```

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::demo::{self, DemoArgs, PointerLatency};
use crate::link::{LinkCounters, LinkSpec, LinkSpecError, TcpLink, TcpLinkCounters, UDP_OVERHEAD};
use crate::session::SessionError;

/// The four links of the issue, by name: plain loopback, a good link, a poor mobile link and a
/// very poor one (each direction; a round trip is twice the delay).
pub const LINKS: [&str; 4] = [
    "loopback",
    "50ms,10mbit",
    "300ms,750kbit,1%",
    "600ms,256kbit,3%",
];

/// The link of the issue's targets.
pub const TARGET_LINK: &str = "300ms,750kbit,1%";

/// The issue's target: time to complete within this many times [`bound_ms`].
pub const BOUND_FACTOR: f64 = 1.3;

/// Milliseconds between two moves of the customer's pointer in the pointer runs (50 a second,
/// as browsers deliver `mousemove` to a page that throttles it to animation frames or less).
pub const POINTER_EVERY_MS: u64 = 20;

/// The issue's pointer target: the 95th percentile within the one-way delay between the
/// customer and the agent plus this many milliseconds. Each side is behind its own link, so
/// that delay is twice a link's.
pub const POINTER_SLACK_MS: f64 = 50.0;

/// Pages above this many bytes must render first within a third of the baseline's time to
/// complete.
pub const LARGE_PAGE: u64 = 100 * 1024;

/// The gzip level of the baseline, as web servers compress (nginx and Apache default to 1 and
/// 6; 6 is zlib's default and the usual production setting).
pub const GZIP_LEVEL: u32 = 6;

/// The websocket upgrade request the baseline's viewer sends (RFC 6455 §1.3's key).
pub const UPGRADE_REQUEST: &[u8] = b"GET /session HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// The baseline server's answer to [`UPGRADE_REQUEST`], before the page's message.
pub const UPGRADE_RESPONSE: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/// A failure of a measurement.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A socket or file failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// TLS configuration or the TLS handshake failed.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// Generating the baseline's certificate failed.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A link name is not a link spec.
    #[error(transparent)]
    Link(#[from] LinkSpecError),
    /// The Tandem session failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The baseline server's answer is not an upgrade followed by one binary message.
    #[error("baseline answer: {0}")]
    Malformed(String),
    /// The Tandem session ended without the agent rendering the page.
    #[error("the agent never rendered the page")]
    NoRender,
    /// A returning agent's join did not go as 0-RTT data ([`returning`]).
    #[error("the returning agent's join did not go as 0-RTT data")]
    NoZeroRtt,
}

/// Which system a [`Measurement`] measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum System {
    /// Tandem: relay, consumer and agent over QUIC, each client behind its own emulated link.
    Tandem,
    /// The websocket baseline: the page's HTML gzip-compressed over one TLS connection.
    Baseline,
}

impl System {
    /// The name in the CSV: `tandem` or `baseline`.
    pub fn name(self) -> &'static str {
        match self {
            System::Tandem => "tandem",
            System::Baseline => "baseline",
        }
    }
}

/// One page over one link by one system (see the module docs for what each figure counts).
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// The page's name (its file stem).
    pub page: String,
    /// The page's HTML bytes.
    pub page_bytes: u64,
    /// The link's name (one of [`LINKS`], or a spec).
    pub link: String,
    /// The link, with the seed it ran with.
    pub spec: LinkSpec,
    /// Tandem or the baseline.
    pub system: System,
    /// Milliseconds from connecting to the first render the viewer can show.
    pub first_render_ms: f64,
    /// Milliseconds from connecting to the whole page being there.
    pub complete_ms: f64,
    /// Tandem only: milliseconds from connecting until the agent had joined (the QUIC
    /// handshake, then `HELLO` and `JOIN` answered; two round trips on a first visit). Nothing
    /// of the page can arrive before it, so it is the floor under the first render.
    pub joined_ms: Option<f64>,
    /// Bytes on the wire from the viewer, headers included.
    pub wire_bytes_up: u64,
    /// Bytes on the wire to the viewer, headers included.
    pub wire_bytes_down: u64,
    /// Tandem on [`TARGET_LINK`] only: the customer's pointer, moved every
    /// [`POINTER_EVERY_MS`] from the agent's join in a run of its own (so that it counts in
    /// none of the figures above), and the latency of the pointers that arrived while the
    /// snapshot was arriving ([`crate::demo::PointerReport::during_snapshot`]).
    pub pointer: Option<PointerLatency>,
    /// Tandem on [`TARGET_LINK`] only: the same page to a returning agent, in a run of its own
    /// ([`returning`]).
    pub returning: Option<Returning>,
}

/// A returning agent's times (`tandem demo --returning-agent`): the agent visited the relay
/// before, so it holds a session ticket and joins in 0-RTT data (spec §3.5), one round trip
/// after it starts to connect instead of two. Both from the agent starting to connect.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Returning {
    /// Milliseconds to the first render the agent can show.
    pub first_render_ms: f64,
    /// Milliseconds to the whole page, verified.
    pub complete_ms: f64,
}

impl Measurement {
    /// The issue's bound for this measurement (see [`bound_ms`]); `None` on a link without a
    /// rate limit.
    pub fn bound_ms(&self) -> Option<f64> {
        bound_ms(&self.spec, self.wire_bytes_down)
    }

    /// Time to complete ÷ [`Measurement::bound_ms`].
    pub fn ratio_to_bound(&self) -> Option<f64> {
        self.bound_ms().map(|b| self.complete_ms / b)
    }

    /// Bytes on the wire in both directions.
    pub fn wire_bytes(&self) -> u64 {
        self.wire_bytes_up + self.wire_bytes_down
    }
}

/// The issue's bound on the time to complete: `wire_bytes` ÷ the link rate + 2 round trips
/// (a round trip is twice the one-way delay), in milliseconds; `None` when the link has no
/// rate limit.
pub fn bound_ms(spec: &LinkSpec, wire_bytes: u64) -> Option<f64> {
    let rate = spec.rate_bps?;
    let serialization = wire_bytes as f64 * 8.0 * 1000.0 / rate as f64;
    Some(serialization + 4.0 * spec.delay.as_secs_f64() * 1000.0)
}

/// The link named `name` (one of [`LINKS`], or any link spec) with a seed fixed by the page and
/// the link, so that a rerun loses the same packets.
pub fn link_for(name: &str, page: &str) -> Result<LinkSpec, LinkSpecError> {
    let spec: LinkSpec = name.parse()?;
    // FNV-1a of "page|link".
    let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
    for b in page.bytes().chain(*b"|").chain(name.bytes()) {
        seed = (seed ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    Ok(LinkSpec { seed, ..spec })
}

/// Measures `system` sharing the page at `path` over `spec` (named `link` in the result).
pub async fn measure(
    system: System,
    path: &Path,
    link: &str,
    spec: &LinkSpec,
) -> Result<Measurement, BenchError> {
    let html = std::fs::read(path)?;
    let page = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (first_render_ms, complete_ms, joined_ms, wire_bytes_up, wire_bytes_down) = match system {
        System::Tandem => {
            let t = tandem(path, spec).await?;
            let joined = Some(t.report.agent_join_ms);
            (
                t.first_visible_ms,
                t.complete_ms,
                joined,
                t.wire_up,
                t.wire_down,
            )
        }
        System::Baseline => {
            let b = baseline(&html, spec).await?;
            let ms = b.complete.as_secs_f64() * 1000.0;
            (ms, ms, None, b.link.wire_up(), b.link.wire_down())
        }
    };
    Ok(Measurement {
        page,
        page_bytes: html.len() as u64,
        link: link.to_owned(),
        spec: *spec,
        system,
        first_render_ms,
        complete_ms,
        joined_ms,
        wire_bytes_up,
        wire_bytes_down,
        pointer: None,
        returning: None,
    })
}

/// The pointer run of [`Measurement::pointer`]: Tandem sharing the page at `path` over `spec`
/// while the customer's pointer moves every [`POINTER_EVERY_MS`].
pub async fn pointer(path: &Path, spec: &LinkSpec) -> Result<PointerLatency, BenchError> {
    let run = tandem_with(path, spec, Some(POINTER_EVERY_MS)).await?;
    run.report
        .pointer
        .map(|p| p.during_snapshot)
        .ok_or(BenchError::NoRender)
}

/// The run of [`Measurement::returning`]: Tandem sharing the page at `path` over `spec` with an
/// agent that visited the relay before. Fails with [`BenchError::NoZeroRtt`] when its join did
/// not go as 0-RTT data after all, since its times would then be a new agent's.
pub async fn returning(path: &Path, spec: &LinkSpec) -> Result<Returning, BenchError> {
    let mut args = demo_args(path, spec)?;
    args.returning_agent = true;
    let run = tandem_args(&args, spec).await?;
    if !run.report.agent_0rtt {
        return Err(BenchError::NoZeroRtt);
    }
    Ok(Returning {
        first_render_ms: run.first_visible_ms,
        complete_ms: run.complete_ms,
    })
}

/// Measures every page of `pages` over every link of `links` (names as in [`LINKS`]), Tandem
/// then the baseline, one at a time on a tokio runtime of its own, with the seed of
/// [`link_for`]. Prints a line per measurement to stderr. A measurement that fails is tried
/// once more, and left out if it fails again. Returns the measurements in the order they ran,
/// and one line per failed attempt.
pub fn run_all(
    pages: &[std::path::PathBuf],
    links: &[String],
) -> io::Result<(Vec<Measurement>, Vec<String>)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for path in pages {
        let page = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        for link in links {
            let spec = match link_for(link, &page) {
                Ok(spec) => spec,
                Err(e) => {
                    failures.push(format!("link {link:?}: {e}"));
                    continue;
                }
            };
            for system in [System::Tandem, System::Baseline] {
                for attempt in 1..=2 {
                    let started = Instant::now();
                    let run = async {
                        let mut m = measure(system, path, link, &spec).await?;
                        if system == System::Tandem && link == TARGET_LINK {
                            m.pointer = Some(pointer(path, &spec).await?);
                            m.returning = Some(returning(path, &spec).await?);
                        }
                        Ok::<_, BenchError>(m)
                    };
                    match runtime.block_on(run) {
                        Ok(m) => {
                            note!(
                                "e2e: {page:<20} {link:<18} {:<8} first {:>8.0} ms, complete {:>8.0} ms, {:>8} B down ({:.1} s)",
                                system.name(),
                                m.first_render_ms,
                                m.complete_ms,
                                m.wire_bytes_down,
                                started.elapsed().as_secs_f64()
                            );
                            rows.push(m);
                            break;
                        }
                        Err(e) => {
                            let line = format!(
                                "{page} over {link}, {}, attempt {attempt} of 2: {e}",
                                system.name()
                            );
                            note!("e2e: FAILED: {line}");
                            failures.push(line);
                        }
                    }
                }
            }
        }
    }
    Ok((rows, failures))
}

// ---------------------------------------------------------------------------------------------
// Tandem

/// What [`tandem`] measured.
#[derive(Debug, Clone)]
pub struct TandemRun {
    /// Milliseconds from the agent starting to connect to the first parts of the snapshot that
    /// reach into the body (the top of the page, which the agent can show while the rest
    /// arrives), or to the whole page when no earlier part showed anything.
    pub first_visible_ms: f64,
    /// Milliseconds from the agent starting to connect to its first verified render of the
    /// whole page.
    pub complete_ms: f64,
    /// Bytes on the wire from the agent to the relay (UDP payload and headers).
    pub wire_up: u64,
    /// Bytes on the wire from the relay to the agent (UDP payload and headers).
    pub wire_down: u64,
    /// The demo's full report.
    pub report: demo::DemoReport,
}

/// Shares the page at `path` once with no changes (`tandem demo --page PATH --batches 0`), each
/// client behind a link shaped by `spec`. On loopback (`spec` shapes nothing) the forwarders
/// still run, with a delay of 1 µs, so that the bytes are counted.
pub async fn tandem(path: &Path, spec: &LinkSpec) -> Result<TandemRun, BenchError> {
    tandem_with(path, spec, None).await
}

/// [`tandem`], with the customer's pointer moving every `pointer_every` milliseconds when
/// given (`tandem demo --pointer-every`).
async fn tandem_with(
    path: &Path,
    spec: &LinkSpec,
    pointer_every: Option<u64>,
) -> Result<TandemRun, BenchError> {
    let mut args = demo_args(path, spec)?;
    args.pointer_every = pointer_every;
    tandem_args(&args, spec).await
}

/// [`tandem`] with the demo's arguments `args`.
async fn tandem_args(args: &DemoArgs, spec: &LinkSpec) -> Result<TandemRun, BenchError> {
    let spec = if spec.is_none() {
        LinkSpec {
            delay: Duration::from_micros(1),
            ..*spec
        }
    } else {
        *spec
    };
    let report = demo::demo_over(args, &spec).await?;
    let first = report.first_render_ms.ok_or(BenchError::NoRender)?;
    let wire = |l: Option<LinkCounters>| {
        l.map_or((0, 0), |l| {
            (
                l.up.bytes + l.up.packets * UDP_OVERHEAD as u64,
                l.down.bytes + l.down.packets * UDP_OVERHEAD as u64,
            )
        })
    };
    let (wire_up, wire_down) = wire(report.agent_link);
    let visible = report.first_shown_ms().unwrap_or(first);
    Ok(TandemRun {
        first_visible_ms: report.agent_join_ms + visible,
        complete_ms: report.agent_join_ms + first,
        wire_up,
        wire_down,
        report,
    })
}

/// The demo's arguments for one page shared once over `spec` (`tandem demo --page PATH
/// --batches 0 --json --join-after MS`, MS from [`join_after`]); every other option keeps its
/// default.
fn demo_args(path: &Path, spec: &LinkSpec) -> Result<DemoArgs, BenchError> {
    let html = std::fs::read(path)?;
    Ok(DemoArgs {
        page: Some(path.to_path_buf()),
        batches: 0,
        json: true,
        join_after: Some(join_after(&html, spec).as_millis() as u64),
        ..DemoArgs::default()
    })
}

/// How long the agent waits after the customer's session exists before it connects
/// (`tandem demo --join-after`): long enough for the customer's snapshot, sent ahead (spec
/// §3.2), to reach the relay, so that the agent finds the page there as the baseline's viewer
/// finds it on the web server. Reckoned from the page's gzip size (the compressed snapshot is
/// within a few per cent of it, smaller on most pages) at the link's rate, a quarter more for
/// headers and pacing, and two round trips for a lost datagram's retransmission; nothing on an
/// unshaped link. A wait too short only makes Tandem slower: the agent then shares the
/// customer's link with the rest of the upload.
pub fn join_after(html: &[u8], spec: &LinkSpec) -> Duration {
    if spec.is_none() {
        return Duration::ZERO;
    }
    spec.serialization(gzip(html).len()) * 5 / 4 + spec.delay * 4
}

// ---------------------------------------------------------------------------------------------
// The baseline

/// `html` gzip-compressed at [`GZIP_LEVEL`], as a web server sends it.
pub fn gzip(html: &[u8]) -> Vec<u8> {
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(GZIP_LEVEL));
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(html);
    encoder.finish().unwrap_or_default()
}

/// The header of an unmasked binary websocket message of `len` bytes (RFC 6455 §5.2).
pub fn websocket_header(len: usize) -> Vec<u8> {
    let mut h = vec![0x82];
    if len < 126 {
        h.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        h.push(126);
        h.extend_from_slice(&short.to_be_bytes());
    } else {
        h.push(127);
        h.extend_from_slice(&(len as u64).to_be_bytes());
    }
    h
}

/// The baseline's server: a websocket product's server that answers every viewer's upgrade
/// request with the upgrade and one binary message holding `body` (the page's HTML, gzip
/// compressed), over TLS on `127.0.0.1`. It stops when dropped.
#[derive(Debug)]
pub struct BaselineServer {
    addr: SocketAddr,
    client_config: Arc<rustls::ClientConfig>,
    task: JoinHandle<()>,
}

impl BaselineServer {
    /// Starts a server for `body` with a fresh self-signed certificate for `localhost`. Must
    /// be called inside a tokio runtime.
    pub async fn spawn(body: Vec<u8>) -> Result<Self, BenchError> {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
        let cert: CertificateDer<'static> = ck.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert)?;
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let mut answer = UPGRADE_RESPONSE.to_vec();
        answer.extend_from_slice(&websocket_header(body.len()));
        answer.extend_from_slice(&body);
        let task = tokio::spawn(serve(
            listener,
            TlsAcceptor::from(Arc::new(server)),
            Arc::new(answer),
        ));
        Ok(Self {
            addr,
            client_config: Arc::new(client),
            task,
        })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A TLS client configuration that trusts this server's certificate.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client_config.clone()
    }
}

impl Drop for BaselineServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, answer: Arc<Vec<u8>>) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((tcp, _)) = listener.accept().await {
        let (acceptor, answer) = (acceptor.clone(), answer.clone());
        connections.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let mut tls = acceptor.accept(tcp).await?;
            read_head(&mut tls, &mut Vec::new()).await?;
            tls.write_all(&answer).await?;
            tls.shutdown().await?;
            Ok::<_, io::Error>(())
        });
        while connections.try_join_next().is_some() {}
    }
}

/// Reads from `r` into `buf` until it holds an HTTP head (up to the blank line); returns the
/// head's length. Bytes after the head stay in `buf`.
async fn read_head<R: AsyncReadExt + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(end + 4);
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "HTTP head over 64 KiB",
            ));
        }
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// What a baseline viewer received.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The websocket message's payload.
    pub body: Vec<u8>,
    /// From starting to connect to the payload's last byte.
    pub complete: Duration,
}

/// The baseline's viewer: connects to `addr` over TCP, then TLS (server name `localhost`),
/// sends [`UPGRADE_REQUEST`] and reads the upgrade and one binary message; then reads on to the
/// end of the connection, so that the server's close is counted too.
pub async fn fetch(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<Fetched, BenchError> {
    let started = Instant::now();
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost")
        .map_err(|e| BenchError::Malformed(format!("server name: {e}")))?;
    let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
    tls.write_all(UPGRADE_REQUEST).await?;
    tls.flush().await?;
    let mut buf = Vec::new();
    let head = read_head(&mut tls, &mut buf).await?;
    if !buf.starts_with(b"HTTP/1.1 101 ") {
        return Err(BenchError::Malformed(
            String::from_utf8_lossy(&buf[..head]).into_owned(),
        ));
    }
    buf.drain(..head);
    read_at_least(&mut tls, &mut buf, 2).await?;
    if buf[0] != 0x82 {
        return Err(BenchError::Malformed(format!("frame byte {:#04x}", buf[0])));
    }
    let (header, len) = match buf[1] {
        126 => {
            read_at_least(&mut tls, &mut buf, 4).await?;
            (4, usize::from(u16::from_be_bytes([buf[2], buf[3]])))
        }
        127 => {
            read_at_least(&mut tls, &mut buf, 10).await?;
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            let n = usize::try_from(u64::from_be_bytes(n))
                .map_err(|_| BenchError::Malformed("message length".into()))?;
            (10, n)
        }
        n => (2, usize::from(n)),
    };
    read_at_least(&mut tls, &mut buf, header + len).await?;
    let complete = started.elapsed();
    let body = buf[header..header + len].to_vec();
    // The server's close_notify and FIN; the page is already there.
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest).await;
    Ok(Fetched { body, complete })
}

/// Reads from `r` until `buf` holds at least `n` bytes.
async fn read_at_least<R: AsyncReadExt + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    n: usize,
) -> Result<(), BenchError> {
    let mut chunk = vec![0u8; 64 * 1024];
    while buf.len() < n {
        let got = r.read(&mut chunk).await?;
        if got == 0 {
            return Err(BenchError::Malformed(format!(
                "connection ended after {} of {n} bytes",
                buf.len()
            )));
        }
        buf.extend_from_slice(&chunk[..got]);
    }
    Ok(())
}

/// What [`baseline`] measured.
#[derive(Debug, Clone)]
pub struct BaselineRun {
    /// The gzip bytes the viewer received.
    pub body: Vec<u8>,
    /// From starting to connect to the last byte of the page (TCP and TLS handshakes, the
    /// upgrade request and the message).
    pub complete: Duration,
    /// What the link carried, once the connection was closed.
    pub link: TcpLinkCounters,
}

/// Serves `html` gzip-compressed ([`gzip`]) to one viewer whose TCP connection crosses a
/// [`TcpLink`] shaped by `spec`.
pub async fn baseline(html: &[u8], spec: &LinkSpec) -> Result<BaselineRun, BenchError> {
    let server = BaselineServer::spawn(gzip(html)).await?;
    let link = TcpLink::spawn(server.addr(), spec).await?;
    let fetched = fetch(link.addr(), server.client_config()).await?;
    Ok(BaselineRun {
        body: fetched.body,
        complete: fetched.complete,
        link: link.stats(),
    })
}

// ---------------------------------------------------------------------------------------------
// Output: CSV, table, target checks, SVG

/// The CSV of `rows`, with a header line: page, page_bytes, link, system, first_render_ms,
/// complete_ms, wire_bytes_up, wire_bytes_down, bound_ms, ratio_to_bound (these two empty on
/// a link without a rate limit), pointer_arrived, pointer_p95_ms (empty without a pointer run,
/// and the latter when no pointer arrived while the snapshot did), returning_first_render_ms,
/// returning_complete_ms (empty without a returning agent's run), joined_ms (Tandem's
/// [`Measurement::joined_ms`]; empty for the baseline).
pub fn csv(rows: &[Measurement]) -> String {
    let mut out = String::from(
        "page,page_bytes,link,system,first_render_ms,complete_ms,wire_bytes_up,wire_bytes_down,bound_ms,ratio_to_bound,pointer_arrived,pointer_p95_ms,returning_first_render_ms,returning_complete_ms,joined_ms\n",
    );
    for r in rows {
        let opt =
            |v: Option<f64>, digits: usize| v.map_or(String::new(), |v| format!("{v:.digits$}"));
        // Link names hold commas: quote them.
        let _ = writeln!(
            out,
            "{},{},\"{}\",{},{:.1},{:.1},{},{},{},{},{},{},{},{},{}",
            r.page,
            r.page_bytes,
            r.link,
            r.system.name(),
            r.first_render_ms,
            r.complete_ms,
            r.wire_bytes_up,
            r.wire_bytes_down,
            opt(r.bound_ms(), 1),
            opt(r.ratio_to_bound(), 3),
            r.pointer
                .as_ref()
                .map_or(String::new(), |p| p.arrived.to_string()),
            opt(r.pointer.as_ref().and_then(|p| p.p95_ms), 1),
            opt(r.returning.map(|t| t.first_render_ms), 1),
            opt(r.returning.map(|t| t.complete_ms), 1),
            opt(r.joined_ms, 1),
        );
    }
    out
}

/// A fixed-width table of `rows` for a terminal.
pub fn table(rows: &[Measurement]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:>8} {:<18} {:<8} {:>9} {:>9} {:>8} {:>9} {:>9} {:>6} {:>13} {:>10}",
        "page",
        "KB",
        "link",
        "system",
        "first ms",
        "done ms",
        "up B",
        "down B",
        "bound ms",
        "ratio",
        "pointer p95",
        "ret. first"
    );
    for r in rows {
        let opt =
            |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
        let _ = writeln!(
            out,
            "{:<20} {:>8.1} {:<18} {:<8} {:>9.0} {:>9.0} {:>8} {:>9} {:>9} {:>6} {:>13} {:>10}",
            r.page,
            r.page_bytes as f64 / 1024.0,
            r.link,
            r.system.name(),
            r.first_render_ms,
            r.complete_ms,
            r.wire_bytes_up,
            r.wire_bytes_down,
            opt(r.bound_ms(), 0),
            opt(r.ratio_to_bound(), 2),
            r.pointer
                .as_ref()
                .map_or("-".to_owned(), |p| match p.p95_ms {
                    Some(ms) => format!("{ms:.0} ms ({})", p.arrived),
                    None => "none (0)".to_owned(),
                }),
            opt(r.returning.map(|t| t.first_render_ms), 0),
        );
    }
    out
}

/// One target check of one page.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// The page.
    pub page: String,
    /// Which target: `bound`, `bytes`, `first render`, `first, returning` or `pointer`.
    pub target: &'static str,
    /// Whether the page meets it.
    pub pass: bool,
    /// The figures, for a person.
    pub detail: String,
}

/// The issue's targets on `link` for every page measured there by both systems: Tandem's time
/// to complete within [`BOUND_FACTOR`] × its bound; fewer bytes on the wire (both directions)
/// than the baseline; and, on pages over [`LARGE_PAGE`] bytes, a first render within a third
/// of the baseline's time to complete, for a new agent and, where measured
/// ([`Measurement::returning`]), for a returning one; and where pointers arrived while the
/// snapshot did ([`Measurement::pointer`]), their 95th percentile within the customer–agent
/// one-way delay (two links) + [`POINTER_SLACK_MS`].
pub fn checks(rows: &[Measurement], link: &str) -> Vec<Check> {
    let mut out = Vec::new();
    let on_link = |system| {
        rows.iter()
            .filter(move |r| r.link == link && r.system == system)
    };
    for t in on_link(System::Tandem) {
        let Some(b) = on_link(System::Baseline).find(|b| b.page == t.page) else {
            continue;
        };
        if let Some(bound) = t.bound_ms() {
            out.push(Check {
                page: t.page.clone(),
                target: "bound",
                pass: t.complete_ms <= BOUND_FACTOR * bound,
                detail: format!(
                    "complete {:.0} ms vs {BOUND_FACTOR} x {:.0} ms = {:.0} ms (ratio {:.2})",
                    t.complete_ms,
                    bound,
                    BOUND_FACTOR * bound,
                    t.complete_ms / bound
                ),
            });
        }
        out.push(Check {
            page: t.page.clone(),
            target: "bytes",
            pass: t.wire_bytes() < b.wire_bytes(),
            detail: format!(
                "{} B vs baseline {} B ({:.0} %)",
                t.wire_bytes(),
                b.wire_bytes(),
                100.0 * t.wire_bytes() as f64 / b.wire_bytes().max(1) as f64
            ),
        });
        if t.page_bytes > LARGE_PAGE {
            out.push(Check {
                page: t.page.clone(),
                target: "first render",
                pass: t.first_render_ms * 3.0 <= b.complete_ms,
                detail: format!(
                    "{:.0} ms{} vs baseline complete {:.0} ms / 3 = {:.0} ms",
                    t.first_render_ms,
                    t.joined_ms
                        .map(|j| format!(" (joined at {j:.0} ms)"))
                        .unwrap_or_default(),
                    b.complete_ms,
                    b.complete_ms / 3.0
                ),
            });
            if let Some(back) = t.returning {
                out.push(Check {
                    page: t.page.clone(),
                    target: "first, returning",
                    pass: back.first_render_ms * 3.0 <= b.complete_ms,
                    detail: format!(
                        "{:.0} ms (agent joined in 0-RTT) vs baseline complete {:.0} ms / 3 = {:.0} ms",
                        back.first_render_ms,
                        b.complete_ms,
                        b.complete_ms / 3.0
                    ),
                });
            }
        }
        if let Some((p, p95)) = t.pointer.as_ref().and_then(|p| Some((p, p.p95_ms?))) {
            let one_way = 2.0 * t.spec.delay.as_secs_f64() * 1000.0;
            let limit = one_way + POINTER_SLACK_MS;
            out.push(Check {
                page: t.page.clone(),
                target: "pointer",
                pass: p95 <= limit,
                detail: format!(
                    "95th percentile {p95:.0} ms (median {:.0}, {} of {} arrived while the snapshot did) vs {one_way:.0} + {POINTER_SLACK_MS:.0} = {limit:.0} ms",
                    p.p50_ms.unwrap_or(p95),
                    p.arrived,
                    p.sent
                ),
            });
        }
    }
    out
}

/// The checks as lines `PASS|FAIL  page  target  detail`, and a summary line.
pub fn checks_report(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let _ = writeln!(
            out,
            "{}  {:<20} {:<16} {}",
            if c.pass { "PASS" } else { "FAIL" },
            c.page,
            c.target,
            c.detail
        );
    }
    for target in [
        "bound",
        "bytes",
        "first render",
        "first, returning",
        "pointer",
    ] {
        let of: Vec<&Check> = checks.iter().filter(|c| c.target == target).collect();
        if !of.is_empty() {
            let passed = of.iter().filter(|c| c.pass).count();
            let _ = writeln!(out, "{target}: {passed} of {} pages pass", of.len());
        }
    }
    out
}

const SERIES: [(&str, &str); 3] = [
    ("Tandem first render", "#8ab6e8"),
    ("Tandem complete", "#1f5fa8"),
    ("Baseline complete (= its first render)", "#e07b39"),
];

/// [`SERIES`] and a returning agent's first render, on [`TARGET_LINK`].
const SERIES_RETURNING: [(&str, &str); 4] = [
    SERIES[0],
    SERIES[1],
    SERIES[2],
    ("Tandem first render, returning agent (0-RTT)", "#6cc3a0"),
];

/// Escapes `s` for SVG text.
fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `x` with at most three decimals, trailing zeros dropped.
fn trim(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A readable duration: `850 ms`, `2.41 s`.
fn ms_label(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{} s", trim((ms / 10.0).round() / 100.0))
    } else {
        format!("{} ms", trim(ms.round().max(ms.min(1.0))))
    }
}

/// A readable byte count: `950 B`, `16.4 kB`, `1.2 MB`.
fn bytes_label(b: f64) -> String {
    if b >= 1_000_000.0 {
        format!("{} MB", trim((b / 100_000.0).round() / 10.0))
    } else if b >= 1000.0 {
        format!("{} kB", trim((b / 100.0).round() / 10.0))
    } else {
        format!("{} B", b.round())
    }
}

/// One panel of grouped bars on a log scale.
struct Panel<'a> {
    title: String,
    /// Category labels (two lines each).
    labels: Vec<(String, String)>,
    /// Per category, one value per series (`None` leaves a gap).
    values: Vec<Vec<Option<f64>>>,
    /// Per category, an optional marker drawn across the group (the bound).
    markers: Vec<Option<f64>>,
    series: &'a [(&'a str, &'a str)],
    unit: fn(f64) -> String,
}

const WIDTH: f64 = 1200.0;
const PANEL_HEIGHT: f64 = 330.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const PLOT_HEIGHT: f64 = 220.0;

impl Panel<'_> {
    fn draw(&self, out: &mut String, top: f64) {
        let all = self
            .values
            .iter()
            .flatten()
            .flatten()
            .chain(self.markers.iter().flatten())
            .copied()
            .filter(|v| *v > 0.0);
        let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if lo > hi {
            return;
        }
        let (lo, hi) = (
            lo.log10().floor(),
            hi.log10().ceil().max(lo.log10().floor() + 1.0),
        );
        let y0 = top + 30.0;
        let y = |v: f64| y0 + PLOT_HEIGHT * (1.0 - (v.max(1e-9).log10() - lo) / (hi - lo));
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="{}" class="panel">{}</text>"#,
            top + 18.0,
            xml(&self.title)
        );
        // Grid: decades labelled, 2 and 5 faint.
        let mut decade = lo;
        while decade <= hi {
            let v = 10f64.powf(decade);
            let _ = writeln!(
                out,
                r#"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" class="grid"/><text x="{}" y="{:.1}" class="tick">{}</text>"#,
                WIDTH - RIGHT,
                LEFT - 6.0,
                y(v) + 4.0,
                xml(&(self.unit)(v)),
                y = y(v)
            );
            if decade < hi {
                for m in [2.0, 5.0] {
                    let _ = writeln!(
                        out,
                        r#"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" class="minor"/>"#,
                        WIDTH - RIGHT,
                        y = y(m * v)
                    );
                    // Few decades: label the minor lines too.
                    if hi - lo <= 2.0 {
                        let _ = writeln!(
                            out,
                            r#"<text x="{}" y="{:.1}" class="tick minor-tick">{}</text>"#,
                            LEFT - 6.0,
                            y(m * v) + 4.0,
                            xml(&(self.unit)(m * v))
                        );
                    }
                }
            }
            decade += 1.0;
        }
        let groups = self.labels.len().max(1) as f64;
        let slot = (WIDTH - LEFT - RIGHT) / groups;
        let bar = (slot * 0.8 / self.series.len() as f64).min(24.0);
        let bottom = y0 + PLOT_HEIGHT;
        for (i, (values, (line1, line2))) in self.values.iter().zip(&self.labels).enumerate() {
            let x0 = LEFT + slot * i as f64 + (slot - bar * self.series.len() as f64) / 2.0;
            for (k, v) in values.iter().enumerate() {
                let Some(v) = v else {
                    // A measurement that failed: say so where its bar would be.
                    let _ = writeln!(
                        out,
                        r#"<text x="{:.1}" y="{:.1}" class="missing">n/a</text>"#,
                        x0 + bar * (k as f64 + 0.5),
                        bottom - 4.0
                    );
                    continue;
                };
                let top_y = y(*v).min(bottom);
                let _ = writeln!(
                    out,
                    r#"<rect x="{:.1}" y="{top_y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                    x0 + bar * k as f64,
                    bar - 1.0,
                    bottom - top_y,
                    self.series[k].1,
                    xml(self.series[k].0),
                    xml(&(self.unit)(*v))
                );
            }
            if let Some(Some(m)) = self.markers.get(i) {
                let _ = writeln!(
                    out,
                    r#"<line x1="{:.1}" x2="{:.1}" y1="{my:.1}" y2="{my:.1}" class="bound"><title>bound: {}</title></line>"#,
                    x0 - 3.0,
                    x0 + bar * self.series.len() as f64 + 2.0,
                    xml(&(self.unit)(*m)),
                    my = y(*m)
                );
            }
            let cx = LEFT + slot * (i as f64 + 0.5);
            // Labels longer than the slot is wide are cut (about 6.5 px a character).
            let fit = ((slot / 6.5) as usize).max(4);
            let line1 = if line1.chars().count() > fit {
                let cut: String = line1.chars().take(fit - 1).collect();
                format!("{cut}\u{2026}")
            } else {
                line1.clone()
            };
            let _ = writeln!(
                out,
                r#"<text x="{cx:.1}" y="{:.1}" class="label">{}</text><text x="{cx:.1}" y="{:.1}" class="sub">{}</text>"#,
                bottom + 16.0,
                xml(&line1),
                bottom + 30.0,
                xml(line2)
            );
        }
        let _ = writeln!(
            out,
            r#"<line x1="{LEFT}" x2="{}" y1="{bottom:.1}" y2="{bottom:.1}" class="axis"/>"#,
            WIDTH - RIGHT
        );
    }
}

/// A legend row of coloured squares at `y`.
/// Draws a legend from baseline `y`, wrapping onto further lines of 18 px when the width runs
/// out; returns the baseline of its last line.
fn legend(out: &mut String, mut y: f64, entries: &[(&str, &str)], bound: bool) -> f64 {
    const BOUND_WIDTH: f64 = 360.0;
    let mut x = LEFT;
    for (name, colour) in entries {
        let width = 30.0 + 7.5 * name.len() as f64;
        if x > LEFT && x + width > WIDTH {
            (x, y) = (LEFT, y + 18.0);
        }
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="{}" width="14" height="14" fill="{colour}"/><text x="{}" y="{y}" class="legend">{}</text>"#,
            y - 11.0,
            x + 20.0,
            xml(name)
        );
        x += width;
    }
    if bound {
        if x > LEFT && x + BOUND_WIDTH > WIDTH {
            (x, y) = (LEFT, y + 18.0);
        }
        let _ = writeln!(
            out,
            r#"<line x1="{x}" x2="{}" y1="{y0}" y2="{y0}" class="bound"/><text x="{}" y="{y}" class="legend">bound: bytes down / rate + 2 round trips (Tandem)</text>"#,
            x + 20.0,
            x + 26.0,
            y0 = y - 4.0
        );
    }
    y
}

/// The benchmark as an SVG picture: one panel per link in `links` (pages on the x axis,
/// smallest first; log-scale time), with Tandem's first render and time to complete, the
/// baseline's time to complete and Tandem's bound; then the bytes on the wire of both systems
/// on [`TARGET_LINK`] (or the last link measured).
pub fn svg(rows: &[Measurement], links: &[String]) -> String {
    let mut pages: Vec<(String, u64)> = Vec::new();
    for r in rows {
        if !pages.iter().any(|(p, _)| *p == r.page) {
            pages.push((r.page.clone(), r.page_bytes));
        }
    }
    pages.sort_by_key(|&(_, bytes)| bytes);
    let find = |page: &str, link: &str, system| {
        rows.iter()
            .find(|r| r.page == page && r.link == link && r.system == system)
    };
    let labels: Vec<(String, String)> = pages
        .iter()
        .map(|(p, b)| (p.clone(), format!("{:.0} KB", *b as f64 / 1024.0)))
        .collect();
    let mut panels = Vec::new();
    let mut any_returning = false;
    for link in links {
        let returning = pages
            .iter()
            .any(|(p, _)| find(p, link, System::Tandem).is_some_and(|t| t.returning.is_some()));
        any_returning |= returning;
        let values = pages
            .iter()
            .map(|(p, _)| {
                let t = find(p, link, System::Tandem);
                let b = find(p, link, System::Baseline);
                let mut bars = vec![
                    t.map(|t| t.first_render_ms),
                    t.map(|t| t.complete_ms),
                    b.map(|b| b.complete_ms),
                ];
                if returning {
                    bars.push(t.and_then(|t| t.returning).map(|r| r.first_render_ms));
                }
                bars
            })
            .collect();
        let markers = pages
            .iter()
            .map(|(p, _)| find(p, link, System::Tandem).and_then(Measurement::bound_ms))
            .collect();
        panels.push(Panel {
            title: format!("Link {link} (each way): time from connecting, log scale"),
            labels: labels.clone(),
            values,
            markers,
            series: if returning {
                &SERIES_RETURNING
            } else {
                &SERIES
            },
            unit: ms_label,
        });
    }
    const BYTE_SERIES: [(&str, &str); 2] = [
        ("Tandem bytes on the wire", "#1f5fa8"),
        ("Baseline bytes on the wire", "#e07b39"),
    ];
    let bytes_link = links
        .iter()
        .find(|l| *l == TARGET_LINK)
        .or(links.last())
        .cloned();
    if let Some(link) = &bytes_link {
        let values = pages
            .iter()
            .map(|(p, _)| {
                vec![
                    find(p, link, System::Tandem).map(|t| t.wire_bytes() as f64),
                    find(p, link, System::Baseline).map(|b| b.wire_bytes() as f64),
                ]
            })
            .collect();
        panels.push(Panel {
            title: format!(
                "Bytes on the viewer's link, both directions, headers included ({link}), log scale"
            ),
            labels: labels.clone(),
            values,
            markers: Vec::new(),
            series: &BYTE_SERIES,
            unit: bytes_label,
        });
    }
    // The title, the notes and the legend, then the panels below however many lines the
    // legend took.
    let mut head = String::new();
    let _ = writeln!(
        head,
        r#"<text x="{LEFT}" y="30" class="title">Tandem vs. a websocket baseline: one corpus page to a viewer over an emulated link</text>"#
    );
    for (i, note) in [
        "Tandem: relay, consumer and agent over QUIC, each client behind its own emulated link. Its agent shows the top of the",
        "page once the snapshot's first parts reach into the body, and completes when the whole snapshot is verified; a returning",
        "agent joins in 0-RTT data. Baseline: the page's HTML gzip-compressed (level 6) as one websocket message over TCP + TLS 1.3",
        "through the same link (modelled TCP); it renders when the whole HTML has arrived. Times run from the viewer starting to",
        "connect, handshakes included. Lower is better.",
    ]
    .iter()
    .enumerate()
    {
        let _ = writeln!(
            head,
            r#"<text x="{LEFT}" y="{}" class="note">{}</text>"#,
            50.0 + 14.0 * i as f64,
            xml(note)
        );
    }
    let series: &[(&str, &str)] = if any_returning {
        &SERIES_RETURNING
    } else {
        &SERIES
    };
    let top = legend(&mut head, 128.0, series, true) + 11.0;
    let height = top + PANEL_HEIGHT * panels.len() as f64 + 40.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif">"#
    );
    out.push_str(
        r#"<style>
.title { font-size: 20px; font-weight: bold; }
.note { font-size: 12px; fill: #444; }
.panel { font-size: 15px; font-weight: bold; }
.tick { font-size: 11px; text-anchor: end; fill: #333; }
.minor-tick { fill: #888; }
.missing { font-size: 10px; text-anchor: middle; fill: #999; }
.label { font-size: 11px; text-anchor: middle; }
.sub { font-size: 10px; text-anchor: middle; fill: #666; }
.legend { font-size: 13px; }
.grid { stroke: #bbb; stroke-width: 1; }
.minor { stroke: #e4e4e4; stroke-width: 1; }
.axis { stroke: #333; stroke-width: 1; }
.bound { stroke: #000; stroke-width: 2; stroke-dasharray: 4 2; }
</style>
<rect width="100%" height="100%" fill="white"/>
"#,
    );
    out.push_str(&head);
    for (i, panel) in panels.iter().enumerate() {
        panel.draw(&mut out, top + PANEL_HEIGHT * i as f64);
    }
    if bytes_link.is_some() {
        legend(
            &mut out,
            top + PANEL_HEIGHT * panels.len() as f64 + 20.0,
            &BYTE_SERIES,
            false,
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_waits_for_the_upload_on_a_shaped_link_only() {
        // Bytes that gzip cannot shrink much, so that the upload takes a while at 750 kbit/s.
        let mut x: u32 = 1;
        let page: Vec<u8> = (0..60_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let none: LinkSpec = "none".parse().unwrap();
        assert_eq!(join_after(&page, &none), Duration::ZERO);
        let target: LinkSpec = TARGET_LINK.parse().unwrap();
        let upload = target.serialization(gzip(&page).len());
        assert!(upload > Duration::from_millis(600), "{upload:?}");
        let wait = join_after(&page, &target);
        // The upload at the link rate with a quarter more, and two round trips.
        assert!(
            wait > upload + 2 * (target.delay * 2),
            "{wait:?} vs {upload:?}"
        );
        assert!(
            wait < upload * 2 + 3 * (target.delay * 2),
            "{wait:?} vs {upload:?}"
        );
    }
}
