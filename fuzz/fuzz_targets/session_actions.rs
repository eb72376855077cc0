//! Arbitrary sequences of session and action messages from both sides (mode requests and
//! consent, pause and resume, pointer, scroll, highlight, click, input, navigation, raw frames,
//! lifecycle triggers): never panics, never lets an action through that the mode, a pause or
//! the masking policy forbids, and the session machine never leaves its table (oracle:
//! `tandem_engine::hands::fuzzing::session_actions`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_engine::hands::fuzzing::session_actions(data));
