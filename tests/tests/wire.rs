//! Bytes on the wire: a small edit to a large file costs bytes proportional
//! to the edit (zstd patch against the version the receiver has), not to
//! the file.

use devd_tests::{Fixture, assert_worktrees_equal, text_lines};

/// Limit for one one-line-edit sync, both directions: a few kilobytes per
/// sync is what a diff-shipping design achieves; devd must not do worse.
const LIMIT: u64 = 4096;

/// Replace the line starting with `prefix` by `prefix` + `rest`.
fn edit_line(text: &[u8], prefix: &str, rest: &str) -> Vec<u8> {
    let s = std::str::from_utf8(text).unwrap();
    let start = s
        .find(prefix)
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}"));
    let end = start + s[start..].find('\n').unwrap();
    format!("{}{prefix}{rest}{}", &s[..start], &s[end..]).into_bytes()
}

/// A one-line edit in a 1 MB tracked text file costs under 4 KiB of UDP
/// bytes (sent + received) per sync, once against the base blob and once
/// against the previous overlay blob; the receiver has the exact content.
///
/// The daemon runs (so the QUIC connection and handshake are already paid)
/// with a long debounce, so that the sync measured is the one `devd sync`
/// performs for the edit, not one the watcher started first.
#[test]
fn one_line_edit_in_a_megabyte_file_costs_under_4_kib() {
    let fx = Fixture::new();
    let original = text_lines("wire", 1 << 20);
    fx.write("data/big.txt", &original);
    fx.commit_all_and_push("add a 1 MB text file");
    let rx = fx.receiver();
    fx.write_config(&format!(
        "{}[sync]\ndebounce_ms = 60000\n",
        rx.config_toml()
    ));
    let devd = fx.devd();
    devd.start_wait();
    assert_worktrees_equal(fx.laptop(), &rx.worktree());
    assert_eq!(
        devd.status().base,
        fx.rev_parse("origin/main"),
        "the 1 MB file must be in the base"
    );

    let mut current = original;
    for (round, line) in [(1, "line 004321: "), (2, "line 009876: ")] {
        current = edit_line(&current, line, &format!("EDITED in round {round}"));
        fx.write("data/big.txt", &current);
        let r = devd.sync();
        println!(
            "round {round}: one-line edit of a 1 MB file: {} bytes sent + {} bytes received = {} bytes on the wire ({} files, {} ms)",
            r.bytes_sent,
            r.bytes_received,
            r.wire_bytes(),
            r.files,
            r.latency_ms
        );
        assert!(
            r.files >= 1,
            "round {round}: the sync reports no file; did something else sync the edit first? {r:?}"
        );
        assert!(
            r.bytes_sent > 0 && r.bytes_received > 0,
            "round {round}: no bytes counted: {r:?}"
        );
        assert!(
            r.wire_bytes() < LIMIT,
            "round {round}: a one-line edit cost {} bytes on the wire (limit {LIMIT}): {r:?}",
            r.wire_bytes()
        );
        let got =
            std::fs::read(rx.worktree().join("data/big.txt")).expect("big.txt on the receiver");
        assert!(
            got == current,
            "round {round}: data/big.txt differs on the receiver"
        );
        assert_worktrees_equal(fx.laptop(), &rx.worktree());
    }
}
