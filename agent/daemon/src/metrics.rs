//! Prometheus metrics, `/healthz` and `/readyz` on one HTTP listener.
//!
//! The text exposition format is written here directly: a dozen counters do not need a
//! metrics framework.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use repo_format::RequestCounts;

use crate::types::Phase;

/// The agent's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// (metric, labels) -> value.
    counters: Mutex<BTreeMap<(&'static str, String), f64>>,
    /// Storage requests of every repository the agent opened.
    pub requests: Arc<RequestCounts>,
    /// Repositories opened (each derives the key from the password: CPU and 32 MiB).
    pub repository_opens: Arc<AtomicU64>,
    ready: AtomicBool,
    pub running: AtomicU64,
}

impl Metrics {
    fn add(&self, name: &'static str, labels: String, v: f64) {
        *self.counters.lock().expect("metrics lock").entry((name, labels)).or_default() += v;
    }

    pub fn accepted(&self, direction: &str) {
        self.add("ferry_agent_accepted_total", format!("direction=\"{direction}\""), 1.0);
    }

    pub fn ended(&self, direction: &str, phase: Phase) {
        let labels = format!("direction=\"{direction}\",phase=\"{}\"", phase.as_str());
        self.add("ferry_agent_ended_total", labels, 1.0);
    }

    pub fn error(&self, direction: &str) {
        self.add("ferry_agent_errors_total", format!("direction=\"{direction}\""), 1.0);
    }

    pub fn bytes(&self, direction: &str, n: u64) {
        self.add("ferry_agent_bytes_total", format!("direction=\"{direction}\""), n as f64);
    }

    pub fn duration(&self, direction: &str, d: Duration) {
        self.add("ferry_agent_job_seconds_sum", format!("direction=\"{direction}\""), d.as_secs_f64());
        self.add("ferry_agent_job_seconds_count", format!("direction=\"{direction}\""), 1.0);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut last = "";
        for ((name, labels), v) in self.counters.lock().expect("metrics lock").iter() {
            if *name != last {
                let kind = if name.ends_with("_sum") || name.ends_with("_count") { "untyped" } else { "counter" };
                out.push_str(&format!("# TYPE {name} {kind}\n"));
                last = name;
            }
            out.push_str(&format!("{name}{{{labels}}} {v}\n"));
        }
        out.push_str("# TYPE ferry_agent_repository_opens_total counter\n");
        out.push_str(&format!("ferry_agent_repository_opens_total {}\n", self.repository_opens.load(Relaxed)));
        let [put, get, list, delete, up, down] = self.requests.snapshot();
        out.push_str("# TYPE ferry_agent_storage_requests_total counter\n");
        for (op, n) in [("put", put), ("get", get), ("list", list), ("delete", delete)] {
            out.push_str(&format!("ferry_agent_storage_requests_total{{op=\"{op}\"}} {n}\n"));
        }
        out.push_str("# TYPE ferry_agent_storage_bytes_total counter\n");
        out.push_str(&format!("ferry_agent_storage_bytes_total{{dir=\"up\"}} {up}\n"));
        out.push_str(&format!("ferry_agent_storage_bytes_total{{dir=\"down\"}} {down}\n"));
        out.push_str("# TYPE ferry_agent_running_jobs gauge\n");
        out.push_str(&format!("ferry_agent_running_jobs {}\n", self.running.load(Relaxed)));
        out
    }
}

/// Listen on `addr` (port 0: any free port; see `local_addr`).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr} (--metrics-addr)"))
}

/// Serve `/metrics`, `/healthz` and `/readyz` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) -> Result<()> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Response, StatusCode};
    tracing::info!("metrics and health on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let m = metrics.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let m = m.clone();
                async move {
                    let (code, body) = match req.uri().path() {
                        "/metrics" => (StatusCode::OK, m.render()),
                        "/healthz" => (StatusCode::OK, "ok\n".to_string()),
                        "/readyz" if m.is_ready() => (StatusCode::OK, "ready\n".to_string()),
                        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_string()),
                        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
                    };
                    Response::builder().status(code).body(Full::new(Bytes::from(body)))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_the_exposition_format() {
        let m = Metrics::default();
        m.accepted("upload");
        m.accepted("upload");
        m.ended("download", Phase::Failed);
        let t = m.render();
        assert!(
            t.contains(
                "# TYPE ferry_agent_accepted_total counter\nferry_agent_accepted_total{direction=\"upload\"} 2\n"
            ),
            "{t}"
        );
        assert!(t.contains("ferry_agent_ended_total{direction=\"download\",phase=\"Failed\"} 1\n"), "{t}");
        assert!(t.contains("ferry_agent_storage_requests_total{op=\"put\"} 0\n"), "{t}");
    }
}
