//! Errors of the engine.

use tandem_protocol::{DecodeError, ErrorCode, NodeId};

/// Why the engine refused input. "The peer broke the protocol" errors carry the wire
/// [`ErrorCode`] to close with; see [`EngineError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A frame or message failed to decode or broke a limit.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// An operation named a node id that does not exist.
    #[error("{field}: no node with id {id}")]
    NoSuchNode {
        /// The field holding the id.
        field: &'static str,
        /// The id.
        id: NodeId,
    },
    /// An operation targets a node of the wrong kind (an attribute on a text node, a child
    /// under a text node, a text edit on an element).
    #[error("{field}: node {id} is of the wrong kind")]
    WrongKind {
        /// The field holding the id.
        field: &'static str,
        /// The id.
        id: NodeId,
    },
    /// A `prev` sibling is not a child of the named parent.
    #[error("{field}: node {prev} is not a child of {parent}")]
    NotAChild {
        /// The field.
        field: &'static str,
        /// The parent.
        parent: NodeId,
        /// The claimed sibling.
        prev: NodeId,
    },
    /// A move would put a node inside its own subtree, or the document would be moved/removed.
    #[error("{field}: node {id} cannot go there")]
    BadMove {
        /// The field.
        field: &'static str,
        /// The node.
        id: NodeId,
    },
    /// A tree limit (node count, depth) would be exceeded.
    #[error("{field} would be {actual}, above the limit of {limit}")]
    Limit {
        /// The field, as `tree.depth` or `tree.nodes`.
        field: &'static str,
        /// The limit.
        limit: u64,
        /// The value it would reach.
        actual: u64,
    },
    /// A snapshot's records do not form a tree (child counts past the end).
    #[error("{field}: {detail}")]
    BadShape {
        /// The field.
        field: &'static str,
        /// What is wrong.
        detail: &'static str,
    },
    /// A text edit does not fit the text (out of range or inside a character).
    #[error("{field}: edit does not fit the text of node {id}")]
    BadEdit {
        /// The field.
        field: &'static str,
        /// The node.
        id: NodeId,
    },
    /// After applying, the tree hash differs from the one the sender announced.
    #[error("tree hash after {what} is {actual}, the sender announced {expected}")]
    HashMismatch {
        /// What was applied (`snapshot`, `patch 7`).
        what: String,
        /// The announced hash, hex.
        expected: String,
        /// The hash here, hex.
        actual: String,
    },
    /// The agent acknowledged a sequence number of the consumer's epoch that the consumer has
    /// not sent (spec §7.16): `UnexpectedMessage`. Unlike most engine errors, which may come
    /// from this side's own page, this one is always the other side's violation.
    #[error("ACK for epoch {epoch} seq {seq}, but the last seq sent is {last}")]
    UnsentAck {
        /// The acknowledged epoch, the consumer's current one.
        epoch: u32,
        /// The acknowledged sequence number.
        seq: u64,
        /// The last sequence number the consumer sent in the epoch.
        last: u64,
    },
    /// A message arrived out of order (a patch for another epoch or out of sequence, a snapshot
    /// part out of order).
    #[error("unexpected {message}: {detail}")]
    Unexpected {
        /// The message.
        message: &'static str,
        /// What was expected instead.
        detail: String,
    },
}

impl EngineError {
    /// The wire error code for this error (spec §9).
    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::Decode(e) => e.code(),
            EngineError::Limit { .. } => ErrorCode::LimitExceeded,
            EngineError::HashMismatch { .. } => ErrorCode::HashMismatch,
            EngineError::Unexpected { .. } | EngineError::UnsentAck { .. } => {
                ErrorCode::UnexpectedMessage
            }
            _ => ErrorCode::BadPatch,
        }
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use core::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}
