//! Writing `SNAPSHOT` frames (spec §7.14) record by record: the sender's counterpart of
//! [`SnapshotView`](crate::SnapshotView).
//!
//! ```text
//!  sender's tree ──► SymEncoder::encode_ref ──► SnapshotWriter::{element, text, …} ──► finish_frame
//!  (preorder walk)   SymRef<'tree>, no copies    record bytes, appended in place       header ‖ body
//! ```
//!
//! A sender that walks its own tree writes each node's record (spec §6.2) straight into the
//! frame, its strings borrowed from the tree, instead of building an owned [`NodeRecord`] per
//! node and encoding the [`Message::Snapshot`] afterwards. The bytes are exactly those that
//! [`frame::encode_frame`] writes for `Message::Snapshot` with the same records.
//!
//! [`NodeRecord`]: crate::NodeRecord
//! [`Message::Snapshot`]: crate::Message::Snapshot
//! [`frame::encode_frame`]: crate::frame::encode_frame

use crate::message::TreeHash;
use crate::strings::MAX_SYM_INDEX;
use crate::varint::{self, write_u64 as put_varint};
use crate::{EncodeError, FrameType, NodeRecord, Ns, SymRef};

/// The records of one `SNAPSHOT` part, written one by one, then framed by
/// [`SnapshotWriter::finish_frame`].
///
/// The records are written after room kept free for the frame's header and the body's leading
/// fields, which can only be written once the records are counted; so framing a part writes
/// those few bytes in front of the records instead of copying the records after them.
///
/// ```
/// use tandem_protocol::{FrameReader, Limits, Ns, SnapshotView, SnapshotWriter, SymRef};
///
/// let mut w = SnapshotWriter::new();
/// let attrs = [(SymRef::Lit("id"), SymRef::New("a"))];
/// w.element(Ns::Html, SymRef::Lit("p"), attrs.into_iter(), 1);
/// w.text(SymRef::Ref(0));
/// let (frame, _) = w.finish_frame(3, 0, "https://example.com/", Some([9; 16])).unwrap();
///
/// let limits = Limits::DEFAULT;
/// let mut reader = FrameReader::new(limits);
/// reader.push(&frame);
/// let raw = reader.next_frame().unwrap().unwrap();
/// let view = SnapshotView::parse(&raw.body, &limits).unwrap();
/// assert_eq!((view.epoch, view.len(), view.hash), (3, 2, Some([9; 16])));
/// ```
#[derive(Debug, Clone)]
pub struct SnapshotWriter {
    /// [`HEAD_ROOM`] free bytes, then the records written since the last frame.
    buf: Vec<u8>,
    count: u64,
    /// A string index above [`MAX_SYM_INDEX`] was written: the part cannot travel.
    unencodable: bool,
}

/// Bytes kept free in front of a part's records: room for the frame header (type, body length:
/// at most 6 bytes) and the body's fields before the records (epoch, part, URL length: at most
/// 15; count: at most 10; the URL itself). A part whose URL does not fit is copied once into a
/// buffer of its own.
const HEAD_ROOM: usize = 256;

impl Default for SnapshotWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotWriter {
    /// An empty part.
    pub fn new() -> Self {
        Self {
            buf: vec![0; HEAD_ROOM],
            count: 0,
            unencodable: false,
        }
    }

    /// Appends an element record: `attrs` as (name, value) references in order, and the number
    /// of child records that will follow it.
    pub fn element<'a>(
        &mut self,
        ns: Ns,
        name: SymRef<'_>,
        attrs: impl ExactSizeIterator<Item = (SymRef<'a>, SymRef<'a>)>,
        children: u32,
    ) {
        let ok = put_element(&mut self.buf, ns, name, attrs, children);
        self.added(ok);
    }

    /// Appends a text record.
    pub fn text(&mut self, text: SymRef<'_>) {
        let ok = put_leaf(&mut self.buf, 1, &[text]);
        self.added(ok);
    }

    /// Appends a comment record.
    pub fn comment(&mut self, text: SymRef<'_>) {
        let ok = put_leaf(&mut self.buf, 2, &[text]);
        self.added(ok);
    }

    /// Appends a doctype record.
    pub fn doctype(&mut self, name: SymRef<'_>, public_id: SymRef<'_>, system_id: SymRef<'_>) {
        let ok = put_leaf(&mut self.buf, 3, &[name, public_id, system_id]);
        self.added(ok);
    }

    /// Appends an owned record.
    pub fn record(&mut self, rec: &NodeRecord) {
        let ok = put_record(&mut self.buf, rec);
        self.added(ok);
    }

    fn added(&mut self, ok: bool) {
        self.unencodable |= !ok;
        self.count += 1;
    }

    /// Number of records written since the last frame.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no record was written since the last frame.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the records written since the last frame.
    pub fn records_bytes(&self) -> usize {
        self.buf.len() - HEAD_ROOM
    }

    /// The `SNAPSHOT` frame of part `part` of `epoch` holding the records written, with `url`
    /// and, in the last part, the tree `hash` (spec §7.14), and the length of its body. Empties
    /// the writer for the next part.
    ///
    /// Fails with [`EncodeError::Unencodable`], dropping the records, when a string index above
    /// 2^30 - 1 was written (spec §5.1). The body is not checked against a frame limit: compare
    /// its length with the receiver's `max_frame_body` before sending.
    pub fn finish_frame(
        &mut self,
        epoch: u32,
        part: u32,
        url: &str,
        hash: Option<TreeHash>,
    ) -> Result<(FrameBuf, usize), EncodeError> {
        let unencodable = std::mem::take(&mut self.unencodable);
        let count = std::mem::take(&mut self.count);
        if unencodable {
            self.buf.truncate(HEAD_ROOM);
            return Err(EncodeError::Unencodable {
                message: "SNAPSHOT",
            });
        }
        let mut fields = Vec::with_capacity(32 + url.len());
        put_snapshot_head(&mut fields, epoch, part, url, count);
        let tail = 1 + if hash.is_some() { 16 } else { 0 };
        let body = fields.len() + self.records_bytes() + tail;
        let Ok(body32) = u32::try_from(body) else {
            self.buf.truncate(HEAD_ROOM);
            return Err(EncodeError::TooLarge {
                message: "SNAPSHOT",
                len: body,
                max: u32::MAX,
            });
        };
        let mut head = Vec::with_capacity(10 + fields.len());
        varint::write_u32(&mut head, FrameType::SNAPSHOT.0);
        varint::write_u32(&mut head, body32);
        head.extend_from_slice(&fields);
        // The next part starts in a buffer as large as this one grew to, so that it does not
        // grow (and copy) again.
        let next = Vec::with_capacity(self.buf.capacity());
        let mut buf = std::mem::replace(&mut self.buf, next);
        self.buf.resize(HEAD_ROOM, 0);
        let frame = match HEAD_ROOM.checked_sub(head.len()) {
            Some(start) => {
                buf[start..HEAD_ROOM].copy_from_slice(&head);
                put_snapshot_tail(&mut buf, hash.as_ref());
                FrameBuf { buf, start }
            }
            None => {
                head.reserve(buf.len() - HEAD_ROOM + tail);
                head.extend_from_slice(&buf[HEAD_ROOM..]);
                put_snapshot_tail(&mut head, hash.as_ref());
                FrameBuf::from(head)
            }
        };
        Ok((frame, body))
    }
}

/// An encoded frame at the end of its buffer, after room its writer kept free and did not
/// need ([`SnapshotWriter`]). It reads as the frame's bytes ([`FrameBuf::as_slice`], or
/// through `Deref`); [`FrameBuf::into_vec`] gives them as a `Vec`, moving them to its front.
#[derive(Clone, Default)]
pub struct FrameBuf {
    buf: Vec<u8>,
    start: usize,
}

impl FrameBuf {
    /// The frame: header, then body.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The frame as a `Vec` that holds nothing else (its bytes move to the front when the
    /// buffer had room before them).
    pub fn into_vec(mut self) -> Vec<u8> {
        self.buf.drain(..self.start);
        self.buf
    }
}

impl From<Vec<u8>> for FrameBuf {
    fn from(buf: Vec<u8>) -> Self {
        Self { buf, start: 0 }
    }
}

impl std::ops::Deref for FrameBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for FrameBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for FrameBuf {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for FrameBuf {}

impl std::fmt::Debug for FrameBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_slice().fmt(f)
    }
}

/// Appends the fields of a `SNAPSHOT` body (spec §7.14) that come before its `count` records.
pub(crate) fn put_snapshot_head(out: &mut Vec<u8>, epoch: u32, part: u32, url: &str, count: u64) {
    varint::write_u32(out, epoch);
    varint::write_u32(out, part);
    put_varint(out, url.len() as u64);
    out.extend_from_slice(url.as_bytes());
    put_varint(out, count);
}

/// Appends the field of a `SNAPSHOT` body that comes after its records: the optional tree hash.
pub(crate) fn put_snapshot_tail(out: &mut Vec<u8>, hash: Option<&TreeHash>) {
    match hash {
        None => out.push(0),
        Some(h) => {
            out.push(1);
            out.extend_from_slice(h);
        }
    }
}

/// Appends a node record (spec §6.2): the variant index, then its fields. False when a string
/// index cannot travel (the bytes written are then not a record).
pub(crate) fn put_record(out: &mut Vec<u8>, rec: &NodeRecord) -> bool {
    match rec {
        NodeRecord::Element {
            ns,
            name,
            attrs,
            children,
        } => put_element(
            out,
            *ns,
            name.as_sym_ref(),
            attrs
                .iter()
                .map(|a| (a.name.as_sym_ref(), a.value.as_sym_ref())),
            *children,
        ),
        NodeRecord::Text { text } => put_leaf(out, 1, &[text.as_sym_ref()]),
        NodeRecord::Comment { text } => put_leaf(out, 2, &[text.as_sym_ref()]),
        NodeRecord::Doctype {
            name,
            public_id,
            system_id,
        } => put_leaf(
            out,
            3,
            &[
                name.as_sym_ref(),
                public_id.as_sym_ref(),
                system_id.as_sym_ref(),
            ],
        ),
    }
}

/// Appends an element record; false when a string index cannot travel.
#[inline]
fn put_element<'a>(
    out: &mut Vec<u8>,
    ns: Ns,
    name: SymRef<'_>,
    attrs: impl ExactSizeIterator<Item = (SymRef<'a>, SymRef<'a>)>,
    children: u32,
) -> bool {
    out.push(0);
    put_varint(out, u32::from(ns).into());
    let mut ok = put_sym(out, name);
    put_varint(out, attrs.len() as u64);
    for (n, v) in attrs {
        ok &= put_sym(out, n);
        ok &= put_sym(out, v);
    }
    put_varint(out, children.into());
    ok
}

/// Appends a text (1), comment (2) or doctype (3) record: the variant index, then its strings;
/// false when a string index cannot travel.
#[inline]
fn put_leaf(out: &mut Vec<u8>, tag: u8, syms: &[SymRef<'_>]) -> bool {
    out.push(tag);
    syms.iter().fold(true, |ok, &s| put_sym(out, s) & ok)
}

/// Appends a string reference (spec §5.1); false, writing nothing, for an index above
/// 2^30 - 1, which cannot travel.
#[inline]
pub(crate) fn put_sym(out: &mut Vec<u8>, sym: SymRef<'_>) -> bool {
    let (tag, s) = match sym {
        SymRef::Static(i) | SymRef::Ref(i) if i > MAX_SYM_INDEX => return false,
        SymRef::Static(i) => {
            put_varint(out, u64::from(i) << 2);
            return true;
        }
        SymRef::Ref(i) => {
            put_varint(out, (u64::from(i) << 2) | 1);
            return true;
        }
        SymRef::New(s) => (2, s),
        SymRef::Lit(s) => (3, s),
    };
    out.push(tag);
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Snapshot;
    use crate::{Limits, Message, Sym, frame};

    /// The view's sample records, with values that take multi-byte varints.
    fn records() -> Vec<NodeRecord> {
        let mut nodes = crate::view::tests::sample().nodes;
        if let NodeRecord::Element {
            attrs, children, ..
        } = &mut nodes[1]
        {
            *children = 300;
            attrs[1].value = Sym::Lit("ü".repeat(70));
        }
        nodes[2] = NodeRecord::Text {
            text: Sym::Ref(200),
        };
        nodes
    }

    /// The writer's frames are byte for byte those of `Message::Snapshot`, for parts with and
    /// without records, URL and hash, with a URL too long for the room in front of the records,
    /// and the writer starts afresh after each.
    #[test]
    fn frames_equal_the_owned_encoding() {
        let limits = Limits::DEFAULT;
        let mut w = SnapshotWriter::new();
        // A URL too long for the room kept in front of the records.
        let long = format!("https://example.com/{}", "x".repeat(HEAD_ROOM));
        for (epoch, part, url, hash, n) in [
            (0, 0, "https://example.com/é", None, 4),
            (1, 0, long.as_str(), Some([1; 16]), 3),
            (300, 1, "", Some([7; 16]), 2),
            (u32::MAX, 70_000, "", Some([0; 16]), 0),
        ] {
            let nodes: Vec<NodeRecord> = records().into_iter().take(n).collect();
            for rec in &nodes {
                w.record(rec);
            }
            assert_eq!(w.len(), n);
            let (got, body) = w.finish_frame(epoch, part, url, hash).unwrap();
            assert!(w.is_empty() && w.records_bytes() == 0);
            let msg = Message::Snapshot(Snapshot {
                epoch,
                part,
                url: url.into(),
                nodes,
                hash,
            });
            let want = frame::to_frame(&msg, &limits).unwrap();
            assert_eq!(*got, want);
            assert_eq!(frame::decode_exact(&got, &limits).unwrap(), msg);
            assert_eq!(got.clone().into_vec(), want);
            assert_eq!(got.len() - body, 1 + varint::len_u32(body as u32));
        }
    }

    /// An index that cannot travel fails the part, as the owned encoding does, and leaves the
    /// writer empty for the next part.
    #[test]
    fn an_index_above_the_wire_limit_is_refused() {
        let mut w = SnapshotWriter::new();
        w.text(SymRef::Ref(MAX_SYM_INDEX));
        w.text(SymRef::Static(MAX_SYM_INDEX + 1));
        assert_eq!(
            w.finish_frame(0, 0, "", None),
            Err(EncodeError::Unencodable {
                message: "SNAPSHOT"
            })
        );
        assert!(w.is_empty() && w.records_bytes() == 0);
        w.text(SymRef::Ref(MAX_SYM_INDEX));
        assert!(w.finish_frame(0, 0, "", None).is_ok());
    }
}
