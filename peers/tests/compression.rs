//! Compressed DOM streams between real peers over QUIC on loopback (spec §4.6): a consumer that
//! sends a broken compressed stream makes the agent stop with a typed error — promptly, without
//! a panic, a hang or an allocation the size of what the bytes claim.

use std::future::Future;
use std::time::{Duration, Instant};

use tandem_peers::client::{self, ControlChannel};
use tandem_peers::relay::{self, RelayConfig, RelayHandle};
use tandem_peers::session::{self, AgentOptions, SessionError};
use tandem_peers::transport::Identity;
use tandem_protocol::compress::{CODEC_CODED_PATCHES, DecompressError, DomCompressor};
use tandem_protocol::message::{Capabilities, Credential, Ping, Role};
use tandem_protocol::{DecodeError, FrameType, Limits, Message, frame, varint};

const GUARD: Duration = Duration::from_secs(20);

async fn guard<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(GUARD, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

fn start_relay() -> RelayHandle {
    let identity = Identity::generate().expect("generate certificate");
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), identity);
    config.close_grace = Duration::from_millis(300);
    relay::spawn(config).expect("relay starts")
}

/// Pairs a consumer and an agent (both offering compression), runs the agent's session, lets
/// the consumer write `dom` on a DOM stream, and returns how the agent's session ended.
async fn agent_receiving(dom: Vec<u8>) -> Result<session::AgentReport, SessionError> {
    let relay = start_relay();
    let connect = |role| client::connect(relay.addr, relay.fingerprint, role);
    let conn = guard("connect", connect(Role::Consumer))
        .await
        .expect("connect");
    let mut consumer = guard(
        "welcome",
        ControlChannel::open(conn, client::hello(Role::Consumer)),
    )
    .await
    .expect("welcome");
    let created = guard("session", consumer.open_session("Customer"))
        .await
        .expect("session");
    let conn = guard("connect", connect(Role::Agent))
        .await
        .expect("connect");
    let mut agent = guard(
        "welcome",
        ControlChannel::open(conn, client::hello(Role::Agent)),
    )
    .await
    .expect("welcome");
    let joined = guard("join", agent.join(Credential::Code(created.code), "Alex"))
        .await
        .expect("join");
    assert!(joined.capabilities.contains(Capabilities::COMPRESSION));
    assert!(
        agent
            .session_capabilities()
            .contains(Capabilities::COMPRESSION)
    );
    let joined = guard("joined", consumer.wait_joined())
        .await
        .expect("joined");
    assert!(joined.capabilities.contains(Capabilities::COMPRESSION));
    // Coded patches pass through the relay end to end, like compression (spec §10.3).
    assert!(joined.capabilities.contains(Capabilities::CODED_PATCHES));

    let run = tokio::spawn(session::run_agent(
        agent,
        AgentOptions::default(),
        Instant::now(),
    ));
    let mut stream = consumer
        .connection()
        .open_uni()
        .await
        .expect("open DOM stream");
    stream.write_all(&dom).await.expect("write");
    let _ = stream.finish();
    let result = guard("the agent to stop", run).await.expect("agent task");
    relay.shutdown().await;
    result
}

fn compressed_frame(body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    varint::write_u32(&mut f, FrameType::COMPRESSED.0);
    varint::write_u32(&mut f, body.len() as u32);
    f.extend_from_slice(body);
    f
}

fn decompress_error(result: Result<session::AgentReport, SessionError>) -> DecompressError {
    match result {
        Err(SessionError::Decompress(e)) => e,
        other => panic!("expected a decompression error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_compressed_stream_is_a_typed_error() {
    let dom = compressed_frame(&[0x01, 0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x68, 0xff, 0xff, 0xff]);
    let err = decompress_error(agent_receiving(dom).await);
    assert!(matches!(err, DecompressError::Corrupt { .. }), "{err:?}");
    assert_eq!(err.code(), tandem_protocol::ErrorCode::MalformedFrame);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_coded_patch_streams_are_typed_errors() {
    // Codec 0x02 (spec §4.6.5): a chunk announced above the frame limit, refused from its
    // header; and a coded chunk that is not a patch.
    let mut big = vec![CODEC_CODED_PATCHES];
    varint::write_u32(&mut big, (Limits::DEFAULT.max_frame_body + 1) << 1 | 1);
    let err = decompress_error(agent_receiving(compressed_frame(&big)).await);
    assert!(
        matches!(err, DecompressError::ChunkTooLarge { .. }),
        "{err:?}"
    );
    assert_eq!(err.code(), tandem_protocol::ErrorCode::LimitExceeded);
    let mut junk = vec![CODEC_CODED_PATCHES];
    varint::write_u32(&mut junk, 40 << 1 | 1);
    junk.extend([0xa5; 40]);
    let err = decompress_error(agent_receiving(compressed_frame(&junk)).await);
    assert!(matches!(err, DecompressError::CodedPatch(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_codec_is_a_typed_error() {
    let dom = compressed_frame(&[0x07, 0x00]);
    let err = decompress_error(agent_receiving(dom).await);
    assert_eq!(err, DecompressError::UnknownCodec { codec: 7 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_inner_frame_is_refused_before_it_expands() {
    // 64 MiB of output from a few kilobytes, under a header that announces a frame above the
    // limit: refused at the header, long before the output would exist.
    let limits = Limits::DEFAULT;
    let mut inner = Vec::new();
    varint::write_u32(&mut inner, FrameType::PATCH.0);
    varint::write_u32(&mut inner, limits.max_frame_body + 1);
    inner.resize(64 << 20, 0);
    let mut dom = Vec::new();
    DomCompressor::with_level(1)
        .expect("compressor")
        .write_frames(&inner, &mut dom, &limits)
        .expect("compresses");
    assert!(dom.len() < 64 * 1024);
    let err = decompress_error(agent_receiving(dom).await);
    assert!(
        matches!(
            err,
            DecompressError::Frame(DecodeError::FrameTooLarge { .. })
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), tandem_protocol::ErrorCode::LimitExceeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncompressed_frames_on_a_compressed_session_are_refused() {
    let dom = frame::to_frame(&Message::Ping(Ping { nonce: 1 }), &Limits::DEFAULT).expect("ping");
    let err = decompress_error(agent_receiving(dom).await);
    assert_eq!(
        err,
        DecompressError::UnexpectedFrame {
            ty: FrameType::PING,
            inner: false
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_compressed_stream_is_a_typed_error() {
    // A real snapshot's compressed bytes, cut short: the stream ends inside a block.
    let limits = Limits::DEFAULT;
    let page = tandem_engine::parse_html(tandem_peers::demo::SAMPLE_PAGE, limits);
    let mut consumer = tandem_engine::Consumer::new(page, "https://shop.example/", limits);
    let mut frames = Vec::new();
    while let Some(msg) = consumer.poll_message() {
        frame::encode_frame(&msg, &mut frames, &limits).expect("encodes");
    }
    let mut body = Vec::new();
    DomCompressor::new()
        .expect("compressor")
        .compress(&frames, &mut body)
        .expect("compresses");
    body.truncate(body.len() / 2);
    let err = decompress_error(agent_receiving(compressed_frame(&body)).await);
    assert!(
        matches!(
            err,
            DecompressError::Truncated | DecompressError::Frame(DecodeError::Truncated { .. })
        ),
        "{err:?}"
    );
}
