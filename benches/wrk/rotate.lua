-- wrk script: each request carries the next token from a file (one a
-- line), so the gateway sees many distinct tokens in rotation.
--   TOKENS_FILE=tokens.txt wrk -s rotate.lua ...
local tokens = {}
local i = 0
local path = os.getenv("TOKENS_FILE")
for line in io.lines(path) do
  if #line > 0 then tokens[#tokens + 1] = line end
end

function setup(thread)
  thread:set("offset", math.random(#tokens))
end

request = function()
  i = i + 1
  local t = tokens[((i + (offset or 0)) % #tokens) + 1]
  return wrk.format("GET", "/", { ["Authorization"] = "Bearer " .. t })
end
