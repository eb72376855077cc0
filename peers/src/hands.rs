//! The agent's hands in a live session: the consumer's [`ConsumerHands`] judges and carries out
//! what the agent does, the agent's [`AgentScript`] does it (spec §7.21–§7.28, §13).
//!
//! ```text
//!  agent                                  relay                          consumer
//!  AgentScript ── POINTER, SCROLL ─── datagrams ──────────────────► ConsumerHands::on_message
//!              ── HIGHLIGHT CLICK INPUT NAVIGATE ── actions stream ►   ├ Authority::handle (mode,
//!              ── MODE Request ─────── control ───────────────────►   │   pause, node, masking,
//!  AgentScript ◄── REFUSED, MODE Grant/Deny/Set ── control ◄────────   │   navigation, value)
//!                                                                    └ effect on the page: a
//!                                                                      value set (→ PATCH), a
//!                                                                      ring, a highlight, …
//! ```
//!
//! Every decision is the engine's [`Authority`]; this module only carries its effects out on
//! the reference consumer's page (which has no browser: a form value becomes an attribute or a
//! text change that the agent sees in the next patch, a navigation loads the page file the URL
//! names when the consumer shares a site directory) and keeps the log the demo prints.
//! Nothing here does I/O except reading that page file; the session pumps in
//! [`crate::session`] move the messages.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tandem_engine::dom::{Dom, NodeKind};
use tandem_engine::hands::{Action, Authority, Effect, HandsConfig, ModeOutcome, Verdict};
use tandem_engine::mask::Selector;
use tandem_engine::{Consumer, EngineError, parse_html};
use tandem_protocol::message::{
    Click, Highlight, Input, InputValue, Mode, ModeChange, ModeOp, Navigate, Pointer, RefusalCode,
    Refused, Scroll,
};
use tandem_protocol::{Message, NodeId};

/// How the customer answers an agent's request for a higher mode when the configuration asks
/// for consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Consent {
    /// The customer agrees.
    Grant,
    /// The customer refuses.
    Deny,
}

/// The consumer's settings for the agent's hands.
#[derive(Debug, Clone)]
pub struct HandsOptions {
    /// The mode the customer grants when the agent joins (a `MODE Set` is sent unless it is
    /// `Follow`, the mode every session starts in).
    pub mode: Mode,
    /// What the consumer allows beyond the mode table.
    pub config: HandsConfig,
    /// The customer's answer to mode requests.
    pub consent: Consent,
    /// Where a same-site navigation finds its page: the URL's path names a file under this
    /// directory (`/orders` → `orders.html`, `orders/index.html` or `orders`). Without it, an
    /// allowed navigation is logged and the page stays.
    pub site: Option<PathBuf>,
}

impl Default for HandsOptions {
    fn default() -> Self {
        HandsOptions {
            mode: Mode::Follow,
            config: HandsConfig::default(),
            consent: Consent::Deny,
            site: None,
        }
    }
}

/// What became of one agent message at the consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The action reached the page; `effect` says what it did there.
    Landed {
        /// What the page shows or did.
        effect: String,
    },
    /// Refused with a `REFUSED` the agent sees.
    Refused {
        /// The refusal code (spec §7.28).
        code: String,
    },
    /// Dropped without an answer: a refused or stale datagram (`POINTER`, `SCROLL`).
    Ignored {
        /// Why, when it was refused rather than stale.
        code: Option<String>,
    },
    /// A mode request was answered (`grant` or `deny`).
    Answered {
        /// The answer.
        answer: String,
        /// The mode in force afterwards.
        mode: String,
    },
}

/// One line of the consumer's log of the agent's hands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionRecord {
    /// The action (`pointer`, `click`, `mode`, …).
    pub action: String,
    /// The element it was addressed to (`window` for the window, empty for none).
    pub target: String,
    /// The mode the session was in when the message arrived.
    pub mode: String,
    /// What became of it.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The consumer's side of the agent's hands: the engine's [`Authority`] and the effects it
/// allows, carried out on the consumer's page.
#[derive(Debug)]
pub struct ConsumerHands {
    authority: Authority,
    consent: Consent,
    site: Option<PathBuf>,
    log: Vec<ActionRecord>,
}

impl ConsumerHands {
    /// The hands of a session on the page at `url`.
    pub fn new(opts: &HandsOptions, url: &str) -> Self {
        ConsumerHands {
            authority: Authority::new(opts.config.clone(), url),
            consent: opts.consent,
            site: opts.site.clone(),
            log: Vec::new(),
        }
        .with_mode(opts.mode)
    }

    fn with_mode(mut self, mode: Mode) -> Self {
        if mode != Mode::Follow {
            self.authority.set_mode(mode);
        }
        self
    }

    /// The message that tells the agent the session's starting mode, when it is not `Follow`.
    pub fn announce(&self) -> Option<Message> {
        (self.authority.mode() != Mode::Follow).then(|| {
            Message::Mode(ModeChange {
                op: ModeOp::Set,
                mode: self.authority.mode(),
            })
        })
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        self.authority.mode()
    }

    /// The engine's authority (for pause, resume and the customer's mode changes).
    pub fn authority_mut(&mut self) -> &mut Authority {
        &mut self.authority
    }

    /// What happened to each agent message so far.
    pub fn log(&self) -> &[ActionRecord] {
        &self.log
    }

    /// Judges one message from the agent at `now` and carries its effect out on `consumer`'s
    /// page. Returns the message to answer with (`REFUSED`, or `MODE Grant`/`Deny`), if any.
    /// `Ok(None)` for messages that are not the hands' (the caller hands those to the engine).
    ///
    /// # Errors
    ///
    /// [`HandsError::Unexpected`] when the agent sends a mode change only the consumer may
    /// send (spec §7.27); [`HandsError::Engine`] when carrying out an allowed effect fails.
    pub fn on_message(
        &mut self,
        msg: &Message,
        consumer: &mut Consumer,
        now: Instant,
    ) -> Result<Option<Message>, HandsError> {
        self.authority.handle_timeout(now);
        let mode = mode_name(self.authority.mode()).to_owned();
        if let Message::Mode(m) = msg {
            return match self.authority.on_mode(*m) {
                ModeOutcome::Unexpected => Err(HandsError::Unexpected(m.op)),
                ModeOutcome::Reply(reply) => Ok(Some(self.answered(mode, reply))),
                ModeOutcome::AwaitingConsent(_) => {
                    match self.authority.consent(self.consent == Consent::Grant) {
                        Some(reply) => Ok(Some(self.answered(mode, reply))),
                        None => Ok(None),
                    }
                }
            };
        }
        let Some(action) = Action::of(msg) else {
            return Ok(None);
        };
        let target = match msg {
            Message::Navigate(n) => n.url.clone(),
            _ => target_of(msg).map_or_else(String::new, |n| describe(consumer.dom(), n)),
        };
        let verdict = self.authority.handle(msg, consumer.dom(), &*consumer, now);
        let (outcome, reply) = match verdict {
            Verdict::Apply(effect) => {
                let effect = self.carry_out(effect, consumer, now)?;
                (Outcome::Landed { effect }, None)
            }
            Verdict::Refuse(r) => (
                Outcome::Refused {
                    code: format!("{:?}", r.code),
                },
                Some(Message::Refused(r)),
            ),
            Verdict::Ignore(code) => (
                Outcome::Ignored {
                    code: code.map(|c| format!("{c:?}")),
                },
                None,
            ),
        };
        self.log.push(ActionRecord {
            action: action.name().to_owned(),
            target,
            mode,
            outcome,
        });
        Ok(reply)
    }

    fn answered(&mut self, mode: String, reply: ModeChange) -> Message {
        self.log.push(ActionRecord {
            action: "mode request".to_owned(),
            target: mode_name(reply.mode).to_owned(),
            mode,
            outcome: Outcome::Answered {
                answer: if reply.op == ModeOp::Grant {
                    "grant"
                } else {
                    "deny"
                }
                .to_owned(),
                mode: mode_name(self.authority.mode()).to_owned(),
            },
        });
        Message::Mode(reply)
    }

    /// Carries an allowed effect out on the reference consumer's page and describes it.
    fn carry_out(
        &mut self,
        effect: Effect,
        consumer: &mut Consumer,
        now: Instant,
    ) -> Result<String, HandsError> {
        let dom = consumer.dom();
        Ok(match effect {
            Effect::Pointer(Pointer { node, x, y, .. }) => {
                format!("cursor at {x},{y} of {}", describe(dom, node))
            }
            Effect::Highlight { node, until } => format!(
                "box around {} for {} ms",
                describe(dom, node),
                until.saturating_duration_since(now).as_millis()
            ),
            Effect::ClearHighlight { node } => {
                format!("box around {} cleared", describe(dom, node))
            }
            Effect::Wiggle(Click { node, .. }) => {
                format!("cursor wiggles on {}", describe(dom, node))
            }
            Effect::Scroll(Scroll { node, x, y, .. }) => {
                format!("{} scrolled to {x},{y}", describe(dom, node))
            }
            Effect::Click(Click { node, x, y, .. }) => {
                format!("ring at {x},{y} of {}", describe(dom, node))
            }
            Effect::Input(input) => {
                let what = describe(dom, input.node);
                // The change waits for the session's next flush, which comes when the agent
                // has acknowledged what was sent (one patch in flight, crate::pump).
                set_value(consumer, &input)?;
                format!("{what} filled in")
            }
            Effect::Navigate(Navigate { url, .. }) => self.navigate(&url, consumer)?,
        })
    }

    fn navigate(&mut self, url: &str, consumer: &mut Consumer) -> Result<String, HandsError> {
        let cleared = self.authority.navigated(url).len();
        let file = self.site.as_deref().and_then(|root| page_for(root, url));
        let Some(file) = file else {
            return Ok(format!(
                "navigation to {url} allowed ({cleared} highlights cleared); no page file for it"
            ));
        };
        let html = std::fs::read_to_string(&file).map_err(|e| HandsError::Page {
            path: file.clone(),
            error: e.to_string(),
        })?;
        let mut target = parse_html(&html, *consumer.limits());
        consumer.update_to(&mut target)?;
        Ok(format!("navigated to {url} ({})", file.display()))
    }
}

/// The node an action message is addressed to (0 is the window), if it names one.
fn target_of(msg: &Message) -> Option<NodeId> {
    match msg {
        Message::Pointer(p) => Some(p.node),
        Message::Scroll(s) => Some(s.node),
        Message::Highlight(h) => Some(h.node),
        Message::Click(c) => Some(c.node),
        Message::Input(i) => Some(i.node),
        _ => None,
    }
}

/// Why the consumer's hands stopped a session.
#[derive(Debug, thiserror::Error)]
pub enum HandsError {
    /// The agent sent a mode change only the consumer may send.
    #[error("the agent sent MODE {0:?}, which only the consumer may send")]
    Unexpected(ModeOp),
    /// Carrying out an effect failed in the engine.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The page a navigation names could not be read.
    #[error("{path}: {error}")]
    Page {
        /// The page file.
        path: PathBuf,
        /// What went wrong.
        error: String,
    },
}

/// The file under `root` that a same-site URL names: its path, as `NAME.html`,
/// `NAME/index.html` or `NAME` itself; only plain path segments (no `..`, no hidden names), so
/// a URL never reaches outside `root`.
pub fn page_for(root: &Path, url: &str) -> Option<PathBuf> {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme
        .find('/')
        .map_or("", |i| &after_scheme[i..])
        .split(['?', '#'])
        .next()
        .unwrap_or("");
    let mut file = root.to_path_buf();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        if seg.starts_with('.') || seg.contains('\\') {
            return None;
        }
        file.push(seg);
    }
    let candidates = [
        file.with_extension("html"),
        file.join("index.html"),
        file.clone(),
    ];
    candidates.into_iter().find(|f| f.is_file())
}

/// Sets a form field's value on the consumer's page as the reference consumer models it: a
/// text input's `value` attribute, a `textarea`'s or contenteditable element's text, a
/// checkbox's `checked` attribute, a `select`'s `selected` options. The consumer masks what it
/// records (spec §12), so what the agent sees of a masked field never depends on the value.
fn set_value(consumer: &mut Consumer, input: &Input) -> Result<(), EngineError> {
    let node = input.node;
    let name = match consumer.dom().node(node).map(|n| &n.kind) {
        Some(NodeKind::Element(e)) => e.name.clone(),
        _ => return Ok(()),
    };
    match &input.value {
        InputValue::Text(text) if name == "input" => consumer.set_attr(node, "value", text),
        InputValue::Text(text) => {
            let children = consumer.dom().children(node).to_vec();
            let first_text = children.iter().copied().find(|&c| {
                matches!(
                    consumer.dom().node(c).map(|n| &n.kind),
                    Some(NodeKind::Text(_))
                )
            });
            for &c in &children {
                if Some(c) != first_text {
                    consumer.remove(c)?;
                }
            }
            match first_text {
                Some(t) => consumer.set_text(t, text),
                None => consumer
                    .insert(node, 0, vec![(NodeKind::Text(text.clone()), 0)])
                    .map(|_| ()),
            }
        }
        InputValue::Checked(true) => consumer.set_attr(node, "checked", ""),
        InputValue::Checked(false) => consumer.remove_attr(node, "checked"),
        InputValue::Selected(indexes) => {
            let options: Vec<NodeId> = consumer
                .dom()
                .preorder(node)
                .filter(|&id| tag_of(consumer.dom(), id) == Some("option"))
                .collect();
            for (i, option) in options.into_iter().enumerate() {
                let on = indexes.contains(&(i as u32));
                let has = consumer
                    .dom()
                    .node(option)
                    .and_then(|n| n.element())
                    .is_some_and(|e| e.attr("selected").is_some());
                match (on, has) {
                    (true, false) => consumer.set_attr(option, "selected", "")?,
                    (false, true) => consumer.remove_attr(option, "selected")?,
                    _ => {}
                }
            }
            Ok(())
        }
    }
}

fn tag_of(dom: &Dom, id: NodeId) -> Option<&str> {
    dom.node(id)?.element().map(|e| &*e.name)
}

/// A short name for a node in logs: `window`, `input[name=city]`, `span#order-status`, `<p>`.
pub fn describe(dom: &Dom, node: NodeId) -> String {
    if node == 0 {
        return "window".to_owned();
    }
    let Some(e) = dom.node(node).and_then(|n| n.element()) else {
        return format!("node {node}");
    };
    if let Some(id) = e.attr("id") {
        format!("{}#{id}", e.name)
    } else if let Some(name) = e.attr("name") {
        format!("{}[name={name}]", e.name)
    } else {
        format!("<{}>", e.name)
    }
}

/// The name of a mode as the spec and the command line write it.
pub use tandem_engine::session::mode_name;

/// Parses a mode name (`follow`, `view`, `guide`, `full`), as `--mode` takes it.
pub fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "follow" => Ok(Mode::Follow),
        "view" => Ok(Mode::View),
        "guide" => Ok(Mode::Guide),
        "full" => Ok(Mode::Full),
        other => Err(format!("{other:?}: one of follow, view, guide, full")),
    }
}

/// The first element of `dom` that `selector` matches, in document order.
pub fn find(dom: &Dom, selector: &Selector) -> Option<NodeId> {
    let mut ancestors: Vec<(NodeId, &tandem_engine::Element)> = Vec::new();
    for id in dom.preorder(0) {
        let Some(el) = dom.node(id).and_then(|n| n.element()) else {
            continue;
        };
        let parent = dom.parent(id);
        while let Some(&(top, _)) = ancestors.last() {
            if Some(top) == parent || parent.is_some_and(|p| dom.is_ancestor_or_self(top, p)) {
                break;
            }
            ancestors.pop();
        }
        let chain: Vec<&tandem_engine::Element> = ancestors.iter().map(|&(_, e)| e).collect();
        if selector.matches(el, &chain) {
            return Some(id);
        }
        ancestors.push((id, el));
    }
    None
}

/// Where an agent message travels (spec §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// A QUIC datagram when the session has `DATAGRAMS`, else the control stream.
    Datagram,
    /// The agent's actions stream.
    Actions,
    /// The control stream.
    Control,
}

/// One step of an agent's script: an action on the element a selector finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Ask the customer for a higher mode.
    AskMode(Mode),
    /// Point at an element.
    Pointer(String),
    /// Put a box around an element for some milliseconds.
    Highlight(String, u32),
    /// Ctrl-click an element: wiggle the cursor there.
    Wiggle(String),
    /// Scroll the window to a vertical offset.
    ScrollWindow(i32),
    /// Click an element.
    Click(String),
    /// Fill in a text field.
    Type(String, String),
    /// Choose an option of a `select` by index.
    Choose(String, u32),
    /// Load a URL.
    Navigate(String),
}

impl Step {
    /// The step as the demo lists it.
    pub fn label(&self) -> String {
        match self {
            Step::AskMode(m) => format!("ask for mode {}", mode_name(*m)),
            Step::Pointer(s) => format!("point at {s}"),
            Step::Highlight(s, ms) => format!("highlight {s} for {ms} ms"),
            Step::Wiggle(s) => format!("ctrl-click (wiggle) {s}"),
            Step::ScrollWindow(y) => format!("scroll the window to y={y}"),
            Step::Click(s) => format!("click {s}"),
            Step::Type(s, v) => format!("type {v:?} into {s}"),
            Step::Choose(s, i) => format!("choose option {i} of {s}"),
            Step::Navigate(u) => format!("navigate to {u}"),
        }
    }
}

/// The scripted agent of `tandem demo --mode`: a visit to the built-in order page that tries
/// every kind of action once, including some that must be refused whatever the mode (a masked
/// card number, a navigation off the site).
pub fn demo_script() -> Vec<Step> {
    let s = |x: &str| x.to_owned();
    vec![
        Step::AskMode(Mode::Full),
        Step::Pointer(s("#order-status")),
        Step::Highlight(s("#order-status"), 5000),
        Step::Wiggle(s("button")),
        Step::ScrollWindow(400),
        Step::Click(s("input[name=city]")),
        Step::Type(s("input[name=city]"), s("Utrecht")),
        Step::Choose(s("select[name=slot]"), 0),
        Step::Type(s("input[name=card]"), s("5555 5555 5555 4444")),
        Step::Navigate(s("https://evil.example/phish")),
        Step::Navigate(s("https://shop.example/orders")),
    ]
}

/// The agent's side: turns script steps into messages addressed to the nodes of the agent's
/// copy of the page, and keeps what the consumer answered.
#[derive(Debug, Default)]
pub struct AgentScript {
    steps: std::collections::VecDeque<Step>,
    next_id: u32,
    /// The next `POINTER`'s and the next `SCROLL`'s sequence numbers (spec §7.21: 0, 1, 2, …).
    pointer_seq: u32,
    scroll_seq: u32,
    sent: Vec<(u32, String)>,
    answers: Vec<(String, String)>,
    refused: Vec<RefusalCode>,
    mode: Option<Mode>,
}

impl AgentScript {
    /// A script of `steps`, run in order.
    pub fn new(steps: Vec<Step>) -> Self {
        AgentScript {
            steps: steps.into(),
            ..AgentScript::default()
        }
    }

    /// Whether steps remain.
    pub fn has_next(&self) -> bool {
        !self.steps.is_empty()
    }

    /// The next step's message and the lane it travels on, addressed to the node its selector
    /// finds in `dom` now. A step whose element is not there is skipped and recorded as such.
    pub fn next(&mut self, dom: &Dom) -> Option<(Lane, Message)> {
        while let Some(step) = self.steps.pop_front() {
            let label = step.label();
            let target = |sel: &str| sel.parse::<Selector>().ok().and_then(|s| find(dom, &s));
            let mut id = || {
                self.next_id += 1;
                self.next_id
            };
            let out = match &step {
                Step::AskMode(m) => Some((
                    Lane::Control,
                    Message::Mode(ModeChange {
                        op: ModeOp::Request,
                        mode: *m,
                    }),
                )),
                Step::Pointer(sel) => target(sel).map(|node| {
                    let seq = self.pointer_seq;
                    self.pointer_seq = seq.wrapping_add(1);
                    let p = Pointer {
                        seq,
                        node,
                        x: 12,
                        y: 8,
                        visible: true,
                    };
                    (Lane::Datagram, Message::Pointer(p))
                }),
                Step::ScrollWindow(y) => {
                    let seq = self.scroll_seq;
                    self.scroll_seq = seq.wrapping_add(1);
                    let s = Scroll {
                        seq,
                        node: 0,
                        x: 0,
                        y: *y,
                    };
                    Some((Lane::Datagram, Message::Scroll(s)))
                }
                Step::Highlight(sel, ms) => target(sel).map(|node| {
                    let h = Highlight {
                        id: id(),
                        node,
                        duration_ms: *ms,
                    };
                    (Lane::Actions, Message::Highlight(h))
                }),
                Step::Wiggle(sel) | Step::Click(sel) => target(sel).map(|node| {
                    let modifiers = if matches!(step, Step::Wiggle(_)) {
                        tandem_engine::hands::CTRL
                    } else {
                        0
                    };
                    let c = Click {
                        id: id(),
                        node,
                        x: 10,
                        y: 6,
                        button: 0,
                        modifiers,
                    };
                    (Lane::Actions, Message::Click(c))
                }),
                Step::Type(sel, v) => target(sel).map(|node| {
                    let i = Input {
                        id: id(),
                        node,
                        value: InputValue::Text(v.clone()),
                    };
                    (Lane::Actions, Message::Input(i))
                }),
                Step::Choose(sel, k) => target(sel).map(|node| {
                    let i = Input {
                        id: id(),
                        node,
                        value: InputValue::Selected(vec![*k]),
                    };
                    (Lane::Actions, Message::Input(i))
                }),
                Step::Navigate(url) => {
                    let n = Navigate {
                        id: id(),
                        url: url.clone(),
                    };
                    Some((Lane::Actions, Message::Navigate(n)))
                }
            };
            match out {
                Some((lane, msg)) => {
                    let id = match &msg {
                        Message::Highlight(h) => h.id,
                        Message::Click(c) => c.id,
                        Message::Input(i) => i.id,
                        Message::Navigate(n) => n.id,
                        _ => 0,
                    };
                    self.sent.push((id, label));
                    return Some((lane, msg));
                }
                None => self
                    .answers
                    .push((label, "skipped: no such element".to_owned())),
            }
        }
        None
    }

    /// Takes a consumer's answer (`REFUSED`, `MODE`); returns whether it was one.
    pub fn on_message(&mut self, msg: &Message) -> bool {
        match msg {
            Message::Refused(Refused { id, code, detail }) => {
                let label = self
                    .sent
                    .iter()
                    .find(|(sent, _)| sent == id && *id != 0)
                    .map_or_else(|| format!("action {id}"), |(_, l)| l.clone());
                self.answers
                    .push((label, format!("refused: {code:?} ({detail})")));
                self.refused.push(*code);
                true
            }
            Message::Mode(m) => {
                let what = match m.op {
                    ModeOp::Grant => "granted",
                    ModeOp::Deny => "denied",
                    ModeOp::Set => "set by the customer",
                    _ => "requested",
                };
                if m.op != ModeOp::Deny {
                    self.mode = Some(m.mode);
                }
                self.answers
                    .push((format!("mode {}", mode_name(m.mode)), what.to_owned()));
                true
            }
            _ => false,
        }
    }

    /// The answers the agent saw, in order: (what, answer).
    pub fn answers(&self) -> &[(String, String)] {
        &self.answers
    }

    /// The mode the agent was last told, if any.
    pub fn mode(&self) -> Option<Mode> {
        self.mode
    }

    /// The refusal codes the agent saw, in order.
    pub fn refusals(&self) -> &[RefusalCode] {
        &self.refused
    }
}
