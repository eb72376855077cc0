//! Borrowed views of `SNAPSHOT` bodies (spec §7.14): the records read in place, their strings
//! borrowed from the frame, so a receiver builds its tree without an owned copy of each record.
//!
//! ```text
//!  SNAPSHOT body ──► SnapshotView::parse ──► records() ──► RecordRef { SymRef<'body>, … }
//!                    checks the whole body     reads the checked bytes again, in place
//!                    and the limits (§4.5, §8)
//! ```
//!
//! [`SnapshotView::parse`] accepts exactly the bodies that [`Message::decode_body`] accepts for a
//! `SNAPSHOT` frame, with the same limits, and fails with the same error: when its own scan
//! refuses a body, it asks the owned decoder for the error, so the named errors of the two paths
//! cannot drift apart. A view is thus fully recognised before anything acts on it (spec §4.5).
//!
//! [`Message::decode_body`]: crate::Message::decode_body

use crate::message::{Snapshot, TreeHash};
use crate::{Attr, DecodeError, FrameType, Limits, MalformedReason, Message, NodeRecord, Ns, Sym};

/// A string reference (spec §5.1) whose literal, if any, is borrowed from the frame body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymRef<'a> {
    /// An entry of the static table.
    Static(u32),
    /// An entry of the dynamic table.
    Ref(u32),
    /// A string that is appended to the dynamic table.
    New(&'a str),
    /// A string used once.
    Lit(&'a str),
}

impl SymRef<'_> {
    /// The owned reference.
    pub fn to_sym(self) -> Sym {
        match self {
            SymRef::Static(i) => Sym::Static(i),
            SymRef::Ref(i) => Sym::Ref(i),
            SymRef::New(s) => Sym::New(s.to_owned()),
            SymRef::Lit(s) => Sym::Lit(s.to_owned()),
        }
    }
}

/// One node record (spec §6.2) read in place.
#[derive(Debug, Clone)]
pub enum RecordRef<'a> {
    /// An element; `children` records of its subtree's children follow.
    Element {
        /// Namespace.
        ns: Ns,
        /// Local tag name.
        name: SymRef<'a>,
        /// Attributes in order, as (name, value).
        attrs: AttrsRef<'a>,
        /// Number of child nodes.
        children: u32,
    },
    /// A text node.
    Text {
        /// The text.
        text: SymRef<'a>,
    },
    /// A comment.
    Comment {
        /// The comment's text.
        text: SymRef<'a>,
    },
    /// A document type declaration.
    Doctype {
        /// Name.
        name: SymRef<'a>,
        /// Public identifier.
        public_id: SymRef<'a>,
        /// System identifier.
        system_id: SymRef<'a>,
    },
}

impl RecordRef<'_> {
    /// The owned record.
    pub fn to_record(&self) -> NodeRecord {
        match self {
            RecordRef::Element {
                ns,
                name,
                attrs,
                children,
            } => NodeRecord::Element {
                ns: *ns,
                name: name.to_sym(),
                attrs: attrs
                    .clone()
                    .map(|(name, value)| Attr {
                        name: name.to_sym(),
                        value: value.to_sym(),
                    })
                    .collect(),
                children: *children,
            },
            RecordRef::Text { text } => NodeRecord::Text {
                text: text.to_sym(),
            },
            RecordRef::Comment { text } => NodeRecord::Comment {
                text: text.to_sym(),
            },
            RecordRef::Doctype {
                name,
                public_id,
                system_id,
            } => NodeRecord::Doctype {
                name: name.to_sym(),
                public_id: public_id.to_sym(),
                system_id: system_id.to_sym(),
            },
        }
    }
}

/// The attributes of an element record, read in place as (name, value) pairs.
#[derive(Debug, Clone)]
pub struct AttrsRef<'a> {
    at: Cursor<'a>,
    left: usize,
}

impl<'a> Iterator for AttrsRef<'a> {
    type Item = (SymRef<'a>, SymRef<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        // The view checked these bytes: reading them again cannot fail.
        let pair = (self.at.sym()?, self.at.sym()?);
        self.left -= 1;
        Some(pair)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for AttrsRef<'_> {}

/// A `SNAPSHOT` body (spec §7.14) checked whole, its records read in place.
#[derive(Debug, Clone)]
pub struct SnapshotView<'a> {
    /// Sync epoch.
    pub epoch: u32,
    /// Part number within the epoch, from 0.
    pub part: u32,
    /// The page URL (part 0; empty in later parts).
    pub url: &'a str,
    /// The tree hash, present exactly in the last part.
    pub hash: Option<TreeHash>,
    records: Cursor<'a>,
    count: usize,
}

impl<'a> SnapshotView<'a> {
    /// Checks `body` as the body of a `SNAPSHOT` frame: its layout (spec §4.4, §7.14), no
    /// trailing bytes, and the limits of `limits` (spec §8). Accepts exactly what
    /// [`Message::decode_body`] accepts, and fails with the same error.
    pub fn parse(body: &'a [u8], limits: &Limits) -> Result<Self, DecodeError> {
        if let Some(view) = Self::scan(body, limits) {
            return Ok(view);
        }
        // The scan says only that the body is refused; the owned decoder names why.
        match Message::decode_body(FrameType::SNAPSHOT, body, limits) {
            Err(e) => Err(e),
            Ok(_) => {
                debug_assert!(false, "the view refused a SNAPSHOT the decoder accepts");
                Err(DecodeError::Malformed {
                    message: "SNAPSHOT",
                    reason: MalformedReason::Other,
                })
            }
        }
    }

    /// One pass over the body, allocating nothing; `None` when the owned decoder would fail.
    fn scan(body: &'a [u8], l: &Limits) -> Option<Self> {
        let mut c = Cursor(body);
        let epoch = c.u32()?;
        let part = c.u32()?;
        let url = c.str()?;
        if url.len() as u64 > u64::from(l.max_string) {
            return None;
        }
        let count = c.u64()?;
        if count > u64::from(l.max_nodes_per_frame) {
            return None;
        }
        let records = c.clone();
        for _ in 0..count {
            match c.u32()? {
                0 => {
                    c.u32()?;
                    c.sym_within(l.max_string)?;
                    let n = c.u64()?;
                    if n > u64::from(l.max_attributes) {
                        return None;
                    }
                    for _ in 0..n {
                        c.sym_within(l.max_string)?;
                        c.sym_within(l.max_string)?;
                    }
                    c.u32()?;
                }
                1 | 2 => {
                    c.sym_within(l.max_string)?;
                }
                3 => {
                    c.sym_within(l.max_string)?;
                    c.sym_within(l.max_string)?;
                    c.sym_within(l.max_string)?;
                }
                _ => return None,
            }
        }
        let hash = match c.byte()? {
            0 => None,
            1 => Some(c.take(16)?.try_into().ok()?),
            _ => return None,
        };
        if !c.0.is_empty() {
            return None;
        }
        Some(SnapshotView {
            epoch,
            part,
            url,
            hash,
            records,
            // At most max_nodes_per_frame, a u32.
            count: count as usize,
        })
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the part holds no records.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The records in order.
    pub fn records(&self) -> Records<'a> {
        Records {
            at: self.records.clone(),
            left: self.count,
        }
    }

    /// The owned message.
    pub fn to_snapshot(&self) -> Snapshot {
        Snapshot {
            epoch: self.epoch,
            part: self.part,
            url: self.url.to_owned(),
            nodes: self.records().map(|r| r.to_record()).collect(),
            hash: self.hash,
        }
    }
}

/// The records of a [`SnapshotView`], in order.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    at: Cursor<'a>,
    left: usize,
}

impl<'a> Iterator for Records<'a> {
    type Item = RecordRef<'a>;

    fn next(&mut self) -> Option<RecordRef<'a>> {
        if self.left == 0 {
            return None;
        }
        // The view checked these bytes: reading them again cannot fail.
        let c = &mut self.at;
        let rec = match c.u32()? {
            0 => {
                let ns = Ns::from(c.u32()?);
                let name = c.sym()?;
                let n = c.u64()? as usize;
                let attrs = AttrsRef {
                    at: c.clone(),
                    left: n,
                };
                for _ in 0..n {
                    c.skip_sym()?;
                    c.skip_sym()?;
                }
                RecordRef::Element {
                    ns,
                    name,
                    attrs,
                    children: c.u32()?,
                }
            }
            1 => RecordRef::Text { text: c.sym()? },
            2 => RecordRef::Comment { text: c.sym()? },
            3 => RecordRef::Doctype {
                name: c.sym()?,
                public_id: c.sym()?,
                system_id: c.sym()?,
            },
            _ => return None,
        };
        self.left -= 1;
        Some(rec)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left))
    }
}

/// The unread rest of a body, read with postcard's rules (spec §4.4).
#[derive(Debug, Clone)]
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    #[inline]
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    /// A varint of at most `max` bytes whose last byte is at most `last` when it is the
    /// `max`-th (spec §4.2), as postcard reads it: non-minimal forms are accepted.
    #[inline]
    fn varint(&mut self, max: usize, last: u8) -> Option<u64> {
        let b = self.byte()?;
        if b < 0x80 {
            return Some(u64::from(b));
        }
        let mut out = u64::from(b & 0x7f);
        for i in 1..max {
            let b = self.byte()?;
            out |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return (i < max - 1 || b <= last).then_some(out);
            }
        }
        None
    }

    #[inline]
    fn u32(&mut self) -> Option<u32> {
        // At most 5 bytes, the fifth at most 0x0f: the value fits 32 bits.
        self.varint(5, 0x0f).map(|v| v as u32)
    }

    #[inline]
    fn u64(&mut self) -> Option<u64> {
        self.varint(10, 0x01)
    }

    #[inline]
    fn take(&mut self, n: u64) -> Option<&'a [u8]> {
        let n = usize::try_from(n).ok()?;
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    #[inline]
    fn str(&mut self) -> Option<&'a str> {
        let n = self.u64()?;
        std::str::from_utf8(self.take(n)?).ok()
    }

    /// A string reference's first varint, and for a literal (`New` or `Lit`) its bytes, not yet
    /// checked as UTF-8; `None` when the bytes run out or a literal carries an index.
    #[inline]
    fn sym_head(&mut self) -> Option<(u32, Option<&'a [u8]>)> {
        let v = self.u32()?;
        if v & 2 == 0 {
            return Some((v, None));
        }
        if v >> 2 != 0 {
            return None;
        }
        let n = self.u64()?;
        Some((v, Some(self.take(n)?)))
    }

    #[inline]
    fn sym(&mut self) -> Option<SymRef<'a>> {
        Some(match self.sym_head()? {
            (v, None) if v & 1 == 0 => SymRef::Static(v >> 2),
            (v, None) => SymRef::Ref(v >> 2),
            (v, Some(bytes)) => {
                let s = std::str::from_utf8(bytes).ok()?;
                if v & 1 == 0 {
                    SymRef::New(s)
                } else {
                    SymRef::Lit(s)
                }
            }
        })
    }

    /// A string reference whose literal is at most `max` bytes and valid UTF-8, checked
    /// without making a `str` of it (the scan only decides; [`Records`] reads it again).
    #[inline]
    fn sym_within(&mut self, max: u32) -> Option<()> {
        let Some(bytes) = self.sym_head()?.1 else {
            return Some(());
        };
        // Most page strings are ASCII, which a word-at-a-time check settles without the
        // general UTF-8 decoder's per-call setup.
        let valid = bytes.is_ascii() || std::str::from_utf8(bytes).is_ok();
        (valid && bytes.len() as u64 <= u64::from(max)).then_some(())
    }

    /// Skips a string reference of checked bytes, without checking its UTF-8 again.
    #[inline]
    fn skip_sym(&mut self) -> Option<()> {
        self.sym_head().map(|_| ())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fuzzing::snapshot_view_agrees;

    fn body(s: &Snapshot) -> Vec<u8> {
        let mut out = Vec::new();
        Message::Snapshot(s.clone()).encode_body(&mut out).unwrap();
        out
    }

    pub(crate) fn sample() -> Snapshot {
        let lit = |s: &str| Sym::Lit(s.into());
        Snapshot {
            epoch: 300,
            part: 0,
            url: "https://example.com/é".into(),
            nodes: vec![
                NodeRecord::Doctype {
                    name: Sym::Static(32),
                    public_id: lit(""),
                    system_id: Sym::New("sys".into()),
                },
                NodeRecord::Element {
                    ns: Ns::Svg,
                    name: Sym::New("g".into()),
                    attrs: vec![
                        Attr {
                            name: Sym::Static(1),
                            value: Sym::New("a b".into()),
                        },
                        Attr {
                            name: Sym::Ref(0),
                            value: lit("ü"),
                        },
                    ],
                    children: 2,
                },
                NodeRecord::Text { text: Sym::Ref(1) },
                NodeRecord::Comment { text: lit("c") },
            ],
            hash: Some([7; 16]),
        }
    }

    /// The view and the owned decoder agree on a body and on every truncation and many
    /// single-byte corruptions of it, under default and tight limits.
    #[test]
    fn agrees_with_the_owned_decoder() {
        let tight = Limits {
            max_string: 2,
            max_attributes: 1,
            max_nodes_per_frame: 3,
            ..Limits::DEFAULT
        };
        let mut bodies = Vec::new();
        for s in [
            sample(),
            Snapshot {
                hash: None,
                nodes: Vec::new(),
                ..sample()
            },
        ] {
            let b = body(&s);
            for n in 0..=b.len() {
                bodies.push(b[..n].to_vec());
            }
            for i in 0..b.len() {
                for v in [
                    0x00, 0x01, 0x02, 0x03, 0x04, 0x0f, 0x10, 0x7f, 0x80, 0xc3, 0xff,
                ] {
                    let mut m = b.clone();
                    m[i] = v;
                    bodies.push(m);
                }
                let mut m = b.clone();
                m.insert(i, 0x80);
                bodies.push(m);
            }
            let mut m = b.clone();
            m.push(0);
            bodies.push(m);
        }
        let mut accepted = 0;
        for b in &bodies {
            for l in [Limits::DEFAULT, tight] {
                let owned = Message::decode_body(FrameType::SNAPSHOT, b, &l);
                accepted += usize::from(owned.is_ok());
                snapshot_view_agrees(b, &l, &owned);
            }
        }
        assert!(accepted > 10, "few bodies decode: {accepted}");
    }

    #[test]
    fn varints_at_their_widths() {
        // epoch as a 5-byte varint with the fifth byte 0x0f (allowed) and 0x10 (overflow).
        for (last, ok) in [(0x0f, true), (0x10, false)] {
            let b = [0xff, 0xff, 0xff, 0xff, last, 0, 0, 0, 0];
            let owned = Message::decode_body(FrameType::SNAPSHOT, &b, &Limits::DEFAULT);
            assert_eq!(owned.is_ok(), ok);
            snapshot_view_agrees(&b, &Limits::DEFAULT, &owned);
        }
    }
}
