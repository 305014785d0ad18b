//! Privileged: `schedlat capture` against workloads with known behaviour, checked against the
//! kernel's own accounting (schedstat) and the workload's own record of what it did.
use std::time::Duration;

use schedlat_tests::{Schedlat, TempDir, Workload, privileged_or_skip};
use serde_json::Value;

fn task(report: &Value, tid: u64) -> &Value {
    report["tasks"]
        .as_array()
        .expect("tasks array")
        .iter()
        .find(|t| t["tid"].as_u64() == Some(tid))
        .unwrap_or_else(|| panic!("tid {tid} not in the capture's tasks: {}", report["tasks"]))
}

/// Run `workload` under `schedlat capture --pid <it> --format json`, return (result, report).
fn capture_workload(workload: &[&str], extra: &[&str]) -> (Value, Value) {
    let mut w = Workload::start(workload);
    let pid = w.pid.to_string();
    let mut args = vec![
        "--duration",
        "120s",
        "--format",
        "json",
        "--pid",
        pid.as_str(),
    ];
    args.extend_from_slice(extra);
    let cap = Schedlat::capture(&args);
    cap.wait_ready(Duration::from_secs(60));
    w.go();
    let result = w.result();
    let (status, stdout, stderr) = cap.stop();
    assert!(status.success(), "capture failed: {status}\n{stderr}");
    let report: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("capture JSON: {e}\n{stdout}"));
    (result, report)
}

/// Run `workload` in a cgroup of its own under `schedlat capture --cgroup <it> --format json`;
/// returns the cgroup (removed on drop), the workload's result and the report.
fn capture_cgroup_workload(
    name: &str,
    workload: &[&str],
) -> (schedlat_tests::TestCgroup, Value, Value) {
    let cg = schedlat_tests::TestCgroup::create(name);
    let mut w = Workload::start(workload);
    cg.add(w.pid);
    let cap = Schedlat::capture(&[
        "--duration",
        "300s",
        "--format",
        "json",
        "--cgroup",
        cg.path(),
    ]);
    cap.wait_ready(Duration::from_secs(60));
    w.go();
    let result = w.result();
    let (status, stdout, stderr) = cap.stop();
    assert!(status.success(), "capture failed: {status}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    (cg, result, report)
}

/// Two busy threads pinned to one CPU for 2 s (`kernel`: spinning inside read(2) of /dev/zero,
/// so most preemptions hit kernel mode): each thread's run-queue delay equals schedstat's
/// run_delay within 2%, nearly all of it cause=preempted.
fn check_preemption(kernel: bool) {
    let mut args = vec!["spin", "--threads", "2", "--cpu", "0", "--secs", "2"];
    if kernel {
        args.push("--kernel");
    }
    let mode = if kernel { "kernel" } else { "user" };
    let (result, report) = capture_workload(&args, &[]);
    let threads = result["threads"].as_array().expect("threads");
    assert_eq!(threads.len(), 2);
    for t in threads {
        let tid = t["tid"].as_u64().unwrap();
        let oracle = t["run_delay_ns"].as_u64().unwrap() as f64;
        let row = task(&report, tid);
        let got = row["runqueue_sum_ns"].as_u64().unwrap() as f64;
        // Two busy threads sharing one CPU for 2 s: each waits about half the time.
        assert!(
            oracle > 0.5e9,
            "tid {tid}: schedstat says only {oracle} ns of run-queue delay; workload did not contend"
        );
        let err = (got - oracle).abs() / oracle;
        eprintln!(
            "figure: {mode}-mode preemption tid {tid}: schedlat {got:.0} ns, schedstat {oracle:.0} ns, error {:.3}%",
            err * 100.0
        );
        assert!(
            err <= 0.02,
            "tid {tid}: schedlat {got} ns vs schedstat {oracle} ns ({:.2}% off)",
            err * 100.0
        );
        let preempted = row["runqueue_preempted_sum_ns"].as_u64().unwrap() as f64;
        assert!(
            preempted / got >= 0.95,
            "tid {tid}: only {:.1}% of the delay is cause=preempted",
            100.0 * preempted / got
        );
    }
    let rq = &report["runqueue"];
    let pre = rq["by_cause"]["preempted"]["sum_ns"].as_u64().unwrap() as f64;
    let all = rq["sum_ns"].as_u64().unwrap() as f64;
    assert!(
        pre / all >= 0.9,
        "preempted share of the process's delay {:.1}%",
        100.0 * pre / all
    );
    assert_eq!(
        rq["count"].as_u64().unwrap(),
        rq["by_cause"]["woken"]["count"].as_u64().unwrap()
            + rq["by_cause"]["preempted"]["count"].as_u64().unwrap()
    );
    // Percentiles are ordered and bounded by the max.
    let (p50, p90, p99, max) = (
        rq["p50_ns"].as_u64().unwrap(),
        rq["p90_ns"].as_u64().unwrap(),
        rq["p99_ns"].as_u64().unwrap(),
        rq["max_ns"].as_u64().unwrap(),
    );
    assert!(
        p50 <= p90 && p90 <= p99 && p99 <= max,
        "{p50} {p90} {p99} {max}"
    );
    assert_eq!(
        report["dropped"]["total"].as_u64(),
        Some(0),
        "dropped: {}",
        report["dropped"]
    );
    check_own_cost(&report, threads);
}

/// The report states the capture's own cost from the kernel's accounting: its sched_switch
/// program ran at least once per timeslice the spinners got (schedstat's count of their
/// switch-ins, all inside the capture), at a plausible cost per run.
fn check_own_cost(report: &Value, threads: &[Value]) {
    let cost = &report["cost"];
    let switches = cost["switches"]
        .as_u64()
        .unwrap_or_else(|| panic!("no cost: {cost}"));
    let slices: u64 = threads
        .iter()
        .map(|t| t["timeslices"].as_u64().unwrap())
        .sum();
    assert!(slices > 0, "the spinners got no timeslices");
    assert!(
        switches >= slices,
        "sched_switch ran {switches} times, but the spinners alone were switched in {slices} times"
    );
    assert_eq!(
        cost["programs"]["sched_switch"]["runs"].as_u64(),
        Some(switches),
        "{cost}"
    );
    let ns = cost["ns_per_switch"].as_f64().unwrap();
    eprintln!(
        "figure: capture's own cost {ns:.0} ns per sched_switch over {switches} switches (spinners: {slices})"
    );
    assert!(
        ns > 0.0 && ns < 100_000.0,
        "implausible cost per switch: {ns} ns"
    );
    // futex mode `syscall` (the capture's default): its programs are accounted per exit.
    assert!(
        cost["ns_per_futex_exit"].as_f64().is_some_and(|v| v >= 0.0),
        "{cost}"
    );
}

#[test]
fn preemption_delay_matches_schedstat() {
    if privileged_or_skip() {
        check_preemption(false);
    }
}

#[test]
fn kernel_mode_preemption_delay_matches_schedstat() {
    if privileged_or_skip() {
        check_preemption(true);
    }
}

/// N timed-out and M woken futex waits of D ms by one thread, captured with `--futex mode`.
fn check_futex_waits(mode: &str) {
    let (timeouts, woken, wait_ms) = (10u64, 10u64, 5u64);
    let (result, report) = capture_workload(
        &[
            "futex",
            "--timeouts",
            &timeouts.to_string(),
            "--woken",
            &woken.to_string(),
            "--wait-ms",
            &wait_ms.to_string(),
        ],
        &["--futex", mode],
    );
    let waiter = result["waiter_tid"].as_u64().unwrap();
    let eagain = result["eagain"].as_u64().unwrap();
    let row = task(&report, waiter);
    // EAGAIN calls never slept: they are not waits.
    let waits = timeouts + woken - eagain;
    eprintln!(
        "figure: futex mode {mode}: {} waits counted, {waits} made ({timeouts} timed out, {} woken)",
        row["futex_count"],
        woken - eagain
    );
    assert_eq!(
        row["futex_count"].as_u64().unwrap(),
        waits,
        "futex waits of tid {waiter}: {row}"
    );
    let f = &report["futex"];
    assert_eq!(
        f["count"].as_u64().unwrap(),
        waits,
        "only the waiter blocks in futex: {f}"
    );
    if mode == "syscall" {
        // Only the syscall tracepoints see return codes.
        assert_eq!(row["futex_timeouts"].as_u64().unwrap(), timeouts);
        assert_eq!(f["outcomes"]["timeout"].as_u64().unwrap(), timeouts);
    }
    // Each wait lasts the known time (plus timer slack and wake-up latency): every one lands in
    // the bucket holding `wait_ms`, or a later one when the machine is slow, never earlier.
    let d = wait_ms * 1_000_000;
    let first_ok_le = schedlat_common::hist::bucket_upper_ns(schedlat_common::bucket_index(d)) - 1;
    // The bucket after D's: buckets are 9% wide (2^(1/8)), and D = 5 ms sits 66 µs below the
    // top of its own, less than a timed-out wait's timer slack and wake-up.
    let next_le = schedlat_common::hist::bucket_upper_ns(schedlat_common::bucket_index(d) + 1) - 1;
    let mut in_bucket_of_d = 0;
    for b in f["buckets"].as_array().unwrap() {
        let (le, n) = (b["le_ns"].as_u64().unwrap(), b["count"].as_u64().unwrap());
        assert!(
            le >= first_ok_le,
            "{n} futex waits ended before {wait_ms} ms (bucket le {le} ns): {f}"
        );
        if le == first_ok_le || le == next_le {
            in_bucket_of_d += n;
        }
    }
    // Timed-out waits are precise (hrtimer + default 50 µs slack): they are in D's own bucket or
    // the next (D + 10%). Not under emulation, where timers fire late by whole buckets (that
    // is the machine).
    assert!(
        schedlat_tests::emulated() || in_bucket_of_d >= timeouts,
        "only {in_bucket_of_d} of {timeouts} timed-out waits within a bucket of {wait_ms} ms: {f}"
    );
    assert!(row["futex_max_ns"].as_u64().unwrap() >= d);
    check_kernel_skipped(&report);
}

/// The runs the kernel skipped, as the capture's JSON reports them: from 5.12 (bpf_prog_info
/// has recursion_misses) a number for every program the capture ran (the cost section names
/// them), their sum among the drops; before, `null` and no such drop reason, and no failure.
fn check_kernel_skipped(report: &Value) {
    let skipped = &report["kernel_skipped"];
    let in_dropped = &report["dropped"]["kernel_skipped_recursion"];
    if !schedlat_tests::kernel_release_at_least(5, 12) {
        assert!(skipped.is_null(), "kernel_skipped before 5.12: {skipped}");
        assert!(in_dropped.is_null(), "{}", report["dropped"]);
        eprintln!("figure: kernel_skipped: not available on this kernel (null)");
        return;
    }
    let by_program = skipped
        .as_object()
        .unwrap_or_else(|| panic!("kernel_skipped is {skipped}"));
    let mut sum = 0;
    for (program, n) in by_program {
        sum += n
            .as_u64()
            .unwrap_or_else(|| panic!("kernel_skipped.{program} = {n}"));
    }
    if let Some(programs) = report["cost"]["programs"].as_object() {
        let mut ran: Vec<&String> = programs.keys().collect();
        let mut read: Vec<&String> = by_program.keys().collect();
        ran.sort();
        read.sort();
        assert_eq!(read, ran, "kernel_skipped for each program of the capture");
    }
    assert!(by_program.contains_key("sched_switch"), "{skipped}");
    assert_eq!(in_dropped.as_u64(), Some(sum), "{}", report["dropped"]);
    eprintln!("figure: kernel_skipped: {skipped}");
}

#[test]
fn futex_waits_counted_exactly_from_syscall_tracepoints() {
    if privileged_or_skip() {
        check_futex_waits("syscall");
    }
}

#[test]
fn futex_waits_counted_exactly_from_sched_switch() {
    if !privileged_or_skip() {
        return;
    }
    if !schedlat_tests::kernel_has("task_pt_regs") {
        // Before 5.15 the mode is refused up front, naming the helper and the way out.
        let out = std::process::Command::new(schedlat_tests::schedlat_bin())
            .args(["capture", "--duration", "1s", "--futex", "sched"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("bpf_task_pt_regs") && err.contains("--futex syscall"),
            "{err}"
        );
        eprintln!("figure: futex mode sched: refused with exit 2 (no bpf_task_pt_regs)");
        return;
    }
    check_futex_waits("sched");
}

#[test]
fn wakeups_between_two_threads_are_attributed_to_the_pair() {
    if !privileged_or_skip() {
        return;
    }
    let n = 200u64;
    let (result, report) = capture_workload(&["wake", "--count", &n.to_string()], &[]);
    let (waker, wakee) = (
        result["waker_tid"].as_u64().unwrap(),
        result["wakee_tid"].as_u64().unwrap(),
    );
    let woken = result["woken"].as_u64().unwrap();
    assert!(
        woken >= n * 9 / 10,
        "workload: only {woken} of {n} waits were woken"
    );
    let pair = report["wakeups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["waker_tid"].as_u64() == Some(waker) && w["wakee_tid"].as_u64() == Some(wakee))
        .unwrap_or_else(|| panic!("no wakeups {waker} -> {wakee} in {}", report["wakeups"]));
    assert!(
        pair["count"].as_u64().unwrap() >= woken,
        "pair {pair} vs {woken} wakes"
    );
    assert!(!pair["waker_comm"].as_str().unwrap().is_empty());
    // Every switch-in of the wakee is a run-queue wait counted (its schedstat timeslices; a
    // wake that lands before the wakee is off its CPU makes none, so not `woken`).
    let row = task(&report, wakee);
    let slices = result["wakee_timeslices"].as_u64().unwrap();
    assert!(
        row["runqueue_count"].as_u64().unwrap() >= slices,
        "wakee: {} run-queue waits counted, {slices} switch-ins by schedstat",
        row["runqueue_count"]
    );
}

/// At the default log level a capture on a healthy host writes its report to stdout and
/// nothing at all to stderr (no banner, no attach details): pipes and files get the report
/// alone. Text histograms are compact: one row per power of two.
#[test]
fn host_wide_text_capture_shows_every_section_and_nothing_on_stderr() {
    if !privileged_or_skip() {
        return;
    }
    let out = schedlat_tests::run_schedlat(&["capture", "--duration", "1s", "--top", "3"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr, "", "a healthy capture printed on stderr");
    for s in [
        "Run-queue delay",
        "Futex waits",
        "Per CPU",
        "Top tasks",
        "Top wakeups",
        "Slow run-queue delays",
        "Dropped events",
    ] {
        assert!(text.contains(s), "missing section {s}:\n{text}");
    }
    assert!(text.contains("p50=") && text.contains("p99="));
    // The run-queue histogram: a header, then rows whose bounds are consecutive powers of two
    // (each row's upper bound is the next row's lower bound, twice its own lower bound).
    let hist: Vec<&str> = text
        .split("\nall: ")
        .nth(1)
        .expect("an `all:` summary")
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert!(
        hist[0].contains("from .. to") && hist[0].contains("count"),
        "{hist:?}"
    );
    let bounds: Vec<(&str, &str)> = hist[1..]
        .iter()
        .map(|l| {
            let mut w = l.split_whitespace();
            (w.next().unwrap(), w.nth(1).unwrap())
        })
        .collect();
    assert!(!bounds.is_empty() && bounds.len() <= 27, "{hist:#?}");
    for w in bounds.windows(2) {
        assert_eq!(w[0].1, w[1].0, "rows must tile: {hist:#?}");
    }

    let out = schedlat_tests::run_schedlat(&["capture", "--duration", "1s", "--format", "json"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert!(v["runqueue"]["buckets"].as_array().is_some());
}

#[test]
fn slow_events_name_who_ran_instead_and_none_are_lost_silently() {
    if !privileged_or_skip() {
        return;
    }
    // The lower bound of a bucket (~1 ms), so the histogram says exactly how many delays
    // reached it.
    let threshold_ns = schedlat_common::bucket_lower_ns(schedlat_common::bucket_index(1 << 20));
    let (result, report) = capture_workload(
        // Nice -20: the two threads take nearly all of CPU 0 between them whatever else a
        // loaded machine runs there.
        &[
            "spin",
            "--threads",
            "2",
            "--cpu",
            "0",
            "--secs",
            "1",
            "--favoured",
        ],
        &[
            "--threshold",
            &format!("{threshold_ns}ns"),
            "--max-slow-per-sec",
            "50",
        ],
    );
    let tids: Vec<u64> = result["threads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tid"].as_u64().unwrap())
        .collect();
    let events = report["slow_events"].as_array().unwrap();
    assert!(!events.is_empty(), "no slow events: {}", report["runqueue"]);
    // Two threads share CPU 0: while one waits, the other runs. Other tasks on CPU 0 (kernel
    // threads, anything else the machine runs there) can take some turns, so ask for most.
    let sibling = events
        .iter()
        .filter(|e| {
            let (t, other) = (
                e["tid"].as_u64().unwrap(),
                e["ran_instead"]["tid"].as_u64().unwrap(),
            );
            tids.contains(&t) && tids.contains(&other) && t != other
        })
        .count();
    assert!(
        sibling * 2 > events.len(),
        "only {sibling} of {} slow events name the sibling thread",
        events.len()
    );
    for e in events {
        assert_ne!(
            e["tid"], e["ran_instead"]["tid"],
            "a task cannot run instead of itself: {e}"
        );
        assert!(e["delay_ns"].as_u64().unwrap() >= threshold_ns);
        // Only the spinning threads are pinned to CPU 0; the workload's main thread (waiting
        // for `go`, then joining) may wait its turn on another CPU.
        if tids.contains(&e["tid"].as_u64().unwrap()) {
            assert_eq!(e["cpu"].as_u64(), Some(0), "{e}");
        }
    }
    // Every delay at or over the threshold is either reported or counted as dropped.
    let over: u64 = report["runqueue"]["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["le_ns"].as_u64().unwrap() >= threshold_ns)
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    let d = &report["dropped"];
    let accounted = events.len() as u64
        + d["slow_event_rate_limited"].as_u64().unwrap()
        + d["slow_event_ringbuf_full"].as_u64().unwrap()
        + d["slow_event_report_limit"].as_u64().unwrap();
    assert_eq!(
        accounted,
        over,
        "slow events {} + dropped {d} vs {over} delays >= threshold",
        events.len()
    );
    // 50/s per CPU over ~1 s of contention on one CPU: the limit must have bitten.
    assert!(
        d["slow_event_rate_limited"].as_u64().unwrap() > 0,
        "rate limit never applied: {d}"
    );
}

#[test]
fn cgroup_filter_captures_only_that_cgroup_and_names_it() {
    if !privileged_or_skip() {
        return;
    }
    let (cg, result, report) = capture_cgroup_workload(
        "capture",
        &["spin", "--threads", "2", "--cpu", "0", "--secs", "0.5"],
    );
    let tasks = report["tasks"].as_array().unwrap();
    for t in result["threads"].as_array().unwrap() {
        let row = task(&report, t["tid"].as_u64().unwrap());
        assert_eq!(row["cgroup"].as_str(), Some(cg.path()));
    }
    // Nothing from outside the cgroup (the capture itself, kernel threads, ...).
    for t in tasks {
        assert_eq!(
            t["cgroup"].as_str(),
            Some(cg.path()),
            "task outside the cgroup: {t}"
        );
    }
    let cgroups: Vec<&str> = report["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cgroup"].as_str().unwrap())
        .collect();
    assert_eq!(cgroups, vec![cg.path()]);
}

#[test]
fn churn_of_10000_tasks_under_capture_is_all_reported_and_leaves_no_stale_stamps() {
    if !privileged_or_skip() {
        return;
    }
    // Forked children have tgids of their own: filter by cgroup, which they inherit.
    let (_cg, result, report) =
        capture_cgroup_workload("churn", &["churn", "--procs", "5000", "--threads", "5000"]);
    // Every short-lived task was created runnable and switched in once at least: each one is
    // a row of its own, with its delay.
    let seen: std::collections::HashSet<u64> = report["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["runqueue_count"].as_u64() > Some(0))
        .map(|t| t["tid"].as_u64().unwrap())
        .collect();
    let mut missing = Vec::new();
    for key in ["child_pids", "thread_tids"] {
        let ids = result[key].as_array().unwrap();
        assert_eq!(ids.len(), 5000, "{key}");
        missing.extend(
            ids.iter()
                .map(|v| v.as_u64().unwrap())
                .filter(|id| !seen.contains(id)),
        );
    }
    let rows: Vec<&Value> = report["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| missing.contains(&t["tid"].as_u64().unwrap()))
        .collect();
    // Known loss, not yet explained: in ~15-30% of runs on this VM one to three of the 10,000
    // have no row (no drop or read failure counted, TASK_STATS holds exactly that many rows
    // fewer), so their first switch-in or their wakeup_new stamp was not seen. Ruled out: tid
    // reuse (stamps are keyed by task_struct), cross-CPU clock order (delays saturate), program
    // recursion (bpftool shows no recursion_misses), task storage refusing an access (counted
    // as task_storage_busy: 0 in those runs), a stale stamp (counted: 0). Tolerated up to 5
    // and printed, so a real regression (dozens) still fails.
    if !missing.is_empty() {
        eprintln!(
            "churn: {} of 10,000 tasks without a row: {missing:?}",
            missing.len()
        );
    }
    assert!(
        missing.len() <= 5,
        "{} of 10,000 churned tasks missing from the capture, e.g. {:?}; their rows: {rows:?}; \
         dropped: {}; TASK_STATS {}; {} rows",
        missing.len(),
        &missing[..missing.len().min(10)],
        report["dropped"],
        report["maps"]["TASK_STATS"],
        report["tasks"].as_array().unwrap().len()
    );
    assert_eq!(report["dropped"]["total"], 0, "{}", report["dropped"]);
    // The per-task stamps of tasks that exited are gone: only tasks runnable or in a futex at
    // the end can hold one, a handful at most. (RUNQ_START only exists without task storage
    // for tracing programs; task storage is freed with its task.)
    for map in ["RUNQ_START", "FUTEX_START"] {
        if map == "RUNQ_START" && schedlat_tests::kernel_has("task_storage") {
            assert!(report["maps"].get(map).is_none(), "{}", report["maps"]);
            continue;
        }
        let n = report["maps"][map]["entries"].as_u64().unwrap();
        assert!(n <= 64, "{map} holds {n} entries after the churn");
    }
    // (Every churned tid was looked up in the rows above, with the tolerated missing ones: a
    // count of TASK_STATS entries would only repeat that, less exactly.)
}

#[test]
fn a_process_exiting_mid_capture_is_reported_without_errors() {
    if !privileged_or_skip() {
        return;
    }
    let mut w = Workload::start(&["spin", "--threads", "2", "--cpu", "0", "--secs", "0.5"]);
    let pid = w.pid.to_string();
    let cap = Schedlat::capture(&["--duration", "3s", "--format", "json", "--pid", &pid]);
    cap.wait_ready(Duration::from_secs(60));
    w.go();
    let result = w.result(); // the process has exited; the capture runs on for ~2 s
    let (status, stdout, stderr) = cap.wait();
    assert!(status.success(), "capture failed: {status}\n{stderr}");
    // No warning or error about the vanished process: its exit is ordinary.
    let noisy: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("error"))
        .collect();
    assert!(noisy.is_empty(), "capture complained: {noisy:?}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    for t in result["threads"].as_array().unwrap() {
        let row = task(&report, t["tid"].as_u64().unwrap());
        assert!(row["runqueue_count"].as_u64().unwrap() > 10, "{row}");
    }
    assert!(report["duration_s"].as_f64().unwrap() >= 2.9);
    assert_eq!(report["dropped"]["total"], 0);
    if !schedlat_tests::kernel_has("task_storage") {
        assert!(report["maps"]["RUNQ_START"]["entries"].as_u64().unwrap() <= 64);
    }
}

/// The rows of `tid` in every interval line.
fn task_rows(lines: &[Value], tid: u64) -> Vec<&Value> {
    lines
        .iter()
        .filter_map(|l| {
            l["tasks"]
                .as_array()
                .expect("tasks array")
                .iter()
                .find(|t| t["tid"].as_u64() == Some(tid))
        })
        .collect()
}

fn sum(rows: &[&Value], key: &str) -> u64 {
    rows.iter().map(|r| r[key].as_u64().unwrap()).sum()
}

/// Each line of `stdout` as JSON (JSON Lines); panics naming a line that is not whole.
fn json_lines(stdout: &str) -> Vec<Value> {
    assert!(stdout.ends_with('\n'), "output ends mid-line: {stdout:?}");
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

/// `--interval 1s --count 3 --format json`: three JSON lines, back to back in time, each
/// covering only its interval, which add up to what two workloads did inside the capture:
/// futex waits exactly (the workload's own count), run-queue delay of two threads sharing a
/// CPU against schedstat.
#[test]
fn interval_json_lines_add_up_to_the_workloads() {
    if !privileged_or_skip() {
        return;
    }
    // Both run for over 1 s, so each crosses at least one interval boundary, and end well
    // inside the 3 s the capture covers.
    let mut spin = Workload::start(&["spin", "--threads", "2", "--cpu", "0", "--secs", "1.2"]);
    let (timeouts, woken) = (12u64, 4u64);
    let mut futex = Workload::start(&[
        "futex",
        "--timeouts",
        &timeouts.to_string(),
        "--woken",
        &woken.to_string(),
        "--wait-ms",
        "100",
    ]);
    let (sp, fp) = (spin.pid.to_string(), futex.pid.to_string());
    let cap = Schedlat::capture(&[
        "--interval",
        "1s",
        "--count",
        "3",
        "--format",
        "json",
        "--pid",
        &sp,
        "--pid",
        &fp,
    ]);
    cap.wait_ready(Duration::from_secs(60));
    let ready = std::time::Instant::now();
    spin.go();
    futex.go();
    let (spun, waited) = (spin.result(), futex.result());
    let done = ready.elapsed();
    let (status, stdout, stderr) = cap.wait();
    assert!(status.success(), "capture failed: {status}\n{stderr}");
    assert!(
        done < Duration::from_millis(2900),
        "the workloads took {done:?}, beyond the 3 s the capture covers: cannot judge the sums"
    );
    let lines = json_lines(&stdout);
    assert_eq!(lines.len(), 3, "--count 3: {stdout}");
    for (i, l) in lines.iter().enumerate() {
        for k in [
            "runqueue",
            "futex",
            "tasks",
            "cgroups",
            "slow_events",
            "dropped",
        ] {
            assert!(l.get(k).is_some(), "line {i} lacks {k}");
        }
        let (start, end) = (
            l["interval_start"].as_str().unwrap(),
            l["interval_end"].as_str().unwrap(),
        );
        assert!(start < end, "line {i}: {start} .. {end}");
        if i > 0 {
            assert_eq!(
                lines[i - 1]["interval_end"].as_str().unwrap(),
                start,
                "intervals are back to back"
            );
        }
        // Each line is its own interval: its histogram adds up to its own count.
        let rq = &l["runqueue"];
        let in_buckets: u64 = rq["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .sum();
        assert_eq!(in_buckets, rq["count"].as_u64().unwrap(), "line {i}");
        assert_eq!(l["dropped"]["total"], 0, "line {i}");
    }

    let waiter = waited["waiter_tid"].as_u64().unwrap();
    let rows = task_rows(&lines, waiter);
    let waits = timeouts + woken - waited["eagain"].as_u64().unwrap();
    eprintln!(
        "figure: interval futex waits {} over {} lines, {waits} made",
        sum(&rows, "futex_count"),
        rows.len()
    );
    assert_eq!(sum(&rows, "futex_count"), waits, "{rows:?}");
    assert_eq!(sum(&rows, "futex_timeouts"), timeouts, "{rows:?}");
    assert!(
        rows.len() >= 2,
        "1.2 s of waits fit in one 1 s interval? {rows:?}"
    );

    for t in spun["threads"].as_array().unwrap() {
        let tid = t["tid"].as_u64().unwrap();
        let oracle = t["run_delay_ns"].as_u64().unwrap() as f64;
        let rows = task_rows(&lines, tid);
        let got = sum(&rows, "runqueue_sum_ns") as f64;
        let err = (got - oracle).abs() / oracle;
        eprintln!(
            "figure: interval run-queue delay tid {tid}: {got:.0} ns over {} lines, schedstat {oracle:.0} ns, error {:.3}%",
            rows.len(),
            err * 100.0
        );
        assert!(oracle > 0.3e9, "tid {tid}: the threads did not contend");
        assert!(
            rows.len() >= 2,
            "1.2 s of spinning in one 1 s interval? {rows:?}"
        );
        assert!(
            err <= 0.02,
            "tid {tid}: {got} ns summed over the lines vs schedstat {oracle} ns"
        );
    }
}

/// SIGINT in the middle of an interval ends the capture at once with exit 0, after printing
/// the interval cut short: every line on stdout is a whole JSON object. Text blocks carry
/// their time range.
#[test]
fn interval_capture_stops_on_sigint_with_whole_blocks() {
    if !privileged_or_skip() {
        return;
    }
    let cap = Schedlat::capture(&["--interval", "1s", "--format", "json"]);
    cap.wait_ready(Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(2500));
    let (status, stdout, stderr) = cap.stop();
    assert!(status.success(), "SIGINT: {status}\n{stderr}");
    let lines = json_lines(&stdout);
    assert!(lines.len() >= 2, "{stdout}");
    let last = lines.last().unwrap()["duration_s"].as_f64().unwrap();
    assert!(
        last < 1.0,
        "the last block was cut short by SIGINT: {last} s"
    );

    let out = schedlat_tests::run_schedlat(&["capture", "--interval", "0.5s", "--count", "2"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let text = String::from_utf8_lossy(&out.stdout);
    let headers: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("schedlat capture: host-wide, "))
        .collect();
    assert_eq!(headers.len(), 2, "{text}");
    assert!(headers.iter().all(|h| h.contains(" to ")), "{headers:?}");
}

/// Timed-out futex waits are woken by their timer's interrupt: on an idle CPU the idle task
/// (pid 0) is current then, and the report says `(irq)` with the CPU (`(irq) on CPU N` in
/// text) instead of naming the idle task (`swapper/N`) as the waker. Every timeout is a
/// wakeup of the waiter.
#[test]
fn timer_wakeups_on_an_idle_cpu_are_labelled_as_interrupts() {
    if !privileged_or_skip() {
        return;
    }
    let timeouts = 20u64;
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) } as u64;
    let (result, report) = capture_workload(
        &[
            "futex",
            "--timeouts",
            &timeouts.to_string(),
            "--woken",
            "0",
            "--wait-ms",
            "5",
        ],
        &[],
    );
    let waiter = result["waiter_tid"].as_u64().unwrap();
    let pairs: Vec<&Value> = report["wakeups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["wakee_tid"].as_u64() == Some(waiter))
        .collect();
    let total: u64 = pairs.iter().map(|w| w["count"].as_u64().unwrap()).sum();
    assert!(
        total >= timeouts,
        "{timeouts} timeouts, {total} wakeups: {pairs:?}"
    );
    let irq: u64 = pairs
        .iter()
        .filter(|w| w["waker_tid"] == 0)
        .map(|w| {
            assert_eq!(w["waker_comm"], "(irq)", "{w}");
            let cpu = w["waker_cpu"]
                .as_u64()
                .expect("an irq wakeup names its CPU");
            assert!(cpu < cpus, "CPU {cpu} of {cpus}: {w}");
            w["count"].as_u64().unwrap()
        })
        .sum();
    eprintln!(
        "figure: {irq} of {total} wakeups of the timed-out waiter from an idle CPU's interrupt"
    );
    for w in report["wakeups"].as_array().unwrap() {
        let comm = w["waker_comm"].as_str().unwrap();
        assert!(!comm.starts_with("swapper/"), "idle task as a waker: {w}");
    }
}

/// Runs headless Chromium (Debian's `chromium`, installed by `cargo xtask setup`) on `page`
/// with `args`; returns (stdout, stderr). Panics with a setup hint when it is missing.
fn chromium(profile: &std::path::Path, args: &[&str], page: &std::path::Path) -> (String, String) {
    let out = std::process::Command::new("timeout")
        .args([
            "120",
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        // Console messages of the page land on stderr as `...:CONSOLE:...` lines.
        .args(["--enable-logging=stderr", "--v=0"])
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("running chromium (`cargo xtask setup` installs Debian's chromium)");
    assert!(
        out.status.success(),
        "chromium {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--html FILE`: one self-contained page (nothing fetched at view time). In headless
/// Chromium it loads without a single console message, its script runs to the end, each
/// heatmap has one column per interval, and a screenshot of it is not blank.
#[test]
fn html_report_renders_in_headless_chromium() {
    if !privileged_or_skip() {
        return;
    }
    let dir = TempDir::new("html-test");
    let page = dir.join("capture.html");
    let out = schedlat_tests::run_schedlat(&[
        "capture",
        "--interval",
        "1s",
        "--count",
        "3",
        "--format",
        "json",
        "--html",
        page.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(json_lines(&String::from_utf8_lossy(&out.stdout)).len(), 3);
    let html = std::fs::read_to_string(&page).expect("the HTML report");
    for remote in ["src=\"http", "href=\"http", "@import", "url(http"] {
        assert!(
            !html.contains(remote),
            "the page loads {remote}...: not self-contained"
        );
    }

    let profile = dir.join("profile");
    let (dom, log) = chromium(&profile, &["--dump-dom"], &page);
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert!(
        dom.contains("data-rendered=\"1\""),
        "the page's script did not run to its end"
    );
    for id in ["runq_woken", "runq_preempted", "futex"] {
        let fig = dom
            .split(&format!("<figure class=\"heatmap\" id=\"{id}\""))
            .nth(1)
            .unwrap_or_else(|| panic!("no heatmap {id}"))
            .split("</figure>")
            .next()
            .unwrap();
        assert_eq!(
            fig.matches("<g class=\"column\"").count(),
            3,
            "heatmap {id}: one column per interval"
        );
    }
    assert!(dom.contains("Top tasks by run-queue delay"));

    let shot = dir.join("shot.png");
    let arg = format!("--screenshot={}", shot.display());
    chromium(&profile, &[&arg, "--window-size=1280,900"], &page);
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().expect("a PNG screenshot");
    let mut buf = vec![0; reader.output_buffer_size().expect("a sane PNG size")];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    // Not blank: a share of the pixels is neither white nor near it, in many colours (the
    // heatmap's scale, text).
    let inked = pixels
        .iter()
        .filter(|p| p[..3].iter().any(|&c| c < 200))
        .count();
    let colours: std::collections::HashSet<&[u8]> = pixels.iter().copied().collect();
    eprintln!(
        "figure: screenshot {}x{}: {:.1}% inked, {} colours",
        info.width,
        info.height,
        100.0 * inked as f64 / pixels.len() as f64,
        colours.len()
    );
    assert!(
        inked * 50 > pixels.len(),
        "under 2% of the screenshot is inked"
    );
    assert!(colours.len() > 20, "{} colours only", colours.len());
}
