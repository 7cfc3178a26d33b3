-- Heartbeats cycling over COUNT registered instances hb-0 .. hb-(COUNT-1) of service hb;
-- each thread starts at its own offset.
local count = tonumber(os.getenv("COUNT") or "1000")
local counter = 0
local thread_id = 0
local headers = { ["content-type"] = "application/json" }

function setup(thread)
  thread_id = thread_id + 1
  thread:set("offset", thread_id * 499)
end

request = function()
  counter = counter + 1
  local path = "/v1/services/hb/instances/hb-" .. ((offset + counter) % count) .. "/heartbeat"
  return wrk.format("PUT", path, headers, "{}")
end
