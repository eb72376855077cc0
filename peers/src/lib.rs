//! # tandem-peers: the `tandem` binary's library — QUIC transport, relay and clients
//!
//! ```text
//!  transport  quinn endpoints: TLS 1.3 (ring), ALPN tandem/1, pinned self-signed certificates,
//!             transport parameters for slow lossy links
//!  congestion Cubic with a cap that keeps the bottleneck's queue short (ShallowQueue), so the
//!             pointer does not wait behind a buffer full of snapshot
//!  framed     frames over QUIC streams: write Message/RawFrame, read with bounded memory,
//!             forward a stream frame by frame without decoding bodies
//!  meter      the relay's forwarded streams go into a connection at its pacing rate in small
//!             pieces, leaving room in its window for datagrams (the pointer)
//!  relay      `tandem relay`: pairing by code or token, forwarding, lifecycle events, a
//!             session kept through a lost connection until its side resumes (relay/live.rs);
//!             relay::state is its sans-IO core (session table, tokens, negotiation, teardown)
//!  client     ControlChannel: HELLO/WELCOME, SESSION_OPEN or JOIN, JOINED; Reconnect comes
//!             back with a resume token, HELLO and JOIN in 0-RTT (spec §3.5)
//!  session    the consumer's and the agent's session pumps over QUIC, which reconnect when a
//!             resumable channel's connection goes and continue the DOM stream
//!  pump       the consumer's DOM writer with backpressure: one patch in flight, changes fold
//!  resources  content-addressed resources over QUIC (spec §14): resource streams, have/want,
//!             the relay's shared cache
//!  hands      the agent's actions: the consumer's authority carried out on its page, and
//!             the agent's scripted actions (`tandem demo --mode`)
//!  presence   platform in HELLO, STATUS from quinn statistics, the other side's viewport
//!  link       link emulation without netem: a loopback UDP forwarder with delay, rate, queue
//!             and seeded loss per direction (`--link 300ms,750kbit,1%`); link::Shaper is sans-IO
//!  bench      the end-to-end benchmark: Tandem vs. the page gzip-compressed over TCP + TLS
//! ```
//!
//! Dependencies point one way: peers → engine → protocol. Every protocol decision of the relay
//! is in [`relay::state`], which does no I/O; the rest is the tokio pump (STYLE.md 3).
//!
//! ## Example: a relay and two clients in one process
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tandem_peers::{client, relay, transport};
//! use tandem_protocol::message::{Credential, Role};
//!
//! let relay = relay::spawn(relay::RelayConfig::new(
//!     "127.0.0.1:0".parse()?,
//!     transport::Identity::generate()?,
//! ))?;
//! let conn = client::connect(relay.addr, relay.fingerprint, Role::Consumer).await?;
//! let mut consumer = client::ControlChannel::open(conn, client::hello(Role::Consumer)).await?;
//! let code = consumer.open_session("Customer").await?.code;
//!
//! let conn = client::connect(relay.addr, relay.fingerprint, Role::Agent).await?;
//! let mut agent = client::ControlChannel::open(conn, client::hello(Role::Agent)).await?;
//! let consumer_info = agent.join(Credential::Code(code), "Alice").await?;
//! let agent_info = consumer.wait_joined().await?;
//! relay.shutdown().await;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

/// Prints one line on standard output for the operator, like `println!`, except that a failed
/// write is ignored: a session must not end because whoever read its output went away (the
/// consumer's `code:` line read with `| head -1`, then a closed pipe). Reports whose loss must
/// be an error go through [`tools`]' report writer instead.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::say_line(format_args!($($arg)*))
    };
}

/// The body of `say!`.
fn say_line(args: std::fmt::Arguments<'_>) {
    write_line(std::io::stdout().lock(), args);
}

/// Writes `args` and a newline to `w`, dropping a failed write (`say!`, `note!`).
fn write_line(mut w: impl std::io::Write, args: std::fmt::Arguments<'_>) {
    let _ = w.write_fmt(args).and_then(|()| w.write_all(b"\n"));
}

/// Prints one line on standard error, like `eprintln!`, except that a failed write is ignored:
/// `eprintln!` panics when the reader of a piped standard error has gone (`2>&1 | head`), and a
/// session's progress notes must not end it.
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::note_line(format_args!($($arg)*))
    };
}

/// The body of `note!`.
fn note_line(args: std::fmt::Arguments<'_>) {
    write_line(std::io::stderr().lock(), args);
}

pub mod agent;
pub mod bench;
pub mod client;
pub mod congestion;
pub mod consumer;
pub mod demo;
pub mod framed;
pub mod hands;
pub mod link;
pub mod meter;
pub mod presence;
pub mod pump;
pub mod relay;
pub mod resources;
pub mod session;
pub mod snapshot;
pub mod tools;
pub mod transport;
