//! Histogram buckets, computed identically in the kernel and in userspace: exactly the buckets
//! of a Prometheus native histogram of schema 3 in seconds, so the native exposition is the
//! kernel's histogram, lossless.
//!
//! Native bucket `n` (schema 3) holds the values in `(2^((n-1)/8), 2^(n/8)]` seconds. Values are
//! integer nanoseconds, so a boundary is the integer threshold `floor(1e9 * 2^(n/8))`: the
//! largest nanosecond value its bucket holds. Kernel bucket `k` is native bucket
//! `k - NATIVE_OFFSET` for `k` in `1..OVERFLOW` (native -159 .. 40: 953 ns .. 32 s, 8 per
//! octave); bucket 0 holds `[0, 953]` ns (native's zero bucket, threshold 2^-20 s) and bucket
//! `OVERFLOW` everything above 32 s.
//!
//! Bucket `i` holds the integers in `[bucket_lower_ns(i), bucket_upper_ns(i))`.
//!
//! How the index is found without floating point (none in BPF): the boundaries are closed under
//! doubling (2^((n+8)/8) = 2 * 2^(n/8)), so every power of two of nanoseconds `[2^e, 2^(e+1))`
//! holds exactly 8 of them, at the same relative positions `m_s * 2^e` (`m_s` in (1, 2), the
//! [`MANTISSA`]s). With `x = ns << (63 - e)` (the value's bits moved to the top), `ns <= m_s *
//! 2^e` iff `x <= floor(m_s * 2^63)`: exact for every integer, as both sides are integers.

/// Native histogram schema: 2^3 buckets per power of two.
pub const NATIVE_SCHEMA: i32 = 3;
/// Buckets per power of two.
pub const BUCKETS_PER_OCTAVE: usize = 1 << NATIVE_SCHEMA;
/// Kernel bucket `k` (`1..OVERFLOW`) is native bucket `k - NATIVE_OFFSET`.
pub const NATIVE_OFFSET: i32 = 160;
/// Upper bound of bucket 0, the zero bucket: 2^-20 s = 953.67 ns, as integer ns.
pub const ZERO_NS: u64 = bucket_inclusive_upper_ns(0);
/// The native zero bucket's threshold in seconds (exactly bucket 0's real upper bound).
pub const ZERO_THRESHOLD_SECONDS: f64 = 1.0 / (1u64 << 20) as f64;
/// Largest value below the overflow bucket: 2^(40/8) s = 32 s.
pub const TOP_NS: u64 = 32_000_000_000;
pub const NUM_BUCKETS: usize = 202;
/// Index of the overflow bucket.
pub const OVERFLOW: usize = NUM_BUCKETS - 1;

/// `floor(m_s * 2^63)` for the 8 positions `m_s` in (1, 2) of the boundaries `1e9 * 2^(n/8)`
/// inside a power of two, ascending: `1953125 * 2^(j/8)` (1e9 = 1953125 * 2^9) scaled into
/// [1, 2), j = 1..7 then j = 0 (exactly 1953125 / 2^20). Computed as exact integer 8th roots;
/// the unit tests check each against an exact big-integer reference.
pub const MANTISSA: [u64; 8] = [
    0x81ff_a7a9_549c_a6e3,
    0x8dc3_b896_0164_a7d9,
    0x9a98_6705_4d51_2391,
    0xa896_5f74_bf06_5071,
    0xb7d8_8a12_d0dd_9ea0,
    0xc87c_3e7d_03cd_bec3,
    0xdaa1_7c2c_d195_55db,
    0xee6b_2800_0000_0000,
];

/// `8 * e + s - INDEX_BASE` is the kernel bucket of a value in `[2^e, 2^(e+1))` ns above `s`
/// of the [`MANTISSA`] thresholds: 1 s = 1e9 ns is in `e = 29` above 7 of them and is the top
/// of native bucket 0, kernel bucket 160 (239 = 8 * 29 + 7 - 0, 79 = 239 - 160).
const INDEX_BASE: usize = 79;

const _: () = assert!(ZERO_NS == 953);
const _: () = assert!(bucket_inclusive_upper_ns(OVERFLOW - 1) == TOP_NS);
const _: () = assert!(bucket_inclusive_upper_ns(NATIVE_OFFSET as usize) == 1_000_000_000);

/// floor(log2(v)) for v > 0, written with a fixed number of compares so the eBPF verifier sees
/// no loop (the same trick as libbpf-tools' log2l).
#[inline(always)]
pub const fn log2_u64(v: u64) -> u32 {
    let mut v = v;
    let mut r = 0;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    r
}

/// The bucket a value of `ns` nanoseconds falls in. Always `< NUM_BUCKETS`.
#[inline(always)]
pub const fn bucket_index(ns: u64) -> usize {
    if ns <= ZERO_NS {
        return 0;
    }
    if ns > TOP_NS {
        return OVERFLOW;
    }
    let e = log2_u64(ns);
    let x = ns << (63u32.wrapping_sub(e) & 63);
    // Eight compares, no loop and no memory access: constants only.
    let s = (x > MANTISSA[0]) as usize
        + (x > MANTISSA[1]) as usize
        + (x > MANTISSA[2]) as usize
        + (x > MANTISSA[3]) as usize
        + (x > MANTISSA[4]) as usize
        + (x > MANTISSA[5]) as usize
        + (x > MANTISSA[6]) as usize
        + (x > MANTISSA[7]) as usize;
    // e >= 9 on every path that reaches here, so the saturation changes nothing. It keeps the
    // index from wrapping on paths the verifier cannot rule out: when a range test was
    // compiled against a copy of `ns`, the 5.10 and 6.1 verifiers also walk small `e`; a
    // wrapped index there fails `idx < NUM_BUCKETS` in a form they cannot decide (constant on
    // the left), their bounds become inconsistent and the map-value access is rejected
    // ("misaligned access").
    (e as usize * BUCKETS_PER_OCTAVE + s).saturating_sub(INDEX_BASE)
}

/// Largest integer ns value bucket `i` holds (`floor(1e9 * 2^((i - NATIVE_OFFSET)/8))`);
/// `u64::MAX` for the overflow bucket.
pub const fn bucket_inclusive_upper_ns(i: usize) -> u64 {
    if i >= OVERFLOW {
        return u64::MAX;
    }
    let j = i + INDEX_BASE;
    MANTISSA[j % BUCKETS_PER_OCTAVE] >> (63 - j / BUCKETS_PER_OCTAVE)
}

/// Inclusive lower bound of bucket `i`, in ns.
pub const fn bucket_lower_ns(i: usize) -> u64 {
    if i == 0 {
        return 0;
    }
    if i > OVERFLOW {
        return bucket_lower_ns(OVERFLOW);
    }
    bucket_inclusive_upper_ns(i - 1) + 1
}

/// Exclusive upper bound of bucket `i`, in ns; `u64::MAX` for the overflow bucket.
pub const fn bucket_upper_ns(i: usize) -> u64 {
    if i >= OVERFLOW {
        u64::MAX
    } else {
        bucket_inclusive_upper_ns(i) + 1
    }
}

/// The native (schema 3) bucket index of kernel bucket `i` (`1..OVERFLOW`).
pub const fn native_index(i: usize) -> i32 {
    i as i32 - NATIVE_OFFSET
}
