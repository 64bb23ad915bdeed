//! [`RedisStoreBuilder`]: the settings of a [`RedisStore`] and the assembly of its parts.
//!
//! Building is where the parts meet once: the connections go to [`Calls`], the layout the
//! connection implies to [`Entries`], [`Generations`] and the [`Channel`], and the tasks
//! that keep the store alive (the channel's listener, the `maxmemory` check, the near
//! cache's heartbeat, the Sentinel watch) start with a weak reference on the store's own
//! thread ([`Background`]), whose runtime goes when the last handle is dropped. Kept apart
//! from `mod.rs` so the store's type and its trait impls read without the builder's
//! settings in between.

// The store's own vocabulary (its imports, scripts and helpers).
use super::*;

/// Builds a [`RedisStore`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    target: Target,
    deadline: Duration,
    scan_deadline: Duration,
    connect_timeout: Duration,
    /// The near cache's lease and byte budget, when on (set in `near.rs`).
    pub(super) near: Option<(Duration, usize)>,
    /// The lease of a fleet-wide flight, when on.
    fleet: Option<Duration>,
    durability: Durability,
    max_value_bytes: usize,
    reply_budget: usize,
}

#[derive(Clone)]
pub(super) enum Target {
    Single(String),
    Cluster(Vec<String>),
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        password: Option<String>,
        db: i64,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Single(url) => f.debug_tuple("Single").field(url).finish(),
            Target::Cluster(seeds) => f.debug_tuple("Cluster").field(seeds).finish(),
            // The password stays out of logs.
            Target::Sentinel {
                sentinels,
                master,
                db,
                ..
            } => f
                .debug_struct("Sentinel")
                .field("sentinels", sentinels)
                .field("master", master)
                .field("db", db)
                .finish_non_exhaustive(),
        }
    }
}

/// The largest value a [`RedisStore`] writes by default (see
/// [`RedisStoreBuilder::max_value_bytes`]): 1 MiB, under 10 ms at 1 Gbit/s.
pub(crate) const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;

/// The bytes of replies a [`RedisStore`] holds at once by default (see
/// [`RedisStoreBuilder::reply_budget`]): 256 MiB, 255 reads of the largest value at once.
pub(crate) const DEFAULT_REPLY_BUDGET: usize = 256 << 20;

/// How long a fleet-wide flight's leader holds its lease by default.
pub(crate) const DEFAULT_FLEET_LEASE: Duration = Duration::from_secs(2);

impl RedisStoreBuilder {
    /// A builder for `target` with the defaults.
    pub(super) fn new(target: Target) -> RedisStoreBuilder {
        // A sentinel set fails over to a replica by design: every invalidation waits for
        // one. Elsewhere only a primary that lists a replica is waited on.
        let durability = match target {
            Target::Sentinel { .. } => Durability::Required {
                replicas: 1,
                timeout: durable::DEFAULT_TIMEOUT,
            },
            _ => Durability::default(),
        };
        RedisStoreBuilder {
            target,
            deadline: Duration::from_millis(50),
            scan_deadline: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(250),
            near: None,
            fleet: Some(DEFAULT_FLEET_LEASE),
            durability,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            reply_budget: DEFAULT_REPLY_BUDGET,
        }
    }

    /// The largest value written to Redis, in bytes (default 1 MiB):
    /// an encoded response above it is served but not stored in Redis. A read fetches a
    /// whole value within the request deadline on the process's one connection, so a
    /// value must be small next to deadline × bandwidth (50 ms at 1 Gbit/s is about 6 MB):
    /// one that is not would make reads of it miss their deadline and count as an outage.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// The bytes of entry replies this store holds at once (default 256 MiB). Each read
    /// reserves room for the largest value it may bring ([`max_value_bytes`] and its index)
    /// until its reply has arrived; a read that finds no room within the deadline reads as
    /// a miss, not an outage, and is counted in `StoreStats::reply_budget_full`. Never less
    /// than one read's worth.
    ///
    /// So it also bounds the reads in flight: budget ÷ (value cap + 4 KiB), 255 by default.
    /// At a round trip of 2 ms that is about 125 000 reads a second; a process expecting
    /// more concurrent reads on a slower link raises the budget or lowers the value cap.
    ///
    /// [`max_value_bytes`]: RedisStoreBuilder::max_value_bytes
    pub fn reply_budget(mut self, bytes: usize) -> Self {
        self.reply_budget = bytes;
        self
    }

    /// Deadline of each Redis call on the request path (default 50 ms).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Deadline of each step of an invalidation (one `SCAN` batch; default 2 s).
    pub fn scan_deadline(mut self, deadline: Duration) -> Self {
        self.scan_deadline = deadline;
        self
    }

    /// Deadline of establishing a connection (default 250 ms).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Fleet-wide single flight (on by default, with a 2 s lease): when a key misses in
    /// several processes sharing this Redis at once, one of them fetches it and the others
    /// wait for its entry (at most the handle's coalesce timeout). The leader holds the
    /// flight's lease in Redis for at most `lease`: one that dies or stalls is taken over
    /// after it. `None` turns it off: each process fetches for itself. Costs a plain miss
    /// one round trip. See `CACHE_FLEET_LEASE_MS`.
    pub fn fleet_single_flight(mut self, lease: Option<Duration>) -> Self {
        // At most a minute: a longer expiry under a lease key reads as foreign.
        self.fleet = lease
            .filter(|l| !l.is_zero())
            .map(|l| l.min(Duration::from_secs(60)));
        self
    }

    /// Wait, in every invalidation, until `replicas` replicas of each primary it wrote to
    /// acknowledged its removal and its generation bump (`WAIT`), at most `timeout`; when
    /// fewer did, the invalidation returns an error that says so
    /// ([`StoreError::is_not_replicated`]). `0` replicas never waits.
    ///
    /// Behind Redis Sentinel this is the default, with one replica and 250 ms: a sentinel
    /// set fails over to a replica by design. For one Redis or a cluster the default is
    /// [`durable_invalidations_when_replicated`](Self::durable_invalidations_when_replicated)`(1, 250 ms)`.
    /// See `CACHE_INVALIDATE_REPLICAS`.
    pub fn durable_invalidations(mut self, replicas: u32, timeout: Duration) -> Self {
        self.durability = match replicas {
            0 => Durability::Off,
            replicas => Durability::Required { replicas, timeout },
        };
        self
    }

    /// Wait for `replicas` replicas, at most `timeout`, only on a primary that lists at
    /// least one connected replica (`ROLE`): a lone Redis is not waited for, and neither
    /// is a primary whose replicas are all away at that moment. The default for one Redis
    /// and a cluster, with 1 and 250 ms.
    pub fn durable_invalidations_when_replicated(
        mut self,
        replicas: u32,
        timeout: Duration,
    ) -> Self {
        self.durability = match replicas {
            0 => Durability::Off,
            replicas => Durability::Auto { replicas, timeout },
        };
        self
    }

    /// The password of the primary the sentinels name (and of its replicas), for a store
    /// built with [`RedisStore::sentinel`]; the sentinels' own, if any, go in their URLs.
    pub fn primary_password(mut self, password: impl Into<String>) -> Self {
        if let Target::Sentinel { password: p, .. } = &mut self.target {
            *p = Some(password.into());
        }
        self
    }

    /// The database number on the primary the sentinels name (default 0), for a store
    /// built with [`RedisStore::sentinel`].
    pub fn primary_db(mut self, db: i64) -> Self {
        if let Target::Sentinel { db: d, .. } = &mut self.target {
            *d = db;
        }
        self
    }

    /// Build the store. Connects lazily: an unreachable Redis is not an error here, only
    /// an invalid URL is (or a thread that cannot be started). The tasks that keep the
    /// store alive (the listener for other processes' invalidations, the near cache's
    /// heartbeat) run on a thread of the store's own, which ends when the store is dropped:
    /// it may be built outside any runtime, or on one that is later dropped or no longer
    /// polled, and used from any other.
    pub fn build(self) -> Result<RedisStore, StoreError> {
        // Whichever runtime builds the store, if any, may go long before the store: what
        // the store starts runs on a runtime of its own (see `store/background.rs`), the
        // connection manager's helper task included.
        let background = Background::start("trc-redis")
            .map_err(|e| StoreError::new("could not start the Redis store's thread", e))?;
        let runtime = background.runtime().clone();
        let _started_there = runtime.enter();
        let invalid = |e| StoreError::new("invalid Redis URL", e);
        let timeouts = Timeouts {
            // A `WAIT` for replicas must not be cut short by the connection's own timeout.
            response: self
                .scan_deadline
                .max(self.durability.timeout() + self.deadline),
            connect: self.connect_timeout,
        };
        let mut sentinel = None;
        let (connection, invalidations, tasks, subscriber) = match &self.target {
            Target::Single(url) => (
                Connection::single(url, &timeouts),
                Connection::single(url, &timeouts),
                Connection::single(url, &timeouts),
                Subscriber::Plain(redis::Client::open(url.as_str()).map_err(invalid)?),
            ),
            Target::Sentinel {
                sentinels,
                master,
                password,
                db,
            } => {
                let link = SentinelLink::new(
                    sentinels,
                    master,
                    password.as_deref(),
                    *db,
                    connection::manager_config(&timeouts),
                    self.connect_timeout.max(Duration::from_millis(250)),
                )
                .map_err(|e| StoreError::new("invalid Redis Sentinel settings", e))?;
                let link = Arc::new(link);
                sentinel = Some(link.clone());
                (
                    Ok(Connection::Sentinel(link.clone(), Lane::Data)),
                    Ok(Connection::Sentinel(link.clone(), Lane::Invalidations)),
                    Ok(Connection::Sentinel(link.clone(), Lane::Background)),
                    Subscriber::Sentinel(link),
                )
            }
            Target::Cluster(seeds) if seeds.is_empty() => {
                return Err(StoreError::msg(
                    "a Redis Cluster needs at least one seed node",
                ))
            }
            Target::Cluster(seeds) => (
                Connection::cluster(seeds, &timeouts),
                Connection::cluster(seeds, &timeouts),
                Connection::cluster(seeds, &timeouts),
                Subscriber::Sharded {
                    seeds: seeds.clone(),
                    connect: self.connect_timeout.max(Duration::from_secs(1)),
                },
            ),
        };
        let connection = connection.map_err(invalid)?;
        let invalidations = invalidations.map_err(invalid)?;
        let tasks = tasks.map_err(invalid)?;
        let origin = rand_u64();
        let layout = connection.layout();
        let near = self
            .near
            .map(|(lease, max_bytes)| Near::new(lease, max_bytes, layout.process_channel(origin)));
        let inner = Arc::new(Inner {
            calls: Calls::new(
                [connection, invalidations, tasks],
                self.durability,
                self.deadline,
                self.scan_deadline,
            ),
            tokens: Tokens::default(),
            generations: Generations::new(layout),
            entries: Entries::new(layout, self.max_value_bytes, self.reply_budget),
            channel: Channel::new(subscriber, layout, origin),
            leases: lease::Leases::new(),
            fleet: fleet::Fleet::new(self.fleet),
            near,
            background,
        });
        let background = &inner.background;
        background.spawn(channel::listen(Arc::downgrade(&inner)));
        background.spawn(maxmemory::check(Arc::downgrade(&inner)));
        if inner.near.is_some() {
            background.spawn(near::heartbeat(Arc::downgrade(&inner)));
        }
        if let Some(link) = sentinel {
            // A new primary is a new data set: counted as a lost connection, like a
            // restart (a fallback store replays before reading it).
            let weak = Arc::downgrade(&inner);
            link.set_on_move(Arc::new(move |address| {
                if let Some(inner) = weak.upgrade() {
                    inner.calls.background_failed(
                        "the Redis primary moved",
                        &StoreError::connection_lost(
                            "the Redis primary moved",
                            format!("now {address}"),
                        ),
                    );
                }
            }));
            background.spawn(sentinel::watch(Arc::downgrade(&link)));
        }
        Ok(RedisStore::from_inner(inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::background::ends_within;

    /// Built outside any runtime, its tasks running (and failing: nothing listens on port
    /// 1), a store's thread ends once the store is dropped: no thread is left behind per
    /// store, whichever thread drops the last handle (here maybe a task on that thread).
    #[test]
    fn a_dropped_store_leaves_no_thread_behind() {
        for near in [false, true] {
            let mut builder = RedisStore::builder("redis://127.0.0.1:1/");
            if near {
                builder = builder.near_cache(Duration::from_millis(20), 1 << 20);
            }
            let store = builder.build().unwrap();
            let thread = store.inner.background.take_thread();
            std::thread::sleep(Duration::from_millis(300));
            assert!(!thread.is_finished(), "the store's thread ended under it");
            drop(store);
            assert!(
                ends_within(&thread, Duration::from_secs(5)),
                "the thread outlived its store (near cache: {near})"
            );
        }
    }
}
