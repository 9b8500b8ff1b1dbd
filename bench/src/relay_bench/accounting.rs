//! What `chive-bench relay` reads from /proc and how it turns samples into figures: a process's
//! CPU seconds (`/proc/PID/stat` utime and stime, proc(5)), its peak resident memory (`VmHWM` in
//! `/proc/PID/status`), and the latency histogram of echoed cells.

use hdrhistogram::Histogram;

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`, 100 on Linux).
pub const USER_HZ: f64 = 100.0;

/// Largest latency the histogram records, in ns (a minute); larger samples are clamped.
pub const LATENCY_MAX_NS: u64 = 60_000_000_000;

/// A process's CPU seconds, all threads, split by where they were spent.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CpuTimes {
    /// In user space (`utime`).
    pub user: f64,
    /// In the kernel (`stime`): on loopback, mostly the TCP send and receive paths.
    pub system: f64,
}

impl CpuTimes {
    /// User plus system.
    pub fn total(&self) -> f64 {
        self.user + self.system
    }

    /// What was spent between `earlier` and `self`.
    pub fn since(&self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}

/// CPU times (user and system, all threads) from one `/proc/PID/stat` line.
pub fn stat_cpu_times(stat: &str) -> Option<CpuTimes> {
    // The command name (field 2) is in parentheses and may hold spaces: count from the last ')'.
    let after = stat.rsplit_once(')')?.1;
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(CpuTimes {
        user: utime as f64 / USER_HZ,
        system: stime as f64 / USER_HZ,
    })
}

/// Peak resident set size in MiB from the text of `/proc/PID/status` (`VmHWM:  N kB`).
pub fn status_peak_rss_mb(status: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut parts = line.split_whitespace().skip(1);
    let kb: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => Some(kb as f64 / 1024.0),
        Some(_) => None,
    }
}

/// CPU seconds of process `pid` so far; `None` if it is gone.
pub fn process_cpu_secs(pid: u32) -> Option<f64> {
    process_cpu_times(pid).map(|t| t.total())
}

/// CPU times of process `pid` so far; `None` if it is gone.
pub fn process_cpu_times(pid: u32) -> Option<CpuTimes> {
    stat_cpu_times(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Peak RSS of process `pid` in MiB; `None` if it is gone.
pub fn process_peak_rss_mb(pid: u32) -> Option<f64> {
    status_peak_rss_mb(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// An empty latency histogram in ns, 3 significant digits.
pub fn new_latency_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; fall back to an auto-resizing one.
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3)
        .or_else(|_| Histogram::new(3))
        .unwrap_or_else(|_| unreachable_histogram())
}

#[cold]
fn unreachable_histogram() -> Histogram<u64> {
    // new(3) only fails for sigfig > 5.
    panic!("hdrhistogram rejected 3 significant digits")
}

/// Records one latency in ns, clamped to the histogram's range.
pub fn record_latency(h: &mut Histogram<u64>, ns: u64) {
    let _ = h.record(ns.clamp(1, LATENCY_MAX_NS));
}

/// Percentiles p50, p99, p99.9 of `h` in µs; zeros when empty.
pub fn percentiles_us(h: &Histogram<u64>) -> [f64; 3] {
    if h.is_empty() {
        return [0.0; 3];
    }
    [50.0, 99.0, 99.9].map(|q| h.value_at_quantile(q / 100.0) as f64 / 1000.0)
}

/// R's figures for a measured window: `cells` relayed in `seconds` using `cpu_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Throughput {
    /// Cells relayed (both directions).
    pub cells: u64,
    /// Wall-clock seconds of the window.
    pub seconds: f64,
    /// CPU seconds the relay used in the window.
    pub cpu_secs: f64,
    /// Of `cpu_secs`, those spent in the kernel.
    pub sys_secs: f64,
}

impl Throughput {
    /// Adds another window (another round).
    pub fn add(&mut self, other: Throughput) {
        self.cells += other.cells;
        self.seconds += other.seconds;
        self.cpu_secs += other.cpu_secs;
        self.sys_secs += other.sys_secs;
    }

    /// Cells per wall-clock second.
    pub fn cells_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.cells as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// CPU seconds per million cells; infinite when no cell was relayed.
    pub fn cpu_sec_per_mcell(&self) -> f64 {
        if self.cells > 0 {
            self.cpu_secs / (self.cells as f64 / 1e6)
        } else {
            f64::INFINITY
        }
    }

    /// Kernel CPU seconds per million cells; infinite when no cell was relayed.
    pub fn sys_sec_per_mcell(&self) -> f64 {
        if self.cells > 0 {
            self.sys_secs / (self.cells as f64 / 1e6)
        } else {
            f64::INFINITY
        }
    }

    /// Cells per CPU second; zero when no CPU time was measured (too short a window for the
    /// 10 ms clock ticks).
    pub fn cells_per_cpu_sec(&self) -> f64 {
        if self.cpu_secs > 0.0 {
            self.cells as f64 / self.cpu_secs
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_spaces_in_the_name() {
        // Fields after ')': state ppid pgrp session tty tpgid flags minflt cminflt majflt
        // cmajflt utime stime ...
        let line = "42 (tor relay (x)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0 100";
        assert_eq!(
            stat_cpu_times(line),
            Some(CpuTimes {
                user: 2.5,
                system: 0.5
            })
        );
        assert_eq!(stat_cpu_times(line).map(|t| t.total()), Some(3.0));
        assert_eq!(stat_cpu_times("garbage"), None);
        assert_eq!(stat_cpu_times("1 (x) S 1 2"), None);
    }

    #[test]
    fn stat_of_this_process_grows() {
        let pid = std::process::id();
        let before = process_cpu_secs(pid);
        assert!(before.is_some());
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = process_cpu_secs(pid);
        assert!(after >= before);
        let times = process_cpu_times(pid);
        assert!(times.is_some_and(|t| t.user > 0.0 && t.system >= 0.0));
        assert!(process_peak_rss_mb(pid).is_some_and(|m| m > 0.0));
    }

    #[test]
    fn vmhwm_parsing() {
        let status = "Name:\ttor\nVmPeak:\t  999 kB\nVmHWM:\t   20480 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(status_peak_rss_mb(status), Some(20.0));
        assert_eq!(status_peak_rss_mb("Name:\ttor\n"), None);
        assert_eq!(status_peak_rss_mb("VmHWM:\tlots kB\n"), None);
        assert_eq!(status_peak_rss_mb("VmHWM:\t1 MB\n"), None);
    }

    #[test]
    fn percentiles_are_ordered_and_in_microseconds() {
        let mut h = new_latency_histogram();
        assert_eq!(percentiles_us(&h), [0.0; 3]);
        for i in 1..=1000u64 {
            record_latency(&mut h, i * 1000); // 1 µs .. 1000 µs
        }
        let [p50, p99, p999] = percentiles_us(&h);
        assert!((p50 - 500.0).abs() < 1.0, "{p50}");
        assert!((p99 - 990.0).abs() < 2.0, "{p99}");
        assert!((p999 - 999.0).abs() < 2.0, "{p999}");
        assert!(p50 <= p99 && p99 <= p999);
        // Out-of-range samples are clamped, not lost.
        record_latency(&mut h, 0);
        record_latency(&mut h, u64::MAX);
        assert_eq!(h.len(), 1002);
    }

    #[test]
    fn throughput_figures() {
        let mut t = Throughput {
            cells: 2_000_000,
            seconds: 2.0,
            cpu_secs: 1.0,
            sys_secs: 0.25,
        };
        assert_eq!(t.sys_sec_per_mcell(), 0.125);
        assert_eq!(t.cells_per_sec(), 1e6);
        assert_eq!(t.cpu_sec_per_mcell(), 0.5);
        assert_eq!(t.cells_per_cpu_sec(), 2e6);
        t.add(Throughput {
            cells: 1_000_000,
            seconds: 1.0,
            cpu_secs: 2.0,
            sys_secs: 0.5,
        });
        assert_eq!(t.cells, 3_000_000);
        assert_eq!(t.sys_sec_per_mcell(), 0.25);
        assert_eq!(t.cpu_sec_per_mcell(), 1.0);
        let empty = Throughput::default();
        assert_eq!(empty.cells_per_sec(), 0.0);
        assert!(empty.cpu_sec_per_mcell().is_infinite());
        assert!(empty.sys_sec_per_mcell().is_infinite());
        assert_eq!(empty.cells_per_cpu_sec(), 0.0);
    }
}
