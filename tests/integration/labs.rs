//! Performance labs end to end: pprof export read by a real pprof reader (`go tool
//! pprof`), and differential profiles of a fixture in two variants (tests/fixtures/
//! variant.c: work_a, work_b, work_c at equal cost, `--slow-b` doubles work_b), through the
//! baseline library.

use std::{fs, path::Path, process::Command};

use hindsight::profile::stack::Folded;
use serde_json::Value;

use crate::support::{Workload, fixture, hindsight, require_root, text};

/// Seconds and Hz per replicate: ~2000 samples of a CPU-bound fixture (fewer when other work
/// shares the CPUs), enough for the noise of a function's share to be a few percent.
const DURATION: &str = "2";
const HZ: &str = "999";

fn ok(args: &[&str]) -> String {
    let out = hindsight(args);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "hindsight {args:?} failed:\nstdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    stdout
}

/// Profiles `pid` on-CPU into `dir`, in the given formats; the folded stacks.
fn profile_cpu(pid: u32, dir: &Path, formats: &str) -> Folded {
    let pid = pid.to_string();
    ok(&[
        "profile",
        "--pid",
        &pid,
        "-d",
        DURATION,
        "-F",
        HZ,
        "--format",
        formats,
        "-o",
        dir.to_str().unwrap(),
    ]);
    Folded::read_from(&fs::read(dir.join("cpu.folded")).unwrap()[..]).unwrap()
}

#[test]
fn pprof_export_is_read_by_go_tool_pprof_and_agrees_with_the_folded_output() {
    let Some(_serial) = require_root("pprof_export_is_read_by_go_tool_pprof") else {
        return;
    };
    let work = Workload::start(fixture("variant"), &["--slow-b"]);
    let dir = tempfile::tempdir().unwrap();
    let folded = profile_cpu(work.pid(), dir.path(), "svg,folded,pprof");
    drop(work);
    assert!(dir.path().join("cpu.svg").exists());
    let pprof = dir.path().join("cpu.pb.gz");
    // The real reader: Go's pprof (Debian's golang-go, from `cargo xtask setup`).
    let out = Command::new("go")
        .args(["tool", "pprof", "-top", "-nodecount=3"])
        .arg(&pprof)
        .env("HOME", dir.path())
        .output()
        .expect("running `go tool pprof` (install golang-go: cargo xtask setup)");
    let report = text(&out.stdout);
    assert!(
        out.status.success(),
        "go tool pprof failed: {}\n{report}",
        text(&out.stderr)
    );
    // "Showing nodes accounting for 990, 100% of 990 total" counts samples (the default
    // sample type); then a header line with flat%, then the rows, heaviest first, the
    // function name last.
    let total: u64 = report
        .lines()
        .find_map(|l| l.split(" of ").nth(1)?.strip_suffix(" total")?.parse().ok())
        .unwrap_or_else(|| panic!("no total in:\n{report}"));
    assert_eq!(total, folded.total(), "{report}");
    let header = report
        .lines()
        .position(|l| l.contains("flat%"))
        .unwrap_or_else(|| panic!("no table in:\n{report}"));
    let top_row = report.lines().nth(header + 1).unwrap();
    let go_top = top_row.split_whitespace().last().unwrap();
    let (our_top, _) = folded.top_self(1).remove(0);
    assert_eq!(go_top, our_top, "{report}");
    // The doubled function is the heaviest, as the fixture says.
    assert_eq!(our_top, "work_b", "{report}");
    // Functions carry their source file (DWARF of the -g fixture): `-lines` shows it.
    let out = Command::new("go")
        .args(["tool", "pprof", "-top", "-lines", "-nodecount=3"])
        .arg(&pprof)
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let lines = text(&out.stdout);
    assert!(
        lines
            .lines()
            .any(|l| l.contains("work_b ") && l.contains("tests/fixtures/variant.c")),
        "{lines}"
    );
    // Samples carry the process label: filtering by it keeps them all.
    let out = Command::new("go")
        .args(["tool", "pprof", "-top", "-tagfocus=process=variant"])
        .arg(&pprof)
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let focused = text(&out.stdout);
    assert!(
        focused.contains(&format!("of {total} total")) && focused.contains("work_b"),
        "{focused}"
    );
}

/// The functions `hindsight diff` flagged as significant, from its diff.json.
fn diff(baseline: &str, candidate: &str, library: &Path, out: &Path) -> (Vec<String>, Value) {
    let stdout = ok(&[
        "diff",
        baseline,
        candidate,
        "--dir",
        library.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let svg = fs::read_to_string(out.join("diff.svg")).unwrap();
    assert!(
        svg.starts_with("<?xml") && svg.contains("work_b"),
        "bad diff.svg"
    );
    assert_eq!(
        fs::read_to_string(out.join("diff.txt")).unwrap()
            + &format!(
                "wrote {}, {}, {}\n",
                out.join("diff.svg").display(),
                out.join("diff.txt").display(),
                out.join("diff.json").display()
            ),
        stdout
    );
    let report: Value = serde_json::from_slice(&fs::read(out.join("diff.json")).unwrap()).unwrap();
    let flagged = report["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["significant"] == true)
        .map(|f| f["function"].as_str().unwrap().to_owned())
        .collect();
    (flagged, report)
}

#[test]
fn diff_flags_the_doubled_function_only_and_baselines_round_trip() {
    let Some(_serial) = require_root("diff_flags_the_doubled_function_only") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let library = tmp.path().join("baselines");
    let lib = library.to_str().unwrap();
    let save = |condition: &str, pid: u32| {
        let pid = pid.to_string();
        ok(&[
            "baseline",
            "save",
            "--component",
            "variant",
            "--condition",
            condition,
            "--replicates",
            "3",
            "--load",
            "the fixture's endless loop",
            "--dir",
            lib,
            "--pid",
            &pid,
            "-d",
            DURATION,
            "-F",
            HZ,
        ])
    };
    // Two baselines of the normal variant, three replicates each.
    let normal = Workload::start(fixture("variant"), &[]);
    let saved = save("normal", normal.pid());
    assert!(saved.contains("saved baseline variant/normal/"), "{saved}");
    save("normal-again", normal.pid());
    drop(normal);
    // Three replicates of the slow variant, as plain files (pprof and folded both read).
    let slow = Workload::start(fixture("variant"), &["--slow-b"]);
    let mut files = Vec::new();
    for n in 1..=3 {
        let dir = tmp.path().join(format!("slow{n}"));
        profile_cpu(slow.pid(), &dir, "folded,pprof");
        let ext = if n == 1 { "pb.gz" } else { "folded" };
        files.push(dir.join(format!("cpu.{ext}")).to_str().unwrap().to_owned());
    }
    drop(slow);

    let listed = ok(&["baseline", "list", "--dir", lib]);
    let rows: Vec<&str> = listed
        .lines()
        .filter(|l| l.starts_with("variant/"))
        .collect();
    assert_eq!(rows.len(), 2, "{listed}");
    assert!(
        rows[0].starts_with("variant/normal/") && rows[1].starts_with("variant/normal-again/"),
        "{listed}"
    );
    assert!(
        rows.iter()
            .all(|r| r.contains(" cpu ") && r.contains("the fixture's endless loop")),
        "{listed}"
    );
    let shown = ok(&["baseline", "show", "variant/normal", "--dir", lib]);
    assert!(
        shown.contains("work_a") && shown.contains("3 replicate(s)"),
        "{shown}"
    );

    // normal -> slow: work_b is the one regression, about 2x; a and c are not flagged
    // although their shares fell from a third to a quarter.
    let (flagged, report) = diff(
        "variant/normal",
        &files.join(","),
        &library,
        &tmp.path().join("d1"),
    );
    assert_eq!(flagged, ["work_b"], "{report:#}");
    assert_eq!(report["test"], "welch");
    let b = &report["functions"][0];
    let change = b["change"].as_f64().unwrap();
    assert!(
        (1.6..2.5).contains(&change),
        "work_b changed ×{change}: {report:#}"
    );

    // Two baselines of the same variant: nothing is flagged.
    let (flagged, report) = diff(
        "variant/normal",
        "variant/normal-again",
        &library,
        &tmp.path().join("d2"),
    );
    assert!(flagged.is_empty(), "{report:#}");
    assert!(
        fs::read_to_string(tmp.path().join("d2/diff.txt"))
            .unwrap()
            .contains("no significant change")
    );

    // Clear errors for what is neither a baseline nor a file.
    let out = hindsight(&[
        "diff",
        "variant/nothing",
        "variant/normal",
        "--dir",
        lib,
        "-o",
        tmp.path().join("d3").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no baseline \"variant/nothing\""),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn per_thread_profile_puts_each_thread_under_its_process() {
    let Some(_serial) = require_root("per_thread_profile_puts_each_thread_under_its_process")
    else {
        return;
    };
    // Two threads burning CPU in `burn`; the main thread waits in pthread_join.
    let work = Workload::start(fixture("burn"), &["100000000000", "2"]);
    let pid = work.pid();
    let tasks: Vec<u32> = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    ok(&[
        "profile",
        "--pid",
        &pid.to_string(),
        "-d",
        "1",
        "-F",
        HZ,
        "--per-thread",
        "--format",
        "folded,svg",
        "-o",
        dir.path().to_str().unwrap(),
    ]);
    drop(work);
    let folded = Folded::read_from(&fs::read(dir.path().join("cpu.folded")).unwrap()[..]).unwrap();
    let mut burning = std::collections::BTreeMap::new();
    for (mut frames, n) in folded.iter() {
        assert_eq!(frames.next(), Some("burn"));
        let thread = frames.next().unwrap().to_owned();
        let tid: u32 = thread
            .strip_prefix("burn (tid ")
            .and_then(|t| t.strip_suffix(')'))
            .unwrap_or_else(|| panic!("not a thread frame: {thread}"))
            .parse()
            .unwrap();
        assert!(
            tasks.contains(&tid),
            "{tid} is not a thread of {pid}: {tasks:?}"
        );
        if frames.any(|f| f == "burn") {
            *burning.entry(tid).or_insert(0) += n;
        }
    }
    // Both workers, not the main thread, and each about half of the samples.
    assert_eq!(burning.len(), 2, "{burning:?}");
    assert!(!burning.contains_key(&pid), "{burning:?}");
    let total: u64 = burning.values().sum();
    for n in burning.values() {
        let share = *n as f64 / total as f64;
        assert!((0.3..0.7).contains(&share), "{burning:?}");
    }
}

/// The rows of `go tool pprof -top` output: (flat value, function name).
fn go_top(args: &[&str], pprof: &Path, home: &Path) -> (String, Vec<(String, String)>) {
    let out = Command::new("go")
        .args(["tool", "pprof", "-top"])
        .args(args)
        .arg(pprof)
        .env("HOME", home)
        .output()
        .expect("running `go tool pprof` (install golang-go: cargo xtask setup)");
    let report = text(&out.stdout);
    assert!(out.status.success(), "{}\n{report}", text(&out.stderr));
    let rows = report
        .lines()
        .skip_while(|l| !l.contains("flat%"))
        .skip(1)
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols[0].to_owned(), cols[5..].join(" "))
        })
        .collect();
    (report, rows)
}

#[test]
fn lock_pprof_counts_contentions_and_wait_time() {
    let Some(_serial) = require_root("lock_pprof_counts_contentions_and_wait_time") else {
        return;
    };
    let work = Workload::start(fixture("mutex"), &["4"]);
    let dir = tempfile::tempdir().unwrap();
    let stdout = ok(&[
        "profile",
        "--pid",
        &work.pid().to_string(),
        "--mode",
        "locks",
        "-d",
        "2",
        "--format",
        "folded,pprof",
        "-o",
        dir.path().to_str().unwrap(),
    ]);
    drop(work);
    let pprof = dir.path().join("locks.pb.gz");
    // The summary's waits on ledger_lock: `futex ledger_lock  2873  9508.8 ...`.
    let waits: u64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("futex ledger_lock"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no ledger_lock row:\n{stdout}"));
    let (report, rows) = go_top(&["-sample_index=contentions"], &pprof, dir.path());
    assert_eq!(rows[0].1, "[futex ledger_lock]", "{report}");
    assert_eq!(rows[0].0, waits.to_string(), "{report}\n{stdout}");
    // The default sample type is the wait time, with the folded file's total (µs there).
    let folded =
        Folded::read_from(&fs::read(dir.path().join("locks.folded")).unwrap()[..]).unwrap();
    let (report, rows) = go_top(&["-unit=us"], &pprof, dir.path());
    assert!(report.contains("Type: wait"), "{report}");
    assert_eq!(rows[0].1, "[futex ledger_lock]", "{report}");
    let total = format!("of {}us total", folded.total());
    assert!(report.contains(&total), "{total}: {report}");
}

/// Needs no root: importing files into the library, and what bad input says.
#[test]
fn imported_baselines_round_trip_and_bad_input_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = tmp.path().join("lib");
    let lib = lib.to_str().unwrap();
    let run = |name: &str, a: u64, b: u64| {
        let path = tmp.path().join(name);
        fs::write(&path, format!("app;main;a {a}\napp;main;b {b}\n")).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (r1, r2) = (run("r1.folded", 500, 500), run("r2.folded", 510, 490));
    let saved = ok(&[
        "baseline",
        "save",
        "--component",
        "app",
        "--condition",
        "idle",
        "--import",
        &r1,
        &r2,
        "--dir",
        lib,
    ]);
    assert!(saved.contains("(2 replicates, 2000 total)"), "{saved}");
    let listed = ok(&["baseline", "list", "--dir", lib]);
    assert!(
        listed.contains("app/idle/") && listed.contains(" cpu "),
        "{listed}"
    );
    let shown = ok(&["baseline", "show", "app/idle", "--dir", lib]);
    assert!(
        shown.contains("imported from") && shown.contains("50.5%  a"),
        "{shown}"
    );
    // The same runs as the candidate: nothing changed.
    let out = tmp.path().join("diff");
    let report = ok(&[
        "diff",
        "app/idle",
        &format!("{r1},{r2}"),
        "--dir",
        lib,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(report.contains("no significant change"), "{report}");

    let bad = tmp.path().join("bad.folded");
    fs::write(&bad, "app;main 12x\n").unwrap();
    let failed = hindsight(&[
        "baseline",
        "save",
        "--component",
        "app",
        "--condition",
        "x",
        "--import",
        bad.to_str().unwrap(),
        "--dir",
        lib,
    ]);
    assert!(!failed.status.success());
    let stderr = text(&failed.stderr);
    assert!(
        stderr.contains("bad.folded: not folded stacks") && stderr.contains("line 1"),
        "{stderr}"
    );
    let failed = hindsight(&[
        "baseline",
        "save",
        "--component",
        "../x",
        "--condition",
        "x",
        "--import",
        &r1,
        "--dir",
        lib,
    ]);
    assert!(
        text(&failed.stderr).contains("component \"../x\" is not a valid name"),
        "{}",
        text(&failed.stderr)
    );
}
