//! tracefs, which attaching to the syscall tracepoints needs (to look up their ids). A
//! host that has not mounted it gets it mounted for the session and unmounted afterwards,
//! so the agent leaves the system as it found it.

use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::BpfError;

const TRACEFS: &str = "/sys/kernel/tracing";

/// Unmounts, when dropped, the tracefs this session mounted.
#[derive(Debug)]
pub struct TracefsMount(());

impl TracefsMount {
    /// `None` when tracefs is already there; a guard when we mounted it.
    pub fn ensure() -> Result<Option<Self>, BpfError> {
        let mounted = |p: &str| {
            Path::new(p)
                .read_dir()
                .is_ok_and(|mut entries| entries.next().is_some())
        };
        if mounted(TRACEFS) || mounted("/sys/kernel/debug/tracing") {
            return Ok(None);
        }
        mount(
            Some("tracefs"),
            TRACEFS,
            Some("tracefs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|errno| BpfError::Tracefs(errno.into()))?;
        tracing::debug!("mounted tracefs at {TRACEFS} for this session");
        Ok(Some(Self(())))
    }
}

impl Drop for TracefsMount {
    fn drop(&mut self) {
        // MNT_DETACH: a concurrent reader (another tool) keeps it until it closes.
        if let Err(err) = umount2(TRACEFS, MntFlags::MNT_DETACH) {
            tracing::warn!("could not unmount the tracefs we mounted at {TRACEFS}: {err}");
        }
    }
}
