//! Folded stacks -> interactive SVG flame graph, with inferno as a library: plain, icicle
//! (root at the top) or reversed (leaf functions at the root, their callers above), and
//! differential graphs of two profiles.

use std::io::Write;

use inferno::flamegraph::{Direction, Options, color::Palette};

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
    pub style: GraphStyle,
}

/// How frames are laid out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphStyle {
    /// Icicle graph: the root at the top, stacks growing down.
    pub icicle: bool,
    /// Stacks reversed: leaf functions at the root with their callers stacked on them,
    /// so that a function called from many places shows as one wide frame.
    pub reversed: bool,
}

fn options(labels: &GraphLabels) -> Options<'static> {
    let mut options = Options::default();
    options.title = labels.title.clone();
    options.subtitle = Some(labels.subtitle.clone());
    options.count_name = labels.count_name.clone();
    options.colors = labels.palette;
    // Same colours for the same function across runs and hosts, so graphs compare.
    options.hash = true;
    if labels.style.icicle {
        options.direction = Direction::Inverted;
    }
    options.reverse_stack_order = labels.style.reversed;
    options
}

/// Writes a differential flame graph from inferno's differential lines (`stack before
/// after`): frame widths are the "after" weights, red frames grew, blue ones shrank.
pub fn write_diff_svg<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    labels: &GraphLabels,
    out: impl Write,
) -> std::io::Result<()> {
    let mut options = options(labels);
    // Differential colouring is by the change, not by the function name.
    options.hash = false;
    inferno::flamegraph::from_lines(&mut options, lines, out)
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
    let mut options = options(labels);
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
            style: GraphStyle::default(),
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
    fn icicle_and_reversed_graphs_differ_from_the_plain_one() {
        let mut folded = Folded::default();
        folded.add(&["app".into(), "main".into(), "a".into(), "leaf".into()], 3);
        folded.add(&["app".into(), "main".into(), "b".into(), "leaf".into()], 1);
        let svg = |style| {
            let mut out = Vec::new();
            write_svg(&folded, &GraphLabels { style, ..labels() }, &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        let plain = svg(GraphStyle::default());
        let icicle = svg(GraphStyle {
            icicle: true,
            reversed: false,
        });
        let reversed = svg(GraphStyle {
            icicle: false,
            reversed: true,
        });
        // The root frame `app` is drawn at the bottom of a flame graph, at the top of an
        // icicle graph.
        let app_y = |svg: &str| -> f64 {
            let at = svg.find("<title>app (").unwrap();
            let rect = &svg[at..];
            let y = rect.find(" y=\"").unwrap() + 4;
            rect[y..y + rect[y..].find('"').unwrap()].parse().unwrap()
        };
        assert!(
            app_y(&icicle) < app_y(&plain),
            "icicle puts the root on top"
        );
        // Reversed: `leaf` (4 samples) is the frame right above the all frame, the
        // callers a and b above it.
        assert!(reversed.contains("<title>leaf (4 samples, 100.00%)</title>"));
        assert!(plain.contains("<title>leaf (3 samples, 75.00%)</title>"));
    }

    #[test]
    fn empty_profile_still_gives_an_svg() {
        let mut svg = Vec::new();
        write_svg(&Folded::default(), &labels(), &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.contains("<svg") && svg.contains("No samples") && svg.contains("On-CPU test"));
    }
}
