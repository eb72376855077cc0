//! DOM stream compression (spec §4.6): one compression context per DOM stream, spanning all its
//! frames, so that a small patch is coded against everything the stream carried before it.
//!
//! ```text
//!  consumer                                              agent
//!  SNAPSHOT, PATCH frames                                SNAPSHOT, PATCH frames
//!        │                                                     ▲
//!        ▼                                                     │ FrameReader (frame limit)
//!  DomCompressor ── codec byte ‖ zstd, flushed per batch ──► DomDecompressor
//!        │            (window ≤ 8 MiB, dictionary dom-v1)      ▲ bounded output chunks
//!        ▼                                                     │
//!  COMPRESSED frames (0x38) ═══════ DOM stream (QUIC) ══════► COMPRESSED frames
//! ```
//!
//! When the session's capabilities (`JOINED`, spec §7.6) hold `COMPRESSION`, every DOM stream
//! carries only [`COMPRESSED`](crate::message::Compressed) frames. Their bodies, concatenated,
//! are the stream's compressed bytes: one codec byte ([`CODEC_ZSTD_DOM_V1`]), then Zstandard
//! frames (RFC 8878) made with the raw-content dictionary [`DICTIONARY`] and a window of at most
//! 2^[`WINDOW_LOG_MAX`] bytes. Decompressed, they are exactly the frames an uncompressed DOM
//! stream would carry. The sender flushes after every batch of frames, so the receiver can
//! decode everything sent so far.
//!
//! Both halves are sans-IO: they take bytes and return bytes.
//!
//! ```
//! use tandem_protocol::compress::{DomCompressor, DomDecompressor};
//! use tandem_protocol::{Limits, Message, frame, message::Ping};
//!
//! let limits = Limits::DEFAULT;
//! let mut compressor = DomCompressor::new().unwrap();
//! let mut decompressor = DomDecompressor::new(limits).unwrap();
//! let inner = frame::to_frame(&Message::Ping(Ping { nonce: 7 }), &limits).unwrap();
//! let mut wire = Vec::new();
//! compressor.write_frames(&inner, &mut wire, &limits).unwrap();
//!
//! // The wire holds COMPRESSED frames; feed their bodies to the decompressor.
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

use crate::frame::{FrameReader, FrameType, RawFrame};
use crate::{DecodeError, ErrorCode, Limits, varint};

/// The codec byte that starts a compressed DOM stream in this version: Zstandard with the
/// dictionary [`DICTIONARY`] (spec §4.6). No other value is defined.
pub const CODEC_ZSTD_DOM_V1: u8 = 0x01;

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
    /// The stream ended inside a compressed block.
    #[error("compressed DOM stream ends inside compressed data")]
    Truncated,
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
            Self::WindowTooLarge { .. } => ErrorCode::LimitExceeded,
            Self::UnexpectedFrame { .. } => ErrorCode::UnexpectedMessage,
            Self::Frame(e) => e.code(),
            Self::Setup { .. } => ErrorCode::Internal,
            Self::UnknownCodec { .. } | Self::Corrupt { .. } | Self::Truncated => {
                ErrorCode::MalformedFrame
            }
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

/// The sender's half: compresses the frames of one DOM stream with one context (spec §4.6).
///
/// Call [`DomCompressor::write_frames`] (or [`DomCompressor::compress`]) with the encoded
/// frames of each batch of messages — the parts of a snapshot, or a patch — and send what it
/// appends. Every call ends with a flush, so the receiver can decode everything given so far.
/// A new DOM stream (a new epoch) needs a new compressor.
pub struct DomCompressor {
    cctx: CCtx<'static>,
    started: bool,
    level: i32,
    raw_in: u64,
    out: u64,
}

impl std::fmt::Debug for DomCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomCompressor")
            .field("level", &self.level)
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
    /// A compressor at [`DEFAULT_LEVEL`].
    pub fn new() -> Result<Self, CompressError> {
        Self::with_level(DEFAULT_LEVEL)
    }

    /// A compressor at zstd `level` (1 to 22; the receiver does not need to know it).
    pub fn with_level(level: i32) -> Result<Self, CompressError> {
        let mut cctx = cctx_with_dictionary(level)?;
        setup(cctx.set_parameter(CParameter::WindowLog(WINDOW_LOG_MAX)))?;
        // The frame's size is unknown (it lasts as long as the stream).
        setup(cctx.set_parameter(CParameter::ContentSizeFlag(false)))?;
        Ok(Self {
            cctx,
            started: false,
            level,
            raw_in: 0,
            out: 0,
        })
    }

    /// The zstd level in use.
    pub fn level(&self) -> i32 {
        self.level
    }

    /// Total frame bytes given so far.
    pub fn raw_bytes(&self) -> u64 {
        self.raw_in
    }

    /// Total compressed bytes produced so far (the codec byte included, `COMPRESSED` frame
    /// headers not).
    pub fn compressed_bytes(&self) -> u64 {
        self.out
    }

    /// Compresses `frames` (the encoded frames of one batch, possibly empty) and appends the
    /// stream's next compressed bytes to `out`, flushed: the codec byte first on the first
    /// call. Returns how many bytes it appended.
    pub fn compress(&mut self, frames: &[u8], out: &mut Vec<u8>) -> Result<usize, CompressError> {
        let start = out.len();
        if !self.started {
            out.push(CODEC_ZSTD_DOM_V1);
            self.started = true;
        }
        let zstd_err = |code| CompressError::Zstd {
            detail: zstd_safe::get_error_name(code),
        };
        let mut input = InBuffer::around(frames);
        while input.pos() < frames.len() {
            out.reserve(frames.len() / 4 + 1024);
            let pos = out.len();
            let mut o = OutBuffer::around_pos(out, pos);
            self.cctx
                .compress_stream(&mut o, &mut input)
                .map_err(zstd_err)?;
        }
        loop {
            out.reserve(1024);
            let pos = out.len();
            let mut o = OutBuffer::around_pos(out, pos);
            if self.cctx.flush_stream(&mut o).map_err(zstd_err)? == 0 {
                break;
            }
        }
        self.raw_in += frames.len() as u64;
        let added = out.len() - start;
        self.out += added as u64;
        Ok(added)
    }

    /// Like [`DomCompressor::compress`], but appends the result as `COMPRESSED` frames ready to
    /// write on the DOM stream, each body at most `limits.max_frame_body` bytes. Returns the
    /// number of bytes appended.
    pub fn write_frames(
        &mut self,
        frames: &[u8],
        out: &mut Vec<u8>,
        limits: &Limits,
    ) -> Result<usize, CompressError> {
        let start = out.len();
        let mut body = Vec::new();
        self.compress(frames, &mut body)?;
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

/// The receiver's half: turns the bodies of a DOM stream's `COMPRESSED` frames back into the
/// frames they carry, with bounded memory (spec §4.6.4).
///
/// Call order: [`DomDecompressor::push_frame`] (or [`DomDecompressor::push`]) with each
/// `COMPRESSED` frame as it arrives, then [`DomDecompressor::next_frame`] until it returns
/// `Ok(None)`; at the end of the stream, [`DomDecompressor::finish`]. Memory stays within the
/// window (2^[`WINDOW_LOG_MAX`]), one frame of `limits.max_frame_body` and one output chunk, as
/// long as every push is drained before the next: output is produced only as frames are taken.
pub struct DomDecompressor {
    dctx: DCtx<'static>,
    reader: FrameReader,
    input: Vec<u8>,
    pos: usize,
    codec_seen: bool,
    /// Whether the last step filled the output chunk (zstd may hold more).
    pending_output: bool,
    /// zstd's hint after the last step: 0 at the end of a zstd frame, [`BLOCK_HEADER`] between
    /// blocks, anything else inside a frame header or a block.
    hint: Option<usize>,
    chunk: Box<[u8]>,
    raw_out: u64,
    compressed_in: u64,
}

impl std::fmt::Debug for DomDecompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomDecompressor")
            .field("compressed_in", &self.compressed_in)
            .field("raw_out", &self.raw_out)
            .finish_non_exhaustive()
    }
}

impl DomDecompressor {
    /// A decompressor for one DOM stream whose inner frames are checked against `limits`.
    pub fn new(limits: Limits) -> Result<Self, DecompressError> {
        let dctx = dctx_with_dictionary(WINDOW_LOG_MAX)
            .map_err(|detail| DecompressError::Setup { detail })?;
        Ok(Self {
            dctx,
            reader: FrameReader::new(limits),
            input: Vec::new(),
            pos: 0,
            codec_seen: false,
            pending_output: false,
            hint: None,
            chunk: vec![0; OUTPUT_CHUNK].into_boxed_slice(),
            raw_out: 0,
            compressed_in: 0,
        })
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
        if !self.codec_seen {
            let Some((&codec, rest)) = compressed.split_first() else {
                return Ok(());
            };
            if codec != CODEC_ZSTD_DOM_V1 {
                return Err(DecompressError::UnknownCodec { codec });
            }
            self.codec_seen = true;
            compressed = rest;
        }
        if self.pos == self.input.len() {
            self.input.clear();
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
                return Ok(Some(frame));
            }
            if self.pos == self.input.len() && !self.pending_output {
                return Ok(None);
            }
            self.step()?;
        }
    }

    /// Decompresses at most one output chunk and hands it to the frame reader.
    fn step(&mut self) -> Result<(), DecompressError> {
        let mut input = InBuffer::around(&self.input[self.pos..]);
        let mut output = OutBuffer::around(&mut self.chunk[..]);
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
        self.pending_output = produced == self.chunk.len();
        self.hint = Some(hint);
        self.raw_out += produced as u64;
        self.reader.push(&self.chunk[..produced]);
        if produced == 0 && consumed == 0 && self.pos < self.input.len() {
            // zstd made no progress on input it was given: it cannot happen with a valid
            // stream, so treat it as corrupt rather than spin.
            return Err(DecompressError::Corrupt {
                detail: "no progress",
            });
        }
        Ok(())
    }

    /// Checks, when the DOM stream has ended, that it ended cleanly: at the end of a zstd block
    /// or frame, with every inner frame complete. Call after draining
    /// [`DomDecompressor::next_frame`].
    pub fn finish(&mut self) -> Result<(), DecompressError> {
        let inside = !matches!(self.hint, None | Some(0) | Some(BLOCK_HEADER));
        if self.pos < self.input.len() || self.pending_output || inside {
            return Err(DecompressError::Truncated);
        }
        self.reader.finish()?;
        Ok(())
    }

    /// Total compressed bytes pushed so far (the codec byte included).
    pub fn compressed_bytes(&self) -> u64 {
        self.compressed_in
    }

    /// Total decompressed bytes produced so far.
    pub fn raw_bytes(&self) -> u64 {
        self.raw_out
    }
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
    use crate::message::Ping;

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
        let err = d.push(&[0x02, 0x28, 0xb5]).unwrap_err();
        assert_eq!(err, DecompressError::UnknownCodec { codec: 2 });
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
