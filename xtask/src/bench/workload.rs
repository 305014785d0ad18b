//! The scheduler workloads every arm runs (pinned pipe, messaging, stress-ng switch and futex),
//! their output parsers, and the untimed `perf stat` run that counts their context switches.
use std::{process::Command, thread, time::Instant};

use anyhow::{Context, Result, bail};

use crate::cmd::cmdline;

pub(super) struct Workload {
    pub(super) name: &'static str,
    pub(super) argv: Vec<String>,
    pub(super) unit: &'static str,
    /// CPUs the workload keeps saturated: extra wall time x busy CPUs ~ extra CPU time.
    pub(super) busy_cpus: f64,
    /// (operations done, throughput) from the workload's stdout and stderr.
    parse: fn(&str) -> Option<Run>,
}

/// What one run of a workload reports about itself.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Run {
    ops: f64,
    pub(super) throughput: f64,
}

impl Workload {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.argv[0]);
        c.args(&self.argv[1..]);
        c
    }
}

pub(super) fn workloads(quick: bool) -> Vec<Workload> {
    let (pipe_loops, msg_loops, stress_secs) = if quick {
        (20_000, 200, 1)
    } else {
        (200_000, 2_000, 5)
    };
    let cpus = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let argv = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    vec![
        // Pinned: unpinned pipe swings 3x between runs here and is useless for ratios.
        Workload {
            name: "pipe (pinned)",
            argv: argv(&format!(
                "taskset -c 0 perf bench sched pipe -l {pipe_loops}"
            )),
            unit: "ops/s",
            busy_cpus: 1.0,
            parse: parse_perf_pipe,
        },
        // 160 processes keep every CPU busy.
        Workload {
            name: "messaging",
            argv: argv(&format!("perf bench sched messaging -g 4 -l {msg_loops}")),
            unit: "runs/s",
            busy_cpus: cpus,
            parse: parse_perf_messaging,
        },
        // Two pipe ping-pong pairs: the highest context-switch rate (~760k/s here).
        Workload {
            name: "stress-ng switch",
            argv: argv(&format!(
                "stress-ng --switch 2 -t {stress_secs} --metrics-brief"
            )),
            unit: "bogo ops/s",
            busy_cpus: cpus,
            parse: parse_stress_ng,
        },
        // Futex wait/wake storms: what schedlat's futex tracing adds and runqlat lacks.
        Workload {
            name: "stress-ng futex",
            argv: argv(&format!(
                "stress-ng --futex 2 -t {stress_secs} --metrics-brief"
            )),
            unit: "bogo ops/s",
            busy_cpus: cpus,
            parse: parse_stress_ng,
        },
    ]
}

/// `     Total time: 0.579 [sec]`
fn perf_total_time(out: &str) -> Option<f64> {
    out.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("Total time:")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// `Total time: 1.006 [sec]` and `         198801 ops/sec`.
fn parse_perf_pipe(out: &str) -> Option<Run> {
    let throughput: f64 = out
        .lines()
        .find_map(|l| l.trim().strip_suffix("ops/sec")?.trim().parse().ok())?;
    Some(Run {
        ops: throughput * perf_total_time(out)?,
        throughput,
    })
}

/// One run in `Total time` seconds.
fn parse_perf_messaging(out: &str) -> Option<Run> {
    let secs = perf_total_time(out)?;
    (secs > 0.0).then(|| Run {
        ops: 1.0,
        throughput: 1.0 / secs,
    })
}

/// `stress-ng: metrc: [15050] switch  1274070  2.00  0.59  3.41  636918.64  318662.81`:
/// stressor, bogo ops, real/usr/sys time, bogo ops/s (real time), bogo ops/s (usr+sys).
fn parse_stress_ng(out: &str) -> Option<Run> {
    out.lines().find_map(|l| {
        let (_, rest) = l.split_once("metrc:")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // [pid] name ops real usr sys ops/s-real ops/s-cpu
        if f.len() != 8 || !f[0].starts_with('[') {
            return None;
        }
        Some(Run {
            ops: f[2].parse().ok()?,
            throughput: f[6].parse().ok()?,
        })
    })
}

/// Run the workload once; what it reports about the run.
pub(super) fn run_workload(w: &Workload) -> Result<Run> {
    let mut c = w.command();
    let line = cmdline(&c);
    let out = c.output().with_context(|| {
        format!("could not start `{line}`: are linux-perf and stress-ng installed?")
    })?;
    // perf bench reports on stdout, stress-ng on stderr.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("`{line}` failed ({}): {text}", out.status);
    }
    (w.parse)(&text).with_context(|| format!("no throughput in the output of `{line}`:\n{text}"))
}

/// sched_switch events per workload operation, system-wide, and per second. perf stat itself
/// slows the workload, so this is a separate run, not one of the timed ones.
pub(super) fn count_switches(w: &Workload) -> Result<(f64, f64)> {
    let mut c = Command::new("perf");
    c.args(["stat", "-e", "sched:sched_switch", "-a", "-x,", "--"])
        .args(&w.argv);
    let line = cmdline(&c);
    println!("+ {line}");
    let start = Instant::now();
    let out = c
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    let secs = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("`{line}` failed ({}): {stderr}", out.status);
    }
    let text = format!("{}{stderr}", String::from_utf8_lossy(&out.stdout));
    let run = (w.parse)(&text)
        .with_context(|| format!("no operation count in the output of `{line}`:\n{text}"))?;
    // CSV: count,unit,event,...; the count is `<not supported>` if the tracepoint is unavailable.
    let count = stderr
        .lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"sched:sched_switch"))
        .and_then(|f| f[0].parse::<f64>().ok());
    match count {
        Some(n) if run.ops > 0.0 => Ok((n / run.ops, n / secs)),
        Some(_) => bail!("`{line}` reported no operations:\n{text}"),
        None => bail!(
            "no sched:sched_switch count from `{line}` (is tracefs mounted? `cargo xtask setup`):\n{stderr}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workload_output() {
        let pipe = "# Running 'sched/pipe' benchmark:\n\n     Total time: 0.100 [sec]\n\n       5.030150 usecs/op\n         198801 ops/sec\n";
        let r = parse_perf_pipe(pipe).unwrap();
        assert_eq!(r.throughput, 198801.0);
        assert!((r.ops - 19880.1).abs() < 1e-6);
        let msg = "# 4 groups == 160 processes run\n\n     Total time: 0.500 [sec]\n       5.4 usecs/op\n";
        assert_eq!(
            parse_perf_messaging(msg),
            Some(Run {
                ops: 1.0,
                throughput: 2.0
            })
        );
        assert_eq!(parse_perf_pipe("nothing"), None);
        // stress-ng 0.15 --metrics-brief, on stderr; the header lines must not match.
        let sng = "stress-ng: metrc: [15050] stressor       bogo ops real time  usr time  sys time   bogo ops/s     bogo ops/s\n\
                   stress-ng: metrc: [15050]                           (secs)    (secs)    (secs)   (real time) (usr+sys time)\n\
                   stress-ng: metrc: [15050] switch          1274070      2.00      0.59      3.41    636918.64      318662.81\n\
                   stress-ng: metrc: [15050] miscellaneous metrics:\n";
        assert_eq!(
            parse_stress_ng(sng),
            Some(Run {
                ops: 1274070.0,
                throughput: 636918.64
            })
        );
        assert_eq!(
            parse_stress_ng("stress-ng: info: [1] dispatching hogs"),
            None
        );
    }
}
