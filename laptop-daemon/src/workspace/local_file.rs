//! This repository's `devd.local.toml`: `[receiver]` merged in after
//! pairing, keeping the file's other sections and comments.

use devd_sync::pairing::Pairing;
use std::path::{Path, PathBuf};

/// Why `[receiver]` could not be written into `devd.local.toml`.
#[derive(Debug, thiserror::Error)]
pub enum LocalFileError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML; fix it and run again: {source}")]
    Parse {
        path: PathBuf,
        source: toml_edit::TomlError,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} as written does not load; fix it by hand: {source}")]
    Load {
        path: PathBuf,
        source: Box<crate::config::ConfigError>,
    },
    #[error("updating {path}: {source}")]
    Gitignore {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Merge `[receiver]` (mode remote, address, fingerprint, workspace, token)
/// into `root`'s devd.local.toml, keeping everything else in it; the file
/// is readable by its owner only (it holds the token). Returns the file
/// and whether `.gitignore` was changed to ignore it.
pub fn write_receiver(
    root: &Path,
    address: &str,
    p: &Pairing,
) -> Result<(PathBuf, bool), LocalFileError> {
    let path = root.join(crate::config::LOCAL_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(LocalFileError::Read { path, source }),
    };
    let mut doc: toml_edit::DocumentMut = match text.parse() {
        Ok(doc) => doc,
        Err(source) => return Err(LocalFileError::Parse { path, source }),
    };
    if !doc.get("receiver").is_some_and(toml_edit::Item::is_table) {
        doc.insert("receiver", toml_edit::Item::Table(toml_edit::Table::new()));
    }
    let table = doc["receiver"]
        .as_table_mut()
        .expect("[receiver] is a table");
    // A pairing file would override nothing here but confuse readers.
    table.remove("pairing");
    for (k, v) in [
        ("mode", "remote"),
        ("address", address),
        ("fingerprint", p.fingerprint.as_str()),
        ("workspace", p.workspace.as_str()),
        ("token", p.token.as_str()),
    ] {
        table[k] = toml_edit::value(v);
    }
    if let Err(source) =
        devd_sync::fsutil::write_atomic(&path, doc.to_string().as_bytes(), Some(0o600))
    {
        return Err(LocalFileError::Write { path, source });
    }
    if let Err(source) = crate::config::Config::load(root) {
        return Err(LocalFileError::Load {
            path,
            source: Box::new(source),
        });
    }
    let ignored =
        crate::init::ignore_local_file(root).map_err(|source| LocalFileError::Gitignore {
            path: root.join(".gitignore"),
            source,
        })?;
    Ok((path, ignored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_is_merged_into_the_local_file() {
        let d = tempfile::tempdir().unwrap();
        let local = d.path().join(crate::config::LOCAL_FILE);
        std::fs::write(
            &local,
            "# mine\n[receiver]\nmode = \"remote\"\npairing = \"old/pairing.toml\"\n\n[sync]\ndebounce_ms = 25 # fast\n",
        )
        .unwrap();
        let p = Pairing {
            address: "0.0.0.0:7447".into(),
            fingerprint: "ab".repeat(32),
            workspace: "alice".into(),
            token: "t0ken".into(),
        };
        let (path, ignored) = write_receiver(d.path(), "203.0.113.7:7447", &p).unwrap();
        assert_eq!(path, local);
        assert!(ignored, ".gitignore gains devd.local.toml");
        let text = std::fs::read_to_string(&local).unwrap();
        assert!(
            text.contains("# mine") && text.contains("debounce_ms = 25 # fast"),
            "{text}"
        );
        assert!(!text.contains("pairing ="), "{text}");
        let cfg = crate::config::Config::load(d.path()).unwrap();
        assert_eq!(cfg.receiver.mode, crate::config::ReceiverMode::Remote);
        assert_eq!(cfg.receiver.address.as_deref(), Some("203.0.113.7:7447"));
        assert_eq!(cfg.receiver.token.as_deref(), Some("t0ken"));
        assert_eq!(cfg.receiver.workspace.as_deref(), Some("alice"));
        assert_eq!(cfg.sync.debounce_ms, 25);
        // Again (a new workspace): replaced, not duplicated.
        let (_, ignored) = write_receiver(d.path(), "198.51.100.1:30747", &p).unwrap();
        assert!(!ignored);
        let text = std::fs::read_to_string(&local).unwrap();
        assert_eq!(text.matches("[receiver]").count(), 1, "{text}");
        assert!(text.contains("198.51.100.1:30747"), "{text}");
        std::fs::write(&local, "[receiver\n").unwrap();
        let e = write_receiver(d.path(), "x:1", &p).unwrap_err().to_string();
        assert!(e.contains("not valid TOML"), "{e}");
    }
}
