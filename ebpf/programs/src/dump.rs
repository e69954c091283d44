//! Thread dumps: a BPF task iterator (`iter/task`) that writes one [`DumpTask`] record per
//! thread of the target process into the iterator's seq file. It runs when the agent reads
//! that file, in the agent's own context: the target is neither stopped nor signalled.
//!
//! aya-ebpf 0.2 has no `#[iter]` macro, so the program is declared by hand: a `no_mangle`
//! function in the `iter/task` section whose context is `struct bpf_iter__task`.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{seq_file, task_struct},
    helpers::{
        bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_task, bpf_get_task_stack, bpf_probe_read_kernel as read_raw,
            bpf_seq_write, bpf_task_pt_regs,
        },
    },
    macros::map,
    maps::{Array, PerCpuArray},
};
use stallscope_common::dump::{
    DUMP_COMM_LEN, DUMP_KSTACK_DEPTH, DUMP_KSTACK_ERR, DUMP_REGS_OK, DumpOffsets, DumpTask,
    PT_REGS_WORDS,
};
use stallscope_common::maps::{self, Value};

/// Target and `task_struct` offsets, written by the agent before each dump.
#[map]
static DUMP_CONFIG: Array<Value<maps::DUMP_CONFIG>> = Array::with_max_entries(1, 0);

/// The record being built (too large for the 512-byte BPF stack).
#[map]
static DUMP_SCRATCH: PerCpuArray<DumpTask> = PerCpuArray::with_max_entries(1, 0);

/// `struct bpf_iter_meta` (only `seq` is used).
#[repr(C)]
struct IterMeta {
    seq: *mut seq_file,
    session_id: u64,
    seq_num: u64,
}

/// `struct bpf_iter__task`: the program's context. `task` is NULL on the final call.
#[repr(C)]
struct IterTask {
    meta: *const IterMeta,
    task: *mut task_struct,
}

/// `EXIT_ZOMBIE | EXIT_DEAD`: the thread has exited; its stack may already be freed.
const EXIT_STATES: u32 = 0x10 | 0x20;

#[inline(always)]
fn field<T: Default>(task: *const u8, off: u32) -> T {
    // SAFETY: the probe-read helper copies kernel memory and reports faults instead of taking
    // them; the offset comes from the kernel's own BTF.
    unsafe { bpf_probe_read_kernel(task.add(off as usize) as *const T) }.unwrap_or_default()
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub extern "C" fn dump_task(ctx: *mut c_void) -> i32 {
    let ctx = ctx as *const IterTask;
    // SAFETY: the verifier types both context members from `struct bpf_iter__task`.
    let (meta, task) = unsafe { ((*ctx).meta, (*ctx).task) };
    if task.is_null() {
        return 0;
    }
    let Some(cfg) = DUMP_CONFIG.get(0) else {
        return 0;
    };
    let off: &DumpOffsets = &cfg.offsets;
    let t = task as *const u8;
    if cfg.tgid == 0 || field::<u32>(t, off.tgid) != cfg.tgid {
        return 0;
    }
    let Some(rec) = DUMP_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: `rec` points at this CPU's scratch record; iterator programs are not preempted
    // by another run of themselves on the same CPU.
    let rec = unsafe { &mut *rec };
    rec.tid = field(t, off.pid);
    rec.tgid = cfg.tgid;
    rec.state = field(t, off.state);
    rec.exit_state = field::<i32>(t, off.exit_state) as u32;
    rec.task_flags = field(t, off.flags);
    rec.on_cpu = field::<i32>(t, off.on_cpu) as u32;
    rec.on_rq = field::<i32>(t, off.on_rq) as u32;
    rec.cpu = field(t, off.cpu);
    rec.comm = field::<[u8; DUMP_COMM_LEN]>(t, off.comm);
    rec.start_time = field(t, off.start_time);
    rec.nvcsw = field(t, off.nvcsw);
    rec.nivcsw = field(t, off.nivcsw);
    rec.pcount = field(t, off.pcount);
    rec.last_arrival = field(t, off.last_arrival);
    rec.last_queued = field(t, off.last_queued);
    rec.exec_start = field(t, off.exec_start);
    rec.sum_exec_runtime = field(t, off.sum_exec_runtime);
    rec.prev_sum_exec_runtime = field(t, off.prev_sum_exec_runtime);

    // "Now" in the run-queue clock: the task running this program (the agent's reader) went
    // on its CPU at `last_arrival` and has run for `sum - prev_sum` since.
    // SAFETY: plain helper calls; the current task's fields are probe-read like the others.
    let cur = unsafe { bpf_get_current_task() } as *const u8;
    let cur_arrival: u64 = field(cur, off.last_arrival);
    let cur_sum: u64 = field(cur, off.sum_exec_runtime);
    let cur_prev: u64 = field(cur, off.prev_sum_exec_runtime);
    rec.now_rq = cur_arrival.wrapping_add(cur_sum.wrapping_sub(cur_prev));
    rec.now_ktime = unsafe { bpf_ktime_get_ns() };

    rec.flags = 0;
    rec.kstack_len = 0;
    rec.regs = [0; PT_REGS_WORDS];
    if rec.exit_state & EXIT_STATES == 0 {
        // SAFETY: `task` is the iterator's trusted task pointer; `bpf_task_pt_regs` returns
        // the user registers saved at the top of its kernel stack, copied with a probe read.
        unsafe {
            let regs = bpf_task_pt_regs(task) as *const c_void;
            if !regs.is_null()
                && read_raw(
                    rec.regs.as_mut_ptr() as *mut c_void,
                    (PT_REGS_WORDS * 8) as u32,
                    regs,
                ) == 0
            {
                rec.flags |= DUMP_REGS_OK;
            }
            let n = bpf_get_task_stack(
                task,
                rec.kstack.as_mut_ptr() as *mut c_void,
                (DUMP_KSTACK_DEPTH * 8) as u32,
                0,
            );
            if n < 0 {
                rec.flags |= DUMP_KSTACK_ERR;
            } else {
                rec.kstack_len = (n as u32) / 8;
            }
        }
    }
    // SAFETY: `meta` is the iterator's metadata; `seq` its seq file. On overflow the kernel
    // runs this task again for the next read, so nothing is lost.
    unsafe {
        let seq = (*meta).seq;
        bpf_seq_write(
            seq,
            rec as *const DumpTask as *const c_void,
            core::mem::size_of::<DumpTask>() as u32,
        );
    }
    0
}
