"""The FastAPI application: lifespan (load models, drain on shutdown), body guard, error handlers.

`uvicorn serve.app:app` serves `app`, built from the environment; tests call `create_app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmforge import __version__
from serve.metrics import AccessLog, Metrics, configure_logging
from serve.routes import ApiError, ops, v1
from serve.runtime import InputError, NotServed, Runtime, Unavailable
from serve.settings import Settings

log = logging.getLogger("lmforge.serve")


class ErrorJSON(JSONResponse):
    def render(self, content) -> bytes:
        # ASCII escapes: messages and locations may quote client input, lone surrogates too.
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode()


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[dict] | None = None,
    headers: dict[str, str] | None = None,
) -> ErrorJSON:
    error: dict = {"code": code, "message": message}
    if details:
        error["details"] = details
    return ErrorJSON({"error": error}, status_code=status, headers=headers)


class BodyGuard:
    """ASGI middleware: reads POST bodies up front and refuses what no route could parse.

    Not JSON by Content-Type is a 415, over `max_bytes` a 413 (counted as the bytes arrive,
    so chunked uploads that declare no length stop too), not UTF-8 a 400.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        body, refusal = await self._read(scope, receive)
        if refusal is not None:
            await refusal(scope, receive, send)
        elif body is not None:  # None: the client went away
            await self.app(scope, _replay(body, receive), send)

    async def _read(self, scope: Scope, receive: Receive) -> tuple[bytes | None, ErrorJSON | None]:
        headers = dict(scope["headers"])
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media != b"application/json" and not media.endswith(b"+json"):
            message = "send the body as JSON, with Content-Type: application/json"
            return None, error_response(415, "unsupported_media_type", message)
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return None, self._too_large()
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return None, self._too_large()
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            message = f"the body is not valid UTF-8 (byte {exc.start})"
            return None, error_response(400, "invalid_utf8", message)
        return bytes(body), None

    def _too_large(self) -> ErrorJSON:
        message = f"the body is over {self.max_bytes} bytes (max_body_bytes)"
        return error_response(413, "body_too_large", message)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # later reads wait for the client's disconnect
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def describe(settings: Settings) -> str:
    """The /docs front page: what the service does, its limits, auth and error format."""
    auth = "required" if settings.api_key else "off (set LMFORGE_API_KEY to require it)"
    return f"""Text classification, named-entity recognition and extractive question answering,
served by onnxruntime with dynamic micro-batching; text generation (a GPT-2-style decoder
with its key/value cache, concurrent requests decoded together), optionally streamed.

**Limits** (environment variable in brackets)

| limit | value |
|---|---|
| items (texts or QA items) per request | {settings.max_items} (LMFORGE_MAX_ITEMS) |
| characters per text, question or context | {settings.max_text_chars} (LMFORGE_MAX_TEXT_CHARS) |
| request body | {settings.max_body_bytes} bytes (LMFORGE_MAX_BODY_BYTES) |
| QA question | `max_question_tokens` tokens, listed by /v1/models |
| queued items per task | {settings.max_queue_items} (LMFORGE_MAX_QUEUE_ITEMS), then 503 |
| generation: max_new_tokens | {settings.max_new_tokens} (LMFORGE_MAX_NEW_TOKENS); prompt tokens + max_new_tokens + 1 within the model's positions |
| generation: requests decoded together | {settings.max_streams} (LMFORGE_MAX_STREAMS); later ones wait (queued: LMFORGE_MAX_QUEUE_ITEMS) |

Texts must be non-empty (a generation prompt may be empty). Classification reads the first `max_seq_len` tokens of a text;
NER texts and QA contexts of any length are read in overlapping windows.

**Auth**: `Authorization: Bearer <key>` on /v1 routes: {auth}.

**Errors** are JSON: `{{"error": {{"code", "message", "details"}}}}`; bad input is always a
4xx (400 not JSON or UTF-8, 401 auth, 413 body size, 415 not `application/json`,
422 shape, type or limit).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level)
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings, metrics)
        app.state.runtime = runtime
        # Load in the background so /healthz answers (and /readyz says "loading") meanwhile.
        loading = asyncio.create_task(runtime.load(), name="load-models")
        try:
            yield
        finally:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await runtime.close()

    app = FastAPI(
        title="lmforge",
        version=__version__,
        description=describe(settings),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.runtime = None
    app.include_router(ops)
    app.include_router(v1)
    add_error_handlers(app)
    app.add_middleware(BodyGuard, max_bytes=settings.max_body_bytes)
    # Added last: outermost, sees every status.
    app.add_middleware(AccessLog, metrics=metrics, log_requests=settings.access_log)
    return app


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> ErrorJSON:
        errors = exc.errors()
        broken = next((e for e in errors if e["type"] == "json_invalid"), None)
        if broken is not None:
            reason = broken.get("ctx", {}).get("error", "JSON decode error")
            return error_response(
                400,
                "invalid_json",
                f"the body is not valid JSON: {reason} (at {broken['loc'][-1]})",
            )
        details = [{"loc": _loc(e["loc"]), "message": e["msg"]} for e in errors[:20]]
        first = details[0]
        return error_response(
            422, "invalid_request", f"{first['loc']}: {first['message']}", details
        )

    @app.exception_handler(ApiError)
    async def refused(request: Request, exc: ApiError) -> ErrorJSON:
        return error_response(exc.status, exc.code, str(exc), headers=exc.headers)

    @app.exception_handler(InputError)
    async def unreadable(request: Request, exc: InputError) -> ErrorJSON:
        return error_response(422, exc.code, str(exc))

    @app.exception_handler(NotServed)
    async def not_served(request: Request, exc: NotServed) -> ErrorJSON:
        return error_response(404, "task_not_served", str(exc))

    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, exc: Unavailable) -> ErrorJSON:
        # A failed model stays failed until a restart; everything else is worth a retry.
        retry = None if exc.code == "model_unavailable" else {"Retry-After": "1"}
        return error_response(503, exc.code, str(exc), headers=retry)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> ErrorJSON:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> ErrorJSON:
        log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
        return error_response(500, "internal_error", "internal error; see the server log")


def _loc(loc: tuple) -> str:
    parts = [str(p) for p in loc[1:]] if loc and loc[0] == "body" else [str(p) for p in loc]
    return ".".join(parts) or "body"


app = create_app()
