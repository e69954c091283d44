//! Stallscope's agent as a library, so integration tests and benchmarks can use its parts.
//!
//! The folders follow the data flow (docs/ARCHITECTURE.md); a module imports only the ones
//! above it in this list:
//!
//! - foundation: [`error`], [`system`] (pre-flight checks), [`output`] (files written), [`model`]
//!   (the profile data model), [`options`] (the sampling rates, from clap to the kernel);
//! - [`kernel`]: the only module that touches aya: loads the BPF programs, reads their maps into
//!   plain records, runs the task iterator;
//! - [`unwind`]: the target's mappings and the CFI tables the BPF unwinder searches;
//! - [`gopclntab`]: a Go binary's own function and line table, for stripped Go binaries;
//! - [`symbolize`]: addresses to functions, files and lines (blazesym, then `gopclntab`);
//! - [`dump`]: thread dumps: every thread's state, stack and wait object;
//! - [`profiles`]: records to profiles by kind, the thread-seconds accounting, lock analysis;
//! - [`export`]: pprof, folded stacks, the top table;
//! - [`report`]: the human summary and the triage;
//! - [`window`]: the capture window engine every command runs;
//! - [`commands`] and [`cli`]: `attach`, `capture`, `dump`, `serve` over the engine.

pub mod cli;
pub mod commands;
pub mod dump;
pub mod error;
pub mod export;
pub mod gopclntab;
pub mod identity;
pub mod kernel;
pub mod model;
pub mod options;
pub mod output;
pub mod profiles;
pub mod report;
pub mod symbolize;
pub mod system;
pub mod targets;
pub mod unwind;
pub mod window;
