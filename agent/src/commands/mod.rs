//! The subcommands, thin layers over the [`crate::window`] engine and the [`crate::dump`] stage;
//! the only modules (with `main`) that read [`crate::cli`]'s arguments.

pub mod attach;
pub mod capture;
pub mod dump;
pub mod serve;

use std::time::Duration;

use crate::{
    model::ProfileKind,
    options::Rates,
    report::summary::{CaptureFacts, GroupFacts},
    window::{Captured, Target},
};

/// What the summary (text and summary.json) says of a finished window, the same for `attach`
/// and `capture`; all but the thread accounting, which the caller adds once the off-CPU
/// profile is symbolized (its lock waits are classed by their stacks).
fn window_facts(
    target: &Target,
    captured: &Captured,
    requested: Duration,
    rates: Rates,
    profiles: &[ProfileKind],
) -> CaptureFacts {
    CaptureFacts {
        pid: target.lead.pid,
        comm: target.lead.comm.clone(),
        requested,
        elapsed: captured.elapsed,
        end: captured.end,
        rates,
        cpus: captured.cpus,
        counters: captured.counters.clone(),
        profiles: profiles.to_vec(),
        runq: captured.runq,
        accounting: None,
        identity: captured.identity.clone(),
        group: target.selector.is_group().then(|| GroupFacts {
            selector: target.selector.describe(),
            members: captured.members.clone(),
        }),
    }
}
