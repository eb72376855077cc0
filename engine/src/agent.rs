//! The agent's side of the DOM stream (spec §7.14–§7.17): rebuilds the page from snapshots and
//! patches and proves by hash that it holds what the consumer holds.

use std::collections::VecDeque;

use tandem_protocol::message::{Ack, Patch, Resync, ResyncReason, Snapshot};
use tandem_protocol::{DOCUMENT_ID, Limits, Message, SnapshotView, SymDecoder, TreeHash};

use crate::dom::{Dom, NodeKind};
use crate::error::hex;
use crate::snapshot::TreeBuilder;
use crate::{EngineError, hash, patch};

/// What happened on the agent's side, drained with [`Agent::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AgentEvent {
    /// A snapshot part was applied; `nodes` nodes are in the tree so far.
    Progress {
        /// The epoch.
        epoch: u32,
        /// Nodes received so far (the document node excluded).
        nodes: usize,
    },
    /// A snapshot is complete and its hash verified: the page can be shown.
    Rendered {
        /// The epoch.
        epoch: u32,
        /// Nodes in the tree.
        nodes: usize,
        /// The verified tree hash.
        hash: TreeHash,
    },
    /// A patch was applied and its hash verified.
    Patched {
        /// The epoch.
        epoch: u32,
        /// The patch's sequence number.
        seq: u64,
        /// The verified tree hash.
        hash: TreeHash,
    },
    /// The tree diverged from the consumer's or a patch could not be applied; a `RESYNC` is
    /// queued and patches are ignored until the next snapshot.
    Diverged {
        /// What went wrong.
        error: EngineError,
    },
}

#[derive(Debug)]
enum State {
    /// No snapshot yet, or waiting for a new one after divergence.
    Waiting,
    /// Receiving the parts of a snapshot.
    Building {
        epoch: u32,
        next_part: u32,
        builder: TreeBuilder,
        dom: Box<Dom>,
    },
    /// In sync at `seq` of `epoch`.
    Live { epoch: u32, seq: u64 },
}

/// The agent's DOM stream state machine (sans I/O).
///
/// Feed every message read from the DOM stream to [`Agent::handle_message`]; then drain
/// [`Agent::poll_message`] (ACK and RESYNC to send on the control stream) and
/// [`Agent::poll_event`]. Divergence is never silent: a wrong hash becomes
/// [`AgentEvent::Diverged`] and a `RESYNC`.
#[derive(Debug)]
pub struct Agent {
    dom: Dom,
    url: String,
    dec: SymDecoder,
    state: State,
    out: VecDeque<Message>,
    events: VecDeque<AgentEvent>,
    limits: Limits,
    last_epoch: Option<u32>,
}

impl Agent {
    /// An agent with an empty page.
    pub fn new(limits: Limits) -> Self {
        Agent {
            dom: Dom::new(limits),
            url: String::new(),
            dec: SymDecoder::new(limits),
            state: State::Waiting,
            out: VecDeque::new(),
            events: VecDeque::new(),
            limits,
            last_epoch: None,
        }
    }

    /// The page as last verified (during a snapshot, the previous page).
    pub fn dom(&self) -> &Dom {
        &self.dom
    }

    /// The part of a snapshot received so far, while one is arriving (spec §7.14): a prefix of
    /// the page in document order, the `head` and the top of the `body` first, which an agent
    /// may show before the rest arrives (viewport first). Not verified yet: its hash is checked
    /// when the last part comes.
    pub fn partial(&self) -> Option<&Dom> {
        match &self.state {
            State::Building { dom, .. } => Some(dom),
            _ => None,
        }
    }

    /// Whether the part of a snapshot received so far ([`Agent::partial`]) shows something:
    /// its `body` holds an element or a text that is not blank. A page's `head` comes first
    /// and can be most of it (a large inline style sheet sent without `RESOURCES`), so the
    /// first parts alone may show nothing; an agent that shows partial pages waits for this.
    pub fn partial_shows_body(&self) -> bool {
        let Some(dom) = self.partial() else {
            return false;
        };
        let Some(body) = dom.body() else {
            return false;
        };
        dom.children(body)
            .iter()
            .filter_map(|&c| dom.node(c))
            .any(|n| match &n.kind {
                NodeKind::Element(_) => true,
                NodeKind::Text(t) => !t.trim().is_empty(),
                _ => false,
            })
    }

    /// The page URL of the current snapshot.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the agent holds a verified page.
    pub fn is_live(&self) -> bool {
        matches!(self.state, State::Live { .. })
    }

    /// The current tree hash, when a verified page is held.
    pub fn tree_hash(&mut self) -> Option<[u8; 32]> {
        self.is_live().then(|| self.dom.root_hash())
    }

    /// The current page as HTML.
    pub fn to_html(&self) -> String {
        crate::html::to_html(&self.dom)
    }

    /// The current page as HTML with its resources taken from `blobs`, inline or as files
    /// named by address (spec §14.9); see [`resolve_page`](crate::resource::resolve_page).
    pub fn to_html_resolved(
        &self,
        blobs: &crate::resource::BlobStore,
        mode: &crate::resource::ResolveMode,
    ) -> crate::resource::ResolvedPage {
        crate::resource::resolve_page(&self.dom, blobs, mode)
    }

    /// Handles one message of the DOM stream. An error is also reported as
    /// [`AgentEvent::Diverged`] with a `RESYNC` queued; the caller only logs it.
    pub fn handle_message(&mut self, msg: Message) -> Result<(), EngineError> {
        let result = match msg {
            Message::Snapshot(s) => self.on_snapshot(s),
            Message::Patch(p) => self.on_patch(p),
            _ => Ok(()),
        };
        if let Err(e) = &result {
            self.diverged(e.clone());
        }
        result
    }

    /// Handles a `SNAPSHOT` read in place ([`SnapshotView::parse`] of a frame body): the same
    /// as [`Agent::handle_message`] with the decoded message, without an owned copy of each
    /// record first.
    pub fn handle_snapshot(&mut self, s: SnapshotView<'_>) -> Result<(), EngineError> {
        let records = s.records();
        let result =
            self.on_snapshot_part(s.epoch, s.part, s.url, s.hash, s.len(), |b, dom, dec| {
                for rec in records {
                    b.add_ref(dom, rec, dec, "snapshot.nodes")?;
                }
                Ok(())
            });
        if let Err(e) = &result {
            self.diverged(e.clone());
        }
        result
    }

    fn diverged(&mut self, error: EngineError) {
        let epoch = match &self.state {
            State::Building { epoch, .. } | State::Live { epoch, .. } => Some(*epoch),
            State::Waiting => self.last_epoch,
        };
        self.state = State::Waiting;
        if let Some(epoch) = epoch {
            let reason = match error {
                EngineError::HashMismatch { .. } => ResyncReason::HashMismatch,
                _ => ResyncReason::BadPatch,
            };
            self.out
                .push_back(Message::Resync(Resync { epoch, reason }));
        }
        self.events.push_back(AgentEvent::Diverged { error });
    }

    fn on_snapshot(&mut self, s: Snapshot) -> Result<(), EngineError> {
        let Snapshot {
            epoch,
            part,
            url,
            nodes,
            hash,
        } = s;
        let n = nodes.len();
        self.on_snapshot_part(epoch, part, &url, hash, n, |b, dom, dec| {
            for rec in nodes {
                b.add(dom, rec, dec, "snapshot.nodes")?;
            }
            Ok(())
        })
    }

    /// One part of a snapshot whose `count` records `add` puts into the tree being built.
    fn on_snapshot_part(
        &mut self,
        s_epoch: u32,
        s_part: u32,
        url: &str,
        hash: Option<TreeHash>,
        count: usize,
        add: impl FnOnce(&mut TreeBuilder, &mut Dom, &mut SymDecoder) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        // Parts of an epoch older than the newest one seen are stale bytes of a superseded
        // stream (spec §3): they are dropped, not treated as errors.
        if self.last_epoch.is_some_and(|last| s_epoch < last) {
            return Ok(());
        }
        if s_part == 0 {
            self.dec.reset();
            self.last_epoch = Some(s_epoch);
            url.clone_into(&mut self.url);
            self.state = State::Building {
                epoch: s_epoch,
                next_part: 0,
                builder: TreeBuilder::new(DOCUMENT_ID, 0, 1),
                dom: Box::new(Dom::new(self.limits)),
            };
        }
        let State::Building {
            epoch,
            next_part,
            builder,
            dom,
        } = &mut self.state
        else {
            // A later part without its part 0 (after a divergence): ignore until a new epoch.
            return Ok(());
        };
        if s_epoch != *epoch && s_part != 0 {
            // A later part of an epoch whose part 0 never came: ignore it.
            return Ok(());
        }
        if s_part != *next_part {
            return Err(EngineError::Unexpected {
                message: "SNAPSHOT",
                detail: format!(
                    "part {} of epoch {}, expected part {} of epoch {}",
                    s_part, s_epoch, next_part, epoch
                ),
            });
        }
        *next_part += 1;
        dom.reserve(count);
        add(builder, dom, &mut self.dec)?;
        let epoch = *epoch;
        let Some(announced) = hash else {
            self.events.push_back(AgentEvent::Progress {
                epoch,
                nodes: dom.len() - 1,
            });
            return Ok(());
        };
        builder.finish(dom, "snapshot.nodes")?;
        let actual = hash::short(&dom.root_hash());
        if actual != announced {
            return Err(EngineError::HashMismatch {
                what: "snapshot".into(),
                expected: hex(&announced),
                actual: hex(&actual),
            });
        }
        let nodes = dom.len() - 1;
        let State::Building { dom, .. } =
            std::mem::replace(&mut self.state, State::Live { epoch, seq: 0 })
        else {
            unreachable!("state was Building above");
        };
        self.dom = *dom;
        self.events.push_back(AgentEvent::Rendered {
            epoch,
            nodes,
            hash: actual,
        });
        self.out.push_back(Message::Ack(Ack {
            epoch,
            seq: 0,
            hash: actual,
        }));
        Ok(())
    }

    fn on_patch(&mut self, p: Patch) -> Result<(), EngineError> {
        let State::Live { epoch, seq } = &mut self.state else {
            // Waiting for a snapshot (after divergence, or a patch of a superseded epoch).
            return Ok(());
        };
        if p.epoch != *epoch {
            // A patch of another epoch: stale bytes of a superseded stream.
            return Ok(());
        }
        if p.seq <= *seq {
            // A continuation re-sends what may have been lost (spec §3.5, §7.15): a patch
            // applied already is skipped, its string table entries with it. The latest one is
            // checked against the tree and acknowledged again.
            if p.seq == *seq {
                let (epoch, seq) = (*epoch, *seq);
                let full = self.dom.root_hash();
                if hash::check(&full) != p.hash {
                    return Err(EngineError::HashMismatch {
                        what: format!("patch {seq} (sent again)"),
                        expected: hex(&p.hash),
                        actual: hex(&hash::check(&full)),
                    });
                }
                self.out.push_back(Message::Ack(Ack {
                    epoch,
                    seq,
                    hash: hash::short(&full),
                }));
            }
            return Ok(());
        }
        if p.seq != *seq + 1 {
            return Err(EngineError::Unexpected {
                message: "PATCH",
                detail: format!("seq {}, expected {}", p.seq, *seq + 1),
            });
        }
        *seq = p.seq;
        let epoch = *epoch;
        for op in p.ops {
            patch::apply(&mut self.dom, op, &mut self.dec)?;
        }
        let full = self.dom.root_hash();
        if hash::check(&full) != p.hash {
            return Err(EngineError::HashMismatch {
                what: format!("patch {}", p.seq),
                expected: hex(&p.hash),
                actual: hex(&hash::check(&full)),
            });
        }
        let actual = hash::short(&full);
        self.events.push_back(AgentEvent::Patched {
            epoch,
            seq: p.seq,
            hash: actual,
        });
        self.out.push_back(Message::Ack(Ack {
            epoch,
            seq: p.seq,
            hash: actual,
        }));
        Ok(())
    }

    /// The next message to send back to the consumer (ACK, RESYNC).
    pub fn poll_message(&mut self) -> Option<Message> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop_front()
    }
}
