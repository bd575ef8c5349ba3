//! The receiver's operational endpoints on a real `devd-receiver serve
//! --http-listen`: `/healthz`, `/readyz` (ready once its workspaces are
//! open), Prometheus `/metrics` whose counters move when a laptop syncs.

use devd_tests::containers::http_get;
use devd_tests::{FAST_SYNC, Fixture, ReceiverOpts, random_bytes};
use std::time::Duration;

/// The value of the sample `series` (name and labels as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    })
}

#[test]
fn healthz_readyz_and_metrics_that_move_after_a_sync() {
    let fx = Fixture::new();
    let config = fx.root().join("receiver.toml");
    std::fs::write(&config, "[build]\nbackend = \"none\"\n").unwrap();
    let rx = fx.receiver_with(ReceiverOpts {
        config: Some(config),
        args: vec!["--http-listen".into(), "127.0.0.1:0".into()],
        ..Default::default()
    });
    let base = format!("http://{}", rx.http_addr());
    let get = |path: &str| {
        http_get(&format!("{base}{path}")).unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
    };
    assert_eq!(get("/healthz"), (200, "ok\n".to_owned()));
    // `listening on` is printed once the workspaces are open and recovered.
    assert_eq!(get("/readyz"), (200, "ready\n".to_owned()));
    assert_eq!(get("/nope").0, 404);

    let (status, before) = get("/metrics");
    assert_eq!(status, 200);
    let ws = "{workspace=\"default\"}";
    let series = |name: &str| format!("devd_receiver_{name}{ws}");
    for name in [
        "syncs_applied_total",
        "received_bytes_total",
        "apply_duration_seconds_count",
        "build_duration_seconds_count",
    ] {
        assert_eq!(
            sample(&before, &series(name)),
            Some(0.0),
            "{name} starts at 0:\n{before}"
        );
    }
    assert!(
        before.contains("# TYPE devd_receiver_builds counter")
            && before.contains("# TYPE devd_receiver_apply_duration_seconds histogram")
            && before.trim_end().ends_with("# EOF"),
        "{before}"
    );

    // A sync with a file the receiver cannot have: its bytes come from the laptop.
    fx.write("assets/blob.bin", random_bytes("receiver-ops", 200_000));
    fx.write_config(&format!("{}{FAST_SYNC}", rx.config_toml()));
    let devd = fx.devd();
    devd.start_wait();
    devd.sync_and_assert_equal(&rx.worktree());

    let (_, after) = get("/metrics");
    let applied = sample(&after, &series("syncs_applied_total")).unwrap();
    assert!(applied >= 1.0, "{after}");
    let bytes = sample(&after, &series("received_bytes_total")).unwrap();
    assert!(
        bytes >= 100_000.0,
        "random content does not compress: the received bytes count it ({bytes}):\n{after}"
    );
    assert_eq!(
        sample(&after, &series("apply_duration_seconds_count")),
        Some(applied),
        "one apply latency per applied sync"
    );
    assert!(sample(&after, &series("apply_duration_seconds_sum")).unwrap() > 0.0);

    // One more edit: one more sync, a few more bytes.
    fx.write(
        "src/lib.rs",
        "pub fn add(a: u32, b: u32) -> u32 {\n    a + b + 0\n}\n",
    );
    devd.sync_and_assert_equal(&rx.worktree());
    let (_, last) = get("/metrics");
    assert!(
        sample(&last, &series("syncs_applied_total")).unwrap() > applied,
        "{last}"
    );
    assert!(
        sample(&last, &series("received_bytes_total")).unwrap() > bytes,
        "{last}"
    );
    devd.stop();

    // Draining on SIGTERM: the HTTP server goes with the process.
    rx.signal("TERM");
    let mut rx = rx;
    assert!(
        rx.wait_exit(Duration::from_secs(30)).is_some(),
        "the receiver did not exit on SIGTERM"
    );
    assert!(http_get(&format!("{base}/healthz")).is_err());
}
