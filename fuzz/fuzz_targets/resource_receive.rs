//! Blobs cut into `RESOURCE` pieces, clean, damaged or made up, fed to a receiver with stream
//! ends and reconnections: never panics, keeps its budget, holds only blobs that match their
//! address (oracle: `tandem_engine::resource::fuzzing::resource_receive`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_engine::resource::fuzzing::resource_receive(data));
