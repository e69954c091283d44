//! Continuous per-process metrics of `agent serve`, from `/proc` alone: no probe is attached
//! between profile requests, so a target pays nothing while nobody is profiling it.
//!
//! Every sampling interval, for each thread of each target:
//! - `/proc/PID/task/TID/schedstat` gives the exact time on CPU, the exact time spent runnable
//!   in the run queue, and the number of timeslices, so CPU and `runnable` seconds are exact;
//! - the rest of the interval the thread was blocked; that time goes to the wait class of the
//!   thread's state (`stat` state, and the syscall it is in from `syscall` for a sleeping
//!   thread: lock, futex, io, sleep, other syscall, disk, stopped), observed at the sample (or
//!   at the previous one when the thread is running now: it woke up during the interval);
//! - a futex wait is a `lock` wait or another (`futex`) wait by [`classify_futex`]: from the
//!   operation in `syscall` and, for `FUTEX_WAIT` only, the futex word read through
//!   `/proc/PID/mem` (one descriptor per process and pass, opened on the first such thread).
//!   No stack is taken: glibc's rwlocks, semaphores, joins and condition variables all wait
//!   with `FUTEX_WAIT_BITSET` and cannot be told apart, so they are all `futex` (the profiles
//!   tell them apart by stack);
//! - the run-queue latency histogram gets, per thread and interval, `timeslices` observations
//!   of the interval's mean run-queue wait (so `_sum` and `_count` are exact, and the buckets
//!   are the per-thread, per-interval means).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::time::Instant;

use crate::dump::state::{
    FUTEX_LOCK_PI, FUTEX_LOCK_PI2, FUTEX_TID_MASK, FUTEX_WAIT, PID_MAX_LIMIT, SYS_FUTEX,
    SYS_FUTEX_WAITV, futex_cmd,
};

/// Thread states and wait classes shown in metrics (a bounded label set). `lock`: a futex
/// wait for a lock; `futex`: every other futex wait ([`classify_futex`]).
pub const CLASSES: [&str; 10] = [
    "running", "runnable", "lock", "futex", "io", "sleep", "syscall", "disk", "stopped", "other",
];
const RUNNING: usize = 0;
const RUNNABLE: usize = 1;
const LOCK: usize = 2;
const FUTEX: usize = 3;
const IO: usize = 4;
const SLEEP: usize = 5;
const SYSCALL: usize = 6;
const DISK: usize = 7;
const STOPPED: usize = 8;
const OTHER: usize = 9;

/// `FUTEX_WAITERS`: the bit a robust or PI futex word (and musl's mutexes) has set when the
/// lock has waiters; the owner's tid is in [`FUTEX_TID_MASK`].
const FUTEX_WAITERS: u32 = 0x8000_0000;
/// How far above a sleeping thread's stack pointer a futex word counts as the thread's own
/// stack (see [`on_own_stack`]).
pub const OWN_STACK_WINDOW: u64 = 4096;

/// Upper bounds (seconds) of the run-queue latency histogram buckets.
pub const RUNQ_BUCKETS: [f64; 12] = [
    1e-6, 4e-6, 16e-6, 64e-6, 256e-6, 1e-3, 4e-3, 16e-3, 64e-3, 256e-3, 1.0, 4.0,
];

/// The syscall a sleeping thread is in, as one sample read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syscall {
    /// The syscall number (x86-64; `-1`: blocked outside a syscall).
    pub nr: i64,
    /// A futex wait for a lock ([`classify_futex`]); false for every other syscall.
    pub lock: bool,
    /// A select or poll without descriptors: a sleep (`is_fdless_wait`).
    pub fdless: bool,
}

impl Syscall {
    /// A syscall that is not a lock wait.
    pub const fn nr(nr: i64) -> Self {
        Self {
            nr,
            lock: false,
            fdless: false,
        }
    }
}

/// The class of a thread from its `stat` state letter and, when sleeping, its syscall
/// (`None`: not in a syscall, or unreadable).
pub fn class_of(state: char, syscall: Option<Syscall>) -> usize {
    match state {
        'R' => RUNNING,
        'D' => DISK,
        'T' | 't' => STOPPED,
        'S' => match syscall.map(|s| (s.nr, s.lock)) {
            _ if syscall.is_some_and(|s| s.fdless) => SLEEP,
            Some((SYS_FUTEX, true)) => LOCK,
            Some((SYS_FUTEX | SYS_FUTEX_WAITV, _)) => FUTEX,
            Some((7 | 23 | 232 | 270 | 271 | 281 | 441, _)) => IO,
            Some((35 | 230, _)) => SLEEP,
            Some((n, _)) if n >= 0 => SYSCALL,
            _ => OTHER,
        },
        _ => OTHER,
    }
}

/// What a futex wait waits for, as far as `/proc` can tell without a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FutexWait {
    /// A lock: a mutex, a PI mutex, a C library's or a language runtime's own lock.
    Lock,
    /// Anything else: condition variables, semaphores, joins, barriers, rwlocks, idle runtime
    /// threads, other futexes; and lock waits the rule below cannot see.
    Other,
}

/// Whether a futex wait waits for a lock, from its operation `op` (the kernel reads an `int`:
/// bits above 31 are ignored) and, for `FUTEX_WAIT`, the futex word as read at the sample
/// (`None`: not read or unreadable).
///
/// - `FUTEX_LOCK_PI`, `FUTEX_LOCK_PI2`: a priority-inheritance mutex, always a lock.
/// - `FUTEX_WAIT` on a word that holds "locked, with waiters", as the lock's waiters leave it:
///   `2` (the three-state futex lock: glibc's `lll_lock_wait` for pthread mutexes and glibc's
///   internal locks, Go's `runtime.lock` up to Go 1.23); `0xffff_ffff` (Go 1.24+: a
///   `runtime.lock` waiter sleeps on its M's semaphore at -1); `FUTEX_WAITERS` with an owner
///   tid in the low bits (robust mutexes of older glibc, musl's mutexes and internal locks).
///   Not `1`, locked without waiters: no lock waiter sleeps on it, while parking_lot parks
///   every waiter (its condition variables' too) on `1`; a waiter reading 1 or 0 is being
///   woken. Go's idle Ms (`notesleep`) wait on `0`.
/// - Everything else is [`FutexWait::Other`]: `FUTEX_WAIT_BITSET` (glibc ≥ 2.34 waits with
///   it in condition variables, semaphores, joins, rwlocks and timed mutex locks, and Rust's
///   std in every primitive: they cannot be told apart without a stack),
///   `FUTEX_WAIT_REQUEUE_PI` (a condition variable wait for a PI mutex: the wait is for the
///   condition, the mutex comes after the requeue), any other operation, and a word that
///   holds another value or could not be read.
///
/// A word that holds one of those values by coincidence (a barrier round or a joined tid
/// equal to 2 under glibc < 2.34) is counted as a lock; [`on_own_stack`] keeps out the
/// per-waiter words of musl's condition variables, which also sleep on 2.
pub fn classify_futex(op: u64, word: Option<u32>) -> FutexWait {
    match futex_cmd(op & 0xffff_ffff) {
        FUTEX_LOCK_PI | FUTEX_LOCK_PI2 => FutexWait::Lock,
        FUTEX_WAIT if word.is_some_and(is_lock_word) => FutexWait::Lock,
        _ => FutexWait::Other,
    }
}

/// A futex word value that a lock's sleeping waiters leave behind (see [`classify_futex`]).
fn is_lock_word(w: u32) -> bool {
    let owner = w & FUTEX_TID_MASK;
    w == 2 || w == u32::MAX || (w & FUTEX_WAITERS != 0 && owner != 0 && owner <= PID_MAX_LIMIT)
}

/// Whether a futex word is in the waiting thread's own innermost frames: within
/// [`OWN_STACK_WINDOW`] above its user stack pointer. Locks are shared objects, not locals of
/// a waiter; per-waiter wait nodes are (musl's condition variables sleep on a word in the
/// waiter's frame that holds 2), so such a word is not read and the wait is not a lock. The
/// window is small enough to stay inside the thread's own stack mapping (a thread's TCB and
/// TLS alone sit above its first frame).
pub fn on_own_stack(uaddr: u64, sp: u64) -> bool {
    uaddr >= sp && uaddr - sp < OWN_STACK_WINDOW
}

/// Parses `/proc/.../syscall`: the number first, `running` while on CPU, `-1` outside one.
pub fn parse_syscall(text: &str) -> Option<i64> {
    text.split_whitespace().next()?.parse().ok()
}

/// The number and the hex fields after it of a `/proc/.../syscall` line (`nr a0 .. a5 sp pc`):
/// the six arguments, then the user stack pointer and pc (`None`: absent or not hex).
fn syscall_fields(text: &str) -> Option<(i64, [Option<u64>; 8])> {
    let mut f = text.split_whitespace();
    let nr = f.next()?.parse().ok()?;
    let mut fields = [None; 8];
    for (slot, s) in fields.iter_mut().zip(f) {
        *slot = s
            .strip_prefix("0x")
            .and_then(|h| u64::from_str_radix(h, 16).ok());
    }
    Some((nr, fields))
}

/// The futex word address, operation and user stack pointer of a thread in `futex()`, from
/// `/proc/.../syscall` (`202 uaddr op val timeout uaddr2 val3 sp pc`, arguments in hex).
pub fn parse_futex_call(text: &str) -> Option<(u64, u64, u64)> {
    match syscall_fields(text)? {
        (SYS_FUTEX, f) => Some((f[0]?, f[1]?, f[6]?)),
        _ => None,
    }
}

/// The syscall of a sleeping thread from its `/proc/.../syscall` text. For a futex wait it
/// decides [`Syscall::lock`]; the futex word is read through `word_at` only for `FUTEX_WAIT`
/// on a word outside the thread's own frames ([`on_own_stack`]).
pub fn syscall_of(text: &str, word_at: impl FnOnce(u64) -> Option<u32>) -> Option<Syscall> {
    let (nr, f) = syscall_fields(text)?;
    let futex = match (nr, f[0], f[1], f[6]) {
        (SYS_FUTEX, Some(uaddr), Some(op), Some(sp)) => Some((uaddr, op, sp)),
        _ => None,
    };
    let lock = futex.is_some_and(|(uaddr, op, sp)| {
        let word = (futex_cmd(op & 0xffff_ffff) == FUTEX_WAIT && !on_own_stack(uaddr, sp))
            .then(|| word_at(uaddr))
            .flatten();
        classify_futex(op, word) == FutexWait::Lock
    });
    let fdless = match (f[0], f[1]) {
        (Some(a0), Some(a1)) => stallscope_common::is_fdless_wait(nr, a0, a1),
        _ => false,
    };
    Some(Syscall { nr, lock, fdless })
}

/// Parses `/proc/.../schedstat`: (ns on CPU, ns waiting in the run queue, timeslices).
pub fn parse_schedstat(text: &str) -> Option<(u64, u64, u64)> {
    let mut f = text.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some((f.next()??, f.next()??, f.next()??))
}

/// Comm, state letter, start time (field 22) and flags (field 9) of `/proc/.../stat`.
pub fn parse_stat(text: &str) -> Option<(String, char, u64, u64)> {
    let (comm, state, start) = crate::system::parse_stat(text)?;
    let rest = text.get(text.rfind(')')? + 1..)?;
    let flags = rest.split_whitespace().nth(6)?.parse().ok()?;
    Some((comm, state, start, flags))
}

/// What one thread looked like at the previous sample.
#[derive(Debug, Clone, Copy)]
struct ThreadPrev {
    run_ns: u64,
    wait_ns: u64,
    slices: u64,
    class: usize,
    at: Instant,
}

/// Continuous metrics of one process (identified by pid and start time).
#[derive(Debug, Clone)]
pub struct ProcStats {
    pub pid: u32,
    pub start_ticks: u64,
    pub comm: String,
    /// Its container and pod (empty outside one): labels of its series.
    pub identity: crate::identity::Identity,
    /// It has series of its own; false: it is summed into its container's `pid="other"`
    /// series (`--max-processes-per-container`).
    pub own_series: bool,
    threads: HashMap<u32, ThreadPrev>,
    pub cpu_seconds: f64,
    /// Off-CPU seconds by class (`running` stays 0).
    pub offcpu_seconds: [f64; CLASSES.len()],
    /// Threads by class at the last sample.
    pub threads_by_state: [u64; CLASSES.len()],
    /// Cumulative counts per bucket (not yet cumulated across buckets), plus +Inf last.
    pub runq_buckets: [u64; RUNQ_BUCKETS.len() + 1],
    pub runq_sum: f64,
    pub runq_count: u64,
}

/// One thread as read in one sample.
#[derive(Debug, Clone, Copy)]
pub struct ThreadSample {
    pub tid: u32,
    pub state: char,
    pub syscall: Option<Syscall>,
    pub run_ns: u64,
    pub wait_ns: u64,
    pub slices: u64,
}

impl ProcStats {
    pub fn new(pid: u32, start_ticks: u64, comm: String) -> Self {
        Self {
            pid,
            start_ticks,
            comm,
            identity: crate::identity::Identity::default(),
            own_series: true,
            threads: HashMap::new(),
            cpu_seconds: 0.0,
            offcpu_seconds: [0.0; CLASSES.len()],
            threads_by_state: [0; CLASSES.len()],
            runq_buckets: [0; RUNQ_BUCKETS.len() + 1],
            runq_sum: 0.0,
            runq_count: 0,
        }
    }

    /// Folds in one sample of every live thread taken at `now`. Threads seen for the first
    /// time only set a baseline; threads gone since the last sample are forgotten.
    pub fn update(&mut self, now: Instant, threads: &[ThreadSample]) {
        self.threads_by_state = [0; CLASSES.len()];
        let mut next = HashMap::with_capacity(threads.len());
        for t in threads {
            let class = class_of(t.state, t.syscall);
            self.threads_by_state[class] += 1;
            if let Some(p) = self.threads.get(&t.tid) {
                let dt = now.saturating_duration_since(p.at).as_nanos() as u64;
                let run = t.run_ns.saturating_sub(p.run_ns);
                let wait = t.wait_ns.saturating_sub(p.wait_ns);
                let slices = t.slices.saturating_sub(p.slices);
                let blocked = dt.saturating_sub(run + wait);
                self.cpu_seconds += run as f64 / 1e9;
                self.offcpu_seconds[RUNNABLE] += wait as f64 / 1e9;
                // Blocked time belongs to what the thread waits on now, or, when it runs now,
                // to what it waited on at the previous sample.
                let blocked_class = if class == RUNNING { p.class } else { class };
                let blocked_class = if blocked_class == RUNNING {
                    OTHER
                } else {
                    blocked_class
                };
                if blocked > 0 {
                    self.offcpu_seconds[blocked_class] += blocked as f64 / 1e9;
                }
                if slices > 0 {
                    let mean = wait as f64 / 1e9 / slices as f64;
                    let b = RUNQ_BUCKETS
                        .iter()
                        .position(|&le| mean <= le)
                        .unwrap_or(RUNQ_BUCKETS.len());
                    self.runq_buckets[b] += slices;
                    self.runq_count += slices;
                    self.runq_sum += wait as f64 / 1e9;
                }
            }
            next.insert(
                t.tid,
                ThreadPrev {
                    run_ns: t.run_ns,
                    wait_ns: t.wait_ns,
                    slices: t.slices,
                    class,
                    at: now,
                },
            );
        }
        self.threads = next;
    }

    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }

    /// Seconds its threads waited for locks.
    pub fn lock_seconds(&self) -> f64 {
        self.offcpu_seconds[LOCK]
    }

    /// Zeroes the counters (a process starting series of its own); the threads' baselines
    /// stay, so the next sample counts from now.
    pub fn reset_counters(&mut self) {
        self.cpu_seconds = 0.0;
        self.offcpu_seconds = [0.0; CLASSES.len()];
        self.runq_buckets = [0; RUNQ_BUCKETS.len() + 1];
        self.runq_sum = 0.0;
        self.runq_count = 0;
    }

    /// Adds `other`'s counters (and, when `live`, its threads by state) to these.
    pub fn absorb(&mut self, other: &ProcStats, live: bool) {
        self.cpu_seconds += other.cpu_seconds;
        for (a, b) in self.offcpu_seconds.iter_mut().zip(other.offcpu_seconds) {
            *a += b;
        }
        if live {
            for (a, b) in self.threads_by_state.iter_mut().zip(other.threads_by_state) {
                *a += b;
            }
        }
        for (a, b) in self.runq_buckets.iter_mut().zip(other.runq_buckets) {
            *a += b;
        }
        self.runq_sum += other.runq_sum;
        self.runq_count += other.runq_count;
    }

    /// The labels of its series: `pid` and `comm`, and its container and pod when in one
    /// (pid 0: a container's sum of processes without series of their own, `pid="other"`).
    pub fn labels(&self) -> String {
        let pid = if self.pid == 0 {
            "other".to_string()
        } else {
            self.pid.to_string()
        };
        let mut l = format!("pid=\"{pid}\",comm=\"{}\"", escape_label(&self.comm));
        l.push_str(&identity_labels(&self.identity));
        l
    }
}

/// `,container="...",pod_uid="...",pod="...",namespace="..."`, the parts known.
pub fn identity_labels(id: &crate::identity::Identity) -> String {
    let mut l = String::new();
    for (k, v) in [
        ("container", &id.container),
        ("pod_uid", &id.pod_uid),
        ("pod", &id.pod),
        ("namespace", &id.namespace),
    ] {
        if let Some(v) = v {
            let _ = write!(l, ",{k}=\"{}\"", escape_label(v));
        }
    }
    l
}

/// Reads the 4-byte word at `addr` of process `pid` through `/proc/PID/mem`, opened on the
/// first read (`mem`: `None` until then, `Some(None)` if it could not be opened: not retried
/// in this pass). Failures are `None`: the wait is then not counted as a lock.
fn read_word(mem: &mut Option<Option<File>>, pid: u32, addr: u64) -> Option<u32> {
    let file = mem
        .get_or_insert_with(|| File::open(format!("/proc/{pid}/mem")).ok())
        .as_ref()?;
    let mut b = [0u8; 4];
    file.read_exact_at(&mut b, addr).ok()?;
    Some(u32::from_ne_bytes(b))
}

/// Reads every thread of `pid` (`None` once the process is gone).
pub fn read_threads(pid: u32) -> Option<Vec<ThreadSample>> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut out = Vec::new();
    let mut mem = None;
    for entry in dir.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let base = format!("/proc/{pid}/task/{tid}");
        let Ok(stat) = std::fs::read_to_string(format!("{base}/stat")) else {
            continue;
        };
        let Some((_, state, _, _)) = parse_stat(&stat) else {
            continue;
        };
        let Some((run_ns, wait_ns, slices)) = std::fs::read_to_string(format!("{base}/schedstat"))
            .ok()
            .and_then(|s| parse_schedstat(&s))
        else {
            continue;
        };
        // The syscall only matters (and is only cheap to read) for a sleeping thread.
        let syscall = if state == 'S' {
            std::fs::read_to_string(format!("{base}/syscall"))
                .ok()
                .and_then(|s| syscall_of(&s, |addr| read_word(&mut mem, pid, addr)))
        } else {
            None
        };
        out.push(ThreadSample {
            tid,
            state,
            syscall,
            run_ns,
            wait_ns,
            slices,
        });
    }
    Some(out)
}

/// Escapes a Prometheus label value.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// The per-process families of `procs`, each labelled by [`ProcStats::labels`].
pub fn render(procs: &[&ProcStats]) -> String {
    let rows: Vec<(String, &ProcStats)> = procs.iter().map(|p| (p.labels(), *p)).collect();
    render_rows(&rows)
}

/// The per-process families in the Prometheus text format (one HELP/TYPE block each), one
/// series set per row (its labels, its figures).
pub fn render_rows(rows: &[(String, &ProcStats)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP stallscope_offcpu_seconds_total Time threads of the process spent off CPU, by wait class, summed over threads: runnable (in the run queue), lock (futex waits for a lock), futex (other futex waits: condition variables, semaphores, joins, rwlocks, idle runtime threads), io (epoll, poll, select), sleep, syscall (other blocking syscalls), disk (uninterruptible), stopped, other.\n# TYPE stallscope_offcpu_seconds_total counter"
    );
    for (l, p) in rows {
        for (i, class) in CLASSES.iter().enumerate().skip(1) {
            let _ = writeln!(
                out,
                "stallscope_offcpu_seconds_total{{{},class=\"{class}\"}} {}",
                l, p.offcpu_seconds[i]
            );
        }
    }
    let per_proc = |out: &mut String, name: &str, help: &str, value: &dyn Fn(&ProcStats) -> f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (l, p) in rows {
            let _ = writeln!(out, "{name}{{{}}} {}", l, value(p));
        }
    };
    per_proc(
        &mut out,
        "stallscope_lock_wait_seconds_total",
        "Time threads of the process spent waiting for a lock (mutexes, PI mutexes, a C library's or runtime's own locks), summed over threads; offcpu class lock. Told from other futex waits without stacks: FUTEX_LOCK_PI, or FUTEX_WAIT on a word that holds a locked-with-waiters value (2, 0xffffffff, FUTEX_WAITERS with an owner), read at the sample. Condition variables, semaphores, joins, rwlocks and idle threads are not counted (stallscope_futex_wait_seconds_total).",
        &|p| p.offcpu_seconds[LOCK],
    );
    per_proc(
        &mut out,
        "stallscope_futex_wait_seconds_total",
        "Time threads of the process spent in futex waits other than lock waits, summed over threads; offcpu class futex: condition variables, semaphores, joins, idle runtime threads (Go's idle Ms), and, as /proc cannot tell them apart, every FUTEX_WAIT_BITSET wait (glibc rwlocks and timed mutex locks, Rust std locks). Mostly idle time, not contention.",
        &|p| p.offcpu_seconds[FUTEX],
    );
    per_proc(
        &mut out,
        "stallscope_cpu_seconds_total",
        "CPU time of the process's threads (scheduler accounting).",
        &|p| p.cpu_seconds,
    );
    let _ = writeln!(
        out,
        "# HELP stallscope_threads Threads of the process by state at the last sample (running includes runnable).\n# TYPE stallscope_threads gauge"
    );
    for (l, p) in rows {
        for (i, state) in CLASSES.iter().enumerate() {
            if i == RUNNABLE {
                continue;
            }
            let _ = writeln!(
                out,
                "stallscope_threads{{{},state=\"{state}\"}} {}",
                l, p.threads_by_state[i]
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP stallscope_runqueue_latency_seconds Run-queue wait per timeslice (per thread and sampling interval, the mean; sum and count are exact).\n# TYPE stallscope_runqueue_latency_seconds histogram"
    );
    for (l, p) in rows {
        let mut cum = 0;
        for (i, le) in RUNQ_BUCKETS.iter().enumerate() {
            cum += p.runq_buckets[i];
            let _ = writeln!(
                out,
                "stallscope_runqueue_latency_seconds_bucket{{{},le=\"{le}\"}} {cum}",
                l
            );
        }
        cum += p.runq_buckets[RUNQ_BUCKETS.len()];
        let _ = writeln!(
            out,
            "stallscope_runqueue_latency_seconds_bucket{{{},le=\"+Inf\"}} {cum}",
            l
        );
        let _ = writeln!(
            out,
            "stallscope_runqueue_latency_seconds_sum{{{}}} {}",
            l, p.runq_sum
        );
        let _ = writeln!(
            out,
            "stallscope_runqueue_latency_seconds_count{{{}}} {}",
            l, p.runq_count
        );
    }
    out
}

/// `stallscope_processes_summed`: per container, the live processes whose figures are in its
/// `pid="other"` series rather than series of their own (`labels`: the container's).
pub fn render_folded(folded: &[(String, u64)]) -> String {
    if folded.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "# HELP stallscope_processes_summed Processes of the container summed into its pid=\"other\" series (beyond --max-processes-per-container), at the last sample.\n# TYPE stallscope_processes_summed gauge\n",
    );
    for (labels, n) in folded {
        let _ = writeln!(out, "stallscope_processes_summed{{{labels}}} {n}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn classes() {
        let sc = |nr| Some(Syscall::nr(nr));
        let lock = Some(Syscall {
            nr: 202,
            lock: true,
            fdless: false,
        });
        assert_eq!(CLASSES[class_of('S', lock)], "lock");
        assert_eq!(CLASSES[class_of('S', sc(202))], "futex");
        assert_eq!(CLASSES[class_of('S', sc(449))], "futex");
        assert_eq!(CLASSES[class_of('S', sc(232))], "io");
        assert_eq!(CLASSES[class_of('S', sc(230))], "sleep");
        assert_eq!(CLASSES[class_of('S', sc(0))], "syscall");
        // select(0, NULL, NULL, NULL, &tv), PostgreSQL's pg_usleep: a sleep, not I/O.
        let of = |text: &str| class_of('S', syscall_of(text, |_| None));
        assert_eq!(
            CLASSES[of("23 0x0 0x0 0x0 0x0 0x7ffd1000 0x0 0x7ffd0ff0 0x7f00")],
            "sleep"
        );
        assert_eq!(
            CLASSES[of("23 0x5 0x7ffd2000 0x0 0x0 0x7ffd1000 0x0 0x7ffd0ff0 0x7f00")],
            "io"
        );
        assert_eq!(
            CLASSES[of("7 0x7ffd2000 0x0 0x3e8 0x0 0x0 0x0 0x7ffd0ff0 0x7f00")],
            "sleep"
        );
        assert_eq!(
            CLASSES[of("7 0x7ffd2000 0x2 0x3e8 0x0 0x0 0x0 0x7ffd0ff0 0x7f00")],
            "io"
        );
        assert_eq!(CLASSES[class_of('S', None)], "other");
        assert_eq!(CLASSES[class_of('S', sc(-1))], "other");
        // A lock wait is a lock only while the thread sleeps in it.
        assert_eq!(CLASSES[class_of('R', lock)], "running");
        assert_eq!(CLASSES[class_of('D', None)], "disk");
        assert_eq!(CLASSES[class_of('R', None)], "running");
        assert_eq!(CLASSES[class_of('t', None)], "stopped");
        assert_eq!(parse_syscall("202 0x1 0x2"), Some(202));
        assert_eq!(parse_syscall("running"), None);
        assert_eq!(parse_schedstat("10 20 3\n"), Some((10, 20, 3)));
        let (comm, state, start, flags) =
            parse_stat("7 (a (b) c) S 1 7 7 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 555 1 1")
                .unwrap();
        assert_eq!(
            (comm.as_str(), state, start, flags),
            ("a (b) c", 'S', 555, 4194560)
        );
    }

    #[test]
    fn futex_classifier() {
        use FutexWait::{Lock, Other};
        const PRIVATE: u64 = 128;
        const REALTIME: u64 = 256;
        // PI locks are locks whatever the word (not read for them).
        for op in [6, 6 | PRIVATE, 13, 13 | PRIVATE | REALTIME] {
            assert_eq!(classify_futex(op, None), Lock, "op {op}");
        }
        // FUTEX_WAIT: by the word.
        for op in [0, PRIVATE, PRIVATE | REALTIME, 0xffff_ffff_0000_0080] {
            for w in [
                2,
                u32::MAX,
                FUTEX_WAITERS | 1234,
                FUTEX_WAITERS | 0x4000_0000 | 7,
            ] {
                assert_eq!(classify_futex(op, Some(w)), Lock, "op {op:#x} word {w:#x}");
            }
            for w in [
                0,
                1,
                3,
                4,
                FUTEX_WAITERS,
                0xbfff_ffff,
                FUTEX_WAITERS | (PID_MAX_LIMIT + 1),
            ] {
                assert_eq!(classify_futex(op, Some(w)), Other, "op {op:#x} word {w:#x}");
            }
            assert_eq!(classify_futex(op, None), Other);
        }
        // WAIT_BITSET (glibc's condition variables, semaphores, joins, rwlocks), REQUEUE_PI
        // (a condition variable wait), WAKE and the rest: never a lock.
        for op in [
            9,
            9 | PRIVATE,
            9 | PRIVATE | REALTIME,
            11,
            11 | PRIVATE,
            1,
            5,
            8,
        ] {
            assert_eq!(classify_futex(op, Some(2)), Other, "op {op}");
            assert_eq!(classify_futex(op, None), Other, "op {op}");
        }
    }

    #[test]
    fn futex_words_read_only_when_needed() {
        let line = |uaddr: u64, op: u64, sp: u64| {
            format!("202 {uaddr:#x} {op:#x} 0x2 0x0 0x0 0x0 {sp:#x} 0x7f0000001234\n")
        };
        let sp = 0x7ffd_0000_1000;
        assert_eq!(
            parse_futex_call(&line(0x5600_0000_0010, 0x80, sp)),
            Some((0x5600_0000_0010, 0x80, sp))
        );
        assert_eq!(parse_futex_call("7 0x1 0x2 0x3 0x4 0x5 0x6 0x7 0x8"), None);
        assert_eq!(parse_futex_call("202 0x1 0x2"), None);
        assert_eq!(parse_futex_call("running"), None);
        let heap = 0x5600_0000_0010;
        let mut reads = Vec::new();
        let mut of = |text: &str, word: Option<u32>| {
            syscall_of(text, |a| {
                reads.push(a);
                word
            })
        };
        // glibc pthread_mutex_lock contention: FUTEX_WAIT_PRIVATE on a heap word holding 2.
        let lock = Some(Syscall {
            nr: 202,
            lock: true,
            fdless: false,
        });
        assert_eq!(of(&line(heap, 0x80, sp), Some(2)), lock);
        // Go's idle M (notesleep): the word is 0.
        assert_eq!(of(&line(heap, 0x80, sp), Some(0)), Some(Syscall::nr(202)));
        // Unreadable memory: not a lock, nothing else happens.
        assert_eq!(of(&line(heap, 0x80, sp), None), Some(Syscall::nr(202)));
        // musl's condition variable: a word holding 2 in the waiter's own frame, not read.
        assert_eq!(
            of(&line(sp + 0x100, 0x80, sp), Some(2)),
            Some(Syscall::nr(202))
        );
        // Just outside the window it is read again.
        assert_eq!(of(&line(sp + OWN_STACK_WINDOW, 0x80, sp), Some(2)), lock);
        // WAIT_BITSET and PI locks need no word.
        assert_eq!(of(&line(heap, 0x89, sp), Some(2)), Some(Syscall::nr(202)));
        assert_eq!(of(&line(heap, 0x86, sp), None), lock);
        // Other syscalls: the number only, no read.
        assert_eq!(
            of("232 0x3 0x1 0x2 0x3 0x4 0x5 0x7ff0 0x1", Some(2)),
            Some(Syscall::nr(232))
        );
        assert_eq!(of("-1 0x7ffd0000 0x7f00", Some(2)), Some(Syscall::nr(-1)));
        assert_eq!(of("running", Some(2)), None);
        assert_eq!(reads, vec![heap, heap, heap, sp + OWN_STACK_WINDOW]);
        assert!(on_own_stack(sp, sp) && !on_own_stack(sp - 4, sp));
    }

    /// Threads of this test process sleeping in real futex waits, read back from `/proc`:
    /// the futex word comes from `/proc/self/mem`.
    #[test]
    fn real_futex_waits_are_told_apart() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::mpsc;
        const FUTEX_WAIT_PRIVATE: i32 = 128;
        const FUTEX_WAKE_PRIVATE: i32 = 129;
        const FUTEX_WAIT_BITSET_PRIVATE: i32 = 9 | 128;
        fn wait(w: &AtomicU32, op: i32) {
            while w.load(Ordering::Acquire) == 2 {
                // SAFETY: a futex wait on a live, aligned u32 (bitset: match any).
                unsafe {
                    libc::syscall(
                        libc::SYS_futex,
                        w.as_ptr(),
                        op,
                        2u32,
                        std::ptr::null::<libc::timespec>(),
                        std::ptr::null::<u32>(),
                        u32::MAX,
                    );
                }
            }
        }
        fn wake(w: &AtomicU32) {
            w.store(0, Ordering::Release);
            // SAFETY: a futex wake on a live, aligned u32.
            unsafe {
                libc::syscall(libc::SYS_futex, w.as_ptr(), FUTEX_WAKE_PRIVATE, i32::MAX);
            }
        }
        // A contended glibc mutex's word (on the heap), a condition-variable-like wait on the
        // same value with WAIT_BITSET, and a musl-style waiter node on the waiter's stack.
        let heap_lock: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(2)));
        let heap_bitset: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(2)));
        let (tx, rx) = mpsc::channel();
        // Each waiter sends its tid and its futex word's address (`None`: a local word).
        let waiter = |word: Option<&'static AtomicU32>, op: i32| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let node = AtomicU32::new(2);
                let w = word.unwrap_or(&node);
                // SAFETY: gettid has no arguments and cannot fail.
                let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
                tx.send((tid, w as *const AtomicU32 as usize)).unwrap();
                wait(w, op);
            })
        };
        let threads = [
            waiter(Some(heap_lock), FUTEX_WAIT_PRIVATE),
            waiter(Some(heap_bitset), FUTEX_WAIT_BITSET_PRIVATE),
            waiter(None, FUTEX_WAIT_PRIVATE),
        ];
        let ids: Vec<(u32, usize)> = (0..3).map(|_| rx.recv().unwrap()).collect();
        let pid = std::process::id();
        // Until all three sleep in futex().
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let found = loop {
            let all = read_threads(pid).unwrap();
            let mine: Vec<ThreadSample> = ids
                .iter()
                .filter_map(|(tid, _)| all.iter().find(|t| t.tid == *tid).copied())
                .collect();
            if mine.len() == 3
                && mine
                    .iter()
                    .all(|t| t.state == 'S' && t.syscall.is_some_and(|s| s.nr == 202))
            {
                break mine;
            }
            assert!(Instant::now() < deadline, "threads not in futex: {mine:?}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        // `ids` (and so `found`) come in the order the threads started: name them by word.
        let mut classes: Vec<(&str, &str)> = found
            .iter()
            .zip(&ids)
            .map(|(t, (_, addr))| {
                let word = if *addr == heap_lock.as_ptr() as usize {
                    "heap mutex"
                } else if *addr == heap_bitset.as_ptr() as usize {
                    "heap bitset"
                } else {
                    "stack node"
                };
                (word, CLASSES[class_of(t.state, t.syscall)])
            })
            .collect();
        classes.sort();
        for (_, addr) in &ids {
            // SAFETY: every waiter is still in `wait`, so its word (even a local) is alive.
            wake(unsafe { &*(*addr as *const AtomicU32) });
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            classes,
            [
                ("heap bitset", "futex"),
                ("heap mutex", "lock"),
                ("stack node", "futex")
            ]
        );
    }

    #[test]
    fn lock_and_other_futex_series() {
        // An idle service: 6 threads in condition variable waits (WAIT_BITSET) for 12 s,
        // one thread contending on a mutex for the last 2 s of it.
        let t0 = Instant::now();
        let mut p = ProcStats::new(9, 1, "redis-server".into());
        let th = |tid, syscall| ThreadSample {
            tid,
            state: 'S',
            syscall: Some(syscall),
            run_ns: 0,
            wait_ns: 0,
            slices: 0,
        };
        let idle: Vec<ThreadSample> = (1..=6).map(|t| th(t, Syscall::nr(202))).collect();
        let mut all = idle.clone();
        all.push(th(7, Syscall::nr(232)));
        p.update(t0, &all);
        let t1 = t0 + Duration::from_secs(10);
        p.update(t1, &all);
        all[6] = th(
            7,
            Syscall {
                nr: 202,
                lock: true,
                fdless: false,
            },
        );
        p.update(t1 + Duration::from_secs(2), &all);
        assert!((p.offcpu_seconds[FUTEX] - 72.0).abs() < 1e-9);
        assert!((p.offcpu_seconds[LOCK] - 2.0).abs() < 1e-9);
        assert!((p.offcpu_seconds[IO] - 10.0).abs() < 1e-9);
        assert_eq!(p.threads_by_state[LOCK], 1);
        assert_eq!(p.threads_by_state[FUTEX], 6);
        let text = render(&[&p]);
        let l = "pid=\"9\",comm=\"redis-server\"";
        for line in [
            format!("stallscope_lock_wait_seconds_total{{{l}}} 2\n"),
            format!("stallscope_futex_wait_seconds_total{{{l}}} 72\n"),
            format!("stallscope_offcpu_seconds_total{{{l},class=\"lock\"}} 2\n"),
            format!("stallscope_offcpu_seconds_total{{{l},class=\"futex\"}} 72\n"),
            format!("stallscope_threads{{{l},state=\"lock\"}} 1\n"),
            format!("stallscope_threads{{{l},state=\"futex\"}} 6\n"),
        ] {
            assert!(text.contains(&line), "{line} in:\n{text}");
        }
        // Bounded labels: every class once per process, one HELP/TYPE per family.
        assert_eq!(
            text.matches("stallscope_offcpu_seconds_total{").count(),
            CLASSES.len() - 1
        );
        assert_eq!(
            text.matches("stallscope_threads{").count(),
            CLASSES.len() - 1
        );
        for family in [
            "stallscope_lock_wait_seconds_total",
            "stallscope_futex_wait_seconds_total",
        ] {
            assert_eq!(
                text.matches(&format!("# TYPE {family} counter\n")).count(),
                1
            );
        }
    }

    #[test]
    fn accounting_splits_an_interval() {
        let t0 = Instant::now();
        let mut p = ProcStats::new(1, 2, "w".into());
        let s = |state, syscall, run_ns, wait_ns, slices| ThreadSample {
            tid: 10,
            state,
            syscall,
            run_ns,
            wait_ns,
            slices,
        };
        let futex = Some(Syscall::nr(202));
        p.update(t0, &[s('S', futex, 1_000, 0, 1)]);
        assert_eq!(p.cpu_seconds, 0.0);
        // 1 s later: 0.2 s on CPU, 0.1 s in the run queue over 10 slices, 0.7 s blocked.
        let t1 = t0 + Duration::from_secs(1);
        p.update(t1, &[s('S', futex, 200_001_000, 100_000_000, 11)]);
        assert!((p.cpu_seconds - 0.2).abs() < 1e-9);
        assert!((p.offcpu_seconds[RUNNABLE] - 0.1).abs() < 1e-9);
        assert!((p.offcpu_seconds[FUTEX] - 0.7).abs() < 1e-9);
        assert_eq!(p.runq_count, 10);
        assert!((p.runq_sum - 0.1).abs() < 1e-9);
        // 10 ms mean: the 16 ms bucket.
        assert_eq!(p.runq_buckets[7], 10);
        // Running now: the blocked part goes to the previous class.
        let t2 = t1 + Duration::from_secs(1);
        p.update(t2, &[s('R', None, 200_001_000, 100_000_000, 11)]);
        assert!((p.offcpu_seconds[FUTEX] - 1.7).abs() < 1e-9);
        assert_eq!(p.threads_by_state[RUNNING], 1);
        // A thread that exited is forgotten.
        p.update(t2, &[]);
        assert_eq!(p.thread_count(), 0);
        let text = render(&[&p]);
        assert!(
            text.contains(
                "stallscope_offcpu_seconds_total{pid=\"1\",comm=\"w\",class=\"futex\"} 1.7"
            )
        );
        assert!(text.contains(
            "stallscope_runqueue_latency_seconds_bucket{pid=\"1\",comm=\"w\",le=\"+Inf\"} 10"
        ));
    }

    #[test]
    fn label_escaping() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
