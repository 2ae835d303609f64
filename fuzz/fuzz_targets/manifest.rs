//! The MANIFEST file: damage is an error naming the file, never a panic or a partial list.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use storage::{Manifest, StorageError};

fuzz_target!(|bytes: &[u8]| {
    match Manifest::from_bytes(Path::new("MANIFEST"), bytes) {
        Ok(m) => {
            let _ = m.rows();
        }
        Err(StorageError::Corruption { path, .. } | StorageError::UnsupportedVersion { path, .. }) => {
            assert_eq!(path, Path::new("MANIFEST"));
        }
        Err(e) => panic!("unexpected error kind: {e}"),
    }
});
