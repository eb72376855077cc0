//! Resumption (issue 7.5, spec §3.5) over real QUIC through the relay: a connection killed
//! mid-snapshot or mid-stream comes back on a new connection, the DOM stream continues from
//! what the agent acknowledged (or from a new snapshot when nothing was), nothing is lost and
//! the final hashes match. The consumer's link is the project's emulated slow link.

mod common;

use std::time::Duration;

use common::guard;
use tandem_engine::{LivePage, Resumption};
use tandem_peers::client::{self, ControlChannel};
use tandem_peers::link::{Link, LinkSpec};
use tandem_peers::relay::{RelayEvent, RelayHandle};
use tandem_peers::session::{
    self, AgentOptions, AgentReport, ChangeSource, ConsumerOptions, ConsumerReport,
    CustomerCommand, SessionError,
};
use tandem_protocol::message::{Credential, Role};
use tokio::sync::mpsc;

/// How long a whole resumed session may take before the test fails.
const SESSION_GUARD: Duration = Duration::from_secs(60);

/// A page whose compressed snapshot takes seconds at 750 kbit/s: paragraphs of text that does
/// not repeat (a seeded generator), so compression cannot shrink it much.
fn large_page() -> String {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut html = String::from(
        "<!DOCTYPE html><html><head><title>Order history</title></head><body><h1>Orders</h1>",
    );
    for i in 0..1_500 {
        html.push_str(&format!("<p id=p{i}>"));
        for _ in 0..12 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            html.push_str(&format!("{:x} ", state));
        }
        html.push_str("</p>");
    }
    html.push_str("</body></html>");
    html
}

/// A resumable consumer on `link_spec` in front of `relay`, running `opts`; returns its code,
/// the command sender and its task.
async fn consumer(
    relay: &RelayHandle,
    link_spec: &str,
    opts: ConsumerOptions,
) -> (
    String,
    mpsc::Sender<CustomerCommand>,
    tokio::task::JoinHandle<Result<ConsumerReport, SessionError>>,
    Option<Link>,
) {
    let spec: LinkSpec = link_spec.parse().expect("a link");
    let link = Link::spawn_unless_none(relay.addr, &spec)
        .await
        .expect("the link starts");
    let addr = link.as_ref().map_or(relay.addr, Link::addr);
    let conn = guard(
        "connect",
        client::connect(addr, relay.fingerprint, Role::Consumer),
    )
    .await
    .expect("connect");
    let ctl = guard(
        "welcome",
        ControlChannel::open(conn, client::hello(Role::Consumer)),
    )
    .await
    .expect("welcome")
    .resumable(relay.fingerprint);
    let (tx, rx) = mpsc::channel(8);
    let mut opts = opts;
    opts.commands = Some(rx);
    let (code_tx, code_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(session::run_consumer(ctl, opts, move |created| {
        let _ = code_tx.send(created.code.clone());
    }));
    let code = guard("the session code", code_rx).await.expect("a code");
    (code, tx, task, link)
}

/// A resumable agent joined by `code`, running `opts` in a task.
async fn agent(
    relay: &RelayHandle,
    code: String,
    opts: AgentOptions,
) -> tokio::task::JoinHandle<Result<AgentReport, SessionError>> {
    let (ctl, _) = common::join_agent(relay, code).await;
    let ctl = ctl.resumable(relay.fingerprint);
    tokio::spawn(session::run_agent(ctl, opts, std::time::Instant::now()))
}

async fn finish(
    consumer: tokio::task::JoinHandle<Result<ConsumerReport, SessionError>>,
    agent: tokio::task::JoinHandle<Result<AgentReport, SessionError>>,
) -> (ConsumerReport, AgentReport) {
    let consumer = tokio::time::timeout(SESSION_GUARD, consumer)
        .await
        .expect("the consumer finishes")
        .expect("the consumer task")
        .expect("the consumer's session");
    let agent = tokio::time::timeout(SESSION_GUARD, agent)
        .await
        .expect("the agent finishes")
        .expect("the agent task")
        .expect("the agent's session");
    (consumer, agent)
}

/// Cuts the consumer's connection `ms` milliseconds from now, as a lost link would.
async fn drop_after(commands: &mpsc::Sender<CustomerCommand>, ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    commands
        .send(CustomerCommand::DropConnection)
        .await
        .expect("the consumer listens");
}

/// Nothing was lost: the agent acknowledged the final state and holds the customer's page,
/// without a divergence on the way.
fn assert_same_page(c: &ConsumerReport, a: &AgentReport) {
    assert!(c.acked, "the agent acknowledged the final state");
    assert_eq!(a.hash, Some(c.hash), "the agent holds the customer's page");
    assert_eq!(a.divergences, 0);
}

/// Events the relay reported so far, by name.
fn events(rx: &mut tokio::sync::broadcast::Receiver<RelayEvent>) -> Vec<String> {
    let mut names = Vec::new();
    while let Ok(e) = rx.try_recv() {
        let name = match e {
            RelayEvent::Disconnected { side, .. } => format!("disconnected:{side}"),
            RelayEvent::Reconnected { side, .. } => format!("reconnected:{side}"),
            RelayEvent::Ended { reason, .. } => format!("ended:{reason}"),
            RelayEvent::Connected { .. } => "connected".into(),
            _ => continue,
        };
        names.push(name);
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_snapshot_comes_back_with_a_new_epoch() {
    let relay = common::start_relay(|c| c.table.resume_grace = Duration::from_secs(20));
    let mut seen = relay.subscribe();
    let mut opts = common::sample_options(ChangeSource::None);
    opts.html = large_page();
    opts.preupload = false;
    let (code, commands, consumer, _link) = consumer(&relay, "300ms,750kbit,1%,seed=5", opts).await;
    let agent = agent(&relay, code, AgentOptions::default()).await;
    // The snapshot (hundreds of KB) takes seconds at 750 kbit/s: cut the link while it is on
    // its way.
    drop_after(&commands, 1200).await;
    let (c, a) = finish(consumer, agent).await;

    assert_eq!(c.resumptions.len(), 1, "{:?}", c.resumptions);
    let r = c.resumptions[0];
    assert!(r.own);
    assert_eq!(
        r.how,
        Resumption::Snapshot,
        "nothing was acknowledged: a new epoch"
    );
    assert!(
        r.zero_rtt,
        "the HELLO went as 0-RTT data on a ticket of the first connection"
    );
    assert_eq!(c.snapshots, 2, "the cut snapshot and the new epoch's");
    assert_same_page(&c, &a);
    assert!(
        a.resumptions.iter().any(|r| !r.own),
        "the agent was told (REJOINED)"
    );
    let names = events(&mut seen);
    assert!(
        names.contains(&"disconnected:consumer".to_owned())
            && names.contains(&"reconnected:consumer".to_owned()),
        "{names:?}"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_stream_continues_from_what_the_agent_acknowledged() {
    let relay = common::start_relay(|c| c.table.resume_grace = Duration::from_secs(20));
    let mut opts = common::sample_options(ChangeSource::Live {
        generator: LivePage::new(7),
        per_batch: 3,
        batches: Some(120),
    });
    opts.interval = Duration::from_millis(20);
    opts.preupload = false;
    let (code, commands, consumer, _link) = consumer(&relay, "20ms,10mbit", opts).await;
    let agent = agent(&relay, code, AgentOptions::default()).await;
    // The snapshot is acknowledged within a few round trips; the page keeps changing.
    drop_after(&commands, 900).await;
    let (c, a) = finish(consumer, agent).await;

    assert_eq!(c.resumptions.len(), 1, "{:?}", c.resumptions);
    let r = c.resumptions[0];
    assert!(r.own);
    assert!(
        matches!(r.how, Resumption::Continue { resent } if resent <= 1),
        "one patch at most was in flight: {:?}",
        r.how
    );
    assert_eq!(c.snapshots, 1, "no new snapshot: the epoch continued");
    assert!(c.patches > 2, "{} patches", c.patches);
    assert_same_page(&c, &a);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_stream_comes_back_and_catches_up() {
    let relay = common::start_relay(|c| c.table.resume_grace = Duration::from_secs(20));
    let mut seen = relay.subscribe();
    let mut opts = common::sample_options(ChangeSource::Live {
        generator: LivePage::new(9),
        per_batch: 3,
        batches: Some(120),
    });
    opts.interval = Duration::from_millis(20);
    opts.preupload = false;
    let (code, _commands, consumer, _link) = consumer(&relay, "20ms,10mbit", opts).await;
    let agent = agent(
        &relay,
        code,
        AgentOptions {
            drop_after: Some(Duration::from_millis(500)),
            ..AgentOptions::default()
        },
    )
    .await;
    let (c, a) = finish(consumer, agent).await;

    assert_eq!(
        a.resumptions.iter().filter(|r| r.own).count(),
        1,
        "{:?}",
        a.resumptions
    );
    assert_eq!(c.resumptions.len(), 1, "{:?}", c.resumptions);
    let r = c.resumptions[0];
    assert!(!r.own, "the consumer was told the agent came back");
    assert!(
        matches!(r.how, Resumption::Continue { .. }),
        "the agent kept its tree: {:?}",
        r.how
    );
    assert_eq!(c.snapshots, 1);
    assert_same_page(&c, &a);
    let names = events(&mut seen);
    assert!(names.contains(&"reconnected:agent".to_owned()), "{names:?}");
    relay.shutdown().await;
}

/// A peer that does not come back within the grace period: the session ends for the other
/// side with `ConnectionLost`, as without resumption (spec §3.3, §3.5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_come_back_ends_the_session_after_the_grace_period() {
    let relay = common::start_relay(|c| c.table.resume_grace = Duration::from_millis(500));
    let mut seen = relay.subscribe();
    // Not resumable: the consumer's runner gives up when its connection goes.
    let mut opts = common::sample_options(ChangeSource::Live {
        generator: LivePage::new(3),
        per_batch: 1,
        batches: None,
    });
    let (tx, rx) = mpsc::channel(1);
    opts.commands = Some(rx);
    let (code, consumer) = common::consumer_session(&relay, opts).await;
    let agent = agent(&relay, code, AgentOptions::default()).await;
    drop_after(&tx, 300).await;
    let c = guard("the consumer", consumer).await.expect("task");
    assert!(c.is_err(), "a consumer that cannot resume ends");
    let a = guard("the agent", agent).await.expect("task");
    assert!(a.is_ok(), "the agent ends cleanly on END: {a:?}");
    let names = events(&mut seen);
    assert_eq!(
        names,
        [
            "connected",
            "disconnected:consumer",
            "ended:connection_lost"
        ]
    );
    relay.shutdown().await;
}

/// A consumer that pushes the resources of `testdata/resources/site/page1.html` (spec §14.4)
/// over `link` to `relay`, and an agent joined over `agent_link`; returns the two sessions'
/// tasks, the consumer's command channel and the links, with the agent just started.
async fn pushing_pair(
    relay: &RelayHandle,
    (link, agent_link): (&str, &str),
) -> (
    tokio::task::JoinHandle<Result<ConsumerReport, SessionError>>,
    tokio::task::JoinHandle<Result<AgentReport, SessionError>>,
    mpsc::Sender<CustomerCommand>,
    [Link; 2],
) {
    use tandem_peers::resources::ResourceOptions;

    let page = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/resources/site/page1.html");
    let spec: LinkSpec = link.parse().expect("a link");
    let link = Link::spawn(relay.addr, &spec)
        .await
        .expect("the link starts");
    let conn = guard(
        "connect",
        client::connect(link.addr(), relay.fingerprint, Role::Consumer),
    )
    .await
    .expect("connect");
    let mut hello = client::hello(Role::Consumer);
    hello.capabilities = client::CAPABILITIES_WITH_RESOURCES;
    let ctl = guard("welcome", ControlChannel::open(conn, hello))
        .await
        .expect("welcome")
        .resumable(relay.fingerprint);
    let mut opts = common::sample_options(ChangeSource::None);
    opts.html = std::fs::read_to_string(&page).expect("the page");
    opts.url = "https://site.example/page1.html".into();
    opts.preupload = false;
    let (tx, rx) = mpsc::channel(8);
    opts.commands = Some(rx);
    let (code_tx, code_rx) = tokio::sync::oneshot::channel();
    let consumer = tokio::spawn(session::run_consumer_with(
        ctl,
        opts,
        // Pushed right behind the snapshot.
        Some(ResourceOptions {
            mode: tandem_engine::resource::SendMode::Push,
            ..ResourceOptions::for_page(&page)
        }),
        move |created| {
            let _ = code_tx.send(created.code.clone());
        },
    ));
    let code = guard("the code", code_rx).await.expect("a code");

    let agent_spec: LinkSpec = agent_link.parse().expect("a link");
    let agent_link = Link::spawn(relay.addr, &agent_spec)
        .await
        .expect("the link starts");
    let conn = guard(
        "connect",
        client::connect(agent_link.addr(), relay.fingerprint, Role::Agent),
    )
    .await
    .expect("connect");
    let mut hello = client::hello(Role::Agent);
    hello.capabilities = client::CAPABILITIES_WITH_RESOURCES;
    let (ctl, _) = guard(
        "join",
        ControlChannel::open_and_join(conn, hello, Credential::Code(code), "Alex"),
    )
    .await
    .expect("joined");
    let agent = tokio::spawn(session::run_agent(
        ctl.resumable(relay.fingerprint),
        AgentOptions::default(),
        std::time::Instant::now(),
    ));
    (consumer, agent, tx, [link, agent_link])
}

/// The agent ended on the customer's page holding every blob it refers to, and said so.
fn every_blob_arrived(
    c: ConsumerReport,
    a: AgentReport,
) -> (
    tandem_peers::resources::DownlinkReport,
    tandem_peers::session::ConsumerResourceReport,
) {
    assert_eq!(a.hash, Some(c.hash));
    let res = a.resources.expect("the session took resources");
    assert_eq!(res.missing, 0, "every blob arrived: {res:?}");
    let up = c.resources.expect("resources");
    assert!(up.settled, "the agent said it holds them all");
    (res, up)
}

/// A relay that keeps a session through a 20 s absence and caches no blob.
fn relay_without_cache() -> RelayHandle {
    common::start_relay(|c| {
        c.table.resume_grace = Duration::from_secs(20);
        // No relay cache: every blob has to come from the consumer.
        c.cache_bytes = 0;
    })
}

/// With resources (spec §14): blobs in flight when the consumer's connection is cut are asked
/// for again and sent again on the new connection; the agent ends with every blob the page
/// refers to, and the same page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_cut_off_by_a_lost_connection_are_sent_again() {
    let relay = relay_without_cache();
    // A drop-tail queue of 3 KB: the blobs (7 KB at 48 kbit/s, over a second) wait in the
    // consumer's QUIC, not in the link, when the connection goes.
    let (consumer, agent, tx, _links) =
        pushing_pair(&relay, ("100ms,48kbit,queue=3kb", "none")).await;
    drop_after(&tx, 900).await;
    let (c, a) = finish(consumer, agent).await;

    assert_eq!(c.resumptions.len(), 1, "{:?}", c.resumptions);
    let (_, up) = every_blob_arrived(c, a);
    assert!(
        up.uplink.sends.values().any(|&n| n > 1),
        "some blob was cut off and sent again: {:?}",
        up.uplink
    );
    relay.shutdown().await;
}

/// Pushed blobs (spec §14.4) go once: the agent asks for each blob its snapshot refers to
/// before the pushed stream reaches it, and neither the relay nor the consumer answers such a
/// `WANT` that crossed a blob on its way (`resources::Transit`), but for one race the spec
/// leaves. With the consumer on the slow
/// link, the `WANT`s pass the relay before the blobs do and the consumer drops them; with the
/// agent on it, the relay holds the blobs (their streams acknowledged to the consumer) while
/// it forwards them, and drops them itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_want_that_crossed_a_pushed_blob_is_not_answered_again() {
    let mut wanted = 0;
    for links in [("100ms,200kbit", "none"), ("none", "100ms,200kbit")] {
        wanted += pushed_blobs_go_once(links).await;
    }
    // The agent asked for blobs it saw before their streams reached it (how many depends on
    // how the snapshot and the streams interleave on the agent's link).
    assert!(wanted > 0, "some WANT crossed a pushed blob");
}

/// One session of [`a_want_that_crossed_a_pushed_blob_is_not_answered_again`]; returns how
/// many blobs the agent asked for.
async fn pushed_blobs_go_once(links: (&str, &str)) -> u64 {
    let relay = relay_without_cache();
    let (consumer, agent, _tx, _links) = pushing_pair(&relay, links).await;
    let (c, a) = finish(consumer, agent).await;

    let (res, up) = every_blob_arrived(c, a);
    // Each went once, but for the race spec §14.4 leaves: an agent that asks for a blob its
    // QUIC stack already received (and acknowledged) but it has not yet read sends a WANT
    // that comes after the stream's acknowledgement. On a busy machine (a core spinning beside the tests) that
    // happened to 2 of the 8 in 1 run of 20, never to more. Without the consumer's rule 3 to
    // 7 of the 8 went twice, without the relay's 3 to 6.
    let twice = up.uplink.sends.values().filter(|&&n| n > 1).count();
    assert!(
        twice <= 2 && up.uplink.sends.values().all(|&n| n <= 2),
        "each blob went once over {links:?}: {:?}",
        up.uplink
    );
    assert!(res.stopped <= 2, "{links:?}: {res:?}");
    relay.shutdown().await;
    res.wanted
}

/// `tandem demo --drop-after MS` cuts the consumer's connection mid-session and reports how it
/// came back; the agent still ends on the customer's page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_drops_and_resumes_on_request() {
    use tandem_peers::demo::{DemoArgs, demo_over};

    let args = DemoArgs {
        batches: 60,
        batch_size: 5,
        interval_ms: 20,
        seed: 4,
        json: true,
        drop_after: Some(400),
        ..DemoArgs::default()
    };
    let link: LinkSpec = "10ms,10mbit".parse().expect("a link");
    let report = tokio::time::timeout(SESSION_GUARD, demo_over(&args, &link))
        .await
        .expect("the demo finishes")
        .expect("the demo runs");
    assert!(report.hashes_match);
    assert_eq!(report.resumptions.len(), 1, "{:?}", report.resumptions);
    assert_eq!(report.resumptions[0].how, "continue");
}

/// The agent's connection goes while the consumer's snapshot is crossing a slow link: the relay
/// stops the consumer's DOM stream, the consumer waits, and when the agent is back (REJOINED)
/// it sends a new snapshot, since the agent never acknowledged the cut one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_snapshot_gets_a_new_epoch_when_it_is_back() {
    let relay = common::start_relay(|c| c.table.resume_grace = Duration::from_secs(20));
    let mut opts = common::sample_options(ChangeSource::None);
    opts.html = large_page();
    opts.preupload = false;
    let (code, _commands, consumer, _link) =
        consumer(&relay, "300ms,750kbit,1%,seed=8", opts).await;
    let agent = agent(
        &relay,
        code,
        AgentOptions {
            drop_after: Some(Duration::from_millis(900)),
            ..AgentOptions::default()
        },
    )
    .await;
    let (c, a) = finish(consumer, agent).await;

    assert_eq!(c.resumptions.len(), 1, "{:?}", c.resumptions);
    let r = c.resumptions[0];
    assert!(!r.own);
    assert_eq!(
        r.how,
        Resumption::Snapshot,
        "the cut snapshot was never acknowledged"
    );
    assert_eq!(c.snapshots, 2);
    assert_same_page(&c, &a);
    assert!(
        a.resumptions.iter().any(|r| r.own && r.zero_rtt),
        "{:?}",
        a.resumptions
    );
    relay.shutdown().await;
}

/// A paired session whose consumer's connection was cut (without CLOSE) and noticed by the
/// relay: the agent's channel and the consumer's `JOINED`.
async fn consumer_gone(
    relay: &RelayHandle,
    seen: &mut tokio::sync::broadcast::Receiver<RelayEvent>,
) -> (ControlChannel, tandem_protocol::message::Joined) {
    let mut consumer = common::channel(relay, Role::Consumer).await;
    let created = guard("session", consumer.open_session("Customer"))
        .await
        .expect("created");
    let mut agent = common::channel(relay, Role::Agent).await;
    guard("join", agent.join(Credential::Code(created.code), "Alex"))
        .await
        .expect("joined");
    let joined = guard("consumer joined", consumer.wait_joined())
        .await
        .expect("joined");
    consumer.connection().close(0u32.into(), b"gone");
    guard("the relay notices", async {
        while !matches!(seen.recv().await, Ok(RelayEvent::Disconnected { .. })) {}
    })
    .await;
    (agent, joined)
}

/// While one side is away, the other is still heard: its `END` ends the session at once rather
/// than when the grace period is over (spec §3.5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_side_that_stayed_can_end_the_session_while_the_other_is_away() {
    let relay = common::start_relay(|c| c.table.resume_grace = Duration::from_secs(30));
    let mut seen = relay.subscribe();
    let (agent, _) = consumer_gone(&relay, &mut seen).await;
    // Well inside the 30 s grace period: the relay answers the END with CLOSE at once.
    guard("the agent ends the session", agent.end())
        .await
        .expect("ended");
    let ended = guard("the ended event", async {
        loop {
            if let Ok(RelayEvent::Ended { reason, .. }) = seen.recv().await {
                break reason;
            }
        }
    })
    .await;
    assert_eq!(ended, "ended_by_agent");
    relay.shutdown().await;
}

/// The relay's side of resumption, message by message: the consumer's `JOINED` carries a
/// token; after its connection goes, what the agent sends meanwhile is held; the consumer comes
/// back with the token (spent: a second use is refused), gets a new one, then the held
/// message; the agent is told `REJOINED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_seats_a_returning_consumer_and_delivers_what_was_held() {
    use tandem_peers::client::{ClientError, Reconnect};
    use tandem_protocol::ErrorCode;
    use tandem_protocol::Message;
    use tandem_protocol::message::{Rejoined, Status};

    let relay = common::start_relay(|c| c.table.resume_grace = Duration::from_secs(30));
    let mut seen = relay.subscribe();
    let (mut agent, joined) = consumer_gone(&relay, &mut seen).await;
    assert_eq!(joined.resume_token.len(), 32, "a 128-bit token");
    let status = Message::Status(Status {
        rtt_ms: 42,
        loss_ppm: 0,
        throughput_bps: 1000,
    });
    agent.send(&status).await.expect("sent");

    let back = Reconnect::new(relay.addr, relay.fingerprint, client::hello(Role::Consumer));
    let (mut consumer, again) = guard("resume", back.resume(&joined.resume_token, "Customer"))
        .await
        .expect("seated again");
    assert!(consumer.used_0rtt(), "the HELLO went as 0-RTT data");
    assert_ne!(again.resume_token, joined.resume_token, "a fresh token");
    assert_eq!(
        guard("held", consumer.recv()).await.expect("read"),
        Some(status),
        "what the agent sent meanwhile"
    );
    assert_eq!(
        guard("rejoined", agent.recv()).await.expect("read"),
        Some(Message::Rejoined(Rejoined {
            peer_role: Role::Consumer
        }))
    );
    // The spent token opens nothing.
    let spent = guard("spent token", back.resume(&joined.resume_token, "Customer")).await;
    assert!(
        matches!(
            spent,
            Err(ClientError::Refused {
                code: ErrorCode::SessionNotFound,
                ..
            })
        ),
        "{spent:?}"
    );
    relay.shutdown().await;
}
