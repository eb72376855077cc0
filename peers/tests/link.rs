//! Issue 7 item 4: link emulation owned by the project. The spec parser, the sans-IO shaper in
//! virtual time, the UDP forwarder on real sockets (timing bounds and exact counts), and a quinn
//! connection carried over a 300ms,750kbit,1% link.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tandem_peers::link::{
    Direction, Link, LinkSpec, LinkSpecError, QueueLimit, Shaper, UDP_OVERHEAD, Verdict,
};
use tandem_peers::transport;
use tokio::net::UdpSocket;

fn spec(s: &str) -> LinkSpec {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

#[test]
fn spec_parses_the_issue_examples_and_round_trips() {
    let s = spec("300ms,750kbit,1%");
    assert_eq!(s.delay, Duration::from_millis(300));
    assert_eq!(s.rate_bps, Some(750_000));
    assert_eq!(s.loss_ppm, 10_000);
    assert_eq!(s.queue, None);
    assert_eq!(s.seed, tandem_peers::link::DEFAULT_SEED);

    let s = spec("50ms,10mbit");
    assert_eq!(
        (s.delay, s.rate_bps, s.loss_ppm),
        (Duration::from_millis(50), Some(10_000_000), 0)
    );
    let s = spec("600ms,256kbit,3%,queue=64kb,seed=7");
    assert_eq!(s.loss_ppm, 30_000);
    assert_eq!(s.queue, Some(QueueLimit::Bytes(64 * 1024)));
    assert_eq!(s.seed, 7);
    assert_eq!(spec("queue=100pkt").queue, Some(QueueLimit::Packets(100)));
    assert_eq!(spec("0.25%").loss_ppm, 2_500);
    assert_eq!(spec("100%").loss_ppm, 1_000_000);
    assert_eq!(spec("2s").delay, Duration::from_secs(2));
    assert_eq!(spec("500us").delay, Duration::from_micros(500));

    // Canonical strings display as themselves.
    for canonical in [
        "300ms,750kbit,1%",
        "50ms,10mbit",
        "600ms,256kbit,3%",
        "300ms,750kbit,1%,queue=64kb,seed=7",
        "1s,1500bit,0.0001%,queue=1500b",
        "20us,2gbit,12.5%,queue=3mb",
        "queue=10pkt",
        "seed=0",
        "none",
    ] {
        assert_eq!(spec(canonical).to_string(), canonical);
    }
    // Other spellings display canonically and parse back to the same spec.
    for (input, canonical) in [
        ("1%, 750kbit ,300ms", "300ms,750kbit,1%"),
        ("1000ms,1000kbit,1.50%", "1s,1mbit,1.5%"),
        (
            "300MS,750KBIT,1%,Queue=65536b,seed=1",
            "300ms,750kbit,1%,queue=64kb",
        ),
        ("0ms,0%", "none"),
        ("loopback", "none"),
    ] {
        let s = spec(input);
        assert_eq!(s.to_string(), canonical, "{input}");
        assert_eq!(spec(&s.to_string()), s, "{input}");
    }
    assert_eq!(spec("none"), LinkSpec::none());
    assert!(LinkSpec::none().is_none());
    assert!(!spec("1%").is_none());
    assert!(!spec("1ms").is_none());
}

#[test]
fn spec_errors_are_typed() {
    let err = |s: &str| {
        s.parse::<LinkSpec>()
            .expect_err(&format!("{s:?} should not parse"))
    };
    assert_eq!(err(""), LinkSpecError::Empty);
    assert_eq!(err("300ms,,1%"), LinkSpecError::Empty);
    assert!(matches!(err("300"), LinkSpecError::UnknownUnit { .. }));
    assert!(matches!(err("750kbps"), LinkSpecError::UnknownUnit { .. }));
    assert!(matches!(err("queue=64"), LinkSpecError::UnknownUnit { .. }));
    assert!(matches!(err("1.5ms"), LinkSpecError::BadNumber { .. }));
    assert!(matches!(err("1.23456%"), LinkSpecError::BadNumber { .. }));
    assert!(matches!(err("seed=-1"), LinkSpecError::BadNumber { .. }));
    assert!(matches!(
        err("99999999999999999999mbit"),
        LinkSpecError::BadNumber { .. }
    ));
    assert!(matches!(err("100.01%"), LinkSpecError::LossAbove100 { .. }));
    assert_eq!(
        err("rate=1mbit"),
        LinkSpecError::UnknownKey { key: "rate".into() }
    );
    assert_eq!(err("300ms,20ms"), LinkSpecError::Repeated { what: "delay" });
    assert_eq!(err("1%,2%"), LinkSpecError::Repeated { what: "loss" });
    assert_eq!(err("0kbit"), LinkSpecError::ZeroRate);
    assert_eq!(err("queue=0pkt"), LinkSpecError::ZeroQueue);
    assert!(matches!(err("none,1%"), LinkSpecError::NoneWithOthers(_)));
    // The message says what was expected.
    assert!(err("750kbps").to_string().contains("750kbit"));
}

/// At 800 kbit/s a 1,000-byte datagram (1,028 bytes with headers) takes 10.28 ms; a burst of
/// 100 leaves over 1.028 s, each `delay` after it was serialized.
#[test]
fn shaper_serializes_at_the_rate_in_virtual_time() {
    let s = spec("50ms,800kbit");
    let mut shaper = Shaper::new(&s, Direction::Up);
    let t0 = Instant::now();
    let per = s.serialization(1000 + UDP_OVERHEAD);
    assert_eq!(per, Duration::from_micros(10_280));
    for i in 1..=100u32 {
        assert_eq!(
            shaper.offer(t0, 1000),
            Verdict::Deliver(t0 + per * i + Duration::from_millis(50))
        );
    }
    assert_eq!(shaper.queued(), (100, 100 * 1028));
    // A datagram arriving after the link went idle is not held back by the earlier ones.
    let later = t0 + Duration::from_secs(5);
    assert_eq!(
        shaper.offer(later, 1000),
        Verdict::Deliver(later + per + Duration::from_millis(50))
    );
    assert_eq!(shaper.queued(), (1, 1028));
}

#[test]
fn shaper_drops_the_tail_of_a_full_queue() {
    let t0 = Instant::now();
    for queue in ["queue=10pkt", "queue=10280b"] {
        let mut shaper = Shaper::new(&spec(&format!("800kbit,{queue}")), Direction::Up);
        let verdicts: Vec<Verdict> = (0..30).map(|_| shaper.offer(t0, 1000)).collect();
        let delivered = verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Deliver(_)))
            .count();
        assert_eq!(delivered, 10, "{queue}");
        assert!(verdicts[10..].iter().all(|v| *v == Verdict::QueueFull));
        // Once the first datagram has left the wire there is room for exactly one more.
        let t1 = t0 + Duration::from_micros(10_280);
        assert!(matches!(shaper.offer(t1, 1000), Verdict::Deliver(_)));
        assert_eq!(shaper.offer(t1, 1000), Verdict::QueueFull);
    }
    // Without a rate nothing queues, whatever the limit.
    let mut shaper = Shaper::new(&spec("10ms,queue=1pkt"), Direction::Up);
    for _ in 0..10 {
        assert_eq!(
            shaper.offer(t0, 1000),
            Verdict::Deliver(t0 + Duration::from_millis(10))
        );
    }
}

fn loss_pattern(s: &LinkSpec, direction: Direction, n: usize) -> Vec<bool> {
    let mut shaper = Shaper::new(s, direction);
    let t0 = Instant::now();
    (0..n)
        .map(|_| shaper.offer(t0, 100) == Verdict::Lost)
        .collect()
}

#[test]
fn shaper_loss_is_seeded_and_near_its_rate() {
    let s = spec("1%,seed=7");
    let a = loss_pattern(&s, Direction::Up, 100_000);
    assert_eq!(a, loss_pattern(&s, Direction::Up, 100_000));
    assert_ne!(a, loss_pattern(&spec("1%,seed=8"), Direction::Up, 100_000));
    assert_ne!(a, loss_pattern(&s, Direction::Down, 100_000));
    let lost = a.iter().filter(|&&l| l).count();
    assert!((800..1200).contains(&lost), "{lost} of 100000 lost at 1%");
    assert!(
        loss_pattern(&spec("100%"), Direction::Up, 100)
            .iter()
            .all(|&l| l)
    );
    assert!(
        !loss_pattern(&spec("0%"), Direction::Up, 100)
            .iter()
            .any(|&l| l)
    );
}

/// A UDP socket standing for the server, and a client socket.
async fn sockets() -> (UdpSocket, SocketAddr, UdpSocket) {
    let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr().unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    (server, addr, client)
}

async fn wait_for(link: &Link, done: impl Fn(&Link) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done(link) {
        assert!(Instant::now() < deadline, "link stuck: {:?}", link.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// 100 datagrams of 1,000 bytes at 800 kbit/s with 50 ms of delay: the last one cannot arrive
/// before 100 × 10.28 ms + 50 ms, and every one arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarder_is_not_faster_than_the_rate() {
    let (server, server_addr, client) = sockets().await;
    let link = Link::spawn(server_addr, &spec("50ms,800kbit"))
        .await
        .unwrap();
    let started = Instant::now();
    for i in 0..100u32 {
        let mut datagram = vec![0u8; 1000];
        datagram[..4].copy_from_slice(&i.to_be_bytes());
        client.send_to(&datagram, link.addr()).await.unwrap();
        // Bursts of 10 kB: well inside any kernel buffer, well ahead of the link.
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let mut buf = [0u8; 2048];
    for i in 0..100u32 {
        let (n, from) = tokio::time::timeout(Duration::from_secs(15), server.recv_from(&mut buf))
            .await
            .expect("datagram arrives")
            .unwrap();
        assert_eq!(n, 1000);
        assert_eq!(buf[..4], i.to_be_bytes(), "in order");
        assert_ne!(
            from,
            client.local_addr().unwrap(),
            "comes from the forwarder"
        );
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1078),
        "100 kB at 800 kbit/s took only {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    let stats = link.stats();
    assert_eq!(stats.up.packets, 100);
    assert_eq!(stats.up.bytes, 100_000);
    assert_eq!((stats.up.lost, stats.up.queue_dropped), (0, 0));
    assert_eq!(stats.down.packets, 0);
    assert_eq!(link.client(), Some(client.local_addr().unwrap()));
    eprintln!("100 x 1000 B at 800 kbit/s + 50 ms: {elapsed:?}");
}

/// With loss and a seed, exactly the datagrams the shaper predicts are lost, in both
/// directions of an echo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarder_loses_what_the_seed_says() {
    let (server, server_addr, client) = sockets().await;
    let s = spec("5ms,10%,seed=7");
    let link = Link::spawn(server_addr, &s).await.unwrap();
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        loop {
            let (n, from) = server.recv_from(&mut buf).await.unwrap();
            server.send_to(&buf[..n], from).await.unwrap();
        }
    });
    const N: u32 = 200;
    let up = loss_pattern(&s, Direction::Up, N as usize);
    let reached: Vec<u32> = (0..N).filter(|&i| !up[i as usize]).collect();
    let down = loss_pattern(&s, Direction::Down, reached.len());
    let expected: Vec<u32> = reached
        .iter()
        .zip(&down)
        .filter(|(_, lost)| !**lost)
        .map(|(&i, _)| i)
        .collect();
    let up_lost = N as usize - reached.len();
    let down_lost = reached.len() - expected.len();
    assert!((5..=40).contains(&up_lost), "{up_lost} of {N} lost at 10 %");

    for i in 0..N {
        let mut datagram = vec![0u8; 100];
        datagram[..4].copy_from_slice(&i.to_be_bytes());
        client.send_to(&datagram, link.addr()).await.unwrap();
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while got.len() < expected.len() {
        let n = tokio::time::timeout(Duration::from_secs(15), client.recv(&mut buf))
            .await
            .expect("echo arrives")
            .unwrap();
        assert_eq!(n, 100);
        got.push(u32::from_be_bytes(buf[..4].try_into().unwrap()));
    }
    assert_eq!(got, expected);
    let stats = link.stats();
    assert_eq!(stats.up.lost, up_lost as u64);
    assert_eq!(stats.up.packets, reached.len() as u64);
    assert_eq!(stats.down.lost, down_lost as u64);
    assert_eq!(stats.down.packets, expected.len() as u64);
    assert_eq!(stats.up.queue_dropped + stats.down.queue_dropped, 0);
    // Nothing more comes.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), client.recv(&mut buf))
            .await
            .is_err()
    );
    echo.abort();
}

/// A burst into a slow link with a 5-datagram queue: the tail is dropped, the rest forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarder_drops_the_tail_of_a_burst() {
    let (server, server_addr, client) = sockets().await;
    let link = Link::spawn(server_addr, &spec("80kbit,queue=5pkt"))
        .await
        .unwrap();
    for _ in 0..50 {
        client.send_to(&[7u8; 1000], link.addr()).await.unwrap();
    }
    wait_for(&link, |l| {
        let s = l.stats().up;
        s.packets + s.queue_dropped == 50
    })
    .await;
    let stats = link.stats().up;
    assert!(stats.queue_dropped > 0, "{stats:?}");
    assert!(stats.packets >= 5, "{stats:?}");
    assert_eq!(stats.lost, 0);
    let mut buf = [0u8; 2048];
    for _ in 0..stats.packets {
        server.recv_from(&mut buf).await.unwrap();
    }
}

/// Real quinn traffic over real UDP sockets through a 300ms,750kbit,1% link: a 100 kB transfer
/// arrives intact, and takes at least what the rate allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_transfer_over_a_bad_link() {
    let identity = transport::Identity::generate().unwrap();
    let server = transport::server_endpoint("127.0.0.1:0".parse().unwrap(), &identity).unwrap();
    let server_addr = server.local_addr().unwrap();
    let link = Link::spawn(server_addr, &spec("300ms,750kbit,1%"))
        .await
        .unwrap();
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();

    let receiver = tokio::spawn(async move {
        let conn = server.accept().await.expect("a connection").await.unwrap();
        let mut stream = conn.accept_uni().await.unwrap();
        let received = stream.read_to_end(1 << 20).await.unwrap();
        // Keep the connection until the client has seen the data acknowledged.
        conn.closed().await;
        received
    });
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(30), async {
        let client = transport::client_endpoint(
            identity.fingerprint(),
            tandem_protocol::message::Role::Agent,
        )
        .unwrap();
        let conn = transport::connect(&client, link.addr()).await.unwrap();
        let mut stream = conn.open_uni().await.unwrap();
        stream.write_all(&payload).await.unwrap();
        stream.finish().unwrap();
        stream.stopped().await.unwrap();
        let elapsed = started.elapsed();
        conn.close(0u32.into(), b"done");
        client.wait_idle().await;
        (elapsed, receiver.await.unwrap())
    })
    .await;
    let (elapsed, received) = result.expect("transfer finishes within 30 s");
    assert_eq!(received.len(), payload.len());
    assert!(received == payload, "bytes differ");
    // 100 kB alone take 1.07 s at 750 kbit/s, before any handshake or header.
    assert!(elapsed >= Duration::from_millis(1067), "{elapsed:?}");
    let stats = link.stats();
    assert!(stats.up.packets >= 80, "{stats:?}");
    assert!(stats.up.bytes >= 100_000, "{stats:?}");
    assert!(stats.down.packets > 0, "{stats:?}");
    eprintln!("100 kB over 300ms,750kbit,1%: {elapsed:?}, {stats:?}");
}

/// The CRYPTO frames a client sent until its side of the handshake completed, over a link of
/// `delay` each way to a fresh relay, with `config` or the default client configuration; the
/// round trip the connection measured must be at least `rtt`.
async fn first_flight(
    delay: &str,
    rtt: Duration,
    config: impl FnOnce(transport::Fingerprint) -> Option<quinn::ClientConfig>,
) -> u64 {
    use tandem_protocol::message::Role;
    let identity = transport::Identity::generate().unwrap();
    let server = transport::server_endpoint("127.0.0.1:0".parse().unwrap(), &identity).unwrap();
    let server_addr = server.local_addr().unwrap();
    let link = Link::spawn(server_addr, &spec(delay)).await.unwrap();
    let accept = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(incoming) = server.accept().await {
            if let Ok(conn) = incoming.await {
                held.push(conn);
            }
        }
    });
    let pin = identity.fingerprint();
    let client = transport::client_endpoint(pin, Role::Agent).unwrap();
    let connecting = match config(pin) {
        Some(config) => client.connect_with(config, link.addr(), transport::SERVER_NAME),
        None => client.connect(link.addr(), transport::SERVER_NAME),
    };
    let conn = tokio::time::timeout(Duration::from_secs(20), connecting.unwrap())
        .await
        .expect("the handshake completes")
        .unwrap();
    // Counted once the client's last handshake flight has surely left (it may still be queued
    // when the handshake completes, more so on a loaded machine): nothing new can arrive from
    // the relay within a fifth of the round trip, so nothing else leaves. CRYPTO frames, not
    // datagrams: how many acknowledgements the client sends depends on how the relay's flight
    // arrives (coalesced or datagram by datagram), but its handshake messages are the
    // ClientHello, once per copy of the first flight, and the Finished.
    tokio::time::sleep(rtt / 5).await;
    let sent = conn.stats().frame_tx.crypto;
    assert!(conn.rtt() >= rtt, "{:?}", conn.rtt());
    conn.close(0u32.into(), b"done");
    accept.abort();
    sent
}

/// On the slowest link Tandem is built for (600 ms each way), a first connection's probe
/// timeout (three times [`transport::INITIAL_RTT`], 1.5 s) waits for the relay's answer: the
/// client sends its ClientHello once. RFC 9002's 333 ms would send it twice (a 1 s timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_connection_sends_its_first_flight_once_at_600ms_each_way() {
    let sent = first_flight("600ms", Duration::from_millis(1200), |_| None).await;
    assert_eq!(sent, 2, "the ClientHello and the Finished");
}

/// On a path whose round trip is above the default's probe timeout (here 1.6 s), a client that
/// starts from [`transport::INITIAL_RTT`] sends its first flight twice before the relay's
/// answer can arrive; one that starts from the round trip an earlier connection measured (as a
/// resuming client does) sends it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_round_trip_spares_the_first_flight_a_second_copy() {
    use tandem_protocol::message::Role;
    let rtt = Duration::from_millis(1600);
    let default = first_flight("800ms", rtt, |_| None).await;
    let remembered = first_flight("800ms", rtt, |pin| {
        Some(transport::client_config_for_rtt(pin, Role::Agent, rtt).unwrap())
    })
    .await;
    // The default's probe timeout (1.5 s) fires once before the answer and sends the
    // ClientHello again; the remembered round trip's (2.4 s) does not.
    assert_eq!(remembered, 2, "the ClientHello and the Finished");
    assert!(
        default > remembered,
        "default {default}, remembered {remembered}"
    );
}

/// Runs the demo with each client behind `link`, failing the test after a minute.
async fn demo_over(
    args: &tandem_peers::demo::DemoArgs,
    link: &str,
) -> tandem_peers::demo::DemoReport {
    tokio::time::timeout(
        Duration::from_secs(60),
        tandem_peers::demo::demo_over(args, &spec(link)),
    )
    .await
    .expect("demo finishes")
    .expect("demo runs")
}

/// `tandem demo --link 300ms,750kbit,1%` in miniature: relay, consumer and agent, each client
/// behind its own emulated link, converge on the same tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_over_a_bad_link_converges() {
    let args = tandem_peers::demo::DemoArgs {
        batches: 5,
        json: true,
        ..tandem_peers::demo::DemoArgs::default()
    };
    let report = demo_over(&args, "300ms,750kbit,1%").await;
    assert!(report.hashes_match, "{report:?}");
    assert_eq!(report.link, "300ms,750kbit,1%");
    assert!(report.first_render_ms.is_some());
    // The consumer's QUIC handshake and its HELLO/WELCOME each take a 600 ms round trip.
    assert!(report.total_ms >= 1200.0, "{report:?}");
    let (c, a) = (report.consumer_link.unwrap(), report.agent_link.unwrap());
    assert!(c.up.bytes >= report.snapshot_wire_bytes, "{report:?}");
    assert!(a.down.bytes >= report.agent_dom_wire_bytes, "{report:?}");
    eprintln!(
        "demo over {}: first render {:?} ms, session {:.0} ms",
        report.link, report.first_render_ms, report.total_ms
    );
}

/// `tandem demo --pointer-every` over a link: the customer's pointer crosses both links, the
/// consumer's and the agent's, so each arrives at least two delays after it left, and none is
/// lost on a link that loses nothing (but those the session's end overtakes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customers_pointer_crosses_both_links_to_the_agent() {
    let args = tandem_peers::demo::DemoArgs {
        batches: 10,
        batch_size: 5,
        json: true,
        pointer_every: Some(10),
        ..tandem_peers::demo::DemoArgs::default()
    };
    let report = demo_over(&args, "40ms,10mbit").await;
    assert!(report.hashes_match, "{report:?}");
    let pointer = report
        .pointer
        .expect("a pointer report with --pointer-every");
    let all = &pointer.all;
    assert!(all.sent >= 5, "{pointer:?}");
    // The last ones may still be on their way when the session ends.
    assert!(all.arrived + 2 >= all.sent, "{pointer:?}");
    let (p50, p95, max) = (
        all.p50_ms.unwrap(),
        all.p95_ms.unwrap(),
        all.max_ms.unwrap(),
    );
    assert!(p50 >= 80.0, "two links of 40 ms: {pointer:?}");
    assert!(p50 <= p95 && p95 <= max, "{pointer:?}");
    let during = &pointer.during_snapshot;
    assert!(
        during.arrived <= during.sent && during.sent <= all.sent,
        "{pointer:?}"
    );
}

/// A new agent pays the QUIC handshake and then HELLO+JOIN: two round trips to its `JOINED`. A
/// returning agent (it visited the relay before, so it holds a session ticket) sends HELLO and
/// JOIN in 0-RTT data and the relay answers in the handshake's flight: one round trip. The
/// page arrives whole either way. The link's delay is a floor on each figure, so the lower
/// bounds hold on any machine; the upper bound leaves a whole round trip of slack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_agent_joins_in_one_round_trip() {
    let rtt = 300.0;
    let link = "150ms,10mbit";
    let new = tandem_peers::demo::DemoArgs {
        batches: 2,
        json: true,
        ..tandem_peers::demo::DemoArgs::default()
    };
    let first = demo_over(&new, link).await;
    assert!(first.hashes_match, "{first:?}");
    assert!(!first.agent_0rtt, "a new agent has no ticket: {first:?}");
    assert!(first.agent_join_ms >= 2.0 * rtt, "{}", first.agent_join_ms);
    let returning = tandem_peers::demo::DemoArgs {
        returning_agent: true,
        ..new
    };
    let back = demo_over(&returning, link).await;
    assert!(back.hashes_match, "{back:?}");
    assert!(back.agent_0rtt, "the join went as 0-RTT data: {back:?}");
    assert!(
        (rtt..2.0 * rtt).contains(&back.agent_join_ms),
        "one round trip, not two: {} ms",
        back.agent_join_ms
    );
    assert!(back.first_render_ms.is_some(), "{back:?}");
}

/// The relay acts on HELLO and JOIN in 0-RTT data and on nothing else before the handshake
/// completes (spec §3.5). A returning client sends HELLO and SESSION_OPEN as early data: the
/// relay's WELCOME comes back in the handshake's flight, one round trip after the client
/// started, but SESSION_CREATED only once the relay has the client's Finished, half a round
/// trip later, and back: two round trips. The link's delay is the floor of both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_acts_on_nothing_but_hello_and_join_before_the_handshake_completes() {
    use tandem_peers::client::{self, ControlChannel};
    use tandem_peers::framed::FrameRecv;
    use tandem_protocol::message::{Role, SessionOpen};
    use tandem_protocol::{Limits, Message, frame};

    let rtt = Duration::from_millis(300);
    let identity = transport::Identity::generate().unwrap();
    let pin = identity.fingerprint();
    let relay = tandem_peers::relay::spawn(tandem_peers::relay::RelayConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        identity,
    ))
    .unwrap();
    let link = Link::spawn(relay.addr, &spec("150ms,10mbit"))
        .await
        .unwrap();
    let run = async {
        // A first visit leaves a session ticket.
        let conn = client::connect(link.addr(), pin, Role::Consumer)
            .await
            .unwrap();
        ControlChannel::open(conn, client::hello(Role::Consumer))
            .await
            .unwrap()
            .leave()
            .await;

        let endpoint = transport::client_endpoint(pin, Role::Consumer).unwrap();
        let started = Instant::now();
        let connecting = endpoint
            .connect(link.addr(), transport::SERVER_NAME)
            .unwrap();
        let (conn, accepted) = connecting
            .into_0rtt()
            .unwrap_or_else(|_| panic!("the first visit left a ticket"));
        let (mut send, recv) = conn.open_bi().await.unwrap();
        let limits = Limits::DEFAULT;
        let mut bytes =
            frame::to_frame(&Message::Hello(client::hello(Role::Consumer)), &limits).unwrap();
        let open = Message::SessionOpen(SessionOpen {
            label: "early".into(),
        });
        frame::encode_frame(&open, &mut bytes, &limits).unwrap();
        send.write_all(&bytes).await.unwrap();
        assert!(accepted.await, "the relay took the early data");
        let mut recv = FrameRecv::new(recv, limits);
        let welcome = recv.next_message().await.unwrap();
        assert!(matches!(welcome, Some(Message::Welcome(_))), "{welcome:?}");
        let welcomed = started.elapsed();
        let created = recv.next_message().await.unwrap();
        assert!(
            matches!(created, Some(Message::SessionCreated(_))),
            "{created:?}"
        );
        (welcomed, started.elapsed())
    };
    let (welcomed, created) = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("finishes within 30 s");
    assert!(
        welcomed >= rtt && welcomed < 2 * rtt,
        "WELCOME in the handshake's flight: {welcomed:?}"
    );
    assert!(
        created >= 2 * rtt,
        "SESSION_CREATED only after the handshake: {created:?}"
    );
    relay.shutdown().await;
}
