//! A live progress line on stderr for long runs: connections open, messages sent, deliveries,
//! errors, elapsed time. On a terminal the line is redrawn in place every second; otherwise
//! (logs, CI) a plain line is printed every 10 s.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Counters shared by every task of a run (cheap relaxed atomics).
#[derive(Debug, Default)]
pub struct Counters {
    pub open: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub delivered: AtomicU64,
    pub errors: AtomicU64,
}

#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub c: Arc<Counters>,
    enabled: bool,
}

/// Stops the printer (and ends the line) when dropped.
pub struct Printer {
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        Self {
            c: Arc::default(),
            enabled,
        }
    }

    pub fn add_open(&self, n: i64) {
        if n >= 0 {
            self.c.open.fetch_add(n as u64, Relaxed);
        } else {
            self.c.open.fetch_sub(n.unsigned_abs(), Relaxed);
        }
    }

    /// The current line, e.g. `[fanout 12.3s] open 1001  sent 1230  acked 1229  deliveries 1229000  errors 0`.
    pub fn line(&self, label: &str, elapsed: Duration) -> String {
        let c = &self.c;
        format!(
            "[{label} {:.1}s] open {}  sent {}  acked {}  deliveries {}  errors {}",
            elapsed.as_secs_f64(),
            c.open.load(Relaxed),
            c.sent.load(Relaxed),
            c.acked.load(Relaxed),
            c.delivered.load(Relaxed),
            c.errors.load(Relaxed),
        )
    }

    /// Starts printing the line for `label` until the returned guard is dropped.
    pub fn start(&self, label: &str) -> Printer {
        let stop = Arc::new(AtomicBool::new(false));
        if !self.enabled {
            return Printer { stop, task: None };
        }
        let tty = std::io::stderr().is_terminal();
        let (me, label, stop2) = (self.clone(), label.to_owned(), stop.clone());
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let every = if tty { 1 } else { 10 };
            let mut tick = tokio::time::interval(Duration::from_secs(every));
            tick.tick().await;
            loop {
                tick.tick().await;
                if stop2.load(Relaxed) {
                    break;
                }
                let line = me.line(&label, start.elapsed());
                let mut err = std::io::stderr().lock();
                if tty {
                    let _ = write!(err, "\r\x1b[K{line}");
                } else {
                    let _ = writeln!(err, "{line}");
                }
                let _ = err.flush();
            }
        });
        Printer {
            stop,
            task: Some(task),
        }
    }
}

impl Drop for Printer {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.task.take() {
            t.abort();
            if std::io::stderr().is_terminal() {
                eprint!("\r\x1b[K");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_every_counter() {
        let p = Progress::new(false);
        p.add_open(5);
        p.add_open(-2);
        p.c.sent.fetch_add(7, Relaxed);
        p.c.delivered.fetch_add(700, Relaxed);
        p.c.errors.fetch_add(1, Relaxed);
        assert_eq!(
            p.line("fanout", Duration::from_millis(1500)),
            "[fanout 1.5s] open 3  sent 7  acked 0  deliveries 700  errors 1"
        );
    }
}
