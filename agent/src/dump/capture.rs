//! Taking a dump: the kernel's view of every thread (task iterator), user stacks unwound from
//! the target's memory, symbolization, wait objects and their owners, deadlocks. Needs root;
//! everything it calls after the iterator is plain data.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use stallscope_common::dump::{DUMP_KSTACK_DEPTH, DUMP_REGS_OK, DumpTask, pt_regs};

use crate::error::Error;
use crate::kernel::{self, Collector};
use crate::model::{ProfileKind, RawProfile, RawSample, RawStack, ValueType};
use crate::symbolize::Symbolizer;
use crate::unwind::cfi::Regs;
use crate::unwind::maps::MapsCache;

use super::model::{
    Created, Dump, Frame, SCHEMA_VERSION, State, Thread, Timings, Wait, WaitObject,
};
use super::stack::{self, MemReader, UnwindTables};
use super::state::{self, OWNER_READ_LEN, SYS_FUTEX};
use super::{summarize, text, waitfor};
use crate::kernel::offsets::task_offsets as kernel_offsets;

/// Why a thread's user stack was not unwound, or `None` if it can be.
fn no_user_stack(task: &DumpTask) -> Option<String> {
    if task.exit_state != 0 {
        return Some("the thread has exited".into());
    }
    if task.state == 0 && task.on_cpu != 0 {
        return Some(format!(
            "running on CPU {}: a running thread's registers are saved only when it leaves the \
             CPU, so its stack is not taken",
            task.cpu
        ));
    }
    if task.flags & DUMP_REGS_OK == 0 {
        return Some("its saved registers could not be read".into());
    }
    if task.regs[pt_regs::CS] & 3 != 3 {
        return Some("no user-mode registers (a kernel thread)".into());
    }
    None
}

/// `pcount` (times put on a CPU) of a thread now, from `/proc/PID/task/TID/schedstat`.
fn pcount_now(pid: u32, tid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
    s.split_whitespace().nth(2)?.parse().ok()
}

struct UserStack {
    addrs: Vec<u64>,
    error: Option<String>,
}

fn unwind_all(
    pid: u32,
    tasks: &[DumpTask],
    maps: &MapsCache,
    notes: &mut Vec<String>,
) -> (Vec<UserStack>, Option<MemReader>) {
    let tables = UnwindTables::build(pid, maps);
    let mem = match MemReader::open(pid) {
        Ok(m) => Some(m),
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                // Without root: the file is its owner's (0600) and ptrace-checked.
                "; reading another user's process needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"
            } else {
                ""
            };
            notes.push(format!(
                "cannot read /proc/{pid}/mem ({e}): no user stacks{hint}"
            ));
            None
        }
    };
    let mut moved = 0;
    let stacks = tasks
        .iter()
        .map(|task| {
            if let Some(error) = no_user_stack(task) {
                return UserStack {
                    addrs: vec![],
                    error: Some(error),
                };
            }
            let Some(mem) = &mem else {
                return UserStack {
                    addrs: vec![],
                    error: Some("the process's memory is not readable".into()),
                };
            };
            let regs = Regs {
                ip: task.regs[pt_regs::IP],
                sp: task.regs[pt_regs::SP],
                bp: task.regs[pt_regs::BP],
            };
            let addrs = stack::unwind_user(regs, &tables, mem);
            let mut error = None;
            if addrs.len() >= stack::MAX_USER_FRAMES {
                error = Some(format!("truncated at {} frames", stack::MAX_USER_FRAMES));
            }
            // A thread that ran while its stack was read may have changed it under us.
            if pcount_now(pid, task.tid).is_some_and(|n| n != task.pcount) {
                moved += 1;
                error = Some(
                    "the thread ran while its stack was read: frames may mix two moments".into(),
                );
            }
            UserStack { addrs, error }
        })
        .collect();
    if moved > 0 {
        notes.push(format!(
            "{moved} threads ran while their stacks were read; their stacks may be inexact"
        ));
    }
    (stacks, mem)
}

/// Symbolizes stacks in one batch. The symbolizer works on profiles: one sample per stack,
/// only the stacks matter (the goroutine dump uses this too).
pub fn symbolize_stacks(
    samples: Vec<RawSample>,
    maps: &MapsCache,
    symbolizer: &mut Symbolizer,
) -> crate::model::Profile {
    let raw = RawProfile {
        kind: ProfileKind::Offcpu,
        sample_types: vec![ValueType::new("stacks", "count")],
        default_sample_type: None,
        period_type: ValueType::new("stacks", "count"),
        period: 1,
        start: SystemTime::now(),
        duration: std::time::Duration::ZERO,
        samples,
        comments: vec![],
    };
    symbolizer.symbolize(raw, maps)
}

/// Stacks of every task, symbolized in one batch: (user frames, kernel frames) per task.
fn symbolize_all(
    pid: u32,
    tasks: &[DumpTask],
    stacks: &[UserStack],
    maps: &MapsCache,
    symbolizer: &mut Symbolizer,
) -> Vec<(Vec<Frame>, Vec<Frame>)> {
    let samples = tasks
        .iter()
        .zip(stacks)
        .map(|(t, u)| RawSample {
            pid,
            stack: RawStack {
                user: u.addrs.clone(),
                kernel: t.kstack[..(t.kstack_len as usize).min(DUMP_KSTACK_DEPTH)].to_vec(),
            },
            values: vec![1],
            labels: vec![],
        })
        .collect();
    let profile = symbolize_stacks(samples, maps, symbolizer);
    let module = |loc: &crate::model::Location| {
        loc.mapping.map(|m| {
            let file = &profile.mappings[m].file;
            file.rsplit('/').next().unwrap_or(file).to_string()
        })
    };
    profile
        .samples
        .iter()
        .map(|s| {
            let (mut user, mut kernel) = (Vec::new(), Vec::new());
            for &li in &s.locations {
                let loc = &profile.locations[li];
                let n = loc.lines.len();
                for (j, line) in loc.lines.iter().enumerate() {
                    let f = Frame {
                        address: format!("{:#x}", loc.address),
                        function: line.function.clone(),
                        file: line.file.clone(),
                        line: line.line,
                        inlined: j + 1 < n,
                        module: module(loc),
                    };
                    if loc.kernel {
                        kernel.push(f);
                    } else {
                        user.push(f);
                    }
                }
            }
            (user, kernel)
        })
        .collect()
}

/// The thread whose /proc entries show the process's memory: the main thread, or the first
/// live thread when the main thread has exited. `None` when every thread has.
pub fn address_space_tid(pid: u32, tasks: &[DumpTask]) -> Option<u32> {
    let leader_alive = tasks.iter().any(|t| t.tid == pid && t.exit_state == 0);
    if leader_alive {
        return Some(pid);
    }
    tasks.iter().find(|t| t.exit_state == 0).map(|t| t.tid)
}

/// A thread dump of process `pid`. `maps` must have been refreshed for `pid` (it symbolizes
/// and maps the unwind tables). The process keeps running throughout.
pub fn take_dump(
    collector: &mut Collector,
    pid: u32,
    maps: &MapsCache,
    symbolizer: &mut Symbolizer,
) -> Result<Dump, Error> {
    let t0 = Instant::now();
    let offsets = kernel_offsets()?;
    collector.load_dump_iterator()?;
    let setup_us = t0.elapsed().as_micros() as u64;
    let tk = Instant::now();
    let tasks = collector.dump_tasks(pid, offsets)?;
    let (wall, mono) = (SystemTime::now(), kernel::ktime_now());
    let kernel_us = tk.elapsed().as_micros() as u64;
    if tasks.is_empty() {
        return Err(Error::NoSuchProcess(pid));
    }
    let mut notes = Vec::new();

    // A process whose main thread exited (pthread_exit) lives on in its other threads: the
    // leader's /proc entries then show no address space, a live thread's do.
    let own_maps;
    let (aspace, maps) = match address_space_tid(pid, &tasks) {
        Some(tid) if tid != pid => {
            let mut m = MapsCache::new();
            m.refresh(tid)
                .map_err(|e| Error::proc_read(pid, "maps", &e))?;
            own_maps = m;
            (tid, &own_maps)
        }
        _ => (pid, maps),
    };

    let t1 = Instant::now();
    let (user_stacks, mem) = unwind_all(aspace, &tasks, maps, &mut notes);
    let unwind_us = t1.elapsed().as_micros() as u64;

    let t2 = Instant::now();
    let frames = symbolize_all(aspace, &tasks, &user_stacks, maps, symbolizer);
    let mut lock_symbols: HashMap<u64, Option<String>> = HashMap::new();
    let (taken_at, taken_at_unix_ms) = text::timestamp(wall);
    let wall_ms_at = |ktime: u64| -> u64 {
        let back_ns = mono.saturating_sub(ktime);
        taken_at_unix_ms.saturating_sub(back_ns / 1_000_000)
    };

    let mut threads: Vec<Thread> = Vec::with_capacity(tasks.len());
    for ((task, ustack), (user, kernel)) in tasks.iter().zip(user_stacks).zip(frames) {
        let kernel_names: Vec<&str> = kernel.iter().map(|f| f.function.as_str()).collect();
        let syscall = state::syscall_of(task, &kernel_names);
        let st = state::state_of(task, syscall.as_ref());
        let wait = match (&syscall, &mem) {
            (Some(sc), Some(mem)) if st == State::FutexWait && sc.nr == SYS_FUTEX => {
                let uaddr = task.regs[pt_regs::DI];
                let op = task.regs[pt_regs::SI];
                let names: Vec<&str> = user.iter().map(|f| f.function.as_str()).collect();
                let mut object = state::wait_object(op, &names);
                let word = mem.read(uaddr, OWNER_READ_LEN).unwrap_or_default();
                if state::is_pi_deadlock_park(object, op, uaddr, task.regs[pt_regs::SP], &word) {
                    object = WaitObject::PiDeadlockPark;
                }
                let mut owner_tid = state::owner_of(object, &word);
                // The word is read after the iterator's look: a waiter that was woken, took the
                // lock and ran since reads as "waiting for itself". A thread really waiting for
                // a lock it holds never runs again, so its pcount stays the iterator's.
                if owner_tid == Some(task.tid)
                    && pcount_now(pid, task.tid).is_some_and(|n| n != task.pcount)
                {
                    owner_tid = None;
                }
                let symbol = lock_symbols
                    .entry(uaddr)
                    .or_insert_with(|| symbolizer.data_symbol(aspace, uaddr, maps))
                    .clone();
                Some(Wait {
                    address: format!("{uaddr:#x}"),
                    op: state::futex_op_name(op),
                    object,
                    symbol,
                    owner_tid,
                })
            }
            _ => None,
        };
        let age_ns = task.now_ktime.saturating_sub(task.start_time);
        let created = (task.start_time != 0).then(|| Created {
            start_routine: stack::start_routine(&user).cloned(),
            started_at_unix_ms: wall_ms_at(task.start_time),
            age_ns,
        });
        threads.push(Thread {
            tid: task.tid,
            name: comm(&task.comm),
            main: task.tid == pid,
            state: st,
            in_state_ns: state::time_in_state(task, st),
            cpu: task.cpu,
            syscall,
            wait,
            user_stack: user,
            user_stack_error: ustack.error,
            kernel_stack: kernel,
            created,
            cpu_time_ns: task.sum_exec_runtime,
            voluntary_switches: task.nvcsw,
            involuntary_switches: task.nivcsw,
        });
    }
    let symbolize_us = t2.elapsed().as_micros() as u64;

    threads.sort_by_key(|t| (!t.main, t.tid));
    let running = threads.iter().filter(|t| t.state == State::Running).count();
    if running > 0 {
        notes.push(format!(
            "{running} threads were running on a CPU: their stacks are not taken (a running \
             thread's registers are saved only when it leaves the CPU)"
        ));
    }
    let deadlocks = waitfor::find_deadlocks(&threads);
    let summary = summarize(&threads);
    Ok(Dump {
        schema_version: SCHEMA_VERSION,
        pid,
        process_name: threads
            .iter()
            .find(|t| t.main)
            .map(|t| t.name.clone())
            .unwrap_or_default(),
        exe: maps.exe(aspace).map(str::to_string),
        taken_at,
        taken_at_unix_ms,
        deadlocks,
        summary,
        threads,
        notes,
        timings: Timings {
            setup_us,
            kernel_us,
            unwind_us,
            symbolize_us,
            total_us: t0.elapsed().as_micros() as u64,
        },
    })
}

/// The user stacks (raw addresses, leaf first) of the tasks of `pid` the task iterator read,
/// unwound from their saved registers and the target's memory; empty for a running thread or
/// one whose stack cannot be read. What a profiling window needs to seed the waits that began
/// before it.
pub fn user_stacks(pid: u32, tasks: &[DumpTask], maps: &MapsCache) -> Vec<Vec<u64>> {
    let aspace = address_space_tid(pid, tasks).unwrap_or(pid);
    let mut notes = Vec::new();
    let (stacks, _) = unwind_all(aspace, tasks, maps, &mut notes);
    stacks.into_iter().map(|s| s.addrs).collect()
}

/// A NUL-padded `comm` as text.
pub fn comm(raw: &[u8]) -> String {
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// The threads' states and times in state from the kernel's view alone (no stacks, no
/// symbols): what a counting `--dump-when` condition needs, cheap enough to check every second.
pub fn observe(
    collector: &mut Collector,
    pid: u32,
) -> Result<Vec<super::trigger::ThreadObs>, Error> {
    let tasks = collector.dump_tasks(pid, kernel_offsets()?)?;
    if tasks.is_empty() {
        return Err(Error::NoSuchProcess(pid));
    }
    Ok(tasks
        .iter()
        .map(|t| {
            let st = state::state_of(t, state::syscall_of(t, &[]).as_ref());
            super::trigger::ThreadObs {
                state: st,
                in_state_ns: state::time_in_state(t, st),
            }
        })
        .collect())
}

/// One check of a `--dump-when` trigger in a running `agent attach`: looks at the threads (the
/// task iterator; a full dump for `deadlock`, only after a futex wait of
/// [`super::trigger::DEADLOCK_MIN_WAIT`]), and when the condition holds and the rate limit
/// allows, writes a dump into `dir`. Returns the file written, if any.
pub fn check_trigger(
    trigger: &mut super::trigger::Trigger,
    collector: &mut Collector,
    pid: u32,
    maps: &MapsCache,
    symbolizer: &mut Symbolizer,
    dir: &std::path::Path,
    format: crate::dump::DumpFormat,
) -> Result<Option<std::path::PathBuf>, Error> {
    let obs = observe(collector, pid)?;
    let detail = text::Detail::EveryThread;
    if trigger.when.needs_full_dump() {
        if !trigger
            .when
            .worth_full_check(&obs, super::trigger::DEADLOCK_MIN_WAIT)
        {
            return Ok(None);
        }
        let dump = take_dump(collector, pid, maps, symbolizer)?;
        if !trigger.fire(trigger.when.holds_for_dump(&dump), Instant::now()) {
            return Ok(None);
        }
        return super::write_rendered(&dump, dir, format, detail).map(Some);
    }
    if !trigger.fire(trigger.when.holds(&obs), Instant::now()) {
        return Ok(None);
    }
    super::write_dump(collector, pid, maps, symbolizer, dir, format, detail).map(Some)
}
