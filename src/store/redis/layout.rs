//! Where a [`RedisStore`](super::RedisStore) keeps things: the key names, for one Redis and
//! for a Redis Cluster.
//!
//! On one Redis, for namespace `ns` and logical key `L`:
//!
//! - `ns:k:L`: a hash; per variant `F` of the key (16 hex digits), the field `F` holds the
//!   variant's index and each `Vary` variant a field `F:S` with its encoded entry (after a
//!   header: the generation it was fetched under and a soft-invalidation mark); see
//!   `variants.rs`;
//! - `ns:x:L`: a sorted set beside it, field -> the unix ms the field dies at; every write
//!   prunes a few dead fields of the hash it writes, so a path with a stream of distinct
//!   queries keeps about as many fields as are alive (not every variant ever written);
//! - `ns:m:tag:T`: a set of the entry keys carrying tag `T`;
//! - `tower-response-cache:gen`: the counter every invalidation draws its generation from;
//! - `tower-response-cache:gen:wide`: raised by globs, tags and `invalidate_all`;
//! - `tower-response-cache:gen:k:XYZ`: one of 1024 bucket counters (a hash of the namespace
//!   and the logical key keyed with the bucket secret, see `secret.rs`), raised by an exact
//!   invalidation of a key in that bucket; `tower-response-cache:gen:b:XYZ` (an unkeyed
//!   hash) until a secret exists;
//! - `tower-response-cache:secret`: the bucket secret, created by the first exact
//!   invalidation that finds none;
//! - `tower-response-cache:epoch`: a random number naming this data set; a Redis that
//!   restarted empty gets a new one, and a write carrying another refuses itself.
//!
//! A write is refused when the wide counter or its bucket's counter is above the
//! generation its request saw (or the epoch differs): an exact invalidation refuses fills of
//! its own bucket only, a glob, tag or `invalidate_all` every fill in flight.
//!
//! The namespace is written with `%` and `:` escaped (`%25`, `%3A`), so the first `:` after
//! it always ends it: namespace `a:k:b` with key `c` and namespace `a` with key `b:k:c` are
//! different keys, and a scan of namespace `a` never reaches namespace `a:k:b`.
//!
//! A Redis Cluster refuses a script whose keys live in different hash slots, and the write
//! script touches the entry, the counter and the tag sets together. So in a cluster every
//! logical key falls in one of 16 buckets (a hash of the key), and every key name
//! starts with the bucket's hash tag, `{trc-07}`: the entry, the bucket's own counter and
//! the bucket's tag sets share a slot, while the buckets spread over the primaries.
//!
//! - `{trc-07}ns:k:L`, `{trc-07}ns:x:L`, `{trc-07}ns:m:tag:T`,
//!   `{trc-07}tower-response-cache:gen` (the bucket's wide counter: globs, tags and
//!   `invalidate_all` raise it), `{trc-07}tower-response-cache:gen:k:XYZ` (one of 1024 per
//!   bucket, chosen with the bucket's secret `{trc-07}tower-response-cache:secret`: an exact
//!   invalidation raises only its key's, so it refuses 1/16 384 of fills);
//! - `tower-response-cache:gen` (no tag): the cluster-wide counter each invalidation draws
//!   its new generation from before it raises the buckets it touches.
//!
//! The processes sharing a Redis meet on pub/sub channels and one key (names by
//! [`Layout::channel`] and the functions beside it): the invalidation channel every store
//! subscribes to, one channel per process (its near-cache heartbeats come back on it, and
//! other processes' acknowledgements of its invalidations arrive on it), and the sorted set
//! of advertised near-cache leases. On one Redis they are plain pub/sub
//! (`tower-response-cache:invalidations`, `tower-response-cache:p:<process>`,
//! `tower-response-cache:near:leases`). On a cluster they all carry the hash tag
//! `{tower-response-cache}` and travel by sharded pub/sub (`SPUBLISH` / `SSUBSCRIBE`):
//! one slot, so one primary executes every publish and delivers them to each subscriber
//! in that one order, which the near cache's lease argument needs, and a script can
//! advertise a lease and publish its heartbeat in one step.
//!
//! ```
//! # // The module is private; the doctest shows the names through the public pattern API.
//! use tower_response_cache::Pattern;
//! // A glob over a cluster is scanned on every primary as `{trc-??}ns:k:<glob>`.
//! assert!(Pattern::new("{trc-??}portal:k:/api/*").matches_str("{trc-0a}portal:k:/api/x"));
//! ```

use std::borrow::Cow;

use super::secret::Secret;
use crate::pattern::escape;

/// How many buckets a cluster's keys are spread over (16 hash tags: a few per primary in a
/// three-primary cluster, and few enough that an invalidation touches them all cheaply).
pub(crate) const BUCKETS: u64 = 16;

/// The counter of a single Redis, and the cluster-wide counter of a cluster.
pub(crate) const CENTRAL_GENERATION: &str = "tower-response-cache:gen";

/// The counter globs, tags and `invalidate_all` raise on one Redis.
pub(crate) const WIDE_GENERATION: &str = "tower-response-cache:gen:wide";

/// The random number naming a single Redis's data set (see the module docs).
pub(crate) const EPOCH: &str = "tower-response-cache:epoch";

/// How many bucket counters exact invalidations spread over on one Redis (and within each
/// key bucket of a cluster): an exact invalidation refuses a fill of an unrelated key with
/// odds 1/1024 (1/16 384 on a cluster).
pub(crate) const SINGLE_BUCKETS: u64 = 1024;

/// The bucket secret (see `secret.rs`); on a cluster one per key bucket, behind its tag.
pub(crate) const SECRET: &str = "tower-response-cache:secret";

/// `namespace` as written into key names: `%` and `:` escaped, so it never contains `:`.
pub(crate) fn namespace_part(namespace: &str) -> Cow<'_, str> {
    if !namespace.contains([':', '%']) {
        return Cow::Borrowed(namespace);
    }
    let mut out = String::with_capacity(namespace.len() + 8);
    for c in namespace.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// One Redis, or a cluster with bucketed hash tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// One Redis server (or a primary with replicas behind one address).
    Single,
    /// A Redis Cluster.
    Cluster,
}

/// The hash tag of the names processes meet at on a cluster (see the module docs).
const MEETING_TAG: &str = "{tower-response-cache}";

impl Layout {
    /// The channel every invalidation is published on.
    pub(crate) fn channel(self) -> &'static str {
        match self {
            Layout::Single => "tower-response-cache:invalidations",
            Layout::Cluster => "{tower-response-cache}:invalidations",
        }
    }

    /// The channel of the process named `origin`: its heartbeats, and acknowledgements of
    /// its invalidations.
    pub(crate) fn process_channel(self, origin: u64) -> String {
        match self {
            Layout::Single => format!("tower-response-cache:p:{origin:016x}"),
            Layout::Cluster => format!("{MEETING_TAG}:p:{origin:016x}"),
        }
    }

    /// The sorted set of advertised near-cache leases.
    pub(crate) fn leases_key(self) -> &'static str {
        match self {
            Layout::Single => "tower-response-cache:near:leases",
            Layout::Cluster => "{tower-response-cache}:near:leases",
        }
    }

    /// The random value naming the lease set's data (see `lease.rs`).
    pub(crate) fn leases_epoch_key(self) -> &'static str {
        match self {
            Layout::Single => "tower-response-cache:near:epoch",
            Layout::Cluster => "{tower-response-cache}:near:epoch",
        }
    }

    /// The command that publishes on these channels.
    pub(crate) fn publish_command(self) -> &'static str {
        match self {
            Layout::Single => "PUBLISH",
            Layout::Cluster => "SPUBLISH",
        }
    }

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
        self.named(namespace, ":k:", logical)
    }

    /// The lease of the fleet-wide flight `flight` (a hash of its identity) of `logical`.
    pub(crate) fn fleet_key(self, namespace: &str, logical: &str, flight: u64) -> String {
        let mut key = self.named(namespace, ":f:", logical);
        key.push_str(&format!(":{flight:016x}"));
        key
    }

    /// The sorted set of when each field of the entry hash of `logical` dies.
    pub(crate) fn expiry_key(self, namespace: &str, logical: &str) -> String {
        self.named(namespace, ":x:", logical)
    }

    fn named(self, namespace: &str, kind: &str, logical: &str) -> String {
        let namespace = namespace_part(namespace);
        let mut key = String::with_capacity(8 + namespace.len() + 3 + logical.len());
        if self == Layout::Cluster {
            key.push_str(&Self::hash_tag(Self::bucket(logical)));
        }
        key.push_str(&namespace);
        key.push_str(kind);
        key.push_str(logical);
        key
    }

    /// The expiry set beside an entry key of `namespace` found by a scan or in a tag set
    /// (`None` for a name that is not one of ours).
    pub(crate) fn expiry_of(self, namespace: &str, entry_key: &[u8]) -> Option<Vec<u8>> {
        let at = match self {
            Layout::Single => 0,
            Layout::Cluster => 8,
        } + namespace_part(namespace).len();
        if entry_key.get(at..at + 3)? != b":k:" {
            return None;
        }
        let mut key = entry_key.to_vec();
        key[at + 1] = b'x';
        Some(key)
    }

    /// The set listing the entry keys with tag `tag`, for an entry stored under `logical`.
    pub(crate) fn tag_key(self, namespace: &str, logical: &str, tag: &str) -> String {
        let namespace = namespace_part(namespace);
        format!("{}{namespace}:m:tag:{tag}", self.prefix(logical))
    }

    /// Every set that may list entry keys with tag `tag` (one per bucket in a cluster).
    pub(crate) fn tag_keys(self, namespace: &str, tag: &str) -> Vec<String> {
        let namespace = namespace_part(namespace);
        match self {
            Layout::Single => vec![format!("{namespace}:m:tag:{tag}")],
            Layout::Cluster => (0..BUCKETS)
                .map(|b| format!("{}{namespace}:m:tag:{tag}", Self::hash_tag(b)))
                .collect(),
        }
    }

    /// The counter an exact invalidation of `logical` raises. With the deployment's
    /// `secret` (see `secret.rs`): one of [`SINGLE_BUCKETS`] keyed counters, chosen by a
    /// keyed hash of namespace and key (in a cluster, [`SINGLE_BUCKETS`] of them within the
    /// key's bucket). Without one (none created yet): the unkeyed counter of earlier
    /// versions, on one Redis one of [`SINGLE_BUCKETS`] by a public hash, in a cluster the
    /// key bucket's own.
    pub(crate) fn generation_key(
        self,
        namespace: &str,
        logical: &str,
        secret: Option<&Secret>,
    ) -> String {
        match (self, secret) {
            (Layout::Single, Some(secret)) => {
                let bucket = secret.hash(namespace, logical) % SINGLE_BUCKETS;
                format!("{CENTRAL_GENERATION}:k:{bucket:03x}")
            }
            (Layout::Single, None) => {
                let mut hasher = xxhash_rust::xxh3::Xxh3::new();
                hasher.update(namespace.as_bytes());
                hasher.update(&[0]);
                hasher.update(logical.as_bytes());
                let bucket = hasher.digest() % SINGLE_BUCKETS;
                format!("{CENTRAL_GENERATION}:b:{bucket:03x}")
            }
            (Layout::Cluster, Some(secret)) => {
                let bucket = secret.hash(namespace, logical) % SINGLE_BUCKETS;
                format!(
                    "{}{CENTRAL_GENERATION}:k:{bucket:03x}",
                    self.prefix(logical)
                )
            }
            (Layout::Cluster, None) => format!("{}{CENTRAL_GENERATION}", self.prefix(logical)),
        }
    }

    /// Every counter a write of `logical` is checked against (none may be above the
    /// generation the request saw): the wide one (on a cluster, the key bucket's, which
    /// globs raise) and the one an exact invalidation of the key raises.
    pub(crate) fn write_counter_keys(
        self,
        namespace: &str,
        logical: &str,
        secret: Option<&Secret>,
    ) -> Vec<String> {
        match (self, secret) {
            // The unkeyed counter too: only processes of earlier versions raise it (in a
            // rolling deploy), never an exact invalidation made here, so nobody can aim
            // with it once they are gone.
            (Layout::Single, Some(_)) => vec![
                WIDE_GENERATION.to_owned(),
                self.generation_key(namespace, logical, secret),
                self.generation_key(namespace, logical, None),
            ],
            (Layout::Single, None) => vec![
                WIDE_GENERATION.to_owned(),
                self.generation_key(namespace, logical, None),
            ],
            (Layout::Cluster, Some(_)) => vec![
                self.generation_key(namespace, logical, None),
                self.generation_key(namespace, logical, secret),
            ],
            (Layout::Cluster, None) => vec![self.generation_key(namespace, logical, None)],
        }
    }

    /// Where the bucket secret for `logical` lives (see `secret.rs`), and its index among
    /// the process's learned secrets.
    pub(crate) fn secret_key(self, logical: &str) -> (String, usize) {
        match self {
            Layout::Single => (SECRET.to_owned(), 0),
            Layout::Cluster => {
                let bucket = Self::bucket(logical);
                (
                    format!("{}{SECRET}", Self::hash_tag(bucket)),
                    bucket as usize,
                )
            }
        }
    }

    /// How many secrets a process may learn: one per key bucket.
    pub(crate) fn secret_slots(self) -> usize {
        match self {
            Layout::Single => 1,
            Layout::Cluster => BUCKETS as usize,
        }
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
        let namespace = namespace_part(namespace);
        format!("{}{}:k:{glob}", self.scan_prefix(), escape(&namespace))
    }

    /// The `SCAN MATCH` pattern for every tag set of `namespace`.
    pub(crate) fn tag_scan(self, namespace: &str) -> String {
        let namespace = namespace_part(namespace);
        format!("{}{}:m:tag:*", self.scan_prefix(), escape(&namespace))
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
        assert!(l
            .generation_key("ns", "/a", None)
            .starts_with("tower-response-cache:gen:b:"));
        let secret = Secret::random();
        assert!(l
            .generation_key("ns", "/a", Some(&secret))
            .starts_with("tower-response-cache:gen:k:"));
        assert_eq!(l.secret_key("/a"), (SECRET.to_owned(), 0));
        assert_eq!(l.entry_scan("n*s", "/a*"), "n\\*s:k:/a*");
        assert_eq!(l.expiry_key("ns", "/a"), "ns:x:/a");
        assert_eq!(l.expiry_of("ns", b"ns:k:/a").unwrap(), b"ns:x:/a");
    }

    #[test]
    fn the_cluster_meeting_names_share_one_slot() {
        // Redis hashes only the first `{...}` of a name: every one starts with the tag.
        let cluster = Layout::Cluster;
        for name in [
            cluster.channel().to_owned(),
            cluster.process_channel(7),
            cluster.leases_key().to_owned(),
            cluster.leases_epoch_key().to_owned(),
        ] {
            assert!(name.starts_with(MEETING_TAG), "{name}");
        }
        assert!(!Layout::Single.channel().contains('{'));
    }

    #[test]
    fn a_namespace_with_colons_never_aliases_another_namespace() {
        for l in [Layout::Single, Layout::Cluster] {
            // Same logical bucket in a cluster: the hash tag depends on the key alone.
            assert_ne!(l.entry_key("a:k:b", "c"), l.entry_key("a", "b:k:c"));
            assert_ne!(
                l.tag_key("a:m:tag:x", "/", "t"),
                l.tag_key("a", "/", "x:m:tag:t")
            );
            let scan = Pattern::new(&l.entry_scan("a", "*"));
            assert!(!scan.matches_str(&l.entry_key("a:k:b", "c")));
            assert!(!Pattern::new(&l.tag_scan("a")).matches_str(&l.tag_key("a:m:tag:x", "/", "t")));
            assert!(scan.matches_str(&l.entry_key("a", "b:k:c")));
            assert_ne!(l.entry_key("a%3Ab", "c"), l.entry_key("a:b", "c"));
            let entry = l.entry_key("a:b%", "c");
            assert_eq!(
                l.expiry_of("a:b%", entry.as_bytes()).unwrap(),
                l.expiry_key("a:b%", "c").into_bytes()
            );
        }
    }

    #[test]
    fn cluster_keys_of_one_entry_share_a_hash_tag() {
        let l = Layout::Cluster;
        for logical in ["/a", "/api/dashboard/ABC", "dashboard:{x}", ""] {
            let entry = l.entry_key("ns", logical);
            let tag = &entry[..8];
            assert!(tag.starts_with("{trc-") && tag.ends_with('}'), "{entry}");
            assert!(l.tag_key("ns", logical, "t").starts_with(tag));
            assert!(l.generation_key("ns", logical, None).starts_with(tag));
            let secret = Secret::random();
            for counter in l.write_counter_keys("ns", logical, Some(&secret)) {
                assert!(counter.starts_with(tag), "{counter}");
            }
            assert!(l.secret_key(logical).0.starts_with(tag));
            assert!(l
                .tag_keys("ns", "t")
                .contains(&l.tag_key("ns", logical, "t")));
            assert!(l
                .bucket_generation_keys()
                .contains(&l.generation_key("ns", logical, None)));
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
