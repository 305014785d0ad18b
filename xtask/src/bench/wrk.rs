//! wrk against HTTP servers (its output: throughput, latency percentiles, errors) and the
//! minimal GET that scrapes them.
use std::{io::Read, time::Duration};

use anyhow::{Context, Result, bail};

/// A wrk flood of /metrics.
pub(super) struct Flood {
    pub(super) argv: String,
    pub(super) requests_per_sec: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) errors: Vec<String>,
    pub(super) rss_before_kb: u64,
    pub(super) rss_peak_kb: u64,
    pub(super) rss_after_kb: u64,
    pub(super) cpu_secs: f64,
}

/// `Requests/sec:  9876.54`, the `--latency` distribution (`     99%   12.34ms`), error lines.
pub(super) fn parse_wrk(out: &str) -> Option<Flood> {
    let percentile = |p: &str| {
        out.lines().find_map(|l| {
            let (pct, v) = l.trim().split_once(char::is_whitespace)?;
            (pct == p).then(|| duration_ms(v.trim()))?
        })
    };
    let requests_per_sec = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:")?.trim().parse().ok())?;
    let errors = out
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Non-2xx") || l.starts_with("Socket errors"))
        .map(str::to_owned)
        .collect();
    Some(Flood {
        argv: String::new(),
        requests_per_sec,
        p50_ms: percentile("50%")?,
        p99_ms: percentile("99%")?,
        errors,
        rss_before_kb: 0,
        rss_peak_kb: 0,
        rss_after_kb: 0,
        cpu_secs: 0.0,
    })
}

/// wrk's durations: `812.00us`, `1.23ms`, `2.00s`, `1.5m`.
fn duration_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1e3,
        "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        _ => return None,
    })
}

/// A minimal HTTP/1.1 GET on loopback; the body of a 200 answer.
pub(super) fn http_get(addr: &str, path: &str) -> Result<String> {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .with_context(|| format!("read the answer to GET {path}"))?;
    if !resp.starts_with("HTTP/1.1 200") {
        bail!(
            "GET http://{addr}{path}: {}",
            resp.lines().next().unwrap_or("no answer")
        );
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 2s test @ http://127.0.0.1:1/metrics\n  2 threads and 32 connections\n\
            \x20 Latency Distribution\n     50%    2.51ms\n     75%    3.10ms\n     90%  812.00us\n     99%    1.20s\n\
            \x20 20000 requests in 2.00s, 600.00MB read\nRequests/sec:  9999.50\nTransfer/sec:    300.00MB\n";
        let f = parse_wrk(out).unwrap();
        assert_eq!(f.requests_per_sec, 9999.5);
        assert_eq!(f.p50_ms, 2.51);
        assert_eq!(f.p99_ms, 1200.0);
        assert!(f.errors.is_empty());
        let bad = format!("{out}  Non-2xx or 3xx responses: 5\n");
        assert_eq!(
            parse_wrk(&bad).unwrap().errors,
            ["Non-2xx or 3xx responses: 5"]
        );
        assert_eq!(duration_ms("812.00us"), Some(0.812));
        assert_eq!(duration_ms("1.5m"), Some(90_000.0));
        assert_eq!(duration_ms("12"), None);
    }
}
