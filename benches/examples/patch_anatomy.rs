//! Where the compressed bytes of the recorded change batches go (issue 3's patch-bytes target):
//! for each state sequence, the compressed DOM stream of the 50 patches after the snapshot,
//! as `tandem replay` measures it (codec 0x02: each patch a coded patch, spec §4.6.5, §4.7),
//! next to the same stream re-encoded without one part of it.
//!
//! Run: `cargo run --release -p tandem-benches --example patch_anatomy` (uses
//! `../shared/corpus/states` when present, otherwise the repository's `testdata/states`).
//!
//! Each column is the stream re-encoded with one change, and the bytes that change saves:
//!
//! - `no <kind>`: the patches without their operations of that kind (`insert`, `remove`,
//!   `move` with `MoveRun`, `attr` for set and remove, `set text`, `edit text`);
//! - `no ops`: every patch empty, which leaves what a patch costs whatever it holds (epoch,
//!   sequence number, the 8-byte hash, the chunk header and the `COMPRESSED` frame header);
//! - `ids = 1`: every node id replaced by 1, an upper bound on what any coding of the ids
//!   could save;
//! - `hash = 0`: the patch hashes zeroed, which zstd compresses to almost nothing but the
//!   patch coder writes as they are (so under codec 0x02 this saves little or nothing);
//! - `id deltas`: each id as the zigzag difference from the id before it in the patch, with
//!   runs of removals sorted: a coding the protocol could adopt, to see whether it pays.
//!
//! The stripped streams are not valid (later string references may point elsewhere); only
//! their sizes matter. Parts interact through the compressor, so the savings do not add up to
//! the total.

use tandem_benches::{corpus_root, replay, sorted_dirs};
use tandem_protocol::{Limits, Message, NodeId, PatchCheck, PatchOp, Place};

/// One re-encoding of the recorded patches.
#[derive(Clone, Copy, PartialEq)]
enum View {
    AsSent,
    Without(Kind),
    NoOps,
    IdsOne,
    HashZero,
    IdDeltas,
}

/// Operation kinds, as the columns group them.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Insert,
    Remove,
    Move,
    Attr,
    SetText,
    EditText,
}

fn kind(op: &PatchOp) -> Kind {
    match op {
        PatchOp::Insert { .. } => Kind::Insert,
        PatchOp::Remove { .. } => Kind::Remove,
        PatchOp::Move { .. } | PatchOp::MoveRun { .. } => Kind::Move,
        PatchOp::SetAttr { .. } | PatchOp::RemoveAttr { .. } => Kind::Attr,
        PatchOp::SetText { .. } => Kind::SetText,
        PatchOp::EditText { .. } => Kind::EditText,
    }
}

const VIEWS: &[(&str, View)] = &[
    ("no insert", View::Without(Kind::Insert)),
    ("no remove", View::Without(Kind::Remove)),
    ("no move", View::Without(Kind::Move)),
    ("no attr", View::Without(Kind::Attr)),
    ("no set text", View::Without(Kind::SetText)),
    ("no edit text", View::Without(Kind::EditText)),
    ("no ops", View::NoOps),
    ("ids = 1", View::IdsOne),
    ("hash = 0", View::HashZero),
    ("id deltas", View::IdDeltas),
];

/// Applies `f` to every node id an operation names, in wire order.
fn for_each_id(op: &mut PatchOp, f: &mut impl FnMut(&mut NodeId)) {
    fn place(p: &mut Place, f: &mut impl FnMut(&mut NodeId)) {
        match p {
            Place::After(id) | Place::First(id) => f(id),
        }
    }
    match op {
        PatchOp::Insert { at, first, .. } => {
            place(at, f);
            f(first);
        }
        PatchOp::Move { node, at } => {
            f(node);
            place(at, f);
        }
        // Only the run's first id is absolute on the wire; the rest are differences already.
        PatchOp::MoveRun { at, nodes } => {
            place(at, f);
            if let Some(first) = nodes.0.first_mut() {
                f(first);
            }
        }
        PatchOp::Remove { node }
        | PatchOp::SetAttr { node, .. }
        | PatchOp::RemoveAttr { node, .. }
        | PatchOp::SetText { node, .. }
        | PatchOp::EditText { node, .. } => f(node),
    }
}

/// Rewrites the ids of `ops` as zigzag differences from the id before, sorting each run of
/// removals first (their order does not matter: none lies under another).
fn as_deltas(ops: &mut [PatchOp]) {
    for run in ops.chunk_by_mut(|a, b| {
        matches!(a, PatchOp::Remove { .. }) && matches!(b, PatchOp::Remove { .. })
    }) {
        run.sort_by_key(|op| match op {
            PatchOp::Remove { node } => *node,
            _ => 0,
        });
    }
    let mut prev: NodeId = 0;
    for op in ops.iter_mut() {
        let last_of_run = match op {
            PatchOp::MoveRun { nodes, .. } => nodes.0.last().copied(),
            _ => None,
        };
        for_each_id(op, &mut |id| {
            let d = (*id as i64).wrapping_sub(prev as i64);
            prev = *id;
            *id = ((d << 1) ^ (d >> 63)) as u64;
        });
        if let Some(last) = last_of_run {
            prev = last;
        }
    }
}

fn rewrite(msg: &Message, view: View) -> Message {
    let mut msg = msg.clone();
    if let Message::Patch(p) = &mut msg {
        match view {
            View::AsSent => {}
            View::Without(k) => p.ops.retain(|op| kind(op) != k),
            View::NoOps => p.ops.clear(),
            View::IdsOne => {
                for op in &mut p.ops {
                    for_each_id(op, &mut |id| *id = 1);
                }
            }
            View::HashZero => p.hash = PatchCheck::default(),
            View::IdDeltas => as_deltas(&mut p.ops),
        }
    }
    msg
}

fn main() {
    let limits = Limits::DEFAULT;
    let root = corpus_root().join("states");
    println!("states: {}\n", root.display());
    let dirs = sorted_dirs(&root);
    let header: Vec<&str> = VIEWS.iter().map(|(name, _)| *name).collect();
    println!("Bytes each change saves on the compressed patches (share of the total):\n");
    println!("| states | patches | {} |", header.join(" | "));
    println!("|---|---:|{}", "---:|".repeat(VIEWS.len()));
    for dir in dirs {
        let Some(rec) = replay(&dir, limits) else {
            continue;
        };
        let compressed = |view| rec.compressed_steps(&limits, |m| rewrite(m, view));
        let base = compressed(View::AsSent);
        let cells: Vec<String> = VIEWS
            .iter()
            .map(|&(_, view)| {
                let saved = base as i64 - compressed(view) as i64;
                format!(
                    "{saved} ({:.0} %)",
                    100.0 * saved as f64 / base.max(1) as f64
                )
            })
            .collect();
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        println!("| {name} | {base} | {} |", cells.join(" | "));
    }
}
