//! Children that never outlive what started them.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Has the kernel send `sig` to the child `cmd` starts when the thread that started it dies,
/// so a crashed test or an interrupted bench leaves nothing running. A failed `prctl` fails
/// the spawn.
pub fn die_with_parent(cmd: &mut Command, sig: libc::c_int) -> &mut Command {
    // SAFETY: prctl is async-signal-safe and the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// [`die_with_parent`] with SIGKILL, in a process group of its own: a terminal's Ctrl-C then
/// reaches only the parent, which stops its children in its own time.
pub fn detached(cmd: &mut Command) -> &mut Command {
    cmd.process_group(0);
    die_with_parent(cmd, libc::SIGKILL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detached_child_runs_in_a_group_of_its_own() {
        let mut child = detached(Command::new("sleep").arg("5"))
            .spawn()
            .expect("sleep");
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
        // After "pid (comm) state ppid": the process group.
        let pgrp: u32 = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .nth(2)
            .unwrap()
            .parse()
            .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(pgrp, child.id(), "its process group is its own pid: {stat}");
    }
}
