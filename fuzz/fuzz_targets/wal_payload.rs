//! A WAL record's payload (codec byte, zstd frame, Arrow IPC stream): the checksum passed, the
//! bytes are still not trusted.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|payload: &[u8]| {
    ktrail_fuzz::allow_caught_panics();
    let _ = storage::wal::decode_batch(payload);
});
