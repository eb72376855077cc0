//! Tree diff: brings the consumer's tree to the content of another tree that shares no ids
//! with it (two parses of the same page at two moments, issue 3 item 1b), recording the
//! changes through the consumer's mutation API so that they leave as one `PATCH`.
//!
//! ## Model
//!
//! The old tree `A` (the consumer's) and the new tree `B` (the target) are first copied into
//! dense breadth-first arrays, so every node's children are a contiguous index range. The
//! diff then builds a *matching*, a partial one-to-one map between nodes of `A` and `B`, in
//! which each pair is either **exact** (equal Merkle hashes, or equal content for leaves, which
//! have no hash: the whole subtrees are equal and nothing inside them is touched) or
//! **compatible** (same kind, same element name and namespace: the node is kept, its
//! attributes or text are updated in place and its children are matched in turn). Nodes of `A` left unmatched are removed; nodes of `B` left unmatched
//! are inserted; a matched node whose parent or rank among its siblings differs is moved.
//!
//! ```text
//!  1 in place   from the document pair down: children equal by hash at both ends of the
//!               sibling lists are exact pairs; a single changed child on each side (same tag
//!               and `id`) is a tentative pair and is descended into. What is left open is the
//!               changed region; tentative pairs are committed after 2-4b if both nodes are
//!               still unmatched then.
//!  2 anchors    inside the changed region, a subtree whose hash occurs once in A and once in
//!               B is an exact pair, wherever the two occurrences sit (a moved subtree).
//!  3 ids        elements with the same `id` (once in A, once in B, same tag) are compatible
//!               pairs, across the whole changed region (as morphdom does with ids).
//!  4 containers bottom-up: an unmatched B node is paired with an unmatched, compatible A node
//!               when most of its matched children come from that node and most of that
//!               node's matched children went to it (a moved subtree that also changed
//!               inside; an element whose attributes changed around kept content).
//!  4b neighbours a free B node right after (before) a matched sibling, away from the ends of
//!               its list, is an exact pair with the equal, free A node right after (before)
//!               that sibling's counterpart: moved content keeps the blank texts between its
//!               parts and travels as one run of consecutive ids.
//!  5 children   for every compatible pair, the children between the equal ends are aligned
//!               with `similar` (Myers): first by subtree hash, children matched earlier
//!               standing as fixed points; then the children still open, as one region, by
//!               their own content (tag and attributes, or text); then in the gaps between
//!               those pairs by kind (tag and namespace, or text, or comment).
//!  6 leftovers  a B subtree still unmatched that equals an A subtree about to be removed
//!               (by hash) is matched to it: moved, not inserted again.
//! ```
//!
//! Edit script. Unmatched A subtrees that hold no matched node are removed first. `B` is then
//! walked breadth-first; under each parent its children are placed left to right: the matched
//! children that already sit under the right parent and form a longest increasing run of their
//! old ranks stay where they are, every other matched child is moved right after its left
//! sibling's counterpart, and each run of unmatched siblings is inserted with one `insert`
//! (their matched descendants are left out of it and moved in when the walk reaches them).
//! Unmatched A nodes that held matched nodes are removed last, once those have moved out. The
//! walk keeps an invariant that makes every operation valid: the nodes already placed form the
//! top of `B`, so a moved node's new parent is never inside the moved subtree, every `prev` is
//! already at its final place, and no node moves after its old parent was removed. What
//! travels is decided by the matching: the consumer's `flush` turns the resulting tree (which
//! old ids stay, where they sit, what is new) into the `PATCH`, where a chain of moves, each
//! node right after the one moved before it (content that changed parent together), leaves as
//! one `MoveRun`.
//!
//! The result is checked against `target`'s hash; should it ever differ (a bug, or a 64-bit
//! key collision that the full-hash checks did not catch), the document's children are
//! replaced wholesale, so [`update`] always converges.
//!
//! ## Cost
//!
//! `O(n)` to copy and hash both trees (`n` = nodes of both) plus `O(r log r)` for the changed
//! region `r`: hash maps for anchors, ids and leftovers, a sort per parent for the container
//! votes, a longest increasing subsequence per parent for the moves. Sibling alignment uses
//! `similar`'s Myers, whose middle-snake search is bounded (`O((N+M)^1.5)` on hard inputs);
//! above [`MYERS_MAX_WORK`] (the product of the two lengths) a keyed first-come pairing takes
//! its place (`O(N+M)`), so thousands of changed siblings never cost a quadratic search.
//! Recursion is never used on tree depth.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::ops::Range;

use similar::algorithms::{DiffHook, myers};
use tandem_protocol::{DOCUMENT_ID, NodeId};

use crate::dom::{Dom, Name, NodeKind};
use crate::{Consumer, EngineError};

/// Above this product of the two sibling list lengths, children are paired by key in one pass
/// instead of by a Myers alignment.
pub const MYERS_MAX_WORK: usize = 1 << 18;

/// What [`update_counting`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffStats {
    /// Nodes of the new tree matched to an old node with an equal subtree.
    pub exact: usize,
    /// Nodes kept and updated in place (same kind and tag).
    pub updated: usize,
    /// `move_node` calls.
    pub moves: usize,
    /// `insert` calls.
    pub inserts: usize,
    /// Nodes created by those inserts.
    pub inserted_nodes: usize,
    /// `remove` calls.
    pub removes: usize,
    /// The diff did not reach the target's hash and replaced the document's children instead.
    /// Never expected; tests and the fuzz target assert it stays `false`.
    pub fallback: bool,
}

/// Records on `c` the changes that turn its tree into `target`'s content (equal tree hash).
///
/// Changes go through the consumer's mutation API, so they become part of the next `PATCH`.
/// Should an operation fail (a tree limit hit by an intermediate state), the document's
/// children are replaced instead; only if that fails too is the error returned, with the
/// consumer's tree holding part of the changes (queue a snapshot to recover).
pub fn update(c: &mut Consumer, target: &mut Dom) -> Result<(), EngineError> {
    update_counting(c, target).map(|_| ())
}

/// [`update`], also reporting what the diff matched and which operations it recorded.
pub fn update_counting(c: &mut Consumer, target: &mut Dom) -> Result<DiffStats, EngineError> {
    update_with(c, target, MYERS_MAX_WORK)
}

/// [`update_counting`] with another threshold for the Myers alignment (the fuzz target lowers
/// it to exercise the keyed pairing on small trees).
///
/// Masking (spec §12): `target` is masked in place by the consumer's policy, like any content
/// entering the consumer; the changes that bring the tree to it are then recorded as they are.
fn update_with(
    c: &mut Consumer,
    target: &mut Dom,
    max_work: usize,
) -> Result<DiffStats, EngineError> {
    c.policy().apply(target);
    c.set_syncing(true);
    let r = update_masked(c, target, max_work);
    c.set_syncing(false);
    r
}

/// [`update_with`] for a target masked already.
fn update_masked(
    c: &mut Consumer,
    target: &mut Dom,
    max_work: usize,
) -> Result<DiffStats, EngineError> {
    let want = target.root_hash();
    if c.dom_mut().root_hash() == want {
        return Ok(DiffStats::default());
    }
    let target: &Dom = target;
    let (a, b) = {
        let mut m = Matcher::new(c.dom(), target, max_work);
        m.run();
        (m.a, m.b)
    };
    let mut stats = DiffStats::default();
    let result = Script {
        c: &mut *c,
        target,
        a,
        b,
        stats: &mut stats,
    }
    .run();
    if result.is_err() || c.tree_hash() != want {
        stats.fallback = true;
        replace_all(c, target, &mut stats)?;
    }
    Ok(stats)
}

fn replace_all(c: &mut Consumer, target: &Dom, stats: &mut DiffStats) -> Result<(), EngineError> {
    for k in c.dom().children(DOCUMENT_ID).to_vec() {
        c.remove(k)?;
        stats.removes += 1;
    }
    let mut prev = 0;
    for &k in target.children(DOCUMENT_ID) {
        prev = c.insert_copy(DOCUMENT_ID, prev, target, k)?;
        stats.inserts += 1;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Dense copies of the two trees.

/// "No node" in the dense index space.
const NONE: u32 = u32::MAX;
/// Strictly inside an exactly matched subtree (has no partner of its own).
const CLAIMED: u8 = 1;
/// The node or one of its descendants is matched or claimed. Every ancestor of a busy node is
/// busy.
const BUSY: u8 = 2;
/// Matched to a node with an equal subtree.
const EXACT: u8 = 4;
/// B side: the children of this compatible pair were aligned.
const ALIGNED: u8 = 8;
/// A side, edit script: stays where it is among its siblings.
const KEEP: u8 = 16;
/// B side, edit script: inserted by an earlier `insert` (its new id is known).
const CREATED: u8 = 32;

/// One tree in breadth-first order: node `i`'s children are `first[i] .. first[i] + count[i]`.
#[derive(Debug)]
struct Side {
    ids: Vec<NodeId>,
    parent: Vec<u32>,
    first: Vec<u32>,
    count: Vec<u32>,
    /// The first 8 bytes of the node's Merkle hash, or for a leaf (which has none, spec §6.3)
    /// a hash of its content; a full compare confirms every match.
    key: Vec<u64>,
    partner: Vec<u32>,
    flags: Vec<u8>,
}

impl Side {
    /// Copies `dom`, whose cached hashes must be current.
    fn build(dom: &Dom) -> Side {
        let n = dom.len();
        let mut s = Side {
            ids: Vec::with_capacity(n),
            parent: Vec::with_capacity(n),
            first: Vec::with_capacity(n),
            count: Vec::with_capacity(n),
            key: Vec::with_capacity(n),
            partner: Vec::new(),
            flags: Vec::new(),
        };
        s.ids.push(DOCUMENT_ID);
        s.parent.push(NONE);
        let mut i = 0;
        while i < s.ids.len() {
            let id = s.ids[i];
            let kids = dom.children(id);
            s.first.push(s.ids.len() as u32);
            s.count.push(kids.len() as u32);
            for &k in kids {
                s.ids.push(k);
                s.parent.push(i as u32);
            }
            let key = match dom.node(id) {
                Some(n) if n.kind.is_leaf() => level_key(Some(&n.kind), Level::Own),
                _ => {
                    let h = dom.cached_hash(id).unwrap_or_default();
                    u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
                }
            };
            s.key.push(key);
            i += 1;
        }
        s.partner = vec![NONE; s.ids.len()];
        s.flags = vec![0; s.ids.len()];
        s
    }

    fn len(&self) -> u32 {
        self.ids.len() as u32
    }

    fn kids(&self, i: u32) -> Range<u32> {
        let f = self.first[i as usize];
        f..f + self.count[i as usize]
    }

    fn has(&self, i: u32, flag: u8) -> bool {
        self.flags[i as usize] & flag != 0
    }

    fn partner(&self, i: u32) -> u32 {
        self.partner[i as usize]
    }

    fn parent(&self, i: u32) -> u32 {
        self.parent[i as usize]
    }

    /// Unmatched and not inside an exact pair: can still be matched.
    fn open(&self, i: u32) -> bool {
        self.partner(i) == NONE && !self.has(i, CLAIMED)
    }

    /// Open and holds no matched node: can be matched exactly as a whole.
    fn free(&self, i: u32) -> bool {
        self.partner(i) == NONE && self.flags[i as usize] & (CLAIMED | BUSY) == 0
    }

    fn mark_busy(&mut self, mut i: u32) {
        while i != NONE && !self.has(i, BUSY) {
            self.flags[i as usize] |= BUSY;
            i = self.parent(i);
        }
    }

    fn claim_below(&mut self, i: u32) {
        let mut stack: Vec<u32> = self.kids(i).collect();
        while let Some(k) = stack.pop() {
            self.flags[k as usize] |= CLAIMED | BUSY;
            stack.extend(self.kids(k));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Matching.

/// Keys of the first alignment pass: a child already matched is a fixed point (`Pair` of the
/// B node), any other child is its subtree hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Pair(u32),
    Hash(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    /// The node's own content: kind, tag, namespace and attributes, or its text.
    Own,
    /// The node's kind: tag and namespace for an element.
    Class,
}

/// Counts and last occurrences of a key on both sides.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    a_count: u32,
    a: u32,
    b_count: u32,
    b: u32,
}

struct Matcher<'a> {
    ad: &'a Dom,
    bd: &'a Dom,
    a: Side,
    b: Side,
    /// Compatible pairs whose children still need aligning.
    work: Vec<(u32, u32)>,
    /// See [`MYERS_MAX_WORK`].
    max_work: usize,
}

impl<'a> Matcher<'a> {
    fn new(ad: &'a Dom, bd: &'a Dom, max_work: usize) -> Self {
        Matcher {
            ad,
            bd,
            a: Side::build(ad),
            b: Side::build(bd),
            work: Vec::new(),
            max_work,
        }
    }

    fn run(&mut self) {
        self.pair_compat(0, 0);
        // 1. In place, from the top: equal ends are exact pairs; a single changed child on
        // each side is a tentative pair, descended into now and committed after 2-4b unless
        // those found a better counterpart for either node.
        let mut tentative = Vec::new();
        let mut stack = vec![(0, 0)];
        while let Some((x, y)) = stack.pop() {
            let (olds, news) = self.trim(x, y);
            if let Some((i, j)) = self.single(&olds, &news) {
                tentative.push((i, j));
                stack.push((i, j));
            }
        }
        // 2-4b. Over the changed region (every node still open).
        self.anchors();
        self.ids();
        self.containers();
        // 4b. Along sibling lists, from the pairs found so far.
        self.neighbours();
        for (i, j) in tentative {
            if self.a.open(i) && self.b.open(j) {
                self.pair_compat(i, j);
            }
        }
        // 5. Children of every compatible pair.
        while let Some((x, y)) = self.work.pop() {
            self.align(x, y);
        }
        // 6. Moved copies of removed subtrees.
        self.leftovers();
    }

    fn kind_a(&self, i: u32) -> Option<&'a NodeKind> {
        self.ad.node(self.a.ids[i as usize]).map(|n| &n.kind)
    }

    fn kind_b(&self, j: u32) -> Option<&'a NodeKind> {
        self.bd.node(self.b.ids[j as usize]).map(|n| &n.kind)
    }

    /// Whether the subtrees of old node `i` and new node `j` are equal: same hash for elements,
    /// same content for leaves.
    fn same_hash(&self, i: u32, j: u32) -> bool {
        if self.a.key[i as usize] != self.b.key[j as usize] {
            return false;
        }
        match (self.kind_a(i), self.kind_b(j)) {
            (Some(x), Some(y)) if x.is_leaf() || y.is_leaf() => x == y,
            _ => {
                self.ad.cached_hash(self.a.ids[i as usize])
                    == self.bd.cached_hash(self.b.ids[j as usize])
            }
        }
    }

    /// Whether old node `i` can be updated in place into new node `j`.
    fn compatible(&self, i: u32, j: u32) -> bool {
        match (self.kind_a(i), self.kind_b(j)) {
            (Some(NodeKind::Element(x)), Some(NodeKind::Element(y))) => {
                x.ns == y.ns
                    && x.name == y.name
                    && distinct_names(&x.attrs)
                    && distinct_names(&y.attrs)
            }
            (Some(NodeKind::Text(_)), Some(NodeKind::Text(_)))
            | (Some(NodeKind::Comment(_)), Some(NodeKind::Comment(_))) => true,
            (Some(x @ NodeKind::Doctype { .. }), Some(y @ NodeKind::Doctype { .. })) => x == y,
            _ => false,
        }
    }

    fn id_attr_a(&self, i: u32) -> Option<&'a str> {
        match self.kind_a(i) {
            Some(NodeKind::Element(e)) => e.attr("id"),
            _ => None,
        }
    }

    fn id_attr_b(&self, j: u32) -> Option<&'a str> {
        match self.kind_b(j) {
            Some(NodeKind::Element(e)) => e.attr("id"),
            _ => None,
        }
    }

    fn pair_exact(&mut self, i: u32, j: u32) {
        self.a.partner[i as usize] = j;
        self.b.partner[j as usize] = i;
        self.a.flags[i as usize] |= EXACT;
        self.b.flags[j as usize] |= EXACT;
        self.a.claim_below(i);
        self.b.claim_below(j);
        self.a.mark_busy(i);
        self.b.mark_busy(j);
    }

    fn pair_compat(&mut self, i: u32, j: u32) {
        self.a.partner[i as usize] = j;
        self.b.partner[j as usize] = i;
        self.a.mark_busy(i);
        self.b.mark_busy(j);
        self.work.push((i, j));
    }

    /// Pairs two open nodes found at corresponding places: exactly when their subtrees are
    /// equal and hold no matched node, else in place when compatible. Returns whether paired.
    fn pair_found(&mut self, i: u32, j: u32) -> bool {
        if self.a.free(i) && self.b.free(j) && self.same_hash(i, j) {
            self.pair_exact(i, j);
            true
        } else if self.a.open(i) && self.b.open(j) && self.compatible(i, j) {
            self.pair_compat(i, j);
            true
        } else {
            false
        }
    }

    /// Whether `i` and `j` are (or now become, exactly) each other's counterparts.
    fn settle_in_place(&mut self, i: u32, j: u32) -> bool {
        if self.a.partner(i) == j {
            return true;
        }
        if self.a.free(i) && self.b.free(j) && self.same_hash(i, j) {
            self.pair_exact(i, j);
            return true;
        }
        false
    }

    /// Pairs the equal children at both ends of the child lists of `x` and `y` exactly and
    /// returns the ranges left between them.
    fn trim(&mut self, x: u32, y: u32) -> (Range<u32>, Range<u32>) {
        let (ar, br) = (self.a.kids(x), self.b.kids(y));
        let (mut lo_a, mut hi_a, mut lo_b, mut hi_b) = (ar.start, ar.end, br.start, br.end);
        while lo_a < hi_a && lo_b < hi_b && self.settle_in_place(lo_a, lo_b) {
            lo_a += 1;
            lo_b += 1;
        }
        while lo_a < hi_a && lo_b < hi_b && self.settle_in_place(hi_a - 1, hi_b - 1) {
            hi_a -= 1;
            hi_b -= 1;
        }
        (lo_a..hi_a, lo_b..hi_b)
    }

    /// The two nodes, when each range holds one, both open, compatible and with the same `id`.
    fn single(&self, olds: &Range<u32>, news: &Range<u32>) -> Option<(u32, u32)> {
        let (i, j) = (olds.start, news.start);
        (olds.len() == 1
            && news.len() == 1
            && self.a.open(i)
            && self.b.open(j)
            && self.compatible(i, j)
            && self.id_attr_a(i) == self.id_attr_b(j))
        .then_some((i, j))
    }

    /// Aligns the children of the compatible pair (`x`, `y`), once.
    fn align(&mut self, x: u32, y: u32) {
        if self.b.has(y, ALIGNED) || self.a.partner(x) != y {
            return;
        }
        self.b.flags[y as usize] |= ALIGNED;
        let (olds, news) = self.trim(x, y);
        if olds.is_empty() || news.is_empty() {
            // Only insertions or only removals are left.
        } else if let Some((i, j)) = self.single(&olds, &news) {
            self.pair_compat(i, j);
        } else {
            let olds: Vec<u32> = olds.collect();
            let news: Vec<u32> = news.collect();
            self.align_general(&olds, &news);
        }
    }

    /// Aligns the children between the equal ends of a compatible pair: first by subtree hash,
    /// children matched earlier standing as fixed points (`Key::Pair`), then the children still
    /// open by [`Level`]s, as one region (matched children may stand in any order, and a gap
    /// between two of them would split the rest arbitrarily).
    fn align_general(&mut self, olds: &[u32], news: &[u32]) {
        let open_a: Vec<u64> = olds
            .iter()
            .filter(|&&i| self.a.open(i))
            .map(|&i| self.a.key[i as usize])
            .collect();
        let open_b: Vec<u64> = news
            .iter()
            .filter(|&&j| self.b.open(j))
            .map(|&j| self.b.key[j as usize])
            .collect();
        if open_a.is_empty() || open_b.is_empty() {
            return;
        }
        if share_a_key(&open_a, &open_b) {
            let ka: Vec<Key> = olds
                .iter()
                .map(|&i| match self.a.partner(i) {
                    NONE => Key::Hash(self.a.key[i as usize]),
                    p => Key::Pair(p),
                })
                .collect();
            let kb: Vec<Key> = news
                .iter()
                .map(|&j| match self.b.partner(j) {
                    NONE => Key::Hash(self.b.key[j as usize]),
                    _ => Key::Pair(j),
                })
                .collect();
            let (pairs, _) = lcs(&ka, &kb, self.max_work);
            for &(i, j) in &pairs {
                let (p, q) = (olds[i as usize], news[j as usize]);
                if self.a.partner(p) != q {
                    self.pair_found(p, q);
                }
            }
        }
        self.in_gaps(olds, news, &[], true, Level::Own);
    }

    /// Aligns the open nodes left between the pairs of the previous pass at `level`.
    fn in_gaps(
        &mut self,
        olds: &[u32],
        news: &[u32],
        pairs: &[(u32, u32)],
        monotone: bool,
        level: Level,
    ) {
        if monotone {
            let (mut pa, mut pb) = (0usize, 0usize);
            for &(i, j) in pairs
                .iter()
                .chain(std::iter::once(&(olds.len() as u32, news.len() as u32)))
            {
                let (i, j) = (i as usize, j as usize);
                if i > pa && j > pb {
                    let ga: Vec<u32> = olds[pa..i]
                        .iter()
                        .copied()
                        .filter(|&k| self.a.open(k))
                        .collect();
                    let gb: Vec<u32> = news[pb..j]
                        .iter()
                        .copied()
                        .filter(|&k| self.b.open(k))
                        .collect();
                    self.cascade(level, &ga, &gb);
                }
                pa = i + 1;
                pb = j + 1;
            }
        } else {
            let ga: Vec<u32> = olds.iter().copied().filter(|&k| self.a.open(k)).collect();
            let gb: Vec<u32> = news.iter().copied().filter(|&k| self.b.open(k)).collect();
            self.cascade(level, &ga, &gb);
        }
    }

    fn cascade(&mut self, level: Level, olds: &[u32], news: &[u32]) {
        if olds.is_empty() || news.is_empty() {
            return;
        }
        let ka: Vec<u64> = olds
            .iter()
            .map(|&i| level_key(self.kind_a(i), level))
            .collect();
        let kb: Vec<u64> = news
            .iter()
            .map(|&j| level_key(self.kind_b(j), level))
            .collect();
        let (pairs, monotone) = lcs(&ka, &kb, self.max_work);
        for &(i, j) in &pairs {
            let (p, q) = (olds[i as usize], news[j as usize]);
            if self.a.open(p) && self.b.open(q) && self.compatible(p, q) {
                self.pair_compat(p, q);
            }
        }
        if level == Level::Own {
            self.in_gaps(olds, news, &pairs, monotone, Level::Class);
        }
    }

    /// Subtrees whose hash occurs once among the open nodes of each side.
    fn anchors(&mut self) {
        let mut seen: FastMap<u64, Seen> = FastMap::default();
        for i in 1..self.a.len() {
            if self.a.open(i) {
                let s = seen.entry(self.a.key[i as usize]).or_default();
                s.a_count += 1;
                s.a = i;
            }
        }
        for j in 1..self.b.len() {
            if self.b.open(j)
                && let Some(s) = seen.get_mut(&self.b.key[j as usize])
            {
                s.b_count += 1;
                s.b = j;
            }
        }
        // Breadth-first, so the largest subtree of a nest is paired first and claims the rest.
        for j in 1..self.b.len() {
            if !self.b.free(j) {
                continue;
            }
            if let Some(s) = seen.get(&self.b.key[j as usize]) {
                let i = s.a;
                if s.a_count == 1 && s.b_count == 1 && self.a.free(i) && self.same_hash(i, j) {
                    self.pair_exact(i, j);
                }
            }
        }
    }

    /// Elements whose `id` occurs once among the open elements of each side.
    fn ids(&mut self) {
        let mut seen: FastMap<&'a str, Seen> = FastMap::default();
        for i in 1..self.a.len() {
            if let Some(id) = self
                .id_attr_a(i)
                .filter(|v| !v.is_empty() && self.a.open(i))
            {
                let s = seen.entry(id).or_default();
                s.a_count += 1;
                s.a = i;
            }
        }
        for j in 1..self.b.len() {
            if let Some(id) = self
                .id_attr_b(j)
                .filter(|v| !v.is_empty() && self.b.open(j))
                && let Some(s) = seen.get_mut(id)
            {
                s.b_count += 1;
                s.b = j;
            }
        }
        for j in 1..self.b.len() {
            let Some(id) = self.id_attr_b(j) else {
                continue;
            };
            if let Some(&s) = seen.get(id) {
                let i = s.a;
                if s.a_count == 1
                    && s.b_count == 1
                    && s.b == j
                    && self.a.open(i)
                    && self.b.open(j)
                    && self.compatible(i, j)
                {
                    self.pair_compat(i, j);
                }
            }
        }
    }

    /// Bottom-up: an open B node is paired with an open, compatible A node when most of its
    /// matched children come from that node and most of that node's matched children went to
    /// it (a moved subtree that also changed inside, an element whose attributes changed
    /// around kept content). Whitespace texts do not vote.
    fn containers(&mut self) {
        // How many children of each A node are matched, kept current as pairs are made here.
        let mut matched_kids = vec![0u32; self.a.ids.len()];
        for i in 1..self.a.len() {
            if self.a.partner(i) != NONE {
                matched_kids[self.a.parent(i) as usize] += 1;
            }
        }
        let mut votes: Vec<u32> = Vec::new();
        for j in (1..self.b.len()).rev() {
            if !self.b.open(j) || self.b.count[j as usize] == 0 {
                continue;
            }
            votes.clear();
            for k in self.b.kids(j) {
                let p = self.b.partner(k);
                if p != NONE && !is_blank(self.kind_b(k)) {
                    votes.push(self.a.parent(p));
                }
            }
            if votes.is_empty() {
                continue;
            }
            votes.sort_unstable();
            let (mut best, mut best_n, mut run) = (NONE, 0usize, 0usize);
            for (n, &v) in votes.iter().enumerate() {
                run = if n > 0 && votes[n - 1] == v {
                    run + 1
                } else {
                    1
                };
                if run > best_n {
                    best = v;
                    best_n = run;
                }
            }
            if best != NONE
                && 2 * best_n > votes.len()
                && 2 * best_n > matched_kids[best as usize] as usize
                && self.a.open(best)
                && self.compatible(best, j)
            {
                self.pair_compat(best, j);
                let up = self.a.parent(best);
                if up != NONE {
                    matched_kids[up as usize] += 1;
                }
            }
        }
    }

    /// Extends pairs along sibling lists: a free B node right after (before) a matched sibling
    /// is paired exactly with the A node right after (before) that sibling's counterpart, when
    /// that node is free and equal. Content that moved keeps the formatting texts between its
    /// parts, so the whole run moves with consecutive ids instead of each blank text being
    /// removed and another one, from wherever the later passes find it, moved in its place.
    fn neighbours(&mut self) {
        for y in 0..self.b.len() {
            let kids = self.b.kids(y);
            if kids.len() < 3 {
                continue;
            }
            // The ends of a list are left to the alignment of step 5, which pairs them first.
            let inner = kids.start + 1..kids.end - 1;
            for j in inner.clone() {
                let p = self.b.partner(j - 1);
                if p != NONE && self.b.free(j) {
                    self.extend(p + 1, p, j);
                }
            }
            for j in inner.rev() {
                let p = self.b.partner(j + 1);
                if p != NONE && self.b.free(j) && p > 0 {
                    self.extend(p - 1, p, j);
                }
            }
        }
    }

    /// Pairs `i`, a sibling of the matched A node `p`, exactly with the free B node `j` when
    /// `i` is an inner, free child equal to `j`.
    fn extend(&mut self, i: u32, p: u32, j: u32) {
        let ar = self.a.kids(self.a.parent(p));
        if ar.start < i && i + 1 < ar.end && self.a.free(i) && self.same_hash(i, j) {
            self.pair_exact(i, j);
        }
    }

    /// Open B subtrees equal to a free A subtree (one that would be removed) reuse it.
    fn leftovers(&mut self) {
        let mut pool: FastMap<u64, Vec<u32>> = FastMap::default();
        for i in (1..self.a.len()).rev() {
            if self.a.free(i) {
                pool.entry(self.a.key[i as usize]).or_default().push(i);
            }
        }
        if pool.is_empty() {
            return;
        }
        for j in 1..self.b.len() {
            if !self.b.free(j) {
                continue;
            }
            let Some(cands) = pool.get_mut(&self.b.key[j as usize]) else {
                continue;
            };
            let here = self.b.partner(self.b.parent(j));
            let mut pick = None;
            // Prefer a candidate under the counterpart of the new parent: no move needed.
            for (n, &i) in cands.iter().enumerate().rev().take(8) {
                if here != NONE && self.a.parent(i) == here && self.a.free(i) {
                    pick = Some(n);
                    break;
                }
            }
            let pick = match pick {
                Some(n) => Some(cands.swap_remove(n)),
                None => loop {
                    match cands.pop() {
                        Some(i) if self.a.free(i) => break Some(i),
                        Some(_) => continue,
                        None => break None,
                    }
                },
            };
            if let Some(i) = pick
                && self.same_hash(i, j)
            {
                self.pair_exact(i, j);
            }
        }
    }
}

/// Whether the node is a text of whitespace only (formatting between elements).
fn is_blank(kind: Option<&NodeKind>) -> bool {
    matches!(kind, Some(NodeKind::Text(t)) if t.bytes().all(|b| b.is_ascii_whitespace()))
}

/// Whether no attribute name repeats (else updating in place could not reproduce the list).
fn distinct_names(attrs: &[(Name, String)]) -> bool {
    match attrs.len() {
        0 | 1 => true,
        n if n <= 16 => attrs
            .iter()
            .enumerate()
            .all(|(k, (a, _))| attrs[k + 1..].iter().all(|(b, _)| a != b)),
        _ => {
            let mut names: Vec<&str> = attrs.iter().map(|(n, _)| &**n).collect();
            names.sort_unstable();
            names.windows(2).all(|w| w[0] != w[1])
        }
    }
}

fn level_key(kind: Option<&NodeKind>, level: Level) -> u64 {
    let mut h = Mix::default();
    match kind {
        None => 0u8.hash(&mut h),
        Some(NodeKind::Document) => 1u8.hash(&mut h),
        Some(NodeKind::Element(e)) => {
            2u8.hash(&mut h);
            e.ns.hash(&mut h);
            e.name.hash(&mut h);
            if level == Level::Own {
                e.attrs.hash(&mut h);
            }
        }
        Some(NodeKind::Text(t)) => {
            3u8.hash(&mut h);
            if level == Level::Own {
                t.hash(&mut h);
            }
        }
        Some(NodeKind::Comment(t)) => {
            4u8.hash(&mut h);
            if level == Level::Own {
                t.hash(&mut h);
            }
        }
        Some(NodeKind::Doctype {
            name,
            public_id,
            system_id,
        }) => {
            5u8.hash(&mut h);
            (name, public_id, system_id).hash(&mut h);
        }
    }
    h.finish()
}

/// Pairs of equal keys of `a` and `b` (as index pairs, in `b` order) and whether they are
/// monotone in `a` too. Equal ends are paired directly; between them, a Myers alignment when
/// the product of the lengths is at most `max_work`, else each element of `b` takes the
/// first unused equal element of `a`; nothing when the two share no key.
fn lcs<K: Hash + Eq + Copy>(a: &[K], b: &[K], max_work: usize) -> (Vec<(u32, u32)>, bool) {
    let mut pairs = Vec::new();
    let pre = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suf = a[pre..]
        .iter()
        .rev()
        .zip(b[pre..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    pairs.extend((0..pre as u32).map(|i| (i, i)));
    let (ma, mb) = (&a[pre..a.len() - suf], &b[pre..b.len() - suf]);
    let mut monotone = true;
    if !ma.is_empty() && !mb.is_empty() && share_a_key(ma, mb) {
        let off = pre as u32;
        if ma.len().saturating_mul(mb.len()) <= max_work {
            let mut hook = Equal { pairs, off };
            // The hook never fails.
            let _ = myers::diff(&mut hook, ma, 0..ma.len(), mb, 0..mb.len());
            pairs = hook.pairs;
        } else {
            let mut at: FastMap<K, Vec<u32>> = FastMap::default();
            for (i, k) in ma.iter().enumerate().rev() {
                at.entry(*k).or_default().push(i as u32 + off);
            }
            let start = pairs.len();
            for (j, k) in mb.iter().enumerate() {
                if let Some(i) = at.get_mut(k).and_then(Vec::pop) {
                    pairs.push((i, j as u32 + off));
                }
            }
            monotone = pairs[start..].windows(2).all(|w| w[0].0 < w[1].0);
        }
    }
    let (ea, eb) = ((a.len() - suf) as u32, (b.len() - suf) as u32);
    pairs.extend((0..suf as u32).map(|k| (ea + k, eb + k)));
    (pairs, monotone)
}

/// Collects the equal runs a Myers alignment reports.
struct Equal {
    pairs: Vec<(u32, u32)>,
    off: u32,
}

impl DiffHook for Equal {
    type Error = std::convert::Infallible;

    fn equal(&mut self, old: usize, new: usize, len: usize) -> Result<(), Self::Error> {
        let (old, new) = (old as u32 + self.off, new as u32 + self.off);
        self.pairs
            .extend((0..len as u32).map(|k| (old + k, new + k)));
        Ok(())
    }
}

/// Whether some key of `a` is also in `b`.
fn share_a_key<K: Hash + Eq + Copy>(a: &[K], b: &[K]) -> bool {
    if a.len().saturating_mul(b.len()) <= 256 {
        return a.iter().any(|x| b.contains(x));
    }
    let set: FastMap<K, ()> = a.iter().map(|&k| (k, ())).collect();
    b.iter().any(|k| set.contains_key(k))
}

/// A small multiplicative hasher for the diff's maps (keys are hash prefixes, node indices
/// and short strings; no untrusted party picks them to collide more than a page already can).
#[derive(Debug, Default, Clone, Copy)]
struct Mix(u64);

impl Mix {
    fn add(&mut self, w: u64) {
        self.0 = (self.0 ^ w)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(23);
    }
}

impl Hasher for Mix {
    fn finish(&self) -> u64 {
        let x = self.0.wrapping_mul(0xd6e8_feb8_6659_fd93);
        x ^ (x >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
    }
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }
    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Mix>>;

// ---------------------------------------------------------------------------------------------
// Edit script.

struct Script<'c, 't> {
    c: &'c mut Consumer,
    target: &'t Dom,
    a: Side,
    b: Side,
    stats: &'c mut DiffStats,
}

impl Script<'_, '_> {
    fn run(mut self) -> Result<(), EngineError> {
        let (na, nb) = (self.a.len(), self.b.len());
        // Unmatched old subtrees that hold nothing matched go first (keeps the tree small).
        for i in 1..na {
            if self.a.free(i) && self.a.partner(self.a.parent(i)) != NONE {
                self.c.remove(self.a.ids[i as usize])?;
                self.stats.removes += 1;
            }
        }
        // The consumer-side id of each placed B node.
        let mut a_of: Vec<NodeId> = vec![DOCUMENT_ID; nb as usize];
        let mut lis = Lis::default();
        for p in 0..nb {
            if self.b.has(p, CLAIMED | EXACT) || self.b.count[p as usize] == 0 {
                continue;
            }
            let xp = self.b.partner(p);
            let px = if xp != NONE {
                self.a.ids[xp as usize]
            } else if self.b.has(p, CREATED) {
                a_of[p as usize]
            } else {
                // Unreachable: every B node is matched or created before its children are
                // placed. The final hash check repairs the tree should it ever happen.
                continue;
            };
            let kids = self.b.kids(p);
            if xp != NONE {
                // Children already under `xp` that keep their relative order stay put.
                lis.items.clear();
                lis.items.extend(
                    kids.clone()
                        .map(|j| self.b.partner(j))
                        .filter(|&q| q != NONE && self.a.parent(q) == xp),
                );
                lis.mark(&mut self.a);
            }
            let mut prev: NodeId = 0;
            let mut j = kids.start;
            while j < kids.end {
                if self.b.has(j, CREATED) {
                    prev = a_of[j as usize];
                    j += 1;
                    continue;
                }
                let q = self.b.partner(j);
                if q != NONE {
                    let x = self.a.ids[q as usize];
                    let stays = xp != NONE && self.a.parent(q) == xp && self.a.has(q, KEEP);
                    if !stays {
                        self.c.move_node(x, px, prev)?;
                        self.stats.moves += 1;
                    }
                    if self.b.has(j, EXACT) {
                        self.stats.exact += 1;
                    } else {
                        self.stats.updated += 1;
                        sync_node(self.c, x, self.target, self.b.ids[j as usize])?;
                    }
                    a_of[j as usize] = x;
                    prev = x;
                    j += 1;
                } else {
                    let start = j;
                    while j < kids.end && self.b.partner(j) == NONE && !self.b.has(j, CREATED) {
                        j += 1;
                    }
                    prev = self.insert_run(px, prev, start..j, &mut a_of)?;
                }
            }
        }
        // Unmatched old nodes that held matched ones: those have moved out by now.
        for i in 1..na {
            if self.a.open(i) && self.a.has(i, BUSY) && self.a.partner(self.a.parent(i)) != NONE {
                self.c.remove(self.a.ids[i as usize])?;
                self.stats.removes += 1;
            }
        }
        Ok(())
    }

    /// Inserts the unmatched siblings `run` (with their unmatched descendants) under `px`
    /// after `prev` in one operation; returns the id of the last one.
    fn insert_run(
        &mut self,
        px: NodeId,
        prev: NodeId,
        run: Range<u32>,
        a_of: &mut [NodeId],
    ) -> Result<NodeId, EngineError> {
        let mut nodes = Vec::new();
        let mut order = Vec::new();
        let mut stack = Vec::new();
        for top in run.clone() {
            stack.push(top);
            while let Some(n) = stack.pop() {
                order.push(n);
                let kind = match self.target.node(self.b.ids[n as usize]) {
                    Some(node) => node.kind.clone(),
                    None => NodeKind::Text(String::new()),
                };
                let kept = self
                    .b
                    .kids(n)
                    .filter(|&k| self.b.partner(k) == NONE)
                    .count();
                nodes.push((kind, kept as u32));
                stack.extend(self.b.kids(n).rev().filter(|&k| self.b.partner(k) == NONE));
            }
        }
        let count = nodes.len();
        let first = self.c.insert(px, prev, nodes)?;
        self.stats.inserts += 1;
        self.stats.inserted_nodes += count;
        // The consumer numbers new nodes in preorder from `first`; check it, else look the
        // new nodes up in the tree.
        let dom = self.c.dom();
        let mut sequential = true;
        for (k, &n) in order.iter().enumerate() {
            let id = first + k as NodeId;
            let want_parent = if run.contains(&n) {
                px
            } else {
                a_of[self.b.parent(n) as usize]
            };
            if dom.parent(id) != Some(want_parent) {
                sequential = false;
                break;
            }
            a_of[n as usize] = id;
        }
        if !sequential {
            // `order` lists each top node's subtree in preorder, one after the other, as the
            // inserted siblings stand after `prev`.
            let siblings = dom.children(px);
            let at = siblings.iter().position(|&s| s == first).unwrap_or(0);
            let mut t = 0;
            let mut placed = None;
            for &n in &order {
                if run.contains(&n) {
                    placed = siblings.get(at + t).map(|&root| dom.preorder(root));
                    t += 1;
                }
                if let Some(id) = placed.as_mut().and_then(Iterator::next) {
                    a_of[n as usize] = id;
                }
            }
        }
        for &n in &order {
            self.b.flags[n as usize] |= CREATED;
        }
        Ok(a_of[(run.end - 1) as usize])
    }
}

/// Longest increasing subsequence of old sibling ranks, marking its members [`KEEP`].
#[derive(Debug, Default)]
struct Lis {
    items: Vec<u32>,
    tails: Vec<u32>,
    back: Vec<u32>,
}

impl Lis {
    /// Marks the longest increasing run of `items` (A indices) [`KEEP`].
    fn mark(&mut self, a: &mut Side) {
        self.tails.clear();
        self.back.clear();
        // Indices are breadth-first and siblings contiguous: the index orders by rank.
        for (n, &q) in self.items.iter().enumerate() {
            let at = self.tails.partition_point(|&t| self.items[t as usize] < q);
            self.back
                .push(if at > 0 { self.tails[at - 1] } else { NONE });
            if at == self.tails.len() {
                self.tails.push(n as u32);
            } else {
                self.tails[at] = n as u32;
            }
        }
        let mut n = self.tails.last().copied().unwrap_or(NONE);
        while n != NONE {
            a.flags[self.items[n as usize] as usize] |= KEEP;
            n = self.back[n as usize];
        }
    }
}

/// Updates the attributes or text of `node` to those of `target`'s node `want`.
fn sync_node(
    c: &mut Consumer,
    node: NodeId,
    target: &Dom,
    want: NodeId,
) -> Result<(), EngineError> {
    let Some(wn) = target.node(want) else {
        return Ok(());
    };
    match &wn.kind {
        NodeKind::Text(t) | NodeKind::Comment(t) => c.set_text(node, t),
        NodeKind::Element(want) => {
            let have = match c.dom().node(node).and_then(|n| n.element()) {
                Some(e) if e.attrs == want.attrs => return Ok(()),
                Some(e) => e.attrs.clone(),
                None => return Ok(()),
            };
            // `set_attr` appends a new name, so the kept names must be a prefix of the wanted
            // list that already appears in that order; the others are removed and appended.
            let at: FastMap<&str, usize> = have
                .iter()
                .enumerate()
                .map(|(k, (n, _))| (&**n, k))
                .collect();
            let mut keep = 0;
            let mut from = 0;
            for (name, _) in &want.attrs {
                match at.get(&**name) {
                    Some(&p) if p >= from => {
                        from = p + 1;
                        keep += 1;
                    }
                    _ => break,
                }
            }
            let kept: FastMap<&str, ()> =
                want.attrs[..keep].iter().map(|(n, _)| (&**n, ())).collect();
            for (name, _) in &have {
                if !kept.contains_key(&**name) {
                    c.remove_attr(node, name)?;
                }
            }
            for (k, (name, value)) in want.attrs.iter().enumerate() {
                let same = k < keep && at.get(&**name).is_some_and(|&p| have[p].1 == *value);
                if !same {
                    c.set_attr(node, name, value)?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Oracles for the `diff_apply` fuzz target and the property tests (STYLE.md 10): the fuzz
/// target is a shim into [`fuzzing::diff_apply`], and `engine/tests/diff.rs` replays the
/// crashers checked in under `fuzz/regressions/diff_apply/` through the same function.
///
/// Inputs are decoded by a small byte reader rather than `arbitrary`, so the crashers replay
/// in a plain `cargo test` without features. Each function panics when the property it checks
/// is broken, and only then.
#[doc(hidden)]
pub mod fuzzing {
    use tandem_protocol::{DOCUMENT_ID, Limits, Message, NodeId, Ns, frame};

    use super::{DiffStats, MYERS_MAX_WORK, update_with};
    use crate::Name;
    use crate::dom::{Dom, Element, NodeKind};
    use crate::{Agent, Consumer, to_html};

    const TAGS: &[&str] = &["div", "p", "span", "ul", "li", "a", "b", "section"];
    const SVG_TAGS: &[&str] = &["svg", "g", "path"];
    const NAMES: &[&str] = &["id", "class", "href", "title", "data-x"];
    const VALUES: &[&str] = &["a", "b", "c", "", "x y", "item"];
    const TEXTS: &[&str] = &["", " ", "\n  ", "hello", "world", "a", "hello world", "é"];

    /// Reads fuzz input: bytes, then zeros once it runs out.
    #[derive(Debug)]
    pub struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        /// A reader over `data`.
        pub fn new(data: &'a [u8]) -> Self {
            Reader(data)
        }

        /// Whether input is left.
        pub fn is_empty(&self) -> bool {
            self.0.is_empty()
        }

        /// The next byte (0 past the end).
        pub fn byte(&mut self) -> u8 {
            match self.0.split_first() {
                Some((&b, rest)) => {
                    self.0 = rest;
                    b
                }
                None => 0,
            }
        }

        /// The next two bytes as a number.
        pub fn u16(&mut self) -> u16 {
            u16::from(self.byte()) | u16::from(self.byte()) << 8
        }
    }

    /// One change to a tree. Nodes are named by their rank in preorder (modulo the node count)
    /// so that any input names some node; a change that does not apply is skipped.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Operation {
        /// Set attribute `NAMES[name]` to `VALUES[value]`.
        SetAttr {
            /// Element.
            node: u16,
            /// Name index.
            name: u8,
            /// Value index.
            value: u8,
        },
        /// Remove attribute `NAMES[name]`.
        RemoveAttr {
            /// Element.
            node: u16,
            /// Name index.
            name: u8,
        },
        /// Replace a text or comment with `TEXTS[text]`.
        SetText {
            /// Text or comment.
            node: u16,
            /// Text index.
            text: u8,
        },
        /// Insert a new node (element, text or comment by `what`) as child `at` of `parent`.
        Insert {
            /// Parent.
            parent: u16,
            /// Position among the children (modulo their count + 1).
            at: u16,
            /// What to insert.
            what: u8,
        },
        /// Remove a subtree.
        Remove {
            /// Root.
            node: u16,
        },
        /// Move a subtree to child `at` of `parent`.
        Move {
            /// Root.
            node: u16,
            /// New parent.
            parent: u16,
            /// Position.
            at: u16,
        },
        /// Copy a subtree to child `at` of `parent` (equal hashes in two places).
        Copy {
            /// Root.
            node: u16,
            /// Parent of the copy.
            parent: u16,
            /// Position.
            at: u16,
        },
        /// Put a node inside a new element that takes its place.
        Wrap {
            /// The node.
            node: u16,
            /// Tag index of the wrapper.
            tag: u8,
        },
        /// Replace an element by its children.
        Unwrap {
            /// The element.
            node: u16,
        },
        /// Give an element another tag, keeping attributes and children.
        Rename {
            /// The element.
            node: u16,
            /// Tag index.
            tag: u8,
        },
    }

    /// The child of `parent` that a fuzz input's `at` names as the previous sibling of a new
    /// place (0: first), `skip` (the node being moved) left out. Shared with the masking oracle.
    pub(crate) fn slot(dom: &Dom, parent: NodeId, at: u16, skip: NodeId) -> NodeId {
        let kids: Vec<NodeId> = dom
            .children(parent)
            .iter()
            .copied()
            .filter(|&k| k != skip)
            .collect();
        match usize::from(at) % (kids.len() + 1) {
            0 => 0,
            n => kids[n - 1],
        }
    }

    impl Operation {
        /// Decodes one operation.
        pub fn read(r: &mut Reader<'_>) -> Operation {
            let (kind, node) = (r.byte() % 10, r.u16());
            match kind {
                0 => Operation::SetAttr {
                    node,
                    name: r.byte(),
                    value: r.byte(),
                },
                1 => Operation::RemoveAttr {
                    node,
                    name: r.byte(),
                },
                2 => Operation::SetText {
                    node,
                    text: r.byte(),
                },
                3 => Operation::Insert {
                    parent: node,
                    at: r.u16(),
                    what: r.byte(),
                },
                4 => Operation::Remove { node },
                5 => Operation::Move {
                    node,
                    parent: r.u16(),
                    at: r.u16(),
                },
                6 => Operation::Copy {
                    node,
                    parent: r.u16(),
                    at: r.u16(),
                },
                7 => Operation::Wrap {
                    node,
                    tag: r.byte(),
                },
                8 => Operation::Unwrap { node },
                _ => Operation::Rename {
                    node,
                    tag: r.byte(),
                },
            }
        }

        /// Applies the operation to `dom`; returns whether it applied.
        pub fn apply(self, dom: &mut Dom) -> bool {
            let nodes: Vec<NodeId> = dom.preorder(DOCUMENT_ID).collect();
            let pick = |k: u16| nodes[usize::from(k) % nodes.len()];
            match self {
                Operation::SetAttr { node, name, value } => dom
                    .set_attr(pick(node), pick_str(NAMES, name), pick_str(VALUES, value))
                    .is_ok(),
                Operation::RemoveAttr { node, name } => {
                    dom.remove_attr(pick(node), pick_str(NAMES, name)).is_ok()
                }
                Operation::SetText { node, text } => {
                    dom.set_text(pick(node), pick_str(TEXTS, text)).is_ok()
                }
                Operation::Insert { parent, at, what } => {
                    let parent = pick(parent);
                    let prev = slot(dom, parent, at, 0);
                    let kind = new_kind(what);
                    match dom.create(kind) {
                        Ok(id) => dom.attach(id, parent, prev).is_ok() || dom.remove(id).is_err(),
                        Err(_) => false,
                    }
                }
                Operation::Remove { node } => {
                    let node = pick(node);
                    node != DOCUMENT_ID && dom.remove(node).is_ok()
                }
                Operation::Move { node, parent, at } => {
                    let (node, parent) = (pick(node), pick(parent));
                    let prev = slot(dom, parent, at, node);
                    dom.move_node(node, parent, prev).is_ok()
                }
                Operation::Copy { node, parent, at } => {
                    let (node, parent) = (pick(node), pick(parent));
                    node != DOCUMENT_ID && copy(dom, node, parent, slot(dom, parent, at, 0))
                }
                Operation::Wrap { node, tag } => {
                    let node = pick(node);
                    wrap(dom, node, element(tag, Vec::new()))
                }
                Operation::Unwrap { node } => unwrap(dom, pick(node)),
                Operation::Rename { node, tag } => rename(dom, pick(node), tag),
            }
        }
    }

    fn pick_str(list: &'static [&'static str], k: u8) -> &'static str {
        list[usize::from(k) % list.len()]
    }

    fn element(tag: u8, attrs: Vec<(Name, String)>) -> NodeKind {
        let k = usize::from(tag) % (TAGS.len() + SVG_TAGS.len());
        let (ns, name) = match TAGS.get(k) {
            Some(t) => (Ns::Html, *t),
            None => (Ns::Svg, SVG_TAGS[k - TAGS.len()]),
        };
        NodeKind::Element(Element {
            ns,
            name: name.into(),
            attrs,
        })
    }

    fn new_kind(what: u8) -> NodeKind {
        match what % 8 {
            0..=3 => {
                let mut attrs = Vec::new();
                if what & 0x10 != 0 {
                    attrs.push(("id".into(), pick_str(VALUES, what >> 5).to_owned()));
                }
                if what & 0x08 != 0 {
                    attrs.push(("class".into(), pick_str(VALUES, what >> 4).to_owned()));
                }
                element(what >> 2, attrs)
            }
            4..=6 => NodeKind::Text(pick_str(TEXTS, what >> 3).into()),
            _ => NodeKind::Comment(pick_str(TEXTS, what >> 3).into()),
        }
    }

    fn copy(dom: &mut Dom, node: NodeId, parent: NodeId, prev: NodeId) -> bool {
        // (source, parent of its copy) in preorder, listed before anything is created, so
        // copying a node into its own subtree terminates.
        let mut todo: Vec<(NodeId, Option<usize>)> = Vec::new();
        let mut stack = vec![(node, None)];
        while let Some((n, up)) = stack.pop() {
            let at = todo.len();
            todo.push((n, up));
            stack.extend(dom.children(n).iter().rev().map(|&k| (k, Some(at))));
        }
        let mut made: Vec<NodeId> = Vec::with_capacity(todo.len());
        for (n, up) in todo {
            let Some(kind) = dom.node(n).map(|x| x.kind.clone()) else {
                return false;
            };
            let Ok(id) = dom.create(kind) else {
                return false;
            };
            let attached = match up {
                None => dom.attach(id, parent, prev),
                Some(k) => dom.append(made[k], id),
            };
            if attached.is_err() {
                let _ = dom.remove(id);
                return false;
            }
            made.push(id);
        }
        true
    }

    fn wrap(dom: &mut Dom, node: NodeId, kind: NodeKind) -> bool {
        let Some(parent) = dom.parent(node) else {
            return false;
        };
        let kids = dom.children(parent);
        let prev = match kids.iter().position(|&k| k == node) {
            Some(0) | None => 0,
            Some(n) => kids[n - 1],
        };
        let Ok(w) = dom.create(kind) else {
            return false;
        };
        if dom.attach(w, parent, prev).is_err() {
            let _ = dom.remove(w);
            return false;
        }
        dom.move_node(node, w, 0).is_ok()
    }

    fn unwrap(dom: &mut Dom, node: NodeId) -> bool {
        if dom.node(node).and_then(|n| n.element()).is_none() {
            return false;
        }
        let Some(parent) = dom.parent(node) else {
            return false;
        };
        let mut prev = node;
        for k in dom.children(node).to_vec() {
            if dom.move_node(k, parent, prev).is_err() {
                return false;
            }
            prev = k;
        }
        dom.remove(node).is_ok()
    }

    fn rename(dom: &mut Dom, node: NodeId, tag: u8) -> bool {
        let Some(attrs) = dom
            .node(node)
            .and_then(|n| n.element())
            .map(|e| e.attrs.clone())
        else {
            return false;
        };
        if !wrap(dom, node, element(tag, attrs)) {
            return false;
        }
        unwrap(dom, node)
    }

    /// A tree from `r`: a document with an `html` element, then `steps` insertions.
    pub fn tree(r: &mut Reader<'_>, steps: usize) -> Dom {
        let limits = Limits::DEFAULT;
        let mut dom = Dom::new(limits);
        if let Ok(html) = dom.create(element(0, Vec::new())) {
            let _ = dom.append(DOCUMENT_ID, html);
        }
        for _ in 0..steps {
            if r.is_empty() {
                break;
            }
            let op = Operation::Insert {
                parent: r.u16(),
                at: r.u16(),
                what: r.byte(),
            };
            op.apply(&mut dom);
        }
        dom
    }

    /// The oracle: `from` diffed to `to` on a consumer whose agent holds `from` converges on
    /// both sides, by hash and by exported HTML, without the diff's fallback.
    pub fn check_pair(from: &Dom, to: &mut Dom) -> (DiffStats, usize) {
        check_pair_with(from, to, MYERS_MAX_WORK)
    }

    /// [`check_pair`] with another threshold for the Myers alignment (`max_work`, see
    /// [`MYERS_MAX_WORK`]): a small one sends small sibling lists through the keyed pairing.
    pub fn check_pair_with(from: &Dom, to: &mut Dom, max_work: usize) -> (DiffStats, usize) {
        let limits = Limits::DEFAULT;
        let mut consumer = Consumer::new(from.clone(), "u", limits);
        let mut agent = Agent::new(limits);
        pump(&mut consumer, &mut agent);
        let stats = update_with(&mut consumer, to, max_work).expect("diff applies");
        assert!(!stats.fallback, "diff fell back: {stats:?}");
        let want = to.root_hash();
        assert_eq!(consumer.tree_hash(), want, "consumer reached the target");
        consumer.flush();
        let bytes = pump(&mut consumer, &mut agent);
        assert_eq!(consumer.fallbacks(), 0, "consumer patch failed its check");
        assert_eq!(agent.tree_hash(), Some(want), "agent reached the target");
        assert_eq!(agent.to_html(), to_html(to), "agent exports the target");
        (stats, bytes)
    }

    /// Sends what the consumer queued through frames to the agent and the replies back;
    /// returns the bytes of the `PATCH` frames.
    pub fn pump(consumer: &mut Consumer, agent: &mut Agent) -> usize {
        let limits = Limits::DEFAULT;
        let mut patch_bytes = 0;
        while let Some(msg) = consumer.poll_message() {
            let wire = frame::to_frame(&msg, &limits).expect("frame encodes");
            if matches!(msg, Message::Patch(_)) {
                patch_bytes += wire.len();
            }
            let back = frame::decode_exact(&wire, &limits).expect("frame decodes");
            agent.handle_message(back).expect("agent applies");
        }
        while let Some(reply) = agent.poll_message() {
            consumer
                .handle_message(&reply)
                .expect("consumer takes the reply");
        }
        patch_bytes
    }

    /// The fuzz target: a tree, then either a copy changed by a sequence of [`Operation`]s
    /// (bit 0 of the first byte clear) or a second, unrelated tree (set), checked with
    /// [`check_pair_with`]; bit 1 set lowers the Myers threshold to 4 so that the keyed
    /// pairing runs too.
    pub fn diff_apply(data: &[u8]) {
        let mut r = Reader::new(data);
        let mode = r.byte();
        let steps = usize::from(r.byte() % 64);
        let from = tree(&mut r, steps);
        let mut to = if mode & 1 == 0 {
            let mut to = from.clone();
            for _ in 0..64 {
                if r.is_empty() {
                    break;
                }
                Operation::read(&mut r).apply(&mut to);
            }
            to
        } else {
            let steps = usize::from(r.byte() % 64);
            tree(&mut r, steps)
        };
        let max_work = if mode & 2 == 0 { MYERS_MAX_WORK } else { 4 };
        check_pair_with(&from, &mut to, max_work);
    }
}
