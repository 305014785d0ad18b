//! Bucket math of the Go runtime's `timeHistogram` (runtime/histogram.go), per Go version, and
//! the runtime/metrics view of it (timeHistogramMetricsBuckets, metrics.go).
//!
//! Read from the Go sources shipped with the toolchains the tests use:
//! * Go 1.19.8: `counts [45*16]uint64; underflow uint64`. Values below 16 ns get one bucket per
//!   ns; above, super-bucket s = bits.Len64(d) - 4 splits [2^(s+3), 2^(s+4)) into 16 sub-buckets.
//!   Values past the last bucket are clamped into it (no overflow field). The metric prepends
//!   underflow as [-Inf, 0) and the last bucket's upper bound is +Inf.
//! * Go 1.27.3: `counts [40*4]atomic.Uint64; underflow; overflow`. Bucket 0 is [0, 2^9) split
//!   in 4; bucket b >= 1 is [2^(b+7), 2^(b+8)) split in 4; overflow holds values >= 2^47 ns.
//!   The metric is underflow, counts..., overflow, with boundaries ending 2^47 ns, +Inf.

/// Which `timeHistogram` layout (and so which bucket math) a binary uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Scheme {
    /// Go 1.17 .. 1.19: 45 super-buckets x 16 sub-buckets, no overflow counter.
    SuperSub,
    /// Go 1.20 and later (checked up to 1.27): 2^9 .. 2^48 ns, 4 sub-buckets, overflow counter.
    MinMaxBits,
}

const SS_SUB_BITS: u32 = 4;
const SS_SUB: usize = 1 << SS_SUB_BITS;
const SS_SUPER: usize = 45;
const MM_MIN_BITS: u32 = 9;
/// Exclusive, like timeHistMaxBucketBits.
const MM_MAX_BITS: u32 = 48;
const MM_SUB_BITS: u32 = 2;
const MM_SUB: usize = 1 << MM_SUB_BITS;
const MM_NUM: usize = (MM_MAX_BITS - MM_MIN_BITS + 1) as usize;

impl Scheme {
    /// The scheme whose `timeHistogram` has `counts` of this length and (or not) an `overflow`
    /// field; None for a layout this code does not know.
    pub fn from_shape(counts_len: u64, has_overflow: bool) -> Option<Scheme> {
        match (counts_len, has_overflow) {
            (n, false) if n == (SS_SUPER * SS_SUB) as u64 => Some(Scheme::SuperSub),
            (n, true) if n == (MM_NUM * MM_SUB) as u64 => Some(Scheme::MinMaxBits),
            _ => None,
        }
    }

    /// Length of `timeHistogram.counts`.
    pub fn counts_len(self) -> usize {
        match self {
            Scheme::SuperSub => SS_SUPER * SS_SUB,
            Scheme::MinMaxBits => MM_NUM * MM_SUB,
        }
    }

    /// Inclusive lower bound in ns of `counts[i]` (the metric's boundary i+1).
    pub fn lower_ns(self, i: usize) -> u64 {
        match self {
            Scheme::SuperSub => {
                if i < SS_SUB {
                    i as u64
                } else {
                    let s = (i / SS_SUB) as u32;
                    let j = (i % SS_SUB) as u64;
                    (1u64 << (s - 1 + SS_SUB_BITS)) | (j << (s - 1))
                }
            }
            Scheme::MinMaxBits => {
                let b = (i / MM_SUB) as u32;
                let j = (i % MM_SUB) as u64;
                if b == 0 {
                    j << (MM_MIN_BITS - 1 - MM_SUB_BITS)
                } else {
                    let bit = b + MM_MIN_BITS - 1;
                    (1u64 << (bit - 1)) | (j << (bit - 1 - MM_SUB_BITS))
                }
            }
        }
    }

    /// Exclusive upper bound in ns of `counts[i]`; None for +Inf (SuperSub's clamping last bucket).
    pub fn upper_ns(self, i: usize) -> Option<u64> {
        if i + 1 < self.counts_len() {
            return Some(self.lower_ns(i + 1));
        }
        match self {
            Scheme::SuperSub => None,
            Scheme::MinMaxBits => Some(1u64 << (MM_MAX_BITS - 1)),
        }
    }

    /// Index into `counts` that the runtime's `record` uses for a duration >= 0 (a port of
    /// timeHistogram.record; None = the overflow counter). Used to test the bounds above.
    pub fn record_index(self, d: u64) -> Option<usize> {
        let len = |x: u64| 64 - x.leading_zeros();
        match self {
            Scheme::SuperSub => {
                if d < SS_SUB as u64 {
                    return Some(d as usize);
                }
                let sup = (len(d) - SS_SUB_BITS) as usize;
                if sup * SS_SUB >= self.counts_len() {
                    return Some(self.counts_len() - 1);
                }
                let sub = ((d >> (sup - 1)) % SS_SUB as u64) as usize;
                Some(sup * SS_SUB + sub)
            }
            Scheme::MinMaxBits => {
                let l = len(d);
                let (bit, bucket) = if l < MM_MIN_BITS {
                    (MM_MIN_BITS, 0)
                } else {
                    (l, (l - MM_MIN_BITS + 1) as usize)
                };
                if bucket >= MM_NUM {
                    return None;
                }
                let sub = ((d >> (bit - 1 - MM_SUB_BITS)) % MM_SUB as u64) as usize;
                Some(bucket * MM_SUB + sub)
            }
        }
    }

    /// Boundaries in seconds exactly as runtime/metrics reports them for this histogram
    /// (timeHistogramMetricsBuckets): -Inf, each bucket's lower bound, then the end.
    pub fn metrics_boundaries(self) -> Vec<f64> {
        let mut b = Vec::with_capacity(self.counts_len() + 3);
        b.push(f64::NEG_INFINITY);
        // Same arithmetic as Go (float64(nanos) / 1e9) so the values are bit-identical.
        b.extend((0..self.counts_len()).map(|i| self.lower_ns(i) as f64 / 1e9));
        if let Scheme::MinMaxBits = self {
            b.push((1u64 << (MM_MAX_BITS - 1)) as f64 / 1e9);
        }
        b.push(f64::INFINITY);
        b
    }

    /// Counts in the runtime/metrics order: underflow, counts..., then overflow if the scheme
    /// has one. `overflow` is ignored for SuperSub.
    pub fn metrics_counts(self, counts: &[u64], underflow: u64, overflow: u64) -> Vec<u64> {
        let mut v = Vec::with_capacity(counts.len() + 2);
        v.push(underflow);
        v.extend_from_slice(counts);
        if let Scheme::MinMaxBits = self {
            v.push(overflow);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value lands (by the runtime's own record logic) in the bucket whose bounds hold it.
    #[test]
    fn record_matches_bounds() {
        for scheme in [Scheme::SuperSub, Scheme::MinMaxBits] {
            let mut values: Vec<u64> = (0..5000).collect();
            for bit in 0..63 {
                let p = 1u64 << bit;
                values.extend([p - 1, p, p + 1, p + p / 3, p + p / 2 + 7]);
            }
            values.push(u64::MAX >> 1);
            for d in values {
                match scheme.record_index(d) {
                    Some(i) => {
                        assert!(scheme.lower_ns(i) <= d, "{scheme:?} d={d} i={i}");
                        if let Some(u) = scheme.upper_ns(i) {
                            assert!(d < u, "{scheme:?} d={d} i={i} upper={u}");
                        }
                    }
                    None => assert!(d >= 1 << 47, "{scheme:?} overflow at {d}"),
                }
            }
            // Bounds strictly increase, so buckets never overlap.
            let b = scheme.metrics_boundaries();
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{scheme:?}");
        }
    }

    #[test]
    fn shapes() {
        assert_eq!(Scheme::from_shape(720, false), Some(Scheme::SuperSub));
        assert_eq!(Scheme::from_shape(160, true), Some(Scheme::MinMaxBits));
        assert_eq!(Scheme::from_shape(160, false), None);
        assert_eq!(Scheme::from_shape(720, true), None);
        assert_eq!(Scheme::SuperSub.metrics_boundaries().len(), 722);
        assert_eq!(Scheme::MinMaxBits.metrics_boundaries().len(), 163);
        // Spot values from the sources: 1.19's 17th boundary is 16 ns, 1.27's 2nd is 64 ns.
        assert_eq!(Scheme::SuperSub.metrics_boundaries()[17], 16e-9);
        assert_eq!(Scheme::MinMaxBits.metrics_boundaries()[2], 64e-9);
        assert_eq!(Scheme::MinMaxBits.metrics_boundaries()[5], 256e-9);
    }
}
