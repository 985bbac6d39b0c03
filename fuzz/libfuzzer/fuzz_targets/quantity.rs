//! cargo-fuzz target: `berth_fuzz::quantity` under libFuzzer (see ../Cargo.toml).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| berth_fuzz::quantity(data));
