//! `hindsight generate-assets` (hidden): man pages and shell completions generated from
//! the clap definitions, for `cargo xtask package`.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

/// Write man pages (man/hindsight.1, man/hindsight-SUBCOMMAND.1) and shell completions
/// (completions/hindsight.bash, _hindsight, hindsight.fish) into a directory.
#[derive(Args, Debug)]
pub struct AssetsArgs {
    /// Output directory (created).
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
}

pub fn run(args: AssetsArgs) -> Result<()> {
    let man = args.out_dir.join("man");
    let completions = args.out_dir.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let cmd = super::Cli::command();
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("writing man pages to {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "hindsight", &completions)
            .with_context(|| format!("writing {shell} completions"))?;
    }
    Ok(())
}
