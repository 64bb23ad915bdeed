//! Where a [`RedisStore`](super::RedisStore) keeps things: the key names, for one Redis and
//! for a Redis Cluster.
//!
//! On one Redis, for namespace `ns` and logical key `L`:
//!
//! - `ns:k:L`: a hash; field = the variant, value = the encoded entries of that variant
//!   (after a header: the generation they were fetched under and a soft-invalidation mark);
//! - `ns:m:tag:T`: a set of the entry keys carrying tag `T`;
//! - `tower-response-cache:gen`: the invalidation counter a write is checked against.
//!
//! A Redis Cluster refuses a script whose keys live in different hash slots, and the write
//! script touches the entry, the counter and the tag sets together. So in a cluster every
//! logical key falls in one of 16 buckets (a hash of the key), and every key name
//! starts with the bucket's hash tag, `{trc-07}`: the entry, the bucket's own counter and
//! the bucket's tag sets share a slot, while the buckets spread over the primaries.
//!
//! - `{trc-07}ns:k:L`, `{trc-07}ns:m:tag:T`, `{trc-07}tower-response-cache:gen`;
//! - `tower-response-cache:gen` (no tag): the cluster-wide counter each invalidation draws
//!   its new generation from before it raises the buckets it touches.
//!
//! ```
//! # // The module is private; the doctest shows the names through the public pattern API.
//! use tower_response_cache::Pattern;
//! // A glob over a cluster is scanned on every primary as `{trc-??}ns:k:<glob>`.
//! assert!(Pattern::new("{trc-??}portal:k:/api/*").matches_str("{trc-0a}portal:k:/api/x"));
//! ```

use crate::pattern::escape;

/// How many buckets a cluster's keys are spread over (16 hash tags: a few per primary in a
/// three-primary cluster, and few enough that an invalidation touches them all cheaply).
pub(crate) const BUCKETS: u64 = 16;

/// The counter of a single Redis, and the cluster-wide counter of a cluster.
pub(crate) const CENTRAL_GENERATION: &str = "tower-response-cache:gen";

/// One Redis, or a cluster with bucketed hash tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// One Redis server (or a primary with replicas behind one address).
    Single,
    /// A Redis Cluster.
    Cluster,
}

impl Layout {
    /// The bucket a logical key falls in.
    pub(crate) fn bucket(logical: &str) -> u64 {
        xxhash_rust::xxh3::xxh3_64(logical.as_bytes()) % BUCKETS
    }

    fn hash_tag(bucket: u64) -> String {
        format!("{{trc-{bucket:02x}}}")
    }

    fn prefix(self, logical: &str) -> String {
        match self {
            Layout::Single => String::new(),
            Layout::Cluster => Self::hash_tag(Self::bucket(logical)),
        }
    }

    /// The hash holding the variants of `logical`. Built by hand, not with `format!`: it
    /// is on every Redis hit.
    pub(crate) fn entry_key(self, namespace: &str, logical: &str) -> String {
        let mut key = String::with_capacity(8 + namespace.len() + 3 + logical.len());
        if self == Layout::Cluster {
            key.push_str(&Self::hash_tag(Self::bucket(logical)));
        }
        key.push_str(namespace);
        key.push_str(":k:");
        key.push_str(logical);
        key
    }

    /// The set listing the entry keys with tag `tag`, for an entry stored under `logical`.
    pub(crate) fn tag_key(self, namespace: &str, logical: &str, tag: &str) -> String {
        format!("{}{namespace}:m:tag:{tag}", self.prefix(logical))
    }

    /// Every set that may list entry keys with tag `tag` (one per bucket in a cluster).
    pub(crate) fn tag_keys(self, namespace: &str, tag: &str) -> Vec<String> {
        match self {
            Layout::Single => vec![format!("{namespace}:m:tag:{tag}")],
            Layout::Cluster => (0..BUCKETS)
                .map(|b| format!("{}{namespace}:m:tag:{tag}", Self::hash_tag(b)))
                .collect(),
        }
    }

    /// The counter a write of `logical` is checked against.
    pub(crate) fn generation_key(self, logical: &str) -> String {
        format!("{}{CENTRAL_GENERATION}", self.prefix(logical))
    }

    /// Every bucket's counter (none on a single Redis: there the central one is the only).
    pub(crate) fn bucket_generation_keys(self) -> Vec<String> {
        match self {
            Layout::Single => Vec::new(),
            Layout::Cluster => (0..BUCKETS)
                .map(|b| format!("{}{CENTRAL_GENERATION}", Self::hash_tag(b)))
                .collect(),
        }
    }

    /// The `SCAN MATCH` pattern for entry keys whose logical key matches `glob` (a pattern
    /// already in Redis glob syntax).
    pub(crate) fn entry_scan(self, namespace: &str, glob: &str) -> String {
        format!("{}{}:k:{glob}", self.scan_prefix(), escape(namespace))
    }

    /// The `SCAN MATCH` pattern for every tag set of `namespace`.
    pub(crate) fn tag_scan(self, namespace: &str) -> String {
        format!("{}{}:m:tag:*", self.scan_prefix(), escape(namespace))
    }

    fn scan_prefix(self) -> &'static str {
        match self {
            Layout::Single => "",
            // Two hex digits; `{` and `}` are not glob metacharacters.
            Layout::Cluster => "{trc-??}",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::Pattern;

    #[test]
    fn single_redis_names_are_unchanged() {
        let l = Layout::Single;
        assert_eq!(l.entry_key("ns", "/a"), "ns:k:/a");
        assert_eq!(l.tag_key("ns", "/a", "t"), "ns:m:tag:t");
        assert_eq!(l.generation_key("/a"), CENTRAL_GENERATION);
        assert_eq!(l.entry_scan("n*s", "/a*"), "n\\*s:k:/a*");
    }

    #[test]
    fn cluster_keys_of_one_entry_share_a_hash_tag() {
        let l = Layout::Cluster;
        for logical in ["/a", "/api/dashboard/ABC", "dashboard:{x}", ""] {
            let entry = l.entry_key("ns", logical);
            let tag = &entry[..8];
            assert!(tag.starts_with("{trc-") && tag.ends_with('}'), "{entry}");
            assert!(l.tag_key("ns", logical, "t").starts_with(tag));
            assert!(l.generation_key(logical).starts_with(tag));
            assert!(l
                .tag_keys("ns", "t")
                .contains(&l.tag_key("ns", logical, "t")));
            assert!(l
                .bucket_generation_keys()
                .contains(&l.generation_key(logical)));
            // The scan pattern of a glob finds it.
            assert!(Pattern::new(&l.entry_scan("ns", "*")).matches_str(&entry));
            assert!(Pattern::new(&l.tag_scan("ns")).matches_str(&l.tag_key("ns", logical, "t")));
        }
    }

    #[test]
    fn keys_spread_over_every_bucket() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            seen.insert(Layout::bucket(&format!("/api/dashboard/{i}")));
        }
        assert_eq!(seen.len() as u64, BUCKETS);
    }
}
