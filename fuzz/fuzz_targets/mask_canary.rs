//! Random pages with canaries in maskable places and random change sequences: no canary in
//! any frame sent, raw or compressed (oracle: `tandem_engine::mask::fuzzing::mask_canary`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_engine::mask::fuzzing::mask_canary(data));
