//! Prometheus metrics kept with atomics: request counts and latencies, open
//! connections, uptime.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Default)]
pub struct Metrics {
    requests: [AtomicU64; 5],
    buckets: [AtomicU64; BUCKETS.len()],
    latency_sum_micros: AtomicU64,
    latency_count: AtomicU64,
    open_connections: AtomicU64,
    connections_total: AtomicU64,
}

impl Metrics {
    pub fn record_request(&self, status: u16, elapsed: Duration) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.requests[class].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_opened(&self) {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn open_connections(&self) -> u64 {
        self.open_connections.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self, uptime: Duration, trusted_certificates: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP stapes_api_requests_total API requests answered, by status class."
        );
        let _ = writeln!(out, "# TYPE stapes_api_requests_total counter");
        for (i, class) in CLASSES.iter().enumerate() {
            let n = self.requests[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "stapes_api_requests_total{{code=\"{class}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP stapes_api_request_duration_seconds Time to answer an API request."
        );
        let _ = writeln!(out, "# TYPE stapes_api_request_duration_seconds histogram");
        for (i, le) in BUCKETS.iter().enumerate() {
            let n = self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "stapes_api_request_duration_seconds_bucket{{le=\"{le}\"}} {n}"
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let sum = self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "stapes_api_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(out, "stapes_api_request_duration_seconds_sum {sum}");
        let _ = writeln!(out, "stapes_api_request_duration_seconds_count {count}");
        let gauges = [
            (
                "stapes_open_connections",
                "Connections open now.",
                "gauge",
                self.open_connections() as f64,
            ),
            (
                "stapes_connections_total",
                "Connections accepted since start.",
                "counter",
                self.connections_total.load(Ordering::Relaxed) as f64,
            ),
            (
                "stapes_uptime_seconds",
                "Seconds since the daemon started.",
                "gauge",
                uptime.as_secs_f64(),
            ),
            (
                "stapes_trusted_certificates",
                "Certificates in the trust store.",
                "gauge",
                trusted_certificates as f64,
            ),
        ];
        for (name, help, kind, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        out.push_str("# EOF\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_histogram() {
        let m = Metrics::default();
        m.record_request(200, Duration::from_micros(300));
        m.record_request(404, Duration::from_millis(30));
        let text = m.render(Duration::from_secs(5), 2);
        assert!(text.contains("stapes_api_requests_total{code=\"2xx\"} 1"));
        assert!(text.contains("stapes_api_requests_total{code=\"4xx\"} 1"));
        assert!(text.contains("stapes_api_request_duration_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("stapes_api_request_duration_seconds_count 2"));
        assert!(text.contains("stapes_uptime_seconds 5"));
        assert!(text.ends_with("# EOF\n"));
    }
}
