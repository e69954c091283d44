//! Thread dumps through the `dump_task` BPF task iterator: loads (verifies) only that program,
//! points it at one process and reads one [`DumpTask`] record per thread from the iterator's
//! file. The target is never stopped or signalled.

use std::io::Read as _;

use aya::programs::Iter;
use stallscope_common::dump::{DumpConfig, DumpOffsets, DumpTask};

use stallscope_common::maps;

use super::Collector;
use crate::error::Error;

const PROGRAM: &str = "dump_task";

impl Collector {
    /// Every thread of process `tgid`, as the kernel sees it right now. `offsets` are the
    /// `task_struct` member offsets of the running kernel ([`crate::dump::kernel_offsets`]).
    ///
    /// The first call verifies the iterator (milliseconds); later calls reuse it.
    pub fn dump_tasks(&mut self, tgid: u32, offsets: DumpOffsets) -> Result<Vec<DumpTask>, Error> {
        self.set_dump_config(DumpConfig {
            tgid,
            _pad: 0,
            offsets,
        })?;
        let result = self.read_dump_iterator();
        // Leave the iterator pointed at nothing, whatever happened.
        let reset = self.set_dump_config(DumpConfig::default());
        let records = result?;
        reset?;
        Ok(records)
    }

    fn set_dump_config(&mut self, config: DumpConfig) -> Result<(), Error> {
        let mut map = self.array_mut::<maps::DUMP_CONFIG>()?;
        map.set(0, config, 0)
            .map_err(|e| Error::internal("writing DUMP_CONFIG", e))
    }

    /// Loads (verifies) the task iterator unless it already is; [`Self::dump_tasks`] does it
    /// too, this is for callers that want the one-time cost paid ahead of a dump.
    pub fn load_dump_iterator(&mut self) -> Result<(), Error> {
        self.dump_program().map(|_| ())
    }

    fn dump_program(&mut self) -> Result<&mut Iter, Error> {
        self.read_btf()?;
        let btf = self.btf.as_ref().expect("set above");
        let prog: &mut Iter = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| Error::bug(format!("{PROGRAM} program missing")))?
            .try_into()
            .map_err(|e| Error::internal(PROGRAM, e))?;
        if prog.fd().is_err() {
            prog.load("task", btf)
                .map_err(|e| Error::bpf_load(format!("{PROGRAM} (task iterator)"), e))?;
        }
        Ok(prog)
    }

    fn read_dump_iterator(&mut self) -> Result<Vec<DumpTask>, Error> {
        let prog = self.dump_program()?;
        let link_id = prog
            .attach()
            .map_err(|e| Error::attach("task iterator", e))?;
        let link = prog
            .take_link(link_id)
            .map_err(|e| Error::attach("task iterator link", e))?;
        let mut file = link
            .into_file()
            .map_err(|e| Error::attach("opening the task iterator", e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| Error::internal("reading the task iterator", e))?;
        parse_records(&bytes)
    }
}

/// Splits the iterator's output into records.
fn parse_records(bytes: &[u8]) -> Result<Vec<DumpTask>, Error> {
    let size = std::mem::size_of::<DumpTask>();
    if !bytes.len().is_multiple_of(size) {
        return Err(Error::bug(format!(
            "the task iterator wrote {} bytes, not a multiple of its {size}-byte records \
             (agent and BPF object out of sync?)",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(size)
        // SAFETY: `DumpTask` is plain `#[repr(C)]` integers (any bit pattern is valid) and the
        // chunk holds exactly one; `read_unaligned` copes with the Vec's alignment.
        .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr() as *const DumpTask) })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_must_fill_the_stream() {
        let size = std::mem::size_of::<DumpTask>();
        let mut bytes = vec![0u8; 2 * size];
        bytes[0] = 42;
        bytes[size] = 43;
        let recs = parse_records(&bytes).unwrap();
        assert_eq!(recs.iter().map(|r| r.tid).collect::<Vec<_>>(), vec![42, 43]);
        assert!(parse_records(&bytes[1..]).is_err());
        assert!(parse_records(&[]).unwrap().is_empty());
    }
}
