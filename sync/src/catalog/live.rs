//! `[services.NAME.live]`: live update, files copied into the running
//! containers instead of an image build.
//!
//! ```toml
//! [services.web.live]
//! # Context path → absolute path in the container. `from` is relative to
//! # the service's context ("." is the whole context); an `inputs` path
//! # outside the context is named by its repository path, as in the image.
//! sync = [{ from = "www", to = "/www" }]
//! # A change to a matching context path always builds the image.
//! fall_back_on = ["www/**/*.conf"]
//! # Run in each container after the copy, in order, when a copied or
//! # deleted context path matches one of `when` (no `when`: every time).
//! run = [{ cmd = ["sh", "-c", "gzip -kf /www/*.html"], when = ["www/*.html"] }]
//! # What happens after the copy and the commands: "none" (default),
//! # "process" (send `signal` to the container's PID 1; default "HUP"), or
//! # "container" (restart the container).
//! restart = "process"
//! signal = "USR1"
//! ```
//!
//! A change to the Dockerfile or the `.dockerignore` always builds; so does
//! one outside every `sync` rule.

use super::CatalogError;
use devd_protocol::RelPath;
use globset::{GlobBuilder, GlobMatcher};
use serde::Deserialize;

/// At most this many entries in each of `sync`, `fall_back_on`, `run`.
pub const MAX_LIVE_RULES: usize = 64;

/// Signals `restart = "process"` may send, without the `SIG` prefix.
pub const SIGNALS: &[&str] = &["HUP", "INT", "QUIT", "USR1", "USR2", "TERM", "WINCH"];

/// A validated `[services.NAME.live]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub sync: Vec<SyncRule>,
    /// Globs over context paths (`*` stays within a directory, `**`
    /// crosses them).
    pub fall_back_on: Vec<String>,
    pub run: Vec<LiveRun>,
    pub restart: Restart,
}

/// Copy the context path `from` (a file or directory) to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRule {
    /// Relative to the context; `None` is the whole context.
    pub from: Option<RelPath>,
    /// Absolute, normalized, without a trailing `/` (`/` itself allowed).
    pub to: String,
}

/// A command run in each container after a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRun {
    /// argv, run with `exec` (no shell unless it names one).
    pub cmd: Vec<String>,
    /// Globs over context paths; empty: after every live update.
    pub when: Vec<String>,
}

/// What follows the copy and the commands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Restart {
    /// Nothing: the process picks the files up itself.
    #[default]
    None,
    /// Send this signal (a name of [`SIGNALS`]) to the container's PID 1.
    Process { signal: String },
    /// Restart the container (its files stay).
    Container,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLive {
    #[serde(default)]
    sync: Vec<RawSync>,
    #[serde(default)]
    fall_back_on: Vec<String>,
    #[serde(default)]
    run: Vec<RawRun>,
    restart: Option<String>,
    signal: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    from: Option<String>,
    to: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    cmd: Option<Vec<String>>,
    #[serde(default)]
    when: Vec<String>,
}

/// A glob over context paths as `fall_back_on` and `when` mean it.
pub fn glob(pattern: &str) -> Result<GlobMatcher, globset::Error> {
    Ok(GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()?
        .compile_matcher())
}

/// `to` normalized: absolute, no `.`/`..`/empty components, no NUL.
fn container_path(to: &str) -> Option<String> {
    if !to.starts_with('/') || to.contains('\0') {
        return None;
    }
    let parts: Vec<&str> = to.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return None;
    }
    Some(format!("/{}", parts.join("/")))
}

/// Validate the `live` table of service `service`.
pub(super) fn live(service: &str, raw: &RawLive) -> Result<Live, CatalogError> {
    let invalid = |field: String, problem: String, fix: &str| CatalogError::Invalid {
        service: service.to_owned(),
        field,
        problem,
        fix: fix.to_owned(),
    };
    if raw.sync.is_empty() {
        return Err(invalid(
            "live.sync".into(),
            "missing or empty".into(),
            "list what to copy, e.g. sync = [{ from = \"src\", to = \"/app/src\" }] (from: relative to the context; to: absolute in the container)",
        ));
    }
    for (field, n) in [
        ("live.sync", raw.sync.len()),
        ("live.fall_back_on", raw.fall_back_on.len()),
        ("live.run", raw.run.len()),
    ] {
        if n > MAX_LIVE_RULES {
            return Err(invalid(
                field.into(),
                format!("{n} entries, more than {MAX_LIVE_RULES}"),
                "use directories and globs that cover more at once",
            ));
        }
    }
    let mut sync = Vec::new();
    for (i, r) in raw.sync.iter().enumerate() {
        let field = |f: &str| format!("live.sync[{i}].{f}");
        let Some(from) = &r.from else {
            return Err(invalid(
                field("from"),
                "missing".into(),
                "give the directory or file relative to the context, e.g. from = \"src\" (\".\" for all of it)",
            ));
        };
        let from = super::rel(
            service,
            &field("from"),
            from,
            "give a path relative to the context, e.g. from = \"src\" (\".\" for all of it)",
        )?;
        let to = match &r.to {
            None => {
                return Err(invalid(
                    field("to"),
                    "missing".into(),
                    "give the absolute path in the container, e.g. to = \"/app/src\"",
                ));
            }
            Some(t) => container_path(t).ok_or_else(|| {
                invalid(
                    field("to"),
                    format!("{t:?} is not an absolute path in the container"),
                    "start it with '/' and leave out '.' and '..', e.g. to = \"/app/src\"",
                )
            })?,
        };
        sync.push(SyncRule { from, to });
    }
    let globs = |field: String, list: &[String]| -> Result<Vec<String>, CatalogError> {
        for g in list {
            if let Err(e) = glob(g) {
                return Err(invalid(
                    field,
                    format!("{g:?} is not a glob ({})", e.kind()),
                    "use globs over paths relative to the context, e.g. \"package.json\" or \"src/**/*.ts\"",
                ));
            }
        }
        Ok(list.to_vec())
    };
    let fall_back_on = globs("live.fall_back_on".into(), &raw.fall_back_on)?;
    let mut run = Vec::new();
    for (i, r) in raw.run.iter().enumerate() {
        let cmd = match &r.cmd {
            Some(c) if !c.is_empty() && !c[0].is_empty() && !c.iter().any(|a| a.contains('\0')) => {
                c.clone()
            }
            Some(_) => {
                return Err(invalid(
                    format!("live.run[{i}].cmd"),
                    "the command is empty or holds a NUL character".into(),
                    "give the argv as a list whose first element is the program, e.g. [\"npm\", \"run\", \"build\"]",
                ));
            }
            None => {
                return Err(invalid(
                    format!("live.run[{i}].cmd"),
                    "missing".into(),
                    "add cmd = [\"PROGRAM\", \"ARG\", …], run in the container after the copy",
                ));
            }
        };
        let when = globs(format!("live.run[{i}].when"), &r.when)?;
        run.push(LiveRun { cmd, when });
    }
    let restart = match raw.restart.as_deref() {
        None | Some("none") => Restart::None,
        Some("container") => Restart::Container,
        Some("process") => {
            let s = raw.signal.as_deref().unwrap_or("HUP");
            let name = s.strip_prefix("SIG").unwrap_or(s);
            if !SIGNALS.contains(&name) {
                return Err(invalid(
                    "live.signal".into(),
                    format!("{s:?} is not a signal devd sends"),
                    &format!("use one of {}", SIGNALS.join(", ")),
                ));
            }
            Restart::Process {
                signal: name.to_owned(),
            }
        }
        Some(other) => {
            return Err(invalid(
                "live.restart".into(),
                format!("{other:?} is not a restart mode"),
                "use \"none\" (default), \"process\" (signal PID 1) or \"container\"",
            ));
        }
    };
    if raw.signal.is_some() && !matches!(restart, Restart::Process { .. }) {
        return Err(invalid(
            "live.signal".into(),
            "is only meaningful with restart = \"process\"".into(),
            "add restart = \"process\" or remove `signal`",
        ));
    }
    Ok(Live {
        sync,
        fall_back_on,
        run,
        restart,
    })
}

#[cfg(test)]
mod tests {
    use crate::catalog::{Catalog, Restart};

    const BASE: &str = "[services.web]\ncontext = \"web\"\nport = 8080\n[services.web.live]\n";

    fn err(live: &str) -> String {
        Catalog::parse(&format!("{BASE}{live}"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_a_live_table() {
        let c = Catalog::parse(&format!(
            "{BASE}sync = [{{ from = \"./www/\", to = \"/srv//www/\" }}, {{ from = \".\", to = \"/\" }}]\n\
             fall_back_on = [\"package.json\", \"www/**/*.conf\"]\n\
             run = [{{ cmd = [\"sh\", \"-c\", \"make\"], when = [\"www/*.ts\"] }}, {{ cmd = [\"true\"] }}]\n\
             restart = \"process\"\nsignal = \"SIGUSR1\"\n"
        ))
        .unwrap();
        let live = c.get("web").unwrap().live.clone().unwrap();
        assert_eq!(live.sync[0].from.as_ref().unwrap().as_str(), "www");
        assert_eq!(live.sync[0].to, "/srv/www");
        assert!(live.sync[1].from.is_none());
        assert_eq!(live.sync[1].to, "/");
        assert_eq!(live.fall_back_on, ["package.json", "www/**/*.conf"]);
        assert_eq!(live.run[0].cmd, ["sh", "-c", "make"]);
        assert_eq!(live.run[0].when, ["www/*.ts"]);
        assert!(live.run[1].when.is_empty());
        assert_eq!(
            live.restart,
            Restart::Process {
                signal: "USR1".into()
            }
        );
        let c = Catalog::parse(&format!(
            "{BASE}sync = [{{ from = \"www\", to = \"/www\" }}]\nrestart = \"process\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.get("web").unwrap().live.as_ref().unwrap().restart,
            Restart::Process {
                signal: "HUP".into()
            },
            "SIGHUP by default"
        );
        let c = Catalog::parse(&format!(
            "{BASE}sync = [{{ from = \"www\", to = \"/www\" }}]\n"
        ))
        .unwrap();
        assert_eq!(
            c.get("web").unwrap().live.as_ref().unwrap().restart,
            Restart::None
        );
        let plain = Catalog::parse("[services.web]\ncontext = \"web\"\nport = 8080\n").unwrap();
        assert!(plain.get("web").unwrap().live.is_none());
    }

    #[test]
    fn live_errors_name_the_field_and_the_fix() {
        let cases = [
            ("restart = \"none\"\n", "`live.sync`", "sync = ["),
            (
                "sync = [{ to = \"/www\" }]\n",
                "`live.sync[0].from`",
                "from = \"src\"",
            ),
            (
                "sync = [{ from = \"../x\", to = \"/www\" }]\n",
                "`live.sync[0].from`",
                "../x",
            ),
            (
                "sync = [{ from = \"www\" }]\n",
                "`live.sync[0].to`",
                "to = \"/app/src\"",
            ),
            (
                "sync = [{ from = \"www\", to = \"www\" }]\n",
                "`live.sync[0].to`",
                "absolute",
            ),
            (
                "sync = [{ from = \"www\", to = \"/a/../b\" }]\n",
                "`live.sync[0].to`",
                "'..'",
            ),
            (
                "sync = [{ from = \"www\", to = \"/w\" }]\nfall_back_on = [\"a[\"]\n",
                "`live.fall_back_on`",
                "not a glob",
            ),
            (
                "sync = [{ from = \"www\", to = \"/w\" }]\nrun = [{ when = [\"*\"] }]\n",
                "`live.run[0].cmd`",
                "add cmd",
            ),
            (
                "sync = [{ from = \"www\", to = \"/w\" }]\nrun = [{ cmd = [] }]\n",
                "`live.run[0].cmd`",
                "first element",
            ),
            (
                "sync = [{ from = \"www\", to = \"/w\" }]\nrun = [{ cmd = [\"x\"], when = [\"{a\"] }]\n",
                "`live.run[0].when`",
                "not a glob",
            ),
            (
                "sync = [{ from = \"www\", to = \"/w\" }]\nrestart = \"always\"\n",
                "`live.restart`",
                "\"process\"",
            ),
            (
                "sync = [{ from = \"www\", to = \"/w\" }]\nrestart = \"process\"\nsignal = \"KILL\"\n",
                "`live.signal`",
                "USR1",
            ),
            (
                "sync = [{ from = \"www\", to = \"/w\" }]\nsignal = \"HUP\"\n",
                "`live.signal`",
                "or remove `signal`",
            ),
        ];
        for (live, field, fix) in cases {
            let e = err(live);
            assert!(
                e.contains("\"web\"") && e.contains(field) && e.contains(fix),
                "{live}: {e}"
            );
        }
        // Unknown keys are refused, naming the key.
        let e = err("sync = [{ from = \"www\", to = \"/w\", mode = 1 }]\n");
        assert!(e.contains("unknown field `mode`"), "{e}");
        let e = err("sync = [{ from = \"www\", to = \"/w\" }]\nfallback = []\n");
        assert!(e.contains("unknown field `fallback`"), "{e}");
    }
}
