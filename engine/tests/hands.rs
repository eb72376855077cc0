//! The consumer's authority over the agent's actions (issue 5): every mode × every action, mode
//! negotiation with and without consent, pause, masking, page checks, highlights, navigation.

mod common;

use std::time::{Duration, Instant};

use tandem_engine::hands::{
    Action, Authority, Effect, HandsConfig, ModeOutcome, NavigationRule, Unprotected, Verdict,
    permits,
};
use tandem_engine::{Dom, NodeKind, parse_html};
use tandem_protocol::message::{
    Click, Highlight, Input, InputValue, Mode, ModeChange, ModeOp, Navigate, Pointer, RefusalCode,
    Scroll,
};
use tandem_protocol::{Limits, Message, NodeId};

const PAGE: &str = "<!DOCTYPE html><body><p id=t>Hello</p>\
    <form><input id=name><input id=agree type=checkbox><textarea id=note></textarea>\
    <select id=size><option>S<option>M<optgroup><option>L</optgroup></select>\
    <input id=card autocomplete=cc-number><button id=go>Go</button></form></body>";

fn page() -> Dom {
    parse_html(PAGE, Limits::DEFAULT)
}

fn by_id(dom: &Dom, id: &str) -> NodeId {
    dom.preorder(0)
        .find(|&n| match &dom.node(n).unwrap().kind {
            NodeKind::Element(e) => e.attr("id") == Some(id),
            _ => false,
        })
        .unwrap_or_else(|| panic!("no #{id}"))
}

/// One message per action, each aimed at a fitting node.
fn action_message(action: Action, dom: &Dom) -> Message {
    let t = by_id(dom, "t");
    match action {
        Action::Pointer => Message::Pointer(Pointer {
            seq: 1,
            node: t,
            x: 5000,
            y: 5000,
            visible: true,
        }),
        Action::Highlight => Message::Highlight(Highlight {
            id: 2,
            node: t,
            duration_ms: 3000,
        }),
        Action::Wiggle => Message::Click(Click {
            id: 3,
            node: t,
            x: 1,
            y: 1,
            button: 0,
            modifiers: 2,
        }),
        Action::Scroll => Message::Scroll(Scroll {
            seq: 1,
            node: 0,
            x: 0,
            y: 400,
        }),
        Action::Click => Message::Click(Click {
            id: 4,
            node: by_id(dom, "go"),
            x: 5000,
            y: 5000,
            button: 0,
            modifiers: 0,
        }),
        Action::Navigate => Message::Navigate(Navigate {
            id: 5,
            url: "https://shop.example/help".into(),
        }),
        Action::Input => Message::Input(Input {
            id: 6,
            node: by_id(dom, "name"),
            value: InputValue::Text("Ada".into()),
        }),
    }
}

fn authority(mode: Mode) -> Authority {
    let mut a = Authority::new(HandsConfig::default(), "https://shop.example/cart");
    a.set_mode(mode);
    a
}

#[test]
fn every_mode_times_every_action() {
    let dom = page();
    let now = Instant::now();
    let modes = [Mode::Follow, Mode::View, Mode::Guide, Mode::Full];
    // The spec's table, written out: which actions each mode allows.
    let table: [(Mode, &[Action]); 4] = [
        (
            Mode::Follow,
            &[Action::Pointer, Action::Highlight, Action::Wiggle],
        ),
        (
            Mode::View,
            &[
                Action::Pointer,
                Action::Highlight,
                Action::Wiggle,
                Action::Scroll,
            ],
        ),
        (
            Mode::Guide,
            &[
                Action::Pointer,
                Action::Highlight,
                Action::Wiggle,
                Action::Scroll,
                Action::Click,
                Action::Navigate,
            ],
        ),
        (Mode::Full, &Action::ALL),
    ];
    for (mode, allowed) in table {
        for action in Action::ALL {
            let want = allowed.contains(&action);
            assert_eq!(permits(mode, action), want, "{mode:?} {action:?}");
            let mut a = authority(mode);
            let msg = action_message(action, &dom);
            let v = a.handle(&msg, &dom, &Unprotected, now);
            if want {
                assert!(matches!(v, Verdict::Apply(_)), "{mode:?} {action:?}: {v:?}");
            } else {
                assert_eq!(
                    v.refusal(),
                    Some(RefusalCode::NotPermitted),
                    "{mode:?} {action:?}"
                );
                // Actions with an id get a REFUSED the agent sees; datagrams are dropped.
                let sent = matches!(v, Verdict::Refuse(_));
                assert_eq!(sent, action != Action::Scroll, "{mode:?} {action:?}: {v:?}");
            }
        }
    }
    assert_eq!(modes.len(), 4);
}

#[test]
fn an_unknown_mode_allows_only_what_follow_allows() {
    let unknown = Mode::from(9u32);
    for action in Action::ALL {
        assert_eq!(
            permits(unknown, action),
            permits(Mode::Follow, action),
            "{action:?}"
        );
    }
}

#[test]
fn a_request_for_more_waits_for_consent() {
    let mut a = authority(Mode::Follow);
    let ask = ModeChange {
        op: ModeOp::Request,
        mode: Mode::Full,
    };
    assert_eq!(a.on_mode(ask), ModeOutcome::AwaitingConsent(Mode::Full));
    assert_eq!(
        a.mode(),
        Mode::Follow,
        "nothing changes before the customer answers"
    );
    assert_eq!(
        a.consent(true),
        Some(ModeChange {
            op: ModeOp::Grant,
            mode: Mode::Full
        })
    );
    assert_eq!(a.mode(), Mode::Full);
    assert_eq!(a.consent(true), None, "nothing pending any more");

    // The customer can say no, and lower the mode at any time.
    assert_eq!(
        a.set_mode(Mode::View),
        ModeChange {
            op: ModeOp::Set,
            mode: Mode::View
        }
    );
    assert_eq!(
        a.on_mode(ModeChange {
            op: ModeOp::Request,
            mode: Mode::Guide
        }),
        ModeOutcome::AwaitingConsent(Mode::Guide)
    );
    assert_eq!(
        a.consent(false),
        Some(ModeChange {
            op: ModeOp::Deny,
            mode: Mode::Guide
        })
    );
    assert_eq!(a.mode(), Mode::View);

    // Asking for less needs no consent.
    assert_eq!(
        a.on_mode(ModeChange {
            op: ModeOp::Request,
            mode: Mode::Follow
        }),
        ModeOutcome::Reply(ModeChange {
            op: ModeOp::Grant,
            mode: Mode::Follow
        })
    );
}

#[test]
fn consent_can_be_configured_off() {
    let config = HandsConfig {
        consent_required: false,
        ..HandsConfig::default()
    };
    let mut a = Authority::new(config, "https://shop.example/");
    assert_eq!(
        a.on_mode(ModeChange {
            op: ModeOp::Request,
            mode: Mode::Guide
        }),
        ModeOutcome::Reply(ModeChange {
            op: ModeOp::Grant,
            mode: Mode::Guide
        })
    );
    assert_eq!(a.mode(), Mode::Guide);
}

#[test]
fn the_agent_cannot_grant_or_set_and_unknown_requests_are_denied() {
    let mut a = authority(Mode::Follow);
    for op in [ModeOp::Grant, ModeOp::Deny, ModeOp::Set] {
        assert_eq!(
            a.on_mode(ModeChange {
                op,
                mode: Mode::Full
            }),
            ModeOutcome::Unexpected
        );
    }
    let odd = ModeChange {
        op: ModeOp::Request,
        mode: Mode::from(7u32),
    };
    assert_eq!(
        a.on_mode(odd),
        ModeOutcome::Reply(ModeChange {
            op: ModeOp::Deny,
            mode: Mode::from(7u32)
        })
    );
    let odd_op = ModeChange {
        op: ModeOp::from(9u32),
        mode: Mode::Full,
    };
    assert!(matches!(
        a.on_mode(odd_op),
        ModeOutcome::Reply(ModeChange {
            op: ModeOp::Deny,
            ..
        })
    ));
    assert_eq!(a.mode(), Mode::Follow);
}

#[test]
fn pause_refuses_everything_until_resume() {
    let dom = page();
    let now = Instant::now();
    let mut a = authority(Mode::Full);
    a.pause();
    for action in Action::ALL {
        let v = a.handle(&action_message(action, &dom), &dom, &Unprotected, now);
        assert_eq!(v.refusal(), Some(RefusalCode::Paused), "{action:?}");
    }
    assert!(matches!(
        a.on_mode(ModeChange {
            op: ModeOp::Request,
            mode: Mode::Full
        }),
        ModeOutcome::Reply(ModeChange {
            op: ModeOp::Deny,
            ..
        })
    ));
    a.resume();
    let v = a.handle(
        &action_message(Action::Input, &dom),
        &dom,
        &Unprotected,
        now,
    );
    assert!(matches!(v, Verdict::Apply(Effect::Input(_))));
}

#[test]
fn input_into_a_protected_field_is_refused_as_masked() {
    let dom = page();
    let card = by_id(&dom, "card");
    let mut a = authority(Mode::Full);
    let protect = |d: &Dom, n: NodeId| matches!(&d.node(n).unwrap().kind, NodeKind::Element(e) if e.attr("autocomplete") == Some("cc-number"));
    let msg = Message::Input(Input {
        id: 9,
        node: card,
        value: InputValue::Text("4111".into()),
    });
    let v = a.handle(&msg, &dom, &protect, Instant::now());
    assert_eq!(v.refusal(), Some(RefusalCode::Masked));
    // A click on it too; a wiggle (which clicks nothing) is fine.
    let click = Message::Click(Click {
        id: 10,
        node: card,
        x: 0,
        y: 0,
        button: 0,
        modifiers: 0,
    });
    assert_eq!(
        a.handle(&click, &dom, &protect, Instant::now()).refusal(),
        Some(RefusalCode::Masked)
    );
    let wiggle = Message::Click(Click {
        id: 11,
        node: card,
        x: 0,
        y: 0,
        button: 0,
        modifiers: 2,
    });
    assert!(matches!(
        a.handle(&wiggle, &dom, &protect, Instant::now()),
        Verdict::Apply(Effect::Wiggle(_))
    ));
}

#[test]
fn values_must_fit_their_fields() {
    let dom = page();
    let now = Instant::now();
    let mut a = authority(Mode::Full);
    let mut check = |node: &str, value: InputValue| {
        let msg = Message::Input(Input {
            id: 1,
            node: by_id(&dom, node),
            value,
        });
        a.handle(&msg, &dom, &Unprotected, now).refusal()
    };
    assert_eq!(check("name", InputValue::Text("x".into())), None);
    assert_eq!(check("note", InputValue::Text("x".into())), None);
    assert_eq!(check("agree", InputValue::Checked(true)), None);
    assert_eq!(
        check("size", InputValue::Selected(vec![2])),
        None,
        "options inside optgroups count"
    );
    assert_eq!(
        check("agree", InputValue::Text("x".into())),
        Some(RefusalCode::Invalid)
    );
    assert_eq!(
        check("name", InputValue::Checked(true)),
        Some(RefusalCode::Invalid)
    );
    assert_eq!(
        check("size", InputValue::Selected(vec![3])),
        Some(RefusalCode::Invalid)
    );
    assert_eq!(
        check("size", InputValue::Selected(vec![0, 1])),
        Some(RefusalCode::Invalid),
        "not multiple"
    );
    assert_eq!(
        check("t", InputValue::Text("x".into())),
        Some(RefusalCode::Invalid)
    );
    assert_eq!(
        check("go", InputValue::Text("x".into())),
        Some(RefusalCode::Invalid)
    );
    let gone = Message::Input(Input {
        id: 1,
        node: 9999,
        value: InputValue::Text("x".into()),
    });
    assert_eq!(
        a.handle(&gone, &dom, &Unprotected, now).refusal(),
        Some(RefusalCode::NoSuchNode)
    );
}

#[test]
fn navigation_follows_the_configured_rule() {
    let mut same = authority(Mode::Guide);
    let nav = |url: &str| {
        Message::Navigate(Navigate {
            id: 1,
            url: url.into(),
        })
    };
    let dom = page();
    let now = Instant::now();
    let go = |a: &mut Authority, url: &str| a.handle(&nav(url), &dom, &Unprotected, now).refusal();
    assert_eq!(go(&mut same, "https://shop.example/help"), None);
    assert_eq!(go(&mut same, "https://SHOP.example:443/x"), None);
    assert_eq!(
        go(&mut same, "http://shop.example/help"),
        Some(RefusalCode::OffSite)
    );
    assert_eq!(
        go(&mut same, "https://evil.example/"),
        Some(RefusalCode::OffSite)
    );
    assert_eq!(
        go(&mut same, "javascript:alert(1)"),
        Some(RefusalCode::Invalid)
    );
    assert_eq!(go(&mut same, "/relative"), Some(RefusalCode::Invalid));

    let config = HandsConfig {
        navigation: NavigationRule::Hosts(vec!["example.com".into()]),
        ..HandsConfig::default()
    };
    let mut site = Authority::new(config, "https://www.example.com/");
    site.set_mode(Mode::Guide);
    assert_eq!(go(&mut site, "https://help.example.com/a"), None);
    assert_eq!(go(&mut site, "http://example.com/"), None);
    assert_eq!(
        go(&mut site, "https://badexample.com/"),
        Some(RefusalCode::OffSite)
    );

    let config = HandsConfig {
        navigation: NavigationRule::AnyWeb,
        ..HandsConfig::default()
    };
    let mut any = Authority::new(config, "https://www.example.com/");
    any.set_mode(Mode::Guide);
    assert_eq!(go(&mut any, "https://elsewhere.example/"), None);
    assert_eq!(
        go(&mut any, "file:///etc/passwd"),
        Some(RefusalCode::Invalid)
    );
}

#[test]
fn highlights_expire_clear_and_end_on_navigation() {
    let dom = page();
    let t = by_id(&dom, "t");
    let go = by_id(&dom, "go");
    let t0 = Instant::now();
    let mut a = authority(Mode::Follow);
    let hl = |node, ms| {
        Message::Highlight(Highlight {
            id: 1,
            node,
            duration_ms: ms,
        })
    };
    assert!(matches!(
        a.handle(&hl(t, 3000), &dom, &Unprotected, t0),
        Verdict::Apply(Effect::Highlight { .. })
    ));
    assert!(matches!(
        a.handle(&hl(go, 10_000), &dom, &Unprotected, t0),
        Verdict::Apply(_)
    ));
    assert_eq!(a.poll_timeout(), Some(t0 + Duration::from_secs(3)));
    assert!(
        a.handle_timeout(t0 + Duration::from_millis(2999))
            .is_empty()
    );
    assert_eq!(a.handle_timeout(t0 + Duration::from_secs(3)), vec![t]);
    // Clearing: duration 0.
    assert_eq!(
        a.handle(&hl(go, 0), &dom, &Unprotected, t0),
        Verdict::Apply(Effect::ClearHighlight { node: go })
    );
    assert_eq!(a.highlights().count(), 0);
    // Navigation ends them all.
    a.handle(&hl(t, 3000), &dom, &Unprotected, t0);
    assert_eq!(a.navigated("https://shop.example/next"), vec![t]);
    assert_eq!(a.poll_timeout(), None);
    // A very long highlight is cut to the configured maximum.
    a.handle(&hl(t, u32::MAX), &dom, &Unprotected, t0);
    assert_eq!(a.poll_timeout(), Some(t0 + a.config().max_highlight));
    // A highlight needs an element.
    let text = dom.children(t)[0];
    assert_eq!(
        a.handle(&hl(text, 100), &dom, &Unprotected, t0).refusal(),
        Some(RefusalCode::NoSuchNode)
    );
}

#[test]
fn pointers_and_scrolls_are_latest_wins() {
    let dom = page();
    let now = Instant::now();
    let mut a = authority(Mode::View);
    let ptr = |seq| {
        Message::Pointer(Pointer {
            seq,
            node: 0,
            x: 0,
            y: 0,
            visible: true,
        })
    };
    assert!(matches!(
        a.handle(&ptr(5), &dom, &Unprotected, now),
        Verdict::Apply(_)
    ));
    assert_eq!(
        a.handle(&ptr(4), &dom, &Unprotected, now),
        Verdict::Ignore(None)
    );
    assert_eq!(
        a.handle(&ptr(5), &dom, &Unprotected, now),
        Verdict::Ignore(None)
    );
    assert!(matches!(
        a.handle(&ptr(6), &dom, &Unprotected, now),
        Verdict::Apply(_)
    ));
    let scroll = |seq, node| {
        Message::Scroll(Scroll {
            seq,
            node,
            x: 0,
            y: 1,
        })
    };
    assert!(matches!(
        a.handle(&scroll(9, 0), &dom, &Unprotected, now),
        Verdict::Apply(_)
    ));
    assert_eq!(
        a.handle(&scroll(8, 0), &dom, &Unprotected, now),
        Verdict::Ignore(None)
    );
    // Sequences are kept per scrolled element.
    let form = dom.parent(by_id(&dom, "name")).unwrap();
    assert!(matches!(
        a.handle(&scroll(1, form), &dom, &Unprotected, now),
        Verdict::Apply(_)
    ));
    assert_eq!(
        a.handle(&scroll(3, 4242), &dom, &Unprotected, now)
            .refusal(),
        Some(RefusalCode::NoSuchNode)
    );
}

#[test]
fn messages_that_are_not_actions_are_ignored() {
    let dom = page();
    let mut a = authority(Mode::Full);
    let v = a.handle(&Message::Pause(()), &dom, &Unprotected, Instant::now());
    assert_eq!(v, Verdict::Ignore(None));
}

#[test]
fn the_spec_permission_table_is_the_code() {
    let rows = common::spec_table("### 13.2 Modes and permissions");
    assert_eq!(rows.len(), Action::ALL.len());
    for (row, action) in rows.iter().zip(Action::ALL) {
        assert_eq!(row[0], action.name());
        for (cell, mode) in row[2..]
            .iter()
            .zip([Mode::Follow, Mode::View, Mode::Guide, Mode::Full])
        {
            assert_eq!(
                cell == "yes",
                permits(mode, action),
                "{action:?} in {mode:?}"
            );
        }
    }
}

mod session_actions {
    use proptest::collection::vec;
    use proptest::prelude::*;
    use tandem_engine::hands::fuzzing;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Arbitrary sequences of session and action messages from both sides: nothing the
        /// mode, a pause or masking forbids gets through, and the lifecycle keeps to its table.
        #[test]
        fn nothing_forbidden_gets_through(data in vec(any::<u8>(), 0..600)) {
            fuzzing::session_actions(&data);
        }
    }

    #[test]
    fn session_actions_regressions() {
        for path in super::common::regression_inputs("session_actions") {
            eprintln!("replaying {}", path.display());
            fuzzing::session_actions(&std::fs::read(&path).expect("read input"));
        }
    }
}
