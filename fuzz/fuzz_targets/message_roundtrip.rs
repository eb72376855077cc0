//! An arbitrary `Message` encodes and decodes to an equal value (oracle: `fuzzing::message_roundtrip`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_protocol::fuzzing::message_roundtrip_bytes(data));
