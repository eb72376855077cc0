//! The relay over real QUIC on 127.0.0.1: pairing, byte-identical forwarding of streams,
//! control frames and datagrams, refusals, pinning and session endings.
//!
//! No test sleeps: every wait is for an event, with a timeout only as a failure guard.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{channel, guard, guard_within};
use tandem_peers::client::{self, ClientError, ControlChannel};
use tandem_peers::framed::{FrameRecv, write_message, write_raw};
use tandem_peers::relay::{RelayEvent, RelayHandle};
use tandem_peers::transport::{self, Fingerprint, Identity, TransportError};
use tandem_protocol::message::{
    Ack, Capabilities, Click, Credential, End, EndReason, Hello, Mode, ModeChange, ModeOp, Ping,
    Pointer, Role, Status,
};
use tandem_protocol::{ErrorCode, FrameType, Limits, Message, RawFrame};

fn start_relay() -> RelayHandle {
    common::start_relay(|_| {})
}

/// A consumer with an open session and an agent joined to it by code.
async fn paired(relay: &RelayHandle) -> (ControlChannel, ControlChannel) {
    let mut consumer = channel(relay, Role::Consumer).await;
    let created = guard("session", consumer.open_session("Customer"))
        .await
        .expect("session created");
    let mut agent = channel(relay, Role::Agent).await;
    let about_consumer = guard("join", agent.join(Credential::Code(created.code), "Alice"))
        .await
        .expect("joined");
    assert_eq!(about_consumer.peer_role, Role::Consumer);
    assert_eq!(about_consumer.peer_label, "Customer");
    let about_agent = guard("joined", consumer.wait_joined())
        .await
        .expect("consumer told");
    assert_eq!(about_agent.peer_role, Role::Agent);
    assert_eq!(about_agent.peer_label, "Alice");
    assert!(about_agent.capabilities.contains(Capabilities::DATAGRAMS));
    (consumer, agent)
}

fn expect_closed(result: Result<impl std::fmt::Debug, ClientError>, code: ErrorCode) {
    match result {
        Err(ClientError::Closed { code: got, .. }) => assert_eq!(got, code),
        other => panic!("expected CLOSE {code:?}, got {other:?}"),
    }
}

fn expect_refused(result: Result<impl std::fmt::Debug, ClientError>, code: ErrorCode) {
    match result {
        Err(ClientError::Refused { code: got, .. }) => assert_eq!(got, code),
        other => panic!("expected ERROR {code:?}, got {other:?}"),
    }
}

/// Reads control messages until `END`, then expects the `CLOSE` after it.
async fn expect_end(ctl: &mut ControlChannel) -> EndReason {
    let reason = loop {
        match guard("END", ctl.recv()).await.expect("control readable") {
            Some(Message::End(End { reason })) => break reason,
            Some(_) => continue,
            None => panic!("control stream ended without END"),
        }
    };
    match guard("CLOSE", ctl.recv()).await.expect("control readable") {
        Some(Message::Close(report)) => assert_eq!(report.code, ErrorCode::SessionEnded),
        other => panic!("expected CLOSE after END, got {other:?}"),
    }
    reason
}

async fn next_ended(events: &mut tokio::sync::broadcast::Receiver<RelayEvent>) -> RelayEvent {
    loop {
        let event = guard("event", events.recv()).await.expect("event stream");
        if matches!(event, RelayEvent::Ended { .. }) {
            return event;
        }
    }
}

#[tokio::test]
async fn frames_are_forwarded_byte_identical() {
    let relay = start_relay();
    let (mut consumer, mut agent) = paired(&relay).await;
    let limits = Limits::DEFAULT;

    // A uni stream: PING, an unknown optional frame, a 3 MB unknown frame, STATUS.
    let mut sent = Vec::new();
    let frames = [
        Message::Ping(Ping { nonce: 42 }),
        Message::Status(Status {
            rtt_ms: 300,
            loss_ppm: 10_000,
            throughput_bps: 750_000,
        }),
    ];
    let unknown = RawFrame {
        ty: FrameType(0x1001),
        body: b"from a newer version".to_vec(),
    };
    let big = RawFrame {
        ty: FrameType(0x2003),
        body: (0..3 * 1024 * 1024).map(|i| (i * 7 % 251) as u8).collect(),
    };
    for msg in &frames {
        sent.extend(tandem_protocol::frame::to_frame(msg, &limits).unwrap());
    }
    // Expected order on the wire: PING, unknown, big, STATUS.
    let ping_len = tandem_protocol::frame::to_frame(&frames[0], &limits)
        .unwrap()
        .len();
    let mut expected = sent[..ping_len].to_vec();
    expected.extend(unknown.to_bytes());
    expected.extend(big.to_bytes());
    expected.extend(&sent[ping_len..]);
    let sent = expected;

    // Written from a task: 3 MB is more than the flow-control windows hold while the agent has
    // not started reading.
    let mut dom = consumer.connection().open_uni().await.expect("open uni");
    let writer = {
        let (frames, unknown, big) = (frames.clone(), unknown.clone(), big.clone());
        tokio::spawn(async move {
            write_message(&mut dom, &frames[0], &limits).await?;
            write_raw(&mut dom, &unknown).await?;
            write_raw(&mut dom, &big).await?;
            write_message(&mut dom, &frames[1], &limits).await?;
            dom.finish()?;
            Ok::<_, tandem_peers::framed::FramedError>(())
        })
    };

    // Control: end-to-end frames are forwarded; PING is a hop message the relay answers.
    consumer.send(&frames[1]).await.unwrap();
    consumer.send_raw(&unknown).await.unwrap();
    consumer.send(&frames[0]).await.unwrap();
    assert_eq!(
        guard("pong", consumer.recv()).await.unwrap(),
        Some(Message::Pong(Ping { nonce: 42 }))
    );
    let pointer = Message::Pointer(Pointer {
        seq: 1,
        node: 7,
        x: 1000,
        y: 2000,
        visible: true,
    });
    let datagram = Bytes::from(tandem_protocol::frame::to_frame(&pointer, &limits).unwrap());
    consumer
        .connection()
        .send_datagram(datagram.clone())
        .unwrap();

    let mut incoming = guard("accept uni", agent.connection().accept_uni())
        .await
        .expect("uni stream forwarded");
    // 3 MB through the relay, in a debug build: not bounded by the usual guard.
    let megabytes = Duration::from_secs(120);
    let received = guard_within(
        megabytes,
        "uni stream",
        incoming.read_to_end(8 * 1024 * 1024),
    )
    .await
    .expect("read stream");
    guard_within(megabytes, "writer", writer)
        .await
        .unwrap()
        .expect("writes succeed");
    assert_eq!(received.len(), sent.len());
    assert!(received == sent, "uni stream bytes differ");

    let first = guard("control", agent.recv_raw()).await.unwrap().unwrap();
    assert_eq!(first.decode(&limits).unwrap(), frames[1]);
    let second = guard("control", agent.recv_raw()).await.unwrap().unwrap();
    assert_eq!(second, unknown);

    let got = guard("datagram", agent.connection().read_datagram())
        .await
        .expect("datagram forwarded");
    assert_eq!(got, datagram);

    // And the other way: agent → consumer on a stream, on control and as a datagram.
    let mut actions = agent.connection().open_uni().await.unwrap();
    let click = Message::Click(Click {
        id: 1,
        node: 7,
        x: 5000,
        y: 5000,
        button: 0,
        modifiers: 0,
    });
    write_message(&mut actions, &click, &limits).await.unwrap();
    actions.finish().unwrap();
    let ack = Message::Ack(Ack {
        epoch: 0,
        seq: 3,
        hash: [9; 16],
    });
    agent.send(&ack).await.unwrap();
    agent.connection().send_datagram(datagram.clone()).unwrap();
    let recv = guard("accept uni", consumer.connection().accept_uni())
        .await
        .unwrap();
    let mut reader = FrameRecv::new(recv, limits);
    assert_eq!(
        guard("frame", reader.next_message()).await.unwrap(),
        Some(click)
    );
    assert_eq!(guard("end", reader.next_message()).await.unwrap(), None);
    assert_eq!(guard("control", consumer.recv()).await.unwrap(), Some(ack));
    let got = guard("datagram", consumer.connection().read_datagram())
        .await
        .expect("datagram forwarded");
    assert_eq!(got, datagram);

    guard("shutdown", relay.shutdown()).await;
}

#[tokio::test]
async fn wrong_code_is_session_not_found_and_the_agent_may_retry() {
    let relay = start_relay();
    let mut events = relay.subscribe();
    let mut consumer = channel(&relay, Role::Consumer).await;
    let created = consumer.open_session("Customer").await.unwrap();
    let wrong = if created.code == "000000" {
        "000001"
    } else {
        "000000"
    };
    let mut agent = channel(&relay, Role::Agent).await;
    let result = guard("join", agent.join(Credential::Code(wrong.into()), "Alice")).await;
    expect_refused(result, ErrorCode::SessionNotFound);
    let event = loop {
        match guard("event", events.recv()).await.unwrap() {
            RelayEvent::Opened { .. } => continue,
            event => break event,
        }
    };
    assert!(
        matches!(&event, RelayEvent::JoinRefused { reason, .. } if reason == "SessionNotFound"),
        "{event:?}"
    );
    // spec §7.5: the connection stays open, so the agent can try again.
    let joined = guard("join", agent.join(Credential::Code(created.code), "Alice"))
        .await
        .expect("second attempt joins");
    assert_eq!(joined.peer_label, "Customer");
    guard("shutdown", relay.shutdown()).await;
}

#[tokio::test]
async fn wrong_token_is_session_not_found() {
    let relay = start_relay();
    let mut agent = channel(&relay, Role::Agent).await;
    let result = guard(
        "join",
        agent.join(Credential::Token("ab".repeat(32)), "Alice"),
    )
    .await;
    expect_refused(result, ErrorCode::SessionNotFound);
    guard("shutdown", relay.shutdown()).await;
}

#[tokio::test]
async fn join_by_token_pairs() {
    let relay = start_relay();
    let mut consumer = channel(&relay, Role::Consumer).await;
    let created = consumer.open_session("Customer").await.unwrap();
    assert_eq!(created.expires_ms, 120_000);
    let mut agent = channel(&relay, Role::Agent).await;
    let joined = guard("join", agent.join(Credential::Token(created.token), "Bob"))
        .await
        .unwrap();
    assert_eq!(joined.peer_label, "Customer");
    assert_eq!(consumer.wait_joined().await.unwrap().peer_label, "Bob");
    guard("shutdown", relay.shutdown()).await;
}

#[tokio::test]
async fn second_agent_is_session_busy() {
    let relay = start_relay();
    let mut consumer = channel(&relay, Role::Consumer).await;
    let created = consumer.open_session("Customer").await.unwrap();
    let mut first = channel(&relay, Role::Agent).await;
    first
        .join(Credential::Code(created.code.clone()), "Alice")
        .await
        .unwrap();
    let mut second = channel(&relay, Role::Agent).await;
    let result = guard(
        "join",
        second.join(Credential::Code(created.code), "Mallory"),
    )
    .await;
    expect_refused(result, ErrorCode::SessionBusy);
    guard("shutdown", relay.shutdown()).await;
}

#[tokio::test]
async fn wrong_codes_are_rate_limited() {
    let relay = start_relay();
    // Failures count per source address, across connections.
    for attempt in 0..5 {
        let mut agent = channel(&relay, Role::Agent).await;
        let code = Credential::Code(format!("99999{attempt}"));
        expect_refused(
            guard("join", agent.join(code, "x")).await,
            ErrorCode::SessionNotFound,
        );
    }
    let mut agent = channel(&relay, Role::Agent).await;
    let result = guard("join", agent.join(Credential::Code("123456".into()), "x")).await;
    expect_refused(result, ErrorCode::RateLimited);
    // The relay then closes the connection.
    match guard("CLOSE", agent.recv()).await.unwrap() {
        Some(Message::Close(report)) => assert_eq!(report.code, ErrorCode::RateLimited),
        other => panic!("expected CLOSE RateLimited, got {other:?}"),
    }
    guard("shutdown", relay.shutdown()).await;
}

#[tokio::test]
async fn wrong_pin_is_refused() {
    let relay = start_relay();
    let other = Identity::generate().unwrap().fingerprint();
    assert_ne!(other, relay.fingerprint);
    let result = guard(
        "connect",
        client::connect(relay.addr, other, Role::Consumer),
    )
    .await;
    match result {
        Err(ClientError::Transport(TransportError::PinMismatch { detail })) => {
            assert!(detail.contains(&relay.fingerprint.to_string()), "{detail}");
        }
        other => panic!("expected a pin mismatch, got {other:?}"),
    }
    guard("shutdown", relay.shutdown()).await;
}

#[tokio::test]
async fn version_mismatch_is_refused() {
    let relay = start_relay();
    let conn = client::connect(relay.addr, relay.fingerprint, Role::Consumer)
        .await
        .unwrap();
    let hello = Hello {
        min_version: 7,
        max_version: 9,
        ..client::hello(Role::Consumer)
    };
    let result = guard("welcome", ControlChannel::open(conn, hello)).await;
    expect_closed(result, ErrorCode::VersionMismatch);
    guard("shutdown", relay.shutdown()).await;
}

/// A bare QUIC server that plays a relay for one client: it answers the client's `HELLO` with
/// `reply`, then reads the client's next message (its `CLOSE`), closes as a relay does (spec
/// §7.34: nothing more, and close too) and returns that message. Then the client's
/// `ControlChannel::open` result.
async fn answer_hello_with(
    reply: RawFrame,
) -> (Result<ControlChannel, ClientError>, Option<Message>) {
    let (addr, pin, bare) = common::bare_relay();
    let fake_relay = tokio::spawn(async move {
        let mut relay = bare.await.unwrap();
        write_raw(&mut relay.send, &reply).await.unwrap();
        let close = relay.recv.next_message().await.unwrap();
        relay.conn.close(0u32.into(), b"");
        close
    });
    let conn = client::connect(addr, pin, Role::Consumer).await.unwrap();
    let result = guard(
        "welcome",
        ControlChannel::open(conn, client::hello(Role::Consumer)),
    )
    .await;
    (result, guard("CLOSE", fake_relay).await.unwrap())
}

/// A client that gets a `WELCOME` outside its own version range closes with `VersionMismatch`
/// (spec §7.2) instead of going on in a version it does not speak; the fake relay answers with
/// version 2.
#[tokio::test]
async fn welcome_outside_the_hello_range_is_closed_with_version_mismatch() {
    let welcome = Message::Welcome(tandem_protocol::message::Welcome {
        version: 2,
        role: Role::Relay,
        capabilities: Capabilities(0),
        software: "fake".into(),
    });
    let bytes = tandem_protocol::frame::to_frame(&welcome, &Limits::DEFAULT).unwrap();
    let mut reader = tandem_protocol::FrameReader::new(Limits::DEFAULT);
    reader.push(&bytes);
    let reply = reader.next_frame().unwrap().expect("a whole frame");
    let (result, close) = answer_hello_with(reply).await;
    match result {
        Err(ClientError::VersionMismatch {
            version: 2,
            min: 1,
            max: 1,
        }) => {}
        other => panic!("expected a version mismatch, got {:?}", other.map(|_| ())),
    }
    match close {
        Some(Message::Close(close)) => assert_eq!(close.code, ErrorCode::VersionMismatch),
        other => panic!("expected the client's CLOSE, got {other:?}"),
    }
}

/// A client that gets a critical frame type it does not know during the handshake closes with
/// `UnknownFrame` (spec §4.3), not with `UnexpectedMessage` as for a known message out of
/// place; the fake relay answers with type `0x7e`.
#[tokio::test]
async fn unknown_critical_type_in_the_handshake_is_closed_with_unknown_frame() {
    let unknown = RawFrame {
        ty: FrameType(0x7e),
        body: vec![7],
    };
    let (result, close) = answer_hello_with(unknown).await;
    match result {
        Err(ClientError::Framed(e)) => assert_eq!(e.close_code(), Some(ErrorCode::UnknownFrame)),
        other => panic!(
            "expected an unknown critical type, got {:?}",
            other.map(|_| ())
        ),
    }
    match close {
        Some(Message::Close(close)) => assert_eq!(close.code, ErrorCode::UnknownFrame),
        other => panic!("expected the client's CLOSE, got {other:?}"),
    }
}

#[tokio::test]
async fn consumer_end_reaches_agent() {
    let relay = start_relay();
    let mut events = relay.subscribe();
    let (consumer, mut agent) = paired(&relay).await;
    guard("end", consumer.end())
        .await
        .expect("relay answers END with CLOSE");
    assert_eq!(expect_end(&mut agent).await, EndReason::EndedByConsumer);
    let event = next_ended(&mut events).await;
    assert!(
        matches!(&event, RelayEvent::Ended { reason, by: Some(by), .. }
            if reason == "ended_by_consumer" && by == "consumer"),
        "{event:?}"
    );
    guard("shutdown", relay.shutdown()).await;
}

#[tokio::test]
async fn agent_end_reaches_consumer() {
    let relay = start_relay();
    let (mut consumer, agent) = paired(&relay).await;
    guard("end", agent.end()).await.unwrap();
    assert_eq!(expect_end(&mut consumer).await, EndReason::EndedByAgent);
    guard("shutdown", relay.shutdown()).await;
}

#[tokio::test]
async fn connection_loss_reaches_the_other_side() {
    let relay = start_relay();
    let (consumer, mut agent) = paired(&relay).await;
    consumer.connection().close(0u32.into(), b"gone");
    assert_eq!(expect_end(&mut agent).await, EndReason::ConnectionLost);
    guard("shutdown", relay.shutdown()).await;
}

#[tokio::test]
async fn bad_frame_closes_only_the_offenders_session() {
    let relay = start_relay();
    let (mut consumer, mut agent) = paired(&relay).await;
    // An unrelated session on the same relay must survive.
    let (mut other_consumer, mut other_agent) = paired(&relay).await;

    // A header announcing a body above the 16 MiB limit.
    let mut bad = consumer.connection().open_uni().await.unwrap();
    let mut header = Vec::new();
    tandem_protocol::varint::write_u32(&mut header, 0x33);
    tandem_protocol::varint::write_u32(&mut header, Limits::DEFAULT.max_frame_body + 1);
    bad.write_all(&header).await.unwrap();

    match guard("CLOSE", consumer.recv()).await.unwrap() {
        Some(Message::Close(report)) => assert_eq!(report.code, ErrorCode::LimitExceeded),
        other => panic!("expected CLOSE LimitExceeded, got {other:?}"),
    }
    assert_eq!(expect_end(&mut agent).await, EndReason::ConnectionLost);

    let status = Message::Status(Status {
        rtt_ms: 1,
        loss_ppm: 0,
        throughput_bps: 1,
    });
    other_consumer.send(&status).await.unwrap();
    assert_eq!(
        guard("status", other_agent.recv()).await.unwrap(),
        Some(status)
    );
    guard("shutdown", relay.shutdown()).await;
}

/// A framing error from an agent whose invitation is pending (a control frame header over the
/// size limit) is a violation like in any other state: the agent is told `CLOSE
/// LimitExceeded` and closed with that code, the customer `CANCEL` (spec §4.5, §9).
#[tokio::test]
async fn bad_frame_header_from_an_inviting_agent_is_closed_with_its_code() {
    let relay = start_relay();
    let mut consumer = channel(&relay, Role::Consumer).await;
    guard("session", consumer.open_session("visitor-7"))
        .await
        .expect("created");
    let mut agent = channel(&relay, Role::Agent).await;
    let invite = Message::Invite(tandem_protocol::message::Invite {
        invitation: 4,
        target: "visitor-7".into(),
        agent_label: "Alex".into(),
        expires_ms: 120_000,
    });
    agent.send(&invite).await.expect("sent");
    let shown = guard("INVITE", consumer.recv()).await.expect("readable");
    assert!(matches!(shown, Some(Message::Invite(_))), "{shown:?}");

    let (conn, mut send, mut recv) = agent.into_parts();
    let mut header = Vec::new();
    tandem_protocol::varint::write_u32(&mut header, FrameType::STATUS.0);
    tandem_protocol::varint::write_u32(&mut header, Limits::DEFAULT.max_frame_body + 1);
    send.write_all(&header).await.expect("sent");
    match guard("CLOSE", recv.next_message()).await {
        Ok(Some(Message::Close(report))) => {
            assert_eq!(report.code, ErrorCode::LimitExceeded, "{}", report.message);
        }
        other => panic!("expected CLOSE LimitExceeded, got {other:?}"),
    }
    match guard("the relay closes", conn.closed()).await {
        quinn::ConnectionError::ApplicationClosed(close) => assert_eq!(
            close.error_code,
            tandem_peers::framed::quic_code(ErrorCode::LimitExceeded)
        ),
        other => panic!("expected the relay to close with LimitExceeded, got {other:?}"),
    }
    let told = guard("CANCEL", consumer.recv()).await.expect("readable");
    assert!(
        matches!(told, Some(Message::Cancel(ref r)) if r.invitation == 4),
        "{told:?}"
    );
    guard("shutdown", relay.shutdown()).await;
}

#[tokio::test]
async fn join_during_a_session_is_busy_and_hello_is_a_violation() {
    let relay = start_relay();
    let (mut consumer, mut agent) = paired(&relay).await;
    // spec §7.5: an agent with a live session that sends JOIN gets ERROR SessionBusy.
    agent
        .send(&Message::Join(tandem_protocol::message::Join {
            credential: Credential::Code("123456".into()),
            label: "again".into(),
        }))
        .await
        .unwrap();
    match guard("ERROR", agent.recv()).await.unwrap() {
        Some(Message::Error(report)) => assert_eq!(report.code, ErrorCode::SessionBusy),
        other => panic!("expected ERROR SessionBusy, got {other:?}"),
    }
    // A second HELLO breaks the protocol: CLOSE for the agent, END for the consumer.
    agent
        .send(&Message::Hello(client::hello(Role::Agent)))
        .await
        .unwrap();
    match guard("CLOSE", agent.recv()).await.unwrap() {
        Some(Message::Close(report)) => assert_eq!(report.code, ErrorCode::UnexpectedMessage),
        other => panic!("expected CLOSE UnexpectedMessage, got {other:?}"),
    }
    assert_eq!(expect_end(&mut consumer).await, EndReason::ConnectionLost);
    guard("shutdown", relay.shutdown()).await;
}

#[tokio::test]
async fn control_frames_sent_before_join_are_delivered_after() {
    let relay = start_relay();
    let mut consumer = channel(&relay, Role::Consumer).await;
    let created = consumer.open_session("Customer").await.unwrap();
    // PING before pairing is answered by the relay; STATUS waits for the agent.
    consumer
        .send(&Message::Ping(Ping { nonce: 5 }))
        .await
        .unwrap();
    assert_eq!(
        guard("pong", consumer.recv()).await.unwrap(),
        Some(Message::Pong(Ping { nonce: 5 }))
    );
    let status = Message::Status(Status {
        rtt_ms: 1,
        loss_ppm: 2,
        throughput_bps: 3,
    });
    consumer.send(&status).await.unwrap();
    let mut agent = channel(&relay, Role::Agent).await;
    agent
        .join(Credential::Code(created.code), "Alice")
        .await
        .unwrap();
    assert_eq!(guard("status", agent.recv()).await.unwrap(), Some(status));
    guard("shutdown", relay.shutdown()).await;
}

#[tokio::test]
async fn shutdown_ends_live_sessions() {
    let relay = start_relay();
    let (mut consumer, mut agent) = paired(&relay).await;
    let shutdown = tokio::spawn(relay.shutdown());
    assert_eq!(expect_end(&mut consumer).await, EndReason::ConnectionLost);
    assert_eq!(expect_end(&mut agent).await, EndReason::ConnectionLost);
    guard("shutdown", shutdown).await.unwrap();
}

#[tokio::test]
async fn events_are_written_as_json_lines() {
    let path = std::env::temp_dir().join(format!("tandem-events-{}.jsonl", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    let relay = common::start_relay(|c| c.event_log = Some(Box::new(file)));
    let mut events = relay.subscribe();
    let (mut consumer, mut agent) = paired(&relay).await;
    let set_guide = Message::Mode(ModeChange {
        op: ModeOp::Set,
        mode: Mode::Guide,
    });
    for msg in [Message::Pause(()), Message::Resume(()), set_guide] {
        consumer.send(&msg).await.unwrap();
        // Forwarded end to end, and reported on the way.
        assert_eq!(guard("forwarded", agent.recv()).await.unwrap(), Some(msg));
    }
    // The agent cannot change the mode: its MODE is forwarded but not reported.
    let grant = Message::Mode(ModeChange {
        op: ModeOp::Grant,
        mode: Mode::Full,
    });
    agent.send(&grant).await.unwrap();
    assert_eq!(
        guard("forwarded", consumer.recv()).await.unwrap(),
        Some(grant)
    );
    consumer.end().await.unwrap();
    next_ended(&mut events).await;
    guard("shutdown", relay.shutdown()).await;

    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let kinds: Vec<String> = text
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
            assert!(v["ts_ms"].as_u64().is_some(), "{line}");
            v["event"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "opened",
            "connected",
            "paused",
            "resumed",
            "mode_changed",
            "ended"
        ]
    );
    assert!(text.contains("\"mode\":\"guide\""), "{text}");
    assert!(text.contains("\"reason\":\"ended_by_consumer\""), "{text}");
}

#[tokio::test]
async fn transport_endpoints_work_without_the_client_helpers() {
    // The lower-level API the demo uses: explicit endpoints and connect.
    let relay = start_relay();
    let endpoint = transport::client_endpoint(relay.fingerprint, Role::Consumer).unwrap();
    let conn = guard("connect", transport::connect(&endpoint, relay.addr))
        .await
        .unwrap();
    let fp: Fingerprint = relay.fingerprint.to_string().parse().unwrap();
    assert_eq!(fp, relay.fingerprint);
    let ctl = ControlChannel::open(conn, client::hello(Role::Agent))
        .await
        .unwrap();
    assert_eq!(ctl.welcome().role, Role::Relay);
    guard("shutdown", relay.shutdown()).await;
}

#[tokio::test]
async fn datagrams_go_by_control_to_a_peer_without_datagrams() {
    let relay = start_relay();
    let mut consumer = channel(&relay, Role::Consumer).await;
    let created = consumer.open_session("Customer").await.unwrap();

    // An agent whose transport does not accept datagrams.
    let mut config = transport::client_config(relay.fingerprint, Role::Consumer).unwrap();
    let mut params = transport::transport_config();
    params.datagram_receive_buffer_size(None);
    config.transport_config(std::sync::Arc::new(params));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let conn = guard("connect", transport::connect(&endpoint, relay.addr))
        .await
        .unwrap();
    let mut agent = ControlChannel::open(conn, client::hello(Role::Agent))
        .await
        .unwrap();
    agent
        .join(Credential::Code(created.code), "Alice")
        .await
        .unwrap();
    consumer.wait_joined().await.unwrap();

    let scroll = Message::Scroll(tandem_protocol::message::Scroll {
        seq: 4,
        node: 0,
        x: 0,
        y: 480,
    });
    let bytes = tandem_protocol::frame::to_frame(&scroll, &Limits::DEFAULT).unwrap();
    consumer
        .connection()
        .send_datagram(Bytes::from(bytes))
        .unwrap();
    assert_eq!(guard("scroll", agent.recv()).await.unwrap(), Some(scroll));
    guard("shutdown", relay.shutdown()).await;
}

#[tokio::test]
async fn a_datagram_that_is_not_one_frame_is_malformed() {
    let relay = start_relay();
    let (mut consumer, mut agent) = paired(&relay).await;
    consumer
        .connection()
        .send_datagram(Bytes::from_static(b"\x51\x10short"))
        .unwrap();
    match guard("CLOSE", consumer.recv()).await.unwrap() {
        Some(Message::Close(report)) => assert_eq!(report.code, ErrorCode::MalformedFrame),
        other => panic!("expected CLOSE MalformedFrame, got {other:?}"),
    }
    assert_eq!(expect_end(&mut agent).await, EndReason::ConnectionLost);
    guard("shutdown", relay.shutdown()).await;
}

#[tokio::test]
async fn unused_code_expires() {
    let relay = common::start_relay(|c| c.table.code_ttl = Duration::from_millis(200));
    let mut consumer = channel(&relay, Role::Consumer).await;
    let created = consumer.open_session("Customer").await.unwrap();
    assert_eq!(created.expires_ms, 200);
    assert_eq!(
        guard("END", consumer.recv()).await.unwrap(),
        Some(Message::End(End {
            reason: EndReason::Expired
        }))
    );
    match guard("CLOSE", consumer.recv()).await.unwrap() {
        Some(Message::Close(report)) => assert_eq!(report.code, ErrorCode::SessionEnded),
        other => panic!("expected CLOSE, got {other:?}"),
    }
    let mut agent = channel(&relay, Role::Agent).await;
    let result = guard("join", agent.join(Credential::Code(created.code), "Alice")).await;
    expect_refused(result, ErrorCode::SessionNotFound);
    guard("shutdown", relay.shutdown()).await;
}

/// An `END` sent while the agent's link is out still arrives once the link is back: the relay
/// waits for the agent to acknowledge it (at least eight round trips, spec §3.3) before it
/// closes the connection, instead of its 300 ms grace here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_sent_into_an_outage_arrives_after_it() {
    use tandem_peers::link::{Direction, Link};
    let relay = start_relay();
    let link = Link::spawn(relay.addr, &"200ms".parse().unwrap())
        .await
        .unwrap();
    let mut consumer = channel(&relay, Role::Consumer).await;
    let created = guard("session", consumer.open_session("Customer"))
        .await
        .unwrap();
    let conn = guard(
        "connect",
        client::connect(link.addr(), relay.fingerprint, Role::Agent),
    )
    .await
    .unwrap();
    let mut agent = guard(
        "welcome",
        ControlChannel::open(conn, client::hello(Role::Agent)),
    )
    .await
    .unwrap();
    guard("join", agent.join(Credential::Code(created.code), "Alice"))
        .await
        .unwrap();
    guard("joined", consumer.wait_joined()).await.unwrap();
    // The relay's END and its first retransmission fall into a second-long outage of the
    // agent's downlink, longer than the relay's close_grace.
    link.cut(Direction::Down, true);
    guard("end", consumer.end()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    link.cut(Direction::Down, false);
    assert_eq!(expect_end(&mut agent).await, EndReason::EndedByConsumer);
    assert!(link.stats().down.lost > 0, "the outage dropped nothing");
    guard("shutdown", relay.shutdown()).await;
}
