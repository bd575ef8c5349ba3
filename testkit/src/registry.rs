//! Debian's `docker-registry` as a test fixture: the registry the local
//! backend pushes to and the played cluster pulls from.

use crate::containers::{CONTAINER_PACKAGES, require_container_tools, write};
use crate::net::{Timeouts, http_get, http_request};
use crate::process::{self, Background, Logs, find_program, tail};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Debian's `docker-registry` serving on a free loopback port (127.0.0.1),
/// its data in a directory of its own; killed on drop.
#[derive(Debug)]
pub struct Registry {
    addr: String,
    dir: PathBuf,
    _process: Background,
}

impl Registry {
    /// For a test: the registry with its data under `<root>/registry[-N]`
    /// (the first free name), its output under `logs`. Panics with what
    /// to install or why it did not come up.
    #[track_caller]
    pub fn start(root: &Path, logs: &Logs) -> Self {
        require_container_tools();
        let mut dir = root.join("registry");
        let mut n = 1;
        while dir.exists() {
            n += 1;
            dir = root.join(format!("registry-{n}"));
        }
        Self::try_start(&dir, logs).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Start the registry with its data under `dir` (created) and wait (up
    /// to 20 s) until `GET /v2/` answers. A port taken between choosing
    /// and binding it is retried.
    pub fn try_start(dir: &Path, logs: &Logs) -> Result<Self> {
        let program = find_program("docker-registry").with_context(|| {
            format!(
                "docker-registry is not installed; install it with \
                 `apt-get install --no-install-recommends {CONTAINER_PACKAGES}`"
            )
        })?;
        let data = dir.join("data");
        std::fs::create_dir_all(&data).with_context(|| format!("create {}", data.display()))?;
        let mut failures = String::new();
        for _attempt in 0..5 {
            let addr = format!("127.0.0.1:{}", crate::net::free_port()?);
            let config = dir.join("config.yml");
            write(
                &config,
                &format!(
                    "version: 0.1\n\
                     log:\n  level: info\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     http:\n  addr: {addr}\n",
                    data.display()
                ),
            )?;
            let mut cmd = Command::new(&program);
            cmd.arg("serve").arg(&config);
            let mut process = process::try_spawn(&mut cmd, logs, "docker-registry")?;
            match wait_for_registry(&mut process, &addr) {
                Ok(()) => {
                    return Ok(Self {
                        addr,
                        dir: dir.to_owned(),
                        _process: process,
                    });
                }
                Err(e) if e.retry => failures.push_str(&format!("{addr}: {}\n", e.log)),
                Err(e) => bail!("docker-registry on {addr} did not come up: {}", e.log),
            }
        }
        bail!("docker-registry could not bind a port in 5 attempts:\n{failures}")
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// The registry's data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tags of `repo` (empty if the repository does not exist).
    #[track_caller]
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let url = format!("http://{}/v2/{repo}/tags/list", self.addr);
        let resp = http_request("GET", &url, &[], Timeouts::DEFAULT)
            .unwrap_or_else(|e| panic!("GET {url}: {e:#}"));
        let body = String::from_utf8_lossy(&resp.body);
        match resp.status {
            404 => Vec::new(),
            200 => {
                let v: serde_json::Value = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"));
                v.get("tags")
                    .and_then(serde_json::Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(serde_json::Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default()
            }
            s => panic!("GET {url}: status {s}: {body}"),
        }
    }

    /// Does `repo:tag` exist?
    #[track_caller]
    pub fn has_tag(&self, repo: &str, tag: &str) -> bool {
        self.tags(repo).iter().any(|t| t == tag)
    }

    /// The manifest digest (`sha256:…`) of `repo:reference` (a tag or a
    /// digest), as `buildah push --digestfile` writes it; `None` if absent.
    #[track_caller]
    pub fn manifest_digest(&self, repo: &str, reference: &str) -> Option<String> {
        let url = format!("http://{}/v2/{repo}/manifests/{reference}", self.addr);
        let resp = http_request(
            "HEAD",
            &url,
            &[(
                "Accept",
                "application/vnd.oci.image.manifest.v1+json, \
                 application/vnd.docker.distribution.manifest.v2+json, \
                 application/vnd.oci.image.index.v1+json, \
                 application/vnd.docker.distribution.manifest.list.v2+json",
            )],
            Timeouts::DEFAULT,
        )
        .unwrap_or_else(|e| panic!("HEAD {url}: {e:#}"));
        match resp.status {
            404 => None,
            200 => Some(
                resp.header("docker-content-digest")
                    .unwrap_or_else(|| panic!("HEAD {url}: no Docker-Content-Digest header"))
                    .to_owned(),
            ),
            s => panic!("HEAD {url}: status {s}"),
        }
    }
}

struct StartError {
    retry: bool,
    log: String,
}

/// Wait for our process's `listening on` line (so the answer to `/v2/` is
/// not another registry that grabbed the port first), then for `GET /v2/`
/// to answer `{}`.
fn wait_for_registry(process: &mut Background, addr: &str) -> Result<(), StartError> {
    let started = Instant::now();
    let (out, err) = process.log_paths();
    let (out, err) = (out.to_owned(), err.to_owned());
    let log = || {
        format!(
            "{}{}",
            std::fs::read_to_string(&out).unwrap_or_default(),
            std::fs::read_to_string(&err).unwrap_or_default()
        )
    };
    let url = format!("http://{addr}/v2/");
    loop {
        let text = log();
        if !process.is_running() {
            return Err(StartError {
                retry: text.contains("address already in use"),
                log: format!("docker-registry exited:\n{}", tail(&text, 30)),
            });
        }
        if text.contains("listening on")
            && let Ok((200, body)) = http_get(&url)
            && body.trim() == "{}"
        {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(20) {
            return Err(StartError {
                retry: false,
                log: format!(
                    "GET {url} did not answer {{}} within 20 s; log:\n{}",
                    tail(&text, 30)
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
