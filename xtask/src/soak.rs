//! `cargo xtask soak --minutes N`: the soak test (tests/tests/soak.rs) for N minutes, its
//! figures written into RELIABILITY.md. (`cargo xtask test` skips it for now: see its `ignore`.)

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::util::{cargo, is_root, run, target_dir, workspace_root};

#[derive(Args)]
pub struct SoakArgs {
    /// How long the soak runs.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Don't run setup and the build first (use target/release/agent as it is).
    #[arg(long)]
    no_build: bool,
}

const BEGIN: &str = "<!-- soak figures: begin (cargo xtask soak writes this part) -->";
const END: &str = "<!-- soak figures: end -->";

pub fn soak(args: &SoakArgs) -> Result<()> {
    if !is_root() {
        bail!("the soak loads BPF programs: run `cargo xtask soak` as root");
    }
    if !(args.minutes > 0.0 && args.minutes <= 24.0 * 60.0) {
        bail!(
            "--minutes {}: want more than 0 and at most a day",
            args.minutes
        );
    }
    if !args.no_build {
        crate::setup::setup(crate::setup::Options { no_apt: false })?;
        crate::build()?;
    }
    let report = target_dir().join("soak-report.md");
    let _ = std::fs::remove_file(&report);
    println!("== soak, {} minutes", args.minutes);
    run(cargo()
        .env("STALLSCOPE_AGENT", target_dir().join("release/agent"))
        .env("STALLSCOPE_SOAK_MINUTES", args.minutes.to_string())
        .env("STALLSCOPE_SOAK_REPORT", &report)
        .args([
            "test",
            "--release",
            "-p",
            "stallscope-tests",
            "--test",
            "soak",
            "--",
            "--include-ignored",
            "--nocapture",
        ]))?;
    let figures = std::fs::read_to_string(&report).with_context(|| {
        format!(
            "the soak passed but wrote no figures to {}",
            report.display()
        )
    })?;
    crate::util::write_between_markers(
        &workspace_root().join("RELIABILITY.md"),
        BEGIN,
        END,
        &figures,
    )?;
    println!("{figures}\nwritten to RELIABILITY.md");
    Ok(())
}
