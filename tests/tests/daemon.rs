//! Privileged: `schedlat daemon` under load, scraped like Prometheus would.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use schedlat_tests::{
    TempDir, Workload, privileged_or_skip,
    scrape::{Daemon, get, promtool_check, sample, total},
};

#[test]
fn daemon_metrics_grow_under_load_and_pass_promtool() {
    if !privileged_or_skip() {
        return;
    }
    let d = Daemon::start();
    let before = get(&d.addr, "/metrics").expect("scrape 1");
    // Load: preemption on CPU 0, futex waits with timeouts, wakeups.
    let cg = schedlat_tests::TestCgroup::create("daemon");
    let mut spin = Workload::start(&["spin", "--threads", "2", "--cpu", "0", "--secs", "1"]);
    cg.add(spin.pid);
    let mut futex =
        Workload::start(&["futex", "--timeouts", "5", "--woken", "5", "--wait-ms", "2"]);
    spin.go();
    futex.go();
    let spun = spin.result();
    futex.result();
    let after = get(&d.addr, "/metrics").expect("scrape 2");
    promtool_check(&after);

    // The default futex mode `auto` is `sched` where the kernel has bpf_task_pt_regs (5.15+),
    // else `off`: then no futex wait may be reported.
    let futex = if schedlat_tests::kernel_has("task_pt_regs") {
        10.0
    } else {
        let n = total(&after, "schedlat_futex_wait_seconds_count");
        assert_eq!(
            n, 0.0,
            "futex mode auto is off on this kernel, yet {n} waits"
        );
        0.0
    };
    for (name, min_growth) in [
        ("schedlat_runqueue_latency_seconds_count", 100.0),
        ("schedlat_runqueue_latency_seconds_sum", 0.5), // ~1 s of preemption delay
        ("schedlat_futex_wait_seconds_count", futex),
        ("schedlat_wakeups_total", 10.0),
    ] {
        let (b, a) = (total(&before, name), total(&after, name));
        assert!(
            a - b >= min_growth,
            "{name} grew by {} (from {b} to {a}), want >= {min_growth}",
            a - b
        );
    }
    for needle in [
        "cause=\"preempted\"",
        "cause=\"woken\"",
        "le=\"+Inf\"",
        "schedlat_build_info",
        "schedlat_events_dropped_total{reason=\"runq_start_map_full\"}",
        "schedlat_program_attached{program=\"sched_switch\"",
    ] {
        assert!(after.contains(needle), "metrics lack {needle}");
    }
    // The workload's cgroup is a label of its own, with its path.
    let label = format!("cgroup=\"{}\"", cg.path());
    let preempted_in_cg = after
        .lines()
        .find(|l| {
            l.starts_with("schedlat_runqueue_latency_seconds_count{")
                && l.contains(&label)
                && l.contains("preempted")
        })
        .unwrap_or_else(|| panic!("no preempted series for {label}"));
    let n: f64 = preempted_in_cg.rsplit(' ').next().unwrap().parse().unwrap();
    // On failure, what the kernel saw (schedstat timeslices) and what schedlat dropped, to tell a slow machine from lost waits.
    let drops: Vec<&str> = after
        .lines()
        .filter(|l| l.starts_with("schedlat_events_dropped_total{"))
        .collect();
    // The oracle: the kernel's own count of the spinners' timeslices in their window; every
    // slice but a thread's first (woken at the start gate) and last (woken at the end gate)
    // began after a preempted wait (two spinners share CPU 0). A
    // fixed floor (100) failed in slow emulated guests that only managed ~77 slices.
    let slices: u64 = spun["threads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["timeslices"].as_u64().unwrap().saturating_sub(2))
        .sum();
    println!("figure: {n} preempted waits in the workload's cgroup, {slices} by schedstat");
    assert!(
        slices >= 20 && n >= 0.9 * slices as f64,
        "{preempted_in_cg}, against {slices} preempted slices by schedstat; spin threads: {}; \
         {drops:?}",
        spun["threads"]
    );
    // No pid/tid labels in daemon metrics.
    assert!(!after.contains("pid=\"") && !after.contains("tid=\""));
    let status = d.stop();
    assert!(status.success(), "daemon exit after SIGTERM: {status}");
}

/// Ids of the eBPF programs process `pid` holds open (/proc/PID/fdinfo of its bpf-prog fds).
fn programs_of(pid: u32) -> Vec<u64> {
    let mut ids = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let is_prog = std::fs::read_link(fd.path())
            .is_ok_and(|t| t.to_string_lossy() == "anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap();
        if let Some(id) = info.lines().find_map(|l| l.strip_prefix("prog_id:")) {
            ids.push(id.trim().parse().unwrap());
        }
    }
    ids
}

#[test]
fn sigkill_leaves_no_programs_attached() {
    if !privileged_or_skip() {
        return;
    }
    let mut d = Daemon::start();
    let pid = d.child.id();
    let ids = programs_of(pid);
    assert!(ids.len() >= 3, "daemon {pid} owns programs {ids:?}");
    d.child.kill().unwrap(); // SIGKILL: no chance to clean up
    d.child.wait().unwrap();
    // Links and programs are file-descriptor owned: the kernel frees them with the process.
    // Freeing is asynchronous (RCU), so allow a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| {
                Command::new("bpftool")
                    .args(["prog", "show", "id", &id.to_string()])
                    .output()
                    .unwrap()
                    .status
                    .success()
            })
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "programs {left:?} still loaded 10 s after SIGKILL of the daemon"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Each program's bpf_prog_info.recursion_misses as bpftool reads it (`-j prog show`, which
/// prints the field only when it is not 0), by name, for the programs process `pid` holds.
fn recursion_misses_by_bpftool(pid: u32) -> Vec<(String, u64)> {
    programs_of(pid)
        .iter()
        .map(|id| {
            let out = Command::new("bpftool")
                .args(["-j", "prog", "show", "id", &id.to_string()])
                .output()
                .expect("bpftool not found: `cargo xtask setup` installs it");
            assert!(out.status.success(), "bpftool prog show id {id}");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            (
                v["name"].as_str().unwrap().to_string(),
                v["recursion_misses"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// The runs the kernel skipped (bpf_prog_info.recursion_misses) are exported for every
/// attached program under reason="kernel_skipped_recursion", and they are the kernel's own
/// numbers: each lies between bpftool's reading of the same program just before the scrape
/// and just after it. Nothing found here makes the kernel skip one of schedlat's programs on
/// purpose (see the README's drop reasons), so on a quiet host they are all 0; the test still
/// fails on a missing program, a value that is not a number, or one the kernel did not count.
#[test]
fn kernel_skipped_runs_are_exported_per_program_as_the_kernel_counts_them() {
    if !privileged_or_skip() {
        return;
    }
    if !schedlat_tests::kernel_release_at_least(5, 12) {
        eprintln!("SKIPPED: bpf_prog_info has no recursion_misses before 5.12");
        return;
    }
    let d = Daemon::start();
    let pid = d.child.id();
    let mut spin = Workload::start(&["spin", "--threads", "2", "--cpu", "0", "--secs", "1"]);
    spin.go();
    spin.result();
    let before = recursion_misses_by_bpftool(pid);
    let m = get(&d.addr, "/metrics").expect("scrape");
    let after = recursion_misses_by_bpftool(pid);
    let prefix = "schedlat_events_dropped_total{reason=\"kernel_skipped_recursion\",program=\"";
    let exported: std::collections::BTreeMap<String, f64> = m
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|rest| {
            let (program, value) = rest.split_once("\"} ").expect("program=\"...\"} value");
            let v: f64 = value
                .parse()
                .unwrap_or_else(|e| panic!("{program}: {value:?} is not a number ({e})"));
            (program.to_string(), v)
        })
        .collect();
    let attached: std::collections::BTreeSet<String> = m
        .lines()
        .filter(|l| l.ends_with(" 1"))
        .filter_map(|l| l.strip_prefix("schedlat_program_attached{program=\""))
        .map(|rest| rest.split('"').next().unwrap().to_string())
        .collect();
    assert!(attached.len() >= 3, "attached: {attached:?}");
    assert_eq!(
        exported
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        attached,
        "a kernel_skipped_recursion series for each attached program"
    );
    // bpftool names a program by its BTF function name, or the kernel's 15 bytes of it.
    let by = |readings: &[(String, u64)], program: &str| -> u64 {
        readings
            .iter()
            .find(|(n, _)| program.starts_with(n.as_str()))
            .unwrap_or_else(|| panic!("bpftool lists no program {program}: {readings:?}"))
            .1
    };
    for (program, v) in &exported {
        let (lo, hi) = (by(&before, program), by(&after, program));
        assert!(
            lo as f64 <= *v && *v <= hi as f64,
            "{program}: exported {v}, the kernel counted {lo} before the scrape and {hi} after"
        );
    }
    println!("figure: runs skipped by the kernel, by program: {exported:?}");
    assert!(d.stop().success());
}

/// A daemon config (in a fresh temp dir, returned with it) with room for 16 histogram series
/// for the whole host: run-queue histograms of 8 cgroups (and 8 futex series). The per-task
/// stamps live in task storage here (RUNQ_START only exists on kernels without it), so the
/// map a test can fill is the cgroups'.
fn tiny_hists_config(name: &str) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new(name);
    let cfg = dir.join("small.toml");
    std::fs::write(&cfg, "[maps]\nhists = 16\n").unwrap();
    (dir, cfg)
}

/// Run-queue waits in 12 new cgroups: more than 8 slots.
fn overflow_rq_slots() {
    let cgroups: Vec<_> = (0..12)
        .map(|i| schedlat_tests::TestCgroup::create(&format!("full{i}")))
        .collect();
    let mut spins = Vec::new();
    for cg in &cgroups {
        let spin = Workload::start(&["spin", "--threads", "2", "--cpu", "0", "--secs", "0.2"]);
        cg.add(spin.pid);
        spins.push(spin);
    }
    for s in &mut spins {
        s.go();
    }
    for s in spins {
        s.result();
    }
}

#[test]
fn a_full_map_drops_are_counted_and_the_daemon_keeps_serving() {
    if !privileged_or_skip() {
        return;
    }
    let (_dir, cfg) = tiny_hists_config("mapfull");
    let d = Daemon::start_with(&["--config", cfg.to_str().unwrap()]);
    overflow_rq_slots();
    let m = get(&d.addr, "/metrics").expect("daemon still serves after its map filled");
    let dropped = m
        .lines()
        .find(|l| l.starts_with("schedlat_events_dropped_total{reason=\"hist_map_full\"}"))
        .expect("drop counter exported");
    let n: f64 = dropped.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        n > 0.0,
        "8 run-queue slots never overflowed with 12 busy cgroups: {dropped}"
    );
    assert!(
        m.contains("schedlat_map_capacity{map=\"RQ_SLOTS\"} 8"),
        "{m}"
    );
    // Whatever fit was still measured.
    assert!(total(&m, "schedlat_runqueue_latency_seconds_count") > 0.0);
    assert!(d.stop().success());
}

#[test]
fn a_removed_cgroup_leaves_the_kernel_map_and_keeps_its_final_counts() {
    if !privileged_or_skip() {
        return;
    }
    let d = Daemon::start();
    let cg = schedlat_tests::TestCgroup::create("removed");
    let path = cg.path().to_string();
    let mut spin = Workload::start(&["spin", "--threads", "2", "--cpu", "0", "--secs", "0.5"]);
    cg.add(spin.pid);
    spin.go();
    spin.result();
    let series =
        format!("schedlat_runqueue_latency_seconds_count{{cgroup=\"{path}\",cause=\"preempted\"}}");
    let before = get(&d.addr, "/metrics").unwrap();
    let n = sample(&before, &series).unwrap_or_else(|| panic!("no {series}"));
    assert!(n > 10.0, "{series} {n}");
    let slots_before = sample(&before, "schedlat_map_entries{map=\"RQ_SLOTS\"}").unwrap();
    drop(cg); // rmdir: the cgroup is gone
    let after = get(&d.addr, "/metrics").unwrap();
    assert_eq!(
        sample(&after, &series),
        Some(n),
        "final count kept, under its own label"
    );
    assert!(sample(&after, "schedlat_cgroups_retired").unwrap() >= 1.0);
    let slots_after = sample(&after, "schedlat_map_entries{map=\"RQ_SLOTS\"}").unwrap();
    assert!(
        slots_after < slots_before,
        "RQ_SLOTS entries {slots_before} -> {slots_after}: removed cgroup's slot not freed"
    );
    promtool_check(&after);
    assert!(d.stop().success());
}

fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:")
}

/// A `kB` field of /proc/PID/status (VmRSS, VmHWM, ...).
fn status_kb(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

/// One churn round in `cg`: 5,000 short-lived processes, 5,000 short-lived threads, then 64
/// threads killed while blocked in futex as the process exits; meanwhile a thread scrapes the
/// daemon back to back (every scrape must succeed). Returns the scrapes made and the tids of
/// every task the round created (all gone by now).
fn churn_round(d: &Daemon, cg: &schedlat_tests::TestCgroup) -> (u64, Vec<u32>) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = {
        let (stop, addr) = (stop.clone(), d.addr.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                get(&addr, "/metrics").expect("scrape during churn");
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            n
        })
    };
    let mut churn = Workload::start(&[
        "churn",
        "--procs",
        "5000",
        "--threads",
        "5000",
        "--parked",
        "64",
    ]);
    cg.add(churn.pid);
    churn.go();
    let result = churn.result();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut tids = Vec::new();
    for (key, n) in [
        ("child_pids", 5000),
        ("thread_tids", 5000),
        ("parked_tids", 64),
    ] {
        let ids = result[key].as_array().unwrap();
        assert_eq!(ids.len(), n, "{key}");
        tids.extend(ids.iter().map(|v| v.as_u64().unwrap() as u32));
    }
    (scraper.join().unwrap(), tids)
}

/// The entries of the daemon's kernel map `name`, dumped with bpftool as JSON (map ids from
/// /proc/PID/fdinfo: the daemon's own maps, whatever else is loaded).
fn map_dump(pid: u32, name: &str) -> Vec<serde_json::Value> {
    let bpftool = |args: &[&str]| -> serde_json::Value {
        let out = Command::new("bpftool")
            .args(args)
            .output()
            .expect("bpftool not found: `cargo xtask setup` installs it");
        assert!(
            out.status.success(),
            "bpftool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let mut ids: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let info = std::fs::read_to_string(e.path()).ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .map(|id| id.trim().to_string())
        })
        .collect();
    ids.sort();
    ids.dedup();
    let id = ids
        .iter()
        .find(|id| bpftool(&["map", "show", "id", id, "-j"])["name"] == name)
        .unwrap_or_else(|| panic!("daemon {pid} holds no map {name} (ids {ids:?})"));
    bpftool(&["map", "dump", "id", id, "-j"])
        .as_array()
        .unwrap()
        .clone()
}

/// A little-endian integer of `len` bytes at `at` in a dumped key or value: from bpftool's
/// `formatted` view (map BTF) by `field`, else from the raw "0x.." bytes.
fn dumped_int(e: &serde_json::Value, part: &str, field: &str, at: usize, len: usize) -> u64 {
    if let Some(v) = e["formatted"][part][field].as_u64() {
        return v;
    }
    let b: Vec<u8> = e[part]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| u8::from_str_radix(x.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
        .collect();
    let mut w = [0u8; 8];
    w[..len].copy_from_slice(&b[at..at + len]);
    u64::from_le_bytes(w)
}

/// The tids of the run-queue or futex stamps in the daemon's map `name`: the maps are keyed by
/// task_struct address, and the value carries the tid (RunqStart at byte 24, FutexStart at
/// byte 12, probe-ebpf/common).
fn map_tids(pid: u32, name: &str) -> Vec<u32> {
    let at = if name == "RUNQ_START" { 24 } else { 12 };
    map_dump(pid, name)
        .iter()
        .map(|e| dumped_int(e, "value", "tid", at, 4) as u32)
        .collect()
}

/// Histogram entries of one cgroup: the futex commands it has a series for in HISTS (HistKey:
/// cgroup_id at byte 0, op at byte 12), and its run-queue slots in RQ_SLOTS (key: the cgroup
/// id; a slot holds two series, woken and preempted).
fn series_of_cgroup(pid: u32, cgroup_id: u64) -> (std::collections::BTreeSet<u64>, usize) {
    let futex_ops = map_dump(pid, "HISTS")
        .iter()
        .filter(|e| dumped_int(e, "key", "cgroup_id", 0, 8) == cgroup_id)
        .map(|e| dumped_int(e, "key", "op", 12, 4))
        .collect();
    let runq = map_dump(pid, "RQ_SLOTS")
        .iter()
        .filter(|e| dumped_int(e, "key", "cgroup_id", 0, 8) == cgroup_id)
        .count();
    (futex_ops, runq)
}

/// Per-task stamps the daemon holds for tasks that no longer exist: any of `ours` (tasks the
/// test made, all gone) in the last dump, and any other in two dumps a second apart (a task in
/// its last microseconds is gone from /proc just before its final switch-out).
fn stale_stamps(pid: u32, ours: &[u32]) -> Vec<(&'static str, u32)> {
    let ours: std::collections::HashSet<u32> = ours.iter().copied().collect();
    let mut stale = Vec::new();
    // RUNQ_START exists only on kernels without task storage for tracing programs; task storage
    // is freed by the kernel with its task.
    let maps: &[&'static str] = if schedlat_tests::kernel_has("task_storage") {
        &["FUTEX_START"]
    } else {
        &["RUNQ_START", "FUTEX_START"]
    };
    for &map in maps {
        let first: std::collections::HashSet<u32> = map_tids(pid, map).into_iter().collect();
        std::thread::sleep(Duration::from_secs(1));
        for tid in map_tids(pid, map) {
            // A number of ours still in /proc was reused by a new task: not stale.
            let gone = !std::path::Path::new(&format!("/proc/{tid}")).exists();
            if gone && (ours.contains(&tid) || first.contains(&tid)) {
                stale.push((map, tid));
            }
        }
    }
    stale
}

/// Blocking futex commands (probe-ebpf/common futex_op: WAIT, LOCK_PI, WAIT_BITSET,
/// WAIT_REQUEUE_PI, LOCK_PI2, futex_waitv, futex2 wait): a cgroup's futex series sums one HISTS
/// entry per command it used.
const FUTEX_OPS: usize = 7;

/// The histogram series (run-queue and futex) in `after` but not in `before`.
fn new_hist_series(before: &str, after: &str) -> std::collections::BTreeSet<String> {
    let series = |m: &str| -> std::collections::BTreeSet<String> {
        m.lines()
            .filter(|l| {
                l.starts_with("schedlat_runqueue_latency_seconds_count{")
                    || l.starts_with("schedlat_futex_wait_seconds_count{")
            })
            .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_owned()))
            .collect()
    };
    let b = series(before);
    series(after)
        .into_iter()
        .filter(|c| !b.contains(c))
        .collect()
}

/// Entries of each kernel map in a scrape.
fn map_entries(m: &str, map: &str) -> f64 {
    sample(m, &format!("schedlat_map_entries{{map=\"{map}\"}}"))
        .unwrap_or_else(|| panic!("no schedlat_map_entries for {map}"))
}

#[test]
fn churn_of_10000_tasks_leaves_no_stale_entries_and_flat_memory() {
    if !privileged_or_skip() {
        return;
    }
    // [go] on for the churn's cgroup: every short-lived process is also a candidate of the
    // Go scan that runs at each scrape (classified by executable, never read: not Go).
    let cg = schedlat_tests::TestCgroup::create("churn");
    let (d, dir) = schedlat_tests::scrape::go_daemon("schedlat-churn", &cg, "");
    let before = get(&d.addr, "/metrics").unwrap();
    let rss_before = rss_kb(d.child.id());

    let (scrapes, tids) = churn_round(&d, &cg);
    let after = get(&d.addr, "/metrics").unwrap();
    // Per-task state: every run-queue stamp of a task that ran and exited was consumed at its
    // switch-in, every futex stamp at its wakeup, and the stamps of the threads killed while
    // blocked in futex at their final switch-out. No stamp of the 10,064 tasks is left, nor of
    // any other task gone from the host.
    let stale = stale_stamps(d.child.id(), &tids);
    assert!(stale.is_empty(), "stamps of exited tasks: {stale:?}");
    // The daemon keeps no per-task statistics at all (captures do).
    for map in ["TASK_STATS", "WAKE_PAIRS"] {
        assert_eq!(map_entries(&after, map), 0.0, "{map} filled by the daemon");
    }
    // Histograms are per cgroup and kind (woken, preempted, futex by command), not per task:
    // HISTS grows by the new series only (the churn's cgroup's, and those of any cgroup that
    // became busy on the host meanwhile).
    // Counted in the map itself for the churn's cgroup: other cgroups on the host may add
    // entries meanwhile (a new series, or a futex command new to an existing one).
    let new = new_hist_series(&before, &after);
    assert!(new.iter().any(|s| s.contains(cg.path())), "{new:?}");
    let (ops_1, runq_1) = series_of_cgroup(d.child.id(), cg.id());
    let ours_1 = ops_1.len() + 2 * runq_1;
    assert!(
        (1..=2 + FUTEX_OPS).contains(&ours_1),
        "HISTS and RQ_SLOTS hold {ours_1} series for {} (at most woken, preempted and one per \
         futex command)",
        cg.path()
    );
    // Task storage can refuse an access while an exiting task frees its storage on the same
    // CPU (the per-CPU lock is held preemptibly): each such loss is one delay, counted as
    // task_storage_busy (or, for a lost consume followed by a lost stamp, stale_stamp). A few
    // in 10,064 exits; nothing else may be lost.
    let drops: Vec<&str> = after
        .lines()
        .filter(|l| l.starts_with("schedlat_events_dropped_total{") && !l.ends_with(" 0"))
        .collect();
    let storage = ["task_storage_busy", "stale_stamp"];
    let (tolerated, other): (Vec<&str>, Vec<&str>) = drops.iter().partition(|l| {
        storage
            .iter()
            .any(|r| l.contains(&format!("reason=\"{r}\"")))
    });
    let lost: f64 = tolerated
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    if lost > 0.0 {
        println!("figure: churn: {lost} delays lost to task storage: {tolerated:?}");
    }
    assert!(
        other.is_empty() && lost <= 10.0,
        "drops during churn: {drops:?}"
    );
    assert_eq!(
        total(&after, "schedlat_go_read_errors_total"),
        0.0,
        "Go scan errors from processes exiting under it"
    );
    // 10,000 new tasks were each woken and run at least once, in the churn's cgroup.
    let series = |cause: &str| {
        format!(
            "schedlat_runqueue_latency_seconds_count{{cgroup=\"{}\",cause=\"{cause}\"}}",
            cg.path()
        )
    };
    let waits = sample(&after, &series("woken")).unwrap_or(0.0)
        + sample(&after, &series("preempted")).unwrap_or(0.0);
    assert!(
        waits >= 10_000.0,
        "only {waits} run-queue waits in {} for 10,000 new tasks",
        cg.path()
    );
    for _ in 0..5 {
        get(&d.addr, "/metrics").unwrap();
    }
    let rss_1 = rss_kb(d.child.id());

    // Memory is flat: a second round of 10,000 tasks costs the daemon nothing more.
    let (scrapes_2, tids_2) = churn_round(&d, &cg);
    let after_2 = get(&d.addr, "/metrics").unwrap();
    let stale = stale_stamps(d.child.id(), &tids_2);
    assert!(
        stale.is_empty(),
        "stamps of exited tasks after the second churn: {stale:?}"
    );
    // The same series: entries follow (cgroup, cause) and (cgroup, futex command), never
    // tasks. A futex command the first round happened not to use may appear now (glibc picks
    // FUTEX_WAIT or FUTEX_WAIT_BITSET by path), and nothing else.
    let (ops_2, runq_2) = series_of_cgroup(d.child.id(), cg.id());
    assert_eq!(
        runq_2,
        runq_1,
        "RQ_SLOTS entries of {} after a second round of the same churn",
        cg.path()
    );
    assert!(
        ops_2.is_superset(&ops_1) && ops_2.len() <= FUTEX_OPS,
        "futex commands with a HISTS entry for {}: {ops_1:?} after the first round, {ops_2:?} \
         after the second",
        cg.path()
    );
    for _ in 0..5 {
        get(&d.addr, "/metrics").unwrap();
    }
    let rss_2 = rss_kb(d.child.id());
    eprintln!(
        "churn: daemon RSS {rss_before} kB -> {rss_1} kB after 10,000 tasks ({scrapes} scrapes \
         during) -> {rss_2} kB after 10,000 more ({scrapes_2} scrapes); RQ_SLOTS {} -> {} -> {}, \
         HISTS {} -> {}",
        map_entries(&before, "RQ_SLOTS"),
        map_entries(&after, "RQ_SLOTS"),
        map_entries(&after_2, "RQ_SLOTS"),
        map_entries(&before, "HISTS"),
        map_entries(&after_2, "HISTS"),
    );
    assert!(
        rss_1 < rss_before + 8 * 1024,
        "daemon RSS {rss_before} kB -> {rss_1} kB"
    );
    assert!(
        rss_2 <= rss_1 + 1024,
        "daemon RSS grew again with the second churn: {rss_1} kB -> {rss_2} kB"
    );
    assert!(d.stop().success());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// /proc/PID/task/*/status of every thread of `pid`.
fn thread_statuses(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|t| std::fs::read_to_string(t.path().join("status")).unwrap())
        .collect()
}

fn status_field<'a>(status: &'a str, field: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim()
}

/// Two spinners sharing CPU 0 for 0.3 s add run-queue waits to the daemon's /metrics.
fn assert_metrics_grow_under_load(d: &Daemon) {
    let mut spin = Workload::start(&["spin", "--threads", "2", "--cpu", "0", "--secs", "0.3"]);
    let before = total(
        &get(&d.addr, "/metrics").unwrap(),
        "schedlat_runqueue_latency_seconds_count",
    );
    spin.go();
    spin.result();
    let after = total(
        &get(&d.addr, "/metrics").unwrap(),
        "schedlat_runqueue_latency_seconds_count",
    );
    assert!(after > before + 10.0, "{before} -> {after}");
}

fn assert_unprivileged(status: &str) {
    for set in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:"] {
        let v = status_field(status, set);
        assert_eq!(
            u64::from_str_radix(v, 16).unwrap(),
            0,
            "{set} {v}\n{status}"
        );
    }
    assert_eq!(status_field(status, "NoNewPrivs:"), "1", "{status}");
    // Its own seccomp filter (host/sandbox.rs), in every thread.
    assert_eq!(status_field(status, "Seccomp:"), "2", "{status}");
}

/// Started as root with no config, the daemon leaves root for nobody once attached: uid 0
/// without capabilities could still write root's files (block devices, core_pattern) and
/// signal root's processes.
#[test]
fn daemon_leaves_root_and_drops_every_capability_after_attaching_and_keeps_working() {
    if !privileged_or_skip() {
        return;
    }
    let d = Daemon::start();
    // Every thread, after a scrape (blocking threads exist then): ids, capabilities,
    // no_new_privs and seccomp are per thread.
    get(&d.addr, "/metrics").unwrap();
    let threads = thread_statuses(d.child.id());
    assert!(
        threads.len() >= 3,
        "runtime workers exist: {}",
        threads.len()
    );
    for status in &threads {
        for ids in ["Uid:", "Gid:"] {
            assert_eq!(
                status_field(status, ids)
                    .split_whitespace()
                    .collect::<Vec<_>>(),
                ["65534"; 4],
                "{status}"
            );
        }
        assert_eq!(status_field(status, "Groups:"), "65534", "{status}");
        assert_unprivileged(status);
    }
    // Reading maps still works without privileges.
    assert_metrics_grow_under_load(&d);
    assert!(d.stop().success());
}

#[test]
fn a_wrk_flood_of_scrapes_leaves_the_daemon_serving_with_bounded_memory() {
    if !privileged_or_skip() {
        return;
    }
    let d = Daemon::start();
    // Some series to render: a workload in a cgroup of its own.
    let cg = schedlat_tests::TestCgroup::create("flood");
    let mut spin = Workload::start(&["spin", "--threads", "2", "--cpu", "0", "--secs", "0.3"]);
    cg.add(spin.pid);
    spin.go();
    spin.result();
    let body = get(&d.addr, "/metrics").unwrap();
    let rss_before = rss_kb(d.child.id());
    let startup_peak = status_kb(d.child.id(), "VmHWM:");
    // Reset the peak (proc(5) clear_refs): start-up (BTF parsing) peaks higher than serving.
    std::fs::write(format!("/proc/{}/clear_refs", d.child.id()), "5").unwrap();
    // 64 connections scraping as fast as they can for 5 s, on loopback.
    let out = Command::new("wrk")
        .args(["-t", "2", "-c", "64", "-d", "5s", "--latency"])
        .arg(format!("http://{}/metrics", d.addr))
        .output()
        .expect("wrk not found: `cargo xtask setup` installs Debian's wrk package");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wrk failed:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requests: f64 = report
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no request count in wrk output:\n{report}"));
    assert!(
        requests >= 100.0,
        "only {requests} scrapes in 5 s:\n{report}"
    );
    // Every answer was a 200 and no connection failed.
    assert!(
        !report.contains("Non-2xx") && !report.contains("Socket errors"),
        "failed scrapes under flood:\n{report}"
    );
    // Still serving, with the same content, right after.
    assert!(
        get(&d.addr, "/healthz").is_some(),
        "no /healthz after the flood"
    );
    let after = get(&d.addr, "/metrics").expect("no /metrics after the flood");
    assert!(after.contains(&format!("cgroup=\"{}\"", cg.path())));
    assert_eq!(
        after.lines().filter(|l| l.starts_with("# TYPE")).count(),
        body.lines().filter(|l| l.starts_with("# TYPE")).count()
    );
    // Renders are serialized: 64 waiting connections cost their buffers, and nothing accumulates.
    let (rss_after, peak) = (rss_kb(d.child.id()), status_kb(d.child.id(), "VmHWM:"));
    eprintln!(
        "flood: {requests} scrapes; RSS {rss_before} kB -> {rss_after} kB, peak {peak} kB \
         (start-up peak {startup_peak} kB); body {} bytes",
        after.len()
    );
    assert!(
        peak < rss_before + 64 * 1024,
        "peak RSS {peak} kB (from {rss_before} kB)"
    );
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS {rss_before} kB -> {rss_after} kB"
    );
    assert!(d.stop().success());
}

#[test]
fn daemon_switches_to_an_unprivileged_user_after_attaching_and_keeps_working() {
    if !privileged_or_skip() {
        return;
    }
    let ids = |flag: &str| -> String {
        let out = Command::new("id").args([flag, "nobody"]).output().unwrap();
        assert!(out.status.success(), "id {flag} nobody");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let (uid, gid) = (ids("-u"), ids("-g"));
    assert_ne!(uid, "0");
    let dir = TempDir::new("user");
    let cfg = dir.join("user.toml");
    std::fs::write(&cfg, "user = \"nobody\"\n").unwrap();
    let d = Daemon::start_with(&["--config", cfg.to_str().unwrap()]);
    for status in thread_statuses(d.child.id()) {
        // real, effective, saved, filesystem ids; root's supplementary groups are gone.
        assert_eq!(
            status_field(&status, "Uid:")
                .split_whitespace()
                .collect::<Vec<_>>(),
            [uid.as_str(); 4],
            "{status}"
        );
        assert_eq!(
            status_field(&status, "Gid:")
                .split_whitespace()
                .collect::<Vec<_>>(),
            [gid.as_str(); 4],
            "{status}"
        );
        assert_eq!(status_field(&status, "Groups:"), gid, "{status}");
        assert_unprivileged(&status);
    }
    // Maps are read through the fds opened as root: metrics still grow.
    assert_metrics_grow_under_load(&d);
    assert!(d.stop().success());
}

/// Kernel-side diagnostics (aya-log, --log debug): a map filling up is logged from the eBPF
/// program the first time only, and surfaces in the daemon's log at its next scrape.
#[test]
fn a_map_filling_up_is_logged_from_the_kernel_once_at_debug_level() {
    if !privileged_or_skip() {
        return;
    }
    let (dir, cfg) = tiny_hists_config("kernlog");
    let log = dir.join("stderr");
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut child = Command::new(schedlat_tests::schedlat_bin())
        .args(["--log", "debug", "daemon", "--listen", &addr, "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while get(&addr, "/healthz").is_none() {
        assert!(t0.elapsed().as_secs() < 60, "daemon not ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    overflow_rq_slots();
    let m = get(&addr, "/metrics").expect("scrape");
    let dropped = total(&m, "schedlat_events_dropped_total");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text
        .lines()
        // drop_reason::HIST_FULL (probe-ebpf/common).
        .filter(|l| l.contains("first event lost: drop reason 2"))
        .collect();
    assert!(
        dropped > 1.0,
        "the 8 run-queue slots never overflowed: {dropped} drops"
    );
    assert_eq!(
        lines.len(),
        1,
        "want one kernel log line for {dropped} hist_map_full drops:\n{}",
        text.lines()
            .filter(|l| !l.contains("relocating"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(lines[0].contains("DEBUG"), "{}", lines[0]);
}

/// A sysctl raised for one test (only if below `min`), restored on drop, even on a panic.
struct RaisedSysctl {
    path: &'static str,
    old: Option<String>,
}

impl RaisedSysctl {
    fn at_least(path: &'static str, min: u64) -> Self {
        let old = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        let now: u64 = old.trim().parse().unwrap();
        if now >= min {
            return Self { path, old: None };
        }
        std::fs::write(path, min.to_string()).unwrap_or_else(|e| panic!("writing {path}: {e}"));
        Self {
            path,
            old: Some(old),
        }
    }
}

impl Drop for RaisedSysctl {
    fn drop(&mut self) {
        if let Some(old) = &self.old {
            if let Err(e) = std::fs::write(self.path, old.trim()) {
                eprintln!(
                    "warning: could not restore {} to {}: {e}",
                    self.path,
                    old.trim()
                );
            }
        }
    }
}

/// Threads parked in FUTEX_WAIT at once in the test below: more than the 65,536 entries the
/// hash stamps map had before it was sized for parked threads.
const PARKED: u32 = 70_000;

/// Sum of `name`'s samples carrying `label`.
fn total_with(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(label))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// One round: a daemon (`args`), PARKED threads of one process in a cgroup of their own,
/// parked, then woken at once. Returns (futex waits counted in the cgroup, runq_start_map_full
/// drops, RUNQ_START's capacity if the daemon has that map).
fn park_round(name: &str, args: &[&str]) -> (f64, f64, Option<f64>) {
    let d = Daemon::start_with(args);
    let cg = schedlat_tests::TestCgroup::create(name);
    let mut w = Workload::start(&["park", "--threads", &PARKED.to_string(), "--hold-ms", "200"]);
    cg.add(w.pid);
    let drop_series = "schedlat_events_dropped_total{reason=\"runq_start_map_full\"}";
    let before = get(&d.addr, "/metrics").expect("scrape before");
    w.go();
    let r = w.result();
    assert_eq!(
        r["woken"].as_u64(),
        Some(u64::from(PARKED)),
        "every thread slept and was woken: {r}"
    );
    let after = get(&d.addr, "/metrics").expect("scrape after");
    let label = format!("cgroup=\"{}\"", cg.path());
    let waits = total_with(&after, "schedlat_futex_wait_seconds_count", &label)
        - total_with(&before, "schedlat_futex_wait_seconds_count", &label);
    let drops =
        sample(&after, drop_series).unwrap_or(0.0) - sample(&before, drop_series).unwrap_or(0.0);
    let capacity = sample(&after, "schedlat_map_capacity{map=\"RUNQ_START\"}");
    // Every reason, for a failure's message: a wait lost another way is counted there.
    let all_drops: Vec<String> = after
        .lines()
        .filter(|l| l.starts_with("schedlat_events_dropped_total{"))
        .map(|l| {
            let series = l.rsplit_once(' ').unwrap().0;
            let grew =
                sample(&after, series).unwrap_or(0.0) - sample(&before, series).unwrap_or(0.0);
            format!("{series} +{grew}")
        })
        .collect();
    println!(
        "figure: {name}: {PARKED} threads parked ({:.1} s to create, all asleep at {:.1} s), \
         {waits} futex waits counted in their cgroup, {drops} runq_start_map_full drops, \
         RUNQ_START capacity {capacity:?}; drops: {all_drops:?}",
        r["created_s"].as_f64().unwrap(),
        r["all_asleep_s"].as_f64().unwrap()
    );
    assert!(d.stop().success());
    (waits, drops, capacity)
}

/// Futex mode `sched` keeps a parked thread's stamp while it sleeps, so the stamps must hold
/// every task of the host, not only the runnable ones. 70,000 threads park in FUTEX_WAIT at
/// once and are woken together: with task storage, and with the hash map of the build for
/// kernels before 5.12 (forced by the hidden --hash-stamps) sized from the host's task limit,
/// every wait is counted; with that map made too small (maps.runq_start), each lost wait is
/// counted under runq_start_map_full, never silent.
#[test]
fn seventy_thousand_parked_threads_each_wait_counted_or_dropped_by_name() {
    if !privileged_or_skip() {
        return;
    }
    if !schedlat_tests::kernel_has("task_pt_regs") {
        eprintln!("SKIPPED: futex mode `sched` needs bpf_task_pt_regs (5.15+)");
        return;
    }
    // Room for 70,000 more tasks (pid_max 32768 on many hosts); restored afterwards.
    let _pid_max = RaisedSysctl::at_least("/proc/sys/kernel/pid_max", 4 * u64::from(PARKED));
    let _threads_max =
        RaisedSysctl::at_least("/proc/sys/kernel/threads-max", 4 * u64::from(PARKED));
    let n = f64::from(PARKED);

    // The workload makes no futex wait but the parked threads' one each. Seen here: 3-6 of
    // the 70,000 missing in some runs with no drop of any reason (none of 20,000 under a
    // capture); not explained yet, so bounded (0.01%) rather than hidden.
    let lost_ok = n / 10_000.0;
    let (waits, drops, cap) = park_round("park-storage", &[]);
    if cap.is_none() {
        // Task storage: no map to fill.
        assert_eq!(drops, 0.0);
        assert!(
            waits <= n && waits >= n - lost_ok,
            "{waits} futex waits counted of {PARKED} parked threads"
        );
    }

    let (waits, drops, cap) = park_round("park-hash", &["--hash-stamps"]);
    let cap = cap.expect("the hash build exports RUNQ_START's capacity");
    assert!(
        cap >= 2.0 * n,
        "RUNQ_START sized {cap}, not from the host's task limit (pid_max and threads-max >= {})",
        4 * PARKED
    );
    assert_eq!(drops, 0.0, "runq_start_map_full with {cap} entries");
    assert!(
        waits <= n && waits >= n - lost_ok,
        "{waits} futex waits counted of {PARKED} parked threads"
    );

    let dir = TempDir::new("park");
    let cfg = dir.join("small.toml");
    std::fs::write(&cfg, "[maps]\nrunq_start = 20000\n").unwrap();
    let (waits, drops, cap) = park_round(
        "park-small",
        &["--hash-stamps", "--config", cfg.to_str().unwrap()],
    );
    assert_eq!(cap, Some(20000.0));
    assert!(
        drops > 0.0,
        "20,000 stamps held {PARKED} parked threads without a drop"
    );
    // A lost stamp loses that thread's wait (and may be counted again when it is woken):
    // every wait is counted or dropped by name.
    assert!(
        waits + drops >= n,
        "{waits} waits counted + {drops} runq_start_map_full drops < {n} parked threads"
    );
    assert!(
        waits < n,
        "{waits} waits counted although {drops} stamps were dropped"
    );
}

/// `schedlat_preemptions_total` of cgroup `cg` in a scrape: `by` -> count.
fn preemptions_of(m: &str, cg: &str) -> std::collections::BTreeMap<String, f64> {
    let label = format!("cgroup=\"{cg}\"");
    m.lines()
        .filter(|l| l.starts_with("schedlat_preemptions_total{") && l.contains(&label))
        .map(|l| {
            let by = l
                .split_once("by=\"")
                .and_then(|(_, r)| r.split_once('"'))
                .unwrap_or_else(|| panic!("no by label in {l}"))
                .0;
            (
                by.to_string(),
                l.rsplit(' ').next().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// `threads` spinning threads per cgroup, pinned to its CPU, all spinning at once; returns
/// each workload's involuntary switches by the kernel (getrusage ru_nivcsw, the sum of its
/// threads' nonvoluntary_ctxt_switches) from before it entered its cgroup until its spinners
/// were joined.
fn spin_in(cgroups: &[(&schedlat_tests::TestCgroup, &str)], threads: &str, secs: &str) -> Vec<u64> {
    let mut spins: Vec<Workload> = cgroups
        .iter()
        .map(|(cg, cpu)| {
            let w = Workload::start(&["spin", "--threads", threads, "--cpu", cpu, "--secs", secs]);
            // Its main thread too (the spinners pin themselves): nothing of it runs elsewhere.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            unsafe { libc::CPU_SET(cpu.parse().unwrap(), &mut set) };
            // SAFETY: a valid cpu_set_t of the size passed, for a pid we spawned.
            let rc = unsafe { libc::sched_setaffinity(w.pid as i32, size_of_val(&set), &set) };
            assert_eq!(rc, 0, "pinning {} to CPU {cpu}", w.pid);
            cg.add(w.pid);
            w
        })
        .collect();
    for s in &mut spins {
        s.go();
    }
    spins
        .into_iter()
        .map(|s| {
            let r = s.result();
            let window: u64 = r["threads"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["nonvoluntary_switches"].as_u64().unwrap())
                .sum();
            let process = r["process_nonvoluntary_switches"].as_u64().unwrap();
            println!("nivcsw: spinners' windows {window}, whole process {process}");
            process
        })
        .collect()
}

/// A cgroup's series add up to the kernel's own count of its involuntary switches. After the
/// count's end, still in the cgroup, the main thread printing its result and the spinners'
/// last steps of exiting may add a few (up to 8 seen on PREEMPT_RT, 1 to 4 elsewhere).
fn assert_matches_nivcsw(cg: &str, series: &std::collections::BTreeMap<String, f64>, nivcsw: u64) {
    let sum: f64 = series.values().sum();
    let n = nivcsw as f64;
    println!("figure: {cg}: {sum} involuntary switches by schedlat, {n} by the kernel (nivcsw)");
    assert!(
        n >= 20.0 && sum >= n * 0.98 - 2.0 && sum <= n * 1.02 + 10.0,
        "{cg}: schedlat counts {sum} involuntary switches {series:?}, the kernel {n}"
    );
}

#[test]
fn preemptions_name_the_cgroup_that_took_the_cpu_and_match_the_kernels_count() {
    if !privileged_or_skip() {
        return;
    }
    let d = Daemon::start();
    // A and B contend for CPU 0; C spins alone on CPU 1. Three threads each: on a busy
    // host (other tasks on CPU 0 too) a switch from A straight to B stays likely.
    let (a, b, c) = (
        schedlat_tests::TestCgroup::create("nbA"),
        schedlat_tests::TestCgroup::create("nbB"),
        schedlat_tests::TestCgroup::create("nbC"),
    );
    let nivcsw = spin_in(&[(&a, "0"), (&b, "0"), (&c, "1")], "3", "3");
    let m = get(&d.addr, "/metrics").unwrap();
    promtool_check(&m);
    let (pa, pb, pc) = (
        preemptions_of(&m, a.path()),
        preemptions_of(&m, b.path()),
        preemptions_of(&m, c.path()),
    );
    println!("A {pa:?}\nB {pb:?}\nC {pc:?}");
    assert!(pa.get(b.path()).is_some_and(|n| *n > 0.0), "A by B: {pa:?}");
    assert!(pb.get(a.path()).is_some_and(|n| *n > 0.0), "B by A: {pb:?}");
    for (who, series) in [("A", &pa), ("B", &pb)] {
        assert!(!series.contains_key(c.path()), "{who} by C: {series:?}");
    }
    for x in [a.path(), b.path()] {
        assert!(!pc.contains_key(x), "C by {x}: {pc:?}");
    }
    // Each is all of that cgroup's involuntary switches (default: 5 preemptors kept, the rest
    // in `other`, and one scrape: no ranking change yet), as the kernel counts them.
    assert_matches_nivcsw("A", &pa, nivcsw[0]);
    assert_matches_nivcsw("B", &pb, nivcsw[1]);
    assert!(
        m.contains("schedlat_map_capacity{map=\"PREEMPTS\"} 4096"),
        "PREEMPTS capacity exported"
    );
    assert!(m.contains("schedlat_events_dropped_total{reason=\"preempt_map_full\"} 0"));
    // Removed, the cgroups keep their final counts (no bpftool in the kernel matrix's VMs:
    // the fold test checks that their pairs leave the kernel map).
    let path_a = a.path().to_string();
    drop((a, b, c));
    let after = get(&d.addr, "/metrics").unwrap();
    assert_eq!(preemptions_of(&after, &path_a), pa, "final counts kept");
    assert!(d.stop().success());
}

#[test]
fn preemptors_beyond_the_cap_fold_into_other_and_are_counted() {
    if !privileged_or_skip() {
        return;
    }
    let dir = TempDir::new("fold");
    let cfg = dir.join("fold.toml");
    std::fs::write(&cfg, "preemptors_per_cgroup = 1\n").unwrap();
    let d = Daemon::start_with(&["--config", cfg.to_str().unwrap()]);
    let folded_before = sample(
        &get(&d.addr, "/metrics").unwrap(),
        "schedlat_preemptors_folded",
    )
    .unwrap_or(0.0);
    // A's two neighbours, B and C, on its CPU.
    let (a, b, c) = (
        schedlat_tests::TestCgroup::create("foldA"),
        schedlat_tests::TestCgroup::create("foldB"),
        schedlat_tests::TestCgroup::create("foldC"),
    );
    let nivcsw = spin_in(&[(&a, "0"), (&b, "0"), (&c, "0")], "1", "1");
    let m = get(&d.addr, "/metrics").unwrap();
    promtool_check(&m);
    let pa = preemptions_of(&m, a.path());
    println!("A {pa:?}");
    // One preemptor kept, the rest in `other`: B and C cannot both have a series.
    let kept: Vec<&String> = pa.keys().filter(|k| *k != "other").collect();
    assert_eq!(kept.len(), 1, "{pa:?}");
    assert!(pa["other"] > 0.0, "{pa:?}");
    assert!(
        !(pa.contains_key(b.path()) && pa.contains_key(c.path())),
        "{pa:?}"
    );
    assert_matches_nivcsw("A", &pa, nivcsw[0]);
    // The kept one is A's most frequent preemptor, as the kernel map has it.
    let mut by_id: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    for e in map_dump(d.child.id(), "PREEMPTS") {
        if dumped_int(&e, "key", "cgroup_id", 0, 8) == a.id() {
            *by_id
                .entry(dumped_int(&e, "key", "by_cgroup_id", 8, 8))
                .or_default() += dumped_int(&e, "value", "", 0, 8);
        }
    }
    assert_eq!(
        by_id.values().sum::<u64>() as f64,
        pa.values().sum::<f64>(),
        "kernel map {by_id:?} against {pa:?}"
    );
    let (top, _) = by_id.iter().max_by_key(|(_, n)| **n).unwrap();
    for cg in [&a, &b, &c] {
        if *top == cg.id() {
            let want = if *top == a.id() { "self" } else { cg.path() };
            assert_eq!(kept[0], want, "most frequent {by_id:?}");
        }
    }
    let folded = sample(&m, "schedlat_preemptors_folded").unwrap();
    assert!(
        folded >= folded_before + 1.0,
        "schedlat_preemptors_folded {folded_before} -> {folded}"
    );
    // Removed, the cgroups' pairs leave the kernel map; their series keep their final counts.
    let ids = [a.id(), b.id(), c.id()];
    let path_a = a.path().to_string();
    drop((a, b, c));
    let after = get(&d.addr, "/metrics").unwrap();
    assert_eq!(preemptions_of(&after, &path_a), pa, "final counts kept");
    let left: Vec<_> = map_dump(d.child.id(), "PREEMPTS")
        .into_iter()
        .filter(|e| {
            ids.contains(&dumped_int(e, "key", "cgroup_id", 0, 8))
                || ids.contains(&dumped_int(e, "key", "by_cgroup_id", 8, 8))
        })
        .collect();
    assert!(
        left.is_empty(),
        "PREEMPTS entries of removed cgroups: {left:?}"
    );
    assert!(d.stop().success());
}

/// FUTEX_START holds one stamp per task inside a futex call, parked threads included, so in
/// futex mode `syscall` it is sized from the host's task limit like RUNQ_START; in the default
/// mode (`sched`) nothing writes it and it is neither preallocated nor exported.
#[test]
fn futex_start_is_sized_for_the_hosts_tasks_in_syscall_mode_only() {
    if !privileged_or_skip() {
        return;
    }
    let sysctl = |k: &str| -> f64 {
        std::fs::read_to_string(format!("/proc/sys/kernel/{k}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let want = sysctl("threads-max")
        .min(sysctl("pid_max"))
        .clamp(65_536.0, 262_144.0);
    let dir = TempDir::new("futex-start");
    let cfg = dir.join("syscall.toml");
    std::fs::write(&cfg, "futex = \"syscall\"\n").unwrap();
    let d = Daemon::start_with(&["--config", cfg.to_str().unwrap()]);
    let m = get(&d.addr, "/metrics").unwrap();
    assert_eq!(
        sample(&m, "schedlat_map_capacity{map=\"FUTEX_START\"}"),
        Some(want),
        "FUTEX_START capacity in futex mode syscall"
    );
    assert!(d.stop().success());

    let d = Daemon::start();
    let m = get(&d.addr, "/metrics").unwrap();
    assert_eq!(
        sample(&m, "schedlat_map_capacity{map=\"FUTEX_START\"}"),
        None,
        "FUTEX_START exported in futex mode sched"
    );
    assert!(d.stop().success());
}

/// With `self_cost = true` the daemon exports its programs' own run time from the kernel's
/// accounting: sched_switch ran at least once per switch-in the spinners had (their schedstat
/// timeslices, all while the daemon ran), at a plausible cost per run. Without it, nothing.
#[test]
fn self_cost_exports_the_kernels_accounting_of_the_programs_only_when_asked() {
    if !privileged_or_skip() {
        return;
    }
    let series = |m: &str, name: &str| sample(m, &format!("{name}{{program=\"sched_switch\"}}"));
    let dir = TempDir::new("self-cost");
    let cfg = dir.join("self-cost.toml");
    std::fs::write(&cfg, "self_cost = true\n").unwrap();
    let d = Daemon::start_with(&["--config", cfg.to_str().unwrap()]);
    let before = get(&d.addr, "/metrics").unwrap();
    let mut spin = Workload::start(&["spin", "--threads", "2", "--cpu", "0", "--secs", "1"]);
    spin.go();
    let result = spin.result();
    let after = get(&d.addr, "/metrics").unwrap();
    let slices: u64 = result["threads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["timeslices"].as_u64().unwrap())
        .sum();
    let runs = series(&after, "schedlat_program_runs_total").expect("runs of sched_switch")
        - series(&before, "schedlat_program_runs_total").expect("runs of sched_switch");
    let secs = series(&after, "schedlat_program_run_seconds_total").expect("run time")
        - series(&before, "schedlat_program_run_seconds_total").expect("run time");
    let ns_per_run = secs * 1e9 / runs;
    eprintln!(
        "figure: self_cost: sched_switch {runs} runs ({slices} spinner switch-ins), {ns_per_run:.0} ns per run"
    );
    assert!(
        runs >= slices as f64 && slices > 100,
        "{runs} runs vs {slices} spinner switch-ins"
    );
    assert!(
        (1.0..100_000.0).contains(&ns_per_run),
        "{ns_per_run} ns per sched_switch run"
    );
    assert!(d.stop().success());

    let d = Daemon::start();
    let m = get(&d.addr, "/metrics").unwrap();
    assert_eq!(series(&m, "schedlat_program_runs_total"), None);
    assert_eq!(series(&m, "schedlat_program_run_seconds_total"), None);
    assert!(d.stop().success());
}
