//! `cargo xtask fuzz [--seconds N] [--target NAME]`: runs the cargo-fuzz targets of `fuzz/`
//! (the agent's parsers of untrusted input) for a bounded time each and reports what they did.
//!
//! - installs cargo-fuzz when it is missing (`cargo install cargo-fuzz --locked`);
//! - builds the targets once (`cargo +nightly fuzz build`, `AYA_BUILD_SKIP=1`: they need the
//!   agent's library, not its BPF object), with debug assertions and overflow checks, into
//!   `target/fuzz/build`, then runs the binaries it built (`cargo fuzz run` would rebuild before
//!   each target, and a work tree being edited then costs minutes per target);
//! - runs each target with `-max_total_time=N` on a working corpus in `target/fuzz/corpus/NAME`
//!   seeded from the committed `fuzz/corpus/NAME` (which it never writes to); what earlier runs
//!   found stays there unless `--fresh`;
//! - prints, and returns, per target: executions, executions per second, corpus size, crashes.
//!   A crash (or leak, timeout, out-of-memory) fails the task and names its artifact file in
//!   `target/fuzz/artifacts/NAME`. libFuzzer's whole output is in `target/fuzz/logs/NAME.log`.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::util::{cargo, check, display, probe, run, target_dir, workspace_root};

/// The fuzz targets, in the order they run.
pub const TARGETS: &[&str] = &["unwind_elf", "proc_parsers", "dump_when", "http_query"];

#[derive(Args, Debug, Clone)]
pub struct FuzzArgs {
    /// Seconds to run each target.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,
    /// Run only this target (repeatable; default: all). Targets: unwind_elf, proc_parsers,
    /// dump_when, http_query.
    #[arg(long = "target", value_name = "NAME")]
    pub targets: Vec<String>,
    /// Start from the committed seed corpus alone (drop what earlier runs added).
    #[arg(long)]
    pub fresh: bool,
    /// Write the figures into RELIABILITY.md (between its fuzz markers).
    #[arg(long)]
    pub record: bool,
}

const BEGIN: &str =
    "<!-- fuzz figures: begin (cargo xtask fuzz --record and the bench write this part) -->";
const END: &str = "<!-- fuzz figures: end -->";

/// The results as RELIABILITY.md's table.
fn figures(results: &[FuzzResult], seconds: u64) -> String {
    let mut s = format!(
        "{seconds} s per target:\n\n| target | executions | execs/s | corpus | crashes |\n|---|---|---|---|---|\n"
    );
    for r in results {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.target,
            r.executions,
            r.execs_per_sec,
            r.corpus,
            r.crashes.len()
        ));
    }
    s
}

/// What one target's run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FuzzResult {
    pub target: String,
    pub seconds: u64,
    pub executions: u64,
    pub execs_per_sec: u64,
    /// Inputs in libFuzzer's corpus at the end (its last status line), else files in the
    /// working corpus directory.
    pub corpus: u64,
    /// Coverage features (`cov:`) at the end.
    pub coverage: Option<u64>,
    /// Artifacts of crashes, leaks, timeouts and out-of-memory inputs.
    pub crashes: Vec<PathBuf>,
    /// Inputs slower than libFuzzer's -report_slow_units (not failures).
    pub slow_units: Vec<PathBuf>,
    /// The run failed with no artifact (e.g. the target did not build).
    pub failed: Option<String>,
}

/// Figures parsed from libFuzzer's output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub executions: Option<u64>,
    pub execs_per_sec: Option<u64>,
    pub corpus: Option<u64>,
    pub coverage: Option<u64>,
    pub artifacts: Vec<PathBuf>,
}

/// The value after `key` in a libFuzzer status line (`cov: 834`, `corp: 710/404Kb`).
fn status_field(line: &str, key: &str) -> Option<u64> {
    let rest = line.split(key).nth(1)?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Parses libFuzzer's output: the final `stat::` lines (`-print_final_stats=1`), else the last
/// `#N DONE` / status line, and every `Test unit written to PATH`.
pub fn parse_output(text: &str) -> Stats {
    let mut s = Stats::default();
    let mut last_count = None;
    let mut last_exec_s = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            s.executions = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
            s.execs_per_sec = v.trim().parse().ok();
        } else if let Some(p) = line.split("Test unit written to ").nth(1) {
            s.artifacts.push(PathBuf::from(p.trim()));
        } else if let Some(rest) = line.strip_prefix('#') {
            // `#62086	DONE   cov: 834 ft: 2879 corp: 710/404Kb lim: 2474 exec/s: 3880 rss: 442Mb`
            let n = rest.split_whitespace().next().and_then(|n| n.parse().ok());
            if n.is_some() && line.contains("cov:") {
                last_count = n;
                last_exec_s = status_field(line, "exec/s:").or(last_exec_s);
                s.corpus = status_field(line, "corp:").or(s.corpus);
                s.coverage = status_field(line, "cov:").or(s.coverage);
            }
        }
    }
    s.executions = s.executions.or(last_count);
    s.execs_per_sec = s.execs_per_sec.or(last_exec_s);
    s
}

/// Whether an artifact is a failure: every kind but `slow-unit-`.
fn is_failure(artifact: &Path) -> bool {
    !artifact
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("slow-unit-"))
}

/// Lines of libFuzzer's output worth showing live: not the `#N NEW/REDUCE` stream nor the
/// recommended dictionary.
fn worth_showing(line: &str) -> bool {
    if line.starts_with('"') || line.starts_with("###### ") {
        return false;
    }
    let Some(rest) = line.strip_prefix('#') else {
        return true;
    };
    let word = rest.split_whitespace().nth(1).unwrap_or("");
    matches!(word, "INITED" | "DONE" | "pulse") || !line.contains("cov:")
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

fn work_dir() -> PathBuf {
    target_dir().join("fuzz")
}

fn ensure_cargo_fuzz() -> Result<()> {
    if let Some(v) = probe(Command::new("cargo").args(["fuzz", "--version"])) {
        println!("ok: {}", v.trim());
        return Ok(());
    }
    println!("cargo-fuzz is missing: installing it");
    run(Command::new("cargo")
        // Outside the workspace: its target dir has nothing to do with it.
        .current_dir(std::env::temp_dir())
        .env_remove("CARGO_TARGET_DIR")
        .args(["install", "cargo-fuzz", "--locked"]))
    .context("installing cargo-fuzz failed (it needs crates.io)")?;
    if probe(Command::new("cargo").args(["fuzz", "--version"])).is_none() {
        bail!(
            "cargo-fuzz was installed but `cargo fuzz --version` fails; is $CARGO_HOME/bin on PATH?"
        );
    }
    Ok(())
}

/// `cargo +nightly fuzz build` of every target.
fn fuzz_build() -> Command {
    let mut c = cargo();
    c.env("AYA_BUILD_SKIP", "1")
        .args(["+nightly", "fuzz", "build", "--fuzz-dir"])
        .arg(fuzz_dir())
        .arg("--target-dir")
        .arg(work_dir().join("build"))
        // Overflow checks and debug assertions: a wrapped value is a bug worth a crash.
        .arg("--debug-assertions");
    c
}

fn copy_seeds(target: &str, corpus: &Path, fresh: bool) -> Result<usize> {
    if fresh && corpus.exists() {
        fs::remove_dir_all(corpus).with_context(|| format!("removing {}", corpus.display()))?;
    }
    fs::create_dir_all(corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let seeds = fuzz_dir().join("corpus").join(target);
    let mut n = 0;
    for e in fs::read_dir(&seeds).with_context(|| format!("reading {}", seeds.display()))? {
        let e = e?;
        if e.file_type()?.is_file() {
            fs::copy(e.path(), corpus.join(e.file_name()))
                .with_context(|| format!("copying {}", e.path().display()))?;
            n += 1;
        }
    }
    Ok(n)
}

fn count_files(dir: &Path) -> u64 {
    fs::read_dir(dir).map_or(0, |d| d.filter_map(Result::ok).count() as u64)
}

/// Where `cargo fuzz build` leaves the target binaries: `<target-dir>/<host triple>/release`.
fn bin_dir(rustc_vv: &str) -> Result<PathBuf> {
    let host = rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("host:"))
        .map(str::trim)
        .context("no `host:` line in `rustc +nightly -vV`")?;
    Ok(work_dir().join("build").join(host).join("release"))
}

fn run_target(target: &str, args: &FuzzArgs, bin_dir: &Path) -> Result<FuzzResult> {
    let corpus = work_dir().join("corpus").join(target);
    let artifacts = work_dir().join("artifacts").join(target);
    let logs = work_dir().join("logs");
    let seeds = copy_seeds(target, &corpus, args.fresh)?;
    fs::create_dir_all(&artifacts)?;
    fs::create_dir_all(&logs)?;
    println!(
        "== fuzz {target}: {} s, working corpus {} ({seeds} seeds, {} inputs)",
        args.seconds,
        corpus.display(),
        count_files(&corpus)
    );
    let mut prefix = artifacts.clone().into_os_string();
    prefix.push("/");
    let mut cmd = Command::new(bin_dir.join(target));
    // What `cargo fuzz run` sets.
    cmd.env("ASAN_OPTIONS", "detect_odr_violation=0")
        .arg(format!("-max_total_time={}", args.seconds))
        .arg("-print_final_stats=1")
        .arg("-timeout=10")
        .arg({
            let mut a = std::ffi::OsString::from("-artifact_prefix=");
            a.push(&prefix);
            a
        })
        .arg(&corpus);
    let shown = display(&cmd);
    println!("$ {shown}");
    let log_path = logs.join(format!("{target}.log"));
    let mut log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    let mut text = String::new();
    for line in BufReader::new(child.stderr.take().expect("piped")).lines() {
        let line = line.unwrap_or_default();
        writeln!(log, "{line}")?;
        // The lines parse_output reads are all among those shown.
        if worth_showing(&line) {
            eprintln!("{line}");
            text.push_str(&line);
            text.push('\n');
        }
    }
    let status = child.wait()?;
    let stats = parse_output(&text);
    let (crashes, slow_units): (Vec<PathBuf>, Vec<PathBuf>) = stats
        .artifacts
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .partition(|a| is_failure(a));
    let failed = match check(status, &shown) {
        Err(e) if crashes.is_empty() => Some(format!("{e:#}; see {}", log_path.display())),
        _ => None,
    };
    Ok(FuzzResult {
        target: target.to_string(),
        seconds: args.seconds,
        executions: stats.executions.unwrap_or(0),
        execs_per_sec: stats.execs_per_sec.unwrap_or(0),
        corpus: stats.corpus.unwrap_or_else(|| count_files(&corpus)),
        coverage: stats.coverage,
        crashes,
        slow_units,
        failed,
    })
}

/// Runs the targets and returns what each did; fails when one crashed or did not run.
pub fn fuzz(args: &FuzzArgs) -> Result<Vec<FuzzResult>> {
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in &args.targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!("unknown fuzz target {t:?}; targets: {}", TARGETS.join(", "));
            }
        }
        args.targets.iter().map(String::as_str).collect()
    };
    let Some(vv) = probe(Command::new("rustc").args(["+nightly", "-vV"])) else {
        bail!("cargo fuzz needs the nightly toolchain: run `cargo xtask setup`");
    };
    let bins = bin_dir(&vv)?;
    ensure_cargo_fuzz()?;
    println!("== fuzz: build");
    run(&mut fuzz_build())?;

    let mut results = Vec::new();
    for t in &targets {
        results.push(run_target(t, args, &bins)?);
    }

    println!("== fuzz results ({} s per target)", args.seconds);
    println!(
        "{:<14} {:>12} {:>9} {:>7} {:>6}  crashes",
        "target", "executions", "execs/s", "corpus", "cov"
    );
    for r in &results {
        println!(
            "{:<14} {:>12} {:>9} {:>7} {:>6}  {}",
            r.target,
            r.executions,
            r.execs_per_sec,
            r.corpus,
            r.coverage.map_or("-".into(), |c| c.to_string()),
            r.crashes.len()
        );
    }
    let mut problems = Vec::new();
    for r in &results {
        for a in &r.crashes {
            problems.push(format!(
                "{}: crash, artifact {} (reproduce: {} {})",
                r.target,
                a.display(),
                bins.join(&r.target).display(),
                a.display()
            ));
        }
        for a in &r.slow_units {
            println!("{}: slow input {}", r.target, a.display());
        }
        if let Some(f) = &r.failed {
            problems.push(format!("{}: {f}", r.target));
        }
    }
    if args.record {
        let path = crate::util::workspace_root().join("RELIABILITY.md");
        crate::util::write_between_markers(&path, BEGIN, END, &figures(&results, args.seconds))?;
        println!("figures written to {}", path.display());
    }
    if problems.is_empty() {
        println!("== fuzz: no crashes");
        Ok(results)
    } else {
        for p in &problems {
            eprintln!("{p}");
        }
        bail!("fuzzing failed: {}", problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DONE: &str = "\
INFO: Seed: 42
#2\tINITED cov: 100 ft: 200 corp: 9/3Kb exec/s: 0 rss: 40Mb
#1024\tNEW    cov: 120 ft: 260 corp: 12/4Kb lim: 4096 exec/s: 512 rss: 41Mb L: 10/40 MS: 1 ChangeBit-
#62086\tDONE   cov: 834 ft: 2879 corp: 710/404Kb lim: 2474 exec/s: 3880 rss: 442Mb
Done 62086 runs in 16 second(s)
stat::number_of_executed_units: 62087
stat::average_exec_per_sec:     3881
stat::new_units_added:          700
";

    #[test]
    fn parses_final_stats() {
        let s = parse_output(DONE);
        assert_eq!(s.executions, Some(62087));
        assert_eq!(s.execs_per_sec, Some(3881));
        assert_eq!(s.corpus, Some(710));
        assert_eq!(s.coverage, Some(834));
        assert!(s.artifacts.is_empty());
    }

    #[test]
    fn falls_back_to_the_done_line() {
        let text: String = DONE
            .lines()
            .filter(|l| !l.starts_with("stat::"))
            .map(|l| format!("{l}\n"))
            .collect();
        let s = parse_output(&text);
        assert_eq!((s.executions, s.execs_per_sec), (Some(62086), Some(3880)));
    }

    #[test]
    fn finds_crash_artifacts() {
        let text = "thread '<unnamed>' panicked at src/x.rs:1:1\n\
                    ==1== ERROR: libFuzzer: deadly signal\n\
                    artifact_prefix='/t/a/'; Test unit written to /t/a/crash-4a84f6\n\
                    Base64: ZXZlcnk9\n\
                    stat::number_of_executed_units: 129914\n";
        let s = parse_output(text);
        assert_eq!(s.artifacts, vec![PathBuf::from("/t/a/crash-4a84f6")]);
        assert_eq!(s.executions, Some(129914));
        assert!(is_failure(&s.artifacts[0]));
        assert!(!is_failure(Path::new("/t/a/slow-unit-123")));
        assert!(is_failure(Path::new("/t/a/oom-123")));
    }

    #[test]
    fn hides_the_new_stream() {
        assert!(!worth_showing(
            "#1024\tNEW    cov: 120 ft: 260 corp: 12/4Kb lim: 4096 exec/s: 512"
        ));
        assert!(worth_showing(
            "#65536\tpulse  cov: 120 ft: 260 corp: 12/4Kb lim: 4096 exec/s: 512"
        ));
        assert!(worth_showing("#62086\tDONE   cov: 834 ft: 2879"));
        assert!(worth_showing("INFO: Seed: 42"));
        assert!(!worth_showing("\"\\377\\012\" # Uses: 95"));
        assert!(!worth_showing("###### Recommended dictionary. ######"));
    }
}
