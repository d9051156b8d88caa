//! Helpers for the crate's unit tests (compiled only for them).

use std::path::PathBuf;

/// A new directory of its own under the system's temp dir, named by `tag`, the
/// process and a random number, so parallel tests and runs never share one.
#[allow(clippy::expect_used)]
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "edgelb-{tag}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("a temp directory for a test");
    dir
}
