//! cargo-fuzz target: `berth_fuzz::spdy` under libFuzzer (see ../Cargo.toml).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| berth_fuzz::spdy(data));
