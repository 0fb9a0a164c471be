//! `GET /metrics`: the Prometheus text format (version 0.0.4), written by the
//! `prometheus-client` crate from one [`Snapshot`].
//!
//! The crate's own metric types (an `Arc<AtomicU64>` each) are made to be kept and
//! incremented; rsp's counters already live in its own structs, so each scrape hands the
//! crate plain values through a `Collector` (`ConstCounter`, `ConstGauge`). The crate
//! writes the `# HELP`/`# TYPE` lines, the `_total` suffix of counters and the escaping
//! of label values. No label holds a client address: one series per client would grow
//! without end.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::snapshot::Snapshot;
use super::{ModeFigures, outcomes};

/// The `Content-Type` of the text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The text of `/metrics` for `snapshot`.
pub fn render(snapshot: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(snapshot)));
    let mut text = String::new();
    // Writing into a `String` cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
    text
}

/// One scrape's values.
#[derive(Debug)]
struct Scrape(Snapshot);

/// A label set: `[("backend", "127.0.0.1:9001"), ("outcome", "eof")]`.
type Labels = Vec<(&'static str, String)>;

/// One metric family: name (without `_total`), help, and its series.
struct Family<'a> {
    name: &'a str,
    help: &'a str,
    counter: bool,
    series: Vec<(Labels, f64)>,
}

impl Family<'_> {
    fn write(self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let kind = match self.counter {
            true => ConstCounter::new(0u64).metric_type(),
            false => ConstGauge::new(0i64).metric_type(),
        };
        let mut family = encoder.encode_descriptor(self.name, self.help, None, kind)?;
        for (labels, value) in &self.series {
            let series = family.encode_family(labels)?;
            match self.counter {
                true => ConstCounter::new(*value as u64).encode(series)?,
                // Whole numbers print as such (`3`, not `3.0`).
                false if value.fract() == 0.0 => ConstGauge::new(*value as i64).encode(series)?,
                false => ConstGauge::new(*value).encode(series)?,
            }
        }
        Ok(())
    }
}

fn one(value: f64) -> Vec<(Labels, f64)> {
    vec![(Vec::new(), value)]
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        for family in families(&self.0) {
            family.write(&mut encoder)?;
        }
        Ok(())
    }
}

fn families(s: &Snapshot) -> Vec<Family<'static>> {
    let backend = |name: &str| vec![("backend", name.to_string())];
    let per_backend = |f: &dyn Fn(&super::snapshot::BackendFigures) -> f64| {
        s.backends
            .iter()
            .map(|b| (backend(&b.name), f(b)))
            .collect::<Vec<_>>()
    };
    let mut connections = Vec::new();
    for b in &s.backends {
        for (i, outcome) in outcomes().enumerate() {
            let labels = vec![
                ("backend", b.name.clone()),
                ("outcome", outcome.as_str().replace(' ', "_")),
            ];
            connections.push((labels, b.outcomes[i] as f64));
        }
    }
    for (i, outcome) in outcomes().enumerate() {
        let labels = vec![
            ("backend", "none".to_string()),
            ("outcome", outcome.as_str().replace(' ', "_")),
        ];
        connections.push((labels, s.unserved[i] as f64));
    }
    let mut bytes = Vec::new();
    for b in &s.backends {
        for (direction, n) in [("to_backend", b.bytes_up), ("to_client", b.bytes_down)] {
            let labels = vec![
                ("backend", b.name.clone()),
                ("direction", direction.to_string()),
            ];
            bytes.push((labels, n as f64));
        }
    }
    let live = s.live.as_ref();
    let mut list = vec![
        gauge(
            "rsp_uptime_seconds",
            "Seconds since rsp started.",
            one(s.uptime),
        ),
        counter(
            "rsp_connections",
            "Connections ended, by backend (none: no backend reached) and outcome.",
            connections,
        ),
        counter(
            "rsp_bytes",
            "Bytes passed on, by backend and direction.",
            bytes,
        ),
        gauge(
            "rsp_backend_up",
            "1 if the backend gets new connections, 0 while it is DOWN (health checks) or \
             skipped after a failed connect.",
            per_backend(&|b| f64::from(u8::from(b.state == "up"))),
        ),
        gauge(
            "rsp_backend_health_up",
            "1 unless the health checks say the backend is DOWN (always 1 with checks off).",
            per_backend(&|b| f64::from(u8::from(b.state != "down"))),
        ),
        gauge(
            "rsp_backend_weight",
            "The backend's weight.",
            per_backend(&|b| b.weight as f64),
        ),
        gauge(
            "rsp_backend_connections_open",
            "Connections open to the backend.",
            per_backend(&|b| b.open as f64),
        ),
        counter(
            "rsp_backend_connections_opened",
            "Connections made to the backend.",
            per_backend(&|b| b.total as f64),
        ),
        counter(
            "rsp_backend_connect_failures",
            "Connects to the backend that failed.",
            per_backend(&|b| b.connect_failures as f64),
        ),
        counter(
            "rsp_reloads",
            "Reloads (SIGHUP), by result.",
            vec![
                (vec![("result", "ok".into())], s.reloads[0] as f64),
                (vec![("result", "error".into())], s.reloads[1] as f64),
            ],
        ),
    ];
    if let Some(live) = live {
        list.push(gauge(
            "rsp_connections_open",
            "Connections open (accepted, not yet closed).",
            one(live.open as f64),
        ));
        list.push(gauge(
            "rsp_draining",
            "1 once a shutdown began (no longer accepting).",
            one(f64::from(u8::from(live.draining))),
        ));
    }
    if let Some(limit) = s.limit {
        list.push(gauge(
            "rsp_connections_limit",
            "The most connections open at once (from the open-files limit).",
            one(limit as f64),
        ));
    }
    match s.mode_figures() {
        Some(ModeFigures::Threads {
            workers,
            copiers,
            queued,
            handoff_full,
        }) => {
            let pool = |p: &super::PoolFigures| {
                vec![
                    (vec![("state", "busy".into())], p.busy as f64),
                    (
                        vec![("state", "idle".into())],
                        (p.threads - p.busy.min(p.threads)) as f64,
                    ),
                ]
            };
            list.push(gauge(
                "rsp_workers",
                "Worker threads, by state.",
                pool(workers),
            ));
            list.push(gauge(
                "rsp_workers_max",
                "The `workers` setting.",
                one(workers.max as f64),
            ));
            list.push(gauge(
                "rsp_workers_busy_peak",
                "The most workers busy at once since start.",
                one(workers.peak as f64),
            ));
            list.push(gauge(
                "rsp_copy_threads",
                "Copy threads, by state.",
                pool(copiers),
            ));
            list.push(gauge(
                "rsp_handoff_queued",
                "Clients handed off, waiting for a worker.",
                one(*queued as f64),
            ));
            list.push(gauge(
                "rsp_handoff_full",
                "1 while the accept loop waits for room (clients wait in the backlog).",
                one(f64::from(u8::from(*handoff_full))),
            ));
        }
        Some(ModeFigures::Mio {
            loops,
            max_buffered,
        }) => {
            let per_loop = |k: usize| {
                loops
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (vec![("loop", i.to_string())], l[k] as f64))
                    .collect::<Vec<_>>()
            };
            list.push(gauge(
                "rsp_loop_connections",
                "Connections open, by event loop.",
                per_loop(0),
            ));
            list.push(gauge(
                "rsp_loop_queued_bytes",
                "Bytes queued for slow readers, by event loop.",
                per_loop(1),
            ));
            list.push(gauge(
                "rsp_loop_paused_directions",
                "Directions paused at max_buffered (backpressure), by event loop.",
                per_loop(2),
            ));
            list.push(gauge(
                "rsp_max_buffered_bytes",
                "The `max_buffered` setting, per direction.",
                one(*max_buffered as f64),
            ));
        }
        None => {}
    }
    list
}

fn gauge(name: &'static str, help: &'static str, series: Vec<(Labels, f64)>) -> Family<'static> {
    Family {
        name,
        help,
        counter: false,
        series,
    }
}

fn counter(name: &'static str, help: &'static str, series: Vec<(Labels, f64)>) -> Family<'static> {
    Family {
        name,
        help,
        counter: true,
        series,
    }
}
