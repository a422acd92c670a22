//! `hindsight agent`: run the daemon.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::paths;

/// Run the agent daemon: serve the HTTP API on the local socket and, when [api] listen
/// is set, over HTTPS with mutual TLS; run captures and profiles one at a time at low
/// priority.
///
/// Normally started by systemd (hindsight.service, Type=notify: it reports READY=1 once
/// it listens). SIGTERM shuts down in order: no new requests, the running capture
/// completes (a running profile stops early and keeps what it sampled), queued jobs fail.
/// SIGHUP (systemctl reload hindsight) re-reads the config file and the TLS certificates;
/// a bad file is logged and the old settings stay.
///
/// Local callers (curl --unix-socket /run/hindsight/hindsight.sock http://localhost/v1/health):
/// root and the daemon's user are admins; members of [api] socket_group get
/// [api] socket_roles. Network callers need a client certificate chaining to [api] ca;
/// its CN or a SAN maps to roles in [api.roles]. Every request is appended to the audit
/// log ([api] audit_log, JSON lines).
///
/// While it runs, the daemon records every command run on the host with eBPF ([history]:
/// the last 15 minutes by default) and adds that history, argv redacted, to every capture
/// it takes, with logs staged by `hindsight preserve`. [[triggers]] rules start captures
/// on their own (memory/cpu/io pressure, a watched process dying, a log line, a full
/// disk), each with a cooldown and an hourly cap; the manifest names the rule and what it
/// saw. Without CAP_BPF/CAP_PERFMON or tracefs the history and the exit rule are off (the
/// log says why) and everything else works.
///
/// Examples:
///   hindsight agent --config /etc/hindsight/hindsight.toml
///   hindsight trigger --reason "INC-2291" --wait        # from another shell
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct AgentArgs {
    /// Configuration file ([capture], [api], [daemon] sections). Default:
    /// /etc/hindsight/hindsight.toml, or built-in defaults when that file does not exist.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
}

pub fn run(args: AgentArgs) -> Result<()> {
    let (path, explicit) = match args.config {
        Some(p) => (p, true),
        None => (PathBuf::from(paths::DEFAULT_CONFIG), false),
    };
    crate::daemon::run(&path, explicit)?;
    Ok(())
}
