//! The agent's root-free hot paths, with criterion: `cargo bench -p agent`.
//! - CFI compilation of a real library (every file a target maps is compiled once per agent);
//! - the unwind-table lookup the BPF unwinder mirrors;
//! - pprof encoding of a profile the size of a busy window's;
//! - symbolization of this process's own frames (warm symbolizer, as `serve` runs it).
//!
//! Figures from these go to BENCHMARKS.md by hand when they matter; `cargo xtask bench`
//! measures the agent against its targets.

use std::time::{Duration, SystemTime};

use agent::export::pprof;
use agent::model::{
    Label, Line, Location, Mapping, Profile, ProfileKind, RawProfile, RawSample, RawStack, Sample,
    ValueType,
};
use agent::symbolize::Symbolizer;
use agent::unwind::{cfi, maps::MapsCache};
use criterion::{Criterion, criterion_group, criterion_main};

/// A library every machine of this kind has, with a large `.eh_frame`.
const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";

fn cfi_compile(c: &mut Criterion) {
    let Ok(data) = std::fs::read(LIBC) else {
        eprintln!("{LIBC} missing: the CFI benchmarks are skipped");
        return;
    };
    let table = cfi::compile_elf(&data).expect("libc's CFI compiles");
    c.bench_function("cfi/compile libc.so.6", |b| {
        b.iter(|| cfi::compile_elf(std::hint::black_box(&data)).unwrap())
    });
    let span = table.rows.last().map_or(1, |r| r.pc) - table.rows[0].pc;
    let pcs: Vec<u64> = (0..4096u64)
        .map(|i| table.rows[0].pc + i.wrapping_mul(0x9e37_79b9) % span.max(1))
        .collect();
    c.bench_function("cfi/lookup 4096 pcs", |b| {
        b.iter(|| pcs.iter().filter(|&&pc| table.lookup(pc).is_some()).count())
    });
}

/// A CPU profile of `n` samples over 2000 locations, 16 frames each, with thread labels.
fn big_profile(n: usize) -> Profile {
    let locations = (0..2000u64)
        .map(|i| Location {
            address: 0x40_0000 + i * 16,
            mapping: Some(0),
            lines: vec![Line {
                function: format!("function_{i}"),
                system_name: None,
                file: Some(format!("/src/file_{}.c", i % 50)),
                line: Some((i % 900) as u32 + 1),
            }],
            kernel: false,
        })
        .collect();
    let samples = (0..n)
        .map(|i| Sample {
            locations: (0..16).map(|d| (i * 7 + d * 131) % 2000).collect(),
            values: vec![1, 10_000_000],
            labels: vec![
                Label::Str("thread".into(), format!("worker-{}", i % 32)),
                Label::Str("tid".into(), (1000 + i % 32).to_string()),
            ],
        })
        .collect();
    Profile {
        kind: ProfileKind::Cpu,
        sample_types: vec![
            ValueType::new("samples", "count"),
            ValueType::new("cpu", "nanoseconds"),
        ],
        default_sample_type: Some("cpu".into()),
        period_type: ValueType::new("cpu", "nanoseconds"),
        period: 10_000_000,
        start: SystemTime::UNIX_EPOCH,
        duration: Duration::from_secs(10),
        samples,
        locations,
        mappings: vec![Mapping {
            file: "/usr/bin/app".into(),
            ..Default::default()
        }],
        comments: vec!["a comment".into()],
    }
}

fn pprof_encode(c: &mut Criterion) {
    let p = big_profile(10_000);
    c.bench_function("pprof/encode 10k samples", |b| {
        b.iter(|| pprof::encode(std::hint::black_box(&p)).unwrap())
    });
}

#[inline(never)]
fn frame_a() -> u64 {
    frame_a as *const () as u64
}

#[inline(never)]
fn frame_b() -> u64 {
    frame_b as *const () as u64
}

fn symbolize_self(c: &mut Criterion) {
    let pid = std::process::id();
    let mut maps = MapsCache::new();
    if let Err(e) = maps.refresh(pid) {
        eprintln!("reading this process's maps: {e}: the symbolization benchmark is skipped");
        return;
    }
    // This binary's own functions and libc's, 200 stacks of 8 frames.
    let addrs = [
        frame_a(),
        frame_b(),
        symbolize_self as *const () as u64,
        pprof_encode as *const () as u64,
        libc::malloc as *const () as u64,
        libc::free as *const () as u64,
        libc::read as *const () as u64,
        libc::write as *const () as u64,
    ];
    let raw = RawProfile {
        kind: ProfileKind::Cpu,
        sample_types: vec![ValueType::new("samples", "count")],
        default_sample_type: None,
        period_type: ValueType::new("cpu", "nanoseconds"),
        period: 1,
        start: SystemTime::UNIX_EPOCH,
        duration: Duration::from_secs(1),
        samples: (0..200)
            .map(|i| RawSample {
                pid,
                stack: RawStack {
                    user: (0..8).map(|d| addrs[(i + d) % addrs.len()] + 1).collect(),
                    kernel: vec![],
                },
                values: vec![1],
                labels: vec![],
            })
            .collect(),
        comments: vec![],
    };
    let mut symbolizer = Symbolizer::new();
    let _ = symbolizer.symbolize(raw.clone(), &maps);
    c.bench_function("symbolize/200 stacks of own frames, warm", |b| {
        b.iter(|| symbolizer.symbolize(raw.clone(), &maps))
    });
}

criterion_group! {
    name = hot_paths;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3));
    targets = cfi_compile, pprof_encode, symbolize_self
}
criterion_main!(hot_paths);
