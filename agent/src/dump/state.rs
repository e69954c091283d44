//! A thread's state and time in state from what the task iterator read (pure).

use stallscope_common::dump::{DumpTask, pt_regs};

use super::model::{State, Syscall, WaitObject};

// task_struct.__state bits (include/linux/sched.h).
const TASK_INTERRUPTIBLE: u32 = 0x1;
const TASK_UNINTERRUPTIBLE: u32 = 0x2;
const TASK_STOPPED: u32 = 0x4;
const TASK_TRACED: u32 = 0x8;
const TASK_PARKED: u32 = 0x40;
const TASK_NOLOAD: u32 = 0x400;
// task_struct.exit_state bits.
const EXIT_DEAD: u32 = 0x10;
const EXIT_ZOMBIE: u32 = 0x20;

// x86-64 syscall numbers of the waits with a state of their own.
const SYS_POLL: i64 = 7;
const SYS_SELECT: i64 = 23;
const SYS_NANOSLEEP: i64 = 35;
pub const SYS_FUTEX: i64 = 202;
const SYS_CLOCK_NANOSLEEP: i64 = 230;
const SYS_EPOLL_WAIT: i64 = 232;
const SYS_PSELECT6: i64 = 270;
const SYS_PPOLL: i64 = 271;
const SYS_EPOLL_PWAIT: i64 = 281;
const SYS_EPOLL_PWAIT2: i64 = 441;
pub const SYS_FUTEX_WAITV: i64 = 449;

/// Largest number treated as a syscall number when the kernel stack cannot tell.
const MAX_SYSCALL_NR: u64 = 1024;

/// The name of x86-64 syscall `nr`.
pub fn syscall_name(nr: i64) -> String {
    usize::try_from(nr)
        .ok()
        .and_then(syscalls::Sysno::new)
        .map(|s| s.name().to_string())
        .unwrap_or_else(|| format!("syscall_{nr}"))
}

/// The system call a blocked thread is in. The saved `orig_ax` is a syscall number only when
/// the thread entered the kernel through `syscall` (for an exception it is an error code), so
/// the kernel stack decides when there is one: `kernel_functions` are its frames' names.
pub fn syscall_of(task: &DumpTask, kernel_functions: &[&str]) -> Option<Syscall> {
    if task.flags & stallscope_common::dump::DUMP_REGS_OK == 0 {
        return None;
    }
    let nr = task.regs[pt_regs::ORIG_AX];
    let in_syscall = if kernel_functions.is_empty() {
        nr < MAX_SYSCALL_NR
    } else {
        kernel_functions
            .iter()
            .any(|f| f.starts_with("do_syscall_64") || f.starts_with("entry_SYSCALL_64"))
    };
    (in_syscall && nr < MAX_SYSCALL_NR).then(|| Syscall {
        nr: nr as i64,
        name: syscall_name(nr as i64),
    })
}

/// The thread's state from the scheduler's view and the syscall it is in.
pub fn state_of(task: &DumpTask, syscall: Option<&Syscall>) -> State {
    if task.exit_state & EXIT_ZOMBIE != 0 {
        return State::Zombie;
    }
    if task.exit_state & EXIT_DEAD != 0 {
        return State::Dead;
    }
    let s = task.state;
    if s == 0 {
        return if task.on_cpu != 0 {
            State::Running
        } else {
            State::Runnable
        };
    }
    if s & TASK_STOPPED != 0 {
        return State::Stopped;
    }
    if s & TASK_TRACED != 0 {
        return State::Traced;
    }
    if s & TASK_UNINTERRUPTIBLE != 0 {
        return if s & TASK_NOLOAD != 0 {
            State::Idle
        } else {
            State::Disk
        };
    }
    if s & TASK_PARKED != 0 {
        return State::Idle;
    }
    if s & TASK_INTERRUPTIBLE != 0 {
        return syscall_state(task, syscall.map(|s| s.nr));
    }
    State::Sleeping
}

/// The state of a thread asleep in syscall `nr` (`None`: in none it recognizes); a select or
/// poll without descriptors is a sleep (`is_fdless_wait`).
pub fn syscall_state(task: &DumpTask, nr: Option<i64>) -> State {
    match nr {
        Some(n)
            if stallscope_common::is_fdless_wait(
                n,
                task.regs[pt_regs::DI],
                task.regs[pt_regs::SI],
            ) =>
        {
            State::Sleep
        }
        Some(SYS_FUTEX | SYS_FUTEX_WAITV) => State::FutexWait,
        Some(
            SYS_POLL | SYS_SELECT | SYS_PSELECT6 | SYS_PPOLL | SYS_EPOLL_WAIT | SYS_EPOLL_PWAIT
            | SYS_EPOLL_PWAIT2,
        ) => State::IoWait,
        Some(SYS_NANOSLEEP | SYS_CLOCK_NANOSLEEP) => State::Sleep,
        Some(_) => State::Syscall,
        None => State::Sleeping,
    }
}

/// When the thread last left its CPU, in the run-queue clock: it went on at `last_arrival`
/// and ran `sum_exec_runtime - prev_sum_exec_runtime` before leaving.
pub fn departure_rq(task: &DumpTask) -> Option<u64> {
    if task.last_arrival == 0 {
        return None;
    }
    let ran = task
        .sum_exec_runtime
        .checked_sub(task.prev_sum_exec_runtime)?;
    Some(task.last_arrival.saturating_add(ran))
}

/// How long the thread has been in `state`, ns (see [`super::model::Thread::in_state_ns`]).
pub fn time_in_state(task: &DumpTask, state: State) -> Option<u64> {
    let since = match state {
        State::Running => (task.last_arrival != 0).then_some(task.last_arrival)?,
        State::Runnable if task.last_queued != 0 => task.last_queued,
        _ => departure_rq(task)?,
    };
    Some(task.now_rq.saturating_sub(since))
}

// futex(2) operations.
const FUTEX_PRIVATE_FLAG: u64 = 128;
const FUTEX_CLOCK_REALTIME: u64 = 256;
pub const FUTEX_LOCK_PI: u64 = 6;
pub const FUTEX_LOCK_PI2: u64 = 13;

const FUTEX_OPS: [&str; 14] = [
    "FUTEX_WAIT",
    "FUTEX_WAKE",
    "FUTEX_FD",
    "FUTEX_REQUEUE",
    "FUTEX_CMP_REQUEUE",
    "FUTEX_WAKE_OP",
    "FUTEX_LOCK_PI",
    "FUTEX_UNLOCK_PI",
    "FUTEX_TRYLOCK_PI",
    "FUTEX_WAIT_BITSET",
    "FUTEX_WAKE_BITSET",
    "FUTEX_WAIT_REQUEUE_PI",
    "FUTEX_CMP_REQUEUE_PI",
    "FUTEX_LOCK_PI2",
];

/// The futex command without its flags.
pub fn futex_cmd(op: u64) -> u64 {
    op & !(FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME)
}

/// `FUTEX_WAIT_PRIVATE`, `FUTEX_LOCK_PI`, ... (as strace names them).
pub fn futex_op_name(op: u64) -> String {
    let cmd = futex_cmd(op);
    let mut name = match FUTEX_OPS.get(cmd as usize) {
        Some(n) => n.to_string(),
        None => format!("FUTEX_OP_{cmd}"),
    };
    if op & FUTEX_PRIVATE_FLAG != 0 {
        name.push_str("_PRIVATE");
    }
    if op & FUTEX_CLOCK_REALTIME != 0 {
        name.push_str("|FUTEX_CLOCK_REALTIME");
    }
    name
}

/// glibc functions a futex waiter waits in, by the object they wait on (matched as substrings
/// of the symbolized frames, innermost first; the first match wins).
const WAIT_FUNCTIONS: &[(&str, WaitObject)] = &[
    ("pthread_cond_", WaitObject::ConditionVariable),
    ("__pthread_cond_wait", WaitObject::ConditionVariable),
    ("pthread_rwlock_", WaitObject::RwLock),
    ("pthread_mutex_lock", WaitObject::Mutex),
    ("pthread_mutex_timedlock", WaitObject::Mutex),
    ("pthread_mutex_clocklock", WaitObject::Mutex),
    ("__pthread_mutex_lock", WaitObject::Mutex),
    ("pthread_join", WaitObject::Join),
    ("pthread_timedjoin", WaitObject::Join),
    ("pthread_clockjoin", WaitObject::Join),
    ("sem_wait", WaitObject::Semaphore),
    ("sem_timedwait", WaitObject::Semaphore),
    ("sem_clockwait", WaitObject::Semaphore),
    ("__new_sem_wait", WaitObject::Semaphore),
    ("pthread_barrier_wait", WaitObject::Barrier),
];

/// What a futex waiter waits on, from its operation and its user stack's function names
/// (innermost first; the first few frames decide).
pub fn wait_object(op: u64, user_functions: &[&str]) -> WaitObject {
    for f in user_functions.iter().take(8) {
        if let Some((_, obj)) = WAIT_FUNCTIONS.iter().find(|(name, _)| f.contains(name)) {
            return match (obj, futex_cmd(op)) {
                (WaitObject::Mutex, FUTEX_LOCK_PI | FUTEX_LOCK_PI2) => WaitObject::PiMutex,
                (obj, _) => *obj,
            };
        }
    }
    match futex_cmd(op) {
        FUTEX_LOCK_PI | FUTEX_LOCK_PI2 => WaitObject::PiMutex,
        _ => WaitObject::Unknown,
    }
}

/// `FUTEX_TID_MASK`: the owner's tid in a PI futex word.
pub const FUTEX_TID_MASK: u32 = 0x3fff_ffff;

/// `PID_MAX_LIMIT` on 64-bit: no tid is larger.
pub const PID_MAX_LIMIT: u32 = 1 << 22;

pub const FUTEX_WAIT: u64 = 0;
const FUTEX_WAIT_BITSET: u64 = 9;

/// Whether a thread waiting in `pthread_mutex_lock` (`object` from [`wait_object`]) is parked
/// by glibc after the kernel refused a PI lock with EDEADLK: glibc then waits forever on a zero
/// `int` on its own stack (`lll_timedwait (&(int){0}, 0, ...)`), so the futex word is just
/// above the stack pointer and holds 0.
pub fn is_pi_deadlock_park(object: WaitObject, op: u64, uaddr: u64, sp: u64, word: &[u8]) -> bool {
    const STACK_WINDOW: u64 = 64 * 1024;
    object == WaitObject::Mutex
        && matches!(futex_cmd(op), FUTEX_WAIT | FUTEX_WAIT_BITSET)
        && uaddr >= sp
        && uaddr - sp < STACK_WINDOW
        && word.get(..4) == Some(&[0, 0, 0, 0])
}

/// Bytes after the futex word to read to find its owner.
pub const OWNER_READ_LEN: usize = 12;

/// The thread a waiter waits for, from the memory at the futex word (`word[0..4]` is the word,
/// `word[8..12]` glibc's `__owner` of a `pthread_mutex_t`).
pub fn owner_of(object: WaitObject, word: &[u8]) -> Option<u32> {
    let u32_at = |o: usize| {
        word.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let tid = match object {
        WaitObject::Mutex => u32_at(8)?,
        WaitObject::PiMutex => u32_at(0)? & FUTEX_TID_MASK,
        // The joined thread's `pd->tid`, cleared by the kernel when it exits.
        WaitObject::Join => u32_at(0)?,
        _ => return None,
    };
    (tid != 0 && tid <= PID_MAX_LIMIT).then_some(tid)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record with every field zero.
    pub(crate) fn blank_task(tid: u32) -> DumpTask {
        // SAFETY: `DumpTask` is plain integers; all-zero is a valid value.
        let mut t: DumpTask = unsafe { std::mem::zeroed() };
        t.tid = tid;
        t.tgid = tid;
        t
    }

    fn in_syscall(nr: u64) -> DumpTask {
        let mut t = blank_task(1);
        t.state = TASK_INTERRUPTIBLE;
        t.flags = stallscope_common::dump::DUMP_REGS_OK;
        t.regs[pt_regs::ORIG_AX] = nr;
        t
    }

    const SYSCALL_STACK: &[&str] = &["futex_wait", "do_syscall_64", "entry_SYSCALL_64"];

    #[test]
    fn states_from_syscalls() {
        let cases = [
            (202, State::FutexWait),
            (232, State::IoWait),
            (7, State::IoWait),
            (230, State::Sleep),
            (0, State::Syscall),
        ];
        for (nr, want) in cases {
            let mut t = in_syscall(nr);
            // Descriptors to wait on (nfds is select's first argument, poll's second).
            t.regs[pt_regs::DI] = 4;
            t.regs[pt_regs::SI] = 2;
            let sc = syscall_of(&t, SYSCALL_STACK);
            assert_eq!(state_of(&t, sc.as_ref()), want, "syscall {nr}");
        }
        // select or poll without descriptors is a sleep (PostgreSQL's pg_usleep).
        for (nr, di, si, want) in [
            (23, 0, 0, State::Sleep),
            (23, 5, 0, State::IoWait),
            (270, 0, 0x7ffd_0000, State::Sleep),
            (7, 0x7ffd_0000, 0, State::Sleep),
            (271, 0x7ffd_0000, 1, State::IoWait),
        ] {
            let mut t = in_syscall(nr);
            t.regs[pt_regs::DI] = di;
            t.regs[pt_regs::SI] = si;
            let sc = syscall_of(&t, SYSCALL_STACK);
            assert_eq!(
                state_of(&t, sc.as_ref()),
                want,
                "syscall {nr} ({di:#x}, {si:#x})"
            );
        }
        let t = in_syscall(0);
        assert_eq!(syscall_of(&t, SYSCALL_STACK).unwrap().name, "read");
        // A page fault's error code is not a syscall.
        let t = in_syscall(6);
        let sc = syscall_of(&t, &["handle_mm_fault", "exc_page_fault"]);
        assert_eq!(sc, None);
        assert_eq!(state_of(&t, None), State::Sleeping);
        // No kernel stack: believe orig_ax when it is a plausible number.
        assert_eq!(syscall_of(&in_syscall(202), &[]).unwrap().nr, 202);
        assert_eq!(syscall_of(&in_syscall(u64::MAX), &[]), None);
        // No saved registers: no syscall.
        let mut t = in_syscall(202);
        t.flags = 0;
        assert_eq!(syscall_of(&t, SYSCALL_STACK), None);
    }

    #[test]
    fn scheduler_states() {
        let mut t = blank_task(1);
        t.on_cpu = 1;
        assert_eq!(state_of(&t, None), State::Running);
        t.on_cpu = 0;
        assert_eq!(state_of(&t, None), State::Runnable);
        t.state = TASK_UNINTERRUPTIBLE;
        assert_eq!(state_of(&t, None), State::Disk);
        t.state = TASK_UNINTERRUPTIBLE | TASK_NOLOAD;
        assert_eq!(state_of(&t, None), State::Idle);
        t.state = TASK_STOPPED;
        assert_eq!(state_of(&t, None), State::Stopped);
        t.state = TASK_TRACED;
        assert_eq!(state_of(&t, None), State::Traced);
        t.exit_state = EXIT_ZOMBIE;
        assert_eq!(state_of(&t, None), State::Zombie);
    }

    #[test]
    fn time_in_state_uses_departure() {
        let mut t = blank_task(1);
        t.last_arrival = 1_000;
        t.prev_sum_exec_runtime = 50_000;
        t.sum_exec_runtime = 50_400; // ran 400 ns, left at 1_400
        t.now_rq = 5_001_400;
        assert_eq!(departure_rq(&t), Some(1_400));
        assert_eq!(time_in_state(&t, State::FutexWait), Some(5_000_000));
        assert_eq!(time_in_state(&t, State::Running), Some(5_000_400));
        t.last_queued = 5_000_400;
        assert_eq!(time_in_state(&t, State::Runnable), Some(1_000));
        // Never ran (or unknown): no time.
        t.last_arrival = 0;
        assert_eq!(time_in_state(&t, State::FutexWait), None);
        // A clock that went backwards clamps to zero.
        t.last_arrival = 10_000_000;
        assert_eq!(time_in_state(&t, State::Sleep), Some(0));
    }

    #[test]
    fn futex_ops_and_objects() {
        assert_eq!(futex_op_name(128), "FUTEX_WAIT_PRIVATE");
        assert_eq!(
            futex_op_name(9 | 128 | 256),
            "FUTEX_WAIT_BITSET_PRIVATE|FUTEX_CLOCK_REALTIME"
        );
        assert_eq!(futex_op_name(6), "FUTEX_LOCK_PI");
        assert_eq!(futex_op_name(99), "FUTEX_OP_99");
        let mutex = ["libc.so.6+0x9a3b2", "pthread_mutex_lock", "transfer"];
        assert_eq!(wait_object(128, &mutex), WaitObject::Mutex);
        assert_eq!(wait_object(6 | 128, &mutex), WaitObject::PiMutex);
        assert_eq!(
            wait_object(
                9 | 128,
                &[
                    "__futex_abstimed_wait_common",
                    "pthread_cond_wait@@GLIBC_2.3.2"
                ]
            ),
            WaitObject::ConditionVariable
        );
        assert_eq!(
            wait_object(9, &["__pthread_clockjoin_ex", "main"]),
            WaitObject::Join
        );
        assert_eq!(
            wait_object(128, &["my_futex_wait", "main"]),
            WaitObject::Unknown
        );
        assert_eq!(wait_object(6, &["my_lock"]), WaitObject::PiMutex);
    }

    #[test]
    fn owners_from_memory() {
        let mut word = [0u8; 12];
        word[0..4].copy_from_slice(&2u32.to_le_bytes());
        word[8..12].copy_from_slice(&4243u32.to_le_bytes());
        assert_eq!(owner_of(WaitObject::Mutex, &word), Some(4243));
        // PI: owner tid in the word, with FUTEX_WAITERS set.
        word[0..4].copy_from_slice(&(0x8000_0000u32 | 777).to_le_bytes());
        assert_eq!(owner_of(WaitObject::PiMutex, &word), Some(777));
        word[0..4].copy_from_slice(&4250u32.to_le_bytes());
        assert_eq!(owner_of(WaitObject::Join, &word), Some(4250));
        assert_eq!(owner_of(WaitObject::ConditionVariable, &word), None);
        assert_eq!(owner_of(WaitObject::Mutex, &[0u8; 12]), None);
        assert_eq!(owner_of(WaitObject::Mutex, &[1u8; 4]), None, "short read");
        // Not a tid (the word is not a mutex after all).
        word[8..12].copy_from_slice(&853_374_309u32.to_le_bytes());
        assert_eq!(owner_of(WaitObject::Mutex, &word), None);
    }

    #[test]
    fn glibc_parks_pi_deadlocks_on_its_stack() {
        let sp = 0x7f00_0000_1000;
        let zero = [0u8; 12];
        let wait_bitset = 9 | 128 | 256;
        assert!(is_pi_deadlock_park(
            WaitObject::Mutex,
            wait_bitset,
            sp + 0x64,
            sp,
            &zero
        ));
        // A robust mutex waits on its own (global) word: not a park.
        assert!(!is_pi_deadlock_park(
            WaitObject::Mutex,
            0,
            0x5555_0000_4040,
            sp,
            &zero
        ));
        // Nonzero word, below sp, or not in pthread_mutex_lock: not a park.
        assert!(!is_pi_deadlock_park(
            WaitObject::Mutex,
            0,
            sp + 8,
            sp,
            &[2, 0, 0, 0]
        ));
        assert!(!is_pi_deadlock_park(
            WaitObject::Mutex,
            0,
            sp - 8,
            sp,
            &zero
        ));
        assert!(!is_pi_deadlock_park(
            WaitObject::ConditionVariable,
            0,
            sp + 8,
            sp,
            &zero
        ));
        assert!(!is_pi_deadlock_park(
            WaitObject::Mutex,
            6,
            sp + 8,
            sp,
            &zero
        ));
    }
}
