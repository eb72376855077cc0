//! The arena DOM (spec §6): nodes in a vector indexed by their consumer-assigned id; each element
//! (and the document) caches its Merkle hash (spec §6.3), recomputed only along dirty paths.

use std::borrow::Cow;

use tandem_protocol::{DOCUMENT_ID, Limits, NodeId, Ns};

use crate::EngineError;
use crate::wide::{self, WideHash};

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// The document node (always id 0).
    Document,
    /// An element.
    Element(Element),
    /// A text node.
    Text(String),
    /// A comment.
    Comment(String),
    /// A document type declaration.
    Doctype {
        /// `html` for HTML5.
        name: String,
        /// Public identifier.
        public_id: String,
        /// System identifier.
        system_id: String,
    },
}

impl NodeKind {
    /// Whether this is a text, comment or doctype: a node without children and without a hash
    /// of its own, whose canonical bytes stand inline in its parent's hash input (spec §6.3).
    #[inline]
    pub fn is_leaf(&self) -> bool {
        matches!(
            self,
            NodeKind::Text(_) | NodeKind::Comment(_) | NodeKind::Doctype { .. }
        )
    }
}

/// An element or attribute name. Names are few and repeat, and most are entries of the static
/// string table (spec §5.2): a tree built from a snapshot borrows those from the table instead
/// of allocating a copy per element. Any other name is owned. `Name::from("div")` borrows,
/// `Name::from(string)` owns; either compares and reads as a `str`.
pub type Name = Cow<'static, str>;

/// `s` as a [`Name`]: borrowed when it is an entry of the static string table, owned otherwise.
pub fn name(s: &str) -> Name {
    match tandem_protocol::strings::static_index(s) {
        Some(i) => Name::Borrowed(tandem_protocol::STATIC_TABLE[i as usize]),
        None => Name::Owned(s.to_owned()),
    }
}

/// An element's name and attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Namespace.
    pub ns: Ns,
    /// Local name (lower case for HTML elements).
    pub name: Name,
    /// Attributes in order, as (qualified name, value).
    pub attrs: Vec<(Name, String)>,
}

impl Element {
    /// The value of attribute `name`, if set.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One node of the arena.
#[derive(Debug, Clone)]
pub struct Node {
    /// What the node is.
    pub kind: NodeKind,
    parent: Option<NodeId>,
    children: Vec<NodeId>,
    /// The Merkle hash of a document or element; unused for leaves (spec §6.3).
    hash: [u8; 32],
    /// Whether `hash` is stale. Leaves are never dirty: a change to one dirties its parent.
    dirty: bool,
    /// Whether this text is a blob reference the consumer wrote in place of the page's text
    /// (spec §14.3), rather than the page's own text; any other change to the text clears it.
    converted: bool,
    /// The blake3 tree of the hash input, kept when that input is large (a wide node), so that
    /// a change among a few children rehashes only the part of the input they stand in.
    wide: Option<Box<WideHash>>,
}

/// Most child slots reserved ahead for a node from a count a peer announced: enough for most
/// elements at once, and no more memory than a few records would take anyway.
const MAX_CHILDREN_AHEAD: u32 = 64;

impl Node {
    fn new(kind: NodeKind) -> Self {
        Self::with_children(kind, 0)
    }

    /// A node with room for `children` children (at most [`MAX_CHILDREN_AHEAD`]).
    fn with_children(kind: NodeKind, children: u32) -> Self {
        Node {
            dirty: !kind.is_leaf(),
            kind,
            parent: None,
            children: Vec::with_capacity(children.min(MAX_CHILDREN_AHEAD) as usize),
            hash: [0; 32],
            converted: false,
            wide: None,
        }
    }

    /// The parent's id, if attached.
    pub fn parent(&self) -> Option<NodeId> {
        self.parent
    }

    /// The children's ids in order.
    pub fn children(&self) -> &[NodeId] {
        &self.children
    }

    /// The element data, if this is an element.
    pub fn element(&self) -> Option<&Element> {
        match &self.kind {
            NodeKind::Element(e) => Some(e),
            _ => None,
        }
    }
}

/// Marks an id with no slot in [`Dom`]'s index.
const NO_SLOT: u32 = u32::MAX;

/// Nodes per chunk of [`Slots`], as a power of two (512 nodes, about 80 KB).
const CHUNK_BITS: u32 = 9;
const CHUNK: usize = 1 << CHUNK_BITS;

/// The node slots of a [`Dom`], in chunks of [`CHUNK`] that never move once full.
///
/// A tree built from a snapshot grows by tens of thousands of nodes; in one vector every
/// doubling would copy all the nodes so far (a tenth of the build time on a large page). Here
/// only the first chunk grows by doubling, from nothing, so a small tree stays small; every
/// later chunk is allocated at its full size once.
#[derive(Debug, Clone, Default)]
struct Slots {
    chunks: Vec<Vec<Option<Node>>>,
    len: usize,
}

impl Slots {
    #[inline]
    fn get(&self, s: usize) -> Option<&Option<Node>> {
        self.chunks.get(s >> CHUNK_BITS)?.get(s & (CHUNK - 1))
    }

    #[inline]
    fn get_mut(&mut self, s: usize) -> Option<&mut Option<Node>> {
        self.chunks
            .get_mut(s >> CHUNK_BITS)?
            .get_mut(s & (CHUNK - 1))
    }

    /// Makes room for `additional` more slots in the first chunk (the only one that grows by
    /// doubling), so that a builder that knows how many nodes come does not copy it as it grows.
    fn reserve(&mut self, additional: usize) {
        if let [first] = self.chunks.as_mut_slice() {
            let want = (first.len() + additional).min(CHUNK);
            first.reserve_exact(want.saturating_sub(first.len()));
        }
    }

    /// Appends a slot and returns its index.
    fn push(&mut self, node: Option<Node>) -> usize {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last.push(node),
            Some(_) => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(node);
                self.chunks.push(chunk);
            }
            None => self.chunks.push(vec![node]),
        }
        self.len += 1;
        self.len - 1
    }
}

impl std::ops::Index<usize> for Slots {
    type Output = Option<Node>;

    #[inline]
    fn index(&self, s: usize) -> &Option<Node> {
        &self.chunks[s >> CHUNK_BITS][s & (CHUNK - 1)]
    }
}

impl std::ops::IndexMut<usize> for Slots {
    #[inline]
    fn index_mut(&mut self, s: usize) -> &mut Option<Node> {
        &mut self.chunks[s >> CHUNK_BITS][s & (CHUNK - 1)]
    }
}

/// A document tree whose nodes are addressed by consumer-assigned ids (spec §6.1).
///
/// Ids are never reused within an epoch but may be sparse (nodes come and go), so the arena
/// keeps nodes in dense slots, reused through a free list, and a 4-byte index from id to slot.
/// Ids are bounded by `Limits::max_node_id`, so memory is bounded by the live nodes plus four
/// bytes per id. Every mutation marks the changed node and its ancestors dirty;
/// [`Dom::root_hash`] rehashes only dirty nodes (spec §6.3).
#[derive(Debug, Clone)]
pub struct Dom {
    index: Vec<u32>,
    slots: Slots,
    free: Vec<u32>,
    next_id: NodeId,
    live: usize,
    limits: Limits,
    /// Buffers [`Dom::rehash`] reuses, so that rehashing a short dirty path allocates nothing.
    scratch: Scratch,
}

/// Reusable buffers of [`Dom::rehash`]: dirty nodes' slots, the walk's stack, a hash input and
/// where its element children's hashes stand.
#[derive(Debug, Clone, Default)]
struct Scratch {
    order: Vec<usize>,
    stack: Vec<NodeId>,
    input: Vec<u8>,
    entries: Vec<(NodeId, u32)>,
}

impl Default for Dom {
    fn default() -> Self {
        Self::new(Limits::DEFAULT)
    }
}

impl Dom {
    /// An empty document: the document node alone, with id 0.
    pub fn new(limits: Limits) -> Self {
        let mut slots = Slots::default();
        slots.push(Some(Node::new(NodeKind::Document)));
        Dom {
            index: vec![0],
            slots,
            free: Vec::new(),
            next_id: 1,
            live: 1,
            limits,
            scratch: Scratch::default(),
        }
    }

    /// Makes room for `additional` more nodes with the next ids, so that a builder adding them
    /// one by one does not grow the id index, nor the first chunk of node slots, step by step
    /// (later slots come in whole chunks anyway). Never beyond the tree's node limit.
    pub fn reserve(&mut self, additional: usize) {
        let room = (self.limits.max_nodes as usize).saturating_sub(self.live);
        let n = additional.min(room);
        let ids = (self.next_id as usize).saturating_add(n);
        let ids = ids.min(self.limits.max_node_id as usize);
        self.index.reserve(ids.saturating_sub(self.index.len()));
        self.slots.reserve(n);
    }

    /// The limits this tree enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Number of live nodes, the document node included.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether the document has no children.
    pub fn is_empty(&self) -> bool {
        self.children(DOCUMENT_ID).is_empty()
    }

    /// The id the next created node will get: one above the highest id ever used.
    pub fn next_id(&self) -> NodeId {
        self.next_id
    }

    /// Whether a node with `id` exists.
    pub fn contains(&self, id: NodeId) -> bool {
        self.slot(id).is_some()
    }

    #[inline]
    fn slot(&self, id: NodeId) -> Option<usize> {
        let s = *self.index.get(usize::try_from(id).ok()?)?;
        (s != NO_SLOT).then_some(s as usize)
    }

    /// The node with `id`, if it exists.
    #[inline]
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.slots.get(self.slot(id)?)?.as_ref()
    }

    #[inline]
    fn node_mut(&mut self, id: NodeId) -> Option<&mut Node> {
        let s = self.slot(id)?;
        self.slots.get_mut(s)?.as_mut()
    }

    /// Puts `node` in a slot under `id` (which must be free and within limits).
    fn alloc(&mut self, id: NodeId, node: Node) -> Result<(), EngineError> {
        let max_id = u64::from(self.limits.max_node_id);
        if id >= max_id {
            return Err(EngineError::Limit {
                field: "tree.node_id",
                limit: max_id,
                actual: id,
            });
        }
        if self.contains(id) || id == DOCUMENT_ID {
            return Err(EngineError::BadShape {
                field: "node.id",
                detail: "id already in use",
            });
        }
        let live = self.live as u64 + 1;
        if live > u64::from(self.limits.max_nodes) {
            return Err(EngineError::Limit {
                field: "tree.nodes",
                limit: self.limits.max_nodes.into(),
                actual: live,
            });
        }
        let slot = match self.free.pop() {
            Some(f) => {
                self.slots[f as usize] = Some(node);
                f
            }
            None => self.slots.push(Some(node)) as u32,
        };
        let i = id as usize;
        if self.index.len() <= i {
            self.index.resize(i + 1, NO_SLOT);
        }
        self.index[i] = slot;
        self.live += 1;
        self.next_id = self.next_id.max(id + 1);
        Ok(())
    }

    fn release(&mut self, id: NodeId) -> Option<Node> {
        let s = self.slot(id)?;
        self.index[id as usize] = NO_SLOT;
        let node = self.slots[s].take();
        self.free.push(s as u32);
        self.live -= 1;
        node
    }

    fn get(&self, id: NodeId, field: &'static str) -> Result<&Node, EngineError> {
        self.node(id).ok_or(EngineError::NoSuchNode { field, id })
    }

    fn get_mut(&mut self, id: NodeId, field: &'static str) -> Result<&mut Node, EngineError> {
        self.node_mut(id)
            .ok_or(EngineError::NoSuchNode { field, id })
    }

    /// The children of `id` (empty for a missing node).
    pub fn children(&self, id: NodeId) -> &[NodeId] {
        self.node(id).map(|n| n.children.as_slice()).unwrap_or(&[])
    }

    /// The parent of `id`.
    pub fn parent(&self, id: NodeId) -> Option<NodeId> {
        self.node(id)?.parent
    }

    /// Creates a detached node and returns its id (the next id).
    pub fn create(&mut self, kind: NodeKind) -> Result<NodeId, EngineError> {
        let id = self.next_id;
        self.create_with_id(id, kind)?;
        Ok(id)
    }

    /// Creates a detached node with the given id, which must not be in use and must be below
    /// `Limits::max_node_id` (a patch's `Insert` names its ids, spec §6.5).
    pub fn create_with_id(&mut self, id: NodeId, kind: NodeKind) -> Result<(), EngineError> {
        if matches!(kind, NodeKind::Document) {
            return Err(EngineError::BadShape {
                field: "node.kind",
                detail: "a second document node",
            });
        }
        self.alloc(id, Node::new(kind))
    }

    /// Depth of `id` below the document (the document is 0).
    pub fn depth(&self, mut id: NodeId) -> u32 {
        let mut d = 0;
        while let Some(p) = self.parent(id) {
            d += 1;
            id = p;
        }
        d
    }

    fn height(&self, id: NodeId) -> u32 {
        // Height of the subtree at `id`, iteratively (no recursion on peer-built trees).
        let mut max = 0;
        let mut stack = vec![(id, 0u32)];
        while let Some((n, h)) = stack.pop() {
            max = max.max(h);
            for &c in self.children(n) {
                stack.push((c, h + 1));
            }
        }
        max
    }

    /// Whether `anc` is `id` or one of its ancestors.
    pub fn is_ancestor_or_self(&self, anc: NodeId, mut id: NodeId) -> bool {
        loop {
            if id == anc {
                return true;
            }
            match self.parent(id) {
                Some(p) => id = p,
                None => return false,
            }
        }
    }

    fn position_after(
        &self,
        parent: NodeId,
        prev: NodeId,
        field: &'static str,
    ) -> Result<usize, EngineError> {
        let p = self.get(parent, field)?;
        if prev == 0 {
            return Ok(0);
        }
        // Search from the end: appends (prev = last child) are the common case.
        match p.children.iter().rposition(|&c| c == prev) {
            Some(i) => Ok(i + 1),
            None => Err(EngineError::NotAChild {
                field,
                parent,
                prev,
            }),
        }
    }

    /// Records that the hash input of `id` changed (its own data or its list of children; for a
    /// leaf, which has no hash of its own, its parent's input) and marks it and its ancestors
    /// dirty. Each ancestor with a wide cache notes which child's hash to patch in.
    /// Invariant: every ancestor of a dirty attached node is dirty, and every dirty element
    /// child of a node with a current wide cache is among that cache's pending children; so the
    /// walk stops at the first node that already is dirty, once it has noted the child.
    fn mark_dirty(&mut self, id: NodeId) {
        let Some(node) = self.node_mut(id) else {
            return;
        };
        let id = match (node.kind.is_leaf(), node.parent) {
            (false, _) => id,
            (true, Some(p)) => p,
            (true, None) => return,
        };
        let Some(node) = self.node_mut(id) else {
            return;
        };
        if let Some(w) = node.wide.as_mut() {
            w.mark_stale();
        }
        let mut child = id;
        let mut cur = if node.dirty {
            return;
        } else {
            node.dirty = true;
            node.parent
        };
        while let Some(n) = cur {
            let Some(node) = self.node_mut(n) else { return };
            if let Some(w) = node.wide.as_mut() {
                w.note_child(child);
            }
            if node.dirty {
                return;
            }
            node.dirty = true;
            child = n;
            cur = node.parent;
        }
    }

    /// Attaches the detached node `id` under `parent` after `prev` (0: first).
    pub fn attach(&mut self, id: NodeId, parent: NodeId, prev: NodeId) -> Result<(), EngineError> {
        let field = "insert";
        if id == DOCUMENT_ID || self.get(id, field)?.parent.is_some() {
            return Err(EngineError::BadMove { field, id });
        }
        self.check_placement(id, parent, field)?;
        self.place(id, parent, prev, field)
    }

    /// Whether `id`'s subtree may stand under `parent`: the kinds fit (spec §6.2) and the depth
    /// stays within `max_depth`.
    fn check_placement(
        &self,
        id: NodeId,
        parent: NodeId,
        field: &'static str,
    ) -> Result<(), EngineError> {
        self.check_container(parent, id, field)?;
        let depth = self.depth(parent) + 1 + self.height(id);
        if depth > self.limits.max_depth {
            return Err(EngineError::Limit {
                field: "tree.depth",
                limit: self.limits.max_depth.into(),
                actual: depth.into(),
            });
        }
        Ok(())
    }

    /// Links the detached node `id` under `parent` after `prev`, placement already checked.
    fn place(
        &mut self,
        id: NodeId,
        parent: NodeId,
        prev: NodeId,
        field: &'static str,
    ) -> Result<(), EngineError> {
        let at = self.position_after(parent, prev, field)?;
        self.get_mut(parent, field)?.children.insert(at, id);
        self.get_mut(id, field)?.parent = Some(parent);
        self.mark_dirty(parent);
        Ok(())
    }

    fn check_container(
        &self,
        parent: NodeId,
        child: NodeId,
        field: &'static str,
    ) -> Result<(), EngineError> {
        let p = self.get(parent, field)?;
        let c = self.get(child, field)?;
        let ok = match (&p.kind, &c.kind) {
            (NodeKind::Document, NodeKind::Text(_)) => false,
            (NodeKind::Document, _) => true,
            (NodeKind::Element(_), NodeKind::Doctype { .. }) => false,
            (NodeKind::Element(_), _) => true,
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(EngineError::WrongKind { field, id: parent })
        }
    }

    /// Appends the detached node `id` as the last child of `parent`.
    pub fn append(&mut self, parent: NodeId, id: NodeId) -> Result<(), EngineError> {
        let prev = self.children(parent).last().copied().unwrap_or(0);
        self.attach(id, parent, prev)
    }

    /// Removes `id` and its subtree; their ids are retired.
    pub fn remove(&mut self, id: NodeId) -> Result<(), EngineError> {
        let field = "remove";
        if id == DOCUMENT_ID {
            return Err(EngineError::BadMove { field, id });
        }
        self.detach(id, field)?;
        let mut stack = vec![id];
        while let Some(n) = stack.pop() {
            if let Some(node) = self.release(n) {
                stack.extend(node.children);
            }
        }
        Ok(())
    }

    /// Detaches `id` (with its subtree) from its parent, keeping it in the arena.
    pub fn detach(&mut self, id: NodeId, field: &'static str) -> Result<(), EngineError> {
        let parent = self.get(id, field)?.parent;
        if let Some(p) = parent {
            self.mark_dirty(p);
            let pn = self.get_mut(p, field)?;
            if let Some(i) = pn.children.iter().rposition(|&c| c == id) {
                pn.children.remove(i);
            }
            self.get_mut(id, field)?.parent = None;
        }
        Ok(())
    }

    /// Moves `id` (with its subtree) under `parent` after `prev` (0: first).
    pub fn move_node(
        &mut self,
        id: NodeId,
        parent: NodeId,
        prev: NodeId,
    ) -> Result<(), EngineError> {
        let field = "move";
        if id == DOCUMENT_ID || prev == id {
            return Err(EngineError::BadMove { field, id });
        }
        self.get(id, field)?;
        self.get(parent, field)?;
        if self.is_ancestor_or_self(id, parent) {
            return Err(EngineError::BadMove { field, id });
        }
        if prev != 0 && self.parent(prev) != Some(parent) {
            return Err(EngineError::NotAChild {
                field,
                parent,
                prev,
            });
        }
        // Checked once, before anything changes: a refused move leaves the tree as it was.
        self.check_placement(id, parent, field)?;
        self.detach(id, field)?;
        self.place(id, parent, prev, field)
    }

    /// Sets attribute `name` of element `id` (appended if absent).
    pub fn set_attr(&mut self, id: NodeId, name: &str, value: &str) -> Result<(), EngineError> {
        let field = "set_attr";
        let max = self.limits.max_attributes;
        let node = self.get_mut(id, field)?;
        let NodeKind::Element(e) = &mut node.kind else {
            return Err(EngineError::WrongKind { field, id });
        };
        match e.attrs.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => {
                if v == value {
                    return Ok(());
                }
                value.clone_into(v);
            }
            None => {
                if e.attrs.len() as u64 >= u64::from(max) {
                    return Err(EngineError::Limit {
                        field: "node.attrs",
                        limit: max.into(),
                        actual: e.attrs.len() as u64 + 1,
                    });
                }
                e.attrs.push((name.to_owned().into(), value.to_owned()));
            }
        }
        self.mark_dirty(id);
        Ok(())
    }

    /// Removes attribute `name` of element `id`, if present.
    pub fn remove_attr(&mut self, id: NodeId, name: &str) -> Result<(), EngineError> {
        let field = "remove_attr";
        let node = self.get_mut(id, field)?;
        let NodeKind::Element(e) = &mut node.kind else {
            return Err(EngineError::WrongKind { field, id });
        };
        let before = e.attrs.len();
        e.attrs.retain(|(n, _)| n != name);
        if e.attrs.len() != before {
            self.mark_dirty(id);
        }
        Ok(())
    }

    /// The text of a text or comment node.
    pub fn text(&self, id: NodeId) -> Option<&str> {
        match &self.node(id)?.kind {
            NodeKind::Text(t) | NodeKind::Comment(t) => Some(t),
            _ => None,
        }
    }

    /// Mutable access to the text of a text or comment node; marks it dirty.
    pub fn text_mut(
        &mut self,
        id: NodeId,
        field: &'static str,
    ) -> Result<&mut String, EngineError> {
        match self.get(id, field)?.kind {
            NodeKind::Text(_) | NodeKind::Comment(_) => {}
            _ => return Err(EngineError::WrongKind { field, id }),
        }
        self.mark_dirty(id);
        let node = self.get_mut(id, field)?;
        node.converted = false;
        match &mut node.kind {
            NodeKind::Text(t) | NodeKind::Comment(t) => Ok(t),
            // Checked above.
            _ => Err(EngineError::WrongKind { field, id }),
        }
    }

    /// Replaces the text of a text or comment node.
    pub fn set_text(&mut self, id: NodeId, text: &str) -> Result<(), EngineError> {
        let t = self.text_mut(id, "set_text")?;
        text.clone_into(t);
        Ok(())
    }

    /// Replaces the text of text node `id` by `uri`, the reference to a blob of its former
    /// text (spec §14.3), and remembers that it is one: see [`Dom::is_blob_reference`].
    pub(crate) fn set_blob_reference(&mut self, id: NodeId, uri: &str) -> Result<(), EngineError> {
        self.set_text(id, uri)?;
        if let Some(n) = self.node_mut(id) {
            n.converted = true;
        }
        Ok(())
    }

    /// Whether the text of `id` is a blob reference the consumer wrote in place of the page's
    /// text (spec §14.3), and not the page's own text, even if that has the form of a URI. Any
    /// later change of the text by other means makes it page text again.
    pub fn is_blob_reference(&self, id: NodeId) -> bool {
        self.node(id).is_some_and(|n| n.converted)
    }

    /// Node ids of the subtree at `id` in preorder (including `id`).
    pub fn preorder(&self, id: NodeId) -> Preorder<'_> {
        Preorder {
            dom: self,
            stack: if self.node(id).is_some() {
                vec![id]
            } else {
                vec![]
            },
        }
    }

    /// The Merkle hash of the document or element `id` (spec §6.3), rehashing dirty
    /// descendants first; `None` for a leaf (text, comment, doctype), which has no hash of its
    /// own, or a missing node.
    pub fn hash_of(&mut self, id: NodeId) -> Option<[u8; 32]> {
        if self.node(id)?.kind.is_leaf() {
            return None;
        }
        self.rehash(id);
        self.node(id).map(|n| n.hash)
    }

    /// The HTML `body` element: the child of that name of the document's `html` element, as an
    /// HTML parser places it (`None` in a document without one, such as a frameset).
    pub fn body(&self) -> Option<NodeId> {
        let is = |id: NodeId, name: &str| {
            self.node(id)
                .and_then(Node::element)
                .is_some_and(|e| e.ns == Ns::Html && e.name == name)
        };
        let html = *self
            .children(DOCUMENT_ID)
            .iter()
            .find(|&&c| is(c, "html"))?;
        self.children(html).iter().copied().find(|&c| is(c, "body"))
    }

    /// The tree hash: the document node's Merkle hash (spec §6.3).
    pub fn root_hash(&mut self) -> [u8; 32] {
        self.rehash(DOCUMENT_ID);
        self.node(DOCUMENT_ID).map(|n| n.hash).unwrap_or_default()
    }

    /// The cached hash of the document or element `id` (`None` for a leaf or a missing
    /// node); only current after [`Dom::root_hash`] or [`Dom::hash_of`].
    pub fn cached_hash(&self, id: NodeId) -> Option<[u8; 32]> {
        self.node(id).filter(|n| !n.kind.is_leaf()).map(|n| n.hash)
    }

    fn rehash(&mut self, id: NodeId) {
        // One bottom-up pass: the dirty nodes in preorder (a clean node's subtree keeps its
        // cached hashes and is skipped), hashed in reverse, so every node after its children.
        if !self.node(id).is_some_and(|n| n.dirty) {
            return;
        }
        let Scratch {
            mut order,
            mut stack,
            input: mut buf,
            mut entries,
        } = std::mem::take(&mut self.scratch);
        order.clear();
        stack.clear();
        stack.push(id);
        while let Some(n) = stack.pop() {
            let Some(s) = self.slot(n) else { continue };
            let Some(node) = self.slots[s].as_ref() else {
                continue;
            };
            if node.dirty {
                order.push(s);
                // Of a node with a current wide cache, only the noted children can be dirty.
                match node.wide.as_deref().filter(|w| w.is_current()) {
                    Some(w) => stack.extend_from_slice(w.pending()),
                    None => stack.extend_from_slice(&node.children),
                }
            }
        }
        for &s in order.iter().rev() {
            let Some(node) = self.slots[s].as_mut() else {
                continue;
            };
            let mut cache = node.wide.take();
            let current = node.hash;
            let mut hash = None;
            if let Some(w) = cache.as_mut().filter(|w| w.is_current()) {
                hash = w.update(current, |c| self.node(c).map(|n| n.hash));
            }
            let hash = match hash {
                Some(h) => h,
                None => {
                    let Some(node) = self.slots[s].as_ref() else {
                        continue;
                    };
                    // One contiguous input: blake3 hashes large inputs with SIMD across chunks.
                    buf.clear();
                    entries.clear();
                    crate::hash::encode_node(&node.kind, &mut buf);
                    crate::hash::write_varint(&mut buf, node.children.len() as u64);
                    buf.reserve(node.children.len() * 33);
                    for &c in &node.children {
                        if let Some(cn) = self.node(c) {
                            if !cn.kind.is_leaf() {
                                // Past 4 GiB the offsets wrap, but no cache is kept.
                                entries.push((c, (buf.len() + 1) as u32));
                            }
                            crate::hash::encode_child(&cn.kind, &cn.hash, &mut buf);
                        }
                    }
                    // Only element children's hashes are ever patched in.
                    let wide = (wide::THRESHOLD..u32::MAX as usize).contains(&buf.len());
                    if wide && !entries.is_empty() {
                        let w = cache.get_or_insert_default();
                        w.rebuild(&mut buf, &mut entries)
                    } else {
                        cache = None;
                        *blake3::hash(&buf).as_bytes()
                    }
                }
            };
            if let Some(node) = self.slots[s].as_mut() {
                node.hash = hash;
                node.dirty = false;
                node.wide = cache;
            }
        }
        // A snapshot's whole tree would leave large buffers behind: keep only small ones.
        if buf.capacity() <= 1 << 16
            && entries.capacity() <= 1 << 12
            && order.capacity() <= 1 << 12
            && stack.capacity() <= 1 << 12
        {
            self.scratch = Scratch {
                order,
                stack,
                input: buf,
                entries,
            };
        }
    }

    /// Whether the ids are 1, 2, … in document order with none missing, as a snapshot assigns
    /// them (spec §6.1).
    pub fn is_in_document_order(&self) -> bool {
        self.next_id == self.live as NodeId
            && self
                .preorder(DOCUMENT_ID)
                .enumerate()
                .all(|(i, id)| id == i as NodeId)
    }

    /// A copy of this tree with ids renumbered in document order (1, 2, … in preorder), as a
    /// snapshot assigns them (spec §6.1).
    pub fn renumbered(&self) -> Dom {
        let mut out = Dom::new(self.limits);
        let mut stack: Vec<(NodeId, NodeId)> = self
            .children(DOCUMENT_ID)
            .iter()
            .rev()
            .map(|&c| (c, DOCUMENT_ID))
            .collect();
        while let Some((old, new_parent)) = stack.pop() {
            let Some(node) = self.node(old) else { continue };
            // The copy has no more nodes than this tree, so it fits the same limits.
            let Ok(id) = out.push_raw(node.kind.clone(), new_parent) else {
                break;
            };
            if node.converted
                && let Some(copy) = out.node_mut(id)
            {
                copy.converted = true;
            }
            for &c in node.children.iter().rev() {
                stack.push((c, id));
            }
        }
        out
    }

    /// Whether `self` and `other` have the same shape and content, ignoring ids.
    pub fn same_tree(&mut self, other: &mut Dom) -> bool {
        self.root_hash() == other.root_hash()
    }

    /// Creates a node with the next id and appends it to `parent`, without the shape and depth
    /// checks of [`Dom::attach`]: for builders that validated those themselves.
    pub(crate) fn push_raw(
        &mut self,
        kind: NodeKind,
        parent: NodeId,
    ) -> Result<NodeId, EngineError> {
        let id = self.next_id;
        self.push_raw_with_id(id, kind, parent)?;
        Ok(id)
    }

    /// [`Dom::push_raw`] with a given id.
    pub(crate) fn push_raw_with_id(
        &mut self,
        id: NodeId,
        kind: NodeKind,
        parent: NodeId,
    ) -> Result<(), EngineError> {
        self.push_raw_sized(id, kind, parent, 0)
    }
    /// Gives `id` the hash a [`TreeBuilder`](crate::snapshot::TreeBuilder) computed over the
    /// subtree it built, and marks it clean. Only for a node whose children are all clean and
    /// unchanged since: the builder calls it when it closes an element.
    pub(crate) fn set_built_hash(
        &mut self,
        id: NodeId,
        hash: [u8; 32],
        wide: Option<Box<WideHash>>,
    ) {
        debug_assert!(
            self.children(id)
                .iter()
                .all(|&c| self.node(c).is_some_and(|c| !c.dirty)),
            "a built hash over dirty children"
        );
        if let Some(node) = self.node_mut(id) {
            node.hash = hash;
            node.dirty = false;
            node.wide = wide;
        }
    }

    /// [`Dom::push_raw_with_id`] for a node that will have `children` children, which a
    /// builder knows from the record: their slots are reserved at once.
    pub(crate) fn push_raw_sized(
        &mut self,
        id: NodeId,
        kind: NodeKind,
        parent: NodeId,
        children: u32,
    ) -> Result<(), EngineError> {
        if matches!(kind, NodeKind::Document) {
            return Err(EngineError::BadShape {
                field: "node.kind",
                detail: "a second document node",
            });
        }
        let mut node = Node::with_children(kind, children);
        node.parent = Some(parent);
        self.alloc(id, node)?;
        match self.node_mut(parent) {
            Some(p) => {
                p.children.push(id);
                // A builder's parent is an element it is still filling, dirty since it was
                // made: marking it again would change nothing, so only another is marked.
                if !p.dirty || p.wide.is_some() {
                    self.mark_dirty(parent);
                }
                Ok(())
            }
            None => {
                self.release(id);
                Err(EngineError::NoSuchNode {
                    field: "node.parent",
                    id: parent,
                })
            }
        }
    }
}

/// Preorder iterator over a subtree's ids.
#[derive(Debug)]
pub struct Preorder<'a> {
    dom: &'a Dom,
    stack: Vec<NodeId>,
}

impl Iterator for Preorder<'_> {
    type Item = NodeId;
    fn next(&mut self) -> Option<NodeId> {
        let id = self.stack.pop()?;
        self.stack.extend(self.dom.children(id).iter().rev());
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use tandem_protocol::{DOCUMENT_ID, Limits, NodeId, Ns};

    use super::{CHUNK, Dom, Element, Node, NodeKind, Slots};
    use crate::hash::{encode_child, encode_node, write_varint};

    #[test]
    fn full_chunks_of_slots_never_move() {
        let mut slots = Slots::default();
        let text = |i: usize| Some(Node::new(NodeKind::Text(i.to_string())));
        for i in 0..CHUNK + 1 {
            assert_eq!(slots.push(text(i)), i);
        }
        let first: *const Option<Node> = &slots[0];
        let second: *const Option<Node> = &slots[CHUNK];
        for i in CHUNK + 1..3 * CHUNK + 5 {
            assert_eq!(slots.push(text(i)), i);
        }
        assert!(std::ptr::eq(first, &slots[0]));
        assert!(std::ptr::eq(second, &slots[CHUNK]));
        assert_eq!(slots.chunks.len(), 4);
        for i in [0, CHUNK - 1, CHUNK, 2 * CHUNK + 7, 3 * CHUNK + 4] {
            let Some(Some(node)) = slots.get(i) else {
                panic!("slot {i} missing")
            };
            assert_eq!(node.kind, NodeKind::Text(i.to_string()));
        }
        assert!(slots.get(3 * CHUNK + 5).is_none());
        *slots.get_mut(CHUNK + 2).unwrap() = None;
        assert!(slots[CHUNK + 2].is_none());
    }

    /// The hash input of `id` from scratch: element children's hashes recomputed recursively.
    fn input(dom: &Dom, id: NodeId) -> Vec<u8> {
        let node = dom.node(id).unwrap();
        let mut buf = Vec::new();
        encode_node(&node.kind, &mut buf);
        write_varint(&mut buf, node.children.len() as u64);
        for &c in &node.children {
            let kind = &dom.node(c).unwrap().kind;
            let hash = if kind.is_leaf() {
                [0; 32]
            } else {
                reference(dom, c)
            };
            encode_child(kind, &hash, &mut buf);
        }
        buf
    }

    /// The Merkle hash of `id` computed from scratch, ignoring every cache.
    fn reference(dom: &Dom, id: NodeId) -> [u8; 32] {
        *blake3::hash(&input(dom, id)).as_bytes()
    }

    fn element(name: &str) -> NodeKind {
        NodeKind::Element(Element {
            ns: Ns::Html,
            name: crate::Name::Owned(name.to_owned()),
            attrs: vec![],
        })
    }

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// A document with two wide elements: `<main>` with `k` `<section><span/></section>`
    /// children, `<aside>` with `k / 2` `<p>` children, then one text child each padded so that
    /// `<main>`'s input is `target` bytes (or just above when a varint prevents it).
    fn wide_tree(k: usize, target: usize) -> (Dom, NodeId, NodeId) {
        let mut dom = Dom::new(Limits::DEFAULT);
        let html = dom.create(element("html")).unwrap();
        dom.append(DOCUMENT_ID, html).unwrap();
        let main = dom.create(element("main")).unwrap();
        dom.append(html, main).unwrap();
        let aside = dom.create(element("aside")).unwrap();
        dom.append(html, aside).unwrap();
        for _ in 0..k {
            let s = dom.create(element("section")).unwrap();
            dom.append(main, s).unwrap();
            let span = dom.create(element("span")).unwrap();
            dom.append(s, span).unwrap();
        }
        for _ in 0..k / 2 {
            let p = dom.create(element("p")).unwrap();
            dom.append(aside, p).unwrap();
        }
        for parent in [main, aside] {
            let t = dom.create(NodeKind::Text(String::new())).unwrap();
            dom.append(parent, t).unwrap();
        }
        let t = *dom.children(main).last().unwrap();
        let mut pad = 0;
        while input(&dom, main).len() < target {
            pad += 1;
            dom.set_text(t, &"x".repeat(pad)).unwrap();
        }
        (dom, main, aside)
    }

    /// Elements below `id` (not `id` itself).
    fn elements_under(dom: &Dom, id: NodeId) -> Vec<NodeId> {
        dom.preorder(id)
            .skip(1)
            .filter(|&n| !dom.node(n).unwrap().kind.is_leaf())
            .collect()
    }

    /// One random change that keeps `main` and `aside` in place.
    fn change(dom: &mut Dom, rng: &mut Rng, main: NodeId, aside: NodeId, tick: usize) {
        let wide = [main, aside][rng.below(2)];
        let below = elements_under(dom, wide);
        let v = format!("v{tick}");
        match rng.below(12) {
            // An attribute deep down or on a direct child: hashes propagate up.
            0..=3 if !below.is_empty() => {
                let n = below[rng.below(below.len())];
                dom.set_attr(n, "a", &v[..1 + rng.below(v.len())]).unwrap();
            }
            4 if !below.is_empty() => {
                let n = below[rng.below(below.len())];
                dom.remove_attr(n, "a").unwrap();
            }
            // The wide node's own header.
            5 => dom.set_attr(wide, "class", &v).unwrap(),
            // A text child of the wide node grows or shrinks.
            6 => {
                let t = *dom.children(wide).last().unwrap();
                if dom.text(t).is_some() {
                    let len = dom.text(t).unwrap().len();
                    let new = len.saturating_sub(2) + rng.below(5);
                    dom.set_text(t, &"y".repeat(new)).unwrap();
                }
            }
            // A child added, removed, moved between the wide nodes.
            7 => {
                let n = dom.create(element("i")).unwrap();
                let kids = dom.children(wide).to_vec();
                let prev = if kids.is_empty() {
                    0
                } else {
                    kids[rng.below(kids.len())]
                };
                dom.attach(n, wide, prev).unwrap();
            }
            8 => {
                let kids: Vec<NodeId> = dom
                    .children(wide)
                    .iter()
                    .copied()
                    .filter(|&c| dom.text(c).is_none())
                    .collect();
                if kids.len() > 1 {
                    dom.remove(kids[rng.below(kids.len())]).unwrap();
                }
            }
            9 => {
                let kids = dom.children(wide).to_vec();
                let other = if wide == main { aside } else { main };
                if let Some(&c) = kids.first()
                    && dom.text(c).is_none()
                {
                    dom.move_node(c, other, 0).unwrap();
                }
            }
            // A partial rehash of a subtree: its ancestors stay dirty.
            10 if !below.is_empty() => {
                let n = below[rng.below(below.len())];
                dom.hash_of(n).unwrap();
            }
            _ => {
                // A change and its undo: the hash comes back.
                if let Some(&n) = below.first() {
                    dom.set_attr(n, "undo", "1").unwrap();
                    dom.remove_attr(n, "undo").unwrap();
                }
            }
        }
    }

    /// Incremental hashes of wide nodes equal hashes from scratch over random changes, with
    /// inputs around blake3 chunk boundaries and the caching threshold.
    #[test]
    fn wide_nodes_rehash_like_from_scratch() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let targets: [usize; 14] = [
            1023, 1024, 1025, 2047, 2048, 2049, 4095, 4096, 4097, 5000, 8191, 8192, 8193, 33_000,
        ];
        for (t, &target) in targets.iter().enumerate() {
            let k = (target / 33).saturating_sub(3).max(1);
            let (mut dom, main, aside) = wide_tree(k, target);
            assert_eq!(
                dom.root_hash(),
                reference(&dom, DOCUMENT_ID),
                "target {target}"
            );
            for step in 0..150 {
                for _ in 0..1 + rng.below(4) {
                    change(&mut dom, &mut rng, main, aside, t * 1000 + step);
                }
                if rng.below(4) == 0 {
                    // A clone (the consumer's shadow) carries on from the same caches.
                    let mut copy = dom.clone();
                    assert_eq!(copy.root_hash(), reference(&dom, DOCUMENT_ID));
                }
                assert_eq!(
                    dom.root_hash(),
                    reference(&dom, DOCUMENT_ID),
                    "target {target} step {step}"
                );
                assert_eq!(dom.cached_hash(main), Some(reference(&dom, main)));
                assert_eq!(dom.cached_hash(aside), Some(reference(&dom, aside)));
            }
        }
    }

    /// A node keeps a cache only while its input is large and holds an element child, and a
    /// removed node's goes with it.
    #[test]
    fn only_wide_nodes_keep_a_cache() {
        let (mut dom, main, aside) = wide_tree(200, 0);
        dom.root_hash();
        assert!(
            dom.node(main).unwrap().wide.is_some(),
            "200 children: 6.6 KB"
        );
        assert!(
            dom.node(aside).unwrap().wide.is_some(),
            "100 children: 3.3 KB"
        );
        assert!(dom.node(DOCUMENT_ID).unwrap().wide.is_none());
        let kids = dom.children(main).to_vec();
        for &c in &kids[..180] {
            dom.remove(c).unwrap();
        }
        assert_eq!(dom.root_hash(), reference(&dom, DOCUMENT_ID));
        assert!(
            dom.node(main).unwrap().wide.is_none(),
            "shrunk below the threshold"
        );
        // A large text alone: nothing to patch, nothing kept.
        let t = *dom.children(aside).last().unwrap();
        dom.set_text(t, &"z".repeat(10_000)).unwrap();
        for c in dom.children(aside).to_vec() {
            if c != t {
                dom.remove(c).unwrap();
            }
        }
        assert_eq!(dom.root_hash(), reference(&dom, DOCUMENT_ID));
        assert!(dom.node(aside).unwrap().wide.is_none(), "no element child");
    }
}
