#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pglink::protocol::fuzzing::fuzz_backend_roundtrip(data));
