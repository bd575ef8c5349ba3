//! `devd-receiver vacuum` against the kmock Kubernetes emulator
//! (`tests/kmock/launcher.py`; no cluster runs here): it deletes exactly
//! the namespaces that carry devd's workspace labels and an expiry in the
//! past, and nothing else — not unlabelled namespaces with the annotation,
//! not live, unannotated or badly annotated workspaces. The emulator
//! ignores label selectors, so this also proves the vacuum checks the
//! labels itself.

use devd_sync::labels::{ANNOTATION_EXPIRES, ANNOTATION_OWNER, LABEL_MANAGED_BY, LABEL_WORKSPACE};
use devd_tests::kmock::KubeEmulator;
use devd_tests::process::{self, Run};
use devd_tests::{Fixture, bin};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use serde_json::json;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

const PAST: &str = "2020-01-01T00:00:00Z";
const FUTURE: &str = "2999-01-01T00:00:00Z";

fn devd_labels(ws: &str) -> serde_json::Value {
    json!({LABEL_MANAGED_BY: "devd", LABEL_WORKSPACE: ws, "app.kubernetes.io/part-of": "devd"})
}

fn vacuum(fx: &Fixture, emu: &KubeEmulator, args: &[&str]) -> Run {
    let mut cmd = Command::new(bin("devd-receiver"));
    cmd.arg("vacuum")
        .args(args)
        .env("KUBECONFIG", emu.kubeconfig())
        .env("RUST_LOG", "info");
    let run = process::run(&mut cmd, fx.logs(), "vacuum", Duration::from_secs(60));
    assert!(
        run.success(),
        "{}\n--- emulator ---\n{}",
        run.describe(),
        emu.stderr()
    );
    run
}

#[test]
fn vacuum_emulator_deletes_only_expired_namespaces_carrying_devds_labels() {
    let fx = Fixture::new();
    let emu = KubeEmulator::start(&fx, "default");
    let (rt, client) = emu.client();
    let api: Api<Namespace> = Api::all(client);
    let cases = [
        // (name, labels, annotations, deleted?)
        (
            "devd-alice",
            devd_labels("alice"),
            json!({ANNOTATION_OWNER: "alice@example.com", ANNOTATION_EXPIRES: PAST}),
            true,
        ),
        (
            "devd-bob",
            devd_labels("bob"),
            // An offset other than Z, an hour ago in any zone.
            json!({ANNOTATION_OWNER: "bob", ANNOTATION_EXPIRES: "2021-06-01T12:00:00+02:00"}),
            true,
        ),
        (
            "devd-carol",
            devd_labels("carol"),
            json!({ANNOTATION_OWNER: "carol", ANNOTATION_EXPIRES: FUTURE}),
            false,
        ),
        (
            "devd-dave",
            devd_labels("dave"),
            json!({ANNOTATION_OWNER: "dave"}),
            false,
        ),
        (
            "devd-erin",
            devd_labels("erin"),
            json!({ANNOTATION_EXPIRES: "next tuesday"}),
            false,
        ),
        // The annotation without devd's labels: not devd's to delete.
        (
            "payments",
            json!({"team": "payments"}),
            json!({ANNOTATION_EXPIRES: PAST}),
            false,
        ),
        // Only one of the two labels.
        (
            "lookalike",
            json!({LABEL_WORKSPACE: "frank"}),
            json!({ANNOTATION_EXPIRES: PAST}),
            false,
        ),
        (
            "managed-elsewhere",
            json!({LABEL_MANAGED_BY: "devd"}),
            json!({ANNOTATION_EXPIRES: PAST}),
            false,
        ),
        ("kube-system", json!({}), json!({}), false),
    ];
    rt.block_on(async {
        for (name, labels, annotations, _) in &cases {
            let ns: Namespace = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": labels, "annotations": annotations},
            }))
            .unwrap();
            api.create(&PostParams::default(), &ns).await.unwrap();
        }
    });
    let names = |api: &Api<Namespace>| -> BTreeSet<String> {
        rt.block_on(api.list(&Default::default()))
            .unwrap()
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect()
    };
    let all: BTreeSet<String> = cases.iter().map(|c| c.0.to_owned()).collect();
    assert!(names(&api).is_superset(&all));
    let expired: BTreeSet<String> = cases
        .iter()
        .filter(|c| c.3)
        .map(|c| c.0.to_owned())
        .collect();

    // A dry run names them and deletes nothing.
    let dry = vacuum(&fx, &emu, &["--dry-run"]);
    for n in &expired {
        assert!(
            dry.stdout.contains(&format!("would delete namespace {n} ")),
            "{}",
            dry.stdout
        );
    }
    assert!(
        dry.stdout
            .contains("would delete 2 expired workspace namespaces; kept 3"),
        "{}",
        dry.stdout
    );
    assert!(names(&api).is_superset(&all), "a dry run deleted something");

    let run = vacuum(&fx, &emu, &[]);
    assert!(
        run.stdout.contains(
            "deleted namespace devd-alice (owner alice@example.com, expired 2020-01-01T00:00:00Z)"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("deleted namespace devd-bob "),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("devd-erin") && run.stderr.contains("not an RFC 3339 time"),
        "a bad expiry is logged:\n{}",
        run.stderr
    );
    let left = names(&api);
    let kept: BTreeSet<String> = all.difference(&expired).cloned().collect();
    assert!(
        left.is_superset(&kept),
        "kept namespaces were deleted: {left:?}"
    );
    assert!(
        left.is_disjoint(&expired),
        "expired namespaces are left: {left:?}"
    );

    // Nothing more to do on the next run.
    let again = vacuum(&fx, &emu, &[]);
    assert!(
        again
            .stdout
            .contains("deleted 0 expired workspace namespaces; kept 3"),
        "{}",
        again.stdout
    );
    assert_eq!(names(&api), left);
}
