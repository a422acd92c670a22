//! Two profiles (each one or more replicate runs of folded stacks) -> which functions'
//! share changed beyond run-to-run noise, and the differential flame graph's lines.
//!
//! The statistic is each function's **self share**: the fraction of a run's weight whose
//! leaf frame is that function. Self rather than inclusive: a change lands in the function
//! that does the work, and callers such as `main` (inclusive share ~100 % in every run)
//! would otherwise look changed whenever the normalization moves.
//!
//! Shares are compositional: when one function doubles its cost, every other function's
//! share shrinks although it did not change. So before comparing, the candidate's shares
//! are divided by a **dilution factor**: the median, over the functions with at least
//! `min_share` on both sides, of (candidate share / baseline share) — the median-of-ratios
//! normalization of RNA-seq counts (DESeq), which assumes that most functions did not
//! change. With fewer than three such functions there is no majority to rely on and the
//! factor is 1 (plain share comparison).
//!
//! Noise, per function, on the log of its self share (changes in cost are multiplicative):
//! - replicates on both sides: **Welch's t-test** (unequal variances, few runs);
//! - replicates on one side only: the single run against the replicated side's
//!   **prediction interval** (t with n−1 degrees of freedom, sd·√(1+1/n));
//! - one run per side: a **Poisson test on the sample counts** (var ln c ≈ 1/c), which
//!   knows only sampling noise and none of the run-to-run noise: take replicates.
//!
//! Each side's variance is at least the Poisson variance of its counts, so that a few runs
//! that happen to agree do not look noiseless. A change is **significant** when its p value
//! passes Holm's step-down correction at `alpha` over all the tested functions (a
//! family-wise error rate: nothing is flagged in two profiles of the same thing, with
//! probability 1−alpha) and it is at least `min_change` large (a 3 % change can be real
//! and still not worth anyone's time).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use statrs::distribution::{ContinuousCDF as _, Normal, StudentsT};

use super::stack::Folded;

/// The knobs of [`compare`].
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DiffOptions {
    /// Family-wise error rate over the tested functions.
    pub alpha: f64,
    /// Smallest relative change reported as significant (0.2 = ×1.2 or ×1/1.2).
    pub min_change: f64,
    /// Functions below this self share on both sides are not tested.
    pub min_share: f64,
}

impl Default for DiffOptions {
    fn default() -> Self {
        Self {
            alpha: 0.05,
            min_change: 0.2,
            min_share: 0.01,
        }
    }
}

/// The test a function's change was judged with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Test {
    Welch,
    PredictionInterval,
    Poisson,
}

impl Test {
    pub fn describe(self) -> &'static str {
        match self {
            Test::Welch => "Welch's t-test on the log self share of each replicate",
            Test::PredictionInterval => {
                "the single run against the replicated side's prediction interval (t)"
            }
            Test::Poisson => {
                "Poisson test on sample counts (one run per side: no run-to-run noise known)"
            }
        }
    }
}

/// One function's change.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionChange {
    pub function: String,
    /// Mean self share over the baseline's runs, 0..=1.
    pub before_share: f64,
    /// Mean self share over the candidate's runs.
    pub after_share: f64,
    /// Candidate / baseline, after the dilution factor: 2.0 = twice as costly.
    pub change: f64,
    pub p_value: f64,
    pub significant: bool,
}

/// What [`compare`] found.
#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    pub before_runs: usize,
    pub after_runs: usize,
    pub before_total: u64,
    pub after_total: u64,
    /// Median candidate/baseline share ratio that unchanged functions moved by.
    pub dilution: f64,
    pub test: Test,
    pub options: DiffOptions,
    /// Tested functions, significant ones first, then by the size of the change.
    pub functions: Vec<FunctionChange>,
}

impl DiffReport {
    pub fn significant(&self) -> impl Iterator<Item = &FunctionChange> {
        self.functions.iter().filter(|f| f.significant)
    }
}

impl DiffReport {
    /// The report for a terminal: the test used, the significant changes, then the `top`
    /// largest changes.
    pub fn to_text(&self, before: &str, after: &str, top: usize) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "baseline:  {before} ({} run(s), {} total)\ncandidate: {after} ({} run(s), {} total)",
            self.before_runs, self.before_total, self.after_runs, self.after_total
        );
        let _ = writeln!(
            out,
            "statistic: self share per function, candidate divided by the dilution ×{:.3} \
             (median share ratio); noise: {}; significant = Holm-corrected p < {} and a change \
             of at least {:.0}%",
            self.dilution,
            self.test.describe(),
            self.options.alpha,
            100.0 * self.options.min_change
        );
        let row = |out: &mut String, f: &FunctionChange| {
            let _ = writeln!(
                out,
                "  {:>7}  {:5.1}% -> {:5.1}%  p={:<9.2e} {}{}",
                format!("×{:.2}", f.change),
                100.0 * f.before_share,
                100.0 * f.after_share,
                f.p_value,
                f.function,
                if f.significant {
                    if f.change > 1.0 {
                        "  [REGRESSION]"
                    } else {
                        "  [IMPROVEMENT]"
                    }
                } else {
                    ""
                }
            );
        };
        let significant: Vec<&FunctionChange> = self.significant().collect();
        if significant.is_empty() {
            let _ = writeln!(out, "no significant change");
        } else {
            let _ = writeln!(out, "significant changes:");
            for f in significant {
                row(&mut out, f);
            }
        }
        let _ = writeln!(
            out,
            "largest changes ({} of {} functions tested):",
            top.min(self.functions.len()),
            self.functions.len()
        );
        for f in self.functions.iter().take(top) {
            row(&mut out, f);
        }
        out
    }
}

/// Self weight per function of one run, and its total.
fn self_weights(run: &Folded) -> (BTreeMap<String, u64>, u64) {
    let mut by_leaf = BTreeMap::new();
    for (frames, n) in run.iter() {
        if let Some(leaf) = frames.last() {
            *by_leaf.entry(leaf.to_owned()).or_default() += n;
        }
    }
    (by_leaf, run.total())
}

struct Side {
    runs: Vec<(BTreeMap<String, u64>, u64)>,
}

impl Side {
    fn new(runs: &[Folded]) -> Self {
        Self {
            runs: runs.iter().map(self_weights).collect(),
        }
    }

    fn count(&self, run: usize, function: &str) -> u64 {
        self.runs[run].0.get(function).copied().unwrap_or(0)
    }

    fn mean_share(&self, function: &str) -> f64 {
        let sum: f64 = (0..self.runs.len())
            .map(|r| super::stack::ratio(self.count(r, function), self.runs[r].1))
            .sum();
        sum / self.runs.len() as f64
    }

    /// ln of each run's self share, 0.5 added to counts so that an absent function is
    /// finite.
    fn log_shares(&self, function: &str) -> Vec<f64> {
        (0..self.runs.len())
            .map(|r| ((self.count(r, function) as f64 + 0.5) / (self.runs[r].1 as f64 + 0.5)).ln())
            .collect()
    }

    fn mean_count(&self, function: &str) -> f64 {
        (0..self.runs.len())
            .map(|r| self.count(r, function) as f64)
            .sum::<f64>()
            / self.runs.len() as f64
    }

    fn total(&self) -> u64 {
        self.runs.iter().map(|r| r.1).sum()
    }
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Sample variance (n−1).
fn variance(xs: &[f64]) -> f64 {
    let m = mean(xs);
    xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() as f64 - 1.0)
}

fn two_sided_t(t: f64, df: f64) -> f64 {
    match StudentsT::new(0.0, 1.0, df.max(1.0)) {
        Ok(dist) => 2.0 * (1.0 - dist.cdf(t.abs())),
        Err(_) => 1.0,
    }
}

fn two_sided_z(z: f64) -> f64 {
    2.0 * (1.0 - Normal::standard().cdf(z.abs()))
}

/// Compares runs of a baseline with runs of a candidate. Both must have at least one run
/// with some weight.
pub fn compare(before: &[Folded], after: &[Folded], options: DiffOptions) -> DiffReport {
    let b = Side::new(before);
    let a = Side::new(after);
    let functions: BTreeSet<&String> = b
        .runs
        .iter()
        .chain(&a.runs)
        .flat_map(|(weights, _)| weights.keys())
        .collect();
    let shares: Vec<(&String, f64, f64)> = functions
        .into_iter()
        .map(|f| (f, b.mean_share(f), a.mean_share(f)))
        .filter(|(_, sb, sa)| *sb >= options.min_share || *sa >= options.min_share)
        .collect();
    let mut ratios: Vec<f64> = shares
        .iter()
        .filter(|(_, sb, sa)| *sb >= options.min_share && *sa >= options.min_share)
        .map(|(_, sb, sa)| sa / sb)
        .collect();
    ratios.sort_by(f64::total_cmp);
    let dilution = if ratios.len() >= 3 {
        let mid = ratios.len() / 2;
        if ratios.len() % 2 == 1 {
            ratios[mid]
        } else {
            (ratios[mid - 1] * ratios[mid]).sqrt()
        }
    } else {
        1.0
    };
    let test = match (before.len() >= 2, after.len() >= 2) {
        (true, true) => Test::Welch,
        (false, false) => Test::Poisson,
        _ => Test::PredictionInterval,
    };
    let mut changes: Vec<FunctionChange> = shares
        .iter()
        .map(|(f, sb, sa)| {
            let lb = b.log_shares(f);
            let la: Vec<f64> = a.log_shares(f).iter().map(|x| x - dilution.ln()).collect();
            let effect = mean(&la) - mean(&lb);
            // Poisson floor on each side's per-run variance of ln(count).
            let floor_b = 1.0 / (b.mean_count(f) + 0.5);
            let floor_a = 1.0 / (a.mean_count(f) + 0.5);
            let p_value = match test {
                Test::Welch => {
                    let vb = variance(&lb).max(floor_b) / lb.len() as f64;
                    let va = variance(&la).max(floor_a) / la.len() as f64;
                    let df = (vb + va).powi(2)
                        / (vb.powi(2) / (lb.len() as f64 - 1.0)
                            + va.powi(2) / (la.len() as f64 - 1.0));
                    two_sided_t(effect / (vb + va).sqrt(), df)
                }
                Test::PredictionInterval => {
                    let (reps, floor_reps, floor_single) = if lb.len() >= 2 {
                        (&lb, floor_b, floor_a)
                    } else {
                        (&la, floor_a, floor_b)
                    };
                    let n = reps.len() as f64;
                    let v = variance(reps).max(floor_reps);
                    let se = (v / n + v.max(floor_single)).sqrt();
                    two_sided_t(effect / se, n - 1.0)
                }
                Test::Poisson => two_sided_z(effect / (floor_b + floor_a).sqrt()),
            };
            FunctionChange {
                function: (*f).clone(),
                before_share: *sb,
                after_share: *sa,
                change: effect.exp(),
                p_value,
                significant: false,
            }
        })
        .collect();
    // Holm: the k-th smallest p value (0-based) must pass alpha / (m - k), and once one
    // fails, every larger one fails too.
    let m = changes.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&x, &y| changes[x].p_value.total_cmp(&changes[y].p_value));
    for (k, &i) in order.iter().enumerate() {
        if changes[i].p_value > options.alpha / (m - k) as f64 {
            break;
        }
        let c = changes[i].change;
        changes[i].significant =
            c >= 1.0 + options.min_change || c <= 1.0 / (1.0 + options.min_change);
    }
    changes.sort_by(|x, y| {
        y.significant
            .cmp(&x.significant)
            .then(y.change.ln().abs().total_cmp(&x.change.ln().abs()))
            .then_with(|| x.function.cmp(&y.function))
    });
    DiffReport {
        before_runs: before.len(),
        after_runs: after.len(),
        before_total: b.total(),
        after_total: a.total(),
        dilution,
        test,
        options,
        functions: changes,
    }
}

/// The differential lines (`stack before after`) for the flame graph, from the runs of each
/// side summed. The baseline is scaled to the candidate's total and by the dilution factor,
/// so that a function that did not change is drawn neither red nor blue; inferno's
/// diff-folded then merges the two.
pub fn differential_lines(
    before: &[Folded],
    after: &[Folded],
    dilution: f64,
) -> std::io::Result<Vec<u8>> {
    let sum = |runs: &[Folded]| {
        let mut all = Folded::default();
        for run in runs {
            for (frames, n) in run.iter() {
                all.add(&frames.map(str::to_owned).collect::<Vec<_>>(), n);
            }
        }
        all
    };
    let (before, after) = (sum(before), sum(after));
    let scale = super::stack::ratio(after.total(), before.total()) * dilution;
    let mut scaled = Vec::new();
    for (frames, n) in before.iter() {
        let n = (n as f64 * scale).round() as u64;
        if n > 0 {
            use std::io::Write as _;
            writeln!(scaled, "{} {n}", frames.collect::<Vec<_>>().join(";"))?;
        }
    }
    let mut after_lines = Vec::new();
    after.write_to(&mut after_lines)?;
    let mut out = Vec::new();
    inferno::differential::from_readers(
        inferno::differential::Options {
            normalize: false,
            strip_hex: false,
        },
        &scaled[..],
        &after_lines[..],
        &mut out,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of a loop calling a, b and c with these self weights.
    fn run(a: u64, b: u64, c: u64) -> Folded {
        let mut f = Folded::default();
        for (name, n) in [("a", a), ("b", b), ("c", c)] {
            f.add(&["app".into(), "main".into(), name.into()], n);
        }
        f.add(&["app".into(), "main".into()], 1);
        f
    }

    fn flagged(report: &DiffReport) -> Vec<&str> {
        report.significant().map(|f| f.function.as_str()).collect()
    }

    #[test]
    fn doubled_function_is_the_only_significant_change() {
        // b costs twice as much: its share goes from 1/3 to 1/2, a's and c's shrink to 1/4.
        let before = [run(300, 310, 295), run(305, 298, 301), run(296, 303, 300)];
        let after = [run(302, 598, 300), run(298, 605, 297), run(301, 600, 303)];
        let report = compare(&before, &after, DiffOptions::default());
        assert_eq!(report.test, Test::Welch);
        assert!((report.dilution - 0.75).abs() < 0.02, "{}", report.dilution);
        assert_eq!(flagged(&report), ["b"]);
        let b = &report.functions[0];
        assert!((b.change - 2.0).abs() < 0.1, "{b:?}");
        // The shrinking shares of a and c are dilution, not change.
        for f in &report.functions[1..] {
            assert!((f.change - 1.0).abs() < 0.05, "{f:?}");
        }
    }

    #[test]
    fn replicates_of_the_same_thing_flag_nothing() {
        let before = [run(300, 310, 295), run(320, 298, 301), run(296, 283, 300)];
        let after = [run(290, 301, 310), run(305, 312, 288), run(311, 296, 299)];
        let report = compare(&before, &after, DiffOptions::default());
        assert!(flagged(&report).is_empty(), "{report:#?}");
    }

    #[test]
    fn noisy_replicates_hide_a_change_that_one_run_each_would_show() {
        // a's share swings between runs as much as the change: with replicates that noise
        // is measured and the change is not significant.
        let before = [run(200, 300, 300), run(400, 300, 300), run(250, 300, 300)];
        let after = [run(450, 300, 300), run(250, 300, 300), run(420, 300, 300)];
        let report = compare(&before, &after, DiffOptions::default());
        assert!(flagged(&report).is_empty(), "{report:#?}");
        // The first run of each alone: the Poisson test sees only sampling noise.
        let report = compare(&before[..1], &after[..1], DiffOptions::default());
        assert_eq!(report.test, Test::Poisson);
        assert_eq!(flagged(&report), ["a"]);
    }

    #[test]
    fn one_run_against_replicates_uses_their_spread() {
        let before = [run(300, 310, 295), run(305, 298, 301), run(296, 303, 300)];
        let report = compare(&before, &[run(300, 900, 300)], DiffOptions::default());
        assert_eq!(report.test, Test::PredictionInterval);
        assert_eq!(flagged(&report), ["b"]);
        let report = compare(&before, &[run(300, 300, 300)], DiffOptions::default());
        assert!(flagged(&report).is_empty(), "{report:#?}");
    }

    #[test]
    fn differential_lines_draw_unchanged_functions_neutral() {
        let before = [run(100, 100, 100)];
        let after = [run(200, 400, 200)];
        let report = compare(&before, &after, DiffOptions::default());
        let lines = differential_lines(&before, &after, report.dilution).unwrap();
        let text = String::from_utf8(lines).unwrap();
        // The baseline is scaled by 801/301 (totals) × 0.75 (dilution) = 2: a is 200 on
        // both sides, b 200 before and 400 after.
        let line = |f: &str| -> (f64, f64) {
            let l = text
                .lines()
                .find(|l| l.starts_with(&format!("app;main;{f} ")))
                .unwrap();
            let mut parts = l.rsplitn(3, ' ');
            let after: f64 = parts.next().unwrap().parse().unwrap();
            let before: f64 = parts.next().unwrap().parse().unwrap();
            (before, after)
        };
        let (a_before, a_after) = line("a");
        let (b_before, b_after) = line("b");
        assert!((a_after / a_before - 1.0).abs() < 0.05, "{text}");
        assert!((b_after / b_before - 2.0).abs() < 0.1, "{text}");
    }
}
