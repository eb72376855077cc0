//! Snapshots: a full tree as preorder records, split into parts (spec §7.14), and the
//! receiver's builder that turns records back into a tree (spec §6.2).

use tandem_protocol::message::Snapshot;
use tandem_protocol::{
    Attr, DOCUMENT_ID, DecodeError, EncodeError, FrameBuf, Limits, NodeId, NodeRecord, Ns,
    RecordRef, STATIC_TABLE, SnapshotView, SnapshotWriter, StrClass, Sym, SymDecoder, SymEncoder,
    SymRef,
};

use crate::dom::{Dom, Element, Name, NodeKind};
use crate::{EngineError, hash, wide};

/// Default target size of one snapshot part, in estimated body bytes. Parts let the agent show
/// progress and let a later part be built while an earlier one travels.
pub const DEFAULT_PART_BYTES: usize = 32 * 1024;

/// Builds the record for one node, with its child count.
pub fn record(kind: &NodeKind, children: usize, enc: &mut SymEncoder) -> NodeRecord {
    match kind {
        NodeKind::Element(e) => NodeRecord::Element {
            ns: e.ns,
            name: enc.encode(&e.name, StrClass::Name),
            attrs: e
                .attrs
                .iter()
                .map(|(n, v)| Attr {
                    name: enc.encode(n, StrClass::Name),
                    value: enc.encode(v, StrClass::Value),
                })
                .collect(),
            children: children as u32,
        },
        NodeKind::Text(t) => NodeRecord::Text {
            text: enc.encode(t, StrClass::Text),
        },
        NodeKind::Comment(t) => NodeRecord::Comment {
            text: enc.encode(t, StrClass::Text),
        },
        NodeKind::Doctype {
            name,
            public_id,
            system_id,
        } => NodeRecord::Doctype {
            name: enc.encode(name, StrClass::Name),
            public_id: enc.encode(public_id, StrClass::Value),
            system_id: enc.encode(system_id, StrClass::Value),
        },
        // The document node is implicit and never listed.
        NodeKind::Document => NodeRecord::Comment {
            text: enc.encode("", StrClass::Text),
        },
    }
}

fn estimate(kind: &NodeKind) -> usize {
    match kind {
        NodeKind::Element(e) => {
            4 + e
                .attrs
                .iter()
                .map(|(n, v)| 2 + n.len().min(4) + v.len())
                .sum::<usize>()
        }
        NodeKind::Text(t) | NodeKind::Comment(t) => 2 + t.len(),
        NodeKind::Doctype {
            name,
            public_id,
            system_id,
        } => 4 + name.len() + public_id.len() + system_id.len(),
        NodeKind::Document => 0,
    }
}

/// Encodes the subtree records of `root`'s children in preorder, appending to `out`.
pub fn records_of(dom: &Dom, root: NodeId, enc: &mut SymEncoder, out: &mut Vec<NodeRecord>) {
    for id in dom.preorder(root).skip(1) {
        if let Some(node) = dom.node(id) {
            out.push(record(&node.kind, node.children().len(), enc));
        }
    }
}

/// One part of a snapshot as its `SNAPSHOT` frame (spec §7.14), written straight from the
/// tree by [`encode_frames`]: what a sender keeps until it sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFrame {
    epoch: u32,
    part: u32,
    last: bool,
    frame: FrameBuf,
    body_len: usize,
}

impl SnapshotFrame {
    /// Sync epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Part number within the epoch, from 0.
    pub fn part(&self) -> u32 {
        self.part
    }

    /// Whether this is the last part, the one that carries the tree hash.
    pub fn is_last(&self) -> bool {
        self.last
    }

    /// The whole frame: header, then body.
    pub fn frame(&self) -> &[u8] {
        &self.frame
    }

    /// The whole frame, for sending.
    pub fn into_frame(self) -> FrameBuf {
        self.frame
    }

    /// The frame's body.
    pub fn body(&self) -> &[u8] {
        &self.frame[self.frame.len() - self.body_len..]
    }

    /// The part as an owned message, read back from its frame (for tools and tests that look
    /// at the records; a sender sends [`SnapshotFrame::frame`]).
    pub fn to_snapshot(&self) -> Result<Snapshot, DecodeError> {
        // The writer's own output: no receiver's limit applies to reading it back.
        const UNBOUNDED: Limits = Limits {
            max_frame_body: u32::MAX,
            max_string: u32::MAX,
            max_nodes_per_frame: u32::MAX,
            max_nodes: u32::MAX,
            max_node_id: u32::MAX,
            max_depth: u32::MAX,
            max_attributes: u32::MAX,
            max_patch_ops: u32::MAX,
            max_dynamic_entries: u32::MAX,
            max_dynamic_bytes: u32::MAX,
            max_list: u32::MAX,
        };
        Ok(SnapshotView::parse(self.body(), &UNBOUNDED)?.to_snapshot())
    }
}

/// [`encode_frames`] with parts of about `part_bytes` each, as owned messages: for tools and
/// tests that look at the records (a sender sends the frames).
pub fn encode(
    dom: &mut Dom,
    epoch: u32,
    url: &str,
    enc: &mut SymEncoder,
    part_bytes: usize,
) -> Result<Vec<Snapshot>, EncodeError> {
    encode_frames(dom, epoch, url, enc, part_bytes, part_bytes)?
        .iter()
        .map(|f| {
            f.to_snapshot().map_err(|_| EncodeError::Unencodable {
                message: "SNAPSHOT",
            })
        })
        .collect()
}

/// Encodes `dom` as the `SNAPSHOT` frames of a snapshot of `epoch` (spec §7.14), each record
/// written straight from its node ([`SnapshotWriter`]), with an above-the-fold cut (viewport
/// first): part 0 ends after about `fold_bytes` of records — in document order, what the
/// customer sees first — so that the agent can show it as soon as it arrives; later parts hold
/// about `part_bytes` each. The tree's ids must be in document order (see
/// [`Dom::renumbered`]); `enc` is reset, as a snapshot starts an epoch.
///
/// Fails only with [`EncodeError::Unencodable`], which `enc`'s own string indexes never cause.
/// Frame bodies are not checked against a receiver's `max_frame_body`.
pub fn encode_frames(
    dom: &mut Dom,
    epoch: u32,
    url: &str,
    enc: &mut SymEncoder,
    fold_bytes: usize,
    part_bytes: usize,
) -> Result<Vec<SnapshotFrame>, EncodeError> {
    enc.reset();
    let hash = hash::short(&dom.root_hash());
    let mut frames: Vec<SnapshotFrame> = Vec::new();
    let mut w = SnapshotWriter::new();
    let mut size = 0;
    // The URL travels in part 0 only.
    let finish = |frames: &mut Vec<SnapshotFrame>, w: &mut SnapshotWriter, last: bool| {
        let part = frames.len() as u32;
        let url = if part == 0 { url } else { "" };
        let (frame, body_len) = w.finish_frame(epoch, part, url, last.then_some(hash))?;
        frames.push(SnapshotFrame {
            epoch,
            part,
            last,
            frame,
            body_len,
        });
        Ok::<_, EncodeError>(())
    };
    for id in dom.preorder(DOCUMENT_ID).skip(1) {
        let Some(node) = dom.node(id) else { continue };
        size += estimate(&node.kind);
        write_record(&mut w, &node.kind, node.children().len(), enc);
        let limit = if frames.is_empty() {
            fold_bytes
        } else {
            part_bytes
        };
        if size >= limit {
            finish(&mut frames, &mut w, false)?;
            size = 0;
        }
    }
    finish(&mut frames, &mut w, true)?;
    Ok(frames)
}

/// Writes the record of one node with `children` children: the strings in the order
/// [`record`] encodes them, so that both keep the string tables in the same step.
fn write_record(w: &mut SnapshotWriter, kind: &NodeKind, children: usize, enc: &mut SymEncoder) {
    match kind {
        NodeKind::Element(e) => {
            let name = enc.encode_ref(&e.name, StrClass::Name);
            let attrs = e.attrs.iter().map(|(n, v)| {
                (
                    enc.encode_ref(n, StrClass::Name),
                    enc.encode_ref(v, StrClass::Value),
                )
            });
            w.element(e.ns, name, attrs, children as u32);
        }
        NodeKind::Text(t) => w.text(enc.encode_ref(t, StrClass::Text)),
        NodeKind::Comment(t) => w.comment(enc.encode_ref(t, StrClass::Text)),
        NodeKind::Doctype {
            name,
            public_id,
            system_id,
        } => {
            let name = enc.encode_ref(name, StrClass::Name);
            let public_id = enc.encode_ref(public_id, StrClass::Value);
            let system_id = enc.encode_ref(system_id, StrClass::Value);
            w.doctype(name, public_id, system_id);
        }
        // The document node is implicit and never listed.
        NodeKind::Document => w.comment(enc.encode_ref("", StrClass::Text)),
    }
}

/// Turns a stream of preorder records into a tree, checking shape and limits as it goes.
///
/// Records take consecutive ids from the builder's first id (spec §6.1). Nested records are
/// appended without walking the tree: depth comes from the builder's own stack.
///
/// The builder also hashes what it builds (spec §6.3) while the records' bytes are at hand: the
/// hash inputs of the open elements lie end to end in one buffer, innermost last. A leaf appends
/// its canonical bytes to its parent's input; an element appends `01` and room for its hash to
/// its parent's, then opens its own input after it. When an element has all its children, its
/// input is hashed, cut off the buffer, and the hash written into the room left for it. So a
/// built subtree reaches the tree with its hashes current, and [`Dom::root_hash`] has only the
/// nodes above it left to hash, instead of walking and re-encoding the whole tree.
#[derive(Debug)]
pub struct TreeBuilder {
    /// Open elements: (id, depth, children still expected).
    stack: Vec<(NodeId, u32, u32)>,
    /// Per open element, parallel to `stack`: where its hash input starts in `input`, and where
    /// its element children's entries start in `entries`.
    open: Vec<(usize, usize)>,
    /// The hash inputs of the open elements, end to end.
    input: Vec<u8>,
    /// Element children of the open elements: id and the offset in `input` of its hash.
    entries: Vec<(NodeId, usize)>,
    /// Where top-level records go.
    root: NodeId,
    /// Depth of the top-level records, once known.
    top_depth: Option<u32>,
    /// For inserts: the sibling the next top-level record follows (0: first).
    prev_top: NodeId,
    /// The id the next record takes.
    next: NodeId,
    /// Ids of the top-level records, in order.
    pub top: Vec<NodeId>,
}

impl TreeBuilder {
    /// A builder that adds records under `root`, after `prev` (0: first), with ids from `first`.
    pub fn new(root: NodeId, prev: NodeId, first: NodeId) -> Self {
        TreeBuilder {
            stack: Vec::new(),
            open: Vec::new(),
            input: Vec::new(),
            entries: Vec::new(),
            root,
            top_depth: None,
            prev_top: prev,
            next: first,
            top: Vec::new(),
        }
    }

    /// Adds one record; `field` names the message field for errors.
    pub fn add(
        &mut self,
        dom: &mut Dom,
        rec: NodeRecord,
        dec: &mut SymDecoder,
        field: &'static str,
    ) -> Result<NodeId, EngineError> {
        let children = match &rec {
            NodeRecord::Element { children, .. } => *children,
            _ => 0,
        };
        let kind = resolve(rec, dec, field)?;
        self.add_kind(dom, kind, children)
    }

    /// [`TreeBuilder::add`] for a record read in place from a
    /// [`SnapshotView`]: each string is copied once, into the
    /// node.
    pub fn add_ref(
        &mut self,
        dom: &mut Dom,
        rec: RecordRef<'_>,
        dec: &mut SymDecoder,
        field: &'static str,
    ) -> Result<NodeId, EngineError> {
        let children = match &rec {
            RecordRef::Element { children, .. } => *children,
            _ => 0,
        };
        let kind = resolve_ref(rec, dec, field)?;
        self.add_kind(dom, kind, children)
    }

    /// Adds one node that will have `children` children (the records that follow).
    pub fn add_kind(
        &mut self,
        dom: &mut Dom,
        kind: NodeKind,
        children: u32,
    ) -> Result<NodeId, EngineError> {
        self.close_finished(dom);
        let is_element = matches!(kind, NodeKind::Element(_));
        if children > 0 && !is_element {
            return Err(EngineError::BadShape {
                field: "node.children",
                detail: "only elements have children",
            });
        }
        let mark = (self.input.len(), self.entries.len(), self.open.len());
        let placed = self.place(dom, kind, children, is_element);
        if placed.is_err() {
            // Keep `open` parallel to `stack` for whoever looks at the builder after an error.
            self.input.truncate(mark.0);
            self.entries.truncate(mark.1);
            self.open.truncate(mark.2);
        }
        placed
    }

    /// Puts one node into the tree and the hash inputs (see [`TreeBuilder::add_kind`]).
    fn place(
        &mut self,
        dom: &mut Dom,
        kind: NodeKind,
        children: u32,
        is_element: bool,
    ) -> Result<NodeId, EngineError> {
        let id = self.next;
        let depth = match self.stack.last_mut() {
            Some((parent, pdepth, remaining)) => {
                // Inside an element of this listing: only a doctype may not stand here.
                if matches!(kind, NodeKind::Doctype { .. }) {
                    return Err(EngineError::WrongKind {
                        field: "node.kind",
                        id: *parent,
                    });
                }
                *remaining -= 1;
                let (parent, depth) = (*parent, *pdepth + 1);
                // The node's entry in its parent's hash input (spec §6.3).
                if is_element {
                    self.input.push(0x01);
                    self.entries.push((id, self.input.len()));
                    self.input.extend_from_slice(&[0; 32]);
                    self.open_input(&kind, children);
                } else {
                    hash::encode_node(&kind, &mut self.input);
                }
                dom.push_raw_sized(id, kind, parent, children)?;
                depth
            }
            None => {
                if is_element {
                    self.open_input(&kind, children);
                }
                dom.create_with_id(id, kind)?;
                if let Err(e) = dom.attach(id, self.root, self.prev_top) {
                    let _ = dom.remove(id);
                    return Err(e);
                }
                self.prev_top = id;
                self.top.push(id);
                *self.top_depth.get_or_insert_with(|| dom.depth(id))
            }
        };
        self.next = id + 1;
        if children > 0 && depth + 1 > dom.limits().max_depth {
            return Err(EngineError::Limit {
                field: "tree.depth",
                limit: dom.limits().max_depth.into(),
                actual: (depth + 1).into(),
            });
        }
        if is_element {
            // Pushed even when childless: the next record or `finish` closes it, which hashes it.
            self.stack.push((id, depth, children));
        }
        Ok(id)
    }

    /// Starts the hash input of an element about to be built: its header and child count.
    fn open_input(&mut self, kind: &NodeKind, children: u32) {
        self.open.push((self.input.len(), self.entries.len()));
        hash::encode_node(kind, &mut self.input);
        hash::write_varint(&mut self.input, children.into());
    }

    /// Closes the innermost open elements that have all their children: hashes each one's
    /// input, gives the hash to its node and writes it into its parent's input.
    fn close_finished(&mut self, dom: &mut Dom) {
        while let Some(&(id, _, 0)) = self.stack.last() {
            self.stack.pop();
            let Some((start, first_entry)) = self.open.pop() else {
                continue;
            };
            let input = &self.input[start..];
            let wide = (wide::THRESHOLD..u32::MAX as usize).contains(&input.len())
                && self.entries.len() > first_entry;
            let (hash, cache) = if wide {
                // Kept as Dom::rehash keeps it, so that a later change among the children
                // patches it instead of rehashing the whole input.
                let mut input = input.to_vec();
                let mut entries = self.entries[first_entry..]
                    .iter()
                    .map(|&(c, at)| (c, (at - start) as u32))
                    .collect();
                let mut cache = Box::<wide::WideHash>::default();
                (cache.rebuild(&mut input, &mut entries), Some(cache))
            } else {
                (*blake3::hash(input).as_bytes(), None)
            };
            self.input.truncate(start);
            self.entries.truncate(first_entry);
            // The parent's entry for this element is the 32 bytes just before its input.
            if !self.open.is_empty() {
                self.input[start - 32..start].copy_from_slice(&hash);
            }
            dom.set_built_hash(id, hash, cache);
        }
    }

    /// Checks that every element received all its children.
    ///
    /// It also hashes the elements that are complete. A builder dropped without `finish`
    /// leaves the elements it did not close dirty, for [`Dom::root_hash`] to hash.
    pub fn finish(&mut self, dom: &mut Dom, field: &'static str) -> Result<(), EngineError> {
        self.close_finished(dom);
        if self.stack.is_empty() {
            Ok(())
        } else {
            Err(EngineError::BadShape {
                field,
                detail: "records end inside an element",
            })
        }
    }

    /// Whether the builder is inside an element that still expects children.
    pub fn is_open(&self) -> bool {
        self.stack.iter().any(|&(_, _, r)| r > 0)
    }
}

/// Resolves a record's strings into a node kind, appending `New` strings to the table.
pub fn resolve(
    rec: NodeRecord,
    dec: &mut SymDecoder,
    field: &'static str,
) -> Result<NodeKind, EngineError> {
    Ok(match rec {
        NodeRecord::Element {
            ns, name, attrs, ..
        } => {
            if matches!(ns, Ns::Unknown(_)) {
                return Err(DecodeError::InvalidValue {
                    field,
                    detail: "unknown namespace",
                }
                .into());
            }
            let name = resolve_name(dec, name, field)?;
            let attrs = attrs
                .into_iter()
                .map(|a| {
                    Ok((
                        resolve_name(dec, a.name, field)?,
                        dec.resolve(a.value, field)?,
                    ))
                })
                .collect::<Result<Vec<_>, DecodeError>>()?;
            NodeKind::Element(Element { ns, name, attrs })
        }
        NodeRecord::Text { text } => NodeKind::Text(dec.resolve(text, field)?),
        NodeRecord::Comment { text } => NodeKind::Comment(dec.resolve(text, field)?),
        NodeRecord::Doctype {
            name,
            public_id,
            system_id,
        } => NodeKind::Doctype {
            name: dec.resolve(name, field)?,
            public_id: dec.resolve(public_id, field)?,
            system_id: dec.resolve(system_id, field)?,
        },
    })
}

/// Resolves an element or attribute name, borrowing an entry of the static table.
fn resolve_name(dec: &mut SymDecoder, sym: Sym, field: &'static str) -> Result<Name, DecodeError> {
    if let Sym::Static(i) = sym
        && let Some(&s) = STATIC_TABLE.get(i as usize)
    {
        return Ok(Name::Borrowed(s));
    }
    dec.resolve(sym, field).map(Name::Owned)
}

/// [`resolve_name`] for a name read in place.
fn resolve_name_ref(
    dec: &mut SymDecoder,
    sym: SymRef<'_>,
    field: &'static str,
) -> Result<Name, DecodeError> {
    if let SymRef::Static(i) = sym
        && let Some(&s) = STATIC_TABLE.get(i as usize)
    {
        return Ok(Name::Borrowed(s));
    }
    Ok(Name::Owned(dec.resolve_ref(sym, field)?.to_owned()))
}

/// [`resolve`] for a record read in place; the same checks in the same order.
pub fn resolve_ref(
    rec: RecordRef<'_>,
    dec: &mut SymDecoder,
    field: &'static str,
) -> Result<NodeKind, EngineError> {
    Ok(match rec {
        RecordRef::Element {
            ns, name, attrs, ..
        } => {
            if matches!(ns, Ns::Unknown(_)) {
                return Err(DecodeError::InvalidValue {
                    field,
                    detail: "unknown namespace",
                }
                .into());
            }
            let name = resolve_name_ref(dec, name, field)?;
            let mut list = Vec::with_capacity(attrs.len());
            for (n, v) in attrs {
                let n = resolve_name_ref(dec, n, field)?;
                list.push((n, dec.resolve_ref(v, field)?.to_owned()));
            }
            NodeKind::Element(Element {
                ns,
                name,
                attrs: list,
            })
        }
        RecordRef::Text { text } => NodeKind::Text(dec.resolve_ref(text, field)?.to_owned()),
        RecordRef::Comment { text } => NodeKind::Comment(dec.resolve_ref(text, field)?.to_owned()),
        RecordRef::Doctype {
            name,
            public_id,
            system_id,
        } => NodeKind::Doctype {
            name: dec.resolve_ref(name, field)?.to_owned(),
            public_id: dec.resolve_ref(public_id, field)?.to_owned(),
            system_id: dec.resolve_ref(system_id, field)?.to_owned(),
        },
    })
}

/// Decodes a complete snapshot (all parts, in order) into a tree, checking the hash. A
/// convenience for tests and tools; the [`crate::Agent`] does the same incrementally.
pub fn decode(parts: &[Snapshot], limits: Limits) -> Result<Dom, EngineError> {
    let mut dom = Dom::new(limits);
    let mut dec = SymDecoder::new(limits);
    let mut builder = TreeBuilder::new(DOCUMENT_ID, 0, 1);
    let mut announced = None;
    for part in parts {
        for rec in part.nodes.iter().cloned() {
            builder.add(&mut dom, rec, &mut dec, "snapshot.nodes")?;
        }
        announced = part.hash;
    }
    builder.finish(&mut dom, "snapshot.nodes")?;
    let actual = hash::short(&dom.root_hash());
    match announced {
        Some(h) if h == actual => Ok(dom),
        Some(h) => Err(EngineError::HashMismatch {
            what: "snapshot".into(),
            expected: crate::error::hex(&h),
            actual: crate::error::hex(&actual),
        }),
        None => Err(EngineError::BadShape {
            field: "snapshot.hash",
            detail: "no part carried the hash",
        }),
    }
}
