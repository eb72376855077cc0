//! Resource bytes a consumer uploads (issue 6): for each page, a first session, a repeat
//! session with no cache anywhere (a new agent, no relay cache: the consumer sends everything
//! again) and a repeat session through the relay's cache (a new agent; the relay serves what
//! it kept from the first sessions, the consumer sends only what is not cacheable), modelled
//! with the engine's sans-I/O parts (spec §14): `Resources` rewrites the page, the agent's
//! `ResourceReceiver` wants what its tree refers to, the `RelayCache` answers what it holds
//! and the consumer's `ResourceSender` answers the rest.
//!
//! Run: `cargo run --release -p tandem-benches --example resource_bytes`. The corpus pages
//! (`../shared/corpus/pages`, else `testdata/pages`) refer to their images and stylesheets by
//! remote URLs the reference consumer cannot load, so their resources are the `data:` URLs and
//! the large texts (`<style>` sheets, long texts) in the pages themselves; the small site in
//! `testdata/resources/site` has local stylesheets, fonts and images, and a navigation between
//! its two pages shows a shared stylesheet sent once.

use std::path::Path;

use tandem_benches::corpus_root;
use tandem_engine::resource::{
    BlobStore, FileLoader, RelayCache, ResourceConfig, ResourceLimits, ResourceReceiver,
    ResourceSender, Resources, SendMode, Transmit,
};
use tandem_engine::{Agent, Consumer, MaskPolicy, parse_html};
use tandem_protocol::message::Resource;
use tandem_protocol::{Limits, frame};

const L: Limits = Limits::DEFAULT;
const RELAY_CACHE_BYTES: u64 = 256 * 1024 * 1024;

/// What one session moved.
#[derive(Default, Clone, Copy)]
struct Session {
    /// DOM stream bytes (snapshot frames).
    dom: usize,
    /// Blobs the agent ended up holding and their bytes.
    blobs: usize,
    blob_bytes: u64,
    /// Resource data bytes the consumer uploaded, all and the cacheable part.
    upload: u64,
    /// Resource data bytes the relay served from its cache.
    from_relay: u64,
    /// URIs left unresolved in the agent's page (should be 0).
    missing: usize,
}

fn consumer(html: &str, url: &str, root: &Path, resources: bool) -> Consumer {
    let dom = parse_html(html, L);
    if resources {
        let r = Resources::new(
            FileLoader::new(root, url_dir(url)),
            ResourceConfig::default(),
        );
        Consumer::with_resources(dom, url, L, MaskPolicy::default(), r)
    } else {
        Consumer::with_policy(dom, url, L, MaskPolicy::default())
    }
}

fn url_dir(url: &str) -> &str {
    &url[..url.rfind('/').map_or(url.len(), |i| i + 1)]
}

/// Sends the consumer's queued DOM messages to the agent; returns their frame bytes.
fn dom_sync(c: &mut Consumer, agent: &mut Agent) -> usize {
    c.flush();
    let mut bytes = 0;
    while let Some(m) = c.poll_message() {
        bytes += frame::to_frame(&m, &L).map_or(0, |f| f.len());
        agent
            .handle_message(m)
            .expect("the agent applies what the consumer sends");
    }
    while let Some(m) = agent.poll_message() {
        c.handle_message(&m).expect("acks");
    }
    assert_eq!(
        agent.tree_hash(),
        Some(c.tree_hash()),
        "the agent converged"
    );
    bytes
}

/// Have/want until nothing moves; returns (consumer upload, relay-served) data bytes.
fn resources(
    c: &mut Consumer,
    rx: &mut ResourceReceiver,
    mut relay: Option<&mut RelayCache>,
    sender: &mut ResourceSender,
) -> (u64, u64) {
    let mut from_relay = ResourceSender::new(SendMode::Pull);
    let fresh = c
        .resources_mut()
        .map(|r| r.take_new_references())
        .unwrap_or_default();
    if let Some(r) = c.resources_mut() {
        sender.offer(&fresh, r.store_mut());
    }
    let (mut up, mut served) = (0u64, 0u64);
    loop {
        let mut moved = false;
        while let Some(want) = rx.poll_want() {
            moved = true;
            let rest = match relay.as_deref_mut() {
                Some(cache) => {
                    let (blobs, rest) = cache.answer_want(&want);
                    for b in blobs {
                        from_relay.queue_blob(b);
                    }
                    rest
                }
                None => Some(want),
            };
            if let (Some(w), Some(r)) = (rest, c.resources_mut()) {
                sender.handle_want(&w, r.store_mut());
            }
        }
        while let Some(Transmit { stream, piece, .. }) = sender.poll_transmit() {
            moved = true;
            up += piece.data.len() as u64;
            if let Some(cache) = relay.as_deref_mut() {
                let _ = cache.observe(stream, &piece);
            }
            deliver(rx, stream, &piece);
        }
        while let Some(Transmit { stream, piece, .. }) = from_relay.poll_transmit() {
            moved = true;
            served += piece.data.len() as u64;
            deliver(rx, (1 << 40) | stream, &piece);
        }
        if !moved {
            return (up, served);
        }
    }
}

fn deliver(rx: &mut ResourceReceiver, stream: u64, piece: &Resource) {
    if let Err(e) = rx.handle_piece(stream, piece) {
        eprintln!("refused piece: {e}");
    }
}

fn session(
    html: &str,
    url: &str,
    root: &Path,
    relay: Option<&mut RelayCache>,
    agent_store: BlobStore,
) -> (Session, BlobStore) {
    let mut c = consumer(html, url, root, true);
    let mut agent = Agent::new(L);
    let mut rx = ResourceReceiver::new(agent_store, ResourceLimits::DEFAULT);
    let mut sender = ResourceSender::new(SendMode::Pull);
    sender.handle_have(&rx.have());
    let dom = dom_sync(&mut c, &mut agent);
    rx.scan_dom(agent.dom());
    let (upload, from_relay) = resources(&mut c, &mut rx, relay, &mut sender);
    let page = agent.to_html_resolved(rx.store(), &tandem_engine::resource::ResolveMode::Inline);
    let s = Session {
        dom,
        blobs: rx.store().len(),
        blob_bytes: rx.store().bytes(),
        upload,
        from_relay,
        missing: page.missing.len(),
    };
    (s, rx.into_store())
}

fn kib(b: u64) -> String {
    format!("{:.1}", b as f64 / 1024.0)
}

fn main() {
    let corpus = corpus_root().join("pages");
    let site = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/resources/site");
    let mut pages: Vec<(String, String, String, std::path::PathBuf)> = Vec::new();
    for (name, html) in tandem_benches::pages() {
        let url = format!("https://corpus.invalid/pages/{name}.html");
        pages.push((name, html, url, corpus.clone()));
    }
    for name in ["page1", "page2"] {
        let html = std::fs::read_to_string(site.join(format!("{name}.html"))).expect("fixture");
        pages.push((
            format!("site/{name}"),
            html,
            format!("https://shop.example/{name}.html"),
            site.clone(),
        ));
    }

    let mut relay = RelayCache::new(RELAY_CACHE_BYTES, ResourceLimits::DEFAULT);
    let fresh = || BlobStore::new(tandem_engine::resource::DEFAULT_STORE_BYTES);
    let mut rows = Vec::new();
    for (name, html, url, root) in &pages {
        let plain_dom = {
            let mut c = consumer(html, url, root, false);
            let mut a = Agent::new(L);
            dom_sync(&mut c, &mut a)
        };
        let (first, _) = session(html, url, root, Some(&mut relay), fresh());
        rows.push((
            name.clone(),
            html.clone(),
            url.clone(),
            root.clone(),
            plain_dom,
            first,
        ));
    }
    println!(
        "Resource bytes a consumer uploads per session (KiB of RESOURCE data; DOM = snapshot frames)\n"
    );
    println!(
        "| page | DOM plain | DOM w/ resources | blobs | blob KiB | first upload | repeat, no cache | repeat, relay cache | relay served | repeat / first |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut tot = [0u64; 6];
    let mut missing = 0;
    for (name, html, url, root, plain_dom, first) in &rows {
        let (no_cache, _) = session(html, url, root, None, fresh());
        let (cached, _) = session(html, url, root, Some(&mut relay), fresh());
        missing += first.missing + no_cache.missing + cached.missing;
        let pct = if first.upload == 0 {
            "–".to_owned()
        } else {
            format!(
                "{:.1} %",
                100.0 * cached.upload as f64 / first.upload as f64
            )
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {pct} |",
            kib(*plain_dom as u64),
            kib(first.dom as u64),
            first.blobs,
            kib(first.blob_bytes),
            kib(first.upload),
            kib(no_cache.upload),
            kib(cached.upload),
            kib(cached.from_relay),
        );
        for (t, v) in tot.iter_mut().zip([
            *plain_dom as u64,
            first.dom as u64,
            first.upload,
            no_cache.upload,
            cached.upload,
            cached.from_relay,
        ]) {
            *t += v;
        }
    }
    println!(
        "| **total** | {} | {} | | | {} | {} | {} | {} | {:.1} % |",
        kib(tot[0]),
        kib(tot[1]),
        kib(tot[2]),
        kib(tot[3]),
        kib(tot[4]),
        kib(tot[5]),
        100.0 * tot[4] as f64 / tot[2].max(1) as f64
    );
    println!("\nunresolved URIs in the agents' pages: {missing}");

    // A navigation between two pages that share a stylesheet, in one session.
    let p1 = std::fs::read_to_string(site.join("page1.html")).expect("fixture");
    let p2 = std::fs::read_to_string(site.join("page2.html")).expect("fixture");
    let mut c = consumer(&p1, "https://shop.example/page1.html", &site, true);
    let mut agent = Agent::new(L);
    let mut rx = ResourceReceiver::new(fresh(), ResourceLimits::DEFAULT);
    let mut sender = ResourceSender::new(SendMode::Pull);
    dom_sync(&mut c, &mut agent);
    rx.scan_dom(agent.dom());
    let (first, _) = resources(&mut c, &mut rx, None, &mut sender);
    let mut next = parse_html(&p2, L);
    c.update_to(&mut next).expect("navigate");
    let patch = dom_sync(&mut c, &mut agent);
    rx.scan_dom(agent.dom());
    let (second, _) = resources(&mut c, &mut rx, None, &mut sender);
    let css = std::fs::read(site.join("css/site.css"))
        .map(|b| b.len())
        .unwrap_or(0);
    println!(
        "\nnavigation site/page1 → site/page2 in one session: {} KiB of resources for page 1, \
         {} KiB for page 2 (patch {} B); the shared stylesheet ({css} B before rewriting) went \
         once",
        kib(first),
        kib(second),
        patch
    );
}
