//! The service loops (being written).
