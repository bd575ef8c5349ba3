//! `.dockerignore` (or `.containerignore`) as Docker, buildah and Kaniko
//! read it: one pattern per line, `#` comments, `!` re-includes, patterns
//! relative to the context root (a leading `/` is dropped, paths are
//! cleaned), `*`/`?`/`[...]` within one path component, `**` across any
//! number of them. The last matching pattern decides, and a pattern that
//! matches a directory excludes everything below it.

use globset::{GlobBuilder, GlobMatcher};
use std::path::Path;

/// A pattern that does not compile, with its line.
#[derive(Debug, thiserror::Error)]
#[error("{file} line {line}: invalid pattern {pattern:?}: {reason}")]
pub struct IgnoreError {
    pub file: String,
    pub line: usize,
    pub pattern: String,
    pub reason: String,
}

struct Rule {
    glob: GlobMatcher,
    negated: bool,
}

/// The compiled rules of one ignore file.
#[derive(Default)]
pub struct DockerIgnore {
    rules: Vec<Rule>,
    has_negations: bool,
}

/// Names of the ignore files a builder reads, in order of preference.
pub const FILES: [&str; 2] = [".containerignore", ".dockerignore"];

/// `filepath.Clean` for a relative pattern.
fn clean(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

impl DockerIgnore {
    /// Compile the text of an ignore file (`file` names it in errors).
    pub fn parse(text: &str, file: &str) -> Result<Self, IgnoreError> {
        let mut rules = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (negated, pat) = match l.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, l),
            };
            let pat = clean(pat);
            if pat.is_empty() {
                continue;
            }
            let glob = GlobBuilder::new(&pat)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| IgnoreError {
                    file: file.into(),
                    line: i + 1,
                    pattern: l.into(),
                    reason: e.kind().to_string(),
                })?
                .compile_matcher();
            rules.push(Rule { glob, negated });
        }
        let has_negations = rules.iter().any(|r| r.negated);
        Ok(Self {
            rules,
            has_negations,
        })
    }

    /// Read the ignore file of the context at `dir` (none: nothing ignored).
    pub fn load(dir: &Path) -> Result<Self, IgnoreError> {
        for name in FILES {
            if let Ok(text) = std::fs::read_to_string(dir.join(name)) {
                return Self::parse(&text, name);
            }
        }
        Ok(Self::default())
    }

    /// True if `path` (relative to the context, `/`-separated) is excluded.
    pub fn excluded(&self, path: &str) -> bool {
        let mut excluded = false;
        for rule in &self.rules {
            // A pattern matches the path itself or any of its parents.
            let mut hit = rule.glob.is_match(path);
            if !hit {
                let mut p = path;
                while let Some((parent, _)) = p.rsplit_once('/') {
                    if rule.glob.is_match(parent) {
                        hit = true;
                        break;
                    }
                    p = parent;
                }
            }
            if hit {
                excluded = !rule.negated;
            }
        }
        excluded
    }

    /// True if nothing below an excluded directory can be re-included, so
    /// a walk may skip it.
    pub fn can_skip_dir(&self, dir: &str) -> bool {
        !self.has_negations && self.excluded(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn di(t: &str) -> DockerIgnore {
        DockerIgnore::parse(t, ".dockerignore").unwrap()
    }

    #[test]
    fn matches_like_docker() {
        let d = di("# comment\n*.md\n/tmp\n!keep.md\nbuild/**/*.o\nnode_modules\n");
        assert!(d.excluded("NOTES.md"));
        assert!(!d.excluded("keep.md"));
        // `*` stays within one component: a nested .md is not matched.
        assert!(!d.excluded("docs/guide.md"));
        assert!(d.excluded("tmp"));
        assert!(d.excluded("tmp/a/b.txt"));
        assert!(d.excluded("build/x/y/z.o"));
        assert!(d.excluded("build/z.o"));
        assert!(!d.excluded("build/z.c"));
        assert!(d.excluded("node_modules/a/index.js"));
        assert!(!d.excluded("src/node_modules/a.js"));
        assert!(!d.can_skip_dir("tmp"), "negations present: walk into it");
        let d = di("**/*.md\n./cache/../logs\n");
        assert!(d.excluded("docs/guide.md") && d.excluded("a.md"));
        assert!(d.excluded("logs/x") && !d.excluded("cache/x"));
        assert!(d.can_skip_dir("logs"));
    }

    #[test]
    fn last_match_wins_and_bad_patterns_name_their_line() {
        let d = di("*\n!src\nsrc/*.tmp\n");
        assert!(d.excluded("README"));
        assert!(!d.excluded("src/main.rs"));
        assert!(d.excluded("src/x.tmp"));
        let e = DockerIgnore::parse("ok\n[a-\n", ".dockerignore")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}
