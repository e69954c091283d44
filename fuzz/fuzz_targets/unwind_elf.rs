//! `.eh_frame` → unwind rows on arbitrary ELF bytes: `compile_elf` and `code_ranges` must
//! return an error, never panic, and a table they build must keep its invariants. The rows
//! then drive the reference unwinder over the input bytes as stack memory.
#![no_main]

use agent::unwind::cfi::{Regs, code_ranges, compile_elf, unwind_stack};
use libfuzzer_sys::fuzz_target;

fn u64_at(data: &[u8], addr: u64) -> Option<u64> {
    let start = usize::try_from(addr).ok()?;
    let bytes = data.get(start..start.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

fuzz_target!(|data: &[u8]| {
    let table = compile_elf(data);
    let ranges = code_ranges(data);
    let Ok(table) = table else {
        return;
    };
    // Both read the same headers and the same `.eh_frame`.
    let ranges = ranges.expect("compile_elf succeeded but code_ranges failed");

    assert_eq!(table.stats.rows, table.rows.len());
    assert_eq!(
        table.stats.bytes,
        std::mem::size_of_val(table.rows.as_slice())
    );
    // Sorted, one row per pc, no two neighbours with the same rule.
    for w in table.rows.windows(2) {
        assert!(w[0].pc < w[1].pc, "rows out of order: {w:?}");
        let rule = |i: usize| (w[i].cfa_offset, w[i].rbp_offset, w[i].cfa_reg, w[i].flags);
        assert_ne!(rule(0), rule(1), "neighbours with the same rule: {w:?}");
    }
    for row in &table.rows {
        assert_eq!(table.lookup(row.pc).map(|r| r.pc), Some(row.pc));
    }
    // Every FDE code_ranges reports starts at or after some row and has a row at its end.
    assert!(ranges.fdes.len() <= table.stats.fdes + table.stats.fdes_failed);
    for &(start, end) in &ranges.fdes {
        assert!(start < end);
        assert!(
            table.lookup(start).is_some(),
            "no row for FDE at {start:#x}"
        );
        assert!(table.lookup(end).is_some(), "no row at FDE end {end:#x}");
    }
    for &(lo, hi) in &ranges.exec_sections {
        assert!(lo <= hi);
    }

    // The reference unwinder over these rows, the input as memory.
    let regs = Regs {
        ip: u64_at(data, 0x18).unwrap_or(0), // e_entry
        sp: data.len() as u64 / 2,
        bp: data.len() as u64 / 3,
    };
    let frames = unwind_stack(
        regs,
        |pc| table.lookup(pc).copied(),
        |addr| u64_at(data, addr),
        64,
    );
    assert!(frames.len() <= 64);
    assert!(frames.iter().all(|&ip| ip != 0));
});
