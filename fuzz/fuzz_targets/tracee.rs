//! One record read as `Format::Tracee`.
#![no_main]

libfuzzer_sys::fuzz_target!(|record: &[u8]| {
    ktrail_fuzz::check_record(ingest::Format::Tracee, record);
});
