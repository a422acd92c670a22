//! `cargo xtask package`: a Debian package of the release build, laid out by hand and
//! built with `dpkg-deb` (no debhelper: the binary is already built by cargo, and the
//! package has six kinds of files). Man pages and completions come from the binary's own
//! clap definitions (`hindsight generate-assets`), so they cannot drift from --help.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{Workspace, run_checked};

pub fn package(ws: &Workspace) -> Result<()> {
    let version = workspace_version(ws)?;
    let arch = command_output(Command::new("dpkg").arg("--print-architecture"))?;
    let out = ws.root.join("target/package");
    let name = format!("hindsight_{version}_{arch}");
    let staging = out.join(&name);
    if staging.exists() {
        fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    let assets = out.join("assets");
    run_checked(
        Command::new(ws.release_binary())
            .args(["generate-assets", "--out-dir"])
            .arg(&assets),
    )?;

    let put = |src: &Path, rel: &str, mode: u32| -> Result<()> {
        let dest = staging.join(rel);
        fs::create_dir_all(dest.parent().expect("a file in a directory"))?;
        fs::copy(src, &dest)
            .with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put(&ws.release_binary(), "usr/bin/hindsight", 0o755)?;
    put(
        &ws.root.join("systemd/hindsight.service"),
        "lib/systemd/system/hindsight.service",
        0o644,
    )?;
    put(
        &ws.root.join("packaging/hindsight.toml"),
        "etc/hindsight/hindsight.toml",
        0o640,
    )?;
    put(
        &ws.root.join("packaging/debian/copyright"),
        "usr/share/doc/hindsight/copyright",
        0o644,
    )?;
    let completions = assets.join("completions");
    put(
        &completions.join("hindsight.bash"),
        "usr/share/bash-completion/completions/hindsight",
        0o644,
    )?;
    put(
        &completions.join("_hindsight"),
        "usr/share/zsh/vendor-completions/_hindsight",
        0o644,
    )?;
    put(
        &completions.join("hindsight.fish"),
        "usr/share/fish/vendor_completions.d/hindsight.fish",
        0o644,
    )?;
    let man_dir = staging.join("usr/share/man/man1");
    fs::create_dir_all(&man_dir)?;
    for entry in fs::read_dir(assets.join("man"))? {
        let path = entry?.path();
        let dest = man_dir.join(path.file_name().expect("a file"));
        fs::copy(&path, &dest)?;
        // -n: no name or time stamp, so the package is reproducible.
        run_checked(Command::new("gzip").args(["-9nf"]).arg(&dest))?;
    }

    let debian = staging.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    for script in ["postinst", "prerm", "postrm"] {
        put(
            &ws.root.join("packaging/debian").join(script),
            &format!("DEBIAN/{script}"),
            0o755,
        )?;
    }
    fs::write(debian.join("conffiles"), "/etc/hindsight/hindsight.toml\n")?;
    let installed_kib = command_output(Command::new("du").args(["-sk"]).arg(&staging))?
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .to_owned();
    fs::write(
        debian.join("control"),
        format!(
            "Package: hindsight\n\
             Version: {version}\n\
             Architecture: {arch}\n\
             Maintainer: Hindsight developers <hindsight@localhost>\n\
             Installed-Size: {installed_kib}\n\
             Depends: libc6 (>= 2.36), adduser\n\
             Recommends: systemd, iproute2\n\
             Section: admin\n\
             Priority: optional\n\
             Description: eBPF host profiler and evidence-capture agent\n \
             Samples on-CPU stacks with eBPF into flame graphs, and preserves a host's\n \
             processes, sockets, system state, configs and logs in signed archives.\n \
             The agent (hindsight.service) serves a local socket and, when configured,\n \
             HTTPS with mutual TLS for remote triggering.\n"
        ),
    )?;
    let deb = out.join(format!("{name}.deb"));
    run_checked(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&staging)
            .arg(&deb),
    )?;
    println!("xtask: built {}", deb.display());
    Ok(())
}

fn workspace_version(ws: &Workspace) -> Result<String> {
    let manifest = ws.root.join("Cargo.toml");
    let text = fs::read_to_string(&manifest)?;
    let value: toml::Table = toml::from_str(&text)?;
    value["workspace"]["package"]["version"]
        .as_str()
        .map(str::to_owned)
        .context("Cargo.toml: [workspace.package] version missing")
}

fn command_output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {}", crate::describe(cmd)))?;
    if !out.status.success() {
        bail!("{} failed: {}", crate::describe(cmd), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
