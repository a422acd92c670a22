//! `hindsight keygen`: create the minisign key pair that signs evidence archives.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;

use crate::paths;

/// Create an Ed25519 key pair in minisign's format for signing evidence archives.
///
/// The secret key is written unencrypted with mode 0600 (the agent signs unattended);
/// keep it root-only. Give the public key to whoever will check archives: stock
/// `minisign -Vm ARCHIVE -p PUBLIC_KEY` accepts it, as does `hindsight verify`.
/// Existing keys are never overwritten unless --force is given.
///
/// Example:
///   hindsight keygen --secret-key /etc/hindsight/signing.key --public-key hindsight.pub
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct KeygenArgs {
    /// Where to write the secret key.
    #[arg(long, short = 's', value_name = "FILE", default_value = paths::DEFAULT_SIGNING_KEY)]
    pub secret_key: PathBuf,

    /// Where to write the public key.
    #[arg(long, short = 'p', value_name = "FILE", default_value = paths::DEFAULT_PUBLIC_KEY)]
    pub public_key: PathBuf,

    /// Replace existing key files.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: KeygenArgs) -> Result<()> {
    let pk = crate::capture::sign::keygen(&args.secret_key, &args.public_key, args.force)
        .context("keygen failed")?;
    println!("secret key: {} (mode 0600)", args.secret_key.display());
    println!("public key: {}", args.public_key.display());
    println!("public key (for `minisign -P`): {pk}");
    Ok(())
}
