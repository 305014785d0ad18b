//! Noisy-neighbour attribution: `schedlat_preemptions_total{cgroup, by}` from the kernel's
//! counts of involuntary switches by (cgroup, cgroup that got the CPU). Pure logic.
//!
//! Bounded per cgroup: the `keep` most frequent preempting cgroups (by count since the daemon
//! started) have a `by` series of their own, the rest add up in `by="other"`. Every series is
//! a counter that never goes backwards while the ranking changes:
//! - a preemptor that enters `other` brings only its later switches (an offset);
//! - one that leaves `other` (promoted, or gone) leaves what it added there (frozen);
//! - a promoted one's own series starts from 0 (its earlier switches are in `other`); a
//!   demoted one's series ends.
//!
//! So each switch adds to exactly one series' increase, and rates add up to all of a cgroup's
//! involuntary switches (the values too, until a first demotion). A folded preemptor
//! is promoted when it has at least twice the count of the smallest kept one: two preemptors
//! of about the same count do not trade places (and series) at every scrape.
//!
//! Removed cgroups go as in the other families ([`super::series`]): their pairs leave the
//! kernel map, are exported with their final counts for the ttl, then fold into a base per
//! label pair that lasts while both labels are still in use.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use prometheus::proto::{LabelPair, MetricFamily, MetricType};
use schedlat_common::PreemptKey;

use super::metrics::{OTHER, cgroup_labels, counter, family, gauge, label};
use crate::host::cgroup::{Identity, identity};

/// `by` of switches to another task of the same cgroup.
pub const SELF: &str = "self";

/// A kept preemptor must be outnumbered this many times by a folded one to give up its place.
const PROMOTE_FACTOR: u64 = 2;

#[derive(Debug)]
struct By {
    /// Count at the last scrape (since the daemon started).
    count: u64,
    kept: bool,
    /// What this preemptor's series (kept) or its share of `other` (folded) leaves out.
    offset: u64,
}

#[derive(Debug, Default)]
struct Victim {
    by: HashMap<String, By>,
    /// What preemptors that left `other` had added to it.
    other_frozen: u64,
}

impl Victim {
    fn other(&self) -> u64 {
        self.other_frozen
            + self
                .by
                .values()
                .filter(|b| !b.kept)
                .map(|b| b.count.saturating_sub(b.offset))
                .sum::<u64>()
    }

    /// Take this scrape's counts by preemptor label.
    fn update(&mut self, now: &BTreeMap<&str, u64>, keep: usize) {
        // Gone (removed cgroups past their ttl): a kept series ends; what a folded one added to
        // `other` stays there.
        let mut frozen = 0;
        self.by.retain(|b, st| {
            let alive = now.contains_key(b.as_str());
            if !alive && !st.kept {
                frozen += st.count.saturating_sub(st.offset);
            }
            alive
        });
        self.other_frozen += frozen;
        for (b, st) in self.by.iter_mut() {
            // A label's count only shrinks when contributors of a shared label are dropped
            // (`unknown` resolving): never let a series go backwards for it.
            st.count = now[b.as_str()].max(st.count);
        }
        // Newcomers, most frequent first: kept while there is room, else folded from 0 on.
        let mut new: Vec<(&str, u64)> = now
            .iter()
            .filter(|(b, _)| !self.by.contains_key(**b))
            .map(|(b, c)| (*b, *c))
            .collect();
        new.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        for (b, count) in new {
            let kept = self.by.values().filter(|s| s.kept).count() < keep;
            self.by.insert(
                b.to_string(),
                By {
                    count,
                    kept,
                    offset: 0,
                },
            );
        }
        // Promote folded preemptors that clearly outnumber the smallest kept one.
        for _ in 0..keep {
            let top_folded = self
                .by
                .iter()
                .filter(|(_, s)| !s.kept)
                .max_by(|a, b| a.1.count.cmp(&b.1.count).then(b.0.cmp(a.0)))
                .map(|(b, s)| (b.clone(), s.count));
            let least_kept = self
                .by
                .iter()
                .filter(|(_, s)| s.kept)
                .min_by(|a, b| a.1.count.cmp(&b.1.count).then(b.0.cmp(a.0)))
                .map(|(b, s)| (b.clone(), s.count));
            let (Some((f, fc)), Some((k, kc))) = (top_folded, least_kept) else {
                break;
            };
            if fc <= kc || fc < kc.saturating_mul(PROMOTE_FACTOR) {
                break;
            }
            let folded = self.by.get_mut(&f).expect("listed above");
            self.other_frozen += folded.count.saturating_sub(folded.offset);
            folded.kept = true;
            folded.offset = folded.count;
            let demoted = self.by.get_mut(&k).expect("listed above");
            demoted.kept = false;
            demoted.offset = demoted.count;
        }
    }
}

pub struct Preemptors {
    keep: usize,
    ttl: Duration,
    /// Pairs with a removed cgroup, with their final counts, since when.
    retired: HashMap<PreemptKey, (Instant, u64)>,
    /// Removed cgroups, since when (their ids are freed after the ttl).
    dead: HashMap<u64, Instant>,
    /// (cgroup label, by label) -> counts of expired pairs.
    base: HashMap<(String, String), u64>,
    victims: BTreeMap<String, Victim>,
}

impl Preemptors {
    pub fn new(keep: usize, ttl: Duration) -> Self {
        Self {
            keep: keep.max(1),
            ttl,
            retired: HashMap::new(),
            dead: HashMap::new(),
            base: HashMap::new(),
            victims: BTreeMap::new(),
        }
    }

    /// Take over the final counts of pairs with a removed cgroup (`dead`), already deleted
    /// from the kernel map by the caller.
    pub fn retire(&mut self, pairs: Vec<(PreemptKey, u64)>, dead: &[u64], now: Instant) {
        for id in dead {
            self.dead.entry(*id).or_insert(now);
        }
        for (k, n) in pairs {
            let r = self.retired.entry(k).or_insert((now, 0));
            r.1 += n;
        }
    }

    /// Fold retired pairs older than the ttl into the per-label base; returns the removed
    /// cgroups whose ttl passed, so the caller can free their label slots.
    pub fn expire(&mut self, now: Instant, mut label_of: impl FnMut(u64) -> String) -> Vec<u64> {
        let old: Vec<PreemptKey> = self
            .retired
            .iter()
            .filter(|(_, (since, _))| now.duration_since(*since) >= self.ttl)
            .map(|(k, _)| *k)
            .collect();
        for k in old {
            let (_, n) = self.retired.remove(&k).expect("listed above");
            let (cg, by) = labels(&k, &mut label_of);
            *self.base.entry((cg, by)).or_default() += n;
        }
        let gone: Vec<u64> = self
            .dead
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= self.ttl)
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.dead.remove(id);
        }
        gone
    }

    /// The families of one scrape from the kernel's live pairs (and the retired ones).
    pub fn families(
        &mut self,
        live: &[(PreemptKey, u64)],
        mut label_of: impl FnMut(u64) -> String,
    ) -> Vec<MetricFamily> {
        let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut in_use: HashSet<String> = HashSet::from([SELF.to_string()]);
        let retired: Vec<(PreemptKey, u64)> =
            self.retired.iter().map(|(k, (_, n))| (*k, *n)).collect();
        for (k, n) in live.iter().chain(&retired) {
            let (cg, by) = labels(k, &mut label_of);
            in_use.insert(cg.clone());
            in_use.insert(by.clone());
            *counts.entry((cg, by)).or_default() += n;
        }
        // A base lasts while both its labels still have live or retired pairs.
        self.base
            .retain(|(cg, by), _| in_use.contains(cg) && in_use.contains(by));
        for ((cg, by), n) in &self.base {
            *counts.entry((cg.clone(), by.clone())).or_default() += n;
        }

        let mut by_victim: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
        for ((cg, by), n) in &counts {
            by_victim
                .entry(cg.as_str())
                .or_default()
                .insert(by.as_str(), *n);
        }
        self.victims
            .retain(|cg, _| by_victim.contains_key(cg.as_str()));
        let mut metrics = Vec::new();
        let mut folded = 0;
        for (cg, now) in &by_victim {
            let v = self.victims.entry(cg.to_string()).or_default();
            v.update(now, self.keep);
            let mut kept: Vec<(&String, u64)> =
                v.by.iter()
                    .filter(|(_, s)| s.kept)
                    .map(|(b, s)| (b, s.count.saturating_sub(s.offset)))
                    .collect();
            kept.sort();
            for (by, n) in kept {
                metrics.push(counter(pair_labels(cg, by), n as f64));
            }
            let n_folded = v.by.values().filter(|s| !s.kept).count();
            folded += n_folded;
            if n_folded > 0 || v.other_frozen > 0 {
                metrics.push(counter(pair_labels(cg, OTHER), v.other() as f64));
            }
        }
        let mut out = Vec::new();
        out.extend(family(
            "schedlat_preemptions_total",
            "Involuntary switches of a task of `cgroup` (preempted or yielding while runnable, the kernel's nonvoluntary_ctxt_switches) by the cgroup of the task that got the CPU: `by` (self: its own cgroup; other: preemptors beyond preemptors_per_cgroup). Switches to the idle task are not counted.",
            MetricType::COUNTER,
            metrics,
        ));
        out.extend(family(
            "schedlat_preemptors_folded",
            "(cgroup, preempting cgroup) pairs counted under by=\"other\" (beyond preemptors_per_cgroup).",
            MetricType::GAUGE,
            vec![gauge(vec![], folded as f64)],
        ));
        out
    }
}

/// Labels of a pair: the preempted cgroup's, and `self` when the CPU stayed in it.
fn labels(k: &PreemptKey, label_of: &mut impl FnMut(u64) -> String) -> (String, String) {
    let cg = label_of(k.cgroup_id);
    let by = if k.by_cgroup_id == k.cgroup_id {
        SELF.to_string()
    } else {
        label_of(k.by_cgroup_id)
    };
    (cg, by)
}

/// `cgroup` (with its pod_uid / container_id), then `by` with its own (`by_pod_uid`,
/// `by_container_id`): functions of the labels, no extra series.
fn pair_labels(cg: &str, by: &str) -> Vec<LabelPair> {
    let mut l = cgroup_labels(cg);
    l.push(label("by", by));
    let Identity {
        pod_uid,
        container_id,
    } = identity(by);
    if !pod_uid.is_empty() {
        l.push(label("by_pod_uid", &pod_uid));
    }
    if !container_id.is_empty() {
        l.push(label("by_container_id", &container_id));
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exporter::metrics::{encode, tests::parse};

    fn key(cg: u64, by: u64) -> PreemptKey {
        PreemptKey {
            cgroup_id: cg,
            by_cgroup_id: by,
        }
    }

    fn name(id: u64) -> String {
        format!("/cg{id}")
    }

    /// (by -> value) of cgroup `cg`'s series, and the folded gauge.
    fn scrape(
        p: &mut Preemptors,
        live: &[(PreemptKey, u64)],
        cg: &str,
    ) -> (BTreeMap<String, f64>, f64) {
        let text = encode(&p.families(live, name)).unwrap();
        let s = parse(&text);
        let series = s
            .iter()
            .filter(|(n, l, _)| n == "schedlat_preemptions_total" && l["cgroup"] == cg)
            .map(|(_, l, v)| (l["by"].clone(), *v))
            .collect();
        let folded = s
            .iter()
            .find(|(n, _, _)| n == "schedlat_preemptors_folded")
            .map_or(0.0, |x| x.2);
        (series, folded)
    }

    #[test]
    fn the_most_frequent_keep_their_own_by_and_the_rest_add_up_in_other() {
        let mut p = Preemptors::new(2, Duration::from_secs(60));
        let live = [
            (key(1, 2), 50),
            (key(1, 3), 30),
            (key(1, 4), 5),
            (key(1, 5), 1),
            (key(1, 1), 7),
            (key(2, 1), 40),
        ];
        let (s, folded) = scrape(&mut p, &live, "/cg1");
        let want = BTreeMap::from([
            ("/cg2".to_string(), 50.0),
            ("/cg3".to_string(), 30.0),
            ("other".to_string(), 13.0),
        ]);
        assert_eq!(s, want);
        assert_eq!(folded, 3.0, "cg4, cg5 and self folded for cg1");
        // Every switch is in exactly one series.
        assert_eq!(s.values().sum::<f64>(), 93.0);
        let (s2, _) = scrape(&mut p, &live, "/cg2");
        assert_eq!(s2, BTreeMap::from([("/cg1".to_string(), 40.0)]));
    }

    #[test]
    fn same_cgroup_is_self_and_identity_labels_follow_by() {
        let uid = "5c1e7f1a-2b3c-4d5e-8f90-0123456789ab";
        let cid = "cd".repeat(32);
        let pod = format!(
            "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{cid}.scope",
            uid.replace('-', "_")
        );
        let mut p = Preemptors::new(5, Duration::from_secs(60));
        let text = encode(&p.families(&[(key(1, 1), 3), (key(1, 2), 4)], |id| {
            if id == 2 { pod.clone() } else { name(id) }
        }))
        .unwrap();
        let s = parse(&text);
        let by_pod = s
            .iter()
            .find(|(_, l, _)| l.get("by").is_some_and(|b| *b == pod))
            .unwrap();
        assert_eq!(by_pod.1["by_pod_uid"], uid);
        assert_eq!(by_pod.1["by_container_id"], cid);
        assert_eq!(by_pod.1["cgroup"], "/cg1");
        assert!(!by_pod.1.contains_key("pod_uid"));
        assert!(
            s.iter()
                .any(|(_, l, v)| l.get("by").is_some_and(|b| b == SELF) && *v == 3.0)
        );
    }

    #[test]
    fn rankings_change_without_any_series_going_backwards() {
        let mut p = Preemptors::new(1, Duration::from_secs(60));
        // cg2 first: kept; cg3 folded.
        let (s, _) = scrape(&mut p, &[(key(1, 2), 10), (key(1, 3), 5)], "/cg1");
        assert_eq!(s["/cg2"], 10.0);
        assert_eq!(s["other"], 5.0);
        // cg3 grows to 19 (< 2 x 10): no swap.
        let (s, _) = scrape(&mut p, &[(key(1, 2), 10), (key(1, 3), 19)], "/cg1");
        assert_eq!((s["/cg2"], s["other"]), (10.0, 19.0));
        // cg3 at 20: promoted, its own series from 0; cg2 folded from its 10 on.
        let (s, folded) = scrape(&mut p, &[(key(1, 2), 10), (key(1, 3), 20)], "/cg1");
        assert_eq!(
            s,
            BTreeMap::from([("/cg3".into(), 0.0), ("other".into(), 20.0)])
        );
        assert_eq!(folded, 1.0);
        // Both grow: each increase lands in one series, other never decreased.
        let (s, _) = scrape(&mut p, &[(key(1, 2), 13), (key(1, 3), 27)], "/cg1");
        assert_eq!(
            s,
            BTreeMap::from([("/cg3".into(), 7.0), ("other".into(), 23.0)])
        );
        // The folded preemptor goes (removed, past its ttl): what it added stays in other.
        let (s, folded) = scrape(&mut p, &[(key(1, 3), 27)], "/cg1");
        assert_eq!(
            s,
            BTreeMap::from([("/cg3".into(), 7.0), ("other".into(), 23.0)])
        );
        assert_eq!(folded, 0.0);
        // A newcomer with no room is folded from its first count.
        let (s, folded) = scrape(&mut p, &[(key(1, 3), 28), (key(1, 4), 2)], "/cg1");
        assert_eq!(
            s,
            BTreeMap::from([("/cg3".into(), 8.0), ("other".into(), 25.0)])
        );
        assert_eq!(folded, 1.0);
    }

    #[test]
    fn removed_cgroups_keep_their_final_counts_for_the_ttl_then_go() {
        let t0 = Instant::now();
        let mut p = Preemptors::new(5, Duration::from_secs(60));
        let (s, _) = scrape(&mut p, &[(key(1, 2), 10), (key(3, 1), 4)], "/cg1");
        assert_eq!(s["/cg2"], 10.0);
        // cg2 and cg3 are removed: their pairs leave the kernel map.
        p.retire(vec![(key(1, 2), 10), (key(3, 1), 4)], &[2, 3], t0);
        let (s, _) = scrape(&mut p, &[], "/cg1");
        assert_eq!(s["/cg2"], 10.0, "final count, under its label");
        let (s3, _) = scrape(&mut p, &[], "/cg3");
        assert_eq!(s3["/cg1"], 4.0);
        assert!(p.expire(t0 + Duration::from_secs(59), name).is_empty());
        let mut gone = p.expire(t0 + Duration::from_secs(60), name);
        gone.sort();
        assert_eq!(gone, vec![2, 3]);
        // Past the ttl, with no live pair left for their labels, the series go.
        let (s, _) = scrape(&mut p, &[], "/cg1");
        assert!(s.is_empty(), "{s:?}");
        assert!(p.base.is_empty() && p.victims.is_empty());
    }

    #[test]
    fn a_shared_label_keeps_expired_counts_while_in_use() {
        let t0 = Instant::now();
        let mut p = Preemptors::new(5, Duration::ZERO);
        // Two cgroups folded into cgroup="other" by the label cap, both preempted by cg1.
        let label = |id: u64| {
            if id >= 10 {
                OTHER.to_string()
            } else {
                name(id)
            }
        };
        let s = |p: &mut Preemptors, live: &[(PreemptKey, u64)]| {
            parse(&encode(&p.families(live, label)).unwrap())
                .into_iter()
                .find(|(n, l, _)| n == "schedlat_preemptions_total" && l["cgroup"] == OTHER)
                .map(|x| x.2)
        };
        assert_eq!(s(&mut p, &[(key(10, 1), 3), (key(11, 1), 4)]), Some(7.0));
        p.retire(vec![(key(10, 1), 3)], &[10], t0);
        p.expire(t0, label);
        assert_eq!(s(&mut p, &[(key(11, 1), 5)]), Some(8.0), "never backwards");
    }
}
