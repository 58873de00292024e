//! CPU time and memory of processes, from `/proc` (Linux). A proxy is
//! counted with its descendants: nginx's master does its work in a worker.

use std::time::Duration;

/// CPU time (user + system) of `pid` and its descendants, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    tree(pid)
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|stat| parse_stat(&stat))
        .map(|s| s.utime + s.stime)
        .sum()
}

/// CPU time of several process trees together.
pub fn cpu_time(pids: &[u32], ticks_per_second: u64) -> Duration {
    let ticks: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
    Duration::from_secs_f64(ticks as f64 / ticks_per_second.max(1) as f64)
}

/// `VmRSS` (resident now) of `pid` and its descendants, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_field_sum(pid, "VmRSS:")
}

/// `VmHWM` (peak resident) of `pid` and its descendants, in KiB: an upper
/// bound of the tree's peak, since the processes may have peaked apart.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_field_sum(pid, "VmHWM:")
}

fn status_field_sum(pid: u32, field: &str) -> u64 {
    tree(pid)
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|status| status_field_kib(&status, field))
        .sum()
}

/// CPU accounting of the whole machine and of this process (with its
/// reaped children): what else ran while the benchmark did.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineSample {
    busy: u64,
    steal: u64,
    total: u64,
    own: u64,
}

impl MachineSample {
    /// Reads `/proc/stat` and `/proc/self/stat` now.
    pub fn now() -> Self {
        let (busy, steal, total) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| parse_cpu_line(stat.lines().next()?))
            .unwrap_or_default();
        let own = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| parse_stat(&stat))
            .map_or(0, |s| s.utime + s.stime + s.cutime + s.cstime);
        Self {
            busy,
            steal,
            total,
            own,
        }
    }

    /// Shares of the machine's CPU since `earlier`, in percent: (used by
    /// processes other than the benchmark's, stolen by the hypervisor).
    pub fn since(&self, earlier: &Self) -> (f64, f64) {
        let total = self.total.saturating_sub(earlier.total).max(1) as f64;
        let busy = self.busy.saturating_sub(earlier.busy);
        let own = self.own.saturating_sub(earlier.own);
        let steal = self.steal.saturating_sub(earlier.steal);
        (
            100.0 * busy.saturating_sub(own) as f64 / total,
            100.0 * steal as f64 / total,
        )
    }
}

/// `(busy, steal, total)` ticks of the `cpu` line of `/proc/stat`
/// (proc(5): user nice system idle iowait irq softirq steal ...).
fn parse_cpu_line(line: &str) -> Option<(u64, u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields.take(8).filter_map(|f| f.parse().ok()).collect();
    let [user, nice, system, idle, iowait, irq, softirq, steal] = values[..] else {
        return None;
    };
    let busy = user + nice + system + irq + softirq;
    Some((busy, steal, busy + idle + iowait + steal))
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 on Linux
/// if getconf is missing).
pub fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|&ticks| ticks > 0)
        .unwrap_or(100)
}

/// The descendants of `pid` (children, their children, ...), by scanning
/// every process's parent in `/proc`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            Some((p, parse_stat(&stat)?.ppid))
        })
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    // Bounded: a process tree has fewer levels than processes.
    for _ in 0..parents.len() {
        let Some(parent) = frontier.pop() else { break };
        for &(child, ppid) in &parents {
            if ppid == parent && !found.contains(&child) {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found
}

fn tree(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    pids.extend(descendants(pid));
    pids
}

/// The fields of `/proc/<pid>/stat` the benchmark reads.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    ppid: u32,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses
/// and may hold spaces or parentheses itself: fields are counted after the
/// last `)` (proc(5): ppid is field 4, utime 14, stime 15, and the reaped
/// children's cutime 16, cstime 17).
fn parse_stat(stat: &str) -> Option<Stat> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `fields[0]` is field 3 (state).
    Some(Stat {
        ppid: fields.get(1)?.parse().ok()?,
        utime: fields.get(11)?.parse().ok()?,
        stime: fields.get(12)?.parse().ok()?,
        cutime: fields.get(13)?.parse().ok()?,
        cstime: fields.get(14)?.parse().ok()?,
    })
}

/// A `kB` line of `/proc/<pid>/status`, e.g. `VmRSS:     5120 kB`.
fn status_field_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (nginx: worker (x)) S 4241 4241 4241 0 -1 4194624 120 0 0 0 37 12 0 0 20 0 1 0 100 1000 250";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                ppid: 4241,
                utime: 37,
                stime: 12,
                cutime: 0,
                cstime: 0,
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn machine_shares_leave_out_the_benchmark() {
        assert_eq!(
            parse_cpu_line("cpu  100 0 50 800 10 0 10 40 0 0"),
            Some((160, 40, 1010))
        );
        assert_eq!(parse_cpu_line("cpu0 1 2 3"), None);
        let before = MachineSample {
            busy: 1000,
            steal: 0,
            total: 2000,
            own: 500,
        };
        let after = MachineSample {
            busy: 1600,
            steal: 100,
            total: 3000,
            own: 900,
        };
        assert_eq!(after.since(&before), (20.0, 10.0));
    }

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\tsidecar\nVmHWM:\t   9216 kB\nVmRSS:\t   5120 kB\n";
        assert_eq!(status_field_kib(status, "VmRSS:"), Some(5120));
        assert_eq!(status_field_kib(status, "VmHWM:"), Some(9216));
        assert_eq!(status_field_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let me = std::process::id();
        // Not compared: the kernel's per-CPU RSS counters make two reads
        // a few pages apart.
        assert!(rss_kib(me) > 0);
        assert!(peak_rss_kib(me) > 0);
        assert!(ticks_per_second() > 0);
        assert!(!descendants(1).contains(&1));
    }
}
