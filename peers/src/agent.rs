//! `tandem agent --code CODE`: joins a session and rebuilds the customer's page, reporting
//! progress and the tree hash, and writing the current page as HTML with `--out`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tandem_protocol::Limits;
use tandem_protocol::message::{Credential, Role};

use crate::client::{self, ControlChannel};
use crate::link::{Link, LinkSpec};
use crate::session::{self, AgentOptions, SessionError};
use crate::transport::{Fingerprint, TransportError};

/// Command-line arguments of `tandem agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// The session code the customer read out.
    #[arg(long, required_unless_present_any = ["token", "invite"])]
    pub code: Option<String>,
    /// The session token from a link (instead of --code).
    #[arg(long, conflicts_with_all = ["code", "invite"])]
    pub token: Option<String>,
    /// Invite the customer waiting under this label (their --label) instead of joining with
    /// a code; they have two minutes to accept.
    #[arg(long, value_name = "LABEL", conflicts_with = "code")]
    pub invite: Option<String>,
    /// The relay's UDP address.
    #[arg(long, default_value = "127.0.0.1:4433")]
    pub relay: SocketAddr,
    /// The relay's certificate fingerprint (SHA-256, hex), as `tandem relay` prints it.
    #[arg(long)]
    pub pin: Fingerprint,
    /// The agent's display name.
    #[arg(long, default_value = "Agent")]
    pub label: String,
    /// Write the current page as HTML to FILE whenever it changes. When the customer sends
    /// resources (spec §14), its stylesheets, images and fonts go as files into
    /// `<FILE stem>_files/` beside it, so a browser shows the page complete.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Do not offer to take resources by content address (spec §14): the customer then sends
    /// references as the page has them.
    #[arg(long)]
    pub no_resources: bool,
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
}

/// Runs `tandem agent`.
pub async fn run(args: AgentArgs) -> Result<(), SessionError> {
    let credential = match (args.code, args.token) {
        (Some(code), _) => Some(Credential::Code(code)),
        (None, Some(token)) => Some(Credential::Token(token)),
        // clap requires --invite then.
        (None, None) => None,
    };
    let link = Link::spawn_unless_none(args.relay, &args.link)
        .await
        .map_err(|e| client::ClientError::from(TransportError::from(e)))?;
    if let Some(link) = &link {
        note!(
            "agent: emulating link {} to the relay {} (each direction) through {}",
            args.link,
            args.relay,
            link.addr()
        );
    }
    let relay = link.as_ref().map_or(args.relay, Link::addr);
    let mut hello = client::hello(Role::Agent);
    if !args.no_resources {
        hello.capabilities = client::CAPABILITIES_WITH_RESOURCES;
    }
    let (ctl, joined) = match (credential, &args.invite) {
        // HELLO and JOIN in one round trip (spec §7.1), in 0-RTT data when this process has
        // a session ticket from the relay (spec §3.5).
        (Some(credential), _) => {
            let (ctl, joined) =
                ControlChannel::connect_and_join(relay, args.pin, hello, credential, &args.label)
                    .await?;
            (ctl.resumable(args.pin), joined)
        }
        (None, target) => {
            let conn = client::connect(relay, args.pin, Role::Agent).await?;
            let mut ctl = ControlChannel::open(conn, hello).await?.resumable(args.pin);
            let target = target.as_deref().unwrap_or_default();
            note!("agent: inviting {target}; waiting for their answer");
            let joined = ctl
                .invite(1, target, &args.label, tandem_engine::session::DEFAULT_TTL)
                .await?;
            (ctl, joined)
        }
    };
    note!(
        "agent: joined {}'s session; they use {}",
        joined.peer_label,
        crate::presence::describe_platform(&joined.peer_platform)
    );
    let started = Instant::now();
    let opts = AgentOptions {
        limits: Limits::DEFAULT,
        out: args.out,
        verbose: true,
        script: Vec::new(),
        blobs: None,
        drop_after: None,
    };
    let report = session::run_agent(ctl, opts, started).await?;
    let after_join = |d: Option<Duration>| {
        d.map(|d| format!("{:.1} ms after joining", d.as_secs_f64() * 1000.0))
            .unwrap_or_else(|| "never".into())
    };
    say!(
        "agent: {} nodes, {} patches, {} DOM bytes, first render {} (the top of the page), \
         complete {} (the whole page, its hash verified); final hash {}",
        report.nodes,
        report.patches,
        report.dom_bytes,
        after_join(report.first_visible),
        after_join(report.first_render),
        report
            .hash
            .map(|h| session::hex(&h))
            .unwrap_or_else(|| "none".into())
    );
    if let Some(r) = &report.resources {
        say!(
            "agent: resources: {} blobs ({} bytes) received, {} corrupt and discarded, {} missing",
            r.blobs,
            r.bytes,
            r.corrupt,
            r.missing
        );
    }
    if let Some(s) = report.presence.peer_status {
        say!(
            "agent: the customer's link: {}",
            crate::presence::describe_status(&s)
        );
    }
    if let Some(s) = report.presence.own_status {
        say!("agent: own link: {}", crate::presence::describe_status(&s));
    }
    if let Some(link) = link {
        say!(
            "agent: link {}: {}",
            args.link,
            crate::consumer::counters_line(&link.shutdown())
        );
    }
    Ok(())
}
