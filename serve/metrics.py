"""What the service reports about itself: Prometheus metrics and JSON access logs.

One registry per app (not the global one), so several apps in one process never clash.
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
import uuid

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("lmforge.access")

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
RATE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)
PROBES = {"/healthz", "/readyz", "/metrics"}  # polled constantly: logged at DEBUG only


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            "lmforge_http_requests", "HTTP requests.", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "lmforge_http_request_duration_seconds", "HTTP latency.", ["route"], registry=r
        )
        self.batch_size = Histogram(
            "lmforge_batch_size",
            "Items per inference call.",
            ["task"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "lmforge_inference_duration_seconds",
            "Time of one batch: encode, onnxruntime, postprocess.",
            ["task"],
            registry=r,
        )
        # HTTP requests being answered (AccessLog counts them): the batcher runs a request
        # inline when it is the only one. A plain int, read by the gauge only when scraped.
        self.http_in_flight = 0
        Gauge(
            "lmforge_http_requests_in_flight", "HTTP requests being answered.", registry=r
        ).set_function(lambda: self.http_in_flight)
        self.queue_depth = Gauge(
            "lmforge_queue_depth", "Items waiting for a batch.", ["task"], registry=r
        )
        self.model_ready = Gauge(
            "lmforge_model_ready",
            "1 when the task's model is loaded and checked.",
            ["task"],
            registry=r,
        )
        self.model = Info("lmforge_model", "The model served for each task.", ["task"], registry=r)
        # Text generation (/v1/generate).
        self.generated_tokens = Counter(
            "lmforge_generated_tokens", "Tokens generated (every request).", registry=r
        )
        self.ttft = Histogram(
            "lmforge_time_to_first_token_seconds",
            "From a generation request's arrival to its first token.",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "lmforge_generation_tokens_per_second",
            "Generated tokens per second of each request, arrival to end.",
            buckets=RATE_BUCKETS,
            registry=r,
        )
        self.active_streams = Gauge(
            "lmforge_generation_active", "Requests in the decode batch.", registry=r
        )
        self.cancelled = Counter(
            "lmforge_generation_cancelled",
            "Generations stopped because their client went away.",
            registry=r,
        )

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class AccessLog:
    """ASGI middleware: one JSON log line and the request metrics per HTTP request.

    The route label is the path template (`/v1/ner`), never the raw path, so a client
    probing random URLs cannot blow up the metric's cardinality. Per request it costs a
    few microseconds for the metrics (labelled series are looked up once per route and
    status, then cached) and, when `log_requests` is on, one log record: built directly
    (no caller lookup, which the JSON line does not show), formatted and written by the
    handlers of the `lmforge.access` logger.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, log_requests: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests
        self._series: dict[tuple[str, str, int], tuple] = {}
        # Request ids: unique per process by a counter, across processes by a random prefix.
        self._id_prefix = uuid.uuid4().hex[:16]
        self._ids = itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = _header(scope, b"x-request-id") or f"{self._id_prefix}{next(self._ids):016x}"
        status = 500  # what the client gets if the app raises before responding
        self.metrics.http_in_flight += 1

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.http_in_flight -= 1
            self._record(scope, status, time.perf_counter() - start, request_id)

    def _record(self, scope: Scope, status: int, seconds: float, request_id: str) -> None:
        route = getattr(scope.get("route"), "path", "<unmatched>")
        key = (route, scope["method"], status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = (
                self.metrics.requests.labels(route, scope["method"], str(status)),
                self.metrics.latency.labels(route),
            )
        series[0].inc()
        series[1].observe(seconds)
        level = logging.DEBUG if route in PROBES and status < 400 else logging.INFO
        if not (self.log_requests and access_log.isEnabledFor(level)):
            return
        client = scope.get("client")
        fields = {
            "request_id": request_id,
            "method": scope["method"],
            "path": scope["path"],
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "client": client[0] if client else None,
        }
        access_log.handle(
            access_log.makeRecord(access_log.name, level, "", 0, "request", (), None, extra=fields)
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            # Echoed back in a header and a log line: keep it short and printable.
            return value.decode("latin-1")[:128].strip() or None
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus any `extra` fields."""

    # Attributes every record has (plus what other formatters cache on it): not `extra`.
    _standard = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in self._standard})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str) -> None:
    """JSON lines on stderr for the `lmforge` loggers; uvicorn's access log is replaced."""
    logger = logging.getLogger("lmforge")
    logger.setLevel(level)
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
    logger.propagate = False
    # Our access log carries route, status, latency and request id as fields, so uvicorn's
    # plain-text one would only duplicate every line.
    logging.getLogger("uvicorn.access").disabled = True
