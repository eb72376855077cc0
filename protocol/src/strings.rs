//! String references, the static string table and the per-epoch dynamic table (spec §5).
//!
//! Tag names, attribute names and common values are indexes into [`STATIC_TABLE`], which is fixed
//! by the spec (Appendix A). Other strings that repeat enter the dynamic table of the DOM stream
//! once, with [`Sym::New`], and are referenced by index afterwards with [`Sym::Ref`]. The dynamic
//! table starts empty with every `SNAPSHOT` of part 0 (a new sync epoch, spec §7.14) and both sides
//! grow it in the same order, so an index means the same string on both.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::OnceLock;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{DecodeError, Limits, SymRef};

/// A reference to a string on the wire (spec §5.1).
///
/// Layout: one varint `v`. `v & 3` is the kind; `v >> 2` is the index for kinds 0 and 1 and MUST
/// be zero for kinds 2 and 3, which are followed by a postcard string (varint length, UTF-8 bytes).
///
/// | kind | meaning |
/// |---|---|
/// | 0 | `Static(v >> 2)`: entry of the static table |
/// | 1 | `Ref(v >> 2)`: entry of the dynamic table |
/// | 2 | `New(s)`: the string `s`, appended to the dynamic table |
/// | 3 | `Lit(s)`: the string `s`, not remembered |
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sym {
    /// An entry of [`STATIC_TABLE`].
    Static(u32),
    /// An entry of the dynamic table.
    Ref(u32),
    /// A string that is appended to the dynamic table.
    New(String),
    /// A string used once.
    Lit(String),
}

/// Largest index a [`Sym::Static`] or [`Sym::Ref`] can carry (30 bits).
pub const MAX_SYM_INDEX: u32 = (1 << 30) - 1;

impl Sym {
    /// The borrowed reference.
    pub fn as_sym_ref(&self) -> SymRef<'_> {
        match self {
            Sym::Static(i) => SymRef::Static(*i),
            Sym::Ref(i) => SymRef::Ref(*i),
            Sym::New(s) => SymRef::New(s),
            Sym::Lit(s) => SymRef::Lit(s),
        }
    }

    /// The literal text carried by `New` and `Lit`, if any.
    pub fn literal(&self) -> Option<&str> {
        match self {
            Sym::New(s) | Sym::Lit(s) => Some(s),
            Sym::Static(_) | Sym::Ref(_) => None,
        }
    }
}

#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for Sym {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0..=3u8)? {
            0 => Sym::Static(u.int_in_range(0..=MAX_SYM_INDEX)?),
            1 => Sym::Ref(u.int_in_range(0..=MAX_SYM_INDEX)?),
            2 => Sym::New(String::arbitrary(u)?),
            _ => Sym::Lit(String::arbitrary(u)?),
        })
    }
}

impl Serialize for Sym {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Sym::Static(i) | Sym::Ref(i) if *i > MAX_SYM_INDEX => {
                Err(serde::ser::Error::custom("string index above 2^30 - 1"))
            }
            Sym::Static(i) => s.serialize_u32(i << 2),
            Sym::Ref(i) => s.serialize_u32((i << 2) | 1),
            Sym::New(text) | Sym::Lit(text) => {
                let kind: u32 = if matches!(self, Sym::New(_)) { 2 } else { 3 };
                let mut t = s.serialize_tuple(2)?;
                t.serialize_element(&kind)?;
                t.serialize_element(text.as_str())?;
                t.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Sym {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SymVisitor;
        impl<'de> Visitor<'de> for SymVisitor {
            type Value = Sym;
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("a string reference")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Sym, A::Error> {
                let v: u32 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("missing string reference"))?;
                let index = v >> 2;
                match v & 3 {
                    0 => Ok(Sym::Static(index)),
                    1 => Ok(Sym::Ref(index)),
                    kind => {
                        if index != 0 {
                            return Err(de::Error::custom("string literal with nonzero index"));
                        }
                        let text: String = seq
                            .next_element()?
                            .ok_or_else(|| de::Error::custom("missing string literal"))?;
                        Ok(if kind == 2 {
                            Sym::New(text)
                        } else {
                            Sym::Lit(text)
                        })
                    }
                }
            }
        }
        // Postcard reads tuple elements on demand, so a one-element reference is fine here.
        d.deserialize_tuple(2, SymVisitor)
    }
}

/// The static string table (spec Appendix A). Index = position. Never reorder or remove entries:
/// append only, in a new protocol version.
#[rustfmt::skip]
pub const STATIC_TABLE: &[&str] = &[
    // 0..32 fit a one-byte reference: the most frequent names first.
    "div", "class", "span", "a", "href", "li", "p", "id", "style", "img", "src", "td", "tr",
    "type", "title", "alt", "ul", "br", "rel", "button", "input", "name", "value", "path", "svg",
    "width", "height", "meta", "content", "link", "i", "b",
    // Elements.
    "html", "head", "body", "strong", "em", "h1", "h2", "h3", "h4", "h5", "h6", "section",
    "article", "header", "footer", "nav", "main", "aside", "figure", "figcaption", "picture",
    "source", "table", "thead", "tbody", "tfoot", "th", "caption", "colgroup", "col", "form",
    "label", "select", "option", "optgroup", "textarea", "fieldset", "legend", "iframe",
    "noscript", "template", "script", "base", "blockquote", "pre", "code", "small", "sup", "sub",
    "time", "hr", "ol", "dl", "dt", "dd", "abbr", "cite", "q", "s", "u", "mark", "video", "audio",
    "canvas", "object", "embed", "param", "track", "map", "area", "address", "details", "summary",
    "dialog", "menu", "wbr", "bdi", "bdo", "data", "del", "ins", "kbd", "samp", "var", "output",
    "progress", "meter", "datalist", "slot", "font", "center",
    // SVG and MathML elements.
    "g", "use", "symbol", "defs", "circle", "rect", "line", "polyline", "polygon", "ellipse",
    "text", "tspan", "linearGradient", "radialGradient", "stop", "clipPath", "mask", "pattern",
    "image", "foreignObject", "math", "mi", "mo", "mn", "mrow",
    // Attributes.
    "charset", "lang", "dir", "tabindex", "role", "aria-label", "aria-hidden", "aria-expanded",
    "aria-controls", "aria-labelledby", "aria-describedby", "target", "srcset", "sizes", "loading",
    "decoding", "crossorigin", "integrity", "media", "property", "http-equiv", "placeholder",
    "autocomplete", "for", "action", "method", "checked", "selected", "disabled", "readonly",
    "required", "multiple", "hidden", "colspan", "rowspan", "itemprop", "itemscope", "itemtype",
    "datetime", "d", "viewBox", "fill", "stroke", "stroke-width", "xmlns", "xmlns:xlink",
    "xlink:href", "x", "y", "cx", "cy", "r", "transform", "points", "fill-rule", "clip-rule",
    "version", "focusable", "async", "defer", "nonce", "referrerpolicy", "frameborder",
    "allowfullscreen", "allow", "sandbox", "scope", "headers", "maxlength", "min", "max", "step",
    "accept", "autofocus", "contenteditable", "draggable", "spellcheck", "translate", "download",
    "hreflang", "usemap", "poster", "preload", "controls", "autoplay", "loop", "muted",
    "playsinline", "srcdoc", "enctype", "novalidate", "border", "cellpadding", "cellspacing",
    "align", "valign", "bgcolor", "color", "size", "data-src",
    // Values.
    "stylesheet", "text/css", "text/javascript", "submit", "checkbox", "radio", "email",
    "password", "search", "true", "false", "noopener", "noreferrer", "nofollow", "_blank", "utf-8",
    "UTF-8", "viewport", "width=device-width, initial-scale=1", "presentation", "navigation",
    "icon", "canonical", "lazy", "anonymous", "image/svg+xml", "currentColor", "none", "0", "1",
    "24", "0 0 24 24", "http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink", "og:title",
    "og:description", "og:image", "og:url", "og:type", "twitter:card", "description", "en", "ltr",
    "off", "on", "get", "post", "nofollow noopener", "noopener noreferrer", "image/png",
    "image/jpeg", "image/webp", "application/ld+json",
];

/// A fast 64-bit hash of short strings for the encoder's tables: eight bytes at a time, each
/// folded in with a 128-bit multiply. SipHash, the standard map's hash, cost a quarter of a
/// snapshot's encoding time. The seed is drawn once per process from the standard library's
/// random keys, so a page cannot choose strings that collide in every process.
fn str_hash(s: &str) -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(0x7461_6e64_656d_u64)
    });
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let fold = |a: u64, b: u64| {
        let m = u128::from(a) * u128::from(b);
        (m as u64) ^ ((m >> 64) as u64)
    };
    let b = s.as_bytes();
    let n = b.len();
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(w)
    };
    let half = |i: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&b[i..i + 4]);
        u64::from(u32::from_le_bytes(w))
    };
    let mut h = seed ^ (n as u64).wrapping_mul(K);
    // Whole words, then the last word, which may overlap the one before (the length went in
    // first). Short tails are read in place: a copy through the stack stalled the load.
    let tail = if n >= 8 {
        let mut i = 0;
        while i + 8 < n {
            h = fold(h ^ word(i), K);
            i += 8;
        }
        word(n - 8)
    } else if n >= 4 {
        (half(0) << 32) | half(n - 4)
    } else if n > 0 {
        (u64::from(b[0]) << 16) | (u64::from(b[n / 2]) << 8) | u64::from(b[n - 1])
    } else {
        0
    };
    h = fold(h ^ tail, K);
    fold(h, K ^ seed)
}

/// A map keyed by a [`str_hash`] value, which is already well mixed: the map uses it as is.
type HashIndex = HashMap<u64, u32, BuildHasherDefault<PassHasher>>;

/// The hasher of [`HashIndex`]: passes a `u64` key through.
#[derive(Default)]
struct PassHasher(u64);

impl Hasher for PassHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed; fold anything else in for completeness.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// The static table indexed by [`str_hash`]. Two entries with the same hash would keep the
/// first; the lookup compares the text, so a collision can only miss, never mismatch.
fn static_index_map() -> &'static HashIndex {
    static MAP: OnceLock<HashIndex> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut map = HashIndex::with_capacity_and_hasher(STATIC_TABLE.len(), Default::default());
        for (i, s) in STATIC_TABLE.iter().enumerate() {
            // The first occurrence wins; the table test checks there are no duplicates.
            map.entry(str_hash(s)).or_insert(i as u32);
        }
        map
    })
}

fn static_lookup(s: &str, h: u64) -> Option<u32> {
    let &i = static_index_map().get(&h)?;
    (STATIC_TABLE.get(i as usize) == Some(&s)).then_some(i)
}

/// The static table index of `s`, if it has one.
pub fn static_index(s: &str) -> Option<u32> {
    static_lookup(s, str_hash(s))
}

/// Which kind of string is being encoded; the encoder's remembering policy depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrClass {
    /// A tag or attribute name: short and repetitive.
    Name,
    /// An attribute value.
    Value,
    /// Text content, comments, URLs.
    Text,
}

/// Longest attribute value the encoder remembers in the dynamic table.
///
/// Chosen by measurement (`benches/examples/compression.rs` with the thresholds varied): a `New`
/// costs the same bytes as a `Lit`, so remembering more only costs table space, while a string
/// that repeats becomes a one- or two-byte `Ref`. Raising the limits from 256 bytes for values
/// and 48 for texts to 1024 and 256 made the uncompressed snapshots 8 % smaller on the median
/// corpus page (48 % on one with long repeated whitespace), the compressed ones 0.5 %, and the
/// compressed patches up to 0.5 %; larger limits gained nothing more. The table's own limits
/// (spec §8) still bound it.
const REMEMBER_VALUE_MAX: usize = 1024;
/// Longest text the encoder remembers in the dynamic table (see [`REMEMBER_VALUE_MAX`]).
const REMEMBER_TEXT_MAX: usize = 256;

/// The sender's side of the string tables: turns strings into [`Sym`]s, remembering repeated ones.
///
/// The dynamic table's texts live end to end in one buffer, found through a map from each
/// text's hash to its index: remembering a string allocates nothing of its own. When two texts
/// share a hash, only the first is remembered and the second travels as `Lit`, which any
/// decoder accepts (spec §5.3: what to remember is the encoder's policy).
#[derive(Debug, Clone)]
pub struct SymEncoder {
    index: HashIndex,
    /// The remembered texts, end to end.
    texts: String,
    /// Where each entry ends in `texts`; entry `i` starts where entry `i - 1` ends.
    ends: Vec<u32>,
    /// The byte length of the longest remembered text.
    longest: usize,
    limits: Limits,
}

/// The byte length of the longest entry of the static table.
const STATIC_LONGEST: usize = {
    let (mut i, mut longest) = (0, 0);
    while i < STATIC_TABLE.len() {
        if STATIC_TABLE[i].len() > longest {
            longest = STATIC_TABLE[i].len();
        }
        i += 1;
    }
    longest
};

impl SymEncoder {
    /// A fresh encoder with an empty dynamic table.
    pub fn new(limits: Limits) -> Self {
        Self {
            index: HashIndex::default(),
            texts: String::new(),
            ends: Vec::new(),
            longest: 0,
            limits,
        }
    }

    /// Forgets the dynamic table (a new epoch, spec §5.3).
    pub fn reset(&mut self) {
        self.index.clear();
        self.texts.clear();
        self.ends.clear();
        self.longest = 0;
    }

    /// Number of entries in the dynamic table.
    pub fn dynamic_len(&self) -> usize {
        self.ends.len()
    }

    fn entry(&self, i: u32) -> &str {
        let i = i as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.texts[start..self.ends[i] as usize]
    }

    /// Encodes `s`: a static entry if there is one, a dynamic reference if it was sent before,
    /// otherwise a literal that is remembered when the policy and the table's limits allow.
    pub fn encode(&mut self, s: &str, class: StrClass) -> Sym {
        self.encode_ref(s, class).to_sym()
    }

    /// [`SymEncoder::encode`] without an owned copy: a literal borrows `s`. For a sender that
    /// writes records straight into a frame ([`SnapshotWriter`](crate::SnapshotWriter)).
    pub fn encode_ref<'a>(&mut self, s: &'a str, class: StrClass) -> SymRef<'a> {
        let remember_max = match class {
            StrClass::Name => usize::MAX,
            StrClass::Value => REMEMBER_VALUE_MAX,
            StrClass::Text => REMEMBER_TEXT_MAX,
        };
        // Longer than every entry of both tables and too long to be remembered: a literal,
        // without hashing it (long texts are most of a page's bytes).
        if s.len() > remember_max && s.len() > self.longest && s.len() > STATIC_LONGEST {
            return SymRef::Lit(s);
        }
        let h = str_hash(s);
        if let Some(i) = static_lookup(s, h) {
            return SymRef::Static(i);
        }
        let taken = match self.index.get(&h) {
            Some(&i) if self.entry(i) == s => return SymRef::Ref(i),
            Some(_) => true,
            None => false,
        };
        let remember = s.len() <= remember_max;
        // Indexes above MAX_SYM_INDEX cannot travel (spec §5.1), whatever the limits allow.
        let fits = (self.ends.len() as u64) < u64::from(self.limits.max_dynamic_entries)
            && self.ends.len() <= MAX_SYM_INDEX as usize
            && (self.texts.len() + s.len()) as u64 <= u64::from(self.limits.max_dynamic_bytes);
        if remember && fits && !taken {
            let index = self.ends.len() as u32;
            self.index.insert(h, index);
            self.texts.push_str(s);
            self.ends.push(self.texts.len() as u32);
            self.longest = self.longest.max(s.len());
            SymRef::New(s)
        } else {
            SymRef::Lit(s)
        }
    }
}

/// The receiver's side of the string tables: resolves [`Sym`]s, growing the dynamic table as
/// `New` entries arrive.
///
/// The entries live end to end in one buffer, so remembering a `New` string costs no
/// allocation of its own; the string itself moves on to the caller.
#[derive(Debug, Clone)]
pub struct SymDecoder {
    /// The entries' texts, end to end.
    texts: String,
    /// Where each entry ends in `texts`; entry `i` starts where entry `i - 1` ends.
    ends: Vec<u32>,
    limits: Limits,
}

impl SymDecoder {
    /// A fresh decoder with an empty dynamic table.
    pub fn new(limits: Limits) -> Self {
        Self {
            texts: String::new(),
            ends: Vec::new(),
            limits,
        }
    }

    /// Forgets the dynamic table (a new epoch, spec §5.3).
    pub fn reset(&mut self) {
        self.texts.clear();
        self.ends.clear();
    }

    /// Number of entries in the dynamic table.
    pub fn dynamic_len(&self) -> usize {
        self.ends.len()
    }

    /// Entry `i` of the dynamic table, if there is one.
    fn entry(&self, i: u32) -> Option<&str> {
        let i = i as usize;
        let end = *self.ends.get(i)? as usize;
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1] as usize,
        };
        self.texts.get(start..end)
    }

    /// Resolves `sym` to its string; `field` names where it came from, for errors. A `New`
    /// string is appended to the dynamic table.
    pub fn resolve(&mut self, sym: Sym, field: &'static str) -> Result<String, DecodeError> {
        match sym {
            Sym::Lit(s) => Ok(s),
            Sym::New(s) => {
                self.remember(&s)?;
                Ok(s)
            }
            Sym::Static(i) | Sym::Ref(i) => self.resolve_index(&sym, i, field).map(str::to_owned),
        }
    }

    /// [`SymDecoder::resolve`] for a reference read in place (a [`SymRef`] of a
    /// [`SnapshotView`](crate::SnapshotView)): the string is borrowed from the frame body or the
    /// tables, so the caller copies it once, where it keeps it.
    pub fn resolve_ref<'s>(
        &'s mut self,
        sym: SymRef<'s>,
        field: &'static str,
    ) -> Result<&'s str, DecodeError> {
        match sym {
            SymRef::Lit(s) => Ok(s),
            SymRef::New(s) => {
                self.remember(s)?;
                Ok(s)
            }
            SymRef::Static(i) => self.resolve_index(&Sym::Static(i), i, field),
            SymRef::Ref(i) => self.resolve_index(&Sym::Ref(i), i, field),
        }
    }

    fn resolve_index(&self, sym: &Sym, i: u32, field: &'static str) -> Result<&str, DecodeError> {
        let (found, table) = match sym {
            Sym::Static(_) => (STATIC_TABLE.get(i as usize).copied(), "static"),
            _ => (self.entry(i), "dynamic"),
        };
        found.ok_or(DecodeError::BadStringRef {
            field,
            table,
            index: i,
        })
    }

    /// Appends `s` to the dynamic table, within its limits (spec §5.3).
    fn remember(&mut self, s: &str) -> Result<(), DecodeError> {
        let entries = self.ends.len() as u64 + 1;
        if entries > u64::from(self.limits.max_dynamic_entries) {
            return Err(DecodeError::Limit {
                field: "strings.dynamic_entries",
                limit: self.limits.max_dynamic_entries.into(),
                actual: entries,
            });
        }
        let bytes = self.texts.len() as u64 + s.len() as u64;
        if bytes > u64::from(self.limits.max_dynamic_bytes) {
            return Err(DecodeError::Limit {
                field: "strings.dynamic_bytes",
                limit: self.limits.max_dynamic_bytes.into(),
                actual: bytes,
            });
        }
        self.texts.push_str(s);
        // Within max_dynamic_bytes, a u32, as checked above.
        self.ends.push(self.texts.len() as u32);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_table_has_no_duplicates() {
        let mut seen = std::collections::HashSet::new();
        for s in STATIC_TABLE {
            assert!(seen.insert(*s), "duplicate static entry {s:?}");
        }
    }

    #[test]
    fn encoder_and_decoder_agree() {
        let mut enc = SymEncoder::new(Limits::DEFAULT);
        let mut dec = SymDecoder::new(Limits::DEFAULT);
        let words = [
            "div",
            "nav-item",
            "nav-item",
            "x".repeat(REMEMBER_VALUE_MAX + 1).leak() as &str,
            "nav-item",
        ];
        for w in words {
            let sym = enc.encode(w, StrClass::Value);
            let bytes = postcard::to_stdvec(&sym).unwrap();
            let back: Sym = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, sym);
            assert_eq!(dec.resolve(back, "test").unwrap(), w);
        }
        assert_eq!(enc.dynamic_len(), 1);
        assert_eq!(dec.dynamic_len(), 1);
        assert_eq!(enc.encode("nav-item", StrClass::Value), Sym::Ref(0));
        assert_eq!(enc.encode("div", StrClass::Name), Sym::Static(0));
    }

    /// A string too long to be remembered is still found when an earlier one of another class
    /// put it in the table, and forgotten with the table; one longer than any entry is a literal.
    #[test]
    fn long_strings_are_found_in_the_table_whatever_their_class() {
        let mut enc = SymEncoder::new(Limits::DEFAULT);
        let long = "y".repeat(REMEMBER_TEXT_MAX + 1);
        assert_eq!(enc.encode_ref(&long, StrClass::Text), SymRef::Lit(&long));
        assert_eq!(enc.encode_ref(&long, StrClass::Value), SymRef::New(&long));
        assert_eq!(enc.encode_ref(&long, StrClass::Text), SymRef::Ref(0));
        let longer = "y".repeat(REMEMBER_VALUE_MAX + 1);
        assert_eq!(
            enc.encode_ref(&longer, StrClass::Name),
            SymRef::New(&longer)
        );
        assert_eq!(enc.encode_ref(&longer, StrClass::Value), SymRef::Ref(1));
        assert_eq!(enc.encode_ref(&longer, StrClass::Text), SymRef::Ref(1));
        let other = "z".repeat(REMEMBER_VALUE_MAX + 1);
        assert_eq!(enc.encode_ref(&other, StrClass::Text), SymRef::Lit(&other));
        enc.reset();
        assert_eq!(enc.encode_ref(&long, StrClass::Text), SymRef::Lit(&long));
        assert_eq!(
            enc.encode_ref(&longer, StrClass::Value),
            SymRef::Lit(&longer)
        );
    }

    #[test]
    fn bad_references_are_named_errors() {
        let mut dec = SymDecoder::new(Limits::DEFAULT);
        let err = dec.resolve(Sym::Ref(0), "f").unwrap_err();
        assert_eq!(
            err,
            DecodeError::BadStringRef {
                field: "f",
                table: "dynamic",
                index: 0
            }
        );
        assert_eq!(err.code(), crate::ErrorCode::BadStringRef);
        assert!(matches!(
            dec.resolve(Sym::Static(STATIC_TABLE.len() as u32), "f"),
            Err(DecodeError::BadStringRef {
                table: "static",
                ..
            })
        ));
        let tiny = Limits {
            max_dynamic_entries: 1,
            ..Limits::DEFAULT
        };
        let mut dec = SymDecoder::new(tiny);
        dec.resolve(Sym::New("a".into()), "f").unwrap();
        assert!(matches!(
            dec.resolve(Sym::New("b".into()), "f"),
            Err(DecodeError::Limit { .. })
        ));
    }

    #[test]
    fn short_forms() {
        assert_eq!(postcard::to_stdvec(&Sym::Static(0)).unwrap(), [0x00]);
        assert_eq!(postcard::to_stdvec(&Sym::Ref(2)).unwrap(), [0x09]);
        assert_eq!(
            postcard::to_stdvec(&Sym::New("ab".into())).unwrap(),
            [0x02, 0x02, b'a', b'b']
        );
        assert_eq!(
            postcard::to_stdvec(&Sym::Lit("".into())).unwrap(),
            [0x03, 0x00]
        );
        assert!(
            postcard::from_bytes::<Sym>(&[0x06, 0x00]).is_err(),
            "literal with index"
        );
    }
}
