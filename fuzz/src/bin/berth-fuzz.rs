//! `berth-fuzz`: a coverage-free mutational fuzzer for the targets in
//! `berth_fuzz::TARGETS`, on the stable toolchain (no sanitizers, no nightly
//! flags), for a bounded run in CI and longer runs by hand.
//!
//! Each target starts from its checked-in corpus (`fuzz/corpus/<target>/`,
//! then `fuzz/regressions/<target>/`), runs every seed once, then mutates
//! seeds (bit and byte flips, interesting integers, inserted, deleted and
//! duplicated ranges, splices of two inputs, the target's dictionary tokens,
//! deep nesting, huge numbers, and structure-aware changes to one node of a
//! JSON document) until its time or run budget is spent. The
//! input sequence depends only on `--seed` and the corpus, so a run with the
//! same seed and `--runs` repeats exactly (with the same build: the generator
//! is `berth_test_support::TestRng`, `rand`'s `StdRng` as `Cargo.lock` pins it).
//!
//! A panic is a failure: the input goes to
//! `fuzz/artifacts/<target>/crash-<sha256 prefix>`, its path and the panic
//! are printed, and the exit status is 1. So is an input that takes longer
//! than `--timeout-ms` (a watchdog thread reports one that never returns,
//! as `hang-<sha256 prefix>`). The summary is one JSON object on stdout.
//!
//! Inputs run on a thread with a 2 MiB stack, a tokio worker's, so recursion
//! the agent and the API server could not survive fails here too. A stack
//! overflow aborts the process, which no panic handler sees: the fuzzing runs
//! in a child process that keeps the running input in `artifacts/.current`,
//! and the parent reports a child killed by a signal (an abort, the OOM
//! killer) with that input, as a crash.
//!
//! `berth-fuzz --target NAME FILE…` replays files through one target instead.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use berth_fuzz::{TARGETS, Target};
use berth_test_support::TestRng;
use clap::Parser;
use serde_json::json;
use sha2::{Digest, Sha256};

/// The stack inputs run on: a tokio worker thread's.
const STACK_BYTES: usize = 2 * 1024 * 1024;

#[derive(Parser, Debug)]
#[command(about = "Mutational fuzzing of berth's hostile-input parsers (stable toolchain)")]
struct Args {
    /// The target to fuzz (manifest, quantity, request, patch, spdy).
    #[arg(long, conflicts_with = "all")]
    target: Option<String>,
    /// Fuzz every target, one after the other.
    #[arg(long)]
    all: bool,
    /// Seconds per target.
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
    /// Stop a target after this many executions (with --seconds, whichever comes first).
    #[arg(long)]
    runs: Option<u64>,
    /// The random seed (default: from the clock; printed in the summary).
    #[arg(long)]
    seed: Option<u64>,
    /// An input running longer than this is a failure (a hang).
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Where the corpus and regression directories and the artifacts live.
    #[arg(long, default_value = env!("CARGO_MANIFEST_DIR"))]
    dir: PathBuf,
    /// Replay these files through --target once each, instead of fuzzing.
    files: Vec<PathBuf>,
}

/// What the running input is, for the watchdog.
struct Current {
    /// The target's name and the input.
    input: Mutex<(&'static str, Vec<u8>)>,
    /// When the input started (nanoseconds after `epoch`, plus one); 0: idle.
    started: AtomicU64,
    epoch: Instant,
    /// The running input, kept in [`trace_path`] for the parent process.
    trace: Mutex<Option<fs::File>>,
}

impl Current {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }
}

/// A failing input: what happened and to which input.
struct Failure {
    target: &'static str,
    kind: &'static str,
    input: Vec<u8>,
    message: String,
}

/// The last panic: message, location and backtrace (set by the panic hook).
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

fn take_last_panic() -> Option<String> {
    LAST_PANIC.lock().ok().and_then(|mut p| p.take())
}

/// Set in the child process that does the fuzzing.
const CHILD_ENV: &str = "BERTH_FUZZ_CHILD";

/// Where the child keeps the running input (the target's name, a line
/// break, the input), for the parent to report if the child dies of a signal.
fn trace_path(dir: &Path) -> PathBuf {
    dir.join("artifacts").join(".current")
}

fn main() -> ExitCode {
    let args = Args::parse();
    if std::env::var_os(CHILD_ENV).is_none() && args.files.is_empty() {
        return supervise(&args);
    }
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth-fuzz: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Run the fuzzing in a child process, so that a death no panic handler sees
/// (a stack overflow's abort, the OOM killer) is still reported with its input.
fn supervise(args: &Args) -> ExitCode {
    let seed = args.seed.unwrap_or_else(clock_seed);
    let mut child_args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.seed.is_none() {
        child_args.extend(["--seed".into(), seed.to_string().into()]);
    }
    let trace = trace_path(&args.dir);
    let _ = fs::remove_file(&trace);
    let status = std::env::current_exe().and_then(|exe| {
        std::process::Command::new(exe)
            .args(child_args)
            .env(CHILD_ENV, "1")
            .status()
    });
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            eprintln!("berth-fuzz: starting the fuzzing process: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(code) = status.code() {
        let _ = fs::remove_file(&trace);
        return ExitCode::from(u8::try_from(code).unwrap_or(2));
    }
    use std::os::unix::process::ExitStatusExt;
    let signal = status.signal().unwrap_or(0);
    let traced = fs::read(&trace).unwrap_or_default();
    let (name, input) = match traced.iter().position(|&b| b == b'\n') {
        Some(i) => (
            String::from_utf8_lossy(&traced[..i]).into_owned(),
            traced[i + 1..].to_vec(),
        ),
        None => (String::new(), Vec::new()),
    };
    let Some(target) = berth_fuzz::find(&name) else {
        eprintln!(
            "berth-fuzz: the fuzzing process died of signal {signal} before running an input"
        );
        return ExitCode::from(1);
    };
    let failure = Failure {
        target: target.name,
        kind: "crash",
        input,
        message: format!(
            "the process died of signal {signal} (a stack overflow aborts, SIGABRT = 6; \
             the OOM killer sends SIGKILL = 9) running this input"
        ),
    };
    if let Err(e) = report(&args.dir, &failure, seed) {
        eprintln!("berth-fuzz: {e:#}");
    }
    ExitCode::from(1)
}

fn clock_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(t.as_nanos() % u128::from(u64::MAX)).unwrap_or(0)
}

fn run(args: Args) -> Result<ExitCode> {
    let targets: Vec<&'static Target> = match (&args.target, args.all) {
        (Some(name), false) => vec![berth_fuzz::find(name).with_context(|| {
            let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
            format!("no target {name:?}; the targets are {}", names.join(", "))
        })?],
        (None, true) => TARGETS.iter().collect(),
        _ => bail!("say --target NAME or --all"),
    };
    if !args.files.is_empty() {
        if targets.len() != 1 {
            bail!("replaying files needs one --target");
        }
        return replay(targets[0], &args.files);
    }
    if !(args.seconds.is_finite() && args.seconds >= 0.0) {
        bail!(
            "--seconds must be a number of seconds, got {}",
            args.seconds
        );
    }
    let seed = args.seed.unwrap_or_else(clock_seed);
    let timeout = Duration::from_millis(args.timeout_ms);
    let budget = Budget {
        time: Duration::from_secs_f64(args.seconds),
        runs: args.runs,
        timeout,
    };

    // Quiet panics: the fuzz loop reports them itself.
    panic::set_hook(Box::new(|info| {
        let message = info
            .payload_as_str()
            .unwrap_or("(a panic without a message)");
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let backtrace = short_backtrace(&std::backtrace::Backtrace::force_capture().to_string());
        let text = format!("{message}\n  at {location}\n{backtrace}");
        if let Ok(mut p) = LAST_PANIC.lock() {
            *p = Some(text);
        }
    }));

    let current = Arc::new(Current {
        input: Mutex::new(("", Vec::new())),
        started: AtomicU64::new(0),
        epoch: Instant::now(),
        trace: Mutex::new({
            let path = trace_path(&args.dir);
            let parent = path.parent().unwrap_or(Path::new("."));
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            Some(fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?)
        }),
    });
    let mut corpora = Vec::new();
    for t in &targets {
        corpora.push(load_corpus(&args.dir, t)?);
    }
    let worker = {
        let current = Arc::clone(&current);
        std::thread::Builder::new()
            .name("berth-fuzz".into())
            .stack_size(STACK_BYTES)
            .spawn(move || {
                let mut stats = Vec::new();
                for (t, corpus) in targets.into_iter().zip(corpora) {
                    match fuzz_target(t, corpus, seed, &budget, &current) {
                        Ok(s) => stats.push(s),
                        Err(f) => return Err(f),
                    }
                }
                Ok(stats)
            })
            .context("starting the fuzzing thread")?
    };

    // The watchdog: an input that never returns is reported from here.
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        let started = current.started.load(Ordering::Acquire);
        if started != 0 && current.now().saturating_sub(started) > timeout.as_nanos() as u64 {
            let (target, input) = current
                .input
                .lock()
                .map(|g| (g.0, g.1.clone()))
                .unwrap_or_else(|e| {
                    let g = e.into_inner();
                    (g.0, g.1.clone())
                });
            let failure = Failure {
                target,
                kind: "hang",
                input,
                message: format!("the input has run for more than {timeout:?} (still running)"),
            };
            report(&args.dir, &failure, seed)?;
            // The stuck thread cannot be stopped; ending the process does.
            std::process::exit(1);
        }
    }
    let result = worker.join().map_err(|_| {
        let panic = take_last_panic().unwrap_or_default();
        anyhow::anyhow!("the fuzzing thread panicked outside a target: {panic}")
    })?;
    match result {
        Ok(stats) => {
            let summary = json!({ "seed": seed, "targets": stats });
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            report(&args.dir, &failure, seed)?;
            Ok(ExitCode::from(1))
        }
    }
}

/// The frames between the panic machinery and the driver: the code that panicked.
fn short_backtrace(full: &str) -> String {
    let lines: Vec<&str> = full.lines().collect();
    let frame = |l: &str| {
        l.trim_start()
            .split_once(": ")
            .is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()))
    };
    let end = lines
        .iter()
        .position(|l| frame(l) && l.contains("berth_fuzz::execute"))
        .unwrap_or(lines.len());
    let start = lines[..end]
        .iter()
        .rposition(|l| frame(l) && (l.contains("panicking") || l.contains("rust_begin_unwind")))
        .map_or(0, |i| i + 1);
    let start = match lines.get(start) {
        Some(l) if !frame(l) => start + 1, // the `at file:line` of the skipped frame
        _ => start,
    };
    lines[start.min(end)..end].join("\n")
}

struct Budget {
    time: Duration,
    runs: Option<u64>,
    timeout: Duration,
}

/// Write the failing input under `artifacts/<target>/` and say what happened.
fn report(dir: &Path, failure: &Failure, seed: u64) -> Result<()> {
    let digest = hex::encode(Sha256::digest(&failure.input));
    let out_dir = dir.join("artifacts").join(failure.target);
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let path = out_dir.join(format!("{}-{}", failure.kind, &digest[..16]));
    fs::write(&path, &failure.input).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "berth-fuzz: target {} {}: {} (seed {seed})\n{}\n\ninput ({} bytes) written to {}\n\
         reproduce: berth-fuzz --target {} {}\n\
         once fixed, keep it as a regression test: cp {} {}/",
        failure.target,
        failure.kind,
        failure.message.lines().next().unwrap_or(""),
        failure.message,
        failure.input.len(),
        path.display(),
        failure.target,
        path.display(),
        path.display(),
        dir.join("regressions").join(failure.target).display(),
    );
    println!(
        "{}",
        json!({
            "seed": seed,
            "failure": {
                "target": failure.target,
                "kind": failure.kind,
                "artifact": path.display().to_string(),
                "message": failure.message.lines().next().unwrap_or(""),
            }
        })
    );
    Ok(())
}

/// Replay `files` through `target` once each (no watchdog: a hang hangs).
fn replay(target: &'static Target, files: &[PathBuf]) -> Result<ExitCode> {
    let mut failed = false;
    for file in files {
        let input = fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let started = Instant::now();
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(&input)));
        let took = started.elapsed();
        match outcome {
            Ok(()) => eprintln!("{}: ok in {took:?}", file.display()),
            Err(_) => {
                failed = true;
                eprintln!("{}: panicked after {took:?}", file.display());
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The seeds of `target`: its corpus, then its regressions, each sorted by
/// name, cut to the target's size cap. An empty corpus starts from one empty input.
fn load_corpus(dir: &Path, target: &Target) -> Result<Vec<Vec<u8>>> {
    let mut seeds = Vec::new();
    for p in berth_fuzz::input_files(dir, target.name) {
        let mut bytes = fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        bytes.truncate(target.max_len);
        seeds.push(bytes);
    }
    if seeds.is_empty() {
        seeds.push(Vec::new());
    }
    Ok(seeds)
}

/// Run one input under the watchdog's eye; a panic or an overlong run is a failure.
fn execute(
    target: &'static Target,
    input: &[u8],
    timeout: Duration,
    current: &Current,
) -> Result<(), Failure> {
    if let Ok(mut g) = current.input.lock() {
        g.0 = target.name;
        g.1.clear();
        g.1.extend_from_slice(input);
    }
    if let Ok(mut trace) = current.trace.lock()
        && let Some(f) = trace.as_mut()
    {
        use std::io::{Seek, SeekFrom, Write};
        let len = target.name.len() + 1 + input.len();
        let _ = f
            .seek(SeekFrom::Start(0))
            .and_then(|_| f.write_all(target.name.as_bytes()))
            .and_then(|_| f.write_all(b"\n"))
            .and_then(|_| f.write_all(input))
            .and_then(|_| f.set_len(len as u64));
    }
    let started = Instant::now();
    current.started.store(current.now(), Ordering::Release);
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    current.started.store(0, Ordering::Release);
    let took = started.elapsed();
    if outcome.is_err() {
        let message = take_last_panic().unwrap_or_else(|| "panicked".to_string());
        return Err(Failure {
            target: target.name,
            kind: "crash",
            input: input.to_vec(),
            message,
        });
    }
    if took > timeout {
        return Err(Failure {
            target: target.name,
            kind: "slow",
            input: input.to_vec(),
            message: format!("the input took {took:?}, more than {timeout:?}"),
        });
    }
    Ok(())
}

/// Fuzz one target within the budget; its statistics as JSON.
fn fuzz_target(
    target: &'static Target,
    corpus: Vec<Vec<u8>>,
    seed: u64,
    budget: &Budget,
    current: &Current,
) -> Result<serde_json::Value, Failure> {
    let mut hasher = DefaultHasher::new();
    target.name.hash(&mut hasher);
    // `DefaultHasher::new()` is SipHash with fixed keys: the same on every run.
    let mut rng = TestRng::new(seed ^ hasher.finish());
    let started = Instant::now();
    let mut executions = 0u64;
    let mut longest = Duration::ZERO;
    let within = |executions: u64| budget.runs.is_none_or(|r| executions < r);
    // The seeds first, as they are.
    for input in &corpus {
        if !within(executions) {
            break;
        }
        let t = Instant::now();
        execute(target, input, budget.timeout, current)?;
        longest = longest.max(t.elapsed());
        executions += 1;
    }
    let mut input = Vec::with_capacity(target.max_len);
    while within(executions) && started.elapsed() < budget.time {
        input.clear();
        input.extend_from_slice(&corpus[rng.below(corpus.len())]);
        let stacked = 1 + rng.below(8);
        for _ in 0..stacked {
            mutate(&mut rng, &mut input, &corpus, target);
        }
        input.truncate(target.max_len);
        let t = Instant::now();
        execute(target, &input, budget.timeout, current)?;
        longest = longest.max(t.elapsed());
        executions += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(json!({
        "target": target.name,
        "executions": executions,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "executions_per_second": if secs > 0.0 { (executions as f64 / secs).round() } else { 0.0 },
        "seeds": corpus.len(),
        "slowest_input_ms": (longest.as_secs_f64() * 1e5).round() / 100.0,
    }))
}

/// A length up to `max`, mostly small.
fn small_len(rng: &mut TestRng, max: usize) -> usize {
    let cap = match rng.below(4) {
        0 => max,
        1 => 64.min(max),
        _ => 8.min(max),
    };
    rng.below(cap + 1)
}

const INTERESTING_8: &[u8] = &[0, 1, 0x7f, 0x80, 0xff, 16, 32, 64, 100, 127];
const INTERESTING_32: &[u32] = &[
    0,
    1,
    7,
    8,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0xff_ffff,
    0x100_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
];
/// Numbers that break naive number handling, as text.
const HUGE_NUMBERS: &[&str] = &[
    "0",
    "-0",
    "-1",
    "1e308",
    "1e309",
    "-1e-400",
    "0.000000000000000000001",
    "2147483648",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "170141183460469231731687303715884105728",
    "99999999999999999999999999999999999999999999999999999999999999",
    "1e2147483648",
    "NaN",
    "Infinity",
];
/// Openers for deep nesting.
const NESTING: &[&str] = &[
    "[", "{\"a\":", "- ", "a:\n ", "[{\"a\":", "&a [*a,", "!!seq [",
];

/// One mutation of `input`, in place.
fn mutate(rng: &mut TestRng, input: &mut Vec<u8>, corpus: &[Vec<u8>], target: &Target) {
    let len = input.len();
    match rng.below(17) {
        // Structure-aware: change one node of a JSON document in the input.
        14..=16 => {
            if !mutate_json(rng, input) {
                let at = rng.below(len + 1);
                input.insert(at, rng.next_u64() as u8);
            }
        }
        // Flip a bit.
        0 if len > 0 => {
            let i = rng.below(len);
            input[i] ^= 1 << rng.below(8);
        }
        // Set a byte.
        1 if len > 0 => {
            let i = rng.below(len);
            input[i] = rng.next_u64() as u8;
        }
        // Add to a byte.
        2 if len > 0 => {
            let i = rng.below(len);
            let d = 1 + rng.below(35) as u8;
            input[i] = if rng.chance(2) {
                input[i].wrapping_add(d)
            } else {
                input[i].wrapping_sub(d)
            };
        }
        // An interesting integer, 1 or 4 bytes, either byte order.
        3 if len > 0 => {
            if rng.chance(2) {
                let i = rng.below(len);
                input[i] = INTERESTING_8[rng.below(INTERESTING_8.len())];
            } else if len >= 4 {
                let i = rng.below(len - 3);
                let v = INTERESTING_32[rng.below(INTERESTING_32.len())];
                let b = if rng.chance(2) {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                };
                input[i..i + 4].copy_from_slice(&b);
            }
        }
        // Insert random bytes.
        4 => {
            let at = rng.below(len + 1);
            let n = 1 + small_len(rng, 16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            input.splice(at..at, bytes);
        }
        // Delete a range.
        5 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + small_len(rng, len - at - 1);
            input.drain(at..(at + n).min(len));
        }
        // Duplicate a range somewhere.
        6 if len > 0 => {
            let from = rng.below(len);
            let n = 1 + small_len(rng, len - from - 1);
            let copy = input[from..(from + n).min(len)].to_vec();
            let times = if rng.chance(8) { 1 + rng.below(64) } else { 1 };
            let at = rng.below(len + 1);
            let repeated: Vec<u8> = copy
                .iter()
                .copied()
                .cycle()
                .take(copy.len() * times)
                .collect();
            input.splice(at..at, repeated);
        }
        // Splice: this input's head with another's tail.
        7 => {
            let other = &corpus[rng.below(corpus.len())];
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        // Insert another input's range.
        8 => {
            let other = &corpus[rng.below(corpus.len())];
            if !other.is_empty() {
                let from = rng.below(other.len());
                let n = 1 + small_len(rng, other.len() - from - 1);
                let at = rng.below(len + 1);
                input.splice(
                    at..at,
                    other[from..(from + n).min(other.len())].iter().copied(),
                );
            }
        }
        // A dictionary token, inserted or overwriting.
        9 | 10 if !target.dictionary.is_empty() => {
            let token = target.dictionary[rng.below(target.dictionary.len())];
            let at = rng.below(len + 1);
            if rng.chance(2) || at + token.len() > len {
                input.splice(at..at, token.iter().copied());
            } else {
                input[at..at + token.len()].copy_from_slice(token);
            }
        }
        // A number replaced by a huge or odd one.
        11 => {
            let number = HUGE_NUMBERS[rng.below(HUGE_NUMBERS.len())].as_bytes();
            let digits: Vec<usize> = (0..len).filter(|&i| input[i].is_ascii_digit()).collect();
            if digits.is_empty() {
                let at = rng.below(len + 1);
                input.splice(at..at, number.iter().copied());
            } else {
                let start = digits[rng.below(digits.len())];
                let end = (start..len)
                    .find(|&i| !matches!(input[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'-' | b'+'))
                    .unwrap_or(len);
                input.splice(start..end, number.iter().copied());
            }
        }
        // Deep nesting.
        12 => {
            let opener = NESTING[rng.below(NESTING.len())].as_bytes();
            let depth = match rng.below(3) {
                0 => 1 + rng.below(64),
                1 => 100 + rng.below(200),
                _ => 1000 + rng.below(10_000),
            };
            let at = rng.below(len + 1);
            let nested: Vec<u8> = opener
                .iter()
                .copied()
                .cycle()
                .take(opener.len() * depth)
                .collect();
            input.splice(at..at, nested);
        }
        // Truncate.
        13 if len > 0 => input.truncate(rng.below(len)),
        _ => {
            let at = rng.below(len + 1);
            input.insert(at, rng.next_u64() as u8);
        }
    }
}

/// Strings that break naive string handling.
const ODD_STRINGS: &[&str] = &[
    "",
    " ",
    "-1",
    "0",
    "1e400",
    "9223372036854775808",
    "1.5Gi",
    "100m",
    "-1m",
    "0.0000000001",
    "Always",
    "Exists",
    "NoExecute",
    "TCP",
    "v1",
    "Pod",
    "a/b",
    "/",
    "..",
    "a\u{0}b",
    "\u{202e}",
    "é",
    "kubernetes.io/config.hash",
    "spec.nodeName",
    "metadata.annotations['a']",
    "$patch",
    "replace",
    "delete",
    "name",
];

/// Change one node of the first JSON document in the input (found at one of
/// its `{` or `[`): a number or string for an odd one, a node deleted, copied
/// or nested, a value of another type. False if no JSON document was found.
fn mutate_json(rng: &mut TestRng, input: &mut Vec<u8>) -> bool {
    let starts: Vec<usize> = input
        .iter()
        .enumerate()
        .filter(|(i, b)| matches!(b, b'{' | b'[') && (*i == 0 || input[i - 1] == b'\n'))
        .map(|(i, _)| i)
        .collect();
    if starts.is_empty() {
        return false;
    }
    let start = starts[rng.below(starts.len())];
    let mut stream =
        serde_json::Deserializer::from_slice(&input[start..]).into_iter::<serde_json::Value>();
    let Some(Ok(mut doc)) = stream.next() else {
        return false;
    };
    let end = start + stream.byte_offset();
    // Pick a node by a random walk from the root.
    let mut path = Vec::new();
    let mut at = &doc;
    loop {
        let children = match at {
            serde_json::Value::Object(m) => m.len(),
            serde_json::Value::Array(a) => a.len(),
            _ => 0,
        };
        if children == 0 || rng.chance(4) {
            break;
        }
        let i = rng.below(children);
        path.push(i);
        at = match at {
            serde_json::Value::Object(m) => m.values().nth(i).unwrap_or(at),
            serde_json::Value::Array(a) => &a[i],
            _ => at,
        };
    }
    let node = node_at(&mut doc, &path);
    let odd = || serde_json::Value::String(String::new());
    match rng.below(8) {
        0 => {
            *node = json!(ODD_STRINGS[rng.below(ODD_STRINGS.len())]);
        }
        1 => {
            let n = HUGE_NUMBERS[rng.below(HUGE_NUMBERS.len())];
            *node = serde_json::from_str(n).unwrap_or_else(|_| json!(n));
        }
        2 => {
            let values = json!([
                null,
                true,
                -1,
                0,
                65536,
                2147483648i64,
                i64::MIN,
                u64::MAX,
                1.5,
                {},
                []
            ]);
            *node = values[rng.below(11)].clone();
        }
        3 => match node {
            serde_json::Value::Object(m) if !m.is_empty() => {
                let k = m
                    .keys()
                    .nth(rng.below(m.len()))
                    .cloned()
                    .unwrap_or_default();
                m.remove(&k);
            }
            serde_json::Value::Array(a) if !a.is_empty() => {
                a.remove(rng.below(a.len()));
            }
            _ => *node = odd(),
        },
        4 => match node {
            serde_json::Value::Array(a) if !a.is_empty() => {
                let copy = a[rng.below(a.len())].clone();
                let most = if rng.chance(8) { 500 } else { 3 };
                let times = 1 + rng.below(most);
                a.extend(std::iter::repeat_n(copy, times));
            }
            serde_json::Value::Object(m) => {
                let key = ODD_STRINGS[rng.below(ODD_STRINGS.len())].to_string();
                m.insert(key, json!("x"));
            }
            _ => *node = json!([node.clone(), node.clone()]),
        },
        5 => *node = json!([node.clone()]),
        6 => *node = json!({ "a": node.clone() }),
        _ => {
            if let serde_json::Value::String(s) = node {
                let n = if rng.chance(4) {
                    70_000
                } else {
                    1 + rng.below(300)
                };
                *s = s.repeat(n.min(70_000 / s.len().max(1)).max(1));
            } else {
                *node = json!("x".repeat(1 + rng.below(300)));
            }
        }
    }
    let Ok(text) = serde_json::to_vec(&doc) else {
        return false;
    };
    input.splice(start..end, text);
    true
}

/// The node at `path` (child indices from the root), as far as it leads.
fn node_at<'v>(v: &'v mut serde_json::Value, path: &[usize]) -> &'v mut serde_json::Value {
    let Some((&i, rest)) = path.split_first() else {
        return v;
    };
    let has_child = match &*v {
        serde_json::Value::Object(m) => i < m.len(),
        serde_json::Value::Array(a) => i < a.len(),
        _ => false,
    };
    if !has_child {
        return v;
    }
    match v {
        serde_json::Value::Object(m) => match m.values_mut().nth(i) {
            Some(child) => node_at(child, rest),
            None => unreachable!("checked above"),
        },
        serde_json::Value::Array(a) => node_at(&mut a[i], rest),
        _ => unreachable!("checked above"),
    }
}
