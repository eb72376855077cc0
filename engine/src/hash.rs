//! The canonical node encoding that Merkle hashes are taken over (spec §6.3).
//!
//! A node's hash is blake3 over: for the document, `0x00`; for an element, `0x01`, the
//! namespace byte, the name, the attribute count and each attribute's name and value; for text
//! `0x02`, comment `0x03`, doctype `0x04` with their strings. Strings are a varint length and
//! UTF-8 bytes. Documents and elements then add the varint child count and the children's
//! 32-byte hashes in order. Ids never enter the hash.

use crate::dom::NodeKind;

/// Appends `v` as an unsigned LEB128 varint.
pub fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    write_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Appends the node's own part of its hash input (everything but the children) to `out`.
pub fn encode_node(kind: &NodeKind, out: &mut Vec<u8>) {
    match kind {
        NodeKind::Document => out.push(0x00),
        NodeKind::Element(e) => {
            out.push(0x01);
            out.push(u32::from(e.ns) as u8);
            write_str(out, &e.name);
            write_varint(out, e.attrs.len() as u64);
            for (n, v) in &e.attrs {
                write_str(out, n);
                write_str(out, v);
            }
        }
        NodeKind::Text(t) => {
            out.push(0x02);
            write_str(out, t);
        }
        NodeKind::Comment(t) => {
            out.push(0x03);
            write_str(out, t);
        }
        NodeKind::Doctype {
            name,
            public_id,
            system_id,
        } => {
            out.push(0x04);
            write_str(out, name);
            write_str(out, public_id);
            write_str(out, system_id);
        }
    }
}

/// The 16-byte prefix of a tree hash that snapshots and acknowledgements carry (spec §6.3).
pub fn short(hash: &[u8; 32]) -> [u8; 16] {
    let mut out = [0; 16];
    out.copy_from_slice(&hash[..16]);
    out
}

/// The 8-byte prefix of a tree hash that patches carry (spec §6.3).
pub fn check(hash: &[u8; 32]) -> [u8; 8] {
    let mut out = [0; 8];
    out.copy_from_slice(&hash[..8]);
    out
}
