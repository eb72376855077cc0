//! The consumer's and the agent's session pumps (STYLE.md 3): read from QUIC, feed the engine,
//! write what it produced. No protocol decision lives here; the engine makes them.
//!
//! ```text
//!  consumer                              relay                              agent
//!  ControlChannel ── SESSION_OPEN ──────►  pairs by code  ◄────── JOIN ──── ControlChannel
//!  Consumer ── DOM stream (uni, per epoch) ──► forwarded ──► DOM stream ──► Agent
//!  Consumer ◄── ACK / RESYNC (control) ◄────── forwarded ◄──── control ◄── Agent
//! ```
//!
//! When the session's capabilities (`JOINED`) hold `COMPRESSION`, each DOM stream goes through a
//! [`DomCompressor`](tandem_protocol::compress::DomCompressor) on the consumer's side and a [`DomDecompressor`] on the agent's (spec
//! §4.6): one context per stream, flushed after every message, so the relay still forwards
//! frames and a small patch is coded against everything before it on its stream.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quinn::{Connection, SendStream, VarInt};
use tandem_engine::resource::{DEFAULT_STORE_BYTES, ResolveMode, ResourceLimits};
use tandem_engine::{
    Agent, AgentEvent, BlobStore, Consumer, EngineError, LivePage, MaskPolicy, Resumption,
    parse_html,
};
use tandem_protocol::compress::{Codec, CompressError, DecompressError, DomDecompressor};
use tandem_protocol::message::{
    Capabilities, End, EndReason, ErrorReport, Invite, Joined, Mode, RefusalCode, SessionCreated,
};
use tandem_protocol::{
    DecodeError, ErrorCode, FrameType, Limits, Message, RawFrame, SnapshotView, frame,
};
use tokio::sync::mpsc;

use crate::client::{ClientError, ControlChannel, RESUME_WINDOW, Reconnect};
use crate::framed::{FrameRecv, FramedError, write_message};
use crate::hands::{
    ActionRecord, AgentScript, ConsumerHands, HandsError, HandsOptions, Lane, Step,
};
use crate::presence::{Presence, STATUS_INTERVAL, StatusMeter};
use crate::pump::DomPump;
use crate::resources::{
    ConsumerResources, Downlink, DownlinkReport, Inbound, RESOURCE_LINGER, ResourceOptions,
    UplinkReport, is_resource_stream, read_resource_stream,
};

/// Priority of the DOM stream (quinn `SendStream::set_priority`): above the control stream (0)
/// and the resource streams ([`crate::resources::RESOURCE_PRIORITY`]), which share the
/// connection (spec §3.2).
pub const DOM_PRIORITY: i32 = 10;

/// A failure of a consumer or agent session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The handshake or the control stream failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A data stream failed: the peer broke the protocol or the link went away.
    #[error(transparent)]
    Framed(#[from] FramedError),
    /// The engine refused input it cannot recover from.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The DOM stream compressor failed (spec §4.6).
    #[error(transparent)]
    Compress(#[from] CompressError),
    /// The consumer sent a compressed DOM stream that breaks spec §4.6: the peer broke the
    /// protocol.
    #[error(transparent)]
    Decompress(#[from] DecompressError),
    /// Reading the page or writing the output failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The session ended before the work was done.
    #[error("session ended early: {0}")]
    EndedEarly(String),
    /// The agent broke the rules of the hands (spec §7.27), or carrying out an allowed action
    /// failed.
    #[error(transparent)]
    Hands(#[from] HandsError),
}

impl SessionError {
    /// Whether the session failed because its connection went away (spec §3.5): a resumable
    /// session reconnects instead of ending.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            SessionError::Framed(e) | SessionError::Client(ClientError::Framed(e)) => {
                e.is_connection_lost()
            }
            _ => false,
        }
    }

    /// The code to close the connection with when the session failed because the other side
    /// broke the protocol (spec §4.5, §4.6.4, §7.16, §9): a frame that does not decode, an
    /// unknown critical type, a compressed DOM stream that breaks §4.6, an `ACK` for a patch
    /// never sent. `None` for other failures, engine errors among them: most of those may come
    /// from this side's own page.
    pub fn close_code(&self) -> Option<ErrorCode> {
        match self {
            SessionError::Framed(e) | SessionError::Client(ClientError::Framed(e)) => {
                e.close_code()
            }
            SessionError::Decompress(e) => Some(e.code()),
            SessionError::Engine(e @ EngineError::UnsentAck { .. }) => Some(e.code()),
            _ => None,
        }
    }
}

/// The failure over a frame of critical type `ty` this side does not know (spec §4.3).
fn unknown_critical(ty: FrameType) -> SessionError {
    SessionError::Framed(FramedError::Protocol(DecodeError::UnknownCritical {
        ty: ty.0,
    }))
}

/// When `e` is a protocol violation of the other side ([`SessionError::close_code`]), sends
/// `CLOSE` with its code on the control stream and closes the connection with the same code
/// (spec §3.3, §4.5); otherwise leaves the connection alone. The `CLOSE` message names only
/// the code, never page content (spec §7.34).
async fn close_on_violation(
    conn: &Connection,
    ctl_send: &mut SendStream,
    e: &SessionError,
    limits: &Limits,
) {
    let Some(code) = e.close_code() else { return };
    let close = Message::Close(ErrorReport {
        code,
        message: "protocol violation".to_owned(),
    });
    // Best effort: the connection closes with the code either way. The other side closes
    // when it reads the `CLOSE` (spec §7.34); closing first would discard it unsent.
    let _ = tokio::time::timeout(CLOSE_GRACE, write_message(ctl_send, &close, limits)).await;
    let _ = ctl_send.finish();
    let _ = tokio::time::timeout(CLOSE_GRACE, conn.closed()).await;
    conn.close(crate::framed::quic_code(code), b"protocol violation");
}

/// How long a side that sent `CLOSE` waits for the other side to close before it closes the
/// connection itself (spec §3.3).
pub const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// One resumption of a session (spec §3.5), as a report lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeRecord {
    /// Which side's connection was replaced: this side's own, or the other side's (`REJOINED`).
    pub own: bool,
    /// How the DOM stream went on (the consumer's records; an agent's say `Continue` with
    /// nothing re-sent).
    pub how: Resumption,
    /// From noticing the loss to the relay's `JOINED` on the new connection (zero for the
    /// other side's resumptions).
    pub took: Duration,
    /// Whether this side's new connection sent its `HELLO` as 0-RTT data.
    pub zero_rtt: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SessionError + '_ {
    move |source| SessionError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where the consumer's page changes come from.
#[derive(Debug)]
pub enum ChangeSource {
    /// The built-in live-page generator: `batches` batches of `per_batch` seeded random changes.
    Live {
        /// The generator.
        generator: LivePage,
        /// Changes per batch.
        per_batch: usize,
        /// Number of batches; `None` runs until the session ends.
        batches: Option<u64>,
    },
    /// Successive states `1.html, 2.html, …` of a directory (`0.html` is the page), one per
    /// batch.
    States {
        /// The directory.
        dir: PathBuf,
        /// The next state to read.
        next: u64,
    },
    /// No changes: the snapshot alone.
    None,
}

impl ChangeSource {
    /// Applies the next batch of changes to `consumer`; `Ok(false)` when there are no more.
    pub fn next_batch(
        &mut self,
        consumer: &mut Consumer,
        done: &mut u64,
    ) -> Result<bool, SessionError> {
        match self {
            ChangeSource::Live {
                generator,
                per_batch,
                batches,
            } => {
                if batches.is_some_and(|b| *done >= b) {
                    return Ok(false);
                }
                generator.step(consumer, *per_batch)?;
            }
            ChangeSource::States { dir, next } => {
                let path = dir.join(format!("{next}.html"));
                let Ok(bytes) = std::fs::read(&path) else {
                    return Ok(false);
                };
                let mut target = parse_html(&String::from_utf8_lossy(&bytes), *consumer.limits());
                consumer.update_to(&mut target)?;
                *next += 1;
            }
            ChangeSource::None => return Ok(false),
        }
        *done += 1;
        Ok(true)
    }
}

/// Reads a page file (bytes that are not UTF-8 are replaced).
pub fn read_page(path: &Path) -> Result<String, SessionError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// What the consumer side did.
#[derive(Debug, Clone)]
pub struct ConsumerReport {
    /// The session code.
    pub code: String,
    /// Nodes in the page at the start (the document node included).
    pub nodes: usize,
    /// Bytes of `SNAPSHOT` frames sent, uncompressed.
    pub snapshot_bytes: u64,
    /// Bytes of `PATCH` frames sent, uncompressed.
    pub patch_bytes: u64,
    /// Bytes the `SNAPSHOT` frames took on the DOM stream: compressed, `COMPRESSED` frame
    /// headers and the codec byte included, when the session negotiated compression; otherwise
    /// equal to `snapshot_bytes`.
    pub snapshot_wire_bytes: u64,
    /// Bytes the `PATCH` frames took on the DOM stream, as `snapshot_wire_bytes` counts them.
    pub patch_wire_bytes: u64,
    /// Whether the DOM streams were compressed (the session's capabilities hold `COMPRESSION`).
    pub compressed: bool,
    /// Whether they were compressed with codec 0x02, patches coded (spec §4.6.5: the session's
    /// capabilities hold `CODED_PATCHES` too).
    pub coded_patches: bool,
    /// Patches sent.
    pub patches: u64,
    /// Snapshots sent (1 plus one per resync).
    pub snapshots: u64,
    /// UDP bytes the connection sent, QUIC and TLS overhead included.
    pub udp_bytes: u64,
    /// The final tree hash.
    pub hash: [u8; 32],
    /// Whether the agent acknowledged the final state.
    pub acked: bool,
    /// What became of each of the agent's actions (with [`ConsumerOptions::hands`]).
    pub actions: Vec<ActionRecord>,
    /// The agent's platform and link, and this side's link (spec §7.29).
    pub presence: Presence,
    /// What the resources did, when the session sent them by content address (spec §14).
    pub resources: Option<ConsumerResourceReport>,
    /// The largest batch (a snapshot, or one patch) the DOM writer held, in frame bytes:
    /// with backpressure, what the consumer buffers whatever the page's rate of change.
    pub max_batch_bytes: u64,
    /// For each acknowledged snapshot or patch, the time from its flush to the agent's
    /// `ACK`: how far behind the page the agent was.
    pub ack_delays: Vec<Duration>,
    /// The session's resumptions (spec §3.5), in order.
    pub resumptions: Vec<ResumeRecord>,
    /// The customer's `POINTER`s ([`CustomerCommand::Point`]) as they left: each one's
    /// sequence number and when it was handed to the connection, the first
    /// [`POINTER_TRACE_LIMIT`]. With [`AgentReport::pointers_received`], how long the pointer
    /// took to reach the agent.
    pub pointers_sent: Vec<(u32, Instant)>,
}

/// The most `POINTER`s [`ConsumerReport::pointers_sent`] and [`AgentReport::pointers_received`]
/// record (24 bytes each, about 100 KB at most); later ones are sent and applied without a
/// record.
pub const POINTER_TRACE_LIMIT: usize = 4096;

/// What a consumer's resources did in a session.
#[derive(Debug, Clone, Default)]
pub struct ConsumerResourceReport {
    /// Addresses the page referred to (each once).
    pub referenced: usize,
    /// References that could not be loaded and stayed as the page has them.
    pub load_errors: u64,
    /// Whether the agent said it holds every referenced blob before the session ended.
    pub settled: bool,
    /// The `RESOURCE` bytes and blobs this consumer uploaded.
    pub uplink: UplinkReport,
}

/// Settings of a consumer session.
#[derive(Debug)]
pub struct ConsumerOptions {
    /// The page's HTML.
    pub html: String,
    /// The page's URL as the agent is told.
    pub url: String,
    /// The customer's label for the agent.
    pub label: String,
    /// Where changes come from.
    pub changes: ChangeSource,
    /// Time between batches of changes.
    pub interval: Duration,
    /// Limits.
    pub limits: Limits,
    /// What the consumer masks before anything is encoded (spec §12); the automatic rules and
    /// marker attributes apply with the default policy too.
    pub policy: MaskPolicy,
    /// Accept the agent's actions (spec §13): the mode the customer grants and how requests
    /// are answered. With it, the consumer also waits (up to [`ACTIONS_LINGER`] after its own
    /// changes are done) for the agent to finish its actions stream before ending the session.
    /// Without it, the agent's actions are not read.
    pub hands: Option<HandsOptions>,
    /// How the customer answers agents' invitations while waiting (spec §7.7).
    pub invitations: Invitations,
    /// What the customer does during the session (pause, resume, set the mode, end), if
    /// anything; the session ends by itself as before when this is `None` or closes.
    pub commands: Option<mpsc::Receiver<CustomerCommand>>,
    /// Send the snapshot as soon as the session is open, before the agent joins (spec §3.2),
    /// so that the agent's first render does not wait for the customer's upload. Not with
    /// resources, whose use the agent decides when it joins.
    pub preupload: bool,
    /// The above-the-fold cut (spec §7.14): bytes of records in a snapshot's part 0, the top
    /// of the page the agent shows first; `None` keeps the engine's part size (32 KiB).
    pub fold_bytes: Option<usize>,
}

/// How a consumer session starts: with the page still to hand to a consumer, or with the
/// consumer already sending its snapshot ahead of the agent.
enum Start {
    /// The parsed page.
    Page(Box<tandem_engine::Dom>),
    /// The consumer and the pump writing its snapshot.
    Early(Box<(Consumer, DomPump)>),
}

/// The next customer command; pends forever without a command channel.
async fn next_command(
    commands: &mut Option<mpsc::Receiver<CustomerCommand>>,
) -> Option<CustomerCommand> {
    match commands {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// How a waiting customer answers an agent's `INVITE` (spec §7.7–§7.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Invitations {
    /// Ask on the terminal: the invitation is shown on stderr and answered with `y` on stdin.
    Ask,
    /// Accept every invitation.
    Accept,
    /// Decline every invitation.
    #[default]
    Decline,
}

impl Invitations {
    /// The customer's answer to `invite`.
    pub async fn answer(self, invite: Invite) -> bool {
        match self {
            Invitations::Accept => true,
            Invitations::Decline => false,
            Invitations::Ask => {
                note!(
                    "consumer: {} invites you to share this page (for {} s). Accept? [y/N]",
                    invite.agent_label,
                    invite.expires_ms / 1000
                );
                tokio::task::spawn_blocking(|| {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).is_ok()
                        && matches!(line.trim(), "y" | "Y" | "yes")
                })
                .await
                .unwrap_or(false)
            }
        }
    }
}

/// How long a consumer with [`ConsumerOptions::hands`] waits, once its changes are sent and
/// acknowledged, for the agent's actions stream to finish.
pub const ACTIONS_LINGER: Duration = Duration::from_secs(10);

/// One message from the agent's actions stream or datagrams, or the end of the actions
/// stream (`None`).
type AgentItem = Option<Message>;

/// Reads what the agent sends the consumer besides the control stream: every unidirectional
/// stream the relay opens (the actions stream, spec §3.2) and the datagrams. A malformed frame
/// ends the reading with the error.
async fn read_agent_messages(
    conn: Connection,
    tx: mpsc::Sender<Result<AgentItem, FramedError>>,
    limits: Limits,
) {
    let datagrams = {
        let (conn, tx) = (conn.clone(), tx.clone());
        async move {
            while let Ok(d) = conn.read_datagram().await {
                let item = frame::decode_exact(&d, &limits)
                    .map(Some)
                    .map_err(FramedError::from);
                if tx.send(item).await.is_err() {
                    break;
                }
            }
        }
    };
    let streams = async move {
        while let Ok(stream) = conn.accept_uni().await {
            let mut recv = FrameRecv::new(stream, limits);
            loop {
                match recv.next_message().await {
                    Ok(Some(m)) => {
                        if tx.send(Ok(Some(m))).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        let _ = tx.send(Ok(None)).await;
                        break;
                    }
                    Err(e) if e.is_protocol() => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    // A stream cut with the agent's connection (spec §3.5): a resumed agent
                    // opens a new one.
                    Err(_) => break,
                }
            }
        }
    };
    tokio::join!(datagrams, streams);
}

/// Something the customer does during a session, besides the page changing: what the
/// reference consumer's terminal commands (`pause`, `resume`, `mode MODE`, `end`) send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerCommand {
    /// Pause sharing (spec §7.11): nothing more is sent and the agent's actions are refused
    /// until [`CustomerCommand::Resume`]; the session and its code stay.
    Pause,
    /// Resume sharing (spec §7.12): the agent receives one patch of everything that changed.
    Resume,
    /// Set the agent's mode (spec §13.2), to lower it or raise it unasked.
    SetMode(Mode),
    /// End the session (spec §7.13).
    End,
    /// The answer to an invitation being shown (`y` or `n`).
    Answer(bool),
    /// Point at the first element a selector finds (spec §7.21): the customer's cursor, shown
    /// to the agent.
    Point(String),
    /// Scroll the window to a vertical offset (spec §7.22), shown to the agent.
    ScrollTo(i32),
    /// Cut the connection as a lost link would, without `CLOSE` (`drop` on the terminal): a
    /// drill for resumption (spec §3.5). A resumable session comes back on a new connection;
    /// any other session ends.
    DropConnection,
}

impl std::str::FromStr for CustomerCommand {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut words = s.split_whitespace();
        match (words.next(), words.next()) {
            (Some("pause" | "p"), None) => Ok(CustomerCommand::Pause),
            (Some("resume" | "r"), None) => Ok(CustomerCommand::Resume),
            (Some("end" | "quit" | "q"), None) => Ok(CustomerCommand::End),
            (Some("drop"), None) => Ok(CustomerCommand::DropConnection),
            (Some("y" | "yes"), None) => Ok(CustomerCommand::Answer(true)),
            (Some("scroll"), Some(y)) => y
                .parse()
                .map(CustomerCommand::ScrollTo)
                .map_err(|_| format!("{y:?}: scroll takes a vertical offset in pixels")),
            (Some("point"), Some(_)) => {
                let sel = s.trim_start().trim_start_matches("point").trim();
                sel.parse::<tandem_engine::mask::Selector>()
                    .map(|_| CustomerCommand::Point(sel.to_owned()))
                    .map_err(|e| e.to_string())
            }
            (Some("n" | "no"), None) => Ok(CustomerCommand::Answer(false)),
            (Some("mode"), Some(m)) => crate::hands::parse_mode(m).map(CustomerCommand::SetMode),
            _ => Err(format!(
                "{s:?}: commands are pause, resume, mode follow|view|guide|full, point SELECTOR, scroll Y, drop, end (y or n to an invitation)"
            )),
        }
    }
}

/// Sends a latest-wins message (`POINTER`, `SCROLL`) as a QUIC datagram when the connection
/// takes them, otherwise on the control stream (spec §3.2). A datagram that finds no room is
/// dropped like a lost one: the next position wins anyway.
async fn send_latest(
    conn: &Connection,
    ctl: &mut SendStream,
    msg: &Message,
    limits: &Limits,
) -> Result<(), SessionError> {
    if datagrams_ok(conn) {
        let bytes = frame::to_frame(msg, limits).map_err(FramedError::from)?;
        let _ = conn.send_datagram(bytes.into());
        Ok(())
    } else {
        Ok(write_message(ctl, msg, limits).await?)
    }
}

/// Applies the above-the-fold cut to a consumer whose first snapshot is queued and not sent:
/// the snapshot is cut again (a new epoch number; nothing of the old one left).
fn fold(consumer: &mut Consumer, fold_bytes: Option<usize>) {
    if let Some(bytes) = fold_bytes {
        consumer.set_fold_bytes(bytes);
        consumer.queue_snapshot();
    }
}

/// Brings the agent up to date as far as backpressure allows ([`crate::pump`]): when the DOM
/// writer is idle and sharing is not paused, flushes the page's folded changes if the agent has
/// acknowledged everything sent, and starts writing whatever the consumer has queued.
async fn advance(
    pump: &mut DomPump,
    consumer: &mut Consumer,
    resources: &mut Option<ConsumerResources>,
    paused: bool,
) -> Result<(), SessionError> {
    if paused || !pump.is_idle() {
        return Ok(());
    }
    if consumer.is_acked() {
        consumer.flush();
    }
    if let Some(r) = resources.as_mut() {
        // What the queued frames refer to (rewritten when they were built).
        r.note_references(consumer).await;
    }
    pump.send_queued(consumer)?;
    Ok(())
}

/// Runs the consumer side of a session on an open control channel: opens the session (calling
/// `on_code` with the code to read out), waits for the agent, sends the snapshot and then the
/// changes, and ends the session once the agent has acknowledged the final state.
pub async fn run_consumer(
    ctl: ControlChannel,
    opts: ConsumerOptions,
    on_code: impl FnOnce(&SessionCreated),
) -> Result<ConsumerReport, SessionError> {
    run_consumer_with(ctl, opts, None, on_code).await
}

/// [`run_consumer`], sending the page's resources by content address (spec §14) when
/// `resources` is given and the session's capabilities (`JOINED`) hold `RESOURCES` (offer it
/// in `HELLO`: [`crate::client::CAPABILITIES_WITH_RESOURCES`]). The references of the page
/// then become `tandem:blake3:` URIs, `HAVE` and `WANT` are answered on resource streams, and
/// the session ends only once the agent has said (`HAVE`) that it holds every blob the page
/// referred to, or [`RESOURCE_LINGER`] after everything else was done.
pub async fn run_consumer_with(
    mut ctl: ControlChannel,
    mut opts: ConsumerOptions,
    resources: Option<ResourceOptions>,
    on_code: impl FnOnce(&SessionCreated),
) -> Result<ConsumerReport, SessionError> {
    let limits = opts.limits;
    let page = parse_html(&opts.html, limits);
    let nodes = page.len();
    let created = ctl.open_session(&opts.label).await?;
    on_code(&created);
    // Send the snapshot while waiting for the agent (spec §3.2): the relay holds the stream in
    // its flow-control window and hands it over when the agent joins, so the agent does not
    // wait for a round trip to the customer and the upload. Compressed with the codec the relay
    // agreed to; should the agent not take it, a new epoch follows with the codec it takes, or
    // uncompressed.
    let start = if resources.is_none() && opts.preupload {
        let offered = Codec::for_session(ctl.welcome().capabilities);
        let mut pump = DomPump::new(ctl.connection().clone(), limits, offered);
        let mut c = Consumer::with_policy(page, &opts.url, limits, opts.policy.clone());
        fold(&mut c, opts.fold_bytes);
        pump.send_queued(&mut c)?;
        Start::Early(Box::new((c, pump)))
    } else {
        Start::Page(Box::new(page))
    };
    let invitations = opts.invitations;
    // With a command channel, an invitation asked about is answered by a command (`y`/`n`),
    // so one reader of the terminal serves both.
    let cell = Arc::new(tokio::sync::Mutex::new(opts.commands.take()));
    let joined = ctl
        .wait_joined_answering(
            |invite| {
                let cell = cell.clone();
                async move {
                    let mut guard = cell.lock().await;
                    match guard.as_mut() {
                        Some(rx) if invitations == Invitations::Ask => {
                            note!(
                                "consumer: {} invites you to share this page (for {} s). Accept? [y/n]",
                                invite.agent_label,
                                invite.expires_ms / 1000
                            );
                            loop {
                                match rx.recv().await {
                                    Some(CustomerCommand::Answer(yes)) => break yes,
                                    Some(_) => note!("consumer: answer the invitation first (y or n)"),
                                    None => break false,
                                }
                            }
                        }
                        _ => invitations.answer(invite).await,
                    }
                }
            },
            |id| note!("consumer: invitation {id} withdrawn"),
        )
        .await?;
    let mut commands = cell.lock().await.take();
    // Codec 0x02 when the session holds CODED_PATCHES too (spec §4.6).
    let codec = Codec::for_session(joined.capabilities);
    let compressed = codec.is_some();
    let mut presence = Presence::with_peer(Some(&joined.peer_platform));
    let mut meter = StatusMeter::new();
    let mut status_tick = tokio::time::interval(STATUS_INTERVAL);
    let resources = match resources {
        Some(r) if joined.capabilities.contains(Capabilities::RESOURCES) => Some(r),
        Some(_) => {
            tracing::info!("the agent does not take resources; references stay as they are");
            None
        }
        None => None,
    };
    let (mut consumer, early_pump) = match start {
        Start::Early(early) => {
            let (c, pump) = *early;
            (c, Some(pump))
        }
        Start::Page(page) => {
            let page = *page;
            let mut c = match &resources {
                Some(r) => Consumer::with_resources(
                    page,
                    &opts.url,
                    limits,
                    opts.policy.clone(),
                    r.resources(&opts.url),
                ),
                None => Consumer::with_policy(page, &opts.url, limits, opts.policy.clone()),
            };
            fold(&mut c, opts.fold_bytes);
            (c, None)
        }
    };
    // Resumable when the channel knows how to reconnect and the session has RESUME (spec §3.5).
    let reconnect = ctl.reconnect().cloned().filter(|_| {
        joined.capabilities.contains(Capabilities::RESUME) && !joined.resume_token.is_empty()
    });
    let mut resume_token = joined.resume_token.clone();
    let (mut conn, mut ctl_send, mut ctl_recv) = ctl.into_parts();
    // UDP bytes of connections that were replaced.
    let mut udp_before = 0u64;
    let mut res = resources.map(|r| ConsumerResources::spawn(conn.clone(), r.mode, limits));
    let mut report = ConsumerReport {
        code: created.code,
        nodes,
        snapshot_bytes: 0,
        patch_bytes: 0,
        snapshot_wire_bytes: 0,
        patch_wire_bytes: 0,
        compressed,
        coded_patches: codec == Some(Codec::CodedPatches),
        patches: 0,
        snapshots: 0,
        udp_bytes: 0,
        hash: consumer.tree_hash(),
        acked: false,
        actions: Vec::new(),
        presence: Presence::default(),
        resources: None,
        max_batch_bytes: 0,
        ack_delays: Vec::new(),
        resumptions: Vec::new(),
        pointers_sent: Vec::new(),
    };
    let mut pump = match early_pump {
        Some(p) if p.codec() == codec => p,
        Some(mut p) => {
            // The agent does not take the stream sent ahead (compression, or its codec): start
            // over in a new epoch with what the session holds; the agent stops the old stream
            // unread (spec §3.2).
            p.abandon().await;
            consumer.queue_snapshot();
            DomPump::new(conn.clone(), limits, codec).with_stats(p.stats())
        }
        None => DomPump::new(conn.clone(), limits, codec),
    };
    let mut paused = false;
    let mut end_now = false;
    // The customer's next POINTER and SCROLL sequence numbers (spec §7.21: 0, 1, 2, …).
    let (mut pointer_seq, mut scroll_seq) = (0u32, 0u32);
    advance(&mut pump, &mut consumer, &mut res, paused).await?;
    let mut hands = opts
        .hands
        .as_ref()
        .map(|h| ConsumerHands::new(h, &opts.url));
    let (agent_tx, mut agent_rx) = mpsc::channel(64);
    let mut reader = hands
        .is_some()
        .then(|| tokio::spawn(read_agent_messages(conn.clone(), agent_tx.clone(), limits)));
    if let Some(announce) = hands.as_ref().and_then(ConsumerHands::announce) {
        write_message(&mut ctl_send, &announce, &limits).await?;
    }
    let mut actions_done = hands.is_none();
    let mut linger: Option<tokio::time::Instant> = None;
    let mut ticker = tokio::time::interval(opts.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batches = 0;
    let mut exhausted = false;
    let mut res_linger: Option<tokio::time::Instant> = None;
    loop {
        if exhausted && consumer.is_synced() && !actions_done {
            let deadline =
                *linger.get_or_insert_with(|| tokio::time::Instant::now() + ACTIONS_LINGER);
            actions_done = tokio::time::Instant::now() >= deadline;
        }
        let done = end_now || (exhausted && consumer.is_synced() && actions_done);
        let mut settled = res.as_ref().is_none_or(ConsumerResources::settled);
        if done && !settled {
            // The agent may still be fetching blobs: wait for its HAVE, within a bound.
            let deadline =
                *res_linger.get_or_insert_with(|| tokio::time::Instant::now() + RESOURCE_LINGER);
            settled = tokio::time::Instant::now() >= deadline;
        }
        let res_waiting = done && !settled;
        if done && (settled || end_now) {
            report.acked = true;
            write_message(
                &mut ctl_send,
                &Message::End(End {
                    reason: EndReason::EndedByConsumer,
                }),
                &limits,
            )
            .await?;
            break;
        }
        // `?` and `return` in this block leave the step, not the session: a lost connection
        // is resumed below when the session allows it.
        let step: Result<(), SessionError> = async {
        tokio::select! {
            msg = ctl_recv.next_message() => {
                match msg? {
                    Some(Message::End(e)) => return Err(SessionError::EndedEarly(format!("{:?}", e.reason))),
                    Some(Message::Rejoined(_)) => {
                        // The agent came back on a new connection (spec §3.5): what was in
                        // flight to it is lost; continue from what it acknowledged.
                        pump.abandon().await;
                        let how = consumer.resume();
                        tracing::info!(?how, "the agent resumed");
                        report.resumptions.push(ResumeRecord { own: false, how, took: Duration::ZERO, zero_rtt: false });
                        if let Some(r) = res.as_mut() {
                            r.reconnect(conn.clone(), limits);
                        }
                        advance(&mut pump, &mut consumer, &mut res, paused).await?;
                    }
                    Some(Message::Close(c)) => return Err(SessionError::EndedEarly(format!("{:?}: {}", c.code, c.message))),
                    None => return Err(SessionError::EndedEarly("control stream finished".into())),
                    // A hop message of the relay's: answered at once (spec §7.30).
                    Some(Message::Ping(ping)) => write_message(&mut ctl_send, &Message::Pong(ping), &limits).await?,
                    Some(Message::Unknown(u)) if u.must_understand() => return Err(unknown_critical(u.ty)),
                    Some(m) if presence.on_message(&m) => {}
                    Some(m @ (Message::Have(_) | Message::Want(_) | Message::WantAgain(_))) => {
                        if let Some(r) = res.as_mut() {
                            r.on_message(&m, &mut consumer).await;
                        }
                    }
                    Some(m) => {
                        let reply = match hands.as_mut() {
                            Some(h) if is_hands_message(&m) => h.on_message(&m, &mut consumer, Instant::now())?,
                            _ => {
                                consumer.handle_message(&m)?;
                                if let Message::Ack(a) = &m {
                                    pump.acked(a.epoch, a.seq);
                                }
                                // A RESYNC starts a new epoch: the batch in flight is stale.
                                pump.supersede(consumer.epoch());
                                None
                            }
                        };
                        if let Some(reply) = reply {
                            write_message(&mut ctl_send, &reply, &limits).await?;
                        }
                        advance(&mut pump, &mut consumer, &mut res, paused).await?;
                    }
                }
            }
            _ = status_tick.tick() => {
                let status = meter.sample(&conn.stats(), Instant::now());
                presence.own_status = Some(status);
                write_message(&mut ctl_send, &Message::Status(status), &limits).await?;
            }
            item = agent_rx.recv(), if !actions_done => {
                match item {
                    Some(Ok(Some(Message::Unknown(u)))) if u.must_understand() => return Err(unknown_critical(u.ty)),
                    Some(Ok(Some(m))) => {
                        if let Some(h) = hands.as_mut().filter(|_| is_hands_message(&m)) {
                            if let Some(reply) = h.on_message(&m, &mut consumer, Instant::now())? {
                                write_message(&mut ctl_send, &reply, &limits).await?;
                            }
                            pump.supersede(consumer.epoch());
                            advance(&mut pump, &mut consumer, &mut res, paused).await?;
                        }
                    }
                    Some(Ok(None)) | None => actions_done = true,
                    Some(Err(e)) if e.is_protocol() => return Err(e.into()),
                    Some(Err(_)) => actions_done = true,
                }
            }
            _ = tokio::time::sleep_until(linger.unwrap_or_else(tokio::time::Instant::now)), if linger.is_some() && !actions_done => {}
            _ = tokio::time::sleep_until(res_linger.unwrap_or_else(tokio::time::Instant::now)), if res_waiting => {}
            _ = ticker.tick(), if !exhausted => {
                if opts.changes.next_batch(&mut consumer, &mut batches)? {
                    // The changes fold into what is pending until the agent has caught up.
                    advance(&mut pump, &mut consumer, &mut res, paused).await?;
                } else {
                    exhausted = true;
                }
            }
            written = pump.written() => {
                written?;
                advance(&mut pump, &mut consumer, &mut res, paused).await?;
            }
            cmd = next_command(&mut commands) => match cmd {
                Some(CustomerCommand::Pause) if !paused => {
                    paused = true;
                    if let Some(h) = hands.as_mut() {
                        h.authority_mut().pause();
                    }
                    write_message(&mut ctl_send, &Message::Pause(()), &limits).await?;
                }
                Some(CustomerCommand::Resume) if paused => {
                    paused = false;
                    if let Some(h) = hands.as_mut() {
                        h.authority_mut().resume();
                    }
                    write_message(&mut ctl_send, &Message::Resume(()), &limits).await?;
                    advance(&mut pump, &mut consumer, &mut res, paused).await?;
                }
                Some(CustomerCommand::SetMode(mode)) => {
                    if let Some(h) = hands.as_mut() {
                        let set = h.authority_mut().set_mode(mode);
                        write_message(&mut ctl_send, &Message::Mode(set), &limits).await?;
                    }
                }
                Some(CustomerCommand::End) => end_now = true,
                Some(CustomerCommand::DropConnection) => {
                    // As a lost link would: no CLOSE; the next read finds the connection gone.
                    conn.close(VarInt::from_u32(0), b"dropped");
                }
                Some(CustomerCommand::Point(sel)) if !paused => {
                    let node = sel
                        .parse::<tandem_engine::mask::Selector>()
                        .ok()
                        .and_then(|sel| crate::hands::find(consumer.dom(), &sel));
                    if let Some(node) = node {
                        let seq = pointer_seq;
                        pointer_seq = seq.wrapping_add(1);
                        let msg = Message::Pointer(tandem_protocol::message::Pointer {
                            seq,
                            node,
                            x: 5000,
                            y: 5000,
                            visible: true,
                        });
                        if report.pointers_sent.len() < POINTER_TRACE_LIMIT {
                            report.pointers_sent.push((seq, Instant::now()));
                        }
                        send_latest(&conn, &mut ctl_send, &msg, &limits).await?;
                    } else {
                        note!("consumer: nothing on the page matches {sel:?}");
                    }
                }
                Some(CustomerCommand::ScrollTo(y)) if !paused => {
                    let seq = scroll_seq;
                    scroll_seq = seq.wrapping_add(1);
                    let msg = Message::Scroll(tandem_protocol::message::Scroll {
                        seq,
                        node: 0,
                        x: 0,
                        y,
                    });
                    send_latest(&conn, &mut ctl_send, &msg, &limits).await?;
                }
                Some(_) => {}
                None => commands = None,
            },
        }
        Ok(())
        }
        .await;
        let Err(e) = step else { continue };
        let Some(r) = reconnect.as_ref().filter(|_| e.is_connection_lost()) else {
            close_on_violation(&conn, &mut ctl_send, &e, &limits).await;
            return Err(e);
        };
        // The connection is gone: come back on a new one and continue (spec §3.5).
        let lost_at = Instant::now();
        tracing::info!(error = %e, "connection lost; resuming");
        let (channel, joined_again) =
            resume_session(r, &resume_token, &opts.label, Some(conn.rtt())).await?;
        let zero_rtt = channel.used_0rtt();
        resume_token = joined_again.resume_token;
        udp_before += conn.stats().udp_tx.bytes;
        (conn, ctl_send, ctl_recv) = channel.into_parts();
        pump.abandon().await;
        pump = DomPump::new(conn.clone(), limits, codec).with_stats(pump.stats());
        let how = consumer.resume();
        tracing::info!(?how, took = ?lost_at.elapsed(), "resumed");
        report.resumptions.push(ResumeRecord {
            own: true,
            how,
            took: lost_at.elapsed(),
            zero_rtt,
        });
        if let Some(r) = res.as_mut() {
            r.reconnect(conn.clone(), limits);
        }
        if let Some(old) = reader.take() {
            old.abort();
        }
        if hands.is_some() {
            reader = Some(tokio::spawn(read_agent_messages(
                conn.clone(),
                agent_tx.clone(),
                limits,
            )));
        }
        meter = StatusMeter::new();
        advance(&mut pump, &mut consumer, &mut res, paused).await?;
    }
    pump.finish().await;
    let st = pump.stats();
    report.snapshot_bytes = st.snapshot_bytes;
    report.snapshot_wire_bytes = st.snapshot_wire_bytes;
    report.patch_bytes = st.patch_bytes;
    report.patch_wire_bytes = st.patch_wire_bytes;
    report.patches = st.patches;
    report.snapshots = st.snapshots;
    report.max_batch_bytes = st.max_batch_bytes;
    report.ack_delays = pump.ack_delays().to_vec();
    // Wait briefly for the relay's CLOSE so the END is delivered before the connection goes.
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while let Ok(Some(m)) = ctl_recv.next_message().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    if let Some(r) = reader {
        r.abort();
    }
    report.actions = hands.map(|h| h.log().to_vec()).unwrap_or_default();
    report.resources = res.map(|r| ConsumerResourceReport {
        referenced: r.referenced(),
        load_errors: r.load_errors(),
        settled: r.settled(),
        uplink: r.stats(),
    });
    presence.own_status = Some(meter.sample(&conn.stats(), Instant::now()));
    report.presence = presence;
    report.hash = consumer.tree_hash();
    report.udp_bytes = udp_before + conn.stats().udp_tx.bytes;
    conn.close(VarInt::from_u32(0), b"done");
    Ok(report)
}

/// Comes back to the session on a new connection (spec §3.5) with `token`, trying again with a
/// growing pause while the link stays down, for up to [`RESUME_WINDOW`]. A relay that no longer
/// knows the session (it ended, or the grace period passed) ends the attempt at once. `rtt`,
/// the round trip the lost connection measured, is where the new connections start from
/// ([`Reconnect::resume_after`]).
pub async fn resume_session(
    reconnect: &Reconnect,
    token: &str,
    label: &str,
    rtt: Option<Duration>,
) -> Result<(ControlChannel, Joined), SessionError> {
    let deadline = Instant::now() + RESUME_WINDOW;
    let mut pause = Duration::from_millis(100);
    loop {
        match reconnect.resume_after(token, label, rtt).await {
            Ok(back) => return Ok(back),
            Err(
                e @ (ClientError::Refused { .. }
                | ClientError::Closed { .. }
                | ClientError::Ended(_)),
            ) => {
                return Err(SessionError::EndedEarly(format!(
                    "the session could not be resumed: {e}"
                )));
            }
            Err(e) if Instant::now() + pause >= deadline => {
                return Err(SessionError::EndedEarly(format!("gave up resuming: {e}")));
            }
            Err(e) => {
                tracing::debug!(error = %e, "resumption failed; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Keeps the customer's latest pointer or scroll position (`m` from the consumer, by datagram
/// or on the control stream; latest wins, spec §7.21); returns whether `m` was one.
fn customer_moves(report: &mut AgentReport, m: &Message) -> bool {
    use tandem_engine::hands::is_newer;
    match m {
        Message::Pointer(p) => {
            if report.pointers_received.len() < POINTER_TRACE_LIMIT {
                report.pointers_received.push((p.seq, Instant::now()));
            }
            if report
                .customer_pointer
                .as_ref()
                .is_none_or(|old| is_newer(p.seq, old.seq))
            {
                report.customer_pointer = Some(p.clone());
            }
            true
        }
        Message::Scroll(sc) => {
            if report
                .customer_scroll
                .is_none_or(|old| is_newer(sc.seq, old.seq))
            {
                report.customer_scroll = Some(*sc);
            }
            true
        }
        _ => false,
    }
}

/// Whether `m` is for the consumer's hands (an action or a mode change) rather than for the
/// engine's DOM sync.
fn is_hands_message(m: &Message) -> bool {
    matches!(m, Message::Mode(_)) || tandem_engine::hands::Action::of(m).is_some()
}

/// What the agent side saw.
#[derive(Debug, Clone, Default)]
pub struct AgentReport {
    /// Time from the start of the session (the agent joined) to the first verified render.
    pub first_render: Option<Duration>,
    /// Time from the start of the session to the first thing the agent could show: the first
    /// parts of the first snapshot once they reach into the body (the top of the page,
    /// viewport first; spec §7.14, [`tandem_engine::Agent::partial_shows_body`]), or the whole
    /// verified page when no earlier part showed anything.
    pub first_visible: Option<Duration>,
    /// Time from the start of the session to the last blob received whole and verified
    /// (resources, spec §14); `None` when none arrived.
    pub last_blob: Option<Duration>,
    /// Nodes in the page at the end (the document node included).
    pub nodes: usize,
    /// Patches applied.
    pub patches: u64,
    /// Bytes of DOM frames received (`SNAPSHOT`, `PATCH`), uncompressed.
    pub dom_bytes: u64,
    /// Bytes received on the DOM streams: the `COMPRESSED` frames when the session negotiated
    /// compression, otherwise the same frames `dom_bytes` counts.
    pub dom_wire_bytes: u64,
    /// Whether the DOM streams were compressed.
    pub compressed: bool,
    /// Divergences detected (each answered by a resync).
    pub divergences: u64,
    /// The final tree hash, if a verified page is held.
    pub hash: Option<[u8; 32]>,
    /// The page URL.
    pub url: String,
    /// What the consumer answered the agent's script: (step, answer), in order.
    pub answers: Vec<(String, String)>,
    /// The refusal codes among them.
    pub refusals: Vec<RefusalCode>,
    /// The customer's latest pointer (spec §7.21), latest by sequence number.
    pub customer_pointer: Option<tandem_protocol::message::Pointer>,
    /// Every `POINTER` of the customer as it arrived, stale ones included: its sequence
    /// number and when it arrived, the first [`POINTER_TRACE_LIMIT`] (see
    /// [`ConsumerReport::pointers_sent`]).
    pub pointers_received: Vec<(u32, Instant)>,
    /// The customer's latest scroll position (spec §7.22), latest by sequence number.
    pub customer_scroll: Option<tandem_protocol::message::Scroll>,
    /// The customer's platform, viewport and link, and this side's link (spec §7.29).
    pub presence: Presence,
    /// What the resources did, when the session negotiated `RESOURCES` (spec §14).
    pub resources: Option<DownlinkReport>,
    /// The blobs held at the end, for the agent's next session ([`AgentOptions::blobs`]).
    pub blobs: Option<BlobStore>,
    /// The session's resumptions (spec §3.5), this side's and the consumer's, in order.
    pub resumptions: Vec<ResumeRecord>,
}

/// Settings of an agent session.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Limits enforced on what the consumer sends.
    pub limits: Limits,
    /// Write the current page as HTML to this file whenever it changes (at most every 250 ms,
    /// and at the end).
    pub out: Option<PathBuf>,
    /// Print progress lines to stderr.
    pub verbose: bool,
    /// Actions to carry out once the page has rendered, one every [`SCRIPT_STEP`].
    pub script: Vec<Step>,
    /// Blobs held from earlier sessions, announced in `HAVE` when the session negotiated
    /// `RESOURCES` (offer it in `HELLO`: [`crate::client::CAPABILITIES_WITH_RESOURCES`]);
    /// `None` starts with an empty store of [`DEFAULT_STORE_BYTES`].
    pub blobs: Option<BlobStore>,
    /// Cut the connection once, this long after `started` (run_agent's argument, when the
    /// session began), as a lost link would
    /// (without `CLOSE`): a drill for resumption (spec §3.5). A resumable session comes back
    /// on a new connection; any other ends.
    pub drop_after: Option<Duration>,
}

/// Time between two steps of an agent's script.
pub const SCRIPT_STEP: Duration = Duration::from_millis(30);

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            limits: Limits::DEFAULT,
            out: None,
            verbose: false,
            script: Vec::new(),
            blobs: None,
            drop_after: None,
        }
    }
}

/// Runs the agent side of a joined session: rebuilds the page from the DOM streams the relay
/// forwards (decompressing them when the session's capabilities hold `COMPRESSION`), answers
/// with ACK/RESYNC, and returns when the session ends.
///
/// When the session's capabilities hold `RESOURCES` (spec §14), it also announces the blobs
/// it holds (`HAVE`), asks for those the page refers to (`WANT`), receives them on resource
/// streams (told from DOM streams by their first frame), and with [`AgentOptions::out`]
/// writes the page with its blobs as files beside it (`<name>_files/`).
pub async fn run_agent(
    ctl: ControlChannel,
    opts: AgentOptions,
    started: Instant,
) -> Result<AgentReport, SessionError> {
    let limits = opts.limits;
    let compressed = ctl
        .session_capabilities()
        .contains(Capabilities::COMPRESSION);
    let mut presence = Presence::with_peer(ctl.joined().map(|j| &j.peer_platform));
    let mut meter = StatusMeter::new();
    let mut status_tick = tokio::time::interval(STATUS_INTERVAL);
    let with_resources = ctl.session_capabilities().contains(Capabilities::RESOURCES);
    // Resumable when the channel knows how to reconnect and the session has RESUME (spec §3.5).
    let reconnect = ctl.reconnect().cloned().filter(|_| {
        ctl.joined().is_some_and(|j| {
            j.capabilities.contains(Capabilities::RESUME) && !j.resume_token.is_empty()
        })
    });
    let mut resume_token = ctl
        .joined()
        .map(|j| j.resume_token.clone())
        .unwrap_or_default();
    let label = ctl.label().to_owned();
    let (mut conn, mut ctl_send, mut ctl_recv) = ctl.into_parts();
    let mut agent = Agent::new(limits);
    let mut report = AgentReport {
        compressed,
        ..AgentReport::default()
    };
    let mut downlink = with_resources.then(|| {
        let store = opts
            .blobs
            .clone()
            .unwrap_or_else(|| BlobStore::new(DEFAULT_STORE_BYTES));
        Downlink::new(store, ResourceLimits::DEFAULT, &limits)
    });
    if let Some(d) = &downlink {
        write_message(&mut ctl_send, &d.have(), &limits).await?;
    }
    let wire_bytes = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = mpsc::channel::<Result<RawFrame, DomStreamError>>(64);
    let (res_tx, mut res_rx) = mpsc::channel::<Result<Inbound, FramedError>>(64);
    let mut res_open = with_resources;
    // Accepts the DOM and resource streams of a connection (again after a resumption).
    let accept_on = |conn: &Connection, res_tx: mpsc::Sender<Result<Inbound, FramedError>>| {
        tokio::spawn(accept_streams(
            conn.clone(),
            tx.clone(),
            with_resources.then_some(res_tx),
            limits,
            compressed,
            wire_bytes.clone(),
        ))
    };
    let mut accept = accept_on(&conn, res_tx);
    let mut last_write: Option<Instant> = None;
    let mut dirty = false;
    let mut script = AgentScript::new(opts.script.clone());
    let mut actions: Option<SendStream> = None;
    let mut step = tokio::time::interval(SCRIPT_STEP);
    let mut datagrams = datagrams_ok(&conn);
    let (dg_tx, mut dg_rx) = mpsc::channel::<Message>(16);
    let mut dg_reader = spawn_datagram_reader(conn.clone(), dg_tx.clone(), limits);
    let mut drop_at = opts
        .drop_after
        .map(|d| tokio::time::Instant::from_std(started) + d);
    let result: Result<(), SessionError> = loop {
        // `?` on a write leaves this block, not the function, so the cleanup below always runs,
        // and a lost connection is resumed below when the session allows it.
        let step_result: Result<(), SessionError> = async {
        loop {
        tokio::select! {
            frame = rx.recv() => {
                let Some(frame) = frame else { break Ok(()) };
                let raw = match frame {
                    Ok(raw) => raw,
                    Err(DomStreamError::Framed(e)) if e.is_protocol() => break Err(SessionError::from(e)),
                    Err(DomStreamError::Decompress(e)) => break Err(SessionError::from(e)),
                    // A stream reset by the consumer (a superseded epoch) is not an error.
                    Err(DomStreamError::Framed(_)) => continue,
                };
                report.dom_wire_bytes = wire_bytes.load(Ordering::Relaxed);
                let header = tandem_protocol::varint::len_u32(raw.ty.0) + tandem_protocol::varint::len_u32(raw.body.len() as u32);
                report.dom_bytes += (header + raw.body.len()) as u64;
                if raw.ty == FrameType::SNAPSHOT {
                    // Read in place: no owned copy of each record (spec §7.14).
                    let view = SnapshotView::parse(&raw.body, &limits).map_err(FramedError::from)?;
                    // Divergence is reported as an event and answered by RESYNC; not fatal.
                    let _ = agent.handle_snapshot(view);
                } else {
                    let msg = raw.decode(&limits).map_err(FramedError::from)?;
                    if let Message::Unknown(u) = &msg {
                        if u.must_understand() {
                            break Err(unknown_critical(u.ty));
                        }
                        continue;
                    }
                    // Divergence is reported as an event and answered by RESYNC; not fatal.
                    let _ = agent.handle_message(msg);
                }
                while let Some(reply) = agent.poll_message() {
                    write_message(&mut ctl_send, &reply, &limits).await?;
                }
                let mut scan = false;
                while let Some(ev) = agent.poll_event() {
                    match &ev {
                        AgentEvent::Rendered { nodes, hash, .. } => {
                            if report.first_render.is_none() {
                                report.first_render = Some(started.elapsed());
                                report.first_visible = report.first_visible.or(report.first_render);
                            }
                            if opts.verbose {
                                note!("agent: rendered {nodes} nodes after {:?}, hash {}", started.elapsed(), hex16(hash));
                            }
                            dirty = true;
                            scan = true;
                        }
                        AgentEvent::Patched { .. } => {
                            report.patches += 1;
                            dirty = true;
                            scan = true;
                        }
                        AgentEvent::Diverged { error } => {
                            report.divergences += 1;
                            note!("agent: diverged ({error}); asked for a new snapshot");
                        }
                        AgentEvent::Progress { nodes, .. } => {
                            if report.first_visible.is_none()
                                && report.first_render.is_none()
                                && agent.partial_shows_body()
                            {
                                // The top of the page is here: show it while the rest comes.
                                report.first_visible = Some(started.elapsed());
                                if let (Some(path), Some(partial)) = (&opts.out, agent.partial()) {
                                    let html = tandem_engine::to_html(partial);
                                    std::fs::write(path, html).map_err(io_err(path))?;
                                }
                            }
                            if opts.verbose {
                                note!("agent: {nodes} nodes received");
                            }
                        }
                        _ => {}
                    }
                }
                if scan && let Some(d) = downlink.as_mut() {
                    // What the resource streams brought and is not taken in yet counts as being
                    // received: take it first, so that the scan does not ask for a blob that is
                    // here already (a WANT that would cross its stream, spec §14.4).
                    let mut failed = None;
                    while res_open {
                        match res_rx.try_recv() {
                            Ok(Ok(inbound)) => d.on_inbound(inbound),
                            Ok(Err(e)) if e.is_protocol() => {
                                failed = Some(e);
                                break;
                            }
                            Ok(Err(_)) => {}
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => res_open = false,
                        }
                    }
                    if let Some(e) = failed {
                        break Err(e.into());
                    }
                    if d.take_changed() {
                        report.last_blob = Some(started.elapsed());
                    }
                    d.scan(agent.dom());
                    while let Some(m) = d.poll_message() {
                        write_message(&mut ctl_send, &m, &limits).await?;
                    }
                }
                if dirty && last_write.is_none_or(|t| t.elapsed() >= Duration::from_millis(250)) {
                    write_out(&opts, &agent, downlink.as_ref())?;
                    last_write = Some(Instant::now());
                    dirty = false;
                }
            }
            inbound = res_rx.recv(), if res_open => {
                let Some(d) = downlink.as_mut() else { continue };
                match inbound {
                    Some(Ok(inbound)) => d.on_inbound(inbound),
                    Some(Err(e)) if e.is_protocol() => break Err(e.into()),
                    Some(Err(_)) => continue,
                    None => {
                        res_open = false;
                        continue;
                    }
                }
                while let Some(m) = d.poll_message() {
                    write_message(&mut ctl_send, &m, &limits).await?;
                }
                if d.take_changed() {
                    report.last_blob = Some(started.elapsed());
                    // A blob arrived: the written page can show it now.
                    dirty |= report.first_render.is_some();
                }
                if dirty && last_write.is_none_or(|t| t.elapsed() >= Duration::from_millis(250)) {
                    write_out(&opts, &agent, downlink.as_ref())?;
                    last_write = Some(Instant::now());
                    dirty = false;
                }
            }
            Some(m) = dg_rx.recv() => {
                customer_moves(&mut report, &m);
            }
            _ = status_tick.tick() => {
                let status = meter.sample(&conn.stats(), Instant::now());
                presence.own_status = Some(status);
                write_message(&mut ctl_send, &Message::Status(status), &limits).await?;
            }
            _ = step.tick(), if report.first_render.is_some() && script.has_next() => {
                let Some((lane, msg)) = script.next(agent.dom()) else {
                    continue;
                };
                match lane {
                    Lane::Datagram if datagrams => {
                        let bytes = frame::to_frame(&msg, &limits).map_err(FramedError::from)?;
                        // A datagram that does not fit or finds no room is dropped, like a
                        // lost one; the next position wins anyway (spec §7.21).
                        let _ = conn.send_datagram(bytes.into());
                    }
                    Lane::Datagram | Lane::Control => write_message(&mut ctl_send, &msg, &limits).await?,
                    Lane::Actions => {
                        if actions.is_none() {
                            let s = conn.open_uni().await.map_err(ClientError::from_connection)?;
                            actions = Some(s);
                        }
                        if let Some(s) = actions.as_mut() {
                            match write_message(s, &msg, &limits).await {
                                Ok(()) => {}
                                // Cut with the consumer's connection (spec §3.5): the action is
                                // lost; the next one goes on a new stream.
                                Err(FramedError::Write(quinn::WriteError::Stopped(_))) => actions = None,
                                Err(e) => break Err(e.into()),
                            }
                        }
                    }
                }
                if !script.has_next() {
                    // The script is done: finishing the actions stream tells the consumer.
                    match actions.as_mut() {
                        Some(s) => {
                            let _ = s.finish();
                        }
                        None => {
                            let mut s = conn.open_uni().await.map_err(ClientError::from_connection)?;
                            let _ = s.finish();
                            actions = Some(s);
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(drop_at.unwrap_or_else(tokio::time::Instant::now)), if drop_at.is_some() => {
                // The drill: cut the link as a lost one would, once.
                drop_at = None;
                conn.close(VarInt::from_u32(0), b"dropped");
            }
            msg = ctl_recv.next_message() => {
                match msg {
                    Ok(Some(Message::End(_))) | Ok(Some(Message::Close(_))) | Ok(None) => break Ok(()),
                    Ok(Some(Message::Rejoined(_))) => {
                        // The consumer came back on a new connection (spec §3.5): its DOM
                        // stream continues on a new stream; the actions stream was cut.
                        actions = None;
                        report.resumptions.push(ResumeRecord { own: false, how: Resumption::Continue { resent: 0 }, took: Duration::ZERO, zero_rtt: false });
                        if let Some(d) = downlink.as_mut() {
                            d.reconnected();
                            while let Some(m) = d.poll_message() {
                                write_message(&mut ctl_send, &m, &limits).await?;
                            }
                        }
                    }
                    // A hop message of the relay's: answered at once (spec §7.30).
                    Ok(Some(Message::Ping(ping))) => write_message(&mut ctl_send, &Message::Pong(ping), &limits).await?,
                    Ok(Some(Message::Unknown(u))) if u.must_understand() => break Err(unknown_critical(u.ty)),
                    Ok(Some(m)) => {
                        if !presence.on_message(&m) && !customer_moves(&mut report, &m) {
                            script.on_message(&m);
                        }
                    }
                    Err(e) if e.is_protocol() => break Err(e.into()),
                    Err(e) if e.is_connection_lost() && reconnect.is_some() => break Err(e.into()),
                    Err(_) => break Ok(()),
                }
            }
        }
        }
    }
    .await;
        let e = match step_result {
            Err(e) if e.is_connection_lost() && reconnect.is_some() => e,
            other => break other,
        };
        let Some(r) = reconnect.as_ref() else {
            break Err(e);
        };
        // The connection is gone: come back on a new one (spec §3.5). The consumer is told
        // (REJOINED) and continues its DOM stream from what this side acknowledged.
        let lost_at = Instant::now();
        tracing::info!(error = %e, "connection lost; resuming");
        let (channel, joined_again) =
            match resume_session(r, &resume_token, &label, Some(conn.rtt())).await {
                Ok(back) => back,
                Err(e) => break Err(e),
            };
        let zero_rtt = channel.used_0rtt();
        resume_token = joined_again.resume_token;
        (conn, ctl_send, ctl_recv) = channel.into_parts();
        accept.abort();
        dg_reader.abort();
        let (res_tx, fresh_res_rx) = mpsc::channel::<Result<Inbound, FramedError>>(64);
        // Pieces of the old connection's streams are dropped with the old channel.
        res_rx = fresh_res_rx;
        res_open = with_resources;
        accept = accept_on(&conn, res_tx);
        dg_reader = spawn_datagram_reader(conn.clone(), dg_tx.clone(), limits);
        datagrams = datagrams_ok(&conn);
        actions = None;
        meter = StatusMeter::new();
        report.resumptions.push(ResumeRecord {
            own: true,
            how: Resumption::Continue { resent: 0 },
            took: lost_at.elapsed(),
            zero_rtt,
        });
        if let Some(d) = downlink.as_mut() {
            d.reconnected();
            let again: Vec<Message> = std::iter::from_fn(|| d.poll_message()).collect();
            for m in again {
                if let Err(e) = write_message(&mut ctl_send, &m, &limits).await {
                    tracing::debug!(error = %e, "cannot ask for blobs again");
                }
            }
        }
    };
    // The relay stops reading the control stream when it tears the session down (its END is
    // on the way): a write that finds it stopped ends the session like END does.
    let result = match result {
        Err(SessionError::Framed(FramedError::Write(quinn::WriteError::Stopped(_)))) => Ok(()),
        r => r,
    };
    accept.abort();
    dg_reader.abort();
    // Positions read before the end but not yet taken still count (latest wins).
    while let Ok(m) = dg_rx.try_recv() {
        customer_moves(&mut report, &m);
    }
    if dirty {
        write_out(&opts, &agent, downlink.as_ref())?;
    }
    if let Some(d) = downlink {
        let missing = agent
            .to_html_resolved(d.store(), &ResolveMode::Inline)
            .missing
            .len();
        report.resources = Some(d.report(missing));
        report.blobs = Some(d.into_store());
    }
    report.dom_wire_bytes = wire_bytes.load(Ordering::Relaxed);
    report.nodes = agent.dom().len();
    report.hash = agent.tree_hash();
    report.url = agent.url().to_owned();
    report.answers = script.answers().to_vec();
    report.refusals = script.refusals().to_vec();
    presence.own_status = Some(meter.sample(&conn.stats(), Instant::now()));
    report.presence = presence;
    if let Err(e) = &result {
        close_on_violation(&conn, &mut ctl_send, e, &limits).await;
    }
    conn.close(VarInt::from_u32(0), b"done");
    result.map(|()| report)
}

/// Reads the customer's pointer and scroll datagrams (spec §3.2) into `tx`; a malformed one is
/// dropped: datagrams are latest-wins hints, and the relay checked their framing already.
fn spawn_datagram_reader(
    conn: Connection,
    tx: mpsc::Sender<Message>,
    limits: Limits,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(d) = conn.read_datagram().await {
            if let Ok(m) = frame::decode_exact(&d, &limits)
                && tx.send(m).await.is_err()
            {
                break;
            }
        }
    })
}

/// Whether the connection can carry `POINTER` and `SCROLL` as QUIC datagrams.
fn datagrams_ok(conn: &Connection) -> bool {
    conn.max_datagram_size().is_some()
}

/// Why a DOM stream stopped delivering frames.
#[derive(Debug)]
enum DomStreamError {
    /// Reading or framing failed: a reset stream, a lost link, or a malformed frame.
    Framed(FramedError),
    /// The compressed stream broke spec §4.6 (or a `COMPRESSED` frame came on a stream of a
    /// session without compression).
    Decompress(DecompressError),
}

/// Accepts the unidirectional streams the relay opens and tells them apart by their first
/// frame (spec §3.2): a resource stream (first frame `RESOURCE`) goes to `resources` when the
/// session takes resources, and is stopped otherwise; any other is a DOM stream.
async fn accept_streams(
    conn: Connection,
    tx: mpsc::Sender<Result<RawFrame, DomStreamError>>,
    resources: Option<mpsc::Sender<Result<Inbound, FramedError>>>,
    limits: Limits,
    compressed: bool,
    wire_bytes: Arc<AtomicU64>,
) {
    while let Ok(stream) = conn.accept_uni().await {
        let tx = tx.clone();
        let resources = resources.clone();
        let wire_bytes = wire_bytes.clone();
        tokio::spawn(async move {
            let mut recv = FrameRecv::new(stream, limits);
            let first = match recv.next_raw().await {
                Ok(Some(first)) => first,
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(DomStreamError::Framed(e))).await;
                    return;
                }
            };
            if is_resource_stream(first.ty) {
                match resources {
                    Some(res) => read_resource_stream(recv, first, res).await,
                    None => {
                        // RESOURCES was not negotiated: nobody wants the blob.
                        let _ = recv.stream_mut().stop(VarInt::from_u32(0));
                    }
                }
                return;
            }
            if let Err(e) = read_dom_stream(recv, first, &tx, limits, compressed, &wire_bytes).await
            {
                let _ = tx.send(Err(e)).await;
            }
        });
    }
}

/// Reads one DOM stream to its end, its first frame `first` read already, sending the frames
/// it carries to `tx`: as they are, or decompressed (spec §4.6.4) when `compressed`. Memory
/// stays within one frame (and the compression window): each `COMPRESSED` frame is drained
/// before the next is read.
async fn read_dom_stream(
    mut recv: FrameRecv,
    first: RawFrame,
    tx: &mpsc::Sender<Result<RawFrame, DomStreamError>>,
    limits: Limits,
    compressed: bool,
    wire_bytes: &AtomicU64,
) -> Result<(), DomStreamError> {
    let mut decompressor = if compressed {
        Some(DomDecompressor::new(limits).map_err(DomStreamError::Decompress)?)
    } else {
        None
    };
    let mut first = Some(first);
    let mut at_start = true;
    loop {
        let opening = std::mem::replace(&mut at_start, false);
        let next = match first.take() {
            Some(f) => Some(f),
            None => recv.next_raw().await.map_err(DomStreamError::Framed)?,
        };
        let Some(frame) = next else {
            if let Some(d) = decompressor.as_mut() {
                d.finish().map_err(DomStreamError::Decompress)?;
            }
            return Ok(());
        };
        let size = tandem_protocol::varint::len_u32(frame.ty.0)
            + tandem_protocol::varint::len_u32(frame.body.len() as u32)
            + frame.body.len();
        wire_bytes.fetch_add(size as u64, Ordering::Relaxed);
        match decompressor.as_mut() {
            None if frame.ty == FrameType::COMPRESSED && opening => {
                // A compressed snapshot the consumer sent ahead before it knew this agent does
                // not take compression (spec §3.2): it follows with a new epoch uncompressed.
                let _ = recv.stream_mut().stop(quinn::VarInt::from_u32(0));
                return Ok(());
            }
            None if frame.ty == FrameType::COMPRESSED => {
                // Compression was not negotiated: the frame has no place here (spec §7.35).
                return Err(DomStreamError::Decompress(
                    DecompressError::UnexpectedFrame {
                        ty: frame.ty,
                        inner: true,
                    },
                ));
            }
            None => {
                if tx.send(Ok(frame)).await.is_err() {
                    return Ok(());
                }
            }
            Some(d) => {
                d.push_frame(&frame).map_err(DomStreamError::Decompress)?;
                while let Some(inner) = d.next_frame().map_err(DomStreamError::Decompress)? {
                    if tx.send(Ok(inner)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Writes the agent's page to [`AgentOptions::out`]. With resources, the blobs the page refers
/// to go as files named by address into `<stem>_files/` beside it, and the page refers to them
/// there (spec §14.9), so a browser shows it complete; URIs of blobs not held stay as they are.
fn write_out(
    opts: &AgentOptions,
    agent: &Agent,
    resources: Option<&Downlink>,
) -> Result<(), SessionError> {
    let Some(path) = &opts.out else { return Ok(()) };
    let html = match resources {
        None => agent.to_html(),
        Some(d) => {
            let stem = path
                .file_stem()
                .map_or_else(|| "page".into(), |s| s.to_string_lossy().into_owned());
            let dir_name = format!("{stem}_files");
            let page = agent.to_html_resolved(
                d.store(),
                &ResolveMode::Files {
                    prefix: format!("{dir_name}/"),
                },
            );
            if !page.files.is_empty() {
                let dir = path.with_file_name(&dir_name);
                std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                for (name, bytes) in &page.files {
                    // Named by address: a file that exists holds these bytes already.
                    let file = dir.join(name);
                    if !file.exists() {
                        let tmp = file.with_extension("tmp");
                        std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
                        std::fs::rename(&tmp, &file).map_err(io_err(&file))?;
                    }
                }
            }
            page.html
        }
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, html).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(())
}

/// The first 16 bytes of a hash in hex, as the tools print it.
pub fn hex16(h: &[u8]) -> String {
    h.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The full hash in hex.
pub fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}
