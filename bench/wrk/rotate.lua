-- Rotates access tokens over the requests of a wrk run.
--
--   wrk -t2 -c64 -d10s -s bench/wrk/rotate.lua URL -- TOKENS MODE TAG THREADS
--
-- TOKENS: one "<token>\t<scope>" line per token. Each wrk thread takes every THREADS-th
-- line (its own slice) and cycles through it; `wraps` counts how often a thread started its
-- slice again (a cold-token run must show 0: no token seen twice).
-- MODE:
--   get         GET URL with "Authorization: Bearer <token>"
--   post        POST a new patient (a unique identifier per request) with the token
--   floor_get   as get, plus "X-Bench-Scope: <scope>" (the floor has no auth to find it)
--   floor_post  as post, plus "X-Bench-Scope: <scope>"
--   cookie_get  GET URL with "Cookie: __Host-bff_session=<token>" and "X-CSRF: 1" (the
--               lines hold session cookies instead of access tokens: bench/harness/sessions.py)
--   dpop_get    GET URL with "Authorization: DPoP <token>" and "DPoP: <proof>" (the lines
--               hold "<token>\t<proof>", each proof good once: bench/harness/proofs.py)
-- TAG makes identifiers unique across runs. At the end one line "BENCH_JSON {...}" holds
-- the counts and latency percentiles (microseconds) for the harness.

local threads = {}
local next_id = 1

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local tokens, scopes, prepared = {}, {}, nil
local count, position, serial = 0, 0, 0
local mode, tag
wraps = 0

local given = { "Ana", "Björn", "Chloé", "Dmitri", "Émile", "Fatima", "Grace", "Hiroshi",
  "Ingrid", "João", "Kwame", "Łucja", "Mei", "Nikolai", "Olivia", "Priya" }
local family = { "Smith", "Müller", "García", "Nguyễn", "O'Brien", "Kowalski", "Rossi",
  "Dubois", "Tanaka", "Öztürk", "Okafor", "Silva", "Haddad", "Jensen", "Murphy", "Patel" }

function init(args)
  local path = args[1]
  mode = args[2] or "get"
  tag = args[3] or "run"
  local stride = tonumber(args[4] or "1")
  local line_no = 0
  for line in io.lines(path) do
    if line_no % stride == id - 1 then
      local token, scope = line:match("^([^\t]+)\t(.*)$")
      count = count + 1
      tokens[count], scopes[count] = token, scope
    end
    line_no = line_no + 1
  end
  if count == 0 then
    error("no tokens for thread " .. id .. " in " .. path)
  end
  if mode == "get" or mode == "floor_get" or mode == "cookie_get" or mode == "dpop_get" then
    prepared = {}
    for i = 1, count do
      local headers = { ["Authorization"] = "Bearer " .. tokens[i] }
      if mode == "cookie_get" then
        headers = { ["Cookie"] = "__Host-bff_session=" .. tokens[i], ["X-CSRF"] = "1" }
      end
      if mode == "dpop_get" then
        headers = { ["Authorization"] = "DPoP " .. tokens[i], ["DPoP"] = scopes[i] }
      end
      if mode == "floor_get" then
        headers["X-Bench-Scope"] = scopes[i]
      end
      prepared[i] = wrk.format("GET", nil, headers, nil)
    end
  end
end

local function advance()
  position = position + 1
  if position > count then
    position = 1
    wraps = wraps + 1
  end
  return position
end

function request()
  local i = advance()
  if prepared then
    return prepared[i]
  end
  serial = serial + 1
  local body = string.format(
    '{"given_name":"%s","family_name":"%s","birth_date":"%04d-%02d-%02d","gender":"%s",'
      .. '"identifier":{"system":"https://hospital.example.org/fhir/mrn","value":"%s-%d-%d"}}',
    given[serial % #given + 1], family[(serial * 7) % #family + 1],
    1940 + serial % 80, 1 + serial % 12, 1 + serial % 28,
    (serial % 2 == 0) and "female" or "male", tag, id, serial)
  local headers = {
    ["Authorization"] = "Bearer " .. tokens[i],
    ["Content-Type"] = "application/json",
  }
  if mode == "floor_post" then
    headers["X-Bench-Scope"] = scopes[i]
  end
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  local total_wraps = 0
  for _, thread in ipairs(threads) do
    total_wraps = total_wraps + (thread:get("wraps") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,'
      .. '"status":%d,"timeout":%d,"p50":%d,"p95":%d,"p99":%d,"max":%d,"mean":%.1f,'
      .. '"wraps":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max,
    latency.mean, total_wraps))
end
