"""`treasure-jax serve`: an OpenAI-compatible HTTP server where markers are request fields.

protocol (request bodies -> validated `Job`s, OpenAI-style errors), batcher (bounded queue,
concurrent requests grouped into the compiled decode loop), responses (completion and SSE
bodies), app (the Starlette routes), server (`run` and a thread server for tests/benchmarks).
"""
