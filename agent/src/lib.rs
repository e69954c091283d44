//! Stallscope's agent as a library, so integration tests and benchmarks can use its parts.
//!
//! Data flows one way (docs/ARCHITECTURE.md): `collect` (the only module that touches aya)
//! → `model` (plain data) → `symbolize` (blazesym) → `export` (pprof, folded, top table).

pub mod accounting;
pub mod attach;
pub mod bundle;
pub mod cli;
pub mod collect;
pub mod dump;
pub mod error;
pub mod export;
pub mod kbtf;
pub mod locks;
pub mod model;
pub mod procmaps;
pub mod profiles;
pub mod report;
pub mod serve;
pub mod symbolize;
pub mod system;
pub mod triage;
pub mod unwind;
pub mod unwinder;
