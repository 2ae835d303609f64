//! One record read as `Format::K8sObjects`.
#![no_main]

libfuzzer_sys::fuzz_target!(|record: &[u8]| {
    ktrail_fuzz::check_record(ingest::Format::K8sObjects, record);
});
