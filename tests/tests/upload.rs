//! When the receiver cannot fetch the base commit from its git remote, the
//! laptop uploads the base content itself (content-addressed) and says so.

use devd_tests::{FAST_SYNC, Fixture, ReceiverOpts, assert_worktrees_equal};

/// A receiver whose git remote does not exist still ends up with the
/// laptop's exact worktree: the daemon switches to uploading the base, and
/// `devd status` reports `base_mode: "uploaded"`. Later edits keep syncing
/// as deltas.
#[test]
fn base_is_uploaded_when_the_receiver_cannot_fetch_it() {
    let fx = Fixture::new();
    let missing = fx.root().join("no-such-origin.git");
    let rx = fx.receiver_with(ReceiverOpts {
        git_remote: Some(format!("file://{}", missing.display())),
        ..Default::default()
    });
    fx.write_config(&format!("{}{FAST_SYNC}", rx.config_toml()));
    let devd = fx.devd();
    devd.start_wait();
    devd.sync_and_assert_equal(&rx.worktree());
    let status = devd.status();
    assert_eq!(status.base_mode, "uploaded", "status: {}", status.raw);
    let err = status.raw["base_mode_reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        err.contains("base unavailable") && err.contains("no-such-origin"),
        "status names why the base is uploaded: {err:?}"
    );

    // Edits after the switch are ordinary deltas.
    fx.append("README.md", "\none more line\n");
    fx.write("src/new_module.rs", "pub fn f() {}\n");
    let report = devd.sync_and_assert_equal(&rx.worktree());
    assert!(report.files >= 2, "the edit was applied: {report:?}");
    assert_worktrees_equal(fx.laptop(), &rx.worktree());

    // Running totals cover every sync, including the full upload.
    let totals = devd.status().raw["totals"].clone();
    let syncs = totals["syncs"].as_u64().unwrap_or(0);
    let sent = totals["bytes_sent"].as_u64().unwrap_or(0);
    assert!(syncs >= 2, "at least the upload and the edit: {totals}");
    assert!(
        sent > report.bytes_sent,
        "totals include the upload: {totals} vs {report:?}"
    );
}
