//! `hindsight verify`: check an evidence archive's signature and every member.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::Args;

/// Check an evidence archive: its minisign signature (and the manifest hash the signature
/// vouches for), then every member against MANIFEST.json and SHA256SUMS.
///
/// Prints each problem on its own line, naming the member that is missing, extra or
/// altered, and exits non-zero if there is any.
///
/// Example:
///   hindsight verify /var/lib/hindsight/evidence/web1-20261204T101500Z-1a2b3c4d.tar.zst \
///       --public-key hindsight.pub
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct VerifyArgs {
    /// The archive (.tar.zst).
    pub archive: PathBuf,

    /// The public key (from `hindsight keygen`, or minisign's base64 line).
    #[arg(
        long,
        short = 'p',
        value_name = "FILE",
        required_unless_present = "no_signature"
    )]
    pub public_key: Option<PathBuf>,

    /// The signature. Default: ARCHIVE.minisig.
    #[arg(long, short = 'x', value_name = "FILE")]
    pub signature: Option<PathBuf>,

    /// Check the contents only, not the signature (for --unsigned archives).
    #[arg(long, conflicts_with = "public_key")]
    pub no_signature: bool,
}

pub fn run(args: VerifyArgs) -> Result<()> {
    let pk = args
        .public_key
        .as_deref()
        .map(crate::capture::sign::load_public_key)
        .transpose()?;
    let report =
        crate::capture::verify::verify(&args.archive, args.signature.as_deref(), pk.as_ref())
            .context("verify failed")?;
    for p in &report.problems {
        println!("FAIL {p}");
    }
    if let Some(tc) = &report.trusted_comment {
        println!("signature: good ({tc})");
    } else if !report.signature_checked {
        println!("signature: not checked (--no-signature)");
    }
    if let Some(m) = &report.manifest {
        println!(
            "archive {}: id {}, host {}, created {}, reason {:?}",
            m.archive_name, m.id, m.host.hostname, m.created, m.trigger.why
        );
    }
    if report.ok() {
        println!("OK: {} members match the manifest", report.members_checked);
        Ok(())
    } else {
        bail!(
            "{} problem(s) found in {}",
            report.problems.len(),
            args.archive.display()
        )
    }
}
