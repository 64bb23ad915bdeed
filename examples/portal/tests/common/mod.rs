//! What the portal's test files share.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A temporary database, removed (with its WAL files) when dropped.
pub struct TempDb(pub PathBuf);

impl TempDb {
    /// A fresh path in the temporary directory, unique to this process and call; `kind`
    /// names the test file it is for.
    pub fn new(kind: &str) -> TempDb {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "portal-{kind}-{}-{}.db",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        TempDb(std::env::temp_dir().join(name))
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}
