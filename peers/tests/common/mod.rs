//! What the QUIC tests share: a relay on 127.0.0.1, client channels, a consumer session run in
//! a task, and a guard that fails a test instead of letting it hang.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use tandem_peers::client::{self, ControlChannel};
use tandem_peers::relay::{self, RelayConfig, RelayHandle};
use tandem_peers::session::{
    self, ChangeSource, ConsumerOptions, ConsumerReport, Invitations, SessionError,
};
use tandem_peers::transport::Identity;
use tandem_protocol::message::Role;

/// How long any one wait may take before the test fails.
pub const GUARD: Duration = Duration::from_secs(10);

/// Fails the test instead of hanging when `fut` does not finish in time.
pub async fn guard<T>(what: &str, fut: impl Future<Output = T>) -> T {
    guard_within(GUARD, what, fut).await
}

/// [`guard`] with a limit of its own, for a wait that moves megabytes: a debug build on a
/// busy machine takes several times [`GUARD`] for that, and the limit only catches a hang.
pub async fn guard_within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A relay on a free port of 127.0.0.1 that lets peers go quickly (300 ms of grace) and keeps
/// a session whose peer lost its connection for 1 s (spec §3.5), with `tune` applied to its
/// configuration first.
pub fn start_relay(tune: impl FnOnce(&mut RelayConfig)) -> RelayHandle {
    let identity = Identity::generate().expect("generate certificate");
    let mut config = RelayConfig::new("127.0.0.1:0".parse().expect("an address"), identity);
    config.close_grace = Duration::from_millis(300);
    config.table.resume_grace = Duration::from_secs(1);
    tune(&mut config);
    relay::spawn(config).expect("relay starts")
}

/// A client connected to `relay` and greeted as `role`.
pub async fn channel(relay: &RelayHandle, role: Role) -> ControlChannel {
    let conn = guard(
        "connect",
        client::connect(relay.addr, relay.fingerprint, role),
    )
    .await
    .expect("connect");
    guard("welcome", ControlChannel::open(conn, client::hello(role)))
        .await
        .expect("welcome")
}

/// An agent connected to `relay` that joined by `code` as "Alex", HELLO and JOIN in one round
/// trip (spec §7.1); with what the relay said about the consumer.
pub async fn join_agent(
    relay: &RelayHandle,
    code: String,
) -> (ControlChannel, tandem_protocol::message::Joined) {
    let conn = guard(
        "connect",
        client::connect(relay.addr, relay.fingerprint, Role::Agent),
    )
    .await
    .expect("connect");
    guard(
        "pipelined join",
        ControlChannel::open_and_join(
            conn,
            client::hello(Role::Agent),
            tandem_protocol::message::Credential::Code(code),
            "Alex",
        ),
    )
    .await
    .expect("joined")
}

/// A consumer session of the built-in sample page with `changes`, labelled `visitor`, that
/// declines invitations, sends its snapshot ahead and takes no commands; tests change fields.
pub fn sample_options(changes: ChangeSource) -> ConsumerOptions {
    ConsumerOptions {
        html: tandem_peers::demo::SAMPLE_PAGE.to_owned(),
        url: "https://shop.example/".into(),
        label: "visitor".into(),
        changes,
        interval: Duration::from_millis(5),
        limits: tandem_protocol::Limits::DEFAULT,
        policy: Default::default(),
        hands: None,
        invitations: Invitations::Decline,
        commands: None,
        preupload: true,
        fold_bytes: None,
    }
}

/// The session's consumer task.
pub type ConsumerTask = tokio::task::JoinHandle<Result<ConsumerReport, SessionError>>;

/// Runs a consumer with `opts` through `relay` in a task; returns its session code once the
/// session is open, and the task.
pub async fn consumer_session(
    relay: &RelayHandle,
    opts: ConsumerOptions,
) -> (String, ConsumerTask) {
    let ctl = channel(relay, Role::Consumer).await;
    let (code_tx, code_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(session::run_consumer(ctl, opts, |created| {
        let _ = code_tx.send(created.code.clone());
    }));
    let code = guard("the session code", code_rx).await.expect("a code");
    (code, task)
}

/// A client's control stream as a bare QUIC server that plays the relay sees it, after the
/// client's `HELLO`.
pub struct BareRelay {
    /// The client's connection.
    pub conn: quinn::Connection,
    /// The server's half of the control stream.
    pub send: quinn::SendStream,
    /// The client's half of the control stream.
    pub recv: tandem_peers::framed::FrameRecv,
    /// The client's `HELLO`.
    pub hello: tandem_protocol::message::Hello,
}

/// A bare QUIC server on a free port of 127.0.0.1 that plays a relay in tests which need to
/// send what a real relay never would: its address, its pin, and the task that accepts one
/// client, takes its control stream and reads its `HELLO` (anything else fails the test).
pub fn bare_relay() -> (
    std::net::SocketAddr,
    tandem_peers::transport::Fingerprint,
    tokio::task::JoinHandle<BareRelay>,
) {
    use tandem_protocol::{Limits, Message};
    let identity = Identity::generate().unwrap();
    let server =
        tandem_peers::transport::server_endpoint("127.0.0.1:0".parse().unwrap(), &identity)
            .unwrap();
    let addr = server.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let conn = server.accept().await.expect("a connection").await.unwrap();
        let (send, recv) = conn.accept_bi().await.unwrap();
        let mut recv = tandem_peers::framed::FrameRecv::new(recv, Limits::DEFAULT);
        let hello = match recv.next_message().await.unwrap() {
            Some(Message::Hello(hello)) => hello,
            other => panic!("expected HELLO, got {other:?}"),
        };
        BareRelay {
            conn,
            send,
            recv,
            hello,
        }
    });
    (addr, identity.fingerprint(), task)
}
