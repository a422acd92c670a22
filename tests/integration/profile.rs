//! `hindsight profile` end to end: real eBPF in the running kernel, fixture workloads with a
//! known split of CPU time, the folded output checked against that truth.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use hindsight::profile::stack::Folded;

use crate::support::{Workload, hindsight, hindsight_bin, require_root, split_c, split_rust, text};

/// Sampling noise at 199 Hz for 4 s (~800 samples) is ~1.5 points; the workers' equal
/// per-unit cost holds to a point or two. 6 points keeps the test meaningful and stable.
const SHARE_TOLERANCE: f64 = 0.06;

fn profile(args: &[&str], out: &Path) -> (Folded, String) {
    let mut all = vec!["profile", "--output-dir", out.to_str().unwrap()];
    all.extend_from_slice(args);
    let output = hindsight(&all);
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "hindsight {all:?} failed:\nstdout: {stdout}\nstderr: {}",
        text(&output.stderr)
    );
    let folded = Folded::read_from(&fs::read(out.join("cpu.folded")).unwrap()[..]).unwrap();
    let svg = fs::read_to_string(out.join("cpu.svg")).unwrap();
    assert!(
        svg.starts_with("<?xml") && svg.contains("On-CPU"),
        "bad svg"
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

fn check_split(folded: &Folded, comm: &str, a: &str, b: &str, main: &str, expected_samples: f64) {
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
    let (share, samples) = share_within(&folded, "nsfixture", "work_a");
    assert!(samples > 60, "{samples} samples of the namespaced fixture");
    assert!((share - 0.75).abs() < 0.1, "work_a share {share:.3}");
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

/// The eBPF object loads, its program attaches to every online CPU and samples.
#[test]
fn ebpf_object_loads_and_attaches_on_every_cpu() {
    let Some(_serial) = require_root("ebpf_object_loads_and_attaches_on_every_cpu") else {
        return;
    };
    use hindsight::bpf::oncpu::{Counter, KernelFilter, MapSizes, OnCpuSampler};
    let mut sampler = match OnCpuSampler::start(&KernelFilter::default(), 999, MapSizes::default())
    {
        Ok(sampler) => sampler,
        Err(err @ hindsight::bpf::BpfError::Attach { .. }) => {
            // A kernel without perf events (CONFIG_PERF_EVENTS=n): say so, do not pass quietly.
            let chain = format!("{:#}", anyhow::Error::from(err));
            if chain.contains("No such file") || chain.contains("not supported") {
                eprintln!("SKIPPED: this kernel cannot open the cpu-clock perf event: {chain}");
                return;
            }
            panic!("{chain}");
        }
        Err(err) => panic!("{:#}", anyhow::Error::from(err)),
    };
    let cpus = aya::util::online_cpus().unwrap().len();
    assert_eq!(sampler.attached_cpus(), cpus);
    let deadline = std::time::Instant::now() + Duration::from_millis(300);
    while std::time::Instant::now() < deadline {
        std::hint::black_box(0u64);
    }
    sampler.stop().unwrap();
    let raw = sampler.drain().unwrap();
    assert!(
        raw.counters.get(Counter::Samples) > 50,
        "{:?}",
        raw.counters
    );
    assert!(raw.samples.iter().any(|s| s.key.tgid == std::process::id()));
    assert!(!sampler.new_processes().is_empty() || raw.counters.get(Counter::NewProcessLost) > 0);
}
