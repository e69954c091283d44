//! Part 6: attach to first sample: where the time goes (verification, attach), per mode.

use super::*;

/// One `agent attach` start, observed from outside by polling its fd table every few ms.
pub(super) struct AttachTimeline {
    /// Seconds from spawn: first and last map fd before the first program.
    pub(super) maps_done_s: f64,
    /// (seconds from spawn, program id, verified instructions), in load order.
    pub(super) progs: Vec<(f64, u32, u64)>,
    pub(super) attached_s: Option<f64>,
    pub(super) first_sample_s: f64,
    pub(super) names: HashMap<u32, String>,
}

pub(super) struct Latency {
    /// Per (mode key, idle target): the runs.
    pub(super) runs: Vec<(&'static str, bool, Vec<AttachTimeline>)>,
    /// `strace -T -e trace=bpf`: (bpf command, program name) -> (calls, seconds).
    pub(super) strace: Option<BTreeMap<(String, String), (u64, f64)>>,
}

pub(super) fn measure(ctx: &Ctx) -> Result<Latency> {
    let n = if ctx.quick { 3 } else { 5 };
    let mut runs = Vec::new();
    // On the busy ping-pong (the budget), then all profiles on a sleeping process: a machine
    // whose CPUs are free for the verifier, which checks the programs in parallel.
    for (key, idle) in [("cpu", false), ("all", false), ("all", true)] {
        let m = mode(key);
        let mut v = Vec::new();
        for i in 0..n {
            let t = attach_timeline(ctx, m, idle)?;
            println!(
                "   {key}{}: run {}/{n}: {} programs loaded by {:.2} s, first sample at {:.2} s",
                if idle { " (idle target)" } else { "" },
                i + 1,
                t.progs.len(),
                t.progs.last().map_or(0.0, |p| p.0),
                t.first_sample_s
            );
            v.push(t);
        }
        runs.push((key, idle, v));
    }
    let strace = match find_in_path("strace") {
        Some(_) => Some(strace_bpf(ctx, mode("all"))?),
        None => {
            println!("   (strace not installed: no per-syscall load breakdown)");
            None
        }
    };
    Ok(Latency { runs, strace })
}

/// One attach to a busy ping-pong (its switches start the moment a program is attached), or
/// with `idle` to a sleeping process while nothing else runs (the first sample is then the
/// CPU sampler's or the agent's own switch: every CPU is watched).
pub(super) fn attach_timeline(ctx: &Ctx, m: &Mode, idle: bool) -> Result<AttachTimeline> {
    // Both kept (and stopped on drop) until the attach is measured.
    let (target, _busy, _sleeper) = if idle {
        let c = spawn(Command::new("sleep").arg("600").stdin(Stdio::null()))?;
        (c.id(), None, Some(super::redis::Reaped(c)))
    } else {
        let mut w = Workload::start(&Spec::new(&ctx.pingpong, &[100_000_000, 1, 0]))?;
        w.go()?;
        (w.pid(), Some(w), None)
    };
    ctx.stats.set(true)?;
    let result = (|| {
        let (mut tracer, _) = Tracer::agent(ctx, m, target, "latency")?;
        let pid = tracer.pid;
        let start = tracer.started;
        let mut maps: HashMap<String, ()> = HashMap::new();
        let mut maps_done_s = 0.0;
        let mut progs: Vec<(f64, u32, u64)> = Vec::new();
        let mut attached_s = None;
        let first_sample_s = loop {
            check_interrupted()?;
            let now = start.elapsed().as_secs_f64();
            if now > 120.0 {
                bail!(
                    "no sample 120 s after starting the agent: {}",
                    tracer.stderr_tail()
                );
            }
            if attached_s.is_none() && tracer.ready.try_recv().is_ok() {
                attached_s = Some(now);
            }
            // Every fd every time: the loader opens and closes probe fds, so fd numbers are
            // reused; programs are told apart by their id.
            let mut runs = 0;
            for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
            {
                let fd = e.file_name().to_string_lossy().into_owned();
                let Ok(link) = std::fs::read_link(e.path()) else {
                    continue;
                };
                if link.as_os_str() == "anon_inode:bpf-map" {
                    if progs.is_empty() && maps.insert(fd, ()).is_none() {
                        maps_done_s = now;
                    }
                } else if link.as_os_str() == "anon_inode:bpf-prog" {
                    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
                        .unwrap_or_default();
                    if let Some((id, st)) = parse_prog_fdinfo(&info) {
                        if !progs.iter().any(|p| p.1 == id) {
                            progs.push((now, id, st.verified_insns));
                        }
                        runs += st.run_cnt;
                    }
                }
            }
            if runs > 0 {
                break now;
            }
            if let Ok(Some(status)) = tracer.child_status() {
                bail!(
                    "the agent exited ({status}) before its first sample: {}",
                    tracer.stderr_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let names = prog_names();
        // Programs the loader opened only to probe kernel features are gone by now.
        let open = prog_stats(pid);
        progs.retain(|p| open.contains_key(&p.1));
        if attached_s.is_none() {
            // The programs run from the moment they are attached, before the log line.
            attached_s = tracer.wait_ready(Duration::from_secs(30)).ok();
        }
        tracer.interrupt();
        tracer.finish(Duration::from_secs(120))?;
        Ok(AttachTimeline {
            maps_done_s,
            progs,
            attached_s,
            first_sample_s,
            names,
        })
    })();
    ctx.stats.set(false)?;
    result
}

/// Runs one attach under `strace -f -T -e trace=bpf` and sums the time of each bpf command
/// (BPF_PROG_LOAD per program: that is the verifier).
pub(super) fn strace_bpf(ctx: &Ctx, m: &Mode) -> Result<BTreeMap<(String, String), (u64, f64)>> {
    let mut w = Workload::start(&Spec::new(&ctx.pingpong, &[100_000_000, 1, 0]))?;
    w.go()?;
    let log = ctx.dir.join("strace-bpf.txt");
    let out = ctx.dir.join("out").join("strace");
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-T", "-e", "trace=bpf", "-o"])
        .arg(&log)
        .arg(&ctx.agent)
        .args([
            "-v",
            "attach",
            "--pid",
            &w.pid().to_string(),
            "--duration",
            "1s",
        ])
        .args(m.args)
        .arg("-o")
        .arg(&out);
    let tracer = Tracer::start(&mut cmd, "attached to", true)?;
    tracer.wait_ready(Duration::from_secs(120))?;
    tracer.finish(Duration::from_secs(120))?;
    let text = std::fs::read_to_string(&log)?;
    Ok(parse_strace_bpf(&text))
}

pub(super) fn parse_strace_bpf(text: &str) -> BTreeMap<(String, String), (u64, f64)> {
    let mut out: BTreeMap<(String, String), (u64, f64)> = BTreeMap::new();
    for line in text.lines() {
        let Some(call) = line.split_once("bpf(").map(|x| x.1) else {
            continue;
        };
        let cmd = call.split(',').next().unwrap_or("").to_string();
        let name = call
            .split_once("prog_name=\"")
            .and_then(|(_, r)| r.split_once('"'))
            .map_or(String::new(), |(n, _)| n.to_string());
        let secs = line
            .rsplit_once('<')
            .and_then(|(_, r)| r.strip_suffix('>'))
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
        let e = out.entry((cmd, name)).or_default();
        e.0 += 1;
        e.1 += secs;
    }
    out
}

impl Latency {
    pub(super) fn render(&self, s: &mut String) {
        let l = self;
        let _ = writeln!(s, "### 6. Attach to first sample\n");
        let _ = writeln!(
            s,
            "`agent attach` started on a running ping-pong; its fd table and the fdinfo of its \
             program fds polled every 5 ms. \"Programs loaded\": when the last program fd \
             appeared (BPF_PROG_LOAD returns after the verifier). First sample: the first run \
             of any of its programs. Medians of the runs.\n"
        );
        let _ = writeln!(
            s,
            "| profiles | maps created | programs loaded | attached (log line) | first sample |\n|---|---|---|---|---|"
        );
        for (key, idle, runs) in &l.runs {
            let med = |f: &dyn Fn(&AttachTimeline) -> Option<f64>| {
                let v: Vec<f64> = runs.iter().filter_map(f).collect();
                if v.is_empty() {
                    "?".to_string()
                } else {
                    format!("{:.2} s", median(&v))
                }
            };
            let _ = writeln!(
                s,
                "| {}{} | {} | {} | {} | **{}** |",
                mode(key).label,
                if *idle {
                    ", idle target (a sleeping process, nothing else running)"
                } else {
                    ""
                },
                med(&|r| Some(r.maps_done_s)),
                med(&|r| r.progs.last().map(|p| p.0)),
                med(&|r| r.attached_s),
                med(&|r| Some(r.first_sample_s))
            );
        }
        if let Some((_, _, runs)) = l.runs.iter().find(|(k, idle, _)| *k == "all" && !idle)
            && let Some(r) = runs.first()
        {
            let _ = writeln!(
                s,
                "\nPrograms in load order (all profiles, first run): verified instructions \
                 (fdinfo `verified_insns`) and the time since the previous fd appeared.\n\n\
                 | program | verified insns | time to load |\n|---|---|---|"
            );
            let mut prev = r.maps_done_s;
            for (t, id, insns) in &r.progs {
                let name = r.names.get(id).map_or("?", String::as_str);
                let _ = writeln!(s, "| {name} | {insns} | {:.3} s |", t - prev);
                prev = *t;
            }
        }
        if let Some(st) = &l.strace {
            let _ = writeln!(
                s,
                "\n`strace -f -T -e trace=bpf` of one attach (all profiles): time inside each \
                 bpf() command (strace adds some µs per call).\n\n\
                 | bpf command | program | calls | seconds |\n|---|---|---|---|"
            );
            let mut rows: Vec<_> = st.iter().collect();
            rows.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
            for ((cmd, name), (calls, secs)) in rows.iter().take(14) {
                let _ = writeln!(s, "| {cmd} | {name} | {calls} | {secs:.3} |");
            }
        }
        let _ = writeln!(s);
    }
}
