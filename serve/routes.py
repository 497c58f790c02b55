"""HTTP routes: probes and metrics, and the /v1 inference API behind an optional API key.

Routes check the request limits from Settings and hand the work to the Runtime.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serve.generator import Job, Sampling
from serve.runtime import Runtime, Unavailable
from serve.schemas import (
    CLASSIFY_EXAMPLES,
    GENERATE_EXAMPLES,
    NER_EXAMPLES,
    QA_EXAMPLES,
    ClassifyResponse,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    Health,
    ModelInfo,
    NerResponse,
    QaRequest,
    QaResponse,
    Readiness,
    TextsRequest,
)
from serve.settings import Settings


class ApiError(Exception):
    """A request the routes refuse: HTTP status, machine-readable code, message."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers


# Dependencies are `async def`: FastAPI runs plain `def` ones in its thread pool, which
# cost two thread hand-offs per request for what are attribute lookups.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_runtime(request: Request) -> Runtime:
    runtime = request.app.state.runtime
    if runtime is None:  # the lifespan has not started yet (or the server runs without one)
        raise Unavailable("starting", "the service is starting")
    return runtime


bearer = HTTPBearer(auto_error=False, description="Needed when LMFORGE_API_KEY is set.")


async def require_api_key(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials else b""
    # compare_digest takes as long for a near miss as for a wild guess: no timing oracle.
    if not hmac.compare_digest(given, expected):
        raise ApiError(
            401,
            "unauthorized",
            "missing or wrong API key: send Authorization: Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )


def check_limits(settings: Settings, field: str, count: int, texts: dict[str, str]) -> None:
    """`count` items of `field` in one request; `texts` maps each text's location to it."""
    if count > settings.max_items:
        raise ApiError(
            422,
            "too_many_items",
            f"{field} has {count} items; the limit is {settings.max_items} per request (max_items)",
        )
    for loc, text in texts.items():
        if len(text) > settings.max_text_chars:
            raise ApiError(
                422,
                "text_too_long",
                f"{loc} has {len(text)} characters; the limit is {settings.max_text_chars} "
                "(max_text_chars)",
            )


ERRORS = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "The body is not JSON or not UTF-8.",
        401: "LMFORGE_API_KEY is set and the request lacks `Authorization: Bearer <key>`.",
        404: "The task is not served (LMFORGE_TASKS).",
        413: "The body is over max_body_bytes.",
        415: "The Content-Type is not application/json.",
        422: "Wrong shape or type, empty text, or over a limit; `code` says which.",
        503: "The model is loading or failed to load, the queue is full, or shutting down.",
    }.items()
}

ops = APIRouter(tags=["operations"])
v1 = APIRouter(
    prefix="/v1", tags=["inference"], dependencies=[Depends(require_api_key)], responses=ERRORS
)
SettingsDep = Annotated[Settings, Depends(get_settings)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


@ops.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health()


@ops.get(
    "/readyz",
    summary="Readiness: every model loaded and checked",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready; `models` says why."}},
)
async def readyz(request: Request) -> Readiness | JSONResponse:
    runtime: Runtime | None = request.app.state.runtime
    if runtime is None:
        return JSONResponse({"status": "loading", "models": {}}, status_code=503)
    models = runtime.status()
    if runtime.ready():
        return Readiness(status="ready", models=models)
    states = {m["status"] for m in models.values()}
    status = "draining" if runtime.draining else "loading" if "loading" in states else "unavailable"
    body = Readiness(status=status, models=models).model_dump()
    return JSONResponse(body, status_code=503)


@ops.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)


@v1.get("/models", summary="The loaded models")
async def models(runtime: RuntimeDep) -> list[ModelInfo]:
    return [ModelInfo(**model.info()) for model in runtime.models.values()]


@v1.post("/classify", summary="Label each text")
async def classify(
    body: Annotated[TextsRequest, Body(openapi_examples=CLASSIFY_EXAMPLES)],
    settings: SettingsDep,
    runtime: RuntimeDep,
) -> ClassifyResponse:
    check_limits(settings, "texts", len(body.texts), _located(body.texts))
    return ClassifyResponse(results=await runtime.predict("classification", body.texts))


@v1.post("/ner", summary="Entity spans with character offsets into each text")
async def ner(
    body: Annotated[TextsRequest, Body(openapi_examples=NER_EXAMPLES)],
    settings: SettingsDep,
    runtime: RuntimeDep,
) -> NerResponse:
    check_limits(settings, "texts", len(body.texts), _located(body.texts))
    return NerResponse(results=await runtime.predict("ner", body.texts))


@v1.post("/qa", summary="The best answer span in each context")
async def qa(
    body: Annotated[QaRequest, Body(openapi_examples=QA_EXAMPLES)],
    settings: SettingsDep,
    runtime: RuntimeDep,
) -> QaResponse:
    pairs = body.pairs()
    texts = {}
    for i, pair in enumerate(pairs):
        where = f"items[{i}]." if body.items is not None else ""
        texts[f"{where}question"], texts[f"{where}context"] = pair.question, pair.context
    check_limits(settings, "items", len(pairs), texts)
    items = [(pair.question, pair.context) for pair in pairs]
    return QaResponse(results=await runtime.predict("qa", items))


def _located(texts: list[str]) -> dict[str, str]:
    return {f"texts[{i}]": text for i, text in enumerate(texts)}


SSE_DOC = {
    200: {
        "description": "JSON, or with `stream: true` server-sent events: `event: token` "
        '(`{"text": piece}`) per generated token, then `event: done` with the last piece '
        "and the counts (or `event: error`). The pieces join to the full text.",
        "content": {"text/event-stream": {}},
    }
}


@v1.post(
    "/generate",
    summary="Continue a prompt; stream the tokens with stream: true",
    responses=SSE_DOC,
)
async def generate(
    body: Annotated[GenerateRequest, Body(openapi_examples=GENERATE_EXAMPLES)],
    request: Request,
    settings: SettingsDep,
    runtime: RuntimeDep,
) -> GenerateResponse:
    model = runtime.generator()
    check_limits(settings, "prompt", 1, {"prompt": body.prompt})
    if body.max_new_tokens > settings.max_new_tokens:
        raise ApiError(
            422,
            "max_new_tokens_too_large",
            f"max_new_tokens is {body.max_new_tokens}; the limit is {settings.max_new_tokens} "
            "(max_new_tokens)",
        )
    ids = model.prompt_ids(body.prompt)
    prompt_tokens = len(ids) if body.prompt else 0
    if len(ids) + body.max_new_tokens > model.max_positions:
        raise ApiError(
            422,
            "prompt_too_long",
            f"prompt is {prompt_tokens} tokens; with max_new_tokens {body.max_new_tokens} that "
            f"is over the model's {model.max_positions} positions",
        )
    sampling = Sampling(body.max_new_tokens, body.temperature, body.top_p, body.seed, body.stop)
    job = runtime.generate(ids, sampling, prompt_tokens)
    if body.stream:
        return StreamingResponse(
            _events(job),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    watch = asyncio.create_task(_cancel_on_disconnect(request, job))
    try:
        pieces = []
        while (event := await job.events.get())[0] == "token":
            pieces.append(event[1])
    finally:
        watch.cancel()
        job.cancel()  # a no-op once done; stops the decoding if this request was cancelled
    kind, value = event
    if kind == "error":
        raise RuntimeError(value)
    return GenerateResponse(**{**value, "text": "".join(pieces) + value["text"]})


async def _cancel_on_disconnect(request: Request, job: Job) -> None:
    """Stop the decoding when the client of a JSON request hangs up: the body has been read,
    so the next ASGI message is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancel()


async def _events(job: Job) -> AsyncIterator[str]:
    """Server-sent events of one generation; leaving early (the client went away) ends it."""
    try:
        while True:
            kind, value = await job.events.get()
            data = {"text": value} if kind == "token" else value
            if kind == "error":
                data = {"message": value}
            yield f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
            if kind != "token":
                return
    finally:
        job.cancel()
