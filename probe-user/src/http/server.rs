//! Accepting and serving connections with bounds: a connection cap, TLS handshake, header
//! and idle timeouts (see [`super::conns`]), bounded request buffers, and a graceful
//! shutdown that waits a bounded time.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;
use tracing::{debug, warn};

use super::{
    conns::{Conns, Quiet, Slot, Tracked},
    limits::HttpLimits,
    stats::{ConnDrop, WebStats},
    tls::TlsReloader,
};

/// Bytes of a request hyper buffers per connection, at most: a GET with credentials fits
/// many times over (hyper's own minimum is 8 KiB).
const MAX_REQUEST_BUF: usize = 16 * 1024;
/// How long shutdown waits for requests in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `shutdown` resolves, over TLS when `tls` is set, with at
/// most `max_connections` open (see [`connection_cap`]).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<TlsReloader>>,
    limits: HttpLimits,
    max_connections: usize,
    stats: Arc<WebStats>,
    shutdown: impl Future<Output = ()>,
) {
    let conns = Conns::new(max_connections, stats.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    let mut warned: Option<tokio::time::Instant> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning; counted
                    // every time, logged once a minute.
                    stats.count_drop(ConnDrop::AcceptError);
                    if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        warned = Some(tokio::time::Instant::now());
                        warn!(
                            error = %e,
                            "accepting a connection failed (counted in \
                             schedlat_http_connections_dropped_total{{reason=\"accept_error\"}})"
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Counted by admit when refused; dropping the stream closes it.
        let Some(slot) = conns.admit() else {
            debug!(%peer, "every connection busy: refused");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(
            tcp,
            peer,
            slot,
            app.clone(),
            tls.clone(),
            limits.clone(),
            stats.clone(),
            stop_rx.clone(),
        ));
    }
    drop(listener);
    // Idle connections close at once, requests in progress are answered first.
    let _ = stop_tx.send(true);
    conns.drained(SHUTDOWN_GRACE).await;
}

/// `max_connections`, lowered so that connections cannot use up the descriptors the
/// daemon needs otherwise: the open-files limit less those open now and a margin.
pub fn connection_cap(max_connections: usize) -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return max_connections;
    }
    let open = std::fs::read_dir("/proc/self/fd").map_or(64, |d| d.count()) as u64;
    // Room for map reads, /proc and Go executables opened while serving.
    let margin = 64;
    let room = lim.rlim_cur.saturating_sub(open + margin).max(8);
    max_connections.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// Raises the soft open-files limit to the hard one (as Go programs do at start): the cap
/// then fits more connections where a unit or runtime left the default soft 1024.
pub fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct they are given; raising the soft
    // limit up to the hard one needs no privilege.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[expect(clippy::too_many_arguments, reason = "one connection's whole context")]
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    app: Router,
    tls: Option<Arc<TlsReloader>>,
    limits: HttpLimits,
    stats: Arc<WebStats>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(tls) = tls else {
        return http(tcp, peer, slot, app, &limits, &stats, stop).await;
    };
    // A few stats at most once per second; files are read only when they changed.
    let acceptor = TlsAcceptor::from(tls.current());
    let handshake = tokio::time::timeout(limits.tls_handshake_timeout(), acceptor.accept(tcp));
    let stream = tokio::select! {
        r = handshake => r,
        () = slot.conn.evict.notified() => return,
        _ = stop.wait_for(|s| *s) => return,
    };
    match stream {
        Ok(Ok(stream)) => {
            slot.conn.ready();
            http(stream, peer, slot, app, &limits, &stats, stop).await;
        }
        Ok(Err(e)) => {
            stats.count_drop(ConnDrop::TlsHandshakeFailed);
            debug!(%peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            stats.count_drop(ConnDrop::TlsHandshakeTimeout);
            debug!(%peer, "TLS handshake timed out");
        }
    }
}

/// HTTP/1.1 on one connection until the client closes it, a timeout or eviction closes it,
/// or shutdown.
async fn http<S>(
    io: S,
    peer: SocketAddr,
    slot: Slot,
    app: Router,
    limits: &HttpLimits,
    stats: &WebStats,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = slot.conn.clone();
    let svc = {
        let conn = conn.clone();
        service_fn(move |mut req: hyper::Request<Incoming>| {
            let guard = conn.request();
            // The basic-auth middleware limits failed logins by the peer's address.
            req.extensions_mut().insert(ConnectInfo(peer));
            let resp = app.clone().oneshot(req);
            async move {
                let r = resp.await;
                drop(guard);
                r
            }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .max_buf_size(MAX_REQUEST_BUF)
        // Ours (below) distinguishes the first request, idleness and a started header.
        .header_read_timeout(None);
    let served = builder.serve_connection(TokioIo::new(Tracked::new(io, conn.clone())), svc);
    tokio::pin!(served);
    let (header, idle) = (limits.header_read_timeout(), limits.idle_timeout());
    let mut stopping = false;
    loop {
        let deadline = conn.deadline(header, idle);
        let wake = async {
            match deadline {
                Some((t, _)) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = conn.evict.notified() => return,
            () = conn.changed.notified() => {}
            () = wake => {
                if let Some((t, why)) = conn.deadline(header, idle) {
                    if tokio::time::Instant::now() >= t.into() {
                        stats.count_drop(match why {
                            Quiet::Header => ConnDrop::HeaderTimeout,
                            Quiet::Idle => ConnDrop::IdleTimeout,
                        });
                        debug!(%peer, ?why, "closing a quiet connection");
                        return;
                    }
                }
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                served.as_mut().graceful_shutdown();
            }
        }
    }
}
