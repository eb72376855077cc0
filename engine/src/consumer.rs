//! The consumer's side of the DOM stream (spec §7.14–§7.17): owns the page's tree, records
//! changes, and turns them into snapshots and patches.

use std::collections::VecDeque;

use tandem_protocol::message::{Patch, Resync};
use tandem_protocol::{Limits, Message, NodeId, SymEncoder};

use crate::dom::{Dom, NodeKind};
use crate::patch::{self, Op};
use crate::snapshot::{self, TreeBuilder};
use crate::{EngineError, diff, hash};

/// The consumer's DOM stream state machine (sans I/O).
///
/// Order of calls: make changes with the mutation methods (or [`Consumer::update_to`]), call
/// [`Consumer::flush`] when the link can take a patch, then drain [`Consumer::poll_message`]
/// until it returns `None` and send what it returned on the DOM stream. Feed `ACK` and
/// `RESYNC` from the agent to [`Consumer::handle_message`] and drain again.
///
/// ```
/// use tandem_engine::{Consumer, parse_html, Agent};
/// use tandem_protocol::Limits;
///
/// let page = parse_html("<p id=a>hello</p>", Limits::DEFAULT);
/// let mut consumer = Consumer::new(page, "https://example.com/", Limits::DEFAULT);
/// let mut agent = Agent::new(Limits::DEFAULT);
/// let p = consumer.dom().preorder(0).find(|&id| consumer.dom().node(id).and_then(|n| n.element()).is_some_and(|e| e.name == "p")).unwrap();
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
    url: String,
    epoch: u32,
    seq: u64,
    acked: u64,
    enc: SymEncoder,
    pending: Vec<Op>,
    out: VecDeque<Message>,
    limits: Limits,
    part_bytes: usize,
    started: bool,
    synced: bool,
}

impl Consumer {
    /// A consumer for the page `dom` at `url`; queues the first snapshot (epoch 0).
    pub fn new(dom: Dom, url: &str, limits: Limits) -> Self {
        let mut c = Consumer {
            dom,
            url: url.to_owned(),
            epoch: 0,
            seq: 0,
            acked: 0,
            enc: SymEncoder::new(limits),
            pending: Vec::new(),
            out: VecDeque::new(),
            limits,
            part_bytes: snapshot::DEFAULT_PART_BYTES,
            started: false,
            synced: false,
        };
        c.queue_snapshot();
        c
    }

    /// Sets the target size of snapshot parts for later snapshots.
    pub fn set_part_bytes(&mut self, bytes: usize) {
        self.part_bytes = bytes.max(1);
    }

    /// Starts a new epoch: renumbers the tree in document order, forgets pending changes and the
    /// string table, and queues a full snapshot (spec §7.14).
    pub fn queue_snapshot(&mut self) {
        if self.started {
            self.epoch = self.epoch.wrapping_add(1);
        }
        self.started = true;
        self.dom = self.dom.renumbered();
        self.pending.clear();
        self.seq = 0;
        self.acked = 0;
        self.synced = false;
        // Anything not yet sent of the old epoch is superseded.
        self.out.clear();
        for part in snapshot::encode(
            &mut self.dom,
            self.epoch,
            &self.url,
            &mut self.enc,
            self.part_bytes,
        ) {
            self.out.push_back(Message::Snapshot(part));
        }
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

    /// Whether the agent has acknowledged everything: the current epoch's snapshot and every
    /// patch queued, with no change pending and nothing left to send.
    pub fn is_synced(&self) -> bool {
        self.synced && self.acked == self.seq && self.pending.is_empty() && self.out.is_empty()
    }

    /// Whether changes are waiting for [`Consumer::flush`].
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Sets an attribute.
    pub fn set_attr(&mut self, node: NodeId, name: &str, value: &str) -> Result<(), EngineError> {
        if self
            .dom
            .node(node)
            .and_then(|n| n.element())
            .and_then(|e| e.attr(name))
            == Some(value)
        {
            return Ok(());
        }
        self.dom.set_attr(node, name, value)?;
        self.pending.push(Op::SetAttr {
            node,
            name: name.to_owned(),
            value: value.to_owned(),
        });
        Ok(())
    }

    /// Removes an attribute.
    pub fn remove_attr(&mut self, node: NodeId, name: &str) -> Result<(), EngineError> {
        if self
            .dom
            .node(node)
            .and_then(|n| n.element())
            .and_then(|e| e.attr(name))
            .is_none()
        {
            return Ok(());
        }
        self.dom.remove_attr(node, name)?;
        self.pending.push(Op::RemoveAttr {
            node,
            name: name.to_owned(),
        });
        Ok(())
    }

    /// Replaces the text of a text or comment node.
    pub fn set_text(&mut self, node: NodeId, text: &str) -> Result<(), EngineError> {
        if self.dom.text(node) == Some(text) {
            return Ok(());
        }
        self.dom.set_text(node, text)?;
        self.pending.push(Op::SetText {
            node,
            text: text.to_owned(),
        });
        Ok(())
    }

    /// Removes a node and its subtree.
    pub fn remove(&mut self, node: NodeId) -> Result<(), EngineError> {
        self.dom.remove(node)?;
        self.pending.push(Op::Remove { node });
        Ok(())
    }

    /// Moves a node under `parent` after `prev` (0: first).
    pub fn move_node(
        &mut self,
        node: NodeId,
        parent: NodeId,
        prev: NodeId,
    ) -> Result<(), EngineError> {
        self.dom.move_node(node, parent, prev)?;
        self.pending.push(Op::Move { node, parent, prev });
        Ok(())
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
        let nodes = patch::subtree(src, src_root);
        self.insert(parent, prev, nodes)
    }

    /// Inserts nodes given in preorder with their child counts; returns the first's id.
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
        if self.dom.node(parent).is_none() {
            return Err(EngineError::NoSuchNode {
                field: "insert.parent",
                id: parent,
            });
        }
        if prev != 0 && self.dom.parent(prev) != Some(parent) {
            return Err(EngineError::NotAChild {
                field: "insert.prev",
                parent,
                prev,
            });
        }
        let first = self.dom.next_id();
        let mut builder = TreeBuilder::new(parent, prev);
        for (kind, children) in &nodes {
            builder.add_kind(&mut self.dom, kind.clone(), *children)?;
        }
        builder.finish("insert.nodes")?;
        self.pending.push(Op::Insert {
            parent,
            prev,
            nodes,
        });
        Ok(first)
    }

    /// Brings the tree to the content of `target` with the fewest operations the diff finds,
    /// recording them as pending changes.
    pub fn update_to(&mut self, target: &mut Dom) -> Result<(), EngineError> {
        diff::update(self, target)
    }

    /// Turns pending changes into one `PATCH` (spec §7.15) on the outgoing queue. Returns
    /// whether a patch was queued.
    pub fn flush(&mut self) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        let ops: Vec<_> = self
            .pending
            .drain(..)
            .map(|op| op.encode(&mut self.enc))
            .collect();
        self.seq += 1;
        let hash = hash::short(&self.dom.root_hash());
        self.out.push_back(Message::Patch(Patch {
            epoch: self.epoch,
            seq: self.seq,
            ops,
            hash,
        }));
        true
    }

    /// The next message to send on the DOM stream.
    pub fn poll_message(&mut self) -> Option<Message> {
        self.out.pop_front()
    }

    /// Handles a message from the agent: `ACK` records progress; `RESYNC` for the current epoch
    /// queues a new snapshot. Other messages are not the DOM stream's and are ignored.
    pub fn handle_message(&mut self, msg: &Message) -> Result<(), EngineError> {
        match msg {
            Message::Ack(a) if a.epoch == self.epoch => {
                if a.seq > self.seq {
                    return Err(EngineError::Unexpected {
                        message: "ACK",
                        detail: format!("seq {} was never sent", a.seq),
                    });
                }
                self.acked = self.acked.max(a.seq);
                self.synced = true;
                Ok(())
            }
            Message::Resync(Resync { epoch, .. }) if *epoch == self.epoch => {
                self.queue_snapshot();
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn dom_mut(&mut self) -> &mut Dom {
        &mut self.dom
    }
}
