//! `capture --html FILE`: one self-contained page (inline styles and script, nothing fetched
//! at view time) with latency heatmaps over time (x: the capture's intervals, y: power-of-two
//! latency rows, colour: count on a log scale) beside the summary tables.
use std::{fmt::Write as _, time::SystemTime};

use super::{
    CaptureReport,
    timeline::{Column, SERIES, Timeline},
};
use crate::hist::{OCTAVE_ROWS, fmt_ns, octave_bounds};

/// Escape text for HTML content and attribute values (comms and cgroup paths are anyone's).
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// `HH:MM:SS` (UTC) of a wall-clock time.
fn clock(t: SystemTime) -> String {
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.get(11..19).unwrap_or(&s).to_string()
}

/// Colour of a cell: light yellow through orange and red to dark purple as `count` goes from
/// 1 to `max` on a log scale (so a few slow waits stay visible next to thousands of fast ones).
fn colour(count: u64, max: u64) -> String {
    const STOPS: [(f64, [f64; 3]); 5] = [
        (0.0, [255.0, 245.0, 190.0]),
        (0.3, [254.0, 178.0, 76.0]),
        (0.55, [240.0, 59.0, 32.0]),
        (0.8, [189.0, 0.0, 38.0]),
        (1.0, [73.0, 0.0, 106.0]),
    ];
    let t = if max <= 1 {
        1.0
    } else {
        (count as f64).ln() / (max as f64).ln()
    }
    .clamp(0.0, 1.0);
    let i = STOPS.iter().rposition(|s| s.0 <= t).unwrap_or(0).min(3);
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let f = (t - a.0) / (b.0 - a.0);
    let c: Vec<u8> = (0..3)
        .map(|k| (a.1[k] + (b.1[k] - a.1[k]) * f).round() as u8)
        .collect();
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

const CELL_H: usize = 14;
const LEFT: usize = 72;
const BOTTOM: usize = 22;

/// One heatmap as SVG: a `<g class="column">` per column (empty ones included), a rect per
/// non-empty cell with its tooltip.
fn heatmap(o: &mut String, key: &str, title: &str, cols: &[Column], series: usize) {
    let total: u64 = cols
        .iter()
        .map(|c| c.rows[series].iter().sum::<u64>())
        .sum();
    let used = |r: usize| cols.iter().any(|c| c.rows[series][r] > 0);
    let first = (0..OCTAVE_ROWS).find(|&r| used(r));
    let last = (0..OCTAVE_ROWS).rfind(|&r| used(r));
    let max = cols
        .iter()
        .flat_map(|c| c.rows[series].iter().copied())
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        o,
        "<figure class=\"heatmap\" id=\"{key}\" data-columns=\"{}\" data-count=\"{total}\">\
         <figcaption>{} <span class=\"dim\">{total} events, peak cell {max}</span></figcaption>",
        cols.len(),
        esc(title)
    );
    let (first, last) = match (first, last) {
        (Some(f), Some(l)) => (f, l),
        _ => (0, 0),
    };
    let rows = last - first + 1;
    let cw = (760 / cols.len().max(1)).clamp(2, 48);
    let (w, h) = (LEFT + cw * cols.len() + 4, rows * CELL_H + BOTTOM);
    let _ = writeln!(
        o,
        "<svg viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\">\
         <rect class=\"plot\" x=\"{LEFT}\" y=\"0\" width=\"{}\" height=\"{}\"/>",
        cw * cols.len(),
        rows * CELL_H
    );
    // Rows bottom-up: short latencies at the bottom, as on a y axis.
    let y_of = |r: usize| (last - r) * CELL_H;
    for r in first..=last {
        let (lo, _) = octave_bounds(r);
        let _ = writeln!(
            o,
            "<text class=\"ylab\" x=\"{}\" y=\"{}\">{}</text>",
            LEFT - 4,
            y_of(r) + CELL_H - 3,
            esc(&fmt_ns(lo))
        );
    }
    for (i, c) in cols.iter().enumerate() {
        let x = LEFT + i * cw;
        let _ = write!(
            o,
            "<g class=\"column\" data-start=\"{}\" data-end=\"{}\">",
            humantime::format_rfc3339_millis(c.start),
            humantime::format_rfc3339_millis(c.end)
        );
        for r in first..=last {
            let n = c.rows[series][r];
            if n == 0 {
                continue;
            }
            let (lo, hi) = octave_bounds(r);
            let _ = write!(
                o,
                "<rect x=\"{x}\" y=\"{}\" width=\"{cw}\" height=\"{CELL_H}\" fill=\"{}\">\
                 <title>{} to {}: {n} between {} and {}</title></rect>",
                y_of(r),
                colour(n, max),
                clock(c.start),
                clock(c.end),
                esc(&fmt_ns(lo)),
                esc(&hi.map_or_else(|| "above".into(), fmt_ns)),
            );
        }
        o.push_str("</g>\n");
    }
    // About eight time labels along x.
    let every = cols.len().div_ceil(8).max(1);
    for (i, c) in cols.iter().enumerate().step_by(every) {
        let _ = writeln!(
            o,
            "<text class=\"xlab\" x=\"{}\" y=\"{}\">{}</text>",
            LEFT + i * cw,
            rows * CELL_H + 15,
            clock(c.start)
        );
    }
    o.push_str("</svg></figure>\n");
}

fn table(o: &mut String, title: &str, head: &[&str], rows: Vec<Vec<String>>) {
    let _ = write!(
        o,
        "<h2>{}</h2><table class=\"sortable\"><thead><tr>",
        esc(title)
    );
    for h in head {
        let _ = write!(o, "<th>{}</th>", esc(h));
    }
    o.push_str("</tr></thead><tbody>\n");
    if rows.is_empty() {
        let _ = write!(
            o,
            "<tr><td colspan=\"{}\" class=\"dim\">none</td></tr>",
            head.len()
        );
    }
    for r in rows {
        o.push_str("<tr>");
        for cell in r {
            let _ = write!(o, "<td>{}</td>", esc(&cell));
        }
        o.push_str("</tr>\n");
    }
    o.push_str("</tbody></table>\n");
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fff}
h1{font-size:18px;margin:0 0 4px} h2{font-size:15px;margin:18px 0 6px}
.dim{color:#777;font-weight:normal}
.layout{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
.maps{flex:0 1 auto;min-width:0} .tables{flex:1 1 520px;min-width:0;overflow-x:auto}
figure{margin:0 0 18px} figcaption{font-weight:600;margin-bottom:4px}
svg{max-width:100%;height:auto} .plot{fill:#f3f3f3}
.ylab{font-size:10px;text-anchor:end;fill:#555} .xlab{font-size:10px;fill:#555}
svg rect:hover{stroke:#000;stroke-width:1}
table{border-collapse:collapse;font-size:12px;width:100%}
th,td{padding:2px 6px;border-bottom:1px solid #e5e5e5;text-align:right;white-space:nowrap}
td:first-child,th:first-child{text-align:left}
th{cursor:pointer;background:#fafafa;position:sticky;top:0}
td:nth-child(n+2),th:nth-child(n+2){text-align:right} .summary td{text-align:left}
.legend{display:flex;align-items:center;gap:6px;font-size:11px;color:#555;margin-bottom:12px}
.legend span{display:inline-block;width:18px;height:10px}
.note{color:#555;font-size:12px}
";

/// Click a header to sort its table (numbers by value, with units: ns, µs, ms, s, %).
const SCRIPT: &str = "
(function(){
  var unit={ns:1e-9,'µs':1e-6,ms:1e-3,s:1,'%':1};
  function val(t){var m=/^(-?[0-9.]+)\\s*(ns|µs|ms|s|%)?$/.exec(t.trim());
    return m?parseFloat(m[1])*(m[2]?unit[m[2]]:1):null;}
  document.querySelectorAll('table.sortable').forEach(function(tab){
    tab.querySelectorAll('th').forEach(function(th,i){
      th.addEventListener('click',function(){
        var body=tab.tBodies[0],rows=Array.prototype.slice.call(body.rows);
        var desc=th.dataset.dir!=='desc';th.dataset.dir=desc?'desc':'asc';
        rows.sort(function(a,b){
          var x=a.cells[i]?a.cells[i].textContent:'',y=b.cells[i]?b.cells[i].textContent:'';
          var p=val(x),q=val(y),c=(p!==null&&q!==null)?p-q:x.localeCompare(y);
          return desc?-c:c;});
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
  document.documentElement.dataset.rendered='1';
})();
";

/// The page for the whole capture `r` and its `timeline`.
pub fn render_html(r: &CaptureReport, t: &Timeline) -> String {
    let mut o = String::new();
    let scope = if r.filter.pids.is_empty() && r.filter.cgroup.is_none() {
        "host-wide".to_string()
    } else {
        let mut s: Vec<String> = r.filter.pids.iter().map(|p| format!("pid {p}")).collect();
        s.extend(r.filter.cgroup.iter().map(|c| format!("cgroup {c}")));
        s.join(", ")
    };
    let _ = write!(
        o,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>schedlat capture: {scope}, {}</title><style>{STYLE}</style></head><body>\n\
         <h1>schedlat capture: {scope}</h1><div class=\"dim\">{} to {} ({:.2} s), {} columns of \
         {} interval(s) each</div>\n",
        esc(&r.interval_start),
        esc(&r.interval_start),
        esc(&r.interval_end),
        r.duration_s,
        t.columns.len(),
        t.intervals_per_column,
        scope = esc(&scope),
    );
    let _ = write!(o, "<div class=\"legend\">fewer");
    for k in [1u64, 3, 10, 30, 100, 300, 1000] {
        let _ = write!(o, "<span style=\"background:{}\"></span>", colour(k, 1000));
    }
    o.push_str(
        "more (log scale). Each row runs from its label to twice it; hover a cell for its \
         interval, range and count. Times are UTC.</div>\n",
    );

    o.push_str("<div class=\"layout\"><div class=\"maps\">\n");
    for (i, (key, title)) in SERIES.iter().enumerate() {
        if *key == "go" && !t.go {
            o.push_str(
                "<p class=\"note\">No Go heatmap: it needs per-event Go probes \
                 (<code>--pid</code> of a Go program with <code>--go-probes on</code>).</p>\n",
            );
            continue;
        }
        heatmap(&mut o, key, title, &t.columns, i);
    }
    o.push_str("</div><div class=\"tables\">\n");

    let s = |h: &crate::hist::HistSummary| {
        vec![
            h.count.to_string(),
            fmt_ns(h.p50_ns),
            fmt_ns(h.p90_ns),
            fmt_ns(h.p99_ns),
            fmt_ns(h.max_ns),
            fmt_ns(h.sum_ns),
        ]
    };
    let mut summary = Vec::new();
    for (name, h) in [
        ("run-queue, all", &r.runqueue.all),
        ("run-queue, woken", &r.runqueue.by_cause.woken),
        ("run-queue, preempted", &r.runqueue.by_cause.preempted),
        ("futex waits", &r.futex.all),
    ] {
        let mut row = vec![name.to_string()];
        row.extend(s(h));
        summary.push(row);
    }
    table(
        &mut o,
        "Summary",
        &["", "count", "p50", "p90", "p99", "max", "total"],
        summary,
    );
    let top = 15;
    table(
        &mut o,
        "Top cgroups by run-queue delay",
        &[
            "cgroup",
            "waits",
            "total",
            "p99",
            "futex waits",
            "futex total",
        ],
        r.cgroups
            .iter()
            .take(top)
            .map(|c| {
                vec![
                    c.cgroup.clone(),
                    c.runqueue.count.to_string(),
                    fmt_ns(c.runqueue.sum_ns),
                    fmt_ns(c.runqueue.p99_ns),
                    c.futex_count.to_string(),
                    fmt_ns(c.futex_sum_ns),
                ]
            })
            .collect(),
    );
    table(
        &mut o,
        &format!("Top tasks by run-queue delay ({} seen)", r.tasks.len()),
        &[
            "task",
            "pid",
            "waits",
            "total",
            "max",
            "preempted",
            "futex",
            "futex total",
        ],
        r.tasks
            .iter()
            .take(top)
            .map(|t| {
                vec![
                    format!("{}[{}]", t.comm, t.tid),
                    t.pid.to_string(),
                    t.runqueue_count.to_string(),
                    fmt_ns(t.runqueue_sum_ns),
                    fmt_ns(t.runqueue_max_ns),
                    if t.runqueue_sum_ns > 0 {
                        format!(
                            "{:.0}%",
                            100.0 * t.runqueue_preempted_sum_ns as f64 / t.runqueue_sum_ns as f64
                        )
                    } else {
                        "-".into()
                    },
                    t.futex_count.to_string(),
                    fmt_ns(t.futex_sum_ns),
                ]
            })
            .collect(),
    );
    table(
        &mut o,
        "Top wakeups (waker -> wakee)",
        &["waker", "wakee", "count"],
        r.wakeups
            .iter()
            .take(top)
            .map(|w| {
                vec![
                    super::waker_label(w),
                    format!("{}[{}]", w.wakee_comm, w.wakee_tid),
                    w.count.to_string(),
                ]
            })
            .collect(),
    );
    let mut slow: Vec<_> = r.slow_events.iter().collect();
    slow.sort_by_key(|e| std::cmp::Reverse(e.delay_ns));
    table(
        &mut o,
        &format!(
            "Slowest run-queue delays (>= {}: {})",
            fmt_ns(r.slow_threshold_ns),
            r.slow_events.len()
        ),
        &["delay", "task", "cpu", "cause", "ran instead"],
        slow.iter()
            .take(top)
            .map(|e| {
                vec![
                    fmt_ns(e.delay_ns),
                    format!("{}[{}]", e.comm, e.tid),
                    e.cpu.to_string(),
                    e.cause.to_string(),
                    format!("{}[{}]", e.ran_instead.comm, e.ran_instead.tid),
                ]
            })
            .collect(),
    );
    let lost: Vec<String> = r
        .dropped
        .iter()
        .filter(|(k, v)| **v > 0 && k.as_str() != "total")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = write!(
        o,
        "<p class=\"note\">Dropped events: {}</p>",
        esc(&if lost.is_empty() {
            "none".to_string()
        } else {
            lost.join(" ")
        })
    );
    let _ = write!(o, "</div></div>\n<script>{SCRIPT}</script></body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn escapes_what_a_comm_may_hold() {
        assert_eq!(esc("<script>&\"x'"), "&lt;script&gt;&amp;&quot;x&#39;");
    }

    #[test]
    fn colours_run_light_to_dark_on_a_log_scale() {
        assert_eq!(colour(1, 1000), "#fff5be");
        assert_eq!(colour(1000, 1000), "#49006a");
        assert_eq!(colour(5, 1), "#49006a");
        // Brightness falls as the count grows.
        let lum = |c: &str| {
            (1..7)
                .step_by(2)
                .map(|i| u32::from_str_radix(&c[i..i + 2], 16).unwrap())
                .sum::<u32>()
        };
        let mut prev = u32::MAX;
        for k in [1, 10, 100, 1000] {
            let l = lum(&colour(k, 1000));
            assert!(l < prev || k == 1, "{k}");
            prev = l;
        }
    }

    #[test]
    fn one_svg_column_per_timeline_column() {
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        let mut t = Timeline::new(false);
        for i in 0..3u64 {
            let mut rows = [[0u64; OCTAVE_ROWS]; SERIES.len()];
            rows[0][3 + i as usize] = 10 * (i + 1);
            t.push(Column {
                start: at(i),
                end: at(i + 1),
                rows,
            });
        }
        let mut o = String::new();
        heatmap(&mut o, "runq_woken", "<title>", &t.columns, 0);
        assert_eq!(o.matches("<g class=\"column\"").count(), 3);
        assert!(o.contains("data-columns=\"3\"") && o.contains("data-count=\"60\""));
        assert_eq!(
            o.matches("<rect x=").count(),
            3,
            "one cell per non-empty row"
        );
        assert!(o.contains("&lt;title&gt;"), "the title is escaped");
        // An empty series still has its columns.
        let mut e = String::new();
        heatmap(&mut e, "futex", "Futex", &t.columns, 2);
        assert_eq!(e.matches("<g class=\"column\"").count(), 3);
        assert!(e.contains("data-count=\"0\""));
    }
}
