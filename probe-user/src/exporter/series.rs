//! Keeps the daemon's counters right, and its memory bounded, while cgroups come and go.
//!
//! Kernel histograms are keyed by cgroup id and never deleted by the kernel, so on a host with
//! container churn HISTS would fill with dead cgroups. At each scrape the daemon deletes the
//! entries of removed cgroups from the kernel map and hands their last values to this keeper,
//! which keeps exporting them under their label for `ttl` (so the final increase is scraped),
//! then folds them into a per-label base that lasts while the label still has live
//! contributors (so a shared label such as `other` never goes backwards). Pure logic.
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use schedlat_common::HistKey;

use crate::hist::Histogram;

struct Retired {
    since: Instant,
    hists: HashMap<HistKey, Histogram>,
}

pub struct SeriesKeeper {
    ttl: Duration,
    retired: HashMap<u64, Retired>,
    /// (label, kind, op) -> counts of expired cgroups that carried this label.
    base: HashMap<(String, u32, u32), Histogram>,
}

impl SeriesKeeper {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            retired: HashMap::new(),
            base: HashMap::new(),
        }
    }

    /// Take over the final values of histograms whose cgroup is gone (already deleted from
    /// the kernel map by the caller).
    pub fn retire(&mut self, dead: Vec<(HistKey, Histogram)>, now: Instant) {
        for (k, h) in dead {
            let r = self.retired.entry(k.cgroup_id).or_insert_with(|| Retired {
                since: now,
                hists: HashMap::new(),
            });
            r.hists.entry(k).or_default().merge(&h);
        }
    }

    /// Move retired cgroups older than the ttl into the per-label base; returns their ids so
    /// the caller can free their label slots.
    pub fn expire(&mut self, now: Instant, mut label_of: impl FnMut(u64) -> String) -> Vec<u64> {
        let old: Vec<u64> = self
            .retired
            .iter()
            .filter(|(_, r)| now.duration_since(r.since) >= self.ttl)
            .map(|(id, _)| *id)
            .collect();
        for id in &old {
            let r = self.retired.remove(id).expect("listed above");
            let label = label_of(*id);
            for (k, h) in r.hists {
                self.base
                    .entry((label.clone(), k.kind, k.op))
                    .or_default()
                    .merge(&h);
            }
        }
        old
    }

    /// Retired histograms, still keyed by their cgroup id (their label is sticky).
    pub fn retired_hists(&self) -> impl Iterator<Item = (HistKey, &Histogram)> {
        self.retired
            .values()
            .flat_map(|r| r.hists.iter().map(|(k, h)| (*k, h)))
    }

    /// Base histograms by (label, kind, op).
    pub fn base(&self) -> impl Iterator<Item = (&(String, u32, u32), &Histogram)> {
        self.base.iter()
    }

    /// Drop base entries of labels nothing contributes to any more.
    pub fn prune(&mut self, labels_in_use: &HashSet<String>) {
        self.base.retain(|(l, _, _), _| labels_in_use.contains(l));
    }

    pub fn retired_count(&self) -> usize {
        self.retired.len()
    }
}

#[cfg(test)]
mod tests {
    use schedlat_common::kind;

    use super::*;

    fn h(n: u64) -> Histogram {
        let mut h = Histogram::default();
        for _ in 0..n {
            h.record(10_000);
        }
        h
    }

    fn key(id: u64) -> HistKey {
        HistKey {
            cgroup_id: id,
            kind: kind::RUNQ_WOKEN,
            op: 0,
        }
    }

    #[test]
    fn retired_series_live_for_the_ttl_then_fold_into_their_label() {
        let t0 = Instant::now();
        let mut k = SeriesKeeper::new(Duration::from_secs(60));
        k.retire(vec![(key(7), h(3))], t0);
        assert_eq!(k.retired_hists().map(|(_, h)| h.count()).sum::<u64>(), 3);
        assert!(
            k.expire(t0 + Duration::from_secs(59), |_| "/a".into())
                .is_empty()
        );
        assert_eq!(
            k.expire(t0 + Duration::from_secs(60), |_| "/a".into()),
            vec![7]
        );
        assert_eq!(k.retired_count(), 0);
        let base: Vec<_> = k.base().map(|(l, h)| (l.0.clone(), h.count())).collect();
        assert_eq!(base, vec![("/a".to_string(), 3)]);
        // The base lasts while its label is in use, then goes.
        k.prune(&HashSet::from(["/a".to_string()]));
        assert_eq!(k.base().count(), 1);
        k.prune(&HashSet::new());
        assert_eq!(k.base().count(), 0);
    }

    #[test]
    fn a_cgroup_retired_twice_adds_up() {
        let t0 = Instant::now();
        let mut k = SeriesKeeper::new(Duration::from_secs(60));
        k.retire(vec![(key(7), h(3))], t0);
        k.retire(vec![(key(7), h(2))], t0 + Duration::from_secs(1));
        assert_eq!(k.retired_hists().map(|(_, h)| h.count()).sum::<u64>(), 5);
    }
}
