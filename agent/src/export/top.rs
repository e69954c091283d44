//! The `go tool pprof -top` table: functions by flat (self) value, with cumulative value.
//!
//! Flat is charged to the innermost function of each sample's leaf location (an inlined leaf gets
//! it, not the function it was inlined into); cum counts a function once per sample even when it
//! appears several times (recursion).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use crate::model::{Line, Profile};

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct TopRow {
    pub function: String,
    /// Where the function spent most of its flat value (`file:line`), else its first line seen.
    pub file_line: Option<String>,
    pub flat: i64,
    /// Percent of the profile total.
    pub flat_pct: f64,
    pub cum: i64,
    pub cum_pct: f64,
}

#[derive(Default)]
struct Acc {
    flat: i64,
    cum: i64,
    first_line: Option<String>,
    flat_by_line: HashMap<String, i64>,
}

fn file_line(l: &Line) -> Option<String> {
    let file = l.file.as_deref()?;
    Some(match l.line {
        Some(n) => format!("{file}:{n}"),
        None => file.to_string(),
    })
}

/// The `n` functions with the highest flat value of column `value_index` (all when `n` is 0),
/// sorted by flat, then cum, then name.
pub fn top(p: &Profile, value_index: usize, n: usize) -> Vec<TopRow> {
    let mut accs: HashMap<String, Acc> = HashMap::new();
    let mut total: i64 = 0;
    for s in &p.samples {
        let v = s.values.get(value_index).copied().unwrap_or(0);
        if v == 0 {
            continue;
        }
        total += v;
        let mut seen: HashSet<String> = HashSet::new();
        for (depth, &li) in s.locations.iter().enumerate() {
            let Some(loc) = p.locations.get(li) else {
                continue;
            };
            if loc.lines.is_empty() {
                let name = format!("[unknown] {:#x}", loc.address);
                if depth == 0 {
                    accs.entry(name.clone()).or_default().flat += v;
                }
                seen.insert(name);
            }
            for (i, line) in loc.lines.iter().enumerate() {
                let acc = accs.entry(line.function.clone()).or_default();
                let fl = file_line(line);
                if acc.first_line.is_none() {
                    acc.first_line.clone_from(&fl);
                }
                if depth == 0 && i == 0 {
                    acc.flat += v;
                    if let Some(fl) = fl {
                        *acc.flat_by_line.entry(fl).or_insert(0) += v;
                    }
                }
                seen.insert(line.function.clone());
            }
        }
        for name in seen {
            accs.entry(name).or_default().cum += v;
        }
    }

    let pct = |x: i64| {
        if total == 0 {
            0.0
        } else {
            x as f64 * 100.0 / total as f64
        }
    };
    let mut rows: Vec<TopRow> = accs
        .into_iter()
        .filter(|(_, a)| a.flat != 0 || a.cum != 0)
        .map(|(function, a)| {
            let best = a
                .flat_by_line
                .into_iter()
                .max_by(|x, y| x.1.cmp(&y.1).then_with(|| y.0.cmp(&x.0)))
                .map(|(l, _)| l);
            TopRow {
                function,
                file_line: best.or(a.first_line),
                flat: a.flat,
                flat_pct: pct(a.flat),
                cum: a.cum,
                cum_pct: pct(a.cum),
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        b.flat
            .cmp(&a.flat)
            .then(b.cum.cmp(&a.cum))
            .then_with(|| a.function.cmp(&b.function))
    });
    if n > 0 {
        rows.truncate(n);
    }
    rows
}

/// Formats a value of `unit` for humans: time units scaled (`1.50s`, `12.30ms`), bytes scaled
/// (`4.00MB`), anything else (counts) as an integer.
pub fn format_value(v: i64, unit: &str) -> String {
    let ns_per_unit = match unit {
        "nanoseconds" | "ns" => Some(1.0),
        "microseconds" | "us" => Some(1e3),
        "milliseconds" | "ms" => Some(1e6),
        "seconds" | "s" => Some(1e9),
        _ => None,
    };
    if let Some(k) = ns_per_unit {
        let ns = v as f64 * k;
        let a = ns.abs();
        return if a == 0.0 {
            "0".to_string()
        } else if a >= 1e9 {
            format!("{:.2}s", ns / 1e9)
        } else if a >= 1e6 {
            format!("{:.2}ms", ns / 1e6)
        } else if a >= 1e3 {
            format!("{:.2}us", ns / 1e3)
        } else {
            format!("{ns:.0}ns")
        };
    }
    if unit == "bytes" {
        let a = v.unsigned_abs() as f64;
        let (div, suffix) = if a >= 1024.0 * 1024.0 * 1024.0 {
            (1024.0 * 1024.0 * 1024.0, "GB")
        } else if a >= 1024.0 * 1024.0 {
            (1024.0 * 1024.0, "MB")
        } else if a >= 1024.0 {
            (1024.0, "kB")
        } else {
            return format!("{v}B");
        };
        return format!("{:.2}{suffix}", v as f64 / div);
    }
    v.to_string()
}

/// The table as text, like `go tool pprof -top`: flat, flat%, sum%, cum, cum%, function and
/// `file:line`. `total` is the profile total for the header (e.g. [`Profile::total`]).
pub fn render(rows: &[TopRow], unit: &str, total: i64) -> String {
    let flat_sum: i64 = rows.iter().map(|r| r.flat).sum();
    let pct_of_total = if total == 0 {
        0.0
    } else {
        flat_sum as f64 * 100.0 / total as f64
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Showing {} functions accounting for {}, {pct_of_total:.2}% of {} total",
        rows.len(),
        format_value(flat_sum, unit),
        format_value(total, unit),
    );
    let mut sum_pct = 0.0;
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            sum_pct += r.flat_pct;
            [
                format_value(r.flat, unit),
                format!("{:.2}%", r.flat_pct),
                format!("{sum_pct:.2}%"),
                format_value(r.cum, unit),
                format!("{:.2}%", r.cum_pct),
            ]
        })
        .collect();
    let headers = ["flat", "flat%", "sum%", "cum", "cum%"];
    let mut widths = headers.map(str::len);
    for c in &cells {
        for (w, s) in widths.iter_mut().zip(c) {
            *w = (*w).max(s.len());
        }
    }
    let fn_width = rows
        .iter()
        .map(|r| r.function.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(8, 60);
    for (w, h) in widths.iter().zip(headers) {
        let _ = write!(out, "{h:>w$} ");
    }
    let _ = writeln!(out, " {:<fn_width$}  location", "function");
    for (r, c) in rows.iter().zip(&cells) {
        for (w, s) in widths.iter().zip(c) {
            let _ = write!(out, "{s:>w$} ");
        }
        match &r.file_line {
            Some(fl) => {
                let _ = writeln!(out, " {:<fn_width$}  {fl}", r.function);
            }
            None => {
                let _ = writeln!(out, " {}", r.function);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Location, ProfileKind, Sample, ValueType};
    use std::time::{Duration, SystemTime};

    fn line(f: &str, file: &str, n: u32) -> Line {
        Line {
            function: f.into(),
            system_name: None,
            file: Some(file.into()),
            line: Some(n),
        }
    }

    fn loc(lines: Vec<Line>) -> Location {
        Location {
            address: 0x10,
            mapping: None,
            lines,
            kernel: false,
        }
    }

    fn profile() -> Profile {
        Profile {
            kind: ProfileKind::Cpu,
            sample_types: vec![
                ValueType::new("samples", "count"),
                ValueType::new("cpu", "nanoseconds"),
            ],
            default_sample_type: None,
            period_type: ValueType::new("cpu", "nanoseconds"),
            period: 10_000_000,
            start: SystemTime::UNIX_EPOCH,
            duration: Duration::from_secs(1),
            locations: vec![
                // 0: `hash` inlined into `lookup` at a.c:20; leaf.
                loc(vec![line("hash", "h.c", 5), line("lookup", "a.c", 20)]),
                // 1, 2: recursion `walk` -> `walk`.
                loc(vec![line("walk", "w.c", 7)]),
                loc(vec![line("walk", "w.c", 9)]),
                loc(vec![line("main", "m.c", 3)]),
                loc(vec![line("lookup", "a.c", 22)]),
            ],
            samples: vec![
                Sample {
                    locations: vec![0, 1, 2, 2, 3],
                    values: vec![3, 30_000_000],
                    labels: vec![],
                },
                Sample {
                    locations: vec![1, 2, 3],
                    values: vec![1, 10_000_000],
                    labels: vec![],
                },
                Sample {
                    locations: vec![4, 3],
                    values: vec![1, 10_000_000],
                    labels: vec![],
                },
            ],
            mappings: vec![],
            comments: vec![],
        }
    }

    #[test]
    fn flat_and_cum() {
        let rows = top(&profile(), 0, 0);
        let get = |f: &str| rows.iter().find(|r| r.function == f).unwrap().clone();
        assert_eq!(rows[0].function, "hash", "inlined leaf gets flat");
        assert_eq!((get("hash").flat, get("hash").cum), (3, 3));
        assert_eq!(get("hash").file_line.as_deref(), Some("h.c:5"));
        assert_eq!((get("lookup").flat, get("lookup").cum), (1, 4));
        assert_eq!(
            get("lookup").file_line.as_deref(),
            Some("a.c:22"),
            "line with flat"
        );
        assert_eq!(
            (get("walk").flat, get("walk").cum),
            (1, 4),
            "recursion once"
        );
        assert_eq!((get("main").flat, get("main").cum), (0, 5));
        assert_eq!(
            get("main").file_line.as_deref(),
            Some("m.c:3"),
            "first line seen"
        );
        assert!((get("main").cum_pct - 100.0).abs() < 1e-9);
        assert!((get("hash").flat_pct - 60.0).abs() < 1e-9);
        assert_eq!(rows.last().unwrap().function, "main");
        assert_eq!(top(&profile(), 0, 2).len(), 2);
    }

    #[test]
    fn renders_aligned_table() {
        let p = profile();
        let rows = top(&p, 1, 10);
        let text = render(&rows, "nanoseconds", p.total(1));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("of 50.00ms total"), "{text}");
        assert!(lines[1].trim_start().starts_with("flat"), "{text}");
        assert!(lines[2].contains("30.00ms") && lines[2].contains("60.00%"));
        assert!(
            lines[2].contains("hash") && lines[2].ends_with("h.c:5"),
            "{text}"
        );
        // Columns line up: every row has the function at the same offset.
        let col = lines[2].find("hash").unwrap();
        assert_eq!(lines[3].find("lookup").or(lines[3].find("walk")), Some(col));
    }

    #[test]
    fn formats_units() {
        assert_eq!(format_value(1_500_000_000, "nanoseconds"), "1.50s");
        assert_eq!(format_value(12_300_000, "nanoseconds"), "12.30ms");
        assert_eq!(format_value(2_500, "nanoseconds"), "2.50us");
        assert_eq!(format_value(12, "nanoseconds"), "12ns");
        assert_eq!(format_value(0, "nanoseconds"), "0");
        assert_eq!(format_value(42, "count"), "42");
        assert_eq!(format_value(3 * 1024 * 1024, "bytes"), "3.00MB");
    }
}
