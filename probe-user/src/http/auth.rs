//! Basic auth for /metrics: bcrypt hashes from the web config, a bounded cache of verified
//! credentials, failed checks limited by [`FailureLimiter`] and run on a thread of their own
//! with a bounded queue, and unknown names checked against a dummy of a real user's cost.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex, OnceLock,
        mpsc::{SyncSender, TrySendError, sync_channel},
    },
    time::Instant,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use tokio::sync::oneshot;
use tracing::{debug, error};

use super::{
    limiter::FailureLimiter,
    stats::{AuthFailure, Shed, WebStats},
};

/// Successful verifications remembered, at most (bcrypt costs ~50-250 ms per check by design;
/// a scraper sends the same credentials every time).
const AUTH_CACHE_MAX: usize = 256;
/// Password checks waiting for the checking thread, at most; more are answered 503. At cost
/// 12 (~0.3 s a check here) that is ~1 s of waiting.
const CHECK_QUEUE: usize = 4;

pub struct BasicAuth {
    verifier: Arc<Verifier>,
    /// The queue of the thread that runs bcrypt, so failed checks never take the blocking
    /// threads renders use. Started at the first check, from a runtime thread: a thread
    /// copies its creator's capabilities, and those have been dropped by then.
    queue: OnceLock<Option<SyncSender<Job>>>,
    limiter: FailureLimiter,
    stats: Arc<WebStats>,
}

struct Job {
    user: String,
    password: String,
    done: oneshot::Sender<bool>,
}

/// The users' hashes and what checking them needs (shared with the checking thread).
struct Verifier {
    users: HashMap<String, String>,
    /// SHA-256 of (user, password) pairs that verified: the plaintext is never kept.
    cache: Mutex<HashSet<[u8; 32]>>,
    /// A hash of a random password for each cost among the users' hashes: an unknown name is
    /// checked against one of them, so its answer takes as long as some real user's would.
    dummies: BTreeMap<u32, String>,
    /// The users' costs, one per user: an unknown name stands in for one of them.
    costs: Vec<u32>,
    /// Keys the choice for a name: the same name always gets the same cost (repeated tries
    /// cannot tell it apart), and without the config it cannot be predicted.
    key: [u8; 32],
}

impl Verifier {
    fn new(users: &BTreeMap<String, String>) -> Self {
        let costs: Vec<u32> = users
            .values()
            .map(|h| {
                h.parse::<bcrypt::HashParts>()
                    .map_or(bcrypt::DEFAULT_COST, |p| p.get_cost())
            })
            .collect();
        let dummies = costs
            .iter()
            .map(|&c| {
                let h = bcrypt::hash("schedlat-no-such-user", c).expect("valid bcrypt cost");
                (c, h)
            })
            .collect();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for (u, h) in users {
            ctx.update(u.as_bytes());
            ctx.update(&[0]);
            ctx.update(h.as_bytes());
            ctx.update(&[0]);
        }
        let key = ctx
            .finish()
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes");
        Self {
            users: users.clone().into_iter().collect(),
            cache: Mutex::new(HashSet::new()),
            dummies,
            costs,
            key,
        }
    }

    /// The dummy hash an unknown `user` is checked against.
    fn dummy_for(&self, user: &str) -> &str {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&self.key);
        ctx.update(user.as_bytes());
        let d = ctx.finish();
        let n = u64::from_le_bytes(d.as_ref()[..8].try_into().expect("8 bytes"));
        let cost = self.costs[(n % self.costs.len() as u64) as usize];
        &self.dummies[&cost]
    }

    /// The bcrypt check (constant-time compare); successes are cached, so every wrong guess
    /// pays the full cost.
    fn check(&self, user: &str, password: &str) -> bool {
        let (hash, known) = match self.users.get(user) {
            Some(h) => (h.as_str(), true),
            None => (self.dummy_for(user), false),
        };
        let ok = bcrypt::verify(password, hash).unwrap_or(false) && known;
        if ok {
            remember(
                &mut self.cache.lock().unwrap_or_else(|e| e.into_inner()),
                BasicAuth::cache_key(user, password),
            );
        }
        ok
    }
}

impl BasicAuth {
    /// None when there are no users (auth off).
    pub fn new(users: &BTreeMap<String, String>, stats: Arc<WebStats>) -> Option<Arc<Self>> {
        if users.is_empty() {
            return None;
        }
        Some(Arc::new(Self {
            verifier: Arc::new(Verifier::new(users)),
            queue: OnceLock::new(),
            limiter: FailureLimiter::new(),
            stats,
        }))
    }

    fn cache_key(user: &str, password: &str) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(user.as_bytes());
        ctx.update(&[0]);
        ctx.update(password.as_bytes());
        ctx.finish()
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes")
    }

    /// Verified before (cheap: one SHA-256).
    fn is_cached(&self, user: &str, password: &str) -> bool {
        let key = Self::cache_key(user, password);
        self.verifier
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key)
    }

    /// Checks on this thread (tests, and the fuzz target's callers).
    pub fn verify(&self, user: &str, password: &str) -> bool {
        self.is_cached(user, password) || self.verifier.check(user, password)
    }

    /// The check on the checking thread; None when its queue is full (nothing was checked).
    async fn check_queued(&self, user: String, password: String) -> Option<bool> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = sync_channel::<Job>(CHECK_QUEUE);
            let v = self.verifier.clone();
            let spawned = std::thread::Builder::new()
                .name("schedlat-bcrypt".into())
                .spawn(move || {
                    // Ends when the BasicAuth (the sender) goes.
                    while let Ok(job) = rx.recv() {
                        let ok = v.check(&job.user, &job.password);
                        let _ = job.done.send(ok);
                    }
                });
            match spawned {
                Ok(_) => Some(tx),
                Err(e) => {
                    error!(error = %e, "cannot start the password-checking thread: logins that are not cached are refused with 503");
                    None
                }
            }
        });
        let (done, answer) = oneshot::channel();
        let job = Job {
            user,
            password,
            done,
        };
        match queue.as_ref()?.try_send(job) {
            Ok(()) => Some(answer.await.unwrap_or(false)),
            Err(TrySendError::Full(_)) => None,
            Err(TrySendError::Disconnected(_)) => Some(false),
        }
    }

    #[cfg(test)]
    fn cached(&self) -> usize {
        self.verifier.cache.lock().unwrap().len()
    }
}

/// Bounded: when full, forget an arbitrary entry (it is re-verified on its next use).
fn remember(cache: &mut HashSet<[u8; 32]>, key: [u8; 32]) {
    if cache.len() >= AUTH_CACHE_MAX && !cache.contains(&key) {
        if let Some(k) = cache.iter().next().copied() {
            cache.remove(&k);
        }
    }
    cache.insert(key);
}

/// `Authorization: Basic base64(user:password)` -> (user, password).
pub fn parse_basic(v: &HeaderValue) -> Option<(String, String)> {
    let v = v.to_str().ok()?;
    let (scheme, b64) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let (u, p) = std::str::from_utf8(&raw).ok()?.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"schedlat\"")],
        "Unauthorized\n",
    )
        .into_response()
}

/// Middleware: 401 with a Basic challenge unless the request carries valid credentials; 429
/// without checking them when its address (or everyone) failed too often lately.
pub async fn require_auth(
    State(auth): State<Arc<BasicAuth>>,
    req: Request,
    next: Next,
) -> Response {
    let Some((user, password)) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(parse_basic)
    else {
        auth.stats.count_auth_failure(AuthFailure::NoCredentials);
        debug!("request without credentials");
        return unauthorized();
    };
    if auth.is_cached(&user, &password) {
        return next.run(req).await;
    }
    // Requests served without a socket (unit tests) share the unspecified address.
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| {
            c.0.ip().to_canonical()
        });
    if let Err(wait) = auth.limiter.reserve(ip, Instant::now()) {
        auth.stats.count_auth_failure(AuthFailure::RateLimited);
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        debug!(%ip, user, "too many failed logins: 429");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, secs.to_string())],
            format!("Too many failed logins: retry in {secs} s\n"),
        )
            .into_response();
    }
    // bcrypt is slow on purpose: on a thread of its own, off the async workers and off the
    // blocking threads renders use.
    let Some(ok) = auth.check_queued(user.clone(), password).await else {
        // Nothing was checked: no failure to charge.
        auth.limiter.refund(ip);
        auth.stats.count_shed(Shed::AuthQueueFull);
        debug!(%ip, user, "password checks queue full: 503");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            format!("{}\n", Shed::AuthQueueFull.message()),
        )
            .into_response();
    };
    if ok {
        auth.limiter.refund(ip);
        return next.run(req).await;
    }
    auth.stats.count_auth_failure(AuthFailure::WrongCredentials);
    debug!(%ip, user, "wrong credentials");
    unauthorized()
}

#[cfg(test)]
mod tests {
    use super::*;

    // bcrypt("secret", cost 4), made with the bcrypt crate; cost 4 keeps the tests fast.
    fn hash_of(pw: &str) -> String {
        bcrypt::hash(pw, 4).unwrap()
    }

    #[test]
    fn basic_auth_verifies_caches_and_bounds_the_cache() {
        let users = BTreeMap::from([("prom".to_string(), hash_of("secret"))]);
        let a = BasicAuth::new(&users, WebStats::new(true, false)).unwrap();
        assert!(!a.verify("prom", "wrong"));
        assert!(!a.verify("nobody", "secret"));
        assert!(!a.verify("prom", ""));
        assert_eq!(a.cached(), 0, "failures are not cached");
        assert!(a.verify("prom", "secret"));
        assert!(a.verify("prom", "secret"));
        assert_eq!(a.cached(), 1);
        // A password that only differs after the cached one is still checked.
        assert!(!a.verify("prom", "secret2"));
        // Many other verified pairs: the cache stays bounded, and a pair it forgot still
        // verifies (the slow way).
        for i in 0..AUTH_CACHE_MAX * 2 {
            remember(
                &mut a.verifier.cache.lock().unwrap(),
                BasicAuth::cache_key("x", &i.to_string()),
            );
            assert!(a.cached() <= AUTH_CACHE_MAX);
        }
        assert!(a.verify("prom", "secret"));
        assert_eq!(a.cached(), AUTH_CACHE_MAX);
        assert!(BasicAuth::new(&BTreeMap::new(), WebStats::new(false, false)).is_none());
    }

    #[test]
    fn basic_header_parsing() {
        let h = |s: &str| parse_basic(&HeaderValue::from_str(s).unwrap());
        assert_eq!(
            h("Basic cHJvbTpzZTpjcmV0"),
            Some(("prom".into(), "se:cret".into()))
        );
        assert_eq!(h("basic cHJvbTo="), Some(("prom".into(), String::new())));
        assert_eq!(h("Bearer cHJvbTpzZWNyZXQ="), None);
        assert_eq!(h("Basic !!!"), None);
        assert_eq!(h("Basic cHJvbQ=="), None, "no colon");
    }

    /// Users with hashes of different costs: an unknown name is checked against a dummy of
    /// exactly one of those costs, always the same for the same name, and the names spread
    /// over every cost (so a user name's answer time says nothing about whether it exists).
    #[test]
    fn unknown_names_get_a_dummy_of_a_configured_users_cost() {
        let users = BTreeMap::from([
            ("lo".to_string(), bcrypt::hash("a", 4).unwrap()),
            ("mid".to_string(), bcrypt::hash("b", 5).unwrap()),
            ("hi".to_string(), bcrypt::hash("c", 6).unwrap()),
        ]);
        let v = Verifier::new(&users);
        let cost = |h: &str| h.parse::<bcrypt::HashParts>().unwrap().get_cost();
        assert_eq!(v.dummies.keys().copied().collect::<Vec<_>>(), [4, 5, 6]);
        for (c, h) in &v.dummies {
            assert_eq!(cost(h), *c, "the dummy for cost {c} costs {c}");
        }
        let mut seen = BTreeMap::<u32, usize>::new();
        for i in 0..300 {
            let name = format!("nobody{i}");
            let d = v.dummy_for(&name);
            assert_eq!(d, v.dummy_for(&name), "{name}: the same dummy every time");
            *seen.entry(cost(d)).or_default() += 1;
        }
        assert_eq!(
            seen.keys().copied().collect::<Vec<_>>(),
            [4, 5, 6],
            "{seen:?}"
        );
        assert!(seen.values().all(|&n| n >= 60), "{seen:?}");
        // The old choice, the highest cost for every unknown name, told `lo` and `mid` apart
        // from names that do not exist.
    }

    /// Measured: for each configured cost, a wrong password of a user of that cost and an
    /// unknown name checked against that cost's dummy take comparable time, while the two
    /// costs differ by 16x (so the measurement can tell costs apart).
    #[test]
    fn unknown_names_take_as_long_as_wrong_passwords_of_the_same_cost() {
        let users = BTreeMap::from([
            ("lo".to_string(), bcrypt::hash("a", 5).unwrap()),
            ("hi".to_string(), bcrypt::hash("b", 9).unwrap()),
        ]);
        let v = Verifier::new(&users);
        let cost = |h: &str| h.parse::<bcrypt::HashParts>().unwrap().get_cost();
        let unknown = |c: u32| {
            (0..)
                .map(|i| format!("nobody{i}"))
                .find(|n| cost(v.dummy_for(n)) == c)
                .unwrap()
        };
        // This thread's CPU time, the fastest of several, the two interleaved: what the
        // computation costs, without the shared machine's preemptions and load changes.
        let cpu = || {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes the struct it is given.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
            ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
        };
        let time = |user: &str| {
            let t0 = cpu();
            assert!(!v.check(user, "wrong"));
            cpu() - t0
        };
        let fastest_pair = |known: &str, unknown: &str| {
            time(known);
            (0..9).fold((f64::INFINITY, f64::INFINITY), |(k, u), _| {
                (k.min(time(known)), u.min(time(unknown)))
            })
        };
        let (lo, lo_unknown) = fastest_pair("lo", &unknown(5));
        let (hi, hi_unknown) = fastest_pair("hi", &unknown(9));
        eprintln!(
            "fastest check: cost 5 known {lo:.5} s, unknown {lo_unknown:.5} s; cost 9 known {hi:.5} s, unknown {hi_unknown:.5} s"
        );
        assert!(hi > 4.0 * lo, "costs 5 and 9 not told apart: {lo} vs {hi}");
        for (known, unknown) in [(lo, lo_unknown), (hi, hi_unknown)] {
            let r = unknown / known;
            assert!((0.8..1.25).contains(&r), "unknown/known {r:.2}");
        }
    }
}
