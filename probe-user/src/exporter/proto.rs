//! Content negotiation for GET /metrics and the Prometheus protobuf exposition (delimited
//! `io.prometheus.client.MetricFamily`), with the run-queue and futex histograms as native
//! histograms (schema 3, the kernel's own buckets) next to their classic buckets.
//!
//! The data model and its encoding are prometheus-client's (`prometheus_data_model`, prost).
//! Written here, because no crate offers them for our inputs: the Accept header choice, the
//! copy from the `prometheus` crate's families the text format is made from, and the spans and
//! deltas of a kernel histogram.
use std::collections::HashMap;

use mime::Mime;
use prometheus::proto as plain;
use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model as pb;
use prost::Message as _;
use schedlat_common::hist::{NATIVE_SCHEMA, OVERFLOW, ZERO_THRESHOLD_SECONDS, native_index};

use crate::hist::Histogram;

/// The text exposition format, 0.0.4.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What Prometheus sends and accepts for the protobuf exposition (client_golang expfmt).
pub const PROTOBUF_CONTENT_TYPE: &str = "application/vnd.google.protobuf; \
     proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// An exposition format of GET /metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Prometheus text 0.0.4 (classic histograms only).
    Text,
    /// Delimited protobuf: native and classic histograms.
    Protobuf,
}

impl Format {
    /// How many formats there are ([`Format::index`] is below it).
    pub const COUNT: usize = 2;

    /// A dense index, for per-format state.
    pub fn index(self) -> usize {
        match self {
            Self::Text => 0,
            Self::Protobuf => 1,
        }
    }

    /// The format a scraper's `Accept` header asks for: protobuf when a delimited
    /// `io.prometheus.client.MetricFamily` ranks at least as high as text (as Prometheus asks
    /// with native histograms enabled); text otherwise, and for anything unparsable.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Self::Text;
        };
        let mut best: Option<(f32, Self)> = None;
        for part in accept.split(',') {
            let Ok(m) = part.trim().parse::<Mime>() else {
                continue;
            };
            let q = m
                .get_param("q")
                .and_then(|q| q.as_str().parse::<f32>().ok())
                .unwrap_or(1.0);
            let format = match (m.type_().as_str(), m.subtype().as_str()) {
                ("application", "vnd.google.protobuf")
                    if m.get_param("proto").map(|p| p.as_str())
                        == Some("io.prometheus.client.MetricFamily")
                        && m.get_param("encoding").map(|e| e.as_str()) == Some("delimited") =>
                {
                    Self::Protobuf
                }
                ("text", "plain") | ("text", "*") | ("*", "*") => Self::Text,
                _ => continue,
            };
            if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
                best = Some((q, format));
            }
        }
        best.map_or(Self::Text, |(_, f)| f)
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Text => TEXT_CONTENT_TYPE,
            Self::Protobuf => PROTOBUF_CONTENT_TYPE,
        }
    }
}

/// Native (schema 3) buckets of a kernel histogram: zero count, then spans and deltas of the
/// positive buckets. Lossless up to 32 s; the overflow bucket (above 32 s) has no native
/// bucket of its own and is counted in the one just above 32 s, (32 s, 36.7 s], so counts and
/// sums stay whole.
pub struct Native {
    pub zero_count: u64,
    pub spans: Vec<(i32, u32)>,
    pub deltas: Vec<i64>,
}

impl Native {
    pub fn of(h: &Histogram) -> Self {
        let mut spans: Vec<(i32, u32)> = Vec::new();
        let mut deltas = Vec::new();
        let (mut last_index, mut last_count) = (None::<i32>, 0i64);
        for (i, &c) in h.buckets.iter().enumerate().skip(1) {
            if c == 0 {
                continue;
            }
            let n = if i >= OVERFLOW {
                native_index(OVERFLOW - 1) + 1
            } else {
                native_index(i)
            };
            match last_index {
                // Adjacent: the current span grows.
                Some(l) if n == l + 1 => spans.last_mut().expect("a span is open").1 += 1,
                // A gap: a new span, its offset counted from the end of the previous one.
                Some(l) => spans.push((n - l - 1, 1)),
                None => spans.push((n, 1)),
            }
            let c = i64::try_from(c).unwrap_or(i64::MAX);
            deltas.push(c - last_count);
            (last_index, last_count) = (Some(n), c);
        }
        Self {
            zero_count: h.buckets[0],
            spans,
            deltas,
        }
    }
}

/// Kernel histograms of the series that also go out natively, by family name and labels.
pub type NativeHists = HashMap<(String, Vec<(String, String)>), Histogram>;

/// The key of a series in [`NativeHists`].
pub fn native_key(family: &str, labels: &[plain::LabelPair]) -> (String, Vec<(String, String)>) {
    (
        family.to_string(),
        labels
            .iter()
            .map(|l| (l.name().to_string(), l.value().to_string()))
            .collect(),
    )
}

/// Delimited protobuf of `families`, histograms found in `native` with native buckets too.
pub fn encode(families: &[plain::MetricFamily], native: &NativeHists) -> Vec<u8> {
    let mut out = Vec::new();
    for f in families {
        let metric = f
            .get_metric()
            .iter()
            .map(|m| metric(f, m, native))
            .collect();
        let family = pb::MetricFamily {
            name: f.name().to_string(),
            help: f.help().to_string(),
            r#type: metric_type(f.get_field_type()) as i32,
            metric,
            unit: String::new(),
        };
        family
            .encode_length_delimited(&mut out)
            .expect("a Vec grows as needed");
    }
    out
}

fn metric_type(t: plain::MetricType) -> pb::MetricType {
    match t {
        plain::MetricType::COUNTER => pb::MetricType::Counter,
        plain::MetricType::GAUGE => pb::MetricType::Gauge,
        plain::MetricType::SUMMARY => pb::MetricType::Summary,
        plain::MetricType::UNTYPED => pb::MetricType::Untyped,
        plain::MetricType::HISTOGRAM => pb::MetricType::Histogram,
    }
}

fn metric(family: &plain::MetricFamily, m: &plain::Metric, native: &NativeHists) -> pb::Metric {
    let label = m
        .get_label()
        .iter()
        .map(|l| pb::LabelPair {
            name: l.name().to_string(),
            value: l.value().to_string(),
        })
        .collect();
    let mut out = pb::Metric {
        label,
        ..Default::default()
    };
    // The plain model holds every kind of value; the family's type says which is meant.
    match family.get_field_type() {
        plain::MetricType::COUNTER => {
            out.counter = Some(pb::Counter {
                value: m.get_counter().get_value(),
                ..Default::default()
            })
        }
        plain::MetricType::GAUGE => {
            out.gauge = Some(pb::Gauge {
                value: m.get_gauge().get_value(),
            })
        }
        plain::MetricType::SUMMARY => {
            let s = m.get_summary();
            out.summary = Some(pb::Summary {
                sample_count: s.sample_count(),
                sample_sum: s.sample_sum(),
                quantile: s
                    .get_quantile()
                    .iter()
                    .map(|q| pb::Quantile {
                        quantile: q.quantile(),
                        value: q.value(),
                    })
                    .collect(),
                ..Default::default()
            })
        }
        plain::MetricType::UNTYPED => {
            #[expect(
                deprecated,
                reason = "the plain model's untyped getter; schedlat makes none"
            )]
            let v = m.get_untyped().get_value();
            out.untyped = Some(pb::Untyped { value: v })
        }
        plain::MetricType::HISTOGRAM => {
            let h = m.get_histogram();
            let mut p = pb::Histogram {
                sample_count: h.get_sample_count(),
                sample_sum: h.get_sample_sum(),
                bucket: h
                    .get_bucket()
                    .iter()
                    .map(|b| pb::Bucket {
                        cumulative_count: b.cumulative_count(),
                        upper_bound: b.upper_bound(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            if let Some(k) = native.get(&native_key(family.name(), m.get_label())) {
                let n = Native::of(k);
                p.schema = NATIVE_SCHEMA;
                p.zero_threshold = ZERO_THRESHOLD_SECONDS;
                p.zero_count = n.zero_count;
                p.positive_span = n
                    .spans
                    .into_iter()
                    .map(|(offset, length)| pb::BucketSpan { offset, length })
                    .collect();
                p.positive_delta = n.deltas;
            }
            out.histogram = Some(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_with_native_histograms_gets_protobuf_and_others_text() {
        // Prometheus 2.42 with --enable-feature=native-histograms (as seen on the wire), a
        // later one, and without the feature.
        let native = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;\
                      encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,\
                      application/openmetrics-text;version=0.0.1;q=0.75,\
                      text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let later = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;\
                     encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(later)), Format::Protobuf);
        let classic = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                       version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(native)), Format::Protobuf);
        assert_eq!(Format::negotiate(Some(classic)), Format::Text);
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(Format::negotiate(Some("garbage;;,,")), Format::Text);
        // Protobuf of another message, or not delimited: not ours to send.
        assert_eq!(
            Format::negotiate(Some(
                "application/vnd.google.protobuf;proto=other.Message;encoding=delimited"
            )),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text"
            )),
            Format::Text
        );
        // Text preferred over protobuf.
        assert_eq!(
            Format::negotiate(Some(
                "text/plain;q=0.9,application/vnd.google.protobuf;\
                 proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.5"
            )),
            Format::Text
        );
    }

    /// Expand spans and deltas back into (native index, count).
    fn expand(n: &Native) -> Vec<(i32, u64)> {
        let mut out = Vec::new();
        let (mut idx, mut count) = (0i32, 0i64);
        let mut deltas = n.deltas.iter();
        // The first offset is the first index; later ones count from the end of the span before.
        for &(offset, len) in &n.spans {
            idx += offset;
            for _ in 0..len {
                count += deltas.next().unwrap();
                out.push((idx, count as u64));
                idx += 1;
            }
        }
        assert!(deltas.next().is_none());
        out
    }

    #[test]
    fn native_buckets_are_the_kernel_buckets() {
        let mut h = Histogram::default();
        // The zero bucket, 1 s (native 0) twice, just above 1 s (native 1), 2 s (native 8),
        // and overflow.
        for v in [
            0,
            953,
            1_000_000_000,
            1_000_000_000,
            1_000_000_001,
            2_000_000_000,
        ] {
            h.record(v);
        }
        h.record(100_000_000_000);
        let n = Native::of(&h);
        assert_eq!(n.zero_count, 2);
        assert_eq!(n.spans, vec![(0, 2), (6, 1), (32, 1)]);
        assert_eq!(expand(&n), vec![(0, 2), (1, 1), (8, 1), (41, 1)]);
        let empty = Native::of(&Histogram::default());
        assert!(empty.spans.is_empty() && empty.deltas.is_empty() && empty.zero_count == 0);
    }
}
