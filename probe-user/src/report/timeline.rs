//! A capture over time, for the HTML heatmaps: per column (one interval of the capture), the
//! run-queue delay by cause, futex waits and, with per-event Go probes, goroutine scheduling
//! latency, each folded into power-of-two rows. Bounded: past [`MAX_COLUMNS`] columns,
//! neighbours merge in pairs and each later column covers twice as many intervals.
use std::time::SystemTime;

use schedlat_common::{go, kind};

use crate::{
    hist::{Histogram, OCTAVE_ROWS, octave_counts},
    model::RawSnapshot,
};

/// Most columns kept (a day of 1 s intervals would otherwise be 86,400).
pub const MAX_COLUMNS: usize = 2048;

/// The heatmaps, in page order: (key, title).
pub const SERIES: [(&str, &str); 4] = [
    ("runq_woken", "Run-queue delay after a wakeup"),
    ("runq_preempted", "Run-queue delay after preemption"),
    ("futex", "Futex waits"),
    ("go", "Go goroutine scheduling latency (per-event probes)"),
];
const GO: usize = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub start: SystemTime,
    pub end: SystemTime,
    /// Counts per compact row ([`crate::hist::octave_bounds`]), per [`SERIES`].
    pub rows: [[u64; OCTAVE_ROWS]; SERIES.len()],
}

impl Column {
    /// The column of one interval, from the maps' growth over it.
    pub fn of(delta: &RawSnapshot, window: (SystemTime, SystemTime)) -> Column {
        let mut h: [Histogram; SERIES.len()] = Default::default();
        for (k, hist) in &delta.hists {
            match k.kind {
                kind::RUNQ_WOKEN => h[0].merge(hist),
                kind::RUNQ_PREEMPTED => h[1].merge(hist),
                kind::FUTEX => h[2].merge(hist),
                _ => {}
            }
        }
        if let Some(g) = delta
            .go
            .as_ref()
            .and_then(|g| g.hists.get(go::hist::SCHED_LATENCY as usize))
        {
            h[GO].merge(g);
        }
        Column {
            start: window.0,
            end: window.1,
            rows: std::array::from_fn(|i| octave_counts(&h[i])),
        }
    }

    fn absorb(&mut self, later: &Column) {
        self.end = later.end;
        for (a, b) in self.rows.iter_mut().zip(&later.rows) {
            for (x, y) in a.iter_mut().zip(b) {
                *x = x.saturating_add(*y);
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Timeline {
    pub columns: Vec<Column>,
    /// Intervals per column: 1 until [`MAX_COLUMNS`] is reached, then doubling.
    pub intervals_per_column: usize,
    /// Intervals gathered for the next column while more than one make a column.
    pending: Option<(Column, usize)>,
    /// Whether per-event Go probes fed the Go heatmap.
    pub go: bool,
}

impl Timeline {
    pub fn new(go: bool) -> Self {
        Self {
            intervals_per_column: 1,
            go,
            ..Default::default()
        }
    }

    /// Add one interval.
    pub fn push(&mut self, c: Column) {
        let (col, n) = match self.pending.take() {
            None => (c, 1),
            Some((mut p, n)) => {
                p.absorb(&c);
                (p, n + 1)
            }
        };
        if n < self.intervals_per_column {
            self.pending = Some((col, n));
            return;
        }
        self.columns.push(col);
        if self.columns.len() >= MAX_COLUMNS {
            let old = std::mem::take(&mut self.columns);
            for pair in old.chunks(2) {
                let mut m = pair[0].clone();
                if let Some(b) = pair.get(1) {
                    m.absorb(b);
                }
                self.columns.push(m);
            }
            self.intervals_per_column *= 2;
        }
    }

    /// Flush a partly filled last column (the capture ended inside it).
    pub fn finish(&mut self) {
        if let Some((p, _)) = self.pending.take() {
            self.columns.push(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use schedlat_common::HistKey;

    use super::*;
    use crate::model::GoRaw;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn woken(ns: &[u64]) -> RawSnapshot {
        let mut h = Histogram::default();
        for &v in ns {
            h.record(v);
        }
        RawSnapshot {
            hists: vec![(
                HistKey {
                    cgroup_id: 1,
                    kind: kind::RUNQ_WOKEN,
                    op: 0,
                },
                h,
            )],
            ..Default::default()
        }
    }

    fn interval(i: u64, ns: &[u64]) -> Column {
        Column::of(&woken(ns), (at(i), at(i + 1)))
    }

    #[test]
    fn a_column_folds_each_series_into_octaves() {
        let mut g = Histogram::default();
        g.record(3_000);
        let snap = RawSnapshot {
            go: Some(GoRaw {
                hists: (0..go::hist::COUNT)
                    .map(|i| {
                        if i == go::hist::SCHED_LATENCY {
                            g.clone()
                        } else {
                            Histogram::default()
                        }
                    })
                    .collect(),
                counts: [0; go::counter::COUNT],
            }),
            ..woken(&[5_000, 6_000, 2_000_000])
        };
        let c = Column::of(&snap, (at(0), at(1)));
        // The row holding a value: its bounds hold it.
        let row = |v: u64| {
            (0..OCTAVE_ROWS)
                .find(|&r| {
                    let (lo, hi) = crate::hist::octave_bounds(r);
                    lo <= v && hi.is_none_or(|hi| v < hi)
                })
                .unwrap()
        };
        assert_eq!(row(5_000), row(6_000), "(2^-18 s, 2^-17 s]");
        assert_eq!(c.rows[0][row(5_000)], 2);
        assert_eq!(c.rows[0][row(2_000_000)], 1);
        assert_eq!(c.rows[0].iter().sum::<u64>(), 3);
        assert_eq!(c.rows[1].iter().sum::<u64>(), 0);
        assert_eq!(c.rows[GO][row(3_000)], 1);
    }

    #[test]
    fn one_column_per_interval_until_the_bound_then_pairs() {
        let mut t = Timeline::new(false);
        for i in 0..3 {
            t.push(interval(i, &[5_000]));
        }
        t.finish();
        assert_eq!(t.columns.len(), 3);
        assert_eq!((t.columns[1].start, t.columns[1].end), (at(1), at(2)));

        let mut t = Timeline::new(false);
        let n = MAX_COLUMNS as u64 + 5;
        for i in 0..n {
            t.push(interval(i, &[5_000]));
        }
        t.finish();
        assert_eq!(t.intervals_per_column, 2);
        // 2048 merged into 1024 pairs, then 5 more intervals: two pairs and a last single.
        assert_eq!(t.columns.len(), MAX_COLUMNS / 2 + 3);
        let total: u64 = t
            .columns
            .iter()
            .map(|c| c.rows[0].iter().sum::<u64>())
            .sum();
        assert_eq!(total, n, "merging keeps every count");
        for w in t.columns.windows(2) {
            assert_eq!(w[0].end, w[1].start, "columns tile the capture");
        }
        assert_eq!(t.columns.last().unwrap().end, at(n));
        assert_eq!(t.columns[0].end, at(2));
    }
}
