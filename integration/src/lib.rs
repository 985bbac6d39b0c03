//! Test harness: a private containerd per test and the berth-agent binary.
