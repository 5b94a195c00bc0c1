//! [`Lane`]: one sink's view of the outbox. Each lane has its own FIFO, acknowledges on its own,
//! and has its own dead letters and counters; a record's bytes are stored once and leave the
//! outbox when no lane holds it any more (see "Lanes" in the module doc of [`crate::queue`]).

/// A sink's lane in the outbox. The names are stored in keys (`<name> 0x00 …`) and never
/// change; a new sink adds a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    /// The local SQLite store (`<data_dir>/sessions.db`); always configured.
    Store,
    /// The Convex deployment (`[convex] url`).
    Convex,
    /// The deprecated NDJSON file (`[local] path`, kept while that key is set).
    Ndjson,
}

impl Lane {
    /// Every lane, in the order `status` shows them.
    pub const ALL: [Lane; 3] = [Lane::Store, Lane::Convex, Lane::Ndjson];

    /// The stored name: `store`, `convex`, `ndjson`.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Store => "store",
            Lane::Convex => "convex",
            Lane::Ndjson => "ndjson",
        }
    }

    /// The lane of a stored name.
    pub fn from_name(name: &str) -> Option<Lane> {
        Lane::ALL.into_iter().find(|l| l.as_str() == name)
    }

    /// Index into per-lane arrays.
    pub(crate) fn index(self) -> usize {
        match self {
            Lane::Store => 0,
            Lane::Convex => 1,
            Lane::Ndjson => 2,
        }
    }
}

impl std::fmt::Display for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_no_name_prefixes_another() {
        for l in Lane::ALL {
            assert_eq!(Lane::from_name(l.as_str()), Some(l));
            assert_eq!(Lane::ALL[l.index()], l);
            assert!(!l.as_str().contains('\0'));
        }
        assert_eq!(Lane::from_name("sink"), None);
    }
}
