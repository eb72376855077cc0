//! Issue 4: masking at the source (spec §12). Each automatic rule, marker, level and masked
//! attribute; masking that follows changes; refusal of agent input; and the canary checks:
//! random pages and change sequences (property test and fuzz oracle) and every corpus page
//! with canaries injected, never a canary in any frame sent.

mod common;

use proptest::collection::vec;
use proptest::prelude::*;
use tandem_engine::consumer::{Added, ChangeRecord};
use tandem_engine::mask::fuzzing::{self, CANARY, assert_no_canary};
use tandem_engine::mask::{
    BLOCKED, Level, MaskLength, MaskPolicy, Rule, Selector, TEXT_ATTRS, URL_ATTRS,
};
use tandem_engine::{Agent, Consumer, Dom, Element, Name, NodeKind, parse_html, to_html};
use tandem_protocol::compress::DomCompressor;
use tandem_protocol::message::{Click, Input, InputValue, RefusalCode};
use tandem_protocol::{Limits, Message, NodeId, Ns, frame};

const L: Limits = Limits::DEFAULT;

fn keep() -> MaskPolicy {
    let mut p = MaskPolicy::default();
    p.set_length(MaskLength::Keep);
    p
}

/// The body's inner HTML after masking `html` with `policy`.
fn masked(policy: &MaskPolicy, html: &str) -> String {
    let mut dom = parse_html(&format!("<body>{html}</body>"), L);
    policy.apply(&mut dom);
    let out = to_html(&dom);
    let start = out.find("<body>").expect("body") + "<body>".len();
    let end = out.rfind("</body>").expect("body end");
    out[start..end].to_owned()
}

fn find(dom: &Dom, pred: impl Fn(&Element) -> bool) -> NodeId {
    dom.preorder(0)
        .find(|&n| dom.node(n).and_then(|x| x.element()).is_some_and(&pred))
        .expect("element")
}

fn by_id(dom: &Dom, id: &str) -> NodeId {
    find(dom, |e| e.attr("id") == Some(id))
}

fn consumer(policy: MaskPolicy, html: &str) -> (Consumer, Agent) {
    let mut c = Consumer::with_policy(parse_html(html, L), "https://bank.test/", L, policy);
    let mut agent = Agent::new(L);
    send(&mut c, &mut agent);
    (c, agent)
}

/// Sends what is queued as frames; returns the bytes and checks convergence.
fn send(c: &mut Consumer, agent: &mut Agent) -> Vec<u8> {
    c.flush();
    let mut wire = Vec::new();
    while let Some(m) = c.poll_message() {
        let f = frame::to_frame(&m, &L).expect("encode");
        wire.extend_from_slice(&f);
        agent
            .handle_message(frame::decode_exact(&f, &L).expect("decode"))
            .expect("apply");
    }
    while let Some(r) = agent.poll_message() {
        c.handle_message(&r).expect("reply");
    }
    assert_eq!(c.fallbacks(), 0);
    assert_eq!(agent.tree_hash(), Some(c.tree_hash()));
    wire
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

// ---------------------------------------------------------------------------------------------
// Automatic rules.

#[test]
fn password_values_are_masked() {
    let p = keep();
    assert_eq!(
        masked(&p, "<input type=password value=hunter2>"),
        r#"<input type="password" value="*******">"#
    );
    assert_eq!(
        masked(&p, "<input type=PassWord value=x>"),
        r#"<input type="PassWord" value="*">"#
    );
    // Fixed length, the default: the length does not show either.
    assert_eq!(
        masked(
            &MaskPolicy::default(),
            "<input type=password value=hunter2>"
        ),
        r#"<input type="password" value="********">"#
    );
    // The placeholder is not the secret.
    assert_eq!(
        masked(&p, "<input type=password placeholder=Password value=ab>"),
        r#"<input type="password" placeholder="Password" value="**">"#
    );
}

#[test]
fn hidden_input_values_are_masked() {
    assert_eq!(
        masked(&keep(), "<input type=hidden name=csrf value=tok3n>"),
        r#"<input type="hidden" name="csrf" value="*****">"#
    );
}

#[test]
fn card_and_one_time_code_fields_are_masked() {
    for token in [
        "cc-number",
        "cc-csc",
        "cc-exp",
        "cc-exp-month",
        "cc-exp-year",
        "cc-name",
        "cc-given-name",
        "cc-family-name",
        "cc-type",
        "one-time-code",
        "current-password",
        "new-password",
        "section-pay billing cc-number",
        "CC-NUMBER",
    ] {
        let html = format!("<input autocomplete='{token}' value=4111>");
        assert!(
            masked(&keep(), &html).contains(r#"value="****""#),
            "{token}: {}",
            masked(&keep(), &html)
        );
    }
    for token in ["email", "name", "off", "tel"] {
        let html = format!("<input autocomplete='{token}' value=4111>");
        assert!(
            masked(&keep(), &html).contains(r#"value="4111""#),
            "{token}"
        );
    }
    // A textarea's or a select's value is its content.
    assert_eq!(
        masked(
            &keep(),
            "<textarea autocomplete=one-time-code>1234</textarea>"
        ),
        r#"<textarea autocomplete="one-time-code">****</textarea>"#
    );
    assert_eq!(
        masked(
            &keep(),
            "<select autocomplete=cc-exp-month><option value=01>01</option><option value=02 selected>02</option></select>"
        ),
        r#"<select autocomplete="cc-exp-month"><option value="**">**</option><option value="**">**</option></select>"#
    );
    // No unmask below an automatic rule.
    assert!(
        masked(
            &keep(),
            "<select autocomplete=cc-exp-year><option data-tandem-unmask>2031</option></select>"
        )
        .contains(">****</option>")
    );
}

// ---------------------------------------------------------------------------------------------
// Markers, selectors and levels.

#[test]
fn mask_marker_masks_texts_and_attributes_of_the_subtree() {
    let html = "<div data-tandem-mask title='Jane Doe'>Jane <b>Doe</b><img alt='photo of Jane'></div><p>shown</p>";
    assert_eq!(
        masked(&keep(), html),
        r#"<div data-tandem-mask="" title="**** ***">**** <b>***</b><img alt="***** ** ****"></div><p>shown</p>"#
    );
    assert_eq!(
        masked(&MaskPolicy::default(), html),
        r#"<div data-tandem-mask="" title="********">********<b>********</b><img alt="********"></div><p>shown</p>"#
    );
}

#[test]
fn unmask_marker_lifts_an_inherited_mask_but_not_its_own_mask() {
    let html = "<div data-tandem-mask>secret <span data-tandem-unmask>public</span>\
        <span data-tandem-unmask data-tandem-mask>both</span></div>";
    assert_eq!(
        masked(&keep(), html),
        r#"<div data-tandem-mask="">****** <span data-tandem-unmask="">public</span><span data-tandem-unmask="" data-tandem-mask="">****</span></div>"#
    );
}

#[test]
fn block_replaces_the_element_by_an_empty_placeholder() {
    let html = "<div data-tandem-block class=stmt id=s1 width=300 style='width: 300px; color: red; height:2em' title=t>\
        <p>IBAN DE44 5001</p><img src=x.png></div><p>after</p>";
    assert_eq!(
        masked(&MaskPolicy::default(), html),
        format!(
            r#"<div width="300" style="width:300px;height:2em" {BLOCKED}=""></div><p>after</p>"#
        )
    );
    // A marker the page set itself ends last too.
    assert_eq!(
        masked(
            &MaskPolicy::default(),
            "<span data-tandem-blocked=x height=2 title=t>x</span>"
        ),
        format!(r#"<span height="2" {BLOCKED}=""></span>"#)
    );
    // The placeholder is stable: masking it again changes nothing.
    let mut dom = parse_html(&format!("<body>{html}</body>"), L);
    MaskPolicy::default().apply(&mut dom);
    let once = to_html(&dom);
    MaskPolicy::default().apply(&mut dom);
    assert_eq!(to_html(&dom), once);
}

#[test]
fn ignore_drops_input_state_only() {
    let html = "<form data-tandem-ignore><input name=q value=term placeholder=Search>\
        <input type=checkbox checked value=yes><textarea>notes</textarea>\
        <select><option selected>A</option></select></form>";
    assert_eq!(
        masked(&keep(), html),
        r#"<form data-tandem-ignore=""><input name="q" placeholder="Search"><input type="checkbox"><textarea></textarea><select><option>A</option></select></form>"#
    );
}

#[test]
fn selectors_assign_levels() {
    let mut p = keep();
    p.add_selector(Rule::Mask, ".balance, #iban").unwrap();
    p.add_selector(Rule::Block, "iframe.statement").unwrap();
    p.add_selector(Rule::Ignore, "form.search input").unwrap();
    p.add_selector(Rule::Unmask, ".balance > .label").unwrap();
    let html = "<p class='x balance'>12 €<span class=label>EUR</span></p><p id=iban>DE44</p>\
        <iframe class=statement src=s.html></iframe><form class=search><div><input value=q></div></form>";
    assert_eq!(
        masked(&p, html),
        format!(
            r#"<p class="x balance">** *<span class="label">EUR</span></p><p id="iban">****</p><iframe {BLOCKED}=""></iframe><form class="search"><div><input></div></form>"#
        )
    );
}

#[test]
fn selector_subset_parses_and_matches() {
    let el = |name: &str, attrs: &[(&str, &str)]| Element {
        ns: Ns::Html,
        name: name.to_owned().into(),
        attrs: attrs
            .iter()
            .map(|(a, b)| (a.to_string().into(), b.to_string()))
            .collect(),
    };
    let form = el("form", &[("class", "pay card"), ("id", "f")]);
    let div = el("div", &[]);
    let input = el(
        "input",
        &[("type", "text"), ("name", "card-number"), ("data-x", "a b")],
    );
    let m = |s: &str, anc: &[&Element]| s.parse::<Selector>().unwrap().matches(&input, anc);
    let deep = [&form, &div];
    let direct = [&form];
    for (s, want_deep, want_direct) in [
        ("input", true, true),
        ("INPUT", true, true),
        ("*", true, true),
        ("div", false, false),
        ("[name]", true, true),
        ("[type=text]", true, true),
        ("[type='text']", true, true),
        ("[name^=card]", true, true),
        ("[name$=number]", true, true),
        ("[name*=d-n]", true, true),
        ("[data-x~=b]", true, true),
        ("[data-x~=a\\ b]", false, false),
        ("[name^=x]", false, false),
        ("form input", true, true),
        ("form > input", false, true),
        ("form > div > input", true, false),
        ("#f input", true, true),
        (".pay.card input", true, true),
        (".pay.nope input", false, false),
        ("input:not([type=password])", true, true),
        ("input:not([type=text], .x)", false, false),
        ("p, form input", true, true),
        ("form div input", true, false),
        ("div form input", false, false),
    ] {
        assert_eq!(m(s, &deep), want_deep, "{s} under form > div");
        assert_eq!(m(s, &direct), want_direct, "{s} under form");
    }
    for bad in [
        "",
        "a >",
        "a,",
        "[x",
        "[x=]",
        ":hover",
        "a + b",
        "a ~ b",
        "[x='y]",
        ":not(a b)",
    ] {
        assert!(bad.parse::<Selector>().is_err(), "{bad:?} should not parse");
    }
}

#[test]
fn private_mode_masks_all_text_and_inputs_except_unmasked() {
    let mut p = keep();
    p.set_private(true);
    let html = "<style>p{color:red}</style><h1>Hello Jane</h1><input value=abc placeholder=Name>\
        <input type=checkbox checked><nav data-tandem-unmask><a href='/help?topic=x'>Help</a></nav>";
    assert_eq!(
        masked(&p, html),
        r#"<style>p{color:red}</style><h1>***** ****</h1><input value="***" placeholder="****"><input type="checkbox"><nav data-tandem-unmask=""><a href="/help?topic=x">Help</a></nav>"#
    );
    // The head's title too.
    let mut dom = parse_html("<title>Account of Jane</title>", L);
    p.apply(&mut dom);
    assert!(to_html(&dom).contains("<title>******* ** ****</title>"));
}

#[test]
fn every_text_like_attribute_is_masked() {
    let html = "<div data-tandem-mask>\
        <input value=v placeholder=p title=t aria-label=l>\
        <img alt=a src='https://cdn.test/u/jane.png?sig=abc' srcset='a.png?u=1 1x, b.png 2x'>\
        <a href='https://bank.test/acct?id=42#tx'>x</a><a href='mailto:jane@doe.test'>m</a>\
        <iframe srcdoc='<p>hi</p>'></iframe><textarea>typed</textarea>\
        <select><option value=o label=ol selected>opt</option></select>\
        <div contenteditable>edited</div><!--note--></div>";
    assert_eq!(
        masked(&keep(), html),
        concat!(
            r#"<div data-tandem-mask="">"#,
            r#"<input value="*" placeholder="*" title="*" aria-label="*">"#,
            r#"<img alt="*" src="https://cdn.test/u/jane.png?*******" srcset="a.png?*** 1x, b.png 2x">"#,
            r#"<a href="https://bank.test/acct?********">*</a><a href="mailto:*************">*</a>"#,
            r#"<iframe srcdoc="*********"></iframe><textarea>*****</textarea>"#,
            r#"<select><option value="*" label="**">***</option></select>"#,
            r#"<div contenteditable="">******</div><!--****--></div>"#
        )
    );
}

/// The attribute lists of spec §12.4 are the code's, name for name.
#[test]
fn spec_attribute_lists_match_the_code() {
    let spec = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/tandem.md"),
    )
    .expect("spec");
    let section =
        &spec[spec.find("### 12.4").expect("§12.4")..spec.find("### 12.5").expect("§12.5")];
    let names_after = |lead: &str, stop: &str| -> Vec<String> {
        let at = section.find(lead).expect(lead);
        let text = &section[at..];
        let text = &text[..text.find(stop).expect(stop)];
        text.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    let mut text = names_after("these attributes", "- in URL");
    let mut urls = names_after("in URL attributes (", ")");
    text.sort();
    urls.sort();
    let mut want_text: Vec<String> = TEXT_ATTRS.iter().map(|s| s.to_string()).collect();
    let mut want_urls: Vec<String> = URL_ATTRS.iter().map(|s| s.to_string()).collect();
    want_text.sort();
    want_urls.sort();
    assert_eq!(text, want_text);
    assert_eq!(urls, want_urls);
    // And every one of them is masked.
    let mut p = keep();
    p.set_private(true);
    for a in TEXT_ATTRS {
        let out = masked(&p, &format!("<input {a}=secret>"));
        assert!(out.contains(&format!(r#"{a}="******""#)), "{a}: {out}");
    }
    for a in URL_ATTRS {
        let out = masked(&p, &format!("<a {a}='/p?secret'>x</a>"));
        assert!(out.contains(&format!(r#"{a}="/p?******""#)), "{a}: {out}");
    }
}

#[test]
fn fixed_length_hides_lengths_and_keeps_layout_whitespace() {
    let mut p = MaskPolicy::default();
    p.set_length(MaskLength::Fixed(3));
    assert_eq!(
        masked(
            &p,
            "<div data-tandem-mask>\n  <p>a</p>\n  <p>a much longer text</p><input value=''></div>"
        ),
        "<div data-tandem-mask=\"\">\n  <p>***</p>\n  <p>***</p><input value=\"***\"></div>"
    );
}

#[test]
fn config_file_sets_the_policy() {
    let p = MaskPolicy::from_config(
        "# bank\nprivate\nlength keep\nmask .balance\nblock iframe\nignore .search input\nunmask .public, nav\n",
    )
    .unwrap();
    assert!(p.is_private());
    assert_eq!(p.length(), MaskLength::Keep);
    assert_eq!(
        masked(&p, "<nav>Menu</nav><p>Hi</p><iframe></iframe>"),
        format!(r#"<nav>Menu</nav><p>**</p><iframe {BLOCKED}=""></iframe>"#)
    );
    assert_eq!(
        MaskPolicy::from_config("length 3\n").unwrap().length(),
        MaskLength::Fixed(3)
    );
    for bad in ["frobnicate x", "mask :hover", "length long", "length 999"] {
        assert!(MaskPolicy::from_config(bad).is_err(), "{bad}");
    }
}

// ---------------------------------------------------------------------------------------------
// Masking follows changes.

const FORM: &str = "<!DOCTYPE html><body><div id=box><p id=msg>hello</p></div>\
    <div id=vault data-tandem-mask><p id=inner>x</p></div>\
    <form><input id=pw type=password value=''><input id=name value=Jane>\
    <textarea id=notes data-tandem-mask></textarea></form></body>";

fn pol() -> MaskPolicy {
    let mut p = MaskPolicy::default();
    p.add_selector(Rule::Mask, ".secret").unwrap();
    p.add_selector(Rule::Block, ".gone").unwrap();
    p.add_selector(Rule::Ignore, ".quiet").unwrap();
    p
}

#[test]
fn a_class_added_later_masks_from_then_on() {
    let (mut c, mut agent) = consumer(pol(), FORM);
    let p = by_id(c.dom(), "msg");
    c.set_attr(p, "class", "secret").unwrap();
    let wire = send(&mut c, &mut agent);
    assert!(!contains(&wire, "hello"));
    assert!(
        agent
            .to_html()
            .contains(r#"<p id="msg" class="secret">********</p>"#)
    );
    let text = c.dom().children(p)[0];
    c.set_text(text, "top secret").unwrap();
    let wire = send(&mut c, &mut agent);
    assert!(!contains(&wire, "top secret"));
    assert!(wire.is_empty(), "fixed-length stars do not change");
    c.set_attr(p, "title", "Jane").unwrap();
    assert!(!contains(&send(&mut c, &mut agent), "Jane"));
}

#[test]
fn a_node_moved_under_a_masked_parent_is_masked() {
    let (mut c, mut agent) = consumer(pol(), FORM);
    let (p, vault) = (by_id(c.dom(), "msg"), by_id(c.dom(), "vault"));
    c.move_node(p, vault, 0).unwrap();
    let wire = send(&mut c, &mut agent);
    assert!(!contains(&wire, "hello"));
    assert_eq!(
        c.policy().level_of(c.dom(), c.dom().children(p)[0]),
        Level::Masked
    );
    // The same through change records.
    let (mut c, mut agent) = consumer(pol(), FORM);
    let (p, box_, vault) = (
        by_id(c.dom(), "msg"),
        by_id(c.dom(), "box"),
        by_id(c.dom(), "vault"),
    );
    c.apply_records([
        ChangeRecord::ChildList {
            target: box_,
            removed: vec![p],
            added: vec![],
            previous_sibling: 0,
        },
        ChangeRecord::ChildList {
            target: vault,
            removed: vec![],
            added: vec![Added::Existing(p)],
            previous_sibling: 0,
        },
    ])
    .unwrap();
    assert!(!contains(&send(&mut c, &mut agent), "hello"));
}

#[test]
fn inserted_content_is_masked_by_its_new_place() {
    let (mut c, mut agent) = consumer(pol(), FORM);
    let vault = by_id(c.dom(), "vault");
    let secret = parse_html("<body><p title=Jane>Jane Doe</p></body>", L);
    let p = find(&secret, |e| e.name == "p");
    c.insert_copy(vault, 0, &secret, p).unwrap();
    let wire = send(&mut c, &mut agent);
    assert!(!contains(&wire, "Jane"));
    assert!(
        agent
            .to_html()
            .contains(r#"<p title="********">********</p>"#)
    );
}

#[test]
fn masked_field_edits_send_nothing_with_fixed_length() {
    let (mut c, mut agent) = consumer(pol(), FORM);
    let pw = by_id(c.dom(), "pw");
    let mut typed = String::new();
    for ch in "correct horse".chars() {
        typed.push(ch);
        c.set_attr(pw, "value", &typed).unwrap();
        assert!(send(&mut c, &mut agent).is_empty(), "after {typed:?}");
    }
    // A masked textarea's text: the first text node appears once, then never changes.
    let notes = by_id(c.dom(), "notes");
    let t = c
        .insert(notes, 0, vec![(NodeKind::Text("a".into()), 0)])
        .unwrap();
    let first = send(&mut c, &mut agent);
    assert!(!contains(&first, "a\u{0}") && !first.is_empty());
    for v in ["ab", "abc", "", "a much longer note"] {
        c.set_text(t, v).unwrap();
        assert!(send(&mut c, &mut agent).is_empty(), "{v:?}");
    }
}

/// Typing into a masked editable element (contenteditable) with fixed length: whitespace-only
/// text is what the customer typed, not layout, so it is stars like any other text and no edit
/// sends anything; `contenteditable="false"` inside ends the editable region.
#[test]
fn masked_editable_text_never_depends_on_its_content() {
    let mut p = MaskPolicy::default();
    p.set_length(MaskLength::Fixed(3));
    assert_eq!(
        masked(
            &p,
            "<div data-tandem-mask contenteditable> <b>x</b>   <i contenteditable=false> </i></div>"
        ),
        "<div data-tandem-mask=\"\" contenteditable=\"\">***<b>***</b>***<i contenteditable=\"false\"> </i></div>"
    );
    let (mut c, mut agent) = consumer(p, "<div id=ed data-tandem-mask contenteditable>draft</div>");
    let ed = by_id(c.dom(), "ed");
    let t = c.dom().children(ed)[0];
    for v in ["   ", "draft 2", "", " ", "a much longer draft"] {
        c.set_text(t, v).unwrap();
        assert!(send(&mut c, &mut agent).is_empty(), "{v:?}");
    }
    // Making the element editable later re-masks its whitespace-only text too.
    let (mut c, mut agent) = consumer(
        {
            let mut p = MaskPolicy::default();
            p.set_length(MaskLength::Fixed(3));
            p
        },
        "<div id=ed data-tandem-mask>  </div>",
    );
    let ed = by_id(c.dom(), "ed");
    assert_eq!(
        c.dom().text(c.dom().children(ed)[0]),
        Some("  "),
        "layout whitespace"
    );
    c.set_attr(ed, "contenteditable", "true").unwrap();
    let _ = send(&mut c, &mut agent);
    assert_eq!(c.dom().text(c.dom().children(ed)[0]), Some("***"));
}

#[test]
fn keep_length_edits_depend_only_on_the_length() {
    let mut p = pol();
    p.set_length(MaskLength::Keep);
    let (mut c, mut agent) = consumer(p, FORM);
    let pw = by_id(c.dom(), "pw");
    c.set_attr(pw, "value", "abc").unwrap();
    let a = send(&mut c, &mut agent);
    c.set_attr(pw, "value", "xyz").unwrap();
    assert!(
        send(&mut c, &mut agent).is_empty(),
        "same length, same stars"
    );
    c.set_attr(pw, "value", "wxyz").unwrap();
    let b = send(&mut c, &mut agent);
    assert!(!a.is_empty() && !b.is_empty());
    assert!(agent.to_html().contains(r#"value="****""#));
}

#[test]
fn ignored_fields_never_send_their_changes() {
    let (mut c, mut agent) = consumer(pol(), FORM);
    let name = by_id(c.dom(), "name");
    c.set_attr(name, "class", "quiet").unwrap();
    let wire = send(&mut c, &mut agent);
    assert!(
        !contains(&wire, "Jane"),
        "the value already there is dropped"
    );
    for v in ["J", "Jo", "John"] {
        c.set_attr(name, "value", v).unwrap();
        assert!(send(&mut c, &mut agent).is_empty());
    }
    assert!(
        agent
            .to_html()
            .contains(r#"<input id="name" class="quiet">"#)
    );
}

#[test]
fn an_element_blocked_later_loses_its_content_and_ignores_changes_inside() {
    let (mut c, mut agent) = consumer(pol(), FORM);
    let (box_, p) = (by_id(c.dom(), "box"), by_id(c.dom(), "msg"));
    let text = c.dom().children(p)[0];
    c.set_attr(box_, "class", "gone").unwrap();
    let wire = send(&mut c, &mut agent);
    assert!(!contains(&wire, "hello"));
    assert!(
        agent
            .to_html()
            .contains(&format!(r#"<div {BLOCKED}=""></div>"#))
    );
    // Ids inside are still accepted; their changes go nowhere.
    c.set_text(text, "new secret").unwrap();
    c.set_attr(p, "title", "x").unwrap();
    let kid = c
        .insert(p, 0, vec![(NodeKind::Text("more".into()), 0)])
        .unwrap();
    c.set_text(kid, "still more").unwrap();
    c.apply_records([ChangeRecord::ChildList {
        target: p,
        removed: vec![text],
        added: vec![],
        previous_sibling: 0,
    }])
    .unwrap();
    assert!(send(&mut c, &mut agent).is_empty());
    // The placeholder stays a placeholder, whatever its attributes do.
    c.remove_attr(box_, BLOCKED).unwrap();
    c.set_attr(box_, "class", "open").unwrap();
    assert!(send(&mut c, &mut agent).is_empty());
    // Content inserted into it never leaves.
    let subtree = vec![
        (
            NodeKind::Element(Element {
                ns: Ns::Html,
                name: "p".into(),
                attrs: vec![("title".into(), "IBAN".into())],
            }),
            1,
        ),
        (NodeKind::Text("DE44".into()), 0),
    ];
    c.insert(box_, 0, subtree).unwrap();
    assert!(send(&mut c, &mut agent).is_empty());
}

#[test]
fn blocked_elements_in_an_inserted_listing_arrive_empty() {
    let (mut c, mut agent) = consumer(pol(), FORM);
    let box_ = by_id(c.dom(), "box");
    let src = parse_html(
        "<body><section><div class=gone><p>IBAN DE44</p><p>x</p></div><p id=after>ok</p></section></body>",
        L,
    );
    let s = find(&src, |e| e.name == "section");
    let first = c.insert_copy(box_, 0, &src, s).unwrap();
    let wire = send(&mut c, &mut agent);
    assert!(!contains(&wire, "DE44"));
    assert!(agent.to_html().contains(&format!(
        r#"<section><div {BLOCKED}=""></div><p id="after">ok</p></section>"#
    )));
    // Ids are as the listing numbers them: `after` is entry 6 (section, div, p, text, p, text).
    assert_eq!(by_id(c.dom(), "after"), first + 6);
}

#[test]
fn update_to_masks_its_target_and_shows_what_is_unmasked_again() {
    let (mut c, mut agent) = consumer(pol(), "<body><p class=secret>one</p></body>");
    let mut next = parse_html("<body><p class=secret>two</p><p>three</p></body>", L);
    c.update_to(&mut next).unwrap();
    let wire = send(&mut c, &mut agent);
    assert!(!contains(&wire, "two") && contains(&wire, "three"));
    // The page drops the class: the new state's text shows again.
    let mut next = parse_html("<body><p>four</p><p>three</p></body>", L);
    c.update_to(&mut next).unwrap();
    assert!(contains(&send(&mut c, &mut agent), "four"));
}

#[test]
fn a_new_policy_masks_what_is_already_there() {
    let (mut c, mut agent) = consumer(MaskPolicy::default(), FORM);
    let mut p = MaskPolicy::default();
    p.set_private(true);
    c.set_policy(p);
    let wire = send(&mut c, &mut agent);
    assert!(!wire.is_empty());
    assert!(!agent.to_html().contains("hello") && !agent.to_html().contains("Jane"));
}

// ---------------------------------------------------------------------------------------------
// The agent cannot reach masked data.

fn input(node: NodeId, value: InputValue) -> Message {
    Message::Input(Input { id: 9, node, value })
}

fn refusal(c: &Consumer, msg: &Message) -> Option<RefusalCode> {
    c.check_action(msg).err().map(|r| {
        assert_eq!(r.id, 9);
        assert!(!r.detail.contains("Jane") && !r.detail.contains("hello"));
        r.code
    })
}

fn click(node: NodeId) -> Message {
    Message::Click(Click {
        id: 9,
        node,
        x: 5000,
        y: 5000,
        button: 0,
        modifiers: 0,
    })
}

const FIELDS: &str = "<body><input id=pw type=password><input id=h type=hidden>\
    <input id=cc autocomplete=cc-number><input id=txt><input id=cb type=checkbox>\
    <select id=sel><option>a</option></select><textarea id=ta></textarea>\
    <div data-tandem-mask><input id=inmask></div><input id=q class=quiet>\
    <div class=gone id=g><input id=ing></div><p id=para>hello</p></body>";

#[test]
fn agent_input_into_masked_fields_is_refused() {
    let (c, _) = consumer(pol(), FIELDS);
    let d = c.dom();
    let t = |s: &str| InputValue::Text(s.into());
    for id in ["pw", "h", "cc", "inmask", "q"] {
        let node = by_id(d, id);
        assert_eq!(
            refusal(&c, &input(node, t("Jane"))),
            Some(RefusalCode::Masked),
            "{id}"
        );
        // Whatever the value: the refusal never depends on the field's content or kind.
        assert_eq!(
            refusal(&c, &input(node, InputValue::Checked(true))),
            Some(RefusalCode::Masked),
            "{id}"
        );
        assert_eq!(refusal(&c, &click(node)), Some(RefusalCode::Masked), "{id}");
    }
    let g = find(d, |e| e.attr(BLOCKED).is_some());
    assert_eq!(refusal(&c, &input(g, t("x"))), Some(RefusalCode::Masked));
    assert_eq!(refusal(&c, &click(g)), Some(RefusalCode::Masked));
    for id in ["txt", "ta", "cb", "sel", "para"] {
        assert_eq!(refusal(&c, &input(by_id(d, id), t("ok"))), None, "{id}");
        assert_eq!(refusal(&c, &click(by_id(d, id))), None, "{id}");
    }
    assert_eq!(
        refusal(&c, &input(999_999, t("x"))),
        Some(RefusalCode::NoSuchNode)
    );
}

/// The consumer is the masking `Protection` of the action authority (spec §13.3): in `Full`
/// mode input into visible fields is applied, into masked ones refused with `Masked`.
#[test]
fn the_authority_refuses_masked_fields_through_the_consumer() {
    use std::time::Instant;
    use tandem_engine::hands::{Authority, HandsConfig, Verdict};
    use tandem_protocol::message::Mode;
    let (c, _) = consumer(pol(), FIELDS);
    let mut a = Authority::new(HandsConfig::default(), "https://bank.test/");
    a.set_mode(Mode::Full);
    let now = Instant::now();
    let d = c.dom();
    let t = InputValue::Text("Jane".into());
    for id in ["pw", "h", "cc", "inmask", "q"] {
        let v = a.handle(&input(by_id(d, id), t.clone()), d, &c, now);
        assert_eq!(v.refusal(), Some(RefusalCode::Masked), "{id}");
    }
    let v = a.handle(&input(by_id(d, "txt"), t.clone()), d, &c, now);
    assert!(matches!(v, Verdict::Apply(_)), "{v:?}");
    // The policy alone protects the same nodes.
    let v = a.handle(&input(by_id(d, "pw"), t), d, c.policy(), now);
    assert_eq!(v.refusal(), Some(RefusalCode::Masked));
}

#[test]
fn private_mode_refuses_input_except_into_unmasked_fields() {
    let mut p = MaskPolicy::default();
    p.set_private(true);
    let (c, _) = consumer(
        p,
        "<body><input id=a><div data-tandem-unmask><input id=b></div></body>",
    );
    let d = c.dom();
    let t = InputValue::Text("x".into());
    assert_eq!(
        refusal(&c, &input(by_id(d, "a"), t.clone())),
        Some(RefusalCode::Masked)
    );
    assert_eq!(refusal(&c, &input(by_id(d, "b"), t)), None);
}

#[test]
fn ids_inside_a_blocked_element_are_not_in_the_page() {
    let (mut c, _) = consumer(pol(), FORM);
    let (box_, p) = (by_id(c.dom(), "box"), by_id(c.dom(), "msg"));
    c.set_attr(box_, "class", "gone").unwrap();
    assert!(c.protects_node(p));
    assert_eq!(
        refusal(&c, &input(p, InputValue::Text("x".into()))),
        Some(RefusalCode::NoSuchNode)
    );
    assert_eq!(refusal(&c, &click(box_)), Some(RefusalCode::Masked));
}

// ---------------------------------------------------------------------------------------------
// Canaries.

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Random pages with canaries in maskable places and random change sequences: the canary
    /// never appears in a frame, the compressed stream or the consumer's tree.
    #[test]
    fn canary_never_leaves(data in vec(any::<u8>(), 0..400)) {
        fuzzing::mask_canary(&data);
    }
}

#[test]
fn mask_canary_regressions() {
    for path in common::regression_inputs("mask_canary") {
        eprintln!("replaying {}", path.display());
        fuzzing::mask_canary(&std::fs::read(&path).expect("read input"));
    }
}

/// Plants canaries on a parsed page: in every text (style sheets aside), in every
/// text-like attribute and URL query, and a form of sensitive fields at the end of the body.
fn plant(dom: &mut Dom) {
    let ids: Vec<NodeId> = dom.preorder(0).collect();
    for n in ids {
        let Some(node) = dom.node(n) else { continue };
        match &node.kind {
            NodeKind::Text(t) => {
                let in_style = dom
                    .parent(n)
                    .and_then(|p| dom.node(p))
                    .and_then(|p| p.element())
                    .is_some_and(|e| e.name == "style");
                if !in_style {
                    let t = format!("{t}{CANARY}");
                    dom.set_text(n, &t).unwrap();
                }
            }
            NodeKind::Element(e) => {
                let edits: Vec<(Name, String)> = e
                    .attrs
                    .iter()
                    .filter_map(|(k, v)| match &**k {
                        "title" | "alt" | "placeholder" | "aria-label" | "value" => {
                            Some((k.clone(), format!("{v}{CANARY}")))
                        }
                        "href" | "src" if !v.contains('?') && !v.contains('#') => {
                            Some((k.clone(), format!("{v}?{CANARY}")))
                        }
                        _ => None,
                    })
                    .collect();
                for (k, v) in edits {
                    dom.set_attr(n, &k, &v).unwrap();
                }
                let _ = dom.set_attr(n, "title", CANARY);
            }
            _ => {}
        }
    }
}

const SENSITIVE: &str = "<form><input type=password value=C><input type=hidden value=C>\
    <input autocomplete=cc-number value=C><input autocomplete=one-time-code value=C>\
    <textarea autocomplete=cc-csc>C</textarea><div data-tandem-block><p title=C>C</p></div>\
    <div data-tandem-mask title=C>C<a href='https://x/?C'>C</a></div></form>";

fn append_sensitive(dom: &mut Dom) {
    let body = dom.preorder(0).find(|&n| {
        dom.node(n)
            .and_then(|x| x.element())
            .is_some_and(|e| e.name == "body")
    });
    let extra = parse_html(
        &format!("<body>{}</body>", SENSITIVE.replace('C', CANARY)),
        L,
    );
    let xb = find(&extra, |e| e.name == "body");
    let Some(body) = body else { return };
    for &k in extra.children(xb) {
        let listing = tandem_engine::patch::subtree(&extra, k);
        let prev = dom.children(body).last().copied().unwrap_or(0);
        let first = dom.next_id();
        tandem_engine::patch::Op::Insert {
            parent: body,
            prev,
            first,
            nodes: listing,
        }
        .apply(dom)
        .unwrap();
    }
}

/// Every corpus page: with private mode and canaries everywhere, and with the default policy
/// and a form of sensitive fields, no canary in the snapshot frames (raw or compressed); then
/// the next recorded state of the page (if any) through the diff.
#[test]
fn corpus_pages_with_canaries_never_leak() {
    for (name, html) in common::pages() {
        for private in [true, false] {
            let mut dom = parse_html(&html, L);
            if private {
                plant(&mut dom);
            }
            append_sensitive(&mut dom);
            let mut p = MaskPolicy::default();
            p.set_private(private);
            let mut c = Consumer::with_policy(dom, "https://x.test/", L, p);
            let mut agent = Agent::new(L);
            let mut z = DomCompressor::new().unwrap();
            let mut wire = Vec::new();
            while let Some(m) = c.poll_message() {
                let f = frame::to_frame(&m, &L).unwrap();
                assert_no_canary(&f, &format!("{name} (private {private})"));
                wire.extend_from_slice(&f);
                agent.handle_message(m).unwrap();
            }
            let mut packed = Vec::new();
            z.compress(&wire, &mut packed).unwrap();
            assert_no_canary(&packed, &format!("{name} compressed"));
            assert_eq!(agent.tree_hash(), Some(c.tree_hash()), "{name}");
            // Changes: the page again with canaries, through the diff.
            let mut next = parse_html(&html, L);
            if private {
                plant(&mut next);
            }
            append_sensitive(&mut next);
            c.update_to(&mut next).unwrap();
            c.flush();
            while let Some(m) = c.poll_message() {
                assert_no_canary(&frame::to_frame(&m, &L).unwrap(), &format!("{name} patch"));
            }
        }
    }
}

#[test]
fn recorded_states_with_canaries_never_leak() {
    for (name, states) in common::state_dirs() {
        let mut p = MaskPolicy::default();
        p.set_private(true);
        let mut first = parse_html(&states[0], L);
        plant(&mut first);
        let mut c = Consumer::with_policy(first, "u", L, p);
        let mut agent = Agent::new(L);
        let mut z = DomCompressor::new().unwrap();
        fuzzing::pump(&mut c, &mut agent, &mut z);
        for html in &states[1..] {
            let mut next = parse_html(html, L);
            plant(&mut next);
            c.update_to(&mut next).unwrap();
            c.flush();
            fuzzing::pump(&mut c, &mut agent, &mut z);
        }
        eprintln!("{name}: {} states", states.len());
    }
}
