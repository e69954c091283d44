//! Errors a user can act on. Each message says what went wrong and what to do next.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),

    #[error(
        "stallscope needs root or the capabilities CAP_BPF and CAP_PERFMON (missing: \
         {missing}), and for other users' processes CAP_SYS_PTRACE, CAP_CHECKPOINT_RESTORE and \
         CAP_DAC_READ_SEARCH; run it with sudo"
    )]
    Privileges { missing: String },

    #[error(
        "no process with PID {0}; check the PID with `ps -p {0}` (a process that just exited has no PID left)"
    )]
    NoSuchProcess(u32),

    /// A group target (`--cgroup`, `--container`, `--pod`) with no process in it.
    #[error("no process is in {what} now: {hint}")]
    EmptyGroup { what: String, hint: &'static str },

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

    /// Loading a program (or what it needs: the kernel's BTF, offsets in it) failed. The
    /// cause is kept as the source and also said in the message, before what to check.
    #[error(
        "the kernel refused to load stallscope's BPF programs: {what}: {source}\n\
         Check that BPF is enabled (CONFIG_BPF_SYSCALL=y), that /proc/sys/kernel/unprivileged_bpf_disabled \
         is not blocking root, and rerun with -v for the verifier log"
    )]
    BpfLoad {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("attaching a probe failed: {what}: {source}")]
    Attach {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

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

    /// Something the agent itself failed at, where the user can do little but report it:
    /// what it was doing, and the error underneath as the source (`main` prints the chain).
    #[error("{context}")]
    Internal {
        context: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl Error {
    /// [`Error::Internal`]: `context` failed because of `source`.
    pub fn internal(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::Internal {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// [`Error::BpfLoad`]: loading `what` failed because of `source`.
    pub fn bpf_load(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::BpfLoad {
            what: what.into(),
            source: source.into(),
        }
    }

    /// [`Error::Attach`]: attaching `what` failed because of `source`.
    pub fn attach(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::Attach {
            what: what.into(),
            source: source.into(),
        }
    }

    /// [`Error::Internal`] with no error underneath (an inconsistency the agent found).
    pub fn bug(context: impl Into<String>) -> Error {
        Error::Internal {
            context: context.into(),
            source: None,
        }
    }

    /// The message with every cause under it that it does not already say, joined by ": ",
    /// as `main` prints it.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            let s = c.to_string();
            if !text.contains(&s) {
                text.push_str(": ");
                text.push_str(&s);
            }
            cause = c.source();
        }
        text
    }

    /// Whether this is a write to a closed pipe (`agent dump | head`): the reader left, and
    /// that ends the command quietly.
    pub fn is_broken_pipe(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(c) = cause {
            if c.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return true;
            }
            cause = c.source();
        }
        false
    }
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
    fn the_chain_says_each_cause_once_and_finds_a_broken_pipe() {
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "pipe closed");
        let e = Error::internal("writing to standard output", io);
        assert_eq!(e.chain(), "writing to standard output: pipe closed");
        assert!(e.is_broken_pipe());
        // A cause the message already quotes is not repeated.
        let e = Error::Output {
            path: "/x".into(),
            source: std::io::Error::other("disk full"),
        };
        assert_eq!(e.chain().matches("disk full").count(), 1, "{}", e.chain());
        assert!(!e.is_broken_pipe());
        assert_eq!(Error::bug("inconsistent").chain(), "inconsistent");
    }

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
