//! Failed password checks, limited per client address and in total ([`FailureLimiter`]):
//! each costs a bcrypt computation.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Failed password checks allowed per client address: a burst of 5, then 2 per second.
const PER_CLIENT_BURST: f64 = 5.0;
const PER_CLIENT_RATE: f64 = 2.0;
/// And from all addresses together (an attacker may have many, e.g. an IPv6 range): at
/// bcrypt cost 10 each check is ~50-100 ms of CPU, so this caps wrong guesses at about one CPU.
const GLOBAL_BURST: f64 = 10.0;
const GLOBAL_RATE: f64 = 10.0;
/// Client addresses tracked at most. Full buckets are forgotten first (they hold nothing);
/// an address that finds no room is limited by the global budget alone.
const MAX_CLIENTS: usize = 4096;

/// A token bucket: one token per failed check, refilled at `rate` per second up to `burst`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            at: now,
        }
    }
    fn refill(&mut self, now: Instant, burst: f64, rate: f64) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.at = now;
    }
    /// Time until a token is there.
    fn wait(&self, rate: f64) -> Duration {
        Duration::from_secs_f64(((1.0 - self.tokens) / rate).max(0.0))
    }
}

/// Bounds what failed logins cost: each password check is reserved here first, and given
/// back if it succeeds, so only failures count against a client and the total. Credentials
/// that verified before (cached) never reach it: a scraper with the right password keeps
/// working while someone else's guesses are refused.
pub(super) struct FailureLimiter {
    state: Mutex<LimiterState>,
}

struct LimiterState {
    global: Bucket,
    clients: HashMap<IpAddr, Bucket>,
}

impl FailureLimiter {
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::new(LimiterState {
                global: Bucket::full(GLOBAL_BURST, Instant::now()),
                clients: HashMap::new(),
            }),
        }
    }

    /// Takes a token from the client's and the global budget for one password check, or
    /// says how long until one is there.
    pub(super) fn reserve(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let LimiterState { global, clients } = &mut *st;
        global.refill(now, GLOBAL_BURST, GLOBAL_RATE);
        if !clients.contains_key(&ip) && clients.len() >= MAX_CLIENTS {
            clients.retain(|_, b| {
                b.refill(now, PER_CLIENT_BURST, PER_CLIENT_RATE);
                b.tokens < PER_CLIENT_BURST
            });
        }
        let client = if clients.len() < MAX_CLIENTS || clients.contains_key(&ip) {
            let b = clients
                .entry(ip)
                .or_insert_with(|| Bucket::full(PER_CLIENT_BURST, now));
            b.refill(now, PER_CLIENT_BURST, PER_CLIENT_RATE);
            Some(b)
        } else {
            None
        };
        let client_wait = client
            .as_ref()
            .filter(|b| b.tokens < 1.0)
            .map(|b| b.wait(PER_CLIENT_RATE));
        let global_wait = (global.tokens < 1.0).then(|| global.wait(GLOBAL_RATE));
        if let Some(w) = client_wait.into_iter().chain(global_wait).max() {
            return Err(w);
        }
        if let Some(b) = client {
            b.tokens -= 1.0;
        }
        global.tokens -= 1.0;
        Ok(())
    }

    /// The check succeeded: it was no failure.
    pub(super) fn refund(&self, ip: IpAddr) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.global.tokens = (st.global.tokens + 1.0).min(GLOBAL_BURST);
        if let Some(b) = st.clients.get_mut(&ip) {
            b.tokens = (b.tokens + 1.0).min(PER_CLIENT_BURST);
        }
    }

    #[cfg(test)]
    pub(super) fn clients(&self) -> usize {
        self.state.lock().unwrap().clients.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn failed_checks_are_limited_per_client_then_refill() {
        let l = FailureLimiter::new();
        let t0 = Instant::now();
        for i in 0..PER_CLIENT_BURST as usize {
            assert_eq!(l.reserve(ip(1), t0), Ok(()), "failure {i} of the burst");
        }
        let wait = l.reserve(ip(1), t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs_f64(1.0 / PER_CLIENT_RATE),
            "{wait:?}"
        );
        // Another client is not affected.
        assert_eq!(l.reserve(ip(2), t0), Ok(()));
        // Refilled at PER_CLIENT_RATE per second: one more check after 1/rate s, not two.
        let t1 = t0 + Duration::from_secs_f64(1.0 / PER_CLIENT_RATE);
        assert_eq!(l.reserve(ip(1), t1), Ok(()));
        assert!(l.reserve(ip(1), t1).is_err());
        // A successful check gives its token back: it was no failure.
        l.refund(ip(1));
        assert_eq!(l.reserve(ip(1), t1), Ok(()));
    }

    #[test]
    fn failed_checks_are_limited_in_total_across_clients() {
        let l = FailureLimiter::new();
        let t0 = Instant::now();
        let mut allowed = 0;
        for i in 0..100u8 {
            if l.reserve(ip(i), t0).is_ok() {
                allowed += 1;
            }
        }
        assert_eq!(
            allowed, GLOBAL_BURST as usize,
            "one check each from 100 addresses"
        );
        // A second later GLOBAL_RATE more, whoever asks.
        let t1 = t0 + Duration::from_secs(1);
        let allowed = (100..200u8)
            .filter(|&i| l.reserve(ip(i), t1).is_ok())
            .count();
        assert_eq!(allowed, GLOBAL_RATE as usize);
    }

    #[test]
    fn tracked_clients_are_bounded() {
        let l = FailureLimiter::new();
        let t0 = Instant::now();
        // Far more addresses than tracked, over time (the global budget refilled for each).
        for i in 0..(MAX_CLIENTS as u32 * 3) {
            let a = IpAddr::V6(std::net::Ipv6Addr::from(u128::from(i)));
            let now = t0 + Duration::from_secs(u64::from(i));
            assert_eq!(l.reserve(a, now), Ok(()), "{i}");
            assert!(l.clients() <= MAX_CLIENTS);
        }
    }
}
