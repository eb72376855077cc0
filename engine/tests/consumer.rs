//! The consumer's patches: change records, coalescing between sends, moves, text edits, and
//! convergence under random change sequences, checked on the agent by hash.

mod common;

use tandem_engine::consumer::{Added, ChangeRecord};
use tandem_engine::{Agent, Consumer, Dom, Element, LivePage, NodeKind, parse_html};
use tandem_protocol::{Limits, Message, NodeRun, Ns, PatchOp, Place};

const PAGE: &str = "<!DOCTYPE html><html><head><title>t</title></head><body>\
    <ul id=list><li id=a>alpha</li><li id=b>beta</li><li id=c>gamma</li></ul>\
    <div id=box><p id=p>The quick brown fox jumps over the lazy dog, twice a day.</p></div>\
    </body></html>";

fn setup() -> (Consumer, Agent) {
    let mut consumer = Consumer::new(parse_html(PAGE, Limits::DEFAULT), "u", Limits::DEFAULT);
    let mut agent = Agent::new(Limits::DEFAULT);
    while let Some(m) = consumer.poll_message() {
        agent.handle_message(m).unwrap();
    }
    (consumer, agent)
}

fn by_id(c: &Consumer, id: &str) -> u64 {
    common::by_id(c.dom(), id)
}

/// Flushes, delivers the patch to the agent, checks both hashes, returns the patch's ops.
fn send(c: &mut Consumer, agent: &mut Agent) -> Vec<PatchOp> {
    let queued = c.flush();
    let mut ops = Vec::new();
    while let Some(m) = c.poll_message() {
        if let Message::Patch(p) = &m {
            ops.extend(p.ops.clone());
        }
        agent.handle_message(m).expect("agent applies");
    }
    while let Some(r) = agent.poll_message() {
        c.handle_message(&r).unwrap();
    }
    assert_eq!(c.fallbacks(), 0);
    assert_eq!(agent.tree_hash(), Some(c.tree_hash()));
    assert_eq!(queued, !ops.is_empty() || c.epoch() > 0);
    ops
}

fn li(text: &str) -> Vec<(NodeKind, u32)> {
    let el = NodeKind::Element(Element {
        ns: Ns::Html,
        name: "li".into(),
        attrs: vec![],
    });
    vec![(el, 1), (NodeKind::Text(text.into()), 0)]
}

#[test]
fn insert_then_remove_cancels() {
    let (mut c, mut agent) = setup();
    let list = by_id(&c, "list");
    let id = c.insert(list, 0, li("temp")).unwrap();
    c.remove(id).unwrap();
    assert!(send(&mut c, &mut agent).is_empty(), "nothing to send");
}

#[test]
fn repeated_attribute_sets_keep_the_last() {
    let (mut c, mut agent) = setup();
    let b = by_id(&c, "b");
    for i in 0..5 {
        c.set_attr(b, "class", &format!("v{i}")).unwrap();
    }
    let ops = send(&mut c, &mut agent);
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert!(matches!(&ops[0], PatchOp::SetAttr { node, .. } if *node == b));
}

#[test]
fn text_edits_merge_and_travel_as_edits() {
    let (mut c, mut agent) = setup();
    let p = by_id(&c, "p");
    let text = c.dom().children(p)[0];
    c.set_text(
        text,
        "The quick red fox jumps over the lazy dog, twice a day.",
    )
    .unwrap();
    c.set_text(
        text,
        "The quick red fox leaps over the lazy dog, twice a day.",
    )
    .unwrap();
    let ops = send(&mut c, &mut agent);
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert!(
        matches!(&ops[0], PatchOp::EditText { edits, .. } if edits.len() == 1),
        "{ops:?}"
    );
}

#[test]
fn changes_under_a_removed_ancestor_vanish() {
    let (mut c, mut agent) = setup();
    let (bx, p) = (by_id(&c, "box"), by_id(&c, "p"));
    c.set_attr(p, "class", "x").unwrap();
    c.insert(p, 0, li("inner")).unwrap();
    c.remove(bx).unwrap();
    let ops = send(&mut c, &mut agent);
    assert_eq!(ops, vec![PatchOp::Remove { node: bx }]);
}

#[test]
fn moves_travel_as_moves() {
    let (mut c, mut agent) = setup();
    let (list, a, c_, bx) = (
        by_id(&c, "list"),
        by_id(&c, "a"),
        by_id(&c, "c"),
        by_id(&c, "box"),
    );
    c.move_node(c_, list, 0).unwrap();
    let ops = send(&mut c, &mut agent);
    assert_eq!(
        ops,
        vec![PatchOp::Move {
            node: c_,
            at: Place::First(list),
        }]
    );
    c.move_node(a, bx, 0).unwrap();
    let ops = send(&mut c, &mut agent);
    assert_eq!(
        ops,
        vec![PatchOp::Move {
            node: a,
            at: Place::First(bx),
        }]
    );
}

/// An `ACK` whose hash is not the consumer's tree at that sequence starts a new epoch (spec
/// §7.16); the right hash, also for a sequence acknowledged again, changes nothing.
#[test]
fn an_ack_with_another_tree_starts_a_new_epoch() {
    let (mut c, mut agent) = setup();
    // The snapshot's ACK carries the right hash.
    while let Some(r) = agent.poll_message() {
        c.handle_message(&r).unwrap();
    }
    let (a, list) = (by_id(&c, "a"), by_id(&c, "list"));
    c.set_attr(a, "class", "done").unwrap();
    c.flush();
    let patch = c.poll_message().expect("a patch");
    agent.handle_message(patch).unwrap();
    let Some(Message::Ack(ack)) = agent.poll_message() else {
        panic!("the agent acknowledges the patch");
    };
    assert_eq!(ack.seq, 1);
    // Acknowledged twice with the right hash (as after a resumption): nothing to do.
    c.handle_message(&Message::Ack(ack)).unwrap();
    c.handle_message(&Message::Ack(ack)).unwrap();
    assert!(c.poll_message().is_none());
    assert_eq!((c.epoch(), c.ack_mismatches()), (0, 0));

    c.remove(list).unwrap();
    c.flush();
    let patch = c.poll_message().expect("a second patch");
    agent.handle_message(patch).unwrap();
    let mut wrong = ack;
    wrong.seq = 2;
    c.handle_message(&Message::Ack(wrong)).unwrap();
    assert_eq!((c.epoch(), c.ack_mismatches()), (1, 1));
    assert!(matches!(c.poll_message(), Some(Message::Snapshot(s)) if s.epoch == 1));
}

#[test]
fn siblings_that_move_together_travel_as_one_run() {
    let (mut c, mut agent) = setup();
    let (a, b, c_, bx, p) = (
        by_id(&c, "a"),
        by_id(&c, "b"),
        by_id(&c, "c"),
        by_id(&c, "box"),
        by_id(&c, "p"),
    );
    // The three items go into the box after the paragraph, reversed.
    c.move_node(c_, bx, p).unwrap();
    c.move_node(b, bx, c_).unwrap();
    c.move_node(a, bx, b).unwrap();
    let ops = send(&mut c, &mut agent);
    assert_eq!(
        ops,
        vec![PatchOp::MoveRun {
            at: Place::After(p),
            nodes: NodeRun(vec![c_, b, a]),
        }]
    );
    // One node on its own stays a Move.
    c.move_node(b, bx, 0).unwrap();
    let ops = send(&mut c, &mut agent);
    assert_eq!(
        ops,
        vec![PatchOp::Move {
            node: b,
            at: Place::First(bx),
        }]
    );
}

#[test]
fn records_remove_and_add_is_a_move() {
    let (mut c, mut agent) = setup();
    let (list, a, b, bx) = (
        by_id(&c, "list"),
        by_id(&c, "a"),
        by_id(&c, "b"),
        by_id(&c, "box"),
    );
    let new = c
        .apply_records([
            ChangeRecord::ChildList {
                target: list,
                removed: vec![a],
                added: vec![],
                previous_sibling: 0,
            },
            ChangeRecord::ChildList {
                target: bx,
                removed: vec![],
                added: vec![Added::Existing(a), Added::New(li("delta"))],
                previous_sibling: 0,
            },
            ChangeRecord::Attributes {
                target: b,
                name: "hidden".into(),
                value: Some("".into()),
            },
            ChangeRecord::Attributes {
                target: b,
                name: "hidden".into(),
                value: None,
            },
        ])
        .unwrap();
    assert_eq!(new.len(), 1);
    let ops = send(&mut c, &mut agent);
    assert!(
        ops.iter()
            .any(|o| matches!(o, PatchOp::Move { node, .. } if *node == a)),
        "{ops:?}"
    );
    assert!(
        ops.iter().all(|o| !matches!(o, PatchOp::Remove { .. })),
        "{ops:?}"
    );
    assert!(
        ops.iter()
            .all(|o| !matches!(o, PatchOp::SetAttr { .. } | PatchOp::RemoveAttr { .. })),
        "{ops:?}"
    );
}

#[test]
fn nested_inserts_at_different_times_keep_their_ids() {
    let (mut c, mut agent) = setup();
    let (list, bx) = (by_id(&c, "list"), by_id(&c, "box"));
    let x = c.insert(list, 0, li("x")).unwrap();
    let _other = c.insert(bx, 0, li("elsewhere")).unwrap();
    // A child inserted into the new node later takes a non-consecutive id.
    let y = c.insert(x, 0, li("y")).unwrap();
    let x_text = c.dom().children(x)[1];
    c.set_text(x_text, "x changed").unwrap();
    let ops = send(&mut c, &mut agent);
    assert!(
        ops.iter()
            .any(|o| matches!(o, PatchOp::Insert { first, .. } if *first == y)),
        "{ops:?}"
    );
    // The agent uses the consumer's ids: a later change to y applies.
    c.set_attr(y, "class", "later").unwrap();
    send(&mut c, &mut agent);
}

#[test]
fn random_batches_converge_with_several_changes_between_sends() {
    let seeds: u64 = std::env::var("TANDEM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    for seed in 0..seeds {
        let (mut c, mut agent) = setup();
        let mut live = LivePage::new(seed);
        for _ in 0..25 {
            live.step(&mut c, 1 + (seed as usize % 7)).unwrap();
            send(&mut c, &mut agent);
        }
    }
}

#[test]
fn one_attribute_change_on_a_large_tree_is_one_op() {
    let mut html = String::from("<!DOCTYPE html><body>");
    for s in 0..1000 {
        html.push_str(&format!("<section id=s{s}><h2>Section {s}</h2><ul>"));
        for i in 0..24 {
            html.push_str(&format!("<li class=item>Item {i}</li>"));
        }
        html.push_str("</ul></section>");
    }
    let dom: Dom = parse_html(&html, Limits::DEFAULT);
    assert!(dom.len() > 50_000, "{}", dom.len());
    let mut c = Consumer::new(dom, "u", Limits::DEFAULT);
    let mut agent = Agent::new(Limits::DEFAULT);
    while let Some(m) = c.poll_message() {
        agent.handle_message(m).unwrap();
    }
    let target = by_id(&c, "s500");
    c.set_attr(target, "class", "open").unwrap();
    let ops = send(&mut c, &mut agent);
    assert_eq!(ops.len(), 1);
}

/// Random MutationObserver-style batches: removals, re-additions elsewhere (moves), new
/// subtrees, attribute and text records; the agent converges after every batch.
#[test]
fn random_record_batches_converge() {
    use tandem_engine::live::Rng;
    let seeds: u64 = std::env::var("TANDEM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    for seed in 0..seeds {
        let (mut c, mut agent) = setup();
        let mut rng = Rng::new(seed);
        for _ in 0..20 {
            let mut records = Vec::new();
            for _ in 0..1 + rng.below(6) {
                let dom = c.dom();
                let elements: Vec<u64> = dom
                    .preorder(0)
                    .filter(|&n| {
                        dom.node(n)
                            .and_then(|x| x.element())
                            .is_some_and(|e| !matches!(&*e.name, "html" | "head" | "title"))
                    })
                    .collect();
                let body = elements[0];
                let pick = |rng: &mut Rng| elements[rng.below(elements.len())];
                match rng.below(4) {
                    0 => {
                        // Move: remove from its parent, add under another element.
                        let n = pick(&mut rng);
                        let target = pick(&mut rng);
                        if n == body || dom.is_ancestor_or_self(n, target) {
                            continue;
                        }
                        let parent = dom.parent(n).unwrap();
                        records.push(ChangeRecord::ChildList {
                            target: parent,
                            removed: vec![n],
                            added: vec![],
                            previous_sibling: 0,
                        });
                        let kids = dom.children(target);
                        let prev = if kids.is_empty() {
                            0
                        } else {
                            kids[rng.below(kids.len())]
                        };
                        let prev = if prev == n { 0 } else { prev };
                        records.push(ChangeRecord::ChildList {
                            target,
                            removed: vec![],
                            added: vec![Added::Existing(n), Added::New(li(&format!("new {seed}")))],
                            previous_sibling: prev,
                        });
                        // Apply now: later records in the batch refer to the tree as it is.
                        c.apply_records(std::mem::take(&mut records))
                            .expect("records apply");
                    }
                    1 => {
                        let n = pick(&mut rng);
                        if n != body {
                            let parent = dom.parent(n).unwrap();
                            records.push(ChangeRecord::ChildList {
                                target: parent,
                                removed: vec![n],
                                added: vec![],
                                previous_sibling: 0,
                            });
                            c.apply_records(std::mem::take(&mut records))
                                .expect("records apply");
                        }
                    }
                    2 => records.push(ChangeRecord::Attributes {
                        target: pick(&mut rng),
                        name: "data-x".into(),
                        value: (rng.below(3) > 0).then(|| format!("{}", rng.below(100))),
                    }),
                    _ => {
                        let texts: Vec<u64> =
                            dom.preorder(0).filter(|&n| dom.text(n).is_some()).collect();
                        if let Some(&t) = texts.get(rng.below(texts.len().max(1))) {
                            records.push(ChangeRecord::CharacterData {
                                target: t,
                                value: format!("text {}", rng.below(1000)),
                            });
                        }
                    }
                }
                c.apply_records(std::mem::take(&mut records))
                    .expect("records apply");
            }
            send(&mut c, &mut agent);
        }
    }
}

#[test]
fn a_partial_page_shows_something_once_its_body_has_content() {
    // A head larger than the fold (a big inline style sheet): the first parts hold nothing
    // that shows.
    let css: String = (0..400)
        .map(|i| format!(".c{i} {{ color: red }}\n"))
        .collect();
    let paragraphs: String = (0..40).map(|i| format!("<p>paragraph {i}</p>")).collect();
    let html = format!(
        "<html><head><style>{css}</style><title>t</title></head><body>\n  {paragraphs}</body></html>"
    );
    let mut c = Consumer::new(parse_html(&html, Limits::DEFAULT), "u", Limits::DEFAULT);
    c.set_part_bytes(256);
    c.set_fold_bytes(64);
    c.queue_snapshot();
    let mut agent = Agent::new(Limits::DEFAULT);
    let mut shown = Vec::new();
    while let Some(m) = c.poll_message() {
        agent.handle_message(m).unwrap();
        if agent.partial().is_some() {
            shown.push(agent.partial_shows_body());
        }
    }
    // After each part but the last: nothing to show while only the head has come, then the
    // top of the body, and from then on always.
    assert!(!shown[0], "part 0 holds only the head: {shown:?}");
    let first = shown
        .iter()
        .position(|&s| s)
        .expect("a partial page showed the body");
    assert!(shown[first..].iter().all(|&s| s), "{shown:?}");
    assert!(
        !agent.partial_shows_body(),
        "a verified page is not partial"
    );
    assert_eq!(agent.tree_hash(), Some(c.tree_hash()));
}

#[test]
fn the_fold_cut_keeps_part_zero_small_and_the_rest_in_full_parts() {
    let html: String = (0..600)
        .map(|i| format!("<p class=row>paragraph {i} with a few words of text</p>"))
        .collect();
    let mut c = Consumer::new(parse_html(&html, Limits::DEFAULT), "u", Limits::DEFAULT);
    c.set_part_bytes(8 * 1024);
    c.set_fold_bytes(512);
    c.queue_snapshot();
    let mut agent = Agent::new(Limits::DEFAULT);
    let mut sizes = Vec::new();
    while let Some(m) = c.poll_message() {
        if let Message::Snapshot(s) = &m {
            sizes.push(s.nodes.len());
        }
        agent.handle_message(m).unwrap();
    }
    assert!(sizes.len() > 3, "{sizes:?}");
    // Part 0 is the fold: a small fraction of a full part.
    assert!(sizes[0] * 8 < sizes[1], "{sizes:?}");
    assert!(
        sizes[1..sizes.len() - 1]
            .windows(2)
            .all(|w| w[0].abs_diff(w[1]) * 4 < w[0])
    );
    assert_eq!(agent.tree_hash(), Some(c.tree_hash()));
}
