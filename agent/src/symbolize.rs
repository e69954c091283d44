//! Turns raw addresses into functions, files, lines and inlined frames (blazesym).
//!
//! User frames are symbolized from the files cached in [`MapsCache`] (`/proc/self/fd/N`, as file
//! offsets), so a process that exited or whose binary was deleted still symbolizes. Kernel frames
//! come from `/proc/kallsyms`. Every address yields a [`Location`]: what cannot be resolved is
//! named `libfoo.so+0x1234` or `[unknown] 0x7f...` rather than dropped.
//!
//! # Code without a symbol
//! An address in a file that blazesym cannot name (stripped binary, no DWARF, no `.symtab` or
//! `.dynsym` symbol covering it) is named after the start of its function, so that every address
//! of one function gets the same name (one pprof `Function`; the [`Location`] keeps its address,
//! for `go tool pprof -addresses`): `binary+0xSTART`, `START` an ELF virtual address of the file
//! (what `objdump -d --start-address`, `nm` and `addr2line` use). The start is the largest of
//! these at or below the address ([`FuncStarts`], built once per file from
//! [`crate::unwind::cfi::code_ranges_file`]):
//! - the initial location of every `.eh_frame` FDE (a function, or a part such as `foo.cold`);
//! - the end of every FDE (code after a function that has no CFI of its own, hand-written
//!   assembly, is one group up to the next FDE);
//! - the start and end of every executable section (code before the first FDE, such as `.init`);
//!
//! and when none is (or the file has no section headers) the start of the `PT_LOAD` segment that
//! holds the address. Only a file that cannot be read as ELF at all (or a pseudo mapping such as
//! `[vdso]`) keeps one name per address: `binary+0xFILEOFFSET`.
//!
//! `binary` is the last component of the mapping's [`CachedMapping::display_path`]: the name the
//! program was started as when that is a symlink to the main binary (`redis-server`, not
//! `redis-check-rdb`), which is also the pprof `Mapping`'s file; the real path is said once in a
//! profile comment.
//!
//! [`Symbolizer`] wraps one long-lived blazesym symbolizer, which caches parsed ELF/DWARF data per
//! file. It is not `Send`: create it on the thread that symbolizes and keep it there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use blazesym::symbolize::source::{Elf, Kernel, Process, Source};
use blazesym::symbolize::{Input, Sym, Symbolized};
use blazesym::{MaybeDefault, Pid};

use crate::model::{Line, Location, Mapping, Profile, RawProfile, Sample};
use crate::unwind::cfi::CodeRanges;
use crate::unwind::maps::{CachedMapping, MapsCache};
use crate::unwind::tables::Segment;

/// File name of the mapping that kernel locations belong to (as `perf` names it). Exporters and
/// the pprof decoder use it to recognise kernel frames.
pub const KERNEL_MAPPING_FILE: &str = "[kernel.kallsyms]";

/// Addresses at or above this are kernel addresses on x86_64 (and arm64).
pub const KERNEL_ADDRESS_START: u64 = 0xffff_8000_0000_0000;

/// Long-lived symbolizer; lives on one thread (blazesym's caches are not `Send`).
pub struct Symbolizer {
    inner: blazesym::symbolize::Symbolizer,
    /// `/proc/self/fd/N` paths handed to blazesym, with the identity of the file behind them, so
    /// blazesym's cache entry can be evicted once the file is no longer cached in [`MapsCache`].
    used_files: HashMap<PathBuf, u64>,
    /// Function starts per cached file ([`CachedMapping::file_id`]), built the first time an
    /// address of the file has no symbol; dropped with the file.
    func_starts: HashMap<u64, FuncStarts>,
    /// Per cached file: its Go function table (`None`: not a Go binary), read the first time
    /// the file has an address without a symbol.
    go_tables: HashMap<u64, Option<crate::gopclntab::PcLnTab>>,
    /// Start of this process's own vDSO: the vDSO is the same image in every process, so target
    /// vDSO addresses are symbolized at the same offset in ours.
    own_vdso: Option<u64>,
    kernel_build_id: Option<String>,
    kernel_warned: bool,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a location's address is resolved.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum LocKey {
    User { pid: u32, addr: u64 },
    Kernel { addr: u64 },
}

/// Per distinct cached mapping: the output mapping and what was learnt about it.
struct MappingAcc {
    /// The main binary of its process (sorted first).
    main: bool,
    mapping: Mapping,
}

impl Symbolizer {
    pub fn new() -> Self {
        let inner = blazesym::symbolize::Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .enable_auto_reload(true)
            .build();
        Self {
            inner,
            used_files: HashMap::new(),
            func_starts: HashMap::new(),
            go_tables: HashMap::new(),
            own_vdso: own_vdso_start(),
            kernel_build_id: kernel_build_id(),
            kernel_warned: false,
        }
    }

    /// Files handed to blazesym so far that are still cached (for `/metrics`).
    pub fn cached_files(&self) -> usize {
        self.used_files.len()
    }

    /// The ELF symbol (a global or static variable such as `big_lock`, with `+off` when inside
    /// it) at the data address `addr` of process `pid`, found through the files it maps.
    pub fn data_symbol(&mut self, pid: u32, addr: u64, maps: &MapsCache) -> Option<String> {
        let mut seen = std::collections::HashSet::new();
        for m in maps.mappings(pid) {
            if m.is_pseudo() || !seen.insert(m.file_id()) {
                continue;
            }
            let path = m.open_path()?;
            let Ok(segments) = crate::unwind::tables::load_segments(&path) else {
                continue;
            };
            let Some(bias) = crate::unwind::tables::mapping_bias(&segments, m.start, m.offset)
            else {
                continue;
            };
            let vaddr = addr.wrapping_sub(bias);
            if !segments
                .iter()
                .any(|s| vaddr >= s.vaddr && vaddr < s.vaddr + s.memsz)
            {
                continue;
            }
            let src = Source::Elf(Elf::new(&path));
            let Ok(sym) = self.inner.symbolize_single(&src, Input::VirtOffset(vaddr)) else {
                return None;
            };
            return match sym {
                Symbolized::Sym(Sym {
                    name, offset: 0, ..
                }) => Some(name.to_string()),
                Symbolized::Sym(Sym { name, offset, .. }) => Some(format!("{name}+{offset:#x}")),
                _ => None,
            };
        }
        None
    }

    /// Symbolizes every stack of `raw`. Never fails: what cannot be resolved gets a placeholder
    /// name. Identical (pid, address) pairs share one [`Location`]; each cached mapping used gets
    /// one [`Mapping`] (main binaries first), plus one [`KERNEL_MAPPING_FILE`] mapping.
    pub fn symbolize(&mut self, raw: RawProfile, maps: &MapsCache) -> Profile {
        let mut loc_index: HashMap<LocKey, usize> = HashMap::new();
        let mut keys: Vec<LocKey> = Vec::new();
        let mut samples = Vec::with_capacity(raw.samples.len());

        for s in raw.samples {
            let mut locations = Vec::with_capacity(s.stack.kernel.len() + s.stack.user.len());
            // Frame 0 is the exact instruction pointer; the others are return addresses, and
            // `addr - 1` lies inside the call instruction, so the call site's line is reported.
            for (i, &a) in s.stack.kernel.iter().enumerate() {
                if a == 0 {
                    continue;
                }
                let addr = if i == 0 { a } else { a - 1 };
                locations.push(intern(&mut loc_index, &mut keys, LocKey::Kernel { addr }));
            }
            for (i, &a) in s.stack.user.iter().enumerate() {
                if a == 0 {
                    continue;
                }
                let addr = if i == 0 { a } else { a - 1 };
                let key = LocKey::User { pid: s.pid, addr };
                locations.push(intern(&mut loc_index, &mut keys, key));
            }
            samples.push(Sample {
                locations,
                values: s.values,
                labels: s.labels,
            });
        }

        let mut locations: Vec<Location> = keys
            .iter()
            .map(|k| match *k {
                LocKey::User { addr, .. } => Location {
                    address: addr,
                    mapping: None,
                    lines: Vec::new(),
                    kernel: false,
                },
                LocKey::Kernel { addr } => Location {
                    address: addr,
                    mapping: None,
                    lines: Vec::new(),
                    kernel: true,
                },
            })
            .collect();

        // Group user locations by cached mapping, kernel locations together.
        let mut by_mapping: HashMap<u64, (&CachedMapping, Vec<usize>)> = HashMap::new();
        let mut kernel_locs: Vec<usize> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match *k {
                LocKey::User { pid, addr } => match maps.find(pid, addr) {
                    Some(m) => by_mapping.entry(m.id).or_insert((m, Vec::new())).1.push(i),
                    None => locations[i].lines = vec![unknown_line(addr)],
                },
                LocKey::Kernel { .. } => kernel_locs.push(i),
            }
        }

        let mut accs: Vec<MappingAcc> = Vec::new();
        let mut comments = raw.comments;
        let mut groups: Vec<_> = by_mapping.into_values().collect();
        groups.sort_by_key(|(m, _)| m.id);
        for (m, locs) in groups {
            let pid = match keys[locs[0]] {
                LocKey::User { pid, .. } => pid,
                LocKey::Kernel { .. } => 0,
            };
            if let Some(name) = &m.started_as {
                let note = symlink_comment(name, &m.path);
                if !comments.contains(&note) {
                    comments.push(note);
                }
            }
            let index = accs.len();
            accs.push(MappingAcc {
                main: maps.exe(pid) == Some(m.path.as_str()),
                mapping: Mapping {
                    start: m.start,
                    limit: m.end,
                    offset: m.offset,
                    file: m.display_path().to_string(),
                    build_id: m.build_id.clone(),
                    ..Default::default()
                },
            });
            let resolved = self.symbolize_user(m, &locs, &locations);
            for (&li, lines) in locs.iter().zip(resolved) {
                locations[li].mapping = Some(index);
                locations[li].lines = lines;
            }
        }

        if !kernel_locs.is_empty() {
            let addrs: Vec<u64> = kernel_locs.iter().map(|&i| locations[i].address).collect();
            let index = accs.len();
            accs.push(MappingAcc {
                main: false,
                mapping: Mapping {
                    start: addrs.iter().copied().min().unwrap_or(0),
                    limit: addrs
                        .iter()
                        .copied()
                        .max()
                        .map_or(0, |a| a.saturating_add(1)),
                    offset: 0,
                    file: KERNEL_MAPPING_FILE.to_string(),
                    build_id: self.kernel_build_id.clone(),
                    ..Default::default()
                },
            });
            let resolved = self.symbolize_kernel(&addrs);
            for (&li, lines) in kernel_locs.iter().zip(resolved) {
                locations[li].mapping = Some(index);
                locations[li].lines = lines;
            }
        }

        // Tell the truth about what each mapping resolved.
        for loc in &locations {
            let (Some(mi), Some(outer)) = (loc.mapping, loc.lines.last()) else {
                continue;
            };
            let m = &mut accs[mi].mapping;
            if !is_placeholder(&outer.function) {
                m.has_functions = true;
            }
            if loc.lines.iter().any(|l| l.file.is_some()) {
                m.has_filenames = true;
            }
            if loc.lines.iter().any(|l| l.line.is_some()) {
                m.has_line_numbers = true;
                // Line info comes from DWARF, which is also where inlined frames were looked up.
                m.has_inline_frames = true;
            }
        }

        let mappings = main_binaries_first(accs, &mut locations);
        self.evict_stale(maps);
        strip_probe_frames(&mut samples, &locations);

        Profile {
            kind: raw.kind,
            sample_types: raw.sample_types,
            default_sample_type: raw.default_sample_type,
            period_type: raw.period_type,
            period: raw.period,
            start: raw.start,
            duration: raw.duration,
            samples,
            locations,
            mappings,
            comments,
        }
    }

    /// Lines (innermost first) for the locations `locs`, all inside mapping `m`.
    fn symbolize_user(
        &mut self,
        m: &CachedMapping,
        locs: &[usize],
        locations: &[Location],
    ) -> Vec<Vec<Line>> {
        let addrs: Vec<u64> = locs.iter().map(|&i| locations[i].address).collect();
        if let (Some(path), Some(id)) = (m.open_path(), m.file_id()) {
            self.used_files.insert(path.clone(), id);
            let offsets: Vec<u64> = addrs.iter().map(|&a| m.file_offset(a)).collect();
            return self.symbolize_file(&path, id, m.display_name(), &offsets);
        }
        let fallback = |addr: u64| vec![offset_line(m, addr)];

        let results: Option<Vec<Symbolized<'_>>> = if m.path == "[vdso]"
            && let Some(own) = self.own_vdso
        {
            let abs: Vec<u64> = addrs
                .iter()
                .map(|&a| own.wrapping_add(a.wrapping_sub(m.start)))
                .collect();
            let mut p = Process::new(Pid::Slf);
            p.debug_syms = false;
            p.perf_map = false;
            p.map_files = false;
            match self
                .inner
                .symbolize(&Source::Process(p), Input::AbsAddr(&abs))
            {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::debug!("cannot symbolize vDSO addresses: {e}");
                    None
                }
            }
        } else {
            None
        };

        match results {
            Some(r) if r.len() == addrs.len() => r
                .iter()
                .zip(&addrs)
                .map(|(s, &a)| match s {
                    Symbolized::Sym(sym) => sym_lines(sym).unwrap_or_else(|| fallback(a)),
                    Symbolized::Unknown(_) => fallback(a),
                })
                .collect(),
            _ => addrs.iter().map(|&a| fallback(a)).collect(),
        }
    }

    /// Lines for the file offsets `offsets` of the ELF file at `path` (cached file `file_id`),
    /// named `name+0xSTART` per function where the file has no symbol for them.
    fn symbolize_file(
        &mut self,
        path: &Path,
        file_id: u64,
        name: &str,
        offsets: &[u64],
    ) -> Vec<Vec<Line>> {
        let src = Source::Elf(Elf::new(path));
        let named: Vec<Option<Vec<Line>>> =
            match self.inner.symbolize(&src, Input::FileOffset(offsets)) {
                Ok(r) if r.len() == offsets.len() => r
                    .iter()
                    .map(|s| match s {
                        Symbolized::Sym(sym) => sym_lines(sym),
                        Symbolized::Unknown(_) => None,
                    })
                    .collect(),
                Ok(_) => vec![None; offsets.len()],
                Err(e) => {
                    tracing::debug!(file = name, "cannot symbolize: {e}");
                    vec![None; offsets.len()]
                }
            };
        named
            .into_iter()
            .zip(offsets)
            .map(|(lines, &off)| {
                lines.unwrap_or_else(|| {
                    // A stripped Go binary: the runtime's own table names its functions.
                    let go = self
                        .go_tables
                        .entry(file_id)
                        .or_insert_with(|| crate::gopclntab::PcLnTab::open(path));
                    if let Some((function, file, line)) =
                        go.as_ref().and_then(|t| t.lookup(t.vaddr(off)?))
                    {
                        return vec![Line {
                            function,
                            system_name: None,
                            file,
                            line,
                        }];
                    }
                    let starts = self
                        .func_starts
                        .entry(file_id)
                        .or_insert_with(|| FuncStarts::load(path));
                    vec![placeholder_line(name, starts.group_start(off), off)]
                })
            })
            .collect()
    }

    fn symbolize_kernel(&mut self, addrs: &[u64]) -> Vec<Vec<Line>> {
        let kernel = Kernel {
            kallsyms: MaybeDefault::Default,
            // No vmlinux on these machines: don't go looking for one.
            vmlinux: MaybeDefault::None,
            kaslr_offset: None,
            debug_syms: false,
            ..Default::default()
        };
        let results = match self
            .inner
            .symbolize(&Source::Kernel(kernel), Input::AbsAddr(addrs))
        {
            Ok(r) if r.len() == addrs.len() => Some(r),
            Ok(_) => None,
            Err(e) => {
                if !self.kernel_warned {
                    self.kernel_warned = true;
                    tracing::warn!(
                        "kernel frames stay unsymbolized: {e} (is /proc/kallsyms readable? run as root)"
                    );
                }
                None
            }
        };
        match results {
            Some(r) => r
                .iter()
                .zip(addrs)
                .map(|(s, &a)| match s {
                    Symbolized::Sym(sym) => sym_lines(sym).unwrap_or_else(|| vec![unknown_line(a)]),
                    Symbolized::Unknown(_) => vec![unknown_line(a)],
                })
                .collect(),
            None => addrs.iter().map(|&a| vec![unknown_line(a)]).collect(),
        }
    }

    /// Releases blazesym's parsed data for files that [`MapsCache`] no longer keeps open (their
    /// `/proc/self/fd/N` path may be reused for another file).
    fn evict_stale(&mut self, maps: &MapsCache) {
        let stale: Vec<PathBuf> = self
            .used_files
            .iter()
            .filter(|&(_, &id)| !maps.file_alive(id))
            .map(|(p, _)| p.clone())
            .collect();
        self.func_starts.retain(|&id, _| maps.file_alive(id));
        self.go_tables.retain(|&id, _| maps.file_alive(id));
        for path in stale {
            self.used_files.remove(&path);
            let evict = blazesym::symbolize::evict::Evict::Elf(
                blazesym::symbolize::evict::Elf::new(path.clone()),
            );
            if let Err(e) = self.inner.evict(&evict) {
                tracing::debug!(path = %path.display(), "evicting symbolizer cache: {e}");
            }
        }
    }
}

fn intern(index: &mut HashMap<LocKey, usize>, keys: &mut Vec<LocKey>, key: LocKey) -> usize {
    *index.entry(key).or_insert_with(|| {
        keys.push(key);
        keys.len() - 1
    })
}

/// Lines of a resolved symbol, innermost inlined function first (pprof's order).
fn sym_lines(sym: &Sym<'_>) -> Option<Vec<Line>> {
    if sym.name.is_empty() {
        return None;
    }
    let mut lines = Vec::with_capacity(sym.inlined.len() + 1);
    // blazesym lists inlined functions outermost first; each one's code info is the location
    // inside it, and the symbol's own code info is the call site in the outer function.
    for inl in sym.inlined.iter().rev() {
        let (file, line) = code_info(inl.code_info.as_ref());
        lines.push(Line {
            function: inl.name.to_string(),
            system_name: None,
            file,
            line,
        });
    }
    let (file, line) = code_info(sym.code_info.as_deref());
    lines.push(Line {
        function: sym.name.to_string(),
        system_name: None,
        file,
        line,
    });
    Some(lines)
}

fn code_info(ci: Option<&blazesym::symbolize::CodeInfo<'_>>) -> (Option<String>, Option<u32>) {
    match ci {
        Some(ci) => {
            let path = ci.to_path();
            let file = path.to_string_lossy();
            let file = (!file.is_empty()).then(|| file.into_owned());
            (file, ci.line.filter(|&l| l != 0))
        }
        None => (None, None),
    }
}

fn unknown_line(addr: u64) -> Line {
    Line {
        function: format!("[unknown] {addr:#x}"),
        system_name: None,
        file: None,
        line: None,
    }
}

/// `libfoo.so+0x1234` (file offset), or `[vdso]+0x9a0` (offset in the mapping).
fn offset_line(m: &CachedMapping, addr: u64) -> Line {
    placeholder_line(m.display_name(), None, m.file_offset(addr))
}

/// `name+0xSTART` for code of the group (function) starting at ELF virtual address `start`, else
/// `name+0xFILEOFFSET` for the address at file offset `offset` alone.
fn placeholder_line(name: &str, start: Option<u64>, offset: u64) -> Line {
    Line {
        function: format!("{name}+{:#x}", start.unwrap_or(offset)),
        system_name: None,
        file: None,
        line: None,
    }
}

/// The profile comment that says which file a symlinked program name stands for.
fn symlink_comment(started_as: &str, path: &str) -> String {
    format!("{started_as} is a symlink to {path} (the file that was read)")
}

/// Where the code groups of one ELF file start (see the module documentation): sorted,
/// deduplicated ELF virtual addresses, and the `PT_LOAD` segments to turn file offsets into them.
#[derive(Debug, Default)]
struct FuncStarts {
    starts: Vec<u64>,
    segments: Vec<Segment>,
}

impl FuncStarts {
    /// Reads the file's FDEs, sections and segments; what cannot be read is left empty.
    fn load(path: &Path) -> Self {
        let ranges = crate::unwind::cfi::code_ranges_file(path).unwrap_or_else(|e| {
            tracing::debug!(path = %path.display(), "no function starts: {e}");
            CodeRanges::default()
        });
        let segments = crate::unwind::tables::load_segments(path).unwrap_or_default();
        Self {
            starts: group_starts(&ranges),
            segments,
        }
    }

    /// The ELF virtual address of file offset `offset`, through the `PT_LOAD` segment holding it.
    fn vaddr(&self, offset: u64) -> Option<u64> {
        self.segment(offset).map(|s| offset - s.offset + s.vaddr)
    }

    fn segment(&self, offset: u64) -> Option<&Segment> {
        self.segments
            .iter()
            .find(|s| offset >= s.offset && offset - s.offset < s.filesz)
    }

    /// Start (ELF virtual address) of the group holding file offset `offset`: the enclosing
    /// function's, else its segment's; `None` when the offset is in no segment.
    fn group_start(&self, offset: u64) -> Option<u64> {
        let vaddr = self.vaddr(offset)?;
        let seg_start = self.segment(offset)?.vaddr;
        Some(match enclosing_start(&self.starts, vaddr) {
            // A group start in an earlier segment does not reach into this one.
            Some(start) if start >= seg_start => start,
            _ => seg_start,
        })
    }
}

/// The sorted group starts of a file: FDE starts and ends, executable section starts and ends.
fn group_starts(ranges: &CodeRanges) -> Vec<u64> {
    let mut starts: Vec<u64> = ranges
        .fdes
        .iter()
        .chain(&ranges.exec_sections)
        .flat_map(|&(start, end)| [start, end])
        .collect();
    starts.sort_unstable();
    starts.dedup();
    starts
}

/// The largest of the sorted `starts` at or below `vaddr`.
fn enclosing_start(starts: &[u64], vaddr: u64) -> Option<u64> {
    let i = starts.partition_point(|&s| s <= vaddr);
    i.checked_sub(1).map(|i| starts[i])
}

/// Whether a function name is one of our placeholders rather than a resolved symbol.
pub fn is_placeholder(function: &str) -> bool {
    function.starts_with("[unknown] ") || function.contains("+0x")
}

/// Orders mappings so each process's main binary comes first (pprof expects `mapping[0]` to be
/// the main binary), then by creation; rewrites location indexes accordingly.
fn main_binaries_first(accs: Vec<MappingAcc>, locations: &mut [Location]) -> Vec<Mapping> {
    let mut order: Vec<usize> = (0..accs.len()).collect();
    order.sort_by_key(|&i| !accs[i].main);
    let mut new_index = vec![0; accs.len()];
    for (new, &old) in order.iter().enumerate() {
        new_index[old] = new;
    }
    for loc in locations.iter_mut() {
        if let Some(m) = loc.mapping.as_mut() {
            *m = new_index[*m];
        }
    }
    let mut slots: Vec<Option<Mapping>> = accs.into_iter().map(|a| Some(a.mapping)).collect();
    order.iter().filter_map(|&old| slots[old].take()).collect()
}

/// Start address of this process's `[vdso]`.
fn own_vdso_start() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/maps").ok()?;
    crate::unwind::maps::parse_maps(&text)
        .into_iter()
        .find(|l| l.path.as_deref() == Some("[vdso]"))
        .map(|l| l.start)
}

/// The running kernel's GNU build ID, from `/sys/kernel/notes`.
fn kernel_build_id() -> Option<String> {
    let notes = std::fs::read(Path::new("/sys/kernel/notes")).ok()?;
    gnu_build_id_from_notes(&notes)
}

/// Finds the `NT_GNU_BUILD_ID` note in a sequence of ELF notes (native endianness).
pub fn gnu_build_id_from_notes(mut notes: &[u8]) -> Option<String> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let align4 = |n: usize| n.checked_add(3).map(|n| n & !3);
    let word = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    while notes.len() >= 12 {
        let namesz = word(notes, 0)? as usize;
        let descsz = word(notes, 4)? as usize;
        let ntype = word(notes, 8)?;
        let name_end = 12usize.checked_add(align4(namesz)?)?;
        let desc_end = name_end.checked_add(align4(descsz)?)?;
        let name = notes.get(12..12 + namesz)?;
        let desc = notes.get(name_end..name_end.checked_add(descsz)?)?;
        if ntype == NT_GNU_BUILD_ID && name == b"GNU\0" && !desc.is_empty() {
            return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
        }
        notes = notes.get(desc_end..)?;
    }
    None
}

/// Kernel functions that run the agent's own BPF programs: a kernel stack taken by a probe
/// starts in the probe (JIT code, named after whatever kernel symbol precedes it) and these.
const PROBE_FRAMES: &[&str] = &["bpf_trace_run", "__bpf_trace_", "bpf_prog_", "__traceiter_"];

/// Drops, from the kernel part of each stack (innermost first), the frames of the probe that
/// took it: everything up to and including the outermost [`PROBE_FRAMES`] function. The stack
/// then starts where the traced code was (`__schedule`, `io_schedule`...).
fn strip_probe_frames(samples: &mut [Sample], locations: &[Location]) {
    let is_probe = |li: usize| {
        locations.get(li).is_some_and(|l| {
            l.kernel
                && l.lines
                    .iter()
                    .any(|line| PROBE_FRAMES.iter().any(|p| line.function.starts_with(p)))
        })
    };
    for s in samples {
        let kernel_len = s
            .locations
            .iter()
            .take_while(|&&li| locations.get(li).is_some_and(|l| l.kernel))
            .count();
        if let Some(last) = s.locations[..kernel_len]
            .iter()
            .rposition(|&li| is_probe(li))
        {
            s.locations.drain(..=last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_frames_are_cut_from_kernel_stacks() {
        let loc = |f: &str, kernel: bool| Location {
            address: 1,
            mapping: None,
            lines: vec![Line {
                function: f.into(),
                system_name: None,
                file: None,
                line: None,
            }],
            kernel,
        };
        let locations = vec![
            loc("__stop_runtime_ptr_USER_PTR_MAX", true),
            loc("bpf_trace_run4", true),
            loc("__schedule", true),
            loc("io_schedule", true),
            loc("fdatasync", false),
        ];
        let mut samples = vec![
            Sample {
                locations: vec![0, 1, 2, 3, 4],
                values: vec![1],
                labels: vec![],
            },
            Sample {
                locations: vec![2, 3, 4],
                values: vec![1],
                labels: vec![],
            },
        ];
        strip_probe_frames(&mut samples, &locations);
        assert_eq!(samples[0].locations, vec![2, 3, 4]);
        assert_eq!(samples[1].locations, vec![2, 3, 4]);
    }
    use crate::model::{ProfileKind, RawSample, RawStack, ValueType};
    use std::time::{Duration, SystemTime};

    fn raw(samples: Vec<RawSample>) -> RawProfile {
        RawProfile {
            kind: ProfileKind::Cpu,
            sample_types: vec![ValueType::new("samples", "count")],
            default_sample_type: None,
            period_type: ValueType::new("cpu", "nanoseconds"),
            period: 1,
            start: SystemTime::UNIX_EPOCH,
            duration: Duration::from_secs(1),
            samples,
            comments: vec![],
        }
    }

    #[inline(never)]
    fn marker_function_for_symbolizer_test() -> u64 {
        std::hint::black_box(marker_function_for_symbolizer_test as *const () as usize as u64)
    }

    #[test]
    fn group_starts_name_code_by_enclosing_function() {
        // .init at 0x1000, .text at 0x1040 with three FDEs, a gap without CFI after the second.
        let ranges = CodeRanges {
            fdes: vec![(0x1140, 0x11a0), (0x1100, 0x1140), (0x1200, 0x1250)],
            exec_sections: vec![(0x1000, 0x1020), (0x1040, 0x1300)],
        };
        let starts = group_starts(&ranges);
        assert_eq!(
            starts,
            [
                0x1000, 0x1020, 0x1040, 0x1100, 0x1140, 0x11a0, 0x1200, 0x1250, 0x1300
            ]
        );
        // Two addresses inside one FDE: one start. Another FDE: another start.
        assert_eq!(enclosing_start(&starts, 0x1100), Some(0x1100));
        assert_eq!(enclosing_start(&starts, 0x1105), Some(0x1100));
        assert_eq!(enclosing_start(&starts, 0x113f), Some(0x1100));
        assert_eq!(enclosing_start(&starts, 0x1140), Some(0x1140));
        assert_eq!(enclosing_start(&starts, 0x1210), Some(0x1200));
        // After an FDE's end (code without CFI): grouped from that end up to the next FDE.
        assert_eq!(enclosing_start(&starts, 0x11a0), Some(0x11a0));
        assert_eq!(enclosing_start(&starts, 0x11ff), Some(0x11a0));
        // Before the first FDE: the executable section's start.
        assert_eq!(enclosing_start(&starts, 0x1050), Some(0x1040));
        assert_eq!(enclosing_start(&starts, 0x1010), Some(0x1000));
        assert_eq!(enclosing_start(&starts, 0xfff), None);
        assert_eq!(enclosing_start(&[], 0x1000), None);
    }

    #[test]
    fn func_starts_map_file_offsets_and_fall_back_to_the_segment() {
        // lld-style layout: text at file offset 0x1000 loaded at 0x2000.
        let seg = |offset, vaddr, size| Segment {
            offset,
            vaddr,
            filesz: size,
            memsz: size,
        };
        let fs = FuncStarts {
            starts: group_starts(&CodeRanges {
                fdes: vec![(0x2100, 0x2180), (0x2180, 0x2200)],
                exec_sections: vec![(0x2100, 0x2300)],
            }),
            segments: vec![seg(0, 0, 0x800), seg(0x1000, 0x2000, 0x1000)],
        };
        assert_eq!(fs.vaddr(0x1110), Some(0x2110));
        assert_eq!(fs.group_start(0x1110), Some(0x2100));
        assert_eq!(fs.group_start(0x117f), Some(0x2100));
        assert_eq!(fs.group_start(0x1180), Some(0x2180));
        // Before every table entry but inside the segment: the segment's start.
        assert_eq!(fs.group_start(0x1010), Some(0x2000));
        // In the first segment, below the table: its own start, not a later group.
        assert_eq!(fs.group_start(0x10), Some(0));
        // Past the segments' data: no group; one name per address then.
        assert_eq!(fs.group_start(0x900), None);
        let names: Vec<String> = [0x1110, 0x117f, 0x1180, 0x900]
            .iter()
            .map(|&off| placeholder_line("app", fs.group_start(off), off).function)
            .collect();
        assert_eq!(
            names,
            ["app+0x2100", "app+0x2100", "app+0x2180", "app+0x900"]
        );
        assert!(names.iter().all(|n| is_placeholder(n)));
        // A file without anything readable.
        assert_eq!(FuncStarts::default().group_start(0x1110), None);
    }

    const STRIPPED_C: &str = r#"
#include <unistd.h>
__attribute__((noinline)) long work_a(long x) {
    long s = 0;
    for (long i = 0; i < x * 1000; i++) s += (i * i) ^ (s >> 3);
    return s;
}
__attribute__((noinline)) long work_b(long x) {
    long s = 1;
    for (long i = 0; i < x * 1000; i++) s = s * 31 + (i ^ (s >> 7));
    return s;
}
int main(int argc, char **argv) {
    (void)argv;
    long r = work_a(argc) + work_b(argc);
    if (r == 12345) return 1;
    pause();
    return 0;
}
"#;

    /// `(address, size)` of `name` in `bin`, from `nm -S`.
    fn nm_symbol(bin: &Path, name: &str) -> (u64, u64) {
        let out = std::process::Command::new("nm")
            .arg("-S")
            .arg(bin)
            .output()
            .expect("nm must be installed");
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 4 && f[3] == name).then(|| {
                    (
                        u64::from_str_radix(f[0], 16).unwrap(),
                        u64::from_str_radix(f[1], 16).unwrap(),
                    )
                })
            })
            .unwrap_or_else(|| panic!("{name} not in nm output of {}", bin.display()))
    }

    /// Kills the child when the test ends, passed or not.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn stripped_program_started_through_symlink_is_grouped_per_function() {
        let dir = std::env::temp_dir().join(format!("stallscope-sym-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("prog.c");
        std::fs::write(&src, STRIPPED_C).unwrap();
        let (full, stripped) = (dir.join("prog-full"), dir.join("prog-stripped"));
        for (bin, extra) in [(&full, None), (&stripped, Some("-s"))] {
            let out = std::process::Command::new("gcc")
                .args(["-O2", "-o"])
                .arg(bin)
                .arg(&src)
                .args(extra)
                .output()
                .expect("gcc must be installed");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Started as `prog-link`, a symlink to the stripped binary.
        let link = dir.join("prog-link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("prog-stripped", &link).unwrap();
        let child = KillOnDrop(std::process::Command::new(&link).spawn().unwrap());
        let pid = child.0.id();
        let real = std::fs::canonicalize(&stripped).unwrap();
        let real = real.to_string_lossy().into_owned();
        let mut maps = MapsCache::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            maps.refresh(pid).unwrap();
            // Maps are read before /proc/PID/exe: wait until both show the new image.
            if maps.exe(pid) == Some(real.as_str())
                && maps.mappings(pid).iter().any(|m| m.path == real)
            {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "child did not exec");
            std::thread::sleep(Duration::from_millis(10));
        }

        // Process addresses of code inside work_a (twice), work_b and main.
        let text = maps
            .mappings(pid)
            .iter()
            .find(|m| m.path == real)
            .expect("text mapping of the program")
            .clone();
        let segments = crate::unwind::tables::load_segments(&stripped).unwrap();
        let bias = crate::unwind::tables::mapping_bias(&segments, text.start, text.offset).unwrap();
        let (a, a_size) = nm_symbol(&full, "work_a");
        let (b, _) = nm_symbol(&full, "work_b");
        let (main, _) = nm_symbol(&full, "main");
        let addrs = [a + 2, a + a_size - 2, b + 3, main + 1].map(|v| v + bias);
        let s = RawSample {
            pid,
            stack: RawStack {
                user: addrs.to_vec(),
                kernel: vec![],
            },
            values: vec![1],
            labels: vec![],
        };
        let mut sym = Symbolizer::new();
        let p = sym.symbolize(raw(vec![s]), &maps);
        let locs: Vec<&Location> = p.samples[0]
            .locations
            .iter()
            .map(|&i| &p.locations[i])
            .collect();
        let names: Vec<&str> = locs.iter().map(|l| l.lines[0].function.as_str()).collect();
        assert_eq!(names[0], format!("prog-link+{a:#x}"), "{names:?}");
        assert_eq!(names[1], names[0], "same function, same name");
        assert_eq!(names[2], format!("prog-link+{b:#x}"));
        assert_eq!(names[3], format!("prog-link+{main:#x}"));
        // Addresses stay per location (frames after the first are return addresses - 1).
        assert_eq!(locs[0].address, addrs[0]);
        assert_eq!(locs[1].address, addrs[1] - 1);
        let m = &p.mappings[locs[0].mapping.unwrap()];
        assert_eq!(m.file, link.to_string_lossy(), "the name it was started as");
        assert!(!m.has_functions);
        assert_eq!(p.mappings[0].file, m.file, "still the main binary");
        assert!(
            p.comments.contains(&symlink_comment(&m.file, &real)),
            "{:?}",
            p.comments
        );
        // The opened file is the real one; its function starts were cached once.
        assert_eq!(sym.func_starts.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn notes_parser_finds_build_id() {
        let mut notes = Vec::new();
        // An unrelated note first (name "Xen", type 1, 2 bytes of desc).
        for w in [4u32, 2, 1] {
            notes.extend_from_slice(&w.to_ne_bytes());
        }
        notes.extend_from_slice(b"Xen\0\x01\x02\0\0");
        for w in [4u32, 4, 3] {
            notes.extend_from_slice(&w.to_ne_bytes());
        }
        notes.extend_from_slice(b"GNU\0\xde\xad\xbe\xef");
        assert_eq!(gnu_build_id_from_notes(&notes).as_deref(), Some("deadbeef"));
        assert_eq!(gnu_build_id_from_notes(&notes[..20]), None);
        assert_eq!(gnu_build_id_from_notes(&[]), None);
    }

    #[test]
    fn symbolizes_own_code_kernel_and_unknown() {
        let pid = std::process::id();
        let mut maps = MapsCache::new();
        maps.refresh(pid).unwrap();
        let f = marker_function_for_symbolizer_test();
        // Some kernel address from kallsyms (if readable).
        let ksym = std::fs::read_to_string("/proc/kallsyms")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.ends_with(" schedule"))
                    .and_then(|l| u64::from_str_radix(l.split(' ').next()?, 16).ok())
                    .filter(|&a| a != 0)
            });
        let mut kernel = Vec::new();
        if let Some(k) = ksym {
            kernel = vec![k + 1, k + 2];
        }
        let unknown = 0x10u64;
        let s = RawSample {
            pid,
            stack: RawStack {
                user: vec![f + 1, unknown, f + 2],
                kernel: kernel.clone(),
            },
            values: vec![3],
            labels: vec![],
        };
        let s2 = RawSample {
            values: vec![4],
            ..s.clone()
        };
        let mut sym = Symbolizer::new();
        let p = sym.symbolize(raw(vec![s, s2]), &maps);
        assert_eq!(p.samples.len(), 2);
        assert_eq!(
            p.samples[0].locations, p.samples[1].locations,
            "deduplicated"
        );
        let locs: Vec<&Location> = p.samples[0]
            .locations
            .iter()
            .map(|&i| &p.locations[i])
            .collect();
        assert_eq!(locs.len(), kernel.len() + 3);
        // Kernel frames first (leaf end).
        for l in &locs[..kernel.len()] {
            assert!(l.kernel);
            let m = &p.mappings[l.mapping.unwrap()];
            assert_eq!(m.file, KERNEL_MAPPING_FILE);
            assert_eq!(l.lines[0].function, "schedule");
        }
        let user = &locs[kernel.len()..];
        assert_eq!(user[0].address, f + 1);
        assert_eq!(user[2].address, f + 1, "return address - 1");
        let outer = user[0].lines.last().unwrap();
        assert!(
            outer
                .function
                .ends_with("marker_function_for_symbolizer_test"),
            "{outer:?}"
        );
        assert!(
            outer.file.as_deref().unwrap().ends_with("symbolize.rs"),
            "{outer:?}"
        );
        assert!(outer.line.is_some());
        assert_eq!(user[1].lines[0].function, "[unknown] 0xf");
        assert_eq!(user[1].mapping, None);
        let m = &p.mappings[user[0].mapping.unwrap()];
        assert!(m.has_functions && m.has_filenames && m.has_line_numbers);
        assert_eq!(
            p.mappings[0].file,
            maps.exe(pid).unwrap(),
            "main binary first"
        );
        // Symbolizing again (cached) gives the same result.
        let p2 = sym.symbolize(
            raw(vec![RawSample {
                pid,
                stack: RawStack {
                    user: vec![f + 1],
                    kernel: vec![],
                },
                values: vec![1],
                labels: vec![],
            }]),
            &maps,
        );
        assert_eq!(p2.locations[0].lines, user[0].lines);
    }

    #[test]
    fn symbolizes_after_forget_only_as_unknown() {
        let pid = std::process::id();
        let maps = MapsCache::new();
        let mut sym = Symbolizer::new();
        let f = marker_function_for_symbolizer_test();
        let p = sym.symbolize(
            raw(vec![RawSample {
                pid,
                stack: RawStack {
                    user: vec![f],
                    kernel: vec![],
                },
                values: vec![1],
                labels: vec![],
            }]),
            &maps,
        );
        assert_eq!(p.locations.len(), 1);
        assert!(p.locations[0].lines[0].function.starts_with("[unknown] 0x"));
        assert!(p.mappings.is_empty());
    }
}
