"""The model server: REST (TF Serving, KServe V2), gRPC, versions, batching, cache, deadlines,
fallbacks, load shedding and the prediction log, on a real exported tabular model (UCI Adult)
served by the real uvicorn + grpc server. Per-task round trips: tests/test_serving_tasks.py."""
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx
import jax
import numpy as np
import pytest

from mlsd_jax import sharding as shd
from mlsd_jax import tasks
from mlsd_jax.experiment import typed
from mlsd_jax.export import export_model, load_bundle
from mlsd_jax.serving import codec, serve_config, set_labels, start_server, tfs_protos
from mlsd_jax.serving.cache import ResponseCache
from mlsd_jax.serving.grpc_service import Client
from mlsd_jax.serving.predlog import export_parquet, read_records
from mlsd_jax.serving.rest import RestApi
from mlsd_jax.serving.server import build_state
from mlsd_jax.serving.service import Service
from mlsd_jax.tasks.base import run_forward
from mlsd_jax.training.optim import OptimConfig
from mlsd_jax.training.trainer import Trainer, TrainerConfig
from tests.utils import compose_config

REPO = Path(__file__).resolve().parents[1]
# starlette.testclient drives the ASGI app in-process; its httpx deprecation note is noise here.
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
BATCHING = {"buckets": [1, 4, 16], "max_batch_size": 16, "dim_buckets": {}}


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two versions of the tabular model (two initialisations, so their outputs differ), the
    task (the training pipeline) and their states."""
    cfg = compose_config(["+task=tabular"])
    task = tasks.build(cfg)
    mesh = shd.make_mesh({"axes": ["data", "model"], "shape": [-1, 1]})
    trainer = Trainer(task, typed(TrainerConfig, cfg.trainer), typed(OptimConfig, cfg.optim), mesh)
    states = {v: trainer.init_state(seed) for v, seed in ((1, 0), (2, 1))}
    root = tmp_path_factory.mktemp("serving")
    exports = root / "exports"
    paths = {v: export_model(task, s, exports, version=v, check=False,
                             card={"data": dict(task.info)}) for v, s in states.items()}
    base = root / "models" / "tab"
    base.mkdir(parents=True)
    shutil.copytree(paths[1], base / "1")
    return {"task": task, "states": states, "paths": paths, "base": base, "root": root,
            "cache": str(root / "xla")}


def _cfg(exported, **over):
    cfg = {"models": [{"name": "tab", "base_path": str(exported["base"])}],
           "host": "127.0.0.1", "rest_port": 0, "grpc_port": 0, "batching": dict(BATCHING),
           "compilation_cache": exported["cache"], "access_log": False,
           "log": {"dir": str(exported["root"] / "predlog")}}
    cfg.update(over)
    return serve_config(cfg)


@pytest.fixture(scope="module")
def server(exported):
    models = [{"name": "tab", "base_path": str(exported["base"])},
              {"name": "strict", "base_path": str(exported["base"]), "allow_nan": False,
               "fallback": {"enabled": False}},
              {"name": "faulty", "base_path": str(exported["base"]), "fallback": {"values": {
                  "logit": {"by_input": "workclass", "table": {"Private": 0.5}, "default": -1}}}}]
    with start_server(_cfg(exported, models=models)) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.rest_url, timeout=30) as client:
        yield client


def raw_rows(exported, n=6):
    """Real raw rows (the task's serving examples) with a missing number and an unseen
    category, as a client sends them."""
    examples = exported["task"].serving_examples["serving_default"]
    raw = {k: np.asarray(v) for k, v in examples.items()}
    raw = {k: v[:n] for k, v in raw.items()}
    raw["age"] = raw["age"].astype(np.float32).copy()
    raw["age"][min(1, n - 1)] = np.nan
    raw["workclass"] = raw["workclass"].astype(object).copy()
    raw["workclass"][-1] = "never-seen-category"
    return raw


def training_predict(exported, raw, version=1):
    """The training pipeline's forward (fitted spec from the data, state from training)."""
    task, state = exported["task"], exported["states"][version]
    encoded = task.signatures["serving_default"].encode_np(raw)
    forward = jax.jit(lambda v, c, x: run_forward(task.model, task.forward, v, c, x,
                                                  train=False)[0])
    out = forward(jax.device_get(state.variables), jax.device_get(state.consts), encoded)
    return {k: np.asarray(v) for k, v in out.items()}


def post(http, path, body, **kw):
    return http.post(path, content=json.dumps(body), **kw)


# ------------------------------------------------------------------------------ round trips
def test_rest_grpc_and_v2_agree_with_training(exported, server, http):
    raw = raw_rows(exported)
    want = training_predict(exported, raw)
    rows = post(http, "/v1/models/tab:predict", codec.tfs_request(raw, "row"))
    cols = post(http, "/v1/models/tab/versions/1:predict", codec.tfs_request(raw, "columnar"))
    v2 = post(http, "/v2/models/tab/infer", codec.v2_request(raw, "abc"))
    assert rows.status_code == cols.status_code == v2.status_code == 200, rows.text
    assert not any("x-mlsd-fallback" in r.headers for r in (rows, cols, v2))
    assert rows.headers["x-model-version"] == "1" and rows.headers["x-request-id"]
    got_rows = {k: np.array([r[k] for r in rows.json()["predictions"]]) for k in want}
    got_v2 = {o["name"]: np.array(o["data"]) for o in v2.json()["outputs"]}
    assert v2.json()["id"] == "abc" and v2.json()["model_version"] == "1"
    client = Client(server.grpc_target)
    try:
        got_grpc, response, _ = client.predict("tab", raw)
    finally:
        client.close()
    assert response.model_spec.version.value == 1
    for got in (got_rows, cols.json()["outputs"], got_v2, got_grpc):
        for k in want:
            np.testing.assert_allclose(np.asarray(got[k], np.float64), want[k], rtol=1e-5,
                                       atol=1e-6)


def test_savedmodel_execution_agrees_with_jax(exported):
    raw = raw_rows(exported)
    want = training_predict(exported, raw)
    state = build_state(_cfg(exported, execution="savedmodel", log={"enabled": False}))
    try:
        app = RestApi(state.service).app()
        from starlette.testclient import TestClient

        with TestClient(app) as client:
            r = client.post("/v1/models/tab:predict",
                            content=json.dumps(codec.tfs_request(raw, "columnar")))
            v2 = client.post("/v2/models/tab/infer", content=json.dumps(codec.v2_request(raw)))
    finally:
        state.close()
    assert r.status_code == 200 and v2.status_code == 200, r.text
    assert "x-mlsd-fallback" not in r.headers and "parameters" not in v2.json()
    np.testing.assert_allclose(r.json()["outputs"]["prob"], want["prob"], atol=1e-4)
    got = {o["name"]: o["data"] for o in v2.json()["outputs"]}
    np.testing.assert_allclose(got["logit"], want["logit"], atol=1e-4)


def test_classify_regress_status_and_metadata(exported, server, http):
    raw = raw_rows(exported)
    want = training_predict(exported, raw)["prob"]
    examples = codec.tfs_request(raw, "row")["instances"]
    context = {"race": examples[0]["race"]}
    for ex in examples:
        ex.pop("race")
    body = {"examples": examples[:1], "context": context}
    classify = post(http, "/v1/models/tab:classify", body).json()["results"]
    regress = post(http, "/v1/models/tab/labels/none:regress", body)
    assert regress.status_code == 404 and "label" in regress.json()["error"]
    regress = post(http, "/v1/models/tab:regress", body).json()["results"]
    np.testing.assert_allclose(regress, want[:1], atol=1e-6)
    assert classify[0][1][0] == "1" and abs(classify[0][1][1] - want[0]) < 1e-6
    status = http.get("/v1/models/tab").json()
    assert status == {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {
        "error_code": "OK", "error_message": ""}}]}
    meta = http.get("/v1/models/tab/versions/1/metadata").json()
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["workclass"]["dtype"] == "DT_STRING"
    assert sig["inputs"]["age"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert set(sig["outputs"]) == {"prob", "logit"}
    assert meta["metadata"]["mlsd_model"]["task"] == "tabular"
    assert meta["metadata"]["mlsd_model"]["data_fingerprint"].startswith("sha256:")
    v2 = http.get("/v2/models/tab").json()
    assert v2["versions"] == ["1"]
    assert {"name": "age", "datatype": "FP32", "shape": [-1]} in v2["inputs"]
    assert http.get("/v2/health/live").status_code == 200
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get("/v2/models/tab/versions/1/ready").json()["ready"] is True
    assert http.get("/v2/models/tab/versions/9/ready").status_code == 503


def test_grpc_metadata_status_and_errors(server):
    client = Client(server.grpc_target)
    try:
        req = tfs_protos.message("tensorflow.serving.GetModelMetadataRequest")(
            model_spec={"name": "tab"}, metadata_field=["signature_def"])
        meta = client.GetModelMetadata(req, timeout=10)
        sig_map = tfs_protos.message("tensorflow.serving.SignatureDefMap")()
        type_url = meta.metadata["signature_def"].type_url
        assert type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
        sig_map.ParseFromString(meta.metadata["signature_def"].value)
        assert sig_map.signature_def["serving_default"].inputs["age"].dtype == 1  # DT_FLOAT
        status = client.GetModelStatus(tfs_protos.message(
            "tensorflow.serving.GetModelStatusRequest")(model_spec={"name": "tab"}), timeout=10)
        assert [(s.version, s.state) for s in status.model_version_status] == [(1, 30)]
        with pytest.raises(grpc.RpcError) as e:
            client.predict("nope", {"age": np.zeros(1, np.float32)})
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as e:
            client.predict("tab", {"age": np.zeros(1, np.float32)})
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "missing input" in e.value.details()
    finally:
        client.close()


# ------------------------------------------------------------------------------- validation
def _bad_requests(raw_body):
    inputs = raw_body["inputs"]
    drop = {k: v for k, v in inputs.items() if k != "age"}
    return [
        ("/v1/models/nope:predict", raw_body, 404, "nope"),
        ("/v1/models/tab/versions/7:predict", raw_body, 404, "version 7"),
        ("/v1/models/tab/versions/x1:predict", raw_body, 400, "version"),
        ("/v1/models/tab:predict", {"inputs": drop}, 400, "age"),
        ("/v1/models/tab:predict", {"inputs": {**inputs, "agee": [1.0]}}, 400, "agee"),
        ("/v1/models/tab:predict", {"inputs": {**inputs, "age": ["old"] * 2}}, 400, "age"),
        ("/v1/models/tab:predict", {"inputs": {**inputs, "age": [[1.0]] * 2}}, 400, "age"),
        ("/v1/models/tab:predict", {"inputs": {**inputs, "age": [1.0]}}, 400, "age"),
        ("/v1/models/tab:predict", {"inputs": {**inputs, "workclass": [1, 2]}}, 400, "workclass"),
        ("/v1/models/tab:predict", {"inputs": {**inputs, "workclass": [{"b64": "%%"}] * 2}},
         400, "b64"),
        ("/v1/models/strict:predict", {"inputs": {**inputs, "age": [float("nan")] * 2}}, 400,
         "NaN"),
        ("/v1/models/tab:predict", {"inputs": {**inputs, "age": [1e39, 1.0]}}, 400, "age"),
        ("/v1/models/tab:predict", {"instances": []}, 400, "instances"),
        ("/v1/models/tab:predict", {"instances": [{"age": 1.0}], "inputs": {}}, 400, "exactly one"),
        ("/v1/models/tab:predict", [1, 2], 400, "object"),
        ("/v1/models/tab:predict", {"inputs": inputs, "signature_name": "nope"}, 400, "nope"),
        ("/v1/models/tab:frobnicate", raw_body, 404, "frobnicate"),
        ("/v2/models/tab/infer", {"inputs": [{"name": "age", "shape": [2], "datatype": "FP32",
                                              "data": [1.0]}]}, 400, "age"),
        ("/v2/models/tab/infer", {"inputs": [{"name": "age", "shape": [1], "datatype": "BYTES",
                                              "data": ["x"]}]}, 400, "age"),
        ("/v2/models/tab/infer", {"inputs": "x"}, 400, "inputs"),
        ("/v2/models/tab/versions/3/infer", {"inputs": []}, 404, "version 3"),
    ]


def test_malformed_requests_get_4xx_naming_the_field(exported, server, http):
    body = codec.tfs_request(raw_rows(exported, 2), "columnar")
    for path, payload, status, needle in _bad_requests(body):
        r = post(http, path, payload)
        assert r.status_code == status, (path, payload if len(str(payload)) < 300 else "", r.text)
        assert needle in r.json()["error"], (path, r.json())
    r = http.post("/v1/models/tab:predict", content=b"{not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = http.post("/v1/models/tab:predict", content=b"x" * (17 << 20))
    assert r.status_code == 413
    r = http.post("/v1/models/tab:predict", content=b"{}", headers={"content-type": "image/png"})
    assert r.status_code == 415
    r = http.post("/v1/models/tab:predict", content=json.dumps(body),
                  headers={"x-request-deadline-ms": "soon"})
    assert r.status_code == 400 and "Deadline" in r.json()["error"]
    assert http.get("/v1/models/tab").status_code == 200   # still serving


def _fuzz_bodies():
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                        st.just({"b64": "aGk="}), st.just({"b64": "!!"}))
    values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), c,
                                                                       max_size=3)),
                          max_leaves=12)
    names = st.sampled_from(["age", "workclass", "race", "hours_per_week", "x", "", "b64"])
    columns = st.dictionaries(names, values, max_size=4)
    tfs = st.one_of(
        st.fixed_dictionaries({"inputs": st.one_of(columns, values)}),
        st.fixed_dictionaries({"instances": st.one_of(st.lists(columns, max_size=3), values)}),
        st.fixed_dictionaries({"signature_name": values, "inputs": columns}),
        st.fixed_dictionaries({"examples": st.lists(columns, max_size=3), "context": values}),
        values)
    tensor = st.fixed_dictionaries({"name": st.one_of(names, values),
                                    "shape": st.one_of(st.lists(st.integers(-2, 4), max_size=3),
                                                       values),
                                    "datatype": st.sampled_from(["FP32", "BYTES", "INT64",
                                                                 "BOOL", "FP99", ""]),
                                    "data": values})
    v2 = st.one_of(st.fixed_dictionaries({"inputs": st.lists(tensor, max_size=3)},
                                         optional={"outputs": values, "id": values,
                                                   "parameters": values}), values)
    return tfs, v2


def test_fuzzed_bodies_get_4xx_never_5xx(exported, server):
    """Thousands of generated bodies through the in-process ASGI app: 200 or 4xx, never 5xx."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from starlette.testclient import TestClient

    tfs, v2 = _fuzz_bodies()
    paths = st.sampled_from(["/v1/models/tab:predict", "/v1/models/tab:classify",
                             "/v1/models/tab:regress", "/v1/models/tab/versions/1:predict",
                             "/v1/models/strict/labels/x:predict", "/v1/models/nope:predict"])
    app = RestApi(Service(server.cfg, server.state.store, None, None)).app()
    seen = {"ok": 0, "4xx": 0}
    with TestClient(app, raise_server_exceptions=True) as client:
        def check(r):
            assert r.status_code < 500, r.text
            assert r.status_code == 200 or "error" in r.json()
            seen["ok" if r.status_code == 200 else "4xx"] += 1

        @settings(max_examples=700, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(path=paths, body=tfs)
        def fuzz_tfs(path, body):
            check(client.post(path, content=json.dumps(body)))

        @settings(max_examples=500, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(path=st.sampled_from(["/v2/models/tab/infer", "/v2/models/tab/versions/1/infer"]),
               body=v2)
        def fuzz_v2(path, body):
            check(client.post(path, content=json.dumps(body)))

        @settings(max_examples=300, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(path=st.text(alphabet="abcdv12/:.%-_", max_size=30), body=st.binary(max_size=64))
        def fuzz_raw(path, body):
            check(client.post("/v1/models/" + path, content=body))

        fuzz_tfs()
        fuzz_v2()
        fuzz_raw()
        # Mutations of a valid body: one column replaced by a generated value.
        valid = codec.tfs_request(raw_rows(exported, 2), "columnar")

        @settings(max_examples=500, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(name=st.sampled_from(sorted(valid["inputs"])), value=_fuzz_bodies()[0])
        def fuzz_columns(name, value):
            check(client.post("/v1/models/tab:predict", content=json.dumps(
                {"inputs": {**valid["inputs"], name: value}})))

        fuzz_columns()
    assert seen["4xx"] > 1500
    assert client.get("/v1/models/tab").status_code == 200


# ------------------------------------------------------------------ deadlines and fallbacks
def test_missed_deadline_and_model_error_answer_with_the_flagged_fallback(exported, server, http):
    from mlsd_jax.serving.metrics import metrics

    body = codec.tfs_request(raw_rows(exported, 3), "columnar")
    rate = exported["task"].info["positive_rate"]
    before = metrics().fallbacks.labels("tab", "deadline")._value.get()
    r = post(http, "/v1/models/tab:predict", body, headers={"x-request-deadline-ms": "0.001"})
    assert r.status_code == 200 and r.headers["x-mlsd-fallback"] == "deadline"
    assert r.json()["fallback"] == "deadline"
    np.testing.assert_allclose(r.json()["outputs"]["prob"], [rate] * 3, rtol=1e-6)
    assert metrics().fallbacks.labels("tab", "deadline")._value.get() == before + 1
    finite = raw_rows(exported, 3)
    finite["age"][1] = 40.0
    strict = post(http, "/v1/models/strict:predict", codec.tfs_request(finite),
                  headers={"x-request-deadline-ms": "0.001"})
    assert strict.status_code == 504 and "deadline" in strict.json()["error"]
    # A device fault: the loaded parameters of "faulty" are freed under the server.
    mv = server.state.store.get("faulty").resolve()
    for leaf in jax.tree.leaves(mv.executors["serving_default"]._variables):
        leaf.delete()
    r = post(http, "/v1/models/faulty:predict", body)
    assert r.status_code == 200 and r.headers["x-mlsd-fallback"] == "error"
    workclass = body["inputs"]["workclass"]
    assert r.json()["outputs"]["logit"] == [0.5 if w == "Private" else -1.0 for w in workclass]
    assert r.json()["outputs"]["prob"] == pytest.approx([rate] * 3)
    assert metrics().fallbacks.labels("faulty", "error")._value.get() >= 1
    v2 = post(http, "/v2/models/faulty/infer", codec.v2_request(raw_rows(exported, 3)))
    assert v2.json()["parameters"] == {"fallback": "error"}
    ok = post(http, "/v1/models/tab:predict", body)
    assert ok.status_code == 200 and "x-mlsd-fallback" not in ok.headers


def test_queue_full_is_refused_with_429_and_recovers(exported):
    """64 concurrent requests into a queue of 4 held for 300 ms: each is served or refused
    with 429 (none lost), and the server serves again right after."""
    cfg = _cfg(exported, log={"enabled": False},
               batching={**BATCHING, "max_queued": 4, "batch_timeout_ms": 300})
    state = build_state(cfg)
    body = json.dumps(codec.tfs_request(raw_rows(exported, 1), "columnar"))

    async def burst():
        transport = httpx.ASGITransport(app=RestApi(state.service).app())
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            rs = await asyncio.gather(*[client.post("/v1/models/tab:predict", content=body)
                                        for _ in range(64)])
            after = await client.post("/v1/models/tab:predict", content=body)
        return [r.status_code for r in rs], after.status_code

    from prometheus_client import REGISTRY

    def batches():
        sample = REGISTRY.get_sample_value
        return (sample("mlsd_serving_batch_requests_sum", {"model": "tab"}) or 0,
                sample("mlsd_serving_batch_requests_count", {"model": "tab"}) or 0)

    before = batches()
    try:
        codes, after = asyncio.run(burst())
    finally:
        state.close()
    assert set(codes) <= {200, 429} and len(codes) == 64
    assert codes.count(429) >= 50 and codes.count(200) >= 4
    assert after == 200
    requests, runs = (a - b for a, b in zip(batches(), before))
    assert requests == codes.count(200) + 1 and runs < requests   # the queued ones shared a batch


def test_a_lone_request_runs_at_once_and_concurrent_ones_share_batches(exported, server,
                                                                       monkeypatch):
    """With batch_timeout_ms=0, a request alone in the server runs on the event loop (no
    hand-off to the batch thread); requests that arrive together queue and run as batches on
    the batch thread."""
    executor = server.state.store.get("tab").resolve().executors["serving_default"]
    runs: list[tuple[str, int]] = []
    real = executor.run

    def run(requests):
        runs.append((threading.current_thread().name, len(requests)))
        return real(requests)

    monkeypatch.setattr(executor, "run", run)
    body = json.dumps(codec.tfs_request(raw_rows(exported, 1), "columnar"))
    with httpx.Client(base_url=server.rest_url, timeout=30) as client:
        for _ in range(3):
            assert client.post("/v1/models/tab:predict", content=body).status_code == 200
    assert [name for name, _ in runs] == ["mlsd-serving"] * 3      # the server's event loop
    runs.clear()

    async def burst():
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=server.rest_url, timeout=30,
                                     limits=limits) as client:
            return await asyncio.gather(*[client.post("/v1/models/tab:predict", content=body)
                                          for _ in range(48)])

    for _ in range(3):       # the client shares this process: give overlap three chances
        runs.clear()
        assert all(r.status_code == 200 for r in asyncio.run(burst()))
        assert sum(n for _, n in runs) == 48
        batched = [n for name, n in runs if name.startswith("batcher-")]
        if batched and max(batched) > 1:
            break
    assert batched and max(batched) > 1 and len(runs) < 48, runs


def _metric(text: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_overload_is_shed_at_admission_and_the_server_recovers(exported):
    """A running server (uvicorn + grpc.aio) with max_inflight=3 and batches held 250 ms:
    48 concurrent REST and 12 gRPC predicts are each answered 200 or refused (429 /
    RESOURCE_EXHAUSTED; none lost), probes are never refused, the refusals show in /metrics,
    a request that waits past its deadline is answered 504 without running, and the server
    serves normally afterwards."""
    models = [{"name": "tab", "base_path": str(exported["base"])},
              {"name": "strict", "base_path": str(exported["base"]),
               "fallback": {"enabled": False}}]
    cfg = _cfg(exported, models=models, max_inflight=3, log={"enabled": False},
               batching={**BATCHING, "batch_timeout_ms": 250})
    body = json.dumps(codec.tfs_request(raw_rows(exported, 1), "columnar"))
    v2_body = json.dumps(codec.v2_request(raw_rows(exported, 1)))
    with start_server(cfg) as srv:
        metrics_before = httpx.get(f"{srv.rest_url}/metrics").text

        async def burst():
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
            async with httpx.AsyncClient(base_url=srv.rest_url, timeout=30,
                                         limits=limits) as client:
                grpc_client = Client(srv.grpc_target)
                loop = asyncio.get_running_loop()

                def grpc_one():
                    try:
                        grpc_client.predict("tab", raw_rows(exported, 1), timeout=30)
                        return "OK"
                    except grpc.RpcError as e:
                        return e.code().name

                try:
                    rest = [client.post("/v1/models/tab:predict", content=body)
                            for _ in range(40)]
                    rest += [client.post("/v2/models/tab/infer", content=v2_body)
                             for _ in range(8)]
                    probes = [client.get(p) for p in ("/healthz", "/metrics", "/v2/health/ready",
                                                      "/v1/models/tab", "/v2/models/tab")]
                    grpcs = [loop.run_in_executor(None, grpc_one) for _ in range(12)]
                    out = await asyncio.gather(asyncio.gather(*rest), asyncio.gather(*probes),
                                               asyncio.gather(*grpcs))
                finally:
                    grpc_client.close()
                return out

        rest, probes, grpcs = asyncio.run(burst())
        codes = [r.status_code for r in rest]
        assert len(codes) == 48 and set(codes) <= {200, 429}, codes
        assert codes.count(429) >= 10, codes
        for r in rest:
            if r.status_code == 429:
                assert "max_inflight=3" in r.json()["error"]
            else:
                assert r.headers.get("x-mlsd-fallback") is None
        assert set(grpcs) <= {"OK", "RESOURCE_EXHAUSTED"} and len(grpcs) == 12, grpcs
        assert [p.status_code for p in probes] == [200] * 5
        refused = codes.count(429) + grpcs.count("RESOURCE_EXHAUSTED")
        assert codes.count(200) + grpcs.count("OK") >= 3      # the slots held were served
        text = httpx.get(f"{srv.rest_url}/metrics").text
        shed = (_metric(text, "mlsd_serving_shed_total", model="tab", reason="inflight")
                - _metric(metrics_before, "mlsd_serving_shed_total", model="tab",
                          reason="inflight"))
        assert shed == refused
        got_429 = (_metric(text, "mlsd_serving_requests_total", model="tab", code="429")
                   - _metric(metrics_before, "mlsd_serving_requests_total", model="tab",
                             code="429"))
        assert got_429 == refused
        # Queue wait past the deadline (batches held 250 ms, deadline 50 ms): 504, not run late.
        late = httpx.post(f"{srv.rest_url}/v1/models/strict:predict", content=body,
                          headers={"x-request-deadline-ms": "50"}, timeout=30)
        assert late.status_code == 504 and "deadline" in late.json()["error"]
        after = _metric(httpx.get(f"{srv.rest_url}/metrics").text, "mlsd_serving_shed_total",
                        model="strict", reason="deadline")
        assert after >= 1
        # Afterwards: normal service over both APIs, the slots all given back.
        end = time.monotonic() + 5
        while srv.state.service.admission.inflight and time.monotonic() < end:
            time.sleep(0.01)
        assert srv.state.service.admission.inflight == 0
        for _ in range(3):
            ok = httpx.post(f"{srv.rest_url}/v1/models/tab:predict", content=body, timeout=30)
            assert ok.status_code == 200 and len(ok.json()["outputs"]["prob"]) == 1
        client = Client(srv.grpc_target)
        try:
            out, _, _ = client.predict("tab", raw_rows(exported, 2))
        finally:
            client.close()
        assert out["prob"].shape == (2,)


def test_response_cache_hits_expire_and_stay_bounded(exported, server):
    from starlette.testclient import TestClient

    from mlsd_jax.serving.metrics import metrics

    cache = ResponseCache(ttl_s=0.5, max_bytes=2000)
    app = RestApi(Service(server.cfg, server.state.store, None, cache)).app()
    body = json.dumps(codec.tfs_request(raw_rows(exported, 2), "columnar"))
    hits = metrics().cache.labels("tab", "hit")
    with TestClient(app) as client:
        first = client.post("/v1/models/tab:predict", content=body).json()
        h0 = hits._value.get()
        second = client.post("/v1/models/tab:predict", content=body).json()
        assert second == first and hits._value.get() == h0 + 1
        time.sleep(0.6)
        client.post("/v1/models/tab:predict", content=body)
        assert hits._value.get() == h0 + 1          # expired: a miss
        for i in range(40):                         # distinct requests: the size bound holds
            rows = raw_rows(exported, 2)
            rows["age"] = rows["age"] + i
            client.post("/v1/models/tab:predict", content=json.dumps(codec.tfs_request(rows)))
            assert cache.nbytes <= 2000
    assert 0 < len(cache) < 40


# --------------------------------------------------------------------- versions, hot swap
def _install(src: Path, base: Path, version: int) -> None:
    """Copies a version in the way an exporter publishes one: a temp folder, then a rename."""
    tmp = base / f".tmp-{version}"
    shutil.copytree(src, tmp)
    os.replace(tmp, base / str(version))


@pytest.mark.slow
def test_hot_swap_rollback_and_failed_load_under_traffic(exported, tmp_path):
    base = tmp_path / "swap"
    base.mkdir()
    _install(exported["paths"][1], base, 1)
    cfg = _cfg(exported, models=[{"name": "m", "base_path": str(base), "default_label": "stable"}],
               poll_s=0.2, log={"dir": str(tmp_path / "log")})
    raw = raw_rows(exported, 2)
    want = {v: load_bundle(exported["paths"][v]).predict(raw)["prob"] for v in (1, 2)}
    body = json.dumps(codec.tfs_request(raw, "columnar"))
    results, stop = [], threading.Event()

    def traffic(url):
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                r = client.post("/v1/models/m:predict", content=body)
                results.append((r.status_code, r.headers.get("x-model-version"),
                                r.json()["outputs"]["prob"] if r.status_code == 200 else r.text))

    def wait_for(version, timeout=120):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if results and results[-1][1] == str(version):
                return
            time.sleep(0.05)
        raise AssertionError(f"traffic never reached version {version}: {results[-3:]}")

    with start_server(cfg) as srv:
        threads = [threading.Thread(target=traffic, args=(srv.rest_url,)) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.3)
            _install(exported["paths"][2], base, 2)              # new version: hot swap
            wait_for(2)
            set_labels(base, {"stable": 1})                     # roll back by label
            wait_for(1)
            (base / "3").mkdir()                                 # a broken version
            (base / "3" / "saved_model.pb").write_bytes(b"garbage")
            set_labels(base, {})                                 # back to the newest loadable
            wait_for(2)
            time.sleep(1.0)
            status = httpx.get(f"{srv.rest_url}/v1/models/m").json()["model_version_status"]
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert len(results) > 20
    failures = [r for r in results if r[0] != 200]
    assert not failures, failures[:3]
    for _, version, prob in results:                  # every answer is its version's answer
        np.testing.assert_allclose(prob, want[int(version)], rtol=1e-5)
    states = {s["version"]: (s["state"], s["status"]["error_message"]) for s in status}
    assert states["2"] == ("AVAILABLE", "") and states["3"][0] == "END"
    assert "mlsd_model.json" in states["3"][1]


def test_version_paths_cannot_escape_the_base(exported, tmp_path):
    base = tmp_path / "m"
    base.mkdir()
    _install(exported["paths"][1], base, 1)
    outside = tmp_path / "outside"
    shutil.copytree(exported["paths"][2], outside)
    (base / "7").symlink_to(outside, target_is_directory=True)
    state = build_state(_cfg(exported, models=[{"name": "m", "base_path": str(base),
                                                "version_policy": "all"}],
                             log={"enabled": False}))
    try:
        model = state.store.get("m")
        assert sorted(model.view.versions) == [1]
        assert model.status[7][0] == "END" and "outside the base path" in model.status[7][1]
        from starlette.testclient import TestClient

        with TestClient(RestApi(state.service).app()) as client:
            for path in ("/v1/models/m/versions/..%2F..%2Fetc:predict",
                         "/v1/models/..%2Fm:predict", "/v1/models/m/versions/-1:predict"):
                r = client.post(path, content=b"{}")
                assert r.status_code in (400, 404), (path, r.text)
    finally:
        state.close()


# ------------------------------------------------------------------------ prediction log
def test_prediction_log_records_rotates_and_exports_parquet(exported, tmp_path):
    import pyarrow.parquet as pq

    cfg = _cfg(exported, log={"dir": str(tmp_path / "log"), "rotate_bytes": 20_000,
                              "flush_ms": 5})
    state = build_state(cfg)
    raw = raw_rows(exported, 2)
    from starlette.testclient import TestClient

    try:
        with TestClient(RestApi(state.service).app()) as client:
            ids = []
            for i in range(30):
                r = client.post("/v1/models/tab:predict", headers={"x-request-id": f"r{i}"},
                                content=json.dumps(codec.tfs_request(raw)))
                ids.append(r.headers["x-request-id"])
            bad = client.post("/v1/models/tab:predict", headers={"x-request-id": "bad"},
                              content=b"[]")
            assert bad.status_code == 400
            state.predlog.flush()
    finally:
        state.close()
    records = read_records(tmp_path / "log")
    by_id = {r["request_id"]: r for r in records}
    assert set(ids) | {"bad"} <= set(by_id)
    rec = by_id["r0"]
    assert (rec["model"], rec["version"], rec["code"]) == ("tab", 1, 200)
    assert rec["api"] == "rest:predict" and rec["fallback"] is None
    assert json.loads(rec["inputs"])["workclass"][-1] == "never-seen-category"
    assert json.loads(rec["inputs"])["age"][1] is None        # NaN (missing) as null
    assert len(json.loads(rec["outputs"])["prob"]) == 2 and rec["latency_ms"] > 0
    assert by_id["bad"]["code"] == 400 and "error" in json.loads(by_id["bad"]["outputs"])
    assert len(list((tmp_path / "log").glob("predictions-0-*.sqlite"))) >= 1   # rotated
    n = export_parquet(tmp_path / "log", tmp_path / "log.parquet")
    table = pq.read_table(tmp_path / "log.parquet")
    assert n == table.num_rows == len(records) >= 31
    assert set(table.column_names) >= {"request_id", "model", "version", "inputs", "outputs",
                                       "latency_ms", "fallback"}


def _start_cli(exported, tmp_path, *extra):
    ready = tmp_path / "ready.json"
    cmd = [sys.executable, "-m", "experiments.serve", "model_name=tab",
           f"model_base_path={exported['base']}", "host=127.0.0.1", "rest_port=0",
           "grpc_port=-1", f"ready_file={ready}", f"log.dir={tmp_path / 'log'}",
           f"compilation_cache={exported['cache']}", "batching.buckets=[1,4,16]",
           "batching.max_batch_size=16", "batching.dim_buckets={}", *extra]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line, f"the server exited with {proc.poll()} before it was ready"
        info = json.loads(line)
        assert info["event"] == "ready" and json.loads(ready.read_text()) == info
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, info


@pytest.mark.slow
def test_acknowledged_records_survive_kill_9(exported, tmp_path):
    """log.durable=true: a response means its record is committed; SIGKILL loses none."""
    proc, info = _start_cli(exported, tmp_path, "log.durable=true", "access_log=false")
    acked = []
    try:
        body = json.dumps(codec.tfs_request(raw_rows(exported, 2)))
        with httpx.Client(base_url=f"http://127.0.0.1:{info['rest_port']}", timeout=30) as c:
            for i in range(60):
                r = c.post("/v1/models/tab:predict", content=body,
                           headers={"x-request-id": f"k{i}"})
                if r.status_code == 200:
                    acked.append(r.headers["x-request-id"])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(acked) == 60
    logged = {r["request_id"] for r in read_records(tmp_path / "log")}
    assert set(acked) <= logged
    db = sqlite3.connect(next((tmp_path / "log").glob("predictions-0.sqlite")))
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.slow
def test_non_durable_records_are_committed_within_flush_ms(exported, tmp_path):
    """log.durable=false: every record is committed within log.flush_ms of its response."""
    proc, info = _start_cli(exported, tmp_path, "log.durable=false", "log.flush_ms=50",
                            "access_log=false")
    acked = []
    try:
        body = json.dumps(codec.tfs_request(raw_rows(exported, 2)))
        with httpx.Client(base_url=f"http://127.0.0.1:{info['rest_port']}", timeout=30) as c:
            for i in range(40):
                r = c.post("/v1/models/tab:predict", content=body,
                           headers={"x-request-id": f"n{i}"})
                acked.append(r.headers["x-request-id"])
        time.sleep(0.05 * 4)     # the promised window, with margin for a loaded machine
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert set(acked) <= {r["request_id"] for r in read_records(tmp_path / "log")}


@pytest.mark.slow
def test_worker_processes_share_the_ports_and_stop_cleanly(exported, tmp_path):
    """workers=2: both processes answer on the one REST and gRPC port (each logs its own
    file), /metrics aggregates them, and SIGTERM stops everything."""
    proc, info = _start_cli(exported, tmp_path, "workers=2", "grpc_port=0", "log.flush_ms=5",
                            "access_log=false")
    try:
        assert info["workers"] == 2 and len(info["worker_pids"]) == 2
        body = json.dumps(codec.tfs_request(raw_rows(exported, 2)))
        for _ in range(60):   # new connections: the kernel spreads them over the workers
            with httpx.Client(base_url=f"http://127.0.0.1:{info['rest_port']}") as c:
                assert c.post("/v1/models/tab:predict", content=body).status_code == 200
        client = Client(f"127.0.0.1:{info['grpc_port']}")
        try:
            out, _, _ = client.predict("tab", raw_rows(exported, 2))
        finally:
            client.close()
        assert out["prob"].shape == (2,)
        text = httpx.get(f"http://127.0.0.1:{info['rest_port']}/metrics").text
        line = next(l for l in text.splitlines() if l.startswith("mlsd_serving_requests_total")
                    and 'api="rest:predict"' in l)
        assert float(line.rsplit(" ", 1)[1]) == 60.0
        time.sleep(0.5)
        files = {p.name for p in (tmp_path / "log").glob("predictions-*.sqlite")}
        assert {"predictions-0.sqlite", "predictions-1.sqlite"} <= files
        counts = [sqlite3.connect(tmp_path / "log" / f).execute(
            "SELECT COUNT(*) FROM predictions").fetchone()[0] for f in sorted(files)]
        assert all(c > 0 for c in counts) and sum(counts) == 61, counts
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0
    for pid in info["worker_pids"]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _tensorflow_serving_client_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorflow_serving") is not None


TFS_CLIENT = r'''
import sys, numpy as np, grpc, tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)
channel = grpc.insecure_channel(sys.argv[1])
stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
request = predict_pb2.PredictRequest()
request.model_spec.name = "tab"
request.model_spec.signature_name = "serving_default"
rows = {"workclass": ["Private"], "education": ["HS-grad"], "marital_status": ["?"],
        "occupation": ["Sales"], "relationship": ["Husband"], "race": ["White"], "gender": ["Male"],
        "native_country": ["Mexico"]}
for k, v in rows.items():
    request.inputs[k].CopyFrom(tf.make_tensor_proto(v))
for k in ("age", "fnlwgt", "educational_num", "capital_gain", "capital_loss", "hours_per_week"):
    request.inputs[k].CopyFrom(tf.make_tensor_proto(np.array([40.0], np.float32)))
response = stub.Predict(request, 30.0)
prob = tf.make_ndarray(response.outputs["prob"])
meta = stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
    model_spec={"name": "tab"}, metadata_field=["signature_def"]), 30.0)
sig_map = get_model_metadata_pb2.SignatureDefMap()
meta.metadata["signature_def"].Unpack(sig_map)
status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
    get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "tab"}), 30.0)
print(float(prob[0]), response.model_spec.version.value, sorted(sig_map.signature_def),
      status.model_version_status[0].state)
'''


@pytest.mark.slow
@pytest.mark.skipif(not _tensorflow_serving_client_available(),
                    reason="the published client needs: pip install --no-deps "
                           "tensorflow-serving-api==2.21.0")
def test_unchanged_tensorflow_serving_client(exported, server):
    """The published tensorflow-serving-api client (stubs, messages, tf.make_tensor_proto)."""
    out = subprocess.run([sys.executable, "-c", TFS_CLIENT, server.grpc_target], cwd=REPO,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr[-3000:]
    prob, version, sigs, state = out.stdout.split(maxsplit=3)
    raw = {k: np.asarray(v) for k, v in {
        "workclass": ["Private"], "education": ["HS-grad"], "marital_status": ["?"],
        "occupation": ["Sales"], "relationship": ["Husband"], "race": ["White"],
        "gender": ["Male"], "native_country": ["Mexico"]}.items()}
    raw.update({k: np.array([40.0], np.float32) for k in (
        "age", "fnlwgt", "educational_num", "capital_gain", "capital_loss", "hours_per_week")})
    want = load_bundle(exported["paths"][1]).predict(raw)["prob"][0]
    assert abs(float(prob) - want) < 1e-6 and version == "1"
    assert sigs.startswith("['serving_default']") and state.strip() == "30"


def test_serve_config_composes_and_bad_settings_name_the_key(exported):
    from hydra import compose, initialize_config_dir

    from mlsd_jax.errors import ConfigError
    from mlsd_jax.experiment import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("serve", overrides=["model_name=tab", f"model_base_path={exported['base']}",
                                          "workers=2", "batching.max_batch_size=32"])
    typed = serve_config(cfg)
    assert (typed.rest_port, typed.grpc_port, typed.workers) == (8501, 8500, 2)
    assert [m.name for m in typed.model_list()] == ["tab"]
    for bad, needle in ((["model_name=tab"], "model_base_path"),
                        (["model_name=a", "model_base_path=/x", "execution=tpu"], "execution"),
                        (["model_name=a", "model_base_path=/x", "batching.buckets=[4,2]"],
                         "batching.buckets"),
                        (["model_name=a", "model_base_path=/x", "grpc_port=70000"], "grpc_port")):
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            node = compose("serve", overrides=bad)
        with pytest.raises(ConfigError, match=needle):
            serve_config(node)
    with pytest.raises(ConfigError, match="not a directory"):
        build_state(_cfg(exported, models=[{"name": "x", "base_path": "/nonexistent"}]))
