//! The agent's folders follow the data flow (docs/ARCHITECTURE.md): a module may import only the
//! modules before it in [`ORDER`], and only `commands/` imports `cli`. This reads every source
//! file's `crate::` paths (outside its unit tests) and fails naming each import that points up.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The stages, in the order the data flows; the foundation first (one rank: they may use each
/// other), `cli` last.
const ORDER: &[&[&str]] = &[
    &[
        "error", "system", "output", "model", "options", "identity", "targets",
    ],
    &["kernel"],
    &["unwind"],
    &["gopclntab"],
    &["symbolize"],
    &["dump"],
    &["profiles"],
    &["export"],
    &["report"],
    &["window"],
    &["commands"],
    &["cli"],
];

fn rank(module: &str) -> Option<usize> {
    ORDER.iter().position(|r| r.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without its `#[cfg(test)] mod tests` (tests may reach anywhere) and
/// without comments.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a file names after `crate::`, in paths and in `use crate::{...}` groups.
fn imported(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group: split at commas outside nested braces.
            let mut depth = 0;
            let mut start = 0;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.insert(ident(group[start..j].trim()));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident(group[start..j].trim()));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.remove("");
    found
}

#[test]
fn imports_point_down_the_flow() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let me = rank(&top).unwrap_or_else(|| {
            panic!(
                "{}: module `{top}` is not in ORDER (add it where it belongs in the flow)",
                rel.display()
            )
        });
        for m in imported(&code(&std::fs::read_to_string(f).unwrap())) {
            let Some(r) = rank(&m) else { continue };
            checked += 1;
            if m == top {
                continue;
            }
            if (m == "cli" && top != "commands") || (m != "cli" && r > me) {
                wrong.push(format!("{} imports {m}", rel.display()));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} imports found: is the parser still reading them?"
    );
    assert!(
        wrong.is_empty(),
        "imports pointing up the flow:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_parser_sees_grouped_and_nested_imports() {
    let c = code(
        "use crate::{\n    kernel::{self, Collector},\n    report::summary as report,\n};\n\
         // crate::window in a comment\nfn f() { crate::cli::parse(); }\n\
         #[cfg(test)]\nmod tests { use crate::commands; }\n",
    );
    let got: Vec<_> = imported(&c).into_iter().collect();
    assert_eq!(got, ["cli", "kernel", "report"]);
}
