//! The deployment's bucket secret: which generation counter an exact invalidation raises
//! (and a write of the same key checks) is a keyed hash of the namespace and the key.
//!
//! Why: an exact invalidation refuses every fill in flight whose key shares its counter,
//! and any client who can `POST` to a path (a login redirect is enough) makes one. With a
//! public hash a client can compute, offline, a path whose counter is a chosen key's, and
//! keep that key from ever being stored. Keyed with a random secret that only Redis and the
//! processes sharing it know (never sent to a client), the counter of a path is not
//! predictable from the namespace and the key: a `POST` refuses a random 1/1024 of fills.
//!
//! The secret lives in Redis, created by the first exact invalidation that needs it, one
//! per data set (on one Redis `tower-response-cache:secret`; on a cluster one per key
//! bucket, `{trc-07}tower-response-cache:secret`, beside the counters it selects, so a
//! script can check it). Each process learns it from Redis; the write script and the
//! invalidation scripts compare the secret the process used with the one Redis holds, so a
//! process that has not learned a new one (Redis restarted empty) is refused and learns it,
//! and never raises or checks a counter the others do not. Until a secret exists, keys
//! use the unkeyed counters of earlier versions (nothing has raised a keyed one yet).
//!
//! The keyed hash is SipHash-2-4 (a PRF built for this: hash-flooding defence), written
//! out here so every process, whatever its build or architecture, picks the same counter.

use std::sync::Mutex;

/// A bucket secret as Redis holds it (32 hex digits) and as SipHash keys.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret {
    text: String,
    keys: (u64, u64),
}

impl Secret {
    /// A fresh random secret.
    pub(crate) fn random() -> Secret {
        let text = format!("{:016x}{:016x}", super::rand_u64(), super::rand_u64());
        Secret::parse(&text).expect("32 hex digits")
    }

    /// The secret Redis returned; `None` for anything else than 32 hex digits (an empty or
    /// foreign value is not a key: the scripts then refuse what it would select).
    pub(crate) fn parse(text: &str) -> Option<Secret> {
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let k0 = u64::from_str_radix(&text[..16], 16).ok()?;
        let k1 = u64::from_str_radix(&text[16..], 16).ok()?;
        Some(Secret {
            text: text.to_owned(),
            keys: (k0, k1),
        })
    }

    /// As sent to the scripts that check it.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// The keyed hash of `namespace` and `logical`.
    pub(crate) fn hash(&self, namespace: &str, logical: &str) -> u64 {
        let mut message = Vec::with_capacity(namespace.len() + 1 + logical.len());
        message.extend_from_slice(namespace.as_bytes());
        message.push(0);
        message.extend_from_slice(logical.as_bytes());
        siphash24(self.keys, &message)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// The secrets this process has learned, one per key bucket (one on a single Redis).
pub(crate) struct Secrets {
    known: Mutex<Vec<Option<Secret>>>,
}

impl Secrets {
    pub(crate) fn new(buckets: usize) -> Secrets {
        Secrets {
            known: Mutex::new(vec![None; buckets]),
        }
    }

    /// The secret of `bucket` as last learned (`None`: none known, or none exists yet).
    pub(crate) fn get(&self, bucket: usize) -> Option<Secret> {
        self.lock().get(bucket).cloned().flatten()
    }

    /// What Redis said the secret of `bucket` is (`""` or a foreign value: none).
    pub(crate) fn learn(&self, bucket: usize, text: &str) {
        if let Some(slot) = self.lock().get_mut(bucket) {
            *slot = Secret::parse(text);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Secret>>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// SipHash-2-4 of `message` under `keys` (Aumasson and Bernstein, 2012).
pub(super) fn siphash24((k0, k1): (u64, u64), message: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let mut chunks = message.chunks_exact(8);
    for chunk in &mut chunks {
        let m = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        v[3] ^= m;
        round(&mut v);
        round(&mut v);
        v[0] ^= m;
    }
    let mut last = [0u8; 8];
    let rest = chunks.remainder();
    last[..rest.len()].copy_from_slice(rest);
    last[7] = message.len() as u8;
    let m = u64::from_le_bytes(last);
    v[3] ^= m;
    round(&mut v);
    round(&mut v);
    v[0] ^= m;
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siphash_matches_the_reference_vectors() {
        // The paper's key 00 01 … 0f; messages 00 01 … (n − 1).
        let keys = (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
        let message: Vec<u8> = (0..64).collect();
        assert_eq!(siphash24(keys, &message[..0]), 0x726f_db47_dd0e_0e31);
        assert_eq!(siphash24(keys, &message[..15]), 0xa129_ca61_49be_45e5);
        assert_eq!(siphash24(keys, &message[..8]), 0x93f5_f579_9a93_2462);
    }

    #[test]
    fn secrets_parse_only_from_32_hex_digits_and_never_print() {
        let secret = Secret::random();
        assert_eq!(Secret::parse(secret.as_str()), Some(secret.clone()));
        assert_eq!(format!("{secret:?}"), "Secret(…)");
        assert!(Secret::parse("").is_none());
        assert!(Secret::parse(&"g".repeat(32)).is_none());
        assert!(Secret::parse(&"a".repeat(31)).is_none());
        assert_ne!(Secret::random(), Secret::random());
    }

    #[test]
    fn the_keyed_hash_depends_on_the_secret() {
        let (a, b) = (Secret::random(), Secret::random());
        let differ = (0..8).any(|i| {
            let key = format!("/api/{i}");
            a.hash("ns", &key) % 1024 != b.hash("ns", &key) % 1024
        });
        assert!(differ);
        // Namespace and key stay apart.
        assert_ne!(a.hash("a", "b:c"), a.hash("a:b", "c"));
    }
}
