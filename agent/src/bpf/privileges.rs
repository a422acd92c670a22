//! Checks, before touching the kernel, that this process may load eBPF and open perf
//! events, so that the user gets "missing CAP_BPF" rather than an EPERM from deep inside.

use super::BpfError;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Fails with [`BpfError::Privileges`] naming each missing capability. CAP_SYS_ADMIN
/// stands in for CAP_BPF and CAP_PERFMON, as it does in the kernel.
pub fn check_privileges() -> Result<(), BpfError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|source| BpfError::Io {
        what: "/proc/self/status",
        source,
    })?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    let admin = has(CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if !admin && !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !admin && !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_SYS_PTRACE) {
        missing.push("CAP_SYS_PTRACE");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(BpfError::Privileges {
            missing: missing.join(", "),
        })
    }
}
