//! Bytes on the wire and the cost of compressing them (spec §4.6).
//!
//! Before criterion runs, prints two tables that criterion cannot measure:
//!
//! 1. every corpus page's snapshot: frame bytes, compressed bytes as the reference consumer sends
//!    them (one `DomCompressor` per DOM stream at the level `level_for_snapshot` picks, a flush
//!    after every message), and the ratio to
//!    rrweb's full snapshot compressed with `zstd -19` (the target: at most 0.6 on the
//!    median page);
//! 2. every state sequence of the corpus: the 50 batches' patch bytes, raw and compressed with
//!    the stream's context, by zstd alone (codec 0x01) and with the patches coded (codec 0x02,
//!    what the reference consumer sends), next to rrweb's incremental events as one `zstd -19`
//!    stream and the summed `zstd -19` deltas of the HTML states.
//!
//! Then criterion times compression and decompression of each snapshot (throughput in
//! uncompressed bytes) and of one small patch on a stream that already carries its page's
//! snapshot (the steady state), with each codec, and a page-sized patch through the patch
//! coder and zstd (throughput in frame bytes).
//!
//! Run: `cargo bench -p tandem-benches --bench wire`.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tandem_engine::{Consumer, LivePage, parse_html};
use tandem_protocol::compress::{
    Codec, DEFAULT_LEVEL, DomCompressor, DomDecompressor, level_for_snapshot,
};
use tandem_protocol::{Limits, frame};

const URL: &str = "https://example.com/";

/// The frames of each message the consumer queued, one buffer per message.
fn drain(consumer: &mut Consumer) -> Vec<Vec<u8>> {
    let limits = Limits::DEFAULT;
    let mut out = Vec::new();
    while let Some(msg) = consumer.poll_message() {
        out.push(frame::to_frame(&msg, &limits).expect("encodes"));
    }
    out
}

/// Wire bytes of `messages` through `c`, one flush per message, as `COMPRESSED` frames.
fn wire_bytes(c: &mut DomCompressor, messages: &[Vec<u8>]) -> usize {
    let limits = Limits::DEFAULT;
    let mut wire = Vec::new();
    for m in messages {
        c.write_frames(m, &mut wire, &limits).expect("compresses");
    }
    wire.len()
}

fn print_tables() {
    let limits = Limits::DEFAULT;
    eprintln!(
        "\nSnapshot bytes on the wire (zstd level {}, {} above {} KiB; dictionary dom-v1; a flush \
         per part)\n",
        tandem_protocol::compress::DEFAULT_LEVEL,
        tandem_protocol::compress::LARGE_SNAPSHOT_LEVEL,
        tandem_protocol::compress::LARGE_SNAPSHOT_BYTES / 1024
    );
    eprintln!("| page | nodes | frames | compressed | rrweb zstd-19 | ratio |");
    eprintln!("|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for (name, html) in tandem_benches::pages() {
        let dom = parse_html(&html, limits);
        let nodes = dom.len();
        let mut consumer = Consumer::new(dom, URL, limits);
        let parts = drain(&mut consumer);
        let raw: usize = parts.iter().map(Vec::len).sum();
        let mut c = DomCompressor::with_level(level_for_snapshot(raw)).expect("compressor");
        let wire = wire_bytes(&mut c, &parts);
        match tandem_benches::rrweb_snapshot(&name) {
            Some(rr) => {
                let ratio = wire as f64 / rr as f64;
                ratios.push(ratio);
                eprintln!("| {name} | {nodes} | {raw} | {wire} | {rr} | {ratio:.3} |");
            }
            None => eprintln!("| {name} | {nodes} | {raw} | {wire} | — | — |"),
        }
    }
    if let Some(m) = tandem_benches::median(&mut ratios) {
        eprintln!("| **median** | | | | | **{m:.3}** |");
    }

    eprintln!("\nState sequences: patch bytes of all batches (snapshot excluded)\n");
    eprintln!(
        "| page | batches | patches raw | zstd (0x01) | coded (0x02) | rrweb zstd-19 stream | ratio (0x02) | zstd delta of states |"
    );
    eprintln!("|---|---|---|---|---|---|---|---|");
    for dir in tandem_benches::sorted_dirs(&tandem_benches::corpus_root().join("states")) {
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let read = |k: usize| std::fs::read(dir.join(format!("{k}.html"))).ok();
        let Some(first) = read(0) else { continue };
        let mut consumer = Consumer::new(
            parse_html(&String::from_utf8_lossy(&first), limits),
            URL,
            limits,
        );
        let snapshot = drain(&mut consumer);
        let raw: usize = snapshot.iter().map(Vec::len).sum();
        let level = level_for_snapshot(raw);
        let mut zstd = DomCompressor::with_codec(level, Codec::Zstd).expect("compressor");
        let mut c = DomCompressor::with_codec(level, Codec::CodedPatches).expect("compressor");
        wire_bytes(&mut zstd, &snapshot);
        wire_bytes(&mut c, &snapshot);
        let (mut raw, mut zstd_wire, mut wire, mut batches) = (0, 0, 0, 0);
        for k in 1.. {
            let Some(html) = read(k) else { break };
            let mut target = parse_html(&String::from_utf8_lossy(&html), limits);
            consumer.update_to(&mut target).expect("update");
            consumer.flush();
            let msgs = drain(&mut consumer);
            raw += msgs.iter().map(Vec::len).sum::<usize>();
            zstd_wire += wire_bytes(&mut zstd, &msgs);
            wire += wire_bytes(&mut c, &msgs);
            batches += 1;
        }
        let reference = tandem_benches::RRWEB_STATES_ZSTD19
            .iter()
            .find(|(n, _, _)| *n == name);
        match reference {
            Some((_, rr, delta)) => eprintln!(
                "| {name} | {batches} | {raw} | {zstd_wire} | {wire} | {rr} | {:.3} | {delta} |",
                wire as f64 / *rr as f64
            ),
            None => eprintln!("| {name} | {batches} | {raw} | {zstd_wire} | {wire} | — | — | — |"),
        }
    }
    eprintln!();
}

fn snapshots(c: &mut Criterion) {
    print_tables();
    let limits = Limits::DEFAULT;
    let mut g = c.benchmark_group("wire_snapshot");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, html) in tandem_benches::pages() {
        let mut consumer = Consumer::new(parse_html(&html, limits), URL, limits);
        let parts = drain(&mut consumer);
        let raw: usize = parts.iter().map(Vec::len).sum();
        g.throughput(Throughput::Bytes(raw as u64));
        g.bench_function(BenchmarkId::new("compress", &name), |b| {
            b.iter(|| {
                let mut c = DomCompressor::with_level(level_for_snapshot(raw)).expect("compressor");
                wire_bytes(&mut c, &parts)
            })
        });
        let mut wire = Vec::new();
        let mut c = DomCompressor::with_level(level_for_snapshot(raw)).expect("compressor");
        for p in &parts {
            c.compress(p, &mut wire).expect("compresses");
        }
        g.bench_function(BenchmarkId::new("decompress", &name), |b| {
            b.iter(|| {
                let mut d = DomDecompressor::new(limits).expect("decompressor");
                d.push(&wire).expect("pushes");
                let mut n = 0;
                while let Some(f) = d.next_frame().expect("decodes") {
                    n += f.body.len();
                }
                n
            })
        });
    }
    g.finish();
}

fn small_patch(c: &mut Criterion) {
    let limits = Limits::DEFAULT;
    let mut g = c.benchmark_group("wire_patch");
    for name in ["mozilla-2", "wikipedia"] {
        let Some((_, html)) = tandem_benches::pages().into_iter().find(|(n, _)| n == name) else {
            continue;
        };
        // A stream that already carries the snapshot, then one patch of three seeded changes.
        let mut consumer = Consumer::new(parse_html(&html, limits), URL, limits);
        let snapshot = drain(&mut consumer);
        let mut live = LivePage::new(11);
        live.step(&mut consumer, 3).expect("changes");
        consumer.flush();
        let patch = drain(&mut consumer).concat();
        g.throughput(Throughput::Elements(1));
        for (codec, label) in [(Codec::Zstd, "zstd"), (Codec::CodedPatches, "coded")] {
            let id = |what: &str| BenchmarkId::new(format!("{what}/{label}"), name);
            g.bench_function(id("compress"), |b| {
                let mut c = DomCompressor::with_codec(DEFAULT_LEVEL, codec).expect("compressor");
                wire_bytes(&mut c, &snapshot);
                let mut out = Vec::new();
                b.iter(|| {
                    out.clear();
                    c.compress(&patch, &mut out).expect("compresses")
                })
            });
            g.bench_function(id("compress_then_decompress"), |b| {
                let mut c = DomCompressor::with_codec(DEFAULT_LEVEL, codec).expect("compressor");
                let mut d = DomDecompressor::new(limits).expect("decompressor");
                let mut out = Vec::new();
                for p in &snapshot {
                    out.clear();
                    c.compress(p, &mut out).expect("compresses");
                    d.push(&out).expect("pushes");
                    while d.next_frame().expect("decodes").is_some() {}
                }
                b.iter(|| {
                    out.clear();
                    c.compress(&patch, &mut out).expect("compresses");
                    d.push(&out).expect("pushes");
                    let mut n = 0;
                    while let Some(f) = d.next_frame().expect("decodes") {
                        n += f.body.len();
                    }
                    n
                })
            });
        }
    }
    g.finish();
}

/// A page-sized patch (the whole page inserted under the document), coded by the patch coder
/// and by zstd: why the reference sender codes only patches up to `MAX_CODED_PATCH_FRAME`.
fn page_sized_patch(c: &mut Criterion) {
    use tandem_protocol::message::Patch;
    use tandem_protocol::patch_coder::{PatchDecoder, PatchEncoder};
    use tandem_protocol::{Message, PatchOp, Place};
    let limits = Limits::DEFAULT;
    let mut g = c.benchmark_group("wire_page_patch");
    for name in ["mozilla-2", "wikipedia"] {
        let Some((_, html)) = tandem_benches::pages().into_iter().find(|(n, _)| n == name) else {
            continue;
        };
        let mut consumer = Consumer::new(parse_html(&html, limits), URL, limits);
        let mut nodes = Vec::new();
        for f in drain(&mut consumer) {
            if let Ok(Message::Snapshot(s)) = frame::decode_exact(&f, &limits) {
                nodes.extend(s.nodes);
            }
        }
        let patch = Patch {
            epoch: 1,
            seq: 1,
            ops: vec![PatchOp::Insert {
                at: Place::First(0),
                first: 1 << 20,
                nodes,
            }],
            hash: [0; 8],
        };
        let raw = frame::to_frame(&Message::Patch(patch.clone()), &limits).expect("encodes");
        g.throughput(Throughput::Bytes(raw.len() as u64));
        g.bench_function(BenchmarkId::new("coded/encode", name), |b| {
            let mut e = PatchEncoder::new();
            let mut out = Vec::new();
            b.iter(|| {
                out.clear();
                e.encode(&patch, &mut out);
                out.len()
            })
        });
        g.bench_function(BenchmarkId::new("coded/decode", name), |b| {
            let mut coded = Vec::new();
            PatchEncoder::new().encode(&patch, &mut coded);
            b.iter_batched(
                || PatchDecoder::new(limits),
                |mut d| d.decode(&coded).expect("decodes").ops.len(),
                criterion::BatchSize::LargeInput,
            )
        });
        // zstd on a fresh stream each time: the same patch again would be one long match.
        g.bench_function(BenchmarkId::new("zstd/compress", name), |b| {
            b.iter_batched(
                || DomCompressor::new().expect("compressor"),
                |mut z| {
                    let mut out = Vec::new();
                    z.compress(&raw, &mut out).expect("compresses")
                },
                criterion::BatchSize::LargeInput,
            )
        });
        g.bench_function(BenchmarkId::new("zstd/decompress", name), |b| {
            let mut z = Vec::new();
            let mut c = DomCompressor::new().expect("compressor");
            c.compress(&raw, &mut z).expect("compresses");
            b.iter_batched(
                || DomDecompressor::new(limits).expect("decompressor"),
                |mut d| {
                    d.push(&z).expect("pushes");
                    let mut n = 0;
                    while let Some(f) = d.next_frame().expect("decodes") {
                        n += f.body.len();
                    }
                    n
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, snapshots, small_patch, page_sized_patch);
criterion_main!(benches);
