//! Workspace namespaces: who is asking ([`Caller`]) and the namespace a
//! workspace name stands for (`devd-<user>[-<name>]`).

/// Prefix of workspace namespaces.
pub const PREFIX: &str = "devd-";
/// Longest name Kubernetes accepts for a namespace.
const MAX_NAME: usize = 63;

/// Lowercase, `[a-z0-9-]` only, no leading or trailing `-`.
pub(super) fn dns_label(s: &str) -> String {
    let mapped: String = s
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    mapped.trim_matches('-').to_owned()
}

/// `user.email` as `git config user.email` run in `dir` reads it: the
/// repository's configuration (with the global and system ones under it)
/// when run inside a repository, else the global and system ones. Read
/// with gix's configuration snapshot instead of running git.
fn git_user_email(dir: &std::path::Path) -> Option<String> {
    let email = match gix::discover(dir).ok() {
        Some(repo) => repo.config_snapshot().string("user.email"),
        None => gix::config::File::from_globals()
            .ok()?
            .string("user.email")
            .map(|s| s.to_string().into()),
    };
    let email = email?.to_string().trim().to_owned();
    (!email.is_empty()).then_some(email)
}

/// Why a workspace's namespace cannot be named.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("cannot tell who you are: set $USER or `git config user.email`")]
    UnknownUser,
    #[error(
        "user name {0:?} has no letters or digits to name a namespace with; set $USER to one that has"
    )]
    UnusableUser(String),
    #[error("bad workspace name {0:?}: use lowercase letters, digits and '-' (not at either end)")]
    BadName(String),
    #[error("namespace name {0} is longer than {MAX_NAME} characters; pick a shorter --name")]
    TooLong(String),
}

/// Who is asking: the user part of namespace names, and the owner.
#[derive(Debug, Clone)]
pub struct Caller {
    /// DNS-label form of the user name (`alice`).
    pub user: String,
    /// The owner annotation (`git config user.email`, else `$USER`).
    pub owner: String,
}

impl Caller {
    /// From `$USER` and `git config user.email`.
    pub fn detect() -> Result<Self, NamespaceError> {
        let env_user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .filter(|u| !u.trim().is_empty());
        let email = std::env::current_dir()
            .ok()
            .and_then(|d| git_user_email(&d));
        let user_src = env_user
            .clone()
            .or_else(|| {
                email
                    .as_deref()
                    .map(|e| e.split('@').next().unwrap_or(e).to_owned())
            })
            .ok_or(NamespaceError::UnknownUser)?;
        let user = dns_label(&user_src);
        if user.is_empty() {
            return Err(NamespaceError::UnusableUser(user_src));
        }
        let owner = email.or(env_user).unwrap_or_else(|| user.clone());
        Ok(Self { user, owner })
    }

    /// The namespace of workspace `name` (`None`: the default one).
    pub fn namespace(&self, name: Option<&str>) -> Result<String, NamespaceError> {
        let ns = match name {
            None => format!("{PREFIX}{}", self.user),
            Some(n) => {
                if n.is_empty() || dns_label(n) != n {
                    return Err(NamespaceError::BadName(n.to_owned()));
                }
                format!("{PREFIX}{}-{n}", self.user)
            }
        };
        if ns.len() > MAX_NAME {
            return Err(NamespaceError::TooLong(ns));
        }
        Ok(ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_is_the_repositorys_user_email() {
        let d = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            let ok = std::process::Command::new("git")
                .args(args)
                .current_dir(d.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "git {args:?}");
        };
        git(&["init", "-q"]);
        git(&["config", "user.email", "  alice@example.com "]);
        assert_eq!(
            git_user_email(d.path()).as_deref(),
            Some("alice@example.com")
        );
    }

    #[test]
    fn namespace_names() {
        let c = Caller {
            user: dns_label("Alice.Smith"),
            owner: "a@example.com".into(),
        };
        assert_eq!(c.namespace(None).unwrap(), "devd-alice-smith");
        assert_eq!(
            c.namespace(Some("feat-1")).unwrap(),
            "devd-alice-smith-feat-1"
        );
        assert!(c.namespace(Some("Feat")).is_err());
        assert!(c.namespace(Some("-x")).is_err());
        assert!(c.namespace(Some(&"x".repeat(60))).is_err());
    }
}
