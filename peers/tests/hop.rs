//! The peers' side of the relay's hop messages in a live session (spec §3.2), against a bare
//! QUIC server that plays the relay: it greets, pairs, and then sends what a relay may send.
//!
//! No test sleeps: every wait is for an event, with a timeout only as a failure guard.

mod common;

use std::time::Instant;

use common::{BareRelay, guard};
use tandem_peers::client::{self, ControlChannel};
use tandem_peers::framed::{FrameRecv, write_message, write_raw};
use tandem_peers::session::{self, AgentOptions, ChangeSource, SessionError};
use tandem_peers::transport;
use tandem_protocol::message::{
    Ack, Capabilities, Credential, Joined, Ping, Role, SessionCreated, Welcome,
};
use tandem_protocol::{ErrorCode, FrameType, Limits, Message, RawFrame};

/// A fake relay's accepted connection: the control stream after `HELLO` and the first request,
/// both answered (`WELCOME`, then `SESSION_CREATED` and `JOINED`, or `JOINED`).
type FakeRelay = BareRelay;

/// Listens on 127.0.0.1; returns the address, the pin and the task that greets the first
/// client and pairs it with an imaginary peer, without `COMPRESSION`, `RESOURCES` or `RESUME`.
fn fake_relay() -> (
    std::net::SocketAddr,
    transport::Fingerprint,
    tokio::task::JoinHandle<FakeRelay>,
) {
    let (addr, pin, bare) = common::bare_relay();
    let task = tokio::spawn(async move {
        let mut relay = bare.await.unwrap();
        let limits = Limits::DEFAULT;
        let welcome = Message::Welcome(Welcome {
            version: 1,
            role: Role::Relay,
            capabilities: Capabilities(0),
            software: "fake".into(),
        });
        write_message(&mut relay.send, &welcome, &limits)
            .await
            .unwrap();
        let peer_role = match relay.recv.next_message().await.unwrap() {
            Some(Message::SessionOpen(_)) => {
                let created = Message::SessionCreated(SessionCreated {
                    code: "123456".into(),
                    token: "t".into(),
                    expires_ms: 120_000,
                });
                write_message(&mut relay.send, &created, &limits)
                    .await
                    .unwrap();
                Role::Agent
            }
            Some(Message::Join(_)) => Role::Consumer,
            other => panic!("expected SESSION_OPEN or JOIN, got {other:?}"),
        };
        let joined = Message::Joined(Joined {
            peer_role,
            peer_label: "peer".into(),
            peer_platform: relay.hello.platform.clone(),
            capabilities: Capabilities(0),
            resume_token: String::new(),
        });
        write_message(&mut relay.send, &joined, &limits)
            .await
            .unwrap();
        relay
    });
    (addr, pin, task)
}

/// A session's task, its result without the report.
type Session = tokio::task::JoinHandle<Result<(), SessionError>>;

/// A consumer with `opts` in a live session with a fake relay, and the relay's side.
async fn live_consumer(opts: session::ConsumerOptions) -> (Session, FakeRelay) {
    let (addr, pin, relay) = fake_relay();
    let conn = client::connect(addr, pin, Role::Consumer).await.unwrap();
    let ctl = ControlChannel::open(conn, client::hello(Role::Consumer))
        .await
        .unwrap();
    let consumer =
        tokio::spawn(async move { session::run_consumer(ctl, opts, |_| {}).await.map(|_| ()) });
    (consumer, guard("pairing", relay).await.unwrap())
}

/// An agent in a live session with a fake relay, and the relay's side.
async fn live_agent() -> (Session, FakeRelay) {
    let (addr, pin, relay) = fake_relay();
    let conn = client::connect(addr, pin, Role::Agent).await.unwrap();
    let (ctl, _) = ControlChannel::open_and_join(
        conn,
        client::hello(Role::Agent),
        Credential::Code("123456".into()),
        "Alex",
    )
    .await
    .unwrap();
    let agent = tokio::spawn(async move {
        session::run_agent(ctl, AgentOptions::default(), Instant::now())
            .await
            .map(|_| ())
    });
    (agent, guard("pairing", relay).await.unwrap())
}

/// Sends `PING` and reads the control stream until the `PONG` with the same nonce.
async fn ping_is_answered(relay: &mut FakeRelay) {
    let ping = Message::Ping(Ping { nonce: 0x5eed });
    write_message(&mut relay.send, &ping, &Limits::DEFAULT)
        .await
        .unwrap();
    loop {
        match relay.recv.next_message().await.expect("a message") {
            Some(Message::Pong(pong)) => {
                assert_eq!(pong.nonce, 0x5eed);
                return;
            }
            Some(_) => continue,
            None => panic!("the peer finished its control stream without a PONG"),
        }
    }
}

/// A consumer in a live session answers the relay's `PING` with `PONG` (spec §7.30).
#[tokio::test]
async fn consumer_answers_ping_in_a_live_session() {
    let (consumer, mut relay) = live_consumer(common::sample_options(ChangeSource::None)).await;
    guard("PONG", ping_is_answered(&mut relay)).await;
    consumer.abort();
}

/// An agent in a live session answers the relay's `PING` with `PONG` (spec §7.30).
#[tokio::test]
async fn agent_answers_ping_in_a_live_session() {
    let (agent, mut relay) = live_agent().await;
    guard("PONG", ping_is_answered(&mut relay)).await;
    agent.abort();
}

/// Sends a frame of a critical type no version defines (`0x7e`), then reads the control
/// stream until the peer's `CLOSE`, closes and returns the `CLOSE`'s code.
async fn unknown_critical_is_closed(relay: &mut FakeRelay) -> ErrorCode {
    let unknown = RawFrame {
        ty: FrameType(0x7e),
        body: vec![1, 2, 3],
    };
    write_raw(&mut relay.send, &unknown).await.unwrap();
    closed(relay).await
}

/// Reads the control stream until the peer's `CLOSE`, closes as a relay does (spec §7.34:
/// nothing more, and close too) and returns the `CLOSE`'s code.
async fn closed(relay: &mut FakeRelay) -> ErrorCode {
    loop {
        match relay.recv.next_message().await.expect("a message") {
            Some(Message::Close(close)) => {
                relay.conn.close(0u32.into(), b"");
                return close.code;
            }
            Some(_) => continue,
            None => panic!("the peer finished its control stream without a CLOSE"),
        }
    }
}

fn expect_unknown_critical(result: Result<(), SessionError>) {
    match result {
        Err(e) => assert_eq!(e.close_code(), Some(ErrorCode::UnknownFrame), "{e}"),
        Ok(()) => panic!("the session went on over an unknown critical frame"),
    }
}

/// A consumer that receives a critical frame type it does not know on the control stream of a
/// live session closes the connection with `CLOSE` `UnknownFrame` (spec §4.3), instead of
/// skipping it as if it were optional.
#[tokio::test]
async fn consumer_closes_on_an_unknown_critical_type() {
    let (consumer, mut relay) = live_consumer(common::sample_options(ChangeSource::None)).await;
    let code = guard("CLOSE", unknown_critical_is_closed(&mut relay)).await;
    assert_eq!(code, ErrorCode::UnknownFrame);
    expect_unknown_critical(guard("the consumer's end", consumer).await.unwrap());
}

/// The same for an agent (spec §4.3).
#[tokio::test]
async fn agent_closes_on_an_unknown_critical_type() {
    let (agent, mut relay) = live_agent().await;
    let code = guard("CLOSE", unknown_critical_is_closed(&mut relay)).await;
    assert_eq!(code, ErrorCode::UnknownFrame);
    expect_unknown_critical(guard("the agent's end", agent).await.unwrap());
}

/// The same for a consumer that reads the agent's actions (spec §4.3): a critical frame type it
/// does not know on the actions stream is not skipped either.
#[tokio::test]
async fn consumer_closes_on_an_unknown_critical_type_on_the_actions_stream() {
    let opts = session::ConsumerOptions {
        hands: Some(tandem_peers::hands::HandsOptions::default()),
        ..common::sample_options(ChangeSource::None)
    };
    let (consumer, mut relay) = live_consumer(opts).await;
    let mut actions = relay.conn.open_uni().await.unwrap();
    let unknown = RawFrame {
        ty: FrameType(0x7e),
        body: vec![1, 2, 3],
    };
    write_raw(&mut actions, &unknown).await.unwrap();
    let code = guard("CLOSE", closed(&mut relay)).await;
    assert_eq!(code, ErrorCode::UnknownFrame);
    expect_unknown_critical(guard("the consumer's end", consumer).await.unwrap());
}

/// A consumer whose agent acknowledges a sequence number the consumer never sent closes the
/// connection with `CLOSE` `UnexpectedMessage` (spec §7.16, §9), instead of ending the session
/// without a word.
#[tokio::test]
async fn consumer_closes_on_an_ack_for_a_patch_it_never_sent() {
    let (consumer, mut relay) = live_consumer(common::sample_options(ChangeSource::None)).await;
    // The epoch of the snapshot the consumer sent, from the first frame of its DOM stream.
    let dom = guard("the DOM stream", relay.conn.accept_uni())
        .await
        .unwrap();
    let mut dom = FrameRecv::new(dom, Limits::DEFAULT);
    let epoch = match guard("SNAPSHOT", dom.next_message()).await.unwrap() {
        Some(Message::Snapshot(part)) => part.epoch,
        other => panic!("expected SNAPSHOT, got {other:?}"),
    };
    let ack = Message::Ack(Ack {
        epoch,
        seq: 1_000_000,
        hash: [0; 16],
    });
    write_message(&mut relay.send, &ack, &Limits::DEFAULT)
        .await
        .unwrap();
    let code = guard("CLOSE", closed(&mut relay)).await;
    assert_eq!(code, ErrorCode::UnexpectedMessage);
    match guard("the consumer's end", consumer).await.unwrap() {
        Err(e) => assert_eq!(e.close_code(), Some(ErrorCode::UnexpectedMessage), "{e}"),
        Ok(()) => panic!("the session went on over an ACK for a patch never sent"),
    }
}

/// A client whose `WELCOME` is late nudges the relay with `PING` (spec §7.1): here the relay
/// answers only once a `PING` came, as a QUIC server that dropped the client's first 1-RTT
/// packets can only answer once a later packet arrives.
#[tokio::test]
async fn a_late_welcome_is_nudged_with_ping() {
    let (addr, pin, bare) = common::bare_relay();
    let relay = tokio::spawn(async move {
        let mut relay = bare.await.unwrap();
        let limits = Limits::DEFAULT;
        let nonce = match relay.recv.next_message().await.unwrap() {
            Some(Message::Ping(Ping { nonce })) => nonce,
            other => panic!("expected PING, got {other:?}"),
        };
        for msg in [
            Message::Pong(Ping { nonce }),
            Message::Welcome(Welcome {
                version: 1,
                role: Role::Relay,
                capabilities: Capabilities(0),
                software: "fake".into(),
            }),
        ] {
            write_message(&mut relay.send, &msg, &limits).await.unwrap();
        }
        relay
    });
    let conn = client::connect(addr, pin, Role::Agent).await.unwrap();
    let started = Instant::now();
    let channel = guard(
        "WELCOME after a PING",
        ControlChannel::open(conn, client::hello(Role::Agent)),
    )
    .await
    .unwrap();
    assert_eq!(channel.welcome().software, "fake");
    // Not before the answer was late: on loopback, the shortest wait.
    assert!(started.elapsed() >= client::MIN_NUDGE_WAIT);
    guard("the relay's side", relay).await.unwrap();
}
