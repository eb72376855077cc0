//! Issue 6 over real QUIC (spec §14): a relay, a consumer and an agent in one process on
//! loopback. A page of `testdata/resources/site` arrives with its resources; a second session
//! on the same site through the same relay uploads almost nothing (the relay's cache serves
//! it); a navigation between two pages sharing a stylesheet sends it once; private blobs are
//! never cached; a blob corrupted in flight is discarded and asked for again.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tandem_engine::resource::{Address, uris_in};
use tandem_engine::{Consumer, MaskPolicy, parse_html};
use tandem_peers::client::{self, ControlChannel};
use tandem_peers::framed::write_message;
use tandem_peers::relay::{self, RelayConfig, RelayHandle};
use tandem_peers::resources::{Pair, ResourceOptions, run_pair};
use tandem_peers::session::{self, AgentOptions, AgentReport, ConsumerReport};
use tandem_peers::transport::Identity;
use tandem_protocol::message::{
    Addresses, Capabilities, Coding, Credential, End, EndReason, Resource, Role,
};
use tandem_protocol::{Limits, Message};

const URL1: &str = "https://shop.example/page1.html";
const URL2: &str = "https://shop.example/page2.html";

fn site() -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/resources/site"
    ))
    .to_owned()
}

/// A fresh directory under the system's temporary directory.
fn scratch(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tandem-resources-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// A copy of the site (stylesheets, images, fonts) in a scratch directory.
fn copy_site(name: &str) -> PathBuf {
    let dir = scratch(name);
    for sub in ["css", "img", "fonts"] {
        std::fs::create_dir_all(dir.join(sub)).expect("a site directory");
        for entry in std::fs::read_dir(site().join(sub)).expect("the site") {
            let path = entry.expect("an entry").path();
            std::fs::copy(&path, dir.join(sub).join(path.file_name().expect("a name")))
                .expect("a copy");
        }
    }
    dir
}

fn relay() -> RelayHandle {
    let identity = Identity::generate().expect("an identity");
    relay::spawn(RelayConfig::new(([127, 0, 0, 1], 0).into(), identity)).expect("a relay")
}

async fn share(relay: &RelayHandle, pair: Pair) -> (ConsumerReport, AgentReport) {
    tokio::time::timeout(
        Duration::from_secs(30),
        run_pair(relay.addr, relay.fingerprint, pair),
    )
    .await
    .expect("the session finishes")
    .expect("the session runs")
}

/// Checks that the page the agent wrote at `out` refers to files that exist beside it and
/// hash to their names (stylesheets' neighbours included), and holds no resource URI; returns
/// the addresses of the files it refers to.
fn check_written_page(out: &Path) -> BTreeSet<Address> {
    let html = std::fs::read_to_string(out).expect("the agent wrote its page");
    assert_eq!(uris_in(&html).count(), 0, "every URI resolved:\n{html}");
    let stem = out
        .file_stem()
        .expect("a name")
        .to_string_lossy()
        .into_owned();
    let dir = out.with_file_name(format!("{stem}_files"));
    let mut seen = BTreeSet::new();
    let mut todo: Vec<(String, String)> = vec![(html, format!("{stem}_files/"))];
    while let Some((text, prefix)) = todo.pop() {
        for name in file_refs(&text, &prefix) {
            let path = dir.join(&name);
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{} is referenced: {e}", path.display()));
            let hex = name.split('.').next().expect("a stem");
            // A stylesheet refers to its neighbours by file name (spec §14.9); with the URIs
            // put back it is the blob it was sent as.
            let blob = if name.ends_with(".css") {
                let css = String::from_utf8(bytes.clone()).expect("CSS is text");
                let mut back = css.clone();
                for n in file_refs(&css, "") {
                    back = back.replace(&n, &format!("tandem:blake3:{}", &n[..64]));
                }
                todo.push((css, String::new()));
                back.into_bytes()
            } else {
                bytes
            };
            let address = Address::of(&blob);
            assert_eq!(
                address.to_hex(),
                hex,
                "{name} holds the bytes of its address"
            );
            seen.insert(address);
        }
    }
    seen
}

/// Every `<prefix><64 hex>.<ext>` in `text`.
fn file_refs(text: &str, prefix: &str) -> Vec<String> {
    let (b, p) = (text.as_bytes(), prefix.as_bytes());
    let mut out = Vec::new();
    let mut i = 0;
    while i + p.len() + 65 < b.len() {
        let start = i + p.len();
        let hex_end = start + 64;
        if b[i..start] == *p
            && b[start..hex_end]
                .iter()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
            && b[hex_end] == b'.'
            && (i == 0 || !b[i - 1].is_ascii_hexdigit())
        {
            let ext_end = (hex_end + 1..b.len())
                .find(|&k| !b[k].is_ascii_alphanumeric())
                .unwrap_or(b.len());
            out.push(String::from_utf8_lossy(&b[start..ext_end]).into_owned());
            i = ext_end;
        } else {
            i += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_arrives_with_its_resources() {
    let relay = relay();
    let out = scratch("a").join("page.html");
    let mut pair = Pair::new(&site().join("page1.html"), URL1);
    pair.out = Some(out.clone());
    let (c, a) = share(&relay, pair).await;
    assert_eq!(a.hash, Some(c.hash), "the agent converged");
    let cr = c.resources.expect("RESOURCES negotiated");
    let ar = a.resources.expect("RESOURCES negotiated");
    assert!(cr.settled, "the agent said it holds everything: {cr:?}");
    assert_eq!((ar.missing, ar.corrupt), (0, 0), "{ar:?}");
    // Stylesheets (site, base), images (logo, bg, dot), the font, and two data: URLs.
    assert!(cr.referenced >= 8, "{cr:?}");
    assert_eq!(ar.blobs as usize, cr.referenced, "{ar:?}");
    // The report says when the last of them arrived, which was after the page was asked for.
    let last = a.last_blob.expect("the time of the last blob");
    assert!(a.first_visible.is_some_and(|v| v <= last), "{last:?}");
    let files = check_written_page(&out);
    assert_eq!(files.len(), cr.referenced);
    // The image files themselves arrived, byte for byte.
    for f in ["img/logo.png", "img/bg.png", "fonts/tandem.woff2"] {
        let bytes = std::fs::read(site().join(f)).expect("fixture");
        assert!(files.contains(&Address::of(&bytes)), "{f} is in the page");
    }
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_session_is_served_by_the_relay_cache() {
    let relay = relay();
    let page = site().join("page1.html");
    let (c1, _) = share(&relay, Pair::new(&page, URL1)).await;
    let first = c1.resources.expect("RESOURCES").uplink;
    let cached = relay.cache_stats();
    // A new agent with an empty cache, on the same site, through the same relay.
    let out = scratch("b").join("page.html");
    let mut pair = Pair::new(&page, URL1);
    pair.out = Some(out.clone());
    let (c2, a2) = share(&relay, pair).await;
    let second = c2.resources.expect("RESOURCES").uplink;
    let served = relay.cache_stats().served_bytes - cached.served_bytes;
    eprintln!(
        "first session uploaded {} RESOURCE bytes ({} blobs); the second {} bytes; the relay served {} bytes",
        first.frame_bytes, first.blobs, second.frame_bytes, served
    );
    assert!(first.frame_bytes > 0);
    assert!(
        second.frame_bytes * 20 <= first.frame_bytes,
        "the second session uploads at most 5 % of the first: {second:?} vs {first:?}"
    );
    assert!(served >= first.data_bytes, "the relay served them instead");
    let ar = a2.resources.expect("RESOURCES");
    assert_eq!((ar.missing, ar.corrupt), (0, 0), "{ar:?}");
    check_written_page(&out);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_navigation_sends_a_shared_stylesheet_once() {
    let relay = relay();
    let dir = copy_site("c");
    // States: page one, then (one interval later) a navigation to page two.
    let one = std::fs::read(site().join("page1.html")).expect("fixture");
    std::fs::write(dir.join("0.html"), &one).expect("state 0");
    std::fs::write(dir.join("1.html"), &one).expect("state 1");
    std::fs::copy(site().join("page2.html"), dir.join("2.html")).expect("state 2");
    let out = scratch("c-out").join("page.html");
    let mut pair = Pair::new(&dir, "https://shop.example/");
    pair.out = Some(out.clone());
    pair.interval = Duration::from_millis(300);
    let (c, a) = share(&relay, pair).await;
    assert_eq!(a.hash, Some(c.hash), "the agent followed the navigation");
    let cr = c.resources.expect("RESOURCES");
    let html = std::fs::read_to_string(&out).expect("the page");
    assert!(html.contains("Second page"), "the agent shows page two");
    let sheet = file_refs(&html, "page_files/")
        .into_iter()
        .find(|n| n.ends_with(".css"))
        .expect("page two links the stylesheet");
    let sheet = Address::from_hex(&sheet[..64]).expect("an address");
    assert_eq!(
        cr.uplink.sends.get(&sheet),
        Some(&1),
        "the shared stylesheet went once: {:?}",
        cr.uplink.sends
    );
    assert!(
        cr.uplink.sends.values().all(|&n| n == 1),
        "no blob went twice: {:?}",
        cr.uplink.sends
    );
    check_written_page(&out);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_blobs_are_never_cached() {
    let relay = relay();
    let dir = copy_site("p");
    // A long text is the page's own content: a private blob (spec §14.3, §14.7).
    let text = "Order history of a customer. ".repeat(200);
    let page = dir.join("private.html");
    std::fs::write(
        &page,
        format!(
            "<!DOCTYPE html><html><head><link rel=stylesheet href=css/site.css></head>\
             <body><p>{text}</p></body></html>"
        ),
    )
    .expect("the page");
    let (c1, _) = share(&relay, Pair::new(&page, URL1)).await;
    let (c2, a2) = share(&relay, Pair::new(&page, URL1)).await;
    let private = Address::of(text.as_bytes());
    assert!(!relay.cache_holds(&private), "the text was never cached");
    let sheet = std::fs::read(site().join("img/bg.png")).expect("fixture");
    assert!(
        relay.cache_holds(&Address::of(&sheet)),
        "public images were"
    );
    let (first, second) = (c1.resources.expect("R"), c2.resources.expect("R"));
    assert_eq!(second.uplink.sends.get(&private), Some(&1), "sent again");
    assert_eq!(second.uplink.blobs, 1, "only the private blob: {second:?}");
    assert!(first.uplink.blobs > 1);
    assert_eq!(a2.resources.expect("R").missing, 0);
    relay.shutdown().await;
}

/// A consumer written by hand that corrupts the first blob it sends: one byte of its data
/// flipped, the address left as it was. It ends the session once the agent has said (HAVE)
/// that it holds every blob the page refers to.
async fn corrupting_consumer(
    relay: &RelayHandle,
    code_tx: tokio::sync::oneshot::Sender<String>,
) -> (usize, u32) {
    let conn = client::connect(relay.addr, relay.fingerprint, Role::Consumer)
        .await
        .expect("connects");
    let mut hello = client::hello(Role::Consumer);
    // No compression, so the DOM stream carries plain frames.
    hello.capabilities = Capabilities(Capabilities::RESOURCES.0 | Capabilities::DATAGRAMS.0);
    let mut ctl = ControlChannel::open(conn, hello).await.expect("welcome");
    let created = ctl.open_session("Sam").await.expect("a session");
    code_tx.send(created.code).expect("the agent waits");
    let joined = ctl.wait_joined().await.expect("joined");
    assert!(joined.capabilities.contains(Capabilities::RESOURCES));
    let page = site().join("page2.html");
    let html = std::fs::read_to_string(&page).expect("fixture");
    let limits = Limits::DEFAULT;
    let res = ResourceOptions::for_page(&page).resources(URL2);
    let mut consumer = Consumer::with_resources(
        parse_html(&html, limits),
        URL2,
        limits,
        MaskPolicy::default(),
        res,
    );
    let referenced: BTreeSet<[u8; 32]> = consumer
        .resources_mut()
        .expect("resources")
        .take_new_references()
        .into_iter()
        .map(|a| a.0)
        .collect();
    let (conn, mut send, mut recv) = ctl.into_parts();
    let mut dom = conn.open_uni().await.expect("a DOM stream");
    while let Some(m) = consumer.poll_message() {
        write_message(&mut dom, &m, &limits).await.expect("written");
    }
    let mut have = BTreeSet::new();
    let (mut sent, mut corrupted) = (0usize, 0u32);
    let mut retried = Vec::new();
    let mut first_corrupted = None;
    while !referenced.is_subset(&have) {
        let want = match recv.next_message().await.expect("a message") {
            Some(Message::Want(want)) => want,
            // The retry comes as WANT_AGAIN (spec §7.37).
            Some(Message::WantAgain(again)) => {
                retried.extend(again.addresses.iter().copied());
                again
            }
            Some(Message::Have(Addresses { addresses })) => {
                have.extend(addresses);
                continue;
            }
            Some(Message::Ack(a)) => {
                consumer.handle_message(&Message::Ack(a)).expect("ack");
                continue;
            }
            Some(_) => continue,
            None => panic!("the relay finished the control stream"),
        };
        for a in want.addresses {
            let blob = consumer
                .resources_mut()
                .expect("resources")
                .store_mut()
                .get(&Address(a))
                .expect("a blob the page refers to");
            let mut data = blob.bytes().to_vec();
            if corrupted == 0 {
                corrupted += 1;
                data[0] ^= 0xff;
                first_corrupted = Some(a);
            }
            let piece = Resource {
                address: a,
                total_len: blob.len(),
                offset: 0,
                content_type: blob.content_type().to_owned(),
                cacheable: blob.cacheable(),
                coding: Coding::Identity,
                data,
            };
            let mut s = conn.open_uni().await.expect("a resource stream");
            write_message(&mut s, &Message::Resource(piece), &limits)
                .await
                .expect("written");
            s.finish().expect("finished");
            sent += 1;
        }
    }
    assert_eq!(
        retried,
        Vec::from_iter(first_corrupted),
        "the corrupted blob, and only it, was asked for again with WANT_AGAIN"
    );
    let end = Message::End(End {
        reason: EndReason::EndedByConsumer,
    });
    write_message(&mut send, &end, &limits).await.expect("END");
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while let Ok(Some(m)) = recv.next_message().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    conn.close(0u32.into(), b"done");
    (sent, corrupted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_corrupted_in_flight_is_discarded_and_asked_again() {
    let relay = relay();
    let out = scratch("d").join("page.html");
    let (code_tx, code_rx) = tokio::sync::oneshot::channel();
    let agent_out = out.clone();
    let (addr, pin) = (relay.addr, relay.fingerprint);
    let agent = tokio::spawn(async move {
        let code = code_rx.await.expect("a code");
        let conn = client::connect(addr, pin, Role::Agent)
            .await
            .expect("connects");
        let mut hello = client::hello(Role::Agent);
        hello.capabilities = client::CAPABILITIES_WITH_RESOURCES;
        let mut ctl = ControlChannel::open(conn, hello).await.expect("welcome");
        ctl.join(Credential::Code(code), "Alex")
            .await
            .expect("joined");
        let opts = AgentOptions {
            out: Some(agent_out),
            ..AgentOptions::default()
        };
        session::run_agent(ctl, opts, std::time::Instant::now()).await
    });
    let (sent, corrupted) = tokio::time::timeout(
        Duration::from_secs(30),
        corrupting_consumer(&relay, code_tx),
    )
    .await
    .expect("the consumer finishes");
    let a = tokio::time::timeout(Duration::from_secs(30), agent)
        .await
        .expect("the agent finishes")
        .expect("the agent task")
        .expect("the agent runs");
    let ar = a.resources.expect("RESOURCES");
    assert_eq!(corrupted, 1);
    assert_eq!(
        ar.corrupt, 1,
        "the agent discarded the corrupted blob: {ar:?}"
    );
    assert_eq!(ar.missing, 0, "and got it on the retry: {ar:?}");
    assert_eq!(sent as u64, ar.blobs + 1, "one blob went twice: {ar:?}");
    // Every file the agent wrote hashes to its name: the corrupted bytes were never used.
    check_written_page(&out);
    relay.shutdown().await;
}
