//! User-stack unwinder: DWARF CFI rows where the agent compiled them (from `.eh_frame`, which
//! even frame-pointer-less libraries such as Debian's glibc carry), frame pointers elsewhere
//! (Go, JIT code, files without tables). The kernel's own user-stack walker only follows frame
//! pointers and so loses the caller of every libc function.
//!
//! Semantics per frame (the agent's `unwind::unwind_step` is the reference):
//! CFA = (rsp or rbp) + offset; return address at CFA - 8; the caller's rbp is unchanged or
//! saved at CFA + rbp_offset; the caller's rsp is the CFA.

use aya_ebpf::{
    helpers::{
        bpf_get_current_task_btf, bpf_loop, bpf_probe_read_kernel, bpf_probe_read_user,
        bpf_task_pt_regs,
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use stallscope_common::{
    CFA_REG_BP, CFA_REG_SP, Counter, MAX_EXEC_MAPPINGS, MAX_USER_FRAMES, ProcMappings,
    ROW_END_OF_STACK, UNWIND_ROWS_MAX, USER_STACK_LOST, USTACK_TRUNCATED, USTACK_USED_CFI,
    UnwindRow, UserStack,
};

use crate::shared::count;

/// CFI rows of every file the agent compiled, back to back.
#[map]
static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(UNWIND_ROWS_MAX, 0);

/// Executable mappings per target process (tgid).
#[map]
static PROC_MAPPINGS: HashMap<u32, ProcMappings> = HashMap::with_max_entries(1024, 0);

/// Unwound user stacks by hash.
#[map]
static USER_STACKS: HashMap<u64, UserStack> = HashMap::with_max_entries(16384, 0);

/// Scratch space for the stack being built (too big for the 512-byte BPF stack).
#[map]
static SCRATCH: PerCpuArray<UserStack> = PerCpuArray::with_max_entries(1, 0);

/// Binary-search bounds `[lo, hi]`. They live in map memory rather than registers on purpose:
/// the verifier then treats them as unknown values, so the paths of a search converge and are
/// pruned instead of being explored one by one for every frame (which exceeds its budget).
#[map]
static SEARCH: PerCpuArray<[u32; 2]> = PerCpuArray::with_max_entries(1, 0);

// struct pt_regs (x86-64): bp, ip, sp.
const PT_REGS_BP: usize = 32;
const PT_REGS_IP: usize = 128;
const PT_REGS_SP: usize = 152;

const ROW_SEARCH_STEPS: u32 = 21; // enough for UNWIND_ROWS_MAX = 2^20
const MAPPING_SEARCH_STEPS: u32 = 7; // enough for MAX_EXEC_MAPPINGS = 64

#[inline(always)]
fn read_user_u64(addr: u64) -> Option<u64> {
    // SAFETY: the helper checks the address and fails on a fault.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// Volatile access to the search bounds, so the compiler keeps them in memory too.
struct Bounds(*mut [u32; 2]);

impl Bounds {
    #[inline(always)]
    fn get() -> Option<Self> {
        SEARCH.get_ptr_mut(0).map(Bounds)
    }
    #[inline(always)]
    fn lo(&self) -> u32 {
        // SAFETY: valid per-CPU map value for this program run.
        unsafe { core::ptr::read_volatile(&raw const (*self.0)[0]) }
    }
    #[inline(always)]
    fn hi(&self) -> u32 {
        // SAFETY: as above.
        unsafe { core::ptr::read_volatile(&raw const (*self.0)[1]) }
    }
    #[inline(always)]
    fn set_lo(&self, v: u32) {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(&raw mut (*self.0)[0], v) }
    }
    #[inline(always)]
    fn set_hi(&self, v: u32) {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(&raw mut (*self.0)[1], v) }
    }
}

/// Index of the mapping containing `pc`, by binary search over the sorted entries.
#[inline(never)]
fn find_mapping(m: &ProcMappings, pc: u64) -> Option<usize> {
    let b = Bounds::get()?;
    b.set_lo(0);
    b.set_hi(m.count.min(MAX_EXEC_MAPPINGS as u32));
    for _ in 0..MAPPING_SEARCH_STEPS {
        let (lo, hi) = (b.lo(), b.hi());
        if lo >= hi {
            break;
        }
        let mid = (lo + (hi - lo) / 2) as usize;
        let e = m.entries.get(mid)?;
        if pc < e.start {
            b.set_hi(mid as u32);
        } else if pc >= e.end {
            b.set_lo(mid as u32 + 1);
        } else {
            return Some(mid);
        }
    }
    None
}

/// The row covering `vaddr` among `len` rows from `start`: the last row with `pc <= vaddr`.
#[inline(never)]
fn find_row(start: u32, len: u32, vaddr: u64) -> Option<UnwindRow> {
    let b = Bounds::get()?;
    // Invariant: rows[..lo] have pc <= vaddr, rows[hi..] have pc > vaddr.
    b.set_lo(0);
    b.set_hi(len);
    for _ in 0..ROW_SEARCH_STEPS {
        let (lo, hi) = (b.lo(), b.hi());
        if lo >= hi {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        let row = UNWIND_ROWS.get(start.wrapping_add(mid))?;
        if row.pc <= vaddr {
            b.set_lo(mid + 1);
        } else {
            b.set_hi(mid);
        }
    }
    let lo = b.lo();
    if lo == 0 {
        return None;
    }
    UNWIND_ROWS.get(start.wrapping_add(lo - 1)).copied()
}

/// State of one stack walk, on the caller's BPF stack and handed to [`walk_step`].
#[repr(C)]
struct Walk {
    ip: u64,
    sp: u64,
    bp: u64,
    hash: u64,
    tgid: u32,
    /// Frames recorded so far.
    n: u32,
    flags: u32,
    _pad: u32,
}

/// One frame of the walk, run by `bpf_loop`: the verifier checks this body once instead of
/// once per unrolled iteration, which keeps loading the programs fast. Returns 1 to stop.
#[inline(never)]
extern "C" fn walk_step(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` that `user_stack_handle` passed to bpf_loop.
    let w = unsafe { &mut *(ctx as *mut Walk) };
    let i = i as usize;
    if w.ip == 0 || i >= MAX_USER_FRAMES {
        return 1;
    }
    let Some(st) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch value, used only within this program run.
    let st = unsafe { &mut *st };
    let ip = w.ip;
    if let Some(slot) = st.ips.get_mut(i) {
        *slot = ip;
    }
    w.hash = (w.hash ^ ip).wrapping_mul(0x0000_0100_0000_01b3);
    w.n = i as u32 + 1;
    // A return address points after the call: look up the call itself.
    let lookup = if i == 0 { ip } else { ip - 1 };
    let mut row = None;
    // SAFETY: read-only lookup of this process's mapping table (absent: frame pointers only).
    if let Some(m) = unsafe { PROC_MAPPINGS.get(w.tgid) }
        && let Some(idx) = find_mapping(m, lookup)
        && let Some(e) = m.entries.get(idx)
        && e.rows_len > 0
    {
        row = find_row(e.rows_start, e.rows_len, lookup.wrapping_sub(e.bias));
    }
    let (sp, bp) = (w.sp, w.bp);
    match row {
        Some(r) if r.flags & ROW_END_OF_STACK != 0 => return 1,
        Some(r) if r.cfa_reg == CFA_REG_SP || r.cfa_reg == CFA_REG_BP => {
            let base = if r.cfa_reg == CFA_REG_SP { sp } else { bp };
            let cfa = base.wrapping_add(r.cfa_offset as i64 as u64);
            if cfa <= sp {
                return 1;
            }
            let Some(ra) = read_user_u64(cfa.wrapping_sub(8)) else {
                return 1;
            };
            if r.rbp_offset != 0 {
                match read_user_u64(cfa.wrapping_add(r.rbp_offset as i64 as u64)) {
                    Some(v) => w.bp = v,
                    None => return 1,
                }
            }
            w.sp = cfa;
            w.ip = ra;
            w.flags |= USTACK_USED_CFI;
            count(Counter::UnwindCfiFrames);
        }
        _ => {
            // Frame pointers: [bp] = caller's bp, [bp + 8] = return address.
            if bp == 0 || bp < sp {
                return 1;
            }
            let (Some(next_bp), Some(ra)) = (read_user_u64(bp), read_user_u64(bp + 8)) else {
                return 1;
            };
            w.sp = bp + 16;
            w.bp = next_bp;
            w.ip = ra;
            count(Counter::UnwindFpFrames);
        }
    }
    if i + 1 == MAX_USER_FRAMES && w.ip != 0 {
        w.flags |= USTACK_TRUNCATED;
        count(Counter::UnwindTruncated);
    }
    0
}

/// Unwinds the current task's user stack and returns its handle in `USER_STACKS` (a hash of
/// the frames), or `USER_STACK_LOST` (counted).
#[inline(always)]
pub fn user_stack_handle(tgid: u32) -> u64 {
    // SAFETY: BTF-typed current task; the helper returns its user-mode registers.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
    if regs.is_null() {
        count(Counter::UserStackLost);
        return USER_STACK_LOST;
    }
    let read = |off: usize| unsafe { bpf_probe_read_kernel(regs.add(off) as *const u64) }.ok();
    let (Some(ip), Some(sp), Some(bp)) = (read(PT_REGS_IP), read(PT_REGS_SP), read(PT_REGS_BP))
    else {
        count(Counter::UserStackLost);
        return USER_STACK_LOST;
    };
    let mut w = Walk {
        ip,
        sp,
        bp,
        hash: 0xcbf2_9ce4_8422_2325,
        tgid,
        n: 0,
        flags: 0,
        _pad: 0,
    };
    // SAFETY: the callback is a BPF subprogram; `w` outlives the call.
    unsafe {
        bpf_loop(
            MAX_USER_FRAMES as u32,
            walk_step as *mut core::ffi::c_void,
            &raw mut w as *mut core::ffi::c_void,
            0,
        )
    };
    let Some(st) = SCRATCH.get_ptr_mut(0) else {
        return USER_STACK_LOST;
    };
    // SAFETY: per-CPU scratch value, used only within this program run.
    let st = unsafe { &mut *st };
    st.len = w.n.min(MAX_USER_FRAMES as u32);
    st.flags = w.flags;
    let mut hash = w.hash;
    if hash <= USER_STACK_LOST {
        hash += 2;
    }
    // SAFETY: presence check only.
    if unsafe { USER_STACKS.get(hash) }.is_none() && USER_STACKS.insert(hash, st, 0).is_err() {
        count(Counter::UserStackMapFull);
        return USER_STACK_LOST;
    }
    hash
}
