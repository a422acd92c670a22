//! User side of the user-stack copies (ebpf-programs/src/shared.rs `copy_user_stack`): the
//! `--unwind` settings the programs get as globals, and the records of the
//! `STACK_COPIES` ring buffer, parsed. Unwinding them is `crate::profile::unwind`'s job.

use hindsight_common::{STACK_COPY_MAX, StackCopy, WaitDone, stack_copy};

/// How user stacks are walked.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum UnwindMode {
    /// Frame pointers, walked in the kernel: cheapest, but stacks through code built
    /// without frame pointers (most distro libraries, glibc included) are cut short.
    Fp,
    /// Copy the user stack at every event and unwind it in user space with the binaries'
    /// `.eh_frame` tables (frame pointers where a binary has none): whole stacks, at the
    /// cost of a stack copy per event, unbounded for off-CPU and lock waits.
    Dwarf,
    /// Like `dwarf`, but off-CPU and lock waits beyond a per-CPU budget of copies per
    /// second fall back to frame pointers (counted), so that their cost stays bounded.
    #[default]
    Auto,
}

/// The `--unwind` settings of a session.
#[derive(Debug, Clone, Copy)]
pub struct UnwindSettings {
    pub mode: UnwindMode,
    /// Bytes of user stack each copy takes, at most [`STACK_COPY_MAX`].
    pub stack_bytes: u32,
    /// `auto`: copies per second and CPU for off-CPU and lock waits.
    pub wait_budget: u64,
    /// Size of the copy ring buffer (a power of two number of pages).
    pub ring_bytes: u32,
}

impl Default for UnwindSettings {
    fn default() -> Self {
        Self {
            mode: UnwindMode::Auto,
            // 8 KiB reaches `main` from all but deep or stack-hungry code; the copy costs
            // a few microseconds.
            stack_bytes: 8 * 1024,
            // 1000 copies/s/CPU for lock waits (~8 MB/s of copies, and at ~10 µs a copy:
            // two stack walks and 8 KiB copied twice, ~1% of each CPU at most); off-CPU
            // waits a quarter of that (see `offcpu_budget`).
            wait_budget: 1000,
            // 4 MiB: ~500 copies of 8 KiB between two reads of the ring.
            ring_bytes: 4 * 1024 * 1024,
        }
    }
}

impl UnwindSettings {
    /// `STACK_COPY_BYTES`: 0 turns the copies off.
    pub(super) fn copy_bytes(&self) -> u32 {
        match self.mode {
            UnwindMode::Fp => 0,
            UnwindMode::Dwarf | UnwindMode::Auto => {
                self.stack_bytes.clamp(512, STACK_COPY_MAX as u32)
            }
        }
    }

    /// `COPY_BUDGET_PER_SEC` (lock waits): 0 is no limit.
    pub(super) fn budget(&self) -> u64 {
        match self.mode {
            UnwindMode::Auto => self.wait_budget.max(1),
            UnwindMode::Fp | UnwindMode::Dwarf => 0,
        }
    }

    /// `OFFCPU_COPY_BUDGET_PER_SEC`: a quarter of the budget. Off-CPU waits come at every
    /// context switch, and those over budget are attributed to what copied waits with the
    /// same frame-pointer stack unwound (`profile::unwind`), which lock waits are not.
    pub(super) fn offcpu_budget(&self) -> u64 {
        match self.budget() {
            0 => 0,
            n => (n / 4).max(1),
        }
    }

    /// `COPY_WAKEUP_BYTES`: records wake the reader only once a quarter of the ring is
    /// waiting; below that the reader's poll timeout drains them.
    pub(super) fn wakeup_bytes(&self) -> u64 {
        u64::from(self.ring_size() / 4)
    }

    pub(super) fn ring_size(&self) -> u32 {
        if self.copy_bytes() == 0 {
            4096 // unused: the smallest ring buffer
        } else {
            self.ring_bytes.max(64 * 1024).next_power_of_two()
        }
    }
}

/// One record of the copy ring.
#[derive(Debug)]
pub enum CopyEvent<'a> {
    /// An event with its copied user stack.
    Stack(StackEvent<'a>),
    /// The end of an off-CPU wait whose stack was copied at switch-out.
    WaitDone(WaitDone),
}

/// A [`StackCopy`] without its unused tail.
#[derive(Debug, Clone, Copy)]
pub struct StackEvent<'a> {
    pub kind: u32,
    pub tgid: u32,
    pub kernel_stack_id: i32,
    pub extra: u32,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub lock_addr: u64,
    pub value: u64,
    /// The copy stopped at the size limit rather than at the end of the stack.
    pub truncated: bool,
    /// With `--per-thread`: the thread id; else 0.
    pub tid: u32,
    /// Off-CPU: the frame-pointer user stack id walked beside the copy (negative: none).
    pub fp_stack_id: i32,
    /// The stack from `sp` up.
    pub stack: &'a [u8],
}

impl<'a> CopyEvent<'a> {
    /// Parses one ring record; `None` for a record too short for its kind.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
        };
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_ne_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        let kind = u32_at(0)?;
        if kind == stack_copy::OFFCPU_DONE {
            return Some(CopyEvent::WaitDone(WaitDone {
                kind,
                _pad: 0,
                wait_id: u64_at(8)?,
                ns: u64_at(16)?,
            }));
        }
        let len = u32_at(56)? as usize;
        let stack = bytes.get(StackCopy::HEADER..StackCopy::HEADER + len)?;
        Some(CopyEvent::Stack(StackEvent {
            kind,
            tgid: u32_at(4)?,
            kernel_stack_id: u32_at(8)? as i32,
            extra: u32_at(12)?,
            ip: u64_at(16)?,
            sp: u64_at(24)?,
            bp: u64_at(32)?,
            lock_addr: u64_at(40)?,
            value: u64_at(48)?,
            truncated: u32_at(60)? != 0,
            tid: u32_at(64)?,
            fp_stack_id: u32_at(68)? as i32,
            stack,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_with_their_offsets() {
        let mut bytes = vec![0u8; StackCopy::HEADER + 16];
        bytes[0..4].copy_from_slice(&stack_copy::LOCK.to_ne_bytes());
        bytes[4..8].copy_from_slice(&42u32.to_ne_bytes());
        bytes[8..12].copy_from_slice(&(-14i32).to_ne_bytes());
        bytes[16..24].copy_from_slice(&0x1000u64.to_ne_bytes());
        bytes[24..32].copy_from_slice(&0x7ff0u64.to_ne_bytes());
        bytes[40..48].copy_from_slice(&0xabcu64.to_ne_bytes());
        bytes[48..56].copy_from_slice(&5000u64.to_ne_bytes());
        bytes[56..60].copy_from_slice(&16u32.to_ne_bytes());
        bytes[StackCopy::HEADER] = 7;
        let Some(CopyEvent::Stack(event)) = CopyEvent::parse(&bytes) else {
            panic!("not a stack event");
        };
        assert_eq!(
            (event.kind, event.tgid, event.kernel_stack_id),
            (stack_copy::LOCK, 42, -14)
        );
        assert_eq!(
            (event.ip, event.sp, event.lock_addr),
            (0x1000, 0x7ff0, 0xabc)
        );
        assert_eq!(
            (event.value, event.stack.len(), event.stack[0]),
            (5000, 16, 7)
        );
        // A length beyond the record is refused, not read past.
        bytes[56..60].copy_from_slice(&17u32.to_ne_bytes());
        assert!(CopyEvent::parse(&bytes).is_none());
    }

    #[test]
    fn modes_set_the_globals() {
        let mut s = UnwindSettings {
            mode: UnwindMode::Fp,
            ..Default::default()
        };
        assert_eq!((s.copy_bytes(), s.ring_size()), (0, 4096));
        s.mode = UnwindMode::Dwarf;
        assert_eq!((s.copy_bytes(), s.budget()), (8192, 0));
        s.mode = UnwindMode::Auto;
        s.stack_bytes = 1 << 20;
        assert_eq!((s.copy_bytes(), s.budget()), (STACK_COPY_MAX as u32, 1000));
        assert_eq!(s.offcpu_budget(), 250);
        s.wait_budget = 2;
        assert_eq!(s.offcpu_budget(), 1, "never 0, which is no limit");
    }
}
