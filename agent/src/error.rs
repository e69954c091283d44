//! Errors a user can act on. Each message says what went wrong and what to do next.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),

    #[error(
        "stallscope needs root or the capabilities CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE \
         (missing: {missing}); run it with sudo"
    )]
    Privileges { missing: String },

    #[error(
        "no process with PID {0}; check the PID with `ps -p {0}` (a process that just exited has no PID left)"
    )]
    NoSuchProcess(u32),

    #[error(
        "process {pid} ({comm}) is a zombie: every thread of it has exited and its parent \
         (PID {ppid}) has not collected its exit status, so nothing runs in it to profile or \
         dump (only /proc/{pid}/stat and status remain); look at the parent: \
         stallscope dump --pid {ppid}"
    )]
    Zombie { pid: u32, comm: String, ppid: u32 },

    #[error(
        "PID {pid} ({comm}) is a kernel thread: it has no user space and no process to \
         profile; stallscope profiles user processes (for a kernel thread, /proc/{pid}/stack \
         shows where it waits)"
    )]
    KernelThread { pid: u32, comm: String },

    #[error(
        "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): stallscope needs a kernel \
         built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 2021 are)"
    )]
    NoBtf,

    #[error(
        "the kernel refused to load stallscope's BPF programs: {0}\n\
         Check that BPF is enabled (CONFIG_BPF_SYSCALL=y), that /proc/sys/kernel/unprivileged_bpf_disabled \
         is not blocking root, and rerun with -v for the verifier log"
    )]
    BpfLoad(String),

    #[error("attaching a probe failed: {0}")]
    Attach(String),

    #[error("cannot write output to {path}: {source}; choose another directory with -o")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write output to {path}: {reason}; choose another directory with -o")]
    OutputNotWritable { path: PathBuf, reason: String },

    #[error(
        "process {pid} exists but its /proc/{pid}/{file} cannot be read ({reason}): the agent \
         needs root with CAP_SYS_PTRACE, and a process of another user namespace or one that \
         made itself non-dumpable can still be out of reach"
    )]
    ProcDenied {
        pid: u32,
        file: &'static str,
        reason: String,
    },

    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// A failed read of `/proc/PID/<file>`: the process is gone ([`Error::NoSuchProcess`]),
    /// or still there and out of reach ([`Error::ProcDenied`]), not both called "no process".
    pub fn proc_read(pid: u32, file: &'static str, e: &std::io::Error) -> Error {
        let alive = std::path::Path::new(&format!("/proc/{pid}/stat")).exists();
        if !alive || e.kind() == std::io::ErrorKind::NotFound {
            return Error::NoSuchProcess(pid);
        }
        let reason = if e.kind() == std::io::ErrorKind::PermissionDenied {
            "permission denied".to_string()
        } else {
            e.to_string()
        };
        Error::ProcDenied { pid, file, reason }
    }

    /// Process exit code: 2 for usage errors, 1 for every other failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::KernelThread { .. } => 2,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_reads_tell_gone_from_denied() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let me = std::process::id();
        let e = Error::proc_read(me, "maps", &denied);
        assert!(matches!(e, Error::ProcDenied { .. }), "{e}");
        assert!(e.to_string().contains("exists but"), "{e}");
        // A PID above any pid_max is gone whatever the error says.
        let e = Error::proc_read(99_999_999, "maps", &denied);
        assert!(matches!(e, Error::NoSuchProcess(99_999_999)), "{e}");
        let gone = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(matches!(
            Error::proc_read(me, "maps", &gone),
            Error::NoSuchProcess(_)
        ));
    }
}
