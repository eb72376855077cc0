//! Tree diff, first cut: brings the consumer's tree to the content of another tree that shares
//! no ids with it (two parses of the same page at two moments).
//!
//! Top-down: subtrees with equal Merkle hashes are skipped; the children of two matching nodes
//! are aligned with a Myers diff over their hashes (`similar`), and aligned pairs of the same
//! kind and tag are updated in place and descended into; the rest are removed or inserted.

use similar::{Algorithm, DiffTag, capture_diff_slices};
use tandem_protocol::{DOCUMENT_ID, NodeId};

use crate::dom::{Dom, NodeKind};
use crate::{Consumer, EngineError};

fn compatible(a: &NodeKind, b: &NodeKind) -> bool {
    match (a, b) {
        (NodeKind::Element(x), NodeKind::Element(y)) => x.ns == y.ns && x.name == y.name,
        (NodeKind::Text(_), NodeKind::Text(_)) | (NodeKind::Comment(_), NodeKind::Comment(_)) => {
            true
        }
        (NodeKind::Doctype { .. }, NodeKind::Doctype { .. }) => a == b,
        (NodeKind::Document, NodeKind::Document) => true,
        _ => false,
    }
}

/// Records on `c` the changes that turn its tree into `target`'s content.
pub fn update(c: &mut Consumer, target: &mut Dom) -> Result<(), EngineError> {
    target.root_hash();
    c.dom_mut().root_hash();
    let mut work: Vec<(NodeId, NodeId)> = vec![(DOCUMENT_ID, DOCUMENT_ID)];
    while let Some((a, b)) = work.pop() {
        if c.dom().cached_hash(a) == target.cached_hash(b) {
            continue;
        }
        sync_node(c, a, target, b)?;
        let a_kids = c.dom().children(a).to_vec();
        let b_kids = target.children(b).to_vec();
        let key = |d: &Dom, ids: &[NodeId]| {
            ids.iter()
                .map(|&i| d.cached_hash(i).unwrap_or_default())
                .collect::<Vec<_>>()
        };
        let (ak, bk) = (key(c.dom(), &a_kids), key(target, &b_kids));
        let mut prev: NodeId = 0;
        for op in capture_diff_slices(Algorithm::Myers, &ak, &bk) {
            let (tag, old, new) = op.as_tag_tuple();
            match tag {
                DiffTag::Equal => prev = a_kids[old.end - 1],
                DiffTag::Delete => {
                    for &x in &a_kids[old] {
                        c.remove(x)?;
                    }
                }
                DiffTag::Insert => {
                    for &y in &b_kids[new] {
                        prev = c.insert_copy(a, prev, target, y)?;
                    }
                }
                DiffTag::Replace => {
                    let (olds, news) = (&a_kids[old], &b_kids[new]);
                    for i in 0..olds.len().max(news.len()) {
                        match (olds.get(i), news.get(i)) {
                            (Some(&x), Some(&y)) => {
                                let same = match (c.dom().node(x), target.node(y)) {
                                    (Some(nx), Some(ny)) => compatible(&nx.kind, &ny.kind),
                                    _ => false,
                                };
                                if same {
                                    work.push((x, y));
                                    prev = x;
                                } else {
                                    c.remove(x)?;
                                    prev = c.insert_copy(a, prev, target, y)?;
                                }
                            }
                            (Some(&x), None) => c.remove(x)?,
                            (None, Some(&y)) => prev = c.insert_copy(a, prev, target, y)?,
                            (None, None) => {}
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn sync_node(c: &mut Consumer, a: NodeId, target: &Dom, b: NodeId) -> Result<(), EngineError> {
    let Some(bn) = target.node(b) else {
        return Ok(());
    };
    match &bn.kind {
        NodeKind::Text(t) | NodeKind::Comment(t) => c.set_text(a, t),
        NodeKind::Element(want) => {
            let have = match c.dom().node(a).and_then(|n| n.element()) {
                Some(e) if e.attrs == want.attrs => return Ok(()),
                Some(e) => e.attrs.clone(),
                None => return Ok(()),
            };
            for (n, _) in &have {
                if want.attr(n).is_none() {
                    c.remove_attr(a, n)?;
                }
            }
            for (n, v) in &want.attrs {
                c.set_attr(a, n, v)?;
            }
            let order_ok = c
                .dom()
                .node(a)
                .and_then(|n| n.element())
                .is_some_and(|e| e.attrs == want.attrs);
            if !order_ok {
                // Same set, other order: the hash covers order, so rebuild the list.
                for (n, _) in &want.attrs {
                    c.remove_attr(a, n)?;
                }
                for (n, v) in &want.attrs {
                    c.set_attr(a, n, v)?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
