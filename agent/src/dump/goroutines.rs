//! Goroutines of a running Go process, read from outside: no ptrace, no signal, nothing
//! written. The runtime's own structures are read through `/proc/PID/mem`, laid out as the
//! binary's DWARF says (every Go version moves fields):
//!
//! 1. The executable's ELF: `runtime.allgs` (the slice of every goroutine ever made) and
//!    `runtime.waitReasonStrings` (the wait reasons' names, as this Go version spells them)
//!    from `.symtab`; the offsets of `runtime.g`, `runtime.gobuf` and `runtime.m` fields from
//!    `.debug_info` (zlib-compressed since Go 1.19, read with flate2 and gimli).
//! 2. Each `g`: id, status, wait reason, `waitsince`, where it was created (`gopc`, and from
//!    Go 1.21 its parent's id), its stack bounds, its saved registers (`sched`).
//! 3. A parked goroutine's stack: from `sched.pc`, up the frame-pointer chain (Go keeps frame
//!    pointers on amd64) inside the goroutine's own stack. A running one's stack is on its
//!    thread, which this does not read: it is said, as Go says it.
//! 4. Symbolized with the agent's symbolizer and printed in Go's own `debug=2` format, so
//!    tools made for Go dumps read it; the runtime's internal frames and goroutines are left
//!    out as Go leaves them out.
//! 5. Which lock each goroutine waits for, from `runtime.semtable` (the semaphore waiters'
//!    treaps), and what locks the waiters' stacks reference: their deadlocks
//!    ([`super::golocks`]) are named in the dump's header.
//!
//! A stripped binary (no `.symtab`, no DWARF: release builds, distro packages) cannot be read
//! this way yet: [`GoProcess::open`] says so, and the dump of its threads is printed instead.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::stack::MemReader;
use crate::unwind::cfi::{Section, elf_sections};
use crate::unwind::tables::{Segment, load_segments, mapping_bias};

/// Most goroutines read (Go's own dumps have no bound; this keeps a runaway slice finite).
pub const MAX_GOROUTINES: usize = 1_000_000;
/// Deepest goroutine stack walked.
const MAX_FRAMES: usize = 128;

/// Why a Go process's goroutines could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GoError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Elf(#[from] crate::unwind::cfi::UnwindError),
    #[error(
        "this Go binary is stripped (no {missing}): its goroutines cannot be read without a \
         symbol table and DWARF yet; build it without -ldflags=-s -w to see them"
    )]
    Stripped { missing: &'static str },
    #[error("its DWARF has no {0} (not a Go version this agent reads)")]
    Layout(String),
    #[error("reading its DWARF: {0}")]
    Dwarf(#[from] gimli::Error),
    #[error("reading the process's memory at {what}: it exited or the address is unmapped")]
    Memory { what: &'static str },
}

// ---------------------------------------------------------------------------------------------
// The executable: sections, symbols, DWARF
// ---------------------------------------------------------------------------------------------

const SHF_COMPRESSED: u64 = 0x800;
const ELFCOMPRESS_ZLIB: u32 = 1;

/// The executable, its sections (read as the unwinder reads them) and its loadable segments.
struct Elf {
    file: File,
    path: String,
    sections: Vec<Section>,
    segments: Vec<Segment>,
}

// Little-endian integers at an offset; 0 past the end (a short read or a bad offset never
// panics).
fn u32_at(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    b.get(o..o + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

impl Elf {
    fn open(path: &Path) -> Result<Elf, GoError> {
        let (file, sections) = elf_sections(path)?;
        let segments = load_segments(path).map_err(|source| GoError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Elf {
            file,
            path: path.display().to_string(),
            sections,
            segments,
        })
    }

    fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// A section's bytes, decompressed when it is (`SHF_COMPRESSED`, zlib, as Go writes
    /// DWARF); `None` when the binary has no such section.
    fn data(&self, name: &str) -> Result<Option<Vec<u8>>, GoError> {
        let Some(s) = self.section(name) else {
            return Ok(None);
        };
        let io = |source| GoError::Io {
            path: self.path.clone(),
            source,
        };
        let mut b = vec![0u8; s.size as usize];
        self.file.read_exact_at(&mut b, s.offset).map_err(io)?;
        if s.flags & SHF_COMPRESSED == 0 {
            return Ok(Some(b));
        }
        if b.len() < 24 || u32_at(&b, 0) != ELFCOMPRESS_ZLIB {
            return Err(GoError::Layout(format!("{name} compressed with zlib")));
        }
        let size = u64_at(&b, 8) as usize;
        let mut out = Vec::with_capacity(size);
        flate2::read::ZlibDecoder::new(&b[24..])
            .read_to_end(&mut out)
            .map_err(io)?;
        Ok(Some(out))
    }

    /// `(address, size)` of each of `names` in `.symtab`.
    fn symbols(&self, names: &[&str]) -> Result<HashMap<String, (u64, u64)>, GoError> {
        let (Some(symtab), Some(strtab)) = (self.data(".symtab")?, self.data(".strtab")?) else {
            return Err(GoError::Stripped {
                missing: "symbol table",
            });
        };
        let mut out = HashMap::new();
        for s in symtab.chunks_exact(24) {
            let n = u32_at(s, 0) as usize;
            let Some(rest) = strtab.get(n..) else {
                continue;
            };
            let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
            let name = &rest[..end];
            if let Some(w) = names.iter().find(|w| w.as_bytes() == name) {
                out.insert((*w).to_string(), (u64_at(s, 8), u64_at(s, 16)));
            }
        }
        Ok(out)
    }
}

/// Member offsets (and sizes) of the runtime's structures, from DWARF.
#[derive(Debug, Default)]
struct Structs {
    /// Struct name -> (byte size, member name -> offset).
    by_name: HashMap<String, (u64, HashMap<String, u64>)>,
}

impl Structs {
    fn read(elf: &Elf, wanted: &[&str]) -> Result<Structs, GoError> {
        let mut sections: HashMap<&'static str, Vec<u8>> = HashMap::new();
        // Every section a unit's header may point into (its line program too: gimli parses
        // that header with the unit).
        for id in [
            gimli::SectionId::DebugAbbrev,
            gimli::SectionId::DebugInfo,
            gimli::SectionId::DebugLine,
            gimli::SectionId::DebugRanges,
            gimli::SectionId::DebugAddr,
            gimli::SectionId::DebugStr,
            gimli::SectionId::DebugLineStr,
            gimli::SectionId::DebugStrOffsets,
        ] {
            if let Some(d) = elf.data(id.name())? {
                sections.insert(id.name(), d);
            }
        }
        if !sections.contains_key(".debug_info") {
            return Err(GoError::Stripped { missing: "DWARF" });
        }
        let empty: &[u8] = &[];
        let dwarf = gimli::Dwarf::load(|id| {
            Ok::<_, gimli::Error>(gimli::EndianSlice::new(
                sections.get(id.name()).map_or(empty, |v| v.as_slice()),
                gimli::LittleEndian,
            ))
        })?;
        let mut out = Structs::default();
        let mut units = dwarf.units();
        while let Some(header) = units.next()? {
            let unit = dwarf.unit(header)?;
            let mut entries = unit.entries();
            // The struct being read: (its depth, name).
            let mut current: Option<(isize, String)> = None;
            while let Some(e) = entries.next_dfs()? {
                let depth = e.depth();
                if current.as_ref().is_some_and(|(d, _)| depth <= *d) {
                    current = None;
                }
                let name = || -> Option<String> {
                    let v = e.attr_value(gimli::DW_AT_name)?;
                    let s = dwarf.attr_string(&unit, v).ok()?;
                    Some(String::from_utf8_lossy(s.slice()).into_owned())
                };
                if e.tag() == gimli::DW_TAG_structure_type {
                    if let Some(n) = name()
                        && wanted.contains(&n.as_str())
                        && !out.by_name.contains_key(&n)
                    {
                        let size = e
                            .attr_value(gimli::DW_AT_byte_size)
                            .and_then(|v| v.udata_value())
                            .unwrap_or(0);
                        out.by_name.insert(n.clone(), (size, HashMap::new()));
                        current = Some((depth, n));
                    }
                } else if e.tag() == gimli::DW_TAG_member
                    && let Some((d, s)) = &current
                    && depth == d + 1
                    && let (Some(n), Some(off)) = (
                        name(),
                        e.attr_value(gimli::DW_AT_data_member_location)
                            .and_then(|v| v.udata_value()),
                    )
                    && let Some((_, members)) = out.by_name.get_mut(s)
                {
                    members.insert(n, off);
                }
            }
            if wanted.iter().all(|w| out.by_name.contains_key(*w)) {
                break;
            }
        }
        Ok(out)
    }

    fn member(&self, s: &str, m: &str) -> Result<u64, GoError> {
        self.by_name
            .get(s)
            .and_then(|(_, ms)| ms.get(m).copied())
            .ok_or_else(|| GoError::Layout(format!("{s}.{m}")))
    }

    fn size(&self, s: &str) -> Result<u64, GoError> {
        self.by_name
            .get(s)
            .map(|(n, _)| *n)
            .filter(|n| *n > 0)
            .ok_or_else(|| GoError::Layout(s.to_string()))
    }
}

/// Where the fields of a `runtime.g` are, for this binary's Go version.
#[derive(Debug, Clone)]
struct GLayout {
    size: u64,
    stack_lo: u64,
    stack_hi: u64,
    m: u64,
    sched_pc: u64,
    sched_bp: u64,
    status: u64,
    goid: u64,
    waitsince: u64,
    waitreason: u64,
    gopc: u64,
    startpc: u64,
    /// Go 1.21 and later.
    parent_goid: Option<u64>,
    /// `runtime.m.procid`: the thread id of an M.
    m_procid: u64,
}

/// Where the runtime queues goroutines waiting on a semaphore (`sync.Mutex`, `RWMutex`,
/// `WaitGroup`...): `runtime.semtable`, an array of [`SEM_TAB_SIZE`] roots, each a treap of
/// `sudog`s by semaphore address, each node with a list of the other waiters of its address.
#[derive(Debug, Clone)]
struct SemaLayout {
    /// `runtime.semtable` (load bias applied) and its size in bytes.
    table: u64,
    table_size: u64,
    /// `runtime.semaRoot.treap`.
    treap: u64,
    sudog_size: u64,
    /// `runtime.sudog` fields: the goroutine, the treap's children, the semaphore's address,
    /// the next waiter of the same address.
    g: u64,
    prev: u64,
    next: u64,
    elem: u64,
    waitlink: u64,
}

/// `runtime.semTabSize`, the same in every Go version read.
const SEM_TAB_SIZE: u64 = 251;
/// Most semaphore waiters read (a runaway treap stays finite).
const MAX_SUDOGS: usize = 1_000_000;

impl SemaLayout {
    fn from(s: &Structs, table: (u64, u64)) -> Result<SemaLayout, GoError> {
        let q = |m: &str| s.member("runtime.sudog", m);
        Ok(SemaLayout {
            table: table.0,
            table_size: table.1,
            treap: s.member("runtime.semaRoot", "treap")?,
            sudog_size: s.size("runtime.sudog")?,
            g: q("g")?,
            prev: q("prev")?,
            next: q("next")?,
            elem: q("elem")?,
            waitlink: q("waitlink")?,
        })
    }

    /// Each goroutine waiting on a semaphore now: its `g`'s address -> the semaphore's.
    fn waiters(&self, mem: &MemReader) -> HashMap<u64, u64> {
        let mut out = HashMap::new();
        let entry = self.table_size / SEM_TAB_SIZE;
        let Some(table) = mem
            .read_many(&[(self.table, self.table_size as usize)])
            .pop()
            .flatten()
        else {
            return out;
        };
        let mut todo: Vec<u64> = (0..SEM_TAB_SIZE)
            .map(|i| u64_at(&table, (i * entry + self.treap) as usize))
            .filter(|p| *p != 0)
            .collect();
        // The treap changes as it is read: each node once, and a bound.
        let mut seen = std::collections::HashSet::new();
        while !todo.is_empty() && seen.len() < MAX_SUDOGS {
            let batch: Vec<u64> = std::mem::take(&mut todo)
                .into_iter()
                .filter(|p| seen.insert(*p))
                .collect();
            let bufs = mem.read_many(
                &batch
                    .iter()
                    .map(|&p| (p, self.sudog_size as usize))
                    .collect::<Vec<_>>(),
            );
            for b in bufs.into_iter().flatten() {
                let at = |o: u64| u64_at(&b, o as usize);
                if at(self.g) != 0 && at(self.elem) != 0 {
                    out.insert(at(self.g), at(self.elem));
                }
                todo.extend(
                    [at(self.prev), at(self.next), at(self.waitlink)]
                        .into_iter()
                        .filter(|p| *p != 0),
                );
            }
        }
        out
    }
}

impl GLayout {
    fn from(s: &Structs) -> Result<GLayout, GoError> {
        let g = |m: &str| s.member("runtime.g", m);
        let sched = g("sched")?;
        let stack = g("stack")?;
        Ok(GLayout {
            size: s.size("runtime.g")?,
            stack_lo: stack + s.member("runtime.stack", "lo")?,
            stack_hi: stack + s.member("runtime.stack", "hi")?,
            m: g("m")?,
            sched_pc: sched + s.member("runtime.gobuf", "pc")?,
            sched_bp: sched + s.member("runtime.gobuf", "bp")?,
            status: g("atomicstatus")?,
            goid: g("goid")?,
            waitsince: g("waitsince")?,
            waitreason: g("waitreason")?,
            gopc: g("gopc")?,
            startpc: g("startpc")?,
            parent_goid: g("parentGoid").ok(),
            m_procid: s.member("runtime.m", "procid")?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The process
// ---------------------------------------------------------------------------------------------

/// What is needed to read one Go process's goroutines.
pub struct GoProcess {
    pid: u32,
    layout: GLayout,
    /// `runtime.allgs` in the process (load bias applied).
    allgs: u64,
    /// `runtime.waitReasonStrings`: address and number of entries.
    wait_reasons: (u64, u64),
    /// `runtime.buildVersion` (a Go string) when present.
    build_version: Option<u64>,
    /// The semaphore waiters' table, when the binary describes it.
    sema: Option<SemaLayout>,
    bias: u64,
}

/// Whether the executable is a Go program (it has the sections every Go linker writes).
pub fn is_go(exe: &Path) -> bool {
    Elf::open(exe)
        .is_ok_and(|e| e.section(".gopclntab").is_some() || e.section(".go.buildinfo").is_some())
}

/// The load bias of the executable of process `pid` (0 for Go's default, non-PIE,
/// executables): from its first mapping in `/proc/PID/maps`, as the unwinder computes it.
fn load_bias(pid: u32, segments: &[Segment]) -> u64 {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 || exe.as_deref().is_none_or(|e| Path::new(f[5]) != e) {
                return None;
            }
            let start = u64::from_str_radix(f[0].split_once('-')?.0, 16).ok()?;
            let offset = u64::from_str_radix(f[2], 16).ok()?;
            mapping_bias(segments, start, offset)
        })
        .unwrap_or(0)
}

impl GoProcess {
    /// Reads the layout of process `pid`'s Go runtime from its executable.
    pub fn open(pid: u32) -> Result<GoProcess, GoError> {
        let exe = std::path::PathBuf::from(format!("/proc/{pid}/exe"));
        let elf = Elf::open(&exe)?;
        let syms = elf.symbols(&[
            "runtime.allgs",
            "runtime.waitReasonStrings",
            "runtime.buildVersion",
            "runtime.semtable",
        ])?;
        let Some(&(allgs, _)) = syms.get("runtime.allgs") else {
            return Err(GoError::Stripped {
                missing: "runtime.allgs symbol",
            });
        };
        let structs = Structs::read(
            &elf,
            &[
                "runtime.g",
                "runtime.gobuf",
                "runtime.m",
                "runtime.stack",
                "runtime.sudog",
                "runtime.semaRoot",
            ],
        )?;
        let layout = GLayout::from(&structs)?;
        let bias = load_bias(pid, &elf.segments);
        // Without it the dump only cannot say which lock a goroutine waits for.
        let sema = syms
            .get("runtime.semtable")
            .and_then(|&(a, size)| SemaLayout::from(&structs, (a.wrapping_add(bias), size)).ok());
        let wait_reasons = syms
            .get("runtime.waitReasonStrings")
            .map(|&(a, size)| (a.wrapping_add(bias), size / 16))
            .unwrap_or_default();
        Ok(GoProcess {
            pid,
            layout,
            allgs: allgs.wrapping_add(bias),
            wait_reasons,
            build_version: syms
                .get("runtime.buildVersion")
                .map(|&(a, _)| a.wrapping_add(bias)),
            sema,
            bias,
        })
    }

    /// The process's goroutines now (dead ones left out), each with its raw stack.
    pub fn read(&self, mem: &MemReader) -> Result<GoSnapshot, GoError> {
        let l = &self.layout;
        let ptr = mem.read_u64(self.allgs).ok_or(GoError::Memory {
            what: "runtime.allgs",
        })?;
        let len = mem.read_u64(self.allgs + 8).ok_or(GoError::Memory {
            what: "runtime.allgs",
        })? as usize;
        let truncated = len > MAX_GOROUTINES;
        let mut reasons = Vec::new();
        for i in 0..self.wait_reasons.1.min(256) {
            reasons.push(go_string(mem, self.wait_reasons.0 + i * 16).unwrap_or_default());
        }
        // Every g at once, then the stacks of the parked ones at once (100k goroutines, read
        // one by one through the page cache, took over 1.5 s).
        let n = len.min(MAX_GOROUTINES);
        let gps: Vec<u64> = mem
            .read_many(&[(ptr, 8 * n)])
            .pop()
            .flatten()
            .map(|b| b.chunks_exact(8).map(|c| u64_at(c, 0)).collect())
            .ok_or(GoError::Memory {
                what: "runtime.allgs",
            })?;
        let structs = mem.read_many(
            &gps.iter()
                .map(|&g| (g, l.size as usize))
                .collect::<Vec<_>>(),
        );
        let sema_of = self
            .sema
            .as_ref()
            .map(|s| s.waiters(mem))
            .unwrap_or_default();
        let mut goroutines = Vec::new();
        let mut stacks: Vec<(usize, u64, u64, (u64, u64))> = Vec::new();
        for (&gp, b) in gps.iter().zip(structs) {
            let Some(b) = b else { continue };
            let at = |o: u64| u64_at(&b, o as usize);
            let status = u32_at(&b, l.status as usize);
            if status & !GSCAN == GDEAD {
                continue;
            }
            let m = at(l.m);
            let thread = (m != 0)
                .then(|| mem.read_u64(m + l.m_procid))
                .flatten()
                .filter(|t| *t != 0)
                .map(|t| t as u32);
            if status & !GSCAN != GRUNNING {
                stacks.push((
                    goroutines.len(),
                    at(l.sched_pc),
                    at(l.sched_bp),
                    (at(l.stack_lo), at(l.stack_hi)),
                ));
            }
            goroutines.push(Goroutine {
                goid: at(l.goid),
                status,
                wait_reason: b.get(l.waitreason as usize).copied().unwrap_or(0),
                wait_since_ns: at(l.waitsince) as i64,
                gopc: at(l.gopc),
                startpc: at(l.startpc),
                parent_goid: l.parent_goid.map(at),
                thread,
                pcs: Vec::new(),
                sema: (status & !GSCAN == GWAITING)
                    .then(|| sema_of.get(&gp).copied())
                    .flatten(),
                lock_refs: Vec::new(),
                mutex_state: None,
            });
        }
        // The addresses a lock could have, given a semaphore it is waited on by: a Mutex's is
        // 4 bytes in, an RWMutex's writer's and readers' 8 and 12.
        let lock_addrs: std::collections::HashSet<u64> = goroutines
            .iter()
            .filter_map(|g| g.sema)
            .flat_map(|s| [4, 8, 12].map(|o| s.wrapping_sub(o)))
            .collect();
        let states = mem.read_many(
            &goroutines
                .iter()
                .map(|g| g.sema.map_or((0, 0), |s| (s.wrapping_sub(4), 4)))
                .collect::<Vec<_>>(),
        );
        for (g, st) in goroutines.iter_mut().zip(states) {
            g.mutex_state = g.sema.and(st).map(|b| u32_at(&b, 0));
        }
        // Each parked stack from its frame pointer to its top, in one read where it is small.
        let spans: Vec<(u64, usize)> = stacks
            .iter()
            .map(|&(_, _, bp, (lo, hi))| {
                let ok = bp >= lo && bp < hi && hi - bp <= STACK_READ_MAX;
                if ok { (bp, (hi - bp) as usize) } else { (0, 0) }
            })
            .collect();
        let bufs = mem.read_many(&spans);
        for ((i, pc, bp, bounds), (span, buf)) in stacks.into_iter().zip(spans.iter().zip(bufs)) {
            goroutines[i].pcs = match buf.filter(|b| !b.is_empty()) {
                Some(b) => {
                    // A lock-waiting goroutine's references to the locks others wait for:
                    // who may hold them (Go records no holder).
                    if goroutines[i].sema.is_some() {
                        let mut refs: Vec<u64> = b
                            .chunks_exact(8)
                            .map(|w| u64_at(w, 0))
                            .filter(|w| lock_addrs.contains(w))
                            .collect();
                        refs.sort_unstable();
                        refs.dedup();
                        goroutines[i].lock_refs = refs;
                    }
                    let base = span.0;
                    let word = |a: u64| {
                        let o = a.checked_sub(base)? as usize;
                        b.get(o..o + 8).map(|w| u64_at(w, 0))
                    };
                    walk(word, pc, bp, bounds)
                }
                None => walk(|a| mem.read_u64(a), pc, bp, bounds),
            };
        }
        let version = self
            .build_version
            .and_then(|a| go_string(mem, a))
            .filter(|v| !v.is_empty());
        Ok(GoSnapshot {
            pid: self.pid,
            version,
            goroutines,
            wait_reasons: reasons,
            allgs_len: len,
            truncated,
            bias: self.bias,
        })
    }
}

/// The wait reasons whose waits Go's own block profile records (`runtime.blockevent` after
/// the park): channel operations, a select with cases, and the sync package's waits. Matched
/// against the binary's own `waitReasonStrings` (the numbers move between versions). Go 1.19
/// names every semaphore wait `semacquire` (its runtime-internal ones, which Go does not
/// record, too).
const BLOCK_PROFILE_REASONS: &[&str] = &[
    "chan receive",
    "chan send",
    "select",
    "sync.Cond.Wait",
    "semacquire",
    "sync.Mutex.Lock",
    "sync.RWMutex.RLock",
    "sync.RWMutex.Lock",
    "sync.WaitGroup.Wait",
];

/// The wait reasons of a goroutine waiting for a `sync.Mutex` or `sync.RWMutex` (Go's mutex
/// profile), once `runtime_SemacquireMutex` named the lock. Go 1.19 calls every semaphore wait
/// `semacquire`; from 1.20 a lock's has its own name, and `semacquire` (a `WaitGroup`, the
/// runtime's own) is left out.
const MUTEX_PROFILE_REASONS: &[&str] =
    &["sync.Mutex.Lock", "sync.RWMutex.Lock", "sync.RWMutex.RLock"];

/// The functions a goroutine calls to wait for a lock's semaphore (address in the first
/// argument), by Go version; a binary has those its program uses.
const SEMACQUIRE_MUTEX: &[&str] = &[
    "sync.runtime_SemacquireMutex",
    "sync.runtime_SemacquireRWMutex",
    "sync.runtime_SemacquireRWMutexR",
    "internal/sync.runtime_SemacquireMutex",
];

/// The goroutine probes of one Go process ([`crate::kernel::Collector::attach_go`]) and the
/// names of the wait reasons they report.
#[derive(Debug, Clone)]
pub struct GoRuntimeProbes {
    pub probes: crate::kernel::GoProbes,
    /// The binary's wait reasons by number (labels of the block profile's samples).
    pub wait_reasons: Vec<String>,
}

/// The address of the one `call rel32` instruction in `code` (loaded at `at`) that calls
/// `callee`, if there is exactly one such byte pattern (a uprobe there is emulated by the
/// kernel, not single-stepped; two matches could mean one is inside another instruction).
fn call_site(code: &[u8], at: u64, callee: u64) -> Option<u64> {
    let mut found = None;
    for i in 0..code.len().saturating_sub(4) {
        if code[i] != 0xe8 {
            continue;
        }
        let rel = i32::from_le_bytes(code[i + 1..i + 5].try_into().ok()?) as i64;
        let next = at as i64 + i as i64 + 5;
        if next.wrapping_add(rel) as u64 == callee {
            if found.is_some() {
                return None;
            }
            found = Some(at + i as u64);
        }
    }
    found
}

/// The file offset of virtual address `vaddr` of the executable.
fn file_offset(segments: &[Segment], vaddr: u64) -> Option<u64> {
    segments
        .iter()
        .find(|s| vaddr >= s.vaddr && vaddr < s.vaddr + s.filesz)
        .map(|s| vaddr - s.vaddr + s.offset)
}

/// The bit mask (of `GoProc::block_reasons`, `mutex_reasons`) of the reasons in `names`.
fn reason_mask(reasons: &[String], names: &[&str]) -> [u64; 4] {
    let mut mask = [0u64; 4];
    for (i, r) in reasons.iter().enumerate().take(256) {
        if names.contains(&r.as_str()) {
            mask[i / 64] |= 1 << (i % 64);
        }
    }
    mask
}

/// The reasons of a lock wait for this binary's Go version ([`MUTEX_PROFILE_REASONS`], and
/// `semacquire` where it is all there is: Go 1.19).
fn mutex_reason_mask(reasons: &[String]) -> [u64; 4] {
    let named = reasons.iter().any(|r| r == "sync.Mutex.Lock");
    if named {
        reason_mask(reasons, MUTEX_PROFILE_REASONS)
    } else {
        reason_mask(reasons, &["semacquire"])
    }
}

/// Reads what the goroutine probes of Go process `pid` need from its executable (the symbols
/// of `runtime.gopark`, `runtime.ready`, the lock-wait entries and
/// `runtime.waitReasonStrings`, the layout of `runtime.g` and `runtime.m` from DWARF) and its
/// memory (the wait reasons' names).
pub fn runtime_probes(pid: u32) -> Result<GoRuntimeProbes, GoError> {
    let exe = std::path::PathBuf::from(format!("/proc/{pid}/exe"));
    let elf = Elf::open(&exe)?;
    let mut wanted = vec![
        "runtime.gopark",
        "runtime.ready",
        "runtime.waitReasonStrings",
    ];
    wanted.extend_from_slice(SEMACQUIRE_MUTEX);
    let syms = elf.symbols(&wanted)?;
    if !(syms.contains_key("runtime.gopark") && syms.contains_key("runtime.ready")) {
        return Err(GoError::Stripped {
            missing: "runtime.gopark and runtime.ready symbols",
        });
    }
    let reasons_at = syms.get("runtime.waitReasonStrings").copied();
    let structs = Structs::read(&elf, &["runtime.g", "runtime.gobuf", "runtime.m"])?;
    let sched = structs.member("runtime.g", "sched")?;
    let field = |m: &str| -> Result<u32, GoError> {
        Ok((sched + structs.member("runtime.gobuf", m)?) as u32)
    };
    let Some((reasons_addr, reasons_size)) = reasons_at else {
        return Err(GoError::Stripped {
            missing: "runtime.waitReasonStrings symbol",
        });
    };
    let bias = load_bias(pid, &elf.segments);
    let mem = MemReader::open(pid).map_err(|source| GoError::Io {
        path: format!("/proc/{pid}/mem"),
        source,
    })?;
    let wait_reasons: Vec<String> = (0..(reasons_size / 16).min(256))
        .map(|i| go_string(&mem, reasons_addr.wrapping_add(bias) + i * 16).unwrap_or_default())
        .collect();
    if wait_reasons.iter().all(String::is_empty) {
        return Err(GoError::Memory {
            what: "runtime.waitReasonStrings",
        });
    }
    // Where in `caller` to probe: its one call of `callee` when there is one, else its entry.
    let probe_at = |caller: &str, callee: &str| -> Option<(u64, bool)> {
        let &(start, size) = syms.get(caller)?;
        let code_at = file_offset(&elf.segments, start)?;
        let site = syms.get(callee).and_then(|&(target, _)| {
            let mut code = vec![0u8; size.min(1 << 16) as usize];
            elf.file.read_exact_at(&mut code, code_at).ok()?;
            call_site(&code, start, target)
        });
        Some(match site {
            Some(a) => (file_offset(&elf.segments, a)?, true),
            None => (code_at, false),
        })
    };
    let (gopark_offset, park_at_call) = probe_at("runtime.gopark", "runtime.mcall")
        .ok_or_else(|| GoError::Layout("runtime.gopark in a loaded segment".into()))?;
    let (ready_offset, _) = probe_at("runtime.ready", "runtime.casgstatus")
        .ok_or_else(|| GoError::Layout("runtime.ready in a loaded segment".into()))?;
    let semacquire_offsets = SEMACQUIRE_MUTEX
        .iter()
        .filter_map(|n| probe_at(n, "runtime.semacquire1"))
        .map(|(o, _)| o)
        .collect();
    let park_reason_in_g = if park_at_call {
        structs.member("runtime.g", "waitreason")? as u32
    } else {
        0
    };
    Ok(GoRuntimeProbes {
        probes: crate::kernel::GoProbes {
            gopark_offset,
            ready_offset,
            semacquire_offsets,
            proc: stallscope_common::GoProc {
                sched_pc: field("pc")?,
                sched_sp: field("sp")?,
                sched_bp: field("bp")?,
                g_m: structs.member("runtime.g", "m")? as u32,
                m_curg: structs.member("runtime.m", "curg")? as u32,
                park_reason_in_g,
                block_reasons: reason_mask(&wait_reasons, BLOCK_PROFILE_REASONS),
                mutex_reasons: mutex_reason_mask(&wait_reasons),
            },
            exe,
        },
        wait_reasons,
    })
}

/// A Go string header (pointer, length) at `addr`, read as text.
fn go_string(mem: &MemReader, addr: u64) -> Option<String> {
    let p = mem.read_u64(addr)?;
    let n = mem.read_u64(addr + 8)?;
    if n == 0 {
        return Some(String::new());
    }
    if n > 4096 {
        return None;
    }
    Some(String::from_utf8_lossy(&mem.read(p, n as usize)?).into_owned())
}

/// Up the frame-pointer chain from a saved `pc`/`bp`, staying inside the goroutine's stack
/// `[lo, hi)`: `[bp]` is the caller's frame pointer, `[bp+8]` the return address.
/// Most bytes of a goroutine's stack read at once for its walk (above its saved frame
/// pointer); a deeper stack is walked a word at a time.
const STACK_READ_MAX: u64 = 64 * 1024;

/// A parked goroutine's frames: `pc`, then up the frame-pointer chain from `bp` within its
/// stack `[lo, hi)`, reading the words with `word`.
fn walk(word: impl Fn(u64) -> Option<u64>, pc: u64, mut bp: u64, (lo, hi): (u64, u64)) -> Vec<u64> {
    let mut pcs = Vec::new();
    if pc == 0 {
        return pcs;
    }
    pcs.push(pc);
    while pcs.len() < MAX_FRAMES && bp >= lo && bp + 16 <= hi && bp.is_multiple_of(8) {
        let (Some(next), Some(ret)) = (word(bp), word(bp + 8)) else {
            break;
        };
        if ret == 0 {
            break;
        }
        pcs.push(ret);
        if next <= bp {
            break;
        }
        bp = next;
    }
    pcs
}

const GRUNNING: u32 = 2;
const GSYSCALL: u32 = 3;
const GWAITING: u32 = 4;
const GDEAD: u32 = 6;
const GSCAN: u32 = 0x1000;

/// `runtime.gStatusStrings` (the same in every Go version since 1.14).
const STATUS: [&str; 10] = [
    "idle",
    "runnable",
    "running",
    "syscall",
    "waiting",
    "moribund_unused",
    "dead",
    "enqueue_unused",
    "copystack",
    "preempted",
];

/// One goroutine as read.
#[derive(Debug, Clone)]
pub struct Goroutine {
    pub goid: u64,
    pub status: u32,
    pub wait_reason: u8,
    /// `g.waitsince`: the runtime's clock (CLOCK_MONOTONIC ns) when a GC first saw it blocked;
    /// 0 until then.
    pub wait_since_ns: i64,
    pub gopc: u64,
    pub startpc: u64,
    pub parent_goid: Option<u64>,
    /// The thread of the M it is on, if any.
    pub thread: Option<u32>,
    /// Its stack, innermost first (empty when it is running: the stack is the thread's).
    pub pcs: Vec<u64>,
    /// The semaphore it waits on (from `runtime.semtable`), when it waits on one.
    pub sema: Option<u64>,
    /// Addresses of locks others wait for that its stack holds (only of a goroutine that
    /// itself waits on a semaphore).
    pub lock_refs: Vec<u64>,
    /// The `sync.Mutex` state word beside its semaphore (bit 0: locked), when it waits on one.
    pub mutex_state: Option<u32>,
}

/// All goroutines of a process at one moment.
#[derive(Debug, Clone)]
pub struct GoSnapshot {
    pub pid: u32,
    pub version: Option<String>,
    pub goroutines: Vec<Goroutine>,
    pub wait_reasons: Vec<String>,
    /// `len(runtime.allgs)`, dead goroutines included.
    pub allgs_len: usize,
    pub truncated: bool,
    pub bias: u64,
}

impl GoSnapshot {
    /// The state Go's own dump shows in brackets: the wait reason of a waiting goroutine
    /// (from this binary's `waitReasonStrings`), else its status.
    pub fn state(&self, g: &Goroutine) -> String {
        let status = g.status & !GSCAN;
        if status == GWAITING
            && g.wait_reason != 0
            && let Some(r) = self.wait_reasons.get(g.wait_reason as usize)
            && !r.is_empty()
        {
            return r.clone();
        }
        STATUS
            .get(status as usize)
            .map_or_else(|| "???".to_string(), |s| (*s).to_string())
    }

    /// Whole minutes since `waitsince`, as Go shows them (`, 5 minutes`); `now_mono_ns` is
    /// CLOCK_MONOTONIC now, the runtime's `nanotime`.
    pub fn minutes(&self, g: &Goroutine, now_mono_ns: i64) -> Option<i64> {
        let status = g.status & !GSCAN;
        ((status == GWAITING || status == GSYSCALL) && g.wait_since_ns != 0)
            .then(|| (now_mono_ns - g.wait_since_ns) / 60_000_000_000)
            .filter(|m| *m >= 1)
    }
}

/// A frame of a symbolized goroutine stack.
#[derive(Debug, Clone, PartialEq)]
pub struct GoFrame {
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The pc's offset from its function's entry, on the frame of the function whose code it
    /// is (Go's `+0x...`; inlined frames have none).
    pub offset: Option<u64>,
    /// A wrapper the compiler made (a `go` statement's closure...): Go does not show it.
    pub wrapper: bool,
}

/// Whether Go's own traceback shows a frame of `function` (`runtime.showfuncinfo` at the
/// default GOTRACEBACK): the runtime's unexported functions are hidden.
pub fn shown(function: &str) -> bool {
    match function.strip_prefix("runtime.") {
        Some(rest) => rest.chars().next().is_some_and(|c| c.is_ascii_uppercase()),
        None => function.contains('.'),
    }
}

/// Whether a goroutine started at `start` (its function's name) is one of the runtime's own
/// (Go's `isSystemGoroutine`: it leaves them out of its dumps and of `NumGoroutine`).
pub fn is_system(start: &str) -> bool {
    start.starts_with("runtime.") && start != "runtime.main"
}

/// One goroutine in Go's `debug=2` text.
pub fn render_goroutine(
    snap: &GoSnapshot,
    g: &Goroutine,
    frames: &[GoFrame],
    created_by: Option<&GoFrame>,
    now_mono_ns: i64,
) -> String {
    use std::fmt::Write as _;
    let mut s = format!("goroutine {} [{}", g.goid, snap.state(g));
    if g.status & GSCAN != 0 {
        s.push_str(" (scan)");
    }
    if let Some(m) = snap.minutes(g, now_mono_ns) {
        let _ = write!(s, ", {m} minutes");
    }
    s.push_str("]:\n");
    if g.status & !GSCAN == GRUNNING {
        s.push_str("\tgoroutine running on other thread; stack unavailable\n");
    }
    let visible: Vec<&GoFrame> = frames.iter().filter(|f| shown_frame(f)).collect();
    let frames: Vec<&GoFrame> = if visible.is_empty() {
        frames.iter().collect()
    } else {
        visible
    };
    for f in frames {
        let _ = writeln!(s, "{}(...)", f.function);
        let _ = writeln!(
            s,
            "\t{}:{}{}",
            f.file.as_deref().unwrap_or("?"),
            f.line.unwrap_or(0),
            f.offset.map(|o| format!(" +{o:#x}")).unwrap_or_default()
        );
    }
    if let Some(c) = created_by
        && g.goid != 1
    {
        let _ = write!(s, "created by {}", c.function);
        if let Some(p) = g.parent_goid {
            let _ = write!(s, " in goroutine {p}");
        }
        let _ = writeln!(
            s,
            "\n\t{}:{}{}",
            c.file.as_deref().unwrap_or("?"),
            c.line.unwrap_or(0),
            c.offset.map(|o| format!(" +{o:#x}")).unwrap_or_default()
        );
    }
    s
}

/// CLOCK_MONOTONIC now, in ns: the Go runtime's `nanotime`.
fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Symbolizes stacks of one process in one batch: per stack, its frames (inlined ones
/// included, innermost first). Frame 0 of a stack is an exact address, the others return
/// addresses.
fn symbolize(
    pid: u32,
    stacks: Vec<Vec<u64>>,
    maps: &crate::unwind::maps::MapsCache,
    symbolizer: &mut crate::symbolize::Symbolizer,
    funcs: &dyn Fn(u64) -> Option<(u64, bool)>,
) -> Vec<Vec<GoFrame>> {
    use crate::model::{RawSample, RawStack};
    let samples = stacks
        .into_iter()
        .map(|user| RawSample {
            pid,
            stack: RawStack {
                user,
                kernel: vec![],
            },
            values: vec![1],
            labels: vec![],
        })
        .collect();
    let p = super::capture::symbolize_stacks(samples, maps, symbolizer);
    p.samples
        .iter()
        .map(|s| {
            let mut frames = Vec::new();
            for (j, &li) in s.locations.iter().enumerate() {
                let loc = &p.locations[li];
                // The symbolizer looks a return address up less one (the call's line).
                let pc = loc.address + u64::from(j > 0);
                let n = loc.lines.len();
                let func = funcs(loc.address);
                frames.extend(loc.lines.iter().enumerate().map(|(k, l)| {
                    let physical = k + 1 == n;
                    GoFrame {
                        function: l.function.clone(),
                        file: l.file.clone(),
                        line: l.line,
                        offset: func.filter(|_| physical).map(|(e, _)| pc - e),
                        wrapper: physical && func.is_some_and(|(_, w)| w),
                    }
                }));
            }
            frames
        })
        .collect()
}

/// Go process `pid`'s goroutines now.
fn snapshot(pid: u32) -> Result<GoSnapshot, GoError> {
    let go = GoProcess::open(pid)?;
    let mem = MemReader::open(pid).map_err(|source| GoError::Io {
        path: format!("/proc/{pid}/mem"),
        source,
    })?;
    go.read(&mem)
}

/// A Go process's goroutines, read and symbolized, with the header of their dump.
struct Collected {
    snap: GoSnapshot,
    /// Indexes of the goroutines shown (not the runtime's own), by id.
    shown: Vec<usize>,
    stacks: Vec<Vec<GoFrame>>,
    creators: Vec<Vec<GoFrame>>,
    now: i64,
    header: String,
    deadlocks: Vec<GoDeadlock>,
}

/// Goroutines each waiting for a lock the next one holds, the last for the first's
/// ([`super::golocks`]: the holders are inferred).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GoDeadlock {
    pub waits: Vec<GoLockWait>,
    /// One line: who waits for what, held by whom.
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GoLockWait {
    pub goroutine: u64,
    /// The lock's address (hex).
    pub lock: String,
    /// Its symbol, for a global (`main.accounts+0x10`).
    pub lock_name: Option<String>,
    /// `sync.Mutex` or `sync.RWMutex`.
    pub lock_type: &'static str,
    /// Where the goroutine waits, `function (file:line)`.
    pub at: String,
    /// The goroutine inferred to hold the lock.
    pub held_by: u64,
}

/// How the holders of a Go deadlock are known, said under it.
pub const GO_HOLDER_NOTE: &str = "Go's locks do not record their holder: each is the only other \
     lock-waiting goroutine whose stack holds the lock's address (a deferred Unlock keeps it), \
     and the lock is locked";

/// The deadlocks among the shown goroutines waiting for locks.
fn lock_cycles(
    pid: u32,
    snap: &GoSnapshot,
    shown: &[usize],
    stacks: &[Vec<GoFrame>],
    maps: &crate::unwind::maps::MapsCache,
    symbolizer: &mut crate::symbolize::Symbolizer,
) -> Vec<GoDeadlock> {
    use super::golocks::{LockKind, LockWait, cycles, holders};
    let mut at = Vec::new();
    let mut waits = Vec::new();
    for &i in shown {
        let g = &snap.goroutines[i];
        let Some(sema) = g.sema else { continue };
        let Some(kind) = LockKind::of(stacks[i].iter().map(|f| f.function.as_str())) else {
            continue;
        };
        waits.push(LockWait {
            goid: g.goid,
            lock: sema.wrapping_sub(kind.sema_offset()),
            kind,
            refs: g.lock_refs.clone(),
            // An RWMutex's state is not one word: only a Mutex's is checked.
            locked: kind != LockKind::Mutex || g.mutex_state.is_some_and(|s| s & 1 != 0),
        });
        at.push(i);
    }
    let held = holders(&waits);
    cycles(&waits)
        .into_iter()
        .map(|c| {
            let waits: Vec<GoLockWait> = c
                .iter()
                .map(|&k| {
                    let w = &waits[k];
                    GoLockWait {
                        goroutine: w.goid,
                        lock: format!("{:#x}", w.lock),
                        lock_name: symbolizer.data_symbol(pid, w.lock, maps),
                        lock_type: w.kind.type_name(),
                        at: place(&stacks[at[k]]),
                        held_by: held[k].map_or(0, |h| waits[h].goid),
                    }
                })
                .collect();
            let description = waits
                .iter()
                .map(|w| {
                    format!(
                        "goroutine {} waits at {} for the {} {}, which goroutine {} holds",
                        w.goroutine,
                        w.at,
                        w.lock_type,
                        w.lock_name
                            .clone()
                            .unwrap_or_else(|| format!("at {}", w.lock)),
                        w.held_by
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            GoDeadlock { waits, description }
        })
        .collect()
}

fn collect(
    pid: u32,
    maps: &crate::unwind::maps::MapsCache,
    symbolizer: &mut crate::symbolize::Symbolizer,
) -> Result<Collected, GoError> {
    use std::fmt::Write as _;
    let snap = snapshot(pid)?;
    let now = monotonic_ns();
    // One batch: each goroutine's stack, the function it started in, where it was created
    // (the call's return address less one, as Go's traceback looks it up).
    let n = snap.goroutines.len();
    let mut stacks: Vec<Vec<u64>> = snap.goroutines.iter().map(|g| g.pcs.clone()).collect();
    stacks.extend(snap.goroutines.iter().map(|g| vec![g.startpc]));
    stacks.extend(
        snap.goroutines
            .iter()
            .map(|g| vec![g.gopc.saturating_sub(1)]),
    );
    // Function entries for Go's `+0x` offsets, from the binary's own table.
    let table = crate::gopclntab::PcLnTab::open(Path::new(&format!("/proc/{pid}/exe")));
    let bias = snap.bias;
    let funcs = |pc: u64| {
        let (t, at) = (table.as_ref()?, pc.checked_sub(bias)?);
        Some((t.entry(at)? + bias, t.is_wrapper(at)))
    };
    let entry = |pc: u64| funcs(pc).map(|f| f.0);
    let mut frames = symbolize(pid, stacks, maps, symbolizer, &funcs);
    let mut creators = frames.split_off(2 * n);
    // A creator's frame is its `go` statement's pc (looked up less one): its offset is from
    // that pc.
    for (c, g) in creators.iter_mut().zip(&snap.goroutines) {
        if let Some(f) = c.last_mut() {
            f.offset = entry(g.gopc.saturating_sub(1)).map(|e| g.gopc - e);
        }
    }
    let starts = frames.split_off(n);
    let stacks = frames;
    let mut shown: Vec<usize> = (0..n)
        .filter(|&i| {
            let start = starts[i].last().map_or("", |f| f.function.as_str());
            !is_system(start)
        })
        .collect();
    shown.sort_by_key(|&i| snap.goroutines[i].goid);
    let mut s = format!(
        "goroutines of process {pid}{}: {} ({}; {} of the runtime's own left out, as Go \
         leaves them out)\n",
        snap.version
            .as_deref()
            .map(|v| format!(" ({v})"))
            .unwrap_or_default(),
        shown.len(),
        by_state(&snap, &shown)
            .iter()
            .map(|(st, c)| format!("{c} {st}"))
            .collect::<Vec<_>>()
            .join(", "),
        n - shown.len()
    );
    if snap.truncated {
        let _ = writeln!(
            s,
            "only the first {MAX_GOROUTINES} of {} goroutine slots were read",
            snap.allgs_len
        );
    }
    let _ = writeln!(
        s,
        "read from outside, not stopped (its OS threads: agent dump --pid {pid} --threads)"
    );
    let deadlocks = lock_cycles(pid, &snap, &shown, &stacks, maps, symbolizer);
    for d in &deadlocks {
        let _ = writeln!(s, "DEADLOCK: {}", d.description);
    }
    if !deadlocks.is_empty() {
        let _ = writeln!(s, "({GO_HOLDER_NOTE}.)");
    }
    Ok(Collected {
        snap,
        shown,
        stacks,
        creators,
        now,
        header: s,
        deadlocks,
    })
}

/// The shown goroutines' counts by state, largest first.
fn by_state(snap: &GoSnapshot, shown: &[usize]) -> Vec<(String, usize)> {
    let mut by: HashMap<String, usize> = HashMap::new();
    for &i in shown {
        *by.entry(snap.state(&snap.goroutines[i])).or_default() += 1;
    }
    let mut states: Vec<(String, usize)> = by.into_iter().collect();
    states.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    states
}

/// Go's goroutine dump text of process `pid` (`debug=2`, or with `grouped` `debug=1`).
pub fn dump_text(
    pid: u32,
    maps: &crate::unwind::maps::MapsCache,
    symbolizer: &mut crate::symbolize::Symbolizer,
    grouped: bool,
) -> Result<String, GoError> {
    let c = collect(pid, maps, symbolizer)?;
    Ok(render_collected(&c, grouped))
}

fn render_collected(c: &Collected, grouped: bool) -> String {
    let mut s = c.header.clone();
    if grouped {
        s.push('\n');
        s.push_str(&render_grouped(&c.snap, &c.shown, &c.stacks));
        return s;
    }
    for &i in &c.shown {
        let g = &c.snap.goroutines[i];
        s.push('\n');
        s.push_str(&render_goroutine(
            &c.snap,
            g,
            &c.stacks[i],
            c.creators[i].last(),
            c.now,
        ));
    }
    s
}

/// What a capture's triage reads of a Go process's goroutines: how many in each state, and
/// the largest groups waiting in the same state at the same place, created at the same place
/// (a leak shows as one such group growing).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GoroutineSummary {
    pub pid: u32,
    pub total: usize,
    pub by_state: Vec<(String, usize)>,
    /// Largest first.
    pub groups: Vec<GoroutineGroup>,
    /// Deadlocks on locks, one line each ([`GoDeadlock::description`]).
    pub deadlocks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GoroutineGroup {
    pub count: usize,
    pub state: String,
    /// Where they are: the first frame Go shows, `function (file:line)`.
    pub at: String,
    /// Where they were created, `function (file:line)` (none for goroutine 1).
    pub created_by: Option<String>,
    /// The longest time in the state that Go knows (`waitsince`, set by a garbage
    /// collection), minutes.
    pub minutes: Option<i64>,
}

/// Whether `function` is the program's own rather than the standard library's: package
/// `main`, or a module path (its first element has a dot: `github.com/...`).
fn is_program_frame(function: &str) -> bool {
    let first = function.split('/').next().unwrap_or("");
    function.starts_with("main.") || (function.contains('/') && first.contains('.'))
}

fn frame_at(f: &GoFrame) -> String {
    let file = f.file.as_deref().map(|p| p.rsplit('/').next().unwrap_or(p));
    match (file, f.line) {
        (Some(file), Some(line)) => format!("{} ({file}:{line})", f.function),
        _ => f.function.clone(),
    }
}

/// Where a goroutine is: its innermost frame of the program's own, else the first Go shows.
fn place(stack: &[GoFrame]) -> String {
    stack
        .iter()
        .find(|f| is_program_frame(&f.function) && !f.wrapper)
        .or_else(|| stack.iter().find(|f| shown_frame(f)))
        .or(stack.first())
        .map_or_else(|| "(running: stack not read)".to_string(), frame_at)
}

fn summarize(c: &Collected) -> GoroutineSummary {
    let mut groups: Vec<GoroutineGroup> = Vec::new();
    for &i in &c.shown {
        let g = &c.snap.goroutines[i];
        let state = c.snap.state(g);
        let at = place(&c.stacks[i]);
        let created_by = (g.goid != 1)
            .then(|| c.creators[i].last().map(frame_at))
            .flatten();
        let minutes = c.snap.minutes(g, c.now);
        match groups
            .iter_mut()
            .find(|x| x.state == state && x.at == at && x.created_by == created_by)
        {
            Some(x) => {
                x.count += 1;
                x.minutes = x.minutes.max(minutes);
            }
            None => groups.push(GoroutineGroup {
                count: 1,
                state,
                at,
                created_by,
                minutes,
            }),
        }
    }
    groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.at.cmp(&b.at)));
    GoroutineSummary {
        pid: c.snap.pid,
        total: c.shown.len(),
        by_state: by_state(&c.snap, &c.shown),
        groups,
        deadlocks: c.deadlocks.iter().map(|d| d.description.clone()).collect(),
    }
}

#[derive(serde::Serialize)]
struct FrameJson<'a> {
    function: &'a str,
    file: Option<&'a str>,
    line: Option<u32>,
}

impl<'a> From<&'a GoFrame> for FrameJson<'a> {
    fn from(f: &'a GoFrame) -> Self {
        FrameJson {
            function: &f.function,
            file: f.file.as_deref(),
            line: f.line,
        }
    }
}

#[derive(serde::Serialize)]
struct CreatedJson<'a> {
    #[serde(flatten)]
    at: FrameJson<'a>,
    /// The creating goroutine (Go 1.21 and later).
    goroutine: Option<u64>,
}

#[derive(serde::Serialize)]
struct GoroutineJson<'a> {
    id: u64,
    state: String,
    /// Go's `waitsince` in minutes, when it knows.
    minutes: Option<i64>,
    /// The thread of the M running it (running or in a syscall).
    thread: Option<u32>,
    /// Innermost first, the frames Go's own traceback shows (all when it shows none).
    frames: Vec<FrameJson<'a>>,
    created_by: Option<CreatedJson<'a>>,
}

#[derive(serde::Serialize)]
struct DumpJson<'a> {
    pid: u32,
    go_version: Option<&'a str>,
    goroutines_total: usize,
    runtime_left_out: usize,
    by_state: Vec<(String, usize)>,
    /// Deadlocks on locks; how their holders are known is `holders_inferred`.
    deadlocks: &'a [GoDeadlock],
    holders_inferred: Option<&'static str>,
    goroutines: Vec<GoroutineJson<'a>>,
}

fn render_json(c: &Collected) -> String {
    let goroutines = c
        .shown
        .iter()
        .map(|&i| {
            let g = &c.snap.goroutines[i];
            let visible: Vec<&GoFrame> = c.stacks[i].iter().filter(|f| shown_frame(f)).collect();
            let frames = if visible.is_empty() {
                c.stacks[i].iter().map(FrameJson::from).collect()
            } else {
                visible.into_iter().map(FrameJson::from).collect()
            };
            GoroutineJson {
                id: g.goid,
                state: c.snap.state(g),
                minutes: c.snap.minutes(g, c.now),
                thread: g.thread,
                frames,
                created_by: (g.goid != 1)
                    .then(|| c.creators[i].last())
                    .flatten()
                    .map(|f| CreatedJson {
                        at: f.into(),
                        goroutine: g.parent_goid,
                    }),
            }
        })
        .collect();
    let doc = DumpJson {
        pid: c.snap.pid,
        go_version: c.snap.version.as_deref(),
        goroutines_total: c.shown.len(),
        runtime_left_out: c.snap.goroutines.len() - c.shown.len(),
        by_state: by_state(&c.snap, &c.shown),
        deadlocks: &c.deadlocks,
        holders_inferred: (!c.deadlocks.is_empty()).then_some(GO_HOLDER_NOTE),
        goroutines,
    };
    let mut out =
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    out.push('\n');
    out
}

/// [`try_dump`] as JSON (docs/dump-schema.md, "Goroutines").
pub fn try_dump_json(
    pid: u32,
    maps: &crate::unwind::maps::MapsCache,
    symbolizer: &mut crate::symbolize::Symbolizer,
) -> Option<Result<String, String>> {
    if !is_go(Path::new(&format!("/proc/{pid}/exe"))) {
        return None;
    }
    Some(
        collect(pid, maps, symbolizer)
            .map(|c| render_json(&c))
            .map_err(|e| {
                format!(
                    "this is a Go program, but its goroutines could not be read: {e}; the dump \
                     of its OS threads follows"
                )
            }),
    )
}

/// The goroutine dump text (`debug=2`) and its summary for triage, from one read.
pub fn dump_with_summary(
    pid: u32,
    maps: &crate::unwind::maps::MapsCache,
    symbolizer: &mut crate::symbolize::Symbolizer,
) -> Result<(String, GoroutineSummary), GoError> {
    let c = collect(pid, maps, symbolizer)?;
    Ok((render_collected(&c, false), summarize(&c)))
}

/// Go's goroutine profile of Go process `pid` (what `go tool pprof` reads from
/// `/debug/pprof/goroutine`): one sample per distinct stack and state, its value the number
/// of goroutines (`goroutine/count`), labelled `state` (Go's wait reason or status); the
/// runtime's own goroutines left out as in the dump. A running goroutine's stack is its
/// thread's, which is not read: it has no frames.
pub fn goroutine_profile(
    pid: u32,
    maps: &crate::unwind::maps::MapsCache,
    symbolizer: &mut crate::symbolize::Symbolizer,
) -> Result<crate::model::Profile, GoError> {
    use crate::model::{Label, RawSample, RawStack, ValueType};
    let snap = snapshot(pid)?;
    let starts = symbolize(
        pid,
        snap.goroutines.iter().map(|g| vec![g.startpc]).collect(),
        maps,
        symbolizer,
        &|_| None,
    );
    let mut groups: std::collections::BTreeMap<(Vec<u64>, String), i64> = Default::default();
    for (g, start) in snap.goroutines.iter().zip(&starts) {
        if is_system(start.last().map_or("", |f| f.function.as_str())) {
            continue;
        }
        *groups.entry((g.pcs.clone(), snap.state(g))).or_default() += 1;
    }
    let samples = groups
        .into_iter()
        .map(|((user, state), n)| RawSample {
            pid,
            stack: RawStack {
                user,
                kernel: vec![],
            },
            values: vec![n],
            labels: vec![Label::Str("state".into(), state)],
        })
        .collect();
    let mut p = super::capture::symbolize_stacks(samples, maps, symbolizer);
    p.sample_types = vec![ValueType::new("goroutine", "count")];
    p.period_type = ValueType::new("goroutine", "count");
    p.default_sample_type = None;
    p.comments.push(format!(
        "goroutines of process {pid}{}, read from outside (not stopped)",
        snap.version
            .as_deref()
            .map(|v| format!(" ({v})"))
            .unwrap_or_default()
    ));
    Ok(p)
}

/// What `agent dump` and serve's `/debug/pprof/goroutine` show of process `pid`: `None` when
/// it is not a Go program; else its goroutine text ([`dump_text`]), or why that could not be
/// read, as a line to print before the dump of its threads.
pub fn try_dump(
    pid: u32,
    maps: &crate::unwind::maps::MapsCache,
    symbolizer: &mut crate::symbolize::Symbolizer,
    grouped: bool,
) -> Option<Result<String, String>> {
    if !is_go(Path::new(&format!("/proc/{pid}/exe"))) {
        return None;
    }
    Some(dump_text(pid, maps, symbolizer, grouped).map_err(|e| {
        format!(
            "this is a Go program, but its goroutines could not be read: {e}; the dump of its \
             OS threads follows\n\n"
        )
    }))
}

/// Go's `debug=1` goroutine profile text: `goroutine profile: total N`, then per distinct
/// stack its count and addresses (`N @ 0x... 0x...`) and a `#` line per frame, most first.
fn render_grouped(snap: &GoSnapshot, shown: &[usize], stacks: &[Vec<GoFrame>]) -> String {
    use std::fmt::Write as _;
    let mut groups: Vec<(&[u64], usize, usize)> = Vec::new();
    for &i in shown {
        let pcs = snap.goroutines[i].pcs.as_slice();
        match groups.iter_mut().find(|(p, _, _)| *p == pcs) {
            Some(g) => g.1 += 1,
            None => groups.push((pcs, 1, i)),
        }
    }
    groups.sort_by_key(|g| std::cmp::Reverse(g.1));
    let mut s = format!("goroutine profile: total {}\n", shown.len());
    for (pcs, count, first) in groups {
        let addrs: Vec<String> = pcs.iter().map(|p| format!("{p:#x}")).collect();
        let _ = writeln!(s, "{count} @ {}", addrs.join(" "));
        for f in stacks[first].iter().filter(|f| shown_frame(f)) {
            let _ = writeln!(
                s,
                "#\t{}\t{}:{}",
                f.function,
                f.file.as_deref().unwrap_or("?"),
                f.line.unwrap_or(0)
            );
        }
        s.push('\n');
    }
    s
}

/// Whether Go's traceback shows frame `f`: [`shown`], and not a compiler's wrapper.
fn shown_frame(f: &GoFrame) -> bool {
    shown(&f.function) && !f.wrapper
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(reasons: &[&str]) -> GoSnapshot {
        GoSnapshot {
            pid: 1,
            version: Some("go1.21.13".into()),
            goroutines: vec![],
            wait_reasons: reasons.iter().map(|s| s.to_string()).collect(),
            allgs_len: 0,
            truncated: false,
            bias: 0,
        }
    }

    fn g(goid: u64, status: u32, reason: u8) -> Goroutine {
        Goroutine {
            goid,
            status,
            wait_reason: reason,
            wait_since_ns: 0,
            gopc: 0,
            startpc: 0,
            parent_goid: Some(1),
            thread: None,
            pcs: vec![],
            sema: None,
            lock_refs: vec![],
            mutex_state: None,
        }
    }

    #[test]
    fn the_probes_follow_the_reasons_gos_block_and_mutex_profiles_record() {
        let reasons: Vec<String> = ["", "GC assist marking", "chan receive", "select", "sleep"]
            .iter()
            .map(|s| s.to_string())
            .chain((5..70).map(|i| {
                if i == 66 {
                    "sync.Mutex.Lock".into()
                } else {
                    format!("r{i}")
                }
            }))
            .collect();
        let m = reason_mask(&reasons, BLOCK_PROFILE_REASONS);
        assert_eq!(m[0], (1 << 2) | (1 << 3));
        assert_eq!(m[1], 1 << 2);
        assert_eq!((m[2], m[3]), (0, 0));
        assert_eq!(mutex_reason_mask(&reasons), [0, 1 << 2, 0, 0]);
        // Go 1.19: every semaphore wait is `semacquire`.
        let old: Vec<String> = ["", "semacquire", "chan send"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(mutex_reason_mask(&old), [1 << 1, 0, 0, 0]);
        let segs = [Segment {
            offset: 0x1000,
            vaddr: 0x401000,
            filesz: 0x2000,
            memsz: 0x2000,
        }];
        assert_eq!(file_offset(&segs, 0x401234), Some(0x1234));
        // call rel32 at 0x1002 (target 0x1002 + 5 + 0x10 = 0x1017); a second match refuses.
        let code = [0x90, 0x90, 0xe8, 0x10, 0, 0, 0, 0xc3];
        assert_eq!(call_site(&code, 0x1000, 0x1017), Some(0x1002));
        assert_eq!(call_site(&code, 0x1000, 0x1018), None);
        let twice = [0xe8, 0x10, 0, 0, 0, 0xe8, 0x0b, 0, 0, 0];
        assert_eq!(call_site(&twice, 0x1000, 0x1015), None);
        assert_eq!(file_offset(&segs, 0x403000), None);
    }

    #[test]
    fn the_programs_own_frames_are_told_from_the_standard_librarys() {
        for f in [
            "main.worker",
            "main.main.func1",
            "github.com/a/b.(*C).D",
            "example.com/x.F",
        ] {
            assert!(is_program_frame(f), "{f}");
        }
        for f in [
            "sync.(*Mutex).Lock",
            "runtime.gopark",
            "net/http.(*conn).serve",
            "internal/poll.F",
        ] {
            assert!(!is_program_frame(f), "{f}");
        }
    }

    #[test]
    fn the_state_is_the_binarys_wait_reason_else_the_status() {
        let s = snap(&["", "GC assist marking", "chan receive"]);
        assert_eq!(s.state(&g(5, GWAITING, 2)), "chan receive");
        assert_eq!(s.state(&g(5, GWAITING, 0)), "waiting");
        assert_eq!(s.state(&g(5, GWAITING | GSCAN, 2)), "chan receive");
        assert_eq!(s.state(&g(5, 1, 0)), "runnable");
        assert_eq!(s.state(&g(5, 77, 0)), "???");
        // A reason past the binary's table falls back to the status.
        assert_eq!(s.state(&g(5, GWAITING, 9)), "waiting");
    }

    #[test]
    fn minutes_count_from_waitsince_only_when_waiting() {
        let s = snap(&[]);
        let mut w = g(5, GWAITING, 0);
        w.wait_since_ns = 1_000;
        assert_eq!(s.minutes(&w, 1_000 + 5 * 60_000_000_000 + 7), Some(5));
        assert_eq!(
            s.minutes(&w, 1_000 + 59_000_000_000),
            None,
            "under a minute"
        );
        let mut r = g(5, GRUNNING, 0);
        r.wait_since_ns = 1_000;
        assert_eq!(s.minutes(&r, i64::MAX), None);
    }

    #[test]
    fn the_runtimes_own_frames_and_goroutines_are_left_out_as_go_does() {
        assert!(!shown("runtime.gopark"));
        assert!(!shown("runtime.chanrecv1"));
        assert!(shown("runtime.Gosched"));
        assert!(shown("main.leakedReceiver"));
        assert!(shown("sync.(*Mutex).Lock"));
        assert!(is_system("runtime.bgsweep"));
        assert!(!is_system("runtime.main"));
        assert!(!is_system("main.worker"));
    }

    #[test]
    fn a_goroutine_prints_as_go_prints_it() {
        let s = snap(&["", "chan receive"]);
        let f = |n: &str, l, offset| GoFrame {
            function: n.into(),
            file: Some("/src/app/main.go".into()),
            line: Some(l),
            offset,
            wrapper: false,
        };
        let text = render_goroutine(
            &s,
            &g(42, GWAITING, 1),
            &[
                f("runtime.gopark", 1, Some(0x10)),
                f("sync.(*Mutex).Lock", 90, None),
                f("main.leakedReceiver", 27, Some(0x25)),
            ],
            Some(&f("main.main", 41, Some(0x6b))),
            0,
        );
        // An inlined frame has no offset; the frame whose code the pc is in has Go's +0x.
        assert_eq!(
            text,
            "goroutine 42 [chan receive]:\nsync.(*Mutex).Lock(...)\n\t/src/app/main.go:90\n\
             main.leakedReceiver(...)\n\t/src/app/main.go:27 +0x25\n\
             created by main.main in goroutine 1\n\t/src/app/main.go:41 +0x6b\n"
        );
        let running = render_goroutine(&s, &g(1, GRUNNING, 0), &[], None, 0);
        assert_eq!(
            running,
            "goroutine 1 [running]:\n\tgoroutine running on other thread; stack unavailable\n"
        );
    }
}
