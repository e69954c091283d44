//! Every thread-second of a window accounted for (pure).
//!
//! The probes see a wait only from the moment a thread leaves the CPU, so a thread that was
//! already blocked when the window opened (the hung-service case) would be invisible until it
//! runs again. The window therefore opens with a look at every thread (the task iterator,
//! `dump::capture::snapshot`): each thread off CPU then gets a *seeded* wait from the window's
//! start, with the class and stacks it is blocked with, ended where the probes first see it
//! switch in (`FIRST_SEEN`) or at the window's end. A second look at the end, plus what the
//! last switch-out of threads that exited kept (`EXITED`), gives each thread's exact CPU time
//! (`se.sum_exec_runtime`), so that for every thread
//!
//! ```text
//! CPU time + off-CPU time = time alive in the window
//! ```
//!
//! can be checked, and the summary says how much is unaccounted.

use std::collections::{BTreeMap, HashMap};

use stallscope_common::dump::{DUMP_KSTACK_DEPTH, DumpTask};
use stallscope_common::{NO_SYSCALL, wait_class};

use crate::dump::model::State;
use crate::dump::state;
use crate::kernel::{ExitedThread, OffcpuRecord, OnCpu, StackPart};
use crate::model::{Label, Profile};
use crate::profiles::wait_class_name;

/// One thread as the task iterator saw it at one end of the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadView {
    pub tid: u32,
    /// Its process.
    pub tgid: u32,
    pub name: String,
    /// ktime (CLOCK_MONOTONIC) of its creation.
    pub start_ts: u64,
    /// CPU time over its life so far, ns.
    pub cpu_ns: u64,
    /// ktime when the iterator read it: where its window starts (first look) or ends (last).
    pub seen_ts: u64,
    /// Off CPU: the wait class and syscall it is in (`None`: on a CPU).
    pub off: Option<(u32, i32)>,
    /// Its user stack (leaf first; empty when running or unknown).
    pub user: Vec<u64>,
    /// Its kernel stack, kept only for the classes whose kernel stack the probes record too.
    pub kernel: Vec<u64>,
}

/// The wait class (and syscall) of a thread the iterator saw off CPU, as the `sched_switch`
/// program would have classified its switch-out; `None` when it runs.
pub fn class_of(task: &DumpTask) -> Option<(u32, i32)> {
    let sc = state::syscall_of(task, &[]);
    let nr = sc.as_ref().map(|s| s.nr);
    let class = |st: State| match st {
        State::Running | State::Zombie | State::Dead => None,
        State::Runnable => Some((wait_class::RUNNABLE, NO_SYSCALL)),
        State::Stopped | State::Traced => Some((wait_class::STOPPED, NO_SYSCALL)),
        State::Disk => Some((wait_class::DISK, NO_SYSCALL)),
        State::FutexWait => Some((wait_class::FUTEX, NO_SYSCALL)),
        State::IoWait => Some((wait_class::IO, NO_SYSCALL)),
        State::Sleep => Some((wait_class::SLEEP, NO_SYSCALL)),
        State::Syscall => Some((wait_class::SYSCALL, nr.map_or(NO_SYSCALL, |n| n as i32))),
        State::Sleeping | State::Idle => Some((wait_class::OTHER, NO_SYSCALL)),
    };
    match state::state_of(task, sc.as_ref()) {
        // Uninterruptible but not counted as load (TASK_IDLE): the probes classify it by its
        // syscall, as an interruptible sleep.
        State::Idle => class(state::syscall_state(task, nr)),
        st => class(st),
    }
}

/// A thread of the iterator's record, or `None` for a thread that has exited.
pub fn view(task: &DumpTask, user: &[u64]) -> Option<ThreadView> {
    if task.exit_state != 0 {
        return None;
    }
    let off = class_of(task);
    // As in the probes: the kernel stack only where the class does not already say where the
    // thread waits.
    let kernel = match off {
        Some((c, _))
            if !matches!(
                c,
                wait_class::FUTEX | wait_class::IO | wait_class::SLEEP | wait_class::RUNNABLE
            ) =>
        {
            task.kstack[..(task.kstack_len as usize).min(DUMP_KSTACK_DEPTH)].to_vec()
        }
        _ => Vec::new(),
    };
    Some(ThreadView {
        tid: task.tid,
        tgid: task.tgid,
        name: crate::dump::capture::comm(&task.comm),
        start_ts: task.start_time,
        cpu_ns: task.sum_exec_runtime,
        seen_ts: task.now_ktime,
        off,
        user: if off.is_some() {
            user.to_vec()
        } else {
            Vec::new()
        },
        kernel,
    })
}

/// What the probes saw of the threads at the end of the window, to end seeded waits.
#[derive(Debug, Clone, Default)]
pub struct ProbeView {
    /// tid → (first wakeup, first switch-in) ktime of threads never seen leaving the CPU.
    pub first_seen: HashMap<u32, (u64, u64)>,
    /// Threads with per-thread state in the kernel (the probes saw them run in the window),
    /// with their wall time on CPU.
    pub tracked: HashMap<u32, OnCpu>,
}

/// The waits of threads that were off CPU when the window opened at `t0`, from `t0` to their
/// first switch-in (or `t_end`), split at their first wakeup into the wait and the run-queue
/// time after it, as the probes split the waits they see begin.
///
/// A seeded thread the probes have state for (now, or when it exited) but no first switch-in
/// was running at `t0` or was born right then (it left the CPU, or was made runnable, between
/// `t0` and the look): the probes recorded that wait themselves. A thread that exited is
/// seeded up to its exit at most.
pub fn seeded_intervals(looks: &Looks, min_ns: u64) -> Vec<OffcpuRecord> {
    let Looks {
        start,
        exited,
        probes,
        t0,
        t_end,
        ..
    } = *looks;
    let exits: HashMap<u32, &ExitedThread> = exited.iter().map(|x| (x.tid, x)).collect();
    let mut out = Vec::new();
    for t in start {
        let Some((class, syscall)) = t.off else {
            continue;
        };
        let exit = exits.get(&t.tid);
        let t_end = exit.map_or(t_end, |x| x.exit_ts.min(t_end));
        let tracked = probes.tracked.contains_key(&t.tid) || exit.is_some_and(|x| x.tracked);
        let (wake, end) = match probes.first_seen.get(&t.tid) {
            Some(&(wake, in_ts)) if in_ts != 0 => (wake, in_ts.min(t_end)),
            _ if tracked => continue,
            Some(&(wake, _)) => (wake, t_end),
            None => (0, t_end),
        };
        // Its window starts when the iterator read it: its CPU time is known from there.
        let t0 = t0.max(t.seen_ts);
        if end <= t0 {
            continue;
        }
        let mut push = |class: u32, ns: u64| {
            if ns >= min_ns.max(1) {
                out.push(OffcpuRecord {
                    tgid: t.tgid,
                    tid: t.tid,
                    class,
                    syscall: if class == wait_class::SYSCALL {
                        syscall
                    } else {
                        NO_SYSCALL
                    },
                    user: StackPart::Frames(t.user.clone()),
                    kernel: StackPart::Frames(t.kernel.clone()),
                    count: 1,
                    total_ns: ns,
                });
            }
        };
        if class != wait_class::RUNNABLE && wake > t0 && wake < end {
            push(class, wake - t0);
            push(wait_class::RUNNABLE, end - wake);
        } else {
            push(class, end - t0);
        }
    }
    out
}

/// One thread's time in the window.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ThreadAccount {
    pub tid: u32,
    pub name: String,
    /// Time alive in the window, ns (from the window's start or its creation, to the
    /// window's end or its exit).
    pub alive_ns: u64,
    /// Wall time on CPU in the window, ns, between the switch-ins and switch-outs the probes
    /// saw (with an off-CPU profile; else `cpu_ns`).
    pub oncpu_ns: u64,
    /// CPU time executing in the window, ns (the scheduler's `sum_exec_runtime`). Below
    /// `oncpu_ns` by the time the hypervisor stole from the vCPU (and interrupt time) while
    /// the thread was current.
    pub cpu_ns: u64,
    /// Off-CPU time in the window, ns (the off-CPU profile's intervals of this thread).
    pub offcpu_ns: u64,
    /// Off-CPU time by wait class (`lock` apart from `futex` once the profile is symbolized).
    pub offcpu_by_class: BTreeMap<String, u64>,
    /// `alive - oncpu - offcpu`, ns (negative: counted twice).
    pub unaccounted_ns: i64,
    /// It was already off CPU when the window opened (its wait was seeded).
    pub seeded: bool,
    /// Created during the window.
    pub created: bool,
    /// Exited during the window.
    pub exited: bool,
    /// Its end is unknown (it exited after the probes stopped, before the last look).
    pub incomplete: bool,
}

/// Per-thread accounting of one window of one process.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Accounting {
    pub window_ns: u64,
    pub threads: Vec<ThreadAccount>,
    pub thread_ns: u64,
    pub oncpu_ns: u64,
    pub cpu_ns: u64,
    pub offcpu_ns: u64,
    pub unaccounted_ns: i64,
    /// Whether the off-CPU side was recorded (without an off-CPU profile only CPU is known).
    pub offcpu_recorded: bool,
}

impl Accounting {
    /// Takes each thread's off-CPU time by class from the symbolized off-CPU profile, where lock
    /// waits and idle futex waits are told apart by their stacks (`locks::classify_futex_waits`):
    /// the kernel's classes know only "futex". Needs the `tid` label; a thread whose samples do
    /// not add up to its off-CPU time keeps the kernel's classes.
    pub fn classes_from(&mut self, offcpu: &Profile) {
        let Some(vi) = offcpu.value_index("off-cpu") else {
            return;
        };
        let mut by: HashMap<u32, BTreeMap<String, u64>> = HashMap::new();
        for smp in &offcpu.samples {
            let label = |key: &str| {
                smp.labels.iter().find_map(|l| match l {
                    Label::Str(k, v) if k == key => Some(v.as_str()),
                    _ => None,
                })
            };
            let (Some(tid), Some(class)) = (label("tid"), label("wait_class")) else {
                continue;
            };
            let Ok(tid) = tid.parse::<u32>() else {
                continue;
            };
            let v = smp.values.get(vi).copied().unwrap_or(0).max(0) as u64;
            *by.entry(tid)
                .or_default()
                .entry(class.to_string())
                .or_default() += v;
        }
        for t in &mut self.threads {
            if let Some(m) = by.remove(&t.tid)
                && m.values().sum::<u64>() == t.offcpu_ns
            {
                t.offcpu_by_class = m;
            }
        }
    }

    /// Thread id → name, for labels.
    pub fn names(&self) -> HashMap<u32, String> {
        self.threads
            .iter()
            .map(|t| (t.tid, t.name.clone()))
            .collect()
    }

    /// The summary's accounting line.
    pub fn line(&self) -> String {
        let s = |ns: u64| ns as f64 / 1e9;
        if !self.offcpu_recorded {
            return format!(
                "threads: {} in {:.1} thread-seconds: {:.2} s on CPU (off-CPU time not recorded: \
                 add --profile offcpu)",
                self.threads.len(),
                s(self.thread_ns),
                s(self.cpu_ns)
            );
        }
        let pct = if self.thread_ns > 0 {
            100.0 * self.unaccounted_ns as f64 / self.thread_ns as f64
        } else {
            0.0
        };
        let stolen = self.oncpu_ns.saturating_sub(self.cpu_ns);
        let oncpu = if stolen * 100 > self.oncpu_ns.max(1) {
            format!(
                "{:.2} s on CPU ({:.2} s executing, {:.2} s stolen by the hypervisor or in \
                 interrupts)",
                s(self.oncpu_ns),
                s(self.cpu_ns),
                s(stolen)
            )
        } else {
            format!("{:.2} s on CPU", s(self.oncpu_ns))
        };
        format!(
            "threads: {} in {:.1} thread-seconds: {oncpu}, {:.2} s off CPU, {:.2} s \
             unaccounted ({pct:.1}%)",
            self.threads.len(),
            s(self.thread_ns),
            s(self.offcpu_ns),
            self.unaccounted_ns as f64 / 1e9
        )
    }
}

/// What is known of the threads of one window `[t0, t_end]`.
#[derive(Debug, Clone, Copy)]
pub struct Looks<'a> {
    /// The iterator's look at the window's start and at its end.
    pub start: &'a [ThreadView],
    pub end: &'a [ThreadView],
    /// Threads that exited in between.
    pub exited: &'a [ExitedThread],
    pub probes: &'a ProbeView,
    pub t0: u64,
    pub t_end: u64,
}

/// Wall time on CPU of one thread from `head` (when it was first known to be on CPU: its
/// first look if it was running then, or its first switch-in) to `to`, given what the
/// probes measured (`None`: it never left the CPU in a way they saw).
fn wall_oncpu(head: Option<u64>, to: u64, probes: Option<OnCpu>) -> u64 {
    let from_head = |until: u64| head.map_or(0, |h| until.saturating_sub(h));
    match probes {
        None => from_head(to),
        Some(o) => {
            let before_first_out = if o.first_out_ts != 0 {
                from_head(o.first_out_ts)
            } else {
                0
            };
            let running_now = if o.on_ts != 0 {
                to.saturating_sub(o.on_ts)
            } else if o.first_out_ts == 0 && o.oncpu_ns == 0 {
                from_head(to)
            } else {
                0
            };
            o.oncpu_ns + before_first_out + running_now
        }
    }
}

/// Accounts every thread of the window: `offcpu` is every off-CPU record of the window
/// (probes, seeds and intervals still open at the end).
pub fn account(looks: &Looks, offcpu: &[OffcpuRecord], offcpu_recorded: bool) -> Accounting {
    let Looks {
        start,
        end,
        exited,
        probes,
        t0,
        t_end,
    } = *looks;
    let mut off: HashMap<u32, BTreeMap<String, u64>> = HashMap::new();
    for r in offcpu {
        *off.entry(r.tid)
            .or_default()
            .entry(wait_class_name(r.class, r.syscall))
            .or_default() += r.total_ns;
    }
    let at_start: HashMap<u32, &ThreadView> = start.iter().map(|t| (t.tid, t)).collect();
    let at_end: HashMap<u32, &ThreadView> = end.iter().map(|t| (t.tid, t)).collect();
    let gone: HashMap<u32, &ExitedThread> = exited.iter().map(|x| (x.tid, x)).collect();
    let mut tids: Vec<u32> = at_start
        .keys()
        .chain(at_end.keys())
        .chain(gone.keys())
        .copied()
        .collect();
    tids.sort_unstable();
    tids.dedup();
    let mut acc = Accounting {
        window_ns: t_end.saturating_sub(t0),
        offcpu_recorded,
        ..Accounting::default()
    };
    for tid in tids {
        let s = at_start.get(&tid);
        let e = at_end.get(&tid);
        let x = gone.get(&tid);
        let start_ts = s
            .map(|t| t.start_ts)
            .or(e.map(|t| t.start_ts))
            .or(x.map(|x| x.start_ts))
            .unwrap_or(0);
        let from = t0.max(start_ts).max(s.map_or(0, |t| t.seen_ts));
        let (to, end_cpu, incomplete) = match (x, e) {
            (Some(x), _) => (x.exit_ts.min(t_end), Some(x.cpu_ns), false),
            (None, Some(e)) => (t_end, Some(e.cpu_ns), false),
            (None, None) => (t_end, None, true),
        };
        let start_cpu = if start_ts <= t0 {
            s.map(|t| t.cpu_ns).unwrap_or(0)
        } else {
            0
        };
        let cpu_ns = end_cpu.map_or(0, |c| c.saturating_sub(start_cpu));
        let first_in = probes
            .first_seen
            .get(&tid)
            .map(|&(_, in_ts)| in_ts)
            .filter(|&t| t != 0);
        let head = match (first_in, s) {
            (Some(t), _) => Some(t.max(from)),
            (None, Some(v)) if v.off.is_none() => Some(from),
            _ => None,
        };
        let oncpu_ns = if offcpu_recorded {
            let measured = x.map(|x| x.oncpu).or(probes.tracked.get(&tid).copied());
            wall_oncpu(head, to, measured)
        } else {
            cpu_ns
        };
        let by_class = off.remove(&tid).unwrap_or_default();
        let offcpu_ns: u64 = by_class.values().sum();
        let alive_ns = to.saturating_sub(from);
        let name = e
            .map(|t| t.name.clone())
            .or(x.map(|x| x.name.clone()))
            .or(s.map(|t| t.name.clone()))
            .unwrap_or_default();
        let unaccounted_ns = alive_ns as i64 - oncpu_ns as i64 - offcpu_ns as i64;
        acc.thread_ns += alive_ns;
        acc.oncpu_ns += oncpu_ns;
        acc.cpu_ns += cpu_ns;
        acc.offcpu_ns += offcpu_ns;
        acc.threads.push(ThreadAccount {
            tid,
            name,
            alive_ns,
            oncpu_ns,
            cpu_ns,
            offcpu_ns,
            offcpu_by_class: by_class,
            unaccounted_ns: if offcpu_recorded { unaccounted_ns } else { 0 },
            seeded: s.is_some_and(|t| t.off.is_some()),
            created: start_ts > t0,
            exited: x.is_some(),
            incomplete,
        });
    }
    if offcpu_recorded {
        acc.unaccounted_ns = acc.thread_ns as i64 - acc.oncpu_ns as i64 - acc.offcpu_ns as i64;
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tv(tid: u32, cpu: u64, off: Option<u32>) -> ThreadView {
        ThreadView {
            tid,
            tgid: 7,
            name: format!("t{tid}"),
            start_ts: 10,
            cpu_ns: cpu,
            seen_ts: 0,
            off: off.map(|c| (c, NO_SYSCALL)),
            user: vec![0x1000 + u64::from(tid)],
            kernel: vec![],
        }
    }

    const T0: u64 = 1_000;
    const END: u64 = 11_000;

    fn looks<'a>(
        start: &'a [ThreadView],
        end: &'a [ThreadView],
        exited: &'a [ExitedThread],
        probes: &'a ProbeView,
    ) -> Looks<'a> {
        Looks {
            start,
            end,
            exited,
            probes,
            t0: T0,
            t_end: END,
        }
    }

    #[test]
    fn a_thread_blocked_all_window_is_seeded_for_the_whole_window() {
        let start = [tv(1, 5, Some(wait_class::FUTEX))];
        let probes = ProbeView::default();
        let recs = seeded_intervals(&looks(&start, &[], &[], &probes), 0);
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].total_ns, END - T0);
        assert_eq!(recs[0].class, wait_class::FUTEX);
        assert_eq!(recs[0].tid, 1);
        assert_eq!(recs[0].user, StackPart::Frames(vec![0x1001]));
        let end = [tv(1, 5, Some(wait_class::FUTEX))];
        let acc = account(&looks(&start, &end, &[], &probes), &recs, true);
        let t = &acc.threads[0];
        assert_eq!((t.alive_ns, t.oncpu_ns, t.cpu_ns), (END - T0, 0, 0));
        assert_eq!(acc.unaccounted_ns, 0);
        assert!(t.seeded);
    }

    #[test]
    fn a_seeded_wait_ends_at_the_first_switch_in_and_splits_at_the_wakeup() {
        let start = [tv(1, 0, Some(wait_class::SLEEP))];
        let mut probes = ProbeView::default();
        probes.first_seen.insert(1, (3_000, 3_500));
        probes.tracked.insert(
            1,
            OnCpu {
                on_ts: 0,
                oncpu_ns: 0,
                first_out_ts: 4_000,
            },
        );
        let recs = seeded_intervals(&looks(&start, &[], &[], &probes), 0);
        let got: Vec<(u32, u64)> = recs.iter().map(|r| (r.class, r.total_ns)).collect();
        assert_eq!(
            got,
            vec![(wait_class::SLEEP, 2_000), (wait_class::RUNNABLE, 500)]
        );
        // On CPU from its first switch-in to its first switch-out, then off to the end.
        let mut recs = recs;
        recs.push(OffcpuRecord {
            total_ns: END - 4_000,
            ..recs[0].clone()
        });
        let end = [tv(1, 400, Some(wait_class::SLEEP))];
        let acc = account(&looks(&start, &end, &[], &probes), &recs, true);
        let t = &acc.threads[0];
        assert_eq!((t.oncpu_ns, t.cpu_ns, t.unaccounted_ns), (500, 400, 0));
    }

    #[test]
    fn a_thread_the_probes_saw_leave_is_not_seeded_twice() {
        // Running at t0, switched out before the look: the probes have its wait.
        let start = [tv(1, 0, Some(wait_class::IO))];
        let mut probes = ProbeView::default();
        probes.tracked.insert(1, OnCpu::default());
        assert!(seeded_intervals(&looks(&start, &[], &[], &probes), 0).is_empty());
        // Running threads are never seeded.
        let start = [tv(2, 0, None)];
        assert!(seeded_intervals(&looks(&start, &[], &[], &ProbeView::default()), 0).is_empty());
    }

    #[test]
    fn a_seeded_thread_that_exited_is_seeded_by_what_the_probes_knew() {
        // Born as the window opened (runnable at the look, its birth seen by sched_wakeup_new),
        // then ran and exited: its state left THREADS at the exit, and the probes recorded its
        // first wait. Seeding it to the window's end counted 3 s for a 0.2 ms life.
        let start = [tv(1, 0, Some(wait_class::RUNNABLE))];
        let exited = |tracked| ExitedThread {
            tid: 1,
            tgid: 7,
            exit_ts: 2_000,
            cpu_ns: 100,
            start_ts: T0,
            name: "t1".into(),
            oncpu: OnCpu {
                on_ts: 0,
                oncpu_ns: 100,
                first_out_ts: 0,
            },
            tracked,
        };
        let probes = ProbeView::default();
        let gone = [exited(true)];
        assert!(seeded_intervals(&looks(&start, &[], &gone, &probes), 0).is_empty());
        // Without state at its exit the probes did not see that wait: seeded, up to the exit.
        let gone = [exited(false)];
        let recs = seeded_intervals(&looks(&start, &[], &gone, &probes), 0);
        let got: Vec<(u32, u64)> = recs.iter().map(|r| (r.class, r.total_ns)).collect();
        assert_eq!(got, vec![(wait_class::RUNNABLE, 2_000 - T0)]);
    }

    #[test]
    fn wall_time_on_cpu_includes_what_the_hypervisor_stole() {
        // Running at its first look, out at 3000, in at 5000 (2000 measured so far), on
        // CPU since 9000 at the end.
        let o = OnCpu {
            on_ts: 9_000,
            oncpu_ns: 2_000,
            first_out_ts: 3_000,
        };
        assert_eq!(wall_oncpu(Some(T0), END, Some(o)), 2_000 + 2_000 + 2_000);
        // Never left the CPU; or never ran at all.
        assert_eq!(wall_oncpu(Some(T0), END, None), END - T0);
        assert_eq!(wall_oncpu(None, END, None), 0);
        let start = [tv(1, 0, None)];
        let end = [tv(1, 4_000, None)];
        let mut probes = ProbeView::default();
        probes.tracked.insert(1, o);
        let off = vec![OffcpuRecord {
            tgid: 7,
            tid: 1,
            class: wait_class::SLEEP,
            syscall: -1,
            user: StackPart::Frames(vec![]),
            kernel: StackPart::Frames(vec![]),
            count: 2,
            total_ns: 4_000,
        }];
        let acc = account(&looks(&start, &end, &[], &probes), &off, true);
        assert_eq!(
            (acc.oncpu_ns, acc.cpu_ns, acc.unaccounted_ns),
            (6_000, 4_000, 0)
        );
        assert!(
            acc.line().contains("stolen by the hypervisor"),
            "{}",
            acc.line()
        );
    }

    #[test]
    fn new_and_exited_threads_count_from_birth_to_exit() {
        let mut born = tv(3, 400, None);
        born.start_ts = 5_000;
        let gone = ExitedThread {
            tid: 4,
            tgid: 7,
            exit_ts: 4_000,
            cpu_ns: 1_500,
            start_ts: 10,
            name: "gone".into(),
            oncpu: OnCpu::default(),
            tracked: false,
        };
        let start = [tv(4, 500, None)];
        let mut probes = ProbeView::default();
        // The new thread first ran at 5000, left at 5400 and is still off CPU.
        probes.first_seen.insert(3, (0, 5_000));
        probes.tracked.insert(
            3,
            OnCpu {
                on_ts: 0,
                oncpu_ns: 0,
                first_out_ts: 5_400,
            },
        );
        let off = vec![OffcpuRecord {
            tgid: 7,
            tid: 3,
            class: wait_class::FUTEX,
            syscall: -1,
            user: StackPart::Frames(vec![]),
            kernel: StackPart::Frames(vec![]),
            count: 1,
            total_ns: 5_600,
        }];
        let born = [born];
        let gone = [gone];
        let acc = account(&looks(&start, &born, &gone, &probes), &off, true);
        let t3 = acc.threads.iter().find(|t| t.tid == 3).unwrap();
        assert_eq!(
            (t3.alive_ns, t3.oncpu_ns, t3.unaccounted_ns),
            (6_000, 400, 0)
        );
        assert!(t3.created && !t3.exited);
        // Ran from the window's start to its exit without leaving the CPU.
        let t4 = acc.threads.iter().find(|t| t.tid == 4).unwrap();
        assert_eq!((t4.alive_ns, t4.cpu_ns, t4.oncpu_ns), (3_000, 1_000, 3_000));
        assert_eq!(t4.unaccounted_ns, 0);
        assert_eq!(t4.name, "gone");
        assert!(
            acc.line().contains("2 in 0.0 thread-seconds"),
            "{}",
            acc.line()
        );
    }

    #[test]
    fn without_offcpu_only_cpu_is_claimed() {
        let (start, end) = ([tv(1, 0, None)], [tv(1, 900, None)]);
        let probes = ProbeView::default();
        let acc = account(&looks(&start, &end, &[], &probes), &[], false);
        assert_eq!((acc.unaccounted_ns, acc.cpu_ns), (0, 900));
        assert!(acc.line().contains("not recorded"), "{}", acc.line());
    }
}
