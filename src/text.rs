//! Text from outside (checkpoint names, ids and statuses from the API, error bodies from
//! receivers) made safe to print on a terminal or into a line-oriented log: control
//! characters escaped, so that a newline cannot forge a log line and an escape sequence
//! cannot rewrite the operator's terminal; and table cells cut to a bounded width, so that
//! no field is too long to print (a width of 65,536 or more panicked `format!`).
//! JSON output escapes by itself and keeps every byte.
//!
//! Imports nothing else of the crate.

use std::borrow::Cow;
use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;

/// The longest table cell, in characters; longer ones end in `…`.
pub const MAX_CELL: usize = 256;

/// Whether `c` must not reach a terminal raw: C0 and C1 controls and DEL (newline, ESC,
/// BEL, NUL ...), and the bidirectional overrides that reorder what is shown.
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn push_escaped(out: &mut impl Write, c: char) -> fmt::Result {
    match c {
        '\n' => out.write_str("\\n"),
        '\r' => out.write_str("\\r"),
        '\t' => out.write_str("\\t"),
        '\0' => out.write_str("\\0"),
        c => write!(out, "\\u{{{:x}}}", c as u32),
    }
}

/// `s` with every unsafe character written as an escape (`\n`, `\0`, `\u{1b}`).
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    let _ = Escaping(&mut out).write_str(s);
    Cow::Owned(out)
}

/// `s` as one word of a POSIX shell command line: bare when it is plainly safe, else
/// single-quoted (a command loopwatch prints for a person to paste: a sink's name, a
/// config file's path).
pub fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/@%+=,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A table cell: escaped, and cut to [`MAX_CELL`] characters.
pub fn cell(s: &str) -> Cow<'_, str> {
    // Escaping only lengthens: the first MAX_CELL + 1 characters decide the cell.
    let head = s
        .char_indices()
        .nth(MAX_CELL + 1)
        .map_or(s, |(i, _)| &s[..i]);
    let escaped = escape(head);
    if escaped.chars().count() <= MAX_CELL {
        return escaped;
    }
    let cut = escaped.char_indices().nth(MAX_CELL - 1).expect("longer").0;
    Cow::Owned(format!("{}…", &escaped[..cut]))
}

/// A `fmt::Write` that escapes unsafe characters on the way through.
pub struct Escaping<W>(pub W);

impl<W: Write> Write for Escaping<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(i) = rest.find(is_unsafe) {
            self.0.write_str(&rest[..i])?;
            let c = rest[i..].chars().next().expect("found");
            push_escaped(&mut self.0, c)?;
            rest = &rest[i + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

/// The fields of a `log.format = "text"` line (the fmt layer's default layout, `message
/// name=value ...`), every value escaped: `%` fields (a checkpoint URI) and the message
/// reached the log raw. Use with `tracing_subscriber::fmt().fmt_fields(TextFields)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TextFields;

impl<'a> MakeVisitor<Writer<'a>> for TextFields {
    type Visitor = TextVisitor<'a>;

    fn make_visitor(&self, target: Writer<'a>) -> Self::Visitor {
        TextVisitor {
            writer: target,
            is_empty: true,
            result: Ok(()),
        }
    }
}

/// The visitor of [`TextFields`].
pub struct TextVisitor<'a> {
    writer: Writer<'a>,
    is_empty: bool,
    result: fmt::Result,
}

impl Visit for TextVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        if name.starts_with("log.") {
            return;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        let ansi = self.writer.has_ansi_escapes();
        self.result = (|| {
            if !std::mem::take(&mut self.is_empty) {
                self.writer.write_char(' ')?;
            }
            if name != "message" {
                if ansi {
                    write!(self.writer, "\x1b[3m{name}\x1b[0m\x1b[2m=\x1b[0m")?;
                } else {
                    write!(self.writer, "{name}=")?;
                }
            }
            write!(Escaping(&mut self.writer), "{value:?}")
        })();
    }
}

impl VisitOutput<fmt::Result> for TextVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for TextVisitor<'_> {
    fn writer(&mut self) -> &mut dyn Write {
        &mut self.writer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted_when_needed() {
        assert_eq!(shell_word("deployer"), "deployer");
        assert_eq!(shell_word("/srv/a/lw.toml"), "/srv/a/lw.toml");
        assert_eq!(shell_word("it's here"), r"'it'\''s here'");
        assert_eq!(shell_word("$(rm)"), "'$(rm)'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert!(matches!(escape("step-100 étape ✓"), Cow::Borrowed(_)));
        assert_eq!(
            escape("a\nb\r\tc\0d\x1b[31me\x07f\u{9b}g\u{7f}h\u{202e}i"),
            "a\\nb\\r\\tc\\0d\\u{1b}[31me\\u{7}f\\u{9b}g\\u{7f}h\\u{202e}i"
        );
    }

    #[test]
    fn cells_are_cut_with_an_ellipsis() {
        assert_eq!(cell("short"), "short");
        let exact = "x".repeat(MAX_CELL);
        assert_eq!(cell(&exact), exact);
        let long = "é".repeat(1 << 20);
        let c = cell(&long);
        assert_eq!(c.chars().count(), MAX_CELL);
        assert!(c.ends_with('…'));
        // Escapes count after escaping: the cell stays one line and bounded.
        let newlines = "\n".repeat(1000);
        let c = cell(&newlines);
        assert!(c.chars().count() <= MAX_CELL && !c.contains('\n'));
    }

    #[test]
    fn text_log_lines_escape_every_field_and_the_message() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .fmt_fields(TextFields)
            .with_writer(move || buf.clone())
            .finish();
        let name = "step-1\n2026-12-02T00:00:00Z ERROR forged\x1b[2J\x07\0";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(checkpoint = %name, id = name, n = 3, "event {name}");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains(['\x1b', '\x07', '\0']), "{text:?}");
        assert!(
            text.contains(r"event step-1\n2026-12-02T00:00:00Z ERROR forged\u{1b}[2J\u{7}\0 checkpoint=step-1\n2026"),
            "{text}"
        );
        assert!(text.contains(r#"id="step-1\n"#), "{text}");
        assert!(text.contains(" n=3"), "{text}");
    }
}
