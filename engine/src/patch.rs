//! Patch operations (spec §6.5): the engine-level form with resolved strings, its encoding
//! against the session's string tables, and application of both forms to a tree.

use tandem_protocol::{
    DOCUMENT_ID, NodeId, NodeRecord, NodeRun, PatchOp, Place, StrClass, SymDecoder, SymEncoder,
    TextEdit,
};

use crate::dom::{Dom, NodeKind};
use crate::snapshot::TreeBuilder;
use crate::{EngineError, snapshot};

/// A patch operation with its strings resolved: what the consumer computes before the strings
/// are encoded against the session's tables, and what it applies to its copy of the agent's
/// tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// New subtrees in preorder (kind, child count) under `parent` after `prev`, taking ids
    /// from `first`.
    Insert {
        /// The parent.
        parent: NodeId,
        /// The preceding sibling, or 0.
        prev: NodeId,
        /// The first new node's id.
        first: NodeId,
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
    /// Edit a text.
    EditText {
        /// The text or comment node.
        node: NodeId,
        /// The edits.
        edits: Vec<TextEdit>,
    },
}

impl Op {
    /// Encodes the operation against the session's string tables.
    pub fn encode(&self, enc: &mut SymEncoder) -> PatchOp {
        match self {
            Op::Insert {
                parent,
                prev,
                first,
                nodes,
            } => PatchOp::Insert {
                at: Place::new(*parent, *prev),
                first: *first,
                nodes: nodes
                    .iter()
                    .map(|(k, c)| snapshot::record(k, *c as usize, enc))
                    .collect(),
            },
            Op::Remove { node } => PatchOp::Remove { node: *node },
            Op::Move { node, parent, prev } => PatchOp::Move {
                node: *node,
                at: Place::new(*parent, *prev),
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
            Op::EditText { node, edits } => PatchOp::EditText {
                node: *node,
                edits: edits.clone(),
            },
        }
    }

    /// Applies the operation to `dom` (spec §6.5).
    pub fn apply(&self, dom: &mut Dom) -> Result<(), EngineError> {
        match self {
            Op::Insert {
                parent,
                prev,
                first,
                nodes,
            } => {
                let mut b = insert_builder(dom, *parent, *prev, *first)?;
                for (kind, children) in nodes {
                    if matches!(kind, NodeKind::Doctype { .. }) && *parent != DOCUMENT_ID {
                        return Err(EngineError::WrongKind {
                            field: "insert.nodes",
                            id: *parent,
                        });
                    }
                    b.add_kind(dom, kind.clone(), *children)?;
                }
                b.finish(dom, "insert.nodes")
            }
            Op::Remove { node } => dom.remove(*node),
            Op::Move { node, parent, prev } => dom.move_node(*node, *parent, *prev),
            Op::SetAttr { node, name, value } => dom.set_attr(*node, name, value),
            Op::RemoveAttr { node, name } => dom.remove_attr(*node, name),
            Op::SetText { node, text } => dom.set_text(*node, text),
            Op::EditText { node, edits } => edit(dom, *node, edits),
        }
    }
}

fn insert_builder(
    dom: &Dom,
    parent: NodeId,
    prev: NodeId,
    first: NodeId,
) -> Result<TreeBuilder, EngineError> {
    if !dom.contains(parent) {
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
    Ok(TreeBuilder::new(parent, prev, first))
}

/// The parent and previous sibling (0 for none) that a wire place names in `dom`.
fn resolve(dom: &Dom, at: Place, field: &'static str) -> Result<(NodeId, NodeId), EngineError> {
    match at {
        Place::First(parent) => Ok((parent, DOCUMENT_ID)),
        Place::After(prev) => match dom.parent(prev) {
            Some(parent) if prev != DOCUMENT_ID => Ok((parent, prev)),
            _ => Err(EngineError::NoSuchNode { field, id: prev }),
        },
    }
}

fn edit(dom: &mut Dom, node: NodeId, edits: &[TextEdit]) -> Result<(), EngineError> {
    let t = dom.text_mut(node, "patch.edit_text.node")?;
    let edited = edit_text(t, edits).ok_or(EngineError::BadEdit {
        field: "patch.edit_text.edits",
        id: node,
    })?;
    *t = edited;
    Ok(())
}

/// Applies one wire operation to `dom`, resolving strings with `dec` (spec §6.5).
pub fn apply(dom: &mut Dom, op: PatchOp, dec: &mut SymDecoder) -> Result<(), EngineError> {
    match op {
        PatchOp::Insert { at, first, nodes } => {
            let (parent, prev) = resolve(dom, at, "patch.insert.at")?;
            let mut b = insert_builder(dom, parent, prev, first)?;
            for rec in nodes {
                if matches!(rec, NodeRecord::Doctype { .. }) && parent != DOCUMENT_ID {
                    return Err(EngineError::WrongKind {
                        field: "patch.insert.nodes",
                        id: parent,
                    });
                }
                b.add(dom, rec, dec, "patch.insert.nodes")?;
            }
            b.finish(dom, "patch.insert.nodes")
        }
        PatchOp::Remove { node } => dom.remove(node),
        PatchOp::Move { node, at } => {
            let (parent, prev) = resolve(dom, at, "patch.move.at")?;
            dom.move_node(node, parent, prev)
        }
        PatchOp::MoveRun { at, nodes } => {
            let mut at = at;
            for node in nodes.0 {
                let (parent, prev) = resolve(dom, at, "patch.move_run.at")?;
                dom.move_node(node, parent, prev)?;
                at = Place::After(node);
            }
            Ok(())
        }
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
        PatchOp::EditText { node, edits } => edit(dom, node, &edits),
    }
}

/// Folds each chain of `Move`s in which a node goes right after the node moved just before it
/// into one [`PatchOp::MoveRun`] (spec §6.5): the same moves, with the places implied and the
/// ids as differences. A chain of one stays a `Move`, which is a byte shorter. A run holds at
/// most `max_run` nodes (the receiver's `max_list`, spec §8); a longer chain takes several.
pub fn fold_moves(ops: Vec<PatchOp>, max_run: usize) -> Vec<PatchOp> {
    let mut out: Vec<PatchOp> = Vec::with_capacity(ops.len());
    for op in ops {
        if let PatchOp::Move {
            node,
            at: Place::After(prev),
        } = op
        {
            match out.last_mut() {
                Some(PatchOp::MoveRun { nodes, .. })
                    if nodes.0.last() == Some(&prev) && nodes.0.len() < max_run =>
                {
                    nodes.0.push(node);
                    continue;
                }
                Some(last) => {
                    if let PatchOp::Move { node: first, at } = *last
                        && first == prev
                        && max_run >= 2
                    {
                        *last = PatchOp::MoveRun {
                            at,
                            nodes: NodeRun(vec![first, node]),
                        };
                        continue;
                    }
                }
                None => {}
            }
        }
        out.push(op);
    }
    out
}

/// Applies text edits (spec §6.5); `None` when an edit runs past the text or splits a character.
pub fn edit_text(old: &str, edits: &[TextEdit]) -> Option<String> {
    let mut out = String::with_capacity(old.len());
    let mut at = 0usize;
    for e in edits {
        let keep_end = at.checked_add(e.keep as usize)?;
        let del_end = keep_end.checked_add(e.delete as usize)?;
        if del_end > old.len() || !old.is_char_boundary(keep_end) || !old.is_char_boundary(del_end)
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

/// The single edit that turns `old` into `new` (common prefix and suffix kept), when sending
/// it is shorter than sending `new` whole; `None` otherwise.
pub fn text_edit(old: &str, new: &str) -> Option<TextEdit> {
    // Short texts travel whole: an edit's fixed cost would eat the saving.
    if new.len() < 24 {
        return None;
    }
    let (a, b) = (old.as_bytes(), new.as_bytes());
    let mut pre = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    while !old.is_char_boundary(pre) || !new.is_char_boundary(pre) {
        pre -= 1;
    }
    let max_suf = a.len().min(b.len()) - pre;
    let mut suf = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take(max_suf)
        .take_while(|(x, y)| x == y)
        .count();
    while !old.is_char_boundary(a.len() - suf) || !new.is_char_boundary(b.len() - suf) {
        suf -= 1;
    }
    let insert = &new[pre..b.len() - suf];
    let edit = TextEdit {
        keep: u32::try_from(pre).ok()?,
        delete: u32::try_from(a.len() - suf - pre).ok()?,
        insert: insert.to_owned(),
    };
    // An edit costs its three fields; a SetText costs the new text and a length.
    (insert.len() + 12 < new.len()).then_some(edit)
}

/// The records of a subtree of `dom` with their child counts.
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

    /// `body`'s children of `<ul><li>a<li>b<li>c</ul><ol></ol>`: the ul, its three items, the ol.
    fn list_page() -> (Dom, NodeId, [NodeId; 3], NodeId) {
        let dom = crate::parse_html(
            "<body><ul><li>a</li><li>b</li><li>c</li></ul><ol></ol></body>",
            tandem_protocol::Limits::DEFAULT,
        );
        let html = dom.children(DOCUMENT_ID)[0];
        let body = dom.children(html)[1];
        let (ul, ol) = (dom.children(body)[0], dom.children(body)[1]);
        let li = [
            dom.children(ul)[0],
            dom.children(ul)[1],
            dom.children(ul)[2],
        ];
        (dom, ul, li, ol)
    }

    fn apply_all(dom: &mut Dom, ops: Vec<PatchOp>) -> Result<(), EngineError> {
        let mut dec = SymDecoder::new(tandem_protocol::Limits::DEFAULT);
        ops.into_iter().try_for_each(|op| apply(dom, op, &mut dec))
    }

    #[test]
    fn chained_moves_fold_into_runs_that_apply_the_same() {
        let (dom, ul, [a, b, c], ol) = list_page();
        let moves = vec![
            PatchOp::Move {
                node: c,
                at: Place::First(ol),
            },
            PatchOp::Move {
                node: a,
                at: Place::After(c),
            },
            PatchOp::Move {
                node: b,
                at: Place::After(a),
            },
            // Not a continuation: placed after c, not after b.
            PatchOp::Move {
                node: b,
                at: Place::After(c),
            },
            PatchOp::Remove { node: ul },
            PatchOp::Move {
                node: a,
                at: Place::First(ol),
            },
        ];
        let folded = fold_moves(moves.clone(), usize::MAX);
        // Runs of at most two: the chain of three takes a run and a move.
        assert_eq!(
            fold_moves(moves[..3].to_vec(), 2),
            vec![
                PatchOp::MoveRun {
                    at: Place::First(ol),
                    nodes: NodeRun(vec![c, a])
                },
                moves[2].clone(),
            ]
        );
        assert_eq!(
            folded,
            vec![
                PatchOp::MoveRun {
                    at: Place::First(ol),
                    nodes: NodeRun(vec![c, a, b])
                },
                PatchOp::Move {
                    node: b,
                    at: Place::After(c)
                },
                PatchOp::Remove { node: ul },
                PatchOp::Move {
                    node: a,
                    at: Place::First(ol)
                },
            ]
        );
        let (mut one, mut other) = (dom.clone(), dom);
        apply_all(&mut one, moves).unwrap();
        apply_all(&mut other, folded).unwrap();
        assert_eq!(one.children(ol), other.children(ol));
        assert_eq!(one.children(ol), &[a, c, b]);
        assert_eq!(one.root_hash(), other.root_hash());
    }

    #[test]
    fn a_bad_move_inside_a_run_is_an_error() {
        let (mut dom, ul, [a, _, _], ol) = list_page();
        // The second move puts `a` right after itself.
        let run = PatchOp::MoveRun {
            at: Place::First(ol),
            nodes: NodeRun(vec![a, a]),
        };
        assert!(apply_all(&mut dom, vec![run]).is_err());
        // A run may not carry a node into its own subtree.
        let (mut dom, _, [_, b, _], _) = list_page();
        let into_itself = PatchOp::MoveRun {
            at: Place::First(b),
            nodes: NodeRun(vec![ul]),
        };
        assert!(apply_all(&mut dom, vec![into_itself]).is_err());
    }

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

    #[test]
    fn computed_edits_round_trip() {
        let cases = [
            (
                "The quick brown fox jumps over the lazy dog",
                "The quick red fox jumps over the lazy dog",
            ),
            (
                "Order NW-48213 is being prepared for shipping",
                "Order NW-48213 is shipped today for shipping",
            ),
            (
                "naïve café crème brûlée, très bien servie ici",
                "naïve café crème brulée, très bien servie ici",
            ),
            (
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            ),
        ];
        for (old, new) in cases {
            let e = text_edit(old, new).expect("an edit is shorter");
            assert_eq!(edit_text(old, &[e]).as_deref(), Some(new), "{old} -> {new}");
        }
        assert_eq!(text_edit("short", "other"), None);
        assert_eq!(
            text_edit(
                "completely different text here",
                "nothing alike at all in this one"
            ),
            None
        );
    }
}
