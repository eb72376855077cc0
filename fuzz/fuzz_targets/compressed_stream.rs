//! A compressed DOM stream of either codec, round-tripped from frames or made up, pushed whole
//! and in pieces (oracle: `fuzzing::compressed_stream`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_protocol::fuzzing::compressed_stream(data));
