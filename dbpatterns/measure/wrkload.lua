-- The benchmark's load inside wrk: one request at a time per connection, each to a random user.
--
-- Run by dbpatterns/measure/wrkload.py as
--   wrk -t C -c C -d Ns -s wrkload.lua URL -- PATH BODY USERS_FILE DELTA SEED
-- where PATH and BODY are one request of the workload (dbpatterns.measure.loadgen.target) with USER in
-- place of the user id, and DELTA the credits one call adds.
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

USER = "@USER@"  -- the mark wrkload.py puts where the user id goes

local path_template, body_template, delta
local users = {}
local last_user = nil
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
  path_template, body_template = args[1], args[2]
  delta = tonumber(args[4])
  for line in io.lines(args[3]) do
    if #line > 0 then table.insert(users, line) end
  end
  math.randomseed(tonumber(args[5]) * 1000 + id)
end

local json_headers = { ["Content-Type"] = "application/json" }

local function for_user(template, user)
  return (string.gsub(template, USER, (string.gsub(user, "%%", "%%%%"))))
end

function request()
  local user = users[math.random(#users)]
  last_user = user
  pending = user
  local body = for_user(body_template, user)
  return wrk.format("POST", for_user(path_template, user), body ~= "" and json_headers or nil, body)
end

function response(status, headers, body)
  pending = ""
  if status == 200 then
    ok = ok + 1
    if delta ~= 0 then
      acked[last_user] = (acked[last_user] or 0) + delta
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
