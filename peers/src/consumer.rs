//! `tandem consumer PAGE`: shares a page through a relay. PAGE is an HTML file (changes come
//! from the built-in live-page generator) or a directory of successive states `0.html, 1.html,
//! …` (each later state becomes one patch).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tandem_engine::LivePage;
use tandem_protocol::Limits;
use tandem_protocol::message::{Mode, Role, Viewport};

use crate::client::{self, ControlChannel};
use crate::hands::{Consent, HandsOptions};
use crate::link::{Link, LinkSpec};
use crate::session::{
    self, ChangeSource, ConsumerOptions, CustomerCommand, Invitations, SessionError,
};
use crate::snapshot::MaskArgs;
use crate::transport::{Fingerprint, TransportError};

/// Command-line arguments of `tandem consumer`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsumerArgs {
    /// The page: an HTML file, or a directory of states 0.html, 1.html, …
    pub page: PathBuf,
    /// The relay's UDP address.
    #[arg(long, default_value = "127.0.0.1:4433")]
    pub relay: SocketAddr,
    /// The relay's certificate fingerprint (SHA-256, hex), as `tandem relay` prints it.
    #[arg(long)]
    pub pin: Fingerprint,
    /// The page URL the agent is told.
    #[arg(long, default_value = "https://example.com/")]
    pub url: String,
    /// Label shown to the agent.
    #[arg(long, default_value = "Customer")]
    pub label: String,
    /// Batches of generated changes to send (live generator only); 0 runs until the session ends.
    #[arg(long, default_value_t = 0)]
    pub batches: u64,
    /// Changes per generated batch.
    #[arg(long, default_value_t = 10)]
    pub batch_size: usize,
    /// Milliseconds between batches.
    #[arg(long, default_value_t = 500)]
    pub interval_ms: u64,
    /// Seed of the live-page generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Emulate a slow, lossy link to the relay, e.g. `300ms,750kbit,1%`.
    ///
    /// A forwarder on 127.0.0.1 sits between this process and the relay, and the QUIC
    /// connection goes through it. Each direction (to the relay, from the relay) is shaped on its
    /// own: a datagram is lost at random with probability LOSS; otherwise it waits in a drop-tail
    /// queue to be sent at RATE (28 bytes of IP and UDP headers counted), then arrives DELAY
    /// later. DELAY is one-way, so `300ms` makes a 600 ms round trip to the relay.
    ///
    /// SPEC is comma-separated items in any order: DELAY (us, ms, s), RATE (bit, kbit, mbit,
    /// gbit; steps of 1000), LOSS (%, up to four decimals), queue=SIZE (b, kb, mb in steps of
    /// 1024, or pkt; unbounded when absent), seed=N (the same seed loses the same datagrams;
    /// default 1). `none` shapes nothing.
    #[arg(long, value_name = "SPEC", default_value = "none")]
    pub link: LinkSpec,
    /// What to mask before anything leaves this process.
    #[command(flatten)]
    pub mask: MaskArgs,
    /// The mode the customer grants the agent (follow, view, guide, full; spec §13.2). The
    /// agent may ask for more; see --consent.
    #[arg(long, value_name = "MODE", value_parser = crate::hands::parse_mode, default_value = "follow")]
    pub mode: Mode,
    /// The customer's answer when the agent asks for a higher mode.
    #[arg(long, value_enum, default_value = "deny")]
    pub consent: ConsentArg,
    /// How to answer an agent's invitation while waiting: ask on the terminal, accept or
    /// decline. Agents invite by this consumer's --label.
    #[arg(long, value_enum, default_value = "ask")]
    pub invitations: Invitations,
    /// The viewport announced to the agent, WIDTHxHEIGHT or WIDTHxHEIGHT@DPR (e.g. 390x844@3).
    #[arg(long, value_parser = crate::presence::parse_viewport, default_value = "1280x800@1")]
    pub viewport: Viewport,
    /// The above-the-fold cut, in KiB of records: part 0 of each snapshot holds the top of the
    /// page in document order, which the agent shows before the rest arrives (spec §7.14).
    /// Smaller shows something sooner; the default is the part size, 32.
    #[arg(long, value_name = "KIB", value_parser = clap::value_parser!(u32).range(1..=16384))]
    pub fold: Option<u32>,
    /// Send the page's resources by content address (spec §14): stylesheets, images and fonts
    /// read from files under the page's directory (the states directory itself for a
    /// directory), `data:` URLs and large texts travel once each, as the agent asks for them,
    /// and a relay may serve the public ones from its cache. Used when the agent takes them.
    #[arg(long)]
    pub resources: bool,
    /// With --resources: push each blob as soon as a snapshot or patch refers to it and the
    /// agent has not said (`HAVE`) that it holds it, instead of waiting for its `WANT` (spec
    /// §14.4): the resources arrive a round trip sooner, and a relay's cache answers only
    /// later agents. The agent's `WANT`s that cross pushed blobs are not answered again.
    #[arg(long, requires = "resources")]
    pub push: bool,
}

/// The customer's answer to mode requests, on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsentArg {
    /// Grant every request.
    Grant,
    /// Deny every request.
    Deny,
}

impl From<ConsentArg> for Consent {
    fn from(c: ConsentArg) -> Consent {
        match c {
            ConsentArg::Grant => Consent::Grant,
            ConsentArg::Deny => Consent::Deny,
        }
    }
}

/// The customer's commands typed on the terminal, one per line (`pause`, `resume`,
/// `mode guide`, `end`, `y`/`n` to an invitation); a line that is not one is explained on
/// stderr. The channel closes when stdin does.
pub fn terminal_commands() -> tokio::sync::mpsc::Receiver<CustomerCommand> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    // A plain thread: reading a terminal blocks, and the runtime must not wait for it to end.
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            match line.parse::<CustomerCommand>() {
                Ok(cmd) => {
                    if tx.blocking_send(cmd).is_err() {
                        break;
                    }
                }
                Err(e) => note!("consumer: {e}"),
            }
        }
    });
    rx
}

/// The consumer's hands settings for sharing `page`: `mode` granted at the start, requests
/// answered by `consent`, and same-site navigations served from the page's directory when
/// the page is a file.
pub fn hands_for(page: &std::path::Path, mode: Mode, consent: Consent) -> HandsOptions {
    HandsOptions {
        mode,
        consent,
        site: page
            .is_file()
            .then(|| page.parent().map(std::path::Path::to_path_buf))
            .flatten(),
        ..HandsOptions::default()
    }
}

/// Builds the page HTML and change source from a file or a states directory.
pub fn page_and_changes(
    page: &std::path::Path,
    batches: Option<u64>,
    batch_size: usize,
    seed: u64,
) -> Result<(String, ChangeSource), SessionError> {
    if page.is_dir() {
        let html = session::read_page(&page.join("0.html"))?;
        Ok((
            html,
            ChangeSource::States {
                dir: page.to_owned(),
                next: 1,
            },
        ))
    } else {
        let html = session::read_page(page)?;
        let changes = ChangeSource::Live {
            generator: LivePage::new(seed),
            per_batch: batch_size,
            batches,
        };
        Ok((html, changes))
    }
}

/// Runs `tandem consumer`.
pub async fn run(args: ConsumerArgs) -> Result<(), SessionError> {
    let batches = (args.batches > 0).then_some(args.batches);
    let (html, changes) = page_and_changes(&args.page, batches, args.batch_size, args.seed)?;
    let link = Link::spawn_unless_none(args.relay, &args.link)
        .await
        .map_err(|e| client::ClientError::from(TransportError::from(e)))?;
    if let Some(link) = &link {
        note!(
            "consumer: emulating link {} to the relay {} (each direction) through {}",
            args.link,
            args.relay,
            link.addr()
        );
    }
    let relay = link.as_ref().map_or(args.relay, Link::addr);
    let conn = client::connect(relay, args.pin, Role::Consumer).await?;
    let mut hello = client::hello(Role::Consumer);
    hello.platform.viewport = args.viewport;
    if args.resources {
        hello.capabilities = client::CAPABILITIES_WITH_RESOURCES;
    }
    // A lost connection is resumed (spec §3.5): `drop` on the terminal tries it.
    let ctl = ControlChannel::open(conn, hello).await?.resumable(args.pin);
    let opts = ConsumerOptions {
        html,
        url: args.url,
        label: args.label,
        changes,
        interval: Duration::from_millis(args.interval_ms),
        limits: Limits::DEFAULT,
        policy: args.mask.policy(),
        hands: Some(hands_for(&args.page, args.mode, args.consent.into())),
        invitations: args.invitations,
        commands: Some(terminal_commands()),
        preupload: true,
        fold_bytes: args.fold.map(|k| k as usize * 1024),
    };
    let resources = args.resources.then(|| crate::resources::ResourceOptions {
        mode: if args.push {
            tandem_engine::resource::SendMode::Push
        } else {
            tandem_engine::resource::SendMode::Pull
        },
        ..crate::resources::ResourceOptions::for_page(&args.page)
    });
    let report = session::run_consumer_with(ctl, opts, resources, |created| {
        say!("code: {}", created.code);
        say!("token: {}", created.token);
        note!("consumer: read the code out to the agent; waiting for them to join");
    })
    .await?;
    say!(
        "consumer: sent snapshot {} bytes, {} patches {} bytes, {} UDP bytes; final hash {}",
        report.snapshot_bytes,
        report.patches,
        report.patch_bytes,
        report.udp_bytes,
        session::hex(&report.hash)
    );
    if let Some(r) = &report.resources {
        say!(
            "consumer: resources: {} referenced, {} uploaded ({} RESOURCE bytes), {} not loadable; agent holds all: {}",
            r.referenced,
            r.uplink.blobs,
            r.uplink.frame_bytes,
            r.load_errors,
            r.settled
        );
    }
    if let Some(p) = &report.presence.peer_platform {
        say!(
            "consumer: the agent used {}",
            crate::presence::describe_platform(p)
        );
    }
    if let Some(s) = report.presence.peer_status {
        say!(
            "consumer: the agent's link: {}",
            crate::presence::describe_status(&s)
        );
    }
    for a in &report.actions {
        say!(
            "consumer: agent action {} {}: {:?}",
            a.action,
            a.target,
            a.outcome
        );
    }
    if let Some(link) = link {
        say!(
            "consumer: link {}: {}",
            args.link,
            counters_line(&link.shutdown())
        );
    }
    Ok(())
}

/// One line of link counters for the consumer's and agent's final report.
pub(crate) fn counters_line(c: &crate::link::LinkCounters) -> String {
    format!(
        "to the relay {} datagrams ({} lost, {} queue-dropped), from the relay {} datagrams ({} lost, {} queue-dropped)",
        c.up.packets,
        c.up.lost,
        c.up.queue_dropped,
        c.down.packets,
        c.down.lost,
        c.down.queue_dropped
    )
}
