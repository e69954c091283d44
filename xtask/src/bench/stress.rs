//! Part 4: event rates and drops under stress (switch-heavy workloads, many call paths).

use super::*;

pub(super) struct StressRow {
    pub(super) label: String,
    pub(super) base: Run,
    pub(super) with: Run,
    pub(super) handoffs: u64,
    pub(super) cost: Cost,
}

impl StressRow {
    pub(super) fn switch_outs(&self) -> u64 {
        counter(&self.cost.summary, "offcpu_switch_out")
    }

    pub(super) fn drops(&self) -> u64 {
        losses(&self.cost.summary)
    }

    /// Share of off-CPU time whose stack has no user frame at all (the kernel could not
    /// record the user stack: every thread of the workload is in user code when it blocks).
    pub(super) fn no_user_stack_share(&self) -> Option<f64> {
        self.folded_share(|frames| frames.iter().all(|f| f.ends_with("_[k]")))
    }

    /// Share of off-CPU time charged after a thread exited (its last switch-out, in
    /// `do_task_dead`, opens an interval that nothing closes until the capture ends).
    pub(super) fn after_exit_share(&self) -> Option<f64> {
        self.folded_share(|frames| frames.iter().any(|f| f.starts_with("do_task_dead")))
    }

    /// Share of `offcpu.folded`'s total whose frames (below the wait-class root) match.
    pub(super) fn folded_share(&self, matches: impl Fn(&[&str]) -> bool) -> Option<f64> {
        let dir = self.cost.out_dir.as_ref()?;
        let text = std::fs::read_to_string(dir.join("offcpu.folded")).ok()?;
        let (mut total, mut hit) = (0u64, 0u64);
        for line in text.lines() {
            let Some((stack, v)) = line.rsplit_once(' ') else {
                continue;
            };
            let v: u64 = v.parse().unwrap_or(0);
            let frames: Vec<&str> = stack.split(';').skip(1).collect();
            total += v;
            if matches(&frames) {
                hit += v;
            }
        }
        (total > 0).then(|| hit as f64 / total as f64)
    }
}

pub(super) struct Stress {
    pub(super) rows: Vec<StressRow>,
    pub(super) overflow: Option<StressRow>,
}

pub(super) fn measure(ctx: &Ctx) -> Result<Stress> {
    let m = mode("all_r1");
    let ks: &[u64] = if ctx.quick { &[1, 4] } else { &[1, 2, 4, 8] };
    let mut rows = Vec::new();
    let run = |label: String, spec: Spec, handoffs: u64| -> Result<StressRow> {
        let (base, _) = timed(ctx, &spec, &Tool::None, false)?;
        let (with, cost) = timed(ctx, &spec, &Tool::Agent(m), true)?;
        let row = StressRow {
            label,
            base,
            with,
            handoffs,
            cost: cost.expect("agent run"),
        };
        println!(
            "   {}: {:.0} BPF runs/s, {:.0} target switch-outs/s, drops {}, {:+.1}%",
            row.label,
            row.cost.prog_runs() as f64 / row.cost.window_s,
            row.switch_outs() as f64 / row.cost.window_s,
            row.drops(),
            (with.wall / base.wall - 1.0) * 100.0
        );
        Ok(row)
    };
    for &k in ks {
        let spec = ctx.free_pingpong(k);
        let handoffs = 2 * k * (ctx.free_pingpong_n / k).max(100);
        rows.push(run(format!("{k} ping-pong pair(s)"), spec, handoffs)?);
    }
    // Past the user-stack table (16384 entries): 2^15 call paths, each its own stack.
    let spec = ctx.pingpong(1, 15);
    let overflow = run(
        "1 pair, 32768 distinct call paths".into(),
        spec,
        2 * ctx.pingpong_n,
    )?;
    Ok(Stress {
        rows,
        overflow: Some(overflow),
    })
}

impl Stress {
    pub(super) fn render(&self, s: &mut String) {
        let st = self;
        let _ = writeln!(s, "### 4. Event rates and drops\n");
        let _ = writeln!(
            s,
            "All profiles, every event recorded (`--block-rate 1 --mutex-fraction 1`), more \
             ping-pong pairs for more events, unpinned (the scheduler may keep a pair on one \
             CPU, where hand-offs are fastest); the last row pinned, with 2^15 call paths. \"BPF events/s\": runs of the agent's programs \
             per second (scheduler and syscall events it handles). Drops: the agent's own \
             `losses:` line plus a full lock table. From `offcpu.folded`: \"no user stack\", \
             the share of off-CPU time whose stack has no user frame at all (the workload's \
             threads always block from user code, so the user part was lost); \"after thread \
             exit\", the share charged to stacks in `do_task_dead` (a thread's last switch-out, \
             after which it never runs again).\n"
        );
        let _ = writeln!(
            s,
            "| load | BPF events/s | target switch-outs/s | hand-offs/s (baseline → agent) | target slowdown (wall, CPU) | drops counted | no user stack | after thread exit |\n|---|---|---|---|---|---|---|---|"
        );
        for r in st.rows.iter().chain(&st.overflow) {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.0} | {:.0} → {:.0} | {:+.1}%, {:+.1}% | {} | {} | {} |",
                r.label,
                r.cost.prog_runs() as f64 / r.cost.window_s,
                r.switch_outs() as f64 / r.cost.window_s,
                r.handoffs as f64 / r.base.wall,
                r.handoffs as f64 / r.with.wall,
                (r.with.wall / r.base.wall - 1.0) * 100.0,
                (r.with.cpu / r.base.cpu - 1.0) * 100.0,
                r.drops(),
                pct(r.no_user_stack_share()),
                pct(r.after_exit_share())
            );
        }
        for r in st.rows.iter().filter(|r| r.drops() > 0) {
            let _ = writeln!(s, "\n{}: {}", r.label, losses_text(&r.cost.summary));
        }
        if let Some(o) = &st.overflow {
            let line = losses_text(&o.cost.summary);
            let per = o
                .cost
                .progs
                .get("sched_switch")
                .map_or(0.0, |(ns, c)| *ns as f64 / (*c).max(1) as f64);
            let _ = writeln!(
                s,
                "\nWith 32768 distinct call paths the agent's summary.json counted: {line}; \
                 sched_switch took {per:.0} ns per run at that stack depth.\n"
            );
        }
    }
}
