//! Path rules. Every path on the wire is a [`RelPath`]: relative to the
//! worktree root, `/`-separated, normalized (no empty, `.` or `..`
//! components), without NUL, and never inside `.git`. Anything else is
//! rejected with an error naming the path.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// Longest path accepted, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;

/// Why a path was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path {0:?} is empty")]
    Empty(String),
    #[error("path {0:?} is absolute; only paths relative to the worktree are allowed")]
    Absolute(String),
    #[error("path {0:?} has an empty, '.' or '..' component; paths must be normalized")]
    NotNormalized(String),
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("path {0:?} is inside .git, which is never synced")]
    InsideGit(String),
    #[error("path {0:?} is longer than {MAX_PATH_LEN} bytes")]
    TooLong(String),
}

/// A validated worktree-relative path.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RelPath(String);

impl RelPath {
    /// Validate `s` against the path rules.
    pub fn new(s: impl Into<String>) -> Result<Self, PathError> {
        let s = s.into();
        if s.is_empty() {
            return Err(PathError::Empty(s));
        }
        if s.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong(s));
        }
        if s.contains('\0') {
            return Err(PathError::Nul(s));
        }
        if s.starts_with('/') {
            return Err(PathError::Absolute(s));
        }
        for comp in s.split('/') {
            if comp.is_empty() || comp == "." || comp == ".." {
                return Err(PathError::NotNormalized(s));
            }
            if comp.eq_ignore_ascii_case(".git") {
                return Err(PathError::InsideGit(s));
            }
        }
        Ok(Self(s))
    }

    /// The path as a `/`-separated string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Components, root first.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Parent path, `None` at the top level.
    pub fn parent(&self) -> Option<RelPath> {
        self.0.rsplit_once('/').map(|(p, _)| RelPath(p.to_owned()))
    }

    /// True if `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.0 == other.0
            || (self.0.len() > other.0.len()
                && self.0.starts_with(&other.0)
                && self.0.as_bytes()[other.0.len()] == b'/')
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RelPath::new(s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_paths() {
        for p in [
            "a",
            "a/b",
            "src/main.rs",
            ".gitignore",
            "dir/.github/x",
            "a b/c",
        ] {
            assert_eq!(RelPath::new(p).unwrap().as_str(), p);
        }
    }

    #[test]
    fn rejects_bad_paths_naming_them() {
        let cases = [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../x", "normalized"),
            ("a/../../x", "normalized"),
            ("a//b", "normalized"),
            ("a/./b", "normalized"),
            ("a/", "normalized"),
            (".git/config", ".git"),
            ("sub/.GIT/hooks/x", ".git"),
            ("a\0b", "NUL"),
        ];
        for (p, why) in cases {
            let err = RelPath::new(p).unwrap_err().to_string();
            assert!(err.contains(why), "{p:?}: {err}");
            if !p.is_empty() {
                assert!(
                    err.contains(&format!("{p:?}")),
                    "error names the path: {err}"
                );
            }
        }
    }

    #[test]
    fn deserialize_validates() {
        let bytes = postcard::to_stdvec(&"../escape".to_string()).unwrap();
        assert!(postcard::from_bytes::<RelPath>(&bytes).is_err());
        let bytes = postcard::to_stdvec(&"ok/path".to_string()).unwrap();
        assert_eq!(
            postcard::from_bytes::<RelPath>(&bytes).unwrap().as_str(),
            "ok/path"
        );
    }

    #[test]
    fn prefix_and_parent() {
        let a = RelPath::new("a/b/c").unwrap();
        assert!(a.starts_with(&RelPath::new("a/b").unwrap()));
        assert!(!a.starts_with(&RelPath::new("a/bc").unwrap()));
        assert!(
            !RelPath::new("a/bc")
                .unwrap()
                .starts_with(&RelPath::new("a/b").unwrap())
        );
        assert_eq!(a.parent().unwrap().as_str(), "a/b");
        assert!(RelPath::new("top").unwrap().parent().is_none());
    }
}
