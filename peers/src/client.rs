//! The client side of the relay handshake (spec §7.1–§7.6): a [`ControlChannel`] opens the
//! control stream, says `HELLO`, reads `WELCOME`, then opens a session (consumer) or joins one
//! (agent) and waits for `JOINED`.
//!
//! ```no_run
//! # async fn demo(relay: std::net::SocketAddr, pin: tandem_peers::transport::Fingerprint)
//! # -> Result<(), tandem_peers::client::ClientError> {
//! use tandem_peers::client::{self, ControlChannel};
//! use tandem_protocol::message::{Credential, Role};
//!
//! // Consumer: open a session, read the code out, wait for the agent.
//! let conn = client::connect(relay, pin, Role::Consumer).await?;
//! let mut consumer = ControlChannel::open(conn, client::hello(Role::Consumer)).await?;
//! let created = consumer.open_session("Customer").await?;
//! println!("code: {}", created.code);
//! let agent = consumer.wait_joined().await?;
//! let mut dom = consumer.connection().open_uni().await.map_err(client::ClientError::from_connection)?;
//! // ... write SNAPSHOT / PATCH frames to `dom` with framed::write_message ...
//!
//! // Agent (elsewhere): join by code, then accept the DOM stream.
//! let conn = client::connect(relay, pin, Role::Agent).await?;
//! let mut ctl = ControlChannel::open(conn, client::hello(Role::Agent)).await?;
//! let consumer_info = ctl.join(Credential::Code(created.code), "Alice").await?;
//! let dom = ctl.connection().accept_uni().await.map_err(client::ClientError::from_connection)?;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use quinn::{Connection, Endpoint, SendStream, VarInt};
use tandem_protocol::message::{
    Capabilities, Credential, End, EndReason, ErrorReport, Hello, InvitationRef, Invite, Join,
    Joined, Ping, Role, SessionCreated, SessionOpen, Welcome,
};
use tandem_protocol::{DecodeError, ErrorCode, Limits, Message, PROTOCOL_VERSION, RawFrame};

use crate::framed::{FrameRecv, FramedError, quic_code, write_message, write_raw};
use crate::session::CLOSE_GRACE;
use crate::transport::{self, Fingerprint, TransportError};

/// The software string clients send in `HELLO`.
pub const SOFTWARE: &str = concat!("tandem/", env!("CARGO_PKG_VERSION"));

/// How long [`ControlChannel::end`] waits for the relay's `CLOSE`.
const END_WAIT: Duration = Duration::from_secs(5);

/// Round trips the client waits for `WELCOME` before it nudges the relay with a `PING` (see
/// [`ControlChannel`]'s handshake): the answer normally comes after one.
pub const NUDGE_ROUND_TRIPS: u32 = 2;

/// The shortest wait before a nudge, for paths whose round trip is a few milliseconds.
pub const MIN_NUDGE_WAIT: Duration = Duration::from_millis(200);

/// Most nudges sent while waiting for `WELCOME`; QUIC's own recovery goes on after them.
pub const MAX_NUDGES: u64 = 16;

/// A failure of the client handshake or of the control stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The QUIC connection could not be set up (including a relay that fails the pin).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The relay sent a bad frame, or the link went away.
    #[error(transparent)]
    Framed(#[from] FramedError),
    /// The relay refused the request with an `ERROR` (spec §7.33), such as `SessionNotFound`,
    /// `SessionBusy` or `RateLimited`; the channel stays usable to try again.
    #[error("relay refused: {code:?}: {message}")]
    Refused {
        /// The error code.
        code: ErrorCode,
        /// The relay's explanation.
        message: String,
    },
    /// The relay closed the connection with this code (spec §7.34).
    #[error("relay closed the connection: {code:?}: {message}")]
    Closed {
        /// The close code, such as `VersionMismatch` or `RateLimited`.
        code: ErrorCode,
        /// The relay's explanation.
        message: String,
    },
    /// The session ended (spec §7.13).
    #[error("session ended: {0:?}")]
    Ended(EndReason),
    /// The relay sent a message that has no place at this point of the handshake.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// What the client waited for.
        expected: &'static str,
        /// The message that came instead.
        got: &'static str,
    },
    /// The relay finished the control stream without a `CLOSE`.
    #[error("the relay finished the control stream")]
    StreamEnded,
    /// The customer declined the invitation (spec §7.9); the channel stays usable.
    #[error("the customer declined the invitation")]
    Declined,
    /// The relay's `WELCOME` named a version outside the range of this side's `HELLO`; the
    /// client closed the connection with `VersionMismatch` (spec §7.2).
    #[error("the relay chose version {version}, outside {min}..={max}")]
    VersionMismatch {
        /// The version the `WELCOME` named.
        version: u32,
        /// The lowest version the `HELLO` offered.
        min: u32,
        /// The highest version the `HELLO` offered.
        max: u32,
    },
}

impl ClientError {
    /// Wraps a connection error from opening or accepting a stream.
    pub fn from_connection(e: quinn::ConnectionError) -> Self {
        ClientError::Framed(FramedError::Connection(e))
    }

    /// The relay's error or close code, when the relay refused the request or closed.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } | ClientError::Closed { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The capabilities this crate's peers implement and offer in `HELLO` (spec §10.3): compressed
/// DOM streams (spec §4.6) with coded patches (codec 0x02, spec §4.6.5, §4.7), datagrams, and
/// resuming a session on a new connection (spec §3.5; a channel resumes only when made
/// [`ControlChannel::resumable`]).
pub const CAPABILITIES: Capabilities = Capabilities(
    Capabilities::COMPRESSION.0
        | Capabilities::CODED_PATCHES.0
        | Capabilities::DATAGRAMS.0
        | Capabilities::RESUME.0,
);

/// [`CAPABILITIES`] and `RESOURCES` (spec §10.3, §14): what the reference peers offer when
/// resources travel by content address (`--resources`).
pub const CAPABILITIES_WITH_RESOURCES: Capabilities =
    Capabilities(CAPABILITIES.0 | Capabilities::RESOURCES.0);

/// A `HELLO` for `role` speaking exactly this crate's protocol version, offering
/// [`CAPABILITIES`], with the reference peers' platform ([`crate::presence::platform`] with
/// the default viewport). Set the fields of the result to say more (clear `COMPRESSION` from
/// `capabilities` to keep the DOM stream uncompressed, `CODED_PATCHES` to keep it on codec
/// 0x01).
pub fn hello(role: Role) -> Hello {
    Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        role,
        capabilities: CAPABILITIES,
        platform: crate::presence::platform(crate::presence::DEFAULT_VIEWPORT),
        software: SOFTWARE.to_owned(),
    }
}

/// Makes a client endpoint that pins `pin` and connects to the relay at `relay`, as a client in
/// `role` (whose session tickets it uses and keeps, [`transport::client_config`]). The
/// endpoint lives as long as the connection.
pub async fn connect(
    relay: SocketAddr,
    pin: Fingerprint,
    role: Role,
) -> Result<Connection, ClientError> {
    let endpoint: Endpoint =
        transport::client_endpoint_on(transport::bind_address_for(relay), pin, role)?;
    Ok(transport::connect(&endpoint, relay).await?)
}

/// The control stream to the relay (DESIGN.md "Transport mapping": one bidirectional stream for
/// hello, session lifecycle, mode, acks and errors).
///
/// Call order: [`ControlChannel::open`], then [`ControlChannel::open_session`] and
/// [`ControlChannel::wait_joined`] (consumer) or [`ControlChannel::join`] (agent); after that
/// [`ControlChannel::send`] and [`ControlChannel::recv`] carry the session's control messages,
/// and [`ControlChannel::connection`] opens or accepts the data streams.
#[derive(Debug)]
pub struct ControlChannel {
    conn: Connection,
    send: SendStream,
    recv: FrameRecv,
    limits: Limits,
    role: Role,
    welcome: Welcome,
    joined: Option<Joined>,
    hello: Hello,
    reconnect: Option<Reconnect>,
    /// The label of the last `SESSION_OPEN` or `JOIN`, for a resuming `JOIN`.
    label: String,
    /// Whether the relay took this connection's `HELLO` (and `JOIN`) as 0-RTT data (spec §3.5).
    zero_rtt: bool,
}

/// How to reach the relay again when the connection is lost (spec §3.5): its address, the
/// certificate pin and the `HELLO` to send. Made by [`ControlChannel::resumable`].
#[derive(Debug, Clone)]
pub struct Reconnect {
    relay: SocketAddr,
    pin: Fingerprint,
    hello: Hello,
}

/// How long a peer keeps trying to resume before it gives up (the reference relay keeps a
/// session this long, spec §3.5).
pub const RESUME_WINDOW: Duration = Duration::from_secs(60);

impl Reconnect {
    /// Reconnection to `relay` (pinned to `pin`) saying `hello`.
    pub fn new(relay: SocketAddr, pin: Fingerprint, hello: Hello) -> Self {
        Reconnect { relay, pin, hello }
    }

    /// The relay's address.
    pub fn relay(&self) -> SocketAddr {
        self.relay
    }

    /// One attempt: a new connection that says `HELLO` and `JOIN` with the resume token
    /// `token` — in 0-RTT data when a session ticket from an earlier connection allows it
    /// (spec §3.5). Returns the channel (itself resumable) and the relay's `JOINED`, whose
    /// `resume_token` is the one to use next time. A spent or unknown token is
    /// [`ClientError::Refused`] `SessionNotFound`.
    pub async fn resume(
        &self,
        token: &str,
        label: &str,
    ) -> Result<(ControlChannel, Joined), ClientError> {
        self.resume_after(token, label, None).await
    }

    /// [`Reconnect::resume`] on a path whose round trip `rtt` the lost connection measured:
    /// the new connection starts from it (see [`transport::client_config_for_rtt`]).
    pub async fn resume_after(
        &self,
        token: &str,
        label: &str,
        rtt: Option<Duration>,
    ) -> Result<(ControlChannel, Joined), ClientError> {
        let join = ControlChannel::join_message(Credential::Resume(token.to_owned()), label);
        let channel = ControlChannel::connect_pipelined(
            self.relay,
            self.pin,
            self.hello.clone(),
            Some(&join),
            Limits::DEFAULT,
            rtt,
        )
        .await?;
        let (mut channel, joined) = channel.joined_as(label).await?;
        channel.reconnect = Some(self.clone());
        Ok((channel, joined))
    }
}

impl ControlChannel {
    /// Opens the control stream on `conn`, sends `hello` and waits for `WELCOME`, with the
    /// default limits.
    pub async fn open(conn: Connection, hello: Hello) -> Result<Self, ClientError> {
        Self::open_with_limits(conn, hello, Limits::DEFAULT).await
    }

    /// Like [`ControlChannel::open`], enforcing `limits` on what the relay sends.
    pub async fn open_with_limits(
        conn: Connection,
        hello: Hello,
        limits: Limits,
    ) -> Result<Self, ClientError> {
        Self::open_pipelined(conn, hello, None, limits).await
    }

    /// Agent: opens the control stream and joins with `credential` in one round trip (spec
    /// §7.1): `HELLO` and `JOIN` leave together, then `WELCOME` and `JOINED` come back.
    /// Returns the channel and what the relay says about the consumer; refusals are as for
    /// [`ControlChannel::join`], and the channel stays usable after one.
    pub async fn open_and_join(
        conn: Connection,
        hello: Hello,
        credential: Credential,
        label: &str,
    ) -> Result<(Self, Joined), ClientError> {
        let join = Self::join_message(credential, label);
        Self::open_pipelined(conn, hello, Some(&join), Limits::DEFAULT)
            .await?
            .joined_as(label)
            .await
    }

    /// Agent: connects to the relay at `relay` (pinned to `pin`) and joins with `credential`:
    /// `HELLO` and `JOIN` leave together (spec §7.1), in 0-RTT data when this process holds a
    /// session ticket from an earlier connection to the relay (spec §3.5), so that a returning
    /// agent has the relay's answer — and the first of the session's data — one round trip
    /// after it starts to connect instead of two. Refusals are as for
    /// [`ControlChannel::join`]; [`ControlChannel::used_0rtt`] says which way it went.
    pub async fn connect_and_join(
        relay: SocketAddr,
        pin: Fingerprint,
        hello: Hello,
        credential: Credential,
        label: &str,
    ) -> Result<(Self, Joined), ClientError> {
        let join = Self::join_message(credential, label);
        Self::connect_pipelined(relay, pin, hello, Some(&join), Limits::DEFAULT, None)
            .await?
            .joined_as(label)
            .await
    }

    /// `JOIN` with `credential`, under `label`.
    fn join_message(credential: Credential, label: &str) -> Message {
        Message::Join(Join {
            credential,
            label: label.to_owned(),
        })
    }

    /// The end of a pipelined join as `label`: waits for `JOINED`.
    async fn joined_as(mut self, label: &str) -> Result<(Self, Joined), ClientError> {
        self.label = label.to_owned();
        let joined = self.wait_joined().await?;
        Ok((self, joined))
    }

    /// A new connection to `relay` that sends `hello` and `first` at once: as 0-RTT data when
    /// a session ticket allows it (spec §3.5 lets only `HELLO` and `JOIN` travel so), else once
    /// the handshake is complete. When the relay turns the early data down, both go again on
    /// the established connection. Waits for `WELCOME`. With `rtt`, the round trip of an
    /// earlier connection to the relay, the new one starts from it.
    async fn connect_pipelined(
        relay: SocketAddr,
        pin: Fingerprint,
        hello: Hello,
        first: Option<&Message>,
        limits: Limits,
        rtt: Option<Duration>,
    ) -> Result<Self, ClientError> {
        debug_assert!(
            first.is_none_or(|m| matches!(m, Message::Join(_))),
            "only HELLO and JOIN may travel in 0-RTT data"
        );
        let endpoint =
            transport::client_endpoint_on(transport::bind_address_for(relay), pin, hello.role)?;
        let connecting = match rtt {
            Some(rtt) => endpoint.connect_with(
                transport::client_config_for_rtt(pin, hello.role, rtt)?,
                relay,
                transport::SERVER_NAME,
            ),
            None => endpoint.connect(relay, transport::SERVER_NAME),
        }
        .map_err(TransportError::from)?;
        let conn = match connecting.into_0rtt() {
            Ok((conn, accepted)) => {
                let (mut send, recv) =
                    conn.open_bi().await.map_err(ClientError::from_connection)?;
                let bytes = Self::opening(&hello, first, &limits)?;
                send.write_all(&bytes).await.map_err(FramedError::from)?;
                // `true` once the handshake is complete and the relay took the early data; the
                // relay's answer came in the same flight. Otherwise start over below.
                if accepted.await {
                    let mut channel = Self::new_channel(conn, send, recv, hello, limits);
                    channel.zero_rtt = true;
                    channel.read_welcome().await?;
                    return Ok(channel);
                }
                conn
            }
            Err(connecting) => connecting.await.map_err(transport::connection_error)?,
        };
        Self::open_pipelined(conn, hello, first, limits).await
    }

    /// The first bytes of a control stream: `HELLO`, then `first` if any.
    fn opening(
        hello: &Hello,
        first: Option<&Message>,
        limits: &Limits,
    ) -> Result<Vec<u8>, ClientError> {
        let mut bytes = tandem_protocol::frame::to_frame(&Message::Hello(hello.clone()), limits)
            .map_err(FramedError::from)?;
        if let Some(first) = first {
            tandem_protocol::frame::encode_frame(first, &mut bytes, limits)
                .map_err(FramedError::from)?;
        }
        Ok(bytes)
    }

    /// Sends `hello` and, right behind it without waiting for `WELCOME`, the first request
    /// (spec §7.1 allows it), then waits for `WELCOME`.
    async fn open_pipelined(
        conn: Connection,
        hello: Hello,
        first: Option<&Message>,
        limits: Limits,
    ) -> Result<Self, ClientError> {
        let (mut send, recv) = conn.open_bi().await.map_err(ClientError::from_connection)?;
        let bytes = Self::opening(&hello, first, &limits)?;
        send.write_all(&bytes).await.map_err(FramedError::from)?;
        let mut channel = Self::new_channel(conn, send, recv, hello, limits);
        channel.read_welcome().await?;
        Ok(channel)
    }

    /// A channel on streams whose `HELLO` is sent; `WELCOME` still to read.
    fn new_channel(
        conn: Connection,
        send: SendStream,
        recv: quinn::RecvStream,
        hello: Hello,
        limits: Limits,
    ) -> Self {
        Self {
            conn,
            send,
            recv: FrameRecv::new(recv, limits),
            limits,
            role: hello.role,
            // Replaced by the relay's answer.
            welcome: Welcome {
                version: 0,
                role: Role::Relay,
                capabilities: Capabilities(0),
                software: String::new(),
            },
            joined: None,
            hello,
            reconnect: None,
            label: String::new(),
            zero_rtt: false,
        }
    }

    /// Whether this connection's `HELLO` (and `JOIN`) travelled as 0-RTT data and the relay
    /// took it (spec §3.5): only [`ControlChannel::connect_and_join`] and
    /// [`Reconnect::resume`] try, on a session ticket from an earlier connection.
    pub fn used_0rtt(&self) -> bool {
        self.zero_rtt
    }

    /// The label this side gave in its last `SESSION_OPEN` or `JOIN`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Reads `WELCOME`; one whose version lies outside this side's `HELLO` range closes the
    /// connection with `CLOSE` `VersionMismatch` (spec §7.2). While it is late, nudges the
    /// relay with `PING`s (see [`ControlChannel::nudge_until_answered`]).
    async fn read_welcome(&mut self) -> Result<(), ClientError> {
        self.nudge_until_answered().await?;
        match self.expect("WELCOME").await? {
            Message::Welcome(w) => {
                let (min, max) = (self.hello.min_version, self.hello.max_version);
                if !(min..=max).contains(&w.version) {
                    let message = format!("version {} is outside {min}..={max}", w.version);
                    self.close_with(ErrorCode::VersionMismatch, message).await;
                    return Err(ClientError::VersionMismatch {
                        version: w.version,
                        min,
                        max,
                    });
                }
                self.welcome = w;
            }
            other => return Err(self.unexpected("WELCOME", &other)),
        }
        Ok(())
    }

    /// Waits for the relay's first answer on the control stream, sending `PING` (spec §7.1,
    /// §7.30) each time it is later than [`NUDGE_ROUND_TRIPS`] round trips, at most
    /// [`MAX_NUDGES`] times.
    ///
    /// A QUIC server drops the 1-RTT packets that reach it before its handshake is complete
    /// (quinn does, as RFC 9001 §5.7 allows). `HELLO` and the request behind it leave with the
    /// client's last handshake flight; when that flight is lost, they are dropped on arrival,
    /// and the client sends them again only once it learns they were lost: from an
    /// acknowledgement of a later packet, or at its probe timeout, which after a round trip of
    /// 1.2 s and the handshake's own timeouts comes many seconds later. A `PING` is such a later
    /// packet: the first one that arrives after the relay's handshake completed is
    /// acknowledged, and with that acknowledgement the client sees at once that the earlier
    /// packets are missing and sends them again.
    async fn nudge_until_answered(&mut self) -> Result<(), ClientError> {
        for nonce in 0..MAX_NUDGES {
            let late = (self.conn.rtt() * NUDGE_ROUND_TRIPS).max(MIN_NUDGE_WAIT);
            tokio::select! {
                ready = self.recv.readable() => return Ok(ready?),
                () = tokio::time::sleep(late) => {}
            }
            self.send(&Message::Ping(Ping { nonce })).await?;
        }
        Ok(())
    }

    /// Makes the session on this channel resumable (spec §3.5): when the connection is lost,
    /// the session runners reconnect to the same relay with `pin` and this channel's `HELLO`
    /// and continue where they were. Without it, a lost connection ends the session.
    pub fn resumable(mut self, pin: Fingerprint) -> Self {
        self.reconnect = Some(Reconnect::new(
            self.conn.remote_address(),
            pin,
            self.hello.clone(),
        ));
        self
    }

    /// How to resume the session, when the channel is [`ControlChannel::resumable`].
    pub fn reconnect(&self) -> Option<&Reconnect> {
        self.reconnect.as_ref()
    }

    /// The relay's `WELCOME`: negotiated version and capabilities.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The QUIC connection, to open or accept data streams and send or read datagrams.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Consumer: asks for a new session (`SESSION_OPEN`) and returns its code and token.
    pub async fn open_session(&mut self, label: &str) -> Result<SessionCreated, ClientError> {
        self.label = label.to_owned();
        self.send(&Message::SessionOpen(SessionOpen {
            label: label.to_owned(),
        }))
        .await?;
        match self.expect("SESSION_CREATED").await? {
            Message::SessionCreated(created) => Ok(created),
            other => Err(self.unexpected("SESSION_CREATED", &other)),
        }
    }

    /// Consumer: waits until an agent joins and returns what the relay says about it.
    pub async fn wait_joined(&mut self) -> Result<Joined, ClientError> {
        match self.expect("JOINED").await? {
            Message::Joined(joined) => {
                self.joined = Some(joined.clone());
                Ok(joined)
            }
            other => Err(self.unexpected("JOINED", &other)),
        }
    }

    /// The relay's `JOINED`, once the session is open: the other side and the session's
    /// capabilities (spec §7.6).
    pub fn joined(&self) -> Option<&Joined> {
        self.joined.as_ref()
    }

    /// The session's capabilities: those of `JOINED`, or none before the session is open.
    /// End-to-end parts such as compressed DOM streams are used only when set here.
    pub fn session_capabilities(&self) -> Capabilities {
        self.joined
            .as_ref()
            .map_or(Capabilities(0), |j| j.capabilities)
    }

    /// Agent: joins the session named by `credential` and returns what the relay says about the
    /// consumer. A wrong or expired code fails with [`ClientError::Refused`] `SessionNotFound`
    /// and a session that has an agent with `SessionBusy`; the channel stays usable to try
    /// again. Too many wrong codes fail with `Refused` `RateLimited`, after which the relay
    /// closes the connection.
    pub async fn join(
        &mut self,
        credential: Credential,
        label: &str,
    ) -> Result<Joined, ClientError> {
        self.label = label.to_owned();
        self.send(&Self::join_message(credential, label)).await?;
        self.wait_joined().await
    }

    /// Agent: invites the customer known to the relay as `target` (spec §7.7) and waits for
    /// the answer. Accepted, it returns what the relay says about the customer (`JOINED`).
    /// Declined: [`ClientError::Declined`], and the channel stays usable. Unknown target or a
    /// customer being asked already: [`ClientError::Refused`] (`SessionNotFound`,
    /// `SessionBusy`; the channel stays usable). Unanswered within `expires` (at most the
    /// relay's limit, 120 s by default): [`ClientError::Ended`] with `Expired`.
    pub async fn invite(
        &mut self,
        invitation: u64,
        target: &str,
        label: &str,
        expires: Duration,
    ) -> Result<Joined, ClientError> {
        self.label = label.to_owned();
        self.send(&Message::Invite(Invite {
            invitation,
            target: target.to_owned(),
            agent_label: label.to_owned(),
            expires_ms: u32::try_from(expires.as_millis()).unwrap_or(u32::MAX),
        }))
        .await?;
        loop {
            match self.expect_any(&["ACCEPT", "DECLINE", "JOINED"]).await? {
                Message::Accept(r) if r.invitation == invitation => continue,
                Message::Decline(r) if r.invitation == invitation => {
                    return Err(ClientError::Declined);
                }
                Message::Joined(joined) => {
                    self.joined = Some(joined.clone());
                    return Ok(joined);
                }
                other => return Err(self.unexpected("ACCEPT or DECLINE", &other)),
            }
        }
    }

    /// Agent: withdraws a pending invitation (spec §7.10). The answer that may cross it is
    /// the caller's to read.
    pub async fn cancel(&mut self, invitation: u64) -> Result<(), ClientError> {
        self.send(&Message::Cancel(InvitationRef { invitation }))
            .await
    }

    /// Consumer: waits until an agent joins, answering invitations on the way (spec §7.7–
    /// §7.10): `answer` sees each `INVITE` and says whether the customer accepts (`ACCEPT`)
    /// or declines (`DECLINE`). A `CANCEL` or an invitation's expiry (`CANCEL` from the
    /// relay) withdraws an invitation before it is answered; `on_cancel` is told.
    pub async fn wait_joined_answering<F: Future<Output = bool>>(
        &mut self,
        mut answer: impl FnMut(Invite) -> F,
        mut on_cancel: impl FnMut(u64),
    ) -> Result<Joined, ClientError> {
        loop {
            match self.expect_any(&["JOINED", "INVITE", "CANCEL"]).await? {
                Message::Joined(joined) => {
                    self.joined = Some(joined.clone());
                    return Ok(joined);
                }
                Message::Invite(invite) => {
                    let r = InvitationRef {
                        invitation: invite.invitation,
                    };
                    let yes = answer(invite).await;
                    let reply = if yes {
                        Message::Accept(r)
                    } else {
                        Message::Decline(r)
                    };
                    self.send(&reply).await?;
                }
                Message::Cancel(r) => on_cancel(r.invitation),
                other => return Err(self.unexpected("JOINED", &other)),
            }
        }
    }

    /// Sends one message on the control stream.
    pub async fn send(&mut self, msg: &Message) -> Result<(), ClientError> {
        Ok(write_message(&mut self.send, msg, &self.limits).await?)
    }

    /// Sends one raw frame (any type, even one this version does not know).
    pub async fn send_raw(&mut self, frame: &RawFrame) -> Result<(), ClientError> {
        Ok(write_raw(&mut self.send, frame).await?)
    }

    /// The next control message, `END` and `CLOSE` included; `Ok(None)` when the relay finished
    /// the stream. After a `CLOSE` the connection is closed with its code.
    pub async fn recv(&mut self) -> Result<Option<Message>, ClientError> {
        let msg = self.recv.next_message().await?;
        if let Some(Message::Close(report)) = &msg {
            close_connection(&self.conn, report);
        }
        Ok(msg)
    }

    /// The next control frame, undecoded; `Ok(None)` when the relay finished the stream.
    pub async fn recv_raw(&mut self) -> Result<Option<RawFrame>, ClientError> {
        Ok(self.recv.next_raw().await?)
    }

    /// Ends the session with `END` (`EndedByConsumer` or `EndedByAgent`, by this side's role),
    /// waits for the relay's `CLOSE` (a few seconds at most, skipping anything in between) and
    /// closes the connection.
    pub async fn end(mut self) -> Result<(), ClientError> {
        let reason = match self.role {
            Role::Agent => EndReason::EndedByAgent,
            _ => EndReason::EndedByConsumer,
        };
        self.send(&Message::End(End { reason })).await?;
        let wait = async {
            loop {
                match self.recv.next_message().await {
                    Ok(Some(Message::Close(report))) => return Ok(report),
                    Ok(Some(_)) => continue,
                    Ok(None) => return Err(ClientError::StreamEnded),
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let result = tokio::time::timeout(END_WAIT, wait).await;
        match result {
            Ok(Ok(report)) => {
                close_connection(&self.conn, &report);
                Ok(())
            }
            Ok(Err(e)) => {
                self.conn.close(VarInt::from_u32(0), b"");
                Err(e)
            }
            Err(_) => {
                self.conn.close(VarInt::from_u32(0), b"");
                Ok(())
            }
        }
    }

    /// Reads the next message the handshake waits for: `ERROR` becomes [`ClientError::Refused`],
    /// `CLOSE` and `END` end the connection with an error, `PING` is answered, `PONG` and
    /// optional frames of unknown type are skipped (spec §3.2, §4.3).
    async fn expect(&mut self, expected: &'static str) -> Result<Message, ClientError> {
        self.expect_any(&[expected]).await
    }

    /// Like [`ControlChannel::expect`], for any of several messages.
    async fn expect_any(&mut self, expected: &[&'static str]) -> Result<Message, ClientError> {
        loop {
            match self.recv.next_message().await? {
                None => return Err(ClientError::StreamEnded),
                Some(Message::Error(report)) => {
                    return Err(ClientError::Refused {
                        code: report.code,
                        message: report.message,
                    });
                }
                Some(Message::Close(report)) => {
                    close_connection(&self.conn, &report);
                    return Err(ClientError::Closed {
                        code: report.code,
                        message: report.message,
                    });
                }
                Some(Message::End(End { reason })) => {
                    // A `CLOSE` follows; the session is over either way.
                    self.conn
                        .close(quic_code(ErrorCode::SessionEnded), b"session ended");
                    return Err(ClientError::Ended(reason));
                }
                Some(Message::Ping(ping)) => self.send(&Message::Pong(ping)).await?,
                Some(Message::Pong(_)) => {}
                Some(Message::Unknown(u)) if !u.must_understand() => {}
                Some(Message::Unknown(u)) => {
                    // A critical type this side does not know (spec §4.3).
                    let e = DecodeError::UnknownCritical { ty: u.ty.0 };
                    self.close_with(e.code(), e.to_string()).await;
                    return Err(ClientError::Framed(FramedError::Protocol(e)));
                }
                Some(other) if expected.contains(&other.name()) => return Ok(other),
                Some(other) => {
                    return Err(self.unexpected(expected.first().copied().unwrap_or(""), &other));
                }
            }
        }
    }

    /// Leaves the relay without a session (or before one is open): `CLOSE` `NoError`, then the
    /// connection closes once the relay has closed it or [`CLOSE_GRACE`] is over (spec §3.3).
    pub async fn leave(mut self) {
        self.close_with(ErrorCode::NoError, "leaving".to_owned())
            .await;
    }

    /// Sends `CLOSE` with `code` and closes the connection with the same code, once the relay
    /// has closed after reading it or [`CLOSE_GRACE`] is over (spec §3.3). Best effort: the
    /// connection closes with the code either way; closing at once would discard the `CLOSE`
    /// unsent.
    async fn close_with(&mut self, code: ErrorCode, message: String) {
        let close = Message::Close(ErrorReport { code, message });
        let _ = tokio::time::timeout(CLOSE_GRACE, self.send(&close)).await;
        let _ = self.send.finish();
        let _ = tokio::time::timeout(CLOSE_GRACE, self.conn.closed()).await;
        let reason: &[u8] = if code == ErrorCode::NoError {
            b""
        } else {
            b"protocol violation"
        };
        self.conn.close(quic_code(code), reason);
    }

    /// Closes the connection over a message that has no place here.
    fn unexpected(&self, expected: &'static str, got: &Message) -> ClientError {
        self.conn.close(
            quic_code(ErrorCode::UnexpectedMessage),
            b"unexpected message",
        );
        ClientError::Unexpected {
            expected,
            got: got.name(),
        }
    }

    /// Splits the channel into its connection, control send stream and control reader.
    pub fn into_parts(self) -> (Connection, SendStream, FrameRecv) {
        (self.conn, self.send, self.recv)
    }
}

fn close_connection(conn: &Connection, report: &ErrorReport) {
    conn.close(quic_code(report.code), b"");
}
