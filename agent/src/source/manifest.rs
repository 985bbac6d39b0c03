//! One manifest file → one static pod (skeleton; filled in by the source work).
