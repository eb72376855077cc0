//! `tandem demo`: a relay, a consumer and an agent in one process over real QUIC on loopback.
//! The consumer shares the built-in sample page (or `--page`) and a stream of generated
//! changes; the demo prints the bytes sent (the DOM frames, and what they took on the wire once
//! compressed, spec §4.6), the times to first render and to complete (as the end-to-end
//! benchmark counts them, from the agent starting to connect) and the final hashes of both
//! sides, and succeeds only when they match. With `--link SPEC` the consumer's and the agent's
//! connections to the relay each cross an emulated link ([`crate::link`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tandem_engine::Resumption;
use tandem_engine::resource::SendMode;
use tandem_protocol::Limits;
use tandem_protocol::message::{Capabilities, Credential, Mode, Role};

use crate::client::{self, ClientError, ControlChannel};
use crate::hands::{ActionRecord, Consent, HandsOptions, Outcome, demo_script, mode_name};
use crate::link::{Link, LinkCounters, LinkSpec};
use crate::presence::{Presence, describe_platform, describe_status};
use crate::relay::{self, RelayConfig};
use crate::resources::{DownlinkReport, ResourceOptions};
use crate::session::{
    self, AgentOptions, AgentReport, ConsumerOptions, ConsumerReport, SessionError,
};
use crate::session::{CustomerCommand, Invitations};
use crate::snapshot::MaskArgs;
use crate::transport::{self, Identity, TransportError};

/// The longest `--returning-agent`'s earlier visit waits for the relay's session ticket.
pub const VISIT_LIMIT: Duration = Duration::from_secs(10);

/// The built-in sample page: an order page with a form.
pub const SAMPLE_PAGE: &str = include_str!("../assets/sample.html");

/// Command-line arguments of `tandem demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Share this HTML file (or states directory) instead of the built-in page.
    #[arg(long, value_name = "FILE|DIR")]
    pub page: Option<PathBuf>,
    /// Batches of generated changes.
    #[arg(long, default_value_t = 20)]
    pub batches: u64,
    /// Changes per batch.
    #[arg(long, default_value_t = 10)]
    pub batch_size: usize,
    /// Milliseconds between batches.
    #[arg(long, default_value_t = 50)]
    pub interval_ms: u64,
    /// Seed of the live-page generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the agent's final page as HTML to FILE.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Do not offer compressed DOM streams (spec §4.6): send the frames as they are.
    #[arg(long)]
    pub no_compression: bool,
    /// What the consumer masks before anything leaves it (spec §12).
    #[command(flatten)]
    pub mask: MaskArgs,
    /// Let the agent act: the customer grants MODE (follow, view, guide, full) and the agent
    /// runs a script that tries every kind of action (point, highlight, wiggle, scroll, click,
    /// type, choose, navigate, ask for more); the demo prints which landed and which the
    /// consumer refused, and why.
    #[arg(long, value_name = "MODE", value_parser = crate::hands::parse_mode)]
    pub mode: Option<Mode>,
    /// Cut the consumer's connection this many milliseconds after the agent joined, as a lost
    /// link would, and watch the session resume (spec §3.5); the report says how.
    #[arg(long, value_name = "MS")]
    pub drop_after: Option<u64>,
    /// Move the customer's pointer every MS milliseconds (a `POINTER` datagram, spec §7.21)
    /// from the agent's join to the end of the session, and report how long the pointer took
    /// to reach the agent, while the snapshot was on its way and over the whole session (with
    /// --json, also every pointer's send time and latency).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub pointer_every: Option<u64>,
    /// The agent has been here before: before it joins, it connects to the relay once, says
    /// `HELLO` and leaves, as an agent's console does between sessions. Its join then goes in
    /// 0-RTT data on the ticket of that visit (spec §3.5), and the report's join time is that
    /// of a returning agent.
    #[arg(long)]
    pub returning_agent: bool,
    /// The agent connects MS milliseconds after the customer's session exists, as an agent
    /// does who is read the session code over the phone, instead of at once. The customer's
    /// snapshot, sent ahead (spec §3.2), is then at the relay, or on its way, when the agent
    /// joins; the agent's times still count from when it starts to connect.
    #[arg(long, value_name = "MS")]
    pub join_after: Option<u64>,
}

impl Default for DemoArgs {
    /// The command line's defaults: `tandem demo` with no options. Read from the parser, so
    /// they cannot drift from `--help`.
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            demo: DemoArgs,
        }
        // No arguments: every field takes its declared default.
        <Command as clap::Parser>::parse_from(["demo"]).demo
    }
}

/// The command line of `tandem demo`: [`DemoArgs`] and the emulated link.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoCommand {
    /// What to share and how.
    #[command(flatten)]
    pub demo: DemoArgs,
    /// Emulate a slow, lossy link between each client and the relay, e.g. `300ms,750kbit,1%`.
    ///
    /// Two forwarders on 127.0.0.1 shape the traffic: one between the consumer and the relay,
    /// one between the agent and the relay, and each direction of each is shaped on its own. A
    /// datagram is lost at random with probability LOSS; otherwise it waits in a drop-tail queue
    /// to be sent at RATE (28 bytes of IP and UDP headers counted), then arrives DELAY later.
    /// DELAY is one-way: `300ms` makes a 600 ms round trip between each client and the relay, and
    /// a DOM frame crosses two links (at least 600 ms) from the consumer to the agent.
    ///
    /// SPEC is comma-separated items in any order: DELAY (us, ms, s), RATE (bit, kbit, mbit,
    /// gbit; steps of 1000), LOSS (%, up to four decimals), queue=SIZE (b, kb, mb in steps of
    /// 1024, or pkt; unbounded when absent), seed=N (the same seed loses the same datagrams;
    /// default 1; the agent's link uses N+1). `none` shapes nothing.
    #[arg(long, value_name = "SPEC", default_value = "none")]
    pub link: LinkSpec,
    /// Send the page's resources by content address (spec §14): with --page, stylesheets,
    /// images and fonts read from files beside it, `data:` URLs and large texts travel once
    /// each as the agent asks for them; --out then writes them as files beside the page.
    #[arg(long)]
    pub resources: bool,
    /// With --resources: the consumer pushes each blob as soon as a snapshot or patch refers
    /// to it and the agent has not said (`HAVE`) that it holds it, instead of waiting for the
    /// agent's `WANT` (spec §14.4): the page's resources arrive a round trip through the relay
    /// sooner. The agent's `WANT`s that cross pushed blobs are not answered again.
    #[arg(long, requires = "resources")]
    pub push: bool,
}

impl DemoCommand {
    /// How the consumer sends resources: `None` without --resources.
    pub fn resource_mode(&self) -> Option<SendMode> {
        self.resources.then_some(if self.push {
            SendMode::Push
        } else {
            SendMode::Pull
        })
    }
}

/// What resources did in a demo session (spec §14).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DemoResourceReport {
    /// Addresses the consumer's page referred to.
    pub referenced: usize,
    /// References the consumer could not load (left as the page has them).
    pub load_errors: u64,
    /// Blobs the consumer uploaded.
    pub uploaded_blobs: u64,
    /// Bytes of `RESOURCE` frames the consumer uploaded.
    pub uploaded_bytes: u64,
    /// Blobs the relay served from its cache.
    pub relay_served_blobs: u64,
    /// Blob bytes the relay served from its cache.
    pub relay_served_bytes: u64,
    /// What the agent received.
    pub agent: DownlinkReport,
}

/// The demo's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    /// Nodes in the page at the start.
    pub nodes: usize,
    /// Bytes of SNAPSHOT frames the consumer sent, uncompressed.
    pub snapshot_bytes: u64,
    /// Bytes of PATCH frames the consumer sent, uncompressed.
    pub patch_bytes: u64,
    /// Whether the DOM streams were compressed (both sides offered `COMPRESSION`).
    pub compressed: bool,
    /// Whether they used codec 0x02, patches coded (both sides offered `CODED_PATCHES` too).
    pub coded_patches: bool,
    /// Bytes the snapshots took on the DOM stream (compressed when `compressed`).
    pub snapshot_wire_bytes: u64,
    /// Bytes the patches took on the DOM stream (compressed when `compressed`).
    pub patch_wire_bytes: u64,
    /// Bytes the agent received on its DOM streams.
    pub agent_dom_wire_bytes: u64,
    /// Patches sent.
    pub patches: u64,
    /// UDP bytes the consumer's connection sent (QUIC, TLS and control included).
    pub udp_bytes: u64,
    /// Milliseconds from the agent joining to its first verified render: the whole page, its
    /// hash checked (the text report's `complete`; the field keeps its older name).
    pub first_render_ms: Option<f64>,
    /// Milliseconds from the agent joining to the first thing it could show: the first parts of
    /// the snapshot once they reach into the body (the top of the page), or the whole page
    /// when no earlier part showed anything (the text report's `first render`).
    pub first_visible_ms: Option<f64>,
    /// Milliseconds from the agent joining to the last blob it received whole and verified
    /// (`--resources`); `None` without resources or blobs.
    pub last_blob_ms: Option<f64>,
    /// Milliseconds from the agent starting to connect to the relay until it had joined (QUIC
    /// handshake, HELLO/WELCOME, JOIN/JOINED): add `first_render_ms` for the time from connect.
    pub agent_join_ms: f64,
    /// Whether the agent's `HELLO` and `JOIN` went as 0-RTT data (`--returning-agent`).
    pub agent_0rtt: bool,
    /// Milliseconds the whole session took.
    pub total_ms: f64,
    /// The consumer's final tree hash.
    pub consumer_hash: String,
    /// The agent's final tree hash.
    pub agent_hash: Option<String>,
    /// Divergences the agent detected and repaired.
    pub divergences: u64,
    /// Whether both hashes are equal.
    pub hashes_match: bool,
    /// The emulated link on each client's connection to the relay (canonical spec), or `none`.
    pub link: String,
    /// What the consumer ↔ relay link did (`up` is consumer → relay); absent without a link.
    pub consumer_link: Option<LinkCounters>,
    /// What the agent ↔ relay link did (`up` is agent → relay); absent without a link.
    pub agent_link: Option<LinkCounters>,
    /// The largest batch the consumer's DOM writer held (a snapshot or one patch), in frame
    /// bytes (backpressure, [`crate::pump`]).
    pub max_batch_bytes: u64,
    /// Milliseconds from each flush to the agent's acknowledgement of it, in order: how far
    /// behind the page the agent was.
    pub ack_delays_ms: Vec<f64>,
    /// The mode the customer granted (`--mode`), when the agent acted.
    pub mode: Option<String>,
    /// What became of each agent message at the consumer, in order.
    pub actions: Vec<ActionRecord>,
    /// What the agent was told about its script: (step, answer), in order.
    pub agent_answers: Vec<(String, String)>,
    /// What the consumer knew of the agent at the end: platform and link (spec §7.29).
    pub consumer_presence: Presence,
    /// What the agent knew of the customer at the end: platform, viewport and link.
    pub agent_presence: Presence,
    /// What resources did, when the demo sent them (`--resources`) and the session
    /// negotiated `RESOURCES`.
    pub resources: Option<DemoResourceReport>,
    /// The consumer's resumptions (spec §3.5), with `--drop-after`.
    pub resumptions: Vec<DemoResumption>,
    /// How long the customer's pointer took to reach the agent, with `--pointer-every`.
    pub pointer: Option<PointerReport>,
}

/// How long the customer's pointer took to reach the agent (`tandem demo --pointer-every`):
/// from the consumer handing each `POINTER` to its connection to the agent reading it, both
/// in this process, so on one clock.
///
/// The customer points once the consumer knows the agent joined, and the relay sent the
/// snapshot (sent ahead) when the agent joined, so on a slow link the first pointers cross
/// the relay's link to the agent behind the snapshot, or not at all when it is small.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PointerReport {
    /// The pointers that arrived while the first snapshot was arriving: between the agent's
    /// `JOINED` and its first verified render.
    pub during_snapshot: PointerLatency,
    /// Every pointer of the session.
    pub all: PointerLatency,
    /// Every pointer of the session in the order sent, with when it left and how long it took:
    /// the series behind the percentiles, for plotting latency against time.
    pub samples: Vec<PointerSample>,
}

/// One pointer of [`PointerReport::samples`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PointerSample {
    /// When it left, in milliseconds after the agent had joined.
    pub sent_ms: f64,
    /// How long it took to reach the agent (its first arrival), in milliseconds; `None` when
    /// it never did.
    pub latency_ms: Option<f64>,
}

impl PointerSample {
    /// The pointers in `sent` (sequence number, when it left), in that order, each matched by
    /// sequence number to its first arrival in `received`, with times from `origin`.
    pub fn series(
        sent: &[(u32, Instant)],
        received: &[(u32, Instant)],
        origin: Instant,
    ) -> Vec<PointerSample> {
        let first = first_arrivals(received);
        sent.iter()
            .map(|&(seq, at)| PointerSample {
                sent_ms: ms_between(origin, at),
                latency_ms: first.get(&seq).map(|&got| ms_between(at, got)),
            })
            .collect()
    }
}

/// The latencies of a set of pointers.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PointerLatency {
    /// Pointers sent: all of them, or within a window of arrivals those from the first to the
    /// last that arrived in it.
    pub sent: usize,
    /// Of them, those that reached the agent (datagrams are not retransmitted; the rest were
    /// lost on the way).
    pub arrived: usize,
    /// The median latency in milliseconds of those that arrived; `None` when none did.
    pub p50_ms: Option<f64>,
    /// The 95th percentile (nearest rank) in milliseconds.
    pub p95_ms: Option<f64>,
    /// The largest latency in milliseconds.
    pub max_ms: Option<f64>,
}

impl PointerLatency {
    /// The latencies of the pointers in `sent` (sequence number, when it left), matched by
    /// sequence number to their first arrival in `received`: of all of them, or with `window`
    /// of those that arrived within it (inclusive).
    pub fn measure(
        sent: &[(u32, Instant)],
        received: &[(u32, Instant)],
        window: Option<(Instant, Instant)>,
    ) -> PointerLatency {
        let first = first_arrivals(received);
        let arrived = |seq: &u32| {
            first
                .get(seq)
                .copied()
                .filter(|at| window.is_none_or(|(from, to)| (from..=to).contains(at)))
        };
        // Positions in `sent` of the first and the last pointer that arrived (in the window).
        let from = sent.iter().position(|(seq, _)| arrived(seq).is_some());
        let to = sent.iter().rposition(|(seq, _)| arrived(seq).is_some());
        let chosen = match (window, from, to) {
            (None, _, _) => sent,
            (Some(_), Some(from), Some(to)) => &sent[from..=to],
            (Some(_), _, _) => &[],
        };
        let mut ms: Vec<f64> = chosen
            .iter()
            .filter_map(|(seq, at)| arrived(seq).map(|got| ms_between(*at, got)))
            .collect();
        ms.sort_by(f64::total_cmp);
        PointerLatency {
            sent: chosen.len(),
            arrived: ms.len(),
            p50_ms: nearest_rank(&ms, 50),
            p95_ms: nearest_rank(&ms, 95),
            max_ms: ms.last().copied(),
        }
    }
}

/// When each pointer of `received` (sequence number, arrival) first arrived: a datagram can
/// arrive twice.
fn first_arrivals(received: &[(u32, Instant)]) -> std::collections::HashMap<u32, Instant> {
    let mut first = std::collections::HashMap::with_capacity(received.len());
    for &(seq, at) in received {
        first.entry(seq).or_insert(at);
    }
    first
}

/// Milliseconds from `from` to `to` (0 when `to` is earlier).
fn ms_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

/// The `p`th percentile of the sorted `values` by the nearest-rank method: the smallest value
/// with at least p % of the values at or below it; `None` for no values.
pub fn nearest_rank(values: &[f64], p: u32) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let rank = (p as usize * values.len()).div_ceil(100).max(1);
    values.get(rank - 1).copied()
}

/// One resumption of the consumer's connection, as the demo reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoResumption {
    /// `continue` (the epoch went on from what the agent acknowledged) or `snapshot`.
    pub how: String,
    /// Patches sent again on the continuation.
    pub resent: usize,
    /// Milliseconds from noticing the loss to the relay's `JOINED` on the new connection.
    pub took_ms: f64,
    /// Whether the new connection's `HELLO` went as 0-RTT data.
    pub zero_rtt: bool,
}

/// Runs the demo over loopback with no link emulation and returns its report.
pub async fn demo(args: &DemoArgs) -> Result<DemoReport, SessionError> {
    demo_over(args, &LinkSpec::none()).await
}

/// `--returning-agent`'s earlier visit: the agent connects to the relay at `agent_addr`, says
/// `HELLO` and stays, as a console does, until the relay's session ticket is in (it comes after
/// the handshake, and one lost on the way comes again a probe timeout later), then leaves. It
/// happens before the customer starts sharing, so the returning agent joins at the moment a
/// new one would, with the consumer as far along. An agent with no ticket after
/// [`VISIT_LIMIT`] joins with a full handshake.
async fn visit(
    agent_addr: std::net::SocketAddr,
    pin: transport::Fingerprint,
) -> Result<(), SessionError> {
    let mut tickets = transport::session_tickets(pin, Role::Agent).map_err(ClientError::from)?;
    let before = *tickets.borrow_and_update();
    let conn = client::connect(agent_addr, pin, Role::Agent).await?;
    let visit = ControlChannel::open(conn, client::hello(Role::Agent)).await?;
    let _ = tokio::time::timeout(VISIT_LIMIT, tickets.wait_for(|&n| n > before)).await;
    visit.leave().await;
    Ok(())
}

/// Runs the demo with each client's connection to the relay crossing a link shaped by `link`
/// (the agent's link draws its losses from seed + 1, so the two links lose different
/// datagrams), and returns its report.
pub async fn demo_over(args: &DemoArgs, link: &LinkSpec) -> Result<DemoReport, SessionError> {
    demo_with(args, link, None).await
}

/// [`demo_over`], with resources sent by content address in `resources` mode when given (spec
/// §14): both sides offer `RESOURCES`, the consumer loads files beside `--page` (only `data:`
/// URLs and large texts for the built-in page), and the report says what moved.
pub async fn demo_with(
    args: &DemoArgs,
    link: &LinkSpec,
    resources: Option<SendMode>,
) -> Result<DemoReport, SessionError> {
    let (html, changes) = match &args.page {
        Some(p) => {
            crate::consumer::page_and_changes(p, Some(args.batches), args.batch_size, args.seed)?
        }
        None => {
            let changes = session::ChangeSource::Live {
                generator: tandem_engine::LivePage::new(args.seed),
                per_batch: args.batch_size,
                batches: Some(args.batches),
            };
            (SAMPLE_PAGE.to_owned(), changes)
        }
    };
    let identity = Identity::generate().map_err(client::ClientError::from)?;
    let relay = relay::spawn(RelayConfig::new(([127, 0, 0, 1], 0).into(), identity))
        .map_err(|e| SessionError::EndedEarly(format!("relay: {e}")))?;
    let (relay_addr, pin) = (relay.addr, relay.fingerprint);
    let agent_spec = LinkSpec {
        seed: link.seed.wrapping_add(1),
        ..*link
    };
    let spawn_err = |e: std::io::Error| client::ClientError::from(TransportError::from(e));
    let consumer_link = Link::spawn_unless_none(relay_addr, link)
        .await
        .map_err(spawn_err)?;
    let agent_link = Link::spawn_unless_none(relay_addr, &agent_spec)
        .await
        .map_err(spawn_err)?;
    let consumer_addr = consumer_link.as_ref().map_or(relay_addr, Link::addr);
    let agent_addr = agent_link.as_ref().map_or(relay_addr, Link::addr);
    if args.returning_agent {
        visit(agent_addr, pin).await?;
    }
    let started = Instant::now();
    let interval = Duration::from_millis(args.interval_ms);
    let (code_tx, code_rx) = tokio::sync::oneshot::channel::<String>();
    let no_compression = args.no_compression;
    let hello = move |role| {
        let mut h = client::hello(role);
        if resources.is_some() {
            h.capabilities = client::CAPABILITIES_WITH_RESOURCES;
        }
        if no_compression {
            let off = Capabilities::COMPRESSION | Capabilities::CODED_PATCHES;
            h.capabilities = Capabilities(h.capabilities.0 & !off.0);
        }
        h
    };

    let policy = args.mask.policy();
    let hands = args.mode.map(|mode| match &args.page {
        Some(p) => crate::consumer::hands_for(p, mode, Consent::Deny),
        None => HandsOptions {
            mode,
            ..HandsOptions::default()
        },
    });
    let script = if args.mode.is_some() {
        demo_script()
    } else {
        Vec::new()
    };
    let resource_opts = resources.map(|mode| ResourceOptions {
        mode,
        ..match &args.page {
            Some(p) => ResourceOptions::for_page(p),
            None => ResourceOptions::without_files(),
        }
    });
    // After the agent joined, the customer's commands: with --drop-after, the consumer's
    // connection is cut that long after; with --pointer-every, the pointer moves until the
    // session ends.
    let (command_tx, command_rx) = tokio::sync::mpsc::channel(4);
    let commands =
        (args.drop_after.is_some() || args.pointer_every.is_some()).then_some(command_rx);
    let (joined_tx, joined_rx) = tokio::sync::watch::channel(false);
    if let Some(ms) = args.drop_after {
        let (tx, mut joined) = (command_tx.clone(), joined_rx.clone());
        tokio::spawn(async move {
            if joined.wait_for(|j| *j).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let _ = tx.send(CustomerCommand::DropConnection).await;
            }
        });
    }
    if let Some(ms) = args.pointer_every {
        let (tx, mut joined) = (command_tx.clone(), joined_rx.clone());
        tokio::spawn(async move {
            if joined.wait_for(|j| *j).await.is_err() {
                return;
            }
            let mut every = tokio::time::interval(Duration::from_millis(ms));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                // The consumer's session ended: its command channel is closed.
                if tx
                    .send(CustomerCommand::Point("body".into()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
    drop((command_tx, joined_rx));
    let consumer = tokio::spawn(async move {
        let conn = client::connect(consumer_addr, pin, Role::Consumer).await?;
        let ctl = ControlChannel::open(conn, hello(Role::Consumer))
            .await?
            .resumable(pin);
        let opts = ConsumerOptions {
            html,
            url: "https://shop.example/orders/NW-48213".into(),
            label: "Sam".into(),
            changes,
            interval,
            limits: Limits::DEFAULT,
            policy,
            hands,
            invitations: Invitations::Decline,
            commands,
            preupload: true,
            fold_bytes: None,
        };
        session::run_consumer_with(ctl, opts, resource_opts, |created| {
            let _ = code_tx.send(created.code.clone());
        })
        .await
    });
    let out = args.out.clone();
    let join_after = args.join_after;
    let agent = tokio::spawn(async move {
        let code = code_rx
            .await
            .map_err(|_| SessionError::EndedEarly("no session code".into()))?;
        if let Some(ms) = join_after {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let connecting = Instant::now();
        // HELLO and JOIN in one round trip (spec §7.1), in 0-RTT data when returning.
        let (ctl, _) = ControlChannel::connect_and_join(
            agent_addr,
            pin,
            hello(Role::Agent),
            Credential::Code(code),
            "Alex",
        )
        .await?;
        let zero_rtt = ctl.used_0rtt();
        let ctl = ctl.resumable(pin);
        let joined_at = Instant::now();
        let _ = joined_tx.send(true);
        let report = session::run_agent(
            ctl,
            AgentOptions {
                limits: Limits::DEFAULT,
                out,
                verbose: false,
                script,
                blobs: None,
                drop_after: None,
            },
            joined_at,
        )
        .await?;
        Ok::<_, SessionError>((report, joined_at - connecting, joined_at, zero_rtt))
    });
    let consumer: Result<ConsumerReport, SessionError> = consumer
        .await
        .map_err(|e| SessionError::EndedEarly(format!("consumer task: {e}")))?;
    let agent: Result<(AgentReport, Duration, Instant, bool), SessionError> = agent
        .await
        .map_err(|e| SessionError::EndedEarly(format!("agent task: {e}")))?;
    let total_ms = started.elapsed().as_secs_f64() * 1000.0;
    let cache = relay.cache_stats();
    // The links stay up while the relay shuts down, so the clients' CONNECTION_CLOSE frames
    // still in flight reach it and it need not wait for them. Both clients have closed their
    // connections, so once those frames are in, the relay's connections only wait out their
    // draining period (three probe timeouts: seconds on a slow link) and send nothing more;
    // the relay finishes that on its own rather than holding up the report.
    let settle = link.delay * 2 + Duration::from_millis(200);
    let _ = tokio::time::timeout(settle, relay.shutdown()).await;
    let consumer_link = consumer_link.map(Link::shutdown);
    let agent_link = agent_link.map(Link::shutdown);
    let (c, (a, join, joined_at, agent_0rtt)) = (consumer?, agent?);
    let pointer = args.pointer_every.map(|_| {
        let (sent, received) = (&c.pointers_sent, &a.pointers_received);
        let snapshot = a.first_render.map(|d| (joined_at, joined_at + d));
        PointerReport {
            during_snapshot: PointerLatency::measure(
                sent,
                received,
                Some(snapshot.unwrap_or((joined_at, joined_at))),
            ),
            all: PointerLatency::measure(sent, received, None),
            samples: PointerSample::series(sent, received, joined_at),
        }
    });
    let resources = c.resources.as_ref().map(|r| DemoResourceReport {
        referenced: r.referenced,
        load_errors: r.load_errors,
        uploaded_blobs: r.uplink.blobs,
        uploaded_bytes: r.uplink.frame_bytes,
        relay_served_blobs: cache.served_blobs,
        relay_served_bytes: cache.served_bytes,
        agent: a.resources.clone().unwrap_or_default(),
    });
    let consumer_hash = session::hex(&c.hash);
    let agent_hash = a.hash.map(|h| session::hex(&h));
    Ok(DemoReport {
        nodes: c.nodes,
        snapshot_bytes: c.snapshot_bytes,
        patch_bytes: c.patch_bytes,
        compressed: c.compressed,
        coded_patches: c.coded_patches,
        snapshot_wire_bytes: c.snapshot_wire_bytes,
        patch_wire_bytes: c.patch_wire_bytes,
        agent_dom_wire_bytes: a.dom_wire_bytes,
        patches: c.patches,
        udp_bytes: c.udp_bytes,
        first_render_ms: a.first_render.map(|d| d.as_secs_f64() * 1000.0),
        first_visible_ms: a.first_visible.map(|d| d.as_secs_f64() * 1000.0),
        last_blob_ms: a.last_blob.map(|d| d.as_secs_f64() * 1000.0),
        agent_join_ms: join.as_secs_f64() * 1000.0,
        agent_0rtt,
        total_ms,
        hashes_match: agent_hash.as_deref() == Some(consumer_hash.as_str()),
        consumer_hash,
        agent_hash,
        divergences: a.divergences,
        link: link.to_string(),
        consumer_link,
        agent_link,
        max_batch_bytes: c.max_batch_bytes,
        ack_delays_ms: c
            .ack_delays
            .iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect(),
        mode: args.mode.map(|m| mode_name(m).to_owned()),
        actions: c.actions,
        agent_answers: a.answers,
        consumer_presence: c.presence,
        agent_presence: a.presence,
        resources,
        resumptions: c
            .resumptions
            .iter()
            .map(|r| {
                let (how, resent) = match r.how {
                    Resumption::Continue { resent } => ("continue", resent),
                    Resumption::Snapshot => ("snapshot", 0),
                };
                DemoResumption {
                    how: how.to_owned(),
                    resent,
                    took_ms: r.took.as_secs_f64() * 1000.0,
                    zero_rtt: r.zero_rtt,
                }
            })
            .collect(),
        pointer,
    })
}

impl DemoReport {
    /// Milliseconds from the agent joining to the first thing it could show (the text report's
    /// and the end-to-end bench's first render): [`DemoReport::first_visible_ms`], never later
    /// than the verified whole page; `None` when nothing showed.
    pub fn first_shown_ms(&self) -> Option<f64> {
        first_shown(self.first_visible_ms, self.first_render_ms)
    }
}

/// The earlier of `visible_ms` and `complete_ms`, whichever exist.
fn first_shown(visible_ms: Option<f64>, complete_ms: Option<f64>) -> Option<f64> {
    match (visible_ms, complete_ms) {
        (Some(v), Some(c)) => Some(v.min(c)),
        (v, c) => v.or(c),
    }
}

/// The report's `first render` and `complete` lines, in the words and from the moment the
/// end-to-end benchmark uses (issue 7): the first render is the first thing the agent could
/// show (the top of the page: the snapshot's first parts once they reach into the body), the
/// complete render the whole page with its hash verified; both counted from the agent starting
/// to connect, with the time after it joined beside them. `join_ms` is
/// [`DemoReport::agent_join_ms`]; `visible_ms` and `complete_ms` are
/// [`DemoReport::first_visible_ms`] and [`DemoReport::first_render_ms`], counted from the join.
fn render_lines(join_ms: f64, visible_ms: Option<f64>, complete_ms: Option<f64>) -> [String; 2] {
    let line = |name: &str, after_join: Option<f64>, what: &str| match after_join {
        Some(ms) => format!(
            "{name:<19}{:.1} ms after the agent started to connect ({ms:.1} ms after it joined; {what})",
            join_ms + ms
        ),
        None => format!("{name:<19}never"),
    };
    let shown = first_shown(visible_ms, complete_ms);
    // A page whose first part already held all of it shows everything at once.
    let what = if shown.is_some() && shown == complete_ms {
        "the whole page at once"
    } else {
        "the top of the page"
    };
    [
        line("first render:", shown, what),
        line(
            "complete:",
            complete_ms,
            "the whole page, its hash verified",
        ),
    ]
}

/// Runs `tandem demo`: prints the report; `Ok(false)` when the hashes differ.
pub async fn run(cmd: DemoCommand) -> Result<bool, SessionError> {
    let mode = cmd.resource_mode();
    let args = cmd.demo;
    let r = demo_with(&args, &cmd.link, mode).await?;
    if args.json {
        // Serializing a struct of numbers and strings cannot fail.
        say!("{}", serde_json::to_string(&r).unwrap_or_default());
    } else {
        say!("tandem demo: relay, consumer and agent over QUIC on loopback");
        if let (Some(c), Some(a)) = (&r.consumer_link, &r.agent_link) {
            say!(
                "link:              {} each way on consumer-relay and on agent-relay (round trip to the relay at least {} ms)",
                r.link,
                2 * cmd.link.delay.as_millis()
            );
            let side = |name: &str, l: &LinkCounters| {
                say!(
                    "{name:<19}{} up / {} down datagrams, {} lost, {} queue-dropped",
                    l.up.packets,
                    l.down.packets,
                    l.up.lost + l.down.lost,
                    l.up.queue_dropped + l.down.queue_dropped
                )
            };
            side("  consumer-relay:", c);
            side("  agent-relay:", a);
        } else {
            say!("link:              none (plain loopback)");
        }
        say!("page nodes:        {}", r.nodes);
        say!("snapshot bytes:    {}", r.snapshot_bytes);
        say!("patches:           {} ({} bytes)", r.patches, r.patch_bytes);
        if r.compressed {
            let pct = |wire: u64, raw: u64| 100.0 * wire as f64 / raw.max(1) as f64;
            say!(
                "on the wire:       snapshot {} bytes ({:.0} %), patches {} bytes ({:.0} %), {}",
                r.snapshot_wire_bytes,
                pct(r.snapshot_wire_bytes, r.snapshot_bytes),
                r.patch_wire_bytes,
                pct(r.patch_wire_bytes, r.patch_bytes),
                if r.coded_patches {
                    "codec 0x02: zstd with dictionary dom-v1, patches coded"
                } else {
                    "codec 0x01: zstd with dictionary dom-v1"
                },
            );
        } else {
            say!("on the wire:       uncompressed (compression not negotiated)");
        }
        say!(
            "UDP bytes sent:    {} (consumer, QUIC and TLS included)",
            r.udp_bytes
        );
        say!(
            "agent joined:      {:.1} ms after it started to connect ({})",
            r.agent_join_ms,
            if r.agent_0rtt {
                "HELLO and JOIN in 0-RTT"
            } else {
                "full handshake"
            }
        );
        for line in render_lines(r.agent_join_ms, r.first_visible_ms, r.first_render_ms) {
            say!("{line}");
        }
        say!("session:           {:.1} ms", r.total_ms);
        say!("consumer hash:     {}", r.consumer_hash);
        say!(
            "agent hash:        {}",
            r.agent_hash.as_deref().unwrap_or("none")
        );
        say!("divergences:       {}", r.divergences);
        for back in &r.resumptions {
            say!(
                "resumed:           after {:.0} ms ({}), {}",
                back.took_ms,
                if back.zero_rtt {
                    "HELLO and JOIN in 0-RTT"
                } else {
                    "full handshake"
                },
                match back.how.as_str() {
                    "continue" =>
                        format!("continued the epoch, {} patches sent again", back.resent),
                    _ => "a new snapshot (the agent had not acknowledged one)".to_owned(),
                }
            );
        }
        if let Some(p) = &r.pointer {
            let line = |name: &str, l: &PointerLatency| {
                let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
                say!(
                    "{name:<19}{} sent, {} arrived; median {} ms, 95th percentile {} ms, max {} ms",
                    l.sent,
                    l.arrived,
                    ms(l.p50_ms),
                    ms(l.p95_ms),
                    ms(l.max_ms)
                );
            };
            line("pointer latency:", &p.all);
            line("  during snapshot:", &p.during_snapshot);
        }
        if args.drop_after.is_some() && r.resumptions.is_empty() {
            say!("resumed:           no (the session ended before the drop)");
        }
        match &r.resources {
            Some(res) => {
                say!(
                    "resources:         {} referenced ({} not loadable); consumer uploaded {} blobs, {} bytes",
                    res.referenced,
                    res.load_errors,
                    res.uploaded_blobs,
                    res.uploaded_bytes
                );
                say!(
                    "  agent:           {} blobs ({} bytes) verified, {} corrupt, {} missing",
                    res.agent.blobs,
                    res.agent.bytes,
                    res.agent.corrupt,
                    res.agent.missing
                );
                if let Some(ms) = r.last_blob_ms {
                    say!("  last blob:       {ms:.1} ms after the agent joined");
                }
            }
            None if cmd.resources => {
                say!("resources:         not negotiated");
            }
            None => {}
        }
        print_presence("customer (agent's view):", &r.agent_presence);
        print_presence("agent (customer's view):", &r.consumer_presence);
        if let Some(mode) = &r.mode {
            print_actions(mode, &r.actions, &r.agent_answers);
        }
        say!(
            "{}",
            if r.hashes_match {
                "hashes match"
            } else {
                "HASHES DIFFER"
            }
        );
    }
    Ok(r.hashes_match)
}

/// Prints the agent's actions as the consumer judged them, and what the agent was told.
fn print_actions(mode: &str, actions: &[ActionRecord], answers: &[(String, String)]) {
    say!("agent's hands:     the customer granted mode {mode}; requests are declined");
    for a in actions {
        let outcome = match &a.outcome {
            Outcome::Landed { effect } => format!("landed: {effect}"),
            Outcome::Refused { code } => format!("REFUSED {code} (the agent is told)"),
            Outcome::Ignored { code: Some(code) } => {
                format!("dropped: {code} (a datagram; not answered)")
            }
            Outcome::Ignored { code: None } => "dropped: stale".to_owned(),
            Outcome::Answered { answer, mode } => format!("answered {answer}; mode {mode}"),
        };
        let what = format!("{} {}", a.action, a.target);
        say!("  {what:<34} in {:<7} {outcome}", a.mode);
    }
    say!("agent was told:");
    for (what, answer) in answers {
        say!("  {what:<40} {answer}");
    }
}

/// Prints what one side knew of the other: platform, and both ends' link figures.
fn print_presence(title: &str, p: &Presence) {
    say!("{title}");
    if let Some(platform) = &p.peer_platform {
        say!("  platform:        {}", describe_platform(platform));
    }
    if let Some(v) = &p.peer_viewport {
        say!(
            "  viewport:        {}×{} @{:.2}",
            v.width,
            v.height,
            f64::from(v.dpr_percent) / 100.0
        );
    }
    match &p.peer_status {
        Some(s) => say!(
            "  their link:      {} ({} STATUS received)",
            describe_status(s),
            p.statuses_received
        ),
        None => say!("  their link:      no STATUS yet (one is sent every second)"),
    }
    if let Some(s) = &p.own_status {
        say!("  own link:        {}", describe_status(s));
    }
}

#[cfg(test)]
mod tests {
    use super::render_lines;

    #[test]
    fn the_first_render_and_the_complete_render_count_from_the_connect() {
        let [first, complete] = render_lines(1250.0, Some(100.0), Some(400.0));
        assert_eq!(
            first,
            "first render:      1350.0 ms after the agent started to connect (100.0 ms after it joined; the top of the page)"
        );
        assert_eq!(
            complete,
            "complete:          1650.0 ms after the agent started to connect (400.0 ms after it joined; the whole page, its hash verified)"
        );
    }

    #[test]
    fn a_page_shown_in_one_part_renders_whole_and_a_page_never_verified_says_so() {
        let [first, _] = render_lines(1000.0, Some(50.0), Some(50.0));
        assert!(first.contains("1050.0 ms") && first.ends_with("the whole page at once)"));
        let [first, complete] = render_lines(1000.0, None, Some(70.0));
        assert!(first.contains("1070.0 ms") && first.ends_with("the whole page at once)"));
        assert!(complete.contains("1070.0 ms"));
        let [first, complete] = render_lines(1000.0, Some(30.0), None);
        assert!(first.contains("1030.0 ms") && first.ends_with("the top of the page)"));
        assert_eq!(complete, "complete:          never");
        let [first, complete] = render_lines(1000.0, None, None);
        assert_eq!(first, "first render:      never");
        assert_eq!(complete, "complete:          never");
    }
}
