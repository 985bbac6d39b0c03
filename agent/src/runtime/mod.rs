//! Runtime manager.
