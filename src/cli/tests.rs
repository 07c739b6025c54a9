//! The commands' formatting helpers (tables, sizes) on hostile and edge input.

use super::*;

#[test]
fn sizes_are_human() {
    assert_eq!(human_size(512), "512 B");
    assert_eq!(human_size(128 << 20), "128.0 MiB");
}

#[test]
fn tables_align() {
    let t = format_table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
    assert_eq!(t, "A    BB\nxxx  y\n");
}

/// A cell of 65,536 characters or more panicked (`Formatting argument out of range`,
/// exit 101), and a newline or escape sequence in a name reached the terminal raw.
#[test]
fn hostile_cells_are_escaped_and_cut_and_never_panic() {
    let huge = "n".repeat(1 << 20);
    let t = format_table(
        &["NAME", "SYNC"],
        &[
            vec![huge, "COMPLETE".into()],
            vec!["a\nforged\x1b[2J\x07\0".into(), "x".into()],
        ],
    );
    assert_eq!(t.lines().count(), 3, "{t}");
    assert!(
        t.lines().all(|l| l.chars().count() < 2 * text::MAX_CELL),
        "{t}"
    );
    assert!(t.contains('…'));
    assert!(t.contains(r"a\nforged\u{1b}[2J\u{7}\0"), "{t}");
    assert!(!t.contains(['\x1b', '\x07', '\0']));
}
