-- One registration of about 100 bytes per request, each thread on its own instance ids.
local counter = 0
local thread_id = 0

function setup(thread)
  thread_id = thread_id + 1
  thread:set("prefix", "t" .. thread_id)
end

request = function()
  counter = counter + 1
  local body = '{"address":"10.1.2.3","port":8080,"tags":["bench"],"version":"v' .. counter .. '-padding-to-100-bytes"}'
  return wrk.format("PUT", "/v1/services/bench/instances/" .. prefix .. "-" .. (counter % 1000), {["content-type"] = "application/json"}, body)
end
