//! Thread dump time (`agent dump`) by thread count.

use super::*;

pub(super) struct DumpRow {
    pub(super) threads: u64,
    pub(super) times: Vec<f64>,
    /// The counting thread's progress during the dumps relative to before them.
    pub(super) progress: Option<f64>,
}

pub(super) struct Dump {
    pub(super) rows: Vec<DumpRow>,
    pub(super) missing: Option<String>,
}

pub(super) fn measure(ctx: &Ctx) -> Result<Dump> {
    let missing = |why: &str| Dump {
        rows: Vec::new(),
        missing: Some(why.to_string()),
    };
    if probe(Command::new(&ctx.agent).args(["dump", "--help"])).is_none() {
        return Ok(missing("this agent has no `dump` subcommand yet"));
    }
    let src = workspace_root().join("tests/workloads/dump_many.c");
    if !src.is_file() {
        return Ok(missing(
            "tests/workloads/dump_many.c (its workload) is not there yet",
        ));
    }
    let bin = ctx.dir.join("dump_many");
    gcc(&src, &bin)?;
    let reps = if ctx.quick { 3 } else { 5 };
    let mut rows = Vec::new();
    for threads in [10u64, 100, 1000] {
        let counter = ctx.dir.join("dump_counter");
        let _ = std::fs::remove_file(&counter);
        let mut cmd = Command::new(&bin);
        cmd.arg(threads.to_string())
            .arg(&counter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let w = spawn_ready(&mut cmd, "dump_many ready")?;
        let read_counter = || -> u64 {
            std::fs::read(&counter)
                .ok()
                .and_then(|b| Some(u64::from_ne_bytes(b.get(..8)?.try_into().ok()?)))
                .unwrap_or(0)
        };
        let (times, progress) = time_dumps(ctx, w.pid(), read_counter, reps)?;
        println!(
            "   {threads} threads: median {:.3} s, counter at {:.0}% of its idle rate",
            median(&times),
            progress.unwrap_or(0.0) * 100.0
        );
        rows.push(DumpRow {
            threads,
            times,
            progress,
        });
        drop(w);
        let _ = std::fs::remove_file(&counter);
    }
    Ok(Dump {
        rows,
        missing: None,
    })
}

/// Starts `cmd` (stdout piped) and waits for its "ready".
pub(super) fn spawn_ready(cmd: &mut Command, what: &str) -> Result<Workload> {
    let mut child = spawn(cmd)?;
    let lines = line_reader(child.stdout.take().expect("piped"));
    let w = Workload {
        child,
        stdin: None,
        lines,
        reaped: false,
    };
    wait_line(&w.lines, Duration::from_secs(60), what, |l| l == "ready")?;
    Ok(w)
}

/// `reps` timed `agent dump --pid PID` runs after a warm-up, and the target's progress during
/// them: its counter's rate (read with `read_counter`) relative to its rate just before.
pub(super) fn time_dumps(
    ctx: &Ctx,
    pid: u32,
    read_counter: impl Fn() -> u64,
    reps: usize,
) -> Result<(Vec<f64>, Option<f64>)> {
    let run_dump = || -> Result<f64> {
        let t = Instant::now();
        let mut c = Command::new(&ctx.agent);
        c.args(["dump", "--pid", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let status = spawn(&mut c)?.wait()?;
        if !status.success() {
            bail!("`{}` failed ({status})", display(&c));
        }
        Ok(t.elapsed().as_secs_f64())
    };
    run_dump()?; // warm-up (page cache, symbol files)
    let (c0, t0) = (read_counter(), Instant::now());
    std::thread::sleep(Duration::from_millis(500));
    let rate_idle = read_counter().saturating_sub(c0) as f64 / t0.elapsed().as_secs_f64();
    let mut times = Vec::new();
    let (c1, t1) = (read_counter(), Instant::now());
    for _ in 0..reps {
        check_interrupted()?;
        times.push(run_dump()?);
    }
    let rate_dump = read_counter().saturating_sub(c1) as f64 / t1.elapsed().as_secs_f64();
    Ok((times, (rate_idle > 0.0).then(|| rate_dump / rate_idle)))
}

impl Dump {
    pub(super) fn render(&self, s: &mut String) {
        let d = self;
        let _ = writeln!(s, "### Thread dump time (`agent dump`)\n");
        if let Some(why) = &d.missing {
            let _ = writeln!(s, "Not measured: {why}.\n");
            return;
        }
        let _ = writeln!(
            s,
            "`agent dump --pid N` (wall time from start to exit, text output) on \
             `tests/workloads/dump_many.c` with N waiting threads and one counting thread; \
             \"progress\": the counting thread's rate while dumps run back to back, relative \
             to its rate just before (the process is not stopped).\n\n\
             | threads | median | range | progress |\n|---|---|---|---|"
        );
        for r in &d.rows {
            let (lo, hi) = min_max(&r.times);
            let _ = writeln!(
                s,
                "| {} | {:.3} s | {lo:.3} .. {hi:.3} s | {} |",
                r.threads,
                median(&r.times),
                r.progress
                    .map_or("?".into(), |p| format!("{:.0}%", p * 100.0))
            );
        }
        let _ = writeln!(s);
    }
}
