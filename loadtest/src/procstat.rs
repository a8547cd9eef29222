//! The server process seen from outside, through `/proc/<pid>`: resident memory
//! (`status` VmRSS), CPU time (`stat` utime + stime, over every thread, dead ones included)
//! and bytes sent to storage (`io` write_bytes).

use anyhow::{Context, Result};
use serde::Serialize;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// User + system CPU seconds since the process started.
    pub cpu_s: f64,
    /// Resident set size in KiB.
    pub rss_kib: u64,
    /// Bytes this process caused to be written to storage (`/proc/<pid>/io` write_bytes);
    /// `None` where the kernel does not say (no task I/O accounting, or another user's process).
    pub written_bytes: Option<u64>,
}

/// Reads `pid` now.
pub fn sample(pid: u32) -> Result<Sample> {
    let p = procfs::process::Process::new(pid as i32)
        .with_context(|| format!("reading /proc/{pid} (is the server running?)"))?;
    let stat = p
        .stat()
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let status = p
        .status()
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let ticks = procfs::ticks_per_second() as f64;
    Ok(Sample {
        cpu_s: (stat.utime + stat.stime) as f64 / ticks,
        rss_kib: status.vmrss.unwrap_or(0),
        written_bytes: p.io().ok().map(|io| io.write_bytes),
    })
}

/// KiB written to storage per unit of work between two samples, when both say.
pub fn written_kib_per(before: Sample, after: Sample, units: u64) -> Option<f64> {
    let (b, a) = (before.written_bytes?, after.written_bytes?);
    if units == 0 {
        return None;
    }
    let kib = a.saturating_sub(b) as f64 / 1024.0;
    Some((kib / units as f64 * 100.0).round() / 100.0)
}

/// The soft limit on open files of `pid` (every connection is one).
pub fn open_files_limit(pid: u32) -> Option<u64> {
    let limits = procfs::process::Process::new(pid as i32)
        .ok()?
        .limits()
        .ok()?;
    match limits.max_open_files.soft_limit {
        procfs::process::LimitValue::Value(v) => Some(v),
        procfs::process::LimitValue::Unlimited => None,
    }
}

/// CPU microseconds per unit of work between two samples (0 when there was no work).
pub fn cpu_us_per(before: Sample, after: Sample, units: u64) -> f64 {
    if units == 0 {
        return 0.0;
    }
    let us = (after.cpu_s - before.cpu_s).max(0.0) * 1e6;
    (us / units as f64 * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
        assert!(s.cpu_s >= 0.0);
        assert!(
            s.written_bytes.is_some(),
            "this process's own /proc/self/io is readable"
        );
        assert!(open_files_limit(std::process::id()).is_some_and(|l| l > 0));
        assert!(sample(u32::MAX / 2).is_err());
    }

    #[test]
    fn cpu_per_unit() {
        let a = Sample {
            cpu_s: 1.0,
            rss_kib: 0,
            written_bytes: Some(1024),
        };
        let b = Sample {
            cpu_s: 1.5,
            rss_kib: 0,
            written_bytes: Some(1024 + 3 * 10 * 1024),
        };
        assert_eq!(cpu_us_per(a, b, 100_000), 5.0);
        assert_eq!(cpu_us_per(a, b, 0), 0.0);
        assert_eq!(cpu_us_per(b, a, 10), 0.0);
        assert_eq!(written_kib_per(a, b, 10), Some(3.0));
        assert_eq!(written_kib_per(b, a, 10), Some(0.0));
        assert_eq!(written_kib_per(a, b, 0), None);
        let unknown = Sample {
            written_bytes: None,
            ..b
        };
        assert_eq!(written_kib_per(a, unknown, 10), None);
    }
}
