//! The conventional `process_*` metrics, read from `/proc` at each scrape the way the
//! Prometheus Go client (procfs) and Python client do: CPU time and start time from
//! `/proc/self/stat` (in clock ticks of 100 Hz, the kernel's USER_HZ, as procfs assumes),
//! boot time from `/proc/stat`, memory from `/proc/self/status`, descriptors from
//! `/proc/self/fd` and `/proc/self/limits`. A file that cannot be read leaves its metrics
//! out; nothing here fails a scrape.

use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Clock ticks per second in `/proc` (USER_HZ; 100 on every Linux architecture sluice
/// builds for, and what procfs hard-codes).
const USER_HZ: f64 = 100.0;

/// What `/proc` says about this process.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub start_time_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

impl ProcessStats {
    /// Reads this process's figures now.
    pub fn read() -> ProcessStats {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let stat = read("/proc/self/stat").and_then(|s| parse_stat(&s));
        let boot = read("/proc/stat").and_then(|s| parse_btime(&s));
        let status = read("/proc/self/status");
        ProcessStats {
            cpu_seconds: stat.map(|(utime, stime, _)| (utime + stime) as f64 / USER_HZ),
            start_time_seconds: match (stat, boot) {
                (Some((_, _, start)), Some(boot)) => Some(boot as f64 + start as f64 / USER_HZ),
                _ => None,
            },
            resident_bytes: status.as_deref().and_then(|s| status_kb(s, "VmRSS:")),
            virtual_bytes: status.as_deref().and_then(|s| status_kb(s, "VmSize:")),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as u64),
            max_fds: read("/proc/self/limits").and_then(|s| parse_max_open_files(&s)),
        }
    }

    /// Adds the `process_*` families that have a value.
    pub fn register(&self, reg: &mut Registry) {
        if let Some(v) = self.cpu_seconds {
            reg.register(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                ConstCounter::new(v),
            );
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                self.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                self.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                self.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                self.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                reg.register(name, help, ConstGauge::new(v));
            }
        }
        if let Some(v) = self.start_time_seconds {
            reg.register(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                ConstGauge::new(v),
            );
        }
    }
}

/// `/proc/self/stat` → (utime, stime, starttime), in clock ticks. The command name (field
/// 2) may hold spaces and parentheses: fields are counted after its last `)`.
fn parse_stat(text: &str) -> Option<(u64, u64, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    // After ")": field 3 (state) is index 0; utime is field 14, stime 15, starttime 22.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)?, field(15)?, field(22)?))
}

/// `btime` of `/proc/stat`: boot time, seconds since the epoch.
fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// A `Key:   N kB` line of `/proc/self/status`, in bytes.
fn status_kb(text: &str, key: &str) -> Option<u64> {
    let value = text.lines().find_map(|l| l.strip_prefix(key))?;
    let kb: u64 = value.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// The soft limit of `Max open files` in `/proc/self/limits` (None when unlimited).
fn parse_max_open_files(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "4242 (sluice (w) 1) S 1 4242 4242 0 -1 4194560 2219 0 0 0 150 75 0 0 20 0 5 0 123456 2158592000 3456 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((150, 75, 123_456)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(
            parse_btime("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        let status = "Name:\tsluice\nVmSize:\t 2108000 kB\nVmRSS:\t   13824 kB\n";
        assert_eq!(status_kb(status, "VmRSS:"), Some(13_824 * 1024));
        assert_eq!(status_kb(status, "VmSize:"), Some(2_108_000 * 1024));
        let limits =
            "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max open files            20000                20000                files     \n";
        assert_eq!(parse_max_open_files(limits), Some(20_000));
        assert_eq!(
            parse_max_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
    }

    /// This very process, read live: the figures are there and plausible.
    #[test]
    fn reads_this_process() {
        let p = ProcessStats::read();
        assert!(p.cpu_seconds.is_some_and(|c| c >= 0.0));
        assert!(p.resident_bytes.is_some_and(|r| r > 1024 * 1024));
        assert!(p.open_fds.is_some_and(|n| n >= 3));
        assert!(p.max_fds.is_some_and(|m| m >= p.open_fds.unwrap()));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = p.start_time_seconds.unwrap();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{start}"
        );
    }
}
