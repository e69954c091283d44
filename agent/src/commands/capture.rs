//! `agent capture`: one command, one bounded window, one bundle with everything needed to
//! diagnose a hang, a leak or tail latency afterwards: CPU, off-CPU, block and mutex profiles
//! (pprof, folded, flame-graph SVG), thread dumps at the start and the end, process facts
//! sampled over the window, a metrics snapshot, `summary.md` (the diagnosis, culprit first)
//! and `manifest.json`; optionally packed into a `.tar.gz`.

use std::{
    fmt::Write as _,
    io::IsTerminal as _,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;

use crate::{
    cli::CaptureArgs,
    dump::{self, Detail, DumpFormat},
    error::Error,
    kernel::Collector,
    model::{Profile, ProfileKind},
    report::summary::{self as report, EndReason},
    report::triage::{self, TriageInput},
    symbolize::Symbolizer,
    system,
    unwind::maps::MapsCache,
    unwind::tables::UnwindRegistry,
    window::{self, CaptureSpec, Captured},
};

/// One file of the bundle, as listed in `manifest.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestFile {
    pub path: String,
    pub bytes: u64,
    pub what: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub tool: String,
    pub pid: u32,
    pub comm: String,
    pub started_unix_ms: u64,
    pub duration_s: f64,
    pub end: String,
    pub files: Vec<ManifestFile>,
}

/// Files of /proc/PID copied into the bundle (`proc/`).
const PROC_FILES: [&str; 8] = [
    "status",
    "limits",
    "cgroup",
    "maps",
    "stat",
    "sched",
    "schedstat",
    "cmdline",
];

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Output {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes one file of the bundle whole or not at all (a temporary file, then a rename).
fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<(), Error> {
    crate::output::write_atomically(path, contents.as_ref()).map_err(io_err(path))
}

/// Threads of the process now (from /proc/PID/status), if it lives.
fn thread_count(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Copies /proc/PID facts into `dir/proc/` (what is readable; the rest is noted).
fn save_proc_facts(pid: u32, dir: &Path, notes: &mut Vec<String>) -> Result<(), Error> {
    let proc_dir = dir.join("proc");
    std::fs::create_dir_all(&proc_dir).map_err(io_err(&proc_dir))?;
    for name in PROC_FILES {
        match std::fs::read(format!("/proc/{pid}/{name}")) {
            Ok(mut bytes) => {
                if name == "cmdline" {
                    for b in &mut bytes {
                        if *b == 0 {
                            *b = b' ';
                        }
                    }
                }
                write(&proc_dir.join(name), bytes)?;
            }
            Err(e) => notes.push(format!("/proc/{pid}/{name}: {e}")),
        }
    }
    if let Some(n) = fd_count(pid) {
        write(&proc_dir.join("fd_count"), format!("{n}\n"))?;
    }
    Ok(())
}

/// Most processes of a group dumped at each end of a capture's window (besides the lead).
const MAX_GROUP_DUMPS: usize = 32;

/// Dumps of a group's processes other than the lead, as `<stem>-PID.txt` and `.json`.
fn dump_others(
    collector: &mut Collector,
    pids: &[u32],
    dir: &Path,
    stem: &str,
    notes: &mut Vec<String>,
) {
    for &pid in pids.iter().take(MAX_GROUP_DUMPS) {
        let mut maps = MapsCache::new();
        if maps.refresh(pid).is_ok() {
            dump_now(collector, pid, &maps, dir, &format!("{stem}-{pid}"), notes);
        }
    }
    if pids.len() > MAX_GROUP_DUMPS {
        notes.push(format!(
            "{stem}: {} of the group's {} other processes dumped (at most {MAX_GROUP_DUMPS})",
            MAX_GROUP_DUMPS,
            pids.len()
        ));
    }
}

/// Takes a dump now and writes it as `<stem>.txt` (every thread) and `<stem>.json`.
fn dump_now(
    collector: &mut Collector,
    pid: u32,
    maps: &MapsCache,
    dir: &Path,
    stem: &str,
    notes: &mut Vec<String>,
) -> Option<dump::Dump> {
    let mut symbolizer = Symbolizer::new();
    match dump::take_dump(collector, pid, maps, &mut symbolizer) {
        Ok(d) => {
            let text = dump::render(&d, DumpFormat::Text, Detail::EveryThread);
            let json = dump::render(&d, DumpFormat::Json, Detail::EveryThread);
            if let Err(e) = write(&dir.join(format!("{stem}.txt")), text)
                .and_then(|_| write(&dir.join(format!("{stem}.json")), json))
            {
                notes.push(format!("writing {stem}: {e}"));
            }
            Some(d)
        }
        Err(e) => {
            notes.push(format!("thread dump ({stem}) failed: {e}"));
            None
        }
    }
}

/// Renders a folded-stacks text as a flame-graph SVG (inferno).
pub fn flame_graph(folded: &str, title: &str, count_name: &str) -> Result<Vec<u8>, String> {
    let mut opt = inferno::flamegraph::Options::default();
    opt.title = title.to_string();
    opt.count_name = count_name.to_string();
    let mut svg = Vec::new();
    if folded.trim().is_empty() {
        // inferno refuses empty input: draw one placeholder frame and say so in the title.
        opt.title = format!("{title} (no samples)");
        inferno::flamegraph::from_lines(&mut opt, std::iter::once("[no samples] 1"), &mut svg)
    } else {
        inferno::flamegraph::from_lines(&mut opt, folded.lines(), &mut svg)
    }
    .map_err(|e| e.to_string())?;
    Ok(svg)
}

fn end_text(end: EndReason, elapsed: Duration, requested: Duration) -> String {
    match end {
        EndReason::Completed => format!("completed ({:.1} s)", elapsed.as_secs_f64()),
        EndReason::Interrupted => format!(
            "ended early by Ctrl-C after {:.1} s of {:.1} s",
            elapsed.as_secs_f64(),
            requested.as_secs_f64()
        ),
        EndReason::TargetExited => format!(
            "the process exited after {:.1} s of {:.1} s",
            elapsed.as_secs_f64(),
            requested.as_secs_f64()
        ),
    }
}

/// Packs `dir` into a gzipped tar at `archive` (paths relative to the bundle's folder name).
pub fn pack(dir: &Path, archive: &Path) -> Result<(), Error> {
    // Built under a temporary name and renamed when complete: an archive under its own name
    // is never a half-written one (a full disk, a kill).
    let partial = archive.with_extension("partial");
    let result = pack_into(dir, &partial)
        .and_then(|()| std::fs::rename(&partial, archive).map_err(io_err(archive)));
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn pack_into(dir: &Path, archive: &Path) -> Result<(), Error> {
    let file = std::fs::File::create(archive).map_err(io_err(archive))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let name = dir
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("bundle"));
    tar.append_dir_all(&name, dir).map_err(io_err(archive))?;
    let gz = tar.into_inner().map_err(io_err(archive))?;
    gz.finish().map_err(io_err(archive))?;
    Ok(())
}

fn list_files(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            list_files(&p, base, out);
        } else if let Ok(rel) = p.strip_prefix(base) {
            out.push(rel.to_path_buf());
        }
    }
}

/// A Go program's goroutines now: written as `<stem>.txt` (Go's `debug=2` text), summarized
/// for the triage. `None` for a program that is not Go (or whose goroutines cannot be read:
/// noted).
fn goroutines_now(
    pid: u32,
    maps: &MapsCache,
    dir: &Path,
    stem: &str,
    notes: &mut Vec<String>,
) -> Option<dump::goroutines::GoroutineSummary> {
    if !dump::goroutines::is_go(Path::new(&format!("/proc/{pid}/exe"))) {
        return None;
    }
    let mut symbolizer = Symbolizer::new();
    match dump::goroutines::dump_with_summary(pid, maps, &mut symbolizer) {
        Ok((text, summary)) => {
            if let Err(e) = write(&dir.join(format!("{stem}.txt")), text) {
                notes.push(format!("writing {stem}: {e}"));
            }
            Some(summary)
        }
        Err(e) => {
            notes.push(format!("goroutines ({stem}) not read: {e}"));
            None
        }
    }
}

fn describe(rel: &Path) -> String {
    let s = rel.to_string_lossy();
    let what = if s.ends_with(".pb.gz") {
        "pprof profile (go tool pprof)"
    } else if s.ends_with(".folded") {
        "folded stacks"
    } else if s.ends_with(".svg") {
        "flame graph"
    } else if s.starts_with("threads-") && s.ends_with(".txt") {
        "thread dump (text)"
    } else if s.starts_with("threads-") && s.ends_with(".json") {
        "thread dump (JSON, docs/dump-schema.md)"
    } else if s.starts_with("goroutines-") && s.ends_with(".txt") {
        "goroutine dump (Go's debug=2 text)"
    } else if s.starts_with("proc/") {
        "process facts from /proc"
    } else if s == "threads_over_time.csv" {
        "thread count sampled every second"
    } else if s == "threads.json" {
        "every thread's time in the window: on CPU, off CPU by class, unaccounted"
    } else if s == "metrics.json" {
        "agent counters, map fill, BPF program stats"
    } else if s == "summary.md" {
        "the diagnosis"
    } else if s == "summary.json" {
        "the window's facts, counters and largest stacks, for machines (docs/summary-schema.md)"
    } else {
        "file"
    };
    what.into()
}

/// Runs `agent capture`. Returns the text printed on stdout (the diagnosis and where it is).
pub async fn run(args: &CaptureArgs) -> Result<String, Error> {
    let group = window::check_selector(&args.target.selector()?)?;
    let target = group.lead.clone();
    let dir = args.output.clone();
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let probe = dir.join(".stallscope-write-test");
    write(&probe, b"")?;
    let _ = std::fs::remove_file(probe);

    let started = SystemTime::now();
    let mut notes = Vec::new();
    let mut maps = MapsCache::new();
    maps.refresh(target.pid)
        .map_err(|_| Error::NoSuchProcess(target.pid))?;
    save_proc_facts(target.pid, &dir, &mut notes)?;
    let mut collector = Collector::load(
        crate::kernel::offsets::scheduler_offsets()?,
        args.rates.map_entries,
    )?;
    let dump_start = dump_now(
        &mut collector,
        target.pid,
        &maps,
        &dir,
        "threads-start",
        &mut notes,
    );
    let goroutines_start = goroutines_now(target.pid, &maps, &dir, "goroutines-start", &mut notes);
    // A group's other processes: a dump of each (threads-start-PID), up to MAX_GROUP_DUMPS.
    let others: Vec<u32> = if group.selector.is_group() {
        group
            .selector
            .resolve()
            .into_iter()
            .filter(|&p| p != target.pid)
            .collect()
    } else {
        Vec::new()
    };
    dump_others(&mut collector, &others, &dir, "threads-start", &mut notes);

    // Thread count over the window, sampled every second until the window ends.
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let pid = target.pid;
    let sampler = tokio::spawn(async move {
        let t0 = Instant::now();
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    match thread_count(pid) {
                        Some(n) => samples.push((t0.elapsed().as_secs_f64(), n, fd_count(pid).unwrap_or(0))),
                        None => break,
                    }
                }
                _ = &mut stop_rx => break,
            }
        }
        samples
    });

    let spec = CaptureSpec {
        profiles: vec![
            ProfileKind::Cpu,
            ProfileKind::Offcpu,
            ProfileKind::Block,
            ProfileKind::Mutex,
        ],
        duration: args.duration,
        rates: args.rates,
        offcpu_min_ns: 0,
        tid_labels: !args.labels.no_tid_label,
        dumps: None,
    };
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let mut unwind = UnwindRegistry::new();
    let captured = window::capture_with(
        &mut collector,
        &mut unwind,
        maps,
        &group,
        &spec,
        ctrl_c,
        std::io::stderr().is_terminal(),
    )
    .await;
    let _ = stop_tx.send(());
    let samples = sampler.await.unwrap_or_default();
    let captured = captured?;
    let mut facts =
        super::window_facts(&group, &captured, args.duration, args.rates, &spec.profiles);
    let Captured {
        raws,
        lock_waiters,
        mut maps,
        counters,
        elapsed,
        end,
        cpus,
        runq,
        map_fill,
        program_stats,
        accounting,
        members,
        ..
    } = captured;

    let alive = system::is_alive(&target);
    let dump_end = if alive {
        let _ = maps.refresh(target.pid);
        dump_now(
            &mut collector,
            target.pid,
            &maps,
            &dir,
            "threads-end",
            &mut notes,
        )
    } else {
        notes.push("the process exited during the window: no end-of-window thread dump".into());
        None
    };
    let goroutines_end = if alive {
        goroutines_now(target.pid, &maps, &dir, "goroutines-end", &mut notes)
    } else {
        None
    };
    let live_others: Vec<u32> = members
        .iter()
        .filter(|m| !m.exited && m.pid != target.pid)
        .map(|m| m.pid)
        .collect();
    dump_others(
        &mut collector,
        &live_others,
        &dir,
        "threads-end",
        &mut notes,
    );
    drop(collector);

    let mut csv = String::from("seconds,threads,fds\n");
    for (t, n, fds) in &samples {
        let _ = writeln!(csv, "{t:.1},{n},{fds}");
    }
    write(&dir.join("threads_over_time.csv"), csv)?;

    let metrics = serde_json::json!({
        "counters": counters,
        "map_fill": map_fill,
        "programs": program_stats,
        "unwind_tables": {
            "files_with_tables": unwind.stats.files_with_tables,
            "files_without_tables": unwind.stats.files_without_tables,
            "rows": unwind.stats.rows,
        },
    });
    write(
        &dir.join("metrics.json"),
        serde_json::to_vec_pretty(&metrics).unwrap_or_default(),
    )?;

    // Symbolize and write profiles and flame graphs on one blocking thread (blazesym).
    let out_dir = dir.clone();
    let thread_root = args.labels.folded_thread_root;
    let out = window::finish::OutputOptions {
        dir: dir.clone(),
        pid,
        top_n: 15,
        folded_thread_root: thread_root,
    };
    let (written, svg_notes) = tokio::task::spawn_blocking(move || {
        let mut symbolizer = Symbolizer::new();
        let written =
            window::finish::write_profiles(&mut symbolizer, raws, lock_waiters, &maps, &out)?;
        let mut svg_notes = Vec::new();
        for p in &written.profiles {
            let vi = report::main_value_index(p);
            let unit = &p.sample_types[vi];
            let title = format!("{} profile ({}/{})", p.kind.name(), unit.r#type, unit.unit);
            match flame_graph(
                &window::finish::folded_text(p, thread_root),
                &title,
                &unit.unit,
            ) {
                Ok(svg) => {
                    let path = out_dir.join(format!("{}.svg", p.kind.name()));
                    write(&path, svg)?;
                }
                Err(e) => svg_notes.push(format!("flame graph of {}: {e}", p.kind.name())),
            }
        }
        Ok::<_, Error>((written, svg_notes))
    })
    .await
    .map_err(|e| Error::internal("symbolization thread failed", e))??;
    notes.extend(svg_notes);
    let mut accounting = accounting;
    if let Some(p) = written
        .profiles
        .iter()
        .find(|p| p.kind == ProfileKind::Offcpu)
    {
        accounting.classes_from(p);
    }
    write(
        &dir.join("threads.json"),
        serde_json::to_vec_pretty(&accounting).unwrap_or_default(),
    )?;

    facts.accounting = Some(accounting.clone());
    write(
        &dir.join("summary.json"),
        crate::report::json::render(&facts, &written.profiles),
    )?;

    let by_kind =
        |k: ProfileKind| -> Option<&Profile> { written.profiles.iter().find(|p| p.kind == k) };
    let last_dump = dump_end.as_ref().or(dump_start.as_ref());
    let input = TriageInput {
        duration: elapsed,
        cpus,
        cpu: by_kind(ProfileKind::Cpu),
        offcpu: by_kind(ProfileKind::Offcpu),
        block: by_kind(ProfileKind::Block),
        mutex: by_kind(ProfileKind::Mutex),
        runq,
        counters: counters.clone(),
        thread_counts: samples.iter().map(|(t, n, _)| (*t, *n)).collect(),
        deadlocks: last_dump
            .map(|d| d.deadlocks.iter().map(|c| c.description.clone()).collect())
            .unwrap_or_default(),
        accounting: Some(&accounting),
        dump_end: dump_end.as_ref(),
        goroutines_start: goroutines_start.as_ref(),
        goroutines: goroutines_end.as_ref().or(goroutines_start.as_ref()),
        threads_by_state: last_dump
            .map(|d| {
                d.summary
                    .by_state
                    .iter()
                    .map(|s| (s.state.label().to_string(), s.count as u32))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let what = if group.selector.is_group() {
        format!(
            "{} ({} processes, led by pid {} {})",
            group.selector.describe(),
            members.len(),
            target.pid,
            target.comm
        )
    } else {
        format!("pid {} ({})", target.pid, target.comm)
    };
    let findings = triage::diagnose(&input);
    let diagnosis = triage::render_markdown(&input, &findings);

    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Stallscope capture: {}\n\nWindow: {}; {} CPUs. Bundle written by `agent capture`.\n",
        what,
        end_text(end, elapsed, args.duration),
        cpus
    );
    md.push_str(&diagnosis);
    if let Some(g) = input.goroutines {
        let _ = writeln!(
            md,
            "## Goroutines by state ({} in all; goroutines-end.txt)\n\n| state | goroutines |\n|---|---|",
            g.total
        );
        for (st, n) in &g.by_state {
            let _ = writeln!(md, "| {st} | {n} |");
        }
        let _ = writeln!(md, "\nLargest groups (same state, place and creator):\n");
        for x in g.groups.iter().take(5) {
            let _ = writeln!(
                md,
                "- {} in {} at {}{}",
                x.count,
                x.state,
                x.at,
                x.created_by
                    .as_deref()
                    .map(|c| format!(", created by {c}"))
                    .unwrap_or_default()
            );
        }
        md.push('\n');
    }
    if !input.threads_by_state.is_empty() {
        let _ = writeln!(
            md,
            "## Threads by state (end of window)\n\n| state | threads |\n|---|---|"
        );
        for (s, n) in &input.threads_by_state {
            let _ = writeln!(md, "| {s} | {n} |");
        }
        if let Some(d) = last_dump {
            let _ = writeln!(md, "\nLongest blocked:\n");
            for b in d.summary.longest_blocked.iter().take(5) {
                let _ = writeln!(
                    md,
                    "- thread {} \"{}\": {} for {}",
                    b.tid,
                    b.name,
                    b.state.label(),
                    report::human_ns(b.in_state_ns)
                );
            }
        }
        md.push('\n');
    }
    let _ = writeln!(md, "## Profiles\n");
    for sec in &written.sections {
        let _ = writeln!(md, "```\n{}```\n", sec);
    }
    let _ = writeln!(md, "## Accounting\n");
    let _ = writeln!(md, "- {}", accounting.line());
    for c in report::counter_comments(&counters) {
        let _ = writeln!(md, "- {c}");
    }
    for n in &notes {
        let _ = writeln!(md, "- note: {n}");
    }
    let _ = writeln!(
        md,
        "\nOpen the profiles with `go tool pprof -http=: {}/cpu.pb.gz` (or offcpu, block, mutex); `manifest.json` lists every file.",
        dir.display()
    );
    write(&dir.join("summary.md"), &md)?;

    let mut files = Vec::new();
    list_files(&dir, &dir, &mut files);
    files.push(PathBuf::from("manifest.json"));
    let manifest = Manifest {
        tool: format!("stallscope agent {}", env!("CARGO_PKG_VERSION")),
        pid: target.pid,
        comm: target.comm.clone(),
        started_unix_ms: started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        duration_s: elapsed.as_secs_f64(),
        end: end_text(end, elapsed, args.duration),
        files: files
            .iter()
            .map(|rel| ManifestFile {
                path: rel.to_string_lossy().into_owned(),
                bytes: std::fs::metadata(dir.join(rel))
                    .map(|m| m.len())
                    .unwrap_or(0),
                what: describe(rel),
            })
            .collect(),
    };
    write(
        &dir.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap_or_default(),
    )?;
    if let Some(archive) = &args.archive {
        pack(&dir, archive)?;
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "stallscope capture of {what}: {}",
        end_text(end, elapsed, args.duration)
    );
    out.push_str(&diagnosis);
    let _ = writeln!(
        out,
        "bundle: {} ({} files)",
        dir.display(),
        manifest.files.len()
    );
    if let Some(a) = &args.archive {
        let _ = writeln!(out, "archive: {}", a.display());
    }
    let _ = writeln!(out, "read {}/summary.md first", dir.display());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flame_graphs_are_svg_even_when_empty() {
        let svg = flame_graph("main;work 10\nmain;idle 5\n", "cpu", "samples").unwrap();
        let text = String::from_utf8(svg).unwrap();
        assert!(text.contains("<svg") && text.contains("work"), "{text}");
        let empty = String::from_utf8(flame_graph("", "mutex", "ns").unwrap()).unwrap();
        assert!(empty.contains("no samples"));
    }

    #[test]
    fn pack_round_trips() {
        let tmp = std::env::temp_dir().join(format!("stallscope-pack-{}", std::process::id()));
        let dir = tmp.join("bundle");
        std::fs::create_dir_all(dir.join("proc")).unwrap();
        std::fs::write(dir.join("a.txt"), b"hello").unwrap();
        std::fs::write(dir.join("proc/status"), b"Threads: 3").unwrap();
        let archive = tmp.join("b.tar.gz");
        pack(&dir, &archive).unwrap();
        let gz = flate2::read::GzDecoder::new(std::fs::File::open(&archive).unwrap());
        let mut names: Vec<String> = tar::Archive::new(gz)
            .entries()
            .unwrap()
            .filter_map(|e| {
                let e = e.ok()?;
                if !e.header().entry_type().is_file() {
                    return None;
                }
                Some(e.path().ok()?.to_string_lossy().into_owned())
            })
            .collect();
        names.sort();
        assert_eq!(names, ["bundle/a.txt", "bundle/proc/status"]);
        let _ = std::fs::remove_dir_all(tmp);
    }

    #[test]
    fn a_failed_pack_leaves_no_archive_under_its_name() {
        let tmp = std::env::temp_dir().join(format!("stallscope-nopack-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let archive = tmp.join("b.tar.gz");
        // The bundle folder is missing: the archive fails part-way.
        assert!(pack(&tmp.join("missing"), &archive).is_err());
        assert!(
            !archive.exists(),
            "a failed archive was left under its own name"
        );
        assert!(
            !archive.with_extension("partial").exists(),
            "its partial file was left"
        );
        let _ = std::fs::remove_dir_all(tmp);
    }

    #[test]
    fn files_are_described() {
        assert_eq!(
            describe(Path::new("cpu.pb.gz")),
            "pprof profile (go tool pprof)"
        );
        assert_eq!(
            describe(Path::new("proc/limits")),
            "process facts from /proc"
        );
        assert_eq!(
            describe(Path::new("threads-end.json")),
            "thread dump (JSON, docs/dump-schema.md)"
        );
    }
}
