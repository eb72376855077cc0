//! The consumer's side of the DOM stream (spec §7.14–§7.17): owns the page's tree, records
//! which nodes changed, and turns the changes into snapshots and patches.
//!
//! ## Model: state sync against a shadow
//!
//! The consumer keeps two trees with the same ids: the page (`dom`) and a *shadow* of what the
//! agent holds once every queued message is applied. Mutations change the page and note what
//! they touched — nodes whose attributes or text changed, parents whose child lists gained or
//! reordered nodes, roots of removed subtrees. [`Consumer::flush`] compares only those places of
//! the page with the shadow and emits the operations that take the shadow to the page:
//!
//! * structure first, parents before children (by depth): for each touched parent, children in
//!   their final order; new nodes are inserted as runs of consecutive ids (spec §6.1), old nodes
//!   that changed parent or order are moved — the longest run already in order stays put;
//! * then attributes and texts of old nodes that changed (long texts as `EditText` when smaller);
//! * then removals of old nodes that are gone (the topmost only).
//!
//! So changes made between two sends fold into one patch: an insert then remove cancels,
//! repeated attribute sets keep the last, text edits merge, changes under a removed ancestor
//! vanish. The patch is applied to the shadow at once and the shadow's hash must equal the
//! page's; if it ever did not, the consumer would start a new epoch with a snapshot rather than
//! let the agent diverge.
//!
//! ## Masking (spec §12)
//!
//! The page's tree is masked by the consumer's [`MaskPolicy`] as content enters it: the page
//! given to [`Consumer::with_policy`], each target of [`Consumer::update_to`] (masked in place
//! before the diff), and every mutation call and change record. So the shadow, the snapshot,
//! the patches and the string table only ever see masked values. A change that makes a node
//! masked (a class added, a move under a masked parent) re-masks that node's subtree, which
//! leaves as ordinary `SetAttr`/`SetText` operations carrying stars. Masking is lossy: a node
//! that stops being masked keeps its stars until the page reports its content again.
//!
//! Nodes inside a blocked element are not in the tree. The mutation calls still accept their
//! ids (the page's capture layer knows them) and ignore changes to them; moving such a node
//! out of its blocked element is not possible (`NoSuchNode`).

use std::collections::{HashMap, HashSet, VecDeque};

use tandem_protocol::message::{Patch, RefusalCode, Refused, Resync, TreeHash};
use tandem_protocol::{
    DOCUMENT_ID, EncodeError, FrameBuf, Limits, Message, NodeId, Ns, SymEncoder, frame,
};

use crate::hands::Protection;

use crate::dom::{Dom, Name, NodeKind};
use crate::mask::{self, Fix, Listing, MaskPolicy};
use crate::patch::{self, Op};
use crate::resource::Resources;
use crate::snapshot::{self, SnapshotFrame};
use crate::{EngineError, diff, hash};

/// A node a [`ChangeRecord::ChildList`] adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// A new subtree, in preorder with child counts; the engine assigns its ids.
    New(Vec<(NodeKind, u32)>),
    /// A node the consumer already knows (moved here; a `removed` entry of the same batch may
    /// name it too).
    Existing(NodeId),
}

/// A change as a page's `MutationObserver` reports it, with the consumer's node ids and the
/// current values (spec §6.5 operations are derived from these, never from a tree walk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeRecord {
    /// Children of `target` were removed and/or added after `previous_sibling` (0: first).
    ChildList {
        /// The parent whose children changed.
        target: NodeId,
        /// Removed children.
        removed: Vec<NodeId>,
        /// Added children, in order.
        added: Vec<Added>,
        /// The sibling the added nodes follow, or 0.
        previous_sibling: NodeId,
    },
    /// An attribute of `target` was set (`Some`) or removed (`None`).
    Attributes {
        /// The element.
        target: NodeId,
        /// Attribute name.
        name: String,
        /// The current value.
        value: Option<String>,
    },
    /// The text of a text or comment node changed.
    CharacterData {
        /// The node.
        target: NodeId,
        /// The current text.
        value: String,
    },
}

/// The consumer's DOM stream state machine (sans I/O).
///
/// Order of calls: make changes with the mutation methods, [`Consumer::apply_records`] or
/// [`Consumer::update_to`]; call [`Consumer::flush`] when the link can take a patch, then drain
/// [`Consumer::poll_message`] until it returns `None` and send what it returned on the DOM
/// stream. Feed `ACK` and `RESYNC` from the agent to [`Consumer::handle_message`] and drain
/// again.
///
/// ```
/// use tandem_engine::{Consumer, parse_html, Agent};
/// use tandem_protocol::Limits;
///
/// let page = parse_html("<p id=a>hello</p>", Limits::DEFAULT);
/// let mut consumer = Consumer::new(page, "https://example.com/", Limits::DEFAULT);
/// let mut agent = Agent::new(Limits::DEFAULT);
/// let dom = consumer.dom();
/// let p = dom.preorder(0).find(|&id| dom.node(id).and_then(|n| n.element()).is_some_and(|e| e.name == "p")).unwrap();
/// consumer.set_attr(p, "class", "greeting").unwrap();
/// consumer.flush();
/// while let Some(msg) = consumer.poll_message() {
///     agent.handle_message(msg).unwrap();
/// }
/// assert_eq!(agent.tree_hash(), Some(consumer.tree_hash()));
/// ```
#[derive(Debug)]
pub struct Consumer {
    dom: Dom,
    shadow: Dom,
    url: String,
    epoch: u32,
    started: bool,
    seq: u64,
    acked: u64,
    synced: bool,
    enc: SymEncoder,
    touched: HashSet<NodeId>,
    parents: HashSet<NodeId>,
    removed: Vec<NodeId>,
    out: VecDeque<Queued>,
    limits: Limits,
    part_bytes: usize,
    fold_bytes: usize,
    fallbacks: u64,
    policy: MaskPolicy,
    /// Set while [`Consumer::update_to`] runs: its target is masked already.
    raw: bool,
    /// Ids the page's capture layer knows that stand inside blocked elements: not in the tree.
    swallowed: HashSet<NodeId>,
    /// Content-addressed resources (spec §14), when enabled.
    resources: Option<Box<Resources>>,
    /// Patches handed out by [`Consumer::poll_message`] and not yet acknowledged, oldest first:
    /// what a continuation re-sends after a resumption (spec §3.5).
    resend: VecDeque<Patch>,
    /// Whether more patches went unacknowledged than [`MAX_RESEND`]: the log stopped, and a
    /// resumption starts a new epoch instead.
    resend_overflow: bool,
    /// How many messages at the front of `out` are re-sent copies already in `resend`.
    replaying: usize,
    /// The tree hash (16 bytes, spec §6.3) after each sequence of the epoch from the oldest one
    /// the agent may still acknowledge: the latest acknowledged one, then those queued after it.
    /// An `ACK` is checked against it (spec §7.16). At most [`MAX_SENT_HASHES`], oldest dropped.
    sent_hashes: VecDeque<(u64, TreeHash)>,
    /// `ACK`s whose hash differed from the consumer's tree at that sequence.
    ack_mismatches: u64,
}

/// Most tree hashes of unacknowledged sequences the consumer keeps to check `ACK`s against
/// (24 bytes each); an `ACK` for a sequence older than these is taken on trust.
pub const MAX_SENT_HASHES: usize = 4096;

/// Most unacknowledged patches the consumer keeps for a resumption (spec §3.5). A session that
/// keeps one patch in flight (`peers::pump`) never holds more than one; past this bound a
/// resumption sends a snapshot instead.
pub const MAX_RESEND: usize = 256;

/// A frame for the DOM stream, from [`Consumer::poll_frame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomFrame {
    /// What the frame carries.
    pub kind: DomFrameKind,
    /// The frame: header, then body (a snapshot part's buffer may have room in front of it,
    /// left by [`SnapshotWriter`](tandem_protocol::SnapshotWriter)).
    pub bytes: FrameBuf,
}

/// What a [`DomFrame`] carries, for a sender's bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomFrameKind {
    /// Part `part` of `epoch`'s snapshot; `last` when it is the part with the tree hash.
    Snapshot {
        /// Sync epoch.
        epoch: u32,
        /// Part number, from 0.
        part: u32,
        /// Whether this is the last part.
        last: bool,
    },
    /// Patch `seq` of `epoch`.
    Patch {
        /// Sync epoch.
        epoch: u32,
        /// Sequence number.
        seq: u64,
    },
}

impl DomFrameKind {
    /// The sync epoch the frame belongs to.
    pub fn epoch(self) -> u32 {
        match self {
            DomFrameKind::Snapshot { epoch, .. } | DomFrameKind::Patch { epoch, .. } => epoch,
        }
    }
}

/// What waits to be sent on the DOM stream.
#[derive(Debug, Clone)]
enum Queued {
    /// A snapshot part, written as its frame straight from the tree when it was queued.
    Snapshot(SnapshotFrame),
    /// A snapshot that could not be encoded (string indexes the wire cannot carry, which the
    /// consumer's own encoder never gives): [`Consumer::poll_frame`] reports it.
    Unencodable(EncodeError),
    /// A patch, encoded when it is polled; kept as a message for a resumption's re-sending.
    Patch(Patch),
}

/// How a DOM stream continues after a resumption (spec §3.5), from [`Consumer::resume`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumption {
    /// The new stream re-sends the patches the agent has not acknowledged (this many) and then
    /// carries on with the epoch.
    Continue {
        /// Patches queued again.
        resent: usize,
    },
    /// The new stream starts a new epoch with a snapshot: the agent had not acknowledged the
    /// snapshot, or re-sending would cost more.
    Snapshot,
}

impl Consumer {
    /// A consumer for the page `dom` at `url` with the default masking policy (automatic rules
    /// and marker attributes, spec §12); queues the first snapshot (epoch 0).
    pub fn new(dom: Dom, url: &str, limits: Limits) -> Self {
        Self::with_policy(dom, url, limits, MaskPolicy::default())
    }

    /// A consumer for the page `dom` at `url` that masks with `policy`; queues the first
    /// snapshot (epoch 0) of the masked page.
    pub fn with_policy(dom: Dom, url: &str, limits: Limits, policy: MaskPolicy) -> Self {
        Self::build(dom, url, limits, policy, None)
    }

    /// A consumer that masks with `policy` and then sends resources by content address
    /// (spec §14): `resources` rewrites the masked page's references before the first
    /// snapshot, and every changed or inserted node before each patch is built, so the tree,
    /// its hash and every frame carry `tandem:blake3:` URIs. The blobs are served from
    /// [`Consumer::resources_mut`].
    pub fn with_resources(
        dom: Dom,
        url: &str,
        limits: Limits,
        policy: MaskPolicy,
        resources: Resources,
    ) -> Self {
        Self::build(dom, url, limits, policy, Some(Box::new(resources)))
    }

    fn build(
        mut dom: Dom,
        url: &str,
        limits: Limits,
        policy: MaskPolicy,
        mut resources: Option<Box<Resources>>,
    ) -> Self {
        policy.apply(&mut dom);
        if let Some(r) = resources.as_deref_mut() {
            r.rewrite_tree(&mut dom, &policy, url);
        }
        let mut c = Consumer {
            shadow: Dom::new(limits),
            dom,
            url: url.to_owned(),
            epoch: 0,
            started: false,
            seq: 0,
            acked: 0,
            synced: false,
            enc: SymEncoder::new(limits),
            touched: HashSet::new(),
            parents: HashSet::new(),
            removed: Vec::new(),
            out: VecDeque::new(),
            limits,
            part_bytes: snapshot::DEFAULT_PART_BYTES,
            fold_bytes: snapshot::DEFAULT_PART_BYTES,
            fallbacks: 0,
            sent_hashes: VecDeque::new(),
            ack_mismatches: 0,
            policy,
            raw: false,
            swallowed: HashSet::new(),
            resources,
            resend: VecDeque::new(),
            resend_overflow: false,
            replaying: 0,
        };
        c.queue_snapshot();
        c
    }

    /// The consumer's resources, when enabled ([`Consumer::with_resources`]).
    pub fn resources(&self) -> Option<&Resources> {
        self.resources.as_deref()
    }

    /// The consumer's resources, mutably: the [`BlobSource`](crate::resource::BlobSource)
    /// a [`ResourceSender`](crate::resource::ResourceSender) serves from, and the new
    /// references to offer after each flush.
    pub fn resources_mut(&mut self) -> Option<&mut Resources> {
        self.resources.as_deref_mut()
    }

    /// The masking policy in force.
    pub fn policy(&self) -> &MaskPolicy {
        &self.policy
    }

    /// Replaces the masking policy and re-masks the whole tree; the changes leave with the
    /// next patch. Content masked before stays masked (masking is lossy).
    pub fn set_policy(&mut self, policy: MaskPolicy) {
        self.policy = policy;
        self.remask(DOCUMENT_ID);
    }

    /// Sets the target size of snapshot parts for later snapshots.
    pub fn set_part_bytes(&mut self, bytes: usize) {
        self.part_bytes = bytes.max(1);
        self.fold_bytes = self.part_bytes;
    }

    /// Sets the above-the-fold cut for the next snapshots (spec §7.14): part 0 ends after
    /// about `bytes` of records, the top of the page in document order, which the agent can
    /// show before the rest arrives; later parts keep the part size. Call after
    /// [`Consumer::set_part_bytes`], which resets it to the part size.
    pub fn set_fold_bytes(&mut self, bytes: usize) {
        self.fold_bytes = bytes.max(1);
    }

    /// Starts a new epoch: renumbers the tree in document order, forgets pending changes and the
    /// string table, and queues a full snapshot (spec §7.14). Anything not yet sent of the old
    /// epoch is dropped: the snapshot supersedes it.
    pub fn queue_snapshot(&mut self) {
        if self.started {
            self.epoch = self.epoch.wrapping_add(1);
        }
        self.started = true;
        if !self.dom.is_in_document_order() {
            self.dom = self.dom.renumbered();
            self.swallowed.clear();
        }
        self.clear_changes();
        self.seq = 0;
        self.acked = 0;
        self.synced = false;
        self.out.clear();
        self.resend.clear();
        self.resend_overflow = false;
        self.replaying = 0;
        match snapshot::encode_frames(
            &mut self.dom,
            self.epoch,
            &self.url,
            &mut self.enc,
            self.fold_bytes,
            self.part_bytes,
        ) {
            Ok(frames) => self.out.extend(frames.into_iter().map(Queued::Snapshot)),
            Err(e) => self.out.push_back(Queued::Unencodable(e)),
        }
        self.sent_hashes.clear();
        let root = self.dom.root_hash();
        self.remember_hash(0, &root);
        self.shadow = self.dom.clone();
    }

    fn remember_hash(&mut self, seq: u64, root: &[u8; 32]) {
        if self.sent_hashes.len() == MAX_SENT_HASHES {
            self.sent_hashes.pop_front();
        }
        self.sent_hashes.push_back((seq, hash::short(root)));
    }

    fn clear_changes(&mut self) {
        self.touched.clear();
        self.parents.clear();
        self.removed.clear();
    }

    /// The page's tree.
    pub fn dom(&self) -> &Dom {
        &self.dom
    }

    /// The current tree hash (spec §6.3).
    pub fn tree_hash(&mut self) -> [u8; 32] {
        self.dom.root_hash()
    }

    /// The current epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The sequence number of the last patch queued.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The last sequence the agent acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// How many times a patch failed its own check and a snapshot was sent instead (a bug if
    /// ever nonzero; counted so tests and operators can see it).
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks
    }

    /// How many `ACK`s named a tree hash other than the consumer's at that sequence; each
    /// started a new epoch (spec §7.16).
    pub fn ack_mismatches(&self) -> u64 {
        self.ack_mismatches
    }

    /// Whether the agent has acknowledged everything: the current epoch's snapshot and every
    /// patch queued, with no change pending and nothing left to send.
    pub fn is_synced(&self) -> bool {
        self.synced && self.acked == self.seq && !self.has_pending() && self.out.is_empty()
    }

    /// Whether the agent has acknowledged everything sent so far: the current epoch's snapshot
    /// and every patch, with nothing queued to send. Changes may be pending; a session that
    /// flushes only when this holds keeps at most one patch in flight, so the agent is never
    /// more than one round trip and one send behind the page (spec §7.16).
    pub fn is_acked(&self) -> bool {
        self.synced && self.acked == self.seq && self.out.is_empty()
    }

    /// Whether changes are waiting for [`Consumer::flush`].
    pub fn has_pending(&self) -> bool {
        !self.touched.is_empty() || !self.parents.is_empty() || !self.removed.is_empty()
    }

    /// Sets an attribute, masked as the policy says (spec §12). An attribute that decides
    /// masking (a marker, `class` or `id` with selectors, `type`, `autocomplete`) re-masks the
    /// element's subtree. Changes to a block placeholder are ignored: it stays blocked.
    pub fn set_attr(&mut self, node: NodeId, name: &str, value: &str) -> Result<(), EngineError> {
        if self.swallowed.contains(&node) {
            return Ok(());
        }
        if self.raw {
            self.dom.set_attr(node, name, value)?;
            self.touched.insert(node);
            return Ok(());
        }
        let Some(el) = self.dom.node(node).and_then(|n| n.element()) else {
            // Not an element (or no node): the tree reports the error.
            return self.dom.set_attr(node, name, value);
        };
        if el.attr(mask::BLOCKED).is_some() {
            return Ok(());
        }
        if self.policy.affects(name) {
            self.dom.set_attr(node, name, value)?;
            self.touched.insert(node);
            self.remask(node);
            return Ok(());
        }
        let parent = self.dom.parent(node).unwrap_or(DOCUMENT_ID);
        let (chain, ctx) = self.policy.context(&self.dom, parent);
        let m = self.policy.marks(el, &chain);
        let c = self.policy.inner(ctx, el, &m);
        let auto_input = m.auto && el.ns == Ns::Html && el.name == "input";
        match self.policy.attr_fix(el, c, auto_input, name, value) {
            mask::AttrFix::Keep => self.dom.set_attr(node, name, value)?,
            mask::AttrFix::Set(v) => self.dom.set_attr(node, name, &v)?,
            mask::AttrFix::Remove => self.dom.remove_attr(node, name)?,
        }
        self.touched.insert(node);
        Ok(())
    }

    /// Removes an attribute (ignored on a block placeholder; an attribute that decides masking
    /// re-masks the subtree, though what was masked stays masked).
    pub fn remove_attr(&mut self, node: NodeId, name: &str) -> Result<(), EngineError> {
        if self.swallowed.contains(&node) {
            return Ok(());
        }
        if !self.raw
            && self
                .dom
                .node(node)
                .and_then(|n| n.element())
                .is_some_and(|e| e.attr(mask::BLOCKED).is_some())
        {
            return Ok(());
        }
        self.dom.remove_attr(node, name)?;
        self.touched.insert(node);
        if !self.raw && self.policy.affects(name) {
            self.remask(node);
        }
        Ok(())
    }

    /// Replaces the text of a text or comment node, masked as its place in the tree says.
    pub fn set_text(&mut self, node: NodeId, text: &str) -> Result<(), EngineError> {
        if self.swallowed.contains(&node) {
            return Ok(());
        }
        let masked = if self.raw {
            None
        } else {
            let comment = matches!(
                self.dom.node(node).map(|n| &n.kind),
                Some(NodeKind::Comment(_))
            );
            let parent = self.dom.parent(node).unwrap_or(DOCUMENT_ID);
            let (_, ctx) = self.policy.context(&self.dom, parent);
            self.policy.text_fix(ctx, text, comment)
        };
        let text = masked.as_deref().unwrap_or(text);
        // The tree's text of a blob reference is the reference, not the page's text: a page
        // text equal to it is a change all the same (spec §14.3).
        if self.dom.text(node) == Some(text) && !self.dom.is_blob_reference(node) {
            return Ok(());
        }
        self.dom.set_text(node, text)?;
        self.touched.insert(node);
        Ok(())
    }

    /// Removes a node and its subtree.
    pub fn remove(&mut self, node: NodeId) -> Result<(), EngineError> {
        if self.swallowed.remove(&node) {
            return Ok(());
        }
        if !self.dom.contains(node) {
            return Err(EngineError::NoSuchNode {
                field: "remove",
                id: node,
            });
        }
        // Every node the agent has in this subtree is noted: one may sit elsewhere in the
        // shadow (moved here since the last flush) and needs its own removal.
        let known: Vec<NodeId> = self
            .dom
            .preorder(node)
            .filter(|&n| self.shadow.contains(n))
            .collect();
        self.dom.remove(node)?;
        self.removed.extend(known);
        Ok(())
    }

    /// Moves a node under `parent` after `prev` (0: first); re-masks it in its new place. A
    /// node moved into a blocked element leaves the tree (its id is still accepted).
    pub fn move_node(
        &mut self,
        node: NodeId,
        parent: NodeId,
        prev: NodeId,
    ) -> Result<(), EngineError> {
        if !self.raw && self.swallows(parent) {
            return self.swallow(node);
        }
        self.dom.move_node(node, parent, prev)?;
        self.parents.insert(parent);
        self.remask(node);
        Ok(())
    }

    /// Whether nodes put under `parent` stand inside a blocked element.
    fn swallows(&self, parent: NodeId) -> bool {
        self.swallowed.contains(&parent)
            || self
                .dom
                .node(parent)
                .and_then(|n| n.element())
                .is_some_and(|e| e.attr(mask::BLOCKED).is_some())
    }

    /// Takes `node`'s subtree out of the tree because it now stands inside a blocked element;
    /// its ids stay known so that later changes to them are ignored.
    fn swallow(&mut self, node: NodeId) -> Result<(), EngineError> {
        if self.swallowed.contains(&node) {
            return Ok(());
        }
        if !self.dom.contains(node) {
            return Err(EngineError::NoSuchNode {
                field: "move",
                id: node,
            });
        }
        let ids: Vec<NodeId> = self.dom.preorder(node).collect();
        self.remove(node)?;
        self.swallowed.extend(ids);
        Ok(())
    }

    /// Re-masks the subtree at `root` where it stands (after a change that may mask it).
    fn remask(&mut self, root: NodeId) {
        if self.raw || !self.dom.contains(root) {
            return;
        }
        let mut fixes = Vec::new();
        {
            let parent = self.dom.parent(root).unwrap_or(DOCUMENT_ID);
            let roots = if root == DOCUMENT_ID {
                self.dom.children(DOCUMENT_ID).to_vec()
            } else {
                vec![root]
            };
            let (chain, ctx) = if root == DOCUMENT_ID {
                (Vec::new(), self.policy.root_ctx())
            } else {
                self.policy.context(&self.dom, parent)
            };
            self.policy.plan(&self.dom, &roots, &chain, ctx, &mut fixes);
        }
        for f in fixes {
            let (n, ok) = match f {
                Fix::SetAttr(n, k, v) => (n, self.dom.set_attr(n, &k, &v).is_ok()),
                Fix::RemoveAttr(n, k) => (n, self.dom.remove_attr(n, &k).is_ok()),
                Fix::SetText(n, t) => (n, self.dom.set_text(n, &t).is_ok()),
                Fix::Clear(n) => {
                    for c in self.dom.children(n).to_vec() {
                        let _ = self.swallow(c);
                    }
                    (n, true)
                }
            };
            if ok {
                self.touched.insert(n);
            } else {
                // Fail closed: a node that cannot be masked leaves (never expected).
                let _ = self.swallow(n);
            }
        }
    }

    /// Inserts a copy of the subtree `src_root` of `src` under `parent` after `prev`; returns
    /// the new node's id.
    pub fn insert_copy(
        &mut self,
        parent: NodeId,
        prev: NodeId,
        src: &Dom,
        src_root: NodeId,
    ) -> Result<NodeId, EngineError> {
        self.insert(parent, prev, patch::subtree(src, src_root))
    }

    /// Inserts nodes given in preorder with their child counts under `parent` after `prev`
    /// (0: first); returns the first's id (the others follow in preorder).
    pub fn insert(
        &mut self,
        parent: NodeId,
        prev: NodeId,
        nodes: Vec<(NodeKind, u32)>,
    ) -> Result<NodeId, EngineError> {
        if nodes.is_empty() {
            return Err(EngineError::BadShape {
                field: "insert.nodes",
                detail: "nothing to insert",
            });
        }
        if !self.raw && self.swallows(parent) {
            return self.insert_swallowed(nodes.len());
        }
        let mut nodes = nodes;
        let clear = if self.raw {
            Vec::new()
        } else {
            self.mask_listing(parent, &mut nodes)
        };
        let first = self.dom.next_id();
        let op = Op::Insert {
            parent,
            prev,
            first,
            nodes,
        };
        if let Err(e) = op.apply(&mut self.dom) {
            // Leave no half-inserted listing behind.
            let mut b = first;
            while b < self.dom.next_id() {
                if self.dom.contains(b) && self.dom.parent(b).is_none_or(|p| p < first) {
                    let _ = self.dom.remove(b);
                }
                b += 1;
            }
            return Err(e);
        }
        self.parents.insert(parent);
        for i in clear {
            let id = first + i as NodeId;
            for c in self.dom.children(id).to_vec() {
                self.swallow(c)?;
            }
        }
        Ok(first)
    }

    /// Masks a listing about to be inserted under `parent`; returns the indexes of block
    /// placeholders, whose (scrubbed) children are to be taken out after the insert.
    fn mask_listing(&self, parent: NodeId, nodes: &mut [(NodeKind, u32)]) -> Vec<usize> {
        let mut fixes = Vec::new();
        {
            let listing = Listing::new(nodes);
            let (chain, ctx) = self.policy.context(&self.dom, parent);
            self.policy
                .plan(&listing, &listing.roots, &chain, ctx, &mut fixes);
        }
        let mut clear = Vec::new();
        for f in fixes {
            match f {
                Fix::SetAttr(i, k, v) => {
                    if let NodeKind::Element(e) = &mut nodes[i].0 {
                        match e.attrs.iter_mut().find(|(n, _)| *n == k) {
                            Some((_, old)) => *old = v,
                            None => e.attrs.push((k, v)),
                        }
                    }
                }
                Fix::RemoveAttr(i, k) => {
                    if let NodeKind::Element(e) = &mut nodes[i].0 {
                        e.attrs.retain(|(n, _)| *n != k);
                    }
                }
                Fix::SetText(i, t) => {
                    if let NodeKind::Text(old) | NodeKind::Comment(old) = &mut nodes[i].0 {
                        *old = t;
                    }
                }
                Fix::Clear(i) => clear.push(i),
            }
        }
        // The content under a placeholder never enters the tree: its entries are inserted
        // empty (so that ids stay as the caller expects) and taken out right after.
        for &i in &clear {
            let mut left = nodes[i].1 as usize;
            let mut k = i + 1;
            while left > 0 && k < nodes.len() {
                left += nodes[k].1 as usize;
                left -= 1;
                nodes[k].0 = match &nodes[k].0 {
                    NodeKind::Element(e) => NodeKind::Element(crate::dom::Element {
                        ns: e.ns,
                        name: e.name.clone(),
                        attrs: Vec::new(),
                    }),
                    NodeKind::Comment(_) => NodeKind::Comment(String::new()),
                    _ => NodeKind::Text(String::new()),
                };
                k += 1;
            }
        }
        clear
    }

    /// Gives out `count` ids for nodes inserted into a blocked element, which do not enter
    /// the tree; returns the first.
    fn insert_swallowed(&mut self, count: usize) -> Result<NodeId, EngineError> {
        let first = self.dom.next_id();
        for _ in 0..count {
            let id = self.dom.create(NodeKind::Text(String::new()))?;
            self.dom.remove(id)?;
            self.swallowed.insert(id);
        }
        Ok(first)
    }

    /// Applies change records as a `MutationObserver` reports them (issue 3, spec §6.5). Nodes
    /// removed and added again in the same batch are moved, not recreated. Returns the ids of
    /// the roots of the new subtrees, in the order they were added.
    pub fn apply_records(
        &mut self,
        records: impl IntoIterator<Item = ChangeRecord>,
    ) -> Result<Vec<NodeId>, EngineError> {
        let mut limbo: Vec<NodeId> = Vec::new();
        let mut new_roots = Vec::new();
        let mut result = Ok(());
        for rec in records {
            let r = match rec {
                ChangeRecord::Attributes {
                    target,
                    name,
                    value: Some(v),
                } => self.set_attr(target, &name, &v),
                ChangeRecord::Attributes {
                    target,
                    name,
                    value: None,
                } => self.remove_attr(target, &name),
                ChangeRecord::CharacterData { target, value } => self.set_text(target, &value),
                ChangeRecord::ChildList {
                    target,
                    removed,
                    added,
                    previous_sibling,
                } => self.child_list(
                    target,
                    removed,
                    added,
                    previous_sibling,
                    &mut limbo,
                    &mut new_roots,
                ),
            };
            if let Err(e) = r {
                result = Err(e);
                break;
            }
        }
        // Removed nodes that were not added again are gone for good.
        for id in limbo {
            if self.dom.contains(id) && self.dom.parent(id).is_none() {
                self.remove(id)?;
            }
        }
        result.map(|()| new_roots)
    }

    fn child_list(
        &mut self,
        target: NodeId,
        removed: Vec<NodeId>,
        added: Vec<Added>,
        mut prev: NodeId,
        limbo: &mut Vec<NodeId>,
        new_roots: &mut Vec<NodeId>,
    ) -> Result<(), EngineError> {
        let blocked = !self.raw && self.swallows(target);
        for id in removed {
            if blocked && self.swallowed.contains(&id) {
                // Inside a blocked element: the tree never had it.
                continue;
            }
            if self.dom.parent(id) != Some(target) {
                return Err(EngineError::NotAChild {
                    field: "records.removed",
                    parent: target,
                    prev: id,
                });
            }
            self.dom.detach(id, "records.removed")?;
            limbo.push(id);
        }
        for a in added {
            prev = match a {
                Added::New(nodes) => {
                    let id = self.insert(target, prev, nodes)?;
                    new_roots.push(id);
                    id
                }
                Added::Existing(id) if blocked => {
                    self.swallow(id)?;
                    id
                }
                Added::Existing(id) => {
                    if self.dom.parent(id).is_some() {
                        self.dom.move_node(id, target, prev)?;
                    } else {
                        self.dom.attach(id, target, prev)?;
                    }
                    self.parents.insert(target);
                    self.remask(id);
                    id
                }
            };
        }
        Ok(())
    }

    /// Brings the tree to the content of `target`, a tree that shares no ids with it (spec
    /// §6.5; see [`diff`]), recording the changes.
    ///
    /// `target` is masked in place first (spec §12), so the diff only ever sees masked
    /// content and the tree ends equal to the masked target.
    pub fn update_to(&mut self, target: &mut Dom) -> Result<(), EngineError> {
        diff::update(self, target)
    }

    /// While on, mutations are recorded as they are, not masked: the diff brings the tree to
    /// a target that is masked already.
    pub(crate) fn set_syncing(&mut self, on: bool) {
        self.raw = on;
    }

    /// Turns the changes since the last flush into one `PATCH` (spec §7.15) on the outgoing
    /// queue. Returns whether a message was queued (a patch, or a snapshot when a new epoch is
    /// due because ids ran low).
    pub fn flush(&mut self) -> bool {
        if !self.has_pending() {
            return false;
        }
        if self.dom.next_id() > u64::from(self.limits.max_node_id) / 4 * 3 {
            // Ids are running out: a new epoch renumbers from 1 (spec §6.1).
            self.queue_snapshot();
            return true;
        }
        if let Some(r) = self.resources.as_deref_mut() {
            // References of what changed become addresses before anything is encoded.
            r.rewrite_changes(
                &mut self.dom,
                &self.shadow,
                &self.policy,
                &self.url,
                &self.touched,
                &self.parents,
            );
        }
        let mut ops = Vec::new();
        let built = self.build_ops(&mut ops);
        self.clear_changes();
        if built.is_ok() && ops.is_empty() {
            return false;
        }
        if built.is_err() || self.shadow.root_hash() != self.dom.root_hash() {
            // The patch would not reproduce the page: never let the agent diverge.
            self.fallbacks += 1;
            self.queue_snapshot();
            return true;
        }
        let ops = patch::fold_moves(
            ops.iter().map(|op| op.encode(&mut self.enc)).collect(),
            self.limits.max_list as usize,
        );
        self.seq += 1;
        let root = self.dom.root_hash();
        self.remember_hash(self.seq, &root);
        let hash = hash::check(&root);
        self.out.push_back(Queued::Patch(Patch {
            epoch: self.epoch,
            seq: self.seq,
            ops,
            hash,
        }));
        true
    }

    /// Appends to `ops` the operations that take the shadow to the page, looking only at the
    /// touched places, and applies them to the shadow as it goes: which removals are needed
    /// depends on where the moves before them left the agent's nodes.
    fn build_ops(&mut self, ops: &mut Vec<Op>) -> Result<(), EngineError> {
        let mut parents: Vec<(u32, NodeId)> = self
            .parents
            .iter()
            .filter(|&&p| self.dom.contains(p))
            .map(|&p| (self.dom.depth(p), p))
            .collect();
        parents.sort_unstable();
        let mut done = HashSet::new();
        let mut placed = HashSet::new();
        for (_, p) in parents {
            self.place_children(p, ops, &mut done, &mut placed);
        }
        let mut touched: Vec<NodeId> = self.touched.iter().copied().collect();
        touched.sort_unstable();
        for n in touched {
            if self.shadow.contains(n) && self.dom.contains(n) {
                self.content_ops(n, ops);
            }
        }
        for op in ops.iter() {
            op.apply(&mut self.shadow)?;
        }
        let applied = ops.len();
        let mut seen = HashSet::new();
        for &r in &self.removed {
            if !self.shadow.contains(r) || self.dom.contains(r) || !seen.insert(r) {
                continue;
            }
            // Covered when a shadow ancestor is removed too.
            let mut up = self.shadow.parent(r);
            let mut covered = false;
            while let Some(a) = up {
                if !self.dom.contains(a) {
                    covered = true;
                    break;
                }
                up = self.shadow.parent(a);
            }
            if !covered {
                ops.push(Op::Remove { node: r });
            }
        }
        for op in &ops[applied..] {
            op.apply(&mut self.shadow)?;
        }
        Ok(())
    }

    /// Emits the inserts and moves that give `p` its final children, in order.
    fn place_children(
        &self,
        p: NodeId,
        ops: &mut Vec<Op>,
        done: &mut HashSet<NodeId>,
        placed: &mut HashSet<NodeId>,
    ) {
        if !done.insert(p) {
            return;
        }
        let kids = self.dom.children(p).to_vec();
        let stable = self.stable_children(p, &kids);
        let mut prev = 0;
        for &c in &kids {
            if placed.contains(&c) {
                // Inserted with an ancestor's listing.
            } else if !self.shadow.contains(c) {
                let (nodes, run) = self.new_run(c, placed);
                ops.push(Op::Insert {
                    parent: p,
                    prev,
                    first: c,
                    nodes,
                });
                for m in run {
                    if self.dom.children(m).iter().any(|k| !placed.contains(k)) {
                        self.place_children(m, ops, done, placed);
                    }
                }
            } else if !stable.contains(&c) {
                ops.push(Op::Move {
                    node: c,
                    parent: p,
                    prev,
                });
            }
            prev = c;
        }
    }

    /// Old children of `p` that stay where they are: those already under `p` in the shadow,
    /// in the longest run whose shadow order is kept.
    fn stable_children(&self, p: NodeId, kids: &[NodeId]) -> HashSet<NodeId> {
        if !self.shadow.contains(p) {
            return HashSet::new();
        }
        let pos: HashMap<NodeId, usize> = self
            .shadow
            .children(p)
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, i))
            .collect();
        let seq: Vec<(NodeId, usize)> = kids
            .iter()
            .filter_map(|c| pos.get(c).map(|&i| (*c, i)))
            .collect();
        longest_increasing(&seq)
    }

    /// The largest listing of new nodes from `c` in preorder whose ids run consecutively from
    /// `c` (spec §6.1); nodes that break the run are placed later by their parents.
    fn new_run(
        &self,
        c: NodeId,
        placed: &mut HashSet<NodeId>,
    ) -> (Vec<(NodeKind, u32)>, Vec<NodeId>) {
        let mut run = Vec::new();
        let mut expected = c;
        let mut stack = vec![c];
        while let Some(n) = stack.pop() {
            if n != expected || self.shadow.contains(n) || placed.contains(&n) {
                continue;
            }
            expected += 1;
            placed.insert(n);
            run.push(n);
            stack.extend(self.dom.children(n).iter().rev());
        }
        let nodes = run
            .iter()
            .filter_map(|&n| {
                let node = self.dom.node(n)?;
                let kids = node
                    .children()
                    .iter()
                    .filter(|&&k| run_contains(&run, k))
                    .count();
                Some((node.kind.clone(), kids as u32))
            })
            .collect();
        (nodes, run)
    }

    /// Attribute and text operations that take an old node's content from the shadow's to the
    /// page's.
    fn content_ops(&self, n: NodeId, ops: &mut Vec<Op>) {
        let (Some(now), Some(was)) = (self.dom.node(n), self.shadow.node(n)) else {
            return;
        };
        match (&now.kind, &was.kind) {
            (NodeKind::Text(t), NodeKind::Text(o))
            | (NodeKind::Comment(t), NodeKind::Comment(o))
                if t != o =>
            {
                ops.push(match patch::text_edit(o, t) {
                    Some(e) => Op::EditText {
                        node: n,
                        edits: vec![e],
                    },
                    None => Op::SetText {
                        node: n,
                        text: t.clone(),
                    },
                });
            }
            (NodeKind::Element(e), NodeKind::Element(o)) if e.attrs != o.attrs => {
                attr_ops(n, &o.attrs, &e.attrs, ops);
            }
            _ => {}
        }
    }

    /// The next message to send on the DOM stream. Patches stay in a log until the agent
    /// acknowledges them, for [`Consumer::resume`].
    ///
    /// A snapshot part is read back from the frame it was written as
    /// ([`Consumer::poll_frame`] hands out that frame as it is); a snapshot that could not be
    /// encoded is reported only by `poll_frame`, and skipped here.
    pub fn poll_message(&mut self) -> Option<Message> {
        loop {
            match self.pop_queued()? {
                Queued::Snapshot(f) => {
                    if let Ok(s) = f.to_snapshot() {
                        return Some(Message::Snapshot(s));
                    }
                }
                Queued::Unencodable(_) => {}
                Queued::Patch(p) => return Some(Message::Patch(p)),
            }
        }
    }

    /// The next frame to send on the DOM stream: what [`Consumer::poll_message`] gives, as
    /// the bytes to write. Snapshot parts were written straight from the tree when they were
    /// queued, so this hands them out without encoding anything. Fails, consuming the
    /// message, when it cannot be encoded or its body exceeds the limits' `max_frame_body`
    /// (the session's limits: what the agent accepts).
    pub fn poll_frame(&mut self) -> Option<Result<DomFrame, EncodeError>> {
        Some(match self.pop_queued()? {
            Queued::Snapshot(f) => {
                let (len, max) = (f.body().len(), self.limits.max_frame_body);
                if len > max as usize {
                    Err(EncodeError::TooLarge {
                        message: "SNAPSHOT",
                        len,
                        max,
                    })
                } else {
                    let kind = DomFrameKind::Snapshot {
                        epoch: f.epoch(),
                        part: f.part(),
                        last: f.is_last(),
                    };
                    Ok(DomFrame {
                        kind,
                        bytes: f.into_frame(),
                    })
                }
            }
            Queued::Unencodable(e) => Err(e),
            Queued::Patch(p) => {
                let kind = DomFrameKind::Patch {
                    epoch: p.epoch,
                    seq: p.seq,
                };
                frame::to_frame(&Message::Patch(p), &self.limits).map(|bytes| DomFrame {
                    kind,
                    bytes: bytes.into(),
                })
            }
        })
    }

    /// Takes the next queued message, logging a patch for a resumption unless it is a copy
    /// already in the log.
    fn pop_queued(&mut self) -> Option<Queued> {
        let q = self.out.pop_front()?;
        if self.replaying > 0 {
            self.replaying -= 1;
        } else if let Queued::Patch(p) = &q
            && !self.resend_overflow
        {
            if self.resend.len() < MAX_RESEND {
                self.resend.push_back(p.clone());
            } else {
                self.resend.clear();
                self.resend_overflow = true;
            }
        }
        Some(q)
    }

    /// The connection under the DOM stream was replaced (spec §3.5): whatever was sent and not
    /// acknowledged may be lost. Queues, ahead of anything not yet sent, the patches the agent
    /// has not acknowledged — the same messages, so the string table stays in step — for a new
    /// DOM stream that continues the epoch; or, when the agent has not acknowledged the epoch's
    /// snapshot, the log overflowed, or the patches to re-send hold more operations than the
    /// page has nodes (a snapshot is then likely smaller), a new epoch's snapshot.
    ///
    /// The caller then writes [`Consumer::poll_message`]'s messages on a *new* DOM stream.
    pub fn resume(&mut self) -> Resumption {
        let ops: usize = self.resend.iter().map(|p| p.ops.len()).sum();
        if !self.synced || self.resend_overflow || ops > self.dom.len() {
            self.queue_snapshot();
            return Resumption::Snapshot;
        }
        // Messages not yet polled stay behind the copies; copies still waiting from an
        // earlier resumption are replaced by the full log.
        let fresh = self.out.split_off(self.replaying);
        self.out = self
            .resend
            .iter()
            .cloned()
            .map(Queued::Patch)
            .chain(fresh)
            .collect();
        self.replaying = self.resend.len();
        Resumption::Continue {
            resent: self.resend.len(),
        }
    }

    /// Handles a message from the agent: `ACK` records progress; `RESYNC` for the current epoch
    /// queues a new snapshot. Other messages are not the DOM stream's and are ignored. An `ACK`
    /// of the current epoch for a sequence number not sent yet is
    /// [`EngineError::UnsentAck`] (spec §7.16).
    pub fn handle_message(&mut self, msg: &Message) -> Result<(), EngineError> {
        match msg {
            Message::Ack(a) if a.epoch == self.epoch => {
                if a.seq > self.seq {
                    return Err(EngineError::UnsentAck {
                        epoch: a.epoch,
                        seq: a.seq,
                        last: self.seq,
                    });
                }
                while self.sent_hashes.front().is_some_and(|&(s, _)| s < a.seq) {
                    self.sent_hashes.pop_front();
                }
                if let Some(&(s, ours)) = self.sent_hashes.front()
                    && s == a.seq
                    && ours != a.hash
                {
                    // The agent holds another tree than the one sent (spec §7.16): a patch
                    // check that collided, or a faulty agent. Only a new epoch repairs that.
                    self.ack_mismatches += 1;
                    self.queue_snapshot();
                    return Ok(());
                }
                self.acked = self.acked.max(a.seq);
                self.synced = true;
                while self.resend.front().is_some_and(|p| p.seq <= self.acked) {
                    self.resend.pop_front();
                }
                Ok(())
            }
            Message::Resync(Resync { epoch, .. }) if *epoch == self.epoch => {
                self.queue_snapshot();
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Checks an agent's `CLICK` or `INPUT` against masking (spec §12.6, in the order of
    /// §13.3): a target that is not in the page — including a node inside a blocked element,
    /// which the tree never holds — is refused with `NoSuchNode`; a target that is masked,
    /// blocked or ignored, or lies inside such an element, with `Masked`, before anything
    /// looks at the value. Other messages pass. The mode, pause and the value's fit are
    /// [`hands::Authority`](crate::hands::Authority)'s to judge; it takes the consumer as its
    /// [`Protection`].
    pub fn check_action(&self, msg: &Message) -> Result<(), Refused> {
        let (id, node) = match msg {
            Message::Click(c) => (c.id, c.node),
            Message::Input(i) => (i.id, i.node),
            _ => return Ok(()),
        };
        let refuse = |code, detail: &str| {
            Err(Refused {
                id,
                code,
                detail: detail.to_owned(),
            })
        };
        if !self.dom.contains(node) {
            return refuse(RefusalCode::NoSuchNode, "no such element");
        }
        if self.protects_node(node) {
            return refuse(RefusalCode::Masked, "the field is masked");
        }
        Ok(())
    }

    /// Whether the policy keeps `node` from the agent: masked, blocked, ignored, inside such
    /// an element, or inside a blocked element (not in the tree at all).
    pub fn protects_node(&self, node: NodeId) -> bool {
        self.swallowed.contains(&node)
            || self.policy.level_of(&self.dom, node) != mask::Level::Visible
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn dom_mut(&mut self) -> &mut Dom {
        &mut self.dom
    }
}

/// The consumer protects what its policy masks (spec §12.6), and the ids inside blocked
/// elements; `dom` is expected to be the consumer's own tree.
impl Protection for Consumer {
    fn protects(&self, dom: &Dom, node: NodeId) -> bool {
        self.swallowed.contains(&node) || self.policy.level_of(dom, node) != mask::Level::Visible
    }
}

fn run_contains(run: &[NodeId], id: NodeId) -> bool {
    // A run is consecutive ids from its first.
    run.first()
        .is_some_and(|&f| id >= f && id < f + run.len() as NodeId)
}

/// The ids of the longest subsequence of `seq` whose positions increase (patience sorting,
/// O(n log n)).
fn longest_increasing(seq: &[(NodeId, usize)]) -> HashSet<NodeId> {
    let mut tails: Vec<usize> = Vec::new(); // index into seq of the smallest tail per length
    let mut back: Vec<Option<usize>> = vec![None; seq.len()];
    for (i, &(_, pos)) in seq.iter().enumerate() {
        let at = tails.partition_point(|&t| seq[t].1 < pos);
        back[i] = at.checked_sub(1).map(|j| tails[j]);
        if at == tails.len() {
            tails.push(i);
        } else {
            tails[at] = i;
        }
    }
    let mut out = HashSet::with_capacity(tails.len());
    let mut cur = tails.last().copied();
    while let Some(i) = cur {
        out.insert(seq[i].0);
        cur = back[i];
    }
    out
}

/// Operations that turn attribute list `was` into `now` under `SetAttr` (in place when present,
/// else appended) and `RemoveAttr` semantics (spec §6.5): attributes that keep their relative
/// order stay; the rest are removed and appended again in order.
fn attr_ops(n: NodeId, was: &[(Name, String)], now: &[(Name, String)], ops: &mut Vec<Op>) {
    let pos: HashMap<&str, usize> = was
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (&**k, i))
        .collect();
    let mut kept = HashSet::new();
    let mut last = None;
    for (k, _) in now {
        match pos.get(&**k) {
            Some(&i) if last.is_none_or(|l| i > l) => {
                kept.insert(&**k);
                last = Some(i);
            }
            _ => break,
        }
    }
    for (k, _) in was {
        if !kept.contains(&**k) {
            ops.push(Op::RemoveAttr {
                node: n,
                name: k.to_string(),
            });
        }
    }
    for (k, v) in now {
        let unchanged = kept.contains(&**k) && was.get(pos[&**k]).is_some_and(|(_, ov)| ov == v);
        if !unchanged {
            ops.push(Op::SetAttr {
                node: n,
                name: k.to_string(),
                value: v.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply_attrs(mut list: Vec<(Name, String)>, ops: &[Op]) -> Vec<(Name, String)> {
        for op in ops {
            match op {
                Op::SetAttr { name, value, .. } => match list.iter_mut().find(|(k, _)| k == name) {
                    Some((_, v)) => v.clone_from(value),
                    None => list.push((name.clone().into(), value.clone())),
                },
                Op::RemoveAttr { name, .. } => list.retain(|(k, _)| k != name),
                _ => unreachable!(),
            }
        }
        list
    }

    #[test]
    fn attribute_lists_reach_their_order() {
        let l = |s: &[(&str, &str)]| {
            s.iter()
                .map(|(a, b)| (Name::Owned(a.to_string()), b.to_string()))
                .collect::<Vec<_>>()
        };
        let cases = [
            (
                l(&[("a", "1"), ("b", "2"), ("c", "3")]),
                l(&[("a", "1"), ("c", "3"), ("b", "2")]),
            ),
            (l(&[("a", "1"), ("b", "2")]), l(&[("b", "9"), ("a", "1")])),
            (
                l(&[("a", "1"), ("b", "2")]),
                l(&[("a", "1"), ("b", "3"), ("c", "4")]),
            ),
            (l(&[("a", "1"), ("b", "2"), ("c", "3")]), l(&[("c", "3")])),
            (l(&[]), l(&[("x", "1")])),
        ];
        for (was, now) in cases {
            let mut ops = Vec::new();
            attr_ops(1, &was, &now, &mut ops);
            assert_eq!(
                apply_attrs(was.clone(), &ops),
                now,
                "{was:?} -> {now:?} via {ops:?}"
            );
        }
    }

    /// An `ACK` for a sequence number the consumer has not sent is the agent's violation,
    /// [`EngineError::UnsentAck`] with `UnexpectedMessage` (spec §7.16); the agent's own `ACK`
    /// is taken.
    #[test]
    fn an_ack_for_a_seq_never_sent_is_unsent_ack() {
        let page = crate::parse_html("<p>hi</p>", Limits::DEFAULT);
        let mut c = Consumer::new(page, "https://example.com/", Limits::DEFAULT);
        let mut agent = crate::Agent::new(Limits::DEFAULT);
        c.flush();
        while let Some(msg) = c.poll_message() {
            agent.handle_message(msg).unwrap();
        }
        let Some(Message::Ack(ack)) = agent.poll_message() else {
            panic!("the agent acknowledges the snapshot");
        };
        let ahead = Message::Ack(tandem_protocol::message::Ack { seq: 1, ..ack });
        let e = c.handle_message(&ahead).unwrap_err();
        assert_eq!(
            e,
            EngineError::UnsentAck {
                epoch: ack.epoch,
                seq: 1,
                last: 0
            }
        );
        assert_eq!(e.code(), tandem_protocol::ErrorCode::UnexpectedMessage);
        c.handle_message(&Message::Ack(ack)).unwrap();
        assert!(c.is_synced());
    }

    #[test]
    fn longest_increasing_keeps_the_ordered_run() {
        let seq = [(10, 3), (11, 0), (12, 1), (13, 5), (14, 2)];
        let keep = longest_increasing(&seq);
        assert_eq!(keep, [11, 12, 14].into_iter().collect());
    }
}
