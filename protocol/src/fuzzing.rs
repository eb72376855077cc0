//! Oracles shared by the fuzz targets in `fuzz/` and by the tests (STYLE.md 10).
//!
//! A fuzz target is a three-line shim that calls one of these functions; the tests call the same
//! functions on the crashers checked in under `fuzz/regressions/<target>/`, so a bug found once
//! stays fixed. Each function panics when the property it checks is broken, and only then: input
//! that the protocol rejects is not a failure, a panic while rejecting it is.

use crate::compress::{Codec, DecompressError, DomCompressor, DomDecompressor};
use crate::frame::{self, FrameReader};
use crate::{DecodeError, FrameType, Limits, Message, SnapshotView};

/// Limits small enough that fuzzed input reaches them (spec §8: a peer MAY be stricter).
const TIGHT: Limits = Limits {
    max_frame_body: 256,
    max_string: 32,
    max_nodes_per_frame: 8,
    max_nodes: 64,
    max_node_id: 256,
    max_depth: 8,
    max_attributes: 4,
    max_patch_ops: 8,
    max_dynamic_entries: 8,
    max_dynamic_bytes: 64,
    max_list: 8,
};

/// Decodes `data` as a byte stream of frames, two ways, and checks they agree.
///
/// The first byte is control: bit 7 picks strict limits instead of [`Limits::DEFAULT`], bits
/// 0..6 the size (1..=64) of the pieces the rest is pushed into a [`FrameReader`] in. The rest is
/// also decoded frame after frame with [`frame::decode_frame`]. Both MUST yield the same
/// messages and the same first error (a stream that ends inside a frame is
/// [`DecodeError::Truncated`] either way). Every message that decodes MUST re-encode, and the
/// re-encoding MUST decode to an equal message and re-encode to the same bytes (spec §4).
pub fn frame_decode(data: &[u8]) {
    let (ctl, stream) = data.split_first().map_or((0, data), |(c, r)| (*c, r));
    let limits = if ctl & 0x80 != 0 {
        TIGHT
    } else {
        Limits::DEFAULT
    };
    let step = usize::from(ctl & 0x3f) + 1;

    let mut reference = Vec::new();
    let mut off = 0;
    while off < stream.len() {
        match frame::decode_frame(&stream[off..], &limits) {
            Ok((msg, used)) => {
                assert!(used > 0, "a frame takes at least one byte");
                reference.push(Ok(msg));
                off += used;
            }
            Err(e) => {
                reference.push(Err(at_end(e)));
                break;
            }
        }
    }

    let mut reader = FrameReader::new(limits);
    let mut got = Vec::new();
    'chunks: for chunk in stream.chunks(step) {
        reader.push(chunk);
        loop {
            match reader.next_frame() {
                Ok(Some(raw)) => {
                    let res = raw.decode(&limits);
                    if raw.ty == FrameType::SNAPSHOT {
                        snapshot_view_agrees(&raw.body, &limits, &res);
                    }
                    let failed = res.is_err();
                    got.push(res);
                    if failed {
                        break 'chunks;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    got.push(Err(e));
                    break 'chunks;
                }
            }
        }
    }
    if !matches!(got.last(), Some(Err(_)))
        && let Err(e) = reader.finish()
    {
        got.push(Err(e));
    }
    assert_eq!(got, reference, "FrameReader and decode_frame disagree");

    for msg in reference.iter().flatten() {
        let bytes = frame::to_frame(msg, &limits)
            .unwrap_or_else(|e| panic!("a decoded {} does not re-encode: {e}", msg.name()));
        let again = frame::decode_exact(&bytes, &limits)
            .unwrap_or_else(|e| panic!("a re-encoded {} does not decode: {e}", msg.name()));
        assert_eq!(&again, msg, "decode(encode(m)) != m");
        let bytes2 = frame::to_frame(&again, &limits).expect("encoded once already");
        assert_eq!(bytes2, bytes, "encoding is not canonical");
    }
}

/// A `SNAPSHOT` body read in place ([`SnapshotView`]) MUST give the records of its owned
/// decoding, or fail with the same error.
pub fn snapshot_view_agrees(body: &[u8], limits: &Limits, owned: &Result<Message, DecodeError>) {
    let view = SnapshotView::parse(body, limits).map(|v| Message::Snapshot(v.to_snapshot()));
    assert_eq!(&view, owned, "SnapshotView and decode_body disagree");
}

/// `decode_frame` sees only the bytes left, so running out of them is the end of the stream:
/// the same error a [`FrameReader`] reports from [`FrameReader::finish`].
fn at_end(e: DecodeError) -> DecodeError {
    match e {
        DecodeError::Truncated {
            field: "frame.header" | "frame.body",
        } => DecodeError::Truncated { field: "frame" },
        other => other,
    }
}

/// Encodes `msg`, decodes it and checks the value survived (spec §4.4).
///
/// A message the encoder refuses (a string index above 2^30 - 1, a body above the frame limit)
/// is skipped. A message that encodes MUST decode to an equal value that re-encodes to the same
/// bytes, unless the value itself breaks a rule of spec §8 that decoding checks; then decoding
/// MUST fail with exactly that error. [`Message::Unknown`] frames of a registered type are
/// skipped: their body is some known message's.
pub fn message_roundtrip(msg: &Message) {
    let limits = Limits::DEFAULT;
    if let Message::Unknown(u) = msg
        && u.ty.name().is_some()
    {
        return;
    }
    let Ok(bytes) = frame::to_frame(msg, &limits) else {
        return;
    };
    match frame::decode_exact(&bytes, &limits) {
        Ok(back) => {
            assert_eq!(&back, msg, "decode(encode(m)) != m");
            let again = frame::to_frame(&back, &limits).expect("encoded once already");
            assert_eq!(again, bytes, "encoding is not canonical");
        }
        Err(e) => assert_eq!(
            msg.check(&limits),
            Err(e.clone()),
            "{} encodes to bytes that do not decode: {e}",
            msg.name()
        ),
    }
}

/// A compressed DOM stream of either codec (spec §4.6), two ways.
///
/// The first byte is control: bit 0 picks the codec (0x01 or 0x02), bits 3..7 the size (1..=32)
/// of the pieces compressed bytes are pushed in. Bit 1 picks what the rest is:
///
/// - clear: a stream of frames, cut after its last whole frame (and before a `COMPRESSED` one,
///   which may not be inside). The frames are compressed as one batch each (bit 2 clear) or
///   all as one batch (bit 2 set) by one [`DomCompressor`] of that codec; pushed into a
///   [`DomDecompressor`] in pieces, each batch MUST decode to exactly its frames as soon as it
///   is all pushed, and the stream MUST finish cleanly.
/// - set: compressed bytes after that codec's byte. Pushed whole and pushed in pieces, they
///   MUST give the same frames (up to an error: zstd decodes all it is given in one call, so
///   what precedes a corrupt block may or may not come out, and be refused by the frame layer
///   first) and both be refused or both accepted.
///
/// Nothing may panic either way.
pub fn compressed_stream(data: &[u8]) {
    let (ctl, rest) = data.split_first().map_or((0, data), |(c, r)| (*c, r));
    let codec = if ctl & 1 == 0 {
        Codec::Zstd
    } else {
        Codec::CodedPatches
    };
    let step = usize::from(ctl >> 3) + 1;
    if ctl & 2 == 0 {
        compressed_round_trip(codec, ctl & 4 != 0, step, rest);
    } else {
        let stream = [&[codec.byte()][..], rest].concat();
        let whole = decompress_in(&stream, stream.len());
        let pieces = decompress_in(&stream, step);
        // A frame the error stopped is not taken, and where the error stops depends on the
        // pieces (zstd decodes all it is given in one call): with an error, one run's frames
        // are the start of the other's.
        let n = whole.0.len().min(pieces.0.len());
        assert_eq!(
            whole.0[..n],
            pieces.0[..n],
            "frames differ with pieces of {step}"
        );
        if whole.1.is_none() || pieces.1.is_none() {
            assert_eq!(whole.0, pieces.0, "frames differ with pieces of {step}");
        }
        assert_eq!(
            whole.1.is_some(),
            pieces.1.is_some(),
            "{:?} whole, {:?} in pieces of {step}",
            whole.1,
            pieces.1
        );
    }
}

fn compressed_round_trip(codec: Codec, one_batch: bool, step: usize, stream: &[u8]) {
    let limits = Limits::DEFAULT;
    let mut batches: Vec<&[u8]> = Vec::new();
    let mut off = 0;
    while let Ok(Some(h)) = frame::read_header(&stream[off..], &limits) {
        let end = off + h.header_len + h.len as usize;
        if end > stream.len() || h.ty == FrameType::COMPRESSED {
            break;
        }
        batches.push(&stream[off..end]);
        off = end;
    }
    if one_batch {
        batches = vec![&stream[..off]];
    }
    // Level 1: the oracle is about the stream's structure, not zstd's parser.
    let mut c = DomCompressor::with_codec(1, codec).expect("a compressor");
    let mut d = DomDecompressor::new(limits).expect("a decompressor");
    for batch in batches {
        let mut z = Vec::new();
        c.compress(batch, &mut z).expect("compresses");
        let mut got = Vec::new();
        for piece in z.chunks(step) {
            d.push(piece).expect("pushes");
            while let Some(f) = d.next_frame().expect("decodes") {
                got.extend(f.to_bytes());
            }
        }
        assert_eq!(got, batch, "a batch decodes to other bytes");
    }
    d.finish().expect("the stream ends cleanly");
    assert_eq!(c.raw_bytes(), d.raw_bytes());
    assert_eq!(c.compressed_bytes(), d.compressed_bytes());
}

/// Pushes `stream` in pieces of `step` bytes, draining after each, and finishes: the frames
/// decoded and the first error.
fn decompress_in(stream: &[u8], step: usize) -> (Vec<Vec<u8>>, Option<DecompressError>) {
    let mut d = DomDecompressor::new(Limits::DEFAULT).expect("a decompressor");
    let mut frames = Vec::new();
    for piece in stream.chunks(step.max(1)) {
        if let Err(e) = d.push(piece) {
            return (frames, Some(e));
        }
        loop {
            match d.next_frame() {
                Ok(Some(f)) => frames.push(f.to_bytes()),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, d.finish().err())
}

/// Builds a [`Message`] from `data` with `arbitrary` and runs [`message_roundtrip`] on it.
#[cfg(feature = "arbitrary")]
pub fn message_roundtrip_bytes(data: &[u8]) {
    use arbitrary::{Arbitrary, Unstructured};
    if let Ok(msg) = Message::arbitrary_take_rest(Unstructured::new(data)) {
        message_roundtrip(&msg);
    }
}

/// Builds a sequence of [`Patch`](crate::message::Patch) values from `data` with `arbitrary`
/// and codes them with one [`PatchEncoder`](crate::patch_coder::PatchEncoder): one
/// [`PatchDecoder`](crate::patch_coder::PatchDecoder) MUST give each back, equal, whatever the
/// values (spec §4.7); a decoder with tight limits may refuse them but MUST NOT panic.
#[cfg(feature = "arbitrary")]
pub fn coded_patches_bytes(data: &[u8]) {
    use crate::message::Patch;
    use crate::patch_coder::{PatchDecoder, PatchEncoder};
    use arbitrary::{Arbitrary, Unstructured};
    let Ok(patches) = Vec::<Patch>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let mut encoder = PatchEncoder::new();
    let mut decoder = PatchDecoder::new(Limits::DEFAULT);
    let mut tight = PatchDecoder::new(TIGHT);
    let mut coded = Vec::new();
    for patch in &patches {
        coded.clear();
        encoder.encode(patch, &mut coded);
        assert_eq!(
            &decoder.decode(&coded).expect("a coded patch decodes"),
            patch
        );
        if tight.decode(&coded).is_err() {
            // Its models are lost with the stream; a fresh one would start from scratch.
            tight = PatchDecoder::new(TIGHT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Ping;

    #[test]
    fn oracles_accept_good_and_bad_input() {
        let mut stream = vec![0x03];
        for nonce in [0, 1, 300, u64::MAX] {
            stream.extend(frame::to_frame(&Message::Ping(Ping { nonce }), &TIGHT).unwrap());
        }
        frame_decode(&stream);
        stream.pop();
        frame_decode(&stream);
        frame_decode(&[0x80, 0x30, 0xff, 0x03]);
        frame_decode(&[]);
        message_roundtrip(&Message::Ping(Ping { nonce: 9 }));
        for ctl in 0..8 {
            compressed_stream(&[&[ctl][..], &stream[1..]].concat());
        }
        compressed_stream(&[]);
    }
}
