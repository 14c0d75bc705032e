"""REST: TF Serving's API (``/v1/models/...``), KServe V2 (``/v2/...``), ``/metrics``.

Every route answers JSON; errors are ``{"error": "..."}`` with the status TF Serving uses for
the canonical code (400 invalid argument, 404 not found, 413 body too large, 429 queue full,
503 unavailable, 504 deadline exceeded). The server never answers 5xx for what a client sent.

Admission (:class:`AdmissionMiddleware`, an ASGI middleware in front of every route): a predict
request (any ``POST`` under ``/v1/models/`` or ``/v2/models/``) beyond ``max_inflight`` held by
this process is answered 429 ``{"error": ...}`` at once, before its body is read; its arrival
time starts its deadline. ``GET`` routes (health, status, metadata, ``/metrics``) are never refused.
"""
from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlsd_jax.serving import codec
from mlsd_jax.serving.errors import ServingError, invalid
from mlsd_jax.serving.metrics import event, exposition
from mlsd_jax.serving.runtime import SignatureInfo
from mlsd_jax.serving.service import (Call, Service, new_request_id, parse_deadline_ms,
                                      request_id)
from mlsd_jax.serving.store import ModelVersion

# NAME[/versions/N | /labels/L][:verb | /metadata]
_V1 = re.compile(r"^(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
                 r"(?::(?P<verb>[A-Za-z]+)|/(?P<meta>metadata))?$")
VERBS = ("predict", "classify", "regress")


def _json(payload: Any, status: int = 200, headers: dict | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _error(e: ServingError, request_id: str) -> Response:
    return _json({"error": e.message}, e.http_status, {"X-Request-Id": request_id})


def _version_number(text: str | None, field: str = "version") -> int | None:
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise invalid(f"{field} must be a non-negative integer, got {text[:40]!r}")
    return int(text)


async def _body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ServingError("PAYLOAD_TOO_LARGE", f"the request body has {length} bytes; at most "
                                                f"max_body_bytes={limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServingError("PAYLOAD_TOO_LARGE", f"the request body is over "
                                                    f"max_body_bytes={limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _content_type_ok(request: Request) -> None:
    ctype = request.headers.get("content-type", "")
    if ctype and "json" not in ctype and not ctype.startswith("text/plain"):
        raise ServingError("UNSUPPORTED_MEDIA", f"Content-Type {ctype[:60]!r} is not JSON; send "
                                                "application/json")


# ----------------------------------------------------------------------------- model metadata
def tensor_info_json(spec, prefix: str) -> dict:
    return {"dtype": codec.TF_TYPE_NAMES[codec.tf_dtype(spec)],
            "tensor_shape": {"dim": [{"size": str(n), "name": ""} for n in spec.json_shape()],
                             "unknown_rank": False},
            "name": f"{prefix}_{spec.name}:0"}


def signature_def_json(info: SignatureInfo) -> dict:
    return {"inputs": {k: tensor_info_json(s, info.name) for k, s in info.inputs.items()},
            "outputs": {k: tensor_info_json(s, "StatefulPartitionedCall")
                        for k, s in info.outputs.items()},
            "method_name": "tensorflow/serving/predict"}


def card_summary(mv: ModelVersion) -> dict:
    card = mv.card
    data = card.get("data") or {}
    return {"task": card.get("task"), "version": mv.version, "metrics": card.get("metrics"),
            "target_metric": card.get("target_metric"), "git_commit": card.get("git_commit"),
            "data_fingerprint": data.get("fingerprint"), "dataset": data.get("dataset"),
            "libraries": card.get("libraries"),
            "outputs": {k: v for k, v in mv.signatures["serving_default"].meanings.items()}
            if "serving_default" in mv.signatures else {}}


def model_status_json(service: Service, name: str, version: int | None,
                      label: str | None) -> dict:
    model = service.store.get(name)
    if version is not None or label is not None:
        mv = model.resolve(version, label)
        versions = [mv.version]
    else:
        versions = sorted(set(model.status) | set(model.view.versions), reverse=True)
    out = []
    for v in versions:
        state, message = model.status.get(v, ("AVAILABLE", ""))
        if v in model.view.versions:
            state, message = "AVAILABLE", ""
        out.append({"version": str(v), "state": state,
                    "status": {"error_code": "OK" if not message else "UNKNOWN",
                               "error_message": message}})
    if not out:
        raise ServingError("NOT_FOUND", f"model {name} has no versions under "
                                        f"{model.base}")
    return {"model_version_status": out}


# ------------------------------------------------------------------------------ admission
ARRIVED = "mlsd.arrived"      # ASGI scope key: time.monotonic() when the request came in
_PREDICT_PREFIXES = ("/v1/models/", "/v2/models/")


def _api_and_model(path: str) -> tuple[str, str]:
    """The API label and model name of a predict path (for the refusal's metrics)."""
    if path.startswith("/v2/"):
        return "v2:infer", path[len("/v2/models/"):].split("/", 1)[0]
    rest = path[len("/v1/models/"):]
    verb = rest.rsplit(":", 1)[1] if ":" in rest else ""
    return (f"rest:{verb}" if verb in VERBS else "rest"), re.split(r"[/:]", rest, maxsplit=1)[0]


class AdmissionMiddleware:
    """Pure ASGI middleware: bounds the predict requests in progress (``max_inflight``)."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service
        self.admission = service.admission

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope[ARRIVED] = time.monotonic()
        if scope["method"] != "POST" or not scope["path"].startswith(_PREDICT_PREFIXES):
            return await self.app(scope, receive, send)
        if not self.admission.enter():
            return await self._refuse(scope, send)
        try:
            await self.app(scope, receive, send)
        finally:
            self.admission.leave()

    async def _refuse(self, scope, send) -> None:
        rid = None
        for k, v in scope.get("headers") or ():
            if k == b"x-request-id":
                rid = v.decode("latin-1")
                break
        rid = request_id(rid)
        message = self.admission.refusal().message
        api, model = _api_and_model(scope["path"])
        self.service.refused(model, api, rid, message)
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": 429, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"x-request-id", rid.encode("latin-1", "replace")), (b"retry-after", b"1")]})
        await send({"type": "http.response.body", "body": body})


def _arrived(request: Request) -> float:
    return request.scope.get(ARRIVED) or time.monotonic()


# ----------------------------------------------------------------------------------- the app
class RestApi:
    def __init__(self, service: Service):
        self.service = service
        self.cfg = service.cfg

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models/{path:path}", self.v1, methods=["GET", "POST"]),
            Route("/v2", self.v2_server, methods=["GET"]),
            Route("/v2/health/live", self.v2_live, methods=["GET"]),
            Route("/v2/health/ready", self.v2_ready, methods=["GET"]),
            Route("/v2/models/{name}", self.v2_model, methods=["GET"]),
            Route("/v2/models/{name}/ready", self.v2_model_ready, methods=["GET"]),
            Route("/v2/models/{name}/versions/{version}", self.v2_model, methods=["GET"]),
            Route("/v2/models/{name}/versions/{version}/ready", self.v2_model_ready,
                  methods=["GET"]),
            Route("/v2/models/{name}/infer", self.v2_infer, methods=["POST"]),
            Route("/v2/models/{name}/versions/{version}/infer", self.v2_infer, methods=["POST"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
        ]

    def app(self) -> Starlette:
        async def not_found(request: Request, exc):
            return _json({"error": f"no route {request.method} {request.url.path}"},
                         getattr(exc, "status_code", 404))

        async def internal(request: Request, exc: Exception):
            rid = request_id(request.headers.get("x-request-id"))
            event("unhandled_error", logging.ERROR, request_id=rid, path=request.url.path,
                  error=repr(exc))
            return _json({"error": f"internal error ({type(exc).__name__}); request id {rid}"},
                         500, {"X-Request-Id": rid})

        app = Starlette(routes=self.routes(), exception_handlers={
            404: not_found, 405: not_found, Exception: internal})
        return AdmissionMiddleware(app, self.service)

    # ------------------------------------------------------------------------------- TF /v1
    async def v1(self, request: Request) -> Response:
        rid = request_id(request.headers.get("x-request-id"))
        path = request.path_params["path"]
        match = _V1.match(path)
        if match is None:
            return _json({"error": f"malformed URL /v1/models/{path[:100]}; expected "
                                   f"/v1/models/NAME[/versions/N|/labels/L][:predict|"
                                   f":classify|:regress|/metadata]"}, 404,
                         {"X-Request-Id": rid})
        verb, meta = match["verb"], match["meta"]
        if request.method == "GET":
            if verb is not None:
                return _json({"error": f":{verb} needs POST"}, 405, {"X-Request-Id": rid})
            return await self._v1_get(match, bool(meta), rid)
        if verb not in VERBS:
            what = f":{verb}" if verb else "/metadata" if meta else "(no verb)"
            return _json({"error": f"POST {what} is not an API; use :predict, :classify or "
                                   f":regress"}, 404 if verb else 405, {"X-Request-Id": rid})
        return await self._v1_post(request, match, verb, rid)

    async def _v1_get(self, match, meta: bool, rid: str) -> Response:
        try:
            version = _version_number(match["version"])
            if not meta:
                return _json(model_status_json(self.service, match["name"], version,
                                               match["label"]), headers={"X-Request-Id": rid})
            mv = self.service.store.get(match["name"]).resolve(version, match["label"])
            return _json({"model_spec": {"name": mv.model, "signature_name": "",
                                         "version": str(mv.version)},
                          "metadata": {"signature_def": {"signature_def": {
                              k: signature_def_json(i) for k, i in mv.signatures.items()}},
                              "mlsd_model": card_summary(mv)}},
                         headers={"X-Request-Id": rid})
        except ServingError as e:
            return _error(e, rid)

    async def _v1_post(self, request: Request, match, verb: str, rid: str) -> Response:
        service = self.service
        call = Call(api=f"rest:{verb}", model=match["name"], request_id=rid,
                    arrived=_arrived(request))
        try:
            _content_type_ok(request)
            body = codec.parse_json(await _body(request, self.cfg.max_body_bytes))
            deadline = parse_deadline_ms(request.headers.get("x-request-deadline-ms"))
            mv = service.resolve(call, _version_number(match["version"]), match["label"])
            if verb == "predict":
                sig, inputs, fmt = codec.decode_tfs(body, mv.signature)
                pred = await service.predict(call, mv, sig, inputs, deadline)
                payload = codec.encode_tfs(pred.outputs, fmt)
            else:
                sig = body.get("signature_name") if isinstance(body, dict) else None
                if sig is not None and not isinstance(sig, str):
                    raise invalid("signature_name must be a string")
                info = mv.signature(sig)
                if "prob" not in info.outputs or info.outputs["prob"].dims != ("batch",):
                    raise ServingError("INVALID_ARGUMENT",
                                       f":{verb} fits models with a binary probability output "
                                       f"'prob' [batch]; model {mv.model} outputs "
                                       f"{sorted(info.outputs)}: use :predict")
                inputs = codec.decode_examples(body, info)
                pred = await service.predict(call, mv, sig, inputs, deadline)
                prob = pred.outputs["prob"].astype(float).tolist()
                if verb == "classify":
                    payload = {"results": [[["0", 1.0 - p], ["1", p]] for p in prob]}
                else:
                    payload = {"results": prob}
            if pred.fallback:
                payload["fallback"] = pred.fallback
            code, error = 200, None
        except ServingError as e:
            code, error, payload = e.http_status, e.message, None
        try:
            await service.finish(call, code, error)
        except ServingError as e:
            return _error(e, rid)
        if payload is None:
            return _json({"error": error}, code, {"X-Request-Id": rid})
        headers = {"X-Request-Id": rid, "X-Model-Version": str(call.version)}
        if call.fallback:
            headers["X-Mlsd-Fallback"] = call.fallback
        return _json(payload, 200, headers)

    # ------------------------------------------------------------------------------ KServe V2
    async def v2_server(self, request: Request) -> Response:
        from mlsd_jax.serving import SERVER_NAME, SERVER_VERSION

        return _json({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []})

    async def v2_live(self, request: Request) -> Response:
        return _json({"live": True})

    async def v2_ready(self, request: Request) -> Response:
        ready = self.service.store.ready
        return _json({"ready": ready}, 200 if ready else 503)

    def _v2_version(self, request: Request) -> ModelVersion:
        version = _version_number(request.path_params.get("version"))
        return self.service.store.get(request.path_params["name"]).resolve(version)

    async def v2_model(self, request: Request) -> Response:
        try:
            mv = self._v2_version(request)
        except ServingError as e:
            return _error(e, request_id(request.headers.get("x-request-id")))
        model = self.service.store.get(mv.model)
        info = mv.signature(None)
        return _json({
            "name": mv.model, "versions": [str(v) for v in sorted(model.view.versions)],
            "platform": "mlsd_jax", "parameters": {"task": mv.card.get("task"),
                                                   "version": str(mv.version)},
            "inputs": [{"name": k, "datatype": codec.v2_datatype(s), "shape": s.json_shape()}
                       for k, s in info.inputs.items()],
            "outputs": [{"name": k, "datatype": codec.v2_datatype(s), "shape": s.json_shape()}
                        for k, s in info.outputs.items()]})

    async def v2_model_ready(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            mv = self._v2_version(request)
        except ServingError as e:
            if e.code == "NOT_FOUND" and name not in self.service.store.models:
                return _error(e, new_request_id())
            return _json({"name": name, "ready": False}, 503)
        return _json({"name": name, "version": str(mv.version), "ready": True})

    async def v2_infer(self, request: Request) -> Response:
        service = self.service
        rid = request_id(request.headers.get("x-request-id"))
        call = Call(api="v2:infer", model=request.path_params["name"], request_id=rid,
                    arrived=_arrived(request))
        payload = None
        try:
            _content_type_ok(request)
            body = codec.parse_json(await _body(request, self.cfg.max_body_bytes))
            deadline = parse_deadline_ms(request.headers.get("x-request-deadline-ms"))
            mv = service.resolve(call, _version_number(request.path_params.get("version")),
                                 None)
            sig, inputs, requested, body_id = codec.decode_v2(body, mv.signature)
            pred = await service.predict(call, mv, sig, inputs, deadline)
            outputs = {k: pred.outputs[k] for k in (requested or pred.outputs)}
            payload = {"model_name": mv.model, "model_version": str(mv.version),
                       "outputs": codec.encode_v2(outputs, pred.info)}
            if body_id is not None:
                payload["id"] = body_id
            if pred.fallback:
                payload["parameters"] = {"fallback": pred.fallback}
            code, error = 200, None
        except ServingError as e:
            code, error = e.http_status, e.message
        try:
            await service.finish(call, code, error)
        except ServingError as e:
            return _error(e, rid)
        if payload is None:
            return _json({"error": error}, code, {"X-Request-Id": rid})
        headers = {"X-Request-Id": rid, "X-Model-Version": str(call.version)}
        if call.fallback:
            headers["X-Mlsd-Fallback"] = call.fallback
        return _json(payload, 200, headers)

    # ---------------------------------------------------------------------------- operations
    async def metrics(self, request: Request) -> Response:
        body, ctype = exposition()
        return Response(body, media_type=ctype)

    async def healthz(self, request: Request) -> Response:
        ready = self.service.store.ready
        return _json({"ready": ready, "models": {
            n: sorted(m.view.versions) for n, m in self.service.store.models.items()}},
            200 if ready else 503)

