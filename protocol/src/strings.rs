//! String references, the static string table and the per-epoch dynamic table (spec §5).
//!
//! Tag names, attribute names and common values are indexes into [`STATIC_TABLE`], which is fixed
//! by the spec (Appendix A). Other strings that repeat enter the dynamic table of the DOM stream
//! once, with [`Sym::New`], and are referenced by index afterwards with [`Sym::Ref`]. The dynamic
//! table starts empty with every `SNAPSHOT` of part 0 (a new sync epoch, spec §7.14) and both sides
//! grow it in the same order, so an index means the same string on both.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{DecodeError, Limits};

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

fn static_index_map() -> &'static HashMap<&'static str, u32> {
    static MAP: OnceLock<HashMap<&'static str, u32>> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut map = HashMap::with_capacity(STATIC_TABLE.len());
        for (i, s) in STATIC_TABLE.iter().enumerate() {
            // The first occurrence wins; the table test checks there are no duplicates.
            map.entry(*s).or_insert(i as u32);
        }
        map
    })
}

/// The static table index of `s`, if it has one.
pub fn static_index(s: &str) -> Option<u32> {
    static_index_map().get(s).copied()
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
#[derive(Debug, Clone)]
pub struct SymEncoder {
    dynamic: HashMap<String, u32>,
    bytes: u64,
    limits: Limits,
}

impl SymEncoder {
    /// A fresh encoder with an empty dynamic table.
    pub fn new(limits: Limits) -> Self {
        Self {
            dynamic: HashMap::new(),
            bytes: 0,
            limits,
        }
    }

    /// Forgets the dynamic table (a new epoch, spec §5.3).
    pub fn reset(&mut self) {
        self.dynamic.clear();
        self.bytes = 0;
    }

    /// Number of entries in the dynamic table.
    pub fn dynamic_len(&self) -> usize {
        self.dynamic.len()
    }

    /// Encodes `s`: a static entry if there is one, a dynamic reference if it was sent before,
    /// otherwise a literal that is remembered when the policy and the table's limits allow.
    pub fn encode(&mut self, s: &str, class: StrClass) -> Sym {
        if let Some(i) = static_index(s) {
            return Sym::Static(i);
        }
        if let Some(&i) = self.dynamic.get(s) {
            return Sym::Ref(i);
        }
        let remember = match class {
            StrClass::Name => true,
            StrClass::Value => s.len() <= REMEMBER_VALUE_MAX,
            StrClass::Text => s.len() <= REMEMBER_TEXT_MAX,
        };
        let fits = (self.dynamic.len() as u64) < u64::from(self.limits.max_dynamic_entries)
            && self.bytes + s.len() as u64 <= u64::from(self.limits.max_dynamic_bytes);
        if remember && fits {
            let index = self.dynamic.len() as u32;
            self.dynamic.insert(s.to_owned(), index);
            self.bytes += s.len() as u64;
            Sym::New(s.to_owned())
        } else {
            Sym::Lit(s.to_owned())
        }
    }
}

/// The receiver's side of the string tables: resolves [`Sym`]s, growing the dynamic table as
/// `New` entries arrive.
#[derive(Debug, Clone)]
pub struct SymDecoder {
    entries: Vec<String>,
    bytes: u64,
    limits: Limits,
}

impl SymDecoder {
    /// A fresh decoder with an empty dynamic table.
    pub fn new(limits: Limits) -> Self {
        Self {
            entries: Vec::new(),
            bytes: 0,
            limits,
        }
    }

    /// Forgets the dynamic table (a new epoch, spec §5.3).
    pub fn reset(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Number of entries in the dynamic table.
    pub fn dynamic_len(&self) -> usize {
        self.entries.len()
    }

    /// Resolves `sym` to its string; `field` names where it came from, for errors. A `New`
    /// string is appended to the dynamic table.
    pub fn resolve(&mut self, sym: Sym, field: &'static str) -> Result<String, DecodeError> {
        match sym {
            Sym::Static(i) => STATIC_TABLE.get(i as usize).map(|s| (*s).to_owned()).ok_or(
                DecodeError::BadStringRef {
                    field,
                    table: "static",
                    index: i,
                },
            ),
            Sym::Ref(i) => self
                .entries
                .get(i as usize)
                .cloned()
                .ok_or(DecodeError::BadStringRef {
                    field,
                    table: "dynamic",
                    index: i,
                }),
            Sym::Lit(s) => Ok(s),
            Sym::New(s) => {
                let entries = self.entries.len() as u64 + 1;
                if entries > u64::from(self.limits.max_dynamic_entries) {
                    return Err(DecodeError::Limit {
                        field: "strings.dynamic_entries",
                        limit: self.limits.max_dynamic_entries.into(),
                        actual: entries,
                    });
                }
                let bytes = self.bytes + s.len() as u64;
                if bytes > u64::from(self.limits.max_dynamic_bytes) {
                    return Err(DecodeError::Limit {
                        field: "strings.dynamic_bytes",
                        limit: self.limits.max_dynamic_bytes.into(),
                        actual: bytes,
                    });
                }
                self.bytes = bytes;
                self.entries.push(s.clone());
                Ok(s)
            }
        }
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
