//! `tandem snapshot PAGE.html`: imports a page and reports its node count, snapshot size and
//! tree hash; `--out` writes the encoded snapshot frames, so scripts can inspect the bytes.

use std::path::PathBuf;

use tandem_engine::{Consumer, parse_html};
use tandem_protocol::{Limits, Message, frame};

use crate::session::{self, SessionError};

/// Command-line arguments of `tandem snapshot`.
#[derive(Debug, Clone, clap::Args)]
pub struct SnapshotArgs {
    /// The HTML page.
    pub page: PathBuf,
    /// Write the snapshot frames (as they travel on the DOM stream) to FILE.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What `tandem snapshot` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SnapshotReport {
    /// The page file.
    pub page: String,
    /// Bytes of HTML.
    pub html_bytes: usize,
    /// Nodes in the script-free tree, the document node included.
    pub nodes: usize,
    /// Bytes of the encoded snapshot frames.
    pub snapshot_bytes: usize,
    /// Number of SNAPSHOT parts.
    pub parts: usize,
    /// The tree hash, hex.
    pub hash: String,
}

/// Encodes the page's snapshot frames and measures them.
pub fn snapshot(page: &std::path::Path) -> Result<(SnapshotReport, Vec<u8>), SessionError> {
    let html = session::read_page(page)?;
    let limits = Limits::DEFAULT;
    let dom = parse_html(&html, limits);
    let nodes = dom.len();
    let mut consumer = Consumer::new(dom, "", limits);
    let mut bytes = Vec::new();
    let mut parts = 0;
    while let Some(msg) = consumer.poll_message() {
        if matches!(msg, Message::Snapshot(_)) {
            parts += 1;
        }
        frame::encode_frame(&msg, &mut bytes, &limits).map_err(crate::framed::FramedError::from)?;
    }
    let report = SnapshotReport {
        page: page.display().to_string(),
        html_bytes: html.len(),
        nodes,
        snapshot_bytes: bytes.len(),
        parts,
        hash: session::hex(&consumer.tree_hash()),
    };
    Ok((report, bytes))
}

/// Runs `tandem snapshot`.
pub fn run(args: SnapshotArgs) -> Result<(), SessionError> {
    let (report, bytes) = snapshot(&args.page)?;
    if let Some(out) = &args.out {
        std::fs::write(out, &bytes).map_err(|source| SessionError::Io {
            path: out.clone(),
            source,
        })?;
    }
    if args.json {
        // Serializing a struct of strings and integers cannot fail.
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        println!("page: {}", report.page);
        println!("html bytes: {}", report.html_bytes);
        println!("nodes: {}", report.nodes);
        println!(
            "snapshot bytes: {} in {} part(s)",
            report.snapshot_bytes, report.parts
        );
        println!("hash: {}", report.hash);
    }
    Ok(())
}
