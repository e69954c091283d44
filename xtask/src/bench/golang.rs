//! Go programs (issue 14): the goroutine dump's time by goroutine count, with the target's
//! progress during it, and what the goroutine-level block and mutex profiles cost a
//! channel-heavy program, next to Go's own block and mutex profiling at rate 1.

use super::*;

/// `agent attach --profile block,mutex` at the default rates, the goroutine probes never
/// detached: what they cost.
const GO_MODE: Mode = Mode {
    key: "go_block_mutex",
    label: "block,mutex (goroutine probes), default rates, --go-probe-limit 0",
    args: &["--profile", "block,mutex", "--go-probe-limit", "0"],
    on_cpu_workload: false,
    serve: false,
};

/// The same with the default `--go-probe-limit`: the probes detach after a second over it.
const GO_MODE_LIMITED: Mode = Mode {
    key: "go_block_mutex_limited",
    label: "block,mutex (goroutine probes), default rates and --go-probe-limit",
    args: &["--profile", "block,mutex"],
    on_cpu_workload: false,
    serve: false,
};

pub(super) struct GoDumpRow {
    pub(super) goroutines: u64,
    pub(super) times: Vec<f64>,
    /// The counting goroutine's progress during the dumps relative to before them.
    pub(super) progress: Option<f64>,
}

pub(super) struct GoChan {
    pub(super) pairs: u64,
    pub(super) handoffs: u64,
    /// Per round: the run without profiling, with Go's own at rate 1, with the agent (no
    /// probe limit), with the agent at its default limit.
    pub(super) base: Vec<Run>,
    pub(super) own: Vec<Run>,
    pub(super) agent: Vec<Run>,
    pub(super) limited: Vec<Run>,
    /// Goroutine waits the agent saw and recorded, per traced run.
    pub(super) events: Vec<(u64, u64)>,
}

pub(super) struct GoFigures {
    pub(super) dumps: Vec<GoDumpRow>,
    pub(super) chan: Option<GoChan>,
}

pub(super) fn measure(ctx: &Ctx) -> Result<GoFigures> {
    let dumps = measure_dumps(ctx)?;
    let chan = measure_chan(ctx)?;
    Ok(GoFigures {
        dumps,
        chan: Some(chan),
    })
}

fn measure_dumps(ctx: &Ctx) -> Result<Vec<GoDumpRow>> {
    let bin = compile_workload("gomany")?;
    let reps = if ctx.quick { 3 } else { 5 };
    let mut rows = Vec::new();
    for goroutines in [10_000u64, 100_000] {
        let counter = ctx.dir.join("gomany_counter");
        let _ = std::fs::remove_file(&counter);
        let mut cmd = Command::new(&bin);
        cmd.arg(goroutines.to_string())
            .arg(&counter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let w = dump::spawn_ready(&mut cmd, "gomany ready")?;
        let read_counter = || -> u64 {
            std::fs::read_to_string(&counter)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        };
        let (times, progress) = dump::time_dumps(ctx, w.pid(), read_counter, reps)?;
        println!(
            "   {goroutines} goroutines: median {:.3} s, counter at {:.0}% of its idle rate",
            median(&times),
            progress.unwrap_or(0.0) * 100.0
        );
        rows.push(GoDumpRow {
            goroutines,
            times,
            progress,
        });
        drop(w);
        let _ = std::fs::remove_file(&counter);
    }
    Ok(rows)
}

fn measure_chan(ctx: &Ctx) -> Result<GoChan> {
    let bin = compile_workload("gochan")?;
    let (pairs, handoffs) = (2u64, if ctx.quick { 100_000 } else { 300_000 });
    let spec = |own: u64| Spec::new(&bin, &[pairs, handoffs, own]);
    let (base_spec, own_spec) = (spec(0), spec(1));
    let mut f = GoChan {
        pairs,
        handoffs,
        base: Vec::new(),
        own: Vec::new(),
        agent: Vec::new(),
        limited: Vec::new(),
        events: Vec::new(),
    };
    for i in 0..ctx.pairs {
        // Each round in a rotated order, so a drift of the machine's load cancels out.
        for k in 0..4 {
            match (i + k) % 4 {
                0 => f.base.push(timed(ctx, &base_spec, &Tool::None, false)?.0),
                1 => f.own.push(timed(ctx, &own_spec, &Tool::None, false)?.0),
                2 => f
                    .limited
                    .push(timed(ctx, &base_spec, &Tool::Agent(&GO_MODE_LIMITED), false)?.0),
                _ => {
                    let (run, cost) = timed(ctx, &base_spec, &Tool::Agent(&GO_MODE), false)?;
                    f.events.push(cost.map_or((0, 0), |c| {
                        (
                            counter(&c.summary, "go_block_events_seen"),
                            counter(&c.summary, "go_block_events_recorded"),
                        )
                    }));
                    f.agent.push(run);
                }
            }
        }
        let last = |v: &[Run]| v.last().map_or(0.0, |r| r.wall);
        let (b, o, a, l) = (
            last(&f.base),
            last(&f.own),
            last(&f.agent),
            last(&f.limited),
        );
        println!(
            "   gochan: round {}/{}: {b:.3} s, Go's own {o:.3} s ({:+.0}%), agent {a:.3} s ({:+.0}%), agent with its limit {l:.3} s ({:+.0}%)",
            i + 1,
            ctx.pairs,
            (o / b - 1.0) * 100.0,
            (a / b - 1.0) * 100.0,
            (l / b - 1.0) * 100.0
        );
    }
    Ok(f)
}

impl GoChan {
    fn ratios(&self, with: &[Run]) -> Vec<f64> {
        self.base
            .iter()
            .zip(with)
            .map(|(b, w)| w.wall / b.wall - 1.0)
            .collect()
    }

    /// (the agent's median slowdown, Go's own): the budget is met when the agent's is no
    /// larger.
    pub(super) fn medians(&self) -> (f64, f64) {
        (
            median(&self.ratios(&self.agent)),
            median(&self.ratios(&self.own)),
        )
    }
}

impl GoFigures {
    pub(super) fn render(&self, s: &mut String) {
        let _ = writeln!(s, "### Go programs (issue 14)\n");
        let _ = writeln!(
            s,
            "`agent dump --pid N` (wall time, text output) of `tests/workloads/gomany` (Debian's \
             Go 1.19): N goroutines parked in a channel receive and one counting; \"progress\": \
             the counting goroutine's rate while dumps run back to back, relative to its rate \
             just before (the process is not stopped).\n\n\
             | goroutines | median | range | progress |\n|---|---|---|---|"
        );
        for r in &self.dumps {
            let (lo, hi) = min_max(&r.times);
            let _ = writeln!(
                s,
                "| {} | {:.3} s | {lo:.3} .. {hi:.3} s | {} |",
                r.goroutines,
                median(&r.times),
                r.progress
                    .map_or("?".into(), |p| format!("{:.0}%", p * 100.0))
            );
        }
        let _ = writeln!(s);
        let Some(c) = &self.chan else { return };
        let (agent, own) = c.medians();
        let base = median(&c.base.iter().map(|r| r.wall).collect::<Vec<_>>());
        let handoffs = (c.pairs * c.handoffs * 2) as f64;
        let cell = |v: &[f64]| {
            let (lo, hi) = min_max(v);
            format!(
                "{:+.0}% ({:+.0}% .. {:+.0}%)",
                median(v) * 100.0,
                lo * 100.0,
                hi * 100.0
            )
        };
        let seen: Vec<f64> = c.events.iter().map(|e| e.0 as f64).collect();
        let _ = writeln!(
            s,
            "`tests/workloads/gochan`: {} pairs of goroutines hand a token over unbuffered \
             channels {} times each way, each hand-off through a `sync.Mutex` too; median of {} \
             rotated rounds (none, Go's own profiling, the agent twice). Without profiling: {:.3} s, \
             {:.0} ns per hand-off. The agent's run is `attach --profile block,mutex` at the \
             default rates, the program's own rates left at 0; it saw {:.0} goroutine waits a \
             run (median).\n\n\
             | profiling | slowdown |\n|---|---|\n\
             | Go's own, `SetBlockProfileRate(1)` + `SetMutexProfileFraction(1)` | {} |\n\
             | the agent, goroutine probes (`--go-probe-limit 0`) | {} |\n\
             | the agent, default `--go-probe-limit` (probes detached after a second over it) | {} |\n",
            c.pairs,
            c.handoffs,
            c.base.len(),
            base,
            base * 1e9 / handoffs,
            median(&seen),
            cell(&c.ratios(&c.own)),
            cell(&c.ratios(&c.agent)),
            cell(&c.ratios(&c.limited)),
        );
        let _ = writeln!(
            s,
            "Budget (no worse than Go's own at rate 1): agent {:+.0}% vs Go's own {:+.0}%: {}.\n",
            agent * 100.0,
            own * 100.0,
            if agent <= own { "met" } else { "**not met**" }
        );
    }
}
