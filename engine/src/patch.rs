//! Patch operations: the consumer's record of changes, their encoding, and the receiver's
//! application (spec §6.5).

use tandem_protocol::{NodeId, NodeRecord, PatchOp, StrClass, SymDecoder, SymEncoder, TextEdit};

use crate::dom::{Dom, NodeKind};
use crate::snapshot::TreeBuilder;
use crate::{EngineError, snapshot};

/// A change to the tree with its strings resolved: what the consumer records between two
/// sends, before the strings are encoded against the session's tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// New subtrees in preorder (kind, child count), inserted under `parent` after `prev`.
    Insert {
        /// The parent.
        parent: NodeId,
        /// The preceding sibling, or 0.
        prev: NodeId,
        /// The new nodes in preorder, with their child counts.
        nodes: Vec<(NodeKind, u32)>,
    },
    /// Remove a subtree.
    Remove {
        /// The node.
        node: NodeId,
    },
    /// Move a subtree.
    Move {
        /// The node.
        node: NodeId,
        /// The new parent.
        parent: NodeId,
        /// The preceding sibling at the new place, or 0.
        prev: NodeId,
    },
    /// Set an attribute.
    SetAttr {
        /// The element.
        node: NodeId,
        /// Name.
        name: String,
        /// Value.
        value: String,
    },
    /// Remove an attribute.
    RemoveAttr {
        /// The element.
        node: NodeId,
        /// Name.
        name: String,
    },
    /// Replace a text.
    SetText {
        /// The text or comment node.
        node: NodeId,
        /// The new text.
        text: String,
    },
}

impl Op {
    /// Encodes the operation against the session's string tables.
    pub fn encode(&self, enc: &mut SymEncoder) -> PatchOp {
        match self {
            Op::Insert {
                parent,
                prev,
                nodes,
            } => PatchOp::Insert {
                parent: *parent,
                prev: *prev,
                nodes: nodes
                    .iter()
                    .map(|(k, c)| snapshot::record(k, *c as usize, enc))
                    .collect(),
            },
            Op::Remove { node } => PatchOp::Remove { node: *node },
            Op::Move { node, parent, prev } => PatchOp::Move {
                node: *node,
                parent: *parent,
                prev: *prev,
            },
            Op::SetAttr { node, name, value } => PatchOp::SetAttr {
                node: *node,
                name: enc.encode(name, StrClass::Name),
                value: enc.encode(value, StrClass::Value),
            },
            Op::RemoveAttr { node, name } => PatchOp::RemoveAttr {
                node: *node,
                name: enc.encode(name, StrClass::Name),
            },
            Op::SetText { node, text } => PatchOp::SetText {
                node: *node,
                text: enc.encode(text, StrClass::Text),
            },
        }
    }
}

/// Applies one wire operation to `dom`, resolving strings with `dec` (spec §6.5).
pub fn apply(dom: &mut Dom, op: PatchOp, dec: &mut SymDecoder) -> Result<(), EngineError> {
    match op {
        PatchOp::Insert {
            parent,
            prev,
            nodes,
        } => {
            if dom.node(parent).is_none() {
                return Err(EngineError::NoSuchNode {
                    field: "patch.insert.parent",
                    id: parent,
                });
            }
            if prev != 0 && dom.parent(prev) != Some(parent) {
                return Err(EngineError::NotAChild {
                    field: "patch.insert.prev",
                    parent,
                    prev,
                });
            }
            let mut builder = TreeBuilder::new(parent, prev);
            for rec in nodes {
                if matches!(rec, NodeRecord::Doctype { .. })
                    && parent != tandem_protocol::DOCUMENT_ID
                {
                    return Err(EngineError::WrongKind {
                        field: "patch.insert.nodes",
                        id: parent,
                    });
                }
                builder.add(dom, rec, dec, "patch.insert.nodes")?;
            }
            builder.finish("patch.insert.nodes")
        }
        PatchOp::Remove { node } => dom.remove(node),
        PatchOp::Move { node, parent, prev } => dom.move_node(node, parent, prev),
        PatchOp::SetAttr { node, name, value } => {
            let name = dec.resolve(name, "patch.set_attr.name")?;
            let value = dec.resolve(value, "patch.set_attr.value")?;
            dom.set_attr(node, &name, &value)
        }
        PatchOp::RemoveAttr { node, name } => {
            let name = dec.resolve(name, "patch.remove_attr.name")?;
            dom.remove_attr(node, &name)
        }
        PatchOp::SetText { node, text } => {
            let text = dec.resolve(text, "patch.set_text.text")?;
            dom.set_text(node, &text)
        }
        PatchOp::EditText { node, edits } => {
            let t = dom.text_mut(node, "patch.edit_text.node")?;
            let edited = edit_text(t, &edits).ok_or(EngineError::BadEdit {
                field: "patch.edit_text.edits",
                id: node,
            })?;
            *t = edited;
            Ok(())
        }
    }
}

/// Applies text edits (spec §6.5); `None` when an edit runs past the text or splits a character.
pub fn edit_text(old: &str, edits: &[TextEdit]) -> Option<String> {
    let mut out = String::with_capacity(old.len());
    let mut at = 0usize;
    for e in edits {
        let keep_end = at.checked_add(e.keep as usize)?;
        let del_end = keep_end.checked_add(e.delete as usize)?;
        if !old.is_char_boundary(keep_end) || !old.is_char_boundary(del_end) || del_end > old.len()
        {
            return None;
        }
        out.push_str(&old[at..keep_end]);
        out.push_str(&e.insert);
        at = del_end;
    }
    out.push_str(&old[at..]);
    Some(out)
}

/// The records of a subtree of `dom` with their child counts, for an [`Op::Insert`].
pub fn subtree(dom: &Dom, root: NodeId) -> Vec<(NodeKind, u32)> {
    dom.preorder(root)
        .filter_map(|id| {
            dom.node(id)
                .map(|n| (n.kind.clone(), n.children().len() as u32))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_edits() {
        let e = |keep, delete, insert: &str| TextEdit {
            keep,
            delete,
            insert: insert.into(),
        };
        assert_eq!(
            edit_text("hello world", &[e(6, 5, "there")]).as_deref(),
            Some("hello there")
        );
        assert_eq!(
            edit_text("abc", &[e(0, 0, "x"), e(1, 1, "")]).as_deref(),
            Some("xac")
        );
        assert_eq!(edit_text("abc", &[e(2, 2, "")]), None, "past the end");
        assert_eq!(edit_text("é", &[e(1, 0, "")]), None, "inside a character");
        assert_eq!(
            edit_text("abc", &[e(u32::MAX, u32::MAX, "")]),
            None,
            "overflow"
        );
    }
}
