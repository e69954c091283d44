//! Feeds the BPF unwinder: compiles the CFI table of every executable file a target maps (once
//! per file, shared between processes), places it in the shared row array and builds each
//! process's sorted mapping table. Pure bookkeeping; `collect` uploads what this prepares.

use std::{collections::HashMap, os::unix::fs::FileExt, path::Path};

use stallscope_common::{ExecMapping, MAX_EXEC_MAPPINGS, ProcMappings, UNWIND_ROWS_MAX, UnwindRow};

use crate::unwind::{cfi as unwind, maps::MapsCache};

/// A PT_LOAD segment: file offset, virtual address and size in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    /// Size in memory (larger than `filesz` where `.bss` follows).
    pub memsz: u64,
}

/// Reads the PT_LOAD program headers of a 64-bit little-endian ELF file.
pub fn load_segments(path: &Path) -> std::io::Result<Vec<Segment>> {
    let f = std::fs::File::open(path)?;
    let mut hdr = [0u8; 64];
    f.read_exact_at(&mut hdr, 0)?;
    parse_segments(&hdr, |off, buf| f.read_exact_at(buf, off))
}

/// Parses PT_LOAD headers given the ELF header and a reader for the rest.
pub fn parse_segments(
    hdr: &[u8; 64],
    mut read: impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
) -> std::io::Result<Vec<Segment>> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    if &hdr[..4] != b"\x7fELF" || hdr[4] != 2 || hdr[5] != 1 {
        return Err(bad("not a 64-bit little-endian ELF file"));
    }
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let phoff = u64_at(hdr, 0x20);
    let phentsize = u16_at(hdr, 0x36) as usize;
    let phnum = u16_at(hdr, 0x38) as usize;
    if phentsize < 56 || phnum > 512 {
        return Err(bad("unexpected program header size or count"));
    }
    let mut table = vec![0u8; phentsize * phnum];
    read(phoff, &mut table)?;
    let mut out = Vec::new();
    for ph in table.chunks_exact(phentsize) {
        let p_type = u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]);
        if p_type == 1 {
            out.push(Segment {
                offset: u64_at(ph, 8),
                vaddr: u64_at(ph, 16),
                filesz: u64_at(ph, 32),
                memsz: u64_at(ph, 40),
            });
        }
    }
    Ok(out)
}

/// `bias` such that `vaddr = addr - bias` for a mapping of the file at `start` with file
/// offset `offset`, using the PT_LOAD segment that holds that offset.
///
/// The loader maps each segment from its page-aligned file offset, so the segment whose
/// offset rounds down to `offset` is the one mapped there. Linkers that pack segments (lld,
/// the default for Rust) start the text segment in the page where the read-only segment ends:
/// both hold `offset`, and the earlier one would give a bias off by a page.
pub fn mapping_bias(segments: &[Segment], start: u64, offset: u64) -> Option<u64> {
    let holds = |s: &&Segment| {
        let page_off = s.offset & !0xfff;
        offset >= page_off && offset < s.offset + s.filesz.max(1)
    };
    let seg = segments
        .iter()
        .filter(holds)
        .find(|s| s.offset & !0xfff == offset)
        .or_else(|| segments.iter().rfind(|s| holds(s)))?;
    Some(
        start
            .wrapping_sub(offset)
            .wrapping_add(seg.offset)
            .wrapping_sub(seg.vaddr),
    )
}

#[derive(Debug, Clone)]
enum FileEntry {
    Ready {
        rows_start: u32,
        rows_len: u32,
        segments: Vec<Segment>,
    },
    /// No table (no .eh_frame, not ELF, unreadable): frame pointers only.
    FramePointersOnly { segments: Vec<Segment> },
}

/// Counters for the summary and /metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStats {
    pub files_with_tables: u64,
    pub files_without_tables: u64,
    pub rows: u64,
    /// Files whose table did not fit in the row array (frame pointers only for them).
    pub files_over_capacity: u64,
    /// Executable mappings beyond `MAX_EXEC_MAPPINGS` for some process (frame pointers only).
    pub mappings_dropped: u64,
}

/// Compiled tables by file, and the row array's allocation.
#[derive(Default)]
pub struct UnwindRegistry {
    files: HashMap<u64, FileEntry>,
    next_row: u32,
    pending: Vec<(u32, Vec<UnwindRow>)>,
    pub stats: RegistryStats,
}

impl UnwindRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds the mapping table of `pid` from the maps cache, compiling tables of files not
    /// seen before (their rows wait in [`Self::take_pending`] to be uploaded).
    pub fn prepare(&mut self, pid: u32, maps: &MapsCache) -> ProcMappings {
        let mut entries: Vec<ExecMapping> = Vec::new();
        for m in maps.mappings(pid) {
            if m.is_pseudo() {
                continue;
            }
            let (Some(file_id), Some(path)) = (m.file_id(), m.open_path()) else {
                continue;
            };
            let entry = match self.files.get(&file_id) {
                Some(e) => e.clone(),
                None => {
                    let e = self.compile(&path);
                    self.files.insert(file_id, e.clone());
                    e
                }
            };
            let (segments, rows_start, rows_len) = match &entry {
                FileEntry::Ready {
                    rows_start,
                    rows_len,
                    segments,
                } => (segments, *rows_start, *rows_len),
                FileEntry::FramePointersOnly { segments } => (segments, 0, 0),
            };
            let Some(bias) = mapping_bias(segments, m.start, m.offset) else {
                continue;
            };
            entries.push(ExecMapping {
                start: m.start,
                end: m.end,
                bias,
                rows_start,
                rows_len,
            });
        }
        entries.sort_by_key(|e| e.start);
        entries.dedup_by(|b, a| b.start < a.end); // drop overlaps (stale cached mappings)
        if entries.len() > MAX_EXEC_MAPPINGS {
            self.stats.mappings_dropped += (entries.len() - MAX_EXEC_MAPPINGS) as u64;
            entries.truncate(MAX_EXEC_MAPPINGS);
        }
        let mut pm = ProcMappings {
            count: entries.len() as u32,
            ..ProcMappings::default()
        };
        pm.entries[..entries.len()].copy_from_slice(&entries);
        pm
    }

    fn compile(&mut self, path: &Path) -> FileEntry {
        let segments = load_segments(path).unwrap_or_default();
        let table = match unwind::compile_file(path) {
            Ok(t) if !t.rows.is_empty() => t,
            Ok(_) => {
                self.stats.files_without_tables += 1;
                return FileEntry::FramePointersOnly { segments };
            }
            Err(e) => {
                tracing::debug!("no unwind table for {}: {e}", path.display());
                self.stats.files_without_tables += 1;
                return FileEntry::FramePointersOnly { segments };
            }
        };
        let len = table.rows.len() as u32;
        if (self.next_row as u64 + len as u64) > UNWIND_ROWS_MAX as u64 {
            self.stats.files_over_capacity += 1;
            return FileEntry::FramePointersOnly { segments };
        }
        let start = self.next_row;
        self.next_row += len;
        self.stats.files_with_tables += 1;
        self.stats.rows += len as u64;
        self.pending.push((start, table.rows));
        FileEntry::Ready {
            rows_start: start,
            rows_len: len,
            segments,
        }
    }

    /// Rows compiled since the last call, with their start index in the row array.
    pub fn take_pending(&mut self) -> Vec<(u32, Vec<UnwindRow>)> {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bias_of_a_pie_text_segment() {
        // A typical PIE: text at file offset 0x1000, vaddr 0x1000, mapped at 0x5555_5555_5000.
        let segs = [
            Segment {
                offset: 0,
                vaddr: 0,
                filesz: 0x600,
                memsz: 0x600,
            },
            Segment {
                offset: 0x1000,
                vaddr: 0x1000,
                filesz: 0x2000,
                memsz: 0x2000,
            },
        ];
        let bias = mapping_bias(&segs, 0x5555_5555_5000, 0x1000).unwrap();
        assert_eq!(0x5555_5555_5123u64.wrapping_sub(bias), 0x1123);
        // A non-PIE executable: vaddr 0x401000 at offset 0x1000 mapped at 0x401000.
        let segs = [Segment {
            offset: 0x1000,
            vaddr: 0x401000,
            filesz: 0x1000,
            memsz: 0x1000,
        }];
        let bias = mapping_bias(&segs, 0x401000, 0x1000).unwrap();
        assert_eq!(0x401234u64.wrapping_sub(bias), 0x401234);
        assert!(mapping_bias(&segs, 0x401000, 0x9000).is_none());
    }

    #[test]
    fn libc_segments_and_registry() {
        let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
        let segs = load_segments(libc).expect("libc is on every machine of this kind");
        assert!(segs.len() >= 2, "{segs:?}");
        // The registry on the test process itself: libc and this binary get tables.
        let mut maps = MapsCache::new();
        let me = std::process::id();
        maps.refresh(me).unwrap();
        let mut reg = UnwindRegistry::new();
        let pm = reg.prepare(me, &maps);
        assert!(pm.count >= 2, "expected at least the test binary and libc");
        let entries = &pm.entries[..pm.count as usize];
        assert!(
            entries.windows(2).all(|w| w[0].end <= w[1].start),
            "sorted, no overlap"
        );
        assert!(reg.stats.files_with_tables >= 2, "{:?}", reg.stats);
        let pending = reg.take_pending();
        assert_eq!(
            pending.iter().map(|p| p.1.len() as u64).sum::<u64>(),
            reg.stats.rows
        );
        // A second prepare compiles nothing new.
        let _ = reg.prepare(me, &maps);
        assert!(reg.take_pending().is_empty());
        assert!(parse_segments(&[0u8; 64], |_, _| Ok(())).is_err());
    }
}
