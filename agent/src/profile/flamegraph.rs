//! Folded stacks -> interactive SVG flame graph, with inferno as a library.

use std::io::Write;

use inferno::flamegraph::{
    Options,
    color::{BasicPalette, Palette},
};

use super::stack::Folded;

/// What the graph shows, for its title.
#[derive(Debug, Clone)]
pub struct GraphLabels {
    pub title: String,
    pub subtitle: String,
    /// What a frame's weight counts ("samples").
    pub count_name: String,
}

/// Writes the SVG. An empty profile still gives a valid SVG that says so.
pub fn write_svg(folded: &Folded, labels: &GraphLabels, out: impl Write) -> std::io::Result<()> {
    let mut options = Options::default();
    options.title = labels.title.clone();
    options.subtitle = Some(labels.subtitle.clone());
    options.count_name = labels.count_name.clone();
    options.colors = Palette::Basic(BasicPalette::Hot);
    // Same colours for the same function across runs and hosts, so graphs compare.
    options.hash = true;
    let lines: Vec<String> = folded.lines().collect();
    match inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out) {
        // inferno has already written an SVG that says "no valid input".
        Err(err) if folded.is_empty() && err.kind() == std::io::ErrorKind::InvalidData => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> GraphLabels {
        GraphLabels {
            title: "On-CPU test".into(),
            subtitle: "sub".into(),
            count_name: "samples".into(),
        }
    }

    #[test]
    fn svg_names_every_frame_and_the_title() {
        let mut folded = Folded::default();
        folded.add(&["app".into(), "main".into(), "hot_loop".into()], 30);
        folded.add(
            &["app".into(), "main".into(), "do_syscall_64_[k]".into()],
            10,
        );
        let mut svg = Vec::new();
        write_svg(&folded, &labels(), &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.starts_with("<?xml"));
        for needle in ["On-CPU test", "hot_loop", "do_syscall_64", "40 samples"] {
            assert!(svg.contains(needle), "missing {needle}");
        }
    }

    #[test]
    fn empty_profile_still_gives_an_svg() {
        let mut svg = Vec::new();
        write_svg(&Folded::default(), &labels(), &mut svg).unwrap();
        assert!(String::from_utf8(svg).unwrap().contains("<svg"));
    }
}
