//! Open connections: a cap, what each is doing, and when it has been quiet too long.
//!
//! At the cap a new connection closes the least recently active one without a request in
//! progress (as nginx reuses keep-alive connections when it runs out): held or silent
//! connections cannot lock scrapers out, and a flood of them costs one descriptor each up to
//! the cap. Only when every connection has a request in progress is the new one refused.
use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
};

use super::stats::{ConnDrop, WebStats};

/// The connections of one listener.
pub struct Conns {
    cap: usize,
    epoch: Instant,
    stats: Arc<WebStats>,
    live: Mutex<Live>,
    /// Notified whenever a connection goes (shutdown waits for the last).
    gone: Notify,
}

#[derive(Default)]
struct Live {
    next_id: u64,
    conns: HashMap<u64, Arc<Conn>>,
}

/// One connection's state, shared by its task, its I/O and the registry. Times are
/// nanoseconds since the registry's epoch.
pub struct Conn {
    id: u64,
    epoch: Instant,
    /// Requests in progress (HTTP/1: 0 or 1).
    busy: AtomicU32,
    /// A request was answered: later waits are keep-alive idleness, not the first request.
    answered: AtomicBool,
    /// When the connection became ready for HTTP (accepted, or TLS done) or its last request
    /// was answered.
    idle_since: AtomicU64,
    /// First byte of the next request after `idle_since` (0: none yet).
    head_started: AtomicU64,
    /// Last byte read, for choosing whom to close at the cap.
    last_read: AtomicU64,
    /// Closed by the registry to make room: the task drops the connection.
    pub evict: Notify,
    /// What the deadline depends on changed: the task recomputes it.
    pub changed: Notify,
}

/// A connection's slot in the registry, freed on drop.
pub struct Slot {
    pub conn: Arc<Conn>,
    conns: Arc<Conns>,
}

impl Conns {
    pub fn new(cap: usize, stats: Arc<WebStats>) -> Arc<Self> {
        stats.set_connections_max(cap);
        Arc::new(Self {
            cap,
            epoch: Instant::now(),
            stats,
            live: Mutex::new(Live::default()),
            gone: Notify::new(),
        })
    }

    fn now(&self) -> u64 {
        nanos(self.epoch, Instant::now())
    }

    /// A slot for a new connection, closing the least recently active idle one at the cap;
    /// None (counted) when every connection has a request in progress.
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.conns.len() >= self.cap {
            let victim = live
                .conns
                .values()
                .filter(|c| c.busy.load(Ordering::Relaxed) == 0)
                .min_by_key(|c| c.last_active())
                .map(|c| c.id);
            match victim {
                Some(id) => {
                    let c = live.conns.remove(&id).expect("victim is live");
                    c.evict.notify_one();
                    self.stats.count_drop(ConnDrop::EvictedIdle);
                }
                None => {
                    self.stats.count_drop(ConnDrop::OverLimit);
                    return None;
                }
            }
        }
        let id = live.next_id;
        live.next_id += 1;
        let now = self.now();
        let conn = Arc::new(Conn {
            id,
            epoch: self.epoch,
            busy: AtomicU32::new(0),
            answered: AtomicBool::new(false),
            idle_since: AtomicU64::new(now),
            head_started: AtomicU64::new(0),
            last_read: AtomicU64::new(now),
            evict: Notify::new(),
            changed: Notify::new(),
        });
        live.conns.insert(id, conn.clone());
        self.stats.set_connections_open(live.conns.len());
        Some(Slot {
            conn,
            conns: self.clone(),
        })
    }

    pub fn open(&self) -> usize {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .conns
            .len()
    }

    /// Waits until every connection is gone, at most `limit`.
    pub async fn drained(&self, limit: Duration) {
        let wait = async {
            loop {
                let gone = self.gone.notified();
                if self.open() == 0 {
                    return;
                }
                gone.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut live = self.conns.live.lock().unwrap_or_else(|e| e.into_inner());
        // An evicted connection left the registry already.
        live.conns.remove(&self.conn.id);
        self.conns.stats.set_connections_open(live.conns.len());
        drop(live);
        self.conns.gone.notify_waiters();
    }
}

fn nanos(epoch: Instant, t: Instant) -> u64 {
    // 1 + : 0 means "never".
    1 + t.saturating_duration_since(epoch).as_nanos() as u64
}

/// Which timeout closes a quiet connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quiet {
    /// Headers not complete in time (first request from the start, later ones from their
    /// first byte).
    Header,
    /// Kept alive with no request.
    Idle,
}

impl Conn {
    fn last_active(&self) -> u64 {
        self.idle_since
            .load(Ordering::Relaxed)
            .max(self.last_read.load(Ordering::Relaxed))
    }

    fn at(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos.saturating_sub(1))
    }

    /// Ready for HTTP now (after the TLS handshake): the first request's time starts.
    pub fn ready(&self) {
        self.idle_since
            .store(nanos(self.epoch, Instant::now()), Ordering::Relaxed);
    }

    /// When the connection is to be closed if nothing changes, and why; None while a request
    /// is in progress (its answer is bounded by the render timeout).
    pub fn deadline(&self, header: Duration, idle: Duration) -> Option<(Instant, Quiet)> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle_since = self.at(self.idle_since.load(Ordering::Acquire));
        if !self.answered.load(Ordering::Acquire) {
            return Some((idle_since + header, Quiet::Header));
        }
        match self.head_started.load(Ordering::Acquire) {
            0 => Some((idle_since + idle, Quiet::Idle)),
            t => Some((self.at(t) + header, Quiet::Header)),
        }
    }

    /// Bytes arrived.
    fn on_read(&self) {
        let now = nanos(self.epoch, Instant::now());
        self.last_read.store(now, Ordering::Relaxed);
        if self.busy.load(Ordering::Acquire) == 0
            && self
                .head_started
                .compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            // The header deadline replaces the idle one.
            self.changed.notify_one();
        }
    }

    /// A request is being served until the guard drops.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.answered.store(true, Ordering::Release);
        RequestGuard(self.clone())
    }
}

pub struct RequestGuard(Arc<Conn>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let c = &self.0;
        c.head_started.store(0, Ordering::Release);
        c.idle_since
            .store(nanos(c.epoch, Instant::now()), Ordering::Release);
        c.busy.fetch_sub(1, Ordering::AcqRel);
        c.changed.notify_one();
    }
}

/// A connection's I/O, noting when bytes arrive (for the header timeout of kept-alive
/// connections and for choosing whom to close at the cap).
pub struct Tracked<S> {
    inner: S,
    conn: Arc<Conn>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, conn: Arc<Conn>) -> Self {
        Self { inner, conn }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.on_read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_least_recently_active_idle_connection_makes_room() {
        let stats = WebStats::new(false, false);
        let conns = Conns::new(3, stats.clone());
        let a = conns.admit().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let b = conns.admit().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let c = conns.admit().unwrap();
        // a is busy, b read a byte since: c is the least recently active idle one... after
        // b's read, the order of activity is a (busy), c, b.
        let _req = a.conn.request();
        std::thread::sleep(Duration::from_millis(2));
        b.conn.on_read();
        let d = conns.admit().unwrap();
        assert_eq!(conns.open(), 3);
        assert_eq!(stats.drops(ConnDrop::EvictedIdle), 1);
        // c was told to go; a and b were not.
        let evicted = |s: &Slot| {
            let n = s.conn.evict.notified();
            tokio::pin!(n);
            n.as_mut().enable()
        };
        assert!(evicted(&c) && !evicted(&a) && !evicted(&b));
        drop(c); // its task ends: nothing more to free
        assert_eq!(conns.open(), 3);
        // Every connection busy: the new one is refused and counted.
        let _rb = b.conn.request();
        let _rd = d.conn.request();
        assert!(conns.admit().is_none());
        assert_eq!(stats.drops(ConnDrop::OverLimit), 1);
        drop((a, b, d));
        assert_eq!(conns.open(), 0);
    }

    #[test]
    fn deadlines_follow_the_first_request_idleness_and_a_started_header() {
        let conns = Conns::new(8, WebStats::new(false, false));
        let s = conns.admit().unwrap();
        let (h, i) = (Duration::from_secs(10), Duration::from_secs(60));
        let t0 = Instant::now();
        // First request: the header timeout from the start, bytes or not.
        let (t, why) = s.conn.deadline(h, i).unwrap();
        assert_eq!(why, Quiet::Header);
        assert!(t <= t0 + h && t > t0 + h - Duration::from_secs(1));
        s.conn.on_read();
        assert_eq!(s.conn.deadline(h, i).unwrap().1, Quiet::Header);
        // In progress: no deadline.
        let req = s.conn.request();
        assert_eq!(s.conn.deadline(h, i), None);
        drop(req);
        // Answered: idle until the next request's first byte, then its header timeout.
        let (t, why) = s.conn.deadline(h, i).unwrap();
        assert_eq!(why, Quiet::Idle);
        assert!(t > t0 + i - Duration::from_secs(1));
        s.conn.on_read();
        let (t, why) = s.conn.deadline(h, i).unwrap();
        assert_eq!(why, Quiet::Header);
        assert!(t < t0 + h + Duration::from_secs(1));
    }
}
