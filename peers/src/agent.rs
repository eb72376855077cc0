//! `tandem agent --code CODE`: joins a session and rebuilds the customer's page, reporting
//! progress and the tree hash, and writing the current page as HTML with `--out`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use tandem_protocol::Limits;
use tandem_protocol::message::{Credential, Role};

use crate::client::{self, ControlChannel};
use crate::session::{self, AgentOptions, SessionError};
use crate::transport::Fingerprint;

/// Command-line arguments of `tandem agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// The session code the customer read out.
    #[arg(long, required_unless_present = "token")]
    pub code: Option<String>,
    /// The session token from a link (instead of --code).
    #[arg(long, conflicts_with = "code")]
    pub token: Option<String>,
    /// The relay's UDP address.
    #[arg(long, default_value = "127.0.0.1:4433")]
    pub relay: SocketAddr,
    /// The relay's certificate fingerprint (SHA-256, hex), as `tandem relay` prints it.
    #[arg(long)]
    pub pin: Fingerprint,
    /// The agent's display name.
    #[arg(long, default_value = "Agent")]
    pub label: String,
    /// Write the current page as HTML to FILE whenever it changes.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Runs `tandem agent`.
pub async fn run(args: AgentArgs) -> Result<(), SessionError> {
    let credential = match (args.code, args.token) {
        (Some(code), _) => Credential::Code(code),
        (None, Some(token)) => Credential::Token(token),
        // clap requires one of them.
        (None, None) => Credential::Code(String::new()),
    };
    let conn = client::connect(args.relay, args.pin).await?;
    let mut ctl = ControlChannel::open(conn, client::hello(Role::Agent)).await?;
    let joined = ctl.join(credential, &args.label).await?;
    eprintln!("agent: joined {}'s session", joined.peer_label);
    let started = Instant::now();
    let opts = AgentOptions {
        limits: Limits::DEFAULT,
        out: args.out,
        verbose: true,
    };
    let report = session::run_agent(ctl, opts, started).await?;
    println!(
        "agent: {} nodes, {} patches, {} DOM bytes, first render {}; final hash {}",
        report.nodes,
        report.patches,
        report.dom_bytes,
        report
            .first_render
            .map(|d| format!("{d:?}"))
            .unwrap_or_else(|| "never".into()),
        report
            .hash
            .map(|h| session::hex(&h))
            .unwrap_or_else(|| "none".into())
    );
    Ok(())
}
