//! Histogram math on the kernel's buckets (schedlat_common::hist, native schema 3): merging,
//! percentiles, and re-bucketing for Prometheus. Pure functions, unit tested.
use schedlat_common::{
    Hist, NUM_BUCKETS, bucket_lower_ns, bucket_upper_ns,
    hist::{BUCKETS_PER_OCTAVE, OVERFLOW},
};
use serde::Serialize;

/// A histogram of nanosecond values in the kernel's bucket layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    pub buckets: Vec<u64>,
    pub sum_ns: u64,
    pub max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; NUM_BUCKETS],
            sum_ns: 0,
            max_ns: 0,
        }
    }
}

impl From<&Hist> for Histogram {
    fn from(h: &Hist) -> Self {
        Self {
            buckets: h.buckets.to_vec(),
            sum_ns: h.sum_ns,
            max_ns: h.max_ns,
        }
    }
}

/// The one percentile rule for every histogram schedlat prints (kernel histograms and the Go
/// runtime's): take the bucket holding the rank-th value (rank = ceil(q * count), at least 1)
/// and interpolate linearly inside it, assuming its values spread evenly from `lo` to `hi`
/// (inclusive ns bounds), as Prometheus' `histogram_quantile` does. The error is at most one
/// bucket's width. `None` when there are no values, or when the rank falls in a bucket with no
/// upper bound (`hi` None: an overflow bucket whose largest value is unknown).
pub fn quantile(buckets: impl IntoIterator<Item = (u64, Option<u64>, u64)>, q: f64) -> Option<u64> {
    let buckets: Vec<_> = buckets.into_iter().filter(|b| b.2 > 0).collect();
    let count = buckets.iter().fold(0u64, |a, b| a.saturating_add(b.2));
    if count == 0 {
        return None;
    }
    let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
    let mut seen = 0u64;
    for (lo, hi, c) in buckets {
        if seen.saturating_add(c) >= rank {
            let hi = hi?.max(lo);
            let frac = (rank - seen) as f64 / c as f64;
            return Some((lo as f64 + (hi - lo) as f64 * frac) as u64);
        }
        seen += c;
    }
    None
}

impl Histogram {
    /// Record one value the way the kernel does (used by tests and fakes).
    pub fn record(&mut self, ns: u64) {
        self.buckets[schedlat_common::bucket_index(ns)] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a = a.saturating_add(*b);
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// What was recorded after `prev` (an earlier reading of the same cumulative histogram):
    /// bucket counts and sum subtract exactly. The kernel keeps only a running maximum, so the
    /// interval's maximum is exact when it rose past `prev`'s; otherwise it is bounded by the
    /// inclusive upper bound of the highest bucket that grew (within one bucket, 12.5%).
    pub fn since(&self, prev: &Histogram) -> Histogram {
        let buckets: Vec<u64> = self
            .buckets
            .iter()
            .zip(prev.buckets.iter().chain(std::iter::repeat(&0)))
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let max_ns = if self.max_ns > prev.max_ns {
            self.max_ns
        } else {
            buckets
                .iter()
                .rposition(|&c| c > 0)
                .map_or(0, |i| inclusive_upper_ns(i).min(self.max_ns))
        };
        Histogram {
            buckets,
            sum_ns: self.sum_ns.saturating_sub(prev.sum_ns),
            max_ns,
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0u64, |a, b| a.saturating_add(*b))
    }

    /// The value below which a fraction `q` (0..=1) of the recorded values lie, by
    /// [`quantile`]; the overflow bucket ends at the observed maximum, and the result never
    /// exceeds it.
    pub fn percentile(&self, q: f64) -> u64 {
        let buckets = self.buckets.iter().enumerate().map(|(i, &c)| {
            let lo = bucket_lower_ns(i);
            let hi = if i == OVERFLOW {
                self.max_ns.max(lo)
            } else {
                bucket_upper_ns(i)
            };
            (lo, Some(hi), c)
        });
        quantile(buckets, q).map_or(0, |v| v.min(self.max_ns))
    }

    /// Non-empty buckets as (inclusive upper bound in ns, count); the overflow bucket's bound is
    /// `u64::MAX`.
    pub fn nonzero_buckets(&self) -> Vec<BucketCount> {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, &count)| BucketCount {
                le_ns: inclusive_upper_ns(i),
                count,
            })
            .collect()
    }

    /// Cumulative Prometheus buckets `(le in seconds, cumulative count)` with `per_octave`
    /// buckets per power of two (1, 2, 4 or 8), excluding `+Inf` (the encoder adds it).
    ///
    /// A coarse bucket is a run of whole kernel buckets, so its `le` is exact: the inclusive
    /// upper bound of its last kernel bucket (values are integer ns, so `upper - 1`). Every
    /// bucket is present even when empty, so `rate()` and `histogram_quantile()` see a stable
    /// layout across scrapes.
    pub fn prometheus_buckets(&self, per_octave: u32) -> Vec<(f64, u64)> {
        // Kernel bucket k is native bucket k - 160 (a multiple of 8), so every `step`-th
        // kernel bucket ends on a power of 2^(step/8) seconds: per_octave 2 gives le = 2^(n/2) s.
        let step = (BUCKETS_PER_OCTAVE as u32 / per_octave.clamp(1, 8)) as usize;
        let mut out = Vec::with_capacity(2 + (NUM_BUCKETS - 2) / step);
        let mut cum = 0u64;
        for (i, &c) in self.buckets.iter().enumerate().take(OVERFLOW) {
            cum = cum.saturating_add(c);
            // Bucket 0 (< 1 µs) stands alone; then close a coarse bucket every `step`.
            if i == 0 || i % step == 0 {
                out.push((inclusive_upper_ns(i) as f64 / 1e9, cum));
            }
        }
        out
    }
}

/// Largest integer value bucket `i` can hold.
pub fn inclusive_upper_ns(i: usize) -> u64 {
    match bucket_upper_ns(i) {
        u64::MAX => u64::MAX,
        u => u - 1,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BucketCount {
    /// Inclusive upper bound; u64::MAX for the overflow bucket.
    pub le_ns: u64,
    pub count: u64,
}

/// Summary of a histogram for reports (the JSON `runqueue` / `futex` shape).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HistSummary {
    pub count: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub buckets: Vec<BucketCount>,
}

impl From<&Histogram> for HistSummary {
    fn from(h: &Histogram) -> Self {
        Self {
            count: h.count(),
            sum_ns: h.sum_ns,
            max_ns: h.max_ns,
            p50_ns: h.percentile(0.50),
            p90_ns: h.percentile(0.90),
            p99_ns: h.percentile(0.99),
            buckets: h.nonzero_buckets(),
        }
    }
}

/// One row of a compact histogram: the values in `[lo_ns, hi_ns)`; `hi_ns` None for the
/// overflow row (no upper bound).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OctaveRow {
    pub lo_ns: u64,
    pub hi_ns: Option<u64>,
    pub count: u64,
}

/// Rows of a compact histogram: the zero bucket (up to 2^-20 s), one per power of two of
/// seconds up to 32 s (8 kernel buckets each), and the overflow.
pub const OCTAVE_ROWS: usize = 2 + (OVERFLOW - 1) / BUCKETS_PER_OCTAVE;

/// The compact row of kernel bucket `i`. A power of two of seconds is a kernel bucket
/// boundary, so a row is a sum of whole buckets and its bounds ([`octave_bounds`]) are exact.
pub fn octave_of_bucket(i: usize) -> usize {
    match i {
        0 => 0,
        OVERFLOW.. => OCTAVE_ROWS - 1,
        _ => 1 + (i - 1) / BUCKETS_PER_OCTAVE,
    }
}

/// `[lo, hi)` in ns of compact row `r`: `[0, 954)` (up to 2^-20 s), then the integers in
/// `(2^(k-1), 2^k]` s; `hi` None for the overflow row.
pub fn octave_bounds(r: usize) -> (u64, Option<u64>) {
    if r == 0 {
        return (0, Some(bucket_upper_ns(0)));
    }
    if r >= OCTAVE_ROWS - 1 {
        return (bucket_lower_ns(OVERFLOW), None);
    }
    (
        bucket_lower_ns(1 + (r - 1) * BUCKETS_PER_OCTAVE),
        Some(bucket_upper_ns(r * BUCKETS_PER_OCTAVE)),
    )
}

/// A histogram's counts per compact row.
pub fn octave_counts(h: &Histogram) -> [u64; OCTAVE_ROWS] {
    let mut counts = [0u64; OCTAVE_ROWS];
    for (i, &c) in h.buckets.iter().enumerate() {
        let r = octave_of_bucket(i);
        counts[r] = counts[r].saturating_add(c);
    }
    counts
}

/// Folds kernel buckets (as [`HistSummary::buckets`]: inclusive upper bounds) into one row per
/// power of two of seconds, runqlat's shape: the zero bucket, then `(2^(k-1), 2^k]` s up to
/// 32 s, then the overflow row.
pub fn fold_octaves(buckets: &[BucketCount]) -> Vec<OctaveRow> {
    let mut counts = [0u64; OCTAVE_ROWS];
    for b in buckets {
        let r = octave_of_bucket(schedlat_common::bucket_index(b.le_ns));
        counts[r] = counts[r].saturating_add(b.count);
    }
    trimmed_rows(&counts, octave_bounds)
}

/// Rows for a power of two of nanoseconds: `[0, 1024)`, then `[2^k, 2^(k+1))` ns.
const POW2_NS_ROWS: usize = 64 - 10 + 1;

/// Folds buckets given as (lower bound in ns, count) into one row per power of two of
/// nanoseconds: `[0, 1024)`, then `[2^k, 2^(k+1))`. Exact for bucket layouts that never straddle
/// a power of two of ns, such as the Go runtime's timeHistogram (runtime/histogram.go); the
/// kernel's buckets fold by seconds instead ([`fold_octaves`]).
pub fn fold_pow2_ns(buckets: impl IntoIterator<Item = (u64, u64)>) -> Vec<OctaveRow> {
    let mut counts = [0u64; POW2_NS_ROWS];
    for (lo, count) in buckets {
        let r = if lo < 1024 {
            0
        } else {
            (63 - lo.leading_zeros()) as usize - 9
        };
        counts[r] = counts[r].saturating_add(count);
    }
    trimmed_rows(&counts, |r| {
        if r == 0 {
            (0, Some(1024))
        } else {
            let lo = 1u64 << (r + 9);
            (lo, lo.checked_mul(2))
        }
    })
}

/// Rows from the first non-empty one to the last, empty rows between them kept so the shape
/// reads true.
fn trimmed_rows(counts: &[u64], bounds: impl Fn(usize) -> (u64, Option<u64>)) -> Vec<OctaveRow> {
    let (Some(first), Some(last)) = (
        counts.iter().position(|&c| c > 0),
        counts.iter().rposition(|&c| c > 0),
    ) else {
        return Vec::new();
    };
    (first..=last)
        .map(|r| {
            let (lo_ns, hi_ns) = bounds(r);
            OctaveRow {
                lo_ns,
                hi_ns,
                count: counts[r],
            }
        })
        .collect()
}

/// Human-readable duration: 1.23ms, 45.6µs, 2.00s.
pub fn fmt_ns(ns: u64) -> String {
    let n = ns as f64;
    if ns == u64::MAX {
        "inf".into()
    } else if n >= 1e9 {
        format!("{:.2}s", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2}ms", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}µs", n / 1e3)
    } else {
        format!("{ns}ns")
    }
}

#[cfg(test)]
mod tests {
    use num_bigint::BigUint;
    use schedlat_common::{
        bucket_index,
        hist::{MANTISSA, NATIVE_OFFSET, TOP_NS, ZERO_NS, ZERO_THRESHOLD_SECONDS, native_index},
    };

    use super::*;

    /// Exact reference: `ns` nanoseconds is at most the native schema-3 boundary `2^(n/8)` s iff
    /// `ns^8 <= 1e72 * 2^n` (both sides integers after moving 2^n to the side it is whole on).
    fn at_most_boundary(ns: u64, n: i32) -> bool {
        let lhs = BigUint::from(ns).pow(8);
        let e72 = BigUint::from(10u32).pow(72);
        if n >= 0 {
            lhs <= e72 << n as usize
        } else {
            lhs << (-n) as usize <= e72
        }
    }

    /// The native bucket index of `ns` by the definition, `(2^((n-1)/8), 2^(n/8)]` seconds.
    fn native_bucket_exact(ns: u64) -> i32 {
        // Bisection over the index range around the value's rough position.
        let (mut lo, mut hi) = (-400i32, 400i32);
        while lo < hi {
            let mid = (lo + hi).div_euclid(2);
            if at_most_boundary(ns, mid) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    }

    /// The same as Prometheus' Go client computes it for a float observation (client_golang
    /// histogram.go: `frexp`, then a search in the schema's bounds table).
    fn native_bucket_go(ns: u64) -> i32 {
        const BOUNDS: [f64; 8] = [
            0.5,
            0.5452538663326288,
            0.5946035575013605,
            0.6484197773255048,
            0.7071067811865475,
            0.7711054127039704,
            0.8408964152537144,
            0.9170040432046711,
        ];
        let v = ns as f64 / 1e9;
        // frexp: v = frac * 2^exp, frac in [0.5, 1).
        let exp = v.log2().floor() as i32 + 1;
        let mut frac = v / 2f64.powi(exp);
        let mut exp = exp;
        if frac >= 1.0 {
            frac /= 2.0;
            exp += 1;
        } else if frac < 0.5 {
            frac *= 2.0;
            exp -= 1;
        }
        // sort.SearchFloat64s: the first bound >= frac, or 8 past the last one.
        BOUNDS.iter().position(|&b| b >= frac).unwrap_or(8) as i32 + (exp - 1) * 8
    }

    #[test]
    fn mantissas_are_exact_eighth_roots() {
        // MANTISSA[s] = floor(m * 2^63) with m^8 = 1953125^8 * 2^j / 2^(8k): check
        // M^8 <= m^8 * 2^504 < (M + 1)^8 with integers only.
        for (s, &m) in MANTISSA.iter().enumerate() {
            let (j, k) = if s == 7 { (0, 20) } else { (s + 1, 21) };
            let target = (BigUint::from(1_953_125u32).pow(8) << (j + 8 * (63 - k))) as BigUint;
            assert!(BigUint::from(m).pow(8) <= target, "MANTISSA[{s}] too large");
            assert!(
                BigUint::from(m + 1).pow(8) > target,
                "MANTISSA[{s}] too small"
            );
        }
    }

    #[test]
    fn every_boundary_is_a_native_schema3_boundary() {
        // Each bucket's largest value is the integer part of 2^(n/8) s: it and the value below
        // are in native bucket n, the value above in n + 1, by the exact definition and by
        // Prometheus' own float computation alike.
        for i in 0..OVERFLOW {
            let top = inclusive_upper_ns(i);
            let n = native_index(i);
            for (v, want) in [(top - 1, n), (top, n), (top + 1, n + 1)] {
                assert_eq!(native_bucket_exact(v), want, "{v} ns (kernel bucket {i})");
                assert_eq!(native_bucket_go(v), want, "{v} ns, Go client's way");
            }
            assert_eq!(bucket_index(top), i, "top of {i}");
            assert_eq!(bucket_index(top + 1), i + 1, "above the top of {i}");
        }
        // Bucket 0 is native's zero bucket: [0, 2^-20 s].
        assert_eq!(ZERO_NS, (ZERO_THRESHOLD_SECONDS * 1e9) as u64);
        assert_eq!(native_bucket_exact(ZERO_NS), -NATIVE_OFFSET);
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(ZERO_NS), 0);
        assert_eq!(bucket_index(ZERO_NS + 1), 1);
        assert_eq!(inclusive_upper_ns(NATIVE_OFFSET as usize), 1_000_000_000);
        assert_eq!(bucket_index(TOP_NS), OVERFLOW - 1);
        assert_eq!(bucket_index(TOP_NS + 1), OVERFLOW);
        assert_eq!(bucket_index(u64::MAX), OVERFLOW);
    }

    #[test]
    fn powers_of_two_of_ns_fold_go_buckets_exactly() {
        let rows = fold_pow2_ns([(0, 1), (512, 2), (1024, 3), (1536, 4), (4096, 5)]);
        let got: Vec<(u64, Option<u64>, u64)> =
            rows.iter().map(|r| (r.lo_ns, r.hi_ns, r.count)).collect();
        assert_eq!(
            got,
            [
                (0, Some(1024), 3),
                (1024, Some(2048), 7),
                (2048, Some(4096), 0),
                (4096, Some(8192), 5)
            ]
        );
        assert_eq!(fold_pow2_ns([(u64::MAX, 1)])[0].hi_ns, None);
        assert!(fold_pow2_ns([]).is_empty());
    }

    #[test]
    fn bucket_bounds_contain_their_values() {
        // Every boundary value and its neighbours land in the bucket whose range holds them.
        for i in 0..NUM_BUCKETS {
            let lo = bucket_lower_ns(i);
            assert_eq!(bucket_index(lo), i, "lower bound of {i}");
            let hi = inclusive_upper_ns(i);
            assert_eq!(bucket_index(hi), i, "inclusive upper bound of {i}");
            if i + 1 < NUM_BUCKETS {
                assert_eq!(bucket_upper_ns(i), bucket_lower_ns(i + 1));
            }
        }
    }

    #[test]
    fn buckets_are_eight_per_octave_and_cover_the_range() {
        for i in 1..OVERFLOW {
            let (lo, hi) = (bucket_lower_ns(i), bucket_upper_ns(i));
            assert!(hi > lo);
            // 2^(1/8) - 1 = 9.05%, give or take the integer rounding at the bottom.
            let width = (hi - lo) as f64 / (lo - 1) as f64;
            assert!(width < 0.0915, "bucket {i} [{lo},{hi}) wider than 2^(1/8)");
        }
        assert!(bucket_upper_ns(0) <= 1_000); // 1 µs or finer at the bottom
        assert!(bucket_lower_ns(OVERFLOW) >= 30_000_000_000); // >= 30 s before overflow
    }

    #[test]
    fn index_matches_the_exact_definition_between_boundaries() {
        let mut v = 1u64;
        while v < 1 << 40 {
            for d in [0, 1, 7, 999] {
                let x = v + d;
                let i = bucket_index(x);
                assert!(
                    bucket_lower_ns(i) <= x && (x < bucket_upper_ns(i) || i == OVERFLOW),
                    "{x}"
                );
                if (1..OVERFLOW).contains(&i) {
                    assert_eq!(native_bucket_exact(x), native_index(i), "{x}");
                }
            }
            v = v * 3 / 2 + 1;
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(ms * 1_000_000);
        }
        assert_eq!(h.count(), 100);
        let within = |got: u64, want: u64| {
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(err <= 0.125, "got {got} want {want}");
        };
        within(h.percentile(0.5), 50_000_000);
        within(h.percentile(0.9), 90_000_000);
        within(h.percentile(0.99), 99_000_000);
        assert_eq!(h.percentile(1.0), 100_000_000);
        assert_eq!(Histogram::default().percentile(0.5), 0);
    }

    #[test]
    fn percentile_never_exceeds_max_and_single_value_is_exact_bucket() {
        let mut h = Histogram::default();
        h.record(5_000_000);
        let p = h.percentile(0.5);
        assert!(p <= 5_000_000);
        assert_eq!(bucket_index(p), bucket_index(5_000_000));
        let mut o = Histogram::default();
        o.record(100_000_000_000); // overflow
        assert_eq!(o.percentile(0.99), 100_000_000_000);
    }

    #[test]
    fn prometheus_buckets_are_cumulative_and_values_land_in_the_right_le() {
        let mut h = Histogram::default();
        let values = [
            500,
            1024,
            1500,
            2047,
            2048,
            1_000_000,
            33_000_000,
            40_000_000_000,
        ];
        for v in values {
            h.record(v);
        }
        for per_octave in [1, 2, 4, 8] {
            let b = h.prometheus_buckets(per_octave);
            assert_eq!(b.len(), 1 + (OVERFLOW - 1) / 8 * per_octave as usize);
            for w in b.windows(2) {
                assert!(w[0].0 < w[1].0, "le increasing");
                assert!(w[0].1 <= w[1].1, "cumulative");
            }
            // For every le, the cumulative count equals the number of values <= le.
            for (le, cum) in &b {
                let want = values.iter().filter(|&&v| (v as f64) / 1e9 <= *le).count() as u64;
                assert_eq!(*cum, want, "le={le} per_octave={per_octave}");
            }
            // The overflow value is only in +Inf (count minus the last bucket).
            assert_eq!(h.count() - b.last().unwrap().1, 1);
        }
    }

    #[test]
    fn octaves_fold_whole_buckets_and_keep_the_gaps() {
        let mut h = Histogram::default();
        // In the zero bucket (<= 953 ns), three values in (2^-19 s, 2^-18 s] = [1908, 3814]
        // ns from different buckets, one exactly at 2^-10 s (its row's top), one just above it
        // (the next row's bottom), and one overflow.
        let top = 976_562; // floor(2^-10 s in ns)
        for v in [5, 953, 1908, 3000, 3814, top, top + 1, 1 << 40] {
            h.record(v);
        }
        let rows = fold_octaves(&HistSummary::from(&h).buckets);
        assert_eq!(
            rows.len(),
            27,
            "zero bucket through overflow, every row in between"
        );
        assert_eq!(
            rows[0],
            OctaveRow {
                lo_ns: 0,
                hi_ns: Some(954),
                count: 2
            }
        );
        assert_eq!(rows[1].count, 0, "(2^-20 s, 2^-19 s] is empty but shown");
        assert_eq!(
            (rows[2].lo_ns, rows[2].hi_ns, rows[2].count),
            (1908, Some(3815), 3)
        );
        let at = |lo: u64| rows.iter().find(|r| r.lo_ns == lo).unwrap().count;
        assert_eq!(at(488_282), 1, "2^-10 s ends its row (2^-11 s, 2^-10 s]");
        assert_eq!(at(top + 1), 1, "just above 2^-10 s starts the next row");
        let last = rows.last().unwrap();
        assert_eq!((last.lo_ns, last.hi_ns, last.count), (TOP_NS + 1, None, 1));
        assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), h.count());
        // Rows tile the range: each starts where the previous ended.
        for w in rows.windows(2) {
            assert_eq!(w[0].hi_ns, Some(w[1].lo_ns));
        }
    }

    #[test]
    fn octaves_of_a_narrow_histogram_start_and_end_at_its_data() {
        let mut h = Histogram::default();
        h.record(5_000);
        h.record(40_000);
        let rows = fold_octaves(&HistSummary::from(&h).buckets);
        // 5 µs is in (2^-18 s, 2^-17 s] = [3815, 7629] ns, 40 µs in (2^-15 s, 2^-14 s] =
        // [30518, 61035] ns: 4 rows, 2 empty between.
        let got: Vec<(u64, u64)> = rows.iter().map(|r| (r.lo_ns, r.count)).collect();
        assert_eq!(got, [(3815, 1), (7630, 0), (15259, 0), (30518, 1)]);
        assert!(fold_octaves(&[]).is_empty());
    }

    #[test]
    fn since_subtracts_and_bounds_the_max() {
        let mut before = Histogram::default();
        before.record(50_000_000);
        before.record(3_000);
        let mut after = before.clone();
        after.record(3_100);
        after.record(10_000);
        let d = after.since(&before);
        assert_eq!(d.count(), 2);
        assert_eq!(d.sum_ns, 13_100);
        // The running max (50 ms) is from before: the interval's max is its highest bucket's
        // upper bound, which holds 10 µs.
        assert!(
            d.max_ns >= 10_000 && d.max_ns < 10_000 * 9 / 8 + 1,
            "{}",
            d.max_ns
        );
        assert_eq!(bucket_index(d.max_ns), bucket_index(10_000));
        // A new maximum is exact.
        after.record(60_000_000);
        assert_eq!(after.since(&before).max_ns, 60_000_000);
        assert_eq!(after.since(&after), Histogram::default());
    }

    #[test]
    fn merge_adds() {
        let mut a = Histogram::default();
        a.record(10_000);
        let mut b = Histogram::default();
        b.record(20_000);
        b.record(30_000);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.sum_ns, 60_000);
        assert_eq!(a.max_ns, 30_000);
    }
}
