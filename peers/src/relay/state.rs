//! The relay's decisions, with no I/O (STYLE.md 1 and 3): version negotiation, what to do with
//! each control frame, the session table (codes, tokens, expiry, pairing, rate limiting) and
//! what each side is told when a session ends. Time and randomness come in as arguments, so
//! every rule here is tested without sockets; `relay.rs` is the tokio pump around it.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tandem_protocol::message::{
    Capabilities, Credential, End, EndReason, ErrorReport, Hello, Joined, Mode, ModeChange, ModeOp,
    Platform, Role, Welcome,
};
use tandem_protocol::{
    DecodeError, ErrorCode, FrameType, Limits, Message, PROTOCOL_VERSION, RawFrame,
};

/// Lowest protocol version this relay speaks.
pub const MIN_VERSION: u32 = PROTOCOL_VERSION;
/// Highest protocol version this relay speaks.
pub const MAX_VERSION: u32 = PROTOCOL_VERSION;

/// Capabilities the relay supports. It forwards streams and datagrams without looking inside,
/// so compression (either codec, spec §4.6) and resources work through it, and it keeps a
/// session whose peer lost its connection for a grace period so that the peer can resume
/// (spec §3.5).
pub const RELAY_CAPABILITIES: Capabilities = Capabilities(
    Capabilities::COMPRESSION.0
        | Capabilities::CODED_PATCHES.0
        | Capabilities::RESOURCES.0
        | Capabilities::DATAGRAMS.0
        | Capabilities::RESUME.0,
);

/// The software string the relay sends in `WELCOME`.
pub const SOFTWARE: &str = concat!("tandem-relay/", env!("CARGO_PKG_VERSION"));

/// The answer to a `HELLO` (spec §7.1, §7.2): `WELCOME` with the highest common version and the
/// intersected capabilities, or the `CLOSE` to send instead.
pub fn negotiate(hello: &Hello) -> Result<Welcome, ErrorReport> {
    if !matches!(hello.role, Role::Consumer | Role::Agent) {
        return Err(ErrorReport {
            code: ErrorCode::UnexpectedMessage,
            message: format!("role {:?} cannot connect to a relay", hello.role),
        });
    }
    let low = hello.min_version.max(MIN_VERSION);
    let high = hello.max_version.min(MAX_VERSION);
    if hello.min_version > hello.max_version || low > high {
        return Err(ErrorReport {
            code: ErrorCode::VersionMismatch,
            message: format!(
                "no common version: peer speaks {}..={}, relay speaks {MIN_VERSION}..={MAX_VERSION}",
                hello.min_version, hello.max_version
            ),
        });
    }
    Ok(Welcome {
        version: high,
        role: Role::Relay,
        capabilities: hello.capabilities.intersect(RELAY_CAPABILITIES),
        software: SOFTWARE.to_owned(),
    })
}

/// One side of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The customer's side, which opened the session.
    Consumer,
    /// The agent's side, which joined it.
    Agent,
}

impl Side {
    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::Consumer => Side::Agent,
            Side::Agent => Side::Consumer,
        }
    }

    /// The `END` reason when this side ends the session.
    pub fn ended_by(self) -> EndReason {
        match self {
            Side::Consumer => EndReason::EndedByConsumer,
            Side::Agent => EndReason::EndedByAgent,
        }
    }

    /// Lowercase name, for logs and events.
    pub fn name(self) -> &'static str {
        match self {
            Side::Consumer => "consumer",
            Side::Agent => "agent",
        }
    }
}

/// What the relay does with a control frame from a peer that has a session (waiting or paired),
/// by frame type alone (spec §3.2: hop messages are the relay's, end-to-end ones are forwarded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlAction {
    /// End-to-end: forward it unchanged to the other side's control stream (queued until the
    /// agent joins). Unknown types are end-to-end too (spec §4.3).
    Forward,
    /// `END` (spec §7.13): end the session (the other side is told `END` by the relay).
    End,
    /// `CLOSE` (spec §7.34): the sender is leaving.
    Close,
    /// `PING` (spec §7.30): answer with the `PONG` of [`consume`].
    Ping,
    /// A hop message that needs no answer (`PONG`, `ERROR`): consume it.
    Ignore,
    /// A request that cannot be granted now: answer `ERROR` with this code and carry on, once
    /// [`refuse`] recognised it (spec §4.5).
    Refuse(ErrorCode),
    /// A message that only the relay sends, or a second `HELLO`: the sender broke the protocol.
    Violation,
}

/// [`classify_control`] for a consumer whose session nobody has joined yet (Waiting, or an
/// invitation pending): its control frames are held for the agent, except that it cannot pause
/// or resume a session that is not live. The lifecycle has no such transition, and the relay
/// would otherwise deliver a `PAUSE` at the join without ever noting the pause (spec §13.1).
pub fn classify_waiting(ty: FrameType) -> ControlAction {
    match ty {
        FrameType::PAUSE | FrameType::RESUME => ControlAction::Refuse(ErrorCode::UnexpectedMessage),
        ty => classify_control(Side::Consumer, ty),
    }
}

/// Classifies a control frame from `side` of a session by its type; bodies are not decoded.
/// The frames of [`ControlAction::End`], [`ControlAction::Close`], [`ControlAction::Ping`] and
/// [`ControlAction::Ignore`] are the relay's to consume: their bodies are recognised by
/// [`consume`] before the relay acts on them (spec §4.5); those of [`ControlAction::Refuse`]
/// are recognised by [`refuse`] before the relay answers them.
pub fn classify_control(side: Side, ty: FrameType) -> ControlAction {
    match ty {
        FrameType::END => ControlAction::End,
        FrameType::CLOSE => ControlAction::Close,
        FrameType::PING => ControlAction::Ping,
        FrameType::PONG | FrameType::ERROR => ControlAction::Ignore,
        FrameType::HELLO | FrameType::WELCOME | FrameType::SESSION_CREATED | FrameType::JOINED => {
            ControlAction::Violation
        }
        // spec §7.5: an agent has at most one live session; JOIN or INVITE while it has one is
        // SessionBusy.
        FrameType::JOIN | FrameType::INVITE if side == Side::Agent => {
            ControlAction::Refuse(ErrorCode::SessionBusy)
        }
        // spec §7.3: one session per connection. A consumer resumes (JOIN) only as the first
        // request of a new connection, and only agents invite (before they have a session:
        // relay/invite.rs).
        FrameType::SESSION_OPEN | FrameType::JOIN | FrameType::INVITE => {
            ControlAction::Refuse(ErrorCode::UnexpectedMessage)
        }
        _ => ControlAction::Forward,
    }
}

/// A control frame the relay is the receiver of and consumes itself, once recognised (spec
/// §4.5): the hop messages that reach it (`PING`, `PONG`, `ERROR`, `CLOSE`, spec §3.2) and
/// `END`, which the relay acts on and, in a session, tells the other side itself (spec §7.13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consumed {
    /// A `PING`, and the `PONG` that answers it (spec §7.30). The `PONG` is encoded from the
    /// nonce, not copied from the body, so a non-minimal varint that the decoder accepted goes
    /// back minimal (spec §4.2).
    Ping(RawFrame),
    /// A `PONG` or an `ERROR` (spec §7.31, §7.33): nothing to do.
    Ignored,
    /// An `END` (spec §7.13) with its reason.
    End(EndReason),
    /// A `CLOSE` (spec §7.34) with its code and message.
    Close(ErrorReport),
}

impl Consumed {
    /// Whether the relay consumes frames of type `ty` itself: `PING`, `PONG`, `ERROR`, `END`
    /// and `CLOSE`, the frames [`consume`] recognises.
    pub fn is_consumed(ty: FrameType) -> bool {
        matches!(
            ty,
            FrameType::PING
                | FrameType::PONG
                | FrameType::ERROR
                | FrameType::END
                | FrameType::CLOSE
        )
    }
}

/// Recognises a control frame the relay consumes itself ([`Consumed::is_consumed`]) before it
/// acts on it (spec §4.5): the whole body is decoded as the message of the frame's type. A
/// body that does not decode (truncated, with bytes after the last field, a varint past its
/// width) is not acted on, and the error is the protocol violation to close the sender's
/// connection for, with its code (`MalformedFrame`, spec §9): a `PING` gets no `PONG`, and a
/// `CLOSE` that does not decode is no `CLOSE`. A frame of any other type is refused the same
/// way (`InvalidValue`), for the relay never consumes one.
pub fn consume(frame: &RawFrame, limits: &Limits) -> Result<Consumed, DecodeError> {
    if !Consumed::is_consumed(frame.ty) {
        return Err(DecodeError::InvalidValue {
            field: "frame.type",
            detail: "not a frame the relay consumes",
        });
    }
    Ok(match Message::decode_body(frame.ty, &frame.body, limits)? {
        Message::Ping(ping) => {
            let mut body = Vec::new();
            // A PONG is one varint: encoding it cannot fail.
            let _ = Message::Pong(ping).encode_body(&mut body);
            Consumed::Ping(RawFrame {
                ty: FrameType::PONG,
                body,
            })
        }
        Message::End(End { reason }) => Consumed::End(reason),
        Message::Close(report) => Consumed::Close(report),
        // PONG and ERROR; a body decoded as one of the five types is one of these messages.
        _ => Consumed::Ignored,
    })
}

/// Refuses a control frame that the relay answers itself without granting it (a request it
/// cannot serve in the sender's state, or a frame that has no receiver there): the `ERROR`
/// with `code` and `message` to send back (spec §7.33), the connection staying open. The frame
/// is recognised first, as every frame the relay answers (spec §4.5): a body that does not
/// decode is not refused but is the protocol violation to close the sender's connection for,
/// with its code (`MalformedFrame`, spec §9), in every state. Frames the relay forwards are
/// never given to this; their final receiver checks them.
pub fn refuse(
    frame: &RawFrame,
    limits: &Limits,
    code: ErrorCode,
    message: &str,
) -> Result<RawFrame, DecodeError> {
    frame.decode(limits)?;
    Ok(error_frame(code, message))
}

/// An `ERROR` frame (spec §7.33) with `code` and `message`, raw.
pub fn error_frame(code: ErrorCode, message: &str) -> RawFrame {
    let msg = Message::Error(ErrorReport {
        code,
        message: message.to_owned(),
    });
    let mut body = Vec::new();
    // An ERROR with a short message always encodes; if it ever did not, an empty body would be
    // a malformed ERROR rather than a panic.
    let _ = msg.encode_body(&mut body);
    RawFrame {
        ty: FrameType::ERROR,
        body,
    }
}

/// A change of a live session that the relay reports as a lifecycle event (spec §13.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The customer paused sharing.
    Paused,
    /// The customer resumed sharing.
    Resumed,
    /// The customer granted or set a mode.
    ModeChanged(Mode),
}

/// What a forwarded control frame from `side` says about the session's lifecycle. Only the
/// consumer pauses, resumes and decides modes (spec §13.1, §13.2); of all forwarded bodies only
/// a consumer's `MODE` is decoded, and a `MODE` that does not decode is forwarded unreported
/// (the agent judges it).
pub fn observe(side: Side, frame: &RawFrame, limits: &Limits) -> Option<Observed> {
    if side != Side::Consumer {
        return None;
    }
    match frame.ty {
        FrameType::PAUSE => Some(Observed::Paused),
        FrameType::RESUME => Some(Observed::Resumed),
        FrameType::MODE => match frame.decode(limits) {
            Ok(Message::Mode(ModeChange {
                op: ModeOp::Grant | ModeOp::Set,
                mode,
            })) => Some(Observed::ModeChanged(mode)),
            _ => None,
        },
        _ => None,
    }
}

/// How a paired session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A side sent `END` with `reason` (or `CLOSE` with no error).
    Ended {
        /// The side that ended the session.
        side: Side,
        /// The reason it gave, forwarded as it is.
        reason: EndReason,
    },
    /// A side's connection went away (or it sent `CLOSE` with an error).
    Lost(Side),
    /// A side broke the protocol; it is told why in a `CLOSE` with `code`.
    Violation {
        /// The side at fault.
        side: Side,
        /// The close code.
        code: ErrorCode,
        /// What was wrong, for the `CLOSE` message and the event log.
        detail: String,
    },
    /// The relay is shutting down.
    Shutdown,
}

/// What each side is told when a session ends, and the reason recorded for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Teardown {
    /// Messages for the consumer's control stream, in order.
    pub to_consumer: Vec<Message>,
    /// Messages for the agent's control stream, in order.
    pub to_agent: Vec<Message>,
    /// The reason recorded in the `ended` event.
    pub reason: EndReason,
}

impl Teardown {
    /// The messages for `side`.
    pub fn to(&self, side: Side) -> &[Message] {
        match side {
            Side::Consumer => &self.to_consumer,
            Side::Agent => &self.to_agent,
        }
    }
}

fn close(code: ErrorCode, message: impl Into<String>) -> Message {
    Message::Close(ErrorReport {
        code,
        message: message.into(),
    })
}

/// What the relay sends when a paired session ends (spec §3.3, §7.13, §7.34): the side that did
/// not end it gets the `END` (the peer's own, or `ConnectionLost`) and `CLOSE SessionEnded`; the
/// side that ended it gets `CLOSE NoError`; a side that broke the protocol gets a `CLOSE` with
/// its error; a side whose connection is gone gets nothing. The relay closes both connections
/// after that (spec §7.13 allows keeping them; this relay serves one session per connection).
pub fn teardown(outcome: &Outcome) -> Teardown {
    let end = |reason| Message::End(End { reason });
    let mut t = Teardown {
        to_consumer: Vec::new(),
        to_agent: Vec::new(),
        reason: EndReason::ConnectionLost,
    };
    let (first, second) = match outcome {
        Outcome::Ended { side, reason } => {
            t.reason = *reason;
            let notice = vec![
                end(t.reason),
                close(
                    ErrorCode::SessionEnded,
                    format!("the {} ended the session", side.name()),
                ),
            ];
            let ack = vec![close(ErrorCode::NoError, "session ended")];
            ((side.other(), notice), Some((*side, ack)))
        }
        Outcome::Lost(side) => {
            let notice = vec![
                end(EndReason::ConnectionLost),
                close(
                    ErrorCode::SessionEnded,
                    format!("the {}'s connection was lost", side.name()),
                ),
            ];
            ((side.other(), notice), None)
        }
        Outcome::Violation { side, code, detail } => {
            let notice = vec![
                end(EndReason::ConnectionLost),
                close(
                    ErrorCode::SessionEnded,
                    format!("the {} broke the protocol", side.name()),
                ),
            ];
            let blame = vec![close(*code, detail.clone())];
            ((side.other(), notice), Some((*side, blame)))
        }
        Outcome::Shutdown => {
            let notice = || {
                vec![
                    end(EndReason::ConnectionLost),
                    close(ErrorCode::SessionEnded, "relay shutting down"),
                ]
            };
            ((Side::Consumer, notice()), Some((Side::Agent, notice())))
        }
    };
    for (side, msgs) in std::iter::once(first).chain(second) {
        match side {
            Side::Consumer => t.to_consumer = msgs,
            Side::Agent => t.to_agent = msgs,
        }
    }
    t
}

/// What the relay knows about a peer from its `HELLO` and `SESSION_OPEN`/`JOIN`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerInfo {
    /// The display label.
    pub label: String,
    /// The platform from `HELLO`.
    pub platform: Platform,
    /// The capabilities agreed with the relay in `WELCOME`.
    pub capabilities: Capabilities,
}

/// The `JOINED` each side receives (spec §7.6): the other side's role, label and platform, and
/// the session's capabilities, which both peers and the relay share. The resume tokens are
/// left empty; [`SessionTable::issue_resume`] draws them when the session has `RESUME`.
pub fn joined_messages(consumer: &PeerInfo, agent: &PeerInfo) -> (Joined, Joined) {
    (
        joined_for(Side::Consumer, consumer, agent),
        joined_for(Side::Agent, consumer, agent),
    )
}

/// The `JOINED` that `side` receives, with an empty resume token.
pub fn joined_for(side: Side, consumer: &PeerInfo, agent: &PeerInfo) -> Joined {
    let capabilities = consumer.capabilities.intersect(agent.capabilities);
    let (peer_role, peer) = match side {
        Side::Consumer => (Role::Agent, agent),
        Side::Agent => (Role::Consumer, consumer),
    };
    Joined {
        peer_role,
        peer_label: peer.label.clone(),
        peer_platform: peer.platform.clone(),
        capabilities,
        resume_token: String::new(),
    }
}

/// Settings of the session table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableConfig {
    /// How long an unused session code stays valid (spec §7.4: 120 s).
    pub code_ttl: Duration,
    /// Failed joins from one source allowed within `failure_window`.
    pub max_failures: usize,
    /// The window over which failed joins are counted.
    pub failure_window: Duration,
    /// Most sessions (waiting or paired) at once.
    pub max_sessions: usize,
    /// The longest an invitation may wait for an answer (spec §7.7: 120 s by default; an
    /// `INVITE` asking for longer gets this).
    pub invitation_ttl: Duration,
    /// How long a session whose peer lost its connection waits for it to resume (spec §3.5).
    pub resume_grace: Duration,
}

impl Default for TableConfig {
    fn default() -> Self {
        Self {
            code_ttl: Duration::from_secs(120),
            max_failures: 5,
            failure_window: Duration::from_secs(60),
            max_sessions: 10_000,
            invitation_ttl: Duration::from_secs(120),
            resume_grace: Duration::from_secs(60),
        }
    }
}

/// A session's identifier inside the relay (never on the wire).
pub type SessionId = u64;

/// A session just opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Its identifier.
    pub id: SessionId,
    /// The six-digit code the customer reads out.
    pub code: String,
    /// The 64-hex-digit token for links.
    pub token: String,
    /// When the code expires if no agent joins.
    pub expires_at: Instant,
}

/// An agent joined a waiting session.
#[derive(Debug)]
pub struct Pairing<P> {
    /// The session.
    pub id: SessionId,
    /// The consumer that opened it.
    pub consumer: PeerInfo,
    /// What the pump stored with the waiting consumer (how to reach it).
    pub waiter: P,
}

/// Why a session could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The relay holds its maximum number of sessions.
    #[error("the relay is full")]
    Full,
    /// The OS random source failed.
    #[error("the random source failed")]
    Random,
}

impl OpenError {
    /// The `CLOSE` code for the consumer.
    pub fn code(self) -> ErrorCode {
        match self {
            OpenError::Full => ErrorCode::RateLimited,
            OpenError::Random => ErrorCode::Internal,
        }
    }
}

/// Why a `JOIN` was refused (spec §7.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinRefusal {
    /// No waiting or paired session has this code or token (or it expired).
    #[error("no session with this code")]
    NotFound,
    /// The session already has an agent.
    #[error("the session already has an agent")]
    Busy,
    /// Too many failed joins from this source recently.
    #[error("too many failed attempts; try again later")]
    RateLimited,
}

impl JoinRefusal {
    /// The `CLOSE` code for the agent.
    pub fn code(self) -> ErrorCode {
        match self {
            JoinRefusal::NotFound => ErrorCode::SessionNotFound,
            JoinRefusal::Busy => ErrorCode::SessionBusy,
            JoinRefusal::RateLimited => ErrorCode::RateLimited,
        }
    }

    /// The refusal's name, for events.
    pub fn name(self) -> &'static str {
        match self {
            JoinRefusal::NotFound => "SessionNotFound",
            JoinRefusal::Busy => "SessionBusy",
            JoinRefusal::RateLimited => "RateLimited",
        }
    }
}

/// A random source that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomFailed;

#[derive(Debug)]
enum State<P> {
    /// No agent yet. `invited` holds the id of the invitation the customer is being shown;
    /// while it is pending the session cannot be joined and its code does not expire.
    Waiting {
        expires_at: Instant,
        waiter: P,
        invited: Option<SessionId>,
    },
    Paired,
}

/// An agent's invitation of a waiting customer (spec §7.7), delivered to the customer's side.
#[derive(Debug)]
pub struct Invitation<P> {
    /// The invitation's own session id: its lifecycle events (`invited`, then `connected` or
    /// `ended` with `declined`, `cancelled` or `expired`) carry it, and so does the live
    /// session it may become.
    pub id: SessionId,
    /// The customer's waiting session it was delivered to.
    pub consumer_session: SessionId,
    /// The customer.
    pub consumer: PeerInfo,
    /// When the invitation expires unanswered: the agent's `expires_ms`, at most the table's
    /// `invitation_ttl`.
    pub expires_at: Instant,
    /// How to reach the customer's side (a clone of what its pump stored).
    pub waiter: P,
}

#[derive(Debug)]
struct Entry<P> {
    code: String,
    token: String,
    consumer: PeerInfo,
    state: State<P>,
    /// Where resuming peers are handed (the live session's pump), once the session has one.
    resumer: Option<P>,
    /// The current resume token of each side (consumer, agent), if issued (spec §3.5).
    resume_tokens: [Option<String>; 2],
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Consumer => 0,
        Side::Agent => 1,
    }
}

/// The relay's sessions, by code and by token, and the failed-join counters by source.
///
/// `P` is what the pump keeps for a waiting consumer (a channel to hand it the agent); the
/// table gives it back in [`Pairing`] and drops it when the session expires.
///
/// Order of calls: [`SessionTable::open`] for each `SESSION_OPEN`, [`SessionTable::join`] for
/// each `JOIN`, [`SessionTable::remove`] when a session ends, and [`SessionTable::sweep`] now
/// and then (at least once per `failure_window`) to drop expired codes and old failures.
#[derive(Debug)]
pub struct SessionTable<P> {
    config: TableConfig,
    sessions: HashMap<SessionId, Entry<P>>,
    by_code: HashMap<String, SessionId>,
    by_token: HashMap<String, SessionId>,
    by_resume: HashMap<String, (SessionId, Side)>,
    failures: HashMap<FailKey, VecDeque<Instant>>,
    next_id: SessionId,
}

impl<P: Clone> SessionTable<P> {
    /// An agent from `from` invites the customer known as `target` (spec §7.7): the label of
    /// a waiting session. The first waiting session with that label that has no pending
    /// invitation gets it. An unknown target counts as a failure of `from` (like a wrong code,
    /// so targets cannot be enumerated quickly); a customer who is being asked already is
    /// [`JoinRefusal::Busy`]. The invitation lives `ttl`, at most the table's
    /// `invitation_ttl`.
    pub fn invite(
        &mut self,
        now: Instant,
        from: IpAddr,
        target: &str,
        ttl: Duration,
    ) -> Result<Invitation<P>, JoinRefusal> {
        let key = FailKey::Source(SourceKey::of(from));
        if self.recent_failures(key, now) >= self.config.max_failures {
            return Err(JoinRefusal::RateLimited);
        }
        let mut busy = false;
        let mut found = None;
        let mut ids: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, e)| e.consumer.label == target)
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            match &self.sessions[&id].state {
                State::Waiting {
                    expires_at,
                    invited: None,
                    ..
                } if *expires_at > now => {
                    found = Some(id);
                    break;
                }
                State::Waiting {
                    invited: Some(_), ..
                }
                | State::Paired => busy = true,
                State::Waiting { .. } => {}
            }
        }
        let Some(consumer_session) = found else {
            if busy {
                return Err(JoinRefusal::Busy);
            }
            self.record_failure(key, now);
            return Err(JoinRefusal::NotFound);
        };
        let id = self.next_id;
        self.next_id += 1;
        let Some(entry) = self.sessions.get_mut(&consumer_session) else {
            return Err(JoinRefusal::NotFound);
        };
        let State::Waiting {
            waiter, invited, ..
        } = &mut entry.state
        else {
            return Err(JoinRefusal::Busy);
        };
        *invited = Some(id);
        Ok(Invitation {
            id,
            consumer_session,
            consumer: entry.consumer.clone(),
            expires_at: now + ttl.min(self.config.invitation_ttl),
            waiter: waiter.clone(),
        })
    }
}

/// Failed joins are counted per IPv4 address and per IPv6 /64 (one host's usual allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SourceKey {
    V4([u8; 4]),
    V6([u8; 8]),
}

impl SourceKey {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(v4.octets()),
                None => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    SourceKey::V6(prefix)
                }
            },
        }
    }
}

/// What failed joins are counted against (spec §7.5): the source, and the code tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum FailKey {
    /// A source address (see [`SourceKey`]).
    Source(SourceKey),
    /// A six-digit code, from any source: a code tried wrongly `max_failures` times within the
    /// window is refused to everyone until the oldest attempt ages out, and is not handed out to
    /// a new session meanwhile, so many sources together cannot hammer one code.
    Code(u32),
}

impl FailKey {
    /// The per-code key of `credential`, when it is a six-digit code.
    fn code(credential: &Credential) -> Option<FailKey> {
        match credential {
            Credential::Code(c) if c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit()) => {
                c.parse().ok().map(FailKey::Code)
            }
            _ => None,
        }
    }
}

/// Most failure counters held at once (sources and codes); beyond it new codes are not
/// counted (sources still are), so a flood of distinct wrong codes cannot grow the table.
pub const MAX_FAILURE_KEYS: usize = 100_000;

/// Attempts at drawing an unused code before the table counts as full.
const CODE_ATTEMPTS: usize = 64;

impl<P> SessionTable<P> {
    /// An empty table.
    pub fn new(config: TableConfig) -> Self {
        Self {
            config,
            sessions: HashMap::new(),
            by_code: HashMap::new(),
            by_token: HashMap::new(),
            by_resume: HashMap::new(),
            failures: HashMap::new(),
            next_id: 1,
        }
    }

    /// The table's settings.
    pub fn config(&self) -> &TableConfig {
        &self.config
    }

    /// Opens a session for `consumer`: draws an unused six-digit code and a 32-byte token from
    /// `random`, and keeps `waiter` until an agent joins or the code expires.
    pub fn open(
        &mut self,
        now: Instant,
        consumer: PeerInfo,
        waiter: P,
        random: &mut dyn FnMut(&mut [u8]) -> Result<(), RandomFailed>,
    ) -> Result<Opened, OpenError> {
        if self.sessions.len() >= self.config.max_sessions {
            return Err(OpenError::Full);
        }
        let code = self.draw_code(now, random)?;
        let mut token_bytes = [0u8; 32];
        random(&mut token_bytes).map_err(|_| OpenError::Random)?;
        let token: String = token_bytes.iter().map(|b| format!("{b:02x}")).collect();
        if self.by_token.contains_key(&token) {
            // 256 random bits never collide unless the random source is broken.
            return Err(OpenError::Random);
        }
        let id = self.next_id;
        self.next_id += 1;
        let expires_at = now + self.config.code_ttl;
        self.by_code.insert(code.clone(), id);
        self.by_token.insert(token.clone(), id);
        self.sessions.insert(
            id,
            Entry {
                code: code.clone(),
                token: token.clone(),
                consumer,
                state: State::Waiting {
                    expires_at,
                    waiter,
                    invited: None,
                },
                resumer: None,
                resume_tokens: [None, None],
            },
        );
        Ok(Opened {
            id,
            code,
            token,
            expires_at,
        })
    }

    fn draw_code(
        &self,
        now: Instant,
        random: &mut dyn FnMut(&mut [u8]) -> Result<(), RandomFailed>,
    ) -> Result<String, OpenError> {
        // The largest multiple of 10^6 that fits in a u32: values at or above it are redrawn so
        // that every code is equally likely.
        const ZONE: u32 = (u32::MAX / 1_000_000) * 1_000_000;
        for _ in 0..CODE_ATTEMPTS {
            let mut b = [0u8; 4];
            random(&mut b).map_err(|_| OpenError::Random)?;
            let v = u32::from_le_bytes(b);
            if v >= ZONE {
                continue;
            }
            let code = format!("{:06}", v % 1_000_000);
            if !self.by_code.contains_key(&code)
                && !self.is_locked(FailKey::Code(v % 1_000_000), now)
            {
                return Ok(code);
            }
        }
        Err(OpenError::Full)
    }

    /// An agent from `from` asks to join with `credential`. A wrong or expired credential counts
    /// as a failure of `from`, and a wrong code also as a failure of that code; once
    /// `max_failures` failures of the source, or of the code, fall within `failure_window`,
    /// every join from there (or with that code) is refused as [`JoinRefusal::RateLimited`]
    /// until the oldest ages out.
    pub fn join(
        &mut self,
        now: Instant,
        from: IpAddr,
        credential: &Credential,
    ) -> Result<Pairing<P>, JoinRefusal> {
        let source = FailKey::Source(SourceKey::of(from));
        let code = FailKey::code(credential);
        let limited = self.recent_failures(source, now) >= self.config.max_failures
            || code.is_some_and(|c| self.recent_failures(c, now) >= self.config.max_failures);
        if limited {
            return Err(JoinRefusal::RateLimited);
        }
        let key = source;
        let id = match credential {
            Credential::Code(c) => self.by_code.get(c),
            Credential::Token(t) => self.by_token.get(t),
            // A resume token names a live session, which cannot be joined (see `resume`).
            Credential::Resume(_) => None,
        }
        .copied();
        let Some((id, entry)) = id.and_then(|id| self.sessions.get_mut(&id).map(|e| (id, e)))
        else {
            self.record_failure(key, now);
            if let Some(c) = code {
                self.record_failure(c, now);
            }
            return Err(JoinRefusal::NotFound);
        };
        match std::mem::replace(&mut entry.state, State::Paired) {
            State::Paired => Err(JoinRefusal::Busy),
            State::Waiting {
                expires_at,
                waiter,
                invited: Some(inv),
            } => {
                entry.state = State::Waiting {
                    expires_at,
                    waiter,
                    invited: Some(inv),
                };
                Err(JoinRefusal::Busy)
            }
            State::Waiting {
                expires_at, waiter, ..
            } if expires_at <= now => {
                entry.state = State::Waiting {
                    expires_at,
                    waiter,
                    invited: None,
                };
                self.record_failure(key, now);
                Err(JoinRefusal::NotFound)
            }
            State::Waiting { waiter, .. } => Ok(Pairing {
                id,
                consumer: entry.consumer.clone(),
                waiter,
            }),
        }
    }

    /// Whether `key` has `max_failures` failures within the window at `now` (without pruning).
    fn is_locked(&self, key: FailKey, now: Instant) -> bool {
        let window = self.config.failure_window;
        self.failures.get(&key).is_some_and(|times| {
            times
                .iter()
                .filter(|&&t| now.duration_since(t) < window)
                .count()
                >= self.config.max_failures
        })
    }

    fn recent_failures(&mut self, key: FailKey, now: Instant) -> usize {
        let window = self.config.failure_window;
        match self.failures.get_mut(&key) {
            Some(times) => {
                while times
                    .front()
                    .is_some_and(|&t| now.duration_since(t) >= window)
                {
                    times.pop_front();
                }
                times.len()
            }
            None => 0,
        }
    }

    fn record_failure(&mut self, key: FailKey, now: Instant) {
        if matches!(key, FailKey::Code(_))
            && !self.failures.contains_key(&key)
            && self.failures.len() >= MAX_FAILURE_KEYS
        {
            return;
        }
        let times = self.failures.entry(key).or_default();
        times.push_back(now);
        while times.len() > self.config.max_failures {
            times.pop_front();
        }
    }

    /// Removes session `id` if it is still waiting and its code has expired at `now`. Returns
    /// whether it did (false: an agent joined, or it is gone already).
    pub fn expire(&mut self, id: SessionId, now: Instant) -> bool {
        let expired = matches!(
            self.sessions.get(&id),
            Some(Entry { state: State::Waiting { expires_at, invited: None, .. }, .. })
                if *expires_at <= now
        );
        if expired {
            self.remove(id);
        }
        expired
    }

    /// Forgets session `id` and its code, token and resume tokens. Returns whether it existed.
    pub fn remove(&mut self, id: SessionId) -> bool {
        match self.sessions.remove(&id) {
            Some(entry) => {
                self.by_code.remove(&entry.code);
                self.by_token.remove(&entry.token);
                for token in entry.resume_tokens.into_iter().flatten() {
                    self.by_resume.remove(&token);
                }
                true
            }
            None => false,
        }
    }

    /// Draws a new single-use resume token for `side` of the paired session `id` (spec §3.5),
    /// replacing that side's previous one, and keeps `resumer` as where a resuming peer is
    /// handed. `None` when the session is gone or not paired.
    pub fn issue_resume(
        &mut self,
        id: SessionId,
        side: Side,
        resumer: P,
        random: &mut dyn FnMut(&mut [u8]) -> Result<(), RandomFailed>,
    ) -> Result<Option<String>, RandomFailed> {
        let Some(entry) = self.sessions.get_mut(&id) else {
            return Ok(None);
        };
        if !matches!(entry.state, State::Paired) {
            return Ok(None);
        }
        let mut bytes = [0u8; 16];
        random(&mut bytes)?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        if self.by_resume.contains_key(&token) {
            // 128 random bits never collide unless the random source is broken.
            return Err(RandomFailed);
        }
        if let Some(old) = entry.resume_tokens[side_index(side)].replace(token.clone()) {
            self.by_resume.remove(&old);
        }
        entry.resumer = Some(resumer);
        self.by_resume.insert(token.clone(), (id, side));
        Ok(Some(token))
    }

    /// A peer from `from`, connected as `side`, presents the resume token `token` (spec §3.5).
    /// The token is spent either way it matches; an unknown or spent token, or one of the other
    /// side, counts as a failed attempt of `from` like a wrong code, and is
    /// [`JoinRefusal::NotFound`]. On success, returns the session and where to hand the peer.
    pub fn resume(
        &mut self,
        now: Instant,
        from: IpAddr,
        side: Side,
        token: &str,
    ) -> Result<(SessionId, P), JoinRefusal>
    where
        P: Clone,
    {
        let source = FailKey::Source(SourceKey::of(from));
        if self.recent_failures(source, now) >= self.config.max_failures {
            return Err(JoinRefusal::RateLimited);
        }
        let found = match self.by_resume.get(token) {
            Some(&(id, s)) if s == side => Some(id),
            _ => None,
        };
        let resumer = found.and_then(|id| {
            let entry = self.sessions.get_mut(&id)?;
            entry.resume_tokens[side_index(side)].take();
            entry.resumer.clone().map(|r| (id, r))
        });
        match resumer {
            Some(found) => {
                self.by_resume.remove(token);
                Ok(found)
            }
            None => {
                self.record_failure(source, now);
                Err(JoinRefusal::NotFound)
            }
        }
    }

    /// Removes every waiting session whose code has expired (dropping its waiter, which tells
    /// the pump) and forgets failures older than the window. Returns the removed sessions.
    pub fn sweep(&mut self, now: Instant) -> Vec<SessionId> {
        let expired: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, e)| {
                matches!(e.state, State::Waiting { expires_at, invited: None, .. } if expires_at <= now)
            })
            .map(|(&id, _)| id)
            .collect();
        for &id in &expired {
            self.remove(id);
        }
        let window = self.config.failure_window;
        self.failures.retain(|_, times| {
            times
                .back()
                .is_some_and(|&t| now.duration_since(t) < window)
        });
        expired
    }

    /// The earliest instant at which [`SessionTable::sweep`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let codes = self.sessions.values().filter_map(|e| match e.state {
            State::Waiting {
                expires_at,
                invited: None,
                ..
            } => Some(expires_at),
            _ => None,
        });
        let failures = self
            .failures
            .values()
            .filter_map(|t| t.back().map(|&t| t + self.config.failure_window));
        codes.chain(failures).min()
    }

    /// Ends the pending invitation of `consumer_session` unanswered (declined, cancelled,
    /// expired, or one side gone): the customer's session waits again, and its code can be
    /// used (or expires) as before. Returns whether an invitation was pending.
    pub fn close_invitation(&mut self, consumer_session: SessionId) -> bool {
        match self.sessions.get_mut(&consumer_session) {
            Some(Entry {
                state: State::Waiting { invited, .. },
                ..
            }) => invited.take().is_some(),
            _ => false,
        }
    }

    /// The customer accepted invitation `invitation` of `consumer_session`: the session is
    /// paired (its code and token can no longer be used). Returns false when that invitation
    /// is not the one pending.
    pub fn accept_invitation(
        &mut self,
        consumer_session: SessionId,
        invitation: SessionId,
    ) -> bool {
        match self.sessions.get_mut(&consumer_session) {
            Some(entry) if matches!(entry.state, State::Waiting { invited: Some(i), .. } if i == invitation) =>
            {
                entry.state = State::Paired;
                true
            }
            _ => false,
        }
    }

    /// Sessions held (waiting or paired).
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether the table holds no session.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use tandem_protocol::message::Platform;

    /// A deterministic byte source: a counter run through a simple mixer.
    fn counter_random() -> impl FnMut(&mut [u8]) -> Result<(), RandomFailed> {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        move |buf: &mut [u8]| {
            for b in buf.iter_mut() {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                *b = (state >> 33) as u8;
            }
            Ok(())
        }
    }

    fn hello(min: u32, max: u32, role: Role) -> Hello {
        Hello {
            min_version: min,
            max_version: max,
            role,
            capabilities: Capabilities::DATAGRAMS | Capabilities::RESUME,
            platform: Platform::default(),
            software: "test".into(),
        }
    }

    fn info(label: &str) -> PeerInfo {
        PeerInfo {
            label: label.into(),
            platform: Platform::default(),
            capabilities: RELAY_CAPABILITIES,
        }
    }

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn negotiation_picks_highest_common_version_and_intersects() {
        let w = negotiate(&hello(1, 7, Role::Agent)).unwrap();
        assert_eq!(w.version, PROTOCOL_VERSION);
        assert_eq!(w.role, Role::Relay);
        // RESUME is the relay's too (spec §3.5); bits the relay lacks are dropped.
        assert_eq!(
            w.capabilities,
            Capabilities(Capabilities::DATAGRAMS.0 | Capabilities::RESUME.0)
        );
        assert_eq!(
            negotiate(&hello(2, 3, Role::Consumer)).unwrap_err().code,
            ErrorCode::VersionMismatch
        );
        assert_eq!(
            negotiate(&hello(1, 0, Role::Consumer)).unwrap_err().code,
            ErrorCode::VersionMismatch
        );
        assert_eq!(
            negotiate(&hello(1, 1, Role::Relay)).unwrap_err().code,
            ErrorCode::UnexpectedMessage
        );
    }

    #[test]
    fn control_frames_are_classified_by_type_only() {
        use ControlAction as A;
        let c = |ty| classify_control(Side::Consumer, ty);
        let a = |ty| classify_control(Side::Agent, ty);
        assert_eq!(c(FrameType::END), A::End);
        assert_eq!(a(FrameType::CLOSE), A::Close);
        assert_eq!(c(FrameType::PING), A::Ping);
        assert_eq!(a(FrameType::PONG), A::Ignore);
        assert_eq!(a(FrameType::ERROR), A::Ignore);
        assert_eq!(a(FrameType::HELLO), A::Violation);
        assert_eq!(c(FrameType::JOINED), A::Violation);
        assert_eq!(a(FrameType::JOIN), A::Refuse(ErrorCode::SessionBusy));
        assert_eq!(a(FrameType::INVITE), A::Refuse(ErrorCode::SessionBusy));
        assert_eq!(c(FrameType::JOIN), A::Refuse(ErrorCode::UnexpectedMessage));
        assert_eq!(
            c(FrameType::SESSION_OPEN),
            A::Refuse(ErrorCode::UnexpectedMessage)
        );
        for ty in [
            FrameType::ACK,
            FrameType::RESYNC,
            FrameType::MODE,
            FrameType::REFUSED,
            FrameType::STATUS,
            FrameType::PAUSE,
            FrameType::VIEWPORT,
            FrameType::ACCEPT,
            FrameType(0x1001),
            FrameType(0x1000),
        ] {
            assert_eq!(c(ty), A::Forward, "{ty}");
            assert_eq!(a(ty), A::Forward, "{ty}");
        }
    }

    /// A `PING` is answered only once its body decodes (spec §4.5, §7.30); one that does not is
    /// `MalformedFrame`, and the `PONG` is encoded anew, minimal.
    #[test]
    fn pings_are_answered_only_when_their_body_decodes() {
        let limits = Limits::DEFAULT;
        let ping = |body: &[u8]| RawFrame {
            ty: FrameType::PING,
            body: body.to_vec(),
        };
        let pong = |body: &[u8]| match consume(&ping(body), &limits) {
            Ok(Consumed::Ping(pong)) => Ok(pong),
            Ok(other) => panic!("a PING consumed as {other:?}"),
            Err(e) => Err(e),
        };
        let answer = pong(&[0x07]).unwrap();
        assert_eq!(answer.to_bytes(), [0x64, 0x01, 0x07]);
        // 2^64 − 1, the largest nonce (spec §4.2).
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(pong(&max).unwrap().body, max);
        // A non-minimal nonce is accepted and answered minimally (spec §4.2).
        assert_eq!(pong(&[0x87, 0x00]).unwrap().body, [0x07]);
        for (bad, what) in [
            (&[][..], "empty"),
            (&[0x80][..], "truncated"),
            (&[0x07, 0x00][..], "trailing bytes"),
            (&[0xff; 11][..], "nonce past 64 bits"),
        ] {
            let e = pong(bad).unwrap_err();
            assert_eq!(e.code(), ErrorCode::MalformedFrame, "{what}: {e}");
        }
    }

    /// The other frames the relay consumes, `PONG`, `ERROR`, `END` and `CLOSE`, are recognised
    /// too before the relay acts on them (spec §4.5): what they say comes back, and a body
    /// that does not decode is `MalformedFrame` (spec §9).
    #[test]
    fn consumed_frames_are_acted_on_only_when_their_body_decodes() {
        let limits = Limits::DEFAULT;
        let report = ErrorReport {
            code: ErrorCode::NoError,
            message: "bye".into(),
        };
        let good = [
            (
                Message::Pong(tandem_protocol::message::Ping { nonce: 9 }),
                Consumed::Ignored,
            ),
            (Message::Error(report.clone()), Consumed::Ignored),
            (
                Message::End(End {
                    reason: EndReason::EndedByAgent,
                }),
                Consumed::End(EndReason::EndedByAgent),
            ),
            (Message::Close(report.clone()), Consumed::Close(report)),
        ];
        for (msg, expected) in good {
            let ty = msg.frame_type();
            let mut body = Vec::new();
            msg.encode_body(&mut body).unwrap();
            let frame = |body: Vec<u8>| RawFrame { ty, body };
            assert_eq!(consume(&frame(body.clone()), &limits), Ok(expected), "{ty}");
            let mut trailing = body.clone();
            trailing.push(0x00);
            let truncated = body[..body.len() - 1].to_vec();
            for (bad, what) in [(trailing, "trailing bytes"), (truncated, "truncated")] {
                let e = consume(&frame(bad), &limits).unwrap_err();
                assert_eq!(e.code(), ErrorCode::MalformedFrame, "{ty} {what}: {e}");
            }
        }
        // The relay consumes no other frame: one given to `consume` is refused, not acted on.
        let ack = RawFrame {
            ty: FrameType::ACK,
            body: vec![0x01],
        };
        assert!(!Consumed::is_consumed(FrameType::ACK));
        assert!(consume(&ack, &limits).is_err());
    }

    /// A frame the relay refuses is recognised first (spec §4.5): one that decodes gets the
    /// `ERROR`, one that does not is `MalformedFrame`, whatever the refusal would have said.
    #[test]
    fn refused_frames_are_answered_only_when_their_body_decodes() {
        let limits = Limits::DEFAULT;
        let open = Message::SessionOpen(tandem_protocol::message::SessionOpen {
            label: "again".into(),
        });
        let mut body = Vec::new();
        open.encode_body(&mut body).unwrap();
        let frame = |body: Vec<u8>| RawFrame {
            ty: FrameType::SESSION_OPEN,
            body,
        };
        let error = refuse(
            &frame(body.clone()),
            &limits,
            ErrorCode::UnexpectedMessage,
            "not now",
        )
        .unwrap();
        assert_eq!(
            error.decode(&limits),
            Ok(Message::Error(ErrorReport {
                code: ErrorCode::UnexpectedMessage,
                message: "not now".into(),
            }))
        );
        let mut trailing = body.clone();
        trailing.push(0x00);
        for (bad, what) in [(trailing, "trailing bytes"), (vec![0x05], "truncated")] {
            let e = refuse(&frame(bad), &limits, ErrorCode::SessionBusy, "busy").unwrap_err();
            assert_eq!(e.code(), ErrorCode::MalformedFrame, "{what}: {e}");
        }
    }

    #[test]
    fn codes_are_six_digits_and_tokens_64_hex() {
        let mut table = SessionTable::new(TableConfig::default());
        let mut random = counter_random();
        let now = Instant::now();
        let mut codes = std::collections::HashSet::new();
        for _ in 0..200 {
            let o = table.open(now, info("c"), (), &mut random).unwrap();
            assert_eq!(o.code.len(), 6);
            assert!(o.code.bytes().all(|b| b.is_ascii_digit()));
            assert_eq!(o.token.len(), 64);
            assert!(o.token.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(codes.insert(o.code), "codes are unique among live sessions");
            assert_eq!(o.expires_at, now + Duration::from_secs(120));
        }
    }

    #[test]
    fn join_pairs_once_then_busy() {
        let mut table = SessionTable::new(TableConfig::default());
        let now = Instant::now();
        let o = table
            .open(now, info("customer"), 42u32, &mut counter_random())
            .unwrap();
        let p = table
            .join(now, IP, &Credential::Code(o.code.clone()))
            .unwrap();
        assert_eq!(
            (p.id, p.waiter, p.consumer.label.as_str()),
            (o.id, 42, "customer")
        );
        assert_eq!(
            table
                .join(now, IP, &Credential::Token(o.token))
                .unwrap_err(),
            JoinRefusal::Busy
        );
        assert!(
            !table.expire(o.id, now + Duration::from_secs(600)),
            "paired never expires"
        );
        assert!(table.remove(o.id));
        assert_eq!(
            table.join(now, IP, &Credential::Code(o.code)).unwrap_err(),
            JoinRefusal::NotFound
        );
    }

    #[test]
    fn resume_tokens_are_single_use_rotated_and_per_side() {
        let mut table = SessionTable::new(TableConfig::default());
        let mut random = counter_random();
        let now = Instant::now();
        let o = table.open(now, info("c"), 7u32, &mut random).unwrap();
        // Not paired yet: nothing to resume.
        assert_eq!(
            table.issue_resume(o.id, Side::Consumer, 9, &mut random),
            Ok(None)
        );
        table
            .join(now, IP, &Credential::Code(o.code.clone()))
            .unwrap();
        let first = table
            .issue_resume(o.id, Side::Consumer, 9, &mut random)
            .unwrap()
            .unwrap();
        assert_eq!(first.len(), 32, "128 bits in hex");
        let agent = table
            .issue_resume(o.id, Side::Agent, 9, &mut random)
            .unwrap()
            .unwrap();
        // A new token replaces the old one.
        let second = table
            .issue_resume(o.id, Side::Consumer, 9, &mut random)
            .unwrap()
            .unwrap();
        assert_ne!(first, second);
        assert_eq!(
            table.resume(now, IP, Side::Consumer, &first),
            Err(JoinRefusal::NotFound)
        );
        // The agent's token does not seat a consumer.
        assert_eq!(
            table.resume(now, IP, Side::Consumer, &agent),
            Err(JoinRefusal::NotFound)
        );
        assert_eq!(
            table.resume(now, IP, Side::Consumer, &second),
            Ok((o.id, 9))
        );
        // Spent.
        assert_eq!(
            table.resume(now, IP, Side::Consumer, &second),
            Err(JoinRefusal::NotFound)
        );
        // Failures count against the source like wrong codes.
        let other = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
        for _ in 0..5 {
            let _ = table.resume(now, other, Side::Agent, "nope");
        }
        assert_eq!(
            table.resume(now, other, Side::Agent, &agent),
            Err(JoinRefusal::RateLimited)
        );
        // An ended session takes its tokens along.
        assert!(table.remove(o.id));
        assert_eq!(
            table.resume(now, IP, Side::Agent, &agent),
            Err(JoinRefusal::NotFound)
        );
    }

    #[test]
    fn codes_expire_unused() {
        let mut table = SessionTable::new(TableConfig::default());
        let t0 = Instant::now();
        let o = table
            .open(t0, info("c"), (), &mut counter_random())
            .unwrap();
        assert_eq!(table.poll_timeout(), Some(o.expires_at));
        assert!(!table.expire(o.id, o.expires_at - Duration::from_millis(1)));
        assert_eq!(
            table
                .join(o.expires_at, IP, &Credential::Code(o.code.clone()))
                .unwrap_err(),
            JoinRefusal::NotFound
        );
        assert_eq!(table.sweep(o.expires_at), vec![o.id]);
        assert!(table.is_empty());
    }

    #[test]
    fn wrong_codes_are_rate_limited_per_source() {
        let mut table = SessionTable::new(TableConfig::default());
        let t0 = Instant::now();
        let o = table
            .open(t0, info("c"), (), &mut counter_random())
            .unwrap();
        let wrong = Credential::Code("abcdef".into());
        for _ in 0..5 {
            assert_eq!(
                table.join(t0, IP, &wrong).unwrap_err(),
                JoinRefusal::NotFound
            );
        }
        let right = Credential::Code(o.code.clone());
        assert_eq!(
            table.join(t0, IP, &right).unwrap_err(),
            JoinRefusal::RateLimited
        );
        // Another source is not affected; the same /64 in IPv6 is one source.
        let v6a = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1));
        let v6b = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 9, 9, 9, 9));
        for _ in 0..5 {
            assert_eq!(
                table.join(t0, v6a, &wrong).unwrap_err(),
                JoinRefusal::NotFound
            );
        }
        assert_eq!(
            table.join(t0, v6b, &wrong).unwrap_err(),
            JoinRefusal::RateLimited
        );
        // A minute later the first source may try again.
        let later = t0 + Duration::from_secs(60);
        assert!(table.join(later, IP, &right).is_ok());
        table.sweep(later);
        assert!(table.failures.is_empty());
    }

    #[test]
    fn full_table_refuses_open() {
        let mut table = SessionTable::new(TableConfig {
            max_sessions: 1,
            ..TableConfig::default()
        });
        let now = Instant::now();
        let mut random = counter_random();
        table.open(now, info("a"), (), &mut random).unwrap();
        assert_eq!(
            table.open(now, info("b"), (), &mut random).unwrap_err(),
            OpenError::Full
        );
        let mut broken = |_: &mut [u8]| Err(RandomFailed);
        let mut table = SessionTable::new(TableConfig::default());
        assert_eq!(
            table.open(now, info("a"), (), &mut broken).unwrap_err(),
            OpenError::Random
        );
    }

    #[test]
    fn joined_carries_the_other_side_and_shared_capabilities() {
        let consumer = PeerInfo {
            capabilities: Capabilities::DATAGRAMS | Capabilities::COMPRESSION,
            ..info("customer")
        };
        let agent = PeerInfo {
            capabilities: Capabilities::DATAGRAMS,
            ..info("alice")
        };
        let (to_consumer, to_agent) = joined_messages(&consumer, &agent);
        assert_eq!(
            (to_consumer.peer_role, to_consumer.peer_label.as_str()),
            (Role::Agent, "alice")
        );
        assert_eq!(
            (to_agent.peer_role, to_agent.peer_label.as_str()),
            (Role::Consumer, "customer")
        );
        assert_eq!(to_consumer.capabilities, Capabilities::DATAGRAMS);
        assert_eq!(to_agent.capabilities, Capabilities::DATAGRAMS);
    }

    #[test]
    fn teardown_tells_each_side_the_right_thing() {
        let t = teardown(&Outcome::Ended {
            side: Side::Consumer,
            reason: EndReason::EndedByConsumer,
        });
        assert_eq!(t.reason, EndReason::EndedByConsumer);
        assert!(matches!(
            t.to_agent.as_slice(),
            [
                Message::End(End {
                    reason: EndReason::EndedByConsumer
                }),
                Message::Close(ErrorReport {
                    code: ErrorCode::SessionEnded,
                    ..
                })
            ]
        ));
        assert!(matches!(
            t.to_consumer.as_slice(),
            [Message::Close(ErrorReport {
                code: ErrorCode::NoError,
                ..
            })]
        ));

        let t = teardown(&Outcome::Lost(Side::Agent));
        assert!(t.to_agent.is_empty());
        assert!(matches!(
            t.to_consumer.as_slice(),
            [
                Message::End(End {
                    reason: EndReason::ConnectionLost
                }),
                Message::Close(_)
            ]
        ));

        let t = teardown(&Outcome::Violation {
            side: Side::Agent,
            code: ErrorCode::LimitExceeded,
            detail: "too big".into(),
        });
        assert!(matches!(
            t.to(Side::Agent),
            [Message::Close(ErrorReport {
                code: ErrorCode::LimitExceeded,
                ..
            })]
        ));
        assert!(matches!(
            t.to(Side::Consumer),
            [
                Message::End(End {
                    reason: EndReason::ConnectionLost
                }),
                Message::Close(_)
            ]
        ));
        let t = teardown(&Outcome::Shutdown);
        assert_eq!((t.to_agent.len(), t.to_consumer.len()), (2, 2));
    }
}
