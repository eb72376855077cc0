//! Arbitrary bytes as a frame stream, split into arbitrary pieces (oracle: `fuzzing::frame_decode`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_protocol::fuzzing::frame_decode(data));
