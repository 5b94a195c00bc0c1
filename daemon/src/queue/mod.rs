//! The durable sled outbox (being written).
