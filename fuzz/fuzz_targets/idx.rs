//! The IDX reader of Fashion-MNIST (`glom_worker::data::idx`), plain or
//! gzipped, on arbitrary bytes.
//!
//! Checked: no panic; memory follows the bytes that arrive, not the sizes
//! the header claims (run with `-malloc_limit_mb`); an accepted file's
//! data is exactly the product of its dimensions.

#![no_main]

use std::path::Path;

use glom_worker::data::idx::read_idx_from;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = read_idx_from(data, Path::new("fuzz-idx3-ubyte")) {
        let n: usize = a.dims.iter().product();
        assert_eq!(a.data.len(), n);
        assert!(!a.dims.is_empty());
    }
});
