//! The Lua scripts the store runs: each checks its arguments and the types of the keys it
//! touches before it writes anything, so no write is ever applied in half.

use super::variants::parse_index_lua;

/// The Lua every script that reads the crate's own keys starts with: an epoch or a counter
/// is a decimal integer of at most 15 digits and a bucket secret 32 hex digits, each a
/// string; anything else under those names (another tool's value, a hand edit, a value of
/// another type) is foreign and reads as missing, so it never fails a script or refuses
/// every write. `own(key, pattern)` is the value, `nil` when missing or foreign, and
/// whether a foreign value is there; `own_number` and `own_epoch` read the two kinds.
macro_rules! own_values {
    () => {
        r#"
local function own(key, pattern)
  local t = redis.call('TYPE', key)['ok']
  if t == 'none' then return nil, false end
  if t ~= 'string' then return nil, true end
  local v = redis.call('GET', key)
  if #v <= 32 and string.find(v, pattern) then return v, false end
  return nil, true
end
local NUMBER = '^%d%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?$'
local SECRET = '^' .. string.rep('%x', 32) .. '$'
local function own_number(key)
  local v, foreign = own(key, NUMBER)
  return tonumber(v or '0'), foreign
end
-- An epoch names a data set: 1 to 2^24 - 1 (the bits a write token has for it).
local function own_epoch(key)
  local n, foreign = own_number(key)
  if foreign or n < 1 or n > 16777215 then
    return nil, foreign or redis.call('EXISTS', key) == 1
  end
  return tostring(n), false
end
"#
    };
}

/// Store one `Vary` variant's value unless an invalidation happened since the request
/// began, and file it in its variant's index (see `variants.rs`).
///
/// KEYS: entry hash, its expiry set, the counters the write is checked against (`ARGV[6]` of
/// them), the epoch key when `ARGV[5]` is not empty, the bucket secret, then the tag sets.
/// ARGV: index field, value, ttl ms, generation seen, epoch seen (`''` in a cluster), how
/// many counters, how many dead fields to prune, the bucket secret the counters were chosen
/// with (`''`: none), the `Vary` variant's 32 hex digits, the names its response varies on
/// (comma-separated), the most `Vary` variants kept.
///
/// Every argument and the type of every key is checked before anything is written: a
/// script that errs midway would leave half a write (a value without its TTL or its tags).
/// The write prunes up to `ARGV[7]` dead fields (and tag set members whose entry is gone),
/// then writes only its own value and the index: no sibling is read or written back. Past
/// `ARGV[11]` variants it removes the least recently read one never read, else the least
/// recently read one; an index naming other headers starts anew (its values removed).
/// Returns 1 when stored, 0 when refused, and the bucket secret Redis holds (a string,
/// `''` for none) when the counters were chosen with another one: refused, and the caller
/// learns it (see `secret.rs`).
pub(super) const PUT_SCRIPT: &str = concat!(
    own_values!(),
    parse_index_lua!(),
    r#"
local ttl = tonumber(ARGV[3])
local seen = tonumber(ARGV[4])
local counters = tonumber(ARGV[6])
local prune = tonumber(ARGV[7])
local most = tonumber(ARGV[11])
if not ttl or not seen or not counters or not prune or ttl < 1 or ttl > 2147483647000
  or ttl % 1 ~= 0 or #ARGV[1] == 0 or not ARGV[9] or #ARGV[9] ~= 32 or not ARGV[10]
  or string.find(ARGV[10], '\n', 1, true) or not most or most < 1 then
  return redis.error_reply('ERR tower-response-cache: invalid write arguments')
end
local first_tag = 3 + counters
local epoch_key = false
if ARGV[5] ~= '' then
  epoch_key = KEYS[first_tag]
  first_tag = first_tag + 1
end
local secret_key = KEYS[first_tag]
first_tag = first_tag + 1
local function kind(key) return redis.call('TYPE', key)['ok'] end
local k = kind(KEYS[1])
local x = kind(KEYS[2])
if (k ~= 'none' and k ~= 'hash') or (x ~= 'none' and x ~= 'zset') then
  return redis.error_reply('WRONGTYPE tower-response-cache: a foreign value under a cache key')
end
for i = first_tag, #KEYS do
  local t = kind(KEYS[i])
  if t ~= 'none' and t ~= 'set' then
    return redis.error_reply('WRONGTYPE tower-response-cache: a foreign value under a tag key')
  end
end
-- No epoch yet (nobody invalidated since Redis started empty): only a token that never
-- learned one (epoch 0) matches. A foreign epoch is removed: the data set's name is lost,
-- so every token that carries one is refused, and the next invalidation names it anew.
if epoch_key then
  local epoch, foreign = own_epoch(epoch_key)
  if foreign then redis.call('DEL', epoch_key) end
  if (epoch or '0') ~= ARGV[5] then return 0 end
end
local secret = own(secret_key, SECRET) or ''
if secret ~= (ARGV[8] or '') then return secret end
-- A foreign counter's value is lost: this write is refused (an invalidation it cannot
-- see may have raised it), and the counter becomes the generation the write saw, which
-- passes writes that began since and refuses older ones.
for i = 3, 2 + counters do
  local g, foreign = own_number(KEYS[i])
  if foreign then
    redis.call('SET', KEYS[i], seen)
    return 0
  end
  if g > seen then return 0 end
end
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, prune)
if #dead > 0 then
  redis.call('HDEL', KEYS[1], unpack(dead))
  redis.call('ZREM', KEYS[2], unpack(dead))
end
local index_field, sub = ARGV[1], ARGV[9]
local value_field = index_field .. ':' .. sub
local function drop(id)
  local f = index_field .. ':' .. id
  redis.call('HDEL', KEYS[1], f)
  redis.call('ZREM', KEYS[2], f)
end
local names, records = parse_index(redis.call('HGET', KEYS[1], index_field))
if names ~= ARGV[10] then
  for _, r in ipairs(records or {}) do
    if string.sub(r, 1, 32) ~= sub then drop(string.sub(r, 1, 32)) end
  end
  records = {}
end
local flag = 'n'
local kept = {}
for _, r in ipairs(records) do
  if string.sub(r, 1, 32) == sub then flag = string.sub(r, 33, 33) else kept[#kept + 1] = r end
end
table.insert(kept, 1, sub .. flag)
while #kept > most do
  local victim = #kept
  for i = #kept, 2, -1 do
    if string.sub(kept[i], 33, 33) == 'n' then victim = i break end
  end
  drop(string.sub(kept[victim], 1, 32))
  table.remove(kept, victim)
end
redis.call('HSET', KEYS[1], index_field,
  string.rep('\0', 24) .. '\0\0\0\0I' .. ARGV[10] .. '\n' .. table.concat(kept))
redis.call('HSET', KEYS[1], value_field, ARGV[2])
redis.call('ZADD', KEYS[2], now + ttl, value_field)
local index_dies = redis.call('ZSCORE', KEYS[2], index_field)
if not index_dies or tonumber(index_dies) < now + ttl then
  redis.call('ZADD', KEYS[2], now + ttl, index_field)
end
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
for i = first_tag, #KEYS do
  local gone = redis.call('SRANDMEMBER', KEYS[i], 2)
  for _, member in ipairs(gone) do
    if member ~= KEYS[1] and redis.call('EXISTS', member) == 0 then
      redis.call('SREM', KEYS[i], member)
    end
  end
  redis.call('SADD', KEYS[i], KEYS[1])
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 1
"#
);

/// Mark one batch of the values of an entry hash soft-invalidated: `HSCAN` from cursor
/// `ARGV[2]` with `COUNT` `ARGV[3]`, and in each value found bytes 9–24 (see `codec.rs`)
/// become `ARGV[1]`, the mark, unless it carries a newer mark already (soft invalidations may
/// interleave their batches). Returns {next cursor ("0" when done), whether the hash was
/// there}. The caller calls again with the cursor: each call does bounded work, however
/// many variants the key has, so Redis never stalls on one (a hash that changes between
/// batches is fine: a value written since was fetched after the mark's generation was
/// drawn, or refused by the write script).
pub(super) const SOFT_SCRIPT: &str = r#"
local count = tonumber(ARGV[3])
if #ARGV[1] ~= 16 or not count or count < 1 then
  return redis.error_reply('ERR tower-response-cache: invalid soft-invalidation arguments')
end
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return {'0', 0} end
if t ~= 'hash' then
  return redis.error_reply('WRONGTYPE tower-response-cache: a foreign value under a cache key')
end
local scan = redis.call('HSCAN', KEYS[1], ARGV[2], 'COUNT', count)
local fields = scan[2]
local function older(current)
  for i = 1, 8 do
    local a, b = string.byte(current, i), string.byte(ARGV[1], i)
    if a ~= b then return a < b end
  end
  return false
end
for i = 1, #fields, 2 do
  local value = fields[i + 1]
  if #value >= 24 and older(string.sub(value, 9, 16)) then
    redis.call('HSET', KEYS[1], fields[i], string.sub(value, 1, 8) .. ARGV[1] .. string.sub(value, 25))
  end
end
return {scan[1], 1}
"#;

/// Raise a counter past where it is and to at least `ARGV[1]`; return the new value.
pub(super) const BUMP_SCRIPT: &str = concat!(
    own_values!(),
    r#"
local g = own_number(KEYS[1]) + 1
local floor = tonumber(ARGV[1])
if g < floor then g = floor end
redis.call('SET', KEYS[1], g)
return g
"#
);

/// Raise a counter to at least `ARGV[1]` (never lower it); return its value.
pub(super) const RAISE_SCRIPT: &str = concat!(
    own_values!(),
    r#"
local g = own_number(KEYS[1])
local floor = tonumber(ARGV[1])
if g < floor then redis.call('SET', KEYS[1], floor) return floor end
return g
"#
);

/// One Redis: draw a new generation from the central counter (`KEYS[1]`), at least `ARGV[5]`,
/// and raise the counters `KEYS[4..]` to it, in one step; the epoch (`KEYS[2]`) is created as
/// `ARGV[1]` when missing or foreign (only invalidations create it: until the first one
/// after Redis started empty, tokens carry epoch 0, which a missing epoch matches). An
/// exact invalidation (`ARGV[4]` = `1`) chose its counter with the bucket secret `ARGV[2]`:
/// the secret (`KEYS[3]`) is created as `ARGV[3]` when missing or foreign, and when it is not
/// `ARGV[2]` nothing is raised and the generation returned is 0 (the caller learns the
/// secret and tries again). Returns {epoch, generation, secret (`''` for none)}.
pub(super) const BUMP_SINGLE_SCRIPT: &str = concat!(
    own_values!(),
    r#"
local e = own_epoch(KEYS[2])
if not e then redis.call('SET', KEYS[2], ARGV[1]) e = ARGV[1] end
local s = own(KEYS[3], SECRET)
if ARGV[4] == '1' then
  if not s then redis.call('SET', KEYS[3], ARGV[3]) s = ARGV[3] end
  if s ~= ARGV[2] then return {tonumber(e), 0, s} end
end
local g = own_number(KEYS[1]) + 1
local floor = tonumber(ARGV[5]) or 0
if g < floor then g = floor end
redis.call('SET', KEYS[1], g)
for i = 4, #KEYS do
  if own_number(KEYS[i]) < g then redis.call('SET', KEYS[i], g) end
end
return {tonumber(e), g, s or ''}
"#
);

/// A cluster's exact invalidation: raise the counter `KEYS[1]` to at least `ARGV[1]`, if it
/// was chosen with the bucket secret `ARGV[2]` (`KEYS[2]`, created as `ARGV[3]` when missing or
/// foreign). Returns {the counter's value, or 0 when the secret differs; the secret}.
pub(super) const RAISE_KEYED_SCRIPT: &str = concat!(
    own_values!(),
    r#"
local s = own(KEYS[2], SECRET)
if not s then redis.call('SET', KEYS[2], ARGV[3]) s = ARGV[3] end
if s ~= ARGV[2] then return {0, s} end
local g = own_number(KEYS[1])
local floor = tonumber(ARGV[1])
if g < floor then redis.call('SET', KEYS[1], floor) g = floor end
return {g, s}
"#
);

/// One Redis after a restart: raise the central and wide counters (`KEYS[1]`, `KEYS[2]`) to at
/// least `ARGV[1]`, so every fetch in flight from before is refused; returns {epoch (0 when
/// there is none yet, `KEYS[3]`; a foreign one is removed), generation}.
pub(super) const RESTORE_SINGLE_SCRIPT: &str = concat!(
    own_values!(),
    r#"
local e, foreign = own_epoch(KEYS[3])
if foreign then redis.call('DEL', KEYS[3]) end
local floor = tonumber(ARGV[1])
local g = own_number(KEYS[1])
if g < floor then redis.call('SET', KEYS[1], floor) g = floor end
if own_number(KEYS[2]) < floor then redis.call('SET', KEYS[2], floor) end
return {tonumber(e or '0'), g}
"#
);
