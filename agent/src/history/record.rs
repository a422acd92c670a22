//! What the exec history keeps per event, decoded from the kernel's fixed-size records,
//! and how it is written into a capture: one JSON object per line, argv redacted with the
//! capture's `[capture.redact]` rules at the time of the capture.

use hindsight_common::history::{ExecEvent, ExitEvent, flags};
use serde::Serialize;

use super::ring::Weigh;
use crate::capture::redact::Redactor;

/// A command run on the host.
#[derive(Debug, Clone)]
pub struct Exec {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub unix_ns: i128,
    pub tgid: u32,
    pub pid: u32,
    /// 0: not known (forked before the recorder started, and gone when it looked).
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    /// Name of the caller before the exec.
    pub comm: String,
    pub filename: String,
    /// Raw: redacted only when written into a capture.
    pub argv: Vec<String>,
    pub flags: u32,
    /// What execve returned: 0, -errno, or None when its return was not seen.
    pub result: Option<i64>,
}

/// A process that ended abnormally: a fatal signal, or a non-zero `exit_group` code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessEnd {
    pub unix_ns: i128,
    pub tgid: u32,
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// The fatal signal (0: exited with `code`).
    pub signal: u32,
    pub code: i32,
}

impl ProcessEnd {
    pub fn is_abnormal(&self) -> bool {
        self.signal != 0 || self.code != 0
    }

    /// "killed by SIGSEGV" or "exited with status 3".
    pub fn describe(&self) -> String {
        if self.signal != 0 {
            format!("killed by {}", signal_name(self.signal))
        } else {
            format!("exited with status {}", self.code)
        }
    }
}

/// One entry of the history.
#[derive(Debug, Clone)]
pub enum Entry {
    Exec(Exec),
    End(ProcessEnd),
}

impl Weigh for Entry {
    fn bytes(&self) -> usize {
        let fixed = size_of::<Entry>();
        match self {
            Entry::Exec(e) => {
                fixed
                    + e.comm.len()
                    + e.filename.len()
                    + e.argv
                        .iter()
                        .map(|a| a.len() + size_of::<String>())
                        .sum::<usize>()
            }
            Entry::End(e) => fixed + e.comm.len(),
        }
    }
}

/// NUL-terminated bytes -> text (invalid UTF-8 replaced).
pub fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

impl Exec {
    pub fn from_event(e: &ExecEvent, unix_ns: i128) -> Self {
        let argc = (e.argc as usize).min(e.args.len());
        Self {
            unix_ns,
            tgid: e.tgid,
            pid: e.pid,
            ppid: e.ppid,
            uid: e.uid,
            gid: e.gid,
            cgroup_id: e.cgroup_id,
            comm: c_str(&e.comm),
            filename: c_str(&e.filename),
            argv: e.args[..argc].iter().map(|a| c_str(a)).collect(),
            flags: e.flags,
            result: None,
        }
    }
}

impl ProcessEnd {
    pub fn from_event(e: &ExitEvent, unix_ns: i128) -> Self {
        Self {
            unix_ns,
            tgid: e.tgid,
            pid: e.pid,
            comm: c_str(&e.comm),
            cgroup_id: e.cgroup_id,
            signal: e.signal,
            code: e.code,
        }
    }
}

/// An exec as written into the archive.
#[derive(Serialize)]
struct ExecLine<'a> {
    time: String,
    event: &'static str,
    pid: u32,
    tgid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    ppid: Option<u32>,
    uid: u32,
    gid: u32,
    cgroup_id: u64,
    comm: &'a str,
    filename: &'a str,
    argv: Vec<String>,
    /// argv had more than 16 arguments; only the first 16 are here.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    argv_truncated: bool,
    /// An argument was longer than 127 bytes and is cut.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    arg_truncated: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    filename_truncated: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    argv_unreadable: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    execveat: bool,
    /// "ok", "ENOENT"-style errno name, or "unknown".
    result: String,
    #[serde(skip_serializing_if = "is_zero")]
    redactions: u32,
}

#[derive(Serialize)]
struct EndLine<'a> {
    time: String,
    event: &'static str,
    pid: u32,
    tgid: u32,
    cgroup_id: u64,
    comm: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<i32>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// RFC 3339 with nanoseconds.
pub fn rfc3339_ns(unix_ns: i128) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix_ns.to_string())
}

impl Entry {
    pub fn unix_ns(&self) -> i128 {
        match self {
            Entry::Exec(e) => e.unix_ns,
            Entry::End(e) => e.unix_ns,
        }
    }

    /// One JSON line (no newline) and the number of redactions in it.
    pub fn to_json_line(&self, redactor: &Redactor) -> (String, u32) {
        match self {
            Entry::Exec(e) => {
                let (argv, redactions) = redactor.redact_argv(&e.argv);
                let line = ExecLine {
                    time: rfc3339_ns(e.unix_ns),
                    event: "exec",
                    pid: e.pid,
                    tgid: e.tgid,
                    ppid: (e.ppid != 0).then_some(e.ppid),
                    uid: e.uid,
                    gid: e.gid,
                    cgroup_id: e.cgroup_id,
                    comm: &e.comm,
                    filename: &e.filename,
                    argv,
                    argv_truncated: e.flags & flags::ARGS_TRUNCATED != 0,
                    arg_truncated: e.flags & flags::ARG_TRUNCATED != 0,
                    filename_truncated: e.flags & flags::FILENAME_TRUNCATED != 0,
                    argv_unreadable: e.flags & flags::ARGV_FAULT != 0,
                    execveat: e.flags & flags::EXECVEAT != 0,
                    result: match e.result {
                        Some(0) => "ok".into(),
                        Some(err) => errno_name(-err),
                        None => "unknown".into(),
                    },
                    redactions,
                };
                (
                    serde_json::to_string(&line).expect("serializes"),
                    redactions,
                )
            }
            Entry::End(e) => {
                let line = EndLine {
                    time: rfc3339_ns(e.unix_ns),
                    event: "abnormal_exit",
                    pid: e.pid,
                    tgid: e.tgid,
                    cgroup_id: e.cgroup_id,
                    comm: &e.comm,
                    signal: (e.signal != 0).then(|| signal_name(e.signal)),
                    status: (e.signal == 0).then_some(e.code),
                };
                (serde_json::to_string(&line).expect("serializes"), 0)
            }
        }
    }
}

fn errno_name(errno: i64) -> String {
    match i32::try_from(errno).map(nix::errno::Errno::from_raw) {
        Ok(e) if e != nix::errno::Errno::UnknownErrno => format!("{e:?}"),
        _ => format!("errno {errno}"),
    }
}

pub fn signal_name(signal: u32) -> String {
    match i32::try_from(signal)
        .ok()
        .and_then(|s| nix::sys::signal::Signal::try_from(s).ok())
    {
        Some(s) => s.as_str().to_owned(),
        None => format!("signal {signal}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RedactConfig;

    #[test]
    fn exec_lines_are_redacted_and_name_the_outcome() {
        let r = Redactor::new(&RedactConfig::default()).unwrap();
        let exec = Exec {
            unix_ns: 1_780_000_000_123_456_789,
            tgid: 10,
            pid: 10,
            ppid: 0,
            uid: 0,
            gid: 0,
            cgroup_id: 1,
            comm: "bash".into(),
            filename: "/usr/bin/mysql".into(),
            argv: vec!["mysql".into(), "--password=hunter2".into()],
            flags: flags::ARGS_TRUNCATED,
            result: Some(-2),
        };
        let (line, n) = Entry::Exec(exec).to_json_line(&r);
        assert_eq!(n, 1);
        assert!(!line.contains("hunter2"), "{line}");
        assert!(
            line.contains(r#""argv":["mysql","--password=[REDACTED]"]"#),
            "{line}"
        );
        assert!(line.contains(r#""result":"ENOENT""#), "{line}");
        assert!(line.contains(r#""argv_truncated":true"#), "{line}");
        assert!(!line.contains("ppid"), "unknown parent is left out: {line}");
        assert!(line.contains("2026-"), "{line}");
    }

    #[test]
    fn ends_describe_signal_or_status() {
        let end = ProcessEnd {
            unix_ns: 0,
            tgid: 1,
            pid: 1,
            comm: "x".into(),
            cgroup_id: 0,
            signal: 11,
            code: 0,
        };
        assert_eq!(end.describe(), "killed by SIGSEGV");
        assert!(end.is_abnormal());
        let ok = ProcessEnd {
            signal: 0,
            code: 0,
            ..end.clone()
        };
        assert!(!ok.is_abnormal());
        assert_eq!(
            ProcessEnd { code: 3, ..ok }.describe(),
            "exited with status 3"
        );
    }
}
