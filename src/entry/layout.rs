//! Header layouts shared between entries: the names an entry stored, and the map every full
//! answer from it starts as.
//!
//! Responses of one route send the same header names (a page: `Content-Type`,
//! `Cache-Control`, `ETag`…) and differ in some values. An entry keeps only its values
//! (40 bytes each); the names and the answer's map with a slot per value (104 bytes a
//! header in a `HeaderMap`, with its index) are one [`Layout`], shared by every entry with
//! the same names through a process-wide table. A hit clones the layout's map and writes
//! the entry's values into its slots in order (see `stored_headers.rs`): no name is hashed,
//! nothing grows.
//!
//! The table holds a layout while an entry uses it (an entry's `Arc`, the table's `Weak`:
//! the last entry to go takes it out). Shared layouts are charged to no entry's weight, so
//! the table is kept within [`SHARED_BYTES_MAX`] bytes: past that, a new layout is an
//! entry's own, not shared, and charged to it in full. An origin that sends a different
//! set of header names on every answer therefore costs what it did when every entry had a
//! map of its own, never more.
//!
//! ```
//! use bytes::Bytes;
//! use http::header::{CONTENT_TYPE, ETAG};
//! use http::{HeaderMap, HeaderValue, StatusCode};
//! use std::time::Duration;
//! use tower_response_cache::Entry;
//!
//! let page = |etag: &'static str| {
//!     let mut headers = HeaderMap::new();
//!     headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
//!     headers.insert(ETAG, HeaderValue::from_static(etag));
//!     Entry::new(StatusCode::OK, headers, Bytes::from_static(b"<p>hi</p>"), Duration::from_secs(60))
//! };
//! let (a, b) = (page("\"a\""), page("\"b\""));
//! // Two entries with one layout: each is charged its values, not a map.
//! assert_eq!(a.weight(), b.weight());
//! assert_eq!(a.headers().get(&ETAG).unwrap(), "\"a\"");
//! assert_eq!(b.headers().get(&ETAG).unwrap(), "\"b\"");
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Weak};

use dashmap::mapref::entry::Entry as Slot;
use dashmap::DashMap;
use http::header::AGE;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::{ALLOCATION_BYTES, BUCKET_BYTES, INDEX_BYTES};
use crate::headers::{CACHE_STATUS, HIT, X_CACHE};

/// Bytes the shared layouts may hold, process-wide (a thousand or so of a page's size).
pub(crate) const SHARED_BYTES_MAX: usize = 1 << 20;

/// The process's shared layouts.
static SHARED: LazyLock<Table> = LazyLock::new(|| Table::new(SHARED_BYTES_MAX));

/// Shared layouts by their names, within a byte budget.
pub(crate) struct Table {
    layouts: DashMap<Box<[HeaderName]>, Weak<Layout>, ahash::RandomState>,
    /// Bytes of the shared layouts alive.
    bytes: AtomicUsize,
    max_bytes: usize,
}

/// The names of an entry's stored headers and the map its answers start as.
pub(crate) struct Layout {
    /// One name per stored value, in the order a `HeaderMap` visits them (a name's values
    /// together); never `Age`, `Cache-Status` or `X-Cache`.
    names: Box<[HeaderName]>,
    /// `Age` and `Cache-Status` (empty), an empty slot per stored value, in `names`'
    /// order, and `X-Cache: HIT`: what a hit clones and fills.
    template: HeaderMap,
    /// Heap bytes this layout holds.
    bytes: usize,
    /// The table sharing it (then no entry is charged for it); `None` for an entry's own.
    table: Option<&'static Table>,
}

impl Table {
    fn new(max_bytes: usize) -> Table {
        Table {
            layouts: DashMap::with_hasher(ahash::RandomState::new()),
            bytes: AtomicUsize::new(0),
            max_bytes,
        }
    }

    /// The layout for `names`: the shared one when there is one, else a new one, shared
    /// when the table has room.
    fn layout(&'static self, names: Vec<HeaderName>) -> Arc<Layout> {
        if let Some(layout) = self.layouts.get(names.as_slice()).and_then(|l| l.upgrade()) {
            return layout;
        }
        let names = names.into_boxed_slice();
        let bytes = Layout::bytes_for(&names);
        if self.bytes.load(Ordering::Relaxed) + bytes > self.max_bytes {
            return Arc::new(Layout::build(names, bytes, None));
        }
        // No `Arc<Layout>` is dropped while the table's shard is held: a layout's drop
        // takes the same shard.
        match self.layouts.entry(names.clone()) {
            Slot::Occupied(mut slot) => match slot.get().upgrade() {
                Some(layout) => layout,
                None => {
                    let layout = Arc::new(Layout::build(names, bytes, Some(self)));
                    slot.insert(Arc::downgrade(&layout));
                    layout
                }
            },
            Slot::Vacant(slot) => {
                let layout = Arc::new(Layout::build(names, bytes, Some(self)));
                slot.insert(Arc::downgrade(&layout));
                layout
            }
        }
    }

    /// Whether a layout of `names` is shared now.
    #[cfg(test)]
    fn holds(&self, names: &[HeaderName]) -> bool {
        self.layouts
            .get(names)
            .is_some_and(|l| l.strong_count() > 0)
    }
}

impl Layout {
    /// The layout for `names` (in a `HeaderMap`'s visiting order): the process's shared
    /// one when there is one (see the module docs).
    pub(crate) fn of(names: Vec<HeaderName>) -> Arc<Layout> {
        SHARED.layout(names)
    }

    fn build(names: Box<[HeaderName]>, bytes: usize, table: Option<&'static Table>) -> Layout {
        let empty = HeaderValue::from_static("");
        let mut map = HeaderMap::with_capacity(names.len() + 3);
        map.insert(AGE, empty.clone());
        map.insert(CACHE_STATUS, empty.clone());
        for name in names.iter() {
            map.append(name.clone(), empty.clone());
        }
        map.insert(X_CACHE, HIT);
        if let Some(table) = table {
            table.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        Layout {
            names,
            // A copy holds exactly its headers (the map built keeps a quarter more room);
            // a hit's clone of it is exact as well and never grows.
            template: map.clone(),
            bytes,
            table,
        }
    }

    /// Heap bytes of a layout of `names`: the names, the map (index, a bucket per header,
    /// the names' bytes), the layout itself behind its `Arc`.
    fn bytes_for(names: &[HeaderName]) -> usize {
        let headers = names.len() + 3;
        let index = (headers + headers / 3).next_power_of_two() * INDEX_BYTES;
        let text: usize = names.iter().map(|n| n.as_str().len()).sum();
        3 * ALLOCATION_BYTES
            + std::mem::size_of::<Layout>()
            + 16
            + std::mem::size_of_val(names)
            + index
            + headers * BUCKET_BYTES
            + text
            + "age cache-status x-cache HIT".len()
    }

    /// The stored headers' names, one per value.
    pub(crate) fn names(&self) -> &[HeaderName] {
        &self.names
    }

    /// The map every full answer starts as (see the field).
    #[inline]
    pub(crate) fn template(&self) -> &HeaderMap {
        &self.template
    }

    /// What an entry with this layout is charged for it: nothing when it is shared.
    pub(crate) fn charge(&self) -> usize {
        match self.table {
            Some(_) => 0,
            None => self.bytes,
        }
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        if let Some(table) = self.table {
            let this: *const Layout = self;
            // Another layout of the same names may have replaced this one in the table.
            table
                .layouts
                .remove_if(&self.names, |_, held| std::ptr::eq(held.as_ptr(), this));
            table.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&'static str]) -> Vec<HeaderName> {
        list.iter().map(|n| HeaderName::from_static(n)).collect()
    }

    #[test]
    fn one_layout_per_names_while_an_entry_holds_it() {
        let table: &'static Table = Box::leak(Box::new(Table::new(1 << 20)));
        let page = names(&["content-type", "etag"]);
        let a = table.layout(page.clone());
        let b = table.layout(page.clone());
        assert!(Arc::ptr_eq(&a, &b), "one layout for the same names");
        assert_eq!(a.charge(), 0, "a shared layout is charged to no entry");
        let other = table.layout(names(&["content-type", "x-other"]));
        assert!(!Arc::ptr_eq(&a, &other));
        let held = table.bytes.load(Ordering::Relaxed);
        assert_eq!(held, a.bytes + other.bytes);
        // The last entry to go takes its layout out of the table, and its bytes.
        drop((a, b));
        assert!(!table.holds(&page));
        assert_eq!(table.bytes.load(Ordering::Relaxed), other.bytes);
        let again = table.layout(page.clone());
        assert!(table.holds(&page));
        assert_eq!(again.template().len(), 5);
    }

    #[test]
    fn past_its_budget_a_layout_is_an_entrys_own_and_charged_to_it() {
        let one = Layout::bytes_for(&names(&["content-type"]));
        let table: &'static Table = Box::leak(Box::new(Table::new(one + one / 2)));
        let first = table.layout(names(&["content-type"]));
        assert_eq!(first.charge(), 0);
        let second = table.layout(names(&["x-a"]));
        assert_eq!(second.charge(), second.bytes, "over the budget: its own");
        assert!(!table.holds(&names(&["x-a"])));
        let again = table.layout(names(&["x-a"]));
        assert!(
            !Arc::ptr_eq(&second, &again),
            "an own layout is not found again"
        );
        drop(first);
        assert_eq!(table.bytes.load(Ordering::Relaxed), 0);
        // Room again: the next new one is shared.
        assert_eq!(table.layout(names(&["x-b"])).charge(), 0);
    }
}
