//! Issue 6, phase 1: content-addressed resources (spec §14) without sockets. Reference
//! extraction of each kind, `data:` URLs, large texts, refused paths, masking first, patches,
//! have/want across a navigation, the receiver's integrity and limits, the stores, the relay
//! cache and the agent's complete page.

mod common;

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use tandem_engine::consumer::ChangeRecord;
use tandem_engine::resource::{
    Address, Blob, BlobStore, FileLoader, LoadError, Loaded, RelayCache, ResolveMode,
    ResourceConfig, ResourceError, ResourceEvent, ResourceLimits, ResourceLoader, ResourceReceiver,
    ResourceSender, Resources, SendMode, StoreError, Transmit, decode_data_url, resolve_page,
};
use tandem_engine::{Agent, Consumer, Dom, Element, MaskPolicy, NodeKind, parse_html};
use tandem_protocol::compress;
use tandem_protocol::message::{Addresses, Coding, Resource};
use tandem_protocol::{Limits, NodeId, Ns};

const L: Limits = Limits::DEFAULT;
const SITE_URL: &str = "https://shop.example/";
const CANARY: &str = "CANARY-7f3e";

fn site() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/resources/site")
}

fn page(name: &str) -> String {
    std::fs::read_to_string(site().join(name)).expect("fixture page")
}

fn loader() -> FileLoader {
    FileLoader::new(site(), SITE_URL)
}

fn resources() -> Resources {
    Resources::new(loader(), ResourceConfig::default())
}

fn consumer_for(html: &str, url: &str) -> Consumer {
    Consumer::with_resources(
        parse_html(html, L),
        url,
        L,
        MaskPolicy::default(),
        resources(),
    )
}

fn find(dom: &Dom, pred: impl Fn(&Element) -> bool) -> NodeId {
    dom.preorder(0)
        .find(|&n| dom.node(n).and_then(|x| x.element()).is_some_and(&pred))
        .expect("element")
}

fn attr(dom: &Dom, pred: impl Fn(&Element) -> bool, name: &str) -> String {
    let n = find(dom, pred);
    dom.node(n)
        .and_then(|x| x.element())
        .and_then(|e| e.attr(name))
        .expect("attribute")
        .to_owned()
}

fn blob_of(c: &Consumer, uri: &str) -> Blob {
    let a = Address::from_uri(uri).unwrap_or_else(|| panic!("{uri} is no resource URI"));
    c.resources()
        .expect("resources")
        .store()
        .peek(&a)
        .expect("blob held")
        .clone()
}

fn text_of(b: &Blob) -> &str {
    std::str::from_utf8(b.bytes()).expect("utf-8")
}

fn file(rel: &str) -> Vec<u8> {
    std::fs::read(site().join(rel)).expect("fixture")
}

/// Applies what the consumer queued to the agent; checks convergence.
fn sync(c: &mut Consumer, agent: &mut Agent) {
    c.flush();
    while let Some(m) = c.poll_message() {
        agent.handle_message(m).expect("agent applies");
    }
    while let Some(m) = agent.poll_message() {
        c.handle_message(&m).expect("consumer takes the ack");
    }
    assert_eq!(agent.tree_hash(), Some(c.tree_hash()));
}

/// Runs have/want between a receiver and a sender serving from the consumer (through an
/// optional relay cache) until nothing moves; returns the pieces the consumer sent.
fn exchange(
    c: &mut Consumer,
    sender: &mut ResourceSender,
    rx: &mut ResourceReceiver,
    mut relay: Option<(&mut RelayCache, &mut ResourceSender)>,
    corrupt: &mut dyn FnMut(&mut Resource),
) -> Vec<Resource> {
    let mut sent = Vec::new();
    let fresh = c.resources_mut().expect("resources").take_new_references();
    sender.offer(&fresh, c.resources_mut().expect("resources").store_mut());
    for _ in 0..100 {
        let mut moved = false;
        // A WANT_AGAIN is answered as a WANT is (spec §7.37); only a transit, which this
        // exchange has none of, tells them apart.
        while let Some(want) = rx.poll_want().or_else(|| rx.poll_want_again()) {
            moved = true;
            let want = match relay.as_mut() {
                Some((cache, rs)) => {
                    let (served, rest) = cache.answer_want(&want);
                    for b in served {
                        rs.queue_blob(b);
                    }
                    rest
                }
                None => Some(want),
            };
            if let Some(w) = want {
                sender.handle_want(&w, c.resources_mut().expect("resources").store_mut());
            }
        }
        while let Some(Transmit { stream, piece, fin }) = sender.poll_transmit() {
            moved = true;
            sent.push(piece.clone());
            let mut p = piece;
            if let Some((cache, _)) = relay.as_mut() {
                let _ = cache.observe(stream, &p);
                if fin {
                    cache.observe_end(stream);
                }
            }
            corrupt(&mut p);
            let _ = rx.handle_piece(stream, &p);
            if fin {
                rx.handle_stream_end(stream);
            }
        }
        if let Some((_, rs)) = relay.as_mut() {
            while let Some(Transmit { stream, piece, fin }) = rs.poll_transmit() {
                moved = true;
                let _ = rx.handle_piece(1 << 40 | stream, &piece);
                if fin {
                    rx.handle_stream_end(1 << 40 | stream);
                }
            }
        }
        if !moved {
            break;
        }
    }
    sent
}

/// A new agent synced with `c` and holding every blob it asked for, pulled without loss:
/// (agent, its receiver).
fn pulled_by_a_new_agent(c: &mut Consumer) -> (Agent, ResourceReceiver) {
    let mut agent = Agent::new(L);
    sync(c, &mut agent);
    let mut rx = receiver();
    rx.scan_dom(agent.dom());
    let mut sender = ResourceSender::new(SendMode::Pull);
    exchange(c, &mut sender, &mut rx, None, &mut no_corruption());
    (agent, rx)
}

fn receiver() -> ResourceReceiver {
    ResourceReceiver::new(BlobStore::new(1 << 24), ResourceLimits::DEFAULT)
}

fn no_corruption() -> impl FnMut(&mut Resource) {
    |_| {}
}

// ───────────────────────── extraction ─────────────────────────

#[test]
fn every_reference_kind_is_rewritten() {
    let c = consumer_for(&page("page1.html"), &format!("{SITE_URL}page1.html"));
    let dom = c.dom();
    let is = |tag: &'static str, alt: &'static str| {
        move |e: &Element| e.name == tag && e.attr("alt") == Some(alt)
    };

    // <img src> and srcset.
    let logo = attr(dom, is("img", "logo"), "src");
    assert_eq!(blob_of(&c, &logo).bytes(), &file("img/logo.png")[..]);
    assert_eq!(blob_of(&c, &logo).content_type(), "image/png");
    let srcset = attr(dom, is("img", "logo"), "srcset");
    let bg = Address::of(&file("img/bg.png")).to_uri();
    assert_eq!(srcset, format!("{logo} 1x, {bg} 2x"));

    // <link rel=stylesheet>: the stylesheet's @import and url()s (the @font-face src among
    // them) are rewritten relative to the stylesheet, before it is hashed.
    let css = blob_of(
        &c,
        &attr(
            dom,
            |e| e.name == "link" && e.attr("rel") == Some("stylesheet"),
            "href",
        ),
    );
    assert_eq!(css.content_type(), "text/css");
    assert!(css.cacheable());
    let css_text = text_of(&css);
    let font = Address::of(&file("fonts/tandem.woff2")).to_uri();
    assert!(css_text.contains(&format!("url({bg})")), "{css_text}");
    assert!(
        css_text.contains(&format!("src: url(\"{font}\") format(\"woff2\")")),
        "{css_text}"
    );
    let import = css_text.split('"').nth(1).expect("the @import string");
    let base = blob_of(&c, import);
    let dot = Address::of(&file("img/dot.gif")).to_uri();
    assert!(
        text_of(&base).contains(&format!("url('{dot}')")),
        "{}",
        text_of(&base)
    );
    let font_blob = blob_of(&c, &font);
    assert_eq!(font_blob.content_type(), "font/woff2");

    // <link rel=icon>, a style attribute, a <style> text.
    assert_eq!(
        attr(
            dom,
            |e| e.name == "link" && e.attr("rel") == Some("icon"),
            "href"
        ),
        dot
    );
    assert_eq!(
        attr(dom, |e| e.name == "div", "style"),
        format!("background-image: url({dot})")
    );
    let style = find(dom, |e| e.name == "style");
    let style_text = dom.text(dom.children(style)[0]).expect("style text");
    assert_eq!(
        style_text,
        format!(".hero {{ background: url(\"{bg}\") no-repeat; }}")
    );

    // data: URLs, base64 and percent-encoded.
    let b64 = blob_of(&c, &attr(dom, is("img", "b64"), "src"));
    assert_eq!(b64.content_type(), "image/gif");
    assert_eq!(b64.bytes(), b"GIF89a\x01\x00\x01\x00\x00\x00\x00,");
    let pct = blob_of(&c, &attr(dom, is("img", "pct"), "src"));
    assert_eq!(pct.content_type(), "image/svg+xml");
    assert_eq!(
        text_of(&pct),
        r#"<svg xmlns="http://www.w3.org/2000/svg"/>"#
    );

    // What cannot be loaded stays as it is: remote, missing, escaping the root.
    assert_eq!(
        attr(dom, is("img", "remote"), "src"),
        "https://cdn.example/remote.png"
    );
    assert_eq!(attr(dom, is("img", "missing"), "src"), "img/missing.png");
    assert_eq!(attr(dom, is("img", "escape"), "src"), "../secret.txt");
    assert_eq!(
        attr(dom, is("img", "escape2"), "src"),
        "img/%2e%2e/%2e%2e/secret.txt"
    );
    let store = c.resources().expect("resources").store();
    for a in store.addresses() {
        let b = store.peek(&a).expect("held");
        assert!(!String::from_utf8_lossy(b.bytes()).contains("SECRET-FILE"));
    }
}

#[test]
fn load_errors_are_reported() {
    let mut c = consumer_for(&page("page1.html"), &format!("{SITE_URL}page1.html"));
    let r = c.resources_mut().expect("resources");
    let mut errors = Vec::new();
    while let Some(e) = r.poll_load_error() {
        errors.push(e);
    }
    assert!(errors.contains(&(format!("{SITE_URL}img/missing.png"), LoadError::NotFound)));
    assert!(errors.contains(&(
        format!("{SITE_URL}img/%2e%2e/%2e%2e/secret.txt"),
        LoadError::Escapes
    )));
    // `../secret.txt` from the page resolves (dot segments removed) to the root's own
    // `secret.txt`, which does not exist under the root.
    assert!(errors.contains(&(format!("{SITE_URL}secret.txt"), LoadError::NotFound)));
}

#[test]
fn paths_that_escape_the_root_are_refused() {
    let mut l = loader();
    for url in [
        format!("{SITE_URL}img/%2e%2e/%2e%2e/secret.txt"),
        format!("{SITE_URL}img/..%2f..%2fsecret.txt"),
        format!("{SITE_URL}%2fetc%2fpasswd"),
        format!("{SITE_URL}img%5c..%5c..%5csecret.txt"),
        format!("{SITE_URL}img/%00.png"),
    ] {
        assert_eq!(l.load(&url, 1 << 20), Err(LoadError::Escapes), "{url}");
    }
    assert_eq!(
        l.load("https://shop.example.evil/img/logo.png", 1 << 20),
        Err(LoadError::Unsupported)
    );
    assert_eq!(
        l.load("https://other.example/x.png", 1 << 20),
        Err(LoadError::Unsupported)
    );
    let ok = l
        .load(&format!("{SITE_URL}img/logo.png?v=3#x"), 1 << 20)
        .expect("loads");
    assert_eq!(ok.bytes, file("img/logo.png"));
    assert!(matches!(
        l.load(&format!("{SITE_URL}img/logo.png"), 10),
        Err(LoadError::TooLarge { .. })
    ));
    #[cfg(unix)]
    {
        let dir = std::env::temp_dir().join(format!("tandem-res-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::os::unix::fs::symlink(site().join("../secret.txt"), dir.join("link.txt"))
            .expect("symlink");
        let mut l = FileLoader::new(&dir, SITE_URL);
        assert_eq!(
            l.load(&format!("{SITE_URL}link.txt"), 1 << 20),
            Err(LoadError::Escapes)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn data_urls_decode() {
    assert_eq!(
        decode_data_url("data:text/plain;base64,aGVsbG8="),
        Some(("text/plain".to_owned(), b"hello".to_vec()))
    );
    assert_eq!(
        decode_data_url("data:,a%20b%2Cc"),
        Some(("text/plain;charset=US-ASCII".to_owned(), b"a b,c".to_vec()))
    );
    assert_eq!(
        decode_data_url("DATA:Image/PNG;base64,%41%41%3D%3D"),
        Some(("image/png".to_owned(), vec![0]))
    );
    assert_eq!(decode_data_url("data:;base64,!!"), None);
    assert_eq!(decode_data_url("data:nocomma"), None);
    assert_eq!(decode_data_url("data:,%zz"), None);
    assert_eq!(decode_data_url("https://x/"), None);
}

#[test]
fn large_texts_become_private_blobs_and_come_back_exactly() {
    let para = format!("<b>not markup</b> & {}", "long text ".repeat(500));
    let sheet = format!(
        ".a{{background:url(img/dot.gif)}}{}",
        "/* pad */".repeat(600)
    );
    let html = format!(
        "<!DOCTYPE html><html><head><style>{sheet}</style></head><body><p>{}</p><p>short</p>\
         <p>tandem:blake3:{}</p></body></html>",
        para.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;"),
        "ab".repeat(32),
    );
    let original = parse_html(&html, L);
    let mut c = consumer_for(&html, SITE_URL);
    let dom = c.dom();
    let p = find(dom, |e| e.name == "p");
    let uri = dom.text(dom.children(p)[0]).expect("text").to_owned();
    let b = blob_of(&c, &uri);
    assert_eq!(text_of(&b), para);
    assert!(!b.cacheable(), "the page's own text is never cacheable");
    assert!(b.content_type().starts_with("text/plain"));
    // A page text that looks like a URI becomes a blob too, so a URI text is never ambiguous.
    let third = dom.children(find(dom, |e| e.name == "body"))[2];
    let looks = blob_of(&c, dom.text(dom.children(third)[0]).expect("text"));
    assert_eq!(
        text_of(&looks),
        format!("tandem:blake3:{}", "ab".repeat(32))
    );
    // The large <style> text: its url()s first, then the whole sheet as a blob.
    let style = find(dom, |e| e.name == "style");
    let sheet_blob = blob_of(&c, dom.text(dom.children(style)[0]).expect("style text"));
    assert_eq!(sheet_blob.content_type(), "text/css");
    assert!(
        sheet_blob.cacheable(),
        "a style sheet, even written into the page"
    );
    let dot = Address::of(&file("img/dot.gif")).to_uri();
    assert!(text_of(&sheet_blob).starts_with(&format!(".a{{background:url({dot})}}")));

    // The agent restores the texts exactly; with files, the sheet points at its image.
    let (agent, rx) = pulled_by_a_new_agent(&mut c);
    assert_eq!(rx.wanted().count(), 0);
    let page = agent.to_html_resolved(
        rx.store(),
        &ResolveMode::Files {
            prefix: "res/".into(),
        },
    );
    assert!(page.missing.is_empty());
    let mut back = parse_html(&page.html, L);
    let pb = find(&back, |e| e.name == "p");
    assert_eq!(back.text(back.children(pb)[0]), Some(para.as_str()));
    let sb = find(&back, |e| e.name == "style");
    let dot_file = format!("res/{}.gif", Address::of(&file("img/dot.gif")).to_hex());
    assert_eq!(
        back.text(back.children(sb)[0]).map(str::to_owned),
        Some(sheet.replace("img/dot.gif", &dot_file))
    );
    // With every resource written as a file, the page equals the original but for the URLs.
    let mut expect = original.clone();
    let s = find(&expect, |e| e.name == "style");
    let t = expect.children(s)[0];
    expect
        .set_text(t, &sheet.replace("img/dot.gif", &dot_file))
        .expect("set");
    assert_eq!(back.root_hash(), expect.root_hash());
}

/// A page text that is exactly the URI of a blob this consumer made from another text is still
/// the page's own text: it becomes a blob of its own (spec §14.3), so that the agent shows the
/// URI as the page does, not the content the URI names.
#[test]
fn a_page_text_equal_to_one_of_our_uris_is_page_text() {
    let para = "long text ".repeat(500);
    let ours = Address::of(para.as_bytes()).to_uri();
    let html = format!("<!DOCTYPE html><body><p>{para}</p><p>{ours}</p></body>");
    let mut c = consumer_for(&html, SITE_URL);
    let dom = c.dom();
    let body = find(dom, |e| e.name == "body");
    let text = |i: usize| {
        let p = dom.children(body)[i];
        let t = dom.children(p)[0];
        (t, dom.text(t).expect("text").to_owned())
    };
    let (first, first_text) = text(0);
    let (second, second_text) = text(1);
    assert_eq!(
        first_text, ours,
        "the large text is a reference to its blob"
    );
    assert_ne!(
        second_text, ours,
        "the page's URI text is not taken for our reference"
    );
    assert_eq!(text_of(&blob_of(&c, &second_text)), ours);
    assert!(dom.is_blob_reference(first) && dom.is_blob_reference(second));

    // The page writes the same URI into a text later: page text again, a blob again.
    let n = dom.children(dom.children(body)[0])[0];
    c.apply_records(vec![ChangeRecord::CharacterData {
        target: n,
        value: ours.clone(),
    }])
    .expect("apply");
    c.flush();
    let dom = c.dom();
    let now = dom.text(n).expect("text").to_owned();
    assert_ne!(now, ours);
    assert_eq!(text_of(&blob_of(&c, &now)), ours);

    // The agent restores both texts as the page has them.
    let (agent, rx) = pulled_by_a_new_agent(&mut c);
    let page = agent.to_html_resolved(rx.store(), &ResolveMode::Inline);
    let back = parse_html(&page.html, L);
    let ps: Vec<String> = back
        .preorder(tandem_protocol::DOCUMENT_ID)
        .filter(|&id| {
            back.node(id)
                .and_then(|x| x.element())
                .is_some_and(|e| e.name == "p")
        })
        .map(|p| {
            back.text(back.children(p)[0])
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(ps, [ours.clone(), ours]);
}

// ───────────────────────── masking first ─────────────────────────

/// A loader that records every URL it is asked for.
#[derive(Clone)]
struct Spy(FileLoader, Arc<Mutex<Vec<String>>>);

impl ResourceLoader for Spy {
    fn load(&mut self, url: &str, max: u64) -> Result<Loaded, LoadError> {
        self.1.lock().expect("lock").push(url.to_owned());
        self.0.load(url, max)
    }
}

#[test]
fn masked_and_blocked_content_never_becomes_a_blob() {
    let big = format!("{CANARY} {}", "secret ".repeat(1000));
    let html = format!(
        "<body><div data-tandem-mask>\
           <img src='img/logo.png?token={CANARY}' id=m>\
           <p>{big}</p>\
           <style>{big} .q{{background:url(img/bg.png)}}</style>\
           <div style='background:url(fonts/tandem.woff2)'>x</div>\
           <img src='data:text/plain,{CANARY}' alt=d>\
         </div>\
         <div data-tandem-block><img src='img/dot.gif'><p>{big}</p></div>\
         <p>visible</p></body>"
    );
    let asked = Arc::new(Mutex::new(Vec::new()));
    let spy = Spy(loader(), asked.clone());
    let mut c = Consumer::with_resources(
        parse_html(&html, L),
        SITE_URL,
        L,
        MaskPolicy::default(),
        Resources::new(spy, ResourceConfig::default()),
    );
    assert!(asked.lock().expect("lock").is_empty(), "{:?}", asked.lock());
    // The masked query stays masked; nothing was rewritten inside the masked region.
    let src = attr(c.dom(), |e| e.attr("id") == Some("m"), "src");
    assert!(
        src.starts_with("img/logo.png?") && !src.contains(CANARY),
        "{src}"
    );
    assert!(c.resources().expect("resources").store().is_empty());

    // Later changes inside the masked region are not loaded either.
    let masked_div = find(c.dom(), |e| e.attr("data-tandem-mask").is_some());
    c.insert(
        masked_div,
        0,
        vec![(
            NodeKind::Element(Element {
                ns: Ns::Html,
                name: "img".into(),
                attrs: vec![("src".into(), "img/bg.png".into())],
            }),
            0,
        )],
    )
    .expect("insert");
    let style = find(c.dom(), |e| e.name == "style");
    let st = c.dom().children(style)[0];
    c.set_text(st, &format!("{big} url(img/dot.gif)"))
        .expect("set");
    let mut agent = Agent::new(L);
    sync(&mut c, &mut agent);
    assert!(asked.lock().expect("lock").is_empty(), "{:?}", asked.lock());

    // Push everything the consumer holds: no piece carries the canary.
    let mut sender = ResourceSender::new(SendMode::Push);
    let mut rx = receiver();
    rx.scan_dom(agent.dom());
    let pieces = exchange(&mut c, &mut sender, &mut rx, None, &mut no_corruption());
    for p in &pieces {
        assert!(!String::from_utf8_lossy(&p.data).contains(CANARY));
        assert!(!p.content_type.contains(CANARY));
    }
    let store = c.resources().expect("resources").store();
    for a in store.addresses() {
        assert!(!String::from_utf8_lossy(store.peek(&a).expect("held").bytes()).contains(CANARY));
    }
}

// ───────────────────────── patches ─────────────────────────

#[test]
fn patches_carry_addresses_too() {
    let mut c = consumer_for("<body><p id=a>hi</p></body>", SITE_URL);
    let mut agent = Agent::new(L);
    sync(&mut c, &mut agent);
    assert!(
        c.resources_mut()
            .expect("r")
            .take_new_references()
            .is_empty()
    );
    let body = find(c.dom(), |e| e.name == "body");
    let p = find(c.dom(), |e| e.name == "p");
    c.insert(
        body,
        p,
        vec![
            (
                NodeKind::Element(Element {
                    ns: Ns::Html,
                    name: "div".into(),
                    attrs: vec![],
                }),
                1,
            ),
            (
                NodeKind::Element(Element {
                    ns: Ns::Html,
                    name: "img".into(),
                    attrs: vec![("src".into(), "img/logo.png".into())],
                }),
                0,
            ),
        ],
    )
    .expect("insert");
    c.set_attr(p, "style", "background: url('img/bg.png')")
        .expect("set");
    sync(&mut c, &mut agent);
    let logo = Address::of(&file("img/logo.png"));
    let bg = Address::of(&file("img/bg.png"));
    assert_eq!(attr(agent.dom(), |e| e.name == "img", "src"), logo.to_uri());
    assert_eq!(
        attr(agent.dom(), |e| e.name == "p", "style"),
        format!("background: url('{}')", bg.to_uri())
    );
    let fresh: HashSet<Address> = c
        .resources_mut()
        .expect("r")
        .take_new_references()
        .into_iter()
        .collect();
    assert_eq!(fresh, [logo, bg].into_iter().collect());

    // The page sets the same URL again (as a change record would): no operation leaves.
    let img = find(c.dom(), |e| e.name == "img");
    c.set_attr(img, "src", "img/logo.png").expect("set");
    assert!(
        !c.flush(),
        "setting the same reference again changes nothing"
    );

    // A large text set later becomes a reference in the patch.
    let t = c.dom().children(p)[0];
    let long = "words ".repeat(1000);
    c.set_text(t, &long).expect("set");
    sync(&mut c, &mut agent);
    let uri = agent
        .dom()
        .text(agent.dom().children(find(agent.dom(), |e| e.name == "p"))[0]);
    assert_eq!(uri, Some(Address::of(long.as_bytes()).to_uri().as_str()));

    // A navigation by diff (update_to) keeps the tree and the agent in step.
    let mut next = parse_html(&page("page2.html"), L);
    c.update_to(&mut next).expect("update");
    sync(&mut c, &mut agent);
    let css = attr(agent.dom(), |e| e.name == "link", "href");
    assert!(Address::from_uri(&css).is_some(), "{css}");
}

// ───────────────────────── have / want ─────────────────────────

#[test]
fn a_shared_stylesheet_travels_once_across_a_navigation() {
    let probe = consumer_for(&page("page2.html"), &format!("{SITE_URL}page2.html"));
    let css = Address::from_uri(&attr(probe.dom(), |e| e.name == "link", "href")).expect("uri");
    for mode in [SendMode::Pull, SendMode::Push] {
        // Page one, then page two in the same session (the consumer brings its tree there).
        let mut c = consumer_for(&page("page1.html"), &format!("{SITE_URL}page1.html"));
        let mut agent = Agent::new(L);
        let mut rx = receiver();
        let mut sender = ResourceSender::new(mode);
        sync(&mut c, &mut agent);
        rx.scan_dom(agent.dom());
        let first = exchange(&mut c, &mut sender, &mut rx, None, &mut no_corruption());
        let mut next = parse_html(&page("page2.html"), L);
        c.update_to(&mut next).expect("navigate");
        sync(&mut c, &mut agent);
        rx.scan_dom(agent.dom());
        let second = exchange(&mut c, &mut sender, &mut rx, None, &mut no_corruption());
        let count = |ps: &[Resource]| {
            ps.iter()
                .filter(|p| p.address == css.0 && p.offset == 0)
                .count()
        };
        assert_eq!(count(&first), 1, "{mode:?}");
        assert_eq!(count(&second), 0, "{mode:?}");
        assert!(second.is_empty(), "{mode:?}: page two holds nothing new");
        let page2 = agent.to_html_resolved(rx.store(), &ResolveMode::Inline);
        assert!(page2.missing.is_empty(), "{mode:?}");

        // A new session for page two: the agent's HAVE keeps the consumer from sending.
        let mut c2 = consumer_for(&page("page2.html"), &format!("{SITE_URL}page2.html"));
        let mut agent2 = Agent::new(L);
        let mut rx2 = ResourceReceiver::new(rx.into_store(), ResourceLimits::DEFAULT);
        let mut sender2 = ResourceSender::new(mode);
        sender2.handle_have(&rx2.have());
        sync(&mut c2, &mut agent2);
        rx2.scan_dom(agent2.dom());
        let again = exchange(&mut c2, &mut sender2, &mut rx2, None, &mut no_corruption());
        assert!(again.is_empty(), "{mode:?}: {} pieces", again.len());
    }
}

#[test]
fn sender_orders_stylesheets_fonts_then_images_small_first() {
    let mut store = BlobStore::new(1 << 20);
    let big_img = store
        .insert(Blob::new(vec![1u8; 5000], "image/png", true))
        .expect("fits");
    let small_img = store
        .insert(Blob::new(vec![2u8; 50], "image/gif", true))
        .expect("fits");
    let font = store
        .insert(Blob::new(vec![3u8; 3000], "font/woff2", true))
        .expect("fits");
    let css = store
        .insert(Blob::new(vec![b'a'; 4000], "text/css", true))
        .expect("fits");
    let mut s = ResourceSender::new(SendMode::Pull);
    s.set_piece_bytes(1000);
    s.handle_want(
        &Addresses {
            addresses: vec![big_img.0, small_img.0, font.0, css.0],
        },
        &mut store,
    );
    let mut order = Vec::new();
    let mut streams = HashSet::new();
    while let Some(t) = s.poll_transmit() {
        assert!(t.piece.data.len() <= 1000);
        if t.piece.offset == 0 {
            order.push(Address(t.piece.address));
            assert!(streams.insert(t.stream), "one stream per blob");
        } else {
            assert!(t.piece.content_type.is_empty());
        }
    }
    assert_eq!(order, [css, font, small_img, big_img]);
    // Each blob once more on WANT (a corrupted copy), then never again.
    let want = Addresses {
        addresses: vec![css.0],
    };
    s.handle_want(&want, &mut store);
    assert!(s.poll_transmit().is_some());
    while s.poll_transmit().is_some() {}
    s.handle_want(&want, &mut store);
    assert!(s.poll_transmit().is_none());

    // Cancelling a blob half sent resets its stream.
    let mut s = ResourceSender::new(SendMode::Pull);
    s.set_piece_bytes(1000);
    s.handle_want(
        &Addresses {
            addresses: vec![big_img.0],
        },
        &mut store,
    );
    let t = s.poll_transmit().expect("first piece");
    s.handle_have(&Addresses {
        addresses: vec![big_img.0],
    });
    assert_eq!(s.poll_reset(), Some(t.stream));
    assert!(s.poll_transmit().is_none());
}

// ───────────────────────── integrity and limits ─────────────────────────

fn pieces(blob: &Blob, size: usize) -> Vec<Resource> {
    let mut s = ResourceSender::new(SendMode::Pull);
    s.set_piece_bytes(size);
    s.queue_blob(blob.clone());
    std::iter::from_fn(|| s.poll_transmit().map(|t| t.piece)).collect()
}

#[test]
fn a_corrupted_blob_is_never_used_and_asked_for_again_once() {
    let mut c = consumer_for(&page("page2.html"), &format!("{SITE_URL}page2.html"));
    let mut agent = Agent::new(L);
    sync(&mut c, &mut agent);
    let mut rx = receiver();
    rx.scan_dom(agent.dom());
    let mut sender = ResourceSender::new(SendMode::Pull);
    sender.set_piece_bytes(100);
    let logo = Address::of(&file("img/logo.png"));
    // Flip one byte of the logo's first delivery, in flight.
    let mut flipped = 0;
    let mut corrupt = |p: &mut Resource| {
        if p.address == logo.0 && p.offset == 200 && flipped == 0 {
            p.data[3] ^= 0xff;
            flipped += 1;
        }
    };
    let sent = exchange(&mut c, &mut sender, &mut rx, None, &mut corrupt);
    assert_eq!(flipped, 1);
    let mut events = Vec::new();
    while let Some(e) = rx.poll_event() {
        events.push(e);
    }
    assert!(events.contains(&ResourceEvent::Corrupt {
        address: logo,
        asked_again: true
    }));
    // Sent twice: the second copy arrived whole and is the one held.
    assert_eq!(
        sent.iter()
            .filter(|p| p.address == logo.0 && p.offset == 0)
            .count(),
        2
    );
    assert_eq!(
        rx.store().peek(&logo).expect("held").bytes(),
        &file("img/logo.png")[..]
    );
    let html = agent.to_html_resolved(rx.store(), &ResolveMode::Inline);
    assert!(html.missing.is_empty());

    // A blob that is corrupted every time: asked again once, then given up, never held.
    let blob = Blob::new(vec![7u8; 300], "image/png", true);
    let mut rx = receiver();
    for round in 0..2 {
        for (i, mut p) in pieces(&blob, 128).into_iter().enumerate() {
            if i == 1 {
                p.data[0] ^= 1;
            }
            let r = rx.handle_piece(round, &p);
            if i == 2 {
                assert!(matches!(r, Err(ResourceError::Mismatch { .. })), "{r:?}");
            }
        }
        assert_eq!(
            rx.poll_event(),
            Some(ResourceEvent::Corrupt {
                address: blob.address(),
                asked_again: round == 0
            })
        );
        // Asked again only once the stream that brought the copy has ended (spec §14.8), and
        // as WANT_AGAIN, never as a WANT a sender could take for one that crossed the copy.
        assert_eq!(rx.poll_want_again(), None);
        rx.handle_stream_end(round);
        assert_eq!(rx.poll_want(), None);
        assert_eq!(
            rx.poll_want_again().map(|w| w.addresses),
            (round == 0).then(|| vec![blob.address().0])
        );
        assert!(!rx.store().contains(&blob.address()));
        assert_eq!(rx.in_flight(), 0);
    }
}

#[test]
fn limits_are_enforced_before_bytes_are_kept() {
    let limits = ResourceLimits {
        max_blob: 1000,
        max_in_flight: 1500,
        max_streams: 4,
        max_content_type: 16,
    };
    let mut rx = ResourceReceiver::new(BlobStore::new(1 << 20), limits);
    let piece = |addr: u8, total_len: u64, offset: u64, data: Vec<u8>| Resource {
        address: [addr; 32],
        total_len,
        offset,
        content_type: if offset == 0 {
            "image/png".into()
        } else {
            String::new()
        },
        cacheable: true,
        coding: Coding::Identity,
        data,
    };
    // An announced length over the limit: refused at once, nothing held.
    let r = rx.handle_piece(1, &piece(1, u64::MAX, 0, vec![0; 10]));
    assert!(matches!(r, Err(ResourceError::TooLarge { .. })), "{r:?}");
    assert_eq!(rx.in_flight(), 0);
    assert_eq!(rx.poll_stop(), Some(1));
    // Later pieces of a refused stream are ignored.
    assert_eq!(
        rx.handle_piece(1, &piece(1, u64::MAX, 10, vec![0; 10])),
        Ok(())
    );
    // The in-flight budget.
    rx.handle_piece(2, &piece(2, 1000, 0, vec![0; 10]))
        .expect("fits");
    let r = rx.handle_piece(3, &piece(3, 1000, 0, vec![0; 10]));
    assert_eq!(
        r,
        Err(ResourceError::Budget {
            field: "resource.in_flight_bytes"
        })
    );
    assert_eq!(rx.in_flight(), 1000);
    // Out of order: a gap, an overlap, a first piece not at 0.
    let r = rx.handle_piece(2, &piece(2, 1000, 20, vec![0; 10]));
    assert_eq!(
        r,
        Err(ResourceError::OutOfOrder {
            expected: 10,
            offset: 20
        })
    );
    assert_eq!(rx.in_flight(), 0, "the refused blob's budget is given back");
    let r = rx.handle_piece(4, &piece(4, 100, 50, vec![0; 10]));
    assert_eq!(
        r,
        Err(ResourceError::OutOfOrder {
            expected: 0,
            offset: 50
        })
    );
    rx.handle_piece(5, &piece(5, 100, 0, vec![0; 10]))
        .expect("fits");
    let r = rx.handle_piece(5, &piece(5, 100, 5, vec![0; 10]));
    assert_eq!(
        r,
        Err(ResourceError::OutOfOrder {
            expected: 10,
            offset: 5
        })
    );
    // Disagreeing pieces, a piece past the end, a long content type.
    rx.handle_piece(6, &piece(6, 100, 0, vec![0; 10]))
        .expect("fits");
    let r = rx.handle_piece(6, &piece(7, 100, 10, vec![0; 10]));
    assert_eq!(
        r,
        Err(ResourceError::Inconsistent {
            field: "resource.address"
        })
    );
    rx.handle_piece(7, &piece(7, 100, 0, vec![0; 10]))
        .expect("fits");
    let r = rx.handle_piece(7, &piece(7, 100, 10, vec![0; 100]));
    assert_eq!(
        r,
        Err(ResourceError::Inconsistent {
            field: "resource.data"
        })
    );
    let mut long = piece(8, 10, 0, vec![]);
    long.content_type = "x".repeat(17);
    assert!(matches!(
        rx.handle_piece(8, &long),
        Err(ResourceError::ContentType { .. })
    ));
    // Too many streams at once.
    for s in 10..14 {
        rx.handle_piece(s, &piece(s as u8, 10, 0, vec![0]))
            .expect("fits");
    }
    let r = rx.handle_piece(20, &piece(20, 10, 0, vec![0]));
    assert_eq!(
        r,
        Err(ResourceError::Budget {
            field: "resource.streams"
        })
    );
    // A stream that ends early gives its budget back.
    for s in 10..14 {
        rx.handle_stream_end(s);
    }
    assert_eq!(rx.in_flight(), 0);
}

#[test]
fn an_empty_blob_and_a_held_blob() {
    let mut rx = receiver();
    let empty = Blob::new(Vec::new(), "text/plain", true);
    for p in pieces(&empty, 10) {
        rx.handle_piece(1, &p).expect("empty blob");
    }
    assert!(rx.store().contains(&empty.address()));
    // A blob held already: its stream is stopped, no error.
    let b = Blob::new(vec![1u8; 50], "image/png", true);
    rx.store_mut().insert(b.clone()).expect("fits");
    rx.handle_piece(2, &pieces(&b, 10)[0])
        .expect("not an error");
    assert_eq!(rx.poll_stop(), Some(2));
}

// ───────────────────────── coded blobs ─────────────────────────

fn stylesheet(rules: usize) -> Vec<u8> {
    (0..rules)
        .map(|i| {
            format!(
                ".card-{i}{{margin:{}px 0;color:#{:06x}}}\n",
                i % 13,
                i * 40503 % 0xffffff
            )
        })
        .collect::<String>()
        .into_bytes()
}

fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

#[test]
fn texts_travel_coded_and_arrive_exactly() {
    let css = stylesheet(600);
    let blob = Blob::new(css.clone(), "text/css", true);
    let ps = pieces(&blob, 1024);
    assert!(ps.iter().all(|p| p.coding == Coding::Zstd));
    assert!(ps.iter().all(|p| p.total_len == css.len() as u64));
    let coded: usize = ps.iter().map(|p| p.data.len()).sum();
    assert_eq!(Some(coded), blob.coded().map(<[u8]>::len));
    assert!(
        coded * 3 < css.len(),
        "{coded} coded bytes for {}",
        css.len()
    );
    let mut rx = receiver();
    for p in &ps {
        rx.handle_piece(9, p).expect("each coded piece is taken");
    }
    assert_eq!(
        rx.poll_event(),
        Some(ResourceEvent::Complete {
            address: blob.address(),
            len: css.len() as u64
        })
    );
    assert_eq!(
        rx.store().peek(&blob.address()).map(Blob::bytes),
        Some(&css[..])
    );
    assert_eq!(rx.in_flight(), 0);

    // An image in a compressed format, and a text that does not compress, travel as they are.
    for b in [
        Blob::new(stylesheet(50), "image/png", true),
        Blob::new(noise(5000), "text/plain", false),
    ] {
        let ps = pieces(&b, 1024);
        assert!(ps.iter().all(|p| p.coding == Coding::Identity), "{b:?}");
        assert_eq!(ps.iter().map(|p| p.data.len() as u64).sum::<u64>(), b.len());
        assert_eq!(b.coded(), None);
    }
}

#[test]
fn a_coded_blob_that_is_not_what_it_announces_is_refused() {
    let css = stylesheet(80);
    let coded = compress::code_blob(&css).unwrap().expect("codes smaller");
    let address = Address::of(&css).0;
    let piece = |total_len: usize, offset: usize, data: &[u8], coding| Resource {
        address,
        total_len: total_len as u64,
        offset: offset as u64,
        content_type: if offset == 0 {
            "text/css".into()
        } else {
            String::new()
        },
        cacheable: true,
        coding,
        data: data.to_vec(),
    };
    let n = css.len();
    let mut rx = receiver();
    let mut stream = 0;
    let mut refused = |rx: &mut ResourceReceiver, ps: &[Resource]| {
        stream += 1;
        let mut last = Ok(());
        for p in ps {
            last = rx.handle_piece(stream, p);
            if last.is_err() {
                break;
            }
        }
        assert_eq!(rx.poll_stop(), Some(stream), "{last:?}");
        assert_eq!(rx.in_flight(), 0);
        assert!(!rx.store().contains(&Address(address)));
        last
    };
    // Announced one byte short: the frame decodes to more.
    let r = refused(&mut rx, &[piece(n - 1, 0, &coded, Coding::Zstd)]);
    assert!(matches!(r, Err(ResourceError::Coding(_))), "{r:?}");
    // Announced one byte longer: the frame ends short.
    let r = refused(&mut rx, &[piece(n + 1, 0, &coded, Coding::Zstd)]);
    assert!(matches!(r, Err(ResourceError::Coding(_))), "{r:?}");
    // A byte after the end of the frame.
    let mut trailing = coded.clone();
    trailing.push(0);
    let r = refused(&mut rx, &[piece(n, 0, &trailing, Coding::Zstd)]);
    assert!(matches!(r, Err(ResourceError::Coding(_))), "{r:?}");
    // Not zstd at all.
    let r = refused(&mut rx, &[piece(n, 0, &css[..100], Coding::Zstd)]);
    assert!(matches!(r, Err(ResourceError::Coding(_))), "{r:?}");
    // A coding this version does not define, and a later piece that changes the coding.
    let r = refused(&mut rx, &[piece(n, 0, &coded, Coding::from(7))]);
    assert_eq!(r, Err(ResourceError::UnknownCoding { coding: 7 }));
    let half = coded.len() / 2;
    let r = refused(
        &mut rx,
        &[
            piece(n, 0, &coded[..half], Coding::Zstd),
            piece(n, half, &coded[half..], Coding::Identity),
        ],
    );
    assert_eq!(
        r,
        Err(ResourceError::Inconsistent {
            field: "resource.coding"
        })
    );
    // Well-formed but of other bytes: decodes, then fails its address.
    let other = compress::code_blob(&stylesheet(81)).unwrap().unwrap();
    let r = refused(
        &mut rx,
        &[piece(stylesheet(81).len(), 0, &other, Coding::Zstd)],
    );
    assert!(matches!(r, Err(ResourceError::Mismatch { .. })), "{r:?}");

    // A stream that ends inside the frame leaves nothing behind.
    rx.handle_piece(100, &piece(n, 0, &coded[..half], Coding::Zstd))
        .expect("a first half");
    rx.handle_stream_end(100);
    assert!(rx.poll_event().into_iter().any(|e| e
        == ResourceEvent::Incomplete {
            address: Address(address)
        }
        || matches!(e, ResourceEvent::Corrupt { .. })));
    assert_eq!(rx.in_flight(), 0);
    // And the right pieces still make the blob.
    for p in [
        piece(n, 0, &coded[..half], Coding::Zstd),
        piece(n, half, &coded[half..], Coding::Zstd),
    ] {
        rx.handle_piece(101, &p).expect("taken");
    }
    assert_eq!(
        rx.store().peek(&Address(address)).map(Blob::bytes),
        Some(&css[..])
    );
    // The frame ended with the blob whole: a piece after it starts no blob.
    let r = rx.handle_piece(101, &piece(n, coded.len(), &[0], Coding::Zstd));
    assert!(matches!(r, Err(ResourceError::OutOfOrder { .. })), "{r:?}");
}

#[test]
fn the_relay_cache_serves_a_coded_blob_it_assembled() {
    let css = stylesheet(400);
    let blob = Blob::new(css.clone(), "text/css", true);
    let mut relay = RelayCache::new(1 << 20, ResourceLimits::DEFAULT);
    for p in pieces(&blob, 700) {
        relay.observe(5, &p).expect("a cacheable coded piece");
    }
    assert!(relay.contains(&blob.address()));
    let (served, rest) = relay.answer_want(&Addresses {
        addresses: vec![blob.address().0],
    });
    assert!(rest.is_none());
    let mut rx = receiver();
    for p in pieces(&served[0], 700) {
        assert_eq!(p.coding, Coding::Zstd);
        rx.handle_piece(1, &p).expect("taken");
    }
    assert_eq!(
        rx.store().peek(&blob.address()).map(Blob::bytes),
        Some(&css[..])
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn a_receiver_survives_any_sequence_of_pieces(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        tandem_engine::resource::fuzzing::resource_receive(&data);
    }
}

#[test]
fn resource_receive_regressions() {
    for path in common::regression_inputs("resource_receive") {
        eprintln!("replaying {}", path.display());
        tandem_engine::resource::fuzzing::resource_receive(&std::fs::read(&path).expect("input"));
    }
}

// ───────────────────────── stores ─────────────────────────

proptest! {
    #[test]
    fn blob_store_stays_within_its_bound(ops in proptest::collection::vec((0u8..40, 0usize..300, any::<bool>()), 1..200)) {
        let mut store = BlobStore::new(1000);
        let mut last = None;
        for (k, len, get) in ops {
            let blob = Blob::new(vec![k; len], "application/octet-stream", true);
            if get {
                if let Some(a) = last {
                    store.get(&a);
                }
            } else {
                let a = store.insert(blob).expect("each fits alone");
                prop_assert!(store.contains(&a), "the newest blob stays");
                last = Some(a);
            }
            prop_assert!(store.bytes() <= 1000);
            let sum: u64 = store.addresses().map(|a| store.peek(&a).map_or(0, |b| b.len())).sum();
            prop_assert_eq!(sum, store.bytes());
            if let Some(a) = last {
                prop_assert!(store.contains(&a), "the most recently used stays");
            }
        }
    }
}

#[test]
fn a_store_refuses_what_cannot_fit_and_the_relay_what_is_private() {
    let mut store = BlobStore::new(10);
    assert!(matches!(
        store.insert(Blob::new(vec![0u8; 11], "x/y", true)),
        Err(StoreError::TooLarge { .. })
    ));
    let mut relay = RelayCache::new(1 << 20, ResourceLimits::DEFAULT);
    let private = Blob::new(b"the page's own text".to_vec(), "text/plain", false);
    assert_eq!(
        relay.insert(private.clone()),
        Err(StoreError::NotCacheable(private.address()))
    );
    // Private pieces passing through are never assembled nor kept.
    for p in pieces(&private, 5) {
        relay.observe(1, &p).expect("forwarded");
    }
    assert!(!relay.contains(&private.address()));
    // Public ones are, once verified; a corrupted one is not.
    let public = Blob::new(vec![9u8; 40], "image/png", true);
    for p in pieces(&public, 16) {
        relay.observe(2, &p).expect("forwarded");
    }
    assert!(relay.contains(&public.address()));
    let other = Blob::new(vec![8u8; 40], "image/png", true);
    for (i, mut p) in pieces(&other, 16).into_iter().enumerate() {
        if i == 0 {
            p.data[0] = 0;
        }
        let _ = relay.observe(3, &p);
    }
    assert!(!relay.contains(&other.address()));
    let (served, rest) = relay.answer_want(&Addresses {
        addresses: vec![public.address().0, other.address().0],
    });
    assert_eq!(served, vec![public.clone()]);
    assert_eq!(rest.expect("forwarded").addresses, vec![other.address().0]);
}

#[test]
fn a_second_session_through_the_relay_cache_uploads_almost_nothing() {
    let relay_cache = Rc::new(RefCell::new(RelayCache::new(
        1 << 26,
        ResourceLimits::DEFAULT,
    )));
    let mut uploads = Vec::new();
    for _session in 0..2 {
        let html = format!("{}<p>{}</p>", page("page1.html"), "page text ".repeat(600));
        let mut c = consumer_for(&html, &format!("{SITE_URL}page1.html"));
        let mut agent = Agent::new(L);
        sync(&mut c, &mut agent);
        let mut rx = receiver(); // a new agent: empty cache
        rx.scan_dom(agent.dom());
        let mut sender = ResourceSender::new(SendMode::Pull);
        let mut from_relay = ResourceSender::new(SendMode::Pull);
        let mut cache = relay_cache.borrow_mut();
        let sent = exchange(
            &mut c,
            &mut sender,
            &mut rx,
            Some((&mut cache, &mut from_relay)),
            &mut no_corruption(),
        );
        let page = agent.to_html_resolved(rx.store(), &ResolveMode::Inline);
        assert!(page.missing.is_empty(), "{:?}", page.missing);
        assert!(!page.html.contains("tandem:blake3:"));
        uploads.push((
            sent.iter()
                .filter(|p| p.cacheable)
                .map(|p| p.data.len())
                .sum::<usize>(),
            sent.iter()
                .filter(|p| !p.cacheable)
                .map(|p| p.data.len())
                .sum::<usize>(),
        ));
    }
    let (first_public, first_private) = uploads[0];
    let (second_public, second_private) = uploads[1];
    assert!(first_public > 0 && first_private > 0);
    assert_eq!(second_public, 0, "every public asset came from the relay");
    assert_eq!(
        second_private, first_private,
        "the page's own text is never cached"
    );
}

// ───────────────────────── the agent's page ─────────────────────────

#[test]
fn the_agent_writes_a_complete_page() {
    let mut c = consumer_for(&page("page1.html"), &format!("{SITE_URL}page1.html"));
    let (agent, rx) = pulled_by_a_new_agent(&mut c);
    // Every blob referenced, nested ones included (the font and the image inside the sheets).
    for rel in [
        "img/logo.png",
        "img/bg.png",
        "img/dot.gif",
        "fonts/tandem.woff2",
    ] {
        assert!(rx.store().contains(&Address::of(&file(rel))), "{rel}");
    }

    let inline = resolve_page(agent.dom(), rx.store(), &ResolveMode::Inline);
    assert!(inline.missing.is_empty());
    assert!(inline.files.is_empty());
    assert!(!inline.html.contains("tandem:blake3:"), "{}", inline.html);
    assert!(inline.html.contains("data:text/css;base64,"));

    let files = resolve_page(
        agent.dom(),
        rx.store(),
        &ResolveMode::Files {
            prefix: "r/".into(),
        },
    );
    assert!(!files.html.contains("tandem:blake3:"));
    let names: HashSet<&str> = files.files.iter().map(|(n, _)| n.as_str()).collect();
    let site_css = files
        .files
        .iter()
        .find(|(_, b)| b.starts_with(b"@import"))
        .expect("site.css written");
    let text = String::from_utf8_lossy(&site_css.1);
    assert!(!text.contains("tandem:blake3:"));
    let font = format!(
        "{}.woff2",
        Address::of(&file("fonts/tandem.woff2")).to_hex()
    );
    assert!(names.contains(font.as_str()));
    assert!(
        text.contains(&format!("url(\"{font}\")")),
        "neighbours by bare name: {text}"
    );
    assert!(files.html.contains(&format!("href=\"r/{}\"", site_css.0)));
    for (name, bytes) in &files.files {
        let hex = name.split('.').next().expect("name");
        let a = Address::from_hex(hex).expect("named by address");
        if !name.ends_with(".css") {
            assert_eq!(Address::of(bytes), a, "{name}: written as received");
        }
    }
    // Blobs not held stay as URIs and are listed.
    let empty = BlobStore::new(10);
    let bare = resolve_page(agent.dom(), &empty, &ResolveMode::Inline);
    assert!(bare.html.contains("tandem:blake3:"));
    assert!(!bare.missing.is_empty());
}

#[test]
fn addresses_parse_and_format() {
    let a = Address::of(b"hello");
    let uri = a.to_uri();
    assert!(uri.starts_with("tandem:blake3:") && uri.len() == 14 + 64);
    assert_eq!(Address::from_uri(&uri), Some(a));
    assert_eq!(
        Address::from_uri(&uri.to_uppercase()),
        None,
        "hex digits are lower case"
    );
    assert_eq!(Address::from_uri(&format!("{uri} ")), None);
    assert_eq!(Address::from_hex(&a.to_hex()), Some(a));
    assert_eq!(a.to_string(), uri);
    // blake3("") as the spec's example.
    assert_eq!(
        Address::of(b"").to_hex(),
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    );
}

#[test]
fn spec_resource_limits_match_code() {
    let spec =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/tandem.md"))
            .expect("spec");
    let s8 = &spec[spec.find("\n## 8 ").expect("§8")..spec.find("\n## 9 ").expect("§9")];
    let start = s8
        .find("| Resource limit |")
        .expect("§8 resource limit table");
    let rows: Vec<(String, u64)> = s8[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let value = cells[2].split_whitespace().next().expect("value");
            (
                cells[1].trim_matches('`').to_owned(),
                value.parse().expect("a number"),
            )
        })
        .collect();
    // Destructured without `..`: a new limit does not compile until it is listed here.
    let ResourceLimits {
        max_blob,
        max_in_flight,
        max_streams,
        max_content_type,
    } = ResourceLimits::DEFAULT;
    let want: Vec<(String, u64)> = [
        ("max_blob", max_blob),
        ("max_in_flight", max_in_flight),
        ("max_streams", max_streams as u64),
        ("max_content_type", max_content_type as u64),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), *v))
    .collect();
    assert_eq!(rows, want);
    assert_eq!(ResourceConfig::default().max_blob, max_blob);
}
