//! System state: kernel and OS identity, boot id, uptime, load, memory, vmstat, PSI
//! pressure, disk stats, mounts and free space, network interfaces and routes, the kernel
//! ring buffer and logged-in users. Mostly verbatim copies of kernel files under
//! `system/`, plus a few generated reports (`df.txt`, `dmesg.txt`, `who.txt`).

use std::fmt::Write as _;
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::process::Command;

use super::{Collector, Context, MemberMeta, Sink, read_small};
use crate::capture::archive::ArchiveError;
use crate::paths;

pub struct System;

/// Files copied verbatim: (member name, path relative to procfs or absolute).
const FILES: &[(&str, &str)] = &[
    ("version", "version"),
    ("cmdline", "cmdline"),
    ("boot_id", "sys/kernel/random/boot_id"),
    ("uptime", "uptime"),
    ("loadavg", "loadavg"),
    ("meminfo", "meminfo"),
    ("vmstat", "vmstat"),
    ("stat", "stat"),
    ("pressure-cpu", "pressure/cpu"),
    ("pressure-memory", "pressure/memory"),
    ("pressure-io", "pressure/io"),
    ("diskstats", "diskstats"),
    ("mountinfo", "self/mountinfo"),
    ("swaps", "swaps"),
    ("net-dev", "net/dev"),
    ("net-route", "net/route"),
    ("net-ipv6_route", "net/ipv6_route"),
    ("net-if_inet6", "net/if_inet6"),
    ("net-arp", "net/arp"),
    ("net-snmp", "net/snmp"),
    ("os-release", "/etc/os-release"),
    ("machine-id", "/etc/machine-id"),
    ("hostname", "/etc/hostname"),
];

/// Kernel files are small; anything larger is cut here.
const SMALL_LIMIT: u64 = 16 * 1024 * 1024;

impl Collector for System {
    fn name(&self) -> &'static str {
        "system"
    }

    fn collect(&self, ctx: &Context<'_>, sink: &mut dyn Sink) -> Result<(), ArchiveError> {
        for (name, rel) in FILES {
            let path = if rel.starts_with('/') {
                Path::new(rel).to_owned()
            } else {
                ctx.proc.join(rel)
            };
            let src = path.display().to_string();
            match read_small(&path, SMALL_LIMIT) {
                Ok(data) => sink.add_bytes(
                    &format!("system/{name}"),
                    &data,
                    MemberMeta::from_source(&src),
                )?,
                Err(err) => sink.skip(&src, &err.to_string()),
            }
        }
        sink.add_bytes(
            "system/df.txt",
            df(&ctx.proc).as_bytes(),
            MemberMeta::default(),
        )?;
        match read_kmsg() {
            Ok(text) => sink.add_bytes(
                "system/dmesg.txt",
                text.as_bytes(),
                MemberMeta::from_source(paths::KMSG),
            )?,
            Err(err) => sink.skip(
                paths::KMSG,
                &format!("kernel ring buffer not readable: {err}"),
            ),
        }
        for (member, program, args) in [
            ("system/who.txt", "who", &["-a"][..]),
            (
                "system/ip-addr.json",
                "ip",
                &["-j", "-d", "addr", "show"][..],
            ),
            (
                "system/ip-route.json",
                "ip",
                &["-j", "route", "show", "table", "all"][..],
            ),
            ("system/ip-neigh.json", "ip", &["-j", "neigh", "show"][..]),
        ] {
            run_tool(sink, member, program, args)?;
        }
        Ok(())
    }
}

/// Runs a small reporting tool; a missing tool is a recorded skip.
fn run_tool(
    sink: &mut dyn Sink,
    member: &str,
    program: &str,
    args: &[&str],
) -> Result<(), ArchiveError> {
    let cmdline = format!("{program} {}", args.join(" "));
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => {
            let mut meta = MemberMeta::from_source(&format!("command: {cmdline}"));
            if !out.stderr.is_empty() {
                meta.notes.push(format!(
                    "stderr: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            sink.add_bytes(member, &out.stdout, meta)
        }
        Ok(out) => {
            sink.skip(
                &format!("command: {cmdline}"),
                &format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            );
            Ok(())
        }
        Err(err) => {
            sink.skip(
                &format!("command: {cmdline}"),
                &format!("cannot run {program}: {err}"),
            );
            Ok(())
        }
    }
}

/// Mounts with their free space (statvfs), like `df -T`.
fn df(proc: &Path) -> String {
    let mut out = format!(
        "{:<32} {:<10} {:>16} {:>16} {:>16} {:>12}  {}\n",
        "Source", "Type", "Size", "Used", "Avail", "Inodes-free", "Mounted on"
    );
    let mounts = std::fs::read_to_string(proc.join("self/mounts")).unwrap_or_default();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        // /proc/self/mounts escapes spaces as \040.
        let target = f[1].replace("\\040", " ");
        match nix::sys::statvfs::statvfs(target.as_str()) {
            Ok(s) => {
                let frag = s.fragment_size();
                let size = s.blocks() * frag;
                let avail = s.blocks_available() * frag;
                let used = size.saturating_sub(s.blocks_free() * frag);
                let _ = writeln!(
                    out,
                    "{:<32} {:<10} {:>16} {:>16} {:>16} {:>12}  {}",
                    f[0],
                    f[2],
                    size,
                    used,
                    avail,
                    s.files_free(),
                    target
                );
            }
            Err(err) => {
                let _ = writeln!(
                    out,
                    "{:<32} {:<10} statvfs failed: {err}  {}",
                    f[0], f[2], target
                );
            }
        }
    }
    out
}

/// The kernel ring buffer from /dev/kmsg, read without blocking until it is drained.
fn read_kmsg() -> std::io::Result<String> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(paths::KMSG)?;
    let mut out = String::new();
    // One record per read; EAGAIN means the buffer is drained, EPIPE that a record was
    // overwritten while reading (go on).
    let mut buf = vec![0u8; 8192];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                // `prio,seq,usec,flags;message`
                match rec.split_once(';') {
                    Some((head, msg)) => {
                        let usec: u64 = head
                            .split(',')
                            .nth(2)
                            .and_then(|u| u.parse().ok())
                            .unwrap_or(0);
                        let _ = write!(
                            out,
                            "[{:>5}.{:06}] {}",
                            usec / 1_000_000,
                            usec % 1_000_000,
                            msg
                        );
                        if !msg.ends_with('\n') {
                            out.push('\n');
                        }
                    }
                    None => out.push_str(&rec),
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(err) if err.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
        if out.len() > SMALL_LIMIT as usize {
            break;
        }
    }
    Ok(out)
}
