//! Shared helpers for Tandem's benchmarks: where the corpus is.
//!
//! The benchmarks read `../shared/corpus/` beside the repository when it is there (the full
//! corpus), otherwise the small credited copy in `testdata/`.
//!
//! Every benchmark links this crate, which sets the allocator: mimalloc, as the `tandem`
//! binary uses, so that figures describe what operators run; `--features system-alloc`
//! measures with the system allocator instead (a vendor that embeds the engine brings its own).

use std::path::{Path, PathBuf};

/// The allocator of every benchmark (module documentation).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The corpus root: the shared corpus if present, else the repository's `testdata/`.
pub fn corpus_root() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shared = repo.join("../shared/corpus");
    if shared.join("pages").is_dir() {
        shared
    } else {
        repo.join("testdata")
    }
}

/// The folders directly inside `dir`, sorted (none when it cannot be read).
pub fn sorted_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Every page of the corpus as (name, HTML), sorted by name.
pub fn pages() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(corpus_root().join("pages")) else {
        return out;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "html")
            && let Ok(bytes) = std::fs::read(&path)
        {
            let name = path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            out.push((name, String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    out.sort();
    out
}

/// rrweb 2.2.2's full snapshot of each corpus page, as JSON compressed with `zstd -19`, in bytes
/// (the reference figures of `../shared/corpus/README.md`): (page, bytes).
pub const RRWEB_SNAPSHOT_ZSTD19: &[(&str, u64)] = &[
    ("001", 5_119),
    ("mozilla-2", 7_908),
    ("ars-1", 12_274),
    ("heise", 16_583),
    ("lwn-1", 20_200),
    ("medium-1", 15_863),
    ("wapo-2", 22_799),
    ("bbc-1", 44_578),
    ("wikipedia", 52_400),
    ("archive-of-our-own", 97_468),
    ("guardian-1", 86_887),
    ("nytimes-3", 33_092),
    ("svg-parsing", 845),
    ("data-url-image", 48_677),
];

/// The 50-batch state sequences' reference figures (corpus README): (page, rrweb's incremental
/// events as one `zstd -19` stream, the summed `zstd -19` deltas of the HTML states).
pub const RRWEB_STATES_ZSTD19: &[(&str, u64, u64)] = &[
    ("mozilla-2", 11_538, 7_105),
    ("ars-1", 12_356, 7_461),
    ("lwn-1", 12_696, 7_883),
];

/// The reference figure of `page` in [`RRWEB_SNAPSHOT_ZSTD19`], if the page has one.
pub fn rrweb_snapshot(page: &str) -> Option<u64> {
    RRWEB_SNAPSHOT_ZSTD19
        .iter()
        .find(|(n, _)| *n == page)
        .map(|(_, b)| *b)
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// A state sequence (`k.html`, `k = 0, 1, …`) replayed as `tandem replay` does it: a consumer
/// sends the snapshot of `0.html`, then diffs each state against the one before and sends the
/// patch; an agent applies every frame, checking each hash.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    /// The snapshot's frames, uncompressed, as the consumer wrote them.
    pub snapshot: Vec<u8>,
    /// The snapshot's messages, in order.
    pub snapshot_messages: Vec<tandem_protocol::Message>,
    /// The messages of each step after the snapshot.
    pub steps: Vec<Vec<tandem_protocol::Message>>,
}

/// Replays the state sequence in `dir`; `None` when it has no `0.html`.
///
/// # Panics
///
/// When the replay does not converge or a frame does not round-trip: the benchmarks measure
/// only replays that work.
pub fn replay(dir: &Path, limits: tandem_protocol::Limits) -> Option<Replay> {
    use tandem_engine::{Agent, Consumer, parse_html};
    let read = |k: usize| std::fs::read_to_string(dir.join(format!("{k}.html"))).ok();
    let mut consumer = Consumer::new(parse_html(&read(0)?, limits), "", limits);
    let mut agent = Agent::new(limits);
    let mut out = Replay::default();
    for k in 0.. {
        if k > 0 {
            let Some(html) = read(k) else { break };
            let mut target = parse_html(&html, limits);
            consumer
                .update_to(&mut target)
                .expect("the replay converges");
            consumer.flush();
        }
        let mut step = Vec::new();
        while let Some(f) = consumer.poll_frame() {
            let bytes = f.expect("frames encode").bytes;
            let msg = tandem_protocol::frame::decode_exact(&bytes, &limits).expect("frames decode");
            agent
                .handle_message(msg.clone())
                .expect("the agent applies");
            if k == 0 {
                out.snapshot.extend_from_slice(&bytes);
                out.snapshot_messages.push(msg);
            } else {
                step.push(msg);
            }
        }
        while let Some(reply) = agent.poll_message() {
            consumer
                .handle_message(&reply)
                .expect("the consumer takes replies");
        }
        if k > 0 {
            out.steps.push(step);
        }
    }
    Some(out)
}

impl Replay {
    /// The compressed bytes of the steps after the snapshot, each step flushed, as `tandem
    /// replay` counts them (`COMPRESSED` frame headers included), with every message first
    /// passed through `view` (the identity for the stream as sent). The stream is the one the
    /// reference consumer sends when the session holds `CODED_PATCHES`: codec 0x02, each patch
    /// coded (spec §4.6.5, §4.7). [`Replay::compressed_steps_with`] picks the codec.
    ///
    /// # Panics
    ///
    /// When `view` makes a message that does not encode.
    pub fn compressed_steps(
        &self,
        limits: &tandem_protocol::Limits,
        view: impl Fn(&tandem_protocol::Message) -> tandem_protocol::Message,
    ) -> usize {
        self.compressed_steps_with(tandem_protocol::compress::Codec::CodedPatches, limits, view)
    }

    /// [`Replay::compressed_steps`] on a stream of `codec` ([`Codec::Zstd`] for zstd alone,
    /// spec §4.6.2).
    ///
    /// [`Codec::Zstd`]: tandem_protocol::compress::Codec::Zstd
    ///
    /// # Panics
    ///
    /// When `view` makes a message that does not encode.
    pub fn compressed_steps_with(
        &self,
        codec: tandem_protocol::compress::Codec,
        limits: &tandem_protocol::Limits,
        view: impl Fn(&tandem_protocol::Message) -> tandem_protocol::Message,
    ) -> usize {
        use tandem_protocol::compress::{self, DomCompressor};
        let level = compress::level_for_snapshot(self.snapshot.len());
        let mut zstd = DomCompressor::with_codec(level, codec).expect("zstd starts");
        let mut out = Vec::new();
        zstd.write_frames(&self.snapshot, &mut out, limits)
            .expect("zstd compresses");
        let mut total = 0;
        for step in &self.steps {
            let mut frames = Vec::new();
            for msg in step {
                tandem_protocol::frame::encode_frame(&view(msg), &mut frames, limits)
                    .expect("frames encode");
            }
            out.clear();
            zstd.write_frames(&frames, &mut out, limits)
                .expect("zstd compresses");
            total += out.len();
        }
        total
    }
}
