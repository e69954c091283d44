//! Compiles an ELF file's DWARF call frame information (`.eh_frame`) into the compact unwind table
//! that the BPF unwinder searches ([`UnwindRow`], shared with the BPF code).
//!
//! Why: Debian's glibc has no frame pointers, so a frame-pointer walk that starts inside libc loses
//! the frame that called into libc. The BPF unwinder instead looks up, for each frame, the CFI row
//! of its pc and computes the caller's registers from it; where there is no usable row it falls
//! back to frame pointers.
//!
//! # The table
//! One table per ELF file. `rows` is sorted by `pc` (an ELF virtual address of that file, as in its
//! symbol table; a process address maps to it by subtracting the mapping's load bias). A row
//! applies from its `pc` up to the next row's `pc`; the row for a pc is the one with the largest
//! `row.pc <= pc` ([`UnwindTable::lookup`]); a pc below the first row has no row. Every FDE's end
//! gets a `CFA_REG_NONE` row (unless another FDE starts exactly there), so a pc between or after
//! functions never inherits the previous function's rule. Consecutive rows with identical rules
//! are merged (the first is kept).
//!
//! # What the BPF unwinder must do (reference: [`unwind_stack`], [`unwind_step`])
//! For each frame, with registers `ip`, `sp`, `bp`:
//! 1. Look up the row of `ip` for the innermost frame and of `ip - 1` for every caller frame (`ip`
//!    is then a return address, which may already belong to the next function after a call to a
//!    `noreturn` function).
//! 2. `flags & ROW_END_OF_STACK`: this is the outermost frame (`_start`, `clone3`); stop.
//! 3. `cfa_reg == CFA_REG_NONE` or no row: fall back to one frame-pointer step
//!    ([`frame_pointer_step`]).
//! 4. Otherwise `CFA = (cfa_reg == CFA_REG_SP ? sp : bp) + cfa_offset`; the caller's `ip` is the
//!    u64 at `CFA - 8`, its `sp` is `CFA`, its `bp` is the u64 at `CFA + rbp_offset` when
//!    `rbp_offset != 0`, else unchanged.
//! 5. Stop when the new `ip` is 0 or the stack did not grow (`new sp <= sp`).
//!
//! # Rules that become `CFA_REG_NONE` (counted in [`TableStats::rows_unsupported`])
//! A CFA defined by a DWARF expression or relative to a register other than rsp/rbp, a return
//! address not saved at CFA-8, and every row of a signal-trampoline FDE (`__restore_rt`; the
//! frame below it is a `ucontext`, not a call). glibc's `.plt` FDEs use expressions and land here:
//! the BPF code then falls back to frame pointers, which is what it did before this table existed.
//! A saved-rbp rule other than "at CFA+n" (register, expression, ...) is treated as "unchanged" and
//! counted in [`TableStats::rbp_rules_unsupported`].
//!
//! Not handled: `.debug_frame` (only `.eh_frame` is read; every x86-64 binary built with the
//! default `-fasynchronous-unwind-tables` has it), files without section headers, and ELF files
//! other than 64-bit little-endian x86-64 executables and shared objects.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, CommonInformationEntry, EhFrame, EndianSlice, LittleEndian,
    RegisterRule, UnwindContext, UnwindSection, UnwindTableRow, X86_64,
};
use stallscope_common::{CFA_REG_BP, CFA_REG_NONE, CFA_REG_SP, ROW_END_OF_STACK, UnwindRow};

/// Why a file's unwind table could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UnwindError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not an ELF file")]
    NotElf,
    #[error(
        "unsupported ELF file ({0}); only 64-bit little-endian x86-64 executables and shared objects are supported"
    )]
    Unsupported(String),
    #[error("malformed ELF file: {0}")]
    Malformed(String),
    #[error("the ELF file has no .eh_frame section (or it has no data in this file)")]
    NoEhFrame,
    #[error("malformed .eh_frame: {0}")]
    EhFrame(gimli::Error),
}

/// Counts describing one compiled table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// FDEs (functions) compiled into the table.
    pub fdes: usize,
    /// FDEs left out: empty, or not in an executable section (discarded code).
    pub fdes_skipped: usize,
    /// FDEs whose CIE or CFI program could not be parsed; their range is a `CFA_REG_NONE` row.
    pub fdes_failed: usize,
    /// Rows in the final table (`rows.len()`).
    pub rows: usize,
    /// CFI rows (before merging) whose rule cannot be expressed and became `CFA_REG_NONE`.
    pub rows_unsupported: usize,
    /// CFI rows (before merging) whose saved-rbp rule is unsupported and treated as unchanged.
    pub rbp_rules_unsupported: usize,
    /// Size of `rows` in bytes, as loaded into a BPF map.
    pub bytes: usize,
}

/// The unwind table of one ELF file. See the module documentation for its semantics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnwindTable {
    pub rows: Vec<UnwindRow>,
    pub stats: TableStats,
}

impl UnwindTable {
    /// The row that applies at `pc` (an ELF virtual address): the one with the largest
    /// `row.pc <= pc`. This is the binary search the BPF unwinder does.
    pub fn lookup(&self, pc: u64) -> Option<&UnwindRow> {
        let idx = self.rows.partition_point(|row| row.pc <= pc);
        idx.checked_sub(1).map(|i| &self.rows[i])
    }
}

/// The registers the unwinder tracks for one frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// One CFI step: the caller's registers from the callee's `regs` and the row of the callee's pc.
/// `None` for a `CFA_REG_NONE` row (the caller falls back to [`frame_pointer_step`]), for an
/// end-of-stack row, when a read fails, or on address overflow.
pub fn unwind_step(
    row: &UnwindRow,
    regs: Regs,
    read_u64: impl Fn(u64) -> Option<u64>,
) -> Option<Regs> {
    if row.flags & ROW_END_OF_STACK != 0 {
        return None;
    }
    let base = match row.cfa_reg {
        CFA_REG_SP => regs.sp,
        CFA_REG_BP => regs.bp,
        _ => return None,
    };
    let cfa = base.checked_add_signed(i64::from(row.cfa_offset))?;
    let ip = read_u64(cfa.checked_sub(8)?)?;
    let bp = if row.rbp_offset == 0 {
        regs.bp
    } else {
        read_u64(cfa.checked_add_signed(i64::from(row.rbp_offset))?)?
    };
    Some(Regs { ip, sp: cfa, bp })
}

/// One frame-pointer step (the fallback where there is no usable row): the caller's ip is at
/// `bp + 8`, its bp at `bp`, its sp is `bp + 16`. `None` when `bp` is 0 or a read fails.
pub fn frame_pointer_step(regs: Regs, read_u64: impl Fn(u64) -> Option<u64>) -> Option<Regs> {
    if regs.bp == 0 {
        return None;
    }
    let sp = regs.bp.checked_add(16)?;
    let ip = read_u64(regs.bp.checked_add(8)?)?;
    let bp = read_u64(regs.bp)?;
    Some(Regs { ip, sp, bp })
}

/// Reference user-stack unwinder: the return addresses (innermost first, starting with
/// `regs.ip`) of at most `max_frames` frames. `lookup` maps a process address to the row of the
/// file mapped there (the caller subtracts the load bias), `read_u64` reads the process's memory.
/// See the module documentation for the algorithm the BPF code must follow.
pub fn unwind_stack(
    mut regs: Regs,
    lookup: impl Fn(u64) -> Option<UnwindRow>,
    read_u64: impl Fn(u64) -> Option<u64>,
    max_frames: usize,
) -> Vec<u64> {
    let mut frames = Vec::new();
    while frames.len() < max_frames && regs.ip != 0 {
        frames.push(regs.ip);
        let pc = if frames.len() == 1 {
            regs.ip
        } else {
            regs.ip - 1
        };
        let next = match lookup(pc) {
            Some(row) if row.flags & ROW_END_OF_STACK != 0 => break,
            Some(row) if row.cfa_reg != CFA_REG_NONE => unwind_step(&row, regs, &read_u64),
            _ => frame_pointer_step(regs, &read_u64),
        };
        match next {
            Some(next) if next.sp > regs.sp => regs = next,
            _ => break,
        }
    }
    frames
}

/// Compiles the unwind table of the ELF file at `path`. Reads only the section headers and
/// `.eh_frame`, not the whole file.
pub fn compile_file(path: &Path) -> Result<UnwindTable, UnwindError> {
    let (file, len) = open_elf(path)?;
    let mut read = file_reader(path, &file, len);
    let sections = read_sections(&mut read)?;
    compile_sections(&sections, &mut read)
}

/// The ELF file at `path`, open, with its section headers and their names, checked as the
/// unwinder checks them (64-bit little-endian x86-64, extended numbering). The Go readers
/// (`gopclntab`, the goroutine dump) find their sections with this; `tables::load_segments`
/// reads the program headers.
pub fn elf_sections(path: &Path) -> Result<(File, Vec<Section>), UnwindError> {
    let (file, len) = open_elf(path)?;
    let sections = read_sections(&mut file_reader(path, &file, len))?;
    Ok((file, sections))
}

/// Opens the file at `path` and returns it with its length.
fn open_elf(path: &Path) -> Result<(File, u64), UnwindError> {
    let io_err = |source| UnwindError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    Ok((file, len))
}

/// Reads `size` bytes at `offset` of `file` (of length `len`), refusing reads past its end.
fn file_reader<'a>(
    path: &'a Path,
    file: &'a File,
    len: u64,
) -> impl FnMut(u64, u64) -> Result<Vec<u8>, UnwindError> + 'a {
    move |offset: u64, size: u64| -> Result<Vec<u8>, UnwindError> {
        if offset.checked_add(size).is_none_or(|end| end > len) {
            return Err(UnwindError::Malformed(format!(
                "{size} bytes at offset {offset:#x} are past the end of the file"
            )));
        }
        let mut buf = vec![0; size as usize];
        file.read_exact_at(&mut buf, offset)
            .map_err(|source| UnwindError::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok(buf)
    }
}

/// Where the functions of an ELF file are, for naming code that has no symbol: the `[start, end)`
/// of every `.eh_frame` FDE (one per function, or per part of a function such as `foo.cold`) and
/// of every executable section, as ELF virtual addresses, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CodeRanges {
    /// FDEs that start in an executable section (the others describe discarded code).
    pub fdes: Vec<(u64, u64)>,
    pub exec_sections: Vec<(u64, u64)>,
}

/// The [`CodeRanges`] of the ELF file at `path`. A file without `.eh_frame` has no FDEs (not an
/// error); FDEs that do not parse are left out.
pub fn code_ranges_file(path: &Path) -> Result<CodeRanges, UnwindError> {
    let (file, len) = open_elf(path)?;
    code_ranges_with(&mut file_reader(path, &file, len))
}

/// The [`CodeRanges`] of an ELF file held in memory (as [`code_ranges_file`]).
pub fn code_ranges(data: &[u8]) -> Result<CodeRanges, UnwindError> {
    code_ranges_with(&mut bytes_reader(data))
}

fn code_ranges_with(
    read: &mut impl FnMut(u64, u64) -> Result<Vec<u8>, UnwindError>,
) -> Result<CodeRanges, UnwindError> {
    let sections = read_sections(read)?;
    let exec_sections = exec_ranges(&sections);
    let Some(eh) = sections
        .iter()
        .find(|s| s.name == ".eh_frame" && s.sh_type != SHT_NOBITS && s.size > 0)
        .filter(|s| s.size <= MAX_EH_FRAME)
    else {
        return Ok(CodeRanges {
            fdes: Vec::new(),
            exec_sections,
        });
    };
    let data = read(eh.offset, eh.size)?;
    let bases = eh_frame_bases(&sections, eh);
    let mut eh_frame = EhFrame::new(&data[..], LittleEndian);
    eh_frame.set_address_size(8);
    let mut cies: HashMap<usize, CommonInformationEntry<EndianSlice<'_, LittleEndian>>> =
        HashMap::new();
    let mut fdes = Vec::new();
    let mut entries = eh_frame.entries(&bases);
    while let Some(entry) = entries.next().map_err(UnwindError::EhFrame)? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(|section, bases, offset| {
            if let Some(cie) = cies.get(&offset.0) {
                return Ok(cie.clone());
            }
            let cie = section.cie_from_offset(bases, offset)?;
            cies.insert(offset.0, cie.clone());
            Ok(cie)
        }) else {
            continue;
        };
        let start = fde.initial_address();
        let Some(end) = start.checked_add(fde.len()).filter(|&end| end > start) else {
            continue;
        };
        if exec_sections.is_empty()
            || exec_sections
                .iter()
                .any(|&(lo, hi)| lo <= start && start < hi)
        {
            fdes.push((start, end));
        }
    }
    Ok(CodeRanges {
        fdes,
        exec_sections,
    })
}

/// Compiles the unwind table of an ELF file held in memory.
pub fn compile_elf(data: &[u8]) -> Result<UnwindTable, UnwindError> {
    let mut read = bytes_reader(data);
    let sections = read_sections(&mut read)?;
    compile_sections(&sections, &mut read)
}

/// Reads `size` bytes at `offset` of `data`, refusing reads past its end.
fn bytes_reader(data: &[u8]) -> impl FnMut(u64, u64) -> Result<Vec<u8>, UnwindError> + '_ {
    move |offset: u64, size: u64| -> Result<Vec<u8>, UnwindError> {
        usize::try_from(offset)
            .ok()
            .zip(usize::try_from(size).ok())
            .and_then(|(start, size)| data.get(start..start.checked_add(size)?))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                UnwindError::Malformed(format!(
                    "{size} bytes at offset {offset:#x} are past the end of the file"
                ))
            })
    }
}

// ---------------------------------------------------------------------------------------------
// ELF section headers

const SHT_NOBITS: u32 = 8;
const SHF_ALLOC: u64 = 0x2;
const SHF_EXECINSTR: u64 = 0x4;
const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const SHDR_SIZE: u64 = 64;
/// Sanity limits against corrupt headers.
const MAX_SECTIONS: u64 = 1 << 20;
const MAX_SHSTRTAB: u64 = 64 << 20;
const MAX_EH_FRAME: u64 = 1 << 30;

#[derive(Clone, Debug)]
/// A section header of an ELF file, with its name.
pub struct Section {
    pub name: String,
    pub sh_type: u32,
    pub flags: u64,
    pub addr: u64,
    pub offset: u64,
    pub size: u64,
    #[cfg_attr(not(test), allow(dead_code))]
    pub link: u32,
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn parse_shdr(b: &[u8]) -> Section {
    Section {
        name: String::new(),
        sh_type: u32_at(b, 4),
        flags: u64_at(b, 8),
        addr: u64_at(b, 16),
        offset: u64_at(b, 24),
        size: u64_at(b, 32),
        link: u32_at(b, 40),
    }
}

/// Reads and checks the ELF header, then the section headers with their names.
fn read_sections(
    read: &mut impl FnMut(u64, u64) -> Result<Vec<u8>, UnwindError>,
) -> Result<Vec<Section>, UnwindError> {
    let ehdr = read(0, 64).map_err(|_| UnwindError::NotElf)?;
    if ehdr[..4] != *b"\x7fELF" {
        return Err(UnwindError::NotElf);
    }
    if ehdr[4] != 2 {
        return Err(UnwindError::Unsupported("not 64-bit".into()));
    }
    if ehdr[5] != 1 {
        return Err(UnwindError::Unsupported("not little-endian".into()));
    }
    let e_type = u16_at(&ehdr, 16);
    let machine = u16_at(&ehdr, 18);
    if machine != EM_X86_64 {
        return Err(UnwindError::Unsupported(format!(
            "machine {machine}, not x86-64"
        )));
    }
    if e_type != ET_EXEC && e_type != ET_DYN {
        return Err(UnwindError::Unsupported(format!(
            "ELF type {e_type}, not an executable or shared object"
        )));
    }
    let shoff = u64_at(&ehdr, 0x28);
    let shentsize = u16_at(&ehdr, 0x3a);
    let mut shnum = u64::from(u16_at(&ehdr, 0x3c));
    let mut shstrndx = u32::from(u16_at(&ehdr, 0x3e));
    if shoff == 0 {
        return Err(UnwindError::Malformed("no section headers".into()));
    }
    if u64::from(shentsize) != SHDR_SIZE {
        return Err(UnwindError::Malformed(format!(
            "section header size {shentsize}, expected {SHDR_SIZE}"
        )));
    }
    // Extended numbering: the real counts live in section header 0.
    if shnum == 0 || shstrndx == 0xffff {
        let sh0 = read(shoff, SHDR_SIZE)?;
        if shnum == 0 {
            shnum = u64_at(&sh0, 32);
        }
        if shstrndx == 0xffff {
            shstrndx = u32_at(&sh0, 40);
        }
    }
    if shnum > MAX_SECTIONS {
        return Err(UnwindError::Malformed(format!("{shnum} sections")));
    }
    let table = read(shoff, shnum * SHDR_SIZE)?;
    let mut sections: Vec<Section> = table
        .chunks_exact(SHDR_SIZE as usize)
        .map(parse_shdr)
        .collect();
    let strtab = sections
        .get(shstrndx as usize)
        .filter(|s| s.sh_type != SHT_NOBITS && s.size <= MAX_SHSTRTAB)
        .map(|s| read(s.offset, s.size))
        .transpose()?
        .ok_or_else(|| UnwindError::Malformed("no section name table".into()))?;
    for (i, s) in sections.iter_mut().enumerate() {
        let off = u32_at(&table, i * SHDR_SIZE as usize) as usize;
        let name = strtab.get(off..).unwrap_or_default();
        let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        s.name = String::from_utf8_lossy(&name[..end]).into_owned();
    }
    Ok(sections)
}

// ---------------------------------------------------------------------------------------------
// .eh_frame → rows

fn compile_sections(
    sections: &[Section],
    read: &mut impl FnMut(u64, u64) -> Result<Vec<u8>, UnwindError>,
) -> Result<UnwindTable, UnwindError> {
    let find = |name: &str| sections.iter().find(|s| s.name == name);
    let eh = find(".eh_frame")
        .filter(|s| s.sh_type != SHT_NOBITS && s.size > 0)
        .ok_or(UnwindError::NoEhFrame)?;
    if eh.size > MAX_EH_FRAME {
        return Err(UnwindError::Malformed(format!(
            ".eh_frame of {} bytes",
            eh.size
        )));
    }
    let data = read(eh.offset, eh.size)?;
    let bases = eh_frame_bases(sections, eh);
    let code = exec_ranges(sections);
    compile_eh_frame(&data, &bases, &code)
}

/// The base addresses that `.eh_frame` pointer encodings may be relative to.
fn eh_frame_bases(sections: &[Section], eh: &Section) -> BaseAddresses {
    let find = |name: &str| sections.iter().find(|s| s.name == name);
    let mut bases = BaseAddresses::default().set_eh_frame(eh.addr);
    if let Some(s) = find(".eh_frame_hdr") {
        bases = bases.set_eh_frame_hdr(s.addr);
    }
    if let Some(s) = find(".text") {
        bases = bases.set_text(s.addr);
    }
    if let Some(s) = find(".got") {
        bases = bases.set_got(s.addr);
    }
    bases
}

/// `[start, end)` of the executable sections.
fn exec_ranges(sections: &[Section]) -> Vec<(u64, u64)> {
    sections
        .iter()
        .filter(|s| s.flags & (SHF_ALLOC | SHF_EXECINSTR) == SHF_ALLOC | SHF_EXECINSTR)
        .map(|s| (s.addr, s.addr.saturating_add(s.size)))
        .collect()
}

/// Compiles `.eh_frame` contents. `code` lists the executable sections' address ranges; an FDE
/// starting outside all of them is skipped (empty `code`: nothing is skipped).
fn compile_eh_frame(
    data: &[u8],
    bases: &BaseAddresses,
    code: &[(u64, u64)],
) -> Result<UnwindTable, UnwindError> {
    let mut eh_frame = EhFrame::new(data, LittleEndian);
    eh_frame.set_address_size(8);
    let mut stats = TableStats::default();
    let mut cies: HashMap<usize, CommonInformationEntry<EndianSlice<'_, LittleEndian>>> =
        HashMap::new();
    let mut ctx = Box::new(UnwindContext::new());
    let mut rows = Vec::new();
    let mut fde_ends = Vec::new();

    let mut entries = eh_frame.entries(bases);
    while let Some(entry) = entries.next().map_err(UnwindError::EhFrame)? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let fde = partial.parse(|section, bases, offset| {
            if let Some(cie) = cies.get(&offset.0) {
                return Ok(cie.clone());
            }
            let cie = section.cie_from_offset(bases, offset)?;
            cies.insert(offset.0, cie.clone());
            Ok(cie)
        });
        let Ok(fde) = fde else {
            stats.fdes_failed += 1;
            continue;
        };
        let start = fde.initial_address();
        let Some(end) = start.checked_add(fde.len()).filter(|&end| end > start) else {
            stats.fdes_skipped += 1;
            continue;
        };
        if !code.is_empty() && !code.iter().any(|&(lo, hi)| lo <= start && start < hi) {
            stats.fdes_skipped += 1;
            continue;
        }
        fde_ends.push(end);
        let first = rows.len();
        let unsupported_fde =
            fde.is_signal_trampoline() || fde.cie().return_address_register() != X86_64::RA;
        let result = (|| -> gimli::Result<()> {
            let mut table = fde.rows(&eh_frame, bases, &mut ctx)?;
            while let Some(row) = table.next_row()? {
                if row.start_address() >= row.end_address() {
                    continue;
                }
                let mut out = convert_row(row, &mut stats);
                if unsupported_fde && out.cfa_reg != CFA_REG_NONE {
                    out = none_row(out.pc);
                    stats.rows_unsupported += 1;
                }
                rows.push(out);
            }
            Ok(())
        })();
        match result {
            Ok(()) if rows.len() > first => stats.fdes += 1,
            _ => {
                rows.truncate(first);
                rows.push(none_row(start));
                stats.fdes_failed += 1;
            }
        }
    }

    let rows = finish_rows(rows, &fde_ends);
    stats.rows = rows.len();
    stats.bytes = std::mem::size_of_val(rows.as_slice());
    Ok(UnwindTable { rows, stats })
}

fn none_row(pc: u64) -> UnwindRow {
    UnwindRow {
        pc,
        cfa_reg: CFA_REG_NONE,
        ..UnwindRow::default()
    }
}

/// Translates one gimli CFI row into an [`UnwindRow`], counting what it cannot express.
fn convert_row(row: &UnwindTableRow<usize>, stats: &mut TableStats) -> UnwindRow {
    let pc = row.start_address();
    let ra = row.register(X86_64::RA);
    let end_of_stack = matches!(ra, Some(RegisterRule::Undefined));
    let cfa = match *row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let reg = match register {
                X86_64::RSP => Some(CFA_REG_SP),
                X86_64::RBP => Some(CFA_REG_BP),
                _ => None,
            };
            reg.zip(i32::try_from(offset).ok())
        }
        CfaRule::Expression(_) => None,
    };
    let flags = if end_of_stack { ROW_END_OF_STACK } else { 0 };
    let ra_ok = matches!(ra, Some(RegisterRule::Offset(-8)));
    let Some((cfa_reg, cfa_offset)) = cfa.filter(|_| ra_ok || end_of_stack) else {
        // An end-of-stack row needs no CFA: the unwinder stops there.
        if !end_of_stack {
            stats.rows_unsupported += 1;
        }
        return UnwindRow {
            flags,
            ..none_row(pc)
        };
    };
    let rbp_offset = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::Undefined | RegisterRule::SameValue) => 0,
        Some(RegisterRule::Offset(n)) if n != 0 && i16::try_from(n).is_ok() => n as i16,
        Some(_) => {
            stats.rbp_rules_unsupported += 1;
            0
        }
    };
    UnwindRow {
        pc,
        cfa_offset,
        rbp_offset,
        cfa_reg,
        flags,
    }
}

/// Builds the final table from the FDEs' rows (each FDE's rows in ascending order, FDEs in any
/// order) and the FDEs' end addresses: adds a `CFA_REG_NONE` row at every FDE end where no row
/// starts, sorts by pc (at equal pcs the row that came first wins), and drops every row whose
/// rule equals the previous row's.
fn finish_rows(rows: Vec<UnwindRow>, fde_ends: &[u64]) -> Vec<UnwindRow> {
    // (row, is_gap_marker): a real row at the same pc sorts before, and so wins over, a marker.
    let mut all: Vec<(UnwindRow, bool)> = rows.into_iter().map(|row| (row, false)).collect();
    all.extend(fde_ends.iter().map(|&pc| (none_row(pc), true)));
    all.sort_by_key(|&(row, gap)| (row.pc, gap)); // stable
    all.dedup_by_key(|(row, _)| row.pc); // keeps the first row at each pc
    let same_rule = |a: &UnwindRow, b: &UnwindRow| {
        (a.cfa_offset, a.rbp_offset, a.cfa_reg, a.flags)
            == (b.cfa_offset, b.rbp_offset, b.cfa_reg, b.flags)
    };
    let mut out: Vec<UnwindRow> = Vec::with_capacity(all.len());
    for (row, _) in all {
        match out.last() {
            Some(last) if same_rule(last, &row) => {}
            _ => out.push(row),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::process::Command;

    const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";

    fn row(pc: u64, cfa_reg: u8, cfa_offset: i32, rbp_offset: i16) -> UnwindRow {
        UnwindRow {
            pc,
            cfa_offset,
            rbp_offset,
            cfa_reg,
            flags: 0,
        }
    }

    /// (address, size) of a function symbol, from `.symtab` or `.dynsym`.
    fn find_symbol(data: &[u8], name: &str) -> Option<(u64, u64)> {
        let mut read = |offset: u64, size: u64| -> Result<Vec<u8>, UnwindError> {
            Ok(data[offset as usize..(offset + size) as usize].to_vec())
        };
        let sections = read_sections(&mut read).unwrap();
        for symtab in sections
            .iter()
            .filter(|s| s.sh_type == 2 || s.sh_type == 11)
        {
            let strtab = &sections[symtab.link as usize];
            let strs = &data[strtab.offset as usize..(strtab.offset + strtab.size) as usize];
            let syms = &data[symtab.offset as usize..(symtab.offset + symtab.size) as usize];
            for sym in syms.chunks_exact(24) {
                let n = &strs[u32_at(sym, 0) as usize..];
                let n = &n[..n.iter().position(|&c| c == 0).unwrap()];
                let value = u64_at(sym, 8);
                if n == name.as_bytes() && sym[4] & 0xf == 2 && value != 0 {
                    return Some((value, u64_at(sym, 16)));
                }
            }
        }
        None
    }

    fn assert_well_formed(table: &UnwindTable) {
        assert!(!table.rows.is_empty());
        assert_eq!(table.stats.rows, table.rows.len());
        assert_eq!(table.stats.bytes, table.rows.len() * 16);
        for w in table.rows.windows(2) {
            assert!(w[0].pc < w[1].pc, "not sorted: {:?}", w);
            let rule = |r: &UnwindRow| (r.cfa_offset, r.rbp_offset, r.cfa_reg, r.flags);
            assert_ne!(rule(&w[0]), rule(&w[1]), "unmerged rows: {:?}", w);
        }
        assert_eq!(table.rows.last().unwrap().cfa_reg, CFA_REG_NONE);
    }

    #[test]
    fn libc_table() {
        let data = std::fs::read(LIBC)
            .unwrap_or_else(|e| panic!("{LIBC} must exist on this machine ({e})"));
        let started = std::time::Instant::now();
        let table = compile_file(Path::new(LIBC)).unwrap();
        eprintln!("{LIBC}: {:?} in {:?}", table.stats, started.elapsed());
        assert_well_formed(&table);
        assert_eq!(compile_elf(&data).unwrap(), table);
        let ranges = code_ranges_file(Path::new(LIBC)).unwrap();
        assert_eq!(code_ranges(&data).unwrap(), ranges);
        assert_eq!(
            ranges.fdes.len(),
            table.stats.fdes + table.stats.fdes_failed
        );
        assert!(table.stats.fdes > 1000, "{:?}", table.stats);
        assert_eq!(table.stats.fdes_failed, 0);

        // `__lll_lock_wait` itself is not exported by Debian's libc (no .symtab there); its
        // exported sibling from the same source file is.
        for name in [
            "clock_nanosleep",
            "__lll_lock_wait_private",
            "epoll_wait",
            "pthread_mutex_lock",
        ] {
            let (addr, size) = find_symbol(&data, name)
                .unwrap_or_else(|| panic!("{name} not found in {LIBC}'s symbols"));
            assert!(size > 0);
            let entry = table.lookup(addr).unwrap();
            assert_eq!(
                (
                    entry.cfa_reg,
                    entry.cfa_offset,
                    entry.rbp_offset,
                    entry.flags
                ),
                (CFA_REG_SP, 8, 0, 0),
                "{name} entry row {entry:?}"
            );
            for pc in addr..addr + size {
                let r = table.lookup(pc).unwrap();
                assert!(
                    r.cfa_reg == CFA_REG_SP || r.cfa_reg == CFA_REG_BP,
                    "{name}+{:#x}: unsupported row {r:?}",
                    pc - addr
                );
                assert_eq!(r.flags, 0);
            }
        }
    }

    #[test]
    fn rejects_non_x86_64_elf() {
        assert!(matches!(compile_elf(b"hello"), Err(UnwindError::NotElf)));
        let mut data = std::fs::read(LIBC).unwrap();
        data[18] = 183; // EM_AARCH64
        let err = compile_elf(&data).unwrap_err();
        assert!(matches!(err, UnwindError::Unsupported(_)), "{err}");
        data[4] = 1; // ELFCLASS32
        assert!(matches!(
            compile_elf(&data),
            Err(UnwindError::Unsupported(_))
        ));
        let err = compile_file(Path::new("/nonexistent/lib.so")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/lib.so"), "{err}");
    }

    const C_SOURCE: &str = r#"
#include <string.h>
__attribute__((noipa)) void consume(char *p, long n) {
    __asm__ volatile("" : : "r"(p), "r"(n) : "memory");
}
__attribute__((noinline)) long frame_fn(long n) {
    char buf[1000];
    long a = n * 3, b = n ^ 0x55; /* live across the call: callee-saved registers, pushed */
    memset(buf, (int)n, sizeof buf);
    consume(buf, n);
    long s = 0;
    for (int i = 0; i < (int)sizeof buf; i++) s += buf[i] * i;
    return s + a * b;
}
__attribute__((noinline, optimize("no-omit-frame-pointer"))) long fp_fn(long n) {
    char buf[64];
    memset(buf, (int)n, sizeof buf);
    consume(buf, n);
    return buf[n & 63] + n;
}
int main(int argc, char **argv) {
    (void)argv;
    return (int)(frame_fn(argc) + fp_fn(argc));
}
"#;

    /// Compiles `C_SOURCE` with gcc into a temporary directory; returns the binary's path.
    fn build_c_program() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("stallscope-unwind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("prog.c");
        let bin = dir.join("prog");
        std::fs::write(&src, C_SOURCE).unwrap();
        let out = Command::new("gcc")
            .args(["-O2", "-fomit-frame-pointer", "-o"])
            .arg(&bin)
            .arg(&src)
            .output()
            .expect("gcc must be installed");
        assert!(
            out.status.success(),
            "gcc failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    }

    /// `(address, mnemonic, operands)` of the instructions of `func`, from `objdump -d`.
    fn disassemble(bin: &Path, func: &str) -> Vec<(u64, String, String)> {
        let out = Command::new("objdump")
            .args(["-d", "--no-show-raw-insn", "-M", "att"])
            .arg(bin)
            .output()
            .expect("objdump must be installed");
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let header = format!("<{func}>:");
        let mut insns = Vec::new();
        let mut inside = false;
        for line in text.lines() {
            if line.ends_with(&header) {
                inside = true;
                continue;
            }
            if !inside {
                continue;
            }
            if line.trim().is_empty() {
                break;
            }
            let Some((addr, rest)) = line.split_once(':') else {
                continue;
            };
            let addr = u64::from_str_radix(addr.trim(), 16).unwrap();
            let rest = rest.trim();
            let (mnemonic, operands) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            insns.push((addr, mnemonic.to_string(), operands.trim().to_string()));
        }
        assert!(!insns.is_empty(), "{func} not found in objdump output");
        insns
    }

    #[test]
    fn gcc_program_prologues() {
        let bin = build_c_program();
        let data = std::fs::read(&bin).unwrap();
        let table = compile_file(&bin).unwrap();
        assert_well_formed(&table);

        // frame_fn without frame pointer: CFA = rsp + 8 + pushes + sub, instruction by instruction.
        let (addr, _) = find_symbol(&data, "frame_fn").unwrap();
        let insns = disassemble(&bin, "frame_fn");
        assert_eq!(insns[0].0, addr);
        let mut expected = 8i32;
        let mut expected_rbp = 0i16;
        let mut saw_sub = false;
        for (i, (pc, mnemonic, operands)) in insns.iter().enumerate() {
            let r = table.lookup(*pc).unwrap();
            assert_eq!(
                (r.cfa_reg, r.cfa_offset, r.rbp_offset),
                (CFA_REG_SP, expected, expected_rbp),
                "at {pc:#x} ({mnemonic} {operands}), instruction {i}"
            );
            if saw_sub {
                break; // checked the row after the prologue
            }
            match mnemonic.as_str() {
                "push" => {
                    expected += 8;
                    if operands == "%rbp" {
                        expected_rbp = -(expected as i16);
                    }
                }
                "sub" if operands.ends_with(",%rsp") => {
                    let imm = operands
                        .trim_start_matches("$0x")
                        .split(',')
                        .next()
                        .unwrap();
                    expected += i32::from_str_radix(imm, 16).unwrap();
                    saw_sub = true;
                }
                "pop" | "call" | "ret" | "leave" | "jmp" => {
                    panic!("unexpected prologue instruction {mnemonic} {operands} in frame_fn")
                }
                _ if operands.ends_with("%rsp") => {
                    panic!("unexpected prologue instruction {mnemonic} {operands} in frame_fn")
                }
                _ => {} // does not move rsp
            }
        }
        assert!(saw_sub, "frame_fn has no `sub $N,%rsp`: {insns:?}");
        assert!(expected >= 1000 + 8);

        // fp_fn with frame pointer: after `push %rbp; mov %rsp,%rbp` the CFA is rbp + 16 and the
        // caller's rbp is saved at CFA - 16.
        let insns = disassemble(&bin, "fp_fn");
        let mov = insns
            .iter()
            .position(|(_, m, o)| m == "mov" && o == "%rsp,%rbp")
            .expect("fp_fn sets up a frame pointer");
        let push = insns
            .iter()
            .position(|(_, m, o)| m == "push" && o == "%rbp")
            .expect("fp_fn saves rbp");
        let (entry, _, _) = insns[0];
        assert_eq!(*table.lookup(entry).unwrap(), row(entry, CFA_REG_SP, 8, 0));
        for insn in &insns[push + 1..=mov] {
            let r = table.lookup(insn.0).unwrap();
            assert_eq!(
                (r.cfa_reg, r.cfa_offset, r.rbp_offset),
                (CFA_REG_SP, 16, -16),
                "{insn:?}"
            );
        }
        let r = table.lookup(insns[mov + 1].0).unwrap();
        assert_eq!(
            (r.cfa_reg, r.cfa_offset, r.rbp_offset),
            (CFA_REG_BP, 16, -16)
        );
        // After the epilogue (`leave` or `pop %rbp`) the ret runs with CFA = rsp + 8.
        let (ret, _, _) = insns.iter().rev().find(|(_, m, _)| m == "ret").unwrap();
        let r = table.lookup(*ret).unwrap();
        assert_eq!((r.cfa_reg, r.cfa_offset), (CFA_REG_SP, 8));

        // `_start` marks the end of the stack.
        let (start, _) = find_symbol(&data, "_start").unwrap();
        let r = table.lookup(start).unwrap();
        assert_eq!(r.flags & ROW_END_OF_STACK, ROW_END_OF_STACK, "{r:?}");
        std::fs::remove_dir_all(bin.parent().unwrap()).ok();
    }

    #[test]
    fn unwind_step_synthetic() {
        let mem: HashMap<u64, u64> = [
            (0x1000 - 8, 0xaaaa),
            (0x1000 - 16, 0x5555),
            (0x2008, 0xbbbb),
        ]
        .into_iter()
        .collect();
        let read = |addr| mem.get(&addr).copied();
        let regs = Regs {
            ip: 0x400,
            sp: 0x1000 - 40,
            bp: 0x2000,
        };
        // CFA = rsp + 40, rbp saved at CFA - 16.
        let r = row(0, CFA_REG_SP, 40, -16);
        assert_eq!(
            unwind_step(&r, regs, read),
            Some(Regs {
                ip: 0xaaaa,
                sp: 0x1000,
                bp: 0x5555
            })
        );
        // rbp unchanged.
        let r = row(0, CFA_REG_SP, 40, 0);
        assert_eq!(unwind_step(&r, regs, read).unwrap().bp, 0x2000);
        // CFA = rbp + 16 (frame pointer frame): return address at rbp + 8.
        let r = row(0, CFA_REG_BP, 16, 0);
        assert_eq!(
            unwind_step(&r, regs, read),
            Some(Regs {
                ip: 0xbbbb,
                sp: 0x2010,
                bp: 0x2000
            })
        );
        // No rule, end of stack, unreadable memory.
        assert_eq!(unwind_step(&none_row(0), regs, read), None);
        let end = UnwindRow {
            flags: ROW_END_OF_STACK,
            ..row(0, CFA_REG_SP, 40, 0)
        };
        assert_eq!(unwind_step(&end, regs, read), None);
        assert_eq!(unwind_step(&row(0, CFA_REG_SP, 48, 0), regs, read), None);
        // Frame-pointer fallback: [bp] = caller's bp, [bp + 8] = return address.
        let fp_mem: HashMap<u64, u64> = [(0x2000, 0x3000), (0x2008, 0xcccc)].into_iter().collect();
        assert_eq!(
            frame_pointer_step(regs, |a| fp_mem.get(&a).copied()),
            Some(Regs {
                ip: 0xcccc,
                sp: 0x2010,
                bp: 0x3000
            })
        );
        assert_eq!(
            frame_pointer_step(Regs { bp: 0, ..regs }, |a| fp_mem.get(&a).copied()),
            None
        );
    }

    #[test]
    fn unwind_stack_synthetic() {
        // f (no frame pointer, CFA = rsp + 24) called by g (frame pointer frame, FP fallback, no
        // row) called by h (end of stack). Return addresses end a function: h's call to g is the
        // last instruction of h's row range, so the lookup must use ip - 1.
        let table = UnwindTable {
            rows: finish_rows(
                vec![
                    row(0x100, CFA_REG_SP, 24, 0), // f: 0x100..0x180
                    UnwindRow {
                        flags: ROW_END_OF_STACK,
                        ..row(0x300, CFA_REG_SP, 8, 0) // h: 0x300..0x340
                    },
                    row(0x340, CFA_REG_SP, 8, 0), // next function after h
                ],
                &[0x180, 0x340, 0x380],
            ),
            stats: TableStats::default(),
        };
        let mem: HashMap<u64, u64> = [
            (0x1000 + 16, 0x205), // f's return address into g (at CFA - 8)
            (0x1100, 0),          // g's saved rbp
            (0x1108, 0x340),      // g's return address: right after h's last instruction
        ]
        .into_iter()
        .collect();
        let regs = Regs {
            ip: 0x110,
            sp: 0x1000,
            bp: 0x1100,
        };
        let frames = unwind_stack(
            regs,
            |pc| table.lookup(pc).copied(),
            |a| mem.get(&a).copied(),
            16,
        );
        assert_eq!(frames, vec![0x110, 0x205, 0x340]);
    }

    #[test]
    fn finish_rows_merges_and_marks_gaps() {
        let a = row(0x10, CFA_REG_SP, 8, 0);
        let b = row(0x14, CFA_REG_SP, 16, 0);
        let b_again = row(0x18, CFA_REG_SP, 16, 0);
        let c = row(0x1c, CFA_REG_SP, 8, 0);
        // FDE 2 starts exactly where FDE 1 ends (0x20) with the same rule as FDE 1's last row.
        let d = row(0x20, CFA_REG_SP, 8, 0);
        let e = row(0x24, CFA_REG_BP, 16, -16);
        // FDE 3 (listed first in .eh_frame) starts after a gap.
        let f = row(0x40, CFA_REG_SP, 8, 0);
        let out = finish_rows(vec![f, a, b, b_again, c, d, e], &[0x50, 0x20, 0x30]);
        assert_eq!(
            out,
            vec![a, b, c, e, none_row(0x30), f, none_row(0x50)],
            "no marker at 0x20 (FDE 2 starts there), rows merged"
        );

        // Identical gap markers merge; a real row wins over a marker at the same pc.
        let out = finish_rows(vec![row(0x10, CFA_REG_SP, 8, 0)], &[0x20, 0x20, 0x10]);
        assert_eq!(out, vec![row(0x10, CFA_REG_SP, 8, 0), none_row(0x20)]);

        // Overlapping FDEs: at the same pc the row listed first wins.
        let out = finish_rows(
            vec![row(0x10, CFA_REG_SP, 8, 0), row(0x10, CFA_REG_SP, 16, 0)],
            &[0x20],
        );
        assert_eq!(out, vec![row(0x10, CFA_REG_SP, 8, 0), none_row(0x20)]);
        assert!(finish_rows(vec![], &[]).is_empty());

        let table = UnwindTable {
            rows: vec![a, b, none_row(0x30)],
            stats: TableStats::default(),
        };
        assert_eq!(table.lookup(0x0f), None);
        assert_eq!(table.lookup(0x10), Some(&a));
        assert_eq!(table.lookup(0x13), Some(&a));
        assert_eq!(table.lookup(0x14), Some(&b));
        assert_eq!(table.lookup(0x2f), Some(&b));
        assert_eq!(table.lookup(0x1000), Some(&none_row(0x30)));
    }

    // ---- End to end: unwind this very thread with the tables and compare with libgcc's unwinder.

    unsafe extern "C" {
        fn _Unwind_Backtrace(
            trace: extern "C" fn(*mut std::ffi::c_void, *mut std::ffi::c_void) -> i32,
            arg: *mut std::ffi::c_void,
        ) -> i32;
        fn _Unwind_GetIP(ctx: *mut std::ffi::c_void) -> usize;
    }

    extern "C" fn collect_ip(ctx: *mut std::ffi::c_void, arg: *mut std::ffi::c_void) -> i32 {
        // SAFETY: `arg` is the `Vec<u64>` passed by `system_backtrace`; `ctx` comes from libgcc.
        let ips = unsafe { &mut *(arg as *mut Vec<u64>) };
        ips.push(unsafe { _Unwind_GetIP(ctx) } as u64);
        0
    }

    /// The mapped file and its `(start, end, file offset)` mappings, from /proc/self/maps.
    fn self_maps() -> Vec<(u64, u64, u64, String)> {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let path = f.get(5).filter(|p| p.starts_with('/'))?;
                let (start, end) = f[0].split_once('-')?;
                Some((
                    u64::from_str_radix(start, 16).ok()?,
                    u64::from_str_radix(end, 16).ok()?,
                    u64::from_str_radix(f[2], 16).ok()?,
                    path.to_string(),
                ))
            })
            .collect()
    }

    /// The `(p_offset, p_vaddr, p_filesz)` of the PT_LOAD segments of the ELF file at `path`.
    fn load_segments(path: &str) -> Vec<(u64, u64, u64)> {
        let file = File::open(path).unwrap();
        let mut ehdr = [0u8; 64];
        file.read_exact_at(&mut ehdr, 0).unwrap();
        let (phoff, phnum) = (u64_at(&ehdr, 0x20), u64::from(u16_at(&ehdr, 0x38)));
        let mut phdrs = vec![0u8; phnum as usize * 56];
        file.read_exact_at(&mut phdrs, phoff).unwrap();
        phdrs
            .chunks_exact(56)
            .filter(|ph| u32_at(ph, 0) == 1)
            .map(|ph| (u64_at(ph, 8), u64_at(ph, 16), u64_at(ph, 32)))
            .collect()
    }

    #[inline(never)]
    fn unwind_this_thread() -> (Vec<u64>, Vec<u64>) {
        let (ip, sp, bp): (u64, u64, u64);
        // SAFETY: only reads registers.
        unsafe {
            std::arch::asm!(
                "lea {ip}, [rip]",
                "mov {sp}, rsp",
                "mov {bp}, rbp",
                ip = out(reg) ip,
                sp = out(reg) sp,
                bp = out(reg) bp,
                options(nomem, nostack, preserves_flags),
            );
        }
        let mut theirs: Vec<u64> = Vec::new();
        // SAFETY: `collect_ip` only pushes to `theirs`.
        unsafe { _Unwind_Backtrace(collect_ip, &mut theirs as *mut Vec<u64> as *mut _) };

        // Our frames are still live: every caller's frame is above `sp` and untouched.
        let maps = self_maps();
        type Segments = Vec<(u64, u64, u64)>;
        let files: RefCell<HashMap<String, (Segments, UnwindTable)>> = RefCell::default();
        let lookup = |addr: u64| -> Option<UnwindRow> {
            let (start, _, offset, path) = maps.iter().find(|m| m.0 <= addr && addr < m.1)?;
            let mut files = files.borrow_mut();
            let (segments, table) = files.entry(path.clone()).or_insert_with(|| {
                let table = compile_file(Path::new(path)).unwrap();
                (load_segments(path), table)
            });
            // Process address → file offset → ELF virtual address.
            let off = addr - start + offset;
            let (p_offset, p_vaddr, _) = segments
                .iter()
                .find(|&&(o, _, size)| o <= off && off < o + size)?;
            table.lookup(off - p_offset + p_vaddr).copied()
        };
        let mem = File::open("/proc/self/mem").unwrap();
        let read = |addr: u64| {
            let mut buf = [0u8; 8];
            mem.read_exact_at(&mut buf, addr).ok()?;
            Some(u64::from_le_bytes(buf))
        };
        let ours = unwind_stack(Regs { ip, sp, bp }, lookup, read, 128);
        (ours, theirs)
    }

    #[test]
    fn unwinds_this_thread_like_libgcc() {
        let (ours, theirs) = unwind_this_thread();
        let show = |v: &[u64]| v.iter().map(|ip| format!("{ip:#x}")).collect::<Vec<_>>();
        eprintln!("ours:   {:?}\ntheirs: {:?}", show(&ours), show(&theirs));
        // Both start in `unwind_this_thread` (ours at the `lea`, libgcc's at its return address).
        assert!(ours.len() >= 5, "{:?}", show(&ours));
        // libgcc reports the outermost frame's undefined return address as a last frame of 0.
        let theirs = theirs.strip_suffix(&[0]).unwrap_or(&theirs);
        assert_eq!(
            ours[1..],
            theirs[1..],
            "ours {:?}\ntheirs {:?}",
            show(&ours),
            show(theirs)
        );
    }
}
