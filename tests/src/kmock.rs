//! A Kubernetes API emulator for flows that need an API server: PyPI's
//! `kmock` (a stateful in-memory Kubernetes API) started by
//! `tests/kmock/launcher.py` on a loopback port, with a kubeconfig pointing
//! at it. No controllers run there: a test plays kubelet and the Job and
//! Deployment controllers itself (sets statuses, creates pods).
//!
//! The Python comes from [`PYTHON_ENV`] (scripts/test.sh exports it after
//! installing kmock into the repository's `.venv`), else `.venv/bin/python`.

use crate::process::{Logs, tail};
use crate::repo::Fixture;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variable naming the Python interpreter that has kmock.
pub const PYTHON_ENV: &str = "DEVD_TEST_PYTHON";

/// How to install what the emulator needs.
pub const KMOCK_HINT: &str = "python3 -m venv .venv && .venv/bin/pip install kmock==0.8 \
     (scripts/test.sh does this and exports DEVD_TEST_PYTHON)";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python interpreter with kmock.
pub fn python() -> PathBuf {
    match std::env::var_os(PYTHON_ENV) {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join(".venv/bin/python"),
    }
}

/// Panic with the install hint unless `python()` can import kmock.
#[track_caller]
pub fn require_kmock() {
    let py = python();
    let ok = Command::new(&py)
        .args(["-c", "import kmock"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the Kubernetes emulator tests need PyPI's kmock in {} ({PYTHON_ENV}); install it with\n    {KMOCK_HINT}",
        py.display()
    );
}

/// A running emulator; killed on drop.
#[derive(Debug)]
pub struct KubeEmulator {
    child: Child,
    url: String,
    namespace: String,
    kubeconfig: PathBuf,
    stderr: PathBuf,
}

impl KubeEmulator {
    /// Start the emulator and write `<root>/kubeconfig` pointing at it
    /// with `namespace` as the context's namespace.
    #[track_caller]
    pub fn start(fx: &Fixture, namespace: &str) -> Self {
        require_kmock();
        let launcher = workspace_root().join("tests/kmock/launcher.py");
        let logs: &Logs = fx.logs();
        let (stdout, stderr) = logs.next_pair("kmock");
        let mut child = Command::new(python())
            .arg(&launcher)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("create kmock stdout log"))
            .stderr(File::create(&stderr).expect("create kmock stderr log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", launcher.display()));
        let started = Instant::now();
        let url = loop {
            let out = std::fs::read_to_string(&stdout).unwrap_or_default();
            if let Some(url) = out
                .lines()
                .find_map(|l| l.strip_prefix("listening on "))
                .filter(|_| out.contains('\n'))
            {
                break url.trim().to_owned();
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "kmock launcher exited ({status}) before listening:\n{}",
                    tail(&std::fs::read_to_string(&stderr).unwrap_or_default(), 60)
                );
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("kmock launcher did not listen within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let kubeconfig = fx.root().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters:\n- name: kmock\n  cluster:\n    server: {url}\n\
                 users:\n- name: kmock\n  user: {{}}\n\
                 contexts:\n- name: kmock\n  context:\n    cluster: kmock\n    user: kmock\n    namespace: {namespace}\n\
                 current-context: kmock\n"
            ),
        )
        .expect("write kubeconfig");
        Self {
            child,
            url,
            namespace: namespace.to_owned(),
            kubeconfig,
            stderr,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The namespace of the kubeconfig's context.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A kubeconfig file for the emulator.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kube client for the emulator, built (and later driven) on `rt`.
    pub fn client_on(&self, rt: &tokio::runtime::Runtime) -> kube::Client {
        devd_sync::net::install_crypto();
        rt.block_on(async {
            let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)
                .unwrap_or_else(|e| panic!("read {}: {e}", self.kubeconfig.display()));
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .expect("a kube config for the emulator");
            kube::Client::try_from(cfg).expect("a kube client for the emulator")
        })
    }

    /// A current-thread runtime and a kube client for the emulator on it.
    pub fn client(&self) -> (tokio::runtime::Runtime, kube::Client) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let client = self.client_on(&rt);
        (rt, client)
    }

    /// The emulator's log so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for KubeEmulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
