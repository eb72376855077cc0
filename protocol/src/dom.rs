//! Document records and patch operations as they travel (spec §6).
//!
//! A document is a tree under an implicit document node with id 0. A snapshot lists the
//! document's descendants in preorder; each element record says how many child records follow
//! it, so the tree shape needs no ids. Node ids are assigned implicitly: the n-th record of an
//! epoch's snapshot gets id n (starting at 1), and the nodes of a later `Insert` take
//! consecutive ids from the `first` it names. Ids are never reused within an epoch and stay
//! below `Limits::max_node_id` (spec §6.1).

use serde::{Deserialize, Serialize};

use crate::{Sym, wire_enum};

/// A node id (spec §6.1): 0 is the document node; others are assigned by the consumer in the
/// order nodes are created within the epoch. Encoded as a varint.
pub type NodeId = u64;

/// The id of the document node.
pub const DOCUMENT_ID: NodeId = 0;

wire_enum! {
    /// The namespace of an element (spec §6.2).
    pub enum Ns {
        /// The HTML namespace.
        Html = 0,
        /// The SVG namespace.
        Svg = 1,
        /// The MathML namespace.
        MathMl = 2,
    }
}

/// One attribute of an element record: name then value (spec §6.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Attr {
    /// The qualified attribute name (`class`, `xlink:href`).
    pub name: Sym,
    /// The attribute value.
    pub value: Sym,
}

/// One node of a preorder tree listing (spec §6.2).
///
/// Layout: varint variant, then the fields in order.
/// `0 Element { ns: varint, name: Sym, attrs: varint n × Attr, children: varint }`,
/// `1 Text { text: Sym }`, `2 Comment { text: Sym }`,
/// `3 Doctype { name: Sym, public_id: Sym, system_id: Sym }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum NodeRecord {
    /// An element; `children` records of its subtree's children follow (each with its own
    /// descendants) before the element's next sibling.
    Element {
        /// Namespace.
        ns: Ns,
        /// Local tag name, lower case for HTML.
        name: Sym,
        /// Attributes in document order.
        attrs: Vec<Attr>,
        /// Number of child nodes.
        children: u32,
    },
    /// A text node.
    Text {
        /// The text.
        text: Sym,
    },
    /// A comment.
    Comment {
        /// The comment's text.
        text: Sym,
    },
    /// A document type declaration; only as a child of the document.
    Doctype {
        /// `html` for HTML5 documents.
        name: Sym,
        /// Public identifier, usually empty.
        public_id: Sym,
        /// System identifier, usually empty.
        system_id: Sym,
    },
}

/// One edit of a text (spec §6.5): keep `keep` bytes, delete `delete` bytes, insert `insert`.
/// Offsets count UTF-8 bytes and MUST fall on character boundaries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct TextEdit {
    /// Bytes to copy unchanged from the old text.
    pub keep: u32,
    /// Bytes of the old text to skip.
    pub delete: u32,
    /// Text to insert.
    pub insert: String,
}

/// Where an inserted or moved node goes (spec §6.5): right after a sibling, or first under a
/// parent. The parent of [`Place::After`] is the sibling's parent when the operation applies.
///
/// Layout: one varint `v` — `2 × id` for `After(id)`, `2 × id + 1` for `First(id)`. `After(0)`
/// (`v = 0`) names no sibling: the document node has no parent, so applying it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Place {
    /// Right after this sibling, under the sibling's parent.
    After(NodeId),
    /// First child of this node.
    First(NodeId),
}

impl Place {
    /// The place for "under `parent` after `prev`, or first when `prev` is 0", the form the
    /// engines work with.
    pub fn new(parent: NodeId, prev: NodeId) -> Self {
        if prev == DOCUMENT_ID {
            Place::First(parent)
        } else {
            Place::After(prev)
        }
    }

    /// The varint value that carries the place; `None` for an id of 2^63 or more, which no
    /// place can name (ids are far below that, spec §6.1).
    pub fn to_wire(self) -> Option<u64> {
        match self {
            Place::After(id) => id.checked_mul(2),
            Place::First(id) => id.checked_mul(2).map(|v| v | 1),
        }
    }

    /// The place a varint value carries.
    pub fn from_wire(v: u64) -> Self {
        if v & 1 == 0 {
            Place::After(v >> 1)
        } else {
            Place::First(v >> 1)
        }
    }
}

impl Serialize for Place {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.to_wire() {
            Some(v) => s.serialize_u64(v),
            None => Err(serde::ser::Error::custom("place: node id at or above 2^63")),
        }
    }
}

impl<'de> Deserialize<'de> for Place {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u64::deserialize(d).map(Place::from_wire)
    }
}

/// One operation of a patch (spec §6.5). Operations apply in order; each refers to nodes as
/// the tree is after the operations before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum PatchOp {
    /// `0`: insert new subtrees (a preorder listing of one or more siblings) at `at`; the new
    /// nodes take the ids `first`, `first + 1`, … in preorder.
    Insert {
        /// Where the first new sibling goes; the others follow it.
        at: Place,
        /// The id of the first new node; ids MUST NOT be in use.
        first: NodeId,
        /// The new nodes in preorder.
        nodes: Vec<NodeRecord>,
    },
    /// `1`: remove a node and its subtree; their ids are retired.
    Remove {
        /// The node to remove.
        node: NodeId,
    },
    /// `2`: move a node (with its subtree) to `at`.
    Move {
        /// The node to move.
        node: NodeId,
        /// Its new place.
        at: Place,
    },
    /// `3`: set an attribute, appending it if the element lacks it.
    SetAttr {
        /// The element.
        node: NodeId,
        /// Attribute name.
        name: Sym,
        /// New value.
        value: Sym,
    },
    /// `4`: remove an attribute if present.
    RemoveAttr {
        /// The element.
        node: NodeId,
        /// Attribute name.
        name: Sym,
    },
    /// `5`: replace the text of a text or comment node.
    SetText {
        /// The text or comment node.
        node: NodeId,
        /// The new text.
        text: Sym,
    },
    /// `6`: edit the text of a text or comment node.
    EditText {
        /// The text or comment node.
        node: NodeId,
        /// Edits applied left to right; the rest of the old text is kept.
        edits: Vec<TextEdit>,
    },
    /// `7`: move several nodes, in order, to one place: the first goes to `at`, each next one
    /// right after the one before. Exactly the `Move`s `(nodes[0], at)`, `(nodes[1],
    /// After(nodes[0]))`, …, in one operation (a run of siblings that moved together).
    MoveRun {
        /// Where the first node goes.
        at: Place,
        /// The nodes, in their new order; at least one.
        nodes: NodeRun,
    },
}

impl PatchOp {
    /// The operation's wire variant number (spec §6.5): 0 `Insert` … 7 `MoveRun`.
    pub fn variant(&self) -> u32 {
        match self {
            PatchOp::Insert { .. } => 0,
            PatchOp::Remove { .. } => 1,
            PatchOp::Move { .. } => 2,
            PatchOp::SetAttr { .. } => 3,
            PatchOp::RemoveAttr { .. } => 4,
            PatchOp::SetText { .. } => 5,
            PatchOp::EditText { .. } => 6,
            PatchOp::MoveRun { .. } => 7,
        }
    }
}

/// The node list of a [`PatchOp::MoveRun`] (spec §6.5): ids that usually lie close together,
/// so each after the first travels as its difference from the one before.
///
/// Layout: a varint count, the first id as a `u64` varint, then each next id as the zigzag
/// varint of `id − previous` (an `i64`). A difference that leaves the range of ids is
/// `Malformed`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct NodeRun(pub Vec<NodeId>);

impl Serialize for NodeRun {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        let mut prev = None;
        for &id in &self.0 {
            match prev {
                None => seq.serialize_element(&id)?,
                Some(p) => {
                    // Ids stay below 2^63 (spec §6.1), so the difference fits an i64.
                    let delta = i64::try_from(i128::from(id) - i128::from(p))
                        .map_err(|_| serde::ser::Error::custom("node run: id at or above 2^63"))?;
                    seq.serialize_element(&delta)?
                }
            }
            prev = Some(id);
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for NodeRun {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = NodeRun;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a node run")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<NodeRun, A::Error> {
                // Every element takes at least one byte of the (bounded) body, so the hint
                // cannot ask for more than the frame holds; cap it anyway.
                let mut ids = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                let Some(first) = seq.next_element::<u64>()? else {
                    return Ok(NodeRun(ids));
                };
                ids.push(first);
                let mut prev = first;
                while let Some(delta) = seq.next_element::<i64>()? {
                    prev = prev
                        .checked_add_signed(delta)
                        .ok_or_else(|| serde::de::Error::custom("node run: id out of range"))?;
                    ids.push(prev);
                }
                Ok(NodeRun(ids))
            }
        }
        d.deserialize_seq(Visit)
    }
}
