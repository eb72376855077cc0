//! Diff benchmarks (issue 3): for each morph pair of the corpus, a consumer built from
//! `from.html` is brought to a fresh parse of `to.html` with `Consumer::update_to`, then
//! flushed and its `PATCH` framed. Timed: hashing the new tree, the diff, building and
//! encoding the patch (not the HTML parses, not the consumer's first snapshot, not freeing
//! the trees afterwards).
//!
//! ```text
//! cargo bench -p tandem-benches --bench diff
//! ```
//!
//! The issue's target: each pair well under the 2.88 ms morphdom publishes for `large`.

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use tandem_engine::{Consumer, Dom, parse_html};
use tandem_protocol::{Limits, frame};

/// The morph pairs of the corpus as (name, from, to), sorted by name.
fn morph_pairs() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(tandem_benches::corpus_root().join("morph-pairs")) else {
        return out;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        let read = |n: &str| std::fs::read(path.join(n)).ok();
        if let (Some(from), Some(to)) = (read("from.html"), read("to.html")) {
            out.push((
                entry.file_name().to_string_lossy().into_owned(),
                String::from_utf8_lossy(&from).into_owned(),
                String::from_utf8_lossy(&to).into_owned(),
            ));
        }
    }
    out.sort();
    out
}

fn consumer_at(from: &Dom, limits: Limits) -> Consumer {
    let mut c = Consumer::new(from.clone(), "u", limits);
    while c.poll_message().is_some() {}
    c
}

fn diff_morph_pairs(c: &mut Criterion) {
    let limits = Limits::DEFAULT;
    let mut g = c.benchmark_group("diff_morph_pairs");
    g.warm_up_time(std::time::Duration::from_millis(500));
    g.measurement_time(std::time::Duration::from_secs(2));
    for (name, from, to) in morph_pairs() {
        let from = parse_html(&from, limits);
        let to = parse_html(&to, limits);
        g.bench_function(BenchmarkId::from_parameter(&name), |b| {
            b.iter_batched(
                || (consumer_at(&from, limits), to.clone()),
                |(mut consumer, mut target)| {
                    consumer.update_to(&mut target).unwrap();
                    consumer.flush();
                    let mut wire = Vec::new();
                    while let Some(m) = consumer.poll_message() {
                        frame::encode_frame(&m, &mut wire, &limits).unwrap();
                    }
                    // Returned, so that criterion drops them outside the measurement.
                    (consumer, target, wire)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, diff_morph_pairs);
criterion_main!(benches);
