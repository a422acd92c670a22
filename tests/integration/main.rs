//! Hindsight's integration tests: one test binary, one module per suite. They run the real
//! `hindsight` binary against fixture workloads built from source (tests/fixtures), load
//! eBPF into the running kernel, and so need root; run them with `cargo +stable xtask test`.

mod capture;
mod daemon;
mod history;
mod labs;
mod profile;
mod recorder;
mod support;
mod triggers;
mod unwind;
