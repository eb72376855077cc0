//! Unsigned LEB128 variable-length integers (spec §4.2).
//!
//! The same encoding postcard uses for integers wider than a byte: seven bits per byte, least
//! significant group first, the high bit set on every byte but the last. Frame headers use it
//! directly; message bodies get it through postcard.

/// The largest number of bytes a `u32` varint may take.
pub const MAX_VARINT32_LEN: usize = 5;

/// Outcome of reading a varint from the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Varint {
    /// A complete varint: its value and how many bytes it took.
    Complete(u32, usize),
    /// The buffer ends inside the varint; more bytes are needed.
    Incomplete,
    /// The bytes cannot be a `u32` varint in minimal form: too long, a value above
    /// `u32::MAX`, or a non-minimal encoding (a trailing zero group).
    Invalid,
}

/// Reads a minimal `u32` varint from the front of `buf` (spec §4.2).
pub fn read_u32(buf: &[u8]) -> Varint {
    let mut value: u32 = 0;
    for i in 0..MAX_VARINT32_LEN {
        let Some(&byte) = buf.get(i) else {
            return Varint::Incomplete;
        };
        let group = u32::from(byte & 0x7f);
        if i == MAX_VARINT32_LEN - 1 && group > 0x0f {
            return Varint::Invalid;
        }
        value |= group << (7 * i);
        if byte & 0x80 == 0 {
            // A zero last group after the first byte means a shorter encoding existed.
            if i > 0 && byte == 0 {
                return Varint::Invalid;
            }
            return Varint::Complete(value, i + 1);
        }
    }
    Varint::Invalid
}

/// Appends `value` as a minimal varint to `out`.
pub fn write_u32(out: &mut Vec<u8>, value: u32) {
    write_u64(out, value.into());
}

/// Appends `value` as a minimal varint of up to 10 bytes to `out` (spec §4.2): how fields
/// that may exceed 32 bits (lengths, counts, sequence numbers) are written.
#[inline]
pub fn write_u64(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The number of bytes `write_u32` produces for `value`.
pub fn len_u32(value: u32) -> usize {
    match value {
        0..=0x7f => 1,
        0x80..=0x3fff => 2,
        0x4000..=0x1f_ffff => 3,
        0x20_0000..=0x0fff_ffff => 4,
        _ => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_edges() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            0x1f_ffff,
            0x20_0000,
            u32::MAX,
        ] {
            let mut out = Vec::new();
            write_u32(&mut out, v);
            assert_eq!(out.len(), len_u32(v));
            assert_eq!(read_u32(&out), Varint::Complete(v, out.len()));
            assert_eq!(read_u32(&out[..out.len() - 1]), Varint::Incomplete);
        }
    }

    #[test]
    fn rejects_bad_forms() {
        assert_eq!(read_u32(&[0x80, 0x00]), Varint::Invalid, "non-minimal");
        assert_eq!(
            read_u32(&[0xff, 0xff, 0xff, 0xff, 0x1f]),
            Varint::Invalid,
            "above u32"
        );
        assert_eq!(
            read_u32(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]),
            Varint::Invalid,
            "too long"
        );
        assert_eq!(
            read_u32(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
            Varint::Complete(u32::MAX, 5)
        );
    }
}
