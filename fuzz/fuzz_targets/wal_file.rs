//! A WAL file's bytes, replayed as opening the store replays them; each record that passes its
//! checksum goes through the payload decoder too.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ktrail_fuzz::allow_caught_panics();
    // The file name's sequence number is the header's, as in a file the WAL wrote.
    let first_seq = data
        .get(8..16)
        .map_or(1, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    for is_last in [true, false] {
        let mut last = None;
        let _ = storage::wal::replay_bytes(
            Path::new("wal/0.wal"),
            first_seq,
            data,
            is_last,
            0,
            &mut |seq, payload| {
                assert!(last.is_none_or(|l| seq == l + 1), "records out of order");
                last = Some(seq);
                let _ = storage::wal::decode_batch(payload);
                Ok(())
            },
        );
    }
});
