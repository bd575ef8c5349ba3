//! `devd workspace` against the kmock Kubernetes emulator
//! (`tests/kmock/launcher.py`; no cluster runs here), with the real `devd`
//! binary and a kubeconfig: `create` makes a namespace carrying devd's
//! labels and the owner and expiry annotations the vacuum reads, `list`
//! shows it, `extend` moves the expiry, `devd-receiver vacuum` deletes it
//! once the expiry has passed, and `delete` deletes only devd's
//! namespaces.

use devd_receiver::vacuum::{
    ANNOTATION_EXPIRES, ANNOTATION_OWNER, LABEL_MANAGED_BY, LABEL_WORKSPACE,
};
use devd_tests::kmock::KubeEmulator;
use devd_tests::process::{self, Run};
use devd_tests::{Fixture, bin};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::process::Command;
use std::time::Duration;

const OWNER: &str = "alice@example.com";

struct Env<'a> {
    fx: &'a Fixture,
    emu: &'a KubeEmulator,
    gitconfig: std::path::PathBuf,
}

impl Env<'_> {
    fn cmd(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin(program));
        cmd.args(args)
            .current_dir(self.fx.root())
            .env("KUBECONFIG", self.emu.kubeconfig())
            .env("USER", "alice")
            .env("GIT_CONFIG_GLOBAL", &self.gitconfig)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("RUST_LOG", "info");
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) -> Run {
        let mut cmd = self.cmd(program, args);
        process::run(&mut cmd, self.fx.logs(), program, Duration::from_secs(60))
    }

    #[track_caller]
    fn ok(&self, program: &str, args: &[&str]) -> Run {
        let run = self.run(program, args);
        assert!(
            run.success(),
            "{}\n--- emulator ---\n{}",
            run.describe(),
            process::tail(&self.emu.stderr(), 40)
        );
        run
    }
}

fn expiry(ns: &Namespace) -> jiff::Timestamp {
    ns.metadata.annotations.as_ref().unwrap()[ANNOTATION_EXPIRES]
        .parse()
        .unwrap()
}

#[track_caller]
fn near(t: jiff::Timestamp, want: jiff::Timestamp) {
    let off = t.duration_since(want).as_secs().abs();
    assert!(off <= 30, "expiry {t} is not about {want}");
}

#[test]
fn workspace_emulator_create_list_extend_vacuum_delete() {
    let fx = Fixture::new();
    let emu = KubeEmulator::start(&fx, "default");
    let gitconfig = fx.root().join("workspace-gitconfig");
    std::fs::write(&gitconfig, format!("[user]\n\temail = {OWNER}\n")).unwrap();
    let env = Env {
        fx: &fx,
        emu: &emu,
        gitconfig,
    };
    devd_receiver::server::install_crypto();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(emu.kubeconfig()).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(cfg).unwrap()
    });
    let api: Api<Namespace> = Api::all(client);
    let get = |name: &str| rt.block_on(api.get_opt(name)).unwrap();

    for sub in [
        &["workspace"][..],
        &["workspace", "create"],
        &["workspace", "extend"],
    ] {
        let help = env.ok("devd", &[sub, &["--help"]].concat());
        assert!(
            help.stdout.contains("Examples:") && help.stdout.contains("devd workspace "),
            "{}",
            help.stdout
        );
    }

    // create: the namespace with devd's labels, the owner and an expiry
    // about now + ttl.
    let run = env.ok("devd", &["workspace", "create", "--ttl", "12h"]);
    assert!(
        run.stdout.contains("created namespace devd-alice")
            && run.stdout.contains("Next:")
            && run.stdout.contains("manifests/receiver"),
        "create says what it did and what is next:\n{}",
        run.stdout
    );
    let ns = get("devd-alice").expect("devd-alice was created");
    let labels = ns.metadata.labels.clone().unwrap();
    assert_eq!(labels[LABEL_MANAGED_BY], "devd");
    assert_eq!(labels[LABEL_WORKSPACE], "alice");
    assert_eq!(labels["app.kubernetes.io/part-of"], "devd");
    assert_eq!(
        ns.metadata.annotations.as_ref().unwrap()[ANNOTATION_OWNER],
        OWNER
    );
    let now = jiff::Timestamp::now();
    near(expiry(&ns), now + jiff::SignedDuration::from_hours(12));

    // A named one, and creating the same one again is refused clearly.
    env.ok(
        "devd",
        &["workspace", "create", "--name", "feat", "--ttl", "90m"],
    );
    let feat = get("devd-alice-feat").expect("devd-alice-feat was created");
    near(expiry(&feat), now + jiff::SignedDuration::from_mins(90));
    let again = env.run("devd", &["workspace", "create"]);
    assert!(!again.success(), "{}", again.describe());
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);

    // Someone else's workspace and a namespace that is not devd's.
    rt.block_on(async {
        for (name, labels, owner) in [
            (
                "devd-bob",
                json!({LABEL_MANAGED_BY: "devd", LABEL_WORKSPACE: "bob"}),
                "bob@example.com",
            ),
            ("payments", json!({"team": "payments"}), OWNER),
        ] {
            let ns: Namespace = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": labels, "annotations": {
                    ANNOTATION_OWNER: owner, ANNOTATION_EXPIRES: "2999-01-01T00:00:00Z"}},
            }))
            .unwrap();
            api.create(&PostParams::default(), &ns).await.unwrap();
        }
    });

    // list: the caller's workspaces, with owner, expiry and time left.
    let list = env.ok("devd", &["workspace", "list"]);
    for want in ["NAMESPACE", "devd-alice", "devd-alice-feat", OWNER, "LEFT"] {
        assert!(list.stdout.contains(want), "{want}:\n{}", list.stdout);
    }
    assert!(
        list.stdout.contains("11h 5") || list.stdout.contains("12h 00m"),
        "time left about 12h:\n{}",
        list.stdout
    );
    assert!(
        !list.stdout.contains("devd-bob") && !list.stdout.contains("payments"),
        "{}",
        list.stdout
    );
    let all = env.ok("devd", &["workspace", "list", "--all"]);
    assert!(all.stdout.contains("devd-bob"), "{}", all.stdout);
    assert!(!all.stdout.contains("payments"), "{}", all.stdout);
    let json: serde_json::Value =
        serde_json::from_str(&env.ok("devd", &["workspace", "list", "--json"]).stdout).unwrap();
    let items = json.as_array().unwrap();
    assert_eq!(items.len(), 2, "{json:#}");
    let alice = items
        .iter()
        .find(|i| i["namespace"] == "devd-alice")
        .unwrap();
    assert_eq!(alice["owner"], OWNER);
    assert_eq!(alice["workspace"], "alice");
    assert_eq!(alice["expired"], false);
    let left = alice["seconds_left"].as_i64().unwrap();
    assert!((12 * 3600 - 60..=12 * 3600).contains(&left), "{left}");
    assert_eq!(
        alice["expires_at"],
        get("devd-alice").unwrap().metadata.annotations.unwrap()[ANNOTATION_EXPIRES]
    );

    // extend: the expiry moves to now + ttl; by --name too.
    let run = env.ok(
        "devd",
        &["workspace", "extend", "devd-alice", "--ttl", "2d"],
    );
    assert!(run.stdout.contains("extended devd-alice"), "{}", run.stdout);
    near(
        expiry(&get("devd-alice").unwrap()),
        jiff::Timestamp::now() + jiff::SignedDuration::from_hours(48),
    );
    env.ok("devd", &["workspace", "extend", "feat", "--ttl", "6h"]);
    near(
        expiry(&get("devd-alice-feat").unwrap()),
        jiff::Timestamp::now() + jiff::SignedDuration::from_hours(6),
    );
    let bad = env.run(
        "devd",
        &["workspace", "extend", "devd-alice", "--ttl", "soon"],
    );
    assert!(
        !bad.success() && bad.stderr.contains("--ttl"),
        "{}",
        bad.describe()
    );

    // The vacuum deletes the workspace once its expiry has passed.
    rt.block_on(api.patch(
        "devd-alice-feat",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {ANNOTATION_EXPIRES: "2020-01-01T00:00:00Z"}}}),
        ),
    ))
    .unwrap();
    let list = env.ok("devd", &["workspace", "list"]);
    assert!(list.stdout.contains("expired"), "{}", list.stdout);
    let vac = env.ok("devd-receiver", &["vacuum"]);
    assert!(
        vac.stdout.contains("deleted namespace devd-alice-feat"),
        "{}",
        vac.stdout
    );
    assert!(get("devd-alice-feat").is_none(), "the vacuum left it");
    assert!(get("devd-alice").is_some(), "the vacuum deleted a live one");

    // delete: refuses a namespace without devd's labels, deletes a workspace.
    let refused = env.run("devd", &["workspace", "delete", "payments"]);
    assert!(!refused.success(), "{}", refused.describe());
    assert!(
        refused.stderr.contains("payments is not a devd workspace"),
        "{}",
        refused.stderr
    );
    assert!(get("payments").is_some(), "payments was deleted");
    let ext = env.run("devd", &["workspace", "extend", "payments", "--ttl", "1h"]);
    assert!(!ext.success() && ext.stderr.contains("not a devd workspace"));
    let missing = env.run("devd", &["workspace", "delete", "nope"]);
    assert!(
        !missing.success() && missing.stderr.contains("no workspace nope"),
        "{}",
        missing.describe()
    );
    let run = env.ok("devd", &["workspace", "delete", "devd-alice"]);
    assert!(
        run.stdout.contains("deleted namespace devd-alice"),
        "{}",
        run.stdout
    );
    assert!(get("devd-alice").is_none(), "devd-alice is left");
    let list = env.ok("devd", &["workspace", "list"]);
    assert!(
        list.stdout.contains("no workspaces owned by"),
        "{}",
        list.stdout
    );
}
