//! Coded patches (spec §4.7): a `PATCH` message as a few bits per field, under adaptive models
//! that both ends of a DOM stream keep in step.
//!
//! A patch is small, and what it holds is structured: an operation kind, node ids, counts,
//! string references and a few short new strings. A byte compressor sees none of that
//! structure and pays for every flush; this coder models each field on its own, learning from
//! every patch the stream carried before.
//!
//! Codec 0x02 of the DOM stream ([`compress`](crate::compress), spec §4.6.5) carries every
//! patch coded by this module; spec §4.7 specifies the coder bit for bit, and the
//! `entropy_estimate` example of `tandem-benches` measures it against zstd alone.
//!
//! ```text
//!  Patch ──► PatchEncoder ──► coded bytes ──► PatchDecoder ──► Patch
//!            (models adapt       (range coder,    (same models, same
//!             per field)          ~1 bit/choice)   order; limits §8)
//! ```
//!
//! - the operation kind, in the context of the kind before it;
//! - node ids and places: the bit length of the id under an adaptive model per operation kind,
//!   the bits below its leading one as they are (ids name nodes all over the page); an
//!   insert's first id as one bit when it is the id after the previous insert's nodes;
//! - counts, lengths, edit offsets and string-table indices: the same bit-length code, with
//!   a model per field;
//! - a string reference's kind per field (an attribute value's in the context of the
//!   attribute's name), static-table indices with a model over the table per field;
//! - new strings bit by bit, mixing predictions from the bytes before (orders 0 to 4) and from
//!   the last place those bytes occurred in earlier strings, one such model for texts and
//!   another for names and attribute values, each string introduced by a marker of its field;
//!   the strings of the stream's snapshot enter the same histories uncoded
//!   ([`PatchEncoder::learn_snapshot`]), so a patch that repeats them finds them;
//! - an insert's records: the record kind in the context of the parent element's tag, child
//!   and attribute counts in that of the element's own;
//! - the header: the epoch as one bit when it is the previous patch's, the sequence number as
//!   one bit when it follows it; the 8-byte check as it is.
//!
//! Every [`Patch`] value codes and decodes to itself, so a sender may code every patch it
//! sends. The models start from the same state at both ends and adapt in the same order, so a
//! decoder MUST see every coded patch of its stream, in order; after an error its state is
//! lost, and so is the stream's.
//!
//! ```
//! use tandem_protocol::message::Patch;
//! use tandem_protocol::patch_coder::{PatchDecoder, PatchEncoder};
//! use tandem_protocol::{Limits, PatchOp, Sym};
//!
//! let (mut encoder, mut decoder) = (PatchEncoder::new(), PatchDecoder::new(Limits::DEFAULT));
//! let mut sizes = Vec::new();
//! for (seq, text) in [(1, "3 minutes ago"), (2, "4 minutes ago")] {
//!     let patch = Patch {
//!         epoch: 1,
//!         seq,
//!         ops: vec![PatchOp::SetText { node: 4242, text: Sym::Lit(text.into()) }],
//!         hash: [1, 2, 3, 4, 5, 6, 7, 8],
//!     };
//!     let mut coded = Vec::new();
//!     encoder.encode(&patch, &mut coded);
//!     assert_eq!(decoder.decode(&coded).unwrap(), patch);
//!     sizes.push(coded.len());
//! }
//! // The second patch is coded with what the first taught the models.
//! assert!(sizes[1] < sizes[0], "{sizes:?}");
//! ```

use crate::dom::{Attr, NodeId, NodeRecord, NodeRun, Ns, PatchOp, Place, TextEdit};
use crate::message::Patch;
use crate::range::{self, Coder, Prob};
use crate::text_model::TextModel;
use crate::{DecodeError, Limits, RecordRef, SnapshotView, Sym, SymRef};

/// The field name in errors about a coded patch.
const FIELD: &str = "coded_patch";

/// A value of `bits` bits coded bit by bit from the top, each bit in the context of the bits
/// above it: `probs` holds `2^bits` estimates (index 0 unused).
fn tree<C: Coder>(c: &mut C, probs: &mut [Prob], bits: u32, v: u32) -> Result<u32, DecodeError> {
    debug_assert_eq!(probs.len(), 1 << bits);
    let mut node = 1usize;
    for i in (0..bits).rev() {
        let bit = c.bit(&mut probs[node], (v >> i) & 1 == 1)?;
        node = (node << 1) | usize::from(bit);
    }
    Ok((node - (1 << bits)) as u32)
}

/// An unsigned integer: its bit length (0 to 64) under an adaptive model, the bit below the
/// leading one under a model per length, the rest direct.
#[derive(Debug, Clone)]
struct IntModel {
    length: [Prob; 128],
    second: [Prob; 65],
}

impl Default for IntModel {
    fn default() -> Self {
        IntModel {
            length: [Prob::default(); 128],
            second: [Prob::default(); 65],
        }
    }
}

impl IntModel {
    fn code<C: Coder>(&mut self, c: &mut C, v: u64) -> Result<u64, DecodeError> {
        let len = tree(c, &mut self.length, 7, 64 - v.leading_zeros())?;
        match len {
            0 => Ok(0),
            1 => Ok(1),
            2..=64 => {
                let below = len - 2;
                let second = c.bit(&mut self.second[len as usize], (v >> below) & 1 == 1)?;
                let rest = c.direct(v, below)?;
                Ok(1 << (len - 1) | u64::from(second) << below | rest)
            }
            _ => Err(DecodeError::InvalidValue {
                field: FIELD,
                detail: "integer longer than 64 bits",
            }),
        }
    }

    fn code_u32<C: Coder>(&mut self, c: &mut C, v: u32) -> Result<u32, DecodeError> {
        u32::try_from(self.code(c, v.into())?).map_err(|_| DecodeError::InvalidValue {
            field: FIELD,
            detail: "value above 2^32",
        })
    }
}

/// Which field a string reference fills: each has its own models.
#[derive(Debug, Clone, Copy)]
enum Field {
    Tag = 0,
    AttrName = 1,
    AttrValue = 2,
    Text = 3,
    Comment = 4,
    Doctype = 5,
    SetText = 6,
}

const FIELDS: usize = 7;

impl Field {
    /// Texts share one byte model, names and values the other.
    fn bytes(self) -> usize {
        match self {
            Field::Text | Field::Comment | Field::SetText => TEXT_BYTES,
            Field::Tag | Field::AttrName | Field::AttrValue | Field::Doctype => NAME_BYTES,
        }
    }
}

const TEXT_BYTES: usize = 0;
const NAME_BYTES: usize = 1;

/// Contexts a string reference's kind is coded in, per field (an attribute value's: its name).
const SUBS: usize = 64;

/// The static-table index that escapes to [`SymModel::escaped`] for larger indices.
const STATIC_ESCAPE: u32 = (1 << STATIC_BITS) - 1;
const STATIC_BITS: u32 = 9;

/// The models of one field's string references.
#[derive(Debug, Clone)]
struct SymModel {
    kind: [[Prob; 4]; SUBS],
    stat: [Prob; 1 << STATIC_BITS],
    escaped: IntModel,
    dynamic: IntModel,
    length: IntModel,
}

impl Default for SymModel {
    fn default() -> Self {
        SymModel {
            kind: [[Prob::default(); 4]; SUBS],
            stat: [Prob::default(); 1 << STATIC_BITS],
            escaped: IntModel::default(),
            dynamic: IntModel::default(),
            length: IntModel::default(),
        }
    }
}

/// Operation kinds as the coder numbers them (their wire variant numbers, spec §6.5).
const OP_KINDS: usize = 8;

/// Contexts of an insert's records: the parent's tag (0 for the listing's top level, 1 for a
/// tag outside the static table, 2 + the static index modulo 62 otherwise).
const TAG_CTXS: usize = 64;

fn tag_ctx(name: &Sym) -> usize {
    match name {
        Sym::Static(i) => 2 + (*i as usize % (TAG_CTXS - 2)),
        _ => 1,
    }
}

/// The context an attribute value's kind is coded in: its name.
fn name_ctx(name: &Sym) -> usize {
    static_ctx(match name {
        Sym::Static(i) => Some(*i),
        _ => None,
    })
}

/// [`name_ctx`] of a name that is `Static(i)`, or of any other name (`None`).
fn static_ctx(i: Option<u32>) -> usize {
    i.map_or(0, |i| 1 + (i as usize % (SUBS - 1)))
}

/// The marker that starts a string of `field` (in context `sub`) in its class's history.
fn marker(field: Field, sub: usize) -> u8 {
    match field {
        Field::AttrValue => 16 + (sub % 48) as u8,
        f => 1 + f as u8,
    }
}

/// Every model of a coded patch stream, and what the previous patch left.
#[derive(Debug, Clone)]
struct Models {
    same_epoch: Prob,
    next_seq: Prob,
    seq: IntModel,
    ops: IntModel,
    kind: [[Prob; OP_KINDS]; OP_KINDS + 1],
    node: [IntModel; OP_KINDS],
    place_first: [Prob; OP_KINDS],
    place: [IntModel; OP_KINDS],
    fresh: Prob,
    first: IntModel,
    records: IntModel,
    record_kind: [[Prob; 4]; TAG_CTXS],
    ns: IntModel,
    attrs: [IntModel; TAG_CTXS],
    children: [IntModel; TAG_CTXS],
    syms: [SymModel; FIELDS],
    texts: [TextModel; 2],
    edits: IntModel,
    keep: IntModel,
    delete: IntModel,
    insert: IntModel,
    run: IntModel,
    run_step: IntModel,
    last_epoch: u32,
    last_seq: u64,
    last_kind: usize,
    /// The id after the previous insert's last node: usually the next insert's first.
    next_fresh: NodeId,
}

impl Default for Models {
    fn default() -> Self {
        Models {
            same_epoch: Prob::default(),
            next_seq: Prob::default(),
            seq: IntModel::default(),
            ops: IntModel::default(),
            kind: [[Prob::default(); OP_KINDS]; OP_KINDS + 1],
            node: Default::default(),
            place_first: [Prob::default(); OP_KINDS],
            place: Default::default(),
            fresh: Prob::default(),
            first: IntModel::default(),
            records: IntModel::default(),
            record_kind: [[Prob::default(); 4]; TAG_CTXS],
            ns: IntModel::default(),
            attrs: std::array::from_fn(|_| IntModel::default()),
            children: std::array::from_fn(|_| IntModel::default()),
            syms: Default::default(),
            texts: Default::default(),
            edits: IntModel::default(),
            keep: IntModel::default(),
            delete: IntModel::default(),
            insert: IntModel::default(),
            run: IntModel::default(),
            run_step: IntModel::default(),
            last_epoch: 0,
            last_seq: 0,
            last_kind: OP_KINDS,
            next_fresh: 0,
        }
    }
}

/// What a decoder may still produce: the limits of spec §8, and a budget of frame bytes so a
/// coded patch never decodes to a `PATCH` body larger than a frame may be.
struct Bound {
    limits: Limits,
    left: u64,
}

impl Bound {
    /// Takes `n` bytes of the budget.
    fn take(&mut self, n: u64) -> Result<(), DecodeError> {
        match self.left.checked_sub(n) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(DecodeError::Limit {
                field: "coded_patch.body",
                limit: self.limits.max_frame_body.into(),
                actual: u64::from(self.limits.max_frame_body) + 1,
            }),
        }
    }

    /// Checks a count against its limit and the budget (each item takes at least a byte).
    fn count(&mut self, field: &'static str, n: u64, limit: u32) -> Result<usize, DecodeError> {
        if n > u64::from(limit) {
            return Err(DecodeError::Limit {
                field,
                limit: limit.into(),
                actual: n,
            });
        }
        self.take(n)?;
        Ok(n as usize)
    }
}

impl Models {
    /// Feeds the strings a snapshot part brings into the text models' histories (spec
    /// §4.7.4), without coding them: later patches find them with the match model.
    fn learn_snapshot(&mut self, snapshot: &SnapshotView<'_>) {
        for record in snapshot.records() {
            match record {
                RecordRef::Element { name, attrs, .. } => {
                    self.learn_sym(Field::Tag, 0, name);
                    for (name, value) in attrs {
                        let sub = static_ctx(match name {
                            SymRef::Static(i) => Some(i),
                            _ => None,
                        });
                        self.learn_sym(Field::AttrName, 0, name);
                        self.learn_sym(Field::AttrValue, sub, value);
                    }
                }
                RecordRef::Text { text } => self.learn_sym(Field::Text, 0, text),
                RecordRef::Comment { text } => self.learn_sym(Field::Comment, 0, text),
                RecordRef::Doctype {
                    name,
                    public_id,
                    system_id,
                } => {
                    for s in [name, public_id, system_id] {
                        self.learn_sym(Field::Doctype, 0, s);
                    }
                }
            }
        }
    }

    fn learn_sym(&mut self, field: Field, sub: usize, s: SymRef<'_>) {
        if let SymRef::New(text) | SymRef::Lit(text) = s {
            let model = &mut self.texts[field.bytes()];
            model.begin(marker(field, sub));
            for &b in text.as_bytes() {
                model.learn(b);
            }
        }
    }

    /// Codes the reference `s` (the decoder's comes back). With `bound` absent (encoding), a
    /// `New` or `Lit` comes back with its text left out: the encoder has it already.
    fn sym<C: Coder>(
        &mut self,
        c: &mut C,
        field: Field,
        sub: usize,
        s: &Sym,
        bound: Option<&mut Bound>,
    ) -> Result<Sym, DecodeError> {
        let m = &mut self.syms[field as usize];
        let kind = match s {
            Sym::Static(_) => 0,
            Sym::Ref(_) => 1,
            Sym::New(_) => 2,
            Sym::Lit(_) => 3,
        };
        let kind = tree(c, &mut m.kind[sub], 2, kind)?;
        Ok(match kind {
            0 => {
                let i = match s {
                    Sym::Static(i) => *i,
                    _ => 0,
                };
                let top = tree(c, &mut m.stat, STATIC_BITS, i.min(STATIC_ESCAPE))?;
                if top < STATIC_ESCAPE {
                    Sym::Static(top)
                } else {
                    let more = m.escaped.code_u32(c, i.saturating_sub(STATIC_ESCAPE))?;
                    Sym::Static(more.checked_add(STATIC_ESCAPE).ok_or(
                        DecodeError::InvalidValue {
                            field: FIELD,
                            detail: "static index above 2^32",
                        },
                    )?)
                }
            }
            1 => {
                let i = match s {
                    Sym::Ref(i) => *i,
                    _ => 0,
                };
                Sym::Ref(m.dynamic.code_u32(c, i)?)
            }
            _ => {
                let text = s.literal().unwrap_or("");
                let marker = marker(field, sub);
                let text =
                    self.string(c, field.bytes(), (Lengths::Sym(field), marker), text, bound)?;
                if kind == 2 {
                    Sym::New(text)
                } else {
                    Sym::Lit(text)
                }
            }
        })
    }

    /// Codes the string `s` (the decoder's comes back, read within `bound`). Encoding (no
    /// `bound`), it returns an empty string rather than a copy nobody reads.
    fn string<C: Coder>(
        &mut self,
        c: &mut C,
        class: usize,
        (lengths, marker): (Lengths, u8),
        s: &str,
        bound: Option<&mut Bound>,
    ) -> Result<String, DecodeError> {
        let length = match lengths {
            Lengths::Sym(f) => &mut self.syms[f as usize].length,
            Lengths::Insert => &mut self.insert,
        };
        let len = length.code(c, s.len() as u64)?;
        let model = &mut self.texts[class];
        model.begin(marker);
        let Some(bound) = bound else {
            for &b in s.as_bytes() {
                model.byte(c, b)?;
            }
            return Ok(String::new());
        };
        let len = bound.count("coded_patch.string", len, bound.limits.max_string)?;
        // Grows as the input supports it: a length alone allocates nothing.
        let mut out = Vec::with_capacity(len.min(4096));
        for _ in 0..len {
            out.push(model.byte(c, 0)?);
        }
        String::from_utf8(out).map_err(|_| DecodeError::InvalidValue {
            field: "coded_patch.string",
            detail: "not UTF-8",
        })
    }

    fn place<C: Coder>(&mut self, c: &mut C, kind: usize, at: Place) -> Result<Place, DecodeError> {
        let (first, id) = match at {
            Place::After(id) => (false, id),
            Place::First(id) => (true, id),
        };
        let first = c.bit(&mut self.place_first[kind], first)?;
        let id = self.place[kind].code(c, id)?;
        Ok(if first {
            Place::First(id)
        } else {
            Place::After(id)
        })
    }

    fn header<C: Coder>(&mut self, c: &mut C, p: &Patch) -> Result<(u32, u64), DecodeError> {
        let same = c.bit(&mut self.same_epoch, p.epoch == self.last_epoch)?;
        let epoch = if same {
            self.last_epoch
        } else {
            c.direct(p.epoch.into(), 32)? as u32
        };
        let following = self.last_seq.wrapping_add(1);
        let next = c.bit(&mut self.next_seq, p.seq == following)?;
        let seq = if next {
            following
        } else {
            self.seq.code(c, p.seq)?
        };
        self.last_epoch = epoch;
        self.last_seq = seq;
        self.last_kind = OP_KINDS;
        Ok((epoch, seq))
    }

    fn kind<C: Coder>(&mut self, c: &mut C, kind: usize) -> Result<usize, DecodeError> {
        let k = tree(c, &mut self.kind[self.last_kind], 3, kind as u32)? as usize;
        self.last_kind = k;
        Ok(k)
    }

    fn first<C: Coder>(&mut self, c: &mut C, first: NodeId) -> Result<NodeId, DecodeError> {
        if c.bit(&mut self.fresh, first == self.next_fresh)? {
            Ok(self.next_fresh)
        } else {
            self.first.code(c, first)
        }
    }

    fn run_step<C: Coder>(
        &mut self,
        c: &mut C,
        prev: NodeId,
        id: NodeId,
    ) -> Result<NodeId, DecodeError> {
        let delta = id.wrapping_sub(prev) as i64;
        let zigzag = ((delta << 1) ^ (delta >> 63)) as u64;
        let z = self.run_step.code(c, zigzag)?;
        let delta = ((z >> 1) as i64) ^ -((z & 1) as i64);
        Ok(prev.wrapping_add(delta as u64))
    }
}

/// Where a string's length is modelled.
#[derive(Debug, Clone, Copy)]
enum Lengths {
    Sym(Field),
    Insert,
}

/// The parents whose children an insert's listing is in: each element's tag context and how
/// many of its child records are still to come.
#[derive(Default)]
struct Listing {
    open: Vec<(usize, u32)>,
}

impl Listing {
    fn parent(&self) -> usize {
        self.open.last().map_or(0, |&(ctx, _)| ctx)
    }

    /// Accounts for a record just coded.
    fn push(&mut self, record: &NodeRecord) {
        if let Some(top) = self.open.last_mut() {
            top.1 -= 1;
        }
        while self.open.last().is_some_and(|&(_, left)| left == 0) {
            self.open.pop();
        }
        if let NodeRecord::Element { name, children, .. } = record
            && *children > 0
        {
            self.open.push((tag_ctx(name), *children));
        }
    }
}

/// Codes the `PATCH` messages of one DOM stream (spec §4.7).
#[derive(Debug, Clone)]
pub struct PatchEncoder {
    models: Box<Models>,
}

impl Default for PatchEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl PatchEncoder {
    /// An encoder whose models start as a stream's do.
    pub fn new() -> Self {
        PatchEncoder {
            models: Box::default(),
        }
    }

    /// Takes the strings of a `SNAPSHOT` part the stream carries (spec §4.7.4): call it for
    /// every part, in stream order, as the decoder's side does.
    pub fn learn_snapshot(&mut self, snapshot: &SnapshotView<'_>) {
        self.models.learn_snapshot(snapshot);
    }

    /// Appends `patch`, coded, to `out`, and adapts the models to it.
    pub fn encode(&mut self, patch: &Patch, out: &mut Vec<u8>) {
        let mut c = range::Encoder::new(out);
        // The encoder's coder never fails.
        let _ = self.code(&mut c, patch);
        c.finish();
    }

    fn code(&mut self, c: &mut range::Encoder<'_>, patch: &Patch) -> Result<(), DecodeError> {
        let m = &mut *self.models;
        m.header(c, patch)?;
        m.ops.code(c, patch.ops.len() as u64)?;
        for op in &patch.ops {
            let kind = m.kind(c, op.variant() as usize)?;
            match op {
                PatchOp::Insert { at, first, nodes } => {
                    m.place(c, kind, *at)?;
                    m.first(c, *first)?;
                    m.records.code(c, nodes.len() as u64)?;
                    let mut listing = Listing::default();
                    for record in nodes {
                        let parent = listing.parent();
                        encode_record(m, c, parent, record)?;
                        listing.push(record);
                    }
                    m.next_fresh = first.wrapping_add(nodes.len() as u64);
                }
                PatchOp::Remove { node } => {
                    m.node[kind].code(c, *node)?;
                }
                PatchOp::Move { node, at } => {
                    m.node[kind].code(c, *node)?;
                    m.place(c, kind, *at)?;
                }
                PatchOp::SetAttr { node, name, value } => {
                    m.node[kind].code(c, *node)?;
                    m.sym(c, Field::AttrName, 0, name, None)?;
                    m.sym(c, Field::AttrValue, name_ctx(name), value, None)?;
                }
                PatchOp::RemoveAttr { node, name } => {
                    m.node[kind].code(c, *node)?;
                    m.sym(c, Field::AttrName, 0, name, None)?;
                }
                PatchOp::SetText { node, text } => {
                    m.node[kind].code(c, *node)?;
                    m.sym(c, Field::SetText, 0, text, None)?;
                }
                PatchOp::EditText { node, edits } => {
                    m.node[kind].code(c, *node)?;
                    m.edits.code(c, edits.len() as u64)?;
                    for e in edits {
                        m.keep.code_u32(c, e.keep)?;
                        m.delete.code_u32(c, e.delete)?;
                        m.string(c, TEXT_BYTES, (Lengths::Insert, 8), &e.insert, None)?;
                    }
                }
                PatchOp::MoveRun { at, nodes } => {
                    m.place(c, kind, *at)?;
                    m.run.code(c, nodes.0.len() as u64)?;
                    let mut prev = None;
                    for &id in &nodes.0 {
                        match prev {
                            None => m.node[kind].code(c, id)?,
                            Some(p) => m.run_step(c, p, id)?,
                        };
                        prev = Some(id);
                    }
                }
            }
        }
        Coder::direct(c, u64::from_be_bytes(patch.hash), 64)?;
        Ok(())
    }
}

fn encode_record(
    m: &mut Models,
    c: &mut range::Encoder<'_>,
    parent: usize,
    record: &NodeRecord,
) -> Result<(), DecodeError> {
    match record {
        NodeRecord::Element {
            ns,
            name,
            attrs,
            children,
        } => {
            tree(c, &mut m.record_kind[parent], 2, 0)?;
            m.ns.code(c, u32::from(*ns).into())?;
            m.sym(c, Field::Tag, 0, name, None)?;
            let tag = tag_ctx(name);
            m.attrs[tag].code(c, attrs.len() as u64)?;
            for a in attrs {
                m.sym(c, Field::AttrName, 0, &a.name, None)?;
                m.sym(c, Field::AttrValue, name_ctx(&a.name), &a.value, None)?;
            }
            m.children[tag].code_u32(c, *children)?;
        }
        NodeRecord::Text { text } => {
            tree(c, &mut m.record_kind[parent], 2, 1)?;
            m.sym(c, Field::Text, 0, text, None)?;
        }
        NodeRecord::Comment { text } => {
            tree(c, &mut m.record_kind[parent], 2, 2)?;
            m.sym(c, Field::Comment, 0, text, None)?;
        }
        NodeRecord::Doctype {
            name,
            public_id,
            system_id,
        } => {
            tree(c, &mut m.record_kind[parent], 2, 3)?;
            for s in [name, public_id, system_id] {
                m.sym(c, Field::Doctype, 0, s, None)?;
            }
        }
    }
    Ok(())
}

/// Decodes the coded `PATCH` messages of one DOM stream, within the limits of
/// spec §8.
#[derive(Debug, Clone)]
pub struct PatchDecoder {
    models: Box<Models>,
    limits: Limits,
}

impl PatchDecoder {
    /// A decoder whose models start as a stream's do.
    pub fn new(limits: Limits) -> Self {
        PatchDecoder {
            models: Box::default(),
            limits,
        }
    }

    /// Takes the strings of a `SNAPSHOT` part the stream carries (spec §4.7.4), as the
    /// encoder's side does.
    pub fn learn_snapshot(&mut self, snapshot: &SnapshotView<'_>) {
        self.models.learn_snapshot(snapshot);
    }

    /// Decodes one coded patch, the whole of `coded`, and adapts the models to it.
    ///
    /// Fails on input that does not decode to a patch within the limits, ends early, or has
    /// bytes left over; the decoder's state is then lost with the stream's.
    pub fn decode(&mut self, coded: &[u8]) -> Result<Patch, DecodeError> {
        let mut c = range::Decoder::new(coded, FIELD)?;
        let mut bound = Bound {
            limits: self.limits,
            left: self.limits.max_frame_body.into(),
        };
        let m = &mut *self.models;
        let blank = Patch {
            epoch: 0,
            seq: 0,
            ops: Vec::new(),
            hash: [0; 8],
        };
        let (epoch, seq) = m.header(&mut c, &blank)?;
        let n = m.ops.code(&mut c, 0)?;
        let n = bound.count("coded_patch.ops", n, self.limits.max_patch_ops)?;
        let mut ops = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            ops.push(decode_op(m, &mut c, &mut bound)?);
        }
        let hash = range::Decoder::direct(&mut c, 64)?.to_be_bytes();
        if !c.is_exhausted() {
            return Err(DecodeError::InvalidValue {
                field: FIELD,
                detail: "bytes after the coded patch",
            });
        }
        Ok(Patch {
            epoch,
            seq,
            ops,
            hash,
        })
    }
}

fn decode_op(
    m: &mut Models,
    c: &mut range::Decoder<'_>,
    bound: &mut Bound,
) -> Result<PatchOp, DecodeError> {
    let kind = m.kind(c, 0)?;
    let limits = bound.limits;
    let placeholder = Place::After(0);
    Ok(match kind {
        0 => {
            let at = m.place(c, kind, placeholder)?;
            let first = m.first(c, 0)?;
            let n = m.records.code(c, 0)?;
            let n = bound.count("coded_patch.insert.nodes", n, limits.max_nodes_per_frame)?;
            let mut nodes = Vec::with_capacity(n.min(1024));
            let mut listing = Listing::default();
            for _ in 0..n {
                let parent = listing.parent();
                let record = decode_record(m, c, parent, bound)?;
                listing.push(&record);
                nodes.push(record);
            }
            m.next_fresh = first.wrapping_add(nodes.len() as u64);
            PatchOp::Insert { at, first, nodes }
        }
        1 => PatchOp::Remove {
            node: m.node[kind].code(c, 0)?,
        },
        2 => {
            let node = m.node[kind].code(c, 0)?;
            let at = m.place(c, kind, placeholder)?;
            PatchOp::Move { node, at }
        }
        3 => {
            let node = m.node[kind].code(c, 0)?;
            let name = m.sym(c, Field::AttrName, 0, &Sym::Static(0), Some(bound))?;
            let value = m.sym(
                c,
                Field::AttrValue,
                name_ctx(&name),
                &Sym::Static(0),
                Some(bound),
            )?;
            PatchOp::SetAttr { node, name, value }
        }
        4 => {
            let node = m.node[kind].code(c, 0)?;
            let name = m.sym(c, Field::AttrName, 0, &Sym::Static(0), Some(bound))?;
            PatchOp::RemoveAttr { node, name }
        }
        5 => {
            let node = m.node[kind].code(c, 0)?;
            let text = m.sym(c, Field::SetText, 0, &Sym::Static(0), Some(bound))?;
            PatchOp::SetText { node, text }
        }
        6 => {
            let node = m.node[kind].code(c, 0)?;
            let n = m.edits.code(c, 0)?;
            let n = bound.count("coded_patch.edit_text.edits", n, limits.max_list)?;
            let mut edits = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                let keep = m.keep.code_u32(c, 0)?;
                let delete = m.delete.code_u32(c, 0)?;
                let insert = m.string(c, TEXT_BYTES, (Lengths::Insert, 8), "", Some(bound))?;
                edits.push(TextEdit {
                    keep,
                    delete,
                    insert,
                });
            }
            PatchOp::EditText { node, edits }
        }
        _ => {
            let at = m.place(c, kind, placeholder)?;
            let n = m.run.code(c, 0)?;
            let n = bound.count("coded_patch.move_run.nodes", n, limits.max_list)?;
            let mut ids = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                let id = match ids.last() {
                    None => m.node[kind].code(c, 0)?,
                    Some(&p) => m.run_step(c, p, 0)?,
                };
                ids.push(id);
            }
            PatchOp::MoveRun {
                at,
                nodes: NodeRun(ids),
            }
        }
    })
}

fn decode_record(
    m: &mut Models,
    c: &mut range::Decoder<'_>,
    parent: usize,
    bound: &mut Bound,
) -> Result<NodeRecord, DecodeError> {
    let blank = Sym::Static(0);
    Ok(match tree(c, &mut m.record_kind[parent], 2, 0)? {
        0 => {
            let ns = m.ns.code_u32(c, 0)?;
            let name = m.sym(c, Field::Tag, 0, &blank, Some(bound))?;
            let tag = tag_ctx(&name);
            let n = m.attrs[tag].code(c, 0)?;
            let n = bound.count("coded_patch.attrs", n, bound.limits.max_attributes)?;
            let mut attrs = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                let name = m.sym(c, Field::AttrName, 0, &blank, Some(bound))?;
                let value = m.sym(c, Field::AttrValue, name_ctx(&name), &blank, Some(bound))?;
                attrs.push(Attr { name, value });
            }
            let children = m.children[tag].code_u32(c, 0)?;
            NodeRecord::Element {
                ns: Ns::from(ns),
                name,
                attrs,
                children,
            }
        }
        1 => NodeRecord::Text {
            text: m.sym(c, Field::Text, 0, &blank, Some(bound))?,
        },
        2 => NodeRecord::Comment {
            text: m.sym(c, Field::Comment, 0, &blank, Some(bound))?,
        },
        _ => NodeRecord::Doctype {
            name: m.sym(c, Field::Doctype, 0, &blank, Some(bound))?,
            public_id: m.sym(c, Field::Doctype, 0, &blank, Some(bound))?,
            system_id: m.sym(c, Field::Doctype, 0, &blank, Some(bound))?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Snapshot;
    use crate::{Message, frame};

    /// A snapshot part whose only text is `text`, as a frame body.
    fn snapshot_body(text: &str) -> Vec<u8> {
        let snapshot = Snapshot {
            epoch: 1,
            part: 0,
            url: String::new(),
            nodes: vec![NodeRecord::Text {
                text: Sym::New(text.into()),
            }],
            hash: Some([0; 16]),
        };
        let bytes = frame::to_frame(&Message::Snapshot(snapshot), &Limits::DEFAULT).unwrap();
        let header = frame::read_header(&bytes, &Limits::DEFAULT)
            .unwrap()
            .unwrap();
        bytes[header.header_len..].to_vec()
    }

    #[test]
    fn a_snapshot_s_strings_make_a_patch_that_repeats_them_cheap() {
        let text = "Your order 1042 ships tomorrow from the Rotterdam warehouse";
        let body = snapshot_body(text);
        let view = SnapshotView::parse(&body, &Limits::DEFAULT).unwrap();
        let patch = Patch {
            epoch: 1,
            seq: 1,
            ops: vec![PatchOp::SetText {
                node: 7,
                text: Sym::Lit(text.into()),
            }],
            hash: [9; 8],
        };
        let (mut learnt, mut fresh) = (PatchEncoder::new(), PatchEncoder::new());
        learnt.learn_snapshot(&view);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        learnt.encode(&patch, &mut a);
        fresh.encode(&patch, &mut b);
        // The match model finds the text in the history: its 59 bytes cost less than half of
        // what they cost unseen (the 8-byte check and the header cost the same either way).
        assert!(
            a.len() + 20 < b.len(),
            "{} B with the snapshot, {} B without",
            a.len(),
            b.len()
        );
        let mut decoder = PatchDecoder::new(Limits::DEFAULT);
        decoder.learn_snapshot(&view);
        assert_eq!(decoder.decode(&a).unwrap(), patch);
        // A decoder that did not take the snapshot reads something else, or nothing.
        assert_ne!(
            PatchDecoder::new(Limits::DEFAULT).decode(&a).ok(),
            Some(patch)
        );
    }
}
