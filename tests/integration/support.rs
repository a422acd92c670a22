//! Helpers shared by the suites: the binary under test, fixture builds, root checks.

use std::path::PathBuf;

/// The `hindsight` binary built for this test run.
pub fn hindsight_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hindsight"))
}
