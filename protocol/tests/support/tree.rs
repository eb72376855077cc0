//! A small reference model of the document tree of spec §6: preorder listings, patch operations
//! and the tree hash of spec §6.3, written from the spec text alone. The vector generator uses
//! it to put real hashes into `spec/vectors/`, and the vector test replays the DOM stream vectors
//! through it, so a hash in the vectors is checked against an implementation of the spec.
//!
//! It favours clarity over speed (recursive hashing, linear searches): it only ever sees the
//! small documents of the vectors.

#![allow(dead_code)]

use tandem_protocol::{
    Limits, NodeId, NodeRecord, PatchCheck, PatchOp, Place, Sym, SymDecoder, TreeHash,
};

/// What a node is, with its strings resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// The document node (id 0).
    Document,
    /// An element: namespace byte, tag name, attributes in order.
    Element {
        ns: u8,
        name: String,
        attrs: Vec<(String, String)>,
    },
    /// A text node.
    Text(String),
    /// A comment.
    Comment(String),
    /// A doctype: name, public id, system id.
    Doctype(String, String, String),
}

#[derive(Debug, Clone)]
struct Node {
    kind: Kind,
    parent: Option<NodeId>,
    children: Vec<NodeId>,
}

/// One epoch of a DOM stream: the tree and the dynamic string table (spec §5.3).
#[derive(Debug)]
pub struct Tree {
    /// Index = node id; `None` once removed (ids are never reused, spec §6.1).
    nodes: Vec<Option<Node>>,
    strings: SymDecoder,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// A new epoch: only the document node, an empty dynamic table.
    pub fn new() -> Self {
        Tree {
            nodes: vec![Some(Node {
                kind: Kind::Document,
                parent: None,
                children: Vec::new(),
            })],
            strings: SymDecoder::new(Limits::DEFAULT),
        }
    }

    /// The id the next created node takes.
    pub fn next_id(&self) -> NodeId {
        self.nodes.len() as NodeId
    }

    fn node(&self, id: NodeId) -> Result<&Node, String> {
        self.nodes
            .get(id as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("no node {id}"))
    }

    fn node_mut(&mut self, id: NodeId) -> Result<&mut Node, String> {
        self.nodes
            .get_mut(id as usize)
            .and_then(Option::as_mut)
            .ok_or_else(|| format!("no node {id}"))
    }

    fn sym(&mut self, s: &Sym) -> Result<String, String> {
        self.strings
            .resolve(s.clone(), "vector")
            .map_err(|e| e.to_string())
    }

    /// Resolves a record's strings in the order they appear on the wire.
    fn resolve(&mut self, rec: &NodeRecord) -> Result<(Kind, u32), String> {
        Ok(match rec {
            NodeRecord::Element {
                ns,
                name,
                attrs,
                children,
            } => {
                let ns = u32::from(*ns);
                if ns > 2 {
                    return Err(format!("unknown namespace {ns}"));
                }
                let name = self.sym(name)?;
                let mut list = Vec::new();
                for a in attrs {
                    let n = self.sym(&a.name)?;
                    let v = self.sym(&a.value)?;
                    list.push((n, v));
                }
                (
                    Kind::Element {
                        ns: ns as u8,
                        name,
                        attrs: list,
                    },
                    *children,
                )
            }
            NodeRecord::Text { text } => (Kind::Text(self.sym(text)?), 0),
            NodeRecord::Comment { text } => (Kind::Comment(self.sym(text)?), 0),
            NodeRecord::Doctype {
                name,
                public_id,
                system_id,
            } => {
                let n = self.sym(name)?;
                let p = self.sym(public_id)?;
                let s = self.sym(system_id)?;
                (Kind::Doctype(n, p, s), 0)
            }
        })
    }

    fn position(&self, parent: NodeId, prev: NodeId) -> Result<usize, String> {
        if prev == 0 {
            return Ok(0);
        }
        self.node(parent)?
            .children
            .iter()
            .position(|&c| c == prev)
            .map(|i| i + 1)
            .ok_or_else(|| format!("{prev} is not a child of {parent}"))
    }

    fn attach(&mut self, id: NodeId, parent: NodeId, prev: NodeId) -> Result<(), String> {
        let child_kind = self.node(id)?.kind.clone();
        let ok = match (&self.node(parent)?.kind, child_kind) {
            (Kind::Document, Kind::Text(_)) => false,
            (Kind::Document, _) => true,
            (Kind::Element { .. }, Kind::Doctype(..)) => false,
            (Kind::Element { .. }, _) => true,
            _ => false,
        };
        if !ok {
            return Err(format!("node {parent} cannot hold node {id}"));
        }
        let at = self.position(parent, prev)?;
        self.node_mut(parent)?.children.insert(at, id);
        self.node_mut(id)?.parent = Some(parent);
        Ok(())
    }

    fn detach(&mut self, id: NodeId) -> Result<(), String> {
        if id == 0 {
            return Err("the document node cannot be moved or removed".into());
        }
        let parent = self.node(id)?.parent.ok_or("detached node")?;
        self.node_mut(parent)?.children.retain(|&c| c != id);
        self.node_mut(id)?.parent = None;
        Ok(())
    }

    /// Adds a preorder listing of sibling subtrees under `parent` after `prev`; the new nodes
    /// take the next ids in preorder (spec §6.1, §6.2).
    pub fn insert(
        &mut self,
        parent: NodeId,
        prev: NodeId,
        first: NodeId,
        records: &[NodeRecord],
    ) -> Result<(), String> {
        self.node(parent)?;
        let mut open: Vec<(NodeId, u32)> = Vec::new();
        let mut after = prev;
        for (k, rec) in records.iter().enumerate() {
            let (kind, children) = self.resolve(rec)?;
            if children > 0 && !matches!(kind, Kind::Element { .. }) {
                return Err("only elements have children".into());
            }
            let id = first + k as NodeId;
            let slot = usize::try_from(id).map_err(|_| "id out of range")?;
            if slot == 0 || self.nodes.get(slot).is_some_and(Option::is_some) {
                return Err("id already in use".into());
            }
            if self.nodes.len() <= slot {
                self.nodes.resize_with(slot + 1, || None);
            }
            self.nodes[slot] = Some(Node {
                kind,
                parent: None,
                children: Vec::new(),
            });
            match open.last_mut() {
                Some((p, left)) => {
                    let p = *p;
                    *left -= 1;
                    let last = self.node(p)?.children.last().copied().unwrap_or(0);
                    self.attach(id, p, last)?;
                }
                None => {
                    self.attach(id, parent, after)?;
                    after = id;
                }
            }
            if children > 0 {
                open.push((id, children));
            }
            while matches!(open.last(), Some((_, 0))) {
                open.pop();
            }
        }
        if open.is_empty() {
            Ok(())
        } else {
            Err("the listing ends inside an element".into())
        }
    }

    /// Detaches `node` and puts it at `at` (the `Move` of spec §6.5).
    fn move_to(&mut self, node: NodeId, at: Place) -> Result<(), String> {
        let (parent, prev) = self.place(at)?;
        let mut up = Some(parent);
        while let Some(a) = up {
            if a == node {
                return Err("move into its own subtree".into());
            }
            up = self.node(a)?.parent;
        }
        self.detach(node)?;
        self.attach(node, parent, prev)
    }

    /// Applies one patch operation (spec §6.5).
    pub fn apply(&mut self, op: &PatchOp) -> Result<(), String> {
        match op {
            PatchOp::Insert { at, first, nodes } => {
                let (parent, prev) = self.place(*at)?;
                self.insert(parent, prev, *first, nodes)
            }
            PatchOp::Remove { node } => {
                self.detach(*node)?;
                let mut stack = vec![*node];
                while let Some(n) = stack.pop() {
                    let gone = self.nodes[n as usize].take().ok_or("removed twice")?;
                    stack.extend(gone.children);
                }
                Ok(())
            }
            PatchOp::Move { node, at } => self.move_to(*node, *at),
            PatchOp::MoveRun { at, nodes } => {
                let mut at = *at;
                for &node in &nodes.0 {
                    self.move_to(node, at)?;
                    at = Place::After(node);
                }
                Ok(())
            }
            PatchOp::SetAttr { node, name, value } => {
                let name = self.sym(name)?;
                let value = self.sym(value)?;
                let Kind::Element { attrs, .. } = &mut self.node_mut(*node)?.kind else {
                    return Err("set_attr on a non-element".into());
                };
                match attrs.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, v)) => *v = value,
                    None => attrs.push((name, value)),
                }
                Ok(())
            }
            PatchOp::RemoveAttr { node, name } => {
                let name = self.sym(name)?;
                let Kind::Element { attrs, .. } = &mut self.node_mut(*node)?.kind else {
                    return Err("remove_attr on a non-element".into());
                };
                attrs.retain(|(n, _)| *n != name);
                Ok(())
            }
            PatchOp::SetText { node, text } => {
                let text = self.sym(text)?;
                match &mut self.node_mut(*node)?.kind {
                    Kind::Text(t) | Kind::Comment(t) => *t = text,
                    _ => return Err("set_text on a non-text node".into()),
                }
                Ok(())
            }
            PatchOp::EditText { node, edits } => {
                let (Kind::Text(old) | Kind::Comment(old)) = &mut self.node_mut(*node)?.kind else {
                    return Err("edit_text on a non-text node".into());
                };
                let mut out = String::new();
                let mut pos = 0usize;
                for e in edits {
                    let keep_end = pos + e.keep as usize;
                    out.push_str(old.get(pos..keep_end).ok_or("keep out of range")?);
                    let del_end = keep_end + e.delete as usize;
                    old.get(keep_end..del_end).ok_or("delete out of range")?;
                    out.push_str(&e.insert);
                    pos = del_end;
                }
                out.push_str(old.get(pos..).ok_or("edit past the end")?);
                *old = out;
                Ok(())
            }
        }
    }

    /// The canonical bytes of a text, comment or doctype (spec §6.3), which stand inline in
    /// their parent's hash input; `None` for the document and elements, which are hashed.
    fn leaf_bytes(kind: &Kind, out: &mut Vec<u8>) -> bool {
        match kind {
            Kind::Text(t) => {
                out.push(0x02);
                string(out, t);
            }
            Kind::Comment(t) => {
                out.push(0x03);
                string(out, t);
            }
            Kind::Doctype(n, p, s) => {
                out.push(0x04);
                string(out, n);
                string(out, p);
                string(out, s);
            }
            Kind::Document | Kind::Element { .. } => return false,
        }
        true
    }

    /// The blake3 input of the document or element `id` (spec §6.3): its header, the child
    /// count, then per child `01` and the element's hash, or the leaf's canonical bytes.
    pub fn hash_input(&self, id: NodeId) -> Vec<u8> {
        let node = self.node(id).expect("hash of a live node");
        let mut input = Vec::new();
        match &node.kind {
            Kind::Document => input.push(0x00),
            Kind::Element { ns, name, attrs } => {
                input.push(0x01);
                input.push(*ns);
                string(&mut input, name);
                varint(&mut input, attrs.len() as u64);
                for (n, v) in attrs {
                    string(&mut input, n);
                    string(&mut input, v);
                }
            }
            _ => panic!("only the document and elements have a hash (spec §6.3)"),
        }
        varint(&mut input, node.children.len() as u64);
        for &c in &node.children {
            let child = self.node(c).expect("children are live");
            if !Self::leaf_bytes(&child.kind, &mut input) {
                input.push(0x01);
                input.extend_from_slice(&self.node_hash(c));
            }
        }
        input
    }

    /// The 32-byte hash of the document or element `id` (spec §6.3).
    pub fn node_hash(&self, id: NodeId) -> [u8; 32] {
        *blake3::hash(&self.hash_input(id)).as_bytes()
    }

    /// The 16-byte tree hash that `SNAPSHOT` and `ACK` carry (spec §6.3).
    pub fn tree_hash(&self) -> TreeHash {
        let mut out = [0; 16];
        out.copy_from_slice(&self.node_hash(0)[..16]);
        out
    }

    /// The 8-byte check that `PATCH` carries (spec §6.3).
    pub fn patch_check(&self) -> PatchCheck {
        let mut out = [0; 8];
        out.copy_from_slice(&self.node_hash(0)[..8]);
        out
    }

    /// The parent and previous sibling (0 for none) that a place names (spec §6.5).
    fn place(&self, at: Place) -> Result<(NodeId, NodeId), String> {
        match at {
            Place::First(parent) => Ok((parent, 0)),
            Place::After(prev) => match self.node(prev)?.parent {
                Some(parent) if prev != 0 => Ok((parent, prev)),
                _ => Err(format!("place after {prev}, which has no parent")),
            },
        }
    }

    /// The tree as indented text, for failure messages and descriptions.
    pub fn outline(&self) -> String {
        let mut out = String::new();
        let mut stack: Vec<(NodeId, usize)> = self
            .node(0)
            .map(|n| n.children.iter().rev().map(|&c| (c, 0)).collect())
            .unwrap_or_default();
        while let Some((id, depth)) = stack.pop() {
            let node = self.node(id).expect("listed nodes are live");
            let line = match &node.kind {
                Kind::Element { ns, name, attrs } => {
                    let ns = ["", "svg:", "math:"][*ns as usize];
                    let a: String = attrs.iter().map(|(n, v)| format!(" {n}={v:?}")).collect();
                    format!("<{ns}{name}{a}>")
                }
                Kind::Text(t) => format!("text {t:?}"),
                Kind::Comment(t) => format!("comment {t:?}"),
                Kind::Doctype(n, p, s) => format!("doctype {n:?} {p:?} {s:?}"),
                Kind::Document => "document".into(),
            };
            out.push_str(&format!("{}#{id} {line}\n", "  ".repeat(depth)));
            stack.extend(node.children.iter().rev().map(|&c| (c, depth + 1)));
        }
        out
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}
