"""Typed server settings (``configs/serve.yaml`` composes into these; bad keys fail at load)."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from mlsd_jax.errors import ConfigError, check

EXECUTIONS = ("jax", "savedmodel")
POLICIES = ("latest", "specific", "all")
SYNCHRONOUS = ("OFF", "NORMAL", "FULL")


@dataclasses.dataclass
class FallbackConfig:
    """What answers when the model errors or misses the request's deadline.

    ``values``: output name -> a scalar (every row, every position), a list (each row gets
    the list, e.g. a popularity list of item ids), or ``{by_input: NAME, table: {value: out},
    default: x}``, which looks each value of input NAME up (e.g. candidate item ids -> their
    training popularity, so the fallback ranks by popularity). Outputs not named here take the
    task's default from the model card (``data.serving_fallback``, or for binary-probability
    models the training positive rate as ``prob`` and its log-odds as ``logit``), else 0.
    """

    enabled: bool = True
    values: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ModelConfig:
    """One served model: a TF Serving base path of numbered version folders.

    ``version_policy``: ``latest`` (the newest ``num_latest`` loadable versions), ``specific``
    (``versions``) or ``all``. Versions named by ``labels`` (``{stable: 3, canary: 4}``) are
    loaded too; ``<base_path>/labels.json`` (polled) overrides them at run time, which is how a
    label is moved or rolled back without a restart. Requests without a version go to
    ``default_label`` when set, else to the newest version of the policy.
    ``allow_nan``: ``None`` lets NaN through only into inputs a fitted feature spec reads
    (NaN = missing there); ``True``/``False`` force it for every float input.
    """

    name: str = ""
    base_path: str = ""
    version_policy: str = "latest"
    num_latest: int = 1
    versions: list[int] = dataclasses.field(default_factory=list)
    labels: dict[str, int] = dataclasses.field(default_factory=dict)
    default_label: Optional[str] = None
    allow_nan: Optional[bool] = None
    deadline_ms: Optional[float] = None
    fallback: FallbackConfig = dataclasses.field(default_factory=FallbackConfig)


@dataclasses.dataclass
class BatchingConfig:
    """Server-side micro-batching, one queue per model version and signature.

    A batch starts as soon as the device is free (no fixed wait) and takes every queued
    request that fits, up to ``max_batch_size`` rows; ``batch_timeout_ms > 0`` also holds a
    batch smaller than that for up to that long while the device is idle. Batches are padded to
    the next of ``buckets`` (rows) and dims named in ``dim_buckets`` (e.g. the ranking ``list``,
    padded with masked items) to the next of theirs; every combination is compiled and run once
    at load, so no request waits on a compile. More than ``max_queued`` waiting requests are
    refused with 429.
    """

    enabled: bool = True
    max_batch_size: int = 64
    batch_timeout_ms: float = 0.0
    max_queued: int = 256
    buckets: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    dim_buckets: dict[str, list[int]] = dataclasses.field(
        default_factory=lambda: {"list": [16, 64, 256, 1024]})


@dataclasses.dataclass
class CacheConfig:
    """Response cache keyed by model, version, signature and the request's tensors."""

    enabled: bool = False
    ttl_s: float = 60.0
    max_bytes: int = 64 << 20


@dataclasses.dataclass
class LogConfig:
    """The prediction log: SQLite (WAL) files in ``dir``, written in batches by a thread.

    Acknowledged means committed: with ``durable`` a response is sent only after the
    transaction holding its record has committed, so every answered request is in the log
    after a ``kill -9``; without it records are committed within ``flush_ms`` of their response
    (a ``kill -9`` loses at most that window). ``synchronous=FULL`` also fsyncs each commit
    (survives power loss). Files rotate by size (``rotate_bytes``) or age (``rotate_s``).
    """

    enabled: bool = True
    dir: str = "predlog"
    durable: bool = False
    flush_ms: float = 50.0
    max_batch: int = 1024
    max_queue: int = 100_000
    rotate_bytes: int = 256 << 20
    rotate_s: float = 86_400.0
    inputs: bool = True
    synchronous: str = "NORMAL"


@dataclasses.dataclass
class ServeConfig:
    """Everything the server reads. ``model_name``/``model_base_path`` add one model to
    ``models`` (TF Serving's flags). ``compilation_cache``: XLA's persistent compilation
    cache folder, so restarts and every worker process reuse the warmup compiles (``""``:
    ``$MLSD_JAX_CACHE/xla``, default ``~/.cache/mlsd_jax/xla``; ``null``: off).

    ``max_inflight``: predict requests (REST ``POST /v1/models/...``, ``/v2/.../infer`` and gRPC
    ``Predict``) one server process holds at once, from arrival to response; one more is refused
    at once with 429 / ``RESOURCE_EXHAUSTED`` before its body is read, so an overload cannot pile
    requests up in the event loop ahead of the batch queue. ``None``: ``batching.max_queued +
    batching.max_batch_size`` (a full queue plus the batch running). Health, status, metadata and
    ``/metrics`` are never refused. A request's deadline counts from its arrival: one that waited
    past it before its model ran is not run (504, or the flagged fallback where one is set).

    ``review_queue``: a SQLite file (:class:`mlsd_jax.serving.review.ReviewQueue`); rows whose
    model outputs ``decision`` = 1 (review, as the moderation task exports) are added to it with
    their raw inputs, score, model, version and request id before the response is sent
    (committed with ``log.synchronous``, as the prediction log).

    ``metrics_textfiles``: Prometheus text files appended to every ``/metrics`` answer, read at
    each scrape (as node_exporter's textfile collector): the ``metrics.prom`` that
    ``python -m experiments.monitor`` writes (``mlsd_monitor_alerts_total``, the latest
    window's ``mlsd_monitor_metric`` gauges), so monitoring alerts are scraped with the server's
    own metrics. A missing or unreadable file is skipped (and counted)."""

    model_name: Optional[str] = None
    model_base_path: Optional[str] = None
    models: list[ModelConfig] = dataclasses.field(default_factory=list)
    host: str = "0.0.0.0"
    rest_port: int = 8501
    grpc_port: int = 8500
    workers: int = 1
    execution: str = "jax"
    poll_s: float = 2.0
    deadline_ms: float = 5000.0
    max_inflight: Optional[int] = None
    max_body_bytes: int = 16 << 20
    max_rows: int = 4096
    access_log: bool = True
    ready_file: Optional[str] = None
    compilation_cache: Optional[str] = ""
    batching: BatchingConfig = dataclasses.field(default_factory=BatchingConfig)
    cache: CacheConfig = dataclasses.field(default_factory=CacheConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)
    review_queue: Optional[str] = None
    metrics_textfiles: list[str] = dataclasses.field(default_factory=list)

    def model_list(self) -> list[ModelConfig]:
        """``models`` plus the ``model_name``/``model_base_path`` model, validated."""
        models = list(self.models)
        if self.model_name or self.model_base_path:
            if not (self.model_name and self.model_base_path):
                raise ConfigError("model_name and model_base_path go together; got "
                                  f"model_name={self.model_name!r}, "
                                  f"model_base_path={self.model_base_path!r}")
            models.append(ModelConfig(name=self.model_name, base_path=self.model_base_path))
        if not models:
            raise ConfigError("no model to serve: set model_name=NAME model_base_path=DIR, or "
                              "models=[{name: ..., base_path: ...}]")
        names = [m.name for m in models]
        for i, m in enumerate(models):
            check(bool(m.name) and "/" not in m.name and ":" not in m.name, f"models[{i}].name",
                  m.name, "a non-empty name without '/' or ':'")
            check(bool(m.base_path), f"models[{i}].base_path", m.base_path, "a directory")
            check(m.version_policy in POLICIES, f"models[{i}].version_policy", m.version_policy,
                  f"one of {POLICIES}")
            check(m.num_latest >= 1, f"models[{i}].num_latest", m.num_latest, ">= 1")
            check(m.version_policy != "specific" or bool(m.versions), f"models[{i}].versions",
                  m.versions, "a non-empty list with version_policy=specific")
        if len(set(names)) != len(names):
            raise ConfigError(f"models: names must be unique, got {names}")
        return models

    def inflight_limit(self) -> int:
        """``max_inflight``, or its default from the batching settings."""
        if self.max_inflight is not None:
            return self.max_inflight
        return self.batching.max_queued + self.batching.max_batch_size

    def validate(self) -> "ServeConfig":
        self.model_list()
        check(self.execution in EXECUTIONS, "execution", self.execution, f"one of {EXECUTIONS}")
        check(0 <= self.rest_port < 65536, "rest_port", self.rest_port, "0 (free port)..65535")
        check(-1 <= self.grpc_port < 65536, "grpc_port", self.grpc_port,
              "-1 (off), 0 (free port)..65535")
        check(self.workers >= 1, "workers", self.workers, ">= 1")
        check(self.poll_s > 0, "poll_s", self.poll_s, "> 0 seconds")
        check(self.deadline_ms > 0, "deadline_ms", self.deadline_ms, "> 0")
        check(self.max_rows >= 1, "max_rows", self.max_rows, ">= 1")
        check(self.max_inflight is None or self.max_inflight >= 1, "max_inflight",
              self.max_inflight, "null (batching.max_queued + batching.max_batch_size) or >= 1")
        b = self.batching
        check(b.max_batch_size >= 1, "batching.max_batch_size", b.max_batch_size, ">= 1")
        check(b.max_queued >= 1, "batching.max_queued", b.max_queued, ">= 1")
        check(b.batch_timeout_ms >= 0, "batching.batch_timeout_ms", b.batch_timeout_ms, ">= 0")
        check(bool(b.buckets) and all(x >= 1 for x in b.buckets) and
              list(b.buckets) == sorted(set(b.buckets)), "batching.buckets", b.buckets,
              "increasing positive sizes")
        check(max(b.buckets) >= b.max_batch_size, "batching.buckets", b.buckets,
              f"a bucket >= batching.max_batch_size={b.max_batch_size}")
        for dim, sizes in b.dim_buckets.items():
            check(bool(sizes) and all(x >= 1 for x in sizes) and list(sizes) == sorted(set(sizes)),
                  f"batching.dim_buckets.{dim}", sizes, "increasing positive sizes")
        check(self.cache.ttl_s > 0, "cache.ttl_s", self.cache.ttl_s, "> 0")
        check(self.cache.max_bytes > 0, "cache.max_bytes", self.cache.max_bytes, "> 0")
        check(self.log.synchronous in SYNCHRONOUS, "log.synchronous", self.log.synchronous,
              f"one of {SYNCHRONOUS}")
        check(self.log.flush_ms > 0, "log.flush_ms", self.log.flush_ms, "> 0")
        return self


def serve_config(node) -> ServeConfig:
    """A ``ServeConfig`` from a Hydra/OmegaConf node or a dict (unknown keys fail)."""
    if isinstance(node, ServeConfig):
        return node.validate()
    from mlsd_jax.experiment import typed

    return typed(ServeConfig, node).validate()
