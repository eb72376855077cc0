//! Frames over QUIC streams (spec §4): write a [`Message`] or a [`RawFrame`] to a
//! [`quinn::SendStream`], read frames from a [`quinn::RecvStream`] with bounded memory, and
//! forward a stream frame by frame without decoding bodies (what the relay does).
//!
//! ```text
//!  RecvStream ──read──► FrameReader ──► RawFrame ──► Message      (FrameRecv)
//!  RecvStream ──chunk──► HeaderCheck ──same chunk──► SendStream  (forward_stream)
//! ```
//!
//! Errors separate "the peer broke the protocol" ([`FramedError::Protocol`]) from "the link went
//! away" (every other variant), because the first closes the session with a typed `CLOSE` and
//! the second is a connection loss.

use bytes::Bytes;
use quinn::{RecvStream, SendStream, VarInt};
use tandem_protocol::frame::{FrameHeader, read_header};
use tandem_protocol::varint::MAX_VARINT32_LEN;
use tandem_protocol::{
    DecodeError, EncodeError, ErrorCode, FrameReader, Limits, Message, RawFrame,
};

use crate::meter::{Outlet, SendMeter, next_chunk};

/// Bytes read from a stream at a time.
const READ_CHUNK: usize = 64 * 1024;

/// `code` as the QUIC application error code that closes a connection or resets or stops a
/// stream (spec §3.3: the `CLOSE` code travels as the QUIC code too).
pub fn quic_code(code: ErrorCode) -> VarInt {
    VarInt::from_u32(u32::from(code))
}

/// A failure reading, writing or forwarding frames.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FramedError {
    /// The peer sent bytes that are not a valid frame (spec §4.5): the peer broke the protocol.
    #[error("peer broke the protocol: {0}")]
    Protocol(#[from] DecodeError),
    /// A message to send could not be encoded (too large, or a value the wire cannot carry).
    #[error("cannot encode: {0}")]
    Encode(#[from] EncodeError),
    /// Reading failed: the stream was reset or the connection went away.
    #[error("read failed: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing failed: the receiver stopped the stream or the connection went away.
    #[error("write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// The stream had already been finished or reset locally.
    #[error("stream already closed: {0}")]
    ClosedStream(#[from] quinn::ClosedStream),
    /// Opening or accepting a stream failed because the connection went away.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
}

impl FramedError {
    /// Whether the peer broke the protocol, as opposed to the link going away.
    pub fn is_protocol(&self) -> bool {
        matches!(self, Self::Protocol(_))
    }

    /// Whether the connection under the stream went away (a lost link, a reset, an idle
    /// timeout, a close): what a resumable session comes back from (spec §3.5). A stream reset
    /// or stopped on its own is not, and neither is a close with the code `SessionEnded`: the
    /// relay closed because the session is over (its `END` may have been lost on the way), so
    /// there is nothing to come back to.
    pub fn is_connection_lost(&self) -> bool {
        let conn = match self {
            Self::Read(quinn::ReadError::ConnectionLost(e))
            | Self::Write(quinn::WriteError::ConnectionLost(e))
            | Self::Connection(e) => e,
            _ => return false,
        };
        match conn {
            quinn::ConnectionError::VersionMismatch => false,
            quinn::ConnectionError::ApplicationClosed(close) => {
                close.error_code != quic_code(ErrorCode::SessionEnded)
            }
            _ => true,
        }
    }

    /// The code to put in a `CLOSE` to the peer, when the peer broke the protocol.
    pub fn close_code(&self) -> Option<ErrorCode> {
        match self {
            Self::Protocol(e) => Some(e.code()),
            _ => None,
        }
    }
}

/// Appends `msg` as one frame to `stream`.
pub async fn write_message(
    stream: &mut SendStream,
    msg: &Message,
    limits: &Limits,
) -> Result<(), FramedError> {
    let bytes = tandem_protocol::frame::to_frame(msg, limits)?;
    stream.write_all(&bytes).await?;
    Ok(())
}

/// Appends a raw frame (header and body, exactly as received) to `stream`.
pub async fn write_raw(stream: &mut SendStream, frame: &RawFrame) -> Result<(), FramedError> {
    stream.write_chunk(Bytes::from(frame.to_bytes())).await?;
    Ok(())
}

/// Reads frames from a stream. Memory is bounded by one frame plus one read chunk: a header
/// announcing a body above `limits.max_frame_body` is refused before its body is buffered.
///
/// [`FrameRecv::next_raw`] and [`FrameRecv::next_message`] are cancel-safe: bytes already read
/// stay buffered, so they can be used in `tokio::select!`.
#[derive(Debug)]
pub struct FrameRecv {
    stream: RecvStream,
    reader: FrameReader,
    limits: Limits,
    chunk: Box<[u8]>,
    finished: bool,
}

impl FrameRecv {
    /// Reads frames from `stream`, enforcing `limits`.
    pub fn new(stream: RecvStream, limits: Limits) -> Self {
        Self {
            stream,
            reader: FrameReader::new(limits),
            limits,
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            finished: false,
        }
    }

    /// The next frame, undecoded. `Ok(None)` when the peer finished the stream on a frame
    /// boundary; a stream that ends inside a frame is a protocol error.
    pub async fn next_raw(&mut self) -> Result<Option<RawFrame>, FramedError> {
        loop {
            if let Some(frame) = self.reader.next_frame()? {
                return Ok(Some(frame));
            }
            if self.finished {
                self.reader.finish()?;
                return Ok(None);
            }
            match self.stream.read(&mut self.chunk).await? {
                Some(n) => self.reader.push(&self.chunk[..n]),
                None => self.finished = true,
            }
        }
    }

    /// Waits until the stream has bytes not yet taken as frames, or has ended, without taking
    /// anything: the peer's answer has begun to arrive. Cancel-safe, like
    /// [`FrameRecv::next_raw`].
    pub async fn readable(&mut self) -> Result<(), FramedError> {
        while !self.finished && self.reader.buffered() == 0 {
            match self.stream.read(&mut self.chunk).await? {
                Some(n) => self.reader.push(&self.chunk[..n]),
                None => self.finished = true,
            }
        }
        Ok(())
    }

    /// The next frame, decoded (spec §4.5). Unknown types come back as [`Message::Unknown`];
    /// skipping optional ones or refusing critical ones is the caller's decision.
    pub async fn next_message(&mut self) -> Result<Option<Message>, FramedError> {
        match self.next_raw().await? {
            Some(frame) => Ok(Some(frame.decode(&self.limits)?)),
            None => Ok(None),
        }
    }

    /// The limits this reader enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The underlying stream, for example to `stop` it.
    pub fn stream_mut(&mut self) -> &mut RecvStream {
        &mut self.stream
    }
}

/// Checks frame boundaries in a byte stream without buffering bodies: it parses each header as
/// it goes by, refuses one that breaks `limits`, and counts body bytes through. The relay uses it
/// to forward streams chunk by chunk with memory bounded by one chunk.
#[derive(Debug, Clone)]
pub struct HeaderCheck {
    limits: Limits,
    header: [u8; 2 * MAX_VARINT32_LEN],
    header_len: usize,
    body_left: u32,
    frames: u64,
}

impl HeaderCheck {
    /// A checker enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            header: [0; 2 * MAX_VARINT32_LEN],
            header_len: 0,
            body_left: 0,
            frames: 0,
        }
    }

    /// Feeds the next bytes of the stream. On error the stream is broken and must not be
    /// forwarded further.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), DecodeError> {
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = data.len().min(self.body_left as usize);
                data = &data[n..];
                // n <= body_left, which is a u32.
                self.body_left -= n as u32;
                continue;
            }
            // Inside a header: take one byte at a time (headers are at most ten bytes). A
            // header_len at the array's size is impossible: two varints of at most five bytes
            // each are either complete or invalid by then.
            self.header[self.header_len] = data[0];
            self.header_len += 1;
            data = &data[1..];
            if let Some(FrameHeader { len, .. }) =
                read_header(&self.header[..self.header_len], &self.limits)?
            {
                self.header_len = 0;
                self.body_left = len;
                self.frames += 1;
            }
        }
        Ok(())
    }

    /// Checks that the stream ended on a frame boundary.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.header_len == 0 && self.body_left == 0 {
            Ok(())
        } else {
            Err(DecodeError::Truncated { field: "frame" })
        }
    }

    /// Frames whose header has been seen so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }
}

/// Checks that a QUIC datagram holds exactly one complete frame within `limits` (spec §3.2);
/// anything else is a malformed frame.
pub fn check_datagram(datagram: &[u8], limits: &Limits) -> Result<(), DecodeError> {
    let Some(h) = read_header(datagram, limits)? else {
        return Err(DecodeError::Truncated {
            field: "datagram.header",
        });
    };
    let end = h.header_len + h.len as usize;
    match datagram.len().cmp(&end) {
        std::cmp::Ordering::Less => Err(DecodeError::Truncated {
            field: "datagram.body",
        }),
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater => Err(DecodeError::TrailingBytes {
            message: "datagram",
            count: datagram.len() - end,
        }),
    }
}

/// How forwarding one stream ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum ForwardEnd {
    /// The source finished on a frame boundary and the destination was finished: `frames`
    /// frames went through.
    Finished {
        /// Frames forwarded.
        frames: u64,
    },
    /// The source reset its stream; the destination was reset with the same code.
    SourceReset(VarInt),
    /// The destination stopped its stream; the source was stopped with the same code.
    DestinationStopped(VarInt),
}

/// Forwards `from` to `to` chunk by chunk, checking every frame header against `limits` and
/// never decoding bodies (unknown frame types pass through). Resets and stops are propagated
/// with their codes. A bad header resets `to` and returns [`FramedError::Protocol`], which blames
/// the sender of `from`; the other errors are connection losses of either side. With a `meter`,
/// the bytes go into `to` in whole pieces as it admits them ([`crate::meter`]), unchanged.
pub async fn forward_stream(
    mut from: RecvStream,
    to: SendStream,
    limits: Limits,
    meter: Option<SendMeter>,
) -> Result<ForwardEnd, FramedError> {
    // If this future is dropped halfway (the session ended), the destination is reset rather
    // than finished, so the receiver never mistakes a cut stream for a complete one.
    let mut to = ResetOnDrop(Some(to));
    let mut check = HeaderCheck::new(limits);
    let mut outlet = Outlet::new(meter);
    loop {
        let (read, flushed) = next_chunk(&mut from, &mut outlet, to.stream(), READ_CHUNK).await;
        if let Err(e) = flushed {
            return write_failed(&mut from, &mut to, e);
        }
        let chunk = match read {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(quinn::ReadError::Reset(code)) => {
                to.reset(code);
                return Ok(ForwardEnd::SourceReset(code));
            }
            Err(e) => return Err(e.into()),
        };
        if let Err(e) = check.feed(&chunk) {
            let code = quic_code(e.code());
            to.reset(code);
            let _ = from.stop(code);
            return Err(e.into());
        }
        let Some(dest) = to.stream() else {
            // Only `finish` and `reset` take the stream, and both end the forwarding.
            return Ok(ForwardEnd::DestinationStopped(VarInt::from_u32(0)));
        };
        if let Err(e) = outlet.put(dest, chunk).await {
            return write_failed(&mut from, &mut to, e);
        }
    }
    if let Err(e) = check.finish() {
        to.reset(quic_code(e.code()));
        return Err(e.into());
    }
    if let Some(dest) = to.stream()
        && let Err(e) = outlet.flush(dest).await
    {
        return write_failed(&mut from, &mut to, e);
    }
    to.finish()?;
    Ok(ForwardEnd::Finished {
        frames: check.frames(),
    })
}

/// A forwarder's write into `to` failed with `e`: a stop goes back to `from` with its code and
/// ends the forwarding; any other failure is the connection's.
fn write_failed(
    from: &mut RecvStream,
    to: &mut ResetOnDrop,
    e: quinn::WriteError,
) -> Result<ForwardEnd, FramedError> {
    match e {
        quinn::WriteError::Stopped(code) => {
            let _ = from.stop(code);
            to.0 = None;
            Ok(ForwardEnd::DestinationStopped(code))
        }
        e => Err(e.into()),
    }
}

/// A send stream that is reset, not finished, if dropped before [`ResetOnDrop::finish`]: a
/// forwarder that stops half way never makes a truncated stream look complete.
pub(crate) struct ResetOnDrop(pub(crate) Option<SendStream>);

impl ResetOnDrop {
    /// The stream, until `finish` or `reset` took it.
    pub(crate) fn stream(&mut self) -> Option<&mut SendStream> {
        self.0.as_mut()
    }

    /// Resets the stream with `code` (once).
    pub(crate) fn reset(&mut self, code: VarInt) {
        if let Some(mut s) = self.0.take() {
            let _ = s.reset(code);
        }
    }

    /// Finishes the stream (once).
    pub(crate) fn finish(&mut self) -> Result<(), quinn::ClosedStream> {
        match self.0.take() {
            Some(mut s) => s.finish(),
            None => Ok(()),
        }
    }
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        self.reset(quic_code(ErrorCode::SessionEnded));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_protocol::frame::encode_frame;
    use tandem_protocol::message::Ping;

    #[test]
    fn a_close_because_the_session_ended_is_no_connection_to_resume() {
        let closed = |code: ErrorCode| {
            FramedError::Read(quinn::ReadError::ConnectionLost(
                quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                    error_code: quic_code(code),
                    reason: Bytes::from_static(b"session ended"),
                }),
            ))
        };
        assert!(!closed(ErrorCode::SessionEnded).is_connection_lost());
        // Any other close, and a link that went quiet, is a loss to come back from.
        assert!(closed(ErrorCode::NoError).is_connection_lost());
        let timed_out = FramedError::Connection(quinn::ConnectionError::TimedOut);
        assert!(timed_out.is_connection_lost());
    }

    fn stream_of_frames() -> Vec<u8> {
        let limits = Limits::DEFAULT;
        let mut bytes = Vec::new();
        for nonce in [0u64, 300, 1 << 40] {
            encode_frame(&Message::Ping(Ping { nonce }), &mut bytes, &limits).unwrap();
        }
        // An unknown optional frame with a 200-byte body (two-byte length).
        bytes.extend(
            RawFrame {
                ty: tandem_protocol::FrameType(0x1001),
                body: vec![7; 200],
            }
            .to_bytes(),
        );
        bytes
    }

    #[test]
    fn header_check_accepts_any_split() {
        let bytes = stream_of_frames();
        for step in 1..bytes.len() {
            let mut check = HeaderCheck::new(Limits::DEFAULT);
            for piece in bytes.chunks(step) {
                check.feed(piece).unwrap();
            }
            check.finish().unwrap();
            assert_eq!(check.frames(), 4);
        }
    }

    #[test]
    fn header_check_refuses_oversized_and_truncated() {
        let limits = Limits {
            max_frame_body: 100,
            ..Limits::DEFAULT
        };
        let mut check = HeaderCheck::new(limits);
        assert_eq!(
            check.feed(&[0x62, 0x65]),
            Err(DecodeError::FrameTooLarge { len: 101, max: 100 })
        );

        let bytes = stream_of_frames();
        let mut check = HeaderCheck::new(Limits::DEFAULT);
        check.feed(&bytes[..bytes.len() - 1]).unwrap();
        assert!(check.finish().is_err());

        let mut check = HeaderCheck::new(Limits::DEFAULT);
        assert!(matches!(
            check.feed(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]),
            Err(DecodeError::BadVarint { .. })
        ));
    }

    #[test]
    fn datagrams_hold_exactly_one_frame() {
        let limits = Limits::DEFAULT;
        let one =
            tandem_protocol::frame::to_frame(&Message::Ping(Ping { nonce: 9 }), &limits).unwrap();
        check_datagram(&one, &limits).unwrap();
        assert!(check_datagram(&one[..one.len() - 1], &limits).is_err());
        assert!(check_datagram(&[], &limits).is_err());
        let mut two = one.clone();
        two.extend(&one);
        assert!(matches!(
            check_datagram(&two, &limits),
            Err(DecodeError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn protocol_errors_are_told_apart_from_link_errors() {
        let e = FramedError::from(DecodeError::FrameTooLarge { len: 2, max: 1 });
        assert!(e.is_protocol());
        assert_eq!(e.close_code(), Some(ErrorCode::LimitExceeded));
        let e = FramedError::from(quinn::ReadError::ClosedStream);
        assert!(!e.is_protocol());
        assert_eq!(e.close_code(), None);
    }
}
