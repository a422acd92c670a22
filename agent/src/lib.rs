//! Hindsight: eBPF host profiling and evidence capture.
//!
//! The two pipelines are visible in the module tree:
//! - profiling: [`bpf`] loads and drains the eBPF programs, [`profile`] aggregates,
//!   symbolizes, folds and renders;
//! - capture (evidence): [`capture`] runs collectors into a signed archive, configured
//!   by [`config`], with default locations in [`paths`]; see ARCHITECTURE.md.
//!
//! [`recorder`] keeps the last minutes of profiles in the daemon for every capture.
//! [`daemon`] serves both over an HTTP API (unix socket, mutual TLS) for `hindsight
//! agent`, and [`cli`] maps the command line onto them.

pub mod bpf;
pub mod capture;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod history;
pub mod paths;
pub mod profile;
pub mod recorder;
pub mod triggers;
