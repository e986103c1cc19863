"""The Starlette ASGI app: /v1/chat/completions, /v1/completions, /v1/models, /health.

A handler parses and validates the body (`protocol`), submits the job to the `batcher` and
awaits its future without blocking the event loop. Every refusal is an OpenAI error object with
its status (400 bad input, 404 unknown route, 429 full queue, 503 shutting down, 500 a failed
batch); an unexpected exception in a handler is logged and answered 500, and the server goes on.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable

from starlette import applications
from starlette import requests as requests_lib
from starlette import responses as responses_lib
from starlette import routing

from treasure_jax.decode import runner
from treasure_jax.serve import batcher as batcher_lib
from treasure_jax.serve import protocol
from treasure_jax.serve import responses


def _error(e: protocol.ApiError) -> responses_lib.JSONResponse:
  headers = {"Retry-After": "1"} if e.status in (429, 503) else None
  return responses_lib.JSONResponse(e.body(), status_code=e.status, headers=headers)


def _completion_route(decoder: runner.Decoder, batcher: batcher_lib.Batcher,
                      limits: protocol.Limits, model_name: str,
                      make_job: Callable[..., protocol.Job]):
  async def handle(request: requests_lib.Request) -> responses_lib.Response:
    try:
      body = protocol.parse_json(await request.body())
      job = make_job(body, decoder, limits)
      if not job.model:
        job = _with_model(job, model_name)
      results = await asyncio.wrap_future(batcher.submit(job))
    except protocol.ApiError as e:
      return _error(e)
    except Exception as e:  # A bug must not take the server down; the client gets a 500.
      logging.exception("serve: request failed")
      return _error(protocol.ApiError(500, f"internal error: {type(e).__name__}: {e}",
                                      type="server_error"))
    if job.stream:
      return responses_lib.StreamingResponse(responses.events(job, results),
                                             media_type="text/event-stream")
    return responses_lib.JSONResponse(responses.body(job, results))
  return handle


def _with_model(job: protocol.Job, name: str) -> protocol.Job:
  return dataclasses.replace(job, model=name)


def build(decoder: runner.Decoder, batcher: batcher_lib.Batcher, *, model_name: str,
          limits: protocol.Limits = protocol.Limits()) -> applications.Starlette:
  """The app around a started `batcher`; closing the batcher is the caller's."""
  created = int(time.time())

  async def models(request: requests_lib.Request) -> responses_lib.Response:
    del request
    return responses_lib.JSONResponse({"object": "list", "data": [
        {"id": model_name, "object": "model", "created": created, "owned_by": "treasure-jax"}]})

  async def health(request: requests_lib.Request) -> responses_lib.Response:
    del request
    return responses_lib.JSONResponse({
        "status": "ok", "model": model_name, "queued": batcher.queued(),
        "max_queue": batcher.cfg.max_queue, **batcher.counts})

  async def not_found(request: requests_lib.Request, exc: Exception) -> responses_lib.Response:
    del exc
    return _error(protocol.ApiError(404, f"no route {request.method} {request.url.path}",
                                    code="not_found"))

  async def not_allowed(request: requests_lib.Request, exc: Exception) -> responses_lib.Response:
    del exc
    return _error(protocol.ApiError(405, f"{request.method} is not allowed on "
                                    f"{request.url.path}", code="method_not_allowed"))

  route = lambda make: _completion_route(decoder, batcher, limits, model_name, make)
  return applications.Starlette(
      routes=[routing.Route("/v1/chat/completions", route(protocol.chat_job), methods=["POST"]),
              routing.Route("/v1/completions", route(protocol.completion_job), methods=["POST"]),
              routing.Route("/v1/models", models, methods=["GET"]),
              routing.Route("/health", health, methods=["GET"])],
      exception_handlers={404: not_found, 405: not_allowed})
