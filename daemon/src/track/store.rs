//! The tracker's window on its persisted state: [`StateStore`], read access to the outbox's
//! `state` tree (its keys are in [`super::state`]).
//!
//! The tracker keeps in memory only the sessions it is working on (see [`super::Tracker`]);
//! every other session's state stays in the store and is read when the session changes, when a
//! listing compares the source's sessions with the stored ones, or when it is gone. The writes
//! go the other way, through the pass's commit ([`super::Tracker::take_writes`]), so the store
//! only ever answers what was committed.
//!
//! The daemon's store is the outbox ([`crate::queue::Outbox`], implemented in
//! [`crate::daemon::pass`]); tests and the replay use a `BTreeMap`.

use std::collections::BTreeMap;
use std::ops::Bound;

/// A storage error reading the state (fatal for the pass: the outbox's are sticky).
#[derive(Debug, thiserror::Error)]
#[error("reading the tracker's state: {0}")]
pub struct StoreError(pub String);

/// `(key, value)` of the `state` tree.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Read access to committed state entries, ordered by key bytes.
pub trait StateStore {
    /// The value at `key`.
    ///
    /// # Errors
    /// [`StoreError`].
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` entries whose key starts with `prefix` and sorts after `after` (from the
    /// first with `None`; `after` includes the prefix), in key order.
    ///
    /// # Errors
    /// [`StoreError`].
    fn after(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;
}

impl StateStore for BTreeMap<Vec<u8>, Vec<u8>> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(BTreeMap::get(self, key).cloned())
    }

    fn after(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let start = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        Ok(self
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_pages_one_prefix_in_key_order() {
        let mut m = BTreeMap::new();
        for k in [
            "a/1",
            "session/a",
            "session/b",
            "session/c",
            "sessionz",
            "t/1",
        ] {
            m.insert(k.as_bytes().to_vec(), vec![]);
        }
        let keys = |v: Vec<Entry>| {
            v.into_iter()
                .map(|(k, _)| String::from_utf8(k).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(m.after(b"session/", None, 2).unwrap()),
            ["session/a", "session/b"]
        );
        assert_eq!(
            keys(m.after(b"session/", Some(b"session/b"), 10).unwrap()),
            ["session/c"]
        );
        assert!(m
            .after(b"session/", Some(b"session/c"), 10)
            .unwrap()
            .is_empty());
        assert!(m.after(b"none/", None, 10).unwrap().is_empty());
    }
}
