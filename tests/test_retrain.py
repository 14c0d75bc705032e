"""The feedback loop on the real ACS employment data: logged requests + late labels -> training
rows (mlsd_jax/monitoring/feedback.py, the tabular task's ``data.feedback``), and
``experiments.retrain`` end to end through the real server.

Version 1 is the tabular model trained for 100 steps on ACS 2015. The end-to-end test serves it
with the model server (REST, prediction log on), sends 2016 and 2017 rows through it, writes
their labels as they would arrive later, and retrains: a candidate with more steps is promoted to
version 2 under ``canary`` and the running server then answers ``canary`` requests with it; a
candidate trained for one step is refused and nothing is copied.
"""
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from experiments import retrain as R
from experiments.monitor import read_labels
from mlsd_jax import tasks
from mlsd_jax.data.acs import load_acs_employment
from mlsd_jax.errors import UserError
from mlsd_jax.experiment import run
from mlsd_jax.export.bundle import load_bundle
from mlsd_jax.monitoring.feedback import (feedback_table, read_feedback, split_fresh,
                                          write_feedback)
from mlsd_jax.serving.config import LogConfig
from mlsd_jax.serving.predlog import PredictionLog
from mlsd_jax.serving.store import set_labels
from tests.test_reference_profile import acs_serving_rows
from tests.utils import compose_config

# Every test here trains or reads a served ACS model (about a minute for the module's fixture).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
ACS_V1 = ["debug=fast", "+task=tabular", "tabular/data=acs_employment", "data.test_years=[]",
          "export.check=false", "trainer.max_steps=100", "trainer.eval_every=50"]
BETTER = ["trainer.max_steps=400", "trainer.batch_size=256", "trainer.eval_every=200"]
WORSE = ["trainer.max_steps=1", "trainer.eval_every=1"]
BATCH = 250


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    """(base path holding version 1 labelled stable, the version's export)."""
    root = tmp_path_factory.mktemp("retrain")
    results = run(compose_config(ACS_V1, tiny=False), root / "v1")
    base = root / "models" / "acs"
    base.mkdir(parents=True)
    shutil.copytree(results["paths"]["export"], base / "1")
    set_labels(base, {"stable": 1})
    return base, Path(results["paths"]["export"])


def analysis_rows(n_per_year: int) -> dict:
    """The first n rows of 2016, then of 2017, as a client sends them, and their labels."""
    ana = load_acs_employment("analysis")
    rows = np.concatenate([np.flatnonzero(ana["year"] == y)[:n_per_year] for y in (2016, 2017)])
    return rows, ana["employed"][rows].astype(int), ana["year"][rows]


def write_labels(path: Path, labels) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["request_id", "label", "row"])
        w.writerows(labels)
    return path


@pytest.fixture(scope="module")
def direct_log(v1, tmp_path_factory):
    """A prediction log written by the server's PredictionLog class (version 1's real outputs)
    of 2,000 rows in 8 requests; request 3 never gets labels."""
    base, _ = v1
    bundle = load_bundle(base / "1")
    names = list(bundle.signatures["serving_default"].inputs)
    rows, y, _ = analysis_rows(1000)
    cols = acs_serving_rows("analysis", rows, names)
    root = tmp_path_factory.mktemp("direct")
    log = PredictionLog(LogConfig(dir=str(root / "log")), worker=0)
    labels = []
    for k, i in enumerate(range(0, len(rows), BATCH)):
        x = {n: v[i:i + BATCH] for n, v in cols.items()}
        out = bundle.predict(x)
        log.write(f"req-{k}", "acs", 1, "serving_default", "predict", 200, 2.0, None,
                  {n: v.tolist() for n, v in x.items()},
                  {n: np.asarray(v).tolist() for n, v in out.items()})
        time.sleep(0.002)  # distinct request times
        if k != 3:
            labels += [(f"req-{k}", int(v), j) for j, v in enumerate(y[i:i + BATCH])]
    log.write("bad", "acs", 1, "serving_default", "predict", 400, 1.0, None, {}, {"error": "x"})
    log.close()
    return root / "log", write_labels(root / "labels.csv", labels), cols, y, names


# ------------------------------------------------------------------------------ feedback rows
def test_feedback_table_joins_labels_and_holds_out_the_freshest_rows(direct_log, tmp_path):
    log_dir, labels, cols, y, names = direct_log
    table = feedback_table(log_dir, read_labels(labels), signature_inputs=names)
    assert table.n_logged == 2000 and table.n_unlabelled == BATCH and table.n_rows == 1750
    keep = np.r_[0:3 * BATCH, 4 * BATCH:2000]               # request 3 had no label
    np.testing.assert_array_equal(table.columns["label"], y[keep])
    np.testing.assert_array_equal(table.columns["AGEP"], cols["AGEP"][keep])
    assert table.columns["RELP"].tolist() == cols["RELP"][keep].tolist()  # raw, as logged
    train, fresh = split_fresh(table, 500)
    assert (train.n_rows, fresh.n_rows) == (1250, 500)
    assert set(fresh.columns["request_id"]) == {"req-6", "req-7"}        # the newest requests
    assert train.columns["ts"].max() <= fresh.columns["ts"].min()
    seen = set(zip(train.columns["request_id"], train.columns["row"]))
    assert not seen & set(zip(fresh.columns["request_id"], fresh.columns["row"]))
    # Parquet and CSV round trips keep rows, strings and numbers.
    for name in ("fb.parquet", "fb.csv"):
        back = read_feedback(write_feedback(train, tmp_path / name))
        assert len(back["label"]) == 1250
        assert [str(v) for v in back["RELP"]] == [str(v) for v in train.columns["RELP"]]
        np.testing.assert_allclose(np.asarray(back["AGEP"], float), train.columns["AGEP"])
    # A window within since/until only.
    ts = table.columns["ts"]
    part = feedback_table(log_dir, read_labels(labels), signature_inputs=names,
                          since=float(ts[BATCH]), until=float(ts[-1]))
    assert part.n_rows == 1750 - 2 * BATCH


def test_feedback_table_errors_name_the_input(direct_log):
    log_dir, labels, _, _, names = direct_log
    with pytest.raises(KeyError, match="NOT_LOGGED"):
        feedback_table(log_dir, read_labels(labels), signature_inputs=names + ["NOT_LOGGED"])
    with pytest.raises(ValueError, match="eval_window=0"):
        split_fresh(feedback_table(log_dir, read_labels(labels), signature_inputs=names), 0)


def test_tabular_feedback_rows_go_to_train_only(direct_log, tmp_path):
    log_dir, labels, _, _, names = direct_log
    table = feedback_table(log_dir, read_labels(labels), signature_inputs=names)
    path = write_feedback(table, tmp_path / "fb.parquet")
    base = ["+task=tabular", "tabular/data=acs_employment", "data.test_years=[]"]
    plain = tasks.build(compose_config(base, tiny=False)).info
    fed = tasks.build(compose_config(base + [f"data.feedback=[{path}]"], tiny=False)).info
    assert fed["feedback_rows_added_to_train"] == 1750
    assert fed["train_rows"] == plain["train_rows"] + 1750
    assert fed["valid_rows"] == plain["valid_rows"] and fed["fingerprint"] != plain["fingerprint"]
    # Clear errors naming the file's column.
    cols = read_feedback(path)
    bad = {k: v for k, v in cols.items() if k != "RELP"}
    write_feedback(bad, tmp_path / "no_relp.parquet")
    with pytest.raises(KeyError, match="no column 'RELP'"):
        tasks.build(compose_config(base + [f"data.feedback=[{tmp_path / 'no_relp.parquet'}]"],
                                   tiny=False))
    write_feedback({**cols, "label": np.full(len(cols["label"]), 3.0)}, tmp_path / "y.parquet")
    with pytest.raises(ValueError, match="column 'label' must hold 0/1"):
        tasks.build(compose_config(base + [f"data.feedback=[{tmp_path / 'y.parquet'}]"],
                                   tiny=False))


# ------------------------------------------------------------------------------ retrain CLI
def _settings(base, log_dir, labels, **over):
    return {"base_path": str(base), "log_dir": str(log_dir), "labels": str(labels), **over}


def test_alert_trigger_without_a_new_alert_does_not_retrain(v1, direct_log, tmp_path):
    base, _ = v1
    log_dir, labels, *_ = direct_log
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_text("")
    decisions = tmp_path / "decisions.jsonl"
    cfg = _settings(base, log_dir, labels, trigger="alerts", alerts=str(alerts),
                    decisions=str(decisions))
    out = R.run(cfg, tmp_path / "work")
    assert out["decision"] == "no trigger"
    assert not (tmp_path / "work").exists() and not decisions.exists()
    # An alert older than the last decision is not new; a later one triggers.
    decisions.write_text(json.dumps({"time": 2000.0, "decision": "refuse"}) + "\n")
    alerts.write_text(json.dumps({"rule": "feature_drift", "fired_at": 1000.0}) + "\n")
    conf = R.typed(R.RetrainConfig, cfg)
    assert R.triggered(conf, decisions)[0] is False
    with open(alerts, "a") as f:
        f.write(json.dumps({"rule": "feature_drift", "fired_at": 3000.0}) + "\n")
    go, why = R.triggered(conf, decisions)
    assert go and "3000" in why
    # The command line: exit 0 and "no trigger".
    alerts.write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.retrain", f"base_path={base}", f"log_dir={log_dir}",
         f"labels={labels}", "trigger=alerts", f"alerts={alerts}", f"workdir={tmp_path / 'cli'}",
         f"decisions={decisions}", f"hydra.run.dir={tmp_path / 'hydra'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no trigger" in proc.stdout


def test_retrain_errors_name_the_setting(v1, direct_log, tmp_path):
    base, _ = v1
    log_dir, labels, *_ = direct_log
    ok = _settings(base, log_dir, labels, decisions=str(tmp_path / "d.jsonl"))
    cases = [({"base_path": ""}, "base_path is required"),
             ({"trigger": "weekly"}, "trigger='weekly'"),
             ({"trigger": "alerts"}, "alerts is required"),
             ({"trigger": "alerts", "alerts": str(tmp_path / "none.jsonl")}, "alerts="),
             ({"base_path": str(tmp_path / "nowhere")}, "base_path="),
             ({"eval_window": 0}, "eval_window=0"),
             ({"eval_window": 5000}, "eval_window=5000: the log has only 1750"),
             ({"promote_label": "2"}, "promote_label='2'"),
             ({"overrides": ["trainer.no_such_key=3"]}, "overrides: 'trainer.no_such_key'"),
             ({"serving_label": "stable", "base_path": str(_labelled(tmp_path, base))},
              "serving_label='stable' names version 9")]
    for over, message in cases:
        with pytest.raises((UserError, FileNotFoundError, KeyError, ValueError)) as e:
            R.run({**ok, **over}, tmp_path / "work")
        assert message in str(e.value), (over, str(e.value))
    assert not (tmp_path / "d.jsonl").exists()
    assert R.model_versions(base) == [1]
    proc = subprocess.run([sys.executable, "-m", "experiments.retrain", f"base_path={base}",
                           f"log_dir={log_dir}", "labels=/nonexistent.csv",
                           f"workdir={tmp_path / 'cli'}", f"decisions={tmp_path / 'd.jsonl'}",
                           f"hydra.run.dir={tmp_path / 'hydra'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "labels='/nonexistent.csv' does not exist" in proc.stderr


def _labelled(tmp_path, base) -> Path:
    other = tmp_path / "other"
    shutil.copytree(base / "1", other / "1")
    set_labels(other, {"stable": 9})
    return other


def test_config_file_typechecks():
    from hydra import compose, initialize_config_dir

    from mlsd_jax.experiment import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("retrain", overrides=["base_path=b", "log_dir=l", "labels=x.csv"])
    conf = R.typed(R.RetrainConfig, cfg)
    assert (conf.trigger, conf.promote_label, conf.serving_label) == \
        ("schedule", "canary", "stable")


# ------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_retrain_promotes_a_better_model_and_refuses_a_worse_one_through_the_server(v1, tmp_path):
    import httpx

    from mlsd_jax.serving import codec, serve_config, start_server

    base, _ = v1
    base = shutil.copytree(base, tmp_path / "models" / "acs")
    names = list(load_bundle(base / "1").signatures["serving_default"].inputs)
    rows, y, years = analysis_rows(4000)
    cols = acs_serving_rows("analysis", rows, names)
    cfg = serve_config({
        "models": [{"name": "acs", "base_path": str(base), "default_label": "stable"}],
        "host": "127.0.0.1", "rest_port": 0, "grpc_port": 0, "poll_s": 0.2, "access_log": False,
        "batching": {"buckets": [256], "max_batch_size": 256, "dim_buckets": {}},
        "compilation_cache": str(tmp_path / "xla"),
        "log": {"dir": str(tmp_path / "log"), "flush_ms": 5}})
    labels = []
    with start_server(cfg) as srv, httpx.Client(base_url=srv.rest_url, timeout=60) as http:
        for k, i in enumerate(range(0, len(rows), BATCH)):
            x = {n: v[i:i + BATCH] for n, v in cols.items()}
            r = http.post("/v1/models/acs:predict", headers={"x-request-id": f"r{k}"},
                          content=json.dumps(codec.tfs_request(x)))
            assert r.status_code == 200 and r.headers["x-model-version"] == "1", r.text
            if k != 5:                                     # one request never gets labels
                labels += [(f"r{k}", int(v), j) for j, v in enumerate(y[i:i + BATCH])]
        srv.state.predlog.flush()
        label_file = write_labels(tmp_path / "labels.csv", labels)
        settings = _settings(base, tmp_path / "log", label_file, trigger="schedule",
                             eval_window=3000, min_delta=0.005)

        good = R.run({**settings, "overrides": BETTER}, tmp_path / "good")
        # The freshest 3,000 labelled rows are the last 3,000 rows sent (2017), never trained on.
        fb = read_feedback(tmp_path / "good" / "feedback.parquet")
        assert len(fb["label"]) == len(labels) - 3000 == 8000 - BATCH - 3000
        assert set(zip(fb["request_id"], fb["row"].astype(int))).isdisjoint(
            {(f"r{(5000 + j) // BATCH}", (5000 + j) % BATCH) for j in range(3000)})
        assert good["eval_window"]["rows"] == 3000
        assert fb["ts"].max() <= good["eval_window"]["first_ts"]
        assert good["log"]["unlabelled_rows_dropped"] == BATCH
        s, c = good["scores"]["serving"], good["scores"]["candidate"]
        assert good["decision"] == "promote" and c >= s + 0.005, good["reason"]
        # Both scores are recomputed here from the bundles on the same rows (2017's last 3,000).
        fresh = {n: v[-3000:] for n, v in cols.items()}
        from mlsd_jax.monitoring.estimate import roc_auc
        from sklearn.metrics import roc_auc_score

        assert roc_auc_score(y[-3000:], load_bundle(base / "1").predict(fresh)["prob"]) == \
            pytest.approx(s, abs=1e-6)
        want2 = load_bundle(base / "2").predict(fresh)["prob"]
        assert roc_auc(y[-3000:], want2) == pytest.approx(c, abs=1e-6)
        assert good["promoted"] == {"version": 2, "label": "canary", "path": str(base / "2")}
        assert json.loads((base / "labels.json").read_text()) == {"stable": 1, "canary": 2}
        recorded = json.loads((tmp_path / "good" / "decision.json").read_text())
        assert recorded["reason"].startswith("promoted") and recorded["scores"]["candidate"] == c
        info = json.loads((base / "2" / "assets.extra" / "mlsd_model.json").read_text())["data"]
        assert info["feedback_rows_added_to_train"] == len(fb["label"])

        # The running server picks up version 2 under canary; stable stays on version 1.
        probe = {n: v[-BATCH:] for n, v in cols.items()}
        body = json.dumps(codec.tfs_request(probe))
        end = time.monotonic() + 120
        while True:
            r = http.post("/v1/models/acs/labels/canary:predict", content=body)
            if r.status_code == 200 and r.headers["x-model-version"] == "2":
                break
            assert time.monotonic() < end, r.text
            time.sleep(0.2)
        np.testing.assert_allclose(r.json()["outputs"]["prob"], want2[-BATCH:], rtol=1e-4,
                                   atol=1e-6)
        r = http.post("/v1/models/acs:predict", content=body)
        assert r.headers["x-model-version"] == "1"

        # A worse candidate (one training step) is refused and nothing is copied.
        bad = R.run({**settings, "overrides": WORSE}, tmp_path / "bad")
        assert bad["serving"]["version"] == 1 and bad["serving"]["chosen_by"] == "label 'stable'"
        assert bad["decision"] == "refuse" and bad["reason"].startswith("refused")
        assert bad["scores"]["candidate"] < bad["scores"]["serving"]
        assert bad["scores"]["serving"] == pytest.approx(s, abs=1e-9)   # the same window
        assert bad["promoted"]["version"] is None
        assert sorted(p.name for p in base.iterdir()) == ["1", "2", "decisions.jsonl",
                                                          "labels.json"]
        assert json.loads((base / "labels.json").read_text()) == {"stable": 1, "canary": 2}
        history = [json.loads(l) for l in (base / "decisions.jsonl").read_text().splitlines()]
        assert [d["decision"] for d in history] == ["promote", "refuse"]
        print("\nretrain e2e (ROC-AUC on the freshest 3,000 labelled rows, 2017):",
              f"serving v1 {s:.4f}, better candidate {c:.4f} (promoted);",
              f"one-step candidate {bad['scores']['candidate']:.4f} (refused)")

    # trigger=alerts on the monitor's real alert log: the 2016-2017 traffic drifted from 2015,
    # so an alert newer than the last decision retrains once; the next run finds no new alert.
    from omegaconf import OmegaConf

    from experiments import monitor as M

    rules = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "monitor.yaml").alerts)
    summary = M.run({"log_dir": str(tmp_path / "log"), "model": str(base / "1"),
                     "labels": str(label_file), "out": str(tmp_path / "monitor"),
                     "window": {"size": 2000}, "progress": False, "alerts": rules})
    assert summary["alerts"]["fired"] >= 1
    on_alerts = {**settings, "trigger": "alerts", "overrides": WORSE,
                 "alerts": str(tmp_path / "monitor" / "alerts.jsonl")}
    again = R.run(on_alerts, tmp_path / "alerted")
    assert again["decision"] == "refuse" and again["trigger"].startswith("trigger=alerts")
    quiet = R.run(on_alerts, tmp_path / "quiet")
    assert quiet["decision"] == "no trigger" and not (tmp_path / "quiet").exists()
    assert len((base / "decisions.jsonl").read_text().splitlines()) == 3
