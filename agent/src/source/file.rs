//! The manifest directory source (skeleton; filled in by the source work).
