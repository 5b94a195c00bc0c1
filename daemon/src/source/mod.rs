//! The OpenCode source (being written).
