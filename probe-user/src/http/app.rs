//! The HTTP app: GET /metrics (behind basic auth when configured) and /healthz (never:
//! liveness probes carry no credentials, and it reveals nothing but health).
use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};

use super::{
    auth::{BasicAuth, require_auth},
    render::{Answer, Renders},
    stats::WebStats,
};
use crate::exporter::{
    metrics,
    proto::{self, Format},
};

#[derive(Clone)]
struct App {
    renders: Arc<Renders>,
    stats: Arc<WebStats>,
}

/// The router, tested without a socket; [`super::server::serve`] runs it.
pub fn router(renders: Arc<Renders>, auth: Option<Arc<BasicAuth>>, stats: Arc<WebStats>) -> Router {
    let app = Router::new().route("/metrics", get(metrics_handler));
    let app = match auth {
        Some(a) => app.route_layer(middleware::from_fn_with_state(a, require_auth)),
        None => app,
    };
    app.route("/healthz", get(health_handler))
        .with_state(App { renders, stats })
}

async fn metrics_handler(State(app): State<App>, headers: HeaderMap) -> Response {
    // Text, or protobuf with native histograms when the scraper asks for it.
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    match app.renders.scrape(format).await {
        Answer::Body(body) => {
            // The HTTP layer's own counters are never from a shared body: they are cheap,
            // and a refused login shows at the next scrape. Both formats concatenate.
            let families = app.stats.families();
            let own = match format {
                Format::Text => metrics::encode(&families).unwrap_or_default().into_bytes(),
                Format::Protobuf => proto::encode(&families, &Default::default()),
            };
            let mut out = Vec::with_capacity(body.len() + own.len());
            out.extend_from_slice(&body);
            out.extend_from_slice(&own);
            ([(header::CONTENT_TYPE, format.content_type())], out).into_response()
        }
        Answer::Failed(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Answer::Shed(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            format!("{}\n", why.message()),
        )
            .into_response(),
    }
}

async fn health_handler(State(app): State<App>) -> Response {
    match app.renders.stuck() {
        None => "ok\n".into_response(),
        Some(age) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "unhealthy: a /metrics render has run for {:.1} s, over render_timeout_secs ({} s)\n",
                age.as_secs_f64(),
                app.renders.timeout().as_secs()
            ),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Mutex,
            atomic::{AtomicU32, Ordering},
        },
        time::Duration,
    };

    use axum::body::Body;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;
    use crate::http::render::Render;

    /// Render 1 panics, render 2 blocks until released, later ones answer.
    struct Planted {
        n: AtomicU32,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Render for Planted {
        fn render(&self, _: Format) -> anyhow::Result<Vec<u8>> {
            self.text().map(String::into_bytes)
        }
    }

    impl Planted {
        fn text(&self) -> anyhow::Result<String> {
            match self.n.fetch_add(1, Ordering::SeqCst) + 1 {
                1 => panic!("planted"),
                2 => {
                    let _ = self.release.lock().unwrap().recv();
                    Ok("# late\n".into())
                }
                n => Ok(format!("# render {n}\n")),
            }
        }
    }

    async fn get(app: &Router, path: &str) -> (StatusCode, String) {
        let resp = app
            .clone()
            .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_is_one_500_and_a_stuck_render_is_503_and_unhealthy_until_it_ends() {
        let (tx, rx) = std::sync::mpsc::channel();
        let stats = WebStats::new(false, false);
        let renders = Renders::new(
            Arc::new(Planted {
                n: AtomicU32::new(0),
                release: Mutex::new(rx),
            }),
            Duration::ZERO,
            // Long enough for the panicking render to finish panicking (with RUST_BACKTRACE
            // set, as under `cargo xtask test`, capturing the backtrace takes hundreds of ms on
            // a busy machine), short enough for the stuck one.
            Duration::from_secs(3),
            10,
            stats.clone(),
        );
        let app = router(renders, None, stats);
        let (s, body) = get(&app, "/metrics").await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("panicked: planted"), "{body}");
        // Render 2 hangs: the scrape gives up with 503, /healthz turns unhealthy.
        let (s, body) = get(&app, "/metrics").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let (s, body) = get(&app, "/healthz").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            body.starts_with("unhealthy: a /metrics render has run for"),
            "{body}"
        );
        tx.send(()).unwrap();
        // Released: healthy, and scrapes render again, with the counts of all this.
        let mut healthy = false;
        for _ in 0..100 {
            if get(&app, "/healthz").await == (StatusCode::OK, "ok\n".into()) {
                healthy = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(healthy, "/healthz still unhealthy after the render ended");
        let (s, body) = get(&app, "/metrics").await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert!(body.starts_with("# render 3\n"), "{body}");
        for line in [
            "schedlat_http_renders_total{result=\"panic\"} 1",
            "schedlat_http_renders_total{result=\"ok\"} 2",
            "schedlat_http_requests_shed_total{reason=\"render_timeout\"} 1",
        ] {
            assert!(body.contains(line), "{line}:\n{body}");
        }
    }
}
