//! Basic auth for /metrics: bcrypt hashes from the web config, a bounded cache of verified
//! credentials, and failed checks limited by [`FailureLimiter`].
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use tracing::debug;

use super::{
    limiter::FailureLimiter,
    stats::{AuthFailure, WebStats},
};

/// Successful verifications remembered, at most (bcrypt costs ~50-250 ms per check by design;
/// a scraper sends the same credentials every time).
const AUTH_CACHE_MAX: usize = 256;

pub struct BasicAuth {
    users: HashMap<String, String>,
    /// SHA-256 of (user, password) pairs that verified: the plaintext is never kept.
    cache: Mutex<HashSet<[u8; 32]>>,
    /// Checked for unknown users, so their answer takes as long as a wrong password.
    dummy_hash: String,
    limiter: FailureLimiter,
    stats: Arc<WebStats>,
}

impl BasicAuth {
    /// None when there are no users (auth off).
    pub fn new(users: &BTreeMap<String, String>, stats: Arc<WebStats>) -> Option<Arc<Self>> {
        if users.is_empty() {
            return None;
        }
        let cost = users
            .values()
            .filter_map(|h| h.parse::<bcrypt::HashParts>().ok())
            .map(|p| p.get_cost())
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        let dummy_hash = bcrypt::hash("schedlat-no-such-user", cost).expect("valid bcrypt cost");
        Some(Arc::new(Self {
            users: users.clone().into_iter().collect(),
            cache: Mutex::new(HashSet::new()),
            dummy_hash,
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
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key)
    }

    /// The bcrypt check (constant-time compare); successes are cached, so every wrong guess
    /// pays the full cost.
    fn check(&self, user: &str, password: &str) -> bool {
        let (hash, known) = match self.users.get(user) {
            Some(h) => (h.as_str(), true),
            None => (self.dummy_hash.as_str(), false),
        };
        let ok = bcrypt::verify(password, hash).unwrap_or(false) && known;
        if ok {
            remember(
                &mut self.cache.lock().unwrap_or_else(|e| e.into_inner()),
                Self::cache_key(user, password),
            );
        }
        ok
    }

    pub fn verify(&self, user: &str, password: &str) -> bool {
        self.is_cached(user, password) || self.check(user, password)
    }

    #[cfg(test)]
    fn cached(&self) -> usize {
        self.cache.lock().unwrap().len()
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
    let checker = auth.clone();
    let u = user.clone();
    // bcrypt is slow on purpose: keep it off the async workers.
    let ok = tokio::task::spawn_blocking(move || checker.check(&u, &password))
        .await
        .unwrap_or(false);
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
                &mut a.cache.lock().unwrap(),
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
}
