//! User stacks of threads that are off CPU, unwound in the agent from their saved registers:
//! the target's memory is read through `/proc/PID/mem` (which does not stop it) and every frame
//! is unwound with the `.eh_frame` CFI tables of [`crate::unwind::cfi`] (frame pointers where a file
//! has no row), so frames that call into Debian's frame-pointer-less libc are not lost.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use stallscope_common::{ExecMapping, UnwindRow};

use crate::unwind::cfi::{self as unwind, Regs};
use crate::unwind::maps::MapsCache;
use crate::unwind::tables::UnwindRegistry;

use super::model::Frame;

/// Deepest user stack unwound.
pub const MAX_USER_FRAMES: usize = 256;

const PAGE: u64 = 4096;

/// Reads a live process's memory page by page through `/proc/PID/mem`, caching what it read
/// (one dump reads the same stack pages for several frames).
pub struct MemReader {
    pid: u32,
    file: File,
    pages: RefCell<HashMap<u64, Option<Box<[u8]>>>>,
}

impl MemReader {
    pub fn open(pid: u32) -> std::io::Result<Self> {
        Ok(Self {
            pid,
            file: File::open(format!("/proc/{pid}/mem"))?,
            pages: RefCell::new(HashMap::new()),
        })
    }

    /// Reads many small ranges at once, uncached (`process_vm_readv`, up to 1024 ranges a
    /// call: reading 100k goroutines page by page cost a page of memory per goroutine and a
    /// syscall per page). `None` for a range that is not mapped.
    pub fn read_many(&self, ranges: &[(u64, usize)]) -> Vec<Option<Vec<u8>>> {
        const IOV_MAX: usize = 1024;
        let mut out: Vec<Option<Vec<u8>>> =
            ranges.iter().map(|&(_, n)| Some(vec![0u8; n])).collect();
        let mut i = 0;
        while i < ranges.len() {
            let end = (i + IOV_MAX).min(ranges.len());
            let local: Vec<libc::iovec> = out[i..end]
                .iter_mut()
                .map(|b| {
                    let b = b.as_mut().expect("not read yet");
                    libc::iovec {
                        iov_base: b.as_mut_ptr().cast(),
                        iov_len: b.len(),
                    }
                })
                .collect();
            let remote: Vec<libc::iovec> = ranges[i..end]
                .iter()
                .map(|&(addr, n)| libc::iovec {
                    iov_base: addr as *mut libc::c_void,
                    iov_len: n,
                })
                .collect();
            // SAFETY: `local` points into buffers of `out` that live across the call, each as
            // long as its iovec says; the remote side is only read by the kernel.
            let got = unsafe {
                libc::process_vm_readv(
                    self.pid as libc::pid_t,
                    local.as_ptr(),
                    local.len() as libc::c_ulong,
                    remote.as_ptr(),
                    remote.len() as libc::c_ulong,
                    0,
                )
            };
            // Whole ranges are read up to the first that fails; that one is unmapped, and the
            // next call starts after it.
            let mut left = got.max(0) as usize;
            let mut j = i;
            while j < end && left >= ranges[j].1 {
                left -= ranges[j].1;
                j += 1;
            }
            if j < end {
                out[j] = self.read(ranges[j].0, ranges[j].1);
                j += 1;
            }
            i = j;
        }
        out
    }

    fn with_page<R>(&self, page: u64, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let mut pages = self.pages.borrow_mut();
        let entry = pages.entry(page).or_insert_with(|| {
            let mut buf = vec![0u8; PAGE as usize].into_boxed_slice();
            self.file.read_exact_at(&mut buf, page).ok().map(|()| buf)
        });
        entry.as_deref().map(f)
    }

    /// `len` bytes at `addr`, or `None` if any of them is unmapped.
    pub fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        let end = addr.checked_add(len as u64)?;
        let mut at = addr;
        while at < end {
            let page = at & !(PAGE - 1);
            let from = (at - page) as usize;
            let to = ((end - page).min(PAGE)) as usize;
            self.with_page(page, |p| out.extend_from_slice(&p[from..to]))?;
            at = page + to as u64;
        }
        Some(out)
    }

    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        let b = self.read(addr, 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }
}

/// The CFI rows of every executable mapping of one process, laid out as the BPF unwinder
/// sees them (built with the same [`UnwindRegistry`]).
pub struct UnwindTables {
    mappings: Vec<ExecMapping>,
    rows: Vec<UnwindRow>,
}

impl UnwindTables {
    /// Compiles the tables of every file `pid` maps (from the maps cache).
    pub fn build(pid: u32, maps: &MapsCache) -> Self {
        let mut registry = UnwindRegistry::new();
        let pm = registry.prepare(pid, maps);
        let pending = registry.take_pending();
        let len = pending
            .iter()
            .map(|(start, rows)| *start as usize + rows.len())
            .max()
            .unwrap_or(0);
        let mut rows = vec![UnwindRow::default(); len];
        for (start, r) in pending {
            rows[start as usize..start as usize + r.len()].copy_from_slice(&r);
        }
        Self {
            mappings: pm.entries[..pm.count as usize].to_vec(),
            rows,
        }
    }

    /// The CFI row for process address `pc`.
    pub fn lookup(&self, pc: u64) -> Option<UnwindRow> {
        let i = self.mappings.partition_point(|m| m.start <= pc);
        let m = self.mappings.get(i.checked_sub(1)?)?;
        if pc >= m.end {
            return None;
        }
        let start = m.rows_start as usize;
        let rows = self.rows.get(start..start + m.rows_len as usize)?;
        let vaddr = pc.wrapping_sub(m.bias);
        let j = rows.partition_point(|r| r.pc <= vaddr);
        rows.get(j.checked_sub(1)?).copied()
    }

    /// Whether `pc` lies in an executable mapping of the process.
    pub fn is_code(&self, pc: u64) -> bool {
        let i = self.mappings.partition_point(|m| m.start <= pc);
        i.checked_sub(1)
            .and_then(|i| self.mappings.get(i))
            .is_some_and(|m| pc < m.end)
    }
}

/// Return addresses of a thread's user stack (innermost first, starting with `regs.ip`).
/// Trailing addresses outside the process's code are dropped: they are what a last
/// frame-pointer step read past the root of the stack (e.g. above Go's `runtime.mstart`).
pub fn unwind_user(regs: Regs, tables: &UnwindTables, mem: &MemReader) -> Vec<u64> {
    let mut frames = unwind::unwind_stack(
        regs,
        |pc| tables.lookup(pc),
        |addr| mem.read_u64(addr),
        MAX_USER_FRAMES,
    );
    while frames.len() > 1 && frames.last().is_some_and(|&pc| !tables.is_code(pc)) {
        frames.pop();
    }
    frames
}

/// Frames at the root of every stack that belong to the C runtime, not to the program (also
/// never named as culprits by the summaries: `report::is_root_function`).
pub const RUNTIME_ROOT_FUNCTIONS: &[&str] = &[
    "_start",
    "__libc_start_main",
    "__libc_start_main_impl",
    "__libc_start_call_main",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
    "__clone_internal",
];

fn is_runtime_frame(f: &Frame) -> bool {
    let base = f.function.split('@').next().unwrap_or(&f.function);
    RUNTIME_ROOT_FUNCTIONS.contains(&base)
        || f.function.starts_with("[unknown]")
        || f.module.as_deref().is_some_and(|m| {
            m.starts_with("libc.so") || m.starts_with("ld-linux") || m.starts_with("libpthread")
        })
}

/// The function a thread started in: the first frame from the root of its (complete) user
/// stack that is not C runtime plumbing (`clone3`, `start_thread`, `__libc_start_call_main`).
/// `frames` is innermost first.
pub fn start_routine(frames: &[Frame]) -> Option<&Frame> {
    frames.iter().rev().find(|f| !is_runtime_frame(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, module: &str) -> Frame {
        Frame {
            address: "0x1".into(),
            function: function.into(),
            file: None,
            line: None,
            inlined: false,
            module: Some(module.into()),
        }
    }

    #[test]
    fn many_ranges_are_read_at_once_and_an_unmapped_one_is_none() {
        let data: Vec<u64> = (0..4096).collect();
        let mem = MemReader::open(std::process::id()).unwrap();
        let base = data.as_ptr() as u64;
        // More ranges than one call takes, an unmapped one among them, an empty one.
        let mut ranges: Vec<(u64, usize)> = (0..3000).map(|i| (base + 8 * (i % 4096), 8)).collect();
        ranges[1500] = (8, 16);
        ranges[1501] = (0, 0);
        let got = mem.read_many(&ranges);
        assert_eq!(got.len(), 3000);
        for (i, g) in got.iter().enumerate() {
            match i {
                1500 => assert_eq!(g, &None, "unmapped"),
                1501 => assert_eq!(g.as_deref(), Some(&[][..])),
                _ => assert_eq!(
                    g.as_deref()
                        .map(|b| u64::from_le_bytes(b.try_into().unwrap())),
                    Some((i % 4096) as u64),
                    "range {i}"
                ),
            }
        }
    }

    #[test]
    fn start_routines() {
        let worker = [
            frame("libc.so.6+0x9a3b2", "libc.so.6"),
            frame("pthread_mutex_lock", "libc.so.6"),
            frame("transfer", "bank"),
            frame("worker", "bank"),
            frame("libc.so.6+0x8b1c4", "libc.so.6"),
            frame("clone3", "libc.so.6"),
        ];
        assert_eq!(start_routine(&worker).unwrap().function, "worker");
        let main = [
            frame("clock_nanosleep", "libc.so.6"),
            frame("main", "bank"),
            frame("__libc_start_call_main", "libc.so.6"),
            frame("__libc_start_main_impl", "libc.so.6"),
            frame("_start", "bank"),
        ];
        assert_eq!(start_routine(&main).unwrap().function, "main");
        assert!(start_routine(&main[2..]).is_none());
        assert!(start_routine(&[]).is_none());
    }

    #[test]
    fn reads_own_memory_across_pages() {
        let data: Vec<u64> = (0..2048).collect();
        let mem = MemReader::open(std::process::id()).unwrap();
        let base = data.as_ptr() as u64;
        for i in [0usize, 1, 511, 512, 1000, 2047] {
            assert_eq!(
                mem.read_u64(base + 8 * i as u64),
                Some(i as u64),
                "word {i}"
            );
        }
        // Unaligned, straddling a page boundary.
        let bytes = mem.read(base + 4093, 16).unwrap();
        let direct: Vec<u8> = data
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .skip(4093)
            .take(16)
            .collect();
        assert_eq!(bytes, direct);
        assert_eq!(mem.read_u64(8), None, "page 0 is never mapped");
    }

    #[inline(never)]
    fn nested_unwind_target(depth: u32, out: &mut Vec<u64>) {
        if depth > 0 {
            nested_unwind_target(depth - 1, out);
            std::hint::black_box(&out);
            return;
        }
        // Unwind our own thread from here: registers of this frame.
        let (ip, sp, bp): (u64, u64, u64);
        // SAFETY: reads three registers, no memory access.
        unsafe {
            std::arch::asm!("lea {ip}, [rip]", "mov {sp}, rsp", "mov {bp}, rbp",
                ip = out(reg) ip, sp = out(reg) sp, bp = out(reg) bp);
        }
        let pid = std::process::id();
        let mut maps = MapsCache::new();
        maps.refresh(pid).unwrap();
        let tables = UnwindTables::build(pid, &maps);
        assert!(tables.is_code(ip));
        let mem = MemReader::open(pid).unwrap();
        *out = unwind_user(Regs { ip, sp, bp }, &tables, &mem);
    }

    #[test]
    fn unwinds_own_stack_through_recursion() {
        let mut frames = Vec::new();
        nested_unwind_target(5, &mut frames);
        // ip + 5 recursive callers + this test + the test harness below it.
        assert!(frames.len() >= 8, "{} frames: {frames:x?}", frames.len());
        let me = nested_unwind_target as *const () as u64;
        // The recursive return addresses are inside `nested_unwind_target`: the same one 5 times.
        let callers = &frames[1..6];
        assert!(callers.iter().all(|&a| a == callers[0]), "{frames:x?}");
        assert!(
            callers[0] > me && callers[0] < me + 4096,
            "{frames:x?} vs {me:#x}"
        );
    }
}
