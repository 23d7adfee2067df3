//! What the partitioner decided, for people: the `explain` table, a Chrome-trace/Perfetto
//! timeline, and a Graphviz picture of the kernels coloured by unit.

use std::fmt::Write;

use super::partition::{Placement, Schedule};
use super::{unit_index, Problem, UnitCost, UNITS};
use tessera_ir::Device as Unit;

fn fmt_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MB", b as f64 / (1u64 << 20) as f64)
    } else if b >= 1024 {
        format!("{:.1} KB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

fn fmt_cost(c: &UnitCost) -> String {
    match c {
        UnitCost::Runs { us, .. } => format!("{us:.1}"),
        UnitCost::Declined(_) => "-".into(),
    }
}

/// Why kernel `k` is where the schedule put it.
fn why(p: &Problem, s: &Schedule, k: usize) -> String {
    let kern = &p.kernels[k];
    let u = s.assign[k];
    let mine = kern.us(u).unwrap_or(0.0);
    let others: Vec<Unit> = UNITS.iter().copied().filter(|&o| o != u && kern.us(o).is_some()).collect();
    if others.is_empty() {
        return format!("only the {u} runs it");
    }
    let (fast, fast_us) = others
        .iter()
        .map(|&o| (o, kern.us(o).unwrap_or(f64::INFINITY)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("others is not empty");
    if mine <= fast_us {
        let handoffs = s.handoffs.iter().filter(|h| h.from == Some(k) || is_into(p, s, h, k)).count();
        if handoffs > 0 {
            return format!("fastest here ({:.1} us less than the {fast}); worth its hand-overs", fast_us - mine);
        }
        return format!("fastest here ({:.1} us less than the {fast})", fast_us - mine);
    }
    // A slower unit: the schedule found it better overall.
    let preds_here = kern.preds.iter().filter(|(q, _)| s.assign[*q] == u).count();
    if preds_here > 0 {
        format!(
            "the {fast} is {:.1} us faster, but its operands are here: a hand-over or the {fast}'s queue costs more",
            mine - fast_us
        )
    } else {
        format!("the {fast} is {:.1} us faster but busy then: running here overlaps", mine - fast_us)
    }
}

fn is_into(p: &Problem, s: &Schedule, h: &super::partition::Handoff, k: usize) -> bool {
    h.to_unit == s.assign[k] && h.from.is_some_and(|f| p.kernels[k].preds.iter().any(|(q, _)| *q == f))
}

/// The `explain` report: per kernel the chosen unit, its cost on each unit, its hand-overs and
/// why; then the units' reasons for declining, and single-unit against partitioned latency.
pub fn explain(p: &Problem, pl: &Placement) -> String {
    let s = &pl.schedule;
    let mut o = String::new();
    let binds: Vec<String> = p.bindings.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(
        o,
        "profile {} ({}), shapes at {}; costs in microseconds (- : the unit declines it)",
        p.profile.name,
        p.profile.soc,
        if binds.is_empty() { "static sizes".into() } else { binds.join(", ") }
    );
    let w = p.kernels.iter().map(|k| k.name.len()).max().unwrap_or(6).clamp(6, 44);
    let _ = writeln!(
        o,
        "{:<w$}  unit  {:>9}  {:>9}  {:>9}  {:>17}  in from / why",
        "kernel", "cpu", "gpu", "npu", "start..end"
    );
    for (k, kern) in p.kernels.iter().enumerate() {
        let u = s.assign[k];
        let mut name = kern.name.clone();
        if name.len() > w {
            name.truncate(w - 1);
            name.push('~');
        }
        let mut cells: Vec<String> = kern.cost.iter().map(fmt_cost).collect();
        cells[unit_index(u)] = format!("*{}", cells[unit_index(u)]);
        let ins: Vec<String> = s
            .handoffs
            .iter()
            .filter(|h| h.to_unit == u && is_into(p, s, h, k))
            .map(|h| format!("{} {}", h.from_unit, fmt_bytes(h.bytes)))
            .collect();
        let from = if ins.is_empty() { String::new() } else { format!("<- {}; ", ins.join(", ")) };
        let _ = writeln!(
            o,
            "{name:<w$}  {u:<4}  {:>9}  {:>9}  {:>9}  {:>17}  {from}{}",
            cells[0],
            cells[1],
            cells[2],
            format!("{:.1}..{:.1}", s.start[k], s.finish[k]),
            why(p, s, k)
        );
    }
    // Declines, grouped.
    let _ = writeln!(o, "\nwhy units decline kernels:");
    for (ui, u) in UNITS.iter().enumerate() {
        let mut reasons: Vec<(String, usize)> = Vec::new();
        for kern in &p.kernels {
            if let UnitCost::Declined(w) = &kern.cost[ui] {
                match reasons.iter_mut().find(|(r, _)| r == w) {
                    Some(e) => e.1 += 1,
                    None => reasons.push((w.clone(), 1)),
                }
            }
        }
        reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
        for (r, c) in reasons.iter().take(6) {
            let _ = writeln!(o, "  {u}: {c} x {r}");
        }
        if reasons.len() > 6 {
            let _ = writeln!(o, "  {u}: ... {} more reasons", reasons.len() - 6);
        }
    }
    let hb: u64 = s.handoffs.iter().map(|h| h.bytes).sum();
    let hu: f64 = s.handoffs.iter().map(|h| h.us).sum();
    let _ = writeln!(
        o,
        "\nhand-overs: {} ({} through shared DRAM: no copies, {:.1} us of signals and cache maintenance at {} us + {} GB/s)",
        s.handoffs.len(),
        fmt_bytes(hb),
        hu,
        p.profile.sync.handoff_us,
        p.profile.sync.cache_gbps
    );
    o.push_str(&summary(p, pl));
    o
}

/// Single-unit and partitioned latency, and the speed-up.
pub fn summary(p: &Problem, pl: &Placement) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "simulated latency on {}:", p.profile.name);
    for (u, r) in &pl.singles {
        match r {
            Ok(s) => {
                let _ = writeln!(o, "  {:<12} {:>10.1} us", format!("{u}-only"), s.makespan);
            }
            Err(why) => {
                let _ = writeln!(o, "  {:<12} {:>10}    not possible: {why}", format!("{u}-only"), "-");
            }
        }
    }
    let s = &pl.schedule;
    let counts: Vec<String> =
        UNITS.iter().map(|&u| format!("{} {u}", s.assign.iter().filter(|&&a| a == u).count())).collect();
    let _ = writeln!(
        o,
        "  {:<12} {:>10.1} us  ({} kernels: {}; {} segments, {} hand-overs)",
        "partitioned",
        s.makespan,
        s.assign.len(),
        counts.join(", "),
        s.segments(),
        s.handoffs.len()
    );
    if let Some((u, m)) = pl.best_single() {
        let _ = writeln!(o, "  speed-up over the best single unit ({u}): {:.2}x", m / s.makespan.max(1e-9));
    }
    let busy = s.busy();
    let _ = writeln!(
        o,
        "  busy: cpu {:.0}%, gpu {:.0}%, npu {:.0}% of the makespan",
        100.0 * busy[0] / s.makespan.max(1e-9),
        100.0 * busy[1] / s.makespan.max(1e-9),
        100.0 * busy[2] / s.makespan.max(1e-9)
    );
    o
}

/// One span of a timeline.
#[derive(Clone, Debug)]
pub struct Span {
    /// The timeline's row group (`host (measured)`, `snapdragon-8-gen-3 (simulated)`).
    pub process: String,
    /// The row (`cpu`, `gpu`, `npu`, `sync`).
    pub row: String,
    pub name: String,
    pub start_us: f64,
    pub dur_us: f64,
    pub args: Vec<(String, String)>,
}

/// The simulated schedule as spans.
pub fn schedule_spans(p: &Problem, s: &Schedule, process: &str) -> Vec<Span> {
    let mut v = Vec::new();
    for (k, kern) in p.kernels.iter().enumerate() {
        let u = s.assign[k];
        let mut args = vec![("unit".to_string(), u.to_string())];
        for (ui, c) in kern.cost.iter().enumerate() {
            args.push((format!("{} us", UNITS[ui]), fmt_cost(c)));
        }
        if let UnitCost::Runs { how, .. } = &kern.cost[unit_index(u)] {
            args.push(("estimate".into(), how.clone()));
        }
        v.push(Span {
            process: process.into(),
            row: u.to_string(),
            name: kern.name.clone(),
            start_us: s.start[k],
            dur_us: s.finish[k] - s.start[k],
            args,
        });
    }
    for h in &s.handoffs {
        let from = h.from.map_or("graph inputs".to_string(), |f| p.kernels[f].name.clone());
        v.push(Span {
            process: process.into(),
            row: "sync".into(),
            name: format!("{} -> {}", h.from_unit, h.to_unit),
            start_us: h.start_us,
            dur_us: h.us,
            args: vec![("from".into(), from), ("bytes".into(), h.bytes.to_string())],
        });
    }
    v
}

/// A Chrome-trace JSON (open in ui.perfetto.dev or chrome://tracing).
pub fn chrome_trace(spans: &[Span]) -> String {
    use serde_json::{json, Value};
    let mut procs: Vec<&str> = Vec::new();
    let mut rows: Vec<(usize, &str)> = Vec::new();
    let row_order = |r: &str| {
        ["cpu", "cpu kernels", "gpu", "gpu kernels", "npu", "npu kernels", "sync"]
            .iter()
            .position(|x| *x == r)
            .unwrap_or(7)
    };
    let mut events: Vec<Value> = Vec::new();
    for s in spans {
        let pid = match procs.iter().position(|p| *p == s.process) {
            Some(i) => i,
            None => {
                procs.push(&s.process);
                events
                    .push(json!({"ph": "M", "name": "process_name", "pid": procs.len(), "args": {"name": s.process}}));
                events.push(json!({"ph": "M", "name": "process_sort_index", "pid": procs.len(), "args": {"sort_index": procs.len()}}));
                procs.len() - 1
            }
        } + 1;
        let tid = match rows.iter().position(|r| *r == (pid, s.row.as_str())) {
            Some(i) => i + 1,
            None => {
                rows.push((pid, &s.row));
                let tid = rows.len();
                events.push(json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": s.row}}));
                events.push(json!({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": row_order(&s.row)}}));
                tid
            }
        };
        let args: serde_json::Map<String, Value> =
            s.args.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect();
        events.push(json!({
            "ph": "X", "name": s.name, "cat": s.row, "pid": pid, "tid": tid,
            "ts": s.start_us, "dur": s.dur_us.max(0.001), "args": args
        }));
    }
    serde_json::to_string_pretty(&json!({ "traceEvents": events, "displayTimeUnit": "ms" })).unwrap_or_default()
}

fn color(u: Unit) -> &'static str {
    match u {
        Unit::Cpu => "#9ecae1",
        Unit::Gpu => "#a1d99b",
        Unit::Npu => "#fdae6b",
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn row_color(row: &str) -> &'static str {
    match row.split_whitespace().next().unwrap_or("") {
        "cpu" => color(Unit::Cpu),
        "gpu" => color(Unit::Gpu),
        "npu" => color(Unit::Npu),
        _ => "#d9d9d9",
    }
}

/// A timeline as a self-contained SVG picture (open it in a browser): one lane per unit, a box
/// per span coloured by unit (hover for its name, times and arguments), a time axis, and each
/// lane's busy share.
pub fn timeline_svg(spans: &[Span], title: &str) -> String {
    const LEFT: f64 = 190.0;
    const WIDTH: f64 = 1200.0;
    const LANE: f64 = 30.0;
    const TOP: f64 = 46.0;
    let order = |r: &str| ["cpu", "gpu", "npu", "sync"].iter().position(|x| r.starts_with(x)).unwrap_or(4);
    let mut lanes: Vec<(&str, &str)> = Vec::new();
    for s in spans {
        if !lanes.contains(&(s.process.as_str(), s.row.as_str())) {
            lanes.push((&s.process, &s.row));
        }
    }
    // Every unit gets a lane, an idle one too: a unit the placement left out is worth seeing.
    let processes: Vec<&str> = lanes.iter().map(|(p, _)| *p).collect();
    for p in processes {
        if lanes.iter().any(|(q, r)| *q == p && order(r) < 3) {
            for unit in ["cpu", "gpu", "npu"] {
                if !lanes.iter().any(|(q, r)| *q == p && r.starts_with(unit)) {
                    lanes.push((p, unit));
                }
            }
        }
    }
    lanes.sort_by_key(|(p, r)| (spans.iter().position(|s| s.process == *p), order(r), *r));
    let end = spans.iter().map(|s| s.start_us + s.dur_us).fold(0.0, f64::max).max(1e-3);
    let scale = (WIDTH - LEFT - 20.0) / end;
    let height = TOP + LANE * lanes.len() as f64 + 40.0;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(o, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(o, "<text x=\"10\" y=\"20\" font-size=\"15\" font-weight=\"bold\">{}</text>", xml(title));
    let _ = writeln!(
        o,
        "<text x=\"10\" y=\"36\" fill=\"#555\">{} spans over {}; hover a box for its kernel, times and cost estimates</text>",
        spans.len(),
        fmt_us(end)
    );
    for (i, (process, row)) in lanes.iter().enumerate() {
        let y = TOP + LANE * i as f64;
        let busy = spans.iter().filter(|s| s.process == *process && s.row == *row).fold(0.0, |a, s| a + s.dur_us);
        let _ = writeln!(
            o,
            "<rect x=\"0\" y=\"{y}\" width=\"{WIDTH}\" height=\"{LANE}\" fill=\"{}\"/>",
            if i % 2 == 0 { "#fafafa" } else { "#f0f0f0" }
        );
        let label = if lanes.iter().filter(|(p, _)| p == process).count() == lanes.len() {
            row.to_string()
        } else {
            format!("{process}: {row}")
        };
        let _ = writeln!(
            o,
            "<text x=\"8\" y=\"{:.1}\">{}</text><text x=\"8\" y=\"{:.1}\" fill=\"#777\" font-size=\"10\">busy {:.0}%</text>",
            y + 13.0,
            xml(&label),
            y + 25.0,
            100.0 * busy / end
        );
        for s in spans.iter().filter(|s| s.process == *process && s.row == *row) {
            let x = LEFT + s.start_us * scale;
            let w = (s.dur_us * scale).max(0.8);
            let mut tip = format!("{}\nstart {}, {}", s.name, fmt_us(s.start_us), fmt_us(s.dur_us));
            for (k, v) in &s.args {
                tip += &format!("\n{k}: {v}");
            }
            let _ = writeln!(
                o,
                "<rect x=\"{x:.2}\" y=\"{:.1}\" width=\"{w:.2}\" height=\"{:.1}\" fill=\"{}\" stroke=\"#444\" stroke-width=\"0.3\"><title>{}</title></rect>",
                y + 4.0,
                LANE - 8.0,
                row_color(row),
                xml(&tip)
            );
        }
    }
    // The time axis.
    let y = TOP + LANE * lanes.len() as f64 + 4.0;
    let step = {
        let raw = end / 8.0;
        let p = 10f64.powf(raw.log10().floor());
        [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|s| *s >= raw).unwrap_or(10.0 * p)
    };
    let _ = writeln!(o, "<line x1=\"{LEFT}\" y1=\"{y}\" x2=\"{:.1}\" y2=\"{y}\" stroke=\"#444\"/>", LEFT + end * scale);
    let mut t = 0.0;
    while t <= end * 1.0001 {
        let x = LEFT + t * scale;
        let _ = writeln!(
            o,
            "<line x1=\"{x:.1}\" y1=\"{y}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#444\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{}</text>",
            y + 5.0,
            y + 17.0,
            fmt_us(t)
        );
        t += step;
    }
    let _ = writeln!(o, "</svg>");
    o
}

fn fmt_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.1} us")
    }
}

/// A Graphviz picture: kernels coloured by unit, hand-overs as bold red edges with their bytes.
pub fn dot(p: &Problem, s: &Schedule) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "digraph placement {{");
    let _ =
        writeln!(o, "  rankdir=TB; node [shape=box, style=\"filled,rounded\", fontname=\"Helvetica\", fontsize=10];");
    let _ = writeln!(
        o,
        "  label=\"{} : partitioned {:.1} us (cpu blue, gpu green, npu orange; red edges: hand-overs)\"; labelloc=t;",
        p.profile.name, s.makespan
    );
    let _ = writeln!(o, "  inputs [shape=ellipse, fillcolor=\"#eeeeee\", label=\"graph inputs (cpu)\"];");
    let _ = writeln!(o, "  outputs [shape=ellipse, fillcolor=\"#eeeeee\", label=\"graph outputs (cpu)\"];");
    for (k, kern) in p.kernels.iter().enumerate() {
        let u = s.assign[k];
        let _ = writeln!(
            o,
            "  k{k} [fillcolor=\"{}\", label=\"{}\\n{u} {:.1} us\"];",
            color(u),
            kern.name.replace('"', "'"),
            s.finish[k] - s.start[k]
        );
        if kern.input_bytes > 0 {
            let cross = u != Unit::Cpu;
            let _ = writeln!(o, "  inputs -> k{k}{};", if cross { " [color=red, penwidth=2]" } else { "" });
        }
        for &(q, bytes) in &kern.preds {
            if s.assign[q] != u {
                let _ =
                    writeln!(o, "  k{q} -> k{k} [color=red, penwidth=2, label=\"{}\", fontsize=8];", fmt_bytes(bytes));
            } else {
                let _ = writeln!(o, "  k{q} -> k{k};");
            }
        }
        if kern.output_bytes > 0 {
            let cross = u != Unit::Cpu;
            let _ = writeln!(o, "  k{k} -> outputs{};", if cross { " [color=red, penwidth=2]" } else { "" });
        }
    }
    let _ = writeln!(o, "}}");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(row: &str, name: &str, start_us: f64, dur_us: f64) -> Span {
        Span { process: "phone".into(), row: row.into(), name: name.into(), start_us, dur_us, args: vec![] }
    }

    #[test]
    fn timeline_svg_draws_a_lane_per_unit_and_a_box_per_span() {
        let spans = [
            span("cpu", "n1 matmul<f32>", 0.0, 10.0),
            span("gpu", "n2 add", 10.0, 30.0),
            span("sync", "cpu -> gpu", 9.0, 1.0),
        ];
        let svg = timeline_svg(&spans, "a & b");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{svg}");
        // The idle NPU gets its lane; names are escaped.
        for lane in [">cpu<", ">gpu<", ">npu<", ">sync<"] {
            assert!(svg.contains(lane), "{lane} missing:\n{svg}");
        }
        assert!(svg.contains("a &amp; b") && svg.contains("n1 matmul&lt;f32&gt;"), "{svg}");
        assert_eq!(svg.matches("<title>").count(), spans.len());
        // The GPU box starts a quarter of the way along and spans three quarters of the axis.
        let width = 1200.0 - 190.0 - 20.0;
        assert!(svg.contains(&format!("x=\"{:.2}\"", 190.0 + width / 4.0)), "{svg}");
        assert!(svg.contains("busy 75%") && svg.contains("busy 25%") && svg.contains("busy 0%"), "{svg}");
    }
}
