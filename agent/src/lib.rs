//! Hindsight: eBPF host profiling and evidence capture.
//!
//! The two pipelines are visible in the module tree:
//! - profiling: [`bpf`] loads and drains the eBPF programs, [`profile`] aggregates,
//!   symbolizes, folds and renders;
//! - capture (evidence): see ARCHITECTURE.md.
//!
//! [`cli`] maps the command line onto them.

pub mod bpf;
pub mod cli;
pub mod profile;
