//! `devd prebuild` and a fresh workspace booted from prebuilt images, for
//! real: buildah builds, Debian's docker-registry stores, podman runs. The
//! repository is `examples/demo` (web, api, greeter).
//!
//! The build events are read the way the daemon reads them: a subscription
//! to the receiver's event stream, opened by the test before the daemon
//! starts, so every event of the boot is seen.

use devd::transport::{Credentials, TransportMode, connect_link};
use devd_protocol::message::{ClientMsg, ServerMsg};
use devd_protocol::{BuildEvent, EventKind, PROTOCOL_VERSION};
use devd_tests::containers::{
    ContainerEnv, Registry, http_get, receiver_pushing_to, require_container_tools,
};
use devd_tests::{Devd, Fixture, Receiver, ReceiverOpts};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DEPLOY_TIMEOUT: Duration = Duration::from_secs(120);
const SERVICES: [&str; 3] = ["api", "greeter", "web"];

/// Every build event a receiver sends from the moment of subscribing.
struct EventLog {
    events: Arc<Mutex<Vec<BuildEvent>>>,
    _rt: tokio::runtime::Runtime,
}

impl EventLog {
    fn subscribe(rx: &Receiver<'_>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let pairing = rx.pairing();
        let events: Arc<Mutex<Vec<BuildEvent>>> = Arc::default();
        let (addr, sink) = (rx.addr(), events.clone());
        rt.block_on(async move {
            let creds = Credentials {
                workspace: pairing.workspace.clone(),
                token: pairing.token.clone(),
            };
            let (link, mut io) =
                connect_link(addr, &pairing.fingerprint, TransportMode::Quic, creds)
                    .await
                    .expect("connect to the receiver");
            io.send(&ClientMsg::Hello {
                version: PROTOCOL_VERSION,
                workspace: pairing.workspace,
                token: pairing.token,
            })
            .await
            .unwrap();
            match io.recv::<ServerMsg>().await {
                Ok(Some(ServerMsg::Welcome { .. })) => {}
                other => panic!("the receiver did not welcome the test's subscriber: {other:?}"),
            }
            let mut side = link.open_side().await.expect("open the event stream");
            side.send(&ClientMsg::Subscribe).await.unwrap();
            tokio::spawn(async move {
                let _keep = (link, io);
                while let Ok(Some(m)) = side.recv::<ServerMsg>().await {
                    if let ServerMsg::Event(e) = m {
                        sink.lock().unwrap().push(e);
                    }
                }
            });
        });
        Self { events, _rt: rt }
    }

    /// Per service: how many Built and how many Reused events.
    fn builds_and_reuses(&self) -> BTreeMap<String, (usize, usize)> {
        let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for e in self.events.lock().unwrap().iter() {
            let entry = out.entry(e.service.clone()).or_default();
            match e.kind {
                EventKind::Built { .. } => entry.0 += 1,
                EventKind::Reused { .. } => entry.1 += 1,
                _ => {}
            }
        }
        out
    }
}

/// A receiver for workspace `workspace` with its own (empty) data, looking
/// up and pushing images in `registry`; the laptop paired with it.
fn fresh_workspace<'a>(
    fx: &'a Fixture,
    cenv: &ContainerEnv,
    registry: &Registry,
    workspace: &str,
) -> Receiver<'a> {
    let opts = ReceiverOpts {
        workspace: workspace.into(),
        data: Some(fx.root().join(format!("rx-{workspace}"))),
        ..Default::default()
    };
    receiver_pushing_to(fx, cenv, registry, opts)
}

fn prebuild(devd: &Devd<'_>, registry: &Registry) -> Value {
    prebuild_into(devd, &registry.addr())
}

/// `devd prebuild --registry REGISTRY --insecure-registry --json`.
fn prebuild_into(devd: &Devd<'_>, registry: &str) -> Value {
    let run = devd.run_timeout(
        &[
            "prebuild",
            "--registry",
            registry,
            "--insecure-registry",
            "--json",
        ],
        Duration::from_secs(600),
    );
    run.assert_success();
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "devd prebuild --json printed no JSON ({e}):\n{}",
            run.describe()
        )
    })
}

/// service → (result, image, tag) from a prebuild report.
fn outcomes(report: &Value) -> BTreeMap<String, (String, String, String)> {
    report["services"]
        .as_array()
        .expect("services[]")
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or_default().to_owned();
            (s("service"), (s("result"), s("image"), s("tag")))
        })
        .collect()
}

#[test]
fn prebuild_pushes_each_image_once_and_a_fresh_workspace_deploys_every_service_without_a_build() {
    require_container_tools();
    let fx = Fixture::from_example("demo");
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    let registry = Registry::start(fx.root(), fx.logs());
    let devd = fx.devd().with_env(cenv.env());

    // CI on this commit: one image per service, built and pushed.
    let first = prebuild(&devd, &registry);
    let built = outcomes(&first);
    assert_eq!(
        built.keys().map(String::as_str).collect::<Vec<_>>(),
        SERVICES
    );
    for (name, (result, image, tag)) in &built {
        assert_eq!(result, "built", "{name}: {first}");
        let repo = format!("demo/{name}");
        assert!(
            registry.has_tag(&repo, tag),
            "{name}: {tag} is not in the registry"
        );
        let digest = image.split_once('@').expect("repo@digest").1;
        assert_eq!(
            registry.manifest_digest(&repo, tag).as_deref(),
            Some(digest),
            "{name}: the reported image is not the pushed manifest"
        );
        assert_eq!(
            registry.tags(&repo),
            std::slice::from_ref(tag),
            "{name}: one image"
        );
    }
    assert_eq!(first["built"], 3);

    // A second run on the same commit builds nothing.
    let second = prebuild(&devd, &registry);
    for (name, (result, image, _)) in outcomes(&second) {
        assert_eq!(result, "present", "{name}: {second}");
        assert_eq!(image, built[&name].1, "{name}: another image");
    }
    assert_eq!(
        (second["built"].as_u64(), second["present"].as_u64()),
        (Some(0), Some(3))
    );

    // A fresh workspace at that commit: every service deployed from the
    // prebuilt image, not one build.
    let rx = fresh_workspace(&fx, &cenv, &registry, "fresh");
    let events = EventLog::subscribe(&rx);
    devd.start_wait();
    for name in SERVICES {
        let s = devd.wait_service(name, "deployed", DEPLOY_TIMEOUT, |s| s.state == "deployed");
        let want = &built[name].1;
        assert_eq!(s.image.as_ref(), Some(want), "{name} runs another image");
        assert!(s.reused && s.last_build_ms.is_none(), "{s:?}");
    }
    let per_service = events.builds_and_reuses();
    for name in SERVICES {
        assert_eq!(
            per_service.get(name),
            Some(&(0, 1)),
            "{name}: expected no Built and one Reused event; all: {per_service:?}"
        );
    }
    let (code, body) = http_get(&format!(
        "{}/",
        devd.status().service("web").unwrap().url.unwrap()
    ))
    .unwrap();
    assert!(code == 200 && body.contains("web v1"), "{code} {body}");
    let boot = devd.status().raw["boot"].clone();
    assert_eq!(
        (
            boot["services"].as_u64(),
            boot["reused"].as_u64(),
            boot["built"].as_u64()
        ),
        (Some(3), Some(3), Some(0)),
        "devd status boot: {boot}"
    );
    assert!(
        boot["ms"].as_u64().is_some(),
        "boot time not reported: {boot}"
    );
    let human = devd.run(&["status"]);
    assert!(
        human.stdout.contains("3 of 3 services up in")
            && human.stdout.contains("3 reused, 0 built"),
        "devd status does not show the boot:\n{}",
        human.stdout
    );
    devd.stop();
    drop(events);
    drop(rx);

    // A fresh workspace with one service edited builds exactly that one.
    let index = "services/web/www/index.html";
    let v1 = String::from_utf8(fx.read(index)).unwrap();
    fx.write(index, v1.replace("web v1", "web v1, edited"));
    let rx = fresh_workspace(&fx, &cenv, &registry, "edited");
    let events = EventLog::subscribe(&rx);
    devd.start_wait();
    for name in SERVICES {
        devd.wait_service(name, "deployed", DEPLOY_TIMEOUT, |s| s.state == "deployed");
    }
    let per_service = events.builds_and_reuses();
    assert_eq!(per_service.get("web"), Some(&(1, 0)), "{per_service:?}");
    assert_eq!(per_service.get("api"), Some(&(0, 1)), "{per_service:?}");
    assert_eq!(per_service.get("greeter"), Some(&(0, 1)), "{per_service:?}");
    let boot = devd.status().raw["boot"].clone();
    assert_eq!(
        (boot["reused"].as_u64(), boot["built"].as_u64()),
        (Some(2), Some(1)),
        "devd status boot: {boot}"
    );
    let (_, body) = http_get(&format!(
        "{}/",
        devd.status().service("web").unwrap().url.unwrap()
    ))
    .unwrap();
    assert!(body.contains("web v1, edited"), "{body}");
}

#[test]
fn prebuild_into_a_registry_path_prefix_finds_its_images_the_second_time() {
    require_container_tools();
    let fx = Fixture::from_example("demo");
    let cenv = ContainerEnv::new(fx.root());
    cenv.build_busybox_base();
    let registry = Registry::start(fx.root(), fx.logs());
    let devd = fx.devd().with_env(cenv.env());
    // A team's prefix in a plain-HTTP registry: lookups must go to the
    // registry host over HTTP too, or every run rebuilds everything.
    let prefixed = format!("{}/team", registry.addr());
    let first = prebuild_into(&devd, &prefixed);
    assert_eq!(first["built"], 3, "{first}");
    for (name, (_, image, tag)) in outcomes(&first) {
        assert!(
            image.starts_with(&format!("{prefixed}/demo/{name}@sha256:")),
            "{image}"
        );
        assert!(
            registry.has_tag(&format!("team/demo/{name}"), &tag),
            "{name}"
        );
    }
    let second = prebuild_into(&devd, &prefixed);
    assert_eq!(
        (second["built"].as_u64(), second["present"].as_u64()),
        (Some(0), Some(3)),
        "the second run did not find the images under the prefix: {second}"
    );
}
