//! One `Vary` variant, one value: how the variants of a URL sit in its entry hash, so a hit
//! reads only the variant it serves and a write touches only its own.
//!
//! A URL's responses may vary on request headers (`Vary: Accept-Encoding`). Under the entry
//! hash `ns:k:L` (see `layout.rs`), the variant `F` of the key (host, query, keyed headers;
//! [`StoreKey::variant`](crate::store::StoreKey)) owns:
//!
//! - the field `F` (16 hex digits): its **index**, a small value naming the headers the
//!   variant's responses vary on and the `Vary` variants stored, most recently read first,
//!   each flagged whether it was ever read;
//! - one field `F:S` per `Vary` variant, `S` being 32 hex digits of a 128-bit hash of the
//!   request identity and the values of those headers (see [`sub_id`]): the encoded entry
//!   (see `codec.rs`).
//!
//! A read computes `S` from the request and the names it expects (learned from earlier reads
//! and writes of that variant, see [`NamesMemo`]; none expected: no `Vary`) and asks for
//! both fields in one `HMGET`: one round trip that returns the index and the one value the
//! request can be answered with, never the siblings. When the index names other headers
//! (the origin changed its `Vary`, or this process had not seen the variant), a second
//! `HGET` reads the right value. A hit still compares the exact identity and `Vary` values
//! stored with the entry: the hash only files it.
//!
//! The write script (see `scripts.rs`) is fenced like every write (it lands only if no
//! invalidation since the request's token may cover the key), puts its value and moves its
//! record to the front of the index. At most [`MAX_VARY_VARIANTS`] are kept per variant:
//! past that, the least recently read one that was **never read** goes first, else the
//! least recently read one, so a flood of junk `Accept-Encoding` values (written, never
//! read) cannot push out the variant real clients read. A read that serves a variant whose
//! record is unread or in the older half of the index moves it to the front, off the
//! response path ([`TOUCH_SCRIPT`]): a steady hot variant costs no write at all. When a
//! response varies on other headers than the index names, the index starts anew and the
//! older values are removed in the same script (bounded: at most [`MAX_VARY_VARIANTS`]).
//!
//! An index begins with 24 bytes (room for the soft-invalidation header every value
//! carries, ignored here) and `\0\0\0\0I`: a process of an earlier version, which kept all
//! variants in the field `F` behind a count, reads the zero count as undecodable (a miss);
//! this version reads such an older value (whose count is never zero) as no index at all —
//! a miss, removed — and the next write replaces it. Old and new processes sharing a Redis
//! during a rolling deploy therefore serve every request (the older ones miss more).
//!
//! ```
//! # // The module is private; the doctest shows the rule through the public API.
//! use tower_response_cache::RedisStore;
//! // The largest value written to Redis (default 1 MiB); a larger response is served
//! // uncached rather than riding the request deadline as a whole.
//! let builder = RedisStore::builder("redis://127.0.0.1:6379/0").max_value_bytes(4 << 20);
//! # let _ = builder;
//! ```

use std::sync::{Arc, RwLock};

use http::HeaderName;

/// Most `Vary` variants kept under one variant of a URL.
pub(crate) const MAX_VARY_VARIANTS: usize = 16;

/// What follows the 24 header bytes of an index: a zero count (undecodable for earlier
/// versions) and the index's tag.
const INDEX_TAG: &[u8; 5] = b"\0\0\0\0I";
/// Bytes before the names.
const INDEX_HEAD: usize = 24 + INDEX_TAG.len();
/// One record: 32 hex digits and a flag (`r`: read at least once, `n`: never read).
const RECORD: usize = 33;

/// The Lua function the scripts that rewrite an index share (the layout above):
/// `parse_index(raw)` returns the names (a comma-separated string), the records (each 33
/// bytes), and the 24 header bytes; `nil` for anything that is not an index.
macro_rules! parse_index_lua {
    () => {
        r#"
local function parse_index(raw)
  if not raw or #raw < 30 or string.sub(raw, 25, 29) ~= '\0\0\0\0I' then return nil end
  local nl = string.find(raw, '\n', 30, true)
  if not nl or (#raw - nl) % 33 ~= 0 then return nil end
  local records = {}
  for pos = nl + 1, #raw, 33 do records[#records + 1] = string.sub(raw, pos, pos + 32) end
  return string.sub(raw, 30, nl - 1), records, string.sub(raw, 1, 24)
end
"#
    };
}
pub(crate) use parse_index_lua;

/// Move a `Vary` variant's record to the front of its index, flagged as read.
/// KEYS: the entry hash. ARGV: the index field, the variant's 32 hex digits. Returns 1 when
/// moved, 0 when the index or the record is gone (nothing is created: an invalidation that
/// removed the hash is never undone by a touch).
pub(crate) const TOUCH_SCRIPT: &str = concat!(
    parse_index_lua!(),
    r#"
if #ARGV[2] ~= 32 then
  return redis.error_reply('ERR tower-response-cache: invalid touch arguments')
end
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then return 0 end
local names, records, head = parse_index(redis.call('HGET', KEYS[1], ARGV[1]))
if not names then return 0 end
local kept = {ARGV[2] .. 'r'}
local found = false
for _, r in ipairs(records) do
  if string.sub(r, 1, 32) == ARGV[2] then found = true else kept[#kept + 1] = r end
end
if not found then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], head .. '\0\0\0\0I' .. names .. '\n' .. table.concat(kept))
return 1
"#
);

/// The index field of `variant`: 16 lowercase hex digits (by hand: it is on every hit).
pub(crate) fn index_field(variant: u64) -> String {
    hex(&variant.to_be_bytes())
}

/// The field of one `Vary` variant: its index field, `:`, its 32 hex digits.
pub(crate) fn value_field(index_field: &str, sub: &str) -> String {
    let mut out = String::with_capacity(index_field.len() + 1 + sub.len());
    out.push_str(index_field);
    out.push(':');
    out.push_str(sub);
    out
}

/// The 32 hex digits naming a `Vary` variant: a 128-bit hash of the request identity and
/// the values of the headers its responses vary on (as `key::vary_values` writes them),
/// length-prefixed so no two pairs run together. 128 bits: nobody finds two requests that
/// share a field by trying (a 64-bit hash falls to a birthday search), so no request can
/// overwrite another's value.
pub(crate) fn sub_id(identity: &[u8], vary_values: &[u8]) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&(identity.len() as u64).to_be_bytes());
    hasher.update(identity);
    hasher.update(vary_values);
    hex(&hasher.digest128().to_be_bytes())
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

/// The names as an index writes them: lower-case header names joined by `,`.
pub(crate) fn names_text(names: &[HeaderName]) -> String {
    let mut out = String::new();
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name.as_str());
    }
    out
}

/// A parsed index.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Index {
    /// The headers the variant's responses vary on.
    pub(crate) names: Vec<HeaderName>,
    /// The `Vary` variants stored, most recently read first: hex digits and whether read.
    records: Vec<(String, bool)>,
}

impl Index {
    /// Parse an index; `None` for anything else (an earlier version's value, junk).
    pub(crate) fn parse(raw: &[u8]) -> Option<Index> {
        if raw.len() < INDEX_HEAD || &raw[24..INDEX_HEAD] != INDEX_TAG {
            return None;
        }
        let rest = &raw[INDEX_HEAD..];
        let newline = rest.iter().position(|&b| b == b'\n')?;
        let (names, records) = (&rest[..newline], &rest[newline + 1..]);
        if records.len() % RECORD != 0 {
            return None;
        }
        let names = if names.is_empty() {
            Vec::new()
        } else {
            names
                .split(|&b| b == b',')
                .map(HeaderName::from_bytes)
                .collect::<Result<Vec<_>, _>>()
                .ok()?
        };
        let records = records
            .chunks(RECORD)
            .map(|r| {
                let id = std::str::from_utf8(&r[..32]).ok()?;
                let read = match r[32] {
                    b'r' => true,
                    b'n' => false,
                    _ => return None,
                };
                Some((id.to_owned(), read))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Index { names, records })
    }

    /// Whether the index lists any `Vary` variant.
    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The `Vary` variants listed, most recently read first.
    pub(crate) fn ids(&self) -> impl Iterator<Item = &str> {
        self.records.iter().map(|(id, _)| id.as_str())
    }

    /// Whether a read that served `sub` should move it to the front: it was never read, or
    /// it sits in the older half, where writes of new variants would reach it first. A
    /// variant read steadily stays in the younger half and costs no write.
    pub(crate) fn wants_touch(&self, sub: &str) -> bool {
        match self.records.iter().position(|(id, _)| id == sub) {
            Some(at) => !self.records[at].1 || at >= MAX_VARY_VARIANTS / 2,
            None => false,
        }
    }
}

/// The index bytes for `names` and `records` (most recent first), as the scripts write them
/// (tests write indexes by hand with it).
#[cfg(test)]
pub(crate) fn encode_index(names: &str, records: &[(&str, bool)]) -> Vec<u8> {
    let mut out = vec![0u8; 24];
    out.extend_from_slice(INDEX_TAG);
    out.extend_from_slice(names.as_bytes());
    out.push(b'\n');
    for (id, read) in records {
        out.extend_from_slice(id.as_bytes());
        out.push(if *read { b'r' } else { b'n' });
    }
    out
}

const MEMO_SLOTS: usize = 4096;

/// The `Vary` names this process last saw for variants of URLs, so a read asks for the
/// right value at once. A fixed array of slots chosen by a hash of the entry key and the
/// variant, each remembering one: a wrong or forgotten guess costs one more round trip,
/// never a wrong answer (the index read with the value says what is right).
pub(crate) struct NamesMemo {
    slots: Box<[MemoSlot]>,
}

/// A variant's tag (a hash of its entry key and variant) and the names seen for it.
type MemoSlot = RwLock<Option<(u64, Arc<[HeaderName]>)>>;

impl NamesMemo {
    pub(crate) fn new() -> NamesMemo {
        NamesMemo {
            slots: (0..MEMO_SLOTS).map(|_| RwLock::new(None)).collect(),
        }
    }

    fn slot(&self, entry_key: &str, variant: u64) -> (u64, usize) {
        let tag = xxhash_rust::xxh3::xxh3_64(entry_key.as_bytes()) ^ variant;
        (tag, (tag % MEMO_SLOTS as u64) as usize)
    }

    /// The names last seen for `variant` under `entry_key`; none known: no `Vary`.
    pub(crate) fn guess(&self, entry_key: &str, variant: u64) -> Option<Arc<[HeaderName]>> {
        let (tag, at) = self.slot(entry_key, variant);
        let slot = self.slots[at].read().unwrap_or_else(|e| e.into_inner());
        match &*slot {
            Some((t, names)) if *t == tag => Some(names.clone()),
            _ => None,
        }
    }

    /// Remember `names` for `variant` under `entry_key`.
    pub(crate) fn learn(&self, entry_key: &str, variant: u64, names: &[HeaderName]) {
        let (tag, at) = self.slot(entry_key, variant);
        let mut slot = self.slots[at].write().unwrap_or_else(|e| e.into_inner());
        if !matches!(&*slot, Some((t, known)) if *t == tag && known[..] == names[..]) {
            *slot = Some((tag, names.into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> String {
        format!("{:032x}", n)
    }

    #[test]
    fn an_index_reads_back_its_names_and_records_in_order() {
        let (a, b) = (id(1), id(2));
        let raw = encode_index(
            "accept-encoding,accept-language",
            &[(&a, true), (&b, false)],
        );
        let index = Index::parse(&raw).unwrap();
        assert_eq!(index.names.len(), 2);
        assert_eq!(index.names[0], "accept-encoding");
        assert_eq!(index.ids().collect::<Vec<_>>(), [a.as_str(), b.as_str()]);
        assert!(!index.is_empty());
        let none = Index::parse(&encode_index("", &[])).unwrap();
        assert!(none.names.is_empty() && none.is_empty());
    }

    #[test]
    fn anything_but_an_index_is_none() {
        // An earlier version's value: a header, then a non-zero count of variants.
        let mut old = vec![0u8; 24];
        old.extend_from_slice(&1u32.to_be_bytes());
        old.extend_from_slice(b"entry bytes");
        assert_eq!(Index::parse(&old), None);
        assert_eq!(Index::parse(b""), None);
        let mut cut = encode_index("vary", &[(&id(1), true)]);
        cut.pop();
        assert_eq!(Index::parse(&cut), None);
        let bad_flag = encode_index("vary", &[(&id(1), true)]);
        let mut bad_flag = bad_flag.clone();
        *bad_flag.last_mut().unwrap() = b'x';
        assert_eq!(Index::parse(&bad_flag), None);
        assert_eq!(Index::parse(&encode_index("bad name", &[])), None);
    }

    #[test]
    fn a_read_moves_a_variant_only_when_unread_or_in_the_older_half() {
        let ids: Vec<String> = (0..10).map(id).collect();
        let records: Vec<(&str, bool)> = ids.iter().map(|i| (i.as_str(), true)).collect();
        let mut with_unread = records.clone();
        with_unread[0].1 = false;
        let index = Index::parse(&encode_index("", &records)).unwrap();
        assert!(!index.wants_touch(&ids[0]));
        assert!(!index.wants_touch(&ids[7]));
        assert!(index.wants_touch(&ids[8]));
        assert!(!index.wants_touch(&id(99)));
        let unread = Index::parse(&encode_index("", &with_unread)).unwrap();
        assert!(unread.wants_touch(&ids[0]));
    }

    #[test]
    fn variant_ids_tell_identity_from_values_and_are_32_hex_digits() {
        let a = sub_id(b"ab", b"c");
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(a, sub_id(b"a", b"bc"));
        assert_eq!(a, sub_id(b"ab", b"c"));
        assert_eq!(index_field(0xab), "00000000000000ab");
        assert_eq!(value_field("f", "s"), "f:s");
    }

    #[test]
    fn the_memo_answers_what_it_learned_for_that_variant_only() {
        let memo = NamesMemo::new();
        assert!(memo.guess("k", 1).is_none());
        let names = [HeaderName::from_static("accept-encoding")];
        memo.learn("k", 1, &names);
        assert_eq!(&memo.guess("k", 1).unwrap()[..], &names[..]);
        assert!(memo.guess("k", 2).is_none());
        assert!(memo.guess("other", 1).is_none());
    }
}
