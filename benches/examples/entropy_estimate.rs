//! How small could patches and snapshots be with an entropy coder of Tandem's own (issue 3's
//! byte targets)? A scratch estimate, not a codec: it charges every field of every `PATCH`
//! and `SNAPSHOT` record the ideal code length of an adaptive model (`-log2 p` with `p` from
//! counts kept as the coder and the decoder would keep them), which an arithmetic coder
//! reaches within a few bytes per flush.
//!
//! Two tables:
//!
//! - the state sequences, replayed as `tandem replay` does: the 50 patches after the snapshot,
//!   estimated, next to the compressed DOM stream with zstd alone (codec 0x01, *zstd*), as the
//!   reference consumer sends it (codec 0x02, *coded*: each patch through
//!   [`tandem_protocol::patch_coder`], spec §4.7), and the targets;
//! - the corpus pages' snapshots, as sent today (zstd with `dom-v1`), estimated with the same
//!   models (each record in the context of its parent's tag), and *hybrid*: the records'
//!   structure, string kinds and table indices estimated, the bytes of every new string
//!   compressed together with `zstd -19`.
//!
//! Run: `cargo run --release -p tandem-benches --example entropy_estimate` (uses
//! `../shared/corpus` when present, otherwise the repository's `testdata/`); with
//! `FIELDS=1` it also prints, per state sequence, what the new strings of each field cost; with
//! `NOPRIME=1` the string models start empty instead of learning the snapshot's strings.
//!
//! The models, each adaptive, each known to both ends:
//!
//! - operation kind, in the context of the kind before it; in a listing (a snapshot's or an
//!   insert's), record kind, namespace and tag in the context of the parent's tag, attribute
//!   and child counts and attribute names in that of the element's tag, values in that of the
//!   attribute's name; each `Sym`'s kind per field (tag, attribute name, value, text);
//! - a node id named by an operation: uniformly one of the ids the epoch has given out
//!   (`log2` of the highest id so far): the ids the recorded changes touch are spread over the
//!   page; the `first` id of an insert: one bit "the next fresh id", else the id; a `Place`'s
//!   parity: one bit;
//! - integers (counts, lengths, edit offsets, run differences): Elias-gamma buckets coded
//!   adaptively per field, the bits below the leading one as they are;
//! - `Static` and `Ref` indices: adaptive counts over the indices seen in that field, escaping
//!   to uniform over the table;
//! - new texts, comments and inserted edit text as tokens (letter runs, digit runs and the runs
//!   between them): a token seen before from its class's counts, a new one spelled byte by
//!   byte with a PPM model; numbers always spelled. Every other new string (attribute values
//!   above all) byte by byte with a second PPM model (orders 4 to 0, escape method C, no
//!   exclusion). Both models are first fed the strings of the snapshot, which the agent holds;
//! - per patch: the 8-byte check as 64 bits, the count of operations, and 4 bytes for ending
//!   the coder's flush and the `COMPRESSED` frame header. Epoch and sequence number are implied
//!   by the stream.
//!
//! What it showed (2026-12-02): 4,937 / 6,673 / 5,252 bytes for ars-1 / lwn-1 / mozilla-2,
//! against 8,114 / 10,186 / 8,569 with zstd alone and the targets (0.3 of rrweb's stream) of
//! 3,706 / 3,808 / 3,461; below the HTML states' zstd delta (7,461 / 7,883 / 7,105) on all
//! three. Node ids (1.2–1.9 KB, about 11 bits per operation) and the per-patch check (400 B)
//! stay whatever the coder: 44 % of the ids are within 8 of one of the 16 ids named last, but
//! coding which one and the difference costs nearly as much as the id (tried: 1–5 % off the
//! ids' share). Without feeding the models the snapshot's strings first
//! (`NOPRIME=1`): 5,089 / 7,108 / 5,137, still below the delta; so a codec need not learn the
//! snapshot, whose strings would cost the agent time and memory to model.
//!
//! The codec built on that (2026-12-03, codec 0x02, spec §4.7): 4,773 / 6,215 / 5,184 bytes
//! as sent, below the delta on all three and below the estimate. Its string model (context
//! mixing with a match model whose history first takes the snapshot's strings) beats the
//! estimate's PPM; its structure models (bit trees and bit-length integers over estimates
//! that learn at the rate of counting while young) lose a little to the estimate's adaptive
//! counts.
//!
//! Snapshots (same day), median over the 14 pages of the ratio to rrweb's `zstd -19`: today
//! 0.707, estimated 0.819, hybrid 0.680 (target 0.6). The structure is cheap under context
//! models (1–5 % of a page's estimate); the string bytes are the snapshot, and byte-wise PPM of
//! order 4 codes them worse than zstd's long matches (CSS, URLs, repeated markup in values).
//! Modelling the structure apart takes 4 % off; the rest of the way to 0.6 would take a
//! context-mixing coder for the strings, whose speed would not fit the throughput target.
//!
//! *coded* (2026-12-03): the snapshot's records coded by codec 0x02's patch coder as one insert, as
//! if it carried snapshots too: median 0.707, the same as zstd with `dom-v1` (smaller on 10 pages,
//! larger on the 4 whose text repeats most), at 3–12 MB/s of page HTML each way on the pages above
//! 50 KB (encode and decode timed apart in a scratch run; archive-of-our-own and data-url-image
//! slowest). The coder's context mixing is sized for the short strings of patches (orders 0–4 in
//! tables of 2^16, a match model): on a page's worth of text zstd's long matches and dictionary win
//! it back. Brotli at quality 11 (0.650, see `compression`) stays the best general codec measured,
//! at 1 MB/s; given `dom-v1`'s content as its custom dictionary it did worse (0.686, a scratch run
//! of the same snapshots).

use std::collections::HashMap;

use tandem_benches::{RRWEB_STATES_ZSTD19, corpus_root, replay, sorted_dirs};
use tandem_engine::{Consumer, parse_html};
use tandem_protocol::compress::{self, Codec, DomCompressor};
use tandem_protocol::message::Patch;
use tandem_protocol::patch_coder::{PatchDecoder, PatchEncoder};
use tandem_protocol::{
    DOCUMENT_ID, Limits, Message, NodeId, NodeRecord, PatchOp, Place, STATIC_TABLE, Sym, frame,
};

/// Adaptive counts over symbols, escaping to a fallback cost for symbols not seen yet.
#[derive(Default)]
struct Counts {
    counts: HashMap<u64, u32>,
    total: u32,
}

impl Counts {
    /// Code length of `s` in bits; `fallback` is the cost of naming an unseen symbol.
    fn cost(&mut self, s: u64, fallback: f64) -> f64 {
        let distinct = self.counts.len() as f64;
        let total = f64::from(self.total);
        let bits = match self.counts.get(&s) {
            Some(&c) => -(f64::from(c) / (total + distinct)).log2(),
            None if self.total == 0 => fallback,
            None => -(distinct / (total + distinct)).log2() + fallback,
        };
        *self.counts.entry(s).or_default() += 1;
        self.total += 1;
        bits
    }
}

/// Adaptive models keyed by a context name.
#[derive(Default)]
struct Models {
    by: HashMap<(&'static str, u64), Counts>,
}

impl Models {
    /// A symbol of a small alphabet of `size` symbols.
    fn symbol(&mut self, ctx: &'static str, sub: u64, s: u64, size: u64) -> f64 {
        let fallback = (size as f64).log2();
        self.by.entry((ctx, sub)).or_default().cost(s, fallback)
    }

    /// An integer: its Elias-gamma bucket adaptively, its mantissa raw.
    fn integer(&mut self, ctx: &'static str, v: u64) -> f64 {
        self.integer_in(ctx, 0, v)
    }

    /// [`Models::integer`] in context `sub` of `ctx`.
    fn integer_in(&mut self, ctx: &'static str, sub: u64, v: u64) -> f64 {
        let n = 64 - (v + 1).leading_zeros() as u64;
        self.symbol(ctx, sub, n, 65) + (n - 1) as f64
    }
}

/// PPM over bytes, orders `ORDER` down to 0, escape method C, without exclusion.
struct Ppm {
    contexts: HashMap<(usize, u64), Counts>,
    history: Vec<u8>,
}

const ORDER: usize = 4;

impl Ppm {
    fn new() -> Self {
        Ppm {
            contexts: HashMap::new(),
            history: Vec::new(),
        }
    }

    fn key(&self, order: usize) -> Option<u64> {
        let h = &self.history;
        (h.len() >= order).then(|| {
            h[h.len() - order..]
                .iter()
                .fold(order as u64, |k, &b| k << 8 | u64::from(b))
        })
    }

    /// Code length of `s` (ended by a 0 byte), learning it.
    fn string(&mut self, s: &str) -> f64 {
        s.bytes().chain([0]).map(|b| self.byte(b)).sum()
    }

    fn byte(&mut self, b: u8) -> f64 {
        let mut bits = 0.0;
        let mut coded = false;
        for order in (0..=ORDER).rev() {
            let Some(key) = self.key(order) else { continue };
            let ctx = self.contexts.entry((order, key)).or_default();
            if !coded {
                let distinct = ctx.counts.len() as f64;
                let total = f64::from(ctx.total);
                match ctx.counts.get(&u64::from(b)) {
                    Some(&c) => {
                        bits += -(f64::from(c) / (total + distinct)).log2();
                        coded = true;
                    }
                    None if ctx.total > 0 => bits += -(distinct / (total + distinct)).log2(),
                    None => {}
                }
            }
            *ctx.counts.entry(u64::from(b)).or_default() += 1;
            ctx.total += 1;
        }
        if !coded {
            bits += 8.0;
        }
        self.history.push(b);
        bits
    }
}

/// Strings as words and the runs between them: each token from adaptive counts of the tokens
/// of its class seen so far (class alternates, so only the first is coded), a new token spelled
/// with [`Ppm`] and counted from then on; an end token closes the string.
struct Words {
    classes: [Counts; 4],
    tokens: [Counts; 3],
    ppm: Ppm,
}

impl Words {
    fn new() -> Self {
        Words {
            classes: Default::default(),
            tokens: Default::default(),
            ppm: Ppm::new(),
        }
    }

    fn string(&mut self, s: &str) -> f64 {
        let class = |c: char| {
            if c.is_alphabetic() {
                1
            } else if c.is_numeric() {
                2
            } else {
                0
            }
        };
        let mut tokens: Vec<(usize, &str)> = Vec::new();
        let mut start = 0;
        let mut current = None;
        for (i, c) in s.char_indices() {
            let k = class(c);
            match current {
                Some(p) if p != k => {
                    tokens.push((p, &s[start..i]));
                    start = i;
                }
                _ => {}
            }
            current = Some(k);
        }
        if let Some(k) = current {
            tokens.push((k, &s[start..]));
        }
        // Each token's class in the context of the class before (3: the start), 3 ends.
        let mut bits = 0.0;
        let mut prev = 3u64;
        for &(k, t) in &tokens {
            bits += self.classes[prev as usize].cost(k as u64, 2.0);
            bits += self.token(k, t);
            prev = k as u64;
        }
        bits + self.classes[prev as usize].cost(3, 2.0)
    }

    fn token(&mut self, class: usize, t: &str) -> f64 {
        if class == 2 {
            // Numbers: spelled, digit by digit, as PPM learns them.
            return self.ppm.string(t);
        }
        let key = 1 + t.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }) % (u64::MAX - 1);
        let known = self.tokens[class].counts.contains_key(&key);
        let spelled = if known { 0.0 } else { self.ppm.string(t) };
        self.tokens[class].cost(key, spelled)
    }
}

/// The estimate's state across one state sequence, and where its bits go.
struct Estimate {
    m: Models,
    words: Words,
    ppm: Ppm,
    dynamic: u64,
    max_id: NodeId,
    bits: HashMap<&'static str, f64>,
    fields: HashMap<(&'static str, u64), (f64, u32)>,
    /// When set, new strings cost nothing here and are collected for zstd instead.
    lz: Option<Vec<u8>>,
}

impl Estimate {
    fn new() -> Self {
        Estimate {
            m: Models::default(),
            words: Words::new(),
            ppm: Ppm::new(),
            dynamic: 0,
            max_id: 0,
            bits: HashMap::new(),
            fields: HashMap::new(),
            lz: None,
        }
    }

    fn add(&mut self, what: &'static str, bits: f64) {
        *self.bits.entry(what).or_default() += bits;
    }

    /// Spells a new string: texts by words, anything else (attribute values, names) by bytes.
    fn spell(&mut self, field: &str, t: &str) -> f64 {
        if let Some(lz) = &mut self.lz {
            lz.extend_from_slice(t.as_bytes());
            lz.push(0);
            return 0.0;
        }
        if field == "text" || field == "comment" {
            self.words.string(t)
        } else {
            self.ppm.string(t)
        }
    }

    fn id(&mut self, id: NodeId) {
        self.max_id = self.max_id.max(id);
        let bits = ((self.max_id + 1) as f64).log2();
        self.add("ids", bits);
    }

    fn place(&mut self, p: &Place) {
        let (parity, id) = match p {
            Place::After(id) => (0, *id),
            Place::First(id) => (1, *id),
        };
        let bits = self.m.symbol("place", 0, parity, 2);
        self.add("ids", bits);
        self.id(id);
    }

    fn sym(&mut self, field: &'static str, s: &Sym) {
        self.sym_in(field, 0, s);
    }

    /// [`Estimate::sym`] with its kind and index coded in context `ctx` of the field.
    fn sym_in(&mut self, field: &'static str, ctx: u64, s: &Sym) {
        let (kind, bits) = match s {
            Sym::Static(i) => (0, {
                let n = STATIC_TABLE.len() as u64;
                self.m.symbol(field, ctx * 4 + 1, u64::from(*i), n)
            }),
            Sym::Ref(i) => (1, {
                let n = self.dynamic.max(1);
                self.m.symbol(field, ctx * 4 + 2, u64::from(*i), n)
            }),
            Sym::New(t) => {
                self.dynamic += 1;
                (2, self.spell(field, t))
            }
            Sym::Lit(t) => (3, self.spell(field, t)),
        };
        let k = self.m.symbol(field, ctx * 4, kind, 4);
        self.add("strings", bits + k);
        if std::env::var_os("FIELDS").is_some() {
            let f = self.fields.entry((field, kind)).or_default();
            f.0 += bits + k;
            f.1 += 1;
        }
    }

    /// Charges a listing (a snapshot's or an insert's), each record in the context of its
    /// parent's tag when the listing holds the parent: the record kind and the tag by the
    /// parent's tag, attribute and child counts and attribute names by the element's tag,
    /// values by the attribute's name.
    fn listing(&mut self, nodes: &[NodeRecord]) {
        // (tag key, children left) of the open elements.
        let mut open: Vec<(u64, u32)> = vec![(u64::MAX, u32::MAX)];
        let key = |s: &Sym| match s {
            Sym::Static(i) => u64::from(*i) + 1,
            _ => 0,
        };
        for r in nodes {
            while open.last().is_some_and(|&(_, left)| left == 0) {
                open.pop();
            }
            let parent = open.last().map_or(u64::MAX, |&(t, _)| t);
            if let Some(top) = open.last_mut() {
                top.1 = top.1.saturating_sub(1);
            }
            match r {
                NodeRecord::Element {
                    ns,
                    name,
                    attrs,
                    children,
                } => {
                    let b = self.m.symbol("record", parent, 0, 4)
                        + self.m.symbol("ns", parent, u64::from(u32::from(*ns)), 3);
                    self.add("structure", b);
                    self.sym_in("tag", parent, name);
                    let tag = key(name);
                    let b = self.m.integer_in("attrs", tag, attrs.len() as u64)
                        + self.m.integer_in("children", tag, u64::from(*children));
                    self.add("structure", b);
                    for a in attrs {
                        self.sym_in("attr name", tag, &a.name);
                        self.sym_in("attr value", key(&a.name), &a.value);
                    }
                    open.push((tag, *children));
                }
                NodeRecord::Text { text } => {
                    let b = self.m.symbol("record", parent, 1, 4);
                    self.add("structure", b);
                    self.sym_in("text", parent, text);
                }
                NodeRecord::Comment { text } => {
                    let b = self.m.symbol("record", parent, 2, 4);
                    self.add("structure", b);
                    self.sym("comment", text);
                }
                NodeRecord::Doctype {
                    name,
                    public_id,
                    system_id,
                } => {
                    let b = self.m.symbol("record", parent, 3, 4);
                    self.add("structure", b);
                    for s in [name, public_id, system_id] {
                        self.sym("doctype", s);
                    }
                }
            }
        }
    }

    /// Learns the snapshot's strings and ids, as the agent holds them, at no cost.
    fn prime(&mut self, nodes: &[NodeRecord]) {
        let learn = |e: &mut Estimate, field: &str, s: &Sym| match s {
            Sym::New(t) => {
                e.dynamic += 1;
                e.spell(field, t);
            }
            Sym::Lit(t) => {
                e.spell(field, t);
            }
            _ => {}
        };
        for r in nodes {
            self.max_id += 1;
            match r {
                NodeRecord::Element { name, attrs, .. } => {
                    learn(self, "tag", name);
                    for a in attrs {
                        learn(self, "attr name", &a.name);
                        learn(self, "attr value", &a.value);
                    }
                }
                NodeRecord::Text { text } => learn(self, "text", text),
                NodeRecord::Comment { text } => learn(self, "comment", text),
                NodeRecord::Doctype {
                    name,
                    public_id,
                    system_id,
                } => {
                    for s in [name, public_id, system_id] {
                        learn(self, "doctype", s);
                    }
                }
            }
        }
    }

    fn op(&mut self, op: &PatchOp, prev: u64) -> u64 {
        let kind = u64::from(op.variant());
        let b = self.m.symbol("op", prev, kind, 8);
        self.add("op kinds", b);
        match op {
            PatchOp::Insert { at, first, nodes } => {
                self.place(at);
                let next = *first == self.max_id + 1;
                let b = self.m.symbol("first is next", 0, u64::from(next), 2);
                self.add("ids", b);
                if !next {
                    self.id(*first);
                }
                let b = self.m.integer("insert count", nodes.len() as u64);
                self.add("structure", b);
                self.listing(nodes);
                self.max_id = self.max_id.max(*first + nodes.len() as u64 - 1);
            }
            PatchOp::Remove { node } => self.id(*node),
            PatchOp::Move { node, at } => {
                self.id(*node);
                self.place(at);
            }
            PatchOp::MoveRun { at, nodes } => {
                self.place(at);
                let b = self.m.integer("run length", nodes.0.len() as u64);
                self.add("structure", b);
                let mut prev = None;
                for &id in &nodes.0 {
                    match prev {
                        None => self.id(id),
                        Some(p) => {
                            let d = (id as i64).wrapping_sub(p as i64);
                            let z = ((d << 1) ^ (d >> 63)) as u64;
                            let b = self.m.integer("run delta", z);
                            self.add("ids", b);
                        }
                    }
                    prev = Some(id);
                }
            }
            PatchOp::SetAttr { node, name, value } => {
                self.id(*node);
                self.sym("attr name", name);
                self.sym("attr value", value);
            }
            PatchOp::RemoveAttr { node, name } => {
                self.id(*node);
                self.sym("attr name", name);
            }
            PatchOp::SetText { node, text } => {
                self.id(*node);
                self.sym("text", text);
            }
            PatchOp::EditText { node, edits } => {
                self.id(*node);
                let mut b = self.m.integer("edits", edits.len() as u64);
                for e in edits {
                    b += self.m.integer("keep", u64::from(e.keep));
                    b += self.m.integer("delete", u64::from(e.delete));
                }
                self.add("structure", b);
                for e in edits {
                    let b = self.words.string(&e.insert);
                    self.add("strings", b);
                    if std::env::var_os("FIELDS").is_some() {
                        let f = self.fields.entry(("edit", 3)).or_default();
                        f.0 += b;
                        f.1 += 1;
                    }
                }
            }
        }
        kind
    }
}

/// The snapshot table: each corpus page's snapshot as sent today and as estimated.
fn snapshots(limits: Limits) {
    let mut ratios = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    println!(
        "\n| page | rrweb | today (zstd) | estimate | structure | strings | hybrid | coded | today / rrweb | estimate / rrweb | hybrid / rrweb | coded / rrweb |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, html) in tandem_benches::pages() {
        let mut consumer = Consumer::new(parse_html(&html, limits), "", limits);
        let (mut frames, mut records) = (Vec::new(), Vec::new());
        while let Some(f) = consumer.poll_frame() {
            let bytes = f.expect("frames encode").bytes;
            if let Ok(Message::Snapshot(s)) = frame::decode_exact(&bytes, &limits) {
                records.extend(s.nodes);
                frames.extend_from_slice(&bytes);
            }
        }
        let mut zstd = DomCompressor::with_level(compress::level_for_snapshot(frames.len()))
            .expect("zstd starts");
        let mut out = Vec::new();
        zstd.write_frames(&frames, &mut out, &limits)
            .expect("zstd compresses");
        let mut e = Estimate::new();
        e.listing(&records);
        let total = e.bits.values().sum::<f64>() / 8.0;
        let mut h = Estimate::new();
        h.lz = Some(Vec::new());
        h.listing(&records);
        let strings = zstd::bulk::compress(h.lz.as_deref().unwrap_or_default(), 19)
            .expect("zstd compresses")
            .len();
        let hybrid = h.bits.values().sum::<f64>() / 8.0 + strings as f64;
        let coded = coded_listing(records).len();
        let part = |k: &str| e.bits.get(k).copied().unwrap_or(0.0) / 8.0;
        let Some(rrweb) = tandem_benches::rrweb_snapshot(&name) else {
            continue;
        };
        let (today, est, hyb) = (
            out.len() as f64 / rrweb as f64,
            total / rrweb as f64,
            hybrid / rrweb as f64,
        );
        ratios.0.push(today);
        ratios.1.push(est);
        ratios.2.push(hyb);
        let cod = coded as f64 / rrweb as f64;
        ratios.3.push(cod);
        println!(
            "| {name} | {rrweb} | {} | {total:.0} | {:.0} | {:.0} | {hybrid:.0} | {coded} | {today:.3} | {est:.3} | {hyb:.3} | {cod:.3} |",
            out.len(),
            part("structure"),
            part("strings"),
        );
    }
    let m = |v: &mut Vec<f64>| tandem_benches::median(v).unwrap_or(f64::NAN);
    println!(
        "| **median** | | | | | | | | **{:.3}** | **{:.3}** | **{:.3}** | **{:.3}** |",
        m(&mut ratios.0),
        m(&mut ratios.1),
        m(&mut ratios.2),
        m(&mut ratios.3)
    );
}

/// A snapshot's records coded as codec 0x02 codes an insert (spec §4.7): one `PATCH` whose
/// one operation lists them all, through a fresh [`PatchEncoder`] (checked by decoding it).
fn coded_listing(nodes: Vec<NodeRecord>) -> Vec<u8> {
    let patch = Patch {
        epoch: 0,
        seq: 1,
        ops: vec![PatchOp::Insert {
            at: Place::First(DOCUMENT_ID),
            first: 1,
            nodes,
        }],
        hash: [0; 8],
    };
    let mut out = Vec::new();
    PatchEncoder::new().encode(&patch, &mut out);
    let back = PatchDecoder::new(Limits::DEFAULT)
        .decode(&out)
        .expect("the coded listing decodes");
    assert_eq!(back, patch, "the coded listing round-trips");
    out
}

fn main() {
    let limits = Limits::DEFAULT;
    let root = corpus_root().join("states");
    println!("states: {}\n", root.display());
    println!(
        "| states | patches | ops | zstd | coded | estimate | op kinds | ids | structure | strings | per patch | target 0.3 rrweb |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for dir in sorted_dirs(&root) {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let Some(rec) = replay(&dir, limits) else {
            continue;
        };
        let records: Vec<NodeRecord> = rec
            .snapshot_messages
            .iter()
            .filter_map(|m| match m {
                Message::Snapshot(s) => Some(s.nodes.iter().cloned()),
                _ => None,
            })
            .flatten()
            .collect();
        let mut e = Estimate::new();
        if std::env::var_os("NOPRIME").is_none() {
            e.prime(&records);
        } else {
            // The snapshot's ids are given out all the same.
            e.max_id = records.len() as u64;
        }
        let mut ops = 0;
        for m in rec.steps.iter().flatten() {
            let Message::Patch(p) = m else { continue };
            let b = e.m.integer("op count", p.ops.len() as u64) + 64.0 + 32.0;
            e.add("per patch", b);
            let mut prev = 8;
            for op in &p.ops {
                prev = e.op(op, prev);
                ops += 1;
            }
        }
        let today = rec.compressed_steps_with(Codec::Zstd, &limits, Message::clone);
        let coded = rec.compressed_steps(&limits, Message::clone);
        let total: f64 = e.bits.values().sum::<f64>() / 8.0;
        let part = |k: &str| e.bits.get(k).copied().unwrap_or(0.0) / 8.0;
        let target = RRWEB_STATES_ZSTD19
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, b, _)| (*b as f64 * 0.3) as usize);
        println!(
            "| {name} | {} | {ops} | {today} | {coded} | {total:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
            rec.steps
                .iter()
                .flatten()
                .filter(|m| matches!(m, Message::Patch(_)))
                .count(),
            part("op kinds"),
            part("ids"),
            part("structure"),
            part("strings"),
            part("per patch"),
            target.map_or("-".into(), |t| t.to_string()),
        );
        let mut fields: Vec<_> = e.fields.iter().collect();
        fields.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
        for ((f, k), (bits, n)) in fields {
            eprintln!("  {f} kind {k}: {n} strings, {:.0} B", bits / 8.0);
        }
    }
    snapshots(limits);
}
