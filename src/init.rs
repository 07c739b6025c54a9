//! `loopwatch init`: a first config for one run and one webhook sink, and the sink's
//! signing secret freshly generated into a file only its owner can read, so that a
//! newcomer goes from `cargo install` to `check-config` and `once --dry-run` without
//! reading the reference first. Nothing existing is overwritten.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use rand::RngExt;

/// The file names `init` writes in its directory.
pub const CONFIG_FILE: &str = "loopwatch.toml";
pub const SECRET_FILE: &str = "webhook-secret";

/// The run id written when `--run-id` is not given: any string loads, so the config
/// checks; the first poll then fails with the API's 404 until it is edited.
pub const RUN_ID_PLACEHOLDER: &str = "your-run-id";

/// What `init` wrote; `Display` is what it prints: the files, then the next commands.
#[derive(Debug)]
pub struct Written {
    pub config: PathBuf,
    pub secret: PathBuf,
    pub run_id_given: bool,
}

impl fmt::Display for Written {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = shell_word(&self.config.display().to_string());
        writeln!(f, "wrote {c}: one run, one webhook sink")?;
        writeln!(
            f,
            "wrote {}: the sink's signing secret (mode 0600); give the receiver the same value",
            shell_word(&self.secret.display().to_string())
        )?;
        if !self.run_id_given {
            writeln!(
                f,
                "edit run_id = \"{RUN_ID_PLACEHOLDER}\" in {c} (or run init again with --run-id)"
            )?;
        }
        writeln!(f)?;
        writeln!(f, "next, with your API key in BASETEN_API_KEY:")?;
        writeln!(f, "  loopwatch check-config -c {c}     # validate")?;
        writeln!(
            f,
            "  loopwatch once --dry-run -c {c}   # one poll: what would be sent; writes nothing"
        )?;
        writeln!(f, "  loopwatch run -c {c}              # the daemon")
    }
}

/// Quoted for a POSIX shell when it has anything but safe characters.
fn shell_word(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+:@,".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A fresh `whsec_` secret: 32 random bytes, as `signing::SigningKey::parse` takes it.
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// Write `dir/loopwatch.toml` and `dir/webhook-secret` (creating `dir`); refuse if either
/// exists.
pub fn init(dir: &Path, run_id: Option<&str>) -> anyhow::Result<Written> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let config = dir.join(CONFIG_FILE);
    let secret = dir.join(SECRET_FILE);
    for p in [&config, &secret] {
        if p.symlink_metadata().is_ok() {
            anyhow::bail!(
                "{} exists; init overwrites nothing: pick another --dir, or move it away",
                p.display()
            );
        }
    }
    let run_id = run_id.unwrap_or(RUN_ID_PLACEHOLDER);
    // The secret first: a config is never left naming a file that does not exist.
    create_new(&secret, 0o600, format!("{}\n", new_secret()).as_bytes())?;
    let text = config_text(&dir, &secret, run_id);
    if let Err(e) = create_new(&config, 0o644, text.as_bytes()) {
        let _ = std::fs::remove_file(&secret);
        return Err(e);
    }
    Ok(Written {
        config,
        secret,
        run_id_given: run_id != RUN_ID_PLACEHOLDER,
    })
}

fn create_new(path: &Path, mode: u32, content: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(content)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A TOML string literal.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn config_text(dir: &Path, secret: &Path, run_id: &str) -> String {
    let db = quoted(&format!("sqlite://{}", dir.join("loopwatch.db").display()));
    let secret = quoted(&secret.display().to_string());
    let run_id = quoted(run_id);
    format!(
        r#"# loopwatch config, written by `loopwatch init`: one training run, one webhook sink.
# Every key with its default: config/loopwatch.example.toml and docs/configuration.md in
# loopwatch's source. After an edit: loopwatch check-config -c THIS_FILE

# The Loops API key is read from the environment variable BASETEN_API_KEY (the default).
# To read it from a file instead (a systemd credential, a Kubernetes Secret):
# [api]
# api_key_file = "/path/to/baseten-api-key"

[store]
# What loopwatch has seen, and the outbox of deliveries: created by the first `run` or `once`.
url = {db}

[[targets]]
name = "my-run"                          # your name for it: in events, logs and metrics
run_id = {run_id}
# `loopwatch checkpoints --run-id ID` lists a run's checkpoints, live.

[[sinks]]
name = "my-receiver"
# Where each event is POSTed (Standard Webhooks: webhook-id, -timestamp, -signature).
# examples/receiver.py in loopwatch's source is a receiver to start from. Use https://
# for anything off this machine.
url = "http://127.0.0.1:8000/hooks/loops"
# The whsec_ signing secret, generated by init; the receiver verifies with the same value.
secret_file = {secret}
events = ["checkpoint.completed"]        # also: checkpoint.discovered, .status_changed, .stalled, .deleted
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_secret_is_a_valid_signing_key_and_differs_each_time() {
        let a = new_secret();
        assert!(crate::signing::SigningKey::parse(&a).is_ok(), "{a}");
        assert_ne!(a, new_secret());
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("/tmp/a/loopwatch.toml"), "/tmp/a/loopwatch.toml");
        assert_eq!(shell_word("/tmp/my dir/it's"), r"'/tmp/my dir/it'\''s'");
    }
}
