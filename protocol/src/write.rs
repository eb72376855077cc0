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
/// ```
/// use tandem_protocol::{FrameReader, Limits, Ns, SnapshotView, SnapshotWriter, SymRef};
///
/// let mut w = SnapshotWriter::new();
/// let attrs = [(SymRef::Lit("id"), SymRef::New("a"))];
/// w.element(Ns::Html, SymRef::Lit("p"), attrs.into_iter(), 1);
/// w.text(SymRef::Ref(0));
/// let mut out = Vec::new();
/// w.finish_frame(3, 0, "https://example.com/", Some([9; 16]), &mut out).unwrap();
///
/// let limits = Limits::DEFAULT;
/// let mut reader = FrameReader::new(limits);
/// reader.push(&out);
/// let raw = reader.next_frame().unwrap().unwrap();
/// let view = SnapshotView::parse(&raw.body, &limits).unwrap();
/// assert_eq!((view.epoch, view.len(), view.hash), (3, 2, Some([9; 16])));
/// ```
#[derive(Debug, Clone, Default)]
pub struct SnapshotWriter {
    records: Vec<u8>,
    count: u64,
    /// A string index above [`MAX_SYM_INDEX`] was written: the part cannot travel.
    unencodable: bool,
}

impl SnapshotWriter {
    /// An empty part.
    pub fn new() -> Self {
        Self::default()
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
        let ok = put_element(&mut self.records, ns, name, attrs, children);
        self.added(ok);
    }

    /// Appends a text record.
    pub fn text(&mut self, text: SymRef<'_>) {
        let ok = put_leaf(&mut self.records, 1, &[text]);
        self.added(ok);
    }

    /// Appends a comment record.
    pub fn comment(&mut self, text: SymRef<'_>) {
        let ok = put_leaf(&mut self.records, 2, &[text]);
        self.added(ok);
    }

    /// Appends a doctype record.
    pub fn doctype(&mut self, name: SymRef<'_>, public_id: SymRef<'_>, system_id: SymRef<'_>) {
        let ok = put_leaf(&mut self.records, 3, &[name, public_id, system_id]);
        self.added(ok);
    }

    /// Appends an owned record.
    pub fn record(&mut self, rec: &NodeRecord) {
        let ok = put_record(&mut self.records, rec);
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
        self.records.len()
    }

    /// Appends the `SNAPSHOT` frame of part `part` of `epoch` holding the records written, with
    /// `url` and, in the last part, the tree `hash` (spec §7.14), and empties the writer for the
    /// next part. Returns the body's length.
    ///
    /// Fails with [`EncodeError::Unencodable`], writing nothing, when a string index above
    /// 2^30 - 1 was written (spec §5.1). The body is not checked against a frame limit: compare
    /// the length returned with the receiver's `max_frame_body` before sending.
    pub fn finish_frame(
        &mut self,
        epoch: u32,
        part: u32,
        url: &str,
        hash: Option<TreeHash>,
        out: &mut Vec<u8>,
    ) -> Result<usize, EncodeError> {
        let unencodable = std::mem::take(&mut self.unencodable);
        let count = std::mem::take(&mut self.count);
        if unencodable {
            self.records.clear();
            return Err(EncodeError::Unencodable {
                message: "SNAPSHOT",
            });
        }
        let mut head = Vec::with_capacity(32 + url.len());
        put_snapshot_head(&mut head, epoch, part, url, count);
        let tail = 1 + if hash.is_some() { 16 } else { 0 };
        let body = head.len() + self.records.len() + tail;
        let Ok(body32) = u32::try_from(body) else {
            self.records.clear();
            return Err(EncodeError::TooLarge {
                message: "SNAPSHOT",
                len: body,
                max: u32::MAX,
            });
        };
        out.reserve(10 + body);
        varint::write_u32(out, FrameType::SNAPSHOT.0);
        varint::write_u32(out, body32);
        out.extend_from_slice(&head);
        out.extend_from_slice(&self.records);
        put_snapshot_tail(out, hash.as_ref());
        self.records.clear();
        Ok(body)
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
    /// without records, URL and hash, and the writer starts afresh after each.
    #[test]
    fn frames_equal_the_owned_encoding() {
        let limits = Limits::DEFAULT;
        let mut w = SnapshotWriter::new();
        for (epoch, part, url, hash, n) in [
            (0, 0, "https://example.com/é", None, 4),
            (300, 1, "", Some([7; 16]), 2),
            (u32::MAX, 70_000, "", Some([0; 16]), 0),
        ] {
            let nodes: Vec<NodeRecord> = records().into_iter().take(n).collect();
            for rec in &nodes {
                w.record(rec);
            }
            assert_eq!(w.len(), n);
            let mut got = Vec::new();
            let body = w.finish_frame(epoch, part, url, hash, &mut got).unwrap();
            assert!(w.is_empty() && w.records_bytes() == 0);
            let msg = Message::Snapshot(Snapshot {
                epoch,
                part,
                url: url.into(),
                nodes,
                hash,
            });
            let want = frame::to_frame(&msg, &limits).unwrap();
            assert_eq!(got, want);
            assert_eq!(frame::decode_exact(&got, &limits).unwrap(), msg);
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
        let mut out = Vec::new();
        assert_eq!(
            w.finish_frame(0, 0, "", None, &mut out),
            Err(EncodeError::Unencodable {
                message: "SNAPSHOT"
            })
        );
        assert!(out.is_empty() && w.is_empty() && w.records_bytes() == 0);
        w.text(SymRef::Ref(MAX_SYM_INDEX));
        assert!(w.finish_frame(0, 0, "", None, &mut out).is_ok());
    }
}
