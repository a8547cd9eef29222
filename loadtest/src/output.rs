//! What a run produces: the JSON result (one object per run, stable field names), the samples
//! its plot is drawn from, and the CPU/RSS bookkeeping of the server and of the load generator.
//! Written to an output directory as `results.jsonl` (appended) plus `<run name>.json` and
//! `<run name>.svg`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Value, json};

use crate::procstat::{self, Sample};
use crate::stats::Latencies;

/// One point of server memory against open connections over time (idle scenario).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RssPoint {
    pub t_s: f64,
    pub connections: u64,
    pub rss_kib: u64,
}

/// A finished run.
pub struct RunOutput {
    pub result: Value,
    /// Send→delivery latencies, for the CDF plot.
    pub latency: Option<Latencies>,
    /// Server RSS against connections, for the idle plot.
    pub rss: Vec<RssPoint>,
}

impl RunOutput {
    pub fn new(result: Value) -> Self {
        Self {
            result,
            latency: None,
            rss: Vec::new(),
        }
    }
}

/// CPU time of the server and of this process over a measured stretch, and the server's RSS
/// at both ends.
pub struct CpuWatch {
    server: Option<(u32, Sample)>,
    me: Option<Sample>,
    /// Other processes of the system under test (`--watch-pid NAME=PID`).
    others: Vec<(String, u32, Sample)>,
}

impl CpuWatch {
    /// Starts measuring (the server only when its pid is known).
    pub fn start(server_pid: Option<u32>) -> Result<Self> {
        let server = match server_pid {
            Some(pid) => Some((pid, procstat::sample(pid)?)),
            None => None,
        };
        Ok(Self {
            server,
            me: procstat::sample(std::process::id()).ok(),
            others: Vec::new(),
        })
    }

    /// Also measures each of `pids` (name, pid): `finish` then reports
    /// `cpu_us_per_delivery_by_process`.
    pub fn watching(mut self, pids: &[(String, u32)]) -> Result<Self> {
        for (name, pid) in pids {
            let s = procstat::sample(*pid).with_context(|| format!("--watch-pid {name}={pid}"))?;
            self.others.push((name.clone(), *pid, s));
        }
        Ok(self)
    }

    /// JSON fields for a stretch that did `units` deliveries: `server_cpu_s`,
    /// `server_cpu_us_per_delivery`, `server_rss_kib_before/after`, `loadgen_cpu_s`,
    /// `loadgen_cpu_us_per_delivery`, `server_written_kib_per_delivery` (bytes the server sent
    /// to storage: the store's commits and checkpoints). Server fields are null when the pid
    /// is unknown.
    pub fn finish(&self, units: u64) -> Value {
        let mut v = json!({
            "server_cpu_s": null,
            "server_cpu_us_per_delivery": null,
            "server_rss_kib_before": null,
            "server_rss_kib_after": null,
            "server_written_kib_per_delivery": null,
        });
        if let Some((pid, before)) = self.server {
            if let Ok(after) = procstat::sample(pid) {
                v = json!({
                    "server_cpu_s": round3(after.cpu_s - before.cpu_s),
                    "server_cpu_us_per_delivery": procstat::cpu_us_per(before, after, units),
                    "server_rss_kib_before": before.rss_kib,
                    "server_rss_kib_after": after.rss_kib,
                    "server_written_kib_per_delivery":
                        procstat::written_kib_per(before, after, units),
                });
            }
        }
        if !self.others.is_empty() {
            let mut by = serde_json::Map::new();
            for (name, pid, before) in &self.others {
                if let Ok(after) = procstat::sample(*pid) {
                    by.insert(
                        name.clone(),
                        json!(procstat::cpu_us_per(*before, after, units)),
                    );
                }
            }
            v["cpu_us_per_delivery_by_process"] = Value::Object(by);
        }
        if let (Some(before), Ok(after)) = (self.me, procstat::sample(std::process::id())) {
            v["loadgen_cpu_s"] = json!(round3(after.cpu_s - before.cpu_s));
            v["loadgen_cpu_us_per_delivery"] = json!(procstat::cpu_us_per(before, after, units));
        }
        v
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Copies every field of object `extra` into object `into`.
pub fn merge(into: &mut Value, extra: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), extra) {
        a.extend(b);
    }
}

/// The output directory.
pub struct OutDir {
    pub dir: PathBuf,
}

impl OutDir {
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// Appends the result to `results.jsonl`, writes `<name>.json` and the plot `<name>.svg`.
    /// Returns the paths written.
    pub fn write(&self, name: &str, run: &mut RunOutput) -> Result<Vec<PathBuf>> {
        let mut written = Vec::new();
        let line = serde_json::to_string(&run.result)?;
        let all = self.dir.join("results.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&all)
            .with_context(|| format!("opening {}", all.display()))?;
        writeln!(f, "{line}")?;
        written.push(all);
        let one = self.dir.join(format!("{name}.json"));
        std::fs::write(&one, serde_json::to_vec_pretty(&run.result)?)?;
        written.push(one);
        let svg = self.dir.join(format!("{name}.svg"));
        let title = crate::plot::title(&run.result);
        if let Some(lat) = run.latency.as_mut().filter(|l| l.len() > 0) {
            crate::plot::latency_cdf(&svg, &title, &[(title.clone(), lat.cdf(400))])?;
            written.push(svg);
        } else if !run.rss.is_empty() {
            crate::plot::rss_vs_connections(&svg, &title, &[(title.clone(), run.rss.clone())])?;
            written.push(svg);
        }
        Ok(written)
    }
}
