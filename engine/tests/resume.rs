//! Resumption of the DOM stream (spec §3.5): after a lost connection the consumer re-sends
//! what the agent has not acknowledged, or a new snapshot, and the agent skips what it applied
//! already; both ends then hold the same tree, checked by hash.

mod common;

use tandem_engine::{Agent, Consumer, DomFrameKind, Resumption, parse_html};
use tandem_protocol::{EncodeError, Limits, Message, frame};

const PAGE: &str = "<!DOCTYPE html><html><head><title>t</title></head><body>\
    <ul id=list><li id=a>alpha</li><li id=b>beta</li><li id=c>gamma</li></ul>\
    <div id=box><p id=p>The quick brown fox jumps over the lazy dog, twice a day.</p></div>\
    </body></html>";

fn consumer() -> Consumer {
    Consumer::new(parse_html(PAGE, Limits::DEFAULT), "u", Limits::DEFAULT)
}

/// A consumer and an agent in sync at the snapshot.
fn setup() -> (Consumer, Agent) {
    let mut c = consumer();
    let mut agent = Agent::new(Limits::DEFAULT);
    deliver(&mut c, &mut agent, usize::MAX);
    (c, agent)
}

fn by_id(c: &Consumer, id: &str) -> u64 {
    common::by_id(c.dom(), id)
}

/// Polls everything queued; the first `keep` messages reach the agent and its answers reach
/// the consumer, the rest is lost with the connection. Returns how many were polled.
fn deliver(c: &mut Consumer, agent: &mut Agent, keep: usize) -> usize {
    let mut n = 0;
    while let Some(m) = c.poll_message() {
        if n < keep {
            agent.handle_message(m).expect("agent applies");
        }
        n += 1;
    }
    while let Some(r) = agent.poll_message() {
        c.handle_message(&r).unwrap();
    }
    n
}

/// Polls everything queued and applies it on the agent, but the agent's answers are lost.
fn deliver_unanswered(c: &mut Consumer, agent: &mut Agent) {
    while let Some(m) = c.poll_message() {
        agent.handle_message(m).expect("agent applies");
    }
    while agent.poll_message().is_some() {}
}

fn assert_converged(c: &mut Consumer, agent: &mut Agent) {
    assert_eq!(agent.tree_hash(), Some(c.tree_hash()));
    assert!(
        c.is_synced(),
        "the consumer saw the agent acknowledge everything"
    );
    assert_eq!(c.fallbacks(), 0);
}

#[test]
fn patches_whose_ack_was_lost_are_skipped_and_acknowledged_again() {
    let (mut c, mut agent) = setup();
    let (a, b) = (by_id(&c, "a"), by_id(&c, "b"));
    // Patch 1 introduces a string; patch 2 refers to it through the table. Both arrive, the
    // ACKs do not.
    c.set_attr(a, "class", "zebra-stripes").unwrap();
    assert!(c.flush());
    deliver_unanswered(&mut c, &mut agent);
    c.set_attr(b, "class", "zebra-stripes").unwrap();
    assert!(c.flush());
    deliver_unanswered(&mut c, &mut agent);
    assert_eq!(c.acked(), 0);

    assert_eq!(c.resume(), Resumption::Continue { resent: 2 });
    let resent = deliver(&mut c, &mut agent, usize::MAX);
    assert_eq!(resent, 2, "the same two patches again");
    assert_eq!(c.acked(), 2, "the agent acknowledged its state again");
    assert_converged(&mut c, &mut agent);

    // The epoch goes on: the string table is still in step.
    c.set_attr(by_id(&c, "c"), "class", "zebra-stripes")
        .unwrap();
    assert!(c.flush());
    deliver(&mut c, &mut agent, usize::MAX);
    assert_converged(&mut c, &mut agent);
    assert_eq!(c.epoch(), 0, "no new snapshot was needed");
}

#[test]
fn lost_patches_are_sent_again_in_order() {
    let (mut c, mut agent) = setup();
    let (a, b) = (by_id(&c, "a"), by_id(&c, "b"));
    // Patch 1 arrives and is acknowledged; patches 2 and 3 are lost on the way.
    c.set_attr(a, "title", "first").unwrap();
    c.flush();
    deliver(&mut c, &mut agent, usize::MAX);
    c.set_attr(a, "class", "fresh-string").unwrap();
    c.flush();
    c.set_text(b + 1, "beta, changed").unwrap();
    c.flush();
    assert_eq!(deliver(&mut c, &mut agent, 0), 2);
    // A change made while the connection was down waits behind the copies.
    c.set_attr(b, "class", "fresh-string").unwrap();

    assert_eq!(c.resume(), Resumption::Continue { resent: 2 });
    c.flush();
    deliver(&mut c, &mut agent, usize::MAX);
    assert_converged(&mut c, &mut agent);
    assert_eq!(c.seq(), 4);
}

#[test]
fn a_snapshot_cut_off_midway_is_replaced_by_a_new_epoch() {
    let mut c = consumer();
    c.set_part_bytes(64);
    c.queue_snapshot();
    let mut agent = Agent::new(Limits::DEFAULT);
    // Only the first part arrives.
    let parts = deliver(&mut c, &mut agent, 1);
    assert!(parts > 2, "the snapshot has several parts ({parts})");
    assert!(!agent.is_live());
    let epoch = c.epoch();

    assert_eq!(c.resume(), Resumption::Snapshot);
    assert_eq!(c.epoch(), epoch + 1);
    deliver(&mut c, &mut agent, usize::MAX);
    assert_converged(&mut c, &mut agent);
}

#[test]
fn resending_more_than_the_page_costs_a_snapshot() {
    let (mut c, mut agent) = setup();
    let nodes = c.dom().len();
    let p = by_id(&c, "p");
    // Many patches in flight (a writer that does not wait for ACKs), all lost.
    for i in 0..=nodes {
        c.set_attr(p, "data-n", &i.to_string()).unwrap();
        c.flush();
        c.poll_message();
    }
    assert_eq!(c.resume(), Resumption::Snapshot);
    deliver(&mut c, &mut agent, usize::MAX);
    assert_converged(&mut c, &mut agent);
}

#[test]
fn a_second_resumption_before_the_first_was_sent_keeps_one_copy_of_each() {
    let (mut c, mut agent) = setup();
    let a = by_id(&c, "a");
    for v in ["one", "two", "three"] {
        c.set_attr(a, "class", v).unwrap();
        c.flush();
    }
    assert_eq!(deliver(&mut c, &mut agent, 0), 3);
    assert_eq!(c.resume(), Resumption::Continue { resent: 3 });
    // One copy goes out and is lost too, then the connection drops again.
    let Some(Message::Patch(first)) = c.poll_message() else {
        panic!("a patch first");
    };
    assert_eq!(first.seq, 1);
    assert_eq!(c.resume(), Resumption::Continue { resent: 3 });
    let mut seqs = Vec::new();
    while let Some(m) = c.poll_message() {
        if let Message::Patch(p) = &m {
            seqs.push(p.seq);
        }
        agent.handle_message(m).unwrap();
    }
    assert_eq!(seqs, [1, 2, 3]);
    while let Some(r) = agent.poll_message() {
        c.handle_message(&r).unwrap();
    }
    assert_converged(&mut c, &mut agent);
}

#[test]
fn a_copy_that_does_not_match_the_agents_tree_is_a_divergence() {
    let (mut c, mut agent) = setup();
    c.set_attr(by_id(&c, "a"), "class", "x").unwrap();
    c.flush();
    let Some(Message::Patch(mut p)) = c.poll_message() else {
        panic!("a patch");
    };
    agent.handle_message(Message::Patch(p.clone())).unwrap();
    while agent.poll_message().is_some() {}
    // The same seq again, announcing another tree: never silent.
    p.hash[0] ^= 1;
    assert!(agent.handle_message(Message::Patch(p)).is_err());
    assert!(matches!(agent.poll_message(), Some(Message::Resync(_))));
}

#[test]
fn acknowledged_patches_leave_the_log() {
    let (mut c, mut agent) = setup();
    let a = by_id(&c, "a");
    for i in 0..10 {
        c.set_attr(a, "data-i", &i.to_string()).unwrap();
        c.flush();
        deliver(&mut c, &mut agent, usize::MAX);
    }
    // Everything was acknowledged: nothing to re-send, the epoch continues.
    assert_eq!(c.resume(), Resumption::Continue { resent: 0 });
    assert!(c.poll_message().is_none());
    assert_converged(&mut c, &mut agent);
}

/// `poll_frame` hands out exactly the frames of `poll_message`'s messages, with their kinds,
/// through snapshots, patches and a resumption's re-sent copies; the log of patches for a
/// resumption is kept the same way by both.
#[test]
fn frames_and_messages_agree() {
    let limits = Limits::DEFAULT;
    let (mut by_msg, mut by_frame) = (consumer(), consumer());
    let mut agent = Agent::new(limits);
    let mut step = |by_msg: &mut Consumer, by_frame: &mut Consumer, answer: bool| {
        let mut replies = Vec::new();
        loop {
            let (m, f) = (by_msg.poll_message(), by_frame.poll_frame());
            let (Some(m), Some(f)) = (m, f) else {
                assert!(by_msg.poll_message().is_none() && by_frame.poll_frame().is_none());
                break;
            };
            let f = f.expect("encodes");
            assert_eq!(*f.bytes, frame::to_frame(&m, &limits).unwrap());
            let kind = match &m {
                Message::Snapshot(s) => DomFrameKind::Snapshot {
                    epoch: s.epoch,
                    part: s.part,
                    last: s.hash.is_some(),
                },
                Message::Patch(p) => DomFrameKind::Patch {
                    epoch: p.epoch,
                    seq: p.seq,
                },
                other => panic!("a DOM stream carries {other:?}"),
            };
            assert_eq!(f.kind, kind);
            agent.handle_message(m).expect("agent applies");
        }
        while let Some(r) = agent.poll_message() {
            replies.push(r);
        }
        if answer {
            for r in &replies {
                by_msg.handle_message(r).unwrap();
                by_frame.handle_message(r).unwrap();
            }
        }
    };
    step(&mut by_msg, &mut by_frame, true);
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        for c in [&mut by_msg, &mut by_frame] {
            let node = by_id(c, id);
            c.set_attr(node, "class", &format!("step-{i}")).unwrap();
            assert!(c.flush());
        }
        // The first patch's acknowledgement is lost: the resumption re-sends the other two.
        step(&mut by_msg, &mut by_frame, i == 0);
    }
    assert_eq!(by_msg.resume(), Resumption::Continue { resent: 2 });
    assert_eq!(by_frame.resume(), Resumption::Continue { resent: 2 });
    step(&mut by_msg, &mut by_frame, true);
    assert_eq!(agent.tree_hash(), Some(by_frame.tree_hash()));
    assert!(by_msg.is_synced() && by_frame.is_synced());
}

/// A snapshot part above the limits' frame size is refused by `poll_frame` with the error the
/// frame encoder gives, and the parts after it still come.
#[test]
fn a_part_above_the_frame_limit_is_refused() {
    let limits = Limits {
        max_frame_body: 200,
        ..Limits::DEFAULT
    };
    let page = format!(
        "<p>short</p><p>{}</p><ul><li>one</li><li>two</li><li>three</li></ul>",
        "long ".repeat(60)
    );
    let mut c = Consumer::new(parse_html(&page, limits), "u", limits);
    c.set_fold_bytes(32);
    c.set_part_bytes(32);
    c.queue_snapshot();
    let (mut refused, mut sent) = (0, 0);
    while let Some(f) = c.poll_frame() {
        match f {
            Ok(f) => {
                assert!(f.bytes.len() <= 203);
                sent += 1;
            }
            Err(EncodeError::TooLarge { message, len, max }) => {
                assert_eq!((message, max), ("SNAPSHOT", 200));
                assert!(len > 200);
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused > 0 && sent > 0, "{refused} refused, {sent} sent");
}
