//! End-to-end benchmark (issue 7 item 6): every corpus page over four emulated links, shared by
//! Tandem (relay, consumer and agent over QUIC, `tandem demo --page P --batches 0`) and sent by
//! the baseline of websocket products (the page's HTML gzip-compressed over TCP + TLS through
//! the same link). Measures time to first visible render, time to complete and bytes on the
//! wire of the viewer's link, and on the target link how long the customer's pointer takes to
//! reach the agent while the snapshot streams and how soon a returning agent (one that joins in
//! 0-RTT data) sees the page; the parts live in `tandem_peers::bench`.
//!
//! Writes `target/e2e/e2e.csv` and `target/e2e/e2e.svg`, prints a table and the target
//! checks on 300ms,750kbit,1% (reported, not asserted).
//!
//! Run: `cargo bench -p tandem-benches --bench e2e` (about ten minutes: pages run one at a
//! time and the slow links take seconds each). To run less:
//!
//! - `TANDEM_E2E_PAGES=3`: the three smallest pages; or `TANDEM_E2E_PAGES=heise,lwn-1`: those.
//! - `TANDEM_E2E_LINKS=2,3`: links by index (0 loopback, 1 50ms,10mbit, 2 300ms,750kbit,1%,
//!   3 600ms,256kbit,3%); or specs separated by `;`, e.g. `TANDEM_E2E_LINKS='100ms,1mbit'`.
//!
//! Without `../shared/corpus/pages` it prints a message and exits successfully.

use std::path::{Path, PathBuf};

use tandem_peers::bench::{self, LINKS, TARGET_LINK};

fn main() {
    let root = tandem_benches::corpus_root();
    let dir = root.join("pages");
    if !root.ends_with("corpus") || !dir.is_dir() {
        println!("e2e: the corpus (../shared/corpus/pages) is absent; nothing to measure");
        return;
    }
    let pages = pages(&dir, std::env::var("TANDEM_E2E_PAGES").ok().as_deref());
    let links = links(std::env::var("TANDEM_E2E_LINKS").ok().as_deref());
    eprintln!(
        "e2e: {} pages x {} links, Tandem then the baseline, one at a time",
        pages.len(),
        links.len()
    );
    let (mut rows, failures) = bench::run_all(&pages, &links).expect("a tokio runtime");
    // Grouped by link (in the order given), smallest page first, Tandem before the baseline.
    let link_index = |l: &str| links.iter().position(|x| x == l);
    rows.sort_by(|a, b| {
        (
            link_index(&a.link),
            a.page_bytes,
            &a.page,
            a.system.name() == "baseline",
        )
            .cmp(&(
                link_index(&b.link),
                b.page_bytes,
                &b.page,
                b.system.name() == "baseline",
            ))
    });

    let out = target_dir().join("e2e");
    std::fs::create_dir_all(&out).expect("target/e2e can be created");
    let (csv, svg) = (out.join("e2e.csv"), out.join("e2e.svg"));
    std::fs::write(&csv, bench::csv(&rows)).expect("the CSV can be written");
    std::fs::write(&svg, bench::svg(&rows, &links)).expect("the SVG can be written");

    println!("{}", bench::table(&rows));
    println!(
        "Times from the viewer starting to connect (handshakes included). The page is where \
         the viewer fetches it: on the baseline's server; for Tandem, the customer's snapshot, \
         sent ahead, has reached the relay (the agent connects after the upload's time at the \
         link rate). Tandem's first render \
         is the snapshot's first parts once they reach into the body (the top of the page), its \
         complete render the whole page verified; the baseline renders when the whole HTML \
         has arrived, so its first render is its complete time. Bytes: the viewer's link, both \
         directions, headers included. bound = bytes down / rate + 2 round trips. pointer p95: \
         on the target link, in a run of its own, the customer's pointer every {} ms; the 95th \
         percentile latency of those that arrived while the snapshot did (how many in \
         brackets). ret. first: on the target link, in a run of its own, the first render of a \
         returning agent, which visited the relay before and joins in 0-RTT data.\n",
        bench::POINTER_EVERY_MS
    );
    let target = links
        .iter()
        .find(|l| *l == TARGET_LINK)
        .cloned()
        .unwrap_or_else(|| TARGET_LINK.to_owned());
    println!("Targets on {target} (reported, not asserted):");
    print!("{}", bench::checks_report(&bench::checks(&rows, &target)));
    if !failures.is_empty() {
        println!("\nFailed attempts (each measurement is tried twice at most):");
        for f in &failures {
            println!("  {f}");
        }
    }
    println!("\nwrote {} and {}", csv.display(), svg.display());
}

/// The corpus pages to run: all, sorted by name; the `n` smallest; or the named ones.
fn pages(dir: &Path, filter: Option<&str>) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("the corpus pages can be listed")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "html"))
        .collect();
    all.sort();
    match filter.map(str::trim).filter(|f| !f.is_empty()) {
        None => all,
        Some(f) => match f.parse::<usize>() {
            Ok(n) => {
                let size = |p: &PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
                all.sort_by_key(size);
                all.truncate(n);
                all.sort();
                all
            }
            Err(_) => {
                let names: Vec<&str> = f.split(',').map(str::trim).collect();
                all.retain(|p| {
                    p.file_stem()
                        .is_some_and(|s| names.contains(&s.to_string_lossy().as_ref()))
                });
                all
            }
        },
    }
}

/// The links to run: all four of the issue; indices into them; or `;`-separated specs.
fn links(filter: Option<&str>) -> Vec<String> {
    let all = || LINKS.iter().map(|l| (*l).to_owned()).collect();
    let Some(f) = filter.map(str::trim).filter(|f| !f.is_empty()) else {
        return all();
    };
    let indices: Option<Vec<usize>> = f.split(',').map(|i| i.trim().parse().ok()).collect();
    match indices {
        Some(indices) => indices
            .into_iter()
            .filter_map(|i| LINKS.get(i).map(|l| (*l).to_owned()))
            .collect(),
        None => f.split(';').map(|l| l.trim().to_owned()).collect(),
    }
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else the workspace's `target/`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}
