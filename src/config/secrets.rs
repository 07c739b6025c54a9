//! Secrets: the [`Secret`] type, and how validation resolves them. Secrets never come
//! from the file: `<stem>_env` names a variable and `<stem>_file` a path, and a header
//! value may use `${VAR}`. A resolved secret is known afterwards only by where it came
//! from (`secret_env = HOOK_SECRET`), which is what `check-config` prints.

use std::fmt;

use super::printable;

use super::raw::Field;
use super::validate::Problems;
use super::{ReadSecrets, join};

/// What a webhook URL read from `url_env`/`url_file` is when the load did not read it:
/// a name that resolves nowhere (RFC 6761), never sent to (only `run`, `once` and
/// `test-sink` send, and they read every secret).
pub(super) const URL_NOT_READ: &str = "https://secret-not-read.invalid/";

/// A secret value. Never printed, never logged: `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A URL's credentials, redacted from peers' text from now on: its password (and the
/// basic-auth form of `user:password`) and its query values (a token in `?token=`).
pub(super) fn register_url(u: &url::Url) {
    if let Some(pw) = u.password() {
        let decoded = percent_decode(pw);
        crate::redact::register_basic(&percent_decode(u.username()), &decoded);
        crate::redact::register(pw);
    }
    for (_, v) in u.query_pairs() {
        crate::redact::register(&v);
    }
}

/// `%XX` decoded (userinfo as `url` keeps it); `+` stays `+`.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Problems<'_> {
    /// Whether this load reads the secrets of `section` (`api`, `sinks[0]`).
    pub fn reads_secrets_of(&self, section: &str) -> bool {
        match self.secrets {
            ReadSecrets::All => true,
            ReadSecrets::ApiKey => section == "api",
            ReadSecrets::None => false,
        }
    }

    /// A secret this load does not read: listed, and a placeholder in its place (a URL
    /// that resolves nowhere for `url`, a value no key parses from otherwise).
    fn not_read(&mut self, section: &str, key: &str, value: &str, stem: &str) -> (Secret, String) {
        self.skipped
            .push(printable(&format!("{} = {value}", join(section, key))));
        let placeholder = if stem == "url" {
            URL_NOT_READ
        } else {
            "not read"
        };
        (Secret(placeholder.into()), format!("{key} = {value}"))
    }

    /// The secret `<section>.<stem>` from `<stem>_env` or `<stem>_file`, with where it came
    /// from. `default_env` applies when neither is set. A secret this load does not read
    /// ([`ReadSecrets`]) is not looked up: see [`Problems::reads_secrets_of`].
    pub fn secret(
        &mut self,
        section: &str,
        stem: &str,
        env: &Field<String>,
        file: &Field<String>,
        default_env: Option<&str>,
    ) -> Option<(Secret, String)> {
        let env_key = format!("{stem}_env");
        let file_key = format!("{stem}_file");
        let mut from_env = self.string(env, &join(section, &env_key));
        let mut from_file = self.string(file, &join(section, &file_key));
        // The environment beats the file for a pair too: an override of one of the two
        // (`LOOPWATCH__API__API_KEY_FILE`) replaces the other as the file sets it, and an
        // empty override unsets its key.
        let by_override = |key: &str| self.env.override_of(&join(section, key)).is_some();
        let (env_over, file_over) = (by_override(&env_key), by_override(&file_key));
        if env_over && from_env.as_deref() == Some("") {
            from_env = None;
        }
        if file_over && from_file.as_deref() == Some("") {
            from_file = None;
        }
        if from_env.is_some() && from_file.is_some() && env_over != file_over {
            if env_over {
                from_file = None;
            } else {
                from_env = None;
            }
        }
        match (from_env, from_file) {
            (Some(_), Some(_)) => {
                self.err(
                    &join(section, stem),
                    format!("set either {env_key} or {file_key}, not both"),
                );
                None
            }
            (None, Some(path)) if !self.reads_secrets_of(section) => {
                Some(self.not_read(section, &file_key, &path, stem))
            }
            (None, Some(path)) => match read_secret_file(&path) {
                Ok(s) => {
                    let s = s.trim_end_matches(['\n', '\r']).to_string();
                    if s.is_empty() {
                        self.err(
                            &join(section, &file_key),
                            format!("{path} is empty; put the secret in it"),
                        );
                        None
                    } else {
                        if let Some(why) = exposed(std::path::Path::new(&path)) {
                            self.warn(
                                &join(section, &file_key),
                                format!("{path} is {why}; chmod 600 {path} (or 640 with the daemon's group)"),
                            );
                        }
                        crate::redact::register(&s);
                        Some((Secret(s), format!("{file_key} = {path}")))
                    }
                }
                Err(e) => {
                    self.err(
                        &join(section, &file_key),
                        format!("cannot read {path}: {e}; check the path and permissions"),
                    );
                    None
                }
            },
            (env_name, None) => {
                let explicit = env_name.is_some();
                let var = env_name.or(default_env.map(str::to_string))?;
                if !self.reads_secrets_of(section) {
                    return Some(self.not_read(section, &env_key, &var, stem));
                }
                match self.env.var(&var) {
                    Some(v) if !v.is_empty() => {
                        crate::redact::register(v);
                        Some((Secret(v.to_string()), format!("{env_key} = {var}")))
                    }
                    _ => {
                        let hint = if explicit { "" } else { " (the default)" };
                        self.err(
                            &join(section, &env_key),
                            format!("environment variable {var}{hint} is not set; export it or use {file_key}"),
                        );
                        None
                    }
                }
            }
        }
    }

    /// Expand `${VAR}` from the environment. A load that does not read the secrets of
    /// `section` (header values are tokens) leaves `s` as written and lists it.
    pub fn interpolate(&mut self, section: &str, key: &str, s: &str) -> String {
        if !self.reads_secrets_of(section) {
            if s.contains("${") {
                self.skipped.push(printable(&format!("{key} = {s}")));
            }
            return s.to_string();
        }
        let mut out = String::new();
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                self.err(key, "has an unterminated ${; write ${VAR}");
                return out;
            };
            let var = &after[..end];
            match self.env.var(var) {
                Some(v) => {
                    // A `${VAR}` value is a credential (a header's token): a peer that
                    // echoes it has it redacted.
                    crate::redact::register(v);
                    out.push_str(v);
                }
                None => self.err(
                    key,
                    format!("uses ${{{var}}} but environment variable {var} is not set; export it"),
                ),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out
    }
}

/// What is wrong with a secret file's mode: writable by anyone but its owner (they could
/// swap the key), or readable by others (anyone on the host can read it). Kubernetes
/// mounts secrets 0644 unless `defaultMode` says otherwise: a warning, not a refusal.
fn exposed(path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(w) = super::writable_by_others(path) {
        return Some(w);
    }
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o004 != 0).then(|| format!("readable by others (mode {mode:04o})"))
}

/// A secret file: a regular file (symlinks followed, as Kubernetes mounts secrets) of at
/// most 64 KiB, read as the config file is ([`super::file::read_regular`]).
fn read_secret_file(path: &str) -> std::io::Result<String> {
    super::file::read_regular(std::path::Path::new(path), 64 * 1024)
}
