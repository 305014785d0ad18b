//! Prometheus exposition of a [`RawSnapshot`]: pure, tested without root or a socket.
//!
//! Names follow Prometheus conventions: one `schedlat_` prefix, base units (seconds),
//! `_seconds` histograms, `_total` counters. No pid/tid labels (cardinality).
use std::collections::{BTreeMap, HashMap, HashSet};

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram as PromHist, LabelPair, Metric, MetricFamily, MetricType,
};
use schedlat_common::{drop_reason, kind};

use super::proto::{self, Format, NativeHists, native_key};
use crate::{
    hist::Histogram,
    host::cgroup::{Identity, identity},
    model::{Attached, FUTEX_OUTCOME_NAMES, KERNEL_SKIPPED, RawSnapshot},
};

/// Label given to cgroups beyond the cap.
pub const OTHER: &str = "other";
/// Label of a cgroup id that is not (or no longer) under the cgroup2 mount.
pub const UNKNOWN: &str = "unknown";

/// Sticky cgroup label assignment with a cap: the first `max` cgroups seen keep their own
/// label for the daemon's lifetime; later ones share `cgroup="other"` and are counted.
#[derive(Debug)]
pub struct LabelCap {
    max: usize,
    admitted: HashMap<u64, String>,
    folded: HashSet<u64>,
}

impl LabelCap {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            admitted: HashMap::new(),
            folded: HashSet::new(),
        }
    }

    /// Label for cgroup `id`; `name` resolves it the first time it is admitted. An id that
    /// cannot be resolved yet (created since the last scan) is labelled `unknown` without being
    /// admitted, so a later scrape gives it its path.
    pub fn label(&mut self, id: u64, name: impl FnOnce(u64) -> Option<String>) -> String {
        if let Some(l) = self.admitted.get(&id) {
            return l.clone();
        }
        if self.folded.contains(&id) {
            return OTHER.to_string();
        }
        // Bounded: `folded` holds at most as many ids as the kernel maps have entries.
        if self.admitted.len() < self.max {
            let Some(l) = name(id) else {
                return UNKNOWN.to_string();
            };
            self.admitted.insert(id, l.clone());
            l
        } else {
            self.folded.insert(id);
            OTHER.to_string()
        }
    }

    pub fn folded(&self) -> usize {
        self.folded.len()
    }

    /// Free the slot of a cgroup whose series are gone for good.
    pub fn forget(&mut self, id: u64) {
        self.admitted.remove(&id);
        self.folded.remove(&id);
    }
}

pub(crate) fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

/// `cgroup`, then the Kubernetes / container identity its path gives (`pod_uid`,
/// `container_id`; absent, i.e. empty to Prometheus, where the path has none). Functions of the
/// cgroup path, so they never add series.
pub(crate) fn cgroup_labels(cgroup: &str) -> Vec<LabelPair> {
    let Identity {
        pod_uid,
        container_id,
    } = identity(cgroup);
    let mut l = vec![label("cgroup", cgroup)];
    if !pod_uid.is_empty() {
        l.push(label("pod_uid", &pod_uid));
    }
    if !container_id.is_empty() {
        l.push(label("container_id", &container_id));
    }
    l
}

pub(crate) fn family(
    name: &str,
    help: &str,
    t: MetricType,
    metrics: Vec<Metric>,
) -> Option<MetricFamily> {
    // The text encoder rejects empty families; an absent family is the right exposition.
    if metrics.is_empty() {
        return None;
    }
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(t);
    f.set_metric(metrics);
    Some(f)
}

/// schedlat_events_dropped_total: one series per reason the programs count, and one per
/// program for the runs the kernel skipped (`program` label; a handful of programs), absent
/// where the kernel does not report them.
fn dropped_series(snap: &RawSnapshot) -> Vec<Metric> {
    let own = drop_reason::NAMES
        .iter()
        .zip(snap.drops)
        .map(|(n, v)| counter(vec![label("reason", n)], v as f64));
    let skipped = snap.skipped.iter().flatten().map(|(program, n)| {
        counter(
            vec![label("reason", KERNEL_SKIPPED), label("program", program)],
            *n as f64,
        )
    });
    own.chain(skipped).collect()
}

pub(crate) fn counter(labels: Vec<LabelPair>, v: f64) -> Metric {
    let mut c = Counter::default();
    c.set_value(v);
    let mut m = Metric::default();
    m.set_label(labels);
    m.set_counter(c);
    m
}

pub(crate) fn gauge(labels: Vec<LabelPair>, v: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v);
    let mut m = Metric::default();
    m.set_label(labels);
    m.set_gauge(g);
    m
}

fn histogram(labels: Vec<LabelPair>, h: &Histogram, per_octave: u32) -> Metric {
    let mut p = PromHist::default();
    p.set_sample_count(h.count());
    p.set_sample_sum(h.sum_ns as f64 / 1e9);
    p.set_bucket(
        h.prometheus_buckets(per_octave)
            .into_iter()
            .map(|(le, cum)| {
                let mut b = Bucket::default();
                b.set_upper_bound(le);
                b.set_cumulative_count(cum);
                b
            })
            .collect(),
    );
    let mut m = Metric::default();
    m.set_label(labels);
    m.set_histogram(p);
    m
}

/// The metric families of one scrape, and the kernel histograms among them, which the
/// protobuf exposition also sends as native histograms.
#[derive(Default)]
pub struct Exposition {
    pub families: Vec<MetricFamily>,
    pub native: NativeHists,
}

impl Extend<MetricFamily> for Exposition {
    fn extend<T: IntoIterator<Item = MetricFamily>>(&mut self, iter: T) {
        self.families.extend(iter);
    }
}

impl Exposition {
    /// The body of GET /metrics in `format`.
    pub fn encode(&self, format: Format) -> Result<Vec<u8>, prometheus::Error> {
        Ok(match format {
            Format::Text => encode(&self.families)?.into_bytes(),
            Format::Protobuf => proto::encode(&self.families, &self.native),
        })
    }

    /// A histogram family whose series also go out natively.
    fn native_family(
        &mut self,
        name: &str,
        help: &str,
        series: Vec<(Vec<LabelPair>, &Histogram)>,
        per_octave: u32,
    ) {
        let mut metrics = Vec::with_capacity(series.len());
        for (labels, h) in series {
            self.native.insert(native_key(name, &labels), h.clone());
            metrics.push(histogram(labels, h, per_octave));
        }
        self.families
            .extend(family(name, help, MetricType::HISTOGRAM, metrics));
    }
}

/// Everything the exposition needs besides the maps.
pub struct ExpoInput<'a> {
    pub attached: &'a [Attached],
    pub per_octave: u32,
    pub version: &'a str,
    /// Futex return codes are known (futex mode "syscall").
    pub futex_outcomes: bool,
    /// Counts of removed cgroups past their ttl, by (label, kind, op): see [`crate::exporter::series`].
    pub base: &'a [((String, u32, u32), Histogram)],
    /// Removed cgroups whose series are still exported.
    pub retired_cgroups: usize,
}

/// Build all metric families. `cgroup_name` resolves ids not yet labelled.
pub fn families(
    snap: &RawSnapshot,
    input: &ExpoInput<'_>,
    cap: &mut LabelCap,
    mut cgroup_name: impl FnMut(u64) -> Option<String>,
) -> Exposition {
    // Aggregate by label first: several ids can share a label ("other", or a path reused by a
    // re-created cgroup), and a label set must appear once.
    let mut runq: BTreeMap<(String, &'static str), Histogram> = BTreeMap::new();
    let mut futex: BTreeMap<String, Histogram> = BTreeMap::new();
    let mut add = |cg: String, k: u32, h: &Histogram| match k {
        kind::RUNQ_WOKEN => runq.entry((cg, "woken")).or_default().merge(h),
        kind::RUNQ_PREEMPTED => runq.entry((cg, "preempted")).or_default().merge(h),
        kind::FUTEX => futex.entry(cg).or_default().merge(h),
        _ => {}
    };
    for (k, h) in &snap.hists {
        add(cap.label(k.cgroup_id, &mut cgroup_name), k.kind, h);
    }
    for ((cg, k, _), h) in input.base {
        add(cg.clone(), *k, h);
    }
    // A wakeup that makes a task runnable ends in exactly one cause=woken wait; counting it
    // there saves reading the wakee's cgroup in the (hot) wakeup handler.
    let mut wakeups: BTreeMap<String, u64> = BTreeMap::new();
    for ((cg, cause), h) in &runq {
        if *cause == "woken" {
            *wakeups.entry(cg.clone()).or_default() += h.count();
        }
    }

    let mut out = Exposition::default();
    out.native_family(
        "schedlat_runqueue_latency_seconds",
        "Time from runnable (woken, or preempted while runnable) to running, by the waiting task's cgroup and cause.",
        runq.iter()
            .map(|((cg, cause), h)| {
                let mut l = cgroup_labels(cg);
                l.push(label("cause", cause));
                (l, h)
            })
            .collect(),
        input.per_octave,
    );
    out.native_family(
        "schedlat_futex_wait_seconds",
        "Time blocked in futex wait operations (timeouts and interruptions included), by cgroup.",
        futex.iter().map(|(cg, h)| (cgroup_labels(cg), h)).collect(),
        input.per_octave,
    );
    out.extend(input.futex_outcomes.then(|| family(
        "schedlat_futex_waits_total",
        "Blocking futex calls by how they ended; value_changed calls never slept and are not in schedlat_futex_wait_seconds.",
        MetricType::COUNTER,
        FUTEX_OUTCOME_NAMES
            .iter()
            .zip(snap.futex_outcomes)
            .map(|(n, v)| counter(vec![label("outcome", n)], v as f64))
            .collect(),
    )).flatten());
    out.extend(family(
        "schedlat_wakeups_total",
        "Wakeups that made a task runnable, by the cgroup of the task woken (each ends one cause=\"woken\" run-queue wait).",
        MetricType::COUNTER,
        wakeups.iter().map(|(cg, n)| counter(cgroup_labels(cg), *n as f64)).collect(),
    ));
    let mut cpu_waits = Vec::new();
    let mut cpu_secs = Vec::new();
    for (i, c) in snap.cpus.iter().enumerate() {
        let cpu = i.to_string();
        cpu_waits.push(counter(
            vec![label("cpu", &cpu)],
            (c.count[0] + c.count[1]) as f64,
        ));
        cpu_secs.push(counter(
            vec![label("cpu", &cpu)],
            (c.sum_ns[0] + c.sum_ns[1]) as f64 / 1e9,
        ));
    }
    out.extend(family(
        "schedlat_cpu_runqueue_waits_total",
        "Run-queue waits that ended on each CPU.",
        MetricType::COUNTER,
        cpu_waits,
    ));
    out.extend(family(
        "schedlat_cpu_runqueue_wait_seconds_total",
        "Total run-queue delay of the waits that ended on each CPU.",
        MetricType::COUNTER,
        cpu_secs,
    ));
    out.extend(family(
        "schedlat_events_dropped_total",
        "Events lost, by reason (a full map, the slow-event rate limit, a failed kernel read; kernel_skipped_recursion: runs of a program the kernel skipped, by program).",
        MetricType::COUNTER,
        dropped_series(snap),
    ));
    out.extend(family(
        "schedlat_cgroups_folded",
        "Cgroups whose series were folded into cgroup=\"other\" by the max_cgroups cap.",
        MetricType::GAUGE,
        vec![gauge(vec![], cap.folded() as f64)],
    ));
    out.extend(family(
        "schedlat_cgroups_retired",
        "Removed cgroups whose final counts are still exported (they fold into their label after removed_cgroup_ttl_secs).",
        MetricType::GAUGE,
        vec![gauge(vec![], input.retired_cgroups as f64)],
    ));
    out.extend(family(
        "schedlat_map_entries",
        "Entries in each eBPF map now. For the maps of start stamps (RUNQ_START, FUTEX_START, GO_G, GO_RUNQ), which change while they are walked, an approximation (a walk restarts when its current key is deleted; bounded, at most the capacity).",
        MetricType::GAUGE,
        snap.map_entries
            .iter()
            .map(|(m, n, _)| gauge(vec![label("map", m)], *n as f64))
            .collect(),
    ));
    out.extend(family(
        "schedlat_map_capacity",
        "Maximum entries of each eBPF map.",
        MetricType::GAUGE,
        snap.map_entries
            .iter()
            .map(|(m, _, cap)| gauge(vec![label("map", m)], *cap as f64))
            .collect(),
    ));
    out.extend(family(
        "schedlat_program_attached",
        "1 if the eBPF program is attached, 0 if it is not (see the daemon log for why).",
        MetricType::GAUGE,
        input
            .attached
            .iter()
            .map(|a| {
                gauge(
                    vec![label("program", &a.program), label("target", &a.target)],
                    f64::from(u8::from(a.attached)),
                )
            })
            .collect(),
    ));
    // self_cost: the kernel's accounting of the programs' own run time (absent without it).
    out.extend(family(
        "schedlat_program_run_seconds_total",
        "Time the eBPF program ran, by the kernel's BPF run-time accounting (config self_cost); the traced tasks pay it, as system time.",
        MetricType::COUNTER,
        snap.programs
            .iter()
            .map(|(p, s)| counter(vec![label("program", p)], s.run_time_ns as f64 / 1e9))
            .collect(),
    ));
    out.extend(family(
        "schedlat_program_runs_total",
        "Runs of the eBPF program, by the kernel's BPF run-time accounting (config self_cost).",
        MetricType::COUNTER,
        snap.programs
            .iter()
            .map(|(p, s)| counter(vec![label("program", p)], s.run_count as f64))
            .collect(),
    ));
    out.extend(family(
        "schedlat_build_info",
        "schedlat build information.",
        MetricType::GAUGE,
        vec![gauge(vec![label("version", input.version)], 1.0)],
    ));
    out
}

/// Prometheus text format 0.0.4.
pub fn encode(families: &[MetricFamily]) -> Result<String, prometheus::Error> {
    use prometheus::Encoder as _;
    let mut buf = Vec::new();
    prometheus::TextEncoder::new().encode(families, &mut buf)?;
    Ok(String::from_utf8(buf).expect("text encoder writes UTF-8"))
}

#[cfg(test)]
pub(crate) mod tests {
    use schedlat_common::{CpuStat, HistKey};

    use super::*;

    /// A tiny parser for our own exposition: (name, labels, value) per sample line.
    pub(crate) fn parse(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
        let mut out = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    let mut m = BTreeMap::new();
                    for kv in body.split("\",").filter(|s| !s.is_empty()) {
                        let (k, v) = kv.split_once("=\"").expect("k=\"v\"");
                        m.insert(k.to_string(), v.trim_end_matches('"').to_string());
                    }
                    (n.to_string(), m)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            let v = if value == "+Inf" {
                f64::INFINITY
            } else {
                value.parse().expect("numeric value")
            };
            out.push((name, labels, v));
        }
        out
    }

    fn snap() -> RawSnapshot {
        let mut h = Histogram::default();
        for v in [1_500u64, 20_000, 3_000_000, 50_000_000_000] {
            h.record(v);
        }
        RawSnapshot {
            hists: vec![
                (
                    HistKey {
                        cgroup_id: 1,
                        kind: kind::RUNQ_WOKEN,
                        op: 0,
                    },
                    h.clone(),
                ),
                (
                    HistKey {
                        cgroup_id: 2,
                        kind: kind::RUNQ_PREEMPTED,
                        op: 0,
                    },
                    h.clone(),
                ),
                (
                    HistKey {
                        cgroup_id: 3,
                        kind: kind::RUNQ_PREEMPTED,
                        op: 0,
                    },
                    h.clone(),
                ),
                (
                    HistKey {
                        cgroup_id: 2,
                        kind: kind::FUTEX,
                        op: 0,
                    },
                    h,
                ),
            ],
            cpus: vec![CpuStat {
                count: [1, 2],
                sum_ns: [10, 20],
                max_ns: 20,
            }],
            ..Default::default()
        }
    }

    /// The families of `snap`; `name` resolves cgroup ids.
    fn exposition(
        snap: &RawSnapshot,
        cap: &mut LabelCap,
        name: impl FnMut(u64) -> Option<String>,
    ) -> Exposition {
        let input = ExpoInput {
            attached: &[],
            per_octave: 2,
            version: "test",
            futex_outcomes: true,
            base: &[],
            retired_cgroups: 0,
        };
        families(snap, &input, cap, name)
    }

    fn render(max_cgroups: usize) -> (String, LabelCap) {
        let mut cap = LabelCap::new(max_cgroups);
        let fams = exposition(&snap(), &mut cap, |id| Some(format!("/cg{id}")));
        (encode(&fams.families).unwrap(), cap)
    }

    #[test]
    fn histograms_are_cumulative_with_inf_sum_and_count() {
        let (text, _) = render(100);
        let samples = parse(&text);
        let buckets: Vec<_> = samples
            .iter()
            .filter(|(n, l, _)| {
                n == "schedlat_runqueue_latency_seconds_bucket" && l["cgroup"] == "/cg1"
            })
            .collect();
        assert!(buckets.len() > 10);
        let mut last = 0.0;
        let mut last_le = -1.0;
        for (_, l, v) in &buckets {
            let le: f64 = if l["le"] == "+Inf" {
                f64::INFINITY
            } else {
                l["le"].parse().unwrap()
            };
            assert!(le > last_le && *v >= last, "cumulative and increasing");
            last = *v;
            last_le = le;
        }
        assert_eq!(buckets.last().unwrap().1["le"], "+Inf");
        assert_eq!(last, 4.0);
        let count = samples
            .iter()
            .find(|(n, l, _)| {
                n == "schedlat_runqueue_latency_seconds_count" && l["cgroup"] == "/cg1"
            })
            .unwrap();
        assert_eq!(count.2, 4.0);
        let sum = samples
            .iter()
            .find(|(n, l, _)| n == "schedlat_runqueue_latency_seconds_sum" && l["cgroup"] == "/cg1")
            .unwrap();
        assert!((sum.2 - 50.0030215).abs() < 1e-6, "{}", sum.2);
        // The 50 s value is beyond the last finite bucket: only +Inf holds it.
        let finite_max = buckets[buckets.len() - 2].2;
        assert_eq!(finite_max, 3.0);
        assert!(text.contains("# TYPE schedlat_runqueue_latency_seconds histogram"));
        assert!(text.contains("# TYPE schedlat_events_dropped_total counter"));
    }

    #[test]
    fn protobuf_has_the_text_families_and_native_histograms_of_the_kernel_buckets() {
        use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model as pb;
        use prost::Message as _;
        let fams = exposition(&snap(), &mut LabelCap::new(100), |id| {
            Some(format!("/cg{id}"))
        });
        let text = fams.encode(Format::Text).unwrap();
        assert_eq!(
            text,
            encode(&fams.families).unwrap().into_bytes(),
            "text unchanged"
        );
        let body = fams.encode(Format::Protobuf).unwrap();
        let mut buf = body.as_slice();
        let mut decoded = Vec::new();
        while !buf.is_empty() {
            decoded.push(pb::MetricFamily::decode_length_delimited(&mut buf).unwrap());
        }
        let names: Vec<_> = fams.families.iter().map(|f| f.name().to_string()).collect();
        assert_eq!(
            decoded.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
            names,
            "the same families, in order"
        );
        let samples = parse(&String::from_utf8(text).unwrap());
        for f in &decoded {
            for m in &f.metric {
                let labels: BTreeMap<String, String> = m
                    .label
                    .iter()
                    .map(|l| (l.name.clone(), l.value.clone()))
                    .collect();
                let value = |suffix: &str| {
                    samples
                        .iter()
                        .find(|(n, l, _)| *n == format!("{}{suffix}", f.name) && *l == labels)
                        .unwrap_or_else(|| panic!("{}{suffix} {labels:?} not in the text", f.name))
                        .2
                };
                match pb::MetricType::try_from(f.r#type).unwrap() {
                    pb::MetricType::Counter => {
                        assert_eq!(m.counter.as_ref().unwrap().value, value(""))
                    }
                    pb::MetricType::Gauge => assert_eq!(m.gauge.as_ref().unwrap().value, value("")),
                    pb::MetricType::Histogram => {
                        let h = m.histogram.as_ref().unwrap();
                        assert_eq!(h.sample_count as f64, value("_count"));
                        assert_eq!(h.sample_sum, value("_sum"));
                        // Classic buckets as in the text, +Inf aside.
                        let text_buckets = samples
                            .iter()
                            .filter(|(n, l, _)| {
                                *n == format!("{}_bucket", f.name)
                                    && l.iter().filter(|(k, _)| *k != "le").eq(labels.iter())
                                    && l["le"] != "+Inf"
                            })
                            .count();
                        assert_eq!(h.bucket.len(), text_buckets);
                        // Native: schema 3, the zero bucket and the kernel's buckets.
                        assert_eq!(h.schema, 3);
                        assert_eq!(h.zero_threshold, 2f64.powi(-20));
                        let mut want = Histogram::default();
                        for v in [1_500u64, 20_000, 3_000_000, 50_000_000_000] {
                            want.record(v);
                        }
                        let n = proto::Native::of(&want);
                        assert_eq!(h.zero_count, n.zero_count);
                        let spans: Vec<_> = h
                            .positive_span
                            .iter()
                            .map(|s| (s.offset, s.length))
                            .collect();
                        assert_eq!(spans, n.spans);
                        assert_eq!(h.positive_delta, n.deltas);
                        let native_total: i64 = h
                            .positive_delta
                            .iter()
                            .scan(0i64, |c, d| {
                                *c += d;
                                Some(*c)
                            })
                            .sum();
                        assert_eq!(native_total as u64 + h.zero_count, h.sample_count);
                    }
                    t => panic!("unexpected type {t:?}"),
                }
            }
        }
        // 1.5 µs is native bucket ceil(8 * log2(1.5e-6)) = -154, 20 µs -124, 3 ms -67,
        // 50 s (overflow) 41; offsets after the first count from the end of the span before.
        let h = decoded[0].metric[0].histogram.as_ref().unwrap();
        let spans: Vec<_> = h
            .positive_span
            .iter()
            .map(|s| (s.offset, s.length))
            .collect();
        assert_eq!(spans, vec![(-154, 1), (29, 1), (56, 1), (107, 1)]);
    }

    #[test]
    fn label_cap_folds_into_other_and_counts() {
        let (text, cap) = render(1);
        assert_eq!(cap.folded(), 2);
        let samples = parse(&text);
        let cgs: HashSet<&str> = samples
            .iter()
            .filter(|(n, _, _)| n == "schedlat_runqueue_latency_seconds_count")
            .map(|(_, l, _)| l["cgroup"].as_str())
            .collect();
        assert_eq!(cgs, HashSet::from(["/cg1", "other"]));
        // cg2 and cg3 preempted series merged into one "other" series.
        let other = samples
            .iter()
            .find(|(n, l, _)| {
                n == "schedlat_runqueue_latency_seconds_count"
                    && l["cgroup"] == "other"
                    && l["cause"] == "preempted"
            })
            .unwrap();
        assert_eq!(other.2, 8.0);
        let folded = samples
            .iter()
            .find(|(n, _, _)| n == "schedlat_cgroups_folded")
            .unwrap();
        assert_eq!(folded.2, 2.0);
        // No pid/tid labels anywhere.
        assert!(
            samples
                .iter()
                .all(|(_, l, _)| !l.contains_key("pid") && !l.contains_key("tid"))
        );
    }

    #[test]
    fn kubernetes_identity_labels_follow_the_cgroup_and_add_no_series() {
        let uid = "5c1e7f1a-2b3c-4d5e-8f90-0123456789ab";
        let cid = "ab".repeat(32);
        let pod_cg = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{cid}.scope",
            uid.replace('-', "_")
        );
        let docker_cg = format!("/system.slice/docker-{cid}.scope");
        let names = [
            (1, pod_cg.clone()),
            (2, docker_cg.clone()),
            (3, "/".to_string()),
        ];
        let fams = exposition(&snap(), &mut LabelCap::new(100), |id| {
            names.iter().find(|(i, _)| *i == id).map(|(_, n)| n.clone())
        });
        let samples = parse(&encode(&fams.families).unwrap());
        let with_cgroup: Vec<_> = samples
            .iter()
            .filter(|(_, l, _)| l.contains_key("cgroup"))
            .collect();
        assert!(!with_cgroup.is_empty());
        for (n, l, _) in with_cgroup {
            let (want_pod, want_cid) = match l["cgroup"].as_str() {
                c if c == pod_cg => (Some(uid), Some(cid.as_str())),
                c if c == docker_cg => (None, Some(cid.as_str())),
                _ => (None, None),
            };
            assert_eq!(l.get("pod_uid").map(String::as_str), want_pod, "{n} {l:?}");
            assert_eq!(
                l.get("container_id").map(String::as_str),
                want_cid,
                "{n} {l:?}"
            );
        }
        // The same number of series as without the labels: one per cgroup (and cause).
        let (plain, _) = render(100);
        assert_eq!(samples.len(), parse(&plain).len());
    }

    #[test]
    fn unresolved_cgroup_is_unknown_until_it_resolves() {
        let mut cap = LabelCap::new(10);
        assert_eq!(cap.label(5, |_| None), UNKNOWN);
        assert_eq!(cap.label(5, |_| Some("/new".into())), "/new");
        // Sticky once admitted, even if the cgroup is gone.
        assert_eq!(cap.label(5, |_| None), "/new");
    }

    #[test]
    fn wakeups_and_drops_exported() {
        let (text, _) = render(100);
        let s = parse(&text);
        // cg1 has 4 woken waits; cg3 has only preempted ones, so no wakeups.
        let w = s
            .iter()
            .find(|(n, l, _)| n == "schedlat_wakeups_total" && l["cgroup"] == "/cg1")
            .unwrap();
        assert_eq!(w.2, 4.0);
        assert!(
            !s.iter()
                .any(|(n, l, _)| n == "schedlat_wakeups_total" && l["cgroup"] == "/cg3")
        );
        for r in drop_reason::NAMES {
            assert!(
                s.iter()
                    .any(|(n, l, _)| n == "schedlat_events_dropped_total" && l["reason"] == r),
                "{r}"
            );
        }
        // No kernel report in this snapshot (a kernel before 5.12): no such series.
        assert!(
            !s.iter()
                .any(|(_, l, _)| l.get("reason").map(String::as_str) == Some(KERNEL_SKIPPED))
        );
    }

    /// The runs the kernel skipped: one series per program under their own reason, each
    /// with its count, zeros included (read, not absent).
    #[test]
    fn kernel_skipped_runs_exported_per_program() {
        let snap = RawSnapshot {
            skipped: Some(vec![("sched_switch".into(), 3), ("sched_waking".into(), 0)]),
            ..snap()
        };
        let fams = exposition(&snap, &mut LabelCap::new(10), |id| Some(format!("/cg{id}")));
        let s = parse(&encode(&fams.families).unwrap());
        let skipped: BTreeMap<&str, f64> = s
            .iter()
            .filter(|(n, l, _)| {
                n == "schedlat_events_dropped_total" && l["reason"] == KERNEL_SKIPPED
            })
            .map(|(_, l, v)| (l["program"].as_str(), *v))
            .collect();
        assert_eq!(
            skipped,
            BTreeMap::from([("sched_switch", 3.0), ("sched_waking", 0.0)])
        );
        // The programs' own reasons keep their one label.
        let own = s
            .iter()
            .find(|(n, l, _)| n == "schedlat_events_dropped_total" && l["reason"] == "stale_stamp")
            .unwrap();
        assert!(!own.1.contains_key("program"));
    }
}
