//! Log-linear histogram buckets, computed identically in the kernel and in userspace.
//!
//! Values are nanoseconds. Bucket 0 holds `[0, 2^MIN_SHIFT)` (below ~1 µs). Each power of two
//! from 2^MIN_SHIFT to 2^MAX_SHIFT (~1 µs .. ~34 s) is split into 2^SUB_BITS equal sub-buckets,
//! so a bucket's width is at most 1/8 of its lower bound (12.5% relative resolution). The last
//! bucket holds everything at or above 2^MAX_SHIFT.
//!
//! Bucket `i` holds the integers in `[bucket_lower_ns(i), bucket_upper_ns(i))`.

/// log2 of the first bucketed power of two: 1024 ns.
pub const MIN_SHIFT: u32 = 10;
/// log2 of the overflow bound: 2^35 ns = 34.36 s.
pub const MAX_SHIFT: u32 = 35;
/// log2 of the sub-buckets per power of two.
pub const SUB_BITS: u32 = 3;
pub const SUBS: usize = 1 << SUB_BITS;
pub const NUM_BUCKETS: usize = 1 + (MAX_SHIFT - MIN_SHIFT) as usize * SUBS + 1;
/// Index of the overflow bucket.
pub const OVERFLOW: usize = NUM_BUCKETS - 1;

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
    if ns < 1 << MIN_SHIFT {
        return 0;
    }
    let e = log2_u64(ns);
    if e >= MAX_SHIFT {
        return OVERFLOW;
    }
    // e >= MIN_SHIFT on every path that reaches here, so the saturation and the mask change
    // nothing. They keep the index in range on paths the verifier cannot rule out: when the
    // `ns >= 2^MIN_SHIFT` test was compiled against a copy of `ns` (`x + 1 > 2^MIN_SHIFT` for
    // `ns = x`), the 5.10 and 6.1 verifiers also walk `e < MIN_SHIFT`; a wrapped index there
    // fails `idx < NUM_BUCKETS` in a form they cannot decide (constant on the left), their
    // bounds become inconsistent and the map-value access is rejected ("misaligned access").
    let octave = e.saturating_sub(MIN_SHIFT) as usize;
    let sub = ((ns >> (e.wrapping_sub(SUB_BITS) & 63)) as usize) & (SUBS - 1);
    1 + octave * SUBS + sub
}

/// Inclusive lower bound of bucket `i`, in ns.
pub const fn bucket_lower_ns(i: usize) -> u64 {
    if i == 0 {
        return 0;
    }
    if i >= OVERFLOW {
        return 1 << MAX_SHIFT;
    }
    let e = MIN_SHIFT + ((i - 1) / SUBS) as u32;
    let sub = ((i - 1) % SUBS) as u64;
    (1u64 << e) + (sub << (e - SUB_BITS))
}

/// Exclusive upper bound of bucket `i`, in ns; `u64::MAX` for the overflow bucket.
pub const fn bucket_upper_ns(i: usize) -> u64 {
    if i >= OVERFLOW {
        u64::MAX
    } else {
        bucket_lower_ns(i + 1)
    }
}
