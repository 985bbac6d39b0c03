//! kubelet-style plugins behind traits.
