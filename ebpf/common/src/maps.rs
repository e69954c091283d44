//! Every map the agent and the programs share, declared once: its name in the BPF object and
//! its key and value types. The programs declare each map as `HashMap<Key<M>, Value<M>>` (the
//! static's name is the map's name, and so is the spec's: `maps::THREADS`), the agent opens it as
//! `hash::<maps::THREADS>()`; `Collector::load`
//! checks every name in [`ALL`] is in the object, and aya checks the key and value sizes
//! whenever the agent opens a map.

use crate::{
    BlockKey, BlockValue, Config, CpuKey, FirstSeen, GoParkKey, GoParked, GoProc, GoSema, LockKey,
    LockState, MutexKey, MutexValue, OffcpuKey, OffcpuValue, ProcMappings, RunqKey, ThreadExit,
    ThreadState, UnwindRow, UserStack, WalkCacheEntry, WalkCacheKey, dump::DumpConfig,
};

/// A map shared with the agent: its name, key and value.
pub trait MapSpec {
    const NAME: &'static str;
    type Key: Copy + 'static;
    type Value: Copy + 'static;
}

/// The key type of map `M`.
pub type Key<M> = <M as MapSpec>::Key;
/// The value type of map `M` (of one CPU's slot for per-CPU maps).
pub type Value<M> = <M as MapSpec>::Value;

macro_rules! maps {
    ($($(#[$doc:meta])* $name:ident: $k:ty => $v:ty;)*) => {
        $(
            $(#[$doc])*
            #[allow(non_camel_case_types)]
            pub struct $name;
            impl MapSpec for $name {
                const NAME: &'static str = stringify!($name);
                type Key = $k;
                type Value = $v;
            }
        )*
        /// Every shared map's name, key size and value size.
        pub const ALL: &[(&str, usize, usize)] = &[
            $((stringify!($name), core::mem::size_of::<$k>(), core::mem::size_of::<$v>())),*
        ];
    };
}

maps! {
    /// Target processes: bit `tgid % 64` of word `tgid / 64` (`target_bit`).
    TARGET_BITS: u32 => u64;
    /// Event and loss counters per CPU, indexed by `Counter`.
    COUNTERS: u32 => u64;
    /// What to record and at which rates (one entry).
    CONFIG: u32 => Config;
    /// CPU samples per (process, thread, stacks).
    CPU_SAMPLES: CpuKey => u64;
    /// Off-CPU time per (process, thread, stacks, class).
    OFFCPU: OffcpuKey => OffcpuValue;
    /// Block-profile events per (process, thread, stack).
    BLOCK: BlockKey => BlockValue;
    /// Run-queue latency histogram per process.
    RUNQ_HIST: RunqKey => u64;
    /// Mutex-profile delay charged to releasing stacks.
    MUTEX: MutexKey => MutexValue;
    /// The waiters' side of the mutex profile (to tell locks from condition variables).
    LOCK_WAITERS: MutexKey => MutexValue;
    /// Waiters per futex word.
    LOCKS: LockKey => LockState;
    /// Per-thread state of target threads.
    THREADS: u32 => ThreadState;
    /// Threads off CPU when the window opened: their first wakeup and switch-in.
    FIRST_SEEN: u32 => FirstSeen;
    /// Target threads that exited in the window.
    EXITED: u32 => ThreadExit;
    /// Compiled CFI rows of every mapped file.
    UNWIND_ROWS: u32 => UnwindRow;
    /// Each target's executable mappings, for the unwinder.
    PROC_MAPPINGS: u32 => ProcMappings;
    /// User stacks by handle.
    USER_STACKS: u64 => UserStack;
    /// Finished walks by (tid, ip), with the stack words they read.
    WALK_CACHE: WalkCacheKey => WalkCacheEntry;
    /// The walk cache's generation, bumped when a mapping table changes.
    WALK_GEN: u32 => u64;
    /// The task iterator's target and offsets.
    DUMP_CONFIG: u32 => DumpConfig;
    /// Processes forked by a target (`CONFIG_FOLLOW`): child tgid → parent tgid.
    FOLLOWED: u32 => u32;
    /// Go programs whose goroutines the block profile follows, by tgid.
    GO_PROCS: u32 => GoProc;
    /// Parked goroutines (`gopark`) awaiting their `ready`.
    GO_PARKED: GoParkKey => GoParked;
    /// Goroutines entering a lock's semaphore wait (`runtime_SemacquireMutex`).
    GO_SEMA: GoParkKey => GoSema;
}
