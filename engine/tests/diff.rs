//! Issue 3 item 1(b): `diff(from, to)` between two trees that share no identity. Every check
//! goes through `tandem_engine::diff::fuzzing::check_pair`, the oracle of the `diff_apply` fuzz
//! target: the consumer reaches the target's hash without the diff's fallback, and an agent fed
//! the consumer's snapshot and then the patch (as frames) reaches it too and exports the same
//! HTML.

mod common;

use proptest::collection::vec;
use proptest::prelude::*;
use tandem_engine::diff::fuzzing::{self, Operation, Reader, check_pair, check_pair_with};
use tandem_engine::diff::{MYERS_MAX_WORK, update_counting};
use tandem_engine::live::Rng;
use tandem_engine::{Agent, Consumer, Dom, Element, NodeKind, parse_html, to_html};
use tandem_protocol::compress::DomCompressor;
use tandem_protocol::{DOCUMENT_ID, Limits, Message, NodeId, Ns, PatchOp, frame};

const LIMITS: Limits = Limits::DEFAULT;

// ---------------------------------------------------------------------------------------------
// Random trees (proptest).

/// A tree as proptest builds it, before it becomes a `Dom`.
#[derive(Debug, Clone)]
enum T {
    El(&'static str, Vec<(&'static str, &'static str)>, Vec<T>),
    Text(&'static str),
}

fn attrs() -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
    vec(
        (
            prop::sample::select(vec!["id", "class", "href", "title"]),
            prop::sample::select(vec!["a", "b", "c", "d", "", "x y"]),
        ),
        0..3,
    )
    .prop_map(|mut v| {
        // Attribute names are unique on an element, as a parser makes them.
        let mut seen = Vec::new();
        v.retain(|(n, _)| {
            let fresh = !seen.contains(n);
            seen.push(*n);
            fresh
        });
        v
    })
}

fn tree() -> impl Strategy<Value = T> {
    let leaf = prop_oneof![
        prop::sample::select(vec!["hello", "world", " ", "\n  ", "a", "b"]).prop_map(T::Text),
        (prop::sample::select(vec!["br", "img", "span"]), attrs()).prop_map(|(t, a)| T::El(
            t,
            a,
            Vec::new()
        )),
    ];
    leaf.prop_recursive(5, 80, 6, |inner| {
        (
            prop::sample::select(vec!["div", "p", "ul", "li", "span", "section", "a"]),
            attrs(),
            vec(inner, 0..6),
        )
            .prop_map(|(t, a, k)| T::El(t, a, k))
    })
}

fn to_dom(body: &[T]) -> Dom {
    let mut dom = Dom::new(LIMITS);
    let html = add(&mut dom, DOCUMENT_ID, &T::El("html", vec![], vec![]));
    let b = add(&mut dom, html, &T::El("body", vec![], vec![]));
    for t in body {
        let mut stack = vec![(b, t)];
        while let Some((parent, t)) = stack.pop() {
            let id = add(&mut dom, parent, t);
            if let T::El(_, _, kids) = t {
                for k in kids.iter().rev() {
                    stack.push((id, k));
                }
            }
        }
    }
    dom
}

/// Appends the node `t` (without its children) under `parent`.
fn add(dom: &mut Dom, parent: NodeId, t: &T) -> NodeId {
    let kind = match t {
        T::Text(s) => NodeKind::Text((*s).into()),
        T::El(name, attrs, _) => NodeKind::Element(Element {
            ns: Ns::Html,
            name: (*name).into(),
            attrs: attrs
                .iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect(),
        }),
    };
    let id = dom.create(kind).expect("create");
    // Children are pushed in reverse and popped in order, so appending keeps the order.
    dom.append(parent, id).expect("append");
    id
}

fn operation() -> impl Strategy<Value = Operation> {
    (any::<u8>(), any::<u16>(), any::<u16>(), any::<u16>()).prop_map(|(k, a, b, c)| {
        let bytes = [
            k,
            a as u8,
            (a >> 8) as u8,
            b as u8,
            (b >> 8) as u8,
            c as u8,
            (c >> 8) as u8,
        ];
        Operation::read(&mut Reader::new(&bytes))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Two unrelated random trees (half of the time with a Myers threshold so low that
    /// sibling lists go through the keyed pairing).
    #[test]
    fn random_pairs_converge(a in vec(tree(), 0..5), b in vec(tree(), 0..5), keyed: bool) {
        let from = to_dom(&a);
        let mut to = to_dom(&b);
        check_pair_with(&from, &mut to, if keyed { 4 } else { MYERS_MAX_WORK });
    }

    /// A random tree and a copy changed by random inserts, removals, moves, copies, wraps,
    /// renames, attribute and text edits (Myers or keyed pairing, as above).
    #[test]
    fn mutated_pairs_converge(
        a in vec(tree(), 1..5),
        ops in vec(operation(), 0..24),
        keyed: bool,
    ) {
        let from = to_dom(&a);
        let mut to = from.clone();
        for op in ops {
            op.apply(&mut to);
        }
        check_pair_with(&from, &mut to, if keyed { 4 } else { MYERS_MAX_WORK });
    }

    /// The fuzz target's own input format, from random bytes.
    #[test]
    fn fuzz_oracle_on_random_bytes(data in vec(any::<u8>(), 0..600)) {
        fuzzing::diff_apply(&data);
    }
}

// ---------------------------------------------------------------------------------------------
// The corpus.

#[test]
fn every_morph_pair_converges() {
    for (name, from, to) in common::morph_pairs() {
        let from = parse_html(&from, LIMITS);
        let mut to = parse_html(&to, LIMITS);
        let (stats, _) = check_pair(&from, &mut to);
        eprintln!("{name}: {stats:?}");
    }
}

/// Recorded page states: each diffed against the previous on one long-lived consumer, checked
/// on the agent after every patch.
#[test]
fn recorded_states_converge() {
    for (name, states) in common::state_dirs() {
        let mut consumer = Consumer::new(parse_html(&states[0], LIMITS), "u", LIMITS);
        let mut agent = Agent::new(LIMITS);
        fuzzing::pump(&mut consumer, &mut agent);
        for (k, html) in states.iter().enumerate().skip(1) {
            let mut target = parse_html(html, LIMITS);
            let stats = update_counting(&mut consumer, &mut target).expect("diff applies");
            assert!(!stats.fallback, "{name} state {k}");
            consumer.flush();
            fuzzing::pump(&mut consumer, &mut agent);
            assert_eq!(
                agent.tree_hash(),
                Some(target.root_hash()),
                "{name} state {k}"
            );
        }
    }
}

/// Every page: a seeded sequence of random changes made on a copy of the page reaches the
/// agent through the diff, checked by hash after every patch, both straight from the changed
/// tree and through an HTML export and a new parse of it (the two-tree path).
#[test]
fn seeded_changes_on_every_page_converge() {
    for (name, html) in common::pages() {
        let dom = parse_html(&html, LIMITS);
        for reparse in [false, true] {
            let mut page = dom.clone();
            let mut consumer = Consumer::new(dom.clone(), "u", LIMITS);
            let mut agent = Agent::new(LIMITS);
            fuzzing::pump(&mut consumer, &mut agent);
            let mut rng = Rng::new(name.len() as u64 * 7 + u64::from(reparse));
            for step in 0..6 {
                let mut applied = 0;
                while applied < 8 {
                    let mut bytes = [0u8; 7];
                    for b in &mut bytes {
                        *b = rng.next_u64() as u8;
                    }
                    let op = Operation::read(&mut Reader::new(&bytes));
                    if matches!(op, Operation::Remove { .. }) && page.len() < dom.len() / 2 {
                        continue;
                    }
                    applied += usize::from(op.apply(&mut page));
                }
                let mut target = if reparse {
                    parse_html(&to_html(&page), LIMITS)
                } else {
                    page.clone()
                };
                let stats = update_counting(&mut consumer, &mut target).expect("diff applies");
                assert!(!stats.fallback, "{name} step {step}: {stats:?}");
                consumer.flush();
                fuzzing::pump(&mut consumer, &mut agent);
                assert_eq!(
                    agent.tree_hash(),
                    Some(target.root_hash()),
                    "{name} step {step} reparse {reparse}"
                );
            }
            assert_eq!(consumer.fallbacks(), 0, "{name}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Moves.

/// The operations of the patch that takes `from` to `to`.
fn patch_ops(from: &str, to: &str) -> Vec<PatchOp> {
    let mut consumer = Consumer::new(parse_html(from, LIMITS), "u", LIMITS);
    let mut agent = Agent::new(LIMITS);
    fuzzing::pump(&mut consumer, &mut agent);
    let mut target = parse_html(to, LIMITS);
    consumer.update_to(&mut target).expect("diff applies");
    assert_eq!(consumer.tree_hash(), target.root_hash());
    consumer.flush();
    let mut ops = Vec::new();
    while let Some(msg) = consumer.poll_message() {
        if let Message::Patch(p) = &msg {
            ops.extend(p.ops.iter().cloned());
        }
        agent.handle_message(msg).expect("agent applies");
    }
    assert_eq!(agent.tree_hash(), Some(target.root_hash()));
    ops
}

const ITEMS: &str = "<li class=a>Alpha <b>one</b></li><li class=b>Beta <i>two</i></li>\
                     <li class=c>Gamma <u>three</u></li><li class=d>Delta</li>";

#[test]
fn a_subtree_moved_among_its_siblings_is_moved() {
    let from = format!("<ul>{ITEMS}</ul>");
    let to = "<ul><li class=c>Gamma <u>three</u></li><li class=a>Alpha <b>one</b></li>\
              <li class=b>Beta <i>two</i></li><li class=d>Delta</li></ul>";
    let ops = patch_ops(&from, to);
    assert!(
        ops.iter().any(|op| matches!(op, PatchOp::Move { .. })),
        "{ops:?}"
    );
    assert!(
        !ops.iter().any(|op| matches!(op, PatchOp::Insert { .. })),
        "{ops:?}"
    );
    assert_eq!(ops.len(), 1, "one move is enough: {ops:?}");
}

#[test]
fn a_subtree_moved_to_another_parent_is_moved() {
    let from = format!("<div id=x><ul>{ITEMS}</ul></div><div id=y><p>Other</p></div>");
    let to = "<div id=x><ul><li class=a>Alpha <b>one</b></li><li class=c>Gamma <u>three</u></li>\
              <li class=d>Delta</li></ul></div>\
              <div id=y><p>Other</p><li class=b>Beta <i>two</i></li></div>";
    let ops = patch_ops(&from, to);
    assert!(
        ops.iter().any(|op| matches!(op, PatchOp::Move { .. })),
        "{ops:?}"
    );
    assert!(
        !ops.iter().any(|op| matches!(op, PatchOp::Insert { .. })),
        "{ops:?}"
    );
}

#[test]
fn a_moved_subtree_that_also_changed_is_moved_and_updated() {
    let from = "<section><article class=x><h2>Title</h2><p>First paragraph</p>\
                <p>Second paragraph</p><p>Third paragraph</p></article></section><aside></aside>";
    let to = "<section></section><aside><article class=y><h2>Title</h2><p>First paragraph</p>\
              <p>Second paragraph, edited</p><p>Third paragraph</p></article></aside>";
    let ops = patch_ops(from, to);
    let moves = ops
        .iter()
        .filter(|op| matches!(op, PatchOp::Move { .. }))
        .count();
    assert_eq!(moves, 1, "the article moves as a whole: {ops:?}");
    assert!(
        !ops.iter().any(|op| matches!(op, PatchOp::Insert { .. })),
        "{ops:?}"
    );
}

#[test]
fn elements_are_matched_by_id_across_the_tree() {
    let from = "<div><p id=keep class=a>text one</p></div><div><span>x</span></div>";
    let to = "<div></div><div><span>x</span><p id=keep class=b>text two</p></div>";
    let ops = patch_ops(from, to);
    assert!(
        ops.iter().any(|op| matches!(op, PatchOp::Move { .. })),
        "{ops:?}"
    );
    assert!(
        !ops.iter().any(|op| matches!(op, PatchOp::Insert { .. })),
        "{ops:?}"
    );
}

#[test]
fn a_node_can_move_into_a_former_descendant() {
    // The outer and inner elements swap nesting: no node may ever be moved into itself.
    let from = "<div id=outer class=o><div id=inner class=i><p>content</p></div></div>";
    let to = "<div id=inner class=i><div id=outer class=o><p>content</p></div></div>";
    let ops = patch_ops(from, to);
    assert!(
        !ops.iter().any(|op| matches!(op, PatchOp::Insert { .. })),
        "{ops:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Scale.

/// Thousands of siblings, reversed and changed: the alignment falls back to keyed pairing
/// and the diff stays fast and correct (also in a debug build).
#[test]
fn thousands_of_changed_siblings() {
    let n = 4000;
    let from: String = (0..n)
        .map(|i| format!("<li class=k{}>item {i}</li>", i % 7))
        .collect();
    let to: String = (0..n)
        .rev()
        .map(|i| {
            if i % 3 == 0 {
                format!("<li class=k{}>changed {i}</li>", i % 5)
            } else {
                format!("<li class=k{}>item {i}</li>", i % 7)
            }
        })
        .collect();
    let from = parse_html(&format!("<ul>{from}</ul>"), LIMITS);
    let mut to = parse_html(&format!("<ul>{to}</ul>"), LIMITS);
    let started = std::time::Instant::now();
    let (stats, bytes) = check_pair(&from, &mut to);
    eprintln!(
        "{n} siblings: {stats:?}, {bytes} patch bytes, {:?}",
        started.elapsed()
    );
    assert!(stats.inserted_nodes < n, "{stats:?}");
}

/// A 500-deep chain changed at the bottom and moved, and an element whose thousand attributes
/// come back in reverse order: both converge without a quadratic blowup.
#[test]
fn deep_chains_and_long_attribute_lists() {
    let deep = |leaf: &str| "<div>".repeat(500) + leaf + &"</div>".repeat(500);
    let from = parse_html(
        &format!("<section>{}</section><aside></aside>", deep("old")),
        LIMITS,
    );
    let mut to = parse_html(
        &format!("<section></section><aside>{}</aside>", deep("new")),
        LIMITS,
    );
    check_pair(&from, &mut to);

    let attrs = |order: &mut dyn Iterator<Item = usize>| -> String {
        order.map(|k| format!(" a{k}=v{k}")).collect()
    };
    let from = parse_html(&format!("<p{}>x</p>", attrs(&mut (0..1000))), LIMITS);
    let mut to = parse_html(&format!("<p{}>x</p>", attrs(&mut (0..1000).rev())), LIMITS);
    check_pair(&from, &mut to);
}

// ---------------------------------------------------------------------------------------------
// Fuzz regressions (STYLE.md 10).

#[test]
fn diff_apply_regressions() {
    for path in common::regression_inputs("diff_apply") {
        eprintln!("replaying {}", path.display());
        fuzzing::diff_apply(&std::fs::read(&path).expect("read crasher"));
    }
}

// ---------------------------------------------------------------------------------------------
// Patch size.

fn body(dom: &Dom) -> Option<NodeId> {
    dom.preorder(DOCUMENT_ID).find(|&id| {
        dom.node(id)
            .and_then(|n| n.element())
            .is_some_and(|e| e.name == "body")
    })
}

/// The trivial baseline: remove the old body, insert the new one.
fn replace_body(c: &mut Consumer, target: &Dom) {
    let (Some(old), Some(new)) = (body(c.dom()), body(target)) else {
        panic!("pages have a body");
    };
    let parent = c.dom().parent(old).expect("body has a parent");
    let kids = c.dom().children(parent).to_vec();
    let prev = match kids.iter().position(|&k| k == old) {
        Some(0) | None => 0,
        Some(i) => kids[i - 1],
    };
    c.remove(old).expect("remove body");
    c.insert_copy(parent, prev, target, new)
        .expect("insert body");
}

/// Sends what the consumer queued to the agent as frames, also through the DOM stream's
/// compressor; returns the raw and compressed bytes of the `PATCH` frames.
fn stream(consumer: &mut Consumer, agent: &mut Agent, zstd: &mut DomCompressor) -> [usize; 2] {
    let mut sizes = [0; 2];
    while let Some(msg) = consumer.poll_message() {
        let wire = frame::to_frame(&msg, &LIMITS).expect("frame encodes");
        let mut out = Vec::new();
        let packed = zstd.compress(&wire, &mut out).expect("compresses");
        if matches!(msg, Message::Patch(_)) {
            sizes[0] += wire.len();
            sizes[1] += packed;
        }
        agent.handle_message(msg).expect("agent applies");
    }
    while let Some(reply) = agent.poll_message() {
        consumer
            .handle_message(&reply)
            .expect("consumer takes the reply");
    }
    sizes
}

/// `PATCH` bytes of the diff against replacing the body, raw and through the DOM stream's
/// compressor, over the morph pairs and the recorded states
/// (`cargo test --release --test diff patch_sizes -- --nocapture` prints them).
#[test]
fn patch_sizes() {
    // [morph, states][diff, replace-body][raw, compressed]
    let mut totals = [[[0usize; 2]; 2]; 2];
    for (name, from, to) in common::morph_pairs() {
        let mut sizes = [[0usize; 2]; 2];
        for (k, size) in sizes.iter_mut().enumerate() {
            let mut consumer = Consumer::new(parse_html(&from, LIMITS), "u", LIMITS);
            let mut agent = Agent::new(LIMITS);
            let mut zstd = DomCompressor::new().expect("compressor");
            stream(&mut consumer, &mut agent, &mut zstd);
            let mut target = parse_html(&to, LIMITS);
            if k == 0 {
                consumer.update_to(&mut target).expect("diff");
            } else {
                replace_body(&mut consumer, &target);
            }
            consumer.flush();
            *size = stream(&mut consumer, &mut agent, &mut zstd);
            assert_eq!(agent.tree_hash(), Some(target.root_hash()), "{name}");
        }
        eprintln!(
            "morph {name:26} diff {:5} ({:4} zstd)  replace-body {:5} ({:4} zstd)",
            sizes[0][0], sizes[0][1], sizes[1][0], sizes[1][1]
        );
        for k in 0..2 {
            for z in 0..2 {
                totals[0][k][z] += sizes[k][z];
            }
        }
    }
    for (name, states) in common::state_dirs() {
        let mut sizes = [[0usize; 2]; 2];
        for (k, size) in sizes.iter_mut().enumerate() {
            let mut consumer = Consumer::new(parse_html(&states[0], LIMITS), "u", LIMITS);
            let mut agent = Agent::new(LIMITS);
            let mut zstd = DomCompressor::new().expect("compressor");
            stream(&mut consumer, &mut agent, &mut zstd);
            for html in &states[1..] {
                let mut target = parse_html(html, LIMITS);
                if k == 0 {
                    consumer.update_to(&mut target).expect("diff");
                } else {
                    replace_body(&mut consumer, &target);
                }
                consumer.flush();
                let step = stream(&mut consumer, &mut agent, &mut zstd);
                size[0] += step[0];
                size[1] += step[1];
            }
        }
        eprintln!(
            "states {name:10} diff {:6} ({:5} zstd)  replace-body {:7} ({:6} zstd)",
            sizes[0][0], sizes[0][1], sizes[1][0], sizes[1][1]
        );
        for k in 0..2 {
            for z in 0..2 {
                totals[1][k][z] += sizes[k][z];
            }
        }
    }
    for (what, t) in ["morph pairs", "states"].iter().zip(totals) {
        eprintln!(
            "{what} total: diff {} ({} zstd), replace-body {} ({} zstd)",
            t[0][0], t[0][1], t[1][0], t[1][1]
        );
        assert!(t[0][0] * 2 < t[1][0], "{what}: diff {:?}", t);
    }
}

#[test]
fn content_moved_to_another_parent_takes_its_blank_texts_along() {
    // Paragraphs separated by formatting texts move from one section into another whose own
    // content was removed: the moved run keeps its own blank texts (one `MoveRun` of
    // consecutive nodes) rather than taking the removed content's.
    let from = "<div id=a>\n  <p>one</p>\n  <p>two</p>\n  <p>three</p>\n</div>\
                <div id=b>\n  <h2>Title</h2>\n  <span>x</span>\n  <span>y</span>\n</div>";
    let to = "<div id=a>\n</div><div id=b>\n  <h2>Title</h2>\n  <p>one</p>\n  \
              <p>two</p>\n  <p>three</p>\n</div>";
    let ops = patch_ops(from, to);
    let moves: Vec<&PatchOp> = ops
        .iter()
        .filter(|op| matches!(op, PatchOp::Move { .. } | PatchOp::MoveRun { .. }))
        .collect();
    assert_eq!(moves.len(), 1, "{ops:?}");
    let PatchOp::MoveRun { nodes, .. } = moves[0] else {
        panic!("one run expected: {ops:?}");
    };
    // Each node of the run is the one after the one before it in the old tree too: paragraph,
    // its text, blank text, paragraph, … (ids are preorder).
    assert!(
        nodes
            .0
            .windows(2)
            .all(|w| w[1] == w[0] + 1 || w[1] == w[0] + 2),
        "{ops:?}"
    );
}
