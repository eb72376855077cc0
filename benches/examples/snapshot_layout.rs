//! What dominates a compressed snapshot, and which record layout would compress better? A
//! scratch measurement for the snapshot-size target (issue 3): it re-lays the records of each
//! corpus page's snapshot in several ways and compresses each with zstd, without changing the
//! wire format. The layouts:
//!
//! - `frames`: the SNAPSHOT frames as sent today (records interleave structure and strings);
//! - `split`: one structure section (every record with its strings replaced by their kind, index
//!   and length) followed by one section of all string bytes in record order;
//! - `split4`: structure, then texts, then attribute values, then names (same bytes, regrouped);
//! - `columns`: structure, then texts, then attribute values grouped by attribute name (all
//!   `class` values, then all `href` values, …), then names;
//! - `columnar`: like `columns`, but the structure itself is split into seven columns (record
//!   kinds with namespaces, element names, attribute counts, attribute names, attribute value
//!   references, child counts, literal lengths), each contiguous;
//!
//! and prints, per page, the compressed size of each layout (one zstd stream, one flush, the same
//! level) and the share of each section when compressed alone.
//!
//! Run: `cargo run --release -p tandem-benches --example snapshot_layout [-- LEVEL]`; with
//! `DICT=1` every stream starts from the dictionary `dom-v1` (whose record bytes are in the
//! `frames` layout, so the other layouts gain less from it than a re-made dictionary would give).

use std::collections::BTreeMap;

use tandem_engine::{Consumer, parse_html};
use tandem_protocol::message::Snapshot;
use tandem_protocol::{Limits, Message, NodeRecord, Sym, frame, varint};

#[derive(Default)]
struct Sections {
    structure: Vec<u8>,
    /// The structure again, as separate columns: record kinds (with the namespace), element
    /// names, attribute counts, attribute names, attribute value references, child counts,
    /// literal lengths.
    cols: [Vec<u8>; 7],
    /// All string bytes in record order.
    strings: Vec<u8>,
    texts: Vec<u8>,
    values: Vec<u8>,
    names: Vec<u8>,
    /// Attribute values by attribute name, in record order within each.
    columns: BTreeMap<String, Vec<u8>>,
    /// The dynamic table as the decoder would grow it, to name attributes given by reference.
    table: Vec<String>,
    /// Text bytes by the parent element's name (`(ws)` for whitespace-only texts).
    text_by_parent: BTreeMap<String, Vec<u8>>,
    /// Open elements: (name, children still expected).
    stack: Vec<(String, u32)>,
}

#[derive(Clone, Copy)]
enum Class {
    Name,
    Text,
    Value,
}

impl Sections {
    /// Writes a reference into the structure; its literal bytes go to the string sections.
    fn sym(&mut self, s: &Sym, class: Class, column: Option<&str>, col: usize) -> String {
        let (v, text) = match s {
            Sym::Static(i) => (*i << 2, None),
            Sym::Ref(i) => ((*i << 2) | 1, None),
            Sym::New(t) => (2, Some(t)),
            Sym::Lit(t) => (3, Some(t)),
        };
        varint::write_u32(&mut self.structure, v);
        varint::write_u32(&mut self.cols[col], v);
        if let Some(t) = text {
            varint::write_u32(&mut self.cols[6], t.len() as u32);
        }
        let resolved = match s {
            Sym::Static(i) => tandem_protocol::STATIC_TABLE
                .get(*i as usize)
                .map(|s| (*s).to_owned())
                .unwrap_or_default(),
            Sym::Ref(i) => self.table.get(*i as usize).cloned().unwrap_or_default(),
            Sym::New(t) | Sym::Lit(t) => t.clone(),
        };
        if let Some(t) = text {
            varint::write_u32(&mut self.structure, t.len() as u32);
            self.strings.extend_from_slice(t.as_bytes());
            match class {
                Class::Name => self.names.extend_from_slice(t.as_bytes()),
                Class::Text => self.texts.extend_from_slice(t.as_bytes()),
                Class::Value => {
                    self.values.extend_from_slice(t.as_bytes());
                    self.columns
                        .entry(column.unwrap_or("").to_owned())
                        .or_default()
                        .extend_from_slice(t.as_bytes());
                }
            }
            if matches!(s, Sym::New(_)) {
                self.table.push(t.clone());
            }
        }
        resolved
    }

    fn record(&mut self, r: &NodeRecord) {
        while let Some(&(_, 0)) = self.stack.last() {
            self.stack.pop();
        }
        let parent = self
            .stack
            .last()
            .map(|(n, _)| n.clone())
            .unwrap_or_default();
        if let Some(top) = self.stack.last_mut() {
            top.1 -= 1;
        }
        if let NodeRecord::Text { text } | NodeRecord::Comment { text } = r {
            let t = match text {
                Sym::New(t) | Sym::Lit(t) => t.clone(),
                _ => String::new(),
            };
            let key = if matches!(r, NodeRecord::Comment { .. }) {
                "(comment)".to_owned()
            } else if t.trim().is_empty() {
                "(ws)".to_owned()
            } else if ["style", "noscript", "title", "textarea", "template", "svg"]
                .contains(&parent.as_str())
            {
                parent.clone()
            } else {
                "(other)".to_owned()
            };
            self.text_by_parent
                .entry(key)
                .or_default()
                .extend_from_slice(t.as_bytes());
        }
        match r {
            NodeRecord::Element {
                ns,
                name,
                attrs,
                children,
            } => {
                self.structure.push(0);
                varint::write_u32(&mut self.structure, u32::from(*ns));
                self.cols[0].push(4 + u32::from(*ns) as u8);
                let n = self.sym(name, Class::Name, None, 1);
                if *children > 0 {
                    self.stack.push((n, *children));
                }
                varint::write_u32(&mut self.structure, attrs.len() as u32);
                varint::write_u32(&mut self.cols[2], attrs.len() as u32);
                for a in attrs {
                    let n = self.sym(&a.name, Class::Name, None, 3);
                    self.sym(&a.value, Class::Value, Some(&n), 4);
                }
                varint::write_u32(&mut self.structure, *children);
                varint::write_u32(&mut self.cols[5], *children);
            }
            NodeRecord::Text { text } => {
                self.structure.push(1);
                self.cols[0].push(1);
                self.sym(text, Class::Text, None, 4);
            }
            NodeRecord::Comment { text } => {
                self.structure.push(2);
                self.cols[0].push(2);
                self.sym(text, Class::Text, None, 4);
            }
            NodeRecord::Doctype {
                name,
                public_id,
                system_id,
            } => {
                self.structure.push(3);
                self.cols[0].push(3);
                self.sym(name, Class::Name, None, 1);
                self.sym(public_id, Class::Value, None, 4);
                self.sym(system_id, Class::Value, None, 4);
            }
        }
    }
}

fn zstd(data: &[u8], level: i32) -> usize {
    use zstd::stream::raw::{CParameter, Encoder, InBuffer, Operation, OutBuffer};
    let dict: &[u8] = if std::env::var("DICT").is_ok() {
        tandem_protocol::compress::DICTIONARY
    } else {
        &[]
    };
    let mut e = Encoder::with_dictionary(level, dict).expect("encoder");
    e.set_parameter(CParameter::WindowLog(23)).expect("window");
    e.set_parameter(CParameter::ChecksumFlag(false))
        .expect("checksum");
    e.set_parameter(CParameter::ContentSizeFlag(false))
        .expect("size");
    let mut out: Vec<u8> = Vec::with_capacity(data.len() + 1024);
    let mut input = InBuffer::around(data);
    while input.pos() < data.len() {
        out.reserve(64 * 1024);
        let pos = out.len();
        e.run(&mut input, &mut OutBuffer::around_pos(&mut out, pos))
            .expect("compress");
    }
    loop {
        out.reserve(64 * 1024);
        let pos = out.len();
        if e.flush(&mut OutBuffer::around_pos(&mut out, pos))
            .expect("flush")
            == 0
        {
            break;
        }
    }
    out.len()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let level: i32 = std::env::args()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap_or(19);
    let limits = Limits::DEFAULT;
    println!("zstd level {level}, one stream and one flush per layout\n");
    println!(
        "| page | rrweb | frames | split | split4 | columns | columnar | alone: structure | texts | values | names | raw: structure | texts | values | names |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut ratios: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (name, html) in tandem_benches::pages() {
        let mut consumer = Consumer::new(parse_html(&html, limits), "https://example.com/", limits);
        let mut wire = Vec::new();
        let mut parts: Vec<Snapshot> = Vec::new();
        while let Some(msg) = consumer.poll_message() {
            frame::encode_frame(&msg, &mut wire, &limits).expect("encodes");
            if let Message::Snapshot(s) = msg {
                parts.push(s);
            }
        }
        let mut s = Sections::default();
        for p in &parts {
            for r in &p.nodes {
                s.record(r);
            }
        }
        let split = [&s.structure[..], &s.strings].concat();
        let split4 = [&s.structure[..], &s.texts, &s.values, &s.names].concat();
        let mut columns = [&s.structure[..], &s.texts].concat();
        for col in s.columns.values() {
            columns.extend_from_slice(col);
        }
        columns.extend_from_slice(&s.names);
        let mut columnar: Vec<u8> = s.cols.concat();
        columnar.extend_from_slice(&columns[s.structure.len()..]);
        let sizes = [
            zstd(&wire, level),
            zstd(&split, level),
            zstd(&split4, level),
            zstd(&columns, level),
            zstd(&columnar, level),
        ];
        let rr = tandem_benches::rrweb_snapshot(&name).unwrap_or(0);
        for (label, size) in ["frames", "split", "split4", "columns", "columnar"]
            .iter()
            .zip(sizes)
        {
            ratios
                .entry(label)
                .or_default()
                .push(size as f64 / rr as f64);
        }
        println!(
            "| {name} | {rr} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            sizes[0],
            sizes[1],
            sizes[2],
            sizes[3],
            sizes[4],
            zstd(&s.structure, level),
            zstd(&s.texts, level),
            zstd(&s.values, level),
            zstd(&s.names, level),
            s.structure.len(),
            s.texts.len(),
            s.values.len(),
            s.names.len(),
        );
        if std::env::var("DETAIL").is_ok() {
            let mut cols: Vec<(usize, String, usize)> = s
                .columns
                .iter()
                .map(|(k, v)| (zstd(v, level), k.clone(), v.len()))
                .collect();
            cols.sort_by(|a, b| b.cmp(a));
            let cols: Vec<String> = cols
                .iter()
                .take(8)
                .map(|(z, k, raw)| format!("{k} {raw}->{z}"))
                .collect();
            let texts: Vec<String> = s
                .text_by_parent
                .iter()
                .map(|(k, v)| format!("{k} {}->{}", v.len(), zstd(v, level)))
                .collect();
            eprintln!(
                "{name}: values: {}\n    texts: {}",
                cols.join(", "),
                texts.join(", ")
            );
        }
    }
    print!("| **median ratio** | 1 |");
    for label in ["frames", "split", "split4", "columns", "columnar"] {
        print!(" **{:.3}** |", median(ratios[label].clone()));
    }
    println!();
}
