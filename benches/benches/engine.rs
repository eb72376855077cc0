//! Engine benchmarks: HTML import, snapshot encode and decode (as frames), and one small
//! change through consumer and agent (diff-free change record + encode + apply + hash check).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tandem_engine::{Agent, Consumer, parse_html, snapshot};
use tandem_protocol::{FrameReader, FrameType, Limits, SnapshotView, SymEncoder, frame};

fn import(c: &mut Criterion) {
    let mut g = c.benchmark_group("import");
    for (name, html) in tandem_benches::pages() {
        g.throughput(Throughput::Bytes(html.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(&name), &html, |b, html| {
            b.iter(|| parse_html(html, Limits::DEFAULT))
        });
    }
    g.finish();
}

fn snapshot_frames(c: &mut Criterion) {
    let limits = Limits::DEFAULT;
    let mut g = c.benchmark_group("snapshot_encode_decode");
    for (name, html) in tandem_benches::pages() {
        let mut dom = parse_html(&html, limits);
        dom.root_hash();
        // Throughput in bytes of page HTML, as the target states it.
        g.throughput(Throughput::Bytes(html.len() as u64));
        // As the consumer does: each part written straight into its frame.
        let encode = |dom: &mut tandem_engine::Dom, enc: &mut SymEncoder| {
            let part = snapshot::DEFAULT_PART_BYTES;
            snapshot::encode_frames(dom, 0, "u", enc, part, part).unwrap()
        };
        g.bench_function(BenchmarkId::new("encode", &name), |b| {
            let mut enc = SymEncoder::new(limits);
            b.iter(|| encode(&mut dom, &mut enc))
        });
        let mut enc = SymEncoder::new(limits);
        let wire: Vec<u8> = encode(&mut dom, &mut enc)
            .into_iter()
            .flat_map(|f| f.into_frame().into_vec())
            .collect();
        g.bench_function(BenchmarkId::new("decode", &name), |b| {
            b.iter(|| {
                let mut agent = Agent::new(limits);
                let mut r = FrameReader::new(limits);
                r.push(&wire);
                while let Some(f) = r.next_frame().unwrap() {
                    // SNAPSHOT bodies are read in place, as a receiver does (spec §7.14).
                    if f.ty == FrameType::SNAPSHOT {
                        let view = SnapshotView::parse(&f.body, &limits).unwrap();
                        agent.handle_snapshot(view).unwrap();
                    } else {
                        agent.handle_message(f.decode(&limits).unwrap()).unwrap();
                    }
                }
                agent
            })
        });
    }
    g.finish();
}

fn one_change(c: &mut Criterion) {
    let limits = Limits::DEFAULT;
    let mut g = c.benchmark_group("one_attribute_change");
    for (name, html) in tandem_benches::pages() {
        let mut consumer = Consumer::new(parse_html(&html, limits), "u", limits);
        let mut agent = Agent::new(limits);
        while let Some(m) = consumer.poll_message() {
            agent.handle_message(m).unwrap();
        }
        let target = consumer
            .dom()
            .preorder(0)
            .filter(|&id| {
                consumer
                    .dom()
                    .node(id)
                    .is_some_and(|n| n.element().is_some())
            })
            .last()
            .unwrap();
        let mut tick = 0u64;
        g.bench_function(BenchmarkId::from_parameter(&name), |b| {
            b.iter(|| {
                tick += 1;
                consumer
                    .set_attr(target, "data-tick", &tick.to_string())
                    .unwrap();
                consumer.flush();
                let mut wire = Vec::new();
                while let Some(m) = consumer.poll_message() {
                    frame::encode_frame(&m, &mut wire, &limits).unwrap();
                }
                let m = frame::decode_exact(&wire, &limits).unwrap();
                agent.handle_message(m).unwrap();
                while agent.poll_message().is_some() {}
                while agent.poll_event().is_some() {}
            })
        });
    }
    g.finish();
}

/// A 52,000-node page: 1,000 sections of a heading and a 24-item list.
fn large_page() -> String {
    let mut html = String::from("<!DOCTYPE html><html><head><title>large</title></head><body>");
    for s in 0..1000 {
        html.push_str(&format!(
            "<section id=s{s} class=card><h2>Section {s}</h2><ul>"
        ));
        for i in 0..24 {
            html.push_str(&format!(
                "<li class=item data-i={i}>Item {i} of section {s}</li>"
            ));
        }
        html.push_str("</ul></section>");
    }
    html.push_str("</body></html>");
    html
}

/// Issue 3's target: one small change on a 50,000-node document — record, diff against the
/// shadow, encode, frame, decode, apply on the agent and verify the hash.
fn large_document_change(c: &mut Criterion) {
    let limits = Limits::DEFAULT;
    let mut consumer = Consumer::new(parse_html(&large_page(), limits), "u", limits);
    let mut agent = Agent::new(limits);
    while let Some(m) = consumer.poll_message() {
        agent.handle_message(m).unwrap();
    }
    assert!(consumer.dom().len() > 50_000);
    let dom = consumer.dom();
    let target = dom
        .preorder(0)
        .find(|&id| {
            dom.node(id)
                .and_then(|n| n.element())
                .and_then(|e| e.attr("id"))
                == Some("s500")
        })
        .unwrap();
    let text = dom
        .preorder(target)
        .find(|&id| dom.text(id).is_some())
        .unwrap();
    let mut g = c.benchmark_group("large_document_50k");
    let mut tick = 0u64;
    let round = |consumer: &mut Consumer, agent: &mut Agent| {
        consumer.flush();
        let mut wire = Vec::new();
        while let Some(m) = consumer.poll_message() {
            frame::encode_frame(&m, &mut wire, &limits).unwrap();
        }
        let m = frame::decode_exact(&wire, &limits).unwrap();
        agent.handle_message(m).unwrap();
        while agent.poll_message().is_some() {}
        while agent.poll_event().is_some() {}
    };
    g.bench_function("attribute", |b| {
        b.iter(|| {
            tick += 1;
            consumer
                .set_attr(target, "class", &format!("card open-{tick}"))
                .unwrap();
            round(&mut consumer, &mut agent);
        })
    });
    g.bench_function("text", |b| {
        b.iter(|| {
            tick += 1;
            consumer
                .set_text(text, &format!("Section 500, edit {tick}"))
                .unwrap();
            round(&mut consumer, &mut agent);
        })
    });
    g.finish();
    assert_eq!(agent.tree_hash(), Some(consumer.tree_hash()));
}

criterion_group!(
    benches,
    import,
    snapshot_frames,
    one_change,
    large_document_change
);
criterion_main!(benches);
