"""One predict path for every API: resolve, validate, cache, batch, deadline, fallback, log.

REST (TF Serving and KServe V2) and gRPC decode their bodies into input tensors and call
:meth:`Service.predict`; :meth:`Service.finish` records the outcome once (Prometheus counters
and latency, the structured access log, the prediction log).

Admission: :class:`Admission` bounds the predict requests one process holds (``max_inflight``);
REST checks it in an ASGI middleware before the body is read, gRPC at the handler's entry. A
refused request is answered 429 / ``RESOURCE_EXHAUSTED`` and counted
(``mlsd_serving_shed{reason="inflight"}`` and ``mlsd_serving_requests{code="429"}``) and
access-logged, but not written to the prediction log (it never reached a model).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
import uuid
from typing import Any, Mapping

import numpy as np

from mlsd_jax.serving.cache import ResponseCache, request_key
from mlsd_jax.serving.config import ServeConfig
from mlsd_jax.serving.errors import ServingError, invalid
from mlsd_jax.serving.metrics import event, metrics
from mlsd_jax.serving.predlog import PredictionLog
from mlsd_jax.serving.runtime import SignatureInfo
from mlsd_jax.serving.store import ModelStore, ModelVersion


UNKNOWN_MODEL = "_unknown"
MAX_REQUEST_ID = 128


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id(given: str | None) -> str:
    """The client's request id (cut to 128 characters), or a new one."""
    return given[:MAX_REQUEST_ID] if given else new_request_id()


@dataclasses.dataclass
class Call:
    """One request as it goes through the server (filled in as it progresses)."""

    api: str
    model: str
    request_id: str
    started: float = dataclasses.field(default_factory=time.perf_counter)
    arrived: float = dataclasses.field(default_factory=time.monotonic)  # the deadline's start
    version: int | None = None
    signature: str | None = None
    inputs: Mapping[str, Any] | None = None
    outputs: Mapping[str, np.ndarray] | None = None
    fallback: str | None = None
    cache_hit: bool = False
    rows: int = 0


@dataclasses.dataclass
class Prediction:
    outputs: dict[str, np.ndarray]
    version: ModelVersion
    info: SignatureInfo
    fallback: str | None


def parse_deadline_ms(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        ms = float(value)
    except ValueError:
        raise invalid(f"X-Request-Deadline-Ms must be a number of milliseconds, got "
                      f"{value[:40]!r}") from None
    if not ms > 0 or ms != ms or ms == float("inf"):
        raise invalid(f"X-Request-Deadline-Ms must be > 0, got {value[:40]!r}")
    return ms


class Admission:
    """At most ``limit`` predict requests held at once by this process (REST and gRPC)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.inflight = 0
        self._lock = threading.Lock()

    def enter(self) -> bool:
        """Takes a slot; ``False`` (nothing taken) when all ``limit`` are held."""
        with self._lock:
            if self.inflight >= self.limit:
                return False
            self.inflight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.inflight -= 1

    def refusal(self) -> ServingError:
        return ServingError("RESOURCE_EXHAUSTED",
                            f"the server holds {self.limit} predict requests "
                            f"(max_inflight={self.limit}); retry later")


class Service:
    def __init__(self, cfg: ServeConfig, store: ModelStore, predlog: PredictionLog | None,
                 cache: ResponseCache | None, review=None):
        self.cfg, self.store, self.predlog, self.cache = cfg, store, predlog, cache
        self.review = review      # a ReviewQueue: rows the model sends to a person
        self.admission = Admission(cfg.inflight_limit())

    def model_label(self, name: str) -> str:
        """The model's name as a metric label (one label for every unknown name)."""
        return name if name in self.store.models else UNKNOWN_MODEL

    def refused(self, model: str, api: str, rid: str, error: str) -> None:
        """Records a request refused at admission (metrics and access log only)."""
        m = metrics()
        label = self.model_label(model)
        m.shed.labels(label, "inflight").inc()
        m.requests.labels(label, "", api, "429").inc()
        if self.cfg.access_log:
            event("request", logging.INFO, request_id=rid, api=api, model=model[:200],
                  code=429, error=error)

    def resolve(self, call: Call, version: int | None, label: str | None) -> ModelVersion:
        mv = self.store.get(call.model).resolve(version, label)
        call.version = mv.version
        return mv

    def _deadline_s(self, mv: ModelVersion, deadline_ms: float | None) -> float:
        if deadline_ms is None:
            model_cfg = self.store.get(mv.model).cfg
            deadline_ms = model_cfg.deadline_ms or self.cfg.deadline_ms
        return deadline_ms / 1000.0

    async def predict(self, call: Call, mv: ModelVersion, signature: str | None,
                      inputs: Mapping[str, Any], deadline_ms: float | None = None) -> Prediction:
        t0 = call.arrived
        info = mv.signature(signature)
        call.signature = info.name
        arrays, sizes = info.validate(inputs)
        call.inputs = arrays
        call.rows = sizes.get("batch", 1)
        m = metrics()
        key = None
        if self.cache is not None:
            key = request_key(mv.model, mv.version, info.name, arrays)
            hit = self.cache.get(key)
            m.cache.labels(mv.model, "hit" if hit is not None else "miss").inc()
            if hit is not None:
                call.cache_hit = True
                call.outputs = hit
                return Prediction(dict(hit), mv, info, None)
        executor = mv.executors[info.name]
        deadline_s = self._deadline_s(mv, deadline_ms)
        batcher = mv.batchers.get(info.name)
        try:
            if time.monotonic() >= t0 + deadline_s:
                # It waited (event loop, parsing) past its deadline: not run late.
                m.shed.labels(mv.model, "deadline").inc()
                raise ServingError("DEADLINE_EXCEEDED", f"model {mv.model}: the request's "
                                                        f"deadline of {deadline_s * 1000:g} ms "
                                                        f"passed before it ran")
            if batcher is None:
                outputs = executor.run([(arrays, sizes)])[0]
            elif await self._claim_idle(batcher):   # alone and the device idle: run now
                rows = 0
                try:
                    outputs = executor.run([(arrays, sizes)])[0]
                    rows = call.rows
                finally:
                    batcher.release_idle(rows)
            else:
                try:
                    future = batcher.submit(arrays, sizes, t0 + deadline_s)
                except ServingError as e:
                    if e.code == "RESOURCE_EXHAUSTED":
                        m.shed.labels(mv.model, "queue_full").inc()
                    raise
                left = t0 + deadline_s - time.monotonic()
                try:
                    outputs = await asyncio.wait_for(asyncio.shield(future), max(left, 0.0))
                except asyncio.TimeoutError:
                    if batcher.cancel(future):
                        m.shed.labels(mv.model, "deadline").inc()
                    raise ServingError("DEADLINE_EXCEEDED",
                                       f"model {mv.model} version {mv.version} did not answer "
                                       f"within the deadline of {deadline_s * 1000:g} ms") from None
        except ServingError as e:
            if e.code != "DEADLINE_EXCEEDED":
                raise              # the request's own fault (bad values) or a refusal
            return self._fallback(call, mv, info, sizes, "deadline", e)
        except Exception as e:  # noqa: BLE001 - the model failed on valid inputs
            event("model_error", logging.ERROR, request_id=call.request_id, model=mv.model,
                  version=mv.version, error=repr(e))
            return self._fallback(call, mv, info, sizes, "error", ServingError(
                "INTERNAL", f"model {mv.model} version {mv.version} failed: "
                            f"{type(e).__name__}: {e}"))
        call.outputs = outputs
        if key is not None:
            self.cache.put(key, outputs)
        return Prediction(outputs, mv, info, None)

    async def _claim_idle(self, batcher) -> bool:
        """The idle fast path: only for a request alone in this process (``max_inflight``'s
        count, taken after one turn of the event loop so that requests which arrived with it
        are counted) while its batcher has nothing queued or running. Under concurrency the
        requests queue and share batches instead of running one by one on the event loop."""
        if batcher.timeout > 0:
            return False
        await asyncio.sleep(0)
        return self.admission.inflight <= 1 and batcher.claim_idle()

    def _fallback(self, call: Call, mv: ModelVersion, info: SignatureInfo, sizes, reason: str,
                  error: ServingError) -> Prediction:
        outputs = mv.fallback(info.name, sizes, call.inputs or {})
        if outputs is None:
            raise error
        metrics().fallbacks.labels(mv.model, reason).inc()
        call.fallback = reason
        call.outputs = outputs
        return Prediction(outputs, mv, info, reason)

    async def enqueue_review(self, call: Call) -> None:
        """Rows whose ``decision`` output is 1 (review) go to the review queue, committed
        before the response; a queue failure is logged and counted, never fails the request."""
        out = call.outputs or {}
        if self.review is None or call.fallback or "decision" not in out or not call.inputs:
            return
        decision = np.asarray(out["decision"]).reshape(-1)
        rows = np.flatnonzero(decision == 1)
        if not len(rows):
            return
        score = np.asarray(out["score"]).reshape(-1) if "score" in out else None
        items = [{k: np.asarray(v)[i] for k, v in call.inputs.items()} for i in rows]
        scores = [float(score[i]) if score is not None else None for i in rows]
        try:
            await asyncio.to_thread(self.review.enqueue_many, items, scores, model=call.model,
                                    version=str(call.version), request_id=call.request_id)
            metrics().review_enqueued.labels(self.model_label(call.model)).inc(len(rows))
        except Exception as e:  # noqa: BLE001 - the answer still goes out
            event("review_queue_error", logging.ERROR, request_id=call.request_id,
                  model=call.model, error=repr(e))

    async def finish(self, call: Call, code: int, error: str | None = None) -> None:
        """Records a finished request; with ``log.durable`` it returns once the prediction
        log has committed the record (the caller responds after this)."""
        if code < 400 and self.review is not None:
            await self.enqueue_review(call)
        latency = time.perf_counter() - call.started
        m = metrics()
        version = str(call.version) if call.version is not None else ""
        # Unknown model names come from clients: one label for all of them (bounded series).
        model = self.model_label(call.model)
        m.requests.labels(model, version, call.api, str(code)).inc()
        m.latency.labels(model, call.api).observe(latency)
        if self.cfg.access_log:
            event("request", logging.INFO if code < 500 else logging.WARNING,
                  request_id=call.request_id, api=call.api, model=call.model[:200],
                  version=call.version, signature=call.signature, code=code,
                  rows=call.rows, latency_ms=round(latency * 1000, 3), fallback=call.fallback,
                  cache_hit=call.cache_hit, **({"error": error} if error else {}))
        if self.predlog is None:
            return
        args = (call.request_id, model, call.version, call.signature, call.api, code,
                latency * 1000, call.fallback, call.inputs,
                call.outputs if code < 400 else ({"error": error} if error else None))
        if self.cfg.log.durable:
            await self.predlog.write_durable(*args)
        else:
            self.predlog.write(*args)
