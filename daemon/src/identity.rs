//! Device identity (being written).
