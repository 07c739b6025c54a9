//! JSON of any depth loopwatch accepts, read back the same way everywhere. A checkpoint
//! object is taken from the listing as its raw text (never parsed into a tree there), so
//! the listing alone set no depth limit, while serde_json's parser stops at 128 levels: a
//! checkpoint with a field nested ~126 deep was accepted, then every format that reads
//! the stored body back (CloudEvents, templates, deploys) failed on it, for good.
//!
//! Now one limit holds end to end: [`MAX_DEPTH`] levels of nesting in a checkpoint
//! object, checked when the listing is decoded (a deeper one fails the poll, which names
//! it), and every re-read of a stored body goes through [`parse`], which checks the depth
//! (without recursion) and then parses without serde_json's own limit. The limit keeps
//! the recursion of parsing, rendering and dropping a tree far inside a thread's stack,
//! and inside the JSON functions of SQLite (1,000 levels) and PostgreSQL.
//!
//! A leaf: it imports nothing of the crate.

use serde_json::Value;

/// The deepest nesting accepted in a checkpoint object (the object itself is level 1).
pub const MAX_DEPTH: usize = 256;

/// What a stored body adds around the checkpoint object (`{"data": {"checkpoint": ...}}`,
/// and CloudEvents' envelope), with room to spare.
pub const ENVELOPE_DEPTH: usize = 8;

/// Each byte of a JSON text, with whether it stands between tokens rather than inside a
/// string (a string's quotes count as inside). One pass, no parsing, no recursion: safe
/// on any input; not a validity check.
fn between_tokens(text: &str) -> impl Iterator<Item = (u8, bool)> + '_ {
    let (mut in_string, mut escaped) = (false, false);
    text.bytes().map(move |b| {
        let between = !in_string && b != b'"';
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        }
        (b, between)
    })
}

/// The nesting depth of a JSON text: the most `[` and `{` open at once outside strings.
/// Counted without parsing or recursing, so it is safe on any input; not a validity check.
pub fn depth(text: &str) -> usize {
    let (mut open, mut max) = (0usize, 0usize);
    for (b, between) in between_tokens(text) {
        match b {
            b'[' | b'{' if between => {
                open += 1;
                max = max.max(open);
            }
            b']' | b'}' if between => open = open.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// `text` (valid JSON) without its insignificant whitespace: spaces, tabs and newlines
/// outside strings go, everything else (key order, number spellings, escapes) stays as
/// it is. A checkpoint object listed indented is then one line in every event body (and
/// `once --dry-run` prints one JSON line per event). Borrowed when there is nothing to
/// remove, the usual case.
pub fn compact(text: &str) -> std::borrow::Cow<'_, str> {
    let insignificant =
        |(b, between): (u8, bool)| between && matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    if !between_tokens(text).any(insignificant) {
        return std::borrow::Cow::Borrowed(text);
    }
    let kept: Vec<u8> = between_tokens(text)
        .filter(|&t| !insignificant(t))
        .map(|(b, _)| b)
        .collect();
    // Only ASCII whitespace outside strings was removed: still UTF-8.
    std::borrow::Cow::Owned(String::from_utf8(kept).expect("removing ASCII keeps UTF-8"))
}

/// Parse a stored body (a checkpoint of at most [`MAX_DEPTH`] levels in its envelope)
/// into a tree, whatever serde_json's own limit.
pub fn parse(text: &str) -> Result<Value, String> {
    parse_as(text)
}

/// [`parse`] into any type, borrowing from `text` where it can (a `&RawValue` member is
/// the member's text as stored, numbers and all).
pub fn parse_as<'a, T: serde::Deserialize<'a>>(text: &'a str) -> Result<T, String> {
    let d = depth(text);
    if d > MAX_DEPTH + ENVELOPE_DEPTH {
        return Err(format!(
            "nested {d} levels deep, deeper than the {MAX_DEPTH} loopwatch accepts"
        ));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    // Safe: the depth was bounded above.
    de.disable_recursion_limit();
    let v = T::deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_removes_whitespace_outside_strings_only() {
        let indented =
            "{\n  \"a\" : [1, 2.50 ,1e2],\r\n\t\"s\": \"x y\\\" \\n z\",\n  \"t\": \"\\\\\"\n}";
        let c = compact(indented);
        assert_eq!(c, r#"{"a":[1,2.50,1e2],"s":"x y\" \n z","t":"\\"}"#);
        assert_eq!(
            serde_json::from_str::<Value>(&c).unwrap(),
            serde_json::from_str::<Value>(indented).unwrap()
        );
        let tight = r#"{"a":"b c","d":[1,2]}"#;
        assert!(matches!(compact(tight), std::borrow::Cow::Borrowed(_)));
    }

    fn nested(levels: usize) -> String {
        format!(
            r#"{{"id":"x","deep":{}1{}}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
    }

    #[test]
    fn depth_counts_outside_strings_only() {
        assert_eq!(depth("1"), 0);
        assert_eq!(depth(r#"{"a":[{"b":[]}]}"#), 4);
        assert_eq!(depth(r#"{"a":"[[[{{\"[["}"#), 1);
        assert_eq!(depth(&nested(130)), 131);
    }

    #[test]
    fn bodies_past_serde_jsons_limit_parse_up_to_ours() {
        let body = format!(r#"{{"data":{{"checkpoint":{}}}}}"#, nested(MAX_DEPTH - 1));
        assert!(serde_json::from_str::<Value>(&body).is_err());
        let v = parse(&body).unwrap();
        assert_eq!(v["data"]["checkpoint"]["id"], "x");
        let too_deep = nested(MAX_DEPTH + ENVELOPE_DEPTH + 1);
        assert!(parse(&too_deep).unwrap_err().contains("deeper than"));
        assert!(parse("{} x").is_err());
    }

    /// The deepest body accepted is parsed, serialized, rendered by a template and dropped
    /// within a quarter of the stack a tokio worker thread has (2 MiB), in a debug build.
    #[test]
    fn the_deepest_body_fits_a_small_stack() {
        let body = format!(r#"{{"data":{{"checkpoint":{}}}}}"#, nested(MAX_DEPTH - 1));
        std::thread::Builder::new()
            .stack_size(512 << 10)
            .spawn(move || {
                let v = parse(&body).unwrap();
                let text = v.to_string();
                assert_eq!(depth(&text), MAX_DEPTH + 2);
                let mut env = minijinja::Environment::new();
                env.add_template("t", "{{ data.checkpoint | tojson }}")
                    .unwrap();
                let out = env
                    .get_template("t")
                    .unwrap()
                    .render(minijinja::value::Serde(&v))
                    .unwrap();
                assert!(out.len() > MAX_DEPTH * 2);
                drop(v);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
