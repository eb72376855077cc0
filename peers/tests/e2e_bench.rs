//! Issue 7 item 6: the end-to-end benchmark's parts. The TCP link forwarder on real sockets,
//! the websocket baseline over it, one Tandem measurement, and the CSV, checks and SVG.
//! (Tandem over 300ms,750kbit,1% is `link.rs`'s `demo_over_a_bad_link_converges`.)
//!
//! Timings are only bounded from below, by what the emulated delay and rate make certain.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tandem_peers::bench::{self, Measurement, Returning, System};
use tandem_peers::demo::{PointerLatency, PointerSample};
use tandem_peers::link::{LinkSpec, MSS, TCP_OVERHEAD, TcpLink};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn spec(s: &str) -> LinkSpec {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

fn small_page() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/pages/001.html")
}

/// 200 kB each way through a lossy, rate-limited TCP link arrive whole and in order, no
/// sooner than the handshake and the rate allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_link_delivers_the_stream_intact() {
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = server.local_addr().unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let echo = tokio::spawn(async move {
        let (mut s, _) = server.accept().await.unwrap();
        let mut got = vec![0u8; 200_000];
        s.read_exact(&mut got).await.unwrap();
        s.write_all(&got).await.unwrap();
        s.shutdown().await.unwrap();
    });
    let link = TcpLink::spawn(server_addr, &spec("20ms,10mbit,5%,seed=9"))
        .await
        .unwrap();
    let started = Instant::now();
    let mut client = tokio::net::TcpStream::connect(link.addr()).await.unwrap();
    let (mut rd, mut wr) = client.split();
    let send = async {
        wr.write_all(&payload).await.unwrap();
    };
    let mut back = Vec::new();
    let receive = async {
        rd.read_to_end(&mut back).await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(send, receive)
    })
    .await
    .expect("the echo finishes");
    let elapsed = started.elapsed();
    echo.await.unwrap();
    assert!(back == payload, "bytes differ ({} of 200000)", back.len());
    // Handshake (40 ms), 200 kB up and back at 10 Mbit/s (2 × 160 ms) and the delays.
    assert!(
        elapsed >= Duration::from_millis(40 + 320 + 40),
        "{elapsed:?}"
    );
    let stats = link.stats();
    assert_eq!(stats.up.bytes, 200_000);
    assert_eq!(stats.down.bytes, 200_000);
    assert!(stats.up.segments >= 200_000 / MSS as u64);
    assert!(stats.up.lost + stats.down.lost > 0, "5 % loss: {stats:?}");
    assert_eq!(
        stats.wire_down(),
        200_000 + (stats.down.segments + 1 + stats.up.acks) * TCP_OVERHEAD as u64
    );
}

/// The baseline delivers exactly the page's gzip bytes, which inflate to the page, and pays
/// the TCP handshake, the TLS handshake and the upgrade request: three round trips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_delivers_the_gzip_bytes_after_three_round_trips() {
    let html = std::fs::read(small_page()).unwrap();
    let run = tokio::time::timeout(
        Duration::from_secs(30),
        bench::baseline(&html, &spec("50ms,1%,seed=3")),
    )
    .await
    .expect("the baseline finishes")
    .expect("the baseline runs");
    assert_eq!(run.body, bench::gzip(&html));
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(run.body.as_slice())
        .read_to_end(&mut inflated)
        .unwrap();
    assert_eq!(inflated, html);
    assert!(
        run.complete >= Duration::from_millis(300),
        "{:?}",
        run.complete
    );
    // Everything the server sent, with TLS records and headers, crossed the link down.
    assert!(
        run.link.wire_down() > run.body.len() as u64,
        "{:?}",
        run.link
    );
    assert!(run.link.down.bytes > run.body.len() as u64);
    assert!(run.link.wire_up() > bench::UPGRADE_REQUEST.len() as u64);
}

/// `bench::measure` of both systems on one small page: the figures are there and each time
/// is at least its round trips (Tandem: QUIC handshake, HELLO, JOIN, then the snapshot over
/// the consumer's and the agent's links).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measure_reports_both_systems() {
    let name = "50ms,4mbit,1%";
    let link = bench::link_for(name, "001").unwrap();
    assert_eq!(
        link,
        bench::link_for(name, "001").unwrap(),
        "seeds are fixed"
    );
    assert_ne!(link.seed, bench::link_for(name, "002").unwrap().seed);
    let page = small_page();
    let run = |system| bench::measure(system, &page, name, &link);
    let (tandem, baseline) = tokio::time::timeout(Duration::from_secs(60), async {
        (run(System::Tandem).await, run(System::Baseline).await)
    })
    .await
    .expect("both finish");
    let (tandem, baseline) = (
        tandem.expect("tandem runs"),
        baseline.expect("baseline runs"),
    );
    assert_eq!(tandem.page, "001");
    assert_eq!(tandem.page_bytes, std::fs::metadata(&page).unwrap().len());
    // At least four one-way delays of 50 ms: the QUIC handshake (two), HELLO and JOIN to the
    // relay, and the snapshot (sent ahead to the relay, spec §3.2) on to the agent.
    assert!(tandem.complete_ms >= 200.0, "{tandem:?}");
    assert!(tandem.first_render_ms <= tandem.complete_ms);
    assert!(baseline.complete_ms >= 300.0, "{baseline:?}");
    for m in [&tandem, &baseline] {
        assert!(m.wire_bytes_up > 0 && m.wire_bytes_down > 1000, "{m:?}");
        assert_eq!(m.link, name);
        let bound = m.bound_ms().unwrap();
        // bytes × 8 / 4 Mbit/s + 2 × 100 ms.
        let expected = m.wire_bytes_down as f64 * 8.0 / 4000.0 + 200.0;
        assert!((bound - expected).abs() < 1e-6, "{bound} vs {expected}");
    }
}

fn row(page: &str, bytes: u64, link: &str, system: System, first: f64, done: f64) -> Measurement {
    Measurement {
        page: page.into(),
        page_bytes: bytes,
        link: link.into(),
        spec: spec(link),
        system,
        first_render_ms: first,
        complete_ms: done,
        joined_ms: match system {
            System::Tandem => Some(first.min(1_250.0)),
            System::Baseline => None,
        },
        wire_bytes_up: 1_000,
        wire_bytes_down: match system {
            System::Tandem => 30_000,
            System::Baseline => 60_000,
        },
        pointer: None,
        returning: None,
    }
}

/// Pointer latencies: `arrived` of `sent`, with this 95th percentile.
fn pointers(sent: usize, arrived: usize, p95: Option<f64>) -> Option<PointerLatency> {
    Some(PointerLatency {
        sent,
        arrived,
        p50_ms: p95.map(|p| p - 10.0),
        p95_ms: p95,
        max_ms: p95.map(|p| p + 10.0),
    })
}

#[test]
fn csv_checks_and_svg() {
    let l = bench::TARGET_LINK;
    let mut rows = vec![
        row("big", 200_000, l, System::Tandem, 500.0, 1_900.0),
        row("big", 200_000, l, System::Baseline, 2_400.0, 2_400.0),
        row("small", 3_000, l, System::Tandem, 1_000.0, 1_000.0),
        row("small", 3_000, l, System::Baseline, 900.0, 900.0),
        row("small", 3_000, "loopback", System::Tandem, 5.0, 5.0),
        row("small", 3_000, "loopback", System::Baseline, 3.0, 3.0),
        row("slow", 300_000, l, System::Tandem, 600.0, 1_900.0),
        row("slow", 300_000, l, System::Baseline, 2_400.0, 2_400.0),
    ];
    // Two links of 300 ms: the pointer may take 650 ms at the 95th percentile.
    rows[0].pointer = pointers(40, 39, Some(650.0));
    rows[2].pointer = pointers(0, 0, None);
    rows[6].pointer = pointers(40, 40, Some(651.0));
    // A returning agent's first render: 700 ms is within 2400 / 3, 900 ms is not.
    rows[0].returning = Some(Returning {
        first_render_ms: 700.0,
        complete_ms: 1_500.0,
    });
    rows[6].returning = Some(Returning {
        first_render_ms: 900.0,
        complete_ms: 1_700.0,
    });
    let csv = bench::csv(&rows);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "page,page_bytes,link,system,first_render_ms,complete_ms,wire_bytes_up,wire_bytes_down,bound_ms,ratio_to_bound,pointer_arrived,pointer_p95_ms,returning_first_render_ms,returning_complete_ms,joined_ms"
    );
    // 30 000 B at 750 kbit/s = 320 ms, + 2 × 600 ms.
    assert_eq!(
        lines[1],
        "big,200000,\"300ms,750kbit,1%\",tandem,500.0,1900.0,1000,30000,1520.0,1.250,39,650.0,700.0,1500.0,500.0"
    );
    assert!(
        lines[2].ends_with(",1840.0,1.304,,,,,"),
        "no pointer run for the baseline: {}",
        lines[2]
    );
    assert!(
        lines[3].ends_with(",0,,,,1000.0"),
        "no pointer arrived: {}",
        lines[3]
    );
    assert_eq!(
        lines[5],
        "small,3000,\"loopback\",tandem,5.0,5.0,1000,30000,,,,,,,5.0"
    );
    assert_eq!(lines.len(), 9);

    let checks = bench::checks(&rows, l);
    let get = |page: &str, target: &str| {
        checks
            .iter()
            .find(|c| c.page == page && c.target == target)
            .map(|c| c.pass)
    };
    assert_eq!(get("big", "bound"), Some(true)); // 1900 <= 1.3 × 1520
    assert_eq!(get("big", "bytes"), Some(true));
    assert_eq!(get("big", "first render"), Some(true)); // 500 <= 2400 / 3
    assert_eq!(get("small", "bound"), Some(true));
    assert_eq!(get("small", "first render"), None, "under 100 KB");
    // The first render's check says when the agent had joined: the floor under it.
    let detail = checks
        .iter()
        .find(|c| c.page == "big" && c.target == "first render")
        .map(|c| c.detail.as_str());
    assert_eq!(
        detail,
        Some("500 ms (joined at 500 ms) vs baseline complete 2400 ms / 3 = 800 ms")
    );
    assert_eq!(get("big", "first, returning"), Some(true));
    assert_eq!(get("slow", "first, returning"), Some(false));
    assert_eq!(get("small", "first, returning"), None);
    assert_eq!(
        get("big", "pointer"),
        Some(true),
        "650 ms is within 2 × 300 + 50"
    );
    assert_eq!(get("slow", "pointer"), Some(false), "651 ms is not");
    assert_eq!(
        get("small", "pointer"),
        None,
        "no pointer arrived with the snapshot"
    );
    let report = bench::checks_report(&checks);
    assert!(report.contains("bound: 3 of 3 pages pass"), "{report}");
    assert!(report.contains("pointer: 1 of 2 pages pass"), "{report}");
    assert!(
        report.contains("first, returning: 1 of 2 pages pass"),
        "{report}"
    );
    let table = bench::table(&rows);
    assert!(table.contains("650 ms (39)"), "{table}");

    let svg = bench::svg(&rows, &[l.to_owned(), "loopback".to_owned()]);
    assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<svg").count(), 1);
    // Four bars per page on the target link (a returning agent's first render the fourth: an
    // "n/a" where it was not measured), three for the one page on loopback, two per page in
    // the bytes panel, and the legends' squares.
    assert_eq!(
        svg.matches("<rect x=").count(),
        3 * 4 - 1 + 3 + 3 * 2 + 4 + 2
    );
    assert!(svg.contains("returning agent"));
    assert!(svg.contains("Link 300ms,750kbit,1%"));
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
}

/// Pointer latencies are matched by sequence number, the first arrival of each counts, lost
/// ones count as sent, and a window of arrival times keeps the pointers from the first to the
/// last that arrived in it.
#[test]
fn pointer_latency_matches_arrivals_to_sends() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    // Pointer i leaves at 10·i ms and takes 100 + i ms; pointer 4 is lost.
    let sent: Vec<(u32, Instant)> = (1..=10).map(|i| (i, at(10 * u64::from(i)))).collect();
    let mut received: Vec<(u32, Instant)> = (1..=10u32)
        .filter(|&i| i != 4)
        .map(|i| (i, at(10 * u64::from(i) + 100 + u64::from(i))))
        .collect();
    // A copy of pointer 2 arrives much later: the first arrival counts.
    received.push((2, at(5_000)));
    let all = PointerLatency::measure(&sent, &received, None);
    assert_eq!((all.sent, all.arrived), (10, 9));
    // Latencies 101, 102, 103, 105, …, 110 ms: the median is the 5th, the 95th the 9th.
    assert_eq!(all.p50_ms.map(f64::round), Some(106.0));
    assert_eq!(all.p95_ms.map(f64::round), Some(110.0));
    assert_eq!(all.max_ms.map(f64::round), Some(110.0));

    // Arrivals from 130 to 170 ms: pointers 3 (at 133), 5 (at 155) and 6 (at 166); pointer 4
    // was sent between them and lost.
    let window = PointerLatency::measure(&sent, &received, Some((at(130), at(170))));
    assert_eq!((window.sent, window.arrived), (4, 3));
    assert_eq!(window.p50_ms.map(f64::round), Some(105.0));
    assert_eq!(window.max_ms.map(f64::round), Some(106.0));

    let none = PointerLatency::measure(&sent, &received, Some((at(0), at(50))));
    assert_eq!((none.sent, none.arrived, none.p95_ms), (0, 0, None));

    // The series behind the percentiles: every pointer in the order sent, from the join (here
    // 5 ms after t0), the lost one without a latency, the copy of pointer 2 ignored.
    let series = PointerSample::series(&sent, &received, at(5));
    assert_eq!(series.len(), 10);
    let rounded: Vec<(f64, Option<f64>)> = series
        .iter()
        .map(|p| (p.sent_ms.round(), p.latency_ms.map(f64::round)))
        .collect();
    assert_eq!(rounded[0], (5.0, Some(101.0)));
    assert_eq!(rounded[1], (15.0, Some(102.0)));
    assert_eq!(rounded[3], (35.0, None));
    assert_eq!(rounded[9], (95.0, Some(110.0)));
    assert_eq!(tandem_peers::demo::nearest_rank(&[], 95), None);
    assert_eq!(tandem_peers::demo::nearest_rank(&[1.0, 2.0], 50), Some(1.0));
    assert_eq!(tandem_peers::demo::nearest_rank(&[1.0, 2.0], 51), Some(2.0));
}
