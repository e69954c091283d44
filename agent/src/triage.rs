//! The diagnosis tree behind `summary.md`: from the profiles, the thread dumps and the process
//! facts of one capture, the findings that explain a hang, a leak or tail latency, most likely
//! first, each naming its culprit (function and file:line) with the numbers behind it. Pure.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use crate::{
    collect::Counters,
    locks,
    model::{Profile, Sample},
    profiles::RunqStats,
    report::{human_ns, wait_class_of},
};

/// How serious a finding is; findings are sorted by it, then by their weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

/// One finding of the diagnosis.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub severity: Severity,
    /// Orders findings of the same severity (larger first): typically seconds lost.
    pub weight: f64,
    pub title: String,
    /// Markdown lines with the numbers and stacks behind it.
    pub details: Vec<String>,
}

/// What the diagnosis reads.
#[derive(Debug, Default, Clone)]
pub struct TriageInput<'a> {
    pub duration: Duration,
    /// Online CPUs.
    pub cpus: usize,
    pub cpu: Option<&'a Profile>,
    pub offcpu: Option<&'a Profile>,
    pub block: Option<&'a Profile>,
    pub mutex: Option<&'a Profile>,
    pub runq: Option<RunqStats>,
    pub counters: Counters,
    /// Thread count samples over the window: (seconds since start, threads).
    pub thread_counts: Vec<(f64, u32)>,
    /// Deadlock cycles already described (e.g. by the thread dump).
    pub deadlocks: Vec<String>,
    /// Threads by state at the end, e.g. ("futex wait", 12).
    pub threads_by_state: Vec<(String, u32)>,
    /// Every thread's time in the window (CPU, off CPU, seeded waits).
    pub accounting: Option<&'a crate::accounting::Accounting>,
    /// The thread dump taken at the end of the window (states, wait objects and their owners).
    pub dump_end: Option<&'a crate::dump::Dump>,
}

/// The innermost frame worth naming in a sample: the first one in the main executable
/// (mapping 0), else the first user-space frame; as `function (file:line)`.
pub fn culprit(p: &Profile, s: &Sample) -> String {
    let mut first_user = None;
    for &li in &s.locations {
        let loc = &p.locations[li];
        if loc.kernel {
            continue;
        }
        let Some(line) = loc.lines.first() else {
            continue;
        };
        let text = match (&line.file, line.line) {
            (Some(f), Some(n)) => format!("{} ({f}:{n})", line.function),
            _ => line.function.clone(),
        };
        if loc.mapping == Some(0) {
            return text;
        }
        first_user.get_or_insert(text);
    }
    first_user.unwrap_or_else(|| "[no user stack]".into())
}

fn secs(ns: i64) -> f64 {
    ns as f64 / 1e9
}

fn value(p: &Profile, t: &str) -> Option<usize> {
    p.value_index(t)
}

/// Sum of a value by the culprit frame of each sample, largest first.
fn by_culprit(p: &Profile, vi: usize, filter: impl Fn(&Sample) -> bool) -> Vec<(String, i64)> {
    let mut m: BTreeMap<String, i64> = BTreeMap::new();
    for s in p.samples.iter().filter(|s| filter(s)) {
        *m.entry(culprit(p, s)).or_default() += s.values[vi];
    }
    let mut v: Vec<(String, i64)> = m.into_iter().filter(|(_, x)| *x > 0).collect();
    v.sort_by_key(|x| std::cmp::Reverse(x.1));
    v
}

/// Runs the diagnosis tree.
pub fn diagnose(t: &TriageInput) -> Vec<Finding> {
    let d = t.duration.as_secs_f64().max(1e-3);
    let mut out = Vec::new();

    for cycle in &t.deadlocks {
        out.push(Finding {
            severity: Severity::Critical,
            weight: f64::INFINITY,
            title: "Deadlock".into(),
            details: vec![cycle.clone()],
        });
    }

    // Lock contention: the critical section that holds everyone up.
    if let Some(m) = t.mutex
        && let Some(di) = value(m, "delay")
    {
        let total = m.total(di);
        let lock_names: BTreeMap<&str, &str> = m
            .samples
            .iter()
            .filter_map(|s| {
                let lock = locks::lock_of(s)?;
                let name = s.labels.iter().find_map(|l| match l {
                    crate::model::Label::Str(k, v) if k == "lock_name" => Some(v.as_str()),
                    _ => None,
                })?;
                Some((lock, name))
            })
            .collect();
        // Waiting worth reporting: at least 5% of one thread's time.
        if secs(total) >= 0.05 * d {
            let holders = by_culprit(m, di, |_| true);
            if let Some((who, ns)) = holders.first() {
                let top_lock = m
                    .samples
                    .iter()
                    .max_by_key(|s| s.values[di])
                    .and_then(locks::lock_of);
                let lock_text = match top_lock {
                    Some(l) => match lock_names.get(l) {
                        Some(n) => format!("`{n}` ({l})"),
                        None => format!("the lock at {l}"),
                    },
                    None => "a lock".into(),
                };
                let share = 100.0 * *ns as f64 / total.max(1) as f64;
                let mut details = vec![
                    format!(
                        "Threads waited {} in total for locks ({:.0}% of one thread's time over the {:.1} s window).",
                        human_ns(total as u64),
                        100.0 * secs(total) / d,
                        d
                    ),
                    format!(
                        "The critical section **{who}** caused {} of it ({share:.0}%), on {lock_text}: it holds the lock while others queue.",
                        human_ns(*ns as u64)
                    ),
                ];
                for (w, v) in holders.iter().skip(1).take(3) {
                    details.push(format!("- then {w}: {}", human_ns(*v as u64)));
                }
                out.push(Finding {
                    severity: Severity::Critical,
                    weight: secs(total),
                    title: format!(
                        "Lock contention: `{}` holds {lock_text} while others wait",
                        short(who)
                    ),
                    details,
                });
            }
        }
    }

    // CPU saturation / hot code.
    if let Some(c) = t.cpu
        && let Some(ci) = value(c, "cpu")
    {
        let cpu_s = secs(c.total(ci));
        let cores = cpu_s / d;
        let hot = by_culprit(c, ci, |_| true);
        if cores >= 0.5
            && let Some((who, ns)) = hot.first()
        {
            let share = 100.0 * secs(*ns) / cpu_s.max(1e-9);
            let saturated = cores >= 0.8 * t.cpus.max(1) as f64;
            out.push(Finding {
                severity: if saturated { Severity::Critical } else { Severity::Warning },
                weight: cpu_s,
                title: format!(
                    "{}: `{}` is the hottest code",
                    if saturated { "CPU saturated" } else { "Busy on CPU" },
                    short(who)
                ),
                details: vec![format!(
                    "The process used {cpu_s:.2} s of CPU in {d:.1} s ({cores:.2} cores of {}); **{who}** took {share:.0}% of it.",
                    t.cpus
                )],
            });
        }
    }

    // Run-queue starvation.
    if let Some(o) = t.offcpu
        && let Some(oi) = value(o, "off-cpu")
    {
        let runnable = o
            .samples
            .iter()
            .filter(|s| wait_class_of(s).as_deref() == Some("runnable"))
            .map(|s| s.values[oi])
            .sum::<i64>();
        let p99_ms = t.runq.map(|r| r.p99_ns as f64 / 1e6).unwrap_or(0.0);
        // A high p99 over a handful of wakeups of an idle process is not starvation: it takes
        // a real share of the threads' time in the run queue.
        let share = secs(runnable) / d;
        if share >= 0.2 || (p99_ms >= 10.0 && share >= 0.05) {
            let who = by_culprit(o, oi, |s| wait_class_of(s).as_deref() == Some("runnable"));
            let mut details = vec![format!(
                "Threads waited {:.2} s in the run queue ({:.0}% of one thread's time){}.",
                secs(runnable),
                100.0 * secs(runnable) / d,
                t.runq
                    .map(|r| format!(
                        "; run-queue latency p50 {}, p99 {}, max {}",
                        human_ns(r.p50_ns),
                        human_ns(r.p99_ns),
                        human_ns(r.max_ns)
                    ))
                    .unwrap_or_default()
            )];
            if let Some((w, v)) = who.first() {
                details.push(format!("Most of it in **{w}** ({}).", human_ns(*v as u64)));
            }
            out.push(Finding {
                severity: Severity::Warning,
                weight: secs(runnable),
                title: "Run-queue starvation: threads are ready but wait for a CPU".into(),
                details,
            });
        }
        // Uninterruptible waits (disk, page faults).
        let disk = o
            .samples
            .iter()
            .filter(|s| wait_class_of(s).as_deref() == Some("disk"))
            .map(|s| s.values[oi])
            .sum::<i64>();
        if secs(disk) >= 0.1 * d {
            let who = by_culprit(o, oi, |s| wait_class_of(s).as_deref() == Some("disk"));
            out.push(Finding {
                severity: Severity::Warning,
                weight: secs(disk),
                title: "Uninterruptible waits (disk I/O, page faults)".into(),
                details: who
                    .iter()
                    .take(3)
                    .map(|(w, v)| format!("- {w}: {}", human_ns(*v as u64)))
                    .collect(),
            });
        }
    }

    // Thread leak: the thread count grew steadily.
    if let (Some(first), Some(last)) = (t.thread_counts.first(), t.thread_counts.last())
        && last.1 > first.1
    {
        let grew = last.1 - first.1;
        let monotonic = t.thread_counts.windows(2).all(|w| w[1].1 >= w[0].1);
        if monotonic && (grew >= 5 || grew as f64 >= 0.2 * first.1 as f64) {
            out.push(Finding {
                severity: Severity::Warning,
                weight: grew as f64,
                title: format!("Thread count growing: {} → {}", first.1, last.1),
                details: vec![format!(
                    "{grew} threads more over {:.1} s and never fewer: a leak, or a pool growing under load.",
                    last.0 - first.0
                )],
            });
        }
    }

    // Blocked on synchronization (waiter side) when no mutex culprit was found.
    if let Some(b) = t.block
        && let Some(di) = value(b, "delay")
        && !out.iter().any(|f| f.title.starts_with("Lock contention"))
    {
        let total = b.total(di);
        if secs(total) >= 0.5 * d {
            let who = by_culprit(b, di, |_| true);
            if let Some((w, v)) = who.first() {
                out.push(Finding {
                    severity: Severity::Info,
                    weight: secs(total),
                    title: format!("Threads block on futexes, most in `{}`", short(w)),
                    details: vec![format!(
                        "{} blocked in total; {w}: {}. Waiting on a condition variable is often idle workers; lock contention shows in the mutex profile.",
                        human_ns(total as u64),
                        human_ns(*v as u64)
                    )],
                });
            }
        }
    }

    let c = &t.counters;
    let lost = c.user_stack_lost + c.kernel_stack_lost + c.stack_collisions;
    let dropped = c.agg_map_full
        + c.thread_map_full
        + c.runq_hist_full
        + c.lock_table_full
        + c.user_stack_map_full;
    if lost + dropped > 0 {
        out.push(Finding {
            severity: Severity::Info,
            weight: 0.0,
            title: "Some data was lost".into(),
            details: vec![format!(
                "stacks lost: user {}, kernel {}, collisions {}; events dropped (maps full): {dropped}. Figures above are lower bounds.",
                c.user_stack_lost, c.kernel_stack_lost, c.stack_collisions
            )],
        });
    }

    out.sort_by(|a, b| {
        a.severity.cmp(&b.severity).then(
            b.weight
                .partial_cmp(&a.weight)
                .unwrap_or(std::cmp::Ordering::Equal),
        )
    });
    out
}

/// The function name of a culprit text, without its location.
fn short(culprit: &str) -> &str {
    culprit.split(" (").next().unwrap_or(culprit)
}

/// True when nothing above `Info` was found.
pub fn nothing_wrong(findings: &[Finding]) -> bool {
    findings.iter().all(|f| f.severity == Severity::Info)
}

/// Markdown for the findings, leading with the most likely problem.
pub fn render_markdown(t: &TriageInput, findings: &[Finding]) -> String {
    let mut s = String::new();
    let d = t.duration.as_secs_f64();
    if nothing_wrong(findings) {
        let cpu = t
            .cpu
            .and_then(|c| value(c, "cpu").map(|i| secs(c.total(i))))
            .unwrap_or(0.0);
        let _ = writeln!(
            s,
            "## Nothing looks wrong\n\nIn {d:.1} s the process used {cpu:.2} s of CPU, showed no lock contention, no run-queue starvation, no deadlock and no thread growth. Its threads mostly waited for work (sleep, I/O readiness): that is idle, not stuck.\n"
        );
    } else if let Some(first) = findings.first() {
        let _ = writeln!(s, "## Most likely: {}\n", first.title);
        for l in &first.details {
            let _ = writeln!(s, "{l}");
        }
        s.push('\n');
    }
    let rest: Vec<&Finding> = if nothing_wrong(findings) {
        findings.iter().collect()
    } else {
        findings.iter().skip(1).collect()
    };
    if !rest.is_empty() {
        let _ = writeln!(s, "## Also\n");
        for f in rest {
            let tag = match f.severity {
                Severity::Critical => "critical",
                Severity::Warning => "warning",
                Severity::Info => "note",
            };
            let _ = writeln!(s, "### {} ({tag})\n", f.title);
            for l in &f.details {
                let _ = writeln!(s, "{l}");
            }
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Label, Line, Location, Mapping, ProfileKind, ValueType};
    use std::time::SystemTime;

    fn profile(
        kind: ProfileKind,
        types: &[(&str, &str)],
        samples: Vec<(&str, i64, Vec<Label>)>,
    ) -> Profile {
        let mut locations = Vec::new();
        let samples = samples
            .into_iter()
            .map(|(func, v, labels)| {
                locations.push(Location {
                    address: locations.len() as u64 + 1,
                    mapping: Some(0),
                    lines: vec![Line {
                        function: func.into(),
                        system_name: None,
                        file: Some("/src/app.c".into()),
                        line: Some(10),
                    }],
                    kernel: false,
                });
                let mut values = vec![1; types.len()];
                *values.last_mut().unwrap() = v;
                Sample {
                    locations: vec![locations.len() - 1],
                    values,
                    labels,
                }
            })
            .collect();
        Profile {
            kind,
            sample_types: types.iter().map(|(a, b)| ValueType::new(a, b)).collect(),
            default_sample_type: None,
            period_type: ValueType::new("x", "y"),
            period: 1,
            start: SystemTime::UNIX_EPOCH,
            duration: Duration::from_secs(10),
            samples,
            locations,
            mappings: vec![Mapping {
                file: "/usr/bin/app".into(),
                ..Default::default()
            }],
            comments: vec![],
        }
    }

    #[test]
    fn lock_convoy_names_the_slow_section_first() {
        let lock = |n: &str| {
            vec![
                Label::Str("lock".into(), "0x10".into()),
                Label::Str("lock_name".into(), n.into()),
            ]
        };
        let mutex = profile(
            ProfileKind::Mutex,
            &[("contentions", "count"), ("delay", "nanoseconds")],
            vec![
                ("slow_section", 9_000_000_000, lock("big_lock")),
                ("fast_section", 500_000_000, lock("big_lock")),
            ],
        );
        let cpu = profile(
            ProfileKind::Cpu,
            &[("samples", "count"), ("cpu", "nanoseconds")],
            vec![("spin", 1_000_000_000, vec![])],
        );
        let t = TriageInput {
            duration: Duration::from_secs(10),
            cpus: 2,
            cpu: Some(&cpu),
            mutex: Some(&mutex),
            ..Default::default()
        };
        let f = diagnose(&t);
        assert!(f[0].title.contains("slow_section"), "{f:?}");
        assert!(f[0].title.contains("big_lock"), "{f:?}");
        let md = render_markdown(&t, &f);
        assert!(md.starts_with("## Most likely: Lock contention"), "{md}");
        assert!(md.contains("slow_section (/src/app.c:10)"), "{md}");
    }

    #[test]
    fn idle_process_is_not_blamed() {
        let off = profile(
            ProfileKind::Offcpu,
            &[("events", "count"), ("off-cpu", "nanoseconds")],
            vec![(
                "nap",
                10_000_000_000,
                vec![Label::Str("wait_class".into(), "sleep".into())],
            )],
        );
        let t = TriageInput {
            duration: Duration::from_secs(10),
            cpus: 2,
            offcpu: Some(&off),
            ..Default::default()
        };
        let f = diagnose(&t);
        assert!(nothing_wrong(&f), "{f:?}");
        assert!(render_markdown(&t, &f).starts_with("## Nothing looks wrong"));
    }

    #[test]
    fn growing_thread_count_and_deadlock() {
        let t = TriageInput {
            duration: Duration::from_secs(10),
            cpus: 2,
            thread_counts: vec![(0.0, 10), (5.0, 20), (10.0, 30)],
            deadlocks: vec!["thread 1 waits for 2".into()],
            ..Default::default()
        };
        let f = diagnose(&t);
        assert_eq!(f[0].title, "Deadlock");
        assert!(f.iter().any(|x| x.title.contains("10 → 30")), "{f:?}");
        let flat = TriageInput {
            thread_counts: vec![(0.0, 10), (5.0, 12), (10.0, 10)],
            ..t.clone()
        };
        assert!(
            !diagnose(&flat)
                .iter()
                .any(|x| x.title.contains("Thread count"))
        );
    }
}
