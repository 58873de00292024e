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
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses
/// and may hold spaces or parentheses itself: fields are counted after the
/// last `)` (proc(5): ppid is field 4, utime 14, stime 15).
fn parse_stat(stat: &str) -> Option<Stat> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `fields[0]` is field 3 (state).
    Some(Stat {
        ppid: fields.get(1)?.parse().ok()?,
        utime: fields.get(11)?.parse().ok()?,
        stime: fields.get(12)?.parse().ok()?,
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
                stime: 12
            })
        );
        assert_eq!(parse_stat("garbage"), None);
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
        assert!(rss_kib(me) > 0);
        assert!(peak_rss_kib(me) >= rss_kib(me));
        assert!(ticks_per_second() > 0);
        assert!(!descendants(1).contains(&1));
    }
}
