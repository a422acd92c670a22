//! Command-line interface: one module per subcommand. Each parses its flags (clap derive)
//! into the library's request types and runs them; nothing here owns data.

pub mod agent;
pub mod assets;
pub mod baseline;
pub mod capture;
pub mod diff;
pub mod keygen;
pub mod preserve;
pub mod profile;
pub mod trigger;
pub mod verify;

use clap::{Parser, Subcommand};

/// Hindsight: eBPF host profiler and evidence-capture agent.
#[derive(Parser, Debug)]
#[command(name = "hindsight", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// More log output on stderr (-v: debug, -vv: trace). HINDSIGHT_LOG overrides, with
    /// tracing's filter syntax.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    Profile(profile::ProfileArgs),
    Baseline(baseline::BaselineArgs),
    Diff(diff::DiffArgs),
    Capture(capture::CaptureArgs),
    Keygen(keygen::KeygenArgs),
    Verify(verify::VerifyArgs),
    Agent(agent::AgentArgs),
    Trigger(trigger::TriggerArgs),
    Preserve(preserve::PreserveArgs),
    /// Write man pages and shell completions (used by `cargo xtask package`).
    #[command(hide = true)]
    GenerateAssets(assets::AssetsArgs),
}
