//! The `--png` input of `glom parse` (src/parse/png_input.rs, compiled here
//! by path), on arbitrary bytes.
//!
//! Input: one byte choosing the configured image side (1..=64) and the
//! channels (1 or 3), then the file. Checked: no panic; no allocation
//! beyond what an image of the configured size needs, whatever size the
//! header claims (run with `-malloc_limit_mb`); an accepted image has
//! exactly channels x side x side pixels in [0, 1].

#![no_main]

#[allow(dead_code)]
#[path = "../../src/parse/png_input.rs"]
mod png_input;

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&head, file)) = data.split_first() else {
        return;
    };
    let side = usize::from(head & 0x3f) + 1;
    let channels = if head & 0x40 != 0 { 3 } else { 1 };
    if let Ok(pixels) = png_input::decode_png(Cursor::new(file), "fuzz.png", side, channels) {
        assert_eq!(pixels.len(), channels * side * side);
        assert!(pixels.iter().all(|p| (0.0..=1.0).contains(p)));
    }
});
