//! The model of new strings in coded patches: context mixing over bytes.
//!
//! The strings a patch brings are short (a time, a count, a class name, a sentence) and often
//! repeat pieces of strings sent before. Each bit of a byte is predicted by six models, whose
//! predictions a small neural mixer combines (in the logistic domain, weights learnt online):
//!
//! - orders 0 to 4: the bits of the byte so far, after the last 0 to 4 bytes (orders 0 and 1 in
//!   direct tables, orders 2 to 4 hashed into tables of 2^[`HASH_BITS`]), the four bits of a
//!   nibble in one line of 16 counters, so a byte touches two lines per table;
//! - a match model: the last place the previous [`MIN_MATCH`] bytes occurred in the history of
//!   the strings, predicting the byte that followed them there, with a confidence learnt per
//!   match length.
//!
//! Every string starts with a marker byte that is not coded (the caller's: which field the
//! string fills), so contexts know where strings begin. All arithmetic is on integers, so
//! both ends compute the same probabilities bit for bit.

use crate::DecodeError;
use crate::range::{Coder, Prob};

/// Bits of the hashed context tables (orders 2 to 4).
const HASH_BITS: u32 = 16;
/// Bits of the match model's table of last positions.
const MATCH_BITS: u32 = 14;
/// Bytes a context must hold before the match model looks it up.
const MIN_MATCH: usize = 4;
/// The longest match length the model distinguishes.
const MAX_LEN: usize = 15;
/// History kept for the match model; when it is full the older half is dropped.
const HISTORY: usize = 1 << 20;
/// Lines of 16 counters per context of orders 0 and 1: one for the high nibble, one per value of
/// the high nibble for the low one.
const NIBBLE_LINES: usize = 17;
/// Inputs to the mixer: orders 0 to 4 and the match model.
const INPUTS: usize = 6;
/// Weight sets of the mixer, chosen by the match state.
const SETS: usize = 5;

/// The logistic function at every 128th point of −2048..2048, out of 4096.
const SQUASH: [i32; 33] = [
    1, 2, 4, 6, 10, 17, 27, 45, 74, 120, 194, 311, 488, 747, 1102, 1546, 2048, 2550, 2994, 3349,
    3608, 3785, 3902, 3976, 4022, 4051, 4069, 4079, 4086, 4090, 4092, 4094, 4095,
];

/// `4096 / (1 + e^(−d/256))`, interpolated between the points of [`SQUASH`].
fn squash(d: i32) -> i32 {
    if d > 2047 {
        return 4095;
    }
    if d < -2047 {
        return 1;
    }
    let w = d & 127;
    let i = ((d >> 7) + 16) as usize;
    (SQUASH[i] * (128 - w) + SQUASH[i + 1] * w + 64) >> 7
}

/// The inverse of [`squash`], tabulated.
fn stretch_table() -> Box<[i16; 4096]> {
    let mut t = Box::new([0i16; 4096]);
    let mut next = 0usize;
    for x in -2047..=2047 {
        let v = squash(x) as usize;
        for slot in t.iter_mut().take(v + 1).skip(next) {
            *slot = x as i16;
        }
        next = next.max(v + 1);
    }
    for slot in t.iter_mut().skip(next) {
        *slot = 2047;
    }
    t
}

/// The string model of one class of strings (texts, or names and values).
#[derive(Clone)]
pub(crate) struct TextModel {
    history: Vec<u8>,
    /// The counters, set up when the first byte is coded: a stream that only learns (a
    /// snapshot's strings) or codes no strings does without their 1.1 MB.
    tables: Option<Box<Tables>>,
    last: Box<[u32]>,
    /// Where the predicted byte is in `history`, and how long the match is (0: none).
    match_at: usize,
    match_len: usize,
    match_counters: [Prob; 2 * (MAX_LEN + 1)],
    weights: [[i32; INPUTS]; SETS],
}

/// The counters of orders 0 to 4.
#[derive(Clone)]
struct Tables {
    order0: Box<[Prob]>,
    order1: Box<[Prob]>,
    hashed: [Box<[Prob]>; 3],
}

impl Tables {
    fn new() -> Box<Tables> {
        let table = |n: usize| vec![Prob::NEW; n].into_boxed_slice();
        Box::new(Tables {
            order0: table(NIBBLE_LINES << 4),
            order1: table((256 * NIBBLE_LINES) << 4),
            hashed: std::array::from_fn(|_| table(1 << HASH_BITS)),
        })
    }

    fn get(&self, (table, i): (usize, usize)) -> Prob {
        match table {
            0 => self.order0[i],
            1 => self.order1[i],
            k => self.hashed[k - 2][i],
        }
    }

    fn get_mut(&mut self, (table, i): (usize, usize)) -> &mut Prob {
        match table {
            0 => &mut self.order0[i],
            1 => &mut self.order1[i],
            k => &mut self.hashed[k - 2][i],
        }
    }
}

/// The [`stretch_table`], computed once.
fn stretch() -> &'static [i16; 4096] {
    static TABLE: std::sync::OnceLock<Box<[i16; 4096]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(stretch_table)
}

impl std::fmt::Debug for TextModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextModel")
            .field("history", &self.history.len())
            .finish_non_exhaustive()
    }
}

impl Default for TextModel {
    fn default() -> Self {
        TextModel {
            history: Vec::new(),
            tables: None,
            last: vec![0; 1 << MATCH_BITS].into_boxed_slice(),
            match_at: 0,
            match_len: 0,
            match_counters: [Prob::NEW; 2 * (MAX_LEN + 1)],
            weights: [[1 << 14; INPUTS]; SETS],
        }
    }
}

/// Multiplicative hash of the `k` bytes before the end of `h` (missing bytes count as 0).
fn context_hash(h: &[u8], k: usize) -> u32 {
    let mut x = k as u32;
    for i in 1..=k {
        let b = h.len().checked_sub(i).map_or(0, |j| h[j]);
        x = (x ^ u32::from(b)).wrapping_mul(0x2F0B_4A27).rotate_left(13);
    }
    x.wrapping_mul(0x9E37_79B1)
}

/// The table slots of orders 0 to 4 for the bits `local` (1 to 15) of nibble line `nib` (0 for
/// the high nibble, 1 + its value for the low one) of the byte after `prev`, given the
/// byte-start hashes of orders 2 to 4.
fn slots(hashes: &[u32; 3], prev: usize, nib: usize, local: usize) -> [(usize, usize); INPUTS - 1] {
    let mix = (nib as u32).wrapping_mul(0x6F4F_2A35);
    let hashed = |k: usize| {
        let line = ((hashes[k] ^ mix) >> (32 - HASH_BITS + 4)) as usize;
        (2 + k, line << 4 | local)
    };
    [
        (0, nib << 4 | local),
        (1, (prev * NIBBLE_LINES + nib) << 4 | local),
        hashed(0),
        hashed(1),
        hashed(2),
    ]
}

impl TextModel {
    /// Starts a string: `marker` (which field it fills) enters the history without being coded.
    pub(crate) fn begin(&mut self, marker: u8) {
        self.learn(marker);
    }

    /// Codes one byte of a string (the encoder's `b`; the decoder's is returned).
    pub(crate) fn byte<C: Coder>(&mut self, c: &mut C, b: u8) -> Result<u8, DecodeError> {
        let prev = usize::from(self.history.last().copied().unwrap_or(0));
        let expected = (self.match_len > 0).then(|| self.history[self.match_at]);
        let hashes = [2, 3, 4].map(|k| context_hash(&self.history, k));
        let stretch = stretch();
        let tables = self.tables.get_or_insert_with(Tables::new);
        let mut node = 1usize;
        for i in (0..8).rev() {
            let bit = (b >> i) & 1 == 1;
            // The match model speaks while the bits so far agree with its byte.
            let predicted = expected
                .filter(|&e| (usize::from(e) | 0x100) >> (i + 1) == node)
                .map(|e| (e >> i) & 1 == 1);
            // The four bits of a nibble share a line of 16 counters in each table: the high
            // nibble's line, then one per value of the high nibble for the low one.
            let (nib, local) = if i >= 4 {
                (0, node)
            } else {
                let low = 3 - i;
                (
                    1 + (node >> low) - 16,
                    (1 << low) | (node & ((1 << low) - 1)),
                )
            };
            let slots = slots(&hashes, prev, nib, local);
            let mut inputs = [0i32; INPUTS];
            for (input, &slot) in inputs.iter_mut().zip(&slots) {
                *input = i32::from(stretch[tables.get(slot).p1() as usize]);
            }
            let (set, matched) = match predicted {
                Some(e) => {
                    let len = self.match_len.min(MAX_LEN);
                    let k = 2 * len + usize::from(e);
                    inputs[INPUTS - 1] = i32::from(stretch[self.match_counters[k].p1() as usize]);
                    (1 + (len - 1) / 4, Some(k))
                }
                None => (0, None),
            };
            let dot: i64 = inputs
                .iter()
                .zip(&self.weights[set])
                .map(|(&x, &w)| i64::from(x) * i64::from(w))
                .sum();
            let p = squash((dot >> 16).clamp(-2047, 2047) as i32);
            let bit = c.bit_p(p as u32, bit)?;
            let err = ((i32::from(bit) << 12) - p) * 7;
            for (w, &x) in self.weights[set].iter_mut().zip(&inputs) {
                *w += (x * err + 0x8000) >> 16;
            }
            for &slot in &slots {
                tables.get_mut(slot).update(bit);
            }
            if let Some(k) = matched {
                self.match_counters[k].update(bit);
            }
            node = (node << 1) | usize::from(bit);
        }
        let byte = (node & 0xFF) as u8;
        self.learn(byte);
        Ok(byte)
    }

    /// Appends `byte` to the history and moves the contexts and the match on.
    pub(crate) fn learn(&mut self, byte: u8) {
        if self.history.len() == HISTORY {
            self.history.drain(..HISTORY / 2);
            self.last.fill(0);
            self.match_len = 0;
        }
        if self.match_len > 0 && self.history[self.match_at] == byte {
            self.match_len += 1;
            self.match_at += 1;
        } else {
            self.match_len = 0;
        }
        self.history.push(byte);
        let h = &self.history;
        if h.len() >= MIN_MATCH {
            let slot = (context_hash(h, MIN_MATCH) >> (32 - MATCH_BITS)) as usize;
            if self.match_len == 0 {
                let at = self.last[slot] as usize;
                if at > 0 && at < h.len() {
                    // Count how far back the candidate really matches.
                    let len = (1..=at.min(MAX_LEN))
                        .take_while(|&i| h[at - i] == h[h.len() - i])
                        .count();
                    if len > 0 {
                        self.match_at = at;
                        self.match_len = len;
                    }
                }
            }
            self.last[slot] = h.len() as u32;
        }
        if self.match_len > 0 && self.match_at >= self.history.len() {
            self.match_len = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::{Decoder, Encoder};

    fn code_all(strings: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = Encoder::new(&mut out);
        let mut m = TextModel::default();
        for s in strings {
            m.begin(1);
            for &b in s.as_bytes() {
                m.byte(&mut enc, b).unwrap();
            }
        }
        enc.finish();
        let mut dec = Decoder::new(&out, "test").unwrap();
        let mut m = TextModel::default();
        for s in strings {
            m.begin(1);
            let back: Vec<u8> = (0..s.len()).map(|_| m.byte(&mut dec, 0).unwrap()).collect();
            assert_eq!(back, s.as_bytes());
        }
        out
    }

    #[test]
    fn squash_and_stretch_are_inverse() {
        let t = stretch_table();
        // Beyond ±1400 the logistic is too flat for a 12-bit probability to tell points apart.
        for d in (-1400..1400).step_by(37) {
            let back = i32::from(t[squash(d) as usize]);
            assert!((back - d).abs() <= 40, "{d} → {} → {back}", squash(d));
        }
        assert!((1..4096).all(|p| t[p - 1] <= t[p]));
    }

    #[test]
    fn repeated_strings_get_cheap() {
        let once = code_all(&["Updated 3 minutes ago by the night desk"]).len();
        let strings = ["Updated 3 minutes ago by the night desk"; 10];
        let ten = code_all(&strings).len();
        // Nine repeats cost a small fraction of the first.
        assert!(ten < once * 2, "once {once} B, ten times {ten} B");
    }

    #[test]
    fn any_bytes_round_trip() {
        let all: String = (0u8..128).map(char::from).collect();
        code_all(&[&all, "", "ü€𝄞", &all]);
    }
}
