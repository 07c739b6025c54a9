//! Config snippets the tests write after [`super::Env::write_config`]'s base sections, and
//! edits of a written config file.

use std::path::Path;

/// The target most tests watch: "qwen", on run `run-1`.
pub const QWEN: &str = "[[targets]]\nname = \"qwen\"\nrun_id = \"run-1\"\n";

/// The `events` line of a sink that takes completions only.
pub const COMPLETED_ONLY: &str = "events = [\"checkpoint.completed\"]";

/// `n` targets, `t0` on `run-0` to `t<n-1>` on `run-<n-1>`.
pub fn targets(n: usize) -> String {
    (0..n)
        .map(|i| format!("[[targets]]\nname = \"t{i}\"\nrun_id = \"run-{i}\"\n"))
        .collect()
}

/// A webhook `[[sinks]]` table, unsigned, with `extra` TOML lines.
pub fn sink(name: &str, url: &str, extra: &str) -> String {
    format!("[[sinks]]\nname = \"{name}\"\nurl = \"{url}\"\n{extra}\n")
}

/// A webhook `[[sinks]]` table signed with `HOOK_SECRET` ([`super::SECRET`]), with `extra`
/// TOML lines.
pub fn hook_sink(name: &str, url: &str, extra: &str) -> String {
    sink(name, url, &format!("secret_env = \"HOOK_SECRET\"\n{extra}"))
}

/// [`QWEN`] and a signed sink named "hook" to `url`, with `extra` TOML lines for the sink.
pub fn qwen_to(url: &str, extra: &str) -> String {
    format!("{QWEN}{}", hook_sink("hook", url, extra))
}

/// Rewrite a config file in place.
pub fn edit(path: &Path, f: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, f(text)).unwrap();
}

/// Point a written config at another store: `url` replaces the `[store]` URL (and
/// `extra` TOML lines follow it).
pub fn set_store_url(path: &Path, url: &str, extra: &str) {
    edit(path, |text| {
        let start = text.find("url = \"sqlite://").unwrap();
        let end = start + text[start..].find('\n').unwrap();
        format!("{}url = \"{url}\"{extra}{}", &text[..start], &text[end..])
    });
}
