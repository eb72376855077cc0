//! The test vectors of `spec/vectors/` and the spec's tables against the code (STYLE.md 8, 9).
//!
//! Every positive vector decodes and re-encodes to the same bytes, every negative vector fails
//! with the error it names, every registered message has a vector, and the DOM stream vectors
//! replay to the tree hashes they announce. Then `spec/tandem.md` is read: the registry (§10),
//! the message sections and their field tables (§7), the limits (§8), the error codes (§9), the
//! wire enum tables (§10), the static table (Appendix A) and the compression dictionary
//! (Appendix C) must say what the code says. Compressed DOM stream vectors decode to the DOM
//! stream they carry, and the malformed ones fail as named. When the code and the spec drift
//! apart, this test fails.
//!
//! The files are read, never regenerated: `cargo run -p tandem-protocol --example gen_vectors`
//! and `--example gen_compressed_vectors` write them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Display};
use std::path::PathBuf;

use serde::Serialize;
use serde::ser;
use tandem_protocol::compress::{
    CODEC_CODED_PATCHES, CODEC_ZSTD_DOM_V1, DICTIONARY, DecompressError, DomDecompressor,
};
use tandem_protocol::message::{
    Capabilities, Coding, EndReason, Mode, ModeOp, RefusalCode, ResyncReason, Role,
};
use tandem_protocol::{
    DecodeError, ErrorCode, Limits, MalformedReason, Message, Ns, REGISTRY, STATIC_TABLE, frame,
    fuzzing,
};

#[path = "support/tree.rs"]
mod tree;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One block of a vector file: keys in order, continuation lines joined with newlines.
#[derive(Debug)]
struct Block {
    file: String,
    fields: BTreeMap<String, String>,
}

impl Block {
    fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    fn name(&self) -> &str {
        self.get("name").unwrap_or("(unnamed)")
    }

    fn bytes(&self) -> Vec<u8> {
        let hex = self
            .get("hex")
            .unwrap_or_else(|| panic!("{}: no hex", self.name()));
        parse_hex(hex).unwrap_or_else(|e| panic!("{}: {e}", self.name()))
    }
}

fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).map_err(|_| format!("bad hex byte {b:?}")))
        .collect()
}

/// Parses the format of spec Appendix B: `key: value` lines, continuation lines indented by two
/// spaces, blocks separated by blank lines, `#` comment lines outside blocks.
fn parse_vectors(file: &str, text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    let flush = |fields: &mut BTreeMap<String, String>, blocks: &mut Vec<Block>| {
        if !fields.is_empty() {
            blocks.push(Block {
                file: file.to_owned(),
                fields: std::mem::take(fields),
            });
        }
    };
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            flush(&mut fields, &mut blocks);
            last = None;
        } else if line.starts_with('#') && fields.is_empty() {
            continue;
        } else if let Some(cont) = line.strip_prefix("  ") {
            let key = last
                .as_ref()
                .unwrap_or_else(|| panic!("{file}:{}: continuation without a key", n + 1));
            let v = fields.get_mut(key).expect("key was inserted");
            if !v.is_empty() {
                v.push('\n');
            }
            v.push_str(cont);
        } else {
            let (k, v) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("{file}:{}: expected `key: value`", n + 1));
            let k = k.trim().to_owned();
            assert!(
                fields.insert(k.clone(), v.trim().to_owned()).is_none(),
                "{file}:{}: key {k} twice in a block",
                n + 1
            );
            last = Some(k);
        }
    }
    flush(&mut fields, &mut blocks);
    blocks
}

fn all_vectors() -> Vec<Block> {
    let dir = root().join("spec/vectors");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no vector files in {}", dir.display());
    let mut blocks = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read vector file");
        let name = f.file_name().expect("file name").to_string_lossy();
        blocks.extend(parse_vectors(&name, &text));
    }
    let mut names = BTreeSet::new();
    for b in &blocks {
        assert!(
            names.insert(b.name().to_owned()),
            "vector {} twice",
            b.name()
        );
    }
    blocks
}

#[test]
fn positive_vectors_round_trip() {
    let limits = Limits::DEFAULT;
    let mut count = 0;
    for b in all_vectors().iter().filter(|b| b.get("error").is_none()) {
        let bytes = b.bytes();
        let msg = frame::decode_exact(&bytes, &limits)
            .unwrap_or_else(|e| panic!("{} ({}): does not decode: {e}", b.name(), b.file));
        assert_eq!(
            Some(msg.name()),
            b.get("message"),
            "{}: decodes as another message",
            b.name()
        );
        let again = frame::to_frame(&msg, &limits).expect("re-encodes");
        assert_eq!(again, bytes, "{}: re-encodes to other bytes", b.name());

        // The layout is the same bytes, annotated.
        let layout = b
            .get("layout")
            .unwrap_or_else(|| panic!("{}: no layout", b.name()));
        let mut from_layout = Vec::new();
        for line in layout.lines() {
            let (hex, _) = line
                .split_once('|')
                .unwrap_or_else(|| panic!("{}: layout line without `|`: {line}", b.name()));
            from_layout.extend(parse_hex(hex).unwrap_or_else(|e| panic!("{}: {e}", b.name())));
        }
        assert_eq!(from_layout, bytes, "{}: layout and hex differ", b.name());

        // The stream and round-trip oracles hold for every vector too.
        fuzzing::frame_decode(&[&[0x00][..], &bytes].concat());
        fuzzing::frame_decode(&[&[0x02][..], &bytes, &bytes].concat());
        fuzzing::message_roundtrip(&msg);
        count += 1;
    }
    assert!(count >= REGISTRY.len(), "only {count} positive vectors");
}

#[test]
fn coded_resource_vectors_decode_to_their_address() {
    let limits = Limits::DEFAULT;
    let mut coded = 0;
    for b in all_vectors().iter().filter(|b| b.get("error").is_none()) {
        let Ok(Message::Resource(r)) = frame::decode_exact(&b.bytes(), &limits) else {
            continue;
        };
        if r.coding != Coding::Zstd {
            continue;
        }
        // A whole blob in one piece: its frame decodes to the bytes its address names.
        let mut d =
            tandem_protocol::compress::BlobDecoder::new(r.total_len as usize).expect("a decoder");
        d.push(&r.data)
            .unwrap_or_else(|e| panic!("{}: {e}", b.name()));
        let blob = d.finish().unwrap_or_else(|e| panic!("{}: {e}", b.name()));
        assert_eq!(
            *blake3::hash(&blob).as_bytes(),
            r.address,
            "{}: decodes to other bytes than its address names",
            b.name()
        );
        coded += 1;
    }
    assert!(coded > 0, "no coded RESOURCE vector");
}

#[test]
fn negative_vectors_fail_as_named() {
    let mut count = 0;
    for b in all_vectors().iter().filter(|b| b.get("error").is_some()) {
        let bytes = b.bytes();
        let want = b.get("error").expect("filtered");
        match frame::decode_exact(&bytes, &Limits::DEFAULT) {
            Ok(m) => panic!("{}: decodes as {m:?}", b.name()),
            Err(e) => assert_eq!(e.vector_form(), want, "{}: {e}", b.name()),
        }
        fuzzing::frame_decode(&[&[0x01][..], &bytes].concat());
        count += 1;
    }
    assert!(count >= 11, "only {count} negative vectors");
}

#[test]
fn every_registered_message_has_a_vector() {
    let mut seen = BTreeSet::new();
    let (mut optional, mut critical) = (false, false);
    for b in all_vectors().iter().filter(|b| b.get("error").is_none()) {
        match frame::decode_exact(&b.bytes(), &Limits::DEFAULT).expect("checked elsewhere") {
            Message::Unknown(u) => {
                assert_eq!(u.must_understand(), !u.ty.is_optional());
                if u.must_understand() {
                    critical = true;
                } else {
                    optional = true;
                }
            }
            m => {
                seen.insert(m.frame_type());
            }
        }
    }
    for (ty, name, _) in REGISTRY {
        assert!(seen.contains(ty), "no positive vector for {name}");
    }
    assert!(optional, "no vector of an unknown optional frame");
    assert!(critical, "no vector of an unknown critical frame");
}

/// Replays each DOM stream (blocks sharing a `stream` key) through the reference tree: the hash
/// each SNAPSHOT's last part and each PATCH announces is the hash of spec §6.3.
#[test]
fn dom_streams_replay_to_their_hashes() {
    let mut streams: BTreeMap<String, Vec<Message>> = BTreeMap::new();
    for b in all_vectors() {
        if let Some(s) = b.get("stream") {
            let msg = frame::decode_exact(&b.bytes(), &Limits::DEFAULT).expect("decodes");
            streams.entry(s.to_owned()).or_default().push(msg);
        }
    }
    assert!(!streams.is_empty(), "no DOM stream vectors");
    for (name, frames) in streams {
        let mut t = tree::Tree::new();
        let mut pending = Vec::new();
        let mut epoch = None;
        let mut seq = 0;
        let mut checked = 0;
        for msg in frames {
            match msg {
                Message::Snapshot(s) => {
                    if s.part == 0 {
                        t = tree::Tree::new();
                        pending.clear();
                        epoch = Some(s.epoch);
                    }
                    assert_eq!(Some(s.epoch), epoch, "{name}: snapshot of another epoch");
                    pending.extend(s.nodes);
                    if let Some(h) = s.hash {
                        t.insert(0, 0, t.next_id(), &pending)
                            .unwrap_or_else(|e| panic!("{name}: snapshot: {e}"));
                        assert_eq!(t.tree_hash(), h, "{name}: snapshot hash\n{}", t.outline());
                        seq = 0;
                        checked += 1;
                    }
                }
                Message::Patch(p) => {
                    assert_eq!(Some(p.epoch), epoch, "{name}: patch of another epoch");
                    assert_eq!(p.seq, seq + 1, "{name}: patch out of sequence");
                    seq = p.seq;
                    for op in &p.ops {
                        t.apply(op)
                            .unwrap_or_else(|e| panic!("{name}: patch {seq}: {e}"));
                    }
                    assert_eq!(
                        t.patch_check(),
                        p.hash,
                        "{name}: hash after patch {seq}\n{}",
                        t.outline()
                    );
                    checked += 1;
                }
                other => panic!("{name}: {} is not a DOM stream frame", other.name()),
            }
        }
        assert!(checked > 0, "{name}: no hash was checked");
    }
}

/// Each compressed DOM stream (blocks sharing a `compressed` key) decodes to exactly the frames
/// of its inner DOM stream (the `stream` its `inner` key names, or of the same name), batch by
/// batch: after each COMPRESSED frame, everything decoded so far is whole frames of that stream
/// (spec §4.6). Both codecs have a stream.
#[test]
fn compressed_streams_decode_to_their_frames() {
    let limits = Limits::DEFAULT;
    let blocks = all_vectors();
    let mut names = BTreeMap::new();
    for b in &blocks {
        if let Some(name) = b.get("compressed") {
            let inner = b.get("inner").unwrap_or(name);
            let known = names.insert(name.to_owned(), inner.to_owned());
            assert!(
                known.is_none_or(|k| k == inner),
                "{}: another inner stream",
                b.name()
            );
        }
    }
    assert!(!names.is_empty(), "no compressed DOM stream vectors");
    let mut codecs = BTreeSet::new();
    for (name, inner) in names {
        let plain: Vec<Vec<u8>> = blocks
            .iter()
            .filter(|b| b.get("stream") == Some(inner.as_str()))
            .map(Block::bytes)
            .collect();
        assert!(!plain.is_empty(), "{name}: no uncompressed frames");
        let mut d = DomDecompressor::new(limits).expect("decompressor");
        let mut got = Vec::new();
        let mut batches = 0;
        for b in blocks
            .iter()
            .filter(|b| b.get("compressed") == Some(name.as_str()))
        {
            let outer = frame::decode_exact(&b.bytes(), &limits).expect("decodes");
            let Message::Compressed(c) = outer else {
                panic!("{}: not a COMPRESSED frame", b.name());
            };
            d.push(&c.data)
                .unwrap_or_else(|e| panic!("{}: {e}", b.name()));
            while let Some(f) = d
                .next_frame()
                .unwrap_or_else(|e| panic!("{}: {e}", b.name()))
            {
                got.push(f.to_bytes());
            }
            assert_eq!(
                got[..],
                plain[..got.len()],
                "{}: decodes to other frames",
                b.name()
            );
            batches += 1;
        }
        d.finish().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, plain, "{name}: the whole stream");
        assert!(batches > 1, "{name}: one batch only");
        codecs.insert(d.codec().expect("a codec byte arrived").byte());
    }
    assert_eq!(
        codecs.len(),
        2,
        "a compressed stream of each codec: only {codecs:?}"
    );
}

/// The `stream_error` vectors: a DOM stream of one COMPRESSED frame that MUST be refused.
#[test]
fn compressed_stream_errors_fail_as_named() {
    let limits = Limits::DEFAULT;
    let (mut count, mut coded) = (0, 0);
    for b in all_vectors() {
        let Some(want) = b.get("stream_error") else {
            continue;
        };
        let outer = frame::decode_exact(&b.bytes(), &limits).expect("decodes");
        let Message::Compressed(c) = outer else {
            panic!("{}: not a COMPRESSED frame", b.name());
        };
        let mut d = DomDecompressor::new(limits).expect("decompressor");
        let result = d.push(&c.data).and_then(|()| {
            while d.next_frame()?.is_some() {}
            d.finish()
        });
        let err = match result {
            Ok(()) => panic!("{}: accepted", b.name()),
            Err(e) => e,
        };
        let got = match &err {
            DecompressError::UnknownCodec { .. } => "UnknownCodec".to_owned(),
            DecompressError::WindowTooLarge { .. } => "WindowTooLarge".to_owned(),
            DecompressError::Corrupt { .. } => "Corrupt".to_owned(),
            DecompressError::Truncated => "Truncated".to_owned(),
            DecompressError::UnexpectedFrame { inner: true, .. } => {
                "UnexpectedFrame inner".to_owned()
            }
            DecompressError::UnexpectedFrame { inner: false, .. } => {
                "UnexpectedFrame outer".to_owned()
            }
            DecompressError::Frame(e) => format!("Frame {}", e.vector_form()),
            DecompressError::ChunkTooLarge { .. } => "ChunkTooLarge".to_owned(),
            DecompressError::BadChunkHeader => "BadChunkHeader".to_owned(),
            DecompressError::PatchInsideBlock => "PatchInsideBlock".to_owned(),
            DecompressError::CodedPatch(e) => format!("CodedPatch {}", e.vector_form()),
            other => format!("{other:?}"),
        };
        assert_eq!(got, want, "{}: {err}", b.name());
        if c.data.first() == Some(&CODEC_CODED_PATCHES) {
            coded += 1;
        }
        count += 1;
    }
    assert!(count >= 10, "only {count} compressed stream error vectors");
    assert!(coded >= 5, "only {coded} codec 0x02 stream error vectors");
}

/// Appendix C names the dictionary's size and blake3 hash; the file must match them.
#[test]
fn spec_dictionary_matches_code() {
    let md = spec();
    let lines = prose_lines(&md);
    let (_, app) = section(&lines, "## Appendix C").expect("spec has Appendix C");
    let rows = need_table(&app, "Dictionary");
    let row = rows
        .iter()
        .find(|r| r[0] == "dom-v1")
        .expect("Appendix C lists dom-v1");
    let path = root().join(&row[1]);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        bytes, DICTIONARY,
        "the code embeds another file than the spec names"
    );
    assert_eq!(row[2], bytes.len().to_string(), "Appendix C: size");
    assert_eq!(
        row[3],
        blake3::hash(&bytes).to_hex().as_str(),
        "Appendix C: blake3"
    );
    assert_eq!(
        row[4],
        format!("0x{CODEC_ZSTD_DOM_V1:02x}`, `0x{CODEC_CODED_PATCHES:02x}"),
        "Appendix C: codec bytes"
    );
}

// ---------------------------------------------------------------------------------------------
// The spec document.

fn spec() -> String {
    let path = root().join("spec/tandem.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines of `md` outside fenced code blocks.
fn prose_lines(md: &str) -> Vec<&str> {
    let mut fenced = false;
    md.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// The text of the section whose heading starts with `heading` (for example `### 7.1 `), up to
/// the next heading of the same or a higher level.
fn section<'a>(lines: &[&'a str], heading: &str) -> Option<(String, Vec<&'a str>)> {
    let level = heading.chars().take_while(|&c| c == '#').count();
    let start = lines.iter().position(|l| l.starts_with(heading))?;
    let body = lines[start + 1..]
        .iter()
        .take_while(|l| {
            let h = l.chars().take_while(|&c| c == '#').count();
            !(h > 0 && h <= level && l[h..].starts_with(' '))
        })
        .copied()
        .collect();
    Some((lines[start].to_owned(), body))
}

fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner
        .split('|')
        .map(|c| c.trim().trim_matches('`').to_owned())
        .collect()
}

/// The rows of the first table in `lines` whose first header cell is `first`.
fn table(lines: &[&str], first: &str) -> Option<Vec<Vec<String>>> {
    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with('|') && cells(l)[0] == first)?;
    Some(
        lines[start + 2..]
            .iter()
            .take_while(|l| l.trim_start().starts_with('|'))
            .map(|l| cells(l))
            .collect(),
    )
}

fn need_table(lines: &[&str], first: &str) -> Vec<Vec<String>> {
    table(lines, first).unwrap_or_else(|| panic!("spec: no table whose header starts `{first}`"))
}

#[test]
fn spec_registry_matches_code() {
    let md = spec();
    let lines = prose_lines(&md);
    let (_, s10) = section(&lines, "## 10 ").expect("spec has §10");
    let rows = need_table(&s10, "Type");
    let want: Vec<Vec<String>> = REGISTRY
        .iter()
        .map(|(ty, name, section)| {
            vec![
                format!("0x{:02X}", ty.0),
                (*name).to_owned(),
                (*section).to_owned(),
                if ty.is_optional() { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    let got: Vec<Vec<String>> = rows
        .into_iter()
        .map(|mut r| {
            r[0] = format!(
                "0x{:02X}",
                u32::from_str_radix(r[0].trim_start_matches("0x"), 16).expect("hex type")
            );
            r
        })
        .collect();
    assert_eq!(got, want, "spec §10 registry differs from REGISTRY");
}

#[test]
fn spec_static_table_matches_code() {
    let md = spec();
    let lines = prose_lines(&md);
    let (_, app) = section(&lines, "## Appendix A").expect("spec has Appendix A");
    let rows = need_table(&app, "Index");
    assert_eq!(rows.len(), STATIC_TABLE.len(), "Appendix A length");
    for (i, (row, s)) in rows.iter().zip(STATIC_TABLE).enumerate() {
        assert_eq!(row[0], i.to_string(), "Appendix A index");
        assert_eq!(row[1], *s, "Appendix A entry {i}");
    }
}

/// Field names of a message struct, in the order postcard writes them.
fn field_names<T: Serialize + ?Sized>(v: &T) -> Vec<&'static str> {
    v.serialize(FieldNames).expect("a struct or unit")
}

fn message_fields(m: &Message) -> Vec<&'static str> {
    match m {
        Message::Hello(x) => field_names(x),
        Message::Welcome(x) => field_names(x),
        Message::SessionOpen(x) => field_names(x),
        Message::SessionCreated(x) => field_names(x),
        Message::Join(x) => field_names(x),
        Message::Joined(x) => field_names(x),
        Message::Invite(x) => field_names(x),
        Message::Accept(x) | Message::Decline(x) | Message::Cancel(x) => field_names(x),
        Message::Pause(x) | Message::Resume(x) => field_names(x),
        Message::End(x) => field_names(x),
        Message::Rejoined(x) => field_names(x),
        Message::Snapshot(x) => field_names(x),
        Message::Patch(x) => field_names(x),
        Message::Ack(x) => field_names(x),
        Message::Resync(x) => field_names(x),
        Message::Have(x) | Message::Want(x) | Message::WantAgain(x) => field_names(x),
        Message::Resource(x) => field_names(x),
        Message::Pointer(x) => field_names(x),
        Message::Scroll(x) => field_names(x),
        Message::Highlight(x) => field_names(x),
        Message::Click(x) => field_names(x),
        Message::Input(x) => field_names(x),
        Message::Navigate(x) => field_names(x),
        Message::Mode(x) => field_names(x),
        Message::Refused(x) => field_names(x),
        Message::Status(x) => field_names(x),
        Message::Ping(x) | Message::Pong(x) => field_names(x),
        Message::Viewport(x) => field_names(x),
        Message::Error(x) | Message::Close(x) => field_names(x),
        // Not a postcard struct: the body is the raw bytes (spec §7.35).
        Message::Compressed(_) => vec!["data"],
        other => panic!("{} has no fields to compare", other.name()),
    }
}

#[test]
fn spec_message_sections_match_code() {
    let md = spec();
    let lines = prose_lines(&md);
    let mut samples = BTreeMap::new();
    for b in all_vectors().iter().filter(|b| b.get("error").is_none()) {
        let m = frame::decode_exact(&b.bytes(), &Limits::DEFAULT).expect("decodes");
        if !matches!(m, Message::Unknown(_)) {
            samples.entry(m.frame_type()).or_insert(m);
        }
    }
    for (ty, name, sec) in REGISTRY {
        let num = sec.trim_start_matches('§');
        let (heading, body) = section(&lines, &format!("### {num} "))
            .unwrap_or_else(|| panic!("spec has no heading `### {num} ` for {name}"));
        let words: Vec<&str> = heading.split_whitespace().collect();
        assert_eq!(words.get(2), Some(name), "heading of {sec}: {heading}");
        let hex = format!("0x{:02X}", ty.0);
        assert!(
            heading.to_lowercase().contains(&hex.to_lowercase()),
            "heading of {sec} does not give its type {hex}: {heading}"
        );
        let fields = message_fields(&samples[ty]);
        match table(&body, "Field") {
            Some(rows) => {
                let spec_fields: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
                assert_eq!(spec_fields, fields, "{sec} {name}: field table");
                for r in &rows {
                    assert!(
                        r.len() == 3 && !r[1].is_empty() && !r[2].is_empty(),
                        "{sec} {name}: row {r:?} needs an encoding and a meaning"
                    );
                }
            }
            None => {
                assert!(fields.is_empty(), "{sec} {name}: no field table");
                assert!(
                    body.iter().any(|l| l.contains("body is empty")),
                    "{sec} {name}: says neither its fields nor that its body is empty"
                );
            }
        }
    }
}

#[test]
fn spec_limits_match_code() {
    let md = spec();
    let lines = prose_lines(&md);
    let (_, s8) = section(&lines, "## 8 ").expect("spec has §8");
    let rows = need_table(&s8, "Limit");
    // Destructured without `..`: a new limit does not compile until it is listed here.
    let Limits {
        max_frame_body,
        max_string,
        max_nodes_per_frame,
        max_nodes,
        max_node_id,
        max_depth,
        max_attributes,
        max_patch_ops,
        max_dynamic_entries,
        max_dynamic_bytes,
        max_list,
    } = Limits::DEFAULT;
    let want = [
        ("max_frame_body", max_frame_body),
        ("max_string", max_string),
        ("max_nodes_per_frame", max_nodes_per_frame),
        ("max_nodes", max_nodes),
        ("max_node_id", max_node_id),
        ("max_depth", max_depth),
        ("max_attributes", max_attributes),
        ("max_patch_ops", max_patch_ops),
        ("max_dynamic_entries", max_dynamic_entries),
        ("max_dynamic_bytes", max_dynamic_bytes),
        ("max_list", max_list),
    ];
    let got: Vec<(String, u32)> = rows
        .iter()
        .map(|r| {
            let value = r[1]
                .split_whitespace()
                .next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .unwrap_or_else(|| panic!("§8: value of {} is not a number: {}", r[0], r[1]));
            (r[0].clone(), value)
        })
        .collect();
    let want: Vec<(String, u32)> = want.iter().map(|(n, v)| ((*n).to_owned(), *v)).collect();
    assert_eq!(got, want, "spec §8 limits");
}

#[test]
fn spec_error_codes_match_code() {
    let md = spec();
    let lines = prose_lines(&md);
    let (_, s9) = section(&lines, "## 9 ").expect("spec has §9");
    let rows = need_table(&s9, "Code");
    let want: Vec<(String, String)> = ErrorCode::ALL
        .iter()
        .map(|c| {
            (
                u32::from(*c).to_string(),
                c.name().expect("named").to_owned(),
            )
        })
        .collect();
    let got: Vec<(String, String)> = rows.iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    assert_eq!(got, want, "spec §9 error codes");

    let mapping = need_table(&s9, "DecodeError");
    let samples = [
        DecodeError::Truncated { field: "f" },
        DecodeError::BadVarint { field: "f" },
        DecodeError::FrameTooLarge { len: 2, max: 1 },
        DecodeError::TrailingBytes {
            message: "m",
            count: 1,
        },
        DecodeError::Malformed {
            message: "m",
            reason: MalformedReason::Other,
        },
        DecodeError::Limit {
            field: "f",
            limit: 1,
            actual: 2,
        },
        DecodeError::InvalidValue {
            field: "f",
            detail: "d",
        },
        DecodeError::BadStringRef {
            field: "f",
            table: "dynamic",
            index: 0,
        },
        DecodeError::UnknownCritical { ty: 2 },
    ];
    let got: BTreeMap<String, String> = mapping
        .iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    assert_eq!(
        got.len(),
        samples.len(),
        "§9 maps every DecodeError variant"
    );
    for e in samples {
        let variant = format!("{e:?}");
        let variant = variant
            .split([' ', '{', '('])
            .next()
            .expect("a name")
            .to_owned();
        assert_eq!(
            got.get(&variant).map(String::as_str),
            e.code().name(),
            "§9: code of {variant}"
        );
    }
}

fn check_enum(lines: &[&str], header: &str, want: Vec<(u32, &str)>) {
    let rows = need_table(lines, header);
    let got: Vec<(u32, String)> = rows
        .iter()
        .map(|r| {
            let v = r[0]
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{header}: value {:?} is not a number", r[0]));
            (v, r[1].clone())
        })
        .collect();
    let want: Vec<(u32, String)> = want.into_iter().map(|(v, n)| (v, n.to_owned())).collect();
    assert_eq!(got, want, "spec table `{header}`");
}

macro_rules! named {
    ($ty:ty) => {
        <$ty>::ALL
            .iter()
            .map(|v| (u32::from(*v), v.name().expect("named")))
            .collect::<Vec<_>>()
    };
}

#[test]
fn spec_wire_enums_match_code() {
    let md = spec();
    let lines = prose_lines(&md);
    check_enum(&lines, "Role value", named!(Role));
    check_enum(&lines, "EndReason value", named!(EndReason));
    check_enum(&lines, "Mode value", named!(Mode));
    check_enum(&lines, "ModeOp value", named!(ModeOp));
    check_enum(&lines, "RefusalCode value", named!(RefusalCode));
    check_enum(&lines, "ResyncReason value", named!(ResyncReason));
    check_enum(&lines, "Ns value", named!(Ns));
    check_enum(&lines, "Coding value", named!(Coding));
    check_enum(
        &lines,
        "Capability bit",
        [
            ("COMPRESSION", Capabilities::COMPRESSION),
            ("RESOURCES", Capabilities::RESOURCES),
            ("DATAGRAMS", Capabilities::DATAGRAMS),
            ("RESUME", Capabilities::RESUME),
            ("CODED_PATCHES", Capabilities::CODED_PATCHES),
        ]
        .into_iter()
        .map(|(n, c)| (c.0.trailing_zeros(), n))
        .collect(),
    );
}

// ---------------------------------------------------------------------------------------------
// A serializer that only records the field names of a struct, in order.

struct FieldNames;

#[derive(Debug)]
struct NotAStruct;

impl Display for NotAStruct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a struct")
    }
}

impl std::error::Error for NotAStruct {}

impl ser::Error for NotAStruct {
    fn custom<T: Display>(_: T) -> Self {
        NotAStruct
    }
}

struct Fields(Vec<&'static str>);

impl ser::SerializeStruct for Fields {
    type Ok = Vec<&'static str>;
    type Error = NotAStruct;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        _: &T,
    ) -> Result<(), NotAStruct> {
        self.0.push(key);
        Ok(())
    }
    fn end(self) -> Result<Vec<&'static str>, NotAStruct> {
        Ok(self.0)
    }
}

type Out = Result<Vec<&'static str>, NotAStruct>;
type No = ser::Impossible<Vec<&'static str>, NotAStruct>;

impl ser::Serializer for FieldNames {
    type Ok = Vec<&'static str>;
    type Error = NotAStruct;
    type SerializeSeq = No;
    type SerializeTuple = No;
    type SerializeTupleStruct = No;
    type SerializeTupleVariant = No;
    type SerializeMap = No;
    type SerializeStruct = Fields;
    type SerializeStructVariant = No;

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Fields, NotAStruct> {
        Ok(Fields(Vec::new()))
    }
    fn serialize_unit(self) -> Out {
        Ok(Vec::new())
    }
    fn serialize_bool(self, _: bool) -> Out {
        Err(NotAStruct)
    }
    fn serialize_i8(self, _: i8) -> Out {
        Err(NotAStruct)
    }
    fn serialize_i16(self, _: i16) -> Out {
        Err(NotAStruct)
    }
    fn serialize_i32(self, _: i32) -> Out {
        Err(NotAStruct)
    }
    fn serialize_i64(self, _: i64) -> Out {
        Err(NotAStruct)
    }
    fn serialize_u8(self, _: u8) -> Out {
        Err(NotAStruct)
    }
    fn serialize_u16(self, _: u16) -> Out {
        Err(NotAStruct)
    }
    fn serialize_u32(self, _: u32) -> Out {
        Err(NotAStruct)
    }
    fn serialize_u64(self, _: u64) -> Out {
        Err(NotAStruct)
    }
    fn serialize_f32(self, _: f32) -> Out {
        Err(NotAStruct)
    }
    fn serialize_f64(self, _: f64) -> Out {
        Err(NotAStruct)
    }
    fn serialize_char(self, _: char) -> Out {
        Err(NotAStruct)
    }
    fn serialize_str(self, _: &str) -> Out {
        Err(NotAStruct)
    }
    fn serialize_bytes(self, _: &[u8]) -> Out {
        Err(NotAStruct)
    }
    fn serialize_none(self) -> Out {
        Err(NotAStruct)
    }
    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Out {
        Err(NotAStruct)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Out {
        Ok(Vec::new())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Out {
        Err(NotAStruct)
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _: &'static str, _: &T) -> Out {
        Err(NotAStruct)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Out {
        Err(NotAStruct)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<No, NotAStruct> {
        Err(NotAStruct)
    }
    fn serialize_tuple(self, _: usize) -> Result<No, NotAStruct> {
        Err(NotAStruct)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<No, NotAStruct> {
        Err(NotAStruct)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<No, NotAStruct> {
        Err(NotAStruct)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<No, NotAStruct> {
        Err(NotAStruct)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<No, NotAStruct> {
        Err(NotAStruct)
    }
}

/// The worked example of spec §6.3: a document holding a doctype and `<p class="note">hi</p>`,
/// and the empty document. Every input and hash the spec prints is the reference tree's.
#[test]
fn tree_hash_example_of_the_spec() {
    use tandem_protocol::{Attr, NodeRecord, Sym};
    let lit = |s: &str| Sym::Lit(s.into());
    let records = [
        NodeRecord::Doctype {
            name: lit("html"),
            public_id: lit(""),
            system_id: lit(""),
        },
        NodeRecord::Element {
            ns: Ns::Html,
            name: lit("p"),
            attrs: vec![Attr {
                name: lit("class"),
                value: lit("note"),
            }],
            children: 1,
        },
        NodeRecord::Text { text: lit("hi") },
    ];
    let mut t = tree::Tree::new();
    let empty = hex(&t.tree_hash());
    t.insert(0, 0, 1, &records).unwrap();
    let spaced = |b: &[u8]| {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let p_hash = t.node_hash(2);
    let p_input = t.hash_input(2);
    let doc_input = t.hash_input(0);
    // The inputs end with the hashes they contain, which the spec shows by name.
    let p_shown = spaced(&p_input);
    let doc_shown = format!("{} <hash of p>", spaced(&doc_input[..doc_input.len() - 32]));
    assert_eq!(&doc_input[doc_input.len() - 32..], &p_hash);
    let lines = [
        format!("element p       input  {p_shown}"),
        format!("                hash   {}", hex(&p_hash)),
        format!("document        input  {doc_shown}"),
        format!("                hash   {}", hex(&t.node_hash(0))),
        format!("tree hash       {}", hex(&t.tree_hash())),
        format!("The tree hash of an empty document (no children) is `{empty}`"),
    ];
    let spec = std::fs::read_to_string(root().join("spec/tandem.md")).unwrap();
    let mut missing = Vec::new();
    for line in lines {
        if !spec.contains(&line) {
            missing.push(line);
        }
    }
    assert!(
        missing.is_empty(),
        "spec §6.3 lacks the lines\n{}",
        missing.join("\n")
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
