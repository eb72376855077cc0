//! The canonical node encoding that Merkle hashes are taken over (spec §6.3).
//!
//! Only the document and elements have a hash: blake3 over their header — `0x00` for the
//! document; `0x01`, the namespace byte, the name, the attribute count and each attribute's name
//! and value for an element — then the varint child count and one entry per child in order:
//! `0x01` and the 32-byte hash of an element child, or the canonical bytes of a leaf child
//! (text `0x02`, comment `0x03`, doctype `0x04`, then their strings). Strings are a varint length
//! and UTF-8 bytes. Ids never enter the hash.

use crate::dom::NodeKind;

/// Appends `v` as an unsigned LEB128 varint (the wire's varint, spec §4.2).
#[inline]
pub fn write_varint(out: &mut Vec<u8>, v: u64) {
    tandem_protocol::varint::write_u64(out, v);
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    write_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Appends the node's own part of a hash input to `out`: the header of a document or element
/// (everything but the children), the whole canonical bytes of a leaf.
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

/// Appends the entry of a child to its parent's hash input: a leaf's canonical bytes, or `0x01`
/// and `hash` for an element (spec §6.3).
#[inline]
pub fn encode_child(kind: &NodeKind, hash: &[u8; 32], out: &mut Vec<u8>) {
    if kind.is_leaf() {
        encode_node(kind, out);
    } else {
        out.push(0x01);
        out.extend_from_slice(hash);
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

#[cfg(test)]
mod tests {
    use tandem_protocol::{DOCUMENT_ID, Limits, Ns};

    use crate::dom::{Dom, Element, NodeKind};

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The worked example of spec §6.3, and an empty document.
    #[test]
    fn the_spec_example() {
        let mut dom = Dom::new(Limits::DEFAULT);
        assert_eq!(
            hex(&dom.root_hash()[..16]),
            "1ad48f49627079d806b802c74f40c39d"
        );
        let doctype = dom
            .create(NodeKind::Doctype {
                name: "html".into(),
                public_id: String::new(),
                system_id: String::new(),
            })
            .unwrap();
        dom.append(DOCUMENT_ID, doctype).unwrap();
        let p = dom
            .create(NodeKind::Element(Element {
                ns: Ns::Html,
                name: "p".into(),
                attrs: vec![("class".into(), "note".into())],
            }))
            .unwrap();
        dom.append(DOCUMENT_ID, p).unwrap();
        let text = dom.create(NodeKind::Text("hi".into())).unwrap();
        dom.append(p, text).unwrap();
        assert_eq!(
            hex(&dom.root_hash()),
            "bbbba0eb46d3c1d448429603ebf7ab1ddd0b981d72b43dafb0a19a4013c848e8"
        );
        assert_eq!(
            hex(&dom.hash_of(p).unwrap()),
            "bfda0eaf91af4debdf75c1008256706c4994499de6f3e571183d1191d106deb7"
        );
        assert_eq!(dom.hash_of(text), None, "leaves have no hash of their own");
        assert_eq!(dom.cached_hash(doctype), None);
        // A text change dirties its parent: the root hash follows it and comes back.
        let before = dom.root_hash();
        dom.set_text(text, "ho").unwrap();
        assert_ne!(dom.root_hash(), before);
        dom.set_text(text, "hi").unwrap();
        assert_eq!(dom.root_hash(), before);
    }
}
