//! Configuration files: every `[capture] configs` glob match that no exclusion rule
//! names, redacted (see [`crate::capture::redact`]), under `configs/<absolute path>`.

use super::{Collector, Context, FileOpts, Keep, Sink, expand_glob, member_for};
use crate::capture::archive::ArchiveError;

pub struct Configs;

/// Config files are read into memory to be redacted; larger ones keep their start.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

impl Collector for Configs {
    fn name(&self) -> &'static str {
        "configs"
    }

    fn collect(&self, ctx: &Context<'_>, sink: &mut dyn Sink) -> Result<(), ArchiveError> {
        let opts = FileOpts {
            cap: ctx.config.max_file_bytes.min(MAX_CONFIG_BYTES),
            keep: Keep::Head,
            redact: Some(ctx.redactor),
            compressed: false,
        };
        let mut seen = std::collections::HashSet::new();
        for pattern in &ctx.config.configs {
            for path in expand_glob(pattern, sink) {
                if !seen.insert(path.clone()) {
                    continue;
                }
                if let Some(rule) = ctx.exclusions.matches(&path) {
                    sink.skip(&path.display().to_string(), &format!("excluded by {rule}"));
                    continue;
                }
                sink.add_file(&member_for("configs", &path), &path, &opts)?;
            }
        }
        Ok(())
    }
}
