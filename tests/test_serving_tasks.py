"""Every task is served: trained (``debug=fast``) and exported by ``experiments.run``'s code
path, then the same raw rows go through the training pipeline's predict (the task rebuilt from
the data, the best checkpoint restored), the running server over REST (row and columnar), KServe
V2 and gRPC, and the reloaded SavedModel, for every signature; all must agree. Parametrized over
``mlsd_jax.tasks.BUILDERS``, so a new task is covered without touching this file."""
import importlib.util
import json

import httpx
import jax
import numpy as np
import pytest
from omegaconf import OmegaConf

from mlsd_jax import sharding as shd
from mlsd_jax import tasks
from mlsd_jax.experiment import run, typed
from mlsd_jax.export import saved_model_predict
from mlsd_jax.serving import codec, serve_config, start_server
from mlsd_jax.serving.grpc_service import Client
from mlsd_jax.tasks.base import cast_inputs, predict_fn
from mlsd_jax.training.checkpoint import Checkpoints
from mlsd_jax.training.optim import OptimConfig
from mlsd_jax.training.trainer import Trainer, TrainerConfig, metric_key
from tests.utils import compose_config

pytestmark = pytest.mark.slow


def _task_module_exists(name: str) -> bool:
    return importlib.util.find_spec(tasks.BUILDERS[name].split(":")[0]) is not None


def training_outputs(cfg, workdir):
    """Per signature: raw examples and the training pipeline's outputs on them."""
    task = tasks.build(cfg)
    trainer_cfg = typed(TrainerConfig, cfg.trainer)
    mesh = shd.make_mesh({"axes": ["data", "model"], "shape": [-1, 1]})
    trainer = Trainer(task, trainer_cfg, typed(OptimConfig, cfg.optim), mesh)
    ckpt = Checkpoints(workdir / "checkpoints", metric=metric_key(trainer_cfg.eval_split,
                                                                  task.target_metric),
                       mode=task.target_mode)
    restored = ckpt.restore_best(trainer.abstract_state)
    ckpt.close()
    assert restored is not None, "training wrote no best checkpoint"
    state = restored[0]
    if task.post_fit is not None:  # as experiments.run does before export
        state, _ = task.post_fit(trainer, state)
    variables, consts = jax.device_get(state.variables), jax.device_get(state.consts)
    out = {}
    for name, raw in task.serving_examples.items():
        sig = task.signatures[name]
        raw = {k: np.asarray(v) for k, v in raw.items()}
        encoded = sig.encode_np(raw) if sig.encode_np is not None else raw
        encoded = cast_inputs(sig.model_inputs, encoded)
        want = jax.jit(predict_fn(task.model, sig))(variables, consts, encoded)
        out[name] = (raw, {k: np.asarray(v) for k, v in want.items()}, sig)
    return out


def _dim_buckets(examples) -> dict:
    """Bucket every non-batch named dim at the examples' own size."""
    buckets = {}
    for raw, _, sig in examples.values():
        for k, (dims, _) in sig.inputs.items():
            for i, d in enumerate(dims):
                if isinstance(d, str) and d != "batch":
                    buckets[d] = sorted(set(buckets.get(d, [])) | {int(raw[k].shape[i])})
    return buckets


def _close(got, want, what, atol=1e-5):
    for k, w in want.items():
        g = np.asarray(got[k])
        assert g.shape == w.shape, (what, k, g.shape, w.shape)
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=1e-5,
                                   atol=atol, err_msg=f"{what}: output {k}")


@pytest.mark.parametrize("name", sorted(tasks.BUILDERS))
def test_every_task_round_trips_through_the_server(name, tmp_path):
    if not _task_module_exists(name):
        pytest.skip(f"task {name!r} is registered but {tasks.BUILDERS[name]} is not written yet")
    cfg = compose_config([f"+task={name}", "export.enabled=true"])
    workdir = tmp_path / "run"
    results = run(cfg, workdir=workdir)
    export = results["paths"]["export"]
    # The run's own composed config (its run directory included: some tasks keep companion
    # models there).
    examples = training_outputs(OmegaConf.create(results["config"]), workdir)
    assert "serving_default" in examples
    serve = serve_config({
        "models": [{"name": name, "base_path": str(tmp_path / "run" / "export")}],
        "host": "127.0.0.1", "rest_port": 0, "grpc_port": 0, "access_log": False,
        "compilation_cache": str(tmp_path / "xla"), "log": {"dir": str(tmp_path / "log")},
        "batching": {"buckets": [1, 8, 32], "max_batch_size": 32,
                     "dim_buckets": _dim_buckets(examples)}})
    with start_server(serve) as server, httpx.Client(base_url=server.rest_url,
                                                     timeout=120) as http:
        client = Client(server.grpc_target)
        try:
            for sig_name, (raw, want, _) in examples.items():
                signature = None if sig_name == "serving_default" else sig_name
                for fmt in ("columnar", "row"):
                    r = http.post(f"/v1/models/{name}:predict", content=json.dumps(
                        codec.tfs_request(raw, fmt, signature)))
                    assert r.status_code == 200, r.text
                    body = r.json()
                    if fmt == "columnar":
                        got = body["outputs"] if len(want) > 1 else {next(iter(want)):
                                                                    body["outputs"]}
                    else:
                        rows = body["predictions"]
                        got = ({k: [row[k] for row in rows] for k in want} if len(want) > 1
                               else {next(iter(want)): rows})
                    _close(got, want, f"{name}/{sig_name} REST {fmt}")
                v2 = codec.v2_request(raw)
                if signature:
                    v2["parameters"] = {"signature_name": signature}
                r = http.post(f"/v2/models/{name}/infer", content=json.dumps(v2))
                assert r.status_code == 200, r.text
                got = {o["name"]: np.reshape(o["data"], o["shape"]) for o in r.json()["outputs"]}
                _close(got, want, f"{name}/{sig_name} V2")
                got, _, _ = client.predict(name, raw, signature=signature)
                _close(got, want, f"{name}/{sig_name} gRPC")
                saved = saved_model_predict(export, {k: v.astype(object) if v.dtype.kind in "OU"
                                                     else v for k, v in raw.items()}, sig_name)
                _close(saved, want, f"{name}/{sig_name} SavedModel", atol=1e-4)
            _check_card_fallback(name, results["data"], examples, http)
        finally:
            client.close()


def _check_card_fallback(name, data, examples, http):
    """A task whose model card names a serving fallback (``data.serving_fallback``, e.g. the
    recommendation popularity list) answers it, flagged and counted, when the model misses
    the request's deadline."""
    if name == "recommendation":
        assert "scores" in data.get("serving_fallback", {}), "no popularity fallback in the card"
    values = data.get("serving_fallback")
    if not values:
        return
    raw, want, _ = examples["serving_default"]
    before = _fallbacks(http, name)
    r = http.post(f"/v1/models/{name}:predict", content=json.dumps(codec.tfs_request(raw)),
                  headers={"x-request-deadline-ms": "0.001"})
    assert r.status_code == 200, r.text
    assert r.headers["x-mlsd-fallback"] == "deadline" and r.json()["fallback"] == "deadline"
    outputs = r.json()["outputs"]
    outputs = outputs if len(want) > 1 else {next(iter(want)): outputs}
    for out, value in values.items():
        got = np.asarray(outputs[out], np.float64)
        if isinstance(value, dict):      # {by_input, table, default}: looked up per value
            column = np.asarray(raw[value["by_input"]]).astype(str)
            expected = np.vectorize(lambda k: value["table"].get(k, value["default"]),
                                    otypes=[np.float64])(column)
        else:
            expected = np.broadcast_to(np.asarray(value, np.float64), got.shape)
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=f"{name}: fallback {out}")
        if name == "recommendation":     # the candidates ranked as the popularity baseline
            assert np.any(got > 0), "no candidate of the examples is among the popular items"
    assert _fallbacks(http, name) == before + 1


def _fallbacks(http, name) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if (sample.name == "mlsd_serving_fallbacks_total" and sample.labels["model"] == name
                    and sample.labels["reason"] == "deadline"):
                total += sample.value
    return total
