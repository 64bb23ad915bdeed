//! A logical key's entries by the hash of their variant (host, query, keyed headers): the
//! one variant most keys have is held inline in the key's map slot; a table is made only
//! for a second.
//!
//! A `HashMap` per key would cost a table of four buckets (about 120 bytes) and 64 bytes of
//! slot for the one variant of a typical URL.

use std::collections::HashMap;

use crate::store::Variants;

/// The variants of one logical key (see the module docs).
#[derive(Default)]
pub(super) enum VariantMap {
    #[default]
    Empty,
    One(u64, Variants),
    // Boxed on purpose: a table inline (64 bytes with its keyed hasher) would double the
    // slot of every key, most of which never have a second variant.
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<u64, Variants, ahash::RandomState>>),
}

impl VariantMap {
    /// The entries stored for `variant`.
    pub(super) fn get(&self, variant: &u64) -> Option<&Variants> {
        match self {
            VariantMap::Empty => None,
            VariantMap::One(held, variants) => (held == variant).then_some(variants),
            VariantMap::Many(map) => map.get(variant),
        }
    }

    /// Store `variants` for `variant`, replacing what was there.
    pub(super) fn insert(&mut self, variant: u64, variants: Variants) {
        match self {
            VariantMap::Empty => *self = VariantMap::One(variant, variants),
            VariantMap::One(held, old) if *held == variant => *old = variants,
            VariantMap::One(..) => {
                let VariantMap::One(held, old) = std::mem::take(self) else {
                    unreachable!("matched above")
                };
                let mut map = HashMap::with_capacity_and_hasher(2, Default::default());
                map.insert(held, old);
                map.insert(variant, variants);
                *self = VariantMap::Many(Box::new(map));
            }
            VariantMap::Many(map) => {
                map.insert(variant, variants);
            }
        }
    }

    /// Remove what is stored for `variant`.
    pub(super) fn remove(&mut self, variant: &u64) {
        match self {
            VariantMap::One(held, _) if held == variant => *self = VariantMap::Empty,
            VariantMap::Many(map) => {
                map.remove(variant);
                if map.is_empty() {
                    *self = VariantMap::Empty;
                }
            }
            _ => {}
        }
    }

    /// Whether nothing is stored.
    pub(super) fn is_empty(&self) -> bool {
        matches!(self, VariantMap::Empty)
    }

    /// Keep what `keep` says to keep (it may change what it keeps).
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&u64, &mut Variants) -> bool) {
        match self {
            VariantMap::Empty => {}
            VariantMap::One(held, variants) => {
                if !keep(held, variants) {
                    *self = VariantMap::Empty;
                }
            }
            VariantMap::Many(map) => {
                map.retain(|variant, variants| keep(variant, variants));
                if map.is_empty() {
                    *self = VariantMap::Empty;
                }
            }
        }
    }

    /// Every variant's entries.
    pub(super) fn values(&self) -> impl Iterator<Item = &Variants> {
        let (one, many) = match self {
            VariantMap::Empty => (None, None),
            VariantMap::One(_, variants) => (Some(variants), None),
            VariantMap::Many(map) => (None, Some(map.values())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// Every variant and its entries, to change them.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (&u64, &mut Variants)> {
        let (one, many) = match self {
            VariantMap::Empty => (None, None),
            VariantMap::One(held, variants) => (Some((&*held, variants)), None),
            VariantMap::Many(map) => (None, Some(map.iter_mut())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn variants(n: usize) -> Variants {
        let entries: Vec<Arc<crate::entry::Entry>> = (0..n)
            .map(|_| {
                Arc::new(crate::entry::Entry::new(
                    http::StatusCode::OK,
                    http::HeaderMap::new(),
                    bytes::Bytes::new(),
                    std::time::Duration::from_secs(1),
                ))
            })
            .collect();
        entries.into()
    }

    #[test]
    fn one_variant_inline_then_a_table_then_empty_again() {
        let mut map = VariantMap::default();
        assert!(map.is_empty() && map.get(&1).is_none());
        map.insert(1, variants(1));
        assert!(matches!(map, VariantMap::One(1, _)));
        map.insert(1, variants(2));
        assert_eq!(map.get(&1).map(|v| v.len()), Some(2));
        map.insert(2, variants(3));
        assert!(matches!(map, VariantMap::Many(_)));
        assert_eq!(map.get(&1).map(|v| v.len()), Some(2));
        assert_eq!(map.get(&2).map(|v| v.len()), Some(3));
        assert_eq!(map.values().map(|v| v.len()).sum::<usize>(), 5);
        for (variant, entries) in map.iter_mut() {
            if *variant == 2 {
                *entries = variants(1);
            }
        }
        assert_eq!(map.get(&2).map(|v| v.len()), Some(1));
        map.retain(|variant, _| *variant == 2);
        assert!(map.get(&1).is_none());
        map.remove(&2);
        assert!(map.is_empty());
        map.insert(3, variants(1));
        map.retain(|_, _| false);
        assert!(map.is_empty());
        map.insert(4, variants(1));
        map.remove(&5);
        assert_eq!(map.values().count(), 1);
        map.remove(&4);
        assert!(map.is_empty());
    }

    #[test]
    fn a_key_slot_holds_its_one_variant_in_32_bytes() {
        assert!(std::mem::size_of::<VariantMap>() <= 32);
    }
}
