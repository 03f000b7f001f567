//! Results: the raw CSV (one row per run), the summary table, the plot, and SETUP.md.

use crate::def::{Definition, Sweep};
use crate::run::RunOptions;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Column names of `raw.csv`, in order.
pub const COLUMNS: &[&str] = &[
    "series",
    "mode",
    "var",
    "value",
    "rep",
    "bench",
    "tasks",
    "workers",
    "seconds",
    "tasks_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "first_ms",
    "peak_rss_mib",
    "cpu_s",
    "cpu_us_per_task",
    "pilots_cpu_s",
    "ideal_s",
    "efficiency",
    "broker_cpu_us_per_task",
    "cold_starts",
    "container_switches",
    "write_s",
    "read_s",
    "mb_per_s",
    "input_read_s",
    "map_s",
    "intermediate_write_s",
    "intermediate_read_s",
    "reduce_s",
    "output_write_s",
];

/// The phases of a MapReduce row, in task-seconds.
const PHASES: &[&str] = &[
    "input_read_s",
    "map_s",
    "intermediate_write_s",
    "intermediate_read_s",
    "reduce_s",
    "output_write_s",
];

/// One run of one point.
#[derive(Clone, Debug, Default)]
pub struct Row {
    pub series: String,
    pub mode: String,
    pub var: String,
    pub value: u64,
    pub rep: u32,
    pub bench: String,
    /// Numeric columns by name (missing ones are empty in the CSV).
    pub num: BTreeMap<String, f64>,
}

impl Row {
    pub fn from_bench(
        _def: &Definition,
        s: &Sweep,
        v: u64,
        rep: u32,
        j: &serde_json::Value,
    ) -> Row {
        let mut num = BTreeMap::new();
        let mut put = |k: &str, x: Option<f64>| {
            if let Some(x) = x.filter(|x| x.is_finite()) {
                num.insert(k.to_string(), x);
            }
        };
        let f = |k: &str| j.get(k).and_then(serde_json::Value::as_f64);
        // The Parsl anchor names its figures differently.
        if let Some(rate) = f("parsl_htex_tasks_per_s") {
            put("tasks_per_s", Some(rate));
            put("tasks", f("parsl_htex_tasks"));
            put("seconds", f("parsl_htex_tasks").map(|n| n / rate.max(1e-9)));
            put("p50_ms", f("parsl_htex_p50_ms"));
            put("p99_ms", f("parsl_htex_p99_ms"));
        }
        put("tasks", f("tasks").or(f("functions")));
        put("workers", f("workers"));
        put("cold_starts", f("cold_starts"));
        put("write_s", f("write_s"));
        put("read_s", f("read_s"));
        put("mb_per_s", f("mb_per_s"));
        for k in PHASES {
            put(k, f(k));
        }
        put("container_switches", f("container_switches"));
        put("seconds", f("seconds"));
        put("tasks_per_s", f("tasks_per_s"));
        for k in [
            "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "first_ms",
        ] {
            put(k, f(k));
        }
        put(
            "peak_rss_mib",
            f("interchange_peak_rss_bytes").map(|b| b / (1024.0 * 1024.0)),
        );
        // The endpoint's CPU: the interchange process's less the benchmark's in-process client
        // and broker (runs from before the split report the whole process).
        let cpu = f("endpoint_cpu_s").or(f("interchange_cpu_s"));
        put("cpu_s", cpu);
        put("pilots_cpu_s", f("pilots_cpu_s"));
        if let (Some(cpu), Some(tasks)) = (cpu, f("tasks")) {
            put("cpu_us_per_task", Some(cpu * 1e6 / tasks.max(1.0)));
        }
        if j.get("via_broker") == Some(&serde_json::Value::Bool(true)) {
            put("broker_cpu_us_per_task", f("broker_cpu_us_per_task"));
        }
        if let (Some(ms), Some(tasks), Some(workers), Some(secs)) =
            (s.sleep_ms, f("tasks"), f("workers"), f("seconds"))
        {
            let ideal = (tasks / workers.max(1.0)).ceil() * ms as f64 / 1000.0;
            put("ideal_s", Some(ideal));
            put("efficiency", Some(ideal / secs.max(1e-9)));
        }
        Row {
            series: s.series.replace(',', ";"),
            mode: j
                .get("mode")
                .and_then(|m| m.as_str())
                .unwrap_or(&s.mode)
                .to_string(),
            var: s.var.clone(),
            value: v,
            rep,
            bench: s.bench.clone(),
            num,
        }
    }

    pub fn get(&self, col: &str) -> Option<f64> {
        match col {
            "value" => Some(self.value as f64),
            other => self.num.get(other).copied(),
        }
    }
}

pub fn write_csv(path: &Path, rows: &[Row]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(f, "{}", COLUMNS.join(","))?;
    for r in rows {
        let mut cells = vec![
            r.series.clone(),
            r.mode.clone(),
            r.var.clone(),
            r.value.to_string(),
            r.rep.to_string(),
            r.bench.clone(),
        ];
        for c in &COLUMNS[6..] {
            cells.push(r.num.get(*c).map(|x| format!("{x}")).unwrap_or_default());
        }
        writeln!(f, "{}", cells.join(","))?;
    }
    f.flush()
}

pub fn read_csv(path: &Path) -> std::io::Result<Vec<Row>> {
    let text = std::fs::read_to_string(path)?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() != header.len() {
            return Err(bad(format!(
                "{}: line {} has {} cells, expected {}",
                path.display(),
                i + 2,
                cells.len(),
                header.len()
            )));
        }
        let mut r = Row::default();
        for (h, c) in header.iter().zip(&cells) {
            match *h {
                "series" => r.series = c.to_string(),
                "mode" => r.mode = c.to_string(),
                "var" => r.var = c.to_string(),
                "bench" => r.bench = c.to_string(),
                "value" => {
                    r.value = c
                        .parse()
                        .map_err(|_| bad(format!("line {}: bad value `{c}`", i + 2)))?
                }
                "rep" => {
                    r.rep = c
                        .parse()
                        .map_err(|_| bad(format!("line {}: bad rep `{c}`", i + 2)))?
                }
                other if !c.is_empty() => {
                    let x: f64 = c
                        .parse()
                        .map_err(|_| bad(format!("line {}: bad number `{c}` in {other}", i + 2)))?;
                    r.num.insert(other.to_string(), x);
                }
                _ => {}
            }
        }
        rows.push(r);
    }
    Ok(rows)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

/// Rows grouped by (series, value), with the median of every numeric column.
pub fn medians(rows: &[Row]) -> Vec<Row> {
    let mut groups: BTreeMap<(String, u64), Vec<&Row>> = BTreeMap::new();
    for r in rows {
        groups
            .entry((r.series.clone(), r.value))
            .or_default()
            .push(r);
    }
    groups
        .into_values()
        .map(|g| {
            let mut m = g[0].clone();
            m.num = BTreeMap::new();
            for c in &COLUMNS[6..] {
                if let Some(x) = median(g.iter().filter_map(|r| r.num.get(*c).copied()).collect()) {
                    m.num.insert(c.to_string(), x);
                }
            }
            m
        })
        .collect()
}

fn fmt(x: Option<f64>) -> String {
    match x {
        None => "".into(),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 1.0 => format!("{x:.2}"),
        Some(x) if x >= 0.01 || x == 0.0 => format!("{x:.3}"),
        // Small figures keep three significant digits (6.1e-5 rather than 0.000).
        Some(x) => format!("{x:.2e}"),
    }
}

pub fn write_summary(def: &Definition, dir: &Path, rows: &[Row]) -> std::io::Result<()> {
    let mut s = String::new();
    s.push_str(&format!("# {}\n\n", def.title));
    s.push_str(&format!("**The paper:** {}\n\n", def.paper));
    s.push_str("Medians over repetitions; every row says whether its workers were real processes or simulated (real manager code and protocol over real sockets, built-in functions run in-process). Raw data: `raw.csv`; plot: `plot.svg`; machine: `SETUP.md`.\n\n");
    let latency = rows.iter().any(|r| r.bench == "latency");
    let routing = rows.iter().any(|r| r.bench == "routing");
    let data = rows.iter().any(|r| r.bench == "data");
    let mapreduce: Vec<Row> = rows
        .iter()
        .filter(|r| r.bench == "mapreduce")
        .cloned()
        .collect();
    let others: Vec<Row> = rows
        .iter()
        .filter(|r| r.bench != "mapreduce")
        .cloned()
        .collect();
    let rows = &others[..];
    let cols: &[&str] = if data {
        &["write_s", "read_s", "seconds", "mb_per_s"]
    } else if routing {
        &[
            "tasks",
            "workers",
            "seconds",
            "cold_starts",
            "container_switches",
        ]
    } else if latency {
        &[
            "workers", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "first_ms",
        ]
    } else {
        &[
            "tasks",
            "workers",
            "seconds",
            "tasks_per_s",
            "ideal_s",
            "efficiency",
            "peak_rss_mib",
            "cpu_s",
            "cpu_us_per_task",
            "pilots_cpu_s",
            "broker_cpu_us_per_task",
        ]
    };
    // Sweeps of different variables in one table name the variable on each row.
    let one_var = rows.windows(2).all(|w| w[0].var == w[1].var);
    s.push_str(&format!(
        "| series | mode | {} | {} |\n",
        if one_var {
            rows.first().map_or("value", |r| r.var.as_str())
        } else {
            "point"
        },
        cols.join(" | ")
    ));
    s.push_str(&format!("|---|---|---|{}\n", "---|".repeat(cols.len())));
    for m in medians(rows) {
        let cells: Vec<String> = cols.iter().map(|c| fmt(m.get(c))).collect();
        let point = if one_var {
            m.value.to_string()
        } else {
            format!("{} = {}", m.var, m.value)
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            m.series,
            m.mode,
            point,
            cells.join(" | ")
        ));
    }
    if !mapreduce.is_empty() {
        s.push_str("\n## MapReduce phases\n\nWall time of the map and reduce stages together (`seconds`), and each phase summed over its tasks (task-seconds). Inputs and outputs are files in every case; only the intermediate data takes the path named.\n\n");
        s.push_str(&format!(
            "| series | {} | seconds | {} |\n|---|---|---|{}\n",
            mapreduce[0].var,
            PHASES.join(" | "),
            "---|".repeat(PHASES.len())
        ));
        for m in medians(&mapreduce) {
            let cells: Vec<String> = PHASES.iter().map(|c| fmt(m.get(c))).collect();
            s.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                m.series,
                m.value,
                fmt(m.get("seconds")),
                cells.join(" | ")
            ));
        }
    }
    if !def.stages.is_empty() {
        let m = medians(rows);
        // Series names are stored with `,` as `;` (the CSV has no quoting).
        let find = |series: &str, value: u64| {
            m.iter()
                .find(|r| r.series == series.replace(',', ";") && r.value == value)
        };
        let cols = ["p50_ms", "p90_ms", "p99_ms"];
        s.push_str("\n## Stages\n\nEach stage is the difference between two paths measured in this run, at the same point (percentile by percentile, so the parts need not add up exactly at the tail).\n\n");
        s.push_str(&format!(
            "| stage | {} | {} |\n|---|---|{}\n",
            rows.first().map_or("value", |r| r.var.as_str()),
            cols.join(" | "),
            "---|".repeat(cols.len())
        ));
        let mut values: Vec<u64> = m.iter().map(|r| r.value).collect();
        values.sort_unstable();
        values.dedup();
        for st in &def.stages {
            for v in &values {
                let Some(a) = find(&st.series, *v) else {
                    continue;
                };
                let b = st.minus.as_deref().and_then(|mi| find(mi, *v));
                if st.minus.is_some() && b.is_none() {
                    continue;
                }
                let cells: Vec<String> = cols
                    .iter()
                    .map(|c| {
                        fmt(a
                            .get(c)
                            .map(|x| x - b.and_then(|b| b.get(c)).unwrap_or(0.0)))
                    })
                    .collect();
                s.push_str(&format!("| {} | {v} | {} |\n", st.name, cells.join(" | ")));
            }
        }
    }
    s.push_str(&bounds(rows));
    if !def.comparisons.is_empty() {
        let all: Vec<Row> = others.iter().chain(&mapreduce).cloned().collect();
        s.push_str(&comparisons(def, &all));
    }
    if let Some(n) = &def.notes {
        s.push('\n');
        s.push_str(n.trim());
        s.push('\n');
    }
    if routing || data {
        return std::fs::write(dir.join("summary.md"), s);
    }
    let anchors = dir.parent().map(|p| p.join("anchors/anchors.json"));
    match anchors.and_then(|a| std::fs::read_to_string(a).ok()) {
        Some(text) => {
            s.push_str("\n## Anchors measured on this machine\n\n");
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                for (k, x) in v.as_object().into_iter().flatten() {
                    s.push_str(&format!("- {k}: {x}\n"));
                }
            }
        }
        None => s.push_str("\nAnchors: not measured in this run (`make experiment-anchors` installs Parsl in a virtual environment and measures it here). Figures measured earlier on a machine of this size: Parsl HTEX ≈ 1,170 no-op tasks/s (p50 1.6 ms, p99 2.7 ms), Ray ≈ 2,400/s, Dask ≈ 520/s, HyperQueue ≈ 900 process tasks/s.\n"),
    }
    std::fs::write(dir.join("summary.md"), s)
}

/// What bounds each point with an ideal time, read from its own figures, and what one
/// interchange would sustain with a core of its own; empty without such points.
fn bounds(rows: &[Row]) -> String {
    let m: Vec<Row> = medians(rows)
        .into_iter()
        .filter(|r| r.get("ideal_s").is_some() && r.get("cpu_us_per_task").is_some())
        .collect();
    if m.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n## What bounds each point\n\nFrom each point's own figures: the interchange's share of one core over the run (`cpu_s / seconds`; `cpu_s` is the interchange process's CPU less the benchmark's in-process client and broker), the simulated pilots' CPU over the run in cores, and what the interchange's CPU per task alone would allow: `tasks × cpu_us_per_task`, the shortest run one interchange core could give, against the ideal. The machine has 2 cores, shared by the interchange and every pilot.\n\n| series | workers | efficiency | interchange busy | pilots (cores) | interchange-bound s | ideal s | bound by |\n|---|---|---|---|---|---|---|---|\n");
    // CPU per task where the cores are full (elsewhere it also counts idle time).
    let mut per_task = Vec::new();
    let mut bound_per_task = Vec::new();
    for r in &m {
        let (Some(secs), Some(ideal), Some(cpu), Some(us), Some(tasks)) = (
            r.get("seconds"),
            r.get("ideal_s"),
            r.get("cpu_s"),
            r.get("cpu_us_per_task"),
            r.get("tasks"),
        ) else {
            continue;
        };
        per_task.push(us);
        let busy = cpu / secs.max(1e-9);
        let pilots = r.get("pilots_cpu_s").map(|p| p / secs.max(1e-9));
        let floor = tasks * us / 1e6;
        let eff = r.get("efficiency").unwrap_or(ideal / secs.max(1e-9));
        let (why, loaded) = if eff >= 0.9 {
            ("the tasks themselves (near ideal)", false)
        } else if pilots.is_some_and(|p| busy + p >= 1.6) {
            (
                "the machine's 2 cores, shared by the interchange and the pilots",
                true,
            )
        } else if busy >= 0.8 {
            ("the interchange process, about one core", true)
        } else {
            (
                "start-up and the last wave of tasks (the 2 cores are not saturated)",
                false,
            )
        };
        if loaded {
            bound_per_task.push(us);
        }
        s.push_str(&format!(
            "| {} | {} | {} | {:.0}% | {} | {} | {} | {why} |\n",
            r.series,
            r.value,
            fmt(Some(eff)),
            100.0 * busy,
            pilots.map_or("".into(), |p| format!("{p:.2}")),
            fmt(Some(floor)),
            fmt(Some(ideal)),
        ));
    }
    let (which, per_task) = if bound_per_task.is_empty() {
        ("all points", per_task)
    } else {
        ("the points the cores bound", bound_per_task)
    };
    if let Some(us) = median(per_task) {
        let rate = 1e6 / us.max(1e-9);
        s.push_str(&format!(
            "\n**Projection.** The median interchange CPU per task over {which} is {us:.2} µs, so one interchange on a core of its own (the managers on their own nodes, as on a cluster) sustains about {} tasks/s. Weak scaling with 4 tasks of 1 s per worker stays near ideal while 4 × workers × {us:.2} µs stays under 4 s, that is up to about {} workers; past that the run takes about 4 × workers × {us:.2} µs. A login node with more cores does not speed up one dispatch thread; it does keep the pilots and the broker off it, which is what this 2-core machine cannot do.\n",
            fmt(Some(rate)),
            fmt(Some(1e6 / us.max(1e-9))),
        ));
    }
    s
}

/// The comparisons section: each series against its baseline at every point both have.
fn comparisons(def: &Definition, rows: &[Row]) -> String {
    let m = medians(rows);
    let find = |series: &str, value: u64| {
        m.iter()
            .find(|r| r.series == series.replace(',', ";") && r.value == value)
    };
    let var = rows.first().map_or("value", |r| r.var.as_str());
    let mut s = String::from("\n## Comparisons\n\nChange of the median time against the baseline at each point (negative: faster), the speed-up (baseline time / time), and the cold starts of each where there are any.\n\n");
    s.push_str(&format!(
        "| comparison | {var} | baseline s | s | change | speed-up | baseline cold starts | cold starts | paper |\n|---|---|---|---|---|---|---|---|---|\n"
    ));
    let mut values: Vec<u64> = m.iter().map(|r| r.value).collect();
    values.sort_unstable();
    values.dedup();
    for c in &def.comparisons {
        for v in &values {
            let (Some(a), Some(b)) = (find(&c.series, *v), find(&c.baseline, *v)) else {
                continue;
            };
            let (Some(sa), Some(sb)) = (a.get("seconds"), b.get("seconds")) else {
                continue;
            };
            s.push_str(&format!(
                "| {} | {v} | {} | {} | {:+.0}% | {:.2}× | {} | {} | {} |\n",
                c.name,
                fmt(Some(sb)),
                fmt(Some(sa)),
                100.0 * (sa - sb) / sb.max(1e-9),
                sb / sa.max(1e-12),
                fmt(b.get("cold_starts")),
                fmt(a.get("cold_starts")),
                c.paper.as_deref().unwrap_or("")
            ));
        }
    }
    s
}

pub fn write_setup(dir: &Path, opts: &RunOptions) -> std::io::Result<()> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = read("/proc/meminfo")
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let date = std::process::Command::new("date")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let text = format!(
        "# Setup\n\n- machine: {cpu}, {cores} cores\n- memory: {mem}\n- kernel: {kernel}\n- commit: {commit}\n- date: {date}\n- command: `{}`\n- quick: {}\n",
        opts.command, opts.quick
    );
    std::fs::write(dir.join("SETUP.md"), text)
}

/// Draws `plot_y` against `plot_x`, one line per series, as SVG.
pub fn plot(def: &Definition, path: &Path, rows: &[Row]) -> std::io::Result<()> {
    use plotters::prelude::*;
    let m = medians(rows);
    let pts: Vec<(String, f64, f64)> = m
        .iter()
        .filter_map(|r| Some((r.series.clone(), r.get(&def.plot_x)?, r.get(&def.plot_y)?)))
        .filter(|(_, x, y)| {
            x.is_finite() && y.is_finite() && (!def.log_x || *x > 0.0) && (!def.log_y || *y > 0.0)
        })
        .collect();
    let err = |e: String| std::io::Error::other(e);
    let (xmin, xmax) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (ymin, ymax) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.2), b.max(p.2)));
    let (xmin, xmax) = if pts.is_empty() {
        (1.0, 2.0)
    } else {
        (xmin, if xmax > xmin { xmax } else { xmin * 2.0 + 1.0 })
    };
    let (ymin, ymax) = if pts.is_empty() {
        (1.0, 2.0)
    } else {
        (
            ymin * 0.9,
            if ymax > ymin {
                ymax * 1.1
            } else {
                ymin * 2.0 + 1.0
            },
        )
    };
    let x_label = if def.plot_x == "value" {
        rows.first().map_or("value".to_string(), |r| r.var.clone())
    } else {
        def.plot_x.clone()
    };
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(&def.title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70);
    let series: Vec<String> = {
        let mut s: Vec<String> = pts.iter().map(|p| p.0.clone()).collect();
        s.dedup();
        let mut seen = std::collections::BTreeSet::new();
        s.retain(|x| seen.insert(x.clone()));
        s
    };
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_label.as_str())
                .y_desc(def.plot_y.as_str())
                .draw()
                .map_err(|e| err(e.to_string()))?;
            for (i, name) in series.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                let line: Vec<(f64, f64)> = pts
                    .iter()
                    .filter(|p| &p.0 == name)
                    .map(|p| (p.1, p.2))
                    .collect();
                chart
                    .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
                    .map_err(|e| err(e.to_string()))?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(line.iter().map(|p| Circle::new(*p, 3, color.filled())))
                    .map_err(|e| err(e.to_string()))?;
            }
            chart
                .configure_series_labels()
                .position(match def.legend.as_deref() {
                    Some("upper-left") => SeriesLabelPosition::UpperLeft,
                    Some("lower-left") => SeriesLabelPosition::LowerLeft,
                    Some("lower-right") => SeriesLabelPosition::LowerRight,
                    Some("middle-right") => SeriesLabelPosition::MiddleRight,
                    Some("middle-left") => SeriesLabelPosition::MiddleLeft,
                    _ => SeriesLabelPosition::UpperRight,
                })
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(e.to_string()))?;
        }};
    }
    match (def.log_x, def.log_y) {
        (true, true) => draw!(builder
            .build_cartesian_2d((xmin..xmax).log_scale(), (ymin..ymax).log_scale())
            .map_err(|e| err(e.to_string()))?),
        (true, false) => draw!(builder
            .build_cartesian_2d((xmin..xmax).log_scale(), ymin..ymax)
            .map_err(|e| err(e.to_string()))?),
        (false, true) => draw!(builder
            .build_cartesian_2d(xmin..xmax, (ymin..ymax).log_scale())
            .map_err(|e| err(e.to_string()))?),
        (false, false) => draw!(builder
            .build_cartesian_2d(xmin..xmax, ymin..ymax)
            .map_err(|e| err(e.to_string()))?),
    }
    root.present().map_err(|e| err(e.to_string()))
}

pub fn write_all(
    def: &Definition,
    dir: &Path,
    rows: &[Row],
    opts: &RunOptions,
) -> std::io::Result<()> {
    write_summary(def, dir, rows)?;
    write_setup(dir, opts)?;
    plot(def, &dir.join("plot.svg"), rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(workers: u64, secs: f64, cpu: f64, pilots: f64) -> Row {
        let mut r = Row {
            series: "weak".into(),
            var: "workers".into(),
            value: workers,
            ..Row::default()
        };
        let tasks = 4.0 * workers as f64;
        for (k, v) in [
            ("tasks", tasks),
            ("seconds", secs),
            ("ideal_s", 4.0),
            ("efficiency", 4.0 / secs),
            ("cpu_s", cpu),
            ("cpu_us_per_task", cpu * 1e6 / tasks),
            ("pilots_cpu_s", pilots),
        ] {
            r.num.insert(k.into(), v);
        }
        r
    }

    #[test]
    fn each_point_says_what_bounds_it_and_the_summary_projects_one_core() {
        let s = bounds(&[
            point(1_000, 4.1, 0.02, 0.5),
            point(500_000, 10.0, 9.0, 3.0),
            point(700_000, 10.0, 9.0, 8.0),
            point(100_000, 8.0, 2.0, 12.0),
            point(200_000, 8.0, 1.0, 2.0),
        ]);
        let row = |w: u64| {
            s.lines()
                .find(|l| l.starts_with(&format!("| weak | {w} |")))
                .unwrap_or_default()
                .to_string()
        };
        assert!(
            row(1_000).ends_with("the tasks themselves (near ideal) |"),
            "{s}"
        );
        assert!(row(500_000).contains("| 90% |"), "{s}");
        assert!(
            row(500_000).ends_with("the interchange process, about one core |"),
            "{s}"
        );
        for w in [100_000, 700_000] {
            assert!(
                row(w).ends_with("shared by the interchange and the pilots |"),
                "{s}"
            );
        }
        assert!(
            row(200_000).ends_with("(the 2 cores are not saturated) |"),
            "{s}"
        );
        // 9 s for 2 million tasks and 9 s for 2.8 million: 4.50 and 3.21 µs, the upper median.
        assert!(
            s.contains("over the points the cores bound is 4.50 µs"),
            "{s}"
        );
        assert!(bounds(&[]).is_empty());
    }
}
