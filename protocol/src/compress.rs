//! DOM stream compression (spec §4.6): one compression context per DOM stream, spanning all its
//! frames, so that a small patch is coded against everything the stream carried before it.
//!
//! ```text
//!  consumer                                              agent
//!  SNAPSHOT, PATCH frames                                SNAPSHOT, PATCH frames
//!        │                                                     ▲
//!        ▼                                                     │ FrameReader (frame limit)
//!  DomCompressor ── codec byte ‖ zstd, flushed per batch ──► DomDecompressor
//!        │            (window ≤ 8 MiB, dictionary dom-v1;      ▲ bounded output chunks
//!        │             codec 0x02: PATCH frames coded, §4.7)   │
//!        ▼                                                     │
//!  COMPRESSED frames (0x38) ═══════ DOM stream (QUIC) ══════► COMPRESSED frames
//! ```
//!
//! When the session's capabilities (`JOINED`, spec §7.6) hold `COMPRESSION`, every DOM stream
//! carries only [`COMPRESSED`](crate::message::Compressed) frames. Their bodies, concatenated,
//! are the stream's compressed bytes: one codec byte, then the codec's data. Decompressed, they
//! are exactly the frames an uncompressed DOM stream would carry. The sender flushes after every
//! batch of frames, so the receiver can decode everything sent so far. Two codecs ([`Codec`]):
//!
//! - [`CODEC_ZSTD_DOM_V1`] (0x01, spec §4.6.2): Zstandard frames (RFC 8878) made with the
//!   raw-content dictionary [`DICTIONARY`] and a window of at most 2^[`WINDOW_LOG_MAX`] bytes;
//! - [`CODEC_CODED_PATCHES`] (0x02, spec §4.6.5), when the session also holds `CODED_PATCHES`:
//!   a sequence of chunks, each a varint header `len << 1 | coded` and `len` bytes. A zstd
//!   chunk (`coded` 0) continues the stream's one Zstandard stream, as codec 0x01's bytes; a
//!   coded chunk (`coded` 1) is one `PATCH` coded by the stream's
//!   [`PatchEncoder`] (spec §4.7).
//!
//! ```text
//!  02 │ 2a·zstd 21 bytes: 28 b5 2f fd … │ 0f·coded 7 bytes │ 0b·coded 5 bytes │ …
//!       └─ SNAPSHOT and other frames ─┘   └─ PATCH 1 ──────┘  └─ PATCH 2 ──────┘
//! ```
//!
//! Both halves are sans-IO: they take bytes and return bytes.
//!
//! ```
//! use tandem_protocol::compress::{Codec, DEFAULT_LEVEL, DomCompressor, DomDecompressor};
//! use tandem_protocol::{Limits, Message, frame, message::Ping};
//!
//! let limits = Limits::DEFAULT;
//! let mut compressor = DomCompressor::with_codec(DEFAULT_LEVEL, Codec::CodedPatches).unwrap();
//! let mut decompressor = DomDecompressor::new(limits).unwrap();
//! let inner = frame::to_frame(&Message::Ping(Ping { nonce: 7 }), &limits).unwrap();
//! let mut wire = Vec::new();
//! compressor.write_frames(&inner, &mut wire, &limits).unwrap();
//!
//! // The wire holds COMPRESSED frames; feed their bodies to the decompressor, which reads
//! // either codec from the stream's first byte.
//! let mut reader = tandem_protocol::FrameReader::new(limits);
//! reader.push(&wire);
//! while let Some(outer) = reader.next_frame().unwrap() {
//!     decompressor.push_frame(&outer).unwrap();
//!     while let Some(inner) = decompressor.next_frame().unwrap() {
//!         assert_eq!(inner.decode(&limits).unwrap(), Message::Ping(Ping { nonce: 7 }));
//!     }
//! }
//! ```

use std::sync::OnceLock;

use zstd::zstd_safe::zstd_sys::ZSTD_ErrorCode;
use zstd::zstd_safe::{
    self, CCtx, CDict, CParameter, DCtx, DDict, DParameter, InBuffer, OutBuffer,
};

use crate::frame::{self, FrameReader, FrameType, RawFrame};
use crate::message::{Capabilities, EncodeError, Patch};
use crate::patch_coder::{PatchDecoder, PatchEncoder};
use crate::varint::Varint;
use crate::{DecodeError, ErrorCode, Limits, Message, SnapshotView, varint};

/// The codec byte of codec 0x01: Zstandard with the dictionary [`DICTIONARY`] (spec §4.6.2).
pub const CODEC_ZSTD_DOM_V1: u8 = 0x01;

/// The codec byte of codec 0x02: Zstandard with the dictionary [`DICTIONARY`], `PATCH` frames
/// coded (spec §4.6.5, §4.7). Used only when the session's capabilities hold `CODED_PATCHES`.
pub const CODEC_CODED_PATCHES: u8 = 0x02;

/// The codecs of a compressed DOM stream, named by its first byte (spec §4.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Codec {
    /// Codec 0x01 ([`CODEC_ZSTD_DOM_V1`]): the stream is one Zstandard stream (spec §4.6.2).
    #[default]
    Zstd,
    /// Codec 0x02 ([`CODEC_CODED_PATCHES`]): chunks of that Zstandard stream and coded
    /// `PATCH` messages (spec §4.6.5, §4.7).
    CodedPatches,
}

impl Codec {
    /// The codec byte that starts a stream of this codec.
    pub fn byte(self) -> u8 {
        match self {
            Codec::Zstd => CODEC_ZSTD_DOM_V1,
            Codec::CodedPatches => CODEC_CODED_PATCHES,
        }
    }

    /// The codec a codec byte names; `None` for a byte this version does not define.
    pub fn from_byte(byte: u8) -> Option<Codec> {
        match byte {
            CODEC_ZSTD_DOM_V1 => Some(Codec::Zstd),
            CODEC_CODED_PATCHES => Some(Codec::CodedPatches),
            _ => None,
        }
    }

    /// The codec a sender uses for the DOM streams of a session with `capabilities` (spec
    /// §10.3): none without `COMPRESSION`, codec 0x02 when `CODED_PATCHES` is set too, else
    /// codec 0x01.
    pub fn for_session(capabilities: Capabilities) -> Option<Codec> {
        if !capabilities.contains(Capabilities::COMPRESSION) {
            None
        } else if capabilities.contains(Capabilities::CODED_PATCHES) {
            Some(Codec::CodedPatches)
        } else {
            Some(Codec::Zstd)
        }
    }
}

/// The largest `PATCH` frame the reference sender codes with codec 0x02 (spec §4.6.5): a
/// larger one goes through zstd. The patch coder models every bit (about 5 MB/s either way),
/// where zstd decodes at about 1 GB/s, so a page-sized patch would hold the receiver up;
/// the patches of a session's steady state are far below this.
pub const MAX_CODED_PATCH_FRAME: usize = 16 * 1024;

/// The largest window a compressed DOM stream may use, as a power of two (8 MiB): a decoder
/// refuses frames that announce more, so its memory stays bounded (spec §4.6, §8).
pub const WINDOW_LOG_MAX: u32 = 23;

/// The compression level of the reference encoder, chosen by measurement (spec §4.6.3): the
/// first level where zstd parses optimally (`btopt`), which is where the snapshot shrinks most,
/// at a speed the consumer can afford once per epoch.
pub const DEFAULT_LEVEL: i32 = 16;

/// Snapshots larger than this many frame bytes are compressed at [`LARGE_SNAPSHOT_LEVEL`] by
/// the reference consumer ([`level_for_snapshot`]): level 16 runs at a few MB/s, which is fine
/// for the median page (17 KB, 5 ms) but would hold a megabyte-sized page back for a noticeable
/// fraction of a second.
pub const LARGE_SNAPSHOT_BYTES: usize = 256 * 1024;

/// The level for snapshots above [`LARGE_SNAPSHOT_BYTES`]: about ten times faster than
/// [`DEFAULT_LEVEL`], for 7 % more bytes on the one measured page that large (spec §4.6.3).
pub const LARGE_SNAPSHOT_LEVEL: i32 = 9;

/// The level the reference consumer uses for a DOM stream whose snapshot frames take
/// `snapshot_bytes` (a stream keeps its level: zstd does not apply a level change mid-frame).
pub fn level_for_snapshot(snapshot_bytes: usize) -> i32 {
    if snapshot_bytes > LARGE_SNAPSHOT_BYTES {
        LARGE_SNAPSHOT_LEVEL
    } else {
        DEFAULT_LEVEL
    }
}

/// The dictionary `dom-v1` (spec §4.6.2, Appendix C): generic HTML, CSS and English vocabulary
/// written by hand, followed by the snapshot of a hand-written generic page. It is part of the
/// protocol: its blake3 hash is in the spec, and a change is a new codec byte.
pub static DICTIONARY: &[u8] = include_bytes!("../dict/dom-v1.dict");

/// Decompressed bytes produced per step, so that output is handed to the frame reader in
/// bounded pieces however much a few compressed bytes expand to.
const OUTPUT_CHUNK: usize = 64 * 1024;

/// The size of a zstd block header: what zstd asks for next when it stands between blocks.
const BLOCK_HEADER: usize = 3;

/// The longest chunk of codec 0x02 a header can announce: `len << 1` fits a `u32` varint.
const MAX_CHUNK_LEN: u32 = u32::MAX >> 1;

/// A compressor that could not be set up or failed; zstd names the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompressError {
    /// zstd could not allocate a context or load the dictionary.
    #[error("cannot set up the DOM stream compressor: {detail}")]
    Setup {
        /// What zstd reported.
        detail: &'static str,
    },
    /// zstd reported an error while compressing.
    #[error("compressing the DOM stream failed: {detail}")]
    Zstd {
        /// What zstd reported.
        detail: &'static str,
    },
}

/// Why a compressed DOM stream was refused (spec §4.6.4). Each variant names what failed;
/// [`DecompressError::code`] is the code to close with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecompressError {
    /// The stream's first byte names a codec this version does not define.
    #[error("compressed DOM stream: unknown codec byte {codec:#04x}")]
    UnknownCodec {
        /// The codec byte.
        codec: u8,
    },
    /// A Zstandard frame announces a window above 2^`max_log` bytes.
    #[error("compressed DOM stream: window above 2^{max_log} bytes")]
    WindowTooLarge {
        /// [`WINDOW_LOG_MAX`].
        max_log: u32,
    },
    /// The compressed bytes are not valid Zstandard data.
    #[error("compressed DOM stream: corrupt zstd data: {detail}")]
    Corrupt {
        /// What zstd reported.
        detail: &'static str,
    },
    /// A frame other than `COMPRESSED` on a compressed DOM stream (`inner` false), or a
    /// `COMPRESSED` frame inside the decompressed stream (`inner` true).
    #[error("{ty} frame where it is not allowed on a compressed DOM stream (inner: {inner})")]
    UnexpectedFrame {
        /// The frame's type.
        ty: FrameType,
        /// Whether it was found in the decompressed stream.
        inner: bool,
    },
    /// The decompressed bytes are not a valid frame sequence: the decoding error of the
    /// frame inside, which names the field (spec §4.5).
    #[error("compressed DOM stream: {0}")]
    Frame(#[from] DecodeError),
    /// The stream ended inside a compressed block, a chunk header or a chunk.
    #[error("compressed DOM stream ends inside compressed data")]
    Truncated,
    /// Codec 0x02: a chunk header that is not a minimal `u32` varint (spec §4.6.5).
    #[error("compressed DOM stream: bad varint in a chunk header")]
    BadChunkHeader,
    /// Codec 0x02: a chunk header announces more than `max_frame_body` bytes (spec §4.6.5).
    #[error("compressed DOM stream: chunk of {len} bytes exceeds the limit of {max}")]
    ChunkTooLarge {
        /// The announced chunk length.
        len: u32,
        /// The receiver's `max_frame_body`.
        max: u32,
    },
    /// Codec 0x02: a coded chunk where the Zstandard data before it stops inside a frame
    /// header or a block, so the chunk's place in the inner stream is undefined (spec §4.6.5).
    #[error("compressed DOM stream: a coded patch inside a zstd block")]
    PatchInsideBlock,
    /// Codec 0x02: a coded patch that does not decode to a `PATCH` within the limits (spec
    /// §4.7): the decoding error, which names the field.
    #[error("compressed DOM stream: coded patch: {0}")]
    CodedPatch(DecodeError),
    /// zstd could not allocate a decompression context or load the dictionary.
    #[error("cannot set up the DOM stream decompressor: {detail}")]
    Setup {
        /// What zstd reported.
        detail: &'static str,
    },
}

impl DecompressError {
    /// The error code a receiver closes with (spec §4.6.4, §9).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::WindowTooLarge { .. } | Self::ChunkTooLarge { .. } => ErrorCode::LimitExceeded,
            Self::UnexpectedFrame { .. } => ErrorCode::UnexpectedMessage,
            Self::Frame(e) | Self::CodedPatch(e) => e.code(),
            Self::Setup { .. } => ErrorCode::Internal,
            Self::UnknownCodec { .. }
            | Self::Corrupt { .. }
            | Self::Truncated
            | Self::BadChunkHeader
            | Self::PatchInsideBlock => ErrorCode::MalformedFrame,
        }
    }
}

fn cdict_default() -> Option<&'static CDict<'static>> {
    static CDICT: OnceLock<Option<CDict<'static>>> = OnceLock::new();
    CDICT
        .get_or_init(|| CDict::try_create(DICTIONARY, DEFAULT_LEVEL))
        .as_ref()
}

fn ddict() -> Option<&'static DDict<'static>> {
    static DDICT: OnceLock<Option<DDict<'static>>> = OnceLock::new();
    DDICT.get_or_init(|| DDict::try_create(DICTIONARY)).as_ref()
}

/// A decompression context with the dictionary `dom-v1` that refuses windows above
/// 2^`window_log_max` bytes; zstd's reason when it cannot be made.
fn dctx_with_dictionary(window_log_max: u32) -> Result<DCtx<'static>, &'static str> {
    let mut dctx = DCtx::try_create().ok_or("no memory for a decompression context")?;
    let name = |code| zstd_safe::get_error_name(code);
    match ddict() {
        Some(d) => dctx.ref_ddict(d).map_err(name)?,
        None => dctx.load_dictionary(DICTIONARY).map_err(name)?,
    };
    dctx.set_parameter(DParameter::WindowLogMax(window_log_max))
        .map_err(name)?;
    Ok(dctx)
}

/// Whether the zstd error `code` is `which` (zstd returns its codes negated,
/// `(size_t)-ZSTD_error_...`).
fn zstd_error_is(code: usize, which: ZSTD_ErrorCode) -> bool {
    code.wrapping_neg() == which as usize
}

/// Whether a zstd error code says a frame announced a window above the decoder's limit.
fn is_window_too_large(code: usize) -> bool {
    zstd_error_is(
        code,
        ZSTD_ErrorCode::ZSTD_error_frameParameter_windowTooLarge,
    )
}

/// Appends the header of a codec 0x02 chunk of `len` bytes (at most [`MAX_CHUNK_LEN`]).
fn write_chunk_header(out: &mut Vec<u8>, len: usize, coded: bool) {
    debug_assert!(len <= MAX_CHUNK_LEN as usize);
    varint::write_u32(out, (len as u32) << 1 | u32::from(coded));
}

/// The sender's half: compresses the frames of one DOM stream with one context (spec §4.6).
///
/// Call [`DomCompressor::write_frames`] (or [`DomCompressor::compress`]) with the encoded
/// frames of each batch of messages — the parts of a snapshot, or a patch — and send what it
/// appends. Every call ends with a flush, so the receiver can decode everything given so far.
/// A new DOM stream (a new epoch) needs a new compressor.
///
/// With [`Codec::CodedPatches`], each `PATCH` frame of a batch that decodes and re-encodes to
/// the same bytes, up to [`MAX_CODED_PATCH_FRAME`] bytes, travels as a coded chunk (spec
/// §4.6.5, §4.7), every other frame through zstd; the zstd data is flushed into a chunk before
/// each coded patch and at the end of the batch, when there is any. The patch coder takes the
/// strings of every `SNAPSHOT` frame as it passes, as the receiver's does (spec §4.7.4). Should
/// a coded patch come out longer than a chunk may be, that patch and every later one of the
/// stream go through zstd instead.
pub struct DomCompressor {
    cctx: CCtx<'static>,
    started: bool,
    level: i32,
    codec: Codec,
    /// The stream's patch coder (codec 0x02), until a patch could not be coded.
    patches: Option<PatchEncoder>,
    /// Codec 0x02: a zstd flush on its way into chunks…
    flushed: Vec<u8>,
    /// …and a coded patch.
    coded: Vec<u8>,
    raw_in: u64,
    out: u64,
}

impl std::fmt::Debug for DomCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomCompressor")
            .field("level", &self.level)
            .field("codec", &self.codec)
            .field("raw_in", &self.raw_in)
            .field("out", &self.out)
            .finish_non_exhaustive()
    }
}

fn setup(r: zstd_safe::SafeResult) -> Result<usize, CompressError> {
    r.map_err(|code| CompressError::Setup {
        detail: zstd_safe::get_error_name(code),
    })
}

/// A compression context at `level` with the dictionary `dom-v1`, writing frames without a
/// checksum or dictionary id: integrity comes from TLS and the hashes and addresses the frames
/// carry, and the dictionary is fixed by the codec byte or the coding.
fn cctx_with_dictionary(level: i32) -> Result<CCtx<'static>, CompressError> {
    let mut cctx = CCtx::try_create().ok_or(CompressError::Setup {
        detail: "no memory for a compression context",
    })?;
    match cdict_default() {
        Some(cdict) if level == DEFAULT_LEVEL => setup(cctx.ref_cdict(cdict))?,
        _ => setup(cctx.load_dictionary(DICTIONARY))?,
    };
    setup(cctx.set_parameter(CParameter::CompressionLevel(level)))?;
    setup(cctx.set_parameter(CParameter::ChecksumFlag(false)))?;
    setup(cctx.set_parameter(CParameter::DictIdFlag(false)))?;
    Ok(cctx)
}

impl DomCompressor {
    /// A compressor at [`DEFAULT_LEVEL`], codec 0x01.
    pub fn new() -> Result<Self, CompressError> {
        Self::with_level(DEFAULT_LEVEL)
    }

    /// A compressor at zstd `level` (1 to 22; the receiver does not need to know it), codec
    /// 0x01.
    pub fn with_level(level: i32) -> Result<Self, CompressError> {
        Self::with_codec(level, Codec::Zstd)
    }

    /// A compressor at zstd `level` writing a stream of `codec`: [`Codec::CodedPatches`] only
    /// when the session's capabilities hold `CODED_PATCHES` ([`Codec::for_session`]).
    pub fn with_codec(level: i32, codec: Codec) -> Result<Self, CompressError> {
        let mut cctx = cctx_with_dictionary(level)?;
        setup(cctx.set_parameter(CParameter::WindowLog(WINDOW_LOG_MAX)))?;
        // The frame's size is unknown (it lasts as long as the stream).
        setup(cctx.set_parameter(CParameter::ContentSizeFlag(false)))?;
        Ok(Self {
            cctx,
            started: false,
            level,
            codec,
            patches: (codec == Codec::CodedPatches).then(PatchEncoder::new),
            flushed: Vec::new(),
            coded: Vec::new(),
            raw_in: 0,
            out: 0,
        })
    }

    /// The zstd level in use.
    pub fn level(&self) -> i32 {
        self.level
    }

    /// The codec of the stream this compressor writes.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Total frame bytes given so far.
    pub fn raw_bytes(&self) -> u64 {
        self.raw_in
    }

    /// Total compressed bytes produced so far (the codec byte and chunk headers included,
    /// `COMPRESSED` frame headers not).
    pub fn compressed_bytes(&self) -> u64 {
        self.out
    }

    /// Compresses `frames` (the encoded frames of one batch, possibly empty) and appends the
    /// stream's next compressed bytes to `out`, flushed: the codec byte first on the first
    /// call. Returns how many bytes it appended. Chunks of codec 0x02 stay within the default
    /// `max_frame_body` (spec §8).
    pub fn compress(&mut self, frames: &[u8], out: &mut Vec<u8>) -> Result<usize, CompressError> {
        self.compress_within(frames, out, Limits::DEFAULT.max_frame_body)
    }

    /// [`DomCompressor::compress`] with chunks of at most `max_chunk` bytes.
    fn compress_within(
        &mut self,
        frames: &[u8],
        out: &mut Vec<u8>,
        max_chunk: u32,
    ) -> Result<usize, CompressError> {
        let start = out.len();
        if !self.started {
            out.push(self.codec.byte());
            self.started = true;
        }
        match self.codec {
            Codec::Zstd => self.zstd(frames, out)?,
            Codec::CodedPatches => {
                let max = max_chunk.clamp(1, MAX_CHUNK_LEN) as usize;
                // `frames[plain..at]` waits for zstd.
                let (mut plain, mut at) = (0, 0);
                while let Some(header) = whole_frame(&frames[at..]) {
                    let end = at + header.header_len + header.len as usize;
                    let frame = &frames[at..end];
                    match header.ty {
                        FrameType::PATCH if self.code_patch(frame, max) => {
                            self.zstd_chunks(&frames[plain..at], out, max)?;
                            write_chunk_header(out, self.coded.len(), true);
                            out.extend_from_slice(&self.coded);
                            plain = end;
                        }
                        FrameType::SNAPSHOT => self.learn_snapshot(&frame[header.header_len..]),
                        _ => {}
                    }
                    at = end;
                }
                self.zstd_chunks(&frames[plain..], out, max)?;
            }
        }
        self.raw_in += frames.len() as u64;
        let added = out.len() - start;
        self.out += added as u64;
        Ok(added)
    }

    /// Compresses `input` into the zstd stream and flushes it, appending to `out`.
    fn zstd(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), CompressError> {
        let zstd_err = |code| CompressError::Zstd {
            detail: zstd_safe::get_error_name(code),
        };
        let mut buf = InBuffer::around(input);
        while buf.pos() < input.len() {
            out.reserve(input.len() / 4 + 1024);
            let pos = out.len();
            let mut o = OutBuffer::around_pos(out, pos);
            self.cctx
                .compress_stream(&mut o, &mut buf)
                .map_err(zstd_err)?;
        }
        loop {
            out.reserve(1024);
            let pos = out.len();
            let mut o = OutBuffer::around_pos(out, pos);
            if self.cctx.flush_stream(&mut o).map_err(zstd_err)? == 0 {
                return Ok(());
            }
        }
    }

    /// Codec 0x02: compresses and flushes `input`, when there is any, as zstd chunks of at
    /// most `max` bytes.
    fn zstd_chunks(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<(), CompressError> {
        if input.is_empty() {
            return Ok(());
        }
        let mut flushed = std::mem::take(&mut self.flushed);
        flushed.clear();
        let result = self.zstd(input, &mut flushed);
        for piece in flushed.chunks(max) {
            write_chunk_header(out, piece.len(), false);
            out.extend_from_slice(piece);
        }
        self.flushed = flushed;
        result
    }

    /// Codec 0x02: lets the patch coder take the strings of a `SNAPSHOT` frame's `body`
    /// (spec §4.7.4), as the receiver's does when it reads the frame.
    fn learn_snapshot(&mut self, body: &[u8]) {
        let Some(encoder) = self.patches.as_mut() else {
            return;
        };
        if let Ok(view) = SnapshotView::parse(body, &Limits::DEFAULT) {
            encoder.learn_snapshot(&view);
        }
    }

    /// Codec 0x02: codes the `PATCH` frame `frame` into `self.coded` when it is canonical and
    /// its coding fits a chunk of `max` bytes; whether it did.
    fn code_patch(&mut self, frame: &[u8], max: usize) -> bool {
        let Some(encoder) = self.patches.as_mut() else {
            return false;
        };
        if frame.len() > MAX_CODED_PATCH_FRAME {
            return false;
        }
        let Ok(msg @ Message::Patch(_)) = frame::decode_exact(frame, &Limits::DEFAULT) else {
            return false;
        };
        // The receiver rebuilds the frame from the patch: only a canonical one comes back
        // the same.
        if frame::to_frame(&msg, &Limits::DEFAULT).ok().as_deref() != Some(frame) {
            return false;
        }
        let Message::Patch(patch) = &msg else {
            return false;
        };
        self.coded.clear();
        encoder.encode(patch, &mut self.coded);
        if self.coded.len() > max {
            // The coder has learnt from a patch the receiver will not see: its models are out
            // of step, so this stream codes no more patches.
            self.patches = None;
            return false;
        }
        true
    }

    /// Like [`DomCompressor::compress`], but appends the result as `COMPRESSED` frames ready to
    /// write on the DOM stream, each body at most `limits.max_frame_body` bytes (and so is
    /// each chunk of codec 0x02). Returns the number of bytes appended.
    pub fn write_frames(
        &mut self,
        frames: &[u8],
        out: &mut Vec<u8>,
        limits: &Limits,
    ) -> Result<usize, CompressError> {
        let start = out.len();
        let mut body = Vec::new();
        self.compress_within(frames, &mut body, limits.max_frame_body)?;
        let max = (limits.max_frame_body as usize).max(1);
        for piece in body.chunks(max) {
            varint::write_u32(out, FrameType::COMPRESSED.0);
            // A piece is at most max_frame_body, a u32.
            varint::write_u32(out, piece.len() as u32);
            out.extend_from_slice(piece);
        }
        Ok(out.len() - start)
    }
}

/// The header of the frame at the front of `buf`, if `buf` holds all of it (of any length a
/// header can announce).
fn whole_frame(buf: &[u8]) -> Option<frame::FrameHeader> {
    let any = Limits {
        max_frame_body: u32::MAX,
        ..Limits::DEFAULT
    };
    let h = frame::read_header(buf, &any).ok()??;
    (h.header_len + h.len as usize <= buf.len()).then_some(h)
}

/// Where a decoder of codec 0x02 stands in the chunk sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Before a chunk header.
    Header,
    /// Inside a zstd chunk, with this many of its bytes still to come.
    Zstd(usize),
    /// Before a coded chunk of this many bytes, which is decoded once it is all buffered.
    Coded(usize),
}

/// The receiver's half: turns the bodies of a DOM stream's `COMPRESSED` frames back into the
/// frames they carry, with bounded memory (spec §4.6.4). It reads both codecs (the stream's
/// first byte says which).
///
/// Call order: [`DomDecompressor::push_frame`] (or [`DomDecompressor::push`]) with each
/// `COMPRESSED` frame as it arrives, then [`DomDecompressor::next_frame`] until it returns
/// `Ok(None)`; at the end of the stream, [`DomDecompressor::finish`]. Memory stays within the
/// window (2^[`WINDOW_LOG_MAX`]), one frame of `limits.max_frame_body`, one output chunk and,
/// with codec 0x02, one coded chunk of at most `limits.max_frame_body` and the patch coder's
/// models, as long as every push is drained before the next: output is produced only as frames
/// are taken.
pub struct DomDecompressor {
    dctx: DCtx<'static>,
    reader: FrameReader,
    limits: Limits,
    input: Vec<u8>,
    pos: usize,
    codec: Option<Codec>,
    /// Codec 0x02: the next chunk, or the one being read.
    chunk: Chunk,
    /// Codec 0x02: the stream's patch decoder, made at its first coded chunk.
    patches: Option<PatchDecoder>,
    /// Whether the last step filled the output chunk (zstd may hold more).
    pending_output: bool,
    /// zstd's hint after the last step: 0 at the end of a zstd frame, [`BLOCK_HEADER`] between
    /// blocks, anything else inside a frame header or a block.
    hint: Option<usize>,
    output: Box<[u8]>,
    raw_out: u64,
    compressed_in: u64,
}

impl std::fmt::Debug for DomDecompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomDecompressor")
            .field("codec", &self.codec)
            .field("compressed_in", &self.compressed_in)
            .field("raw_out", &self.raw_out)
            .finish_non_exhaustive()
    }
}

impl DomDecompressor {
    /// A decompressor for one DOM stream whose inner frames, chunks and coded patches are
    /// checked against `limits`.
    pub fn new(limits: Limits) -> Result<Self, DecompressError> {
        let dctx = dctx_with_dictionary(WINDOW_LOG_MAX)
            .map_err(|detail| DecompressError::Setup { detail })?;
        Ok(Self {
            dctx,
            reader: FrameReader::new(limits),
            limits,
            input: Vec::new(),
            pos: 0,
            codec: None,
            chunk: Chunk::Header,
            patches: None,
            pending_output: false,
            hint: None,
            output: vec![0; OUTPUT_CHUNK].into_boxed_slice(),
            raw_out: 0,
            compressed_in: 0,
        })
    }

    /// The stream's codec, once its first byte has arrived.
    pub fn codec(&self) -> Option<Codec> {
        self.codec
    }

    /// Adds a frame read from the DOM stream: it must be `COMPRESSED`.
    pub fn push_frame(&mut self, frame: &RawFrame) -> Result<(), DecompressError> {
        if frame.ty != FrameType::COMPRESSED {
            return Err(DecompressError::UnexpectedFrame {
                ty: frame.ty,
                inner: false,
            });
        }
        self.push(&frame.body)
    }

    /// Adds the next compressed bytes of the stream (the body of a `COMPRESSED` frame). The
    /// first byte of the stream is the codec byte.
    pub fn push(&mut self, mut compressed: &[u8]) -> Result<(), DecompressError> {
        self.compressed_in += compressed.len() as u64;
        if self.codec.is_none() {
            let Some((&codec, rest)) = compressed.split_first() else {
                return Ok(());
            };
            self.codec =
                Some(Codec::from_byte(codec).ok_or(DecompressError::UnknownCodec { codec })?);
            compressed = rest;
        }
        // Drop what was used; what is left is a chunk header or a coded chunk in part.
        if self.pos > 0 {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        self.input.extend_from_slice(compressed);
        Ok(())
    }

    /// The next frame of the decompressed stream, once it is complete; `Ok(None)` when the
    /// bytes pushed so far hold no further complete frame.
    pub fn next_frame(&mut self) -> Result<Option<RawFrame>, DecompressError> {
        loop {
            if let Some(frame) = self.reader.next_frame()? {
                if frame.ty == FrameType::COMPRESSED {
                    return Err(DecompressError::UnexpectedFrame {
                        ty: frame.ty,
                        inner: true,
                    });
                }
                if frame.ty == FrameType::SNAPSHOT && self.codec == Some(Codec::CodedPatches) {
                    // The patch coder takes the snapshot's strings as the sender's did (spec
                    // §4.7.4); a part these limits refuse ends the stream anyway.
                    if let Ok(view) = SnapshotView::parse(&frame.body, &self.limits) {
                        let limits = self.limits;
                        self.patches
                            .get_or_insert_with(|| PatchDecoder::new(limits))
                            .learn_snapshot(&view);
                    }
                }
                return Ok(Some(frame));
            }
            let buffered = self.input.len() - self.pos;
            let progress = if self.pending_output {
                // zstd's output is drained before anything after it is read.
                let zstd_bytes = match (self.codec, self.chunk) {
                    (Some(Codec::Zstd), _) => buffered,
                    (_, Chunk::Zstd(left)) => left.min(buffered),
                    _ => 0,
                };
                self.step(zstd_bytes)?;
                true
            } else {
                match self.codec {
                    None => false,
                    Some(Codec::Zstd) => {
                        if buffered > 0 {
                            self.step(buffered)?;
                        }
                        buffered > 0
                    }
                    Some(Codec::CodedPatches) => self.next_chunk_step()?,
                }
            };
            if !progress {
                return Ok(None);
            }
        }
    }

    /// Codec 0x02, with no zstd output pending: reads a chunk header, feeds zstd from a zstd
    /// chunk, or decodes a coded chunk that is all buffered. Whether it made progress.
    fn next_chunk_step(&mut self) -> Result<bool, DecompressError> {
        let buffered = self.input.len() - self.pos;
        match self.chunk {
            Chunk::Header => {
                let (h, n) = match varint::read_u32(&self.input[self.pos..]) {
                    Varint::Complete(h, n) => (h, n),
                    Varint::Incomplete => return Ok(false),
                    Varint::Invalid => return Err(DecompressError::BadChunkHeader),
                };
                let len = h >> 1;
                if len > self.limits.max_frame_body {
                    return Err(DecompressError::ChunkTooLarge {
                        len,
                        max: self.limits.max_frame_body,
                    });
                }
                self.pos += n;
                // A u32 fits a usize on every target this crate builds for.
                let len = len as usize;
                self.chunk = match (h & 1 == 1, len) {
                    (true, _) => Chunk::Coded(len),
                    (false, 0) => Chunk::Header,
                    (false, _) => Chunk::Zstd(len),
                };
                Ok(true)
            }
            Chunk::Zstd(left) => {
                let n = left.min(buffered);
                if n == 0 {
                    return Ok(false);
                }
                self.step(n)?;
                Ok(true)
            }
            Chunk::Coded(len) => {
                if buffered < len {
                    return Ok(false);
                }
                // The coded patch follows all the output of the zstd data before it: that data
                // must end between blocks (or frames) for its output to be whole.
                if !matches!(self.hint, None | Some(0) | Some(BLOCK_HEADER)) {
                    return Err(DecompressError::PatchInsideBlock);
                }
                let coded = &self.input[self.pos..self.pos + len];
                let decoder = self
                    .patches
                    .get_or_insert_with(|| PatchDecoder::new(self.limits));
                let patch = decoder.decode(coded).map_err(DecompressError::CodedPatch)?;
                let frame = patch_frame(patch, &self.limits)?;
                self.pos += len;
                self.chunk = Chunk::Header;
                self.raw_out += frame.len() as u64;
                self.reader.push(&frame);
                Ok(true)
            }
        }
    }

    /// Decompresses at most one output chunk from the next `n` buffered bytes and hands it to
    /// the frame reader.
    fn step(&mut self, n: usize) -> Result<(), DecompressError> {
        let mut input = InBuffer::around(&self.input[self.pos..self.pos + n]);
        let mut output = OutBuffer::around(&mut self.output[..]);
        let result = self.dctx.decompress_stream(&mut output, &mut input);
        let produced = output.pos();
        let consumed = input.pos();
        let hint = result.map_err(|code| {
            if is_window_too_large(code) {
                DecompressError::WindowTooLarge {
                    max_log: WINDOW_LOG_MAX,
                }
            } else {
                DecompressError::Corrupt {
                    detail: zstd_safe::get_error_name(code),
                }
            }
        })?;
        self.pos += consumed;
        if let Chunk::Zstd(left) = self.chunk {
            self.chunk = match left - consumed {
                0 => Chunk::Header,
                left => Chunk::Zstd(left),
            };
        }
        self.pending_output = produced == self.output.len();
        self.hint = Some(hint);
        self.raw_out += produced as u64;
        self.reader.push(&self.output[..produced]);
        if produced == 0 && consumed == 0 && n > 0 {
            // zstd made no progress on input it was given: it cannot happen with a valid
            // stream, so treat it as corrupt rather than spin.
            return Err(DecompressError::Corrupt {
                detail: "no progress",
            });
        }
        Ok(())
    }

    /// Checks, when the DOM stream has ended, that it ended cleanly: at the end of a zstd block
    /// or frame and of a chunk, with every inner frame complete. Call after draining
    /// [`DomDecompressor::next_frame`].
    pub fn finish(&mut self) -> Result<(), DecompressError> {
        let inside = !matches!(self.hint, None | Some(0) | Some(BLOCK_HEADER));
        if self.pos < self.input.len()
            || self.pending_output
            || inside
            || self.chunk != Chunk::Header
        {
            return Err(DecompressError::Truncated);
        }
        self.reader.finish()?;
        Ok(())
    }

    /// Total compressed bytes pushed so far (the codec byte included).
    pub fn compressed_bytes(&self) -> u64 {
        self.compressed_in
    }

    /// Total decompressed bytes produced so far (coded patches as their frames).
    pub fn raw_bytes(&self) -> u64 {
        self.raw_out
    }
}

/// The frame of a decoded coded patch, within `limits`.
fn patch_frame(patch: Patch, limits: &Limits) -> Result<Vec<u8>, DecompressError> {
    frame::to_frame(&Message::Patch(patch), limits).map_err(|e| {
        DecompressError::CodedPatch(match e {
            EncodeError::TooLarge { len, max, .. } => DecodeError::FrameTooLarge {
                len: len as u64,
                max,
            },
            _ => DecodeError::InvalidValue {
                field: "coded_patch",
                detail: "decodes to a patch the wire cannot carry",
            },
        })
    })
}

// ───────────────────────────── blobs ─────────────────────────────

/// Content types whose blobs the reference sender tries to code as [`Coding::Zstd`]
/// (spec §7.20): texts and uncompressed formats. Images, fonts and archives in compressed
/// formats (PNG, JPEG, WebP, WOFF2, …) travel as they are.
///
/// [`Coding::Zstd`]: crate::message::Coding::Zstd
pub fn worth_coding(content_type: &str) -> bool {
    let t = content_type.trim().to_ascii_lowercase();
    let essence = t.split(';').next().unwrap_or("").trim();
    essence.starts_with("text/")
        || matches!(
            essence,
            "image/svg+xml"
                | "image/bmp"
                | "image/x-icon"
                | "image/vnd.microsoft.icon"
                | "application/json"
                | "application/javascript"
                | "application/xml"
                | "application/xhtml+xml"
                | "application/wasm"
                | "font/ttf"
                | "font/otf"
                | "application/font-sfnt"
        )
}

/// Codes a blob as one Zstandard frame with the dictionary `dom-v1`, for `RESOURCE` pieces of
/// [`Coding::Zstd`] (spec §7.20): at [`DEFAULT_LEVEL`], or [`LARGE_SNAPSHOT_LEVEL`] above
/// [`LARGE_SNAPSHOT_BYTES`], as for snapshots. `Ok(None)` when the frame would not be smaller
/// than the blob: it then travels as [`Coding::Identity`].
///
/// [`Coding::Zstd`]: crate::message::Coding::Zstd
/// [`Coding::Identity`]: crate::message::Coding::Identity
pub fn code_blob(bytes: &[u8]) -> Result<Option<Vec<u8>>, CompressError> {
    // One-shot, so zstd knows the size: the frame says it, and the window fits the blob.
    let mut cctx = cctx_with_dictionary(level_for_snapshot(bytes.len()))?;
    let mut out = Vec::with_capacity(bytes.len());
    match cctx.compress2(&mut out, bytes) {
        Ok(_) => Ok(Some(out)),
        // No room: the frame would be at least as long as the blob.
        Err(code) if zstd_error_is(code, ZSTD_ErrorCode::ZSTD_error_dstSize_tooSmall) => Ok(None),
        Err(code) => Err(CompressError::Zstd {
            detail: zstd_safe::get_error_name(code),
        }),
    }
    .map(|coded| coded.filter(|c| c.len() < bytes.len()))
}

/// Why the coded pieces of a blob were refused (spec §7.20, §14.8).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlobCodingError {
    /// The coded bytes are not valid Zstandard data, or announce a window larger than the
    /// blob needs.
    #[error("coded blob: corrupt zstd data: {detail}")]
    Corrupt {
        /// What zstd reported.
        detail: &'static str,
    },
    /// The frame decodes to more than the announced `total_len`.
    #[error("coded blob: decodes to more than {total_len} bytes")]
    TooLong {
        /// The announced length.
        total_len: u64,
    },
    /// The frame ended after fewer than `total_len` bytes.
    #[error("coded blob: ends after {len} of {total_len} bytes")]
    TooShort {
        /// What it decoded to.
        len: u64,
        /// The announced length.
        total_len: u64,
    },
    /// Coded bytes follow the end of the frame.
    #[error("coded blob: bytes after the end of its frame")]
    Trailing,
    /// zstd could not allocate a decompression context or load the dictionary.
    #[error("cannot set up the blob decoder: {detail}")]
    Setup {
        /// What zstd reported.
        detail: &'static str,
    },
}

/// The receiver's half of a blob coded as [`Coding::Zstd`] (spec §7.20): decodes the pieces
/// as they arrive into a buffer of exactly the announced length, allocated once, and refuses a
/// frame that decodes to more or to less. The frame's window may not exceed what a blob of
/// that length needs (with the dictionary, at most 2^[`WINDOW_LOG_MAX`] bytes), so the
/// decoder's memory follows the announced length too.
///
/// [`Coding::Zstd`]: crate::message::Coding::Zstd
pub struct BlobDecoder {
    dctx: DCtx<'static>,
    out: Vec<u8>,
    total_len: usize,
    ended: bool,
}

impl std::fmt::Debug for BlobDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobDecoder")
            .field("decoded", &self.out.len())
            .field("total_len", &self.total_len)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl BlobDecoder {
    /// A decoder for a blob of `total_len` bytes (which the caller has checked against its
    /// limits: this allocates it).
    pub fn new(total_len: usize) -> Result<Self, BlobCodingError> {
        // The smallest window that holds the blob and the dictionary before it.
        let need = total_len.saturating_add(DICTIONARY.len()).max(1);
        let window_log = (usize::BITS - (need - 1).leading_zeros()).clamp(10, WINDOW_LOG_MAX);
        let dctx =
            dctx_with_dictionary(window_log).map_err(|detail| BlobCodingError::Setup { detail })?;
        let mut out = Vec::new();
        out.reserve_exact(total_len);
        Ok(Self {
            dctx,
            out,
            total_len,
            ended: false,
        })
    }

    /// Decodes the next coded piece.
    pub fn push(&mut self, coded: &[u8]) -> Result<(), BlobCodingError> {
        let total_len = self.total_len as u64;
        let mut input = InBuffer::around(coded);
        loop {
            if self.ended {
                return match input.pos() < coded.len() {
                    true => Err(BlobCodingError::Trailing),
                    false => Ok(()),
                };
            }
            let before = input.pos();
            // Straight into the blob's buffer, which holds exactly what was announced; once it
            // is full, into one spare byte that must stay empty.
            let (hint, produced) = if self.out.len() < self.out.capacity() {
                let pos = self.out.len();
                let mut o = OutBuffer::around_pos(&mut self.out, pos);
                let hint = self.dctx.decompress_stream(&mut o, &mut input);
                (hint, o.pos() - pos)
            } else {
                let mut spare = [0u8; 1];
                let mut o = OutBuffer::around(&mut spare[..]);
                let hint = self.dctx.decompress_stream(&mut o, &mut input);
                if o.pos() > 0 {
                    return Err(BlobCodingError::TooLong { total_len });
                }
                (hint, 0)
            };
            let hint = hint.map_err(|code| BlobCodingError::Corrupt {
                detail: if is_window_too_large(code) {
                    "window larger than the blob needs"
                } else {
                    zstd_safe::get_error_name(code)
                },
            })?;
            // The buffer may hold a little more than was asked for: never more than announced.
            if self.out.len() > self.total_len {
                return Err(BlobCodingError::TooLong { total_len });
            }
            if hint == 0 {
                self.ended = true;
                if self.out.len() < self.total_len {
                    return Err(BlobCodingError::TooShort {
                        len: self.out.len() as u64,
                        total_len,
                    });
                }
                continue;
            }
            if input.pos() == before && produced == 0 {
                // Waiting for more input, or stuck on input zstd will not take.
                return match input.pos() < coded.len() {
                    true => Err(BlobCodingError::Corrupt {
                        detail: "no progress",
                    }),
                    false => Ok(()),
                };
            }
        }
    }

    /// Whether the frame has ended (the blob is whole).
    pub fn is_done(&self) -> bool {
        self.ended
    }

    /// The decoded blob, once the frame has ended.
    pub fn finish(self) -> Result<Vec<u8>, BlobCodingError> {
        if !self.ended {
            return Err(BlobCodingError::TooShort {
                len: self.out.len() as u64,
                total_len: self.total_len as u64,
            });
        }
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;
    use crate::frame::{self, encode_frame};
    use crate::message::{Ping, Snapshot};
    use crate::{Attr, NodeRecord, Ns, PatchOp, Sym};

    fn pings(range: std::ops::Range<u64>) -> Vec<u8> {
        let mut out = Vec::new();
        for nonce in range {
            encode_frame(
                &Message::Ping(Ping { nonce: nonce * 977 }),
                &mut out,
                &Limits::DEFAULT,
            )
            .unwrap();
        }
        out
    }

    /// Checks that `body` decodes to `frames` when pushed in pieces of several sizes.
    fn decodes_in_pieces(body: &[u8], frames: &[u8], limits: Limits) {
        for step in [1, 2, 3, 7, 64] {
            let mut d = DomDecompressor::new(limits).unwrap();
            let mut got = Vec::new();
            for piece in body.chunks(step) {
                d.push(piece).unwrap();
                got.extend(drain(&mut d).unwrap());
            }
            d.finish().unwrap();
            assert_eq!(got, frames, "pieces of {step}");
        }
    }

    fn drain(d: &mut DomDecompressor) -> Result<Vec<u8>, DecompressError> {
        let mut out = Vec::new();
        while let Some(f) = d.next_frame()? {
            out.extend(f.to_bytes());
        }
        Ok(out)
    }

    #[test]
    fn every_flushed_batch_decodes_whole() {
        let mut c = DomCompressor::new().unwrap();
        let mut d = DomDecompressor::new(Limits::DEFAULT).unwrap();
        for batch in 0..20u64 {
            let frames = pings(batch * 10..batch * 10 + 1 + batch % 3);
            let mut z = Vec::new();
            c.compress(&frames, &mut z).unwrap();
            d.push(&z).unwrap();
            assert_eq!(drain(&mut d).unwrap(), frames, "batch {batch}");
            d.finish().unwrap();
        }
        assert_eq!(c.raw_bytes(), d.raw_bytes());
        assert_eq!(c.compressed_bytes(), d.compressed_bytes());
    }

    #[test]
    fn context_spans_batches() {
        // The same batch again costs far less than the first time: the context remembers it.
        let frames = pings(1000..1040);
        let mut c = DomCompressor::new().unwrap();
        let mut first = Vec::new();
        c.compress(&frames, &mut first).unwrap();
        let mut second = Vec::new();
        c.compress(&frames, &mut second).unwrap();
        assert!(
            second.len() * 4 < first.len(),
            "{} vs {}",
            second.len(),
            first.len()
        );
    }

    #[test]
    fn bodies_may_be_split_anywhere() {
        let frames = pings(0..50);
        let limits = Limits::DEFAULT;
        let mut wire = Vec::new();
        let mut c = DomCompressor::new().unwrap();
        c.write_frames(&frames, &mut wire, &limits).unwrap();
        // The wire is COMPRESSED frames; their concatenated bodies decode in any pieces.
        let mut reader = FrameReader::new(limits);
        reader.push(&wire);
        let mut body = Vec::new();
        while let Some(f) = reader.next_frame().unwrap() {
            assert_eq!(f.ty, FrameType::COMPRESSED);
            assert!(matches!(f.decode(&limits).unwrap(), Message::Compressed(_)));
            body.extend(f.body);
        }
        assert_eq!(body[0], CODEC_ZSTD_DOM_V1);
        decodes_in_pieces(&body, &frames, limits);
    }

    #[test]
    fn large_batches_are_split_into_frames_within_the_limit() {
        let limits = Limits {
            max_frame_body: 100,
            ..Limits::DEFAULT
        };
        // Incompressible content: nonces from a simple generator.
        let mut frames = Vec::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            encode_frame(&Message::Ping(Ping { nonce: x }), &mut frames, &limits).unwrap();
        }
        let mut wire = Vec::new();
        DomCompressor::new()
            .unwrap()
            .write_frames(&frames, &mut wire, &limits)
            .unwrap();
        let mut reader = FrameReader::new(limits);
        reader.push(&wire);
        let mut d = DomDecompressor::new(limits).unwrap();
        let mut n = 0;
        while let Some(f) = reader.next_frame().unwrap() {
            assert!(f.body.len() <= 100);
            d.push_frame(&f).unwrap();
            n += 1;
        }
        assert!(n > 1);
        assert_eq!(drain(&mut d).unwrap(), frames);
    }

    #[test]
    fn wrong_frames_are_typed_errors() {
        let limits = Limits::DEFAULT;
        let mut d = DomDecompressor::new(limits).unwrap();
        let ping = RawFrame {
            ty: FrameType::PING,
            body: vec![7],
        };
        let err = d.push_frame(&ping).unwrap_err();
        assert_eq!(
            err,
            DecompressError::UnexpectedFrame {
                ty: FrameType::PING,
                inner: false
            }
        );
        assert_eq!(err.code(), ErrorCode::UnexpectedMessage);

        // A COMPRESSED frame inside the decompressed stream.
        let nested = RawFrame {
            ty: FrameType::COMPRESSED,
            body: vec![1, 2, 3],
        }
        .to_bytes();
        let mut z = Vec::new();
        DomCompressor::new()
            .unwrap()
            .compress(&nested, &mut z)
            .unwrap();
        d.push(&z).unwrap();
        assert!(matches!(
            d.next_frame(),
            Err(DecompressError::UnexpectedFrame { inner: true, .. })
        ));
    }

    #[test]
    fn unknown_codec_is_refused() {
        let mut d = DomDecompressor::new(Limits::DEFAULT).unwrap();
        // An empty body says nothing yet.
        d.push(&[]).unwrap();
        let err = d.push(&[0x03, 0x28, 0xb5]).unwrap_err();
        assert_eq!(err, DecompressError::UnknownCodec { codec: 3 });
        assert_eq!(err.code(), ErrorCode::MalformedFrame);
    }

    #[test]
    fn corrupt_data_is_a_typed_error_not_a_panic() {
        let frames = pings(0..30);
        let mut z = Vec::new();
        DomCompressor::new()
            .unwrap()
            .compress(&frames, &mut z)
            .unwrap();
        // Flip every byte in turn (after the codec byte): each stream either decodes to
        // something (then the frame layer judges it) or fails with a typed error.
        let mut typed = 0;
        for i in 1..z.len() {
            let mut bad = z.clone();
            bad[i] ^= 0xa5;
            let mut d = DomDecompressor::new(Limits::DEFAULT).unwrap();
            d.push(&bad).unwrap();
            let result = drain(&mut d).and_then(|_| d.finish());
            if let Err(e) = result {
                typed += 1;
                let _ = e.code();
                assert!(!e.to_string().is_empty());
            }
        }
        assert!(typed > 0);
        // Garbage after the codec byte.
        let mut d = DomDecompressor::new(Limits::DEFAULT).unwrap();
        d.push(&[CODEC_ZSTD_DOM_V1, 1, 2, 3, 4, 5, 6, 7, 8])
            .unwrap();
        let err = d.next_frame().unwrap_err();
        assert!(matches!(err, DecompressError::Corrupt { .. }), "{err:?}");
        assert_eq!(err.code(), ErrorCode::MalformedFrame);
    }

    /// Compresses `data` with the dictionary and the given window, outside the rules.
    fn zstd_with_window(data: &[u8], window_log: u32) -> Vec<u8> {
        let mut cctx = CCtx::create();
        cctx.load_dictionary(DICTIONARY).unwrap();
        cctx.set_parameter(CParameter::WindowLog(window_log))
            .unwrap();
        cctx.set_parameter(CParameter::ContentSizeFlag(false))
            .unwrap();
        let mut out = vec![CODEC_ZSTD_DOM_V1];
        out.reserve(data.len() + 1024);
        let mut input = InBuffer::around(data);
        while input.pos() < data.len() {
            let pos = out.len();
            cctx.compress_stream(&mut OutBuffer::around_pos(&mut out, pos), &mut input)
                .unwrap();
            out.reserve(1024);
        }
        loop {
            out.reserve(1024);
            let pos = out.len();
            if cctx
                .end_stream(&mut OutBuffer::around_pos(&mut out, pos))
                .unwrap()
                == 0
            {
                break;
            }
        }
        out
    }

    #[test]
    fn a_window_above_the_limit_is_refused() {
        let z = zstd_with_window(&pings(0..10), WINDOW_LOG_MAX + 1);
        let mut d = DomDecompressor::new(Limits::DEFAULT).unwrap();
        d.push(&z).unwrap();
        let err = d.next_frame().unwrap_err();
        assert_eq!(
            err,
            DecompressError::WindowTooLarge {
                max_log: WINDOW_LOG_MAX
            }
        );
        assert_eq!(err.code(), ErrorCode::LimitExceeded);
        // At the limit it is fine, and a finished zstd frame ends the stream cleanly.
        let frames = pings(0..10);
        let z = zstd_with_window(&frames, WINDOW_LOG_MAX);
        let mut d = DomDecompressor::new(Limits::DEFAULT).unwrap();
        d.push(&z).unwrap();
        assert_eq!(drain(&mut d).unwrap(), frames);
        d.finish().unwrap();
    }

    #[test]
    fn a_bomb_is_refused_at_the_frame_limit_without_expanding() {
        // A few hundred compressed bytes announce a frame far above the limit, then expand to
        // 64 MiB of zeros. The header is refused before the body is buffered, and only the
        // first output chunk was ever produced.
        let limits = Limits {
            max_frame_body: 1 << 20,
            ..Limits::DEFAULT
        };
        let mut inner = Vec::new();
        varint::write_u32(&mut inner, FrameType::PATCH.0);
        varint::write_u32(&mut inner, (1 << 20) + 1);
        inner.resize(64 << 20, 0);
        let mut z = Vec::new();
        DomCompressor::with_level(1)
            .unwrap()
            .compress(&inner, &mut z)
            .unwrap();
        assert!(z.len() < 64 * 1024, "bomb is {} bytes", z.len());
        let mut d = DomDecompressor::new(limits).unwrap();
        d.push(&z).unwrap();
        let err = d.next_frame().unwrap_err();
        assert!(
            matches!(
                err,
                DecompressError::Frame(DecodeError::FrameTooLarge { .. })
            ),
            "{err:?}"
        );
        assert_eq!(err.code(), ErrorCode::LimitExceeded);
        assert!(d.raw_bytes() <= OUTPUT_CHUNK as u64, "{}", d.raw_bytes());

        // Within the limit, a frame of zeros is produced chunk by chunk and handed over whole;
        // the decompressor never runs ahead of the frames taken.
        let mut inner = Vec::new();
        varint::write_u32(&mut inner, 0x1001);
        varint::write_u32(&mut inner, 1 << 20);
        inner.resize(inner.len() + (1 << 20), 0);
        let mut z = Vec::new();
        DomCompressor::new()
            .unwrap()
            .compress(&inner, &mut z)
            .unwrap();
        let mut d = DomDecompressor::new(limits).unwrap();
        d.push(&z).unwrap();
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(f.body.len(), 1 << 20);
        assert!(d.raw_bytes() < (1 << 20) + 2 * OUTPUT_CHUNK as u64);
        assert_eq!(d.next_frame().unwrap(), None);
        d.finish().unwrap();
    }

    #[test]
    fn truncation_is_detected() {
        let frames = pings(0..200);
        let mut z = Vec::new();
        DomCompressor::new()
            .unwrap()
            .compress(&frames, &mut z)
            .unwrap();
        for cut in [2, 5, z.len() / 2, z.len() - 1] {
            let mut d = DomDecompressor::new(Limits::DEFAULT).unwrap();
            d.push(&z[..cut]).unwrap();
            let result = drain(&mut d).and_then(|_| d.finish());
            assert!(result.is_err(), "cut at {cut} of {}", z.len());
        }
    }

    #[test]
    fn inner_frames_are_checked_against_the_limits() {
        let limits = Limits {
            max_frame_body: 4,
            ..Limits::DEFAULT
        };
        let frames =
            frame::to_frame(&Message::Ping(Ping { nonce: u64::MAX }), &Limits::DEFAULT).unwrap();
        let mut z = Vec::new();
        DomCompressor::new()
            .unwrap()
            .compress(&frames, &mut z)
            .unwrap();
        let mut d = DomDecompressor::new(limits).unwrap();
        d.push(&z).unwrap();
        assert!(matches!(
            d.next_frame(),
            Err(DecompressError::Frame(DecodeError::FrameTooLarge { .. }))
        ));
    }

    // ─────────────────────── codec 0x02: coded patches ───────────────────────

    fn snapshot_frames() -> Vec<u8> {
        let el = |name: &str, children| NodeRecord::Element {
            ns: Ns::Html,
            name: Sym::Lit(name.into()),
            attrs: vec![Attr {
                name: Sym::Lit("class".into()),
                value: Sym::New(format!("{name}-box")),
            }],
            children,
        };
        let mut nodes = vec![el("html", 1), el("body", 20)];
        for i in 0..20 {
            nodes.push(NodeRecord::Text {
                text: Sym::Lit(format!("item {i} of the list")),
            });
        }
        let mut out = Vec::new();
        for (part, nodes) in [nodes[..10].to_vec(), nodes[10..].to_vec()]
            .into_iter()
            .enumerate()
        {
            let snapshot = Snapshot {
                epoch: 2,
                part: part as u32,
                url: if part == 0 {
                    "https://x.test/".into()
                } else {
                    String::new()
                },
                nodes,
                hash: (part == 1).then_some([7; 16]),
            };
            encode_frame(&Message::Snapshot(snapshot), &mut out, &Limits::DEFAULT).unwrap();
        }
        out
    }

    fn patch(seq: u64, text: &str) -> Patch {
        Patch {
            epoch: 2,
            seq,
            ops: vec![
                PatchOp::SetText {
                    node: 3 + seq % 20,
                    text: Sym::Lit(text.into()),
                },
                PatchOp::SetAttr {
                    node: 2,
                    name: Sym::Lit("class".into()),
                    value: Sym::Lit(format!("body-box step-{seq}")),
                },
            ],
            hash: seq.to_be_bytes(),
        }
    }

    fn patch_frame(seq: u64, text: &str) -> Vec<u8> {
        frame::to_frame(&Message::Patch(patch(seq, text)), &Limits::DEFAULT).unwrap()
    }

    /// The batches of a stream: the snapshot, then a patch per batch, the fifth batch two
    /// patches and a ping.
    fn batches() -> Vec<Vec<u8>> {
        let mut out = vec![snapshot_frames()];
        for seq in 1..=8u64 {
            let mut batch = patch_frame(seq, &format!("{seq} minutes ago"));
            if seq == 5 {
                batch.extend(pings(3..4));
                batch.extend(patch_frame(50, "then this"));
            }
            out.push(batch);
        }
        out
    }

    /// The chunks of a codec 0x02 body after its codec byte: (coded, length) each.
    fn chunks(mut body: &[u8]) -> Vec<(bool, usize)> {
        let mut out = Vec::new();
        while !body.is_empty() {
            let varint::Varint::Complete(h, n) = varint::read_u32(body) else {
                panic!("bad chunk header");
            };
            let len = (h >> 1) as usize;
            out.push((h & 1 == 1, len));
            body = &body[n + len..];
        }
        out
    }

    fn coded_compressor() -> DomCompressor {
        DomCompressor::with_codec(DEFAULT_LEVEL, Codec::CodedPatches).unwrap()
    }

    #[test]
    fn codecs_by_byte_and_by_capabilities() {
        for codec in [Codec::Zstd, Codec::CodedPatches] {
            assert_eq!(Codec::from_byte(codec.byte()), Some(codec));
        }
        assert_eq!(Codec::from_byte(0), None);
        assert_eq!(Codec::from_byte(3), None);
        let (c, p) = (Capabilities::COMPRESSION, Capabilities::CODED_PATCHES);
        assert_eq!(Codec::for_session(Capabilities(0)), None);
        assert_eq!(Codec::for_session(p), None);
        assert_eq!(Codec::for_session(c), Some(Codec::Zstd));
        assert_eq!(Codec::for_session(c | p), Some(Codec::CodedPatches));
        assert_eq!(DomCompressor::new().unwrap().codec(), Codec::Zstd);
    }

    #[test]
    fn coded_patches_decode_batch_by_batch() {
        let mut c = coded_compressor();
        let mut d = DomDecompressor::new(Limits::DEFAULT).unwrap();
        for (i, batch) in batches().iter().enumerate() {
            let mut z = Vec::new();
            c.compress(batch, &mut z).unwrap();
            let body = if i == 0 {
                assert_eq!(z[0], CODEC_CODED_PATCHES);
                &z[1..]
            } else {
                &z[..]
            };
            let kinds: Vec<bool> = chunks(body).iter().map(|&(coded, _)| coded).collect();
            let want = match i {
                // The snapshot through zstd; a patch alone costs no zstd block.
                0 => vec![false],
                5 => vec![true, false, true],
                _ => vec![true],
            };
            assert_eq!(kinds, want, "batch {i}");
            d.push(&z).unwrap();
            assert_eq!(&drain(&mut d).unwrap(), batch, "batch {i}");
            d.finish().unwrap();
        }
        assert_eq!(d.codec(), Some(Codec::CodedPatches));
        assert_eq!(c.raw_bytes(), d.raw_bytes());
        assert_eq!(c.compressed_bytes(), d.compressed_bytes());
    }

    #[test]
    fn coded_streams_decode_in_pieces_of_any_size() {
        let limits = Limits::DEFAULT;
        let mut c = coded_compressor();
        let mut wire = Vec::new();
        let mut frames = Vec::new();
        for batch in batches() {
            c.write_frames(&batch, &mut wire, &limits).unwrap();
            frames.extend(batch);
        }
        let mut reader = FrameReader::new(limits);
        reader.push(&wire);
        let mut body = Vec::new();
        while let Some(f) = reader.next_frame().unwrap() {
            body.extend(f.body);
        }
        decodes_in_pieces(&body, &frames, limits);
    }

    #[test]
    fn patch_frames_that_do_not_round_trip_go_through_zstd() {
        let good = patch_frame(1, "fine");
        // Not a PATCH body at all; a PATCH with a byte after it; a PATCH whose epoch is a
        // non-minimal varint (postcard may read it, but it re-encodes shorter).
        let garbage = RawFrame {
            ty: FrameType::PATCH,
            body: vec![0xff, 0xff, 0xff],
        }
        .to_bytes();
        let mut body = good[2..].to_vec();
        body.push(0);
        let trailing = RawFrame {
            ty: FrameType::PATCH,
            body,
        }
        .to_bytes();
        let mut body = vec![0x82, 0x00];
        body.extend_from_slice(&good[3..]);
        let long_epoch = RawFrame {
            ty: FrameType::PATCH,
            body,
        }
        .to_bytes();
        for bad in [garbage, trailing, long_epoch] {
            let mut c = coded_compressor();
            let mut z = Vec::new();
            let batch = [&bad[..], &good[..]].concat();
            c.compress(&batch, &mut z).unwrap();
            assert_eq!(
                chunks(&z[1..]),
                vec![(false, chunks(&z[1..])[0].1), (true, chunks(&z[1..])[1].1)]
            );
            let mut d = DomDecompressor::new(Limits::DEFAULT).unwrap();
            d.push(&z).unwrap();
            assert_eq!(drain(&mut d).unwrap(), batch);
            d.finish().unwrap();
        }
        // Bytes that are not whole frames go through zstd as they are.
        let mut c = coded_compressor();
        let cut = &good[..good.len() - 1];
        let mut z = Vec::new();
        c.compress(cut, &mut z).unwrap();
        assert!(chunks(&z[1..]).iter().all(|&(coded, _)| !coded));
    }

    #[test]
    fn large_patches_go_through_zstd_and_small_ones_stay_coded() {
        let big = patch_frame(1, &"a long text ".repeat(MAX_CODED_PATCH_FRAME / 8));
        assert!(big.len() > MAX_CODED_PATCH_FRAME);
        let small = patch_frame(2, "short");
        let mut c = coded_compressor();
        let mut d = DomDecompressor::new(Limits::DEFAULT).unwrap();
        for (i, (frame, coded)) in [(&big, false), (&small, true)].into_iter().enumerate() {
            let mut z = Vec::new();
            c.compress(frame, &mut z).unwrap();
            // The stream's first bytes start with the codec byte.
            let data = if i == 0 { &z[1..] } else { &z[..] };
            let kinds: Vec<bool> = chunks(data).iter().map(|&(k, _)| k).collect();
            assert_eq!(kinds, vec![coded]);
            d.push(&z).unwrap();
            assert_eq!(&drain(&mut d).unwrap(), frame);
        }
        d.finish().unwrap();
    }

    #[test]
    fn a_patch_that_codes_longer_than_a_chunk_ends_coding_for_the_stream() {
        let limits = Limits {
            max_frame_body: 100,
            ..Limits::DEFAULT
        };
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let long: String = (0..300)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'!' + (x >> 58) as u8)
            })
            .collect();
        let mut c = coded_compressor();
        let mut d = DomDecompressor::new(Limits::DEFAULT).unwrap();
        let mut reader = FrameReader::new(limits);
        for (seq, text, coded) in [
            (1, "short", true),
            (2, long.as_str(), false),
            (3, "short", false),
        ] {
            let batch = patch_frame(seq, text);
            let mut wire = Vec::new();
            c.write_frames(&batch, &mut wire, &limits).unwrap();
            reader.push(&wire);
            let mut body = Vec::new();
            while let Some(f) = reader.next_frame().unwrap() {
                assert!(f.body.len() <= 100);
                body.extend(f.body);
            }
            let start = usize::from(seq == 1);
            let found = chunks(&body[start..]);
            assert!(found.iter().all(|&(_, len)| len <= 100), "{found:?}");
            assert_eq!(
                found.iter().any(|&(c, _)| c),
                coded,
                "patch {seq}: {found:?}"
            );
            d.push(&body).unwrap();
            assert_eq!(drain(&mut d).unwrap(), batch);
        }
        d.finish().unwrap();
    }

    /// A codec 0x02 stream of the given chunks: (coded, bytes).
    fn chunked(parts: &[(bool, &[u8])]) -> Vec<u8> {
        let mut out = vec![CODEC_CODED_PATCHES];
        for &(coded, bytes) in parts {
            write_chunk_header(&mut out, bytes.len(), coded);
            out.extend_from_slice(bytes);
        }
        out
    }

    /// Pushes `stream`, drains and finishes: the first error.
    fn refuse(stream: &[u8], limits: Limits) -> DecompressError {
        let mut d = DomDecompressor::new(limits).unwrap();
        d.push(stream)
            .and_then(|()| drain(&mut d))
            .and_then(|_| d.finish())
            .expect_err("refused")
    }

    #[test]
    fn codec_0x02_errors_are_typed() {
        // The coded patch and the zstd data of a good stream.
        let mut c = coded_compressor();
        let (mut snap, mut coded) = (Vec::new(), Vec::new());
        c.compress(&pings(0..20), &mut snap).unwrap();
        c.compress(&patch_frame(1, "one"), &mut coded).unwrap();
        let zstd_data = &snap[1 + varint::len_u32(chunks(&snap[1..])[0].1 as u32 * 2)..];
        let coded_data = &coded[1..];
        assert_eq!(chunks(&coded), vec![(true, coded_data.len())]);

        let err = refuse(&[CODEC_CODED_PATCHES, 0x80, 0x00], Limits::DEFAULT);
        assert_eq!(err, DecompressError::BadChunkHeader);
        assert_eq!(err.code(), ErrorCode::MalformedFrame);

        let limits = Limits {
            max_frame_body: 50,
            ..Limits::DEFAULT
        };
        let mut big = vec![CODEC_CODED_PATCHES];
        write_chunk_header(&mut big, 51, true);
        let err = refuse(&big, limits);
        assert_eq!(err, DecompressError::ChunkTooLarge { len: 51, max: 50 });
        assert_eq!(err.code(), ErrorCode::LimitExceeded);
        // Refused from the header alone, and for zstd chunks too; at the limit it waits.
        let mut big = vec![CODEC_CODED_PATCHES];
        write_chunk_header(&mut big, 51, false);
        assert_eq!(
            refuse(&big, limits),
            DecompressError::ChunkTooLarge { len: 51, max: 50 }
        );
        let mut at_limit = vec![CODEC_CODED_PATCHES];
        write_chunk_header(&mut at_limit, 50, true);
        assert_eq!(refuse(&at_limit, limits), DecompressError::Truncated);

        // A coded patch with bytes after it does not decode.
        let mut longer = coded_data.to_vec();
        longer.extend_from_slice(&[0x55; 8]);
        let err = refuse(&chunked(&[(true, &longer)]), Limits::DEFAULT);
        assert!(matches!(err, DecompressError::CodedPatch(_)), "{err:?}");
        assert_eq!(err.code(), ErrorCode::MalformedFrame);

        // A coded patch between two halves of a zstd block.
        let half = zstd_data.len() / 2;
        let err = refuse(
            &chunked(&[
                (false, &zstd_data[..half]),
                (true, coded_data),
                (false, &zstd_data[half..]),
            ]),
            Limits::DEFAULT,
        );
        assert_eq!(err, DecompressError::PatchInsideBlock);
        assert_eq!(err.code(), ErrorCode::MalformedFrame);
        // Split elsewhere between zstd chunks, the block is fine, and so is an empty chunk.
        let whole = chunked(&[
            (false, &zstd_data[..half]),
            (false, &[]),
            (false, &zstd_data[half..]),
            (true, coded_data),
        ]);
        let mut d = DomDecompressor::new(Limits::DEFAULT).unwrap();
        d.push(&whole).unwrap();
        assert_eq!(
            drain(&mut d).unwrap(),
            [pings(0..20), patch_frame(1, "one")].concat()
        );
        d.finish().unwrap();

        // Cut inside a chunk header, a coded chunk or a zstd chunk.
        let mut two_byte_header = vec![CODEC_CODED_PATCHES];
        write_chunk_header(&mut two_byte_header, 200, false);
        for cut in [
            &two_byte_header[..2],
            &whole[..whole.len() - 1],
            &whole[..half],
        ] {
            assert_eq!(refuse(cut, Limits::DEFAULT), DecompressError::Truncated);
        }
    }

    #[test]
    fn a_coded_patch_waits_for_its_whole_chunk() {
        let mut c = coded_compressor();
        let mut z = Vec::new();
        c.compress(&patch_frame(1, "one"), &mut z).unwrap();
        let mut d = DomDecompressor::new(Limits::DEFAULT).unwrap();
        d.push(&z[..z.len() - 1]).unwrap();
        assert_eq!(d.next_frame().unwrap(), None);
        assert_eq!(d.finish(), Err(DecompressError::Truncated));
        d.push(&z[z.len() - 1..]).unwrap();
        assert_eq!(drain(&mut d).unwrap(), patch_frame(1, "one"));
        d.finish().unwrap();
    }

    fn stylesheet(rules: usize) -> Vec<u8> {
        let mut css = String::new();
        for i in 0..rules {
            css.push_str(&format!(
                ".item-{i}{{margin:{}px;padding:{}px;color:#{:06x}}}\n",
                i % 17,
                i % 5,
                i * 2654435761 % 0xffffff
            ));
        }
        css.into_bytes()
    }

    fn decode_in(coded: &[u8], total_len: usize, piece: usize) -> Result<Vec<u8>, BlobCodingError> {
        let mut d = BlobDecoder::new(total_len)?;
        for p in coded.chunks(piece.max(1)) {
            d.push(p)?;
        }
        d.finish()
    }

    #[test]
    fn blobs_code_and_decode_in_pieces_of_any_size() {
        let css = stylesheet(300);
        let coded = code_blob(&css)
            .unwrap()
            .expect("a stylesheet codes smaller");
        assert!(
            coded.len() * 3 < css.len(),
            "{} of {}",
            coded.len(),
            css.len()
        );
        for piece in [1, 7, 1000, coded.len()] {
            assert_eq!(
                decode_in(&coded, css.len(), piece).unwrap(),
                css,
                "pieces of {piece}"
            );
        }
        // Bytes that do not compress stay as they are.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert_eq!(code_blob(&noise).unwrap(), None);
        assert_eq!(code_blob(b"").unwrap(), None);
    }

    #[test]
    fn a_coded_blob_decodes_to_exactly_its_length_or_is_refused() {
        let css = stylesheet(100);
        let coded = code_blob(&css).unwrap().unwrap();
        let n = css.len();
        assert_eq!(
            decode_in(&coded, n - 1, 64),
            Err(BlobCodingError::TooLong {
                total_len: n as u64 - 1
            })
        );
        assert_eq!(
            decode_in(&coded, n + 1, 64),
            Err(BlobCodingError::TooShort {
                len: n as u64,
                total_len: n as u64 + 1
            })
        );
        let mut trailing = coded.clone();
        trailing.push(0);
        assert_eq!(decode_in(&trailing, n, 64), Err(BlobCodingError::Trailing));
        assert_eq!(
            decode_in(&trailing, n, trailing.len()),
            Err(BlobCodingError::Trailing)
        );
        // Cut short: not finished.
        assert!(matches!(
            decode_in(&coded[..coded.len() - 1], n, 64),
            Err(BlobCodingError::TooShort { .. })
        ));
        assert!(matches!(
            decode_in(b"not zstd at all", n, 64),
            Err(BlobCodingError::Corrupt { .. })
        ));
        // A small frame of a megabyte of zeros, announced as 100 bytes: refused, by its window
        // or at the 101st byte, never decoded further.
        let zeros = code_blob(&vec![0u8; 1 << 20]).unwrap().unwrap();
        assert!(zeros.len() < 1000);
        assert!(matches!(
            decode_in(&zeros, 100, zeros.len()),
            Err(BlobCodingError::TooLong { total_len: 100 } | BlobCodingError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_coded_blob_may_not_ask_for_a_window_larger_than_it_needs() {
        let css = stylesheet(40);
        // A frame made as a stream, which does not know its size, keeps a 1 MiB window (the
        // helper writes the DOM stream's codec byte first).
        let coded = zstd_with_window(&css, 20)[1..].to_vec();
        assert_eq!(
            decode_in(&coded, css.len(), 64),
            Err(BlobCodingError::Corrupt {
                detail: "window larger than the blob needs"
            })
        );
        // The same blob coded as the reference codes it decodes.
        let coded = code_blob(&css).unwrap().unwrap();
        assert_eq!(decode_in(&coded, css.len(), 64).unwrap(), css);
    }

    #[test]
    fn worth_coding_is_texts_and_uncompressed_formats() {
        for t in [
            "text/css",
            "text/plain;charset=utf-8",
            "image/svg+xml",
            "font/ttf",
            "Application/JSON",
        ] {
            assert!(worth_coding(t), "{t}");
        }
        for t in [
            "image/png",
            "image/jpeg",
            "font/woff2",
            "application/octet-stream",
            "",
        ] {
            assert!(!worth_coding(t), "{t}");
        }
    }

    #[test]
    fn the_dictionary_is_raw_content() {
        // A dictionary starting with zstd's dictionary magic would be parsed, not used as
        // content; dom-v1 is content (spec §4.6.2).
        assert_ne!(DICTIONARY.get(..4), Some(&[0x37, 0xa4, 0x30, 0xec][..]));
        assert!(DICTIONARY.len() > 1000);
    }
}
