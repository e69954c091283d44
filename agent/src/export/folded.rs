//! Folded stacks (Brendan Gregg's `stackcollapse` format): one line per distinct stack,
//! `root;caller;leaf N`, the input of `flamegraph.pl` and `inferno-flamegraph`.
//!
//! Frames run root first with inlined functions expanded (the order of
//! [`Profile::frames_root_first`]); kernel frames get the `_[k]` suffix that flame-graph tools
//! colour as kernel code.

use std::collections::BTreeMap;
use std::path::Path;

use crate::model::{Profile, Sample};

/// Folded stacks of value column `value_index`; identical stacks merged, zero lines left out,
/// lines sorted.
pub fn render(p: &Profile, value_index: usize) -> String {
    render_with_root(p, value_index, |_| Vec::new())
}

/// Like [`render`], with extra root frames per sample chosen by `root`, outermost first (e.g.
/// the thread's name and the wait class label), so the flame graph splits by them first.
pub fn render_with_root(
    p: &Profile,
    value_index: usize,
    root: impl Fn(&Sample) -> Vec<String>,
) -> String {
    let mut stacks: BTreeMap<String, i64> = BTreeMap::new();
    for s in &p.samples {
        let value = s.values.get(value_index).copied().unwrap_or(0);
        if value == 0 {
            continue;
        }
        let mut frames: Vec<String> = Vec::new();
        for r in root(s) {
            frames.push(sanitize(&r));
        }
        // Same order as `Profile::frames_root_first`, keeping track of kernel locations.
        for &li in s.locations.iter().rev() {
            let Some(loc) = p.locations.get(li) else {
                continue;
            };
            let suffix = if loc.kernel { "_[k]" } else { "" };
            if loc.lines.is_empty() {
                frames.push(format!("[unknown] {:#x}{suffix}", loc.address));
            }
            for line in loc.lines.iter().rev() {
                frames.push(format!("{}{suffix}", sanitize(&line.function)));
            }
        }
        if frames.is_empty() {
            frames.push("[no stack]".to_string());
        }
        *stacks.entry(frames.join(";")).or_insert(0) += value;
    }
    let mut out = String::new();
    for (stack, value) in stacks {
        if value != 0 {
            out.push_str(&stack);
            out.push(' ');
            out.push_str(&value.to_string());
            out.push('\n');
        }
    }
    out
}

/// Makes a function name safe for one folded frame: no `;` (frame separator), no line breaks.
fn sanitize(name: &str) -> String {
    if name.is_empty() {
        return "[unknown]".to_string();
    }
    name.chars()
        .map(|c| match c {
            ';' => ':',
            '\n' | '\r' | '\t' => ' ',
            c => c,
        })
        .collect()
}

/// Writes folded text to `path` atomically (a temporary file, then a rename), so a reader
/// never sees half a file.
pub fn write_text(path: &Path, text: &str) -> std::io::Result<()> {
    crate::output::write_atomically(path, text.as_bytes()).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "writing {}: {e} (check the directory exists and is writable)",
                path.display()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Label, Line, Location, ProfileKind, ValueType};
    use std::time::{Duration, SystemTime};

    fn loc(names: &[&str], kernel: bool) -> Location {
        Location {
            address: 0x1000,
            mapping: None,
            lines: names
                .iter()
                .map(|n| Line {
                    function: n.to_string(),
                    system_name: None,
                    file: None,
                    line: None,
                })
                .collect(),
            kernel,
        }
    }

    fn sample(locations: Vec<usize>, v: i64, wait: &str) -> Sample {
        Sample {
            locations,
            values: vec![1, v],
            labels: vec![Label::Str("wait".into(), wait.into())],
        }
    }

    fn profile() -> Profile {
        Profile {
            kind: ProfileKind::Offcpu,
            sample_types: vec![
                ValueType::new("samples", "count"),
                ValueType::new("offcpu", "nanoseconds"),
            ],
            default_sample_type: None,
            period_type: ValueType::new("offcpu", "nanoseconds"),
            period: 1,
            start: SystemTime::UNIX_EPOCH,
            duration: Duration::from_secs(1),
            locations: vec![
                loc(&["futex_wait"], true),               // 0
                loc(&["inlined_leaf", "caller"], false),  // 1: leaf location with an inline
                loc(&["main"], false),                    // 2
                loc(&["weird;name\nwith breaks"], false), // 3
                Location {
                    lines: vec![],
                    ..loc(&[], false)
                },
            ],
            samples: vec![
                sample(vec![0, 1, 2], 10, "futex"),
                sample(vec![0, 1, 2], 5, "futex"),
                sample(vec![3, 2], 7, "io"),
                sample(vec![1, 2], 0, "io"),
                sample(vec![4], 1, "sleep"),
            ],
            mappings: vec![],
            comments: vec![],
        }
    }

    #[test]
    fn folds_merges_and_sorts() {
        let out = render(&profile(), 1);
        assert_eq!(
            out,
            "[unknown] 0x1000 1\n\
             main;caller;inlined_leaf;futex_wait_[k] 15\n\
             main;weird:name with breaks 7\n"
        );
    }

    #[test]
    fn counts_column_and_root_frames() {
        let p = profile();
        let out = render(&p, 0);
        assert!(out.contains("main;caller;inlined_leaf 1\n"), "{out}");
        let out = render_with_root(&p, 1, |s| {
            s.labels
                .iter()
                .filter_map(|l| match l {
                    Label::Str(k, v) if k == "wait" => Some(v.clone()),
                    _ => None,
                })
                .collect()
        });
        assert!(
            out.contains("futex;main;caller;inlined_leaf;futex_wait_[k] 15\n"),
            "{out}"
        );
        assert!(out.contains("io;main;weird:name with breaks 7\n"), "{out}");
        assert!(!out.contains("io;main;caller"), "zero lines omitted: {out}");
    }

    #[test]
    fn matches_frames_root_first_order() {
        let p = profile();
        let names: Vec<&str> = p
            .frames_root_first(&p.samples[0])
            .iter()
            .map(|l| l.function.as_str())
            .collect();
        assert_eq!(names, ["main", "caller", "inlined_leaf", "futex_wait"]);
    }

    #[test]
    fn writes_file() {
        let path = std::env::temp_dir().join(format!("folded-{}.txt", std::process::id()));
        write_text(&path, &render(&profile(), 1)).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            render(&profile(), 1)
        );
        std::fs::remove_file(&path).unwrap();
    }
}
