//! `[secrets]` in `devd.local.toml`: Secrets the repository's manifests
//! reference by name but that must not be committed. The daemon sends
//! them to the receiver on each connection (the values travel only inside
//! devd's encrypted connection); the receiver applies them as Kubernetes
//! Secrets (or podman secrets) beside the render. Their values never enter
//! git, the synced overlay, a log, `devd status` or a notification.
//!
//! ```toml
//! [secrets.db-credentials]       # a Secret named db-credentials
//! password = "s3cret"            # key = value
//! [secrets.api-keys]
//! env_file = ".env.api"          # KEY=VALUE lines, relative to the repository root
//! ```

use devd_protocol::message::Secret;
use std::collections::BTreeMap;
use std::path::Path;

/// The key that names a KEY=VALUE file instead of being a key.
pub const ENV_FILE: &str = "env_file";

/// A Secret name: a DNS subdomain.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.ends_with(|c: char| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

/// A Secret key: letters, digits, `-`, `_`, `.`.
fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `KEY=VALUE` lines (blank lines and `#` comments skipped, one pair of
/// surrounding quotes taken off the value).
fn env_file(text: &str, file: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("{file}:{}: not KEY=VALUE", i + 1));
        };
        let k = k.trim();
        if !valid_key(k) {
            return Err(format!("{file}:{}: {k:?} is not a Secret key", i + 1));
        }
        let v = v.trim();
        let v = ['"', '\'']
            .iter()
            .find_map(|q| v.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(v);
        out.push((k.to_owned(), v.as_bytes().to_vec()));
    }
    Ok(out)
}

/// The Secrets of `table` (from `devd.local.toml`), env files read from
/// `root`. Errors name the Secret and the key, never a value.
pub fn collect(
    root: &Path,
    table: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<Vec<Secret>, String> {
    let mut out = Vec::new();
    for (name, keys) in table {
        if !valid_name(name) {
            return Err(format!(
                "devd.local.toml: [secrets.{name}]: not a Secret name (lower-case letters, digits, '-' and '.')"
            ));
        }
        let mut data = Vec::new();
        for (k, v) in keys {
            if k == ENV_FILE {
                let path = root.join(v);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    format!("devd.local.toml: [secrets.{name}] env_file {v:?}: {e}")
                })?;
                data.extend(env_file(&text, v)?);
            } else if valid_key(k) {
                data.push((k.clone(), v.as_bytes().to_vec()));
            } else {
                return Err(format!(
                    "devd.local.toml: [secrets.{name}]: {k:?} is not a Secret key (letters, digits, '-', '_', '.')"
                ));
            }
        }
        data.sort();
        data.dedup_by(|a, b| a.0 == b.0);
        out.push(Secret {
            name: name.clone(),
            data,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_env_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(".env.api"),
            "# keys\nAPI_KEY=\"abc def\"\nexport TOKEN=t0k\n\n",
        )
        .unwrap();
        let table: BTreeMap<String, BTreeMap<String, String>> = toml::from_str(
            "[db-credentials]\npassword = \"s3cret\"\n[api-keys]\nenv_file = \".env.api\"\n",
        )
        .unwrap();
        let s = collect(dir.path(), &table).unwrap();
        assert_eq!(s[0].name, "api-keys");
        assert_eq!(
            s[0].data,
            [
                ("API_KEY".to_owned(), b"abc def".to_vec()),
                ("TOKEN".to_owned(), b"t0k".to_vec())
            ]
        );
        assert_eq!(s[1].data, [("password".to_owned(), b"s3cret".to_vec())]);
        let bad: BTreeMap<String, BTreeMap<String, String>> =
            toml::from_str("[Bad_Name]\nx = \"hunter2\"\n").unwrap();
        let e = collect(dir.path(), &bad).unwrap_err();
        assert!(e.contains("Bad_Name") && !e.contains("hunter2"), "{e}");
        std::fs::write(dir.path().join(".env.api"), "NOEQUALS hunter2\n").unwrap();
        let e = collect(dir.path(), &table).unwrap_err();
        assert!(e.contains(".env.api:1") && !e.contains("hunter2"), "{e}");
    }
}
