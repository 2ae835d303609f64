//! One record read as `Format::Auto`.
#![no_main]

libfuzzer_sys::fuzz_target!(|record: &[u8]| {
    ktrail_fuzz::check_record(ingest::Format::Auto, record);
});
