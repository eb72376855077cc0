//! `tandem relay`: pairs a consumer and an agent by session code or token, or by an agent's
//! invitation the customer accepts, and forwards their traffic without decoding it.
//!
//! ```text
//!  consumer ──HELLO──► relay ◄──HELLO── agent
//!           ◄WELCOME─        ─WELCOME─►
//!  ──SESSION_OPEN──►
//!  ◄SESSION_CREATED─ (code, token)        ◄──JOIN(code)──
//!        or, to a customer waiting under its label:  ◄──INVITE(label)──
//!  ◄──INVITE──  ──ACCEPT──►               ───ACCEPT─────►   (or DECLINE, CANCEL, expiry)
//!  ◄────JOINED──────                      ───JOINED─────►
//!  uni streams, control frames, datagrams ◄────────────► forwarded frame by frame
//!  ──END──►                               ──END(EndedByConsumer), CLOSE──►
//! ```
//!
//! Every decision (negotiation, pairing, expiry, rate limiting, what to tell whom at the end)
//! lives in the sans-IO [`state`] and, for invitations, in the engine's session machine
//! (`invite.rs`); lifecycle events go to a JSON-lines log and a [`webhook`]. This module is the tokio pump around it: one task per
//! connection until pairing, then one task per session that owns both connections. Bodies are
//! never decoded after pairing: uni streams are forwarded chunk by chunk with every frame header
//! checked against the limits ([`crate::framed::forward_stream`]) and written into the other
//! connection at its pacing rate, two datagrams at a time with room left in its window for
//! datagrams ([`crate::meter`]), control frames are classified
//! by type alone (the frames the relay consumes itself, `PING`, `PONG`, `ERROR`, `END` and
//! `CLOSE`, are decoded first, [`state::consume`], and so are those it refuses with `ERROR`,
//! [`state::refuse`], spec §4.5), datagrams pass as they are. The
//! one exception is resources (spec §14.7), in a session that negotiated `RESOURCES`: the
//! consumer's resource streams are still forwarded byte for byte but their `RESOURCE` pieces
//! also feed a cache shared by all sessions ([`crate::resources::forward_observed`]), and the
//! agent's `WANT` and `WANT_AGAIN` are decoded so that the cache answers what it holds on
//! streams of its own to the agent and only the rest goes on — a `WANT` less what is still on
//! its way to the agent on a forwarded stream, which it asked for before that stream reached it
//! (spec §14.4, [`crate::resources::Transit`]).

mod invite;
mod live;
pub mod state;
pub mod webhook;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use quinn::{Connection, Endpoint, Incoming, SendStream, VarInt, ZeroRttAccepted};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use tandem_protocol::message::{
    Credential, End, EndReason, ErrorReport, Join, Role, SessionCreated,
};
use tandem_protocol::{ErrorCode, FrameType, Limits, Message, RawFrame};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout};

use self::state::{
    Consumed, ControlAction, JoinRefusal, Observed, Outcome, PeerInfo, RandomFailed, SessionId,
    SessionTable, Side, TableConfig,
};
use self::webhook::{Webhook, WebhookUrl};
use crate::framed::{FrameRecv, FramedError, forward_stream, quic_code, write_message, write_raw};
use crate::meter::SendMeter;
use crate::resources::{CacheStats, SharedCache, Transit, Uplink, forward_observed};
use crate::session::DOM_PRIORITY;
use crate::transport::{self, Fingerprint, Identity, TransportError};

/// Command-line arguments of `tandem relay`.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:4433")]
    pub listen: SocketAddr,
    /// PEM certificate file; with --key, loaded if both exist, else generated and saved there
    /// so the fingerprint survives restarts. Without them a new certificate is made each start.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key file (see --cert).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Write session lifecycle events as JSON lines to FILE (appended), or to stdout with `-`.
    #[arg(long, value_name = "FILE|-")]
    pub events: Option<String>,
    /// Also POST each lifecycle event as a JSON object to this http:// URL.
    #[arg(long, value_name = "URL")]
    pub webhook: Option<WebhookUrl>,
    /// Bytes of public resources (stylesheets, images, fonts the consumer marks cacheable)
    /// kept across sessions and served to agents without asking the consumer again (spec
    /// §14.7); the least recently used leave first. 0 turns the cache off.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_CACHE_BYTES)]
    pub cache_bytes: u64,
}

/// Default byte budget of the relay's resource cache (`--cache-bytes`).
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Settings of a relay run in-process by [`spawn`].
pub struct RelayConfig {
    /// UDP address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Certificate and key the relay presents.
    pub identity: Identity,
    /// Limits enforced on every frame header and on the handshake messages.
    pub limits: Limits,
    /// Code expiry, rate limiting and capacity.
    pub table: TableConfig,
    /// Time a new connection has to send `HELLO` and `SESSION_OPEN` or `JOIN`.
    pub handshake_timeout: Duration,
    /// Time a peer has, after the relay's `CLOSE` or `END`, to acknowledge it and to close its
    /// connection before the relay closes it; on a slow path at least
    /// [`GRACE_ROUND_TRIPS`] round trips, so that a teardown message lost once is sent again
    /// before the connection closes behind it.
    pub close_grace: Duration,
    /// Where to write lifecycle events as JSON lines, if anywhere.
    pub event_log: Option<Box<dyn Write + Send>>,
    /// Where to POST lifecycle events, if anywhere.
    pub webhook: Option<WebhookUrl>,
    /// Byte budget of the resource cache shared by all sessions (spec §14.7); 0: no cache.
    pub cache_bytes: u64,
}

impl RelayConfig {
    /// Defaults: spec limits, 120 s codes, 5 failed joins per minute, 30 s handshake, a
    /// resource cache of [`DEFAULT_CACHE_BYTES`].
    pub fn new(listen: SocketAddr, identity: Identity) -> Self {
        Self {
            listen,
            identity,
            limits: Limits::DEFAULT,
            table: TableConfig::default(),
            handshake_timeout: Duration::from_secs(30),
            close_grace: Duration::from_secs(3),
            event_log: None,
            webhook: None,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("listen", &self.listen)
            .field("fingerprint", &self.identity.fingerprint())
            .field("limits", &self.limits)
            .field("table", &self.table)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("close_grace", &self.close_grace)
            .field("event_log", &self.event_log.is_some())
            .field("webhook", &self.webhook)
            .field("cache_bytes", &self.cache_bytes)
            .finish()
    }
}

/// Errors starting a relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The endpoint or certificate could not be set up.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The events file could not be opened, or the listening address read back.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A session lifecycle event (spec §13.5), written as one JSON line with an `event` tag and a
/// `ts_ms` timestamp (milliseconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RelayEvent {
    /// A consumer opened a session (`opened`).
    Opened {
        /// The session's id inside the relay.
        session: SessionId,
        /// The consumer's label.
        label: String,
        /// The consumer's address.
        remote: SocketAddr,
    },
    /// An agent joined; both sides were told (`connected`).
    Connected {
        /// The session.
        session: SessionId,
        /// The consumer's label.
        consumer_label: String,
        /// The agent's label.
        agent_label: String,
        /// The agent's address.
        remote: SocketAddr,
    },
    /// An agent invited a customer; the customer is being asked (`invited`).
    Invited {
        /// The invitation's id, which the session keeps if the customer accepts.
        session: SessionId,
        /// The customer's label, which the agent named as the target.
        consumer_label: String,
        /// The agent's label.
        agent_label: String,
        /// The agent's address.
        remote: SocketAddr,
    },
    /// A `JOIN` or an `INVITE` was refused.
    JoinRefused {
        /// `SessionNotFound`, `SessionBusy` or `RateLimited`.
        reason: String,
        /// The agent's address.
        remote: SocketAddr,
    },
    /// The customer paused sharing.
    Paused {
        /// The session.
        session: SessionId,
    },
    /// The customer resumed sharing.
    Resumed {
        /// The session.
        session: SessionId,
    },
    /// A side's connection was lost in a session that can be resumed; the session waits for
    /// it (`disconnected`, spec §3.5).
    Disconnected {
        /// The session.
        session: SessionId,
        /// `consumer` or `agent`.
        side: String,
    },
    /// A side came back on a new connection (`reconnected`, spec §3.5).
    Reconnected {
        /// The session.
        session: SessionId,
        /// `consumer` or `agent`.
        side: String,
    },
    /// The customer granted or set a mode.
    ModeChanged {
        /// The session.
        session: SessionId,
        /// `follow`, `view`, `guide` or `full`.
        mode: String,
    },
    /// A session ended.
    Ended {
        /// The session.
        session: SessionId,
        /// The reason, as spec §13.5 names it (`ended_by_consumer`, `ended_by_agent`,
        /// `connection_lost`, `expired`, …).
        reason: String,
        /// The side that ended it or whose fault or loss it was, if any.
        by: Option<String>,
        /// More detail, such as the protocol error.
        detail: Option<String>,
    },
}

#[derive(Serialize)]
struct EventLine<'a> {
    ts_ms: u128,
    #[serde(flatten)]
    event: &'a RelayEvent,
}

/// A relay running inside this process (for `tandem demo` and tests).
#[derive(Debug)]
pub struct RelayHandle {
    /// The address the relay listens on.
    pub addr: SocketAddr,
    /// The fingerprint clients pin.
    pub fingerprint: Fingerprint,
    events: broadcast::Sender<RelayEvent>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    cache: Arc<SharedCache>,
}

impl RelayHandle {
    /// What the resource cache holds and has served to agents (spec §14.7).
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Whether the resource cache holds the blob at `address`.
    pub fn cache_holds(&self, address: &tandem_engine::resource::Address) -> bool {
        self.cache.contains(address)
    }

    /// Lifecycle events from now on. A receiver that falls more than 1024 events behind loses
    /// the oldest.
    pub fn subscribe(&self) -> broadcast::Receiver<RelayEvent> {
        self.events.subscribe()
    }

    /// Stops the relay: live sessions get `END ConnectionLost` and `CLOSE`, then the endpoint
    /// closes. Returns when the relay has stopped.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Binds the relay's endpoint and runs it on the current tokio runtime.
pub fn spawn(config: RelayConfig) -> Result<RelayHandle, RelayError> {
    let endpoint = transport::server_endpoint(config.listen, &config.identity)?;
    let addr = endpoint.local_addr()?;
    let (events, _) = broadcast::channel(1024);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let cache = Arc::new(SharedCache::new(config.cache_bytes, config.limits));
    let shared = Arc::new(Shared {
        cache: cache.clone(),
        table: Mutex::new(SessionTable::new(config.table)),
        limits: config.limits,
        handshake_timeout: config.handshake_timeout,
        close_grace: config.close_grace,
        events: events.clone(),
        log: config.event_log.map(Mutex::new),
        webhook: config.webhook.map(Webhook::spawn),
        rng: SystemRandom::new(),
        shutdown: shutdown_rx,
    });
    let task = tokio::spawn(accept_loop(endpoint, shared));
    Ok(RelayHandle {
        addr,
        fingerprint: config.identity.fingerprint(),
        events,
        shutdown,
        task,
        cache,
    })
}

/// Runs `tandem relay` until Ctrl-C: prints `listening: <addr>` and `fingerprint: <hex>` on
/// stdout, one line each, then serves.
pub async fn run(args: RelayArgs) -> Result<(), RelayError> {
    let identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Identity::load_or_generate(cert, key)?,
        _ => Identity::generate()?,
    };
    let mut config = RelayConfig::new(args.listen, identity);
    config.webhook = args.webhook;
    config.cache_bytes = args.cache_bytes;
    config.event_log = match args.events.as_deref() {
        None => None,
        Some("-") => Some(Box::new(std::io::stdout())),
        Some(path) => Some(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        )),
    };
    let handle = spawn(config)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening: {}", handle.addr)?;
        writeln!(out, "fingerprint: {}", handle.fingerprint)?;
        out.flush()?;
    }
    tracing::info!(addr = %handle.addr, fingerprint = %handle.fingerprint, "relay listening");
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(())
}

/// What every task of the relay shares.
struct Shared {
    /// The resource cache (spec §14.7): blobs by address only, never who referred to them.
    cache: Arc<SharedCache>,
    table: Mutex<SessionTable<mpsc::Sender<Arrival>>>,
    limits: Limits,
    handshake_timeout: Duration,
    close_grace: Duration,
    events: broadcast::Sender<RelayEvent>,
    log: Option<Mutex<Box<dyn Write + Send>>>,
    webhook: Option<Webhook>,
    rng: SystemRandom,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, SessionTable<mpsc::Sender<Arrival>>> {
        // A panic while holding the lock would be a bug in the table; its data stays usable.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(&self, event: RelayEvent) {
        tracing::info!(?event, "session event");
        if self.log.is_some() || self.webhook.is_some() {
            let ts_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            let line = EventLine {
                ts_ms,
                event: &event,
            };
            if let Ok(json) = serde_json::to_vec(&line) {
                if let Some(log) = &self.log {
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    if let Err(e) = log
                        .write_all(&json)
                        .and_then(|()| log.write_all(b"\n"))
                        .and_then(|()| log.flush())
                    {
                        tracing::warn!(error = %e, "cannot write event");
                    }
                }
                if let Some(hook) = &self.webhook {
                    hook.post(json);
                }
            }
        }
        let _ = self.events.send(event);
    }

    fn random(&self) -> impl FnMut(&mut [u8]) -> Result<(), RandomFailed> + '_ {
        |buf: &mut [u8]| self.rng.fill(buf).map_err(|_| RandomFailed)
    }

    async fn shutting_down(&self) {
        let mut rx = self.shutdown.clone();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// A greeted client: its connection, its control stream and what it told about itself.
struct Peer {
    conn: Connection,
    send: SendStream,
    recv: FrameRecv,
    info: PeerInfo,
    /// Resolves when the connection's handshake is complete; `None` once it has. Until then
    /// the relay acts on `HELLO` and `JOIN` alone (spec §3.5).
    handshake: Option<ZeroRttAccepted>,
}

impl Peer {
    /// Waits until the connection's handshake is complete (or has failed: the next read then
    /// reports the connection's end).
    async fn established(&mut self) {
        if let Some(handshake) = self.handshake.take() {
            handshake.await;
        }
    }
}

/// What reaches a waiting consumer's task from an agent's: the agent itself, to pair with
/// (`JOIN`), or to ask the customer first (`INVITE`).
enum Arrival {
    /// The agent joined with the session's code or token.
    Joined(Box<Peer>),
    /// The agent invites the customer; the consumer's task shows the `INVITE` and owns the
    /// agent's connection until the invitation is answered, withdrawn or expires.
    Invited(Box<invite::Pending>),
    /// A side of a live session came back on a new connection with its resume token
    /// (spec §3.5); the session's task seats it.
    Resumed(Side, Box<Peer>),
}

/// Why a connection's handling stopped before pairing.
enum Stop {
    /// Tell the peer with a `CLOSE` and close the connection.
    Refuse(ErrorReport),
    /// The link is gone; nothing can be told.
    Gone,
}

impl From<FramedError> for Stop {
    fn from(e: FramedError) -> Self {
        match e.close_code() {
            Some(code) => Stop::Refuse(ErrorReport {
                code,
                message: e.to_string(),
            }),
            None => Stop::Gone,
        }
    }
}

fn refusal(code: ErrorCode, message: impl Into<String>) -> Stop {
    Stop::Refuse(ErrorReport {
        code,
        message: message.into(),
    })
}

/// Round trips a peer has at least, on a slow path, to acknowledge the relay's teardown
/// messages and close (see [`RelayConfig::close_grace`]): a lost packet is sent again after
/// about one to three round trips (RFC 9002 §6), so eight cover a loss and its retransmission
/// being lost too.
pub const GRACE_ROUND_TRIPS: u32 = 8;

/// How long the relay waits, at each step of closing `conn`, for the peer.
fn grace(shared: &Shared, conn: &Connection) -> Duration {
    shared.close_grace.max(conn.rtt() * GRACE_ROUND_TRIPS)
}

async fn accept_loop(endpoint: Endpoint, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    connections.spawn(handle_connection(shared.clone(), incoming));
                }
                None => break,
            },
            _ = sweep.tick() => {
                shared.table().sweep(Instant::now());
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shared.shutting_down() => break,
        }
    }
    // Sessions see the shutdown too and tell their peers; give them time to.
    let drain = async { while connections.join_next().await.is_some() {} };
    let _ = timeout(shared.close_grace * 2, drain).await;
    connections.abort_all();
    endpoint.close(VarInt::from_u32(0), b"relay shutting down");
    let _ = timeout(shared.close_grace, endpoint.wait_idle()).await;
}

async fn handle_connection(shared: Arc<Shared>, incoming: Incoming) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "connection refused");
            return;
        }
    };
    // The connection as soon as the client's first flight is in, so that a returning client's
    // HELLO and JOIN in 0-RTT data are answered in the same flight as the handshake (0.5-RTT
    // data, readable only by the client that holds the ticket's keys). The rustls session
    // store spends a ticket when it is presented, so early data is accepted at most once per
    // ticket and a replayed flight is never acted on twice (spec §3.5, RFC 8446 §8.1). On a
    // server, `into_0rtt` always succeeds.
    let (conn, handshake) = match connecting.into_0rtt() {
        Ok((conn, handshake)) => (conn, Some(handshake)),
        Err(connecting) => match connecting.await {
            Ok(conn) => (conn, None),
            Err(e) => {
                tracing::debug!(%remote, error = %e, "handshake failed");
                return;
            }
        },
    };
    let (send, recv) = tokio::select! {
        r = timeout(shared.handshake_timeout, conn.accept_bi()) => match r {
            Ok(Ok(streams)) => streams,
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "connection ended before its control stream");
                return;
            }
            Err(_) => {
                conn.close(quic_code(ErrorCode::UnexpectedMessage), b"no control stream");
                return;
            }
        },
        _ = shared.shutting_down() => {
            conn.close(VarInt::from_u32(0), b"relay shutting down");
            return;
        }
    };
    let mut peer = Peer {
        conn,
        send,
        recv: FrameRecv::new(recv, shared.limits),
        info: PeerInfo::default(),
        handshake,
    };
    let deadline = tokio::time::Instant::now() + shared.handshake_timeout;
    let role = match handshake_step(&shared, deadline, greet(&shared, &mut peer)).await {
        Ok(role) => role,
        Err(stop) => return finish(&shared, peer, stop).await,
    };
    match role {
        Role::Consumer => {
            if let Err((peer, stop)) = serve_consumer(&shared, peer, remote).await {
                finish(&shared, peer, stop).await;
            }
        }
        _ => agent_task(shared, peer, remote).await,
    }
}

/// Serves an agent that has no session: until it joins or its invitation is taken up by a
/// customer's task, or until it is let go.
async fn agent_task(shared: Arc<Shared>, peer: Peer, remote: SocketAddr) {
    if let Err((peer, stop)) = serve_agent(&shared, peer, remote).await {
        finish(&shared, peer, stop).await;
    }
}

/// Runs a handshake step until `deadline`, turning a timeout or a relay shutdown into a
/// refusal.
async fn handshake_step<T>(
    shared: &Shared,
    deadline: tokio::time::Instant,
    fut: impl Future<Output = Result<T, Stop>>,
) -> Result<T, Stop> {
    tokio::select! {
        r = tokio::time::timeout_at(deadline, fut) => match r {
            Ok(r) => r,
            Err(_) => Err(refusal(ErrorCode::UnexpectedMessage, "handshake timed out")),
        },
        _ = shared.shutting_down() => Err(refusal(ErrorCode::NoError, "relay shutting down")),
    }
}

/// Reads `HELLO`, answers `WELCOME` (spec §7.1, §7.2) and returns the peer's role.
async fn greet(shared: &Shared, peer: &mut Peer) -> Result<Role, Stop> {
    let hello = match peer.recv.next_message().await? {
        Some(Message::Hello(hello)) => hello,
        Some(other) => {
            return Err(refusal(
                ErrorCode::UnexpectedMessage,
                format!("expected HELLO, got {}", other.name()),
            ));
        }
        None => return Err(Stop::Gone),
    };
    let welcome = state::negotiate(&hello).map_err(Stop::Refuse)?;
    peer.info.capabilities = welcome.capabilities;
    write_message(&mut peer.send, &Message::Welcome(welcome), &shared.limits).await?;
    peer.info.platform = hello.platform;
    Ok(hello.role)
}

/// Sends a hop `ERROR` (spec §7.33): a refused request; the connection stays open.
async fn send_error(
    shared: &Shared,
    peer: &mut Peer,
    code: ErrorCode,
    message: impl Into<String>,
) -> Result<(), Stop> {
    let error = Message::Error(ErrorReport {
        code,
        message: message.into(),
    });
    write_message(&mut peer.send, &error, &shared.limits).await?;
    Ok(())
}

/// Reads the next request of a greeted peer that has no session yet: answers `PING`, skips
/// `PONG` and `ERROR`, turns `END`, `CLOSE` and relay-only messages into a stop, and decodes the
/// rest for the caller. A frame the relay acts on is decoded whole first (spec §4.5; the ones
/// it consumes by [`state::consume`]): one that does not decode is a stop with its code.
async fn next_request(shared: &Shared, peer: &mut Peer) -> Result<Message, Stop> {
    loop {
        let Some(frame) = peer.recv.next_raw().await? else {
            return Err(Stop::Gone);
        };
        // Only HELLO (read by `greet`) and JOIN are acted on in early data (spec §3.5).
        if frame.ty != FrameType::JOIN {
            peer.established().await;
        }
        match frame.ty {
            ty if Consumed::is_consumed(ty) => {
                match state::consume(&frame, &shared.limits).map_err(FramedError::from)? {
                    Consumed::Ping(pong) => write_raw(&mut peer.send, &pong).await?,
                    Consumed::Ignored => {}
                    Consumed::End(_) => {
                        return Err(refusal(ErrorCode::NoError, "no session to end"));
                    }
                    Consumed::Close(_) => return Err(Stop::Gone),
                }
            }
            FrameType::HELLO
            | FrameType::WELCOME
            | FrameType::SESSION_CREATED
            | FrameType::JOINED => {
                return Err(refusal(
                    ErrorCode::UnexpectedMessage,
                    format!("{} is not allowed here", frame.ty),
                ));
            }
            _ => return Ok(frame.decode(&shared.limits).map_err(FramedError::from)?),
        }
    }
}

async fn serve_consumer(
    shared: &Arc<Shared>,
    mut peer: Peer,
    remote: SocketAddr,
) -> Result<(), (Peer, Stop)> {
    let deadline = tokio::time::Instant::now() + shared.handshake_timeout;
    // SESSION_OPEN, answered with SESSION_CREATED or, when the relay cannot, with ERROR; the
    // consumer may try again (spec §7.3).
    let (opened, mut rx) = loop {
        let open = match handshake_step(shared, deadline, next_request(shared, &mut peer)).await {
            Ok(Message::SessionOpen(open)) => open,
            Ok(Message::Join(Join {
                credential: Credential::Resume(token),
                label,
            })) => {
                peer.info.label = label;
                match resume(shared, peer, remote, Side::Consumer, &token).await {
                    Ok(()) => return Ok(()),
                    Err(Refused::Again(back)) => {
                        peer = back;
                        continue;
                    }
                    Err(Refused::Stop(back, stop)) => return Err((back, stop)),
                }
            }
            Ok(other) => {
                let message = format!("expected SESSION_OPEN, got {}", other.name());
                if let Err(stop) =
                    send_error(shared, &mut peer, ErrorCode::UnexpectedMessage, message).await
                {
                    return Err((peer, stop));
                }
                continue;
            }
            Err(stop) => return Err((peer, stop)),
        };
        peer.info.label = open.label;
        let (tx, rx) = mpsc::channel(1);
        let opened = {
            let mut random = shared.random();
            shared
                .table()
                .open(Instant::now(), peer.info.clone(), tx, &mut random)
        };
        match opened {
            Ok(opened) => break (opened, rx),
            Err(e) => {
                if let Err(stop) = send_error(shared, &mut peer, e.code(), e.to_string()).await {
                    return Err((peer, stop));
                }
            }
        }
    };
    let id = opened.id;
    let created = Message::SessionCreated(SessionCreated {
        code: opened.code,
        token: opened.token,
        expires_ms: u32::try_from(shared.table().config().code_ttl.as_millis()).unwrap_or(u32::MAX),
    });
    if let Err(e) = write_message(&mut peer.send, &created, &shared.limits).await {
        shared.table().remove(id);
        return Err((peer, e.into()));
    }
    shared.emit(RelayEvent::Opened {
        session: id,
        label: peer.info.label.clone(),
        remote,
    });
    match wait_for_agent(shared, &mut peer, id, opened.expires_at, &mut rx).await {
        Waited::Paired {
            agent,
            pending,
            event_id,
        } => {
            live::run_session(shared.clone(), (id, event_id), peer, *agent, pending).await;
            Ok(())
        }
        Waited::Ended { reason, by, stop } => {
            shared.table().remove(id);
            // An agent may have joined or invited in the same instant: it is told the session
            // ended (a joined agent) or its invitation was declined (an inviting one).
            rx.close();
            while let Ok(arrival) = rx.try_recv() {
                match arrival {
                    Arrival::Joined(agent) => {
                        let mut agent = *agent;
                        let end = Message::End(End { reason });
                        let _ = write_message(&mut agent.send, &end, &shared.limits).await;
                        let notice = refusal(ErrorCode::SessionEnded, "the consumer left");
                        tokio::spawn(finish_owned(shared.clone(), agent, notice));
                    }
                    Arrival::Invited(pending) => {
                        invite::unanswered(shared, *pending, None, EndReason::Declined).await;
                    }
                    Arrival::Resumed(_, peer) => {
                        let gone = refusal(ErrorCode::SessionEnded, "the session ended");
                        tokio::spawn(finish_owned(shared.clone(), *peer, gone));
                    }
                }
            }
            shared.emit(ended(id, &reason_name(reason), by, None));
            Err((peer, stop))
        }
    }
}

enum Waited {
    Paired {
        agent: Box<Peer>,
        pending: Vec<RawFrame>,
        /// The id the session's events carry: the waiting session's, or the accepted
        /// invitation's.
        event_id: SessionId,
    },
    Ended {
        reason: EndReason,
        by: Option<Side>,
        stop: Stop,
    },
}

/// Most control bytes a consumer may send before an agent joins; they are delivered after
/// `JOINED`.
const PENDING_BUDGET: usize = 256 * 1024;

/// Waits for an agent to join the consumer's session, or for the customer to answer an agent's
/// invitation (spec §7.7–§7.10), answering the consumer's hop messages and queueing its
/// end-to-end ones for the agent. A frame the relay answers (consumes or refuses) is recognised
/// first: one that does not decode loses the session (spec §4.5).
async fn wait_for_agent(
    shared: &Arc<Shared>,
    peer: &mut Peer,
    id: SessionId,
    expires_at: Instant,
    rx: &mut mpsc::Receiver<Arrival>,
) -> Waited {
    let expiry = sleep_until(expires_at.into());
    tokio::pin!(expiry);
    let mut expiry_armed = true;
    let mut pending = Vec::new();
    let mut pending_bytes = 0usize;
    let mut invited: Option<Box<invite::Pending>> = None;
    let lost = |stop| Waited::Ended {
        reason: EndReason::ConnectionLost,
        by: Some(Side::Consumer),
        stop,
    };
    loop {
        let frame = tokio::select! {
            arrival = rx.recv() => match arrival {
                Some(Arrival::Joined(agent)) => {
                    return Waited::Paired { agent, pending, event_id: id };
                }
                Some(Arrival::Invited(inv)) => {
                    match invite::deliver(shared, peer, inv, invited.is_some()).await {
                        Ok(Some(inv)) => invited = Some(inv),
                        Ok(None) => {}
                        Err(stop) => return lost(stop),
                    }
                    continue;
                }
                // Resuming peers go to live sessions, never here.
                Some(Arrival::Resumed(_, back)) => {
                    let gone = refusal(ErrorCode::SessionNotFound, "no live session");
                    tokio::spawn(finish_owned(shared.clone(), *back, gone));
                    continue;
                }
                // The table dropped the waiter: the code expired in a sweep.
                None => return expired(peer, shared).await,
            },
            _ = &mut expiry, if expiry_armed && invited.is_none() => {
                if shared.table().expire(id, Instant::now()) {
                    return expired(peer, shared).await;
                }
                // An agent joined at the last moment: its link is on the way through `rx`.
                expiry_armed = false;
                continue;
            }
            event = invite::next_event(&mut invited) => {
                // `next_event` only returns while an invitation is pending.
                let Some(inv) = invited.take() else { continue };
                match invite::on_agent_event(shared, peer, id, inv, event).await {
                    Ok(invite::Still::Pending(inv)) => invited = Some(inv),
                    Ok(invite::Still::Closed) => {}
                    Err(stop) => return lost(stop),
                }
                continue;
            }
            frame = peer.recv.next_raw() => match frame {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    invite::consumer_gone(shared, invited.take()).await;
                    return lost(Stop::Gone);
                }
                Err(e) => {
                    invite::consumer_gone(shared, invited.take()).await;
                    return lost(e.into());
                }
            },
            _ = shared.shutting_down() => {
                invite::consumer_gone(shared, invited.take()).await;
                return Waited::Ended {
                    reason: EndReason::ConnectionLost,
                    by: None,
                    stop: refusal(ErrorCode::SessionEnded, "relay shutting down"),
                };
            }
        };
        if matches!(frame.ty, FrameType::ACCEPT | FrameType::DECLINE) {
            match invite::on_answer(shared, peer, id, invited.take(), frame).await {
                Ok(invite::Answered::Accepted { agent, event_id }) => {
                    return Waited::Paired {
                        agent,
                        pending,
                        event_id,
                    };
                }
                Ok(invite::Answered::Still(inv)) => invited = inv,
                Err(stop) => return lost(stop),
            }
            continue;
        }
        let reply = match state::classify_waiting(frame.ty) {
            ControlAction::Forward => {
                pending_bytes += frame.body.len();
                if pending_bytes > PENDING_BUDGET {
                    invite::consumer_gone(shared, invited.take()).await;
                    return lost(refusal(
                        ErrorCode::LimitExceeded,
                        "too much control traffic before an agent joined",
                    ));
                }
                pending.push(frame);
                None
            }
            ControlAction::End
            | ControlAction::Close
            | ControlAction::Ping
            | ControlAction::Ignore => match state::consume(&frame, &shared.limits) {
                Ok(Consumed::Ping(pong)) => Some(pong),
                Ok(Consumed::Ignored) => None,
                Ok(ending @ (Consumed::End(_) | Consumed::Close(_))) => {
                    // spec §13.1: an END while an invitation is pending declines it.
                    if let Some(inv) = invited.take() {
                        invite::unanswered(shared, *inv, Some(Side::Consumer), EndReason::Declined)
                            .await;
                    }
                    let stop = if matches!(ending, Consumed::End(_)) {
                        refusal(ErrorCode::NoError, "session ended")
                    } else {
                        Stop::Gone
                    };
                    return Waited::Ended {
                        reason: EndReason::EndedByConsumer,
                        by: Some(Side::Consumer),
                        stop,
                    };
                }
                Err(e) => {
                    invite::consumer_gone(shared, invited.take()).await;
                    return lost(FramedError::from(e).into());
                }
            },
            ControlAction::Refuse(code) => {
                let message = format!("{} is not allowed now", frame.ty);
                match state::refuse(&frame, &shared.limits, code, &message) {
                    Ok(error) => Some(error),
                    Err(e) => {
                        invite::consumer_gone(shared, invited.take()).await;
                        return lost(FramedError::from(e).into());
                    }
                }
            }
            ControlAction::Violation => {
                invite::consumer_gone(shared, invited.take()).await;
                return lost(refusal(
                    ErrorCode::UnexpectedMessage,
                    format!("{} is not allowed after SESSION_OPEN", frame.ty),
                ));
            }
        };
        if let Some(reply) = reply
            && let Err(e) = write_raw(&mut peer.send, &reply).await
        {
            invite::consumer_gone(shared, invited.take()).await;
            return lost(e.into());
        }
        if !expiry_armed && invited.is_none() && shared.table().expire(id, Instant::now()) {
            return expired(peer, shared).await;
        }
    }
}

/// The consumer's code expired unused: it gets `END Expired` (spec §7.4, §7.13); the caller's
/// refusal adds the `CLOSE`.
async fn expired(peer: &mut Peer, shared: &Shared) -> Waited {
    let end = Message::End(End {
        reason: EndReason::Expired,
    });
    let _ = write_message(&mut peer.send, &end, &shared.limits).await;
    Waited::Ended {
        reason: EndReason::Expired,
        by: None,
        stop: refusal(ErrorCode::SessionEnded, "the session code expired unused"),
    }
}

/// Serves an agent until it joins a session (spec §7.5): a wrong code or a busy session is
/// answered with `ERROR` and the agent may try again; too many failures from its address are
/// answered with `ERROR RateLimited` and the connection is closed.
async fn serve_agent(
    shared: &Arc<Shared>,
    mut peer: Peer,
    remote: SocketAddr,
) -> Result<(), (Peer, Stop)> {
    loop {
        let deadline = tokio::time::Instant::now() + shared.handshake_timeout;
        let join = match handshake_step(shared, deadline, next_request(shared, &mut peer)).await {
            Ok(Message::Join(Join {
                credential: Credential::Resume(token),
                label,
            })) => {
                peer.info.label = label;
                match resume(shared, peer, remote, Side::Agent, &token).await {
                    Ok(()) => return Ok(()),
                    Err(Refused::Again(back)) => {
                        peer = back;
                        continue;
                    }
                    Err(Refused::Stop(back, stop)) => return Err((back, stop)),
                }
            }
            Ok(Message::Join(join)) => join,
            Ok(Message::Invite(inv)) => match invite::place(shared, peer, remote, inv).await {
                Ok(()) => return Ok(()),
                Err(Refused::Again(back)) => {
                    peer = back;
                    continue;
                }
                Err(Refused::Stop(back, stop)) => return Err((back, stop)),
            },
            Ok(other) => {
                let message = format!("expected JOIN or INVITE, got {}", other.name());
                if let Err(stop) =
                    send_error(shared, &mut peer, ErrorCode::UnexpectedMessage, message).await
                {
                    return Err((peer, stop));
                }
                continue;
            }
            Err(stop) => return Err((peer, stop)),
        };
        peer.info.label = join.label;
        let joined = shared
            .table()
            .join(Instant::now(), remote.ip(), &join.credential);
        let refused = match joined {
            Ok(pairing) => {
                let id = pairing.id;
                // The consumer's task runs the session from here on.
                match pairing.waiter.try_send(Arrival::Joined(Box::new(peer))) {
                    Ok(()) => return Ok(()),
                    Err(
                        mpsc::error::TrySendError::Closed(back)
                        | mpsc::error::TrySendError::Full(back),
                    ) => {
                        // The consumer went away between its last check and this join.
                        // The arrival that comes back is the one sent.
                        let Arrival::Joined(back) = back else {
                            return Ok(());
                        };
                        peer = *back;
                        shared.table().remove(id);
                        JoinRefusal::NotFound
                    }
                }
            }
            Err(refused) => refused,
        };
        match refuse(shared, peer, remote, refused).await {
            Refused::Again(back) => peer = back,
            Refused::Stop(back, stop) => return Err((back, stop)),
        }
    }
}

/// A peer whose `JOIN`, `INVITE` or resumption was refused.
enum Refused {
    /// Told with an `ERROR`; the peer may try again on its connection.
    Again(Peer),
    /// The peer is let go for this reason.
    Stop(Peer, Stop),
}

/// Tells `peer` from `remote` that its `JOIN`, `INVITE` or resumption was refused (spec §7.5):
/// the `join_refused` event, an `ERROR`, and after too many failures (`RateLimited`) the stop.
async fn refuse(
    shared: &Shared,
    mut peer: Peer,
    remote: SocketAddr,
    refused: JoinRefusal,
) -> Refused {
    shared.emit(RelayEvent::JoinRefused {
        reason: refused.name().to_owned(),
        remote,
    });
    if let Err(stop) = send_error(shared, &mut peer, refused.code(), refused.to_string()).await {
        return Refused::Stop(peer, stop);
    }
    if refused == JoinRefusal::RateLimited {
        return Refused::Stop(peer, refusal(refused.code(), refused.to_string()));
    }
    Refused::Again(peer)
}

/// A peer connected as `side` presents its resume token (spec §3.5): on success it is handed
/// to its live session, which answers `JOINED`; otherwise it is told `ERROR`
/// (`SessionNotFound`, or `RateLimited` and closed) like an agent with a wrong code.
async fn resume(
    shared: &Arc<Shared>,
    mut peer: Peer,
    remote: SocketAddr,
    side: Side,
    token: &str,
) -> Result<(), Refused> {
    let found = shared
        .table()
        .resume(Instant::now(), remote.ip(), side, token);
    let refused = match found {
        Ok((_, session)) => match session.try_send(Arrival::Resumed(side, Box::new(peer))) {
            Ok(()) => return Ok(()),
            Err(
                mpsc::error::TrySendError::Closed(back) | mpsc::error::TrySendError::Full(back),
            ) => {
                // The session ended meanwhile, or another resumption is being seated.
                let Arrival::Resumed(_, back) = back else {
                    return Ok(());
                };
                peer = *back;
                JoinRefusal::NotFound
            }
        },
        Err(refused) => refused,
    };
    Err(refuse(shared, peer, remote, refused).await)
}

/// Tells a peer why it is being let go (if it can still hear) and closes its connection once
/// it has closed its side or the grace period is over.
async fn finish(shared: &Shared, mut peer: Peer, stop: Stop) {
    match stop {
        Stop::Refuse(report) => {
            tracing::debug!(code = ?report.code, message = %report.message, "closing peer");
            let code = quic_code(report.code);
            let reason = report.message.clone();
            let grace = grace(shared, &peer.conn);
            let _ = timeout(
                grace,
                write_message(&mut peer.send, &Message::Close(report), &shared.limits),
            )
            .await;
            let _ = peer.send.finish();
            let _ = timeout(grace, peer.conn.closed()).await;
            peer.conn.close(code, truncate(reason.as_bytes()));
        }
        Stop::Gone => peer.conn.close(VarInt::from_u32(0), b""),
    }
}

async fn finish_owned(shared: Arc<Shared>, peer: Peer, stop: Stop) {
    finish(&shared, peer, stop).await;
}

/// The name of an `END` reason for events (spec §13.5), or `unknown(n)`.
fn reason_name(reason: EndReason) -> String {
    match tandem_engine::session::reason_name(reason) {
        "unknown" => format!("unknown({})", u32::from(reason)),
        name => name.to_owned(),
    }
}

/// QUIC close reasons must fit in a packet; keep them short.
fn truncate(reason: &[u8]) -> &[u8] {
    &reason[..reason.len().min(200)]
}

fn ended(session: SessionId, reason: &str, by: Option<Side>, detail: Option<String>) -> RelayEvent {
    RelayEvent::Ended {
        session,
        reason: reason.to_owned(),
        by: by.map(|s| s.name().to_owned()),
        detail,
    }
}

fn frame_bytes(msg: &Message, limits: &Limits) -> Bytes {
    // Messages the relay builds itself are small and always encodable; should one ever not be,
    // an empty chunk writes nothing rather than a broken frame.
    Bytes::from(tandem_protocol::frame::to_frame(msg, limits).unwrap_or_default())
}

/// The single writer of a control stream: frames from the forwarders and the relay's own
/// messages go through one queue, so a frame is never interleaved with another. When the queue
/// closes, the stream is finished, and the task ends once the peer has acknowledged all of it
/// (or stopped it, or the connection went away): a teardown message is then known delivered.
fn spawn_writer(mut send: SendStream) -> (mpsc::Sender<Bytes>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(64);
    let task = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if bytes.is_empty() {
                continue;
            }
            if send.write_chunk(bytes).await.is_err() {
                return;
            }
        }
        if send.finish().is_ok() {
            let _ = send.stopped().await;
        }
    });
    (tx, task)
}

/// Sends the teardown messages, finishes the control stream, waits (bounded) for the peer to
/// acknowledge them and to close, then closes the connection with the code of the last `CLOSE`
/// sent (`SessionEnded` after an `END`).
async fn close_after(
    shared: &Shared,
    conn: Connection,
    tx: mpsc::Sender<Bytes>,
    writer: tokio::task::JoinHandle<()>,
    messages: &[Message],
) {
    let mut code = ErrorCode::SessionEnded;
    for msg in messages {
        if let Message::Close(report) = msg {
            code = report.code;
        }
        let _ = tx.send(frame_bytes(msg, &shared.limits)).await;
    }
    drop(tx);
    let grace = grace(shared, &conn);
    let _ = timeout(grace, writer).await;
    if !messages.is_empty() {
        let _ = timeout(grace, conn.closed()).await;
    }
    conn.close(quic_code(code), b"session ended");
}

/// A session's part of the resource cache (spec §14.7): the shared cache and the uplink that
/// serves it to this session's agent.
#[derive(Clone)]
struct SessionResources {
    cache: Arc<SharedCache>,
    uplink: Arc<Uplink>,
    /// The consumer's blobs on their way to the agent, forwarded and not yet acknowledged.
    transit: Arc<Transit>,
}

impl SessionResources {
    /// Takes the agent's `WANT` or `WANT_AGAIN` (`message`): answers what the cache holds on
    /// the agent's resource streams and returns the frame of the rest, of the same type, to
    /// forward to the consumer (`None`: nothing left). A `WANT` first loses the addresses
    /// still on their way on a stream forwarded from the consumer: it crossed them (spec
    /// §14.4). A `WANT_AGAIN` is a retry after a corrupted copy and is answered in full.
    async fn answer(
        &self,
        session: SessionId,
        message: &Message,
        limits: &Limits,
    ) -> Option<Bytes> {
        let want = self.transit.answerable(message)?;
        let again = matches!(message, Message::WantAgain(_));
        let (blobs, rest) = self.cache.answer(&want);
        if !blobs.is_empty() {
            tracing::debug!(
                session,
                blobs = blobs.len(),
                again,
                "answered from the cache"
            );
            self.uplink.queue(blobs).await;
        }
        let rest = rest?;
        let forward = if again {
            Message::WantAgain(rest)
        } else {
            Message::Want(rest)
        };
        Some(frame_bytes(&forward, limits))
    }
}

/// Forwards `side`'s end-to-end control frames to the other side's writer (`to_other`) and
/// handles its hop messages (spec §3.2): answers `PING`, refuses requests with `ERROR` on
/// `to_self`, and reports `END`, `CLOSE` and violations as the session's outcome. Bodies are
/// never decoded, except those of the frames the relay consumes (`PING`, `PONG`, `ERROR`,
/// `END`, `CLOSE`: one that does not decode is a violation, spec §4.5, see [`consumed`]) or
/// refuses ([`state::refuse`]: likewise), and,
/// with `resources`, the agent's `WANT` and `WANT_AGAIN` ([`SessionResources::answer`]): a
/// `WANT` loses the addresses still on their way on a forwarded stream (it crossed them, spec
/// §14.4), the cache answers what it holds on resource streams to the agent, and only the rest
/// goes on to the consumer (one left empty is not forwarded, spec §7.19, §7.37).
async fn forward_control(
    (shared, session): (Arc<Shared>, SessionId),
    side: Side,
    recv: Arc<tokio::sync::Mutex<FrameRecv>>,
    (to_self, to_other): (mpsc::Sender<Bytes>, mpsc::Sender<Bytes>),
    resources: Option<SessionResources>,
    outcome: mpsc::Sender<Outcome>,
) {
    // Held for the task's life; the stream outlives the task (relay/live.rs), and reading it
    // is cancel-safe, so stopping this task loses no frame.
    let mut recv = recv.lock().await;
    let result = loop {
        let frame = match recv.next_raw().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break Outcome::Lost(side),
            Err(e) => break outcome_of(side, e),
        };
        let (to, bytes) = match state::classify_control(side, frame.ty) {
            ControlAction::Forward
                if matches!(frame.ty, FrameType::WANT | FrameType::WANT_AGAIN)
                    && resources.is_some() =>
            {
                let message = match frame.decode(recv.limits()) {
                    Ok(message) => message,
                    Err(e) => break outcome_of(side, e.into()),
                };
                let Some(r) = &resources else { continue };
                match r.answer(session, &message, recv.limits()).await {
                    Some(bytes) => (&to_other, bytes),
                    None => continue,
                }
            }
            ControlAction::Forward => {
                if let Some(seen) = state::observe(side, &frame, recv.limits()) {
                    shared.emit(match seen {
                        Observed::Paused => RelayEvent::Paused { session },
                        Observed::Resumed => RelayEvent::Resumed { session },
                        Observed::ModeChanged(mode) => RelayEvent::ModeChanged {
                            session,
                            mode: tandem_engine::session::mode_name(mode).to_owned(),
                        },
                    });
                }
                (&to_other, Bytes::from(frame.to_bytes()))
            }
            ControlAction::End
            | ControlAction::Close
            | ControlAction::Ping
            | ControlAction::Ignore => match consumed(side, &frame, recv.limits()) {
                Ok(Some(pong)) => (&to_self, Bytes::from(pong.to_bytes())),
                Ok(None) => continue,
                Err(outcome) => break outcome,
            },
            ControlAction::Refuse(code) => {
                let message = format!("{} is not allowed in a live session", frame.ty);
                match state::refuse(&frame, recv.limits(), code, &message) {
                    Ok(error) => (&to_self, Bytes::from(error.to_bytes())),
                    Err(e) => break outcome_of(side, e.into()),
                }
            }
            ControlAction::Violation => break violation(side, frame.ty),
        };
        if to.send(bytes).await.is_err() {
            // That side's writer stopped: its connection is going away, and its watcher
            // reports that.
            return;
        }
    };
    let _ = outcome.try_send(result);
}

/// What a session does with a frame from `side` that the relay consumes ([`ControlAction::End`],
/// [`ControlAction::Close`], [`ControlAction::Ping`], [`ControlAction::Ignore`]), once
/// [`state::consume`] recognised it (spec §4.5): `Ok` with the `PONG` to send back, if any, or
/// `Err` with the session's outcome. `END` ends the session with its reason; a side that says
/// `CLOSE` leaves on purpose, whatever the code: not a loss to wait out (spec §3.5). A frame
/// that does not decode is a violation, `CLOSE` included.
fn consumed(side: Side, frame: &RawFrame, limits: &Limits) -> Result<Option<RawFrame>, Outcome> {
    match state::consume(frame, limits) {
        Ok(Consumed::Ping(pong)) => Ok(Some(pong)),
        Ok(Consumed::Ignored) => Ok(None),
        Ok(Consumed::End(reason)) => Err(Outcome::Ended { side, reason }),
        Ok(Consumed::Close(report)) => Err(Outcome::Ended {
            side,
            reason: if report.code == ErrorCode::NoError {
                side.ended_by()
            } else {
                EndReason::ConnectionLost
            },
        }),
        Err(e) => Err(outcome_of(side, e.into())),
    }
}

/// The outcome when `side` sends a frame of type `ty` that is a violation in a session
/// ([`ControlAction::Violation`]).
fn violation(side: Side, ty: FrameType) -> Outcome {
    Outcome::Violation {
        side,
        code: ErrorCode::UnexpectedMessage,
        detail: format!("{ty} is not allowed in a session"),
    }
}

fn outcome_of(side: Side, e: FramedError) -> Outcome {
    match e.close_code() {
        Some(code) => Outcome::Violation {
            side,
            code,
            detail: e.to_string(),
        },
        None => Outcome::Lost(side),
    }
}

/// What a relay does with the consumer's streams of a session with `RESOURCES`: resource
/// streams feed the shared cache, and their blobs are in the session's transit until the agent
/// acknowledged them.
type CacheFeed = (Arc<SharedCache>, Arc<Transit>);

/// Every unidirectional stream `side` opens becomes a new one to the other side, forwarded
/// frame by frame. With `cache` (the consumer's streams of a session with `RESOURCES`), each
/// stream is told apart by its first frame: resource streams go on at
/// [`RESOURCE_PRIORITY`](crate::resources::RESOURCE_PRIORITY) and feed the cache, DOM streams
/// at [`DOM_PRIORITY`] (spec §3.2, §14.5, §14.7). The per-stream tasks live in a set owned by
/// this task, so aborting it stops them all.
async fn forward_uni_streams(
    side: Side,
    from: Connection,
    (to, meter): (Connection, SendMeter),
    (limits, cache): (Limits, Option<CacheFeed>),
    outcome: mpsc::Sender<Outcome>,
) {
    let mut streams = JoinSet::new();
    loop {
        let recv = tokio::select! {
            r = from.accept_uni() => match r {
                Ok(recv) => recv,
                Err(_) => return,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => continue,
        };
        let send = match to.open_uni().await {
            Ok(send) => send,
            Err(_) => return,
        };
        let outcome = outcome.clone();
        let cache = cache.clone();
        // Without a cache every stream is a DOM stream; with one, its first frame tells.
        let meter = Some(meter.clone().with_priority(DOM_PRIORITY));
        streams.spawn(async move {
            let forwarded = match cache {
                Some(feed) => {
                    forward_observed(recv, send, limits, feed, (DOM_PRIORITY, meter)).await
                }
                None => forward_stream(recv, send, limits, meter).await,
            };
            match forwarded {
                Ok(end) => tracing::debug!(side = side.name(), ?end, "stream forwarded"),
                Err(e) if e.is_protocol() => {
                    let _ = outcome.try_send(outcome_of(side, e));
                }
                Err(e) => {
                    tracing::debug!(side = side.name(), error = %e, "stream forwarding stopped")
                }
            }
        });
    }
}

/// Datagrams pass as they are, after a check that each holds exactly one frame (spec §3.2).
/// When the other side's send buffer is full quinn drops the oldest queued one, so the latest
/// position wins. When the other side cannot take datagrams (not negotiated, or this one is too
/// large for its path), the frame goes on its control stream instead (spec §3.2).
async fn forward_datagrams(
    side: Side,
    from: Connection,
    to: Connection,
    to_control: mpsc::Sender<Bytes>,
    limits: Limits,
    outcome: mpsc::Sender<Outcome>,
) {
    while let Ok(datagram) = from.read_datagram().await {
        if let Err(e) = crate::framed::check_datagram(&datagram, &limits) {
            let _ = outcome.try_send(Outcome::Violation {
                side,
                code: e.code(),
                detail: format!("bad datagram: {e}"),
            });
            return;
        }
        match to.send_datagram(datagram.clone()) {
            Ok(()) => {}
            Err(quinn::SendDatagramError::ConnectionLost(_)) => return,
            Err(e) => {
                tracing::trace!(error = %e, "datagram goes by the control stream");
                if to_control.send(datagram).await.is_err() {
                    return;
                }
            }
        }
    }
}
