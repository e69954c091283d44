//! Function names and file:line of a Go binary from its `.gopclntab`, the table the Go runtime
//! itself symbolizes tracebacks with. Release builds and distribution packages are stripped
//! (`-ldflags=-s -w`: no `.symtab`, no DWARF), but every Go binary keeps this table, so their
//! frames get names where blazesym finds none. Part of the symbolize stage; pure (a file's
//! bytes in, lines out), unit-tested on a Go binary built for the test.
//!
//! The layout is Go 1.18's and later (`runtime/symtab.go`, `pcHeader`, `_func`): header magic
//! `0xfffffff0` (1.18, 1.19) or `0xfffffff1` (1.20 and later, whose `_func` adds `startLine`
//! after the fields read here).
//! Inlined frames (the `InlTree` funcdata) are not expanded: a frame is named by the function
//! whose code it is in.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::unwind::tables::Segment;

const MAGIC_118: u32 = 0xffff_fff0;
const MAGIC_120: u32 = 0xffff_fff1;

/// A parsed `.gopclntab`, with what is needed to turn file offsets into its addresses.
pub struct PcLnTab {
    data: Vec<u8>,
    min_lc: u64,
    nfunc: usize,
    text_start: u64,
    funcname: usize,
    cutab: usize,
    filetab: usize,
    pctab: usize,
    functab: usize,
    /// Where `_func.funcID` is: after `cuOffset` (Go 1.18, 1.19), after `startLine` (1.20+).
    func_id_at: usize,
    /// The funcID of the compiler's wrappers in this binary (their number moves between
    /// versions), found once.
    wrapper_id: std::sync::OnceLock<Option<u8>>,
    /// The loadable segments, to turn a file offset into an address.
    segments: Vec<Segment>,
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

fn cstr(b: &[u8], o: usize) -> Option<String> {
    let s = b.get(o..)?;
    let end = s.iter().position(|&c| c == 0)?;
    Some(String::from_utf8_lossy(&s[..end]).into_owned())
}

/// An unsigned LEB128 varint at `*p`, advancing it.
fn uvarint(b: &[u8], p: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = *b.get(*p)?;
        *p += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

impl PcLnTab {
    /// The table of the ELF file at `path`; `None` when it is not a Go binary of a layout
    /// this reads.
    pub fn open(path: &Path) -> Option<PcLnTab> {
        let (file, sections) = crate::unwind::cfi::elf_sections(path).ok()?;
        let s = sections.iter().find(|s| s.name == ".gopclntab")?;
        let mut data = vec![0u8; s.size as usize];
        file.read_exact_at(&mut data, s.offset).ok()?;
        Self::parse(data, crate::unwind::tables::load_segments(path).ok()?)
    }

    fn parse(data: Vec<u8>, segments: Vec<Segment>) -> Option<PcLnTab> {
        let magic = u32_at(&data, 0)?;
        if magic != MAGIC_118 && magic != MAGIC_120 {
            return None;
        }
        if data.get(7) != Some(&8) {
            return None;
        }
        let word = |i: usize| u64_at(&data, 8 + 8 * i).map(|v| v as usize);
        let t = PcLnTab {
            min_lc: u64::from(*data.get(6)?).max(1),
            nfunc: word(0)?,
            text_start: word(2)? as u64,
            funcname: word(3)?,
            cutab: word(4)?,
            filetab: word(5)?,
            pctab: word(6)?,
            functab: word(7)?,
            func_id_at: if magic == MAGIC_118 { 36 } else { 40 },
            wrapper_id: std::sync::OnceLock::new(),
            segments,
            data,
        };
        (t.functab < t.data.len()).then_some(t)
    }

    /// The virtual address at file offset `off` (through the loadable segments).
    pub fn vaddr(&self, off: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| off >= s.offset && off < s.offset + s.filesz)
            .map(|s| s.vaddr + (off - s.offset))
    }

    /// `(entry offset from textStart, _func offset)` of functab entry `i`.
    fn ftab(&self, i: usize) -> Option<(u32, u32)> {
        let o = self.functab + 8 * i;
        Some((u32_at(&self.data, o)?, u32_at(&self.data, o + 4)?))
    }

    /// The value of the pc-value table at `off` (relative to pctab) for `pc`, in a function
    /// starting at `entry`.
    fn pcvalue(&self, off: u32, entry: u64, pc: u64) -> Option<i64> {
        if off == 0 {
            return None;
        }
        let mut p = self.pctab + off as usize;
        let (mut val, mut at) = (-1i64, entry);
        let mut first = true;
        loop {
            let uv = uvarint(&self.data, &mut p)?;
            if uv == 0 && !first {
                return None;
            }
            first = false;
            let delta = ((uv >> 1) as i64) ^ -((uv & 1) as i64);
            val = val.wrapping_add(delta);
            at += uvarint(&self.data, &mut p)? * self.min_lc;
            if pc < at {
                return Some(val);
            }
        }
    }

    /// The functab entry of the function holding virtual address `pc`.
    fn func_at(&self, pc: u64) -> Option<(u32, u32)> {
        let rel = pc.checked_sub(self.text_start)?;
        if self.nfunc == 0 || rel >= u64::from(self.ftab(self.nfunc)?.0) {
            return None;
        }
        // The last entry at or below `rel`.
        let (mut lo, mut hi) = (0usize, self.nfunc);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if u64::from(self.ftab(mid)?.0) <= rel {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        self.ftab(lo)
    }

    /// The funcID and name of functab entry `i`'s function.
    fn func_id_and_name(&self, func_off: u32) -> Option<(u8, String)> {
        let f = self.functab + func_off as usize;
        let id = *self.data.get(f + self.func_id_at)?;
        let name = cstr(
            &self.data,
            self.funcname + u32_at(&self.data, f + 4)? as usize,
        )?;
        Some((id, name))
    }

    /// The wrappers' funcID. Its number moves between versions (21 in Go 1.19, 23 in 1.25),
    /// but from 1.18 to 1.25 it follows `systemstack_switch`'s, which every binary has: one
    /// more than that.
    fn wrapper_id(&self) -> Option<u8> {
        *self.wrapper_id.get_or_init(|| {
            (0..self.nfunc).find_map(|i| {
                let (_, func_off) = self.ftab(i)?;
                let (id, name) = self.func_id_and_name(func_off)?;
                (name == "runtime.systemstack_switch" || name == "runtime.systemstack_switch.abi0")
                    .then_some(id)
                    .filter(|id| *id != 0)
                    .and_then(|id| id.checked_add(1))
            })
        })
    }

    /// Whether the function holding `pc` is a wrapper the compiler made (a `go` or `defer`
    /// statement's, a method value's): Go's tracebacks leave those out.
    pub fn is_wrapper(&self, pc: u64) -> bool {
        let Some((_, func_off)) = self.func_at(pc) else {
            return false;
        };
        let id = self.func_id_and_name(func_off).map(|(id, _)| id);
        id.is_some() && id == self.wrapper_id()
    }

    /// The entry address of the function holding virtual address `pc` (Go's dumps print a
    /// frame's `+0x` offset from it).
    pub fn entry(&self, pc: u64) -> Option<u64> {
        self.func_at(pc)
            .map(|(entry_off, _)| self.text_start + u64::from(entry_off))
    }

    /// The function, file and line of virtual address `pc`.
    pub fn lookup(&self, pc: u64) -> Option<(String, Option<String>, Option<u32>)> {
        let (entry_off, func_off) = self.func_at(pc)?;
        let f = self.functab + func_off as usize;
        let field = |i: usize| u32_at(&self.data, f + 4 * i);
        let name = cstr(&self.data, self.funcname + field(1)? as usize)?;
        let entry = self.text_start + u64::from(entry_off);
        let (pcfile, pcln, cu) = (field(5)?, field(6)?, field(8)?);
        let line = self
            .pcvalue(pcln, entry, pc)
            .and_then(|l| u32::try_from(l).ok());
        let file = self.pcvalue(pcfile, entry, pc).and_then(|i| {
            let i = usize::try_from(i).ok()?;
            let off = u32_at(&self.data, self.cutab + 4 * (cu as usize + i))?;
            (off != u32::MAX).then(|| cstr(&self.data, self.filetab + off as usize))?
        });
        Some((name, file, line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_zigzag_deltas_decode_as_go_writes_them() {
        let b = [0x96, 0x01, 0x05];
        let mut p = 0;
        assert_eq!(uvarint(&b, &mut p), Some(150));
        assert_eq!(uvarint(&b, &mut p), Some(5));
        assert_eq!(uvarint(&b, &mut p), None, "past the end");
    }

    /// A hand-made table: two functions, a pc-line table for the first.
    #[test]
    fn a_pc_finds_its_function_file_and_line() {
        // Header: magic, pad, pad, minLC 1, ptrSize 8; then nfunc, nfiles, textStart,
        // funcnameOffset, cuOffset, filetabOffset, pctabOffset, funcdataOffset.
        let mut d = Vec::new();
        d.extend_from_slice(&MAGIC_120.to_le_bytes());
        d.extend_from_slice(&[0, 0, 1, 8]);
        let words_at = d.len();
        d.resize(words_at + 8 * 8, 0);
        let funcname = d.len();
        d.extend_from_slice(b"main.f\0main.g\0");
        let cutab = d.len();
        d.extend_from_slice(&0u32.to_le_bytes()); // file 0 of CU 0 at filetab + 0
        let filetab = d.len();
        d.extend_from_slice(b"/src/a.go\0");
        let pctab = d.len();
        d.push(0); // offset 0 means "no table"
        // Line table of main.f: line 10 for pc [0x1000, 0x1010), 12 for [0x1010, 0x1020).
        // Start at -1: +11 -> 10 (zigzag 22), pc +0x10; +2 -> 12 (zigzag 4), pc +0x10; end.
        let lines_off = d.len() - pctab;
        d.extend_from_slice(&[22, 0x10, 4, 0x10, 0]);
        // File table: index 0 over the whole function (-1 +1: zigzag 2).
        let files_off = d.len() - pctab;
        d.extend_from_slice(&[2, 0x20, 0]);
        let functab = d.len();
        // functab: (entry 0, func at 24), (entry 0x20, func at 24 + 48), end 0x40.
        for (e, fo) in [(0u32, 24u32), (0x20, 72), (0x40, 0)] {
            d.extend_from_slice(&e.to_le_bytes());
            d.extend_from_slice(&fo.to_le_bytes());
        }
        let func = |name: u32, pcfile: u32, pcln: u32| {
            let mut f = vec![0u8; 48];
            f[4..8].copy_from_slice(&name.to_le_bytes());
            f[20..24].copy_from_slice(&pcfile.to_le_bytes());
            f[24..28].copy_from_slice(&pcln.to_le_bytes());
            f
        };
        d.extend(func(0, files_off as u32, lines_off as u32));
        d.extend(func(7, 0, 0));
        for (i, v) in [
            2u64,
            1,
            0x1000,
            funcname as u64,
            cutab as u64,
            filetab as u64,
        ]
        .into_iter()
        .chain([pctab as u64, functab as u64])
        .enumerate()
        {
            d[words_at + 8 * i..words_at + 8 * i + 8].copy_from_slice(&v.to_le_bytes());
        }
        let text = Segment {
            offset: 0,
            vaddr: 0,
            filesz: 0x10000,
            memsz: 0x10000,
        };
        let t = PcLnTab::parse(d, vec![text]).expect("parses");
        assert_eq!(
            t.lookup(0x1004),
            Some(("main.f".into(), Some("/src/a.go".into()), Some(10)))
        );
        assert_eq!(t.lookup(0x1018).unwrap().2, Some(12));
        assert_eq!(t.lookup(0x1030), Some(("main.g".into(), None, None)));
        assert_eq!(t.lookup(0x1040), None, "past the last function");
        assert_eq!(t.lookup(0xfff), None, "before the text");
        assert_eq!(t.vaddr(0x1234), Some(0x1234));
    }
}
