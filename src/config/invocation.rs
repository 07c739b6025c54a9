//! The `loopwatch ...` lines this process prints for a person to paste (an event's
//! `approve_command`, the status page's approve and replay lines), and `--store-url`.

use std::path::PathBuf;

use super::Config;

/// The `loopwatch ...` command lines printed for a person to paste (an event's
/// `approve_command`, the status page's replay and approve lines): with `-c FILE`, the
/// absolute path of the config file the printing process read, they run as printed from
/// any directory and without `LOOPWATCH_CONFIG`; without a file (the demo), bare.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invocation {
    config: Option<PathBuf>,
    /// `--store-url`, for a SQLite file named relative to the printing process's working
    /// directory: made absolute, so that the line finds the same store from anywhere.
    store: Option<String>,
}

impl Invocation {
    /// Lines naming the config file `path` (as given: make it absolute first).
    pub fn with_config(path: PathBuf) -> Self {
        Invocation {
            config: Some(path),
            store: None,
        }
    }

    /// `loopwatch ARGS`, then `-c FILE` (shell-quoted where needed) when there is a file;
    /// `args` as a shell reads them (already quoted).
    pub fn line(&self, args: &str) -> String {
        let mut line = format!("loopwatch {args}");
        if let Some(path) = &self.config {
            line.push_str(" -c ");
            line.push_str(&crate::text::shell_word(&path.to_string_lossy()));
        }
        if let Some(url) = &self.store {
            line.push_str(" --store-url ");
            line.push_str(&crate::text::shell_word(url));
        }
        line
    }
}

/// `sqlite://NAME` with NAME relative (to the working directory), made absolute against
/// `cwd`; `None` for an absolute file, an in-memory database or PostgreSQL (whose URL may
/// hold a password: never printed).
pub fn absolute_sqlite_url(url: &str, cwd: &std::path::Path) -> Option<String> {
    let rest = url.strip_prefix("sqlite:")?.trim_start_matches("//");
    let (file, params) = rest.split_once('?').unwrap_or((rest, ""));
    if file.is_empty() || file.starts_with('/') || file == ":memory:" {
        return None;
    }
    let abs = cwd.join(file);
    let query = if params.is_empty() {
        String::new()
    } else {
        format!("?{params}")
    };
    Some(format!("sqlite://{}{query}", abs.display()))
}

/// `--store-url URL` of this process's command line: overrides `store.url` as
/// `LOOPWATCH__STORE__URL` would, for every config this process loads (reloads too).
static STORE_URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Set `--store-url` (once, at start).
pub fn set_store_url(url: String) {
    let _ = STORE_URL.set(url);
}

pub(crate) fn store_url_override() -> Option<&'static str> {
    STORE_URL.get().map(String::as_str)
}

impl Config {
    /// How the command lines this config's process prints (approve, reject, replay) name
    /// its config file.
    pub fn invocation(&self) -> Invocation {
        Invocation {
            config: self.file.clone(),
            store: self.file.as_ref().and_then(|_| {
                let cwd = std::env::current_dir().ok()?;
                absolute_sqlite_url(&self.store.url, &cwd)
            }),
        }
    }
}
