#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pglink::fuzzing::backend_login(data);
});
