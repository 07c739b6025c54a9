//! The architecture, checked (the habit of rust-analyzer's tidy tests): which module of
//! `src/` may use which. It reads every `crate::<module>` path outside test modules and
//! fails on a forbidden dependency or on any cycle between the crate's top-level modules.
//! A change that needs a forbidden import changes the design, not this file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// (from, to): `from` must never use `to`. `*` stands for every other module.
const FORBIDDEN: &[(&str, &str, &str)] = &[
    ("diff", "api", "the diff is pure: it never sees the wire"),
    ("diff", "store", "the diff is pure: no I/O"),
    ("diff", "metrics", "the diff is pure: the poller counts"),
    (
        "diff",
        "config",
        "the diff takes DiffOptions, not the config",
    ),
    ("api", "store", "the client knows nothing of persistence"),
    ("api", "delivery", "the client knows nothing of sinks"),
    ("api", "poller", "the client is called, it never calls back"),
    (
        "poller",
        "delivery",
        "the poller wakes sinks through wake::Wake, owned by app",
    ),
    (
        "delivery",
        "api",
        "shared HTTP helpers live in http, below both",
    ),
    (
        "delivery",
        "poller",
        "deliveries come from the store, not the poller",
    ),
    ("model", "*", "the domain model is the bottom layer"),
];

/// The crate's top-level module a source file belongs to (`src/store/sqlite.rs` ->
/// `store`); `None` for the crate roots.
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// The code of a file without its `#[cfg(test)]` module and comments.
fn non_test_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod "))
        {
            // Test modules sit at the end of a file by convention here.
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line.split(" // ").next().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Every top-level module named by a `crate::` path in `code`, grouped imports included
/// (`use crate::{a, b::c}`).
fn uses(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `loopwatch_crate::` or similar
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => {
                        found.extend(head(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 1 {
                    item.push(c);
                }
            }
            found.extend(head(&item));
        } else {
            found.extend(head(rest));
        }
    }
    found
}

fn head(path: &str) -> Option<String> {
    let name: String = path
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty() && name != "self").then_some(name)
}

/// module -> the modules it uses.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn graph(files: &[(String, String)]) -> Graph {
    let mut g = Graph::new();
    for (rel, text) in files {
        let Some(m) = module_of(Path::new(rel)) else {
            continue;
        };
        let deps = uses(&non_test_code(text));
        let entry = g.entry(m.clone()).or_default();
        entry.extend(deps.into_iter().filter(|d| *d != m));
    }
    g
}

/// Every broken rule, as one readable line each.
fn violations(g: &Graph) -> Vec<String> {
    let mut out = Vec::new();
    for (from, deps) in g {
        for to in deps {
            for (f, t, why) in FORBIDDEN {
                if f == from && (t == to || *t == "*") {
                    out.push(format!("{from} -> {to} is forbidden: {why}"));
                }
            }
        }
    }
    for cycle in cycles(g) {
        out.push(format!("cycle: {}", cycle.join(" -> ")));
    }
    out
}

/// One cycle through each module that is on one (depth-first, shortest found first).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    let mut found: Vec<Vec<String>> = Vec::new();
    let mut reported = BTreeSet::new();
    for start in g.keys() {
        if reported.contains(start) {
            continue;
        }
        // Breadth-first from `start` back to `start`: the shortest cycle through it.
        let mut prev: BTreeMap<&String, &String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut closed = None;
        while let Some(m) = queue.pop_front() {
            for d in g.get(m).into_iter().flatten() {
                if d == start {
                    closed = Some(m);
                    break;
                }
                if !prev.contains_key(d) && g.contains_key(d) {
                    prev.insert(d, m);
                    queue.push_back(d);
                }
            }
            if closed.is_some() {
                break;
            }
        }
        if let Some(mut m) = closed {
            let mut path = vec![start.clone()];
            let mut back = vec![];
            while m != start {
                back.push(m.clone());
                m = prev[m];
            }
            path.extend(back.into_iter().rev());
            path.push(start.clone());
            reported.extend(path.iter().cloned());
            found.push(path);
        }
    }
    found
}

fn sources(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            // `tests.rs` files are `#[cfg(test)] mod tests;` of their parent: test code.
            let rel = path.strip_prefix(root).expect("under src/");
            let text = std::fs::read_to_string(&path).expect("a readable source file");
            out.push((rel.to_string_lossy().into_owned(), text));
        }
    }
}

#[test]
fn the_modules_of_src_respect_the_layers_and_have_no_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &root, &mut files);
    let g = graph(&files);
    assert!(
        g.contains_key("poller") && g.contains_key("diff"),
        "src/ was read"
    );
    let broken = violations(&g);
    assert!(
        broken.is_empty(),
        "the architecture is broken (see ARCHITECTURE.md):\n{}",
        broken.join("\n")
    );
}

/// The checker itself: it must see what it is meant to forbid.
#[test]
fn the_checker_finds_forbidden_uses_and_cycles() {
    let file = |path: &str, text: &str| (path.to_string(), text.to_string());
    let files = [
        file(
            "poller.rs",
            "use crate::delivery::Outbox;\nuse crate::model::Event;\n",
        ),
        file(
            "delivery/webhook.rs",
            "use crate::{store::Store, http};\nfn f() { crate::api::parse(); }\n",
        ),
        file("api/mod.rs", "use crate::{model, poller::Poller};\n"),
        file(
            "model.rs",
            "// crate::config in a comment is fine\n#[cfg(test)]\nmod tests {\n    use crate::sim;\n}\n",
        ),
        file(
            "diff.rs",
            "pub fn f() -> crate::model::Tracked { todo!() }\n",
        ),
        file("lib.rs", "pub mod poller;\n"),
    ];
    let g = graph(&files);
    assert_eq!(
        g["delivery"],
        BTreeSet::from(["api".into(), "http".into(), "store".into()])
    );
    assert!(
        g["model"].is_empty(),
        "comments and test modules are not uses"
    );
    let broken = violations(&g);
    for expected in [
        "poller -> delivery is forbidden",
        "delivery -> api is forbidden",
        "api -> poller is forbidden",
        "cycle: api -> poller -> delivery -> api",
    ] {
        assert!(
            broken.iter().any(|b| b.starts_with(expected)),
            "{expected:?} not in {broken:#?}"
        );
    }
    assert!(!broken.iter().any(|b| b.starts_with("diff")), "{broken:#?}");
}

/// The longest a file under `src/` may be: past it, a module has grown past the shape
/// ARCHITECTURE.md gives it and should be split along a line it already has.
const MAX_LINES: usize = 800;

/// Files allowed over [`MAX_LINES`], each with why. Add nothing here: split instead.
const TOO_LONG_FOR_NOW: &[(&str, &str)] = &[];

#[test]
fn no_file_in_src_is_over_the_size_limit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    all_sources(&root, &root, &mut files);
    assert!(files.len() > 20, "src/ was read");
    let mut over = Vec::new();
    for (rel, lines) in &files {
        let allowed = TOO_LONG_FOR_NOW.iter().any(|(f, _)| f == rel);
        if *lines > MAX_LINES && !allowed {
            over.push(format!("{rel}: {lines} lines (at most {MAX_LINES})"));
        }
    }
    assert!(
        over.is_empty(),
        "split these along a seam they already have (ARCHITECTURE.md):\n{}",
        over.join("\n")
    );
    // An allowance that is no longer needed goes, so the list only shrinks.
    for (f, why) in TOO_LONG_FOR_NOW {
        let lines = files.iter().find(|(rel, _)| rel == f).map(|(_, n)| *n);
        assert!(
            lines.is_some_and(|n| n > MAX_LINES),
            "{f} is allowed over {MAX_LINES} lines ({why}) but is {lines:?}: remove it from TOO_LONG_FOR_NOW"
        );
    }
}

/// Every `.rs` file under `dir`, test files included, as (path relative to `root`, lines).
fn all_sources(dir: &Path, root: &Path, out: &mut Vec<(String, usize)>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            all_sources(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).expect("under src/");
            let text = std::fs::read_to_string(&path).expect("a readable source file");
            out.push((rel.to_string_lossy().into_owned(), text.lines().count()));
        }
    }
}
