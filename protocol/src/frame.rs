//! Framing (spec §4): every frame is `type: varint, length: varint, body: length bytes`.
//!
//! ```text
//! +-----------------+-------------------+----------------------+
//! | type (varint32) | length (varint32) | body (length bytes)  |
//! +-----------------+-------------------+----------------------+
//! ```
//!
//! A receiver reads the header, checks `length` against its limit before it buffers anything,
//! then decodes the body whole (spec §4.5).

use crate::varint::{self, Varint};
use crate::{DecodeError, EncodeError, Limits, Message};

/// A frame type (spec §4.3). Even types are critical: a receiver that does not know one MUST
/// close the stream with `UnknownFrame`. Odd types are optional: a receiver that does not know
/// one MUST skip it. Relays forward every type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameType(pub u32);

impl FrameType {
    /// Whether a receiver that does not know this type may skip it (odd types).
    pub fn is_optional(self) -> bool {
        self.0 & 1 == 1
    }
}

impl core::fmt::Display for FrameType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "{:#04x}", self.0),
        }
    }
}

/// A frame header (spec §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The frame type.
    pub ty: FrameType,
    /// The body length in bytes.
    pub len: u32,
    /// How many bytes the header itself took.
    pub header_len: usize,
}

/// Reads a frame header from the front of `buf`. `Ok(None)` means more bytes are needed.
/// A length above `limits.max_frame_body` is refused here, before any body is buffered.
pub fn read_header(buf: &[u8], limits: &Limits) -> Result<Option<FrameHeader>, DecodeError> {
    let (ty, n) = match varint::read_u32(buf) {
        Varint::Complete(v, n) => (v, n),
        Varint::Incomplete => return Ok(None),
        Varint::Invalid => {
            return Err(DecodeError::BadVarint {
                field: "frame.type",
            });
        }
    };
    let (len, m) = match varint::read_u32(&buf[n..]) {
        Varint::Complete(v, m) => (v, m),
        Varint::Incomplete => return Ok(None),
        Varint::Invalid => {
            return Err(DecodeError::BadVarint {
                field: "frame.length",
            });
        }
    };
    if len > limits.max_frame_body {
        return Err(DecodeError::FrameTooLarge {
            len: len.into(),
            max: limits.max_frame_body,
        });
    }
    Ok(Some(FrameHeader {
        ty: FrameType(ty),
        len,
        header_len: n + m,
    }))
}

/// Appends `msg` as one frame to `out` (spec §4.1).
///
/// The body is encoded in place at the end of `out`, then the header is put before it: no
/// buffer of its own, and a body copied once at most.
pub fn encode_frame(msg: &Message, out: &mut Vec<u8>, limits: &Limits) -> Result<(), EncodeError> {
    let start = out.len();
    msg.encode_body(out)?;
    let len = out.len() - start;
    if len > limits.max_frame_body as usize {
        out.truncate(start);
        return Err(EncodeError::TooLarge {
            message: msg.name(),
            len,
            max: limits.max_frame_body,
        });
    }
    varint::write_u32(out, msg.frame_type().0);
    // At most max_frame_body, a u32.
    varint::write_u32(out, len as u32);
    let header = out.len() - start - len;
    out[start..].rotate_right(header);
    Ok(())
}

/// Encodes `msg` as one frame into a new buffer.
pub fn to_frame(msg: &Message, limits: &Limits) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_frame(msg, &mut out, limits)?;
    Ok(out)
}

/// Decodes exactly one frame from the front of `buf`, returning the message and the number of
/// bytes it took. Input that ends early is [`DecodeError::Truncated`].
pub fn decode_frame(buf: &[u8], limits: &Limits) -> Result<(Message, usize), DecodeError> {
    let Some(h) = read_header(buf, limits)? else {
        return Err(DecodeError::Truncated {
            field: "frame.header",
        });
    };
    let end = h.header_len + h.len as usize;
    let Some(body) = buf.get(h.header_len..end) else {
        return Err(DecodeError::Truncated {
            field: "frame.body",
        });
    };
    Ok((Message::decode_body(h.ty, body, limits)?, end))
}

/// Decodes a buffer that must hold exactly one frame: bytes after it are
/// [`DecodeError::TrailingBytes`].
pub fn decode_exact(buf: &[u8], limits: &Limits) -> Result<Message, DecodeError> {
    let (msg, used) = decode_frame(buf, limits)?;
    if used != buf.len() {
        return Err(DecodeError::TrailingBytes {
            message: "frame",
            count: buf.len() - used,
        });
    }
    Ok(msg)
}

/// A frame whose header has been read and whose body is buffered, not yet decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// The frame type.
    pub ty: FrameType,
    /// The body.
    pub body: Vec<u8>,
}

impl RawFrame {
    /// Decodes the body as a message (spec §4.5).
    pub fn decode(&self, limits: &Limits) -> Result<Message, DecodeError> {
        Message::decode_body(self.ty, &self.body, limits)
    }

    /// The frame's bytes, header included, as they travel.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 10);
        varint::write_u32(&mut out, self.ty.0);
        varint::write_u32(&mut out, self.body.len() as u32);
        out.extend_from_slice(&self.body);
        out
    }
}

/// Splits a byte stream into frames as bytes arrive, in any pieces. Memory is bounded by one
/// frame: a header announcing more than `max_frame_body` is refused before buffering.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    limits: Limits,
}

impl FrameReader {
    /// A reader enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            limits,
        }
    }

    /// Adds bytes received from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if the bytes so far hold one.
    pub fn next_frame(&mut self) -> Result<Option<RawFrame>, DecodeError> {
        let pending = &self.buf[self.start..];
        let Some(h) = read_header(pending, &self.limits)? else {
            return Ok(None);
        };
        let end = h.header_len + h.len as usize;
        if pending.len() < end {
            return Ok(None);
        }
        let frame = RawFrame {
            ty: h.ty,
            body: pending[h.header_len..end].to_vec(),
        };
        self.start += end;
        if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(frame))
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Checks that the stream ended on a frame boundary.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.buffered() == 0 {
            Ok(())
        } else {
            Err(DecodeError::Truncated { field: "frame" })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Ping;

    #[test]
    fn reader_handles_any_split() {
        let limits = Limits::DEFAULT;
        let mut bytes = Vec::new();
        for nonce in 0..5u64 {
            encode_frame(
                &Message::Ping(Ping {
                    nonce: nonce * 1000,
                }),
                &mut bytes,
                &limits,
            )
            .unwrap();
        }
        for step in 1..bytes.len() {
            let mut r = FrameReader::new(limits);
            let mut got = Vec::new();
            for chunk in bytes.chunks(step) {
                r.push(chunk);
                while let Some(f) = r.next_frame().unwrap() {
                    got.push(f.decode(&limits).unwrap());
                }
            }
            r.finish().unwrap();
            assert_eq!(got.len(), 5);
        }
    }

    #[test]
    fn oversized_header_refused_before_body() {
        let limits = Limits {
            max_frame_body: 10,
            ..Limits::DEFAULT
        };
        let mut r = FrameReader::new(limits);
        r.push(&[0x62, 11]);
        assert_eq!(
            r.next_frame(),
            Err(DecodeError::FrameTooLarge { len: 11, max: 10 })
        );
    }
}
