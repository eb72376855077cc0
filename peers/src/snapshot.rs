//! `tandem snapshot PAGE.html`: imports a page and reports its node count, snapshot size and
//! tree hash; `--out` writes the encoded snapshot frames, so scripts can inspect the bytes.
//! The page is masked by the policy the [`MaskArgs`] flags describe (spec §12), exactly as a
//! consumer would mask it, so a script can check from outside that no secret of a page reaches
//! the bytes.

use std::path::{Path, PathBuf};

use tandem_engine::mask::{MaskLength, MaskPolicy, Rule, Selector};
use tandem_engine::{Consumer, DomFrameKind, parse_html};
use tandem_protocol::Limits;

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
    /// The masking policy.
    #[command(flatten)]
    pub mask: MaskArgs,
}

/// The masking policy as command-line flags (spec §12): a configuration file, then selectors
/// and switches added to it. The automatic rules and marker attributes always apply.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MaskArgs {
    /// Read a masking configuration (lines `private`, `length keep|N`, `mask SEL`,
    /// `block SEL`, `ignore SEL`, `unmask SEL`; `#` starts a comment line).
    #[arg(long, value_name = "FILE", value_parser = read_config)]
    pub mask_config: Option<MaskPolicy>,
    /// Mask the text and values of elements matching SEL (repeatable).
    #[arg(long, value_name = "SEL", value_parser = selector)]
    pub mask_selector: Vec<String>,
    /// Replace elements matching SEL by empty placeholders (repeatable).
    #[arg(long, value_name = "SEL", value_parser = selector)]
    pub block_selector: Vec<String>,
    /// Never send the input state of elements matching SEL (repeatable).
    #[arg(long, value_name = "SEL", value_parser = selector)]
    pub ignore_selector: Vec<String>,
    /// Lift an inherited mask for elements matching SEL (repeatable).
    #[arg(long, value_name = "SEL", value_parser = selector)]
    pub unmask_selector: Vec<String>,
    /// Private by default: mask all text and inputs except what is unmasked.
    #[arg(long)]
    pub private: bool,
    /// Length of masked values: `keep` (one `*` per character) or a fixed count of stars
    /// (default 8).
    #[arg(long, value_name = "keep|N", value_parser = length)]
    pub mask_length: Option<MaskLength>,
}

impl MaskArgs {
    /// The policy these flags describe.
    pub fn policy(&self) -> MaskPolicy {
        let mut p = self.mask_config.clone().unwrap_or_default();
        for (rule, list) in [
            (Rule::Mask, &self.mask_selector),
            (Rule::Block, &self.block_selector),
            (Rule::Ignore, &self.ignore_selector),
            (Rule::Unmask, &self.unmask_selector),
        ] {
            for sel in list {
                // Checked by the `selector` value parser when the flags were read.
                let _ = p.add_selector(rule, sel);
            }
        }
        if self.private {
            p.set_private(true);
        }
        if let Some(l) = self.mask_length {
            p.set_length(l);
        }
        p
    }
}

fn selector(s: &str) -> Result<String, String> {
    s.parse::<Selector>()
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

fn length(s: &str) -> Result<MaskLength, String> {
    match s {
        "keep" => Ok(MaskLength::Keep),
        n => match n.parse::<u8>() {
            Ok(k) if k > 0 => Ok(MaskLength::Fixed(k)),
            _ => Err(format!("{n:?}: `keep` or a number of stars from 1 to 255")),
        },
    }
}

fn read_config(path: &str) -> Result<MaskPolicy, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    MaskPolicy::from_config(&text).map_err(|e| format!("{path}: {e}"))
}

/// What `tandem snapshot` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SnapshotReport {
    /// The page file.
    pub page: String,
    /// Bytes of HTML.
    pub html_bytes: usize,
    /// Nodes in the script-free, masked tree, the document node included.
    pub nodes: usize,
    /// Bytes of the encoded snapshot frames.
    pub snapshot_bytes: usize,
    /// Number of SNAPSHOT parts.
    pub parts: usize,
    /// The tree hash, hex.
    pub hash: String,
}

/// Encodes the page's snapshot frames, masked by `policy`, and measures them.
pub fn snapshot(
    page: &Path,
    policy: MaskPolicy,
) -> Result<(SnapshotReport, Vec<u8>), SessionError> {
    let html = session::read_page(page)?;
    let limits = Limits::DEFAULT;
    let dom = parse_html(&html, limits);
    let mut consumer = Consumer::with_policy(dom, "", limits, policy);
    let nodes = consumer.dom().len();
    let mut bytes = Vec::new();
    let mut parts = 0;
    while let Some(f) = consumer.poll_frame() {
        let f = f.map_err(crate::framed::FramedError::from)?;
        if matches!(f.kind, DomFrameKind::Snapshot { .. }) {
            parts += 1;
        }
        bytes.extend_from_slice(&f.bytes);
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
    let (report, bytes) = snapshot(&args.page, args.mask.policy())?;
    if let Some(out) = &args.out {
        std::fs::write(out, &bytes).map_err(|source| SessionError::Io {
            path: out.clone(),
            source,
        })?;
    }
    use std::fmt::Write;
    let mut text = String::new();
    // Writing to a String cannot fail, nor can serializing strings and integers.
    if args.json {
        let _ = writeln!(
            text,
            "{}",
            serde_json::to_string(&report).unwrap_or_default()
        );
    } else {
        let _ = writeln!(text, "page: {}", report.page);
        let _ = writeln!(text, "html bytes: {}", report.html_bytes);
        let _ = writeln!(text, "nodes: {}", report.nodes);
        let _ = writeln!(
            text,
            "snapshot bytes: {} in {} part(s)",
            report.snapshot_bytes, report.parts
        );
        let _ = writeln!(text, "hash: {}", report.hash);
    }
    crate::tools::print_report(&text)
}
