//! The agent's hands in a live session (issue 5): `tandem demo --mode` for every mode, where
//! the scripted agent's actions land or are refused exactly as the permission table (spec
//! §13.2) and the masking policy say; and the consumer's effects on its page, checked without a
//! network.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tandem_engine::{Consumer, parse_html};
use tandem_peers::demo::{DemoArgs, demo};
use tandem_peers::hands::{ConsumerHands, HandsOptions, Outcome, page_for};
use tandem_protocol::Limits;
use tandem_protocol::message::{Input, InputValue, Mode, Navigate, RefusalCode};
use tandem_protocol::{Message, NodeId};

fn args(mode: Mode, out: Option<PathBuf>) -> DemoArgs {
    DemoArgs {
        batches: 2,
        batch_size: 5,
        interval_ms: 5,
        seed: 4,
        out,
        json: true,
        mode: Some(mode),
        ..DemoArgs::default()
    }
}

fn rank(mode: Mode) -> u8 {
    tandem_engine::hands::rank(mode).expect("a known mode")
}

/// What the demo script's actions must come to in `mode`, in the script's order (the mode
/// request is answered first, and denied: the demo's customer declines).
fn expected(mode: Mode) -> Vec<(&'static str, Outcome)> {
    let landed = || Outcome::Landed {
        effect: String::new(),
    };
    let refused = |c: RefusalCode| Outcome::Refused {
        code: format!("{c:?}"),
    };
    let r = rank(mode);
    let needs = |min: Mode, ok: Outcome| {
        if r >= rank(min) {
            ok
        } else {
            refused(RefusalCode::NotPermitted)
        }
    };
    vec![
        ("pointer", landed()),
        ("highlight", landed()),
        ("wiggle", landed()),
        (
            "scroll",
            if r >= rank(Mode::View) {
                landed()
            } else {
                // A datagram: refused silently (spec §7.22).
                Outcome::Ignored {
                    code: Some("NotPermitted".into()),
                }
            },
        ),
        ("click", needs(Mode::Guide, landed())),
        ("input", needs(Mode::Full, landed())),
        ("input", needs(Mode::Full, landed())),
        // The card number is masked by the automatic rules: refused whatever the mode.
        ("input", needs(Mode::Full, refused(RefusalCode::Masked))),
        (
            "navigate",
            needs(Mode::Guide, refused(RefusalCode::OffSite)),
        ),
        ("navigate", needs(Mode::Guide, landed())),
    ]
}

fn same(a: &Outcome, b: &Outcome) -> bool {
    match (a, b) {
        (Outcome::Landed { .. }, Outcome::Landed { .. }) => true,
        _ => a == b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_lets_through_exactly_what_it_permits() {
    for mode in [Mode::Follow, Mode::View, Mode::Guide, Mode::Full] {
        let report = tokio::time::timeout(Duration::from_secs(60), demo(&args(mode, None)))
            .await
            .expect("demo finishes")
            .expect("demo runs");
        assert!(report.hashes_match, "{mode:?}: {report:?}");
        // The mode request travels on the control stream, pointer and scroll as datagrams,
        // the rest on the actions stream: only the order within each lane is given.
        let lane = |action: &str| match action {
            "mode request" => 0,
            "pointer" | "scroll" => 1,
            _ => 2,
        };
        let requests: Vec<_> = report
            .actions
            .iter()
            .filter(|a| lane(&a.action) == 0)
            .collect();
        assert_eq!(requests.len(), 1, "{mode:?}: {:#?}", report.actions);
        let answer = match &requests[0].outcome {
            Outcome::Answered { answer, .. } => answer.as_str(),
            other => panic!("{mode:?}: the request was {other:?}"),
        };
        // Asking for the mode one already has is granted; anything higher is declined.
        let want = if mode == Mode::Full { "grant" } else { "deny" };
        assert_eq!(answer, want, "{mode:?}");
        let want = expected(mode);
        for l in [1, 2] {
            let got: Vec<_> = report
                .actions
                .iter()
                .filter(|a| lane(&a.action) == l)
                .collect();
            let want: Vec<_> = want.iter().filter(|(a, _)| lane(a) == l).collect();
            assert_eq!(got.len(), want.len(), "{mode:?}: {got:#?}");
            for (got, (action, outcome)) in got.iter().zip(want) {
                assert_eq!(got.action, *action, "{mode:?}");
                assert!(
                    same(&got.outcome, outcome),
                    "{mode:?} {action} {}: got {:?}, want {outcome:?}",
                    got.target,
                    got.outcome
                );
            }
        }
        let actions = &report.actions;
        // The agent saw exactly the refusals the consumer sent, in order.
        let sent: Vec<String> = actions
            .iter()
            .filter_map(|a| match &a.outcome {
                Outcome::Refused { code } => Some(code.clone()),
                _ => None,
            })
            .collect();
        let told: Vec<&str> = report
            .agent_answers
            .iter()
            .filter_map(|(_, a)| a.strip_prefix("refused: "))
            .collect();
        assert_eq!(
            told.len(),
            sent.len(),
            "{mode:?}: {:?}",
            report.agent_answers
        );
        for (t, s) in told.iter().zip(&sent) {
            assert!(t.starts_with(s.as_str()), "{mode:?}: told {t}, sent {s}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_full_mode_the_agents_input_reaches_its_own_copy_and_masked_fields_stay_masked() {
    let out = std::env::temp_dir().join(format!("tandem-hands-{}.html", std::process::id()));
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        demo(&args(Mode::Full, Some(out.clone()))),
    )
    .await
    .expect("demo finishes")
    .expect("demo runs");
    let html = std::fs::read_to_string(&out).expect("the agent wrote its page");
    let _ = std::fs::remove_file(&out);
    assert!(report.hashes_match, "{report:?}");
    assert!(
        html.contains(r#"value="Utrecht""#),
        "the typed city came back: {html}"
    );
    assert!(
        !html.contains("5555"),
        "the refused card number never reached the page"
    );
    assert!(
        !html.contains("4111"),
        "the card number on the page stays masked"
    );
}

fn consumer(html: &str) -> Consumer {
    Consumer::new(
        parse_html(html, Limits::DEFAULT),
        "https://shop.example/a",
        Limits::DEFAULT,
    )
}

fn by_name(c: &Consumer, tag: &str) -> NodeId {
    let dom = c.dom();
    dom.preorder(0)
        .find(|&id| {
            dom.node(id)
                .and_then(|n| n.element())
                .is_some_and(|e| e.name == tag)
        })
        .expect("the element is there")
}

fn full() -> HandsOptions {
    HandsOptions {
        mode: Mode::Full,
        ..HandsOptions::default()
    }
}

fn input(node: NodeId, value: InputValue) -> Message {
    Message::Input(Input { id: 1, node, value })
}

#[test]
fn input_effects_change_the_consumers_page() {
    let mut c = consumer(
        "<textarea>old <b>x</b></textarea><input type=checkbox>\
         <select><option>a<option selected>b<option>c</select>",
    );
    let mut hands = ConsumerHands::new(&full(), "https://shop.example/a");
    let now = Instant::now();
    let textarea = by_name(&c, "textarea");
    let reply = hands
        .on_message(
            &input(textarea, InputValue::Text("new".into())),
            &mut c,
            now,
        )
        .expect("carried out");
    assert_eq!(reply, None, "an allowed action is not answered");
    let kids = c.dom().children(textarea).to_vec();
    assert_eq!(kids.len(), 1);
    assert_eq!(c.dom().text(kids[0]), Some("new"));

    let check = by_name(&c, "input");
    hands
        .on_message(&input(check, InputValue::Checked(true)), &mut c, now)
        .expect("carried out");
    let el = |c: &Consumer, id| c.dom().node(id).and_then(|n| n.element()).cloned();
    assert!(el(&c, check).is_some_and(|e| e.attr("checked").is_some()));

    let select = by_name(&c, "select");
    hands
        .on_message(&input(select, InputValue::Selected(vec![2])), &mut c, now)
        .expect("carried out");
    let selected: Vec<bool> = c
        .dom()
        .preorder(select)
        .filter_map(|id| el(&c, id).filter(|e| e.name == "option"))
        .map(|e| e.attr("selected").is_some())
        .collect();
    assert_eq!(selected, [false, false, true]);
    assert!(
        hands
            .log()
            .iter()
            .all(|a| matches!(a.outcome, Outcome::Landed { .. }))
    );
}

#[test]
fn a_masked_field_refuses_input_and_keeps_its_value() {
    let mut c = consumer("<input type=password value=hunter2>");
    let mut hands = ConsumerHands::new(&full(), "https://shop.example/a");
    let field = by_name(&c, "input");
    let before = c.tree_hash();
    let reply = hands
        .on_message(
            &input(field, InputValue::Text("x".into())),
            &mut c,
            Instant::now(),
        )
        .expect("judged");
    match reply {
        Some(Message::Refused(r)) => assert_eq!(r.code, RefusalCode::Masked),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.tree_hash(), before, "nothing changed");
}

#[test]
fn a_same_site_navigation_loads_the_page_file_it_names() {
    let dir = std::env::temp_dir().join(format!("tandem-site-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("help")).expect("a temp dir");
    std::fs::write(dir.join("orders.html"), "<p id=o>Your orders</p>").expect("write");
    std::fs::write(dir.join("help/index.html"), "<p>Help</p>").expect("write");
    assert_eq!(
        page_for(&dir, "https://shop.example/orders?x=1"),
        Some(dir.join("orders.html"))
    );
    assert_eq!(
        page_for(&dir, "https://shop.example/help/"),
        Some(dir.join("help/index.html"))
    );
    assert_eq!(page_for(&dir, "https://shop.example/../etc/passwd"), None);
    assert_eq!(page_for(&dir, "https://shop.example/missing"), None);

    let mut c = consumer("<p>Home</p>");
    let opts = HandsOptions {
        mode: Mode::Guide,
        site: Some(dir.clone()),
        ..HandsOptions::default()
    };
    let mut hands = ConsumerHands::new(&opts, "https://shop.example/");
    while c.poll_message().is_some() {}
    let nav = Message::Navigate(Navigate {
        id: 9,
        url: "https://shop.example/orders".into(),
    });
    assert_eq!(
        hands
            .on_message(&nav, &mut c, Instant::now())
            .expect("judged"),
        None
    );
    let _ = std::fs::remove_dir_all(&dir);
    let mut want = parse_html("<p id=o>Your orders</p>", Limits::DEFAULT);
    let mut got = c.dom().clone();
    assert!(
        got.same_tree(&mut want),
        "the consumer now shows the new page"
    );
    // The change waits for the session's flush (backpressure: never a second patch in
    // flight), then leaves as one patch.
    assert!(
        c.poll_message().is_none(),
        "nothing sent behind the session's back"
    );
    assert!(c.has_pending(), "the change is pending");
    assert!(c.flush());
    assert!(matches!(c.poll_message(), Some(Message::Patch(_))));
}

/// Presence (spec §7.1, §7.29): each side knows the other's platform from `JOINED` and its
/// link from the `STATUS` messages the other sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_see_each_others_platform_and_link() {
    let report = tokio::time::timeout(Duration::from_secs(60), demo(&args(Mode::Follow, None)))
        .await
        .expect("demo finishes")
        .expect("demo runs");
    for (side, p) in [
        ("agent", &report.agent_presence),
        ("consumer", &report.consumer_presence),
    ] {
        let platform = p.peer_platform.as_ref().expect("a platform from JOINED");
        assert!(
            platform.os.contains(std::env::consts::OS),
            "{side}: {platform:?}"
        );
        assert!(p.peer_viewport.is_some_and(|v| v.width > 0), "{side}");
        assert!(p.statuses_received >= 1, "{side}: {p:?}");
        assert!(p.own_status.is_some(), "{side}");
    }
}

/// The pointer both ways (spec §7.21–§7.22): the customer points at an element and scrolls
/// (`point SELECTOR`, `scroll Y` on `tandem consumer`'s terminal), and the agent holds the
/// latest of each, addressed to the same node of its copy and numbered as the spec says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customers_pointer_and_scroll_reach_the_agent() {
    use tandem_peers::client::{self, ControlChannel};
    use tandem_peers::session::{self, AgentOptions, ChangeSource, CustomerCommand};
    use tandem_protocol::message::{Credential, Role};

    let relay = common::start_relay(|_| {});
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::channel(8);
    let mut opts = common::sample_options(ChangeSource::Live {
        // Runs until the customer ends it.
        generator: tandem_engine::LivePage::new(9),
        per_batch: 2,
        batches: None,
    });
    opts.interval = Duration::from_millis(20);
    opts.commands = Some(cmd_rx);
    let (code, consumer) = common::consumer_session(&relay, opts).await;
    let conn = client::connect(relay.addr, relay.fingerprint, Role::Agent)
        .await
        .expect("connect");
    let (agent, _) = ControlChannel::open_and_join(
        conn,
        client::hello(Role::Agent),
        Credential::Code(code),
        "Alex",
    )
    .await
    .expect("joined");
    let agent = tokio::spawn(session::run_agent(
        agent,
        AgentOptions::default(),
        Instant::now(),
    ));
    for cmd in [
        CustomerCommand::Point("#order-number".into()),
        CustomerCommand::Point("#order-status".into()),
        CustomerCommand::ScrollTo(250),
        CustomerCommand::End,
    ] {
        cmd_tx.send(cmd).await.expect("the consumer takes commands");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = tokio::time::timeout(Duration::from_secs(30), agent)
        .await
        .expect("the agent finishes")
        .expect("task")
        .expect("the agent runs");
    let consumer = tokio::time::timeout(Duration::from_secs(30), consumer)
        .await
        .expect("the consumer finishes")
        .expect("task")
        .expect("the consumer runs");
    let status = {
        let mut c = tandem_engine::Consumer::new(
            parse_html(tandem_peers::demo::SAMPLE_PAGE, Limits::DEFAULT),
            "",
            Limits::DEFAULT,
        );
        let dom = c.dom().clone();
        let _ = c.tree_hash();
        dom.preorder(0)
            .find(|&id| {
                dom.node(id)
                    .and_then(|n| n.element())
                    .is_some_and(|e| e.attr("id") == Some("order-status"))
            })
            .expect("the element")
    };
    let pointer = report
        .customer_pointer
        .expect("the customer's pointer arrived");
    assert_eq!(pointer.node, status, "the latest position wins");
    // Pointers and scrolls are numbered each on their own, from 0 (spec §7.21, §7.22).
    assert_eq!(pointer.seq, 1, "the customer's second POINTER");
    assert_eq!(report.customer_scroll.map(|s| s.seq), Some(0));
    assert_eq!(report.customer_scroll.map(|s| s.y), Some(250));
    // The page changed until the customer ended the session, and END leaves at once on the
    // control stream (spec §7.13): the last patch may still be on the DOM stream when the agent
    // reads it, so the agent holds a verified page, not necessarily the consumer's last one.
    assert!(report.hash.is_some(), "the agent holds a verified page");
    let sent: Vec<u32> = consumer.pointers_sent.iter().map(|&(seq, _)| seq).collect();
    assert_eq!(sent, [0, 1], "the customer's two POINTERs");
    relay.shutdown().await;
}

/// The agent's script numbers its pointers and its scrolls each on their own, from 0 (spec
/// §7.21, §7.22), so that the first of each is not a gap the consumer could take for a loss.
#[test]
fn the_agents_pointers_and_scrolls_are_numbered_from_zero() {
    use tandem_peers::hands::{AgentScript, Step};
    let c = consumer(tandem_peers::demo::SAMPLE_PAGE);
    let mut script = AgentScript::new(vec![
        Step::Pointer("#order-number".into()),
        Step::ScrollWindow(100),
        Step::Pointer("#order-status".into()),
        Step::ScrollWindow(200),
    ]);
    let mut seqs = Vec::new();
    while let Some((_, msg)) = script.next(c.dom()) {
        seqs.push(match msg {
            Message::Pointer(p) => ("pointer", p.seq),
            Message::Scroll(s) => ("scroll", s.seq),
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(
        seqs,
        [("pointer", 0), ("scroll", 0), ("pointer", 1), ("scroll", 1)]
    );
}
