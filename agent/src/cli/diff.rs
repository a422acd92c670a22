//! `hindsight diff`: compare two profiles, with replicates, and draw the differential
//! flame graph.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;

use crate::profile::{
    baseline::{Library, read_profile},
    diff::{self, DiffOptions},
    flamegraph::{self, GraphLabels, GraphStyle},
    stack::Folded,
};

/// Compare a baseline with a candidate: which functions got more or less expensive, beyond
/// run-to-run noise.
///
/// Each side is a saved baseline (COMPONENT/CONDITION for the latest, or
/// COMPONENT/CONDITION/TIME, see `hindsight baseline list`), or a comma list of folded or
/// pprof files, each one replicate (a separate run of the same load).
///
/// Writes DIR/diff.svg, a differential flame graph: frame widths are the candidate's, red
/// frames grew and blue ones shrank relative to the baseline, which is scaled to the
/// candidate's total and by the dilution (below). DIR/diff.txt and DIR/diff.json list the
/// functions whose self share changed most; the text goes to stdout too.
///
/// The statistic is each function's self share (its share of the samples as the leaf
/// frame). When one function doubles, every other share shrinks: the candidate's shares
/// are divided by the median share ratio over the functions present on both sides (most
/// functions are assumed unchanged). Noise: with replicates on both sides, Welch's t-test
/// on each function's log share; replicates on one side, the single run against their
/// prediction interval; one run per side, a Poisson test on sample counts (sampling noise
/// only: take replicates). Significant = p below --alpha after Holm's correction over all
/// tested functions, and a change of at least --min-change.
#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The reference: a baseline, or comma-separated folded/pprof files.
    pub baseline: String,

    /// The profile under test: a baseline, or comma-separated folded/pprof files.
    pub candidate: String,

    /// Where diff.svg, diff.txt and diff.json go (created if missing).
    #[arg(long, short = 'o', value_name = "DIR")]
    pub output_dir: PathBuf,

    /// Family-wise false-positive rate over the tested functions.
    #[arg(long, default_value_t = 0.05, value_name = "P")]
    pub alpha: f64,

    /// Smallest change called significant, relative (0.2 = 20% more or less expensive).
    #[arg(long, default_value_t = 0.2, value_name = "FRACTION")]
    pub min_change: f64,

    /// Functions below this self share on both sides (0.01 = 1%) are not tested.
    #[arg(long, default_value_t = 0.01, value_name = "FRACTION")]
    pub min_share: f64,

    /// Rows of the largest changes in the text report.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,

    /// Draw an icicle graph (root at the top).
    #[arg(long)]
    pub icicle: bool,

    /// The baseline library, for sides given as COMPONENT/CONDITION.
    #[arg(long, default_value = crate::paths::DEFAULT_BASELINE_DIR, value_name = "DIR")]
    pub dir: PathBuf,
}

/// One side's runs and how to name it.
fn load_side(spec: &str, library: &Library) -> Result<(String, Vec<Folded>)> {
    let files: Vec<PathBuf> = spec.split(',').map(PathBuf::from).collect();
    if files.iter().all(|f| f.is_file()) {
        let runs = files
            .iter()
            .map(|f| read_profile(f))
            .collect::<Result<Vec<_>, _>>()?;
        let name = if files.len() == 1 {
            files[0].display().to_string()
        } else {
            format!("{} files", files.len())
        };
        return Ok((name, runs));
    }
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        // A list, or a profile file's name: files, not a baseline.
        let profile_file = ["folded", "gz", "pb", "pprof"]
            .iter()
            .any(|ext| missing.extension().is_some_and(|e| e == *ext));
        if spec.contains(',') || profile_file {
            anyhow::bail!("{}: no such file", missing.display());
        }
    }
    let baseline = library.find(spec)?;
    Ok((baseline.spec(), baseline.replicates()?))
}

pub fn run(args: DiffArgs) -> Result<()> {
    if !(args.alpha > 0.0 && args.alpha < 1.0) {
        anyhow::bail!("--alpha must be between 0 and 1, not {}", args.alpha);
    }
    if !(args.min_share >= 0.0 && args.min_share < 1.0) {
        anyhow::bail!("--min-share must be in [0, 1), not {}", args.min_share);
    }
    if !(args.min_change.is_finite() && args.min_change >= 0.0) {
        anyhow::bail!("--min-change must be 0 or more, not {}", args.min_change);
    }
    let library = Library::new(&args.dir);
    let (before_name, before) =
        load_side(&args.baseline, &library).context("reading the baseline")?;
    let (after_name, after) =
        load_side(&args.candidate, &library).context("reading the candidate")?;
    let report = diff::compare(
        &before,
        &after,
        DiffOptions {
            alpha: args.alpha,
            min_change: args.min_change,
            min_share: args.min_share,
        },
    );
    std::fs::create_dir_all(&args.output_dir)
        .with_context(|| format!("creating {}", args.output_dir.display()))?;
    let lines = diff::differential_lines(&before, &after, report.dilution)
        .context("merging the two profiles")?;
    let lines = String::from_utf8_lossy(&lines);
    let labels = GraphLabels {
        title: format!("Differential: {before_name} -> {after_name}"),
        subtitle: format!(
            "red grew, blue shrank; widths are the candidate's; baseline scaled to its total \
             and by the dilution ×{:.3}; {} significant",
            report.dilution,
            report.significant().count()
        ),
        count_name: "samples".into(),
        palette: inferno::flamegraph::color::Palette::Basic(
            inferno::flamegraph::color::BasicPalette::Hot,
        ),
        style: GraphStyle {
            icicle: args.icicle,
            reversed: false,
        },
    };
    let svg_path = args.output_dir.join("diff.svg");
    let mut svg = Vec::new();
    flamegraph::write_diff_svg(lines.lines(), &labels, &mut svg).context("drawing diff.svg")?;
    std::fs::write(&svg_path, svg).with_context(|| format!("writing {}", svg_path.display()))?;
    let text = report.to_text(&before_name, &after_name, args.top);
    let txt_path = args.output_dir.join("diff.txt");
    std::fs::write(&txt_path, &text).with_context(|| format!("writing {}", txt_path.display()))?;
    let json_path = args.output_dir.join("diff.json");
    std::fs::write(
        &json_path,
        serde_json::to_vec_pretty(&report).context("serializing the report")?,
    )
    .with_context(|| format!("writing {}", json_path.display()))?;
    print!("{text}");
    println!(
        "wrote {}, {}, {}",
        svg_path.display(),
        txt_path.display(),
        json_path.display()
    );
    Ok(())
}
