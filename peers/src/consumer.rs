//! `tandem consumer PAGE`: shares a page through a relay. PAGE is an HTML file (changes come
//! from the built-in live-page generator) or a directory of successive states `0.html, 1.html,
//! …` (each later state becomes one patch).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tandem_engine::LivePage;
use tandem_protocol::Limits;
use tandem_protocol::message::Role;

use crate::client::{self, ControlChannel};
use crate::session::{self, ChangeSource, ConsumerOptions, SessionError};
use crate::transport::Fingerprint;

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
    let conn = client::connect(args.relay, args.pin).await?;
    let ctl = ControlChannel::open(conn, client::hello(Role::Consumer)).await?;
    let opts = ConsumerOptions {
        html,
        url: args.url,
        label: args.label,
        changes,
        interval: Duration::from_millis(args.interval_ms),
        limits: Limits::DEFAULT,
    };
    let report = session::run_consumer(ctl, opts, |created| {
        println!("code: {}", created.code);
        println!("token: {}", created.token);
        eprintln!("consumer: read the code out to the agent; waiting for them to join");
    })
    .await?;
    println!(
        "consumer: sent snapshot {} bytes, {} patches {} bytes, {} UDP bytes; final hash {}",
        report.snapshot_bytes,
        report.patches,
        report.patch_bytes,
        report.udp_bytes,
        session::hex(&report.hash)
    );
    Ok(())
}
