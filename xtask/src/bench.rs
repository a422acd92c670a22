//! Benchmarks (filled in below).
use anyhow::Result;
use clap::Args;

use crate::Workspace;

#[derive(Args)]
pub struct BenchArgs {}

pub fn run(_ws: &Workspace, _args: &BenchArgs) -> Result<()> {
    Ok(())
}
