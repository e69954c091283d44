//! The human summary printed at the end of a capture: what was captured, what was lost, and
//! where the time went. Pure text from plain data.

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf, time::Duration};

use stallscope_common::Counter;

use crate::{
    export::top,
    kernel::Counters,
    model::{Label, Line, Profile, ProfileKind, Sample},
    options::Rates,
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
    pub rates: Rates,
    pub cpus: usize,
    pub counters: Counters,
    pub profiles: Vec<ProfileKind>,
    pub runq: Option<RunqStats>,
    /// Every thread's time in the window (`None`: the threads could not be read).
    pub accounting: Option<crate::profiles::accounting::Accounting>,
    /// The target's container and pod (empty outside one).
    pub identity: crate::identity::Identity,
    /// A group's window (`--children`, `--cgroup`, `--container`, `--pod`): its processes.
    pub group: Option<GroupFacts>,
}

/// The processes of a group's window.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupFacts {
    /// What was asked for (`pid 42 and its descendants`, `pod shop/checkout`).
    pub selector: String,
    /// Every process recorded, in pid order.
    pub members: Vec<crate::targets::Member>,
}

/// The `wait_class` label of a sample (off-CPU profiles).
pub fn wait_class_of(s: &Sample) -> Option<String> {
    label_of(s, "wait_class")
}

/// The string (or address) label `key` of a sample, as written out.
pub fn label_of(s: &Sample, key: &str) -> Option<String> {
    s.labels.iter().find_map(|l| match l {
        Label::Str(k, v) if k == key => Some(v.clone()),
        Label::Addr(k, a) if k == key => Some(crate::model::addr_text(*a)),
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

/// File names (basenames) of the C runtime, the loader and the vDSO: their frames are never
/// the code worth naming.
const SYSTEM_MODULES: &[&str] = &[
    "libc.so",
    "libc-",
    "libpthread",
    "ld-linux",
    "ld-",
    "libm.so",
    "libm-",
    "libgcc_s",
    "libstdc++",
    "libdl",
    "librt",
    "[vdso]",
    "linux-vdso",
];

/// Function name prefixes of C library and language runtime internals (lock, futex, syscall
/// wrappers; the Go runtime; Rust's std synchronization and thread start; CPython's
/// condition/mutex wrappers), also when linked statically.
const RUNTIME_PREFIXES: &[&str] = &[
    "__lll_",
    "lll_",
    "__futex",
    "futex_",
    "___pthread_",
    "__pthread_",
    "pthread_",
    "__GI_",
    "syscall",
    "__syscall",
    "__internal_syscall",
    "__libc_",
    "__new_sem_",
    "__sem_",
    "sem_",
    "do_futex_wait",
    "_dl_",
    "__restore_rt",
    "runtime.",
    "std::sys::",
    "std::sys_common::",
    "std::sync::",
    "std::thread::",
    "std::rt::",
    "std::panicking::",
    "std::panic::",
    "core::ops::function::",
    "__rust_begin_short_backtrace",
    "parking_lot_core::",
    "PyCOND_",
    "PyMUTEX_",
];

/// Exact names of blocking C library calls (and their aliases).
const RUNTIME_NAMES: &[&str] = &[
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "__epoll_wait",
    "poll",
    "__poll",
    "ppoll",
    "__ppoll",
    "select",
    "__select",
    "pselect",
    "__pselect",
    "nanosleep",
    "__nanosleep",
    "clock_nanosleep",
    "__clock_nanosleep",
    "usleep",
    "sleep",
    "read",
    "__read",
    "write",
    "__write",
    "pread64",
    "__pread64",
    "pwrite64",
    "readv",
    "writev",
    "recv",
    "__recv",
    "recvfrom",
    "__recvfrom",
    "recvmsg",
    "__recvmsg",
    "send",
    "sendto",
    "sendmsg",
    "accept",
    "accept4",
    "connect",
    "wait",
    "wait4",
    "waitpid",
    "__waitpid",
    "pause",
    "sigwait",
    "sigtimedwait",
    "__sigtimedwait",
    "sigwaitinfo",
    "sched_yield",
    "__sched_yield",
    "futex",
];

/// The roots of Go stacks; the C runtime's are `dump::stack::RUNTIME_ROOT_FUNCTIONS`. Never
/// named as culprits (`main` is).
const GO_ROOT_NAMES: &[&str] = &["runtime.goexit", "runtime.mstart", "runtime.rt0_go"];

/// A symbol without its version (`read@GLIBC_2.2.5`).
fn unversioned(name: &str) -> &str {
    name.split('@').next().unwrap_or(name)
}

/// Whether a mapping file (path or basename) is the C runtime, the loader or the vDSO.
pub fn is_system_module(file: &str) -> bool {
    let base = file.rsplit('/').next().unwrap_or(file);
    SYSTEM_MODULES.iter().any(|p| base.starts_with(p)) || base.starts_with("[kernel")
}

/// Whether a function is a C library or runtime internal (lock and futex waits, syscall
/// wrappers, blocking calls).
pub fn is_runtime_function(name: &str) -> bool {
    let n = unversioned(name);
    RUNTIME_PREFIXES.iter().any(|p| n.starts_with(p))
        || RUNTIME_NAMES.contains(&n)
        // PLT stubs: named `x@plt`, or after the symbol before `.plt` (`_init`) when the file
        // has no names for them.
        || n.ends_with("@plt")
        || matches!(n, "_init" | "_fini")
}

/// Whether a function is the root of a thread's stack (`start_thread`, `clone3`, `_start`,
/// `__libc_start_main*`...).
pub fn is_root_function(name: &str) -> bool {
    let n = unversioned(name);
    crate::dump::stack::RUNTIME_ROOT_FUNCTIONS.contains(&n)
        || GO_ROOT_NAMES.contains(&n)
        || n.starts_with("__libc_start_main")
}

/// Whether a frame is the program's own code: not in a system library, not a runtime
/// internal, not a stack root.
pub fn is_app_frame(function: &str, module: Option<&str>) -> bool {
    !module.is_some_and(is_system_module)
        && !is_runtime_function(function)
        && !is_root_function(function)
}

/// The user-space frames of a sample, innermost first (inlined frames expanded), each with
/// whether it is application code.
pub fn user_frames<'a>(p: &'a Profile, s: &Sample) -> Vec<(&'a Line, bool)> {
    let mut out = Vec::new();
    for &li in &s.locations {
        let Some(loc) = p.locations.get(li) else {
            continue;
        };
        if loc.kernel {
            continue;
        }
        let module = loc
            .mapping
            .and_then(|m| p.mappings.get(m))
            .map(|m| m.file.as_str());
        for line in &loc.lines {
            out.push((line, is_app_frame(&line.function, module)));
        }
    }
    out
}

/// The innermost application frame of a sample (see [`is_app_frame`]).
pub fn first_app_frame<'a>(p: &'a Profile, s: &Sample) -> Option<&'a Line> {
    user_frames(p, s)
        .into_iter()
        .find_map(|(l, app)| app.then_some(l))
}

/// The innermost user-space frame of a sample: where its self time goes.
pub fn leaf_frame<'a>(p: &'a Profile, s: &Sample) -> Option<&'a Line> {
    user_frames(p, s).into_iter().next().map(|(l, _)| l)
}

/// `function (file:line)`, with the file's base name when `short`.
pub fn frame_text(l: &Line, short: bool) -> String {
    located(&l.function, l.file.as_deref(), l.line, short)
}

fn located(function: &str, file: Option<&str>, line: Option<u32>, short: bool) -> String {
    match (file, line) {
        (Some(f), Some(n)) => {
            let f = if short {
                f.rsplit('/').next().unwrap_or(f)
            } else {
                f
            };
            format!("{function} ({f}:{n})")
        }
        _ => function.to_string(),
    }
}

/// The innermost application frame of a thread dump's stack (innermost first).
pub fn dump_first_app_frame(
    stack: &[crate::dump::model::Frame],
) -> Option<&crate::dump::model::Frame> {
    stack
        .iter()
        .find(|f| is_app_frame(&f.function, f.module.as_deref()))
}

/// `function (file:line)` of a dump frame.
pub fn dump_frame_text(f: &crate::dump::model::Frame, short: bool) -> String {
    located(&f.function, f.file.as_deref(), f.line, short)
}

/// The library function a program called into, named as documented (`___pthread_mutex_lock`,
/// `__GI___libc_read` → `pthread_mutex_lock`, `read`).
pub fn entry_name(function: &str) -> &str {
    let n = unversioned(function);
    let n = n.strip_prefix("__GI_").unwrap_or(n);
    let n = n.trim_start_matches('_');
    n.strip_prefix("libc_").unwrap_or(n)
}

/// What a sample without user frames stands for: a new thread that had not run yet, or a
/// stack the kernel did not give.
pub fn no_user_stack(s: &Sample) -> &'static str {
    let not_started = s.labels.iter().any(|l| {
        matches!(l, Label::Str(k, v) if k == "thread_state" && v == crate::profiles::NOT_STARTED)
    });
    if not_started {
        "[new thread, before its first run]"
    } else {
        "[no user stack]"
    }
}

/// A short description of a sample's stack: its application frames from the innermost one
/// (with its file:line), skipping C library and runtime internals and stack roots, then the
/// library function it is in (`take_the_lock (hung.c:19) <- lock_waiter, in
/// pthread_mutex_lock`). `depth` application frames at most.
pub fn stack_brief(p: &Profile, s: &Sample, depth: usize) -> String {
    let frames = user_frames(p, s);
    if frames.is_empty() {
        return no_user_stack(s).into();
    }
    let Some(first) = frames.iter().position(|(_, app)| *app) else {
        let names: Vec<&str> = frames
            .iter()
            .map(|(l, _)| l.function.as_str())
            .filter(|f| !is_root_function(f))
            .take(depth)
            .collect();
        return if names.is_empty() {
            "[no application frame]".into()
        } else {
            format!("[no application frame] {}", names.join(" <- "))
        };
    };
    let names: Vec<String> = frames[first..]
        .iter()
        .filter(|(_, app)| *app)
        .take(depth.max(1))
        .enumerate()
        .map(|(i, (l, _))| {
            if i == 0 {
                frame_text(l, true)
            } else {
                l.function.clone()
            }
        })
        .collect();
    let mut out = names.join(" <- ");
    if first > 0 {
        let _ = write!(out, ", in {}", entry_name(&frames[first - 1].0.function));
    }
    out
}

/// `[name]` for one thread, `[4 threads: a, b, c, ...]` for several (from the `thread` and
/// `tid` labels of the samples); empty without thread labels.
pub fn thread_tag<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> String {
    let mut seen: Vec<(String, String)> = Vec::new();
    for s in samples {
        let Some(name) = label_of(s, "thread") else {
            continue;
        };
        let key = label_of(s, "tid").unwrap_or_else(|| name.clone());
        if !seen.iter().any(|(k, _)| *k == key) {
            seen.push((key, name));
        }
    }
    match seen.len() {
        0 => String::new(),
        1 => format!("[{}]", seen[0].1),
        n => {
            let mut names: Vec<&str> = seen.iter().take(3).map(|(_, v)| v.as_str()).collect();
            if n > 3 {
                names.push("...");
            }
            format!("[{n} threads: {}]", names.join(", "))
        }
    }
}

/// The top stacks of a profile by one value column, as [`stack_brief`]s (samples with the same
/// brief added together), each with its [`thread_tag`]; optionally restricted to samples for
/// which `filter` holds.
fn top_briefs(
    p: &Profile,
    vi: usize,
    n: usize,
    filter: impl Fn(&Sample) -> bool,
) -> Vec<(i64, String, String)> {
    let mut groups: Vec<(String, i64, Vec<&Sample>)> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for s in p.samples.iter().filter(|s| filter(s)) {
        let v = s.values[vi];
        if v <= 0 {
            continue;
        }
        let brief = stack_brief(p, s, 4);
        let i = *index.entry(brief.clone()).or_insert_with(|| {
            groups.push((brief, 0, Vec::new()));
            groups.len() - 1
        });
        groups[i].1 += v;
        groups[i].2.push(s);
    }
    for g in &mut groups {
        g.2.sort_by_key(|s| std::cmp::Reverse(s.values[vi]));
    }
    groups.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    groups.truncate(n);
    groups
        .into_iter()
        .map(|(brief, v, samples)| (v, brief, thread_tag(samples)))
        .collect()
}

fn brief_row(s: &mut String, indent: &str, v: i64, brief: &str, tag: &str) {
    let _ = write!(s, "{indent}{:>10}  {brief}", human_ns(v.max(0) as u64));
    if !tag.is_empty() {
        let _ = write!(s, "  {tag}");
    }
    s.push('\n');
}

/// Whether a futex wait (off-CPU or block sample) waits for a lock (`Some(true)`: contention),
/// for an event (`Some(false)`: condition variable, semaphore, join: idle), or is no futex wait.
pub fn is_lock_wait(p: &Profile, s: &Sample) -> Option<bool> {
    if crate::profiles::locks::is_goroutine_event(s) {
        return None;
    }
    match wait_class_of(s).as_deref() {
        Some("lock") => return Some(true),
        Some("futex") | None => {}
        Some(_) => return None,
    }
    match label_of(s, "wait_object").as_deref() {
        Some("mutex" | "rwlock" | "pi_mutex") => Some(true),
        Some(_) => Some(false),
        None if p.kind == ProfileKind::Block || wait_class_of(s).is_some() => {
            Some(crate::profiles::locks::wait_object_of(p, s).is_lock())
        }
        None => None,
    }
}

/// The value column a profile is summarized by (its default sample type, else the last).
pub fn main_value_index(p: &Profile) -> usize {
    p.default_sample_type
        .as_deref()
        .and_then(|t| p.value_index(t))
        .unwrap_or(p.sample_types.len().saturating_sub(1))
}

/// What to do when events found an aggregation map full.
fn map_full_hint(c: &Counters) -> Option<String> {
    (c.get(Counter::AggMapFull) > 0).then(|| {
        format!(
            "{} events found their aggregation map full and were dropped: raise --map-entries \
             (distinct stack, wait class and thread keys per profile and window; default {})",
            c.get(Counter::AggMapFull),
            stallscope_common::AGG_MAP_ENTRIES
        )
    })
}

/// `losses: ...`: every counter of something missing from the profiles (`Dropped` and
/// `StackLost` in `stallscope_common::Counter`), from the one list of counters, so a new one
/// is never left out: the non-zero ones by name, else `none`.
pub fn losses_line(c: &Counters) -> String {
    use stallscope_common::CounterGroup;
    let losses: Vec<Counter> = Counter::ALL
        .into_iter()
        .filter(|k| {
            matches!(
                k.info().group,
                CounterGroup::Dropped | CounterGroup::StackLost
            )
        })
        .collect();
    let named: Vec<String> = losses
        .iter()
        .filter(|k| c.get(**k) > 0)
        .map(|k| format!("{} {}", k.info().name, c.get(*k)))
        .collect();
    if named.is_empty() {
        format!(
            "losses: none (all {} counters of dropped events and lost stacks are 0)",
            losses.len()
        )
    } else {
        format!(
            "losses: {} (the other {} counters of dropped events and lost stacks are 0)",
            named.join(", "),
            losses.len() - named.len()
        )
    }
}

/// Accounting lines, also stored as pprof comments so the losses travel with the profile.
pub fn counter_comments(c: &Counters) -> Vec<String> {
    let mut v = vec![
        format!(
            "cpu samples taken: {} (all processes), for the target: {}",
            c.get(Counter::CpuSamples),
            c.get(Counter::CpuSamplesTarget)
        ),
        losses_line(c),
    ];
    if c.get(Counter::OffcpuSwitchOut) > 0 || c.get(Counter::BlockEventsSeen) > 0 {
        v.push(format!(
            "off-cpu: {} switch-outs, {} intervals recorded, {} left out by --offcpu-rate sampling, {} below --offcpu-min; thread table full {}; run-queue histogram full {}; first-seen table full {}; exit table full {}; switches missed {}; program runs skipped by the kernel {}",
            c.get(Counter::OffcpuSwitchOut), c.get(Counter::OffcpuRecorded), c.get(Counter::OffcpuSampledOut), c.get(Counter::OffcpuBelowMin), c.get(Counter::ThreadMapFull), c.get(Counter::RunqHistFull), c.get(Counter::FirstSeenFull), c.get(Counter::ExitedFull), c.get(Counter::SwitchMissed), c.get(Counter::ProgRunsSkipped)
        ));
        v.push(format!(
            "block: {} futex waits seen, {} recorded after in-kernel rate sampling; {} goroutine waits seen, {} recorded; goroutine park table full {}",
            c.get(Counter::BlockEventsSeen),
            c.get(Counter::BlockEventsRecorded),
            c.get(Counter::GoBlockEventsSeen),
            c.get(Counter::GoBlockEventsRecorded),
            c.get(Counter::GoParkedFull)
        ));
    }
    v.extend(map_full_hint(c));
    // Every non-zero counter by its one name (stallscope_common::Counter), as summary.json has them.
    let named: Vec<String> = c
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{}={n}", k.info().name))
        .collect();
    if !named.is_empty() {
        v.push(format!("counters: {}", named.join(" ")));
    }
    v
}

/// Where the target runs, when that is a container: `container 3f1c9a7b2e4d (containerd), pod
/// shop/checkout-7f9c, pid 7 in its PID namespace`.
fn identity_text(id: &crate::identity::Identity) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(c) = &id.container {
        let short = &c[..c.len().min(12)];
        parts.push(match id.runtime {
            Some(r) => format!("container {short} ({r})"),
            None => format!("container {short}"),
        });
    }
    match (&id.namespace, &id.pod, &id.pod_uid) {
        (Some(ns), Some(pod), _) => parts.push(format!("pod {ns}/{pod}")),
        (_, _, Some(uid)) => parts.push(format!("pod uid {uid}")),
        _ => {}
    }
    if let Some(p) = id.ns_pid {
        parts.push(format!("pid {p} in its PID namespace"));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// A group's processes in one line: how many, how many came during the window and left, and
/// each by pid and name (the first 12).
fn group_line(g: &GroupFacts) -> String {
    use crate::targets::Joined;
    let forked = g
        .members
        .iter()
        .filter(|m| m.joined == Joined::Forked)
        .count();
    let scanned = g
        .members
        .iter()
        .filter(|m| m.joined == Joined::Scanned)
        .count();
    let exited = g.members.iter().filter(|m| m.exited).count();
    let mut line = format!("processes: {}", g.members.len());
    let mut notes = Vec::new();
    if forked > 0 {
        notes.push(format!("{forked} forked in the window"));
    }
    if scanned > 0 {
        notes.push(format!("{scanned} joined in the window"));
    }
    if exited > 0 {
        notes.push(format!("{exited} exited"));
    }
    if !notes.is_empty() {
        line.push_str(&format!(" ({})", notes.join(", ")));
    }
    let shown: Vec<String> = g
        .members
        .iter()
        .take(12)
        .map(|m| format!("{} {}", m.pid, m.comm))
        .collect();
    line.push_str(": ");
    line.push_str(&shown.join(", "));
    if g.members.len() > 12 {
        line.push_str(&format!(
            ", and {} more (summary.json)",
            g.members.len() - 12
        ));
    }
    line
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The mutex profile's note on the futex words left out of it (condition variables,
/// semaphores, joins: see `attach::prepare_mutex`) and how many wake-ups it left out.
fn left_out_note(p: &Profile) -> Option<(i64, &str)> {
    let c = p
        .comments
        .iter()
        .find(|c| c.contains("non-lock futex words"))?;
    let n = c.split_whitespace().next()?.parse().ok()?;
    Some((n, c.as_str()))
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
            let (mut lock, mut idle) = (0i64, 0i64);
            let mut by_reason: BTreeMap<String, i64> = BTreeMap::new();
            for smp in &p.samples {
                if let Some(r) = label_of(smp, "wait_reason") {
                    *by_reason.entry(r).or_default() += smp.values[vi];
                    continue;
                }
                match is_lock_wait(p, smp) {
                    Some(true) => lock += smp.values[vi],
                    Some(false) => idle += smp.values[vi],
                    None => {}
                }
            }
            let goroutines: i64 = by_reason.values().sum();
            let _ = writeln!(
                s,
                "Block profile: {n} contentions (estimated), {} blocked on futexes: {} waiting for locks (contention), {} on condition variables, semaphores, joins (idle waits)",
                human_ns((total - goroutines).max(0) as u64),
                human_ns(lock.max(0) as u64),
                human_ns(idle.max(0) as u64)
            );
            if !by_reason.is_empty() {
                let mut reasons: Vec<(String, i64)> = by_reason.into_iter().collect();
                reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
                let list: Vec<String> = reasons
                    .iter()
                    .map(|(r, v)| format!("{r} {}", human_ns(*v as u64)))
                    .collect();
                let _ = writeln!(
                    s,
                    "  goroutines blocked (Go's block profile, by wait reason): {} in all: {}",
                    human_ns(goroutines as u64),
                    list.join(", ")
                );
            }
            if let Some(c) = p
                .comments
                .iter()
                .find(|c| c.contains("of the Go runtime parking"))
            {
                let _ = writeln!(s, "  {c}");
            }
            let rows = top_briefs(p, vi, 3, crate::profiles::locks::is_goroutine_event);
            if !rows.is_empty() {
                let _ = writeln!(s, "  top goroutine waits:");
                for (v, brief, tag) in rows {
                    brief_row(&mut s, "    ", v, &brief, &tag);
                }
            }
            for (want, head) in [
                (true, "top lock waits (contention):"),
                (
                    false,
                    "top idle futex waits (condition variables, semaphores, joins):",
                ),
            ] {
                let rows = top_briefs(p, vi, 3, |x| is_lock_wait(p, x) == Some(want));
                if rows.is_empty() {
                    continue;
                }
                let _ = writeln!(s, "  {head}");
                for (v, brief, tag) in rows {
                    brief_row(&mut s, "    ", v, &brief, &tag);
                }
            }
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
            if let Some(c) = p
                .comments
                .iter()
                .find(|c| c.contains("of the Go runtime parking"))
            {
                let _ = writeln!(s, "  {c}");
            }
            if let Some((removed, note)) = left_out_note(p).filter(|(n, _)| *n > 0) {
                if p.samples.is_empty() || total == 0 {
                    let _ = writeln!(
                        s,
                        "  no lock contention in this window: {note}. {removed} wake-ups with waiters were recorded, but their waiters waited for an event (pthread_cond_wait, sem_wait, pthread_join), not for a lock holder: they are not lock contention"
                    );
                    return s;
                }
                let _ = writeln!(
                    s,
                    "  {note}: their waiters waited for an event, not for a lock holder"
                );
            }
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
    if p.kind == ProfileKind::Cpu {
        let _ = writeln!(
            s,
            "  hottest by first application frame (libc and runtime internals skipped):"
        );
        for (v, brief, tag) in by_app_frame(p, vi, 5) {
            let _ = writeln!(
                s,
                "    {:>10}  {:5.1}%  {brief}{}",
                human_ns(v.max(0) as u64),
                100.0 * v as f64 / total.max(1) as f64,
                if tag.is_empty() {
                    String::new()
                } else {
                    format!("  {tag}")
                }
            );
        }
    }
    s
}

/// A profile's value by the first application frame of its samples (`function (file:line)`,
/// else `[no application frame] in leaf`), largest first, each with its thread tag.
fn by_app_frame(p: &Profile, vi: usize, n: usize) -> Vec<(i64, String, String)> {
    let mut groups: BTreeMap<String, (i64, Vec<&Sample>)> = BTreeMap::new();
    for smp in &p.samples {
        let v = smp.values[vi];
        if v <= 0 {
            continue;
        }
        let key = match first_app_frame(p, smp) {
            Some(l) => frame_text(l, true),
            None => {
                let frames = user_frames(p, smp);
                match frames.iter().find(|(l, _)| !is_root_function(&l.function)) {
                    Some((l, _)) => format!("[no application frame] in {}", l.function),
                    None if frames.is_empty() => no_user_stack(smp).into(),
                    None => "[no application frame]".into(),
                }
            }
        };
        let g = groups.entry(key).or_default();
        g.0 += v;
        g.1.push(smp);
    }
    let mut v: Vec<(i64, String, String)> = groups
        .into_iter()
        .map(|(k, (v, mut samples))| {
            samples.sort_by_key(|s| std::cmp::Reverse(s.values[vi]));
            (v, k, thread_tag(samples))
        })
        .collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    v.truncate(n);
    v
}

/// The wait class a sample is summarized under (`other` when it has none).
fn class_key(s: &Sample) -> String {
    wait_class_of(s).unwrap_or_else(|| "other".into())
}

fn offcpu_by_class(s: &mut String, p: &Profile, vi: usize, total: i64) {
    let mut by_class: BTreeMap<String, i64> = BTreeMap::new();
    for smp in &p.samples {
        *by_class.entry(class_key(smp)).or_default() += smp.values[vi];
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
    if classes.iter().any(|(c, _)| c == "lock" || c == "futex") {
        let _ = writeln!(
            s,
            "  (lock: waiting for a mutex, rwlock or PI mutex another thread holds: contention; futex: other futex waits, condition variables, semaphores, joins: usually idle workers waiting for work)"
        );
    }
    for (class, _) in classes.iter().take(6) {
        let head = match class.as_str() {
            "lock" => "top lock-wait stacks (contention):".to_string(),
            "futex" => "top idle futex waits (condition variables, semaphores, joins):".to_string(),
            c => format!("top {c} stacks:"),
        };
        let _ = writeln!(s, "  {head}");
        for (v, brief, tag) in top_briefs(p, vi, 3, |x| class_key(x) == *class) {
            brief_row(s, "    ", v, &brief, &tag);
        }
    }
}

/// "Most contended locks": each lock with its symbol, delay, and top holder and waiter stacks.
pub fn locks_section(
    mutex: &Profile,
    waiters: &Profile,
    names: &std::collections::HashMap<u64, String>,
    n: usize,
) -> String {
    let mut s = String::new();
    let top = crate::profiles::locks::top_locks(mutex, waiters, names, n, 3);
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
            crate::model::addr_text(l.lock),
            human_ns(l.delay_ns.max(0) as u64),
            l.contentions
        );
        for (v, i) in &l.holders {
            let smp = &mutex.samples[*i];
            brief_row(
                &mut s,
                "      held by   ",
                *v,
                &stack_brief(mutex, smp, 4),
                &thread_tag([smp]),
            );
        }
        for (v, i) in &l.waiters {
            let smp = &waiters.samples[*i];
            brief_row(
                &mut s,
                "      waited in ",
                *v,
                &stack_brief(waiters, smp, 4),
                &thread_tag([smp]),
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
            "{} exited after {} of {}; writing what was collected",
            if f.group.is_some() {
                "every process"
            } else {
                "the process"
            },
            secs(f.elapsed),
            secs(f.requested)
        ),
    };
    match &f.group {
        Some(g) => {
            let _ = writeln!(s, "stallscope: {}: {end}", g.selector);
            let _ = writeln!(s, "{}", group_line(g));
        }
        None => {
            let _ = writeln!(s, "stallscope: pid {} ({}): {end}", f.pid, f.comm);
        }
    }
    if let Some(where_) = identity_text(&f.identity) {
        let _ = writeln!(s, "target: {where_}");
    }
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
            c.get(Counter::CpuSamples),
            f.rates.frequency_hz,
            f.cpus,
            c.get(Counter::CpuSamplesTarget),
        );
    }
    if f.profiles.contains(&ProfileKind::Offcpu) {
        let _ = writeln!(
            s,
            "accounting: {} switch-outs of target threads, {} off-CPU intervals recorded (weighted), {} left out by --offcpu-rate sampling, {} shorter than --offcpu-min",
            c.get(Counter::OffcpuSwitchOut),
            c.get(Counter::OffcpuRecorded),
            c.get(Counter::OffcpuSampledOut),
            c.get(Counter::OffcpuBelowMin)
        );
    }
    if f.profiles.contains(&ProfileKind::Mutex) {
        let _ = writeln!(
            s,
            "accounting: {} lock releases with waiters, {} recorded (mutex fraction {}); lock table full {}",
            c.get(Counter::MutexEventsSeen),
            c.get(Counter::MutexEventsRecorded),
            f.rates.mutex_fraction,
            c.get(Counter::LockTableFull)
        );
    }
    if c.get(Counter::UserStackWalked) + c.get(Counter::UserStackCacheHit) > 0 {
        let _ = writeln!(
            s,
            "accounting: {} user stacks walked, {} taken from the walk cache",
            c.get(Counter::UserStackWalked),
            c.get(Counter::UserStackCacheHit)
        );
    }
    if f.profiles.contains(&ProfileKind::Block) {
        let _ = writeln!(
            s,
            "accounting: {} futex waits seen, {} recorded (block rate {})",
            c.get(Counter::BlockEventsSeen),
            c.get(Counter::BlockEventsRecorded),
            human_ns(f.rates.block_rate_ns)
        );
        if c.get(Counter::GoBlockEventsSeen) > 0 || c.get(Counter::GoParkedFull) > 0 {
            let _ = writeln!(
                s,
                "accounting: {} goroutine waits seen, {} recorded (block rate {}); goroutine park table full {}",
                c.get(Counter::GoBlockEventsSeen),
                c.get(Counter::GoBlockEventsRecorded),
                human_ns(f.rates.block_rate_ns),
                c.get(Counter::GoParkedFull)
            );
        }
    }
    let _ = writeln!(s, "{}", losses_line(c));
    if let Some(hint) = map_full_hint(c) {
        let _ = writeln!(s, "{hint}");
    }
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
pub(crate) mod tests {
    use super::*;
    use crate::model::{Location, Mapping, ValueType};
    use std::time::SystemTime;

    #[test]
    fn a_full_aggregation_map_says_what_to_raise() {
        let mut c = Counters::default();
        assert!(
            counter_comments(&c)
                .iter()
                .all(|l| !l.contains("--map-entries"))
        );
        c.set(Counter::AggMapFull, 17);
        let hint: Vec<String> = counter_comments(&c)
            .into_iter()
            .filter(|l| l.contains("raise --map-entries"))
            .collect();
        assert_eq!(hint.len(), 1, "{hint:?}");
        assert!(hint[0].starts_with("17 events found"), "{}", hint[0]);
        // And every non-zero counter travels by name.
        c.set(Counter::SwitchMissed, 2);
        let comments = counter_comments(&c);
        assert_eq!(
            comments.last().map(String::as_str),
            Some("counters: agg_map_full=17 switch_missed=2")
        );
    }

    /// A profile from stacks written leaf first: `name@/src/f.c:19` is in the program,
    /// `libc:name` in libc.so.6, `py:name@file:line` in libpython; the last value of each
    /// sample is `v`, the others 1.
    pub(crate) fn stacked(
        kind: ProfileKind,
        types: &[(&str, &str)],
        samples: Vec<(Vec<&str>, i64, Vec<Label>)>,
    ) -> Profile {
        let mut locations: Vec<Location> = Vec::new();
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        let samples = samples
            .into_iter()
            .map(|(frames, v, labels)| {
                let locs = frames
                    .iter()
                    .map(|f| {
                        *index.entry(f.to_string()).or_insert_with(|| {
                            let (mapping, rest) = match f.split_once(':') {
                                Some(("libc", r)) => (1, r),
                                Some(("py", r)) => (2, r),
                                _ => (0, *f),
                            };
                            let (function, file, line) = match rest.split_once('@') {
                                Some((func, at)) => {
                                    let (file, line) = at.rsplit_once(':').unwrap();
                                    (func, Some(file.to_string()), line.parse().ok())
                                }
                                None => (rest, None, None),
                            };
                            locations.push(Location {
                                address: 0x1000 + locations.len() as u64,
                                mapping: Some(mapping),
                                lines: vec![Line {
                                    function: function.into(),
                                    system_name: None,
                                    file,
                                    line,
                                }],
                                kernel: false,
                            });
                            locations.len() - 1
                        })
                    })
                    .collect();
                let mut values = vec![1; types.len()];
                *values.last_mut().unwrap() = v;
                Sample {
                    locations: locs,
                    values,
                    labels,
                }
            })
            .collect();
        let mapping = |f: &str| Mapping {
            file: f.into(),
            ..Default::default()
        };
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
            mappings: vec![
                mapping("/usr/bin/app"),
                mapping("/usr/lib/x86_64-linux-gnu/libc.so.6"),
                mapping("/usr/lib/libpython3.12.so.1.0"),
            ],
            comments: vec![],
        }
    }

    /// `thread`, `tid` and extra string labels.
    pub(crate) fn labels(thread: &str, tid: u32, extra: &[(&str, &str)]) -> Vec<Label> {
        let mut v = vec![
            Label::Str("thread".into(), thread.into()),
            Label::Str("tid".into(), tid.to_string()),
        ];
        v.extend(
            extra
                .iter()
                .map(|(k, x)| Label::Str(k.to_string(), x.to_string())),
        );
        v
    }

    pub(crate) const OFFCPU: &[(&str, &str)] = &[("events", "count"), ("off-cpu", "nanoseconds")];

    /// The hung service's lock waiter, leaf first.
    pub(crate) const LOCK_WAIT: &[&str] = &[
        "libc:futex_wait",
        "libc:__lll_lock_wait",
        "libc:___pthread_mutex_lock",
        "take_the_lock@/src/hung.c:19",
        "lock_waiter@/src/hung.c:25",
        "libc:start_thread",
        "libc:clone3",
    ];

    #[test]
    fn frames_that_matter_skip_runtime_internals_and_roots() {
        assert!(is_runtime_function("__GI___lll_lock_wait"));
        assert!(is_runtime_function("read@GLIBC_2.2.5"));
        assert!(!is_runtime_function("read_request"));
        assert!(is_root_function("__libc_start_main_impl"));
        assert!(!is_root_function("main"));
        assert!(is_system_module("/lib/x86_64-linux-gnu/libpthread.so.0"));
        assert!(!is_system_module("/usr/lib/libpython3.12.so.1.0"));
        assert_eq!(entry_name("__GI___libc_read"), "read");
        let p = stacked(
            ProfileKind::Offcpu,
            OFFCPU,
            vec![
                (LOCK_WAIT.to_vec(), 5, vec![]),
                // Statically linked: internals and roots in the program's own mapping.
                (
                    vec![
                        "pthread_cond_wait",
                        "worker@/src/w.c:3",
                        "start_thread",
                        "clone3",
                    ],
                    5,
                    vec![],
                ),
                (vec!["libc:start_thread", "libc:clone3"], 5, vec![]),
                (vec!["_start", "libc:__libc_start_call_main"], 5, vec![]),
            ],
        );
        assert_eq!(
            stack_brief(&p, &p.samples[0], 4),
            "take_the_lock (hung.c:19) <- lock_waiter, in pthread_mutex_lock"
        );
        assert_eq!(
            stack_brief(&p, &p.samples[1], 4),
            "worker (w.c:3), in pthread_cond_wait"
        );
        assert_eq!(stack_brief(&p, &p.samples[2], 4), "[no application frame]");
        assert_eq!(
            first_app_frame(&p, &p.samples[0]).map(|l| l.function.as_str()),
            Some("take_the_lock")
        );
        assert!(first_app_frame(&p, &p.samples[3]).is_none());
        assert_eq!(
            leaf_frame(&p, &p.samples[0]).map(|l| l.function.as_str()),
            Some("futex_wait")
        );
    }

    #[test]
    fn offcpu_section_splits_lock_from_idle_futex_waits_with_threads() {
        let io = |n: u32| format!("io_thd_{n}");
        let mut samples = vec![(
            LOCK_WAIT.to_vec(),
            7_660_000_000,
            labels(
                "lock_waiter",
                101,
                &[("wait_class", "lock"), ("wait_object", "mutex")],
            ),
        )];
        for n in 1..=4 {
            samples.push((
                vec![
                    "libc:__futex_abstimed_wait_common",
                    "libc:___pthread_cond_wait",
                    "wait_for_io@/src/io.c:7",
                    "io_loop@/src/io.c:30",
                    "libc:start_thread",
                ],
                1_000_000_000,
                labels(
                    &io(n),
                    200 + n,
                    &[("wait_class", "futex"), ("wait_object", "condvar")],
                ),
            ));
        }
        samples.push((
            vec!["libc:__GI___libc_read", "read_request@/src/hung.c:44"],
            5_000_000_000,
            labels("pipe_reader", 103, &[("wait_class", "syscall:read")]),
        ));
        let p = stacked(ProfileKind::Offcpu, OFFCPU, samples);
        let s = profile_section(&p, 10);
        assert!(s.contains("    lock "), "{s}");
        assert!(s.contains("    futex "), "{s}");
        assert!(s.contains("lock: waiting for a mutex"), "{s}");
        assert!(s.contains("top lock-wait stacks (contention):"), "{s}");
        assert!(
            s.contains(
                "take_the_lock (hung.c:19) <- lock_waiter, in pthread_mutex_lock  [lock_waiter]"
            ),
            "{s}"
        );
        assert!(s.contains("top idle futex waits"), "{s}");
        // The four idle threads' identical stacks are one row.
        assert!(
            s.contains(
                "4.00 s  wait_for_io (io.c:7) <- io_loop, in pthread_cond_wait  [4 threads: io_thd_1, io_thd_2, io_thd_3, ...]"
            ),
            "{s}"
        );
        assert!(
            s.contains("read_request (hung.c:44), in read  [pipe_reader]"),
            "{s}"
        );
        assert!(!s.contains("start_thread"), "{s}");
    }

    #[test]
    fn block_section_splits_lock_waits_from_idle_waits() {
        let p = stacked(
            ProfileKind::Block,
            &[("contentions", "count"), ("delay", "nanoseconds")],
            vec![
                (
                    LOCK_WAIT.to_vec(),
                    2_000_000_000,
                    labels("lock_waiter", 101, &[("wait_object", "mutex")]),
                ),
                (
                    vec![
                        "libc:___pthread_cond_wait",
                        "get_job@/src/pool.c:12",
                        "libc:start_thread",
                    ],
                    6_000_000_000,
                    labels("worker", 5, &[("wait_object", "condvar")]),
                ),
            ],
        );
        let s = profile_section(&p, 10);
        assert!(
            s.contains("8.00 s blocked on futexes: 2.00 s waiting for locks (contention), 6.00 s on condition variables, semaphores, joins (idle waits)"),
            "{s}"
        );
        assert!(
            s.contains("top lock waits (contention):\n        2.00 s  take_the_lock (hung.c:19) <- lock_waiter, in pthread_mutex_lock  [lock_waiter]"),
            "{s}"
        );
        assert!(
            s.contains("        6.00 s  get_job (pool.c:12), in pthread_cond_wait  [worker]"),
            "{s}"
        );
    }

    #[test]
    fn mutex_section_says_what_was_left_out() {
        let mut p = stacked(
            ProfileKind::Mutex,
            &[("contentions", "count"), ("delay", "nanoseconds")],
            vec![],
        );
        p.comments.push(
            "4459 wake-ups of 3 non-lock futex words (condition variables, semaphores, joins) left out"
                .into(),
        );
        let s = profile_section(&p, 10);
        assert!(
            s.contains("4459 wake-ups of 3 non-lock futex words (condition variables, semaphores, joins) left out"),
            "{s}"
        );
        assert!(s.contains("not lock contention"), "{s}");
        assert!(!s.contains("no samples"), "{s}");
    }

    #[test]
    fn cpu_section_names_first_application_frames() {
        let p = stacked(
            ProfileKind::Cpu,
            &[("samples", "count"), ("cpu", "nanoseconds")],
            vec![
                (
                    vec![
                        "libc:__memcpy_avx_unaligned",
                        "parse@/src/p.c:5",
                        "main@/src/p.c:50",
                    ],
                    3_000_000_000,
                    labels("app", 1, &[]),
                ),
                (
                    vec!["libc:start_thread", "libc:clone3"],
                    1_000_000_000,
                    labels("w", 2, &[]),
                ),
            ],
        );
        let s = profile_section(&p, 10);
        assert!(s.contains("hottest by first application frame"), "{s}");
        assert!(s.contains("75.0%  parse (p.c:5)  [app]"), "{s}");
        assert!(s.contains("[no application frame]  [w]"), "{s}");
    }

    /// A 2.1 s window of a 10 s request that ended with the target's exit.
    pub(crate) fn facts(counters: Counters, profiles: Vec<ProfileKind>) -> CaptureFacts {
        CaptureFacts {
            pid: 42,
            comm: "svc".into(),
            requested: Duration::from_secs(10),
            elapsed: Duration::from_millis(2100),
            end: EndReason::TargetExited,
            rates: Rates {
                frequency_hz: 99,
                block_rate_ns: 1,
                offcpu_rate_ns: 1,
                mutex_fraction: 1,
                mutex_rate_ns: 1,
                map_entries: 64,
                go_probe_limit: 10_000,
            },
            cpus: 2,
            counters,
            profiles,
            accounting: None,
            runq: None,
            identity: Default::default(),
            group: None,
        }
    }

    #[test]
    fn summary_says_the_target_exited_and_shows_losses() {
        let mut c = Counters::default();
        c.set(Counter::CpuSamples, 400);
        c.set(Counter::CpuSamplesTarget, 200);
        c.set(Counter::UserStackLost, 3);
        let f = facts(c, vec![ProfileKind::Cpu]);
        let s = render_summary(&f, &[], &[PathBuf::from("out/cpu.pb.gz")]);
        assert!(
            s.contains("the process exited after 2.1 s of 10.0 s"),
            "{s}"
        );
        assert!(s.contains("losses: user_stack_lost 3 (the other "), "{s}");
        // Every loss counter is in the line, the ones added after it was written too.
        let mut all = Counters::default();
        for k in Counter::ALL {
            all.set(k, 1);
        }
        let line = losses_line(&all);
        for k in [
            Counter::UserStackCorrupt,
            Counter::LockTableFull,
            Counter::FollowMapFull,
            Counter::ProgRunsSkipped,
        ] {
            assert!(line.contains(&format!("{} 1", k.info().name)), "{line}");
        }
        assert!(!line.contains("cpu_samples"), "{line}");
        assert!(
            losses_line(&Counters::default()).starts_with("losses: none"),
            "nothing lost"
        );
        assert!(s.contains("200 for the target"), "{s}");
        assert!(s.contains("go tool pprof -http=: out/cpu.pb.gz"), "{s}");
    }
}
