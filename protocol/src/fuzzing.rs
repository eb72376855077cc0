//! Oracles shared by the fuzz targets in `fuzz/` and by the tests (STYLE.md 10).
//!
//! A fuzz target is a three-line shim that calls one of these functions; the tests call the same
//! functions on the crashers checked in under `fuzz/regressions/<target>/`, so a bug found once
//! stays fixed. Each function panics when the property it checks is broken, and only then: input
//! that the protocol rejects is not a failure, a panic while rejecting it is.

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
    if !matches!(got.last(), Some(Err(_))) {
        if let Err(e) = reader.finish() {
            got.push(Err(e));
        }
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
    if let Message::Unknown(u) = msg {
        if u.ty.name().is_some() {
            return;
        }
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

/// Builds a [`Message`] from `data` with `arbitrary` and runs [`message_roundtrip`] on it.
#[cfg(feature = "arbitrary")]
pub fn message_roundtrip_bytes(data: &[u8]) {
    use arbitrary::{Arbitrary, Unstructured};
    if let Ok(msg) = Message::arbitrary_take_rest(Unstructured::new(data)) {
        message_roundtrip(&msg);
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
    }
}
