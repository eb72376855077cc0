//! A live-page generator: seeded random changes of the kinds a real page makes (text edits,
//! attribute changes, inserted and removed items, moves), applied through a [`Consumer`]. Used
//! by `tandem consumer` and `tandem demo` as the built-in stream of page changes, and by tests.

use tandem_protocol::{NodeId, Ns};

use crate::dom::{Element, NodeKind};
use crate::{Consumer, EngineError};

/// A small deterministic PRNG (SplitMix64): the engine takes seeds, never OS randomness.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

const WORDS: &[&str] = &[
    "order", "delivery", "account", "payment", "update", "status", "ready", "shipped", "review",
    "support", "ticket", "balance", "invoice", "message", "profile", "settings",
];

/// Elements that must not get generated children (void, raw text, or structural).
fn closed(e: &Element) -> bool {
    e.ns != Ns::Html
        || matches!(
            &*e.name,
            "area"
                | "base"
                | "br"
                | "col"
                | "embed"
                | "hr"
                | "img"
                | "input"
                | "link"
                | "meta"
                | "source"
                | "track"
                | "wbr"
                | "param"
                | "style"
                | "script"
                | "textarea"
                | "title"
                | "iframe"
                | "noscript"
                | "html"
                | "head"
                | "select"
                | "option"
                | "table"
                | "tbody"
                | "thead"
                | "tr"
                | "colgroup"
                | "template"
                | "svg"
                | "math"
                | "pre"
                | "xmp"
                | "frameset"
                | "noembed"
                | "noframes"
                | "plaintext"
                | "picture"
                | "video"
                | "audio"
                | "object"
                | "ul"
                | "ol"
                | "dl"
        )
}

/// The kinds of change the generator makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Replace or edit a text.
    Text,
    /// Set an attribute.
    SetAttr,
    /// Remove an attribute.
    RemoveAttr,
    /// Insert a new element with text.
    Insert,
    /// Remove an element.
    Remove,
    /// Move an element elsewhere.
    Move,
}

/// Generates a reproducible stream of page changes.
#[derive(Debug, Clone)]
pub struct LivePage {
    rng: Rng,
    tick: u64,
}

impl LivePage {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        LivePage {
            rng: Rng::new(seed),
            tick: 0,
        }
    }

    fn word(&mut self) -> &'static str {
        WORDS[self.rng.below(WORDS.len())]
    }

    /// Makes `n` random changes on `c`'s tree; returns the kinds made. A change that does not
    /// apply to the current page (no text node to edit, say) is skipped.
    pub fn step(&mut self, c: &mut Consumer, n: usize) -> Result<Vec<ChangeKind>, EngineError> {
        let mut made = Vec::with_capacity(n);
        for _ in 0..n {
            self.tick += 1;
            if let Some(k) = self.change(c)? {
                made.push(k);
            }
        }
        Ok(made)
    }

    fn change(&mut self, c: &mut Consumer) -> Result<Option<ChangeKind>, EngineError> {
        let dom = c.dom();
        // The changes below never move or remove the body, so it stays where the parser put it.
        let Some(body) = dom.body() else {
            return Ok(None);
        };
        let mut elements = Vec::new();
        let mut texts = Vec::new();
        for id in dom.preorder(body) {
            match dom.node(id).map(|n| &n.kind) {
                Some(NodeKind::Element(e)) if !closed(e) => elements.push(id),
                Some(NodeKind::Text(t)) if !t.trim().is_empty() => {
                    let in_raw = dom
                        .parent(id)
                        .and_then(|p| dom.node(p))
                        .and_then(|p| p.element())
                        .is_some_and(closed);
                    if !in_raw {
                        texts.push(id);
                    }
                }
                _ => {}
            }
        }
        let pick = |rng: &mut Rng, v: &[NodeId]| (!v.is_empty()).then(|| v[rng.below(v.len())]);
        let kind = match self.rng.below(10) {
            0..=2 => ChangeKind::Text,
            3..=4 => ChangeKind::SetAttr,
            5 => ChangeKind::RemoveAttr,
            6..=7 => ChangeKind::Insert,
            8 => ChangeKind::Remove,
            _ => ChangeKind::Move,
        };
        let tick = self.tick;
        match kind {
            ChangeKind::Text => {
                let Some(t) = pick(&mut self.rng, &texts) else {
                    return Ok(None);
                };
                let text = format!("{} {} #{tick}", self.word(), self.word());
                c.set_text(t, &text)?;
            }
            ChangeKind::SetAttr => {
                let Some(e) = pick(&mut self.rng, &elements) else {
                    return Ok(None);
                };
                let (name, value) = match self.rng.below(3) {
                    0 => ("class", format!("live {}", self.word())),
                    1 => ("data-tick", tick.to_string()),
                    _ => ("title", format!("{} {}", self.word(), tick)),
                };
                c.set_attr(e, name, &value)?;
            }
            ChangeKind::RemoveAttr => {
                let Some(e) = pick(&mut self.rng, &elements) else {
                    return Ok(None);
                };
                let attrs = c
                    .dom()
                    .node(e)
                    .and_then(|n| n.element())
                    .map(|el| el.attrs.clone())
                    .unwrap_or_default();
                if attrs.is_empty() {
                    return Ok(None);
                }
                let name = attrs[self.rng.below(attrs.len())].0.clone();
                c.remove_attr(e, &name)?;
            }
            ChangeKind::Insert => {
                let Some(parent) = pick(&mut self.rng, &elements) else {
                    return Ok(None);
                };
                let kids = c.dom().children(parent).to_vec();
                let prev = if kids.is_empty() {
                    0
                } else {
                    kids[self.rng.below(kids.len() + 1).min(kids.len() - 1)]
                };
                let name = if self.rng.below(2) == 0 { "p" } else { "span" };
                let el = NodeKind::Element(Element {
                    ns: Ns::Html,
                    name: name.into(),
                    attrs: vec![("class".into(), format!("item {}", self.word()))],
                });
                let text = NodeKind::Text(format!("New {} {} #{tick}", self.word(), self.word()));
                c.insert(parent, prev, vec![(el, 1), (text, 0)])?;
            }
            ChangeKind::Remove => {
                let candidates: Vec<_> = elements.iter().copied().filter(|&e| e != body).collect();
                let Some(e) = pick(&mut self.rng, &candidates) else {
                    return Ok(None);
                };
                // Keep pages from emptying: only remove small subtrees.
                if c.dom().preorder(e).count() > 20 {
                    return Ok(None);
                }
                c.remove(e)?;
            }
            ChangeKind::Move => {
                let candidates: Vec<_> = elements.iter().copied().filter(|&e| e != body).collect();
                let Some(e) = pick(&mut self.rng, &candidates) else {
                    return Ok(None);
                };
                let Some(parent) = pick(&mut self.rng, &elements) else {
                    return Ok(None);
                };
                if c.dom().is_ancestor_or_self(e, parent) {
                    return Ok(None);
                }
                let kids: Vec<_> = c
                    .dom()
                    .children(parent)
                    .iter()
                    .copied()
                    .filter(|&k| k != e)
                    .collect();
                let prev = if kids.is_empty() {
                    0
                } else {
                    kids[self.rng.below(kids.len())]
                };
                c.move_node(e, parent, prev)?;
            }
        }
        Ok(Some(kind))
    }
}
