//! `berth-bench-report`: turns the JSON files `integration/bench.sh` leaves in
//! `target/` into `BENCHMARKS.md` and SVG plots. The report is regenerated,
//! never edited by hand:
//!
//! ```text
//! sudo integration/bench.sh [--quick]
//! berth-bench-report [--input DIR] [--output FILE] [--plots DIR]
//! ```
//!
//! Defaults: `--input target`, `--output BENCHMARKS.md`, `--plots docs/bench`.
//! A missing input file makes its section say "not run"; a missing (or null)
//! key is shown as "—"; a key of the wrong type is an error naming the file and
//! the field. Plots are drawn with plotters' SVG backend without a font
//! library (text becomes SVG `<text>` elements, laid out by a rough estimate).

use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use plotters::prelude::*;
use serde_json::Value;

const DASH: &str = "—";
const USAGE: &str = "usage: berth-bench-report [--input DIR] [--output FILE] [--plots DIR]";

/// A place in one input file: its value (`None` when missing or null) and its
/// path, for error messages.
#[derive(Clone)]
struct Doc<'a> {
    file: &'a str,
    path: String,
    v: Option<&'a Value>,
}

impl<'a> Doc<'a> {
    fn field(&self, key: &str) -> String {
        let key = key.replace('/', ".");
        match self.path.is_empty() {
            true => key,
            false => format!("{}.{key}", self.path),
        }
    }

    fn wrong(&self, key: &str, v: &Value, expected: &str) -> anyhow::Error {
        let (file, field, kind) = (self.file, self.field(key), kind(v));
        anyhow!("{file}: field `{field}` is {kind}, expected {expected}")
    }

    /// The value at a `/`-separated path (object keys, array indexes);
    /// `None` when any part is missing or null.
    fn get(&self, key: &str) -> Result<Option<&'a Value>> {
        let Some(mut v) = self.v else { return Ok(None) };
        for part in key.split('/') {
            let next = match v {
                Value::Object(o) => o.get(part),
                Value::Array(a) => part.parse().ok().and_then(|i: usize| a.get(i)),
                _ => return Err(self.wrong(key, v, &format!("a container of `{part}`"))),
            };
            match next {
                None | Some(Value::Null) => return Ok(None),
                Some(next) => v = next,
            }
        }
        Ok(Some(v))
    }

    fn at(&self, key: &str) -> Result<Doc<'a>> {
        let v = self.get(key)?;
        Ok(Doc {
            file: self.file,
            path: self.field(key),
            v,
        })
    }

    fn num(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key)? {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.wrong(key, v, "a number")),
        }
    }

    /// A string, number or boolean as text.
    fn text(&self, key: &str) -> Result<Option<String>> {
        match self.get(key)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
            Some(v) => Err(self.wrong(key, v, "text")),
        }
    }

    /// The elements of an array (none when missing).
    fn list(&self, key: &str) -> Result<Vec<Doc<'a>>> {
        let items = match self.get(key)? {
            None => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(v) => return Err(self.wrong(key, v, "an array")),
        };
        let at = |(i, v)| Doc {
            file: self.file,
            path: format!("{}[{i}]", self.field(key)),
            v,
        };
        Ok(items.iter().map(Some).enumerate().map(at).collect())
    }

    /// The keys of an object (none when missing).
    fn keys(&self, key: &str) -> Result<Vec<String>> {
        match self.get(key)? {
            None => Ok(Vec::new()),
            Some(Value::Object(m)) => Ok(m.keys().cloned().collect()),
            Some(v) => Err(self.wrong(key, v, "an object")),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One input file; `json` is `None` when the bench was not run.
struct Input {
    file: &'static str,
    json: Option<Value>,
    modified: Option<SystemTime>,
}

impl Input {
    fn load(dir: &Path, file: &'static str) -> Result<Input> {
        let path = dir.join(file);
        let mut input = Input {
            file,
            json: None,
            modified: None,
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(input),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        input.modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        // bench.sh tees into the file before the bench runs: empty means it did not finish.
        if text.trim().is_empty() {
            return Ok(input);
        }
        let json: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if !json.is_object() {
            bail!(
                "{}: expected a JSON object, found {}",
                path.display(),
                kind(&json)
            );
        }
        input.json = Some(json);
        Ok(input)
    }

    fn doc(&self) -> Doc<'_> {
        Doc {
            file: self.file,
            path: String::new(),
            v: self.json.as_ref(),
        }
    }
}

/// The inputs, in the order of `FILES`.
const FILES: [&str; 7] = [
    "bench-agent.json",
    "bench-detect.json",
    "bench-scheduler.json",
    "bench-scheduler-e2e.json",
    "bench-storage.json",
    "bench-apiserver.json",
    "bench-probes.json",
];
const AGENT: usize = 0;
const DETECT: usize = 1;
const PROBES: usize = 6;

/// Benches without a `mode` key: the key of a size that tells quick (first
/// figure) from full (second).
const MODE_HINTS: [(&str, &str, f64, f64); 6] = [
    (
        "bench-detect.json",
        "modes/events/by_pods/10/kills",
        20.0,
        50.0,
    ),
    ("bench-scheduler.json", "cases/0/pods", 1000.0, 10000.0),
    ("bench-scheduler-e2e.json", "pods", 300.0, 2000.0),
    ("bench-storage.json", "sqlite/objects", 500.0, 5000.0),
    ("bench-apiserver.json", "pods", 300.0, 1000.0),
    ("bench-probes.json", "pods", 20.0, 110.0),
];

fn mode_of(input: &Input) -> Result<String> {
    let d = input.doc();
    if let Some(mode) = d.text("mode")? {
        return Ok(mode);
    }
    let Some(&(_, key, quick, full)) = MODE_HINTS.iter().find(|h| h.0 == input.file) else {
        return Ok(DASH.into());
    };
    let what = key.rsplit('/').next().unwrap_or(key);
    Ok(match d.num(key)? {
        None => DASH.into(),
        Some(x) if x == quick => format!("quick (inferred: {what} = {x})"),
        Some(x) if x == full => format!("full (inferred: {what} = {x})"),
        Some(x) => format!("custom ({what} = {x})"),
    })
}

/// Whether a figure meets its goal; `Unknown` when the figure is missing.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    Met,
    NotMet,
    Unknown,
}

impl Verdict {
    fn check(x: Option<f64>, ok: impl Fn(f64) -> bool) -> Verdict {
        match x {
            None => Verdict::Unknown,
            Some(x) if ok(x) => Verdict::Met,
            Some(_) => Verdict::NotMet,
        }
    }
    fn and(self, other: Verdict) -> Verdict {
        match (self, other) {
            (Verdict::NotMet, _) | (_, Verdict::NotMet) => Verdict::NotMet,
            (Verdict::Met, Verdict::Met) => Verdict::Met,
            _ => Verdict::Unknown,
        }
    }
    fn md(self) -> String {
        let s = ["met", "**not met**", DASH][self as usize];
        s.to_string()
    }
}

/// A figure with `d` decimals, or "—".
fn f(x: Option<f64>, d: usize) -> String {
    x.map_or_else(|| DASH.to_string(), |x| format!("{x:.d$}"))
}

/// A figure with a unit, or "—".
fn fu(x: Option<f64>, d: usize, unit: &str) -> String {
    x.map_or_else(|| DASH.to_string(), |x| format!("{x:.d$} {unit}"))
}

/// A table column: header, key path (`{n}` stands for the row), decimals
/// (`TEXT`: shown as is). Keys with `_kib` are shown in MiB.
type Col = (&'static str, &'static str, usize);
const TEXT: usize = usize::MAX;

/// One figure at `key` with `dec` decimals (`TEXT`: as is; `_kib`: in MiB).
fn cell(d: &Doc, key: &str, dec: usize) -> Result<String> {
    if dec == TEXT {
        return Ok(d.text(key)?.unwrap_or_else(|| DASH.into()));
    }
    let x = d.num(key)?;
    Ok(f(
        if key.contains("_kib") {
            x.map(|k| k / 1024.0)
        } else {
            x
        },
        dec,
    ))
}

fn row(d: &Doc, cols: &[Col], n: &str) -> Result<Vec<String>> {
    cols.iter()
        .map(|&(_, key, dec)| cell(d, &key.replace("{n}", n), dec))
        .collect()
}

fn table(out: &mut String, head: &[&str], rows: &[Vec<String>]) -> Result<()> {
    writeln!(
        out,
        "| {} |\n|{}",
        head.join(" | "),
        "---|".repeat(head.len())
    )?;
    for r in rows {
        writeln!(out, "| {} |", r.join(" | "))?;
    }
    Ok(writeln!(out)?)
}

/// A table of `cols` with one row per `n` in `rows`.
fn col_table(out: &mut String, d: &Doc, cols: &[Col], rows: &[String]) -> Result<()> {
    let rows: Vec<_> = rows
        .iter()
        .map(|n| row(d, cols, n))
        .collect::<Result<_>>()?;
    table(out, &cols.iter().map(|c| c.0).collect::<Vec<_>>(), &rows)
}

/// Metrics down, backends across.
fn compare(out: &mut String, d: &Doc, backends: &[(&str, &str)], rows: &[Col]) -> Result<()> {
    let rows: Vec<_> = rows
        .iter()
        .map(|&(name, key, dec)| (name.to_string(), key.to_string(), dec))
        .collect();
    compare_rows(out, d, backends, &rows)
}

/// [`compare`] with rows made at run time (`{n}` stands for the backend).
fn compare_rows(
    out: &mut String,
    d: &Doc,
    backends: &[(&str, &str)],
    rows: &[(String, String, usize)],
) -> Result<()> {
    let mut body = Vec::new();
    for (name, key, dec) in rows {
        let mut r = vec![name.clone()];
        for (_, b) in backends {
            r.push(cell(d, &key.replace("{n}", b), *dec)?);
        }
        body.push(r);
    }
    let head: Vec<_> = std::iter::once("")
        .chain(backends.iter().map(|b| b.0))
        .collect();
    table(out, &head, &body)
}

/// Writes "not run" and returns `None`, or the input's document.
fn ran<'a>(out: &mut String, input: &'a Input) -> Result<Option<Doc<'a>>> {
    if input.json.is_none() {
        writeln!(out, "*Not run* (no `{}`).\n", input.file)?;
        return Ok(None);
    }
    Ok(Some(input.doc()))
}

/// What the report says about the machine and tools it was generated with.
struct Env {
    machine: String,
    containerd: Option<String>,
    date: String,
}

impl Env {
    fn probe() -> Env {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let line = |text: &str, key: &str| -> Option<String> {
            let l = text.lines().find(|l| l.starts_with(key))?;
            Some(l.split_once(':')?.1.trim().to_string())
        };
        let cpus = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let model = line(&cpuinfo, "model name").unwrap_or("unknown CPU".into());
        let mem = line(&read("/proc/meminfo"), "MemTotal:")
            .and_then(|m| m.trim_end_matches(" kB").parse::<f64>().ok())
            .map(|kib| kib / 1024.0 / 1024.0);
        let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
        let machine = format!(
            "{model} × {cpus} CPUs, {} GiB RAM, Linux {kernel}",
            f(mem, 1)
        );
        // `containerd github.com/containerd/containerd 1.6.20~ds1 <revision>`
        let out = std::process::Command::new("containerd")
            .arg("--version")
            .output()
            .ok();
        let out = out
            .filter(|o| o.status.success())
            .map(|o| o.stdout)
            .unwrap_or_default();
        let containerd = String::from_utf8_lossy(&out)
            .split_whitespace()
            .nth(2)
            .map(Into::into);
        Env {
            machine,
            containerd,
            date: utc(SystemTime::now()),
        }
    }
}

/// `YYYY-MM-DD HH:MM UTC` (days to civil date after Howard Hinnant's algorithm).
fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m) = (rem / 3600, rem % 3600 / 60);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02} UTC")
}

fn header(out: &mut String, inputs: &[Input], env: &Env, input_rel: &str) -> Result<()> {
    writeln!(out, "# berth benchmarks\n")?;
    writeln!(
        out,
        "<!-- Generated by berth-bench-report: do not edit; regenerate. -->\n"
    )?;
    writeln!(
        out,
        "Figures, not assertions: machines are noisy. Produced by\n\n```sh"
    )?;
    writeln!(out, "sudo integration/bench.sh            # full mode")?;
    writeln!(
        out,
        "sudo integration/bench.sh --quick    # CI's short mode"
    )?;
    writeln!(out, "berth-bench-report --input {input_rel}\n```\n")?;
    let (mut profiles, mut etcd, mut containerd) = (Vec::new(), None, None);
    let mut machines: Vec<String> = Vec::new();
    for d in inputs.iter().map(Input::doc) {
        let m = d.at("machine")?;
        if let Some(kernel) = m.text("kernel")? {
            let model = m.text("cpu_model")?.unwrap_or("unknown CPU".into());
            let mem = m.num("memory_kib")?.map(|k| k / 1024.0 / 1024.0);
            let cpus = f(m.num("cpus")?, 0);
            let text = format!(
                "{model} × {cpus} CPUs, {} GiB RAM, Linux {kernel}",
                f(mem, 1)
            );
            if !machines.contains(&text) {
                machines.push(text);
            }
        }
        for p in [d.text("build_profile")?, d.text("build")?]
            .into_iter()
            .flatten()
        {
            if !profiles.contains(&p) {
                profiles.push(p);
            }
        }
        etcd = etcd.or(d.text("etcd/etcd_version")?);
        containerd = containerd.or(d
            .text("containerd_version")?
            .map(|v| v + " (from the JSON)"));
    }
    let here = env
        .containerd
        .as_ref()
        .map(|v| format!("{v} (`containerd --version` here)"));
    let etcd = etcd.map(|e| e.replace("etcd Version: ", "") + " (from the JSON)");
    writeln!(
        out,
        "- **Machine** (where this report was generated): {}",
        env.machine
    )?;
    if !machines.is_empty() {
        writeln!(
            out,
            "- **Machine** (where the benches ran, from the JSON that records it): {}",
            machines.join("; ")
        )?;
    }
    let containerd = containerd.or(here).unwrap_or(DASH.into());
    writeln!(
        out,
        "- **containerd**: {containerd}; **etcd**: {}",
        etcd.unwrap_or(DASH.into())
    )?;
    let profiles = if profiles.is_empty() {
        DASH.to_string()
    } else {
        profiles.join(", ")
    };
    writeln!(out, "- **Build profile** (from the JSON): {profiles}")?;
    writeln!(out, "- **Generated**: {}\n", env.date)?;
    let mut rows = Vec::new();
    for i in inputs {
        let state = match (&i.json, i.modified) {
            (Some(_), _) => "ok",
            (None, Some(_)) => "empty (did not finish)",
            (None, None) => "not run",
        };
        let cpus = i.doc().num("host_cpus")?.or(i.doc().num("cpus")?);
        let cpus = cpus.or(i.doc().num("machine/cpus")?);
        let written = i.modified.map_or(DASH.into(), utc);
        rows.push(vec![
            format!("`{}`", i.file),
            state.into(),
            mode_of(i)?,
            f(cpus, 0),
            written,
        ]);
    }
    table(out, &["input", "state", "mode", "CPUs", "written"], &rows)
}

const POD_START: [Col; 8] = [
    ("N", "pod_start/{n}/pods", 0),
    ("iterations", "pod_start/{n}/iterations", 0),
    ("raw p50 (ms)", "pod_start/{n}/raw/batch_ms/p50_ms", 1),
    ("raw p99", "pod_start/{n}/raw/batch_ms/p99_ms", 1),
    ("agent p50 (ms)", "pod_start/{n}/agent/batch_ms/p50_ms", 1),
    ("agent p99", "pod_start/{n}/agent/batch_ms/p99_ms", 1),
    ("ratio (p50)", "pod_start/{n}/ratio_batch_p50", 3),
    ("per-pod ratio (p50)", "pod_start/{n}/ratio_per_pod_p50", 3),
];

fn pod_start(out: &mut String, input: &Input, plot: &str) -> Result<()> {
    writeln!(out, "## Pod start (agent vs raw CRI)\n")?;
    let Some(d) = ran(out, input)? else {
        return Ok(());
    };
    writeln!(
        out,
        "Batch wall time of N pods started at once. Goal: agent p50 ≤ 1.10 × raw.\n"
    )?;
    let mut rows = Vec::new();
    for want in [1.0, 10.0, 30.0, 100.0] {
        let i = d
            .list("pod_start")?
            .iter()
            .position(|e| e.num("pods").ok() == Some(Some(want)));
        let Some(i) = i else {
            let mut r = vec![f(Some(want), 0), "not run".into()];
            r.resize(POD_START.len() + 1, DASH.into());
            rows.push(r);
            continue;
        };
        let mut r = row(&d, &POD_START, &i.to_string())?;
        let ratio = d.num(&format!("pod_start/{i}/ratio_batch_p50"))?;
        r.push(Verdict::check(ratio, |r| r <= 1.10).md());
        rows.push(r);
    }
    let head: Vec<_> = POD_START
        .iter()
        .map(|c| c.0)
        .chain(["goal ≤ 1.10"])
        .collect();
    table(out, &head, &rows)?;
    writeln!(
        out,
        "p99 is the nearest rank: the maximum for fewer than 100 samples.\n"
    )?;
    Ok(writeln!(out, "![pod start: agent vs raw CRI]({plot})\n")?)
}

const TEARDOWN: [Col; 7] = [
    ("N", "teardown/{n}/pods", 0),
    ("iterations", "teardown/{n}/iterations", 0),
    ("raw p50 (ms)", "teardown/{n}/raw/batch_ms/p50_ms", 1),
    ("raw p99", "teardown/{n}/raw/batch_ms/p99_ms", 1),
    ("agent p50 (ms)", "teardown/{n}/agent/batch_ms/p50_ms", 1),
    ("agent p99", "teardown/{n}/agent/batch_ms/p99_ms", 1),
    ("ratio (p50)", "teardown/{n}/ratio_batch_p50", 3),
];

fn teardown(out: &mut String, input: &Input) -> Result<()> {
    writeln!(out, "## Teardown (agent vs raw CRI)\n")?;
    let Some(d) = ran(out, input)? else {
        return Ok(());
    };
    let rows: Vec<_> = (0..d.list("teardown")?.len())
        .map(|i| i.to_string())
        .collect();
    col_table(out, &d, &TEARDOWN, &rows)
}

const IDLE: [Col; 3] = [
    ("pods", "footprint/idle/{n}/pods", 0),
    ("RSS (MiB)", "footprint/idle/{n}/rss_kib", 1),
    (
        "CPU (% of one core)",
        "footprint/idle/{n}/cpu_percent_of_one_core",
        2,
    ),
];
const ENDPOINTS: [Col; 5] = [
    ("pods", "footprint/endpoints/pods", 0),
    ("requests", "footprint/endpoints/{n}/samples", 0),
    ("p50 (ms)", "footprint/endpoints/{n}/p50_ms", 2),
    ("p99 (ms)", "footprint/endpoints/{n}/p99_ms", 2),
    ("max (ms)", "footprint/endpoints/{n}/max_ms", 2),
];

fn footprint(out: &mut String, input: &Input, plot: &str) -> Result<()> {
    writeln!(out, "## Agent footprint\n")?;
    let Some(d) = ran(out, input)? else {
        return Ok(());
    };
    let mut rows = Vec::new();
    let mut at110 = (None, None);
    for (i, e) in d.list("footprint/idle")?.iter().enumerate() {
        let cpu = e.num("cpu_percent_of_one_core")?;
        if e.num("pods")? == Some(110.0) {
            at110 = (e.num("rss_kib")?.map(|k| k / 1024.0), cpu);
        }
        let mut r = vec!["idle".to_string()];
        r.extend(row(&d, &IDLE, &i.to_string())?);
        r.push(Verdict::check(cpu, |c| c < 0.5).md());
        rows.push(r);
    }
    let during = [
        ("", "footprint/during_start/pods", 0),
        ("", "footprint/during_start/rss_kib_after", 1),
        ("", "footprint/during_start/cpu_percent_of_one_core", 2),
    ];
    let mut r = vec!["during a batch start (RSS after)".to_string()];
    r.extend(row(&d, &during, "")?);
    r.push("n/a".into());
    rows.push(r);
    let head = ["state", IDLE[0].0, IDLE[1].0, IDLE[2].0, "idle CPU < 0.5%"];
    table(out, &head, &rows)?;
    let mut ep = Vec::new();
    for (name, key) in [
        ("`GET /pods`", "pods_list_ms"),
        ("`GET /stats/summary`", "stats_summary_ms"),
    ] {
        ep.push(
            std::iter::once(name.into())
                .chain(row(&d, &ENDPOINTS, key)?)
                .collect(),
        );
    }
    let head: Vec<_> = std::iter::once("endpoint")
        .chain(ENDPOINTS.iter().map(|c| c.0))
        .collect();
    table(out, &head, &ep)?;
    let at = d.num("footprint/endpoints/pods")? == Some(110.0);
    let pods_p99 = d
        .num("footprint/endpoints/pods_list_ms/p99_ms")?
        .filter(|_| at);
    let goals = [
        (
            "RSS < 30 MiB at 110 pods (idle)",
            fu(at110.0, 1, "MiB"),
            at110.0,
            30.0,
        ),
        (
            "idle CPU < 0.5% of one core at 110 pods",
            fu(at110.1, 2, "%"),
            at110.1,
            0.5,
        ),
        (
            "`/pods` p99 < 20 ms at 110 pods",
            fu(pods_p99, 2, "ms"),
            pods_p99,
            20.0,
        ),
    ];
    let verdict = |x, limit| Verdict::check(x, |x| x < limit).md();
    let rows: Vec<_> = goals
        .into_iter()
        .map(|(g, s, x, l)| vec![g.into(), s, verdict(x, l)])
        .collect();
    table(out, &["goal", "figure", "verdict"], &rows)?;
    writeln!(
        out,
        "110-pod figures and the endpoints come from full mode only.\n"
    )?;
    Ok(writeln!(out, "![agent RSS]({plot})\n")?)
}

const DETECTION: [Col; 9] = [
    ("pods", "modes/events/by_pods/{n}/pods", 0),
    ("kills", "modes/events/by_pods/{n}/kills", 0),
    (
        "events p50 (ms)",
        "modes/events/by_pods/{n}/detect_ms/p50",
        1,
    ),
    ("events p99", "modes/events/by_pods/{n}/detect_ms/p99", 1),
    (
        "events idle CPU %",
        "modes/events/by_pods/{n}/agent_idle_cpu_percent_of_one_core",
        2,
    ),
    (
        "relist-only p50",
        "modes/relist_only/by_pods/{n}/detect_ms/p50",
        1,
    ),
    (
        "relist-only p99",
        "modes/relist_only/by_pods/{n}/detect_ms/p99",
        1,
    ),
    (
        "relist-only idle CPU %",
        "modes/relist_only/by_pods/{n}/agent_idle_cpu_percent_of_one_core",
        2,
    ),
    ("missed (events)", "modes/events/by_pods/{n}/missed", 0),
];

/// The pod counts of the detection bench, in order.
fn pod_counts(d: &Doc) -> Result<Vec<String>> {
    let mut counts = d.keys("modes/events/by_pods")?;
    for k in d.keys("modes/relist_only/by_pods")? {
        if !counts.contains(&k) {
            counts.push(k);
        }
    }
    counts.sort_by_key(|k| k.parse::<u64>().unwrap_or(u64::MAX));
    Ok(counts)
}

fn detection(out: &mut String, input: &Input, plot: &str, real_cdf: bool) -> Result<()> {
    writeln!(
        out,
        "## Failure detection (SIGKILL to visible on `/pods`)\n"
    )?;
    let Some(d) = ran(out, input)? else {
        return Ok(());
    };
    writeln!(
        out,
        "Goal (events mode): p99 ≤ 50 ms at ≤ 1% of one core idle.\n"
    )?;
    let mut rows = Vec::new();
    for n in pod_counts(&d)? {
        let ev = d.at(&format!("modes/events/by_pods/{n}"))?;
        let p99 = Verdict::check(ev.num("detect_ms/p99")?, |p| p <= 50.0);
        let cpu = Verdict::check(ev.num("agent_idle_cpu_percent_of_one_core")?, |c| c <= 1.0);
        let mut r = row(&d, &DETECTION, &n)?;
        r.push(p99.and(cpu).md());
        rows.push(r);
    }
    let head: Vec<_> = DETECTION.iter().map(|c| c.0).chain(["goal"]).collect();
    table(out, &head, &rows)?;
    let what = match real_cdf {
        true => "a CDF of every sample",
        false => "the percentile points in the JSON (p50, p99, max), not a full CDF",
    };
    Ok(writeln!(
        out,
        "The plot shows {what}.\n\n![detection latency]({plot})\n"
    )?)
}

const SCHEDULER: [Col; 6] = [
    ("nodes", "cases/{n}/nodes", 0),
    ("pods", "cases/{n}/pods", 0),
    ("pods/s", "cases/{n}/pods_per_sec", 0),
    ("p50 (µs)", "cases/{n}/p50_us", 1),
    ("p99 (µs)", "cases/{n}/p99_us", 1),
    ("unschedulable", "cases/{n}/unschedulable", 0),
];
/// Scheduler through the API server, one row per case (`cases`); files
/// from before cases keep one row at the top level (`{n}` empty).
const E2E: [Col; 9] = [
    ("nodes", "{n}nodes", 0),
    ("pods", "{n}pods", 0),
    ("pods/s", "{n}pods_per_sec", 1),
    ("seconds", "{n}seconds", 3),
    ("setup (s)", "{n}setup_seconds", 1),
    (
        "scheduler CPU (% of one core)",
        "{n}scheduler_cpu_percent_of_one_core",
        1,
    ),
    ("scheduler CPU (s)", "{n}scheduler_cpu_seconds", 2),
    ("scheduler RSS peak (MiB)", "{n}scheduler_rss_peak_kib", 1),
    (
        "scheduler idle CPU after (%)",
        "{n}scheduler_idle_cpu_percent_of_one_core",
        2,
    ),
];
const STORAGE: [Col; 5] = [
    ("objects", "{n}/objects", 0),
    ("creates/s, sequential", "{n}/creates_per_sec_sequential", 0),
    ("creates/s, 16 writers", "{n}/creates_per_sec_16_writers", 0),
    ("watch events/s, live", "{n}/watch_events_per_sec_live", 0),
    (
        "watch events/s, replay",
        "{n}/watch_events_per_sec_replay",
        0,
    ),
];
const APISERVER: [Col; 15] = [
    (
        "creates/s, concurrency 1",
        "{n}/concurrency_1/create/pods_per_sec",
        0,
    ),
    (
        "create p99 (ms), concurrency 1",
        "{n}/concurrency_1/create/p99_ms",
        2,
    ),
    (
        "creates/s, concurrency 16",
        "{n}/concurrency_16/create/pods_per_sec",
        0,
    ),
    (
        "create p99 (ms), concurrency 16",
        "{n}/concurrency_16/create/p99_ms",
        2,
    ),
    (
        "watch events/s, live (c16)",
        "{n}/concurrency_16/watch_live/events_per_sec",
        0,
    ),
    (
        "watch last-event lag (ms, c16)",
        "{n}/concurrency_16/watch_live/last_event_lag_ms",
        2,
    ),
    (
        "watch events/s, replay (c16)",
        "{n}/concurrency_16/watch_replay/events_per_sec",
        0,
    ),
    (
        "list N pods, one response (ms)",
        "{n}/list_n_pods/full_ms",
        1,
    ),
    (
        "list 2N pods, one response (ms)",
        "{n}/list_2n_pods/full_ms",
        1,
    ),
    (
        "list 2N pods, pages of 500 (ms)",
        "{n}/list_2n_pods/paged_ms",
        1,
    ),
    (
        "GET pod p99 (ms), RBAC allowed",
        "{n}/authz/get_pod_rbac_allowed/p99_ms",
        2,
    ),
    (
        "GET secret p99 (ms), Node authorizer",
        "{n}/authz/get_secret_node_authorizer/p99_ms",
        2,
    ),
    ("RSS idle (MiB)", "{n}/rss_idle_kib", 1),
    ("RSS with 2N pods (MiB)", "{n}/rss_2n_pods_kib", 1),
    ("etcd RSS (MiB)", "{n}/etcd_rss_kib", 1),
];

const FANOUT: [Col; 15] = [
    ("watchers", "{n}/fanout/watchers", 0),
    ("HTTP/2 connections", "{n}/fanout/connections", 0),
    ("pods created", "{n}/fanout/pods_created", 0),
    ("events delivered", "{n}/fanout/events_delivered", 0),
    ("events/s delivered, total", "{n}/fanout/events_per_sec", 0),
    (
        "last-event lag p50 (ms)",
        "{n}/fanout/last_event_lag_ms/p50",
        1,
    ),
    (
        "last-event lag p99 (ms)",
        "{n}/fanout/last_event_lag_ms/p99",
        1,
    ),
    (
        "last-event lag max (ms)",
        "{n}/fanout/last_event_lag_ms/max",
        1,
    ),
    ("creates/s meanwhile", "{n}/fanout/creates_per_sec", 0),
    (
        "server CPU (% of one core)",
        "{n}/fanout/server_cpu_percent_of_one_core",
        1,
    ),
    (
        "etcd CPU (% of one core)",
        "{n}/fanout/etcd_cpu_percent_of_one_core",
        1,
    ),
    ("RSS before (MiB)", "{n}/fanout/rss_before_kib", 1),
    (
        "RSS, watchers open (MiB)",
        "{n}/fanout/rss_watchers_open_kib",
        1,
    ),
    (
        "RSS after delivery (MiB)",
        "{n}/fanout/rss_after_delivery_kib",
        1,
    ),
    (
        "RSS, watchers closed (MiB)",
        "{n}/fanout/rss_watchers_closed_kib",
        1,
    ),
];

const LEASES: [Col; 18] = [
    ("nodes", "{n}/leases/nodes", 0),
    (
        "renewals/s, target",
        "{n}/leases/renewing/target_per_sec",
        0,
    ),
    (
        "renewals/s, achieved",
        "{n}/leases/renewing/renewals_per_sec",
        1,
    ),
    ("renewal PUT p50 (ms)", "{n}/leases/renewing/p50_ms", 2),
    ("renewal PUT p99 (ms)", "{n}/leases/renewing/p99_ms", 2),
    ("renewals failed", "{n}/leases/renewing/failed", 0),
    (
        "server CPU idle, no nodes (%)",
        "{n}/leases/idle_no_nodes/server_cpu_percent_of_one_core",
        2,
    ),
    (
        "server CPU idle, N nodes (%)",
        "{n}/leases/idle_with_nodes/server_cpu_percent_of_one_core",
        2,
    ),
    (
        "server CPU, N nodes renewing (%)",
        "{n}/leases/renewing/server_cpu_percent_of_one_core",
        1,
    ),
    (
        "etcd CPU, N nodes renewing (%)",
        "{n}/leases/renewing/etcd_cpu_percent_of_one_core",
        1,
    ),
    (
        "bench client CPU, renewing (%)",
        "{n}/leases/renewing/bench_client_cpu_percent_of_one_core",
        1,
    ),
    (
        "RSS idle, no nodes (MiB)",
        "{n}/leases/idle_no_nodes/rss_kib",
        1,
    ),
    (
        "RSS idle, N nodes (MiB)",
        "{n}/leases/idle_with_nodes/rss_kib",
        1,
    ),
    (
        "RSS, N nodes renewing (MiB)",
        "{n}/leases/renewing/rss_kib",
        1,
    ),
    (
        "controller pass, wall p50 (ms)",
        "{n}/leases/in_process_pass/pass_ms_p50",
        1,
    ),
    (
        "controller pass, wall max (ms)",
        "{n}/leases/in_process_pass/pass_ms_max",
        1,
    ),
    (
        "controller pass, CPU p50 (ms)",
        "{n}/leases/in_process_pass/pass_cpu_ms_p50",
        1,
    ),
    (
        "controller CPU at 5 s period (%)",
        "{n}/leases/in_process_pass/cpu_percent_of_one_core",
        2,
    ),
];

/// Whether either backend of the API server bench has `section`: files from
/// before a section was added say so instead of a table of dashes.
fn has_section(out: &mut String, d: &Doc, section: &str) -> Result<bool> {
    if d.get(&format!("sqlite/{section}"))?.is_some()
        || d.get(&format!("etcd/{section}"))?.is_some()
    {
        return Ok(true);
    }
    writeln!(out, "*Not measured* (no `{section}` in `{}`).\n", d.file)?;
    Ok(false)
}

fn control_plane(out: &mut String, inputs: &[Input]) -> Result<()> {
    writeln!(out, "## Control plane\n\n### Scheduler, in process\n")?;
    if let Some(d) = ran(out, &inputs[2])? {
        let rows: Vec<_> = (0..d.list("cases")?.len()).map(|i| i.to_string()).collect();
        col_table(out, &d, &SCHEDULER, &rows)?;
    }
    writeln!(out, "### Scheduler through the API server\n")?;
    if let Some(d) = ran(out, &inputs[3])? {
        let text = |k: &str| Ok::<_, anyhow::Error>(d.text(k)?.unwrap_or(DASH.into()));
        writeln!(
            out,
            "Storage {}; scheduler: {}; {} binds in flight; events posted: {}. CPU: utime + stime from the scheduler's start to the last bind, over that time; idle: the following {}.\n",
            text("storage")?,
            text("scheduler")?,
            text("parallel_binds")?,
            text("events")?,
            fu(d.num("cases/0/idle_seconds")?, 0, "s"),
        )?;
        let rows: Vec<_> = match d.list("cases")?.len() {
            0 => vec![String::new()],
            n => (0..n).map(|i| format!("cases/{i}/")).collect(),
        };
        col_table(out, &d, &E2E, &rows)?;
    }
    writeln!(out, "### Storage\n")?;
    if let Some(d) = ran(out, &inputs[4])? {
        let sync = d.text("sqlite_synchronous")?.unwrap_or(DASH.into());
        let sqlite = format!("SQLite (synchronous={sync})");
        compare(out, &d, &[(&sqlite, "sqlite"), ("etcd", "etcd")], &STORAGE)?;
    }
    let backends = [("SQLite", "sqlite"), ("etcd", "etcd")];
    writeln!(out, "### API server over HTTPS\n")?;
    if let Some(d) = ran(out, &inputs[5])? {
        let (pods, http) = (f(d.num("pods")?, 0), d.text("http")?.unwrap_or(DASH.into()));
        writeln!(out, "N = {pods} pods per burst, {http}.\n")?;
        compare(out, &d, &backends, &APISERVER)?;
    }
    writeln!(out, "### API server watch fan-out\n")?;
    if let Some(d) = ran(out, &inputs[5])?
        && has_section(out, &d, "fanout")?
    {
        writeln!(
            out,
            "Each watcher is its own watch of one namespace's pods, many multiplexed on each HTTP/2 connection (as client-go does), opened before the creates (concurrency 16). Lag: the last event's arrival behind the last create's response, per watcher. A fresh server; CPU over the creates and the delivery.\n"
        )?;
        compare(out, &d, &backends, &FANOUT)?;
    }
    writeln!(out, "### API server RSS with many pods\n")?;
    if let Some(d) = ran(out, &inputs[5])?
        && has_section(out, &d, "scale")?
    {
        scale_table(out, &d, &backends)?;
    }
    writeln!(out, "### Node leases and the node lifecycle controller\n")?;
    if let Some(d) = ran(out, &inputs[5])?
        && has_section(out, &d, "leases")?
    {
        writeln!(
            out,
            "A fresh server (`{}`) with N Ready nodes, each renewing its Lease every 10 s (as the kubelet does: a PUT with the last resourceVersion), spread evenly. Idle with N nodes, the node lifecycle controller's pass every 5 s is all the server does (the server has no switch to turn the controller off; the idle rows side by side stand in for it). The pass rows: the controller's own pass over the same N nodes and Leases, timed in the bench process on the same kind of storage. CPU in % of one core.\n",
            d.text("sqlite/leases/server_flags")?
                .or(d.text("etcd/leases/server_flags")?)
                .unwrap_or(DASH.into())
        )?;
        compare(out, &d, &backends, &LEASES)?;
    }
    Ok(())
}

/// RSS after each pod count of the scale section (the counts of the first
/// backend that has them), then after a paged walk of them all.
fn scale_table(out: &mut String, d: &Doc, backends: &[(&str, &str)]) -> Result<()> {
    let mut points = d.list("sqlite/scale/points")?;
    if points.is_empty() {
        points = d.list("etcd/scale/points")?;
    }
    let mut rows = vec![(
        "RSS idle (MiB)".to_string(),
        "{n}/scale/rss_idle_kib".to_string(),
        1,
    )];
    for (i, p) in points.iter().enumerate() {
        let pods = f(p.num("pods")?, 0);
        let at = format!("{{n}}/scale/points/{i}");
        rows.push((
            format!("RSS, {pods} pods stored (MiB)"),
            format!("{at}/rss_kib"),
            1,
        ));
        rows.push((
            format!("creates/s up to {pods}"),
            format!("{at}/creates_per_sec"),
            0,
        ));
        rows.push((
            format!("etcd RSS, {pods} pods (MiB)"),
            format!("{at}/etcd_rss_kib"),
            1,
        ));
    }
    rows.push((
        "paged list of all, pages of 500 (ms)".into(),
        "{n}/scale/paged_list/ms".into(),
        0,
    ));
    rows.push((
        "RSS after the paged list (MiB)".into(),
        "{n}/scale/paged_list/rss_after_kib".into(),
        1,
    ));
    writeln!(
        out,
        "A fresh server; pods created at concurrency 16 until the count is stored, RSS (VmRSS) read after a short settle.\n"
    )?;
    compare_rows(out, d, backends, &rows)
}

const PROBE_PHASES: [Col; 8] = [
    ("probes/s run", "phases/{n}/probes_per_second_run", 1),
    ("configured", "phases/{n}/probes_per_second_configured", 0),
    ("agent CPU", "phases/{n}/agent_cpu_percent_of_one_core", 2),
    (
        "agent over no_probes",
        "agent_cpu_over_no_probes_percent_of_one_core/{n}",
        2,
    ),
    (
        "prober thread",
        "phases/{n}/prober_thread_cpu_percent_of_one_core",
        2,
    ),
    (
        "runtime CPU",
        "phases/{n}/runtime_cpu_percent_of_one_core",
        2,
    ),
    (
        "pods' cgroups",
        "phases/{n}/pods_cgroup_cpu_percent_of_one_core",
        2,
    ),
    ("agent RSS (MiB)", "phases/{n}/agent_rss_kib", 1),
];

fn probes(out: &mut String, input: &Input) -> Result<()> {
    writeln!(out, "## Probe cost\n")?;
    let Some(d) = ran(out, input)? else {
        return Ok(());
    };
    let (pods, window) = (d.num("pods")?, d.num("sample_seconds")?);
    writeln!(
        out,
        "{} pods; CPU in % of one core over {}.\n",
        f(pods, 0),
        fu(window, 0, "s")
    )?;
    let mut phases = vec![
        "no_probes".to_string(),
        "http_tcp_grpc".into(),
        "exec".into(),
    ];
    for k in d.keys("phases")? {
        if !phases.contains(&k) {
            phases.push(k);
        }
    }
    let mut rows = Vec::new();
    for p in &phases {
        rows.push(
            std::iter::once(format!("`{p}`"))
                .chain(row(&d, &PROBE_PHASES, p)?)
                .collect(),
        );
    }
    let head: Vec<_> = std::iter::once("phase")
        .chain(PROBE_PHASES.iter().map(|c| c.0))
        .collect();
    table(out, &head, &rows)?;
    let floor = "phases/no_probes/raw_client_floor";
    let conns = f(d.num(&format!("{floor}/connections_per_second_run"))?, 0);
    let cpu = fu(
        d.num(&format!("{floor}/thread_cpu_percent_of_one_core"))?,
        2,
        "%",
    );
    writeln!(
        out,
        "Floor: a minimal blocking client making the same {conns} connections/s: {cpu}.\n"
    )?;
    let cpu = d.num("phases/http_tcp_grpc/agent_cpu_percent_of_one_core")?;
    let verdict = Verdict::check(cpu.filter(|_| pods == Some(110.0)), |c| c < 5.0);
    let figure = format!("{} at {} pods", fu(cpu, 2, "%"), f(pods, 0));
    let goal = "httpGet/tcpSocket/gRPC probes: agent < 5% of one core at 110 pods";
    table(
        out,
        &["goal", "figure", "verdict"],
        &[vec![goal.into(), figure, verdict.md()]],
    )
}

fn render(inputs: &[Input], env: &Env, paths: (&str, &str), real_cdf: bool) -> Result<String> {
    let mut out = String::new();
    let plot = |name: &str| format!("{}/{name}", paths.1);
    header(&mut out, inputs, env, paths.0)?;
    pod_start(&mut out, &inputs[AGENT], &plot("pod-start.svg"))?;
    detection(
        &mut out,
        &inputs[DETECT],
        &plot("detection-cdf.svg"),
        real_cdf,
    )?;
    footprint(&mut out, &inputs[AGENT], &plot("rss.svg"))?;
    teardown(&mut out, &inputs[AGENT])?;
    control_plane(&mut out, inputs)?;
    probes(&mut out, &inputs[PROBES])?;
    writeln!(
        out,
        "\"—\": not in the JSON (not measured in this mode, or not recorded)."
    )?;
    Ok(out)
}

struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    /// A goal line: thin, black, no markers.
    goal: bool,
}

impl Series {
    fn data(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            points,
            goal: false,
        }
    }
}

/// A tick label: no trailing zeros.
fn tick(v: &f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
];

fn plot(
    path: &Path,
    caption: &str,
    axes: (&str, &str),
    series: &[Series],
    y_max: Option<f64>,
    legend: SeriesLabelPosition,
) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let all = series.iter().flat_map(|s| s.points.iter());
    let x_max = all.clone().map(|p| p.0).fold(0.0, f64::max).max(1.0) * 1.05;
    let y_max = y_max.unwrap_or_else(|| all.map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.1);
    let caption = if series
        .iter()
        .filter(|s| !s.goal)
        .all(|s| s.points.is_empty())
    {
        format!("{caption} (no data)")
    } else {
        caption.to_string()
    };
    let root = SVGBackend::new(path, (760, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| err(&e))?;
    let mesh = chart
        .configure_mesh()
        .x_desc(axes.0)
        .y_desc(axes.1)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .draw();
    mesh.map_err(|e| err(&e))?;
    for (i, s) in series.iter().filter(|s| !s.points.is_empty()).enumerate() {
        let (c, width) = if s.goal {
            (BLACK, 1)
        } else {
            (COLORS[i % COLORS.len()], 2)
        };
        chart
            .draw_series(LineSeries::new(s.points.clone(), c.stroke_width(width)))
            .map_err(|e| err(&e))?
            .label(s.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(width))
            });
        if s.goal {
            continue;
        }
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(|e| err(&e))?;
    }
    if series.iter().any(|s| !s.points.is_empty()) {
        chart
            .configure_series_labels()
            .position(legend)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// `(x, y)` of each element of the array at `list` that has both.
fn points(d: &Doc, list: &str, x: &str, y: &str, scale: f64) -> Result<Vec<(f64, f64)>> {
    let mut pts = Vec::new();
    for e in d.list(list)? {
        if let (Some(x), Some(y)) = (e.num(x)?, e.num(y)?) {
            pts.push((x, y * scale));
        }
    }
    Ok(pts)
}

/// Draws the three plots; returns whether the detection plot is a real CDF.
fn plots(inputs: &[Input], dir: &Path) -> Result<bool> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let a = inputs[AGENT].doc();
    let agent = points(&a, "pod_start", "pods", "agent/batch_ms/p50_ms", 1.0)?;
    let raw = points(&a, "pod_start", "pods", "raw/batch_ms/p50_ms", 1.0)?;
    let series = [Series::data("agent", agent), Series::data("raw CRI", raw)];
    let axes = ("pods started at once (N)", "batch wall time p50 (ms)");
    plot(
        &dir.join("pod-start.svg"),
        "Pod start: batch p50",
        axes,
        &series,
        None,
        SeriesLabelPosition::UpperLeft,
    )?;

    let idle = points(&a, "footprint/idle", "pods", "rss_kib", 1.0 / 1024.0)?;
    let ds = a.at("footprint/during_start")?;
    let during = ds
        .num("pods")?
        .zip(ds.num("rss_kib_after")?.map(|k| k / 1024.0));
    let goal = vec![(0.0, 30.0), (110.0, 30.0)];
    let series = [
        Series::data("idle", idle),
        Series::data("after a batch start", during.into_iter().collect()),
        Series {
            name: "goal: < 30 MiB at 110 pods".into(),
            points: goal,
            goal: true,
        },
    ];
    plot(
        &dir.join("rss.svg"),
        "berth-agent RSS",
        ("pods", "RSS (MiB)"),
        &series,
        None,
        SeriesLabelPosition::LowerRight,
    )?;

    let d = inputs[DETECT].doc();
    let mut series = Vec::new();
    let mut real_cdf = true;
    for mode in ["events", "relist_only"] {
        for n in pod_counts(&d)? {
            let ms = d.at(&format!("modes/{mode}/by_pods/{n}/detect_ms"))?;
            // `samples_ms`: every detection, in ms (older files lack it).
            let mut samples: Vec<f64> = ms
                .list("samples_ms")?
                .iter()
                .filter_map(|x| x.v?.as_f64())
                .collect();
            let pts = if samples.is_empty() {
                real_cdf = false;
                let q = [("p50", 0.5), ("p99", 0.99), ("max", 1.0)];
                let pts: Vec<_> = q
                    .iter()
                    .map(|&(k, y)| Ok(ms.num(k)?.map(|x| (x, y))))
                    .collect::<Result<_>>()?;
                pts.into_iter().flatten().collect()
            } else {
                samples.sort_by(f64::total_cmp);
                let len = samples.len() as f64;
                samples
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| (x, (i + 1) as f64 / len))
                    .collect()
            };
            series.push(Series::data(
                format!("{}, {n} pods", mode.replace('_', "-")),
                pts,
            ));
        }
    }
    let real_cdf = real_cdf && !series.is_empty();
    let goal = vec![(50.0, 0.0), (50.0, 1.0)];
    series.push(Series {
        name: "goal: p99 ≤ 50 ms".into(),
        points: goal,
        goal: true,
    });
    let caption = match real_cdf {
        true => "Detection latency CDF",
        false => "Detection latency (p50, p99, max)",
    };
    let axes = ("kill to visible on /pods (ms)", "fraction of kills");
    let path = dir.join("detection-cdf.svg");
    plot(
        &path,
        caption,
        axes,
        &series,
        Some(1.05),
        SeriesLabelPosition::LowerRight,
    )?;
    Ok(real_cdf)
}

/// `p` absolute and without `.`/`..`.
fn normalize(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))?;
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => _ = out.pop(),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// `to` relative to the directory `from`, with `/` separators.
fn relative(from: &Path, to: &Path) -> Result<String> {
    let (from, to) = (normalize(from)?, normalize(to)?);
    let common = from
        .components()
        .zip(to.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut parts: Vec<String> = vec!["..".into(); from.components().count() - common];
    let rest = to.components().skip(common);
    parts.extend(rest.map(|c| c.as_os_str().to_string_lossy().into_owned()));
    Ok(if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    })
}

fn main() -> Result<()> {
    let mut input = PathBuf::from("target");
    let mut output = PathBuf::from("BENCHMARKS.md");
    let mut plots_dir = PathBuf::from("docs/bench");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let slot = match arg.as_str() {
            "--input" => &mut input,
            "--output" => &mut output,
            "--plots" => &mut plots_dir,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => bail!("unknown argument {arg}\n{USAGE}"),
        };
        let value = args
            .next()
            .ok_or_else(|| anyhow!("{arg} needs a path\n{USAGE}"))?;
        *slot = PathBuf::from(value);
    }
    let inputs: Vec<Input> = FILES
        .iter()
        .map(|f| Input::load(&input, f))
        .collect::<Result<_>>()?;
    let out_dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let real_cdf = plots(&inputs, &plots_dir)?;
    let paths = (relative(out_dir, &input)?, relative(out_dir, &plots_dir)?);
    let md = render(&inputs, &Env::probe(), (&paths.0, &paths.1), real_cdf)?;
    std::fs::write(&output, md).with_context(|| format!("writing {}", output.display()))?;
    eprintln!(
        "berth-bench-report: wrote {} and {}/*.svg",
        output.display(),
        plots_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_are_evaluated() {
        assert_eq!(Verdict::check(Some(1.10), |r| r <= 1.10), Verdict::Met);
        assert_eq!(Verdict::check(Some(1.11), |r| r <= 1.10), Verdict::NotMet);
        assert_eq!(Verdict::check(None, |r| r <= 1.10), Verdict::Unknown);
        assert_eq!(Verdict::Met.and(Verdict::Unknown), Verdict::Unknown);
        assert_eq!(Verdict::Unknown.and(Verdict::NotMet), Verdict::NotMet);
        assert_eq!(Verdict::NotMet.md(), "**not met**");
    }

    #[test]
    fn missing_keys_are_dashes_and_wrong_types_name_the_field() -> Result<()> {
        let json = serde_json::json!({
            "pod_start": [{"pods": 1, "raw": {"batch_ms": {"p50_ms": "x"}}}],
            "footprint": {"endpoints": null},
        });
        let i = Input {
            file: "bench-agent.json",
            json: Some(json),
            modified: None,
        };
        let d = i.doc();
        assert_eq!(d.num("footprint/endpoints/pods_list_ms/p99_ms")?, None);
        assert_eq!(d.num("no/such/key")?, None);
        let err = d.list("pod_start")?[0].num("raw/batch_ms/p50_ms").err();
        let err = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("bench-agent.json: field `pod_start[0].raw.batch_ms.p50_ms`"),
            "{err}"
        );
        let mut out = String::new();
        pod_start(&mut out, &i, "p.svg")
            .err()
            .context("expected an error")?;
        footprint(&mut out, &i, "r.svg")?;
        assert!(
            out.contains("| `/pods` p99 < 20 ms at 110 pods | — | — |"),
            "{out}"
        );
        Ok(())
    }

    #[test]
    fn empty_input_dir_says_not_run() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("bench-report-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let inputs: Vec<Input> = FILES
            .iter()
            .map(|f| Input::load(&dir, f))
            .collect::<Result<_>>()?;
        let env = Env {
            machine: "m".into(),
            containerd: None,
            date: "d".into(),
        };
        let md = render(&inputs, &env, ("target", "docs/bench"), false)?;
        assert_eq!(md.matches("*Not run*").count(), 12, "{md}");
        assert_eq!(
            relative(Path::new("."), Path::new("docs/bench"))?,
            "docs/bench"
        );
        assert_eq!(
            relative(Path::new("docs"), Path::new("target"))?,
            "../target"
        );
        Ok(std::fs::remove_dir_all(&dir)?)
    }
}
