//! How values are read: as the `config` crate reads them, secrets' `_env`/`_file`
//! overrides, the messages of parse errors, and the store named in printed lines.

use super::*;

/// Values are read as the `config` crate reads them: an override is text, a number or a
/// boolean where text is expected is its text, and a boolean may be written `1`, `yes`,
/// `ON`. `LOOPWATCH__STORE__REPLICA_ID=007` was refused ("expected a string, found a
/// number"), and with the override parsed it would have been `7`.
#[test]
fn numbers_and_booleans_are_read_as_the_config_crate_reads_them() {
    let mut e = env();
    e.set("LOOPWATCH__STORE__REPLICA_ID", "007");
    e.set("LOOPWATCH__POLL__EMIT_EXISTING", "1");
    let c = load_str(MINIMAL, config::FileFormat::Toml, "t.toml", &e).unwrap();
    assert_eq!(c.store.replica_id, "007");
    assert!(c.poll.emit_existing);
    for (text, want) in [("0", false), ("yes", true), ("OFF", false), ("True", true)] {
        let mut e = env();
        e.set("LOOPWATCH__POLL__EMIT_EXISTING", text);
        let c = load_str(MINIMAL, config::FileFormat::Toml, "t.toml", &e).unwrap();
        assert_eq!(c.poll.emit_existing, want, "{text}");
    }
    let mut e = env();
    e.set("LOOPWATCH__POLL__EMIT_EXISTING", "maybe");
    let p = load_str(MINIMAL, config::FileFormat::Toml, "t.toml", &e)
        .unwrap_err()
        .problems;
    assert!(p[0].contains("poll.emit_existing"), "{p:?}");
    let yaml = "targets:\n  - name: a\n    run_id: 1234567\nstore:\n  replica_id: true\n";
    let c = load_str(yaml, config::FileFormat::Yaml, "t.yaml", &env()).unwrap();
    assert_eq!(c.targets[0].filter.to_string(), "run_id=1234567");
    assert_eq!(c.store.replica_id, "true");
}

/// An override of one key of a secret's `_env`/`_file` pair replaces the other as the
/// file sets it: a file that names `api_key_env` (as the shipped examples do) can be
/// switched to a mounted secret file by the environment alone. Both in one source stay
/// an error.
#[test]
fn an_override_of_one_half_of_a_secret_pair_replaces_the_files_other_half() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "k-from-file\n").unwrap();
    let text = format!("[api]\napi_key_env = \"BASETEN_API_KEY\"\n{MINIMAL}");
    let mut e = env();
    e.set(
        "LOOPWATCH__API__API_KEY_FILE",
        key_file.display().to_string(),
    );
    let c = load_str(&text, config::FileFormat::Toml, "t.toml", &e).unwrap();
    assert_eq!(c.api.api_key.expose(), "k-from-file");
    // An empty override unsets its key: the default variable applies again.
    let file_text = format!(
        "[api]\napi_key_file = \"{}\"\n{MINIMAL}",
        key_file.display()
    );
    let mut e = env();
    e.set("LOOPWATCH__API__API_KEY_FILE", "");
    let c = load_str(&file_text, config::FileFormat::Toml, "t.toml", &e).unwrap();
    assert_eq!(c.api.api_key.expose(), "k-123");
    let both = format!(
        "[api]\napi_key_env = \"BASETEN_API_KEY\"\napi_key_file = \"{}\"\n{MINIMAL}",
        key_file.display()
    );
    let p = problems(&both);
    assert!(p[0].contains("not both"), "{p:?}");
}

/// A duplicate key names itself (the parser's snippet, which named it, is dropped): the
/// key or table header, never the value.
#[test]
fn a_duplicate_key_is_named() {
    let p = problems(&format!(
        "[poll]\ninterval = \"1m\"\ninterval = \"2m\"\n{MINIMAL}"
    ));
    assert!(p[0].ends_with("duplicate key (key interval)"), "{p:?}");
    let p = problems(&format!("[poll]\n[poll]\n{MINIMAL}"));
    assert!(p[0].ends_with("([poll])"), "{p:?}");
    let yaml = "poll:\n  interval: 1m\n  interval: 2m\ntargets:\n  - name: a\n    run_id: r\n";
    let p = load_str(yaml, config::FileFormat::Yaml, "t.yaml", &env())
        .unwrap_err()
        .problems;
    assert!(
        p[0].starts_with("t.yaml: \"interval\": duplicated key"),
        "{p:?}"
    );
}

/// A name of the wrong type is one problem, not also "missing".
#[test]
fn a_name_of_the_wrong_type_is_one_problem() {
    let p = problems("[[targets]]\nname = [5]\nrun_id = \"r\"\n");
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("targets[0].name: expected a string"), "{p:?}");
    let p = problems(&format!(
        "{MINIMAL}[[sinks]]\nname = {{}}\nurl = \"https://h.example/x\"\n"
    ));
    assert_eq!(p.len(), 1, "{p:?}");
}

/// Only a SQLite file named relative to the working directory is made absolute for the
/// printed lines; a PostgreSQL URL (it may hold a password) never is.
#[test]
fn a_relative_sqlite_store_is_made_absolute_for_printed_lines() {
    let cwd = std::path::Path::new("/srv/lw");
    assert_eq!(
        absolute_sqlite_url("sqlite://state.db", cwd).as_deref(),
        Some("sqlite:///srv/lw/state.db")
    );
    assert_eq!(
        absolute_sqlite_url("sqlite:data/s.db?mode=rwc", cwd).as_deref(),
        Some("sqlite:///srv/lw/data/s.db?mode=rwc")
    );
    for url in [
        "sqlite:///var/lib/loopwatch/loopwatch.db",
        "sqlite::memory:",
        "postgres://lw:pw@db/lw",
    ] {
        assert_eq!(absolute_sqlite_url(url, cwd), None, "{url}");
    }
}
