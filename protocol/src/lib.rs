//! # tandem-protocol: wire format v1 of the Tandem co-browsing protocol
//!
//! This crate is the wire layer and nothing else: frames, messages, string tables, limits and
//! errors, each citing the section of `spec/tandem.md` it implements. It performs no I/O.
//!
//! ## Model
//!
//! ```text
//!  stream bytes ──► FrameReader ──► RawFrame{type, body} ──► Message::decode_body ──► Message
//!                   (spec §4)       (relays forward these)    (postcard, limits §8)
//! ```
//!
//! Every frame is `type, length, body` (spec §4). Bodies are postcard encodings of the message
//! structs in [`message`]. Frame types are open: an unknown type decodes to
//! [`Message::Unknown`], which a relay forwards and a receiver skips when the type is odd
//! (optional) or rejects when it is even (critical).
//!
//! The DOM travels as preorder [`NodeRecord`] listings (snapshots) and [`PatchOp`]s; node ids
//! are implicit (spec §6.1). Names and repeated strings are [`Sym`] references into the
//! [`STATIC_TABLE`] or a per-epoch dynamic table kept in step by [`SymEncoder`] and
//! [`SymDecoder`] (spec §5). A receiver may read a `SNAPSHOT` body in place with
//! [`SnapshotView`] (same checks and errors as the owned decoding, strings borrowed from the
//! frame) and resolve its [`SymRef`]s with [`SymDecoder::resolve_ref`]; a sender may write one
//! record by record from its own tree with [`SnapshotWriter`] and [`SymEncoder::encode_ref`]
//! (the same bytes, without an owned record per node).
//!
//! ## Example
//!
//! ```
//! use tandem_protocol::{Limits, Message, message::Ping, frame};
//!
//! let limits = Limits::DEFAULT;
//! let bytes = frame::to_frame(&Message::Ping(Ping { nonce: 7 }), &limits).unwrap();
//! assert_eq!(bytes, [0x62, 0x01, 0x07]);
//! let back = frame::decode_exact(&bytes, &limits).unwrap();
//! assert_eq!(back, Message::Ping(Ping { nonce: 7 }));
//! ```
#![deny(missing_docs)]

mod macros;
mod range;
mod text_model;

pub mod compress;
pub mod dom;
pub mod error;
pub mod frame;
pub mod fuzzing;
pub mod limits;
pub mod message;
pub mod patch_coder;
pub mod strings;
pub mod varint;
pub mod view;
pub mod write;

pub use dom::{Attr, DOCUMENT_ID, NodeId, NodeRecord, NodeRun, Ns, PatchOp, Place, TextEdit};
pub use error::{DecodeError, ErrorCode, MalformedReason};
pub use frame::{FrameReader, FrameType, RawFrame};
pub use limits::Limits;
pub use message::{EncodeError, Message, PROTOCOL_VERSION, PatchCheck, REGISTRY, TreeHash};
pub use strings::{STATIC_TABLE, StrClass, Sym, SymDecoder, SymEncoder};
pub use view::{RecordRef, SnapshotView, SymRef};
pub use write::{FrameBuf, SnapshotWriter};
