//! # tandem-peers: the `tandem` binary's library — QUIC transport and framing
//!
//! ```text
//!  transport  quinn endpoints: TLS 1.3 (ring), ALPN tandem/1, pinned self-signed certificates,
//!             transport parameters for slow lossy links
//!  framed     frames over QUIC streams: write Message/RawFrame, read with bounded memory,
//!             forward a stream frame by frame without decoding bodies
//! ```
#![deny(missing_docs)]

pub mod framed;
pub mod transport;
