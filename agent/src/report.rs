//! The human summary printed at the end of a capture: what was captured, what was lost, and
//! where the time went. Pure text from plain data.

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf, time::Duration};

use crate::{
    collect::Counters,
    export::top,
    model::{Label, Profile, ProfileKind, Sample},
    profiles::RunqStats,
};

/// Why the capture window ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Completed,
    Interrupted,
    TargetExited,
}

/// Facts about one capture, for the summary.
#[derive(Debug, Clone)]
pub struct CaptureFacts {
    pub pid: u32,
    pub comm: String,
    pub requested: Duration,
    pub elapsed: Duration,
    pub end: EndReason,
    pub frequency: u64,
    pub cpus: usize,
    pub counters: Counters,
    pub profiles: Vec<ProfileKind>,
    pub block_rate_ns: u64,
    pub mutex_fraction: u64,
    pub runq: Option<RunqStats>,
    /// Every thread's time in the window (`None`: the threads could not be read).
    pub accounting: Option<crate::accounting::Accounting>,
}

/// The `wait_class` label of a sample (off-CPU profiles).
pub fn wait_class_of(s: &Sample) -> Option<String> {
    label_of(s, "wait_class")
}

/// The string label `key` of a sample.
pub fn label_of(s: &Sample, key: &str) -> Option<String> {
    s.labels.iter().find_map(|l| match l {
        Label::Str(k, v) if k == key => Some(v.clone()),
        _ => None,
    })
}

/// Human duration from ns: 1.23 s, 45.6 ms, 789 µs, 12 ns.
pub fn human_ns(ns: u64) -> String {
    let f = ns as f64;
    if f >= 1e9 {
        format!("{:.2} s", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.1} ms", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1} µs", f / 1e3)
    } else {
        format!("{ns} ns")
    }
}

/// A short description of a sample's stack: the innermost user-space functions, leaf first.
pub fn stack_brief(p: &Profile, s: &Sample, depth: usize) -> String {
    let mut names: Vec<String> = Vec::new();
    for &loc in &s.locations {
        let l = &p.locations[loc];
        if l.kernel {
            continue;
        }
        for line in &l.lines {
            if names.len() < depth {
                let mut n = line.function.clone();
                if names.is_empty()
                    && let (Some(f), Some(no)) = (&line.file, line.line)
                {
                    let short = f.rsplit('/').next().unwrap_or(f);
                    n = format!("{n} ({short}:{no})");
                }
                names.push(n);
            }
        }
    }
    if names.is_empty() {
        "[no user stack]".into()
    } else {
        names.join(" <- ")
    }
}

/// The top stacks of a profile by one value column, optionally restricted to samples for
/// which `filter` holds.
fn top_stacks(
    p: &Profile,
    vi: usize,
    n: usize,
    filter: impl Fn(&Sample) -> bool,
) -> Vec<(i64, &Sample)> {
    let mut v: Vec<(i64, &Sample)> = p
        .samples
        .iter()
        .filter(|s| filter(s))
        .map(|s| (s.values[vi], s))
        .filter(|(x, _)| *x > 0)
        .collect();
    v.sort_by_key(|x| std::cmp::Reverse(x.0));
    v.truncate(n);
    v
}

/// The value column a profile is summarized by (its default sample type, else the last).
pub fn main_value_index(p: &Profile) -> usize {
    p.default_sample_type
        .as_deref()
        .and_then(|t| p.value_index(t))
        .unwrap_or(p.sample_types.len().saturating_sub(1))
}

/// Accounting lines, also stored as pprof comments so the losses travel with the profile.
pub fn counter_comments(c: &Counters) -> Vec<String> {
    let mut v = vec![
        format!(
            "cpu samples taken: {} (all processes), for the target: {}",
            c.cpu_samples, c.cpu_samples_target
        ),
        format!(
            "stacks lost: user {}, kernel {}; stack map collisions {}; aggregation map full (samples dropped) {}",
            c.user_stack_lost, c.kernel_stack_lost, c.stack_collisions, c.agg_map_full
        ),
    ];
    if c.offcpu_switch_out > 0 || c.block_events_seen > 0 {
        v.push(format!(
            "off-cpu: {} switch-outs, {} intervals recorded, {} below --offcpu-min; thread table full {}; run-queue histogram full {}; first-seen table full {}; exit table full {}",
            c.offcpu_switch_out, c.offcpu_recorded, c.offcpu_below_min, c.thread_map_full, c.runq_hist_full, c.first_seen_full, c.exited_full
        ));
        v.push(format!(
            "block: {} futex waits seen, {} recorded after in-kernel rate sampling",
            c.block_events_seen, c.block_events_recorded
        ));
    }
    v
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// One profile's part of the summary: totals and the top table.
pub fn profile_section(p: &Profile, top_n: usize) -> String {
    let vi = main_value_index(p);
    let unit = p.sample_types[vi].unit.clone();
    let total = p.total(vi);
    let mut s = String::new();
    match p.kind {
        ProfileKind::Cpu => {
            let samples = p.value_index("samples").map(|i| p.total(i)).unwrap_or(0);
            let _ = writeln!(
                s,
                "CPU profile: {samples} samples, {:.2} s of CPU time",
                total as f64 / 1e9
            );
        }
        ProfileKind::Offcpu => {
            let _ = writeln!(
                s,
                "Off-CPU profile: {} off CPU in total (all threads)",
                human_ns(total.max(0) as u64)
            );
            if total > 0 {
                offcpu_by_class(&mut s, p, vi, total);
            }
        }
        ProfileKind::Block => {
            let n = p
                .value_index("contentions")
                .map(|i| p.total(i))
                .unwrap_or(0);
            let _ = writeln!(
                s,
                "Block profile: {n} contentions (estimated), {} blocked on futexes (locks, condition variables)",
                human_ns(total.max(0) as u64)
            );
        }
        ProfileKind::Mutex => {
            let n = p
                .value_index("contentions")
                .map(|i| p.total(i))
                .unwrap_or(0);
            let _ = writeln!(
                s,
                "Mutex profile: {n} contentions, {} of waiting caused, charged to the lock holders' stacks (where they released the lock)",
                human_ns(total.max(0) as u64)
            );
        }
    }
    if p.samples.is_empty() || total == 0 {
        let _ = writeln!(s, "  (no samples for the target in this window)");
        return s;
    }
    if p.kind != ProfileKind::Offcpu {
        let rows = top::top(p, vi, top_n);
        s.push_str(&top::render(&rows, &unit, total));
    }
    s
}

fn offcpu_by_class(s: &mut String, p: &Profile, vi: usize, total: i64) {
    let mut by_class: BTreeMap<String, i64> = BTreeMap::new();
    for smp in &p.samples {
        *by_class
            .entry(wait_class_of(smp).unwrap_or_else(|| "other".into()))
            .or_default() += smp.values[vi];
    }
    let mut classes: Vec<(String, i64)> = by_class.into_iter().collect();
    classes.sort_by_key(|c| std::cmp::Reverse(c.1));
    let _ = writeln!(s, "  by wait class:");
    for (class, ns) in &classes {
        let _ = writeln!(
            s,
            "    {:<22} {:>10}  {:5.1}%",
            class,
            human_ns(*ns as u64),
            100.0 * *ns as f64 / total as f64
        );
    }
    for (class, _) in classes.iter().take(6) {
        let _ = writeln!(s, "  top {class} stacks:");
        for (v, smp) in top_stacks(p, vi, 3, |x| wait_class_of(x).as_deref() == Some(class)) {
            let _ = writeln!(
                s,
                "    {:>10}  {}",
                human_ns(v as u64),
                stack_brief(p, smp, 4)
            );
        }
    }
}

/// "Most contended locks": each lock with its symbol, delay, and top holder and waiter stacks.
pub fn locks_section(
    mutex: &Profile,
    waiters: &Profile,
    names: &std::collections::HashMap<String, String>,
    n: usize,
) -> String {
    let mut s = String::new();
    let top = crate::locks::top_locks(mutex, waiters, names, n, 3);
    if top.is_empty() {
        return s;
    }
    let _ = writeln!(s, "  most contended locks:");
    for l in &top {
        let name = l
            .name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "    lock {}{name}: {} of delay caused, {} contentions",
            l.lock,
            human_ns(l.delay_ns.max(0) as u64),
            l.contentions
        );
        for (v, i) in &l.holders {
            let _ = writeln!(
                s,
                "      held by   {:>10}  {}",
                human_ns(*v as u64),
                stack_brief(mutex, &mutex.samples[*i], 4)
            );
        }
        for (v, i) in &l.waiters {
            let _ = writeln!(
                s,
                "      waited in {:>10}  {}",
                human_ns(*v as u64),
                stack_brief(waiters, &waiters.samples[*i], 4)
            );
        }
    }
    s
}

/// The whole summary.
pub fn render_summary(f: &CaptureFacts, sections: &[String], files: &[PathBuf]) -> String {
    let mut s = String::new();
    let end = match f.end {
        EndReason::Completed => format!("{} capture completed", secs(f.elapsed)),
        EndReason::Interrupted => format!(
            "interrupted (Ctrl-C) after {} of {}; writing what was collected",
            secs(f.elapsed),
            secs(f.requested)
        ),
        EndReason::TargetExited => format!(
            "the process exited after {} of {}; writing what was collected",
            secs(f.elapsed),
            secs(f.requested)
        ),
    };
    let _ = writeln!(s, "stallscope: pid {} ({}): {end}", f.pid, f.comm);
    let c = &f.counters;
    if let Some(a) = f.accounting.as_ref().filter(|a| !a.threads.is_empty()) {
        let _ = writeln!(s, "{}", a.line());
        let seeded = a.threads.iter().filter(|t| t.seeded).count();
        if seeded > 0 && a.offcpu_recorded {
            let _ = writeln!(
                s,
                "accounting: {seeded} threads were already off CPU when the window opened: their waits count from its start"
            );
        }
    }
    if f.profiles.contains(&ProfileKind::Cpu) {
        let _ = writeln!(
            s,
            "accounting: {} cpu samples taken at {} Hz on {} CPUs, {} for the target",
            c.cpu_samples, f.frequency, f.cpus, c.cpu_samples_target,
        );
    }
    if f.profiles.contains(&ProfileKind::Offcpu) {
        let _ = writeln!(
            s,
            "accounting: {} switch-outs of target threads, {} off-CPU intervals recorded, {} shorter than --offcpu-min",
            c.offcpu_switch_out, c.offcpu_recorded, c.offcpu_below_min
        );
    }
    if f.profiles.contains(&ProfileKind::Mutex) {
        let _ = writeln!(
            s,
            "accounting: {} lock releases with waiters, {} recorded (mutex fraction {}); lock table full {}",
            c.mutex_events_seen, c.mutex_events_recorded, f.mutex_fraction, c.lock_table_full
        );
    }
    if c.user_stack_walked + c.user_stack_cache_hit > 0 {
        let _ = writeln!(
            s,
            "accounting: {} user stacks walked, {} taken from the walk cache",
            c.user_stack_walked, c.user_stack_cache_hit
        );
    }
    if f.profiles.contains(&ProfileKind::Block) {
        let _ = writeln!(
            s,
            "accounting: {} futex waits seen, {} recorded (block rate {})",
            c.block_events_seen,
            c.block_events_recorded,
            human_ns(f.block_rate_ns)
        );
    }
    let _ = writeln!(
        s,
        "losses: stacks lost user {} (user-stack map full {}) kernel {}; stack-map collisions {}; events dropped: map full {}, thread table full {}, histogram full {}, first-seen table full {}, exit table full {}",
        c.user_stack_lost + c.user_stack_map_full,
        c.user_stack_map_full,
        c.kernel_stack_lost,
        c.stack_collisions,
        c.agg_map_full,
        c.thread_map_full,
        c.runq_hist_full,
        c.first_seen_full,
        c.exited_full
    );
    if let Some(r) = f.runq {
        let _ = writeln!(
            s,
            "run-queue latency (pid {}): p50 {}  p99 {}  max {}  over {} waits",
            f.pid,
            human_ns(r.p50_ns),
            human_ns(r.p99_ns),
            human_ns(r.max_ns),
            r.count
        );
    }
    for sec in sections {
        s.push('\n');
        s.push_str(sec);
    }
    if !files.is_empty() {
        let _ = writeln!(s, "\nwrote:");
        for file in files {
            let _ = writeln!(s, "  {}", file.display());
        }
        if let Some(pb) = files
            .iter()
            .find(|p| p.to_string_lossy().ends_with(".pb.gz"))
        {
            let _ = writeln!(s, "open with: go tool pprof -http=: {}", pb.display());
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_says_the_target_exited_and_shows_losses() {
        let f = CaptureFacts {
            pid: 42,
            comm: "svc".into(),
            requested: Duration::from_secs(10),
            elapsed: Duration::from_millis(2100),
            end: EndReason::TargetExited,
            frequency: 99,
            cpus: 2,
            counters: Counters {
                cpu_samples: 400,
                cpu_samples_target: 200,
                user_stack_lost: 3,
                ..Default::default()
            },
            profiles: vec![ProfileKind::Cpu],
            block_rate_ns: 1,
            mutex_fraction: 1,
            accounting: None,
            runq: None,
        };
        let s = render_summary(&f, &[], &[PathBuf::from("out/cpu.pb.gz")]);
        assert!(
            s.contains("the process exited after 2.1 s of 10.0 s"),
            "{s}"
        );
        assert!(s.contains("stacks lost user 3"), "{s}");
        assert!(s.contains("200 for the target"), "{s}");
        assert!(s.contains("go tool pprof -http=: out/cpu.pb.gz"), "{s}");
    }
}
