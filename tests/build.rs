//! Tells the end-to-end tests what this machine can run, so that a test
//! whose precondition is known to be absent is reported as ignored (with
//! its reason) instead of passing without having run.
//!
//! - `cfg(devd_tests_not_root)`: the build does not run as root, so the
//!   tests that mount file systems (`disk_full`) cannot work. CI runs as
//!   root and runs them; elsewhere `cargo test -- --ignored` still runs
//!   them, and they fail loudly if the mount is refused.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(devd_tests_not_root)");
    // Re-evaluated when the user changes (root vs a developer sharing a
    // target directory), not only when this file does.
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=USER");
    println!("cargo::rerun-if-env-changed=SUDO_USER");
    if effective_uid().is_some_and(|uid| uid != 0) {
        println!("cargo::rustc-cfg=devd_tests_not_root");
    }
}

/// The effective uid of this process, from `/proc/self/status`
/// (`Uid: real effective saved fs`); `None` if it cannot be read, in which
/// case the tests are not ignored and say for themselves what failed.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
