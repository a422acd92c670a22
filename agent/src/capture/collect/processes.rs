//! The process table: every /proc/PID with its identity, command line, environment
//! (secret-like values redacted), exe/cwd, open fds, limits, cgroup, namespaces, memory
//! maps (capped) and per-thread state and wchan. Written as `processes/processes.json`
//! (streamed through a spool file, so memory stays bounded on busy hosts) and a
//! `ps`-like tree, `processes/ps-tree.txt`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufWriter, Seek as _, Write as _};
use std::path::Path;

use serde::Serialize;

use super::{Collector, Context, MemberMeta, Sink};
use crate::capture::archive::ArchiveError;

pub struct Processes;

/// One process as recorded in processes.json. Fields that could not be read are null and
/// the reason is in `errors`.
#[derive(Debug, Serialize)]
pub struct Process {
    pub pid: u32,
    pub ppid: Option<u32>,
    pub comm: Option<String>,
    pub state: Option<String>,
    pub uid: Option<u32>,
    pub cmdline: Vec<String>,
    pub environ: Vec<String>,
    pub environ_redactions: u32,
    pub exe: Option<String>,
    pub cwd: Option<String>,
    pub root: Option<String>,
    pub stat: Option<String>,
    pub status: BTreeMap<String, String>,
    pub fds: Vec<Fd>,
    pub limits: Option<String>,
    pub cgroup: Option<String>,
    pub namespaces: BTreeMap<String, String>,
    pub maps: Vec<String>,
    pub maps_truncated: bool,
    pub threads: Vec<Thread>,
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Fd {
    pub fd: u32,
    pub target: String,
}

#[derive(Debug, Serialize)]
pub struct Thread {
    pub tid: u32,
    pub comm: Option<String>,
    pub state: Option<String>,
    pub wchan: Option<String>,
}

/// Numeric entries of a /proc-like directory (pids or tids), sorted.
pub fn numeric_entries(dir: &Path) -> std::io::Result<Vec<u32>> {
    let mut ids: Vec<u32> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Reads one process. Never fails: what cannot be read is recorded in `errors`.
pub fn read_process(ctx: &Context<'_>, pid: u32) -> Process {
    let dir = ctx.proc.join(pid.to_string());
    let mut errors = Vec::new();
    let mut text = |name: &str| -> Option<String> {
        match std::fs::read(dir.join(name)) {
            Ok(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            Err(err) => {
                errors.push(format!("{name}: {err}"));
                None
            }
        }
    };
    let stat = text("stat");
    let status_text = text("status");
    let cmdline = text("cmdline").map(|s| split_nul(&s)).unwrap_or_default();
    let environ_raw = text("environ");
    let limits = text("limits");
    let cgroup = text("cgroup");
    let maps_text = text("maps");
    let wchan_of = |p: &Path| {
        std::fs::read_to_string(p.join("wchan"))
            .ok()
            .filter(|w| !w.is_empty() && w != "0")
    };
    let mut environ = Vec::new();
    let mut environ_redactions = 0;
    for entry in environ_raw.as_deref().map(split_nul).unwrap_or_default() {
        let r = ctx.redactor.redact_env(&entry);
        environ_redactions += r.count;
        environ.push(r.text);
    }
    let status: BTreeMap<String, String> = status_text
        .as_deref()
        .unwrap_or("")
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect();
    let link = |name: &str, errors: &mut Vec<String>| match std::fs::read_link(dir.join(name)) {
        Ok(t) => Some(t.display().to_string()),
        Err(err) => {
            errors.push(format!("{name}: {err}"));
            None
        }
    };
    let exe = link("exe", &mut errors);
    let cwd = link("cwd", &mut errors);
    let root = link("root", &mut errors);
    let mut fds = Vec::new();
    match numeric_entries(&dir.join("fd")) {
        Ok(ids) => {
            for fd in ids {
                if let Ok(t) = std::fs::read_link(dir.join("fd").join(fd.to_string())) {
                    fds.push(Fd {
                        fd,
                        target: t.display().to_string(),
                    });
                }
            }
        }
        Err(err) => errors.push(format!("fd: {err}")),
    }
    let mut namespaces = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(dir.join("ns")) {
        for e in rd.flatten() {
            if let Ok(t) = std::fs::read_link(e.path()) {
                namespaces.insert(
                    e.file_name().to_string_lossy().into_owned(),
                    t.display().to_string(),
                );
            }
        }
    }
    let max = ctx.config.max_map_lines;
    let all_maps: Vec<&str> = maps_text.as_deref().unwrap_or("").lines().collect();
    let maps_truncated = all_maps.len() > max;
    let maps = all_maps.iter().take(max).map(|s| s.to_string()).collect();
    let mut threads = Vec::new();
    if let Ok(tids) = numeric_entries(&dir.join("task")) {
        for tid in tids {
            let tdir = dir.join("task").join(tid.to_string());
            let tstat = std::fs::read_to_string(tdir.join("stat")).ok();
            let (comm, state) = tstat
                .as_deref()
                .map(parse_stat_comm_state)
                .unwrap_or_default();
            threads.push(Thread {
                tid,
                comm,
                state,
                wchan: wchan_of(&tdir),
            });
        }
    }
    let (comm, state) = stat
        .as_deref()
        .map(parse_stat_comm_state)
        .unwrap_or_default();
    Process {
        pid,
        ppid: status.get("PPid").and_then(|v| v.parse().ok()),
        uid: status
            .get("Uid")
            .and_then(|v| v.split_whitespace().next()?.parse().ok()),
        comm,
        state,
        cmdline,
        environ,
        environ_redactions,
        exe,
        cwd,
        root,
        stat,
        status,
        fds,
        limits,
        cgroup,
        namespaces,
        maps,
        maps_truncated,
        threads,
        errors,
    }
}

fn split_nul(s: &str) -> Vec<String> {
    s.split('\0')
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

/// comm and state from /proc/PID/stat: `pid (comm) S ...`; comm may contain spaces and
/// parentheses, so split at the last `)`.
fn parse_stat_comm_state(stat: &str) -> (Option<String>, Option<String>) {
    let Some(open) = stat.find('(') else {
        return (None, None);
    };
    let Some(close) = stat.rfind(')') else {
        return (None, None);
    };
    let comm = stat.get(open + 1..close).map(str::to_owned);
    let state = stat
        .get(close + 1..)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned);
    (comm, state)
}

/// Summary kept in memory for the tree.
struct Row {
    pid: u32,
    ppid: u32,
    uid: Option<u32>,
    state: String,
    rss: String,
    threads: usize,
    cmd: String,
}

impl Collector for Processes {
    fn name(&self) -> &'static str {
        "processes"
    }

    fn collect(&self, ctx: &Context<'_>, sink: &mut dyn Sink) -> Result<(), ArchiveError> {
        let pids = match numeric_entries(&ctx.proc) {
            Ok(p) => p,
            Err(err) => {
                sink.skip(
                    &ctx.proc.display().to_string(),
                    &format!("cannot list processes: {err}"),
                );
                return Ok(());
            }
        };
        let mut spool = match ctx.spool() {
            Ok(f) => BufWriter::new(f),
            Err(err) => {
                sink.skip(
                    "processes/processes.json",
                    &format!("cannot create spool file: {err}"),
                );
                return Ok(());
            }
        };
        let mut rows = Vec::new();
        let mut ok = spool.write_all(b"[\n").is_ok();
        let mut first = true;
        let mut vanished = 0;
        for pid in pids {
            if !ctx.proc.join(pid.to_string()).exists() {
                vanished += 1;
                continue;
            }
            let p = read_process(ctx, pid);
            if p.stat.is_none() && p.status.is_empty() {
                // Exited between listing and reading.
                vanished += 1;
                continue;
            }
            rows.push(Row {
                pid: p.pid,
                ppid: p.ppid.unwrap_or(0),
                uid: p.uid,
                state: p.state.clone().unwrap_or_default(),
                rss: p.status.get("VmRSS").cloned().unwrap_or_default(),
                threads: p.threads.len(),
                cmd: if p.cmdline.is_empty() {
                    format!("[{}]", p.comm.as_deref().unwrap_or("?"))
                } else {
                    p.cmdline.join(" ")
                },
            });
            if !first {
                ok &= spool.write_all(b",\n").is_ok();
            }
            first = false;
            ok &= serde_json::to_writer(&mut spool, &p).is_ok();
        }
        ok &= spool.write_all(b"\n]\n").is_ok();
        let mut meta = MemberMeta::default();
        if vanished > 0 {
            meta.notes.push(format!(
                "{vanished} processes exited while the table was read"
            ));
        }
        match spool.into_inner() {
            Ok(mut file) if ok => {
                let len = file.stream_position().unwrap_or(0);
                if file.rewind().is_ok() {
                    sink.add_reader("processes/processes.json", &mut file, len, meta.clone())?;
                } else {
                    sink.skip(
                        "processes/processes.json",
                        "spool file could not be rewound",
                    );
                }
            }
            _ => sink.skip("processes/processes.json", "writing the spool file failed"),
        }
        sink.add_bytes("processes/ps-tree.txt", render_tree(&rows).as_bytes(), meta)?;
        Ok(())
    }
}

fn render_tree(rows: &[Row]) -> String {
    let mut children: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    let known: std::collections::HashSet<u32> = rows.iter().map(|r| r.pid).collect();
    let mut roots = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if r.ppid != 0 && known.contains(&r.ppid) && r.ppid != r.pid {
            children.entry(r.ppid).or_default().push(i);
        } else {
            roots.push(i);
        }
    }
    let mut out = format!(
        "{:>7} {:>7} {:>6} {:1} {:>12} {:>4}  {}\n",
        "PID", "PPID", "UID", "S", "RSS", "THR", "COMMAND"
    );
    let mut stack: Vec<(usize, usize)> = roots.into_iter().rev().map(|i| (i, 0)).collect();
    while let Some((i, depth)) = stack.pop() {
        let r = &rows[i];
        let uid = r.uid.map_or("?".into(), |u| u.to_string());
        let _ = writeln!(
            out,
            "{:>7} {:>7} {:>6} {:1} {:>12} {:>4}  {}{}",
            r.pid,
            r.ppid,
            uid,
            r.state,
            r.rss,
            r.threads,
            "  ".repeat(depth) + if depth > 0 { "\\_ " } else { "" },
            r.cmd
        );
        if let Some(kids) = children.get(&r.pid) {
            for &k in kids.iter().rev() {
                stack.push((k, depth + 1));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_comm() {
        let (comm, state) = parse_stat_comm_state("42 (my (odd) proc) S 1 42 42 0");
        assert_eq!(comm.as_deref(), Some("my (odd) proc"));
        assert_eq!(state.as_deref(), Some("S"));
    }

    #[test]
    fn tree_nests_children() {
        let row = |pid, ppid, cmd: &str| Row {
            pid,
            ppid,
            uid: Some(0),
            state: "S".into(),
            rss: String::new(),
            threads: 1,
            cmd: cmd.into(),
        };
        let t = render_tree(&[row(1, 0, "init"), row(5, 1, "sshd"), row(9, 5, "bash")]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].ends_with(" init"), "{t}");
        assert!(lines[2].ends_with("  \\_ sshd"), "{t}");
        assert!(lines[3].ends_with("    \\_ bash"), "{t}");
    }
}
