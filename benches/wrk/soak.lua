-- Soak mix: valid tokens, tokens being revoked during the run, invalid
-- tokens; counts answers by status per thread and prints them at the end.
-- Token files (one a line): $SOAK_DIR/valid.txt, doomed.txt, invalid.txt.
local dir = os.getenv("SOAK_DIR") or "/tmp/gatehouse-soak"
local function lines(name)
  local t = {}
  for l in io.lines(dir .. "/" .. name) do
    if #l > 0 then t[#t + 1] = l end
  end
  return t
end

local threads = {}
function setup(thread)
  thread:set("id", #threads + 1)
  threads[#threads + 1] = thread
end

function init(args)
  valid, doomed, invalid = lines("valid.txt"), lines("doomed.txt"), lines("invalid.txt")
  counts = {}
  math.randomseed(os.time() + id * 7919)
end

function request()
  local r = math.random(100)
  local t
  if r <= 60 then
    t = valid[math.random(#valid)]
  elseif r <= 90 then
    t = doomed[math.random(#doomed)]
  else
    t = invalid[math.random(#invalid)]
  end
  return wrk.format("GET", "/soak", { ["Authorization"] = "Bearer " .. t })
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, th in ipairs(threads) do
    for s, n in pairs(th:get("counts")) do
      total[s] = (total[s] or 0) + n
    end
  end
  io.write("status counts:")
  for s, n in pairs(total) do
    io.write(string.format(" %d=%d", s, n))
  end
  io.write("\n")
  io.write(string.format("p50 %.2f ms  p99 %.2f ms  max %.2f ms\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
