//! Counters for `/metrics`, in the Prometheus text exposition format. Plain atomics:
//! the daemon exports a dozen numbers, not enough to justify a metrics framework.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct Metrics {
    pub captures_done: AtomicU64,
    pub captures_failed: AtomicU64,
    pub capture_millis: AtomicU64,
    pub capture_bytes: AtomicU64,
    pub profiles_done: AtomicU64,
    pub profiles_failed: AtomicU64,
    pub profile_millis: AtomicU64,
    /// Samples and stacks the eBPF side could not record (lost stacks, full maps).
    pub lost_events: AtomicU64,
    pub rejected_queue_full: AtomicU64,
    pub rejected_rate_limited: AtomicU64,
    pub requests: AtomicU64,
    pub requests_denied: AtomicU64,
    pub reloads: AtomicU64,
}

/// Gauges read at scrape time.
pub struct Gauges {
    pub capture_queue: usize,
    pub profile_queue: usize,
    pub running: usize,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let v = |c: &AtomicU64| c.load(Relaxed);
        metric(
            "hindsight_captures_total",
            "counter",
            "Captures finished, by result.",
            &[
                ("{result=\"done\"}", v(&self.captures_done)),
                ("{result=\"failed\"}", v(&self.captures_failed)),
            ],
        );
        metric(
            "hindsight_capture_duration_milliseconds_total",
            "counter",
            "Time spent in finished captures.",
            &[("", v(&self.capture_millis))],
        );
        metric(
            "hindsight_capture_bytes_total",
            "counter",
            "Bytes of archives written.",
            &[("", v(&self.capture_bytes))],
        );
        metric(
            "hindsight_profiles_total",
            "counter",
            "Profiles finished, by result.",
            &[
                ("{result=\"done\"}", v(&self.profiles_done)),
                ("{result=\"failed\"}", v(&self.profiles_failed)),
            ],
        );
        metric(
            "hindsight_profile_duration_milliseconds_total",
            "counter",
            "Time spent in finished profiles.",
            &[("", v(&self.profile_millis))],
        );
        metric(
            "hindsight_ebpf_lost_events_total",
            "counter",
            "Samples or stacks the eBPF programs could not record (lost stacks, full maps, lost notifications).",
            &[("", v(&self.lost_events))],
        );
        metric(
            "hindsight_rejected_total",
            "counter",
            "Jobs refused with 429, by reason.",
            &[
                ("{reason=\"queue_full\"}", v(&self.rejected_queue_full)),
                ("{reason=\"rate_limited\"}", v(&self.rejected_rate_limited)),
            ],
        );
        metric(
            "hindsight_requests_total",
            "counter",
            "API requests answered.",
            &[("", v(&self.requests))],
        );
        metric(
            "hindsight_requests_denied_total",
            "counter",
            "API requests refused for lack of a role (403).",
            &[("", v(&self.requests_denied))],
        );
        metric(
            "hindsight_reloads_total",
            "counter",
            "Successful configuration reloads.",
            &[("", v(&self.reloads))],
        );
        metric(
            "hindsight_queue_depth",
            "gauge",
            "Jobs waiting, by kind.",
            &[
                ("{kind=\"capture\"}", gauges.capture_queue as u64),
                ("{kind=\"profile\"}", gauges.profile_queue as u64),
            ],
        );
        metric(
            "hindsight_jobs_running",
            "gauge",
            "Jobs running now.",
            &[("", gauges.running as u64)],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        Metrics::add(&m.captures_done, 2);
        let text = m.render(&Gauges {
            capture_queue: 1,
            profile_queue: 0,
            running: 1,
        });
        assert!(text.contains("# TYPE hindsight_captures_total counter\n"));
        assert!(text.contains("hindsight_captures_total{result=\"done\"} 2\n"));
        assert!(text.contains("hindsight_queue_depth{kind=\"capture\"} 1\n"));
    }
}
