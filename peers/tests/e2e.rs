//! Issue 2's end-to-end check: relay, consumer and agent over real QUIC on loopback; after a
//! stream of changes the agent's tree hash equals the consumer's.

use std::path::Path;
use std::time::Duration;

use tandem_peers::demo::{DemoArgs, demo};

fn args(page: Option<&Path>, batches: u64) -> DemoArgs {
    DemoArgs {
        page: page.map(Path::to_path_buf),
        batches,
        interval_ms: 5,
        seed: 3,
        json: true,
        ..DemoArgs::default()
    }
}

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_changes_over_quic_converge() {
    let report = tokio::time::timeout(Duration::from_secs(60), demo(&args(None, 30)))
        .await
        .expect("demo finishes")
        .expect("demo runs");
    assert!(report.hashes_match, "{report:?}");
    // Changes fold while a patch is unacknowledged (backpressure, crate::pump): at most one
    // patch per batch, and the agent ends on the page's last state.
    assert!(
        (1..=30).contains(&report.patches),
        "{} patches for 30 batches",
        report.patches
    );
    assert!(report.first_render_ms.is_some());
    assert_eq!(report.divergences, 0);
    // Both sides offer COMPRESSION and CODED_PATCHES, so the DOM stream was compressed with
    // codec 0x02 (spec §4.6.5) and the agent received exactly what the consumer wrote.
    assert!(report.compressed, "{report:?}");
    assert!(report.coded_patches, "{report:?}");
    assert!(
        report.snapshot_wire_bytes < report.snapshot_bytes,
        "{report:?}"
    );
    assert!(report.patch_wire_bytes < report.patch_bytes, "{report:?}");
    assert_eq!(
        report.agent_dom_wire_bytes,
        report.snapshot_wire_bytes + report.patch_wire_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncompressed_sessions_still_converge() {
    let mut a = args(None, 10);
    a.no_compression = true;
    let report = tokio::time::timeout(Duration::from_secs(60), demo(&a))
        .await
        .expect("demo finishes")
        .expect("demo runs");
    assert!(report.hashes_match, "{report:?}");
    assert!(!report.compressed);
    assert!(!report.coded_patches);
    assert_eq!(report.snapshot_wire_bytes, report.snapshot_bytes);
    assert_eq!(report.patch_wire_bytes, report.patch_bytes);
    assert_eq!(
        report.agent_dom_wire_bytes,
        report.snapshot_bytes + report.patch_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_states_over_quic_converge() {
    let dir = repo().join("testdata/states/mozilla-2");
    let out = std::env::temp_dir().join(format!("tandem-e2e-{}.html", std::process::id()));
    let mut a = args(Some(&dir), 100);
    a.out = Some(out.clone());
    let report = tokio::time::timeout(Duration::from_secs(60), demo(&a))
        .await
        .expect("demo finishes")
        .expect("demo runs");
    assert!(report.hashes_match, "{report:?}");
    assert!(
        (1..=5).contains(&report.patches),
        "states 1..=5 make at most one patch each: {}",
        report.patches
    );
    // The agent wrote the final page; it parses back to the consumer's tree.
    let html = std::fs::read_to_string(&out).expect("agent wrote --out");
    let _ = std::fs::remove_file(&out);
    let mut written = tandem_engine::parse_html(&html, tandem_protocol::Limits::DEFAULT);
    let mut last = tandem_engine::parse_html(
        &std::fs::read_to_string(dir.join("5.html")).expect("state 5"),
        tandem_protocol::Limits::DEFAULT,
    );
    assert_eq!(written.root_hash(), last.root_hash());
}

#[test]
fn snapshot_command_reports_and_writes_frames() {
    let page = repo().join("testdata/pages/001.html");
    let out = std::env::temp_dir().join(format!("tandem-snap-{}.bin", std::process::id()));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["snapshot", "--json", "--out"])
        .arg(&out)
        .arg(&page)
        .output()
        .expect("run tandem snapshot");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON");
    let bytes = std::fs::read(&out).expect("--out written");
    let _ = std::fs::remove_file(&out);
    assert_eq!(report["snapshot_bytes"].as_u64(), Some(bytes.len() as u64));
    // The frames decode into the same tree the report hashes.
    let limits = tandem_protocol::Limits::DEFAULT;
    let mut agent = tandem_engine::Agent::new(limits);
    let mut reader = tandem_protocol::FrameReader::new(limits);
    reader.push(&bytes);
    while let Some(f) = reader.next_frame().expect("frame") {
        agent
            .handle_message(f.decode(&limits).expect("decode"))
            .expect("apply");
    }
    let hash: String = agent
        .tree_hash()
        .expect("rendered")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(report["hash"].as_str(), Some(hash.as_str()));
    assert!(report["nodes"].as_u64().unwrap_or(0) > 100);
}

/// Runs `tandem ARGS` with the read end of its stdout closed at once (`| head -0`), and checks
/// that it neither panics nor fails for that.
fn assert_runs_without_a_reader(args: &[&str]) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tandem");
    // Close the only read end of the pipe while the command is still working.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
}

/// A report whose reader left before it was written: the exit status still reports the
/// verification.
#[test]
fn a_report_reader_that_left_is_not_an_error() {
    let dir = repo().join("testdata/states/mozilla-2");
    assert_runs_without_a_reader(&["replay", dir.to_str().expect("utf-8 path")]);
}

/// A session's own output (`say!`) that nobody reads: `tandem demo` finishes its session.
#[test]
fn a_session_whose_reader_left_runs_to_the_end() {
    assert_runs_without_a_reader(&["demo", "--batches", "3"]);
}

/// Kills the child when dropped, so that a failing test leaves no process behind.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A consumer whose standard error nobody reads any more (`2>&1 | head`) goes on with its
/// session: its notes on stderr (`consumer: read the code out…`) are dropped, not a panic.
#[test]
fn a_consumer_whose_stderr_reader_left_keeps_its_session() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let tandem = env!("CARGO_BIN_EXE_tandem");
    let mut relay = Reaped(
        Command::new(tandem)
            .args(["relay", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run the relay"),
    );
    let mut lines = BufReader::new(relay.0.stdout.take().expect("stdout")).lines();
    let mut field = |name: &str| loop {
        let line = lines
            .next()
            .expect("the relay prints its address")
            .expect("utf-8");
        if let Some(v) = line.strip_prefix(name) {
            break v.trim().to_owned();
        }
    };
    let addr = field("listening:");
    let pin = field("fingerprint:");
    let page = repo().join("testdata/pages/001.html");
    let mut consumer = Reaped(
        Command::new(tandem)
            .args(["consumer", "--relay", &addr, "--pin", &pin])
            .arg(&page)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the consumer"),
    );
    // The reader of stderr goes away before the consumer writes its first note.
    drop(consumer.0.stderr.take());
    let out = BufReader::new(consumer.0.stdout.take().expect("stdout"));
    let printed: Vec<String> = out.lines().map_while(Result::ok).take(2).collect();
    assert!(printed[0].starts_with("code: "), "{printed:?}");
    // The note follows the code at once; give a panic the time to end the process.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let status = consumer.0.try_wait().expect("try_wait");
    assert!(status.is_none(), "the consumer ended: {status:?}");
}

fn run_tandem(args: &[&str]) -> (bool, serde_json::Value) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .output()
        .expect("run tandem");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.success(), json)
}

#[test]
fn diff_command_verifies_a_morph_pair() {
    let pair = repo().join("testdata/morph-pairs/todomvc");
    let (ok, r) = run_tandem(&[
        "diff",
        "--json",
        pair.join("from.html").to_str().expect("utf-8 path"),
        pair.join("to.html").to_str().expect("utf-8 path"),
    ]);
    assert!(ok, "{r}");
    assert_eq!(r["verified"], true);
    assert!(r["patch_bytes"].as_u64().unwrap_or(0) > 0);
    assert!(!r["ops"].as_array().expect("ops").is_empty());
}

#[test]
fn replay_command_verifies_every_state() {
    let dir = repo().join("testdata/states/mozilla-2");
    let (ok, r) = run_tandem(&["replay", "--json", dir.to_str().expect("utf-8 path")]);
    assert!(ok, "{r}");
    assert_eq!(r["verified"], true);
    assert_eq!(r["steps"].as_array().expect("steps").len(), 5);
}

/// `tandem demo --mask-selector '#items'`: the consumer masks before anything is sent, so the
/// agent's page has stars where the order lines were, and the hashes still agree (the agent
/// holds exactly the masked tree).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_honours_the_masking_flags() {
    let out = std::env::temp_dir().join(format!("tandem-e2e-mask-{}.html", std::process::id()));
    let mut a = args(None, 3);
    a.out = Some(out.clone());
    a.mask.mask_selector = vec!["#order-number".into(), ".total".into()];
    let report = tokio::time::timeout(Duration::from_secs(60), demo(&a))
        .await
        .expect("demo finishes")
        .expect("demo runs");
    assert!(report.hashes_match, "{report:?}");
    let html = std::fs::read_to_string(&out).expect("the agent wrote its page");
    let _ = std::fs::remove_file(&out);
    assert!(html.contains("Order <span"), "the page arrived: {html}");
    assert!(
        !html.contains("NW-48213</span>"),
        "the order number is masked"
    );
    assert!(!html.contains("394.00"), "the total is masked");
    assert!(html.contains("********"), "masked text shows as stars");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_told_to_join_later_connects_after_the_wait() {
    let mut a = args(None, 0);
    a.join_after = Some(1500);
    let report = tokio::time::timeout(Duration::from_secs(60), demo(&a))
        .await
        .expect("demo finishes")
        .expect("demo runs");
    assert!(report.hashes_match, "{report:?}");
    // The session lasted the wait and more; the agent's own times count from its connection,
    // which on loopback takes milliseconds.
    assert!(report.total_ms >= 1500.0, "{report:?}");
    assert!(report.agent_join_ms < 1000.0, "{report:?}");
    assert!(report.first_render_ms.is_some());
}
