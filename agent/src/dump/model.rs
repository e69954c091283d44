//! The thread dump as plain data: what the text and JSON renderers read. The JSON form is this
//! model serialized with serde; its schema is documented in docs/dump-schema.md and versioned
//! by [`SCHEMA_VERSION`] (fields are only ever added within a version).

use serde::{Deserialize, Serialize};

/// Version of the JSON schema (docs/dump-schema.md).
pub const SCHEMA_VERSION: u32 = 1;

/// A thread dump of one process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dump {
    pub schema_version: u32,
    pub pid: u32,
    /// The main thread's name (`comm`).
    pub process_name: String,
    /// Path of the main binary, when readable.
    pub exe: Option<String>,
    /// When the kernel's view of the threads was taken (RFC 3339, UTC).
    pub taken_at: String,
    /// The same instant in ms since the Unix epoch.
    pub taken_at_unix_ms: u64,
    /// Every cycle of the wait-for graph (threads blocked on each other for good).
    pub deadlocks: Vec<Deadlock>,
    pub summary: Summary,
    /// Every thread, main thread first, then by tid.
    pub threads: Vec<Thread>,
    /// What the dump could not do, in words (e.g. stacks of running threads).
    pub notes: Vec<String>,
    /// How long each phase of taking the dump took.
    pub timings: Timings,
}

/// Wall time of the phases of a dump, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// One-time costs of the agent process: reading `task_struct` offsets from the kernel's
    /// BTF and loading (verifying) the task iterator. Later dumps by the same agent skip them.
    pub setup_us: u64,
    /// Running the kernel task iterator (the only phase that looks at all threads at once).
    pub kernel_us: u64,
    /// Compiling unwind tables and unwinding user stacks from the target's memory.
    pub unwind_us: u64,
    /// Symbolizing stacks and lock addresses.
    pub symbolize_us: u64,
    /// Everything, from loading the iterator to the finished model.
    pub total_us: u64,
}

/// What a thread is doing, as in a Go goroutine dump's `[state]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// On a CPU right now.
    Running,
    /// Ready to run, waiting in a run queue (preempted or just woken).
    Runnable,
    /// In `futex()`: a lock, condition variable, join, semaphore...
    FutexWait,
    /// In epoll_wait, poll, select or a variant.
    IoWait,
    /// In nanosleep or clock_nanosleep.
    Sleep,
    /// Blocked in another system call (see `syscall`).
    Syscall,
    /// Uninterruptible sleep (D): disk, page faults, some kernel locks.
    Disk,
    /// Stopped by a signal (SIGSTOP, SIGTSTP).
    Stopped,
    /// Stopped by a tracer (ptrace).
    Traced,
    /// Exited, not yet reaped.
    Zombie,
    /// Exiting.
    Dead,
    /// An idle or parked kernel-side wait (TASK_IDLE, parked).
    Idle,
    /// Interruptible sleep outside any system call the agent recognizes.
    Sleeping,
}

impl State {
    /// The words used in text output (`futex wait`, `io wait`...).
    pub fn label(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Runnable => "runnable",
            State::FutexWait => "futex wait",
            State::IoWait => "io wait",
            State::Sleep => "sleep",
            State::Syscall => "syscall",
            State::Disk => "disk",
            State::Stopped => "stopped",
            State::Traced => "traced",
            State::Zombie => "zombie",
            State::Dead => "dead",
            State::Idle => "idle",
            State::Sleeping => "sleeping",
        }
    }

    /// Whether the thread is waiting for something (not running or ready to run).
    pub fn is_blocked(self) -> bool {
        !matches!(self, State::Running | State::Runnable)
    }
}

/// One thread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thread {
    pub tid: u32,
    /// Thread name (`comm`, at most 15 bytes).
    pub name: String,
    /// The process's main thread (tid == pid).
    pub main: bool,
    pub state: State,
    /// How long it has been in this state, in ns. Blocked states: since it left the CPU;
    /// running: since it went on the CPU; runnable: since it was queued. `None` when unknown.
    pub in_state_ns: Option<u64>,
    /// The CPU it runs on (running) or last ran on.
    pub cpu: u32,
    /// The system call it is in, when it is in one.
    pub syscall: Option<Syscall>,
    /// What a thread in `futex wait` waits for.
    pub wait: Option<Wait>,
    /// User stack, innermost frame first (empty when not available: see `user_stack_error`).
    pub user_stack: Vec<Frame>,
    /// Why the user stack is missing or may be incomplete.
    pub user_stack_error: Option<String>,
    /// Kernel stack, innermost frame first.
    pub kernel_stack: Vec<Frame>,
    /// The thread's start routine and creation time.
    pub created: Option<Created>,
    /// CPU time used so far, ns.
    pub cpu_time_ns: u64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
}

/// A system call by number and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Syscall {
    pub nr: i64,
    pub name: String,
}

/// What kind of object a futex waiter waits on, told by the glibc function it waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitObject {
    /// `pthread_mutex_t` (owner tid at +8 of the futex word).
    Mutex,
    /// Priority-inheritance futex (`FUTEX_LOCK_PI`): the word holds the owner's tid.
    PiMutex,
    /// `pthread_cond_t`.
    ConditionVariable,
    /// `pthread_join`: the word is the joined thread's tid until it exits.
    Join,
    Semaphore,
    Barrier,
    /// `pthread_rwlock_t`.
    RwLock,
    /// Parked forever by glibc in `pthread_mutex_lock` after the kernel refused a
    /// priority-inheritance lock with EDEADLK: the kernel itself found a deadlock. The futex
    /// word is a dummy on the thread's stack; the mutex it wanted is not known.
    PiDeadlockPark,
    /// A futex word the agent cannot attribute.
    Unknown,
}

impl WaitObject {
    /// Whether threads waiting on it wait for a lock someone holds (contention), rather than
    /// for an event (idle workers on a condition variable, a semaphore, a join).
    pub fn is_lock(self) -> bool {
        matches!(
            self,
            Self::Mutex | Self::PiMutex | Self::RwLock | Self::PiDeadlockPark
        )
    }

    pub fn label(self) -> &'static str {
        match self {
            WaitObject::Mutex => "mutex",
            WaitObject::PiMutex => "PI mutex",
            WaitObject::ConditionVariable => "condition variable",
            WaitObject::Join => "join",
            WaitObject::Semaphore => "semaphore",
            WaitObject::Barrier => "barrier",
            WaitObject::RwLock => "rwlock",
            WaitObject::PiDeadlockPark => "parked forever: the kernel reported a PI-mutex deadlock",
            WaitObject::Unknown => "futex",
        }
    }
}

/// The object of a futex wait.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Wait {
    /// The futex word's address in the target (hex, `0x...`).
    pub address: String,
    /// The futex operation (`FUTEX_WAIT_PRIVATE`, `FUTEX_LOCK_PI`...).
    pub op: String,
    pub object: WaitObject,
    /// The ELF symbol of the address (`big_lock`, `queue+0x28`), when it has one.
    pub symbol: Option<String>,
    /// Mutexes: the thread holding it. Joins: the thread being joined.
    pub owner_tid: Option<u32>,
}

/// One frame of a stack.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Frame {
    /// Instruction address (hex). For callers it is the return address; every inlined
    /// frame of one address repeats it.
    pub address: String,
    /// Function name, or `binary+0xSTART` (the start of the enclosing function, from
    /// `.eh_frame`) / `[unknown] 0x...` when it has no symbol.
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// This frame was inlined into the next one (same address).
    pub inlined: bool,
    /// File name of the mapping (`libc.so.6`, `[kernel.kallsyms]`).
    pub module: Option<String>,
}

/// Where a thread came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Created {
    /// The function it started in (`pthread_create`'s start routine; `main` for the main
    /// thread), found at the root of its stack.
    pub start_routine: Option<Frame>,
    /// Creation time, ms since the Unix epoch.
    pub started_at_unix_ms: u64,
    /// Age of the thread at the dump, ns.
    pub age_ns: u64,
}

/// One edge of a deadlock cycle: `tid` waits for `owner_tid` through `wait`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlockEdge {
    pub tid: u32,
    pub name: String,
    pub wait: Wait,
    pub owner_tid: u32,
    /// How long `tid` has been waiting, ns.
    pub waiting_ns: Option<u64>,
    /// The edge is inferred, not read: a thread parked after the kernel reported a PI-mutex
    /// deadlock waits for the one thread whose chain of waits leads back to it.
    pub inferred: bool,
}

/// A cycle in the wait-for graph, starting at its lowest tid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadlock {
    pub cycle: Vec<DeadlockEdge>,
    /// Threads not in the cycle that wait (directly or through others) for one in it.
    pub blocked_behind: Vec<u32>,
    /// The one-line description printed as `DEADLOCK: ...`.
    pub description: String,
}

/// Threads counted by state, and the longest-blocked ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub threads: usize,
    /// Largest count first.
    pub by_state: Vec<StateCount>,
    /// Blocked threads (not running or runnable) that have waited longest, longest first.
    pub longest_blocked: Vec<BlockedThread>,
    /// The threads in `futex_wait` by what they wait on (lock waits apart from idle condition
    /// variables and semaphores), largest count first.
    #[serde(default)]
    pub futex_by_object: Vec<ObjectCount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectCount {
    pub object: WaitObject,
    pub count: usize,
    /// Waiting for a lock someone holds (mutex, rwlock), not for an event.
    pub lock: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCount {
    pub state: State,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedThread {
    pub tid: u32,
    pub name: String,
    pub state: State,
    pub in_state_ns: u64,
}
