//! The HTTP app: GET /metrics (behind basic auth when configured) and /healthz (never:
//! liveness probes carry no credentials, and it reveals nothing but health).
use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};

use super::{
    auth::{BasicAuth, require_auth},
    render::{Answer, Renders},
    stats::WebStats,
};
use crate::metrics;

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

async fn metrics_handler(State(app): State<App>) -> Response {
    match app.renders.scrape().await {
        Answer::Body(body) => {
            // The HTTP layer's own counters are never from a shared body: they are cheap,
            // and a refused login shows at the next scrape.
            let own = metrics::encode(&app.stats.families()).unwrap_or_default();
            let mut out = Vec::with_capacity(body.len() + own.len());
            out.extend_from_slice(&body);
            out.extend_from_slice(own.as_bytes());
            ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], out).into_response()
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
