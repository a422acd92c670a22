//! `hindsight profile` end to end: real eBPF in the running kernel, fixture workloads with a
//! known split of CPU time, the folded output checked against that truth.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use hindsight::profile::stack::Folded;

use crate::support::{
    Workload, fixture, hindsight, hindsight_bin, require_root, split_c, split_rust, text,
};

/// Sampling noise at 199 Hz for 4 s (~800 samples) is ~1.5 points; the workers' equal
/// per-unit cost holds to a point or two. 6 points keeps the test meaningful and stable.
const SHARE_TOLERANCE: f64 = 0.06;

/// An on-CPU profile: `hindsight profile ARGS` into `out`; its folded stacks and summary.
fn profile(args: &[&str], out: &Path) -> (Folded, String) {
    profile_mode("cpu", "On-CPU", args, out)
}

/// `hindsight profile --mode MODE ARGS` into `out`: MODE's folded stacks and the summary.
/// The SVG must exist and carry `title`.
pub(crate) fn profile_mode(mode: &str, title: &str, args: &[&str], out: &Path) -> (Folded, String) {
    let mut all = vec![
        "profile",
        "--mode",
        mode,
        "--output-dir",
        out.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let output = hindsight(&all);
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "hindsight {all:?} failed:\nstdout: {stdout}\nstderr: {}",
        text(&output.stderr)
    );
    let folded =
        Folded::read_from(&fs::read(out.join(format!("{mode}.folded"))).unwrap()[..]).unwrap();
    let svg = fs::read_to_string(out.join(format!("{mode}.svg"))).unwrap();
    assert!(
        svg.starts_with("<?xml") && svg.contains(title),
        "bad svg: no {title:?}"
    );
    (folded, stdout)
}

/// Share of the samples of `comm` whose stacks pass through `function`.
fn share_within(folded: &Folded, comm: &str, function: &str) -> (f64, u64) {
    let mut total = 0;
    let mut hit = 0;
    for (mut frames, n) in folded.iter() {
        if frames.next() != Some(comm) {
            continue;
        }
        total += n;
        if frames.any(|f| f == function) {
            hit += n;
        }
    }
    (
        if total == 0 {
            0.0
        } else {
            hit as f64 / total as f64
        },
        total,
    )
}

/// Every stack through `function` reaches it from `main` (whole chains, not fragments).
fn assert_chains_from_main(folded: &Folded, function: &str, main: &str) {
    for (frames, n) in folded.iter() {
        let frames: Vec<&str> = frames.collect();
        if let Some(at) = frames.iter().position(|f| *f == function) {
            assert!(
                frames[..at].contains(&main),
                "stack with {n} samples reaches {function} without {main}: {frames:?}"
            );
        }
    }
}

pub(crate) fn check_split(
    folded: &Folded,
    comm: &str,
    a: &str,
    b: &str,
    main: &str,
    expected_samples: f64,
) {
    let (share_a, total) = share_within(folded, comm, a);
    let (share_b, _) = share_within(folded, comm, b);
    // A busy machine gives the fixture less than a whole CPU: ask only for enough samples
    // to make the shares meaningful.
    assert!(
        total as f64 > 0.3 * expected_samples,
        "{total} samples of {comm}, expected up to {expected_samples}"
    );
    assert!(
        (share_a - 0.75).abs() < SHARE_TOLERANCE,
        "{a}: {share_a:.3} of {total}, want 0.75"
    );
    assert!(
        (share_b - 0.25).abs() < SHARE_TOLERANCE,
        "{b}: {share_b:.3} of {total}, want 0.25"
    );
    assert_chains_from_main(folded, a, main);
    assert_chains_from_main(folded, b, main);
}

#[test]
fn pid_profile_of_c_fixture_matches_its_known_split() {
    let Some(_serial) = require_root("pid_profile_of_c_fixture_matches_its_known_split") else {
        return;
    };
    let workload = Workload::start(split_c(), &[]);
    let out = tempfile::tempdir().unwrap();
    let pid = workload.pid().to_string();
    let (folded, stdout) = profile(
        &["--pid", &pid, "--duration", "4", "--frequency", "199"],
        out.path(),
    );
    check_split(&folded, "split", "work_a", "work_b", "main", 4.0 * 199.0);
    assert!(
        stdout.contains("work_a"),
        "summary lists the top function:\n{stdout}"
    );
    // Only the target: every stack is rooted at its name.
    for (mut frames, _) in folded.iter() {
        assert_eq!(frames.next(), Some("split"));
    }
}

#[test]
fn pid_profile_of_rust_fixture_matches_its_known_split() {
    let Some(_serial) = require_root("pid_profile_of_rust_fixture_matches_its_known_split") else {
        return;
    };
    let workload = Workload::start(split_rust(), &[]);
    let out = tempfile::tempdir().unwrap();
    let pid = workload.pid().to_string();
    let (folded, _) = profile(
        &["--pid", &pid, "--duration", "4", "--frequency", "199"],
        out.path(),
    );
    check_split(
        &folded,
        "split-rs",
        "split::rust_work_a",
        "split::rust_work_b",
        "split::main",
        4.0 * 199.0,
    );
}

#[test]
fn all_sees_the_workload_and_pid_of_another_process_does_not() {
    let Some(_serial) = require_root("all_sees_the_workload_and_pid_of_another_process_does_not")
    else {
        return;
    };
    let workload = Workload::start(split_c(), &[]);
    let bystander = Workload::start(Path::new("/bin/sleep"), &["60"]);
    let out = tempfile::tempdir().unwrap();

    let (all, _) = profile(&["--all", "--duration", "2"], out.path());
    let (share, samples) = share_within(&all, "split", "work_a");
    assert!(samples > 60, "--all saw {samples} samples of the workload");
    assert!(
        (share - 0.75).abs() < 0.1,
        "work_a share {share:.3} under --all"
    );

    let other = bystander.pid().to_string();
    let (only_other, _) = profile(&["--pid", &other, "--duration", "2"], out.path());
    assert!(
        only_other
            .iter()
            .all(|(mut frames, _)| frames.next() != Some("split")),
        "--pid of another process sampled the workload:\n{:?}",
        only_other.lines().collect::<Vec<_>>()
    );
    drop(workload);
}

/// A process that runs in its own mount namespace (its binary is invisible from ours, as in
/// a container) and exits before the profile ends is still fully symbolized.
#[test]
fn exited_process_in_another_mount_namespace_is_symbolized() {
    let Some(_serial) = require_root("exited_process_in_another_mount_namespace_is_symbolized")
    else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let profiler = Command::new(hindsight_bin())
        .args([
            "profile",
            "--all",
            "--duration",
            "4",
            "--frequency",
            "199",
            "--output-dir",
        ])
        .arg(out.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    // Copy the fixture into a tmpfs that exists only in the new mount namespace, run it for
    // 1.5 s there under a unique name, and let it exit.
    let script = format!(
        "mount -t tmpfs hindsight-test /mnt && cp {} /mnt/nsfixture && exec /mnt/nsfixture 3 1 1.5",
        split_c().display()
    );
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .status()
        .unwrap();
    assert!(
        status.success(),
        "fixture in a new mount namespace failed: {status}"
    );
    assert!(
        !Path::new("/mnt/nsfixture").exists(),
        "the binary must be invisible from here"
    );
    let output = profiler.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let folded = Folded::read_from(&fs::read(out.path().join("cpu.folded")).unwrap()[..]).unwrap();
    // The fixture's own loop (not the start-up of sh and unshare, which were this process
    // before it exec'd): named through its binary, which we could not have opened by path.
    let mut in_loop = 0;
    let mut in_a = 0;
    for (frames, n) in folded.iter() {
        let frames: Vec<&str> = frames.collect();
        if frames.first() == Some(&"nsfixture") && frames.contains(&"run_rounds") {
            in_loop += n;
            if frames.contains(&"work_a") {
                in_a += n;
            }
        }
    }
    let lines: Vec<String> = folded
        .lines()
        .filter(|l| l.starts_with("nsfixture;"))
        .collect();
    assert!(
        in_loop > 60,
        "{in_loop} samples in the namespaced fixture's loop: {lines:#?}"
    );
    let share = in_a as f64 / in_loop as f64;
    assert!(
        (share - 0.75).abs() < 0.1,
        "work_a share {share:.3}: {lines:#?}"
    );
    assert_chains_from_main(&folded, "work_a", "main");
    let stdout = text(&output.stdout);
    assert!(stdout.contains("exited during the profile"), "{stdout}");
}

/// `--cgroup` and `--unit` select a cgroup (and its descendants) in the kernel.
#[test]
fn cgroup_and_unit_filters_select_only_their_processes() {
    let Some(_serial) = require_root("cgroup_and_unit_filters_select_only_their_processes") else {
        return;
    };
    let root = hindsight::profile::target::cgroup2_root().expect("cgroup v2 mounted");
    let unit = format!("hindsight-test-{}.service", std::process::id());
    let group = root.join(&unit);
    let child_group = group.join("worker");
    fs::create_dir_all(&child_group).unwrap();
    struct Cleanup(std::path::PathBuf, std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            std::thread::sleep(Duration::from_millis(100));
            let _ = fs::remove_dir(&self.1);
            let _ = fs::remove_dir(&self.0);
        }
    }
    let _cleanup = Cleanup(group.clone(), child_group.clone());

    let tmp = tempfile::tempdir().unwrap();
    let inside_bin = tmp.path().join("inside");
    let outside_bin = tmp.path().join("outside");
    fs::copy(split_c(), &inside_bin).unwrap();
    fs::copy(split_c(), &outside_bin).unwrap();
    let inside = Workload::start(&inside_bin, &[]);
    let outside = Workload::start(&outside_bin, &[]);
    // In a descendant: selecting the unit must include its sub-cgroups.
    fs::write(child_group.join("cgroup.procs"), inside.pid().to_string()).unwrap();

    for args in [
        vec!["--unit", unit.as_str()],
        vec!["--cgroup", group.to_str().unwrap()],
    ] {
        let mut all = args.clone();
        all.extend(["--duration", "2"]);
        let (folded, _) = profile(&all, tmp.path());
        let (_, inside_samples) = share_within(&folded, "inside", "work_a");
        let (_, outside_samples) = share_within(&folded, "outside", "work_a");
        assert!(
            inside_samples > 40,
            "{args:?}: {inside_samples} samples inside"
        );
        assert_eq!(
            outside_samples, 0,
            "{args:?} sampled a process outside the cgroup"
        );
    }
    drop(inside);
    drop(outside);
}

#[test]
fn bad_input_gets_a_clear_error_before_sampling() {
    // A PID that cannot exist (above pid_max).
    let out = hindsight(&["profile", "--pid", "4194305", "--duration", "30"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("no process with PID 4194305"), "{stderr}");

    let file = tempfile::NamedTempFile::new().unwrap();
    let out = hindsight(&[
        "profile",
        "--duration",
        "30",
        "--output-dir",
        file.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("output directory") && stderr.contains(file.path().to_str().unwrap()),
        "{stderr}"
    );

    let out = hindsight(&[
        "profile",
        "--unit",
        "no-such-unit-hindsight.service",
        "--duration",
        "30",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no-such-unit-hindsight.service"),
        "{}",
        text(&out.stderr)
    );

    let out = hindsight(&["profile", "--frequency", "0"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--frequency"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn unprivileged_user_is_told_which_capabilities_are_missing() {
    let Some(_serial) = require_root("unprivileged_user_is_told_which_capabilities_are_missing")
    else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        out.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(hindsight_bin())
        .args(["profile", "--duration", "1", "--output-dir"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("CAP_PERFMON"),
        "{stderr}"
    );
}

/// The eBPF object loads and every program of every family attaches: on-CPU on every
/// online CPU; off-CPU, lock and futex tracepoints; and each records what it should.
#[test]
fn ebpf_object_loads_and_every_program_attaches() {
    let Some(_serial) = require_root("ebpf_object_loads_and_every_program_attaches") else {
        return;
    };
    use hindsight::bpf::{
        BpfError, Counter, KernelFilter, MapSizes, Session, SessionConfig, UnwindMode,
        UnwindSettings,
    };
    let config = SessionConfig {
        oncpu_hz: Some(999),
        offcpu: Some(Default::default()),
        locks: true,
        per_thread: false,
        sizes: MapSizes::default(),
        // The kernel-side aggregation this test reads; copies are tested in `unwind`.
        unwind: UnwindSettings {
            mode: UnwindMode::Fp,
            ..Default::default()
        },
    };
    let me = std::process::id();
    // The agent excludes its own process; a child process does the work here.
    let mut child = Workload::start(
        Path::new("sh"),
        &[
            "-c",
            "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; sleep 0.2",
        ],
    );
    let filter = KernelFilter {
        tgids: [child.pid()].into(),
        ..Default::default()
    };
    let mut session = match Session::start(&filter, config) {
        Ok(session) => session,
        Err(err @ (BpfError::Attach { .. } | BpfError::AttachTracepoint { .. })) => {
            // A kernel without one of the events: say which, do not pass quietly.
            let chain = format!("{:#}", anyhow::Error::from(err));
            if chain.contains("No such file") || chain.contains("not supported") {
                eprintln!("SKIPPED: this kernel lacks an event Hindsight uses: {chain}");
                return;
            }
            panic!("{chain}");
        }
        Err(err) => panic!("{:#}", anyhow::Error::from(err)),
    };
    let cpus = aya::util::online_cpus().unwrap().len();
    assert_eq!(session.attached_cpus(), cpus);
    assert!(child.child.wait().unwrap().success());
    session.stop().unwrap();
    let raw = session.drain().unwrap();
    let c = |counter| raw.counters.get(counter);
    assert!(c(Counter::Samples) > 10, "{:?}", raw.counters);
    assert!(
        raw.oncpu.iter().any(|s| s.key.tgid != me),
        "on-CPU samples of the child"
    );
    assert!(
        c(Counter::OffCpuSwitchOut) > 0,
        "the child slept: {:?}",
        raw.counters
    );
    assert!(!raw.offcpu.is_empty());
    assert!(
        raw.oncpu.iter().all(|s| s.key.tgid != me),
        "the agent's own process is excluded"
    );
    assert!(!session.new_processes().is_empty() || c(Counter::NewProcessLost) > 0);
}

/// Off-CPU: a thread sleeping in one named function and a thread blocked on a pipe in
/// another are each blocked for about the whole profile.
#[test]
fn offcpu_attributes_blocked_time_to_the_waiting_functions() {
    let Some(_serial) = require_root("offcpu_attributes_blocked_time_to_the_waiting_functions")
    else {
        return;
    };
    let workload = Workload::start(fixture("waits"), &[]);
    let out = tempfile::tempdir().unwrap();
    let pid = workload.pid().to_string();
    let (folded, stdout) = profile_mode(
        "offcpu",
        "Off-CPU time (µs blocked)",
        &["--pid", &pid, "--duration", "3"],
        out.path(),
    );
    assert!(
        !out.path().join("cpu.folded").exists(),
        "only the requested mode is written"
    );
    let wall_us = sampled_seconds(&stdout) * 1e6;
    for (function, state) in [
        ("sleep_in_nanosleep", "[sleeping]"),
        ("block_in_pipe_read", "[sleeping]"),
    ] {
        let blocked: u64 = folded
            .iter()
            .filter_map(|(frames, n)| {
                let frames: Vec<&str> = frames.collect();
                (frames.contains(&function) && frames.last() == Some(&state)).then_some(n)
            })
            .sum();
        let ratio = blocked as f64 / wall_us;
        assert!(
            (ratio - 1.0).abs() < 0.10,
            "{function}: {blocked} µs blocked over {wall_us:.0} µs of profile ({ratio:.3})"
        );
    }
    assert!(
        stdout.contains("top waits:") && stdout.contains("sleep_in_nanosleep"),
        "{stdout}"
    );
}

/// A 3 s off-CPU profile of fixture `name` with frame pointers (waits whose user stack is
/// copied for DWARF unwinding, `auto` within its budget, walk both stacks), checked to have
/// reused stacks: the summary's count between `sep` and `phrase` must be over 10, or the
/// test calling this would prove nothing.
fn offcpu_reuse_profile(name: &str, sep: &str, phrase: &str) -> (Folded, String) {
    let workload = Workload::start(fixture(name), &[]);
    let out = tempfile::tempdir().unwrap();
    let pid = workload.pid().to_string();
    let (folded, stdout) = profile_mode(
        "offcpu",
        "Off-CPU time (µs blocked)",
        &["--pid", &pid, "--duration", "3", "--unwind", "fp"],
        out.path(),
    );
    let reused: u64 = stdout
        .split_once(phrase)
        .and_then(|(before, _)| before.rsplit(sep).next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count before {phrase:?} in the summary:\n{stdout}"));
    assert!(reused > 10, "only {reused} switch-outs{phrase}:\n{stdout}");
    (folded, stdout)
}

/// Off-CPU reuses a thread's last kernel stack when it blocks again from the same user
/// stack: a thread that alternates between nanosleep and a pipe read from one call site
/// (one user stack) must still have each wait under its own kernel path, about half each.
#[test]
fn offcpu_kernel_stack_reuse_keeps_distinct_kernel_paths_apart() {
    let Some(_serial) = require_root("offcpu_kernel_stack_reuse_keeps_distinct_kernel_paths_apart")
    else {
        return;
    };
    let (folded, stdout) = offcpu_reuse_profile("twopaths", "(", " reused the last kernel stack");
    let path_time = |kernel_frame: &str| -> u64 {
        folded
            .iter()
            .filter_map(|(frames, n)| {
                let frames: Vec<&str> = frames.collect();
                (frames.contains(&"block_here") && frames.contains(&kernel_frame)).then_some(n)
            })
            .sum()
    };
    let sleep = path_time("do_nanosleep_[k]");
    let read = path_time("vfs_read_[k]");
    let total = sleep + read;
    let wall_us = sampled_seconds(&stdout) * 1e6;
    assert!(
        (total as f64 / wall_us - 1.0).abs() < 0.10,
        "block_here: {total} µs blocked over {wall_us:.0} µs of profile"
    );
    // By construction each path is about half (20 ms sleep, then the rest of a 40 ms feed
    // period in read); reusing one path's stack for the other would push one toward 0.
    for (path, us) in [("nanosleep", sleep), ("pipe read", read)] {
        let share = us as f64 / total as f64;
        assert!(
            (0.35..=0.65).contains(&share),
            "{path}: {us} of {total} µs ({share:.2}); want about half\n{stdout}"
        );
    }
}

/// Locks: N threads contending one pthread mutex wait (N-1) x wall time on its futex,
/// and the lock is named after its variable.
#[test]
fn futex_contention_is_measured_and_the_mutex_named() {
    let Some(_serial) = require_root("futex_contention_is_measured_and_the_mutex_named") else {
        return;
    };
    const THREADS: u32 = 4;
    let workload = Workload::start(fixture("mutex"), &[&THREADS.to_string()]);
    let out = tempfile::tempdir().unwrap();
    let pid = workload.pid().to_string();
    let (folded, stdout) = profile_mode(
        "locks",
        "Lock contention (µs waited)",
        &["--pid", &pid, "--duration", "3"],
        out.path(),
    );
    let waited: u64 = folded
        .iter()
        .filter_map(|(frames, n)| {
            frames
                .last()
                .is_some_and(|f| f == "[futex ledger_lock]")
                .then_some(n)
        })
        .sum();
    let expected = (THREADS - 1) as f64 * sampled_seconds(&stdout) * 1e6;
    // While one thread holds the lock (asleep), the others wait in the kernel. What is not
    // counted: the moments between a wake-up and the next wait, and waits that began
    // before the profile. 15% holds on this 2-core VM.
    let ratio = waited as f64 / expected;
    assert!(
        (ratio - 1.0).abs() < 0.15,
        "ledger_lock: {waited} µs waited, expected {expected:.0} ({ratio:.3})\n{stdout}"
    );
    assert!(
        stdout.contains("futex ledger_lock"),
        "summary names the lock:\n{stdout}"
    );
}

/// Kernel locks: threads hammering mmap/munmap contend their process's mmap_lock, an
/// rwsem, and the lock profile says so.
#[test]
fn kernel_lock_contention_shows_the_lock_kind() {
    let Some(_serial) = require_root("kernel_lock_contention_shows_the_lock_kind") else {
        return;
    };
    let workload = Workload::start(fixture("mmap_hammer"), &["4"]);
    let out = tempfile::tempdir().unwrap();
    let pid = workload.pid().to_string();
    let (folded, stdout) = profile_mode(
        "locks",
        "Lock contention (µs waited)",
        &["--pid", &pid, "--duration", "2"],
        out.path(),
    );
    let rwsem: u64 = folded
        .iter()
        .filter_map(|(frames, n)| {
            frames
                .last()
                .is_some_and(|f| f.starts_with("[rwsem:"))
                .then_some(n)
        })
        .sum();
    assert!(rwsem > 0, "no rwsem contention recorded:\n{stdout}");
    // Kernel stacks are the waiter's, without the tracing machinery on top.
    for (frames, _) in folded.iter() {
        let frames: Vec<&str> = frames.collect();
        assert!(
            !frames
                .iter()
                .any(|f| f.starts_with("bpf_trace_run") || f.starts_with("__traceiter_")),
            "{frames:?}"
        );
    }
}

/// The duration actually recorded, from the summary ("recorded ... for 3.0 s").
pub(crate) fn sampled_seconds(stdout: &str) -> f64 {
    stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("recorded ")?
                .split(" for ")
                .nth(1)?
                .split(" s")
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no duration in:\n{stdout}"))
}

/// A sub-cgroup created while sampling (a restarted service's new scope, say) is picked up
/// within the one-second rescan.
#[test]
fn cgroup_created_while_sampling_is_included() {
    let Some(_serial) = require_root("cgroup_created_while_sampling_is_included") else {
        return;
    };
    let root = hindsight::profile::target::cgroup2_root().expect("cgroup v2 mounted");
    let group = root.join(format!("hindsight-late-{}", std::process::id()));
    let late_group = group.join("late");
    fs::create_dir_all(&group).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let late_bin = tmp.path().join("latecomer");
    fs::copy(split_c(), &late_bin).unwrap();
    let out = tmp.path().join("out");
    let profiler = Command::new(hindsight_bin())
        .args(["profile", "--duration", "3", "--cgroup"])
        .arg(&group)
        .arg("--output-dir")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    fs::create_dir(&late_group).unwrap();
    let late = Workload::start(&late_bin, &[]);
    fs::write(late_group.join("cgroup.procs"), late.pid().to_string()).unwrap();
    let output = profiler.wait_with_output().unwrap();
    drop(late);
    std::thread::sleep(Duration::from_millis(100));
    let _ = fs::remove_dir(&late_group);
    let _ = fs::remove_dir(&group);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let folded = Folded::read_from(&fs::read(out.join("cpu.folded")).unwrap()[..]).unwrap();
    let (_, samples) = share_within(&folded, "latecomer", "work_a");
    assert!(
        samples > 20,
        "{samples} samples of the process in the late cgroup"
    );
}

/// Off-CPU reuses a thread's last user stack id when its frame chain is the same as at
/// the last walk. Two callers that reach the same system call through the same functions at
/// the same depth, with identical registers and first frames, must still get their own
/// time: the short one 5 of every 35 ms.
#[test]
fn offcpu_user_stack_reuse_keeps_callers_apart() {
    let Some(_serial) = require_root("offcpu_user_stack_reuse_keeps_callers_apart") else {
        return;
    };
    // Only meaningful if waits did reuse a user stack (the second of two long waits).
    let (folded, stdout) = offcpu_reuse_profile("twocallers", ", ", " the last user stack");
    let time_under = |caller: &str| -> u64 {
        folded
            .iter()
            .filter_map(|(frames, n)| {
                let frames: Vec<&str> = frames.collect();
                frames
                    .windows(3)
                    .any(|w| w == [caller, "middle", "wait_here"])
                    .then_some(n)
            })
            .sum()
    };
    let (short, long) = (time_under("short_waits"), time_under("long_waits"));
    let total = short + long;
    let wall_us = sampled_seconds(&stdout) * 1e6;
    assert!(
        (total as f64 / wall_us - 1.0).abs() < 0.10,
        "wait_here: {total} µs blocked over {wall_us:.0} µs of profile\n{stdout}"
    );
    // 5 ms of every 35; a reuse keyed on less than the whole chain would put each wait
    // under the caller walked before it (short_waits 15/35) or under one caller (0 or 1).
    let share = short as f64 / total as f64;
    assert!(
        (share - 5.0 / 35.0).abs() < 0.05,
        "short_waits: {short} of {total} µs ({share:.3}); want 5/35 = 0.143\n{stdout}"
    );
}
