//! Running commands: print each one before it runs, name it when it fails.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{Context, Result, bail};

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The target directory xtask builds into. Always `<workspace>/target`, whatever
/// `CARGO_TARGET_DIR` xtask itself was built with, so `target/release/agent` is where the README
/// and the tests expect it.
pub fn target_dir() -> PathBuf {
    workspace_root().join("target")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `cargo` through rustup's proxy (so `+nightly` works), run from the workspace root, building
/// into `<workspace>/target`.
pub fn cargo() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(workspace_root());
    c.env("CARGO_TARGET_DIR", target_dir());
    c
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A command as a shell line: `K=V program args`. `CARGO_TARGET_DIR` is left out: every cargo
/// command xtask runs sets it to `<workspace>/target`, printing it each time is noise.
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (k, v) in cmd.get_envs() {
        if k == "CARGO_TARGET_DIR" {
            continue;
        }
        if let Some(v) = v {
            parts.push(format!("{}={}", k.to_string_lossy(), quote(v)));
        }
    }
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

/// Prints the command, runs it with inherited stdio, and fails naming it unless it succeeds.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    println!("$ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    check(status, &shown)
}

pub fn check(status: ExitStatus, shown: &str) -> Result<()> {
    if status.success() {
        Ok(())
    } else {
        bail!("command failed ({status}): {shown}")
    }
}

/// Runs a probe quietly and returns its stdout, or `None` if it could not run or failed.
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Looks a program up in `PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The last SIGINT/SIGTERM xtask received (0: none). The children of `demo` and `bench` run in
/// their own process groups, so a terminal Ctrl-C reaches only xtask, which then stops (and
/// forwards it) in its own time.
pub static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

/// Records SIGINT and SIGTERM in [`SIGNAL`] instead of dying on them.
pub fn install_signal_handlers() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

/// Replaces the part of the file at `path` between the lines `begin` and `end` (markers kept)
/// with "Run of DATE:" and `body`: figures a task writes into a document that is otherwise
/// edited by hand.
pub fn write_between_markers(path: &Path, begin: &str, end: &str, body: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (Some(b), Some(e)) = (text.find(begin), text.find(end)) else {
        bail!("{} has no markers {begin} ... {end}", path.display());
    };
    if e < b {
        bail!(
            "{}: the markers {begin} ... {end} are out of order",
            path.display()
        );
    }
    let date = Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let new = format!(
        "{}{begin}\nRun of {date}:\n\n{}\n{}",
        &text[..b],
        body.trim_end(),
        &text[e..]
    );
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_replace_only_what_is_between_the_markers() {
        let path = std::env::temp_dir().join(format!("xtask-markers-{}.md", std::process::id()));
        std::fs::write(&path, "intro\n<!-- b -->\nold figures\n<!-- e -->\noutro\n").unwrap();
        write_between_markers(&path, "<!-- b -->", "<!-- e -->", "| new |\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("intro\n<!-- b -->\nRun of "), "{text}");
        assert!(
            text.ends_with(":\n\n| new |\n<!-- e -->\noutro\n"),
            "{text}"
        );
        assert!(!text.contains("old figures"));
        // Markers missing or out of order: an error, the file untouched.
        std::fs::write(&path, "<!-- e -->\n<!-- b -->\n").unwrap();
        assert!(write_between_markers(&path, "<!-- b -->", "<!-- e -->", "x").is_err());
        assert!(write_between_markers(&path, "<!-- nope -->", "<!-- e -->", "x").is_err());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "<!-- e -->\n<!-- b -->\n"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn display_quotes_what_the_shell_would_split() {
        let mut c = Command::new("cargo");
        c.args([
            "install",
            "bpf-linker",
            "--features",
            "llvm-22,no-llvm-linking",
        ]);
        c.env("RUSTFLAGS", "-L /x -l dylib=LLVM-22");
        c.env("CARGO_TARGET_DIR", "/t");
        assert_eq!(
            display(&c),
            "RUSTFLAGS='-L /x -l dylib=LLVM-22' cargo install bpf-linker --features llvm-22,no-llvm-linking"
        );
    }
}
