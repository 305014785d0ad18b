//! `schedlat daemon`: attach once, serve /metrics from the in-kernel aggregates.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

use crate::{
    UsageError,
    cgroup::{CgroupNames, v2_mount},
    cli::{Cli, DaemonArgs},
    config::DaemonConfig,
    metrics::{self, ExpoInput, LabelCap},
    probes::{Attached, FutexMode, ProbeOptions, Probes, RawSnapshot},
};

/// What a scrape needs. The kernel side is behind a trait so the HTTP layer is testable
/// without root.
pub trait Source: Send + 'static {
    fn snapshot(&mut self) -> anyhow::Result<RawSnapshot>;
    fn attached(&self) -> &[Attached];
}

impl Source for Probes {
    fn snapshot(&mut self) -> anyhow::Result<RawSnapshot> {
        Ok(Probes::snapshot(self)?)
    }
    fn attached(&self) -> &[Attached] {
        &self.attached
    }
}

pub struct AppState {
    source: Box<dyn Source>,
    cap: LabelCap,
    names: Box<dyn FnMut(u64) -> Option<String> + Send>,
    per_octave: u32,
    futex_outcomes: bool,
}

pub type Shared = Arc<Mutex<AppState>>;

impl AppState {
    pub fn new(
        source: Box<dyn Source>,
        max_cgroups: usize,
        per_octave: u32,
        futex_outcomes: bool,
        names: Box<dyn FnMut(u64) -> Option<String> + Send>,
    ) -> Shared {
        Arc::new(Mutex::new(Self {
            source,
            cap: LabelCap::new(max_cgroups),
            names,
            per_octave,
            futex_outcomes,
        }))
    }

    fn render(&mut self) -> anyhow::Result<String> {
        let snap = self.source.snapshot()?;
        let input = ExpoInput {
            attached: self.source.attached(),
            per_octave: self.per_octave,
            version: env!("CARGO_PKG_VERSION"),
            futex_outcomes: self.futex_outcomes,
        };
        let fams = metrics::families(&snap, &input, &mut self.cap, &mut self.names);
        Ok(metrics::encode(&fams)?)
    }
}

/// The HTTP app: GET /metrics and /healthz.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

async fn metrics_handler(State(state): State<Shared>) -> impl IntoResponse {
    // Map reads are a few syscalls per entry: fine inline, but keep them off the async workers.
    let res = tokio::task::spawn_blocking(move || {
        state
            .lock()
            .map_err(|_| anyhow::anyhow!("state poisoned"))?
            .render()
    })
    .await;
    match res {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response(),
        Ok(Err(e)) => {
            error!(error = %e, "scrape failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("scrape failed: {e:#}\n"),
            )
                .into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("scrape task failed: {e}\n"),
        )
            .into_response(),
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(cli, cfg))
}

async fn serve(cli: &Cli, cfg: DaemonConfig) -> anyhow::Result<()> {
    // Bind first: a taken port is the most common start-up failure and needs no root.
    let listener = tokio::net::TcpListener::bind(cfg.listen).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            UsageError(format!(
                "listen address {} is already in use: stop the other process or pick another with --listen",
                cfg.listen
            ))
        } else {
            UsageError(format!("cannot listen on {}: {e}", cfg.listen))
        }
    })?;
    let local = listener.local_addr()?;
    let opts = ProbeOptions {
        track_tasks: false,
        futex: cfg.futex,
        map_sizes: cfg.maps,
        tracefs: cli.tracefs.clone(),
        btf: cli.btf.clone(),
        ..Default::default()
    };
    let probes = Probes::load(&opts).context("starting the daemon")?;
    let mut names = CgroupNames::new(v2_mount().map_err(|e| UsageError(e.to_string()))?);
    let state = AppState::new(
        Box::new(probes),
        cfg.max_cgroups,
        cfg.buckets_per_octave,
        cfg.futex == FutexMode::Syscall,
        Box::new(move |id| names.name(id).map(str::to_string)),
    );
    let mut term = signal(SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
            _ = term.recv() => info!("SIGTERM: shutting down"),
        }
    };
    // Tests, scripts and the bench wait for this line.
    eprintln!("schedlat: serving metrics on http://{local}/metrics");
    info!(listen = %local, futex = %cfg.futex, max_cgroups = cfg.max_cgroups, "daemon ready");
    axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(shutdown)
        .await?;
    // Dropping the state drops the programs and links: everything is detached.
    drop(state);
    info!("detached; bye");
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http_body_util::BodyExt as _;
    use schedlat_common::{HistKey, kind};
    use tower::ServiceExt as _;

    use super::*;
    use crate::hist::Histogram;

    struct Fake(u64);
    impl Source for Fake {
        fn snapshot(&mut self) -> anyhow::Result<RawSnapshot> {
            self.0 += 1;
            let mut h = Histogram::default();
            for _ in 0..self.0 {
                h.record(5_000);
            }
            Ok(RawSnapshot {
                hists: vec![(
                    HistKey {
                        cgroup_id: 1,
                        kind: kind::RUNQ_WOKEN,
                        op: 0,
                    },
                    h,
                )],
                ..Default::default()
            })
        }
        fn attached(&self) -> &[Attached] {
            &[]
        }
    }

    async fn get(app: Router, path: &str) -> (StatusCode, String, Option<String>) {
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
        let state = AppState::new(
            Box::new(Fake(0)),
            10,
            2,
            false,
            Box::new(|_| Some("/".to_string())),
        );
        let (s, body, ct) = get(router(state.clone()), "/metrics").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(ct.as_deref(), Some(metrics::CONTENT_TYPE));
        assert!(
            body.contains(
                "schedlat_runqueue_latency_seconds_count{cgroup=\"/\",cause=\"woken\"} 1"
            ),
            "{body}"
        );
        let (_, body2, _) = get(router(state.clone()), "/metrics").await;
        assert!(
            body2.contains(
                "schedlat_runqueue_latency_seconds_count{cgroup=\"/\",cause=\"woken\"} 2"
            ),
            "{body2}"
        );
        let (s, body, _) = get(router(state), "/healthz").await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, "ok\n"));
    }
}
