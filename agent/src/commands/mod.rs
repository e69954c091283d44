//! The subcommands, thin layers over the [`crate::window`] engine and the [`crate::dump`] stage;
//! the only modules (with `main`) that read [`crate::cli`]'s arguments.

pub mod attach;
pub mod capture;
pub mod dump;
pub mod serve;
