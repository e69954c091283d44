//! Thread dumps: what the `dump_task` task iterator writes for every thread of the target.
//!
//! The agent fills one [`DumpConfig`] (target tgid and `task_struct` member offsets read from
//! the kernel's BTF) into the `DUMP_CONFIG` array, attaches the iterator, and reads a stream of
//! fixed-size [`DumpTask`] records from the iterator's file. Nothing is stopped or signalled:
//! the iterator reads kernel memory while the target keeps running.

/// Kernel stack frames kept per thread (a blocked thread's kernel stack is 10-25 frames).
pub const DUMP_KSTACK_DEPTH: usize = 64;

/// `TASK_COMM_LEN`.
pub const DUMP_COMM_LEN: usize = 16;

/// Words of x86-64 `struct pt_regs` (the uapi layout: r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax
/// cx dx si di orig_ax ip cs flags sp ss).
pub const PT_REGS_WORDS: usize = 21;

/// Indexes into [`DumpTask::regs`].
pub mod pt_regs {
    pub const BP: usize = 4;
    pub const R10: usize = 7;
    pub const AX: usize = 10;
    pub const DX: usize = 12;
    pub const SI: usize = 13;
    pub const DI: usize = 14;
    pub const ORIG_AX: usize = 15;
    pub const IP: usize = 16;
    pub const CS: usize = 17;
    pub const SP: usize = 19;
}

shared! {
    /// Byte offsets of the `task_struct` members the iterator reads (nested members are the sum of
    /// the outer and inner offsets, e.g. `sched_info.last_arrival`).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct DumpOffsets {
        pub pid: u32,
        pub tgid: u32,
        /// `__state`
        pub state: u32,
        pub exit_state: u32,
        pub flags: u32,
        pub on_cpu: u32,
        pub on_rq: u32,
        /// `thread_info.cpu`
        pub cpu: u32,
        pub comm: u32,
        pub start_time: u32,
        pub nvcsw: u32,
        pub nivcsw: u32,
        /// `sched_info.pcount`
        pub pcount: u32,
        /// `sched_info.last_arrival`
        pub last_arrival: u32,
        /// `sched_info.last_queued`
        pub last_queued: u32,
        /// `se.exec_start`
        pub exec_start: u32,
        /// `se.sum_exec_runtime`
        pub sum_exec_runtime: u32,
        /// `se.prev_sum_exec_runtime`
        pub prev_sum_exec_runtime: u32,
    }
}

shared! {
    /// What the agent tells the iterator (value 0 of `DUMP_CONFIG`).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct DumpConfig {
        /// Process whose threads are written; 0 writes nothing.
        pub tgid: u32,
        pub _pad: u32,
        pub offsets: DumpOffsets,
    }
}

/// `DumpTask::flags`: `regs` holds the thread's saved user registers.
pub const DUMP_REGS_OK: u32 = 1;
/// `DumpTask::flags`: `bpf_get_task_stack` failed (the kernel stack is empty).
pub const DUMP_KSTACK_ERR: u32 = 2;

shared! {
    /// One thread as the iterator saw it. Times are in two clocks: `*_ktime` is CLOCK_MONOTONIC
    /// (`bpf_ktime_get_ns`); the scheduler fields (`last_arrival`, `last_queued`) use the run
    /// queue clock (`sched_clock`), and `now_rq` is "now" in that clock, estimated from the running
    /// (iterating) task's own `last_arrival + sum_exec_runtime - prev_sum_exec_runtime`.
    #[derive(Clone, Copy, Debug)]
    pub struct DumpTask {
        pub tid: u32,
        pub tgid: u32,
        /// `task_struct.__state` (`TASK_*` bits).
        pub state: u32,
        pub exit_state: u32,
        /// `PF_*` bits.
        pub task_flags: u32,
        pub on_cpu: u32,
        pub on_rq: u32,
        pub cpu: u32,
        pub comm: [u8; DUMP_COMM_LEN],
        /// CLOCK_MONOTONIC ns when the thread was created.
        pub start_time: u64,
        pub nvcsw: u64,
        pub nivcsw: u64,
        /// Times the thread was put on a CPU.
        pub pcount: u64,
        /// rq clock when it last went on a CPU.
        pub last_arrival: u64,
        /// rq clock when it was last queued to run (0: not waiting in a run queue).
        pub last_queued: u64,
        pub exec_start: u64,
        pub sum_exec_runtime: u64,
        pub prev_sum_exec_runtime: u64,
        /// `bpf_ktime_get_ns()` when the record was written.
        pub now_ktime: u64,
        /// "Now" in the rq clock (see the type's documentation).
        pub now_rq: u64,
        /// Saved user registers (`bpf_task_pt_regs`), valid when `flags & DUMP_REGS_OK`.
        pub regs: [u64; PT_REGS_WORDS],
        /// `DUMP_*` flags.
        pub flags: u32,
        /// Frames in `kstack`.
        pub kstack_len: u32,
        /// Kernel stack, innermost first.
        pub kstack: [u64; DUMP_KSTACK_DEPTH],
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: `#[repr(C)]` integers (and integer arrays) without implicit padding.
    unsafe impl aya::Pod for DumpOffsets {}
    unsafe impl aya::Pod for DumpConfig {}
    unsafe impl aya::Pod for DumpTask {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<DumpOffsets>(), 18 * 4);
        assert_eq!(core::mem::size_of::<DumpConfig>(), 8 + 18 * 4);
        let words = 8 * 4 + DUMP_COMM_LEN + 11 * 8 + PT_REGS_WORDS * 8 + 8 + DUMP_KSTACK_DEPTH * 8;
        assert_eq!(core::mem::size_of::<DumpTask>(), words);
    }
}
