//! Stallscope's developer tasks: `cargo xtask setup | build | demo | test | lint | bench`.
//!
//! Every command is printed before it runs; a failure names the command that failed and exits 1.

mod bench;
mod demo;
mod fuzz;
mod setup;
mod soak;
mod util;

use std::process::{Command, ExitCode};

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

use util::{cargo, is_root, run, target_dir};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Stallscope's developer tasks",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Args, Clone, Copy)]
struct SetupArgs {
    /// Don't check or install Debian packages.
    #[arg(long)]
    no_apt: bool,
}

impl SetupArgs {
    fn options(self) -> setup::Options {
        setup::Options {
            no_apt: self.no_apt,
        }
    }
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: nightly's rust-src, bpf-linker (built against nightly's libLLVM)
    /// and the Debian packages the tests and demo use. Idempotent.
    Setup(SetupArgs),
    /// Setup, then `cargo build --release -p agent` (the agent's build script builds the BPF object).
    Build(SetupArgs),
    /// Setup, build, start the bundled demo workload and attach the agent to it for 10 s.
    Demo {
        #[command(flatten)]
        setup: SetupArgs,
        /// Skip setup and build: use the agent already in target/release.
        #[arg(long)]
        no_build: bool,
    },
    /// Setup, build, run the unit tests, then the root integration tests one at a time (as root).
    Test {
        #[command(flatten)]
        setup: SetupArgs,
        /// Passed to the test binaries, e.g. a test name filter or `--nocapture`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// rustfmt check, clippy for the host crates and clippy for the BPF crate, all with -D warnings.
    Lint,
    /// Measure what the agent costs (target slowdown per mode, BPF time per event, agent CPU and
    /// memory, drops under load, symbolization, attach latency, a bpftrace reference) and write
    /// the figures to BENCHMARKS.md. As root; about 7 minutes (--quick: about 3).
    Bench(bench::BenchArgs),
    /// Run each cargo-fuzz target in fuzz/ (the parsers of untrusted input) for --seconds
    /// (default 60) on a working copy of its seed corpus; print executions, execs/s, corpus size
    /// and crashes per target. A crash fails, naming its artifact. Installs cargo-fuzz if missing.
    Fuzz(fuzz::FuzzArgs),
    /// The soak (tests/tests/soak.rs) for --minutes (default 10): serve --all scraped every
    /// second, profile requests and attach windows against a target churning threads, forks,
    /// execs and dlopens; its figures (RSS, fds, losses) go to RELIABILITY.md. As root.
    Soak(soak::SoakArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup(a) => setup::setup(a.options()),
        Task::Build(a) => setup::setup(a.options()).and_then(|()| build()),
        Task::Demo { setup, no_build } => if no_build {
            Ok(())
        } else {
            setup::setup(setup.options()).and_then(|()| build())
        }
        .and_then(|()| demo::demo()),
        Task::Test { setup, args } => test(setup, &args),
        Task::Lint => lint(),
        Task::Bench(a) => bench::bench(&a),
        Task::Fuzz(a) => fuzz::fuzz(&a).map(|_| ()),
        Task::Soak(a) => soak::soak(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn build() -> Result<()> {
    println!("== build");
    run(cargo().args(["build", "--release", "-p", "agent"]))?;
    let agent = target_dir().join("release/agent");
    if !agent.is_file() {
        bail!("the build succeeded but {} is missing", agent.display());
    }
    println!("built {}", agent.display());
    Ok(())
}

/// Packages left out of `cargo test --workspace`: the root integration tests (run separately,
/// release and serially) and the BPF programs (they only build for bpfel-unknown-none).
const UNIT_TEST_EXCLUDES: &[&str] = &["stallscope-tests", "stallscope-ebpf"];

/// How long `cargo xtask test` runs each fuzz target.
const FUZZ_SECONDS_IN_TEST: u64 = 10;

fn test(setup_args: SetupArgs, args: &[String]) -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask test` runs root integration tests (they load BPF programs and attach to \
             processes): run it as root. For the unit tests alone: cargo test --workspace {}",
            UNIT_TEST_EXCLUDES
                .iter()
                .map(|p| format!("--exclude {p}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    setup::setup(setup_args.options())?;
    build()?;
    let mut failed = Vec::new();

    println!("== unit tests");
    let mut unit = cargo();
    unit.args(["test", "--workspace"]);
    for p in UNIT_TEST_EXCLUDES {
        unit.args(["--exclude", p]);
    }
    if !args.is_empty() {
        unit.arg("--").args(args);
    }
    if let Err(e) = run(&mut unit) {
        eprintln!("error: {e:#}");
        failed.push(util::display(&unit));
    }

    println!("== root integration tests");
    let agent = target_dir().join("release/agent");
    let mut root = cargo();
    root.env("STALLSCOPE_AGENT", &agent)
        .env("STALLSCOPE_PYTHON_TOOLS", setup::python_tools_dir())
        .args([
            "test",
            "--release",
            "--no-fail-fast",
            "-p",
            "stallscope-tests",
            "--",
        ])
        .arg("--test-threads=1")
        .args(args);
    if let Err(e) = run(&mut root) {
        eprintln!("error: {e:#}");
        failed.push(util::display(&root));
    }

    // Every fuzz target for a short while from the committed seeds (and what earlier local
    // runs found): a parser change that breaks a target's build or an invariant fails here;
    // `cargo xtask fuzz` and the bench run them longer.
    // Not when the tests are filtered (`cargo xtask test NAME`).
    if args.is_empty() {
        println!("== fuzz, {FUZZ_SECONDS_IN_TEST} s per target");
        if let Err(e) = fuzz::fuzz(&fuzz::FuzzArgs {
            seconds: FUZZ_SECONDS_IN_TEST,
            targets: Vec::new(),
            fresh: false,
            record: false,
        }) {
            eprintln!("error: {e:#}");
            failed.push(format!("cargo xtask fuzz --seconds {FUZZ_SECONDS_IN_TEST}"));
        }
    }

    if failed.is_empty() {
        println!("== all tests passed");
        Ok(())
    } else {
        bail!("failed: {}", failed.join("; "))
    }
}

fn lint() -> Result<()> {
    // Clippy on the agent runs its build script, which builds the BPF object: needs the toolchain
    // part of setup, not the Debian packages.
    setup::setup(setup::Options { no_apt: true })?;
    ensure_lint_components()?;
    println!("== lint");
    let mut host_clippy = cargo();
    host_clippy.args([
        "clippy",
        "--workspace",
        "--exclude",
        "stallscope-ebpf",
        "--all-targets",
    ]);
    host_clippy.args(["--", "-D", "warnings"]);
    let mut bpf_clippy = cargo();
    bpf_clippy.args([
        "+nightly",
        "clippy",
        "-p",
        "stallscope-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]);
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);

    let mut failed = Vec::new();
    for cmd in [&mut fmt, &mut host_clippy, &mut bpf_clippy] {
        if let Err(e) = run(cmd) {
            eprintln!("error: {e:#}");
            failed.push(util::display(cmd));
        }
    }
    if failed.is_empty() {
        println!("== lint clean");
        Ok(())
    } else {
        bail!("failed: {}", failed.join("; "))
    }
}

/// rustfmt and clippy for the default toolchain, clippy for nightly.
fn ensure_lint_components() -> Result<()> {
    for (toolchain, component) in [
        (None, "rustfmt"),
        (None, "clippy"),
        (Some("nightly"), "clippy"),
    ] {
        let mut list = Command::new("rustup");
        list.args(["component", "list", "--installed"]);
        if let Some(t) = toolchain {
            list.args(["--toolchain", t]);
        }
        let installed = util::probe(&mut list).unwrap_or_default();
        if installed.lines().any(|l| l.starts_with(component)) {
            continue;
        }
        let mut add = Command::new("rustup");
        add.args(["component", "add", component]);
        if let Some(t) = toolchain {
            add.args(["--toolchain", t]);
        }
        run(&mut add)?;
    }
    Ok(())
}
