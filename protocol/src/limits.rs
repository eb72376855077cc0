//! Protocol limits (spec §8).
//!
//! Every limit is a ceiling a receiver enforces before it allocates or acts. A peer MAY use
//! stricter limits than these defaults; it MUST NOT require a sender to exceed them.

/// The limits a receiver enforces; [`Limits::DEFAULT`] holds the values of spec §8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame body in bytes (`frame.length`).
    pub max_frame_body: u32,
    /// Largest string (text, attribute value, URL, label) in bytes.
    pub max_string: u32,
    /// Most node records in one `SNAPSHOT` part or one `PATCH` insert.
    pub max_nodes_per_frame: u32,
    /// Most nodes a document may hold at any time.
    pub max_nodes: u32,
    /// Node ids are below this (spec §6.1); a consumer starts a new epoch before it runs out.
    pub max_node_id: u32,
    /// Deepest element nesting below the document node.
    pub max_depth: u32,
    /// Most attributes on one element.
    pub max_attributes: u32,
    /// Most operations in one `PATCH`.
    pub max_patch_ops: u32,
    /// Most entries in the per-epoch dynamic string table.
    pub max_dynamic_entries: u32,
    /// Most bytes (sum of entry lengths) in the per-epoch dynamic string table.
    pub max_dynamic_bytes: u32,
    /// Most entries in any other list (addresses in `HAVE`/`WANT`, selected options, edits).
    pub max_list: u32,
}

impl Limits {
    /// The defaults of spec §8.
    pub const DEFAULT: Limits = Limits {
        max_frame_body: 16 * 1024 * 1024,
        max_string: 8 * 1024 * 1024,
        max_nodes_per_frame: 1_000_000,
        max_nodes: 1_000_000,
        max_node_id: 4_194_304,
        max_depth: 512,
        max_attributes: 1024,
        max_patch_ops: 1_000_000,
        max_dynamic_entries: 65_536,
        max_dynamic_bytes: 4 * 1024 * 1024,
        max_list: 65_536,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}
