//! Checkpoint manifests: the bytes of a `manifest.json` as the checkpoint
//! reader parses and verifies them (`Manifest::from_json`, which
//! `glom_worker::checkpoint::read_manifest` calls on the file's bytes).
//!
//! Checked: no panic and no huge allocation whatever the file claims (a
//! grid of 2^40 locations, say), with the file's config hash as written and
//! made right; an accepted manifest validates, holds
//! every location exactly once, and survives being written and read back
//! (as `write_manifest` and `read_manifest` do it) unchanged.

#![no_main]

use glom_protocol::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The config hash is a SHA-256 the fuzzer cannot forge but a file's
    // author can: validate the same manifest with its hash made right, so
    // the checks after it (grid, shards, locations) are reached too.
    if let Ok(mut m) = serde_json::from_slice::<Manifest>(data) {
        m.config_hash = m.config.hash();
        if m.validate().is_ok() {
            check(&m);
        }
    }
    if let Ok(m) = Manifest::from_json(data) {
        check(&m);
    }
});

/// What holds of every accepted manifest.
fn check(m: &Manifest) {
    m.validate().expect("an accepted manifest validates");
    let n = m.num_locations();
    let held: usize = m.shards.iter().map(|s| s.locations.len()).sum();
    assert_eq!(held, n, "every location exactly once");
    for loc in 0..n {
        assert!(m.shard_of(loc).is_some());
    }
    assert!(m.shard_of(n).is_none());
    let json = serde_json::to_vec_pretty(&m).expect("a manifest serialises");
    let back = Manifest::from_json(&json).expect("a written manifest reads back");
    assert_eq!(&back, m);
}
