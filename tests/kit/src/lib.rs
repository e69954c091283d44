//! The kit the root integration tests (`tests/`) and the bench (`xtask bench`) share, so that
//! a workload is built, started and cleaned up, and a run is read, the same way in both.
//!
//! It needs neither root nor the agent crate (xtask must build before the agent can): it
//! builds the workloads in `tests/workloads/` ([`workloads`]), starts children that die with
//! the process that started them ([`spawn`]), reads what a run of the agent counted from its
//! `summary.json` ([`summary`]), lays out a fake Kubernetes node of pods in cgroups
//! ([`node`]) and talks HTTP/1 to a server on loopback ([`http`]). Everything returns errors
//! (`anyhow`): the tests turn them into panics, the bench into a failed part.

pub mod http;
pub mod node;
pub mod spawn;
pub mod summary;
pub mod workloads;

use std::path::{Path, PathBuf};

/// The workspace root (two levels above this crate, `tests/kit/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the kit lives at tests/kit below the workspace root")
        .to_path_buf()
}
