//! Member offsets of kernel structures, read from the running kernel's BTF ([`super::btf`]) and
//! handed to the programs as constants (aya-ebpf has no CO-RE relocations for Rust programs).

use std::sync::OnceLock;

use stallscope_common::KernelOffsets;
use stallscope_common::dump::DumpOffsets;

use super::btf::{BtfError, KernelBtf};
use crate::error::Error;

/// Offsets of kernel structures the programs need, from the running kernel's BTF.
pub fn scheduler_offsets() -> Result<KernelOffsets, Error> {
    let btf = KernelBtf::from_sys_fs()
        .map_err(|e| Error::bpf_load("reading the kernel BTF /sys/kernel/btf/vmlinux", e))?;
    // The task iterator's offsets from the same parse (the window's first look needs them).
    init_task_offsets(&btf);
    let off = |path: &[&str]| {
        btf.member_path_offset("task_struct", path)
            .map_err(|e| Error::bpf_load("a task_struct offset the scheduler programs need", e))
    };
    Ok(KernelOffsets {
        task_pid: off(&["pid"])?,
        task_tgid: off(&["tgid"])?,
        task_sum_exec_runtime: off(&["se", "sum_exec_runtime"])?,
        task_start_time: off(&["start_time"])?,
    })
}

/// `task_struct` member offsets of the running kernel for the task iterator (read from its BTF
/// once per agent process).
pub fn task_offsets() -> Result<DumpOffsets, Error> {
    OFFSETS
        .get_or_init(|| {
            let btf = KernelBtf::from_sys_fs().map_err(|e| e.to_string())?;
            offsets_from(&btf).map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| Error::bpf_load("the task_struct offsets thread dumps need", e))
}

static OFFSETS: OnceLock<Result<DumpOffsets, String>> = OnceLock::new();

/// Reads the task iterator's offsets from a BTF the caller parsed anyway (parsing the kernel's
/// BTF takes ~0.1 s and ~20 MiB), so that [`task_offsets`] does not parse it again.
pub fn init_task_offsets(btf: &KernelBtf) {
    OFFSETS.get_or_init(|| offsets_from(btf).map_err(|e| format!("{e} (needed for thread dumps)")));
}

fn offsets_from(btf: &KernelBtf) -> Result<DumpOffsets, BtfError> {
    let off = |path: &[&str]| btf.member_path_offset("task_struct", path);
    Ok(DumpOffsets {
        pid: off(&["pid"])?,
        tgid: off(&["tgid"])?,
        // Renamed from `state` in Linux 5.14.
        state: off(&["__state"]).or_else(|_| off(&["state"]))?,
        exit_state: off(&["exit_state"])?,
        flags: off(&["flags"])?,
        on_cpu: off(&["on_cpu"])?,
        on_rq: off(&["on_rq"])?,
        cpu: off(&["thread_info", "cpu"]).or_else(|_| off(&["cpu"]))?,
        comm: off(&["comm"])?,
        start_time: off(&["start_time"])?,
        nvcsw: off(&["nvcsw"])?,
        nivcsw: off(&["nivcsw"])?,
        pcount: off(&["sched_info", "pcount"])?,
        last_arrival: off(&["sched_info", "last_arrival"])?,
        last_queued: off(&["sched_info", "last_queued"])?,
        exec_start: off(&["se", "exec_start"])?,
        sum_exec_runtime: off(&["se", "sum_exec_runtime"])?,
        prev_sum_exec_runtime: off(&["se", "prev_sum_exec_runtime"])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_has_every_offset() {
        let btf = KernelBtf::from_sys_fs().expect("BTF is present on these machines");
        let o = offsets_from(&btf).unwrap();
        assert_eq!(o.tgid, o.pid + 4);
        assert!(o.last_queued > o.last_arrival, "{o:?}");
        assert!(o.prev_sum_exec_runtime > o.sum_exec_runtime, "{o:?}");
    }
}
