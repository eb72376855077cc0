//! Replays the fuzz crashers checked in under `fuzz/regressions/<target>/` (STYLE.md 10): each
//! file is one input of the target of its directory, run through the same oracle the target
//! calls, so a bug the fuzzer found stays fixed. `README.md` and dot files are not inputs.
//!
//! `message_roundtrip` inputs are bytes for `arbitrary`; they are replayed when the crate is
//! tested with `--features arbitrary`.

use std::path::PathBuf;

use tandem_protocol::fuzzing;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            let name = p.file_name().expect("file name").to_string_lossy();
            p.is_file() && !name.starts_with('.') && name != "README.md"
        })
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read crasher");
            (p.display().to_string(), bytes)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn frame_decode_regressions() {
    for (name, bytes) in inputs("frame_decode") {
        eprintln!("replaying {name}");
        fuzzing::frame_decode(&bytes);
    }
}

#[test]
fn compressed_stream_regressions() {
    for (name, bytes) in inputs("compressed_stream") {
        eprintln!("replaying {name}");
        fuzzing::compressed_stream(&bytes);
    }
}

#[test]
fn message_roundtrip_regressions() {
    let inputs = inputs("message_roundtrip");
    #[cfg(feature = "arbitrary")]
    for (name, bytes) in &inputs {
        eprintln!("replaying {name}");
        fuzzing::message_roundtrip_bytes(bytes);
    }
    #[cfg(not(feature = "arbitrary"))]
    if !inputs.is_empty() {
        eprintln!(
            "{} message_roundtrip inputs need --features arbitrary to replay",
            inputs.len()
        );
    }
}
