"""The reference profile saved with every exported model (tabular on the real ACS data), and the
ACS data option of the tabular task."""
import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from mlsd_jax import tasks
from mlsd_jax.data.acs import load_acs_employment
from mlsd_jax.experiment import MAX_REFERENCE_SCORES, PROFILE_FILE, reference_columns, run
from mlsd_jax.export.bundle import CARD, load_bundle
from mlsd_jax.monitoring import drift
from mlsd_jax.monitoring.profile import Profile
from mlsd_jax.monitoring.windows import (derive_columns, frame_from_columns, list_lengths,
                                         monitor, records_frame, text_lengths)
from tests.utils import compose_config

ACS_DEBUG = ["debug=fast", "+task=tabular", "tabular/data=acs_employment", "data.test_years=[]",
             "trainer.eval_every=4", "export.check=false"]


@functools.lru_cache(maxsize=None)
def acs_run() -> tuple[Path, dict]:
    """One debug ACS run with its export, shared by this module and test_monitor_report
    (a few training steps: the profile and the monitoring read the model's outputs, not its
    quality). Returns (workdir, results)."""
    workdir = Path(tempfile.mkdtemp(prefix="acs_run_"))
    atexit.register(shutil.rmtree, workdir, True)
    cfg = compose_config(ACS_DEBUG, tiny=False)
    return workdir, run(cfg, workdir)


def acs_serving_rows(split: str, rows: np.ndarray, names) -> dict:
    """ACS rows as a client sends them: category codes as strings, AGEP and SCHL as numbers."""
    t = load_acs_employment(split)
    return {k: (t[k][rows].astype(np.float64) if k == "AGEP" else
                np.asarray([float(x) for x in t[k][rows]]) if k == "SCHL" else
                t[k][rows].astype(str).astype(object)) for k in names}


@pytest.fixture(scope="module")
def exported():
    workdir, results = acs_run()
    return Path(results["paths"]["export"]), results


def test_profile_json_covers_inputs_outputs_and_labels_of_the_valid_split(exported):
    path, results = exported
    extra = path / "assets.extra"
    profile = Profile.from_json((extra / "profile.json").read_text())
    sig = load_bundle(path).signatures["serving_default"]
    assert list(profile.columns) == [*sig.inputs, "prob", "logit", "label"]
    n_valid = results["data"]["valid_rows"]
    assert n_valid == 6879  # 10% of the 68,785 rows of 2015
    assert {c.count for c in profile.columns.values()} == {n_valid}
    kinds = profile.kinds()
    assert kinds["AGEP"] == kinds["SCHL"] == kinds["prob"] == "numeric"
    assert kinds["RELP"] == kinds["MAR"] == kinds["label"] == "categorical"
    # Recorded in results.json and in the model card.
    info = results["reference_profile"]
    assert info["saved"] and info["rows"] == n_valid and info["schema_version"] == profile.schema_version
    card = json.loads((extra / CARD).read_text())
    assert card["reference_profile"]["rows"] == n_valid
    assert card["reference_profile"]["label"] == "label"
    scores = np.load(extra / "reference_scores.npz")
    assert len(scores["prob"]) == len(scores["label"]) == n_valid
    assert set(np.unique(scores["label"])) == {0.0, 1.0}


def test_the_valid_rows_do_not_drift_from_their_profile_and_2018_does(exported):
    path, _ = exported
    profile = Profile.from_json((path / "assets.extra" / "profile.json").read_text())
    bundle = load_bundle(path)
    task = tasks.build(compose_config(ACS_DEBUG, tiny=False))
    raw = dict(task.reference_inputs())
    labels = raw.pop("label")
    inputs = list(bundle.signatures["serving_default"].inputs)
    cols = {**{k: raw[k] for k in inputs}, **bundle.predict({k: raw[k] for k in inputs}),
            "label": labels}
    same = drift.check(profile, cols)
    assert same.drifted == [] and same.missing_drifted == []
    assert min(c["p_adjusted"] for c in same.columns.values()) > 0.5
    # The check can fail: 2018 rows (the analysis year furthest from 2015) drift.
    ana = load_acs_employment("analysis", with_target=False)
    rows = np.flatnonzero(ana["year"] == 2018)[:5000]
    later = drift.check(profile, acs_serving_rows("analysis", rows, inputs), names=inputs)
    assert {"RELP", "AGEP"} <= set(later.drifted)


def test_acs_split_holds_out_the_test_years(tmp_path):
    task = tasks.build(compose_config(["+task=tabular", "tabular/data=acs_employment"]))
    info = task.info
    assert info["train_rows"] + info["valid_rows"] == 68785
    assert info["test_rows"] == 69126  # every 2016 row
    assert "2016" in info["split"]
    with pytest.raises(ValueError, match="data.test_years"):
        tasks.build(compose_config(["+task=tabular", "tabular/data=acs_employment",
                                    "data.test_years=[2019]"]))


@pytest.mark.slow
def test_acs_training_reaches_nannymls_auc(tmp_path):
    """NannyML reports ROC-AUC about 0.90 on this data; 1,500 steps get there (valid 2015 and
    test 2016 alike)."""
    cfg = compose_config(["+task=tabular", "tabular/data=acs_employment", "trainer.max_steps=1500",
                          "trainer.progress=false", "export.enabled=false"], tiny=False)
    results = run(cfg, tmp_path)
    assert results["metrics"]["valid/auc"] > 0.89
    assert results["metrics"]["test/auc"] > 0.89


# ------------------------------------------------------------------ every task's reference profile

PROFILED_TASKS = ["ctr", "fraud", "ranking", "recommendation", "spam", "moderation", "news_feed"]
# Default suite: fraud (numeric columns) and spam (free text); the others under -m slow.
# all slow: a debug run with export per task (the tabular tests above stay in the default suite)
HEAVY_TASKS = {"ctr", "fraud", "ranking", "recommendation", "spam", "moderation", "news_feed"}


@functools.lru_cache(maxsize=None)
def task_run(name: str) -> tuple:
    """One ``debug=fast`` run of a task with its export (a few steps: the profile reads the
    model's outputs, not its quality). Returns (task rebuilt from the config, results)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}_profile_"))
    atexit.register(shutil.rmtree, workdir, True)
    cfg = compose_config(["debug=fast", f"+task={name}", "export.check=false"], tiny=False)
    results = run(cfg, workdir)
    return tasks.build(cfg), results


def _scored(task, path):
    """The task's reference rows, the bundle's outputs on them and the labels (or None)."""
    bundle = load_bundle(path)
    raw = dict(task.reference_inputs())
    labels = raw.pop("label", None)
    inputs = {k: np.asarray(raw[k]) for k in bundle.signatures["serving_default"].inputs}
    return inputs, {k: np.asarray(v) for k, v in bundle.predict(inputs).items()}, labels


def _log_records(inputs, outputs, per_request: int = 37):
    """Prediction-log records (JSON tensors, as the server logs them) of batch requests."""
    n = len(next(iter(inputs.values())))
    out = []
    for i, lo in enumerate(range(0, n, per_request)):
        sl = slice(lo, lo + per_request)
        out.append({"ts": float(i), "request_id": f"r{i}", "code": 200, "latency_ms": 1.0,
                    "inputs": json.dumps({k: v[sl].tolist() for k, v in inputs.items()}),
                    "outputs": json.dumps({k: v[sl].tolist() for k, v in outputs.items()})})
    return out




@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY_TASKS
                                  else n for n in PROFILED_TASKS])
def test_each_task_saves_a_profile_of_its_raw_inputs_and_outputs(name):
    task, results = task_run(name)
    info = results["reference_profile"]
    assert info["saved"], info
    path = Path(results["paths"]["export"])
    extra = path / "assets.extra"
    profile = Profile.from_json((extra / PROFILE_FILE).read_text())
    card = json.loads((extra / CARD).read_text())
    assert card["reference_profile"]["rows"] == info["rows"]
    sig = load_bundle(path).signatures["serving_default"]
    cols = set(profile.columns)
    # Every raw input is profiled (as itself, its derived form or its components) or skipped
    # with a reason; every numeric output likewise.
    for k in sig.inputs:
        forms = {k, f"{k}.length", f"{k}.items"}
        assert (cols & forms or any(c.startswith(f"{k}[") for c in cols)
                or k in info["skipped"]), (k, sorted(cols))
    inputs, outputs, labels = _scored(task, path)
    for k, v in outputs.items():
        assert (k in cols or any(c.startswith(f"{k}[") for c in cols) or k in info["skipped"]), k
    # Row count: the validation rows (users for recommendation, impressions for news), at most
    # 20,000; for ranking the unmasked documents of whole validation lists, at most 20,000.
    data = results["data"]
    valid = {"recommendation": data.get("valid_users"), "news_feed": data.get("valid_impressions"),
             "ranking": data.get("valid_docs")}.get(name, data.get("valid_rows"))
    assert valid, sorted(data)
    assert info["rows"] == valid if valid <= 20_000 else 0 < info["rows"] <= 20_000
    if name == "ranking":
        assert info["row"] == "document"
        assert [f"features[{j}]" for j in range(136)] == list(profile.columns)[:136]
        assert "scores" in cols and profile.kinds()["label"] == "categorical"
        assert info["rows"] == int(inputs["mask"].sum())
    assert {c.count for c in profile.columns.values()} == {info["rows"]}
    # Task-specific forms: free text as its length; low-cardinality strings stay categories.
    kinds = profile.kinds()
    if name in ("spam", "moderation"):
        assert kinds["text.length"] == "numeric" and "text" not in cols
        assert "label" in cols and "prob" in cols or "score" in cols
    if name == "news_feed":
        assert {"history_titles.items", "candidate_titles.items"} <= cols
        assert "scores" in info["skipped"]
    if name == "ctr":
        assert kinds["gender"] == kinds["occupation"] == "categorical"
        assert kinds["label"] == "categorical" and "prob" in cols
    if labels is not None:
        scores = np.load(extra / "reference_scores.npz")
        assert len(scores["label"]) == min(info["rows"], MAX_REFERENCE_SCORES)
    # The same validation rows do not drift from their profile: drift.check on the same
    # columns, and (one row per request) monitor over the prediction log's records.
    columns, _, _, _ = reference_columns(inputs, outputs, labels)
    same = drift.check(profile, columns)
    assert same.drifted == [] and same.missing_drifted == []
    if info["row"] == "request row":
        frame = records_frame(_log_records(inputs, outputs))
        pred = "prob" if "prob" in cols and "prob" in frame.rows else None
        res = monitor(frame, profile, by="count", size=frame.n_rows, prediction=pred)
        (w,) = res.windows
        assert w["drift"]["n_tested"] == len(info["inputs"]) > 0
        assert w["drift"]["n_drifted"] == 0, w["drift"]
        for c in info["derived"]:  # derived the same way on both sides
            assert w["features"][c]["ks_statistic"] < 0.05, (c, w["features"][c])
        if pred:
            assert not w["prediction"]["drift"]


def test_text_length_is_derived_the_same_way_from_the_log_and_shifts_with_longer_texts():
    """Spam's text profile: a logged window of the valid texts reads statistic 0 (every value
    is in the profile's sample); the same texts doubled drift."""
    task, results = task_run("spam")
    path = Path(results["paths"]["export"])
    profile = Profile.from_json((path / "assets.extra" / PROFILE_FILE).read_text())
    inputs, outputs, _ = _scored(task, path)
    assert len(inputs["text"]) <= profile.sample_size  # the sample holds every length
    frame = records_frame(_log_records(inputs, outputs, per_request=5), profile)
    assert "text.length" in frame.inputs
    np.testing.assert_array_equal(frame.rows["text.length"], text_lengths(inputs["text"]))
    res = monitor(frame, profile, by="count", size=frame.n_rows, prediction="prob")
    assert res.windows[0]["features"]["text.length"]["ks_statistic"] == 0.0
    longer = {"text": np.asarray([t + " " + t for t in inputs["text"]], dtype=object)}
    res = monitor(frame_from_columns(longer), profile, by="count", size=len(inputs["text"]),
                  prediction=None)
    assert res.windows[0]["drift"]["drifted"] == ["text.length"]


def test_reference_columns_rules_and_their_mirror_in_derive_columns():
    rng = np.random.default_rng(0)
    n = 400
    texts = np.asarray([f"message {i} " + "x" * int(rng.integers(0, 50)) for i in range(n)], object)
    cats = np.asarray(rng.choice(["a", "b", "c"], n), object)
    hist = np.full((n, 4), "", object)
    for i in range(n):
        hist[i, :i % 5] = [f"item{j}" for j in range(i % 5)]
    outs = {"prob": rng.random(n).astype(np.float32),
            "per_item": rng.random((n, 4)).astype(np.float32), "label_name": np.full(n, "x")}
    cols, kinds, skipped, layout = reference_columns(
        {"text": texts, "kind": cats, "history": hist}, outs, rng.integers(0, 2, n).astype(float))
    assert list(cols) == ["text.length", "kind", "history.items", "prob", "label"]
    assert kinds == {"text.length": "numeric", "kind": "categorical", "history.items": "numeric",
                     "prob": "numeric", "label": "categorical"}
    assert set(skipped) == {"per_item", "label_name"}
    np.testing.assert_array_equal(cols["history.items"], np.arange(n) % 5)
    assert set(layout["derived"]) == {"text.length", "history.items"}
    # The log side: lists of different widths per request (a width-1 request is logged as
    # ``history``, wider ones as ``history[j]``) and a missing text.
    profile = Profile.fit(cols, kinds)
    recs = [{"ts": 0.0, "request_id": "a", "code": 200,
             "inputs": json.dumps({"text": ["abc", None], "history": [["i1", ""], ["i1", "i2"]]})},
            {"ts": 1.0, "request_id": "b", "code": 200,
             "inputs": json.dumps({"text": ["hello"], "history": [["i3"]]})},
            {"ts": 2.0, "request_id": "c", "code": 200,
             "inputs": json.dumps({"text": [""], "history": [["", "", "i4"]]})}]
    frame = records_frame(recs, profile)
    np.testing.assert_array_equal(frame.rows["text.length"], [3.0, np.nan, 5.0, 0.0])
    np.testing.assert_array_equal(frame.rows["history.items"], [1.0, 2.0, 1.0, 1.0])
    assert derive_columns(records_frame(recs), profile).rows.keys() == frame.rows.keys()
    np.testing.assert_array_equal(list_lengths(np.asarray([[None, "a"]], object)), [1.0])
