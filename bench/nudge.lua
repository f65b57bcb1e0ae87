-- wrk script for bench/load.sh. One script, two modes (environment):
--
--   BENCH_MODE=decide         every request is POST /v1/decide
--   BENCH_MODE=decide_reward  decide; each 200 answer queues its event_id and
--                             the thread's next request is
--                             POST /v1/reward {"event_id": …, "reward": 0|1}
--   BENCH_POLICY              policy id sent in the decide body
--   BENCH_RUN                 unique prefix of this run's event ids
--   BENCH_LABEL               label printed on the RESULT line
--   BENCH_FEATURES            number of context features f01..fNN (default 31)
--   BENCH_USERS               if > 0, every decide names a "user" drawn
--                             uniformly from u1..uN (guardrailed policies)
--   BENCH_INFLIGHT_FILE       where done() appends the ids wrk sent but never
--                             saw a 2xx for (in flight when wrk stopped, or
--                             failed), one "<kind>\t<event_id>" a line
--
-- Every decide carries a fresh random context (BENCH_FEATURES numbers drawn
-- uniformly in [-2, 2]) and a unique event id, so each one is a new decision.
-- done() prints one machine-readable line:
--   RESULT label=… requests=… duration_s=… rps=… decide_ok=… … p50_ms=… p99_ms=…

local mode = os.getenv("BENCH_MODE") or "decide"
local policy = os.getenv("BENCH_POLICY") or "bench_linucb"
local run = os.getenv("BENCH_RUN") or "run"
local nfeatures = tonumber(os.getenv("BENCH_FEATURES") or "31")
local users = tonumber(os.getenv("BENCH_USERS") or "0")
-- Track unanswered ids only against Nudge (the bare ceiling echoes no id).
local track = os.getenv("BENCH_INFLIGHT_FILE") ~= nil

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

-- main state: remember the threads so done() can read their counters --------
local threads = {}
local next_id = 1

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

-- thread state ---------------------------------------------------------------
local names = {}
for i = 1, nfeatures do names[i] = string.format('"f%02d":', i) end

local n = 0
decides_sent, decide_ok, rewards_sent, reward_ok, non2xx = 0, 0, 0, 0, 0
statuses = {}          -- status code -> count
errors_seen = ""       -- the first few non-2xx answers, for the report
local errors_kept = 0
outstanding = {}       -- event id -> "decide" | "reward", until its 2xx arrives
local queue, qhead, qtail = {}, 1, 0   -- event ids waiting for their reward

function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
end

local function decide_body(event_id)
  local parts = { '{"policy":"', policy, '","event_id":"', event_id, '",' }
  if users > 0 then
    parts[#parts + 1] = string.format('"user":"u%d",', math.random(1, users))
  end
  parts[#parts + 1] = '"context":{'
  for i = 1, nfeatures do
    if i > 1 then parts[#parts + 1] = "," end
    parts[#parts + 1] = names[i]
    parts[#parts + 1] = string.format("%.4f", math.random() * 4 - 2)
  end
  parts[#parts + 1] = "}}"
  return table.concat(parts)
end

function request()
  if qhead <= qtail then
    local id = queue[qhead]
    queue[qhead] = nil
    qhead = qhead + 1
    rewards_sent = rewards_sent + 1
    if track then outstanding[id] = "reward" end
    return wrk.format("POST", "/v1/reward", nil,
      string.format('{"event_id":"%s","reward":%d}', id, math.random(0, 1)))
  end
  n = n + 1
  local id = string.format("%s-t%d-%d", run, tid or 0, n)
  decides_sent = decides_sent + 1
  if track then outstanding[id] = "decide" end
  return wrk.format("POST", "/v1/decide", nil, decide_body(id))
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 200 then
    decide_ok = decide_ok + 1
    local id = string.match(body, '"event_id":"([^"]+)"')
    if id then
      outstanding[id] = nil
      if mode == "decide_reward" then
        qtail = qtail + 1
        queue[qtail] = id
      end
    end
  elseif status == 202 then
    reward_ok = reward_ok + 1
    local id = string.match(body, '"event_id":"([^"]+)"')
    if id then outstanding[id] = nil end
  else
    non2xx = non2xx + 1
    if errors_kept < 5 then
      errors_kept = errors_kept + 1
      errors_seen = errors_seen .. string.format(" [%d %s]", status,
        string.sub(string.gsub(body or "", "%s+", " "), 1, 300))
    end
  end
end

-- main state again -------------------------------------------------------------
function done(summary, latency, requests)
  local t = { decides_sent = 0, decide_ok = 0, rewards_sent = 0, reward_ok = 0, non2xx = 0 }
  local codes, errs, inflight = {}, "", {}
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + (thread:get(k) or 0) end
    for code, c in pairs(thread:get("statuses") or {}) do
      codes[code] = (codes[code] or 0) + c
    end
    local e = thread:get("errors_seen") or ""
    if e ~= "" then errs = errs .. " t" .. tostring(thread:get("tid")) .. ":" .. e end
    for id, kind in pairs(thread:get("outstanding") or {}) do
      inflight[#inflight + 1] = kind .. "\t" .. id
    end
  end
  local path = os.getenv("BENCH_INFLIGHT_FILE")
  if path then
    local f = assert(io.open(path, "a"))
    for _, line in ipairs(inflight) do f:write(line, "\n") end
    f:close()
  end
  local secs = summary.duration / 1e6
  local code_list = {}
  for code, c in pairs(codes) do code_list[#code_list + 1] = code .. ":" .. c end
  table.sort(code_list)
  local e = summary.errors
  io.write(string.format(
    "RESULT label=%s requests=%d duration_s=%.3f rps=%.1f decide_rps=%.1f " ..
    "decides_sent=%d decide_ok=%d rewards_sent=%d reward_ok=%d non2xx=%d inflight=%d " ..
    "p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f " ..
    "err_connect=%d err_read=%d err_write=%d err_timeout=%d statuses=%s\n",
    os.getenv("BENCH_LABEL") or "run", summary.requests, secs, summary.requests / secs,
    t.decide_ok / secs, t.decides_sent, t.decide_ok, t.rewards_sent, t.reward_ok, t.non2xx,
    #inflight,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    e.connect, e.read, e.write, e.timeout, table.concat(code_list, ",")))
  if errs ~= "" then io.write("ERRORS label=", os.getenv("BENCH_LABEL") or "run", errs, "\n") end
end
