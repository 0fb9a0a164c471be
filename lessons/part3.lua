-- The sample config for lessons part 3 to 7 (`make run-3` … `run-7`; `make run-6` reads
-- lessons/part6.lua, which lists several backends).
-- It is a Lua chunk run with no standard library: it may only set variables.
-- The proxy reads three globals, as the C did. They are strings because the C handed
-- them to getaddrinfo; numbers work too (Lua converts them), so `listenPort = 8000` is fine.

-- The port the proxy listens on (127.0.0.1 only; "0" asks the kernel for a free one).
listenPort = "8000"

-- Where the one backend is: `make backend` runs the demo backend on 127.0.0.1:8888.
backendAddress = "127.0.0.1"
backendPort = "8888"
