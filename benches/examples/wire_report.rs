//! Bytes on the wire for the corpus's change sets (issue 3's report): every morph pair's patch
//! next to the gzip size of its `to.html`, and every state sequence's `tandem replay` totals
//! next to rrweb's incremental events and the HTML states' `zstd -19` deltas.
//!
//! Run: `cargo run --release -p tandem-benches --example wire_report` (uses `../shared/corpus`
//! when present, otherwise the repository's `testdata/`). Every patch is verified by hash, as
//! `tandem diff` and `tandem replay` do; a pair or step that does not verify is marked.

use std::io::Write;

use tandem_benches::{RRWEB_STATES_ZSTD19, corpus_root, sorted_dirs};
use tandem_peers::tools;

fn gzip9(bytes: &[u8]) -> usize {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).expect("writing to a Vec cannot fail");
    e.finish().expect("writing to a Vec cannot fail").len()
}

fn main() {
    let root = corpus_root();
    println!("corpus: {}\n", root.display());

    println!("## Morph pairs: patch bytes next to the gzip size of to.html\n");
    println!(
        "| pair | ops | patch raw | patch compressed | to.html | to.html gzip -9 | compressed / gzip |"
    );
    println!("|---|---|---|---|---|---|---|");
    let (mut raw, mut zst, mut gz) = (0, 0, 0);
    for pair in sorted_dirs(&root.join("morph-pairs")) {
        let name = pair.file_name().unwrap_or_default().to_string_lossy();
        let to = std::fs::read(pair.join("to.html")).unwrap_or_default();
        match tools::diff(&pair.join("from.html"), &pair.join("to.html")) {
            Ok(r) => {
                let g = gzip9(&to);
                let mark = if r.verified { "" } else { " MISMATCH" };
                println!(
                    "| {name}{mark} | {} | {} | {} | {} | {g} | {:.2} |",
                    r.ops.len(),
                    r.patch_bytes,
                    r.patch_compressed,
                    to.len(),
                    r.patch_compressed as f64 / g as f64
                );
                raw += r.patch_bytes;
                zst += r.patch_compressed;
                gz += g;
            }
            Err(e) => println!("| {name} | error: {e} | | | | | |"),
        }
    }
    println!(
        "| **total** | | {raw} | {zst} | | {gz} | {:.2} |\n",
        zst as f64 / gz.max(1) as f64
    );

    println!("## State sequences: `tandem replay` totals\n");
    println!(
        "| sequence | steps | snapshot raw | snapshot compressed | patches raw | patches compressed | rrweb 50 batches, zstd -19 stream | ratio | zstd -19 deltas of the HTML | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for seq in sorted_dirs(&root.join("states")) {
        let name = seq
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        match tools::replay(&seq) {
            Ok(r) => {
                let mark = if r.verified { "" } else { " MISMATCH" };
                let refs = RRWEB_STATES_ZSTD19.iter().find(|(n, ..)| *n == name);
                let (rrweb, delta) = match refs {
                    Some((_, a, b)) => (
                        format!("{a} | {:.2}", r.compressed_total as f64 / *a as f64),
                        format!("{b} | {:.2}", r.compressed_total as f64 / *b as f64),
                    ),
                    None => ("– | –".to_owned(), "– | –".to_owned()),
                };
                println!(
                    "| {name}{mark} | {} | {} | {} | {} | {} | {rrweb} | {delta} |",
                    r.steps.len(),
                    r.snapshot_bytes,
                    r.snapshot_compressed,
                    r.patch_bytes_total,
                    r.compressed_total
                );
            }
            Err(e) => println!("| {name} | error: {e} | | | | | | | | |"),
        }
    }
}
