//! Invitations through the relay (issue 5, spec §7.7–§7.10, §13.1) over real QUIC on
//! 127.0.0.1: an agent invites a customer waiting under a label; the customer accepts,
//! declines, or the agent withdraws it, or it expires. Each closes only the invitation: the
//! customer keeps waiting and the agent may try again.
//!
//! No test sleeps: every wait is for an event, with a timeout only as a failure guard.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{channel, guard};
use tandem_peers::client::{self, ClientError, ControlChannel};
use tandem_peers::relay::{RelayEvent, RelayHandle};
use tandem_protocol::message::{Credential, EndReason, Role};
use tandem_protocol::{ErrorCode, Message};
use tokio::sync::broadcast::Receiver;

const TTL: Duration = Duration::from_secs(120);

fn start_relay(invitation_ttl: Duration) -> RelayHandle {
    common::start_relay(|c| c.table.invitation_ttl = invitation_ttl)
}

/// A customer waiting under `label`, and the code of its session.
async fn waiting(relay: &RelayHandle, label: &str) -> (ControlChannel, String) {
    let mut consumer = channel(relay, Role::Consumer).await;
    let created = guard("session", consumer.open_session(label))
        .await
        .expect("session created");
    (consumer, created.code)
}

/// What a customer saw: ("invite", agent label) and ("cancel", id).
type Seen = Arc<Mutex<Vec<(String, String)>>>;
/// The customer's task: its channel and the joined agent's label.
type Customer = tokio::task::JoinHandle<(ControlChannel, Result<String, ClientError>)>;

/// Runs the customer's side until JOINED, answering every invitation with `accept` and
/// recording what it saw: ("invite", agent label) and ("cancel", id).
fn customer(mut consumer: ControlChannel, accept: bool) -> (Seen, Customer) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let task = tokio::spawn(async move {
        let log2 = log.clone();
        let r = consumer
            .wait_joined_answering(
                |inv| {
                    log.lock()
                        .unwrap()
                        .push(("invite".into(), inv.agent_label.clone()));
                    std::future::ready(accept)
                },
                |id| log2.lock().unwrap().push(("cancel".into(), id.to_string())),
            )
            .await
            .map(|j| j.peer_label);
        (consumer, r)
    });
    (seen, task)
}

async fn next_event(events: &mut Receiver<RelayEvent>, what: &str) -> RelayEvent {
    guard(what, async {
        loop {
            match events.recv().await {
                Ok(RelayEvent::Opened { .. } | RelayEvent::JoinRefused { .. }) => continue,
                Ok(e) => return e,
                Err(e) => panic!("events: {e}"),
            }
        }
    })
    .await
}

fn ended_reason(e: &RelayEvent) -> (String, Option<String>) {
    match e {
        RelayEvent::Ended { reason, by, .. } => (reason.clone(), by.clone()),
        other => panic!("expected ended, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_invitation_becomes_a_session_with_the_invitations_id() {
    let relay = start_relay(TTL);
    let mut events = relay.subscribe();
    let (consumer, _code) = waiting(&relay, "visitor-17").await;
    let (seen, customer) = customer(consumer, true);
    let mut agent = channel(&relay, Role::Agent).await;
    let joined = guard("invite", agent.invite(1, "visitor-17", "Alex", TTL))
        .await
        .expect("accepted");
    assert_eq!(joined.peer_role, Role::Consumer);
    assert_eq!(joined.peer_label, "visitor-17");
    let (mut consumer, told) = guard("customer", customer).await.expect("task");
    assert_eq!(told.expect("joined"), "Alex");
    assert_eq!(
        *seen.lock().unwrap(),
        [("invite".to_owned(), "Alex".to_owned())]
    );
    let invited = next_event(&mut events, "invited").await;
    let connected = next_event(&mut events, "connected").await;
    let (RelayEvent::Invited { session: a, .. }, RelayEvent::Connected { session: b, .. }) =
        (&invited, &connected)
    else {
        panic!("{invited:?} then {connected:?}");
    };
    assert_eq!(a, b, "the session keeps the invitation's id");
    // The session works like any other: END reaches the agent.
    consumer
        .send(&Message::End(tandem_protocol::message::End {
            reason: EndReason::EndedByConsumer,
        }))
        .await
        .expect("send END");
    let msg = guard("END", agent.recv()).await.expect("recv");
    assert!(matches!(msg, Some(Message::End(_))), "{msg:?}");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_invitation_leaves_both_free_to_go_on() {
    let relay = start_relay(TTL);
    let mut events = relay.subscribe();
    let (consumer, code) = waiting(&relay, "visitor-18").await;
    let (seen, customer) = customer(consumer, false);
    let mut agent = channel(&relay, Role::Agent).await;
    let r = guard("invite", agent.invite(7, "visitor-18", "Alex", TTL)).await;
    assert!(matches!(r, Err(ClientError::Declined)), "{r:?}");
    let invited = next_event(&mut events, "invited").await;
    assert!(matches!(invited, RelayEvent::Invited { .. }), "{invited:?}");
    let (reason, by) = ended_reason(&next_event(&mut events, "ended").await);
    assert_eq!(
        (reason.as_str(), by.as_deref()),
        ("declined", Some("consumer"))
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    // The customer still waits with its code, and the same agent connection may join with it.
    let joined = guard("join", agent.join(Credential::Code(code), "Alex"))
        .await
        .expect("the code still works");
    assert_eq!(joined.peer_label, "visitor-18");
    let (_consumer, told) = guard("customer", customer).await.expect("task");
    assert_eq!(told.expect("joined"), "Alex");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_invitation_tells_the_customer() {
    let relay = start_relay(TTL);
    let mut events = relay.subscribe();
    let (mut consumer, _code) = waiting(&relay, "visitor-19").await;
    let mut agent = channel(&relay, Role::Agent).await;
    agent
        .send(&Message::Invite(tandem_protocol::message::Invite {
            invitation: 3,
            target: "visitor-19".into(),
            agent_label: "Alex".into(),
            expires_ms: 120_000,
        }))
        .await
        .expect("send INVITE");
    let shown = guard("INVITE", consumer.recv()).await.expect("recv");
    let Some(Message::Invite(inv)) = shown else {
        panic!("{shown:?}")
    };
    assert_eq!((inv.invitation, inv.agent_label.as_str()), (3, "Alex"));
    // A second INVITE while one is pending, and a JOIN, are SessionBusy.
    let mut other = channel(&relay, Role::Agent).await;
    let r = guard("busy", other.invite(1, "visitor-19", "Bo", TTL)).await;
    assert!(
        matches!(
            r,
            Err(ClientError::Refused {
                code: ErrorCode::SessionBusy,
                ..
            })
        ),
        "{r:?}"
    );
    agent.cancel(3).await.expect("send CANCEL");
    let msg = guard("CANCEL", consumer.recv()).await.expect("recv");
    assert!(
        matches!(msg, Some(Message::Cancel(ref r)) if r.invitation == 3),
        "{msg:?}"
    );
    let _ = next_event(&mut events, "invited").await;
    let (reason, by) = ended_reason(&next_event(&mut events, "ended").await);
    assert_eq!(
        (reason.as_str(), by.as_deref()),
        ("cancelled", Some("agent"))
    );
    // Now the other agent may invite.
    let (_seen, customer) = customer(consumer, true);
    let joined = guard("invite", other.invite(2, "visitor-19", "Bo", TTL))
        .await
        .expect("accepted");
    assert_eq!(joined.peer_label, "visitor-19");
    let _ = guard("customer", customer).await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_invitation_expires_for_both() {
    let relay = start_relay(Duration::from_millis(300));
    let mut events = relay.subscribe();
    let (mut consumer, _code) = waiting(&relay, "visitor-20").await;
    let mut agent = channel(&relay, Role::Agent).await;
    let inviting = tokio::spawn(async move {
        // Asks for two minutes; the relay allows 300 ms.
        let r = agent.invite(5, "visitor-20", "Alex", TTL).await;
        (agent, r)
    });
    let shown = guard("INVITE", consumer.recv()).await.expect("recv");
    let Some(Message::Invite(inv)) = shown else {
        panic!("{shown:?}")
    };
    assert_eq!(
        inv.expires_ms, 300,
        "the customer sees the relay's deadline"
    );
    let msg = guard("CANCEL", consumer.recv()).await.expect("recv");
    assert!(
        matches!(msg, Some(Message::Cancel(ref r)) if r.invitation == 5),
        "{msg:?}"
    );
    let (_agent, r) = guard("agent", inviting).await.expect("task");
    assert!(
        matches!(r, Err(ClientError::Ended(EndReason::Expired))),
        "{r:?}"
    );
    let _ = next_event(&mut events, "invited").await;
    let (reason, by) = ended_reason(&next_event(&mut events, "ended").await);
    assert_eq!((reason.as_str(), by), ("expired", None));
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_targets_are_not_found_and_rate_limited() {
    let relay = start_relay(TTL);
    let mut agent = channel(&relay, Role::Agent).await;
    for i in 0..5 {
        let r = guard("invite", agent.invite(i, "nobody", "Alex", TTL)).await;
        assert!(
            matches!(
                r,
                Err(ClientError::Refused {
                    code: ErrorCode::SessionNotFound,
                    ..
                })
            ),
            "{i}: {r:?}"
        );
    }
    let r = guard("invite", agent.invite(9, "nobody", "Alex", TTL)).await;
    assert!(
        matches!(
            r,
            Err(ClientError::Refused {
                code: ErrorCode::RateLimited,
                ..
            })
        ),
        "{r:?}"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_who_leaves_declines_the_pending_invitation() {
    let relay = start_relay(TTL);
    let (mut consumer, _code) = waiting(&relay, "visitor-21").await;
    let mut agent = channel(&relay, Role::Agent).await;
    let inviting = tokio::spawn(async move {
        let r = agent.invite(4, "visitor-21", "Alex", TTL).await;
        (agent, r)
    });
    let shown = guard("INVITE", consumer.recv()).await.expect("recv");
    assert!(matches!(shown, Some(Message::Invite(_))), "{shown:?}");
    guard("end", consumer.end()).await.expect("END");
    let (_agent, r) = guard("agent", inviting).await.expect("task");
    assert!(matches!(r, Err(ClientError::Declined)), "{r:?}");
    relay.shutdown().await;
}

/// `tandem consumer --invitations accept` and `tandem agent --invite LABEL` in one process: the
/// session pumps run over the accepted invitation and converge on the same page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_is_shared_over_an_accepted_invitation() {
    use tandem_peers::session::{self, AgentOptions, ChangeSource, ConsumerOptions, Invitations};
    let relay = start_relay(TTL);
    let consumer_ctl = channel(&relay, Role::Consumer).await;
    let (label_tx, label_rx) = tokio::sync::oneshot::channel();
    let consumer = tokio::spawn(async move {
        let opts = ConsumerOptions {
            html: "<h1>Invoice</h1><p>Due in 14 days</p>".into(),
            url: "https://shop.example/invoice".into(),
            label: "visitor-22".into(),
            changes: ChangeSource::Live {
                generator: tandem_engine::LivePage::new(5),
                per_batch: 5,
                batches: Some(3),
            },
            interval: Duration::from_millis(5),
            limits: tandem_protocol::Limits::DEFAULT,
            policy: Default::default(),
            hands: None,
            invitations: Invitations::Accept,
            commands: None,
            preupload: true,
            fold_bytes: None,
        };
        session::run_consumer(consumer_ctl, opts, |_| {
            let _ = label_tx.send(());
        })
        .await
    });
    guard("session opened", label_rx).await.expect("opened");
    let mut agent = channel(&relay, Role::Agent).await;
    guard("invite", agent.invite(11, "visitor-22", "Alex", TTL))
        .await
        .expect("accepted");
    let report = guard(
        "agent session",
        session::run_agent(agent, AgentOptions::default(), std::time::Instant::now()),
    )
    .await
    .expect("agent runs");
    let consumer = guard("consumer", consumer)
        .await
        .expect("task")
        .expect("consumer runs");
    assert_eq!(
        report.hash,
        Some(consumer.hash),
        "the agent holds the customer's page"
    );
    // Three batches of changes, folded while a patch is unacknowledged.
    assert!((1..=3).contains(&report.patches), "{}", report.patches);
    relay.shutdown().await;
}

/// A webhook that records the JSON bodies POSTed to it.
async fn webhook_server() -> (String, tokio::sync::mpsc::Receiver<serde_json::Value>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/hooks/cobrowse",
        listener.local_addr().expect("addr")
    );
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            let body = loop {
                let n = s.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if req.len() >= end + 4 + len {
                        assert!(
                            text.starts_with("POST /hooks/cobrowse HTTP/1.1\r\n"),
                            "{text}"
                        );
                        assert!(
                            text.contains("Content-Type: application/json\r\n"),
                            "{text}"
                        );
                        break Some(req[end + 4..end + 4 + len].to_vec());
                    }
                }
            };
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
            if let Some(body) = body {
                let json = serde_json::from_slice(&body).expect("a JSON event");
                let _ = tx.send(json).await;
            }
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_are_posted_to_the_webhook() {
    let (url, mut posted) = webhook_server().await;
    let hook = url.parse().expect("an http URL");
    let relay = common::start_relay(|c| c.webhook = Some(hook));
    let (consumer, _code) = waiting(&relay, "visitor-23").await;
    let (_seen, customer) = customer(consumer, true);
    let mut agent = channel(&relay, Role::Agent).await;
    guard("invite", agent.invite(1, "visitor-23", "Alex", TTL))
        .await
        .expect("accepted");
    let (consumer, _) = guard("customer", customer).await.expect("task");
    drop(consumer);
    let mut names = Vec::new();
    while names.last().map(String::as_str) != Some("ended") {
        let event = guard("a posted event", posted.recv())
            .await
            .expect("posted");
        assert!(event["ts_ms"].as_u64().is_some_and(|t| t > 0), "{event}");
        names.push(event["event"].as_str().expect("an event name").to_owned());
        if names.last().map(String::as_str) == Some("connected") {
            assert_eq!(event["agent_label"], "Alex");
        }
    }
    // The customer's connection went without CLOSE: the session waits for it to resume
    // (spec §3.5), then ends.
    assert_eq!(
        names,
        ["opened", "invited", "connected", "disconnected", "ended"]
    );
    relay.shutdown().await;
}

/// HELLO and JOIN in one round trip (spec §7.1): the relay answers WELCOME then JOINED; a
/// wrong code pipelined the same way is refused and the channel stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_and_join_travel_together() {
    let relay = start_relay(TTL);
    let (consumer, code) = waiting(&relay, "visitor-24").await;
    let conn = guard(
        "connect",
        client::connect(relay.addr, relay.fingerprint, Role::Agent),
    )
    .await
    .expect("connect");
    let r = guard(
        "pipelined wrong code",
        ControlChannel::open_and_join(
            conn,
            client::hello(Role::Agent),
            Credential::Code("not-a-code".into()),
            "Alex",
        ),
    )
    .await;
    assert!(
        matches!(
            r,
            Err(ClientError::Refused {
                code: ErrorCode::SessionNotFound,
                ..
            })
        ),
        "{r:?}"
    );
    let (agent, joined) = common::join_agent(&relay, code).await;
    assert_eq!(joined.peer_label, "visitor-24");
    assert_eq!(agent.welcome().role, Role::Relay, "WELCOME came first");
    let mut consumer = consumer;
    let told = guard("consumer told", consumer.wait_joined())
        .await
        .expect("joined");
    assert_eq!(told.peer_label, "Alex");
    relay.shutdown().await;
}
