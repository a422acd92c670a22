//! Folded stacks -> interactive SVG flame graph, with inferno as a library.

use std::io::Write;

use inferno::flamegraph::{Options, color::Palette};

use super::stack::Folded;

/// What the graph shows, for its title.
#[derive(Debug, Clone)]
pub struct GraphLabels {
    pub title: String,
    pub subtitle: String,
    /// What a frame's weight counts ("samples", "µs").
    pub count_name: String,
    /// Colours that tell the modes apart (hot for on-CPU, io blues for off-CPU...).
    pub palette: Palette,
}

/// Writes the SVG. An empty profile still gives a valid SVG that says so.
pub fn write_svg(
    folded: &Folded,
    labels: &GraphLabels,
    mut out: impl Write,
) -> std::io::Result<()> {
    if folded.is_empty() {
        // inferno refuses empty input; say what happened instead of drawing nothing.
        return write!(
            out,
            concat!(
                r#"<?xml version="1.0" standalone="no"?>"#,
                r#"<svg version="1.1" width="1200" height="80" xmlns="http://www.w3.org/2000/svg">"#,
                r#"<text x="600" y="30" text-anchor="middle" font-size="17">{}</text>"#,
                r#"<text x="600" y="60" text-anchor="middle" font-size="12">No samples: {}</text></svg>"#
            ),
            xml_escape(&labels.title),
            xml_escape(&labels.subtitle)
        );
    }
    let mut options = Options::default();
    options.title = labels.title.clone();
    options.subtitle = Some(labels.subtitle.clone());
    options.count_name = labels.count_name.clone();
    options.colors = labels.palette;
    // Same colours for the same function across runs and hosts, so graphs compare.
    options.hash = true;
    let lines: Vec<String> = folded.lines().collect();
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> GraphLabels {
        GraphLabels {
            title: "On-CPU test".into(),
            subtitle: "sub".into(),
            count_name: "samples".into(),
            palette: Palette::Basic(inferno::flamegraph::color::BasicPalette::Hot),
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
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.contains("<svg") && svg.contains("No samples") && svg.contains("On-CPU test"));
    }
}
