//! Research tools over the engine alone (no network): `tandem diff FROM TO` and
//! `tandem replay DIR`. Each prints what travels — operations, bytes — and verifies that the
//! agent's tree ends equal to the target, exiting non-zero when it does not.
//!
//! Compressed figures are those of the DOM stream the reference consumer sends when the
//! session holds `COMPRESSION` and `CODED_PATCHES`: codec 0x02 (spec §4.6.5), the snapshot
//! through zstd and each patch as a coded patch (spec §4.7), `COMPRESSED` frame headers
//! included.

use std::path::{Path, PathBuf};

use tandem_engine::{Agent, Consumer, parse_html};
use tandem_protocol::compress::{self, Codec, DomCompressor};
use tandem_protocol::{Limits, Message, PatchOp, Place, Sym, frame};

use crate::session::{self, SessionError};

/// Command-line arguments of `tandem diff`.
#[derive(Debug, Clone, clap::Args)]
pub struct DiffArgs {
    /// The page before.
    pub from: PathBuf,
    /// The page after.
    pub to: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Command-line arguments of `tandem replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// A directory of successive states 0.html, 1.html, … of one page.
    pub dir: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What `tandem diff` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiffReport {
    /// The operations, one line each.
    pub ops: Vec<String>,
    /// Bytes of the PATCH frame (0 when nothing changed).
    pub patch_bytes: usize,
    /// Bytes the patch takes on a compressed DOM stream (codec 0x02, spec §4.6.5) that carried
    /// the snapshot of FROM before it.
    pub patch_compressed: usize,
    /// Whether the agent's tree, after the patch, equals the target page's.
    pub verified: bool,
    /// The target page's tree hash, hex.
    pub hash: String,
}

/// One step of `tandem replay`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayStep {
    /// The state number.
    pub state: u64,
    /// Operations in the patch.
    pub ops: usize,
    /// Bytes of the PATCH frame.
    pub patch_bytes: usize,
    /// Bytes the patch takes on the compressed DOM stream (context: everything before it).
    pub compressed: usize,
    /// Whether the agent's tree equals the state's.
    pub verified: bool,
}

/// What `tandem replay` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayReport {
    /// Bytes of the snapshot frames of state 0.
    pub snapshot_bytes: usize,
    /// Bytes of the snapshot on a compressed DOM stream.
    pub snapshot_compressed: usize,
    /// One entry per later state.
    pub steps: Vec<ReplayStep>,
    /// Sum of the patch bytes.
    pub patch_bytes_total: usize,
    /// Sum of the patches' compressed bytes.
    pub compressed_total: usize,
    /// Whether every step verified.
    pub verified: bool,
}

fn sym(s: &Sym) -> String {
    match s {
        Sym::Static(i) => format!(
            "{:?}",
            tandem_protocol::STATIC_TABLE
                .get(*i as usize)
                .copied()
                .unwrap_or("?")
        ),
        Sym::Ref(i) => format!("ref{i}"),
        Sym::New(t) | Sym::Lit(t) => format!("{:?}", shorten(t)),
    }
}

fn shorten(t: &str) -> String {
    if t.chars().count() <= 40 {
        return t.to_owned();
    }
    let cut: String = t.chars().take(37).collect();
    format!("{cut}...")
}

fn place(at: &Place) -> String {
    match at {
        Place::After(prev) => format!("after {prev}"),
        Place::First(parent) => format!("first under {parent}"),
    }
}

/// A one-line description of a patch operation.
pub fn describe(op: &PatchOp) -> String {
    match op {
        PatchOp::Insert { at, first, nodes } => {
            format!(
                "insert {}: {} node(s) from id {first}",
                place(at),
                nodes.len()
            )
        }
        PatchOp::Remove { node } => format!("remove {node}"),
        PatchOp::Move { node, at } => format!("move {node} {}", place(at)),
        PatchOp::MoveRun { at, nodes } => {
            let ids: Vec<String> = nodes.0.iter().map(|n| n.to_string()).collect();
            format!("move {} {}, in this order", ids.join(" "), place(at))
        }
        PatchOp::SetAttr { node, name, value } => {
            format!("set {node} {}={}", sym(name), sym(value))
        }
        PatchOp::RemoveAttr { node, name } => format!("remove attribute {node} {}", sym(name)),
        PatchOp::SetText { node, text } => format!("text {node} {}", sym(text)),
        PatchOp::EditText { node, edits } => {
            let parts: Vec<String> = edits
                .iter()
                .map(|e| {
                    format!(
                        "keep {} delete {} insert {:?}",
                        e.keep,
                        e.delete,
                        shorten(&e.insert)
                    )
                })
                .collect();
            format!("edit {node}: {}", parts.join("; "))
        }
    }
}

/// What one delivery carried.
struct Delivery {
    ops: Vec<PatchOp>,
    patch_bytes: usize,
    snapshot_bytes: usize,
    compressed: usize,
}

/// Sends everything queued to the agent, returning the PATCH operations and frame bytes; the
/// batch also goes through `zstd`, the DOM stream's compressor, as one flushed batch (spec
/// §4.6), created as the reference consumer creates it: codec 0x02 (patches coded, spec
/// §4.6.5), at the level it picks from the snapshot's size.
fn deliver(
    consumer: &mut Consumer,
    agent: &mut Agent,
    zstd: &mut Option<DomCompressor>,
    limits: &Limits,
) -> Result<Delivery, SessionError> {
    let (mut ops, mut patch_bytes, mut snapshot_bytes) = (Vec::new(), 0, 0);
    let mut batch = Vec::new();
    while let Some(f) = consumer.poll_frame() {
        let bytes = f.map_err(crate::framed::FramedError::from)?.bytes;
        batch.extend_from_slice(&bytes);
        let decoded =
            frame::decode_exact(&bytes, limits).map_err(crate::framed::FramedError::from)?;
        match &decoded {
            Message::Patch(p) => {
                ops.extend(p.ops.iter().cloned());
                patch_bytes += bytes.len();
            }
            _ => snapshot_bytes += bytes.len(),
        }
        agent.handle_message(decoded)?;
    }
    while let Some(reply) = agent.poll_message() {
        consumer.handle_message(&reply)?;
    }
    let codec = match zstd {
        Some(c) => c,
        None => zstd.insert(
            DomCompressor::with_codec(
                compress::level_for_snapshot(snapshot_bytes),
                Codec::CodedPatches,
            )
            .map_err(|e| SessionError::EndedEarly(format!("compression failed: {e}")))?,
        ),
    };
    let mut wire = Vec::new();
    if !batch.is_empty() {
        codec
            .write_frames(&batch, &mut wire, limits)
            .map_err(|e| SessionError::EndedEarly(format!("compression failed: {e}")))?;
    }
    Ok(Delivery {
        ops,
        patch_bytes,
        snapshot_bytes,
        compressed: wire.len(),
    })
}

/// Diffs two pages and verifies the patch.
pub fn diff(from: &Path, to: &Path) -> Result<DiffReport, SessionError> {
    let limits = Limits::DEFAULT;
    let mut consumer = Consumer::new(parse_html(&session::read_page(from)?, limits), "", limits);
    let mut agent = Agent::new(limits);
    let mut zstd = None;
    deliver(&mut consumer, &mut agent, &mut zstd, &limits)?;
    let mut target = parse_html(&session::read_page(to)?, limits);
    consumer.update_to(&mut target)?;
    consumer.flush();
    let d = deliver(&mut consumer, &mut agent, &mut zstd, &limits)?;
    let want = target.root_hash();
    Ok(DiffReport {
        ops: d.ops.iter().map(describe).collect(),
        patch_bytes: d.patch_bytes,
        patch_compressed: d.compressed,
        verified: agent.tree_hash() == Some(want),
        hash: session::hex(&want),
    })
}

/// Replays the states of a directory and verifies every step.
pub fn replay(dir: &Path) -> Result<ReplayReport, SessionError> {
    let limits = Limits::DEFAULT;
    let first = session::read_page(&dir.join("0.html"))?;
    let mut consumer = Consumer::new(parse_html(&first, limits), "", limits);
    let mut agent = Agent::new(limits);
    let mut zstd = None;
    let snapshot = deliver(&mut consumer, &mut agent, &mut zstd, &limits)?;
    let mut steps = Vec::new();
    for state in 1.. {
        let path = dir.join(format!("{state}.html"));
        if !path.exists() {
            break;
        }
        let mut target = parse_html(&session::read_page(&path)?, limits);
        consumer.update_to(&mut target)?;
        consumer.flush();
        let d = deliver(&mut consumer, &mut agent, &mut zstd, &limits)?;
        steps.push(ReplayStep {
            state,
            ops: d.ops.len(),
            patch_bytes: d.patch_bytes,
            compressed: d.compressed,
            verified: agent.tree_hash() == Some(target.root_hash()),
        });
    }
    Ok(ReplayReport {
        snapshot_bytes: snapshot.snapshot_bytes,
        snapshot_compressed: snapshot.compressed,
        patch_bytes_total: steps.iter().map(|s| s.patch_bytes).sum(),
        compressed_total: steps.iter().map(|s| s.compressed).sum(),
        verified: steps.iter().all(|s| s.verified),
        steps,
    })
}

/// Writes a command's report to standard output. A reader that went away (`tandem replay DIR |
/// head`) is not an error: the report was for it alone, and the command's exit status still
/// says whether everything verified.
pub(crate) fn print_report(text: &str) -> Result<(), SessionError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(SessionError::EndedEarly(
            format!("cannot write the report: {e}"),
        )),
        _ => Ok(()),
    }
}

/// Runs `tandem diff`; `Ok(false)` when the patch does not reproduce the target.
pub fn run_diff(args: DiffArgs) -> Result<bool, SessionError> {
    use std::fmt::Write;
    let r = diff(&args.from, &args.to)?;
    let mut text = String::new();
    // Writing to a String cannot fail, nor can serializing strings, numbers and bools.
    if args.json {
        let _ = writeln!(text, "{}", serde_json::to_string(&r).unwrap_or_default());
    } else {
        for op in &r.ops {
            let _ = writeln!(text, "{op}");
        }
        let _ = writeln!(
            text,
            "{} operation(s), patch {} bytes, {} compressed after the snapshot",
            r.ops.len(),
            r.patch_bytes,
            r.patch_compressed
        );
        let _ = writeln!(
            text,
            "{}: hash {}",
            if r.verified { "verified" } else { "MISMATCH" },
            r.hash
        );
    }
    print_report(&text)?;
    Ok(r.verified)
}

/// Runs `tandem replay`; `Ok(false)` when a step does not verify.
pub fn run_replay(args: ReplayArgs) -> Result<bool, SessionError> {
    use std::fmt::Write;
    let r = replay(&args.dir)?;
    let mut text = String::new();
    // Writing to a String cannot fail, nor can serializing strings, numbers and bools.
    if args.json {
        let _ = writeln!(text, "{}", serde_json::to_string(&r).unwrap_or_default());
    } else {
        let _ = writeln!(
            text,
            "snapshot: {} bytes, {} compressed",
            r.snapshot_bytes, r.snapshot_compressed
        );
        for s in &r.steps {
            let mark = if s.verified { "ok" } else { "MISMATCH" };
            let _ = writeln!(
                text,
                "state {:>3}: {:>4} op(s) {:>7} bytes {:>6} compressed {mark}",
                s.state, s.ops, s.patch_bytes, s.compressed
            );
        }
        let mark = if r.verified {
            "all verified"
        } else {
            "MISMATCH"
        };
        let _ = writeln!(
            text,
            "patches: {} bytes, {} compressed, over {} steps; {mark}",
            r.patch_bytes_total,
            r.compressed_total,
            r.steps.len()
        );
    }
    print_report(&text)?;
    Ok(r.verified)
}
