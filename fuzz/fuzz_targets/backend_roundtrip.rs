#![no_main]

libfuzzer_sys::fuzz_target!(|_data: &[u8]| {
    // Filled in by the module that owns this target.
});
