//! Errors of the wire layer (spec §9).

use crate::wire_enum;

/// A frame or message that cannot be accepted. Each variant names the field that failed so that a
/// log line says what the peer got wrong (spec §4.5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before `field` was complete.
    #[error("truncated: input ends inside {field}")]
    Truncated {
        /// The field the input ended in.
        field: &'static str,
    },
    /// A varint was too long, overflowed, or was not in minimal form.
    #[error("bad varint in {field}")]
    BadVarint {
        /// The field holding the varint.
        field: &'static str,
    },
    /// A frame announced a body larger than the receiver's limit.
    #[error("frame body of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// The announced body length.
        len: u64,
        /// The receiver's `max_frame_body`.
        max: u32,
    },
    /// Bytes remained in a frame body after its message was decoded.
    #[error("{count} trailing bytes after {message}")]
    TrailingBytes {
        /// The message whose body was too long.
        message: &'static str,
        /// How many bytes remained.
        count: usize,
    },
    /// A message body did not follow the postcard layout of its message.
    #[error("malformed {message}: {reason}")]
    Malformed {
        /// The message being decoded.
        message: &'static str,
        /// What the postcard decoder reported.
        reason: MalformedReason,
    },
    /// A value is above a limit of spec §8.
    #[error("{field} is {actual}, above the limit of {limit}")]
    Limit {
        /// The field that exceeded its limit, as `message.field`.
        field: &'static str,
        /// The limit.
        limit: u64,
        /// The value found.
        actual: u64,
    },
    /// A value is not allowed in its field.
    #[error("invalid value in {field}: {detail}")]
    InvalidValue {
        /// The field, as `message.field`.
        field: &'static str,
        /// What is wrong with it.
        detail: &'static str,
    },
    /// A string reference names an entry its table does not hold (spec §5.1).
    #[error("{field}: the {table} string table has no entry {index}")]
    BadStringRef {
        /// The field holding the reference.
        field: &'static str,
        /// Which table: `static` or `dynamic`.
        table: &'static str,
        /// The index the reference carried.
        index: u32,
    },
    /// A critical frame type (even number) that this receiver does not know (spec §4.3).
    #[error("unknown critical frame type {ty:#x}")]
    UnknownCritical {
        /// The frame type.
        ty: u32,
    },
}

/// Why postcard rejected a body (spec §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MalformedReason {
    /// The body ended inside a value.
    UnexpectedEnd,
    /// A varint was too long or overflowed its type.
    BadVarint,
    /// A bool byte other than 0 or 1.
    BadBool,
    /// An option tag other than 0 or 1.
    BadOption,
    /// A string that is not UTF-8.
    BadUtf8,
    /// An enum discriminant this version does not define.
    BadEnum,
    /// Any other postcard failure.
    Other,
}

impl core::fmt::Display for MalformedReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::UnexpectedEnd => "body ends inside a value",
            Self::BadVarint => "bad varint",
            Self::BadBool => "bad bool",
            Self::BadOption => "bad option tag",
            Self::BadUtf8 => "string is not UTF-8",
            Self::BadEnum => "unknown enum discriminant",
            Self::Other => "invalid encoding",
        })
    }
}

impl From<postcard::Error> for MalformedReason {
    fn from(e: postcard::Error) -> Self {
        use postcard::Error as E;
        match e {
            E::DeserializeUnexpectedEnd => Self::UnexpectedEnd,
            E::DeserializeBadVarint => Self::BadVarint,
            E::DeserializeBadBool => Self::BadBool,
            E::DeserializeBadOption => Self::BadOption,
            E::DeserializeBadUtf8 | E::DeserializeBadChar => Self::BadUtf8,
            E::DeserializeBadEnum => Self::BadEnum,
            _ => Self::Other,
        }
    }
}

impl DecodeError {
    /// The wire error code a receiver sends in `CLOSE` for this error (spec §9).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::FrameTooLarge { .. } | Self::Limit { .. } => ErrorCode::LimitExceeded,
            Self::UnknownCritical { .. } => ErrorCode::UnknownFrame,
            Self::BadStringRef { .. } => ErrorCode::BadStringRef,
            _ => ErrorCode::MalformedFrame,
        }
    }

    /// How the test vectors name this error on their `error:` lines (spec Appendix B): the
    /// variant, then the field, the message or the postcard reason.
    pub fn vector_form(&self) -> String {
        match self {
            Self::Truncated { field } => format!("Truncated {field}"),
            Self::BadVarint { field } => format!("BadVarint {field}"),
            Self::FrameTooLarge { .. } => "FrameTooLarge".into(),
            Self::TrailingBytes { message, .. } => format!("TrailingBytes {message}"),
            Self::Malformed { message, reason } => format!("Malformed {message} {reason:?}"),
            Self::Limit { field, .. } => format!("Limit {field}"),
            Self::InvalidValue { field, .. } => format!("InvalidValue {field}"),
            Self::BadStringRef { field, .. } => format!("BadStringRef {field}"),
            Self::UnknownCritical { .. } => "UnknownCritical".into(),
        }
    }
}

wire_enum! {
    /// Error and close codes carried in `ERROR` and `CLOSE` (spec §9).
    pub enum ErrorCode {
        /// No error: a normal close.
        NoError = 0,
        /// A frame or body failed to decode (spec §4.5).
        MalformedFrame = 1,
        /// A critical frame type was unknown (spec §4.3).
        UnknownFrame = 2,
        /// A limit of spec §8 was exceeded.
        LimitExceeded = 3,
        /// A message arrived in a state where it is not allowed.
        UnexpectedMessage = 4,
        /// No common protocol version.
        VersionMismatch = 5,
        /// A patch referenced a node id that does not exist, or broke the tree's shape.
        BadPatch = 6,
        /// The receiver's tree hash differs from the hash a patch or snapshot announced.
        HashMismatch = 7,
        /// A string reference is out of range of its table (spec §5); a dynamic table that would
        /// grow past its limits is `LimitExceeded`.
        BadStringRef = 8,
        /// The session code or token is unknown or expired.
        SessionNotFound = 9,
        /// Too many failed attempts; try again later.
        RateLimited = 10,
        /// The session already has a peer in this role.
        SessionBusy = 11,
        /// The session ended; see the `END` reason.
        SessionEnded = 12,
        /// An internal failure of the sender.
        Internal = 13,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_of_decode_errors() {
        let cases = [
            (
                DecodeError::Truncated { field: "f" },
                ErrorCode::MalformedFrame,
            ),
            (
                DecodeError::BadVarint { field: "f" },
                ErrorCode::MalformedFrame,
            ),
            (
                DecodeError::FrameTooLarge { len: 2, max: 1 },
                ErrorCode::LimitExceeded,
            ),
            (
                DecodeError::Limit {
                    field: "f",
                    limit: 1,
                    actual: 2,
                },
                ErrorCode::LimitExceeded,
            ),
            (
                DecodeError::BadStringRef {
                    field: "f",
                    table: "dynamic",
                    index: 3,
                },
                ErrorCode::BadStringRef,
            ),
            (
                DecodeError::UnknownCritical { ty: 0x7e },
                ErrorCode::UnknownFrame,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err}");
        }
    }
}
