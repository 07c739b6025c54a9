//! SIGHUP reload (docs/configuration.md, "Reload"): what changed between the running
//! config and a new one, as a [`Plan`] the wiring (`app`) carries out. Pure: no I/O, no
//! tasks; `app` starts and stops the loops.
//!
//! `[[targets]]`, `[[sinks]]` and `[poll]` are applied; every other section is read once at
//! start (the API client and its budget, the store, the bound socket, the logger, the
//! drain), so a change there is named in [`Plan::needs_restart`] and not applied.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{Config, SinkConfig, SinkKind, TargetConfig};

/// The sections a reload does not apply.
const RESTART_SECTIONS: [&str; 5] = ["api", "store", "server", "log", "delivery"];

/// What a reload changes, by name.
#[derive(Debug, Default)]
pub struct Plan {
    /// Targets to start polling (a first sight takes a silent baseline).
    pub added_targets: Vec<TargetConfig>,
    /// Targets to stop polling; their state stays in the store.
    pub removed_targets: Vec<String>,
    /// Targets whose settings changed: their loop restarts with the new ones.
    pub changed_targets: Vec<TargetConfig>,
    pub added_sinks: Vec<SinkConfig>,
    /// Sinks whose worker stops; their deliveries stay pending in the store.
    pub removed_sinks: Vec<String>,
    /// Sinks whose worker restarts with the new config.
    pub changed_sinks: Vec<SinkConfig>,
    /// `[poll]` changed (the pollers take it at their next poll).
    pub poll_changed: bool,
    /// Keys (`api.timeout`) that changed but take effect only after a restart.
    pub needs_restart: Vec<String>,
}

impl Plan {
    /// Nothing to apply (restart-only changes aside).
    pub fn is_noop(&self) -> bool {
        self.added_targets.is_empty()
            && self.removed_targets.is_empty()
            && self.changed_targets.is_empty()
            && self.added_sinks.is_empty()
            && self.removed_sinks.is_empty()
            && self.changed_sinks.is_empty()
            && !self.poll_changed
    }
}

/// What changes from `old` (running) to `new` (just loaded and valid).
pub fn plan(old: &Config, new: &Config) -> Plan {
    let mut p = Plan::default();
    let old_targets: BTreeMap<&str, &TargetConfig> =
        old.targets.iter().map(|t| (t.name.as_str(), t)).collect();
    let new_names: BTreeSet<&str> = new.targets.iter().map(|t| t.name.as_str()).collect();
    for t in &new.targets {
        match old_targets.get(t.name.as_str()) {
            None => p.added_targets.push(t.clone()),
            Some(o) if !same_target(o, t) => p.changed_targets.push(t.clone()),
            Some(_) => {}
        }
    }
    p.removed_targets = (old.targets.iter())
        .filter(|t| !new_names.contains(t.name.as_str()))
        .map(|t| t.name.clone())
        .collect();

    let old_sinks: BTreeMap<&str, &SinkConfig> =
        old.sinks.iter().map(|s| (s.name.as_str(), s)).collect();
    let new_sinks: BTreeSet<&str> = new.sinks.iter().map(|s| s.name.as_str()).collect();
    for s in &new.sinks {
        match old_sinks.get(s.name.as_str()) {
            None => p.added_sinks.push(s.clone()),
            Some(o) if !same_sink(o, s) => p.changed_sinks.push(s.clone()),
            Some(_) => {}
        }
    }
    p.removed_sinks = (old.sinks.iter())
        .filter(|s| !new_sinks.contains(s.name.as_str()))
        .map(|s| s.name.clone())
        .collect();

    p.poll_changed = format!("{:?}", old.poll) != format!("{:?}", new.poll);
    p.needs_restart = restart_keys(old, new);
    p
}

/// The config that runs after a reload: `new`'s targets, sinks and `[poll]`, and the
/// running values of every section a reload does not apply.
pub fn effective(old: &Config, new: Config) -> Config {
    Config {
        api: old.api.clone(),
        store: old.store.clone(),
        server: old.server.clone(),
        log: old.log.clone(),
        delivery: old.delivery.clone(),
        ..new
    }
}

/// The target's settings as a comparable value (no secret in a target).
fn same_target(a: &TargetConfig, b: &TargetConfig) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// Equal settings and equal secrets (`Debug` redacts the secrets, so a rotated secret file
/// is compared by value).
fn same_sink(a: &SinkConfig, b: &SinkConfig) -> bool {
    format!("{a:?}") == format!("{b:?}") && secrets(a) == secrets(b)
}

fn secrets(s: &SinkConfig) -> Vec<Vec<u8>> {
    match &s.kind {
        SinkKind::Webhook {
            url,
            secret,
            previous_secret,
            signing_key,
            headers,
            ..
        } => {
            let mut v = vec![url.as_str().as_bytes().to_vec()];
            v.extend(secret.iter().map(|k| k.bytes().to_vec()));
            v.push(Vec::new());
            v.extend(previous_secret.iter().map(|k| k.bytes().to_vec()));
            v.push(Vec::new());
            v.extend(signing_key.iter().map(|k| k.public_key().into_bytes()));
            v.extend(headers.iter().map(|h| h.value.expose().as_bytes().to_vec()));
            v
        }
        _ => Vec::new(),
    }
}

/// Every key of a section a reload does not apply whose value changed, as `section.key`.
fn restart_keys(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (sections(old), sections(new));
    let mut keys = BTreeSet::new();
    for section in RESTART_SECTIONS {
        let empty = toml::Table::new();
        let x = a.get(section).and_then(|v| v.as_table()).unwrap_or(&empty);
        let y = b.get(section).and_then(|v| v.as_table()).unwrap_or(&empty);
        for k in x.keys().chain(y.keys()) {
            if x.get(k) != y.get(k) {
                keys.insert(format!("{section}.{k}"));
            }
        }
    }
    // What the redacted view hides: a rotated API key, a URL's password or query.
    if old.api.api_key.expose() != new.api.api_key.expose() {
        keys.insert("api.api_key".into());
    }
    if old.store.url != new.store.url {
        keys.insert("store.url".into());
    }
    keys.into_iter().collect()
}

fn sections(c: &Config) -> toml::Table {
    c.to_redacted_toml().parse().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Environment, FileFormat, load_str};

    const BASE: &str = r#"
[api]
api_key_env = "K"
[[targets]]
name = "a"
run_id = "r1"
[[targets]]
name = "b"
run_id = "r2"
[[sinks]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:1/x"
"#;

    fn cfg(text: &str) -> Config {
        let env = Environment::from_pairs([("K", "key"), ("K2", "other")]);
        load_str(text, FileFormat::Toml, "t.toml", &env).unwrap()
    }

    #[test]
    fn the_same_config_changes_nothing() {
        let p = plan(&cfg(BASE), &cfg(BASE));
        assert!(p.is_noop(), "{p:?}");
        assert!(p.needs_restart.is_empty());
    }

    #[test]
    fn targets_and_sinks_are_added_removed_and_changed_by_name() {
        let new = BASE
            .replace(
                "name = \"a\"\nrun_id = \"r1\"",
                "name = \"c\"\nrun_id = \"r3\"",
            )
            .replace("run_id = \"r2\"", "run_id = \"r2\"\ninterval = \"5m\"")
            .replace("http://127.0.0.1:1/x", "http://127.0.0.1:2/x");
        let p = plan(&cfg(BASE), &cfg(&new));
        assert_eq!(p.added_targets.len(), 1);
        assert_eq!(p.added_targets[0].name, "c");
        assert_eq!(p.removed_targets, ["a"]);
        assert_eq!(p.changed_targets.len(), 1);
        assert_eq!(p.changed_targets[0].name, "b");
        assert_eq!(p.changed_sinks.len(), 1);
        assert!(p.added_sinks.is_empty() && p.removed_sinks.is_empty());
        assert!(!p.poll_changed);
    }

    #[test]
    fn a_poll_change_restarts_the_targets_that_inherit_it() {
        let new = format!("[poll]\ninterval = \"2m\"\n{BASE}");
        let p = plan(&cfg(BASE), &cfg(&new));
        assert!(p.poll_changed);
        assert_eq!(p.changed_targets.len(), 2);
        assert!(p.needs_restart.is_empty());
    }

    #[test]
    fn restart_only_sections_are_named_key_by_key_and_kept() {
        let new = BASE.replace(
            "[api]\napi_key_env = \"K\"",
            "[api]\napi_key_env = \"K2\"\ntimeout = \"7s\"\n[server]\nlisten = \"127.0.0.1:1\"\n[log]\nlevel = \"debug\"",
        );
        let (old, new) = (cfg(BASE), cfg(&new));
        let p = plan(&old, &new);
        assert!(p.is_noop(), "{p:?}");
        assert_eq!(
            p.needs_restart,
            ["api.api_key", "api.timeout", "log.level", "server.listen"]
        );
        let eff = effective(&old, new);
        assert_eq!(eff.api.timeout, old.api.timeout);
        assert_eq!(eff.server.listen, old.server.listen);
        assert_eq!(eff.log.level, old.log.level);
    }
}
