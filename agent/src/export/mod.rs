//! Writers for symbolized profiles.
pub mod folded;
pub mod pprof;
pub mod top;
