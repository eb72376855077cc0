//! The relay's answer to `PING` (spec §7.30) in every state a peer can be in: before a session,
//! waiting for an agent, inviting a customer, in a live session, and staying while the other
//! side is away. A `PING` whose body decodes gets a `PONG` with its nonce; one whose body does
//! not (truncated, with trailing bytes) is a protocol violation, answered with `CLOSE
//! MalformedFrame` and the end of the connection, never with a `PONG` (spec §4.5, §9).
//!
//!
//! The other frames the relay consumes itself, `PONG`, `ERROR`, `END` and `CLOSE`, are
//! recognised the same way in each state before the relay acts on them: one whose body does not
//! decode is closed with `CLOSE MalformedFrame` too, whatever its type says. So are the requests
//! the relay answers while an agent's invitation is pending (`CANCEL`, `INVITE`, `JOIN`): one
//! that does not decode is a violation, not a request to refuse with `ERROR`.
//! Likewise the customer's answer to an invitation (`ACCEPT`, `DECLINE`): one that does not
//! decode closes the consumer, and the agent is told the customer is lost. And any frame the
//! relay refuses with `ERROR` in some state (a request it cannot grant, an end-to-end message
//! with no receiver yet) is decoded first in every state: one that does not decode is closed
//! with `CLOSE MalformedFrame`, not refused. A message only the relay sends (or a second
//! `HELLO`) is no request to refuse either: it is closed with `CLOSE UnexpectedMessage` in every
//! state, an inviting agent's included.
//!
//! No test sleeps: every wait is for an event, with a timeout only as a failure guard.

mod common;

use std::time::Duration;

use common::{channel, guard};
use tandem_peers::client::ControlChannel;
use tandem_peers::relay::{RelayEvent, RelayHandle};
use tandem_protocol::message::{
    Capabilities, Credential, End, EndReason, ErrorReport, InvitationRef, Invite, Join, Joined,
    Ping, Platform, Role, SessionCreated, SessionOpen, Welcome,
};
use tandem_protocol::{ErrorCode, FrameType, Limits, Message, RawFrame};

/// A `PING` body that ends inside its nonce's varint (`Malformed … UnexpectedEnd`).
const TRUNCATED: &[u8] = &[0x80];
/// A `PING` body with a byte after its nonce (`TrailingBytes`).
const TRAILING: &[u8] = &[0x07, 0x00];
/// A `PING` with no body at all (`Malformed … UnexpectedEnd`).
const EMPTY: &[u8] = &[];

fn ping(body: &[u8]) -> RawFrame {
    RawFrame {
        ty: FrameType::PING,
        body: body.to_vec(),
    }
}

/// Sends a well-formed `PING` and expects the relay's next frame to be its `PONG`.
async fn ping_is_answered(ctl: &mut ControlChannel, nonce: u64) {
    ctl.send(&Message::Ping(Ping { nonce }))
        .await
        .expect("sent");
    assert_eq!(
        guard("PONG", ctl.recv()).await.expect("readable"),
        Some(Message::Pong(Ping { nonce }))
    );
}

/// Sends a `PING` with `body`, which does not decode, and expects the relay's next frame to be
/// `CLOSE MalformedFrame` and the relay to close the connection with that code (spec §3.3;
/// the `CLOSE` is read raw, so that this side does not close first).
async fn bad_ping_is_closed(ctl: &mut ControlChannel, body: &[u8]) {
    bad_frame_is_closed(ctl, &ping(body)).await;
}

/// A `PONG`, an `ERROR`, an `END` and a `CLOSE` whose bodies do not decode: each is its
/// message's body with a byte after the last field (`TrailingBytes`).
fn bad_consumed_frames() -> Vec<RawFrame> {
    let report = ErrorReport {
        code: ErrorCode::NoError,
        message: "bye".into(),
    };
    [
        Message::Pong(Ping { nonce: 7 }),
        Message::Error(report.clone()),
        Message::End(End {
            reason: EndReason::EndedByConsumer,
        }),
        Message::Close(report),
    ]
    .iter()
    .map(|msg| {
        let mut body = Vec::new();
        msg.encode_body(&mut body).expect("encodes");
        body.push(0x00);
        RawFrame {
            ty: msg.frame_type(),
            body,
        }
    })
    .collect()
}

/// Sends `frame`, which does not decode, and expects the relay's next frame to be `CLOSE
/// MalformedFrame` and the relay to close the connection with that code (spec §3.3; the
/// `CLOSE` is read raw, so that this side does not close first).
async fn bad_frame_is_closed(ctl: &mut ControlChannel, frame: &RawFrame) {
    frame_is_closed(ctl, frame, ErrorCode::MalformedFrame).await;
}

/// Sends `frame` and expects the relay's next frame to be `CLOSE` with `code` and the relay to
/// close the connection with that code.
async fn frame_is_closed(ctl: &mut ControlChannel, frame: &RawFrame, code: ErrorCode) {
    ctl.send_raw(frame).await.expect("sent");
    let (ty, body) = (frame.ty, &frame.body);
    let answer = guard("CLOSE", ctl.recv_raw()).await.expect("readable");
    match answer.map(|f| f.decode(&Limits::DEFAULT)) {
        Some(Ok(Message::Close(report))) => {
            assert_eq!(report.code, code, "{ty}: {}", report.message);
        }
        other => panic!("expected CLOSE {code:?} for {ty} {body:02x?}, got {other:?}"),
    }
    match guard("the relay closes", ctl.connection().closed()).await {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, tandem_peers::framed::quic_code(code))
        }
        other => panic!("expected the relay to close {ty} with {code:?}, got {other:?}"),
    }
}

/// Expects `ctl`'s next message to be `CANCEL` of `invitation` (`what`: for the failure message).
async fn told_cancel(ctl: &mut ControlChannel, invitation: u64, what: impl std::fmt::Display) {
    let told = guard("CANCEL", ctl.recv()).await.expect("readable");
    assert!(
        matches!(told, Some(Message::Cancel(ref r)) if r.invitation == invitation),
        "{what}: {told:?}"
    );
}

/// Expects `ctl`'s next message to be `END ConnectionLost`: its peer is gone.
async fn told_lost(ctl: &mut ControlChannel, what: impl std::fmt::Display) {
    assert_eq!(
        guard("END", ctl.recv()).await.expect("readable"),
        Some(Message::End(End {
            reason: EndReason::ConnectionLost
        })),
        "{what}"
    );
}

/// Expects `ctl`'s next message to be `ERROR UnexpectedMessage`, the answer to `what`.
async fn refused_unexpected(ctl: &mut ControlChannel, what: impl std::fmt::Display) {
    match guard("ERROR", ctl.recv()).await.expect("readable") {
        Some(Message::Error(report)) => assert_eq!(
            report.code,
            ErrorCode::UnexpectedMessage,
            "{what}: {}",
            report.message
        ),
        other => panic!("expected ERROR UnexpectedMessage for {what}, got {other:?}"),
    }
}

/// The next `ended` event's reason.
async fn ended(events: &mut tokio::sync::broadcast::Receiver<RelayEvent>) -> String {
    guard("the ended event", async {
        loop {
            if let Ok(RelayEvent::Ended { reason, .. }) = events.recv().await {
                return reason;
            }
        }
    })
    .await
}

/// A greeted peer that has no session yet.
#[tokio::test]
async fn before_a_session() {
    let relay = common::start_relay(|_| {});
    let mut agent = channel(&relay, Role::Agent).await;
    ping_is_answered(&mut agent, 1).await;
    bad_ping_is_closed(&mut agent, TRUNCATED).await;
    relay.shutdown().await;
}

/// The `PONG` is the relay's own encoding of the nonce, not the body echoed: a non-minimal
/// varint, which a decoder may accept (spec §4.2), goes back minimal, as encoders must write.
#[tokio::test]
async fn the_pong_carries_the_nonce_minimally_encoded() {
    let relay = common::start_relay(|_| {});
    let mut agent = channel(&relay, Role::Agent).await;
    agent.send_raw(&ping(&[0x87, 0x00])).await.expect("sent");
    assert_eq!(
        guard("PONG", agent.recv_raw()).await.expect("readable"),
        Some(RawFrame {
            ty: FrameType::PONG,
            body: vec![0x07],
        })
    );
    relay.shutdown().await;
}

/// A consumer that opened a session and waits for an agent; its session ends.
#[tokio::test]
async fn waiting_for_an_agent() {
    let relay = common::start_relay(|_| {});
    let mut events = relay.subscribe();
    let mut consumer = channel(&relay, Role::Consumer).await;
    let created = guard("session", consumer.open_session("Customer"))
        .await
        .expect("created");
    ping_is_answered(&mut consumer, 2).await;
    bad_ping_is_closed(&mut consumer, TRAILING).await;
    assert_eq!(ended(&mut events).await, "connection_lost");
    // The session is gone with it.
    let mut agent = channel(&relay, Role::Agent).await;
    let joined = guard("join", agent.join(Credential::Code(created.code), "Alex")).await;
    assert!(joined.is_err(), "{joined:?}");
    relay.shutdown().await;
}

/// An agent whose invitation the customer has not answered yet: the customer is told the
/// invitation is withdrawn (`CANCEL`) and keeps waiting.
#[tokio::test]
async fn inviting_a_customer() {
    let (relay, mut consumer, mut agent) = invitation(4).await;
    ping_is_answered(&mut agent, 3).await;
    bad_ping_is_closed(&mut agent, EMPTY).await;
    told_cancel(&mut consumer, 4, "a PING that does not decode").await;
    ping_is_answered(&mut consumer, 4).await;
    relay.shutdown().await;
}

/// A live session: the offender gets `CLOSE MalformedFrame`, the other side `END
/// ConnectionLost` (spec §9: a violation ends the session).
#[tokio::test]
async fn in_a_live_session() {
    let relay = common::start_relay(|_| {});
    let (mut consumer, mut agent) = paired(&relay).await;
    ping_is_answered(&mut agent, 5).await;
    bad_ping_is_closed(&mut agent, TRUNCATED).await;
    told_lost(&mut consumer, "a PING that does not decode").await;
    relay.shutdown().await;
}

/// A resumable session whose consumer's connection is gone: the agent, which stayed, is still
/// answered while the relay waits for the consumer (spec §3.5), and closed when its `PING`
/// does not decode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_other_side_is_away() {
    let relay = common::start_relay(|c| c.table.resume_grace = Duration::from_secs(30));
    let mut events = relay.subscribe();
    let mut agent = away(&relay, &mut events).await;
    ping_is_answered(&mut agent, 6).await;
    bad_ping_is_closed(&mut agent, TRAILING).await;
    // Well inside the grace period: the violation ends the session at once.
    assert_eq!(ended(&mut events).await, "connection_lost");
    relay.shutdown().await;
}

/// The other frames the relay consumes, before a session: a `CLOSE` that does not decode is
/// no `CLOSE` (the relay answers it like any malformed frame) and an `END` that does not decode
/// ends nothing (spec §4.5, §7.34).
#[tokio::test]
async fn consumed_frames_before_a_session() {
    let relay = common::start_relay(|_| {});
    for frame in bad_consumed_frames() {
        let mut agent = channel(&relay, Role::Agent).await;
        ping_is_answered(&mut agent, 11).await;
        bad_frame_is_closed(&mut agent, &frame).await;
    }
    relay.shutdown().await;
}

/// The other frames the relay consumes, from a consumer waiting for an agent: the session is
/// lost, not ended by the consumer.
#[tokio::test]
async fn consumed_frames_while_waiting_for_an_agent() {
    let relay = common::start_relay(|_| {});
    let mut events = relay.subscribe();
    for frame in bad_consumed_frames() {
        let mut consumer = channel(&relay, Role::Consumer).await;
        guard("session", consumer.open_session("Customer"))
            .await
            .expect("created");
        bad_frame_is_closed(&mut consumer, &frame).await;
        assert_eq!(ended(&mut events).await, "connection_lost", "{}", frame.ty);
    }
    relay.shutdown().await;
}

/// The other frames the relay consumes, from an agent whose invitation is pending: the
/// customer is told `CANCEL` and keeps waiting.
#[tokio::test]
async fn consumed_frames_while_inviting() {
    let relay = common::start_relay(|_| {});
    let mut consumer = waiting(&relay).await;
    for (n, frame) in (10..).zip(bad_consumed_frames()) {
        let mut agent = invited(&relay, &mut consumer, n).await;
        bad_frame_is_closed(&mut agent, &frame).await;
        told_cancel(&mut consumer, n, frame.ty).await;
    }
    ping_is_answered(&mut consumer, 12).await;
    relay.shutdown().await;
}

/// The other frames the relay consumes, in a live session: the offender gets `CLOSE
/// MalformedFrame`, the other side `END ConnectionLost`.
#[tokio::test]
async fn consumed_frames_in_a_live_session() {
    let relay = common::start_relay(|_| {});
    for frame in bad_consumed_frames() {
        let (mut consumer, mut agent) = paired(&relay).await;
        bad_frame_is_closed(&mut agent, &frame).await;
        told_lost(&mut consumer, frame.ty).await;
    }
    relay.shutdown().await;
}

/// The other frames the relay consumes, from the side that stayed while the other is away:
/// the session ends at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumed_frames_while_the_other_side_is_away() {
    let relay = common::start_relay(|c| c.table.resume_grace = Duration::from_secs(30));
    let mut events = relay.subscribe();
    for frame in bad_consumed_frames() {
        let mut agent = away(&relay, &mut events).await;
        bad_frame_is_closed(&mut agent, &frame).await;
        assert_eq!(ended(&mut events).await, "connection_lost", "{}", frame.ty);
    }
    relay.shutdown().await;
}

/// A paired session with `RESUME` whose consumer's connection was cut without `CLOSE` and
/// noticed by the relay: the agent's channel.
async fn away(
    relay: &RelayHandle,
    events: &mut tokio::sync::broadcast::Receiver<RelayEvent>,
) -> ControlChannel {
    let mut consumer = channel(relay, Role::Consumer).await;
    let created = guard("session", consumer.open_session("Customer"))
        .await
        .expect("created");
    let mut agent = channel(relay, Role::Agent).await;
    let joined = guard("join", agent.join(Credential::Code(created.code), "Alex"))
        .await
        .expect("joined");
    assert!(!joined.resume_token.is_empty(), "the session is resumable");
    guard("joined", consumer.wait_joined())
        .await
        .expect("joined");
    consumer.connection().close(0u32.into(), b"gone");
    guard("the relay notices", async {
        while !matches!(events.recv().await, Ok(RelayEvent::Disconnected { .. })) {}
    })
    .await;
    agent
}

/// A consumer of `relay` with an open session under the target "visitor-7", waiting.
async fn waiting(relay: &RelayHandle) -> ControlChannel {
    let mut consumer = channel(relay, Role::Consumer).await;
    guard("session", consumer.open_session("visitor-7"))
        .await
        .expect("created");
    consumer
}

/// A new relay, a consumer waiting there as "visitor-7" and an agent whose `INVITE`
/// `invitation` it has been shown: (relay, consumer, agent).
async fn invitation(invitation: u64) -> (RelayHandle, ControlChannel, ControlChannel) {
    let relay = common::start_relay(|_| {});
    let mut consumer = waiting(&relay).await;
    let agent = invited(&relay, &mut consumer, invitation).await;
    (relay, consumer, agent)
}

/// A consumer waiting under `target` that has been shown the `INVITE` `invitation` of a new
/// agent: the agent's channel.
async fn invited(
    relay: &RelayHandle,
    consumer: &mut ControlChannel,
    invitation: u64,
) -> ControlChannel {
    let mut agent = channel(relay, Role::Agent).await;
    let invite = Message::Invite(Invite {
        invitation,
        target: "visitor-7".into(),
        agent_label: "Alex".into(),
        expires_ms: 120_000,
    });
    agent.send(&invite).await.expect("sent");
    let shown = guard("INVITE", consumer.recv()).await.expect("readable");
    assert!(
        matches!(shown, Some(Message::Invite(ref i)) if i.invitation == invitation),
        "{shown:?}"
    );
    agent
}

/// `msg`'s frame with a byte after its last field (`TrailingBytes`).
fn trailing(msg: &Message) -> RawFrame {
    let mut body = Vec::new();
    msg.encode_body(&mut body).expect("encodes");
    body.push(0x00);
    RawFrame {
        ty: msg.frame_type(),
        body,
    }
}

/// Sends `frame`, which does not decode, from an agent whose invitation is pending: the agent
/// is closed with `CLOSE MalformedFrame`, the customer is told `CANCEL` and keeps waiting.
async fn bad_request_while_inviting(frame: RawFrame) {
    closed_while_inviting(frame, ErrorCode::MalformedFrame).await;
}

/// Sends `frame` from an agent whose invitation is pending: the agent is closed with `CLOSE`
/// and `code`, the customer is told `CANCEL` and keeps waiting.
async fn closed_while_inviting(frame: RawFrame, code: ErrorCode) {
    let (relay, mut consumer, mut agent) = invitation(20).await;
    frame_is_closed(&mut agent, &frame, code).await;
    told_cancel(&mut consumer, 20, frame.ty).await;
    ping_is_answered(&mut consumer, 21).await;
    relay.shutdown().await;
}

/// A `CANCEL` whose body does not decode names no invitation at all: it is a malformed frame
/// (spec §4.5), not a `CANCEL` of some other invitation.
#[tokio::test]
async fn a_cancel_that_does_not_decode_while_inviting() {
    let cancel = Message::Cancel(InvitationRef { invitation: 20 });
    bad_request_while_inviting(trailing(&cancel)).await;
}

/// An `INVITE` whose body does not decode, from an agent whose invitation is pending, is a
/// malformed frame, not a second invitation refused as `SessionBusy`.
#[tokio::test]
async fn an_invite_that_does_not_decode_while_inviting() {
    let invite = Message::Invite(Invite {
        invitation: 21,
        target: "visitor-7".into(),
        agent_label: "Alex".into(),
        expires_ms: 120_000,
    });
    bad_request_while_inviting(trailing(&invite)).await;
}

/// A `JOIN` whose body does not decode, from an agent whose invitation is pending, is a
/// malformed frame, not a join refused as `SessionBusy`.
#[tokio::test]
async fn a_join_that_does_not_decode_while_inviting() {
    let join = Message::Join(Join {
        credential: Credential::Code("ABC-123".into()),
        label: "Alex".into(),
    });
    bad_request_while_inviting(trailing(&join)).await;
}

/// A `CANCEL` that decodes but names another invitation is a wrong request: `ERROR
/// UnexpectedMessage`, and the invitation stays pending until the right `CANCEL`.
#[tokio::test]
async fn a_cancel_of_another_invitation_while_inviting() {
    let (relay, mut consumer, mut agent) = invitation(30).await;
    agent
        .send(&Message::Cancel(InvitationRef { invitation: 31 }))
        .await
        .expect("sent");
    refused_unexpected(&mut agent, "a CANCEL of invitation 31").await;
    ping_is_answered(&mut agent, 32).await;
    agent.cancel(30).await.expect("sent");
    told_cancel(&mut consumer, 30, "the right CANCEL").await;
    relay.shutdown().await;
}

/// Sends `answer`, which does not decode, from a customer who has been shown an invitation: the
/// consumer is closed with `CLOSE MalformedFrame` and its session is lost; the agent is told
/// `END ConnectionLost`, as when the customer's link goes (spec §7.7), and is free again.
async fn bad_answer_while_invited(answer: RawFrame) {
    let (relay, mut consumer, mut agent) = invitation(40).await;
    bad_frame_is_closed(&mut consumer, &answer).await;
    told_lost(&mut agent, answer.ty).await;
    ping_is_answered(&mut agent, 41).await;
    relay.shutdown().await;
}

/// An `ACCEPT` whose body does not decode accepts nothing: the consumer broke the protocol.
#[tokio::test]
async fn an_accept_that_does_not_decode_while_invited() {
    let accept = Message::Accept(InvitationRef { invitation: 40 });
    bad_answer_while_invited(trailing(&accept)).await;
}

/// A `DECLINE` whose body does not decode declines nothing: the consumer broke the protocol.
#[tokio::test]
async fn a_decline_that_does_not_decode_while_invited() {
    let decline = Message::Decline(InvitationRef { invitation: 40 });
    bad_answer_while_invited(trailing(&decline)).await;
}

/// A consumer and an agent paired by code: (consumer, agent).
async fn paired(relay: &RelayHandle) -> (ControlChannel, ControlChannel) {
    let mut consumer = channel(relay, Role::Consumer).await;
    let created = guard("session", consumer.open_session("Customer"))
        .await
        .expect("created");
    let mut agent = channel(relay, Role::Agent).await;
    guard("join", agent.join(Credential::Code(created.code), "Alex"))
        .await
        .expect("joined");
    guard("joined", consumer.wait_joined())
        .await
        .expect("joined");
    (consumer, agent)
}

/// The requests the relay refuses with `ERROR` in a session, waiting or live: a second
/// `SESSION_OPEN`, a `JOIN`, an `INVITE`.
fn requests() -> [Message; 3] {
    [
        Message::SessionOpen(SessionOpen {
            label: "again".into(),
        }),
        Message::Join(Join {
            credential: Credential::Code("123456".into()),
            label: "Alex".into(),
        }),
        Message::Invite(Invite {
            invitation: 50,
            target: "visitor-7".into(),
            agent_label: "Alex".into(),
            expires_ms: 120_000,
        }),
    ]
}

/// Before a session the relay decodes every request before it answers: a `PAUSE` from an agent
/// that does not decode is closed, not refused (the reference for the states below).
#[tokio::test]
async fn a_refused_frame_that_does_not_decode_before_a_session() {
    let relay = common::start_relay(|_| {});
    let mut agent = channel(&relay, Role::Agent).await;
    bad_frame_is_closed(&mut agent, &trailing(&Message::Pause(()))).await;
    relay.shutdown().await;
}

/// A request the relay would refuse from a consumer waiting for an agent, whose body does not
/// decode, is a malformed frame (spec §4.5), not a request to answer with `ERROR`: the session
/// is lost.
#[tokio::test]
async fn a_refused_frame_that_does_not_decode_while_waiting_for_an_agent() {
    let relay = common::start_relay(|_| {});
    let mut events = relay.subscribe();
    for msg in requests() {
        let mut consumer = channel(&relay, Role::Consumer).await;
        guard("session", consumer.open_session("Customer"))
            .await
            .expect("created");
        bad_frame_is_closed(&mut consumer, &trailing(&msg)).await;
        assert_eq!(
            ended(&mut events).await,
            "connection_lost",
            "{}",
            msg.name()
        );
    }
    relay.shutdown().await;
}

/// A frame with no receiver before the customer accepts (an end-to-end `PAUSE`, a
/// `SESSION_OPEN`), from an agent whose invitation is pending, whose body does not decode: a
/// malformed frame, not one refused with `ERROR UnexpectedMessage`.
#[tokio::test]
async fn a_refused_frame_that_does_not_decode_while_inviting() {
    bad_request_while_inviting(trailing(&Message::Pause(()))).await;
    let [open, ..] = requests();
    bad_request_while_inviting(trailing(&open)).await;
}

/// A request the relay refuses in a live session (an agent's `JOIN` or `INVITE`, a consumer's
/// `SESSION_OPEN`), whose body does not decode: the offender gets `CLOSE MalformedFrame`, the
/// other side `END ConnectionLost`.
#[tokio::test]
async fn a_refused_frame_that_does_not_decode_in_a_live_session() {
    let relay = common::start_relay(|_| {});
    let [open, join, invite] = requests();
    for (msg, from_agent) in [(join, true), (invite, true), (open, false)] {
        let (mut consumer, mut agent) = paired(&relay).await;
        let (offender, other) = if from_agent {
            (&mut agent, &mut consumer)
        } else {
            (&mut consumer, &mut agent)
        };
        bad_frame_is_closed(offender, &trailing(&msg)).await;
        told_lost(other, msg.name()).await;
    }
    relay.shutdown().await;
}

/// A request the relay refuses, from the side that stayed while the other is away, whose body
/// does not decode: the session ends at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_frame_that_does_not_decode_while_the_other_side_is_away() {
    let relay = common::start_relay(|c| c.table.resume_grace = Duration::from_secs(30));
    let mut events = relay.subscribe();
    let [_, join, invite] = requests();
    for msg in [join, invite] {
        let mut agent = away(&relay, &mut events).await;
        bad_frame_is_closed(&mut agent, &trailing(&msg)).await;
        assert_eq!(
            ended(&mut events).await,
            "connection_lost",
            "{}",
            msg.name()
        );
    }
    relay.shutdown().await;
}

/// A message only the relay sends, or a second `HELLO`, from an agent whose invitation is
/// pending: a violation (spec §4.3, §9), closed with `CLOSE UnexpectedMessage` as before a
/// session and in a live session, not refused with `ERROR`.
#[tokio::test]
async fn a_relay_only_message_while_inviting() {
    let capabilities = Capabilities(0);
    for msg in [
        Message::Hello(tandem_peers::client::hello(Role::Agent)),
        Message::Welcome(Welcome {
            version: 1,
            role: Role::Relay,
            capabilities,
            software: "test".into(),
        }),
        Message::SessionCreated(SessionCreated {
            code: "123456".into(),
            token: "00".into(),
            expires_ms: 120_000,
        }),
        Message::Joined(Joined {
            peer_role: Role::Consumer,
            peer_label: "visitor-7".into(),
            peer_platform: Platform::default(),
            capabilities,
            resume_token: String::new(),
        }),
    ] {
        let mut body = Vec::new();
        msg.encode_body(&mut body).expect("encodes");
        let frame = RawFrame {
            ty: msg.frame_type(),
            body,
        };
        closed_while_inviting(frame, ErrorCode::UnexpectedMessage).await;
    }
}

/// A well-formed frame with no receiver before the customer accepts (an end-to-end `PAUSE`, a
/// `SESSION_OPEN`), from an agent whose invitation is pending, is refused with `ERROR
/// UnexpectedMessage` (spec §7.7, §9): the connection stays open and the invitation pending.
#[tokio::test]
async fn a_frame_with_no_receiver_while_inviting_is_refused() {
    let (relay, mut consumer, mut agent) = invitation(60).await;
    let [open, ..] = requests();
    for (n, msg) in (61..).zip([Message::Pause(()), open]) {
        agent.send(&msg).await.expect("sent");
        refused_unexpected(&mut agent, msg.name()).await;
        ping_is_answered(&mut agent, n).await;
    }
    agent.cancel(60).await.expect("sent");
    told_cancel(&mut consumer, 60, "the CANCEL").await;
    relay.shutdown().await;
}

/// A customer cannot pause or resume a session nobody has joined (spec §13.1: no such
/// transition): `PAUSE` and `RESUME` while waiting get `ERROR UnexpectedMessage`, the session
/// stays, and the agent who then joins is not told of a pause; one that does not decode is
/// closed as malformed.
#[tokio::test]
async fn pause_before_anyone_joined_is_refused() {
    let relay = common::start_relay(|_| {});
    let mut consumer = channel(&relay, Role::Consumer).await;
    let created = guard("session", consumer.open_session("Customer"))
        .await
        .expect("created");
    for (n, msg) in (70..).zip([Message::Pause(()), Message::Resume(())]) {
        consumer.send(&msg).await.expect("sent");
        refused_unexpected(&mut consumer, msg.name()).await;
        ping_is_answered(&mut consumer, n).await;
    }
    let mut agent = channel(&relay, Role::Agent).await;
    guard("join", agent.join(Credential::Code(created.code), "Alex"))
        .await
        .expect("joined");
    guard("joined", consumer.wait_joined())
        .await
        .expect("joined");
    // Nothing was held for the agent: the first thing it hears is the customer's next message.
    consumer.send(&Message::Resume(())).await.expect("sent");
    let first = guard("forwarded", agent.recv()).await.expect("readable");
    assert!(matches!(first, Some(Message::Resume(()))), "{first:?}");
    relay.shutdown().await;

    let relay = common::start_relay(|_| {});
    let mut consumer = channel(&relay, Role::Consumer).await;
    guard("session", consumer.open_session("Customer"))
        .await
        .expect("created");
    bad_frame_is_closed(&mut consumer, &trailing(&Message::Pause(()))).await;
    relay.shutdown().await;
}
