//! Resource bytes over the real network (issue 6): for each corpus page and the two pages of
//! `testdata/resources/site`, a relay, a consumer and an agent run over QUIC on loopback
//! (`tandem_peers::resources::run_pair`), four times: a first session; a repeat with a new
//! agent through a relay without cache (the consumer uploads everything again); a repeat with
//! a new agent through the relay of the first session, whose cache serves what is cacheable;
//! and a repeat whose agent kept its blobs (it lists them in `HAVE`, so nothing is wanted).
//! The table gives the `RESOURCE` bytes the consumer uploaded (frame headers included) and the
//! blob bytes the relay served from its cache. `resource_bytes` models the same sans I/O.
//!
//! Run: `cargo run --release -p tandem-benches --example resource_sessions`. The corpus pages
//! (`../shared/corpus/pages`, else `testdata/pages`) refer to their images and stylesheets by
//! remote URLs, which the reference consumer does not load, so their blobs are their `data:`
//! URLs and large texts (private unless they are `<style>` sheets: uploaded again each time).

use std::path::Path;

use tandem_peers::resources::measure_sessions;

fn main() {
    let corpus = tandem_benches::corpus_root().join("pages");
    let site = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/resources/site");
    let mut pages = Vec::new();
    for (name, _) in tandem_benches::pages() {
        let path = corpus.join(format!("{name}.html"));
        let url = format!("https://corpus.invalid/pages/{name}.html");
        pages.push((name, path, url));
    }
    for name in ["page1", "page2"] {
        let url = format!("https://shop.example/{name}.html");
        pages.push((
            format!("site/{name}"),
            site.join(format!("{name}.html")),
            url,
        ));
    }
    let rows = measure_sessions(&pages).expect("the sessions run");
    println!(
        "{:<24} {:>6} {:>12} {:>16} {:>16} {:>14} {:>16} {:>8}",
        "page",
        "blobs",
        "first B",
        "repeat, no cache",
        "repeat, relay $",
        "relay served",
        "repeat, agent $",
        "missing"
    );
    let mut total = [0u64; 5];
    for r in &rows {
        println!(
            "{:<24} {:>6} {:>12} {:>16} {:>16} {:>14} {:>16} {:>8}",
            r.page,
            r.blobs,
            r.first,
            r.repeat_no_cache,
            r.repeat_relay_cache,
            r.relay_served,
            r.repeat_agent_cache,
            r.missing
        );
        for (t, v) in total.iter_mut().zip([
            r.first,
            r.repeat_no_cache,
            r.repeat_relay_cache,
            r.relay_served,
            r.repeat_agent_cache,
        ]) {
            *t += v;
        }
    }
    println!(
        "{:<24} {:>6} {:>12} {:>16} {:>16} {:>14} {:>16}",
        "total", "", total[0], total[1], total[2], total[3], total[4]
    );
    let pct = |v: u64| 100.0 * v as f64 / total[0].max(1) as f64;
    println!(
        "repeat sessions upload {:.1} % of the first without any cache, {:.1} % through the relay's cache, {:.1} % with the agent's cache",
        pct(total[1]),
        pct(total[2]),
        pct(total[4])
    );
}
