//! Which streaming compressor for the DOM stream (spec §4.6)? Measures every candidate on the
//! corpus and prints the tables the choice was made from:
//!
//! 1. the snapshot of every page in `../shared/corpus/pages/`, raw and compressed (one flush at
//!    the end of the snapshot, as the consumer sends it), next to rrweb's full snapshot
//!    compressed with `zstd -19` (the corpus README's reference figures);
//! 2. the 50-batch state sequences of `../shared/corpus/states/`: the patch bytes compressed with
//!    one context spanning the stream (flushed after every patch) and compressed frame by frame;
//! 3. compression and decompression speed over all the snapshots.
//!
//! Run: `cargo run --release -p tandem-benches --example compression` (add `-- --quick` to skip
//! the slowest levels).

use std::io::Write;
use std::time::{Duration, Instant};

use tandem_engine::{Consumer, LivePage, parse_html};
use tandem_protocol::{Limits, frame};

/// One direction of a streaming codec: takes bytes, returns everything it can emit after a
/// flush (compressor) or everything the bytes so far decode to (decompressor).
trait Stage {
    fn push(&mut self, data: &[u8], out: &mut Vec<u8>);
}

/// A candidate: how to make a compressor and a decompressor for one stream.
struct Candidate {
    name: String,
    compressor: Box<dyn Fn() -> Box<dyn Stage>>,
    decompressor: Box<dyn Fn() -> Box<dyn Stage>>,
}

mod zstd_stage {
    use super::Stage;
    use zstd::stream::raw::{
        CParameter, DParameter, Decoder, Encoder, InBuffer, Operation, OutBuffer,
    };

    pub struct Z(pub Encoder<'static>, pub Option<i32>);
    pub struct D(pub Decoder<'static>);

    pub fn encoder(level: i32, dict: &[u8]) -> Z {
        let mut e = Encoder::with_dictionary(level, dict).expect("encoder");
        e.set_parameter(CParameter::WindowLog(23)).expect("window");
        e.set_parameter(CParameter::ChecksumFlag(false))
            .expect("checksum");
        e.set_parameter(CParameter::ContentSizeFlag(false))
            .expect("size");
        e.set_parameter(CParameter::DictIdFlag(false))
            .expect("dict id");
        Z(e, None)
    }

    pub fn decoder(dict: &[u8]) -> D {
        let mut d = Decoder::with_dictionary(dict).expect("decoder");
        d.set_parameter(DParameter::WindowLogMax(23))
            .expect("window");
        D(d)
    }

    impl Stage for Z {
        fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
            let then = self.1.take();
            let mut input = InBuffer::around(data);
            while input.pos() < data.len() {
                out.reserve(64 * 1024);
                let pos = out.len();
                let mut o = OutBuffer::around_pos(out, pos);
                self.0.run(&mut input, &mut o).expect("compress");
            }
            loop {
                out.reserve(64 * 1024);
                let pos = out.len();
                let mut o = OutBuffer::around_pos(out, pos);
                if self.0.flush(&mut o).expect("flush") == 0 {
                    break;
                }
            }
            if let Some(level) = then {
                self.0
                    .set_parameter(CParameter::CompressionLevel(level))
                    .expect("level");
            }
        }
    }

    impl Stage for D {
        fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
            let mut input = InBuffer::around(data);
            loop {
                out.reserve(64 * 1024);
                let pos = out.len();
                let mut o = OutBuffer::around_pos(out, pos);
                self.0.run(&mut input, &mut o).expect("decompress");
                let full = o.pos() == o.capacity();
                if input.pos() == data.len() && !full {
                    break;
                }
            }
        }
    }
}

struct Brotli(brotli::CompressorWriter<Vec<u8>>);
struct BrotliD(
    brotli::BrotliState<
        brotli::enc::StandardAlloc,
        brotli::enc::StandardAlloc,
        brotli::enc::StandardAlloc,
    >,
);

impl Stage for Brotli {
    fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.0.write_all(data).expect("brotli");
        self.0.flush().expect("brotli flush");
        out.append(self.0.get_mut());
    }
}

impl Stage for BrotliD {
    fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let mut avail_in = data.len();
        let mut in_off = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let mut avail_out = buf.len();
            let mut out_off = 0;
            let mut total = 0;
            let r = brotli::BrotliDecompressStream(
                &mut avail_in,
                &mut in_off,
                data,
                &mut avail_out,
                &mut out_off,
                &mut buf,
                &mut total,
                &mut self.0,
            );
            out.extend_from_slice(&buf[..out_off]);
            match r {
                brotli::BrotliResult::NeedsMoreOutput => continue,
                brotli::BrotliResult::ResultFailure => panic!("brotli decode failed"),
                _ if avail_out == 0 => continue,
                _ => break,
            }
        }
    }
}

struct Lz4(lz4_flex::frame::FrameEncoder<Vec<u8>>);
struct Lz4D {
    buf: Vec<u8>,
    seen: usize,
}

impl Stage for Lz4 {
    fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.0.write_all(data).expect("lz4");
        self.0.flush().expect("lz4 flush");
        out.append(self.0.get_mut());
    }
}

impl Stage for Lz4D {
    // lz4_flex has no push decoder: decode the whole stream so far and emit what is new. Only
    // used for the round-trip check, never timed.
    fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        use std::io::Read;
        self.buf.extend_from_slice(data);
        let mut d = lz4_flex::frame::FrameDecoder::new(&self.buf[..]);
        let mut all = Vec::new();
        let _ = d.read_to_end(&mut all);
        out.extend_from_slice(&all[self.seen..]);
        self.seen = all.len();
    }
}

struct Deflate(flate2::write::DeflateEncoder<Vec<u8>>);
struct DeflateD(flate2::write::DeflateDecoder<Vec<u8>>);

impl Stage for Deflate {
    fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.0.write_all(data).expect("deflate");
        self.0.flush().expect("deflate flush");
        out.append(self.0.get_mut());
    }
}

impl Stage for DeflateD {
    fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.0.write_all(data).expect("inflate");
        self.0.flush().expect("inflate flush");
        out.append(self.0.get_mut());
    }
}

fn candidates(quick: bool, dict: &'static [u8]) -> Vec<Candidate> {
    let mut c = Vec::new();
    let levels: &[i32] = if quick {
        &[1, 3, 9, 16, 19]
    } else {
        &[1, 3, 6, 9, 12, 15, 16, 19, 22]
    };
    for &level in levels {
        c.push(Candidate {
            name: format!("zstd -{level}"),
            compressor: Box::new(move || Box::new(zstd_stage::encoder(level, &[]))),
            decompressor: Box::new(|| Box::new(zstd_stage::decoder(&[]))),
        });
    }
    // Measured once: a level change between flushes has no effect in single-threaded zstd (the
    // sizes equal those of the first level throughout), so these are not listed by default.
    let switches: &[(i32, i32)] = if std::env::args().any(|a| a == "--switch") {
        &[(19, 3), (16, 3)]
    } else {
        &[]
    };
    for &(first, then) in switches {
        c.push(Candidate {
            name: format!("zstd -{first} then -{then} +dict"),
            compressor: Box::new(move || {
                let mut z = zstd_stage::encoder(first, dict);
                z.1 = Some(then);
                Box::new(z)
            }),
            decompressor: Box::new(move || Box::new(zstd_stage::decoder(dict))),
        });
    }
    if !dict.is_empty() {
        for &level in &[1, 3, 6, 9, 12, 16, 19] {
            c.push(Candidate {
                name: format!("zstd -{level} +dict"),
                compressor: Box::new(move || Box::new(zstd_stage::encoder(level, dict))),
                decompressor: Box::new(move || Box::new(zstd_stage::decoder(dict))),
            });
        }
    }
    let qualities: &[u32] = if quick {
        &[5, 11]
    } else {
        &[4, 5, 6, 7, 9, 11]
    };
    for &q in qualities {
        c.push(Candidate {
            name: format!("brotli q{q}"),
            compressor: Box::new(move || {
                Box::new(Brotli(brotli::CompressorWriter::new(
                    Vec::new(),
                    64 * 1024,
                    q,
                    23,
                )))
            }),
            decompressor: Box::new(|| {
                Box::new(BrotliD(brotli::BrotliState::new(
                    brotli::enc::StandardAlloc::default(),
                    brotli::enc::StandardAlloc::default(),
                    brotli::enc::StandardAlloc::default(),
                )))
            }),
        });
    }
    c.push(Candidate {
        name: "lz4 linked".into(),
        compressor: Box::new(|| {
            let info =
                lz4_flex::frame::FrameInfo::new().block_mode(lz4_flex::frame::BlockMode::Linked);
            Box::new(Lz4(lz4_flex::frame::FrameEncoder::with_frame_info(
                info,
                Vec::new(),
            )))
        }),
        decompressor: Box::new(|| {
            Box::new(Lz4D {
                buf: Vec::new(),
                seen: 0,
            })
        }),
    });
    c.push(Candidate {
        name: "deflate -9 sync".into(),
        compressor: Box::new(|| {
            Box::new(Deflate(flate2::write::DeflateEncoder::new(
                Vec::new(),
                flate2::Compression::best(),
            )))
        }),
        decompressor: Box::new(|| {
            Box::new(DeflateD(flate2::write::DeflateDecoder::new(Vec::new())))
        }),
    });
    c
}

/// The DOM stream of a page: the snapshot's frames, as the consumer queues them.
fn snapshot_frames(html: &str) -> Vec<u8> {
    let limits = Limits::DEFAULT;
    let dom = parse_html(html, limits);
    let mut consumer = Consumer::new(dom, "https://example.com/", limits);
    let mut wire = Vec::new();
    while let Some(msg) = consumer.poll_message() {
        frame::encode_frame(&msg, &mut wire, &limits).expect("encodes");
    }
    wire
}

/// The DOM stream of a state sequence: batch 0 is the snapshot, batch k the patch to state k.
fn state_batches(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let limits = Limits::DEFAULT;
    let read = |k: usize| -> Option<String> {
        std::fs::read(dir.join(format!("{k}.html")))
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let first = read(0).expect("0.html");
    let mut consumer = Consumer::new(parse_html(&first, limits), "https://example.com/", limits);
    let mut batches = Vec::new();
    let drain = |consumer: &mut Consumer| {
        let mut wire = Vec::new();
        while let Some(msg) = consumer.poll_message() {
            frame::encode_frame(&msg, &mut wire, &limits).expect("encodes");
        }
        wire
    };
    batches.push(drain(&mut consumer));
    for k in 1.. {
        let Some(html) = read(k) else { break };
        let mut target = parse_html(&html, limits);
        consumer.update_to(&mut target).expect("update");
        consumer.flush();
        batches.push(drain(&mut consumer));
    }
    batches
}

/// A snapshot, then `n` patches of `per` seeded random changes each.
fn live_batches(html: &str, n: usize, per: usize) -> Vec<Vec<u8>> {
    let limits = Limits::DEFAULT;
    let mut consumer = Consumer::new(parse_html(html, limits), "https://example.com/", limits);
    let mut live = LivePage::new(7);
    let drain = |consumer: &mut Consumer| {
        let mut wire = Vec::new();
        while let Some(msg) = consumer.poll_message() {
            frame::encode_frame(&msg, &mut wire, &limits).expect("encodes");
        }
        wire
    };
    let mut batches = vec![drain(&mut consumer)];
    for _ in 0..n {
        live.step(&mut consumer, per).expect("live step");
        consumer.flush();
        batches.push(drain(&mut consumer));
    }
    batches
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn compress_all(c: &Candidate, batches: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut comp = (c.compressor)();
    batches
        .iter()
        .map(|b| {
            let mut out = Vec::new();
            comp.push(b, &mut out);
            out
        })
        .collect()
}

fn check_round_trip(c: &Candidate, batches: &[Vec<u8>], compressed: &[Vec<u8>]) {
    let mut d = (c.decompressor)();
    for (b, z) in batches.iter().zip(compressed) {
        let mut out = Vec::new();
        d.push(z, &mut out);
        assert!(
            out == *b,
            "{}: a flushed batch of {} bytes decoded to {} bytes",
            c.name,
            b.len(),
            out.len()
        );
    }
}

fn main() {
    if let Some(path) = std::env::args()
        .skip_while(|a| a != "--emit-snapshot")
        .nth(1)
    {
        // The snapshot frames of one HTML file, raw, to stdout (for building a dictionary).
        let html = std::fs::read_to_string(&path).expect("HTML file");
        std::io::stdout()
            .write_all(&snapshot_frames(&html))
            .expect("stdout");
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let dict: &'static [u8] = match std::env::args().skip_while(|a| a != "--dict").nth(1) {
        Some(path) => std::fs::read(&path).expect("dictionary file").leak(),
        None => &[],
    };
    let root = tandem_benches::corpus_root();
    let pages = tandem_benches::pages();
    let only: Option<String> = std::env::args().skip_while(|a| a != "--only").nth(1);
    let mut cands = candidates(quick, dict);
    if let Some(only) = &only {
        cands.retain(|c| only.split(',').any(|o| c.name == *o));
    }

    // 1. Snapshots.
    let snaps: Vec<(String, Vec<u8>)> = pages
        .iter()
        .map(|(name, html)| (name.clone(), snapshot_frames(html)))
        .collect();
    println!("## Snapshot bytes per page (one flush after the snapshot)\n");
    print!("| page | rrweb zstd-19 | raw |");
    for c in &cands {
        print!(" {} |", c.name);
    }
    println!();
    print!("|---|---|---|");
    for _ in &cands {
        print!("---|");
    }
    println!();
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); cands.len()];
    let mut raw_ratio = Vec::new();
    for (name, wire) in &snaps {
        let rr = tandem_benches::rrweb_snapshot(name);
        print!("| {name} | {} | {} |", rr.unwrap_or(0), wire.len());
        if let Some(rr) = rr {
            raw_ratio.push(wire.len() as f64 / rr as f64);
        }
        for (i, c) in cands.iter().enumerate() {
            let z = compress_all(c, std::slice::from_ref(wire));
            check_round_trip(c, std::slice::from_ref(wire), &z);
            let n = z[0].len();
            print!(" {n} |");
            if let Some(rr) = rr {
                ratios[i].push(n as f64 / rr as f64);
            }
        }
        println!();
    }
    print!(
        "| **median ratio to rrweb** | 1 | {:.3} |",
        median(&mut raw_ratio)
    );
    for r in &mut ratios {
        print!(" **{:.3}** |", median(r));
    }
    println!("\n");

    // 2. State sequences.
    println!("## 50-batch state sequences: patch bytes (snapshot excluded)\n");
    println!(
        "| page | codec | snapshot raw / compressed | patches raw | one context, flushed per patch | per patch, fresh context | rrweb one zstd-19 stream | zstd delta of HTML states |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for dir in &tandem_benches::sorted_dirs(&root.join("states")) {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        let batches = state_batches(dir);
        let raw: usize = batches[1..].iter().map(Vec::len).sum();
        let (rr_stream, rr_delta) = tandem_benches::RRWEB_STATES_ZSTD19
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, a, b)| (*a, *b))
            .unwrap_or((0, 0));
        for c in &cands {
            let z = compress_all(c, &batches);
            check_round_trip(c, &batches, &z);
            let ctx: usize = z[1..].iter().map(Vec::len).sum();
            let fresh: usize = batches[1..]
                .iter()
                .map(|b| compress_all(c, std::slice::from_ref(b))[0].len())
                .sum();
            println!(
                "| {name} | {} | {} / {} | {raw} | {ctx} | {fresh} | {rr_stream} | {rr_delta} |",
                c.name,
                batches[0].len(),
                z[0].len()
            );
        }
    }
    println!();

    // 2b. Small patches: the live-page generator, 200 batches of 3 changes.
    println!("## Small patches: 200 batches of 3 seeded changes (LivePage seed 7)\n");
    println!(
        "| page | codec | patches raw | one context, flushed per patch | per patch, fresh context |"
    );
    println!("|---|---|---|---|---|");
    for name in ["mozilla-2", "ars-1", "lwn-1"] {
        let Some((_, html)) = pages.iter().find(|(n, _)| n == name) else {
            continue;
        };
        let batches = live_batches(html, 200, 3);
        let raw: usize = batches[1..].iter().map(Vec::len).sum();
        for c in &cands {
            let z = compress_all(c, &batches);
            check_round_trip(c, &batches, &z);
            let ctx: usize = z[1..].iter().map(Vec::len).sum();
            let fresh: usize = batches[1..]
                .iter()
                .map(|b| compress_all(c, std::slice::from_ref(b))[0].len())
                .sum();
            println!("| {name} | {} | {raw} | {ctx} | {fresh} |", c.name);
        }
    }
    println!();

    // 3. Speed over all snapshots (each its own stream), best of a few runs.
    println!("## Speed over all corpus snapshots (MB/s of uncompressed DOM stream)\n");
    println!("| codec | compress MB/s | decompress MB/s |");
    println!("|---|---|---|");
    let total: usize = snaps.iter().map(|(_, w)| w.len()).sum();
    let runs = if quick { 2 } else { 3 };
    for c in &cands {
        let mut best_c = Duration::MAX;
        let mut best_d = Duration::MAX;
        for _ in 0..runs {
            let t = Instant::now();
            let zs: Vec<Vec<u8>> = snaps
                .iter()
                .map(|(_, w)| compress_all(c, std::slice::from_ref(w)).remove(0))
                .collect();
            best_c = best_c.min(t.elapsed());
            if c.name.starts_with("lz4") {
                continue;
            }
            let t = Instant::now();
            for z in &zs {
                let mut d = (c.decompressor)();
                let mut out = Vec::new();
                d.push(z, &mut out);
                std::hint::black_box(out);
            }
            best_d = best_d.min(t.elapsed());
        }
        let mbs = |d: Duration| total as f64 / 1e6 / d.as_secs_f64();
        if best_d == Duration::MAX {
            println!("| {} | {:.0} | (not measured) |", c.name, mbs(best_c));
        } else {
            println!("| {} | {:.0} | {:.0} |", c.name, mbs(best_c), mbs(best_d));
        }
    }
}
