//! The interleaved rounds: per workload, each round runs every arm once (bare, floor, schedlat,
//! runqlat, bpftrace) so that slow drifts of this noisy machine hit all arms alike.
use std::path::Path;

use anyhow::Result;

use super::{
    arms::{ARMS, Arms, Sample},
    stats::{num, num_or_na},
    tracer::bpf_ns_per_switch,
    workload::{Workload, count_switches},
};
use crate::ws::Workspace;

pub(super) struct WorkloadResult {
    /// System-wide sched_switch events per workload operation.
    pub(super) switches_per_op: f64,
    pub(super) switch_rate: f64,
    /// Indexed like ARMS.
    pub(super) samples: [Vec<Sample>; ARMS.len()],
}

/// `pairs` interleaved rounds of every arm on each workload, in order.
pub(super) fn run(
    ws: &Workspace,
    bin: &Path,
    workloads: &[Workload],
    pairs: usize,
) -> Result<Vec<WorkloadResult>> {
    let arms = Arms::prepare(ws, bin)?;
    let mut results = Vec::new();
    for w in workloads {
        println!("\n==> {}: {}", w.name, w.argv.join(" "));
        let (switches_per_op, switch_rate) = count_switches(w)?;
        println!(
            "sched_switch: {switches_per_op:.2} per op, {switch_rate:.0}/s (separate untimed perf stat -a run)"
        );
        let mut samples: [Vec<Sample>; ARMS.len()] = Default::default();
        for round in 1..=pairs {
            for (i, arm) in ARMS.into_iter().enumerate() {
                let s = arms.sample(arm, w)?;
                let cpu = s
                    .tracer_cpu
                    .map(|c| format!("  (tracer CPU {c:.2} s)"))
                    .unwrap_or_default();
                let bpf = s
                    .bpf
                    .as_ref()
                    .map(|p| format!("  BPF {} ns/switch", num_or_na(bpf_ns_per_switch(p))))
                    .unwrap_or_default();
                println!(
                    "  round {round}/{pairs} {arm:<8} {:>12} {}{cpu}{bpf}",
                    num(s.throughput),
                    w.unit
                );
                samples[i].push(s);
            }
        }
        results.push(WorkloadResult {
            switches_per_op,
            switch_rate,
            samples,
        });
    }
    Ok(results)
}
