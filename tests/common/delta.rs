//! Delta upgrades for tests: the committed detools fixtures (tests/fixtures/delta/, made by the
//! real detools; make.py there).

use std::path::Path;

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/delta");

/// A file of tests/fixtures/delta: `{pair}.old`, `{pair}.new`, `{pair}.{compression}.patch`.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(FIXTURES).join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}
