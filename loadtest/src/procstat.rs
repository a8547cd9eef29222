//! The server process seen from outside, through `/proc/<pid>`: resident memory
//! (`status` VmRSS) and CPU time (`stat` utime + stime, over every thread, dead ones included).

use anyhow::{Context, Result};
use serde::Serialize;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// User + system CPU seconds since the process started.
    pub cpu_s: f64,
    /// Resident set size in KiB.
    pub rss_kib: u64,
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
    })
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
        assert!(open_files_limit(std::process::id()).is_some_and(|l| l > 0));
        assert!(sample(u32::MAX / 2).is_err());
    }

    #[test]
    fn cpu_per_unit() {
        let a = Sample {
            cpu_s: 1.0,
            rss_kib: 0,
        };
        let b = Sample {
            cpu_s: 1.5,
            rss_kib: 0,
        };
        assert_eq!(cpu_us_per(a, b, 100_000), 5.0);
        assert_eq!(cpu_us_per(a, b, 0), 0.0);
        assert_eq!(cpu_us_per(b, a, 10), 0.0);
    }
}
