//! What a person reads at the end of a window:
//! - [`summary`]: the summary text (facts, counters, each profile's top entries, locks);
//! - [`json`]: `summary.json`, the same facts for machines (docs/summary-schema.md);
//! - [`triage`]: the "what looks wrong" findings of `agent capture`'s summary.md.

pub mod json;
pub mod summary;
pub mod triage;
