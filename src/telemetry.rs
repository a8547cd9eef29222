//! Metrics of the process: the Prometheus recorder, every family's HELP text (the binary's
//! own families here, the libraries' through their `describe` functions), process metrics
//! (CPU, memory, descriptors, start time; `metrics-process`), and `larachat_build_info`.
//! Names follow `larachat_<component>_<name>_<unit>[_total]`; labels are bounded (listener,
//! route pattern, method, status, reason) — never an id.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Requests answered, by route pattern, method and status.
pub const HTTP_REQUESTS_TOTAL: &str = "larachat_http_requests_total";
/// Time to the response head, by route pattern.
pub const HTTP_REQUEST_DURATION: &str = "larachat_http_request_duration_seconds";
/// Requests refused with 503 because `server.max_in_flight` requests were in progress.
pub const HTTP_REQUESTS_SHED_TOTAL: &str = "larachat_http_requests_shed_total";
/// Requests answered 408 after `server.request_timeout_secs`.
pub const HTTP_REQUEST_TIMEOUTS_TOTAL: &str = "larachat_http_request_timeouts_total";
/// Open connections, by listener (`public`, `admin`); WebSockets included.
pub const SERVER_CONNECTIONS: &str = "larachat_server_connections";
/// Connections refused at admission, by listener and reason.
pub const SERVER_CONNECTIONS_REFUSED_TOTAL: &str = "larachat_server_connections_refused_total";
/// `accept` failures other than per-connection ones (e.g. out of descriptors), by listener.
pub const SERVER_ACCEPT_ERRORS_TOTAL: &str = "larachat_server_accept_errors_total";
/// Always 1, labelled with the version.
pub const BUILD_INFO: &str = "larachat_build_info";

/// The process-wide Prometheus recorder (the `metrics` facade has one global recorder). The
/// first call installs it, describes every family and sets `larachat_build_info`.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ])
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then ours renders nothing,
            // which is visible on /metrics rather than fatal.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// The text exposition: process metrics are sampled now, then everything is rendered.
pub fn render(handle: &PrometheusHandle) -> String {
    process_collector().collect();
    handle.render()
}

fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Every family of this process gets its HELP text.
fn describe() {
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        Unit::Count,
        "HTTP requests answered, by route pattern (unmatched for 404s), method and status."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "Time from a request's head to its response head, by route pattern."
    );
    describe_counter!(
        HTTP_REQUESTS_SHED_TOTAL,
        Unit::Count,
        "HTTP requests refused with 503 because server.max_in_flight requests were in progress."
    );
    describe_counter!(
        HTTP_REQUEST_TIMEOUTS_TOTAL,
        Unit::Count,
        "HTTP requests answered 408 because body and handler took longer than server.request_timeout_secs."
    );
    describe_gauge!(
        SERVER_CONNECTIONS,
        Unit::Count,
        "Open TCP connections, by listener (public, admin); upgraded WebSockets included."
    );
    describe_counter!(
        SERVER_CONNECTIONS_REFUSED_TOTAL,
        Unit::Count,
        "Connections closed at accept, by listener and reason (max_connections, max_connections_per_ip)."
    );
    describe_counter!(
        SERVER_ACCEPT_ERRORS_TOTAL,
        Unit::Count,
        "accept() failures that are not about one connection (e.g. out of descriptors), by listener; each backs off."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label is the running larachat version."
    );
    larachat_gateway::telemetry::describe();
    larachat_control_plane::describe_metrics();
    crate::outbox::describe_metrics();
    process_collector().describe();
}

/// An open connection on the `larachat_server_connections` gauge, removed on drop.
pub struct OpenConnection(&'static str);

impl OpenConnection {
    pub fn new(listener: &'static str) -> Self {
        metrics::gauge!(SERVER_CONNECTIONS, "listener" => listener).increment(1.0);
        Self(listener)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!(SERVER_CONNECTIONS, "listener" => self.0).decrement(1.0);
    }
}

pub fn connection_refused(listener: &'static str, reason: &'static str) {
    metrics::counter!(SERVER_CONNECTIONS_REFUSED_TOTAL, "listener" => listener, "reason" => reason)
        .increment(1);
}

pub fn accept_error(listener: &'static str) {
    metrics::counter!(SERVER_ACCEPT_ERRORS_TOTAL, "listener" => listener).increment(1);
}
