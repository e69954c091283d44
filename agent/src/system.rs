//! Pre-flight checks of the machine and the target, run before anything is loaded, so that a
//! missing privilege or a wrong PID gets a clear message instead of a BPF error.

use std::path::Path;

use crate::error::Error;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The capabilities the agent needs when it runs without root's full set (a DaemonSet,
/// `setpriv`), each with why; `deploy/stallscope.yaml` adds exactly these (a root test checks
/// both, and that each is needed).
pub const NODE_CAPABILITIES: &[(&str, &str)] = &[
    ("CAP_BPF", "load the BPF programs and create their maps"),
    (
        "CAP_PERFMON",
        "open the CPU sampler's perf events and attach the scheduler tracepoints",
    ),
    (
        "CAP_SYS_PTRACE",
        "read other users' /proc/PID/maps, mem, root and task syscall files (with \
         CAP_DAC_READ_SEARCH for mem: it is its owner's, mode 0600)",
    ),
    (
        "CAP_CHECKPOINT_RESTORE",
        "open /proc/PID/map_files/: a mapped file deleted since (a binary replaced while it \
         runs) is only reachable there; other files are opened through /proc/PID/root",
    ),
    (
        "CAP_DAC_READ_SEARCH",
        "read binaries and debug files other users' processes map, whatever their file modes",
    ),
];

/// Parses the effective capability mask from the text of /proc/self/status.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Names of the capabilities missing from `cap_eff` for loading and attaching our programs.
pub fn missing_capabilities(cap_eff: u64) -> Vec<&'static str> {
    let has = |c: u32| cap_eff & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_SYS_ADMIN) {
        if !has(CAP_BPF) {
            missing.push("CAP_BPF");
        }
        if !has(CAP_PERFMON) {
            missing.push("CAP_PERFMON");
        }
    }
    missing
}

/// Checks this process may load BPF programs and open perf events.
pub fn check_privileges() -> Result<(), Error> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::internal("reading /proc/self/status", e))?;
    let cap_eff = parse_cap_eff(&status).unwrap_or(0);
    let missing = missing_capabilities(cap_eff);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Privileges {
            missing: missing.join(", "),
        })
    }
}

/// Checks the kernel exposes BTF (needed for CO-RE and BTF tracepoints).
pub fn check_btf() -> Result<(), Error> {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Ok(())
    } else {
        Err(Error::NoBtf)
    }
}

/// Facts about a live process read from /proc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub comm: String,
    /// Start time in clock ticks after boot (field 22 of /proc/PID/stat): with the PID, it
    /// identifies the process even when the PID is reused.
    pub start_ticks: u64,
    /// Thread group id: equal to `pid` for a process, differs for a thread id.
    pub tgid: u32,
}

/// Parses /proc/PID/stat text into (comm, state, start_ticks). The comm may contain spaces and
/// parentheses, so it is delimited by the first '(' and the last ')'.
pub fn parse_stat(text: &str) -> Option<(String, char, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); field 22 (starttime) is rest[19].
    let state = rest.first()?.chars().next()?;
    let start = rest.get(19)?.parse().ok()?;
    Some((comm, state, start))
}

/// `PF_KTHREAD` in the flags of /proc/PID/stat (field 9).
const PF_KTHREAD: u64 = 0x0020_0000;

/// The flags field (9) of /proc/PID/stat text.
pub fn stat_flags(text: &str) -> Option<u64> {
    let close = text.rfind(')')?;
    text.get(close + 1..)?
        .split_whitespace()
        .nth(6)?
        .parse()
        .ok()
}

/// A numeric `name:\tvalue` field of /proc text: /proc/PID/status (`Tgid:`, `PPid:`), a BPF
/// program's /proc/PID/fdinfo/FD (`recursion_misses:`).
pub fn status_field<T: std::str::FromStr>(status: &str, name: &str) -> Option<T> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether some thread of process `pid` still runs (not a zombie): a process whose main
/// thread exited shows the main thread as a zombie while the others run on.
pub fn any_live_thread(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).any(|e| {
        let tid = e.file_name();
        std::fs::read_to_string(format!("/proc/{pid}/task/{}/stat", tid.to_string_lossy()))
            .ok()
            .and_then(|s| parse_stat(&s))
            .is_some_and(|(_, state, _)| state != 'Z' && state != 'X')
    })
}

/// Reads a process's identity: `NoSuchProcess`, `Zombie` (no thread of it runs) and
/// `KernelThread` say why there is nothing to profile.
pub fn process_info(pid: u32) -> Result<ProcessInfo, Error> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|_| Error::NoSuchProcess(pid))?;
    let (comm, state, start_ticks) = parse_stat(&stat).ok_or(Error::NoSuchProcess(pid))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kthread = status_field::<u32>(&status, "Kthread") == Some(1)
        || stat_flags(&stat).is_some_and(|f| f & PF_KTHREAD != 0);
    if kthread {
        return Err(Error::KernelThread { pid, comm });
    }
    if (state == 'Z' || state == 'X') && !any_live_thread(pid) {
        return Err(Error::Zombie {
            pid,
            comm,
            ppid: status_field(&status, "PPid").unwrap_or(0),
        });
    }
    let tgid = status_field(&status, "Tgid").unwrap_or(pid);
    Ok(ProcessInfo {
        pid,
        comm,
        start_ticks,
        tgid,
    })
}

/// True while the process identified by `info` lives (same PID and start time, and some
/// thread of it not a zombie).
pub fn is_alive(info: &ProcessInfo) -> bool {
    match std::fs::read_to_string(format!("/proc/{}/stat", info.pid)) {
        Ok(stat) => match parse_stat(&stat) {
            Some((_, state, start)) => {
                start == info.start_ticks
                    && ((state != 'Z' && state != 'X') || any_live_thread(info.pid))
            }
            None => false,
        },
        Err(_) => false,
    }
}

/// Magic numbers (`statfs` f_type) of pseudo-filesystems no output can go to.
const PSEUDO_FS: [(i64, &str); 5] = [
    (0x9fa0, "proc"),
    (0x6265_6572, "sysfs"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x2762_2c78_u32 as i64, "cgroup2"),
];

/// Bytes an unprivileged writer could still use on the filesystem of `path` (statvfs), or
/// `None` when it can't be read.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: a plain C struct of integers, valid when zeroed.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs(3) on a NUL-terminated path, writing into a zeroed struct.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Why files cannot be written in `dir`, given the error creating one there: the filesystem
/// it is on when that says more than the error (a pseudo-filesystem, read-only, full).
pub fn unwritable_reason(dir: &Path, e: &std::io::Error) -> String {
    // SAFETY: a plain C struct of integers, valid when zeroed.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap_or_default();
    // SAFETY: statfs(2) on a NUL-terminated path, writing into a zeroed struct.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0
        && let Some((_, fs)) = PSEUDO_FS.iter().find(|(m, _)| *m == st.f_type as i64)
    {
        return format!(
            "it is on {fs}, a kernel pseudo-filesystem where files cannot be created ({e})"
        );
    }
    if e.raw_os_error() == Some(libc::EROFS) {
        return format!("its filesystem is mounted read-only ({e})");
    }
    if e.raw_os_error() == Some(libc::ENOSPC) {
        return format!("its filesystem is full ({e})");
    }
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => format!("permission denied ({e})"),
        _ => format!("it is not writable ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_program_fdinfo_field() {
        let info = "prog_type:\t26\nprog_jited:\t1\nrun_cnt:\t0\nrecursion_misses:\t17\nverified_insns:\t812\n";
        assert_eq!(status_field::<u64>(info, "recursion_misses"), Some(17));
        assert_eq!(status_field::<u64>(info, "run_cnt"), Some(0));
        // A field name that only prefixes another is not that field.
        assert_eq!(status_field::<u64>(info, "run"), None);
        assert_eq!(status_field::<u64>(info, "memlock"), None);
    }

    #[test]
    fn free_bytes_of_a_real_filesystem() {
        let dir = std::env::temp_dir();
        assert!(free_bytes(&dir).is_some_and(|b| b > 0), "{}", dir.display());
        assert_eq!(free_bytes(Path::new("/no/such/dir/anywhere")), None);
    }

    #[test]
    fn stat_flags_and_status_fields() {
        let kthreadd = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 9 0 0";
        assert_eq!(stat_flags(kthreadd), Some(2_129_984));
        assert_ne!(stat_flags(kthreadd).unwrap() & PF_KTHREAD, 0);
        let odd = "7 (a) b) S 1 7 7 0 -1 4194560 1 0";
        assert_eq!(stat_flags(odd), Some(4_194_560));
        let status = "Name:\tx\nTgid:\t42\nPPid:\t7\nKthread:\t0\n";
        assert_eq!(status_field::<u32>(status, "Tgid"), Some(42));
        assert_eq!(status_field::<u32>(status, "PPid"), Some(7));
        assert_eq!(status_field::<u32>(status, "Kthread"), Some(0));
        assert_eq!(status_field::<u32>(status, "Pid"), None);
    }

    #[test]
    fn an_unwritable_proc_directory_is_named_as_such() {
        let e = std::io::Error::from_raw_os_error(libc::ENOENT);
        let r = unwritable_reason(Path::new("/proc"), &e);
        assert!(r.contains("proc, a kernel pseudo-filesystem"), "{r}");
    }

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        let text = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 2 0 123456 1000 100";
        let (comm, state, start) = parse_stat(text).unwrap();
        assert_eq!(comm, "my (odd) prog");
        assert_eq!(state, 'S');
        assert_eq!(start, 123456);
    }

    #[test]
    fn capabilities() {
        let root = parse_cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n").unwrap();
        assert!(missing_capabilities(root).is_empty());
        assert_eq!(missing_capabilities(0), vec!["CAP_BPF", "CAP_PERFMON"]);
        // No CAP_SYS_RESOURCE: since Linux 5.11 BPF memory is charged to the memory cgroup,
        // not RLIMIT_MEMLOCK (this machine's root does not have it, and the agent works).
        let bpf_perfmon = (1 << CAP_BPF) | (1 << CAP_PERFMON);
        assert!(missing_capabilities(bpf_perfmon).is_empty());
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
    }
}
