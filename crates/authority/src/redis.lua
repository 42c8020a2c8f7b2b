-- Every write of the Redis store (and the feed's read of the change log)
-- runs as this one script, so each is atomic across authority replicas:
-- two replicas moving the same subject's `before`, or admitting logins
-- against the same session limit, cannot interleave.
--
-- Keys (all under the prefix ARGV[1]):
--   entries  hash   natural key -> Revocation JSON
--   byid     hash   id -> natural key
--   expiry   zset   natural key scored by expires_at
--   log      stream change log; its entry ids are the feed cursors
--   last     string id of the newest log entry
--   floor    string id of the newest log entry trimmed away
--   nextid   string id counter
--   audit    stream un-revocations
--   sess:<issuer>\0<sub>  zset sid scored by arrival (sessseq + 1e10;
--                          older data: by started_at, which sorts first)
--   sess:<issuer>\0<sub>\0t  zset sid scored by started_at (expiry)
--   sessseq  string arrival counter of sessions
local P = ARGV[1]
local op = ARGV[2]
local E, B, X, L = P .. 'entries', P .. 'byid', P .. 'expiry', P .. 'log'

-- Filled in from `Kind::has_before` when the script is loaded
-- (`redis_store.rs`): the kinds whose entries carry a `before` time.
local KINDS_WITH_BEFORE = { --[[kinds with before]] }

local function has_before(kind)
  return KINDS_WITH_BEFORE[kind] == true
end

local function id_parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function id_less(a, b)
  local am, as = id_parts(a)
  local bm, bs = id_parts(b)
  return am < bm or (am == bm and as < bs)
end

local function log(change)
  local id = redis.call('XADD', L, '*', 'c', change)
  redis.call('SET', P .. 'last', id)
  return id
end

-- Adds or strengthens one entry; returns its JSON and what happened.
local function put_one(key, rev)
  local old = redis.call('HGET', E, key)
  local enc, outcome, exp
  local o = old and cjson.decode(old)
  if o and o.expires_at <= rev.created_at then
    -- Past its expiry but not purged yet: gone for every gateway, so
    -- revoking again creates it anew.
    redis.call('HDEL', B, o.id)
    redis.call('HDEL', P .. 'committed', o.id)
    old = nil
  end
  if old then
    -- Unchanged only when the new entry neither moves `before` forward
    -- nor lives longer (a revocation without expires_at after a short one
    -- must extend it).
    local moves = has_before(rev.kind) and (o.before == nil or rev.before > o.before)
    if not moves and rev.expires_at <= o.expires_at then
      return old, 'unchanged'
    end
    -- `before` only moves forward; the entry lives as long as the
    -- latest token it can match.
    if moves then
      o.before = rev.before
    end
    o.reason = rev.reason
    o.created_at = rev.created_at
    if rev.expires_at > o.expires_at then
      o.expires_at = rev.expires_at
    end
    exp = o.expires_at
    enc = cjson.encode(o)
    outcome = 'updated'
  else
    rev.id = redis.call('INCR', P .. 'nextid')
    exp = rev.expires_at
    enc = cjson.encode(rev)
    redis.call('HSET', B, rev.id, key)
    outcome = 'created'
  end
  redis.call('HSET', E, key, enc)
  redis.call('ZADD', X, exp, key)
  local pos = log('{"op":"put",' .. string.sub(enc, 2))
  -- Where each entry was last written, for receipts.
  redis.call('HSET', P .. 'committed', cjson.decode(enc).id, pos)
  return enc, outcome
end

local function last()
  return redis.call('GET', P .. 'last') or '0-0'
end

if op == 'put' then
  -- ARGV[3]: [[natural key, revocation without id], ...]
  local out = { '' }
  for _, item in ipairs(cjson.decode(ARGV[3])) do
    local enc, outcome = put_one(item[1], item[2])
    table.insert(out, enc)
    table.insert(out, outcome)
  end
  out[1] = last()
  return out
elseif op == 'session' then
  -- ARGV[3..9]: issuer, sub, sid, started_at, limit, now, max_lifetime
  local iss, sub, sid = ARGV[3], ARGV[4], ARGV[5]
  local started, limit = tonumber(ARGV[6]), tonumber(ARGV[7])
  local now, life = tonumber(ARGV[8]), tonumber(ARGV[9])
  local SK = P .. 'sess:' .. iss .. '\0' .. sub
  local TK = SK .. '\0t'
  -- Sessions older than any token lifetime are gone anyway.
  for _, s in ipairs(redis.call('ZRANGEBYSCORE', TK, '-inf', now - life)) do
    redis.call('ZREM', SK, s)
  end
  redis.call('ZREMRANGEBYSCORE', TK, '-inf', now - life)
  redis.call('ZREMRANGEBYSCORE', SK, '-inf', now - life)
  -- Ordered by arrival at the store, like the embedded store: whole-second
  -- start times tie, and the sid's spelling must not decide.
  if not redis.call('ZSCORE', SK, sid) then
    local seq = redis.call('INCR', P .. 'sessseq') + 10000000000
    redis.call('ZADD', SK, seq, sid)
    redis.call('ZADD', TK, started, sid)
  end
  redis.call('EXPIRE', SK, life)
  redis.call('EXPIRE', TK, life)
  local out = { '' }
  local over = redis.call('ZCARD', SK) - limit
  if over > 0 then
    local popped = redis.call('ZPOPMIN', SK, over)
    for i = 1, #popped, 2 do
      local s = popped[i]
      redis.call('ZREM', TK, s)
      local rev = {
        issuer = iss, kind = 'sid', value = s, reason = 'replaced',
        created_at = now, expires_at = now + life,
      }
      local enc, outcome = put_one('sid\0' .. iss .. '\0' .. s, rev)
      table.insert(out, enc)
      table.insert(out, outcome)
    end
  end
  out[1] = last()
  return out
elseif op == 'delete' then
  -- ARGV[3]: id; ARGV[4]: the audit record's JSON, without its closing brace
  local key = redis.call('HGET', B, ARGV[3])
  if not key then
    return {}
  end
  redis.call('HDEL', B, ARGV[3])
  redis.call('HDEL', P .. 'committed', ARGV[3])
  local rev = redis.call('HGET', E, key)
  if not rev then
    return {}
  end
  redis.call('HDEL', E, key)
  redis.call('ZREM', X, key)
  local id = log('{"op":"del",' .. string.sub(rev, 2))
  redis.call('XADD', P .. 'audit', 'MAXLEN', '~', 100000, '*', 'r', ARGV[4] .. ',"entry":' .. rev .. '}')
  return { id, rev }
elseif op == 'purge' then
  -- ARGV[3..6]: now, change records to keep, log ms older than which go, batch
  local now, keep = tonumber(ARGV[3]), tonumber(ARGV[4])
  local min_ms, batch = tonumber(ARGV[5]), tonumber(ARGV[6])
  local due = redis.call('ZRANGEBYSCORE', X, '-inf', '(' .. now, 'LIMIT', 0, batch)
  local removed = 0
  for _, key in ipairs(due) do
    local rev = redis.call('HGET', E, key)
    if rev then
      local gone = cjson.decode(rev).id
      redis.call('HDEL', B, gone)
      redis.call('HDEL', P .. 'committed', gone)
      redis.call('HDEL', E, key)
      removed = removed + 1
    end
    redis.call('ZREM', X, key)
  end
  -- Change records beyond the retention, or older than any token they
  -- could concern, go; `floor` remembers the newest one gone, so a
  -- cursor before it gets a snapshot.
  local upto = nil
  local n = math.min(math.max(redis.call('XLEN', L) - keep, 0), batch)
  if n > 0 then
    local r = redis.call('XRANGE', L, '-', '+', 'COUNT', n)
    upto = r[#r][1]
  end
  if min_ms > 0 then
    local r = redis.call('XRANGE', L, '-', tostring(min_ms - 1), 'COUNT', batch)
    if #r > 0 and (upto == nil or id_less(upto, r[#r][1])) then
      upto = r[#r][1]
    end
  end
  if upto then
    local nxt = redis.call('XRANGE', L, '(' .. upto, '+', 'COUNT', 1)
    if #nxt > 0 then
      redis.call('XTRIM', L, 'MINID', nxt[1][1])
    else
      redis.call('XTRIM', L, 'MAXLEN', 0)
    end
    local floor = redis.call('GET', P .. 'floor')
    if not floor or id_less(floor, upto) then
      redis.call('SET', P .. 'floor', upto)
    end
  end
  return { removed, #due }
elseif op == 'epoch' then
  -- ARGV[3]: a new epoch, taken if the store has none (Redis was wiped).
  -- Returns the epoch and the newest log id, read together (a snapshot's
  -- cursor).
  local epoch = redis.call('GET', P .. 'epoch')
  if not epoch then
    epoch = ARGV[3]
    redis.call('SET', P .. 'epoch', epoch)
  end
  return { epoch, last() }
elseif op == 'changes' then
  -- ARGV[3]: since (a log id); ARGV[4]: most records to return; ARGV[5]:
  -- a new epoch, taken if the store has none (Redis was wiped) or if
  -- `since` of epoch ARGV[6] is past the log's end (Redis went back in
  -- time: restored, or a replica promoted without the latest writes), so
  -- no log id is handed out twice in one epoch.
  -- Returns epoch, last, floor, then id and change of each record.
  local epoch = redis.call('GET', P .. 'epoch')
  if not epoch or (epoch == ARGV[6] and id_less(last(), ARGV[3])) then
    epoch = ARGV[5]
    redis.call('SET', P .. 'epoch', epoch)
  end
  local out = {
    epoch,
    last(),
    redis.call('GET', P .. 'floor') or '0-0',
  }
  for _, e in ipairs(redis.call('XRANGE', L, '(' .. ARGV[3], '+', 'COUNT', tonumber(ARGV[4]))) do
    table.insert(out, e[1])
    table.insert(out, e[2][2])
  end
  return out
end
return redis.error_reply('unknown op ' .. tostring(op))
