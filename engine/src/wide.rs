//! Incremental rehashing of wide nodes (spec §6.3), without changing any hash value.
//!
//! blake3 is itself a Merkle tree: the input is cut into 1 KiB chunks, and every parent merges
//! the chaining values (CVs) of a left subtree holding the largest power of two of chunks that
//! leaves something on the right, and a right subtree holding the rest. A node whose hash input
//! is large (an element with hundreds of children) keeps that tree: its input, the CV of every
//! subtree down to [`LEAF`]-byte leaves, and where each element child's 32-byte hash stands.
//!
//! ```text
//!            root = merge_root(A, B)
//!           /                     \
//!     A = merge(l0, l1)         B = l2          leaves: LEAF-byte slices of the input
//!     /          \                 |
//!   l0           l1               l2            a changed child hash patches its bytes,
//! [hdr|01 h1|01 h2|..|01 hk|..|01 hn]           rehashes its leaf and the merges above it
//! ```
//!
//! When only element children's hashes changed, the node patches those bytes in place and
//! rehashes the leaves they fall in and the merges on their path to the root: O(changed leaves ·
//! log n) instead of O(input). Anything that moves bytes (the node's own attributes, a child
//! added, removed or moved, a text child edited) makes the cache stale, and the next rehash
//! rebuilds it from the full input.

use blake3::hazmat::{ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root};
use tandem_protocol::NodeId;

/// Bytes of one leaf of the cached tree (a power of two, at least blake3's 1 KiB chunk): a
/// changed child hash costs rehashing the leaf it falls in.
pub(crate) const LEAF: usize = 1024;

/// Hash inputs of at least this many bytes (more than one leaf) are cached when they hold an
/// element child. Below it, hashing the whole input is about as quick as patching it.
pub(crate) const THRESHOLD: usize = 2 * LEAF;

/// The cached blake3 tree of one wide node's hash input.
#[derive(Debug, Clone, Default)]
pub(crate) struct WideHash {
    /// The node's whole hash input, as of its last rehash plus patches.
    input: Vec<u8>,
    /// Each element child's id and the offset of its 32-byte hash in `input`, sorted by id.
    entries: Vec<(NodeId, u32)>,
    /// The CV of every subtree of the tree, in preorder (the root's own entry is unused); empty
    /// until the first patch, so that a node whose layout keeps changing (its own attribute
    /// holding a large data URL) is hashed at full SIMD speed and never builds a tree.
    cvs: Vec<ChainingValue>,
    /// Element children whose hash may have changed since the last rehash (duplicates allowed).
    pending: Vec<NodeId>,
    /// Whether the input's layout changed: the next rehash must rebuild from scratch.
    stale: bool,
}

impl WideHash {
    /// Whether the cache can be patched: the layout has not changed since the last rehash.
    pub(crate) fn is_current(&self) -> bool {
        !self.stale
    }

    /// The element children to look at in the next rehash (when current).
    pub(crate) fn pending(&self) -> &[NodeId] {
        &self.pending
    }

    /// Records that the input's layout changed.
    pub(crate) fn mark_stale(&mut self) {
        self.stale = true;
        self.pending.clear();
    }

    /// Records that element child `id`'s hash may have changed.
    pub(crate) fn note_child(&mut self, id: NodeId) {
        if self.stale {
            return;
        }
        // A child rehashed alone and changed again is noted twice: bound the list by the
        // children, beyond which a rebuild is as cheap anyway.
        if self.pending.len() >= self.entries.len() {
            self.mark_stale();
        } else {
            self.pending.push(id);
        }
    }

    /// Rebuilds the cache from a full input (more than [`LEAF`] bytes) and the element
    /// children's `(id, hash offset)` in any order; returns the input's hash. `input` and
    /// `entries` are swapped with the cache's old buffers, for the caller to reuse. The tree
    /// itself is built by the first patch.
    pub(crate) fn rebuild(
        &mut self,
        input: &mut Vec<u8>,
        entries: &mut Vec<(NodeId, u32)>,
    ) -> [u8; 32] {
        debug_assert!(input.len() > LEAF);
        std::mem::swap(&mut self.input, input);
        std::mem::swap(&mut self.entries, entries);
        // Ids mostly come in increasing order along the children: a near-linear sort.
        self.entries.sort_unstable_by_key(|&(id, _)| id);
        self.pending.clear();
        self.stale = false;
        self.cvs.clear();
        *blake3::hash(&self.input).as_bytes()
    }

    /// Patches the pending children's hashes (`hash_of` gives a child's current hash) and
    /// rehashes what they touched; returns the input's hash (`current`, the node's hash as of
    /// the last rehash, when no byte changed), or `None` when a pending child has no entry,
    /// which the caller answers with a rebuild.
    pub(crate) fn update(
        &mut self,
        current: [u8; 32],
        mut hash_of: impl FnMut(NodeId) -> Option<[u8; 32]>,
    ) -> Option<[u8; 32]> {
        debug_assert!(!self.stale);
        let mut leaves: Vec<usize> = Vec::with_capacity(2 * self.pending.len());
        for &c in &self.pending {
            let i = self.entries.binary_search_by_key(&c, |&(id, _)| id).ok()?;
            let at = self.entries[i].1 as usize;
            let hash = hash_of(c)?;
            let slot = self.input.get_mut(at..at + 32)?;
            if slot != hash {
                slot.copy_from_slice(&hash);
                leaves.push(at / LEAF);
                leaves.push((at + 31) / LEAF);
            }
        }
        self.pending.clear();
        if leaves.is_empty() {
            return Some(current);
        }
        if self.cvs.is_empty() {
            self.cvs.resize(tree_nodes(self.input.len()), [0; 32]);
            build(&mut self.cvs, &self.input, 0, self.input.len());
        } else {
            leaves.sort_unstable();
            leaves.dedup();
            update(&mut self.cvs, &self.input, 0, self.input.len(), &leaves);
        }
        Some(self.root())
    }

    /// The root hash from the two top subtrees' CVs.
    fn root(&self) -> [u8; 32] {
        let left = left_subtree_len(self.input.len() as u64) as usize;
        let right = 1 + tree_nodes(left);
        *blake3::hazmat::merge_subtrees_root(&self.cvs[1], &self.cvs[right], Mode::Hash).as_bytes()
    }
}

/// Nodes of the cached tree over `len` (> 0) bytes: a full binary tree over its leaves.
fn tree_nodes(len: usize) -> usize {
    2 * len.div_ceil(LEAF) - 1
}

/// The CV of the leaf `input[lo..lo + len]` (`len` ≤ [`LEAF`], `lo` a multiple of it).
fn leaf(input: &[u8], lo: usize, len: usize) -> ChainingValue {
    blake3::Hasher::new()
        .set_input_offset(lo as u64)
        .update(&input[lo..lo + len])
        .finalize_non_root()
}

/// Fills `cvs` (the preorder subtree at `input[lo..lo + len]`) and returns its CV.
fn build(cvs: &mut [ChainingValue], input: &[u8], lo: usize, len: usize) -> ChainingValue {
    let cv = if len <= LEAF {
        leaf(input, lo, len)
    } else {
        let l = left_subtree_len(len as u64) as usize;
        let (left, right) = cvs[1..].split_at_mut(tree_nodes(l));
        let a = build(left, input, lo, l);
        let b = build(right, input, lo + l, len - l);
        merge_subtrees_non_root(&a, &b, Mode::Hash)
    };
    cvs[0] = cv;
    cv
}

/// Recomputes the CVs of the leaves in `dirty` (sorted leaf indices, all within the subtree at
/// `input[lo..lo + len]`) and of the merges above them; returns the subtree's CV.
fn update(
    cvs: &mut [ChainingValue],
    input: &[u8],
    lo: usize,
    len: usize,
    dirty: &[usize],
) -> ChainingValue {
    let cv = if len <= LEAF {
        leaf(input, lo, len)
    } else {
        let l = left_subtree_len(len as u64) as usize;
        let split = dirty.partition_point(|&i| i < (lo + l) / LEAF);
        let (left, right) = cvs[1..].split_at_mut(tree_nodes(l));
        let a = match &dirty[..split] {
            [] => left[0],
            d => update(left, input, lo, l, d),
        };
        let b = match &dirty[split..] {
            [] => right[0],
            d => update(right, input, lo + l, len - l, d),
        };
        merge_subtrees_non_root(&a, &b, Mode::Hash)
    };
    cvs[0] = cv;
    cv
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An input of `len` bytes with an element entry (`01` + 32 bytes) every 33 bytes after a
    /// `head`-byte header; its entries' ids are 1, 2, ….
    fn input(len: usize, head: usize) -> (Vec<u8>, Vec<(NodeId, u32)>) {
        let mut buf: Vec<u8> = (0..head).map(|i| i as u8).collect();
        let mut entries = Vec::new();
        while buf.len() + 33 <= len {
            entries.push((entries.len() as NodeId + 1, buf.len() as u32 + 1));
            buf.push(1);
            buf.extend_from_slice(&[entries.len() as u8; 32]);
        }
        buf.resize(len, 7);
        (buf, entries)
    }

    /// Rebuilding gives blake3's hash, and patching any set of entries gives the hash of the
    /// patched input, for lengths around leaf and tree boundaries.
    #[test]
    fn patches_match_a_full_hash() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for len in [
            LEAF + 1,
            2 * LEAF - 1,
            2 * LEAF,
            2 * LEAF + 1,
            3 * LEAF,
            4 * LEAF - 1,
            4 * LEAF,
            4 * LEAF + 1,
            5 * LEAF + 17,
            8 * LEAF,
            8 * LEAF + 33,
            33 * LEAF + 5,
        ] {
            for head in [0, 5, 31] {
                let (mut full, entries) = input(len, head);
                let mut w = WideHash::default();
                let (mut i, mut e) = (full.clone(), entries.clone());
                let mut prev = w.rebuild(&mut i, &mut e);
                assert_eq!(prev, *blake3::hash(&full).as_bytes());
                let mut hashes: Vec<[u8; 32]> = entries
                    .iter()
                    .map(|&(_, at)| [full[at as usize]; 32])
                    .collect();
                for _ in 0..20 {
                    let k = (next() % 4) as usize;
                    for _ in 0..k {
                        let j = next() as usize % entries.len();
                        hashes[j] = [next() as u8; 32];
                        let at = entries[j].1 as usize;
                        full[at..at + 32].copy_from_slice(&hashes[j]);
                        w.note_child(entries[j].0);
                    }
                    let want = *blake3::hash(&full).as_bytes();
                    let got = w.update(prev, |id| Some(hashes[id as usize - 1])).unwrap();
                    assert_eq!(got, want, "len {len} head {head}");
                    prev = got;
                }
            }
        }
    }

    /// A pending child without an entry asks for a rebuild; too many notes make the cache stale.
    #[test]
    fn unknown_child_and_overflow() {
        let (mut i, mut e) = input(5 * LEAF, 3);
        let n = e.len();
        let mut w = WideHash::default();
        w.rebuild(&mut i, &mut e);
        w.note_child(10_000);
        assert_eq!(w.update([0; 32], |_| Some([0; 32])), None);
        for _ in 0..=n {
            w.note_child(1);
        }
        assert!(!w.is_current());
        assert!(w.pending().is_empty());
    }
}
