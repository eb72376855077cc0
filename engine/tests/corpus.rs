//! Issue 2's corpus checks: every page imports, snapshots and rebuilds to the same tree and
//! hash; live changes and recorded page states converge on the agent, hash-checked after every
//! patch.

mod common;

use tandem_engine::{
    Agent, AgentEvent, Consumer, Dom, LivePage, Name, NodeKind, parse_html, snapshot, to_html,
};
use tandem_protocol::message::Snapshot;
use tandem_protocol::{DOCUMENT_ID, FrameReader, Limits, Message, SnapshotView, frame};

/// Sends everything the consumer has queued through real frame encoding and decoding, and
/// returns acknowledgements to it.
fn pump(consumer: &mut Consumer, agent: &mut Agent) -> usize {
    let limits = Limits::DEFAULT;
    let mut wire = Vec::new();
    while let Some(msg) = consumer.poll_message() {
        frame::encode_frame(&msg, &mut wire, &limits).expect("encode");
    }
    let bytes = wire.len();
    assert_eq!(
        consumer.fallbacks(),
        0,
        "a patch failed the consumer's own check"
    );
    let mut reader = FrameReader::new(limits);
    reader.push(&wire);
    while let Some(raw) = reader.next_frame().expect("frame") {
        // SNAPSHOT bodies are read in place, as the tandem agent does.
        if raw.ty == tandem_protocol::FrameType::SNAPSHOT {
            let view = tandem_protocol::SnapshotView::parse(&raw.body, &limits).expect("decode");
            agent.handle_snapshot(view).expect("agent applies");
        } else {
            let msg = raw.decode(&limits).expect("decode");
            agent.handle_message(msg).expect("agent applies");
        }
    }
    while let Some(reply) = agent.poll_message() {
        consumer
            .handle_message(&reply)
            .expect("consumer handles reply");
    }
    bytes
}

fn assert_same(consumer: &mut Consumer, agent: &mut Agent, what: &str) {
    assert_eq!(
        agent.tree_hash(),
        Some(consumer.tree_hash()),
        "{what}: hashes differ"
    );
}

#[test]
fn every_page_snapshots_and_rebuilds() {
    for (name, html) in common::pages() {
        let mut dom = parse_html(&html, Limits::DEFAULT);
        // The consumer masks with its default policy (spec §12): compare with the masked page.
        tandem_engine::MaskPolicy::default().apply(&mut dom);
        let nodes = dom.len();
        let hash = dom.root_hash();
        let mut consumer = Consumer::new(dom, "https://example.test/", Limits::DEFAULT);
        let mut agent = Agent::new(Limits::DEFAULT);
        let bytes = pump(&mut consumer, &mut agent);
        assert_eq!(agent.tree_hash(), Some(hash), "{name}");
        assert_eq!(agent.dom().len(), nodes, "{name}: node count");
        // Structure, not only hash: the exported HTML is identical.
        assert_eq!(
            agent.to_html(),
            to_html(consumer.dom()),
            "{name}: exported HTML"
        );
        assert!(bytes > 0);
        let mut rendered = false;
        while let Some(ev) = agent.poll_event() {
            rendered |= matches!(ev, AgentEvent::Rendered { .. });
        }
        assert!(rendered, "{name}: no Rendered event");
    }
}

#[test]
fn scripts_and_handlers_never_imported() {
    for (name, html) in common::pages() {
        let dom = parse_html(&html, Limits::DEFAULT);
        for id in dom.preorder(0) {
            if let Some(NodeKind::Element(e)) = dom.node(id).map(|n| &n.kind) {
                assert_ne!(e.name, "script", "{name}");
                assert!(
                    e.attrs
                        .iter()
                        .all(|(n, _)| !n.to_ascii_lowercase().starts_with("on")),
                    "{name}: {:?}",
                    e.attrs
                );
            }
        }
    }
}

#[test]
fn export_reimports_to_the_same_tree() {
    for (name, html) in common::pages() {
        let mut dom = parse_html(&html, Limits::DEFAULT);
        let mut again = parse_html(&to_html(&dom), Limits::DEFAULT);
        assert_eq!(again.root_hash(), dom.root_hash(), "{name}");
    }
}

/// Checks that the names of `dom` that are static-table entries are borrowed from the table,
/// not allocated per element, and that the others are owned.
fn assert_static_names_borrowed(dom: &Dom, what: &str) {
    for id in dom.preorder(DOCUMENT_ID) {
        let Some(e) = dom.node(id).and_then(|n| n.element()) else {
            continue;
        };
        for n in std::iter::once(&e.name).chain(e.attrs.iter().map(|(n, _)| n)) {
            let is_static = tandem_protocol::strings::static_index(n).is_some();
            assert_eq!(matches!(n, Name::Borrowed(_)), is_static, "{what}: {n}");
        }
    }
}

/// The frames written straight from the tree are byte for byte the `SNAPSHOT` frames of the
/// owned records (`snapshot::record`, as patches encode inserted subtrees) split at the same
/// places: the two encoders keep the string table in the same step.
#[test]
fn snapshot_frames_equal_the_owned_records() {
    let limits = Limits::DEFAULT;
    for (name, html) in common::pages() {
        let mut dom = parse_html(&html, limits);
        let mut enc = tandem_protocol::SymEncoder::new(limits);
        let frames = snapshot::encode_frames(&mut dom, 7, "https://e.x/", &mut enc, 300, 2048)
            .expect("encodes");
        assert!(
            frames.len() > 1 || html.len() < 4096,
            "{name}: several parts"
        );
        let hash = tandem_engine::hash::short(&dom.root_hash());
        let mut owned = tandem_protocol::SymEncoder::new(limits);
        let mut records = dom.preorder(DOCUMENT_ID).skip(1).map(|id| {
            let node = dom.node(id).expect("a node of the walk");
            snapshot::record(&node.kind, node.children().len(), &mut owned)
        });
        for (i, f) in frames.iter().enumerate() {
            let count = SnapshotView::parse(f.body(), &limits).expect(&name).len();
            let last = i + 1 == frames.len();
            assert_eq!(
                (f.epoch(), f.part(), f.is_last()),
                (7, i as u32, last),
                "{name}"
            );
            let msg = Message::Snapshot(Snapshot {
                epoch: 7,
                part: i as u32,
                url: if i == 0 {
                    "https://e.x/".into()
                } else {
                    String::new()
                },
                nodes: records.by_ref().take(count).collect(),
                hash: last.then_some(hash),
            });
            let want = frame::to_frame(&msg, &limits).expect("encodes");
            assert!(f.frame() == want, "{name}: part {i} differs");
            assert_eq!(f.to_snapshot().map(Message::Snapshot), Ok(msg), "{name}");
        }
        assert!(records.next().is_none(), "{name}: every node listed");
    }
}

#[test]
fn snapshot_decode_matches_in_small_parts() {
    for (name, html) in common::pages() {
        let mut dom = parse_html(&html, Limits::DEFAULT);
        let mut enc = tandem_protocol::SymEncoder::new(Limits::DEFAULT);
        let parts = snapshot::encode(&mut dom, 3, "u", &mut enc, 512).expect("encodes");
        let mut back = snapshot::decode(&parts, Limits::DEFAULT).expect(&name);
        assert_eq!(back.root_hash(), dom.root_hash(), "{name}");
        assert!(
            parts.iter().rev().skip(1).all(|p| p.hash.is_none()),
            "{name}: only the last part has the hash"
        );
        // The builder hashed each element as it completed: every cached hash is the one a
        // full rehash gives, and later changes rehash from those (wide nodes' caches too).
        let ids: Vec<_> = dom.preorder(DOCUMENT_ID).collect();
        for &id in &ids {
            assert_eq!(
                back.cached_hash(id),
                dom.cached_hash(id),
                "{name}: node {id}"
            );
        }
        assert_static_names_borrowed(&back, &name);
        assert_static_names_borrowed(&dom, &format!("{name} (imported)"));
        for &id in ids.iter().step_by(7) {
            if dom
                .node(id)
                .is_some_and(|n| matches!(n.kind, NodeKind::Element(_)))
            {
                dom.set_attr(id, "data-x", "1").unwrap();
                back.set_attr(id, "data-x", "1").unwrap();
            }
        }
        assert_eq!(back.root_hash(), dom.root_hash(), "{name}: after changes");
    }
}

#[test]
fn live_changes_converge_on_every_page() {
    for (name, html) in common::pages() {
        let dom = parse_html(&html, Limits::DEFAULT);
        let mut consumer = Consumer::new(dom, "https://example.test/", Limits::DEFAULT);
        let mut agent = Agent::new(Limits::DEFAULT);
        pump(&mut consumer, &mut agent);
        let mut live = LivePage::new(name.len() as u64);
        for step in 0..30 {
            live.step(&mut consumer, 10).expect("changes apply");
            consumer.flush();
            pump(&mut consumer, &mut agent);
            assert_same(&mut consumer, &mut agent, &format!("{name} step {step}"));
        }
        assert_eq!(
            consumer.acked(),
            consumer.seq(),
            "{name}: every patch acknowledged"
        );
        assert_eq!(agent.to_html(), to_html(consumer.dom()), "{name}");
    }
}

#[test]
fn recorded_states_replay_through_diff() {
    for (name, states) in common::state_dirs() {
        let mut first = parse_html(&states[0], Limits::DEFAULT);
        first.root_hash();
        let mut consumer = Consumer::new(first, "https://example.test/", Limits::DEFAULT);
        let mut agent = Agent::new(Limits::DEFAULT);
        pump(&mut consumer, &mut agent);
        for (k, html) in states.iter().enumerate().skip(1) {
            let mut target: Dom = parse_html(html, Limits::DEFAULT);
            consumer.update_to(&mut target).expect("diff applies");
            assert_eq!(
                consumer.tree_hash(),
                target.root_hash(),
                "{name} state {k}: consumer reached the state"
            );
            consumer.flush();
            pump(&mut consumer, &mut agent);
            assert_same(&mut consumer, &mut agent, &format!("{name} state {k}"));
        }
    }
}

#[test]
fn morph_pairs_diff_to_target() {
    for (name, from, to) in common::morph_pairs() {
        let mut consumer = Consumer::new(parse_html(&from, Limits::DEFAULT), "u", Limits::DEFAULT);
        let mut agent = Agent::new(Limits::DEFAULT);
        pump(&mut consumer, &mut agent);
        let mut target = parse_html(&to, Limits::DEFAULT);
        consumer.update_to(&mut target).expect("diff applies");
        assert_eq!(consumer.tree_hash(), target.root_hash(), "{name}");
        consumer.flush();
        pump(&mut consumer, &mut agent);
        assert_same(&mut consumer, &mut agent, &name);
    }
}

#[test]
fn divergence_is_detected_and_repaired() {
    let (_, html) = common::pages().swap_remove(0);
    let mut consumer = Consumer::new(parse_html(&html, Limits::DEFAULT), "u", Limits::DEFAULT);
    let mut agent = Agent::new(Limits::DEFAULT);
    pump(&mut consumer, &mut agent);
    LivePage::new(1).step(&mut consumer, 5).unwrap();
    consumer.flush();
    let Some(Message::Patch(mut p)) = consumer.poll_message() else {
        panic!("a patch")
    };
    p.hash[0] ^= 1;
    let err = agent.handle_message(Message::Patch(p)).unwrap_err();
    assert!(
        matches!(err, tandem_engine::EngineError::HashMismatch { .. }),
        "{err}"
    );
    assert!(
        agent
            .poll_event()
            .is_some_and(|e| matches!(e, AgentEvent::Rendered { .. }))
    );
    assert!(matches!(
        agent.poll_event(),
        Some(AgentEvent::Diverged { .. })
    ));
    let resync = agent
        .poll_message()
        .into_iter()
        .find(|m| matches!(m, Message::Resync(_)))
        .expect("RESYNC queued");
    consumer.handle_message(&resync).unwrap();
    pump(&mut consumer, &mut agent);
    assert_same(&mut consumer, &mut agent, "after resync");
    assert_eq!(consumer.epoch(), 1);
}

#[test]
fn deep_pages_are_flattened_within_the_depth_limit() {
    let html = "<div>".repeat(5000) + "deep" + &"</div>".repeat(5000);
    let limits = Limits::DEFAULT;
    let dom = parse_html(&html, limits);
    let max = dom.preorder(0).map(|id| dom.depth(id)).max().unwrap();
    assert!(max <= limits.max_depth, "depth {max}");
    assert!(
        dom.preorder(0).any(|id| dom.text(id) == Some("deep")),
        "content kept"
    );
    let mut consumer = Consumer::new(dom, "u", limits);
    let mut agent = Agent::new(limits);
    pump(&mut consumer, &mut agent);
    assert_same(&mut consumer, &mut agent, "deep page");
}

/// An agent fed SNAPSHOT bodies read in place (`SnapshotView`) builds the same tree, with the
/// same events and replies, as one fed the decoded messages — and fails the same way on
/// snapshots it cannot apply.
#[test]
fn snapshot_views_build_what_messages_build() {
    use tandem_protocol::message::Snapshot;
    use tandem_protocol::{NodeRecord, SnapshotView, Sym};
    let limits = Limits::DEFAULT;
    let feed = |parts: &[Snapshot]| {
        let mut owned = Agent::new(limits);
        let mut viewed = Agent::new(limits);
        let (mut r1, mut r2) = (Vec::new(), Vec::new());
        for part in parts {
            let msg = Message::Snapshot(part.clone());
            let mut body = Vec::new();
            msg.encode_body(&mut body).expect("encode");
            r1.push(owned.handle_message(msg));
            let view = SnapshotView::parse(&body, &limits).expect("parse");
            r2.push(viewed.handle_snapshot(view));
        }
        assert_eq!(r1, r2, "results");
        let events = |a: &mut Agent| std::iter::from_fn(|| a.poll_event()).collect::<Vec<_>>();
        let replies = |a: &mut Agent| std::iter::from_fn(|| a.poll_message()).collect::<Vec<_>>();
        assert_eq!(events(&mut owned), events(&mut viewed), "events");
        assert_eq!(replies(&mut owned), replies(&mut viewed), "replies");
        assert_eq!(owned.tree_hash(), viewed.tree_hash());
        assert_eq!(to_html(owned.dom()), to_html(viewed.dom()));
        assert_static_names_borrowed(owned.dom(), "messages");
        assert_static_names_borrowed(viewed.dom(), "views");
        r1.iter().all(Result::is_ok)
    };
    for (name, html) in common::pages() {
        let mut dom = parse_html(&html, limits);
        let mut enc = tandem_protocol::SymEncoder::new(limits);
        let parts = snapshot::encode(&mut dom, 3, "u", &mut enc, 4096).expect("encodes");
        assert!(feed(&parts), "{name}");
        // Broken copies: a wrong hash, a string reference past the table, a missing child.
        let mut bad = parts.clone();
        if let Some(h) = bad.last_mut().and_then(|p| p.hash.as_mut()) {
            h[0] ^= 1;
        }
        assert!(!feed(&bad), "{name}");
        let mut bad = parts.clone();
        bad[0].nodes.push(NodeRecord::Text {
            text: Sym::Ref(1 << 29),
        });
        assert!(!feed(&bad), "{name}");
        let mut bad = parts.clone();
        bad.last_mut().unwrap().nodes.pop();
        assert!(!feed(&bad), "{name}");
    }
}
