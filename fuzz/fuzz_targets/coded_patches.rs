//! Arbitrary `PATCH` messages coded and decoded by one patch coder each (oracle:
//! `fuzzing::coded_patches_bytes`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_protocol::fuzzing::coded_patches_bytes(data));
