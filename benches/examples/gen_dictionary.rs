//! Writes `protocol/dict/dom-v1.dict`, the compression dictionary of the DOM stream (spec §4.6.2,
//! Appendix C), from the hand-written sources beside it:
//!
//! 1. `markup.txt`: attribute names, attribute values, URL pieces, CSS declarations and class-name
//!    words that web pages commonly use;
//! 2. `words.txt`: common English words and phrases of web pages;
//! 3. `skeleton.html`: a generic page, written by hand, whose snapshot frames (as the reference
//!    consumer encodes them) are appended, so that the dictionary also holds the byte patterns of
//!    node records.
//!
//! Nothing in it is taken from the corpus pages: the size target is checked on pages we do not
//! have. Later content is cheaper to reference, so the most common material comes last.
//!
//! Run: `cargo run -p tandem-benches --example gen_dictionary`, then update the blake3 hash in
//! `spec/tandem.md` (the vector test checks it).

use std::path::Path;

use tandem_engine::{Consumer, parse_html};
use tandem_protocol::{Limits, frame};

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/dict");
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut dict = read("markup.txt");
    dict.extend(read("words.txt"));
    let html = String::from_utf8(read("skeleton.html")).expect("skeleton.html is UTF-8");
    let limits = Limits::DEFAULT;
    let mut consumer = Consumer::new(
        parse_html(&html, limits),
        "https://www.example.com/news/page-title",
        limits,
    );
    while let Some(msg) = consumer.poll_message() {
        frame::encode_frame(&msg, &mut dict, &limits).expect("the skeleton encodes");
    }
    let out = dir.join("dom-v1.dict");
    std::fs::write(&out, &dict).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    println!(
        "{}: {} bytes, blake3 {}",
        out.display(),
        dict.len(),
        blake3::hash(&dict).to_hex()
    );
}
