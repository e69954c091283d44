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
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_loop, bpf_probe_read_user,
        bpf_probe_read_user_buf, bpf_task_pt_regs,
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use stallscope_common::maps::{self, Key, Value};
use stallscope_common::{
    CFA_REG_BP, CFA_REG_SP, Counter, MAX_EXEC_MAPPINGS, MAX_USER_FRAMES, ProcMappings,
    ROW_END_OF_STACK, STACK_HASH_INIT, UNWIND_ROWS_MAX, USER_STACK_LOST, USTACK_TRUNCATED,
    USTACK_USED_CFI, UnwindRow, UserStack, WALK_CACHE_READS, WALK_CACHE_SPAN, WalkCacheEntry,
    WalkCacheKey, stack_handle, stack_hash_step,
};

use crate::shared::count;

/// CFI rows of every file the agent compiled, back to back.
#[map]
static UNWIND_ROWS: Array<Value<maps::UNWIND_ROWS>> = Array::with_max_entries(UNWIND_ROWS_MAX, 0);

/// Executable mappings per target process (tgid).
#[map]
static PROC_MAPPINGS: HashMap<Key<maps::PROC_MAPPINGS>, Value<maps::PROC_MAPPINGS>> =
    HashMap::with_max_entries(1024, 0);

/// Unwound user stacks by hash.
#[map]
static USER_STACKS: HashMap<Key<maps::USER_STACKS>, Value<maps::USER_STACKS>> =
    HashMap::with_max_entries(16384, 0);

/// Per-CPU scratch slots: one for the tracepoint programs, one for the CPU sampler. The sampler
/// runs from a timer interrupt and can interrupt a tracepoint program's walk on the same CPU;
/// sharing one slot, it would overwrite the walk in progress (frames stored under a wrong hash).
const SLOTS: u32 = 3;
/// The slot of the tracepoint programs (`sched_switch`, `sched_waking`).
pub const SLOT_TRACEPOINT: u32 = 0;
/// The slot of the CPU sampler (`cpu_sample`, interrupt context).
pub const SLOT_PERF: u32 = 1;
/// The slot of the Go runtime's uprobes (`go_ready`: process context, preemptible, so a
/// scheduler tracepoint can run on its CPU in the middle of its walk).
pub const SLOT_UPROBE: u32 = 2;

/// Scratch space for the stack being built (too big for the 512-byte BPF stack).
#[map]
static SCRATCH: PerCpuArray<UserStack> = PerCpuArray::with_max_entries(SLOTS, 0);

/// The walk in progress ([`Walk`]). In map memory, not on the caller's stack, for the same
/// reason as the search bounds below: the verifier tracks constants a program spills to its
/// stack (the walk's flags, say) and then checks `bpf_loop`'s callback once per combination
/// of them; values in map memory are unknown to it, so the callback's states converge in a
/// few passes (on kernel 6.18.44, with the walk on the stack, `sched_switch` went past the
/// verifier's 1M-instruction budget).
#[map]
static WALKS: PerCpuArray<Walk> = PerCpuArray::with_max_entries(SLOTS, 0);

/// Binary-search bounds `[lo, hi]`. They live in map memory rather than registers on purpose:
/// the verifier then treats them as unknown values, so the paths of a search converge and are
/// pruned instead of being explored one by one for every frame (which exceeds its budget).
#[map]
static SEARCH: PerCpuArray<[u32; 2]> = PerCpuArray::with_max_entries(SLOTS, 0);

/// Recent walks by (thread, instruction pointer), with the stack words each depended on: a
/// thread that blocks where it blocked before (the common case: a worker waiting on the same
/// condition variable) gets its stack back after one copy of its top stack words instead of a
/// frame-by-frame walk with two binary searches per frame.
#[map]
static WALK_CACHE: LruHashMap<Key<maps::WALK_CACHE>, Value<maps::WALK_CACHE>> =
    LruHashMap::with_max_entries(16384, 0);

/// The walk in progress and the words it read (per CPU), cached when it finishes cleanly.
#[map]
static WALK_LOG: PerCpuArray<WalkCacheEntry> = PerCpuArray::with_max_entries(SLOTS, 0);

const COPY_BYTES: usize = WALK_CACHE_SPAN as usize + 8;

/// The top of the stack, copied in one read to compare with a cached walk's words.
#[map]
static STACK_COPY: PerCpuArray<[u8; COPY_BYTES]> = PerCpuArray::with_max_entries(SLOTS, 0);

/// Bumped by the agent whenever a process's mapping table changes (a walk cached before may
/// then have gone differently): cached walks of an older generation are not used.
#[map]
static WALK_GEN: Array<Value<maps::WALK_GEN>> = Array::with_max_entries(1, 0);

// struct pt_regs (x86-64): bp, ip, sp.
const PT_REGS_BP: usize = 32;
const PT_REGS_IP: usize = 128;
const PT_REGS_SP: usize = 152;

const ROW_SEARCH_STEPS: u32 = 21; // enough for UNWIND_ROWS_MAX = 2^20
const MAPPING_SEARCH_STEPS: u32 = 7; // enough for MAX_EXEC_MAPPINGS = 64
// A binary search over n entries ends within k halvings when 2^k > n: a table grown past its
// search's bound fails to build rather than missing rows at run time.
const _: () = assert!(1u64 << ROW_SEARCH_STEPS > UNWIND_ROWS_MAX as u64);
const _: () = assert!(1u64 << MAPPING_SEARCH_STEPS > MAX_EXEC_MAPPINGS as u64);

#[inline(always)]
fn read_user_u64(addr: u64) -> Option<u64> {
    // SAFETY: the helper checks the address and fails on a fault.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// `WalkCacheEntry::walk_state` bits while a walk is logged in `WALK_LOG`.
const WALK_UNCACHEABLE: u32 = 1;
/// `bp` still holds the starting register's value (not yet restored from the stack).
const WALK_BP_IS_REG: u32 = 2;

/// The walk's log (per CPU). Its counters live in map memory, not in the `Walk` on the stack:
/// the verifier then sees them as unknown values, and the states of successive frames
/// converge instead of being explored one count at a time.
#[inline(always)]
fn walk_log<const S: u32>() -> Option<&'static mut WalkCacheEntry> {
    // SAFETY: per-CPU value of this context's slot, used only within this program run.
    WALK_LOG.get_ptr_mut(S).map(|p| unsafe { &mut *p })
}

/// Reads a stack word for the walk and logs it in `WALK_LOG`, so the walk can be cached. A
/// failed read, a word outside the cached window or too many words make the walk uncacheable.
#[inline(always)]
fn walk_read(w: &Walk, log: &mut WalkCacheEntry, addr: u64) -> Option<u64> {
    let Some(val) = read_user_u64(addr) else {
        log.walk_state |= WALK_UNCACHEABLE;
        return None;
    };
    let off = addr.wrapping_sub(w.sp0);
    let n = log.n as usize;
    if off > (WALK_CACHE_SPAN - 8) as u64 {
        log.walk_state |= WALK_UNCACHEABLE;
        return Some(val);
    }
    if let (Some(o), Some(v)) = (log.offs.get_mut(n), log.vals.get_mut(n)) {
        *o = off as u32;
        *v = val;
        log.n = n as u32 + 1;
        if off as u32 + 8 > log.span {
            log.span = off as u32 + 8;
        }
    } else {
        log.walk_state |= WALK_UNCACHEABLE;
    }
    Some(val)
}

/// Volatile access to the search bounds, so the compiler keeps them in memory too.
struct Bounds(*mut [u32; 2]);

impl Bounds {
    #[inline(always)]
    fn get<const S: u32>() -> Option<Self> {
        SEARCH.get_ptr_mut(S).map(Bounds)
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
fn find_mapping<const S: u32>(m: &ProcMappings, pc: u64) -> Option<usize> {
    let b = Bounds::get::<S>()?;
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
fn find_row<const S: u32>(start: u32, len: u32, vaddr: u64) -> Option<UnwindRow> {
    let b = Bounds::get::<S>()?;
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

/// State of one stack walk, in [`WALKS`] (per CPU) where [`walk_step`] finds it.
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
    /// The stack pointer the walk started from; logged reads are relative to it.
    sp0: u64,
}

/// One frame of the walk, run by `bpf_loop`: the verifier checks this body once instead of
/// once per unrolled iteration, which keeps loading the programs fast. Returns 1 to stop.
#[inline(never)]
extern "C" fn walk_step<const S: u32>(i: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(w) = WALKS.get_ptr_mut(S) else {
        return 1;
    };
    // SAFETY: per-CPU value of this context's slot, set up by `user_stack_handle`.
    let w = unsafe { &mut *w };
    let i = i as usize;
    if w.ip == 0 || i >= MAX_USER_FRAMES {
        return 1;
    }
    let Some(st) = SCRATCH.get_ptr_mut(S) else {
        return 1;
    };
    // SAFETY: per-CPU scratch value, used only within this program run.
    let st = unsafe { &mut *st };
    let Some(log) = walk_log::<S>() else {
        return 1;
    };
    let ip = w.ip;
    if let Some(slot) = st.ips.get_mut(i) {
        *slot = ip;
    }
    w.hash = stack_hash_step(w.hash, ip);
    w.n = i as u32 + 1;
    // A return address points after the call: look up the call itself.
    let lookup = if i == 0 { ip } else { ip - 1 };
    let mut row = None;
    // SAFETY: read-only lookup of this process's mapping table (absent: frame pointers only).
    if let Some(m) = unsafe { PROC_MAPPINGS.get(w.tgid) }
        && let Some(idx) = find_mapping::<S>(m, lookup)
        && let Some(e) = m.entries.get(idx)
        && e.rows_len > 0
    {
        row = find_row::<S>(e.rows_start, e.rows_len, lookup.wrapping_sub(e.bias));
    }
    let (sp, bp) = (w.sp, w.bp);
    match row {
        Some(r) if r.flags & ROW_END_OF_STACK != 0 => return 1,
        Some(r) if r.cfa_reg == CFA_REG_SP || r.cfa_reg == CFA_REG_BP => {
            let base = if r.cfa_reg == CFA_REG_SP {
                sp
            } else {
                if log.walk_state & WALK_BP_IS_REG != 0 {
                    log.bp_used = 1;
                }
                bp
            };
            let cfa = base.wrapping_add(r.cfa_offset as i64 as u64);
            if cfa <= sp {
                return 1;
            }
            let Some(ra) = walk_read(w, log, cfa.wrapping_sub(8)) else {
                return 1;
            };
            if r.rbp_offset != 0 {
                match walk_read(w, log, cfa.wrapping_add(r.rbp_offset as i64 as u64)) {
                    Some(v) => {
                        w.bp = v;
                        log.walk_state &= !WALK_BP_IS_REG;
                    }
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
            if log.walk_state & WALK_BP_IS_REG != 0 {
                log.bp_used = 1;
            }
            if bp == 0 || bp < sp {
                return 1;
            }
            let Some(next_bp) = walk_read(w, log, bp) else {
                return 1;
            };
            let Some(ra) = walk_read(w, log, bp + 8) else {
                return 1;
            };
            w.sp = bp + 16;
            w.bp = next_bp;
            log.walk_state &= !WALK_BP_IS_REG;
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

/// What [`compare_step`] checks: a cached walk's words against the stack copy.
#[repr(C)]
struct Compare {
    entry: *const WalkCacheEntry,
    copy: *const [u8; COPY_BYTES],
    n: u32,
    mismatch: u32,
}

/// One word of the comparison, run by `bpf_loop` (verified once, not once per word).
#[inline(never)]
extern "C" fn compare_step(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `Compare` that `cached_walk` passed to bpf_loop; its pointers are a
    // map value and a per-CPU buffer, live for this program run.
    let c = unsafe { &mut *(ctx as *mut Compare) };
    let i = i as usize;
    if i >= c.n as usize {
        return 1;
    }
    let (e, copy) = unsafe { (&*c.entry, &*c.copy) };
    let (Some(off), Some(want)) = (e.offs.get(i), e.vals.get(i)) else {
        c.mismatch = 1;
        return 1;
    };
    let off = (*off & (WALK_CACHE_SPAN - 1)) as usize;
    let Some(word) = copy.get(off..off + 8) else {
        c.mismatch = 1;
        return 1;
    };
    // SAFETY: 8 bytes inside the buffer.
    let v = unsafe { core::ptr::read_unaligned(word.as_ptr() as *const u64) };
    if v != *want {
        c.mismatch = 1;
        return 1;
    }
    0
}

/// The cached walk for this thread at `ip`, if the registers and every stack word it read
/// are unchanged (so walking again would give the same frames).
#[inline(never)]
fn cached_walk<const S: u32>(key: &WalkCacheKey, sp: u64, bp: u64) -> Option<u64> {
    // SAFETY: live map value (an LRU entry may be evicted and reused while we read it: the
    // comparison then fails or, at worst, reads another walk's consistent-enough words).
    let e = unsafe { WALK_CACHE.get(key) }?;
    let gen_now = WALK_GEN.get(0).copied().unwrap_or(0);
    if e.sp != sp || (e.bp_used != 0 && e.bp != bp) || e.generation != gen_now {
        return None;
    }
    let span = e.span;
    let n = e.n;
    if span == 0 || span > WALK_CACHE_SPAN || n as usize > WALK_CACHE_READS {
        return None;
    }
    let handle = e.handle;
    let copy = STACK_COPY.get_ptr_mut(S)?;
    // SAFETY: per-CPU buffer used only within this program run.
    let buf = unsafe { &mut *copy }.get_mut(..span as usize)?;
    // SAFETY: reads `span` (<= WALK_CACHE_SPAN) bytes of user memory into the buffer.
    unsafe { bpf_probe_read_user_buf(sp as *const u8, buf) }.ok()?;
    let mut c = Compare {
        entry: e as *const WalkCacheEntry,
        copy: copy as *const [u8; COPY_BYTES],
        n,
        mismatch: 0,
    };
    // SAFETY: the callback is a BPF subprogram; `c` outlives the call.
    unsafe {
        bpf_loop(
            WALK_CACHE_READS as u32,
            compare_step as *mut core::ffi::c_void,
            &raw mut c as *mut core::ffi::c_void,
            0,
        )
    };
    (c.mismatch == 0).then_some(handle)
}

/// Unwinds the current task's user stack and returns its handle in `USER_STACKS` (a hash of
/// the frames), or `USER_STACK_LOST` (counted).
#[inline(always)]
pub fn user_stack_handle<const S: u32>(tgid: u32) -> u64 {
    // SAFETY: BTF-typed current task; the helper returns its user-mode registers.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
    if regs.is_null() {
        count(Counter::UserStackLost);
        return USER_STACK_LOST;
    }
    // SAFETY: a BTF-typed struct pt_regs pointer: constant-offset loads the verifier checks.
    let read = |off: usize| unsafe { core::ptr::read_volatile(regs.add(off) as *const u64) };
    let (ip, sp, bp) = (read(PT_REGS_IP), read(PT_REGS_SP), read(PT_REGS_BP));
    let key = WalkCacheKey {
        tid: bpf_get_current_pid_tgid() as u32,
        _pad: 0,
        ip,
    };
    if let Some(handle) = cached_walk::<S>(&key, sp, bp) {
        count(Counter::UserStackCacheHit);
        return handle;
    }
    walk_from::<S>(tgid, ip, sp, bp, Some(&key))
}

/// Unwinds a user stack of process `tgid` (the current task's address space) from saved
/// registers that are not the current task's own: a parked goroutine's `g.sched`. Not cached
/// (the walk cache is keyed by thread).
#[inline(always)]
pub fn user_stack_handle_at<const S: u32>(tgid: u32, ip: u64, sp: u64, bp: u64) -> u64 {
    walk_from::<S>(tgid, ip, sp, bp, None)
}

/// Walks from (ip, sp, bp), stores the stack and, with a cache key, caches the walk.
#[inline(always)]
fn walk_from<const S: u32>(
    tgid: u32,
    ip: u64,
    sp: u64,
    bp: u64,
    cache_key: Option<&WalkCacheKey>,
) -> u64 {
    count(Counter::UserStackWalked);
    let Some(log) = walk_log::<S>() else {
        return USER_STACK_LOST;
    };
    log.n = 0;
    log.span = 0;
    log.bp_used = 0;
    log.walk_state = WALK_BP_IS_REG;
    let Some(w) = WALKS.get_ptr_mut(S) else {
        return USER_STACK_LOST;
    };
    // SAFETY: per-CPU value of this context's slot, used only within this program run.
    let w = unsafe { &mut *w };
    *w = Walk {
        ip,
        sp,
        bp,
        hash: STACK_HASH_INIT,
        tgid,
        n: 0,
        flags: 0,
        _pad: 0,
        sp0: sp,
    };
    // SAFETY: the callback is a BPF subprogram; it finds the walk in WALKS.
    unsafe {
        bpf_loop(
            MAX_USER_FRAMES as u32,
            walk_step::<S> as *mut core::ffi::c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    let Some(st) = SCRATCH.get_ptr_mut(S) else {
        return USER_STACK_LOST;
    };
    // SAFETY: per-CPU scratch value, used only within this program run.
    let st = unsafe { &mut *st };
    st.len = w.n.min(MAX_USER_FRAMES as u32);
    st.flags = w.flags;
    let hash = stack_handle(w.hash);
    // SAFETY: presence check only.
    if unsafe { USER_STACKS.get(hash) }.is_none() && USER_STACKS.insert(hash, st, 0).is_err() {
        count(Counter::UserStackMapFull);
        return USER_STACK_LOST;
    }
    if let Some(key) = cache_key
        && let Some(log) = walk_log::<S>()
        && log.walk_state & WALK_UNCACHEABLE == 0
        && log.span > 0
    {
        log.sp = sp;
        log.bp = bp;
        log.handle = hash;
        log.walk_state = 0;
        log.generation = WALK_GEN.get(0).copied().unwrap_or(0);
        let _ = WALK_CACHE.insert(key, log, 0);
    }
    hash
}
