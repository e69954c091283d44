//! The diagnosis tree behind `summary.md`: from the profiles, the thread dumps and the process
//! facts of one capture, the findings that explain a hang, a leak or tail latency, most likely
//! first, each naming its culprit (function and file:line) with the numbers behind it. Pure.

use crate::dump::goroutines::GoroutineSummary;
use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    time::Duration,
};

use stallscope_common::Counter;

use crate::{
    dump::model::{State, Thread, Wait, WaitObject},
    kernel::Counters,
    model::{Profile, Sample},
    profiles::RunqStats,
    profiles::locks,
    report::summary::{self as report, human_ns, label_of, wait_class_of},
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
    pub accounting: Option<&'a crate::profiles::accounting::Accounting>,
    /// The thread dump taken at the end of the window (states, wait objects and their owners).
    pub dump_end: Option<&'a crate::dump::Dump>,
    /// A Go program's goroutines at the start of the window and at its end.
    pub goroutines_start: Option<&'a GoroutineSummary>,
    pub goroutines: Option<&'a GoroutineSummary>,
}

/// Goroutines in one group (same state, place and creator) worth a finding on their own.
const GOROUTINE_PILE: usize = 100;
/// Growth of a group over the window worth a finding.
const GOROUTINE_GROWTH: usize = 10;

/// Goroutines piling up where they wait: a leak when one group is large, or grew in the
/// window (the start and end dumps compared).
fn goroutine_findings(t: &TriageInput) -> Vec<Finding> {
    let Some(end) = t.goroutines else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for d in &end.deadlocks {
        let mut details = vec![format!("{d}.")];
        if t.goroutines_start.is_some_and(|s| s.deadlocks.contains(d)) {
            details.push("It was there when the window opened too.".into());
        }
        details.push(format!("{}.", crate::dump::goroutines::GO_HOLDER_NOTE));
        details.push("Their stacks: goroutines-end.txt.".into());
        out.push(Finding {
            severity: Severity::Critical,
            weight: f64::INFINITY,
            title: "Deadlock of goroutines".into(),
            details,
        });
    }
    for g in end.groups.iter().take(3) {
        if matches!(g.state.as_str(), "running" | "runnable" | "syscall") {
            continue;
        }
        let before = t.goroutines_start.map(|s| {
            s.groups
                .iter()
                .find(|x| x.state == g.state && x.at == g.at && x.created_by == g.created_by)
                .map_or(0, |x| x.count)
        });
        let grew = before.map(|b| g.count.saturating_sub(b)).unwrap_or(0);
        if g.count < GOROUTINE_PILE && grew < GOROUTINE_GROWTH {
            continue;
        }
        let mut details = vec![format!(
            "{} of the program's {} goroutines are in {} at `{}`{}.",
            g.count,
            end.total,
            g.state,
            g.at,
            g.created_by
                .as_deref()
                .map(|c| format!(", created by `{c}`"))
                .unwrap_or_default()
        )];
        match before {
            Some(b) => details.push(format!(
                "{b} were there when the window opened, {} at its end: {}.",
                g.count,
                if grew > 0 {
                    format!("+{grew} in the window, a leak if it keeps growing")
                } else {
                    "not growing in this window".to_string()
                }
            )),
            None => details.push("Compare with a later dump: a leak grows.".into()),
        }
        if let Some(m) = g.minutes.filter(|m| *m > 0) {
            details.push(format!(
                "The oldest has waited at least {m} minutes (Go's own `waitsince`)."
            ));
        }
        details.push(
            "Their stacks: goroutines-end.txt (Go's text: `grep -A4` and `uniq -c` work as on a Go dump)."
                .into(),
        );
        out.push(Finding {
            severity: if grew >= GOROUTINE_GROWTH || g.count >= GOROUTINE_PILE {
                Severity::Warning
            } else {
                Severity::Info
            },
            weight: g.count as f64,
            title: format!(
                "{} goroutines in {} at {}{}",
                g.count,
                g.state,
                short(&g.at),
                if grew > 0 {
                    format!(" (+{grew} in the window)")
                } else {
                    String::new()
                }
            ),
            details,
        });
    }
    out
}

/// The frame worth naming in a sample: its first application frame (the innermost one that is
/// neither in the C runtime, the loader or the vDSO, nor a libc/runtime internal, nor a stack
/// root such as `start_thread`), as `function (file:line)`. Without one, says so (and where
/// the sample's self time went) rather than naming a root frame.
pub fn culprit(p: &Profile, s: &Sample) -> String {
    if let Some(l) = report::first_app_frame(p, s) {
        return report::frame_text(l, false);
    }
    let frames = report::user_frames(p, s);
    if frames.is_empty() {
        return report::no_user_stack(s).into();
    }
    match frames
        .iter()
        .find(|(l, _)| !report::is_root_function(&l.function))
    {
        Some((l, _)) => format!("[no application frame, in {}]", l.function),
        None => "[no application frame]".into(),
    }
}

/// Where a sample's self time goes: its innermost user-space frame, as `function (file:line)`.
pub fn self_frame(p: &Profile, s: &Sample) -> String {
    match report::leaf_frame(p, s) {
        Some(l) => report::frame_text(l, false),
        None => report::no_user_stack(s).into(),
    }
}

fn secs(ns: i64) -> f64 {
    ns as f64 / 1e9
}

fn value(p: &Profile, t: &str) -> Option<usize> {
    p.value_index(t)
}

/// Sum of a value by the culprit frame of each sample, largest first.
fn by_culprit(p: &Profile, vi: usize, filter: impl Fn(&Sample) -> bool) -> Vec<(String, i64)> {
    by_key(p, vi, filter, culprit)
}

fn by_key(
    p: &Profile,
    vi: usize,
    filter: impl Fn(&Sample) -> bool,
    key: impl Fn(&Profile, &Sample) -> String,
) -> Vec<(String, i64)> {
    let mut m: BTreeMap<String, i64> = BTreeMap::new();
    for s in p.samples.iter().filter(|s| filter(s)) {
        *m.entry(key(p, s)).or_default() += s.values[vi];
    }
    let mut v: Vec<(String, i64)> = m.into_iter().filter(|(_, x)| *x > 0).collect();
    v.sort_by_key(|x| std::cmp::Reverse(x.1));
    v
}

/// Thread names that belong to one thread only, for samples without a `tid` label.
type UniqueNames = HashMap<String, u32>;

fn unique_names(t: &TriageInput) -> UniqueNames {
    let mut all: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut add = |name: &str, tid: u32| {
        let e = all.entry(name.to_string()).or_default();
        if !e.contains(&tid) {
            e.push(tid);
        }
    };
    if let Some(a) = t.accounting {
        for th in &a.threads {
            add(&th.name, th.tid);
        }
    }
    if let Some(d) = t.dump_end {
        for th in &d.threads {
            add(&th.name, th.tid);
        }
    }
    all.into_iter()
        .filter(|(_, v)| v.len() == 1)
        .map(|(k, v)| (k, v[0]))
        .collect()
}

/// The thread of a sample: its `tid` label, else its `thread` label when that name is unique.
fn tid_of(s: &Sample, names: &UniqueNames) -> Option<u32> {
    if let Some(t) = label_of(s, "tid").and_then(|t| t.parse().ok()) {
        return Some(t);
    }
    names.get(&label_of(s, "thread")?).copied()
}

/// Futex waits of one thread at one code site (its first application frame).
#[derive(Debug, Default, Clone)]
struct Site {
    ns: u64,
    lock_ns: u64,
    /// `function (file:line)` texts of the site → ns (lines differ within a function).
    texts: BTreeMap<String, u64>,
}

impl Site {
    fn text(&self) -> String {
        self.texts
            .iter()
            .max_by_key(|(_, v)| **v)
            .map(|(k, _)| k.clone())
            .unwrap_or_default()
    }
}

/// One thread's time in the window: from the accounting (alive, on CPU) and the off-CPU
/// profile (waits by class, by what they wait on and where).
#[derive(Debug, Default, Clone)]
struct ThreadTime {
    tid: u32,
    name: String,
    alive_ns: u64,
    oncpu_ns: u64,
    runnable_ns: u64,
    /// Waits for a lock (wait_class `lock`).
    lock_ns: u64,
    /// Intervals of those waits.
    lock_events: i64,
    /// Waits for work: other futex waits, io, sleep, blocking syscalls, `other`.
    idle_ns: u64,
    /// Futex waits (lock and idle) by the function of their first application frame.
    sites: BTreeMap<String, Site>,
    /// Idle waits by what they wait on (`condition variable`, `read`, `sleep`).
    idle_kinds: BTreeMap<String, u64>,
    /// Idle waits by their first application frame (`function (file:line)`).
    idle_code: BTreeMap<String, u64>,
    /// The profile had samples of this thread.
    profiled: bool,
}

/// What an idle off-CPU sample waits on, in words.
fn idle_kind(class: &str, s: &Sample) -> String {
    match class {
        "futex" => match label_of(s, "wait_object").as_deref() {
            Some("condvar") => "condition variable".into(),
            Some("semaphore") => "semaphore".into(),
            Some("join") => "join".into(),
            Some("barrier") => "barrier".into(),
            _ => "futex".into(),
        },
        "io" => "poll/epoll".into(),
        "sleep" => "sleep".into(),
        "other" => "other wait".into(),
        c => c.strip_prefix("syscall:").unwrap_or(c).to_string(),
    }
}

fn is_idle_class(class: &str) -> bool {
    matches!(class, "futex" | "io" | "sleep" | "other") || class.starts_with("syscall:")
}

/// Every thread's time, by tid.
fn thread_times(t: &TriageInput, window_ns: u64, names: &UniqueNames) -> BTreeMap<u32, ThreadTime> {
    let mut map: BTreeMap<u32, ThreadTime> = BTreeMap::new();
    if let Some(a) = t.accounting {
        for th in &a.threads {
            let get = |k: &str| th.offcpu_by_class.get(k).copied().unwrap_or(0);
            let futex = get("futex") + get("lock");
            let other_idle: u64 = th
                .offcpu_by_class
                .iter()
                .filter(|(k, _)| is_idle_class(k) && k.as_str() != "futex")
                .map(|(_, v)| *v)
                .sum();
            map.insert(
                th.tid,
                ThreadTime {
                    tid: th.tid,
                    name: th.name.clone(),
                    alive_ns: th.alive_ns,
                    oncpu_ns: if a.offcpu_recorded {
                        th.oncpu_ns
                    } else {
                        th.cpu_ns
                    },
                    runnable_ns: get("runnable"),
                    lock_ns: get("lock"),
                    idle_ns: futex - get("lock") + other_idle,
                    ..Default::default()
                },
            );
        }
    }
    let accounted = t.accounting.is_some();
    let fresh = |tid: u32, s: &Sample| ThreadTime {
        tid,
        name: label_of(s, "thread").unwrap_or_else(|| "?".into()),
        alive_ns: window_ns,
        ..Default::default()
    };
    // Off-CPU waits by class, what and where, from the profile.
    let mut prof: BTreeMap<u32, ThreadTime> = BTreeMap::new();
    if let Some(o) = t.offcpu
        && let Some(oi) = value(o, "off-cpu")
    {
        let ei = value(o, "events");
        for s in &o.samples {
            let Some(tid) = tid_of(s, names) else {
                continue;
            };
            let v = s.values[oi].max(0) as u64;
            let class = wait_class_of(s).unwrap_or_else(|| "other".into());
            let e = prof.entry(tid).or_insert_with(|| fresh(tid, s));
            e.profiled = true;
            if class == "runnable" {
                e.runnable_ns += v;
            }
            if class == "lock" {
                e.lock_ns += v;
                e.lock_events += ei.map(|i| s.values[i]).unwrap_or(1);
            } else if is_idle_class(&class) {
                e.idle_ns += v;
                *e.idle_kinds.entry(idle_kind(&class, s)).or_default() += v;
                *e.idle_code.entry(culprit(o, s)).or_default() += v;
            }
            if class == "lock" || class == "futex" {
                let (key, text) = match report::first_app_frame(o, s) {
                    Some(l) => (l.function.clone(), report::frame_text(l, false)),
                    None => {
                        let c = culprit(o, s);
                        (c.clone(), c)
                    }
                };
                let site = e.sites.entry(key).or_default();
                site.ns += v;
                if class == "lock" {
                    site.lock_ns += v;
                }
                *site.texts.entry(text).or_default() += v;
            }
        }
    }
    for (tid, p) in prof {
        match map.get_mut(&tid) {
            Some(e) => {
                e.profiled = true;
                e.runnable_ns = p.runnable_ns;
                e.lock_ns = p.lock_ns;
                e.lock_events = p.lock_events;
                e.idle_ns = p.idle_ns;
                e.sites = p.sites;
                e.idle_kinds = p.idle_kinds;
                e.idle_code = p.idle_code;
            }
            None if !accounted => {
                map.insert(tid, p);
            }
            None => {}
        }
    }
    // Without an accounting, time on CPU from the CPU profile.
    if !accounted
        && let Some(c) = t.cpu
        && let Some(ci) = value(c, "cpu")
    {
        for s in &c.samples {
            let Some(tid) = tid_of(s, names) else {
                continue;
            };
            let e = map.entry(tid).or_insert_with(|| fresh(tid, s));
            e.oncpu_ns += s.values[ci].max(0) as u64;
        }
    }
    map
}

/// Whether a wait object is a lock a thread can be stuck on (a deadlock park is a deadlock).
fn is_lock_object(o: WaitObject) -> bool {
    matches!(
        o,
        WaitObject::Mutex | WaitObject::PiMutex | WaitObject::RwLock
    )
}

/// A thread stuck waiting for a lock.
#[derive(Debug, Clone)]
struct StuckThread<'a> {
    tid: u32,
    name: String,
    /// How long it has waited (the dump's time in state, else its lock waits in the window).
    waited_ns: u64,
    /// The dump knew how long: `waited_ns` can exceed the window.
    waited_known: bool,
    /// Its lock waits in the window.
    in_window_ns: u64,
    alive_ns: u64,
    /// Its own code: the first application frame of its stack.
    code: Option<String>,
    /// The library function it waits in (`pthread_mutex_lock`).
    entry: Option<String>,
    wait: Option<&'a Wait>,
}

/// The first application frame and the library function it called, of a dump stack.
fn dump_code(th: &Thread) -> (Option<String>, Option<String>) {
    let i = th
        .user_stack
        .iter()
        .position(|f| report::is_app_frame(&f.function, f.module.as_deref()));
    match i {
        Some(i) => (
            Some(report::dump_frame_text(&th.user_stack[i], false)),
            i.checked_sub(1)
                .map(|j| report::entry_name(&th.user_stack[j].function).to_string()),
        ),
        None => (None, None),
    }
}

/// Threads stuck on a lock: off CPU ≥ 90% of their time in the window waiting for one lock
/// in one wait, or (end dump) in a futex wait on a mutex, PI mutex or rwlock for at least the
/// whole window. Threads of a deadlock cycle (or behind one) are left to the deadlock finding.
fn stuck_threads<'a>(
    t: &TriageInput<'a>,
    times: &BTreeMap<u32, ThreadTime>,
    names: &UniqueNames,
    window_ns: u64,
) -> Vec<StuckThread<'a>> {
    let mut in_deadlock: Vec<u32> = Vec::new();
    let dump_threads: HashMap<u32, &Thread> = t
        .dump_end
        .map(|d| {
            for c in &d.deadlocks {
                in_deadlock.extend(c.cycle.iter().map(|e| e.tid));
                in_deadlock.extend(&c.blocked_behind);
            }
            d.threads.iter().map(|th| (th.tid, th)).collect()
        })
        .unwrap_or_default();
    let mut tids: Vec<u32> = times.keys().copied().collect();
    tids.extend(dump_threads.keys().filter(|k| !times.contains_key(k)));
    tids.sort_unstable();
    let mut out = Vec::new();
    for tid in tids {
        if in_deadlock.contains(&tid) {
            continue;
        }
        let tt = times.get(&tid);
        let th = dump_threads.get(&tid).copied();
        let alive = tt.map(|x| x.alive_ns).unwrap_or(window_ns).max(1);
        // The window's view: (nearly) all of its time in one lock wait.
        let by_profile = tt.is_some_and(|x| {
            x.lock_ns as f64 >= 0.9 * alive as f64 && (1..=2).contains(&x.lock_events)
        });
        // The end dump's view decides when it has one.
        let by_dump = th.and_then(|th| {
            let lock_wait = th.state == State::FutexWait
                && th.wait.as_ref().is_some_and(|w| is_lock_object(w.object));
            let unknown_wait = th.state == State::FutexWait
                && th
                    .wait
                    .as_ref()
                    .is_none_or(|w| w.object == WaitObject::Unknown);
            match th.in_state_ns {
                _ if !lock_wait && !unknown_wait => Some(false),
                Some(ns) if lock_wait && ns >= window_ns => Some(true),
                Some(ns) if (ns as f64) < 0.9 * alive as f64 => Some(false),
                _ => None,
            }
        });
        if !by_dump.unwrap_or(by_profile) {
            continue;
        }
        let (mut code, mut entry) = th.map(dump_code).unwrap_or_default();
        if code.is_none()
            && let Some(site) = tt.and_then(|x| x.sites.values().max_by_key(|s| s.lock_ns))
        {
            code = Some(site.text());
        }
        if entry.is_none()
            && let Some(o) = t.offcpu
            && let Some(oi) = value(o, "off-cpu")
        {
            entry = o
                .samples
                .iter()
                .filter(|s| {
                    tid_of(s, names) == Some(tid) && wait_class_of(s).as_deref() == Some("lock")
                })
                .max_by_key(|s| s.values[oi])
                .and_then(|s| {
                    let f = report::user_frames(o, s);
                    let i = f.iter().position(|(_, app)| *app)?;
                    Some(report::entry_name(&f[i.checked_sub(1)?].0.function).to_string())
                });
        }
        let in_window = tt.map(|x| x.lock_ns).unwrap_or(0);
        let known = th.and_then(|th| th.in_state_ns);
        out.push(StuckThread {
            tid,
            name: th
                .map(|th| th.name.clone())
                .or_else(|| tt.map(|x| x.name.clone()))
                .unwrap_or_else(|| "?".into()),
            waited_ns: known.unwrap_or(in_window).max(in_window),
            waited_known: known.is_some(),
            in_window_ns: in_window,
            alive_ns: alive,
            code,
            entry,
            wait: th.and_then(|th| th.wait.as_ref()),
        });
    }
    out
}

/// The hottest first application frame of one thread's CPU samples: (frame, ns, thread's
/// CPU ns).
fn hottest_of(t: &TriageInput, names: &UniqueNames, tid: u32) -> Option<(String, i64, i64)> {
    let c = t.cpu?;
    let ci = value(c, "cpu")?;
    let mine = |s: &Sample| tid_of(s, names) == Some(tid);
    let total: i64 = c
        .samples
        .iter()
        .filter(|s| mine(s))
        .map(|s| s.values[ci])
        .sum();
    let (who, ns) = by_culprit(c, ci, mine).into_iter().next()?;
    Some((who, ns, total))
}

fn pct(a: f64, b: f64) -> f64 {
    100.0 * a / b.max(1e-9)
}

/// `name` (tid N)
fn who(name: &str, tid: u32) -> String {
    format!("`{name}` (tid {tid})")
}

/// One Stuck finding per lock.
fn stuck_findings(
    t: &TriageInput,
    stuck: &[StuckThread],
    times: &BTreeMap<u32, ThreadTime>,
    names: &UniqueNames,
    window_ns: u64,
) -> Vec<Finding> {
    let window_s = window_ns as f64 / 1e9;
    // By lock: its address when the dump read it, else the waiters' code.
    let mut groups: Vec<(String, Vec<&StuckThread>)> = Vec::new();
    for s in stuck {
        let key = match s.wait {
            Some(w) => format!("lock {}", w.address),
            None => format!("site {}", s.code.as_deref().unwrap_or("?")),
        };
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(s),
            None => groups.push((key, vec![s])),
        }
    }
    let dump_thread = |tid: u32| {
        t.dump_end
            .and_then(|d| d.threads.iter().find(|th| th.tid == tid))
    };
    let mut out = Vec::new();
    for (_, mut waiters) in groups {
        waiters.sort_by_key(|s| std::cmp::Reverse(s.waited_ns));
        let first = waiters[0];
        let wait = waiters.iter().find_map(|s| s.wait);
        let lock_title = match wait {
            Some(w) => match &w.symbol {
                Some(sym) => format!("lock `{sym}`"),
                None => format!("the lock at {}", w.address),
            },
            None => match &first.code {
                Some(c) => format!("a lock in `{}`", short(c)),
                None => "a lock".into(),
            },
        };
        let owner = waiters
            .iter()
            .find_map(|s| s.wait.and_then(|w| w.owner_tid));
        let holder = owner.and_then(dump_thread);
        let holder_name = holder
            .map(|h| h.name.clone())
            .or_else(|| owner.and_then(|o| times.get(&o)).map(|x| x.name.clone()));
        let held_by = match (owner, &holder_name) {
            (Some(o), Some(n)) => format!(", held by {}", who(n, o)),
            (Some(o), None) => format!(", held by tid {o}"),
            _ => String::new(),
        };
        let title = if waiters.len() == 1 {
            format!(
                "Stuck: thread {} has waited {} for {lock_title}{held_by}",
                who(&first.name, first.tid),
                human_ns(first.waited_ns)
            )
        } else {
            format!(
                "Stuck: {} threads ({}) have waited up to {} for {lock_title}{held_by}",
                waiters.len(),
                waiters
                    .iter()
                    .map(|s| who(&s.name, s.tid))
                    .collect::<Vec<_>>()
                    .join(", "),
                human_ns(first.waited_ns)
            )
        };
        let mut details = Vec::new();
        if let Some(w) = wait {
            details.push(match &w.symbol {
                Some(sym) => format!("The lock: `{sym}` ({} at {}).", w.object.label(), w.address),
                None => format!(
                    "The lock: a {} at {} (no symbol).",
                    w.object.label(),
                    w.address
                ),
            });
        }
        for s in &waiters {
            let code = match (&s.code, &s.entry) {
                (Some(c), Some(e)) => format!(" waits in **{c}** (in `{e}`)"),
                (Some(c), None) => format!(" waits in **{c}**"),
                (None, _) => " waits (no application frame on its stack)".into(),
            };
            let how_long = if s.waited_known && s.waited_ns > window_ns {
                format!(
                    "blocked for {} in total, longer than the {window_s:.1} s window (it was already waiting when the window opened)",
                    human_ns(s.waited_ns)
                )
            } else {
                format!("blocked for {}", human_ns(s.waited_ns))
            };
            details.push(format!(
                "- {}{code}: {how_long}; {:.0}% of its time in the window waiting for the lock.",
                who(&s.name, s.tid),
                pct(s.in_window_ns as f64, s.alive_ns as f64).min(100.0)
            ));
        }
        match (owner, holder) {
            (Some(o), Some(h)) => {
                let name = who(&h.name, o);
                let main = if h.main { ", the main thread" } else { "" };
                let state = match h.in_state_ns {
                    Some(ns) => format!("{} for {}", h.state.label(), human_ns(ns)),
                    None => h.state.label().to_string(),
                };
                details.push(format!("The holder: {name}{main}, {state} at the end of the window."));
                let share = times
                    .get(&o)
                    .map(|x| pct(x.oncpu_ns as f64, window_ns as f64));
                match hottest_of(t, names, o) {
                    Some((f, ns, total)) => details.push(format!(
                        "It ran on CPU in the window{}, most in **{f}** ({:.0}% of its CPU samples): it keeps running without releasing the lock.",
                        share
                            .map(|p| format!(" ({p:.0}% of the window)"))
                            .unwrap_or_default(),
                        pct(ns as f64, total as f64)
                    )),
                    None if share.is_some_and(|p| p >= 1.0) => details.push(format!(
                        "It ran on CPU {:.0}% of the window.",
                        share.unwrap_or(0.0)
                    )),
                    None => {}
                }
                let ran = hottest_of(t, names, o).is_some() || share.is_some_and(|p| p >= 1.0);
                let briefly = h.in_state_ns.is_some_and(|ns| ns < window_ns / 10);
                if h.state.is_blocked() && ran && briefly {
                    let (code, entry) = dump_code(h);
                    details.push(format!(
                        "At the end of the window it was briefly in {} in **{}**{}.",
                        h.state.label(),
                        code.as_deref().unwrap_or("[no application frame]"),
                        entry.map(|e| format!(" (in `{e}`)")).unwrap_or_default()
                    ));
                } else if h.state.is_blocked() {
                    let (code, entry) = dump_code(h);
                    let waits = h
                        .wait
                        .as_ref()
                        .map(|w| {
                            let sym = w
                                .symbol
                                .as_ref()
                                .map(|s| format!(" `{s}`"))
                                .unwrap_or_default();
                            let owner = w
                                .owner_tid
                                .map(|x| format!(" held by tid {x}"))
                                .unwrap_or_default();
                            format!(", waiting on a {}{sym}{owner}", w.object.label())
                        })
                        .unwrap_or_default();
                    details.push(format!(
                        "It is blocked ({}{waits}) in **{}**{}: it holds the lock while it waits.",
                        h.state.label(),
                        code.as_deref().unwrap_or("[no application frame]"),
                        entry.map(|e| format!(" (in `{e}`)")).unwrap_or_default()
                    ));
                }
            }
            (Some(o), None) => details.push(format!(
                "The holder, tid {o}, is not among the process's threads at the end: it may have exited without releasing the lock."
            )),
            (None, _) => details.push(
                "The holder is not known (the lock's owner could not be read).".to_string(),
            ),
        }
        details.push(
            "A thread waiting this long for a lock is stuck, not idle: nothing happens until the holder releases it.".into(),
        );
        out.push(Finding {
            severity: Severity::Critical,
            weight: 1e9 + first.waited_ns as f64 / 1e9,
            title,
            details,
        });
    }
    out
}

/// Whether a function is CPython's global interpreter lock.
fn is_gil(function: &str) -> bool {
    matches!(function, "take_gil" | "drop_gil")
        || function.starts_with("PyEval_")
        || function.starts_with("_PyEval_")
        || function.starts_with("PyGILState_")
        || function.starts_with("_PyThreadState_Attach")
}

/// Threads that want CPU but take turns on one lock: each spends most of its time on CPU,
/// runnable or waiting at the same futex site, and together they get far less CPU than they
/// could.
fn serialized_findings(
    t: &TriageInput,
    times: &BTreeMap<u32, ThreadTime>,
    stuck: &[StuckThread],
    names: &UniqueNames,
    window_ns: u64,
    contention_found: bool,
) -> Vec<Finding> {
    // CPython's GIL functions (take_gil, drop_gil, PyEval_*) are one site.
    const GIL: &str = "\u{0}gil";
    let merged = |tt: &ThreadTime| {
        let mut m: BTreeMap<String, Site> = BTreeMap::new();
        for (f, site) in &tt.sites {
            let e = m
                .entry(if is_gil(f) { GIL.into() } else { f.clone() })
                .or_default();
            e.ns += site.ns;
            e.lock_ns += site.lock_ns;
            for (k, v) in &site.texts {
                *e.texts.entry(k.clone()).or_default() += v;
            }
        }
        m
    };
    let mut by_site: BTreeMap<String, Vec<(&ThreadTime, Site)>> = BTreeMap::new();
    for tt in times.values() {
        if stuck.iter().any(|s| s.tid == tt.tid) || tt.alive_ns == 0 {
            continue;
        }
        let sites = merged(tt);
        let futex: u64 = sites.values().map(|s| s.ns).sum();
        let Some((site, w)) = sites.into_iter().max_by_key(|(_, s)| s.ns) else {
            continue;
        };
        if site.starts_with('[') {
            continue;
        }
        let alive = tt.alive_ns as f64;
        let wants_cpu = (tt.oncpu_ns + tt.runnable_ns + w.ns) as f64 >= 0.7 * alive;
        let one_site = w.ns as f64 >= 0.8 * futex as f64;
        let gets_some = tt.oncpu_ns as f64 >= 0.05 * alive;
        let waits = w.ns as f64 >= 0.2 * alive;
        if wants_cpu && one_site && gets_some && waits {
            by_site.entry(site).or_default().push((tt, w));
        }
    }
    let window = window_ns.max(1) as f64;
    let mut out = Vec::new();
    for (key, members) in by_site {
        let n = members.len();
        if n < 2 {
            continue;
        }
        let limit = n.min(t.cpus.max(1));
        if limit < 2 {
            continue;
        }
        let cores = members.iter().map(|(m, _)| m.oncpu_ns).sum::<u64>() as f64 / window;
        let lock_ns: u64 = members.iter().map(|(_, w)| w.lock_ns).sum();
        let wait_ns: u64 = members.iter().map(|(_, w)| w.ns).sum();
        let gil = key == GIL;
        // Waits on a lock (or the GIL) are turns on it; waits on a condition variable are
        // turns only when the group runs about one thread at a time, each thread a fair
        // share (an idle pool gets little CPU, and not one core's worth).
        let lockish = gil || lock_ns as f64 >= 0.5 * wait_ns as f64;
        let one_at_a_time = (0.7..=1.3).contains(&cores)
            && members
                .iter()
                .all(|(m, _)| (m.oncpu_ns + m.runnable_ns) as f64 >= 0.1 * m.alive_ns as f64);
        if cores > 0.75 * limit as f64 || cores < 0.3 || !(lockish || one_at_a_time) {
            continue;
        }
        let mut texts: BTreeMap<&str, u64> = BTreeMap::new();
        for (_, w) in &members {
            for (k, v) in &w.texts {
                *texts.entry(k.as_str()).or_default() += v;
            }
        }
        let text = texts
            .into_iter()
            .max_by_key(|(_, v)| *v)
            .map(|(k, _)| k.to_string())
            .unwrap_or_else(|| key.clone());
        let site = short(&text).to_string();
        let site = site.as_str();
        let gil_words = if gil {
            " (CPython's global interpreter lock)"
        } else {
            ""
        };
        let critical = (gil || !contention_found) && cores <= 0.6 * limit as f64;
        let mut details = vec![format!(
            "{n} threads want CPU, but together they ran {cores:.2} cores' worth in the {:.1} s window of the {limit} they could use ({} CPUs online): they wait their turn in **{text}** ({} in total, {}).",
            window / 1e9,
            t.cpus,
            human_ns(wait_ns),
            if lock_ns * 2 >= wait_ns {
                "waiting for the lock"
            } else {
                "waiting on the lock's condition variable"
            }
        )];
        for (m, w) in &members {
            let a = m.alive_ns as f64;
            details.push(format!(
                "- {}: on CPU {:.0}%, runnable {:.0}%, waiting in `{site}` {:.0}% of its time",
                who(&m.name, m.tid),
                pct(m.oncpu_ns as f64, a),
                pct(m.runnable_ns as f64, a),
                pct(w.ns as f64, a)
            ));
        }
        let tids: Vec<u32> = members.iter().map(|(m, _)| m.tid).collect();
        if let Some(c) = t.cpu
            && let Some(ci) = value(c, "cpu")
            && let Some((f, ns)) = by_culprit(c, ci, |s| {
                tid_of(s, names).is_some_and(|x| tids.contains(&x))
            })
            .into_iter()
            .next()
        {
            let total: i64 = c
                .samples
                .iter()
                .filter(|s| tid_of(s, names).is_some_and(|x| tids.contains(&x)))
                .map(|s| s.values[ci])
                .sum();
            details.push(format!(
                "When they run, they run **{f}** ({:.0}% of their CPU).",
                pct(ns as f64, total as f64)
            ));
        }
        if gil {
            details.push(
                "This is CPython's global interpreter lock (GIL): one thread runs Python code at a time, so CPU-bound Python threads do not run in parallel. Use processes (multiprocessing), native code that releases the GIL, or a free-threaded Python build.".into(),
            );
        } else {
            details.push(
                "Only one of them makes progress at a time: more threads or CPUs add no throughput until the lock is held for shorter or split.".into(),
            );
        }
        out.push(Finding {
            severity: if critical {
                Severity::Critical
            } else {
                Severity::Warning
            },
            weight: (limit as f64 - cores) * window / 1e9
                + members.iter().map(|(m, _)| m.oncpu_ns).sum::<u64>() as f64 / 1e9,
            title: format!(
                "Serialized: {n} threads take turns on one lock in `{site}`{gil_words}: together they get {cores:.1} of {limit} CPUs"
            ),
            details,
        });
    }
    out
}

/// Threads that waited for work (condition variable, semaphore, I/O, sleep) all window.
fn idle_finding(
    t: &TriageInput,
    times: &BTreeMap<u32, ThreadTime>,
    stuck: &[StuckThread],
) -> Option<Finding> {
    let dump_thread = |tid: u32| {
        t.dump_end
            .and_then(|d| d.threads.iter().find(|th| th.tid == tid))
    };
    let mut idle: Vec<(&ThreadTime, String)> = Vec::new();
    for tt in times.values() {
        if stuck.iter().any(|s| s.tid == tt.tid)
            || tt.alive_ns == 0
            || (tt.idle_ns as f64) < 0.9 * tt.alive_ns as f64
        {
            continue;
        }
        let from_dump = dump_thread(tt.tid).and_then(|th| match th.state {
            State::FutexWait => Some(
                th.wait
                    .as_ref()
                    .map(|w| w.object.label().to_string())
                    .unwrap_or_else(|| "futex".into()),
            ),
            State::IoWait | State::Syscall => th.syscall.as_ref().map(|s| s.name.clone()),
            State::Sleep => Some("sleep".into()),
            _ => None,
        });
        let kind = from_dump.or_else(|| {
            tt.idle_kinds
                .iter()
                .max_by_key(|(_, v)| **v)
                .map(|(k, _)| k.clone())
        });
        idle.push((tt, kind.unwrap_or_else(|| "waiting".into())));
    }
    if idle.is_empty() {
        return None;
    }
    let mut kinds: Vec<&str> = Vec::new();
    for (_, k) in &idle {
        if !kinds.contains(&k.as_str()) {
            kinds.push(k);
        }
    }
    let n = idle.len();
    let mut details = vec![format!(
        "{} waited for work the whole window, on nothing another thread holds: idle, not stuck.",
        if n == 1 { "It" } else { "They" }
    )];
    for (tt, kind) in idle.iter().take(12) {
        let code = dump_thread(tt.tid)
            .and_then(|th| dump_code(th).0)
            .or_else(|| {
                tt.idle_code
                    .iter()
                    .max_by_key(|(_, v)| **v)
                    .map(|(k, _)| k.clone())
            });
        details.push(format!(
            "- {}: {kind}{}",
            who(&tt.name, tt.tid),
            code.map(|c| format!(" in {c}")).unwrap_or_default()
        ));
    }
    if n > 12 {
        details.push(format!("- and {} more", n - 12));
    }
    Some(Finding {
        severity: Severity::Info,
        weight: 0.0,
        title: format!(
            "{n} thread{} idle all window ({})",
            if n == 1 { "" } else { "s" },
            kinds.join(", ")
        ),
        details,
    })
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

    // Every thread's time; threads stuck on a lock its holder never releases.
    let window_ns = t
        .accounting
        .map(|a| a.window_ns)
        .filter(|w| *w > 0)
        .unwrap_or(t.duration.as_nanos() as u64)
        .max(1);
    let names = unique_names(t);
    let times = thread_times(t, window_ns, &names);
    let stuck = stuck_threads(t, &times, &names, window_ns);
    out.extend(stuck_findings(t, &stuck, &times, &names, window_ns));
    // Code sites explained by a finding about the threads waiting there.
    let mut explained: Vec<String> = stuck
        .iter()
        .filter_map(|s| s.code.as_deref().map(|c| short(c).to_string()))
        .collect();

    // Lock contention: the critical section that holds everyone up.
    if let Some(m) = t.mutex
        && let Some(di) = value(m, "delay")
    {
        let total = m.total(di);
        let lock_names: BTreeMap<u64, &str> = m
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
                    Some(l) => match lock_names.get(&l) {
                        Some(n) => format!("`{n}` ({})", crate::model::addr_text(l)),
                        None => format!("the lock at {}", crate::model::addr_text(l)),
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

    // Threads that want CPU but take turns on one lock (CPython's GIL...).
    let contention_found = out.iter().any(|f| f.title.starts_with("Lock contention"));
    let serialized = serialized_findings(t, &times, &stuck, &names, window_ns, contention_found);
    for f in &serialized {
        if let Some(site) = f.title.split('`').nth(1) {
            explained.push(site.to_string());
        }
    }
    out.extend(serialized);

    // CPU saturation / hot code: by first application frame, and by self time.
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
            let mut details = vec![format!(
                "The process used {cpu_s:.2} s of CPU in {d:.1} s ({cores:.2} cores of {}); by first application frame, **{who}** took {share:.0}% of it.",
                t.cpus
            )];
            for (w, v) in hot.iter().skip(1).take(2) {
                details.push(format!(
                    "- then {w}: {:.0}%",
                    100.0 * secs(*v) / cpu_s.max(1e-9)
                ));
            }
            if let Some((leaf, v)) = by_key(c, ci, |_| true, self_frame).into_iter().next() {
                details.push(format!(
                    "By self time (the leaf function), {leaf} took {:.0}%.",
                    100.0 * secs(v) / cpu_s.max(1e-9)
                ));
            }
            out.push(Finding {
                severity: if saturated {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                weight: cpu_s,
                title: if who.starts_with('[') {
                    format!(
                        "{}: the hottest stacks have no application frame",
                        if saturated {
                            "CPU saturated"
                        } else {
                            "Busy on CPU"
                        }
                    )
                } else {
                    format!(
                        "{}: `{}` is the hottest code",
                        if saturated {
                            "CPU saturated"
                        } else {
                            "Busy on CPU"
                        },
                        short(who)
                    )
                },
                details,
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

    // Blocked on futexes (waiter side) when no mutex culprit was found: lock waits are
    // contention, waits on condition variables, semaphores and joins are idle workers. Waits
    // at code sites a finding above explains (stuck, serialized) are left out.
    if let Some(b) = t.block
        && let Some(di) = value(b, "delay")
        && !out.iter().any(|f| f.title.starts_with("Lock contention"))
    {
        let gil_explained = out
            .iter()
            .any(|f| f.title.starts_with("Serialized") && f.title.contains("global interpreter"));
        let unexplained = |s: &Sample| {
            let c = culprit(b, s);
            let f = short(&c);
            let gil_wait = gil_explained && is_gil(f);
            !(gil_wait || explained.iter().any(|e| f == e))
        };
        let lock = |s: &Sample| unexplained(s) && report::is_lock_wait(b, s) == Some(true);
        let idle = |s: &Sample| unexplained(s) && report::is_lock_wait(b, s) == Some(false);
        let sum = |f: &dyn Fn(&Sample) -> bool| {
            b.samples
                .iter()
                .filter(|s| f(s))
                .map(|s| s.values[di])
                .sum::<i64>()
        };
        let (lock_total, idle_total) = (sum(&lock), sum(&idle));
        if secs(lock_total) >= 0.5 * d
            && let Some((w, v)) = by_culprit(b, di, lock).first()
        {
            let mut details = vec![format!(
                "{} waiting for mutexes and rwlocks in total ({:.0}% of one thread's time); most in {w}: {}. This is lock contention seen from the waiters (the mutex profile names the holders).",
                human_ns(lock_total as u64),
                100.0 * secs(lock_total) / d,
                human_ns(*v as u64)
            )];
            if idle_total > 0 {
                details.push(format!(
                    "Another {} on condition variables, semaphores and joins: idle waits, not contention.",
                    human_ns(idle_total as u64)
                ));
            }
            out.push(Finding {
                severity: Severity::Warning,
                weight: secs(lock_total),
                title: format!("Lock waits: threads block on locks, most in `{}`", short(w)),
                details,
            });
        } else if secs(idle_total) >= 0.5 * d
            && let Some((w, v)) = by_culprit(b, di, idle).first()
        {
            out.push(Finding {
                severity: Severity::Info,
                weight: secs(idle_total),
                title: format!(
                    "Idle futex waits (condition variables, semaphores, joins), most in `{}`",
                    short(w)
                ),
                details: vec![format!(
                    "{} waiting for an event in total; {w}: {}. Threads waiting for work, not lock contention{}.",
                    human_ns(idle_total as u64),
                    human_ns(*v as u64),
                    if lock_total > 0 {
                        format!(" (lock waits: {})", human_ns(lock_total as u64))
                    } else {
                        String::new()
                    }
                )],
            });
        }
    }

    let c = &t.counters;
    let lost = c.get(Counter::UserStackLost)
        + c.get(Counter::KernelStackLost)
        + c.get(Counter::StackCollision);
    let dropped = c.get(Counter::AggMapFull)
        + c.get(Counter::ThreadMapFull)
        + c.get(Counter::RunqHistFull)
        + c.get(Counter::LockTableFull)
        + c.get(Counter::UserStackMapFull);
    if lost + dropped > 0 {
        out.push(Finding {
            severity: Severity::Info,
            weight: 0.0,
            title: "Some data was lost".into(),
            details: vec![format!(
                "stacks lost: user {}, kernel {}, collisions {}; events dropped (maps full): {dropped}. Figures above are lower bounds.",
                c.get(Counter::UserStackLost), c.get(Counter::KernelStackLost), c.get(Counter::StackCollision)
            )],
        });
    }

    out.extend(goroutine_findings(t));
    out.extend(idle_finding(t, &times, &stuck));

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
        let idle = findings
            .iter()
            .find(|f| f.title.contains("idle all window"))
            .map(|f| format!("{}: waiting for work, idle, not stuck.", f.title))
            .unwrap_or_else(|| {
                "Its threads mostly waited for work (sleep, I/O readiness): that is idle, not stuck."
                    .into()
            });
        let _ = writeln!(
            s,
            "## Nothing looks wrong\n\nIn {d:.1} s the process used {cpu:.2} s of CPU, showed no stuck thread, no lock contention, no serialized threads, no run-queue starvation, no deadlock and no thread growth. {idle}\n"
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
                Label::Addr("lock".into(), 0x10),
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

    use crate::dump::model::{Dump, Frame, Syscall};
    use crate::dump::waitfor::tests::{thread, waiting};
    use crate::profiles::accounting::{Accounting, ThreadAccount};
    use crate::report::summary::tests::{LOCK_WAIT, OFFCPU, labels, stacked};

    const CPU: &[(&str, &str)] = &[("samples", "count"), ("cpu", "nanoseconds")];

    /// A thread of [`accounting`]: tid, name, on CPU, off CPU by class.
    type Row<'a> = (u32, &'a str, u64, &'a [(&'a str, u64)]);
    type OwnedRow<'a> = (u32, String, u64, Vec<(&'a str, u64)>);
    const S: u64 = 1_000_000_000;

    fn dump(threads: Vec<Thread>) -> Dump {
        Dump {
            schema_version: crate::dump::model::SCHEMA_VERSION,
            pid: 100,
            process_name: "hung".into(),
            exe: None,
            taken_at: String::new(),
            taken_at_unix_ms: 0,
            deadlocks: crate::dump::waitfor::find_deadlocks(&threads),
            summary: crate::dump::summarize(&threads),
            threads,
            notes: vec![],
            timings: Default::default(),
        }
    }

    /// A dump stack from `module:function@file:line` texts (module `app` or `libc.so.6`).
    fn frames(f: &[&str]) -> Vec<Frame> {
        f.iter()
            .map(|t| {
                let (module, rest) = t.split_once(':').unwrap();
                let (function, file, line) = match rest.split_once('@') {
                    Some((func, at)) => {
                        let (file, line) = at.rsplit_once(':').unwrap();
                        (func, Some(file.to_string()), line.parse().ok())
                    }
                    None => (rest, None, None),
                };
                Frame {
                    address: "0x1".into(),
                    function: function.into(),
                    file,
                    line,
                    inlined: false,
                    module: Some(module.into()),
                }
            })
            .collect()
    }

    /// Accounting of a window: (tid, name, on CPU, off CPU by class), every thread alive all
    /// window.
    fn accounting(window: u64, threads: &[Row]) -> Accounting {
        let threads: Vec<ThreadAccount> = threads
            .iter()
            .map(|(tid, name, oncpu, classes)| {
                let offcpu_by_class: BTreeMap<String, u64> =
                    classes.iter().map(|(k, v)| (k.to_string(), *v)).collect();
                let offcpu_ns = offcpu_by_class.values().sum();
                ThreadAccount {
                    tid: *tid,
                    name: name.to_string(),
                    alive_ns: window,
                    oncpu_ns: *oncpu,
                    cpu_ns: *oncpu,
                    offcpu_ns,
                    offcpu_by_class,
                    unaccounted_ns: window as i64 - *oncpu as i64 - offcpu_ns as i64,
                    seeded: true,
                    created: false,
                    exited: false,
                    incomplete: false,
                }
            })
            .collect();
        Accounting {
            window_ns: window,
            thread_ns: window * threads.len() as u64,
            oncpu_ns: threads.iter().map(|t| t.oncpu_ns).sum(),
            cpu_ns: threads.iter().map(|t| t.cpu_ns).sum(),
            offcpu_ns: threads.iter().map(|t| t.offcpu_ns).sum(),
            unaccounted_ns: 0,
            offcpu_recorded: true,
            threads,
        }
    }

    /// The hung service (tests/workloads/hung.c) over a 5 s window: `hung` (main) holds
    /// `stuck_lock` and works, `lock_waiter` has waited 7.66 s for it, `cond_idler` and
    /// `pipe_reader` wait for work.
    fn hung() -> (Profile, Profile, Accounting, Dump) {
        let cpu = stacked(
            ProfileKind::Cpu,
            CPU,
            vec![(
                vec![
                    "hold_and_work@/src/hung.c:56",
                    "main@/src/hung.c:80",
                    "libc:__libc_start_call_main",
                    "libc:__libc_start_main_impl",
                    "_start",
                ],
                2_500_000_000,
                labels("hung", 100, &[]),
            )],
        );
        let off = stacked(
            ProfileKind::Offcpu,
            OFFCPU,
            vec![
                (
                    LOCK_WAIT.to_vec(),
                    5 * S as i64,
                    labels(
                        "lock_waiter",
                        101,
                        &[("wait_class", "lock"), ("wait_object", "mutex")],
                    ),
                ),
                (
                    vec![
                        "libc:__futex_abstimed_wait_common",
                        "libc:___pthread_cond_wait",
                        "wait_for_work@/src/hung.c:31",
                        "cond_idler@/src/hung.c:37",
                        "libc:start_thread",
                        "libc:clone3",
                    ],
                    5 * S as i64,
                    labels(
                        "cond_idler",
                        102,
                        &[("wait_class", "futex"), ("wait_object", "condvar")],
                    ),
                ),
                (
                    vec![
                        "libc:__GI___libc_read",
                        "read_request@/src/hung.c:44",
                        "pipe_reader@/src/hung.c:50",
                        "libc:start_thread",
                        "libc:clone3",
                    ],
                    5 * S as i64,
                    labels("pipe_reader", 103, &[("wait_class", "syscall:read")]),
                ),
                (
                    vec![
                        "libc:clock_nanosleep",
                        "libc:__nanosleep",
                        "hold_and_work@/src/hung.c:61",
                        "main@/src/hung.c:80",
                    ],
                    2_500_000_000,
                    labels("hung", 100, &[("wait_class", "sleep")]),
                ),
            ],
        );
        let acct = accounting(
            5 * S,
            &[
                (100, "hung", 2_500_000_000, &[("sleep", 2_500_000_000)]),
                (101, "lock_waiter", 0, &[("futex", 5 * S)]),
                (102, "cond_idler", 0, &[("futex", 5 * S)]),
                (103, "pipe_reader", 0, &[("syscall:read", 5 * S)]),
            ],
        );
        let mut main = thread(100, "hung");
        main.main = true;
        main.state = State::Sleep;
        main.in_state_ns = Some(3_000_000);
        main.user_stack = frames(&[
            "libc.so.6:clock_nanosleep",
            "app:hold_and_work@/src/hung.c:61",
            "app:main@/src/hung.c:80",
            "libc.so.6:__libc_start_call_main",
        ]);
        let mut waiter = waiting(101, "lock_waiter", 0x4040a0, "stuck_lock", 100);
        waiter.in_state_ns = Some(7_660_000_000);
        waiter.user_stack = frames(&[
            "libc.so.6:__lll_lock_wait",
            "libc.so.6:___pthread_mutex_lock",
            "app:take_the_lock@/src/hung.c:19",
            "app:lock_waiter@/src/hung.c:25",
            "libc.so.6:start_thread",
            "libc.so.6:clone3",
        ]);
        let mut idler = thread(102, "cond_idler");
        idler.state = State::FutexWait;
        idler.in_state_ns = Some(7_700_000_000);
        idler.wait = Some(Wait {
            address: "0x404100".into(),
            op: "FUTEX_WAIT_BITSET_PRIVATE".into(),
            object: WaitObject::ConditionVariable,
            symbol: Some("idle_cv".into()),
            owner_tid: None,
        });
        let mut reader = thread(103, "pipe_reader");
        reader.state = State::Syscall;
        reader.in_state_ns = Some(7_700_000_000);
        reader.syscall = Some(Syscall {
            nr: 0,
            name: "read".into(),
        });
        (cpu, off, acct, dump(vec![main, waiter, idler, reader]))
    }

    #[test]
    fn stuck_lock_waiter_is_critical_with_its_holder() {
        let (cpu, off, acct, d) = hung();
        let t = TriageInput {
            duration: Duration::from_secs(5),
            cpus: 2,
            cpu: Some(&cpu),
            offcpu: Some(&off),
            accounting: Some(&acct),
            dump_end: Some(&d),
            ..Default::default()
        };
        let f = diagnose(&t);
        assert_eq!(
            f[0].title,
            "Stuck: thread `lock_waiter` (tid 101) has waited 7.66 s for lock `stuck_lock`, held by `hung` (tid 100)"
        );
        assert_eq!(f[0].severity, Severity::Critical);
        let details = f[0].details.join("\n");
        for want in [
            "`stuck_lock` (mutex at 0x4040a0)",
            "waits in **take_the_lock (/src/hung.c:19)** (in `pthread_mutex_lock`)",
            "7.66 s in total, longer than the 5.0 s window",
            "The holder: `hung` (tid 100), the main thread, sleep",
            "(50% of the window), most in **hold_and_work (/src/hung.c:56)**",
            "At the end of the window it was briefly in sleep in **hold_and_work (/src/hung.c:61)** (in `clock_nanosleep`)",
        ] {
            assert!(details.contains(want), "{want:?} not in\n{details}");
        }
        // Only the lock waiter is stuck; the two idle threads are idle.
        assert_eq!(f.iter().filter(|x| x.title.starts_with("Stuck")).count(), 1);
        let idle = f
            .iter()
            .find(|x| x.title.contains("idle all window"))
            .expect("idle finding");
        assert_eq!(idle.severity, Severity::Info);
        assert_eq!(
            idle.title,
            "2 threads idle all window (condition variable, read)"
        );
        assert!(
            idle.details
                .iter()
                .any(|l| l == "- `pipe_reader` (tid 103): read in read_request (/src/hung.c:44)"),
            "{idle:?}"
        );
        assert!(!nothing_wrong(&f));
        let md = render_markdown(&t, &f);
        assert!(md.starts_with("## Most likely: Stuck"), "{md}");
        assert!(!md.contains("Nothing looks wrong"), "{md}");
        assert!(
            !md.contains("start_thread") && !md.contains("__libc_start"),
            "{md}"
        );

        // Without the dump: the profile alone (one wait all window) says it is stuck.
        let t = TriageInput {
            dump_end: None,
            ..t
        };
        let f = diagnose(&t);
        assert!(
            f[0].title.starts_with("Stuck: thread `lock_waiter` (tid 101) has waited 5.00 s for a lock in `take_the_lock`"),
            "{f:?}"
        );
    }

    #[test]
    fn several_threads_stuck_on_one_lock_are_one_finding() {
        let (_, off, _, mut d) = hung();
        let mut second = waiting(104, "lock_waiter2", 0x4040a0, "stuck_lock", 100);
        second.in_state_ns = Some(6_000_000_000);
        second.user_stack = d.threads[1].user_stack.clone();
        d.threads.push(second);
        // The holder itself waits, for good, on a condition variable.
        d.threads[0].state = State::FutexWait;
        d.threads[0].in_state_ns = Some(9 * S);
        d.threads[0].wait = Some(Wait {
            address: "0x404200".into(),
            op: "FUTEX_WAIT_BITSET_PRIVATE".into(),
            object: WaitObject::ConditionVariable,
            symbol: Some("done_cv".into()),
            owner_tid: None,
        });
        d.threads[0].user_stack = frames(&[
            "libc.so.6:___pthread_cond_wait",
            "app:wait_done@/src/hung.c:70",
            "app:main@/src/hung.c:80",
        ]);
        let t = TriageInput {
            duration: Duration::from_secs(5),
            cpus: 2,
            offcpu: Some(&off),
            dump_end: Some(&d),
            ..Default::default()
        };
        let f = diagnose(&t);
        let stuck: Vec<&Finding> = f.iter().filter(|x| x.title.starts_with("Stuck")).collect();
        assert_eq!(stuck.len(), 1, "{f:?}");
        assert_eq!(
            stuck[0].title,
            "Stuck: 2 threads (`lock_waiter` (tid 101), `lock_waiter2` (tid 104)) have waited up to 7.66 s for lock `stuck_lock`, held by `hung` (tid 100)"
        );
        let details = stuck[0].details.join("\n");
        assert!(
            details.contains("It is blocked (futex wait, waiting on a condition variable `done_cv`) in **wait_done (/src/hung.c:70)** (in `pthread_cond_wait`): it holds the lock while it waits."),
            "{details}"
        );
    }

    #[test]
    fn lock_convoy_waiters_are_not_stuck() {
        // 95% of the window waiting for a lock, but in 400 short waits: contention.
        let mut off = stacked(
            ProfileKind::Offcpu,
            OFFCPU,
            vec![(
                LOCK_WAIT.to_vec(),
                9_500_000_000,
                labels(
                    "worker",
                    7,
                    &[("wait_class", "lock"), ("wait_object", "mutex")],
                ),
            )],
        );
        off.samples[0].values[0] = 400;
        let t = TriageInput {
            duration: Duration::from_secs(10),
            cpus: 2,
            offcpu: Some(&off),
            ..Default::default()
        };
        assert!(!diagnose(&t).iter().any(|x| x.title.starts_with("Stuck")));
        // The dump says it has waited 2 ms: not stuck either, whatever the profile says.
        off.samples[0].values[0] = 1;
        let mut w = waiting(7, "worker", 0x10, "big_lock", 8);
        w.in_state_ns = Some(2_000_000);
        let d = dump(vec![thread(8, "other"), w]);
        let t = TriageInput {
            duration: Duration::from_secs(10),
            cpus: 2,
            offcpu: Some(&off),
            dump_end: Some(&d),
            ..Default::default()
        };
        assert!(!diagnose(&t).iter().any(|x| x.title.starts_with("Stuck")));
    }

    /// CPython with 4 CPU-bound threads on 2 CPUs over 10 s: each on CPU 2.5 s, runnable
    /// 0.5 s, waiting for the GIL in take_gil 7 s; the main thread joins them.
    fn gil(
        threads: u32,
        oncpu: u64,
        wait: u64,
        site: &str,
        object: &str,
    ) -> (Profile, Profile, Accounting) {
        let wait_stack = |site: &str| {
            let mut v = vec![
                "libc:__futex_abstimed_wait_common",
                "libc:___pthread_cond_timedwait",
            ];
            v.push(if site == "take_gil" {
                "py:take_gil@Python/ceval_gil.c:300"
            } else {
                "worker_loop@/src/pool.c:40"
            });
            v.extend([
                "py:PyEval_RestoreThread@Python/ceval_gil.c:640",
                "libc:start_thread",
                "libc:clone3",
            ]);
            v
        };
        let mut cpu_samples = Vec::new();
        let mut off_samples = Vec::new();
        let mut acct_threads: Vec<OwnedRow> =
            vec![(200, "python3".into(), 0, vec![("futex", 10 * S)])];
        off_samples.push((
            vec![
                "libc:__futex_abstimed_wait_common",
                "libc:__new_sem_wait_slow64",
                "py:PyThread_acquire_lock_timed@Python/thread_pthread.h:500",
                "py:lock_PyThread_acquire_lock@Modules/_threadmodule.c:80",
                "py:main@Programs/python.c:15",
            ],
            10 * S as i64,
            labels(
                "python3",
                200,
                &[("wait_class", "futex"), ("wait_object", "semaphore")],
            ),
        ));
        for i in 0..threads {
            let tid = 201 + i;
            cpu_samples.push((
                vec![
                    "py:_PyEval_EvalFrameDefault@Python/generated_cases.c.h:1200",
                    "py:PyEval_EvalCode@Python/ceval.c:600",
                    "libc:start_thread",
                    "libc:clone3",
                ],
                oncpu as i64,
                labels("python3", tid, &[]),
            ));
            // CPython's drop_gil waits too (for the next holder to take it): one GIL site.
            let dropping = if site == "take_gil" { wait / 4 } else { 0 };
            off_samples.push((
                wait_stack(site),
                (wait - dropping) as i64,
                labels(
                    "python3",
                    tid,
                    &[("wait_class", "futex"), ("wait_object", object)],
                ),
            ));
            if dropping > 0 {
                off_samples.push((
                    vec![
                        "libc:__futex_abstimed_wait_common",
                        "libc:___pthread_cond_wait",
                        "py:drop_gil@Python/ceval_gil.c:250",
                        "libc:start_thread",
                    ],
                    dropping as i64,
                    labels(
                        "python3",
                        tid,
                        &[("wait_class", "futex"), ("wait_object", "condvar")],
                    ),
                ));
            }
            let runnable = 10 * S - oncpu - wait;
            off_samples.push((
                vec!["py:_PyEval_EvalFrameDefault@Python/generated_cases.c.h:1200"],
                runnable as i64,
                labels("python3", tid, &[("wait_class", "runnable")]),
            ));
            acct_threads.push((
                tid,
                "python3".into(),
                oncpu,
                vec![("futex", wait), ("runnable", runnable)],
            ));
        }
        let cpu = stacked(ProfileKind::Cpu, CPU, cpu_samples);
        let off = stacked(ProfileKind::Offcpu, OFFCPU, off_samples);
        let rows: Vec<Row> = acct_threads
            .iter()
            .map(|(a, b, c, d)| (*a, b.as_str(), *c, d.as_slice()))
            .collect();
        (cpu, off, accounting(10 * S, &rows))
    }

    #[test]
    fn threads_taking_turns_on_the_gil_are_serialized() {
        let (cpu, off, acct) = gil(4, 2_500_000_000, 7 * S, "take_gil", "condvar");
        let block = stacked(
            ProfileKind::Block,
            &[("contentions", "count"), ("delay", "nanoseconds")],
            vec![(
                vec![
                    "libc:__futex_abstimed_wait_common",
                    "libc:___pthread_cond_timedwait",
                    "py:take_gil@Python/ceval_gil.c:300",
                ],
                28 * S as i64,
                labels("python3", 201, &[("wait_object", "condvar")]),
            )],
        );
        let t = TriageInput {
            duration: Duration::from_secs(10),
            cpus: 2,
            cpu: Some(&cpu),
            offcpu: Some(&off),
            block: Some(&block),
            accounting: Some(&acct),
            ..Default::default()
        };
        let f = diagnose(&t);
        assert_eq!(
            f[0].title,
            "Serialized: 4 threads take turns on one lock in `take_gil` (CPython's global interpreter lock): together they get 1.0 of 2 CPUs"
        );
        assert_eq!(f[0].severity, Severity::Critical);
        let details = f[0].details.join("\n");
        for want in [
            "take_gil (Python/ceval_gil.c:300)",
            "`python3` (tid 201): on CPU 25%, runnable 5%, waiting in `take_gil` 70%",
            "`python3` (tid 204)",
            "global interpreter lock (GIL)",
            "_PyEval_EvalFrameDefault (Python/generated_cases.c.h:1200)",
        ] {
            assert!(details.contains(want), "{want:?} not in\n{details}");
        }
        // The main thread waiting on a semaphore is idle, not one of them.
        assert!(!details.contains("tid 200"), "{details}");
        // No root frame as the hottest code, and the GIL waits are not called idle.
        assert!(f.iter().all(|x| !x.title.contains("start_thread")), "{f:?}");
        assert!(
            f.iter()
                .all(|x| !x.title.contains("Idle futex waits") && !x.title.contains("often idle")),
            "{f:?}"
        );
        let md = render_markdown(&t, &f);
        assert!(md.starts_with("## Most likely: Serialized"), "{md}");
    }

    #[test]
    fn an_idle_thread_pool_is_not_serialized() {
        for oncpu in [100_000_000, S] {
            // Four workers waiting on a condition variable for work, 1% or 10% on CPU.
            let (cpu, off, acct) = gil(4, oncpu, 10 * S - oncpu, "worker_loop", "condvar");
            let t = TriageInput {
                duration: Duration::from_secs(10),
                cpus: 8,
                cpu: Some(&cpu),
                offcpu: Some(&off),
                accounting: Some(&acct),
                ..Default::default()
            };
            let f = diagnose(&t);
            assert!(
                !f.iter().any(|x| x.title.starts_with("Serialized")),
                "{oncpu}: {f:?}"
            );
            if oncpu == 100_000_000 {
                assert!(nothing_wrong(&f), "{f:?}");
                let md = render_markdown(&t, &f);
                assert!(md.starts_with("## Nothing looks wrong"), "{md}");
                assert!(
                    md.contains("5 threads idle all window (semaphore, condition variable)"),
                    "{md}"
                );
            }
        }
    }

    #[test]
    fn block_profile_tells_lock_waits_from_idle_waits() {
        let block = |object: &str| {
            stacked(
                ProfileKind::Block,
                &[("contentions", "count"), ("delay", "nanoseconds")],
                vec![(
                    vec![
                        "libc:__futex_abstimed_wait_common",
                        if object == "mutex" {
                            "libc:___pthread_mutex_lock"
                        } else {
                            "libc:___pthread_cond_wait"
                        },
                        "get_job@/src/pool.c:12",
                        "libc:start_thread",
                    ],
                    8 * S as i64,
                    labels("worker", 5, &[("wait_object", object)]),
                )],
            )
        };
        let (idle, lock) = (block("condvar"), block("mutex"));
        let t = TriageInput {
            duration: Duration::from_secs(10),
            cpus: 2,
            block: Some(&idle),
            ..Default::default()
        };
        let f = diagnose(&t);
        assert!(nothing_wrong(&f), "{f:?}");
        assert!(f[0].title.starts_with("Idle futex waits"), "{f:?}");
        assert!(f[0].title.contains("get_job"), "{f:?}");
        let t = TriageInput {
            block: Some(&lock),
            ..t
        };
        let f = diagnose(&t);
        assert_eq!(f[0].severity, Severity::Warning);
        assert_eq!(
            f[0].title,
            "Lock waits: threads block on locks, most in `get_job`"
        );
    }

    #[test]
    fn hottest_code_is_the_first_application_frame_never_a_root() {
        let cpu = stacked(
            ProfileKind::Cpu,
            CPU,
            vec![
                (
                    vec![
                        "libc:__memmove_avx_unaligned_erms",
                        "copy_rows@/src/db.c:88",
                        "worker@/src/db.c:120",
                        "libc:start_thread",
                        "libc:clone3",
                    ],
                    6 * S as i64,
                    labels("w", 2, &[]),
                ),
                (vec!["libc:start_thread", "libc:clone3"], S as i64, vec![]),
            ],
        );
        assert_eq!(culprit(&cpu, &cpu.samples[0]), "copy_rows (/src/db.c:88)");
        assert_eq!(culprit(&cpu, &cpu.samples[1]), "[no application frame]");
        let t = TriageInput {
            duration: Duration::from_secs(10),
            cpus: 2,
            cpu: Some(&cpu),
            ..Default::default()
        };
        let f = diagnose(&t);
        assert_eq!(f[0].title, "Busy on CPU: `copy_rows` is the hottest code");
        let details = f[0].details.join("\n");
        assert!(
            details.contains(
                "By self time (the leaf function), __memmove_avx_unaligned_erms took 86%"
            ),
            "{details}"
        );
        let roots = stacked(
            ProfileKind::Cpu,
            CPU,
            vec![(
                vec!["libc:start_thread", "libc:clone3"],
                8 * S as i64,
                vec![],
            )],
        );
        let t = TriageInput {
            cpu: Some(&roots),
            ..t
        };
        let f = diagnose(&t);
        assert_eq!(
            f[0].title,
            "Busy on CPU: the hottest stacks have no application frame"
        );
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

    #[test]
    fn goroutines_piling_up_in_one_place_are_a_finding_with_their_growth() {
        use crate::dump::goroutines::{GoroutineGroup, GoroutineSummary};
        let group = |count, state: &str, at: &str| GoroutineGroup {
            count,
            state: state.into(),
            at: at.into(),
            created_by: Some("main.main (main.go:36)".into()),
            minutes: Some(3),
        };
        let summary = |leaked| GoroutineSummary {
            pid: 7,
            total: leaked + 6,
            by_state: vec![("chan receive".into(), leaked), ("select".into(), 6)],
            groups: vec![
                group(leaked, "chan receive", "main.leakedReceiver (main.go:18)"),
                group(5, "select", "main.worker (main.go:50)"),
                group(1, "running", "(running: stack not read)"),
            ],
            deadlocks: vec![],
        };
        let (start, end) = (summary(90), summary(100));
        let t = TriageInput {
            duration: Duration::from_secs(10),
            cpus: 2,
            goroutines_start: Some(&start),
            goroutines: Some(&end),
            ..Default::default()
        };
        let f = goroutine_findings(&t);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].severity, Severity::Warning);
        assert_eq!(
            f[0].title,
            "100 goroutines in chan receive at main.leakedReceiver (+10 in the window)"
        );
        let text = f[0].details.join("\n");
        assert!(
            text.contains("created by `main.main (main.go:36)`"),
            "{text}"
        );
        assert!(
            text.contains("90 were there when the window opened"),
            "{text}"
        );
        assert!(text.contains("at least 3 minutes"), "{text}");
        // A small group that does not grow is no finding.
        let small = summary(20);
        let t = TriageInput {
            goroutines_start: Some(&small),
            goroutines: Some(&small),
            ..t
        };
        assert!(goroutine_findings(&t).is_empty());
        // A deadlock of goroutines is critical whatever the counts.
        let mut locked = small.clone();
        locked.deadlocks = vec![
            "goroutine 7 waits at main.f (main.go:3) for the sync.Mutex \
             0xc000010000, which goroutine 8 holds; goroutine 8 waits ..."
                .into(),
        ];
        let t = TriageInput {
            goroutines_start: Some(&locked),
            goroutines: Some(&locked),
            ..t
        };
        let f = goroutine_findings(&t);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].severity, Severity::Critical);
        assert_eq!(f[0].title, "Deadlock of goroutines");
        assert!(f[0].details[0].starts_with("goroutine 7 waits"), "{f:?}");
        assert!(f[0].details[1].contains("when the window opened"), "{f:?}");
    }
}
