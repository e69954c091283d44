//! Parts 1-3 and 2b: the target slowdown per mode (interleaved pairs), the BPF time per event,
//! the agent's own CPU and memory, and the cost a non-target pays.

use super::*;

pub(super) struct ModeFigures {
    pub(super) mode: &'static Mode,
    /// The ping-pong across two CPUs.
    pub(super) pingpong: Pairs,
    /// The ping-pong on one CPU.
    pub(super) one_cpu: Pairs,
    /// The ping-pong left to the scheduler (only for `UNPINNED_MODES`).
    pub(super) unpinned: Option<Pairs>,
    pub(super) cpu_bound: Option<Pairs>,
    /// One more ping-pong run with bpf_stats on (BPF time per event).
    pub(super) instrumented: Cost,
    /// The same on the CPU-bound workload, for the modes that sample CPU.
    pub(super) instrumented_cpu: Option<Cost>,
}

pub(super) struct Slowdown {
    pub(super) modes: Vec<ModeFigures>,
    /// Hand-offs per run of the two-CPU ping-pong, of the one-CPU one and of the unpinned one.
    pub(super) handoffs: u64,
    pub(super) one_cpu_handoffs: u64,
    pub(super) unpinned_handoffs: u64,
    /// The agent has no `serve` subcommand (the serve idle mode was skipped).
    pub(super) serve_missing: bool,
}

/// The modes also measured on the unpinned ping-pong (issue 13's budget names it for all
/// profiles; the others would add their run time for little).
pub(super) const UNPINNED_MODES: &[&str] = &["all", "all_r1"];

pub(super) fn measure(ctx: &Ctx) -> Result<Slowdown> {
    let pp = ctx.pingpong(1, 0);
    let one = ctx.one_cpu_pingpong();
    let free = ctx.free_pingpong(1);
    let cpu = ctx.cpu_bound();
    let mut modes = Vec::new();
    let mut serve_missing = false;
    for &m in &ctx.modes {
        if m.serve && probe(Command::new(&ctx.agent).args(["serve", "--help"])).is_none() {
            serve_missing = true;
            continue;
        }
        let tool = Tool::Agent(m);
        let pingpong = pairs(ctx, &format!("ping-pong, {}", m.key), &pp, &tool)?;
        let one_cpu = pairs(ctx, &format!("ping-pong 1 CPU, {}", m.key), &one, &tool)?;
        let unpinned = match UNPINNED_MODES.contains(&m.key) {
            true => Some(pairs(
                ctx,
                &format!("ping-pong unpinned, {}", m.key),
                &free,
                &tool,
            )?),
            false => None,
        };
        let cpu_bound = match m.on_cpu_workload {
            true => Some(pairs(
                ctx,
                &format!("cpu-bound, {}", m.key),
                &cpu,
                &Tool::Agent(m),
            )?),
            false => None,
        };
        let (_, cost) = timed(ctx, &pp, &Tool::Agent(m), true)?;
        // `agent attach` modes' args start with `--profile LIST`.
        let instrumented_cpu = match m.args.get(1).is_some_and(|p| p.contains("cpu")) {
            true => timed(ctx, &cpu, &Tool::Agent(m), true)?.1,
            false => None,
        };
        modes.push(ModeFigures {
            mode: m,
            pingpong,
            one_cpu,
            unpinned,
            cpu_bound,
            instrumented: cost.expect("agent run"),
            instrumented_cpu,
        });
    }
    Ok(Slowdown {
        modes,
        handoffs: 2 * ctx.pingpong_n,
        one_cpu_handoffs: 2 * ctx.one_cpu_n,
        unpinned_handoffs: 2 * ctx.free_pingpong_n,
        serve_missing,
    })
}

// ---------------------------------------------------------------------------------------------
// 2b. Non-target events

pub(super) struct Nontarget {
    pub(super) pairs: Pairs,
    pub(super) instrumented: Cost,
}

pub(super) fn measure_nontarget(ctx: &Ctx) -> Result<Nontarget> {
    // On one CPU, where the cost per switch shows fully.
    let pp = ctx.one_cpu_pingpong();
    let tool = Tool::AgentElsewhere(mode("all_r1"));
    let pairs = pairs(ctx, "ping-pong, not the target", &pp, &tool)?;
    let (_, cost) = timed(ctx, &pp, &tool, true)?;
    Ok(Nontarget {
        pairs,
        instrumented: cost.expect("agent run"),
    })
}

impl Slowdown {
    pub(super) fn render(&self, s: &mut String) {
        let sl = self;
        let _ = writeln!(s, "### 1. Target slowdown\n");
        let _ = writeln!(
            s,
            "Each cell: the median wall-time slowdown (range over the pairs; baseline median \
             time), then the median change of the workload's CPU time (user+system of the \
             process from `wait4`, which includes the BPF programs run in its threads' context). \
             Positive: slower or costlier with the agent. The ping-pong runs in two regimes: \
             its threads on two CPUs (about {:.0}k hand-offs/s here; every hand-off wakes the \
             other, often idle, CPU, whose wake-up latency in this VM dominates and partly \
             hides the agent's cost) and on one CPU (about {:.0}k hand-offs/s; a hand-off is a \
             direct switch, so the agent's cost per switch shows fully). Unpinned, the \
             scheduler moves between the two{}.\n",
            sl.handoffs as f64
                / median(
                    &sl.modes.first().map_or(vec![], |m| m
                        .pingpong
                        .base
                        .iter()
                        .map(|r| r.wall)
                        .collect())
                )
                / 1000.0,
            sl.one_cpu_handoffs as f64
                / median(
                    &sl.modes.first().map_or(vec![], |m| m
                        .one_cpu
                        .base
                        .iter()
                        .map(|r| r.wall)
                        .collect())
                )
                / 1000.0,
            sl.modes
                .iter()
                .find_map(|m| m.unpinned.as_ref())
                .map_or(String::new(), |p| format!(
                    " (measured for {}: about {:.0}k hand-offs/s, and the run times jump \
                     between the regimes, so its range is wide)",
                    UNPINNED_MODES.join(" and "),
                    sl.unpinned_handoffs as f64
                        / median(&p.base.iter().map(|r| r.wall).collect::<Vec<_>>())
                        / 1000.0
                )),
        );
        let _ = writeln!(
            s,
            "| mode | ping-pong, two CPUs | ping-pong, one CPU | ping-pong, unpinned | CPU-bound |\n|---|---|---|---|---|"
        );
        let both = |p: &Pairs| format!("{}; CPU {:+.1}%", p.cell(), p.cpu_slowdown() * 100.0);
        for m in &sl.modes {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                m.mode.label,
                both(&m.pingpong),
                both(&m.one_cpu),
                m.unpinned.as_ref().map_or("—".into(), both),
                m.cpu_bound.as_ref().map_or("—".into(), both),
            );
        }
        if sl.serve_missing {
            let _ = writeln!(
                s,
                "| serve idle | n/a: this agent has no `serve` subcommand | n/a | — | n/a |"
            );
        }
        let _ = writeln!(s);
    }

    pub(super) fn render_bpf(
        &self,
        s: &mut String,
        nontarget: Option<&Nontarget>,
        floor_ns: Option<f64>,
    ) {
        let sl = self;
        let _ = writeln!(s, "### 2. BPF time per event\n");
        let _ = writeln!(
            s,
            "From `bpf_stats_enabled` (run_time_ns / run_cnt of each program over the workload's \
             run, one extra run per mode with the statistics on; they add two clock reads per \
             run, included here{}). Target: the ping-pong is the agent's target (a program run \
             may still be for another task, e.g. the idle task a target switches to). \
             \"per hand-off\": all programs' time divided by the {} token hand-offs.\n",
            floor_ns.map_or(String::new(), |f| format!(
                ": an empty program measures {f:.0} ns per run this way"
            )),
            sl.handoffs
        );
        let _ = writeln!(s, "| mode | program | runs/s | ns/run |\n|---|---|---|---|");
        for m in &sl.modes {
            let c = &m.instrumented;
            c.prog_rows(&format!("{} | ", m.mode.key), s);
            let _ = writeln!(
                s,
                "| {} | **all programs, per hand-off** | {:.0} hand-offs/s | **{:.0}** ({:.1}% of a hand-off's wall time) |",
                m.mode.key,
                sl.handoffs as f64 / c.window_s,
                c.prog_ns() as f64 / sl.handoffs as f64,
                c.prog_ns() as f64 / 1e9 / c.window_s * 100.0
            );
        }
        let cpu_rows: Vec<_> = sl
            .modes
            .iter()
            .filter_map(|m| Some((m.mode.key, m.instrumented_cpu.as_ref()?)))
            .collect();
        if !cpu_rows.is_empty() {
            let _ = writeln!(
                s,
                "\nCPU-bound workload (cpu_sample on a target's busy threads):\n\n| mode | program | runs/s | ns/run |\n|---|---|---|---|"
            );
            for (key, c) in cpu_rows {
                c.prog_rows(&format!("{key} | "), s);
            }
        }
        if let Some(n) = &nontarget {
            let _ = writeln!(
                s,
                "\nNon-target events: the agent (all profiles, every event) attached to an idle \
                 process while the one-CPU ping-pong, not its target, runs. Its slowdown: \
                 {} wall, {} CPU.\n\n| program | runs/s | ns/run |\n|---|---|---|",
                n.pairs.cell(),
                n.pairs.cpu_cell()
            );
            n.instrumented.prog_rows("", s);
        }
        let _ = writeln!(s);
    }

    pub(super) fn render_agent_cost(&self, s: &mut String) {
        let sl = self;
        let _ = writeln!(s, "### 3. Agent CPU and memory\n");
        let _ = writeln!(
            s,
            "Medians over the pairs' agent runs. \"During capture\": CPU of all the agent's \
             threads while the workload runs (`/proc/PID/task/*/schedstat`), as a share of \
             one core. \"Whole run\": user+system CPU of the agent process from start to exit \
             (load and verify the programs, capture, read maps, symbolize, write), and its \
             peak RSS (`getrusage` of the child). RSS during capture: VmRSS at the workload's \
             end.\n"
        );
        let _ = writeln!(
            s,
            "| mode | workload | CPU during capture (% of one core) | CPU whole run (s) | RSS during capture (MiB) | peak RSS (MiB) |\n|---|---|---|---|---|---|"
        );
        for m in &sl.modes {
            for (name, p) in [
                ("ping-pong", Some(&m.pingpong)),
                ("CPU-bound", m.cpu_bound.as_ref()),
            ] {
                let Some(p) = p else { continue };
                let _ = writeln!(
                    s,
                    "| {} | {name} | {:.1} | {:.2} | {:.1} | {:.1} |",
                    m.mode.key,
                    p.median_cost(Cost::cpu_share) * 100.0,
                    p.median_cost(|c| c.total_cpu_s),
                    p.median_cost(|c| c.rss_kib as f64) / 1024.0,
                    p.median_cost(|c| c.maxrss_kib as f64) / 1024.0
                );
            }
        }
        let _ = writeln!(s);
    }
}
