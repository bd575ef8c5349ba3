//! The limits of [`PodmanSetup`] for `podman kube play`, which has no
//! `--ulimit`: a containers.conf of devd's that is the user's own (the
//! files podman would read, merged in its order) with
//! `[containers] default_ulimits` set, passed as `CONTAINERS_CONF` to the
//! plays only. podman 4.3 reads only that file when the variable is set
//! (`CONTAINERS_CONF_OVERRIDE` came later), hence the merge. Where the
//! probe found podman's defaults work, nothing is written and the plays
//! run with the user's configuration as it is.

use crate::build::backend::Failure;
use crate::build::backend::podman::PodmanSetup;
use std::path::{Path, PathBuf};

/// The files podman 4.3 reads, in order (later ones win).
fn sources() -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("CONTAINERS_CONF").filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(p)];
    }
    let mut out = vec![
        PathBuf::from("/usr/share/containers/containers.conf"),
        PathBuf::from("/etc/containers/containers.conf"),
    ];
    let dropins = |out: &mut Vec<PathBuf>, dir: PathBuf| {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            let mut v: Vec<PathBuf> = rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "conf"))
                .collect();
            v.sort();
            out.extend(v);
        }
    };
    dropins(&mut out, PathBuf::from("/etc/containers/containers.conf.d"));
    // Rootless podman also reads the user's own files.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    if !root {
        let home = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
        if let Some(h) = home {
            out.push(h.join("containers/containers.conf"));
            dropins(&mut out, h.join("containers/containers.conf.d"));
        }
    }
    out
}

/// `over` merged into `base`, table by table.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// The user's configuration with `ulimits` as the default limits.
fn compose(files: &[PathBuf], ulimits: &[String]) -> Result<String, Failure> {
    let mut all = toml::Table::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        let t: toml::Table = text.parse().map_err(|e| {
            Failure::new(format!(
                "cannot read podman's configuration {}: {e}",
                f.display()
            ))
        })?;
        merge(&mut all, t);
    }
    let containers = all
        .entry("containers")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(c) = containers {
        c.insert(
            "default_ulimits".into(),
            toml::Value::Array(ulimits.iter().cloned().map(toml::Value::String).collect()),
        );
    }
    Ok(format!(
        "# Written by devd for `podman kube play` (no --ulimit there): the\n\
         # configuration podman reads, with the limits that start containers here.\n{}",
        toml::to_string(&all).map_err(|e| Failure::new(e.to_string()))?
    ))
}

/// `CONTAINERS_CONF` for the plays, if the setup needs limits: written
/// into `state_dir`.
pub(crate) fn for_plays(setup: &PodmanSetup, state_dir: &Path) -> Result<Option<PathBuf>, Failure> {
    if setup.ulimits.is_empty() {
        return Ok(None);
    }
    let text = compose(&sources(), &setup.ulimits)?;
    let path = state_dir.join("podman-kube-play.conf");
    std::fs::create_dir_all(state_dir)
        .and_then(|()| devd_sync::fsutil::write_atomic(&path, text.as_bytes(), None))
        .map_err(|e| Failure::new(format!("cannot write {}: {e}", path.display())))?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_configuration_is_kept_and_the_limits_added() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.conf");
        let b = dir.path().join("b.conf");
        std::fs::write(
            &a,
            "[engine]\ntmp_dir = \"/a\"\nevents_logger = \"file\"\n[containers]\nlog_size_max = 5\n",
        )
        .unwrap();
        std::fs::write(&b, "[engine]\ntmp_dir = \"/b\"\n").unwrap();
        let text = compose(
            &[a, dir.path().join("missing.conf"), b],
            &["nofile=1024:1024".into()],
        )
        .unwrap();
        let t: toml::Table = text.parse().unwrap();
        assert_eq!(t["engine"]["tmp_dir"].as_str(), Some("/b"), "later wins");
        assert_eq!(t["engine"]["events_logger"].as_str(), Some("file"));
        assert_eq!(t["containers"]["log_size_max"].as_integer(), Some(5));
        assert_eq!(
            t["containers"]["default_ulimits"].as_array().unwrap()[0].as_str(),
            Some("nofile=1024:1024")
        );
    }
}
