-- One registration of about 100 bytes per request, each on a new instance id so that the
-- registry grows, up to KEYSPACE ids per wrk thread (then ids are registered again);
-- instances spread over 64 services. TTL 24h: none expires during the run.
-- Env: PREFIX (distinct per run, so that runs add instances), KEYSPACE (default 3000).
local run = os.getenv("PREFIX") or "r"
local keyspace = tonumber(os.getenv("KEYSPACE") or "3000")
local counter = 0
local thread_id = 0
local headers = { ["content-type"] = "application/json" }

function setup(thread)
  thread_id = thread_id + 1
  thread:set("prefix", run .. "-t" .. thread_id)
end

request = function()
  counter = counter + 1
  local n = counter % keyspace
  local body = '{"address":"10.1.2.3","port":8080,"tags":["bench","zone-a","canary"],"ttl":"24h","version":"v' .. counter .. '"}'
  local path = "/v1/services/reg-" .. (n % 64) .. "/instances/" .. prefix .. "-" .. n
  return wrk.format("PUT", path, headers, body)
end
