//! Masking at the source (spec §12): the consumer's tree never holds masked content.
//!
//! A [`MaskPolicy`] decides, for every node, what may leave the customer's machine, and turns
//! content into its masked form as it enters the [`Consumer`](crate::Consumer): the page given
//! to [`Consumer::with_policy`](crate::Consumer::with_policy), the targets of
//! [`Consumer::update_to`](crate::Consumer::update_to), change records and every mutation call.
//! Every encoder (snapshot, patch, string tables, compression, the diff) therefore only ever
//! sees masked values; nothing downstream needs to know about masking.
//!
//! ## Levels
//!
//! ```text
//!   element marks (own)                   inherited state for its subtree
//!   ───────────────────                   ───────────────────────────────
//!   block   data-tandem-block, selector   element becomes an empty placeholder
//!   mask    data-tandem-mask, selector    texts and text-like attributes → `*`
//!   unmask  data-tandem-unmask, selector  lifts an inherited mask (not an automatic one)
//!   ignore  data-tandem-ignore, selector  input state (value, checked, selected) never sent
//!   auto    password / hidden input,      the control's value is masked; for textarea and
//!           autocomplete cc-*, one-time-   select the whole control, and nothing below can
//!           code, current/new-password     unmask it
//! ```
//!
//! The nearest mark wins (`mask` beats `unmask` on the same element); `private` mode marks the
//! document itself as masked. Only an element's own attributes and its ancestors decide its
//! state (selectors support descendant and child combinators, no sibling combinators), so a
//! change at one node can only change the masking of that node's subtree.
//!
//! Masking is lossy and idempotent: masking a masked tree changes nothing, and a node that
//! stops being masked keeps its stars until the page reports its content again. With
//! [`MaskLength::Fixed`] a masked value's form does not depend on its content or length.

use std::collections::HashSet;

use tandem_protocol::{DOCUMENT_ID, NodeId, Ns};

use crate::dom::{Dom, Element, Name, NodeKind};

/// Marker attribute: mask this element's subtree.
pub const MARK_MASK: &str = "data-tandem-mask";
/// Marker attribute: lift an inherited mask for this element's subtree.
pub const MARK_UNMASK: &str = "data-tandem-unmask";
/// Marker attribute: replace this element by an empty placeholder.
pub const MARK_BLOCK: &str = "data-tandem-block";
/// Marker attribute: never send the input state of this element's subtree.
pub const MARK_IGNORE: &str = "data-tandem-ignore";
/// The attribute that marks a block placeholder on the wire (spec §12.4).
pub const BLOCKED: &str = "data-tandem-blocked";
/// Stars of a masked value in [`MaskLength::Fixed`] mode unless configured otherwise.
pub const DEFAULT_FIXED_STARS: u8 = 8;

/// How long a masked value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskLength {
    /// One `*` per character (whitespace kept): the length shows, the content does not.
    Keep,
    /// Always this many `*` (at least one): neither content nor length shows.
    Fixed(u8),
}

impl Default for MaskLength {
    fn default() -> Self {
        MaskLength::Fixed(DEFAULT_FIXED_STARS)
    }
}

/// Which list a configured selector goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Mask matching elements' subtrees.
    Mask,
    /// Replace matching elements by placeholders.
    Block,
    /// Never send matching elements' input state.
    Ignore,
    /// Lift an inherited mask.
    Unmask,
}

/// What the policy does to a node, as seen by [`MaskPolicy::level_of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Sent as the page has it.
    Visible,
    /// Its value, text and text-like attributes are masked (a masked subtree, or an automatic
    /// rule for this control).
    Masked,
    /// Its input state is never sent.
    Ignored,
    /// A block placeholder, or inside one (such nodes are not in the consumer's tree).
    Blocked,
}

/// A selector that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector {selector:?}: {detail} at byte {at}")]
pub struct SelectorError {
    /// The selector text.
    pub selector: String,
    /// Byte offset of the problem.
    pub at: usize,
    /// What is wrong.
    pub detail: &'static str,
}

/// A mask configuration file that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mask config line {line}: {detail}")]
pub struct ConfigError {
    /// Line number, from 1.
    pub line: usize,
    /// What is wrong.
    pub detail: String,
}

/// The masking policy of a consumer (spec §12).
///
/// The default policy applies the automatic rules and the marker attributes, masks with
/// [`MaskLength::Fixed`] (8 stars) and shows everything else. Selectors are added with
/// [`MaskPolicy::add_selector`]; [`MaskPolicy::set_private`] masks all text and inputs except
/// what is unmasked.
///
/// ```
/// use tandem_engine::mask::{MaskLength, MaskPolicy, Rule};
/// use tandem_engine::{parse_html, to_html};
/// use tandem_protocol::Limits;
///
/// let mut policy = MaskPolicy::default();
/// policy.set_length(MaskLength::Keep);
/// policy.add_selector(Rule::Mask, ".balance").unwrap();
/// let mut dom = parse_html(
///     "<p class=balance title='1 203 €'>1 203 €</p><input type=password value=hunter2>",
///     Limits::DEFAULT,
/// );
/// policy.apply(&mut dom);
/// let html = to_html(&dom);
/// assert!(html.contains(r#"<p class="balance" title="* *** *">* *** *</p>"#));
/// assert!(html.contains(r#"<input type="password" value="*******">"#));
/// ```
#[derive(Debug, Clone, Default)]
pub struct MaskPolicy {
    private: bool,
    length: MaskLength,
    mask: Vec<Selector>,
    block: Vec<Selector>,
    ignore: Vec<Selector>,
    unmask: Vec<Selector>,
    /// Attribute names (lower case) the selectors look at.
    watched: HashSet<String>,
}

impl MaskPolicy {
    /// Sets private-by-default mode: all text and inputs masked except what is unmasked.
    pub fn set_private(&mut self, on: bool) -> &mut Self {
        self.private = on;
        self
    }

    /// Whether private-by-default mode is on.
    pub fn is_private(&self) -> bool {
        self.private
    }

    /// Sets how long masked values are (`Fixed(0)` is taken as `Fixed(1)`).
    pub fn set_length(&mut self, length: MaskLength) -> &mut Self {
        self.length = match length {
            MaskLength::Fixed(0) => MaskLength::Fixed(1),
            l => l,
        };
        self
    }

    /// How long masked values are.
    pub fn length(&self) -> MaskLength {
        self.length
    }

    /// Adds a selector list (`a, b`) to the elements `rule` applies to.
    pub fn add_selector(&mut self, rule: Rule, selector: &str) -> Result<&mut Self, SelectorError> {
        let sel: Selector = selector.parse()?;
        sel.watched(&mut self.watched);
        match rule {
            Rule::Mask => self.mask.push(sel),
            Rule::Block => self.block.push(sel),
            Rule::Ignore => self.ignore.push(sel),
            Rule::Unmask => self.unmask.push(sel),
        }
        Ok(self)
    }

    /// Parses a configuration file: one directive a line, `#` starts a comment line.
    ///
    /// ```text
    /// private                  # private-by-default mode
    /// length keep              # or: length 8
    /// mask .balance, #iban
    /// block iframe.statement
    /// ignore form.search input
    /// unmask .public
    /// ```
    pub fn from_config(text: &str) -> Result<MaskPolicy, ConfigError> {
        let mut p = MaskPolicy::default();
        for (k, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |detail: String| ConfigError {
                line: k + 1,
                detail,
            };
            let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            let rule = match word {
                "private" if rest.is_empty() || rest == "on" => {
                    p.set_private(true);
                    continue;
                }
                "private" if rest == "off" => {
                    p.set_private(false);
                    continue;
                }
                "length" => {
                    let l = match rest {
                        "keep" => MaskLength::Keep,
                        n => MaskLength::Fixed(
                            n.parse()
                                .map_err(|_| err(format!("length {n:?}: keep or 1..=255")))?,
                        ),
                    };
                    p.set_length(l);
                    continue;
                }
                "mask" => Rule::Mask,
                "block" => Rule::Block,
                "ignore" => Rule::Ignore,
                "unmask" => Rule::Unmask,
                w => return Err(err(format!("unknown directive {w:?}"))),
            };
            p.add_selector(rule, rest).map_err(|e| err(e.to_string()))?;
        }
        Ok(p)
    }

    /// Masks `dom` in place: after this, the tree holds only what the policy lets leave.
    pub fn apply(&self, dom: &mut Dom) {
        let mut fixes = Vec::new();
        self.plan(dom, &[DOCUMENT_ID], &[], self.root_ctx(), &mut fixes);
        for f in fixes {
            apply_fix(dom, f);
        }
    }

    /// What the policy does to node `id` of `dom`, judged from its ancestors and itself.
    pub fn level_of(&self, dom: &Dom, id: NodeId) -> Level {
        let Some(node) = dom.node(id) else {
            return Level::Blocked;
        };
        let parent = dom.parent(id).unwrap_or(DOCUMENT_ID);
        let (chain, ctx) = self.context(dom, parent);
        if ctx.blocked {
            return Level::Blocked;
        }
        match &node.kind {
            NodeKind::Element(el) => {
                let m = self.marks(el, &chain);
                if m.block {
                    return Level::Blocked;
                }
                let c = self.inner(ctx, el, &m);
                if c.ignored {
                    Level::Ignored
                } else if c.masked || m.auto {
                    Level::Masked
                } else {
                    Level::Visible
                }
            }
            NodeKind::Text(_) | NodeKind::Comment(_) if ctx.masked && !ctx.raw => Level::Masked,
            _ => Level::Visible,
        }
    }

    /// Whether changing attribute `name` can change how an element's subtree is masked.
    pub(crate) fn affects(&self, name: &str) -> bool {
        strip_prefix_ci(name, "data-tandem-").is_some()
            || name.eq_ignore_ascii_case("type")
            || name.eq_ignore_ascii_case("autocomplete")
            || name.eq_ignore_ascii_case("contenteditable")
            || (!self.watched.is_empty() && self.watched.contains(lower(name).as_ref()))
    }

    fn has_selectors(&self) -> bool {
        !(self.mask.is_empty()
            && self.block.is_empty()
            && self.ignore.is_empty()
            && self.unmask.is_empty())
    }

    pub(crate) fn root_ctx(&self) -> Ctx {
        Ctx {
            masked: self.private,
            ..Ctx::default()
        }
    }

    /// An element's own marks; `ancestors` are its ancestor elements, the parent last.
    pub(crate) fn marks(&self, el: &Element, ancestors: &[&Element]) -> Marks {
        let mut m = Marks::default();
        for (name, _) in &el.attrs {
            let Some(rest) = strip_prefix_ci(name, "data-tandem-") else {
                continue;
            };
            if rest.eq_ignore_ascii_case("mask") {
                m.mask = true;
            } else if rest.eq_ignore_ascii_case("unmask") {
                m.unmask = true;
            } else if rest.eq_ignore_ascii_case("block") || rest.eq_ignore_ascii_case("blocked") {
                m.block = true;
            } else if rest.eq_ignore_ascii_case("ignore") {
                m.ignore = true;
            }
        }
        m.auto = auto_rule(el);
        if self.has_selectors() {
            let any = |list: &[Selector]| list.iter().any(|s| s.matches(el, ancestors));
            m.block = m.block || any(&self.block);
            if !m.block {
                m.mask = m.mask || any(&self.mask);
                m.unmask = m.unmask || (!m.mask && any(&self.unmask));
                m.ignore = m.ignore || any(&self.ignore);
            }
        }
        m
    }

    /// The state inside element `el` (for its attributes and children), from the state of
    /// its parent and its own marks.
    pub(crate) fn inner(&self, parent: Ctx, el: &Element, m: &Marks) -> Ctx {
        let html = el.ns == Ns::Html;
        let forced = parent.forced || (m.auto && !(html && el.name == "input"));
        Ctx {
            masked: forced || m.mask || (!m.unmask && parent.masked),
            forced,
            ignored: parent.ignored || m.ignore,
            raw: parent.raw || (html && el.name == "style"),
            value_text: html && el.name == "textarea",
            editable: match el.attr("contenteditable").filter(|_| html) {
                Some(v) => !v.eq_ignore_ascii_case("false"),
                None => parent.editable,
            },
            blocked: parent.blocked || m.block,
        }
    }

    /// The ancestor elements of `id` and `id` itself (if an element), top first, and the state
    /// inside `id`. A detached subtree is judged as if its root stood under the document.
    pub(crate) fn context<'a>(&self, dom: &'a Dom, id: NodeId) -> (Vec<&'a Element>, Ctx) {
        if !self.has_selectors() {
            // Marks depend on the element alone: one walk up, no allocation (the chain is
            // only needed by selectors).
            return (Vec::new(), self.context_up(dom, id));
        }
        self.context_down(dom, id)
    }

    /// [`MaskPolicy::context`] the general way: from the document down.
    fn context_down<'a>(&self, dom: &'a Dom, id: NodeId) -> (Vec<&'a Element>, Ctx) {
        let mut ids = Vec::new();
        let mut cur = Some(id);
        while let Some(n) = cur {
            ids.push(n);
            cur = dom.parent(n);
        }
        let mut chain: Vec<&Element> = Vec::with_capacity(ids.len());
        let mut ctx = self.root_ctx();
        for &n in ids.iter().rev() {
            if let Some(el) = dom.node(n).and_then(|x| x.element()) {
                let m = self.marks(el, &chain);
                ctx = self.inner(ctx, el, &m);
                chain.push(el);
            }
        }
        (chain, ctx)
    }

    /// [`MaskPolicy::context`]'s state for a policy without selectors, walking up from `id`:
    /// the nearest `mask` or `unmask` decides (`mask` first on one element), an automatic
    /// `textarea`/`select` rule anywhere above forces the mask, `ignore` and `block` anywhere
    /// hold, as [`MaskPolicy::inner`] composes them top down.
    fn context_up(&self, dom: &Dom, id: NodeId) -> Ctx {
        let mut ctx = Ctx::default();
        let mut decided: Option<bool> = None;
        let mut editable: Option<bool> = None;
        let mut first = true;
        let mut cur = Some(id);
        while let Some(n) = cur {
            if let Some(el) = dom.node(n).and_then(|x| x.element()) {
                let m = self.marks(el, &[]);
                let html = el.ns == Ns::Html;
                if first {
                    ctx.value_text = html && el.name == "textarea";
                    first = false;
                }
                if editable.is_none() && html {
                    editable = el
                        .attr("contenteditable")
                        .map(|v| !v.eq_ignore_ascii_case("false"));
                }
                ctx.raw |= html && el.name == "style";
                ctx.forced |= m.auto && !(html && el.name == "input");
                ctx.ignored |= m.ignore;
                ctx.blocked |= m.block;
                if decided.is_none() {
                    if m.mask {
                        decided = Some(true);
                    } else if m.unmask {
                        decided = Some(false);
                    }
                }
            }
            cur = dom.parent(n);
        }
        ctx.masked = ctx.forced || decided.unwrap_or(self.private);
        ctx.editable = editable.unwrap_or(false);
        ctx
    }

    /// Appends to `out` the fixes that mask the subtrees at `roots`, whose parent has the
    /// ancestor chain `base` (top first, the parent last) and inner state `base_ctx`.
    pub(crate) fn plan<'a, V: View>(
        &self,
        view: &'a V,
        roots: &[V::Id],
        base: &[&'a Element],
        base_ctx: Ctx,
        out: &mut Vec<Fix<V::Id>>,
    ) {
        let mut chain: Vec<&'a Element> = base.to_vec();
        let base_len = chain.len();
        let mut ctxs = vec![base_ctx];
        let mut stack: Vec<(V::Id, usize)> = roots.iter().rev().map(|&r| (r, 0)).collect();
        while let Some((n, d)) = stack.pop() {
            chain.truncate(base_len + d);
            ctxs.truncate(d + 1);
            let ctx = ctxs[d];
            match view.kind(n) {
                Some(NodeKind::Element(el)) => {
                    let m = self.marks(el, &chain);
                    if m.block || ctx.blocked {
                        placeholder_fixes(n, el, out);
                        if !view.children(n).is_empty() {
                            out.push(Fix::Clear(n));
                        }
                        continue;
                    }
                    let c = self.inner(ctx, el, &m);
                    let auto_input = m.auto && el.ns == Ns::Html && el.name == "input";
                    for (name, value) in &el.attrs {
                        match self.attr_fix(el, c, auto_input, name, value) {
                            AttrFix::Keep => {}
                            AttrFix::Remove => out.push(Fix::RemoveAttr(n, name.clone())),
                            AttrFix::Set(v) => out.push(Fix::SetAttr(n, name.clone(), v)),
                        }
                    }
                    chain.push(el);
                    ctxs.push(c);
                    stack.extend(view.children(n).iter().rev().map(|&k| (k, d + 1)));
                }
                Some(NodeKind::Text(t)) => {
                    if let Some(s) = self.text_fix(ctx, t, false) {
                        out.push(Fix::SetText(n, s));
                    }
                }
                Some(NodeKind::Comment(t)) => {
                    if let Some(s) = self.text_fix(ctx, t, true) {
                        out.push(Fix::SetText(n, s));
                    }
                }
                Some(NodeKind::Document) => {
                    stack.extend(view.children(n).iter().rev().map(|&k| (k, d)));
                }
                Some(NodeKind::Doctype { .. }) | None => {}
            }
        }
    }

    /// The masked form of a text (or comment) standing in a parent with inner state `ctx`, if
    /// it differs from `t`.
    pub(crate) fn text_fix(&self, ctx: Ctx, t: &str, comment: bool) -> Option<String> {
        let s = if ctx.value_text && ctx.ignored && !comment {
            String::new()
        } else if ctx.masked && (comment || !ctx.raw) {
            self.stars(t, ctx.value_text || ctx.editable || comment)
        } else {
            return None;
        };
        (s != t).then_some(s)
    }

    /// What masking does to attribute `name` = `value` of `el`, whose inner state is `c`;
    /// `auto_input` says an automatic rule masks this input's value.
    pub(crate) fn attr_fix(
        &self,
        el: &Element,
        c: Ctx,
        auto_input: bool,
        name: &str,
        value: &str,
    ) -> AttrFix {
        if !c.masked && !c.ignored && !auto_input {
            return AttrFix::Keep;
        }
        let lower = lower(name);
        let lower = lower.as_ref();
        let html = el.ns == Ns::Html;
        let state = html
            && match lower {
                "value" => matches!(&*el.name, "input" | "option" | "textarea"),
                "checked" => el.name == "input",
                "selected" => el.name == "option",
                _ => false,
            };
        if c.ignored && state {
            return AttrFix::Remove;
        }
        let masked = c.masked || (auto_input && lower == "value");
        if !masked {
            return AttrFix::Keep;
        }
        let v = if lower == "checked" || lower == "selected" {
            return AttrFix::Remove;
        } else if TEXT_ATTRS.contains(&lower) {
            self.stars(value, true)
        } else if URL_ATTRS.contains(&lower) {
            self.mask_url(value)
        } else if lower == "srcset" || lower == "imagesrcset" {
            value
                .split(',')
                .map(|cand| {
                    let cand = cand.trim();
                    match cand.split_once(char::is_whitespace) {
                        Some((url, desc)) => format!("{} {}", self.mask_url(url), desc.trim()),
                        None => self.mask_url(cand),
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            return AttrFix::Keep;
        };
        if v == value {
            AttrFix::Keep
        } else {
            AttrFix::Set(v)
        }
    }

    /// The masked form of a value. `value` texts (attribute values, a textarea's text, the
    /// text of an editable element) are always replaced; other texts that are only whitespace
    /// stay, as layout.
    pub fn stars(&self, t: &str, value: bool) -> String {
        match self.length {
            MaskLength::Keep => t
                .chars()
                .map(|c| if c.is_whitespace() { c } else { '*' })
                .collect(),
            MaskLength::Fixed(n) => {
                if !value && t.chars().all(char::is_whitespace) {
                    t.to_owned()
                } else {
                    "*".repeat(usize::from(n.max(1)))
                }
            }
        }
    }

    /// A URL with its query and fragment masked; for a scheme other than http(s), everything
    /// after the scheme (`mailto:`, `tel:`, `data:` carry their content there).
    pub fn mask_url(&self, url: &str) -> String {
        let scheme_end = url.find(':').filter(|&i| {
            i > 0
                && url[..i]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                && url.as_bytes()[0].is_ascii_alphabetic()
        });
        let cut = match scheme_end {
            Some(i)
                if !url[..i].eq_ignore_ascii_case("http")
                    && !url[..i].eq_ignore_ascii_case("https") =>
            {
                Some(i)
            }
            _ => url.find(['?', '#']),
        };
        match cut {
            Some(i) => format!("{}{}", &url[..=i], self.stars(&url[i + 1..], true)),
            None => url.to_owned(),
        }
    }
}

/// A policy protects every node it does not leave [`Level::Visible`] (spec §12.6, §13.3).
impl crate::hands::Protection for MaskPolicy {
    fn protects(&self, dom: &Dom, node: NodeId) -> bool {
        self.level_of(dom, node) != Level::Visible
    }
}

/// Attributes whose whole value is text a masked element must not show (spec §12.4).
pub const TEXT_ATTRS: &[&str] = &[
    "value",
    "placeholder",
    "title",
    "alt",
    "label",
    "srcdoc",
    "content",
    "aria-label",
    "aria-description",
    "aria-valuetext",
    "aria-placeholder",
    "aria-roledescription",
];

/// Attributes holding a URL whose query (and fragment) a masked element must not show
/// (spec §12.4).
pub const URL_ATTRS: &[&str] = &[
    "href",
    "xlink:href",
    "src",
    "action",
    "formaction",
    "poster",
    "cite",
    "background",
    "data",
    "ping",
];

/// `autocomplete` tokens that name card data, one-time codes or passwords.
fn sensitive_token(t: &str) -> bool {
    strip_prefix_ci(t, "cc-").is_some()
        || t.eq_ignore_ascii_case("one-time-code")
        || t.eq_ignore_ascii_case("current-password")
        || t.eq_ignore_ascii_case("new-password")
}

/// Whether an automatic rule (spec §12.2) masks this control's value.
pub fn auto_rule(el: &Element) -> bool {
    if el.ns != Ns::Html || !matches!(&*el.name, "input" | "textarea" | "select") {
        return false;
    }
    let attr = |n: &str| {
        el.attrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    };
    if el.name == "input"
        && attr("type").is_some_and(|t| {
            let t = t.trim();
            t.eq_ignore_ascii_case("password") || t.eq_ignore_ascii_case("hidden")
        })
    {
        return true;
    }
    attr("autocomplete").is_some_and(|a| a.split_ascii_whitespace().any(sensitive_token))
}

/// `name` in ASCII lower case, borrowed when it is already.
fn lower(name: &str) -> std::borrow::Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(name.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len()
        && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes()))
    .then(|| &s[prefix.len()..])
}

/// The attributes a block placeholder keeps, in their order: `width`, `height`, the `width`
/// and `height` declarations of `style`, then [`BLOCKED`] (spec §12.4).
fn placeholder_fixes<I: Copy>(n: I, el: &Element, out: &mut Vec<Fix<I>>) {
    // The marker stays where it is only if it is already last, with the empty value.
    let marker_last = el
        .attrs
        .iter()
        .rev()
        .find(|(name, value)| {
            let lower = name.to_ascii_lowercase();
            name == BLOCKED
                || ((lower == "width" || lower == "height") && name == &lower)
                || (lower == "style" && name == &lower && !layout_style(value).is_empty())
        })
        .is_some_and(|(name, value)| name == BLOCKED && value.is_empty());
    for (name, value) in &el.attrs {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "width" | "height" if name == &lower => {}
            "style" if name == &lower => {
                let kept = layout_style(value);
                if kept.is_empty() {
                    out.push(Fix::RemoveAttr(n, name.clone()));
                } else if &kept != value {
                    out.push(Fix::SetAttr(n, name.clone(), kept));
                }
            }
            BLOCKED if name == BLOCKED && marker_last => {}
            _ => out.push(Fix::RemoveAttr(n, name.clone())),
        }
    }
    if !marker_last {
        out.push(Fix::SetAttr(n, BLOCKED.into(), String::new()));
    }
}

/// The `width` and `height` declarations of an inline style, as `width:V;height:V`.
fn layout_style(style: &str) -> String {
    let mut out = Vec::new();
    for decl in style.split(';') {
        if let Some((k, v)) = decl.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            if (k == "width" || k == "height") && !v.trim().is_empty() {
                out.push(format!("{k}:{}", v.trim()));
            }
        }
    }
    out.join(";")
}

/// The marks of one element.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Marks {
    pub block: bool,
    pub mask: bool,
    pub unmask: bool,
    pub ignore: bool,
    pub auto: bool,
}

/// The masking state inside an element (or the document), inherited by its subtree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Ctx {
    /// Texts and text-like attributes are masked.
    pub masked: bool,
    /// Masked by an automatic rule: nothing below can unmask.
    pub forced: bool,
    /// Input state is dropped.
    pub ignored: bool,
    /// Inside `style`: texts are style sheets, not page text.
    pub raw: bool,
    /// Inside `textarea`: texts are the control's value.
    pub value_text: bool,
    /// Inside an editable element (`contenteditable` other than `false`): texts are what the
    /// customer types, so masked ones never keep whitespace-only content either.
    pub editable: bool,
    /// Inside a blocked element.
    pub blocked: bool,
}

/// What masking does to one attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AttrFix {
    Keep,
    Remove,
    Set(String),
}

/// One change that masks a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fix<I> {
    SetAttr(I, Name, String),
    RemoveAttr(I, Name),
    SetText(I, String),
    /// Remove all children (of a block placeholder).
    Clear(I),
}

/// Read access to a tree the planner walks: a [`Dom`], or a listing about to be inserted.
pub(crate) trait View {
    type Id: Copy;
    fn kind(&self, id: Self::Id) -> Option<&NodeKind>;
    fn children(&self, id: Self::Id) -> &[Self::Id];
}

impl View for Dom {
    type Id = NodeId;
    fn kind(&self, id: NodeId) -> Option<&NodeKind> {
        self.node(id).map(|n| &n.kind)
    }
    fn children(&self, id: NodeId) -> &[NodeId] {
        Dom::children(self, id)
    }
}

/// A preorder listing with child counts (as `Consumer::insert` takes it), indexed by position.
pub(crate) struct Listing<'a> {
    nodes: &'a [(NodeKind, u32)],
    kids: Vec<Vec<usize>>,
    /// The top-level entries.
    pub roots: Vec<usize>,
}

impl<'a> Listing<'a> {
    /// Indexes `nodes`; entries past what the counts describe are ignored (the insert that
    /// follows rejects such a listing anyway).
    pub fn new(nodes: &'a [(NodeKind, u32)]) -> Self {
        let mut kids = vec![Vec::new(); nodes.len()];
        let mut roots = Vec::new();
        // (index, children still expected)
        let mut open: Vec<(usize, u32)> = Vec::new();
        for (i, (_, count)) in nodes.iter().enumerate() {
            while open.last().is_some_and(|&(_, left)| left == 0) {
                open.pop();
            }
            match open.last_mut() {
                Some((p, left)) => {
                    *left -= 1;
                    kids[*p].push(i);
                }
                None => roots.push(i),
            }
            open.push((i, *count));
        }
        Listing { nodes, kids, roots }
    }
}

impl View for Listing<'_> {
    type Id = usize;
    fn kind(&self, id: usize) -> Option<&NodeKind> {
        self.nodes.get(id).map(|(k, _)| k)
    }
    fn children(&self, id: usize) -> &[usize] {
        self.kids.get(id).map(Vec::as_slice).unwrap_or(&[])
    }
}

fn apply_fix(dom: &mut Dom, f: Fix<NodeId>) {
    let (n, ok) = match f {
        Fix::SetAttr(n, k, v) => (n, dom.set_attr(n, &k, &v).is_ok()),
        Fix::RemoveAttr(n, k) => (n, dom.remove_attr(n, &k).is_ok()),
        Fix::SetText(n, t) => (n, dom.set_text(n, &t).is_ok()),
        Fix::Clear(n) => {
            for c in dom.children(n).to_vec() {
                let _ = dom.remove(c);
            }
            (n, true)
        }
    };
    if !ok {
        // Fail closed: a node that cannot be masked does not stay (never expected).
        let _ = dom.remove(n);
    }
}

// ---------------------------------------------------------------------------------------------
// Selectors.

/// A selector list in the subset Tandem supports: type (`input`, `*`), `#id`, `.class`,
/// `[attr]`, `[attr=v]`, `[attr^=v]`, `[attr$=v]`, `[attr*=v]`, `[attr~=v]`, `:not(…)` of
/// those, descendant (` `) and child (`>`) combinators, and `,` between alternatives.
///
/// Matching needs only the element and its ancestors, never siblings, so a change at one node
/// can only change matches in its subtree. Type and attribute names match ASCII
/// case-insensitively for HTML elements; values match exactly.
///
/// ```
/// use tandem_engine::mask::Selector;
/// let s: Selector = "form.pay > input:not([type=submit]), #iban".parse().unwrap();
/// # let _ = s;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    alts: Vec<Complex>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Complex {
    /// The rightmost compound: the element itself.
    last: Compound,
    /// Going left: the combinator to the compound's right, and the compound.
    rest: Vec<(Combinator, Compound)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Combinator {
    Descendant,
    Child,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Compound {
    tag: Option<String>,
    simple: Vec<Simple>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Simple {
    Id(String),
    Class(String),
    Attr(String, AttrOp),
    Not(Vec<Compound>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AttrOp {
    Exists,
    Equals(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Word(String),
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, SelectorError> {
        let mut p = Parser { src: s, i: 0 };
        let mut alts = Vec::new();
        loop {
            p.ws();
            alts.push(p.complex()?);
            p.ws();
            match p.peek() {
                Some(b',') => p.i += 1,
                None => break,
                Some(_) => return Err(p.err("unexpected character")),
            }
        }
        Ok(Selector { alts })
    }
}

impl Selector {
    /// Whether `el`, whose ancestor elements are `ancestors` (top first, the parent last),
    /// matches.
    pub fn matches(&self, el: &Element, ancestors: &[&Element]) -> bool {
        self.alts
            .iter()
            .any(|c| c.last.matches(el) && match_rest(&c.rest, ancestors))
    }

    fn watched(&self, out: &mut HashSet<String>) {
        fn compound(c: &Compound, out: &mut HashSet<String>) {
            for s in &c.simple {
                match s {
                    Simple::Id(_) => {
                        out.insert("id".into());
                    }
                    Simple::Class(_) => {
                        out.insert("class".into());
                    }
                    Simple::Attr(n, _) => {
                        out.insert(n.to_ascii_lowercase());
                    }
                    Simple::Not(list) => list.iter().for_each(|c| compound(c, out)),
                }
            }
        }
        for a in &self.alts {
            compound(&a.last, out);
            a.rest.iter().for_each(|(_, c)| compound(c, out));
        }
    }
}

fn match_rest(rest: &[(Combinator, Compound)], ancestors: &[&Element]) -> bool {
    let Some(((comb, comp), more)) = rest.split_first() else {
        return true;
    };
    match comb {
        Combinator::Child => ancestors
            .split_last()
            .is_some_and(|(p, up)| comp.matches(p) && match_rest(more, up)),
        Combinator::Descendant => (0..ancestors.len())
            .rev()
            .any(|k| comp.matches(ancestors[k]) && match_rest(more, &ancestors[..k])),
    }
}

impl Compound {
    fn matches(&self, el: &Element) -> bool {
        let html = el.ns == Ns::Html;
        if let Some(t) = &self.tag
            && !(el.name == *t || (html && el.name.eq_ignore_ascii_case(t)))
        {
            return false;
        }
        let attr = |n: &str| {
            el.attrs
                .iter()
                .find(|(k, _)| k == n || (html && k.eq_ignore_ascii_case(n)))
                .map(|(_, v)| v.as_str())
        };
        self.simple.iter().all(|s| match s {
            Simple::Id(id) => attr("id") == Some(id.as_str()),
            Simple::Class(c) => {
                attr("class").is_some_and(|v| v.split_ascii_whitespace().any(|w| w == c))
            }
            Simple::Attr(n, op) => attr(n).is_some_and(|v| match op {
                AttrOp::Exists => true,
                AttrOp::Equals(x) => v == x,
                AttrOp::Prefix(x) => !x.is_empty() && v.starts_with(x.as_str()),
                AttrOp::Suffix(x) => !x.is_empty() && v.ends_with(x.as_str()),
                AttrOp::Contains(x) => !x.is_empty() && v.contains(x.as_str()),
                AttrOp::Word(x) => v.split_ascii_whitespace().any(|w| w == x),
            }),
            Simple::Not(list) => !list.iter().any(|c| c.matches(el)),
        })
    }
}

struct Parser<'a> {
    src: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.i).copied()
    }

    fn err(&self, detail: &'static str) -> SelectorError {
        SelectorError {
            selector: self.src.to_owned(),
            at: self.i,
            detail,
        }
    }

    fn ws(&mut self) -> bool {
        let start = self.i;
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.i += 1;
        }
        self.i > start
    }

    fn complex(&mut self) -> Result<Complex, SelectorError> {
        let mut parts = vec![self.compound()?];
        let mut combs = Vec::new();
        loop {
            let spaced = self.ws();
            match self.peek() {
                Some(b'>') => {
                    self.i += 1;
                    self.ws();
                    combs.push(Combinator::Child);
                }
                Some(b',') | Some(b')') | None => break,
                Some(_) if spaced => combs.push(Combinator::Descendant),
                Some(_) => return Err(self.err("unexpected character")),
            }
            parts.push(self.compound()?);
        }
        // parts: c0 comb0 c1 comb1 … last; stored from the right.
        let last = parts.pop().ok_or_else(|| self.err("expected a selector"))?;
        let rest = combs
            .into_iter()
            .rev()
            .zip(parts.into_iter().rev())
            .collect();
        Ok(Complex { last, rest })
    }

    fn compound(&mut self) -> Result<Compound, SelectorError> {
        let start = self.i;
        let mut c = Compound::default();
        if self.peek() == Some(b'*') {
            self.i += 1;
        } else if self.peek().is_some_and(is_ident_start) {
            c.tag = Some(self.ident()?);
        }
        loop {
            match self.peek() {
                Some(b'#') => {
                    self.i += 1;
                    c.simple.push(Simple::Id(self.ident()?));
                }
                Some(b'.') => {
                    self.i += 1;
                    c.simple.push(Simple::Class(self.ident()?));
                }
                Some(b'[') => {
                    self.i += 1;
                    c.simple.push(self.attr()?);
                }
                Some(b':') => {
                    self.i += 1;
                    let name = self.ident()?;
                    if !name.eq_ignore_ascii_case("not") || self.peek() != Some(b'(') {
                        return Err(self.err("only :not(…) is supported"));
                    }
                    self.i += 1;
                    let mut list = Vec::new();
                    loop {
                        self.ws();
                        list.push(self.compound()?);
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b')') => {
                                self.i += 1;
                                break;
                            }
                            _ => {
                                return Err(
                                    self.err("expected `)` (only simple selectors in :not)")
                                );
                            }
                        }
                    }
                    c.simple.push(Simple::Not(list));
                }
                _ => break,
            }
        }
        if self.i == start {
            return Err(self.err("expected a selector"));
        }
        Ok(c)
    }

    fn attr(&mut self) -> Result<Simple, SelectorError> {
        self.ws();
        let name = self.ident()?;
        self.ws();
        let op = match self.peek() {
            Some(b']') => {
                self.i += 1;
                return Ok(Simple::Attr(name, AttrOp::Exists));
            }
            Some(b'=') => {
                self.i += 1;
                0
            }
            Some(b @ (b'^' | b'$' | b'*' | b'~')) => {
                self.i += 1;
                if self.peek() != Some(b'=') {
                    return Err(self.err("expected `=`"));
                }
                self.i += 1;
                b
            }
            _ => return Err(self.err("expected `]` or an operator")),
        };
        self.ws();
        let value = match self.peek() {
            Some(q @ (b'"' | b'\'')) => {
                self.i += 1;
                let rest = &self.src[self.i..];
                let end = rest
                    .find(q as char)
                    .ok_or_else(|| self.err("unterminated string"))?;
                let v = rest[..end].to_owned();
                self.i += end + 1;
                v
            }
            _ => self.ident()?,
        };
        self.ws();
        if self.peek() != Some(b']') {
            return Err(self.err("expected `]`"));
        }
        self.i += 1;
        let op = match op {
            b'^' => AttrOp::Prefix(value),
            b'$' => AttrOp::Suffix(value),
            b'*' => AttrOp::Contains(value),
            b'~' => AttrOp::Word(value),
            _ => AttrOp::Equals(value),
        };
        Ok(Simple::Attr(name, op))
    }

    fn ident(&mut self) -> Result<String, SelectorError> {
        let mut out = String::new();
        let rest = &self.src[self.i..];
        let mut chars = rest.char_indices().peekable();
        while let Some(&(k, ch)) = chars.peek() {
            if ch == '\\' {
                chars.next();
                match chars.next() {
                    Some((_, e)) => out.push(e),
                    None => {
                        self.i += k;
                        return Err(self.err("escape at end"));
                    }
                }
            } else if ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' || !ch.is_ascii() {
                out.push(ch);
                chars.next();
            } else {
                break;
            }
        }
        let used = chars.peek().map(|&(k, _)| k).unwrap_or(rest.len());
        if out.is_empty() {
            return Err(self.err("expected a name"));
        }
        self.i += used;
        Ok(out)
    }
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b'-' || b == b'\\' || !b.is_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_html;
    use tandem_protocol::Limits;

    /// Without selectors the consumer judges a node walking up; that must agree with the
    /// general walk down, for every node, in every combination of marks.
    #[test]
    fn walking_up_agrees_with_walking_down() {
        let marks = [
            "",
            "data-tandem-mask",
            "data-tandem-unmask",
            "data-tandem-mask data-tandem-unmask",
            "data-tandem-ignore",
            "data-tandem-block",
        ];
        let mut html = String::new();
        for (k, a) in marks.iter().enumerate() {
            for b in &marks {
                html.push_str(&format!(
                    "<div {a}><section {b}><p>t{k}</p><input value=v><style>x</style>\
                     <textarea autocomplete=cc-csc><b {a}>x</b></textarea>\
                     <select {b}><option {a}>o</option></select></section></div>"
                ));
            }
        }
        let dom = parse_html(&html, Limits::DEFAULT);
        for private in [false, true] {
            let mut p = MaskPolicy::default();
            p.set_private(private);
            for id in dom.preorder(DOCUMENT_ID) {
                assert_eq!(
                    p.context_up(&dom, id),
                    p.context_down(&dom, id).1,
                    "node {id}, private {private}"
                );
            }
        }
    }

    #[test]
    fn masked_urls() {
        let mut p = MaskPolicy::default();
        p.set_length(MaskLength::Keep);
        for (url, want) in [
            ("/a/b", "/a/b"),
            ("/a?x=1", "/a?***"),
            ("https://h/p#frag", "https://h/p#****"),
            ("HTTPS://h/p?q", "HTTPS://h/p?*"),
            ("mailto:a@b", "mailto:***"),
            ("tel:+1 555", "tel:** ***"),
            ("data:text/html,hi", "data:************"),
            ("a:b?c", "a:***"),
            ("1a:b?c", "1a:b?*"),
        ] {
            assert_eq!(p.mask_url(url), want, "{url}");
        }
    }
}

/// The oracle of the `mask_canary` fuzz target and the canary property test (STYLE.md 10):
/// random pages with a canary string in maskable places, random change sequences through
/// every entry point of the consumer, and the check that the canary never appears in any
/// frame sent (raw or compressed), nor in the consumer's own tree.
///
/// Where a canary may go is decided by an oracle written apart from the policy code above,
/// for the fixed selectors of [`fuzzing::policy`]: it reads the consumer's current tree.
#[doc(hidden)]
pub mod fuzzing {
    use tandem_protocol::compress::DomCompressor;
    use tandem_protocol::message::{Click, Input, InputValue, RefusalCode};
    use tandem_protocol::{DOCUMENT_ID, Limits, Message, NodeId, Ns, frame};

    use super::{MaskLength, MaskPolicy, Rule};
    use crate::consumer::{Added, ChangeRecord};
    use crate::diff::fuzzing::{Reader, slot};
    use crate::dom::{Dom, Element, NodeKind};
    use crate::{Agent, Consumer, parse_html, to_html};

    /// The secret planted in maskable places.
    pub const CANARY: &str = "c4n4ry";

    /// The policy for mode byte `mode`: bit 0 private, bit 1 keep length (else fixed, bits
    /// 4–6 + 1 stars); unless bit 2 is set (markers only), selectors `.m, section > .s` mask,
    /// `.b` block, `.i` ignore, `.u` unmask.
    pub fn policy(mode: u8) -> MaskPolicy {
        let mut p = MaskPolicy::default();
        p.set_private(mode & 1 != 0);
        p.set_length(if mode & 2 != 0 {
            MaskLength::Keep
        } else {
            MaskLength::Fixed(1 + ((mode >> 4) & 7))
        });
        if mode & 4 != 0 {
            return p;
        }
        for (rule, sel) in [
            (Rule::Mask, ".m, section > .s"),
            (Rule::Block, ".b"),
            (Rule::Ignore, ".i"),
            (Rule::Unmask, ".u"),
        ] {
            // Fixed, valid selectors.
            p.add_selector(rule, sel).expect("fixed selector parses");
        }
        p
    }

    /// The oracle's view of the state inside a node.
    #[derive(Debug, Clone, Copy, Default)]
    struct Inside {
        masked: bool,
        forced: bool,
        ignored: bool,
        blocked: bool,
    }

    fn has_class(e: &Element, c: &str) -> bool {
        e.attr("class")
            .is_some_and(|v| v.split_ascii_whitespace().any(|w| w == c))
    }

    fn auto(e: &Element) -> bool {
        let sensitive = |v: &str| {
            v.split_ascii_whitespace().any(|t| {
                t.starts_with("cc-")
                    || ["one-time-code", "current-password", "new-password"].contains(&t)
            })
        };
        e.ns == Ns::Html
            && ((e.name == "input" && matches!(e.attr("type"), Some("password") | Some("hidden")))
                || (["input", "textarea", "select"].contains(&&*e.name)
                    && e.attr("autocomplete").is_some_and(sensitive)))
    }

    /// The state inside `id` (an element, or the document) of `dom` under `policy(mode)`.
    fn inside(dom: &Dom, id: NodeId, mode: u8) -> Inside {
        let mut path = vec![id];
        while let Some(p) = dom.parent(*path.last().unwrap_or(&DOCUMENT_ID)) {
            path.push(p);
        }
        let sel = mode & 4 == 0;
        let mut s = Inside {
            masked: mode & 1 != 0,
            ..Inside::default()
        };
        let mut parent: Option<&Element> = None;
        for &n in path.iter().rev() {
            let Some(e) = dom.node(n).and_then(|x| x.element()) else {
                continue;
            };
            let mark = |c: &str, a: &str| (sel && has_class(e, c)) || e.attr(a).is_some();
            let block = mark("b", "data-tandem-block") || e.attr("data-tandem-blocked").is_some();
            let mask = mark("m", "data-tandem-mask")
                || (sel && has_class(e, "s") && parent.is_some_and(|p| p.name == "section"));
            let unmask = mark("u", "data-tandem-unmask");
            s.blocked |= block;
            s.forced |= auto(e) && e.name != "input";
            s.masked = s.forced || mask || (!unmask && s.masked);
            s.ignored |= mark("i", "data-tandem-ignore");
            parent = Some(e);
        }
        s
    }

    /// Whether a canary may be the text of `node` (a text or a comment): whether the policy
    /// hides it where it stands.
    ///
    /// Under *ignore* only a `textarea`'s text is its value (spec §12.4): a comment a script
    /// put inside one is no input state, and stays.
    fn text_may_hide(dom: &Dom, node: NodeId, mode: u8) -> bool {
        let Some(parent) = dom.parent(node) else {
            return false;
        };
        let comment = matches!(dom.node(node).map(|n| &n.kind), Some(NodeKind::Comment(_)));
        let s = inside(dom, parent, mode);
        let el = dom.node(parent).and_then(|n| n.element());
        s.blocked
            || (s.masked && el.is_none_or(|e| e.name != "style"))
            || (s.ignored && !comment && el.is_some_and(|e| e.name == "textarea"))
    }

    /// Whether a canary may be the value of attribute `name` of element `id`.
    fn attr_may_hide(dom: &Dom, id: NodeId, name: &str, mode: u8) -> bool {
        let Some(e) = dom.node(id).and_then(|n| n.element()) else {
            return false;
        };
        let s = inside(dom, id, mode);
        let input = e.ns == Ns::Html && e.name == "input";
        s.blocked
            || (s.masked && ATTRS.contains(&name))
            || (name == "value" && input && (auto(e) || s.ignored))
    }

    const ATTRS: &[&str] = &[
        "title",
        "alt",
        "placeholder",
        "aria-label",
        "value",
        "href",
        "src",
        "srcdoc",
    ];

    fn attr_value(name: &str, canary: bool) -> String {
        let secret = if canary { CANARY } else { "plain" };
        match name {
            "href" | "src" => format!("https://x.test/{}?q={secret}#f", "p"),
            _ => format!("v {secret}"),
        }
    }

    /// Subtrees that are masked by their own marks wherever they stand, with canaries.
    const TEMPLATES: &[&str] = &[
        "<div class=m title='C'>C<span alt='C' aria-label='C'>C</span><!--C--></div>",
        "<div data-tandem-block class=x title='C'><p title='C'>C</p><img src='https://x/i?C' width=3></div>",
        "<div class=b style='width:4px;color:C'><input value='C'></div>",
        "<input type=password value='C'>",
        "<input type=hidden value='C'>",
        "<input autocomplete='section-a cc-number' value='C' placeholder='card'>",
        "<textarea autocomplete=cc-csc>C</textarea>",
        "<select autocomplete=cc-exp-month><option value='C' selected>C</option><option>02</option></select>",
        "<form class=i><input value='C' checked><textarea>C</textarea></form>",
        "<section><p class=s title='C'>C<a href='https://x/a?C'>C</a></p></section>",
        "<div class='m u' data-tandem-mask><iframe srcdoc='C'></iframe>C</div>",
        "<p class=u>plain <b>text</b></p>",
        "<p>plain</p><ul><li>one</li><li>two</li></ul>",
        "<div contenteditable data-tandem-mask>C</div>",
    ];

    /// A template's nodes, parsed into a listing for `Consumer::insert`.
    fn template(k: u8, mode: u8) -> Vec<(NodeKind, u32)> {
        let mut html = TEMPLATES[usize::from(k) % TEMPLATES.len()].replace('C', CANARY);
        if mode & 4 != 0 {
            // No selectors: the marker attributes carry the levels.
            for (class, marker) in [
                ("class=m ", "data-tandem-mask "),
                ("class=b ", "data-tandem-block "),
                ("class=i>", "data-tandem-ignore>"),
                ("class=s ", "data-tandem-mask "),
            ] {
                html = html.replace(class, marker);
            }
        }
        let dom = parse_html(&format!("<body>{html}</body>"), Limits::DEFAULT);
        let body = dom.body().unwrap_or(DOCUMENT_ID);
        dom.children(body)
            .iter()
            .flat_map(|&c| crate::patch::subtree(&dom, c))
            .collect()
    }

    const MARKS: &[(&str, &str)] = &[
        ("class", "m"),
        ("class", "b"),
        ("class", "i"),
        ("class", "u"),
        ("class", "s"),
        ("class", "x"),
        ("data-tandem-mask", ""),
        ("data-tandem-block", ""),
        ("data-tandem-ignore", ""),
        ("data-tandem-unmask", ""),
        ("type", "password"),
        ("autocomplete", "cc-exp"),
    ];

    /// Sends what the consumer queued as frames (checking each and the compressed stream for
    /// the canary) to the agent, and the replies back.
    pub fn pump(c: &mut Consumer, agent: &mut Agent, z: &mut DomCompressor) {
        let limits = Limits::DEFAULT;
        let mut wire = Vec::new();
        while let Some(msg) = c.poll_message() {
            let f = frame::to_frame(&msg, &limits).expect("frame encodes");
            assert_no_canary(&f, "a frame");
            wire.extend_from_slice(&f);
            let back = frame::decode_exact(&f, &limits).expect("frame decodes");
            agent.handle_message(back).expect("agent applies");
        }
        let mut packed = Vec::new();
        z.compress(&wire, &mut packed).expect("compresses");
        assert_no_canary(&packed, "the compressed stream");
        while let Some(reply) = agent.poll_message() {
            c.handle_message(&reply).expect("consumer takes the reply");
        }
        assert_eq!(c.fallbacks(), 0, "a patch failed its own check");
        assert_eq!(agent.tree_hash(), Some(c.tree_hash()), "agent diverged");
        assert!(
            !to_html(c.dom()).contains(CANARY),
            "the consumer's tree holds the canary"
        );
    }

    /// Panics if `bytes` contain the canary.
    pub fn assert_no_canary(bytes: &[u8], what: &str) {
        assert!(
            !bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
            "the canary leaked in {what}"
        );
    }

    fn pick(dom: &Dom, k: u16) -> NodeId {
        let nodes: Vec<NodeId> = dom.preorder(DOCUMENT_ID).collect();
        nodes[usize::from(k) % nodes.len()]
    }

    fn is_element(dom: &Dom, id: NodeId) -> bool {
        dom.node(id).and_then(|n| n.element()).is_some()
    }

    /// One step of the sequence, read from `r`, applied to the consumer `c`.
    fn step(r: &mut Reader<'_>, c: &mut Consumer, mode: u8) {
        let (kind, a) = (r.byte() % 10, r.u16());
        let node = pick(c.dom(), a);
        let dom = c.dom();
        match kind {
            0 => {
                // Text: a canary where it must be masked, plain text elsewhere.
                if dom.text(node).is_some() {
                    let hide = text_may_hide(dom, node, mode);
                    let t = if hide {
                        format!("t {CANARY}")
                    } else {
                        "t plain".into()
                    };
                    let _ = c.set_text(node, &t);
                }
            }
            1 => {
                let name = ATTRS[usize::from(r.byte()) % ATTRS.len()];
                if is_element(dom, node) {
                    let v = attr_value(name, attr_may_hide(dom, node, name, mode));
                    let _ = c.set_attr(node, name, &v);
                }
            }
            2 => {
                let (name, value) = MARKS[usize::from(r.byte()) % MARKS.len()];
                if is_element(dom, node) {
                    let _ = c.set_attr(node, name, value);
                }
            }
            3 => {
                let (name, _) = MARKS[usize::from(r.byte()) % MARKS.len()];
                if is_element(dom, node) {
                    let _ = c.remove_attr(node, name);
                }
            }
            4 => {
                let at = r.u16();
                let t = r.byte();
                if is_element(dom, node) {
                    let prev = slot(dom, node, at, 0);
                    let _ = c.insert(node, prev, template(t, mode));
                }
            }
            5 => {
                if node != DOCUMENT_ID && dom.parent(node) != Some(DOCUMENT_ID) {
                    let _ = c.remove(node);
                }
            }
            6 | 7 => {
                let parent = pick(dom, r.u16());
                let at = r.u16();
                if node == DOCUMENT_ID
                    || !is_element(dom, parent)
                    || dom.is_ancestor_or_self(node, parent)
                {
                    return;
                }
                let prev = slot(dom, parent, at, node);
                if kind == 6 {
                    let _ = c.move_node(node, parent, prev);
                } else if let Some(old) = dom.parent(node) {
                    // The same move as a MutationObserver reports it.
                    let _ = c.apply_records([
                        ChangeRecord::ChildList {
                            target: old,
                            removed: vec![node],
                            added: vec![],
                            previous_sibling: 0,
                        },
                        ChangeRecord::ChildList {
                            target: parent,
                            removed: vec![],
                            added: vec![Added::Existing(node)],
                            previous_sibling: prev,
                        },
                    ]);
                }
            }
            8 => {
                // The two-tree path: a changed copy of the page, with canaries where the
                // copy masks, brought over by the diff.
                let mut copy = dom.clone();
                let ids: Vec<NodeId> = copy.preorder(DOCUMENT_ID).collect();
                for &n in ids.iter().skip(usize::from(a) % 7).step_by(3) {
                    if copy.text(n).is_some() {
                        let hide = text_may_hide(&copy, n, mode);
                        if hide {
                            let _ = copy.set_text(n, &format!("d {CANARY}"));
                        }
                    } else if is_element(&copy, n) && attr_may_hide(&copy, n, "title", mode) {
                        let _ = copy.set_attr(n, "title", CANARY);
                    }
                }
                let t = r.byte();
                if let Some(&last) = ids.iter().rev().find(|&&n| is_element(&copy, n)) {
                    let mut prev = 0;
                    for (kind, _) in template(t, mode).into_iter().take(1) {
                        // Top node only (its subtree would need the listing's ids).
                        if let Ok(id) = copy.create(kind) {
                            let _ = copy.attach(id, last, prev);
                            prev = id;
                        }
                    }
                }
                c.update_to(&mut copy).expect("diff applies");
            }
            _ => {
                let _ = c.flush();
            }
        }
    }

    /// The fuzz target: a policy (first byte), a page built of templates, then up to 64 steps
    /// (texts, attributes, marks, inserts, removals, moves, records, diffs, flushes), every
    /// send checked for the canary and for convergence.
    pub fn mask_canary(data: &[u8]) {
        let mut r = Reader::new(data);
        let mode = r.byte();
        let limits = Limits::DEFAULT;
        let mut page = parse_html(
            "<!DOCTYPE html><html><head></head><body></body></html>",
            limits,
        );
        let body = pick(&page, 4);
        for _ in 0..usize::from(r.byte() % 8) {
            let parent = pick(&page, r.u16());
            let parent = if is_element(&page, parent) {
                parent
            } else {
                body
            };
            let listing = template(r.byte(), mode);
            let prev = page.children(parent).last().copied().unwrap_or(0);
            let first = page.next_id();
            let _ = crate::patch::Op::Insert {
                parent,
                prev,
                first,
                nodes: listing,
            }
            .apply(&mut page);
        }
        let mut c = Consumer::with_policy(page, "https://x.test/", limits, policy(mode));
        let mut agent = Agent::new(limits);
        let mut z = DomCompressor::new().expect("compressor");
        pump(&mut c, &mut agent, &mut z);
        for _ in 0..64 {
            if r.is_empty() {
                break;
            }
            step(&mut r, &mut c, mode);
            // The agent can never type into what it cannot see.
            let target = pick(c.dom(), r.u16());
            if c.policy().level_of(c.dom(), target) != super::Level::Visible {
                let input = Message::Input(Input {
                    id: 1,
                    node: target,
                    value: InputValue::Text(CANARY.into()),
                });
                let refused = c
                    .check_action(&input)
                    .expect_err("input into a masked node");
                assert_eq!(refused.code, RefusalCode::Masked);
            }
            let _ = c.check_action(&Message::Click(Click {
                id: 2,
                node: target,
                x: 0,
                y: 0,
                button: 0,
                modifiers: 0,
            }));
        }
        c.flush();
        pump(&mut c, &mut agent, &mut z);
    }
}
