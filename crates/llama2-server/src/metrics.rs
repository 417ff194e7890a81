//! `GET /metrics`: Prometheus counters, histograms and gauges of one server. The three
//! gauges routers and autoscalers read (queued requests, running requests, KV cache use)
//! are also published under vLLM's names, so tools written for vLLM read them unchanged.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric of a server, registered in a registry of its own.
pub struct Metrics {
    registry: Registry,
    /// Answered HTTP requests by route and status.
    pub requests: IntCounterVec,
    /// Prompt tokens of finished generations.
    pub prompt_tokens: IntCounter,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: IntCounter,
    /// Generated tokens.
    pub generated_tokens: IntCounter,
    /// Time from a request's arrival to its first token.
    pub time_to_first_token: Histogram,
    /// Time between consecutive tokens of one sequence.
    pub inter_token: Histogram,
    /// Time from arrival to the last token.
    pub request_duration: Histogram,
    /// Time of one safety classifier check (`--guard`).
    pub guard_check: Histogram,
    /// Messages the safety classifier blocked, by stage (prompt or answer).
    pub guard_blocked: IntCounterVec,
    waiting: [IntGauge; 2],
    running: [IntGauge; 2],
    kv_usage: [Gauge; 2],
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

const LATENCY_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0,
];
const DURATION_BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0,
];

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("llama2_requests_total", "HTTP requests answered"),
            &["route", "status"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(requests.clone()))
            .expect("unique metric");
        let guard_blocked = IntCounterVec::new(
            Opts::new(
                "llama2_guard_blocked_total",
                "Messages the safety classifier blocked",
            ),
            &["stage"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(guard_blocked.clone()))
            .expect("unique metric");
        let waiting_help = "Requests waiting for a KV slot";
        let running_help = "Requests holding a KV slot";
        let kv_help = "Fraction of the KV cache's positions held by running requests (0..1)";
        Metrics {
            requests,
            prompt_tokens: counter(
                &registry,
                "llama2_prompt_tokens_total",
                "Prompt tokens of finished requests",
            ),
            cached_tokens: counter(
                &registry,
                "llama2_prompt_tokens_cached_total",
                "Prompt tokens reused from the prefix cache",
            ),
            generated_tokens: counter(
                &registry,
                "llama2_generation_tokens_total",
                "Generated tokens",
            ),
            time_to_first_token: histogram(
                &registry,
                "llama2_time_to_first_token_seconds",
                "Time from a request's arrival to its first generated token",
                &LATENCY_BUCKETS,
            ),
            inter_token: histogram(
                &registry,
                "llama2_inter_token_latency_seconds",
                "Time between consecutive generated tokens of one sequence",
                &LATENCY_BUCKETS,
            ),
            request_duration: histogram(
                &registry,
                "llama2_request_duration_seconds",
                "Time from a request's arrival to its last token",
                &DURATION_BUCKETS,
            ),
            guard_check: histogram(
                &registry,
                "llama2_guard_check_seconds",
                "Time of one safety classifier check",
                &LATENCY_BUCKETS,
            ),
            guard_blocked,
            waiting: [
                int_gauge(&registry, "llama2_requests_waiting", waiting_help),
                int_gauge(&registry, "vllm:num_requests_waiting", waiting_help),
            ],
            running: [
                int_gauge(&registry, "llama2_requests_running", running_help),
                int_gauge(&registry, "vllm:num_requests_running", running_help),
            ],
            kv_usage: [
                gauge(&registry, "llama2_kv_cache_usage_ratio", kv_help),
                gauge(&registry, "vllm:gpu_cache_usage_perc", kv_help),
            ],
            registry,
        }
    }

    /// Sets the engine's gauges (read at scrape time).
    pub fn set_engine_gauges(&self, waiting: usize, running: usize, kv_usage: f64) {
        for g in &self.waiting {
            g.set(waiting as i64);
        }
        for g in &self.running {
            g.set(running as i64);
        }
        for g in &self.kv_usage {
            g.set(kv_usage);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_gauge_names_are_exposed() {
        let m = Metrics::new();
        m.set_engine_gauges(3, 4, 0.25);
        m.requests.with_label_values(&["/health", "200"]).inc();
        let text = m.render();
        for line in [
            "vllm:num_requests_waiting 3",
            "vllm:num_requests_running 4",
            "vllm:gpu_cache_usage_perc 0.25",
            "llama2_requests_waiting 3",
            "llama2_requests_total{route=\"/health\",status=\"200\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert!(text.contains("# TYPE llama2_time_to_first_token_seconds histogram"));
    }
}
