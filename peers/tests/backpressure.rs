//! State sync under backpressure (issue 7.2) on the emulated slow link: a page changing 100
//! times a second keeps the consumer's buffer bounded and the agent near the present, because
//! the consumer folds changes while a patch is unacknowledged and then sends the difference.

mod common;

use std::time::Duration;

use tandem_peers::demo::{DemoArgs, demo_over};
use tandem_peers::link::LinkSpec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_changing_page_keeps_the_agent_near_the_present_on_a_slow_link() {
    // 100 batches a second for a minute (issue 7); each client 300 ms one way from the relay
    // at 750 kbit/s with 1 % loss, so the agent is 1.2 s of round trip from the consumer.
    let batches = 6000;
    let args = DemoArgs {
        batches,
        batch_size: 4,
        interval_ms: 10,
        seed: 11,
        json: true,
        ..DemoArgs::default()
    };
    let link: LinkSpec = "300ms,750kbit,1%,seed=3".parse().expect("a link");
    let report = tokio::time::timeout(Duration::from_secs(240), demo_over(&args, &link))
        .await
        .expect("the session finishes")
        .expect("the session runs");
    assert!(
        report.hashes_match,
        "the agent ends on the page's last state"
    );
    // Changes fold: far fewer patches than batches, each the difference at the time.
    assert!(
        report.patches > 3 && report.patches < batches / 5,
        "{} patches for {batches} batches",
        report.patches
    );
    // Bounded buffering: no batch bigger than the snapshot or a few changes' worth.
    assert!(
        report.max_batch_bytes <= report.snapshot_bytes.max(32 * 1024),
        "largest batch {} bytes",
        report.max_batch_bytes
    );
    // The agent stays one round trip plus one send behind: every acknowledgement comes well
    // within a few seconds of its flush (a queue of the past would grow to tens of seconds).
    let delays = &report.ack_delays_ms;
    assert!(delays.len() as u64 > report.patches / 2, "{delays:?}");
    let mut sorted = delays.clone();
    sorted.sort_by(f64::total_cmp);
    let p90 = sorted[sorted.len() * 9 / 10];
    assert!(
        p90 < 4_000.0,
        "90th percentile flush-to-ack {p90:.0} ms: {delays:?}"
    );
    // And the delay does not grow over the session.
    let half = delays.len() / 2;
    let mean = |d: &[f64]| d.iter().sum::<f64>() / d.len().max(1) as f64;
    assert!(
        mean(&delays[half..]) < mean(&delays[..half]) * 2.0 + 500.0,
        "delays grow: {delays:?}"
    );
}

/// A consumer sends its snapshot before the agent joins, with what the relay agreed to
/// (spec §3.2); then an agent whose hello lacks `without` joins and runs to the end. Returns the
/// session's capabilities, whether the agent ended with the customer's page, and the
/// consumer's report.
async fn sent_ahead_to_an_agent_without(
    without: tandem_protocol::message::Capabilities,
) -> (
    tandem_protocol::message::Capabilities,
    bool,
    tandem_peers::session::ConsumerReport,
) {
    use tandem_peers::client::{self, ControlChannel};
    use tandem_peers::session::{self, AgentOptions, ChangeSource};
    use tandem_protocol::message::{Capabilities, Credential, Role};

    let relay = common::start_relay(|_| {});
    let (code, consumer) = common::consumer_session(
        &relay,
        common::sample_options(ChangeSource::Live {
            generator: tandem_engine::LivePage::new(2),
            per_batch: 3,
            batches: Some(3),
        }),
    )
    .await;
    let conn = client::connect(relay.addr, relay.fingerprint, Role::Agent)
        .await
        .expect("connect");
    let mut hello = client::hello(Role::Agent);
    hello.capabilities = Capabilities(hello.capabilities.0 & !without.0);
    let (agent, joined) =
        ControlChannel::open_and_join(conn, hello, Credential::Code(code), "Alex")
            .await
            .expect("joined");
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        session::run_agent(agent, AgentOptions::default(), std::time::Instant::now()),
    )
    .await
    .expect("the agent finishes")
    .expect("the agent runs");
    let consumer = tokio::time::timeout(Duration::from_secs(30), consumer)
        .await
        .expect("the consumer finishes")
        .expect("task")
        .expect("the consumer runs");
    relay.shutdown().await;
    (
        joined.capabilities,
        report.hash == Some(consumer.hash),
        consumer,
    )
}

/// An agent that does not take compression stops the compressed stream sent ahead unread, and
/// the consumer starts a new epoch uncompressed: the agent still ends with the customer's page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_sent_ahead_compressed_is_replaced_for_an_agent_without_compression() {
    use tandem_protocol::message::Capabilities;
    let (caps, same, consumer) = sent_ahead_to_an_agent_without(Capabilities::COMPRESSION).await;
    assert!(!caps.contains(Capabilities::COMPRESSION));
    assert!(same, "the agent ends with the customer's page");
    assert!(!consumer.compressed);
    assert!(
        consumer.snapshots >= 2,
        "a new epoch replaced the compressed one"
    );
}

/// The snapshot sent ahead uses codec 0x02 because the relay agreed to `CODED_PATCHES` (spec
/// §3.2, §4.6.5); for an agent whose session lacks it, the consumer starts a new epoch with
/// codec 0x01, and the agent still ends with the customer's page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_sent_ahead_with_coded_patches_is_replaced_for_an_agent_without_them() {
    use tandem_protocol::message::Capabilities;
    let (caps, same, consumer) = sent_ahead_to_an_agent_without(Capabilities::CODED_PATCHES).await;
    assert!(caps.contains(Capabilities::COMPRESSION));
    assert!(!caps.contains(Capabilities::CODED_PATCHES));
    assert!(same, "the agent ends with the customer's page");
    assert!(consumer.compressed);
    assert!(
        consumer.snapshots >= 2,
        "a new epoch replaced the one sent ahead with codec 0x02"
    );
}
