//! Every seed (`fuzz/corpus/<target>/`) and every input a fuzzer once broke a
//! target with (`fuzz/regressions/<target>/`) runs through its target: one
//! test per target, naming the file that fails. A crash found by `berth-fuzz`
//! (or cargo-fuzz) becomes a regression test by copying its artifact into
//! `fuzz/regressions/<target>/` once the code is fixed.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Far above what any seed takes (milliseconds), far below a hang; generous
/// because tests run unoptimised and side by side.
const SLOW: Duration = Duration::from_secs(10);

fn files(target: &str) -> Vec<PathBuf> {
    berth_fuzz::input_files(Path::new(env!("CARGO_MANIFEST_DIR")), target)
}

fn replay(target: &str) {
    let t = berth_fuzz::find(target).expect("a target of that name");
    let files = files(target);
    assert!(
        !files.is_empty(),
        "fuzz/corpus/{target}/ has no seeds; the fuzzer and these tests need some"
    );
    let mut failures = Vec::new();
    for file in &files {
        let input = fs::read(file).expect("a readable corpus file");
        let started = Instant::now();
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| (t.run)(&input)));
        let took = started.elapsed();
        if outcome.is_err() {
            failures.push(format!("{}: panicked (message above)", file.display()));
        } else if took > SLOW {
            failures.push(format!("{}: took {took:?}", file.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} inputs of target {target} fail:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn manifest() {
    replay("manifest");
}

#[test]
fn quantity() {
    replay("quantity");
}

#[test]
fn request() {
    replay("request");
}

#[test]
fn patch() {
    replay("patch");
}

#[test]
fn spdy() {
    replay("spdy");
}

#[test]
fn every_target_has_a_test() {
    let names: Vec<&str> = berth_fuzz::TARGETS.iter().map(|t| t.name).collect();
    assert_eq!(names, ["manifest", "quantity", "request", "patch", "spdy"]);
}
