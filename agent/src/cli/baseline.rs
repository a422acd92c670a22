//! `hindsight baseline`: save profiles of a component under a business condition into the
//! baseline library, list and show them.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};

use crate::profile::{
    Format,
    baseline::{BaselineMeta, Library, read_profile},
    stack::{Folded, ratio},
};

/// Keep a library of baseline profiles per component and business condition.
///
/// Performance labs profile a replica under controlled load and compare "normal" against
/// "degraded": `baseline save` records (or imports) the normal one, `hindsight diff
/// COMPONENT/CONDITION CANDIDATE` compares a later profile with it. The library lives in
/// --dir: DIR/<component>/<condition>/<UTC time>.{json,folded}, plus <time>.r<N>.folded per
/// replicate when there are several.
#[derive(Args, Debug)]
pub struct BaselineArgs {
    #[command(subcommand)]
    pub command: BaselineCommand,
}

#[derive(Subcommand, Debug)]
pub enum BaselineCommand {
    Save(Box<SaveArgs>),
    List(ListArgs),
    Show(ShowArgs),
}

/// The library directory, shared by the subcommands.
#[derive(Args, Debug, Clone)]
pub struct LibraryArgs {
    /// The baseline library.
    #[arg(long, default_value = crate::paths::DEFAULT_BASELINE_DIR, value_name = "DIR")]
    pub dir: PathBuf,
}

/// Profile (or import) a baseline: --replicates runs of the profile options below, one mode.
///
/// Replicates are separate profiles of the same load, one after the other: `hindsight
/// diff` measures run-to-run noise from them and flags only changes beyond it. Three is a
/// sensible minimum. With --import, the given folded or pprof files are the replicates and
/// nothing is profiled.
///
/// Example: hindsight baseline save --component payments --condition market-open
///          --replicates 3 --duration 30 --unit payments.service --load "replayed 09:30 traffic, 800 rps"
#[derive(Args, Debug)]
pub struct SaveArgs {
    /// What was profiled (a service, a job): the library's first level.
    #[arg(long, value_name = "NAME")]
    pub component: String,

    /// The business condition (market-open, month-end-batch): the second level.
    #[arg(long, value_name = "NAME")]
    pub condition: String,

    /// Profiles to take, one after the other.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub replicates: u32,

    /// The load during the profile, in your words; kept in the metadata.
    #[arg(long, value_name = "TEXT")]
    pub load: Option<String>,

    /// Import these folded or pprof files as the replicates instead of profiling.
    #[arg(long, num_args = 1.., value_name = "FILE")]
    pub import: Vec<PathBuf>,

    #[command(flatten)]
    pub library: LibraryArgs,

    #[command(flatten)]
    pub profile: super::profile::ProfileArgs,
}

/// List the saved baselines.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only this component's.
    #[arg(long, value_name = "NAME")]
    pub component: Option<String>,

    #[command(flatten)]
    pub library: LibraryArgs,
}

/// Show a baseline's metadata and its top functions.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// COMPONENT/CONDITION (the latest) or COMPONENT/CONDITION/TIME.
    pub baseline: String,

    /// Rows of top functions.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,

    #[command(flatten)]
    pub library: LibraryArgs,
}

pub fn run(args: BaselineArgs) -> Result<()> {
    match args.command {
        BaselineCommand::Save(args) => save(*args),
        BaselineCommand::List(args) => list(args),
        BaselineCommand::Show(args) => show(args),
    }
}

fn save(args: SaveArgs) -> Result<()> {
    let library = Library::new(&args.library.dir);
    let modes = args.profile.modes();
    let [mode] = modes.iter().copied().collect::<Vec<_>>()[..] else {
        bail!("a baseline holds one mode; save one baseline per --mode");
    };
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut meta = BaselineMeta {
        component: args.component.clone(),
        condition: args.condition.clone(),
        created: String::new(),
        host,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_owned())
            .unwrap_or_default(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        mode: mode.name().to_owned(),
        duration_secs: 0.0,
        frequency: None,
        target: String::new(),
        load: args.load.clone(),
        replicates: Vec::new(),
        imported_from: Vec::new(),
        total: 0,
    };
    let runs: Vec<Folded> = if !args.import.is_empty() {
        meta.target = "imported".into();
        meta.imported_from = args
            .import
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        args.import
            .iter()
            .map(|p| read_profile(p))
            .collect::<Result<_, _>>()?
    } else {
        let scratch = tempfile::tempdir().context("creating a scratch directory")?;
        let mut request = crate::profile::ProfileRequest::from_cli(&args.profile)?;
        request.output_dir = scratch.path().to_path_buf();
        request.output.formats = [Format::Folded].into();
        meta.duration_secs = request.duration.as_secs_f64();
        meta.frequency = (mode == crate::profile::Mode::Cpu).then_some(request.frequency);
        let mut runs = Vec::new();
        for n in 1..=args.replicates {
            tracing::info!("replicate {n} of {}", args.replicates);
            let report = super::profile::run_request(&request)?;
            meta.target = report.target.clone();
            let path = scratch.path().join(format!("{}.folded", mode.name()));
            let run = read_profile(&path)
                .with_context(|| format!("replicate {n} recorded nothing for {}", report.target))?;
            runs.push(run);
        }
        runs
    };
    let saved = library.save(meta, &runs)?;
    println!(
        "saved baseline {} ({} replicates, {} total) in {}",
        saved.spec(),
        saved.meta.replicates.len(),
        saved.meta.total,
        saved.dir.display()
    );
    Ok(())
}

fn list(args: ListArgs) -> Result<()> {
    let library = Library::new(&args.library.dir);
    let all = library.list()?;
    let shown: Vec<_> = all
        .iter()
        .filter(|b| {
            args.component
                .as_ref()
                .is_none_or(|c| *c == b.meta.component)
        })
        .collect();
    if shown.is_empty() {
        println!("no baselines in {}", library.dir.display());
        return Ok(());
    }
    println!(
        "{:<48} {:<6} {:>4} {:>10}  load",
        "baseline", "mode", "runs", "total"
    );
    for b in shown {
        println!(
            "{:<48} {:<6} {:>4} {:>10}  {}",
            b.spec(),
            b.meta.mode,
            b.meta.replicates.len(),
            b.meta.total,
            b.meta.load.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

fn show(args: ShowArgs) -> Result<()> {
    let library = Library::new(&args.library.dir);
    let baseline = library.find(&args.baseline)?;
    let m = &baseline.meta;
    println!("baseline {}", baseline.spec());
    println!(
        "  created  {} on {} (kernel {}), hindsight {}",
        m.created, m.host, m.kernel, m.agent_version
    );
    println!(
        "  profile  {} of {}, {} replicate(s){}{}",
        m.mode,
        m.target,
        m.replicates.len(),
        if m.duration_secs > 0.0 {
            format!(" of {:.1} s", m.duration_secs)
        } else {
            String::new()
        },
        m.frequency
            .map(|f| format!(" at {f} Hz"))
            .unwrap_or_default()
    );
    if let Some(load) = &m.load {
        println!("  load     {load}");
    }
    if !m.imported_from.is_empty() {
        println!("  imported from {}", m.imported_from.join(", "));
    }
    for r in &m.replicates {
        println!("  file     {}", baseline.dir.join(r).display());
    }
    let mut all = Folded::default();
    for run in baseline.replicates()? {
        for (frames, w) in run.iter() {
            all.add(&frames.map(str::to_owned).collect::<Vec<_>>(), w);
        }
    }
    println!("  top functions (self):");
    for (name, n) in all.top_self(args.top) {
        println!("    {:5.1}%  {name}", 100.0 * ratio(n, all.total()));
    }
    Ok(())
}
