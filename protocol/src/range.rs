//! A binary adaptive range coder: the entropy coder under
//! [`patch_coder`](crate::patch_coder).
//!
//! Every symbol is coded as bits. A bit is coded with a chance `p` (out of 4096) that it is 1:
//! from a [`Prob`], an estimate that adapts to the bits of its context, or from a model that
//! adapts on its own. The coder keeps a 32-bit range; a bit splits it at
//! `(range >> 12) × (4096 − p)`, and whenever the range drops below 2^24 one byte leaves (the
//! encoder carries into bytes already produced, holding back the last byte and any `0xFF`s
//! after it until it knows). Values that are close to uniform are coded as *direct* bits, each
//! halving the range.
//!
//! An encoding ends with the shortest tail that pins a value inside the final range: the decoder
//! reads zeros past the end of its input (at most [`MAX_PAD`] bytes of them), so the tail's
//! trailing zero bytes are left out.

use crate::DecodeError;

/// The range is renormalised (a byte shifted out) when it drops below this.
const TOP: u32 = 1 << 24;
/// How many zero bytes a decoder may read past the end of its input: the bytes an encoder's
/// tail leaves out.
pub(crate) const MAX_PAD: usize = 4;

/// How far a [`Prob`]'s count grows: its rate never drops below about 1/128.
const LIMIT: u32 = 127;

/// `floor(131072 / (2n + 3))` for every count `n` a [`Prob`] reaches: the fraction of the way
/// (out of 2^16) it moves towards a bit.
const RATES: [i64; LIMIT as usize + 1] = {
    let mut t = [0; LIMIT as usize + 1];
    let mut n = 0;
    while n <= LIMIT as usize {
        t[n] = 131_072 / (2 * n as i64 + 3);
        n += 1;
    }
    t
};

/// An adaptive estimate of the chance that the next bit in its context is 1, with a count: the
/// chance in the high 22 bits, how many bits it has seen (up to 127) in the low 10. It moves
/// `1 / (n + 1.5)` of the way towards each bit, so a young context learns as fast as counting
/// would and an old one settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Prob(u32);

impl Default for Prob {
    fn default() -> Self {
        Prob::NEW
    }
}

impl Prob {
    /// Even odds, nothing seen.
    pub(crate) const NEW: Prob = Prob(1 << 31);

    /// The chance of a 1 out of 4096, kept within 1/256 of certainty: a bit never costs the
    /// decoder less than 1/180 of an input bit, so the work a coded input asks for stays
    /// within a small multiple of its length.
    pub(crate) fn p1(self) -> u32 {
        (self.0 >> 20).clamp(16, 4080)
    }

    /// Learns `bit`.
    pub(crate) fn update(&mut self, bit: bool) {
        let n = self.0 & 1023;
        let p = i64::from(self.0 >> 10);
        let target = if bit { (1i64 << 22) - 1 } else { 0 };
        let p = p + (((target - p) * RATES[n as usize]) >> 16);
        self.0 = ((p as u32) << 10) | (n + u32::from(n < LIMIT));
    }
}

/// The encoding half: bits in, bytes out.
#[derive(Debug)]
pub(crate) struct Encoder<'a> {
    out: &'a mut Vec<u8>,
    /// The low end of the range, with a carry in bit 32.
    low: u64,
    range: u32,
    /// The last byte shifted out that a carry may still change…
    cache: u8,
    /// …and how many bytes it stands for (itself, then `0xFF`s).
    pending: u64,
    /// The first byte shifted out is always 0 and is not written.
    first: bool,
    /// Bytes shifted out so far (each one a byte the decoder reads after its first four).
    shifted: usize,
    /// `out`'s length when the encoding started.
    start: usize,
}

impl<'a> Encoder<'a> {
    /// An encoder appending to `out`.
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Self {
        let start = out.len();
        Encoder {
            out,
            low: 0,
            range: u32::MAX,
            cache: 0,
            pending: 1,
            first: true,
            shifted: 0,
            start,
        }
    }

    fn shift_low(&mut self) {
        if (self.low as u32) < 0xFF00_0000 || self.low >> 32 != 0 {
            let carry = (self.low >> 32) as u8;
            let mut byte = self.cache;
            while self.pending > 0 {
                if self.first {
                    // The first byte can take no carry: low starts at 0 and the range at
                    // 2^32 - 1, so low + range never reaches 2^32 before a byte has left.
                    debug_assert_eq!(byte.wrapping_add(carry), 0);
                    self.first = false;
                } else {
                    self.out.push(byte.wrapping_add(carry));
                }
                byte = 0xFF;
                self.pending -= 1;
            }
            self.cache = (self.low >> 24) as u8;
        }
        self.pending += 1;
        self.low = (self.low & 0x00FF_FFFF) << 8;
    }

    fn normalize(&mut self) {
        while self.range < TOP {
            self.range <<= 8;
            self.shifted += 1;
            self.shift_low();
        }
    }

    /// Codes `bit` with `prob` and adapts `prob`.
    pub(crate) fn bit(&mut self, prob: &mut Prob, bit: bool) {
        self.bit_p(prob.p1(), bit);
        prob.update(bit);
    }

    /// Codes `bit` with a chance of `p1` out of 4096 (1 to 4095) that it is 1, given by a model
    /// that adapts on its own.
    pub(crate) fn bit_p(&mut self, p1: u32, bit: bool) {
        self.split((self.range >> 12) * (4096 - p1.clamp(1, 4095)), bit);
    }

    /// Keeps the part of the range below `bound` for a 0, the rest for a 1.
    fn split(&mut self, bound: u32, bit: bool) {
        if bit {
            self.low += u64::from(bound);
            self.range -= bound;
        } else {
            self.range = bound;
        }
        self.normalize();
    }

    /// Codes the low `n` bits of `v` (`n` ≤ 64), most significant first, each with chance 1/2.
    pub(crate) fn direct(&mut self, v: u64, n: u32) {
        for i in (0..n).rev() {
            self.range >>= 1;
            if (v >> i) & 1 == 1 {
                self.low += u64::from(self.range);
            }
            self.normalize();
        }
    }

    /// Ends the encoding: writes the shortest tail that a decoder padding with zeros reads as a
    /// value inside the final range.
    pub(crate) fn finish(mut self) {
        // The value in [low, low + range) with the most trailing zero bits.
        let last = self.low + u64::from(self.range) - 1;
        let mut value = self.low;
        for k in (0..=32).rev() {
            let mask = (1u64 << k) - 1;
            let v = (self.low + mask) & !mask;
            if v <= last {
                value = v;
                break;
            }
        }
        self.low = value;
        let tail = self.out.len();
        for _ in 0..5 {
            self.shift_low();
        }
        // The decoder reads four bytes, then one per byte shifted out; what it reads past the
        // bytes written are zeros, so the tail's trailing zeros can be left out.
        let read = 4 + self.shifted;
        while self.out.len() > tail
            && self.out.last() == Some(&0)
            && read.saturating_sub(self.written()) < MAX_PAD
        {
            self.out.pop();
        }
        debug_assert!(self.written() <= read && read - self.written() <= MAX_PAD);
    }

    fn written(&self) -> usize {
        self.out.len() - self.start
    }
}

/// The decoding half: bytes in, bits out.
#[derive(Debug)]
pub(crate) struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
    pad: usize,
    code: u32,
    range: u32,
    field: &'static str,
}

impl<'a> Decoder<'a> {
    /// A decoder of `input`; `field` names it in errors.
    pub(crate) fn new(input: &'a [u8], field: &'static str) -> Result<Self, DecodeError> {
        let mut d = Decoder {
            input,
            pos: 0,
            pad: 0,
            code: 0,
            range: u32::MAX,
            field,
        };
        for _ in 0..4 {
            d.code = (d.code << 8) | u32::from(d.next_byte()?);
        }
        Ok(d)
    }

    fn next_byte(&mut self) -> Result<u8, DecodeError> {
        match self.input.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None if self.pad < MAX_PAD => {
                self.pad += 1;
                Ok(0)
            }
            None => Err(DecodeError::Truncated { field: self.field }),
        }
    }

    fn normalize(&mut self) -> Result<(), DecodeError> {
        while self.range < TOP {
            self.range <<= 8;
            self.code = (self.code << 8) | u32::from(self.next_byte()?);
        }
        Ok(())
    }

    /// Decodes one bit with `prob` and adapts `prob`.
    pub(crate) fn bit(&mut self, prob: &mut Prob) -> Result<bool, DecodeError> {
        let bit = self.bit_p(prob.p1())?;
        prob.update(bit);
        Ok(bit)
    }

    /// Decodes one bit with a chance of `p1` out of 4096 that it is 1 (see [`Encoder::bit_p`]).
    pub(crate) fn bit_p(&mut self, p1: u32) -> Result<bool, DecodeError> {
        self.split((self.range >> 12) * (4096 - p1.clamp(1, 4095)))
    }

    /// The bit whose part of the range, split at `bound`, holds the code.
    fn split(&mut self, bound: u32) -> Result<bool, DecodeError> {
        let bit = if self.code < bound {
            self.range = bound;
            false
        } else {
            self.code -= bound;
            self.range -= bound;
            true
        };
        self.normalize()?;
        Ok(bit)
    }

    /// Decodes `n` (≤ 64) direct bits, most significant first.
    pub(crate) fn direct(&mut self, n: u32) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for _ in 0..n {
            self.range >>= 1;
            let bit = self.code >= self.range;
            if bit {
                self.code -= self.range;
            }
            v = (v << 1) | u64::from(bit);
            self.normalize()?;
        }
        Ok(v)
    }

    /// Whether every byte of the input was read (a well-formed encoding leaves none over).
    pub(crate) fn is_exhausted(&self) -> bool {
        self.pos == self.input.len()
    }
}

/// One side of the range coder, so that every model is written once for both directions: the
/// encoder codes the value it is given and returns it, the decoder ignores it and returns what
/// it read.
pub(crate) trait Coder {
    fn bit(&mut self, p: &mut Prob, bit: bool) -> Result<bool, DecodeError>;
    fn direct(&mut self, v: u64, n: u32) -> Result<u64, DecodeError>;
    fn bit_p(&mut self, p1: u32, bit: bool) -> Result<bool, DecodeError>;
}

impl Coder for Encoder<'_> {
    fn bit(&mut self, p: &mut Prob, bit: bool) -> Result<bool, DecodeError> {
        Encoder::bit(self, p, bit);
        Ok(bit)
    }

    fn direct(&mut self, v: u64, n: u32) -> Result<u64, DecodeError> {
        Encoder::direct(self, v, n);
        Ok(if n >= 64 { v } else { v & ((1 << n) - 1) })
    }

    fn bit_p(&mut self, p1: u32, bit: bool) -> Result<bool, DecodeError> {
        Encoder::bit_p(self, p1, bit);
        Ok(bit)
    }
}

impl Coder for Decoder<'_> {
    fn bit(&mut self, p: &mut Prob, _: bool) -> Result<bool, DecodeError> {
        Decoder::bit(self, p)
    }

    fn direct(&mut self, _: u64, n: u32) -> Result<u64, DecodeError> {
        Decoder::direct(self, n)
    }

    fn bit_p(&mut self, p1: u32, _: bool) -> Result<bool, DecodeError> {
        Decoder::bit_p(self, p1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic mix of skewed and even bits, and direct values.
    fn script(n: usize, seed: u64) -> Vec<(usize, bool, u64)> {
        let mut x = seed;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let ctx = (x % 3) as usize;
                // Context 0 is mostly 0, context 1 even, context 2 direct.
                let bit = if ctx == 0 {
                    x.is_multiple_of(10)
                } else {
                    x & 2 != 0
                };
                (ctx, bit, x.rotate_left(i as u32 % 64))
            })
            .collect()
    }

    fn roundtrip(n: usize, seed: u64) -> usize {
        let steps = script(n, seed);
        let mut out = Vec::new();
        let mut enc = Encoder::new(&mut out);
        let mut probs = [Prob::default(); 2];
        for &(ctx, bit, v) in &steps {
            match ctx {
                2 => enc.direct(v, (v % 65) as u32),
                c => enc.bit(&mut probs[c], bit),
            }
        }
        enc.finish();
        let mut dec = Decoder::new(&out, "test").unwrap();
        let mut probs = [Prob::default(); 2];
        for &(ctx, bit, v) in &steps {
            match ctx {
                2 => {
                    let n = (v % 65) as u32;
                    let want = if n == 64 { v } else { v & ((1 << n) - 1) };
                    assert_eq!(dec.direct(n).unwrap(), want);
                }
                c => assert_eq!(dec.bit(&mut probs[c]).unwrap(), bit),
            }
        }
        assert!(
            dec.is_exhausted(),
            "the tail holds no bytes the decoder leaves unread"
        );
        out.len()
    }

    #[test]
    fn bits_and_direct_values_survive() {
        for seed in 1..200 {
            roundtrip(seed as usize * 7 % 500, seed);
        }
    }

    #[test]
    fn nothing_coded_costs_nothing() {
        assert_eq!(roundtrip(0, 1), 0);
    }

    #[test]
    fn skewed_bits_cost_little() {
        let mut out = Vec::new();
        let mut enc = Encoder::new(&mut out);
        let mut p = Prob::default();
        for _ in 0..8000 {
            enc.bit(&mut p, false);
        }
        enc.finish();
        // 8000 bits of a source that never varies: a few dozen bytes while the estimate
        // settles, far below the 1000 bytes they would take raw.
        assert!(out.len() < 60, "{} bytes", out.len());
    }

    #[test]
    fn a_truncated_input_is_an_error_not_a_loop() {
        let mut out = Vec::new();
        let mut enc = Encoder::new(&mut out);
        enc.direct(u64::MAX, 64);
        enc.direct(u64::MAX, 64);
        enc.finish();
        assert!(out.len() >= 16);
        let cut = &out[..4];
        let mut dec = Decoder::new(cut, "test").unwrap();
        let r = dec.direct(64).and_then(|_| dec.direct(64));
        assert_eq!(r, Err(DecodeError::Truncated { field: "test" }));
    }
}
