//! Any text as a config file: loading returns a `Config` or one-line problems naming the
//! file, never panics, and never echoes a secret.
//!
//! The first byte picks the format (even: TOML, odd: YAML); the rest is the file. The
//! environment holds an API key, a valid webhook secret, a header token and one
//! `LOOPWATCH__` override, so inputs can reach the secret and interpolation paths.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopwatch::config::{Environment, FileFormat, load_str};

const API_KEY: &str = "fuzz-api-key-3d9c1f";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TOKEN: &str = "fuzz-token-8b2e";

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let format = if first % 2 == 0 {
        FileFormat::Toml
    } else {
        FileFormat::Yaml
    };
    let env = Environment::from_pairs([
        ("BASETEN_API_KEY", API_KEY),
        ("HOOK_SECRET", SECRET),
        ("TOKEN", TOKEN),
        ("LOOPWATCH__LOG__FORMAT", "text"),
    ]);
    // A secret the input spells out itself may of course be echoed.
    let leaks = |s: &str| {
        [API_KEY, TOKEN, &SECRET[6..]]
            .iter()
            .any(|secret| s.contains(secret) && !text.contains(secret))
    };
    match load_str(text, format, "fuzz.toml", &env) {
        Ok(cfg) => {
            let shown = format!("{}\n{cfg:?}", cfg.to_redacted_toml());
            assert!(!leaks(&shown), "{shown}");
        }
        Err(e) => {
            assert!(!e.problems.is_empty());
            for p in &e.problems {
                assert!(p.starts_with("fuzz.toml: "), "{p:?}");
                assert!(!p.contains('\n') && !p.contains('\r'), "{p:?}");
                assert!(!leaks(p), "{p:?}");
            }
        }
    }
});
