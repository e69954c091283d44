//! Text rendering of a thread dump, in the spirit of a Go goroutine dump: deadlocks first, a
//! summary by state, then every thread (`--debug 2`) or threads grouped by identical state and
//! stack with counts (`--debug 1`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::model::{Dump, Frame, State, Thread, WaitObject};

/// Go's `debug=1` (grouped) or `debug=2` (every thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    Grouped,
    EveryThread,
}

/// "850 us", "12 ms", "2.5 seconds", "5 minutes" (minutes from one minute on, as Go prints).
pub fn human_duration(ns: u64) -> String {
    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;
    match ns {
        n if n < MS => format!("{} us", n / 1000),
        n if n < S => format!("{} ms", n / MS),
        n if n < 60 * S => format!("{:.1} seconds", n as f64 / S as f64),
        n if n < 120 * S => "1 minute".to_string(),
        n => format!("{} minutes", n / (60 * S)),
    }
}

fn rfc3339_ms(unix_ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The state in words, without the time: `futex wait 0x55d0c0a040a0 (big_lock, mutex held by
/// thread 4244)`, `syscall read`, `running on CPU 1`.
pub fn state_text(t: &Thread) -> String {
    let mut s = t.state.label().to_string();
    match t.state {
        State::Running => {
            let _ = write!(s, " on CPU {}", t.cpu);
        }
        State::Syscall | State::IoWait => {
            if let Some(sc) = &t.syscall {
                let _ = write!(s, " {}", sc.name);
            }
        }
        State::FutexWait => {
            if let Some(w) = &t.wait {
                let _ = write!(s, " {}", w.address);
                let mut parts: Vec<String> = w.symbol.iter().cloned().collect();
                match (w.object, w.owner_tid) {
                    (WaitObject::Mutex | WaitObject::PiMutex, Some(owner)) => {
                        parts.push(format!("{} held by thread {owner}", w.object.label()))
                    }
                    (WaitObject::Join, Some(owner)) => {
                        parts.push(format!("join of thread {owner}"))
                    }
                    (WaitObject::Unknown, _) => {}
                    (obj, _) => parts.push(obj.label().to_string()),
                }
                if !parts.is_empty() {
                    let _ = write!(s, " ({})", parts.join(", "));
                }
            }
        }
        _ => {}
    }
    s
}

fn header_state(t: &Thread) -> String {
    match t.in_state_ns {
        Some(ns) => format!("{}, {}", state_text(t), human_duration(ns)),
        None => state_text(t),
    }
}

/// Writes a stack the way Go does: `function(...)` then the indented location.
fn write_user_frames(out: &mut String, frames: &[Frame]) {
    for f in frames {
        let _ = writeln!(out, "{}(...)", f.function);
        let inlined = if f.inlined { " (inlined)" } else { "" };
        match (&f.file, f.line) {
            (Some(file), Some(line)) => {
                let _ = writeln!(out, "    {file}:{line}{inlined}");
            }
            (Some(file), None) => {
                let _ = writeln!(out, "    {file}{inlined}");
            }
            _ => {
                let module = f.module.as_deref().unwrap_or("?");
                let _ = writeln!(out, "    {module} {}{inlined}", f.address);
            }
        }
    }
}

/// Kernel frames on one line, innermost first.
fn write_kernel_frames(out: &mut String, frames: &[Frame]) {
    if frames.is_empty() {
        return;
    }
    let names: Vec<&str> = frames.iter().map(|f| f.function.as_str()).collect();
    let _ = writeln!(out, "  kernel: {}", names.join(" <- "));
}

fn write_stacks(out: &mut String, t: &Thread) {
    write_kernel_frames(out, &t.kernel_stack);
    if let Some(e) = &t.user_stack_error {
        let _ = writeln!(out, "  (user stack: {e})");
    }
    write_user_frames(out, &t.user_stack);
}

fn write_created(out: &mut String, t: &Thread) {
    let Some(c) = &t.created else { return };
    let when = format!(
        "{} ({} ago)",
        rfc3339_ms(c.started_at_unix_ms),
        human_duration(c.age_ns)
    );
    if t.main {
        let _ = writeln!(out, "main thread, started {when}");
        return;
    }
    match &c.start_routine {
        Some(f) => {
            let _ = writeln!(out, "created by {} at {when}", f.function);
            if let (Some(file), Some(line)) = (&f.file, f.line) {
                let _ = writeln!(out, "    {file}:{line}");
            }
        }
        None => {
            let _ = writeln!(out, "created at {when} (start routine unknown)");
        }
    }
}

fn write_thread(out: &mut String, t: &Thread) {
    let _ = writeln!(
        out,
        "thread {} \"{}\" [{}]:",
        t.tid,
        t.name,
        header_state(t)
    );
    write_stacks(out, t);
    write_created(out, t);
    out.push('\n');
}

/// Threads with identical state (as [`state_text`] words it) and identical stacks.
#[derive(Debug, Clone, PartialEq)]
pub struct Group<'a> {
    pub state: String,
    pub threads: Vec<&'a Thread>,
}

/// Groups threads by state and stack, largest group first (ties: lowest tid first).
pub fn group_threads(threads: &[Thread]) -> Vec<Group<'_>> {
    type Key = (String, Vec<String>, Vec<String>);
    let mut index: HashMap<Key, usize> = HashMap::new();
    let mut groups: Vec<Group<'_>> = Vec::new();
    for t in threads {
        let key: Key = (
            state_text(t),
            t.user_stack.iter().map(|f| f.address.clone()).collect(),
            t.kernel_stack.iter().map(|f| f.function.clone()).collect(),
        );
        match index.get(&key) {
            Some(&i) => groups[i].threads.push(t),
            None => {
                index.insert(key.clone(), groups.len());
                groups.push(Group {
                    state: key.0,
                    threads: vec![t],
                });
            }
        }
    }
    groups.sort_by_key(|g| (std::cmp::Reverse(g.threads.len()), g.threads[0].tid));
    groups
}

fn write_group(out: &mut String, g: &Group<'_>) {
    let n = g.threads.len();
    let times: Vec<u64> = g.threads.iter().filter_map(|t| t.in_state_ns).collect();
    let time = match (times.iter().min(), times.iter().max()) {
        (Some(&lo), Some(&hi)) if human_duration(lo) == human_duration(hi) => {
            format!(", {}", human_duration(lo))
        }
        (Some(&lo), Some(&hi)) => format!(", {} to {}", human_duration(lo), human_duration(hi)),
        _ => String::new(),
    };
    const SHOWN: usize = 20;
    let mut tids: Vec<String> = g
        .threads
        .iter()
        .take(SHOWN)
        .map(|t| t.tid.to_string())
        .collect();
    if n > SHOWN {
        tids.push(format!("and {} more", n - SHOWN));
    }
    let what = if n == 1 { "thread" } else { "threads" };
    let _ = writeln!(out, "{n} {what} [{}{time}]: {}", g.state, tids.join(" "));
    let first = g.threads[0];
    write_stacks(out, first);
    out.push('\n');
}

fn write_summary(out: &mut String, d: &Dump) {
    let counts: Vec<String> = d
        .summary
        .by_state
        .iter()
        .map(|c| {
            let objects: Vec<String> = d
                .summary
                .futex_by_object
                .iter()
                .filter(|_| c.state == State::FutexWait)
                .map(|o| {
                    let why = if o.lock { "lock wait" } else { "idle" };
                    format!("{} {}: {why}", o.count, o.object.label())
                })
                .collect();
            if objects.is_empty() {
                format!("{} {}", c.count, c.state.label())
            } else {
                format!("{} {} ({})", c.count, c.state.label(), objects.join(", "))
            }
        })
        .collect();
    let _ = writeln!(
        out,
        "threads by state: {} ({} threads)",
        counts.join(", "),
        d.summary.threads
    );
    if !d.summary.longest_blocked.is_empty() {
        let _ = writeln!(out, "longest blocked:");
        for b in &d.summary.longest_blocked {
            let _ = writeln!(
                out,
                "  {:>8} {:<18} {:<12} {}",
                b.tid,
                format!("\"{}\"", b.name),
                b.state.label(),
                human_duration(b.in_state_ns)
            );
        }
    }
    out.push('\n');
}

/// The whole dump as text.
pub fn render(d: &Dump, detail: Detail) -> String {
    let mut out = String::new();
    let exe = d
        .exe
        .as_deref()
        .map(|e| format!(" {e}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "thread dump of process {} \"{}\"{exe}: {} threads at {} (taken in {} ms)\n",
        d.pid,
        d.process_name,
        d.threads.len(),
        d.taken_at,
        d.timings.total_us / 1000
    );
    let by_tid: HashMap<u32, &Thread> = d.threads.iter().map(|t| (t.tid, t)).collect();
    for dl in &d.deadlocks {
        let _ = writeln!(out, "DEADLOCK: {}", dl.description);
        let waits: Vec<String> = dl
            .cycle
            .iter()
            .map(|e| match e.waiting_ns {
                Some(ns) => format!("thread {} for {}", e.tid, human_duration(ns)),
                None => format!("thread {} for an unknown time", e.tid),
            })
            .collect();
        let _ = writeln!(out, "  waiting: {}", waits.join(", "));
        if !dl.blocked_behind.is_empty() {
            let tids: Vec<String> = dl.blocked_behind.iter().map(u32::to_string).collect();
            let who = match tids.len() {
                1 => "1 more thread waits".to_string(),
                n => format!("{n} more threads wait"),
            };
            let _ = writeln!(out, "  {who} behind it: {}", tids.join(" "));
        }
        out.push('\n');
        for e in &dl.cycle {
            if let Some(t) = by_tid.get(&e.tid) {
                write_thread(&mut out, t);
            }
        }
    }
    write_summary(&mut out, d);
    match detail {
        Detail::EveryThread => {
            for t in &d.threads {
                write_thread(&mut out, t);
            }
        }
        Detail::Grouped => {
            for g in group_threads(&d.threads) {
                write_group(&mut out, &g);
            }
        }
    }
    for n in &d.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

/// Seconds since the epoch as the dump's `taken_at` text and ms.
pub fn timestamp(t: SystemTime) -> (String, u64) {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    (rfc3339_ms(ms), ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::model::{Created, Syscall};
    use crate::dump::summarize;
    use crate::dump::waitfor::{
        find_deadlocks,
        tests::{thread, waiting},
    };

    fn frame(addr: u64, function: &str, file: Option<(&str, u32)>) -> Frame {
        Frame {
            address: format!("{addr:#x}"),
            function: function.into(),
            file: file.map(|(f, _)| f.to_string()),
            line: file.map(|(_, l)| l),
            inlined: false,
            module: Some("bank".into()),
        }
    }

    fn dump(threads: Vec<Thread>) -> Dump {
        let deadlocks = find_deadlocks(&threads);
        Dump {
            schema_version: crate::dump::model::SCHEMA_VERSION,
            pid: 100,
            process_name: "bank".into(),
            exe: Some("/src/bank".into()),
            taken_at: "2026-05-01T12:00:00.000Z".into(),
            taken_at_unix_ms: 1_777_636_800_000,
            deadlocks,
            summary: summarize(&threads),
            threads,
            notes: vec![],
            timings: Default::default(),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(850_000), "850 us");
        assert_eq!(human_duration(12_300_000), "12 ms");
        assert_eq!(human_duration(2_540_000_000), "2.5 seconds");
        assert_eq!(human_duration(61_000_000_000), "1 minute");
        assert_eq!(human_duration(312_000_000_000), "5 minutes");
    }

    #[test]
    fn thread_text_like_a_go_dump() {
        let mut t = waiting(4242, "worker-3", 0x55d0c0a040a0, "big_lock", 4243);
        t.in_state_ns = Some(300_000_000_000);
        t.user_stack = vec![
            frame(0x7f00, "pthread_mutex_lock", None),
            frame(0x1234, "transfer", Some(("/src/bank.c", 41))),
        ];
        t.user_stack[0].module = Some("libc.so.6".into());
        t.kernel_stack = vec![
            frame(1, "futex_wait", None),
            frame(2, "do_syscall_64", None),
        ];
        t.created = Some(Created {
            start_routine: Some(frame(0x1300, "worker", Some(("/src/bank.c", 60)))),
            started_at_unix_ms: 1_777_636_500_000,
            age_ns: 300_000_000_000,
        });
        let mut owner = thread(4243, "worker-4");
        owner.state = State::Running;
        owner.cpu = 1;
        owner.in_state_ns = Some(5_000_000);
        owner.user_stack_error = Some("running on CPU 1".into());
        let text = render(&dump(vec![t, owner]), Detail::EveryThread);
        let expected = "\
thread 4242 \"worker-3\" [futex wait 0x55d0c0a040a0 (big_lock, mutex held by thread 4243), 5 minutes]:
  kernel: futex_wait <- do_syscall_64
pthread_mutex_lock(...)
    libc.so.6 0x7f00
transfer(...)
    /src/bank.c:41
created by worker at 2026-05-01T11:55:00.000Z (5 minutes ago)
    /src/bank.c:60

thread 4243 \"worker-4\" [running on CPU 1, 5 ms]:
  (user stack: running on CPU 1)
";
        assert!(text.contains(expected), "got:\n{text}");
        assert!(text.starts_with(
            "thread dump of process 100 \"bank\" /src/bank: 2 threads at 2026-05-01T12:00:00.000Z"
        ));
        assert!(
            text.contains(
                "threads by state: 1 running, 1 futex wait (1 mutex: lock wait) (2 threads)"
            ),
            "{text}"
        );
        assert!(!text.contains("DEADLOCK"));
    }

    #[test]
    fn deadlocks_come_first_with_both_stacks() {
        let mut a = waiting(101, "worker-1", 0xa0, "lock_a", 102);
        a.user_stack = vec![frame(0x10, "transfer_ab", Some(("/src/d.c", 20)))];
        let mut b = waiting(102, "worker-2", 0xb0, "lock_b", 101);
        b.user_stack = vec![frame(0x20, "transfer_ba", Some(("/src/d.c", 30)))];
        let text = render(&dump(vec![thread(100, "main"), a, b]), Detail::Grouped);
        let first_line = text.lines().nth(2).unwrap();
        assert_eq!(
            first_line,
            "DEADLOCK: thread 101 \"worker-1\" waits for lock 0xa0 (lock_a) held by thread 102 \
             \"worker-2\", which waits for lock 0xb0 (lock_b) held by thread 101 \"worker-1\""
        );
        let deadlock_part = &text[..text.find("threads by state").unwrap()];
        assert!(deadlock_part.contains("transfer_ab(...)"));
        assert!(deadlock_part.contains("transfer_ba(...)"));
    }

    #[test]
    fn grouping_by_state_and_stack() {
        let stack = vec![
            frame(0x7f10, "pthread_cond_wait", None),
            frame(0x1010, "consumer", Some(("/src/q.c", 12))),
        ];
        let mut threads: Vec<Thread> = (0..100)
            .map(|i| {
                let mut t = waiting(200 + i, "consumer", 0x4040, "cond+0x8", 0);
                t.wait.as_mut().unwrap().object = WaitObject::ConditionVariable;
                t.wait.as_mut().unwrap().owner_tid = None;
                t.user_stack = stack.clone();
                t.in_state_ns = Some(2_000_000_000 + u64::from(i) * 1_000_000);
                t
            })
            .collect();
        // Same state, different stack: its own group.
        let mut other = threads[0].clone();
        other.tid = 999;
        other.user_stack[1] = frame(0x1020, "producer", None);
        threads.push(other);
        let mut sleeper = thread(100, "main");
        sleeper.syscall = Some(Syscall {
            nr: 230,
            name: "clock_nanosleep".into(),
        });
        threads.push(sleeper);
        let groups = group_threads(&threads);
        assert_eq!(
            groups.iter().map(|g| g.threads.len()).collect::<Vec<_>>(),
            vec![100, 1, 1]
        );
        assert_eq!(
            groups[0].state,
            "futex wait 0x4040 (cond+0x8, condition variable)"
        );
        let text = render(&dump(threads), Detail::Grouped);
        assert!(
            text.contains(
                "100 threads [futex wait 0x4040 (cond+0x8, condition variable), 2.0 seconds to 2.1 seconds]: \
                 200 201 202 203 204 205 206 207 208 209 210 211 212 213 214 215 216 217 218 219 and 80 more\n\
                 pthread_cond_wait(...)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("1 thread [sleep, 1.0 seconds]: 100\n"),
            "{text}"
        );
    }
}
