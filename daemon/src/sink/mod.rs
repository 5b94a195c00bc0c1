//! Delivery to Convex or a local file (being written).
