//! Part 7: the reference: bpftrace with empty programs on the agent's hooks (the floor).

use super::*;

pub(super) struct Bpftrace {
    pub(super) pairs: Option<Pairs>,
    pub(super) instrumented: Option<Cost>,
    /// ns per run of an empty program (`BPFTRACE_EMPTY`).
    pub(super) floor_ns: Option<f64>,
    /// The ping-pong with empty programs on the agent's hooks (`BPFTRACE_HOOKS`).
    pub(super) hooks: Option<Pairs>,
    pub(super) missing: Option<String>,
}

impl Report {
    /// ns per run of a program that does nothing, when measured.
    pub(super) fn floor_ns(&self) -> Option<f64> {
        self.bpftrace.as_ref()?.floor_ns
    }
}

pub(super) fn measure(ctx: &Ctx) -> Result<Bpftrace> {
    for tool in ["bpftrace", "unshare"] {
        if find_in_path(tool).is_none() {
            return Ok(Bpftrace {
                pairs: None,
                instrumented: None,
                floor_ns: None,
                hooks: None,
                missing: Some(format!("{tool} is not installed (`cargo xtask setup`)")),
            });
        }
    }
    // On one CPU, where the cost per switch shows fully (compared with the same regime).
    let pp = ctx.one_cpu_pingpong();
    let tool = Tool::Bpftrace(&BPFTRACE_OFFCPU);
    let offcpu_pairs = pairs(ctx, "ping-pong, bpftrace off-CPU", &pp, &tool)?;
    let (_, cost) = timed(ctx, &pp, &tool, true)?;
    let (_, empty) = timed(ctx, &pp, &Tool::Bpftrace(&BPFTRACE_EMPTY), true)?;
    let floor_ns = empty.and_then(|c| {
        let (ns, n) = c.progs.values().max_by_key(|v| v.1)?;
        Some(*ns as f64 / (*n).max(1) as f64)
    });
    println!("   empty program: {floor_ns:?} ns per run");
    let hooks = pairs(
        ctx,
        "ping-pong, empty programs on the agent's hooks",
        &pp,
        &Tool::Bpftrace(&BPFTRACE_HOOKS),
    )?;
    Ok(Bpftrace {
        pairs: Some(offcpu_pairs),
        instrumented: cost,
        floor_ns,
        hooks: Some(hooks),
        missing: None,
    })
}

impl Bpftrace {
    pub(super) fn render(&self, s: &mut String, agent_off: Option<&ModeFigures>) {
        let b = self;
        let _ = writeln!(s, "### 7. Reference: bpftrace\n");
        if let Some(why) = &b.missing {
            let _ = writeln!(s, "Not measured: {why}.\n");
            return;
        }
        let _ = writeln!(
            s,
            "bpftrace {} aggregating off-CPU time by (kernel stack, user stack) of the \
             ping-pong's threads on `sched_switch` (script below), on the one-CPU ping-pong, \
             same pairs protocol, against the agent's `offcpu only` on the same workload \
             (which also classifies waits and unwinds user stacks with DWARF CFI; bpftrace's \
             `ustack` follows frame pointers). BPF ns per run: from the runs with statistics \
             (bpftrace on one CPU, the agent on two).\n",
            probe(Command::new("bpftrace").arg("--version"))
                .unwrap_or_default()
                .trim()
                .trim_start_matches("bpftrace ")
        );
        let _ = writeln!(
            s,
            "| tracer | ping-pong slowdown | CPU during capture | peak RSS | ready after | BPF ns per run (sched_switch) |\n|---|---|---|---|---|---|"
        );
        if let (Some(p), Some(c)) = (&b.pairs, &b.instrumented) {
            let per = c
                .progs
                .values()
                .max_by_key(|v| v.1)
                .map_or(0.0, |(ns, n)| *ns as f64 / (*n).max(1) as f64);
            let _ = writeln!(
                s,
                "| bpftrace | {} | {:.1}% | {:.0} MiB | {:.2} s | {per:.0} |",
                p.cell(),
                p.median_cost(Cost::cpu_share) * 100.0,
                p.median_cost(|c| c.maxrss_kib as f64) / 1024.0,
                p.median_cost(|c| c.ready_s)
            );
        }
        if let Some(m) = agent_off {
            let per = m
                .instrumented
                .progs
                .get("sched_switch")
                .map_or(0.0, |(ns, n)| *ns as f64 / (*n).max(1) as f64);
            let _ = writeln!(
                s,
                "| agent, offcpu only | {} | {:.1}% | {:.0} MiB | {:.2} s | {per:.0} |",
                m.one_cpu.cell(),
                m.one_cpu.median_cost(Cost::cpu_share) * 100.0,
                m.one_cpu.median_cost(|c| c.maxrss_kib as f64) / 1024.0,
                m.one_cpu.median_cost(|c| c.ready_s)
            );
        }
        if let Some(p) = &b.hooks {
            let _ = writeln!(
                s,
                "| bpftrace, empty programs on sched_switch, sched_waking, sched_wakeup_new | {} | {:.1}% | {:.0} MiB | {:.2} s | — |",
                p.cell(),
                p.median_cost(Cost::cpu_share) * 100.0,
                p.median_cost(|c| c.maxrss_kib as f64) / 1024.0,
                p.median_cost(|c| c.ready_s)
            );
        }
        let _ = writeln!(
            s,
            "\nThe empty programs do nothing but run: what any tracer of these three events \
             pays on this regime before it records anything (perf tracepoints, which also fill \
             an event record; the agent's BTF tracepoints do not, and its own floor is the \
             non-target figure in section 2).\n\n```\n{}```\n\n```\n{}```\n",
            BPFTRACE_OFFCPU_TEXT, BPFTRACE_HOOKS_TEXT
        );
    }
}
