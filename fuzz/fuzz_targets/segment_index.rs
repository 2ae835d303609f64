//! A segment's index file: damage is `Corruption`, and what parses writes back the same bytes.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use storage::SegmentIndex;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(index) = SegmentIndex::from_bytes(Path::new("index"), bytes) {
        let again = SegmentIndex::from_bytes(Path::new("index"), &index.to_bytes())
            .expect("an index ktrail wrote parses");
        assert_eq!(again.to_bytes(), index.to_bytes());
    }
});
