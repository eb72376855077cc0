//! The agent's hands and the consumer's authority over them (spec §7.21–§7.28, §13).
//!
//! The consumer is the authority on what the agent may do. Every action the agent sends —
//! pointer, scroll, highlight, click, ctrl-click wiggle, navigation, form input — goes through
//! one [`Authority`], which checks it against the session's [`Mode`], pause, the page (the node
//! must exist and be the right kind), the masking policy (through [`Protection`]) and the
//! navigation rule, and answers with a [`Verdict`]: an [`Effect`] for the page to carry out, or
//! a typed refusal (`REFUSED`, spec §7.28) for the agent to see. Like the rest of the engine it
//! does no I/O: time is passed in, and the consumer sends the messages it returns.
//!
//! ## Model
//!
//! ```text
//!   agent ── POINTER SCROLL HIGHLIGHT CLICK INPUT NAVIGATE ──► Authority::handle ──► Verdict
//!                                   MODE Request ──────────► Authority::on_mode     ├ Apply(Effect)
//!   customer ── consent / set_mode / pause / resume ───────► Authority              ├ Refuse(REFUSED)
//!                                                                                    └ Ignore (stale)
//! ```
//!
//! The permission table ([`permits`]) is the spec's: each mode allows everything the modes
//! before it allow.
//!
//! | action | `Follow` | `View` | `Guide` | `Full` |
//! |---|---|---|---|---|
//! | pointer, highlight, wiggle | yes | yes | yes | yes |
//! | scroll | – | yes | yes | yes |
//! | click, navigate | – | – | yes | yes |
//! | form input | – | – | – | yes |
//!
//! A session starts in `Follow`. The agent asks for more with `MODE Request`; the customer
//! consents ([`Authority::consent`]) unless the configuration grants requests without asking;
//! the customer can set any mode at any time ([`Authority::set_mode`]), which is how a mode is
//! lowered. Highlights expire after their duration, on navigation, or when cleared.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tandem_protocol::message::{
    Click, Highlight, Input, InputValue, Mode, ModeChange, ModeOp, Navigate, Pointer, RefusalCode,
    Refused, Scroll,
};
use tandem_protocol::{Message, NodeId};

use crate::dom::{Dom, Element, NodeKind};

/// Modifier bit of the ctrl key in a `CLICK` (spec §7.24).
pub const CTRL: u8 = 2;

/// What the agent does with its hands; one per kind of action message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `POINTER`: show where the agent points.
    Pointer,
    /// `HIGHLIGHT`: a box around an element.
    Highlight,
    /// A `CLICK` with the ctrl modifier: wiggle the agent's cursor to draw the customer's
    /// attention; nothing is clicked.
    Wiggle,
    /// `SCROLL` from the agent: scroll the customer's window or an element.
    Scroll,
    /// `CLICK`: click on the page.
    Click,
    /// `NAVIGATE`: load another URL.
    Navigate,
    /// `INPUT`: fill in a form field.
    Input,
}

impl Action {
    /// Every action, in the order of the permission table.
    pub const ALL: [Action; 7] = [
        Action::Pointer,
        Action::Highlight,
        Action::Wiggle,
        Action::Scroll,
        Action::Click,
        Action::Navigate,
        Action::Input,
    ];

    /// The action a message from the agent asks for, if it is one.
    pub fn of(msg: &Message) -> Option<Action> {
        Some(match msg {
            Message::Pointer(_) => Action::Pointer,
            Message::Highlight(_) => Action::Highlight,
            Message::Scroll(_) => Action::Scroll,
            Message::Click(c) if c.modifiers & CTRL != 0 => Action::Wiggle,
            Message::Click(_) => Action::Click,
            Message::Navigate(_) => Action::Navigate,
            Message::Input(_) => Action::Input,
            _ => return None,
        })
    }

    /// The lowest mode that allows the action.
    pub fn minimum_mode(self) -> Mode {
        match self {
            Action::Pointer | Action::Highlight | Action::Wiggle => Mode::Follow,
            Action::Scroll => Mode::View,
            Action::Click | Action::Navigate => Mode::Guide,
            Action::Input => Mode::Full,
        }
    }

    /// The action's name as the spec's permission table writes it.
    pub fn name(self) -> &'static str {
        match self {
            Action::Pointer => "pointer",
            Action::Highlight => "highlight",
            Action::Wiggle => "wiggle",
            Action::Scroll => "scroll",
            Action::Click => "click",
            Action::Navigate => "navigate",
            Action::Input => "input",
        }
    }
}

/// The rank of a mode in the order `Follow < View < Guide < Full`; `None` for a value this
/// version does not name (spec §10.4), which allows nothing beyond `Follow`.
pub fn rank(mode: Mode) -> Option<u8> {
    Some(match mode {
        Mode::Follow => 0,
        Mode::View => 1,
        Mode::Guide => 2,
        Mode::Full => 3,
        _ => return None,
    })
}

/// Whether `mode` allows `action` (the permission table of spec §7.27).
pub fn permits(mode: Mode, action: Action) -> bool {
    let need = rank(action.minimum_mode()).unwrap_or(u8::MAX);
    rank(mode).unwrap_or(0) >= need
}

/// Which URLs the agent may navigate the customer's page to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NavigationRule {
    /// Any `http` or `https` URL.
    AnyWeb,
    /// Only URLs of the page's own origin (scheme, host and port). The default.
    #[default]
    SameOrigin,
    /// `http`/`https` URLs whose host is one of these or a subdomain of one (`example.com`
    /// allows `www.example.com`, not `badexample.com`): the operator's own site. Tandem ships
    /// no public suffix list, so "site" is what the operator names here.
    Hosts(Vec<String>),
}

/// What a consumer allows beyond the mode table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandsConfig {
    /// Whether a mode request waits for the customer's consent (the default) or is granted at
    /// once.
    pub consent_required: bool,
    /// The navigation rule.
    pub navigation: NavigationRule,
    /// The longest a highlight may last; longer requests are cut to it.
    pub max_highlight: Duration,
    /// How many highlights may be shown at once; a new one beyond it replaces the oldest.
    pub max_highlights: usize,
}

impl Default for HandsConfig {
    fn default() -> Self {
        HandsConfig {
            consent_required: true,
            navigation: NavigationRule::SameOrigin,
            max_highlight: Duration::from_secs(60),
            max_highlights: 16,
        }
    }
}

/// Whether the masking policy protects a node from the agent (spec §12): input into it, or a
/// click that could reveal it, is refused with `Masked`.
pub trait Protection {
    /// Whether `node` of `dom` is masked, blocked or ignored, or lies inside such an element.
    fn protects(&self, dom: &Dom, node: NodeId) -> bool;
}

/// No masking policy: nothing is protected.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unprotected;

impl Protection for Unprotected {
    fn protects(&self, _dom: &Dom, _node: NodeId) -> bool {
        false
    }
}

impl<F: Fn(&Dom, NodeId) -> bool> Protection for F {
    fn protects(&self, dom: &Dom, node: NodeId) -> bool {
        self(dom, node)
    }
}

/// What the page does for an allowed action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Show the agent's cursor (a labelled cursor) at a point of a node's box.
    Pointer(Pointer),
    /// Show a box around `node` until `until`.
    Highlight {
        /// The element.
        node: NodeId,
        /// When it fades.
        until: Instant,
    },
    /// Remove the highlight of `node`.
    ClearHighlight {
        /// The element.
        node: NodeId,
    },
    /// Wiggle the agent's cursor at a point of a node's box (nothing is clicked).
    Wiggle(Click),
    /// Scroll the window (`node` 0) or an element.
    Scroll(Scroll),
    /// Click at a point of a node's box and show a ring where it landed.
    Click(Click),
    /// Load another URL.
    Navigate(Navigate),
    /// Set a form field's value.
    Input(Input),
}

/// The answer to an agent's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Carry the effect out.
    Apply(Effect),
    /// Do nothing and send this `REFUSED` to the agent (spec §7.28).
    Refuse(Refused),
    /// Do nothing and send nothing: a stale or refused datagram (`POINTER`, `SCROLL`, which
    /// carry no action id, spec §7.21–§7.22), or a message that is not an action. The reason
    /// is kept for tests and logs.
    Ignore(Option<RefusalCode>),
}

impl Verdict {
    /// The refusal code, whether sent (`Refuse`) or not (`Ignore` of a refused datagram).
    pub fn refusal(&self) -> Option<RefusalCode> {
        match self {
            Verdict::Refuse(r) => Some(r.code),
            Verdict::Ignore(code) => *code,
            Verdict::Apply(_) => None,
        }
    }
}

/// What a `MODE` message from the agent led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModeOutcome {
    /// The request waits for the customer ([`Authority::consent`]).
    AwaitingConsent(Mode),
    /// Answer the agent with this message (`Grant` or `Deny`).
    Reply(ModeChange),
    /// The agent sent something only the consumer may send (`Grant`, `Deny`, `Set`): close the
    /// session with `UnexpectedMessage` (spec §7.27).
    Unexpected,
}

/// Latest-wins sequence numbers (spec §7.21): `a` is newer than `b` when `(a − b) mod 2^32`
/// lies in `1 … 2^31 − 1`.
pub fn is_newer(a: u32, b: u32) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < 1 << 31
}

/// How many scrolled elements the authority remembers the latest `SCROLL` sequence of; the
/// oldest is forgotten beyond it, so a peer cannot grow the table without bound.
pub const MAX_SCROLL_TARGETS: usize = 64;

/// The consumer's authority over the agent's actions in one session.
#[derive(Debug, Clone)]
pub struct Authority {
    config: HandsConfig,
    mode: Mode,
    pending: Option<Mode>,
    paused: bool,
    page_url: String,
    last_pointer: Option<u32>,
    last_scroll: VecDeque<(NodeId, u32)>,
    highlights: VecDeque<(NodeId, Instant)>,
}

impl Authority {
    /// A new session's authority: mode `Follow`, nothing pending, the page at `page_url`.
    pub fn new(config: HandsConfig, page_url: impl Into<String>) -> Self {
        Authority {
            config,
            mode: Mode::Follow,
            pending: None,
            paused: false,
            page_url: page_url.into(),
            last_pointer: None,
            last_scroll: VecDeque::new(),
            highlights: VecDeque::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HandsConfig {
        &self.config
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The mode the agent asked for and the customer has not answered yet.
    pub fn pending_request(&self) -> Option<Mode> {
        self.pending
    }

    /// Whether sharing is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The customer pauses sharing: every action is refused with `Paused` until
    /// [`Authority::resume`].
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// The customer resumes sharing.
    pub fn resume(&mut self) {
        self.paused = false;
    }

    /// The customer sets the mode (to lower it, or to raise it unasked). Returns the `MODE
    /// Set` to send; a pending request is dropped.
    pub fn set_mode(&mut self, mode: Mode) -> ModeChange {
        self.mode = mode;
        self.pending = None;
        ModeChange {
            op: ModeOp::Set,
            mode,
        }
    }

    /// The customer answers the pending request. Returns the `MODE Grant` or `Deny` to send,
    /// or `None` when nothing is pending.
    pub fn consent(&mut self, yes: bool) -> Option<ModeChange> {
        let mode = self.pending.take()?;
        if yes {
            self.mode = mode;
            Some(ModeChange {
                op: ModeOp::Grant,
                mode,
            })
        } else {
            Some(ModeChange {
                op: ModeOp::Deny,
                mode,
            })
        }
    }

    /// A `MODE` message from the agent (spec §7.27).
    pub fn on_mode(&mut self, m: ModeChange) -> ModeOutcome {
        if m.op != ModeOp::Request {
            return match m.op {
                ModeOp::Grant | ModeOp::Deny | ModeOp::Set => ModeOutcome::Unexpected,
                // An op this version does not name: denied (spec §7.27).
                _ => ModeOutcome::Reply(ModeChange {
                    op: ModeOp::Deny,
                    mode: m.mode,
                }),
            };
        }
        let deny = ModeOutcome::Reply(ModeChange {
            op: ModeOp::Deny,
            mode: m.mode,
        });
        let (Some(asked), Some(now)) = (rank(m.mode), rank(self.mode)) else {
            return deny;
        };
        if self.paused {
            return deny;
        }
        if asked <= now || !self.config.consent_required {
            // Lowering or keeping needs no consent; neither does anything when consent is off.
            self.mode = m.mode;
            self.pending = None;
            return ModeOutcome::Reply(ModeChange {
                op: ModeOp::Grant,
                mode: m.mode,
            });
        }
        self.pending = Some(m.mode);
        ModeOutcome::AwaitingConsent(m.mode)
    }

    /// The page navigated to `url` (by the customer or an allowed `NAVIGATE`): highlights end
    /// and later navigation is judged against the new origin. Returns the highlights to clear.
    pub fn navigated(&mut self, url: impl Into<String>) -> Vec<NodeId> {
        self.page_url = url.into();
        self.highlights.drain(..).map(|(n, _)| n).collect()
    }

    /// When the next highlight fades, if any is shown.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.highlights.iter().map(|&(_, t)| t).min()
    }

    /// Ends the highlights whose time is up at `now`; returns their nodes.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<NodeId> {
        let mut gone = Vec::new();
        self.highlights.retain(|&(n, until)| {
            let keep = until > now;
            if !keep {
                gone.push(n);
            }
            keep
        });
        gone
    }

    /// The highlights shown now, as (node, until).
    pub fn highlights(&self) -> impl Iterator<Item = (NodeId, Instant)> + '_ {
        self.highlights.iter().copied()
    }

    /// Judges an agent's message against the mode, the page `dom` and the masking policy
    /// `protection`, at time `now`.
    pub fn handle(
        &mut self,
        msg: &Message,
        dom: &Dom,
        protection: &dyn Protection,
        now: Instant,
    ) -> Verdict {
        match msg {
            Message::Pointer(p) => self.pointer(p, dom),
            Message::Scroll(s) => self.scroll(s, dom),
            Message::Highlight(h) => self.highlight(h, dom, now),
            Message::Click(c) => self.click(c, dom, protection),
            Message::Navigate(n) => self.navigate(n),
            Message::Input(i) => self.input(i, dom, protection),
            _ => Verdict::Ignore(None),
        }
    }

    fn pointer(&mut self, p: &Pointer, dom: &Dom) -> Verdict {
        if self.paused {
            return Verdict::Ignore(Some(RefusalCode::Paused));
        }
        if self.last_pointer.is_some_and(|last| !is_newer(p.seq, last)) {
            return Verdict::Ignore(None);
        }
        if p.node != 0 && !dom.contains(p.node) {
            return Verdict::Ignore(Some(RefusalCode::NoSuchNode));
        }
        self.last_pointer = Some(p.seq);
        Verdict::Apply(Effect::Pointer(p.clone()))
    }

    fn scroll(&mut self, s: &Scroll, dom: &Dom) -> Verdict {
        if self.paused {
            return Verdict::Ignore(Some(RefusalCode::Paused));
        }
        if !permits(self.mode, Action::Scroll) {
            return Verdict::Ignore(Some(RefusalCode::NotPermitted));
        }
        if s.node != 0 && element(dom, s.node).is_none() {
            return Verdict::Ignore(Some(RefusalCode::NoSuchNode));
        }
        let slot = self.last_scroll.iter().position(|&(n, _)| n == s.node);
        if let Some(i) = slot {
            if !is_newer(s.seq, self.last_scroll[i].1) {
                return Verdict::Ignore(None);
            }
            self.last_scroll.remove(i);
        } else if self.last_scroll.len() >= MAX_SCROLL_TARGETS {
            self.last_scroll.pop_front();
        }
        self.last_scroll.push_back((s.node, s.seq));
        Verdict::Apply(Effect::Scroll(*s))
    }

    fn highlight(&mut self, h: &Highlight, dom: &Dom, now: Instant) -> Verdict {
        if self.paused {
            return refuse(h.id, RefusalCode::Paused, "sharing is paused");
        }
        if element(dom, h.node).is_none() {
            return refuse(h.id, RefusalCode::NoSuchNode, "no such element");
        }
        self.highlights.retain(|&(n, _)| n != h.node);
        if h.duration_ms == 0 {
            return Verdict::Apply(Effect::ClearHighlight { node: h.node });
        }
        let d = Duration::from_millis(h.duration_ms.into()).min(self.config.max_highlight);
        if self.highlights.len() >= self.config.max_highlights.max(1) {
            self.highlights.pop_front();
        }
        let until = now + d;
        self.highlights.push_back((h.node, until));
        Verdict::Apply(Effect::Highlight {
            node: h.node,
            until,
        })
    }

    fn click(&mut self, c: &Click, dom: &Dom, protection: &dyn Protection) -> Verdict {
        let action = if c.modifiers & CTRL != 0 {
            Action::Wiggle
        } else {
            Action::Click
        };
        if self.paused {
            return refuse(c.id, RefusalCode::Paused, "sharing is paused");
        }
        if !permits(self.mode, action) {
            return not_permitted(c.id, action, self.mode);
        }
        if !dom.contains(c.node) || c.node == 0 {
            return refuse(c.id, RefusalCode::NoSuchNode, "no such node");
        }
        if c.x > 10_000 || c.y > 10_000 {
            return refuse(
                c.id,
                RefusalCode::Invalid,
                "position outside the node's box",
            );
        }
        if action == Action::Wiggle {
            return Verdict::Apply(Effect::Wiggle(*c));
        }
        if protection.protects(dom, c.node) {
            return refuse(c.id, RefusalCode::Masked, "the element is masked");
        }
        Verdict::Apply(Effect::Click(*c))
    }

    fn navigate(&mut self, n: &Navigate) -> Verdict {
        if self.paused {
            return refuse(n.id, RefusalCode::Paused, "sharing is paused");
        }
        if !permits(self.mode, Action::Navigate) {
            return not_permitted(n.id, Action::Navigate, self.mode);
        }
        let Some(target) = Origin::parse(&n.url) else {
            return refuse(n.id, RefusalCode::Invalid, "not an absolute http(s) URL");
        };
        let allowed = match &self.config.navigation {
            NavigationRule::AnyWeb => true,
            NavigationRule::SameOrigin => Origin::parse(&self.page_url) == Some(target.clone()),
            NavigationRule::Hosts(hosts) => hosts.iter().any(|h| target.is_within(h)),
        };
        if !allowed {
            return refuse(
                n.id,
                RefusalCode::OffSite,
                "the URL leaves the allowed site",
            );
        }
        Verdict::Apply(Effect::Navigate(n.clone()))
    }

    fn input(&mut self, i: &Input, dom: &Dom, protection: &dyn Protection) -> Verdict {
        if self.paused {
            return refuse(i.id, RefusalCode::Paused, "sharing is paused");
        }
        if !permits(self.mode, Action::Input) {
            return not_permitted(i.id, Action::Input, self.mode);
        }
        let Some(el) = element(dom, i.node) else {
            return refuse(i.id, RefusalCode::NoSuchNode, "no such element");
        };
        // Masking first: a refusal for a masked field must not depend on what the field is.
        if protection.protects(dom, i.node) {
            return refuse(i.id, RefusalCode::Masked, "the field is masked");
        }
        match FieldKind::of(el) {
            Some(kind) if kind.accepts(&i.value, dom, i.node) => {
                Verdict::Apply(Effect::Input(i.clone()))
            }
            Some(_) => refuse(
                i.id,
                RefusalCode::Invalid,
                "the value does not fit the field",
            ),
            None => refuse(i.id, RefusalCode::Invalid, "not a form field"),
        }
    }
}

fn refuse(id: u32, code: RefusalCode, detail: &str) -> Verdict {
    Verdict::Refuse(Refused {
        id,
        code,
        detail: detail.to_owned(),
    })
}

fn not_permitted(id: u32, action: Action, mode: Mode) -> Verdict {
    Verdict::Refuse(Refused {
        id,
        code: RefusalCode::NotPermitted,
        detail: format!(
            "{} needs mode {:?}, the session is in {mode:?}",
            action.name(),
            action.minimum_mode()
        ),
    })
}

fn element(dom: &Dom, id: NodeId) -> Option<&Element> {
    match &dom.node(id)?.kind {
        NodeKind::Element(e) => Some(e),
        _ => None,
    }
}

/// The kinds of form field an `INPUT` can fill (spec §7.25).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldKind {
    /// A text-like `input`, a `textarea`, or an element with `contenteditable`.
    Text,
    /// A checkbox or radio button.
    Check,
    /// A `select`.
    Select,
}

impl FieldKind {
    fn of(el: &Element) -> Option<FieldKind> {
        if el.ns != tandem_protocol::Ns::Html {
            return None;
        }
        match &*el.name {
            "textarea" => Some(FieldKind::Text),
            "select" => Some(FieldKind::Select),
            "input" => {
                let ty = el.attr("type").unwrap_or("text").to_ascii_lowercase();
                match ty.as_str() {
                    "checkbox" | "radio" => Some(FieldKind::Check),
                    "button" | "submit" | "reset" | "image" | "file" | "hidden" => None,
                    _ => Some(FieldKind::Text),
                }
            }
            _ => match el.attr("contenteditable") {
                Some(v) if !v.eq_ignore_ascii_case("false") => Some(FieldKind::Text),
                _ => None,
            },
        }
    }

    fn accepts(self, value: &InputValue, dom: &Dom, node: NodeId) -> bool {
        match (self, value) {
            (FieldKind::Text, InputValue::Text(_)) => true,
            (FieldKind::Check, InputValue::Checked(_)) => true,
            (FieldKind::Select, InputValue::Selected(indexes)) => {
                let options = count_options(dom, node);
                let multiple = element(dom, node).is_some_and(|e| e.attr("multiple").is_some());
                (multiple || indexes.len() <= 1) && indexes.iter().all(|&i| (i as usize) < options)
            }
            _ => false,
        }
    }
}

/// The `option` elements of a `select`, in document order (inside `optgroup`s too).
fn count_options(dom: &Dom, select: NodeId) -> usize {
    dom.preorder(select)
        .filter(|&id| element(dom, id).is_some_and(|e| e.name == "option"))
        .count()
}

/// The origin of an absolute `http` or `https` URL: scheme, host (lower case) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `http` or `https`.
    pub scheme: String,
    /// The host, lower case, without brackets for IPv6.
    pub host: String,
    /// The port, the scheme's default when the URL names none.
    pub port: u16,
}

impl Origin {
    /// Parses the origin of `url`; `None` unless it is an absolute `http`/`https` URL with a
    /// host (so `javascript:`, `data:` and relative URLs never pass a navigation rule).
    pub fn parse(url: &str) -> Option<Origin> {
        let url = url.trim();
        let (scheme, rest) = url.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
        let authority = &rest[..end];
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return None;
        }
        let port = match port {
            None | Some("") => default_port,
            Some(p) => p.parse().ok()?,
        };
        Some(Origin {
            scheme,
            host: host.trim_end_matches('.').to_ascii_lowercase(),
            port,
        })
    }

    /// Whether the host is `site` or a subdomain of it (compared on label boundaries).
    pub fn is_within(&self, site: &str) -> bool {
        let site = site.trim_end_matches('.').to_ascii_lowercase();
        !site.is_empty()
            && (self.host == site
                || self
                    .host
                    .strip_suffix(&site)
                    .is_some_and(|head| head.ends_with('.')))
    }
}

/// The oracle of the `session_actions` fuzz target (and of the regression inputs the tests
/// replay): arbitrary sequences of session and action messages from both sides, judged against
/// rules restated here apart from the code above.
#[doc(hidden)]
pub mod fuzzing {
    use std::time::{Duration, Instant};

    use tandem_protocol::message::{
        Click, Highlight, Input, InputValue, Mode, ModeChange, ModeOp, Navigate, Pointer, Scroll,
    };
    use tandem_protocol::{Limits, Message, NodeId, frame};

    use super::{Authority, Effect, HandsConfig, ModeOutcome, NavigationRule, Verdict};
    use crate::mask::{MaskPolicy, Rule};
    use crate::session::{self, Next, Phase, Session, Trigger};
    use crate::{Consumer, parse_html};

    /// The page the agent acts on: every kind of field, a masked region, an editable block.
    pub const PAGE: &str = "<main><h1 id=t>Order</h1><p class=m>Secret <b>note</b></p>\
        <form><input name=city value=Amsterdam><input type=password value=hunter2>\
        <input type=checkbox name=gift><select name=slot><option>a<option selected>b</select>\
        <textarea name=note>Ring twice</textarea><input autocomplete=cc-number value=4111>\
        <button>Save</button></form><div contenteditable>Edit me</div>\
        <a href=/help>Help</a></main>";

    /// What each mode lets through, restated from spec §13.2 (not read from [`super::permits`]):
    /// pointer, highlight and wiggle are always allowed; a mode this version does not know
    /// allows no more than `Follow`.
    fn allowed(mode: Mode, what: &Effect) -> bool {
        let level = match mode {
            Mode::View => 1,
            Mode::Guide => 2,
            Mode::Full => 3,
            _ => 0,
        };
        let needs = match what {
            Effect::Pointer(_)
            | Effect::Highlight { .. }
            | Effect::ClearHighlight { .. }
            | Effect::Wiggle(_) => 0,
            Effect::Scroll(_) => 1,
            Effect::Click(_) | Effect::Navigate(_) => 2,
            Effect::Input(_) => 3,
        };
        level >= needs
    }

    /// A byte reader that yields zeros once the input is used up.
    struct Bytes<'a>(&'a [u8]);

    impl Bytes<'_> {
        fn u8(&mut self) -> u8 {
            match self.0.split_first() {
                Some((&b, rest)) => {
                    self.0 = rest;
                    b
                }
                None => 0,
            }
        }
        fn u16(&mut self) -> u16 {
            u16::from(self.u8()) << 8 | u16::from(self.u8())
        }
        fn take(&mut self, n: usize) -> &[u8] {
            let n = n.min(self.0.len());
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            a
        }
        fn text(&mut self) -> String {
            let n = usize::from(self.u8() % 24);
            String::from_utf8_lossy(self.take(n)).into_owned()
        }
    }

    fn mode(b: u8) -> Mode {
        match b % 5 {
            0 => Mode::Follow,
            1 => Mode::View,
            2 => Mode::Guide,
            3 => Mode::Full,
            // A mode this version does not name.
            _ => Mode::from(7),
        }
    }

    const URLS: [&str; 6] = [
        "https://shop.example/help",
        "https://shop.example:8443/",
        "http://shop.example/",
        "https://evil.example/",
        "javascript:alert(1)",
        "https://sub.shop.example/x",
    ];

    /// Runs one input. Panics (the fuzzer's finding) when an action the mode, pause or masking
    /// forbids comes through, or when the session machine leaves its table.
    pub fn session_actions(data: &[u8]) {
        let mut b = Bytes(data);
        let limits = Limits::DEFAULT;
        let mut policy = MaskPolicy::default();
        let _ = policy.add_selector(Rule::Mask, ".m");
        let config = HandsConfig {
            consent_required: b.u8() & 1 == 0,
            navigation: match b.u8() % 3 {
                0 => NavigationRule::SameOrigin,
                1 => NavigationRule::Hosts(vec!["shop.example".into()]),
                _ => NavigationRule::AnyWeb,
            },
            ..HandsConfig::default()
        };
        let url = "https://shop.example/orders";
        let mut consumer = Consumer::with_policy(parse_html(PAGE, limits), url, limits, policy);
        let mut hands = Authority::new(config, url);
        let t0 = Instant::now();
        let mut now = t0;
        let (mut life, _) = if b.u8() & 1 == 0 {
            Session::waiting(now, session::DEFAULT_TTL)
        } else {
            Session::invited(now, session::DEFAULT_TTL)
        };
        let max_id = consumer.dom().next_id() + 2;
        let mut steps = 0;
        while !b.0.is_empty() && steps < 512 {
            steps += 1;
            let node = NodeId::from(b.u8()) % max_id;
            let msg = match b.u8() % 15 {
                0 => {
                    hands.set_mode(mode(b.u8()));
                    continue;
                }
                1 => Message::Mode(ModeChange {
                    op: ModeOp::from(u32::from(b.u8() % 5)),
                    mode: mode(b.u8()),
                }),
                2 => {
                    let before = hands.mode();
                    let pending = hands.pending_request();
                    let yes = b.u8() & 1 == 1;
                    match hands.consent(yes) {
                        Some(reply) => {
                            assert_eq!(Some(reply.mode), pending);
                            let expect = if yes { reply.mode } else { before };
                            assert_eq!(hands.mode(), expect, "consent {yes}");
                        }
                        None => assert_eq!(pending, None),
                    }
                    continue;
                }
                3 => {
                    hands.pause();
                    continue;
                }
                4 => {
                    hands.resume();
                    continue;
                }
                5 => {
                    now += Duration::from_millis(u64::from(b.u16()) * 10);
                    hands.handle_timeout(now);
                    assert!(hands.highlights().all(|(_, until)| until > now));
                    continue;
                }
                6 => {
                    hands.navigated(URLS[usize::from(b.u8()) % URLS.len()]);
                    assert_eq!(
                        hands.highlights().count(),
                        0,
                        "navigation clears highlights"
                    );
                    continue;
                }
                7 => {
                    let trigger = session::Trigger::ALL[usize::from(b.u8()) % Trigger::ALL.len()];
                    check_life(&mut life, trigger, now);
                    continue;
                }
                8 => Message::Pointer(Pointer {
                    seq: u32::from(b.u16()),
                    node,
                    x: u32::from(b.u16()),
                    y: u32::from(b.u16()),
                    visible: b.u8() & 1 == 1,
                }),
                9 => Message::Scroll(Scroll {
                    seq: u32::from(b.u16()),
                    node,
                    x: i32::from(b.u16() as i16),
                    y: i32::from(b.u16() as i16),
                }),
                10 => Message::Highlight(Highlight {
                    id: u32::from(b.u8()),
                    node,
                    duration_ms: u32::from(b.u16()) * 10,
                }),
                11 => Message::Click(Click {
                    id: u32::from(b.u8()),
                    node,
                    x: u32::from(b.u16()),
                    y: u32::from(b.u16()),
                    button: b.u8() % 3,
                    modifiers: b.u8(),
                }),
                12 => Message::Input(Input {
                    id: u32::from(b.u8()),
                    node,
                    value: match b.u8() % 3 {
                        0 => InputValue::Text(b.text()),
                        1 => InputValue::Checked(b.u8() & 1 == 1),
                        _ => InputValue::Selected(
                            (0..b.u8() % 4).map(|_| u32::from(b.u8() % 4)).collect(),
                        ),
                    },
                }),
                13 => Message::Navigate(Navigate {
                    id: u32::from(b.u8()),
                    url: URLS[usize::from(b.u8()) % URLS.len()].to_owned(),
                }),
                _ => {
                    // Raw bytes on the wire: whatever decodes is judged too.
                    let n = usize::from(b.u8());
                    match frame::decode_frame(b.take(n), &limits) {
                        Ok((m, _)) => m,
                        Err(_) => continue,
                    }
                }
            };
            judge(&mut hands, &mut consumer, &msg, now);
        }
        // Whatever happened, every masked field's value is stars: no agent input reached one.
        let dom = consumer.dom();
        for id in dom.preorder(0) {
            let value = dom
                .node(id)
                .and_then(|n| n.element())
                .and_then(|e| e.attr("value"));
            if let Some(v) = value.filter(|_| consumer.protects_node(id)) {
                assert!(v.chars().all(|c| c == '*'), "masked value {v:?}");
            }
        }
    }

    fn judge(hands: &mut Authority, consumer: &mut Consumer, msg: &Message, now: Instant) {
        if let Message::Mode(m) = msg {
            let before = hands.mode();
            match hands.on_mode(*m) {
                ModeOutcome::Unexpected => assert_ne!(m.op, ModeOp::Request),
                ModeOutcome::Reply(r) if r.op == ModeOp::Grant => {
                    assert_eq!(m.op, ModeOp::Request);
                    assert!(!hands.is_paused(), "no grant while paused");
                    assert_eq!(hands.mode(), r.mode);
                }
                ModeOutcome::Reply(_) => {
                    assert_eq!(hands.mode(), before, "a denial changes nothing")
                }
                ModeOutcome::AwaitingConsent(asked) => {
                    assert!(hands.config().consent_required);
                    assert_eq!(hands.mode(), before, "asking changes nothing yet");
                    assert_eq!(hands.pending_request(), Some(asked));
                }
            }
            return;
        }
        let mode = hands.mode();
        let paused = hands.is_paused();
        let verdict = hands.handle(msg, consumer.dom(), &*consumer, now);
        if let Verdict::Apply(effect) = verdict {
            assert!(!paused, "nothing acts while paused: {effect:?}");
            assert!(allowed(mode, &effect), "{mode:?} let {effect:?} through");
            match &effect {
                Effect::Input(i) => {
                    assert!(!consumer.protects_node(i.node), "input into a masked field");
                    if let InputValue::Text(t) = &i.value {
                        // Carry it out as a page would: the consumer masks what it records.
                        let _ = consumer.set_attr(i.node, "value", t);
                        consumer.flush();
                    }
                }
                Effect::Click(c) => {
                    assert!(!consumer.protects_node(c.node), "click on a masked element")
                }
                Effect::Navigate(n) => {
                    assert!(n.url.starts_with("http://") || n.url.starts_with("https://"));
                    hands.navigated(n.url.clone());
                }
                _ => {}
            }
        }
        while consumer.poll_message().is_some() {}
    }

    /// Applies `trigger` and checks the machine against its table (spec §13.1), restated as:
    /// a closed session never changes; an allowed trigger leads where the table says; a
    /// refused one changes nothing.
    fn check_life(life: &mut Session, trigger: Trigger, now: Instant) {
        let before = life.phase();
        let closed = life.end_reason();
        let result = life.handle(trigger, now);
        if closed.is_some() {
            assert!(result.is_err(), "a closed session changed");
            assert_eq!(life.end_reason(), closed);
            return;
        }
        match (result, session::next(before, trigger)) {
            (Ok(_), Some(Next::Phase(p))) => assert_eq!(life.phase(), p),
            (Ok(_), Some(Next::Closed(r))) => {
                assert_eq!(life.phase(), Phase::Closed);
                assert_eq!(life.end_reason(), Some(r));
            }
            (Ok(_), None) => panic!("{before:?} {trigger:?} is not in the table"),
            (Err(_), _) => assert_eq!(life.phase(), before, "a refusal changed the phase"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_wraps_at_2_32() {
        assert!(is_newer(1, 0));
        assert!(is_newer(0, u32::MAX));
        assert!(!is_newer(5, 5));
        assert!(!is_newer(4, 5));
        assert!(!is_newer(1 << 31, 0));
    }

    #[test]
    fn origins() {
        let o = Origin::parse("HTTPS://Shop.Example.com./cart?x=1").unwrap();
        assert_eq!(
            (o.scheme.as_str(), o.host.as_str(), o.port),
            ("https", "shop.example.com", 443)
        );
        assert_eq!(Origin::parse("http://a.example:8080/").unwrap().port, 8080);
        assert_eq!(
            Origin::parse("https://user:pw@evil.example@shop.example/")
                .unwrap()
                .host,
            "shop.example"
        );
        assert_eq!(Origin::parse("http://[::1]:9/x").unwrap().host, "::1");
        for bad in [
            "javascript:alert(1)",
            "/relative",
            "data:text/html,hi",
            "ftp://x/",
            "https:///x",
            "https://a:b/",
        ] {
            assert_eq!(Origin::parse(bad), None, "{bad}");
        }
        let o = Origin::parse("https://www.example.com/").unwrap();
        assert!(o.is_within("example.com"));
        assert!(o.is_within("www.example.com"));
        assert!(!o.is_within("ample.com"));
        assert!(
            !Origin::parse("https://badexample.com/")
                .unwrap()
                .is_within("example.com")
        );
    }
}
