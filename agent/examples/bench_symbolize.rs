//! Symbolization benchmark, run by `cargo xtask bench` (not a test: it only prints figures).
//!
//! `bench_symbolize BINARY [RUNS]` starts BINARY (a generated program with thousands of
//! functions that prints `fn 0x<address>` for each of them, then `ready`, then waits on stdin),
//! builds a CPU profile whose stacks cover every one of those functions plus kernel frames from
//! `/proc/kallsyms`, and symbolizes it the way `agent attach` does: [`MapsCache`] of the
//! process, then one [`Symbolizer`]. For each run a new symbolizer is timed on the profile
//! (cold: blazesym parses the ELF and DWARF) and then the same symbolizer again (warm: its
//! per-file caches are filled). Prints `key value` lines; times are medians in milliseconds.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use agent::model::{Profile, ProfileKind, RawProfile, RawSample, RawStack, ValueType};
use agent::symbolize::{Symbolizer, is_placeholder};
use agent::unwind::maps::MapsCache;
use anyhow::{Context, Result, bail};

/// Frames per synthetic stack.
const DEPTH: usize = 12;
/// Kernel text symbols put into the profile (when kallsyms shows addresses: root).
const KERNEL_FRAMES: usize = 1000;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let binary = args
        .next()
        .context("usage: bench_symbolize BINARY [RUNS]")?;
    let runs: usize = args.next().map_or(Ok(5), |r| r.parse())?;

    let mut child = Command::new(&binary)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {binary}"))?;
    let result = run(&mut child, runs);
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn run(child: &mut std::process::Child, runs: usize) -> Result<()> {
    let pid = child.id();
    let stdout = child.stdout.take().context("no stdout")?;
    let mut functions = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if line == "ready" {
            break;
        }
        if let Some(hex) = line.strip_prefix("fn 0x") {
            functions.push(u64::from_str_radix(hex, 16)?);
        }
    }
    if functions.is_empty() {
        bail!("the program printed no function addresses");
    }

    let t = Instant::now();
    let mut maps = MapsCache::new();
    maps.refresh(pid)?;
    let maps_ms = ms(t.elapsed());

    let kernel = kernel_text_addresses(KERNEL_FRAMES);
    let raw = profile(pid, &functions, &kernel);
    let user_frames = functions.len();

    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut resolved = 0;
    let mut locations = 0;
    let mut inlined = 0;
    let mut last = None;
    for _ in 0..runs.max(1) {
        let mut sym = Symbolizer::new();
        let t = Instant::now();
        let p = sym.symbolize(raw.clone(), &maps);
        cold.push(ms(t.elapsed()));
        let t = Instant::now();
        let p2 = sym.symbolize(raw.clone(), &maps);
        warm.push(ms(t.elapsed()));
        (locations, resolved, inlined) = stats(&p);
        if stats(&p2) != (locations, resolved, inlined) {
            bail!("the warm run resolved differently from the cold one");
        }
        last = Some(p2);
    }
    let profile = last.expect("at least one run");
    let t = Instant::now();
    let bytes = agent::export::pprof::encode(&profile)?;
    let encode_ms = ms(t.elapsed());

    println!("user_frames {user_frames}");
    println!("kernel_frames {}", kernel.len());
    println!("samples {}", raw.samples.len());
    println!("locations {locations}");
    println!("resolved {resolved}");
    println!("inlined_lines {inlined}");
    println!("runs {}", cold.len());
    println!("maps_ms {maps_ms:.2}");
    println!("cold_ms {:.1}", median(&mut cold));
    println!("warm_ms {:.1}", median(&mut warm));
    println!("pprof_encode_ms {encode_ms:.1}");
    println!("pprof_bytes {}", bytes.len());
    println!("peak_rss_kib {}", peak_rss_kib().unwrap_or(0));
    Ok(())
}

/// Stacks of `DEPTH` frames walking through every function in order (each address a few
/// bytes into its function, as return addresses are), with kernel frames on some of them.
fn profile(pid: u32, functions: &[u64], kernel: &[u64]) -> RawProfile {
    let mut samples = Vec::new();
    for (i, chunk) in functions.chunks(DEPTH).enumerate() {
        let user = chunk.iter().map(|&f| f + 5).collect();
        let kernel = match kernel.len() {
            0 => Vec::new(),
            n => (0..4).map(|k| kernel[(i * 4 + k) % n] + 1).collect(),
        };
        samples.push(RawSample {
            pid,
            stack: RawStack { user, kernel },
            values: vec![1 + i as i64],
            labels: vec![],
        });
    }
    RawProfile {
        kind: ProfileKind::Cpu,
        sample_types: vec![ValueType::new("samples", "count")],
        default_sample_type: None,
        period_type: ValueType::new("cpu", "nanoseconds"),
        period: 1,
        start: SystemTime::now(),
        duration: Duration::from_secs(1),
        samples,
        comments: vec![],
    }
}

/// (locations, resolved to a function name, extra lines from inlined functions).
fn stats(p: &Profile) -> (usize, usize, usize) {
    let resolved = p
        .locations
        .iter()
        .filter(|l| l.lines.last().is_some_and(|x| !is_placeholder(&x.function)))
        .count();
    let inlined = p
        .locations
        .iter()
        .map(|l| l.lines.len().saturating_sub(1))
        .sum();
    (p.locations.len(), resolved, inlined)
}

fn kernel_text_addresses(n: usize) -> Vec<u64> {
    let Ok(text) = std::fs::read_to_string("/proc/kallsyms") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let addr = u64::from_str_radix(f.next()?, 16).ok()?;
            let kind = f.next()?;
            let in_module = f.nth(1).is_some();
            (addr != 0 && !in_module && (kind == "t" || kind == "T")).then_some(addr)
        })
        .step_by(20)
        .take(n)
        .collect()
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
