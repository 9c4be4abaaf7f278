-- wrk script: POST /enqueue as multipart with a JPEG whose bytes differ on every request
-- (a unique JPEG comment segment after SOI), so each upload is a new object, never a dedup hit.
-- Environment: BENCH_KEY (API key), BENCH_IMAGE (path to a JPEG).
local key = os.getenv("BENCH_KEY")
local f = assert(io.open(os.getenv("BENCH_IMAGE"), "rb"))
local jpeg = f:read("*a")
f:close()
assert(jpeg:sub(1, 2) == "\255\216", "BENCH_IMAGE must be a JPEG")

local boundary = "platescorebenchboundary"
local head = "--" .. boundary .. "\r\n" ..
  'Content-Disposition: form-data; name="image"; filename="meal.jpg"\r\n' ..
  "Content-Type: image/jpeg\r\n\r\n\255\216"
local tail = jpeg:sub(3) .. "\r\n--" .. boundary .. "--\r\n"
local counter = 0
local thread_tag = tostring(math.random(1, 1e9))

wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. key
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary

request = function()
  counter = counter + 1
  local comment = thread_tag .. "-" .. counter
  -- COM segment: FF FE, 2-byte big-endian length (including itself), the text.
  local len = #comment + 2
  local segment = "\255\254" .. string.char(math.floor(len / 256), len % 256) .. comment
  return wrk.format(nil, "/enqueue", nil, head .. segment .. tail)
end

local statuses = {}
response = function(status)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function(summary, latency, requests)
  io.write(string.format("requests/s: %.0f\n", summary.requests / (summary.duration / 1e6)))
  for _, p in ipairs({50, 90, 99, 99.9}) do
    io.write(string.format("p%s: %.2f ms\n", p, latency:percentile(p) / 1000))
  end
  io.write(string.format("non-2xx or errors: %d\n", summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
