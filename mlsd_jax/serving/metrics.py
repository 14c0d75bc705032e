"""Prometheus metrics of the server (``GET /metrics``) and its structured JSON logs.

With several worker processes, ``PROMETHEUS_MULTIPROC_DIR`` is set by the parent before the
workers start and ``/metrics`` on any worker aggregates all of them.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The server's counters, histograms and gauges (one set per process)."""

    def __init__(self):
        from prometheus_client import Counter, Gauge, Histogram

        multi = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        gauge = {"multiprocess_mode": "livesum"} if multi else {}
        self.requests = Counter("mlsd_serving_requests", "Requests answered, by API and status",
                                ["model", "version", "api", "code"])
        self.latency = Histogram("mlsd_serving_request_latency_seconds",
                                 "Time from request received to response ready",
                                 ["model", "api"], buckets=LATENCY_BUCKETS)
        self.batch_size = Histogram("mlsd_serving_batch_size", "Rows per executed batch",
                                    ["model"], buckets=BATCH_BUCKETS)
        self.batch_requests = Histogram("mlsd_serving_batch_requests",
                                        "Requests per executed batch", ["model"],
                                        buckets=BATCH_BUCKETS)
        self.queue_depth = Gauge("mlsd_serving_queue_depth", "Requests waiting in batch queues",
                                 ["model"], **gauge)
        self.cache = Counter("mlsd_serving_cache", "Response cache lookups", ["model", "result"])
        self.fallbacks = Counter("mlsd_serving_fallbacks",
                                 "Responses answered by the fallback, by reason",
                                 ["model", "reason"])
        self.shed = Counter("mlsd_serving_shed", "Requests refused to protect latency",
                            ["model", "reason"])
        self.load_failures = Counter("mlsd_serving_model_load_failures",
                                     "Model versions that failed to load", ["model"])
        self.loads = Counter("mlsd_serving_model_loads", "Model versions loaded", ["model"])
        self.versions = Gauge("mlsd_serving_versions_available",
                              "Model versions loaded and serving", ["model"], **gauge)
        self.compiles = Counter("mlsd_serving_compiles",
                                "XLA compilations, at load (warmup) or on a request",
                                ["model", "phase"])
        self.review_enqueued = Counter("mlsd_serving_review_enqueued",
                                       "Rows sent to the human-review queue", ["model"])
        self.log_records = Counter("mlsd_serving_predlog_records",
                                   "Prediction log records, by outcome", ["outcome"])


@functools.lru_cache(maxsize=1)
def metrics() -> Metrics:
    return Metrics()


_TEXTFILES: list[str] = []


def set_textfiles(paths) -> None:
    """Prometheus text files to append to ``/metrics`` (``ServeConfig.metrics_textfiles``)."""
    _TEXTFILES[:] = [str(p) for p in paths or ()]


def _textfile_body() -> bytes:
    parts = []
    for path in _TEXTFILES:
        try:
            with open(path, "rb") as f:
                text = f.read()
        except OSError:
            event("metrics_textfile_unreadable", path=path)
            continue
        parts.append(text if text.endswith(b"\n") or not text else text + b"\n")
    return b"".join(parts)


def exposition() -> tuple[bytes, str]:
    """The ``/metrics`` body (all workers' metrics with several processes), followed by the
    configured text files (:func:`set_textfiles`)."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    metrics()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry) + _textfile_body(), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY) + _textfile_body(), CONTENT_TYPE_LATEST


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 6),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        out.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr for the server's and uvicorn's loggers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("mlsd_jax.serving", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
    logging.getLogger("uvicorn.access").disabled = True


log = logging.getLogger("mlsd_jax.serving")


def event(name: str, level: int = logging.INFO, **fields) -> None:
    """Logs a structured event: ``{"message": name, "event": name, **fields}``."""
    if log.isEnabledFor(level):
        log.log(level, name, extra={"fields": {"event": name, **fields}})
