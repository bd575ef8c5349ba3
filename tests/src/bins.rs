//! Locating the binaries under test in the cargo target directory.

use std::path::PathBuf;

/// Path of the binary `name` (`devd` or `devd-receiver`) next to the test
/// executable: `target/debug/deps/<test>` → `target/debug/<name>`.
///
/// Panics with a hint when it is missing: integration tests of this crate
/// do not build other packages' binaries, so `cargo build --bins` must run
/// first (CI runs `cargo build --workspace --bins` before `cargo test`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe of the test binary");
    let mut dir = exe
        .parent()
        .expect("the test binary has a parent directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "binary `{name}` not found at {}: run `cargo build --bins` first \
         (with the same CARGO_TARGET_DIR as `cargo test`)",
        path.display()
    );
    path
}
