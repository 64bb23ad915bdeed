//! A real `redis-server` per test, on a free loopback port, that tests can kill, pause and
//! restart, and a three-primary cluster of them. The Redis tests never skip (whether or not
//! `TRC_REQUIRE_REDIS=1` is set, as `scripts/test.sh` sets it): without `redis-server` they
//! fail and say how to get it (`scripts/test.sh` installs it when run as root).
//!
//! Self-contained (std and the `redis` crate only), so the portal's tests include this very
//! file rather than a copy.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
}

/// A free loopback port whose cluster bus port (port + 10 000) is free too: cluster nodes
/// listen on both, and an ephemeral port above 55 535 has no bus port at all.
fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port <= 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisServer {
    /// Start a server with no persistence.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Start a server with extra `redis-server` arguments (e.g. `["--requirepass", "x"]`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        // A port found free can be taken before the server binds it (other tests run in
        // parallel): try a few.
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!("trc-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut server = RedisServer {
                child: None,
                port,
                dir,
                extra: extra.iter().map(|s| s.to_string()).collect(),
            };
            if server.try_spawn() {
                return server;
            }
            server.stop_child();
        }
        panic!("redis-server did not start on any of five free ports");
    }

    fn stop_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn(&mut self) {
        if !self.try_spawn() {
            panic!("redis-server did not start on port {}", self.port);
        }
    }

    /// Start the server on its port: whether it came up (the port may have been taken).
    fn try_spawn(&mut self) -> bool {
        let binary = which("redis-server").unwrap_or_else(|| {
            panic!(
                "redis-server is required for the Redis tests and was not found on PATH: \
                 install it (apt-get install redis-server) or run scripts/test.sh as root"
            )
        });
        let child = Command::new(binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        self.came_up()
    }

    fn came_up(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // Ours, not another test's server that took the port while ours was down.
                // (A server that wants a password cannot say; it is taken as ours.)
                match self.answering_pid() {
                    Ok(None) => return true,
                    Ok(Some(pid)) => return Some(pid) == self.child.as_ref().map(Child::id),
                    Err(()) => {}
                }
            }
            // A server that could not bind exits at once.
            if let Some(child) = self.child.as_mut() {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return false;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// The `process_id` of whatever Redis answers on this port: `Ok(None)` when it wants a
    /// password first, `Err` when nothing answers yet.
    fn answering_pid(&self) -> Result<Option<u32>, ()> {
        let mut connection = redis::Client::open(self.url())
            .map_err(drop)?
            .get_connection_with_timeout(Duration::from_millis(500))
            .map_err(drop)?;
        match redis::cmd("INFO")
            .arg("server")
            .query::<String>(&mut connection)
        {
            Ok(info) => Ok(info
                .lines()
                .find_map(|l| l.strip_prefix("process_id:"))
                .and_then(|pid| pid.trim().parse().ok())),
            Err(e) if e.code() == Some("NOAUTH") => Ok(None),
            Err(_) => Err(()),
        }
    }

    /// Whether this server was started and not killed since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} failed");
    }

    /// SIGKILL: gone at once, no chance to save.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the port stays open but nothing answers (a hanging Redis).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Write an RDB snapshot now (so a restart comes back with today's data).
    pub fn save(&self) {
        let _: () = redis::cmd("SAVE").query(&mut self.connection()).unwrap();
    }

    /// Start again on the same port; with a snapshot in the directory, with its data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Start again on the same port with no data at all.
    pub fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
        self.spawn();
    }

    /// A plain synchronous connection, for setting up and inspecting state.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    pub fn keys(&self, pattern: &str) -> Vec<String> {
        redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut self.connection())
            .unwrap()
    }

    /// The generation the last invalidation drew (the store's central counter).
    pub fn generation(&self) -> u64 {
        redis::cmd("GET")
            .arg("tower-response-cache:gen")
            .query::<Option<u64>>(&mut self.connection())
            .unwrap()
            .unwrap_or(0)
    }

    /// Another process's invalidation, as far as the stores can tell: its counter moves,
    /// with no message yet (send one with [`publish_invalidation`](Self::publish_invalidation)).
    pub fn draw_generation(&self) -> u64 {
        redis::cmd("INCR")
            .arg("tower-response-cache:gen")
            .query(&mut self.connection())
            .unwrap()
    }

    /// The message another process sends about invalidating `pattern` in `namespace` at
    /// `generation`; sending it again is how a test makes a message arrive late.
    pub fn publish_invalidation(&self, generation: u64, namespace: &str, pattern: &str) {
        let message = format!(
            r#"{{"origin":1,"generation":{generation},"namespace":"{namespace}","invalidation":{{"kind":"pattern","value":"{pattern}"}}}}"#
        );
        let () = redis::cmd("PUBLISH")
            .arg("tower-response-cache:invalidations")
            .arg(message)
            .query(&mut self.connection())
            .unwrap();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // SIGKILL ends a paused (SIGSTOPped) server too.
            self.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn which(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(binary))
            .find(|p| p.is_file())
    })
}

/// A Redis Cluster of three primaries (no replicas) on loopback ports, built with
/// `redis-cli --cluster create`. Each node is a [`RedisServer`] the tests can kill, pause
/// and restart; a node keeps its `nodes.conf`, so a restarted node rejoins with its slots.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Three primaries, no replicas.
    pub fn start() -> RedisCluster {
        Self::create(3, 0, &[])
    }

    /// `count` nodes with `replicas` replicas per primary, started with `extra` arguments.
    fn create(count: usize, replicas: usize, extra: &[&str]) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| {
                // The cluster bus gets a port of its own (not port + 10000, which may not
                // exist above 55535).
                let bus = free_port().to_string();
                let mut args = vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus,
                    "--cluster-node-timeout",
                    "1000",
                ];
                args.extend_from_slice(extra);
                RedisServer::start_with(&args)
            })
            .collect();
        let cli = which("redis-cli").expect("redis-cli (package redis-tools) is required");
        let output = Command::new(cli)
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_until_ok();
        cluster
    }

    /// Node URLs, to seed a cluster client.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Wait until every running node reports `cluster_state:ok` and agrees on the slots.
    pub fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut n.connection())
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster never became ok");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Keys matching `pattern` on each node, node by node.
    pub fn keys_per_node(&self, pattern: &str) -> Vec<Vec<String>> {
        self.nodes.iter().map(|n| n.keys(pattern)).collect()
    }

    /// Keys matching `pattern` on all nodes together.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.keys_per_node(pattern).concat();
        keys.sort();
        keys
    }

    /// The index in [`nodes`](Self::nodes) of the node that holds `key`'s slot (asked of a
    /// running node).
    pub fn owner_of(&self, key: &str) -> usize {
        let mut connection = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a running node")
            .connection();
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut connection)
            .unwrap();
        let table: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut connection)
            .unwrap();
        let port = table
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let owns = fields.iter().skip(8).any(|range| {
                    let (low, high) = range.split_once('-').unwrap_or((range, range));
                    matches!((low.parse::<u16>(), high.parse::<u16>()), (Ok(l), Ok(h)) if l <= slot && slot <= h)
                });
                let address = fields.get(1)?.split('@').next()?;
                owns.then(|| address.rsplit_once(':').unwrap().1.parse::<u16>().unwrap())
            })
            .expect("some node owns every slot");
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .expect("the owner is one of ours")
    }
}

/// The mute switches of the subscription connections a [`Silencer`] passes.
type Muted = std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<std::sync::atomic::AtomicBool>>>>;

/// A TCP proxy to Redis that can stop passing Redis's bytes to the subscription
/// connections open at that moment, keeping them open: a half-open subscription, which never
/// ends on its own.
pub struct Silencer {
    addr: std::net::SocketAddr,
    silenced: Muted,
}

impl Silencer {
    pub async fn start(redis: &RedisServer) -> Silencer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = redis
            .url()
            .trim_start_matches("redis://")
            .trim_end_matches("/0")
            .to_owned();
        let silenced: Muted = Muted::default();
        let subscriptions = silenced.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(&target).await.unwrap();
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let mute = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let subscriptions = subscriptions.clone();
                let registered = mute.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0; 16 * 1024];
                    let mut seen_subscribe = false;
                    while let Ok(n) = client_read.read(&mut buffer).await {
                        if n == 0 {
                            break;
                        }
                        let bytes = &buffer[..n];
                        if !seen_subscribe
                            && bytes
                                .windows(9)
                                .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
                        {
                            seen_subscribe = true;
                            subscriptions.lock().unwrap().push(registered.clone());
                        }
                        if server_write.write_all(bytes).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buffer = vec![0; 16 * 1024];
                    while let Ok(n) = server_read.read(&mut buffer).await {
                        if n == 0 {
                            break;
                        }
                        if mute.load(std::sync::atomic::Ordering::SeqCst) {
                            continue;
                        }
                        if client_write.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Silencer { addr, silenced }
    }

    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// From now on the subscriptions open now hear nothing more; later ones are untouched.
    pub fn silence_subscriptions(&self) {
        for mute in self.silenced.lock().unwrap().drain(..) {
            mute.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// A TCP proxy to Redis that can cut every connection through it, as a network partition
/// cuts one process off while others still reach Redis: open connections are closed, and
/// new ones are closed as soon as they are accepted, until [`heal`](Self::heal).
pub struct Partition {
    addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Partition {
    pub async fn start(redis: &RedisServer) -> Partition {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = ("127.0.0.1", redis.port);
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> =
            Default::default();
        let (is_cut, open) = (cut.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if is_cut.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let link = tokio::spawn(async move {
                    let (mut client, mut server) = (client, server);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                // Checked again under the lock `cut` takes: a link set up while it ran
                // is closed too.
                let mut links = open.lock().unwrap();
                if is_cut.load(std::sync::atomic::Ordering::SeqCst) {
                    link.abort();
                } else {
                    links.push(link.abort_handle());
                }
            }
        });
        Partition { addr, cut, links }
    }

    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Close every connection through the proxy and refuse new ones.
    pub fn cut(&self) {
        let mut links = self.links.lock().unwrap();
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for link in links.drain(..) {
            link.abort();
        }
    }

    /// Let connections through again.
    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A Redis Sentinel deployment on loopback ports: a primary, a replica
/// (`--replicaof`), and three sentinels monitoring them as [`SentinelSet::MASTER`] with
/// short timeouts (down after 500 ms), so a failover takes a few seconds. Replication
/// authenticates as the user `repl`, which [`block_replication`](Self::block_replication)
/// switches off on the primary: its replica then misses every write from there on.
pub struct SentinelSet {
    /// The data nodes; which one is the primary changes with each failover.
    pub nodes: Vec<RedisServer>,
    sentinels: Vec<SentinelProcess>,
}

const REPLICATION: [&str; 13] = [
    // A full sync at once, not after waiting 5 s for more replicas.
    "--repl-diskless-sync-delay",
    "0",
    "--user",
    "repl",
    "on",
    ">replpass",
    "~*",
    "&*",
    "+@all",
    "--masteruser",
    "repl",
    "--masterauth",
    "replpass",
];

impl SentinelSet {
    pub const MASTER: &'static str = "trc";

    pub fn start() -> SentinelSet {
        let primary = RedisServer::start_with(&REPLICATION);
        let args = replica_args(primary.port);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let replica = RedisServer::start_with(&args);
        let sentinels = (0..3)
            .map(|_| SentinelProcess::start(primary.port))
            .collect();
        let set = SentinelSet {
            nodes: vec![primary, replica],
            sentinels,
        };
        set.wait_ready(Duration::from_secs(30));
        set
    }

    /// `redis://` URLs of the sentinels.
    pub fn urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect()
    }

    /// The primary's port as a sentinel that answers names it.
    pub fn named_primary(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let (_, port): (String, String) = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(Self::MASTER)
                .query(&mut s.connection()?)
                .ok()?;
            port.parse().ok()
        })
    }

    /// The index in [`nodes`](Self::nodes) of the node on `port`.
    pub fn node(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .expect("one of ours")
    }

    /// Index of the primary (as the sentinels name it).
    pub fn primary(&self) -> usize {
        self.node(self.named_primary().expect("a sentinel names the primary"))
    }

    /// Index of the other data node.
    pub fn replica(&self) -> usize {
        1 - self.primary()
    }

    /// Wait until every sentinel names a primary other than `old` and that node says it
    /// is one; how long it took.
    pub fn wait_for_failover(&self, old: u16, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let named: Vec<Option<u16>> = self
                .sentinels
                .iter()
                .map(|s| {
                    let (_, port): (String, String) = redis::cmd("SENTINEL")
                        .arg("GET-MASTER-ADDR-BY-NAME")
                        .arg(Self::MASTER)
                        .query(&mut s.connection()?)
                        .ok()?;
                    port.parse().ok()
                })
                .collect();
            if let Some(Some(port)) = named.first() {
                if *port != old && named.iter().all(|n| *n == Some(*port)) {
                    let role = role_of(&self.nodes[self.node(*port)]);
                    if role.as_deref() == Some("master") {
                        return started.elapsed();
                    }
                }
            }
            assert!(
                started.elapsed() < within,
                "no failover within {within:?}: sentinels name {named:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`rejoin`](Self::rejoin) every data node that was killed.
    pub fn rejoin_killed(&mut self) {
        for index in 0..self.nodes.len() {
            if !self.nodes[index].is_running() {
                self.rejoin(index);
            }
        }
    }

    /// Start the killed node `index` again, empty, as a replica of the current primary,
    /// and wait until it is in sync and the sentinels see it.
    pub fn rejoin(&mut self, index: usize) {
        let primary = self.named_primary().expect("a primary");
        let node = &mut self.nodes[index];
        node.extra = replica_args(primary)
            .iter()
            .map(|s| s.to_string())
            .collect();
        node.restart_empty();
        // Generous: a loaded 2-core machine runs dozens of Redis tests beside this one.
        self.wait_ready(Duration::from_secs(60));
        self.settle(Duration::from_secs(3), Duration::from_secs(60));
    }

    /// Wait until the set has stayed ready under one primary for `quiet`: on a loaded
    /// machine the sentinels have failed over once more about a second after a node
    /// rejoined, and a round begun meanwhile waits on a replica that is resyncing.
    pub fn settle(&self, quiet: Duration, within: Duration) {
        let started = Instant::now();
        'again: loop {
            self.wait_ready(
                within
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_secs(1)),
            );
            let primary = self.named_primary();
            let calm = Instant::now();
            while calm.elapsed() < quiet {
                std::thread::sleep(Duration::from_millis(100));
                if self.named_primary() != primary || !self.ready() {
                    assert!(
                        started.elapsed() < within,
                        "the sentinel set did not settle within {within:?}: {}",
                        self.describe()
                    );
                    continue 'again;
                }
            }
            return;
        }
    }

    /// Wait until the replica is in sync with the primary and every sentinel knows it, and
    /// the sentinels know each other.
    pub fn wait_ready(&self, within: Duration) {
        let started = Instant::now();
        loop {
            if self.ready() {
                return;
            }
            assert!(
                started.elapsed() < within,
                "the sentinel set was not ready within {within:?}: {}",
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What each node and sentinel says, for a failure message.
    fn describe(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let info: String = node
                .connection_checked()
                .and_then(|mut c| redis::cmd("INFO").arg("replication").query(&mut c).ok())
                .unwrap_or_else(|| "no answer".into());
            let lines: Vec<&str> = info
                .lines()
                .filter(|l| l.starts_with("role:") || l.starts_with("master_"))
                .collect();
            out.push_str(&format!(
                "\nnode {} (running: {}): {}",
                node.port,
                node.is_running(),
                lines.join(" ")
            ));
        }
        for sentinel in &self.sentinels {
            let Some(mut c) = sentinel.connection() else {
                out.push_str(&format!("\nsentinel {}: no answer", sentinel.port));
                continue;
            };
            let master: Option<(String, String)> = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(Self::MASTER)
                .query(&mut c)
                .ok();
            let replicas: Vec<std::collections::HashMap<String, String>> = redis::cmd("SENTINEL")
                .arg("REPLICAS")
                .arg(Self::MASTER)
                .query(&mut c)
                .unwrap_or_default();
            let replicas: Vec<String> = replicas
                .iter()
                .map(|r| {
                    format!(
                        "{}[{}]",
                        r.get("port").map_or("?", String::as_str),
                        r.get("flags").map_or("?", String::as_str)
                    )
                })
                .collect();
            let peers: Vec<redis::Value> = redis::cmd("SENTINEL")
                .arg("SENTINELS")
                .arg(Self::MASTER)
                .query(&mut c)
                .unwrap_or_default();
            out.push_str(&format!(
                "\nsentinel {}: master {master:?}, replicas {replicas:?}, {} peers",
                sentinel.port,
                peers.len()
            ));
        }
        out
    }

    fn ready(&self) -> bool {
        let Some(primary) = self.named_primary() else {
            return false;
        };
        let replica = &self.nodes[1 - self.node(primary)];
        let info: String = replica
            .connection_checked()
            .and_then(|mut c| redis::cmd("INFO").arg("replication").query(&mut c).ok())
            .unwrap_or_default();
        if !info.contains("master_link_status:up") {
            return false;
        }
        self.sentinels.iter().all(|s| {
            let Some(mut c) = s.connection() else {
                return false;
            };
            let replicas: Vec<std::collections::HashMap<String, String>> = redis::cmd("SENTINEL")
                .arg("REPLICAS")
                .arg(Self::MASTER)
                .query(&mut c)
                .unwrap_or_default();
            let known = replicas.iter().any(|r| {
                r.get("port").map(String::as_str) == Some(&replica.port.to_string())
                    && r.get("flags").map(String::as_str) == Some("slave")
            });
            let peers: Vec<redis::Value> = redis::cmd("SENTINEL")
                .arg("SENTINELS")
                .arg(Self::MASTER)
                .query(&mut c)
                .unwrap_or_default();
            known && peers.len() >= 2
        })
    }

    /// On the primary, refuse the replication user and drop its link: from now on the
    /// replica hears nothing (until [`allow_replication`](Self::allow_replication)).
    pub fn block_replication(&self) {
        let mut primary = self.nodes[self.primary()].connection();
        let () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("repl")
            .arg("off")
            .query(&mut primary)
            .unwrap();
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("USER")
            .arg("repl")
            .query(&mut primary)
            .unwrap();
    }

    /// Undo [`block_replication`](Self::block_replication).
    pub fn allow_replication(&self) {
        let () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("repl")
            .arg("on")
            .query(&mut self.nodes[self.primary()].connection())
            .unwrap();
    }
}

fn replica_args(primary: u16) -> Vec<String> {
    let mut args: Vec<String> = REPLICATION.iter().map(|s| s.to_string()).collect();
    args.extend([
        "--replicaof".into(),
        "127.0.0.1".into(),
        primary.to_string(),
    ]);
    args
}

/// `ROLE`'s first word on `server`, when it answers.
pub fn role_of(server: &RedisServer) -> Option<String> {
    let mut connection = server.connection_checked()?;
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut connection).ok()?;
    match role.first()? {
        redis::Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

impl RedisServer {
    /// A connection, or `None` when the server does not answer (killed, or not up yet).
    pub fn connection_checked(&self) -> Option<redis::Connection> {
        redis::Client::open(self.url())
            .ok()?
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()
    }
}

/// One `redis-server --sentinel` on a free loopback port, with its own (rewritable)
/// configuration file.
struct SentinelProcess {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl SentinelProcess {
    fn start(primary: u16) -> SentinelProcess {
        let binary = which("redis-server").expect("redis-server is required");
        for _ in 0..5 {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("trc-sentinel-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let conf = dir.join("sentinel.conf");
            let master = SentinelSet::MASTER;
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {master} 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds {master} 500\n\
                     sentinel failover-timeout {master} 2000\n\
                     sentinel parallel-syncs {master} 1\n",
                    dir.display()
                ),
            )
            .unwrap();
            let mut child = Command::new(&binary)
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server --sentinel");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return SentinelProcess { child, port, dir };
                }
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server --sentinel did not start on any of five free ports");
    }

    fn connection(&self) -> Option<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port))
            .ok()?
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RedisCluster {
    /// Three primaries with one replica each (six nodes). Replicas sync as the user `repl`
    /// (so a test can cut one off: [`block_replication`](Self::block_replication)) and are
    /// promoted however long they were cut off.
    pub fn start_replicated() -> RedisCluster {
        let mut extra: Vec<&str> = REPLICATION.to_vec();
        extra.extend(["--cluster-replica-validity-factor", "0"]);
        let cluster = Self::create(6, 1, &extra);
        cluster.wait_replicated(Duration::from_secs(30));
        cluster
    }

    /// Wait until every primary lists a connected replica that has caught up.
    pub fn wait_replicated(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let primaries = self.primaries();
            let caught_up = primaries.len() == 3
                && primaries.iter().all(|&p| {
                    let info: String = redis::cmd("INFO")
                        .arg("replication")
                        .query(&mut self.nodes[p].connection())
                        .unwrap_or_default();
                    info.lines()
                        .any(|l| l.starts_with("slave0:") && l.contains("state=online"))
                });
            if caught_up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster's replicas never came online"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The indexes of the running nodes that are primaries now.
    pub fn primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].child.is_some()
                    && role_of(&self.nodes[i]).as_deref() == Some("master")
            })
            .collect()
    }

    /// The index of the node replicating `primary`. The primary learns its replica's role
    /// by gossip, which may lag the replication link itself (what
    /// [`wait_replicated`](Self::wait_replicated) checks), so its node table is read again
    /// for up to ten seconds until it lists the replica.
    pub fn replica_of(&self, primary: usize) -> usize {
        let id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut self.nodes[primary].connection())
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let table: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query(&mut self.nodes[primary].connection())
                .unwrap();
            let port = table.lines().find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.get(3) == Some(&id.as_str()) && fields[2].contains("slave")).then(|| {
                    let address = fields[1].split('@').next().unwrap();
                    address.rsplit_once(':').unwrap().1.parse::<u16>().unwrap()
                })
            });
            if let Some(port) = port {
                return self.nodes.iter().position(|n| n.port == port).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "every primary has a replica: none listed by {primary} in\n{table}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// On `primary`, refuse the replication user and drop its link: from now on its replica
    /// hears nothing (until [`allow_replication`](Self::allow_replication)).
    pub fn block_replication(&self, primary: usize) {
        let mut connection = self.nodes[primary].connection();
        let () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("repl")
            .arg("off")
            .query(&mut connection)
            .unwrap();
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("USER")
            .arg("repl")
            .query(&mut connection)
            .unwrap();
    }

    /// Undo [`block_replication`](Self::block_replication): the replica reconnects on its own.
    pub fn allow_replication(&self, primary: usize) {
        let () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("repl")
            .arg("on")
            .query(&mut self.nodes[primary].connection())
            .unwrap();
    }

    /// Wait until a node other than `old` owns `key`'s slot and the cluster is ok again;
    /// returns the new owner and how long it took.
    pub fn wait_for_promotion(&self, key: &str, old: usize, within: Duration) -> (usize, Duration) {
        let started = Instant::now();
        loop {
            let owner = self.owner_of(key);
            if owner != old {
                self.wait_until_ok();
                return (owner, started.elapsed());
            }
            assert!(
                started.elapsed() < within,
                "no replica took over {key} within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
