//! Deterministic workloads for the schedlat integration tests.
//!
//! Protocol (every subcommand):
//! 1. set up (threads created, pinned, tids known, all idle),
//! 2. print one JSON line `{"ready":true,"pid":P,...}` to stdout (extra fields carry the
//!    tids that are known at that point),
//! 3. block until one line (or EOF) arrives on stdin — the test starts its tracer meanwhile,
//! 4. run the workload,
//! 5. print one JSON result line and exit 0 (exit 1 with a message on stderr on failure).
//!
//! The threads whose tids are reported make no futex syscalls other than the ones the workload
//! is about: threads hand each other tids and "I'm about to wait" generations through atomics
//! polled without futexes ([`spin_until`], [`poll_until`]), stdin/stdout use raw `read`/`write`
//! on fds 0/1 (no std stdio locks), the measured phase does not allocate, and the process ends
//! with `_exit` (no atexit handlers, no joins by a measured thread).
//!
//! Between "ready" and "go" (while the test's tracer is already running) every helper thread is
//! blocked in `read(2)` on its own pipe ([`Gate`]): no CPU burnt, no run-queue delay, no timer
//! wakeups and no cross-thread wakeups accrue before the workload starts. After go, the main
//! thread opens each gate with a 1-byte `write(2)` (one main -> helper wakeup each).

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("schedlat-workload only runs on Linux");
    std::process::exit(1);
}

#[cfg(target_os = "linux")]
fn main() {
    linux::main()
}

#[cfg(target_os = "linux")]
mod linux {
    use std::{
        hint::spin_loop,
        sync::{
            Arc,
            atomic::{AtomicU32, Ordering::SeqCst},
        },
        thread,
        time::{Duration, Instant},
    };

    use anyhow::{Context, Result, bail, ensure};
    use clap::{Parser, Subcommand};
    use serde_json::{Value, json};

    #[derive(Parser)]
    #[command(
        name = "schedlat-workload",
        about = "Deterministic workloads for the schedlat integration tests"
    )]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Subcommand)]
    enum Cmd {
        /// Busy-spin THREADS threads pinned to one CPU for SECS seconds; report their schedstat deltas.
        Spin {
            #[arg(long, default_value_t = 2)]
            threads: u32,
            #[arg(long, default_value_t = 0)]
            cpu: usize,
            #[arg(long, default_value_t = 2.0)]
            secs: f64,
            /// Spin inside the kernel instead: read(2) from /dev/zero into a 1 MiB buffer
            /// (the kernel clears it), so preemption hits mostly kernel mode.
            #[arg(long)]
            kernel: bool,
            /// Run the threads at nice -20: with 87x an ordinary task's weight they take nearly
            /// all of the CPU between them, so "who ran instead" is mostly the sibling whatever
            /// else the machine runs (unlike SCHED_RR, no RT throttling hands the CPU to
            /// others every second).
            #[arg(long)]
            favoured: bool,
        },
        /// The main thread does TIMEOUTS timed-out FUTEX_WAIT_PRIVATE calls, then WOKEN waits that a
        /// waker thread ends with FUTEX_WAKE_PRIVATE after WAIT_MS ms.
        Futex {
            #[arg(long, default_value_t = 5)]
            timeouts: u32,
            #[arg(long, default_value_t = 5)]
            woken: u32,
            #[arg(long, default_value_t = 20)]
            wait_ms: u64,
        },
        /// Thread A wakes thread B COUNT times through FUTEX_WAKE_PRIVATE.
        Wake {
            #[arg(long, default_value_t = 100)]
            count: u32,
        },
        /// Fork PROCS children that exit at once and spawn+join THREADS short-lived threads;
        /// then leave PARKED threads blocked in futex (thread::park), killed as the process exits.
        Churn {
            #[arg(long, default_value_t = 20)]
            procs: u32,
            #[arg(long, default_value_t = 20)]
            threads: u32,
            #[arg(long, default_value_t = 0)]
            parked: u32,
        },
        /// THREADS threads (32 KiB stacks carved from one mapping) each block once in
        /// FUTEX_WAIT_PRIVATE on one word; once every one sleeps, HOLD_MS ms later, one
        /// FUTEX_WAKE_PRIVATE wakes them all, and each then waits in pause(2) (no futex) until
        /// the process exits. No other futex wait happens in the process. The host must allow
        /// that many tasks (kernel.pid_max, kernel.threads-max).
        Park {
            #[arg(long, default_value_t = 1000)]
            threads: u32,
            #[arg(long, default_value_t = 100)]
            hold_ms: u64,
        },
    }

    pub(crate) fn main() {
        let cli = Cli::parse();
        let res = match cli.cmd {
            Cmd::Spin {
                threads,
                cpu,
                secs,
                kernel,
                favoured,
            } => spin(threads, cpu, secs, kernel, favoured),
            Cmd::Futex {
                timeouts,
                woken,
                wait_ms,
            } => futex(timeouts, woken, wait_ms),
            Cmd::Wake { count } => wake(count),
            Cmd::Churn {
                procs,
                threads,
                parked,
            } => churn(procs, threads, parked),
            Cmd::Park { threads, hold_ms } => park(threads, hold_ms),
        };
        match res {
            Ok(result) => {
                if let Err(e) = emit(&result) {
                    fail(format_args!("{e:#}"));
                }
                // SAFETY: plain process exit; skips atexit handlers and std's stdio cleanup, so
                // the (measured) calling thread makes no further futex calls.
                unsafe { libc::_exit(0) }
            }
            Err(e) => fail(format_args!("{e:#}")),
        }
    }

    fn fail(msg: std::fmt::Arguments<'_>) -> ! {
        let line = format!("schedlat-workload: error: {msg}\n");
        let _ = write_all(2, line.as_bytes());
        // SAFETY: see above.
        unsafe { libc::_exit(1) }
    }

    // ---------------------------------------------------------------- raw I/O, protocol

    fn write_all(fd: libc::c_int, mut buf: &[u8]) -> std::io::Result<()> {
        while !buf.is_empty() {
            // SAFETY: buf is a valid readable slice for its length.
            let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            buf = &buf[n as usize..];
        }
        Ok(())
    }

    /// Writes one JSON line to stdout (fd 1, unbuffered: nothing to flush).
    fn emit(v: &Value) -> Result<()> {
        let mut line = v.to_string();
        line.push('\n');
        write_all(1, line.as_bytes()).context("writing to stdout")
    }

    /// Blocks until a newline or EOF arrives on stdin (fd 0), byte by byte so nothing past the
    /// line is consumed.
    fn wait_go() -> Result<()> {
        let mut b = 0u8;
        loop {
            // SAFETY: reads at most one byte into `b`.
            let n = unsafe { libc::read(0, (&raw mut b).cast(), 1) };
            match n {
                0 => return Ok(()),
                1 if b == b'\n' => return Ok(()),
                1 => {}
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e).context("reading the go line from stdin");
                    }
                }
            }
        }
    }

    /// Prints the ready line (with `extra` fields merged in) and waits for the go line.
    fn ready_then_wait(extra: Value) -> Result<()> {
        let mut obj = json!({ "ready": true, "pid": std::process::id() });
        if let (Some(o), Value::Object(e)) = (obj.as_object_mut(), extra) {
            o.extend(e);
        }
        emit(&obj)?;
        wait_go()
    }

    // ---------------------------------------------------------------- futex-free primitives

    fn gettid() -> u32 {
        // SAFETY: no preconditions.
        unsafe { libc::gettid() as u32 }
    }

    fn sched_yield() {
        // SAFETY: no preconditions.
        unsafe { libc::sched_yield() };
    }

    /// Waits until `cond` holds without any futex: spins, then `sched_yield`s, and after 2 ms of
    /// that polls with 50 µs `nanosleep`s. Only used by the (unmeasured) main thread during setup.
    fn poll_until(mut cond: impl FnMut() -> bool) {
        let mut i: u32 = 0;
        let mut since: Option<Instant> = None;
        while !cond() {
            i = i.wrapping_add(1);
            if i < 256 {
                spin_loop();
            } else if since.get_or_insert_with(Instant::now).elapsed() < Duration::from_millis(2) {
                sched_yield();
            } else {
                thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// Waits until `cond` holds by spinning with a `sched_yield` every 64 iterations: never
    /// sleeps, so it causes no wakeups; used for the short in-workload handoffs.
    fn spin_until(mut cond: impl FnMut() -> bool) {
        let mut i: u32 = 0;
        while !cond() {
            i = i.wrapping_add(1);
            if i.is_multiple_of(64) {
                sched_yield();
            } else {
                spin_loop();
            }
        }
    }

    /// A one-shot start signal: a pipe per waiting thread. [`Gate::wait`] blocks in `read(2)`,
    /// [`Gate::open`] writes one byte.
    #[derive(Clone, Copy)]
    struct Gate {
        r: libc::c_int,
        w: libc::c_int,
    }

    impl Gate {
        fn new() -> Result<Gate> {
            let mut fds = [0; 2];
            // SAFETY: fds has room for the two descriptors.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                return Err(std::io::Error::last_os_error()).context("pipe2");
            }
            Ok(Gate {
                r: fds[0],
                w: fds[1],
            })
        }

        fn wait(self) {
            let mut b = 0u8;
            loop {
                // SAFETY: reads at most one byte into `b`.
                let n = unsafe { libc::read(self.r, (&raw mut b).cast(), 1) };
                if n == 1 {
                    return;
                }
                let e = std::io::Error::last_os_error();
                if n < 0 && e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                fail(format_args!("start gate: read returned {n}: {e}"));
            }
        }

        fn open(self) -> Result<()> {
            write_all(self.w, b"g").context("opening a start gate")
        }
    }

    fn futex_wait(
        word: &AtomicU32,
        expected: u32,
        timeout: Option<&libc::timespec>,
    ) -> std::result::Result<(), i32> {
        let ts = timeout.map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `word` is a live, aligned u32; `ts` is null or points to a valid timespec.
        let r = unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                expected,
                ts,
                std::ptr::null::<u32>(),
                0u32,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    }

    fn futex_wake(word: &AtomicU32, n: u32) -> std::result::Result<i64, i32> {
        // SAFETY: `word` is a live, aligned u32.
        let r = unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                n,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                0u32,
            )
        };
        if r >= 0 {
            Ok(r)
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    }

    fn errno_name(e: i32) -> String {
        match e {
            libc::EAGAIN => "EAGAIN".into(),
            libc::EINTR => "EINTR".into(),
            libc::ETIMEDOUT => "ETIMEDOUT".into(),
            _ => format!("{} ({e})", std::io::Error::from_raw_os_error(e)),
        }
    }

    fn pin_self(cpu: usize) -> Result<()> {
        // SAFETY: cpu_set_t is plain data; CPU_SET bounds-checks against the set size.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(libc::gettid(), size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("pinning thread to CPU {cpu}"));
            }
        }
        Ok(())
    }

    /// Give thread `tid` nice -20, the highest weight of the fair class (Linux nice values are
    /// per thread: setpriority(PRIO_PROCESS, tid)).
    fn nice_minus_20(tid: u32) -> Result<()> {
        // SAFETY: no pointers; `tid` is this process's own thread.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, -20) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setpriority(-20)");
        }
        Ok(())
    }

    /// A thread's /proc schedstat: CPU time, run-queue delay (ns), timeslices.
    type Schedstat = (u64, u64, u64);
    /// A thread's schedstat and involuntary switches (nivcsw) at one instant.
    type Sample = (Schedstat, u64);

    /// Reads /proc/self/task/<tid>/<file> into `buf` without allocating (no malloc arena
    /// contention while the spinners run): the text read.
    fn task_file_raw<'a>(tid: u32, file: &str, buf: &'a mut [u8]) -> Result<&'a str> {
        use std::io::Write;
        let mut path = [0u8; 64];
        {
            let mut w = &mut path[..];
            write!(w, "/proc/self/task/{tid}/{file}\0").expect("path fits");
        }
        // SAFETY: path is NUL-terminated; buf is writable for its length.
        let n = unsafe {
            let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("opening {file}"));
            }
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            libc::close(fd);
            n
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("reading {file}"));
        }
        std::str::from_utf8(&buf[..n as usize]).with_context(|| format!("{file} is not UTF-8"))
    }

    /// A thread's schedstat, read without allocating.
    fn schedstat_raw(tid: u32) -> Result<Schedstat> {
        let mut buf = [0u8; 128];
        let s = task_file_raw(tid, "schedstat", &mut buf)?;
        schedlat_tests::parse_schedstat(s).with_context(|| format!("unparsable schedstat {s:?}"))
    }

    /// The kernel's count of involuntary switches of thread `tid`
    /// (/proc/self/task/<tid>/status `nonvoluntary_ctxt_switches`: nivcsw), without allocating.
    fn nivcsw_raw(tid: u32) -> Result<u64> {
        let mut buf = [0u8; 4096];
        let s = task_file_raw(tid, "status", &mut buf)?;
        s.lines()
            .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no nonvoluntary_ctxt_switches in {s:?}"))
    }

    /// getrusage(RUSAGE_SELF).ru_nivcsw: the kernel's count of involuntary switches of every
    /// thread of this process, exited ones included.
    fn process_nivcsw() -> u64 {
        // SAFETY: rusage is plain data, filled by the kernel.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        ru.ru_nivcsw as u64
    }

    // ---------------------------------------------------------------- spin

    fn spin(threads: u32, cpu: usize, secs: f64, kernel: bool, favoured: bool) -> Result<Value> {
        ensure!(threads >= 1, "--threads must be at least 1");
        ensure!(
            cpu < libc::CPU_SETSIZE as usize,
            "--cpu {cpu} is out of range (CPU_SETSIZE is {})",
            libc::CPU_SETSIZE
        );
        ensure!(
            secs.is_finite() && secs >= 0.0,
            "--secs must be a non-negative number"
        );
        let dur = Duration::from_secs_f64(secs);
        let tids: Arc<Vec<AtomicU32>> = Arc::new((0..threads).map(|_| AtomicU32::new(0)).collect());
        // 0 = pending, 1 = pinned OK, 2 = pinning failed, 3 = nice -20 refused.
        let pinned: Arc<Vec<AtomicU32>> =
            Arc::new((0..threads).map(|_| AtomicU32::new(0)).collect());
        let mut handles = Vec::new();
        let gates = (0..threads)
            .map(|_| Gate::new())
            .collect::<Result<Vec<_>>>()?;
        // The oracle's window: main reads each thread's schedstat once the test said go (a
        // capture is attached by then) while the thread sleeps at its start gate, so no wait is
        // in flight; spun out, each thread parks on its end gate until main has seen every
        // thread done, and woken, reads its schedstat once more. The window holds the wait to
        // be switched in after the start gate and after the end gate, as the capture does, and
        // no wait from before the capture (a thread preempted on its way to the gate, which
        // it is on a loaded CPU).
        let ends = (0..threads)
            .map(|_| Gate::new())
            .collect::<Result<Vec<_>>>()?;
        // Main blocks on these (no polling: its own waits are counted in the process too).
        let spun = (0..threads)
            .map(|_| Gate::new())
            .collect::<Result<Vec<_>>>()?;
        // Set by each thread just before it blocks at its start gate.
        let at_gate: Arc<Vec<AtomicU32>> =
            Arc::new((0..threads).map(|_| AtomicU32::new(0)).collect());
        for (i, ((&gate, &end), &done)) in gates.iter().zip(&ends).zip(&spun).enumerate() {
            let (tids, pinned, at_gate) = (tids.clone(), pinned.clone(), at_gate.clone());
            let h = thread::Builder::new()
                .name(format!("spin{i}"))
                .spawn(move || -> Result<Sample> {
                    let tid = gettid();
                    let pin = pin_self(cpu);
                    let policy = if favoured && pin.is_ok() {
                        nice_minus_20(tid)
                    } else {
                        Ok(())
                    };
                    let status = match (&pin, &policy) {
                        (Err(_), _) => 2,
                        (_, Err(_)) => 3,
                        _ => 1,
                    };
                    pinned[i].store(status, SeqCst);
                    tids[i].store(tid, SeqCst);
                    pin?;
                    policy?;
                    let zero = if kernel {
                        Some(std::fs::File::open("/dev/zero").context("opening /dev/zero")?)
                    } else {
                        None
                    };
                    let mut buf = vec![0u8; if kernel { 1 << 20 } else { 0 }];
                    at_gate[i].store(1, SeqCst);
                    gate.wait();
                    let t0 = Instant::now();
                    while t0.elapsed() < dur {
                        match zero.as_ref() {
                            Some(mut f) => {
                                std::io::Read::read(&mut f, &mut buf)
                                    .context("reading /dev/zero")?;
                            }
                            None => {
                                for _ in 0..1000 {
                                    spin_loop();
                                }
                            }
                        }
                    }
                    done.open()?;
                    end.wait();
                    // Read after being switched in again: the wait after `end` opened is
                    // in run_delay too, as it is in the capture.
                    Ok((schedstat_raw(tid)?, nivcsw_raw(tid)?))
                })
                .context("spawning a spin thread")?;
            handles.push(h);
        }
        for (t, p) in tids.iter().zip(pinned.iter()) {
            poll_until(|| t.load(SeqCst) != 0);
            if p.load(SeqCst) == 3 {
                bail!(
                    "setpriority(-20) failed for thread {}: --favoured needs root \
                     (CAP_SYS_NICE)",
                    t.load(SeqCst)
                );
            }
            if p.load(SeqCst) != 1 {
                // The process exits with this message; the other threads die with it.
                bail!(
                    "sched_setaffinity to CPU {cpu} failed for thread {}: {}",
                    t.load(SeqCst),
                    "is the CPU online and inside this process's allowed CPUs?"
                );
            }
        }
        let tid_list: Vec<u32> = tids.iter().map(|t| t.load(SeqCst)).collect();
        // The whole process's involuntary switches from here (every thread pinned, before the
        // test moves it into a cgroup) until all spinners are joined, exited ones included.
        let nivcsw_start = process_nivcsw();
        ready_then_wait(json!({ "tids": tid_list }))?;
        let mut befores = Vec::new();
        for (i, &tid) in tid_list.iter().enumerate() {
            poll_until(|| at_gate[i].load(SeqCst) == 1 && thread_asleep(tid));
            befores.push((schedstat_raw(tid)?, nivcsw_raw(tid)?));
        }
        for g in &gates {
            g.open()?;
        }
        // Main is not measured: its waits and joins (futex) are fine.
        for d in &spun {
            d.wait();
        }
        // One at a time, each joined before the next wakes: a thread between its last read
        // and its exit has CPU 0 to itself, so no wait escapes the oracle's window.
        let mut out = Vec::new();
        for (((h, tid), e), (before, nivcsw_before)) in
            handles.into_iter().zip(&tid_list).zip(&ends).zip(befores)
        {
            e.open()?;
            let (after, nivcsw_after) = h
                .join()
                .map_err(|_| anyhow::anyhow!("spin thread panicked"))??;
            out.push(json!({
                "tid": tid,
                "cpu_ns": after.0.saturating_sub(before.0),
                "run_delay_ns": after.1.saturating_sub(before.1),
                "timeslices": after.2.saturating_sub(before.2),
                "nonvoluntary_switches": nivcsw_after.saturating_sub(nivcsw_before),
            }));
        }
        let process_nivcsw = process_nivcsw().saturating_sub(nivcsw_start);
        Ok(json!({
            "threads": out,
            "cpu": cpu,
            "secs": secs,
            "kernel": kernel,
            "process_nonvoluntary_switches": process_nivcsw,
        }))
    }

    // ---------------------------------------------------------------- futex

    static FUTEX_WORD: AtomicU32 = AtomicU32::new(0);
    /// Round the waiter is about to wait in (1-based); 0 = not in the woken phase yet.
    static FUTEX_ROUND: AtomicU32 = AtomicU32::new(0);
    static FUTEX_WAKER_TID: AtomicU32 = AtomicU32::new(0);

    fn futex(timeouts: u32, woken: u32, wait_ms: u64) -> Result<Value> {
        let waiter_tid = gettid();
        let d = Duration::from_millis(wait_ms);
        let gate = Gate::new()?;
        thread::Builder::new()
            .name("waker".into())
            .spawn(move || {
                FUTEX_WAKER_TID.store(gettid(), SeqCst);
                gate.wait();
                // The timed waits take at least timeouts * wait_ms: sleep through them (one timer
                // wakeup) instead of spinning, then spin for each round's announcement.
                if woken > 0 {
                    thread::sleep(d * timeouts);
                }
                for r in 1..=woken {
                    spin_until(|| FUTEX_ROUND.load(SeqCst) >= r);
                    thread::sleep(d);
                    FUTEX_WORD.fetch_add(1, SeqCst);
                    if let Err(e) = futex_wake(&FUTEX_WORD, 1) {
                        fail(format_args!(
                            "waker: FUTEX_WAKE_PRIVATE failed: {}",
                            errno_name(e)
                        ));
                    }
                }
                // Done: the thread simply ends; nobody joins it.
            })
            .context("spawning the waker thread")?;
        poll_until(|| FUTEX_WAKER_TID.load(SeqCst) != 0);
        let waker_tid = FUTEX_WAKER_TID.load(SeqCst);
        ready_then_wait(json!({ "waiter_tid": waiter_tid, "waker_tid": waker_tid }))?;
        // A write(2), not a futex; the waker then stays off the waiter's back until round 1.
        gate.open()?;

        // Measured phase: from here until the result is printed the main thread's only futex
        // syscalls are the timeouts + woken FUTEX_WAIT_PRIVATE calls below.
        let ts = libc::timespec {
            tv_sec: (wait_ms / 1000) as libc::time_t,
            tv_nsec: ((wait_ms % 1000) * 1_000_000) as libc::c_long,
        };
        for i in 0..timeouts {
            // Nobody touches the word before the woken phase, so the value always matches.
            let cur = FUTEX_WORD.load(SeqCst);
            match futex_wait(&FUTEX_WORD, cur, Some(&ts)) {
                Err(libc::ETIMEDOUT) => {}
                Ok(()) => bail!("timed wait #{i}: FUTEX_WAIT returned 0, expected ETIMEDOUT"),
                Err(e) => bail!(
                    "timed wait #{i}: FUTEX_WAIT failed with {}, expected ETIMEDOUT",
                    errno_name(e)
                ),
            }
        }
        let (mut got, mut eagain, mut eintr) = (0u32, 0u32, 0u32);
        for r in 1..=woken {
            // Read the value first, then announce: the waker changes the word only after seeing
            // the announcement (and sleeping wait_ms), so the wait either sleeps until that wake
            // or, if we were descheduled for > wait_ms in between, fails fast with EAGAIN.
            let cur = FUTEX_WORD.load(SeqCst);
            FUTEX_ROUND.store(r, SeqCst);
            match futex_wait(&FUTEX_WORD, cur, None) {
                Ok(()) => got += 1,
                Err(libc::EAGAIN) => eagain += 1,
                Err(libc::EINTR) => eintr += 1,
                Err(e) => bail!("woken wait #{r}: FUTEX_WAIT failed with {}", errno_name(e)),
            }
        }
        // Exactly one FUTEX_WAIT per round: timeouts + woken calls in total, of which `woken`
        // (the field) returned 0, `eagain` never slept, `eintr` were interrupted.
        Ok(json!({
            "waiter_tid": waiter_tid,
            "waker_tid": waker_tid,
            "timeouts": timeouts,
            "woken": got,
            "eagain": eagain,
            "eintr": eintr,
            "wait_calls": timeouts + woken,
            "wait_ms": wait_ms,
        }))
    }

    // ---------------------------------------------------------------- wake

    static WAKE_WORD: AtomicU32 = AtomicU32::new(0);
    /// Iteration B is about to wait in (1-based).
    static WAKE_GEN: AtomicU32 = AtomicU32::new(0);
    static WAKER_TID: AtomicU32 = AtomicU32::new(0);
    static WAKEE_TID: AtomicU32 = AtomicU32::new(0);
    /// Set by the wakee just before it blocks at its start gate.
    static WAKEE_AT_GATE: AtomicU32 = AtomicU32::new(0);

    fn wake(count: u32) -> Result<Value> {
        let (gate_a, gate_b) = (Gate::new()?, Gate::new()?);
        let b = thread::Builder::new()
            .name("wakee".into())
            .spawn(move || -> (u32, u32, u32, u64) {
                let tid = gettid();
                WAKEE_TID.store(tid, SeqCst);
                WAKEE_AT_GATE.store(1, SeqCst);
                gate_b.wait();
                let (mut woken, mut eagain, mut eintr) = (0u32, 0u32, 0u32);
                for i in 1..=count {
                    let cur = WAKE_WORD.load(SeqCst);
                    WAKE_GEN.store(i, SeqCst);
                    match futex_wait(&WAKE_WORD, cur, None) {
                        Ok(()) => woken += 1,
                        // A changed the word before we got to sleep: not a wakeup received.
                        Err(libc::EAGAIN) => eagain += 1,
                        Err(libc::EINTR) => eintr += 1,
                        Err(e) => fail(format_args!(
                            "wakee: FUTEX_WAIT_PRIVATE failed: {}",
                            errno_name(e)
                        )),
                    }
                }
                let after = schedstat_raw(tid).unwrap_or_else(|e| fail(format_args!("{e:#}")));
                (woken, eagain, eintr, after.2)
            })
            .context("spawning the wakee thread")?;
        let a = thread::Builder::new()
            .name("waker".into())
            .spawn(move || -> i64 {
                WAKER_TID.store(gettid(), SeqCst);
                gate_a.wait();
                let mut woke = 0i64;
                for i in 1..=count {
                    spin_until(|| WAKE_GEN.load(SeqCst) >= i);
                    // Give B time to actually go to sleep in the kernel.
                    thread::sleep(Duration::from_micros(200));
                    WAKE_WORD.fetch_add(1, SeqCst);
                    match futex_wake(&WAKE_WORD, 1) {
                        Ok(n) => woke += n,
                        Err(e) => fail(format_args!(
                            "waker: FUTEX_WAKE_PRIVATE failed: {}",
                            errno_name(e)
                        )),
                    }
                }
                woke
            })
            .context("spawning the waker thread")?;
        poll_until(|| WAKER_TID.load(SeqCst) != 0 && WAKEE_TID.load(SeqCst) != 0);
        let (waker_tid, wakee_tid) = (WAKER_TID.load(SeqCst), WAKEE_TID.load(SeqCst));
        ready_then_wait(json!({ "waker_tid": waker_tid, "wakee_tid": wakee_tid }))?;
        // The wakee's switch-ins from here to its last read: each one a run-queue wait the
        // capture (attached by now) must count; a wake that lands before the wakee is off its
        // CPU makes none. Read while it sleeps at its gate, as spin's oracle is: no wait is in
        // flight then, none from before the capture.
        poll_until(|| WAKEE_AT_GATE.load(SeqCst) == 1 && thread_asleep(wakee_tid));
        let before = schedstat_raw(wakee_tid)?;
        gate_b.open()?;
        gate_a.open()?;
        // Main is not measured: joining is fine (A and B never join anything).
        let woke = a
            .join()
            .map_err(|_| anyhow::anyhow!("waker thread panicked"))?;
        let (woken, eagain, eintr, wakee_slices_after) = b
            .join()
            .map_err(|_| anyhow::anyhow!("wakee thread panicked"))?;
        Ok(json!({
            "waker_tid": waker_tid,
            "wakee_tid": wakee_tid,
            "count": count,
            "woken": woken,
            "eagain": eagain,
            "eintr": eintr,
            "wake_calls": count,
            "wake_returned": woke,
            "wakee_timeslices": wakee_slices_after.saturating_sub(before.2),
        }))
    }

    // ---------------------------------------------------------------- churn

    fn churn(procs: u32, threads: u32, parked: u32) -> Result<Value> {
        ready_then_wait(json!({}))?;
        let mut child_pids = Vec::with_capacity(procs as usize);
        for _ in 0..procs {
            // SAFETY: the child only calls the async-signal-safe _exit.
            let pid = unsafe { libc::fork() };
            if pid < 0 {
                return Err(std::io::Error::last_os_error()).context("fork");
            }
            if pid == 0 {
                // SAFETY: child: leave immediately.
                unsafe { libc::_exit(0) }
            }
            let mut status = 0;
            // SAFETY: waits for our own child.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r != pid {
                return Err(std::io::Error::last_os_error()).context("waitpid");
            }
            ensure!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "child {pid} ended with status {status:#x}"
            );
            child_pids.push(pid);
        }
        let mut thread_tids = Vec::with_capacity(threads as usize);
        for _ in 0..threads {
            let h = thread::Builder::new()
                .spawn(gettid)
                .context("spawning a churn thread")?;
            thread_tids.push(
                h.join()
                    .map_err(|_| anyhow::anyhow!("churn thread panicked"))?,
            );
        }
        let parked_tids = park_threads(parked)?;
        Ok(json!({
            "procs": procs,
            "threads": threads,
            "child_pids": child_pids,
            "thread_tids": thread_tids,
            "parked_tids": parked_tids,
        }))
    }

    /// `n` threads blocked in futex (thread::park) until the process exits and kills them;
    /// returns once each is asleep, with their tids.
    fn park_threads(n: u32) -> Result<Vec<u32>> {
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..n {
            let tx = tx.clone();
            thread::Builder::new()
                .spawn(move || {
                    let _ = tx.send(gettid());
                    loop {
                        thread::park();
                    }
                })
                .context("spawning a parked thread")?;
        }
        let tids: Vec<u32> = rx.iter().take(n as usize).collect();
        // Asleep (state S in /proc/self/task/TID/stat) means inside the futex wait.
        let deadline = Instant::now() + Duration::from_secs(10);
        for &tid in &tids {
            loop {
                let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
                    .with_context(|| format!("reading thread {tid}'s stat"))?;
                let state = stat.rsplit_once(") ").map(|(_, r)| &r[..1]);
                if state == Some("S") {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "parked thread {tid} not asleep after 10 s: {stat}"
                );
                thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(tids)
    }

    // ---------------------------------------------------------------- park

    /// What the parked threads share (leaked: they may outlive `park`'s frame until `_exit`).
    struct Parked {
        word: AtomicU32,
        asleep: AtomicU32,
        woken: AtomicU32,
        eagain: AtomicU32,
        failed: AtomicU32,
        done: AtomicU32,
    }

    extern "C" fn parked_thread(arg: *mut libc::c_void) -> *mut libc::c_void {
        // SAFETY: `park` passes a leaked &'static Parked.
        let p = unsafe { &*(arg as *const Parked) };
        p.asleep.fetch_add(1, SeqCst);
        loop {
            match futex_wait(&p.word, 0, None) {
                Ok(()) if p.word.load(SeqCst) != 0 => {
                    p.woken.fetch_add(1, SeqCst);
                    break;
                }
                // Spurious: sleep again (nothing else wakes this word).
                Ok(()) | Err(libc::EINTR) => {}
                Err(libc::EAGAIN) => {
                    p.eagain.fetch_add(1, SeqCst);
                    break;
                }
                Err(_) => {
                    p.failed.fetch_add(1, SeqCst);
                    break;
                }
            }
        }
        p.done.fetch_add(1, SeqCst);
        // Never return: 70,000 threads exiting at once contend for glibc's stack-cache lock,
        // futex waits that are not the one this workload is about. pause(2) is no futex;
        // the process's _exit ends them.
        loop {
            // SAFETY: no preconditions.
            unsafe { libc::pause() };
        }
    }

    /// Whether thread `tid` of this process is asleep (state S in /proc/self/task/TID/stat).
    fn thread_asleep(tid: u32) -> bool {
        let mut buf = [0u8; 512];
        task_file_raw(tid, "stat", &mut buf).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, r)| r.as_bytes().first() == Some(&b'S'))
        })
    }

    /// The state letter of each thread of this process but the caller (/proc/self/task).
    fn thread_states(me: u32) -> Result<Vec<(u32, u8)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc/self/task").context("listing /proc/self/task")? {
            let Some(tid) = e?.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if tid == me {
                continue;
            }
            // A thread that already returned has no entry any more: not asleep, not counted.
            let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")) else {
                continue;
            };
            let state = stat
                .rsplit_once(") ")
                .map_or(b'?', |(_, r)| r.as_bytes()[0]);
            out.push((tid, state));
        }
        Ok(out)
    }

    fn park(n: u32, hold_ms: u64) -> Result<Value> {
        const STACK: usize = 32 * 1024;
        ready_then_wait(json!({}))?;
        let p: &'static Parked = Box::leak(Box::new(Parked {
            word: AtomicU32::new(0),
            asleep: AtomicU32::new(0),
            woken: AtomicU32::new(0),
            eagain: AtomicU32::new(0),
            failed: AtomicU32::new(0),
            done: AtomicU32::new(0),
        }));
        // One mapping for every stack: glibc maps (and guards) a stack per thread otherwise,
        // two mappings each, past vm.max_map_count at this count. Only touched pages cost.
        let len = STACK * n as usize;
        // SAFETY: a fresh private anonymous mapping, never unmapped (the threads use it).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(STACK),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
                -1,
                0,
            )
        };
        ensure!(
            base != libc::MAP_FAILED,
            "mmap of {len} bytes of stacks: {}",
            std::io::Error::last_os_error()
        );
        let started = Instant::now();
        for i in 0..n as usize {
            // SAFETY: attr is initialised before use and destroyed after; the stack is a
            // disjoint, aligned slice of the mapping above; the thread gets a 'static pointer.
            let rc = unsafe {
                let mut attr: libc::pthread_attr_t = std::mem::zeroed();
                libc::pthread_attr_init(&mut attr);
                libc::pthread_attr_setstack(
                    &mut attr,
                    base.cast::<u8>().add(i * STACK).cast(),
                    STACK,
                );
                libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
                let mut t: libc::pthread_t = 0;
                let rc = libc::pthread_create(
                    &mut t,
                    &attr,
                    parked_thread,
                    (p as *const Parked).cast_mut().cast(),
                );
                libc::pthread_attr_destroy(&mut attr);
                rc
            };
            if rc != 0 {
                bail!(
                    "creating parked thread {} of {n}: {} (raise kernel.pid_max and \
                     kernel.threads-max)",
                    i + 1,
                    std::io::Error::from_raw_os_error(rc)
                );
            }
        }
        let created_s = started.elapsed().as_secs_f64();
        poll_until(|| p.asleep.load(SeqCst) == n);
        // Each about to wait; asleep (state S) means inside FUTEX_WAIT.
        let me = gettid();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let states = thread_states(me)?;
            let sleeping = states.iter().filter(|(_, s)| *s == b'S').count();
            if sleeping == n as usize {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{sleeping} of {n} parked threads asleep after 30 s"
            );
            thread::sleep(Duration::from_millis(10));
        }
        let parked_s = started.elapsed().as_secs_f64();
        thread::sleep(Duration::from_millis(hold_ms));
        p.word.store(1, SeqCst);
        let woke = futex_wake(&p.word, i32::MAX as u32)
            .map_err(|e| anyhow::anyhow!("FUTEX_WAKE: {}", errno_name(e)))?;
        poll_until(|| p.done.load(SeqCst) == n);
        Ok(json!({
            "threads": n,
            "woken": p.woken.load(SeqCst),
            "eagain": p.eagain.load(SeqCst),
            "failed": p.failed.load(SeqCst),
            "wake_returned": woke,
            "created_s": created_s,
            "all_asleep_s": parked_s,
            "total_s": started.elapsed().as_secs_f64(),
        }))
    }
}
