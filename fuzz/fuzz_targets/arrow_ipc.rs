//! A client's Arrow IPC stream, as the gRPC `AppendArrow` call reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    ktrail_fuzz::allow_caught_panics();
    let _ = ingest::arrow_ipc::read_stream(bytes.to_vec());
});
