//! `summary.json`: the machine-readable twin of the summary text (docs/summary-schema.md), written
//! by `attach` and `capture` beside the profiles. Tests, the bench and scripts read this rather
//! than the human text, whose wording may change.

use serde::Serialize;

use crate::{
    kernel::Counters,
    model::{Profile, ProfileKind},
    options::Rates,
    profiles::accounting::Accounting,
    report::summary::{self, CaptureFacts, EndReason},
};

/// Bumped when a field changes meaning or goes; new fields may be added without a bump.
pub const SCHEMA_VERSION: u32 = 1;

/// Rows of each profile's `top` list.
const TOP: usize = 10;

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub schema_version: u32,
    pub pid: u32,
    pub comm: String,
    pub requested_s: f64,
    pub elapsed_s: f64,
    /// `completed`, `interrupted` or `target_exited`.
    pub end: &'static str,
    pub profiles: Vec<&'static str>,
    pub rates: Rates,
    /// CPUs the sampler ran on (0 without a CPU profile).
    pub cpus: usize,
    /// The target's container, pod and PID-namespace pid (fields absent outside one).
    pub identity: crate::identity::Identity,
    /// A group's window: what was asked for and every process recorded (absent for one
    /// process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<crate::report::summary::GroupFacts>,
    /// Every counter by name (`stallscope_common::Counter`): events, drops, lost stacks, unwinding.
    pub counters: Counters,
    /// The window's thread-seconds (`threads.json` has them per thread); absent when the
    /// threads could not be read.
    pub accounting: Option<serde_json::Value>,
    pub runq: Option<Runq>,
    /// Each profile written: its total and its largest stacks.
    pub profile_tops: Vec<ProfileTop>,
}

/// summary.json's `accounting`: the totals of threads.json (the same [`Accounting`] fields,
/// so the two never disagree), with its threads counted instead of listed: `threads`, and
/// `seeded_threads` (already off CPU when the window opened: their waits were seeded).
fn accounting_totals(a: &Accounting) -> serde_json::Value {
    let mut v = serde_json::to_value(a).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.insert("threads".into(), a.threads.len().into());
        let seeded = a.threads.iter().filter(|t| t.seeded).count();
        m.insert("seeded_threads".into(), seeded.into());
    }
    v
}

#[derive(Debug, Clone, Serialize)]
pub struct Runq {
    pub waits: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProfileTop {
    pub kind: &'static str,
    /// The sample type the totals are in (`cpu`, `off-cpu`, `delay`...) and its unit.
    pub sample_type: String,
    pub unit: String,
    pub total: i64,
    pub samples: usize,
    pub top: Vec<TopStack>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopStack {
    pub value: i64,
    /// Innermost frames first, as the summary text shows them.
    pub stack: String,
    pub thread: Option<String>,
    pub wait_class: Option<String>,
}

fn end_name(e: EndReason) -> &'static str {
    match e {
        EndReason::Completed => "completed",
        EndReason::Interrupted => "interrupted",
        EndReason::TargetExited => "target_exited",
    }
}

fn top_of(p: &Profile) -> ProfileTop {
    let vi = summary::main_value_index(p);
    let (sample_type, unit) = p
        .sample_types
        .get(vi)
        .map(|t| (t.r#type.clone(), t.unit.clone()))
        .unwrap_or_default();
    let mut order: Vec<usize> = (0..p.samples.len()).collect();
    let value = |i: usize| p.samples[i].values.get(vi).copied().unwrap_or(0);
    order.sort_by_key(|&i| std::cmp::Reverse(value(i)));
    ProfileTop {
        kind: p.kind.name(),
        sample_type,
        unit,
        total: p
            .samples
            .iter()
            .map(|s| s.values.get(vi).copied().unwrap_or(0))
            .sum(),
        samples: p.samples.len(),
        top: order
            .into_iter()
            .take(TOP)
            .map(|i| {
                let s = &p.samples[i];
                TopStack {
                    value: value(i),
                    stack: summary::stack_brief(p, s, 8),
                    thread: summary::label_of(s, "thread"),
                    wait_class: summary::wait_class_of(s),
                }
            })
            .collect(),
    }
}

/// The summary of one window, from the facts the text is made of and the profiles as written.
pub fn summary(f: &CaptureFacts, profiles: &[Profile]) -> Summary {
    Summary {
        schema_version: SCHEMA_VERSION,
        pid: f.pid,
        comm: f.comm.clone(),
        requested_s: f.requested.as_secs_f64(),
        elapsed_s: f.elapsed.as_secs_f64(),
        end: end_name(f.end),
        profiles: f.profiles.iter().map(|k: &ProfileKind| k.name()).collect(),
        rates: f.rates,
        cpus: f.cpus,
        identity: f.identity.clone(),
        group: f.group.clone(),
        counters: f.counters.clone(),
        accounting: f.accounting.as_ref().map(accounting_totals),
        runq: f.runq.map(|r| Runq {
            waits: r.count,
            p50_ns: r.p50_ns,
            p99_ns: r.p99_ns,
            max_ns: r.max_ns,
        }),
        profile_tops: profiles.iter().map(top_of).collect(),
    }
}

/// The counters table of docs/summary-schema.md, from [`Counter::info`] (a unit test keeps the
/// document equal to it).
pub fn counters_table() -> String {
    let mut t = String::from("| counter | group | what it counts |\n|---|---|---|\n");
    for c in stallscope_common::Counter::ALL {
        let i = c.info();
        t.push_str(&format!("| `{}` | {:?} | {} |\n", i.name, i.group, i.help));
    }
    t
}

/// `summary` as pretty JSON.
pub fn render(f: &CaptureFacts, profiles: &[Profile]) -> String {
    serde_json::to_string_pretty(&summary(f, profiles)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::summary::tests::{labels, stacked};
    use stallscope_common::Counter;

    fn facts_and_offcpu_profile() -> (CaptureFacts, Profile) {
        let mut counters = Counters::default();
        counters.set(Counter::CpuSamples, 400);
        counters.set(Counter::SwitchMissed, 2);
        let f = summary::tests::facts(counters, vec![ProfileKind::Offcpu]);
        let p = stacked(
            ProfileKind::Offcpu,
            &[("off-cpu", "nanoseconds")],
            vec![
                (
                    vec!["a@/s/a.c:1"],
                    5,
                    labels("t1", 1, &[("wait_class", "io")]),
                ),
                (
                    vec!["b@/s/b.c:2"],
                    9,
                    labels("t2", 2, &[("wait_class", "lock")]),
                ),
                (vec!["c@/s/c.c:3"], 7, labels("t3", 3, &[])),
            ],
        );
        (f, p)
    }

    #[test]
    fn the_schema_document_lists_every_counter() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/summary-schema.md"
        ))
        .unwrap();
        let table = counters_table();
        assert!(
            doc.contains(&table),
            "docs/summary-schema.md's counters table differs from Counter::info(); it should read:\n{table}"
        );
    }

    #[test]
    fn counters_by_name_and_tops_by_value() {
        let (f, p) = facts_and_offcpu_profile();
        let v: serde_json::Value =
            serde_json::from_str(&render(&f, std::slice::from_ref(&p))).unwrap();
        assert_eq!(v["schema_version"], SCHEMA_VERSION);
        assert_eq!(v["end"], "target_exited");
        assert_eq!(
            v["counters"]["cpu_samples"],
            f.counters.get(Counter::CpuSamples)
        );
        // Every counter is there, by its one name.
        assert_eq!(v["counters"].as_object().unwrap().len(), Counter::ALL.len());
        let top = &v["profile_tops"][0];
        assert_eq!(top["kind"], "offcpu");
        let values: Vec<i64> = top["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["value"].as_i64().unwrap())
            .collect();
        assert_eq!(values, [9, 7, 5]);
        assert_eq!(top["top"][0]["wait_class"], "lock");
        assert_eq!(top["top"][0]["thread"], "t2");
        assert_eq!(v["counters"]["switch_missed"], 2);
        assert_eq!(
            top["total"].as_i64().unwrap(),
            p.samples
                .iter()
                .map(|s| s.values[summary::main_value_index(&p)])
                .sum::<i64>()
        );
    }

    #[test]
    fn accounting_has_threads_json_totals_with_its_threads_counted() {
        use crate::profiles::accounting::ThreadAccount;
        let (mut f, p) = facts_and_offcpu_profile();
        let thread = |tid, seeded| ThreadAccount {
            tid,
            name: format!("t{tid}"),
            alive_ns: 10,
            oncpu_ns: 4,
            cpu_ns: 3,
            offcpu_ns: 6,
            offcpu_by_class: Default::default(),
            unaccounted_ns: 0,
            seeded,
            created: false,
            exited: false,
            incomplete: false,
        };
        f.accounting = Some(Accounting {
            window_ns: 10,
            threads: vec![thread(1, true), thread(2, false), thread(3, true)],
            thread_ns: 30,
            oncpu_ns: 12,
            cpu_ns: 9,
            offcpu_ns: 18,
            unaccounted_ns: 0,
            offcpu_recorded: true,
        });
        let v: serde_json::Value =
            serde_json::from_str(&render(&f, std::slice::from_ref(&p))).unwrap();
        let a = &v["accounting"];
        assert_eq!(
            (a["threads"].as_u64(), a["seeded_threads"].as_u64()),
            (Some(3), Some(2))
        );
        let whole = serde_json::to_value(f.accounting.as_ref().unwrap()).unwrap();
        for (k, want) in whole.as_object().unwrap() {
            if k != "threads" {
                assert_eq!(&a[k], want, "{k}");
            }
        }
        assert_eq!(
            a.as_object().unwrap().len(),
            whole.as_object().unwrap().len() + 1
        );
    }
}
