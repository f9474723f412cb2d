-- The benchmark's load inside wrk: one request at a time per connection, each to a random user.
--
-- Run by dbpatterns/wrkload.py as
--   wrk -t C -c C -d Ns -s wrkload.lua URL -- WORKLOAD USERS_FILE DELTA SEED
-- with one thread per connection: a thread's connection then has exactly one request in flight,
-- so the response wrk hands to response() answers the last request this thread built, and the
-- credits it acknowledged can be booked to that request's user. The ledger check needs them:
-- the sum of acknowledged credits per user must equal what the database holds.
--
-- wrk stops at its deadline with up to one request per connection still unanswered; Restate
-- goes on with those calls. Each thread keeps the user of its unanswered request, so the ledger
-- check can allow exactly these: each of them applied once or not at all.
--
-- done() prints lines starting with "dbpatterns " on stdout for wrkload.py to read.

local workload, delta
local users = {}
local last_user = nil
local last_delta = 0
pending = ""  -- the user of the request in flight, "" if none
ok = 0
failed = 0
acked = {}
samples = {}

local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("id", next_id)
  table.insert(threads, thread)
end

function init(args)
  workload = args[1]
  delta = tonumber(args[3])
  for line in io.lines(args[2]) do
    if #line > 0 then table.insert(users, line) end
  end
  math.randomseed(tonumber(args[4]) * 1000 + id)
end

local json_headers = { ["Content-Type"] = "application/json" }

function request()
  local user = users[math.random(#users)]
  last_user = user
  pending = user
  if workload == "baseline.noop" then
    last_delta = 0
    return wrk.format("POST", "/baseline/noop", nil, "")
  elseif workload == "simple.read" or workload == "simple.durableRead" then
    last_delta = 0
    local handler = workload == "simple.read" and "read" or "durableRead"
    return wrk.format("POST", "/simple/" .. handler, json_headers, '"' .. user .. '"')
  elseif workload == "keyed.update" or workload == "keyed.updateConditional" then
    last_delta = delta
    local handler = workload == "keyed.update" and "update" or "updateConditional"
    return wrk.format("POST", "/keyed/" .. user .. "/" .. handler, json_headers, tostring(delta))
  else -- idempotency.update, twoPhaseCommit.update
    last_delta = delta
    local path = workload == "idempotency.update" and "/idempotency/update"
      or "/twoPhaseCommit/update"
    local body = '{"userId": "' .. user .. '", "addCredits": ' .. delta .. '}'
    return wrk.format("POST", path, json_headers, body)
  end
end

function response(status, headers, body)
  pending = ""
  if status == 200 then
    ok = ok + 1
    if last_delta ~= 0 then
      acked[last_user] = (acked[last_user] or 0) + last_delta
    end
  else
    failed = failed + 1
    if #samples < 5 then
      table.insert(samples, "HTTP " .. status .. ": " .. string.sub(body or "", 1, 300))
    end
  end
end

function done(summary, latency, requests)
  local total_ok, total_failed = 0, 0
  for _, thread in ipairs(threads) do
    total_ok = total_ok + thread:get("ok")
    total_failed = total_failed + thread:get("failed")
    for user, n in pairs(thread:get("acked")) do
      io.write("dbpatterns acked ", user, " ", n, "\n")
    end
    local user = thread:get("pending")
    if user ~= "" then io.write("dbpatterns pending ", user, "\n") end
    for _, sample in ipairs(thread:get("samples")) do
      io.write("dbpatterns sample ", (string.gsub(sample, "[\r\n]", " ")), "\n")
    end
  end
  local e = summary.errors
  io.write(string.format("dbpatterns ok %d\n", total_ok))
  io.write(string.format("dbpatterns failed %d\n", total_failed))
  io.write(string.format("dbpatterns socket_errors %d\n",
    e.connect + e.read + e.write + e.timeout))
  io.write(string.format("dbpatterns elapsed_us %d\n", summary.duration))
  for _, p in ipairs({ 50, 95, 99 }) do
    io.write(string.format("dbpatterns p%d_us %d\n", p, latency:percentile(p)))
  end
  io.write(string.format("dbpatterns max_us %d\n", latency.max))
end
