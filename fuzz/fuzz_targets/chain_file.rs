//! The CHAIN file: any bytes are lines, entries or not, and checking them against a manifest
//! gives findings, never a panic (the counts and numbers in it are anyone's).
#![no_main]

use libfuzzer_sys::fuzz_target;
use storage::Manifest;
use storage::chain::{self, ChainHead, ChainState};

fuzz_target!(|bytes: &[u8]| {
    let lines = chain::parse_lines(bytes);
    let mut state = ChainState::default();
    for line in &lines {
        if let Ok(entry) = &line.entry {
            let _ = state.apply(entry);
        }
    }
    let last = lines
        .iter()
        .rev()
        .find_map(|l| l.entry.as_ref().ok().map(|e| (e.seq, l.hash.clone())));
    let manifest = Manifest {
        chain: Some(ChainHead {
            seq: last.as_ref().map_or(1, |(s, _)| *s),
            hash: last.map(|(_, h)| h).unwrap_or_default(),
            len: bytes.len() as u64,
        }),
        ..Default::default()
    };
    let _ = chain::check_lines(&lines, &manifest);
});
