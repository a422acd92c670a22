//! Builds `ebpf-programs` for the BPF target with aya-build; `src/bpf/mod.rs` embeds the
//! object with `include_bytes_aligned!`. The toolchain comes from
//! `[workspace.metadata.hindsight] ebpf-toolchain` in the root Cargo.toml.

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let toolchain = metadata.workspace_metadata["hindsight"]["ebpf-toolchain"]
        .as_str()
        .ok_or_else(|| anyhow!("[workspace.metadata.hindsight] ebpf-toolchain missing"))?
        .to_owned();
    let package = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "hindsight-ebpf")
        .ok_or_else(|| anyhow!("hindsight-ebpf package not found"))?;
    let root_dir = package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", package.manifest_path))?;
    // aya-build watches the crate's directory; the shared types live in a sibling crate.
    println!("cargo::rerun-if-changed={}/common/src", root_dir);
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "hindsight-ebpf",
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}
