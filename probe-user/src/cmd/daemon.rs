//! `schedlat daemon`: attach once, serve /metrics from the in-kernel aggregates.
use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use schedlat_common::{HistKey, PreemptKey, kind};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    cli::{Cli, DaemonArgs},
    config::DaemonConfig,
    exporter::{
        metrics::{self, ExpoInput, LabelCap},
        preempt::Preemptors,
        proto::Format,
        series::SeriesKeeper,
    },
    host::{
        cgroup::{CgroupNames, v2_mount},
        privs::{
            ORIGIN_CONFIG, ORIGIN_DEFAULT, check_can_switch, default_account, is_current,
            lookup_user, switch_user,
        },
    },
    http::{BasicAuth, Render, Renders, TlsReloader, WebConfig, WebStats},
    kernel::probes::{ProbeOptions, Probes},
    model::{Attached, FutexMode, RawSnapshot, UsageError},
};

/// What a scrape needs. The kernel side is behind a trait so the HTTP layer is testable
/// without root.
pub trait Source: Send + 'static {
    fn snapshot(&mut self) -> anyhow::Result<RawSnapshot>;
    fn attached(&self) -> &[Attached];
    /// Delete histogram entries (of removed cgroups) from the kernel map.
    fn remove_hists(&mut self, keys: &[HistKey]) -> anyhow::Result<()>;
    /// Delete involuntary-switch counts (pairs with a removed cgroup) from the kernel map.
    fn remove_preempts(&mut self, keys: &[PreemptKey]) -> anyhow::Result<()>;
}

impl Source for Probes {
    fn snapshot(&mut self) -> anyhow::Result<RawSnapshot> {
        self.flush_kernel_log();
        Ok(Probes::snapshot(self)?)
    }
    fn attached(&self) -> &[Attached] {
        &self.attached
    }
    fn remove_hists(&mut self, keys: &[HistKey]) -> anyhow::Result<()> {
        Ok(Probes::remove_hists(self, keys)?)
    }
    fn remove_preempts(&mut self, keys: &[PreemptKey]) -> anyhow::Result<()> {
        Ok(Probes::remove_preempts(self, keys)?)
    }
}

/// Cgroup names and liveness (a trait so the HTTP layer is testable without cgroupfs).
pub trait Cgroups: Send + 'static {
    fn name(&mut self, id: u64) -> Option<String>;
    /// Which of `ids` no longer exist.
    fn dead(&mut self, ids: &[u64]) -> Vec<u64>;
}

impl Cgroups for CgroupNames {
    fn name(&mut self, id: u64) -> Option<String> {
        CgroupNames::name(self, id).map(str::to_string)
    }
    fn dead(&mut self, ids: &[u64]) -> Vec<u64> {
        CgroupNames::dead(self, ids)
    }
}

pub struct AppState {
    source: Box<dyn Source>,
    cap: LabelCap,
    cgroups: Box<dyn Cgroups>,
    keeper: SeriesKeeper,
    preemptors: Preemptors,
    per_octave: u32,
    futex_outcomes: bool,
    /// Go programs read at scrape time (config [go]).
    pub go: Option<crate::go::watch::GoWatcher>,
}

pub type Shared = Arc<Mutex<AppState>>;

impl AppState {
    pub fn new(
        source: Box<dyn Source>,
        max_cgroups: usize,
        preemptors_per_cgroup: usize,
        per_octave: u32,
        futex_outcomes: bool,
        cgroups: Box<dyn Cgroups>,
        removed_cgroup_ttl: Duration,
    ) -> Shared {
        Arc::new(Mutex::new(Self {
            source,
            cap: LabelCap::new(max_cgroups),
            cgroups,
            keeper: SeriesKeeper::new(removed_cgroup_ttl),
            preemptors: Preemptors::new(preemptors_per_cgroup, removed_cgroup_ttl),
            per_octave,
            futex_outcomes,
            go: None,
        }))
    }

    fn render(&mut self, format: Format) -> anyhow::Result<Vec<u8>> {
        let Self {
            source,
            cap,
            cgroups,
            keeper,
            preemptors,
            per_octave,
            futex_outcomes,
            go,
        } = self;
        let mut snap = source.snapshot()?;
        let now = Instant::now();

        // Removed cgroups: take their entries out of the kernel map (bounded memory under
        // churn) and keep exporting their final counts from userspace (monotonic counters).
        let mut ids: Vec<u64> = snap.hists.iter().map(|(k, _)| k.cgroup_id).collect();
        ids.extend(
            snap.preempts
                .iter()
                .flat_map(|(k, _)| [k.cgroup_id, k.by_cgroup_id]),
        );
        ids.sort_unstable();
        ids.dedup();
        let dead: HashSet<u64> = cgroups.dead(&ids).into_iter().collect();
        if !dead.is_empty() {
            let (gone, live): (Vec<_>, Vec<_>) = std::mem::take(&mut snap.hists)
                .into_iter()
                .partition(|(k, _)| dead.contains(&k.cgroup_id));
            let keys: Vec<HistKey> = gone.iter().map(|(k, _)| *k).collect();
            if let Err(e) = source.remove_hists(&keys) {
                // Counted again next scrape; the retired copy is replaced then, not added.
                warn!(error = %e, "removing histograms of removed cgroups");
                snap.hists = live;
                snap.hists.extend(gone);
            } else {
                // Admit the label while the name is still known (it is remembered after removal).
                for k in &keys {
                    cap.label(k.cgroup_id, |id| cgroups.name(id));
                }
                keeper.retire(gone, now);
                snap.hists = live;
                // Futex series leave HISTS; a cgroup's run-queue series free its RQ_SLOTS entry.
                let futex = keys.iter().filter(|k| k.kind == kind::FUTEX).count();
                let mut slots: Vec<u64> = keys
                    .iter()
                    .filter(|k| k.kind != kind::FUTEX)
                    .map(|k| k.cgroup_id)
                    .collect();
                slots.sort_unstable();
                slots.dedup();
                for (map, n, _) in &mut snap.map_entries {
                    match *map {
                        "HISTS" => *n = n.saturating_sub(futex),
                        "RQ_SLOTS" => *n = n.saturating_sub(slots.len()),
                        _ => {}
                    }
                }
            }
        }
        // Pairs with a removed cgroup, on either side, likewise.
        let (gone, live): (Vec<_>, Vec<_>) = std::mem::take(&mut snap.preempts)
            .into_iter()
            .partition(|(k, _)| dead.contains(&k.cgroup_id) || dead.contains(&k.by_cgroup_id));
        snap.preempts = live;
        if !gone.is_empty() {
            let keys: Vec<PreemptKey> = gone.iter().map(|(k, _)| *k).collect();
            if let Err(e) = source.remove_preempts(&keys) {
                warn!(error = %e, "removing preemption counts of removed cgroups");
                snap.preempts.extend(gone);
            } else {
                for k in &keys {
                    cap.label(k.cgroup_id, |id| cgroups.name(id));
                    cap.label(k.by_cgroup_id, |id| cgroups.name(id));
                }
                let dead_ids: Vec<u64> = dead.iter().copied().collect();
                preemptors.retire(gone, &dead_ids, now);
                for (map, n, _) in &mut snap.map_entries {
                    if *map == "PREEMPTS" {
                        *n = n.saturating_sub(keys.len());
                    }
                }
            }
        }
        // Labels first (expire names them), then their slots go.
        let mut expired = preemptors.expire(now, |id| cap.label(id, |id| cgroups.name(id)));
        expired.extend(keeper.expire(now, |id| cap.label(id, |id| cgroups.name(id))));
        for id in expired {
            cap.forget(id);
        }
        snap.hists
            .extend(keeper.retired_hists().map(|(k, h)| (k, h.clone())));
        let base: Vec<_> = keeper.base().map(|(k, h)| (k.clone(), h.clone())).collect();

        let input = ExpoInput {
            attached: source.attached(),
            per_octave: *per_octave,
            version: env!("CARGO_PKG_VERSION"),
            futex_outcomes: *futex_outcomes,
            base: &base,
            retired_cgroups: keeper.retired_count(),
        };
        let mut fams = metrics::families(&snap, &input, cap, |id| cgroups.name(id));
        fams.extend(preemptors.families(&snap.preempts, |id| cap.label(id, |id| cgroups.name(id))));
        if let Some(go) = go {
            go.scrape();
            fams.extend(go.families());
        }
        let in_use: HashSet<String> = snap
            .hists
            .iter()
            .map(|(k, _)| cap.label(k.cgroup_id, |id| cgroups.name(id)))
            .collect();
        keeper.prune(&in_use);
        Ok(fams.encode(format)?)
    }
}

/// Renders run on the blocking pool, one at a time (http::render); a render that panicked
/// left the state as it was mid-render, which the next render takes over.
impl Render for Mutex<AppState> {
    fn render(&self, format: Format) -> anyhow::Result<Vec<u8>> {
        let mut st = self.lock().unwrap_or_else(|e| {
            warn!("the previous render panicked: rendering from the state it left");
            self.clear_poison();
            e.into_inner()
        });
        st.render(format)
    }
}

pub fn run(cli: &Cli, a: &DaemonArgs) -> anyhow::Result<()> {
    let mut cfg = match &a.config {
        Some(p) => DaemonConfig::from_file(p)?,
        None => DaemonConfig::default(),
    };
    if let Some(l) = &a.listen {
        cfg.listen = l.parse::<SocketAddr>().map_err(|e| {
            UsageError(format!(
                "invalid --listen {l:?}: {e}; use HOST:PORT, e.g. 127.0.0.1:9725"
            ))
        })?;
    }
    if let Some(w) = &a.web_config {
        cfg.web_config = Some(w.clone());
    }
    // Everything the user can get wrong is checked before anything is attached, and files
    // (the TLS key may be root-only) are read before switching user.
    let (tls, auth, web_stats) = match &cfg.web_config {
        Some(path) => {
            let web = WebConfig::from_file(path)?;
            let origin = path.display().to_string();
            let stats = WebStats::new(!web.users.is_empty(), web.tls.is_some());
            let tls = web
                .tls
                .clone()
                .map(|t| TlsReloader::new(t, origin.clone(), stats.clone()))
                .transpose()?
                .map(Arc::new);
            if tls.is_none() && !web.users.is_empty() {
                warn!(web_config = %origin, "basic auth without TLS sends passwords in the clear");
            }
            (tls, BasicAuth::new(&web.users, stats.clone()), stats)
        }
        None => (None, None, WebStats::new(false, false)),
    };
    // Who to be once attached: `user`, or by default, when started as root, "nobody". Root
    // without capabilities can still write root's files (block devices, /proc/sys) and signal
    // root's processes. A daemon started as another user (the unit's DynamicUser) stays it.
    // SAFETY: geteuid cannot fail.
    let started_as_root = unsafe { libc::geteuid() } == 0;
    let (account, origin) = match cfg.user.as_deref() {
        Some(spec) => (Some(lookup_user(spec)?), ORIGIN_CONFIG),
        None if started_as_root => (Some(default_account()), ORIGIN_DEFAULT),
        None => (None, ORIGIN_DEFAULT),
    };
    let account = account.filter(|a| !is_current(a));
    if let Some(a) = &account {
        check_can_switch(a, origin)?;
    }

    // Everything privileged happens here, before the async runtime exists: capabilities are
    // per thread, and a thread copies its creator's. Dropping them after tokio has started its
    // workers would leave those workers (where scrapes run) with the full set.
    // Bind first: a taken port is the most common start-up failure and needs no root.
    let listener = std::net::TcpListener::bind(cfg.listen).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            UsageError(format!(
                "listen address {} is already in use: stop the other process or pick another with --listen",
                cfg.listen
            ))
        } else {
            UsageError(format!("cannot listen on {}: {e}", cfg.listen))
        }
    })?;
    listener.set_nonblocking(true)?;
    crate::http::server::raise_open_files_limit();
    let opts = ProbeOptions {
        track_tasks: false,
        preemptors: true,
        futex: cfg.futex,
        no_log: a.bench_no_log,
        map_sizes: cfg.maps,
        tracefs: cli.tracefs.clone(),
        btf: cli.btf.clone(),
        hash_stamps: cli.hash_stamps,
        run_stats: cfg.self_cost,
        ..Default::default()
    };
    let probes = Probes::load(&opts).context("starting the daemon")?;
    // `auto` resolved by the kernel's features: what runs is what is logged and exported.
    cfg.futex = probes.futex;
    let names = CgroupNames::new(v2_mount().map_err(|e| UsageError(e.to_string()))?);
    // Connections each hold a descriptor: leave room for what the daemon opens itself
    // (counted in /proc/self/fd, which is root's once the daemon is not dumpable).
    let max_connections = crate::http::server::connection_cap(cfg.http.max_connections);
    // Still single-threaded here (no runtime yet): capset(2), no_new_privs and the seccomp
    // filter are per thread, so doing it all before the runtime spawns its workers leaves no
    // thread privileged.
    // Kernels that check CAP_BPF on every bpf() call (5.10) need it to read the maps.
    let maps_need_bpf = !probes.maps_readable_unprivileged();
    if let Some(acct) = &account {
        // What must survive leaving root: CAP_BPF where map reads need it, CAP_SYS_PTRACE for
        // [go] (if held); the drop below then keeps exactly these.
        let mut keep = Vec::new();
        if maps_need_bpf {
            keep.push(crate::host::privs::CAP_BPF);
        }
        if cfg.go.enabled {
            keep.push(crate::host::privs::CAP_SYS_PTRACE);
        }
        switch_user(acct, &keep, origin)?;
        info!(user = %acct.name, uid = acct.uid, gid = acct.gid, "attached; switched user");
    } else if started_as_root {
        warn!(
            "attached; staying root (user = \"root\"): root without capabilities can still write \
             root's files, such as block devices and /proc/sys; remove `user` to run as nobody"
        );
    }
    let keep_bpf = cfg.drop_capabilities && maps_need_bpf;
    if keep_bpf {
        let mut keep = vec![crate::host::privs::CAP_BPF];
        if cfg.go.enabled {
            keep.push(crate::host::privs::CAP_SYS_PTRACE);
        }
        crate::host::privs::drop_capabilities_except(&keep).context(
            "dropping capabilities after attaching (set drop_capabilities = false to keep them)",
        )?;
        warn!(
            kernel = %probes.features.release,
            "this kernel checks CAP_BPF on every bpf() call while kernel.unprivileged_bpf_disabled \
             is set: the daemon keeps CAP_BPF{} to read its maps, and drops every other capability",
            if cfg.go.enabled { " and CAP_SYS_PTRACE for [go]" } else { "" }
        );
    } else if cfg.drop_capabilities {
        if cfg.go.enabled {
            // Go statistics are read at scrape time from /proc/PID/exe and process_vm_readv, which
            // needs ptrace access (PTRACE_MODE_ATTACH) to processes of other users: keep
            // CAP_SYS_PTRACE, if held, and only it.
            let kept = crate::host::privs::drop_capabilities_except(&[crate::host::privs::CAP_SYS_PTRACE])
                .context(
                    "dropping capabilities after attaching (set drop_capabilities = false to keep them)",
                )?;
            if kept.is_empty() {
                warn!(
                    "[go] enabled without CAP_SYS_PTRACE: only Go processes of the daemon's own \
                     user can be read; grant CAP_SYS_PTRACE to read all"
                );
            }
            info!("attached; dropped all capabilities except CAP_SYS_PTRACE for [go]");
        } else {
            crate::host::privs::drop_all_capabilities().context(
                "dropping capabilities after attaching (set drop_capabilities = false to keep them)",
            )?;
            info!("attached; dropped all capabilities");
        }
    }
    crate::host::privs::make_undumpable().context("prctl(PR_SET_DUMPABLE, 0) after attaching")?;
    crate::host::sandbox::deny_writes_to_other_processes()
        .context("restricting the daemon after attaching")?;
    info!(
        denied = %crate::host::sandbox::DENIED.join(", "),
        "seccomp filter installed: no writing into other processes"
    );
    let state = AppState::new(
        Box::new(probes),
        cfg.max_cgroups,
        cfg.preemptors_per_cgroup,
        cfg.buckets_per_octave,
        cfg.futex == FutexMode::Syscall,
        Box::new(names),
        Duration::from_secs(cfg.removed_cgroup_ttl_secs),
    );
    {
        let mut st = state
            .lock()
            .map_err(|_| anyhow::anyhow!("state poisoned"))?;
        if cfg.go.enabled {
            st.go = Some(crate::go::watch::GoWatcher::new(
                cfg.go.clone(),
                cfg.buckets_per_octave,
            ));
        }
    }
    if max_connections < cfg.http.max_connections {
        warn!(
            max_connections,
            configured = cfg.http.max_connections,
            "the open-files limit allows fewer HTTP connections than http.max_connections: \
             raise LimitNOFILE (or the container's nofile limit) for more"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Renders run one at a time (http::render) and bcrypt on a thread of its own: more
        // blocking threads would only cost their stacks and malloc arenas.
        .max_blocking_threads(2)
        .enable_all()
        .build()?;
    let res = rt.block_on(serve(
        listener,
        tls,
        auth,
        state,
        web_stats,
        max_connections,
        &cfg,
    ));
    // A render stuck in the blocking pool must not hold up the exit (the programs detach
    // when the process ends).
    rt.shutdown_timeout(Duration::from_secs(5));
    res
}

async fn serve(
    listener: std::net::TcpListener,
    tls: Option<Arc<TlsReloader>>,
    auth: Option<Arc<BasicAuth>>,
    state: Shared,
    stats: Arc<WebStats>,
    max_connections: usize,
    cfg: &DaemonConfig,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let local = listener.local_addr()?;
    let mut term = signal(SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
            _ = term.recv() => info!("SIGTERM: shutting down"),
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    // Tests, scripts and the bench wait for this line.
    eprintln!("schedlat: serving metrics on {scheme}://{local}/metrics");
    info!(
        listen = %local,
        tls = tls.is_some(),
        basic_auth = auth.is_some(),
        futex = %cfg.futex,
        max_cgroups = cfg.max_cgroups,
        max_connections,
        "daemon ready"
    );
    let l = &cfg.http;
    let renders = Renders::new(
        state.clone(),
        l.metrics_cache(),
        l.render_timeout(),
        l.max_waiting_scrapes,
        stats.clone(),
    );
    let app = crate::http::router(renders, auth, stats.clone());
    crate::http::server::serve(
        listener,
        app,
        tls,
        l.clone(),
        max_connections,
        stats,
        shutdown,
    )
    .await;
    // Dropping the state drops the programs and links: everything is detached (a render
    // still running holds it until it ends).
    drop(state);
    info!("detached; bye");
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::{
        body::Body,
        http::{StatusCode, header},
    };
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;
    use crate::hist::Histogram;

    /// A kernel side with per-cgroup histograms that grow by one per scrape, and whose
    /// entries can be removed (as the daemon does for removed cgroups).
    struct Fake {
        scrapes: u64,
        cgroups: Vec<u64>,
        removed: Arc<Mutex<Vec<HistKey>>>,
    }
    impl Source for Fake {
        fn snapshot(&mut self) -> anyhow::Result<RawSnapshot> {
            self.scrapes += 1;
            let mut h = Histogram::default();
            for _ in 0..self.scrapes {
                h.record(5_000);
            }
            let hists = self
                .cgroups
                .iter()
                .map(|&cgroup_id| {
                    (
                        HistKey {
                            cgroup_id,
                            kind: kind::RUNQ_WOKEN,
                            op: 0,
                        },
                        h.clone(),
                    )
                })
                .collect();
            Ok(RawSnapshot {
                hists,
                ..Default::default()
            })
        }
        fn attached(&self) -> &[Attached] {
            &[]
        }
        fn remove_hists(&mut self, keys: &[HistKey]) -> anyhow::Result<()> {
            self.cgroups
                .retain(|id| !keys.iter().any(|k| k.cgroup_id == *id));
            self.removed.lock().unwrap().extend_from_slice(keys);
            Ok(())
        }
        fn remove_preempts(&mut self, _: &[PreemptKey]) -> anyhow::Result<()> {
            Ok(())
        }
    }

    /// Cgroup `id` is named `/cg<id>`; the ids in `dead` are removed.
    struct FakeCgroups {
        dead: Arc<Mutex<Vec<u64>>>,
    }
    impl Cgroups for FakeCgroups {
        fn name(&mut self, id: u64) -> Option<String> {
            Some(if id == 1 {
                "/".into()
            } else {
                format!("/cg{id}")
            })
        }
        fn dead(&mut self, ids: &[u64]) -> Vec<u64> {
            let d = self.dead.lock().unwrap();
            ids.iter().copied().filter(|i| d.contains(i)).collect()
        }
    }

    type Shared<T = AppState> = Arc<Mutex<T>>;

    /// The app over `state`, with `stats` for the HTTP layer's own counters. Each call is an
    /// app of its own: no body is shared between the tests' requests.
    fn router_with(
        state: Shared,
        auth: Option<Arc<BasicAuth>>,
        stats: Arc<WebStats>,
    ) -> axum::Router {
        let renders = Renders::new(
            state,
            Duration::ZERO,
            Duration::from_secs(10),
            100,
            stats.clone(),
        );
        crate::http::router(renders, auth, stats)
    }

    fn router(state: Shared, auth: Option<Arc<BasicAuth>>) -> axum::Router {
        let stats = WebStats::new(auth.is_some(), false);
        router_with(state, auth, stats)
    }

    fn state(cgroups: Vec<u64>, ttl: Duration) -> (Shared, Shared<Vec<u64>>, Shared<Vec<HistKey>>) {
        let dead = Arc::new(Mutex::new(Vec::new()));
        let removed = Arc::new(Mutex::new(Vec::new()));
        let st = AppState::new(
            Box::new(Fake {
                scrapes: 0,
                cgroups,
                removed: removed.clone(),
            }),
            10,
            5,
            2,
            false,
            Box::new(FakeCgroups { dead: dead.clone() }),
            ttl,
        );
        (st, dead, removed)
    }

    async fn get(app: axum::Router, path: &str) -> (StatusCode, String, Option<String>) {
        let resp = app
            .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap(), ct)
    }

    #[tokio::test]
    async fn serves_metrics_and_health() {
        let (state, _, _) = state(vec![1], Duration::from_secs(600));
        let (s, body, ct) = get(router(state.clone(), None), "/metrics").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            ct.as_deref(),
            Some(crate::exporter::proto::TEXT_CONTENT_TYPE)
        );
        assert!(
            body.contains(
                "schedlat_runqueue_latency_seconds_count{cgroup=\"/\",cause=\"woken\"} 1"
            ),
            "{body}"
        );
        let (_, body2, _) = get(router(state.clone(), None), "/metrics").await;
        assert!(
            body2.contains(
                "schedlat_runqueue_latency_seconds_count{cgroup=\"/\",cause=\"woken\"} 2"
            ),
            "{body2}"
        );
        let (s, body, _) = get(router(state, None), "/healthz").await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, "ok\n"));
    }

    #[tokio::test]
    async fn basic_auth_guards_metrics_but_not_healthz() {
        let (state, _, _) = state(vec![1], Duration::from_secs(600));
        let users = std::collections::BTreeMap::from([(
            "prom".to_string(),
            bcrypt::hash("s3cret", 4).unwrap(),
        )]);
        let auth = BasicAuth::new(&users, WebStats::new(true, false));
        let req = |authz: Option<&str>, path: &str| {
            let mut r = axum::http::Request::get(path);
            if let Some(a) = authz {
                r = r.header(header::AUTHORIZATION, a);
            }
            router(state.clone(), auth.clone()).oneshot(r.body(Body::empty()).unwrap())
        };
        let resp = req(None, "/metrics").await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            resp.headers().get(header::WWW_AUTHENTICATE).unwrap(),
            "Basic realm=\"schedlat\""
        );
        // prom:wrong, nobody:s3cret
        for bad in ["Basic cHJvbTp3cm9uZw==", "Basic bm9ib2R5OnMzY3JldA=="] {
            let resp = req(Some(bad), "/metrics").await.unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{bad}");
        }
        // prom:s3cret
        let resp = req(Some("Basic cHJvbTpzM2NyZXQ="), "/metrics")
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(
            String::from_utf8_lossy(&body).contains("schedlat_runqueue_latency_seconds_count"),
            "authorized scrape gets metrics"
        );
        let resp = req(None, "/healthz").await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn failed_logins_are_limited_and_counted_while_known_credentials_still_work() {
        let (state, _, _) = state(vec![1], Duration::from_secs(600));
        let stats = WebStats::new(true, false);
        let users = std::collections::BTreeMap::from([(
            "prom".to_string(),
            bcrypt::hash("s3cret", 4).unwrap(),
        )]);
        let auth = BasicAuth::new(&users, stats.clone());
        let req = |authz: Option<&str>| {
            let mut r = axum::http::Request::get("/metrics");
            if let Some(a) = authz {
                r = r.header(header::AUTHORIZATION, a);
            }
            router_with(state.clone(), auth.clone(), stats.clone())
                .oneshot(r.body(Body::empty()).unwrap())
        };
        let good = "Basic cHJvbTpzM2NyZXQ="; // prom:s3cret
        let wrong = "Basic cHJvbTp3cm9uZw=="; // prom:wrong
        assert_eq!(req(Some(good)).await.unwrap().status(), StatusCode::OK);
        // Back to back: the first five wrong passwords are checked (401), then refused
        // unchecked (429 with Retry-After) until the budget refills.
        let mut statuses = Vec::new();
        for _ in 0..12 {
            let resp = req(Some(wrong)).await.unwrap();
            if resp.status() == StatusCode::TOO_MANY_REQUESTS {
                let secs: u64 = resp.headers()[header::RETRY_AFTER]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(
                    secs, 1,
                    "Retry-After: the client budget refills 2 per second"
                );
            }
            statuses.push(resp.status().as_u16());
        }
        let n401 = statuses.iter().filter(|&&s| s == 401).count();
        let n429 = statuses.iter().filter(|&&s| s == 429).count();
        assert!((5..=6).contains(&n401) && n401 + n429 == 12, "{statuses:?}");
        // A scraper whose credentials verified before is not locked out.
        let resp = req(Some(good)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(req(None).await.unwrap().status(), StatusCode::UNAUTHORIZED);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        // Counted as of that scrape (the request without credentials came after it).
        for line in [
            format!("schedlat_web_auth_failures_total{{reason=\"wrong_credentials\"}} {n401}"),
            format!("schedlat_web_auth_failures_total{{reason=\"rate_limited\"}} {n429}"),
            "schedlat_web_auth_failures_total{reason=\"no_credentials\"} 0".to_string(),
        ] {
            assert!(body.contains(&line), "{line}:\n{body}");
        }
        assert!(!body.contains("schedlat_web_tls"), "no TLS configured");
        assert_eq!(
            stats.auth_failures(crate::http::AuthFailure::NoCredentials),
            1
        );
    }

    fn count(body: &str, cgroup: &str) -> Option<f64> {
        let prefix = format!(
            "schedlat_runqueue_latency_seconds_count{{cgroup=\"{cgroup}\",cause=\"woken\"}} "
        );
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.parse().unwrap())
    }

    #[tokio::test]
    async fn removed_cgroups_leave_the_kernel_map_but_keep_their_counts_until_the_ttl() {
        let (st, dead, removed) = state(vec![1, 2], Duration::from_secs(600));
        let (_, body, _) = get(router(st.clone(), None), "/metrics").await;
        assert_eq!(count(&body, "/cg2"), Some(1.0));
        dead.lock().unwrap().push(2);
        // Scrape 2 reads 2 for cgroup 2, finds it removed, deletes it from the kernel map and
        // keeps exporting its final count.
        let (_, body, _) = get(router(st.clone(), None), "/metrics").await;
        assert_eq!(count(&body, "/cg2"), Some(2.0));
        assert_eq!(
            removed
                .lock()
                .unwrap()
                .iter()
                .map(|k| k.cgroup_id)
                .collect::<Vec<_>>(),
            vec![2]
        );
        assert!(body.contains("schedlat_cgroups_retired 1"), "{body}");
        let (_, body, _) = get(router(st.clone(), None), "/metrics").await;
        assert_eq!(
            count(&body, "/cg2"),
            Some(2.0),
            "frozen, not lost, not growing"
        );
        assert_eq!(count(&body, "/"), Some(3.0), "live cgroups unaffected");
    }

    #[tokio::test]
    async fn removed_cgroup_series_go_after_the_ttl() {
        let (st, dead, _) = state(vec![1, 2], Duration::ZERO);
        get(router(st.clone(), None), "/metrics").await;
        dead.lock().unwrap().push(2);
        // Its final count is exported once more, then the series goes.
        let (_, body, _) = get(router(st.clone(), None), "/metrics").await;
        assert_eq!(count(&body, "/cg2"), Some(2.0), "{body}");
        assert!(body.contains("schedlat_cgroups_retired 0"), "{body}");
        let (_, body, _) = get(router(st.clone(), None), "/metrics").await;
        assert_eq!(count(&body, "/cg2"), None, "{body}");
        assert_eq!(count(&body, "/"), Some(3.0));
    }
}
