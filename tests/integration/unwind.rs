//! `--unwind dwarf|auto`: stacks through code built without frame pointers (the fixtures
//! built with -fomit-frame-pointer, a Rust one without frame pointers, and Debian's glibc)
//! are whole when unwound with .eh_frame, and cut short with `--unwind fp`.

use std::{
    fs,
    process::{Command, Stdio},
    time::Duration,
};

use hindsight::profile::stack::Folded;

use crate::{
    profile::{check_split, profile_mode, sampled_seconds},
    support::{
        Workload, fixture, fixture_nofp, hindsight_bin, require_root, split_rust_nofp, text,
    },
};

/// Share of the weight of `comm`'s stacks that contain a frame matching `pred`.
fn share(folded: &Folded, comm: &str, pred: impl Fn(&[&str]) -> bool) -> (f64, u64) {
    let (mut total, mut hit) = (0, 0);
    for (frames, n) in folded.iter() {
        let frames: Vec<&str> = frames.collect();
        if frames.first() != Some(&comm) {
            continue;
        }
        total += n;
        if pred(&frames) {
            hit += n;
        }
    }
    (hit as f64 / total.max(1) as f64, total)
}

/// The frames `chain` appear in this order (outermost first), each matched by substring
/// (glibc's names carry prefixes such as `__GI_` or `___`).
fn has_chain(frames: &[&str], chain: &[&str]) -> bool {
    let mut rest = frames.iter();
    chain
        .iter()
        .all(|want| rest.any(|f| f.contains(want) && !f.ends_with("_[k]")))
}

#[test]
fn dwarf_unwinds_c_built_without_frame_pointers_to_main() {
    let Some(_serial) = require_root("dwarf_unwinds_c_built_without_frame_pointers_to_main") else {
        return;
    };
    let workload = Workload::start(fixture_nofp("split"), &[]);
    let pid = workload.pid().to_string();
    let args = ["--pid", &pid, "--duration", "4", "--frequency", "199"];
    let out = tempfile::tempdir().unwrap();
    let (folded, stdout) = profile_mode(
        "cpu",
        "On-CPU",
        &[&args[..], &["--unwind", "dwarf"]].concat(),
        out.path(),
    );
    check_split(
        &folded,
        "split-nofp",
        "work_a",
        "work_b",
        "main",
        4.0 * 199.0,
    );
    let (reached, total) = share(&folded, "split-nofp", |f| {
        has_chain(f, &["main", "run_rounds", "work_"])
    });
    assert!(
        reached >= 0.95,
        "{reached:.3} of {total} samples reach main -> run_rounds -> work_*\n{stdout}"
    );
    assert!(stdout.contains("unwinding (--unwind dwarf)"), "{stdout}");

    // The same binary with frame pointers: the walk stops at the leaf.
    let out = tempfile::tempdir().unwrap();
    let (folded, _) = profile_mode(
        "cpu",
        "On-CPU",
        &[&args[..], &["--unwind", "fp"]].concat(),
        out.path(),
    );
    let (reached, total) = share(&folded, "split-nofp", |f| f.contains(&"main"));
    assert!(
        reached < 0.5,
        "fp reaches main in {reached:.3} of {total}: is the fixture built with frame pointers?"
    );
}

#[test]
fn dwarf_unwinds_rust_built_without_frame_pointers_to_main() {
    let Some(_serial) = require_root("dwarf_unwinds_rust_built_without_frame_pointers_to_main")
    else {
        return;
    };
    let workload = Workload::start(split_rust_nofp(), &[]);
    let pid = workload.pid().to_string();
    let out = tempfile::tempdir().unwrap();
    // `auto` is the default: on-CPU samples are always unwound with .eh_frame.
    let (folded, _) = profile_mode(
        "cpu",
        "On-CPU",
        &["--pid", &pid, "--duration", "4", "--frequency", "199"],
        out.path(),
    );
    check_split(
        &folded,
        "split-rs-nofp",
        "split::rust_work_a",
        "split::rust_work_b",
        "split::main",
        4.0 * 199.0,
    );
    let (reached, total) = share(&folded, "split-rs-nofp", |f| f.contains(&"main"));
    assert!(reached >= 0.95, "{reached:.3} of {total} reach main");
}

/// Off-CPU: a sleep through libc's nanosleep (glibc has no frame pointers) is attributed
/// to its caller and on to main.
#[test]
fn dwarf_unwinds_a_sleep_through_libc_to_its_caller() {
    let Some(_serial) = require_root("dwarf_unwinds_a_sleep_through_libc_to_its_caller") else {
        return;
    };
    let workload = Workload::start(fixture_nofp("nap"), &[]);
    let out = tempfile::tempdir().unwrap();
    let pid = workload.pid().to_string();
    let (folded, stdout) = profile_mode(
        "offcpu",
        "Off-CPU time",
        &["--pid", &pid, "--duration", "2", "--unwind", "dwarf"],
        out.path(),
    );
    let wall_us = sampled_seconds(&stdout) * 1e6;
    let through = |f: &[&str]| {
        has_chain(f, &["main", "nap_loop", "nanosleep"]) && f.last() == Some(&"[sleeping]")
    };
    let (reached, total) = share(&folded, "nap-nofp", through);
    assert!(
        reached >= 0.95,
        "{reached:.3} of {total} µs asleep reach main -> nap_loop -> nanosleep\n{stdout}"
    );
    // The whole wall time is spent asleep there, kernel frames included.
    let (_, asleep) = share(&folded, "nap-nofp", |f| {
        through(f) && f.iter().any(|k| k.starts_with("schedule"))
    });
    let ratio = asleep as f64 / wall_us;
    assert!(
        (ratio - 1.0).abs() < 0.10,
        "{asleep} µs asleep with kernel stacks over {wall_us:.0} µs ({ratio:.3})"
    );
}

/// The pthread mutex fixture: lock and off-CPU waits go through glibc's
/// `__lll_lock_wait` and `pthread_mutex_lock` up to `post_to_ledger`, which took the
/// lock, and on to the thread's entry.
#[test]
fn dwarf_unwinds_mutex_waits_through_glibc_to_the_locking_function() {
    let Some(_serial) =
        require_root("dwarf_unwinds_mutex_waits_through_glibc_to_the_locking_function")
    else {
        return;
    };
    const THREADS: u32 = 4;
    let workload = Workload::start(fixture("mutex"), &[&THREADS.to_string()]);
    let pid = workload.pid().to_string();
    let chain = [
        "start_thread",
        "worker",
        "post_to_ledger",
        "pthread_mutex_lock",
        "lll_lock_wait",
    ];
    // `auto` with a small budget: most waits use frame pointers and are attributed to the
    // unwound stacks of the copied waits that had the same frame-pointer stack.
    let dwarf: &[&str] = &["--unwind", "dwarf"];
    let auto: &[&str] = &["--unwind", "auto", "--unwind-budget", "100"];
    for (mode, title, leaf, unwind) in [
        ("locks", "Lock contention", "[futex ledger_lock]", dwarf),
        ("offcpu", "Off-CPU time", "[sleeping]", dwarf),
        ("offcpu", "Off-CPU time", "[sleeping]", auto),
    ] {
        let out = tempfile::tempdir().unwrap();
        let mut args = vec!["--pid", &pid, "--duration", "2"];
        args.extend_from_slice(unwind);
        let (folded, stdout) = profile_mode(mode, title, &args, out.path());
        if unwind == auto {
            let attributed: u64 = stdout
                .split(" frame-pointer waits attributed")
                .next()
                .and_then(|s| s.rsplit(' ').next()?.parse().ok())
                .unwrap_or(0);
            assert!(attributed > 100, "few waits attributed:\n{stdout}");
        }
        let (futex_share, total) = share(&folded, "mutex", |f| {
            has_chain(f, &["lll_lock_wait"]) && f.last() == Some(&leaf)
        });
        let (whole, _) = share(&folded, "mutex", |f| {
            has_chain(f, &chain) && f.last() == Some(&leaf)
        });
        assert!(futex_share > 0.3, "{mode}: few futex waits\n{stdout}");
        // Every futex wait on the mutex is a whole chain.
        assert!(
            whole >= 0.95 * futex_share,
            "{mode} {unwind:?}: {whole:.3} of {total} whole chains, {futex_share:.3} futex waits\n{stdout}"
        );
    }
}

/// A process without frame pointers that starts and exits while `--all` records is
/// unwound from the tables of its binary read after it is gone (through the file the
/// process table held open), up to main.
#[test]
fn dwarf_unwinds_a_process_that_exited_during_the_profile() {
    let Some(_serial) = require_root("dwarf_unwinds_a_process_that_exited_during_the_profile")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // A unique name, and a binary deleted before the profile ends.
    let binary = tmp.path().join("shortnofp");
    fs::copy(fixture_nofp("split"), &binary).unwrap();
    let out = tmp.path().join("out");
    let profiler = Command::new(hindsight_bin())
        .args(["profile", "--all", "--duration", "4", "--frequency", "199"])
        .args(["--unwind", "dwarf", "--output-dir"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let status = Command::new(&binary)
        .args(["3", "1", "1.5"])
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    fs::remove_file(&binary).unwrap();
    let output = profiler.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let folded = Folded::read_from(&fs::read(out.join("cpu.folded")).unwrap()[..]).unwrap();
    let (reached, total) = share(&folded, "shortnofp", |f| {
        has_chain(f, &["main", "run_rounds", "work_"])
    });
    assert!(total > 60, "{total} samples of the short-lived fixture");
    assert!(
        reached >= 0.95,
        "{reached:.3} of {total} reach main -> run_rounds -> work_*"
    );
}
