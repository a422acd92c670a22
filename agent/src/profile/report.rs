//! What a profile produced, and its summary for the terminal: files written, what the
//! kernel counted (nothing dropped silently), and per mode the heaviest functions, waits
//! and locks.

use std::{fmt, path::PathBuf, time::Duration};

use super::{Mode, fold::FoldStats, stack::ratio, unwind::UnwindStats};
use crate::bpf::{Counter, Counters, UnwindMode};

/// One mode's outputs.
#[derive(Debug)]
pub struct ModeOutput {
    pub mode: Mode,
    /// The files written (`--format`).
    pub files: Vec<PathBuf>,
    pub fold: FoldStats,
    pub distinct_stacks: usize,
    /// On-CPU: functions by self samples. Off-CPU and locks: the heaviest waits.
    pub top: Vec<(String, u64)>,
    /// Locks mode: every contended lock, heaviest first.
    pub locks: Vec<LockSummary>,
}

/// One contended lock of one process.
#[derive(Debug, Clone)]
pub struct LockSummary {
    /// The variable it lies in, or its address.
    pub lock: String,
    pub kind: &'static str,
    pub process: String,
    pub tgid: u32,
    pub waits: u64,
    pub total_ns: u64,
    pub max_ns: u64,
}

/// Everything `hindsight profile` prints at the end.
#[derive(Debug)]
pub struct ProfileReport {
    pub target: String,
    pub cpus: usize,
    pub frequency: u64,
    pub sampled_for: Duration,
    pub stopped_early: Option<&'static str>,
    pub counters: Counters,
    pub outputs: Vec<ModeOutput>,
    pub unnamed_frames: u64,
    pub frames: u64,
    /// `--unwind` and what the user-space unwinder did (`dwarf`/`auto`).
    pub unwind_mode: UnwindMode,
    pub unwind: UnwindStats,
    /// From the end of recording to the last SVG on disk.
    pub processing: Duration,
}

impl ProfileReport {
    pub fn output(&self, mode: Mode) -> Option<&ModeOutput> {
        self.outputs.iter().find(|o| o.mode == mode)
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl fmt::Display for ProfileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = |counter| self.counters.get(counter);
        writeln!(
            f,
            "recorded {} for {:.1} s{}",
            self.target,
            self.sampled_for.as_secs_f64(),
            self.stopped_early
                .map(|r| format!(" (stopped early: {r})"))
                .unwrap_or_default(),
        )?;
        for out in &self.outputs {
            writeln!(
                f,
                "\n{}: {} distinct stacks; wrote {}",
                out.mode.name(),
                out.distinct_stacks,
                out.files
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
            let unit = if out.mode == Mode::Cpu {
                "samples"
            } else {
                "µs"
            };
            match out.mode {
                Mode::Cpu => writeln!(
                    f,
                    "  {} samples at {} Hz on {} CPUs from {} processes ({} exited during the profile); \
                     kernel: {} taken, {} idle, {} of other tasks, {} lost to a full count map",
                    out.fold.weight,
                    self.frequency,
                    self.cpus,
                    out.fold.processes,
                    out.fold.exited,
                    c(Counter::Samples),
                    c(Counter::Idle),
                    c(Counter::FilteredOut),
                    c(Counter::CountMapFull),
                )?,
                Mode::OffCpu => writeln!(
                    f,
                    "  {:.1} ms off-CPU in {} processes; kernel: {} switch-outs recorded ({} reused \
                     the last kernel stack, {} the last user stack), {} waits added, {} skipped \
                     (--min-block/--state), {} lost to full maps",
                    out.fold.weight as f64 / 1e3,
                    out.fold.processes,
                    c(Counter::OffCpuSwitchOut),
                    c(Counter::OffCpuKernelStackReused),
                    c(Counter::OffCpuUserStackReused),
                    c(Counter::OffCpuRecorded),
                    c(Counter::OffCpuSkipped),
                    c(Counter::OffCpuMapFull),
                )?,
                Mode::Locks => writeln!(
                    f,
                    "  {:.1} ms waited on locks in {} processes; kernel: {} kernel-lock contentions, \
                     {} futex waits, {} waits added, {} lost to full maps",
                    out.fold.weight as f64 / 1e3,
                    out.fold.processes,
                    c(Counter::LockContended),
                    c(Counter::FutexWait),
                    c(Counter::LockRecorded),
                    c(Counter::LockMapFull),
                )?,
            }
            writeln!(
                f,
                "  stacks: {} {unit} with the user stack lost, {} with the kernel stack lost, \
                 {} not walkable, {} ({:.1}%) cut short before main/start_thread (frame pointers or unwind tables missing, or a stack deeper than the copy)",
                out.fold.lost_user,
                out.fold.lost_kernel,
                out.fold.unwalkable_user,
                out.fold.truncated_user,
                100.0 * ratio(out.fold.truncated_user, out.fold.weight),
            )?;
            if out.fold.weight == 0 {
                writeln!(f, "  nothing recorded")?;
                continue;
            }
            writeln!(
                f,
                "  top {}:",
                if out.mode == Mode::Cpu {
                    "functions (self)"
                } else {
                    "waits"
                }
            )?;
            for (name, n) in &out.top {
                if out.mode == Mode::Cpu {
                    writeln!(f, "    {:5.1}%  {name}", 100.0 * ratio(*n, out.fold.weight))?;
                } else {
                    writeln!(
                        f,
                        "    {:5.1}%  {:9.1} ms  {name}",
                        100.0 * ratio(*n, out.fold.weight),
                        *n as f64 / 1e3
                    )?;
                }
            }
            if !out.locks.is_empty() {
                let shown = &out.locks[..out.locks.len().min(5)];
                let width = shown
                    .iter()
                    .map(|l| l.kind.len() + 1 + l.lock.len())
                    .max()
                    .unwrap_or(0)
                    .max(8);
                writeln!(
                    f,
                    "  top locks:\n    {:<width$} {:>8} {:>11} {:>10} {:>10}  process",
                    "lock", "waits", "total ms", "mean µs", "max µs"
                )?;
                for lock in shown {
                    writeln!(
                        f,
                        "    {:<width$} {:>8} {:>11.1} {:>10.1} {:>10.1}  {} ({})",
                        format!("{} {}", lock.kind, lock.lock),
                        lock.waits,
                        ms(lock.total_ns),
                        lock.total_ns as f64 / lock.waits.max(1) as f64 / 1e3,
                        lock.max_ns as f64 / 1e3,
                        lock.process,
                        lock.tgid
                    )?;
                }
            }
        }
        writeln!(
            f,
            "\nsymbols: {} of {} frames unnamed ({:.1}%); stack-map collisions: {} user, {} kernel",
            self.unnamed_frames,
            self.frames,
            100.0 * ratio(self.unnamed_frames, self.frames),
            c(Counter::UserStackCollision),
            c(Counter::KernelStackCollision),
        )?;
        if self.unwind_mode != UnwindMode::Fp {
            writeln!(
                f,
                "unwinding (--unwind {}): {} copied stacks unwound from {} binaries' tables, {:.1} µs each; \
                 {} incomplete, {} copies filled --unwind-stack; {} waits over budget and {} \
                 copies lost (ring full) used frame pointers; {} frame-pointer waits attributed \
                 to the unwound stacks of copied waits with the same frame-pointer stack",
                clap::ValueEnum::to_possible_value(&self.unwind_mode)
                    .map_or_else(String::new, |v| v.get_name().to_owned()),
                self.unwind.stacks,
                self.unwind.binaries,
                self.unwind.per_stack().as_secs_f64() * 1e6,
                self.unwind.incomplete,
                self.unwind.truncated_copies,
                c(Counter::StackCopyOverBudget),
                c(Counter::StackCopyLost),
                self.unwind.attributed_waits,
            )?;
        }
        if c(Counter::NewProcessLost) > 0 {
            writeln!(
                f,
                "warning: {} new-process notifications lost: some exited processes may be unsymbolized",
                c(Counter::NewProcessLost)
            )?;
        }
        writeln!(f, "processed in {} ms", self.processing.as_millis())
    }
}
