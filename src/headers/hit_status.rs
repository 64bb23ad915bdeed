//! The `Cache-Status` values of fresh hits, written once per TTL and shared.
//!
//! Every hit names the seconds its entry has left, and hits in a row mostly name the same
//! number. A value for a TTL of up to an hour is written once per process and kept in a
//! static table: a clone of a static `HeaderValue` is a copy of two words, with no
//! reference count for concurrent hits to contend on. Each kind of hit has a table of
//! 3 601 slots (about 170 KiB, untouched until used) and keeps at most one short string per
//! TTL it served (a few hundred KiB at worst); a longer TTL's value is written anew.

use std::sync::OnceLock;

use http::HeaderValue;

/// TTLs (in seconds) up to this one are shared from the table.
const TABLE_TTLS: usize = 3600;

/// One table of values for one kind of hit.
pub(crate) struct HitStatuses {
    table: [OnceLock<HeaderValue>; TABLE_TTLS + 1],
    /// `Cache-Status` of a hit with `ttl` seconds left.
    write: fn(u64) -> String,
}

impl HitStatuses {
    pub(crate) const fn new(write: fn(u64) -> String) -> Self {
        HitStatuses {
            table: [const { OnceLock::new() }; TABLE_TTLS + 1],
            write,
        }
    }

    /// The value for a hit with `ttl_secs` left.
    pub(crate) fn get(&self, ttl_secs: u64) -> HeaderValue {
        match usize::try_from(ttl_secs)
            .ok()
            .and_then(|i| self.table.get(i))
        {
            Some(slot) => slot
                .get_or_init(|| {
                    // Written once per slot and kept for the life of the process (bounded).
                    let text: &'static str = Box::leak((self.write)(ttl_secs).into_boxed_str());
                    HeaderValue::from_static(text)
                })
                .clone(),
            None => HeaderValue::try_from((self.write)(ttl_secs)).expect("ASCII header value"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static STATUSES: HitStatuses = HitStatuses::new(|ttl| format!("test; hit; ttl={ttl}"));

    #[test]
    fn a_value_names_its_ttl_within_the_table_and_beyond_it() {
        for ttl in [0, 1, 59, 3600, 3601, 86_400, u64::MAX] {
            let expected = format!("test; hit; ttl={ttl}");
            assert_eq!(STATUSES.get(ttl), expected.as_str());
            // Again: from the table, or written anew.
            assert_eq!(STATUSES.get(ttl), expected.as_str());
        }
        assert_eq!(STATUSES.get(86_400), "test; hit; ttl=86400");
        assert_eq!(STATUSES.get(86_401), "test; hit; ttl=86401");
    }

    #[test]
    fn threads_share_one_value_per_ttl() {
        let here = STATUSES.get(42);
        let there = std::thread::spawn(|| STATUSES.get(42)).join().unwrap();
        // The same static bytes: written once.
        assert_eq!(here.as_bytes().as_ptr(), there.as_bytes().as_ptr());
    }
}
