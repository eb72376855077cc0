//! A tree and a changed copy of it (or a second tree), diffed on a consumer and applied on an
//! agent: never panics, always converges (oracle: `tandem_engine::diff::fuzzing::diff_apply`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_engine::diff::fuzzing::diff_apply(data));
