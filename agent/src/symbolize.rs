//! Turns raw addresses into functions, files, lines and inlined frames (blazesym).
//!
//! User frames are symbolized from the files cached in [`MapsCache`] (`/proc/self/fd/N`, as file
//! offsets), so a process that exited or whose binary was deleted still symbolizes. Kernel frames
//! come from `/proc/kallsyms`. Every address yields a [`Location`]: what cannot be resolved is
//! named `libfoo.so+0x1234` or `[unknown] 0x7f...` rather than dropped.
//!
//! [`Symbolizer`] wraps one long-lived blazesym symbolizer, which caches parsed ELF/DWARF data per
//! file. It is not `Send`: create it on the thread that symbolizes and keep it there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use blazesym::symbolize::source::{Elf, Kernel, Process, Source};
use blazesym::symbolize::{Input, Sym, Symbolized};
use blazesym::{MaybeDefault, Pid};

use crate::model::{Line, Location, Mapping, Profile, RawProfile, Sample};
use crate::procmaps::{CachedMapping, MapsCache};

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
    pid: u32,
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
            let Ok(segments) = crate::unwinder::load_segments(&path) else {
                continue;
            };
            let Some(bias) = crate::unwinder::mapping_bias(&segments, m.start, m.offset) else {
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
        let mut groups: Vec<_> = by_mapping.into_values().collect();
        groups.sort_by_key(|(m, _)| m.id);
        for (m, locs) in groups {
            let pid = match keys[locs[0]] {
                LocKey::User { pid, .. } => pid,
                LocKey::Kernel { .. } => 0,
            };
            let index = accs.len();
            accs.push(MappingAcc {
                pid,
                mapping: Mapping {
                    start: m.start,
                    limit: m.end,
                    offset: m.offset,
                    file: m.path.clone(),
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
                pid: 0,
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

        let mappings = main_binaries_first(accs, maps, &mut locations);
        self.evict_stale(maps);

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
            comments: raw.comments,
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
        let fallback = |addr: u64| vec![offset_line(m, addr)];

        let results: Option<Vec<Symbolized<'_>>> = if let Some(path) = m.open_path() {
            if let Some(id) = m.file_id() {
                self.used_files.insert(path.clone(), id);
            }
            let offsets: Vec<u64> = addrs.iter().map(|&a| m.file_offset(a)).collect();
            let src = Source::Elf(Elf::new(&path));
            match self.inner.symbolize(&src, Input::FileOffset(&offsets)) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::debug!(file = %m.path, "cannot symbolize: {e}");
                    None
                }
            }
        } else if m.path == "[vdso]"
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
    Line {
        function: format!("{}+{:#x}", m.file_name(), m.file_offset(addr)),
        system_name: None,
        file: None,
        line: None,
    }
}

/// Whether a function name is one of our placeholders rather than a resolved symbol.
pub fn is_placeholder(function: &str) -> bool {
    function.starts_with("[unknown] ") || function.contains("+0x")
}

/// Orders mappings so each process's main binary comes first (pprof expects `mapping[0]` to be
/// the main binary), then by creation; rewrites location indexes accordingly.
fn main_binaries_first(
    accs: Vec<MappingAcc>,
    maps: &MapsCache,
    locations: &mut [Location],
) -> Vec<Mapping> {
    let mut order: Vec<usize> = (0..accs.len()).collect();
    let is_main = |a: &MappingAcc| maps.exe(a.pid) == Some(a.mapping.file.as_str());
    order.sort_by_key(|&i| !is_main(&accs[i]));
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
    crate::procmaps::parse_maps(&text)
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

#[cfg(test)]
mod tests {
    use super::*;
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
