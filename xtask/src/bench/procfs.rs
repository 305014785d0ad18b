//! CPU time and memory of a process, from /proc.
use std::fs;

use anyhow::{Context, Result};

/// CPU time of the live threads of `pid` in seconds, with ns resolution: the sum of field 1
/// (time on CPU) of /proc/PID/task/*/schedstat. Threads that exited meanwhile are not counted.
pub(super) fn threads_cpu_seconds(pid: u32) -> Result<f64> {
    let dir = format!("/proc/{pid}/task");
    let mut ns = 0u64;
    for t in fs::read_dir(&dir).with_context(|| format!("list {dir}"))? {
        let Ok(t) = t else { continue };
        // A thread that exits between the listing and the read is skipped.
        let Ok(stat) = fs::read_to_string(t.path().join("schedstat")) else {
            continue;
        };
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .with_context(|| format!("bad {}/schedstat: {stat:?}", t.path().display()))?;
    }
    Ok(ns as f64 / 1e9)
}

/// A `kB` field of /proc/PID/status (VmRSS, VmHWM).
pub(super) fn status_kb(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let s = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    s.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("no {field} in {path}"))
}

/// utime + stime of a whole process (all threads), in seconds, from /proc/<pid>/stat.
pub(super) fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // Fields after the parenthesised comm (which may contain spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15 (proc(5)).
    let fields: Vec<&str> = stat[stat.rfind(')').context("no ')' in /proc/pid/stat")? + 1..]
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> Result<f64> {
        let f = fields
            .get(i)
            .with_context(|| format!("{path} has too few fields"))?;
        Ok(f.parse::<u64>()
            .with_context(|| format!("field {} of {path}: {f:?}", i + 3))? as f64)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_time() {
        assert!(cpu_seconds(std::process::id()).unwrap() >= 0.0);
        // This test has run for some µs at least.
        assert!(threads_cpu_seconds(std::process::id()).unwrap() > 0.0);
    }
}
