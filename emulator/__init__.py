"""A local emulator of the Valence emotion API and the Valsea prosody API.

It speaks both providers' HTTP protocols and Valence's Socket.IO streaming protocol (checked
by running the public `valenceai` SDK, unchanged, against it) so tests, benchmarks and the demo
need no network and no keys. Its answers are deterministic functions of the audio (energy and a
crude pitch estimate per segment); they are NOT an emotion model and say nothing about how
anyone feels.

Run it: `VALENCE_API_KEY=K VALSEA_API_KEY=K2 valence-pipeline emulator --port 0 --time-scale 60`
prints one line, `emulator listening on http://127.0.0.1:PORT`, then serves until SIGTERM.
From Python, `emulator.process.EmulatorProcess` does that in a child process.

Modules (the emulator shares only the protocol models, `valence_client.models` and
`valence_client.stream_protocol`, with the client):

- `cli`        the `emulator` sub-command and its flags
- `config`     `EmulatorConfig`, everything it can be told
- `server`     uvicorn, the port announcement
- `app`        `create_app` / `build_asgi`: routes of both providers and the admin API
- `streaming`  the Socket.IO endpoint (`/socket.io/`): auth, 5 s windows, warnings, limits
- `gate`       auth, rate limits, fault injection and the request log, around every request
- `state`      async requests, Valsea jobs, credits, the billing ledger (no HTTP)
- `storage`    part storage: our disk behind HMAC-signed URLs, or a real S3
- `audio`      decoding in blocks and the stand-in predictions
- `ratelimit`, `faults`, `clock`   the emulator's own limiter, faults and emulated clock
- `process`    `EmulatorProcess` for tests and the demo
"""
