//! Builds the BPF programs (ebpf/programs) with the nightly toolchain through aya-build and
//! leaves the object in OUT_DIR, where `collect` embeds it.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow, bail};

const SETUP_HINT: &str = "run `cargo xtask setup` (installs rust-src for nightly and a bpf-linker \
                          built against nightly's LLVM), then build again";

fn check_toolchain() -> anyhow::Result<()> {
    if which::which("bpf-linker").is_err() {
        bail!("bpf-linker is not installed: {SETUP_HINT}");
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .context("running `rustup run nightly rustc`")?;
    if !sysroot.status.success() {
        bail!("the nightly Rust toolchain is missing: {SETUP_HINT}");
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        bail!("rust-src is not installed for nightly: {SETUP_HINT}");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    if std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v == "true") {
        // Lets tooling build the agent without the BPF toolchain; the agent then refuses to
        // load and says why.
        std::fs::write(out_dir.join("stallscope"), [])?;
        return Ok(());
    }
    if let Err(e) = check_toolchain() {
        println!("cargo:warning={e}");
        return Err(e);
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let pkg = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "stallscope-ebpf")
        .ok_or_else(|| anyhow!("stallscope-ebpf package not found in the workspace"))?;
    let root = pkg
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", pkg.manifest_path))?;
    // aya-build forwards every line the nested cargo prints to stderr as a cargo warning; its
    // "Compiling ..." progress is noise (compiler errors still arrive through its JSON output).
    // SAFETY: the build script is single-threaded here.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: pkg.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .map_err(|e| {
        anyhow!(
            "building the BPF programs failed: {e:#}\nIf the toolchain is incomplete, {SETUP_HINT}"
        )
    })
}
