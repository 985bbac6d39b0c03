//! cargo-fuzz target: `berth_fuzz::patch` under libFuzzer (see ../Cargo.toml).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| berth_fuzz::patch(data));
