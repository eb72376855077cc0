//! The message catalogue of wire format v1 (spec §7) and the registry of frame types (spec §10).
//!
//! Each message is a struct whose fields are encoded with postcard in declaration order (spec
//! §4.4): varints for integers wider than a byte, one byte for `u8` and `bool`, a varint length
//! before strings, byte strings and lists, a 0/1 byte before an optional value, raw bytes for
//! fixed-size arrays.

use serde::{Deserialize, Serialize};

use crate::dom::{NodeId, NodeRecord, PatchOp};
use crate::{DecodeError, ErrorCode, Limits, Sym, wire_enum};

/// The protocol version this crate speaks (spec §7.1).
pub const PROTOCOL_VERSION: u32 = 1;

/// The 16-byte prefix of a blake3 tree hash carried by snapshots and acknowledgements
/// (spec §6.3).
pub type TreeHash = [u8; 16];

/// The 8-byte prefix of a blake3 tree hash carried by every patch (spec §6.3): enough to catch
/// a divergence (a wrong tree passes one patch's check with probability 2^-64), half the bytes
/// of a [`TreeHash`] on the message sent most often.
pub type PatchCheck = [u8; 8];

/// A blake3 content address (spec §7.18).
pub type Address = [u8; 32];

wire_enum! {
    /// The role a peer plays in a session (spec §7.1).
    pub enum Role {
        /// The customer's side: owns the page.
        Consumer = 1,
        /// The support agent's side: rebuilds the page and acts in it.
        Agent = 2,
        /// The relay that pairs the two.
        Relay = 3,
    }
}

wire_enum! {
    /// Why a session ended (spec §7.13).
    pub enum EndReason {
        /// The customer declined the invitation.
        Declined = 1,
        /// The agent cancelled the invitation before it was answered.
        Cancelled = 2,
        /// The invitation or code expired.
        Expired = 3,
        /// The customer ended the session.
        EndedByConsumer = 4,
        /// The agent ended the session.
        EndedByAgent = 5,
        /// A peer's connection was lost.
        ConnectionLost = 6,
    }
}

wire_enum! {
    /// What the agent may do (spec §7.27): each mode allows everything the ones before it do.
    pub enum Mode {
        /// The agent watches; pointer and highlight only.
        Follow = 0,
        /// Also scroll the customer's view.
        View = 1,
        /// Also navigate and click.
        Guide = 2,
        /// Also fill in forms.
        Full = 3,
    }
}

wire_enum! {
    /// What a `MODE` message does (spec §7.27).
    pub enum ModeOp {
        /// The agent asks for the mode.
        Request = 0,
        /// The consumer grants a request.
        Grant = 1,
        /// The consumer denies a request.
        Deny = 2,
        /// The consumer sets the mode on its own (for example lowers it).
        Set = 3,
    }
}

wire_enum! {
    /// Why the consumer refused an agent's action (spec §7.28).
    pub enum RefusalCode {
        /// The session's mode does not allow the action.
        NotPermitted = 1,
        /// The target node is masked or blocked.
        Masked = 2,
        /// The target node does not exist (any more).
        NoSuchNode = 3,
        /// Navigation leaves the allowed site.
        OffSite = 4,
        /// Sharing is paused.
        Paused = 5,
        /// The customer said no.
        Declined = 6,
        /// The action is malformed for its target (for example text into a checkbox).
        Invalid = 7,
    }
}

wire_enum! {
    /// Why an agent asks for a new snapshot (spec §7.17).
    pub enum ResyncReason {
        /// The agent's tree hash differs from the one a patch announced.
        HashMismatch = 1,
        /// A patch could not be applied (unknown node, bad string reference).
        BadPatch = 2,
        /// The agent lost its state (restart, resume from nothing).
        Lost = 3,
    }
}

/// Capability bits (spec §7.1): a peer sets the bits it supports; a part is used only when both
/// sides set its bit. Encoded as a varint `u64`; unknown bits MUST be ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(transparent)]
pub struct Capabilities(pub u64);

impl Capabilities {
    /// The DOM stream may be compressed with a streaming compressor.
    pub const COMPRESSION: Capabilities = Capabilities(1 << 0);
    /// Resources travel by content address, and the peer keeps a cache.
    pub const RESOURCES: Capabilities = Capabilities(1 << 1);
    /// Pointer and scroll may travel as QUIC datagrams.
    pub const DATAGRAMS: Capabilities = Capabilities(1 << 2);
    /// The peer can resume a session on a new connection.
    pub const RESUME: Capabilities = Capabilities(1 << 3);
    /// The peer implements codec 0x02 of compressed DOM streams, whose patches are coded
    /// (spec §4.6.5, §4.7); meaningful only with [`Capabilities::COMPRESSION`]. With both in
    /// the session's capabilities, the consumer codes every DOM stream with it.
    pub const CODED_PATCHES: Capabilities = Capabilities(1 << 4);

    /// Whether every bit of `other` is set in `self`.
    pub fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    /// The bits set in both.
    pub fn intersect(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 & other.0)
    }
}

impl core::ops::BitOr for Capabilities {
    type Output = Capabilities;
    fn bitor(self, rhs: Capabilities) -> Capabilities {
        Capabilities(self.0 | rhs.0)
    }
}

/// A viewport in CSS pixels (spec §7.1).
///
/// Layout: `width: varint, height: varint, dpr_percent: varint` (device pixel ratio × 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Viewport {
    /// Width in CSS pixels.
    pub width: u32,
    /// Height in CSS pixels.
    pub height: u32,
    /// Device pixel ratio in hundredths (200 = 2.0).
    pub dpr_percent: u32,
}

/// What a peer says about its platform (spec §7.1).
///
/// Layout: `browser: string, os: string, viewport: Viewport, language: string`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Platform {
    /// Browser or user agent product and version (`Chromium 156`).
    pub browser: String,
    /// Operating system (`Linux`).
    pub os: String,
    /// The viewport.
    pub viewport: Viewport,
    /// BCP 47 language tag (`en-GB`).
    pub language: String,
}

/// `HELLO` (0x02, spec §7.1): the first message on the control stream, from each peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Hello {
    /// Lowest protocol version the sender speaks.
    pub min_version: u32,
    /// Highest protocol version the sender speaks.
    pub max_version: u32,
    /// The sender's role.
    pub role: Role,
    /// Capabilities the sender supports.
    pub capabilities: Capabilities,
    /// The sender's platform.
    pub platform: Platform,
    /// Free-form software name and version (`tandem/0.1.0`).
    pub software: String,
}

/// `WELCOME` (0x04, spec §7.2): the answer to `HELLO`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Welcome {
    /// The version both will speak: the highest both support.
    pub version: u32,
    /// The answering side's role.
    pub role: Role,
    /// Capabilities of the answering side, already intersected with the `HELLO`'s.
    pub capabilities: Capabilities,
    /// Software name and version of the answering side.
    pub software: String,
}

/// `SESSION_OPEN` (0x10, spec §7.3): a consumer asks the relay for a new session.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SessionOpen {
    /// A label for the customer shown to the agent (may be empty).
    pub label: String,
}

/// `SESSION_CREATED` (0x12, spec §7.4): the relay's answer to `SESSION_OPEN`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SessionCreated {
    /// The session code the customer reads out (digits).
    pub code: String,
    /// A long unguessable token for links.
    pub token: String,
    /// Milliseconds until an unused code expires.
    pub expires_ms: u32,
}

/// How an agent names the session it joins (spec §7.5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Credential {
    /// `0`: the short code the customer read out.
    Code(String),
    /// `1`: the long token from a link.
    Token(String),
    /// `2`: a resume token from `JOINED` (spec §3.5): the sender takes its place in a session
    /// again on a new connection.
    Resume(String),
}

/// `JOIN` (0x14, spec §7.5): an agent joins a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Join {
    /// The session's code or token.
    pub credential: Credential,
    /// The agent's display name.
    pub label: String,
}

/// `JOINED` (0x16, spec §7.6): the relay tells each side that the other is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Joined {
    /// The other side's role.
    pub peer_role: Role,
    /// The other side's label.
    pub peer_label: String,
    /// The other side's platform.
    pub peer_platform: Platform,
    /// The session's capabilities: the bits both peers' `HELLO`s and the relay share. Parts
    /// that run end to end (compression, resources) are used only when set here.
    pub capabilities: Capabilities,
    /// A single-use token with which this side may take its place in the session again on a
    /// new connection (spec §3.5); empty when the session cannot be resumed (no `RESUME`).
    pub resume_token: String,
}

/// `REJOINED` (0x26, spec §3.5): the relay tells a peer that the other side came back on a new
/// connection; what was in flight towards or from its old connection is lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Rejoined {
    /// The role of the side that came back.
    pub peer_role: Role,
}

/// `INVITE` (0x18, spec §7.7): an agent invites a customer known to the relay by `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Invite {
    /// Invitation id chosen by the agent.
    pub invitation: u64,
    /// The customer's identifier at the relay (for example a visitor id).
    pub target: String,
    /// The agent's display name.
    pub agent_label: String,
    /// Milliseconds until the invitation expires (120000 by default).
    pub expires_ms: u32,
}

/// `ACCEPT` (0x1A, spec §7.8), `DECLINE` (0x1C, spec §7.9) and `CANCEL` (0x1E, spec §7.10):
/// the answer to, or withdrawal of, an invitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct InvitationRef {
    /// The invitation id of the `INVITE`.
    pub invitation: u64,
}

/// `END` (0x24, spec §7.13): the session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct End {
    /// Why.
    pub reason: EndReason,
}

/// `SNAPSHOT` (0x30, spec §7.14): one part of a full tree listing.
///
/// Part 0 starts a new epoch: the receiver discards its tree and its dynamic string table.
/// Parts of an epoch arrive in order; records continue the preorder listing of the part before.
/// The last part carries the tree hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Snapshot {
    /// Sync epoch; increases with every new snapshot of a session.
    pub epoch: u32,
    /// Part number within the epoch, from 0.
    pub part: u32,
    /// The page URL (part 0; empty in later parts).
    pub url: String,
    /// Records in preorder, continuing the previous part.
    pub nodes: Vec<NodeRecord>,
    /// The tree hash once the listing is complete; present exactly in the last part.
    pub hash: Option<TreeHash>,
}

/// `PATCH` (0x32, spec §7.15): operations that take the tree from sequence `seq - 1` to `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Patch {
    /// The epoch this patch belongs to.
    pub epoch: u32,
    /// Sequence number; the snapshot is sequence 0, the first patch 1.
    pub seq: u64,
    /// The operations.
    pub ops: Vec<PatchOp>,
    /// The first 8 bytes of the tree hash after the operations.
    pub hash: PatchCheck,
}

/// `COMPRESSED` (0x38, spec §7.35): a piece of a compressed DOM stream (spec §4.6).
///
/// Layout: `data` is the whole body, raw, with no length of its own (the frame's length says how
/// long it is). The bodies of a DOM stream's `COMPRESSED` frames, concatenated in order, are its
/// compressed bytes: a codec byte, then the codec's bytes, which decompress to the frames an
/// uncompressed DOM stream would carry ([`crate::compress`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Compressed {
    /// The next compressed bytes of the stream.
    pub data: Vec<u8>,
}

/// `ACK` (0x34, spec §7.16): the agent has applied everything up to `seq` and holds `hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Ack {
    /// Epoch.
    pub epoch: u32,
    /// Last sequence applied.
    pub seq: u64,
    /// The agent's tree hash.
    pub hash: TreeHash,
}

/// `RESYNC` (0x36, spec §7.17): the agent asks for a new snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Resync {
    /// The epoch the agent held.
    pub epoch: u32,
    /// Why.
    pub reason: ResyncReason,
}

/// `HAVE` (0x40, spec §7.18), `WANT` (0x42, spec §7.19) and `WANT_AGAIN` (0x46, spec §7.37):
/// content addresses a receiver holds, asks for, or asks for again after a corrupted copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Addresses {
    /// blake3 addresses, 32 bytes each.
    pub addresses: Vec<Address>,
}

wire_enum! {
    /// How the `data` of a blob's `RESOURCE` pieces is coded (spec §7.20).
    pub enum Coding {
        /// The pieces, in offset order, are the blob's bytes.
        Identity = 0,
        /// The pieces, in offset order, are one Zstandard frame made with the dictionary
        /// `dom-v1` (spec §4.6.2) that decodes to exactly the blob; offsets count coded bytes
        /// ([`crate::compress::code_blob`], [`crate::compress::BlobDecoder`]).
        Zstd = 1,
    }
}

/// `RESOURCE` (0x44, spec §7.20): a piece of a blob on its own stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Resource {
    /// The blob's blake3 address.
    pub address: Address,
    /// The blob's total length in bytes, announced before any byte.
    pub total_len: u64,
    /// Offset of `data` in the blob's bytes as they travel (coded bytes under
    /// [`Coding::Zstd`]).
    pub offset: u64,
    /// MIME type (first piece; empty later).
    pub content_type: String,
    /// Whether a relay may cache it (a public asset).
    pub cacheable: bool,
    /// How `data` is coded; the same in every piece of the blob.
    pub coding: Coding,
    /// The bytes.
    #[serde(with = "serde_bytes_vec")]
    pub data: Vec<u8>,
}

/// `POINTER` (0x51, optional, spec §7.21): a cursor position relative to a node's box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Pointer {
    /// Sender's sequence number; a receiver drops one older than the last it used.
    pub seq: u32,
    /// The node under the pointer (0: the viewport).
    pub node: NodeId,
    /// Horizontal position in the node's box, in 1/10000 of its width.
    pub x: u32,
    /// Vertical position in the node's box, in 1/10000 of its height.
    pub y: u32,
    /// Whether the pointer is visible (false: it left the page).
    pub visible: bool,
}

/// `SCROLL` (0x53, optional, spec §7.22): the scroll position of the window or an element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Scroll {
    /// Sender's sequence number; latest wins.
    pub seq: u32,
    /// The scrolled element, or 0 for the window.
    pub node: NodeId,
    /// Horizontal offset in CSS pixels.
    pub x: i32,
    /// Vertical offset in CSS pixels.
    pub y: i32,
}

/// `HIGHLIGHT` (0x54, spec §7.23): a box around an element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Highlight {
    /// Action id, for a refusal.
    pub id: u32,
    /// The element.
    pub node: NodeId,
    /// Milliseconds until it fades; 0 clears the highlight of `node`.
    pub duration_ms: u32,
}

/// `CLICK` (0x56, spec §7.24): a click at a point in a node's box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Click {
    /// Action id, for a refusal.
    pub id: u32,
    /// The clicked node.
    pub node: NodeId,
    /// Horizontal position in 1/10000 of the node's width.
    pub x: u32,
    /// Vertical position in 1/10000 of the node's height.
    pub y: u32,
    /// Mouse button: 0 main, 1 auxiliary, 2 secondary.
    pub button: u8,
    /// Modifier bits: 1 shift, 2 ctrl, 4 alt, 8 meta.
    pub modifiers: u8,
}

/// A form value (spec §7.25).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum InputValue {
    /// `0`: the value of a text field or textarea.
    Text(String),
    /// `1`: a checkbox's or radio button's state.
    Checked(bool),
    /// `2`: the indexes of the selected options of a select.
    Selected(Vec<u32>),
}

/// `INPUT` (0x58, spec §7.25): the agent fills in a form field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Input {
    /// Action id, for a refusal.
    pub id: u32,
    /// The form control.
    pub node: NodeId,
    /// The new value.
    pub value: InputValue,
}

/// `NAVIGATE` (0x5A, spec §7.26): the agent asks the page to go to a URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Navigate {
    /// Action id, for a refusal.
    pub id: u32,
    /// Absolute URL.
    pub url: String,
}

/// `MODE` (0x5C, spec §7.27): ask for, grant, deny or set the session mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ModeChange {
    /// What this message does.
    pub op: ModeOp,
    /// The mode concerned.
    pub mode: Mode,
}

/// `REFUSED` (0x5E, spec §7.28): the consumer refused an agent's action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Refused {
    /// The refused action's id.
    pub id: u32,
    /// Why.
    pub code: RefusalCode,
    /// Human-readable detail (may be empty).
    pub detail: String,
}

/// `STATUS` (0x61, optional, spec §7.29): link figures measured by the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Status {
    /// Smoothed round-trip time in milliseconds.
    pub rtt_ms: u32,
    /// Packets lost per million sent.
    pub loss_ppm: u32,
    /// Recent send throughput in bits per second.
    pub throughput_bps: u64,
}

/// `PING` (0x62, spec §7.30) and `PONG` (0x64, spec §7.31): liveness and round-trip probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Ping {
    /// Echoed unchanged in the `PONG`.
    pub nonce: u64,
}

/// `VIEWPORT` (0x67, optional, spec §7.32): the sender's viewport changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ViewportChange {
    /// The new viewport.
    pub viewport: Viewport,
}

/// `ERROR` (0x70, spec §7.33) and `CLOSE` (0x72, spec §7.34): a problem report, or the last
/// message before the sender closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ErrorReport {
    /// The error code.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

mod serde_bytes_vec {
    //! `Vec<u8>` as a postcard byte string (varint length, raw bytes) rather than a sequence of
    //! one-byte elements: the same bytes on the wire, one copy instead of a loop.
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Re-exported for the registry macro: the frame type newtype.
pub use crate::frame::FrameType;

/// How a message type's body travels: most are postcard encodings of their struct (spec §4.4);
/// `COMPRESSED` is its raw bytes.
trait Body: Sized {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), postcard::Error>;
    fn decode(body: &[u8], message: &'static str) -> Result<Self, DecodeError>;
}

macro_rules! postcard_body {
    ($($ty:ty),* $(,)?) => {$(
        impl Body for $ty {
            fn encode(&self, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
                postcard::to_io(self, out).map(|_| ())
            }
            fn decode(body: &[u8], message: &'static str) -> Result<Self, DecodeError> {
                take::<$ty>(body, message)
            }
        }
    )*};
}

postcard_body!(
    Hello,
    Welcome,
    SessionOpen,
    SessionCreated,
    Join,
    Joined,
    Invite,
    InvitationRef,
    (),
    End,
    Rejoined,
    Patch,
    Ack,
    Resync,
    Addresses,
    Resource,
    Pointer,
    Scroll,
    Highlight,
    Click,
    Input,
    Navigate,
    ModeChange,
    Refused,
    Status,
    Ping,
    ViewportChange,
    ErrorReport,
);

/// `SNAPSHOT` bodies are written by hand: the layout of spec §7.14 and §6.2, byte for byte what
/// postcard writes (the vectors and the round-trip tests hold the two together), in a third of
/// its time. Decoding stays with postcard and its named errors.
impl Body for Snapshot {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
        crate::write::put_snapshot_head(
            out,
            self.epoch,
            self.part,
            &self.url,
            self.nodes.len() as u64,
        );
        for rec in &self.nodes {
            if !crate::write::put_record(out, rec) {
                // A string index above 2^30 - 1 cannot travel.
                return Err(postcard::Error::SerdeSerCustom);
            }
        }
        crate::write::put_snapshot_tail(out, self.hash.as_ref());
        Ok(())
    }
    fn decode(body: &[u8], message: &'static str) -> Result<Self, DecodeError> {
        take::<Snapshot>(body, message)
    }
}

impl Body for Compressed {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
        out.extend_from_slice(&self.data);
        Ok(())
    }
    fn decode(body: &[u8], _message: &'static str) -> Result<Self, DecodeError> {
        Ok(Compressed {
            data: body.to_vec(),
        })
    }
}

macro_rules! catalogue {
    ($( $(#[$doc:meta])* $variant:ident ( $ty:ty ) = $code:literal, $cname:ident, $section:literal; )*) => {
        /// Every message of wire format v1 (spec §7), plus frames of types this version does
        /// not know.
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
        #[non_exhaustive]
        pub enum Message {
            $( $(#[$doc])* $variant($ty), )*
            /// A frame whose type this version does not know, kept whole so a relay can forward
            /// it and a receiver can skip it when it is optional (spec §4.3).
            Unknown(UnknownFrame),
        }

        impl FrameType {
            $(
                #[doc = concat!("`", stringify!($cname), "` (spec ", $section, ").")]
                pub const $cname: FrameType = FrameType($code);
            )*
        }

        /// The registry of frame types (spec §10): type, name, spec section.
        pub const REGISTRY: &[(FrameType, &str, &str)] = &[
            $( (FrameType($code), stringify!($cname), $section), )*
        ];

        impl Message {
            /// The frame type this message travels in.
            pub fn frame_type(&self) -> FrameType {
                match self {
                    $( Message::$variant(_) => FrameType($code), )*
                    Message::Unknown(u) => u.ty,
                }
            }

            /// Appends the message body (without frame header) to `out`.
            pub fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
                let start = out.len();
                let res = match self {
                    $( Message::$variant(m) => Body::encode(m, &mut *out), )*
                    Message::Unknown(u) => { out.extend_from_slice(&u.body); Ok(()) }
                };
                res.map_err(|_| {
                    out.truncate(start);
                    EncodeError::Unencodable { message: self.name() }
                })
            }

            /// Decodes the body of a frame of type `ty` (spec §4.5): the whole body must be
            /// consumed, and every limit of `limits` holds. An unknown type decodes to
            /// [`Message::Unknown`]; [`UnknownFrame::must_understand`] says whether a
            /// receiver may skip it.
            pub fn decode_body(ty: FrameType, body: &[u8], limits: &Limits) -> Result<Message, DecodeError> {
                let msg = match ty.0 {
                    $( $code => Message::$variant(<$ty as Body>::decode(body, stringify!($cname))?), )*
                    _ => return Ok(Message::Unknown(UnknownFrame { ty, body: body.to_vec() })),
                };
                msg.check(limits)?;
                Ok(msg)
            }

            /// The message's name as the spec's registry writes it.
            pub fn name(&self) -> &'static str {
                self.frame_type().name().unwrap_or("UNKNOWN")
            }
        }

        impl FrameType {
            /// The registered name of this type, if this version knows it.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $code => Some(stringify!($cname)), )*
                    _ => None,
                }
            }
        }
    };
}

catalogue! {
    /// `HELLO`.
    Hello(Hello) = 0x02, HELLO, "§7.1";
    /// `WELCOME`.
    Welcome(Welcome) = 0x04, WELCOME, "§7.2";
    /// `SESSION_OPEN`.
    SessionOpen(SessionOpen) = 0x10, SESSION_OPEN, "§7.3";
    /// `SESSION_CREATED`.
    SessionCreated(SessionCreated) = 0x12, SESSION_CREATED, "§7.4";
    /// `JOIN`.
    Join(Join) = 0x14, JOIN, "§7.5";
    /// `JOINED`.
    Joined(Joined) = 0x16, JOINED, "§7.6";
    /// `INVITE`.
    Invite(Invite) = 0x18, INVITE, "§7.7";
    /// `ACCEPT`.
    Accept(InvitationRef) = 0x1A, ACCEPT, "§7.8";
    /// `DECLINE`.
    Decline(InvitationRef) = 0x1C, DECLINE, "§7.9";
    /// `CANCEL`.
    Cancel(InvitationRef) = 0x1E, CANCEL, "§7.10";
    /// `PAUSE` (empty body).
    Pause(()) = 0x20, PAUSE, "§7.11";
    /// `RESUME` (empty body).
    Resume(()) = 0x22, RESUME, "§7.12";
    /// `END`.
    End(End) = 0x24, END, "§7.13";
    /// `REJOINED`.
    Rejoined(Rejoined) = 0x26, REJOINED, "§7.36";
    /// `SNAPSHOT`.
    Snapshot(Snapshot) = 0x30, SNAPSHOT, "§7.14";
    /// `PATCH`.
    Patch(Patch) = 0x32, PATCH, "§7.15";
    /// `ACK`.
    Ack(Ack) = 0x34, ACK, "§7.16";
    /// `RESYNC`.
    Resync(Resync) = 0x36, RESYNC, "§7.17";
    /// `COMPRESSED`: a piece of a compressed DOM stream.
    Compressed(Compressed) = 0x38, COMPRESSED, "§7.35";
    /// `HAVE`.
    Have(Addresses) = 0x40, HAVE, "§7.18";
    /// `WANT`.
    Want(Addresses) = 0x42, WANT, "§7.19";
    /// `RESOURCE`.
    Resource(Resource) = 0x44, RESOURCE, "§7.20";
    /// `WANT_AGAIN`: a retry after a corrupted copy.
    WantAgain(Addresses) = 0x46, WANT_AGAIN, "§7.37";
    /// `POINTER` (optional).
    Pointer(Pointer) = 0x51, POINTER, "§7.21";
    /// `SCROLL` (optional).
    Scroll(Scroll) = 0x53, SCROLL, "§7.22";
    /// `HIGHLIGHT`.
    Highlight(Highlight) = 0x54, HIGHLIGHT, "§7.23";
    /// `CLICK`.
    Click(Click) = 0x56, CLICK, "§7.24";
    /// `INPUT`.
    Input(Input) = 0x58, INPUT, "§7.25";
    /// `NAVIGATE`.
    Navigate(Navigate) = 0x5A, NAVIGATE, "§7.26";
    /// `MODE`.
    Mode(ModeChange) = 0x5C, MODE, "§7.27";
    /// `REFUSED`.
    Refused(Refused) = 0x5E, REFUSED, "§7.28";
    /// `STATUS` (optional).
    Status(Status) = 0x61, STATUS, "§7.29";
    /// `PING`.
    Ping(Ping) = 0x62, PING, "§7.30";
    /// `PONG`.
    Pong(Ping) = 0x64, PONG, "§7.31";
    /// `VIEWPORT` (optional).
    Viewport(ViewportChange) = 0x67, VIEWPORT, "§7.32";
    /// `ERROR`.
    Error(ErrorReport) = 0x70, ERROR, "§7.33";
    /// `CLOSE`.
    Close(ErrorReport) = 0x72, CLOSE, "§7.34";
}

/// A frame of a type this version does not know (spec §4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownFrame {
    /// The frame type.
    pub ty: FrameType,
    /// The undecoded body.
    pub body: Vec<u8>,
}

impl UnknownFrame {
    /// Whether a receiver that does not know this type must fail (spec §4.3): even types are
    /// critical, odd types optional.
    pub fn must_understand(&self) -> bool {
        !self.ty.is_optional()
    }
}

#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for UnknownFrame {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        // Only types the registry does not hold: a known type's body would decode as its message.
        let mut ty = u32::arbitrary(u)?;
        while FrameType(ty).name().is_some() {
            ty = ty.wrapping_add(0x100);
        }
        Ok(UnknownFrame {
            ty: FrameType(ty),
            body: Vec::arbitrary(u)?,
        })
    }
}

/// A message that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A field holds a value the wire cannot carry (a string index above 2^30 - 1).
    #[error("{message} holds a value the wire format cannot carry")]
    Unencodable {
        /// The message.
        message: &'static str,
    },
    /// The encoded body is larger than a frame may be.
    #[error("{message} body of {len} bytes exceeds the frame limit of {max}")]
    TooLarge {
        /// The message.
        message: &'static str,
        /// The body length.
        len: usize,
        /// The limit.
        max: u32,
    },
}

fn take<'a, T: Deserialize<'a>>(body: &'a [u8], message: &'static str) -> Result<T, DecodeError> {
    let (value, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|e| DecodeError::Malformed {
            message,
            reason: e.into(),
        })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes {
            message,
            count: rest.len(),
        });
    }
    Ok(value)
}

fn limit(field: &'static str, actual: usize, limit: u32) -> Result<(), DecodeError> {
    if actual as u64 > u64::from(limit) {
        return Err(DecodeError::Limit {
            field,
            limit: limit.into(),
            actual: actual as u64,
        });
    }
    Ok(())
}

fn string(field: &'static str, s: &str, l: &Limits) -> Result<(), DecodeError> {
    limit(field, s.len(), l.max_string)
}

fn sym(field: &'static str, s: &Sym, l: &Limits) -> Result<(), DecodeError> {
    match s.literal() {
        Some(text) => string(field, text, l),
        None => Ok(()),
    }
}

fn platform(field: &'static str, p: &Platform, l: &Limits) -> Result<(), DecodeError> {
    string(field, &p.browser, l)?;
    string(field, &p.os, l)?;
    string(field, &p.language, l)
}

/// Checks the limits that do not need the receiver's tree (spec §8). Limits that depend on the
/// tree (node count, depth) are the engine's to check as it applies.
pub fn check_records(
    field: &'static str,
    nodes: &[NodeRecord],
    l: &Limits,
) -> Result<(), DecodeError> {
    limit(field, nodes.len(), l.max_nodes_per_frame)?;
    for node in nodes {
        match node {
            NodeRecord::Element { name, attrs, .. } => {
                sym("node.name", name, l)?;
                limit("node.attrs", attrs.len(), l.max_attributes)?;
                for a in attrs {
                    sym("attr.name", &a.name, l)?;
                    sym("attr.value", &a.value, l)?;
                }
            }
            NodeRecord::Text { text } | NodeRecord::Comment { text } => sym("node.text", text, l)?,
            NodeRecord::Doctype {
                name,
                public_id,
                system_id,
            } => {
                sym("doctype.name", name, l)?;
                sym("doctype.public_id", public_id, l)?;
                sym("doctype.system_id", system_id, l)?;
            }
        }
    }
    Ok(())
}

impl Message {
    /// The checks [`Message::decode_body`] makes after postcard decoding (spec §8): limits and
    /// value rules that do not need the receiver's state.
    pub(crate) fn check(&self, l: &Limits) -> Result<(), DecodeError> {
        match self {
            Message::Hello(m) => {
                platform("hello.platform", &m.platform, l)?;
                string("hello.software", &m.software, l)
            }
            Message::Welcome(m) => string("welcome.software", &m.software, l),
            Message::SessionOpen(m) => string("session_open.label", &m.label, l),
            Message::SessionCreated(m) => {
                string("session_created.code", &m.code, l)?;
                string("session_created.token", &m.token, l)
            }
            Message::Join(m) => {
                let (Credential::Code(c) | Credential::Token(c) | Credential::Resume(c)) =
                    &m.credential;
                string("join.credential", c, l)?;
                string("join.label", &m.label, l)
            }
            Message::Joined(m) => {
                string("joined.peer_label", &m.peer_label, l)?;
                string("joined.resume_token", &m.resume_token, l)?;
                platform("joined.peer_platform", &m.peer_platform, l)
            }
            Message::Invite(m) => {
                string("invite.target", &m.target, l)?;
                string("invite.agent_label", &m.agent_label, l)
            }
            Message::Snapshot(m) => {
                string("snapshot.url", &m.url, l)?;
                check_records("snapshot.nodes", &m.nodes, l)
            }
            Message::Patch(m) => {
                limit("patch.ops", m.ops.len(), l.max_patch_ops)?;
                for op in &m.ops {
                    match op {
                        PatchOp::Insert { nodes, .. } => {
                            check_records("patch.insert.nodes", nodes, l)?
                        }
                        PatchOp::SetAttr { name, value, .. } => {
                            sym("patch.set_attr.name", name, l)?;
                            sym("patch.set_attr.value", value, l)?;
                        }
                        PatchOp::RemoveAttr { name, .. } => sym("patch.remove_attr.name", name, l)?,
                        PatchOp::SetText { text, .. } => sym("patch.set_text.text", text, l)?,
                        PatchOp::EditText { edits, .. } => {
                            limit("patch.edit_text.edits", edits.len(), l.max_list)?;
                            for e in edits {
                                string("patch.edit_text.insert", &e.insert, l)?;
                            }
                        }
                        PatchOp::MoveRun { nodes, .. } => {
                            if nodes.0.is_empty() {
                                return Err(DecodeError::InvalidValue {
                                    field: "patch.move_run.nodes",
                                    detail: "empty run",
                                });
                            }
                            limit("patch.move_run.nodes", nodes.0.len(), l.max_list)?
                        }
                        PatchOp::Remove { .. } | PatchOp::Move { .. } => {}
                    }
                }
                Ok(())
            }
            Message::Have(m) => limit("have.addresses", m.addresses.len(), l.max_list),
            Message::Want(m) => limit("want.addresses", m.addresses.len(), l.max_list),
            Message::WantAgain(m) => limit("want_again.addresses", m.addresses.len(), l.max_list),
            Message::Resource(m) => {
                string("resource.content_type", &m.content_type, l)?;
                match m.offset.checked_add(m.data.len() as u64) {
                    Some(end) if end <= m.total_len => Ok(()),
                    _ => Err(DecodeError::InvalidValue {
                        field: "resource.data",
                        detail: "piece extends past total_len",
                    }),
                }
            }
            Message::Input(m) => match &m.value {
                InputValue::Text(t) => string("input.value", t, l),
                InputValue::Selected(s) => limit("input.value", s.len(), l.max_list),
                InputValue::Checked(_) => Ok(()),
            },
            Message::Navigate(m) => string("navigate.url", &m.url, l),
            Message::Refused(m) => string("refused.detail", &m.detail, l),
            Message::Error(m) => string("error.message", &m.message, l),
            Message::Close(m) => string("close.message", &m.message, l),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dom::Attr;
    use crate::dom::Ns;

    /// A node run's ids survive the round trip at the edges of the id range, each difference
    /// costs what its size says, and a difference that leaves the range is refused.
    #[test]
    fn node_run_round_trip_and_range() {
        use crate::dom::NodeRun;
        let top = (1u64 << 63) - 1;
        for ids in [vec![7], vec![15, 9, 10, 200], vec![0, top, 0, top - 1, 1]] {
            let run = NodeRun(ids);
            let bytes = postcard::to_stdvec(&run).unwrap();
            assert_eq!(postcard::from_bytes::<NodeRun>(&bytes).unwrap(), run);
        }
        // Count 4, first 15, then −6 (zigzag 11), +1 (2), +190 (380 = varint fc 02).
        assert_eq!(
            postcard::to_stdvec(&NodeRun(vec![15, 9, 10, 200])).unwrap(),
            [0x04, 0x0f, 0x0b, 0x02, 0xfc, 0x02]
        );
        assert!(postcard::to_stdvec(&NodeRun(vec![0, u64::MAX])).is_err());
        // First 1, then −2: below id 0. First 2^64 − 1, then +1: past the largest id.
        assert!(postcard::from_bytes::<NodeRun>(&[0x02, 0x01, 0x03]).is_err());
        let mut past = vec![0x02];
        past.extend([0xff; 9]);
        past.extend([0x01, 0x02]);
        assert!(postcard::from_bytes::<NodeRun>(&past).is_err());
    }

    /// The hand-written `SNAPSHOT` encoder writes what postcard writes, and refuses what
    /// postcard refuses.
    #[test]
    fn snapshot_body_matches_postcard() {
        let long = "é".repeat(100);
        let syms = [
            Sym::Static(0),
            Sym::Static(32),
            Sym::Ref(31),
            Sym::Ref(5000),
            Sym::Static(crate::strings::MAX_SYM_INDEX),
            Sym::New(String::new()),
            Sym::New("ab".into()),
            Sym::Lit(long.clone()),
        ];
        let mut nodes = vec![NodeRecord::Doctype {
            name: Sym::Static(32),
            public_id: Sym::Lit(String::new()),
            system_id: Sym::New("x".into()),
        }];
        for (i, s) in syms.iter().enumerate() {
            nodes.push(NodeRecord::Element {
                ns: Ns::from(i as u32 * 70),
                name: s.clone(),
                attrs: syms
                    .iter()
                    .take(i)
                    .map(|v| Attr {
                        name: s.clone(),
                        value: v.clone(),
                    })
                    .collect(),
                children: (i as u32) << (i * 3),
            });
            nodes.push(NodeRecord::Text { text: s.clone() });
            nodes.push(NodeRecord::Comment { text: s.clone() });
        }
        for (url, hash) in [("", None), (long.as_str(), Some([7u8; 16]))] {
            let snap = Snapshot {
                epoch: u32::MAX,
                part: 300,
                url: url.into(),
                nodes: nodes.clone(),
                hash,
            };
            let mut ours = Vec::new();
            Body::encode(&snap, &mut ours).unwrap();
            assert_eq!(ours, postcard::to_stdvec(&snap).unwrap());
        }
        let bad = Snapshot {
            epoch: 0,
            part: 0,
            url: String::new(),
            nodes: vec![NodeRecord::Text {
                text: Sym::Ref(crate::strings::MAX_SYM_INDEX + 1),
            }],
            hash: None,
        };
        assert!(postcard::to_stdvec(&bad).is_err());
        assert!(Body::encode(&bad, &mut Vec::new()).is_err());
    }
}
