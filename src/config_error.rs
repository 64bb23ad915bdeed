//! [`ConfigError`]: a setting whose value cannot be used, from an environment variable
//! ([`CacheConfig`](crate::CacheConfig)) or set in code
//! ([`CacheHandleBuilder::try_build`](crate::CacheHandleBuilder::try_build)). Its own file,
//! below both, so that the handle's builder does not import the configuration above it.
//!
//! ```
//! let error = tower_response_cache::CacheHandle::builder(tower_response_cache::MemoryStore::new())
//!     .namespace("")
//!     .try_build()
//!     .unwrap_err();
//! assert_eq!(error.variable(), "CACHE_NAMESPACE");
//! ```

use std::fmt;

/// A configuration variable had a value that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    variable: &'static str,
    value: String,
    expected: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid value {:?} for {}: expected {}",
            self.value, self.variable, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub(crate) fn invalid(variable: &'static str, value: String, expected: &'static str) -> Self {
        ConfigError {
            variable,
            value,
            expected,
        }
    }

    /// The variable (or, for a setting made in code, the variable that sets it) whose value
    /// could not be used.
    pub fn variable(&self) -> &'static str {
        self.variable
    }
}
