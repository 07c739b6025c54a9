//! Every secret this process knows, redacted from text that came from outside: the one
//! function ([`secrets`], with [`secrets_in`] for bytes) that every path storing or
//! printing a peer's text goes through (an error body, a transport error, a command's
//! stderr), before a log line, `last_error`, or a command's output.
//!
//! A peer may echo what it was sent: an upstream's 401 page that quotes the
//! `Authorization` header, a receiver's 400 that dumps the request. What loopwatch sent
//! is its own secrets, so the list is kept here, process-wide, filled by the config as it
//! resolves them ([`register`]): the API key, webhook and signing secrets, the values of
//! `${VAR}` in headers, URL passwords and query values. A list grows only (a reload adds,
//! never forgets: a peer may echo an old key for a while) and stays small.
//!
//! Each secret is matched in the forms a peer is likely to echo it in: as is, JSON-escaped
//! (`/` as `\/`, quotes), percent-encoded, and for a URL's user and password the
//! base64 of `user:password` that HTTP basic auth sends. Values shorter than
//! [`MIN_LEN`] are not matched: they would mask ordinary words, and are no secret anyway.
//!
//! A leaf: it imports nothing of the crate, so `api`, `delivery`, `store`, `cli` and
//! `http` can all use it.

use std::borrow::Cow;
use std::sync::RwLock;

use base64::Engine;

/// What a secret is replaced with.
pub const MARK: &str = "[redacted]";

/// Shorter values are not redacted (see the module's doc).
pub const MIN_LEN: usize = 6;

/// The forms to find, longest first (so a secret that contains another is replaced whole).
static KNOWN: RwLock<Vec<Vec<u8>>> = RwLock::new(Vec::new());

/// Redact `secret` from now on, in every form a peer may echo it in.
pub fn register(secret: &str) {
    if secret.len() < MIN_LEN {
        return;
    }
    let mut forms = vec![secret.to_string()];
    // As a JSON string holds it (quotes and backslashes escaped), and with `/` escaped
    // too, as some encoders write it.
    if let Ok(json) = serde_json::to_string(secret) {
        let inner = json[1..json.len() - 1].to_string();
        forms.push(inner.replace('/', "\\/"));
        forms.push(inner);
    }
    // As a URL query or form carries it.
    forms.push(url::form_urlencoded::byte_serialize(secret.as_bytes()).collect());
    add(forms);
}

/// Redact a URL's `user:password` as basic auth sends it (base64), and the password in
/// its plain forms.
pub fn register_basic(user: &str, password: &str) {
    register(password);
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    add(vec![basic]);
}

fn add(forms: Vec<String>) {
    let mut known = KNOWN.write().unwrap_or_else(|e| e.into_inner());
    for f in forms {
        let f = f.into_bytes();
        if f.len() >= MIN_LEN && !known.contains(&f) {
            known.push(f);
        }
    }
    known.sort_by_key(|f| std::cmp::Reverse(f.len()));
}

/// The length of the longest form registered: a reader that cuts a peer's text at `n`
/// bytes reads `n + longest()` first, so a secret straddling the cut is still whole
/// when redacted (and only then cut).
pub fn longest() -> usize {
    let known = KNOWN.read().unwrap_or_else(|e| e.into_inner());
    known.first().map_or(0, Vec::len)
}

/// `text` with every known secret replaced by [`MARK`].
pub fn secrets(text: &str) -> Cow<'_, str> {
    match secrets_in(text.as_bytes()) {
        Cow::Borrowed(_) => Cow::Borrowed(text),
        // A whole secret (valid UTF-8) replaced by ASCII keeps the text valid UTF-8.
        Cow::Owned(b) => Cow::Owned(String::from_utf8_lossy(&b).into_owned()),
    }
}

/// [`secrets`] over bytes (an error body before it is decoded).
pub fn secrets_in(bytes: &[u8]) -> Cow<'_, [u8]> {
    let known = KNOWN.read().unwrap_or_else(|e| e.into_inner());
    let mut out: Cow<'_, [u8]> = Cow::Borrowed(bytes);
    for form in known.iter() {
        if find(&out, form, 0).is_none() {
            continue;
        }
        let mut replaced = Vec::with_capacity(out.len());
        let mut at = 0;
        while let Some(i) = find(&out, form, at) {
            replaced.extend_from_slice(&out[at..i]);
            replaced.extend_from_slice(MARK.as_bytes());
            at = i + form.len();
        }
        replaced.extend_from_slice(&out[at..]);
        out = Cow::Owned(replaced);
    }
    out
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The registry is process-wide: each test uses secrets of its own.

    #[test]
    fn a_secret_is_redacted_in_every_echoed_form() {
        register("tok/en+\"9f2c1");
        let json = r#"{"auth":"Bearer tok\/en+\"9f2c1","again":"tok/en+\"9f2c1"}"#;
        assert_eq!(
            secrets(json),
            r#"{"auth":"Bearer [redacted]","again":"[redacted]"}"#
        );
        assert_eq!(secrets("q=tok%2Fen%2B%229f2c1&x=1"), "q=[redacted]&x=1");
        assert_eq!(secrets("nothing here"), "nothing here");
        assert!(matches!(secrets("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn basic_auth_and_short_values() {
        register_basic("alice", "pw-77a1e");
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:pw-77a1e");
        assert_eq!(
            secrets(&format!("Authorization: Basic {b64}; pw-77a1e")),
            "Authorization: Basic [redacted]; [redacted]"
        );
        register("abc");
        assert_eq!(secrets("abcdef abc"), "abcdef abc");
    }

    #[test]
    fn the_longest_form_wins_and_bytes_stay_bytes() {
        register("inner-5a0d");
        register("outer-inner-5a0d-x");
        assert_eq!(secrets("outer-inner-5a0d-x"), "[redacted]");
        assert_eq!(secrets("inner-5a0d"), "[redacted]");
        assert!(longest() >= "outer-inner-5a0d-x".len());
        assert_eq!(
            secrets_in(b"\xff inner-5a0d \xfe").as_ref(),
            b"\xff [redacted] \xfe"
        );
    }
}
