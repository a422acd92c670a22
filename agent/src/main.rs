//! The `hindsight` binary: parse the command line, set up logging, dispatch, and print any
//! error as its whole chain (`{:#}`) with a non-zero exit code.

use std::process::ExitCode;

use clap::Parser as _;
use hindsight::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let result = match cli.command {
        Command::Profile(args) => hindsight::cli::profile::run(args),
        Command::Baseline(args) => hindsight::cli::baseline::run(args),
        Command::Diff(args) => hindsight::cli::diff::run(args),
        Command::Capture(args) => hindsight::cli::capture::run(args),
        Command::Keygen(args) => hindsight::cli::keygen::run(args),
        Command::Verify(args) => hindsight::cli::verify::run(args),
        Command::Agent(args) => hindsight::cli::agent::run(args),
        Command::Trigger(args) => hindsight::cli::trigger::run(args),
        Command::Preserve(args) => hindsight::cli::preserve::run(args),
        Command::GenerateAssets(args) => hindsight::cli::assets::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("hindsight: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn,hindsight=info",
        1 => "info,hindsight=debug",
        _ => "debug,hindsight=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HINDSIGHT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // No colour codes in the journal (the daemon's stderr under systemd).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
