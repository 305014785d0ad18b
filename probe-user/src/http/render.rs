//! /metrics bodies: one render at a time per exposition format (text, protobuf: each has its
//! own single flight and shared body; the renders themselves queue on the daemon's state),
//! shared by the scrapes that arrive meanwhile; a body
//! that several scrapes shared answers further scrapes for a short time; a render that
//! panics fails its scrapes only, and one that hangs makes /healthz unhealthy instead of
//! piling up scrapes.
//!
//! A lone scraper always gets a render started after its request arrived (what it sees
//! reflects everything before it asked); only once scrapes overlap (a storm, or several
//! Prometheus replicas at once) may one get a body up to `metrics_cache_ms` old. The
//! blocking pool never holds more than one render per format: waiting scrapes are tasks, bounded
//! by `max_waiting_scrapes` and the render timeout, and answered 503 beyond them.
use std::{
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::sync::watch;
use tracing::error;

use super::stats::{RenderResult, Shed, WebStats};
use crate::exporter::proto::Format;

/// What makes a /metrics body (the daemon's kernel maps and Go readings), in the exposition
/// format a scraper asked for.
pub trait Render: Send + Sync + 'static {
    fn render(&self, format: Format) -> anyhow::Result<Vec<u8>>;
}

/// How a scrape is answered.
#[derive(Debug)]
pub enum Answer {
    Body(Bytes),
    /// The render failed or panicked: 500 with the reason.
    Failed(Arc<str>),
    /// Load shed: 503.
    Shed(Shed),
}

type Outcome = Result<Bytes, Arc<str>>;

pub struct Renders {
    source: Arc<dyn Render>,
    max_age: Duration,
    timeout: Duration,
    max_waiting: usize,
    stats: Arc<WebStats>,
    /// One single flight and shared body per exposition format ([`Format::index`]).
    state: Mutex<[State; Format::COUNT]>,
}

#[derive(Default)]
struct State {
    /// The last good body, when its render ended, and whether several scrapes shared it
    /// (only then is it served again).
    last: Option<(Bytes, Instant, bool)>,
    running: Option<Running>,
    generation: u64,
}

struct Running {
    generation: u64,
    started: Instant,
    done: watch::Receiver<Option<Outcome>>,
    /// Scrapes waiting for it, the one that started it included.
    waiting: usize,
    /// Some scrape joined it.
    shared: bool,
}

impl Renders {
    pub fn new(
        source: Arc<dyn Render>,
        max_age: Duration,
        timeout: Duration,
        max_waiting: usize,
        stats: Arc<WebStats>,
    ) -> Arc<Self> {
        Arc::new(Self {
            source,
            max_age,
            timeout,
            max_waiting,
            stats,
            state: Mutex::new(Default::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, [State; Format::COUNT]> {
        // Never held across a render: a panic cannot poison it, but do not trust that.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The body for one scrape in `format`.
    pub async fn scrape(self: &Arc<Self>, format: Format) -> Answer {
        let (generation, mut done) = {
            let mut all = self.state();
            let st = &mut all[format.index()];
            if let Some(r) = &mut st.running {
                if r.waiting >= self.max_waiting {
                    self.stats.count_shed(Shed::RenderQueueFull);
                    return Answer::Shed(Shed::RenderQueueFull);
                }
                r.waiting += 1;
                r.shared = true;
                self.stats.count_shared();
                (r.generation, r.done.clone())
            } else if let Some((body, _, _)) = st
                .last
                .as_ref()
                .filter(|(_, at, shared)| *shared && at.elapsed() < self.max_age)
            {
                self.stats.count_shared();
                return Answer::Body(body.clone());
            } else {
                st.generation += 1;
                let generation = st.generation;
                let (tx, done) = watch::channel(None);
                st.running = Some(Running {
                    generation,
                    started: Instant::now(),
                    done: done.clone(),
                    waiting: 1,
                    shared: false,
                });
                let me = self.clone();
                // Single flight: this is the only task the blocking pool gets from scrapes.
                tokio::task::spawn_blocking(move || me.run(format, generation, tx));
                (generation, done)
            }
        };
        let res = tokio::time::timeout(self.timeout, done.wait_for(Option::is_some)).await;
        let outcome = match res {
            Ok(Ok(v)) => v.clone(),
            Ok(Err(_)) => Some(Err("the render task ended without an answer".into())),
            Err(_) => None,
        };
        if let Some(r) = self.state()[format.index()]
            .running
            .as_mut()
            .filter(|r| r.generation == generation)
        {
            r.waiting -= 1;
        }
        match outcome {
            Some(Ok(b)) => Answer::Body(b),
            Some(Err(e)) => Answer::Failed(e),
            None => {
                self.stats.count_shed(Shed::RenderTimeout);
                Answer::Shed(Shed::RenderTimeout)
            }
        }
    }

    fn run(&self, format: Format, generation: u64, tx: watch::Sender<Option<Outcome>>) {
        let out = std::panic::catch_unwind(AssertUnwindSafe(|| self.source.render(format)));
        let outcome: Outcome = match out {
            Ok(Ok(s)) => {
                self.stats.count_render(RenderResult::Ok);
                Ok(Bytes::from(s))
            }
            Ok(Err(e)) => {
                self.stats.count_render(RenderResult::Error);
                error!(error = %format!("{e:#}"), "scrape failed");
                Err(format!("scrape failed: {e:#}").into())
            }
            Err(panic) => {
                self.stats.count_render(RenderResult::Panic);
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                error!(panic = %msg, "render panicked: this scrape fails, the next renders afresh");
                Err(format!("scrape failed: the render panicked: {msg}").into())
            }
        };
        {
            let mut all = self.state();
            let st = &mut all[format.index()];
            let ours = st.running.take_if(|r| r.generation == generation);
            if let Ok(b) = &outcome {
                let shared = ours.is_some_and(|r| r.shared);
                st.last = Some((b.clone(), Instant::now(), shared));
            }
        }
        let _ = tx.send(Some(outcome));
    }

    /// How long the render in progress has run, if longer than the render timeout.
    pub fn stuck(&self) -> Option<Duration> {
        let all = self.state();
        let age = all
            .iter()
            .filter_map(|st| Some(st.running.as_ref()?.started.elapsed()))
            .max()?;
        (age > self.timeout).then_some(age)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Condvar,
        atomic::{AtomicU64, Ordering},
    };

    use super::*;

    /// Counts renders; each waits until `gate` opens (when set), and panics when asked.
    #[derive(Default)]
    struct Fake {
        renders: AtomicU64,
        panics_left: AtomicU64,
        gate: Mutex<Option<bool>>,
        opened: Condvar,
    }

    impl Render for Fake {
        fn render(&self, _: Format) -> anyhow::Result<Vec<u8>> {
            self.text().map(String::into_bytes)
        }
    }

    impl Fake {
        fn text(&self) -> anyhow::Result<String> {
            let n = self.renders.fetch_add(1, Ordering::SeqCst) + 1;
            let mut g = self.gate.lock().unwrap();
            while *g == Some(false) {
                g = self.opened.wait(g).unwrap();
            }
            drop(g);
            if self
                .panics_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| p.checked_sub(1))
                .is_ok()
            {
                panic!("planted panic in render {n}");
            }
            Ok(format!("render {n}\n"))
        }
    }

    impl Fake {
        fn close(&self) {
            *self.gate.lock().unwrap() = Some(false);
        }
        fn open(&self) {
            *self.gate.lock().unwrap() = Some(true);
            self.opened.notify_all();
        }
    }

    fn renders(
        fake: &Arc<Fake>,
        max_age_ms: u64,
        timeout_ms: u64,
        max_waiting: usize,
    ) -> Arc<Renders> {
        Renders::new(
            fake.clone(),
            Duration::from_millis(max_age_ms),
            Duration::from_millis(timeout_ms),
            max_waiting,
            WebStats::new(false, false),
        )
    }

    fn body(a: Answer) -> String {
        match a {
            Answer::Body(b) => String::from_utf8(b.to_vec()).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_scraper_always_gets_a_fresh_render() {
        let fake = Arc::new(Fake::default());
        let r = renders(&fake, 60_000, 5_000, 10);
        assert_eq!(body(r.scrape(Format::Text).await), "render 1\n");
        assert_eq!(body(r.scrape(Format::Text).await), "render 2\n");
        assert_eq!(fake.renders.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_scrapes_share_one_render_and_then_a_recent_body() {
        let fake = Arc::new(Fake::default());
        let r = renders(&fake, 60_000, 5_000, 100);
        fake.close();
        let scrapes: Vec<_> = (0..20)
            .map(|_| {
                let r = r.clone();
                tokio::spawn(async move { r.scrape(Format::Text).await })
            })
            .collect();
        while r.state()[0].running.as_ref().map_or(0, |x| x.waiting) < 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        fake.open();
        for s in scrapes {
            assert_eq!(body(s.await.unwrap()), "render 1\n");
        }
        // A body 20 scrapes shared answers the next ones for a while, without a render.
        assert_eq!(body(r.scrape(Format::Text).await), "render 1\n");
        assert_eq!(body(r.scrape(Format::Text).await), "render 1\n");
        assert_eq!(
            fake.renders.load(Ordering::SeqCst),
            1,
            "one render for 22 scrapes"
        );
        assert_eq!(r.stats.shared(), 21);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_render_sheds_scrapes_and_shows_in_health_then_recovers() {
        let fake = Arc::new(Fake::default());
        let r = renders(&fake, 0, 200, 3);
        fake.close();
        let first = {
            let r = r.clone();
            tokio::spawn(async move { r.scrape(Format::Text).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(r.stuck(), None, "not stuck before the render timeout");
        let more: Vec<_> = (0..2)
            .map(|_| {
                let r = r.clone();
                tokio::spawn(async move { r.scrape(Format::Text).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Three waiting: the fourth is refused at once.
        assert!(matches!(
            r.scrape(Format::Text).await,
            Answer::Shed(Shed::RenderQueueFull)
        ));
        // The waiting ones give up after the render timeout, with 503.
        assert!(matches!(
            first.await.unwrap(),
            Answer::Shed(Shed::RenderTimeout)
        ));
        for m in more {
            assert!(matches!(
                m.await.unwrap(),
                Answer::Shed(Shed::RenderTimeout)
            ));
        }
        assert!(r.stuck().is_some_and(|d| d > Duration::from_millis(200)));
        assert_eq!(r.stats.sheds(Shed::RenderQueueFull), 1);
        assert_eq!(r.stats.sheds(Shed::RenderTimeout), 3);
        // Unstuck: healthy again, and the next scrape renders.
        fake.open();
        for _ in 0..100 {
            if r.stuck().is_none() && r.state()[0].running.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(r.stuck(), None);
        assert_eq!(body(r.scrape(Format::Text).await), "render 2\n");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_render_fails_one_scrape_and_the_next_one_renders() {
        let fake = Arc::new(Fake::default());
        fake.panics_left.store(1, Ordering::SeqCst);
        let r = renders(&fake, 0, 5_000, 10);
        match r.scrape(Format::Text).await {
            Answer::Failed(e) => assert!(e.contains("planted panic in render 1"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(body(r.scrape(Format::Text).await), "render 2\n");
        assert_eq!(body(r.scrape(Format::Text).await), "render 3\n");
        assert_eq!(r.stats.renders(RenderResult::Panic), 1);
        assert_eq!(r.stats.renders(RenderResult::Ok), 2);
    }
}
